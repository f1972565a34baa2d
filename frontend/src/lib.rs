//! The dashboard's view model, kept free of Leptos and the DOM so it is tested natively.
//!
//! # Layout
//!
//! * [`series`]: per-round metric series behind the live charts.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod series;
