//! The admin page's run config form as plain data: one text value per input, keyed by the JSON
//! path the admin API names in its errors (`dp.target_epsilon`), so a message from the local
//! check or from the server lands next to the same input.
//!
//! Each input is checked with its [`protocol::fields`] range (the words of the server's own
//! messages, also shown as the input's help), then the whole config with
//! [`RunConfig::from_json`] itself (the server's check, compiled into the page) for the rules
//! that join fields.

use std::collections::BTreeMap;

use protocol::admin::{AggregatorConfig, FieldError, LrSchedule, RunConfig, TaskInfo};
use protocol::config::{Batching, Optimizer, ShardScheme};
use protocol::fields::{self, Field};
use serde_json::{Map, Value, json};

/// How an input is shown and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Integer,
    Number,
    Bool,
    /// One of these values (a select box).
    Choice(&'static [&'static str]),
    /// A task of the server's registry (a select box filled from `GET /api/tasks`).
    Task,
}

/// One input of the form.
#[derive(Debug, Clone, Copy)]
pub struct FormField {
    /// JSON path (the admin API's field name), or a selector such as `batching`.
    pub path: &'static str,
    pub label: &'static str,
    pub kind: FieldKind,
    /// What the field means (its range, for a value input, comes from `spec`).
    pub about: &'static str,
    /// The label and range the server's check uses, for inputs that hold a value.
    pub spec: Option<&'static Field>,
}

impl FormField {
    /// The help under the input: the field's range (the same words as its error message),
    /// then what it means.
    pub fn help(&self) -> String {
        match (self.spec, self.about) {
            (Some(spec), "") => spec.expected(),
            (Some(spec), about) => format!("{}; {about}", spec.expected()),
            (None, about) => about.into(),
        }
    }
}

/// A select box or a checkbox (no range of its own).
const fn choice(
    path: &'static str,
    label: &'static str,
    kind: FieldKind,
    about: &'static str,
) -> FormField {
    FormField {
        path,
        label,
        kind,
        about,
        spec: None,
    }
}

/// A choice the config names as one field (its label is the server's; the choices are the range).
const fn labelled(spec: &'static Field, kind: FieldKind, about: &'static str) -> FormField {
    FormField {
        path: spec.path,
        label: spec.label,
        kind,
        about,
        spec: None,
    }
}

/// An input that holds a value, named and bounded by its [`Field`].
const fn value(spec: &'static Field, kind: FieldKind, about: &'static str) -> FormField {
    FormField {
        path: spec.path,
        label: spec.label,
        kind,
        about,
        spec: Some(spec),
    }
}

use FieldKind::*;

