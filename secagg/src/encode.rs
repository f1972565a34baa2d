//! Floats to the integers secure aggregation sums, and back.
//!
//! A member sends `[w, w·u₁, …, w·u_d]` (as Flower's SecAgg+ does): `w` its FedAvg weight in
//! [0, 1] (its examples over the run's largest weight), `u` its update. Each value is clipped to
//! its range and mapped onto `0..=levels` by stochastic rounding, which is unbiased, so the sum
//! of n members decodes to `Σ w·u / Σ w`, the weighted mean, within `n · 2·clip / levels` per
//! coordinate. The sum of n values of at most `levels` must stay below 2³² (the masks live
//! mod 2³²): [`Encoding::check`] refuses a cohort for which it could wrap.
//!
//! Integer vectors (distributed DP-SGD) need no encoding: [`wrap_integers`] sends their residues
//! mod 2³², [`unwrap_sum`] reads the sum back as signed (`protocol::config::distributed_sum_fits`
//! checks that the true sum cannot leave the signed 32-bit range).

use rand::Rng;

/// How updates are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    /// Update values are clipped to [−clip, clip] (after weighting).
    pub clip: f32,
    /// A value maps to an integer in `0..=levels`.
    pub levels: u32,
}

impl Default for Encoding {
    /// Flower's defaults: clip 8, 2²² levels (a cohort of up to 1 023 members).
    fn default() -> Self {
        Self {
            clip: 8.0,
            levels: 1 << 22,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodingError {
    #[error(
        "{members} members × {levels} levels can reach {total}, past 2^32 − 1: the sum would wrap (at most {max} members with these levels)"
    )]
    Overflow {
        members: u64,
        levels: u32,
        total: u128,
        max: u32,
    },
    #[error("clip is {0}: expected a finite number above 0")]
    Clip(f32),
    #[error("levels is {0}: expected at least 2")]
    Levels(u32),
    #[error("weight is {0}: expected a number from 0 to 1")]
    Weight(f64),
    #[error(
        "a sum of {actual} values for updates of {expected}: expected the weight and every coordinate"
    )]
    Length { expected: usize, actual: usize },
    #[error("the summed weight is 0: no member counted")]
    NoWeight,
}

impl Encoding {
    /// Most members whose sum cannot wrap 2³².
    pub fn max_members(&self) -> u32 {
        protocol::secagg::max_members(self.levels)
    }

    /// Refuses an encoding that is not one, or a cohort whose sum could wrap.
    pub fn check(&self, members: u32) -> Result<(), EncodingError> {
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(EncodingError::Clip(self.clip));
        }
        if self.levels < 2 {
            return Err(EncodingError::Levels(self.levels));
        }
        let total = members as u128 * self.levels as u128;
        if total > u32::MAX as u128 {
            return Err(EncodingError::Overflow {
                members: members as u64,
                levels: self.levels,
                total,
                max: self.max_members(),
            });
        }
        Ok(())
    }

    /// `[w, w·update]` as integers in `0..=levels`, for `update.len() + 1` values.
    pub fn encode(
        &self,
        weight: f64,
        update: &[f32],
        rng: &mut impl Rng,
    ) -> Result<Vec<u32>, EncodingError> {
        self.check(1)?;
        if !(0.0..=1.0).contains(&weight) {
            return Err(EncodingError::Weight(weight));
        }
        let levels = self.levels as f64;
        let clip = self.clip as f64;
        let mut out = Vec::with_capacity(update.len() + 1);
        out.push(stochastic_round(weight * levels, self.levels, rng));
        for &u in update {
            // NaN clips to 0 (the update was checked finite before; never trust it here).
            let v = (weight * u as f64).clamp(-clip, clip);
            let v = if v.is_nan() { 0.0 } else { v };
            out.push(stochastic_round(
                (v + clip) * levels / (2.0 * clip),
                self.levels,
                rng,
            ));
        }
        Ok(out)
    }

    /// The weighted mean update from the sum of `members` encoded vectors, and the total
    /// weight.
    pub fn decode(&self, sum: &[u32], members: u32) -> Result<(Vec<f32>, f64), EncodingError> {
        self.check(members)?;
        let Some((&w_sum, values)) = sum.split_first() else {
            return Err(EncodingError::Length {
                expected: 1,
                actual: 0,
            });
        };
        let levels = self.levels as f64;
        let clip = self.clip as f64;
        let total_weight = w_sum as f64 / levels;
        if w_sum == 0 {
            return Err(EncodingError::NoWeight);
        }
        let mean = values
            .iter()
            .map(|&q| {
                let summed = q as f64 * 2.0 * clip / levels - members as f64 * clip;
                (summed / total_weight) as f32
            })
            .collect();
        Ok((mean, total_weight))
    }
}

