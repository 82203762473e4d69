//! Elastic clusters: the bounds a cluster's leader scales its workers within, as the workstation
//! writes them in tags on the leader, and the leader's pure decisions within them: which Slurm
//! node is which worker, what a hostlist such as `w[1-3,5]` names, how many workers a resume may
//! launch, and which launch attempts are cooling down after EC2 ran out of capacity.
//!
//! The tags are the workstation's only (`policy::WORKSTATION_TAGS`): a box that could write them
//! could make its leader launch more than its owner allowed. The leader's agent still reads them
//! as untrusted text, because they end up in Slurm's configuration and in EC2 requests.

use crate::spot::Attempt;
use crate::tags::{self, Tags};
use std::collections::{BTreeMap, BTreeSet};

/// The most workers an elastic cluster may be given. Slurm needs every possible node in its
/// configuration, and the leader's reconcile lists them all, so the bound is a real cost.
pub const MAX_WORKERS: u32 = 4096;

/// The instance types, markets and subnets a leader may launch workers with, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    /// Workers the leader keeps even when idle.
    pub min: u32,
    /// Workers the leader never goes beyond (counting those still shutting down).
    pub max: u32,
    /// Seconds a worker may be idle before it is suspended (terminated).
    pub idle_secs: u64,
    /// Instance types, most preferred first.
    pub types: Vec<String>,
    pub market: Market,
    /// Subnets to launch in, most preferred first: a zone short of capacity is skipped for the next.
    pub subnets: Vec<String>,
    /// What Slurm is told every worker has: the smallest of `types`.
    pub node: NodeShape,
}

/// How workers are bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Market {
    OnDemand,
    /// On the spot market, at most at `bid` dollars an hour (None: up to the on-demand price),
    /// falling back to on-demand when no spot capacity is left if `fallback`.
    Spot {
        bid: Option<String>,
        fallback: bool,
    },
}

/// The resources Slurm schedules on each worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeShape {
    pub cpus: u32,
    /// MiB of memory jobs may use.
    pub mem_mib: u64,
}

/// A scaling tag that does not say what the workstation writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tag {tag} = '{value}': {why}")]
pub struct ScalingError {
    pub tag: &'static str,
    pub value: String,
    pub why: String,
}

fn bad(tag: &'static str, value: &str, why: impl Into<String>) -> ScalingError {
    // Both may quote the tag, which a box's owner may show on a terminal.
    ScalingError { tag, value: tags::printable(value), why: tags::printable(&why.into()) }
}

/// `key=value` words, each key known and given once.
fn fields<'a>(tag: &'static str, value: &'a str, known: &[&str]) -> Result<BTreeMap<&'a str, &'a str>, ScalingError> {
    let mut out = BTreeMap::new();
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let (k, v) = word.split_once('=').ok_or_else(|| bad(tag, value, format!("'{word}' is not key=value")))?;
        if !known.contains(&k) {
            return Err(bad(tag, value, format!("unknown field '{k}'")));
        }
        if out.insert(k, v).is_some() {
            return Err(bad(tag, value, format!("field '{k}' given twice")));
        }
    }
    Ok(out)
}

/// A decimal number without sign, exponent or leading zeros, as the workstation writes them.
fn number<T: std::str::FromStr>(
    tag: &'static str,
    value: &str,
    field: &str,
    got: Option<&&str>,
) -> Result<T, ScalingError> {
    let text = got.ok_or_else(|| bad(tag, value, format!("no {field}")))?;
    let plain =
        !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) && (text.len() == 1 || !text.starts_with('0'));
    plain
        .then(|| text.parse().ok())
        .flatten()
        .ok_or_else(|| bad(tag, value, format!("{field} '{text}' is not a whole number")))
}

