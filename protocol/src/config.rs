//! Training configuration as it travels from the server to a client: what `learning::fit`
//! takes, defined here once so the server, the browser and the simulator cannot disagree.
//! Plain data plus the arithmetic that the privacy accounting of both sides shares
//! (sample rate, steps per round); no tensors.

use serde::{Deserialize, Serialize};

/// How batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// Expected batch size B; with DP the sample rate is q = B / shard size.
    BatchSize(usize),
    /// Poisson sample rate q directly; the expected batch is q · shard size.
    SampleRate(f64),
}

/// DP-SGD settings (Opacus names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpSgdConfig {
    /// C: every per-example gradient is scaled to L2 norm ≤ C.
    pub max_grad_norm: f32,
    /// σ: the noise std is σ · C.
    pub noise_multiplier: f32,
    /// δ of the (ε, δ) guarantee reported.
    pub delta: f64,
    /// `Some`: distributed DP — the round is one DP-SGD step over the union of its clients'
    /// data; this client adds only its share of the noise, in integers, and sends the result
    /// only through secure aggregation. `noise_multiplier` is then the noise of the *sum*.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedNoise>,
}

/// How a client of a distributed-DP round turns its clipped gradients into integers and how
/// much of the round's noise it adds (Kairouz, Liu & Steinke 2021; Agarwal, Kairouz & Liu 2021).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistributedNoise {
    /// S: integer units per clipping norm C.
    pub scale: f64,
    /// Conditional rounding's β in [0, 1) (0: none; e^−0.5 is the papers' choice).
    pub beta: f64,
    /// t: the contributors the run counts on. Each client adds 1/t of the summed noise's
    /// variance, so the sum of any t shares carries all of it.
    pub contributors: u32,
}

/// Largest scale S: 10⁶ units per C already makes rounding negligible (BENCHMARKS.md).
pub const MAX_SCALE: f64 = 1.0e6;
/// Most contributors a distributed round may count on (the server's connection limit).
pub const MAX_CONTRIBUTORS: u32 = 10_000;

impl DistributedNoise {
    /// Every field in range (what a client checks before it computes anything).
    pub fn check(&self) -> Result<(), ConfigError> {
        let err = |field, value: String, expected| {
            Err(ConfigError {
                field,
                value,
                expected,
            })
        };
        if !(self.scale >= 1.0 && self.scale <= MAX_SCALE) {
            return err(
                "scale",
                self.scale.to_string(),
                "a number from 1 to 1 000 000 (integer units per clipping norm)",
            );
        }
        if !(0.0..1.0).contains(&self.beta) {
            return err(
                "beta",
                self.beta.to_string(),
                "a number at least 0 and below 1",
            );
        }
        if !(1..=MAX_CONTRIBUTORS).contains(&self.contributors) {
            return err(
                "contributors",
                self.contributors.to_string(),
                "a whole number from 1 to 10 000",
            );
        }
        Ok(())
    }

    /// Variance of one client's noise share in integer units: (z·S)²/t, so that t shares
    /// sum to the variance (z·S)² of one central DP-SGD step's noise (std z·C).
    pub fn share_variance(&self, noise_multiplier: f64) -> f64 {
        (noise_multiplier * self.scale).powi(2) / f64::from(self.contributors.max(1))
    }
}

/// Everything `fit` needs to know about local training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the shard per round (with DP: ⌈1/q⌉ Poisson steps each).
    pub local_epochs: u32,
    pub batching: Batching,
    pub learning_rate: f32,
    pub optimizer: Optimizer,
    /// `None` trains without clipping or noise.
    pub dp: Option<DpSgdConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batching: Batching::BatchSize(64),
            learning_rate: 0.1,
            optimizer: Optimizer::default(),
            dp: Some(DpSgdConfig {
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                delta: 1e-5,
                distributed: None,
            }),
        }
    }
}

