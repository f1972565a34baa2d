//! The privacy ledger ([`PrivacyLedger`]) and its Rényi-DP accountant for the
//! Poisson-subsampled Gaussian mechanism (DP-SGD). A ledger's ε is the tight one: the PLD
//! accountant's ([`crate::pld`]) where it applies, never above RDP's; RDP stays available
//! ([`rdp_epsilon`], [`PrivacyLedger::rdp_epsilon`]) to compare, and it is the fast first check
//! of a budget ([`PrivacyLedger::allows`]).
//!
//! RDP of one step at integer order α (Mironov, Talwar, Zhang 2019, §3.3, "Rényi Differential
//! Privacy of the Sampled Gaussian Mechanism"):
//!
//! ```text
//! A_α = Σ_{k=0..α} C(α,k) (1−q)^{α−k} q^k exp((k² − k) / (2σ²)),   RDP(α) = ln A_α / (α − 1)
//! ```
//!
//! Steps compose by adding RDP per order; (ε, δ) comes from the conversion of Balle et al. 2020
//! (Theorem 21), the one Opacus uses:
//! `ε = min_α RDP(α) − (ln δ + ln α)/(α − 1) + ln((α − 1)/α)`.
//!
//! Why only integer orders 2..=256: the sum above is exact for them, with no special functions
//! and no series truncation, so nothing here can round ε down. Dropping Opacus's fractional
//! orders can only make the minimum larger: ε is never under-reported, and at the budgets this
//! product runs (ε ≈ 1–10, σ ≈ 0.8–2) it is within 1 % of Opacus (see the tests).

use protocol::ledger::{SkellamEntry, SkellamMechanism};
use serde::{Deserialize, Serialize};

/// Orders at which RDP is tracked.
pub const ORDERS: std::ops::RangeInclusive<u32> = 2..=256;

/// Bad accountant input, naming the parameter and the valid range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountantError {
    #[error("sample_rate is {0}: expected a number above 0 and at most 1")]
    SampleRate(f64),
    #[error("noise_multiplier is {0}: expected a number above 0")]
    NoiseMultiplier(f64),
    #[error("delta is {0}: expected a number above 0 and below 1")]
    Delta(f64),
    #[error("target epsilon is {0}: expected a number above 0")]
    TargetEpsilon(f64),
    #[error(
        "distributed mechanism {0}: expected q in (0, 1], z and S above 0 and finite, dim ≥ 1, β in [0, 1), t ≥ 1"
    )]
    Skellam(String),
    #[error(
        "no noise_multiplier up to {max} keeps epsilon <= {target} for sample_rate {q} over {steps} steps at delta {delta}"
    )]
    Unreachable {
        target: f64,
        q: f64,
        steps: u64,
        delta: f64,
        max: f64,
    },
}

/// Checks one mechanism's parameters.
pub fn check_params(sample_rate: f64, noise_multiplier: f64) -> Result<(), AccountantError> {
    if !(sample_rate > 0.0 && sample_rate <= 1.0) {
        return Err(AccountantError::SampleRate(sample_rate));
    }
    if !(noise_multiplier > 0.0 && noise_multiplier.is_finite()) {
        return Err(AccountantError::NoiseMultiplier(noise_multiplier));
    }
    Ok(())
}

pub(crate) fn check_delta(delta: f64) -> Result<(), AccountantError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountantError::Delta(delta))
    }
}

/// `ln(e^a + e^b)` without overflow.
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// RDP of one step of the subsampled Gaussian mechanism at integer order `alpha`.
fn rdp_one_step(q: f64, sigma: f64, alpha: u32) -> f64 {
    let a = alpha as f64;
    if q == 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    let (ln_q, ln_1q) = (q.ln(), (-q).ln_1p());
    let mut log_a = f64::NEG_INFINITY;
    let mut ln_binom = 0.0; // ln C(alpha, 0)
    for k in 0..=alpha {
        if k > 0 {
            ln_binom += ((alpha - k + 1) as f64).ln() - (k as f64).ln();
        }
        let kf = k as f64;
        let term = ln_binom + kf * ln_q + (a - kf) * ln_1q + (kf * kf - kf) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, term);
    }
    log_a / (a - 1.0)
}

