//! Cluster ordinals: the leader is 0, workers 1..N; growing a cluster fills gaps first. Also the
//! compact form in which a launch group's ordinals travel in one tag (`1-100,105`), which must
//! stay within EC2's 256 characters of a tag value whatever the size of the cluster.

use std::collections::BTreeSet;

/// The longest an encoded ordinal list may be when it is made: EC2's tag-value limit (256)
/// less room for a later suffix of it, whose first range may start at a longer number.
pub const ENCODED_BUDGET: usize = 240;

/// Allocates `count` ordinals not in `used`, in ascending order: the gaps first (so that a
/// grown cluster reuses the persistent volumes of lost nodes), then numbers above the maximum.
/// Gaps are taken only while the list stays within [`ENCODED_BUDGET`] when encoded, so that a
/// cluster full of holes still launches its new workers in one call. Ordinal 0 is the
/// leader's and is never handed out.
pub fn allocate_ordinals(used: &BTreeSet<u32>, count: usize) -> Vec<u32> {
    let top = used.iter().next_back().copied().unwrap_or(0);
    let mut out: Vec<u32> = Vec::with_capacity(count);
    // The encoding's length as it grows: closed ranges, plus the open one (start, end).
    let range_len = |a: u32, b: u32| if a == b { digits(a) } else { digits(a) + 1 + digits(b) };
    let (mut closed, mut open): (usize, Option<(u32, u32)>) = (0, None);
    for gap in (1..top).filter(|o| !used.contains(o)) {
        if out.len() == count {
            return out;
        }
        let (next_closed, next_open) = match open {
            Some((a, b)) if b + 1 == gap => (closed, (a, gap)),
            Some((a, b)) => (closed + range_len(a, b) + 1, (gap, gap)),
            None => (0, (gap, gap)),
        };
        // The rest, if any, are one range above the top: keep room for it.
        let rest = count - out.len() - 1;
        let tail = if rest == 0 { 0 } else { 1 + digits(top + 1) + 1 + digits(top.saturating_add(rest as u32)) };
        if next_closed + range_len(next_open.0, next_open.1) + tail > ENCODED_BUDGET {
            break;
        }
        (closed, open) = (next_closed, Some(next_open));
        out.push(gap);
    }
    let mut next = top + 1;
    while out.len() < count {
        out.push(next);
        next += 1;
    }
    out
}

/// How many decimal digits `n` has.
fn digits(n: u32) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `ordinals` (ascending) as ranges: `[1, 2, 3, 5]` → `1-3,5`.
pub fn encode(ordinals: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ordinals.len() {
        let start = ordinals[i];
        let mut end = start;
        while i + 1 < ordinals.len() && ordinals[i + 1] == end.wrapping_add(1) && end < u32::MAX {
            end += 1;
            i += 1;
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// `ordinals` as a launch group's tag value: the plain comma list that agents before ranges
/// read, when it fits [`ENCODED_BUDGET`], else [`encode`]'s ranges (never longer).
pub fn tag_value(ordinals: &[u32]) -> String {
    let plain = ordinals.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    if plain.len() <= ENCODED_BUDGET {
        plain
    } else {
        encode(ordinals)
    }
}

/// The `index`-th ordinal of an encoded list (ranges or single numbers, comma-separated; the
/// plain comma list of earlier versions is the same form). Walks the ranges without expanding
/// them, so a tag like `1-4000000000` costs nothing. None if the list is malformed or shorter.
pub fn nth(encoded: &str, index: usize) -> Option<u32> {
    let mut left = index as u64;
    for part in encoded.split(',') {
        let part = part.trim();
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let o = part.parse::<u32>().ok()?;
                (o, o)
            }
        };
        if end < start {
            return None;
        }
        let len = u64::from(end - start) + 1;
        if left < len {
            return u32::try_from(u64::from(start) + left).ok();
        }
        left -= len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_gaps_then_extends() {
        let used: BTreeSet<u32> = [0, 1, 2, 5].into();
        assert_eq!(allocate_ordinals(&used, 3), vec![3, 4, 6]);
        assert_eq!(allocate_ordinals(&[0].into(), 1), vec![1]);
        assert_eq!(allocate_ordinals(&[0, 1, 2, 3, 4].into(), 2), vec![5, 6]);
        assert_eq!(allocate_ordinals(&BTreeSet::new(), 2), vec![1, 2]);
        assert_eq!(allocate_ordinals(&[0, 5].into(), 0), Vec::<u32>::new());
        assert_eq!(allocate_ordinals(&[0, 5].into(), 2), vec![1, 2]);
    }

    #[test]
    fn a_cluster_full_of_holes_still_fits_one_tag() {
        // Every other worker of 1000 is gone: 500 gaps.
        let used: BTreeSet<u32> = std::iter::once(0).chain((2..=1000).step_by(2)).collect();
        let got = allocate_ordinals(&used, 500);
        assert_eq!(got.len(), 500);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert!(got.iter().all(|o| *o != 0 && !used.contains(o)));
        let text = encode(&got);
        assert!(text.len() <= ENCODED_BUDGET, "{} characters: {text}", text.len());
        // Close to the budget: the gaps are used as far as they fit.
        assert!(text.len() > ENCODED_BUDGET - 12, "{} characters: {text}", text.len());
        // Gaps first, as far as they fit; the rest above the top.
        assert_eq!(got[0], 1);
        assert!(*got.last().unwrap() > 1000);
        // Every suffix (what later rounds of a launch tag) still fits EC2's 256.
        for k in 0..got.len() {
            assert!(tag_value(&got[k..]).len() <= 256);
        }
    }

    #[test]
    fn encoding_round_trips() {
        let cases: Vec<Vec<u32>> = vec![
            vec![],
            vec![1],
            vec![1, 2, 3, 5],
            vec![3, 7, 8, 9, 20],
            (1..=1000).collect(),
            vec![u32::MAX - 1, u32::MAX],
        ];
        for c in cases {
            let e = encode(&c);
            let back: Vec<u32> = (0..c.len()).map(|i| nth(&e, i).unwrap()).collect();
            assert_eq!(back, c, "{e}");
            assert_eq!(nth(&e, c.len()), None);
        }
        assert_eq!(encode(&(1..=1000).collect::<Vec<_>>()), "1-1000");
        assert_eq!(encode(&[1, 2, 3, 5]), "1-3,5");
        assert_eq!(tag_value(&[1, 2, 3, 5]), "1,2,3,5");
        assert_eq!(tag_value(&(1..=100).collect::<Vec<_>>()), "1-100");
        // The comma list of earlier versions reads the same.
        assert_eq!(nth("1,3,4", 1), Some(3));
        // Malformed lists give nothing rather than a wrong ordinal.
        for bad in ["5-1", "a", "1-", "-", "1-2-3", "99999999999"] {
            assert_eq!(nth(bad, 0), None, "{bad}");
        }
        assert_eq!(nth("1,,2", 1), None);
        assert_eq!(nth("1-4000000000", 3_999_999_999), Some(4_000_000_000));
    }
}
