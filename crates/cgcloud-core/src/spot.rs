//! Spot-market decisions, as pure functions: which zone to bid in, and the order of launch
//! attempts (spot instance types, then on-demand) when capacity is short.

use std::collections::BTreeMap;

/// One spot price observation.
#[derive(Debug, Clone, PartialEq)]
pub struct PricePoint {
    pub zone: String,
    /// Seconds since the epoch.
    pub time: i64,
    pub price: f64,
}

/// The zone to bid in: among zones whose most recent price is below the bid, the one whose
/// price varied least; if none is below the bid, the least volatile of all. Zones without
/// price history are ignored (the original crashed on them). `None` if no zone has history.
pub fn choose_zone(bid: f64, zones: &[String], history: &[PricePoint]) -> Option<String> {
    let mut by_zone: BTreeMap<&str, Vec<&PricePoint>> = BTreeMap::new();
    for p in history {
        if zones.iter().any(|z| z == &p.zone) {
            by_zone.entry(p.zone.as_str()).or_default().push(p);
        }
    }
    let stats: Vec<(&str, f64, f64)> = by_zone
        .iter()
        .map(|(z, ps)| {
            let n = ps.len() as f64;
            let mean = ps.iter().map(|p| p.price).sum::<f64>() / n;
            let sd = (ps.iter().map(|p| (p.price - mean).powi(2)).sum::<f64>() / n).sqrt();
            let recent = ps.iter().max_by_key(|p| p.time).map(|p| p.price).unwrap_or(f64::INFINITY);
            (*z, sd, recent)
        })
        .collect();
    let below: Vec<&(&str, f64, f64)> = stats.iter().filter(|s| s.2 < bid).collect();
    let pool: Vec<&(&str, f64, f64)> = if below.is_empty() { stats.iter().collect() } else { below };
    pool.into_iter().min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0))).map(|s| s.0.to_owned())
}

/// The mean of all observed prices, for warning about bids far above the market.
pub fn mean_price(history: &[PricePoint]) -> Option<f64> {
    (!history.is_empty()).then(|| history.iter().map(|p| p.price).sum::<f64>() / history.len() as f64)
}

/// One way of launching some of the boxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Spot { instance_type: String },
    OnDemand { instance_type: String },
}

/// The launch attempts in order: spot with each instance type, then (if allowed) on-demand
/// with the first type.
pub fn attempts(types: &[String], on_demand_fallback: bool) -> Vec<Attempt> {
    let mut v: Vec<Attempt> = types.iter().map(|t| Attempt::Spot { instance_type: t.clone() }).collect();
    if on_demand_fallback {
        if let Some(t) = types.first() {
            v.push(Attempt::OnDemand { instance_type: t.clone() });
        }
    }
    v
}

/// How a group of boxes (a cluster's workers) is launched when capacity may be short: the
/// attempts in order, how many boxes are wanted and how many are enough, how long to keep
/// retrying one attempt whose capacity is short, and whether to take what comes (tentative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPolicy {
    pub attempts: Vec<Attempt>,
    pub wanted: u32,
    /// The fewest that make the launch a success.
    pub enough: u32,
    /// How long to retry one attempt while EC2 reports short capacity (0: once).
    pub retry_for_secs: u64,
    /// Take what EC2 gives at the first try of each attempt, and never retry.
    pub tentative: bool,
}

/// What the launcher does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// One RunInstances call: attempt `attempt`, at most `count` boxes, at least `min_count`.
    Launch { attempt: usize, count: u32, min_count: u32 },
    /// Stop launching: with `launched` boxes in all.
    Done { launched: u32 },
}

/// What the last RunInstances call gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Launched(u32),
    /// EC2 had no capacity (or the price was too low) for even `min_count`.
    Short,
}

/// The launcher's progress through a [`LaunchPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchState {
    attempt: usize,
    launched: u32,
    /// The current attempt asked for all and was short: it now takes what it can get.
    partial: bool,
    /// Seconds spent on the current attempt.
    elapsed: u64,
    waited: bool,
}

/// Seconds between retries of an attempt whose capacity is short.
pub const RETRY_EVERY_SECS: u64 = 10;