/// RDP curves remembered by (q, σ) bits.
type Curves = crate::memo::Memo<(u64, u64), std::sync::Arc<[f64]>>;

static CURVES: std::sync::Mutex<Curves> = std::sync::Mutex::new(crate::memo::Memo::new(4096));

/// Forgets every remembered result of both accountants (benchmarks time the computation).
pub fn clear_memos() {
    crate::memo::locked(&CURVES).clear();
    crate::pld::clear_memo();
}

/// One step's RDP at every order of [`ORDERS`], remembered by (q, σ): ≈ 0.7 ms to compute,
/// and a server checks every client's ledger at each plan — a thousand clients of a shard size
/// each had made a plan's RDP checks alone take 0.9 s.
fn gaussian_curve(q: f64, sigma: f64) -> std::sync::Arc<[f64]> {
    let key = (q.to_bits(), sigma.to_bits());
    if let Some(c) = crate::memo::locked(&CURVES).get(&key) {
        return c;
    }
    let curve = gaussian_curve_once(q, sigma);
    crate::memo::locked(&CURVES).insert(key, curve.clone());
    curve
}

fn gaussian_curve_once(q: f64, sigma: f64) -> std::sync::Arc<[f64]> {
    ORDERS.map(|a| rdp_one_step(q, sigma, a)).collect()
}

