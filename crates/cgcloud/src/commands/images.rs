//! Images: `image` (bake a stopped box), `list-images`, `delete-image`, and the helpers that
//! `create -I` and `recreate` share.

use super::boxes::wait_for_state;
use crate::cli::{DeleteImageArgs, SelectArgs};
use crate::context::Ctx;
use anyhow::{bail, Context as _, Result};
use cgcloud_aws::Cloud;
use cgcloud_core::model::{BoxInfo, ImageInfo};
use cgcloud_core::tags::{self, Tags};
use cgcloud_core::Namespace;
use std::process::ExitCode;
use std::time::Duration;

/// `YYYY-MM-DD_HH-MM-SS` in UTC, which sorts chronologically in image names.
fn timestamp() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.trim_end_matches('Z').replace('T', "_").replace(':', "-")
}

/// True for `ami-` followed by 8 or 17 hex digits.
pub fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|h| (h.len() == 8 || h.len() == 17) && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Picks an image of `role` by ordinal (oldest 0, newest -1) or AMI id.
pub fn pick_image(role: &str, namespace: &str, images: Vec<ImageInfo>, spec: &str) -> Result<ImageInfo> {
    if images.is_empty() {
        bail!("role '{role}' has no images in namespace '{namespace}'; bake one with `cgcloud create -I {role}` or `cgcloud image {role}`");
    }
    if is_ami_id(spec) {
        let id = spec.to_lowercase();
        return images
            .into_iter()
            .find(|i| i.image_id == id)
            .with_context(|| format!("image {id} is not an image of role '{role}' in namespace '{namespace}'"));
    }
    let ordinal: i64 = spec.parse().with_context(|| format!("'{spec}' is neither an image ordinal nor an AMI id"))?;
    let count = images.len() as i64;
    let index = if ordinal < 0 { count + ordinal } else { ordinal };
    if !(0..count).contains(&index) {
        bail!("image ordinal {ordinal} is out of range: role '{role}' has {count} image(s)");
    }
    images.into_iter().nth(index as usize).context("image index in range")
}

