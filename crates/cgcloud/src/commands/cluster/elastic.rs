//! Elastic clusters at the workstation: `create-cluster --max-workers` and `scale-cluster`.
//! The workstation decides everything a worker's launch needs, once, and the leader's agent
//! only launches (`cgcloud-agent`'s `scale/`): a launch template holding the workers' image,
//! security group, key, profile, user data and tags; a leader with an IAM role of its own
//! cluster whose policy allows launching from that template and nothing else
//! (`cgcloud_core::policy::scaler`); and the bounds, as tags on the leader only the workstation
//! writes. Workers are never launched from here: the leader keeps `--min-workers` of them up.

use super::*;
use crate::commands::launch::{box_tags, ensure_role_security, iam_policy, Prepared};
use cgcloud_aws::ec2::{TemplateRef, TemplateSpec};
use cgcloud_core::policy::scaler::{scaler_statements, ScalerScope};
use cgcloud_core::policy::Policy;
use cgcloud_core::scaling::{self, Market, NodeShape, Scaling};
use cgcloud_core::userdata::cloud_config;
use cgcloud_roles::role::{ClusterDecl, ScalingDecl};

/// The inline policy of a leader's role that lets it launch its workers (beside cgcloud's own,
/// which every box of its role has).
pub(crate) const SCALER_POLICY: &str = "cgcloud-scaler";

/// An elastic cluster's plan: its bounds and the names of what is made for it.
pub(super) struct Elastic {
    pub(super) scaling: Scaling,
    pub(super) decl: ScalingDecl,
    /// The leader's IAM role and instance profile, this cluster's alone.
    pub(super) leader_profile: String,
    /// The launch template's name.
    pub(super) template_name: String,
}

/// The names of what an elastic cluster has of its own: its leader's IAM role and profile, and
/// its launch template. `.` keeps them apart from roles' names, which cannot hold one.
pub(crate) fn own_names(ns: &cgcloud_core::Namespace, cluster: &str) -> (String, String) {
    let prefix = ns.aws_prefix();
    (format!("{prefix}{cluster}.leader"), format!("{prefix}{cluster}.workers"))
}

