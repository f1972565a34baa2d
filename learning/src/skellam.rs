//! Rényi-DP accountant for the Poisson-subsampled Skellam mechanism: distributed DP-SGD, where
//! each client adds integer Skellam noise to its scaled, rounded gradient sum and secure
//! aggregation reveals only the total. Everything is in units where the clipping norm C = 1:
//!
//! * `noise_multiplier` z: the standard deviation of the *summed* noise over C;
//! * `scale` S: integer units per C (a clipped gradient of norm C has norm S before rounding);
//! * `dim` d: coordinates; `beta` β: the conditional-rounding parameter (0: no conditioning).
//!
//! Sensitivities after rounding (Kairouz, Liu & Steinke, ICML 2021, "The Distributed Discrete
//! Gaussian Mechanism for Federated Learning with Secure Aggregation", Theorem 1): in integer
//! units, with c = S,
//!
//! ```text
//! Δ₂ = min( c + √d,  √(c² + d/4 + √(2 ln(1/β)) · (c + √d/2)) )     (β = 0: c + √d)
//! Δ₁ = Δ₂ · min(√d, Δ₂)                                           (integers: ‖x‖₁ ≤ ‖x‖₂²)
//! ```
//!
//! RDP of one step without sampling (Agarwal, Kairouz & Liu, NeurIPS 2021, "The Skellam Mechanism
//! for Differentially Private Federated Learning", Theorem 3.5), with v = (z·S)² the variance of
//! the summed integer noise:
//!
//! ```text
//! ε(α) = α Δ₂² / (2v) + min( ((2α − 1) Δ₂² + 6 Δ₁) / (4v²),  3 Δ₁ / (2v) )
//! ```
//!
//! Poisson subsampling at rate q (Zhu & Wang, ICML 2019, "Poisson Subsampled Rényi Differential
//! Privacy", Theorem 5, the general upper bound), at each integer order the smaller of it and
//! the unamplified ε(α):
//!
//! ```text
//! ε_q(α) = ln[ (1−q)^{α−1}(αq − q + 1) + C(α,2) q² (1−q)^{α−2} e^{ε(2)}
//!              + 3 Σ_{l=3..α} C(α,l) (1−q)^{α−l} q^l e^{(l−1) ε(l)} ] / (α − 1)
//! ```
//!
//! Steps compose by adding RDP per order, and (ε, δ) comes from the same conversion and the same
//! integer orders 2..=256 as the Gaussian accountant ([`crate::accountant`]).

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Poisson};

use crate::accountant::{
    AccountantError, MAX_NOISE_MULTIPLIER, ORDERS, epsilon_from_rdp, smallest_noise,
};

/// The mechanism of one distributed DP-SGD step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkellamStep {
    /// Poisson sampling rate q, in (0, 1].
    pub sample_rate: f64,
    /// Standard deviation of the summed noise over the clipping norm, > 0.
    pub noise_multiplier: f64,
    /// Integer units per clipping norm, > 0.
    pub scale: f64,
    /// Coordinates of the gradient, ≥ 1.
    pub dim: u64,
    /// Conditional rounding's β in [0, 1); 0: no conditioning.
    pub beta: f64,
}

/// Why Skellam parameters are refused (besides the accountant's own).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SkellamError {
    #[error("{0}")]
    Accountant(#[from] AccountantError),
    #[error("scale is {0}: expected a finite number above 0 (integer units per clipping norm)")]
    Scale(f64),
    #[error("dim is 0: expected at least 1 coordinate")]
    Dim,
    #[error("beta is {0}: expected a number at least 0 and below 1 (0: no conditional rounding)")]
    Beta(f64),
    #[error(
        "Skellam variance is {0}: expected a finite number above 0 and at most 2^51 (past it, f64 Poisson draws lose their low bits)"
    )]
    Variance(f64),
    #[error("steps is 0: expected at least 1 step to solve a noise multiplier for")]
    Steps,
    #[error(
        "after {tries} draws the rounded vector's norm stayed above {bound}: the input is longer than the clipping norm allows"
    )]
    Rounding { tries: u32, bound: f64 },
    #[error(
        "the vector to round is not finite (or overflows at this scale): expected finite values"
    )]
    NotFinite,
}

