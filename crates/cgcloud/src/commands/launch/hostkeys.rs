//! SSH to a new box: waiting for it with its host key verified, replacing the host key that
//! travelled in the user data, and registering the key pairs the box makes.

use super::*;

/// Registers the key pairs the role's boxes make (`[[key_pairs]]`): each public key is read
/// from the box (which may still be making it), checked to be one OpenSSH public key, and
/// imported as `NAME@<role's AWS name>` unless that key pair already holds it; a different key
/// under that name is replaced, since the box's key is the authority. Agents are notified.
pub(crate) async fn publish_key_pairs(
    ctx: &Ctx,
    cloud: &Cloud,
    target: &cgcloud_remote::SshTarget,
    p: &Prepared,
) -> Result<()> {
    let mut changed = false;
    for kp in &p.role.key_pairs {
        let name = box_key_pair_name(&p.ns, &p.role.name, &kp.name)?;
        let path = &kp.public_key;
        let script =
            format!("for i in $(seq 1 240); do sudo -n test -s {path} && break; sleep 0.5; done; sudo -n cat {path}");
        let out = target.run_script(&script).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "box {} has no public key {path} for key pair {name}: {}",
                target.address,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // What a box says is checked like any other input: one key line of a known type.
        let key = cgcloud_core::sshkey::PublicKey::parse_file(&text)
            .with_context(|| format!("{path} on the box is not one OpenSSH public key"))?;
        let same = match cloud.key_pair(&name).await? {
            Some(existing) => {
                key.matches_fingerprint(&existing.fingerprint)
                    || existing
                        .public_key
                        .as_deref()
                        .and_then(|k| cgcloud_core::sshkey::PublicKey::parse_line(k).ok())
                        .is_some_and(|k| k.blob == key.blob)
            }
            None => false,
        };
        if same {
            continue;
        }
        if cloud.key_pair(&name).await?.is_some() {
            cloud.delete_key_pair(&name).await?;
        }
        let mut t = Tags::new();
        t.insert(tags::NAMESPACE.into(), p.ns.to_string());
        t.insert(tags::ROLE.into(), p.role.name.clone());
        cloud.import_key_pair(&name, &key.to_openssh(), &t).await?;
        ctx.out.note(format!("registered key pair {name} ({}) from {path}", key.ec2_fingerprint()));
        changed = true;
    }
    if changed {
        crate::commands::keys::notify(ctx).await;
    }
    Ok(())
}

/// The EC2 key pair a role's boxes register for key `key` (`[[key_pairs]]`), e.g.
/// `jenkins@hannes_jenkins-master`.
pub(crate) fn box_key_pair_name(ns: &Namespace, role: &str, key: &str) -> Result<String> {
    let name = format!("{key}@{}", ns.to_aws_name(role)?);
    cgcloud_core::limits::check_key_pair(&name).map_err(anyhow::Error::msg)?;
    Ok(name)
}

/// Waits for SSH on a fresh box and returns the refreshed box and its target.
pub(crate) async fn wait_ssh(ctx: &Ctx, b: &BoxInfo, a: &LaunchArgs) -> Result<cgcloud_remote::SshTarget> {
    let mut target = ctx.ssh_target(b, None, a.ssh_address).await?;
    // Provisioning always runs as the admin user.
    target.user = b.admin_user.clone().unwrap_or(target.user);
    let progress = ctx.out.progress(format!("waiting for SSH on {} ({})", b.instance_id, target.address));
    let cloud = ctx.cloud().await?;
    // A box that dies while we wait (e.g. its image cannot boot) fails the wait at once.
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let states = cloud.instance_states(std::slice::from_ref(&b.instance_id)).await?;
            if let Some((state, reason)) = states.get(&b.instance_id) {
                if state != "running" {
                    return Err::<(), _>(anyhow!(
                        "box {} is {state} instead of running{}",
                        b.instance_id,
                        reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
            }
        }
    };
    tokio::select! {
        r = target.wait_ready(Duration::from_secs(a.ssh_timeout)) => match r {
            Err(e @ cgcloud_remote::RemoteError::KeysRefused { .. }) => {
                let names: Vec<String> = b
                    .tags
                    .get(tags::KEYPAIRS)
                    .map(|k| k.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default();
                let why = crate::commands::doctor::explain_refused_keys(ctx, &names).await;
                bail!("{e}\n{why}\nload the matching private key into ssh-agent or name it with CGCLOUD_SSH_OPTS=\"-i PATH\", or launch with -k naming a key pair of yours (`cgcloud doctor` checks the default one)");
            }
            r => r?,
        },
        e = watch => e?,
    }
    progress.finish(format!("SSH is up on {}", b.instance_id));
    Ok(target)
}

/// Replaces the host key a box got in its user data, which stays readable there (through IMDS,
/// by any local user) for the box's life, with one the box generates and only root can read.
/// The first connection was verified with the old key; the new public key comes back over it,
/// is recorded (tag and known_hosts), and a fresh connection must verify with it.
pub(crate) async fn rotate_host_key(
    ctx: &Ctx,
    cloud: &Cloud,
    target: &cgcloud_remote::SshTarget,
    b: &BoxInfo,
) -> Result<()> {
    const KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
    let script = format!(
        "set -e\n\
         sudo rm -f {KEY}.cgcloud-new {KEY}.cgcloud-new.pub\n\
         sudo ssh-keygen -q -t ed25519 -N '' -C '' -f {KEY}.cgcloud-new\n\
         sudo mv -f {KEY}.cgcloud-new.pub {KEY}.pub\n\
         sudo mv -f {KEY}.cgcloud-new {KEY}\n\
         for unit in ssh.service sshd.service; do\n\
           if systemctl is-active --quiet $unit; then sudo systemctl reload $unit; fi\n\
         done\n\
         cat {KEY}.pub\n"
    );
    let out = target.run_script(&script).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key: Vec<&str> = text.split_whitespace().take(2).collect();
    if !out.status.success() || key.len() != 2 || key[0] != "ssh-ed25519" {
        bail!(
            "could not replace the SSH host key of box {} from its user data: {}",
            b.instance_id,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let key = key.join(" ");
    let mut t = Tags::new();
    t.insert(tags::HOST_KEY.into(), key.clone());
    cloud.create_tags(std::slice::from_ref(&b.instance_id), &t).await?;
    cgcloud_remote::hostkey::record(&ctx.settings.known_hosts(), &b.instance_id, &key)?;
    target.close().await;
    target
        .wait_ready(Duration::from_secs(60))
        .await
        .with_context(|| format!("box {} does not present its new SSH host key", b.instance_id))?;
    tracing::debug!("box {} has its own SSH host key now", b.instance_id);
    Ok(())
}
