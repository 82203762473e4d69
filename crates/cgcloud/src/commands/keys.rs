//! `register-key`: import an OpenSSH public key as an EC2 key pair.

use crate::cli::{DeleteKeyArgs, RegisterKeyArgs};
use crate::context::Ctx;
use anyhow::{bail, Context as _, Result};
use cgcloud_core::sshkey::PublicKey;
use cgcloud_core::tags::{self, Tags};
use std::process::ExitCode;

pub async fn register_key(ctx: &Ctx, a: RegisterKeyArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&a.key_file)
        .with_context(|| format!("cannot read key file {}", a.key_file.display()))?;
    let key =
        PublicKey::parse_file(&text).with_context(|| format!("{} is not a usable public key", a.key_file.display()))?;
    let name = ctx.resolve_keypair(a.keypair.as_deref().unwrap_or(cgcloud_core::namespace::ME)).await?;
    cgcloud_core::limits::check_key_pair(&name).map_err(anyhow::Error::msg)?;
    let cloud = ctx.cloud().await?;
    let report = |fingerprint: &str, action: &str| {
        let json = serde_json::json!({
            "key_pair": name, "key_type": key.key_type, "fingerprint": fingerprint, "action": action,
        });
        ctx.out.record(&json, || format!("{name}\t{}\t{fingerprint}\t{action}", key.key_type));
    };
    let me = ctx.me().await.ok().map(str::to_owned);
    let action = match cloud.key_pair(&name).await? {
        None if a.force => "replaced",
        None => "imported",
        Some(existing) => {
            let same = key.matches_fingerprint(&existing.fingerprint)
                || existing
                    .public_key
                    .as_deref()
                    .and_then(|p| PublicKey::parse_line(p).ok())
                    .is_some_and(|p| p.blob == key.blob);
            if same && (me.is_none() || existing.owner == me) {
                report(&existing.fingerprint, "unchanged");
                return Ok(ExitCode::SUCCESS);
            }
            if !same && !a.force {
                bail!(
                    "key pair '{name}' already exists with a different key (fingerprint {}); pass --force to replace it",
                    existing.fingerprint
                );
            }
            cloud.delete_key_pair(&name).await?;
            // The same key without its owner tag (registered before cgcloud tagged owners, or by
            // hand): importing it again tags it, which `@user` patterns need.
            if same {
                "tagged"
            } else {
                "replaced"
            }
        }
    };
    // Tagged with its owner, the caller (see `cgcloud_core::keypairs`).
    let mut t = Tags::new();
    if let Some(me) = me {
        t.insert(tags::OWNER.into(), me);
    }
    let imported = cloud.import_key_pair(&name, format!("{} {}", key.to_openssh(), key.comment).trim_end(), &t).await?;
    if !key.matches_fingerprint(&imported.fingerprint) {
        bail!(
            "EC2 reports fingerprint {} for key pair '{name}', which does not belong to {} (expected {})",
            imported.fingerprint,
            a.key_file.display(),
            key.ec2_fingerprint()
        );
    }
    report(&imported.fingerprint, action);
    notify(ctx).await;
    Ok(ExitCode::SUCCESS)
}

/// Tells the agents on boxes to refresh their keys now (they poll anyway, so a failure here
/// only delays the change).
pub(crate) async fn notify(ctx: &Ctx) {
    if let Ok(cloud) = ctx.cloud().await {
        if let Err(e) = cloud.notify_keys_changed().await {
            tracing::warn!("could not notify the boxes' agents ({e}); they pick the change up at their next refresh");
        }
    }
}

pub async fn delete_key(ctx: &Ctx, a: DeleteKeyArgs) -> Result<ExitCode> {
    let name = ctx.resolve_keypair(&a.keypair).await?;
    let cloud = ctx.cloud().await?;
    if cloud.key_pair(&name).await?.is_none() {
        bail!("key pair '{name}' does not exist in region {}", cloud.region);
    }
    cloud.delete_key_pair(&name).await?;
    ctx.out.record(&serde_json::json!({"key_pair": name, "action": "deleted"}), || format!("{name}\tdeleted"));
    notify(ctx).await;
    Ok(ExitCode::SUCCESS)
}
