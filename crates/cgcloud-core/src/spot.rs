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

/// The error codes by which EC2 says it could not provide the capacity asked for (try another
/// type, zone or market, or later), rather than that the request is wrong.
pub const CAPACITY_ERRORS: [&str; 6] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InsufficientFreeAddressesInSubnet",
    "Unsupported",
];

/// One way of launching some of the boxes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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

/// How a group of boxes (a cluster's workers) is launched when capacity may be short.
///
/// The spot attempts (at the front of `attempts`) are tried in turn, each for the boxes still
/// missing; a round of them that leaves boxes missing is repeated every
/// [`RETRY_EVERY_SECS`] for `retry_for_secs` (the original's `--spot-timeout`). Then the
/// on-demand attempts, once each. A launch that needs every box (`enough == wanted`) asks
/// EC2 for all of the missing boxes or none in each call, so that it never launches boxes it
/// would have to roll back; otherwise an attempt asks for all of them first and, if EC2 is
/// short, again for as many as it can give (EC2 fills MinCount..MaxCount as far as it can;
/// asking for all first also suits emulators that launch exactly MinCount). Taking what
/// comes (the original's `--spot-tentative`) is `enough` below `wanted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPolicy {
    pub attempts: Vec<Attempt>,
    pub wanted: u32,
    /// The fewest that make the launch a success.
    pub enough: u32,
    /// How long to keep repeating the spot attempts while boxes are missing (0: one round).
    pub retry_for_secs: u64,
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
    /// Seconds spent waiting between rounds of spot attempts.
    elapsed: u64,
    waited: bool,
}

/// Seconds between rounds of spot attempts while boxes are missing.
pub const RETRY_EVERY_SECS: u64 = 10;

impl LaunchPolicy {
    fn all_or_nothing(&self) -> bool {
        self.enough >= self.wanted
    }

    /// How many attempts at the front are spot attempts (the ones repeated in rounds).
    fn spot_attempts(&self) -> usize {
        self.attempts.iter().take_while(|a| matches!(a, Attempt::Spot { .. })).count()
    }

    /// The next step from `state`.
    pub fn next(&self, state: &LaunchState) -> Next {
        let remaining = self.wanted.saturating_sub(state.launched);
        if remaining == 0 || state.attempt >= self.attempts.len() {
            return Next::Done { launched: state.launched };
        }
        let min_count = if self.all_or_nothing() || !state.partial { remaining } else { 1 };
        Next::Launch { attempt: state.attempt, count: remaining, min_count }
    }

    /// `state` after `outcome` of the launch `next` asked for.
    pub fn record(&self, state: &LaunchState, outcome: Outcome) -> LaunchState {
        let mut s = state.clone();
        s.waited = false;
        match outcome {
            Outcome::Launched(k) => s.launched += k,
            // Short of all of them: as many as EC2 can give, unless only all will do.
            Outcome::Short if !s.partial && !self.all_or_nothing() => {
                s.partial = true;
                return s;
            }
            Outcome::Short => {}
        }
        if s.launched >= self.wanted {
            return s;
        }
        s.partial = false;
        // Short, or fewer than asked: whatever is still missing, the next attempt may get; at
        // the end of a round of spot attempts, another round if there is time left.
        s.attempt += 1;
        let spot = self.spot_attempts();
        if spot > 0 && s.attempt == spot && s.elapsed + RETRY_EVERY_SECS <= self.retry_for_secs {
            s.attempt = 0;
            s.elapsed += RETRY_EVERY_SECS;
            s.waited = true;
        }
        s
    }

    /// How long to wait before the next launch, if `record` decided to start another round.
    pub fn wait(&self, state: &LaunchState) -> Option<u64> {
        state.waited.then_some(RETRY_EVERY_SECS)
    }

    /// Whether `launched` boxes (`what`, e.g. "workers") are a success.
    pub fn verdict(&self, launched: u32, what: &str) -> Result<(), TooFew> {
        if launched >= self.enough {
            Ok(())
        } else {
            Err(TooFew { launched, wanted: self.wanted, enough: self.enough, what: what.to_owned() })
        }
    }
}

