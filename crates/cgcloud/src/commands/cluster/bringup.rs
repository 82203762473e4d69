//! create-cluster and grow-cluster: one RunInstances call for the leader and one (per
//! attempt) for the workers, then watching them configure themselves.

use super::*;
use crate::commands::launch::{launch_group_instances, Prepared};
use cgcloud_roles::role::ClusterDecl;

/// A create-cluster checked and resolved, before anything is launched.
struct ClusterPlan {
    p: Prepared,
    decl: ClusterDecl,
    name: String,
    leader_type: String,
    volume_gb: Option<u32>,
    /// The tags every node gets.
    base: Tags,
    /// The workers asked for, and how many of them must come up.
    workers: u32,
    min: u32,
    account: String,
    /// `--max-workers`: the leader launches the workers.
    elastic: Option<elastic::Elastic>,
}

pub async fn create(ctx: &Ctx, a: CreateClusterArgs) -> Result<ExitCode> {
    let plan = plan_create(ctx, &a).await?;
    let cloud = ctx.cloud().await?;
    let name = plan.name.clone();
    let txn = Txn::new();
    let mut phases = Phases::default();
    let t0 = Instant::now();
    let (requests_before, retries_before) = (cloud.requests_sent(), cloud.retries_sent());
    let work = async {
        let (leader_id, leader_arn, leader_ip) = launch_leader(ctx, &plan, &txn, &a).await?;
        if let Some(e) = &plan.elastic {
            elastic::arm(ctx, &plan.p, e, &txn, &plan.base, &leader_id, &leader_arn, leader_ip).await?;
        }
        let ordinals: Vec<u32> = (1..=plan.workers).collect();
        let mut worker_base = plan.base.clone();
        worker_base.insert(tags::LEADER_ARN.into(), leader_arn);
        let (n, min, spot) = (plan.workers, plan.min, &a.nodes.spot);
        let workers = if n > 0 {
            let leader = (leader_id.as_str(), leader_ip);
            launch_workers(ctx, &plan.p, &txn, &worker_base, &plan.decl.worker, leader, &ordinals, min, spot).await?
        } else {
            Vec::new()
        };
        if let (Some(gb), false) = (plan.volume_gb, workers.is_empty()) {
            volumes::give(ctx, &workers, &name, gb, &plan.account).await?;
        }
        if (workers.len() as u32) < n {
            tracing::warn!("EC2 launched {} of {n} workers (at least {min} were required)", workers.len());
        }
        phases.launched_s = t0.elapsed().as_secs_f64();
        fault("after-workers")?;
        let mut all = vec![leader_id.clone()];
        all.extend(workers.iter().cloned());
        let mut must = BTreeSet::from([leader_id.clone()]);
        if !a.nodes.quick && min == n {
            must.extend(workers.iter().cloned());
        }
        let bring = Bringup { cluster: &name, grow: false, all: &all, workers: &workers, must, min, asked: n };
        let failed = settle(ctx, &a.nodes, &bring, &mut phases, t0).await?;
        finish_launch(cloud, &txn, &all).await?;
        if let Some(share) = &a.share {
            let mut nodes: Vec<BoxInfo> = cloud
                .boxes_by_id(&all)
                .await?
                .into_iter()
                .filter(|b| b.state == "running" && !failed.iter().any(|(id, _)| *id == b.instance_id))
                .collect();
            nodes.sort_by_key(|b| b.ordinal);
            let leader = nodes.iter().find(|b| b.instance_id == leader_id).cloned().context("leader vanished")?;
            nodes.retain(|b| b.instance_id != leader_id);
            share::at_create(ctx, &plan.decl, &leader, &nodes, share, &a.ssh_opts, a.nodes.ssh_address).await?;
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
    if let Some(e) = &plan.elastic {
        ctx.out.note(format!(
            "cluster {name} is elastic: its leader launches {} (jobs waiting) and terminates idle ones",
            e.scaling.summary()
        ));
    }
    ctx.out.note(format!("run 'cgcloud ssh {} -c {name}' to log in to the leader", plan.decl.leader));
    Ok(ExitCode::SUCCESS)
}

/// Everything create-cluster checks and resolves before it launches: the image, the name,
/// `--share`, the launch itself (`prepare`), names' lengths, spot, volume slots and secrets.
async fn plan_create(ctx: &Ctx, a: &CreateClusterArgs) -> Result<ClusterPlan> {
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
        if a.nodes.quick && decl.shared_dir.is_none() {
            bail!(
                "--share copies to every node of a '{}' cluster, and -Q does not wait for the workers: leave out -Q",
                a.cluster_type
            );
        }
    }
    let la = launch_args(&a.nodes);
    let needs =
        LocalNeeds { ssh: !a.nodes.skip_ssh_check || a.share.is_some(), agent: false, rsync: a.share.is_some() };
    let mut p =
        prepare(ctx, node_role.clone(), image.tags.get(tags::OS).map(String::as_str), &la, Some(&image), None, needs)
            .await?;
    let names = cgcloud_core::limits::derived(&ns, &node_role.name, &[], Some(&name), false, &[])?;
    cgcloud_core::limits::check(&names).map_err(|e| anyhow!("cluster '{name}' in namespace '{ns}': {e}"))?;
    spot_zone(ctx, &mut p, &a.nodes.spot).await?;
    let elastic = elastic::plan(ctx, a, &decl, &mut p, &name).await?;
    // An elastic cluster's workers are its leader's to launch.
    let n = if elastic.is_some() { 0 } else { a.nodes.num_workers.unwrap_or(1) };
    let volume_gb = a.nodes.ebs_volume_size.or(node_role.instance.persistent_volume_gb);
    if volume_gb.is_some() {
        volumes::check_slots(ctx, &mut p, &name, &(0..=n).collect::<Vec<_>>()).await?;
    }
    p.secrets = new_secrets(&decl)?;
    let leader_type = match &a.leader_instance_type {
        Some(t) => {
            let info = cloud.instance_type_info(t).await?;
            p.type_info.insert(t.clone(), info);
            t.clone()
        }
        None => p.instance_type.clone(),
    };
    check_spot_types(ctx, &mut p, &a.nodes.spot).await?;
    let min = a.nodes.min_workers.unwrap_or(if a.nodes.spot_tentative { 0 } else { n }).min(n);
    let mut base = Tags::new();
    base.insert(tags::CLUSTER.into(), name.clone());
    base.insert(tags::CLUSTER_TYPE.into(), a.cluster_type.clone());
    base.insert(tags::NODE_ROLE.into(), node_role.name.clone());
    if let Some(gb) = volume_gb {
        base.insert(tags::EBS_VOLUME_SIZE.into(), gb.to_string());
    }
    if let Some(e) = &elastic {
        // At launch, so that the leader knows at its first boot that its cluster scales.
        base.insert(tags::NODE_PREFIX.into(), e.decl.node_prefix.clone());
    }
    let account = cloud.caller_identity().await?.0;
    if p.autostop.is_some_and(|(_, terminate)| !terminate) && a.nodes.spot.spot_bid.is_some() {
        ctx.out.note("note: spot instances cannot stop: autostop terminates the cluster's spot nodes (persistent volumes are kept)");
    }
    Ok(ClusterPlan { p, decl, name, leader_type, volume_gb, base, workers: n, min, account, elastic })
}

/// Launches the leader, tags it with its own id and ARN and gives it its volume. Returns the
/// leader's id, ARN and private address (None if RunInstances gave none: its workers then ask
/// EC2 for the members, as before the leader published them).
async fn launch_leader(
    ctx: &Ctx,
    plan: &ClusterPlan,
    txn: &Txn,
    a: &CreateClusterArgs,
) -> Result<(String, String, Option<std::net::Ipv4Addr>)> {
    let cloud = ctx.cloud().await?;
    let mut leader_tags = plan.base.clone();
    leader_tags.insert(tags::ORDINAL.into(), "0".into());
    let leader = Group {
        count: 1,
        min_count: None,
        box_role: plan.decl.leader.clone(),
        instance_type: plan.leader_type.clone(),
        extra_tags: leader_tags,
        first_boot: true,
        label: "leader".into(),
        // An elastic cluster's leader is on demand: its workers' jobs depend on it.
        spot: a
            .nodes
            .spot
            .spot_bid
            .filter(|_| !a.leader_on_demand && plan.elastic.is_none())
            .map(|b| Some(format!("{b:.4}"))),
        profile: plan.elastic.as_ref().map(|e| e.leader_profile.clone()),
        boot_leader: None,
    };
    if let Some(e) = &plan.elastic {
        elastic::leader_profile(ctx, &plan.p, e, &plan.name, txn).await?;
    }
    let launched = launch_group_instances(ctx, &plan.p, txn, &leader).await?;
    let leader_ids: Vec<String> = launched.iter().map(|i| i.id.clone()).collect();
    let leader_id = leader_ids.first().cloned().context("RunInstances returned no leader")?;
    let leader_ip = launched.first().and_then(|i| i.private_ip.as_deref()).and_then(|ip| ip.parse().ok());
    fault("after-leader")?;
    // The leader's ARN on every node: what IAM lets it, and it alone, stop and terminate
    // (autostop); tags only the workstation writes.
    let leader_arn = cgcloud_core::policy::instance_arn(&cloud.region, &plan.account, &leader_id);
    let mut t = Tags::new();
    t.insert(tags::LEADER.into(), leader_id.clone());
    t.insert(tags::LEADER_ARN.into(), leader_arn.clone());
    cloud.create_tags(&leader_ids, &t).await?;
    if let Some(gb) = plan.volume_gb {
        volumes::give(ctx, &leader_ids, &plan.name, gb, &plan.account).await?;
    }
    Ok((leader_id, leader_arn, leader_ip))
}

/// The nodes of one launch, for `settle`.
struct Bringup<'a> {
    cluster: &'a str,
    /// Whether these are new workers of a cluster (grow-cluster), not a new cluster.
    grow: bool,
    /// Every node launched (a new cluster's leader first).
    all: &'a [String],
    /// The workers among them.
    workers: &'a [String],
    /// Nodes that must configure themselves (the others may fail, `--min-workers`).
    must: BTreeSet<String>,
    /// How many workers must come up, of how many asked for.
    min: u32,
    asked: u32,
}