/// Most DP-SGD steps one round may ask of a client (local_epochs × ⌈1/q⌉). A TinyCNN step of
/// batch 1 takes ≈ 1 ms; 100 000 steps is already a long round. Without a bound a sample rate
/// of 1e-300 asks for u64::MAX steps (a client training forever, a ledger that wraps).
pub const MAX_STEPS_PER_ROUND: u64 = 100_000;

/// Noise multiplier of a client's DP evaluation: its correct count and its clipped loss sum
/// (each of sensitivity 1) get Gaussian noise of std `z·√2`, one Gaussian mechanism of noise
/// multiplier `z` charged to the client's ledger at sample rate 1. With 6 000 examples the
/// reported accuracy is within ≈ ±1.2 % (one std); one evaluation costs RDP α/(2z²).
pub const EVAL_NOISE_MULTIPLIER: f64 = 50.0;

/// Per-example loss bound of a DP evaluation (cross-entropy is clipped to [0, this]).
pub const EVAL_LOSS_BOUND: f64 = 10.0;

/// A config value out of range, naming the field and what it accepts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} is {value}: expected {expected}")]
pub struct ConfigError {
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl TrainConfig {
    /// Checks every field for a shard of `num_examples`.
    pub fn validate(&self, num_examples: usize) -> Result<(), ConfigError> {
        let err = |field, value: String, expected| {
            Err(ConfigError {
                field,
                value,
                expected,
            })
        };
        if num_examples == 0 {
            return err(
                "num_examples",
                "0".into(),
                "a shard with at least one example",
            );
        }
        if !(1..=1000).contains(&self.local_epochs) {
            return err(
                "local_epochs",
                self.local_epochs.to_string(),
                "a whole number from 1 to 1000",
            );
        }
        match self.batching {
            Batching::BatchSize(b) if b == 0 || b > num_examples => {
                return err(
                    "batch_size",
                    b.to_string(),
                    "a whole number from 1 to the shard size",
                );
            }
            Batching::SampleRate(q) if !(q > 0.0 && q <= 1.0) => {
                return err(
                    "sample_rate",
                    q.to_string(),
                    "a number above 0 and at most 1",
                );
            }
            _ => {}
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return err(
                "learning_rate",
                self.learning_rate.to_string(),
                "a finite number above 0",
            );
        }
        match self.optimizer {
            Optimizer::Sgd { momentum } if !(0.0..1.0).contains(&momentum) => {
                return err(
                    "momentum",
                    momentum.to_string(),
                    "a number at least 0 and below 1",
                );
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && epsilon > 0.0) => {
                return err(
                    "adam",
                    format!("beta1 {beta1}, beta2 {beta2}, epsilon {epsilon}"),
                    "betas at least 0 and below 1, and an epsilon above 0",
                );
            }
            _ => {}
        }
        let steps = self.checked_steps_per_round(num_examples);
        if steps.is_none_or(|s| s > MAX_STEPS_PER_ROUND) {
            let value = match self.batching {
                Batching::SampleRate(q) => format!("{q} ({} local epochs)", self.local_epochs),
                Batching::BatchSize(b) => format!("{b} ({} local epochs)", self.local_epochs),
            };
            return err(
                "sample_rate",
                value,
                "a sample rate (or batch size) that needs at most 100 000 steps a round (local epochs × 1/q)",
            );
        }
        if let Some(dp) = self.dp {
            if !(dp.max_grad_norm > 0.0 && dp.max_grad_norm.is_finite()) {
                return err(
                    "max_grad_norm",
                    dp.max_grad_norm.to_string(),
                    "a finite number above 0",
                );
            }
            if !(dp.noise_multiplier > 0.0 && dp.noise_multiplier.is_finite()) {
                return err(
                    "noise_multiplier",
                    dp.noise_multiplier.to_string(),
                    "a finite number above 0",
                );
            }
            if !(dp.delta > 0.0 && dp.delta < 1.0) {
                return err(
                    "delta",
                    dp.delta.to_string(),
                    "a number above 0 and below 1",
                );
            }
            if let Some(d) = dp.distributed {
                d.check()?;
            }
        }
        Ok(())
    }

    /// Poisson sample rate q for a shard of `n`.
    pub fn sample_rate(&self, n: usize) -> f64 {
        match self.batching {
            Batching::BatchSize(b) => (b as f64 / n as f64).min(1.0),
            Batching::SampleRate(q) => q,
        }
    }

    /// Expected batch size q · n (the DP-SGD denominator).
    pub fn expected_batch(&self, n: usize) -> f64 {
        self.sample_rate(n) * n as f64
    }

    /// Steps in one local epoch: ⌈1/q⌉, as Opacus's DP data loader. Saturates for a q so
    /// small that ⌈1/q⌉ is no u64 ([`Self::validate`] refuses those).
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        (1.0 / self.sample_rate(n)).ceil() as u64
    }

