//! SSH key sync: which keys a box trusts (from its key-pair patterns and EC2's key pairs), and
//! rewriting `authorized_keys` so that the keys of EC2 key pairs are exactly those, while every
//! key that is not an EC2 key pair (added by hand, or by another tool) stays untouched.

use crate::safefs::{self, Attrs};
use std::collections::BTreeSet;
use std::path::Path;

pub use cgcloud_core::authorized_keys::{blob, rewrite};

/// A local account: name, uid, gid, home.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// An `/etc/passwd` entry the agent refuses to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/etc/passwd: the {field} of account '{account}' is {value:?}, not a number; refusing to use the account")]
pub struct BadAccount {
    pub account: String,
    pub field: &'static str,
    pub value: String,
}

/// The account `name` from `/etc/passwd`; `None` if there is none, or if its entry is malformed
/// (logged: see [`find_account`]).
pub fn account(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    find_account(&passwd, name).unwrap_or_else(|e| {
        eprintln!("<4>warning: {e}");
        None
    })
}

/// The account `name` in the text of a passwd file. A uid or gid that is not a number is an
/// error, never a default: the agent runs as root, and uid 0 would make it give root's
/// attributes to what it writes for the account (or read root's files as the account's).
pub fn find_account(passwd: &str, name: &str) -> Result<Option<Account>, BadAccount> {
    let Some(f) = passwd.lines().map(|l| l.split(':').collect::<Vec<&str>>()).find(|f| f.len() >= 7 && f[0] == name)
    else {
        return Ok(None);
    };
    let number = |field: &'static str, value: &str| {
        value.parse::<u32>().map_err(|_| BadAccount { account: name.to_owned(), field, value: value.to_owned() })
    };
    Ok(Some(Account {
        name: name.to_owned(),
        uid: number("uid", f[2])?,
        gid: number("gid", f[3])?,
        home: f[5].to_owned(),
    }))
}

/// The largest `authorized_keys` the agent reads (a user could make it huge).
const MAX_AUTHORIZED_KEYS: u64 = 4 << 20;

/// Rewrites the account's `~/.ssh/authorized_keys` if needed, atomically; returns whether it
/// changed. The account owns its home and `~/.ssh`, so nothing there is followed: a `~/.ssh`
/// or `authorized_keys` that is a symlink makes the sync of this account fail (and say so)
/// rather than write or read through it as root.
pub fn sync_account(acct: &Account, managed: &BTreeSet<String>, desired: &[String]) -> Result<bool, String> {
    let home = Path::new(&acct.home);
    let home_fd = safefs::open_dir(home, false).map_err(|e| e.to_string())?;
    let ssh_path = home.join(".ssh");
    let ssh = safefs::own_dir(&home_fd, ".ssh", &ssh_path, Attrs { uid: acct.uid, gid: acct.gid, mode: 0o700 })
        .map_err(|e| e.to_string())?;
    let path = ssh_path.join("authorized_keys");
    let name = std::ffi::OsStr::new("authorized_keys");
    let existing = safefs::read_in(&ssh, name, &path, MAX_AUTHORIZED_KEYS, Some(acct.uid))
        .map_err(|e| e.to_string())?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let new = rewrite(&existing, managed, desired);
    if new == existing {
        return Ok(false);
    }
    safefs::write_in(&ssh, name, &path, new.as_bytes(), Attrs { uid: acct.uid, gid: acct.gid, mode: 0o600 })
        .map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
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
        // Nothing but the file itself is left in ~/.ssh.
        assert_eq!(std::fs::read_dir(home.path().join(".ssh")).unwrap().count(), 1);
    }

    #[test]
    fn malformed_passwd_entries_are_refused_not_read_as_root() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      alice:x:1000:1000::/home/alice:/bin/bash\n\
                      eve:x:1O01:1001::/home/eve:/bin/bash\n\
                      mallory:x:1002::::/home/mallory:/bin/bash\n";
        let alice = find_account(passwd, "alice").unwrap().unwrap();
        assert_eq!((alice.uid, alice.gid, alice.home.as_str()), (1000, 1000, "/home/alice"));
        assert!(find_account(passwd, "nobody").unwrap().is_none());
        let err = find_account(passwd, "eve").unwrap_err();
        assert_eq!(err, BadAccount { account: "eve".into(), field: "uid", value: "1O01".into() });
        assert!(err.to_string().contains("uid of account 'eve' is \"1O01\""), "{err}");
        let err = find_account(passwd, "mallory").unwrap_err();
        assert_eq!((err.field, err.value.as_str()), ("gid", ""));
        assert!(err.to_string().contains("mallory"), "{err}");
    }

    /// The attack of a synced account on the root agent: symlinks planted in its own
    /// `~/.ssh` must not make the agent read or write another file.
    #[test]
    fn planted_symlinks_do_not_redirect_the_sync() {
        use std::os::unix::fs::{symlink, MetadataExt as _, PermissionsExt as _};
        let d = tempfile::tempdir().unwrap();
        let shadow = d.path().join("shadow");
        std::fs::write(&shadow, "root:$y$secret:20000:0:99999:7:::\n").unwrap();
        let home = d.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        // Writable by others, so that it is untrusted also when the tests run as root.
        for p in [&home, &home.join(".ssh")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let meta = std::fs::metadata(&home).unwrap();
        let acct = Account { name: "eve".into(), uid: meta.uid(), gid: meta.gid(), home: home.display().to_string() };
        let keys = ["ssh-ed25519 AAAA eve".to_owned()];
        let unchanged = || assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root:$y$secret:20000:0:99999:7:::\n");

        // The temporary name the agent once used, planted: a fresh random name is used instead.
        symlink(&shadow, home.join(".ssh/.authorized_keys.cgcloud-tmp")).unwrap();
        assert!(sync_account(&acct, &set(&["AAAA"]), &keys).unwrap());
        unchanged();
        assert!(!std::fs::symlink_metadata(home.join(".ssh/authorized_keys")).unwrap().file_type().is_symlink());

        // authorized_keys itself a symlink: neither read (its target would be copied into a
        // file the user can read) nor written.
        std::fs::remove_file(home.join(".ssh/authorized_keys")).unwrap();
        symlink(&shadow, home.join(".ssh/authorized_keys")).unwrap();
        let err = sync_account(&acct, &set(&["AAAA"]), &keys).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        unchanged();

        // ~/.ssh a symlink to a directory the user cannot write: refused.
        std::fs::remove_dir_all(home.join(".ssh")).unwrap();
        let etc = d.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        symlink(&etc, home.join(".ssh")).unwrap();
        let err = sync_account(&acct, &set(&["AAAA"]), &keys).unwrap_err();
        assert!(err.contains(".ssh is a symlink"), "{err}");
        assert!(std::fs::read_dir(&etc).unwrap().next().is_none());
    }
}
