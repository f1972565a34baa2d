//! Strategies in Flower's shape: which clients train (and with what config), how their results
//! become the next global model, which clients evaluate and how their numbers combine.
//!
//! Pure: no I/O, no clock, no global randomness (the coordinator passes a seed). DP is a
//! wrapper ([`DpFedAvg`]) around another strategy, as in Flower. A strategy chooses the round's
//! aggregation rule ([`Strategy::aggregator`], from the run config); the round feeds it the
//! updates and the strategy turns its result into the next global model. The strategy itself
//! never sees one client's update: the shape secure aggregation needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use learning::accountant::{AccountantError, Mechanism, noise_multiplier_for};
use learning::aggregate::{self, Aggregator};
use learning::client::round_mechanism;
use learning::dpsgd::OptimizerState;
use learning::skellam::{SkellamError, SkellamStep};
use learning::{DpSgdConfig, PrivacyLedger, TrainConfig};
use protocol::admin::{
    AggregatorConfig, DistributedDpConfig, DpRunConfig, LrSchedule, RunConfig,
    SecureAggregationConfig,
};
use protocol::config::Batching;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;

/// A connected client that could train this round.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub client_id: u64,
    /// Its shard size (FedAvg's weight, the sample rate's denominator).
    pub num_examples: u64,
    /// Its privacy spend in this run as the server accounts it.
    pub ledger: PrivacyLedger,
    /// The ε cap the client declared: it refuses any round past it (and any round without DP),
    /// so it is not sampled for one.
    pub epsilon_cap: Option<f64>,
    /// The δ the client states its cap at (`None`: the run's).
    pub delta: Option<f64>,
    /// The client sends no update in the clear: only rounds with secure aggregation.
    pub requires_secure_aggregation: bool,
}

/// Whether `c` would accept one more round of `config`, judged by its declared cap and the
/// server's ledger of it (a lower bound of the client's own, which may hold earlier runs: the
/// client can still refuse, and then says it refuses the run).
pub fn within_cap(c: &Candidate, config: &TrainConfig) -> bool {
    let Some(cap) = c.epsilon_cap else {
        return true;
    };
    let (Some(dp), Some((mechanism, steps))) =
        (config.dp, round_mechanism(config, c.num_examples as usize))
    else {
        return false;
    };
    cap_allows(
        &c.ledger,
        cap,
        c.delta.unwrap_or(dp.delta),
        mechanism,
        steps,
    )
}

/// Whether `steps` more steps of `mechanism` keep `ledger` within `cap` at `delta`.
pub fn cap_allows(
    ledger: &PrivacyLedger,
    cap: f64,
    delta: f64,
    mechanism: Mechanism,
    steps: u64,
) -> bool {
    ledger.allows(mechanism, steps, delta, cap).unwrap_or(false)
}

/// Results a round needs to aggregate: `quorum` of the `sampled` clients, at least one.
pub fn quorum_needed(quorum: f64, sampled: usize) -> usize {
    ((quorum * sampled as f64).ceil() as usize).max(1)
}

/// Least time the rest of a round's clients get once its quorum of results is in.
pub const MIN_STRAGGLER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How much longer a round waits for the clients still training once the quorum's results are
/// in, `to_quorum` after it started: twice that (at least [`MIN_STRAGGLER_WAIT`]), so a client up
/// to three times slower than the quorum still makes it, and a sampled client that stays silent
/// holds the round for that long instead of the whole `round_timeout_secs`.
pub fn straggler_wait(to_quorum: std::time::Duration) -> std::time::Duration {
    (to_quorum * 2).max(MIN_STRAGGLER_WAIT)
}

/// One client's instructions for a round.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainAssignment {
    pub client_id: u64,
    pub config: TrainConfig,
}

/// What `configure_train` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainPlan {
    Train(Vec<TrainAssignment>),
    /// Not enough eligible clients yet.
    Wait {
        eligible: usize,
        needed: usize,
    },
    /// Every known client would pass the run's privacy budget: the run is over.
    BudgetExhausted,
}

/// Why a round's results did not become a new global model (the round is retried).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoundRejected {
    #[error(
        "{results} of {sampled} sampled clients returned results: below the quorum of {needed}"
    )]
    BelowQuorum {
        results: usize,
        sampled: usize,
        needed: usize,
    },
    #[error("{0} clients failed and accept_failures is false")]
    Failures(usize),
    #[error("aggregation failed: {0}")]
    Aggregation(String),
}

/// A federated learning strategy.
pub trait Strategy: Send {
    /// The local training config a client with `num_examples` examples gets; `None` when
    /// there is none (with DP: no σ reaches the target). Never a weaker config instead.
    fn train_config(&self, num_examples: u64) -> Option<TrainConfig>;

    /// Chooses this round's clients among `candidates` and their train configs.
    fn configure_train(&self, server_round: u64, candidates: &[Candidate], seed: u64) -> TrainPlan;

    /// A fresh aggregator for one round's updates of `num_params` values.
    fn aggregator(&self, num_params: usize) -> Box<dyn Aggregator>;

    /// Turns the round's aggregator into the next global model (`&mut`: a server optimizer
    /// keeps its state across rounds, as Flower's FedOpt strategies do).
    fn aggregate_train(
        &mut self,
        server_round: u64,
        global: &[f32],
        aggregator: &dyn Aggregator,
        sampled: usize,
        failures: usize,
    ) -> Result<Vec<f32>, RoundRejected>;

    /// Chooses clients to evaluate the new global model on their own data (may be none).
    fn configure_evaluate(
        &self,
        server_round: u64,
        candidates: &[Candidate],
        seed: u64,
    ) -> Vec<u64>;

    /// Combines `(num_examples, loss, accuracy)` results into `(loss, accuracy)`.
    fn aggregate_evaluate(
        &self,
        server_round: u64,
        results: &[(u64, f64, f64)],
    ) -> Option<(f64, f64)>;

    /// Whether the server evaluates the global model of `server_round` on its test set.
    fn evaluates(&self, _server_round: u64) -> bool {
        true
    }

