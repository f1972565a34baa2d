//! What the admin API and the dashboard's event stream exchange: the run configuration (with its
//! validation, so the dashboard form and the server reject the same things with the same words),
//! run and round records, client rows, and live events.

use serde::{Deserialize, Serialize};

use crate::config::{Batching, MAX_STEPS_PER_ROUND, Optimizer, ShardScheme, steps_per_round};
use crate::fields;
pub use crate::fields::FieldError;

/// Upper bounds on config values (named so the form, the server and the docs agree).
pub const MAX_ROUNDS: u32 = 10_000;
pub const MAX_LOCAL_EPOCHS: u32 = 100;
pub const MAX_SHARDS: u32 = 10_000;
pub const MAX_ROUND_TIMEOUT_SECS: u64 = 24 * 3600;
pub const MAX_NAME_LEN: usize = 100;
/// The server's connection limit: a run cannot wait for more clients than can connect.
pub const MAX_MIN_CLIENTS: u32 = 10_000;
/// Largest δ a run may state. A guarantee at δ ≥ 1/n allows publishing a record; with shards of
/// ≥ 100 examples that is δ ≥ 0.01. (Clients refuse δ ≥ 1/n of their own data too.)
pub const MAX_DELTA: f64 = 0.01;
/// σ below this gives ε in the thousands after one step; above it the noise drowns any signal
/// (and σ solved from a target ε is searched up to this too).
pub const NOISE_MULTIPLIER_RANGE: (f32, f32) = (0.05, 1.0e4);
/// A target ε above this promises nothing.
pub const MAX_TARGET_EPSILON: f64 = 100.0;
/// Largest expected batch: MNIST's whole training set is 60 000 examples.
pub const MAX_BATCH_SIZE: u32 = 1_000_000;
/// Clip bounds and learning rates beyond these only overflow: TinyCNN's gradients are O(1).
pub const MAX_GRAD_NORM: f32 = 1.0e4;
pub const MAX_LEARNING_RATE: f32 = 100.0;

/// Everything an operator chooses for a run. Every field has a default that runs the MNIST demo
/// (10 IID shards, DP-SGD to ε = 3 at δ = 1e-5), so `{}` is a valid config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    /// The learning problem (a registered task id: `mnist`, `fashion-mnist`).
    pub task: String,
    /// Rounds to run (the run may stop earlier when the privacy budget is spent).
    pub rounds: u32,
    /// A round starts only when at least this many eligible clients are connected.
    pub min_clients: u32,
    /// Fraction of connected eligible clients sampled per round (at least `min_clients`).
    pub fraction_train: f64,
    /// Fraction of a round's sampled clients whose results must arrive by the deadline for the
    /// round to close with them; below it the round is retried.
    pub quorum: f64,
    /// Seconds a round waits for results before it closes with what it has.
    pub round_timeout_secs: u64,
    /// Whether a round with failures (errors, disconnects, invalid updates) may still be
    /// aggregated; `false` retries any round with a failure.
    pub accept_failures: bool,
    /// Fraction of connected clients asked to evaluate the new global model on their own data
    /// after each round (0 = server-side evaluation only).
    pub fraction_evaluate: f64,
    pub local_epochs: u32,
    pub batching: Batching,
    pub learning_rate: f32,
    pub optimizer: Optimizer,
    /// `None`: train without differential privacy.
    pub dp: Option<DpRunConfig>,
    /// `None`: clients bring their own data; otherwise the server splits the task's training set.
    pub shards: Option<ShardConfig>,
    /// How the round's updates become one (FedAvg, or a robust rule against hostile clients).
    pub aggregator: AggregatorConfig,
    /// `Some`: the server learns only the sum of each round's updates (FedAvg only).
    pub secure_aggregation: Option<SecureAggregationConfig>,
}

/// Whether `id` has the form of a task id: 1 to 40 lower-case letters, digits and `-`. (Which
/// ids exist is the server's registry's to say.)
pub fn task_id_ok(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Secure aggregation for a run (SecAgg with SecAgg+ neighbourhoods).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// Neighbours each client shares its secrets with and masks against (SecAgg+'s k); a round
    /// of at most k + 1 clients is plain SecAgg (everyone).
    pub neighbours: u32,
    /// Fraction of a client's share holders (itself and its neighbours) needed to unmask: the
    /// threshold is this fraction rounded up, and always a strict majority. A round unmasks
    /// when, for every client, that many holders survive; up to the rest may drop out.
    pub threshold: f64,
    /// A count of holders instead of the fraction (still raised to a strict majority, and at
    /// most all holders).
    pub threshold_count: Option<u32>,
    /// Update values are clipped to [−clip, clip] before encoding.
    pub clip: f32,
    /// Encoding levels: a value maps onto 0..=levels. A round's clients × levels must stay
    /// below 2³² (checked).
    pub levels: u32,
    /// Examples that weigh 1 in the average (more weigh 1 too): the weight travels masked.
    pub max_weight: u64,
    /// A round whose cohort is the last round's, every member of which was counted, reuses its
    /// keys and skips the key step (a round trip). Such a round cannot recover a member that
    /// drops after sharing: it is retried with fresh keys (and every member's attempt counts
    /// in its ledger, as for any retried round). `None` (the default): on for distributed DP,
    /// whose rounds are one short step each, so the key step is a visible part of every
    /// round; off otherwise, where rounds are long and a client leaving mid-training is better
    /// recovered than retried.
    pub reuse_keys: Option<bool>,
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            neighbours: 16,
            threshold: 0.6,
            threshold_count: None,
            clip: 8.0,
            levels: 1 << 22,
            max_weight: 60_000,
            reuse_keys: None,
        }
    }
}

