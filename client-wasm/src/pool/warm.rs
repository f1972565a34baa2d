//! A throwaway round before the first one, so that a fresh tab's first round runs at the speed
//! of the next ones.
//!
//! Why: V8 compiles a WebAssembly function with its baseline compiler when it is first called
//! and optimises it in the background once it is hot, and a helper worker compiles the module
//! anew when it starts (it started at the first round). In a fresh tab, the first round ran at 0.85 (1
//! worker) and 0.87 (2 workers) of the median of the next seven; warmed up, at 0.94 and 0.97
//! (8 runs each, `benchmarks/warm-up-ab.log`). A tab usually sits idle between loading its data
//! and the server's first round.
//!
//! Nothing of a warm-up leaves the worker or is charged to a ledger: it trains on a copy of the
//! first examples of the tab's data, from the task's initial model, with a ledger of its own
//! that is dropped with its update. A round that arrives meanwhile waits for it (a fraction of
//! a second here; [`EXAMPLES`] bounds it on a slow device).

use std::sync::Arc;

use burn::tensor::Device;
use learning::client::ClientPrivacy;
use learning::{Dataset, Optimizer, Task};
use protocol::config::{Batching, DpSgdConfig, TrainConfig};

use super::{TrainEvent, Workers, train};
use crate::session::TrainJob;

/// The examples a warm-up trains on, once, in steps of [`BATCH`]: ≈ 16 steps, enough for the
/// hot functions to be optimised in every worker.
const EXAMPLES: usize = 1024;
const BATCH: usize = 64;

/// Starts the helpers (if they are wanted) and trains one throwaway round of `task` on them
/// and on this worker, once per join ([`Workers::warm_up_due`]). Returns what to tell the user:
/// that the helpers could not start or failed (the warm-up then goes on on fewer workers,
/// counted like a round's loss).
pub async fn warm_up(workers: &mut Workers, task: &'static Task, data: &Dataset) -> Vec<String> {
    let mut notices = Vec::new();
    if data.is_empty() || !workers.warm_up_due() {
        return notices;
    }
    if let Some(notice) = workers.prepare().await {
        notices.push(notice);
    }
    let job = match job(task, data) {
        Ok(job) => job,
        Err(e) => {
            notices.push(format!("the warm-up could not start: {e}"));
            return notices;
        }
    };
    let done = train(job, workers, &mut |event| {
        if let TrainEvent::HelpersLost(message) = event {
            notices.push(format!("warming up: {message}"));
        }
    })
    .await;
    if let Err(e) = done.result {
        notices.push(format!("the warm-up failed: {e}"));
    }
    notices
}

/// One local epoch of DP-SGD over a copy of `data`'s first [`EXAMPLES`], from `task`'s initial
/// model, charged to a new ledger.
fn job(task: &'static Task, data: &Dataset) -> Result<TrainJob, String> {
    let n = data.len().min(EXAMPLES);
    let first: Vec<usize> = (0..n).collect();
    let delta = 1.0 / (10.0 * n as f64);
    Ok(TrainJob {
        task,
        server_round: 0,
        global: task.model().init(&Device::flex()).to_flat(),
        config: TrainConfig {
            local_epochs: 1,
            batching: Batching::BatchSize(BATCH.min(n)),
            learning_rate: 0.1,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            dp: Some(DpSgdConfig {
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                delta,
                distributed: None,
            }),
        },
        data: Arc::new(data.subset(&first)),
        fingerprint: String::new(),
        privacy: ClientPrivacy::new(None, delta).map_err(|e| e.to_string())?,
    })
}