    /// The work `train_config` would do for clients of these shard sizes that can run ahead,
    /// off the coordinator task: with a target ε, solving σ for each new size (a fraction of
    /// a second each under the tight accountant; a thousand clients of a size each would
    /// stall the coordinator for minutes). `None` when nothing is missing.
    fn prepare(&self, _sizes: &[u64]) -> Option<Box<dyn FnOnce() + Send>> {
        None
    }

    /// Whether `train_config` for `n` examples is ready without solving anything (what
    /// `prepare` does ahead): a client that is not is left out of the coordinator's plans.
    fn ready(&self, _num_examples: u64) -> bool {
        true
    }
}

fn sample(candidates: &[Candidate], k: usize, seed: u64) -> Vec<&Candidate> {
    let mut picked: Vec<&Candidate> = candidates.iter().collect();
    picked.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    picked.truncate(k);
    picked.sort_by_key(|c| c.client_id);
    picked
}

/// Federated Averaging with Flower's failure policy; its aggregation rule is FedAvg (weighted by
/// `num_examples`) or a robust one, as the run config says.
#[derive(Debug, Clone)]
pub struct FedAvgStrategy {
    pub aggregation: AggregatorConfig,
    /// `Some`: rounds use secure aggregation (the aggregator then takes masked vectors).
    pub secure: Option<SecureAggregationConfig>,
    pub min_clients: usize,
    pub fraction_train: f64,
    pub fraction_evaluate: f64,
    pub quorum: f64,
    pub accept_failures: bool,
    /// Local training config (without DP: a wrapper adds it).
    pub local: TrainConfig,
}

impl FedAvgStrategy {
    pub fn from_run(config: &RunConfig) -> Self {
        Self {
            aggregation: config.aggregator,
            secure: config.secure_aggregation,
            min_clients: config.min_clients as usize,
            fraction_train: config.fraction_train,
            fraction_evaluate: config.fraction_evaluate,
            quorum: config.quorum,
            accept_failures: config.accept_failures,
            local: TrainConfig {
                local_epochs: config.local_epochs,
                batching: config.batching,
                learning_rate: config.learning_rate,
                optimizer: config.optimizer,
                dp: None,
            },
        }
    }
}

impl FedAvgStrategy {
    /// Flower's failure policy: enough results for the quorum, and failures only if accepted.
    pub fn check_results(
        &self,
        results: usize,
        sampled: usize,
        failures: usize,
    ) -> Result<(), RoundRejected> {
        let needed = quorum_needed(self.quorum, sampled);
        if results < needed {
            return Err(RoundRejected::BelowQuorum {
                results,
                sampled,
                needed,
            });
        }
        if failures > 0 && !self.accept_failures {
            return Err(RoundRejected::Failures(failures));
        }
        Ok(())
    }

    /// A batch size larger than the shard is clamped to the shard (a small Dirichlet shard
    /// trains full-batch rather than not at all).
    pub fn local_config(&self, n: u64) -> TrainConfig {
        let mut c = self.local;
        if let Batching::BatchSize(b) = c.batching {
            c.batching = Batching::BatchSize(b.min(n.max(1) as usize));
        }
        c
    }
}

impl Strategy for FedAvgStrategy {
    fn train_config(&self, n: u64) -> Option<TrainConfig> {
        Some(self.local_config(n))
    }

    /// Clients whose declared cap forbids this strategy's config are not candidates (a client
    /// with a cap refuses a round without DP).
    fn configure_train(&self, _round: u64, candidates: &[Candidate], seed: u64) -> TrainPlan {
        let candidates: Vec<Candidate> = candidates
            .iter()
            .filter(|c| within_cap(c, &self.local_config(c.num_examples)))
            .filter(|c| self.secure.is_some() || !c.requires_secure_aggregation)
            .cloned()
            .collect();
        let candidates = candidates.as_slice();
        let needed = self.min_clients.max(1);
        if candidates.len() < needed {
            return TrainPlan::Wait {
                eligible: candidates.len(),
                needed,
            };
        }
        // A robust aggregator holds every update, and secure aggregation's encoded sum must not
        // wrap 2³²: never sample more than either takes.
        let k = ((self.fraction_train * candidates.len() as f64).ceil() as usize)
            .max(needed)
            .min(candidates.len())
            .min(self.aggregation.max_updates().unwrap_or(usize::MAX))
            .min(self.secure.map_or(usize::MAX, |s| s.max_members() as usize));
        TrainPlan::Train(
            sample(candidates, k, seed)
                .into_iter()
                .map(|c| TrainAssignment {
                    client_id: c.client_id,
                    config: self.local_config(c.num_examples),
                })
                .collect(),
        )
    }

    fn aggregator(&self, num_params: usize) -> Box<dyn Aggregator> {
        match self.secure {
            Some(_) => Box::new(aggregate::SecureSum::new(num_params)),
            None => aggregate::build(&self.aggregation, num_params),
        }
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        global: &[f32],
        aggregator: &dyn Aggregator,
        sampled: usize,
        failures: usize,
    ) -> Result<Vec<f32>, RoundRejected> {
        self.check_results(aggregator.count(), sampled, failures)?;
        aggregator
            .apply(global)
            .map_err(|e| RoundRejected::Aggregation(e.to_string()))
    }

    fn configure_evaluate(&self, _round: u64, candidates: &[Candidate], seed: u64) -> Vec<u64> {
        if self.fraction_evaluate <= 0.0 || candidates.is_empty() {
            return Vec::new();
        }
        let k = ((self.fraction_evaluate * candidates.len() as f64).ceil() as usize)
            .min(candidates.len());
        sample(candidates, k, seed)
            .into_iter()
            .map(|c| c.client_id)
            .collect()
    }

    fn aggregate_evaluate(&self, _round: u64, results: &[(u64, f64, f64)]) -> Option<(f64, f64)> {
        let total: u64 = results.iter().map(|r| r.0).sum();
        if total == 0 {
            return None;
        }
        let w = |f: fn(&(u64, f64, f64)) -> f64| {
            results.iter().map(|r| r.0 as f64 * f(r)).sum::<f64>() / total as f64
        };
        Some((w(|r| r.1), w(|r| r.2)))
    }
}