/// Waits until an image is available.
async fn wait_image(ctx: &Ctx, cloud: &Cloud, image_id: &str) -> Result<()> {
    let mut progress = ctx.out.progress(format!("image {image_id}: waiting"));
    let mut last = String::new();
    loop {
        let state = cloud.image_state(image_id).await?;
        let shown = state.clone().unwrap_or_else(|| "not listed yet".into());
        if shown != last {
            progress.set_message(format!("image {image_id}: {shown}"));
            last = shown;
        }
        match state.as_deref() {
            Some("available") => break,
            Some("failed") | Some("invalid") | Some("error") => bail!("image {image_id} failed"),
            None if progress.elapsed() > Duration::from_secs(30) => bail!("image {image_id} disappeared"),
            _ => {}
        }
        if progress.elapsed() > Duration::from_secs(3600) {
            bail!("timed out waiting for image {image_id}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    progress.finish(format!("image {image_id} is available"));
    Ok(())
}

/// Bakes an image of `b`, stopping it first if needed and starting it again if `restart`.
pub async fn bake_image(ctx: &Ctx, cloud: &Cloud, b: &BoxInfo, ns: &Namespace, restart: bool) -> Result<String> {
    // Before the box is stopped: a name EC2 would refuse must not cost a stop.
    image_name(ns, &b.role)?;
    let id = std::slice::from_ref(&b.instance_id);
    let states = cloud.instance_states(id).await?;
    let state = states.get(&b.instance_id).map(|s| s.0.clone()).unwrap_or_default();
    let was_running = state != "stopped";
    if was_running {
        cloud.stop(id).await?;
        wait_for_state(ctx, cloud, id, "stopped", &format!("box {}", b.instance_id)).await?;
    }
    let image_id = create_image(ctx, cloud, b, ns).await?;
    if restart && was_running {
        cloud.start(id).await?;
        wait_for_state(ctx, cloud, id, "running", &format!("box {}", b.instance_id)).await?;
    }
    Ok(image_id)
}

/// The name of a new image of `role`'s box, within EC2's limit on image names.
fn image_name(ns: &Namespace, role: &str) -> Result<String> {
    let name = ns.to_aws_name(&format!("{role}_{}", timestamp()))?;
    let max = cgcloud_core::limits::IMAGE_NAME;
    if name.chars().count() > max {
        bail!(
            "an image of role '{role}' in namespace '{ns}' would be named '{name}' ({} characters; AWS allows {max}): use a shorter namespace",
            name.chars().count()
        );
    }
    Ok(name)
}

async fn create_image(ctx: &Ctx, cloud: &Cloud, b: &BoxInfo, ns: &Namespace) -> Result<String> {
    // The tags may have changed since `b` was read (e.g. the plan hash after provisioning).
    let fresh = cloud.boxes_by_id(std::slice::from_ref(&b.instance_id)).await?;
    let b = &fresh.into_iter().next().unwrap_or_else(|| b.clone());
    let name = image_name(ns, &b.role)?;
    let mut t = Tags::new();
    t.insert(tags::NAMESPACE.into(), ns.to_string());
    t.insert(tags::ROLE.into(), b.role.clone());
    t.insert(tags::GENERATION.into(), (b.generation + 1).to_string());
    for key in [tags::ROLE_HASH, tags::ADMIN_USER, tags::OS] {
        if let Some(v) = b.tags.get(key) {
            t.insert(key.into(), v.clone());
        }
    }
    // Only options declared as inherited carry over to boxes recreated from the image.
    let role = ctx.registry().await?.box_role(&b.role).ok();
    for (k, v) in &b.options {
        if role.as_ref().is_none_or(|r| r.options.get(k).is_some_and(|o| o.inherited)) {
            t.insert(tags::option_tag(k), v.clone());
        }
    }
    let description = format!("cgcloud image of role {} in namespace {}, from {}", b.role, ns, b.instance_id);
    // The persistent volume holds the box's data, not its software: it stays out of the image.
    let exclude: Vec<String> = if b.tags.contains_key(tags::PERSISTENT_VOLUME) {
        vec![super::launch::PERSISTENT_DEVICE.to_owned()]
    } else {
        Vec::new()
    };
    let image_id = cloud.create_image(&b.instance_id, &name, &description, &t, &exclude).await?;
    wait_image(ctx, cloud, &image_id).await?;
    let mut snapshot_tags = Tags::new();
    snapshot_tags.insert(tags::NAMESPACE.into(), ns.to_string());
    snapshot_tags.insert(tags::ROLE.into(), b.role.clone());
    cloud.tag_image_snapshots(&image_id, &snapshot_tags).await?;
    Ok(image_id)
}

pub async fn image(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    if b.state != "stopped" {
        bail!(
            "box {} is {}; stop it first (`cgcloud stop {} -I {}`) so the image is consistent",
            b.instance_id,
            b.state,
            b.role,
            b.instance_id
        );
    }
    let ns = ctx.namespace().await?;
    let cloud = ctx.cloud().await?;
    let image_id = create_image(ctx, cloud, &b, ns).await?;
    ctx.out.record(&serde_json::json!({ "image_id": image_id, "instance_id": b.instance_id }), || image_id.clone());
    Ok(ExitCode::SUCCESS)
}

pub async fn list_images(ctx: &Ctx, role: &str) -> Result<ExitCode> {
    ctx.registry().await?.role(role)?;
    let ns = ctx.namespace().await?;
    let images = ctx.cloud().await?.list_images(ns.as_str(), Some(role)).await?;
    let rows: Vec<Vec<String>> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            vec![
                i.to_string(),
                img.image_id.clone(),
                img.state.clone(),
                img.generation.to_string(),
                img.creation_date.clone(),
                img.name.clone(),
            ]
        })
        .collect();
    ctx.out.table(&["ORDINAL", "IMAGE", "STATE", "GENERATION", "CREATED", "NAME"], &rows, &images);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete_image(ctx: &Ctx, a: DeleteImageArgs) -> Result<ExitCode> {
    ctx.registry().await?.role(&a.role)?;
    let ns = ctx.namespace().await?;
    let cloud = ctx.cloud().await?;
    let images = cloud.list_images(ns.as_str(), Some(&a.role)).await?;
    let image = pick_image(&a.role, ns.as_str(), images, &a.image)?;
    cloud.deregister_image(&image.image_id).await?;
    ctx.out.note(format!("deregistered {} ({})", image.image_id, image.name));
    let report = |deleted: &[String], kept: &[String]| {
        let json = serde_json::json!({
            "image_id": image.image_id, "name": image.name, "role": image.role,
            "snapshots_deleted": deleted, "snapshots_kept": kept,
        });
        ctx.out.record(&json, || image.image_id.clone());
    };
    if a.quick || a.keep_snapshot {
        if !image.snapshot_ids.is_empty() {
            ctx.out.note(format!(
                "kept snapshot(s) {}; `cgcloud cleanup` removes them later",
                image.snapshot_ids.join(", ")
            ));
        }
        report(&[], &image.snapshot_ids);
        return Ok(ExitCode::SUCCESS);
    }
    let progress = ctx.out.progress(format!("waiting for {} to go", image.image_id));
    while cloud.image_state(&image.image_id).await?.is_some_and(|s| s != "deregistered") {
        if progress.elapsed() > Duration::from_secs(600) {
            bail!("image {} is still registered after 10 minutes", image.image_id);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    progress.finish(format!("{} is gone", image.image_id));
    for snap in &image.snapshot_ids {
        delete_snapshot_when_free(cloud, snap).await?;
        ctx.out.note(format!("deleted snapshot {snap}"));
    }
    report(&image.snapshot_ids, &[]);
    Ok(ExitCode::SUCCESS)
}

/// Deletes a snapshot, retrying while EC2 still considers it used by the image.
pub async fn delete_snapshot_when_free(cloud: &Cloud, snapshot: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        match cloud.delete_snapshot(snapshot).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => return Ok(()),
            Err(e) if e.code() == Some("InvalidSnapshot.InUse") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, date: &str) -> ImageInfo {
        ImageInfo {
            image_id: id.into(),
            name: format!("n-{id}"),
            role: "r".into(),
            state: "available".into(),
            creation_date: date.into(),
            generation: 1,
            role_hash: None,
            snapshot_ids: vec![],
            source_instance: None,
            tags: Tags::new(),
        }
    }

    #[test]
    fn ami_ids() {
        assert!(is_ami_id("ami-12c6146b"));
        assert!(is_ami_id("ami-0123456789abcdef0"));
        assert!(!is_ami_id("ami-123"));
        assert!(!is_ami_id("i-0123456789abcdef0"));
    }

    #[test]
    fn picking_images() {
        let images = || vec![img("ami-00000001", "1"), img("ami-00000002", "2")];
        assert_eq!(pick_image("r", "/n/", images(), "-1").unwrap().image_id, "ami-00000002");
        assert_eq!(pick_image("r", "/n/", images(), "0").unwrap().image_id, "ami-00000001");
        assert_eq!(pick_image("r", "/n/", images(), "ami-00000001").unwrap().image_id, "ami-00000001");
        assert!(pick_image("r", "/n/", images(), "ami-0000000f")
            .unwrap_err()
            .to_string()
            .contains("not an image of role"));
        assert!(pick_image("r", "/n/", images(), "5").unwrap_err().to_string().contains("out of range"));
        assert!(pick_image("r", "/n/", images(), "x").is_err());
        assert!(pick_image("r", "/n/", vec![], "-1").unwrap_err().to_string().contains("has no images"));
    }

    #[test]
    fn timestamps_sort() {
        let t = timestamp();
        assert_eq!(t.len(), 19, "{t}");
        assert!(!t.contains(':'));
    }
}
