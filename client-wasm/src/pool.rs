//! Training on every core of the device: the tab's training worker starts helper workers (the
//! same script, [`crate::browser`]) and each step's Poisson batch is cut into slices, one per
//! worker ([`learning::steps::slices`]). A helper gets the model's parameters and its slice's
//! examples and returns the slice's clipped gradient sum ([`protocol::worker::SliceReply`]);
//! the training worker computes the first slice itself, adds the slices' sums, and only then
//! adds the step's noise, records it in the ledger and steps the optimizer
//! ([`learning::steps::LocalSteps`]). Helpers hold no randomness, ledger or optimizer state:
//! the mechanism is the one-worker mechanism (the native tests of `learning::parallel` hold
//! it: the same clipped sum for any number of workers, one noise draw per step).
//!
//! A helper that fails or goes silent fails the step, hence the round (with a message naming
//! the helper); the pool is then dropped (its workers terminated) and started again for the
//! next round.

use learning::LearningError;
use learning::dpsgd::BatchGradient;
use protocol::worker::SliceReply;

/// A helper's reply as its slice's gradient, checked against what it was asked: a reply that
/// covers other examples or has the wrong length is an error, never a wrong sum.
pub fn slice_gradient_from(
    reply: SliceReply,
    sum: Option<Vec<f32>>,
    examples: usize,
    dim: usize,
) -> Result<BatchGradient, String> {
    match reply {
        SliceReply::Failed { reason } => Err(reason),
        SliceReply::Done {
            loss_sum,
            correct,
            examples: covered,
            clipped,
        } => {
            let n = examples as u64;
            if covered != n || correct > n || clipped > n {
                return Err(format!(
                    "its answer covers {covered} examples ({correct} right, {clipped} clipped): expected {n}, and counts at most {n}"
                ));
            }
            let sum = sum.ok_or("its answer has no gradient sum")?;
            if sum.len() != dim {
                return Err(format!(
                    "its gradient sum has {} values: expected {dim}",
                    sum.len()
                ));
            }
            Ok(BatchGradient {
                sum,
                loss_sum,
                correct: correct as usize,
                batch_size: examples,
                clipped: clipped as usize,
            })
        }
    }
}

/// The error a failed helper gives its step.
#[cfg_attr(
    not(all(feature = "browser", target_arch = "wasm32")),
    allow(dead_code)
)]
fn helper_failed(index: usize, of: usize, why: &str) -> LearningError {
    LearningError::Worker(format!(
        "training worker {} of {of} failed: {why}",
        index + 1
    ))
}

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub use web::{Workers, serve_slice, train};

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
mod web {
    use futures::channel::mpsc;
    use futures::{FutureExt, StreamExt};
    use learning::client::{Fit, FitProgress};
    use learning::dpsgd::BatchGradient;
    use learning::parallel::slice_gradient;
    use learning::steps::{StepInput, slices};
    use learning::{LearningError, Task};
    use protocol::worker::{SliceReply, SliceRequest, WorkerToPage};
    use wasm_bindgen::prelude::*;
    use web_sys::{ErrorEvent, MessageEvent, Worker};

    use super::{helper_failed, slice_gradient_from};
    use crate::session::{TrainDone, TrainJob};

    /// How long a helper may take to load, and to answer one slice. A slice of a step is
    /// well under a second on a phone; a helper silent this long is lost.
    const READY_MS: u32 = 30_000;
    const SLICE_MS: u32 = 60_000;

    enum Event {
        /// The helper's wasm is loaded (it says `Ready` like any training worker).
        Ready,
        Message(JsValue),
        Error(String),
    }

    struct Helper {
        worker: Worker,
        events: mpsc::UnboundedReceiver<Event>,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_error: Closure<dyn FnMut(ErrorEvent)>,
    }

