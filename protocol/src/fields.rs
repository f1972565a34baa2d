//! What each run-config field is called and what it accepts, said once. The server's check and
//! its 422, the admin form's own check, its labels and its help text all read these, so a user
//! sees one name and one range per field wherever the message comes from ("Rounds is 0: expected
//! a whole number from 1 to 10 000"), never a JSON path or a Rust range.

use serde::{Deserialize, Serialize};

/// A config field out of range: the field's JSON path (for programs: the form puts the message
/// next to that input), its label (for people), the value given and what the field accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{label} is {value}: expected {expected}")]
pub struct FieldError {
    pub field: String,
    /// The label the admin form shows for the field.
    #[serde(default)]
    pub label: String,
    pub value: String,
    pub expected: String,
}

impl FieldError {
    /// An error about something that is not one input (the request body, the data split).
    pub fn other(field: &str, label: &str, value: impl ToString, expected: &str) -> Self {
        Self {
            field: field.into(),
            label: label.into(),
            value: crate::clip(&value.to_string(), 100),
            expected: expected.into(),
        }
    }
}

/// One end of a number range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Including(f64),
    Excluding(f64),
    Unbounded,
}

/// What a field accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accepts {
    /// A whole number in `min..=max`.
    Whole { min: u64, max: u64 },
    /// A finite number between the two limits.
    Number { low: Limit, high: Limit },
    /// Text, described in words (checked by the config's own code).
    Text(&'static str),
}

/// One field of the run config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// JSON path in the run config (`dp.delta`).
    pub path: &'static str,
    /// What the admin form calls it.
    pub label: &'static str,
    pub accepts: Accepts,
    /// Said after the range, e.g. a typical value; empty for none.
    pub note: &'static str,
}

/// `12345` as "12 345" (a no-break space): ranges are read by people.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            // No-break: a range is not split across lines ("1 000 | 000").
            out.push('\u{a0}');
        }
        out.push(c);
    }
    out
}

fn shown(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        let sign = if x < 0.0 { "−" } else { "" };
        format!("{sign}{}", grouped(x.abs() as u64))
    } else {
        x.to_string()
    }
}

impl Accepts {
    /// The range in words: "a whole number from 1 to 10 000", "a number above 0 and at most 1".
    pub fn describe(&self) -> String {
        use Limit::*;
        match *self {
            Self::Whole { min, max: u64::MAX } => {
                format!("a whole number, {} or more", grouped(min))
            }
            Self::Whole { min, max } => {
                format!("a whole number from {} to {}", grouped(min), grouped(max))
            }
            Self::Number { low, high } => {
                let low = match low {
                    Including(a) => Some(format!("at least {}", shown(a))),
                    Excluding(a) => Some(format!("above {}", shown(a))),
                    Unbounded => None,
                };
                let high = match high {
                    Including(b) => Some(format!("at most {}", shown(b))),
                    Excluding(b) => Some(format!("below {}", shown(b))),
                    Unbounded => None,
                };
                match (low, high) {
                    (Some(l), Some(h)) => format!("a number {l} and {h}"),
                    (Some(one), None) | (None, Some(one)) => format!("a number {one}"),
                    (None, None) => "a number".into(),
                }
            }
            Self::Text(words) => words.into(),
        }
    }

    fn contains(&self, x: f64) -> bool {
        let above = |l: Limit| match l {
            Limit::Including(a) => x >= a,
            Limit::Excluding(a) => x > a,
            Limit::Unbounded => true,
        };
        let below = |h: Limit| match h {
            Limit::Including(b) => x <= b,
            Limit::Excluding(b) => x < b,
            Limit::Unbounded => true,
        };
        match *self {
            Self::Whole { min, max } => x.fract() == 0.0 && x >= min as f64 && x <= max as f64,
            Self::Number { low, high } => x.is_finite() && above(low) && below(high),
            Self::Text(_) => false,
        }
    }
}