/// Checks `--max-workers` and what goes with it before anything is launched; None when the
/// cluster does not scale.
pub(super) async fn plan(
    ctx: &Ctx,
    a: &CreateClusterArgs,
    decl: &ClusterDecl,
    p: &mut Prepared,
    name: &str,
) -> Result<Option<Elastic>> {
    let Some(max) = a.max_workers else {
        if a.idle_time.is_some() {
            bail!("--idle-time is for elastic clusters: give --max-workers too");
        }
        return Ok(None);
    };
    let Some(sdecl) = decl.scaling.clone() else {
        bail!(
            "cluster type '{}' cannot scale on its own (its role has no [cluster.scaling]): leave out --max-workers, and add workers with grow-cluster",
            a.cluster_type
        );
    };
    let n = &a.nodes;
    if n.num_workers.is_some() {
        bail!("an elastic cluster's workers are launched by its leader, as its jobs need them: leave out -s, and give --min-workers for workers it keeps up when idle");
    }
    if n.ebs_volume_size.is_some() || p.role.instance.persistent_volume_gb.is_some() {
        bail!("elastic clusters have no persistent volumes (-e): their workers come and go");
    }
    if n.spot_tentative || n.spot.spot_timeout.is_some() {
        bail!("--spot-tentative and --spot-timeout are for launches from here; an elastic cluster's leader tries each type and zone in turn, and again after a cooldown");
    }
    if a.share.is_some() && decl.shared_dir.is_none() {
        bail!("--share on an elastic '{}' cluster needs a shared directory (the cluster type has none): workers launched later would not get the copy", a.cluster_type);
    }
    let min = n.min_workers.unwrap_or(0);
    if max == 0 || min > max || max > scaling::MAX_WORKERS {
        bail!(
            "--min-workers {min} --max-workers {max}: give 0 <= min <= max, max between 1 and {}",
            scaling::MAX_WORKERS
        );
    }
    let idle = a.idle_time.unwrap_or(sdecl.idle).as_secs();
    if !(60..=7 * 86_400).contains(&idle) {
        bail!("--idle-time: give 1 minute to 7 days");
    }
    let mut types = vec![p.instance_type.clone()];
    for t in &n.spot.spot_instance_types {
        if !types.contains(t) {
            types.push(t.clone());
        }
    }
    for t in &types {
        if !sdecl.instance_types.iter().any(|pat| cgcloud_core::policy::wildcard_match(pat, t)) {
            bail!(
                "instance type {t}: a '{}' cluster's leader may launch only {} (the role's [cluster.scaling] instance_types)",
                a.cluster_type,
                sdecl.instance_types.join(", ")
            );
        }
    }
    let cloud = ctx.cloud().await?;
    let mut node: Option<NodeShape> = None;
    for t in &types {
        let info = match p.type_info.get(t) {
            Some(i) => i.clone(),
            None => cloud.instance_type_info(t).await?,
        };
        p.type_info.insert(t.clone(), info.clone());
        let headroom: u64 = p.options.get("memory_headroom_mb").and_then(|m| m.parse().ok()).unwrap_or(512);
        let mem = info.memory_mib.saturating_sub(headroom).max(1);
        node = Some(match node {
            None => NodeShape { cpus: info.vcpus.max(1), mem_mib: mem },
            Some(s) => NodeShape { cpus: s.cpus.min(info.vcpus.max(1)), mem_mib: s.mem_mib.min(mem) },
        });
    }
    let node = node.context("no instance type")?;
    let market = match n.spot.spot_bid {
        Some(b) => Market::Spot {
            bid: Some(scaling::bid_text(b).with_context(|| format!("--spot-bid {b}: give dollars per hour above 0"))?),
            fallback: n.spot.on_demand_fallback,
        },
        None => Market::OnDemand,
    };
    // The chosen subnet first (the user's, or the spot zone's), then, unless the user named
    // one, the VPC's others: a zone short of capacity is skipped for the next.
    let all = cloud.vpc_subnets(&p.network.vpc_id).await?;
    let first = match &p.network.subnet_id {
        Some(s) => Some(s.clone()),
        None => p.network.zone.as_ref().and_then(|z| all.iter().find(|(zone, _)| zone == z)).map(|(_, s)| s.clone()),
    };
    let mut subnets: Vec<String> = first.into_iter().collect();
    if n.subnet.is_none() {
        for (_, s) in all {
            if !subnets.contains(&s) {
                subnets.push(s);
            }
        }
    }
    if subnets.is_empty() {
        bail!("VPC {} has no subnets to launch workers in", p.network.vpc_id);
    }
    // As many as one tag value holds (256 characters), the chosen one first.
    let mut kept = 0;
    let mut len = 0;
    for s in &subnets {
        if kept == 16 || len + s.len() + usize::from(kept > 0) > 256 {
            break;
        }
        len += s.len() + usize::from(kept > 0);
        kept += 1;
    }
    subnets.truncate(kept);
    let scaling = Scaling { min, max, idle_secs: idle, types, market, subnets, node };
    // What the leader will read back must read: checked now rather than on the leader.
    Scaling::from_tags(&scaling.to_tags()).map_err(|e| anyhow!("the cluster's bounds: {e}"))?;
    let (leader_profile, template_name) = own_names(&p.ns, name);
    if leader_profile.len() > crate::commands::launch::MAX_IAM_NAME {
        bail!(
            "cluster name '{name}' is too long for its leader's IAM role '{leader_profile}' (IAM allows {} characters)",
            crate::commands::launch::MAX_IAM_NAME
        );
    }
    Ok(Some(Elastic { scaling, decl: sdecl, leader_profile, template_name }))
}

/// The leader's own role and profile, with the policy of its role's boxes (the scaler's comes
/// once the template exists, `arm`).
pub(super) async fn leader_profile(ctx: &Ctx, p: &Prepared, e: &Elastic, cluster: &str, txn: &Txn) -> Result<()> {
    let cloud = ctx.cloud().await?;
    let policy = iam_policy(&p.ns, &p.role, p.agent.is_some())?;
    let mut t = Tags::new();
    t.insert(tags::NAMESPACE.into(), p.ns.to_string());
    t.insert(tags::ROLE.into(), p.role.name.clone());
    t.insert(tags::CLUSTER.into(), cluster.to_owned());
    t.extend(txn.pending_tags());
    txn.with(|s| s.leader_profile = Some(e.leader_profile.clone()));
    cloud.ensure_instance_profile(&e.leader_profile, &p.ns.iam_path(), &policy.to_json().to_string(), &t).await?;
    Ok(())
}

