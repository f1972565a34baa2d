//! Messages between the client page and its training Web Worker.
//!
//! The page never trains: it sends the user's intents ([`PageToWorker`]) and renders what the
//! worker reports ([`WorkerToPage`]). Both sides are Rust compiled to wasm, so the messages are
//! these serde types as JSON strings; the user's own IDX files travel beside the JSON as byte
//! arrays (copied to the worker; they never leave the browser).

use serde::{Deserialize, Serialize};

use crate::config::FitMetrics;
use crate::ledger::{DatasetLedger, LedgerSlot};
use crate::messages::{Assignment, RunPhase};

/// What a page asks of its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PageToWorker {
    /// Connect (and keep reconnecting) to `server`; train when asked.
    Join(JoinRequest),
    /// Close the connection and stop reconnecting.
    Leave,
    /// [`WorkerToPage::Save`] number `seq` is stored: the worker releases an update only after
    /// this, so a reload can never resume from a ledger older than what was sent.
    Saved { seq: u64 },
    /// A dataset ledger changed in storage (another tab spent on the same records): the
    /// session's copy is replaced, so its cap sees that spending too.
    Ledger(LedgerSlot),
}

/// How to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// `ws://host:port/ws` (or `wss://`) of the page's own server first, then the other
    /// gateways of the deployment: each connection attempt takes the next
    /// ([`crate::servers::ServerList`]).
    pub servers: Vec<String>,
    /// Shown on the dashboard.
    pub name: String,
    /// This client's own ε cap: it refuses rounds past it whatever the server asks.
    pub epsilon_cap: Option<f64>,
    /// The δ this client states ε (and its cap) at; `None`: min(1e-5, 1/(10 n)) for n records.
    #[serde(default)]
    pub delta: Option<f64>,
    /// Train on the user's own IDX files (copied beside this message) instead of a shard.
    pub own_data: bool,
    /// The identity an earlier worker of this tab saved (`sessionStorage`).
    pub resume: Option<SavedClient>,
    /// Every dataset ledger this browser holds (`localStorage`): the session picks the one of
    /// the data it trains on, so the same records never start again at zero.
    #[serde(default)]
    pub ledgers: Vec<LedgerSlot>,
    /// Send no update in the clear: refuse rounds without secure aggregation.
    #[serde(default)]
    pub require_secure_aggregation: bool,
    /// Web Workers that share each training step (this one and its helpers); `None`: the
    /// device's hardware concurrency. Clamped to 1..=[`MAX_TRAINING_WORKERS`].
    #[serde(default)]
    pub workers: Option<u32>,
}

/// Most Web Workers a tab trains with. Past this a TinyCNN step's slices are too small to
/// gain (and each worker holds its own copy of the wasm module).
pub const MAX_TRAINING_WORKERS: u32 = 16;

/// How many workers a tab trains with: the page's choice, else the device's cores, within
/// 1..=[`MAX_TRAINING_WORKERS`].
pub fn training_workers(chosen: Option<u32>, hardware_concurrency: Option<f64>) -> u32 {
    let cores = hardware_concurrency
        .filter(|c| c.is_finite() && *c >= 1.0)
        .map_or(1, |c| c.min(f64::from(MAX_TRAINING_WORKERS)) as u32);
    chosen.unwrap_or(cores).clamp(1, MAX_TRAINING_WORKERS)
}

/// What must survive a page reload besides the ledgers: the identity the server knows this
/// tab by (the tab keeps it in `sessionStorage`; the ledgers are per dataset, in
/// `localStorage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedClient {
    pub client_key: Option<String>,
}

/// ε spent on a dataset and the δ it is stated at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    /// Infinite after a round without DP.
    #[serde(with = "crate::ledger::maybe_infinite")]
    pub epsilon: Option<f64>,
    pub delta: f64,
    /// With distributed-DP rounds in the ledger: ε whatever the server and the other clients do
    /// (only this client's own noise shares protect it), and the largest number of honest
    /// contributors those rounds counted on for `epsilon` (enough for each of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collusion: Option<Collusion>,
}

