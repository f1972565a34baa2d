//! Benchmarks for JS hosts, timed with the host's `performance.now()` (Chromium coarsens it to
//! ≈ 0.1 ms on a page that is not cross-origin isolated): `trainThroughput(kind, batch, iters)`,
//! the same measurement as the native `throughput` binary (`learning::bench`),
//! `trainStepTimes(kind, batch, iters)`, each of those steps' milliseconds,
//! `secaggMemberMs(members, neighbours)`, the same round as the native `secagg-cost`, and
//! `accountantMs(case, pld)`, the same timings as the native `accountant-cost`.

use learning::bench::{StepKind, samples_per_second, train_step_times};
use wasm_bindgen::prelude::*;

/// Parses the step kind named by a JS caller.
fn parse_kind(kind: &str) -> Result<StepKind, String> {
    match kind {
        "plain" => Ok(StepKind::Plain),
        "dp" => Ok(StepKind::DpSgd),
        "inference" => Ok(StepKind::Inference),
        "distributed" => Ok(StepKind::Distributed),
        other => Err(format!(
            "unknown step kind {other:?}: expected \"plain\", \"dp\", \"distributed\" or \"inference\""
        )),
    }
}

/// Samples per second of `iters` TinyCNN steps of `batch` examples (after 3 warm-up steps).
#[wasm_bindgen(js_name = trainThroughput)]
pub fn train_throughput(kind: &str, batch: usize, iters: usize) -> Result<f64, JsError> {
    train_step_times_ms(kind, batch, iters).map(|ms| samples_per_second(&ms, batch))
}

/// The milliseconds of each of `iters` TinyCNN steps of `batch` examples, one setup for all
/// (after 3 warm-up steps): how a step's time varies from step to step.
#[wasm_bindgen(js_name = trainStepTimes)]
pub fn train_step_times_ms(kind: &str, batch: usize, iters: usize) -> Result<Vec<f64>, JsError> {
    let kind = parse_kind(kind).map_err(|e| JsError::new(&e))?;
    if batch == 0 || iters == 0 {
        return Err(JsError::new("batch and iters must be at least 1"));
    }
    train_step_times(kind, batch, 1, 3, iters, &now_ms).map_err(|e| JsError::new(&e.to_string()))
}

