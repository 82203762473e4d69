//! Stopping, starting and terminating a whole cluster (workers before their leader stop, the
//! leader before its workers start).

use super::*;

#[derive(Debug, Clone, Copy)]
pub enum Power {
    Start,
    Stop,
    Terminate,
}

pub async fn power(ctx: &Ctx, a: ClusterPowerArgs, what: Power) -> Result<ExitCode> {
    let mut c = select(ctx, &a.selection).await?;
    let cloud = ctx.cloud().await?;
    let elastic = c.leader().is_some_and(|l| l.tags.contains_key(tags::LAUNCH_TEMPLATE));
    if elastic && matches!(what, Power::Terminate) && !a.skip_leader {
        // The leader may launch no more; then the workers it launched meanwhile are listed too.
        super::elastic::disarm(ctx, &c).await?;
        c = select(ctx, &a.selection).await?;
    }
    let leader: Vec<String> =
        if a.skip_leader { Vec::new() } else { c.leader().map(|l| vec![l.instance_id.clone()]).unwrap_or_default() };
    let workers: Vec<String> = c.nodes.iter().filter(|n| n.ordinal != Some(0)).map(|n| n.instance_id.clone()).collect();
    let all: Vec<String> = workers.iter().chain(leader.iter()).cloned().collect();
    match what {
        Power::Stop => {
            let spot: Vec<&str> = c
                .nodes
                .iter()
                .filter(|n| n.spot && all.contains(&n.instance_id))
                .map(|n| n.instance_id.as_str())
                .collect();
            if !spot.is_empty() {
                bail!(
                    "cluster {} has spot instances ({}), and EC2 cannot stop spot instances; nothing was stopped. Terminate the cluster instead (persistent volumes are kept)",
                    c.name,
                    spot.join(", ")
                );
            }
            warn_instance_store_data(cloud, &c, &all).await?;
            power_groups(ctx, cloud, &c.name, [&workers, &leader], "stopped", a.quick).await?;
        }
        Power::Start => {
            power_groups(ctx, cloud, &c.name, [&leader, &workers], "running", a.quick).await?;
            if !a.quick && !all.is_empty() {
                crate::commands::boxes::wait_ssh_ready(ctx, &all).await?;
            }
        }
        Power::Terminate => {
            for group in [&workers, &leader] {
                if group.is_empty() {
                    continue;
                }
                cloud.terminate(group).await?;
            }
            if !a.quick && !all.is_empty() {
                wait_for_state(ctx, cloud, &all, "terminated", &format!("the nodes of {}", c.name)).await?;
            }
            crate::commands::boxes::forget(ctx, &all).await?;
            if elastic && !a.skip_leader {
                super::elastic::remove_own(ctx, &c).await?;
            }
        }
    }
    let action = match what {
        Power::Start => "start",
        Power::Stop => "stop",
        Power::Terminate => "terminate",
    };
    let states = if all.is_empty() { BTreeMap::new() } else { cloud.instance_states(&all).await? };
    let nodes: Vec<serde_json::Value> = c
        .nodes
        .iter()
        .filter(|n| all.contains(&n.instance_id))
        .map(|n| {
            let state = states.get(&n.instance_id).map(|s| s.0.clone()).unwrap_or_else(|| "terminated".into());
            serde_json::json!({"instance_id": n.instance_id, "ordinal": n.ordinal, "state": state})
        })
        .collect();
    let json = serde_json::json!({"cluster": c.name, "cluster_type": c.cluster_type, "action": action, "nodes": nodes});
    ctx.out.record(&json, || {
        nodes
            .iter()
            .map(|n| {
                format!(
                    "{}\t{}\t{}",
                    n["ordinal"],
                    n["instance_id"].as_str().unwrap_or(""),
                    n["state"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// Stops (target "stopped") or starts (target "running") the groups one after the other, so
/// that workers stop before their leader and the leader starts before its workers.
async fn power_groups(
    ctx: &Ctx,
    cloud: &Cloud,
    cluster: &str,
    groups: [&Vec<String>; 2],
    target: &str,
    quick: bool,
) -> Result<()> {
    for group in groups {
        if group.is_empty() {
            continue;
        }
        if target == "stopped" {
            cloud.stop(group).await?;
        } else {
            cloud.start(group).await?;
        }
        if !quick {
            wait_for_state(ctx, cloud, group, target, &format!("{} node(s) of {cluster}", group.len())).await?;
        }
    }
    Ok(())
}

/// Says which of the nodes about to stop keep their data on instance-store disks, which EC2
/// hands back blank after a stop: nodes without a persistent volume (`-e GB`) whose type has
/// such disks put the cluster's data there (HDFS blocks and metadata, Spark's work files).
async fn warn_instance_store_data(cloud: &Cloud, c: &Cluster, stopping: &[String]) -> Result<()> {
    let mut types: BTreeMap<String, bool> = BTreeMap::new();
    let mut lost = Vec::new();
    for n in c.nodes.iter().filter(|n| stopping.contains(&n.instance_id)) {
        let has_volume = n.tags.get(tags::EBS_VOLUME_SIZE).and_then(|g| g.parse::<u32>().ok()).is_some_and(|g| g > 0);
        if has_volume {
            continue;
        }
        let store = match types.get(&n.instance_type) {
            Some(s) => *s,
            None => {
                let s = !cloud.instance_type_info(&n.instance_type).await?.instance_store_gb.is_empty();
                types.insert(n.instance_type.clone(), s);
                s
            }
        };
        if store {
            lost.push(format!("{} ({})", n.instance_id, n.instance_type));
        }
    }
    if !lost.is_empty() {
        tracing::warn!(
            "cluster {}: data on the instance store does not survive a stop: {} keep{} the cluster's data (HDFS, Spark's work files) on instance-store disks, which come back blank; only a reboot keeps them. Clusters created with -e GB keep their data on persistent volumes",
            c.name,
            lost.join(", "),
            if lost.len() == 1 { "s" } else { "" }
        );
    }
    Ok(())
}
