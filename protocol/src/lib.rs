//! The wire format, defined once for the server, the browser client and the simulator.
//!
//! # Layout
//!
//! * [`frame`]: binary tensor frames (fixed header + little-endian f32), with every limit a
//!   named constant checked before anything is allocated.
//! * [`messages`]: control messages between a client and the server (JSON text frames).
//! * [`config`]: the training configuration a client receives (what `learning::fit` takes).
//! * [`ledger`]: the data owner's privacy ledger per dataset, as stored and moved.
//! * [`admin`]: the admin API's run config (with validation), records and dashboard events.
//! * [`fields`]: each run-config field's label and range, said once for the server and the form.
//! * [`worker`]: messages between the client page and its training Web Worker.
//! * [`secagg`]: the secure-aggregation messages (keys, encrypted shares, unmasking).
//! * [`servers`]: the socket URLs a client connects to, and the list it moves along on failure.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod config;
pub mod fields;
pub mod frame;
pub mod ledger;
pub mod messages;
pub mod secagg;
pub mod servers;
pub mod worker;

pub use frame::{FrameError, FrameKind, MaskedFrame, ResultFrame, TensorFrame};
pub use messages::{ClientMessage, ErrorCode, MessageError, ServerMessage};

/// At most `max` characters of a peer's input, for an error message or a log line: an error
/// that repeats a 60 KB input back (and into the log) amplifies whatever an attacker sends.
pub fn clip(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}… ({} more characters)", total - max)
}

/// Version of the wire protocol; a peer speaking another version is refused with a typed error.
/// 2: `TrainRes` carries no training metrics (only what is DP or public), `Hello` no label
/// histogram, evaluation results are DP. 3: `RunState` (running, paused, waiting for clients);
/// `Welcome` says what the server remembers of a returning key; secure aggregation (the `SecAgg*`
/// messages and masked frames). 4: distributed DP (`DpSgdConfig::distributed`); secure
/// aggregation's pairwise masks are bound to what each member was told to compute. 5: a secure
/// round of the last round's cohort reuses its keys (`SecAggSetup::reuse_keys`). 6: runs name
/// their task: `TrainIns`, `EvaluateIns`, `Assignment` and `RunState` carry a `TaskSpec`.
pub const PROTOCOL_VERSION: u16 = 6;
