//! SSH key sync: which keys a box trusts (from its key-pair patterns and EC2's key pairs), and
//! rewriting `authorized_keys` so that the keys of EC2 key pairs are exactly those, while every
//! key that is not an EC2 key pair (added by hand, or by another tool) stays untouched.

use std::collections::BTreeSet;
use std::path::Path;

pub const BEGIN: &str =
    "# BEGIN cgcloud: keys of EC2 key pairs, kept in sync by cgcloud-agent (edits here are overwritten)";
pub const END: &str = "# END cgcloud";

/// The base64 key blob of an `authorized_keys` line (options before the key type allowed).
pub fn blob(line: &str) -> Option<&str> {
    let mut tokens = line.split_whitespace();
    while let Some(t) = tokens.next() {
        if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-") {
            return tokens.next();
        }
    }
    None
}

/// The new contents of an `authorized_keys` file. Lines inside our section, and lines anywhere
/// whose key is an EC2 key pair's (`managed`, which includes keys of key pairs deleted since),
/// are replaced by `desired`; all other lines stay, in order.
pub fn rewrite(existing: &str, managed: &BTreeSet<String>, desired: &[String]) -> String {
    let mut kept = Vec::new();
    let mut inside = false;
    for line in existing.lines() {
        let t = line.trim();
        if t == BEGIN {
            inside = true;
            continue;
        }
        if t == END {
            inside = false;
            continue;
        }
        if inside {
            continue;
        }
        if blob(t).is_some_and(|b| managed.contains(b)) {
            continue;
        }
        kept.push(line.to_owned());
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let mut out = String::new();
    for l in kept {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push('\n');
    let mut seen = BTreeSet::new();
    for k in desired {
        if blob(k).is_some_and(|b| seen.insert(b.to_owned())) {
            out.push_str(k.trim());
            out.push('\n');
        }
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// A local account: name, uid, gid, home.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

pub fn account(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == name).then(|| Account {
            name: name.to_owned(),
            uid: f[2].parse().unwrap_or(0),
            gid: f[3].parse().unwrap_or(0),
            home: f[5].to_owned(),
        })
    })
}

/// Rewrites the account's `~/.ssh/authorized_keys` if needed, atomically (a temporary file in
/// the same directory, fsynced, then renamed), never leaving a truncated file. Returns whether
/// it changed.
pub fn sync_account(acct: &Account, managed: &BTreeSet<String>, desired: &[String]) -> Result<bool, String> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new(&acct.home).join(".ssh");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        std::os::unix::fs::chown(&dir, Some(acct.uid), Some(acct.gid))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let path = dir.join("authorized_keys");
    let existing = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let new = rewrite(&existing, managed, desired);
    if new == existing {
        return Ok(false);
    }
    let tmp = dir.join(".authorized_keys.cgcloud-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(new.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::os::unix::fs::chown(&tmp, Some(acct.uid), Some(acct.gid)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn blobs_with_and_without_options() {
        assert_eq!(blob("ssh-ed25519 AAAA bob"), Some("AAAA"));
        assert_eq!(blob("from=\"10.0.0.0/8\" ssh-rsa BBBB x"), Some("BBBB"));
        assert_eq!(blob("# comment"), None);
        assert_eq!(blob(""), None);
    }

    #[test]
    fn rewrite_keeps_manual_keys_and_replaces_managed_ones() {
        let existing = "ssh-ed25519 AAAA primary-from-cloud-init\n# my own key\nssh-rsa MANUAL me@laptop\n";
        let managed = set(&["AAAA", "BBBB", "GONE"]);
        let out = rewrite(existing, &managed, &["ssh-ed25519 AAAA alice".into(), "ssh-ed25519 BBBB bob".into()]);
        assert_eq!(out, format!("# my own key\nssh-rsa MANUAL me@laptop\n{BEGIN}\nssh-ed25519 AAAA alice\nssh-ed25519 BBBB bob\n{END}\n"));
        // Idempotent.
        assert_eq!(rewrite(&out, &managed, &["ssh-ed25519 AAAA alice".into(), "ssh-ed25519 BBBB bob".into()]), out);
        // A deleted key pair goes, wherever its key was; the manual key stays.
        let after = rewrite(&out, &managed, &["ssh-ed25519 AAAA alice".into()]);
        assert!(!after.contains("BBBB") && after.contains("MANUAL") && after.contains("AAAA"));
        // Manual edits inside the section are overwritten; duplicates are dropped.
        let edited = out.replace("ssh-ed25519 BBBB bob\n", "ssh-ed25519 BBBB bob\nssh-rsa SNEAKY x\n");
        let fixed = rewrite(&edited, &managed, &["ssh-ed25519 AAAA a".into(), "ssh-ed25519 AAAA dup".into()]);
        assert!(!fixed.contains("SNEAKY"));
        assert_eq!(fixed.matches("AAAA").count(), 1);
    }

    #[test]
    fn sync_writes_atomically_with_modes() {
        use std::os::unix::fs::MetadataExt as _;
        let home = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(home.path()).unwrap();
        let acct =
            Account { name: "me".into(), uid: meta.uid(), gid: meta.gid(), home: home.path().display().to_string() };
        assert!(sync_account(&acct, &set(&["AAAA"]), &["ssh-ed25519 AAAA a".into()]).unwrap());
        assert!(!sync_account(&acct, &set(&["AAAA"]), &["ssh-ed25519 AAAA a".into()]).unwrap());
        let path = home.path().join(".ssh/authorized_keys");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(home.path().join(".ssh")).unwrap().mode() & 0o777, 0o700);
        assert!(!home.path().join(".ssh/.authorized_keys.cgcloud-tmp").exists());
    }
}
