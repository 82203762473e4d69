//! SSH host keys that cgcloud generates for boxes, and cgcloud's own known_hosts file.

use crate::RemoteError;
use std::io::Write as _;
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
/// over a cluster must not rewrite it once per node).
pub fn record_many(path: &Path, entries: &[(&str, &str)]) -> Result<(), RemoteError> {
    let io = |source| RemoteError::Io { path: path.display().to_string(), source };
    let _lock = lock(path).map_err(io)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let wanted: Vec<String> = entries.iter().map(|(alias, key)| format!("{alias} {key}")).collect();
    let present: std::collections::HashSet<&str> = existing.lines().collect();
    if wanted.iter().all(|w| present.contains(w.as_str())) {
        return Ok(());
    }
    let aliases: std::collections::HashSet<&str> = entries.iter().map(|(a, _)| *a).collect();
    let mut lines: Vec<&str> =
        existing.lines().filter(|l| !l.split_whitespace().next().is_some_and(|a| aliases.contains(a))).collect();
    lines.extend(wanted.iter().map(String::as_str));
    write_atomic(path, &(lines.join("\n") + "\n")).map_err(io)
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
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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
                        record(path, &format!("box-{t}-{i}"), &format!("ssh-ed25519 KEY{t}x{i}")).unwrap();
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
        record(&path, "i-1", "ssh-ed25519 AAA1").unwrap();
        record(&path, "i-2", "ssh-ed25519 AAA2").unwrap();
        record(&path, "i-1", "ssh-ed25519 AAA3").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "i-2 ssh-ed25519 AAA2\ni-1 ssh-ed25519 AAA3\n");
        assert_eq!(aliases(&path), vec!["i-2", "i-1"]);
        let removed = prune(&path, |a| a == "i-1").unwrap();
        assert_eq!(removed, vec!["i-2"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "i-1 ssh-ed25519 AAA3\n");
    }
}
