//! Who shares with whom: SecAgg+ neighbourhoods. The members stand in a ring in a random order
//! and each one's neighbours are the k/2 before and after it (a Harary graph over a random
//! permutation, as in Bell et al. and Flower), so each member makes k pairwise masks and k
//! shares instead of n − 1: the cost grows with log n, not n, when k does. A k of n − 1 or more
//! is everyone: plain SecAgg.

use std::collections::BTreeSet;

use protocol::secagg::Member;
use rand::Rng;

/// Each member's neighbours, by member (`result[m - 1]` for member m), for `members` members and
/// about `k` neighbours each (rounded up to even; at most `members − 1`).
pub fn neighbourhoods(members: u32, k: u32, rng: &mut impl Rng) -> Vec<BTreeSet<Member>> {
    let n = members as usize;
    if k as usize >= n.saturating_sub(1) {
        return (1..=members)
            .map(|m| (1..=members).filter(|&j| j != m).collect())
            .collect();
    }
    let half = k.div_ceil(2) as usize;
    let mut ring: Vec<Member> = (1..=members).collect();
    // Fisher–Yates with the round's CSPRNG: the ring is the server's choice, and an honest
    // server picks it at random.
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        ring.swap(i, j);
    }
    let mut out = vec![BTreeSet::new(); n];
    for (pos, &m) in ring.iter().enumerate() {
        for d in 1..=half {
            let after = ring[(pos + d) % n];
            let before = ring[(pos + n - d) % n];
            out[m as usize - 1].insert(after);
            out[m as usize - 1].insert(before);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    #[test]
    fn neighbourhoods_are_symmetric_of_the_asked_size() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for (n, k, size) in [
            (10, 4, 4),
            (10, 3, 4),
            (100, 8, 8),
            (5, 4, 4),
            (5, 99, 4),
            (2, 1, 1),
        ] {
            let g = neighbourhoods(n, k, &mut rng);
            assert_eq!(g.len(), n as usize);
            for (i, ns) in g.iter().enumerate() {
                let m = i as u32 + 1;
                assert_eq!(ns.len(), size, "n {n} k {k} member {m}");
                assert!(!ns.contains(&m));
                for &j in ns {
                    assert!(g[j as usize - 1].contains(&m), "{m} → {j} but not back");
                }
            }
        }
    }
}