/// Integer vectors — distributed DP-SGD's rounded gradient sums plus Skellam noise — travel as
/// their two's-complement residues mod 2³², and the sum is read back as signed: exact whenever
/// every coordinate of the true *sum* lies in [−2³¹, 2³¹), which the run config and each
/// round's plan check (`protocol::config::distributed_sum_fits`). One member's value past that range is not refused: only the total has
/// to fit, and a refusal that depended on the noise drawn would be a dropout that leaks.
pub fn wrap_integers(values: &[i64]) -> Vec<u32> {
    values.iter().map(|&v| v as u32).collect()
}

/// The signed sum from its residues mod 2³².
pub fn unwrap_sum(sum: &[u32]) -> Vec<i64> {
    sum.iter().map(|&s| i64::from(s as i32)).collect()
}

/// `x` (in [0, max]) to ⌊x⌋ or ⌈x⌉, the latter with probability x − ⌊x⌋: unbiased.
fn stochastic_round(x: f64, max: u32, rng: &mut impl Rng) -> u32 {
    let x = x.clamp(0.0, max as f64);
    let floor = x.floor();
    let frac = x - floor;
    // 53 random bits: a uniform in [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let up = (u < frac) as u32;
    (floor as u32).saturating_add(up).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    #[test]
    fn the_sum_decodes_to_the_weighted_mean_within_the_rounding_error() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let e = Encoding::default();
        let updates = [
            vec![0.5f32, -1.25, 3.0, 0.0],
            vec![-0.5, 2.0, -7.5, 1e-6],
            vec![0.1, 0.2, 0.3, 0.4],
        ];
        let weights = [1.0, 0.25, 0.5];
        let mut sum = vec![0u32; 5];
        for (u, &w) in updates.iter().zip(&weights) {
            for (s, q) in sum.iter_mut().zip(e.encode(w, u, &mut rng).unwrap()) {
                *s = s.wrapping_add(q);
            }
        }
        let (mean, total) = e.decode(&sum, 3).unwrap();
        let w_total: f64 = weights.iter().sum();
        assert!((total - w_total).abs() < 3.0 / e.levels as f64);
        for k in 0..4 {
            let want: f64 = updates
                .iter()
                .zip(&weights)
                .map(|(u, &w)| w * u[k] as f64)
                .sum::<f64>()
                / w_total;
            // Each member's value is off by at most one level (2·clip/levels) before division.
            let bound = 3.0 * 2.0 * e.clip as f64 / e.levels as f64 / w_total + 1e-6;
            assert!(
                (mean[k] as f64 - want).abs() <= bound,
                "{k}: {} vs {want}",
                mean[k]
            );
        }
    }

    #[test]
    fn values_past_the_clip_are_clipped_and_rounding_is_unbiased() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let e = Encoding {
            clip: 1.0,
            levels: 4,
        };
        let q = e.encode(1.0, &[5.0, -5.0, f32::NAN], &mut rng).unwrap();
        assert_eq!(q, [4, 4, 0, 2]);
        // 0.3 of a level up, on average over many draws.
        let mean: f64 = (0..20_000)
            .map(|_| stochastic_round(1.3, 4, &mut rng) as f64)
            .sum::<f64>()
            / 20_000.0;
        assert!((mean - 1.3).abs() < 0.02, "{mean}");
    }

    #[test]
    fn integer_vectors_sum_exactly_mod_two_to_the_32() {
        let members = [
            vec![5i64, -7, 2_000_000_000, -2_000_000_000],
            vec![-5, 3, 100_000_000, -100_000_000],
            vec![0, -1, -1_000_000_000, 1_000_000_000],
        ];
        let mut sum = vec![0u32; 4];
        for m in &members {
            for (s, w) in sum.iter_mut().zip(wrap_integers(m)) {
                *s = s.wrapping_add(w);
            }
        }
        // Each coordinate of the true sum is within the signed range: read back exactly.
        assert_eq!(unwrap_sum(&sum), [0, -5, 1_100_000_000, -1_100_000_000]);
        // One member past the range is fine while the total is within it.
        let big = [wrap_integers(&[3 << 30]), wrap_integers(&[-(3 << 30)])];
        assert_eq!(unwrap_sum(&[big[0][0].wrapping_add(big[1][0])]), [0]);
    }

    #[test]
    fn a_cohort_that_could_wrap_the_modulus_is_refused() {
        let e = Encoding::default();
        assert_eq!(e.max_members(), 1023);
        assert!(e.check(1023).is_ok());
        let err = e.check(1024).unwrap_err();
        assert!(err.to_string().contains("at most 1023 members"), "{err}");
        assert!(
            Encoding {
                clip: 0.0,
                levels: 4
            }
            .check(1)
            .is_err()
        );
        assert!(
            Encoding {
                clip: 1.0,
                levels: 1
            }
            .check(1)
            .is_err()
        );
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        assert!(e.encode(1.5, &[0.0], &mut rng).is_err());
        assert_eq!(e.decode(&[0, 7], 1).unwrap_err(), EncodingError::NoWeight);
    }
}
