//! The dashboard's view model, kept free of Leptos and the DOM so it is tested natively.
//!
//! # Layout
//!
//! * [`series`]: per-round metric series behind the live charts.

pub mod series;