impl LaunchPolicy {
    /// The next step from `state`.
    pub fn next(&self, state: &LaunchState) -> Next {
        let remaining = self.wanted.saturating_sub(state.launched);
        if remaining == 0 || state.attempt >= self.attempts.len() {
            return Next::Done { launched: state.launched };
        }
        if state.waited {
            return Next::Launch { attempt: state.attempt, count: remaining, min_count: 1 };
        }
        // All of the remaining boxes first; then, if capacity is short (and the launch is not
        // all-or-nothing), as many as EC2 can give.
        let all_or_nothing = self.enough == self.wanted && !self.tentative;
        let min_count = if self.tentative || (state.partial && !all_or_nothing) { 1 } else { remaining };
        Next::Launch { attempt: state.attempt, count: remaining, min_count }
    }

    /// `state` after `outcome` of the launch `next` asked for, `spent` seconds into the
    /// attempt.
    pub fn record(&self, state: &LaunchState, outcome: Outcome) -> LaunchState {
        let mut s = state.clone();
        s.waited = false;
        let next_attempt = |mut s: LaunchState| {
            s.attempt += 1;
            s.partial = false;
            s.elapsed = 0;
            s
        };
        match outcome {
            Outcome::Launched(k) => {
                s.launched += k;
                // Whatever is still missing, the next attempt may get.
                if s.launched < self.wanted {
                    return next_attempt(s);
                }
                s
            }
            Outcome::Short => {
                let all_or_nothing = self.enough == self.wanted && !self.tentative;
                if !s.partial && !self.tentative && !all_or_nothing {
                    s.partial = true;
                    return s;
                }
                if self.tentative || s.elapsed + RETRY_EVERY_SECS > self.retry_for_secs {
                    return next_attempt(s);
                }
                s.elapsed += RETRY_EVERY_SECS;
                s.waited = true;
                s
            }
        }
    }

    /// How long to wait before the next launch, if `record` decided to retry the attempt.
    pub fn wait(&self, state: &LaunchState) -> Option<u64> {
        state.waited.then_some(RETRY_EVERY_SECS)
    }

