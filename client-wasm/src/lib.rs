//! The federated client. This crate will hold the client session (Hello → Welcome → TrainIns →
//! fit → TrainRes) for both the browser and the simulator; today it exposes the learning core
//! to JavaScript hosts (browser, node) through wasm-bindgen, starting with the throughput
//! benchmark that `BENCHMARKS.md` records.
//!
//! # Layout
//!
//! * [`bench`]: training-step throughput measured inside a JS host.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bench;