impl Field {
    /// What the field accepts, in the words of every message and of the form's help.
    pub fn expected(&self) -> String {
        let range = self.accepts.describe();
        if self.note.is_empty() {
            range
        } else {
            format!("{range} ({})", self.note)
        }
    }

    /// `value` is not what this field accepts.
    pub fn error(&self, value: impl ToString) -> FieldError {
        self.error_because(value, self.expected())
    }

    /// `value` breaks a rule that joins this field with another (said in `expected`).
    pub fn error_because(&self, value: impl ToString, expected: String) -> FieldError {
        FieldError {
            field: self.path.into(),
            label: self.label.into(),
            value: crate::clip(&value.to_string(), 100),
            expected,
        }
    }

    /// Checks a number the config holds.
    pub fn check(&self, value: impl Into<f64> + ToString + Copy) -> Result<(), FieldError> {
        if self.accepts.contains(value.into()) {
            Ok(())
        } else {
            Err(self.error(value))
        }
    }

    /// Checks a whole number the config holds (exactly: a `u64` seed has no `f64` image).
    pub fn check_whole(&self, value: u64) -> Result<(), FieldError> {
        match self.accepts {
            Accepts::Whole { min, max } if (min..=max).contains(&value) => Ok(()),
            _ => Err(self.error(value)),
        }
    }

    /// A form's text for this field as a JSON number, or the field's one message. "1e3" is a
    /// whole number; "-1", "0.5" and "three" get the same message as "0" for a count.
    pub fn parse(&self, text: &str) -> Result<serde_json::Value, FieldError> {
        let text = text.trim();
        let shown = if text.is_empty() { "empty" } else { text };
        match self.accepts {
            Accepts::Whole { min, max } => {
                let exact = text.parse::<u64>().ok();
                let via_float = || {
                    let x = text.parse::<f64>().ok()?;
                    (x.fract() == 0.0 && x >= 0.0 && x < 2f64.powi(53)).then_some(x as u64)
                };
                match exact.or_else(via_float) {
                    Some(n) if (min..=max).contains(&n) => Ok(n.into()),
                    _ => Err(self.error(shown)),
                }
            }
            Accepts::Number { .. } => match text.parse::<f64>() {
                Ok(x) if self.accepts.contains(x) => Ok(x.into()),
                _ => Err(self.error(shown)),
            },
            Accepts::Text(_) => Ok(text.into()),
        }
    }
}

use Limit::{Excluding, Including, Unbounded};

const fn whole(path: &'static str, label: &'static str, min: u64, max: u64) -> Field {
    Field {
        path,
        label,
        accepts: Accepts::Whole { min, max },
        note: "",
    }
}

const fn number(path: &'static str, label: &'static str, low: Limit, high: Limit) -> Field {
    Field {
        path,
        label,
        accepts: Accepts::Number { low, high },
        note: "",
    }
}

const fn noted(field: Field, note: &'static str) -> Field {
    Field { note, ..field }
}

/// A choice (select box or checkbox): the range is the choices, said in words.
const fn choice(path: &'static str, label: &'static str, choices: &'static str) -> Field {
    Field {
        path,
        label,
        accepts: Accepts::Text(choices),
        note: "",
    }
}

pub const BATCHING: Field = choice("batching", "Batching", "a batch size or a sample rate");
pub const SHARDS: Field = choice(
    "shards",
    "Server shards",
    "on (the server splits the task's training set) or off (clients bring their own data)",
);
pub const TASK: Field = choice(
    "task",
    "Task",
    "a task this server knows (GET /api/tasks lists them), e.g. mnist or fashion-mnist",
);
/// Not a field: what a request body that is no config at all is called.
pub const BODY: Field = choice("body", "The request body", "a JSON object, e.g. {}");

