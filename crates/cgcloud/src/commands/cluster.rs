//! Clusters: a leader and workers of one cluster type, launched from the type's baked image
//! with one RunInstances call per node group. Nodes configure themselves at first boot (the
//! agent in the image reads the cluster from its tags), so bring-up takes about as long for
//! a hundred nodes as for one; the workstation only launches, tags and watches.

use super::boxes::wait_for_state;
use super::images::pick_image;
use super::launch::{finish_launch, launch_group, prepare, transaction, Group, LocalNeeds, Txn};
use crate::cli::{
    ClusterPowerArgs, ClusterSelection, CreateClusterArgs, GrowClusterArgs, LaunchArgs, ListClustersArgs,
    NodeLaunchArgs, RsyncClusterArgs, SpotArgs, SshClusterArgs,
};
use crate::context::Ctx;
use anyhow::{anyhow, bail, Context as _, Result};
use cgcloud_aws::Cloud;
use cgcloud_core::model::BoxInfo;
use cgcloud_core::ordinals::allocate_ordinals;
use cgcloud_core::spot::{attempts, Attempt};
use cgcloud_core::tags::{self, Tags};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;

/// The boxes of one cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cluster {
    pub name: String,
    pub cluster_type: String,
    pub nodes: Vec<BoxInfo>,
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
            .or_insert_with(|| Cluster { name, cluster_type: t, nodes: Vec::new() })
            .nodes
            .push(b);
    }
    let mut out: Vec<Cluster> = by_name.into_values().collect();
    for c in &mut out {
        c.nodes.sort_by_key(|n| (n.ordinal.unwrap_or(u32::MAX), n.instance_id.clone()));
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

/// A new cluster's secrets (`[[cluster.secrets]]`): fresh random bytes, or a fresh SSH key, for
/// each file.
fn new_secrets(decl: &cgcloud_roles::role::ClusterDecl) -> Result<Vec<crate::userdata::SecretFile>> {
    use base64::Engine as _;
    use cgcloud_roles::role::SecretKind;
    use rand::RngCore as _;
    decl.secrets
        .iter()
        .map(|s| {
            let bytes = match s.kind {
                SecretKind::Random => {
                    let mut bytes = vec![0u8; s.bytes as usize];
                    rand::rngs::OsRng.fill_bytes(&mut bytes);
                    bytes
                }
                SecretKind::SshKey => cgcloud_remote::hostkey::generate()
                    .with_context(|| format!("cannot make the cluster's SSH key {}", s.path))?
                    .private_openssh
                    .into_bytes(),
            };
            Ok(crate::userdata::SecretFile {
                path: s.path.clone(),
                base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                owner: s.owner.clone(),
                mode: s.mode.clone(),
            })
        })
        .collect()
}

/// Whether `bytes`, read back from a leader, have the shape a secret of `s`'s kind must have.
fn secret_shape_ok(s: &cgcloud_roles::role::ClusterSecret, bytes: &[u8]) -> Result<(), String> {
    use cgcloud_roles::role::SecretKind;
    match s.kind {
        SecretKind::Random if bytes.len() != s.bytes as usize => {
            Err(format!("not the {} bytes the role declares (found {})", s.bytes, bytes.len()))
        }
        SecretKind::SshKey
            if !(bytes.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----") && bytes.len() < 16 * 1024) =>
        {
            Err("not an OpenSSH private key".to_owned())
        }
        _ => Ok(()),
    }
}

/// The secrets of a running cluster, read from its leader over SSH, for new workers: the
/// workstation keeps no copy, and no existing node is changed.
async fn cluster_secrets(
    ctx: &Ctx,
    leader: &BoxInfo,
    decl: &cgcloud_roles::role::ClusterDecl,
) -> Result<Vec<crate::userdata::SecretFile>> {
    use base64::Engine as _;
    if decl.secrets.is_empty() {
        return Ok(Vec::new());
    }
    let mut target = ctx.ssh_target(leader, None, None).await?;
    target.user = leader.admin_user.clone().unwrap_or(target.user);
    // Paths were checked when the role was loaded: plain characters only.
    let script: String = decl.secrets.iter().map(|s| format!("sudo base64 -w0 {}; echo\n", s.path)).collect();
    let out = target.run_script(&format!("set -e\n{script}")).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    if !out.status.success() || lines.len() != decl.secrets.len() {
        bail!(
            "cannot read the cluster's secrets from its leader {} ({}); new workers need them",
            leader.instance_id,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    decl.secrets
        .iter()
        .zip(lines)
        .map(|(s, b64)| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default();
            if let Err(e) = secret_shape_ok(s, &bytes) {
                bail!("the leader's {} is {e}", s.path);
            }
            Ok(crate::userdata::SecretFile {
                path: s.path.clone(),
                base64: b64.trim().to_owned(),
                owner: s.owner.clone(),
                mode: s.mode.clone(),
            })
        })
        .collect()
}

/// Tells the nodes' agents to read the members again: configured nodes have published their
/// host keys by now, which the others put into their known_hosts (best effort; the agents
/// also refresh on their own).
async fn notify_members(cloud: &Cloud) {
    if let Err(e) = cloud.notify_keys_changed().await {
        tracing::debug!("notification failed: {e}");
    }
}

fn check_cluster_name(name: &str) -> Result<()> {
    if !tags::valid_cluster_name(name) {
        bail!("invalid cluster name '{name}': use up to 40 lower-case letters, digits and '-'");
    }
    Ok(())
}

/// The phases a cluster's nodes go through, as the progress bars show them.
const PHASES: &[&str] = &["launched", "running", "SSH-ready", "configured"];

/// How long each phase took until every node had passed it.
#[derive(Debug, Default, serde::Serialize)]
pub struct Phases {
    pub launched_s: f64,
    pub running_s: f64,
    pub ssh_ready_s: f64,
    pub configured_s: f64,
    /// Status polls (one DescribeInstances each, plus its pages).
    pub polls: u64,
}

/// Watches the nodes through running → SSH-ready → configured, with counts per phase. Nodes
/// whose first-boot configuration failed are returned separately. One DescribeInstances per
/// poll, whatever the number of nodes.
#[allow(clippy::too_many_arguments)]
async fn await_nodes(
    ctx: &Ctx,
    cloud: &Cloud,
    ids: &[String],
    must: &BTreeSet<String>,
    timeout: Duration,
    ssh_check: bool,
    phases: &mut Phases,
    t0: Instant,
    bars: &mut crate::output::PhaseProgress,
) -> Result<Vec<(String, String)>> {
    let n = ids.len();
    bars.set(0, n as u64);
    let started = Instant::now();
    let ssh_ready: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>> = Default::default();
    let mut probing: BTreeSet<String> = BTreeSet::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut probes = tokio::task::JoinSet::new();
    loop {
        phases.polls += 1;
        let instances = cloud.describe_instances(ids).await?;
        let boxes: Vec<BoxInfo> = instances.iter().filter_map(cgcloud_aws::ec2::box_from_instance).collect();
        let mut failed = Vec::new();
        let (mut running, mut configured) = (0, 0);
        for b in &boxes {
            if b.state == "running" {
                running += 1;
                // A node publishes its host key when it has configured itself.
                if ssh_check && b.host_key.is_some() && !probing.contains(&b.instance_id) {
                    probing.insert(b.instance_id.clone());
                    let target = ctx.ssh_target(b, None, None).await?;
                    let (ready, limit, id) = (ssh_ready.clone(), limit.clone(), b.instance_id.clone());
                    // The master connection a probe leaves (ControlPersist) is what the next
                    // command (`ssh-cluster`, `--share`) reuses; closing it here raced with them.
                    probes.spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        if target.wait_ready(timeout).await.is_ok() {
                            if let Ok(mut r) = ready.lock() {
                                r.insert(id);
                            }
                        }
                    });
                }
            } else if matches!(b.state.as_str(), "terminated" | "shutting-down" | "stopped") {
                failed.push((
                    b.instance_id.clone(),
                    format!(
                        "{}{}",
                        b.state,
                        b.tags.get(tags::FAILURE).map(|f| format!(": {}", tags::printable(f))).unwrap_or_default()
                    ),
                ));
            }
            match b.tags.get(tags::CONFIGURED).map(String::as_str) {
                Some("true") => configured += 1,
                Some(_) => failed.push((
                    b.instance_id.clone(),
                    b.tags
                        .get(tags::FAILURE)
                        .map(|f| tags::printable(f))
                        .unwrap_or_else(|| "first-boot configuration failed".into()),
                )),
                None => {}
            }
        }
        let ssh = if ssh_check { ssh_ready.lock().map(|r| r.len()).unwrap_or(0) } else { running };
        let elapsed = t0.elapsed().as_secs_f64();
        if running == n && phases.running_s == 0.0 {
            phases.running_s = elapsed;
        }
        if ssh == n && phases.ssh_ready_s == 0.0 {
            phases.ssh_ready_s = elapsed;
        }
        bars.set(1, running as u64);
        bars.set(2, ssh as u64);
        bars.set(3, configured as u64);
        // The node everyone waits for: the one furthest behind (booting, then SSH, then its
        // own configuration), the lowest ordinal first.
        let ready_now = ssh_ready.lock().map(|r| r.clone()).unwrap_or_default();
        let behind = boxes
            .iter()
            .filter(|b| !b.tags.contains_key(tags::CONFIGURED))
            .map(|b| {
                let (rank, what) = if b.state != "running" {
                    (0, b.state.clone())
                } else if ssh_check && !ready_now.contains(&b.instance_id) && b.host_key.is_some() {
                    (1, "waiting for SSH".to_owned())
                } else {
                    (2, "configuring itself".to_owned())
                };
                (rank, b.ordinal.unwrap_or(u32::MAX), b.instance_id.clone(), what)
            })
            .min();
        if let Some((_, ordinal, id, what)) = behind {
            bars.laggard(format!("node {ordinal} ({id}): {what}"));
        }
        if failed.iter().any(|(id, _)| must.contains(id)) {
            let (id, why) = failed.iter().find(|(id, _)| must.contains(id)).cloned().unwrap_or_default();
            bail!("node {id} failed: {why}");
        }
        let done: BTreeSet<String> = boxes
            .iter()
            .filter(|b| b.tags.get(tags::CONFIGURED).map(String::as_str) == Some("true"))
            .map(|b| b.instance_id.clone())
            .collect();
        let settled = boxes.len() == n && done.len() + failed.len() >= n;
        // Nodes publish their host keys when configured, so their SSH probes start late: wait
        // for them rather than abort them half-way (an aborted probe can leave a half-made
        // master connection that the next ssh trips over).
        let reachable = !ssh_check || ssh_ready.lock().is_ok_and(|r| done.iter().all(|d| r.contains(d)));
        if must.iter().all(|m| done.contains(m)) && settled && reachable {
            phases.configured_s = t0.elapsed().as_secs_f64();
            if phases.ssh_ready_s == 0.0 {
                phases.ssh_ready_s = phases.configured_s;
            }
            probes.abort_all();
            return Ok(failed);
        }
        if started.elapsed() > timeout {
            if must.iter().all(|m| done.contains(m)) {
                // Optional nodes that are still not configured count as failed.
                let late: Vec<(String, String)> = ids
                    .iter()
                    .filter(|i| !done.contains(*i))
                    .map(|i| (i.clone(), "not configured in time".into()))
                    .collect();
                probes.abort_all();
                return Ok(late);
            }
            bail!(
                "timed out after {} s: {running} of {n} nodes running, {ssh} SSH-ready, {configured} configured",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
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

/// Launches workers with ordinals `ordinals`: on demand, or on the spot market trying each
/// spot instance type in turn (retrying for `--spot-timeout` when capacity is short, not at
/// all with `--spot-tentative`) and then on demand if allowed. Each attempt is one
/// RunInstances call; its workers find their ordinals from the group's tag and their launch
/// index. Returns the ids launched (possibly fewer than asked, never fewer than `min`).
#[allow(clippy::too_many_arguments)]
async fn launch_workers(
    ctx: &Ctx,
    p: &super::launch::Prepared,
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
async fn spot_zone(ctx: &Ctx, p: &mut super::launch::Prepared, spot: &SpotArgs) -> Result<()> {
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

pub async fn create(ctx: &Ctx, a: CreateClusterArgs) -> Result<ExitCode> {
    let reg = ctx.registry().await?;
    let node_role = reg.cluster_type(&a.cluster_type)?;
    let decl = node_role.cluster.clone().context("not a cluster node role")?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    let images = cloud.list_images(ns.as_str(), Some(&node_role.name)).await?;
    if images.is_empty() {
        bail!(
            "cluster type '{}' boots from an image of role '{}', and namespace '{ns}' has none; bake one with `cgcloud create -I -T {}`",
            a.cluster_type,
            node_role.name,
            node_role.name
        );
    }
    let image = pick_image(&node_role.name, ns.as_str(), images, a.nodes.boot_image.as_deref().unwrap_or("-1"))?;
    let name = match &a.cluster {
        Some(n) => n.clone(),
        None => format!("{}-{:06x}", a.cluster_type, rand::random::<u32>() & 0xff_ffff),
    };
    check_cluster_name(&name)?;
    if clusters(ctx, None).await?.iter().any(|c| c.name == name) {
        bail!("a cluster named '{name}' already exists in namespace '{ns}'; add workers with `cgcloud grow-cluster {} -c {name}`", a.cluster_type);
    }
    if let Some(share) = &a.share {
        if !share.exists() {
            bail!("--share {}: no such file or directory", share.display());
        }
    }
    let la = launch_args(&a.nodes);
    let needs =
        LocalNeeds { ssh: !a.nodes.skip_ssh_check || a.share.is_some(), agent: false, rsync: a.share.is_some() };
    let mut p =
        prepare(ctx, node_role.clone(), image.tags.get(tags::OS).map(String::as_str), &la, Some(&image), None, needs)
            .await?;
    spot_zone(ctx, &mut p, &a.nodes.spot).await?;
    p.secrets = new_secrets(&decl)?;
    let leader_type = match &a.leader_instance_type {
        Some(t) => {
            let info = cloud.instance_type_info(t).await?;
            p.type_info.insert(t.clone(), info);
            t.clone()
        }
        None => p.instance_type.clone(),
    };
    let n = a.nodes.num_workers;
    let min = a.nodes.min_workers.unwrap_or(n).min(n);
    let mut base = Tags::new();
    base.insert(tags::CLUSTER.into(), name.clone());
    base.insert(tags::CLUSTER_TYPE.into(), a.cluster_type.clone());
    base.insert(tags::NODE_ROLE.into(), node_role.name.clone());
    if let Some(gb) = a.nodes.ebs_volume_size.or(node_role.instance.persistent_volume_gb) {
        base.insert(tags::EBS_VOLUME_SIZE.into(), gb.to_string());
    }
    let account = cloud.caller_identity().await?.0;
    if p.autostop.is_some_and(|(_, terminate)| !terminate) && a.nodes.spot.spot_bid.is_some() {
        ctx.out.note("note: spot instances cannot stop: autostop terminates the cluster's spot nodes (persistent volumes are kept)");
    }
    let txn = Txn::new();
    let mut phases = Phases::default();
    let t0 = Instant::now();
    let (requests_before, retries_before) = (cloud.requests_sent(), cloud.retries_sent());
    let work = async {
        let mut leader_tags = base.clone();
        leader_tags.insert(tags::ORDINAL.into(), "0".into());
        let leader = Group {
            count: 1,
            min_count: None,
            box_role: decl.leader.clone(),
            instance_type: leader_type.clone(),
            extra_tags: leader_tags,
            first_boot: true,
            label: "leader".into(),
            spot: a.nodes.spot.spot_bid.filter(|_| !a.leader_on_demand).map(|b| Some(format!("{b:.4}"))),
        };
        let leader_ids = launch_group(ctx, &p, &txn, &leader).await?;
        let leader_id = leader_ids.first().cloned().context("RunInstances returned no leader")?;
        fault("after-leader")?;
        // The leader's ARN on every node: what IAM lets it, and it alone, stop and terminate
        // (autostop); tags only the workstation writes.
        let leader_arn = cgcloud_core::policy::instance_arn(&cloud.region, &account, &leader_id);
        let mut t = Tags::new();
        t.insert(tags::LEADER.into(), leader_id.clone());
        t.insert(tags::LEADER_ARN.into(), leader_arn.clone());
        cloud.create_tags(&leader_ids, &t).await?;
        let ordinals: Vec<u32> = (1..=n).collect();
        let mut worker_base = base.clone();
        worker_base.insert(tags::LEADER_ARN.into(), leader_arn);
        let workers = if n > 0 {
            launch_workers(ctx, &p, &txn, &worker_base, &decl.worker, &leader_id, &ordinals, min, &a.nodes.spot).await?
        } else {
            Vec::new()
        };
        if (workers.len() as u32) < n {
            tracing::warn!("EC2 launched {} of {n} workers (at least {min} were required)", workers.len());
        }
        phases.launched_s = t0.elapsed().as_secs_f64();
        fault("after-workers")?;
        let mut all = leader_ids.clone();
        all.extend(workers.iter().cloned());
        // Tell the nodes' agents to refresh the members now.
        if let Err(e) = cloud.notify_keys_changed().await {
            tracing::debug!("notification failed: {e}");
        }
        let mut must: BTreeSet<String> = leader_ids.iter().cloned().collect();
        if !a.nodes.quick && min == n {
            must.extend(workers.iter().cloned());
        }
        let mut bars = ctx.out.phases(format!("cluster {name}"), all.len() as u64, PHASES);
        let failed = await_nodes(
            ctx,
            cloud,
            &all,
            &must,
            Duration::from_secs(a.nodes.timeout),
            !a.nodes.skip_ssh_check,
            &mut phases,
            t0,
            &mut bars,
        )
        .await?;
        bars.finish(format!("cluster {name}: {} node(s) configured", all.len() - failed.len()));
        notify_members(cloud).await;
        if !a.nodes.quick {
            let good = workers.len() - failed.iter().filter(|(id, _)| workers.contains(id)).count();
            if (good as u32) < min {
                bail!("only {good} of {n} workers came up, fewer than --min-workers {min}");
            }
            if !failed.is_empty() {
                let ids: Vec<String> = failed.iter().map(|(id, _)| id.clone()).collect();
                tracing::warn!(
                    "{} worker(s) did not come up and are terminated: {}",
                    ids.len(),
                    failed.iter().map(|(id, why)| format!("{id} ({why})")).collect::<Vec<_>>().join(", ")
                );
                cloud.terminate(&ids).await?;
            }
        }
        finish_launch(cloud, &all).await?;
        if let Some(share) = &a.share {
            let leader_box = cloud
                .describe_instances(&leader_ids)
                .await?
                .iter()
                .find_map(cgcloud_aws::ec2::box_from_instance)
                .context("leader vanished")?;
            let target = ctx.ssh_target(&leader_box, None, a.nodes.ssh_address).await?;
            let status = tokio::process::Command::new("rsync")
                .arg("-e")
                .arg(target.rsync_shell(""))
                .args(["-a", &share.display().to_string(), &format!("{}:shared/", target.address)])
                .status()
                .await
                .context("cannot run rsync")?;
            if !status.success() {
                bail!("copying {} to the leader failed", share.display());
            }
        }
        Ok(())
    };
    transaction(ctx, &txn, a.nodes.never_terminate, work).await?;
    let c = select(
        ctx,
        &ClusterSelection { cluster_type: a.cluster_type.clone(), cluster: Some(name.clone()), ordinal: None },
    )
    .await?;
    print_nodes(ctx, &c);
    ctx.out.note(format!(
        "cluster {name}: launched in {:.1} s, running {:.1} s, SSH-ready {:.1} s, configured {:.1} s ({} API requests, {} of them status polls, {} retries)",
        phases.launched_s,
        phases.running_s,
        phases.ssh_ready_s,
        phases.configured_s,
        cloud.requests_sent() - requests_before,
        phases.polls,
        cloud.retries_sent() - retries_before
    ));
    ctx.out.note(format!("run 'cgcloud ssh {} -c {name}' to log in to the leader", decl.leader));
    Ok(ExitCode::SUCCESS)
}

pub async fn grow(ctx: &Ctx, a: GrowClusterArgs) -> Result<ExitCode> {
    let c = select(ctx, &a.selection).await?;
    if a.nodes.autostop.autostop.is_some() {
        bail!(
            "autostop is the cluster's, and new workers get the cluster's setting; change it with `cgcloud autostop {} -c {} DURATION`",
            c.cluster_type,
            c.name
        );
    }
    let leader = c.leader().cloned().with_context(|| format!("cluster {} has no leader", c.name))?;
    let reg = ctx.registry().await?;
    let node_role = reg.cluster_type(&c.cluster_type)?;
    let decl = node_role.cluster.clone().context("not a cluster node role")?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    let images = cloud.list_images(ns.as_str(), Some(&node_role.name)).await?;
    let spec = a.nodes.boot_image.clone().or(leader.image_id.clone()).unwrap_or_else(|| "-1".into());
    let image = pick_image(&node_role.name, ns.as_str(), images, &spec)?;
    let la = launch_args(&a.nodes);
    let needs = LocalNeeds { ssh: !a.nodes.skip_ssh_check, ..Default::default() };
    let mut p =
        prepare(ctx, node_role, image.tags.get(tags::OS).map(String::as_str), &la, Some(&image), None, needs).await?;
    spot_zone(ctx, &mut p, &a.nodes.spot).await?;
    p.secrets = cluster_secrets(ctx, &leader, &decl).await?;
    let used: BTreeSet<u32> = c.nodes.iter().filter_map(|n| n.ordinal).collect();
    let n = a.nodes.num_workers;
    let ordinals = allocate_ordinals(&used, n as usize);
    // New workers get what the cluster's nodes have, persistent volume size included.
    let mut base = Tags::new();
    for k in [
        tags::CLUSTER,
        tags::CLUSTER_TYPE,
        tags::NODE_ROLE,
        tags::EBS_VOLUME_SIZE,
        tags::LEADER_ARN,
        tags::AUTOSTOP,
        tags::AUTOSTOP_ACTION,
    ] {
        if let Some(v) = leader.tags.get(k) {
            base.insert(k.into(), v.clone());
        }
    }
    if let Some(gb) = a.nodes.ebs_volume_size {
        base.insert(tags::EBS_VOLUME_SIZE.into(), gb.to_string());
    }
    let txn = Txn::new();
    let mut phases = Phases::default();
    let t0 = Instant::now();
    let min = a.nodes.min_workers.unwrap_or(n).min(n);
    let work = async {
        let ids =
            launch_workers(ctx, &p, &txn, &base, &decl.worker, &leader.instance_id, &ordinals, min, &a.nodes.spot)
                .await?;
        if let Err(e) = cloud.notify_keys_changed().await {
            tracing::debug!("notification failed: {e}");
        }
        let must: BTreeSet<String> = if a.nodes.quick { BTreeSet::new() } else { ids.iter().cloned().collect() };
        let mut bars = ctx.out.phases(format!("cluster {}: new workers", c.name), ids.len() as u64, PHASES);
        let failed = await_nodes(
            ctx,
            cloud,
            &ids,
            &must,
            Duration::from_secs(a.nodes.timeout),
            !a.nodes.skip_ssh_check,
            &mut phases,
            t0,
            &mut bars,
        )
        .await?;
        bars.finish(format!("cluster {}: {} new worker(s) configured", c.name, ids.len() - failed.len()));
        if !failed.is_empty() {
            // Named, and not left running half-made: the same as create-cluster does.
            tracing::warn!(
                "{} new worker(s) did not come up and are terminated: {}",
                failed.len(),
                failed.iter().map(|(id, why)| format!("{id} ({why})")).collect::<Vec<_>>().join(", ")
            );
            let bad: Vec<String> = failed.iter().map(|(id, _)| id.clone()).collect();
            cloud.terminate(&bad).await?;
        }
        notify_members(cloud).await;
        finish_launch(cloud, &ids).await?;
        Ok(())
    };
    transaction(ctx, &txn, a.nodes.never_terminate, work).await?;
    let c = select(
        ctx,
        &ClusterSelection { cluster_type: c.cluster_type.clone(), cluster: Some(c.name.clone()), ordinal: None },
    )
    .await?;
    print_nodes(ctx, &c);
    ctx.out.note(format!(
        "added ordinals {} in {:.1} s",
        ordinals.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        phases.configured_s
    ));
    Ok(ExitCode::SUCCESS)
}

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
                super::boxes::wait_ssh_ready(ctx, &all).await?;
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
            super::boxes::forget(ctx, &all).await?;
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

/// The nodes to act on: leader first, then workers by ordinal.
fn nodes(c: &Cluster, skip_leader: bool) -> Vec<BoxInfo> {
    c.nodes.iter().filter(|n| n.state == "running" && !(skip_leader && n.ordinal == Some(0))).cloned().collect()
}

/// One node's result of `ssh-cluster --output json`.
#[derive(Debug, serde::Serialize)]
struct NodeOutput {
    node: Option<u32>,
    instance_id: String,
    hostname: String,
    exit_status: i32,
    stdout: String,
    stderr: String,
}

pub async fn ssh(ctx: &Ctx, a: SshClusterArgs) -> Result<ExitCode> {
    let c = select(ctx, &a.selection).await?;
    let nodes = nodes(&c, a.skip_leader);
    if nodes.is_empty() {
        bail!("cluster {} has no running node", c.name);
    }
    let hostname =
        |b: &BoxInfo| b.private_dns.as_deref().and_then(|d| d.split('.').next()).unwrap_or(&b.instance_id).to_owned();
    let mut failures = Vec::new();
    if ctx.out.format == crate::cli::OutputFormat::Json {
        // Scripts get one object per node, each with its whole output, in node order.
        let mut set = tokio::task::JoinSet::new();
        let mut results = Vec::new();
        for (i, b) in nodes.iter().enumerate() {
            let target = ctx.ssh_target(b, Some(&a.login), None).await?;
            let args = a.args.clone();
            let mut r = NodeOutput {
                node: b.ordinal,
                instance_id: b.instance_id.clone(),
                hostname: hostname(b),
                exit_status: 255,
                stdout: String::new(),
                stderr: String::new(),
            };
            let run = async move {
                let out = target.command(true, &args).stdin(Stdio::null()).output().await;
                if let Ok(out) = out {
                    r.exit_status = out.status.code().unwrap_or(255);
                    r.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    r.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                }
                (i, r)
            };
            if a.parallel {
                set.spawn(run);
            } else {
                results.push(run.await);
            }
        }
        while let Some(r) = set.join_next().await {
            results.push(r?);
        }
        results.sort_by_key(|(i, _)| *i);
        let results: Vec<NodeOutput> = results.into_iter().map(|(_, r)| r).collect();
        for r in results.iter().filter(|r| r.exit_status != 0) {
            failures.push(format!("{} (exit {})", r.instance_id, r.exit_status));
        }
        ctx.out.record(&results, String::new);
    } else if a.parallel {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut set = tokio::task::JoinSet::new();
        for b in &nodes {
            let target = ctx.ssh_target(b, Some(&a.login), None).await?;
            let label = format!("[{} {}]", b.ordinal.map(|o| o.to_string()).unwrap_or_default(), hostname(b));
            let (tx, args, id) = (tx.clone(), a.args.clone(), b.instance_id.clone());
            set.spawn(async move {
                let mut child = target
                    .command(true, &args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                let out = child.stdout.take();
                let err = child.stderr.take();
                let (t1, l1) = (tx.clone(), label.clone());
                let a = tokio::spawn(async move {
                    if let Some(o) = out {
                        let mut lines = tokio::io::BufReader::new(o).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            let _ = t1.send(format!("{l1} {l}"));
                        }
                    }
                });
                let (t2, l2) = (tx, label);
                let b = tokio::spawn(async move {
                    if let Some(e) = err {
                        let mut lines = tokio::io::BufReader::new(e).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            let _ = t2.send(format!("{l2} {l}"));
                        }
                    }
                });
                let status = child.wait().await?;
                let _ = tokio::join!(a, b);
                Ok::<_, std::io::Error>((id, status.code().unwrap_or(255)))
            });
        }
        drop(tx);
        while let Some(line) = rx.recv().await {
            ctx.out.record(&line, || line.clone());
        }
        while let Some(r) = set.join_next().await {
            let (id, code) = r??;
            if code != 0 {
                failures.push(format!("{id} (exit {code})"));
            }
        }
    } else {
        for b in &nodes {
            let target = ctx.ssh_target(b, Some(&a.login), None).await?;
            ctx.out.note(format!(
                "=== node {} ({}, {})",
                b.ordinal.map(|o| o.to_string()).unwrap_or_default(),
                b.instance_id,
                target.address
            ));
            let status = target.command(false, &a.args).status().await.context("cannot run ssh")?;
            if !status.success() {
                failures.push(format!("{} (exit {})", b.instance_id, status.code().unwrap_or(255)));
            }
        }
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!("the command failed on {} of {} node(s): {}", failures.len(), nodes.len(), failures.join(", "));
        Ok(ExitCode::from(1))
    }
}

pub async fn rsync(ctx: &Ctx, a: RsyncClusterArgs) -> Result<ExitCode> {
    let c = select(ctx, &a.selection).await?;
    let nodes = nodes(&c, a.skip_leader);
    let mut failures = Vec::new();
    // Leader first (others may fetch from it), then the workers in parallel.
    let (first, rest) = nodes.split_at(usize::from(nodes.first().is_some_and(|n| n.ordinal == Some(0))));
    for batch in [first, rest] {
        let mut set = tokio::task::JoinSet::new();
        for b in batch {
            let target = ctx.ssh_target(b, Some(&a.login), None).await?;
            let args = target.rsync_args(&a.args);
            let shell = target.rsync_shell(&a.ssh_opts);
            let id = b.instance_id.clone();
            set.spawn(async move {
                let st = tokio::process::Command::new("rsync").arg("-e").arg(shell).args(args).status().await;
                (id, st.map(|s| s.success()).unwrap_or(false))
            });
        }
        while let Some(r) = set.join_next().await {
            let (id, ok) = r?;
            if !ok {
                failures.push(id);
            }
        }
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!("rsync failed on {}", failures.join(", "));
        Ok(ExitCode::from(1))
    }
}

pub async fn list(ctx: &Ctx, a: ListClustersArgs) -> Result<ExitCode> {
    if let Some(t) = &a.cluster_type {
        ctx.registry().await?.cluster_type(t)?;
    }
    let all = clusters(ctx, a.cluster_type.as_deref()).await?;
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
            ]
        })
        .collect();
    ctx.out.table(&["CLUSTER", "TYPE", "LEADER", "NODES", "STATES", "CONFIGURED", "LAUNCHED", "AUTOSTOP"], &rows, &all);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use cgcloud_roles::role::{ClusterDecl, ClusterSecret, SecretKind};

    fn decl() -> ClusterDecl {
        let secret =
            |path: &str, kind| ClusterSecret { path: path.into(), kind, bytes: 64, owner: None, mode: "0400".into() };
        ClusterDecl {
            cluster_type: "c".into(),
            leader: "c-leader".into(),
            worker: "c-worker".into(),
            secrets: vec![secret("/etc/k", SecretKind::Random), secret("/etc/id", SecretKind::SshKey)],
        }
    }

    #[test]
    fn each_cluster_gets_fresh_secrets_of_the_declared_kind() {
        let d = decl();
        let (a, b) = (new_secrets(&d).unwrap(), new_secrets(&d).unwrap());
        let raw =
            |f: &crate::userdata::SecretFile| base64::engine::general_purpose::STANDARD.decode(&f.base64).unwrap();
        for (s, f) in d.secrets.iter().zip(&a) {
            secret_shape_ok(s, &raw(f)).unwrap();
        }
        assert_eq!(raw(&a[0]).len(), 64);
        assert!(String::from_utf8(raw(&a[1])).unwrap().contains("OPENSSH PRIVATE KEY"));
        assert_ne!(a[0].base64, b[0].base64);
        assert_ne!(a[1].base64, b[1].base64);
        // What a leader hands back is checked before a new worker gets it.
        assert!(secret_shape_ok(&d.secrets[0], &[0; 63]).unwrap_err().contains("64 bytes"));
        assert!(secret_shape_ok(&d.secrets[1], b"ssh-ed25519 AAAA").unwrap_err().contains("OpenSSH private key"));
    }

    #[test]
    fn a_nodes_failure_text_cannot_drive_the_terminal() {
        assert_eq!(tags::printable("step 'x' failed: \u{1b}]0;pwned\u{7}\r\nok"), "step 'x' failed:  ]0;pwned   ok");
    }
}
