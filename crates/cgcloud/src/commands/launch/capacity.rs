//! Launching when capacity may be short, for single boxes and cluster workers alike: the driver
//! of `cgcloud_core::spot::LaunchPolicy` (spot types in order, on-demand fallback, retries,
//! tentative), the spot zone choice, and the checks of spot options before anything launches.

use super::*;
use cgcloud_core::spot::{attempts, Attempt, LaunchPolicy, LaunchState, Next, Outcome};

/// Launches `wanted` boxes like `template` as `LaunchPolicy` decides: on demand, or on the spot
/// market trying each spot instance type in turn (rounds of them every 10 s for
/// `--spot-timeout` while boxes are missing) and then on demand if allowed; `min` below
/// `wanted` takes what comes. Each step is one RunInstances call; `per_call` adjusts a call's
/// group given how many boxes earlier calls launched (workers tag the ordinals still missing).
/// Returns the ids launched (fewer than wanted only if at least `min`); `what` names the boxes
/// in messages.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn launch_by_policy(
    ctx: &Ctx,
    p: &Prepared,
    txn: &Txn,
    template: &Group,
    wanted: u32,
    min: u32,
    spot: &SpotArgs,
    what: &str,
    per_call: impl Fn(&mut Group, usize),
) -> Result<Vec<String>> {
    let price = spot.spot_bid.map(|b| format!("{b:.4}"));
    let plan = match spot.spot_bid {
        Some(_) => {
            let mut types = vec![template.instance_type.clone()];
            types.extend(spot.spot_instance_types.iter().cloned());
            attempts(&types, spot.on_demand_fallback)
        }
        None => vec![Attempt::OnDemand { instance_type: template.instance_type.clone() }],
    };
    let policy = LaunchPolicy { attempts: plan, wanted, enough: min, retry_for_secs: spot.spot_timeout.unwrap_or(0) };
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
        let mut g = Group {
            count: count as i32,
            min_count: Some(min_count as i32),
            box_role: template.box_role.clone(),
            instance_type: instance_type.clone(),
            extra_tags: template.extra_tags.clone(),
            first_boot: template.first_boot,
            // Each call its own idempotency token: a retried call must not be a new launch.
            label: format!("{}-{calls}", template.label),
            spot: market.clone(),
            profile: template.profile.clone(),
            boot_leader: template.boot_leader,
        };
        per_call(&mut g, ids.len());
        calls += 1;
        let outcome = match launch_group(ctx, p, txn, &g).await {
            Ok(new) => {
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
    if let Err(why) = policy.verdict(ids.len() as u32, what) {
        let why = if wanted == 1 { format!("the {what} could not be launched") } else { why.to_string() };
        bail!(
            "{why}; {}",
            match (spot.spot_bid.is_some(), wanted) {
                (true, _) =>
                    "try more --spot-instance-types, --on-demand-fallback, a higher --spot-bid, or --spot-timeout",
                (false, 1) => "EC2 lacks capacity; try another zone or instance type",
                (false, _) => "EC2 lacks capacity; try another zone or instance type, or --min-workers",
            }
        );
    }
    Ok(ids)
}

/// With --spot-auto-zone: the zone with the steadiest spot price under the bid, and its subnet.
pub(crate) async fn spot_zone(ctx: &Ctx, p: &mut Prepared, spot: &SpotArgs) -> Result<()> {
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

/// The further spot instance types exist in the region (before anything is launched: a typo
/// must not surface half-way through a launch).
pub(crate) async fn check_spot_types(ctx: &Ctx, p: &mut Prepared, spot: &SpotArgs) -> Result<()> {
    let cloud = ctx.cloud().await?;
    for t in &spot.spot_instance_types {
        if !p.type_info.contains_key(t) {
            let info = cloud.instance_type_info(t).await.with_context(|| format!("--spot-instance-types {t}"))?;
            p.type_info.insert(t.clone(), info);
        }
    }
    Ok(())
}
