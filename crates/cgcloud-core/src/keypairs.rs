//! Key-pair patterns: which EC2 key pairs a box trusts. A pattern is a literal key-pair name, a
//! shell glob, `@user` (the key pairs of that IAM user) or `@@group` (those of every member of
//! that IAM group).
//!
//! A key pair belongs to a user when it is named `user` or `user@...` (compared without regard
//! to case) **and** carries the tag `cgcloud:owner` = `user`, which `register-key` sets. The name
//! alone proves nothing: anyone who may import a key pair can call it `alice@laptop`. The tag is
//! what IAM can guard: the team policy (`member_statements` in `policy.rs`) lets a user import
//! key pairs only tagged with their own user name, and tag or untag none. Literal names and
//! globs trust whoever may import a key pair of that name; `@user` and `@@group` do not.

use crate::glob::{is_glob, Glob};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Literal(String),
    Glob(String),
    User(String),
    Group(String),
}

impl Pattern {
    pub fn parse(p: &str) -> Pattern {
        if let Some(g) = p.strip_prefix("@@") {
            Pattern::Group(g.to_owned())
        } else if let Some(u) = p.strip_prefix('@') {
            Pattern::User(u.to_owned())
        } else if is_glob(p) {
            Pattern::Glob(p.to_owned())
        } else {
            Pattern::Literal(p.to_owned())
        }
    }
}

/// The IAM groups named by `@@group` patterns.
pub fn groups(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .filter_map(|p| match Pattern::parse(p) {
            Pattern::Group(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// A key pair as the patterns see it: its name and its `cgcloud:owner` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub name: String,
    pub owner: Option<String>,
}

impl KeyPair {
    pub fn new(name: &str, owner: Option<&str>) -> KeyPair {
        KeyPair { name: name.to_owned(), owner: owner.map(str::to_owned) }
    }

    /// Named for `user` (`user` or `user@...`).
    fn named_for(&self, user: &str) -> bool {
        let lower = self.name.to_lowercase();
        let user = user.to_lowercase();
        lower == user || lower.strip_prefix(&user).is_some_and(|rest| rest.starts_with('@'))
    }

    /// Named for `user` and tagged as theirs.
    fn owned_by(&self, user: &str) -> bool {
        self.named_for(user) && self.owner.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(user))
    }
}

/// The users whose key pairs a pattern asks for (`@user`, and every member of `@@group`).
fn users<'a>(p: &Pattern, members: &'a BTreeMap<String, Vec<String>>) -> Vec<&'a str> {
    match p {
        Pattern::Group(g) => members.get(g).into_iter().flatten().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Expands `patterns` against the key pairs that exist. The result is ordered by the first
/// pattern that matched and has no duplicates; names that match nothing are left out (they are
/// picked up once they exist). `members` maps each `@@group` to its user names.
pub fn expand(patterns: &[String], available: &[KeyPair], members: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |k: &KeyPair| {
        if !out.contains(&k.name) {
            out.push(k.name.clone());
        }
    };
    for p in patterns {
        let pattern = Pattern::parse(p);
        match &pattern {
            Pattern::Literal(l) => available.iter().filter(|a| a.name == *l).for_each(&mut push),
            Pattern::Glob(g) => {
                let glob = Glob::new(g);
                available.iter().filter(|a| glob.matches(&a.name)).for_each(&mut push)
            }
            Pattern::User(u) => available.iter().filter(|a| a.owned_by(u)).for_each(&mut push),
            Pattern::Group(_) => {
                for user in users(&pattern, members) {
                    available.iter().filter(|a| a.owned_by(user)).for_each(&mut push);
                }
            }
        }
    }
    out
}

/// Key pairs named for a user that `@user`/`@@group` in `patterns` asks for, but not tagged as
/// that user's, with the user: what to warn about, since they are left out.
pub fn unowned<'a>(
    patterns: &[String],
    available: &'a [KeyPair],
    members: &BTreeMap<String, Vec<String>>,
) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for p in patterns {
        let pattern = Pattern::parse(p);
        let wanted: Vec<String> = match &pattern {
            Pattern::User(u) => vec![u.clone()],
            _ => users(&pattern, members).into_iter().map(str::to_owned).collect(),
        };
        for user in wanted {
            for k in available.iter().filter(|k| k.named_for(&user) && !k.owned_by(&user)) {
                if !out.iter().any(|(n, _)| *n == k.name) {
                    out.push((&k.name, user.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    /// Key pairs tagged as their name's user (what `register-key` does).
    fn owned(names: &[&str]) -> Vec<KeyPair> {
        names.iter().map(|n| KeyPair::new(n, Some(&n.split('@').next().unwrap().to_lowercase()))).collect()
    }

    #[test]
    fn expansion_orders_and_dedups() {
        let available = owned(&["alice", "bob", "bob@laptop", "carol", "Dave", "jenkins@ci"]);
        let mut members = BTreeMap::new();
        members.insert("devs".to_owned(), s(&["Carol", "dave"]));
        members.insert("ops".to_owned(), s(&["bob"]));
        assert_eq!(expand(&s(&["alice"]), &available, &members), s(&["alice"]));
        assert_eq!(expand(&s(&["bob*"]), &available, &members), s(&["bob", "bob@laptop"]));
        assert_eq!(expand(&s(&["@bob"]), &available, &members), s(&["bob", "bob@laptop"]));
        // The group named is the one read (the original always read "developers").
        assert_eq!(expand(&s(&["@@devs"]), &available, &members), s(&["carol", "Dave"]));
        assert_eq!(expand(&s(&["@@ops", "@@devs"]), &available, &members), s(&["bob", "bob@laptop", "carol", "Dave"]));
        assert_eq!(expand(&s(&["alice", "*"]), &available, &members)[0], "alice");
        assert_eq!(expand(&s(&["missing", "@@nogroup"]), &available, &members), Vec::<String>::new());
        assert_eq!(groups(&s(&["a", "@@x", "@y", "@@z"])), s(&["x", "z"]));
    }

    #[test]
    fn a_name_alone_does_not_make_a_key_pair_a_users() {
        // Mallory imports key pairs named for alice: untagged, or tagged as hers (mallory's).
        let mut available = owned(&["alice@laptop", "mallory"]);
        available.push(KeyPair::new("alice@evil", None));
        available.push(KeyPair::new("Alice@evil2", Some("mallory")));
        let mut members = BTreeMap::new();
        members.insert("devs".to_owned(), s(&["alice"]));
        assert_eq!(expand(&s(&["@alice"]), &available, &members), s(&["alice@laptop"]));
        assert_eq!(expand(&s(&["@@devs"]), &available, &members), s(&["alice@laptop"]));
        assert_eq!(expand(&s(&["@ALICE"]), &available, &members), s(&["alice@laptop"]), "users ignore case");
        // The tag alone does not either: alice's tag on a key pair named for bob.
        let tagged_only = vec![KeyPair::new("bob@x", Some("alice"))];
        assert!(expand(&s(&["@alice", "@bob"]), &tagged_only, &members).is_empty());
        // What is left out is reported, once, with the user it was meant for.
        assert_eq!(
            unowned(&s(&["@alice", "@@devs"]), &available, &members),
            vec![("alice@evil", "alice".to_owned()), ("Alice@evil2", "alice".to_owned())]
        );
        // Literal names and globs name key pairs, not users: no tag is needed.
        assert_eq!(expand(&s(&["alice@evil", "Alice@*"]), &available, &members), s(&["alice@evil", "Alice@evil2"]));
    }
}
