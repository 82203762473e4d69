//! Clusters: a leader and workers of one cluster type, launched from the type's baked image
//! with one RunInstances call per node group. Nodes configure themselves at first boot (the
//! agent in the image reads the cluster from its tags), so bring-up takes about as long for
//! a hundred nodes as for one; the workstation only launches, tags and watches.
//!
//! Here: selecting and listing clusters. `bringup` launches (create, grow), `workers` launches
//! workers through the capacity policy (`commands::capacity`), `wait` watches nodes come up, `secrets` makes and
//! reads cluster secrets, `power` stops/starts/terminates, `fanout` runs commands on every node.

use super::images::pick_image;
use super::launch::{finish_launch, prepare, transaction, Group, LocalNeeds, Txn};
use crate::cli::{
    ClusterPowerArgs, ClusterSelection, CreateClusterArgs, GrowClusterArgs, LaunchArgs, ListClustersArgs,
    NodeLaunchArgs, RsyncClusterArgs, SpotArgs, SshClusterArgs,
};
use crate::commands::boxes::wait_for_state;
use crate::context::Ctx;
use anyhow::{anyhow, bail, Context as _, Result};
use cgcloud_aws::Cloud;
use cgcloud_core::model::BoxInfo;
use cgcloud_core::ordinals::allocate_ordinals;
use cgcloud_core::tags::{self, Tags};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;

mod bringup;
mod elastic;
mod fanout;
mod power;
mod secrets;
mod share;
mod volumes;
mod wait;
mod workers;

use super::launch::{check_spot_types, launch_by_policy, spot_zone};
use secrets::{cluster_secrets, new_secrets};
use wait::{await_nodes, Phases, WaitFor, PHASES};
use workers::launch_workers;

pub use bringup::{create, grow};
pub use elastic::scale;
pub use fanout::{rsync, ssh};
pub use power::{power, Power};

/// The boxes of one cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cluster {
    pub name: String,
    pub cluster_type: String,
    pub nodes: Vec<BoxInfo>,
    /// Nodes a spot interruption terminated (listed by `list-clusters` while EC2 still shows
    /// them, about an hour); interrupted nodes that were stopped are among `nodes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted: Vec<BoxInfo>,
    /// An elastic cluster's bounds (its leader's tags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<serde_json::Value>,
}

impl Cluster {
    pub fn leader(&self) -> Option<&BoxInfo> {
        self.nodes.iter().find(|n| n.ordinal == Some(0))
    }
}

/// The namespace's clusters (of one type), oldest leader first.
async fn clusters(ctx: &Ctx, cluster_type: Option<&str>) -> Result<Vec<Cluster>> {
    let ns = ctx.namespace().await?;
    let boxes = ctx.cloud().await?.list_boxes(ns.as_str(), None).await?;
    let mut by_name: BTreeMap<String, Cluster> = BTreeMap::new();
    for b in boxes.into_iter().filter(BoxInfo::is_alive) {
        let (Some(name), Some(t)) = (b.cluster.clone(), b.tags.get(tags::CLUSTER_TYPE).cloned()) else { continue };
        if cluster_type.is_some_and(|ct| ct != t) {
            continue;
        }
        by_name
            .entry(name.clone())
            .or_insert_with(|| Cluster {
                name,
                cluster_type: t,
                nodes: Vec::new(),
                interrupted: Vec::new(),
                scaling: None,
            })
            .nodes
            .push(b);
    }
    let mut out: Vec<Cluster> = by_name.into_values().collect();
    for c in &mut out {
        c.nodes.sort_by_key(|n| (n.ordinal.unwrap_or(u32::MAX), n.instance_id.clone()));
        c.scaling = scaling_of(c).map(|s| {
            let mut j = elastic::scaling_json(&s);
            j["launch_template"] = serde_json::json!(c.leader().and_then(|l| l.tags.get(tags::LAUNCH_TEMPLATE)));
            j
        });
    }
    out.sort_by_key(|c| c.nodes.first().map(|n| n.launch_time.clone()).unwrap_or_default());
    Ok(out)
}

