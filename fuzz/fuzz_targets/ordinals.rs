//! Cluster ordinals: allocation never hands out a used ordinal or 0, and its tag value fits
//! EC2's 256 characters (and every suffix of it, which later launch rounds tag); any tag text
//! read back from a box (untrusted) gives an ordinal or nothing, never a panic.
#![no_main]

use arbitrary::Arbitrary;
use cgcloud_core::ordinals::{allocate_ordinals, nth, tag_value};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    used: BTreeSet<u16>,
    count: u16,
    tag: &'a str,
    index: u32,
}

fuzz_target!(|input: Input| {
    let _ = nth(input.tag, input.index as usize);
    let used: BTreeSet<u32> = input.used.iter().map(|u| u32::from(*u)).collect();
    let count = usize::from(input.count % 2048);
    let got = allocate_ordinals(&used, count);
    assert_eq!(got.len(), count);
    assert!(got.iter().all(|o| *o != 0 && !used.contains(o)));
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let t = tag_value(&got);
    for (i, o) in got.iter().enumerate() {
        assert_eq!(nth(&t, i), Some(*o));
    }
    // The suffixes later launch rounds tag (each costs a full encoding: a sample of them).
    let n = got.len();
    for k in [0, 1, 2, n / 3, n / 2, n.saturating_sub(2), n.saturating_sub(1)] {
        let t = tag_value(got.get(k..).unwrap_or_default());
        assert!(t.len() <= 256, "{} characters from {k}: {t}", t.len());
    }
});
