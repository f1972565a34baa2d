//! Shamir secret sharing of 32-byte secrets over the prime field GF(2⁶¹ − 1).
//!
//! Why a field of our own and not a crate: the maintained crates share over GF(2⁸), which caps a
//! secret at 255 holders, while plain SecAgg shares with every member of a cohort of up to
//! [`protocol::secagg::MAX_MEMBERS`]; and the x-coordinate must be the member's index. The field
//! is a Mersenne prime, so its arithmetic is a `u128` product and two folds, without tables or
//! branches on secret values (only the final check that a rebuilt secret fits its bytes
//! branches, and it says no more than whether the shares were right).
//!
//! A secret is cut into five limbs of at most 56 bits (7 + 7 + 7 + 7 + 4 bytes), each shared
//! with its own random polynomial of degree t − 1, so t shares rebuild it and t − 1 say nothing
//! about it.

use protocol::secagg::{Member, SHARE_BYTES};
use rand::Rng;

/// The field's modulus, 2⁶¹ − 1.
const P: u64 = (1 << 61) - 1;
const LIMBS: usize = 5;

/// One holder's share of a 32-byte secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    /// The holder's member index: the point the polynomials were evaluated at (never 0).
    pub x: Member,
    limbs: [u64; LIMBS],
}

impl std::fmt::Debug for Share {
    // Never prints the values: a share in a log is part of a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share {{ x: {}, .. }}", self.x)
    }
}

/// Why shares do not give a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    #[error("{got} shares: expected at least {threshold}")]
    TooFew { got: usize, threshold: u32 },
    #[error("two shares are for member {0}: expected one per member")]
    Duplicate(Member),
    #[error("a share for member 0: expected members 1 and up")]
    ZeroX,
    #[error("a share is {0} bytes: expected {SHARE_BYTES}")]
    Length(usize),
    #[error("a share holds a value outside the field: it was not made by this scheme")]
    OutOfField,
    #[error("the shares do not rebuild a 32-byte secret: some are wrong")]
    Inconsistent,
    #[error("threshold {threshold} for {holders} holders: expected 1 ≤ threshold ≤ holders")]
    Threshold { threshold: u32, holders: usize },
}

fn reduce(x: u128) -> u64 {
    // x = hi·2⁶¹ + lo ≡ hi + lo (mod 2⁶¹ − 1); twice brings any product below 2P.
    let folded = (x & P as u128) + (x >> 61);
    let folded = (folded & P as u128) + (folded >> 61);
    let r = folded as u64;
    // Subtract P when r ≥ P, without a branch on r.
    let over = ((r >= P) as u64).wrapping_neg();
    r - (P & over)
}

fn add(a: u64, b: u64) -> u64 {
    reduce(a as u128 + b as u128)
}

fn sub(a: u64, b: u64) -> u64 {
    reduce(a as u128 + (P - b) as u128)
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(a as u128 * b as u128)
}

fn pow(mut base: u64, mut exp: u64) -> u64 {
    let mut acc = 1;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}

/// a⁻¹ by Fermat (a ≠ 0); used on public x-coordinates only.
fn inv(a: u64) -> u64 {
    pow(a, P - 2)
}

/// A uniform field element (rejection sampling: 61 random bits, P itself drawn again).
fn random_element(rng: &mut impl Rng) -> u64 {
    loop {
        let v = rng.next_u64() & P;
        if v < P {
            return v;
        }
    }
}

fn limbs_of(secret: &[u8; 32]) -> [u64; LIMBS] {
    let mut limbs = [0u64; LIMBS];
    for (i, chunk) in secret.chunks(7).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        limbs[i] = u64::from_le_bytes(b);
    }
    limbs
}