/// A launch that got less capacity than it needed.
#[derive(Debug, thiserror::Error)]
#[error("only {launched} of {wanted} {what} could be launched (at least {enough} required)")]
pub struct TooFew {
    pub launched: u32,
    pub wanted: u32,
    pub enough: u32,
    pub what: String,
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
        let policy = |attempts: Vec<Attempt>, wanted, enough, retry| LaunchPolicy {
            attempts,
            wanted,
            enough,
            retry_for_secs: retry,
        };
        // (what, policy, capacity per attempt, calls, seconds waited, launched, success)
        type Case = (&'static str, LaunchPolicy, Vec<&'static [u32]>, Vec<(usize, u32, u32)>, u64, u32, bool);
        let cases: Vec<Case> = vec![
            ("on demand, enough capacity", policy(vec![od("a")], 4, 4, 0), vec![&[4]], vec![(0, 4, 4)], 0, 4, true),
            (
                "all or nothing, short: one call, nothing launched, failure",
                policy(vec![od("a")], 4, 4, 0),
                vec![&[3]],
                vec![(0, 4, 4)],
                0,
                0,
                false,
            ),
            (
                "min-workers met by a partial launch",
                policy(vec![od("a")], 4, 2, 0),
                vec![&[3]],
                vec![(0, 4, 4), (0, 4, 1)],
                0,
                3,
                true,
            ),
            (
                "min-workers not met",
                policy(vec![od("a")], 4, 3, 0),
                vec![&[2]],
                vec![(0, 4, 4), (0, 4, 1)],
                0,
                2,
                false,
            ),
            (
                "spot types in order, then on-demand fallback",
                policy(vec![spot("a"), spot("b"), od("a")], 4, 4, 0),
                vec![&[0], &[0], &[4]],
                vec![(0, 4, 4), (1, 4, 4), (2, 4, 4)],
                0,
                4,
                true,
            ),
            (
                "all or nothing across types: a type with room for some is not used for some",
                policy(vec![spot("a"), spot("b"), od("a")], 4, 4, 0),
                vec![&[3], &[2], &[0]],
                vec![(0, 4, 4), (1, 4, 4), (2, 4, 4)],
                0,
                0,
                false,
            ),
            (
                "the second spot type fills what the first could not",
                policy(vec![spot("a"), spot("b")], 4, 1, 0),
                vec![&[1], &[3]],
                vec![(0, 4, 4), (0, 4, 1), (1, 3, 3)],
                0,
                4,
                true,
            ),
            (
                "partial spot, the rest on demand",
                policy(vec![spot("a"), od("a")], 5, 1, 0),
                vec![&[2], &[9]],
                vec![(0, 5, 5), (0, 5, 1), (1, 3, 3)],
                0,
                5,
                true,
            ),
            (
                "a timeout repeats the round every 10 s, then capacity comes",
                policy(vec![spot("a")], 2, 1, 30),
                vec![&[0, 0, 0, 0, 2]],
                vec![(0, 2, 2), (0, 2, 1), (0, 2, 2), (0, 2, 1), (0, 2, 2)],
                20,
                2,
                true,
            ),
            (
                "all or nothing with a timeout: every retry asks for all",
                policy(vec![spot("a")], 4, 4, 20),
                vec![&[2, 3, 4]],
                vec![(0, 4, 4), (0, 4, 4), (0, 4, 4)],
                20,
                4,
                true,
            ),
            (
                "a partial fill is completed by later rounds within the timeout",
                policy(vec![spot("a")], 4, 1, 20),
                vec![&[0, 1, 0, 0, 3]],
                vec![(0, 4, 4), (0, 4, 1), (0, 3, 3), (0, 3, 1), (0, 3, 3)],
                20,
                4,
                true,
            ),
            (
                "rounds go through every spot type, and on demand only after the timeout",
                policy(vec![spot("a"), spot("b"), od("a")], 2, 2, 10),
                vec![&[0], &[0], &[2]],
                vec![(0, 2, 2), (1, 2, 2), (0, 2, 2), (1, 2, 2), (2, 2, 2)],
                10,
                2,
                true,
            ),
            (
                "a timeout that expires",
                policy(vec![spot("a")], 2, 1, 30),
                vec![&[0]],
                vec![(0, 2, 2), (0, 2, 1), (0, 2, 2), (0, 2, 1), (0, 2, 2), (0, 2, 1), (0, 2, 2), (0, 2, 1)],
                30,
                0,
                false,
            ),
            (
                "a timeout shorter than one retry is one round",
                policy(vec![spot("a")], 2, 2, 9),
                vec![&[0]],
                vec![(0, 2, 2)],
                0,
                0,
                false,
            ),
            (
                "tentative (enough 0) takes what comes and moves on",
                policy(vec![spot("a"), spot("b")], 4, 0, 0),
                vec![&[1], &[0]],
                vec![(0, 4, 4), (0, 4, 1), (1, 3, 3), (1, 3, 1)],
                0,
                1,
                true,
            ),
            (
                "tentative with nothing at all: no error",
                policy(vec![spot("a")], 4, 0, 0),
                vec![&[0]],
                vec![(0, 4, 4), (0, 4, 1)],
                0,
                0,
                true,
            ),
            (
                "tentative within a timeout: what came by then",
                policy(vec![spot("a")], 4, 0, 10),
                vec![&[0, 1, 0, 2]],
                vec![(0, 4, 4), (0, 4, 1), (0, 3, 3), (0, 3, 1)],
                10,
                3,
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