/// One draw of symmetric Skellam noise with the given variance: the difference of two
/// independent Poisson(variance / 2) draws (rand_distr: Knuth's method for small means, Ahrens
/// & Dieter's floating-point rejection method for large ones — checked against the exact pmf in
/// the tests), from `rng`, the OS-seeded ChaCha20 of the client.
pub fn sample(variance: f64, rng: &mut impl Rng) -> Result<i64, SkellamError> {
    // Beyond 2⁵⁰ per side an f64 draw is no longer every integer (its low bits, hence the
    // noise's parity, would be fixed) and past 2⁶³ `as i64` saturates: refused.
    if !(variance > 0.0 && variance / 2.0 <= (1u64 << 50) as f64) {
        return Err(SkellamError::Variance(variance));
    }
    let poisson = Poisson::new(variance / 2.0).map_err(|_| SkellamError::Variance(variance))?;
    let a: f64 = poisson.sample(rng);
    let b: f64 = poisson.sample(rng);
    Ok(a as i64 - b as i64)
}

/// A vector of `len` independent Skellam draws of the given variance.
pub fn noise(variance: f64, len: usize, rng: &mut impl Rng) -> Result<Vec<i64>, SkellamError> {
    (0..len).map(|_| sample(variance, rng)).collect()
}

/// Conditional randomized rounding (Kairouz, Liu & Steinke 2021, §4.1): `x · scale` rounded
/// coordinate-wise up or down with the probabilities that make each draw unbiased, drawn again
/// until the rounded vector's L2 norm is at most `bound` (Δ₂ of [`SkellamStep::sensitivities`]
/// for the input's clipping norm), so the sensitivity the accountant uses holds exactly. (The
/// redraws bias the result slightly toward shorter vectors; with β ≤ e^−0.5 rarely.)
///
/// Each coordinate's draw is 32 random bits (up with probability ⌈frac · 2³²⌉ / 2³², at most
/// 2⁻³² above frac): half the keystream of a 64-bit float draw, for what was 29–36 % of a
/// distributed step's compute natively (`benchmarks/distributed-step-parts.log`). The bias is a
/// utility matter only: privacy rests on the norm bound, which is checked on the rounded vector
/// itself.
pub fn conditional_round(
    x: &[f32],
    scale: f64,
    bound: f64,
    rng: &mut impl Rng,
) -> Result<Vec<i64>, SkellamError> {
    let mut rounding = ConditionalRounding::default();
    let rounded = rounding.round(x, scale, bound, rng)?;
    Ok(rounded.iter().map(|&r| r as i64).collect())
}

/// [`conditional_round`] with its buffers kept from one vector to the next: a distributed step
/// rounds hundreds of 12 810-value gradients, and two fresh buffers of that size each time are
/// page faults as much as work. The same draws in the same order: the same integers.
#[derive(Debug, Default)]
pub struct ConditionalRounding {
    draws: Vec<u32>,
    rounded: Vec<f64>,
}

impl ConditionalRounding {
    /// `x · scale` conditionally rounded ([`conditional_round`]), in a buffer valid until the
    /// next call. Whole numbers held as f64 (exact below 2⁵³, and `as i64` saturates above, as
    /// an i64 result would): the loop has no integer conversion, so it vectorises in wasm.
    pub fn round(
        &mut self,
        x: &[f32],
        scale: f64,
        bound: f64,
        rng: &mut impl Rng,
    ) -> Result<&[f64], SkellamError> {
        const TRIES: u32 = 1000;
        self.draws.resize(x.len(), 0);
        self.rounded.resize(x.len(), 0.0);
        for _ in 0..TRIES {
            rng.fill(&mut self.draws[..]);
            for ((r, &v), &u) in self.rounded.iter_mut().zip(x).zip(&self.draws) {
                *r = round_one(f64::from(v) * scale, u);
            }
            let norm = crate::kernels::sum_squares(&self.rounded).sqrt();
            if norm <= bound {
                return Ok(&self.rounded);
            }
            if !norm.is_finite() {
                // A non-finite input (or one that overflows at this scale) rounds to the same
                // non-finite values whatever the draws: no redraw can help.
                return Err(SkellamError::NotFinite);
            }
        }
        Err(SkellamError::Rounding {
            tries: TRIES,
            bound,
        })
    }
}

