//! `cleanup` (leftovers of interrupted launches, unreferenced snapshots, failed images, unused
//! security groups, orphaned volumes, stale host keys) and `reset-security` (security groups
//! and IAM roles/profiles). Both act strictly inside the namespace, the root namespace
//! included: a resource belongs to it only if its namespace tag (or IAM path) is exactly it;
//! `--recursive` adds the namespaces below it, each treated the same way.

use super::boxes::wait_for_state;
use super::images::delete_snapshot_when_free;
use super::launch::launcher_gone;
use crate::cli::{CleanupArgs, ConfirmArgs};
use crate::context::Ctx;
use crate::output::confirm;
use anyhow::Result;
use cgcloud_aws::Cloud;
use cgcloud_core::model::BoxInfo;
use cgcloud_core::namespace::Namespace;
use cgcloud_core::tags::{self, Tags};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(Debug, serde::Serialize)]
struct Item {
    /// The namespace the resource belongs to (with `--recursive`, one below the command's).
    namespace: String,
    kind: &'static str,
    id: String,
    why: String,
}

impl Item {
    /// An item of the namespace being cleaned up (`--recursive` sets the namespace later).
    fn new(kind: &'static str, id: String, why: String) -> Item {
        Item { namespace: String::new(), kind, id, why }
    }
}

