//! SSH key sync: which keys a box trusts (its key-pair patterns matched against EC2's key pairs
//! and IAM groups, [`KeySync`]), and rewriting `authorized_keys` so that the keys of EC2 key
//! pairs are exactly those, while every key that is not an EC2 key pair (added by hand, or by
//! another tool) stays untouched. The daemon (`daemon.rs`) decides when a sync runs.

use crate::aws::{AwsError, Client, Service};
use crate::log::log;
use crate::safefs::{self, Attrs};
use cgcloud_core::keypairs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
        log("warning", e.to_string());
        None
    })
}

/// The account `name` in the text of a passwd file. A uid or gid that is not a number is an
/// error, never a default: the agent runs as root, and uid 0 would make it give root's
/// attributes to what it writes for the account (or read root's files as the account's).
/// Parsed here rather than with `nix`'s `getpwnam_r` for that reason: the accounts the agent
/// keeps keys for are local ones (the image's admin user, the role's users), and this refusal
/// of a malformed entry is tested, which libc's reading of it (and any NSS module's) is not.
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

/// The id of a group in `/etc/group`, read like [`find_account`] reads `/etc/passwd` (see there
/// why not with libc): a gid that is not a number is no group.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok()).flatten()
    })
}

/// The largest `authorized_keys` the agent reads (a user could make it huge).
const MAX_AUTHORIZED_KEYS: u64 = 4 << 20;

/// Rewrites the account's `~/.ssh/authorized_keys` if needed, atomically; returns whether it
/// changed. The account owns its home and `~/.ssh`, so nothing there is followed: a `~/.ssh`
/// or `authorized_keys` that is a symlink makes the sync of this account fail (and say so)
/// rather than write or read through it as root.
pub fn sync_account(acct: &Account, managed: &BTreeSet<String>, desired: &[String]) -> Result<bool, safefs::SafeError> {
    let home = Path::new(&acct.home);
    let home_fd = safefs::open_dir(home, false)?;
    let ssh_path = home.join(".ssh");
    let ssh = safefs::own_dir(&home_fd, ".ssh", &ssh_path, Attrs { uid: acct.uid, gid: acct.gid, mode: 0o700 })?;
    let path = ssh_path.join("authorized_keys");
    let name = std::ffi::OsStr::new("authorized_keys");
    let existing = safefs::read_in(&ssh, name, &path, MAX_AUTHORIZED_KEYS, Some(acct.uid))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let new = rewrite(&existing, managed, desired);
    if new == existing {
        return Ok(false);
    }
    safefs::write_in(&ssh, name, &path, new.as_bytes(), Attrs { uid: acct.uid, gid: acct.gid, mode: 0o600 })?;
    Ok(true)
}

/// What the agent remembers across restarts: every key blob it has seen as an EC2 key pair,
/// so that keys of deleted key pairs are recognized and removed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    known: BTreeSet<String>,
}

/// The key sync and what it keeps between runs.
pub struct KeySync {
    state_path: PathBuf,
    state: State,
    /// Key pairs already warned about (named for a user but not tagged theirs).
    warned: BTreeSet<String>,
}

