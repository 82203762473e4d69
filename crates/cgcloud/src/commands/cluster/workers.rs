//! Launching workers when capacity may be short: the driver of `cgcloud_core::spot::LaunchPolicy`
//! (spot types in order, on-demand fallback, retries, tentative), and the spot zone choice.

use super::*;

/// Launches workers with ordinals `ordinals`: on demand, or on the spot market trying each
/// spot instance type in turn (retrying for `--spot-timeout` when capacity is short, not at
/// all with `--spot-tentative`) and then on demand if allowed. Each attempt is one
/// RunInstances call; its workers find their ordinals from the group's tag and their launch
/// index. Returns the ids launched (possibly fewer than asked, never fewer than `min`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn launch_workers(
    ctx: &Ctx,
    p: &crate::commands::launch::Prepared,
    txn: &Txn,
    base: &Tags,
    worker_role: &str,
    leader_id: &str,
    ordinals: &[u32],
    min: u32,
    spot: &SpotArgs,
) -> Result<Vec<String>> {
    let price = spot.spot_bid.map(|b| format!("{b:.4}"));
    let plan = match spot.spot_bid {
        Some(_) => {
            let mut types = vec![p.instance_type.clone()];
            types.extend(spot.spot_instance_types.iter().cloned());
            attempts(&types, spot.on_demand_fallback)
        }
        None => vec![Attempt::OnDemand { instance_type: p.instance_type.clone() }],
    };
    let all_or_nothing = spot.spot_launch_group.is_some();
    let mut remaining: Vec<u32> = ordinals.to_vec();
    let mut ids = Vec::new();
    for (n, attempt) in plan.iter().enumerate() {
        if remaining.is_empty() {
            break;
        }
        let (instance_type, market) = match attempt {
            Attempt::Spot { instance_type } => (instance_type.clone(), Some(price.clone())),
            Attempt::OnDemand { instance_type } => (instance_type.clone(), None),
        };
        let deadline =
            Instant::now() + Duration::from_secs(if spot.spot_tentative { 0 } else { spot.spot_timeout.unwrap_or(0) });
        let mut partial = false;
        loop {
            let mut extra = base.clone();
            extra.insert(tags::LEADER.into(), leader_id.to_owned());
            extra.insert(tags::ORDINALS.into(), remaining.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
            let g = Group {
                count: remaining.len() as i32,
                // All of them first; when capacity is short (and partial launches are
                // allowed), whatever EC2 can give, then the next attempt.
                min_count: Some(if all_or_nothing || !partial { remaining.len() as i32 } else { 1 }),
                box_role: worker_role.to_owned(),
                instance_type: instance_type.clone(),
                extra_tags: extra,
                first_boot: true,
                label: format!("workers-{n}-{}", ids.len()),
                spot: market.clone(),
            };
            match launch_group(ctx, p, txn, &g).await {
                Ok(new) => {
                    remaining.drain(..new.len().min(remaining.len()));
                    ids.extend(new);
                    break;
                }
                Err(e)
                    if e.downcast_ref::<cgcloud_aws::AwsError>().is_some_and(cgcloud_aws::ec2::is_capacity_error) =>
                {
                    if !partial && !all_or_nothing {
                        partial = true;
                        continue;
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            "{} capacity for {instance_type} is short: {e}",
                            if market.is_some() { "spot" } else { "on-demand" }
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if (ids.len() as u32) < min {
        bail!(
            "only {} of {} workers could be launched (at least {min} required); {}",
            ids.len(),
            ordinals.len(),
            if spot.spot_bid.is_some() {
                "try more --spot-instance-types, --on-demand-fallback or a higher --spot-bid"
            } else {
                "EC2 lacks capacity"
            }
        );
    }
    if !remaining.is_empty() {
        tracing::warn!(
            "launched {} of {} workers; missing ordinals {}",
            ids.len(),
            ordinals.len(),
            remaining.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ids)
}

/// With --spot-auto-zone: the zone with the steadiest spot price under the bid, and its subnet.
pub(super) async fn spot_zone(ctx: &Ctx, p: &mut crate::commands::launch::Prepared, spot: &SpotArgs) -> Result<()> {
    let (Some(bid), true) = (spot.spot_bid, spot.spot_auto_zone) else { return Ok(()) };
    let cloud = ctx.cloud().await?;
    let since = std::time::SystemTime::now() - Duration::from_secs(7 * 86_400);
    let history = cloud.spot_price_history(&p.instance_type, since).await?;
    if let Some(mean) = cgcloud_core::spot::mean_price(&history) {
        if bid > 2.0 * mean {
            tracing::warn!(
                "the bid ${bid}/h is more than twice the mean spot price (${mean:.4}/h) of {}",
                p.instance_type
            );
        }
    }
    let zones = cloud.zones().await?;
    let zone = cgcloud_core::spot::choose_zone(bid, &zones, &history).with_context(|| {
        format!(
            "no spot price history for {} in region {}; pass a zone with -z instead of --spot-auto-zone",
            p.instance_type, cloud.region
        )
    })?;
    if p.network.subnet_id.is_some() {
        let subnet = cloud.subnet_in_zone(&p.network.vpc_id, &zone).await?.with_context(|| {
            format!("--spot-auto-zone chose {zone}, but VPC {} has no subnet there", p.network.vpc_id)
        })?;
        p.network.subnet_id = Some(subnet);
    }
    p.network.zone = Some(zone.clone());
    ctx.out.note(format!("spot: zone {zone} chosen from {} price points", history.len()));
    Ok(())
}
