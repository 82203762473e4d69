//! Key-pair patterns: which EC2 key pairs a box trusts. A pattern is a literal key-pair name, a
//! shell glob, `@user` (the key pairs of that IAM user: named `user` or `user@...`, compared
//! without regard to case) or `@@group` (those of every member of that IAM group).

use crate::glob::{glob_match, is_glob};
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

fn user_owns(user: &str, key_name: &str) -> bool {
    let lower = key_name.to_lowercase();
    let user = user.to_lowercase();
    lower == user || lower.strip_prefix(&user).is_some_and(|rest| rest.starts_with('@'))
}

/// Expands `patterns` against the key pairs that exist. The result is ordered by the first
/// pattern that matched and has no duplicates; names that match nothing are left out (they are
/// picked up once they exist). `members` maps each `@@group` to its user names.
pub fn expand(patterns: &[String], available: &[String], members: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |name: &String| {
        if !out.contains(name) {
            out.push(name.clone());
        }
    };
    for p in patterns {
        match Pattern::parse(p) {
            Pattern::Literal(l) => available.iter().filter(|a| **a == l).for_each(&mut push),
            Pattern::Glob(g) => available.iter().filter(|a| glob_match(&g, a)).for_each(&mut push),
            Pattern::User(u) => available.iter().filter(|a| user_owns(&u, a)).for_each(&mut push),
            Pattern::Group(g) => {
                for user in members.get(&g).into_iter().flatten() {
                    available.iter().filter(|a| user_owns(user, a)).for_each(&mut push);
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

    #[test]
    fn expansion_orders_and_dedups() {
        let available = s(&["alice", "bob", "bob@laptop", "carol", "Dave", "jenkins@ci"]);
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
}
