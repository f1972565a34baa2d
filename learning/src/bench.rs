//! Training-step throughput, shared by the native bench binary and the wasm export so both
//! measure exactly the same code. The clock is passed in: `std::time::Instant` does not exist
//! on wasm32-unknown-unknown.

use burn::tensor::Device;

use crate::distributed::{Rounding, add_noise, mean_gradient, rounded_slice_sum};
use crate::dpsgd::{OptimizerState, SecureRng, add_gaussian_noise};
use crate::model::{CONV1_USED, CONV2_USED, IMAGE_PIXELS, TinyCnnConfig};
use crate::parallel::{StepGradient, Threads};
use crate::steps::StepInput;
use crate::{LearningError, Optimizer};
use protocol::config::{DistributedNoise, rounded_norm_bound};

/// Which step to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Batched gradient + SGD step (non-DP training).
    Plain,
    /// Per-example gradients, clipping, noise, SGD step (DP-SGD).
    DpSgd,
    /// Forward pass only.
    Inference,
    /// One client's distributed-DP step ([`distributed_step`]).
    Distributed,
}

/// Samples per second of steps of `batch` examples that took `step_ms` milliseconds each
/// ([`train_step_times`]); NaN for no step.
pub fn samples_per_second(step_ms: &[f64], batch: usize) -> f64 {
    (step_ms.len() * batch) as f64 / (step_ms.iter().sum::<f64>() / 1000.0)
}

/// The milliseconds of each of `iters` steps of `batch` examples, after `warmup` untimed steps,
/// each local training step's gradient shared by `threads` ([`Threads`]; 1 in wasm; a
/// distributed step on this thread, as the simulator computes it). `now_ms` is a monotonic
/// clock in milliseconds. One setup (model, buffers, inputs) for all the steps, so that how one
/// step's time varies from the next can be told from how it varies between setups (a tab
/// rebuilds its model every round).
pub fn train_step_times(
    kind: StepKind,
    batch: usize,
    threads: usize,
    warmup: usize,
    iters: usize,
    now_ms: &dyn Fn() -> f64,
) -> Result<Vec<f64>, LearningError> {
    let device = Device::flex();
    let config = TinyCnnConfig::new();
    let mut params = config.init(&device).to_flat();
    let mut rng = SecureRng::from_os()?;
    // Image-like inputs: values do not change the cost of a dense CNN.
    let images: Vec<f32> = (0..batch * IMAGE_PIXELS).map(|_| rng.normal()).collect();
    let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
    let mut opt = OptimizerState::new(Optimizer::Sgd { momentum: 0.0 }, params.len());
    let mut workers = Threads::new(threads);
    let input = StepInput {
        images: images.clone(),
        labels,
        clip: (kind == StepKind::DpSgd).then_some(1.0),
    };
    let mut step = |params: &mut Vec<f32>| -> Result<(), LearningError> {
        match kind {
            StepKind::Inference => {
                std::hint::black_box(config.logits(params, &images)?);
            }
            StepKind::Distributed => {
                distributed_step(&config, params, &input, &mut opt, &mut rng)?;
            }
            StepKind::Plain | StepKind::DpSgd => {
                let mut g = workers.gradient(&config, params, &input)?.sum;
                if kind == StepKind::DpSgd {
                    add_gaussian_noise(&mut g, 1.0, &mut rng);
                }
                g.iter_mut().for_each(|v| *v /= batch as f32);
                opt.step(params, &g, 0.01);
            }
        }
        Ok(())
    };
    for _ in 0..warmup {
        step(&mut params)?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = now_ms();
        step(&mut params)?;
        times.push(now_ms() - start);
    }
    Ok(times)
}

/// A distributed-DP step as a client computes it, with the run form's defaults (S = 2 000,
/// β = e^−0.5, C = 1): a fresh rounding key (one a round), every example's gradient clipped
/// and rounded ([`rounded_slice_sum`], on this thread), its noise share for 3 contributors at
/// z = 1, then the server's update on the mean, so that it compares with a local step.
fn distributed_step(
    config: &TinyCnnConfig,
    params: &mut [f32],
    input: &StepInput,
    opt: &mut OptimizerState,
    rng: &mut SecureRng,
) -> Result<(), LearningError> {
    let noise = DistributedNoise {
        scale: 2000.0,
        beta: (-0.5f64).exp(),
        contributors: 3,
    };
    let bound = rounded_norm_bound(noise.scale, params.len() as u64, noise.beta);
    let rounding = Rounding::new(1.0, noise.scale, bound, rng.key())?;
    let (images, labels) = (&input.images, &input.labels);
    let mut part = rounded_slice_sum(config, params, images, labels, &rounding, 0)?;
    add_noise(&mut part.sum, noise.share_variance(1.0), rng)?;
    let grad = mean_gradient(&part.sum, 1.0, noise.scale, labels.len() as f64)?;
    opt.step(params, &grad, 0.01);
    Ok(())
}

/// Ledgers the accountant benchmarks time: `(name, q, σ, steps)` at δ = 1e-5, the σ solve for
/// ε = 3 at the same q and steps.
pub const ACCOUNTANT_CASES: [(&str, f64, f64, u64); 4] = [
    (
        "demo client: batch 256 of 6 000, 470 steps",
        256.0 / 6000.0,
        1.0,
        470,
    ),
    (
        "central: batch 512 of 60 000, 4 688 steps",
        512.0 / 60000.0,
        1.2,
        4688,
    ),
    (
        "Abadi's MNIST: batch 256 of 60 000, 14 100 steps",
        256.0 / 60000.0,
        1.1,
        14100,
    ),
    ("a tiny q: 0.001, 100 000 steps", 0.001, 0.8, 100_000),
];

