//! Partitions of a training set into client shards: IID, or non-IID by label with a
//! Dirichlet(α) prior (Hsu et al. 2019, the partitioner Flower and most FL papers use).
//! Deterministic for a seed on every platform (ChaCha8), so the server can re-derive a shard
//! from `(scheme, seed, client index)` after a restart.

use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Gamma};

use crate::data::NUM_CLASSES;

pub use protocol::config::ShardScheme;

/// Every shard of a Dirichlet partition holds at least this many examples; draws that leave a
/// smaller shard are redrawn (as Flower's `DirichletPartitioner` does).
pub const MIN_SHARD_SIZE: usize = 10;
const MAX_DRAWS: usize = 1000;

/// Why a partition could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardError {
    #[error("num_clients is {0}: expected at least 1")]
    NoClients(usize),
    #[error(
        "num_clients is {clients} but the data set has only {examples} examples: expected at most one client per {MIN_SHARD_SIZE} examples"
    )]
    TooManyClients { clients: usize, examples: usize },
    #[error("dirichlet alpha is {0}: expected a finite number above 0 (e.g. 0.5)")]
    Alpha(f64),
    #[error(
        "no Dirichlet(α = {alpha}) draw in {MAX_DRAWS} gave every one of {clients} clients at least {MIN_SHARD_SIZE} examples: use fewer clients or a larger alpha"
    )]
    Unbalanced { alpha: f64, clients: usize },
}

/// Splits example indices `0..labels.len()` into `num_clients` shards.
pub fn partition(
    labels: &[u8],
    num_clients: usize,
    scheme: ShardScheme,
    seed: u64,
) -> Result<Vec<Vec<usize>>, ShardError> {
    if num_clients == 0 {
        return Err(ShardError::NoClients(num_clients));
    }
    if num_clients * MIN_SHARD_SIZE > labels.len() {
        return Err(ShardError::TooManyClients {
            clients: num_clients,
            examples: labels.len(),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match scheme {
        ShardScheme::Iid => {
            let mut idx: Vec<usize> = (0..labels.len()).collect();
            idx.shuffle(&mut rng);
            let (base, extra) = (labels.len() / num_clients, labels.len() % num_clients);
            let mut shards = Vec::with_capacity(num_clients);
            let mut start = 0;
            for c in 0..num_clients {
                let len = base + usize::from(c < extra);
                shards.push(idx[start..start + len].to_vec());
                start += len;
            }
            Ok(shards)
        }
        ShardScheme::Dirichlet { alpha } => dirichlet(labels, num_clients, alpha, &mut rng),
    }
}

fn dirichlet(
    labels: &[u8],
    num_clients: usize,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, ShardError> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(ShardError::Alpha(alpha));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|_| ShardError::Alpha(alpha))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_CLASSES];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize % NUM_CLASSES].push(i);
    }
    for _ in 0..MAX_DRAWS {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); num_clients];
        for class in &by_class {
            let mut class = class.clone();
            class.shuffle(rng);
            // Dirichlet(α, …, α) as normalised Gamma(α, 1) draws.
            let mut p: Vec<f64> = (0..num_clients).map(|_| gamma.sample(rng)).collect();
            let total: f64 = p.iter().sum();
            if total <= 0.0 {
                // Every draw underflowed (tiny α): give the class to one client.
                p.iter_mut().for_each(|v| *v = 0.0);
                p[rng.random_range(0..num_clients)] = 1.0;
            } else {
                p.iter_mut().for_each(|v| *v /= total);
            }
            let mut start = 0;
            let mut cum = 0.0;
            for (c, pc) in p.iter().enumerate() {
                cum += pc;
                let end = if c + 1 == num_clients {
                    class.len()
                } else {
                    ((cum * class.len() as f64).round() as usize).clamp(start, class.len())
                };
                shards[c].extend_from_slice(&class[start..end]);
                start = end;
            }
        }
        if shards.iter().all(|s| s.len() >= MIN_SHARD_SIZE) {
            for s in &mut shards {
                s.shuffle(rng);
            }
            return Ok(shards);
        }
    }
    Err(ShardError::Unbalanced {
        alpha,
        clients: num_clients,
    })
}

/// How many examples of each digit the shard holds.
pub fn label_histogram(labels: &[u8], shard: &[usize]) -> [u32; NUM_CLASSES] {
    let mut h = [0; NUM_CLASSES];
    for &i in shard {
        h[labels[i] as usize % NUM_CLASSES] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 10) as u8).collect()
    }

    fn is_partition(shards: &[Vec<usize>], n: usize) -> bool {
        let mut all: Vec<usize> = shards.iter().flatten().copied().collect();
        all.sort_unstable();
        all == (0..n).collect::<Vec<_>>()
    }

    #[test]
    fn iid_is_an_even_deterministic_partition() {
        let l = labels(10_003);
        let a = partition(&l, 10, ShardScheme::Iid, 42).expect("valid");
        assert!(is_partition(&a, l.len()));
        assert!(a.iter().all(|s| s.len() == 1000 || s.len() == 1001));
        assert_eq!(a, partition(&l, 10, ShardScheme::Iid, 42).expect("valid"));
        assert_ne!(a, partition(&l, 10, ShardScheme::Iid, 43).expect("valid"));
        // IID: every shard sees every class in roughly equal measure.
        for s in &a {
            assert!(
                label_histogram(&l, s)
                    .iter()
                    .all(|&c| (60..=140).contains(&c))
            );
        }
    }

    /// Fraction of a shard taken by its most common class, averaged over shards.
    fn skew(l: &[u8], shards: &[Vec<usize>]) -> f64 {
        shards
            .iter()
            .map(|s| {
                *label_histogram(l, s).iter().max().expect("10 classes") as f64 / s.len() as f64
            })
            .sum::<f64>()
            / shards.len() as f64
    }

    #[test]
    fn dirichlet_skew_grows_as_alpha_shrinks() {
        let l = labels(20_000);
        let scheme = |alpha| ShardScheme::Dirichlet { alpha };
        let small = partition(&l, 10, scheme(0.1), 1).expect("valid");
        let mid = partition(&l, 10, scheme(0.5), 1).expect("valid");
        let large = partition(&l, 10, scheme(1000.0), 1).expect("valid");
        for s in [&small, &mid, &large] {
            assert!(is_partition(s, l.len()));
            assert!(s.iter().all(|s| s.len() >= MIN_SHARD_SIZE));
        }
        let (a, b, c) = (skew(&l, &small), skew(&l, &mid), skew(&l, &large));
        assert!(
            a > b && b > c,
            "skew α=0.1 {a:.2}, α=0.5 {b:.2}, α=1000 {c:.2}"
        );
        assert!(a > 0.5, "α=0.1 shards are dominated by one class: {a:.2}");
        assert!(c < 0.15, "α=1000 is close to IID (0.1): {c:.2}");
        assert_eq!(mid, partition(&l, 10, scheme(0.5), 1).expect("valid"));
    }

    #[test]
    fn bad_arguments_are_named() {
        let l = labels(100);
        let e = |r: Result<Vec<Vec<usize>>, ShardError>| r.unwrap_err().to_string();
        assert!(e(partition(&l, 0, ShardScheme::Iid, 0)).contains("num_clients is 0"));
        assert!(e(partition(&l, 11, ShardScheme::Iid, 0)).contains("only 100 examples"));
        let bad = ShardScheme::Dirichlet { alpha: -1.0 };
        assert!(e(partition(&l, 2, bad, 0)).contains("alpha is -1"));
    }
}
