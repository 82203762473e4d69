//! One resume of some workers, as the leader's agent makes it: RunInstances calls from the
//! cluster's launch template, one market, type and subnet at a time in the order the bounds
//! give, skipping those cooling down after EC2 ran out of capacity. Only what differs between
//! attempts is in the request (type, subnet, market, which workers); everything else (image,
//! groups, key, profile, user data) is the template's, decided by the workstation. The tags are
//! sent in full although the template has them, so that a worker carries its cluster's tags
//! whether EC2 merges a template's tags with a request's or not.

use crate::aws::{Answer, AwsError};
use crate::log::log;
use cgcloud_core::ordinals;
use cgcloud_core::scaling::{Cooldowns, Market, Scaling, TemplateTag};
use cgcloud_core::spot::{Attempt, CAPACITY_ERRORS};
use cgcloud_core::tags::{self, Tags};

/// The most workers one RunInstances call asks for (EC2 takes more, but a smaller call fails
/// faster and keeps its ordinals tag short).
pub const MAX_PER_CALL: usize = 200;

/// One RunInstances call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub template: &'a TemplateTag,
    pub attempt: &'a Attempt,
    pub bid: Option<&'a str>,
    pub subnet: &'a str,
    /// The workers to launch, by number, in launch-index order.
    pub nodes: &'a [u32],
    /// The fewest EC2 may launch rather than refuse.
    pub min_count: usize,
    /// The template's tags, which every worker carries.
    pub tags: &'a Tags,
    /// Makes a retried call idempotent; also the instances' `cgcloud:launch-call`.
    pub token: &'a str,
}

impl Call<'_> {
    /// The query parameters.
    pub fn params(&self) -> Vec<(String, String)> {
        let (instance_type, spot) = match self.attempt {
            Attempt::Spot { instance_type } => (instance_type, true),
            Attempt::OnDemand { instance_type } => (instance_type, false),
        };
        let mut p: Vec<(String, String)> = vec![
            ("LaunchTemplate.LaunchTemplateId".into(), self.template.id.clone()),
            ("LaunchTemplate.Version".into(), self.template.version.to_string()),
            ("InstanceType".into(), instance_type.clone()),
            ("SubnetId".into(), self.subnet.to_owned()),
            ("MinCount".into(), self.min_count.to_string()),
            ("MaxCount".into(), self.nodes.len().to_string()),
            ("ClientToken".into(), self.token.to_owned()),
        ];
        if spot {
            p.push(("InstanceMarketOptions.MarketType".into(), "spot".into()));
            p.push(("InstanceMarketOptions.SpotOptions.SpotInstanceType".into(), "one-time".into()));
            p.push(("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior".into(), "terminate".into()));
            if let Some(b) = self.bid {
                p.push(("InstanceMarketOptions.SpotOptions.MaxPrice".into(), b.to_owned()));
            }
        }
        let mut tags = self.tags.clone();
        tags.insert(tags::ORDINALS.into(), ordinals::tag_value(self.nodes));
        tags.insert(tags::LAUNCH_CALL.into(), self.token.to_owned());
        for (i, kind) in ["instance", "volume"].iter().enumerate() {
            let spec = format!("TagSpecification.{}", i + 1);
            p.push((format!("{spec}.ResourceType"), (*kind).to_owned()));
            for (j, (k, v)) in tags.iter().enumerate() {
                p.push((format!("{spec}.Tag.{}.Key", j + 1), k.clone()));
                p.push((format!("{spec}.Tag.{}.Value", j + 1), v.clone()));
            }
        }
        p
    }
}

