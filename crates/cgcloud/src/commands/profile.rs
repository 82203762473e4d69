//! update-instance-profile: brings a running box's permissions up to date with its role (after
//! the role's `[[iam]]` or `[[ports]]` changed, or cgcloud's agent needs something new), as the
//! original's command of that name did.

use super::launch::ensure_role_security;
use crate::cli::SelectArgs;
use crate::context::Ctx;
use anyhow::{Context as _, Result};
use cgcloud_core::tags;
use std::process::ExitCode;

#[derive(Debug, serde::Serialize)]
struct Updated {
    instance_id: String,
    role: String,
    /// The role's instance profile now, None when its boxes need no permissions.
    instance_profile: Option<String>,
    /// Whether the box's profile association changed (it had none, another one, or one it
    /// no longer needs).
    association_changed: bool,
    security_group: String,
}

pub async fn update(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    let role = ctx.registry().await?.box_role(&b.role)?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    let vpc = cloud
        .describe_instances(std::slice::from_ref(&b.instance_id))
        .await?
        .first()
        .and_then(|i| i.vpc_id.clone())
        .with_context(|| format!("box {} has no VPC (terminated?)", b.instance_id))?;
    let agent = b.tags.get(tags::AGENT).is_some_and(|v| v == "true");
    // The policy, the profile and the group's rules are the role's, shared by all its boxes in
    // the namespace; only the association is this box's.
    let security = ensure_role_security(cloud, &ns, &role, &vpc, agent, None).await?;
    let changed = cloud.set_instance_profile(&b.instance_id, security.profile.as_deref()).await?;
    let out = Updated {
        instance_id: b.instance_id.clone(),
        role: role.name.clone(),
        instance_profile: security.profile.clone(),
        association_changed: changed,
        security_group: security.group_id.clone(),
    };
    ctx.out.record(&out, || {
        format!(
            "{}\tprofile {}{}\tsecurity group {}",
            out.instance_id,
            out.instance_profile.as_deref().unwrap_or("(none: the role needs no permissions)"),
            if out.association_changed { " (changed)" } else { "" },
            out.security_group
        )
    });
    ctx.out.note(format!(
        "the IAM policy and the security group's rules of role '{}' are up to date for all its boxes in namespace '{ns}'",
        role.name
    ));
    Ok(ExitCode::SUCCESS)
}
