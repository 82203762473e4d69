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
    let c = select(ctx, &a.selection).await?;
    let cloud = ctx.cloud().await?;
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