/// `nodes` in calls of at most [`MAX_PER_CALL`] whose ordinals fit one tag.
pub fn batches(nodes: &[u32]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for &n in nodes {
        cur.push(n);
        if cur.len() > MAX_PER_CALL || ordinals::tag_value(&cur).len() > ordinals::ENCODED_BUDGET {
            cur.pop();
            out.push(std::mem::replace(&mut cur, vec![n]));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The instances a RunInstances answer launched: (launch index, instance id).
pub fn launched(a: &Answer) -> Vec<(usize, String)> {
    let mut v: Vec<(usize, String)> = a
        .records("item", &["instanceId", "amiLaunchIndex"])
        .into_iter()
        .filter(|r| r[0].starts_with("i-"))
        .filter_map(|r| Some((r[1].parse().ok()?, r[0].clone())))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What a resume did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    /// (worker, instance id)
    pub launched: Vec<(u32, String)>,
    /// Workers no attempt could launch, and why (every attempt's answer, for `sinfo -R`).
    pub failed: Vec<u32>,
    pub reason: String,
}

/// One RunInstances call with these parameters (the agent's client, or a test's fake).
pub type RunInstances<'a> = dyn FnMut(&[(String, String)]) -> Result<Answer, AwsError> + 'a;

/// What every resume of one cluster shares: its bounds, template and tags.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub scaling: &'a Scaling,
    pub template: &'a TemplateTag,
    /// The template's tags, which every worker carries.
    pub tags: &'a Tags,
    /// How long an attempt that found no capacity is skipped.
    pub cooldown_secs: u64,
}

impl Plan<'_> {
    /// Launches `nodes` through `run` (RunInstances with these parameters), recording in
    /// `cooldowns` the attempts that found no capacity at `now`. `token` makes each call's
    /// client token (`token-1`, …), so that a repeated call does not launch twice.
    pub fn resume(
        &self,
        run: &mut RunInstances<'_>,
        nodes: &[u32],
        cooldowns: &mut Cooldowns,
        now: u64,
        token: &str,
    ) -> Resumed {
        let (scaling, template, tags) = (self.scaling, self.template, self.tags);
        let bid = match &scaling.market {
            Market::Spot { bid, .. } => bid.as_deref(),
            Market::OnDemand => None,
        };
        let mut missing: Vec<u32> = nodes.to_vec();
        let mut out = Resumed::default();
        let mut why: Vec<String> = Vec::new();
        let mut calls = 0;
        let order = cooldowns.usable(&scaling.launch_order(), now);
        if order.is_empty() {
            why.push("every instance type and subnet is cooling down after a capacity shortage".into());
        }
        'attempts: for (attempt, subnet) in &order {
            for batch in batches(&missing) {
                // All of the batch first, then as many as EC2 has: EC2 fills MinCount..MaxCount
                // as far as it can, but some emulators launch exactly MinCount.
                let mins: &[usize] = if batch.len() > 1 { &[batch.len(), 1] } else { &[1] };
                let mut short: Option<String> = None;
                for &min_count in mins {
                    calls += 1;
                    let call_token = format!("{token}-{calls}");
                    let call =
                        Call { template, attempt, bid, subnet, nodes: &batch, min_count, tags, token: &call_token };
                    match run(&call.params()) {
                        Ok(a) => {
                            let got = launched(&a);
                            for (index, id) in &got {
                                if let Some(n) = batch.get(*index) {
                                    out.launched.push((*n, id.clone()));
                                }
                            }
                            missing.retain(|n| !out.launched.iter().any(|(l, _)| l == n));
                            short = (got.len() < batch.len()).then(|| format!("{} of {}", got.len(), batch.len()));
                            break;
                        }
                        Err(AwsError::Service { code, message, .. }) if CAPACITY_ERRORS.contains(&code.as_str()) => {
                            log("warning", format!("scale: {}: {code}: {message}", describe(attempt, subnet)));
                            short = Some(code);
                        }
                        Err(e) => {
                            // Not capacity (permissions, a bad template): another type will not help.
                            why.push(format!("{}: {}", describe(attempt, subnet), tags::printable(&e.to_string())));
                            break 'attempts;
                        }
                    }
                }
                if let Some(short) = short {
                    // The rest try elsewhere, and this type and zone rest.
                    why.push(format!("{}: {short}", describe(attempt, subnet)));
                    cooldowns.failed(attempt, subnet, now, self.cooldown_secs);
                    continue 'attempts;
                }
            }
            if missing.is_empty() {
                break;
            }
        }
        out.launched.sort();
        out.failed = missing;
        if !out.failed.is_empty() {
            out.reason = why.join("; ");
        }
        out
    }
}

fn describe(a: &Attempt, subnet: &str) -> String {
    match a {
        Attempt::Spot { instance_type } => format!("{instance_type} spot in {subnet}"),
        Attempt::OnDemand { instance_type } => format!("{instance_type} on demand in {subnet}"),
    }
}

#[cfg(test)]
mod tests;