/// After the leader launched: the workers' launch template, the leader's scaler policy, and
/// the bounds on the leader. `base` holds the cluster tags every node has; the workers fetch
/// the members from `leader_ip` at first boot.
#[allow(clippy::too_many_arguments)]
pub(super) async fn arm(
    ctx: &Ctx,
    p: &Prepared,
    e: &Elastic,
    txn: &Txn,
    base: &Tags,
    leader_id: &str,
    leader_arn: &str,
    leader_ip: Option<std::net::Ipv4Addr>,
) -> Result<TemplateRef> {
    let cloud = ctx.cloud().await?;
    let worker = Group {
        count: 1,
        min_count: None,
        box_role: p.role.cluster.as_ref().map(|c| c.worker.clone()).context("not a cluster node role")?,
        instance_type: p.instance_type.clone(),
        extra_tags: base.clone(),
        first_boot: true,
        label: "workers".into(),
        spot: None,
        profile: None,
        boot_leader: leader_ip,
    };
    let mut t = box_tags(p, &worker, txn, None)?;
    for k in
        [tags::LAUNCH, tags::LAUNCH_STATE, tags::LAUNCHER, tags::LAUNCH_CALL, tags::AUTOSTOP, tags::AUTOSTOP_ACTION]
    {
        t.remove(k);
    }
    t.insert(tags::LEADER.into(), leader_id.to_owned());
    t.insert(tags::LEADER_ARN.into(), leader_arn.to_owned());
    // The workers' group and profile: their role's, as any cluster of the type has.
    let security = ensure_role_security(cloud, &p.ns, &p.role, &p.network.vpc_id, p.agent.is_some(), Some(txn)).await?;
    let profile = security.profile.context("the workers' role has no IAM profile")?;
    let profile_arn =
        cloud.instance_profile_arn(&profile).await?.with_context(|| format!("instance profile {profile} vanished"))?;
    let (_, role_arn) = cloud
        .instance_profile_role(&profile)
        .await?
        .with_context(|| format!("instance profile {profile} has no role"))?;
    let cluster = base.get(tags::CLUSTER).cloned().unwrap_or_default();
    let user_data = cloud_config(None, &p.authorized_keys, Some(&cluster), &[], &p.secrets, worker.boot_leader);
    if user_data.len() > crate::commands::launch::MAX_USER_DATA {
        bail!(
            "the workers' user data would be {} bytes, over EC2's limit of {} ({} extra authorized keys); name fewer key pairs with -k",
            user_data.len(),
            crate::commands::launch::MAX_USER_DATA,
            p.authorized_keys.len()
        );
    }
    let spec = TemplateSpec {
        image_id: p.image.image_id.clone(),
        security_group_ids: vec![security.group_id],
        key_name: Some(p.key_name.clone()),
        user_data,
        instance_profile_arn: Some(profile_arn.clone()),
        root_volume: p.image.root_device.clone().map(|d| (d, p.role.instance.root_volume_gb.unwrap_or(10) as i32)),
        instance_store_devices: Vec::new(),
        instance_tags: t.clone(),
        volume_tags: t.clone(),
    };
    let template = cloud.create_launch_template(&e.template_name, &spec, &t).await?;
    txn.with(|s| s.launch_template = Some(template.id.clone()));
    fault("after-template")?;
    // The VPC's ARN has the template's partition, region and account.
    let arn_prefix = template.arn.rsplit_once(':').map(|(p, _)| p).context("the template's ARN has no resource")?;
    let vpc_arn = format!("{arn_prefix}:vpc/{}", p.network.vpc_id);
    let scope = ScalerScope {
        template_arn: &template.arn,
        vpc_arn: &vpc_arn,
        worker_profile_arn: &profile_arn,
        worker_role_arn: &role_arn,
        instance_types: &e.decl.instance_types,
        tags: &t,
    };
    let scaler = Policy { statements: scaler_statements(&scope).map_err(|err| anyhow!("cluster {cluster}: {err}"))? };
    let mut whole = iam_policy(&p.ns, &p.role, p.agent.is_some())?;
    whole.statements.extend(scaler.statements.clone());
    if let Some(how) = cgcloud_core::policy::writes_workstation_tags(&whole) {
        bail!("cluster {cluster}: the leader's policy would let it write {how}");
    }
    cloud.put_role_policy(&e.leader_profile, SCALER_POLICY, &scaler.to_json().to_string()).await?;
    fault("after-leader-policy")?;
    let mut bounds = e.scaling.to_tags();
    bounds.insert(tags::LAUNCH_TEMPLATE.into(), format!("{}:{}", template.id, template.version));
    cloud.create_tags(&[leader_id.to_owned()], &bounds).await?;
    Ok(template)
}

