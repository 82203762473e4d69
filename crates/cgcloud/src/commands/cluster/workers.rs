//! Launching workers when capacity may be short: the driver of `cgcloud_core::spot::LaunchPolicy`
//! (spot types in order, on-demand fallback, retries, tentative), and the spot zone choice.

use super::*;

/// Launches workers with ordinals `ordinals` as `cgcloud_core::spot::LaunchPolicy` decides:
/// on demand, or on the spot market trying each spot instance type in turn (rounds of them
/// every 10 s for `--spot-timeout` while workers are missing) and then on demand if allowed;
/// `min` below the number of workers (`--min-workers`, `--spot-tentative`) takes what comes. Each step is one RunInstances call; its workers find
/// their ordinals from the group's tag and their launch index. Returns the ids launched (fewer
/// than asked only if at least `min`).
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
    use cgcloud_core::spot::{LaunchPolicy, LaunchState, Next, Outcome};
    let price = spot.spot_bid.map(|b| format!("{b:.4}"));
    let plan = match spot.spot_bid {
        Some(_) => {
            let mut types = vec![p.instance_type.clone()];
            types.extend(spot.spot_instance_types.iter().cloned());
            attempts(&types, spot.on_demand_fallback)
        }
        None => vec![Attempt::OnDemand { instance_type: p.instance_type.clone() }],
    };
    let policy = LaunchPolicy {
        attempts: plan,
        wanted: ordinals.len() as u32,
        enough: min,
        retry_for_secs: spot.spot_timeout.unwrap_or(0),
    };
    let mut remaining: Vec<u32> = ordinals.to_vec();
    let mut ids = Vec::new();
    let mut state = LaunchState::default();
    let mut calls = 0;
    loop {
        let (attempt, count, min_count) = match policy.next(&state) {
            Next::Done { .. } => break,
            Next::Launch { attempt, count, min_count } => (attempt, count, min_count),
        };
        let (instance_type, market) = match &policy.attempts[attempt] {
            Attempt::Spot { instance_type } => (instance_type.clone(), Some(price.clone())),
            Attempt::OnDemand { instance_type } => (instance_type.clone(), None),
        };
        let mut extra = base.clone();
        extra.insert(tags::LEADER.into(), leader_id.to_owned());
        extra.insert(tags::ORDINALS.into(), cgcloud_core::ordinals::tag_value(&remaining));
        let g = Group {
            count: count as i32,
            min_count: Some(min_count as i32),
            box_role: worker_role.to_owned(),
            instance_type: instance_type.clone(),
            extra_tags: extra,
            first_boot: true,
            // Each call its own idempotency token: a retried call must not be a new launch.
            label: format!("workers-{calls}"),
            spot: market.clone(),
        };
        calls += 1;
        let outcome = match launch_group(ctx, p, txn, &g).await {
            Ok(new) => {
                remaining.drain(..new.len().min(remaining.len()));
                let k = new.len() as u32;
                ids.extend(new);
                Outcome::Launched(k)
            }
            Err(e) if e.downcast_ref::<cgcloud_aws::AwsError>().is_some_and(cgcloud_aws::ec2::is_capacity_error) => {
                tracing::warn!(
                    "{} capacity for {count} × {instance_type} (at least {min_count}) is short: {e}",
                    if market.is_some() { "spot" } else { "on-demand" }
                );
                Outcome::Short
            }
            Err(e) => return Err(e),
        };
        state = policy.record(&state, outcome);
        if let Some(secs) = policy.wait(&state) {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
    }
    if let Err(why) = policy.verdict(ids.len() as u32, "workers") {
        bail!(
            "{why}; {}",
            if spot.spot_bid.is_some() {
                "try more --spot-instance-types, --on-demand-fallback, a higher --spot-bid, or --spot-timeout"
            } else {
                "EC2 lacks capacity; try another zone or instance type, or --min-workers"
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
