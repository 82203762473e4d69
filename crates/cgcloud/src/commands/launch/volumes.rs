//! A standalone box's persistent volume: planned (and checked) before the launch, attached after.

use super::*;

/// The device a box's persistent volume is attached at (the agent finds it by volume id on
/// Nitro instances, where it shows as NVMe).
pub(crate) const PERSISTENT_DEVICE: &str = "/dev/sdf";

/// A standalone box's persistent volume, decided before launch.
#[derive(Debug, Clone)]
pub(crate) struct VolumePlan {
    /// The volume's `Name`: the role's AWS name (one volume per role and namespace).
    pub name: String,
    pub size_gb: u32,
    /// The volume, if it exists already (then it is available, in the launch's zone).
    pub existing: Option<cgcloud_aws::ec2::VolumeInfo>,
}

/// Whether the box gets a persistent volume, and which: the role's existing one when `-e` is
/// given, the role declares one, or (`recreate`) one exists; a new one of `-e` GiB (or the
/// role's size) otherwise. Everything that can be wrong with it is found here, before launch:
/// a volume in use by another box, a size that differs from the existing volume's, a zone
/// other than the one asked for. The launch moves to the existing volume's zone if no zone or
/// subnet was asked for.
pub(crate) async fn plan_volume(
    ctx: &Ctx,
    cloud: &Cloud,
    p: &mut Prepared,
    a: &LaunchArgs,
    recreating: bool,
) -> Result<Option<VolumePlan>> {
    let declared = p.role.instance.persistent_volume_gb;
    if a.ebs_volume_size.is_none() && declared.is_none() && !recreating {
        return Ok(None);
    }
    let name = p.ns.to_aws_name(&p.role.name)?;
    let found: Vec<_> = cloud
        .volumes_named(p.ns.as_str(), &name)
        .await?
        .into_iter()
        .filter(|v| v.tags.get(tags::PERSISTENT).map(String::as_str) == Some("true"))
        .collect();
    if found.len() > 1 {
        bail!(
            "{} persistent volumes are named {name} ({}); keep one and delete the others",
            found.len(),
            found.iter().map(|v| v.volume_id.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let existing = found.into_iter().next();
    let size_gb = match (&existing, a.ebs_volume_size, declared) {
        (Some(v), Some(gb), _) if gb != v.size_gb => bail!(
            "the persistent volume {} ({name}) of role {} has {} GiB; -e {gb} would not resize it: leave out -e to use it as it is",
            v.volume_id,
            p.role.name,
            v.size_gb
        ),
        (Some(v), _, _) => v.size_gb,
        (None, Some(gb), _) | (None, None, Some(gb)) => gb,
        (None, None, None) => return Ok(None),
    };
    if let Some(v) = &existing {
        if v.state != "available" || !v.attachments.is_empty() {
            let users = v.attached_to().join(", ");
            bail!(
                "the persistent volume {} ({name}) of role {} is {}{}; a role's boxes share one persistent volume in a namespace: terminate the box using it first (`cgcloud terminate {} -I {}`)",
                v.volume_id,
                p.role.name,
                v.state,
                if users.is_empty() { String::new() } else { format!(" (attached to {users})") },
                p.role.name,
                if users.is_empty() { "INSTANCE" } else { &users }
            );
        }
        match p.network.zone.as_deref() {
            Some(z) if z == v.zone => {}
            Some(z) if ctx.settings.zone.is_some() || a.subnet.is_some() || ctx.settings.subnet.is_some() => bail!(
                "the persistent volume {} ({name}) of role {} is in zone {}, but this launch is in {z}; launch in {} (-z {})",
                v.volume_id,
                p.role.name,
                v.zone,
                v.zone,
                v.zone
            ),
            _ => p.network = cloud.network(None, Some(&v.zone)).await?,
        }
    }
    Ok(Some(VolumePlan { name, size_gb, existing }))
}

/// Attaches the planned volume to the new box (creating it first if need be, in the box's
/// zone) and records it on the box; returns its id.
pub(crate) async fn attach_volume(
    ctx: &Ctx,
    cloud: &Cloud,
    txn: &Txn,
    p: &Prepared,
    v: &VolumePlan,
    b: &BoxInfo,
) -> Result<String> {
    let id = match &v.existing {
        Some(e) => e.volume_id.clone(),
        None => {
            let zone = b.zone.clone().context("the new box has no availability zone")?;
            let mut t = Tags::new();
            t.insert(tags::NAME.into(), v.name.clone());
            t.insert(tags::NAMESPACE.into(), p.ns.to_string());
            t.insert(tags::ROLE.into(), p.role.name.clone());
            t.insert(tags::PERSISTENT.into(), "true".into());
            t.insert(tags::OWNER.into(), p.owner.clone());
            t.extend(txn.pending_tags());
            let id = cloud.create_volume(&zone, v.size_gb, &t).await?;
            txn.with(|s| s.volume = Some(id.clone()));
            id
        }
    };
    let progress =
        ctx.out.progress(format!("attaching persistent volume {id} ({} GiB) to {}", v.size_gb, b.instance_id));
    wait_volume(cloud, &id, "available", Duration::from_secs(300)).await?;
    cloud.attach_volume(&id, &b.instance_id, PERSISTENT_DEVICE).await?;
    wait_volume(cloud, &id, "in-use", Duration::from_secs(300)).await?;
    let mut t = Tags::new();
    t.insert(tags::PERSISTENT_VOLUME.into(), id.clone());
    t.insert(tags::EBS_VOLUME_SIZE.into(), v.size_gb.to_string());
    cloud.create_tags(std::slice::from_ref(&b.instance_id), &t).await?;
    progress.finish(format!("persistent volume {id} attached to {}", b.instance_id));
    Ok(id)
}

pub(super) async fn wait_volume(cloud: &Cloud, id: &str, state: &str, timeout: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let now = cloud.volume(id).await?.with_context(|| format!("volume {id} disappeared"))?;
        if now.state == state {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("volume {id} is still {} after {} s (waiting for {state})", now.state, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