    /// Whether `launched` boxes (`what`, e.g. "workers") are a success.
    pub fn verdict(&self, launched: u32, what: &str) -> Result<(), String> {
        if launched >= self.enough {
            Ok(())
        } else {
            Err(format!(
                "only {launched} of {} {what} could be launched (at least {} required)",
                self.wanted, self.enough
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(zone: &str, time: i64, price: f64) -> PricePoint {
        PricePoint { zone: zone.into(), time, price }
    }

    #[test]
    fn zone_choice() {
        let zones: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| (*s).to_owned()).collect();
        let h = vec![
            p("a", 1, 0.10),
            p("a", 2, 0.30), // volatile, recent 0.30
            p("b", 1, 0.20),
            p("b", 2, 0.21), // stable, recent 0.21
            p("c", 1, 0.50),
            p("c", 2, 0.50), // most stable, but above the bid
        ];
        assert_eq!(choose_zone(0.25, &zones, &h).as_deref(), Some("b"));
        // Nothing below the bid: the least volatile overall.
        assert_eq!(choose_zone(0.05, &zones, &h).as_deref(), Some("c"));
        // Zone d has no history and is never chosen; no history at all gives no zone.
        assert_eq!(choose_zone(1.0, &["d".to_owned()], &h), None);
        assert!((mean_price(&h).unwrap() - 0.3016666).abs() < 1e-6);
    }

    #[test]
    fn attempt_order() {
        let t: Vec<String> = vec!["m5.large".into(), "m5a.large".into()];
        assert_eq!(
            attempts(&t, true),
            vec![
                Attempt::Spot { instance_type: "m5.large".into() },
                Attempt::Spot { instance_type: "m5a.large".into() },
                Attempt::OnDemand { instance_type: "m5.large".into() }
            ]
        );
        assert_eq!(attempts(&t, false).len(), 2);
    }

    fn spot(t: &str) -> Attempt {
        Attempt::Spot { instance_type: t.into() }
    }
    fn od(t: &str) -> Attempt {
        Attempt::OnDemand { instance_type: t.into() }
    }

    /// Runs a policy against a scripted EC2: `capacity[attempt]` is how many boxes EC2 can give
    /// for that attempt at each try (in turn; the last value repeats). Returns the calls made
    /// as (attempt, count, min_count), the seconds waited, and the boxes launched.
    fn run(p: &LaunchPolicy, capacity: &[&[u32]]) -> (Vec<(usize, u32, u32)>, u64, u32) {
        let mut state = LaunchState::default();
        let mut calls = Vec::new();
        let mut tries = vec![0usize; capacity.len()];
        let mut waited = 0;
        for _ in 0..1000 {
            match p.next(&state) {
                Next::Done { launched } => return (calls, waited, launched),
                Next::Launch { attempt, count, min_count } => {
                    calls.push((attempt, count, min_count));
                    let caps = capacity[attempt];
                    let cap = caps[tries[attempt].min(caps.len() - 1)];
                    tries[attempt] += 1;
                    let outcome = if cap >= min_count { Outcome::Launched(cap.min(count)) } else { Outcome::Short };
                    state = p.record(&state, outcome);
                    if let Some(w) = p.wait(&state) {
                        waited += w;
                    }
                }
            }
        }
        panic!("the policy did not finish");
    }

    #[test]
    fn launch_policy_table() {
        let policy = |attempts: Vec<Attempt>, wanted, enough, retry, tentative| LaunchPolicy {
            attempts,
            wanted,
            enough,
            retry_for_secs: retry,
            tentative,
        };
        // (what, policy, capacity per attempt, calls, seconds waited, launched, success)
        type Case = (&'static str, LaunchPolicy, Vec<&'static [u32]>, Vec<(usize, u32, u32)>, u64, u32, bool);
        let cases: Vec<Case> = vec![
            (
                "on demand, enough capacity",
                policy(vec![od("a")], 4, 4, 0, false),
                vec![&[4]],
                vec![(0, 4, 4)],
                0,
                4,
                true,
            ),
            (
                "all or nothing, short: one call, failure",
                policy(vec![od("a")], 4, 4, 0, false),
                vec![&[3]],
                vec![(0, 4, 4)],
                0,
                0,
                false,
            ),
            (
                "min-workers met by a partial launch",
                policy(vec![od("a")], 4, 2, 0, false),
                vec![&[3]],
                vec![(0, 4, 4), (0, 4, 1)],
                0,
                3,
                true,
            ),
            (
                "min-workers not met",
                policy(vec![od("a")], 4, 3, 0, false),
                vec![&[2]],
                vec![(0, 4, 4), (0, 4, 1)],
                0,
                2,
                false,
            ),
            (
                "spot types in order, then on-demand fallback",
                policy(vec![spot("a"), spot("b"), od("a")], 4, 4, 0, false),
                vec![&[0], &[0], &[4]],
                vec![(0, 4, 4), (1, 4, 4), (2, 4, 4)],
                0,
                4,
                true,
            ),
            (
                "the second spot type fills what the first could not",
                policy(vec![spot("a"), spot("b")], 4, 1, 0, false),
                vec![&[1], &[3]],
                vec![(0, 4, 4), (0, 4, 1), (1, 3, 3)],
                0,
                4,
                true,
            ),
            (
                "a timeout retries every 10 s, then capacity comes",
                policy(vec![spot("a")], 2, 1, 30, false),
                vec![&[0, 0, 0, 2]],
                vec![(0, 2, 2), (0, 2, 1), (0, 2, 1), (0, 2, 1)],
                20,
                2,
                true,
            ),
            (
                "a timeout that expires",
                policy(vec![spot("a")], 2, 1, 30, false),
                vec![&[0]],
                vec![(0, 2, 2), (0, 2, 1), (0, 2, 1), (0, 2, 1), (0, 2, 1)],
                30,
                0,
                false,
            ),
            (
                "tentative takes what comes at the first try, and moves on",
                policy(vec![spot("a"), spot("b")], 4, 0, 0, true),
                vec![&[1], &[0]],
                vec![(0, 4, 1), (1, 3, 1)],
                0,
                1,
                true,
            ),
            (
                "tentative with nothing at all: no error",
                policy(vec![spot("a")], 4, 0, 0, true),
                vec![&[0]],
                vec![(0, 4, 1)],
                0,
                0,
                true,
            ),
        ];
        for (what, p, capacity, calls, waited, launched, ok) in cases {
            let (got_calls, got_waited, got_launched) = run(&p, &capacity);
            assert_eq!(got_calls, calls, "{what}: calls");
            assert_eq!(got_waited, waited, "{what}: waited");
            assert_eq!(got_launched, launched, "{what}: launched");
            assert_eq!(p.verdict(got_launched, "boxes").is_ok(), ok, "{what}: verdict");
        }
    }
}