    /// Steps of one `fit` call (saturating; [`Self::validate`] bounds it by
    /// [`MAX_STEPS_PER_ROUND`]).
    pub fn steps_per_round(&self, n: usize) -> u64 {
        self.checked_steps_per_round(n).unwrap_or(u64::MAX)
    }

    /// Steps of one `fit` call, `None` when it is no finite u64. A distributed-DP round is
    /// one step, whatever the epochs say.
    pub fn checked_steps_per_round(&self, n: usize) -> Option<u64> {
        if self.distributed().is_some() {
            return Some(1);
        }
        steps_per_round(self.local_epochs, self.sample_rate(n))
    }

    /// The distributed-DP settings, when this is a distributed round.
    pub fn distributed(&self) -> Option<DistributedNoise> {
        self.dp.and_then(|dp| dp.distributed)
    }

    /// What secure aggregation binds a member's pairwise masks to: in a distributed-DP round,
    /// the SHA-256 of the noise every member must add (z, C, S, β, t), so that members a
    /// server told to add less noise cannot be summed with this one (their masks do not
    /// cancel); zero otherwise.
    pub fn mask_context(&self) -> crate::secagg::Bytes32 {
        use sha2::{Digest, Sha256};
        let (Some(dp), Some(noise)) = (self.dp, self.distributed()) else {
            return crate::secagg::Bytes32([0; 32]);
        };
        let mut h = Sha256::new();
        h.update(b"fl-dp distributed noise v1");
        h.update(dp.noise_multiplier.to_bits().to_le_bytes());
        h.update(dp.max_grad_norm.to_bits().to_le_bytes());
        h.update(noise.scale.to_bits().to_le_bytes());
        h.update(noise.beta.to_bits().to_le_bytes());
        h.update(noise.contributors.to_le_bytes());
        crate::secagg::Bytes32(h.finalize().into())
    }
}

/// `local_epochs × ⌈1/q⌉`, `None` when it is no finite u64 (a q of 1e-300 asked for u64::MAX
/// steps). The one count the client, the server's ledger and the run config check all use.
pub fn steps_per_round(local_epochs: u32, sample_rate: f64) -> Option<u64> {
    let per_epoch = (1.0 / sample_rate).ceil();
    if !(per_epoch.is_finite() && per_epoch < u64::MAX as f64) {
        return None;
    }
    (local_epochs as u64).checked_mul(per_epoch as u64)
}

/// TinyCNN's coordinates: the dimension of a distributed round's integer vector.
pub const MODEL_DIM: u64 = 12_810;

/// L2 bound of one example's rounded gradient in integer units: Kairouz, Liu & Steinke 2021,
/// Theorem 1, for S units per clipping norm, `dim` coordinates and β (0: the plain bound
/// S + √dim). Defined once: the client rounds to it, the accountant assumes it, the run
/// config bounds the sum with it.
pub fn rounded_norm_bound(scale: f64, dim: u64, beta: f64) -> f64 {
    let d = dim as f64;
    let plain = scale + d.sqrt();
    if beta == 0.0 {
        return plain;
    }
    let conditioned =
        scale * scale + d / 4.0 + (2.0 * (1.0 / beta).ln()).sqrt() * (scale + d.sqrt() / 2.0);
    plain.min(conditioned.sqrt())
}