pub const NAME: Field = Field {
    path: "name",
    label: "Name",
    accepts: Accepts::Text("1 to 100 printable characters, without < or >"),
    note: "",
};
pub const ROUNDS: Field = whole("rounds", "Rounds", 1, super::admin::MAX_ROUNDS as u64);
pub const MIN_CLIENTS: Field = whole(
    "min_clients",
    "Min clients",
    1,
    super::admin::MAX_MIN_CLIENTS as u64,
);
pub const FRACTION_TRAIN: Field = number(
    "fraction_train",
    "Fraction trained",
    Excluding(0.0),
    Including(1.0),
);
pub const QUORUM: Field = number("quorum", "Quorum", Excluding(0.0), Including(1.0));
pub const ROUND_TIMEOUT: Field = whole(
    "round_timeout_secs",
    "Round timeout (s)",
    1,
    super::admin::MAX_ROUND_TIMEOUT_SECS,
);
pub const FRACTION_EVALUATE: Field = number(
    "fraction_evaluate",
    "Fraction evaluating",
    Including(0.0),
    Including(1.0),
);
pub const LOCAL_EPOCHS: Field = whole(
    "local_epochs",
    "Local epochs",
    1,
    super::admin::MAX_LOCAL_EPOCHS as u64,
);
pub const BATCH_SIZE: Field = noted(
    whole(
        "batching.batch_size",
        "Batch size",
        1,
        super::admin::MAX_BATCH_SIZE as u64,
    ),
    "at most the examples of one shard",
);
pub const SAMPLE_RATE: Field = number(
    "batching.sample_rate",
    "Sample rate q",
    Excluding(0.0),
    Including(1.0),
);
pub const LEARNING_RATE: Field = number(
    "learning_rate",
    "Learning rate",
    Excluding(0.0),
    Including(super::admin::MAX_LEARNING_RATE as f64),
);
pub const MOMENTUM: Field = number(
    "optimizer.momentum",
    "Momentum",
    Including(0.0),
    Excluding(1.0),
);
pub const BETA1: Field = number("optimizer.beta1", "Adam β1", Including(0.0), Excluding(1.0));
pub const BETA2: Field = number("optimizer.beta2", "Adam β2", Including(0.0), Excluding(1.0));
pub const ADAM_EPSILON: Field = noted(
    number("optimizer.epsilon", "Adam ε", Excluding(0.0), Unbounded),
    "numerical, not privacy",
);
pub const NORM_BOUND: Field = noted(
    number(
        "aggregator.bound",
        "Norm bound",
        Excluding(0.0),
        Including(super::admin::MAX_NORM_BOUND as f64),
    ),
    "empty: the round's median norm",
);
pub const TRIM: Field = number(
    "aggregator.trim",
    "Trimmed fraction",
    Including(0.0),
    Excluding(0.5),
);
pub const BYZANTINE: Field = noted(
    whole(
        "aggregator.byzantine",
        "Hostile clients f",
        0,
        (super::admin::MAX_MIN_CLIENTS as u64 - 3) / 2,
    ),
    "Min clients must be at least 2f + 3",
);
pub const KEEP: Field = noted(
    whole(
        "aggregator.keep",
        "Updates averaged",
        1,
        super::admin::MAX_BUFFERED_UPDATES as u64,
    ),
    "empty: n − f",
);
pub const CLIPPING_NORM: Field = number(
    "dp.max_grad_norm",
    "Clipping norm C",
    Excluding(0.0),
    Including(super::admin::MAX_GRAD_NORM as f64),
);
pub const DELTA: Field = noted(
    number(
        "dp.delta",
        "δ",
        Excluding(0.0),
        Including(super::admin::MAX_DELTA),
    ),
    "and below 1 / examples per client, e.g. 1e-5",
);
pub const TARGET_EPSILON: Field = number(
    "dp.target_epsilon",
    "Target ε",
    Excluding(0.0),
    Including(super::admin::MAX_TARGET_EPSILON),
);
/// The limits of `admin::NOISE_MULTIPLIER_RANGE`, written as the decimals people type (the f32
/// 0.05 is 0.0500000007…; a test checks the two agree).
pub const NOISE_MULTIPLIER: Field = number(
    "dp.noise_multiplier",
    "Noise multiplier σ",
    Including(0.05),
    Including(1.0e4),
);
pub const DISTRIBUTED: Field = choice(
    "dp.distributed",
    "Distributed DP",
    "on (each client adds a share of one noise; needs secure aggregation) or off",
);
pub const DISTRIBUTED_SCALE: Field = noted(
    number(
        "dp.distributed.scale",
        "Integer scale S",
        Including(1.0),
        Including(crate::config::MAX_SCALE),
    ),
    "units per clipping norm, e.g. 1 000",
);
pub const DISTRIBUTED_BETA: Field = noted(
    number(
        "dp.distributed.beta",
        "Rounding β",
        Including(0.0),
        Excluding(1.0),
    ),
    "e.g. 0.6065 (e^−0.5); 0: plain rounding",
);
pub const DISTRIBUTED_CONTRIBUTORS: Field = noted(
    whole(
        "dp.distributed.contributors",
        "Honest contributors t",
        1,
        crate::config::MAX_CONTRIBUTORS as u64,
    ),
    "each client adds 1/t of the noise's variance; at most Neighbours + 1; a round with fewer is not unmasked",
);
pub const EVALUATE_EVERY: Field = noted(
    whole(
        "dp.distributed.evaluate_every",
        "Evaluate every",
        1,
        super::admin::MAX_ROUNDS as u64,
    ),
    "rounds (and the last)",
);
pub const LR_SCHEDULE: Field = choice(
    "dp.distributed.schedule",
    "Learning-rate schedule",
    "constant or cosine",
);
pub const NUM_SHARDS: Field = whole(
    "shards.num_shards",
    "Shards",
    1,
    super::admin::MAX_SHARDS as u64,
);
pub const ALPHA: Field = noted(
    number(
        "shards.scheme.alpha",
        "Dirichlet α",
        Excluding(0.0),
        Unbounded,
    ),
    "e.g. 0.5",
);
pub const SEED: Field = whole("shards.seed", "Split seed", 0, u64::MAX);