    impl Helper {
        fn start(url: &str) -> Result<Self, String> {
            let worker = Worker::new(url).map_err(|e| format!("{e:?}"))?;
            let (tx, events) = mpsc::unbounded();
            let tx2 = tx.clone();
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
                let data = ev.data();
                let event = match data.as_string().map(|t| WorkerToPage::decode(&t)) {
                    Some(Ok(WorkerToPage::Ready)) => Event::Ready,
                    Some(_) => return, // a training worker's other reports: not for a helper
                    None => Event::Message(data),
                };
                let _gone = tx.unbounded_send(event);
            });
            let on_error = Closure::<dyn FnMut(ErrorEvent)>::new(move |ev: ErrorEvent| {
                ev.prevent_default();
                let _gone = tx2.unbounded_send(Event::Error(ev.message()));
            });
            worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
            Ok(Self {
                worker,
                events,
                _on_message: on_message,
                _on_error: on_error,
            })
        }

        /// The next event, or why there is none within `ms`.
        async fn next(&mut self, ms: u32) -> Result<Event, String> {
            futures::select! {
                e = self.events.next().fuse() => e.ok_or_else(|| "it stopped".to_string()),
                () = crate::browser::sleep_ms(ms).fuse() => {
                    Err(format!("it did not answer within {} s", ms / 1000))
                }
            }
        }

        fn send(&self, header: &SliceRequest, params: &[f32], images: &[f32], labels: &[u8]) {
            let params = js_sys::Float32Array::from(params);
            let images = js_sys::Float32Array::from(images);
            let labels = js_sys::Uint8Array::from(labels);
            let msg = js_sys::Object::new();
            let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&msg, &k.into(), v).is_ok();
            let ok = set("slice", &header.encode().into())
                && set("params", &params)
                && set("images", &images)
                && set("labels", &labels);
            let transfer = js_sys::Array::of3(&params.buffer(), &images.buffer(), &labels.buffer());
            if !ok
                || self
                    .worker
                    .post_message_with_transfer(&msg, &transfer)
                    .is_err()
            {
                // The reply never comes: the step's wait names this helper.
                web_sys::console::error_1(&"training pool: could not post a slice".into());
            }
        }
    }

    impl Drop for Helper {
        fn drop(&mut self) {
            self.worker.terminate();
        }
    }

    /// The helper workers of a tab's training worker (it is itself the first worker).
    struct HelperPool {
        helpers: Vec<Helper>,
    }

    impl HelperPool {
        /// Starts `count` helpers running this worker's own script and waits until each has
        /// loaded.
        async fn start(count: usize) -> Result<Self, String> {
            let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
            let url = scope.location().href();
            let mut helpers = Vec::with_capacity(count);
            for i in 0..count {
                let helper = Helper::start(&url)
                    .map_err(|e| format!("helper {} did not start: {e}", i + 2))?;
                helpers.push(helper);
            }
            for (i, h) in helpers.iter_mut().enumerate() {
                match h.next(READY_MS).await {
                    Ok(Event::Ready) => {}
                    Ok(Event::Error(e)) | Err(e) => {
                        return Err(format!("helper {} did not load: {e}", i + 2));
                    }
                    Ok(Event::Message(_)) => {
                        return Err(format!("helper {} answered before loading", i + 2));
                    }
                }
            }
            Ok(Self { helpers })
        }

        /// Workers sharing a step: the helpers and the training worker.
        fn workers(&self) -> usize {
            self.helpers.len() + 1
        }

        /// The clipped gradient sum of a step's examples, computed in slices.
        async fn gradient(
            &mut self,
            task: &Task,
            params: &[f32],
            input: &StepInput,
        ) -> Result<BatchGradient, LearningError> {
            let model = task.model();
            let parts = slices(input.len(), self.workers());
            let header = SliceRequest {
                task: task.id.to_string(),
                clip: input.clip,
            };
            for (helper, range) in self.helpers.iter().zip(&parts[1..]) {
                let (images, labels) = input.slice(range.clone());
                helper.send(&header, params, images, labels);
            }
            let (images, labels) = input.slice(parts[0].clone());
            let mut total = slice_gradient(&model, params, images, labels, input.clip)?;
            let of = parts.len();
            for (i, (helper, range)) in self.helpers.iter_mut().zip(&parts[1..]).enumerate() {
                let part = match helper.next(SLICE_MS).await {
                    Ok(Event::Message(data)) => read_reply(&data, range.len(), params.len()),
                    Ok(Event::Ready) => Err("it restarted".to_string()),
                    Ok(Event::Error(e)) | Err(e) => Err(e),
                };
                total.add(&part.map_err(|why| helper_failed(i + 1, of, &why))?)?;
            }
            Ok(total)
        }
    }

    /// The workers a tab trains with: how many it wants, and the helpers once started.
    pub struct Workers {
        wanted: usize,
        pool: Option<HelperPool>,
        /// Why helpers could not start: the tab then trains on one worker for this join.
        unavailable: bool,
    }

    impl Workers {
        /// `wanted` workers in all (1: no helpers).
        pub fn new(wanted: u32) -> Self {
            Self {
                wanted: (wanted as usize).max(1),
                pool: None,
                unavailable: false,
            }
        }

        /// Starts the helpers if they are wanted and not running (the first round, or after
        /// one failed). Returns a notice for the user when they cannot start: the tab then
        /// trains on its one worker, and does not try again until it joins again.
        pub async fn prepare(&mut self) -> Option<String> {
            if self.wanted <= 1 || self.pool.is_some() || self.unavailable {
                return None;
            }
            match HelperPool::start(self.wanted - 1).await {
                Ok(pool) => {
                    self.pool = Some(pool);
                    None
                }
                Err(e) => {
                    self.unavailable = true;
                    Some(format!(
                        "training on one worker instead of {}: {e}",
                        self.wanted
                    ))
                }
            }
        }

        /// Workers sharing the next step.
        pub fn count(&self) -> usize {
            self.pool.as_ref().map_or(1, HelperPool::workers)
        }
    }

    /// A helper's message as its slice's gradient.
    fn read_reply(data: &JsValue, examples: usize, dim: usize) -> Result<BatchGradient, String> {
        let field = |k: &str| js_sys::Reflect::get(data, &k.into()).ok();
        let reply = field("reply")
            .and_then(|v| v.as_string())
            .ok_or("its answer is not a slice reply")?;
        let reply = SliceReply::decode(&reply).map_err(|e| format!("its answer: {e}"))?;
        let sum = field("sum")
            .and_then(|v| v.dyn_into::<js_sys::Float32Array>().ok())
            .map(|a| a.to_vec());
        slice_gradient_from(reply, sum, examples, dim)
    }

    /// A helper's side: computes the slice in `data` (a [`SliceRequest`] with its arrays) and
    /// answers its parent. Nothing here is random or remembered between slices.
    pub fn serve_slice(data: &JsValue, header: &str) {
        let (reply, sum) = match compute_slice(data, header) {
            Ok(g) => (
                SliceReply::Done {
                    loss_sum: g.loss_sum,
                    correct: g.correct as u64,
                    examples: g.batch_size as u64,
                    clipped: g.clipped as u64,
                },
                Some(js_sys::Float32Array::from(g.sum.as_slice())),
            ),
            Err(reason) => (SliceReply::Failed { reason }, None),
        };
        let msg = js_sys::Object::new();
        let _set = js_sys::Reflect::set(&msg, &"reply".into(), &reply.encode().into());
        let transfer = js_sys::Array::new();
        if let Some(sum) = &sum {
            let _set = js_sys::Reflect::set(&msg, &"sum".into(), sum);
            transfer.push(&sum.buffer());
        }
        let scope: web_sys::DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
        if let Err(e) = scope.post_message_with_transfer(&msg, &transfer) {
            web_sys::console::error_2(&"helper: postMessage failed".into(), &e);
        }
    }

    fn compute_slice(data: &JsValue, header: &str) -> Result<BatchGradient, String> {
        let header = SliceRequest::decode(header).map_err(|e| format!("slice header: {e}"))?;
        let task = learning::task::find(&header.task).map_err(|e| e.to_string())?;
        let floats = |k: &str| {
            js_sys::Reflect::get(data, &k.into())
                .ok()
                .and_then(|v| v.dyn_into::<js_sys::Float32Array>().ok())
                .map(|a| a.to_vec())
                .ok_or(format!("slice: expected {k} as a Float32Array"))
        };
        let (params, images) = (floats("params")?, floats("images")?);
        let labels = js_sys::Reflect::get(data, &"labels".into())
            .ok()
            .and_then(|v| v.dyn_into::<js_sys::Uint8Array>().ok())
            .map(|a| a.to_vec())
            .ok_or("slice: expected labels as a Uint8Array")?;
        let model = task.model();
        let pixels: usize = task.input.iter().product();
        if images.len() != labels.len() * pixels {
            return Err(format!(
                "slice has {} pixels for {} labels: expected {pixels} per example",
                images.len(),
                labels.len()
            ));
        }
        if let Some(l) = labels
            .iter()
            .find(|l| usize::from(**l) >= model.num_classes)
        {
            return Err(format!(
                "slice has label {l}: expected below {}",
                model.num_classes
            ));
        }
        slice_gradient(&model, &params, &images, &labels, header.clip).map_err(|e| e.to_string())
    }

    /// Runs a training job step by step, each step's gradient spread over the helpers (when
    /// they run) and computed here otherwise. A failed helper fails the job and drops the pool.
    /// `on_step` gets each step's progress and the examples per second so far.
    pub async fn train(
        mut job: TrainJob,
        workers: &mut Workers,
        on_step: &mut dyn FnMut(FitProgress, Option<f64>),
    ) -> TrainDone {
        let started = js_sys::Date::now();
        let result = async {
            let task = job.task;
            let fit =
                learning::start_fit(task, &job.global, &job.config, &job.data, &mut job.privacy)?;
            let mut steps = match fit {
                Fit::Done(res) => {
                    on_step(FitProgress::one_step(), None);
                    return Ok(res);
                }
                Fit::Steps(steps) => steps,
            };
            let mut seen = 0usize;
            while let Some(input) = steps.next_input(task, &job.data, &mut job.privacy.rng) {
                let g = match workers.pool.as_mut() {
                    Some(p) if !input.is_empty() => p.gradient(task, steps.params(), &input).await,
                    _ => slice_gradient(
                        &task.model(),
                        steps.params(),
                        &input.images,
                        &input.labels,
                        input.clip,
                    ),
                };
                // A helper that failed may still answer later: the pool starts afresh.
                let g = g.inspect_err(|_| workers.pool = None)?;
                seen += input.len();
                let progress = steps.apply(g, &mut job.privacy)?;
                let seconds = (js_sys::Date::now() - started) / 1000.0;
                on_step(progress, (seconds > 0.0).then(|| seen as f64 / seconds));
            }
            steps.finish(&mut job.privacy)
        }
        .await;
        job.done(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(examples: u64, correct: u64, clipped: u64) -> SliceReply {
        SliceReply::Done {
            loss_sum: 1.5,
            correct,
            examples,
            clipped,
        }
    }

    #[test]
    fn a_reply_is_taken_only_for_the_slice_it_was_asked() {
        let g = slice_gradient_from(done(3, 2, 1), Some(vec![0.5; 4]), 3, 4).expect("fits");
        assert_eq!((g.batch_size, g.correct, g.clipped), (3, 2, 1));
        let refused = [
            (done(4, 2, 1), Some(vec![0.0; 4]), "covers 4 examples"),
            (done(3, 9, 1), Some(vec![0.0; 4]), "9 right"),
            (done(3, 2, 7), Some(vec![0.0; 4]), "7 clipped"),
            (
                done(3, 2, 1),
                Some(vec![0.0; 5]),
                "has 5 values: expected 4",
            ),
            (done(3, 2, 1), None, "no gradient sum"),
            (
                SliceReply::Failed {
                    reason: "out of memory".into(),
                },
                None,
                "out of memory",
            ),
        ];
        for (reply, sum, says) in refused {
            let err = slice_gradient_from(reply, sum, 3, 4).expect_err(says);
            assert!(err.contains(says), "{err} (expected: {says})");
        }
    }

    #[test]
    fn a_failed_helper_is_named_in_the_round_s_error() {
        let e = helper_failed(1, 3, "it did not answer within 60 s").to_string();
        assert_eq!(
            e,
            "training worker 2 of 3 failed: it did not answer within 60 s"
        );
    }
}
