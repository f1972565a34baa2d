//! Training-step throughput, shared by the native bench binary and the wasm export so both
//! measure exactly the same code. The clock is passed in: `std::time::Instant` does not exist
//! on wasm32-unknown-unknown.

use burn::tensor::Device;

use crate::dpsgd::{OptimizerState, SecureRng, add_gaussian_noise, batch_gradient};
use crate::model::{IMAGE_PIXELS, IMAGE_SIDE, TinyCnnConfig, tensor_vec};
use crate::{LearningError, Optimizer};

/// Which step to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Batched gradient + SGD step (non-DP training).
    Plain,
    /// Per-example gradients, clipping, noise, SGD step (DP-SGD).
    DpSgd,
    /// Forward pass only.
    Inference,
}

/// Samples per second of `iters` steps of `batch` examples, after `warmup` untimed steps.
/// `now_ms` is a monotonic clock in milliseconds.
pub fn train_step_throughput(
    kind: StepKind,
    batch: usize,
    warmup: usize,
    iters: usize,
    now_ms: &dyn Fn() -> f64,
) -> Result<f64, LearningError> {
    let device = Device::flex();
    let config = TinyCnnConfig::new();
    let mut params = config.init(&device).to_flat();
    let mut rng = SecureRng::from_os()?;
    // Image-like inputs: values do not change the cost of a dense CNN.
    let images: Vec<f32> = (0..batch * IMAGE_PIXELS).map(|_| rng.normal()).collect();
    let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
    let mut opt = OptimizerState::new(Optimizer::Sgd { momentum: 0.0 }, params.len());
    let mut step = |params: &mut Vec<f32>| -> Result<(), LearningError> {
        let model = config.from_flat(params, &device)?;
        match kind {
            StepKind::Inference => {
                let x = burn::tensor::Tensor::<4>::from_data(
                    burn::tensor::TensorData::new(
                        images.clone(),
                        [batch, 1, IMAGE_SIDE, IMAGE_SIDE],
                    ),
                    &device,
                );
                std::hint::black_box(tensor_vec(model.forward(x)));
            }
            StepKind::Plain | StepKind::DpSgd => {
                let clip = (kind == StepKind::DpSgd).then_some(1.0);
                let mut g = batch_gradient(&model, &config, &images, &labels, clip, &device).sum;
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
    let start = now_ms();
    for _ in 0..iters {
        step(&mut params)?;
    }
    let secs = (now_ms() - start) / 1000.0;
    Ok((iters * batch) as f64 / secs)
}
