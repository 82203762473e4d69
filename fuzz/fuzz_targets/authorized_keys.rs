//! The agent's rewrite of `authorized_keys` (it runs as root on every box; the file belongs to
//! the account, and the desired keys come from EC2 key pairs): any existing content, any keys.
//! The result is a fixed point (rewriting it again changes nothing), holds exactly one cgcloud
//! section with the desired keys' blobs, once each, one line each, and outside it no key of an
//! EC2 key pair and every other line of the file, in order.
#![no_main]

use arbitrary::Arbitrary;
use cgcloud_core::authorized_keys::{blob, rewrite, BEGIN, END};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

#[derive(Debug, Arbitrary)]
struct Input {
    existing: String,
    managed: Vec<String>,
    desired: Vec<String>,
}

fuzz_target!(|input: Input| {
    let managed: BTreeSet<String> = input.managed.iter().cloned().collect();
    let out = rewrite(&input.existing, &managed, &input.desired);
    assert_eq!(rewrite(&out, &managed, &input.desired), out, "not a fixed point");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.trim() == BEGIN).count(), 1, "{out}");
    assert_eq!(lines.iter().filter(|l| l.trim() == END).count(), 1, "{out}");
    let begin = lines.iter().position(|l| l.trim() == BEGIN).expect("begin");
    let end = lines.iter().position(|l| l.trim() == END).expect("end");
    assert_eq!(end, lines.len() - 1);
    let inside: Vec<&str> = lines[begin + 1..end].to_vec();
    let blobs: Vec<&str> = inside.iter().map(|l| blob(l).expect("a key line")).collect();
    let unique: BTreeSet<&str> = blobs.iter().copied().collect();
    assert_eq!(unique.len(), blobs.len(), "a key twice: {out}");
    // Every desired key that is one line with a key in it is there.
    for d in &input.desired {
        if let Some(b) = blob(d).filter(|_| !d.contains(['\n', '\r'])) {
            assert!(unique.contains(b), "missing {d:?}: {out}");
        }
    }
    for l in &lines[..begin] {
        assert!(!blob(l).is_some_and(|b| managed.contains(b)), "an EC2 key outside the section: {out}");
    }
});