/// `y` rounded down, or up when the 32-bit draw `u` is below its fraction × 2³².
fn round_one(y: f64, u: u32) -> f64 {
    const TWO_32: f64 = 4_294_967_296.0;
    let floor = floor(y);
    let up = f64::from(u) < (y - floor) * TWO_32;
    floor + if up { 1.0 } else { 0.0 }
}

/// ⌊y⌋: one instruction in wasm (also in SIMD128, so the rounding loop vectorises there).
#[cfg(target_arch = "wasm32")]
fn floor(y: f64) -> f64 {
    y.floor()
}

/// ⌊y⌋ from the truncation toward zero, one less for a negative y with a fraction: x86-64
/// without SSE4.1 has no floor instruction and `f64::floor` is a call. Above 2⁵² in size y has
/// no fraction (and would not fit the i64), so it is its own floor; so are ±∞ and NaN.
#[cfg(not(target_arch = "wasm32"))]
fn floor(y: f64) -> f64 {
    let fraction_possible = y.abs() < 4_503_599_627_370_496.0; // false for NaN too
    if !fraction_possible {
        return y;
    }
    let t = y as i64 as f64;
    t - if y < t { 1.0 } else { 0.0 }
}

impl SkellamStep {
    /// The step of a ledger's mechanism; `alone`: this client's own noise share only (noise
    /// multiplier z/√t, every other contributor colluding with the server).
    pub fn of(m: &protocol::ledger::SkellamMechanism, alone: bool) -> Self {
        let own = if alone {
            f64::from(m.contributors.max(1)).sqrt()
        } else {
            1.0
        };
        Self {
            sample_rate: m.sample_rate,
            noise_multiplier: m.noise_multiplier / own,
            scale: m.scale,
            dim: m.dim,
            beta: m.beta,
        }
    }

    fn check(&self) -> Result<(), SkellamError> {
        crate::accountant::check_params(self.sample_rate, self.noise_multiplier)?;
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(SkellamError::Scale(self.scale));
        }
        if self.dim == 0 {
            return Err(SkellamError::Dim);
        }
        if !(0.0..1.0).contains(&self.beta) {
            return Err(SkellamError::Beta(self.beta));
        }
        Ok(())
    }

    /// (Δ₂, Δ₁) in integer units after (conditional) randomized rounding.
    pub fn sensitivities(&self) -> (f64, f64) {
        let l2 = protocol::config::rounded_norm_bound(self.scale, self.dim, self.beta);
        (l2, l2 * (self.dim as f64).sqrt().min(l2))
    }

    /// RDP of one step without sampling at order `alpha` (Agarwal, Kairouz & Liu, Thm 3.5).
    pub fn unsampled_rdp(&self, alpha: u32) -> f64 {
        let (l2, l1) = self.sensitivities();
        let v = (self.noise_multiplier * self.scale).powi(2);
        let a = alpha as f64;
        a * l2 * l2 / (2.0 * v)
            + (((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * v * v)).min(3.0 * l1 / (2.0 * v))
    }

    /// RDP of one step with Poisson sampling at order `alpha`: the smaller of Zhu & Wang's
    /// Theorem 5 and the unamplified bound.
    pub fn rdp(&self, alpha: u32) -> f64 {
        let plain = self.unsampled_rdp(alpha);
        if self.sample_rate >= 1.0 {
            return plain;
        }
        plain.min(poisson_subsampled(alpha, self.sample_rate, |l| {
            self.unsampled_rdp(l)
        }))
    }
}

