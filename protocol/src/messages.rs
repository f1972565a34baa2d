//! Control messages: small serde-tagged JSON objects in WebSocket text frames. Parameters never
//! travel here; a message that announces parameters (`TrainIns`, `TrainRes`, `EvaluateIns`) is
//! followed by exactly one binary [`TensorFrame`](crate::frame::TensorFrame) of the same round.
//!
//! ```text
//! client                                   server
//!   Hello{version, caps, client_key?}  ─▶
//!                                      ◀─  Welcome{client_id, client_key}
//!                                      ◀─  Assignment{run, shard URLs, histogram} (when a run exists)
//!                                      ◀─  TrainIns{round, config} + GlobalModel frame
//!   TrainRes{round, n, metrics} + Update frame ─▶      (or TrainFailed{round, reason})
//!                                      ◀─  EvaluateIns{round} + GlobalModel frame (optional)
//!   EvaluateRes{round, loss, accuracy} ─▶
//!                                      ◀─  RoundClosed{round, accuracy, loss, ε}
//!                                      ◀─  Error{code, message} (any time; the socket stays open
//!                                          unless the code says otherwise)
//! ```

use serde::{Deserialize, Serialize};

use crate::config::{MAX_STEPS_PER_ROUND, ShardScheme, TrainConfig};
use crate::secagg::{
    ENVELOPE_BYTES, Envelope, MAX_NEIGHBOURS, MemberKeys, PeerKeys, Reveal, SHARE_BYTES,
    SecAggSetup, SharedKeys, UnmaskRequest,
};

/// Largest control message accepted, in bytes (checked before parsing). The biggest legitimate
/// ones are secure aggregation's relays: 200 neighbours' envelopes, ≈ 55 KiB.
pub const MAX_CONTROL_BYTES: usize = 64 * 1024;
/// Longest free-text field (reasons, names) a peer may send; longer ones are refused.
pub const MAX_TEXT_FIELD: usize = 1024;
/// Most examples a client may declare (FedAvg's weight): 10 million, far above a device's data.
/// Without a bound one client declaring 10¹² examples *is* the global model, and 2⁶⁴ − 18 000
/// wrapped the total weight to 0.
pub const MAX_NUM_EXAMPLES: u64 = 10_000_000;

/// What a client says about itself in `Hello`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Free-form name shown on the dashboard ("chromium tab", "sim-3").
    #[serde(default)]
    pub name: String,
    /// `Some` when the client trains on its own data instead of a shard the server hands out.
    #[serde(default)]
    pub own_data: Option<OwnData>,
    /// The client's own ε cap: it will refuse rounds past it whatever the server asks. The
    /// server does not sample a client whose next round would cross it.
    #[serde(default)]
    pub epsilon_cap: Option<f64>,
    /// The δ this client states its ε (and its cap) at; `None` = the run's δ.
    #[serde(default)]
    pub delta: Option<f64>,
    /// Whether the client answers `EvaluateIns`.
    #[serde(default)]
    pub can_evaluate: bool,
    /// The client sends no update in the clear: it refuses a round without secure
    /// aggregation, whatever the server asks (and the server does not sample it for one).
    #[serde(default)]
    pub require_secure_aggregation: bool,
}