/// Milliseconds of one ε evaluation of a ledger of `steps` steps at (`q`, `sigma`) and of one
/// σ solve for ε = 3 over as many steps, under the PLD (`pld`) or the RDP accountant, timed
/// with `now` (milliseconds): the costs of a ledger update and of a plan's σ.
pub fn accountant_ms(
    pld: bool,
    q: f64,
    sigma: f64,
    steps: u64,
    now: &dyn Fn() -> f64,
) -> Result<(f64, f64), crate::accountant::AccountantError> {
    const DELTA: f64 = 1e-5;
    crate::accountant::clear_memos();
    let t0 = now();
    if pld {
        crate::pld::epsilon(&[(q, sigma, steps)], DELTA)?;
    } else {
        crate::accountant::rdp_epsilon(q, sigma, steps, DELTA)?;
    }
    let t1 = now();
    if pld {
        crate::pld::noise_multiplier_for(3.0, q, steps, DELTA)?;
    } else {
        crate::accountant::rdp_noise_multiplier_for(3.0, q, steps, DELTA)?;
    }
    Ok((t1 - t0, now() - t1))
}

/// GFLOP/s of each matrix product of a batch-64 DP-SGD step, alone, in the step's own shapes
/// and orientations (`learning::kernels::matmul`): `(name, milliseconds, GFLOP/s)`. Shows what
/// the gemm kernels reach on this host (wasm: `gemmRates()`), i.e. the ceiling of the step.
/// (conv2's transpose and weight gradients are not products any more: they follow the pool's
/// routes, `learning::routes`.)
pub fn gemm_rates(now_ms: &dyn Fn() -> f64) -> Vec<(String, f64, f64)> {
    step_products(&TinyCnnConfig::new(), 64)
        .into_iter()
        .map(|p| {
            let ms = p.time_ms(now_ms);
            let gflops = 2.0 * (p.m * p.k * p.n * p.times) as f64 / (ms * 1e6);
            (p.name, ms, gflops)
        })
        .collect()
}

/// One matrix product of a training step, `dst [m × n] = lhs [m × k] · rhs [k × n]`, with each
/// operand stored as the step stores it, done `times` per step.
struct Product {
    name: String,
    m: usize,
    k: usize,
    n: usize,
    lhs_transposed: bool,
    rhs_transposed: bool,
    times: usize,
}

/// The products of a DP step of `b` examples, in TinyCNN's shapes (its used outputs,
/// `model::CONV1_USED`).
fn step_products(config: &TinyCnnConfig, b: usize) -> Vec<Product> {
    let (c1, c2, k) = (
        config.conv1_channels,
        config.conv2_channels,
        config.num_classes,
    );
    let (p1, p2, f) = (
        CONV1_USED * CONV1_USED,
        CONV2_USED * CONV2_USED,
        config.flat_features(),
    );
    let wide = crate::model::wide_classes(k);
    let product =
        |name: String, (m, kk, n): (usize, usize, usize), [lhs_t, rhs_t]: [bool; 2], times| {
            Product {
                name,
                m,
                k: kk,
                n,
                lhs_transposed: lhs_t,
                rhs_transposed: rhs_t,
                times,
            }
        };
    vec![
        product(
            format!("conv1 forward [b·{p1} × 9]·[9 × {c1}]"),
            (b * p1, 9, c1),
            [false, false],
            1,
        ),
        product(
            format!("conv2 forward [b·{p2} × {}]·[{} × {c2}]", 9 * c1, 9 * c1),
            (b * p2, 9 * c1, c2),
            [false, false],
            1,
        ),
        product(
            format!("dL/dh2 [b × {k}]·[{k} × {f}]"),
            (b, k, f),
            [false, true],
            1,
        ),
        product(
            format!("per-example conv1 weights (transposed) [9 × {p1}]·[{p1} × {c1}], b of them"),
            (9, p1, c1),
            [true, false],
            b,
        ),
        product(
            format!("fc weights [{f} × b]·[b × {k}]"),
            (f, b, k),
            [true, false],
            1,
        ),
        product(
            format!("logits [b × {f}]·[{f} × {wide}] ({k} classes padded)"),
            (b, f, wide),
            [false, false],
            1,
        ),
    ]
}

impl Product {
    /// Milliseconds per step of this product alone (after 3 untimed steps, mean of 20).
    fn time_ms(&self, now_ms: &dyn Fn() -> f64) -> f64 {
        use crate::kernels::{Mat, MatMut, matmul};
        let (m, k, n) = (self.m, self.k, self.n);
        let lhs: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut dst = vec![0.0; m * n];
        let l = if self.lhs_transposed {
            Mat::new(&lhs, k, m).t()
        } else {
            Mat::new(&lhs, m, k)
        };
        let r = if self.rhs_transposed {
            Mat::new(&rhs, n, k).t()
        } else {
            Mat::new(&rhs, k, n)
        };
        let mut step = || {
            for _ in 0..self.times {
                matmul(MatMut::new(&mut dst, m, n), l, r, false);
            }
        };
        (0..3).for_each(|_| step());
        let iters = 20;
        let start = now_ms();
        (0..iters).for_each(|_| step());
        (now_ms() - start) / f64::from(iters)
    }
}