/// Every field of the admin API's run config, in display order.
pub const FIELDS: &[FormField] = &[
    value(&fields::NAME, Text, "shown in the run list"),
    labelled(
        &fields::TASK,
        Task,
        "what the federation learns: its data and model",
    ),
    value(
        &fields::ROUNDS,
        Integer,
        "the run may end earlier when the privacy budget is spent",
    ),
    value(
        &fields::MIN_CLIENTS,
        Integer,
        "a round starts when this many clients are connected",
    ),
    value(
        &fields::FRACTION_TRAIN,
        Number,
        "fraction of connected clients sampled per round",
    ),
    value(
        &fields::QUORUM,
        Number,
        "fraction of sampled clients that must answer by the deadline",
    ),
    value(&fields::ROUND_TIMEOUT, Integer, ""),
    choice(
        "accept_failures",
        "Accept failures",
        Bool,
        "aggregate a round even if some clients failed",
    ),
    value(
        &fields::FRACTION_EVALUATE,
        Number,
        "clients asked to evaluate on their own data",
    ),
    value(&fields::LOCAL_EPOCHS, Integer, ""),
    labelled(
        &fields::BATCHING,
        Choice(&["batch_size", "sample_rate"]),
        "expected batch size, or Poisson sample rate q",
    ),
    value(
        &fields::BATCH_SIZE,
        Integer,
        "expected examples per step (q = B / shard size)",
    ),
    value(&fields::SAMPLE_RATE, Number, ""),
    value(&fields::LEARNING_RATE, Number, ""),
    choice("optimizer.kind", "Optimizer", Choice(&["sgd", "adam"]), ""),
    value(&fields::MOMENTUM, Number, ""),
    value(&fields::BETA1, Number, ""),
    value(&fields::BETA2, Number, ""),
    value(&fields::ADAM_EPSILON, Number, ""),
    choice(
        "aggregator.kind",
        "Aggregation",
        Choice(&[
            "fedavg",
            "norm_bound",
            "median",
            "trimmed_mean",
            "multi_krum",
        ]),
        "FedAvg, or a rule that a minority of hostile clients cannot steer",
    ),
    value(
        &fields::NORM_BOUND,
        Number,
        "each update is clipped to this L2 norm",
    ),
    value(
        &fields::TRIM,
        Number,
        "dropped at each end of every coordinate",
    ),
    value(&fields::BYZANTINE, Integer, "hostile clients tolerated"),
    value(&fields::KEEP, Integer, "best-scored updates kept"),
    labelled(
        &fields::SECURE_AGGREGATION,
        Bool,
        "the server learns only the sum of each round's updates (FedAvg)",
    ),
    value(
        &fields::SECAGG_NEIGHBOURS,
        Integer,
        "each client masks against and shares with this many (SecAgg+)",
    ),
    value(
        &fields::SECAGG_THRESHOLD,
        Number,
        "up to the rest may drop out and the round still unmasks",
    ),
    choice("dp", "Differential privacy", Bool, "DP-SGD on every client"),
    value(
        &fields::CLIPPING_NORM,
        Number,
        "per-example gradients are clipped to this L2 norm",
    ),
    value(&fields::DELTA, Number, ""),
    choice(
        "dp.budget",
        "Noise from",
        Choice(&["target_epsilon", "noise_multiplier"]),
        "solve σ from a target ε, or set σ",
    ),
    value(
        &fields::TARGET_EPSILON,
        Number,
        "each client stops before its ε passes this",
    ),
    value(&fields::NOISE_MULTIPLIER, Number, ""),
    labelled(
        &fields::DISTRIBUTED,
        Bool,
        "each round is one DP-SGD step over the sampled clients' data, the noise split among them; the server applies Learning rate and Optimizer",
    ),
    value(
        &fields::DISTRIBUTED_CONTRIBUTORS,
        Integer,
        "the noise is whole only when this many clients' shares are in the sum",
    ),
    value(&fields::DISTRIBUTED_SCALE, Number, ""),
    value(&fields::DISTRIBUTED_BETA, Number, ""),
    value(
        &fields::EVALUATE_EVERY,
        Integer,
        "the server's test-set evaluation (a round is one step)",
    ),
    labelled(
        &fields::LR_SCHEDULE,
        Choice(&["constant", "cosine"]),
        "the server's learning rate over the run",
    ),
    labelled(&fields::SHARDS, Bool, "off: clients bring their own data"),
    choice(
        "shards.scheme.kind",
        "Split",
        Choice(&["iid", "dirichlet"]),
        "IID, or label skew Dirichlet(α)",
    ),
    value(
        &fields::ALPHA,
        Number,
        "small α gives each client few classes",
    ),
    value(&fields::NUM_SHARDS, Integer, "one per client"),
    value(
        &fields::SEED,
        Integer,
        "the same seed gives the same shards",
    ),
];

/// The form's values.
#[derive(Debug, Clone, PartialEq)]
pub struct RunForm {
    values: BTreeMap<&'static str, String>,
}

impl Default for RunForm {
    /// The demo run's config.
    fn default() -> Self {
        Self::from_config(&RunConfig::default())
    }
}

