//! The admin page's run config form as plain data: one text value per input, keyed by the JSON
//! path the admin API names in its errors (`dp.target_epsilon`), so a message from the local
//! check or from the server lands next to the same input.
//!
//! Validation is [`RunConfig::from_json`] itself (the server's check, compiled into the page);
//! the form adds only what a text box needs: "abc" is not a number.

use std::collections::BTreeMap;

use protocol::admin::{AggregatorConfig, FieldError, RunConfig};
use protocol::config::{Batching, Optimizer, ShardScheme};
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
}

/// One input of the form.
#[derive(Debug, Clone, Copy)]
pub struct FormField {
    /// JSON path (the admin API's field name), or a selector such as `batching`.
    pub path: &'static str,
    pub label: &'static str,
    pub kind: FieldKind,
    pub help: &'static str,
}

const fn f(
    path: &'static str,
    label: &'static str,
    kind: FieldKind,
    help: &'static str,
) -> FormField {
    FormField {
        path,
        label,
        kind,
        help,
    }
}

use FieldKind::*;

/// Every field of the admin API's run config, in display order.
pub const FIELDS: &[FormField] = &[
    f("name", "Name", Text, "shown in the run list"),
    f(
        "rounds",
        "Rounds",
        Integer,
        "1–10 000; the run may end earlier when the privacy budget is spent",
    ),
    f(
        "min_clients",
        "Min clients",
        Integer,
        "a round starts when this many clients are connected",
    ),
    f(
        "fraction_train",
        "Fraction trained",
        Number,
        "fraction of connected clients sampled per round, (0, 1]",
    ),
    f(
        "quorum",
        "Quorum",
        Number,
        "fraction of sampled clients that must answer by the deadline, (0, 1]",
    ),
    f(
        "round_timeout_secs",
        "Round timeout (s)",
        Integer,
        "1–86 400",
    ),
    f(
        "accept_failures",
        "Accept failures",
        Bool,
        "aggregate a round even if some clients failed",
    ),
    f(
        "fraction_evaluate",
        "Fraction evaluating",
        Number,
        "clients asked to evaluate on their own data, [0, 1]",
    ),
    f("local_epochs", "Local epochs", Integer, "1–100"),
    f(
        "batching",
        "Batching",
        Choice(&["batch_size", "sample_rate"]),
        "expected batch size, or Poisson sample rate q",
    ),
    f(
        "batching.batch_size",
        "Batch size",
        Integer,
        "expected examples per step (q = B / shard size)",
    ),
    f("batching.sample_rate", "Sample rate q", Number, "(0, 1]"),
    f("learning_rate", "Learning rate", Number, "> 0"),
    f("optimizer.kind", "Optimizer", Choice(&["sgd", "adam"]), ""),
    f("optimizer.momentum", "Momentum", Number, "[0, 1)"),
    f("optimizer.beta1", "Adam β1", Number, "[0, 1)"),
    f("optimizer.beta2", "Adam β2", Number, "[0, 1)"),
    f(
        "optimizer.epsilon",
        "Adam ε",
        Number,
        "> 0 (numerical, not privacy)",
    ),
    f(
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
    f(
        "aggregator.bound",
        "Norm bound",
        Number,
        "each update is clipped to this L2 norm; empty: the round's median norm",
    ),
    f(
        "aggregator.trim",
        "Trimmed fraction",
        Number,
        "[0, 0.5): dropped at each end of every coordinate",
    ),
    f(
        "aggregator.byzantine",
        "Hostile clients f",
        Integer,
        "tolerated; needs min clients ≥ 2f + 3",
    ),
    f(
        "aggregator.keep",
        "Updates averaged",
        Integer,
        "best-scored updates kept; empty: n − f",
    ),
    f("dp", "Differential privacy", Bool, "DP-SGD on every client"),
    f(
        "dp.max_grad_norm",
        "Clipping norm C",
        Number,
        "per-example gradients are clipped to this L2 norm",
    ),
    f(
        "dp.delta",
        "δ",
        Number,
        "(0, 0.01], below 1/(examples per client), e.g. 1e-5",
    ),
    f(
        "dp.budget",
        "Noise from",
        Choice(&["target_epsilon", "noise_multiplier"]),
        "solve σ from a target ε, or set σ",
    ),
    f(
        "dp.target_epsilon",
        "Target ε",
        Number,
        "each client stops before its ε passes this",
    ),
    f("dp.noise_multiplier", "Noise multiplier σ", Number, "> 0"),
    f(
        "shards",
        "Server MNIST shards",
        Bool,
        "off: clients bring their own data",
    ),
    f(
        "shards.scheme.kind",
        "Split",
        Choice(&["iid", "dirichlet"]),
        "IID, or label skew Dirichlet(α)",
    ),
    f(
        "shards.scheme.alpha",
        "Dirichlet α",
        Number,
        "> 0; small α gives each client few classes",
    ),
    f(
        "shards.num_shards",
        "Shards",
        Integer,
        "1–10 000 (one per client)",
    ),
    f(
        "shards.seed",
        "Split seed",
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
        if prefix("dp.") {
            if !self.on("dp") {
                return false;
            }
            return match path {
                "dp.target_epsilon" | "dp.noise_multiplier" => {
                    path == format!("dp.{}", self.get("dp.budget"))
                }
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
        let mut num = |path: &'static str, integer: bool| -> Value {
            let text = self.get(path).trim();
            let parsed = if integer {
                text.parse::<u64>().ok().map(Value::from)
            } else {
                text.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .map(Value::from)
            };
            parsed.unwrap_or_else(|| {
                errors.push(FieldError {
                    field: path.into(),
                    value: if text.is_empty() {
                        "empty".into()
                    } else {
                        text.into()
                    },
                    expected: if integer {
                        "a whole number ≥ 0"
                    } else {
                        "a number"
                    }
                    .into(),
                });
                Value::Null
            })
        };
        let mut body = Map::new();
        body.insert("name".into(), self.get("name").into());
        for path in [
            "rounds",
            "min_clients",
            "round_timeout_secs",
            "local_epochs",
        ] {
            body.insert(path.into(), num(path, true));
        }
        for path in [
            "fraction_train",
            "quorum",
            "fraction_evaluate",
            "learning_rate",
        ] {
            body.insert(path.into(), num(path, false));
        }
        body.insert("accept_failures".into(), self.on("accept_failures").into());
        body.insert(
            "batching".into(),
            if self.get("batching") == "sample_rate" {
                json!({ "sample_rate": num("batching.sample_rate", false) })
            } else {
                json!({ "batch_size": num("batching.batch_size", true) })
            },
        );
        body.insert(
            "optimizer".into(),
            if self.get("optimizer.kind") == "adam" {
                json!({
                    "kind": "adam",
                    "beta1": num("optimizer.beta1", false),
                    "beta2": num("optimizer.beta2", false),
                    "epsilon": num("optimizer.epsilon", false),
                })
            } else {
                json!({ "kind": "sgd", "momentum": num("optimizer.momentum", false) })
            },
        );
        // Empty optional inputs mean "none" (the median norm, n − f).
        let mut optional = |path: &'static str, integer: bool| -> Value {
            if self.get(path).trim().is_empty() {
                Value::Null
            } else {
                num(path, integer)
            }
        };
        let kind = self.get("aggregator.kind");
        body.insert(
            "aggregator".into(),
            match kind {
                "norm_bound" => {
                    json!({ "kind": kind, "bound": optional("aggregator.bound", false) })
                }
                "trimmed_mean" => {
                    json!({ "kind": kind, "trim": optional("aggregator.trim", false) })
                }
                "multi_krum" => json!({
                    "kind": kind,
                    "byzantine": optional("aggregator.byzantine", true),
                    "keep": optional("aggregator.keep", true),
                }),
                _ => json!({ "kind": kind }),
            },
        );
        let dp = if self.on("dp") {
            let mut dp = json!({
                "max_grad_norm": num("dp.max_grad_norm", false),
                "delta": num("dp.delta", false),
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
            dp[budget] = num(path, false);
            dp
        } else {
            Value::Null
        };
        body.insert("dp".into(), dp);
        let shards = if self.on("shards") {
            let scheme = if self.get("shards.scheme.kind") == "dirichlet" {
                json!({ "kind": "dirichlet", "alpha": num("shards.scheme.alpha", false) })
            } else {
                json!({ "kind": "iid" })
            };
            json!({
                "scheme": scheme,
                "num_shards": num("shards.num_shards", true),
                "seed": num("shards.seed", true),
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

/// What the DP inputs show while DP is off: the demo's settings.
fn default_dp() -> protocol::admin::DpRunConfig {
    let demo = RunConfig::default().dp;
    demo.unwrap_or(protocol::admin::DpRunConfig {
        max_grad_norm: 1.0,
        noise_multiplier: Some(1.0),
        target_epsilon: None,
        delta: 1e-5,
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
    fn range_errors_come_from_the_servers_own_check() {
        let mut form = RunForm::default();
        form.set("rounds", "0");
        let e = form.to_config().unwrap_err();
        assert_eq!(e[0].field, "rounds");
        assert_eq!(e[0].expected, "an integer in 1..=10000");
        let mut form = RunForm::default();
        form.set("dp.delta", "2");
        assert_eq!(form.to_config().unwrap_err()[0].field, "dp.delta");
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