/// A client that brings its own data tells its size: FedAvg's weight and the sample rate's
/// denominator. It is released as is (the README names it); nothing else about the data is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnData {
    pub num_examples: u64,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message on every connection.
    Hello {
        protocol_version: u16,
        /// The key from an earlier `Welcome`: the server gives back the same identity, shard and
        /// privacy ledger (a tab that reconnects, a simulator after a server restart).
        #[serde(default)]
        client_key: Option<String>,
        #[serde(default)]
        capabilities: Capabilities,
    },
    /// Local training done; the `Update` frame of the same round follows. Only numbers the
    /// server already knows ride along: no training loss, accuracy or clipped fraction (they are
    /// about the private examples and not noised), and not the client's ε (its ledger spans
    /// earlier runs and keys on the same records: the exact number would link them).
    TrainRes {
        server_round: u64,
        /// The data size the client declared (or its shard's): FedAvg's weight.
        num_examples: u64,
        /// DP-SGD steps taken this round (the config fixes it: ⌈1/q⌉ × epochs).
        steps: u64,
    },
    /// Local training refused or failed (budget cap reached, diverged, no data).
    TrainFailed {
        server_round: u64,
        reason: String,
        /// Every further round of this run would be refused too (the client's own budget is
        /// spent, or the run asks what it never does): the server stops sampling it.
        #[serde(default)]
        refuses_run: bool,
    },
    /// The global model of `server_round` measured on the client's local data *with DP*:
    /// noisy counts (Gaussian, noise multiplier [`EVAL_NOISE_MULTIPLIER`]) that the client
    /// charged to its ledger.
    ///
    /// [`EVAL_NOISE_MULTIPLIER`]: crate::config::EVAL_NOISE_MULTIPLIER
    EvaluateRes {
        server_round: u64,
        num_examples: u64,
        loss: f64,
        accuracy: f64,
    },
    /// Secure aggregation, step 1: this member's public keys for the round.
    SecAggKeys { server_round: u64, keys: MemberKeys },
    /// Step 2: its encrypted shares for its neighbours, and its seed commitment.
    SecAggShares {
        server_round: u64,
        shared: SharedKeys,
    },
    /// Step 4: the shares the server asked it to reveal. (Step 3 is `TrainRes` followed by a
    /// masked frame instead of an update frame.)
    SecAggReveal { server_round: u64, reveal: Reveal },
}

/// Which learning problem a run trains, and its model: a client refuses a model it would lay
/// out differently (a page older than the server, or a task it does not know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A registered task (`learning::task`), e.g. `mnist` or `fashion-mnist`.
    pub id: String,
    /// Parameters of the task's model: the length of the model frames.
    pub model_params: u64,
    /// The model's parameter layout in 16 hex digits (`ParamLayout::signature`).
    pub model_signature: String,
}

/// Where a client's shard of the demo data set is and what is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: u64,
    /// What the shard's examples are of.
    pub task: TaskSpec,
    pub shard_index: u32,
    pub num_shards: u32,
    pub scheme: ShardScheme,
    pub num_examples: u64,
    /// Examples per class, by label.
    pub label_histogram: Vec<u32>,
    /// Paths (relative to the server's HTTP origin) of the shard as IDX files.
    pub images_path: String,
    pub labels_path: String,
}

/// Why the server refused something; the socket stays open unless `fatal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Text that is not a valid control message, or a frame where none was expected.
    BadMessage,
    /// `Hello` with another protocol version.
    UnsupportedVersion,
    /// A message before `Hello`, or a second `Hello`.
    BadSequence,
    /// An update frame that failed validation (length, NaN/Inf, size, kind).
    InvalidUpdate,
    /// A result for a round that is not the current one, or already closed.
    WrongRound,
    /// A result from a client that was not sampled for this round.
    NotSampled,
    /// A second result for the same round.
    Duplicate,
    /// Every shard of the run is taken; bring your own data or wait for the next run.
    NoShardAvailable,
    /// Something went wrong on the server's side (details are in its log).
    Internal,
    /// Another connection presented this client's key (the same tab reopened elsewhere, a
    /// duplicated tab): the older one is closed and must not reconnect as this client.
    Replaced,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        /// The same for every connection of one client key (a reloaded tab keeps its number).
        client_id: u64,
        /// Present it in a later `Hello` to be recognised.
        client_key: String,
        /// Parameters of the federated model (TinyCNN: 12 810).
        model_params: u64,
        /// A returning key: rounds of the active run it was sent (what the server charged it).
        #[serde(default)]
        rounds_taken: u64,
        /// A returning key: the round it was training in when its last connection ended (that
        /// round failed for it; nothing of it arrived).
        #[serde(default)]
        interrupted_round: Option<u64>,
    },
    Assignment(Assignment),
    /// Train on the `GlobalModel` frame of the same round that follows.
    TrainIns {
        server_round: u64,
        /// The run's task: the model frame that follows is this task's.
        task: TaskSpec,
        config: TrainConfig,
        /// Milliseconds the server waits for the result before closing the round.
        timeout_ms: u64,
    },
    /// Evaluate the `GlobalModel` frame of the same round that follows on local data.
    EvaluateIns {
        server_round: u64,
        task: TaskSpec,
    },
    /// What the active run does between this client's rounds, sent on joining and whenever it
    /// changes, so a tab can say what it waits for.
    RunState {
        run_id: u64,
        /// The run's task: a client bringing its own data learns what they must be of.
        task: TaskSpec,
        phase: RunPhase,
    },
    /// This round uses secure aggregation: the member's place and neighbours (before
    /// `TrainIns`).
    SecAggSetup(SecAggSetup),
    /// Step 1 done: the public keys of the member's neighbours still in the round.
    SecAggPeers {
        server_round: u64,
        peers: Vec<PeerKeys>,
    },
    /// Step 2 done: the envelopes addressed to the member by neighbours still in the round.
    SecAggInbox {
        server_round: u64,
        envelopes: Vec<Envelope>,
    },
    /// Step 3 done: what the member is asked to reveal.
    SecAggUnmask {
        server_round: u64,
        request: UnmaskRequest,
    },
    /// A round is over: what the server measured on the test set.
    RoundClosed {
        server_round: u64,
        /// NaN (`null`) when the round was not evaluated or the model is broken.
        #[serde(with = "crate::ledger::nan_as_null")]
        test_accuracy: f64,
        #[serde(with = "crate::ledger::nan_as_null")]
        test_loss: f64,
        participants: u64,
        /// Largest ε (server ledger) any client of the run has spent.
        epsilon: Option<f64>,
    },
    /// The run ended (all rounds done, stopped, or privacy budget exhausted).
    RunFinished {
        run_id: u64,
        reason: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The server closes the connection after a fatal error.
        fatal: bool,
    },
}