impl RunForm {
    /// The form showing `c` (fields of the parts `c` does not use keep the demo's values).
    pub fn from_config(c: &RunConfig) -> Self {
        let mut v: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut set = |k: &'static str, s: String| {
            v.insert(k, s);
        };
        set("name", c.name.clone());
        set("task", c.task.clone());
        set("rounds", c.rounds.to_string());
        set("min_clients", c.min_clients.to_string());
        set("fraction_train", c.fraction_train.to_string());
        set("quorum", c.quorum.to_string());
        set("round_timeout_secs", c.round_timeout_secs.to_string());
        set("accept_failures", c.accept_failures.to_string());
        set("fraction_evaluate", c.fraction_evaluate.to_string());
        set("local_epochs", c.local_epochs.to_string());
        set("batching.batch_size", "512".into());
        set("batching.sample_rate", "0.01".into());
        match c.batching {
            Batching::BatchSize(b) => {
                set("batching", "batch_size".into());
                set("batching.batch_size", b.to_string());
            }
            Batching::SampleRate(q) => {
                set("batching", "sample_rate".into());
                set("batching.sample_rate", q.to_string());
            }
        }
        set("learning_rate", c.learning_rate.to_string());
        set("optimizer.momentum", "0".into());
        set("optimizer.beta1", "0.9".into());
        set("optimizer.beta2", "0.999".into());
        set("optimizer.epsilon", "1e-8".into());
        match c.optimizer {
            Optimizer::Sgd { momentum } => {
                set("optimizer.kind", "sgd".into());
                set("optimizer.momentum", momentum.to_string());
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                set("optimizer.kind", "adam".into());
                set("optimizer.beta1", beta1.to_string());
                set("optimizer.beta2", beta2.to_string());
                set("optimizer.epsilon", epsilon.to_string());
            }
        }
        set("aggregator.bound", String::new());
        set("aggregator.trim", "0.2".into());
        set("aggregator.byzantine", "1".into());
        set("aggregator.keep", String::new());
        let kind = match c.aggregator {
            AggregatorConfig::FedAvg => "fedavg",
            AggregatorConfig::NormBound { bound } => {
                set(
                    "aggregator.bound",
                    bound.map_or(String::new(), |b| b.to_string()),
                );
                "norm_bound"
            }
            AggregatorConfig::Median => "median",
            AggregatorConfig::TrimmedMean { trim } => {
                set("aggregator.trim", trim.to_string());
                "trimmed_mean"
            }
            AggregatorConfig::MultiKrum { byzantine, keep } => {
                set("aggregator.byzantine", byzantine.to_string());
                set(
                    "aggregator.keep",
                    keep.map_or(String::new(), |k| k.to_string()),
                );
                "multi_krum"
            }
        };
        set("aggregator.kind", kind.into());
        let secure = c.secure_aggregation.unwrap_or_default();
        set(
            "secure_aggregation",
            c.secure_aggregation.is_some().to_string(),
        );
        set(
            "secure_aggregation.neighbours",
            secure.neighbours.to_string(),
        );
        set("secure_aggregation.threshold", secure.threshold.to_string());
        let dp = c.dp.unwrap_or_else(default_dp);
        set("dp", c.dp.is_some().to_string());
        set("dp.max_grad_norm", dp.max_grad_norm.to_string());
        set("dp.delta", dp.delta.to_string());
        set(
            "dp.budget",
            if dp.target_epsilon.is_some() {
                "target_epsilon"
            } else {
                "noise_multiplier"
            }
            .into(),
        );
        set(
            "dp.target_epsilon",
            dp.target_epsilon.unwrap_or(3.0).to_string(),
        );
        set(
            "dp.noise_multiplier",
            dp.noise_multiplier.unwrap_or(1.0).to_string(),
        );
        let distributed = dp.distributed.unwrap_or_default();
        set("dp.distributed", dp.distributed.is_some().to_string());
        set(
            "dp.distributed.contributors",
            distributed.contributors.to_string(),
        );
        set("dp.distributed.scale", distributed.scale.to_string());
        set("dp.distributed.beta", distributed.beta.to_string());
        set(
            "dp.distributed.evaluate_every",
            distributed.evaluate_every.to_string(),
        );
        set(
            "dp.distributed.schedule",
            match distributed.schedule {
                LrSchedule::Constant => "constant",
                LrSchedule::Cosine => "cosine",
            }
            .into(),
        );
        let shards = c.shards.unwrap_or_else(default_shards);
        set("shards", c.shards.is_some().to_string());
        set("shards.scheme.alpha", "0.5".into());
        match shards.scheme {
            ShardScheme::Iid => set("shards.scheme.kind", "iid".into()),
            ShardScheme::Dirichlet { alpha } => {
                set("shards.scheme.kind", "dirichlet".into());
                set("shards.scheme.alpha", alpha.to_string());
            }
        }
        set("shards.num_shards", shards.num_shards.to_string());
        set("shards.seed", shards.seed.to_string());
        Self { values: v }
    }

    pub fn get(&self, path: &str) -> &str {
        self.values.get(path).map_or("", String::as_str)
    }

    /// Sets an input's text (unknown paths are ignored: the form has a fixed set of inputs).
    pub fn set(&mut self, path: &str, value: impl Into<String>) {
        if let Some(field) = FIELDS.iter().find(|f| f.path == path) {
            self.values.insert(field.path, value.into());
        }
    }

    fn on(&self, path: &str) -> bool {
        self.get(path) == "true"
    }

    /// Whether an input matters with the current choices (others are hidden).
    pub fn is_active(&self, path: &str) -> bool {
        let prefix = |p: &str| path.starts_with(p) && path != p.trim_end_matches('.');
        if prefix("batching.") {
            return path == format!("batching.{}", self.get("batching"));
        }
        if prefix("optimizer.") && path != "optimizer.kind" {
            let sgd = self.get("optimizer.kind") == "sgd";
            return (path == "optimizer.momentum") == sgd;
        }
        if prefix("aggregator.") && path != "aggregator.kind" {
            let uses = match self.get("aggregator.kind") {
                "norm_bound" => &["aggregator.bound"][..],
                "trimmed_mean" => &["aggregator.trim"],
                "multi_krum" => &["aggregator.byzantine", "aggregator.keep"],
                _ => &[],
            };
            return uses.contains(&path);
        }
        if prefix("secure_aggregation.") {
            return self.on("secure_aggregation");
        }
        if prefix("dp.") {
            if !self.on("dp") {
                return false;
            }
            return match path {
                "dp.target_epsilon" | "dp.noise_multiplier" => {
                    path == format!("dp.{}", self.get("dp.budget"))
                }
                _ if path.starts_with("dp.distributed.") => self.on("dp.distributed"),
                _ => true,
            };
        }
        if prefix("shards.") {
            if !self.on("shards") {
                return false;
            }
            return path != "shards.scheme.alpha" || self.get("shards.scheme.kind") == "dirichlet";
        }
        true
    }

    /// The admin API's JSON body, or every input that is not even a number.
    pub fn to_json(&self) -> Result<Value, Vec<FieldError>> {
        let mut errors = Vec::new();
        // Each input is checked with its field's own range (the server's words), so every bad
        // input is marked at once, not only the first the server would name.
        let mut num = |path: &'static str| -> Value {
            let parsed = fields::at(path)
                .ok_or_else(|| FieldError::other(path, path, "unknown", "a field of the form"))
                .and_then(|spec| spec.parse(self.get(path)));
            parsed.unwrap_or_else(|e| {
                errors.push(e);
                Value::Null
            })
        };
        let mut body = Map::new();
        body.insert("name".into(), self.get("name").into());
        body.insert("task".into(), self.get("task").into());
        for path in [
            "rounds",
            "min_clients",
            "round_timeout_secs",
            "local_epochs",
        ] {
            body.insert(path.into(), num(path));
        }
        for path in [
            "fraction_train",
            "quorum",
            "fraction_evaluate",
            "learning_rate",
        ] {
            body.insert(path.into(), num(path));
        }
        body.insert("accept_failures".into(), self.on("accept_failures").into());
        body.insert(
            "batching".into(),
            if self.get("batching") == "sample_rate" {
                json!({ "sample_rate": num("batching.sample_rate") })
            } else {
                json!({ "batch_size": num("batching.batch_size") })
            },
        );
        body.insert(
            "optimizer".into(),
            if self.get("optimizer.kind") == "adam" {
                json!({
                    "kind": "adam",
                    "beta1": num("optimizer.beta1"),
                    "beta2": num("optimizer.beta2"),
                    "epsilon": num("optimizer.epsilon"),
                })
            } else {
                json!({ "kind": "sgd", "momentum": num("optimizer.momentum") })
            },
        );
        // Empty optional inputs mean "none" (the median norm, n − f).
        let mut optional = |path: &'static str| -> Value {
            if self.get(path).trim().is_empty() {
                Value::Null
            } else {
                num(path)
            }
        };
        let kind = self.get("aggregator.kind");
        body.insert(
            "aggregator".into(),
            match kind {
                "norm_bound" => {
                    json!({ "kind": kind, "bound": optional("aggregator.bound") })
                }
                "trimmed_mean" => {
                    json!({ "kind": kind, "trim": optional("aggregator.trim") })
                }
                "multi_krum" => json!({
                    "kind": kind,
                    "byzantine": optional("aggregator.byzantine"),
                    "keep": optional("aggregator.keep"),
                }),
                _ => json!({ "kind": kind }),
            },
        );
        let dp = if self.on("dp") {
            let mut dp = json!({
                "max_grad_norm": num("dp.max_grad_norm"),
                "delta": num("dp.delta"),
            });
            let budget = if self.get("dp.budget") == "noise_multiplier" {
                "noise_multiplier"
            } else {
                "target_epsilon"
            };
            let path = if budget == "noise_multiplier" {
                "dp.noise_multiplier"
            } else {
                "dp.target_epsilon"
            };
            dp[budget] = num(path);
            if self.on("dp.distributed") {
                dp["distributed"] = json!({
                    "contributors": num("dp.distributed.contributors"),
                    "scale": num("dp.distributed.scale"),
                    "beta": num("dp.distributed.beta"),
                    "evaluate_every": num("dp.distributed.evaluate_every"),
                    "schedule": self.get("dp.distributed.schedule"),
                });
            }
            dp
        } else {
            Value::Null
        };
        body.insert("dp".into(), dp);
        let secure = if self.on("secure_aggregation") {
            json!({
                "neighbours": num("secure_aggregation.neighbours"),
                "threshold": num("secure_aggregation.threshold"),
            })
        } else {
            Value::Null
        };
        body.insert("secure_aggregation".into(), secure);
        let shards = if self.on("shards") {
            let scheme = if self.get("shards.scheme.kind") == "dirichlet" {
                json!({ "kind": "dirichlet", "alpha": num("shards.scheme.alpha") })
            } else {
                json!({ "kind": "iid" })
            };
            json!({
                "scheme": scheme,
                "num_shards": num("shards.num_shards"),
                "seed": num("shards.seed"),
            })
        } else {
            Value::Null
        };
        body.insert("shards".into(), shards);
        if errors.is_empty() {
            Ok(Value::Object(body))
        } else {
            Err(errors)
        }
    }

    /// The config the form describes, checked exactly as the server will check it.
    pub fn to_config(&self) -> Result<RunConfig, Vec<FieldError>> {
        let body = self.to_json()?;
        RunConfig::from_json(&body.to_string()).map_err(|e| vec![e])
    }
}