impl SecureAggregationConfig {
    /// Most clients a round samples: their encoded sum must not wrap 2³².
    pub fn max_members(&self) -> u32 {
        crate::secagg::max_members(self.levels)
    }

    /// Whether a round of the last round's cohort reuses its keys: as set, or by default in
    /// `distributed` DP runs only (see `reuse_keys`).
    pub fn reuses_keys(&self, distributed: bool) -> bool {
        self.reuse_keys.unwrap_or(distributed)
    }

    /// The threshold for a client with `holders` share holders (itself and its neighbours).
    pub fn threshold_for(&self, holders: usize) -> u32 {
        let wanted = self
            .threshold_count
            .unwrap_or_else(|| (self.threshold * holders as f64).ceil() as u32);
        wanted.max((holders / 2 + 1) as u32).min(holders as u32)
    }
}

/// Most updates a robust aggregator holds, hence most clients a round of such a run samples:
/// they need every update of the round in memory (≈ 51 KB each for TinyCNN, so ≈ 10 MB), and
/// Multi-Krum compares every pair on the coordinator task (see BENCHMARKS.md for the cost).
pub const MAX_BUFFERED_UPDATES: usize = 200;
/// Largest norm bound an operator may set (TinyCNN's updates have norms of O(1)).
pub const MAX_NORM_BOUND: f32 = 1.0e4;

/// How a round's updates are combined. FedAvg keeps a running sum (memory O(parameters)); the
/// robust rules hold the round's updates (at most [`MAX_BUFFERED_UPDATES`]) and bound what a
/// minority of hostile clients can do to the model. With client-side DP they are
/// post-processing: the privacy accounting is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AggregatorConfig {
    /// The mean weighted by shard size (McMahan et al. 2017): one hostile update can move it
    /// anywhere.
    #[default]
    #[serde(rename = "fedavg")]
    FedAvg,
    /// FedAvg of updates clipped to an L2 norm bound (Sun et al. 2019): `bound`, or when it is
    /// absent the median norm of the round's updates (so a minority cannot raise it).
    NormBound {
        #[serde(default)]
        bound: Option<f32>,
    },
    /// The coordinate-wise median of the updates, unweighted (Yin et al. 2018).
    Median,
    /// Per coordinate, the mean after dropping the `trim` fraction of the largest and of the
    /// smallest values, unweighted (Yin et al. 2018).
    TrimmedMean { trim: f64 },
    /// Multi-Krum (Blanchard et al. 2017): scores each update by its squared distances to its
    /// n − f − 2 nearest others, keeps the `keep` best (default n − f) and averages them
    /// weighted by shard size. Needs n ≥ 2f + 3 updates.
    MultiKrum {
        byzantine: u32,
        #[serde(default)]
        keep: Option<u32>,
    },
}

impl AggregatorConfig {
    /// The name shown on the dashboard and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FedAvg => "FedAvg",
            Self::NormBound { .. } => "norm bounding",
            Self::Median => "coordinate-wise median",
            Self::TrimmedMean { .. } => "trimmed mean",
            Self::MultiKrum { .. } => "Multi-Krum",
        }
    }

    /// Most updates the rule takes in one round (`None`: no limit, a running sum).
    pub fn max_updates(&self) -> Option<usize> {
        match self {
            Self::FedAvg => None,
            _ => Some(MAX_BUFFERED_UPDATES),
        }
    }

    /// Checks the rule's parameters against a run that waits for `min_clients`.
    fn validate(&self, min_clients: u32) -> Result<(), FieldError> {
        if self.max_updates().is_some_and(|m| min_clients as usize > m) {
            return Err(fields::MIN_CLIENTS.error_because(
                min_clients,
                format!(
                    "at most {MAX_BUFFERED_UPDATES} with {} aggregation (it holds every update of a round)",
                    self.name()
                ),
            ));
        }
        match *self {
            Self::NormBound { bound: Some(b) } => fields::NORM_BOUND.check(b),
            Self::TrimmedMean { trim } => fields::TRIM.check(trim),
            Self::MultiKrum { byzantine, keep } => {
                fields::BYZANTINE.check(byzantine)?;
                if u64::from(min_clients) < 2 * u64::from(byzantine) + 3 {
                    return Err(fields::BYZANTINE.error_because(
                        byzantine,
                        format!(
                            "at most {} while Min clients is {min_clients}: Multi-Krum needs Min clients ≥ 2f + 3 (raise Min clients)",
                            min_clients.saturating_sub(3) / 2
                        ),
                    ));
                }
                keep.map_or(Ok(()), |k| fields::KEEP.check(k))
            }
            _ => Ok(()),
        }
    }
}

