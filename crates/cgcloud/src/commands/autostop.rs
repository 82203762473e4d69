//! `autostop`: turns autostop on, changes it, or turns it off for a box or a whole cluster, by
//! writing the tags the box's agent (a cluster's: its leader's) reads, then telling the agents
//! to look at once. Deciding when the box is idle, and stopping it, is the agent's
//! (`cgcloud-agent/src/autostop.rs`).

use super::cluster::select as select_cluster;
use crate::cli::{parse_duration, AutostopCmdArgs, ClusterSelection, Selection};
use crate::context::Ctx;
use anyhow::{bail, Result};
use cgcloud_core::tags::{self, Tags};
use std::process::ExitCode;

pub async fn autostop(ctx: &Ctx, a: AutostopCmdArgs) -> Result<ExitCode> {
    let setting = match a.duration.as_str() {
        "off" | "0" => None,
        d => Some((parse_duration(d).map_err(anyhow::Error::msg)?.as_secs(), a.autodown)),
    };
    let cloud = ctx.cloud().await?;
    let reg = ctx.registry().await?;
    let (what, nodes) = if reg.cluster_type(&a.target).is_ok() {
        if a.instance_id.is_some() {
            bail!("a cluster is chosen with -c NAME or -o ORDINAL, not -I");
        }
        let sel = ClusterSelection { cluster_type: a.target.clone(), cluster: a.cluster.clone(), ordinal: a.ordinal };
        let c = select_cluster(ctx, &sel).await?;
        let leader = c.leader().cloned();
        let Some(leader) = leader else { bail!("cluster {} has no leader to decide for it", c.name) };
        // Clusters made before leaders stopped their nodes lack the tag IAM checks for that.
        let missing: Vec<String> =
            c.nodes.iter().filter(|n| !n.tags.contains_key(tags::LEADER_ARN)).map(|n| n.instance_id.clone()).collect();
        if !missing.is_empty() {
            let account = cloud.caller_identity().await?.0;
            let mut t = Tags::new();
            t.insert(
                tags::LEADER_ARN.into(),
                cgcloud_core::policy::instance_arn(&cloud.region, &account, &leader.instance_id),
            );
            cloud.create_tags(&missing, &t).await?;
        }
        (format!("cluster {}", c.name), c.nodes)
    } else {
        let sel = Selection { cluster: a.cluster.clone(), ordinal: a.ordinal, instance_id: a.instance_id.clone() };
        let b = ctx.select(&a.target, &sel).await?;
        if let Some(c) = &b.cluster {
            let t = b.tags.get(tags::CLUSTER_TYPE).cloned().unwrap_or_else(|| "TYPE".into());
            bail!(
                "box {} is a node of cluster {c}, whose leader decides for it: `cgcloud autostop {t} -c {c} {}`",
                b.instance_id,
                a.duration
            );
        }
        (format!("box {}", b.instance_id), vec![b])
    };
    if setting.is_some() {
        if let Some(n) = nodes.iter().find(|n| n.tags.get(tags::AGENT).map(String::as_str) == Some("false")) {
            bail!("{} runs no agent (created with --no-agent), and the agent is what stops it", n.instance_id);
        }
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.instance_id.clone()).collect();
    match setting {
        Some((secs, terminate)) => {
            let mut t = Tags::new();
            t.insert(tags::AUTOSTOP.into(), secs.to_string());
            t.insert(tags::AUTOSTOP_ACTION.into(), if terminate { "terminate" } else { "stop" }.into());
            cloud.create_tags(&ids, &t).await?;
            if !terminate && nodes.iter().any(|n| n.spot) {
                ctx.out.note("note: spot instances cannot stop: autostop terminates them");
            }
        }
        None => cloud.delete_tags(&ids, &[tags::AUTOSTOP, tags::AUTOSTOP_ACTION]).await?,
    }
    // The agents read their tags when told to (and every refresh anyway).
    if let Err(e) = cloud.notify_keys_changed().await {
        tracing::warn!("could not notify the agents ({e}); they pick the change up at their next refresh");
    }
    let mut t = Tags::new();
    if let Some((secs, terminate)) = setting {
        t.insert(tags::AUTOSTOP.into(), secs.to_string());
        t.insert(tags::AUTOSTOP_ACTION.into(), if terminate { "terminate" } else { "stop" }.into());
    }
    let text = tags::autostop_text(&t);
    let json = serde_json::json!({"target": what, "instance_ids": ids, "autostop": text});
    ctx.out.record(&json, || format!("{what}: autostop {}", text.clone().unwrap_or_else(|| "off".into())));
    Ok(ExitCode::SUCCESS)
}
