//! The federated client: the session a browser tab and a headless simulated client both run,
//! and the wasm-bindgen exports for JavaScript hosts.
//!
//! # Layout
//!
//! * [`session`]: the client session state machine (sans-IO): messages in, actions out.
//! * [`secure`]: a member's side of a secure-aggregation round, inside the session.
//! * [`browser`]: the Web Worker transport (gloo-net) the client page runs (feature `browser`).
//! * [`native`]: tokio transport for simulated clients (feature `native`, not on wasm32).
//! * [`pool`]: a step's gradient spread over the tab's helper workers (every core).
//! * [`bench`]: training-step throughput and step times measured inside a JS host.
//! * [`attack`]: hostile simulated clients (feature `native`).

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub mod attack;
pub mod bench;
#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub mod browser;
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub mod native;
pub mod pool;
pub mod secure;
pub mod session;

pub use session::{Action, Notice, Session, SessionOptions};