/// Watches a launch's nodes configure themselves, then holds it to `--min-workers`: fewer
/// workers than that fail the launch (rolled back); the ones that did not come up are named and
/// terminated, not left half-made. Returns those.
async fn settle(
    ctx: &Ctx,
    nodes: &NodeLaunchArgs,
    b: &Bringup<'_>,
    phases: &mut Phases,
    t0: Instant,
) -> Result<Vec<(String, String)>> {
    let cloud = ctx.cloud().await?;
    // Tell the nodes' agents to refresh the members now.
    notify_members(cloud).await;
    let (label, nodes_word, workers_word) = match b.grow {
        false => (format!("cluster {}", b.cluster), "node(s)", "worker(s)"),
        true => (format!("cluster {}: new workers", b.cluster), "new worker(s)", "new worker(s)"),
    };
    let mut bars = ctx.out.phases(label, b.all.len() as u64, PHASES);
    let wait = WaitFor::launch(nodes, &b.must);
    let failed = await_nodes(ctx, cloud, b.all, &wait, phases, t0, &mut bars).await?;
    bars.finish(if nodes.quick {
        format!("cluster {}: {} {nodes_word} launched; they configure themselves (-Q)", b.cluster, b.all.len())
    } else {
        format!("cluster {}: {} {nodes_word} configured", b.cluster, b.all.len() - failed.len())
    });
    let named = || failed.iter().map(|(id, why)| format!("{id} ({why})")).collect::<Vec<_>>().join(", ");
    let good = b.workers.len() - failed.iter().filter(|(id, _)| b.workers.contains(id)).count();
    if !nodes.quick && (good as u32) < b.min {
        bail!("only {good} of {} {workers_word} came up, fewer than --min-workers {}: {}", b.asked, b.min, named());
    }
    if !failed.is_empty() {
        tracing::warn!("{} {workers_word} did not come up and are terminated: {}", failed.len(), named());
        let bad: Vec<String> = failed.iter().map(|(id, _)| id.clone()).collect();
        cloud.terminate(&bad).await?;
    }
    notify_members(cloud).await;
    Ok(failed)
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
    if leader.tags.contains_key(tags::SCALING) {
        bail!(
            "cluster {} is elastic: its leader launches its workers; change its bounds with `cgcloud scale-cluster {} -c {} --min-workers N`",
            c.name,
            c.cluster_type,
            c.name
        );
    }
    let reg = ctx.registry().await?;
    let node_role = reg.cluster_type(&c.cluster_type)?;
    let decl = node_role.cluster.clone().context("not a cluster node role")?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    let images = cloud.list_images(ns.as_str(), Some(&node_role.name)).await?;
    let spec = a.nodes.boot_image.clone().or(leader.image_id.clone()).unwrap_or_else(|| "-1".into());
    let image = pick_image(&node_role.name, ns.as_str(), images, &spec)?;
    let la = launch_args(&a.nodes);
    let share = share::needed_at_grow(&decl, &leader);
    if share && a.nodes.quick {
        bail!(
            "cluster {} was created with --share: new workers get the leader's ~/shared once they are up, which -Q does not wait for; leave out -Q",
            c.name
        );
    }
    let needs = LocalNeeds { ssh: !a.nodes.skip_ssh_check || share, agent: false, rsync: share };
    let mut p =
        prepare(ctx, node_role, image.tags.get(tags::OS).map(String::as_str), &la, Some(&image), None, needs).await?;
    spot_zone(ctx, &mut p, &a.nodes.spot).await?;
    p.secrets = cluster_secrets(ctx, &leader, &decl).await?;
    // New workers fetch the members from the leader if it has the cluster's key (a cluster made
    // before there was one has none: its new workers ask EC2, as the others do).
    let has_key = p.secrets.iter().any(|s| s.path == cgcloud_core::members::KEY_PATH);
    let leader_ip = leader.private_ip.as_deref().and_then(|ip| ip.parse().ok()).filter(|_| has_key);
    let used: BTreeSet<u32> = c.nodes.iter().filter_map(|n| n.ordinal).collect();
    let n = a.nodes.num_workers.unwrap_or(1);
    let ordinals = allocate_ordinals(&used, n as usize);
    let volume_gb: Option<u32> =
        a.nodes.ebs_volume_size.or_else(|| leader.tags.get(tags::EBS_VOLUME_SIZE).and_then(|g| g.parse().ok()));
    let account = if volume_gb.is_some() {
        volumes::check_slots(ctx, &mut p, &c.name, &ordinals).await?;
        cloud.caller_identity().await?.0
    } else {
        String::new()
    };
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
    check_spot_types(ctx, &mut p, &a.nodes.spot).await?;
    let txn = Txn::new();
    let mut phases = Phases::default();
    let t0 = Instant::now();
    let min = a.nodes.min_workers.unwrap_or(if a.nodes.spot_tentative { 0 } else { n }).min(n);
    let work = async {
        let ids = launch_workers(
            ctx,
            &p,
            &txn,
            &base,
            &decl.worker,
            (&leader.instance_id, leader_ip),
            &ordinals,
            min,
            &a.nodes.spot,
        )
        .await?;
        if let (Some(gb), false) = (volume_gb, ids.is_empty()) {
            volumes::give(ctx, &ids, &c.name, gb, &account).await?;
        }
        // With --min-workers, workers may fail as long as enough come up (as at create-cluster).
        let all_needed = !a.nodes.quick && min as usize >= ids.len();
        let must: BTreeSet<String> = if all_needed { ids.iter().cloned().collect() } else { BTreeSet::new() };
        let bring =
            Bringup { cluster: &c.name, grow: true, all: &ids, workers: &ids, must, min, asked: ids.len() as u32 };
        let failed = settle(ctx, &a.nodes, &bring, &mut phases, t0).await?;
        let added: BTreeSet<String> =
            ids.iter().filter(|id| !failed.iter().any(|(bad, _)| bad == *id)).cloned().collect();
        if share {
            let new: Vec<BoxInfo> = cloud.boxes_by_id(&added.iter().cloned().collect::<Vec<_>>()).await?;
            share::at_grow(ctx, &leader, &new, a.nodes.ssh_address).await?;
        }
        finish_launch(cloud, &txn, &ids).await?;
        Ok(added)
    };
    let added = transaction(ctx, &txn, a.nodes.never_terminate, work).await?;
    let c = select(
        ctx,
        &ClusterSelection { cluster_type: c.cluster_type.clone(), cluster: Some(c.name.clone()), ordinal: None },
    )
    .await?;
    print_nodes(ctx, &c);
    // The ordinals of the workers that joined (not of those that were asked for and not
    // launched, or failed and were terminated).
    let mut joined: Vec<u32> =
        c.nodes.iter().filter(|b| added.contains(&b.instance_id)).filter_map(|b| b.ordinal).collect();
    joined.sort_unstable();
    ctx.out.note(format!(
        "added {} worker(s), ordinals {} in {:.1} s",
        joined.len(),
        joined.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        phases.configured_s
    ));
    Ok(ExitCode::SUCCESS)
}
