//! Training on every core of the device: the tab's training worker starts helper workers (the
//! same script, [`crate::browser`]) and each step's Poisson batch is shared between them. Where
//! the page is cross-origin isolated (the server and `trunk serve` say so), every worker takes
//! the batch's next chunk of 8 examples from a counter in a SharedArrayBuffer until none is
//! left, so a step ends within a chunk of all being done ([`Coverage`] checks that the answers
//! sum each chunk once); elsewhere, and for a distributed step, the batch is cut into slices, one
//! per worker, sized so that the helpers' answers arrive as the training worker finishes its own
//! ([`Balance`]). Each helper's first answers are checked against the training worker's own
//! computation ([`Audit`]). A helper gets the model's parameters and its slice's examples and
//! returns the clipped gradient sum of what it computed ([`protocol::worker::SliceReply`]); when
//! chunks are claimed, the parameters and the whole batch are written once into memory every
//! helper reads, and each helper writes its answer into a reply buffer of its own, which the
//! training worker waits on with `Atomics.wait` ([`shared`]). The training worker computes the
//! first slice (or claims chunks) itself and draws the step's noise while the helpers compute
//! ([`learning::steps::StepNoise`], then the next step's batch; with claims, both before its own
//! chunks), adds their sums, and only then adds the step's noise, records it in the ledger and
//! steps the optimizer
//! ([`learning::steps::LocalSteps`]). Helpers hold no noise source, ledger or optimizer state:
//! the mechanism is the one-worker mechanism (the native tests of `learning::parallel` hold
//! it: the same clipped sum for any number of workers, one noise draw per step).
//!
//! A distributed round's one step is shared the same way: each slice's gradients are clipped
//! and rounded to integers with the ChaCha12 stream of the round's rounding key that starts at
//! the slice's first example ([`learning::distributed::rounded_slice_sum`]), so a slice rounds
//! the same on any worker; a helper returns the slice's integer sum, checked against the
//! rounding's bound ([`slice_rounded_from`]), and the training worker adds the noise share
//! once ([`learning::client::DistributedFit::finish`]).
//!
//! A helper's answer is checked before it counts: it must answer this very request (a
//! sequence number), cover its slice, and stay within the clipping (or rounding) bound. A
//! helper that fails, answers wrongly or stays silent loses the pool for the round: the step is
//! computed again, from the same batch and with the noise already drawn for it, by the training
//! worker alone (nothing of it was released, so this costs no privacy, and the batch is never
//! redrawn), the round goes on on one worker and the user is told. The next round starts fresh
//! helpers; after [`MAX_POOL_FAILURES`] losses in one join the tab stops trying.

use learning::distributed::RoundedSum;
use learning::dpsgd::{BatchGradient, CHUNK};
use protocol::worker::SliceReply;

pub mod shared;
#[cfg(all(feature = "browser", target_arch = "wasm32"))]
mod warm;
#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub use warm::warm_up;

/// Helper pools a tab may lose in one join before it trains on its one worker for good.
pub const MAX_POOL_FAILURES: u32 = 3;

/// What a slice was: its request number, its examples, the model's size and the clipping norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Asked {
    pub seq: u64,
    pub examples: usize,
    pub dim: usize,
    pub clip: Option<f32>,
}

/// What a `Done` reply counts, once it is this request's and covers its slice: the loss sum,
/// the examples right and clipped. Anything else is an error naming what was wrong.
fn done_for(reply: SliceReply, asked: Asked) -> Result<(f64, u64, u64), String> {
    let (seq, loss_sum, correct, covered, clipped) = match reply {
        SliceReply::Failed { reason, .. } => return Err(reason),
        SliceReply::Done {
            seq,
            loss_sum,
            correct,
            examples,
            clipped,
        } => (seq, loss_sum, correct, examples, clipped),
    };
    if seq != asked.seq {
        return Err(format!("it answered request {seq}: expected {}", asked.seq));
    }
    let n = asked.examples as u64;
    if covered != n || correct > n || clipped > n {
        return Err(format!(
            "its answer covers {covered} examples ({correct} right, {clipped} clipped): expected {n}, and counts at most {n}"
        ));
    }
    Ok((loss_sum, correct, clipped))
}

/// A helper's reply as its slice's gradient, checked against what it was asked: a reply to
/// another request, that covers other examples, has the wrong length, is not finite or passes
/// the clipping bound (examples × C) is an error, never a wrong sum.
pub fn slice_gradient_from(
    reply: SliceReply,
    sum: Option<Vec<f32>>,
    asked: Asked,
) -> Result<BatchGradient, String> {
    let (loss_sum, correct, clipped) = done_for(reply, asked)?;
    let sum = sum.ok_or("its answer has no gradient sum")?;
    if sum.len() != asked.dim {
        return Err(format!(
            "its gradient sum has {} values: expected {}",
            sum.len(),
            asked.dim
        ));
    }
    if loss_sum < 0.0 {
        return Err(format!("its loss sum is {loss_sum}: expected 0 or more"));
    }
    let norm = sum
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() {
        return Err("its gradient sum is not finite".into());
    }
    if let Some(c) = asked.clip {
        // Each example's clipped gradient has norm ≤ C; float rounding allows a hair more.
        let bound = asked.examples as f64 * f64::from(c) * (1.0 + 1e-3);
        if norm > bound {
            return Err(format!(
                "its gradient sum has norm {norm:.4}: expected at most {bound:.4} ({} examples clipped to {c})",
                asked.examples
            ));
        }
    }
    Ok(BatchGradient {
        sum,
        loss_sum,
        correct: correct as usize,
        batch_size: asked.examples,
        clipped: clipped as usize,
    })
}

/// The largest integer a Float64Array carries exactly (2⁵³).
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A helper's reply as its distributed slice's rounded sum, checked against what it was asked:
/// this request, its examples, the model's length, whole numbers a float carries exactly, and
/// a norm that `examples` rounded gradients of norm ≤ `bound` can make.
pub fn slice_rounded_from(
    reply: SliceReply,
    integers: Option<Vec<f64>>,
    asked: Asked,
    bound: f64,
) -> Result<RoundedSum, String> {
    done_for(reply, asked)?;
    let values = integers.ok_or("its answer has no rounded sum")?;
    let whole = |v: &f64| v.is_finite() && v.fract() == 0.0 && v.abs() <= EXACT_INTEGER;
    if let Some(v) = values.iter().find(|v| !whole(v)) {
        return Err(format!(
            "its rounded sum holds {v}: expected whole numbers of at most 2^53"
        ));
    }
    let part = RoundedSum {
        sum: values.iter().map(|v| *v as i64).collect(),
        examples: asked.examples,
    };
    part.check(asked.dim, bound)?;
    Ok(part)
}

/// [`check_same`] for a distributed slice: the same key and stream give the same integers.
pub fn check_same_rounded(answer: &RoundedSum, own: &RoundedSum) -> Result<(), String> {
    if answer.examples != own.examples || answer.sum.len() != own.sum.len() {
        return Err(format!(
            "its rounded sum covers {} examples in {} values: the same slice computed here, {} in {}",
            answer.examples,
            answer.sum.len(),
            own.examples,
            own.sum.len()
        ));
    }
    first_difference("rounded sum", &answer.sum, &own.sum, |a, b| a == b)
}

/// An audit's error at the first value where `answer` and `own` (of equal lengths) are not
/// `same`, naming it.
fn first_difference<T: std::fmt::Display>(
    what: &str,
    answer: &[T],
    own: &[T],
    same: impl Fn(&T, &T) -> bool,
) -> Result<(), String> {
    match answer.iter().zip(own).position(|(a, b)| !same(a, b)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "its {what} differs from the same slice computed here: value {} of {} is {} (expected {})",
            i + 1,
            own.len(),
            answer[i],
            own[i]
        )),
    }
}

/// How a step's examples are shared among its workers, learnt from the steps before: a
/// helper whose answer kept the training worker waiting after its own slice gets a little less
/// at the next step, one whose answer was already there a little more. Equal slices kept the
/// training worker waiting 1.0–1.4 ms of a 6–8 ms step (batch 64, 2 workers in Chromium,
/// `benchmarks/pool-profile-2w.log`): a helper starts after its message arrives and its answer
/// takes ≈ 0.3 ms to come back, which equal halves do not cover — and on a device with unequal
/// cores every step would wait for the slowest.
/// Which worker computes which example changes nothing in the sum.
#[derive(Debug, Clone)]
pub struct Balance {
    /// Each worker's share relative to the training worker's (`weights[0]`, always 1).
    weights: Vec<f64>,
}

impl Balance {
    /// A wait up to this long counts as on time: the answer's own delivery (≈ 0.3 ms in
    /// Chromium) is paid whatever the split, and `performance.now()` ticks in 0.1 ms there.
    pub const ON_TIME_MS: f64 = 0.5;
    /// How much a share moves per step: ≈ 15 steps to move by a factor of 2, and a preempted
    /// step moves it by only this much.
    const STEP: f64 = 0.05;
    /// No helper's share goes above 4 times the training worker's nor below a quarter: a run
    /// of bad luck cannot leave a worker idle.
    const MAX_RATIO: f64 = 4.0;

    pub fn new(workers: usize) -> Self {
        Self {
            weights: vec![1.0; workers.max(1)],
        }
    }

    /// The training worker waited `waited_ms` for helper `worker`'s answer, from when it was
    /// ready for it (its own slice done, and the answers it read before this one), ≈ 0 when
    /// the answer was already there.
    pub fn record(&mut self, worker: usize, waited_ms: f64) {
        if worker == 0 || waited_ms.is_nan() {
            return;
        }
        if let Some(w) = self.weights.get_mut(worker) {
            let factor = if waited_ms > Self::ON_TIME_MS {
                1.0 - Self::STEP
            } else {
                1.0 + Self::STEP
            };
            *w = (*w * factor).clamp(1.0 / Self::MAX_RATIO, Self::MAX_RATIO);
        }
    }

