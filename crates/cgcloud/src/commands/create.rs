//! `create` (from the role's base image, then provisioning), `recreate` (from a baked image)
//! and `provision` (re-run provisioning on a box), on the launch engine (`commands::launch`).

use super::boxes::{print_box, wait_for_state};
use super::images::{bake_image, pick_image};
use super::launch::*;
use super::provision::provision;
use crate::cli::{CreateArgs, LaunchArgs, RecreateArgs, SelectArgs, SpotArgs};
use crate::context::Ctx;
use anyhow::{bail, Context as _, Result};
use cgcloud_aws::Cloud;
use cgcloud_core::model::{BoxInfo, ImageInfo};
use cgcloud_core::tags::{self, Tags};
use cgcloud_roles::compile::compile;
use std::process::ExitCode;
use std::time::Duration;

/// Creates the security group and IAM profile (if needed) and launches one box, on the spot
/// market if `spot` says so, and attaches its persistent volume (made first if new), if any.
async fn launch(
    ctx: &Ctx,
    p: &Prepared,
    txn: &Txn,
    spot: &SpotArgs,
    volume: Option<&VolumePlan>,
) -> Result<(BoxInfo, Option<String>)> {
    let ids = launch_by_policy(ctx, p, txn, &Group::single(p), 1, 1, spot, "box", |_, _| {}).await?;
    let cloud = ctx.cloud().await?;
    wait_for_state(ctx, cloud, &ids, "running", &format!("box {}", ids.join(", "))).await?;
    let b = cloud.boxes_by_id(&ids).await?.into_iter().next().context("RunInstances returned no instance")?;
    let volume_id = match volume {
        Some(v) => Some(attach_volume(ctx, cloud, txn, p, v, &b).await?),
        None => None,
    };
    Ok((b, volume_id))
}

/// The spot options of a single box, checked (further types exist) and applied (the zone
/// with --spot-auto-zone) before anything is launched.
async fn prepare_spot(ctx: &Ctx, p: &mut Prepared, a: &LaunchArgs) -> Result<SpotArgs> {
    let spot = a.spot.clone();
    spot_zone(ctx, p, &spot).await?;
    check_spot_types(ctx, p, &spot).await?;
    if spot.spot_bid.is_some() && p.autostop.is_some_and(|(_, terminate)| !terminate) {
        ctx.out.note("note: a spot box cannot stop: autostop terminates it (its persistent volume is kept)");
    }
    Ok(spot)
}

pub async fn create(ctx: &Ctx, a: CreateArgs) -> Result<ExitCode> {
    let role = ctx.registry().await?.role(&a.role)?;
    // Without -Q the launch waits for SSH and provisions with the agent.
    let needs = LocalNeeds { ssh: !a.quick, agent: !a.quick, rsync: false };
    if a.create_image && a.launch.spot.spot_bid.is_some() {
        bail!("-I bakes the box after stopping it, and a spot box cannot stop: bake from an on-demand box (leave out --spot-bid)");
    }
    let mut prepared = prepare(ctx, role, a.os.as_deref(), &a.launch, None, a.boot_image.as_deref(), needs).await?;
    let cloud = ctx.cloud().await?;
    let spot = prepare_spot(ctx, &mut prepared, &a.launch).await?;
    let volume = plan_volume(ctx, cloud, &mut prepared, &a.launch, false).await?;
    if a.quick && !prepared.role.key_pairs.is_empty() {
        tracing::warn!(
            "-Q: role '{}' registers key pairs its boxes make once they are provisioned; this box is not",
            prepared.role.name
        );
    }
    // Compile before launching anything, so a broken role costs no instance.
    let plan = compile(&prepared.role, &prepared.os, &prepared.options)?;
    let txn = Txn::new();
    let work = async {
        let (b, volume_id) = launch(ctx, &prepared, &txn, &spot, volume.as_ref()).await?;
        if a.quick {
            finish_launch(cloud, &txn, std::slice::from_ref(&b.instance_id)).await?;
            return Ok((b, None));
        }
        let target = wait_ssh(ctx, &b, &a.launch).await?;
        if let (Some(id), Some(v)) = (&volume_id, &volume) {
            // Mounted before the plan runs, so that the role's steps can keep data there.
            super::provision::mount_volume(ctx, &target, id, &v.name).await?;
        }
        // The agent's steps depend on the launch, not the role: they are not in the plan hash.
        let mut full = plan.clone();
        full.steps.extend(agent_steps(ctx, &prepared, &cloud.region));
        provision(ctx, &target, &b, &full, a.upgrade).await?;
        rotate_host_key(ctx, cloud, &target, &b).await?;
        record_plan(cloud, &b.instance_id, &plan).await?;
        publish_key_pairs(ctx, cloud, &target, &prepared).await?;
        finish_launch(cloud, &txn, std::slice::from_ref(&b.instance_id)).await?;
        target.close().await;
        let baked = if a.create_image {
            let image = bake_image(ctx, cloud, &b, &prepared.ns, !a.launch.terminate).await?;
            ctx.out.note(format!("baked image {image}"));
            Some(image)
        } else {
            None
        };
        Ok((b, baked))
    };
    let (b, baked) = transaction(ctx, &txn, a.launch.never_terminate, work).await?;
    finish(ctx, cloud, &b, &a.launch, Some(baked)).await
}