pub(crate) async fn select(ctx: &Ctx, sel: &ClusterSelection) -> Result<Cluster> {
    ctx.registry().await?.cluster_type(&sel.cluster_type)?;
    let ns = ctx.namespace().await?.clone();
    let mut all = clusters(ctx, Some(&sel.cluster_type)).await?;
    if let Some(name) = &sel.cluster {
        return all.into_iter().find(|c| &c.name == name).ok_or_else(|| {
            anyhow!(
                "there is no {} cluster named '{name}' in namespace '{ns}' (`cgcloud list-clusters` shows them)",
                sel.cluster_type
            )
        });
    }
    if all.is_empty() {
        bail!(
            "there is no {} cluster in namespace '{ns}'; create one with `cgcloud create-cluster {}`",
            sel.cluster_type,
            sel.cluster_type
        );
    }
    match sel.ordinal {
        Some(o) => {
            let n = all.len() as i64;
            let i = if o < 0 { n + o } else { o };
            if !(0..n).contains(&i) {
                bail!("cluster ordinal {o} is out of range: there are {n} {} cluster(s)", sel.cluster_type);
            }
            Ok(all.swap_remove(i as usize))
        }
        None if all.len() == 1 => Ok(all.swap_remove(0)),
        None => bail!(
            "{} {} clusters exist; pick one with -c NAME or -o ORDINAL: {}",
            all.len(),
            sel.cluster_type,
            all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Fails at a named point of a launch when `CGCLOUD_FAULT` names it: the tests use this to
/// check that a launch interrupted anywhere leaves nothing behind.
fn fault(point: &str) -> Result<()> {
    if std::env::var("CGCLOUD_FAULT").is_ok_and(|f| f == point) {
        bail!("injected fault at '{point}' (CGCLOUD_FAULT)");
    }
    Ok(())
}

fn launch_args(n: &NodeLaunchArgs) -> LaunchArgs {
    LaunchArgs {
        keypairs: n.keypairs.clone(),
        instance_type: n.instance_type.clone(),
        subnet: n.subnet.clone(),
        options: n.options.clone(),
        never_terminate: n.never_terminate,
        ssh_address: n.ssh_address,
        metrics: n.metrics,
        agent_interval: n.agent_interval,
        autostop: n.autostop.clone(),
        ..Default::default()
    }
}

/// Tells the nodes' agents to read the members again: configured nodes have published their
/// host keys by now, which the others put into their known_hosts (best effort; the agents
/// also refresh on their own).
async fn notify_members(cloud: &Cloud) {
    if let Err(e) = cloud.notify_keys_changed().await {
        tracing::debug!("notification failed: {e}");
    }
}

/// An elastic cluster's bounds, from its leader's tags (a malformed tag is shown as none, and
/// said).
fn scaling_of(c: &Cluster) -> Option<cgcloud_core::scaling::Scaling> {
    match cgcloud_core::scaling::Scaling::from_tags(&c.leader()?.tags) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cluster {}: {e}", c.name);
            None
        }
    }
}

fn check_cluster_name(name: &str) -> Result<()> {
    if !tags::valid_cluster_name(name) {
        bail!("invalid cluster name '{name}': use up to 40 lower-case letters, digits and '-'");
    }
    Ok(())
}

fn print_nodes(ctx: &Ctx, c: &Cluster) {
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|b| {
            vec![
                b.ordinal.map(|o| o.to_string()).unwrap_or_default(),
                b.role.clone(),
                b.instance_id.clone(),
                b.state.clone(),
                b.private_ip.clone().unwrap_or_default(),
                b.public_ip.clone().unwrap_or_else(|| "-".into()),
                b.tags.get(tags::CONFIGURED).cloned().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    ctx.out.table(&["ORDINAL", "ROLE", "INSTANCE", "STATE", "PRIVATE_IP", "PUBLIC_IP", "CONFIGURED"], &rows, c);
}

pub async fn list(ctx: &Ctx, a: ListClustersArgs) -> Result<ExitCode> {
    if let Some(t) = &a.cluster_type {
        ctx.registry().await?.cluster_type(t)?;
    }
    let mut all = clusters(ctx, a.cluster_type.as_deref()).await?;
    let ns = ctx.namespace().await?;
    for lost in ctx.cloud().await?.interrupted_boxes(ns.as_str()).await? {
        if let Some(c) = all.iter_mut().find(|c| lost.cluster.as_ref() == Some(&c.name)) {
            c.interrupted.push(lost);
        }
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|c| {
            let mut states: BTreeMap<&str, usize> = BTreeMap::new();
            for n in &c.nodes {
                *states.entry(n.state.as_str()).or_default() += 1;
            }
            let configured =
                c.nodes.iter().filter(|n| n.tags.get(tags::CONFIGURED).map(String::as_str) == Some("true")).count();
            vec![
                c.name.clone(),
                c.cluster_type.clone(),
                c.leader().map(|l| l.instance_id.clone()).unwrap_or_else(|| "-".into()),
                c.nodes.len().to_string(),
                states.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(","),
                format!("{configured}/{}", c.nodes.len()),
                c.nodes.first().map(|n| n.launch_time.clone()).unwrap_or_default(),
                c.leader().and_then(|l| l.autostop.clone()).unwrap_or_else(|| "-".into()),
                (c.nodes.iter().filter(|n| n.interrupted.is_some()).count() + c.interrupted.len()).to_string(),
                scaling_of(c).map(|s| s.summary()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    ctx.out.table(
        &[
            "CLUSTER",
            "TYPE",
            "LEADER",
            "NODES",
            "STATES",
            "CONFIGURED",
            "LAUNCHED",
            "AUTOSTOP",
            "INTERRUPTED",
            "SCALING",
        ],
        &rows,
        &all,
    );
    Ok(ExitCode::SUCCESS)
}