    /// `n` examples as one contiguous range per worker, the training worker's first; a
    /// helper's range may be empty, the training worker's only when `n` is 0 (a helper's
    /// slice of a tiny batch would cost a message each way to save nothing). With equal
    /// shares these are [`learning::steps::slices`]'s (the smaller slices first).
    pub fn slices(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        let mut lens = largest_remainder(n, &self.weights);
        if n > 0 && lens[0] == 0 {
            // From the largest part (the last of equals): the others keep their order.
            let largest = (0..lens.len()).rev().max_by_key(|&i| lens[i]).unwrap_or(0);
            lens[largest] -= 1;
            lens[0] = 1;
        }
        learning::steps::contiguous(lens)
    }
}

/// `n` split in proportion to `weights` (all above 0) into whole parts that sum to `n`: each
/// part's floor, then one more for the largest remainders (on a tie, the later part).
fn largest_remainder(n: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut lens: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        fb.total_cmp(&fa).then(b.cmp(&a))
    });
    // The floors sum to at most n (each is at most its exact share), and fall short by less
    // than the number of parts.
    let short = n.saturating_sub(lens.iter().sum());
    for &i in order.iter().take(short) {
        lens[i] += 1;
    }
    lens
}

/// Which of a helper's answers are checked against the training worker's own computation of
/// the same slice ([`check_same`], [`check_same_rounded`]): for a local step's slices, the
/// first sent in new arrays and the first sent in arrays the helper gave back (the pool reuses
/// them, `Buffers`) —, the first claimed step's answer in new shared memory and the first in
/// shared memory an earlier step used — each way a slice travels —, and the first distributed
/// slice, whatever
/// came before it (a pool lives for the whole join, across runs of both kinds); once per
/// helper each (a claimed answer only once it summed a chunk: one that found none left tests
/// nothing). A helper whose sums are wrong but within the bound (a reused array not
/// refilled, a slice rounded on another stream) would otherwise go unnoticed: the round would
/// train on them — and a rounded sum's norm check bounds only the total, not one example's
/// share of it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Audit {
    /// Whether an answer has been checked, one flag per [`Way`].
    checked: [bool; 5],
}

/// How a slice travelled, for [`Audit`] (its index there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// A local step's slice in new arrays.
    Fresh,
    /// A local step's slice in arrays the helper gave back.
    Reused,
    /// A distributed step's slice.
    Rounded,
    /// A claimed step's chunks in shared memory new for the step (the first step, or one
    /// whose batch outgrew the memory).
    SharedFresh,
    /// A claimed step's chunks in shared memory an earlier step used.
    SharedReused,
}

impl Audit {
    /// Whether the answer to a slice that travelled `way` is checked.
    pub fn wanted(&self, way: Way) -> bool {
        !self.checked[way as usize]
    }

    /// Such an answer was checked and right.
    pub fn passed(&mut self, way: Way) {
        self.checked[way as usize] = true;
    }
}

/// A helper's answer against the same slice computed by the training worker: the same wasm code
/// on the same inputs gives the same bits, so any difference is an error. (A loss that is not
/// finite travels as `null` and comes back as NaN: two such losses count as the same.)
pub fn check_same(answer: &BatchGradient, own: &BatchGradient) -> Result<(), String> {
    let counts = |g: &BatchGradient| (g.batch_size, g.correct, g.clipped);
    let (a, b) = (answer.loss_sum, own.loss_sum);
    let same_loss = a.to_bits() == b.to_bits() || (!a.is_finite() && !b.is_finite());
    if counts(answer) != counts(own) || !same_loss {
        return Err(format!(
            "its answer (examples, right, clipped: {:?}; loss {}) differs from the same slice computed here ({:?}; loss {})",
            counts(answer),
            answer.loss_sum,
            counts(own),
            own.loss_sum
        ));
    }
    if answer.sum.len() != own.sum.len() {
        return Err(format!(
            "its gradient sum has {} values: expected {}",
            answer.sum.len(),
            own.sum.len()
        ));
    }
    first_difference("gradient sum", &answer.sum, &own.sum, |a, b| {
        a.to_bits() == b.to_bits()
    })
}

/// Which chunks of a step the workers' answers have summed, when the workers claimed the
/// step's chunks ([`learning::dpsgd::CHUNK`] examples each) as they came free: each chunk once,
/// and every chunk by the end. A helper is the tab's own code, but its answer is still checked
/// before it counts: a chunk summed twice or left out would change the step's sum.
#[derive(Debug)]
pub struct Coverage {
    examples: usize,
    summed: Vec<bool>,
}

impl Coverage {
    /// A step of `examples` examples, no chunk summed yet.
    pub fn new(examples: usize) -> Self {
        Self {
            examples,
            summed: vec![false; examples.div_ceil(CHUNK)],
        }
    }

    /// Marks the chunks one worker names, and returns how many examples they hold. A worker
    /// names its chunks in the order the counter handed them out (increasing); a chunk outside
    /// the step, out of that order, or already summed by another worker is an error naming it.
    pub fn take(&mut self, chunks: &[u32]) -> Result<usize, String> {
        let of = self.summed.len();
        let mut examples = 0;
        let mut last = None;
        for &c in chunks {
            let c = c as usize;
            if let Some(l) = last.filter(|l| c <= *l) {
                return Err(format!(
                    "it names chunk {c} after chunk {l}: expected the increasing order they are claimed in"
                ));
            }
            let Some(summed) = self.summed.get_mut(c) else {
                return Err(format!(
                    "it names chunk {c}: the step has {of} chunks of {CHUNK} examples"
                ));
            };
            if std::mem::replace(summed, true) {
                return Err(format!("it names chunk {c}, which another worker summed"));
            }
            examples += CHUNK.min(self.examples - c * CHUNK);
            last = Some(c);
        }
        Ok(examples)
    }

    /// The step's chunks.
    pub fn chunks(&self) -> usize {
        self.summed.len()
    }

    /// The first chunk no answer summed, if any.
    pub fn missing(&self) -> Option<usize> {
        self.summed.iter().position(|s| !s)
    }
}

/// What is checked of a claimed answer before any of its chunks is marked in `coverage`: that
/// it is a `Done` answer to this step's request `seq` — a stale answer (to a step that failed
/// here) must not take this step's chunks — and names no more chunks than the step has
/// (`named`: the length of its list, which its reply buffer's room bounded before it was read).
pub fn check_claimed(
    reply: &SliceReply,
    seq: u64,
    named: u32,
    coverage: &Coverage,
) -> Result<(), String> {
    match reply {
        SliceReply::Failed { reason, .. } => Err(reason.clone()),
        SliceReply::Done { seq: s, .. } if *s != seq => {
            Err(format!("it answered request {s}: expected {seq}"))
        }
        SliceReply::Done { .. } if named as usize > coverage.chunks() => Err(format!(
            "it names {named} chunks: the step has {}",
            coverage.chunks()
        )),
        SliceReply::Done { .. } => Ok(()),
    }
}

/// The chunks among a worker's `claims` that lie in a step of `examples` examples (its last
/// claim, the one that found none left, does not).
pub fn in_step(claims: &[usize], examples: usize) -> Vec<u32> {
    let chunks = examples.div_ceil(CHUNK);
    claims
        .iter()
        .filter(|c| **c < chunks)
        .filter_map(|c| u32::try_from(*c).ok())
        .collect()
}

/// What the user is told when a helper is lost (`index` 0 is the training worker itself).
pub fn helper_lost(index: usize, of: usize, why: &str) -> String {
    format!(
        "training worker {} of {of} failed: {why}; this round goes on on one worker",
        index + 1
    )
}

/// The least time between two progress reports of a round to the page.
pub const PROGRESS_MS: f64 = 100.0;

/// Which training steps the page hears of. Every step at batch 64 was ≈ 100 messages a second,
/// each re-rendering the page on the cores the workers train on; a person reads no more than a
/// few a second. At most one per [`PROGRESS_MS`], and always an epoch's last step (the bar
/// then shows the epoch done).
#[derive(Debug, Default)]
pub struct ProgressGate {
    last_ms: Option<f64>,
}

impl ProgressGate {
    /// Whether the step `step` of `steps_per_epoch` (0-based), taken at `now_ms`, is reported.
    pub fn due(&mut self, step: u64, steps_per_epoch: u64, now_ms: f64) -> bool {
        let epoch_done = step + 1 >= steps_per_epoch;
        let due = epoch_done || self.last_ms.is_none_or(|t| now_ms - t >= PROGRESS_MS);
        if due {
            self.last_ms = Some(now_ms);
        }
        due
    }
}

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub use web::{TrainEvent, Workers, serve_slice, train};

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
mod web {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::channel::mpsc;
    use futures::{FutureExt, StreamExt};
    use learning::client::{Fit, FitProgress};
    use learning::distributed::{RoundedSum, Rounding, rounded_slice_sum};
    use learning::dpsgd::{BatchGradient, claimed_gradient};
    use learning::parallel::slice_gradient;
    use learning::steps::StepInput;
    use learning::{LearningError, Task, TinyCnnConfig};
    use protocol::worker::{SliceReply, SliceRequest, SliceRounding, WorkerToPage};
    use wasm_bindgen::prelude::*;
    use web_sys::{ErrorEvent, MessageEvent, Worker};

    use super::shared::{
        ReplyLayout, ReplyMemory, ReplyState, SharedStep, StepMemory, mark, write_reply,
    };
    use super::{
        Asked, Audit, Balance, Coverage, MAX_POOL_FAILURES, Way, check_claimed, check_same,
        check_same_rounded, helper_lost, in_step, slice_gradient_from, slice_rounded_from,
    };
    use crate::bench::now_ms;
    use crate::session::{TrainDone, TrainJob};

    /// How long a helper may take to load, and a step's helpers to answer. A slice of a step is
    /// well under a second on a phone; a helper silent this long is lost.
    const READY_MS: u32 = 30_000;
    const STEP_MS: u32 = 60_000;
    /// How long the training worker blocks (`Atomics.wait`) for a claimed step's answer
    /// before it waits for it between events: an answer normally comes within a chunk's time
    /// (≈ 1 ms here, 10 on a slow phone), and while it blocks, the page's messages wait.
    const BLOCK_MS: f64 = 50.0;
    /// How often an answer later than that is looked for, between the helper's events.
    const POLL_MS: u32 = 2;