/// Client-side DP around another strategy: every client runs DP-SGD with clipping C and its own
/// noise; σ is fixed, or solved per shard size so that a client sampled in every round ends the
/// run at exactly ε ≤ target; clients whose next round would pass the target are not sampled.
#[derive(Debug, Clone)]
pub struct DpFedAvg<S> {
    pub inner: S,
    pub dp: DpRunConfig,
    pub rounds: u32,
    /// σ solved so far, by (sample rate, steps), and the targets no σ reaches: a run asks the
    /// same few questions every round, and a tight solve takes a fraction of a second.
    /// Shared with [`Strategy::prepare`]'s work, which fills it off the coordinator task.
    sigmas: Arc<Mutex<Solved>>,
}

type Solved = HashMap<SigmaKey, Result<f64, AccountantError>>;

/// What σ depends on besides the run: a shard's sample rate (bits) and steps per round.
type SigmaKey = (u64, u64);

fn sigma_key(config: &TrainConfig, n: u64) -> SigmaKey {
    (
        config.sample_rate(n as usize).to_bits(),
        config.steps_per_round(n as usize),
    )
}

/// The σ cache even after a panic elsewhere held its lock (it only holds complete answers).
fn solved(sigmas: &Mutex<Solved>) -> std::sync::MutexGuard<'_, Solved> {
    sigmas
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remember(sigmas: &Mutex<Solved>, key: SigmaKey, sigma: Result<f64, AccountantError>) {
    let mut m = solved(sigmas);
    if m.len() >= MAX_SOLVED {
        m.clear();
    }
    m.insert(key, sigma);
}

/// Most σ kept solved (a run of more shard sizes starts over past it): one per distinct
/// (sample rate, steps), ≈ 50 bytes each; clients of one shard size share one.
const MAX_SOLVED: usize = 1_000_000;

impl<S: Strategy> DpFedAvg<S> {
    pub fn new(inner: S, dp: DpRunConfig, rounds: u32) -> Self {
        Self {
            inner,
            dp,
            rounds,
            sigmas: Arc::default(),
        }
    }

    /// σ for a client with `n` examples training `config`.
    pub fn noise_multiplier(&self, config: &TrainConfig, n: u64) -> Result<f64, AccountantError> {
        solve_noise(&self.dp, self.rounds, config, n)
    }

    /// The config with DP for a shard of `n`, or why none reaches the target; σ already
    /// solved for the same sample rate and step count is reused.
    pub fn with_dp(&self, config: TrainConfig, n: u64) -> Result<TrainConfig, AccountantError> {
        let key = sigma_key(&config, n);
        let known = solved(&self.sigmas).get(&key).cloned();
        let sigma = match known {
            Some(s) => s?,
            None => {
                let s = self.noise_multiplier(&config, n);
                remember(&self.sigmas, key, s.clone());
                s?
            }
        };
        Ok(with_sigma(&self.dp, config, sigma))
    }

    /// The σ a shard of `n` needs and `solved` lacks (its key and the config to solve it for);
    /// `None` when it is there or the inner strategy has no config for `n`.
    fn unsolved(&self, n: u64, solved: &Solved) -> Option<(SigmaKey, TrainConfig)> {
        let config = self.inner.train_config(n)?;
        let key = sigma_key(&config, n);
        (!solved.contains_key(&key)).then_some((key, config))
    }

    /// Whether one more round of `config` keeps this ledger within the run's target.
    pub fn within_budget(&self, ledger: &PrivacyLedger, config: &TrainConfig, n: u64) -> bool {
        let (Some(target), Some(dp), Some((mechanism, steps))) = (
            self.dp.target_epsilon,
            config.dp,
            round_mechanism(config, n as usize),
        ) else {
            return true;
        };
        ledger
            .allows(mechanism, steps, dp.delta, target)
            .unwrap_or(false)
    }
}

/// σ (or z, for distributed DP) for a client with `n` examples training `config` in a run of
/// `rounds` rounds under `dp`: given, or solved for the target.
fn solve_noise(
    dp: &DpRunConfig,
    rounds: u32,
    config: &TrainConfig,
    n: u64,
) -> Result<f64, AccountantError> {
    if let Some(s) = dp.noise_multiplier {
        return Ok(s as f64);
    }
    let target = dp.target_epsilon.unwrap_or(f64::INFINITY);
    let n = n as usize;
    if let Some(d) = dp.distributed {
        // One step per round: z of the summed noise, under the Skellam accountant.
        let step = SkellamStep {
            sample_rate: config.sample_rate(n),
            noise_multiplier: 1.0,
            scale: d.scale,
            dim: protocol::config::MODEL_DIM,
            beta: d.beta,
        };
        return learning::skellam::noise_multiplier_for(target, &step, rounds as u64, dp.delta)
            .map_err(|e| match e {
                SkellamError::Accountant(a) => a,
                other => AccountantError::Skellam(other.to_string()),
            });
    }
    noise_multiplier_for(
        target,
        config.sample_rate(n),
        config.steps_per_round(n).saturating_mul(rounds as u64),
        dp.delta,
    )
}

/// `config` with DP-SGD at noise `sigma`, as the client gets it.
fn with_sigma(dp: &DpRunConfig, mut config: TrainConfig, sigma: f64) -> TrainConfig {
    config.dp = Some(DpSgdConfig {
        max_grad_norm: dp.max_grad_norm,
        // Rounded up to the next f32 so the client never adds less noise than accounted.
        noise_multiplier: next_f32_up(sigma),
        delta: dp.delta,
        distributed: dp.distributed.map(|d| d.noise()),
    });
    config
}

/// σ for a shard of `n` solved into `sigmas`; then one step of the round it configures is
/// accounted once under RDP, so the plan's first budget check of the size reads the RDP
/// curve from the memo (≈ 1 ms each: a thousand new sizes had made a first plan take 0.9 s).
fn solve_ahead(
    dp: &DpRunConfig,
    rounds: u32,
    sigmas: &Mutex<Solved>,
    config: &TrainConfig,
    n: u64,
) {
    let sigma = solve_noise(dp, rounds, config, n);
    remember(sigmas, sigma_key(config, n), sigma.clone());
    let planned = sigma.map(|s| with_sigma(dp, *config, s));
    if let Some((mechanism, _)) = planned.ok().and_then(|c| round_mechanism(&c, n as usize)) {
        let _ = PrivacyLedger::default().allows(mechanism, 1, dp.delta, f64::INFINITY);
    }
}

