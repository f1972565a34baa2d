//! A step's clipped gradient sum computed on several threads: the batch is cut into contiguous
//! slices ([`crate::steps::slices`]), each thread builds the model from the flat parameters and
//! sums its slice's clipped per-example gradients, and the slices' sums are added. No thread
//! sees the RNG: the noise is added once, afterwards, by [`crate::steps::LocalSteps`].
//!
//! (The browser's pool of Web Workers does the same with messages instead of threads, in
//! `client-wasm`, for a distributed round's rounded sum too; [`Threads`] computes that one on
//! the calling thread: the simulator's clients already share the cores.)

use crate::LearningError;
use crate::distributed::{RoundedSum, Rounding, rounded_slice_sum};
use crate::dpsgd::{BatchGradient, batch_gradient};
use crate::model::TinyCnnConfig;
use crate::steps::StepInput;

/// Computes a step's (clipped) gradient sum. Implementations differ only in where the work
/// runs: none gets the noise source or the ledger.
pub trait StepGradient {
    fn gradient(
        &mut self,
        model: &TinyCnnConfig,
        params: &[f32],
        input: &StepInput,
    ) -> Result<BatchGradient, LearningError>;

    /// A distributed step's rounded sum: on the calling thread unless an implementation
    /// shares it (its slices then draw their own streams of the rounding key).
    fn rounded(
        &mut self,
        model: &TinyCnnConfig,
        params: &[f32],
        input: &StepInput,
        rounding: &Rounding,
    ) -> Result<RoundedSum, LearningError> {
        rounded_slice_sum(model, params, &input.images, &input.labels, rounding, 0)
    }
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

/// A step on `n` threads: the calling one and n − 1 helper threads, started at the first step
/// that needs them and kept until this value is dropped. Threads started afresh at every step
/// cost a spawn and a join per step, and each new thread's allocator heap starts cold (which
/// of the two weighs more was not measured): kept, 2 threads at batch 64 ran ≈ 24 % faster
/// (`benchmarks/pool-ab-native.log`). One thread computes in place and starts nothing.
pub struct Threads {
    count: usize,
    #[cfg(not(target_arch = "wasm32"))]
    helpers: Vec<helpers::Helper>,
}

impl Threads {
    /// `count` threads in all (0 counts as 1). None is started before a step needs it.
    pub fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            #[cfg(not(target_arch = "wasm32"))]
            helpers: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads({})", self.count)
    }
}

impl StepGradient for Threads {
    fn gradient(
        &mut self,
        model: &TinyCnnConfig,
        params: &[f32],
        input: &StepInput,
    ) -> Result<BatchGradient, LearningError> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let parts = crate::steps::slices(input.len(), self.count);
            if parts.len() > 1 {
                return self.spread(model, params, input, &parts);
            }
        }
        // One slice; always on wasm32, which has no threads here (the browser's pool of
        // workers is in `client-wasm`).
        slice_gradient(model, params, &input.images, &input.labels, input.clip)
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// What a failed thread's panic said, for the user.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("it panicked")
}

#[cfg(not(target_arch = "wasm32"))]
/// A slice's result on its thread: a panic (a bug, or a broken input) caught as its payload.
type SliceResult = std::thread::Result<Result<BatchGradient, LearningError>>;

#[cfg(not(target_arch = "wasm32"))]
/// Adds the slices' results in order, each failure named by its thread (1 is the caller).
fn total(dim: usize, results: Vec<SliceResult>) -> Result<BatchGradient, LearningError> {
    let of = results.len();
    let mut total = BatchGradient::empty(dim);
    for (i, result) in results.into_iter().enumerate() {
        let part = result.map_err(|panic| {
            LearningError::Worker(format!(
                "training thread {} of {of} failed: {}",
                i + 1,
                panic_text(panic.as_ref())
            ))
        })??;
        total.add(&part)?;
    }
    Ok(total)
}

#[cfg(not(target_arch = "wasm32"))]
impl Threads {
    fn spread(
        &mut self,
        model: &TinyCnnConfig,
        params: &[f32],
        input: &StepInput,
        parts: &[std::ops::Range<usize>],
    ) -> Result<BatchGradient, LearningError> {
        while self.helpers.len() < parts.len() - 1 {
            let index = self.helpers.len() + 2;
            self.helpers.push(helpers::Helper::start(index)?);
        }
        let shared: std::sync::Arc<[f32]> = params.into();
        let sent: Vec<bool> = self
            .helpers
            .iter()
            .zip(&parts[1..])
            .map(|(helper, r)| {
                let (images, labels) = input.slice(r.clone());
                helper.send(helpers::Job {
                    model: model.clone(),
                    params: shared.clone(),
                    images: images.to_vec(),
                    labels: labels.to_vec(),
                    clip: input.clip,
                })
            })
            .collect();
        // This thread's own slice fails like the others': an error, not a panic in the caller.
        let (images, labels) = input.slice(parts[0].clone());
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slice_gradient(model, params, images, labels, input.clip)
        }));
        // Every helper that was sent a slice answers before any error is returned: no answer
        // is left in a channel for the next step to take as its own.
        let mut results = vec![own];
        let mut lost = false;
        for (helper, sent) in self.helpers.iter().zip(sent) {
            let answer = sent.then(|| helper.answer()).flatten();
            lost |= answer.is_none();
            results.push(answer.unwrap_or_else(|| Err(Box::new("it stopped") as Box<_>)));
        }
        if lost {
            // A thread that is gone is started again at the next step.
            self.helpers.clear();
        }
        total(params.len(), results)
    }
}

/// The kept helper threads: each waits for a job, computes its slice and answers, until its
/// [`Helper`] is dropped.
#[cfg(not(target_arch = "wasm32"))]
mod helpers {
    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::thread::JoinHandle;

