//! A step's clipped gradient sum computed on several threads: the batch is cut into contiguous
//! slices ([`crate::steps::slices`]), each thread builds the model from the flat parameters and
//! sums its slice's clipped per-example gradients, and the slices' sums are added. No thread
//! sees the RNG: the noise is added once, afterwards, by [`crate::steps::LocalSteps`].
//!
//! (The browser's pool of Web Workers does the same with messages instead of threads, in
//! `client-wasm`.)

use crate::LearningError;
use crate::dpsgd::{BatchGradient, batch_gradient};
use crate::model::TinyCnnConfig;
use crate::steps::{StepInput, slices};

/// Computes a step's (clipped) gradient sum. Implementations differ only in where the work
/// runs: none gets the noise source or the ledger.
pub trait StepGradient {
    fn gradient(
        &mut self,
        model: &TinyCnnConfig,
        params: &[f32],
        input: &StepInput,
    ) -> Result<BatchGradient, LearningError>;
}

/// The clipped gradient sum of one slice, computed on the calling thread.
pub fn slice_gradient(
    model: &TinyCnnConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
    clip: Option<f32>,
) -> Result<BatchGradient, LearningError> {
    if labels.is_empty() {
        return Ok(BatchGradient::empty(params.len()));
    }
    batch_gradient(model, params, images, labels, clip)
}

/// A step on `n` threads (this one and n − 1 scoped ones). One thread computes in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads(pub usize);

impl StepGradient for Threads {
    fn gradient(
        &mut self,
        model: &TinyCnnConfig,
        params: &[f32],
        input: &StepInput,
    ) -> Result<BatchGradient, LearningError> {
        let parts = slices(input.len(), self.0);
        if parts.len() <= 1 {
            return slice_gradient(model, params, &input.images, &input.labels, input.clip);
        }
        spread(model, params, input, &parts)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn spread(
    model: &TinyCnnConfig,
    params: &[f32],
    input: &StepInput,
    parts: &[std::ops::Range<usize>],
) -> Result<BatchGradient, LearningError> {
    let of = parts.len();
    std::thread::scope(|s| {
        let run = |r: &std::ops::Range<usize>| {
            let (images, labels) = input.slice(r.clone());
            slice_gradient(model, params, images, labels, input.clip)
        };
        let others: Vec<_> = parts[1..].iter().map(|r| s.spawn(move || run(r))).collect();
        // This thread's own slice fails like the others': an error, not a panic in the caller.
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&parts[0])));
        // Every thread is joined before any error is returned: a scope left with a panicked
        // thread unjoined would panic itself.
        let joined: Vec<_> = std::iter::once(first)
            .chain(others.into_iter().map(|h| h.join()))
            .collect();
        let mut total = BatchGradient::empty(params.len());
        for (i, result) in joined.into_iter().enumerate() {
            let part = result.map_err(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("it panicked");
                LearningError::Worker(format!("training thread {} of {of} failed: {why}", i + 1))
            })??;
            total.add(&part)?;
        }
        Ok(total)
    })
}

