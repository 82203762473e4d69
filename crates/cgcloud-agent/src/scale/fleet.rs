//! The leader's view of its workers: which worker (Slurm node) each live instance is, how many
//! instances count against the maximum, and which workers vanished since the last look (their
//! instance went away without the leader suspending them: a spot interruption, or someone
//! terminated it). Pure: `mod.rs` feeds it DescribeInstances answers.

use crate::cluster::Node;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The cluster's workers as EC2 describes them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Worker number → instance id, for instances pending or running.
    pub live: BTreeMap<u32, String>,
    /// Instances in any state short of terminated (shutting down too: they count against max).
    pub instances: usize,
    /// Instance id → why it stopped, for instances shutting down, stopping or stopped.
    pub leaving: BTreeMap<String, String>,
}

/// `nodes`, the non-terminated instances whose `cgcloud:leader-arn` names this leader, as a
/// fleet (the leader itself and anything without a worker number is counted, never launched for).
pub fn fleet(nodes: &[Node], leader_id: &str, max: u32) -> Fleet {
    let mut f = Fleet::default();
    for n in nodes.iter().filter(|n| n.id != leader_id && n.state != "terminated") {
        f.instances += 1;
        let worker = n.ordinal().filter(|o| (1..=max).contains(o));
        match (n.state.as_str(), worker) {
            ("pending" | "running", Some(w)) => {
                // Two instances for one worker (a retried launch): the first keeps the name;
                // the other is still counted, and the next reconcile sees it as not known.
                f.live.entry(w).or_insert_with(|| n.id.clone());
            }
            _ => {
                let why = if n.state_reason.is_empty() { n.state.clone() } else { n.state_reason.clone() };
                f.leaving.insert(n.id.clone(), why);
            }
        }
    }
    f
}

/// What the leader remembers between looks (kept in a file, so that an agent restart does not
/// forget which workers it launched).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    /// Worker number → the instance launched (or found) for it.
    pub workers: BTreeMap<u32, String>,
    /// Workers whose launch failed → when to offer them to Slurm again (seconds since the epoch).
    pub retry_at: BTreeMap<u32, u64>,
}

impl Known {
    /// Takes in `now`: returns the workers that vanished, with why, and forgets them; workers
    /// found live that it did not know (launched by the workstation, or before a restart) are
    /// learnt. A worker being suspended must be forgotten (`forget`) before its instance goes.
    pub fn update(&mut self, now: &Fleet) -> Vec<(u32, String)> {
        let mut vanished = Vec::new();
        self.workers.retain(|w, id| {
            if now.live.get(w) == Some(id) {
                return true;
            }
            let why = now.leaving.get(id).cloned().unwrap_or_else(|| "terminated".into());
            vanished.push((*w, why));
            false
        });
        for (w, id) in &now.live {
            self.workers.entry(*w).or_insert_with(|| id.clone());
        }
        vanished
    }

    /// Forgets `workers` (being suspended, or given up on) and returns their instances.
    pub fn forget(&mut self, workers: &BTreeSet<u32>) -> Vec<String> {
        workers.iter().filter_map(|w| self.workers.remove(w)).collect()
    }

    /// The workers whose retry time came by `now`, forgotten.
    pub fn due(&mut self, now: u64) -> BTreeSet<u32> {
        let due: BTreeSet<u32> = self.retry_at.iter().filter(|(_, at)| **at <= now).map(|(w, _)| *w).collect();
        self.retry_at.retain(|w, _| !due.contains(w));
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ordinals: &str, index: i32, state: &str, reason: &str) -> Node {
        let mut n = Node {
            id: id.into(),
            launch_index: Some(index),
            state: state.into(),
            state_reason: reason.into(),
            ..Node::default()
        };
        n.tags.insert(cgcloud_core::tags::ORDINALS.into(), ordinals.into());
        n
    }

    #[test]
    fn workers_are_named_by_ordinal_and_all_instances_count() {
        let mut leader = node("i-leader", "", 0, "running", "");
        leader.tags.insert(cgcloud_core::tags::ORDINAL.into(), "0".into());
        let nodes = [
            leader,
            node("i-1", "1,2", 0, "running", ""),
            node("i-2", "1,2", 1, "pending", ""),
            node("i-3", "3", 0, "shutting-down", "Server.SpotInstanceTermination"),
            node("i-9", "9", 0, "running", ""),
            node("i-x", "1", 0, "running", ""),
        ];
        let f = fleet(&nodes, "i-leader", 4);
        assert_eq!(f.live, BTreeMap::from([(1, "i-1".to_owned()), (2, "i-2".to_owned())]));
        assert_eq!(f.instances, 5, "the one past max and the duplicate count too");
        assert_eq!(f.leaving["i-3"], "Server.SpotInstanceTermination");
    }

    #[test]
    fn vanished_workers_are_reported_once_and_suspended_ones_never() {
        let mut k = Known::default();
        let f = fleet(&[node("i-1", "1,2", 0, "running", ""), node("i-2", "1,2", 1, "running", "")], "i-l", 4);
        assert!(k.update(&f).is_empty());
        assert_eq!(k.workers.len(), 2);
        // Worker 2 is suspended by Slurm: forgotten first, so its going is not a vanishing.
        assert_eq!(k.forget(&BTreeSet::from([2])), ["i-2"]);
        let f = fleet(
            &[
                node("i-1", "1,2", 0, "shutting-down", "Server.SpotInstanceTermination"),
                node("i-2", "1,2", 1, "shutting-down", "Client.UserInitiatedShutdown"),
            ],
            "i-l",
            4,
        );
        assert_eq!(k.update(&f), [(1, "Server.SpotInstanceTermination".to_owned())]);
        assert!(k.update(&f).is_empty(), "once");
        // Gone altogether (terminated long ago): still a vanishing.
        let mut k = Known { workers: BTreeMap::from([(3, "i-3".to_owned())]), ..Known::default() };
        assert_eq!(k.update(&Fleet::default()), [(3, "terminated".to_owned())]);
        // A new instance for a worker whose old one vanished is learnt.
        let f = fleet(&[node("i-4", "3", 0, "pending", "")], "i-l", 4);
        assert!(k.update(&f).is_empty());
        assert_eq!(k.workers[&3], "i-4");
    }

    #[test]
    fn failed_workers_come_due_once() {
        let mut k = Known { retry_at: BTreeMap::from([(1, 100), (2, 200)]), ..Known::default() };
        assert_eq!(k.due(150), BTreeSet::from([1]));
        assert_eq!(k.due(150), BTreeSet::new());
        assert_eq!(k.due(200), BTreeSet::from([2]));
    }
}
