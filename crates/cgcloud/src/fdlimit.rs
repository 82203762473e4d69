//! The open-files limit. A fan-out over a cluster holds a few descriptors per `ssh` or
//! `rsync` it runs (its output pipes), so 1000 nodes need more than the usual soft limit of
//! 1024: the first fan-out raises cgcloud's soft limit to the hard one (as Go programs do at
//! start), and a fan-out runs at most as many children at once as fit under what it got.

use std::sync::{Arc, OnceLock};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::sync::Semaphore;

/// Descriptors kept for everything else (the runtime, API connections, files, logs).
const RESERVED: u64 = 64;
/// Descriptors a running child costs cgcloud: stdout and stderr pipes, and room to spare.
const PER_CHILD: u64 = 4;
/// More children at once than any machine runs (an unlimited hard limit would give a count
/// no semaphore can hold).
const MOST: u64 = 1 << 20;

/// Raises the soft limit on open files to the hard limit; returns the soft limit it ended at.
fn raise() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if limit.current.is_none() || limit.current == limit.maximum {
        return soft;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => limit.maximum.unwrap_or(u64::MAX),
        Err(e) => {
            tracing::debug!("cannot raise the open-files limit from {soft}: {e}");
            soft
        }
    }
}

/// Slots for the children of one fan-out: as many as fit under the open-files limit, which
/// the first call raises.
pub fn fanout_slots() -> Arc<Semaphore> {
    static WIDTH: OnceLock<usize> = OnceLock::new();
    Arc::new(Semaphore::new(*WIDTH.get_or_init(|| width(raise()))))
}

fn width(soft: u64) -> usize {
    usize::try_from((soft.saturating_sub(RESERVED) / PER_CHILD).clamp(1, MOST)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_follows_the_limit() {
        assert_eq!(width(1024), 240);
        assert_eq!(width(64), 1);
        assert_eq!(width(10), 1);
        assert_eq!(width(524_288), 131_056);
        assert_eq!(width(u64::MAX), 1 << 20);
        assert!(tokio::sync::Semaphore::MAX_PERMITS >= width(u64::MAX));
    }
}