/// One option of the task select: its id (the value) and its name, from the server's registry
/// (`GET /api/tasks`). Short, so a narrow select still shows it whole; a task whose data this
/// server lacks says so (its runs need clients with their own files).
pub fn task_option(t: &TaskInfo) -> (String, String) {
    let data = if t.data { "" } else { " — no data here" };
    (t.id.clone(), format!("{}{data}", t.name))
}

/// The help under the task select: what the chosen task is, and where its data comes from.
pub fn task_help(tasks: &[TaskInfo], chosen: &str) -> String {
    match tasks.iter().find(|t| t.id == chosen) {
        Some(t) if t.data => format!(
            "{}; this server holds its data (shards and the test set)",
            t.description
        ),
        Some(t) => format!(
            "{}; this server does not hold its data: clients bring their own files (server shards off), and the server does not evaluate",
            t.description
        ),
        None => fields::TASK.expected(),
    }
}

/// The task select's options: the registry the server sent, or, before it answers, the task
/// the form shows (so the select never holds a value it does not list).
pub fn task_options(tasks: &[TaskInfo], chosen: &str) -> Vec<(String, String)> {
    if tasks.is_empty() {
        return vec![(chosen.to_string(), chosen.to_string())];
    }
    tasks.iter().map(task_option).collect()
}

