//! Launching workers: each RunInstances call of the capacity policy (`commands::capacity`)
//! carries the ordinals still missing, and its workers find theirs from that tag and their
//! launch index.

use super::*;

/// Launches workers with ordinals `ordinals` under `leader_id`, as `--spot-*` and `min` say
/// (see `capacity::launch_by_policy`). Returns the ids launched (fewer than asked only if at
/// least `min`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn launch_workers(
    ctx: &Ctx,
    p: &crate::commands::launch::Prepared,
    txn: &Txn,
    base: &Tags,
    worker_role: &str,
    (leader_id, leader_ip): (&str, Option<std::net::Ipv4Addr>),
    ordinals: &[u32],
    min: u32,
    spot: &SpotArgs,
) -> Result<Vec<String>> {
    let mut extra = base.clone();
    extra.insert(tags::LEADER.into(), leader_id.to_owned());
    let template = Group {
        count: 0,
        min_count: None,
        box_role: worker_role.to_owned(),
        instance_type: p.instance_type.clone(),
        extra_tags: extra,
        first_boot: true,
        label: "workers".into(),
        spot: None,
        profile: None,
        boot_leader: leader_ip,
    };
    let ids = launch_by_policy(ctx, p, txn, &template, ordinals.len() as u32, min, spot, "workers", |g, launched| {
        let remaining = &ordinals[launched.min(ordinals.len())..];
        g.extra_tags.insert(tags::ORDINALS.into(), cgcloud_core::ordinals::tag_value(remaining));
    })
    .await?;
    if ids.len() < ordinals.len() {
        tracing::warn!(
            "launched {} of {} workers; missing ordinals {}",
            ids.len(),
            ordinals.len(),
            ordinals[ids.len()..].iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ids)
}