/// A member's CPU time (milliseconds, the median member) for one secure-aggregation round of
/// `members` with `neighbours` each: keys, shares, unsealing + encoding + masking TinyCNN's
/// update, reveal.
#[wasm_bindgen(js_name = secaggMemberMs)]
pub fn secagg_member_ms(members: u32, neighbours: u32) -> Result<f64, JsError> {
    use rand::SeedableRng;
    if !(2..=2000).contains(&members) || neighbours == 0 {
        return Err(JsError::new(
            "members: expected 2 to 2000; neighbours: expected at least 1",
        ));
    }
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(u64::from(members));
    let now = || now_ms() / 1000.0;
    let costs = secagg::bench::round(members, neighbours.min(members - 1), &mut rng, &now);
    let mut totals = costs.client_s[4].clone();
    totals.sort_by(f64::total_cmp);
    Ok(totals[totals.len() / 2] * 1000.0)
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn now_ms() -> f64 {
    // `performance` exists in browsers, workers and node ≥ 16.
    let perf = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok();
    let now = perf
        .as_ref()
        .and_then(|p| js_sys::Reflect::get(p, &"now".into()).ok());
    match (
        perf,
        now.and_then(|f| f.dyn_into::<js_sys::Function>().ok()),
    ) {
        (Some(p), Some(f)) => f
            .call0(&p)
            .ok()
            .and_then(|v| v.as_f64())
            .unwrap_or_else(js_sys::Date::now),
        _ => js_sys::Date::now(),
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn now_ms() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_unknown_is_named() {
        assert_eq!(parse_kind("dp"), Ok(StepKind::DpSgd));
        assert_eq!(parse_kind("plain"), Ok(StepKind::Plain));
        assert_eq!(parse_kind("distributed"), Ok(StepKind::Distributed));
        assert!(
            parse_kind("fast")
                .unwrap_err()
                .contains("unknown step kind \"fast\"")
        );
    }

    #[test]
    fn measures_a_positive_rate() {
        for kind in [StepKind::DpSgd, StepKind::Distributed] {
            let rate = samples_per_second(
                &train_step_times(kind, 4, 1, 1, 2, &now_ms).expect("runs"),
                4,
            );
            assert!(rate.is_finite() && rate > 0.0, "{kind:?}: {rate}");
        }
    }

    #[test]
    fn times_each_step_of_one_setup() {
        let times = train_step_times(StepKind::DpSgd, 4, 1, 1, 3, &now_ms).expect("runs");
        assert_eq!(
            times.len(),
            3,
            "one time per timed step, none for the warm-up"
        );
        assert!(times.iter().all(|t| t.is_finite() && *t > 0.0), "{times:?}");
    }
}

/// The matrix products of a batch-64 DP-SGD step, each alone (`learning::bench::gemm_rates`):
/// one line per product, `name<TAB>ms<TAB>GFLOP/s`.
#[wasm_bindgen(js_name = gemmRates)]
pub fn gemm_rates() -> String {
    learning::bench::gemm_rates(&now_ms)
        .into_iter()
        .map(|(name, ms, gflops)| format!("{name}\t{ms:.3}\t{gflops:.1}\n"))
        .collect()
}

/// `[ε evaluation ms, σ solve ms]` of `learning::bench::ACCOUNTANT_CASES[case]` under PLD
/// (`pld`) or RDP.
#[wasm_bindgen(js_name = accountantMs)]
pub fn accountant_ms(case: usize, pld: bool) -> Result<Vec<f64>, JsError> {
    let (_, q, sigma, steps) = *learning::bench::ACCOUNTANT_CASES
        .get(case)
        .ok_or_else(|| JsError::new("no such accountant case"))?;
    let (eps, solve) = learning::bench::accountant_ms(pld, q, sigma, steps, &now_ms)
        .map_err(|e| JsError::new(&e.to_string()))?;
    Ok(vec![eps, solve])
}

/// The names of `learning::bench::ACCOUNTANT_CASES`, in order.
#[wasm_bindgen(js_name = accountantCases)]
pub fn accountant_cases() -> Vec<String> {
    learning::bench::ACCOUNTANT_CASES
        .iter()
        .map(|c| c.0.to_string())
        .collect()
}

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub use pooled::paired_rounds;

/// A tab's real training rounds on one worker and on a pool, alternated in one worker: the
/// pool's scaling measured where the arms meet the same stretch of the host. Runs measured one
/// after another (`e2e/bench-speed.mjs`) swing ±20 % from run to run on a shared VM, which hides
/// any change of a few percent; here the arms' rounds of one pass are a second or two apart.
#[cfg(all(feature = "browser", target_arch = "wasm32"))]
mod pooled {
    use std::sync::Arc;

    use learning::client::{ClientPrivacy, Update};
    use learning::task::MNIST;
    use learning::{Aggregator, Dataset, FedAvg, Optimizer};
    use protocol::config::{Batching, DpSgdConfig, TrainConfig};
    use wasm_bindgen::prelude::*;

    use crate::pool::{TrainEvent, Workers, train};
    use crate::session::TrainJob;

    /// The arms' orders, one a pass in turn: each arm goes first, second and last equally often.
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [2, 1, 0],
        [1, 2, 0],
        [0, 2, 1],
        [2, 0, 1],
        [1, 0, 2],
    ];

    /// The rates on 1 worker, on `workers` split before each step and on `workers` as a tab
    /// trains (three arrays): each round's examples per second as the tab reports it (the
    /// `train` loop's rate at its last step), `passes` rounds of each arm, their order turning
    /// ([`ORDERS`]). The third
    /// arm claims each step's chunks where the page is cross-origin isolated (as the server
    /// serves it) and is split like the second elsewhere. A round is one epoch over the shard
    /// (`images`: 784 bytes an image, `labels`: one class 0–9 each) in DP-SGD steps of Poisson
    /// batches of `batch` expected examples, lr 0.5, σ 1.1, C 1, a fresh ledger each; with
    /// `trained`, each round starts from the model its arm's previous round left (as a tab's
    /// rounds start from a trained global model), else from the same initial model.
    #[wasm_bindgen(js_name = pairedRounds)]
    pub async fn paired_rounds(
        workers: u32,
        batch: u32,
        passes: u32,
        images: Vec<u8>,
        labels: Vec<u8>,
        trained: bool,
    ) -> Result<js_sys::Array, JsError> {
        let examples = labels.len();
        if !(2..=16).contains(&workers)
            || !(1..=examples).contains(&(batch as usize))
            || !(1..=60_000).contains(&examples)
            || !(1..=1_000).contains(&passes)
        {
            return Err(JsError::new(&format!(
                "got {workers} workers, batch {batch}, {examples} labels, {passes} passes: expected 2 ≤ workers ≤ 16, 1 ≤ batch ≤ labels ≤ 60 000, 1 ≤ passes ≤ 1 000"
            )));
        }
        if images.len() != examples * 784 {
            return Err(JsError::new(&format!(
                "got {} image bytes for {examples} labels: expected 784 bytes an image",
                images.len()
            )));
        }
        if let Some(l) = labels.iter().find(|l| **l > 9) {
            return Err(JsError::new(&format!("got label {l}: expected 0–9")));
        }
        let data = Arc::new(Dataset { images, labels });
        let mut arms = [
            Workers::new(1),
            Workers::with_fixed_split(workers),
            Workers::new(workers),
        ];
        for arm in &mut arms {
            if let Some(notice) = arm.prepare().await {
                return Err(JsError::new(&notice));
            }
        }
        let init = MNIST.model().init(&burn::tensor::Device::flex()).to_flat();
        let mut models = [init.clone(), init.clone(), init];
        let mut rates = [Vec::new(), Vec::new(), Vec::new()];
        for pass in 0..passes as usize {
            for arm in ORDERS[pass % ORDERS.len()] {
                let (rate, update) = round_rate(&mut arms[arm], &models[arm], &data, batch).await?;
                if arm > 0 && arms[arm].count() != workers as usize {
                    return Err(JsError::new("a pool lost its helpers: see the console"));
                }
                if trained {
                    models[arm] = model_after(&models[arm], &update)?;
                }
                rates[arm].push(rate);
            }
        }
        Ok(rates
            .iter()
            .map(|r| JsValue::from(js_sys::Float64Array::from(&r[..])))
            .collect())
    }

    /// One round's examples per second on `workers`, and its update.
    async fn round_rate(
        workers: &mut Workers,
        global: &[f32],
        data: &Arc<Dataset>,
        batch: u32,
    ) -> Result<(f64, Update), JsError> {
        let job = TrainJob {
            task: &MNIST,
            server_round: 0,
            global: global.to_vec(),
            config: TrainConfig {
                local_epochs: 1,
                batching: Batching::BatchSize(batch as usize),
                learning_rate: 0.5,
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                dp: Some(DpSgdConfig {
                    max_grad_norm: 1.0,
                    noise_multiplier: 1.1,
                    delta: 1e-5,
                    distributed: None,
                }),
            },
            data: Arc::clone(data),
            fingerprint: String::new(),
            privacy: ClientPrivacy::new(None, 1e-5).map_err(|e| JsError::new(&e.to_string()))?,
        };
        let mut rate = None;
        let done = train(job, workers, &mut |event| {
            if let TrainEvent::Step(_, r) = event {
                rate = r;
            }
        })
        .await;
        let res = done.result.map_err(|e| JsError::new(&e.to_string()))?;
        let rate = rate.ok_or_else(|| JsError::new("a round took no step"))?;
        Ok((rate, res.update))
    }

    /// The model a round's update leaves, as the server makes it from this one client's
    /// update (FedAvg of one: global + delta, refused if not finite).
    fn model_after(global: &[f32], update: &Update) -> Result<Vec<f32>, JsError> {
        let Update::Delta(delta) = update else {
            return Err(JsError::new("a local round's update is a delta"));
        };
        let mut fedavg = FedAvg::new(global.len());
        fedavg
            .add(delta, 1)
            .and_then(|()| fedavg.apply(global))
            .map_err(|e| JsError::new(&e.to_string()))
    }
}