impl SecureAggregationConfig {
    fn validate(&self, run: &RunConfig) -> Result<(), FieldError> {
        if run.aggregator != AggregatorConfig::FedAvg {
            return Err(fields::SECURE_AGGREGATION.error_because(
                "on",
                format!(
                    "off with {} aggregation: it needs each update, and the server sees only their sum",
                    run.aggregator.name()
                ),
            ));
        }
        fields::SECAGG_NEIGHBOURS.check(self.neighbours)?;
        fields::SECAGG_THRESHOLD.check(self.threshold)?;
        if let Some(count) = self.threshold_count {
            fields::SECAGG_THRESHOLD_COUNT.check(count)?;
        }
        fields::SECAGG_CLIP.check(self.clip)?;
        fields::SECAGG_LEVELS.check(self.levels)?;
        fields::SECAGG_MAX_WEIGHT.check_whole(self.max_weight)?;
        if run.min_clients < 3 {
            return Err(fields::MIN_CLIENTS.error_because(
                run.min_clients,
                "at least 3 with secure aggregation: with 2 the sum gives each client the other's update".into(),
            ));
        }
        if run.min_clients > self.max_members() {
            return Err(fields::MIN_CLIENTS.error_because(
                run.min_clients,
                format!(
                    "at most {} with secure aggregation at {} levels: a larger round's sum could wrap 2^32 (lower the levels)",
                    self.max_members(),
                    self.levels
                ),
            ));
        }
        Ok(())
    }
}

/// DP-SGD for a run. Give `noise_multiplier`, or `target_epsilon` (σ is then solved per shard
/// size so every client ends the run at ε ≤ target), or both (σ given, target is a hard cap).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpRunConfig {
    pub max_grad_norm: f32,
    #[serde(default)]
    pub noise_multiplier: Option<f32>,
    #[serde(default)]
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    /// `Some`: distributed DP over secure aggregation — each round is one DP-SGD step over
    /// the union of its clients' data, every client adds a share of one noise, and the server
    /// applies the optimizer (`learning_rate`, `optimizer`) to the unmasked noisy sum. The
    /// noise multiplier is then the *sum's* (z, as in central DP-SGD).
    #[serde(default)]
    pub distributed: Option<DistributedDpConfig>,
}

/// Distributed DP for a run (Kairouz, Liu & Steinke 2021; Agarwal, Kairouz & Liu 2021).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedDpConfig {
    /// S: integer units per clipping norm (rounding costs little above ≈ 1 000).
    pub scale: f64,
    /// Conditional rounding's β (0: none).
    pub beta: f64,
    /// t: the round's noise is whole once t clients' shares are in it; fewer are never
    /// unmasked. At most `min_clients`.
    pub contributors: u32,
    /// Rounds between evaluations of the global model on the test set (the last round is
    /// always evaluated): a round here is one step, and runs take hundreds of them.
    pub evaluate_every: u32,
    /// How the server's learning rate changes over the run.
    pub schedule: LrSchedule,
}

impl Default for DistributedDpConfig {
    fn default() -> Self {
        Self {
            scale: 1000.0,
            beta: (-0.5f64).exp(),
            contributors: 3,
            evaluate_every: 10,
            schedule: LrSchedule::Constant,
        }
    }
}

impl DistributedDpConfig {
    /// The settings a client of the run gets.
    pub fn noise(&self) -> crate::config::DistributedNoise {
        crate::config::DistributedNoise {
            scale: self.scale,
            beta: self.beta,
            contributors: self.contributors,
        }
    }
}

/// The server optimizer's learning rate over a distributed-DP run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// lr · (1 + cos(π · (round − 1) / rounds)) / 2: from lr down to near 0 at the last round.
    Cosine,
}

impl LrSchedule {
    /// The learning rate of `server_round` (1-based) of a run of `rounds`.
    pub fn at(self, lr: f32, server_round: u64, rounds: u32) -> f32 {
        match self {
            Self::Constant => lr,
            Self::Cosine => {
                let done = server_round.saturating_sub(1) as f64 / f64::from(rounds.max(1));
                (lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos())) as f32
            }
        }
    }
}

/// How the demo data set is split among clients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub scheme: ShardScheme,
    pub num_shards: u32,
    /// Seed of the split (not of any privacy noise): the same seed gives the same shards.
    pub seed: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "mnist-demo".into(),
            task: "mnist".into(),
            rounds: 15,
            min_clients: 2,
            fraction_train: 1.0,
            quorum: 0.5,
            round_timeout_secs: 600,
            accept_failures: true,
            fraction_evaluate: 0.0,
            local_epochs: 1,
            batching: Batching::BatchSize(512),
            learning_rate: 2.0,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            dp: Some(DpRunConfig {
                max_grad_norm: 1.0,
                noise_multiplier: None,
                target_epsilon: Some(3.0),
                delta: 1e-5,
                distributed: None,
            }),
            shards: Some(ShardConfig {
                scheme: ShardScheme::Iid,
                num_shards: 10,
                seed: 42,
            }),
            aggregator: AggregatorConfig::FedAvg,
            secure_aggregation: None,
        }
    }
}

/// A character a run name may hold: printable, no bidirectional controls (which make a name
/// display as another), no `<` or `>` (markup if a page ever forgot to escape it).
fn plain_name_char(c: char) -> bool {
    !(c.is_control()
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '<' | '>'))
}