/// The worst case of a ledger with distributed-DP rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Collusion {
    #[serde(with = "crate::ledger::maybe_infinite")]
    pub epsilon: Option<f64>,
    pub contributors: u32,
}

/// A task as the client page names it: the page does not link the learning crate, so the
/// worker tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLabel {
    pub id: String,
    pub name: String,
    /// Class names, by label.
    pub classes: Vec<String>,
}

/// One example of the tab's data, for the page's sample grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub label: u8,
    /// Side × side grey pixels, row-major, 0 = black.
    pub pixels: Vec<u8>,
}

/// Connection state as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Connection {
    /// To this server (of the join's list).
    Connecting {
        server: String,
    },
    Connected,
    /// Lost or refused; the next attempt is in `retry_in_ms`.
    Reconnecting {
        attempt: u32,
        retry_in_ms: u32,
        reason: String,
    },
    /// Left (by the user) or stopped for good (the reason says which).
    Stopped {
        reason: String,
    },
}

/// What a worker reports to its page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerToPage {
    /// The worker's wasm is loaded and it listens (messages sent before this are lost).
    Ready,
    Connection(Connection),
    Welcome {
        client_id: u64,
        /// Rounds of the active run the server sent this client key (before this connection).
        #[serde(default)]
        rounds_taken: u64,
        /// The round this key was training in when its previous connection ended.
        #[serde(default)]
        interrupted_round: Option<u64>,
    },
    /// This round uses secure aggregation: the server sees only the sum of `members` updates.
    Secure {
        server_round: u64,
        members: u32,
    },
    /// The round's result went out (`masked`: as a masked vector).
    Sent {
        server_round: u64,
        masked: bool,
    },
    /// What the run does between this client's rounds.
    RunState {
        run_id: u64,
        phase: RunPhase,
    },
    /// The active run's task, as the page names it (from the worker's registry).
    Task(TaskLabel),
    Assigned(Assignment),
    /// Training data is loaded and checked (the shard, or the user's files).
    Data {
        num_examples: u64,
        label_histogram: Vec<u32>,
        own: bool,
        /// A few examples of each class, drawn on the page so the user sees what the tab
        /// trains on (they never leave the browser).
        #[serde(default)]
        samples: Vec<Sample>,
    },
    /// Local training started for `server_round`.
    TrainStarted {
        server_round: u64,
        epochs: u32,
        steps_per_epoch: u64,
        /// Web Workers sharing each step.
        #[serde(default = "one_worker")]
        workers: u32,
    },
    /// One local step done: `step` (1-based) of `epoch` (1-based).
    Progress {
        server_round: u64,
        epoch: u32,
        epochs: u32,
        step: u64,
        steps_per_epoch: u64,
        /// NaN when not measured (a distributed-DP step).
        #[serde(with = "crate::ledger::nan_as_null")]
        batch_loss: f64,
        /// Examples trained on per second so far this round (gradient, noise and optimizer
        /// step); `None` when not measured.
        #[serde(default)]
        samples_per_second: Option<f64>,
    },
    Trained {
        server_round: u64,
        metrics: FitMetrics,
        /// δ the ε in `metrics` is stated at.
        delta: Option<f64>,
        /// Local training time.
        seconds: f64,
        /// Examples trained on per second over the round; `None` when not measured.
        #[serde(default)]
        samples_per_second: Option<f64>,
        /// Web Workers that shared its steps.
        #[serde(default = "one_worker")]
        workers: u32,
    },
    TrainFailed {
        server_round: u64,
        reason: String,
    },
    /// ε this client has spent on its current data (its own ledger, which may come from an
    /// earlier tab or run on the same records) and the δ it is stated at. `blocked`: why this
    /// data is not trained on (its stored ledger is unreadable). Sent whenever the data or the
    /// ledger changes.
    Privacy {
        spent: Option<Spent>,
        /// The current data's fingerprint (its ledger's name).
        #[serde(default)]
        dataset: Option<String>,
        #[serde(default)]
        blocked: Option<String>,
    },
    RoundClosed {
        server_round: u64,
        #[serde(with = "crate::ledger::nan_as_null")]
        test_accuracy: f64,
    },
    RunFinished {
        reason: String,
    },
    /// An error from the server or from this worker; `fatal` ones stop the worker.
    Error {
        message: String,
        fatal: bool,
    },
    /// Store this (the identity in `sessionStorage`; what a job spent *added* to its dataset's
    /// ledger in `localStorage`, so that two tabs' spending on the same records adds up), then
    /// answer [`PageToWorker::Saved`].
    Save {
        seq: u64,
        client: SavedClient,
        spent: Option<DatasetLedger>,
    },
}

