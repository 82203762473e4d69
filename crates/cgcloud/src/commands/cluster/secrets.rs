//! Cluster secrets (`[[cluster.secrets]]`): made fresh for each cluster, read back from the
//! leader (and checked for shape) for the workers a grow-cluster adds. Every cluster also gets
//! the cluster key (`cgcloud_core::members::KEY_PATH`), whatever its role declares: the leader
//! MACs the member list it publishes with it, and the workers check it.

use super::*;

/// The cluster key's file, holding `bytes`: root's alone.
fn cluster_key(bytes: &[u8]) -> cgcloud_core::userdata::SecretFile {
    use base64::Engine as _;
    cgcloud_core::userdata::SecretFile {
        path: cgcloud_core::members::KEY_PATH.to_owned(),
        base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        owner: None,
        mode: "0400".to_owned(),
    }
}

/// A new cluster's secrets (`[[cluster.secrets]]`): fresh random bytes, or a fresh SSH key, for
/// each file; and a fresh cluster key.
pub(super) fn new_secrets(decl: &cgcloud_roles::role::ClusterDecl) -> Result<Vec<cgcloud_core::userdata::SecretFile>> {
    use base64::Engine as _;
    use cgcloud_roles::role::SecretKind;
    use rand::RngCore as _;
    let mut key = [0u8; cgcloud_core::members::KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let declared: Result<Vec<_>> = decl
        .secrets
        .iter()
        .map(|s| {
            let bytes = match s.kind {
                SecretKind::Random => {
                    let mut bytes = vec![0u8; s.bytes as usize];
                    rand::rngs::OsRng.fill_bytes(&mut bytes);
                    bytes
                }
                SecretKind::SshKey => cgcloud_remote::hostkey::generate()
                    .with_context(|| format!("cannot make the cluster's SSH key {}", s.path))?
                    .private_openssh
                    .into_bytes(),
            };
            Ok(cgcloud_core::userdata::SecretFile {
                path: s.path.clone(),
                base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                owner: s.owner.clone(),
                mode: s.mode.clone(),
            })
        })
        .collect();
    let mut all = declared?;
    all.push(cluster_key(&key));
    Ok(all)
}

/// Whether `bytes`, read back from a leader, have the shape a secret of `s`'s kind must have.
pub(super) fn secret_shape_ok(s: &cgcloud_roles::role::ClusterSecret, bytes: &[u8]) -> Result<(), String> {
    use cgcloud_roles::role::SecretKind;
    match s.kind {
        SecretKind::Random if bytes.len() != s.bytes as usize => {
            Err(format!("not the {} bytes the role declares (found {})", s.bytes, bytes.len()))
        }
        SecretKind::SshKey
            if !(bytes.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----") && bytes.len() < 16 * 1024) =>
        {
            Err("not an OpenSSH private key".to_owned())
        }
        _ => Ok(()),
    }
}

/// The secrets of a running cluster, read from its leader over SSH, for new workers: the
/// workstation keeps no copy, and no existing node is changed. The cluster key comes with the
/// role's secrets, if the leader has one.
pub(super) async fn cluster_secrets(
    ctx: &Ctx,
    leader: &BoxInfo,
    decl: &cgcloud_roles::role::ClusterDecl,
) -> Result<Vec<cgcloud_core::userdata::SecretFile>> {
    use base64::Engine as _;
    // A role without secrets needs no login to the leader (grow-cluster --skip-ssh-check needs
    // none): its new workers go without the cluster key, and ask EC2 for the members as the
    // nodes of clusters made before there was one do.
    if decl.secrets.is_empty() {
        return Ok(Vec::new());
    }
    let mut target = ctx.ssh_target(leader, None, None).await?;
    target.user = leader.admin_user.clone().unwrap_or(target.user);
    // Paths were checked when the role was loaded: plain characters only. The cluster key comes
    // last, and may be missing (a cluster made before there was one): an empty line then.
    let mut script: String = decl.secrets.iter().map(|s| format!("sudo base64 -w0 {}; echo\n", s.path)).collect();
    script.push_str(&format!("sudo base64 -w0 {} 2>/dev/null || true; echo\n", cgcloud_core::members::KEY_PATH));
    let out = target.run_script(&format!("set -e\n{script}")).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    let key_line = if lines.len() == decl.secrets.len() + 1 { lines.pop() } else { None };
    if !out.status.success() || key_line.is_none() {
        bail!(
            "cannot read the cluster's secrets from its leader {} ({}); new workers need them",
            leader.instance_id,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let key = base64::engine::general_purpose::STANDARD.decode(key_line.unwrap_or_default().trim()).unwrap_or_default();
    let key = match key.len() {
        0 => {
            tracing::info!(
                "the leader {} has no cluster key: its new workers will ask EC2 for the members",
                leader.instance_id
            );
            None
        }
        cgcloud_core::members::KEY_LEN => Some(cluster_key(&key)),
        n => bail!(
            "the leader's {} is not the {} bytes of a cluster key (found {n})",
            cgcloud_core::members::KEY_PATH,
            cgcloud_core::members::KEY_LEN
        ),
    };
    let declared: Result<Vec<_>> = decl
        .secrets
        .iter()
        .zip(lines)
        .map(|(s, b64)| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default();
            if let Err(e) = secret_shape_ok(s, &bytes) {
                bail!("the leader's {} is {e}", s.path);
            }
            Ok(cgcloud_core::userdata::SecretFile {
                path: s.path.clone(),
                base64: b64.trim().to_owned(),
                owner: s.owner.clone(),
                mode: s.mode.clone(),
            })
        })
        .collect();
    let mut all = declared?;
    all.extend(key);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use cgcloud_roles::role::{ClusterDecl, ClusterSecret, SecretKind};

    fn decl() -> ClusterDecl {
        let secret =
            |path: &str, kind| ClusterSecret { path: path.into(), kind, bytes: 64, owner: None, mode: "0400".into() };
        ClusterDecl {
            cluster_type: "c".into(),
            leader: "c-leader".into(),
            worker: "c-worker".into(),
            secrets: vec![secret("/etc/k", SecretKind::Random), secret("/etc/id", SecretKind::SshKey)],
            shared_dir: None,
            scaling: None,
        }
    }

    #[test]
    fn each_cluster_gets_fresh_secrets_of_the_declared_kind() {
        let d = decl();
        let (a, b) = (new_secrets(&d).unwrap(), new_secrets(&d).unwrap());
        let raw = |f: &cgcloud_core::userdata::SecretFile| {
            base64::engine::general_purpose::STANDARD.decode(&f.base64).unwrap()
        };
        for (s, f) in d.secrets.iter().zip(&a) {
            secret_shape_ok(s, &raw(f)).unwrap();
        }
        assert_eq!(raw(&a[0]).len(), 64);
        assert!(String::from_utf8(raw(&a[1])).unwrap().contains("OPENSSH PRIVATE KEY"));
        assert_ne!(a[0].base64, b[0].base64);
        assert_ne!(a[1].base64, b[1].base64);
        // Every cluster's key, whatever the role declares: 32 bytes for root alone.
        let key = a.last().unwrap();
        assert_eq!(
            (key.path.as_str(), key.mode.as_str(), key.owner.as_deref()),
            (cgcloud_core::members::KEY_PATH, "0400", None)
        );
        assert_eq!(raw(key).len(), cgcloud_core::members::KEY_LEN);
        assert_ne!(key.base64, b.last().unwrap().base64);
        assert_eq!(a.len(), d.secrets.len() + 1);
        // What a leader hands back is checked before a new worker gets it.
        assert!(secret_shape_ok(&d.secrets[0], &[0; 63]).unwrap_err().contains("64 bytes"));
        assert!(secret_shape_ok(&d.secrets[1], b"ssh-ed25519 AAAA").unwrap_err().contains("OpenSSH private key"));
    }

    #[test]
    fn a_nodes_failure_text_cannot_drive_the_terminal() {
        assert_eq!(tags::printable("step 'x' failed: \u{1b}]0;pwned\u{7}\r\nok"), "step 'x' failed:  ]0;pwned   ok");
    }
}
