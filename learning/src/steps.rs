//! A round of local training as a sequence of steps, so that the gradient of each step can be
//! computed anywhere — on this thread, on native threads, in a pool of Web Workers — while the
//! privacy mechanism stays in one place.
//!
//! [`LocalSteps`] owns everything the mechanism is made of: Poisson sampling, the noise (one
//! Gaussian draw per coordinate per step, from the client's [`SecureRng`]), the ledger entry,
//! the division by the expected batch and the optimizer. Whoever computes a step's gradient
//! gets only the model and the step's examples ([`StepInput`]) and returns their clipped sum
//! ([`BatchGradient`]): it never sees the RNG or the ledger, so however the examples are
//! spread over workers, the noise is drawn once per step and each example is clipped on its own
//! (the sum of the slices' clipped sums is the batch's clipped sum).
//!
//! A driver is a short loop — [`crate::fit_with`] natively, an async one in the browser worker:
//!
//! ```text
//! while let Some(input) = steps.next_input(task, shard, &mut privacy.rng) {
//!     let g = gradient_of(steps.params(), &input)?;   // anywhere
//!     progress(steps.apply(g, privacy)?);
//! }
//! steps.finish(privacy)
//! ```

use crate::LearningError;
use crate::client::{ClientPrivacy, FitProgress, FitRes, TrainConfig, Update};
use crate::data::Dataset;
use crate::dpsgd::{BatchGradient, OptimizerState, SecureRng, add_gaussian_noise};
use crate::task::Task;
use protocol::config::{DpSgdConfig, FitMetrics};

/// The examples of one step, ready for a forward pass, and the clipping norm (`None`: no DP).
#[derive(Clone, PartialEq)]
pub struct StepInput {
    /// Normalised pixels, example after example.
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub clip: Option<f32>,
}

impl std::fmt::Debug for StepInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the records themselves: a debug print is not a place to leak them.
        write!(
            f,
            "StepInput({} examples, clip {:?})",
            self.len(),
            self.clip
        )
    }
}

impl StepInput {
    /// Examples in the step.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The examples in `range` (a slice for one worker).
    pub fn slice(&self, range: std::ops::Range<usize>) -> (&[f32], &[u8]) {
        let per = self.images.len() / self.labels.len().max(1);
        (
            &self.images[range.start * per..range.end * per],
            &self.labels[range],
        )
    }
}

/// Splits `n` examples into at most `workers` contiguous slices whose sizes differ by at most
/// one, the smaller ones first (the first is the coordinating worker's, which also samples,
/// adds the noise and steps); no slice is empty (fewer examples than workers give fewer).
pub fn slices(n: usize, workers: usize) -> Vec<std::ops::Range<usize>> {
    let parts = workers.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let lens = (0..parts).map(|i| base + usize::from(i >= parts - extra));
    let mut ranges = contiguous(lens);
    ranges.retain(|r| !r.is_empty());
    ranges
}

/// Consecutive ranges of the given lengths, from 0.
pub fn contiguous(lens: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    lens.into_iter()
        .map(|len| {
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Running totals for the round's metrics.
#[derive(Debug, Default)]
struct Totals {
    loss_sum: f64,
    seen: usize,
    correct: usize,
    clipped: usize,
    steps: u64,
}

/// A DP step's noise drawn ahead of its gradient, so that a pool of workers can draw it while
/// its helpers compute (the training worker would otherwise wait idle, then draw it). Only
/// [`LocalSteps::draw_noise`] makes one — from the client's RNG, with the step's σC, for the
/// step given out — and [`LocalSteps::apply_noised`] takes it once, for that step only: noise
/// reused across steps would correlate them.
pub struct StepNoise {
    values: Vec<f32>,
    /// The round ([`LocalSteps::round`]) and step it was drawn for (the steps applied before).
    round: u64,
    step: u64,
}

impl std::fmt::Debug for StepNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values: whoever learns the noise can subtract it from the update.
        write!(f, "StepNoise(round {}, step {})", self.round, self.step)
    }
}

/// The batch of the step after the one given out, sampled while that one is still being
/// computed ([`LocalSteps::sample_ahead`]) and taken only as that next step's
/// ([`LocalSteps::next_input_or`]).
pub struct InputAhead {
    input: StepInput,
    /// The round and step it was sampled for (the steps applied before it).
    round: u64,
    step: u64,
}

impl std::fmt::Debug for InputAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InputAhead({:?} for round {}, step {})",
            self.input, self.round, self.step
        )
    }
}