/// An EC2 instance type as `DescribeInstanceTypes` names them: `m7i.large`, `u-6tb1.metal`.
pub fn valid_instance_type(t: &str) -> bool {
    let mut parts = t.split('.');
    let (Some(family), Some(size), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    word(family) && word(size) && family.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `prefix-` followed by 8 or 17 lower-case hex digits, as EC2 makes ids.
fn valid_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|h| h.strip_prefix('-'))
        .is_some_and(|h| matches!(h.len(), 8 | 17) && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
}

/// A spot bid in dollars an hour: digits with at most one point and 6 decimals, above zero.
fn valid_bid(b: &str) -> bool {
    let (whole, frac) = b.split_once('.').unwrap_or((b, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    !whole.is_empty()
        && whole.len() <= 4
        && digits(whole)
        && frac.len() <= 6
        && digits(frac)
        && !(b.contains('.') && frac.is_empty())
        && b.parse::<f64>().is_ok_and(|v| v > 0.0)
}

impl Scaling {
    /// The bounds in the tags of a cluster's leader: None if the cluster does not scale (no
    /// `cgcloud:scaling` tag); an error if a tag is malformed or one is missing.
    pub fn from_tags(t: &Tags) -> Result<Option<Scaling>, ScalingError> {
        let Some(bounds) = t.get(tags::SCALING) else { return Ok(None) };
        let get = |tag: &'static str| t.get(tag).map(String::as_str).ok_or_else(|| bad(tag, "", "missing"));

        let f = fields(tags::SCALING, bounds, &["min", "max", "idle"])?;
        let min: u32 = number(tags::SCALING, bounds, "min", f.get("min"))?;
        let max: u32 = number(tags::SCALING, bounds, "max", f.get("max"))?;
        let idle_secs: u64 = number(tags::SCALING, bounds, "idle", f.get("idle"))?;
        if max == 0 || max > MAX_WORKERS {
            return Err(bad(tags::SCALING, bounds, format!("max must be 1 to {MAX_WORKERS}")));
        }
        if min > max {
            return Err(bad(tags::SCALING, bounds, "min is above max"));
        }
        if !(60..=7 * 86_400).contains(&idle_secs) {
            return Err(bad(tags::SCALING, bounds, "idle must be 60 s to 7 days"));
        }

        let types_text = get(tags::SCALING_TYPES)?;
        let types: Vec<String> = types_text.split(',').map(str::to_owned).collect();
        if types.iter().any(|ty| !valid_instance_type(ty)) || types.len() > 16 {
            return Err(bad(tags::SCALING_TYPES, types_text, "not a list of up to 16 instance types"));
        }
        if types.iter().collect::<BTreeSet<_>>().len() != types.len() {
            return Err(bad(tags::SCALING_TYPES, types_text, "a type is listed twice"));
        }

        let market_text = get(tags::SCALING_MARKET)?;
        let market = Market::parse(market_text).ok_or_else(|| {
            bad(tags::SCALING_MARKET, market_text, "not 'on-demand' or 'spot [bid=DOLLARS] [fallback]'")
        })?;

        let subnets_text = get(tags::SCALING_SUBNETS)?;
        let subnets: Vec<String> = subnets_text.split(',').map(str::to_owned).collect();
        if subnets.iter().any(|s| !valid_id("subnet", s)) || subnets.len() > 16 {
            return Err(bad(tags::SCALING_SUBNETS, subnets_text, "not a list of up to 16 subnet ids"));
        }

        let node_text = get(tags::SCALING_NODE)?;
        let nf = fields(tags::SCALING_NODE, node_text, &["cpus", "mem"])?;
        let node = NodeShape {
            cpus: number(tags::SCALING_NODE, node_text, "cpus", nf.get("cpus"))?,
            mem_mib: number(tags::SCALING_NODE, node_text, "mem", nf.get("mem"))?,
        };
        if node.cpus == 0 || node.mem_mib == 0 {
            return Err(bad(tags::SCALING_NODE, node_text, "cpus and mem must be above 0"));
        }
        Ok(Some(Scaling { min, max, idle_secs, types, market, subnets, node }))
    }

    /// The tags that say this, for the workstation to write on the leader.
    pub fn to_tags(&self) -> Tags {
        let mut t = Tags::new();
        t.insert(tags::SCALING.into(), format!("min={} max={} idle={}", self.min, self.max, self.idle_secs));
        t.insert(tags::SCALING_TYPES.into(), self.types.join(","));
        t.insert(tags::SCALING_MARKET.into(), self.market.to_string());
        t.insert(tags::SCALING_SUBNETS.into(), self.subnets.join(","));
        t.insert(tags::SCALING_NODE.into(), format!("cpus={} mem={}", self.node.cpus, self.node.mem_mib));
        t
    }

    /// The launch attempts in the order a resume tries them: each market and type in turn
    /// (`spot::attempts`; on demand, every type), and for each, every subnet in turn.
    pub fn launch_order(&self) -> Vec<(Attempt, String)> {
        let attempts = match &self.market {
            Market::Spot { fallback, .. } => crate::spot::attempts(&self.types, *fallback),
            Market::OnDemand => self.types.iter().map(|t| Attempt::OnDemand { instance_type: t.clone() }).collect(),
        };
        attempts.into_iter().flat_map(|a| self.subnets.iter().map(move |s| (a.clone(), s.clone()))).collect()
    }

    /// For people: `0–4 idle 10m spot m7i.large,m6i.large→on-demand`.
    pub fn summary(&self) -> String {
        let market = match &self.market {
            Market::OnDemand => "on-demand".to_owned(),
            Market::Spot { fallback, .. } => format!("spot{}", if *fallback { ", then on-demand" } else { "" }),
        };
        format!(
            "{}–{} idle {} {} {}",
            self.min,
            self.max,
            tags::duration_text(self.idle_secs),
            market,
            self.types.join(",")
        )
    }
}

impl Market {
    fn parse(text: &str) -> Option<Market> {
        let mut words = text.split(' ');
        match words.next()? {
            "on-demand" => words.next().is_none().then_some(Market::OnDemand),
            "spot" => {
                let (mut bid, mut fallback) = (None, false);
                for w in words {
                    match w.split_once('=') {
                        Some(("bid", b)) if bid.is_none() && valid_bid(b) => bid = Some(b.to_owned()),
                        None if w == "fallback" && !fallback => fallback = true,
                        _ => return None,
                    }
                }
                Some(Market::Spot { bid, fallback })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Market::OnDemand => f.write_str("on-demand"),
            Market::Spot { bid, fallback } => {
                f.write_str("spot")?;
                if let Some(b) = bid {
                    write!(f, " bid={b}")?;
                }
                if *fallback {
                    f.write_str(" fallback")?;
                }
                Ok(())
            }
        }
    }
}

/// A spot bid as a tag and EC2 want it: the dollars with 4 decimals, or None if it is not a
/// positive price below $10,000 an hour.
pub fn bid_text(dollars: f64) -> Option<String> {
    let text = format!("{dollars:.4}");
    valid_bid(&text).then_some(text)
}

/// The launch template workers are launched from: `lt-…` and its version, as the tag
/// `cgcloud:launch-template` holds it (`lt-0123456789abcdef0:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateTag {
    pub id: String,
    pub version: u32,
}

impl TemplateTag {
    pub fn parse(text: &str) -> Result<TemplateTag, ScalingError> {
        let err = || bad(tags::LAUNCH_TEMPLATE, text, "not lt-ID:VERSION");
        let (id, version) = text.split_once(':').ok_or_else(err)?;
        if !valid_id("lt", id) {
            return Err(err());
        }
        let version = number(tags::LAUNCH_TEMPLATE, text, "version", Some(&version))?;
        if version == 0 {
            return Err(err());
        }
        Ok(TemplateTag { id: id.to_owned(), version })
    }
}

impl std::fmt::Display for TemplateTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.id, self.version)
    }
}

