//! `register-key`: import an OpenSSH public key as an EC2 key pair.

use crate::cli::RegisterKeyArgs;
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
    let cloud = ctx.cloud().await?;
    let report = |fingerprint: &str, action: &str| {
        let json = serde_json::json!({
            "key_pair": name, "key_type": key.key_type, "fingerprint": fingerprint, "action": action,
        });
        ctx.out.record(&json, || format!("{name}\t{}\t{fingerprint}\t{action}", key.key_type));
    };
    if let Some(existing) = cloud.key_pair(&name).await? {
        let same = key.matches_fingerprint(&existing.fingerprint)
            || existing
                .public_key
                .as_deref()
                .and_then(|p| PublicKey::parse_line(p).ok())
                .is_some_and(|p| p.blob == key.blob);
        if same {
            report(&existing.fingerprint, "unchanged");
            return Ok(ExitCode::SUCCESS);
        }
        if !a.force {
            bail!(
                "key pair '{name}' already exists with a different key (fingerprint {}); pass --force to replace it",
                existing.fingerprint
            );
        }
        cloud.delete_key_pair(&name).await?;
    }
    let mut t = Tags::new();
    if let Ok(me) = ctx.me().await {
        t.insert(tags::OWNER.into(), me.to_owned());
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
    report(&imported.fingerprint, if a.force { "replaced" } else { "imported" });
    Ok(ExitCode::SUCCESS)
}