/// Most examples a client's Poisson batch of expected size `batch` holds but with a
/// probability below 10⁻¹⁵: batch + 10√batch + 10.
pub fn batch_bound(batch: f64) -> f64 {
    batch + 10.0 * batch.max(0.0).sqrt() + 10.0
}

/// Whether the integer sums of members with these expected batches add up without leaving
/// [−2³¹, 2³¹): each coordinate of a member's sum is at most its batch bound × the
/// rounded-norm bound, and the summed noise (variance members × (z·S)²/t) stays within 20
/// standard deviations. A sum past the range would wrap and turn the model into garbage (never
/// a privacy loss).
pub fn distributed_sum_fits(noise: &DistributedNoise, batches: &[f64], z: f64) -> bool {
    distributed_reach(noise, batches, z) < f64::from(i32::MAX)
}

/// The largest |coordinate| an honest sum of members with these expected batches reaches but
/// with a negligible probability. The server refuses an unmasked sum past it: masks that did
/// not cancel (a member that masked under other instructions) look uniform over the 32 bits.
pub fn distributed_reach(noise: &DistributedNoise, batches: &[f64], z: f64) -> f64 {
    let l2 = rounded_norm_bound(noise.scale, MODEL_DIM, noise.beta);
    let members = batches.len() as f64;
    batches.iter().map(|&b| batch_bound(b) * l2).sum::<f64>()
        + 20.0 * (members * noise.share_variance(z)).sqrt()
}

/// Most clients of expected batch `batch` whose sum fits ([`distributed_sum_fits`]).
pub fn max_distributed_members(noise: &DistributedNoise, batch: f64, z: f64) -> u32 {
    let per_member = batch_bound(batch) * rounded_norm_bound(noise.scale, MODEL_DIM, noise.beta);
    // The noise term grows as √m: count down from the bound without it.
    let mut m = (f64::from(i32::MAX) / per_member)
        .floor()
        .min(f64::from(MAX_CONTRIBUTORS)) as usize;
    while m > 0 && !distributed_sum_fits(noise, &vec![batch; m], z) {
        m -= 1;
    }
    m as u32
}

/// Optimizer applied to the flat parameter vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// SGD with optional heavy-ball momentum (PyTorch's formulation).
    Sgd { momentum: f32 },
    /// Adam (Kingma & Ba) with bias correction.
    Adam {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Sgd { momentum: 0.0 }
    }
}

/// Metrics of one `fit` call. Loss, accuracy and the clipped fraction describe the private
/// examples without noise: they are shown in the data owner's page and never sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitMetrics {
    /// Mean training loss over the examples sampled this round (before each step); NaN when
    /// not measured (a distributed-DP step computes only clipped gradients).
    #[serde(with = "crate::ledger::nan_as_null")]
    pub loss: f64,
    /// Training accuracy over the same examples (NaN when not measured).
    #[serde(with = "crate::ledger::nan_as_null")]
    pub accuracy: f64,
    /// ε spent on this data so far, at the client's own δ (`None` before anything was
    /// spent; infinite once a round trained without DP). Reported to the page, not the server.
    #[serde(default, with = "crate::ledger::maybe_infinite")]
    pub epsilon: Option<f64>,
    pub steps: u64,
    /// Fraction of per-example gradients that were clipped (NaN when not measured).
    #[serde(with = "crate::ledger::nan_as_null")]
    pub clipped_fraction: f64,
}

/// How to split the training set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShardScheme {
    /// A uniform random split into equal parts.
    Iid,
    /// Each class is split among clients with proportions drawn from Dirichlet(α): small α
    /// (0.1) gives each client a few classes, large α (100) is close to IID.
    Dirichlet { alpha: f64 },
}
