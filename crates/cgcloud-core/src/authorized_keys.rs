//! `authorized_keys` as the agent keeps it: which line holds which key, and the rewrite that
//! makes the keys of EC2 key pairs exactly the desired ones while every other line (keys added
//! by hand or by another tool, comments) stays as it was. Pure text in, text out: the file is
//! written by the agent (`safefs`), which never follows a path the account controls.

use std::collections::BTreeSet;

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
    // Lines end at '\n' with any '\r' before it dropped, also on a last line without '\n', so
    // that the result is a fixed point (found by the authorized_keys fuzz target).
    for line in existing.lines().map(|l| l.trim_end_matches('\r')) {
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

    /// Regression (fuzzing): a last line ending in a lone '\r' made every sync rewrite the file.
    #[test]
    fn carriage_returns_do_not_keep_the_file_changing() {
        let managed = set(&["AAAA"]);
        for existing in ["\u{1}\r", "ssh-rsa MANUAL me\r\n", "a\r\r\nb\r"] {
            let once = rewrite(existing, &managed, &["ssh-ed25519 AAAA a".into()]);
            assert_eq!(rewrite(&once, &managed, &["ssh-ed25519 AAAA a".into()]), once, "{existing:?}");
        }
    }
}