/// Zhu & Wang's Theorem 5 at integer order `alpha` ≥ 2, for a mechanism with RDP `eps(l)`,
/// in log space (a sum of up to 256 terms whose exponents reach the hundreds).
fn poisson_subsampled(alpha: u32, q: f64, eps: impl Fn(u32) -> f64) -> f64 {
    let a = alpha as f64;
    let (ln_q, ln_1q) = (q.ln(), (-q).ln_1p());
    let mut ln_binom = a.ln() + (a - 1.0).ln() - 2f64.ln(); // ln C(α, 2)
    let mut terms = vec![
        (a - 1.0) * ln_1q + (a * q - q + 1.0).ln(),
        ln_binom + 2.0 * ln_q + (a - 2.0) * ln_1q + eps(2),
    ];
    for l in 3..=alpha {
        let lf = l as f64;
        ln_binom += (a - lf + 1.0).ln() - lf.ln(); // C(α, l) from C(α, l − 1)
        terms.push(3f64.ln() + ln_binom + (a - lf) * ln_1q + lf * ln_q + (lf - 1.0) * eps(l));
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    (max + sum.ln()) / (a - 1.0)
}

/// ε after `steps` identical steps, at `delta`.
pub fn epsilon(step: &SkellamStep, steps: u64, delta: f64) -> Result<f64, SkellamError> {
    step.check()?;
    if !(delta > 0.0 && delta < 1.0) {
        return Err(AccountantError::Delta(delta).into());
    }
    let rdp: Vec<f64> = ORDERS.map(|a| steps as f64 * step.rdp(a)).collect();
    Ok(epsilon_from_rdp(&rdp, delta))
}

/// The smallest noise multiplier (to 1e-4 relative) that keeps ε at or below `target`; the
/// returned z always meets it (bisection keeps the upper end).
pub fn noise_multiplier_for(
    target: f64,
    step: &SkellamStep,
    steps: u64,
    delta: f64,
) -> Result<f64, SkellamError> {
    if !(target > 0.0 && target.is_finite()) {
        return Err(AccountantError::TargetEpsilon(target).into());
    }
    if steps == 0 {
        return Err(SkellamError::Steps);
    }
    let eps = |z: f64| {
        epsilon(
            &SkellamStep {
                noise_multiplier: z,
                ..*step
            },
            steps,
            delta,
        )
    };
    smallest_noise(target, eps)?.ok_or(
        AccountantError::Unreachable {
            target,
            q: step.sample_rate,
            steps,
            delta,
            max: MAX_NOISE_MULTIPLIER,
        }
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(q: f64, z: f64) -> SkellamStep {
        SkellamStep {
            sample_rate: q,
            noise_multiplier: z,
            scale: 1000.0,
            dim: 12_810,
            beta: 0.0,
        }
    }

    /// The (ε, δ) conversion written out again, independently of the accountant's code.
    fn convert(rdp: impl Fn(f64) -> f64, delta: f64) -> f64 {
        (2..=256)
            .map(|a| {
                let a = a as f64;
                rdp(a) + ((a - 1.0) / a).ln() - (delta.ln() + a.ln()) / (a - 1.0)
            })
            .fold(f64::INFINITY, f64::min)
            .max(0.0)
    }

    #[test]
    fn without_sampling_it_is_the_plain_skellam_bound() {
        // Computed here from the paper's formula in its own units (μ = v/2 per Poisson side):
        // ε(α) = α Δ₂²/(4μ) + min(((2α−1)Δ₂² + 6Δ₁)/(16μ²), 3Δ₁/(4μ)).
        let (z, s, d) = (1.2_f64, 1000.0_f64, 12_810.0_f64);
        let l2 = s + d.sqrt();
        let l1 = l2 * d.sqrt().min(l2);
        let mu = (z * s).powi(2) / 2.0;
        let per_step = |a: f64| {
            a * l2 * l2 / (4.0 * mu)
                + (((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu))
                    .min(3.0 * l1 / (4.0 * mu))
        };
        let steps = 100.0;
        let want = convert(|a| steps * per_step(a), 1e-5);
        let got = epsilon(&step(1.0, z), 100, 1e-5).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
        // β conditions the rounding: a smaller Δ₂, hence a smaller ε.
        let conditioned = SkellamStep {
            beta: (-0.5f64).exp(),
            ..step(1.0, z)
        };
        assert!(conditioned.sensitivities().0 < l2);
        assert!(epsilon(&conditioned, 100, 1e-5).unwrap() < got);
    }

    #[test]
    fn pinned_to_an_independent_port_of_googles_reference_code() {
        // The central DP run's mechanism; the values come from a Python port of Google's
        // federated/distributed_dp accounting_utils (skellam_epsilon) over orders 2..=256.
        let central = |beta: f64| SkellamStep {
            sample_rate: 2048.0 / 60_000.0,
            noise_multiplier: 1.949,
            scale: 1000.0,
            dim: 12_810,
            beta,
        };
        for (beta, want) in [(0.0, 4.278699), ((-0.5f64).exp(), 3.855653)] {
            let got = epsilon(&central(beta), 1200, 1e-5).unwrap();
            assert!((got - want).abs() < 5e-6, "β {beta}: {got} vs {want}");
        }
    }

    #[test]
    fn both_branches_of_the_bound_and_the_conditioned_sensitivity() {
        // Tiny noise (S = 1, d = 1, z = 0.5, v = 0.25): Δ₂ = 2, Δ₁ = 2, and 3Δ₁/(2v) = 12 is the
        // smaller second term at α = 2 (the other is ((3)·4 + 12)/(4·0.0625) = 96).
        let tiny = SkellamStep {
            sample_rate: 1.0,
            noise_multiplier: 0.5,
            scale: 1.0,
            dim: 1,
            beta: 0.0,
        };
        assert_eq!(tiny.sensitivities(), (2.0, 2.0));
        assert!((tiny.unsampled_rdp(2) - (2.0 * 4.0 / 0.5 + 12.0)).abs() < 1e-12);
        // Conditioned: c = 100, d = 400, β = e^−2: √(10⁴ + 100 + 2·(100 + 10)) = √10 320.
        let conditioned = SkellamStep {
            scale: 100.0,
            dim: 400,
            beta: (-2.0f64).exp(),
            ..tiny
        };
        let (l2, l1) = conditioned.sensitivities();
        assert!((l2 - 10_320f64.sqrt()).abs() < 1e-9, "{l2}");
        assert!((l1 - l2 * 20.0).abs() < 1e-9);
        assert_eq!(
            noise_multiplier_for(3.0, &tiny, 0, 1e-5).unwrap_err(),
            SkellamError::Steps
        );
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert!(
            sample(2.0f64.powi(52), &mut rng).is_err(),
            "too large for exact draws"
        );
    }

    #[test]
    fn sampling_follows_zhu_and_wang_and_never_exceeds_the_plain_bound() {
        // Theorem 5 summed in plain floating point at a small order, where nothing overflows.
        let s = step(0.05, 2.0);
        let q = 0.05_f64;
        let eps = |l: u32| s.unsampled_rdp(l);
        let alpha = 6u32;
        let a = alpha as f64;
        let binom =
            |n: u32, k: u32| (1..=k).fold(1.0, |acc, i| acc * (n - k + i) as f64 / i as f64);
        let mut sum = (1.0 - q).powf(a - 1.0) * (a * q - q + 1.0)
            + binom(alpha, 2) * q * q * (1.0 - q).powf(a - 2.0) * eps(2).exp();
        for l in 3..=alpha {
            sum += 3.0
                * binom(alpha, l)
                * (1.0 - q).powi((alpha - l) as i32)
                * q.powi(l as i32)
                * ((l as f64 - 1.0) * eps(l)).exp();
        }
        let want = sum.ln() / (a - 1.0);
        let got = poisson_subsampled(alpha, q, eps);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        for alpha in [2, 3, 10, 64, 256] {
            assert!(s.rdp(alpha) <= s.unsampled_rdp(alpha));
            assert!(
                s.rdp(alpha) < s.unsampled_rdp(alpha),
                "sampling amplifies at order {alpha}"
            );
        }
    }

    #[test]
    fn epsilon_falls_with_noise_and_rises_with_steps_and_the_target_is_met() {
        let e = |z: f64, n: u64| epsilon(&step(0.1, z), n, 1e-5).unwrap();
        assert!(e(1.0, 100) > e(2.0, 100));
        assert!(e(1.0, 200) > e(1.0, 100));
        let z = noise_multiplier_for(3.0, &step(0.1, 1.0), 300, 1e-5).unwrap();
        assert!(e(z, 300) <= 3.0 && e(z * 0.99, 300) > 3.0, "z {z}");
    }

    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    /// The exact Skellam pmf at k: Σ_j Pois(j + |k|) Pois(j), by the Poisson pmf's recurrence.
    fn skellam_pmf(mu: f64, k: i64) -> f64 {
        let pois = |n: u64| {
            (-mu + n as f64 * mu.ln() - (1..=n).map(|i| (i as f64).ln()).sum::<f64>()).exp()
        };
        (0..200u64)
            .map(|j| pois(j + k.unsigned_abs()) * pois(j))
            .sum()
    }

    #[test]
    fn the_sampler_follows_the_skellam_distribution() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let variance = 7.0; // μ = 3.5 per side
        let n = 1_000_000;
        let draws = noise(variance, n, &mut rng).unwrap();
        let mean = draws.iter().sum::<i64>() as f64 / n as f64;
        let var = draws
            .iter()
            .map(|&d| (d as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        // Standard errors: √(7/10⁶) ≈ 0.0026 for the mean; the variance within 1 %.
        assert!(mean.abs() < 0.011, "mean {mean}");
        assert!((var / variance - 1.0).abs() < 0.01, "variance {var}");
        // χ² against the exact pmf over −12..=12, the rest pooled into two tails.
        let mu = variance / 2.0;
        let mut observed = [0u64; 27];
        for &d in &draws {
            observed[(d.clamp(-13, 13) + 13) as usize] += 1;
        }
        let inner: f64 = (-12..=12).map(|k| skellam_pmf(mu, k)).sum();
        let tail = (1.0 - inner) / 2.0;
        let chi2: f64 = (0..27)
            .map(|i| {
                let k = i as i64 - 13;
                let p = if k.abs() == 13 {
                    tail
                } else {
                    skellam_pmf(mu, k)
                };
                let expected = p * n as f64;
                (observed[i] as f64 - expected).powi(2) / expected
            })
            .sum();
        // 26 degrees of freedom: the 99.99 % quantile is 60.
        assert!(chi2 < 60.0, "χ² = {chi2}");
        // The far tail: |K| ≥ 13 as often as the pmf says (within 5 standard errors).
        let far = (observed[0] + observed[26]) as f64;
        let want = 2.0 * tail * n as f64;
        assert!(
            (far - want).abs() < 5.0 * want.sqrt() + 1.0,
            "{far} vs {want}"
        );
        // A large variance: the same moments.
        let big = noise(2.0e5, 100_000, &mut rng).unwrap();
        let v = big.iter().map(|&d| (d as f64).powi(2)).sum::<f64>() / big.len() as f64;
        assert!((v / 2.0e5 - 1.0).abs() < 0.02, "variance {v}");
        assert!(sample(0.0, &mut rng).is_err() && sample(f64::NAN, &mut rng).is_err());
    }

    #[test]
    fn shares_add_up_to_the_full_variance() {
        // t clients each add variance V / t: the sum has variance V.
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let (total, t, n) = (400.0, 10, 100_000);
        let sums: Vec<f64> = (0..n)
            .map(|_| {
                (0..t)
                    .map(|_| sample(total / t as f64, &mut rng).unwrap())
                    .sum::<i64>() as f64
            })
            .collect();
        let var = sums.iter().map(|s| s * s).sum::<f64>() / n as f64;
        assert!((var / total - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn rounding_is_the_floor_plus_one_with_the_fractions_chance() {
        // What `round_one` must equal on any input: ⌊y⌋ by `f64::floor`, up when the draw is
        // below the fraction, as a saturating i64 (huge, infinite and NaN inputs included).
        let exact = |y: f64, u: u32| {
            let floor = y.floor();
            let up = f64::from(u) < (y - floor) * 4_294_967_296.0;
            (floor as i64).saturating_add(i64::from(up))
        };
        let mut rng = ChaCha20Rng::seed_from_u64(17);
        let mut ys = vec![0.0, -0.0, 0.5, -0.5, -1.0, -1.25, 3.999_999, -3.000_001];
        ys.extend([
            2f64.powi(52) - 0.5,
            -(2f64.powi(52)) + 0.5,
            2f64.powi(52),
            2f64.powi(60),
        ]);
        ys.extend([
            1e300,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -(2f64.powi(63)),
        ]);
        ys.extend((0..2000).map(|_| (rng.random::<f64>() - 0.5) * 8192.0));
        for y in ys {
            for u in [0, 1, 1 << 31, u32::MAX, rng.random()] {
                assert_eq!(round_one(y, u) as i64, exact(y, u), "y = {y}, u = {u}");
            }
        }
    }

    #[test]
    fn the_squared_norm_counts_every_value() {
        // Eight sums side by side and a tail: every length up to two rounds of eight and a tail.
        for len in 0..20 {
            let v: Vec<f64> = (1..=len).map(|i| i as f64).collect();
            let plain: f64 = v.iter().map(|r| r * r).sum();
            assert_eq!(crate::kernels::sum_squares(&v), plain, "length {len}");
        }
    }

    #[test]
    fn a_vector_that_is_not_finite_is_refused_without_redraws() {
        for x in [vec![0.5, f32::NAN], vec![f32::INFINITY, 0.0]] {
            let mut rng = ChaCha20Rng::seed_from_u64(18);
            let err = conditional_round(&x, 10.0, 100.0, &mut rng).unwrap_err();
            assert!(matches!(err, SkellamError::NotFinite), "{err}");
            // One draw for each value, not a thousand.
            let mut once = ChaCha20Rng::seed_from_u64(18);
            once.fill(&mut vec![0u32; x.len()][..]);
            assert_eq!(once.random::<u64>(), rng.random::<u64>());
        }
        // Finite values that overflow at this scale: the same.
        let mut rng = ChaCha20Rng::seed_from_u64(19);
        let err = conditional_round(&[1.0, 1.0], 1e300, 1e10, &mut rng).unwrap_err();
        assert!(matches!(err, SkellamError::NotFinite), "{err}");
    }

    #[test]
    fn whole_numbers_round_to_themselves() {
        // frac 0: never up (a 32-bit draw is never below 0); negative ones keep their floor.
        let mut rng = ChaCha20Rng::seed_from_u64(16);
        for _ in 0..50 {
            let r = conditional_round(&[0.0, 1.0, -1.0, 2.0, -3.0], 1.0, 10.0, &mut rng).unwrap();
            assert_eq!(r, [0, 1, -1, 2, -3]);
        }
    }

    #[test]
    fn conditional_rounding_never_exceeds_its_bound_and_is_unbiased() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        let (scale, dim) = (50.0, 402usize); // not a multiple of 4: the norm's tail counts
        let beta = (-0.5f64).exp();
        let step = SkellamStep {
            sample_rate: 1.0,
            noise_multiplier: 1.0,
            scale,
            dim: dim as u64,
            beta,
        };
        let (bound, _) = step.sensitivities();
        assert!(
            bound < scale + (dim as f64).sqrt(),
            "β tightens the plain bound"
        );
        // Inputs of norm exactly 1 (the clipping norm), in every direction tried.
        let mut sum = vec![0f64; dim];
        let x: Vec<f32> = (0..dim).map(|i| (i * 37 % 11) as f32 - 5.0).collect();
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let x: Vec<f32> = x.iter().map(|v| v / norm).collect();
        for _ in 0..2000 {
            let r = conditional_round(&x, scale, bound, &mut rng).unwrap();
            let n = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(n <= bound, "{n} > {bound}");
            for (s, v) in sum.iter_mut().zip(&r) {
                *s += *v as f64;
            }
        }
        for (s, v) in sum.iter().zip(&x) {
            assert!(
                (s / 2000.0 - *v as f64 * scale).abs() < 0.1,
                "biased: {s} vs {v}"
            );
        }
        // A vector longer than the clipping norm cannot be brought under the bound.
        let long: Vec<f32> = x.iter().map(|v| v * 3.0).collect();
        assert!(matches!(
            conditional_round(&long, scale, bound, &mut rng),
            Err(SkellamError::Rounding { .. })
        ));
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = |s: SkellamStep| epsilon(&s, 10, 1e-5).unwrap_err().to_string();
        assert!(
            bad(SkellamStep {
                scale: 0.0,
                ..step(0.1, 1.0)
            })
            .contains("scale is 0")
        );
        assert!(
            bad(SkellamStep {
                dim: 0,
                ..step(0.1, 1.0)
            })
            .contains("dim is 0")
        );
        assert!(
            bad(SkellamStep {
                beta: 1.0,
                ..step(0.1, 1.0)
            })
            .contains("beta is 1")
        );
        assert!(bad(step(0.0, 1.0)).contains("sample_rate is 0"));
    }
}