/// ε at `delta` for an RDP curve given at [`ORDERS`].
pub(crate) fn epsilon_from_rdp(rdp: &[f64], delta: f64) -> f64 {
    ORDERS
        .zip(rdp)
        .map(|(alpha, &r)| {
            let a = alpha as f64;
            r - (delta.ln() + a.ln()) / (a - 1.0) + ((a - 1.0) / a).ln()
        })
        .filter(|e| !e.is_nan())
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// ε after `steps` steps with the same `sample_rate` and `noise_multiplier`, as a ledger
/// counts it (the tight accountant, see [`PrivacyLedger::epsilon`]).
pub fn epsilon(
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountantError> {
    PrivacyLedger::of(sample_rate, noise_multiplier, steps)?.epsilon(delta)
}

/// ε after `steps` steps under RDP alone (the looser accountant, for comparison).
pub fn rdp_epsilon(
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountantError> {
    PrivacyLedger::of(sample_rate, noise_multiplier, steps)?.rdp_epsilon(delta)
}

/// The smallest noise multiplier (to 1e-4 relative) whose ε after `steps` steps, as a ledger
/// counts it, stays at or below `target_epsilon`. RDP's σ meets the target under the ledger's
/// ε too (which is never above RDP's), so the search starts there and goes down. The
/// returned σ always satisfies the target.
pub fn noise_multiplier_for(
    target_epsilon: f64,
    sample_rate: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountantError> {
    let start = rdp_noise_multiplier_for(target_epsilon, sample_rate, steps, delta)?;
    solve_sigma(target_epsilon, sample_rate, steps, delta, start, |s| {
        PrivacyLedger::of(sample_rate, s, steps)?.epsilon_with(delta, false, Memos::Skip)
    })
}

/// [`noise_multiplier_for`] under RDP alone.
pub fn rdp_noise_multiplier_for(
    target_epsilon: f64,
    sample_rate: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountantError> {
    solve_sigma(target_epsilon, sample_rate, steps, delta, 1.0, |s| {
        PrivacyLedger::of(sample_rate, s, steps)?.rdp_epsilon_with(delta, false, Memos::Skip)
    })
}

/// Whether an ε computation reads and fills the memos. A σ solve skips them: it tries σ that
/// nobody asks about again, and would push out what is asked. The value is the same, bit for
/// bit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Memos {
    Use,
    Skip,
}

/// The smallest σ (to 1e-4 relative) at which `eps` — ε after `steps` steps at
/// `sample_rate` under one of the Gaussian accountants — is at most `target`, searched from
/// `start`; the inputs checked first, and a σ past [`MAX_NOISE_MULTIPLIER`] named as
/// unreachable.
pub(crate) fn solve_sigma(
    target: f64,
    sample_rate: f64,
    steps: u64,
    delta: f64,
    start: f64,
    eps: impl Fn(f64) -> Result<f64, AccountantError>,
) -> Result<f64, AccountantError> {
    if !(target > 0.0 && target.is_finite()) {
        return Err(AccountantError::TargetEpsilon(target));
    }
    check_params(sample_rate, 1.0)?;
    check_delta(delta)?;
    smallest_noise_from(target, start, eps)?.ok_or(AccountantError::Unreachable {
        target,
        q: sample_rate,
        steps,
        delta,
        max: MAX_NOISE_MULTIPLIER,
    })
}

/// Largest noise multiplier a solve searches (σ or z past it drown any signal).
pub(crate) const MAX_NOISE_MULTIPLIER: f64 = 1.0e4;

/// The smallest noise multiplier (to 1e-4 relative) at which `eps` is at most `target`,
/// searching from 1. `None` past [`MAX_NOISE_MULTIPLIER`]. The one search of the Gaussian
/// (RDP and PLD) and the Skellam accountants.
pub(crate) fn smallest_noise<E>(
    target: f64,
    eps: impl Fn(f64) -> Result<f64, E>,
) -> Result<Option<f64>, E> {
    smallest_noise_from(target, 1.0, eps)
}

/// [`smallest_noise`] from `start`: doubling while it overspends, or stepping down while it
/// does not, to bracket the answer; then regula falsi (the Illinois variant) that keeps the
/// upper end, so the answer always meets the target. A good `start` (a looser accountant's
/// answer) saves most evaluations; regula falsi needs 3–5 where bisection needed 13, which
/// matters when one evaluation is a tight ε (tens of milliseconds) and a server solves σ for
/// every shard size.
pub(crate) fn smallest_noise_from<E>(
    target: f64,
    start: f64,
    eps: impl Fn(f64) -> Result<f64, E>,
) -> Result<Option<f64>, E> {
    // g(σ) = ε(σ) − target, decreasing in σ. A NaN counts as overspending: never accepted.
    let g = |s: f64| eps(s).map(|e| e - target);
    let Some(bracket) = bracket_noise(start, &g)? else {
        return Ok(None);
    };
    refine_noise(bracket, target, &g).map(Some)
}

/// `lo < hi` with g(hi) ≤ 0 (meets the target) and g(lo) > 0 (overspends), with g's values
/// where they are finite and known; `lo` = 0 with `g_lo` = `None` when even σ → 0 meets it.
struct Bracket {
    lo: f64,
    g_lo: Option<f64>,
    hi: f64,
    g_hi: f64,
}

fn meets(g: f64) -> bool {
    g <= 0.0
}

/// Doubles σ from `start` while it overspends, or steps down (an eighth first: a looser
/// accountant's σ is near; then by halves) while it meets the target. `None` past
/// [`MAX_NOISE_MULTIPLIER`]; σ below 1e-3 is treated as 0.
fn bracket_noise<E>(start: f64, g: &impl Fn(f64) -> Result<f64, E>) -> Result<Option<Bracket>, E> {
    let finite = |v: f64| Some(v).filter(|v| v.is_finite());
    let (mut hi, mut g_hi) = (start, g(start)?);
    if !meets(g_hi) {
        loop {
            let (lo, g_lo) = (hi, finite(g_hi));
            hi *= 2.0;
            if hi > MAX_NOISE_MULTIPLIER {
                return Ok(None);
            }
            g_hi = g(hi)?;
            if meets(g_hi) {
                return Ok(Some(Bracket { lo, g_lo, hi, g_hi }));
            }
        }
    }
    let mut below = hi * 0.875;
    while below > 1e-3 {
        let g_below = g(below)?;
        if !meets(g_below) {
            return Ok(Some(Bracket {
                lo: below,
                g_lo: finite(g_below),
                hi,
                g_hi,
            }));
        }
        (hi, g_hi) = (below, g_below);
        below *= 0.5;
    }
    Ok(Some(Bracket {
        lo: 0.0,
        g_lo: None,
        hi,
        g_hi,
    }))
}

/// Shrinks the bracket to 1e-4 of σ, or until σ's ε is within 1e-6·target below the target
/// (where |d ln ε / d ln σ| ≥ 0.01, as on every Gaussian and Skellam ledger, that is σ within
/// 1e-4 too): regula falsi with the Illinois weights (the end that stays twice has its g
/// halved in the interpolation only), and a bisection whenever two steps together did not
/// halve the bracket, so the work is at most about twice bisection's.
fn refine_noise<E>(b: Bracket, target: f64, g: &impl Fn(f64) -> Result<f64, E>) -> Result<f64, E> {
    let Bracket {
        mut lo,
        g_lo,
        mut hi,
        g_hi,
    } = b;
    // The interpolation's weights (Illinois halves them), and hi's true g for the stop test.
    let (mut w_lo, mut w_hi, mut true_g_hi) = (g_lo, g_hi, g_hi);
    let mut last_moved_lo = None;
    let mut width_two_steps_ago = hi - lo;
    let mut steps = 0u32;
    while hi - lo > 1e-4 * hi && true_g_hi < -1e-6 * target && hi > 1e-3 {
        steps += 1;
        let bisect = steps.is_multiple_of(2) && hi - lo > 0.5 * width_two_steps_ago;
        if steps.is_multiple_of(2) {
            width_two_steps_ago = hi - lo;
        }
        let x = match w_lo.filter(|_| !bisect) {
            Some(w_lo) => hi - w_hi * (hi - lo) / (w_hi - w_lo),
            None => 0.5 * (lo + hi),
        };
        // Never at an end (round-off), never within a thousandth of the bracket of one.
        let margin = 1e-3 * (hi - lo);
        let x = if x.is_finite() {
            x.clamp(lo + margin, hi - margin)
        } else {
            0.5 * (lo + hi)
        };
        let g_x = g(x)?;
        if meets(g_x) {
            if last_moved_lo == Some(false) {
                w_lo = w_lo.map(|w| w * 0.5);
            }
            (hi, w_hi, true_g_hi, last_moved_lo) = (x, g_x, g_x, Some(false));
        } else {
            if last_moved_lo == Some(true) {
                w_hi *= 0.5;
            }
            let w = Some(g_x).filter(|v| v.is_finite());
            (lo, w_lo, last_moved_lo) = (x, w, Some(true));
        }
    }
    Ok(hi)
}

/// One mechanism a round runs on a client's records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mechanism {
    /// A step of DP-SGD (or a DP evaluation at q = 1): Gaussian noise of std σ·C.
    Gaussian {
        sample_rate: f64,
        noise_multiplier: f64,
    },
    /// A step of distributed DP-SGD: Skellam noise shared among the round's clients.
    Skellam(SkellamMechanism),
}

/// A privacy ledger: every mechanism run so far, composed at each order.
///
/// Holds the history rather than only the sum so that it can be stored, shown and re-derived
/// by the server from the configs it sent, without trusting a client's number.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrivacyLedger {
    /// `(sample_rate, noise_multiplier, steps)`, one entry per distinct mechanism (RDP
    /// composition does not depend on order, so equal mechanisms are merged wherever they
    /// stand: alternating training and evaluation does not grow the history).
    pub history: Vec<(f64, f64, u64)>,
    /// Distributed-DP steps, merged the same way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skellam: Vec<SkellamEntry>,
}

impl PrivacyLedger {
    /// A ledger of `steps` steps of one Gaussian mechanism.
    pub fn of(
        sample_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<Self, AccountantError> {
        let mut ledger = Self::default();
        ledger.record(sample_rate, noise_multiplier, steps)?;
        Ok(ledger)
    }

    /// Records `steps` steps of the subsampled Gaussian mechanism.
    pub fn record(
        &mut self,
        sample_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<(), AccountantError> {
        check_params(sample_rate, noise_multiplier)?;
        protocol::ledger::compose(&mut self.history, (sample_rate, noise_multiplier, steps));
        Ok(())
    }

    /// Records `steps` of any mechanism.
    pub fn record_mechanism(&mut self, m: Mechanism, steps: u64) -> Result<(), AccountantError> {
        match m {
            Mechanism::Gaussian {
                sample_rate,
                noise_multiplier,
            } => self.record(sample_rate, noise_multiplier, steps),
            Mechanism::Skellam(s) => {
                if !s.is_valid() {
                    return Err(AccountantError::Skellam(format!("{s:?}")));
                }
                protocol::ledger::compose_skellam(&mut self.skellam, s, steps);
                Ok(())
            }
        }
    }

    /// Whether `m` is already in the ledger (recording it then adds no entry).
    pub fn holds(&self, m: &Mechanism) -> bool {
        match *m {
            Mechanism::Gaussian {
                sample_rate,
                noise_multiplier,
            } => protocol::ledger::mechanism_index(&self.history, sample_rate, noise_multiplier)
                .is_some(),
            Mechanism::Skellam(s) => self.skellam.iter().any(|e| e.mechanism == s),
        }
    }

    /// Distinct mechanisms held (bounded by `protocol::ledger::MAX_HISTORY`).
    pub fn entries(&self) -> usize {
        self.history.len() + self.skellam.len()
    }

    /// Total steps recorded.
    pub fn steps(&self) -> u64 {
        // Saturating: a forged stored ledger must not wrap to 0 steps (which reads as ε = 0).
        self.history
            .iter()
            .map(|h| h.2)
            .chain(self.skellam.iter().map(|e| e.steps))
            .fold(0, u64::saturating_add)
    }

    /// ε spent so far at `delta` (0 before any step), under the runs' assumption that every
    /// distributed round had at least its t contributors. Tight: see `epsilon_with`.
    pub fn epsilon(&self, delta: f64) -> Result<f64, AccountantError> {
        self.epsilon_with(delta, false, Memos::Use)
    }

    /// ε at `delta` if every other client of each distributed round colluded with the server:
    /// only this client's own noise share (noise multiplier z/√t) protects its records. Equal
    /// to [`Self::epsilon`] when no distributed round was run.
    pub fn worst_case_epsilon(&self, delta: f64) -> Result<f64, AccountantError> {
        self.epsilon_with(delta, true, Memos::Use)
    }

    /// ε spent so far under RDP alone (shown beside the tight ε where a user compares).
    pub fn rdp_epsilon(&self, delta: f64) -> Result<f64, AccountantError> {
        self.rdp_epsilon_with(delta, false, Memos::Use)
    }

    /// The tight ε: for a ledger of Gaussian steps only, the smaller of the PLD accountant's
    /// and RDP's — two valid upper bounds of the same guarantee, so their minimum is one too
    /// (and it is PLD's on every ledger we measured). A ledger with distributed steps is
    /// accounted by RDP, which is what composes the Skellam mechanism's bound.
    fn epsilon_with(&self, delta: f64, alone: bool, memos: Memos) -> Result<f64, AccountantError> {
        let rdp = self.rdp_epsilon_with(delta, alone, memos)?;
        self.tightened(delta, rdp, memos)
    }

    /// This ledger's ε given its RDP ε `rdp`: PLD's where it is smaller (see `epsilon_with`).
    fn tightened(&self, delta: f64, rdp: f64, memos: Memos) -> Result<f64, AccountantError> {
        if !self.skellam.is_empty() || rdp == 0.0 {
            return Ok(rdp);
        }
        let pld = match memos {
            Memos::Use => crate::pld::epsilon(&self.history, delta)?,
            Memos::Skip => crate::pld::compute_epsilon(&self.history, delta)?,
        };
        Ok(pld.min(rdp))
    }

    /// Whether `steps` more of `m` keep ε at `delta` within `cap`. RDP is checked first: it is
    /// a valid bound, so within it means within, at a hundredth of the tight ε's cost; the
    /// tight ε is computed only near the cap.
    pub fn allows(
        &self,
        m: Mechanism,
        steps: u64,
        delta: f64,
        cap: f64,
    ) -> Result<bool, AccountantError> {
        let mut next = self.clone();
        next.record_mechanism(m, steps)?;
        let rdp = next.rdp_epsilon(delta)?;
        Ok(rdp <= cap || next.tightened(delta, rdp, Memos::Use)? <= cap)
    }

    fn rdp_epsilon_with(
        &self,
        delta: f64,
        alone: bool,
        memos: Memos,
    ) -> Result<f64, AccountantError> {
        check_delta(delta)?;
        if self.steps() == 0 {
            // Nothing released yet. (The RDP→(ε, δ) conversion has slack even at zero RDP.)
            return Ok(0.0);
        }
        let mut rdp = vec![0.0; ORDERS.count()];
        for &(q, s, n) in &self.history {
            let curve = match memos {
                Memos::Use => gaussian_curve(q, s),
                Memos::Skip => gaussian_curve_once(q, s),
            };
            for (r, one) in rdp.iter_mut().zip(curve.iter()) {
                *r += n as f64 * one;
            }
        }
        for e in &self.skellam {
            let step = crate::skellam::SkellamStep::of(&e.mechanism, alone);
            for (r, alpha) in rdp.iter_mut().zip(ORDERS) {
                *r += e.steps as f64 * step.rdp(alpha);
            }
        }
        Ok(epsilon_from_rdp(&rdp, delta))
    }

    /// ε after `extra_steps` more steps of (q, σ), without recording them: lets a client refuse
    /// a round that would cross its cap before spending anything.
    pub fn epsilon_after(
        &self,
        sample_rate: f64,
        noise_multiplier: f64,
        extra_steps: u64,
        delta: f64,
    ) -> Result<f64, AccountantError> {
        self.epsilon_after_mechanism(
            Mechanism::Gaussian {
                sample_rate,
                noise_multiplier,
            },
            extra_steps,
            delta,
        )
    }

    /// ε after `extra_steps` more steps of `m`, without recording them.
    pub fn epsilon_after_mechanism(
        &self,
        m: Mechanism,
        extra_steps: u64,
        delta: f64,
    ) -> Result<f64, AccountantError> {
        let mut next = self.clone();
        next.record_mechanism(m, extra_steps)?;
        next.epsilon(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(q, σ, steps, δ, ε with integer orders 2..=256, ε with Opacus's default orders)`, printed
    /// by Opacus 1.6.0's `opacus/accountants/analysis/rdp.py` (compute_rdp + get_privacy_spent).
    /// The first row is the classic setting of Abadi et al. / TF Privacy's MNIST tutorial
    /// (batch 256 of 60 000, σ 1.1, 60 epochs).
    const OPACUS: [(f64, f64, u64, f64, f64, f64); 7] = [
        (
            256.0 / 60000.0,
            1.1,
            14100,
            1e-5,
            2.6007181389429386,
            2.6003429386103023,
        ),
        (
            0.004,
            1.0,
            5000,
            1e-5,
            1.7089942034224954,
            1.6990717753737625,
        ),
        (0.01, 1.5, 1000, 1e-6, 1.152720878846055, 1.152720878846055),
        (0.1, 2.0, 100, 1e-5, 2.58665217816753, 2.5805688086608938),
        (1.0, 5.0, 10, 1e-5, 2.814109167845533, 2.8136532471298397),
        (
            64.0 / 600.0,
            0.8,
            500,
            1e-5,
            31.130507537074944,
            30.337659675417363,
        ),
        (
            0.001,
            0.6,
            10000,
            1e-5,
            3.5019916541165905,
            3.3218995971280134,
        ),
    ];

    #[test]
    fn matches_opacus_and_never_under_reports() {
        for (q, s, n, d, opacus_int, opacus_default) in OPACUS {
            let e = rdp_epsilon(q, s, n, d).expect("valid");
            assert!(
                (e - opacus_int).abs() < 1e-9 * opacus_int,
                "q={q} σ={s}: {e} vs {opacus_int}"
            );
            assert!(
                e >= opacus_default,
                "never below Opacus: {e} < {opacus_default}"
            );
            if (1.0..10.0).contains(&e) && s >= 0.8 {
                assert!(
                    e <= 1.01 * opacus_default,
                    "within 1 % of Opacus: {e} vs {opacus_default}"
                );
            }
        }
    }

    #[test]
    fn monotone_in_steps_and_noise() {
        let mut last = 0.0;
        for steps in [1, 10, 100, 1000, 10_000] {
            let e = epsilon(0.01, 1.0, steps, 1e-5).expect("valid");
            assert!(e > last, "more steps, more ε: {e} after {steps}");
            last = e;
        }
        let mut last = f64::INFINITY;
        for sigma in [0.5, 0.8, 1.0, 1.5, 3.0, 10.0] {
            let e = epsilon(0.01, sigma, 1000, 1e-5).expect("valid");
            assert!(e < last, "more noise, less ε: {e} at σ {sigma}");
            last = e;
        }
    }

    #[test]
    fn ledger_composes_like_one_run() {
        let mut acc = PrivacyLedger::default();
        assert_eq!(acc.epsilon(1e-5).expect("valid"), 0.0);
        for _ in 0..10 {
            acc.record(0.01, 1.1, 100).expect("valid");
        }
        assert_eq!(acc.history.len(), 1);
        let one = epsilon(0.01, 1.1, 1000, 1e-5).expect("valid");
        assert!((acc.epsilon(1e-5).expect("valid") - one).abs() < 1e-12);
        acc.record(0.02, 1.1, 100).expect("valid");
        assert!(acc.epsilon(1e-5).expect("valid") > one);
        assert_eq!(acc.steps(), 1100);
    }

    #[test]
    fn distributed_steps_compose_with_gaussian_ones_and_their_worst_case_keeps_one_share() {
        let m = SkellamMechanism {
            sample_rate: 2048.0 / 60000.0,
            noise_multiplier: 2.6,
            scale: 1000.0,
            dim: 12_810,
            beta: (-0.5f64).exp(),
            contributors: 9,
        };
        let step = crate::skellam::SkellamStep::of(&m, false);
        let mut acc = PrivacyLedger::default();
        acc.record_mechanism(Mechanism::Skellam(m), 1000).unwrap();
        // Alone, it is the Skellam accountant's own ε; the worst case is z/√t = 2.6/3.
        let alone = crate::skellam::epsilon(&step, 1000, 1e-5).unwrap();
        assert_eq!(acc.epsilon(1e-5).unwrap(), alone);
        let worst = crate::skellam::epsilon(
            &crate::skellam::SkellamStep {
                noise_multiplier: 2.6 / 3.0,
                ..step
            },
            1000,
            1e-5,
        )
        .unwrap();
        assert!((acc.worst_case_epsilon(1e-5).unwrap() - worst).abs() < 1e-9 * worst);
        assert!(worst > 4.0 * alone, "{alone} vs {worst}");
        // With Gaussian steps beside it: RDP adds per order, so ε is above either part and
        // below their sum (the conversion is sub-additive).
        acc.record(0.1, 2.0, 50).unwrap();
        let gaussian = rdp_epsilon(0.1, 2.0, 50, 1e-5).unwrap();
        let both = acc.epsilon(1e-5).unwrap();
        assert!(
            both > alone.max(gaussian) && both < alone + gaussian,
            "{both}"
        );
        assert_eq!(acc.entries(), 2);
        assert_eq!(acc.steps(), 1050);
        // A forged mechanism (t = 0: its worst case would divide by zero) is refused.
        let bad = SkellamMechanism {
            contributors: 0,
            ..m
        };
        assert!(matches!(
            acc.record_mechanism(Mechanism::Skellam(bad), 1),
            Err(AccountantError::Skellam(_))
        ));
    }

    /// The tight σ solve from RDP's σ takes a handful of tight ε (each tens of milliseconds),
    /// and its answer is the smallest σ to 1e-4: σ·(1 − 2e-4) overspends.
    #[test]
    fn a_tight_sigma_solve_takes_a_handful_of_evaluations() {
        for (q, steps, target) in [(0.0853, 180, 3.0), (0.0341, 1200, 3.0), (0.1707, 180, 1.0)] {
            let start = rdp_noise_multiplier_for(target, q, steps, 1e-5).unwrap();
            let calls = std::cell::Cell::new(0);
            let s = solve_sigma(target, q, steps, 1e-5, start, |s| {
                calls.set(calls.get() + 1);
                epsilon(q, s, steps, 1e-5)
            })
            .unwrap();
            assert!(epsilon(q, s, steps, 1e-5).unwrap() <= target);
            assert!(
                epsilon(q, s * (1.0 - 2e-4), steps, 1e-5).unwrap() > target,
                "σ {s}"
            );
            assert!(calls.get() <= 8, "{} evaluations for q {q}", calls.get());
        }
    }

    /// The search on shapes the accountants can produce: an ε that is infinite below some σ
    /// (a PLD whose mass at infinity passes δ), a NaN, and an ε that is 0 everywhere (no
    /// steps). Each ends in a bounded number of evaluations, and the answer meets the target.
    #[test]
    fn the_search_ends_on_infinite_nan_and_flat_epsilons() {
        let count = |f: &dyn Fn(f64) -> f64, start: f64| {
            let calls = std::cell::Cell::new(0);
            let s = smallest_noise_from(3.0, start, |s| {
                calls.set(calls.get() + 1);
                Ok::<f64, ()>(f(s))
            })
            .unwrap();
            (s, calls.get())
        };
        // ε = 1/σ above 0.2 (root at 1/3), infinite below.
        let (s, n) = count(&|s| if s < 0.2 { f64::INFINITY } else { 1.0 / s }, 0.1);
        let s = s.unwrap();
        assert!(1.0 / s <= 3.0 && s < (1.0 / 3.0) * (1.0 + 2e-4), "{s}");
        assert!(n <= 40, "{n} evaluations");
        // NaN never meets the target.
        let (s, _) = count(&|s| if s < 0.5 { f64::NAN } else { 1.0 / s }, 1.0);
        assert!(s.unwrap() >= 0.5);
        // Nothing spent at any σ: it stops near 0 instead of halving forever.
        let (s, n) = count(&|_| 0.0, 1.0);
        assert!(s.unwrap() <= 2e-3 && n <= 20, "{s:?} after {n}");
    }

    #[test]
    fn inverse_is_the_smallest_sigma_meeting_the_target() {
        for target in [0.5, 1.0, 3.0, 8.0] {
            let s = noise_multiplier_for(target, 256.0 / 60000.0, 14100, 1e-5).expect("reachable");
            assert!(epsilon(256.0 / 60000.0, s, 14100, 1e-5).expect("valid") <= target);
            let e_below = epsilon(256.0 / 60000.0, s * 0.999, 14100, 1e-5).expect("valid");
            assert!(e_below > target, "σ·0.999 would overspend: σ={s}");
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            epsilon(0.0, 1.0, 1, 1e-5).unwrap_err().to_string(),
            "sample_rate is 0: expected a number above 0 and at most 1"
        );
        assert!(
            epsilon(1.5, 1.0, 1, 1e-5)
                .unwrap_err()
                .to_string()
                .contains("sample_rate is 1.5")
        );
        assert!(
            epsilon(0.1, -1.0, 1, 1e-5)
                .unwrap_err()
                .to_string()
                .contains("noise_multiplier is -1")
        );
        assert!(
            epsilon(0.1, 1.0, 1, 1.0)
                .unwrap_err()
                .to_string()
                .contains("delta is 1: expected a number above 0 and below 1")
        );
        assert!(noise_multiplier_for(0.0, 0.1, 1, 1e-5).is_err());
    }
}