fn launched_before(launch_time: &str, min_age: Duration) -> bool {
    match humantime::parse_rfc3339_weak(launch_time.trim_end_matches('Z')) {
        Ok(t) => SystemTime::now().duration_since(t).map(|age| age >= min_age).unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether a resource tagged by a launch that has not completed was left by an interrupted
/// one: its launch process ran on this machine and is gone, or (launched elsewhere) it is
/// older than `min_age`. A launch still running here is never interrupted, whatever its age.
fn interrupted(t: &Tags, created: &str, min_age: Duration) -> bool {
    if t.get(tags::LAUNCH_STATE).map(String::as_str) != Some(tags::LAUNCH_PENDING) {
        return false;
    }
    match t.get(tags::LAUNCHER).and_then(|l| launcher_gone(l)) {
        Some(gone) => gone,
        None => launched_before(created, min_age),
    }
}

fn why_interrupted(t: &Tags, what: &str, min_age: Duration) -> String {
    match t.get(tags::LAUNCHER).and_then(|l| launcher_gone(l)) {
        Some(true) => format!("{what} of a launch whose process is gone (killed or interrupted)"),
        _ => format!("{what} of a launch interrupted ({} ago or more)", humantime::format_duration(min_age)),
    }
}

/// The namespaces a command acts on: its own, and with `--recursive` every one below it.
async fn scope(ctx: &Ctx, recursive: bool) -> Result<Vec<Namespace>> {
    let ns = ctx.namespace().await?.clone();
    let mut all = vec![ns.clone()];
    if recursive {
        for child in ctx.cloud().await?.namespaces_below(&ns).await? {
            all.push(Namespace::parse(&child)?);
        }
    }
    Ok(all)
}

pub async fn cleanup(ctx: &Ctx, a: CleanupArgs) -> Result<ExitCode> {
    let cloud = ctx.cloud().await?;
    let mut items = Vec::new();
    let mut terminating = Vec::new();
    for ns in scope(ctx, a.confirm.recursive).await? {
        let (mut found, ending) = leftovers(ctx, &ns, &a).await?;
        for i in &mut found {
            i.namespace = ns.to_string();
        }
        items.extend(found);
        terminating.extend(ending);
    }

    // Host keys of boxes that are gone are local cache entries; drop them without asking.
    let known_hosts = ctx.settings.known_hosts();
    let aliases = cgcloud_remote::hostkey::aliases(&known_hosts);
    if !aliases.is_empty() {
        let alive: BTreeSet<String> = cloud
            .instance_states(&aliases)
            .await
            .map(|m| m.into_iter().filter(|(_, (s, _))| s != "terminated").map(|(id, _)| id).collect())
            .unwrap_or_else(|_| aliases.iter().cloned().collect());
        let removed = cgcloud_remote::hostkey::prune(&known_hosts, |alias| alive.contains(alias))?;
        if !removed.is_empty() {
            ctx.out.note(format!("forgot the host keys of {} terminated box(es)", removed.len()));
        }
    }

    let terminating = &terminating;
    report_and_delete(ctx, &a.confirm, items, |item| async move {
        // What the terminated boxes used can go only once they are gone.
        let after_boxes = || async {
            if !terminating.is_empty() {
                wait_for_state(ctx, cloud, terminating, "terminated", "the terminated boxes").await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        match item.kind {
            "instance" => cloud.terminate(std::slice::from_ref(&item.id)).await.map_err(Into::into),
            "image" => cloud.deregister_image(&item.id).await.map_err(Into::into),
            "snapshot" => delete_snapshot_when_free(cloud, &item.id).await,
            "security-group" => {
                after_boxes().await?;
                cloud.delete_security_group(&item.id).await.map_err(Into::into)
            }
            "volume" => {
                after_boxes().await?;
                cloud.delete_volume(&item.id).await.map_err(Into::into)
            }
            "iam-role" => {
                after_boxes().await?;
                cloud.delete_instance_profile(&item.id).await.or_else(|e| {
                    if e.code() == Some("NoSuchEntity") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
                cloud.delete_role(&item.id).await.map_err(Into::into)
            }
            "launch-template" => cloud.delete_launch_template(&item.id).await.map_err(Into::into),
            "queue" => {
                cloud.delete_queue(&item.id).await?;
                cloud.prune_agent_subscriptions().await?;
                Ok(())
            }
            _ => Ok(()),
        }
    })
    .await
}

/// What `cleanup` would remove in namespace `ns` alone, and the boxes it terminates.
async fn leftovers(ctx: &Ctx, ns: &Namespace, a: &CleanupArgs) -> Result<(Vec<Item>, Vec<String>)> {
    let cloud = ctx.cloud().await?;
    let min_age = Duration::from_secs(a.min_age_minutes * 60);
    let boxes = cloud.list_boxes(ns.as_str(), None).await?;
    let mut items = box_leftovers(&boxes, min_age);
    let terminating: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    items.extend(image_leftovers(cloud, ns).await?);
    items.extend(group_leftovers(cloud, ns, &terminating).await?);
    items.extend(volume_leftovers(cloud, ns, a, min_age).await?);
    // IAM roles a launch made and did not complete, which no other box uses.
    let in_use: BTreeSet<String> = boxes
        .iter()
        .filter(|b| !terminating.contains(&b.instance_id))
        .filter_map(|b| b.instance_profile.clone())
        .collect();
    // An elastic cluster's own template and leader role, once none of its nodes is left.
    let clusters: BTreeSet<&str> =
        boxes.iter().filter(|b| !terminating.contains(&b.instance_id)).filter_map(|b| b.cluster.as_deref()).collect();
    let gone = |t: &Tags| t.get(tags::CLUSTER).is_some_and(|c| !clusters.contains(c.as_str()));
    for (name, created, t) in cloud.roles_with_tags(&ns.iam_path()).await? {
        if interrupted(&t, &created, min_age) && !in_use.contains(&name) {
            items.push(Item::new("iam-role", name, why_interrupted(&t, "IAM role and profile", min_age)));
        } else if name.ends_with(".leader") && gone(&t) && !in_use.contains(&name) {
            let why = format!("leader role of elastic cluster {}, which has no node left", t[tags::CLUSTER]);
            items.push(Item::new("iam-role", name, why));
        }
    }
    for t in cloud.namespace_launch_templates(ns.as_str()).await? {
        if gone(&t.tags) {
            let why = format!("launch template of elastic cluster {}, which has no node left", t.tags[tags::CLUSTER]);
            items.push(Item::new("launch-template", t.id, why));
        }
    }
    items.extend(queue_leftovers(cloud, ns, &boxes, &terminating).await?);
    Ok((items, terminating))
}

/// Boxes of launches that never finished, and failed launches kept by `--never-terminate`.
fn box_leftovers(boxes: &[BoxInfo], min_age: Duration) -> Vec<Item> {
    let mut items = Vec::new();
    for b in boxes {
        if interrupted(&b.tags, &b.launch_time, min_age) {
            let why = why_interrupted(&b.tags, &format!("box of {}", b.role), min_age);
            items.push(Item::new("instance", b.instance_id.clone(), why));
        } else if b.tags.get(tags::LAUNCH_STATE).map(String::as_str) == Some("failed") {
            let why = format!("failed launch of {} kept by --never-terminate", b.role);
            items.push(Item::new("instance", b.instance_id.clone(), why));
        }
    }
    items
}

/// Failed images, and snapshots no image uses.
async fn image_leftovers(cloud: &Cloud, ns: &Namespace) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let images = cloud.list_images(ns.as_str(), None).await?;
    let referenced: BTreeSet<&str> =
        images.iter().filter(|i| i.state != "failed").flat_map(|i| i.snapshot_ids.iter().map(String::as_str)).collect();
    for i in images.iter().filter(|i| matches!(i.state.as_str(), "failed" | "invalid" | "error")) {
        items.push(Item::new("image", i.image_id.clone(), format!("image of {} is {}", i.role, i.state)));
    }
    for (id, _desc, _t) in cloud.namespace_snapshots(ns.as_str()).await? {
        if !referenced.contains(id.as_str()) {
            items.push(Item::new("snapshot", id, "no image uses it".into()));
        }
    }
    Ok(items)
}

/// Groups used by no box, or only by boxes this cleanup terminates (deleted once they are).
async fn group_leftovers(cloud: &Cloud, ns: &Namespace, terminating: &[String]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let groups = cloud.namespace_security_groups(ns.as_str()).await?;
    let ids: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    let users = cloud.security_group_users(&ids).await?;
    for (id, name, _vpc) in &groups {
        match users.get(id) {
            None => items.push(Item::new("security-group", id.clone(), format!("{name} is used by no box"))),
            Some(u) if u.iter().all(|i| terminating.contains(i)) => {
                let why = format!("{name} is used only by boxes terminated here");
                items.push(Item::new("security-group", id.clone(), why));
            }
            Some(_) => {}
        }
    }
    Ok(items)
}

/// Detached volumes that are not persistent, new persistent volumes of launches that did not
/// finish, and (with `--persistent-volumes`) detached persistent ones.
async fn volume_leftovers(cloud: &Cloud, ns: &Namespace, a: &CleanupArgs, min_age: Duration) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (id, state, t) in cloud.namespace_volumes(ns.as_str()).await? {
        if state != "available" {
            continue;
        }
        if !t.contains_key(tags::PERSISTENT) {
            items.push(Item::new("volume", id, "detached and not persistent".into()));
        } else if interrupted(&t, "", min_age) {
            // A launch that made the volume did not complete: it holds nothing of anyone's.
            items.push(Item::new("volume", id, why_interrupted(&t, "new persistent volume", min_age)));
        } else if a.persistent_volumes {
            // Data someone kept on purpose: only when asked for.
            let whose = t.get(tags::NAME).cloned().unwrap_or_default();
            items.push(Item::new("volume", id, format!("persistent volume {whose}, detached (--persistent-volumes)")));
        }
    }
    Ok(items)
}

/// Deletes the agent queues of namespace `ns` whose boxes are gone: an elastic cluster's leader
/// terminates workers and cannot delete their queues (it may use only its own). Returns how
/// many.
pub(crate) async fn delete_orphan_queues(ctx: &Ctx, ns: &Namespace) -> Result<usize> {
    let cloud = ctx.cloud().await?;
    let boxes = cloud.list_boxes(ns.as_str(), None).await?;
    let items = queue_leftovers(cloud, ns, &boxes, &[]).await?;
    for item in &items {
        cloud.delete_queue(&item.id).await?;
    }
    if !items.is_empty() {
        cloud.prune_agent_subscriptions().await?;
    }
    Ok(items.len())
}

/// Agent queues of boxes that are gone, or that this cleanup terminates (their queues go in the
/// same run).
async fn queue_leftovers(
    cloud: &Cloud,
    ns: &Namespace,
    boxes: &[BoxInfo],
    terminating: &[String],
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let alive_ids: BTreeSet<&str> =
        boxes.iter().map(|b| b.instance_id.as_str()).filter(|id| !terminating.iter().any(|t| t == id)).collect();
    let prefix = ns.agent_queue_prefix();
    for (name, url) in cloud.agent_queues(&prefix).await? {
        let id = name.trim_start_matches(prefix.as_str());
        if !alive_ids.contains(id) {
            let why = if boxes.iter().any(|b| b.instance_id == id) {
                format!("agent queue of {id}, which is terminated here")
            } else {
                format!("agent queue of {id}, which no longer exists")
            };
            items.push(Item::new("queue", url, why));
        }
    }
    Ok(items)
}

async fn report_and_delete<F, Fut>(ctx: &Ctx, c: &ConfirmArgs, items: Vec<Item>, delete: F) -> Result<ExitCode>
where
    F: Fn(Item) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let ns = ctx.namespace().await?;
    let scope = if c.recursive { format!("namespace {ns} and below") } else { format!("namespace {ns}") };
    let (header, rows): (&[&str], Vec<Vec<String>>) = if c.recursive {
        (
            &["NAMESPACE", "KIND", "ID", "WHY"],
            items.iter().map(|i| vec![i.namespace.clone(), i.kind.to_owned(), i.id.clone(), i.why.clone()]).collect(),
        )
    } else {
        (&["KIND", "ID", "WHY"], items.iter().map(|i| vec![i.kind.to_owned(), i.id.clone(), i.why.clone()]).collect())
    };
    if items.is_empty() {
        ctx.out.note(format!("nothing to clean up in {scope}"));
        if ctx.out.format == crate::cli::OutputFormat::Json {
            ctx.out.table(header, &rows, &items);
        }
        return Ok(ExitCode::SUCCESS);
    }
    ctx.out.table(header, &rows, &items);
    if c.dry_run {
        ctx.out.note("dry run: nothing deleted");
        return Ok(ExitCode::SUCCESS);
    }
    if !confirm(&format!("delete these {} resource(s) of {scope}?", items.len()), c.yes)? {
        ctx.out.note("nothing deleted");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failures = 0;
    for item in items {
        let label = format!("{} {}", item.kind, item.id);
        match delete(item).await {
            Ok(()) => ctx.out.note(format!("deleted {label}")),
            Err(e) => {
                failures += 1;
                tracing::error!("could not delete {label}: {e:#}");
            }
        }
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn reset_security(ctx: &Ctx, a: ConfirmArgs) -> Result<ExitCode> {
    let cloud = ctx.cloud().await?;
    let mut items = Vec::new();
    for ns in scope(ctx, a.recursive).await? {
        let mut found = security(ctx, &ns).await?;
        for i in &mut found {
            i.namespace = ns.to_string();
        }
        items.extend(found);
    }
    report_and_delete(ctx, &a, items, |item| async move {
        match item.kind {
            "instance-profile" => cloud.delete_instance_profile(&item.id).await.map_err(Into::into),
            "iam-role" => cloud.delete_role(&item.id).await.map_err(Into::into),
            "security-group" => cloud.delete_security_group(&item.id).await.map_err(Into::into),
            _ => Ok(()),
        }
    })
    .await
}

/// The security groups and IAM roles/profiles of namespace `ns` alone that no box uses.
async fn security(ctx: &Ctx, ns: &Namespace) -> Result<Vec<Item>> {
    let cloud = ctx.cloud().await?;
    let mut items = Vec::new();
    let (roles, profiles) = cloud.iam_in_path(&ns.iam_path()).await?;
    // Boxes (running or stopped) still need their profiles; IAM is global, but only this
    // region's boxes can be seen here.
    let in_use: BTreeSet<String> =
        cloud.list_boxes(ns.as_str(), None).await?.into_iter().filter_map(|b| b.instance_profile).collect();
    for p in profiles {
        if in_use.contains(&p) {
            tracing::warn!("keeping instance profile {p}: boxes in this region still use it");
            continue;
        }
        items.push(Item::new("instance-profile", p, format!("IAM path {}", ns.iam_path())));
    }
    for r in roles {
        if in_use.contains(&r) {
            continue;
        }
        items.push(Item::new("iam-role", r, format!("IAM path {}", ns.iam_path())));
    }
    let groups = cloud.namespace_security_groups(ns.as_str()).await?;
    let ids: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    let used = cloud.security_groups_in_use(&ids).await?;
    for (id, name, _) in groups {
        if used.contains(&id) {
            tracing::warn!("keeping security group {id} ({name}): boxes still use it");
        } else {
            items.push(Item::new("security-group", id, name));
        }
    }
    Ok(items)
}