/// The smallest f32 ≥ x (so σ sent as f32 is never below the σ the accountant used).
fn next_f32_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x { f.next_up() } else { f }
}

impl<S: Strategy> Strategy for DpFedAvg<S> {
    fn train_config(&self, n: u64) -> Option<TrainConfig> {
        self.with_dp(self.inner.train_config(n)?, n).ok()
    }

    fn ready(&self, n: u64) -> bool {
        self.dp.noise_multiplier.is_some() || self.unsolved(n, &solved(&self.sigmas)).is_none()
    }

    /// Solves σ for the sizes not solved yet, spread over the cores, into the shared cache
    /// (a target no σ reaches is remembered too, so it is not solved again).
    fn prepare(&self, sizes: &[u64]) -> Option<Box<dyn FnOnce() + Send>> {
        if self.dp.noise_multiplier.is_some() {
            return None;
        }
        let work: Vec<(TrainConfig, u64)> = {
            let solved = solved(&self.sigmas);
            let mut work = HashMap::new();
            for &n in sizes {
                if let Some((key, config)) = self.unsolved(n, &solved) {
                    work.entry(key).or_insert((config, n));
                }
            }
            work.into_values().collect()
        };
        if work.is_empty() {
            return None;
        }
        let (dp, rounds, sigmas) = (self.dp, self.rounds, self.sigmas.clone());
        Some(Box::new(move || {
            crate::par_map(&work, |(config, n)| {
                solve_ahead(&dp, rounds, &sigmas, config, *n)
            });
        }))
    }

