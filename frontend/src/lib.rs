//! The client page and the admin dashboard (Leptos, client-side rendered, built by trunk).
//!
//! # Layout
//!
//! * [`series`]: per-round metric series behind the live charts, and their CSV.
//! * [`run_form`]: the run config form as data, validated by the server's own check.
//! * [`client_view`]: the client page's state, folded from its worker's reports.
//! * [`run_view`]: what the dashboard says a run waits for.
//!
//! Browser only (wasm32):
//!
//! * `app`: mounts the page for `/` (client) or `/admin` (dashboard).
//! * `client_page`: join/leave, the training worker, progress, ε, rounds.
//! * `storage`: the tab's identity, the per-dataset privacy ledgers, the dataset Web Locks.
//! * `admin_page`: token, run config, run controls, clients, charts, downloads, join QR code.
//! * `chart`: the one Chart.js binding.
//! * `api`: the admin API over fetch.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod client_view;
pub mod run_form;
pub mod run_view;
pub mod series;

#[cfg(target_arch = "wasm32")]
mod admin_page;
#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
mod chart;
#[cfg(target_arch = "wasm32")]
mod client_page;
#[cfg(target_arch = "wasm32")]
mod storage;