    use super::{SliceResult, slice_gradient};
    use crate::LearningError;
    use crate::model::TinyCnnConfig;

    /// A slice, owned: the helper outlives the step that borrowed the inputs.
    pub(super) struct Job {
        pub model: TinyCnnConfig,
        pub params: Arc<[f32]>,
        pub images: Vec<f32>,
        pub labels: Vec<u8>,
        pub clip: Option<f32>,
    }

    pub(super) struct Helper {
        jobs: Option<Sender<Job>>,
        answers: Receiver<SliceResult>,
        thread: Option<JoinHandle<()>>,
    }

    impl Helper {
        /// Starts training thread number `index` (the caller is number 1).
        pub fn start(index: usize) -> Result<Self, LearningError> {
            let (jobs, inbox) = channel::<Job>();
            let (outbox, answers) = channel();
            let thread = std::thread::Builder::new()
                .name(format!("training {index}"))
                .spawn(move || {
                    for job in inbox {
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let Job {
                                model,
                                params,
                                images,
                                labels,
                                clip,
                            } = job;
                            slice_gradient(&model, &params, &images, &labels, clip)
                        }));
                        if outbox.send(result).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| {
                    LearningError::Worker(format!("training thread {index} did not start: {e}"))
                })?;
            Ok(Self {
                jobs: Some(jobs),
                answers,
                thread: Some(thread),
            })
        }

        /// Hands the thread a slice; false if the thread is gone.
        pub fn send(&self, job: Job) -> bool {
            self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
        }

        /// The slice's result; `None` if the thread is gone.
        pub fn answer(&self) -> Option<SliceResult> {
            self.answers.recv().ok()
        }
    }

    impl Drop for Helper {
        fn drop(&mut self) {
            // Closing the job channel ends the thread's loop; it is joined so that no thread
            // outlives the pool that owns it.
            self.jobs = None;
            if let Some(thread) = self.thread.take() {
                let _ended = thread.join();
            }
        }
    }
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
        let one = Threads::new(1)
            .gradient(&model, &params, &one_input)
            .expect("1 thread");
        assert_eq!(one.clipped, 7, "C is small enough to clip every example");
        for n in 2..=8 {
            let got = Threads::new(n)
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
                &mut Threads::new(threads),
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
    /// own slice (the first) as well as a helper thread's.
    #[test]
    fn a_thread_that_fails_mid_step_is_an_error_not_a_panic() {
        let (model, params) = (MNIST.model(), init());
        for (example, thread) in [(5, 3), (0, 1)] {
            let mut bad = input(&records(6, 3), Some(1.0));
            bad.labels[example] = 200;
            let err = Threads::new(3)
                .gradient(&model, &params, &bad)
                .expect_err("a thread cannot compute its slice");
            let text = err.to_string();
            assert!(
                text.contains(&format!("training thread {thread} of 3 failed")),
                "{text}"
            );
        }
    }

    /// The kept threads outlive a failed step: the next step on the same pool is computed in
    /// full, and no answer of the failed step (a helper's slice that did succeed) is taken as
    /// one of the next step's — the next sum is exactly a fresh pool's.
    #[test]
    fn a_failed_step_leaves_the_kept_threads_working_and_no_stale_answer() {
        let (model, params) = (MNIST.model(), init());
        let mut pool = Threads::new(3);
        let mut bad = input(&records(6, 3), Some(1.0));
        bad.labels[0] = 200; // the calling thread's slice fails; the two helpers' succeed
        pool.gradient(&model, &params, &bad)
            .expect_err("the first slice cannot be computed");
        let good = input(&records(9, 4), Some(1.0));
        for step in 0..3 {
            let got = pool
                .gradient(&model, &params, &good)
                .expect("the pool still works");
            let fresh = Threads::new(3)
                .gradient(&model, &params, &good)
                .expect("fresh");
            assert_eq!(got.batch_size, 9, "step {step}");
            assert_eq!(
                got.sum, fresh.sum,
                "step {step}: the same slices, the same sum"
            );
        }
        // A helper's slice failing (example 4 is the second thread's) is survived too, and
        // the third thread's answer to that step is not taken for the next one's.
        let mut bad = input(&records(9, 5), Some(1.0));
        bad.labels[4] = 200;
        let err = pool
            .gradient(&model, &params, &bad)
            .expect_err("thread 2's slice");
        assert!(
            err.to_string().contains("training thread 2 of 3 failed"),
            "{err}"
        );
        let again = pool.gradient(&model, &params, &good).expect("and after it");
        let fresh = Threads::new(3)
            .gradient(&model, &params, &good)
            .expect("fresh");
        assert_eq!(again.sum, fresh.sum);
    }

    /// A pool whose steps need fewer threads than it has (a small Poisson batch), then all of
    /// them again, gives each step a fresh pool's sum.
    #[test]
    fn a_step_that_needs_fewer_threads_leaves_the_others_ready() {
        let (model, params) = (MNIST.model(), init());
        let mut pool = Threads::new(4);
        for n in [9, 2, 1, 9, 3, 9] {
            let step = input(&records(n, n as u64), Some(1.0));
            let got = pool.gradient(&model, &params, &step).expect("pool");
            let fresh = Threads::new(4)
                .gradient(&model, &params, &step)
                .expect("fresh");
            assert_eq!((got.batch_size, &got.sum), (n, &fresh.sum), "{n} examples");
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
            &mut FailsAt(3, Threads::new(2)),
            &mut |_| seen += 1,
        )
        .expect_err("the third step's worker fails");
        assert!(err.to_string().contains("went away"), "{err}");
        assert_eq!((privacy.ledger.steps(), seen), (2, 2), "charged, taken");
    }
}