impl KeySync {
    /// Starts from the state saved at `state_path`; a missing or unreadable state is an empty
    /// one (the keys of key pairs deleted before then are not recognized, as on a first run).
    pub fn load(state_path: PathBuf) -> KeySync {
        let state =
            std::fs::read_to_string(&state_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        KeySync { state_path, state, warned: BTreeSet::new() }
    }

    fn save_state(&self) {
        let text = serde_json::to_string(&self.state).unwrap_or_default();
        if let Err(e) = safefs::write_atomic(&self.state_path, text.as_bytes(), Attrs::root(0o600)) {
            log("warning", format!("cannot save the agent's state: {e}"));
        }
    }

    /// One sync of `accounts` with the key pairs `patterns` choose: returns how many accounts
    /// changed. An account that cannot be updated is logged and skipped; only API errors
    /// fail the sync (and leave every account's keys as they were).
    pub fn sync(&mut self, aws: &Client, patterns: &[String], accounts: &[String]) -> Result<usize, AwsError> {
        let answer = aws.call(Service::Ec2, "DescribeKeyPairs", &[("IncludePublicKey", "true".into())])?;
        let pairs = parse_key_pairs(&answer.0);
        let public: BTreeMap<String, String> =
            pairs.iter().map(|(k, public)| (k.name.clone(), public.clone())).collect();
        let mut members = BTreeMap::new();
        for g in keypairs::groups(patterns) {
            let users = group_members(aws, &g)?;
            members.insert(g, users);
        }
        let available: Vec<keypairs::KeyPair> = pairs.into_iter().map(|(k, _)| k).collect();
        for (name, user) in keypairs::unowned(patterns, &available, &members) {
            if self.warned.insert(name.to_owned()) {
                log(
                    "warning",
                    format!(
                        "key pair {name} is named for {user} but not tagged {}={user}; not trusted as theirs",
                        cgcloud_core::tags::OWNER
                    ),
                );
            }
        }
        let chosen = keypairs::expand(patterns, &available, &members);
        let desired: Vec<String> = chosen.iter().filter_map(|n| public.get(n)).cloned().collect();
        for k in public.values() {
            if let Some(b) = blob(k) {
                self.state.known.insert(b.to_owned());
            }
        }
        self.save_state();
        let mut changed = 0;
        for name in accounts {
            let Some(acct) = account(name) else {
                log("warning", format!("account {name} does not exist; skipping"));
                continue;
            };
            match sync_account(&acct, &self.state.known, &desired) {
                Ok(true) => {
                    changed += 1;
                    log(
                        "info",
                        format!(
                            "updated the keys of {} ({} key pair(s): {})",
                            acct.name,
                            desired.len(),
                            chosen.join(" ")
                        ),
                    );
                }
                Ok(false) => {}
                Err(e) => log("error", format!("cannot update keys of {name}: {e}")),
            }
        }
        Ok(changed)
    }
}

/// The user names of IAM group `g` (none if it does not exist). GetGroup returns at most 100
/// users a page: the marker is followed to the end.
fn group_members(aws: &Client, g: &str) -> Result<Vec<String>, AwsError> {
    let mut users = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut params = vec![("GroupName", g.to_owned())];
        if let Some(m) = marker.take() {
            params.push(("Marker", m));
        }
        match aws.call(Service::Iam, "GetGroup", &params) {
            Ok(a) => {
                users.extend(a.texts("UserName"));
                if a.text("IsTruncated").as_deref() == Some("true") {
                    marker = a.text("Marker").filter(|m| !m.is_empty());
                }
                if marker.is_none() {
                    return Ok(users);
                }
            }
            Err(AwsError::Service { code, .. }) if code == "NoSuchEntity" => return Ok(users),
            Err(e) => return Err(e),
        }
    }
}

/// The key pairs of a DescribeKeyPairs answer that have a public key, with their owner tag.
fn parse_key_pairs(xml: &str) -> Vec<(keypairs::KeyPair, String)> {
    use crate::aws::child_text as child;
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    doc.descendants()
        .filter(|n| n.tag_name().name() == "item" && n.children().any(|c| c.tag_name().name() == "keyName"))
        .filter_map(|n| {
            let (name, public) = (child(n, "keyName"), child(n, "publicKey"));
            let owner = n
                .children()
                .filter(|c| c.tag_name().name() == "tagSet")
                .flat_map(|ts| ts.children().filter(|i| i.tag_name().name() == "item"))
                .find(|i| child(*i, "key") == cgcloud_core::tags::OWNER)
                .map(|i| child(i, "value"));
            (!name.is_empty() && !public.is_empty()).then_some((keypairs::KeyPair { name, owner }, public))
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn groups_of_more_than_a_page_are_read_to_the_end() {
        let endpoint = testkit::fake_iam_with_big_group("big", 230);
        let creds = cgcloud_core::sigv4::Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        };
        let aws = Client::new("us-west-2", Some(endpoint), Some(creds));
        let users = group_members(&aws, "big").unwrap();
        assert_eq!(users.len(), 230);
        assert_eq!(users.first().map(String::as_str), Some("user0"));
        assert_eq!(users.last().map(String::as_str), Some("user229"));
    }

    #[test]
    fn key_pairs_with_their_owner_tag() {
        let xml = r#"<DescribeKeyPairsResponse><keySet>
            <item><keyName>alice@laptop</keyName><publicKey>ssh-ed25519 AAAA1</publicKey>
              <tagSet><item><key>Name</key><value>x</value></item><item><key>cgcloud:owner</key><value>alice</value></item></tagSet></item>
            <item><keyName>alice@evil</keyName><publicKey>ssh-ed25519 AAAA2</publicKey><tagSet/></item>
            <item><keyName>nokey</keyName></item>
            </keySet></DescribeKeyPairsResponse>"#;
        let pairs = parse_key_pairs(xml);
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        assert_eq!(pairs[0].0, keypairs::KeyPair::new("alice@laptop", Some("alice")));
        assert_eq!(pairs[0].1, "ssh-ed25519 AAAA1");
        assert_eq!(pairs[1].0, keypairs::KeyPair::new("alice@evil", None));
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
        let err = sync_account(&acct, &set(&["AAAA"]), &keys).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        unchanged();

        // ~/.ssh a symlink to a directory the user cannot write: refused.
        std::fs::remove_dir_all(home.join(".ssh")).unwrap();
        let etc = d.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        symlink(&etc, home.join(".ssh")).unwrap();
        let err = sync_account(&acct, &set(&["AAAA"]), &keys).unwrap_err().to_string();
        assert!(err.contains(".ssh is a symlink"), "{err}");
        assert!(std::fs::read_dir(&etc).unwrap().next().is_none());
    }
}