impl RunConfig {
    /// Checks every field; the first bad one is named, with its label and range from
    /// [`fields`]. (Shard-size-dependent checks such as a batch larger than a shard are made
    /// when the run is created, and again when a client is configured.)
    pub fn validate(&self) -> Result<(), FieldError> {
        let name_ok = !self.name.trim().is_empty() && self.name.chars().count() <= MAX_NAME_LEN;
        if let Some(c) = self.name.chars().find(|&c| !plain_name_char(c)) {
            return Err(
                fields::NAME.error(format!("{:?} (it holds U+{:04X})", self.name, c as u32))
            );
        }
        if !name_ok {
            return Err(fields::NAME.error(format!("{:?}", self.name)));
        }
        if !task_id_ok(&self.task) {
            return Err(fields::TASK.error(format!("{:?}", crate::clip(&self.task, 40))));
        }
        fields::ROUNDS.check(self.rounds)?;
        fields::MIN_CLIENTS.check(self.min_clients)?;
        fields::FRACTION_TRAIN.check(self.fraction_train)?;
        fields::QUORUM.check(self.quorum)?;
        fields::FRACTION_EVALUATE.check(self.fraction_evaluate)?;
        fields::ROUND_TIMEOUT.check_whole(self.round_timeout_secs)?;
        fields::LOCAL_EPOCHS.check(self.local_epochs)?;
        match self.batching {
            Batching::BatchSize(b) => fields::BATCH_SIZE.check_whole(b as u64)?,
            Batching::SampleRate(q) => {
                fields::SAMPLE_RATE.check(q)?;
                if steps_per_round(self.local_epochs, q).is_none_or(|s| s > MAX_STEPS_PER_ROUND) {
                    return Err(fields::SAMPLE_RATE.error_because(
                        q,
                        "a rate that needs at most 100 000 steps a round (local epochs × 1/q)"
                            .into(),
                    ));
                }
            }
        }
        fields::LEARNING_RATE.check(self.learning_rate)?;
        match self.optimizer {
            Optimizer::Sgd { momentum } => fields::MOMENTUM.check(momentum)?,
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                fields::BETA1.check(beta1)?;
                fields::BETA2.check(beta2)?;
                fields::ADAM_EPSILON.check(epsilon)?;
            }
        }
        if let Some(dp) = &self.dp {
            fields::CLIPPING_NORM.check(dp.max_grad_norm)?;
            fields::DELTA.check(dp.delta)?;
            if dp.noise_multiplier.is_none() && dp.target_epsilon.is_none() {
                return Err(fields::NOISE_MULTIPLIER.error_because(
                    "missing",
                    "a noise multiplier σ, or a Target ε to solve σ from".into(),
                ));
            }
            if let Some(sigma) = dp.noise_multiplier {
                fields::NOISE_MULTIPLIER.check(sigma)?;
            }
            if let Some(e) = dp.target_epsilon {
                fields::TARGET_EPSILON.check(e)?;
            }
            if let Some(d) = &dp.distributed {
                self.validate_distributed(d)?;
            }
        }
        self.aggregator.validate(self.min_clients)?;
        if let Some(secure) = &self.secure_aggregation {
            secure.validate(self)?;
        }
        if let Some(shards) = &self.shards {
            fields::NUM_SHARDS.check(shards.num_shards)?;
            if let ShardScheme::Dirichlet { alpha } = shards.scheme {
                fields::ALPHA.check(alpha)?;
            }
        }
        Ok(())
    }

    /// Distributed DP needs secure aggregation (a client's integer sum carries only 1/t of the
    /// noise), one step per round, t ≤ Min clients, and (with a batch size) a sum that cannot
    /// wrap the 32-bit modulus for a round of Min clients.
    fn validate_distributed(&self, d: &DistributedDpConfig) -> Result<(), FieldError> {
        fields::DISTRIBUTED_SCALE.check(d.scale)?;
        fields::DISTRIBUTED_BETA.check(d.beta)?;
        fields::DISTRIBUTED_CONTRIBUTORS.check(d.contributors)?;
        fields::EVALUATE_EVERY.check(d.evaluate_every)?;
        if self.secure_aggregation.is_none() {
            return Err(fields::DISTRIBUTED.error_because(
                "on",
                "off without secure aggregation: each client's sum holds only its share of the noise, and the server would see it".into(),
            ));
        }
        if self.local_epochs != 1 {
            return Err(fields::LOCAL_EPOCHS.error_because(
                self.local_epochs,
                "1 with distributed DP: a round is one DP-SGD step".into(),
            ));
        }
        if d.contributors > self.min_clients {
            return Err(fields::DISTRIBUTED_CONTRIBUTORS.error_because(
                d.contributors,
                format!(
                    "at most Min clients ({}): a round with fewer contributors is never unmasked",
                    self.min_clients
                ),
            ));
        }
        let holders = self
            .secure_aggregation
            .map_or(0, |s| s.neighbours.saturating_add(1));
        if d.contributors > holders {
            return Err(fields::DISTRIBUTED_CONTRIBUTORS.error_because(
                d.contributors,
                format!(
                    "at most Neighbours + 1 ({holders}): each client checks that t of its share holders sent their sums before it reveals"
                ),
            ));
        }
        // With a sample rate the batches depend on the clients' data: the round's plan checks
        // its cohort's sum instead.
        if let Batching::BatchSize(batch) = self.batching {
            let z = self
                .dp
                .and_then(|dp| dp.noise_multiplier)
                .map_or(0.0, f64::from);
            let most = crate::config::max_distributed_members(&d.noise(), batch as f64, z);
            if most < self.min_clients {
                return Err(fields::DISTRIBUTED_SCALE.error_because(
                    d.scale,
                    format!(
                        "a smaller scale or batch: a round of Min clients ({}) at batch {batch} could wrap the 32-bit sum (at most {most} clients fit)",
                        self.min_clients
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Parses and validates a JSON body; a type error names the field and its range, like a
    /// range error ("Rounds is \"three\": expected a whole number from 1 to 10 000").
    pub fn from_json(text: &str) -> Result<Self, FieldError> {
        // serde would also read a struct from an array (`[]` = every default): only an object is
        // a config.
        if !text.trim_start().starts_with('{') {
            let start: String = text.trim_start().chars().take(20).collect();
            return Err(fields::BODY.error(format!("{start:?}")));
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: RunConfig =
            serde_path_to_error::deserialize(de).map_err(|e| type_error(text, e))?;
        config.validate()?;
        Ok(config)
    }
}

/// A body that does not deserialize: the field at the error's path, with the value found there
/// and the field's range, or serde's words for what the field accepts when it has no range of
/// its own (an unknown key, an unknown kind).
fn type_error(text: &str, e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let found = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| path.split('.').try_fold(v, |v, key| v.get(key).cloned()));
    let value = found.map_or("invalid".into(), |v| v.to_string());
    if let Some(field) = fields::at(&path) {
        return field.error(value);
    }
    let said = e.into_inner().to_string();
    // "invalid type: …, expected u32 at line 1 column 9": what was expected, without where.
    let expected = said
        .split_once("expected ")
        .map_or(said.as_str(), |(_, x)| x);
    let expected = expected.split(" at line ").next().unwrap_or(expected);
    let expected = crate::clip(expected, 200);
    if path == "." {
        return fields::BODY.error_because(value, expected);
    }
    let path = crate::clip(&path, 100);
    FieldError::other(&path, &path, value, &expected)
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Configured, not started.
    Created,
    /// Rounds run whenever enough clients are connected.
    Running,
    /// No new round starts; a round in flight finishes.
    Paused,
    /// All rounds done, or the privacy budget is spent.
    Finished,
    /// Stopped by the operator.
    Stopped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Created,
            Self::Running,
            Self::Paused,
            Self::Finished,
            Self::Stopped,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// Finished and stopped runs never train again.
    pub fn is_over(self) -> bool {
        matches!(self, Self::Finished | Self::Stopped)
    }
}

/// An operator's intent for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunAction {
    Start,
    Pause,
    Resume,
    Stop,
}

impl RunAction {
    /// The verb as the admin API's path spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Stop => "stop",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Start, Self::Pause, Self::Resume, Self::Stop]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// One run as listed by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: u64,
    pub config: RunConfig,
    pub status: RunStatus,
    pub completed_rounds: u64,
    /// Why the run ended, when it has.
    pub finished_reason: Option<String>,
    pub created_at_ms: u64,
}

/// One committed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub server_round: u64,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    /// CPU time spent aggregating: taking in every update, then forming the aggregate.
    pub aggregate_ms: f64,
    /// NaN (`null` in JSON) when the round was not evaluated or the model is broken.
    #[serde(with = "crate::ledger::nan_as_null")]
    pub test_loss: f64,
    #[serde(with = "crate::ledger::nan_as_null")]
    pub test_accuracy: f64,
    /// Weighted mean of the clients' own evaluation, when `fraction_evaluate > 0`.
    pub federated_loss: Option<f64>,
    pub federated_accuracy: Option<f64>,
    pub participants: u64,
    pub failures: u64,
    /// Largest ε any client of the run has spent after this round (server ledger).
    pub epsilon: Option<f64>,
    /// Attempts it took (a round below quorum is retried).
    pub attempts: u32,
    /// The server saw only the sum of the updates (secure aggregation).
    #[serde(default)]
    pub secure: bool,
    /// Secure aggregation: clients that dropped after sharing and whose masks were removed.
    #[serde(default)]
    pub recovered: u64,
    /// Secure aggregation: the round reused the last round's keys (no key step).
    #[serde(default)]
    pub keys_reused: bool,
}

/// A run with its rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHistory {
    pub run: RunSummary,
    pub rounds: Vec<RoundRecord>,
    /// Each client's ε as the server accounts it.
    pub ledger: Vec<LedgerEntry>,
}

/// A client's privacy spend in a run as the server computes it from the configs it sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub client_key_prefix: String,
    pub shard_index: Option<u32>,
    pub rounds: u64,
    pub steps: u64,
    pub epsilon: Option<f64>,
    /// With distributed-DP rounds: ε whatever the server and the other clients of those
    /// rounds do (only this client's own noise shares count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collusion_epsilon: Option<f64>,
    /// The same ledger under RDP, beside `epsilon` (the tight accountant's) to compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdp_epsilon: Option<f64>,
}

/// A task the server knows (`GET /api/tasks`): what the run form offers, one line each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Class names, by label.
    pub classes: Vec<String>,
    pub model_params: u64,
    pub model_signature: String,
    /// Whether this server holds the task's data: server shards and server-side evaluation
    /// (without it, clients bring their own data).
    pub data: bool,
}