/// A DP step's noise std, σ·C: drawn ahead ([`LocalSteps::draw_noise`]) or at the step.
fn noise_std(dp: &DpSgdConfig) -> f32 {
    dp.noise_multiplier * dp.max_grad_norm
}

/// Numbers each [`LocalSteps`] of this process, so that a [`StepNoise`] names its round.
static ROUNDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One round of local (or non-DP) training, step by step. Built by
/// [`crate::client::start_fit`], which checks the configuration and the client's own cap
/// first.
#[derive(Debug)]
pub struct LocalSteps {
    config: TrainConfig,
    global: Vec<f32>,
    params: Vec<f32>,
    optimizer: OptimizerState,
    n: usize,
    q: f64,
    steps_per_epoch: u64,
    /// Non-DP epochs walk a shuffled order.
    order: Vec<usize>,
    epoch: u32,
    step: u64,
    /// The size of the batch [`Self::next_input`] gave out, until it is applied.
    pending: Option<usize>,
    /// A step failed: the round is over. Its batch is never drawn again (a batch redrawn only
    /// after failures would make the sampling depend on them).
    failed: bool,
    totals: Totals,
    /// This round among the process's ([`ROUNDS`]): noise drawn for one round is refused by
    /// another.
    round: u64,
}

impl LocalSteps {
    /// A round over a shard of `n` records starting from `global`. The caller has checked the
    /// configuration, the parameter count and the client's cap.
    pub(crate) fn new(global: &[f32], config: TrainConfig, n: usize) -> Self {
        Self {
            config,
            global: global.to_vec(),
            params: global.to_vec(),
            optimizer: OptimizerState::new(config.optimizer, global.len()),
            n,
            q: config.sample_rate(n),
            steps_per_epoch: config.steps_per_epoch(n),
            order: (0..n).collect(),
            epoch: 0,
            step: 0,
            pending: None,
            failed: false,
            totals: Totals::default(),
            round: ROUNDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The current parameters: the model the next step's gradient is taken at.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The next step's examples, or `None` once the round's steps are all taken (or a step
    /// failed). With DP the batch is a Poisson sample of rate q (its size is random, and may be
    /// 0: that step still takes place, as pure noise).
    pub fn next_input(
        &mut self,
        task: &Task,
        shard: &Dataset,
        rng: &mut SecureRng,
    ) -> Option<StepInput> {
        self.next_input_or(None, task, shard, rng)
    }

    /// [`Self::next_input`], whose batch is `ahead` when it was sampled ahead for this step
    /// ([`Self::sample_ahead`]). After a failed step it is dropped, as no batch is drawn then.
    pub fn next_input_or(
        &mut self,
        ahead: Option<InputAhead>,
        task: &Task,
        shard: &Dataset,
        rng: &mut SecureRng,
    ) -> Option<StepInput> {
        assert!(
            self.pending.is_none(),
            "a step was given out and not applied"
        );
        if self.failed || self.epoch >= self.config.local_epochs {
            return None;
        }
        if let Some(ahead) = ahead {
            assert_eq!(
                (ahead.round, ahead.step),
                (self.round, self.totals.steps),
                "a batch sampled ahead for another step"
            );
            self.pending = Some(ahead.input.len());
            return Some(ahead.input);
        }
        let input = match self.config.dp {
            Some(dp) => self.poisson_input(&dp, task, shard, rng),
            None => {
                if self.step == 0 {
                    rng.shuffle(&mut self.order);
                }
                let b = self.config.expected_batch(self.n).round().max(1.0) as usize;
                let start = (self.step as usize).saturating_mul(b).min(self.n);
                let batch = &self.order[start..start.saturating_add(b).min(self.n)];
                let (images, labels) = task.batch(shard, batch);
                StepInput {
                    images,
                    labels,
                    clip: None,
                }
            }
        };
        self.pending = Some(input.len());
        Some(input)
    }

    /// A DP step's input: a Poisson sample of the shard, clipped at C. The one place its draws
    /// are made, whether at the step ([`Self::next_input`]) or ahead ([`Self::sample_ahead`]).
    fn poisson_input(
        &self,
        dp: &DpSgdConfig,
        task: &Task,
        shard: &Dataset,
        rng: &mut SecureRng,
    ) -> StepInput {
        let batch = rng.poisson_sample(self.n, self.q);
        let (images, labels) = task.batch(shard, &batch);
        StepInput {
            images,
            labels,
            clip: Some(dp.max_grad_norm),
        }
    }

    /// Takes the step whose examples [`Self::next_input`] gave out, with `g` the clipped sum of
    /// their gradients: noise (DP), the ledger entry, the mean, the optimizer. After an error
    /// the round is over: no more steps, and [`Self::finish`] gives no update.
    pub fn apply(
        &mut self,
        g: BatchGradient,
        privacy: &mut ClientPrivacy,
    ) -> Result<FitProgress, LearningError> {
        self.apply_noised(g, None, privacy)
    }

    /// The noise of the step given out, drawn now from `rng` (the client's): `None` without DP
    /// or without a step given out. Drawn right after the step's sample, as [`Self::apply`]
    /// would draw it after the gradient, it is the same draws in the same order.
    pub fn draw_noise(&self, rng: &mut SecureRng) -> Option<StepNoise> {
        let dp = self.config.dp?;
        self.pending?;
        let mut values = vec![0.0; self.params.len()];
        add_gaussian_noise(&mut values, noise_std(&dp), rng);
        Some(StepNoise {
            values,
            round: self.round,
            step: self.totals.steps,
        })
    }

    /// The next step's batch, sampled while the step given out is still being computed (a
    /// pool's training worker does it while its helpers compute), with the draws
    /// [`Self::next_input`] would make after [`Self::apply_noised`], in the same order: so only
    /// once `noise`, the pending step's own ([`Self::draw_noise`]), is drawn — it comes first
    /// from the same RNG — and only with DP (Poisson batches; a non-DP epoch reshuffles at its
    /// first step). `None` otherwise, and when the pending step is the round's last.
    pub fn sample_ahead(
        &self,
        task: &Task,
        shard: &Dataset,
        rng: &mut SecureRng,
        noise: Option<&StepNoise>,
    ) -> Option<InputAhead> {
        let dp = self.config.dp?;
        let noise = noise?;
        self.pending?;
        let own = (noise.round, noise.step) == (self.round, self.totals.steps);
        let last = self.step + 1 >= self.steps_per_epoch
            && self.epoch.saturating_add(1) >= self.config.local_epochs;
        if !own || last || self.failed {
            return None;
        }
        Some(InputAhead {
            input: self.poisson_input(&dp, task, shard, rng),
            round: self.round,
            step: self.totals.steps + 1,
        })
    }

    /// [`Self::apply`] with the step's noise drawn ahead ([`Self::draw_noise`]); `None` draws it
    /// now. Noise drawn for another step is an error (and ends the round).
    pub fn apply_noised(
        &mut self,
        g: BatchGradient,
        noise: Option<StepNoise>,
        privacy: &mut ClientPrivacy,
    ) -> Result<FitProgress, LearningError> {
        let result = self.take_step(g, noise, privacy);
        self.failed |= result.is_err();
        result
    }

    fn take_step(
        &mut self,
        g: BatchGradient,
        noise: Option<StepNoise>,
        privacy: &mut ClientPrivacy,
    ) -> Result<FitProgress, LearningError> {
        let Some(expected) = self.pending.take() else {
            panic!("apply without a step given out");
        };
        if g.batch_size != expected || g.sum.len() != self.params.len() {
            return Err(LearningError::Worker(format!(
                "a step's gradient covers {} examples and {} values: expected {expected} and {}",
                g.batch_size,
                g.sum.len(),
                self.params.len()
            )));
        }
        let mut grad = g.sum;
        let denominator = match self.config.dp {
            Some(dp) => {
                match noise {
                    Some(n) if (n.round, n.step) != (self.round, self.totals.steps) => {
                        return Err(LearningError::Worker(format!(
                            "noise drawn for step {} of round {} applied to step {} of round {}: expected the step's own",
                            n.step, n.round, self.totals.steps, self.round
                        )));
                    }
                    // Drawn by this round for this step, so of this model's length.
                    Some(n) => grad.iter_mut().zip(&n.values).for_each(|(g, z)| *g += z),
                    None => add_gaussian_noise(&mut grad, noise_std(&dp), &mut privacy.rng),
                }
                privacy
                    .ledger
                    .record(self.q, dp.noise_multiplier as f64, 1)?;
                self.config.expected_batch(self.n) as f32
            }
            None => g.batch_size.max(1) as f32,
        };
        grad.iter_mut().for_each(|v| *v /= denominator);
        if self.config.dp.is_some() || g.batch_size > 0 {
            self.optimizer
                .step(&mut self.params, &grad, self.config.learning_rate);
        }
        let t = &mut self.totals;
        t.loss_sum += g.loss_sum;
        t.seen += g.batch_size;
        t.correct += g.correct;
        t.clipped += g.clipped;
        t.steps += 1;
        let progress = FitProgress {
            epoch: self.epoch,
            epochs: self.config.local_epochs,
            step: self.step,
            steps_per_epoch: self.steps_per_epoch,
            batch_loss: g.loss_sum / g.batch_size.max(1) as f64,
        };
        self.step += 1;
        if self.step >= self.steps_per_epoch {
            self.step = 0;
            self.epoch += 1;
        }
        Ok(progress)
    }

    /// The round's update and metrics, once every step is applied.
    pub fn finish(self, privacy: &mut ClientPrivacy) -> Result<FitRes, LearningError> {
        if self.failed || self.pending.is_some() {
            return Err(LearningError::Worker(
                "the round stopped at a step that failed: no update".into(),
            ));
        }
        if self.config.dp.is_none() {
            // Counted even if it diverged: the examples were looked at without noise.
            privacy.unprotected_rounds = privacy.unprotected_rounds.saturating_add(1);
        }
        if self.params.iter().any(|v| !v.is_finite()) {
            return Err(LearningError::Diverged);
        }
        let update = self
            .params
            .iter()
            .zip(&self.global)
            .map(|(p, g)| p - g)
            .collect();
        let t = self.totals;
        let seen = t.seen.max(1) as f64;
        Ok(FitRes {
            update: Update::Delta(update),
            num_examples: self.n,
            metrics: FitMetrics {
                loss: t.loss_sum / seen,
                accuracy: t.correct as f64 / seen,
                epsilon: Some(privacy.epsilon()?),
                steps: t.steps,
                clipped_fraction: t.clipped as f64 / seen,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_example_once_and_are_balanced() {
        for n in 0..40 {
            for workers in 0..9 {
                let s = slices(n, workers);
                assert!(s.len() <= workers.max(1), "{n} over {workers}: {s:?}");
                assert!(s.iter().all(|r| !r.is_empty()));
                let covered: Vec<usize> = s.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(covered, (0..n).collect::<Vec<_>>());
                let lens: Vec<usize> = s.iter().map(|r| r.len()).collect();
                assert!(lens.is_sorted(), "smaller slices first: {lens:?}");
                let (lo, hi) = (lens.iter().min(), lens.iter().max());
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    assert!(hi - lo <= 1, "{n} over {workers}: {lens:?}");
                }
            }
        }
    }

    /// A step whose gradient does not fit the step it was given for ends the round: no further
    /// batch is drawn (a redraw after a failure would make sampling depend on failures), and
    /// the round gives no update.
    #[test]
    fn a_failed_step_ends_the_round_without_a_redraw() {
        use crate::client::{ClientPrivacy, Fit, start_fit};
        use crate::task::MNIST;
        let data = Dataset {
            images: vec![7; 40 * 784],
            labels: (0..40).map(|i| (i % 10) as u8).collect(),
        };
        let config = TrainConfig {
            batching: crate::client::Batching::BatchSize(20),
            ..TrainConfig::default()
        };
        let global = vec![0.0; MNIST.model().layout().num_params()];
        let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
        let Ok(Fit::Steps(mut steps)) = start_fit(&MNIST, &global, &config, &data, &mut privacy)
        else {
            panic!("a local round");
        };
        let input = steps
            .next_input(&MNIST, &data, &mut privacy.rng)
            .expect("a step");
        let wrong = BatchGradient::empty(global.len() + 1);
        let err = steps
            .apply(wrong, &mut privacy)
            .expect_err("a gradient of the wrong size");
        assert!(err.to_string().contains("expected"), "{err} ({input:?})");
        assert!(
            steps.next_input(&MNIST, &data, &mut privacy.rng).is_none(),
            "no redraw"
        );
        assert_eq!(privacy.ledger.steps(), 0, "nothing noised, nothing charged");
        let end = steps
            .finish(&mut privacy)
            .expect_err("no update from a failed round");
        assert!(end.to_string().contains("no update"), "{end}");
    }

    /// 40 MNIST-shaped examples of fixed pixels, 4 of each class.
    fn shard_of_40() -> Dataset {
        Dataset {
            images: (0..40 * 784).map(|i| (i * 7 % 256) as u8).collect(),
            labels: (0..40).map(|i| (i % 10) as u8).collect(),
        }
    }

    /// A pool samples the next step's batch while its helpers compute (after the step's noise):
    /// the same batches and the same model as a round that samples each after the step before,
    /// none past the round's last step or before the step's noise, and none taken after a
    /// failed step.
    #[test]
    fn batches_sampled_ahead_are_next_input_s_batches() {
        use crate::client::{ClientPrivacy, Fit, start_fit};
        use crate::dpsgd::batch_gradient;
        use crate::task::MNIST;
        let data = shard_of_40();
        let config = TrainConfig {
            local_epochs: 2,
            batching: crate::client::Batching::BatchSize(10),
            ..TrainConfig::default()
        };
        let model = MNIST.model();
        let global = model.init(&burn::tensor::Device::flex()).to_flat();
        let start = || {
            let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
            privacy.rng = SecureRng::seeded(21);
            match start_fit(&MNIST, &global, &config, &data, &mut privacy) {
                Ok(Fit::Steps(steps)) => (steps, privacy),
                _ => panic!("a local round"),
            }
        };
        let run = |ahead_too: bool| {
            let (mut steps, mut privacy) = start();
            let (mut inputs, mut ahead, mut none_ahead) = (Vec::new(), None, 0);
            while let Some(input) =
                steps.next_input_or(ahead.take(), &MNIST, &data, &mut privacy.rng)
            {
                let g = batch_gradient(
                    &model,
                    steps.params(),
                    &input.images,
                    &input.labels,
                    input.clip,
                )
                .expect("fits");
                let noise = steps.draw_noise(&mut privacy.rng);
                if ahead_too {
                    assert!(
                        steps
                            .sample_ahead(&MNIST, &data, &mut privacy.rng, None)
                            .is_none(),
                        "not before the step's noise"
                    );
                    ahead = steps.sample_ahead(&MNIST, &data, &mut privacy.rng, noise.as_ref());
                    none_ahead += usize::from(ahead.is_none());
                }
                inputs.push(input);
                steps.apply_noised(g, noise, &mut privacy).expect("a step");
            }
            (inputs, steps.params().to_vec(), none_ahead)
        };
        let (inputs, params, none_ahead) = run(true);
        let (plain_inputs, plain_params, _) = run(false);
        assert_eq!(inputs.len(), 8, "2 epochs of 4 steps");
        assert_eq!((&inputs, &params), (&plain_inputs, &plain_params));
        assert_eq!(none_ahead, 1, "nothing sampled after the round's last step");
        // A step that fails drops the batch sampled after it.
        let (mut steps, mut privacy) = start();
        steps
            .next_input(&MNIST, &data, &mut privacy.rng)
            .expect("a step");
        let noise = steps.draw_noise(&mut privacy.rng);
        let ahead = steps.sample_ahead(&MNIST, &data, &mut privacy.rng, noise.as_ref());
        assert!(ahead.is_some());
        let wrong = BatchGradient::empty(global.len() + 1);
        steps
            .apply_noised(wrong, noise, &mut privacy)
            .expect_err("a gradient of the wrong size");
        assert!(
            steps
                .next_input_or(ahead, &MNIST, &data, &mut privacy.rng)
                .is_none()
        );
    }

    /// The noise a pool draws while its helpers compute is the noise `apply` would draw (the
    /// same draws in the same order: the same model), and only for its own step: noise drawn
    /// for one step and offered to the next is refused and ends the round.
    #[test]
    fn noise_drawn_ahead_is_apply_s_noise_and_only_for_its_own_step() {
        use crate::client::{ClientPrivacy, Fit, start_fit};
        use crate::dpsgd::batch_gradient;
        use crate::task::MNIST;
        let data = shard_of_40();
        let config = TrainConfig {
            batching: crate::client::Batching::BatchSize(20),
            dp: Some(crate::client::DpSgdConfig {
                max_grad_norm: 0.7,
                noise_multiplier: 1.1, // σ and C apart: the noise is σ·C, neither alone
                delta: 1e-5,
                distributed: None,
            }),
            ..TrainConfig::default()
        };
        let model = MNIST.model();
        let global = model.init(&burn::tensor::Device::flex()).to_flat();
        let start = |seed: u64| {
            let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
            privacy.rng = SecureRng::seeded(seed);
            match start_fit(&MNIST, &global, &config, &data, &mut privacy) {
                Ok(Fit::Steps(steps)) => (steps, privacy),
                _ => panic!("a local round"),
            }
        };
        let gradient = |steps: &LocalSteps, input: &StepInput| {
            batch_gradient(
                &model,
                steps.params(),
                &input.images,
                &input.labels,
                input.clip,
            )
            .expect("fits")
        };
        let run = |ahead: bool| {
            let (mut steps, mut privacy) = start(11);
            while let Some(input) = steps.next_input(&MNIST, &data, &mut privacy.rng) {
                let noise = ahead.then(|| steps.draw_noise(&mut privacy.rng).expect("DP"));
                let g = gradient(&steps, &input);
                steps.apply_noised(g, noise, &mut privacy).expect("a step");
            }
            (steps.params().to_vec(), privacy.ledger.steps())
        };
        // The next step given out, offered `noise`: refused.
        let refused = |steps: &mut LocalSteps, privacy: &mut ClientPrivacy, noise| {
            let input = steps
                .next_input(&MNIST, &data, &mut privacy.rng)
                .expect("a step");
            steps
                .apply_noised(gradient(steps, &input), noise, privacy)
                .expect_err("noise not drawn for this step")
        };
        let (ahead, noised) = run(true);
        assert_eq!((ahead.clone(), noised), run(false));
        assert_eq!(noised, 2, "two noised steps");
        // Stale noise: drawn for step 0, offered to step 1.
        let (mut steps, mut privacy) = start(12);
        assert!(
            steps.draw_noise(&mut privacy.rng).is_none(),
            "no step given out"
        );
        let input = steps
            .next_input(&MNIST, &data, &mut privacy.rng)
            .expect("a step");
        let stale = steps.draw_noise(&mut privacy.rng);
        steps
            .apply(gradient(&steps, &input), &mut privacy)
            .expect("step 0");
        let err = refused(&mut steps, &mut privacy, stale);
        let want = format!(
            "noise drawn for step 0 of round {0} applied to step 1 of round {0}",
            steps.round
        );
        assert!(err.to_string().contains(&want), "{err}");
        assert_eq!(privacy.ledger.steps(), 1, "the refused step is not charged");
        assert!(
            steps.next_input(&MNIST, &data, &mut privacy.rng).is_none(),
            "the round is over"
        );
        // Another round's noise, drawn for the same step number: refused too.
        let (mut a, mut privacy_a) = start(13);
        let (mut b, mut privacy_b) = start(13);
        a.next_input(&MNIST, &data, &mut privacy_a.rng)
            .expect("a step");
        let theirs = a.draw_noise(&mut privacy_a.rng);
        let err = refused(&mut b, &mut privacy_b, theirs);
        assert!(err.to_string().contains("expected the step's own"), "{err}");
        assert!(
            format!("{:?}", a.draw_noise(&mut privacy_a.rng)).starts_with("Some(StepNoise(round")
        );
        // Without DP there is no noise to draw.
        let plain = TrainConfig { dp: None, ..config };
        let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
        let Ok(Fit::Steps(mut steps)) = start_fit(&MNIST, &global, &plain, &data, &mut privacy)
        else {
            panic!("a local round");
        };
        steps
            .next_input(&MNIST, &data, &mut privacy.rng)
            .expect("a step");
        assert!(steps.draw_noise(&mut privacy.rng).is_none());
    }
}
