//! Cluster nodes' persistent volumes (`-e GB`) are the workstation's to make and to give. Before
//! a launch, the volumes of the slots it fills are checked (one per slot, not in use, all in one
//! zone, which the launch moves to); after it, each node's volume is made in the node's zone or,
//! if it exists, given to the node: tagged `cgcloud:attach-to` with the node's ARN. The node's
//! agent attaches only a volume given to it, and IAM lets it attach no other; no box may create
//! or tag a volume. So a volume another box made for a future node's slot (a setuid shell on
//! it) is never mounted there, and a node re-created for its slot gets its data back.

use super::*;
use crate::commands::launch::Prepared;
use cgcloud_aws::ec2::VolumeInfo;

/// The namespace's persistent volumes by `Name`: one request for a whole launch.
async fn persistent_by_name(cloud: &Cloud, ns: &str) -> Result<BTreeMap<String, Vec<VolumeInfo>>> {
    let mut out: BTreeMap<String, Vec<VolumeInfo>> = BTreeMap::new();
    for v in cloud.volumes_tagged(ns, tags::PERSISTENT, "true").await? {
        out.entry(v.tags.get(tags::NAME).cloned().unwrap_or_default()).or_default().push(v);
    }
    Ok(out)
}

/// Before launch: the existing volumes of `ordinals` of cluster `cluster` must each be one, not
/// attached, and in one zone; a launch without a zone of its own moves there.
pub(super) async fn check_slots(ctx: &Ctx, p: &mut Prepared, cluster: &str, ordinals: &[u32]) -> Result<()> {
    let cloud = ctx.cloud().await?;
    let ns = ctx.namespace().await?;
    let volumes = persistent_by_name(cloud, ns.as_str()).await?;
    let mut zones = BTreeMap::new();
    for &ordinal in ordinals {
        let name = ns.node_volume_name(cluster, ordinal)?;
        let found = volumes.get(&name).map(Vec::as_slice).unwrap_or_default();
        match found {
            [] => {}
            [v] if !v.attachments.is_empty() && !leaving(cloud, &v.attached_to()).await? => bail!(
                "the persistent volume {} ({name}) of node {ordinal} is attached to {}; terminate that instance first",
                v.volume_id,
                v.attached_to().join(", ")
            ),
            [v] => {
                zones.insert(v.zone.clone(), format!("{} ({name})", v.volume_id));
            }
            _ => bail!(
                "{} persistent volumes are named {name} ({}); keep one and delete the others",
                found.len(),
                found.iter().map(|v| v.volume_id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if zones.len() > 1 {
        bail!(
            "the cluster's persistent volumes are in different zones ({}); one cluster runs in one zone",
            zones.iter().map(|(z, v)| format!("{v} in {z}")).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some((zone, volume)) = zones.into_iter().next() {
        match p.network.zone.as_deref() {
            Some(z) if z == zone => {}
            Some(z) if ctx.settings.zone.is_some() || ctx.settings.subnet.is_some() => bail!(
                "the persistent volume {volume} is in zone {zone}, but this launch is in {z}; launch in {zone} (-z {zone})"
            ),
            _ => p.network = cloud.network(None, Some(&zone)).await?,
        }
    }
    Ok(())
}

/// True if every instance of `ids` is terminated or on its way (a volume it holds comes free,
/// and the node waits for that).
async fn leaving(cloud: &Cloud, ids: &[String]) -> Result<bool> {
    let states = cloud.instance_states(ids).await?;
    Ok(ids.iter().all(|id| states.get(id).is_none_or(|(s, _)| s == "terminated" || s == "shutting-down")))
}

/// After launch: each node of `ids` gets its slot's volume, made in its zone (`size_gb`) if it
/// does not exist.
pub(super) async fn give(ctx: &Ctx, ids: &[String], cluster: &str, size_gb: u32, account: &str) -> Result<()> {
    let cloud = ctx.cloud().await?;
    let ns = ctx.namespace().await?;
    let volumes = persistent_by_name(cloud, ns.as_str()).await?;
    for b in cloud.boxes_by_id(ids).await? {
        let ordinal = b.ordinal.with_context(|| format!("node {} has no ordinal", b.instance_id))?;
        let zone = b.zone.clone().with_context(|| format!("node {} has no availability zone", b.instance_id))?;
        let name = ns.node_volume_name(cluster, ordinal)?;
        let arn = cgcloud_core::policy::instance_arn(&cloud.region, account, &b.instance_id);
        let found = volumes.get(&name).map(Vec::as_slice).unwrap_or_default();
        let mut given = Tags::new();
        given.insert(tags::ATTACH_TO.into(), arn);
        match found {
            [] => {
                let mut t = given;
                t.insert(tags::NAME.into(), name.clone());
                t.insert(tags::NAMESPACE.into(), ns.to_string());
                t.insert(tags::PERSISTENT.into(), "true".into());
                t.insert(tags::CLUSTER.into(), cluster.to_owned());
                t.insert(tags::ORDINAL.into(), ordinal.to_string());
                cloud.create_volume(&zone, size_gb, &t).await?;
            }
            [v] if v.zone != zone => bail!(
                "the persistent volume {} ({name}) is in zone {}, but node {} is in {zone}",
                v.volume_id,
                v.zone,
                b.instance_id
            ),
            [v] => cloud.create_tags(std::slice::from_ref(&v.volume_id), &given).await?,
            _ => bail!("{} persistent volumes are named {name}; keep one and delete the others", found.len()),
        }
    }
    Ok(())
}