/// The worker count of a report from a page or worker older than the count: one.
pub fn one_worker() -> u32 {
    1
}

/// A slice of a training step, from a tab's training worker to one of its helper workers. The
/// slice itself travels beside this header as typed arrays: `params` (Float32Array), `images`
/// (Float32Array, normalised pixels) and `labels` (Uint8Array). A helper gets no noise source,
/// ledger or optimizer: it returns the slice's clipped gradient sum (or, for a distributed
/// step, its rounded integer sum) and the training worker adds the step's noise once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceRequest {
    /// Which request this is (the training worker counts them): the reply must say the same,
    /// so that no late or repeated answer is ever taken for another step's slice.
    pub seq: u64,
    /// The run's task (the model to build from `params`).
    pub task: String,
    /// Per-example clipping norm; `None` without DP.
    pub clip: Option<f32>,
    /// A distributed step's slice: its gradients (clipped to `clip`) are rounded to integers
    /// and their integer sum travels back as `integers` (Float64Array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounding: Option<SliceRounding>,
}

/// How a distributed step's slice is rounded: the scale (integer units per C), the bound of a
/// rounded gradient's norm, the round's rounding key and this slice's stream of it (its first
/// example's index in the step), so that the slice rounds the same on any worker.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceRounding {
    pub scale: f64,
    pub bound: f64,
    pub key: [u8; 32],
    pub stream: u64,
}

impl std::fmt::Debug for SliceRounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: a debug print is not a place for the client's randomness.
        write!(
            f,
            "SliceRounding(S {}, bound {}, stream {})",
            self.scale, self.bound, self.stream
        )
    }
}

/// A helper's answer to a [`SliceRequest`]; with `Done`, the sum of the slice's clipped
/// per-example gradients travels beside it as `sum` (Float32Array), or for a distributed step
/// their rounded sum as `integers` (Float64Array; `loss_sum` NaN, `correct` and `clipped` 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SliceReply {
    Done {
        /// The request's `seq`.
        seq: u64,
        #[serde(with = "crate::ledger::nan_as_null")]
        loss_sum: f64,
        correct: u64,
        examples: u64,
        clipped: u64,
    },
    Failed {
        seq: u64,
        reason: String,
    },
}