/// The Slurm node name of worker `n`: `w7`. Workers are numbered by their cluster ordinal.
pub fn node_name(prefix: &str, n: u32) -> String {
    format!("{prefix}{n}")
}

/// The worker a Slurm node name stands for: `w7` → 7. None for anything else (another prefix,
/// zero, leading zeros, a suffix), so that one node has one name.
pub fn node_number(prefix: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    let plain = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0');
    plain.then(|| digits.parse().ok()).flatten()
}

/// A hostlist that names something other than this cluster's workers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hostlist '{text}': {why}")]
pub struct HostlistError {
    pub text: String,
    pub why: String,
}

/// The workers a Slurm hostlist names (`w[1-3,5],w9`, as Slurm hands it to its resume and
/// suspend programs), each between 1 and `max`. Only the forms Slurm writes for names
/// `PREFIX<N>` are read; anything else (padding, another prefix, a range past `max`) is an
/// error rather than a guess, since the result is launched or terminated.
pub fn expand(prefix: &str, text: &str, max: u32) -> Result<BTreeSet<u32>, HostlistError> {
    let err = |why: &str| HostlistError { text: tags::printable(text), why: tags::printable(why) };
    if text.is_empty() || text.len() > 65_536 {
        return Err(err("empty or too long"));
    }
    let mut out = BTreeSet::new();
    let mut add = |n: u32| {
        if n == 0 || n > max {
            return Err(err(&format!("worker {n} is not between 1 and {max}")));
        }
        out.insert(n);
        Ok(())
    };
    let mut rest = text;
    while !rest.is_empty() {
        let item_end = match rest.find('[') {
            Some(open) if rest.find(',').is_none_or(|comma| open < comma) => {
                rest[open..].find(']').map(|close| open + close + 1).ok_or_else(|| err("unclosed '['"))?
            }
            _ => rest.find(',').unwrap_or(rest.len()),
        };
        let item = &rest[..item_end];
        rest = &rest[item_end..];
        if let Some(after) = rest.strip_prefix(',') {
            if after.is_empty() {
                return Err(err("ends with ','"));
            }
            rest = after;
        } else if !rest.is_empty() {
            return Err(err("text after ']'"));
        }
        match item.strip_prefix(prefix).and_then(|r| r.strip_prefix('[')).and_then(|r| r.strip_suffix(']')) {
            Some(ranges) => {
                for range in ranges.split(',') {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    let (Some(a), Some(b)) = (node_number("", a), node_number("", b)) else {
                        return Err(err(&format!("'{range}' is not a range of worker numbers")));
                    };
                    if a > b || b > max {
                        return Err(err(&format!("range '{range}' is not between 1 and {max}")));
                    }
                    for n in a..=b {
                        add(n)?;
                    }
                }
            }
            None => add(node_number(prefix, item).ok_or_else(|| err(&format!("'{item}' is not a worker name")))?)?,
        }
    }
    Ok(out)
}