/// wasm32 has no threads here (the browser's pool of workers is in `client-wasm`): one slice.
#[cfg(target_arch = "wasm32")]
fn spread(
    model: &TinyCnnConfig,
    params: &[f32],
    input: &StepInput,
    _parts: &[std::ops::Range<usize>],
) -> Result<BatchGradient, LearningError> {
    slice_gradient(model, params, &input.images, &input.labels, input.clip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Batching, ClientPrivacy, DpSgdConfig, TrainConfig};
    use crate::data::Dataset;
    use crate::dpsgd::SecureRng;
    use crate::task::MNIST;
    use burn::tensor::Device;
    use protocol::config::Optimizer;

    /// Records of varied pixels and all ten labels.
    fn records(n: usize, seed: u64) -> Dataset {
        let mut rng = SecureRng::seeded(seed);
        Dataset {
            images: (0..n * 784)
                .map(|_| (rng.normal().abs() * 90.0) as u8)
                .collect(),
            labels: (0..n).map(|i| (i * 3 % 10) as u8).collect(),
        }
    }

    fn input(data: &Dataset, clip: Option<f32>) -> StepInput {
        let all: Vec<usize> = (0..data.len()).collect();
        let (images, labels) = MNIST.batch(data, &all);
        StepInput {
            images,
            labels,
            clip,
        }
    }

    fn init() -> Vec<f32> {
        let device = Device::flex();
        device.seed(5);
        MNIST.model().init(&device).to_flat()
    }

    /// The mechanism's first half: whatever the number of threads, a step's gradient is the
    /// same clipped sum (up to float summation order), with every example clipped on its own.
    #[test]
    fn every_thread_count_gives_the_same_clipped_sum() {
        let (model, params) = (MNIST.model(), init());
        let one_input = input(&records(7, 1), Some(0.05));
        let one = Threads(1)
            .gradient(&model, &params, &one_input)
            .expect("1 thread");
        assert_eq!(one.clipped, 7, "C is small enough to clip every example");
        for n in 2..=8 {
            let got = Threads(n)
                .gradient(&model, &params, &one_input)
                .expect("n threads");
            assert_eq!(
                (got.batch_size, got.clipped, got.correct),
                (one.batch_size, one.clipped, one.correct),
                "{n} threads"
            );
            assert!((got.loss_sum - one.loss_sum).abs() < 1e-4 * one.loss_sum.abs().max(1.0));
            for (a, b) in got.sum.iter().zip(&one.sum) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{n} threads: {a} vs {b}"
                );
            }
            let norm = got.sum.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                norm <= 7.0 * 0.05 * (1.0 + 1e-5),
                "7 clipped examples: norm {norm}"
            );
        }
    }

    /// The mechanism's second half: the noise is drawn once per step, not once per worker.
    /// C is so small that the clipped sum is negligible and σ·C = 1, so the update of a
    /// one-step round (SGD, learning rate 1, batch = shard of 64) is the noise over 64: std
    /// 1/64 per coordinate. Drawn once per thread, it would be 2/64 on 4 threads.
    #[test]
    fn the_noise_is_drawn_once_per_step_on_any_number_of_threads() {
        let data = records(64, 2);
        let config = TrainConfig {
            local_epochs: 1,
            batching: Batching::BatchSize(64),
            learning_rate: 1.0,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            dp: Some(DpSgdConfig {
                max_grad_norm: 1e-6,
                noise_multiplier: 1e6,
                delta: 1e-5,
                distributed: None,
            }),
        };
        for threads in [1, 4] {
            let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
            let res = crate::fit_with(
                &MNIST,
                &init(),
                &config,
                &data,
                &mut privacy,
                &mut Threads(threads),
                &mut |_| {},
            )
            .expect("fit");
            assert_eq!(res.metrics.steps, 1);
            let d = res.update.delta().expect("local DP gives a delta");
            let var = d.iter().map(|v| (*v as f64 * 64.0).powi(2)).sum::<f64>() / d.len() as f64;
            // 12 810 coordinates: the std estimate's standard error is ≈ 0.6 %.
            assert!(
                (var.sqrt() - 1.0).abs() < 0.04,
                "{threads} threads: noise std × batch = {} (expected 1)",
                var.sqrt()
            );
        }
    }

    /// A thread that fails (here a label outside the model's classes makes it panic) fails the
    /// step with an error naming it, instead of taking the process down — the calling thread's
    /// own slice (the first) as well as a spawned thread's.
    #[test]
    fn a_thread_that_fails_mid_step_is_an_error_not_a_panic() {
        let (model, params) = (MNIST.model(), init());
        for (example, thread) in [(5, 3), (0, 1)] {
            let mut bad = input(&records(6, 3), Some(1.0));
            bad.labels[example] = 200;
            let err = Threads(3)
                .gradient(&model, &params, &bad)
                .expect_err("a thread cannot compute its slice");
            let text = err.to_string();
            assert!(
                text.contains(&format!("training thread {thread} of 3 failed")),
                "{text}"
            );
        }
    }

    /// A step whose gradient could not be computed ends the round with that error, and only
    /// the steps that were taken (noise drawn, update made) are in the ledger.
    #[test]
    fn a_worker_failing_mid_round_fails_the_round_and_charges_only_steps_taken() {
        struct FailsAt(usize, Threads);
        impl StepGradient for FailsAt {
            fn gradient(
                &mut self,
                model: &TinyCnnConfig,
                params: &[f32],
                input: &StepInput,
            ) -> Result<BatchGradient, LearningError> {
                self.0 -= 1;
                if self.0 == 0 {
                    return Err(LearningError::Worker("worker 2 of 2 went away".into()));
                }
                self.1.gradient(model, params, input)
            }
        }
        let data = records(40, 4);
        // q = 1/2 over 40 records: an empty Poisson batch (which asks no worker) has
        // probability 2⁻⁴⁰. Three epochs of two steps.
        let config = TrainConfig {
            local_epochs: 3,
            batching: Batching::BatchSize(20),
            ..TrainConfig::default()
        };
        let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
        let mut seen = 0;
        let err = crate::fit_with(
            &MNIST,
            &init(),
            &config,
            &data,
            &mut privacy,
            &mut FailsAt(3, Threads(2)),
            &mut |_| seen += 1,
        )
        .expect_err("the third step's worker fails");
        assert!(err.to_string().contains("went away"), "{err}");
        assert_eq!((privacy.ledger.steps(), seen), (2, 2), "charged, taken");
    }
}