/// What a run does, as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunPhase {
    /// Rounds run (one may be in flight without this client).
    Running,
    /// The admin paused it: no new round starts until it resumes.
    Paused,
    /// Too few clients that can train now (connected, under their cap, not benched) for a
    /// round. (How many there are is not sent: it changes with every join and leave, and a
    /// message to every client on each would let a stream of hellos flood them.)
    Waiting { needed: u64 },
}

/// Why text is not a valid control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("control message is {0} bytes: expected at most {MAX_CONTROL_BYTES}")]
    TooLarge(usize),
    #[error("control message does not decode: {0}")]
    Decode(String),
    #[error("{field} is {len} characters: expected at most {MAX_TEXT_FIELD}")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("{field} is {value}: expected {expected}")]
    OutOfRange {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// `Err` naming `field` unless `ok`.
fn bound(
    ok: bool,
    field: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> Result<(), MessageError> {
    if ok {
        Ok(())
    } else {
        Err(MessageError::OutOfRange {
            field,
            value: value.to_string(),
            expected,
        })
    }
}

fn check_examples(field: &'static str, n: u64) -> Result<(), MessageError> {
    bound(
        (1..=MAX_NUM_EXAMPLES).contains(&n),
        field,
        n,
        "a whole number from 1 to 10 000 000",
    )
}

fn check_delta(field: &'static str, delta: Option<f64>) -> Result<(), MessageError> {
    match delta {
        Some(d) => bound(d > 0.0 && d < 1.0, field, d, "a number above 0 and below 1"),
        None => Ok(()),
    }
}

fn check_bytes(field: &'static str, bytes: &[u8], expected: usize) -> Result<(), MessageError> {
    bound(
        bytes.len() == expected,
        field,
        format!("{} bytes", bytes.len()),
        "the fixed size of its kind",
    )
}

fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, MessageError> {
    if text.len() > MAX_CONTROL_BYTES {
        return Err(MessageError::TooLarge(text.len()));
    }
    serde_json::from_str(text).map_err(|e| MessageError::Decode(crate::clip(&e.to_string(), 200)))
}

fn check_len(field: &'static str, s: &str) -> Result<(), MessageError> {
    let len = s.chars().count();
    if len > MAX_TEXT_FIELD {
        return Err(MessageError::FieldTooLong { field, len });
    }
    Ok(())
}

impl ClientMessage {
    /// Parses a text frame, refusing oversized input before parsing it, over-long text fields
    /// and every number out of its range: what a peer declares is bounded here, where it is
    /// decoded, before any arithmetic sees it.
    pub fn decode(text: &str) -> Result<Self, MessageError> {
        let msg: Self = decode(text)?;
        match &msg {
            Self::Hello {
                client_key,
                capabilities,
                ..
            } => {
                check_len("capabilities.name", &capabilities.name)?;
                if let Some(key) = client_key {
                    check_len("client_key", key)?;
                }
                if let Some(own) = &capabilities.own_data {
                    check_examples("capabilities.own_data.num_examples", own.num_examples)?;
                }
                if let Some(cap) = capabilities.epsilon_cap {
                    bound(
                        cap > 0.0 && cap.is_finite(),
                        "capabilities.epsilon_cap",
                        cap,
                        "a finite number above 0",
                    )?;
                }
                check_delta("capabilities.delta", capabilities.delta)?;
            }
            Self::TrainRes {
                num_examples,
                steps,
                ..
            } => {
                check_examples("num_examples", *num_examples)?;
                bound(
                    *steps <= MAX_STEPS_PER_ROUND,
                    "steps",
                    steps,
                    "at most 100000",
                )?;
            }
            Self::TrainFailed { reason, .. } => check_len("reason", reason)?,
            Self::SecAggKeys { .. } => {}
            Self::SecAggShares { shared, .. } => {
                bound(
                    shared.envelopes.len() <= MAX_NEIGHBOURS as usize,
                    "shared.envelopes",
                    shared.envelopes.len(),
                    "at most 200 envelopes (one per neighbour)",
                )?;
                for e in &shared.envelopes {
                    check_bytes("shared.envelopes.ciphertext", &e.ciphertext, ENVELOPE_BYTES)?;
                }
            }
            Self::SecAggReveal { reveal, .. } => {
                for (field, list) in [
                    ("reveal.seeds", &reveal.seeds),
                    ("reveal.masking_keys", &reveal.masking_keys),
                ] {
                    bound(
                        list.len() <= MAX_NEIGHBOURS as usize + 1,
                        field,
                        list.len(),
                        "at most 201 shares (the member and its neighbours)",
                    )?;
                    for r in list {
                        check_bytes(field, &r.share, SHARE_BYTES)?;
                    }
                }
            }
            Self::EvaluateRes {
                num_examples,
                loss,
                accuracy,
                ..
            } => {
                check_examples("num_examples", *num_examples)?;
                bound(
                    loss.is_finite() && *loss >= 0.0,
                    "loss",
                    loss,
                    "a finite number, 0 or more",
                )?;
                bound(
                    (0.0..=1.0).contains(accuracy),
                    "accuracy",
                    accuracy,
                    "a number from 0 to 1",
                )?;
            }
        }
        Ok(msg)
    }

    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ServerMessage {
    pub fn decode(text: &str) -> Result<Self, MessageError> {
        decode(text)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A refusal that keeps the connection open.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            fatal: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let hello = ClientMessage::Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            client_key: Some("abc".into()),
            capabilities: Capabilities {
                name: "sim-1".into(),
                own_data: None,
                epsilon_cap: Some(3.0),
                delta: Some(1e-6),
                can_evaluate: true,
                require_secure_aggregation: false,
            },
        };
        let text = hello.encode();
        assert!(text.contains(r#""type":"hello""#), "{text}");
        assert_eq!(ClientMessage::decode(&text).unwrap(), hello);

        let res = ClientMessage::TrainRes {
            server_round: 3,
            num_examples: 6000,
            steps: 23,
        };
        let text = res.encode();
        assert!(
            !text.contains("loss") && !text.contains("epsilon"),
            "{text}"
        );
        assert_eq!(ClientMessage::decode(&text).unwrap(), res);

        let ins = ServerMessage::TrainIns {
            server_round: 2,
            task: TaskSpec {
                id: "mnist".into(),
                model_params: 12_810,
                model_signature: "0123456789abcdef".into(),
            },
            config: TrainConfig::default(),
            timeout_ms: 1000,
        };
        assert_eq!(ServerMessage::decode(&ins.encode()).unwrap(), ins);
    }

    #[test]
    fn a_round_closed_without_a_finite_loss_still_decodes() {
        // Attack: one huge finite update made the test loss NaN; `null` on the wire then broke
        // every client's decoder.
        let closed = ServerMessage::RoundClosed {
            server_round: 1,
            test_accuracy: 0.1,
            test_loss: f64::NAN,
            participants: 3,
            epsilon: None,
        };
        let text = closed.encode();
        assert!(text.contains(r#""test_loss":null"#), "{text}");
        let ServerMessage::RoundClosed { test_loss, .. } = ServerMessage::decode(&text).unwrap()
        else {
            panic!("{text}")
        };
        assert!(test_loss.is_nan());
    }

    #[test]
    fn a_minimal_hello_decodes_with_defaults() {
        let m = ClientMessage::decode(r#"{"type":"hello","protocol_version":1}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Hello {
                client_key: None,
                ..
            }
        ));
    }

    #[test]
    fn bad_text_is_a_typed_error() {
        assert!(matches!(
            ClientMessage::decode("not json"),
            Err(MessageError::Decode(_))
        ));
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"launch_missiles"}"#),
            Err(MessageError::Decode(_))
        ));
        let big = format!(
            r#"{{"type":"hello","protocol_version":1,"x":"{}"}}"#,
            "a".repeat(MAX_CONTROL_BYTES)
        );
        assert!(matches!(
            ClientMessage::decode(&big),
            Err(MessageError::TooLarge(_))
        ));
        // Numbers a peer declares are bounded where they are decoded (the attacks of the
        // hostile-clients review: a client declaring 10¹² or 2⁶⁴ − 18 000 examples).
        for (text, field) in [
            (
                r#"{"type":"hello","protocol_version":2,"capabilities":{"own_data":{"num_examples":1000000000000}}}"#,
                "capabilities.own_data.num_examples",
            ),
            (
                r#"{"type":"hello","protocol_version":2,"capabilities":{"own_data":{"num_examples":18446744073709533616}}}"#,
                "capabilities.own_data.num_examples",
            ),
            (
                r#"{"type":"hello","protocol_version":2,"capabilities":{"own_data":{"num_examples":0}}}"#,
                "capabilities.own_data.num_examples",
            ),
            (
                r#"{"type":"hello","protocol_version":2,"capabilities":{"epsilon_cap":-1}}"#,
                "capabilities.epsilon_cap",
            ),
            (
                r#"{"type":"hello","protocol_version":2,"capabilities":{"delta":1}}"#,
                "capabilities.delta",
            ),
            (
                r#"{"type":"train_res","server_round":1,"num_examples":18446744073709533616,"steps":1}"#,
                "num_examples",
            ),
            (
                r#"{"type":"train_res","server_round":1,"num_examples":6000,"steps":18446744073709551615}"#,
                "steps",
            ),
            (
                r#"{"type":"evaluate_res","server_round":1,"num_examples":10,"loss":1e400,"accuracy":0.5}"#,
                "loss",
            ),
            (
                r#"{"type":"evaluate_res","server_round":1,"num_examples":10,"loss":1,"accuracy":2}"#,
                "accuracy",
            ),
        ] {
            match ClientMessage::decode(text) {
                Err(MessageError::OutOfRange { field: f, .. }) => assert_eq!(f, field, "{text}"),
                // 1e400 is no f64: serde refuses it before the bound does.
                Err(MessageError::Decode(_)) if field == "loss" => {}
                other => panic!("{text}: {other:?}"),
            }
        }
        // An error never repeats a large input back.
        let echo = format!(
            r#"{{"type":"hello","protocol_version":"{}"}}"#,
            "x".repeat(60_000)
        );
        let err = ClientMessage::decode(&echo).unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        let long = format!(
            r#"{{"type":"train_failed","server_round":1,"reason":"{}"}}"#,
            "a".repeat(MAX_TEXT_FIELD + 1)
        );
        assert!(matches!(
            ClientMessage::decode(&long),
            Err(MessageError::FieldTooLong {
                field: "reason",
                ..
            })
        ));
    }
}