/// Where other devices can open the client page (`GET /api/admin/join`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinInfo {
    /// The address the server listens on.
    pub bind: String,
    /// `http://<lan-ip>:<port>/` for each address another device could reach; empty when the
    /// server listens on loopback only.
    pub lan_urls: Vec<String>,
}

/// A connected client as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub client_id: u64,
    pub name: String,
    pub state: ClientState,
    pub num_examples: Option<u64>,
    pub shard_index: Option<u32>,
    pub own_data: bool,
    pub connected_at_ms: u64,
    /// Rounds of the current run this client was sampled for (and charged for: what `epsilon`
    /// counts), whether it then trained or failed.
    pub rounds: u64,
    /// Of those, rounds it failed (an error, a refusal, a disconnect, the deadline) since this
    /// server started.
    pub failures: u64,
    /// ε of the current run by the server's ledger (`None` without DP or without a run): an
    /// upper bound of what the client spent, since the server charges every round it sends,
    /// including the `failures` the client never trained or returned.
    pub epsilon: Option<f64>,
    /// `epsilon` is RDP's ε of the ledger (an upper bound) while the server computes the tight
    /// one of its latest charge, off the coordinator (a fraction of a second per shard size).
    #[serde(default)]
    pub epsilon_pending: bool,
    /// With distributed-DP rounds: the same ledger's ε whatever the server and the other
    /// clients of those rounds do (its own noise shares alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collusion_epsilon: Option<f64>,
    /// The same ledger under RDP, beside `epsilon` (the tight accountant's) to compare; `None`
    /// where RDP is the ε itself (distributed-DP rounds) or nothing was spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdp_epsilon: Option<f64>,
    /// The client said it refuses every further round of this run (its own budget is spent).
    #[serde(default)]
    pub refuses: bool,
    /// When and why a client of the current run left (its state is then `left`).
    #[serde(default)]
    pub left: Option<Departure>,
}