/// Prints the new box (`create` also says which image it baked: `baked`, None for
/// `recreate`), after terminating it with `-T`.
async fn finish(
    ctx: &Ctx,
    cloud: &Cloud,
    b: &BoxInfo,
    a: &LaunchArgs,
    baked: Option<Option<String>>,
) -> Result<ExitCode> {
    if a.terminate {
        cloud.terminate(std::slice::from_ref(&b.instance_id)).await?;
        super::boxes::forget(ctx, std::slice::from_ref(&b.instance_id)).await?;
        ctx.out.note(format!("terminated {} (--terminate)", b.instance_id));
    }
    let fresh =
        cloud.boxes_by_id(std::slice::from_ref(&b.instance_id)).await?.into_iter().next().unwrap_or_else(|| b.clone());
    if a.list {
        super::boxes::print_rows(&ctx.out, std::slice::from_ref(&fresh));
    } else if let Some(baked) = baked {
        let mut v = serde_json::to_value(&fresh)?;
        v["baked_image"] = serde_json::json!(baked);
        ctx.out.record(&v, || match &baked {
            Some(id) => format!("{}\n{:<18}{id}", super::boxes::box_text(&fresh), "baked_image"),
            None => super::boxes::box_text(&fresh),
        });
    } else {
        print_box(&ctx.out, &fresh);
    }
    if a.terminate {
        return Ok(ExitCode::SUCCESS);
    }
    let ns = ctx.namespace().await?;
    let mut hint = format!("run 'cgcloud ssh {}", fresh.role);
    if ns.as_str() != ctx.settings.namespace && ctx.settings.namespace != cgcloud_core::namespace::DEFAULT_NAMESPACE {
        hint.push_str(&format!(" -n {ns}"));
    }
    hint.push_str(&format!(" -I {}' to log in", fresh.instance_id));
    ctx.out.note(hint);
    Ok(ExitCode::SUCCESS)
}

pub async fn recreate(ctx: &Ctx, a: RecreateArgs) -> Result<ExitCode> {
    let role = ctx.registry().await?.role(&a.role)?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    let images = cloud.list_images(ns.as_str(), Some(&role.name)).await?;
    let image = pick_image(&role.name, ns.as_str(), images, &a.boot_image)?;
    let needs = LocalNeeds { ssh: !a.quick, ..Default::default() };
    let mut prepared =
        prepare(ctx, role, image.tags.get(tags::OS).map(String::as_str), &a.launch, Some(&image), None, needs).await?;
    let spot = prepare_spot(ctx, &mut prepared, &a.launch).await?;
    let volume = plan_volume(ctx, cloud, &mut prepared, &a.launch, true).await?;
    if volume.is_some() && !a.quick {
        // The volume is formatted (if new) and mounted with the agent, uploaded if it differs.
        check_local_needs(ctx, LocalNeeds { agent: true, ..Default::default() })?;
    }
    warn_if_role_changed(&prepared, &image);
    let txn = Txn::new();
    let work = async {
        let (b, volume_id) = launch(ctx, &prepared, &txn, &spot, volume.as_ref()).await?;
        if !a.quick {
            let target = wait_ssh(ctx, &b, &a.launch).await?;
            if let (Some(id), Some(v)) = (&volume_id, &volume) {
                super::provision::mount_volume(ctx, &target, id, &v.name).await?;
            }
            rotate_host_key(ctx, cloud, &target, &b).await?;
            publish_key_pairs(ctx, cloud, &target, &prepared).await?;
            target.close().await;
        }
        finish_launch(cloud, &txn, std::slice::from_ref(&b.instance_id)).await?;
        Ok(b)
    };
    let b = transaction(ctx, &txn, a.launch.never_terminate, work).await?;
    finish(ctx, cloud, &b, &a.launch, None).await
}

pub async fn provision_existing(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    let role = ctx.registry().await?.box_role(&b.role)?;
    let os_id = b.tags.get(tags::OS).cloned().unwrap_or_default();
    let os = role.os.iter().find(|o| o.id == os_id).unwrap_or(&role.os[0]).clone();
    let options = options_from_tags(&role, b.options.clone(), &format!("box {}", b.instance_id))?;
    let plan = compile(&role, &os, &options)?;
    let mut target = ctx.ssh_target(&b, None, None).await?;
    target.user = b.admin_user.clone().unwrap_or(target.user);
    target.wait_ready(Duration::from_secs(120)).await?;
    let summary = provision(ctx, &target, &b, &plan, false).await?;
    record_plan(ctx.cloud().await?, &b.instance_id, &plan).await?;
    target.close().await;
    ctx.out.record(&summary, || {
        format!("{}\t{} changed\t{} unchanged", summary.instance_id, summary.changed, summary.unchanged)
    });
    Ok(ExitCode::SUCCESS)
}

/// Records which plan a box was provisioned with (images inherit it).
async fn record_plan(cloud: &Cloud, id: &str, plan: &cgcloud_core::plan::Plan) -> Result<()> {
    let mut t = Tags::new();
    t.insert(tags::ROLE_HASH.into(), plan.hash());
    cloud.create_tags(&[id.to_owned()], &t).await?;
    Ok(())
}

/// Warns when the role's plan today differs from the one the image was baked with.
fn warn_if_role_changed(p: &Prepared, image: &ImageInfo) {
    let Some(baked) = &image.role_hash else { return };
    match compile(&p.role, &p.os, &p.options) {
        Ok(plan) if &plan.hash() != baked => tracing::warn!(
            "role '{}' changed since image {} was baked (plan {} then, {} now); run `cgcloud create -I {}` to bake a current image",
            p.role.name,
            image.image_id,
            baked,
            plan.hash(),
            p.role.name
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot compile role '{}' to compare it with image {}: {e}", p.role.name, image.image_id),
    }
}