    fn scope() -> web_sys::DedicatedWorkerGlobalScope {
        js_sys::global().unchecked_into()
    }

    /// A timer that resolves after `ms`. Dropped earlier, it is cleared and its promise
    /// resolved: a `JsFuture` frees its callbacks only when its promise settles, so a promise
    /// left pending would leak them at every step.
    struct Deadline {
        id: i32,
        resolve: Option<js_sys::Function>,
        fired: wasm_bindgen_futures::JsFuture,
    }

    impl Deadline {
        fn new(ms: u32) -> Self {
            let (mut id, mut resolver) = (0, None);
            let promise = js_sys::Promise::new(&mut |resolve, _| {
                id = scope()
                    .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32)
                    .unwrap_or(0);
                resolver = Some(resolve);
            });
            Self {
                id,
                resolve: resolver,
                fired: promise.into(),
            }
        }
    }

    impl Future for Deadline {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            Pin::new(&mut self.fired).poll(cx).map(|_| ())
        }
    }

    impl Drop for Deadline {
        fn drop(&mut self) {
            scope().clear_timeout_with_handle(self.id);
            if let Some(resolve) = self.resolve.take() {
                let _settled = resolve.call0(&JsValue::UNDEFINED);
            }
        }
    }

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
        /// The arrays the last slice travelled in, back with the helper's answer.
        spare: Option<Buffers>,
        /// How the last slice was sent: in returned arrays, and how many image values.
        sent: Sent,
        /// Which of its answers are still to be checked.
        audit: Audit,
        /// Where it answers a claimed step, kept from step to step.
        reply: Option<ReplyMemory>,
    }

    #[derive(Debug, Default, Clone, Copy)]
    struct Sent {
        reused: bool,
        images: usize,
    }

    /// The typed arrays a slice's parameters and images travel in. The helper sends them back
    /// with its answer (its gradient sum written over the parameters) and the next step fills
    /// them again: new arrays at every step cost allocations and the garbage collections they
    /// bring, which made posting a slice take 0.2–1.7 ms at batch 64 instead of ≈ 0.5
    /// (`benchmarks/pool-profile-post.log`).
    struct Buffers {
        params: js_sys::Float32Array,
        images: js_sys::Float32Array,
    }

    impl Buffers {
        /// Arrays holding exactly `params` and `images`, in this spare's memory when it is
        /// large enough (a Poisson batch's size varies: images get a quarter more room), and
        /// whether both were.
        fn fill(spare: Option<Buffers>, params: &[f32], images: &[f32]) -> (Buffers, bool) {
            let (old_params, old_images) = match spare {
                Some(b) => (Some(b.params), Some(b.images)),
                None => (None, None),
            };
            let old_params = old_params.filter(|a| a.length() as usize == params.len());
            let bytes = images.len() * 4;
            let old_memory = old_images
                .map(|a| a.buffer())
                .filter(|b| b.byte_length() as usize >= bytes);
            let reused = old_params.is_some() && old_memory.is_some();
            let params_array = old_params
                .unwrap_or_else(|| js_sys::Float32Array::new_with_length(params.len() as u32));
            params_array.copy_from(params);
            let memory =
                old_memory.unwrap_or_else(|| js_sys::ArrayBuffer::new((bytes + bytes / 4) as u32));
            let images_array = js_sys::Float32Array::new_with_byte_offset_and_length(
                &memory,
                0,
                images.len() as u32,
            );
            images_array.copy_from(images);
            let buffers = Buffers {
                params: params_array,
                images: images_array,
            };
            (buffers, reused)
        }
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
                spare: None,
                sent: Sent::default(),
                audit: Audit::default(),
                reply: None,
            })
        }

        /// The next event, or why there is none before `deadline` (`ms` after it was set). A
        /// deadline that fired ends its pool: a fused one never fires again, so it is never
        /// waited on twice.
        async fn next(
            &mut self,
            mut deadline: &mut futures::future::Fuse<Deadline>,
            ms: u32,
        ) -> Result<Event, String> {
            futures::select! {
                e = self.events.next().fuse() => e.ok_or_else(|| "it stopped".to_string()),
                () = deadline => Err(format!("it did not answer within {} s", ms / 1000)),
            }
        }

        /// Its next message within a step ([`STEP_MS`]): anything else is why it is lost.
        async fn message(
            &mut self,
            deadline: &mut futures::future::Fuse<Deadline>,
        ) -> Result<JsValue, String> {
            match self.next(deadline, STEP_MS).await? {
                Event::Message(data) => Ok(data),
                Event::Ready => Err("it restarted".to_string()),
                Event::Error(e) => Err(e),
            }
        }

        /// Posts a slice of a step split before it: the parameters and its examples. Returns
        /// what was asked, which its answer is checked against.
        fn send(
            &mut self,
            header: &SliceRequest,
            params: &[f32],
            images: &[f32],
            labels: &[u8],
        ) -> Result<Asked, String> {
            let asked = asked(header, labels.len(), params.len());
            let (buffers, reused) = Buffers::fill(self.spare.take(), params, images);
            self.sent = Sent {
                reused,
                images: images.len(),
            };
            let Buffers { params, images } = buffers;
            let labels = js_sys::Uint8Array::from(labels);
            let msg = js_sys::Object::new();
            let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&msg, &k.into(), v).is_ok();
            let built = set("slice", &header.encode().into())
                && set("params", &params)
                && set("images", &images)
                && set("labels", &labels);
            let transfer = js_sys::Array::of3(&params.buffer(), &images.buffer(), &labels.buffer());
            if !built {
                return Err("its slice could not be built".into());
            }
            self.worker
                .post_message_with_transfer(&msg, &transfer)
                .map_err(|e| format!("its slice could not be posted: {e:?}"))?;
            Ok(asked)
        }

        /// Posts a claimed step's request: the step's parameters and batch in shared memory
        /// (`step`, the same for every helper; `reused`: memory an earlier step used), its
        /// counter, and this helper's reply buffer, set pending with room for at least `room`
        /// chunks. Returns what was asked (the whole batch).
        fn send_shared(
            &mut self,
            header: &SliceRequest,
            step: &SharedStep,
            reused: bool,
            counter: &js_sys::Int32Array,
            room: usize,
        ) -> Result<Asked, String> {
            let SharedStep {
                params,
                images,
                labels,
            } = step;
            let dim = params.length() as usize;
            let (reply, reply_reused) =
                ReplyMemory::for_step(&mut self.reply, ReplyLayout { room, dim });
            self.sent = Sent {
                reused: reused && reply_reused,
                images: images.length() as usize,
            };
            let msg = js_sys::Object::new();
            let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&msg, &k.into(), v).is_ok();
            let built = set("slice", &header.encode().into())
                && set("params", params)
                && set("images", images)
                && set("labels", labels)
                && set("claims", counter)
                && set("replyBuffer", &reply.buffer)
                && set("room", &JsValue::from(reply.layout.room as f64));
            if !built {
                return Err("its slice could not be built".into());
            }
            self.worker
                .post_message(&msg)
                .map_err(|e| format!("its slice could not be posted: {e:?}"))?;
            Ok(asked(header, labels.length() as usize, dim))
        }

        /// Waits until its reply buffer holds its answer: blocking for up to [`BLOCK_MS`],
        /// then looking every [`POLL_MS`] (a browser may stretch repeated short timers to 4 ms)
        /// while listening for its failure or its end, until the step's `deadline` (set only
        /// then: a timer costs ≈ 0.07 ms, 1 % of a step).
        async fn wait_for_answer(
            &mut self,
            deadline: &mut Option<StepDeadline>,
        ) -> Result<(), String> {
            let mut state = self.reply.as_ref().and_then(|r| r.wait(BLOCK_MS));
            while state == Some(ReplyState::Pending) {
                let mut tick = Deadline::new(POLL_MS).fuse();
                let step = deadline.get_or_insert_with(|| Deadline::new(STEP_MS).fuse());
                futures::select! {
                    event = self.next(step, STEP_MS).fuse() => return Err(match event? {
                        Event::Message(data) => failure_reason(&data),
                        Event::Ready => "it restarted".to_string(),
                        Event::Error(e) => e,
                    }),
                    () = tick => {}
                }
                state = self.reply.as_ref().and_then(ReplyMemory::state);
            }
            match state {
                Some(ReplyState::Written) => Ok(()),
                Some(ReplyState::Failed) => {
                    let step = deadline.get_or_insert_with(|| Deadline::new(STEP_MS).fuse());
                    Err(failure_reason(&self.message(step).await?))
                }
                _ => Err("its reply buffer holds no answer's state".into()),
            }
        }
    }

    /// A step's deadline for its helpers' answers ([`STEP_MS`]).
    type StepDeadline = futures::future::Fuse<Deadline>;

    /// Why a helper that answers in shared memory sent a message instead: its failure's reason.
    fn failure_reason(data: &JsValue) -> String {
        match reply_header(data) {
            Ok(SliceReply::Failed { reason, .. }) => reason,
            Ok(SliceReply::Done { .. }) => {
                "it answered in a message: expected its answer in shared memory".into()
            }
            Err(e) => e,
        }
    }

    impl Drop for Helper {
        fn drop(&mut self) {
            // No event may reach the handlers once they are freed with `self`.
            self.worker.set_onmessage(None);
            self.worker.set_onerror(None);
            self.worker.terminate();
        }
    }

    /// The helper workers of a tab's training worker (it is itself the first worker).
    struct HelperPool {
        helpers: Vec<Helper>,
        /// Whether a local step's chunks are claimed ([`Self::run_claims`]): the page is
        /// cross-origin isolated (only then may workers share memory, a SharedArrayBuffer) and
        /// the pool was not asked for the fixed split ([`Workers::with_fixed_split`]).
        claims: bool,
        /// Requests sent so far: each slice's number.
        seq: u64,
        /// How the next step is shared.
        balance: Balance,
        /// Where a claimed step's parameters and batch are written for the helpers.
        step: StepMemory,
    }

    impl HelperPool {
        /// Starts `count` helpers running this worker's own script and waits until each has
        /// loaded; `may_claim`: whether its steps' chunks may be claimed (where the page allows).
        async fn start(count: usize, may_claim: bool) -> Result<Self, String> {
            let url = scope().location().href();
            let mut helpers = Vec::with_capacity(count);
            for i in 0..count {
                let helper = Helper::start(&url)
                    .map_err(|e| format!("helper {} did not start: {e}", i + 2))?;
                helpers.push(helper);
            }
            let mut deadline = Deadline::new(READY_MS).fuse();
            for (i, h) in helpers.iter_mut().enumerate() {
                match h.next(&mut deadline, READY_MS).await {
                    Ok(Event::Ready) => {}
                    Ok(Event::Error(e)) | Err(e) => {
                        return Err(format!("helper {} did not load: {e}", i + 2));
                    }
                    Ok(Event::Message(_)) => {
                        return Err(format!("helper {} answered before loading", i + 2));
                    }
                }
            }
            let isolated = js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            Ok(Self {
                helpers,
                claims: isolated && may_claim,
                seq: 0,
                balance: Balance::new(count + 1),
                step: StepMemory::default(),
            })
        }

        /// Workers sharing a step: the helpers and the training worker.
        fn workers(&self) -> usize {
            self.helpers.len() + 1
        }

        /// A step's sum (clipped gradients, or a distributed step's rounded ones: `work`),
        /// computed in slices ([`Balance`]) or claimed chunks; `idle` runs while the helpers
        /// compute ([`step_sum`]). A helper's failure names it (the pool is then
        /// unusable); the training worker's own part failing is a [`StepError::Local`].
        async fn run<W: SliceWork>(
            &mut self,
            task: &Task,
            params: &[f32],
            input: &StepInput,
            work: &W,
            idle: &mut dyn FnMut(),
        ) -> Result<W::Part, StepError> {
            if W::CLAIMED && self.claims {
                let result = self.run_claims(task, params, input, work, idle).await;
                if result.is_err() {
                    self.forget_shared();
                }
                return result;
            }
            let model = task.model();
            let parts = self.balance.slices(input.len());
            let of = parts.len();
            let mut asked = Vec::with_capacity(of - 1);
            for (i, (helper, range)) in self.helpers.iter_mut().zip(&parts[1..]).enumerate() {
                if range.is_empty() {
                    continue;
                }
                self.seq += 1;
                let header = request(self.seq, task, input, work.rounding(range.start));
                let (images, labels) = input.slice(range.clone());
                let slice = helper
                    .send(&header, params, images, labels)
                    .map_err(|why| StepError::Helper(helper_lost(i + 1, of, &why)))?;
                asked.push((i, slice, range.clone()));
            }
            let mut total = work
                .compute(&model, params, input, parts[0].clone())
                .map_err(StepError::Local)?;
            idle();
            let mut ready = now_ms();
            let mut deadline = Deadline::new(STEP_MS).fuse();
            for (i, slice, range) in asked {
                let lost = |why: String| StepError::Helper(helper_lost(i + 1, of, &why));
                let part = self
                    .answer(i, slice, &mut deadline, work)
                    .await
                    .map_err(lost)?;
                // Each helper is timed from when its answer could have been read: a slow one
                // before it does not make it look late.
                self.balance.record(i + 1, now_ms() - ready);
                let helper = &mut self.helpers[i];
                let way = W::way(helper.sent.reused);
                if helper.audit.wanted(way) {
                    let own = work
                        .compute(&model, params, input, range)
                        .map_err(StepError::Local)?;
                    W::same(&part, &own).map_err(lost)?;
                    helper.audit.passed(way);
                }
                ready = now_ms();
                W::add(&mut total, &part).map_err(StepError::Local)?;
            }
            Ok(total)
        }

        /// After a claimed step failed: helpers may still be reading its batch or about to
        /// write their answers, so the next step gets memory of its own (a late answer then
        /// lands where nobody reads it).
        fn forget_shared(&mut self) {
            self.step = StepMemory::default();
            self.helpers.iter_mut().for_each(|h| h.reply = None);
        }

        /// A step whose chunks the workers claim as they come free ([`claimed_gradient`]), from
        /// a counter in a SharedArrayBuffer: the step ends within a chunk of every worker being
        /// done, instead of waiting for whichever one the machine slowed down
        /// (+4 % over the fixed split in 180 paired rounds, `benchmarks/paired-claims.log`).
        /// The step's parameters and batch are written once into memory all helpers read, and
        /// each helper answers in its own reply buffer ([`super::shared`]); each answer names
        /// the chunks it summed, and the answers must cover the step once ([`Coverage`]).
        /// `idle` (the step's noise, and the next step's batch) runs right after the requests
        /// are posted, while they travel and the helpers copy the batch, so that at the end the
        /// helpers wait for the training worker's last chunk only (+4 % over claims answered in
        /// messages, paired, `benchmarks/shared-claims-ab.log`).
        /// The counter is new at every step: a helper still busy with a failed step's chunks
        /// cannot take this one's, and an answer is taken only if it answers this step's
        /// request (a stale one, left by a step that failed here, marks no chunk); a failed
        /// step's shared memory is not used again ([`Self::forget_shared`]).
        async fn run_claims<W: SliceWork>(
            &mut self,
            task: &Task,
            params: &[f32],
            input: &StepInput,
            work: &W,
            idle: &mut dyn FnMut(),
        ) -> Result<W::Part, StepError> {
            let model = task.model();
            let counter = js_sys::Int32Array::new(&js_sys::SharedArrayBuffer::new(4));
            let (n, of) = (input.len(), self.workers());
            let mut coverage = Coverage::new(n);
            let asked = self.post_claims(task, params, input, &counter, coverage.chunks())?;
            idle();
            let mut own = Claims::new(&counter);
            let mut total = work
                .claimed(&model, params, input, &mut || own.next())
                .map_err(StepError::Local)?;
            coverage
                .take(&in_step(&own.taken, n))
                .map_err(|e| StepError::Local(LearningError::Worker(e)))?;
            let mut deadline = None;
            for (i, whole) in asked {
                let lost = |why: String| StepError::Helper(helper_lost(i + 1, of, &why));
                let (part, chunks) = self
                    .shared_answer(i, whole, &mut deadline, work, &mut coverage)
                    .await
                    .map_err(lost)?;
                self.audit_claimed(i, &part, &chunks, (&model, params, input), work)?;
                W::add(&mut total, &part).map_err(StepError::Local)?;
            }
            match coverage.missing() {
                // Every answer was within its bounds, yet a chunk is missing: a helper stopped
                // claiming early (which one cannot be told). The step is computed again here.
                Some(c) => Err(StepError::Helper(format!(
                    "the training workers' answers left chunk {c} of a step out; this round goes on on one worker"
                ))),
                None => Ok(total),
            }
        }

        /// Writes a claimed step's parameters and batch into the shared memory and posts its
        /// request to each helper a chunk can be left for (a step of `chunks` chunks).
        fn post_claims(
            &mut self,
            task: &Task,
            params: &[f32],
            input: &StepInput,
            counter: &js_sys::Int32Array,
            chunks: usize,
        ) -> Result<Vec<(usize, Asked)>, StepError> {
            let of = self.workers();
            let helpers = self.helpers.len().min(chunks.saturating_sub(1));
            let mut asked = Vec::with_capacity(helpers);
            if helpers == 0 {
                return Ok(asked);
            }
            let (step, reused) = self.step.fill(params, &input.images, &input.labels);
            for (i, helper) in self.helpers.iter_mut().take(helpers).enumerate() {
                self.seq += 1;
                let header = request(self.seq, task, input, None);
                let whole = helper
                    .send_shared(&header, &step, reused, counter, chunks)
                    .map_err(|why| StepError::Helper(helper_lost(i + 1, of, &why)))?;
                asked.push((i, whole));
            }
            Ok(asked)
        }

        /// Helper `i`'s answer `part` (the sum of `chunks`) against the same chunks computed
        /// here, if its [`Audit`] wants this way's answer. An answer that summed nothing (its
        /// helper came after the last chunk was taken) is no test of its arithmetic: the audit
        /// waits for one that did.
        fn audit_claimed<W: SliceWork>(
            &mut self,
            i: usize,
            part: &W::Part,
            chunks: &[u32],
            (model, params, input): (&TinyCnnConfig, &[f32], &StepInput),
            work: &W,
        ) -> Result<(), StepError> {
            let helper = &mut self.helpers[i];
            let way = if helper.sent.reused {
                Way::SharedReused
            } else {
                Way::SharedFresh
            };
            if chunks.is_empty() || !helper.audit.wanted(way) {
                return Ok(());
            }
            let mut theirs = chunks.iter().map(|c| *c as usize);
            let mut claim = || theirs.next().unwrap_or(usize::MAX);
            let own = work
                .claimed(model, params, input, &mut claim)
                .map_err(StepError::Local)?;
            let of = self.workers();
            W::same(part, &own).map_err(|why| StepError::Helper(helper_lost(i + 1, of, &why)))?;
            self.helpers[i].audit.passed(way);
            Ok(())
        }

        /// Helper `i`'s answer in its reply buffer to a step whose chunks were claimed: its
        /// request number and chunk count are checked before any chunk is marked in `coverage`
        /// ([`check_claimed`]), then its sum is checked as a slice of that many examples.
        async fn shared_answer<W: SliceWork>(
            &mut self,
            i: usize,
            whole: Asked,
            deadline: &mut Option<StepDeadline>,
            work: &W,
            coverage: &mut Coverage,
        ) -> Result<(W::Part, Vec<u32>), String> {
            let helper = &mut self.helpers[i];
            helper.wait_for_answer(deadline).await?;
            let memory = helper.reply.as_ref().ok_or("it has no reply buffer")?;
            let (reply, chunks, sum) = memory.read()?;
            check_claimed(&reply, whole.seq, chunks.len() as u32, coverage)?;
            let examples = coverage.take(&chunks)?;
            let part = work.read_shared(reply, sum, Asked { examples, ..whole })?;
            Ok((part, chunks))
        }

        /// Helper `i`'s answer to `slice`, checked.
        async fn answer<W: SliceWork>(
            &mut self,
            i: usize,
            slice: Asked,
            deadline: &mut futures::future::Fuse<Deadline>,
            work: &W,
        ) -> Result<W::Part, String> {
            let helper = &mut self.helpers[i];
            let data = helper.message(deadline).await?;
            let part = work.read(&data, slice)?;
            helper.spare = returned_buffers(&data, helper.sent.images);
            Ok(part)
        }
    }

    /// What a step's slices compute, and how their answers are read, checked and added: the
    /// clipped gradient sums of a local step ([`Clipped`]) or the rounded integer sums of a
    /// distributed one ([`Rounded`]).
    trait SliceWork {
        type Part;
        /// How a slice travelled (in returned arrays or not), for its audit.
        fn way(reused: bool) -> Way;
        /// The rounding a slice starting at example `start` is sent with.
        fn rounding(&self, start: usize) -> Option<SliceRounding>;
        /// The examples `range` of the step, computed here.
        fn compute(
            &self,
            model: &TinyCnnConfig,
            params: &[f32],
            input: &StepInput,
            range: std::ops::Range<usize>,
        ) -> Result<Self::Part, LearningError>;
        /// A helper's message as its answer to `asked`.
        fn read(&self, data: &JsValue, asked: Asked) -> Result<Self::Part, String>;
        /// A helper's answer in shared memory (a reply and its sum) as its answer to `asked`;
        /// only work that is [`Self::CLAIMED`] is answered there.
        fn read_shared(
            &self,
            _reply: SliceReply,
            _sum: Vec<f32>,
            _asked: Asked,
        ) -> Result<Self::Part, String> {
            Err("this step's answers come in messages, not in shared memory".into())
        }
        /// An audited answer against the same slice computed here.
        fn same(answer: &Self::Part, own: &Self::Part) -> Result<(), String>;
        fn add(total: &mut Self::Part, part: &Self::Part) -> Result<(), LearningError>;
        /// Whether the workers may claim this work's chunks as they come free
        /// ([`HelperPool::run_claims`]): a local step's clipped sum does not depend on which
        /// worker computed which example; a distributed step's slices round from streams of
        /// their own (the slice's first example), so its slices stay fixed.
        const CLAIMED: bool = false;
        /// The sum of the chunks `claim` hands out; asked only of work that is
        /// [`Self::CLAIMED`].
        fn claimed(
            &self,
            _model: &TinyCnnConfig,
            _params: &[f32],
            _input: &StepInput,
            _claim: &mut dyn FnMut() -> usize,
        ) -> Result<Self::Part, LearningError> {
            Err(LearningError::Worker(
                "this step's slices are fixed, not claimed".into(),
            ))
        }
    }

    /// A local step: each slice's clipped gradient sum (no clip without DP).
    struct Clipped;

    impl SliceWork for Clipped {
        type Part = BatchGradient;
        fn way(reused: bool) -> Way {
            if reused { Way::Reused } else { Way::Fresh }
        }
        fn rounding(&self, _: usize) -> Option<SliceRounding> {
            None
        }
        fn compute(
            &self,
            model: &TinyCnnConfig,
            params: &[f32],
            input: &StepInput,
            range: std::ops::Range<usize>,
        ) -> Result<BatchGradient, LearningError> {
            let (images, labels) = input.slice(range);
            slice_gradient(model, params, images, labels, input.clip)
        }
        fn read(&self, data: &JsValue, asked: Asked) -> Result<BatchGradient, String> {
            read_reply(data, asked)
        }
        fn read_shared(
            &self,
            reply: SliceReply,
            sum: Vec<f32>,
            asked: Asked,
        ) -> Result<BatchGradient, String> {
            slice_gradient_from(reply, Some(sum), asked)
        }
        fn same(answer: &BatchGradient, own: &BatchGradient) -> Result<(), String> {
            check_same(answer, own)
        }
        fn add(total: &mut BatchGradient, part: &BatchGradient) -> Result<(), LearningError> {
            total.add(part)
        }
        const CLAIMED: bool = true;
        fn claimed(
            &self,
            model: &TinyCnnConfig,
            params: &[f32],
            input: &StepInput,
            claim: &mut dyn FnMut() -> usize,
        ) -> Result<BatchGradient, LearningError> {
            let (images, labels) = (&input.images, &input.labels);
            claimed_gradient(model, params, images, labels, input.clip, claim)
        }
    }

    /// A distributed step: each slice's rounded integer sum, drawn from its own stream of the
    /// round's rounding key (the slice's first example), so a slice rounds the same anywhere.
    struct Rounded<'a>(&'a Rounding);

    impl SliceWork for Rounded<'_> {
        type Part = RoundedSum;
        fn way(_: bool) -> Way {
            Way::Rounded
        }
        fn rounding(&self, start: usize) -> Option<SliceRounding> {
            Some(SliceRounding {
                scale: self.0.scale,
                bound: self.0.bound,
                key: self.0.key(),
                stream: start as u64,
            })
        }
        fn compute(
            &self,
            model: &TinyCnnConfig,
            params: &[f32],
            input: &StepInput,
            range: std::ops::Range<usize>,
        ) -> Result<RoundedSum, LearningError> {
            let stream = range.start as u64;
            let (images, labels) = input.slice(range);
            rounded_slice_sum(model, params, images, labels, self.0, stream)
        }
        fn read(&self, data: &JsValue, asked: Asked) -> Result<RoundedSum, String> {
            let reply = reply_header(data)?;
            let integers =
                typed_field::<js_sys::Float64Array>(data, "integers").map(|a| a.to_vec());
            slice_rounded_from(reply, integers, asked, self.0.bound)
        }
        fn same(answer: &RoundedSum, own: &RoundedSum) -> Result<(), String> {
            check_same_rounded(answer, own)
        }
        fn add(total: &mut RoundedSum, part: &RoundedSum) -> Result<(), LearningError> {
            total.add(part)
        }
    }

    /// Why a step's gradient could not be computed in slices.
    enum StepError {
        /// A helper failed: what to tell the user (the step is computed again here).
        Helper(String),
        /// The training worker's own part failed: the step fails.
        Local(LearningError),
    }

    /// The workers a tab trains with: how many it wants, and the helpers once started.
    pub struct Workers {
        wanted: usize,
        /// Every step split before it, even where the page lets the workers claim chunks.
        fixed_split: bool,
        pool: Option<HelperPool>,
        /// Pools lost in this join (a helper that failed, or helpers that would not start).
        failures: u32,
        /// Whether they were warmed up ([`super::warm_up`]).
        warmed: bool,
    }

    impl Workers {
        /// `wanted` workers in all (1: no helpers).
        pub fn new(wanted: u32) -> Self {
            Self {
                wanted: (wanted as usize).max(1),
                fixed_split: false,
                pool: None,
                failures: 0,
                warmed: false,
            }
        }

        /// Whether a warm-up is due: true once per join.
        pub fn warm_up_due(&mut self) -> bool {
            !std::mem::replace(&mut self.warmed, true)
        }

        /// Workers whose local steps are split before they start (by [`Balance`]) even on a
        /// cross-origin isolated page, as a page that is not isolated trains: for the paired
        /// benchmark (`crate::bench`'s `pairedRounds`), which compares the two splits on one page.
        pub fn with_fixed_split(wanted: u32) -> Self {
            Self {
                fixed_split: true,
                ..Self::new(wanted)
            }
        }

        /// Starts the helpers if they are wanted and not running (the first round, or after
        /// a pool was lost), unless this join has lost [`MAX_POOL_FAILURES`] already. Returns a
        /// notice for the user when they cannot start: the round then trains on one worker.
        pub async fn prepare(&mut self) -> Option<String> {
            if self.wanted <= 1 || self.pool.is_some() || self.failures >= MAX_POOL_FAILURES {
                return None;
            }
            match HelperPool::start(self.wanted - 1, !self.fixed_split).await {
                Ok(pool) => {
                    self.pool = Some(pool);
                    None
                }
                Err(e) => Some(self.lost(format!(
                    "training on one worker instead of {}: {e}",
                    self.wanted
                ))),
            }
        }

        /// Drops the pool (its workers terminated) and counts it lost; returns what to tell.
        fn lost(&mut self, notice: String) -> String {
            self.pool = None;
            self.failures += 1;
            if self.failures >= MAX_POOL_FAILURES {
                format!(
                    "{notice} (helpers failed {MAX_POOL_FAILURES} times: this tab now trains on one worker until it joins again)"
                )
            } else {
                notice
            }
        }

        /// Workers sharing the next step.
        pub fn count(&self) -> usize {
            self.pool.as_ref().map_or(1, HelperPool::workers)
        }
    }

    /// The arrays a helper sent back with its answer (its sum in the parameters' array), kept
    /// for the next slice only if they are what was sent: each alone on a plain `ArrayBuffer`
    /// (not shared, whose size could change under a check), the sum's exactly its size, the
    /// images `images` values in at most 4 times their room. Anything else is dropped and the
    /// next slice travels in new arrays.
    fn returned_buffers(data: &JsValue, images: usize) -> Option<Buffers> {
        let (sum, back) = (float32_field(data, "sum")?, float32_field(data, "images")?);
        let plain = |a: &js_sys::Float32Array| {
            a.byte_offset() == 0
                && JsValue::from(a.buffer()).is_instance_of::<js_sys::ArrayBuffer>()
        };
        let fits = plain(&sum)
            && plain(&back)
            && !js_sys::Object::is(&sum.buffer(), &back.buffer())
            && sum.buffer().byte_length() == sum.byte_length()
            && back.length() as usize == images
            && back.buffer().byte_length() as usize <= 4 * images * 4;
        fits.then_some(Buffers {
            params: sum,
            images: back,
        })
    }

    /// What `header` asks of a slice of `examples` examples and a model of `dim` parameters.
    fn asked(header: &SliceRequest, examples: usize, dim: usize) -> Asked {
        Asked {
            seq: header.seq,
            examples,
            dim,
            clip: header.clip,
        }
    }

    /// Request `seq` of a step of `task` with `input`'s clipping norm (and a distributed
    /// slice's rounding).
    fn request(
        seq: u64,
        task: &Task,
        input: &StepInput,
        rounding: Option<SliceRounding>,
    ) -> SliceRequest {
        SliceRequest {
            seq,
            task: task.id.to_string(),
            clip: input.clip,
            rounding,
        }
    }

    /// A worker's claims on a step's counter, and the chunks it took.
    struct Claims<'a> {
        counter: &'a js_sys::Int32Array,
        taken: Vec<usize>,
    }

    impl<'a> Claims<'a> {
        fn new(counter: &'a js_sys::Int32Array) -> Self {
            Self {
                counter,
                taken: Vec::new(),
            }
        }

        /// The next chunk of the step, taken from its counter (a chunk no other worker has
        /// taken); past the end of any step if the counter cannot be read.
        fn next(&mut self) -> usize {
            let c = js_sys::Atomics::add(self.counter, 0, 1)
                .ok()
                .and_then(|c| usize::try_from(c).ok())
                .unwrap_or(usize::MAX);
            self.taken.push(c);
            c
        }
    }

    /// A helper's message's reply header.
    fn reply_header(data: &JsValue) -> Result<SliceReply, String> {
        let reply = js_sys::Reflect::get(data, &"reply".into())
            .ok()
            .and_then(|v| v.as_string())
            .ok_or("its answer is not a slice reply")?;
        SliceReply::decode(&reply).map_err(|e| format!("its answer: {e}"))
    }

    /// A helper's message as its slice's gradient.
    fn read_reply(data: &JsValue, asked: Asked) -> Result<BatchGradient, String> {
        let sum = float32_field(data, "sum").map(|a| a.to_vec());
        slice_gradient_from(reply_header(data)?, sum, asked)
    }

    /// A message's field `key` when it is a Float32Array.
    fn float32_field(data: &JsValue, key: &str) -> Option<js_sys::Float32Array> {
        typed_field(data, key)
    }

    /// A message's field `key` when it is a `T` (a typed array).
    fn typed_field<T: JsCast>(data: &JsValue, key: &str) -> Option<T> {
        js_sys::Reflect::get(data, &key.into())
            .ok()?
            .dyn_into::<T>()
            .ok()
    }

    /// A helper's side: computes the slice in `data` (a [`SliceRequest`] with its arrays) and
    /// answers its parent, in a message, or in its reply buffer when the request brings one (a
    /// claimed step, [`serve_shared`]). Nothing here is remembered between slices; a
    /// distributed slice's rounding draws only from the key and stream it was sent.
    pub fn serve_slice(data: &JsValue, header: &str) {
        if let Some(reply) = typed_field::<js_sys::SharedArrayBuffer>(data, "replyBuffer") {
            return serve_shared(data, header, &reply);
        }
        let (params, images) = (float32_field(data, "params"), float32_field(data, "images"));
        let (reply, payload) = match SliceRequest::decode(header) {
            Err(e) => (failed(0, format!("slice header: {e}")), Payload::None),
            Ok(req) => match SliceInputs::read(params.as_ref(), images.as_ref(), data, &req)
                .and_then(|inputs| inputs.fixed(&req))
            {
                Ok(SlicePart::Clipped(g)) => (
                    done(req.seq, g.batch_size, g.loss_sum, g.correct, g.clipped),
                    Payload::Sum(sum_array(params.as_ref(), &g.sum)),
                ),
                Ok(SlicePart::Rounded(r)) => {
                    let values: Vec<f64> = r.sum.iter().map(|v| *v as f64).collect();
                    (
                        done(req.seq, r.examples, f64::NAN, 0, 0),
                        Payload::Integers(js_sys::Float64Array::from(values.as_slice())),
                    )
                }
                Err(reason) => (failed(req.seq, reason), Payload::None),
            },
        };
        post_answer(&reply, payload, images.as_ref());
    }

    /// Posts a helper's answer to its parent: the reply and its payload, whose arrays travel
    /// (transferred, not copied) with `images`, the request's images' array given back for the
    /// next slice ([`Buffers`]) when there is a sum.
    fn post_answer(reply: &SliceReply, payload: Payload, images: Option<&js_sys::Float32Array>) {
        let msg = js_sys::Object::new();
        let set = |k: &str, v: &JsValue| {
            let _set = js_sys::Reflect::set(&msg, &k.into(), v);
        };
        set("reply", &reply.encode().into());
        let transfer = js_sys::Array::new();
        match payload {
            Payload::Sum(sum) => {
                set("sum", &sum);
                transfer.push(&sum.buffer());
                if let Some(images) = images {
                    set("images", images);
                    transfer.push(&images.buffer());
                }
            }
            Payload::Integers(integers) => {
                set("integers", &integers);
                transfer.push(&integers.buffer());
            }
            Payload::None => {}
        }
        if let Err(e) = scope().post_message_with_transfer(&msg, &transfer) {
            web_sys::console::error_2(&"helper: postMessage failed".into(), &e);
        }
    }

    /// A helper's side of a claimed step in shared memory ([`super::shared`]): takes chunks
    /// until none is left and writes its answer into `reply`. A failure is posted as a message
    /// (its reason) and then marked in `reply`, which wakes the training worker.
    fn serve_shared(data: &JsValue, header: &str, reply: &js_sys::SharedArrayBuffer) {
        let (params, images) = (float32_field(data, "params"), float32_field(data, "images"));
        let answered = SliceRequest::decode(header)
            .map_err(|e| (0, format!("slice header: {e}")))
            .and_then(|req| {
                let seq = req.seq;
                let failed = move |e: String| (seq, e);
                let layout = reply_layout(data, params.as_ref()).map_err(failed)?;
                let counter = typed_field::<js_sys::Int32Array>(data, "claims")
                    .ok_or_else(|| failed("slice: expected its claims' counter".into()))?;
                let inputs = SliceInputs::read(params.as_ref(), images.as_ref(), data, &req);
                let (g, chunks) = inputs
                    .and_then(|i| i.claimed(&req, &counter))
                    .map_err(failed)?;
                write_reply(reply, layout, seq, &g, &chunks).map_err(failed)
            });
        if let Err((seq, reason)) = answered {
            post_answer(&failed(seq, reason), Payload::None, None);
            mark(reply, ReplyState::Failed);
        }
    }

    /// The most chunks a reply buffer is asked to have room for: a step of 2²⁰ examples.
    const MAX_ROOM: f64 = (1 << 17) as f64;

    /// The layout of a request's reply buffer: room for the chunks it says (a whole number up to
    /// [`MAX_ROOM`]) and a sum of the parameters' length.
    fn reply_layout(
        data: &JsValue,
        params: Option<&js_sys::Float32Array>,
    ) -> Result<ReplyLayout, String> {
        let room = js_sys::Reflect::get(data, &"room".into())
            .ok()
            .and_then(|v| v.as_f64())
            .filter(|r| r.fract() == 0.0 && (0.0..=MAX_ROOM).contains(r))
            .ok_or_else(|| {
                format!("slice: expected room as a whole number of chunks up to {MAX_ROOM}")
            })?;
        let dim = params
            .ok_or("slice: expected params as a Float32Array")?
            .length();
        Ok(ReplyLayout {
            room: room as usize,
            dim: dim as usize,
        })
    }

    fn done(
        seq: u64,
        examples: usize,
        loss_sum: f64,
        correct: usize,
        clipped: usize,
    ) -> SliceReply {
        SliceReply::Done {
            seq,
            loss_sum,
            correct: correct as u64,
            examples: examples as u64,
            clipped: clipped as u64,
        }
    }

    fn failed(seq: u64, reason: String) -> SliceReply {
        SliceReply::Failed { seq, reason }
    }

    /// What a helper computed for a slice.
    enum SlicePart {
        Clipped(BatchGradient),
        Rounded(RoundedSum),
    }

    /// The array a helper's answer carries beside its header.
    enum Payload {
        /// A clipped sum.
        Sum(js_sys::Float32Array),
        Integers(js_sys::Float64Array),
        None,
    }

    /// The sum in the parameters' array when it has the sum's length (it has: the model's),
    /// else in a new one.
    fn sum_array(params: Option<&js_sys::Float32Array>, sum: &[f32]) -> js_sys::Float32Array {
        match params.filter(|a| a.length() as usize == sum.len()) {
            Some(a) => {
                a.copy_from(sum);
                a.clone()
            }
            None => js_sys::Float32Array::from(sum),
        }
    }

    /// A request's inputs, copied out of its message and checked: the task's model, the
    /// parameters, and the examples (pixels per label as the task says, labels below its class
    /// count). In a claimed step they are read from shared memory, which this copies first.
    struct SliceInputs {
        model: TinyCnnConfig,
        params: Vec<f32>,
        images: Vec<f32>,
        labels: Vec<u8>,
    }

    impl SliceInputs {
        fn read(
            params: Option<&js_sys::Float32Array>,
            images: Option<&js_sys::Float32Array>,
            data: &JsValue,
            req: &SliceRequest,
        ) -> Result<Self, String> {
            let task = learning::task::find(&req.task).map_err(|e| e.to_string())?;
            let floats = |a: Option<&js_sys::Float32Array>, k: &str| {
                a.map(|a| a.to_vec())
                    .ok_or(format!("slice: expected {k} as a Float32Array"))
            };
            let (params, images) = (floats(params, "params")?, floats(images, "images")?);
            let labels = typed_field::<js_sys::Uint8Array>(data, "labels")
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
            Ok(Self {
                model,
                params,
                images,
                labels,
            })
        }

        /// A fixed slice's sum: clipped, or rounded with the stream it was sent.
        fn fixed(&self, req: &SliceRequest) -> Result<SlicePart, String> {
            let (model, params) = (&self.model, &self.params);
            let (images, labels) = (&self.images, &self.labels);
            let Some(r) = &req.rounding else {
                return slice_gradient(model, params, images, labels, req.clip)
                    .map(SlicePart::Clipped)
                    .map_err(|e| e.to_string());
            };
            let clip = req.clip.ok_or("a rounded slice has no clipping norm")?;
            let rounding =
                Rounding::new(clip, r.scale, r.bound, r.key).map_err(|e| e.to_string())?;
            rounded_slice_sum(model, params, images, labels, &rounding, r.stream)
                .map(SlicePart::Rounded)
                .map_err(|e| e.to_string())
        }

        /// A claimed step's part: the sum of the chunks taken from `counter` until none is
        /// left, and which they were.
        fn claimed(
            &self,
            req: &SliceRequest,
            counter: &js_sys::Int32Array,
        ) -> Result<(BatchGradient, Vec<u32>), String> {
            if req.rounding.is_some() {
                return Err(
                    "a slice both claimed and rounded: a distributed step's slices are fixed"
                        .into(),
                );
            }
            let mut claims = Claims::new(counter);
            let mut claim = || claims.next();
            let (model, params) = (&self.model, &self.params);
            let g = claimed_gradient(
                model,
                params,
                &self.images,
                &self.labels,
                req.clip,
                &mut claim,
            )
            .map_err(|e| e.to_string())?;
            Ok((g, in_step(&claims.taken, self.labels.len())))
        }
    }

    /// What [`train`] reports as it goes.
    pub enum TrainEvent {
        /// A step was taken; examples per second so far this round.
        Step(FitProgress, Option<f64>),
        /// The helpers were lost: what to tell the user (the round goes on on one worker).
        HelpersLost(String),
    }

    /// Runs a training job step by step, each step's gradient spread over the helpers (when
    /// they run) and computed here otherwise. A step whose helpers fail is computed again here
    /// from the same batch; the pool is dropped for the rest of the round.
    pub async fn train(
        mut job: TrainJob,
        workers: &mut Workers,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> TrainDone {
        let started = js_sys::Date::now();
        let result = async {
            let task = job.task;
            let fit =
                learning::start_fit(task, &job.global, &job.config, &job.data, &mut job.privacy)?;
            let mut steps = match fit {
                Fit::Distributed(fit) => {
                    let input = fit.input(task, &job.data);
                    let work = Rounded(fit.rounding());
                    let idle = &mut || {};
                    let part = step_sum(task, fit.params(), &input, &work, workers, idle, on_event);
                    let part = part.await?;
                    let rate = rate_since(started, input.len());
                    let res = fit.finish(part, &mut job.privacy)?;
                    on_event(TrainEvent::Step(FitProgress::one_step(), rate));
                    return Ok(res);
                }
                Fit::Steps(steps) => steps,
            };
            let (mut seen, mut ahead) = (0usize, None);
            while let Some(input) =
                steps.next_input_or(ahead.take(), task, &job.data, &mut job.privacy.rng)
            {
                // The step's noise, then the next step's batch, are drawn while the helpers
                // compute (the same draws, in the same order, as `apply` and `next_input`
                // would make after them), once: a step computed again after a helper failed
                // keeps them.
                let mut noise = None;
                let (rng, data) = (&mut job.privacy.rng, &job.data);
                let draw = &mut || {
                    if noise.is_none() {
                        noise = steps.draw_noise(rng);
                        ahead = steps.sample_ahead(task, data, rng, noise.as_ref());
                    }
                };
                let g = step_sum(
                    task,
                    steps.params(),
                    &input,
                    &Clipped,
                    workers,
                    draw,
                    on_event,
                );
                let g = g.await?;
                seen += input.len();
                let progress = steps.apply_noised(g, noise, &mut job.privacy)?;
                on_event(TrainEvent::Step(progress, rate_since(started, seen)));
                next_call().await;
            }
            steps.finish(&mut job.privacy)
        }
        .await;
        job.done(result)
    }

    /// Returns to JavaScript and comes back in a microtask (no event is handled in between: a
    /// message still waits for the round's end, as before). On one worker nothing in a round
    /// awaits, so the whole round would run in one call of this future's code, and a wasm
    /// function's optimised code is only used from its next call (V8 has no on-stack
    /// replacement for wasm): without this, a round ran in the baseline compiler's code from
    /// start to end (`benchmarks/noise-ahead-ab.log`).
    async fn next_call() {
        let resolved = js_sys::Promise::resolve(&JsValue::UNDEFINED);
        // A resolved promise cannot fail.
        let _ = wasm_bindgen_futures::JsFuture::from(resolved).await;
    }

    /// Examples per second since `started` (`Date.now()` milliseconds); none before any time
    /// has passed.
    fn rate_since(started: f64, examples: usize) -> Option<f64> {
        let seconds = (js_sys::Date::now() - started) / 1000.0;
        (seconds > 0.0).then(|| examples as f64 / seconds)
    }

    /// One step's sum (`work`): on the helpers when they run, else (or when they fail) here,
    /// from the same examples. `idle` runs while the helpers compute: after the training
    /// worker's own slice, or before its own chunks when they are claimed (and after its own sum
    /// when it computes alone): work of the step that needs no gradient. A step computed again
    /// here after its helpers failed calls it again: it must do its work only once.
    async fn step_sum<W: SliceWork>(
        task: &Task,
        params: &[f32],
        input: &StepInput,
        work: &W,
        workers: &mut Workers,
        idle: &mut dyn FnMut(),
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<W::Part, LearningError> {
        if let Some(pool) = workers.pool.as_mut().filter(|_| !input.is_empty()) {
            match pool.run(task, params, input, work, idle).await {
                Ok(part) => return Ok(part),
                Err(StepError::Local(e)) => return Err(e),
                Err(StepError::Helper(why)) => {
                    on_event(TrainEvent::HelpersLost(workers.lost(why)));
                }
            }
        }
        let part = work.compute(&task.model(), params, input, 0..input.len());
        idle();
        part
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(seq: u64, examples: u64, correct: u64, clipped: u64) -> SliceReply {
        SliceReply::Done {
            seq,
            loss_sum: 1.5,
            correct,
            examples,
            clipped,
        }
    }

    /// Attacks a broken helper could make on a step whose chunks were claimed: each is refused
    /// with the chunk it named; honest answers count their examples (a partial last chunk too).
    #[test]
    fn claimed_chunks_count_once_and_cover_the_step() {
        let n = 3 * CHUNK + 5; // chunks 0..=3, the last of 5 examples
        let mut step = Coverage::new(n);
        assert_eq!(
            step.take(&in_step(&[0, 2, 4], n)),
            Ok(2 * CHUNK),
            "own claims"
        );
        assert_eq!(step.missing(), Some(1));
        let refused = [
            (&[1, 1][..], "chunk 1 after chunk 1"),
            (&[3, 1], "chunk 1 after chunk 3"),
            (&[4], "chunk 4: the step has 4 chunks"),
            (&[u32::MAX], "the step has 4 chunks"),
            (&[2], "chunk 2, which another worker summed"),
        ];
        for (chunks, says) in refused {
            let mut attacked = Coverage::new(n);
            attacked.take(&[0, 2]).expect("honest");
            let err = attacked.take(chunks).expect_err(says);
            assert!(err.contains(says), "{chunks:?}: {err}");
        }
        assert_eq!(step.take(&[1, 3]), Ok(CHUNK + 5), "the partial last chunk");
        assert_eq!(step.missing(), None);
        assert!(step.take(&[3]).is_err(), "a chunk twice across answers");
        assert_eq!(
            Coverage::new(0).missing(),
            None,
            "an empty step has nothing to cover"
        );
    }

    /// Attack: a claimed answer to an earlier request (a step that failed here, its answer still
    /// queued), or one naming more chunks than the step has, is refused before it marks any.
    #[test]
    fn a_claimed_answer_is_checked_before_its_chunks_count() {
        let step = Coverage::new(2 * CHUNK);
        let answer = |seq| done(seq, CHUNK as u64, 0, 0);
        assert_eq!(check_claimed(&answer(7), 7, 1, &step), Ok(()));
        let stale = check_claimed(&answer(6), 7, 1, &step).expect_err("stale");
        assert!(stale.contains("answered request 6: expected 7"), "{stale}");
        let many = check_claimed(&answer(7), 7, 3, &step).expect_err("too many");
        assert!(many.contains("names 3 chunks: the step has 2"), "{many}");
        let failed = SliceReply::Failed {
            seq: 7,
            reason: "out of memory".into(),
        };
        assert_eq!(
            check_claimed(&failed, 7, 0, &step),
            Err("out of memory".into())
        );
        assert_eq!(step.missing(), Some(0), "nothing marked");
    }

    const ASKED: Asked = Asked {
        seq: 9,
        examples: 3,
        dim: 4,
        clip: Some(1.0),
    };

    /// Attacks a broken or confused helper could make on the sum: each is refused, with what
    /// was expected.
    #[test]
    fn a_reply_is_taken_only_for_the_slice_it_was_asked() {
        let g = slice_gradient_from(done(9, 3, 2, 1), Some(vec![0.5; 4]), ASKED).expect("fits");
        assert_eq!((g.batch_size, g.correct, g.clipped), (3, 2, 1));
        // Norm 3 for 3 examples clipped to 1: at the bound, taken.
        assert!(slice_gradient_from(done(9, 3, 2, 1), Some(vec![1.5; 4]), ASKED).is_ok());
        let refused = [
            (
                done(8, 3, 2, 1),
                Some(vec![0.0; 4]),
                "answered request 8: expected 9",
            ),
            (done(9, 4, 2, 1), Some(vec![0.0; 4]), "covers 4 examples"),
            (done(9, 3, 9, 1), Some(vec![0.0; 4]), "9 right"),
            (done(9, 3, 2, 7), Some(vec![0.0; 4]), "7 clipped"),
            (
                done(9, 3, 2, 1),
                Some(vec![0.0; 5]),
                "has 5 values: expected 4",
            ),
            (done(9, 3, 2, 1), None, "no gradient sum"),
            (done(9, 3, 2, 1), Some(vec![f32::NAN; 4]), "not finite"),
            (
                SliceReply::Done {
                    seq: 9,
                    loss_sum: -1.0,
                    correct: 2,
                    examples: 3,
                    clipped: 1,
                },
                Some(vec![0.0; 4]),
                "loss sum is -1: expected 0 or more",
            ),
            (
                done(9, 3, 2, 1),
                Some(vec![2.0; 4]),
                "norm 4.0000: expected at most 3.0030",
            ),
            (
                SliceReply::Failed {
                    seq: 9,
                    reason: "out of memory".into(),
                },
                None,
                "out of memory",
            ),
        ];
        for (reply, sum, says) in refused {
            let err = slice_gradient_from(reply, sum, ASKED).expect_err(says);
            assert!(err.contains(says), "{err} (expected: {says})");
        }
        // Without DP there is no bound to check.
        let plain = Asked {
            clip: None,
            ..ASKED
        };
        assert!(slice_gradient_from(done(9, 3, 2, 0), Some(vec![2.0; 4]), plain).is_ok());
    }

    /// A distributed slice's answer: whole numbers a float carries exactly, the model's
    /// length, the slice's examples, and a norm its examples' rounded gradients (each ≤ the
    /// bound) can make — else the pool is dropped and the step computed here.
    #[test]
    fn a_rounded_reply_is_taken_only_if_its_examples_can_make_it() {
        let (bound, reply) = (10.0, || done(9, 3, 0, 0));
        // Norm 30 = 3 examples × 10: at the bound, taken.
        let r = slice_rounded_from(reply(), Some(vec![15.0; 4]), ASKED, bound).expect("fits");
        assert_eq!((r.sum, r.examples), (vec![15; 4], 3));
        let refused = [
            (
                done(8, 3, 0, 0),
                Some(vec![0.0; 4]),
                "answered request 8: expected 9",
            ),
            (done(9, 2, 0, 0), Some(vec![0.0; 4]), "covers 2 examples"),
            (reply(), None, "no rounded sum"),
            (reply(), Some(vec![0.0; 5]), "has 5 values: expected 4"),
            (
                reply(),
                Some(vec![0.5, 0.0, 0.0, 0.0]),
                "holds 0.5: expected whole numbers",
            ),
            (reply(), Some(vec![f64::NAN; 4]), "holds NaN"),
            (reply(), Some(vec![f64::INFINITY; 4]), "holds inf"),
            (
                reply(),
                Some(vec![2f64.powi(60), 0.0, 0.0, 0.0]),
                "of at most 2^53",
            ),
            (
                reply(),
                Some(vec![16.0; 4]),
                "norm 32.0: expected at most 30.0",
            ),
        ];
        for (reply, integers, says) in refused {
            let err = slice_rounded_from(reply, integers, ASKED, bound).expect_err(says);
            assert!(err.contains(says), "{err} (expected: {says})");
        }
    }

    #[test]
    fn an_audited_rounded_answer_must_be_the_same_integers() {
        let own = RoundedSum {
            sum: vec![3, -2, 0],
            examples: 2,
        };
        assert!(check_same_rounded(&own.clone(), &own).is_ok());
        let mut off = own.clone();
        off.sum[1] = -1;
        let err = check_same_rounded(&off, &own).unwrap_err();
        assert!(err.contains("value 2 of 3 is -1 (expected -2)"), "{err}");
        let fewer = RoundedSum {
            examples: 1,
            ..own.clone()
        };
        assert!(check_same_rounded(&fewer, &own).is_err());
    }

    /// A helper's answer is taken at its first steps only if it is the training worker's own
    /// computation to the bit: a sum off by one value, a loss, a count.
    #[test]
    fn an_audited_answer_must_match_to_the_bit() {
        let own = BatchGradient {
            sum: vec![0.5, -0.25, 1.0],
            loss_sum: 2.5,
            correct: 2,
            batch_size: 3,
            clipped: 1,
        };
        assert!(check_same(&own.clone(), &own).is_ok());
        let mut off = own.clone();
        off.sum[1] = -0.250_000_03;
        let err = check_same(&off, &own).expect_err("one value off");
        assert!(
            err.contains("value 2 of 3 is -0.25000003 (expected -0.25)"),
            "{err}"
        );
        for change in [
            |g: &mut BatchGradient| g.loss_sum = 2.500_000_1,
            |g: &mut BatchGradient| g.correct = 3,
            |g: &mut BatchGradient| g.clipped = 0,
            |g: &mut BatchGradient| g.sum.push(0.0),
            |g: &mut BatchGradient| g.loss_sum = f64::NAN,
        ] {
            let mut off = own.clone();
            change(&mut off);
            assert!(check_same(&off, &own).is_err(), "{off:?}");
        }
        // A loss that is not finite comes back as NaN (JSON has no infinity): the same.
        let mut inf = own.clone();
        inf.loss_sum = f64::INFINITY;
        let mut nan = own.clone();
        nan.loss_sum = f64::NAN;
        assert!(check_same(&nan, &inf).is_ok());
    }

    /// Each way a slice travels is checked once per helper: new arrays, then returned ones,
    /// whichever comes first; nothing after both passed.
    #[test]
    fn a_helper_is_audited_once_each_way_a_slice_travels() {
        let mut audit = Audit::default();
        assert!(audit.wanted(Way::Fresh) && audit.wanted(Way::Reused));
        audit.passed(Way::Fresh);
        assert!(!audit.wanted(Way::Fresh), "new arrays: checked once");
        assert!(audit.wanted(Way::Reused), "returned arrays: not yet");
        audit.passed(Way::Reused);
        assert!(!audit.wanted(Way::Fresh) && !audit.wanted(Way::Reused));
        // A pool that trained local rounds still checks its first distributed slice.
        assert!(audit.wanted(Way::Rounded));
        audit.passed(Way::Rounded);
        assert!(!audit.wanted(Way::Rounded));
        // In the other order too: returned arrays checked first, new ones still are.
        let mut audit = Audit::default();
        audit.passed(Way::Reused);
        assert!(audit.wanted(Way::Fresh) && !audit.wanted(Way::Reused));
        let mut audit = Audit::default();
        audit.passed(Way::Rounded);
        assert!(audit.wanted(Way::Fresh) && audit.wanted(Way::Reused));
        // A claimed step's answers: the first in new shared memory, then the first in memory an
        // earlier step used (a buffer not rewritten would show only there), each once.
        let mut audit = Audit::default();
        audit.passed(Way::Fresh);
        assert!(audit.wanted(Way::SharedFresh) && audit.wanted(Way::SharedReused));
        audit.passed(Way::SharedFresh);
        assert!(
            !audit.wanted(Way::SharedFresh),
            "new shared memory: checked once"
        );
        assert!(
            audit.wanted(Way::SharedReused),
            "reused shared memory: not yet"
        );
        audit.passed(Way::SharedReused);
        assert!(!audit.wanted(Way::SharedReused) && audit.wanted(Way::Reused));
    }

    fn lens(ranges: &[std::ops::Range<usize>]) -> Vec<usize> {
        ranges.iter().map(|r| r.len()).collect()
    }

    /// Every example is in exactly one slice, in order, whatever the shares.
    #[test]
    fn the_slices_cover_every_example_once() {
        let mut b = Balance::new(3);
        for step in 0..40 {
            b.record(1 + step % 2, if step % 3 == 0 { 0.0 } else { 9.0 });
            for n in 0..70 {
                let s = b.slices(n);
                assert_eq!(s.len(), 3);
                let covered: Vec<usize> = s.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(covered, (0..n).collect::<Vec<_>>(), "step {step}, {n}");
            }
        }
    }

    /// Before anything is learnt the slices are `learning::steps::slices`'s (with an empty
    /// range for each helper a batch smaller than the workers leaves out).
    #[test]
    fn the_first_step_s_slices_are_equal() {
        for workers in 1..5 {
            for n in 0..70 {
                let mut got = Balance::new(workers).slices(n);
                got.retain(|r| !r.is_empty());
                assert_eq!(
                    got,
                    learning::steps::slices(n, workers),
                    "{n} over {workers}"
                );
            }
        }
    }

    /// The training worker always has a slice of a batch that is not empty, however small the
    /// batch and however fast the helpers.
    #[test]
    fn the_training_worker_always_has_a_slice() {
        let mut fast_helpers = Balance::new(3);
        for _ in 0..100 {
            fast_helpers.record(1, 0.0);
            fast_helpers.record(2, 0.0);
        }
        for b in [Balance::new(2), Balance::new(4), fast_helpers] {
            assert!(b.slices(0).iter().all(|r| r.is_empty()));
            for n in 1..12 {
                assert!(!b.slices(n)[0].is_empty(), "{n}: {:?}", b.slices(n));
            }
        }
    }

    /// A helper that keeps the training worker waiting loses examples step by step, one that
    /// is always early gains them; neither goes past 4 times the training worker's share or
    /// below a quarter; a wait that is not a number teaches nothing.
    #[test]
    fn shares_follow_who_was_waited_for_within_bounds() {
        let mut b = Balance::new(3);
        for _ in 0..5 {
            b.record(1, 3.0); // late
            b.record(2, 0.1); // on time
        }
        let l = lens(&b.slices(300));
        assert!(l[1] < 100 && l[2] > 100 && l[0] < 100, "{l:?}");
        for _ in 0..200 {
            b.record(1, 50.0);
            b.record(2, 0.0);
        }
        // Weights 1, 1/4, 4.
        assert_eq!(lens(&b.slices(105)), [20, 5, 80]);
        let before = b.slices(105);
        b.record(1, f64::NAN);
        b.record(0, 9.0);
        b.record(7, 9.0);
        assert_eq!(b.slices(105), before);
        // A late answer within the delivery allowance is on time.
        let mut b = Balance::new(2);
        b.record(1, Balance::ON_TIME_MS);
        assert!(lens(&b.slices(1000))[1] > 500);
    }

    /// A round of 100 steps in 1 s reaches the page as ≈ 10 reports: the first step, one per
    /// 100 ms, and each epoch's last step even when it follows the one before at once.
    #[test]
    fn the_page_hears_of_a_step_at_most_every_100_ms_and_of_each_epoch_s_end() {
        let mut gate = ProgressGate::default();
        let shown: Vec<u64> = (0..100u64)
            .filter(|&step| gate.due(step % 50, 50, step as f64 * 10.0))
            .collect();
        assert_eq!(shown, [0, 10, 20, 30, 40, 49, 59, 69, 79, 89, 99]);
    }

    #[test]
    fn a_lost_helper_is_named_for_the_user() {
        assert_eq!(
            helper_lost(1, 3, "it did not answer within 60 s"),
            "training worker 2 of 3 failed: it did not answer within 60 s; this round goes on on one worker"
        );
    }
}
