//! SSH host keys that cgcloud generates for boxes, and cgcloud's own known_hosts file.

use crate::RemoteError;
use std::path::Path;

pub use cgcloud_core::userdata::HostKey;

/// Generates an ed25519 host key with `ssh-keygen`.
pub fn generate() -> Result<HostKey, RemoteError> {
    let dir = tempfile::tempdir().map_err(|source| RemoteError::Io { path: "temporary directory".into(), source })?;
    let path = dir.path().join("host_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cgcloud-host", "-f"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|source| RemoteError::Spawn { program: "ssh-keygen".into(), source })?;
    if !status.success() {
        return Err(RemoteError::Failed { status: status.code().unwrap_or(-1), stderr: "ssh-keygen failed".into() });
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| RemoteError::Io { path: p.display().to_string(), source })
    };
    let private_openssh = read(&path)?;
    let public_full = read(&path.with_extension("pub"))?;
    let public = public_full.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    Ok(HostKey { private_openssh, public })
}

/// Records `key` as the host key of `alias` in the known_hosts file at `path`, replacing any
/// previous entry for that alias. The file is rewritten atomically.
pub fn record(path: &Path, alias: &str, key: &str) -> Result<(), RemoteError> {
    record_many(path, &[(alias, key)])
}

/// [`record`] for many boxes at once: one read, and at most one write, of the file (a fan-out
/// over a cluster must not rewrite it once per node). Every key must be exactly `type base64`
/// and every alias one plain word, or nothing is written: a key comes from a tag the box
/// wrote, and a newline in it would add lines about other hosts (`* ...`, `@revoked ...`).
pub fn record_many(path: &Path, entries: &[(&str, &str)]) -> Result<(), RemoteError> {
    let io = |source| RemoteError::Io { path: path.display().to_string(), source };
    let refuse = |why: String| io(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    for (alias, key) in entries {
        if !plain_alias(alias) {
            return Err(refuse(format!("refusing to record an SSH host key under the alias {alias:?}")));
        }
        cgcloud_core::sshkey::PublicKey::parse_bare(key)
            .map_err(|e| refuse(format!("refusing to record the SSH host key of {alias}: {e}")))?;
    }
    let _lock = lock(path).map_err(io)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let wanted: Vec<String> = entries.iter().map(|(alias, key)| format!("{alias} {key}")).collect();
    let present: std::collections::HashSet<&str> = existing.lines().collect();
    if wanted.iter().all(|w| present.contains(w.as_str())) && existing.lines().all(well_formed) {
        return Ok(());
    }
    let aliases: std::collections::HashSet<&str> = entries.iter().map(|(a, _)| *a).collect();
    // Lines that are not `alias type base64` were smuggled in by a box before keys were
    // checked (or written by hand): dropped, never kept next to the keys cgcloud trusts.
    let mut lines: Vec<&str> = existing
        .lines()
        .filter(|l| well_formed(l) && !l.split_whitespace().next().is_some_and(|a| aliases.contains(a)))
        .collect();
    lines.extend(wanted.iter().map(String::as_str));
    write_atomic(path, &(lines.join("\n") + "\n")).map_err(io)
}

/// An alias as cgcloud writes them (an instance id): one word that ssh cannot read as a
/// pattern (`*`, `?`, `!`), a marker (`@revoked`) or a list (`,`).
fn plain_alias(alias: &str) -> bool {
    !alias.is_empty() && alias.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A known_hosts line as [`record_many`] writes it: `alias type base64`.
fn well_formed(line: &str) -> bool {
    line.split_once(' ')
        .is_some_and(|(alias, key)| plain_alias(alias) && cgcloud_core::sshkey::PublicKey::parse_bare(key).is_ok())
}

/// Removes the entries of aliases for which `keep` returns false; returns the removed aliases.
pub fn prune(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, RemoteError> {
    let io = |source| RemoteError::Io { path: path.display().to_string(), source };
    let _lock = lock(path).map_err(io)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut removed = Vec::new();
    let kept: Vec<&str> = existing
        .lines()
        .filter(|l| {
            let alias = l.split_whitespace().next().unwrap_or_default();
            let k = alias.is_empty() || keep(alias);
            if !k {
                removed.push(alias.to_owned());
            }
            k
        })
        .collect();
    if !removed.is_empty() {
        write_atomic(path, &(kept.join("\n") + "\n")).map_err(io)?;
    }
    Ok(removed)
}

/// The aliases recorded in the known_hosts file.
pub fn aliases(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// An exclusive lock on `<path>.lock`, held until the file is dropped: cgcloud commands run
/// side by side (two `create`s in two terminals, a script's parallel launches) each read, edit
/// and replace the known_hosts file, and without it one would write back a copy that lacks the
/// key the other just recorded, and its next connection would be refused as a changed key.
fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(name))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(f)
}

fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    cgcloud_core::fsutil::write_atomic(path, contents.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: parallel `cgcloud create`s lost each other's host keys (found by `xtask bench
    /// key-sync` creating boxes four at a time).
    #[test]
    fn concurrent_records_keep_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::thread::scope(|s| {
            for t in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for i in 0..40 {
                        record(path, &format!("box-{t}-{i}"), &key(t * 100 + i)).unwrap();
                    }
                });
            }
        });
        let got = aliases(&path);
        assert_eq!(got.len(), 8 * 40, "lost updates: {} of 320 aliases", got.len());
    }

    #[test]
    fn generate_gives_ed25519() {
        let k = generate().unwrap();
        assert!(k.public.starts_with("ssh-ed25519 "));
        assert!(k.private_openssh.contains("OPENSSH PRIVATE KEY"));
    }

    #[test]
    fn record_replaces_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        record(&path, "i-1", &key(1)).unwrap();
        record(&path, "i-2", &key(2)).unwrap();
        record(&path, "i-1", &key(3)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("i-2 {}\ni-1 {}\n", key(2), key(3)));
        assert_eq!(aliases(&path), vec!["i-2", "i-1"]);
        let removed = prune(&path, |a| a == "i-1").unwrap();
        assert_eq!(removed, vec!["i-2"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("i-1 {}\n", key(3)));
    }

    /// A well-formed ed25519 public key, different for every `n`.
    fn key(n: usize) -> String {
        let k = format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA{n:0>42}");
        assert!(cgcloud_core::sshkey::PublicKey::parse_bare(&k).is_ok(), "{k}");
        k
    }

    /// The attack of a box on the workstation: its host key tag with another line, which would
    /// revoke (or replace) the key of every other box in cgcloud's known_hosts.
    #[test]
    fn host_keys_cannot_add_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        record(&path, "i-peer", &key(1)).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        for bad in [
            format!("{}\n@revoked * {}", key(2), key(1)),
            format!("{}\n* {}", key(2), key(666)),
            format!("{} trailing", key(2)),
            "ssh-ed25519 AAAA".to_owned(),
        ] {
            let err = record_many(&path, &[("i-good", &key(3)), ("i-evil", &bad)]).unwrap_err().to_string();
            assert!(err.contains("refusing to record the SSH host key of i-evil"), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "{bad:?}");
        }
        for alias in ["*", "@revoked", "i-1,*", "i 1", ""] {
            assert!(record(&path, alias, &key(4)).is_err(), "{alias:?}");
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // Lines smuggled in before keys were checked go at the next write.
        std::fs::write(&path, format!("{before}* {}\n@revoked * {}\n", key(666), key(1))).unwrap();
        record(&path, "i-peer", &key(1)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        record(&path, "i-new", &key(5)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(well_formed), "{text}");
    }
}
