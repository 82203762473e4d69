//! One RunInstances call's worth of boxes: their tags, user data and launch.

use super::*;

/// EC2's limit on user data, in bytes before base64.
pub(crate) const MAX_USER_DATA: usize = 16 * 1024;

/// One RunInstances call's worth of boxes.
pub(crate) struct Group {
    pub count: i32,
    /// Accept fewer boxes (down to this many) when EC2 lacks capacity.
    pub min_count: Option<i32>,
    /// The role name the boxes are listed under (for cluster nodes, the leader or worker name).
    pub box_role: String,
    pub instance_type: String,
    pub extra_tags: Tags,
    /// Run `cgcloud-agent boot` at first boot (cluster nodes configure themselves).
    pub first_boot: bool,
    /// Distinguishes the calls of one launch (idempotency token, messages).
    pub label: String,
    /// On the spot market, with this maximum price (None: up to on-demand).
    pub spot: Option<Option<String>>,
    /// An instance profile of these boxes' own instead of their role's (an elastic cluster's
    /// leader).
    pub profile: Option<String>,
    /// A cluster's workers: their leader's private address, from which they fetch the member
    /// list at first boot (`cgcloud_core::members`).
    pub boot_leader: Option<std::net::Ipv4Addr>,
}

impl Group {
    pub(crate) fn single(p: &Prepared) -> Group {
        Group {
            count: 1,
            min_count: None,
            box_role: p.role.name.clone(),
            instance_type: p.instance_type.clone(),
            extra_tags: Tags::new(),
            first_boot: false,
            label: "box".into(),
            spot: None,
            profile: None,
            boot_leader: None,
        }
    }
}

/// The tags of a box of this launch.
pub(crate) fn box_tags(p: &Prepared, g: &Group, txn: &Txn, host_key: Option<&str>) -> Result<Tags> {
    let mut t = Tags::new();
    t.insert(tags::NAME.into(), p.ns.to_aws_name(&g.box_role)?);
    t.insert(tags::NAMESPACE.into(), p.ns.to_string());
    t.insert(tags::ROLE.into(), g.box_role.clone());
    t.insert(tags::OWNER.into(), p.owner.clone());
    t.insert(tags::GENERATION.into(), p.generation.to_string());
    if let Some(k) = host_key {
        t.insert(tags::HOST_KEY.into(), k.to_owned());
    }
    t.insert(tags::LAUNCH.into(), txn.id.clone());
    t.insert(tags::LAUNCH_STATE.into(), tags::LAUNCH_PENDING.into());
    t.insert(tags::LAUNCHER.into(), txn.launcher.clone());
    t.insert(tags::ADMIN_USER.into(), p.os.admin_user.clone());
    t.insert(tags::OS.into(), p.os.id.clone());
    t.insert(tags::KEYPAIRS.into(), p.keypair_patterns.join(" "));
    t.insert(tags::AGENT.into(), p.agent.is_some().to_string());
    if let Some(a) = &p.agent {
        t.extend(a.flags.clone());
    }
    for (k, v) in &p.options {
        t.insert(tags::option_tag(k), v.clone());
    }
    if let Some((secs, terminate)) = p.autostop {
        t.insert(tags::AUTOSTOP.into(), secs.to_string());
        t.insert(tags::AUTOSTOP_ACTION.into(), if terminate { "terminate" } else { "stop" }.into());
    }
    t.extend(g.extra_tags.clone());
    Ok(t)
}

/// Creates the security group and IAM profile (if needed) and launches a group of boxes with
/// one RunInstances call; returns their ids.
pub(crate) async fn launch_group(ctx: &Ctx, p: &Prepared, txn: &Txn, g: &Group) -> Result<Vec<String>> {
    Ok(launch_group_instances(ctx, p, txn, g).await?.into_iter().map(|i| i.id).collect())
}