impl SliceRequest {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl SliceReply {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl PageToWorker {
    pub fn encode(&self) -> String {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl WorkerToPage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_their_tags() {
        let join = PageToWorker::Join(JoinRequest {
            servers: vec!["ws://127.0.0.1:3000/ws".into()],
            name: "tab".into(),
            epsilon_cap: Some(3.0),
            delta: None,
            own_data: false,
            resume: Some(SavedClient {
                client_key: Some("ab".into()),
            }),
            ledgers: vec![LedgerSlot::Unreadable {
                fingerprint: "ab".into(),
                reason: "checksum".into(),
            }],
            require_secure_aggregation: true,
            workers: Some(3),
        });
        let text = join.encode();
        assert!(text.starts_with(r#"{"type":"join""#), "{text}");
        assert_eq!(PageToWorker::decode(&text).unwrap(), join);

        let ev = WorkerToPage::Connection(Connection::Reconnecting {
            attempt: 2,
            retry_in_ms: 400,
            reason: "closed".into(),
        });
        let text = ev.encode();
        assert!(text.contains(r#""state":"reconnecting""#), "{text}");
        assert_eq!(WorkerToPage::decode(&text).unwrap(), ev);
        assert!(PageToWorker::decode(r#"{"type":"fly"}"#).is_err());
        // ε = ∞ (a round without DP) survives the trip.
        let ev = WorkerToPage::Privacy {
            spent: Some(Spent {
                epsilon: Some(f64::INFINITY),
                delta: 1e-5,
                collusion: None,
            }),
            dataset: Some("ab".into()),
            blocked: None,
        };
        assert_eq!(WorkerToPage::decode(&ev.encode()).unwrap(), ev);
        // A distributed step's unmeasured metrics (NaN) and its worst case survive it too.
        let ev = WorkerToPage::Trained {
            server_round: 4,
            metrics: crate::config::FitMetrics {
                loss: f64::NAN,
                accuracy: f64::NAN,
                epsilon: Some(0.4),
                steps: 1,
                clipped_fraction: f64::NAN,
            },
            delta: Some(1e-5),
            seconds: 0.2,
            samples_per_second: None,
            workers: 1,
        };
        let Ok(WorkerToPage::Trained { metrics, .. }) = WorkerToPage::decode(&ev.encode()) else {
            panic!("Trained does not decode: {}", ev.encode())
        };
        assert!(metrics.loss.is_nan() && metrics.accuracy.is_nan());
        assert_eq!(metrics.epsilon, Some(0.4));
        let ev = WorkerToPage::Privacy {
            spent: Some(Spent {
                epsilon: Some(2.0),
                delta: 1e-5,
                collusion: Some(Collusion {
                    epsilon: Some(40.0),
                    contributors: 7,
                }),
            }),
            dataset: None,
            blocked: None,
        };
        assert_eq!(WorkerToPage::decode(&ev.encode()).unwrap(), ev);
    }

    #[test]
    fn a_tab_trains_on_its_cores_or_its_choice_within_bounds() {
        assert_eq!(training_workers(None, Some(8.0)), 8);
        assert_eq!(training_workers(None, None), 1, "unknown cores: one worker");
        assert_eq!(training_workers(None, Some(f64::NAN)), 1);
        assert_eq!(training_workers(None, Some(0.0)), 1);
        assert_eq!(training_workers(None, Some(256.0)), MAX_TRAINING_WORKERS);
        assert_eq!(
            training_workers(Some(2), Some(8.0)),
            2,
            "the page's choice wins"
        );
        assert_eq!(training_workers(Some(0), Some(8.0)), 1);
        assert_eq!(training_workers(Some(1000), None), MAX_TRAINING_WORKERS);
    }

    #[test]
    fn slice_messages_round_trip_and_a_nan_loss_survives() {
        let req = SliceRequest {
            seq: 7,
            task: "mnist".into(),
            clip: Some(1.5),
            rounding: None,
        };
        assert_eq!(SliceRequest::decode(&req.encode()).unwrap(), req);
        let rounded = SliceRequest {
            rounding: Some(SliceRounding {
                scale: 4096.0,
                bound: 4200.5,
                key: [7; 32],
                stream: 33,
            }),
            ..req.clone()
        };
        assert_eq!(SliceRequest::decode(&rounded.encode()).unwrap(), rounded);
        let reply = SliceReply::Done {
            seq: 7,
            loss_sum: f64::NAN,
            correct: 3,
            examples: 4,
            clipped: 1,
        };
        match SliceReply::decode(&reply.encode()).unwrap() {
            SliceReply::Done { loss_sum, .. } => assert!(loss_sum.is_nan()),
            other => panic!("{other:?}"),
        }
        // Reports of an older worker (no workers, no speed) still decode.
        let old = r#"{"type":"train_started","server_round":1,"epochs":1,"steps_per_epoch":5}"#;
        assert!(matches!(
            WorkerToPage::decode(old).unwrap(),
            WorkerToPage::TrainStarted { workers: 1, .. }
        ));
    }
}