fn secret_of(limbs: &[u64; LIMBS]) -> Result<[u8; 32], ShamirError> {
    let mut secret = [0u8; 32];
    for (i, chunk) in secret.chunks_mut(7).enumerate() {
        let bytes = limbs[i].to_le_bytes();
        // A limb wider than its bytes was not made from a secret: wrong shares.
        if bytes[chunk.len()..].iter().any(|&b| b != 0) {
            return Err(ShamirError::Inconsistent);
        }
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    Ok(secret)
}

/// Shares `secret` among `holders` (their member indices, distinct, not 0) so that any
/// `threshold` of them rebuild it.
pub fn split(
    secret: &[u8; 32],
    threshold: u32,
    holders: &[Member],
    rng: &mut impl Rng,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 || threshold as usize > holders.len() {
        return Err(ShamirError::Threshold {
            threshold,
            holders: holders.len(),
        });
    }
    check_points(holders.iter().copied())?;
    // coefficients[limb] = [secret limb, random, …] of degree threshold − 1.
    let coefficients: Vec<Vec<u64>> = limbs_of(secret)
        .iter()
        .map(|&s| {
            std::iter::once(s)
                .chain((1..threshold).map(|_| random_element(rng)))
                .collect()
        })
        .collect();
    Ok(holders
        .iter()
        .map(|&x| {
            let mut limbs = [0u64; LIMBS];
            for (limb, poly) in limbs.iter_mut().zip(&coefficients) {
                // Horner's rule at x.
                *limb = poly
                    .iter()
                    .rev()
                    .fold(0, |acc, &c| add(mul(acc, x as u64), c));
            }
            Share { x, limbs }
        })
        .collect())
}

/// Rebuilds a secret from at least `threshold` shares (the first `threshold` are used).
pub fn combine(shares: &[Share], threshold: u32) -> Result<[u8; 32], ShamirError> {
    if threshold == 0 || shares.len() < threshold as usize {
        return Err(ShamirError::TooFew {
            got: shares.len(),
            threshold,
        });
    }
    check_points(shares.iter().map(|s| s.x))?;
    let used = &shares[..threshold as usize];
    // Lagrange basis at 0: ℓ_i(0) = Π_{j≠i} x_j / (x_j − x_i).
    let basis: Vec<u64> = used
        .iter()
        .map(|si| {
            used.iter().filter(|sj| sj.x != si.x).fold(1, |acc, sj| {
                let (xi, xj) = (si.x as u64, sj.x as u64);
                mul(acc, mul(xj, inv(sub(xj, xi))))
            })
        })
        .collect();
    let mut limbs = [0u64; LIMBS];
    for (k, limb) in limbs.iter_mut().enumerate() {
        *limb = used
            .iter()
            .zip(&basis)
            .fold(0, |acc, (s, &l)| add(acc, mul(s.limbs[k], l)));
    }
    secret_of(&limbs)
}

fn check_points(points: impl Iterator<Item = Member>) -> Result<(), ShamirError> {
    let mut seen = std::collections::BTreeSet::new();
    for x in points {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if !seen.insert(x) {
            return Err(ShamirError::Duplicate(x));
        }
    }
    Ok(())
}

impl Share {
    /// `x` (4 bytes, little-endian) then the five limbs (8 bytes each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SHARE_BYTES);
        out.extend_from_slice(&self.x.to_le_bytes());
        for limb in self.limbs {
            out.extend_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Reads [`Share::to_bytes`]'s layout, refusing values outside the field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ShamirError> {
        if bytes.len() != SHARE_BYTES {
            return Err(ShamirError::Length(bytes.len()));
        }
        let word = |at: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&bytes[at..at + n]);
            u64::from_le_bytes(b)
        };
        let x = word(0, 4) as Member;
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        let mut limbs = [0u64; LIMBS];
        for (k, limb) in limbs.iter_mut().enumerate() {
            *limb = word(4 + 8 * k, 8);
            if *limb >= P {
                return Err(ShamirError::OutOfField);
            }
        }
        Ok(Self { x, limbs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn field_arithmetic_is_modular() {
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(sub(0, 1), P - 1);
        assert_eq!(mul(P - 1, P - 1), 1, "(−1)² = 1");
        for a in [1, 2, 12345, P - 2] {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
        }
        assert_eq!(reduce(P as u128), 0);
        assert!(reduce(u128::from(u64::MAX) * u128::from(u64::MAX)) < P);
    }

    #[test]
    fn any_threshold_of_the_shares_rebuild_the_secret() {
        let mut rng = rng();
        let secret = [0xa5; 32];
        let holders: Vec<Member> = vec![3, 9, 4, 10_000, 27];
        let shares = split(&secret, 3, &holders, &mut rng).unwrap();
        // Every 3-subset, in any order.
        for a in 0..5 {
            for b in 0..5 {
                for c in 0..5 {
                    if a == b || b == c || a == c {
                        continue;
                    }
                    let picked = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    assert_eq!(combine(&picked, 3).unwrap(), secret);
                }
            }
        }
        let all_ones = [0xff; 32];
        let shares = split(&all_ones, 5, &holders, &mut rng).unwrap();
        assert_eq!(combine(&shares, 5).unwrap(), all_ones);
    }

    #[test]
    fn fewer_than_the_threshold_rebuild_nothing() {
        let mut rng = rng();
        let secret = [42; 32];
        let holders = [1, 2, 3, 4];
        let shares = split(&secret, 3, &holders, &mut rng).unwrap();
        assert_eq!(
            combine(&shares[..2], 3),
            Err(ShamirError::TooFew {
                got: 2,
                threshold: 3
            })
        );
        // And they say nothing about it: for any other secret there is a third share that,
        // with the same two, rebuilds that secret instead (the two are as likely under both).
        for other in [[7; 32], [0; 32], [0x5a; 32]] {
            let forged = forge_third(&shares[0], &shares[1], &other, 3);
            let rebuilt = combine(&[shares[0].clone(), shares[1].clone(), forged], 3).unwrap();
            assert_eq!(rebuilt, other);
        }
    }

    /// The share at x that, with `a` and `b`, rebuilds `secret` (degree 2): the quadratic
    /// through (0, secret), (a.x, a), (b.x, b), evaluated at x.
    fn forge_third(a: &Share, b: &Share, secret: &[u8; 32], x: Member) -> Share {
        let s = limbs_of(secret);
        let pts = [(0u64, 0usize), (a.x as u64, 1), (b.x as u64, 2)];
        let mut limbs = [0u64; LIMBS];
        for (k, limb) in limbs.iter_mut().enumerate() {
            let ys = [s[k], a.limbs[k], b.limbs[k]];
            *limb = pts.iter().fold(0, |acc, &(xi, i)| {
                let l = pts
                    .iter()
                    .filter(|&&(xj, _)| xj != xi)
                    .fold(1, |l, &(xj, _)| {
                        mul(l, mul(sub(x as u64, xj), inv(sub(xi, xj))))
                    });
                add(acc, mul(ys[i], l))
            });
        }
        Share { x, limbs }
    }

    #[test]
    fn malformed_shares_and_thresholds_are_refused() {
        let mut rng = rng();
        assert!(matches!(
            split(&[1; 32], 0, &[1, 2], &mut rng),
            Err(ShamirError::Threshold { .. })
        ));
        assert!(matches!(
            split(&[1; 32], 3, &[1, 2], &mut rng),
            Err(ShamirError::Threshold { .. })
        ));
        assert_eq!(
            split(&[1; 32], 1, &[1, 0], &mut rng).unwrap_err(),
            ShamirError::ZeroX
        );
        assert_eq!(
            split(&[1; 32], 1, &[2, 2], &mut rng).unwrap_err(),
            ShamirError::Duplicate(2)
        );
        let shares = split(&[9; 32], 2, &[1, 2, 3], &mut rng).unwrap();
        let bytes = shares[0].to_bytes();
        assert_eq!(bytes.len(), SHARE_BYTES);
        assert_eq!(Share::from_bytes(&bytes).unwrap(), shares[0]);
        assert_eq!(
            Share::from_bytes(&bytes[1..]).unwrap_err(),
            ShamirError::Length(SHARE_BYTES - 1)
        );
        let mut out_of_field = bytes.clone();
        out_of_field[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Share::from_bytes(&out_of_field).unwrap_err(),
            ShamirError::OutOfField
        );
        assert_eq!(
            combine(&[shares[0].clone(), shares[0].clone()], 2).unwrap_err(),
            ShamirError::Duplicate(1)
        );
        // A tampered share rebuilds garbage that is (almost always) caught as no secret at all.
        let mut bad = shares[1].clone();
        bad.limbs[0] = add(bad.limbs[0], 1 << 40);
        assert_ne!(combine(&[shares[0].clone(), bad], 2), Ok([9; 32]));
        assert!(!format!("{:?}", shares[0]).contains(&shares[0].limbs[0].to_string()));
    }
}