/// What the DP inputs show while DP is off: the demo's settings.
fn default_dp() -> protocol::admin::DpRunConfig {
    let demo = RunConfig::default().dp;
    demo.unwrap_or(protocol::admin::DpRunConfig {
        max_grad_norm: 1.0,
        noise_multiplier: Some(1.0),
        target_epsilon: None,
        delta: 1e-5,
        distributed: None,
    })
}

/// What the shard inputs show while clients bring their own data: the demo's split.
fn default_shards() -> protocol::admin::ShardConfig {
    let demo = RunConfig::default().shards;
    demo.unwrap_or(protocol::admin::ShardConfig {
        scheme: ShardScheme::Iid,
        num_shards: 10,
        seed: 42,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_form_is_the_demo_config() {
        assert_eq!(
            RunForm::default().to_config().unwrap(),
            RunConfig::default()
        );
    }

    #[test]
    fn every_shape_round_trips() {
        let mut c = RunConfig {
            batching: Batching::SampleRate(0.05),
            optimizer: Optimizer::Adam {
                beta1: 0.8,
                beta2: 0.99,
                epsilon: 1e-6,
            },
            dp: Some(protocol::admin::DpRunConfig {
                max_grad_norm: 0.5,
                noise_multiplier: Some(1.3),
                target_epsilon: None,
                delta: 1e-6,
                distributed: None,
            }),
            ..RunConfig::default()
        };
        c.shards.as_mut().unwrap().scheme = ShardScheme::Dirichlet { alpha: 0.3 };
        assert_eq!(RunForm::from_config(&c).to_config().unwrap(), c);
        c.min_clients = 10;
        for aggregator in [
            AggregatorConfig::Median,
            AggregatorConfig::NormBound { bound: None },
            AggregatorConfig::NormBound { bound: Some(2.5) },
            AggregatorConfig::TrimmedMean { trim: 0.3 },
            AggregatorConfig::MultiKrum {
                byzantine: 2,
                keep: None,
            },
            AggregatorConfig::MultiKrum {
                byzantine: 3,
                keep: Some(4),
            },
        ] {
            c.aggregator = aggregator;
            assert_eq!(RunForm::from_config(&c).to_config().unwrap(), c);
        }
        c.dp = None;
        c.shards = None;
        assert_eq!(RunForm::from_config(&c).to_config().unwrap(), c);
        c.aggregator = AggregatorConfig::FedAvg;
        c.secure_aggregation = Some(protocol::admin::SecureAggregationConfig {
            neighbours: 4,
            threshold: 0.75,
            ..Default::default()
        });
        assert_eq!(RunForm::from_config(&c).to_config().unwrap(), c);
        // Distributed DP (with secure aggregation, one epoch, a batch size).
        c.batching = Batching::BatchSize(205);
        c.local_epochs = 1;
        c.dp = Some(protocol::admin::DpRunConfig {
            max_grad_norm: 1.0,
            noise_multiplier: None,
            target_epsilon: Some(3.0),
            delta: 1e-5,
            distributed: Some(protocol::admin::DistributedDpConfig {
                contributors: 5,
                scale: 2000.0,
                beta: 0.5,
                evaluate_every: 40,
                schedule: LrSchedule::Cosine,
            }),
        });
        assert_eq!(RunForm::from_config(&c).to_config().unwrap(), c);
        // Its inputs show only when it is on; without secure aggregation the server's words.
        let mut form = RunForm::from_config(&c);
        assert!(form.is_active("dp.distributed.contributors"));
        form.set("secure_aggregation", "false");
        let errors = form.to_config().unwrap_err();
        assert_eq!(errors[0].field, "dp.distributed");
        assert!(errors[0].expected.contains("without secure aggregation"));
        form.set("dp.distributed", "false");
        assert!(!form.is_active("dp.distributed.contributors"));
    }

    #[test]
    fn the_task_select_lists_the_servers_registry_and_sends_the_chosen_id() {
        let registry = vec![
            TaskInfo {
                id: "mnist".into(),
                name: "MNIST".into(),
                description: "handwritten digits".into(),
                classes: vec![],
                model_params: 12_810,
                model_signature: "0".repeat(16),
                data: true,
            },
            TaskInfo {
                id: "fashion-mnist".into(),
                name: "Fashion-MNIST".into(),
                description: "clothing".into(),
                classes: vec![],
                model_params: 12_810,
                model_signature: "0".repeat(16),
                data: false,
            },
        ];
        let options = task_options(&registry, "mnist");
        assert_eq!(
            options,
            [
                ("mnist".into(), "MNIST".into()),
                (
                    "fashion-mnist".into(),
                    "Fashion-MNIST — no data here".into()
                ),
            ]
        );
        assert_eq!(
            task_help(&registry, "mnist"),
            "handwritten digits; this server holds its data (shards and the test set)"
        );
        assert!(
            task_help(&registry, "fashion-mnist")
                .starts_with("clothing; this server does not hold its data")
        );
        assert_eq!(task_help(&[], "mnist"), fields::TASK.expected());
        // Before the registry arrives the select still shows the form's task, and only it.
        assert_eq!(
            task_options(&[], "mnist"),
            [("mnist".into(), "mnist".into())]
        );
        let mut form = RunForm::default();
        assert_eq!(form.get("task"), "mnist");
        form.set("task", "fashion-mnist");
        assert_eq!(form.to_config().unwrap().task, "fashion-mnist");
        // A task the form's own check cannot know is the server's to refuse (its 422 names
        // the registry); the form only checks its form.
        form.set("task", "Not A Task!");
        assert_eq!(form.to_config().unwrap_err()[0].field, "task");
    }

    #[test]
    fn text_that_is_not_a_number_is_named_per_field() {
        let mut form = RunForm::default();
        form.set("rounds", "three");
        form.set("dp.target_epsilon", "");
        let errors = form.to_json().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rounds", "dp.target_epsilon"]);
        assert!(errors[0].to_string().contains("three"), "{}", errors[0]);
        assert_eq!(errors[1].value, "empty");
    }

    #[test]
    fn every_bad_input_gets_the_servers_words_at_once() {
        let mut form = RunForm::default();
        form.set("rounds", "0");
        form.set("min_clients", "-1");
        form.set("local_epochs", "1e9");
        form.set("dp.delta", "2");
        let said: Vec<String> = form
            .to_config()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            said,
            [
                "Rounds is 0: expected a whole number from 1 to 10\u{a0}000",
                "Min clients is -1: expected a whole number from 1 to 10\u{a0}000",
                "Local epochs is 1e9: expected a whole number from 1 to 100",
                "δ is 2: expected a number above 0 and at most 0.01 (and below 1 / examples per client, e.g. 1e-5)",
            ]
        );
        // What the server says about the same config is word for word the same.
        let config = RunConfig {
            rounds: 0,
            ..RunConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().to_string(), said[0]);
        // The help under each input starts with the same range.
        let rounds = FIELDS.iter().find(|f| f.path == "rounds").unwrap();
        assert!(
            rounds
                .help()
                .starts_with("a whole number from 1 to 10\u{a0}000; ")
        );
    }

    #[test]
    fn rules_that_join_fields_come_from_the_servers_check() {
        let mut form = RunForm::default();
        form.set("aggregator.kind", "multi_krum");
        form.set("aggregator.byzantine", "2");
        let e = form.to_config().unwrap_err();
        assert_eq!(e[0].field, "aggregator.byzantine");
        assert!(
            e[0].to_string()
                .starts_with("Hostile clients f is 2: expected at most 0 while Min clients is 2"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn only_the_inputs_of_the_chosen_options_are_active() {
        let mut form = RunForm::default();
        assert!(form.is_active("batching.batch_size"));
        assert!(!form.is_active("batching.sample_rate"));
        assert!(form.is_active("optimizer.momentum") && !form.is_active("optimizer.beta1"));
        assert!(form.is_active("dp.target_epsilon") && !form.is_active("dp.noise_multiplier"));
        assert!(!form.is_active("shards.scheme.alpha"));
        form.set("dp", "false");
        assert!(!form.is_active("dp.delta") && form.is_active("dp"));
        form.set("shards.scheme.kind", "dirichlet");
        assert!(form.is_active("shards.scheme.alpha"));
        assert!(!form.is_active("aggregator.trim") && form.is_active("aggregator.kind"));
        form.set("aggregator.kind", "multi_krum");
        assert!(form.is_active("aggregator.byzantine") && !form.is_active("aggregator.bound"));
        // f = 1 needs 5 clients; the demo waits for 2: named, on the field.
        assert_eq!(
            form.to_config().unwrap_err()[0].field,
            "aggregator.byzantine"
        );
        form.set("aggregator.kind", "median");
        form.set("no.such.field", "1");
        assert_eq!(form.get("no.such.field"), "");
        // Inactive inputs are not checked: a hidden bad value does not block the run.
        form.set("dp.delta", "junk");
        assert!(form.to_config().is_ok());
    }
}