/// Before a cluster's nodes are terminated: the leader may launch no more (its scaler policy
/// goes first). After: its template, role and profile go. Nothing for a cluster that does
/// not scale.
pub(crate) async fn disarm(ctx: &Ctx, c: &Cluster) -> Result<()> {
    let Some(leader) = c.leader() else { return Ok(()) };
    if !leader.tags.contains_key(tags::LAUNCH_TEMPLATE) {
        return Ok(());
    }
    let ns = ctx.namespace().await?;
    let (role, _) = own_names(ns, &c.name);
    ctx.cloud().await?.delete_role_policy(&role, SCALER_POLICY).await?;
    Ok(())
}

/// After an elastic cluster's nodes are gone: what was made for it.
pub(crate) async fn remove_own(ctx: &Ctx, c: &Cluster) -> Result<()> {
    let Some(template) = c.leader().and_then(|l| l.tags.get(tags::LAUNCH_TEMPLATE)) else { return Ok(()) };
    let cloud = ctx.cloud().await?;
    let ns = ctx.namespace().await?;
    let id = template.split(':').next().unwrap_or_default();
    cloud.delete_launch_template(id).await?;
    let (role, _) = own_names(ns, &c.name);
    let gone = async {
        cloud.delete_instance_profile(&role).await?;
        cloud.delete_role(&role).await
    };
    if let Err(e) = gone.await {
        tracing::warn!("could not delete the leader's IAM role {role}: {e}; `cgcloud cleanup` removes it later");
    }
    // The queues of the workers the leader terminated over the cluster's life.
    let n = crate::commands::cleanup::delete_orphan_queues(ctx, ns).await?;
    tracing::debug!("deleted {n} agent queue(s) of terminated workers");
    Ok(())
}

/// `scale-cluster`: new bounds for an elastic cluster, which its leader takes at its next
/// refresh (notified at once).
pub async fn scale(ctx: &Ctx, a: crate::cli::ScaleClusterArgs) -> Result<ExitCode> {
    let c = select(ctx, &a.selection).await?;
    let leader = c.leader().with_context(|| format!("cluster {} has no leader", c.name))?;
    let mut s =
        Scaling::from_tags(&leader.tags).map_err(|e| anyhow!("cluster {}: {e}", c.name))?.with_context(|| {
            format!("cluster {} does not scale on its own; it was created without --max-workers", c.name)
        })?;
    if let Some(m) = a.min_workers {
        s.min = m;
    }
    if let Some(m) = a.max_workers {
        s.max = m;
    }
    if let Some(d) = a.idle_time {
        s.idle_secs = d.as_secs();
    }
    if s.max == 0 || s.min > s.max || s.max > scaling::MAX_WORKERS {
        bail!("min {} max {}: give 0 <= min <= max, max between 1 and {}", s.min, s.max, scaling::MAX_WORKERS);
    }
    if !(60..=7 * 86_400).contains(&s.idle_secs) {
        bail!("--idle-time: give 1 minute to 7 days");
    }
    let cloud = ctx.cloud().await?;
    cloud.create_tags(std::slice::from_ref(&leader.instance_id), &s.to_tags()).await?;
    notify_members(cloud).await;
    let json = serde_json::json!({"cluster": c.name, "scaling": scaling_json(&s)});
    ctx.out.record(&json, || format!("cluster {}: {}", c.name, s.summary()));
    Ok(ExitCode::SUCCESS)
}

/// The bounds for `--output json`.
pub(crate) fn scaling_json(s: &Scaling) -> serde_json::Value {
    let (market, bid, fallback) = match &s.market {
        Market::OnDemand => ("on-demand", None, false),
        Market::Spot { bid, fallback } => ("spot", bid.clone(), *fallback),
    };
    serde_json::json!({
        "min_workers": s.min, "max_workers": s.max, "idle_seconds": s.idle_secs,
        "instance_types": s.types, "market": market, "spot_bid": bid, "on_demand_fallback": fallback,
        "subnets": s.subnets, "node_cpus": s.node.cpus, "node_memory_mib": s.node.mem_mib,
    })
}
