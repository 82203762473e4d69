//! Cluster ordinals: the leader is 0, workers 1..N; growing a cluster fills gaps first.

use std::collections::BTreeSet;

/// Allocates `count` ordinals not in `used`: the gaps first, then numbers above the maximum,
/// in ascending order. Ordinal 0 is the leader's and is never handed out.
pub fn allocate_ordinals(used: &BTreeSet<u32>, count: usize) -> Vec<u32> {
    (1..).filter(|o| !used.contains(o)).take(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_gaps_then_extends() {
        let used: BTreeSet<u32> = [0, 2].into();
        assert_eq!(allocate_ordinals(&used, 3), vec![1, 3, 4]);
        assert_eq!(allocate_ordinals(&[0].into(), 1), vec![1]);
        assert_eq!(allocate_ordinals(&[0, 1, 2, 3, 4].into(), 2), vec![5, 6]);
        assert_eq!(allocate_ordinals(&BTreeSet::new(), 2), vec![1, 2]);
        assert_eq!(allocate_ordinals(&[0, 5].into(), 0), Vec::<u32>::new());
    }
}