/// [`launch_group`], with the instances as RunInstances described them (a cluster's leader's
/// private address, for its workers' user data, without another DescribeInstances).
pub(crate) async fn launch_group_instances(
    ctx: &Ctx,
    p: &Prepared,
    txn: &Txn,
    g: &Group,
) -> Result<Vec<cgcloud_aws::ec2::InstanceInfo>> {
    let cloud = ctx.cloud().await?;
    // Everything that can fail without creating anything comes first.
    let instance_store = match p.type_info.get(&g.instance_type) {
        Some(info) => info.mapped_instance_store(),
        None => cloud.instance_type_info(&g.instance_type).await?.mapped_instance_store(),
    };
    // The boxes of one call share their user data, so a host key there would be shared too:
    // nodes that configure themselves make their own and publish it (the agent's `boot`); a box
    // provisioned over SSH gets one here, so that the first connection can be verified.
    let host_key = if g.first_boot { None } else { Some(cgcloud_remote::hostkey::generate()?) };
    let boot_cluster = g.first_boot.then(|| g.extra_tags.get(tags::CLUSTER).map(String::as_str).unwrap_or_default());
    let user_data =
        cloud_config(host_key.as_ref(), &p.authorized_keys, boot_cluster, &instance_store, &p.secrets, g.boot_leader);
    if user_data.len() > MAX_USER_DATA {
        bail!(
            "the boxes' user data would be {} bytes, over EC2's limit of {MAX_USER_DATA} ({} extra authorized keys); \
             name fewer key pairs with -k",
            user_data.len(),
            p.authorized_keys.len()
        );
    }
    let mut box_tags = box_tags(p, g, txn, host_key.as_ref().map(|k| k.public.as_str()))?;
    let client_token = format!("{}-{}", txn.id, g.label);
    box_tags.insert(tags::LAUNCH_CALL.into(), client_token.clone());
    let security = ensure_role_security(cloud, &p.ns, &p.role, &p.network.vpc_id, p.agent.is_some(), Some(txn)).await?;
    if security.group_created {
        txn.with(|s| s.security_group = Some(security.group_id.clone()));
    }
    if security.profile_created {
        txn.with(|s| s.instance_profile = security.profile.clone());
    }
    let (sg_id, profile) = (security.group_id, g.profile.clone().or(security.profile));
    let count = g.count;
    let spec = LaunchSpec {
        image_id: p.image.image_id.clone(),
        instance_type: g.instance_type.clone(),
        count,
        min_count: g.min_count,
        key_name: Some(p.key_name.clone()),
        security_group_ids: vec![sg_id],
        subnet_id: p.network.subnet_id.clone(),
        zone: p.network.zone.clone(),
        user_data,
        instance_profile: profile,
        root_volume: p.image.root_device.clone().map(|d| (d, p.role.instance.root_volume_gb.unwrap_or(10) as i32)),
        tags: box_tags,
        client_token: Some(client_token),
        spot: g.spot.clone(),
        instance_store_devices: instance_store,
        launch_template: None,
    };
    let progress =
        ctx.out.progress(format!("launching {count} × {} ({}) from {}", g.box_role, g.instance_type, p.image.image_id));
    let retries = cloud.retries_sent();
    let instances = cloud.run_instances(&spec).await?;
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    txn.with(|s| s.instances.extend(ids.iter().cloned()));
    if cloud.retries_sent() > retries {
        // A retried call (its first answer lost) may have launched twice where the endpoint
        // does not honour the client token: the call's tag finds the extra ones.
        let token = spec.client_token.clone().unwrap_or_default();
        let extra: Vec<String> = cloud
            .boxes_with_tag(p.ns.as_str(), tags::LAUNCH_CALL, &token)
            .await?
            .into_iter()
            .map(|b| b.instance_id)
            .filter(|i| !ids.contains(i))
            .collect();
        if !extra.is_empty() {
            tracing::warn!(
                "RunInstances was retried and launched {} instance(s) twice ({}); terminating the copies",
                extra.len(),
                extra.join(", ")
            );
            txn.with(|s| s.instances.extend(extra.iter().cloned()));
            cloud.terminate(&extra).await?;
        }
    }
    let shown = if ids.len() > 4 { format!("{} boxes", ids.len()) } else { ids.join(", ") };
    progress.finish(format!("launched {shown}"));
    Ok(instances)
}