/// `nodes` as a hostlist: `w[1-3,5]`, or `w7` for one node.
pub fn compress(prefix: &str, nodes: &BTreeSet<u32>) -> String {
    let ns: Vec<u32> = nodes.iter().copied().collect();
    match ns.as_slice() {
        [] => String::new(),
        [one] => node_name(prefix, *one),
        _ => format!("{prefix}[{}]", crate::ordinals::encode(&ns)),
    }
}

/// What a resume of some workers does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Launch these now.
    pub launch: Vec<u32>,
    /// Already have an instance on its way or running: nothing to do.
    pub already: Vec<u32>,
    /// Not now: launching them would take the cluster past `max` while instances are still
    /// shutting down. Slurm asks again, or they fail and are retried.
    pub deferred: Vec<u32>,
}

/// The resume of `asked` workers when `busy` have an instance pending or running and `instances`
/// of the cluster's workers exist in any state short of terminated (shutting-down ones too:
/// EC2 bills them and quotas count them). Never plans more than `max` instances in all.
pub fn plan_launch(asked: &BTreeSet<u32>, busy: &BTreeSet<u32>, instances: usize, max: u32) -> LaunchPlan {
    let mut room = (max as usize).saturating_sub(instances);
    let mut plan = LaunchPlan::default();
    for &n in asked {
        if busy.contains(&n) {
            plan.already.push(n);
        } else if room > 0 {
            room -= 1;
            plan.launch.push(n);
        } else {
            plan.deferred.push(n);
        }
    }
    plan
}

/// Launch attempts (market and type, subnet) that recently failed for want of capacity, skipped
/// until their cooldown ends, so that a resume goes straight to the next type or zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cooldowns {
    until: BTreeMap<(Attempt, String), u64>,
}

/// How long a launch attempt that found no capacity is skipped (as ParallelCluster's
/// `insufficient_capacity_timeout`).
pub const COOLDOWN_SECS: u64 = 600;

impl Cooldowns {
    /// `attempt` in `subnet` found no capacity at `now` (seconds since the epoch).
    pub fn failed(&mut self, attempt: &Attempt, subnet: &str, now: u64, secs: u64) {
        self.until.insert((attempt.clone(), subnet.to_owned()), now.saturating_add(secs));
    }

    /// `order` without the attempts cooling down at `now`.
    pub fn usable(&self, order: &[(Attempt, String)], now: u64) -> Vec<(Attempt, String)> {
        order.iter().filter(|k| self.until.get(*k).is_none_or(|until| *until <= now)).cloned().collect()
    }

    /// When the first cooldown still running at `now` ends.
    pub fn next_end(&self, now: u64) -> Option<u64> {
        self.until.values().copied().filter(|u| *u > now).min()
    }

    /// Forgets the cooldowns that ended by `now`.
    pub fn expire(&mut self, now: u64) {
        self.until.retain(|_, u| *u > now);
    }
}

#[cfg(test)]
mod tests;