pub const SECURE_AGGREGATION: Field = choice(
    "secure_aggregation",
    "Secure aggregation",
    "on (the server sees only the sum of the updates) or off",
);
pub const SECAGG_NEIGHBOURS: Field = noted(
    whole(
        "secure_aggregation.neighbours",
        "Neighbours",
        2,
        crate::secagg::MAX_NEIGHBOURS as u64,
    ),
    "a round of at most this + 1 clients: everyone",
);
pub const SECAGG_THRESHOLD: Field = noted(
    number(
        "secure_aggregation.threshold",
        "Unmask threshold",
        Excluding(0.5),
        Including(1.0),
    ),
    "of each client's share holders",
);
pub const SECAGG_THRESHOLD_COUNT: Field = noted(
    whole(
        "secure_aggregation.threshold_count",
        "Unmask threshold (count)",
        1,
        crate::secagg::MAX_NEIGHBOURS as u64 + 1,
    ),
    "holders, instead of the fraction; raised to a strict majority",
);
pub const SECAGG_CLIP: Field = number(
    "secure_aggregation.clip",
    "Encoding clip",
    Excluding(0.0),
    Including(1.0e4),
);
pub const SECAGG_LEVELS: Field = whole("secure_aggregation.levels", "Encoding levels", 2, 1 << 30);
pub const SECAGG_MAX_WEIGHT: Field = whole(
    "secure_aggregation.max_weight",
    "Full-weight examples",
    1,
    crate::messages::MAX_NUM_EXAMPLES,
);