    fn configure_train(&self, round: u64, candidates: &[Candidate], seed: u64) -> TrainPlan {
        // σ depends only on (q, steps): solved once per distinct shard size, not per client
        // (one bisection costs ≈ 15 ms; a round with 1 000 clients would otherwise stall).
        let config_for = |n: u64| {
            let base = self.inner.train_config(n)?;
            self.with_dp(base, n).ok()
        };
        let within_run: Vec<(Candidate, TrainConfig)> = candidates
            .iter()
            .filter_map(|c| Some((c.clone(), config_for(c.num_examples)?)))
            .filter(|(c, cfg)| self.within_budget(&c.ledger, cfg, c.num_examples))
            .collect();
        if within_run.is_empty() && !candidates.is_empty() {
            return TrainPlan::BudgetExhausted;
        }
        // The clients' own caps are checked here, against the DP config the inner strategy
        // never sees: it gets them as checked (cap cleared), or it would refuse them all.
        let eligible: Vec<Candidate> = within_run
            .into_iter()
            .filter(|(c, cfg)| within_cap(c, cfg))
            .map(|(c, _)| Candidate {
                epsilon_cap: None,
                ..c
            })
            .collect();
        let sizes: HashMap<u64, u64> = eligible
            .iter()
            .map(|c| (c.client_id, c.num_examples))
            .collect();
        match self.inner.configure_train(round, &eligible, seed) {
            TrainPlan::Train(assignments) => TrainPlan::Train(
                assignments
                    .into_iter()
                    .filter_map(|a| {
                        let n = *sizes.get(&a.client_id)?;
                        Some(TrainAssignment {
                            config: config_for(n)?,
                            ..a
                        })
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    fn aggregator(&self, num_params: usize) -> Box<dyn Aggregator> {
        self.inner.aggregator(num_params)
    }

    fn aggregate_train(
        &mut self,
        round: u64,
        global: &[f32],
        aggregator: &dyn Aggregator,
        sampled: usize,
        failures: usize,
    ) -> Result<Vec<f32>, RoundRejected> {
        self.inner
            .aggregate_train(round, global, aggregator, sampled, failures)
    }

    fn configure_evaluate(&self, round: u64, candidates: &[Candidate], seed: u64) -> Vec<u64> {
        self.inner.configure_evaluate(round, candidates, seed)
    }

    fn aggregate_evaluate(&self, round: u64, results: &[(u64, f64, f64)]) -> Option<(f64, f64)> {
        self.inner.aggregate_evaluate(round, results)
    }
}

/// Most a client's own z may exceed the round's median z and still take part: the round's
/// noise is raised to its z, so one client with a far larger sample rate (a declared shard of a
/// handful of records) would otherwise at most double everyone's noise, not multiply it.
pub const MAX_Z_SPREAD: f32 = 2.0;

/// Distributed DP-SGD over secure aggregation: every round is one DP-SGD step over the union
/// of the sampled clients' data. The clients' noise shares add up to one noise of multiplier z
/// (solved like σ, under the Skellam accountant); the server decodes the unmasked sum into the
/// noisy mean clipped gradient and takes the optimizer's step, keeping its state (momentum,
/// Adam's moments) and the learning-rate schedule across rounds.
#[derive(Debug, Clone)]
pub struct DistributedSgd {
    pub inner: DpFedAvg<FedAvgStrategy>,
    pub distributed: DistributedDpConfig,
    optimizer: OptimizerState,
    learning_rate: f32,
}

impl DistributedSgd {
    /// `None` unless the run asks for distributed DP.
    pub fn from_run(config: &RunConfig) -> Option<Self> {
        let dp = config.dp?;
        let distributed = dp.distributed?;
        Some(Self {
            inner: DpFedAvg::new(FedAvgStrategy::from_run(config), dp, config.rounds),
            distributed,
            optimizer: OptimizerState::new(config.optimizer, protocol::config::MODEL_DIM as usize),
            learning_rate: config.learning_rate,
        })
    }

    fn schedule(&self) -> LrSchedule {
        self.distributed.schedule
    }
}

impl Strategy for DistributedSgd {
    fn train_config(&self, n: u64) -> Option<TrainConfig> {
        self.inner.train_config(n)
    }

    fn prepare(&self, sizes: &[u64]) -> Option<Box<dyn FnOnce() + Send>> {
        self.inner.prepare(sizes)
    }

    fn ready(&self, n: u64) -> bool {
        self.inner.ready(n)
    }

    /// The inner plan, with every client's z raised to the largest of the round: the shares
    /// add up to the noise the largest z promises (a client whose shard is smaller has a
    /// larger q and needs more), so each client's ledger, which records the round's z, holds.
    /// A client whose own z is past [`MAX_Z_SPREAD`] × the round's median sits the round out
    /// (a declared shard of a handful of records would otherwise raise everyone's noise), and
    /// the clients with the largest batches are left out where the integer sum could wrap.
    /// Below Min clients or t the round waits.
    fn configure_train(&self, round: u64, candidates: &[Candidate], seed: u64) -> TrainPlan {
        // The spread is judged over every candidate before sampling, so that an outlier never
        // costs a round (or, at exactly Min clients, the run) its plan.
        let own_z = |n: u64| {
            self.inner
                .train_config(n)
                .and_then(|c| c.dp)
                .map(|d| d.noise_multiplier)
        };
        let mut zs: Vec<f32> = candidates
            .iter()
            .filter_map(|c| own_z(c.num_examples))
            .collect();
        zs.sort_by(f32::total_cmp);
        let median = zs.get(zs.len() / 2).copied().unwrap_or(0.0);
        let within: Vec<Candidate> = candidates
            .iter()
            .filter(|c| own_z(c.num_examples).is_some_and(|z| z <= MAX_Z_SPREAD * median))
            .cloned()
            .collect();
        let mut assignments = match self.inner.configure_train(round, &within, seed) {
            TrainPlan::Train(a) => a,
            other => return other,
        };
        let z = assignments
            .iter()
            .filter_map(|a| a.config.dp.map(|d| d.noise_multiplier))
            .fold(0.0f32, f32::max);
        let sizes: HashMap<u64, u64> = candidates
            .iter()
            .map(|c| (c.client_id, c.num_examples))
            .collect();
        let batch_of = |a: &TrainAssignment| {
            let n = sizes.get(&a.client_id).copied().unwrap_or(0);
            a.config.expected_batch(n as usize)
        };
        // Smallest batches first: the most clients whose sum fits.
        assignments.sort_by(|a, b| batch_of(a).total_cmp(&batch_of(b)));
        let batches: Vec<f64> = assignments.iter().map(batch_of).collect();
        let noise = self.distributed.noise();
        let mut fit = assignments.len();
        while fit > 0 && !protocol::config::distributed_sum_fits(&noise, &batches[..fit], z.into())
        {
            fit -= 1;
        }
        let needed = (noise.contributors as usize).max(self.inner.inner.min_clients);
        if fit < needed {
            // Fewer than t would never be unmasked: wait (the dashboard says for how many).
            return TrainPlan::Wait {
                eligible: fit,
                needed,
            };
        }
        assignments.truncate(fit);
        assignments.sort_by_key(|a| a.client_id);
        for a in &mut assignments {
            if let Some(dp) = a.config.dp.as_mut() {
                dp.noise_multiplier = z;
            }
        }
        TrainPlan::Train(assignments)
    }

    fn aggregator(&self, num_params: usize) -> Box<dyn Aggregator> {
        self.inner.aggregator(num_params)
    }

    /// The aggregator holds the noisy mean clipped gradient (decoded from the unmasked sum):
    /// the optimizer's step on the global model, at the schedule's learning rate.
    fn aggregate_train(
        &mut self,
        round: u64,
        global: &[f32],
        aggregator: &dyn Aggregator,
        sampled: usize,
        failures: usize,
    ) -> Result<Vec<f32>, RoundRejected> {
        self.inner
            .inner
            .check_results(aggregator.count(), sampled, failures)?;
        let grad = aggregator
            .aggregate()
            .map_err(|e| RoundRejected::Aggregation(e.to_string()))?;
        let lr = self
            .schedule()
            .at(self.learning_rate, round, self.inner.rounds);
        learning::distributed::apply_gradient(global, &grad, lr, &mut self.optimizer)
            .map_err(|e| RoundRejected::Aggregation(e.to_string()))
    }

    /// Only in the rounds the server evaluates too: a client's DP evaluation is charged to its
    /// ledger, and a round here is one step.
    fn configure_evaluate(&self, round: u64, candidates: &[Candidate], seed: u64) -> Vec<u64> {
        if !self.evaluates(round) {
            return Vec::new();
        }
        self.inner.configure_evaluate(round, candidates, seed)
    }

    fn aggregate_evaluate(&self, round: u64, results: &[(u64, f64, f64)]) -> Option<(f64, f64)> {
        self.inner.aggregate_evaluate(round, results)
    }

    /// Every `evaluate_every` rounds, and the last.
    fn evaluates(&self, server_round: u64) -> bool {
        server_round.is_multiple_of(u64::from(self.distributed.evaluate_every.max(1)))
            || server_round >= u64::from(self.inner.rounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use learning::FedAvg;

    fn candidates(n: usize, examples: u64) -> Vec<Candidate> {
        (0..n as u64)
            .map(|i| Candidate {
                client_id: i + 1,
                num_examples: examples,
                ledger: PrivacyLedger::default(),
                epsilon_cap: None,
                delta: None,
                requires_secure_aggregation: false,
            })
            .collect()
    }

    fn fedavg(config: &RunConfig) -> FedAvgStrategy {
        FedAvgStrategy::from_run(config)
    }

    fn distributed_run(rounds: u32) -> RunConfig {
        RunConfig::from_json(&format!(
            r#"{{"rounds":{rounds},"min_clients":3,"local_epochs":1,"batching":{{"batch_size":100}},
                "learning_rate":2.0,"optimizer":{{"kind":"sgd","momentum":0.5}},"secure_aggregation":{{}},
                "dp":{{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5,
                      "distributed":{{"contributors":3,"evaluate_every":4,"schedule":"cosine"}}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn distributed_rounds_share_one_noise_the_largest_any_client_needs() {
        let s = DistributedSgd::from_run(&distributed_run(50)).unwrap();
        // Two shard sizes: the smaller has the larger q, hence needs the larger z.
        let mut cands = candidates(4, 6000);
        cands[3].num_examples = 3000;
        let own = |n: u64| {
            s.inner
                .train_config(n)
                .unwrap()
                .dp
                .unwrap()
                .noise_multiplier
        };
        assert!(own(3000) > own(6000) && own(3000) <= MAX_Z_SPREAD * own(6000));
        let TrainPlan::Train(plan) = s.configure_train(1, &cands, 7) else {
            panic!("expected a plan")
        };
        assert_eq!(plan.len(), 4);
        let zs: Vec<f32> = plan
            .iter()
            .map(|a| a.config.dp.unwrap().noise_multiplier)
            .collect();
        assert!(
            zs.iter().all(|&z| z == zs[0]),
            "one z for the round: {zs:?}"
        );
        assert_eq!(zs[0], own(3000));
        // Every client's ledger after the run stays within the target with the round's z.
        for a in &plan {
            let (m, steps) =
                round_mechanism(&a.config, if a.client_id == 4 { 3000 } else { 6000 }).unwrap();
            assert_eq!(steps, 1);
            let mut l = PrivacyLedger::default();
            l.record_mechanism(m, 50).unwrap();
            assert!(l.epsilon(1e-5).unwrap() <= 3.0);
        }
        // A client declaring 150 records (q = 2/3) would raise everyone's noise many times:
        // it sits the round out.
        cands.push(Candidate {
            client_id: 5,
            num_examples: 150,
            ..cands[0].clone()
        });
        assert!(own(150) > MAX_Z_SPREAD * own(3000));
        let TrainPlan::Train(plan) = s.configure_train(2, &cands, 7) else {
            panic!("expected a plan")
        };
        assert_eq!(
            plan.iter().map(|a| a.client_id).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // One step per round, the noise split among t = 3.
        let d = plan[0].config.dp.unwrap().distributed.unwrap();
        assert_eq!(d.contributors, 3);
        assert_eq!(plan[0].config.steps_per_round(6000), 1);
        // A sample rate whose batches could wrap the 32-bit sum (every record at S = 2·10⁵:
        // ≈ 1.2·10⁹ units a client): the cohort is cut, and below t it waits.
        let mut wide = distributed_run(50);
        wide.batching = Batching::SampleRate(1.0);
        wide.dp
            .as_mut()
            .unwrap()
            .distributed
            .as_mut()
            .unwrap()
            .scale = 2.0e5;
        let s = DistributedSgd::from_run(&wide).unwrap();
        assert_eq!(
            s.configure_train(1, &candidates(4, 6000), 7),
            TrainPlan::Wait {
                eligible: 1,
                needed: 3
            }
        );
    }

    #[test]
    fn the_server_optimizer_keeps_its_state_and_schedule_across_rounds() {
        let mut s = DistributedSgd::from_run(&distributed_run(10)).unwrap();
        let n = protocol::config::MODEL_DIM as usize;
        let step = |s: &mut DistributedSgd, round: u64, global: &[f32]| {
            let mut agg = s.aggregator(n);
            for _ in 0..3 {
                agg.add_masked().unwrap();
            }
            agg.set_unmasked(vec![1.0; n]).unwrap();
            s.aggregate_train(round, global, agg.as_ref(), 3, 0)
        };
        let g0 = vec![0.0f32; n];
        // Round 1: lr 2 (cosine starts at lr), first momentum step is the gradient.
        let g1 = step(&mut s, 1, &g0).unwrap();
        assert!((g1[0] + 2.0).abs() < 1e-6, "{}", g1[0]);
        // Round 6 of 10: lr 2·(1 + cos(π/2))/2 = 1; momentum 0.5·1 + 1 = 1.5 → −1.5.
        let g2 = step(&mut s, 6, &g1).unwrap();
        assert!((g2[0] - g1[0] + 1.5).abs() < 1e-5, "{} → {}", g1[0], g2[0]);
        // Below the quorum: rejected, and the optimizer state is untouched.
        let agg = s.aggregator(n);
        assert!(matches!(
            s.aggregate_train(7, &g2, agg.as_ref(), 3, 0),
            Err(RoundRejected::BelowQuorum { .. })
        ));
        assert!(s.evaluates(4) && s.evaluates(8) && s.evaluates(10));
        assert!(!s.evaluates(5) && !s.evaluates(9));
    }

    #[test]
    fn waits_for_min_clients_then_samples_a_fraction() {
        let config = RunConfig {
            min_clients: 3,
            fraction_train: 0.5,
            ..RunConfig::default()
        };
        let s = fedavg(&config);
        assert_eq!(
            s.configure_train(1, &candidates(2, 100), 7),
            TrainPlan::Wait {
                eligible: 2,
                needed: 3
            }
        );
        // 10 candidates × 0.5 = 5 sampled, deterministic for a seed, different across seeds.
        let TrainPlan::Train(a) = s.configure_train(1, &candidates(10, 100), 7) else {
            panic!("expected a plan")
        };
        assert_eq!(a.len(), 5);
        let TrainPlan::Train(b) = s.configure_train(1, &candidates(10, 100), 7) else {
            panic!()
        };
        assert_eq!(a, b);
        let ids = |v: &[TrainAssignment]| v.iter().map(|a| a.client_id).collect::<Vec<_>>();
        let differs = (8..20).any(|seed| {
            let TrainPlan::Train(c) = s.configure_train(1, &candidates(10, 100), seed) else {
                panic!()
            };
            ids(&c) != ids(&a)
        });
        assert!(differs);
        // Never fewer than min_clients.
        let TrainPlan::Train(c) = s.configure_train(1, &candidates(4, 100), 1) else {
            panic!()
        };
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn clients_that_require_secure_aggregation_sit_out_plain_runs_and_cohorts_fit_the_encoding() {
        let config = RunConfig {
            min_clients: 2,
            ..RunConfig::default()
        };
        let mut pool = candidates(3, 100);
        pool[0].requires_secure_aggregation = true;
        pool[1].requires_secure_aggregation = true;
        assert_eq!(
            fedavg(&config).configure_train(1, &pool, 7),
            TrainPlan::Wait {
                eligible: 1,
                needed: 2
            }
        );
        // With secure aggregation they are sampled, and never more clients than the encoding's
        // sum can hold without wrapping 2³² (2³⁰ levels: 3).
        let secure = RunConfig {
            secure_aggregation: Some(SecureAggregationConfig {
                levels: 1 << 30,
                ..Default::default()
            }),
            ..config
        };
        let TrainPlan::Train(a) = fedavg(&secure).configure_train(1, &candidates(10, 100), 7)
        else {
            panic!("expected a plan")
        };
        assert_eq!(a.len(), 3);
        assert!(matches!(
            fedavg(&secure).configure_train(1, &pool, 7),
            TrainPlan::Train(p) if p.len() == 3
        ));
    }

    #[test]
    fn batch_larger_than_a_shard_is_clamped() {
        let s = fedavg(&RunConfig::default()); // batch 512
        assert_eq!(s.local_config(100).batching, Batching::BatchSize(100));
        assert_eq!(s.local_config(6000).batching, Batching::BatchSize(512));
    }

    #[test]
    fn aggregate_is_weighted_and_follows_the_failure_policy() {
        // Prepare
        let mut config = RunConfig {
            quorum: 0.5,
            ..RunConfig::default()
        };
        let mut sum = FedAvg::new(2);
        sum.add(&[1.0, 0.0], 100).unwrap();
        sum.add(&[0.0, 1.0], 300).unwrap();
        // Execute
        let next = fedavg(&config)
            .aggregate_train(1, &[10.0, 10.0], &sum, 3, 1)
            .unwrap();
        // Assert: global + (100·u1 + 300·u2) / 400
        assert_eq!(next, vec![10.25, 10.75]);
        assert_eq!(
            fedavg(&config).aggregate_train(1, &[0.0, 0.0], &sum, 5, 3),
            Err(RoundRejected::BelowQuorum {
                results: 2,
                sampled: 5,
                needed: 3
            })
        );
        config.accept_failures = false;
        assert_eq!(
            fedavg(&config).aggregate_train(1, &[0.0, 0.0], &sum, 3, 1),
            Err(RoundRejected::Failures(1))
        );
        assert!(
            fedavg(&config)
                .aggregate_train(1, &[0.0, 0.0], &sum, 2, 0)
                .is_ok()
        );
        // No results at all never aggregates.
        assert!(
            fedavg(&config)
                .aggregate_train(1, &[0.0, 0.0], &FedAvg::new(2), 0, 0)
                .is_err()
        );
    }

    #[test]
    fn the_run_config_chooses_the_aggregation_rule_through_the_dp_wrapper() {
        // Attack: 2 of 7 clients send a huge update; the run asked for the median.
        let config = RunConfig {
            aggregator: AggregatorConfig::Median,
            ..RunConfig::default()
        };
        let mut dp = DpFedAvg::new(fedavg(&config), config.dp.unwrap(), config.rounds);
        let mut agg = dp.aggregator(2);
        for _ in 0..5 {
            agg.add(&[0.5, -0.5], 6000).unwrap();
        }
        for _ in 0..2 {
            agg.add(&[1e30, 1e30], 6000).unwrap();
        }
        let next = dp
            .aggregate_train(1, &[1.0, 1.0], agg.as_ref(), 7, 0)
            .unwrap();
        assert_eq!(next, vec![1.5, 0.5]);
        // A round never samples more clients than the rule holds.
        let many = candidates(300, 6000);
        let TrainPlan::Train(a) = dp.configure_train(1, &many, 1) else {
            panic!()
        };
        assert_eq!(a.len(), learning::aggregate::MAX_BUFFERED_UPDATES);
        // FedAvg, the default, takes them in (and samples everyone).
        let TrainPlan::Train(a) = fedavg(&RunConfig::default()).configure_train(1, &many, 1) else {
            panic!()
        };
        assert_eq!(a.len(), 300);
        let mut plain = fedavg(&RunConfig::default()).aggregator(2);
        plain.add(&[0.5, -0.5], 6000).unwrap();
        plain.add(&[1e30, 1e30], 6000).unwrap();
        assert!(plain.aggregate().unwrap()[0] > 1e29);
    }

    #[test]
    fn a_silent_client_holds_the_round_only_a_while_after_the_quorum() {
        use std::time::Duration;
        assert_eq!(quorum_needed(0.5, 10), 5);
        assert_eq!(quorum_needed(0.5, 3), 2);
        assert_eq!(quorum_needed(0.01, 3), 1);
        assert_eq!(quorum_needed(1.0, 10), 10);
        assert_eq!(
            straggler_wait(Duration::from_secs(40)),
            Duration::from_secs(80)
        );
        assert_eq!(straggler_wait(Duration::from_secs(2)), MIN_STRAGGLER_WAIT);
    }

    #[test]
    fn evaluation_is_optional_and_weighted() {
        let mut config = RunConfig::default();
        assert!(
            fedavg(&config)
                .configure_evaluate(1, &candidates(4, 10), 1)
                .is_empty()
        );
        config.fraction_evaluate = 0.5;
        assert_eq!(
            fedavg(&config)
                .configure_evaluate(1, &candidates(4, 10), 1)
                .len(),
            2
        );
        let (loss, acc) = fedavg(&config)
            .aggregate_evaluate(1, &[(100, 1.0, 0.5), (300, 2.0, 0.9)])
            .unwrap();
        assert!((loss - 1.75).abs() < 1e-12 && (acc - 0.8).abs() < 1e-12);
        assert_eq!(fedavg(&config).aggregate_evaluate(1, &[]), None);
    }

    #[test]
    fn dp_solves_sigma_so_the_whole_run_lands_on_the_target() {
        let config = RunConfig::default(); // target ε 3, δ 1e-5, 15 rounds, batch 512
        let dp = DpFedAvg::new(fedavg(&config), config.dp.unwrap(), config.rounds);
        let TrainPlan::Train(a) = dp.configure_train(1, &candidates(2, 6000), 1) else {
            panic!()
        };
        let cfg = a[0].config;
        let sigma = cfg.dp.unwrap().noise_multiplier as f64;
        let (q, steps) = (cfg.sample_rate(6000), cfg.steps_per_round(6000) * 15);
        let eps = learning::accountant::epsilon(q, sigma, steps, 1e-5).unwrap();
        assert!(eps <= 3.0 && eps > 2.95, "ε after the run = {eps}");
        // A client that already spent 15 rounds is out of budget; all out → run over.
        let mut spent = candidates(2, 6000);
        for c in &mut spent {
            c.ledger.record(q, sigma, steps).unwrap();
        }
        assert_eq!(
            dp.configure_train(16, &spent, 1),
            TrainPlan::BudgetExhausted
        );
        // One spent, one fresh, min_clients 2: wait for another.
        let mixed = vec![spent[0].clone(), candidates(2, 6000)[1].clone()];
        assert_eq!(
            dp.configure_train(16, &mixed, 1),
            TrainPlan::Wait {
                eligible: 1,
                needed: 2
            }
        );
    }

    #[test]
    fn each_shard_size_gets_its_own_sigma_in_one_plan() {
        let config = RunConfig::default();
        let dp = DpFedAvg::new(fedavg(&config), config.dp.unwrap(), config.rounds);
        let mut mixed = candidates(4, 6000);
        mixed[1].num_examples = 1500;
        mixed[3].num_examples = 1500;
        let TrainPlan::Train(a) = dp.configure_train(1, &mixed, 1) else {
            panic!()
        };
        assert_eq!(a.len(), 4);
        for (asg, c) in a.iter().zip(&mixed) {
            let n = c.num_examples as usize;
            let sigma = asg.config.dp.unwrap().noise_multiplier as f64;
            let (q, steps) = (
                asg.config.sample_rate(n),
                asg.config.steps_per_round(n) * 15,
            );
            let eps = learning::accountant::epsilon(q, sigma, steps, 1e-5).unwrap();
            assert!(eps <= 3.0 && eps > 2.95, "n = {n}: ε after the run = {eps}");
        }
        let s = |i: usize| a[i].config.dp.unwrap().noise_multiplier;
        assert_eq!(s(0), s(2));
        assert_eq!(s(1), s(3));
        assert_ne!(s(0), s(1));
    }

    /// `prepare` solves, off the caller, σ for each new shard size once (and remembers a
    /// target no σ reaches): afterwards there is nothing to prepare, and the plan's configs
    /// carry exactly the σ a solve on the spot gives.
    #[test]
    fn prepare_solves_each_new_size_once_ahead_of_the_plan() {
        let config = RunConfig::default();
        let dp = DpFedAvg::new(fedavg(&config), config.dp.unwrap(), config.rounds);
        let work = dp.prepare(&[6000, 3000, 6000]).expect("two sizes to solve");
        assert!(
            !dp.ready(6000) && !dp.ready(3000),
            "not planned for before σ"
        );
        assert_eq!(
            dp.sigmas.lock().unwrap().len(),
            0,
            "nothing solved before the work runs"
        );
        work();
        assert_eq!(dp.sigmas.lock().unwrap().len(), 2);
        assert!(
            dp.prepare(&[3000, 6000]).is_none(),
            "solved: nothing to prepare"
        );
        assert!(dp.ready(6000) && dp.ready(3000));
        for n in [6000, 3000] {
            let base = fedavg(&config).train_config(n).unwrap();
            let sigma = dp.noise_multiplier(&base, n).unwrap();
            let planned = dp.train_config(n).unwrap().dp.unwrap().noise_multiplier;
            assert_eq!(planned, next_f32_up(sigma), "n = {n}");
        }
        // A fixed σ has nothing to solve.
        let mut fixed = config.dp.unwrap();
        fixed.noise_multiplier = Some(1.0);
        let fixed = DpFedAvg::new(fedavg(&config), fixed, config.rounds);
        assert!(fixed.prepare(&[6000]).is_none());
        assert!(fixed.ready(6000), "a fixed σ is always ready");
        // A size whose target no σ reaches (q = 1, thousands of steps, a tiny ε) is solved
        // once, remembered as such, and gets no config.
        let mut tiny = config.dp.unwrap();
        tiny.target_epsilon = Some(1e-9);
        let tiny = DpFedAvg::new(fedavg(&config), tiny, config.rounds);
        tiny.prepare(&[100]).expect("one size")();
        assert!(tiny.prepare(&[100]).is_none(), "remembered as unreachable");
        assert_eq!(tiny.train_config(100), None);
    }

    #[test]
    fn a_client_whose_cap_its_next_round_would_cross_is_not_sampled() {
        let config = RunConfig {
            min_clients: 1,
            ..RunConfig::default()
        };
        let dp = DpFedAvg::new(fedavg(&config), config.dp.unwrap(), config.rounds);
        let plan = |c: &[Candidate]| match dp.configure_train(1, c, 1) {
            TrainPlan::Train(a) => a.iter().map(|a| a.client_id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let mut c = candidates(3, 6000);
        let cfg = dp.train_config(6000).unwrap();
        let one_round = {
            let mut l = PrivacyLedger::default();
            let dpc = cfg.dp.unwrap();
            l.record(
                cfg.sample_rate(6000),
                dpc.noise_multiplier as f64,
                cfg.steps_per_round(6000),
            )
            .unwrap();
            l.epsilon(1e-5).unwrap()
        };
        // Client 1: a cap below one round. Client 2: a cap above it, but at a δ of its own
        // (1e-9) one round costs more than at the run's δ. Client 3: no cap.
        c[0].epsilon_cap = Some(one_round * 0.9);
        c[1].epsilon_cap = Some(one_round * 1.05);
        assert_eq!(plan(&c), vec![2, 3]);
        c[1].delta = Some(1e-9);
        assert_eq!(plan(&c), vec![3]);
        // A run without DP never samples a client with a cap (it would refuse).
        let plain = fedavg(&config);
        let TrainPlan::Train(a) = plain.configure_train(1, &c, 1) else {
            panic!()
        };
        assert_eq!(a.iter().map(|a| a.client_id).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn dp_never_falls_back_to_a_config_without_dp() {
        // A target no σ reaches for a 10-example client (q = 1, 15 × 1 steps: reachable; so
        // use a target of 1e-9).
        let mut config = RunConfig::default();
        config.dp.as_mut().unwrap().target_epsilon = Some(1e-9);
        let dp = DpFedAvg::new(fedavg(&config), config.dp.unwrap(), config.rounds);
        assert_eq!(dp.train_config(10), None);
        assert_eq!(
            dp.configure_train(1, &candidates(3, 10), 1),
            TrainPlan::BudgetExhausted
        );
    }

    #[test]
    fn a_fixed_sigma_is_sent_as_given_and_never_rounded_down() {
        assert!(next_f32_up(1.1) as f64 >= 1.1);
        assert!(next_f32_up(0.1) as f64 >= 0.1);
        assert_eq!(next_f32_up(0.5), 0.5);
    }
}