/// A client of the current run that is no longer connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Departure {
    /// The round in flight when it left, or `None` between rounds.
    pub in_round: Option<u64>,
    /// Rounds the run had completed then.
    pub after_round: u64,
    pub reason: String,
    /// It was training in `in_round` (sampled, no result yet): that round failed for it.
    #[serde(default)]
    pub was_training: bool,
}

impl Departure {
    /// "left in round 2: disconnected", "left after round 3: …".
    pub fn text(&self) -> String {
        match self.in_round {
            Some(r) => format!("left in round {r}: {}", self.reason),
            None => format!("left after round {}: {}", self.after_round, self.reason),
        }
    }
}

/// What a connected client is doing for the current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientState {
    /// Not in a round (waiting to be sampled, or the round is over for it).
    Idle,
    /// Sent a round's model and instructions; no result yet.
    Training,
    /// Asked to evaluate the new global model; no result yet.
    Evaluating,
    /// A client of the current run that disconnected (kept in the list with its rounds and ε).
    Left,
}

impl ClientState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Training => "training",
            Self::Evaluating => "evaluating",
            Self::Left => "left",
        }
    }
}

/// The live stream for dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunCreated {
        run: RunSummary,
    },
    RunStatus {
        run_id: u64,
        status: RunStatus,
        reason: Option<String>,
    },
    RoundStarted {
        run_id: u64,
        server_round: u64,
        attempt: u32,
        sampled: Vec<u64>,
    },
    RoundRetried {
        run_id: u64,
        server_round: u64,
        reason: String,
    },
    RoundClosed {
        run_id: u64,
        record: RoundRecord,
    },
    ClientJoined {
        client: ClientInfo,
    },
    ClientLeft {
        client_id: u64,
    },
    ClientFailed {
        client_id: u64,
        server_round: u64,
        reason: String,
    },
    ClientTrained {
        client_id: u64,
        server_round: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_is_the_demo_config() {
        let c = RunConfig::from_json("{}").unwrap();
        assert_eq!(c, RunConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"{"rounds":0}"#, "rounds"),
            (r#"{"rounds":"ten"}"#, "rounds"),
            (r#"{"fraction_train":1.5}"#, "fraction_train"),
            (r#"{"quorum":0}"#, "quorum"),
            (r#"{"learning_rate":-1}"#, "learning_rate"),
            (r#"{"local_epochs":0}"#, "local_epochs"),
            (r#"{"batching":{"sample_rate":2}}"#, "batching.sample_rate"),
            (r#"{"batching":{"batch_size":0}}"#, "batching.batch_size"),
            (
                r#"{"optimizer":{"kind":"sgd","momentum":1.0}}"#,
                "optimizer.momentum",
            ),
            (
                r#"{"dp":{"max_grad_norm":0,"noise_multiplier":1,"delta":1e-5}}"#,
                "dp.max_grad_norm",
            ),
            (
                r#"{"dp":{"max_grad_norm":1,"delta":1e-5}}"#,
                "dp.noise_multiplier",
            ),
            (
                r#"{"dp":{"max_grad_norm":1,"target_epsilon":-3,"delta":1e-5}}"#,
                "dp.target_epsilon",
            ),
            (
                r#"{"dp":{"max_grad_norm":1,"noise_multiplier":1,"delta":2}}"#,
                "dp.delta",
            ),
            (
                r#"{"shards":{"scheme":{"kind":"dirichlet","alpha":0},"num_shards":10,"seed":1}}"#,
                "shards.scheme.alpha",
            ),
            (
                r#"{"shards":{"scheme":{"kind":"iid"},"num_shards":0,"seed":1}}"#,
                "shards.num_shards",
            ),
            (r#"{"round_timeout_secs":0}"#, "round_timeout_secs"),
            (r#"{"name":""}"#, "name"),
            // The attacks of the hostile-clients review: configs that cannot run.
            (
                r#"{"batching":{"sample_rate":1e-300}}"#,
                "batching.sample_rate",
            ),
            (
                r#"{"local_epochs":100,"batching":{"sample_rate":0.0005}}"#,
                "batching.sample_rate",
            ),
            (r#"{"min_clients":4000000000}"#, "min_clients"),
            ("[]", "body"),
            (
                r#"{"dp":{"max_grad_norm":1,"noise_multiplier":1,"delta":0.9999999}}"#,
                "dp.delta",
            ),
            (
                r#"{"dp":{"max_grad_norm":1,"noise_multiplier":1e-30,"delta":1e-5}}"#,
                "dp.noise_multiplier",
            ),
            (
                r#"{"dp":{"max_grad_norm":1,"target_epsilon":1e300,"delta":1e-5}}"#,
                "dp.target_epsilon",
            ),
            (
                r#"{"dp":{"max_grad_norm":1e38,"noise_multiplier":1,"delta":1e-5}}"#,
                "dp.max_grad_norm",
            ),
            (r#"{"learning_rate":1e38}"#, "learning_rate"),
            (r#"{"name":"a\u0000b"}"#, "name"),
            (r#"{"name":"run \u202Egnp.exe"}"#, "name"),
            (r#"{"name":"<script>alert(1)</script>"}"#, "name"),
            (r#"{"rouns":3}"#, "rouns"),
            ("3", "body"),
            (r#"{"aggregator":{"kind":"mean"}}"#, "aggregator.kind"),
            (
                r#"{"aggregator":{"kind":"trimmed_mean","trim":0.5}}"#,
                "aggregator.trim",
            ),
            (
                r#"{"aggregator":{"kind":"norm_bound","bound":-1}}"#,
                "aggregator.bound",
            ),
            (
                r#"{"aggregator":{"kind":"norm_bound","bound":1e30}}"#,
                "aggregator.bound",
            ),
            // Multi-Krum against 2 hostile clients cannot run with fewer than 7 updates.
            (
                r#"{"min_clients":6,"aggregator":{"kind":"multi_krum","byzantine":2}}"#,
                "aggregator.byzantine",
            ),
            (
                r#"{"min_clients":7,"aggregator":{"kind":"multi_krum","byzantine":2,"keep":0}}"#,
                "aggregator.keep",
            ),
            (
                r#"{"min_clients":201,"aggregator":{"kind":"median"}}"#,
                "min_clients",
            ),
            // Secure aggregation: the server sees only a sum, so no rule that needs each update;
            // no cohort whose encoded sum could wrap 2^32.
            (
                r#"{"min_clients":5,"aggregator":{"kind":"median"},"secure_aggregation":{}}"#,
                "secure_aggregation",
            ),
            (
                r#"{"min_clients":3,"secure_aggregation":{"neighbours":1}}"#,
                "secure_aggregation.neighbours",
            ),
            (
                r#"{"min_clients":3,"secure_aggregation":{"threshold":0.5}}"#,
                "secure_aggregation.threshold",
            ),
            (
                r#"{"min_clients":2000,"secure_aggregation":{}}"#,
                "min_clients",
            ),
            (
                r#"{"min_clients":3,"secure_aggregation":{"levels":1}}"#,
                "secure_aggregation.levels",
            ),
            (r#"{"secure_aggregation":{}}"#, "min_clients"),
        ];
        for (json, field) in cases {
            let err = RunConfig::from_json(json).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
        // A 60 KB name (or unknown key) is not repeated back in full.
        for json in [
            format!(r#"{{"name":"{}"}}"#, "n".repeat(60_000)),
            format!(r#"{{"{}":1}}"#, "k".repeat(60_000)),
        ] {
            let err = RunConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.len() < 1000, "{} bytes", err.len());
        }
    }

    #[test]
    fn messages_use_the_forms_labels_and_plain_ranges() {
        let said = |json: &str| RunConfig::from_json(json).unwrap_err().to_string();
        // The same words for a wrong type (the API) and a wrong value (the API or the form).
        assert_eq!(
            said(r#"{"rounds":"three"}"#),
            "Rounds is \"three\": expected a whole number from 1 to 10\u{a0}000"
        );
        assert_eq!(
            said(r#"{"rounds":0}"#),
            "Rounds is 0: expected a whole number from 1 to 10\u{a0}000"
        );
        assert_eq!(
            said(r#"{"rounds":-1}"#),
            "Rounds is -1: expected a whole number from 1 to 10\u{a0}000"
        );
        assert_eq!(
            said(r#"{"dp":{"max_grad_norm":1,"noise_multiplier":1,"delta":2}}"#),
            "δ is 2: expected a number above 0 and at most 0.01 (and below 1 / examples per client, e.g. 1e-5)"
        );
        assert_eq!(
            said(r#"{"batching":{"batch_size":5000000000}}"#),
            "Batch size is 5000000000: expected a whole number from 1 to 1\u{a0}000\u{a0}000 (at most the examples of one shard)"
        );
        let unknown = said(r#"{"rouns":3}"#);
        assert!(
            unknown.starts_with("rouns is 3: expected one of `name`, `task`, `rounds`"),
            "{unknown}"
        );
        assert!(!unknown.contains("line 1"), "{unknown}");
        assert!(
            said(r#"{"min_clients":6,"aggregator":{"kind":"multi_krum","byzantine":2}}"#)
                .starts_with("Hostile clients f is 2: expected at most 1 while Min clients is 6")
        );
        for e in [said("[]"), said("3")] {
            assert!(e.starts_with("The request body is"), "{e}");
        }
    }

    #[test]
    fn secure_aggregation_thresholds_are_strict_majorities() {
        let s = SecureAggregationConfig::default();
        assert_eq!(s.max_members(), 1023);
        // 0.6 of 3 holders is 2 (a strict majority); of 17, 11; never below a majority.
        assert_eq!(s.threshold_for(3), 2);
        assert_eq!(s.threshold_for(17), 11);
        let half = SecureAggregationConfig {
            threshold: 0.51,
            ..s
        };
        assert_eq!(half.threshold_for(4), 3);
        // A count: 12 of 17 holders; never below a majority (2 → 9), never above all (40 → 17).
        let count = |c| SecureAggregationConfig {
            threshold_count: Some(c),
            ..s
        };
        assert_eq!(count(12).threshold_for(17), 12);
        assert_eq!(count(2).threshold_for(17), 9);
        assert_eq!(count(40).threshold_for(17), 17);
        assert_eq!(
            RunConfig::from_json(r#"{"min_clients":3,"secure_aggregation":{}}"#)
                .unwrap()
                .secure_aggregation,
            Some(s)
        );
    }

    #[test]
    fn distributed_dp_is_refused_where_it_would_not_protect_or_would_wrap() {
        let with = |dp: &str, rest: &str| {
            let rest = if rest.is_empty() {
                r#","local_epochs":1,"batching":{"batch_size":205}"#
            } else {
                rest
            };
            RunConfig::from_json(&format!(
                r#"{{"min_clients":10,"secure_aggregation":{{}}{rest},"dp":{{"max_grad_norm":1,"target_epsilon":3,"delta":1e-5,"distributed":{dp}}}}}"#
            ))
        };
        let ok = with(r#"{"contributors":7,"schedule":"cosine"}"#, "").unwrap();
        let d = ok.dp.unwrap().distributed.unwrap();
        assert_eq!((d.contributors, d.schedule), (7, LrSchedule::Cosine));
        assert_eq!(d.scale, 1000.0);
        let field = |r: Result<RunConfig, FieldError>| r.unwrap_err().field;
        // Without secure aggregation the server would see each client's share of the noise.
        let plain = RunConfig::from_json(
            r#"{"min_clients":10,"dp":{"max_grad_norm":1,"target_epsilon":3,"delta":1e-5,"distributed":{}}}"#,
        );
        assert_eq!(field(plain), "dp.distributed");
        assert_eq!(
            field(with(r#"{"contributors":11}"#, "")),
            "dp.distributed.contributors"
        );
        assert_eq!(
            field(with(r#"{"contributors":0}"#, "")),
            "dp.distributed.contributors"
        );
        assert_eq!(
            field(with(
                "{}",
                r#","local_epochs":2,"batching":{"batch_size":205}"#
            )),
            "local_epochs"
        );
        // A sample rate (the same q for every client, as Dirichlet shards want) is checked
        // when a round's cohort is known.
        assert!(with("{}", r#","local_epochs":1,"batching":{"sample_rate":0.03}"#).is_ok());
        assert_eq!(field(with(r#"{"beta":1}"#, "")), "dp.distributed.beta");
        // S = 10⁶ at batch 205: one client's sum reaches ≈ 2.5·10⁸, ten wrap 2³¹.
        let wraps = with(r#"{"scale":1000000}"#, "").unwrap_err();
        assert_eq!(wraps.field, "dp.distributed.scale");
        assert!(wraps.expected.contains("could wrap"), "{}", wraps.expected);
        assert!(with(r#"{"scale":100000}"#, "").is_ok());
    }

    #[test]
    fn the_cosine_schedule_goes_from_lr_to_near_zero() {
        assert_eq!(LrSchedule::Constant.at(6.0, 500, 1000), 6.0);
        assert_eq!(LrSchedule::Cosine.at(6.0, 1, 1000), 6.0);
        assert!((LrSchedule::Cosine.at(6.0, 501, 1000) - 3.0).abs() < 1e-6);
        assert!(LrSchedule::Cosine.at(6.0, 1000, 1000) < 1e-3);
    }

    #[test]
    fn aggregators_are_chosen_by_kind() {
        for (json, expected) in [
            (r#"{"kind":"fedavg"}"#, AggregatorConfig::FedAvg),
            (r#"{"kind":"median"}"#, AggregatorConfig::Median),
            (
                r#"{"kind":"norm_bound"}"#,
                AggregatorConfig::NormBound { bound: None },
            ),
            (
                r#"{"kind":"trimmed_mean","trim":0.2}"#,
                AggregatorConfig::TrimmedMean { trim: 0.2 },
            ),
            (
                r#"{"kind":"multi_krum","byzantine":2}"#,
                AggregatorConfig::MultiKrum {
                    byzantine: 2,
                    keep: None,
                },
            ),
        ] {
            let c = RunConfig::from_json(&format!(r#"{{"min_clients":10,"aggregator":{json}}}"#))
                .expect(json);
            assert_eq!(c.aggregator, expected);
        }
    }

    #[test]
    fn status_names_round_trip() {
        for s in [
            RunStatus::Created,
            RunStatus::Running,
            RunStatus::Paused,
            RunStatus::Finished,
            RunStatus::Stopped,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
    }
}