/// Every field with a value of its own, for lookups by JSON path.
pub const ALL: &[Field] = &[
    BATCHING,
    SHARDS,
    NAME,
    ROUNDS,
    MIN_CLIENTS,
    FRACTION_TRAIN,
    QUORUM,
    ROUND_TIMEOUT,
    FRACTION_EVALUATE,
    LOCAL_EPOCHS,
    BATCH_SIZE,
    SAMPLE_RATE,
    LEARNING_RATE,
    MOMENTUM,
    BETA1,
    BETA2,
    ADAM_EPSILON,
    NORM_BOUND,
    TRIM,
    BYZANTINE,
    KEEP,
    CLIPPING_NORM,
    DELTA,
    TARGET_EPSILON,
    NOISE_MULTIPLIER,
    NUM_SHARDS,
    ALPHA,
    SEED,
    DISTRIBUTED,
    DISTRIBUTED_SCALE,
    DISTRIBUTED_BETA,
    DISTRIBUTED_CONTRIBUTORS,
    EVALUATE_EVERY,
    LR_SCHEDULE,
    SECURE_AGGREGATION,
    SECAGG_NEIGHBOURS,
    SECAGG_THRESHOLD,
    SECAGG_THRESHOLD_COUNT,
    SECAGG_CLIP,
    SECAGG_LEVELS,
    SECAGG_MAX_WEIGHT,
];

/// The field at a JSON path.
pub fn at(path: &str) -> Option<&'static Field> {
    ALL.iter().find(|f| f.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_words() {
        assert_eq!(ROUNDS.expected(), "a whole number from 1 to 10\u{a0}000");
        assert_eq!(QUORUM.expected(), "a number above 0 and at most 1");
        assert_eq!(
            FRACTION_EVALUATE.expected(),
            "a number at least 0 and at most 1"
        );
        assert_eq!(MOMENTUM.expected(), "a number at least 0 and below 1");
        assert_eq!(ALPHA.expected(), "a number above 0 (e.g. 0.5)");
        assert_eq!(SEED.expected(), "a whole number, 0 or more");
        assert_eq!(
            DELTA.expected(),
            "a number above 0 and at most 0.01 (and below 1 / examples per client, e.g. 1e-5)"
        );
    }

    #[test]
    fn a_count_gets_one_message_whatever_is_wrong() {
        let said = |text: &str| ROUNDS.parse(text).unwrap_err().to_string();
        for bad in ["0", "-1", "0.5", "three", "1e9", "99999999999999999999"] {
            assert_eq!(
                said(bad),
                format!("Rounds is {bad}: expected a whole number from 1 to 10\u{a0}000"),
            );
        }
        assert_eq!(
            said(" "),
            "Rounds is empty: expected a whole number from 1 to 10\u{a0}000"
        );
        assert_eq!(ROUNDS.parse("1e3").unwrap(), serde_json::json!(1000));
        assert_eq!(
            SEED.parse("18446744073709551615").unwrap(),
            serde_json::json!(u64::MAX)
        );
    }

    #[test]
    fn numbers_keep_their_open_and_closed_ends() {
        assert!(QUORUM.parse("0").is_err() && QUORUM.parse("1").is_ok());
        assert!(MOMENTUM.parse("0").is_ok() && MOMENTUM.parse("1").is_err());
        assert!(ALPHA.parse("inf").is_err() && ALPHA.parse("NaN").is_err());
        assert!(DELTA.check(2.0).is_err() && DELTA.check(1e-5).is_ok());
        // σ's limits are typed as f64 decimals: "0.05" is accepted, by the form and the server.
        assert!(NOISE_MULTIPLIER.parse("0.05").is_ok() && NOISE_MULTIPLIER.check(0.05f32).is_ok());
        assert!(NOISE_MULTIPLIER.check(0.049f32).is_err());
        assert_eq!(
            NOISE_MULTIPLIER.expected(),
            "a number at least 0.05 and at most 10\u{a0}000"
        );
        let (low, high) = super::super::admin::NOISE_MULTIPLIER_RANGE;
        assert_eq!((0.05f32, 1.0e4f32), (low, high));
        assert_eq!(shown(-3.0), "−3");
    }

    #[test]
    fn every_path_is_named_once() {
        for (i, f) in ALL.iter().enumerate() {
            assert!(
                ALL[..i].iter().all(|g| g.path != f.path),
                "{} twice",
                f.path
            );
            assert_eq!(at(f.path), Some(f));
        }
    }
}
