//! Everything that computes and nothing that talks: the model, the data, DP-SGD, the privacy
//! accountant and the aggregation math. Builds natively (server, simulator, tools) and for
//! wasm32 (the browser client); burn's `flex` CPU backend, single-threaded.
//!
//! # Layout
//!
//! * [`task`]: the learning problems (MNIST, Fashion-MNIST): data files and their hashes,
//!   classes, preprocessing, model.
//! * [`model`]: TinyCNN (defined once), its flat parameter layout.
//! * [`data`]: IDX parsing, batches.
//! * [`shard`]: IID and Dirichlet(α) partitions into client shards.
//! * [`dpsgd`]: per-example gradients, clipping, secure noise, optimizers.
//! * [`accountant`]: RDP accountant (ε from σ, and σ from a target ε).
//! * [`skellam`]: RDP of the Poisson-subsampled Skellam mechanism (distributed DP-SGD), its
//!   noise and conditional rounding.
//! * [`distributed`]: one client's contribution to a distributed DP-SGD step.
//! * [`client`]: Flower-shaped `fit` / `evaluate`, pure.
//! * [`aggregate`]: the aggregation interface: FedAvg's running sum and the robust rules.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod accountant;
pub mod aggregate;
mod backward;
pub mod bench;
pub mod client;
pub mod data;
pub mod distributed;
pub mod dpsgd;
mod kernels;
mod memo;
pub mod model;
pub mod parallel;
pub mod pld;
mod routes;
pub mod shard;
pub mod skellam;
pub mod steps;
pub mod task;

pub use accountant::PrivacyLedger;
pub use aggregate::{Aggregator, FedAvg};
pub use client::{
    Batching, ClientPrivacy, DpSgdConfig, EvaluateRes, FitMetrics, FitRes, TrainConfig, Update,
    default_delta, evaluate, evaluate_private, fit, fit_with, start_fit,
};
pub use data::Dataset;
pub use dpsgd::Optimizer;
pub use model::{TinyCnn, TinyCnnConfig};
pub use task::{TASKS, Task, TaskData};

/// Errors of the compute API.
#[derive(Debug, thiserror::Error)]
pub enum LearningError {
    #[error("parameter vector has {actual} values, expected {expected} (the task's model layout)")]
    ParamLength { expected: usize, actual: usize },
    #[error(
        "a batch of {batch} examples needs {} pixel values (28 × 28 each), got {actual}",
        batch.saturating_mul(model::IMAGE_PIXELS)
    )]
    BatchShape { batch: usize, actual: usize },
    #[error(transparent)]
    Config(client::ConfigError),
    #[error(transparent)]
    Accountant(accountant::AccountantError),
    #[error(
        "this round would take the privacy budget to ε = {would_reach:.3}, past this client's cap of {cap} (spent so far: {spent:.3}); refusing to train"
    )]
    BudgetExhausted {
        spent: f64,
        would_reach: f64,
        cap: f64,
    },
    #[error(
        "this client has an ε cap and trains only with differential privacy: the server asked for a round without DP"
    )]
    NoDpWithCap,
    #[error(
        "this data's privacy ledger holds {0} different mechanisms, the most it keeps: refusing a new one (the server keeps changing the sample rate or σ)"
    )]
    LedgerFull(usize),
    #[error(
        "{whose} is {delta:e}: expected below 1/n = {:e} for {n} records (at δ ≥ 1/n a guarantee allows publishing a record outright)",
        1.0 / (*n as f64)
    )]
    DeltaTooLarge {
        whose: &'static str,
        delta: f64,
        n: usize,
    },
    #[error("training diverged: a parameter became NaN or infinite (lower the learning rate)")]
    Diverged,
    #[error("no examples to evaluate on: expected at least one")]
    EmptyData,
    #[error("no secure randomness from the operating system: {0}")]
    Rng(String),
    #[error("distributed step: {0}")]
    Distributed(String),
    #[error("{0}")]
    Worker(String),
}
