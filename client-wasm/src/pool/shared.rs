//! A claimed step's batch and answers in memory the workers share, where the page is
//! cross-origin isolated (the only pages whose workers claim chunks: the claims' counter is
//! shared memory too). The training worker writes the step's parameters and batch once for all
//! helpers (a message would copy them for each), and each helper writes its answer into its own
//! reply buffer and wakes the training worker with `Atomics.notify`, which waits for it with
//! `Atomics.wait`: an answer is read within microseconds of being written, where a message
//! reached the training worker ≈ 0.6 ms after it was posted (`benchmarks/claims-profile.log`),
//! a tenth of a step at batch 64 on 2 workers.
//!
//! A reply buffer: the state word (pending, written or failed), the answer's header in 32-bit
//! words, its loss sum (an f64), the chunks it names and its gradient sum. The layout is fixed
//! by the room for chunks and the model's size ([`ReplyLayout`]); the training worker reads a
//! reply only with its own layout, so a count a helper writes is bounded before it is used.

use protocol::worker::SliceReply;

/// Where a reply's state word is (an index in its 32-bit words).
pub const STATE: u32 = 0;
/// The header's words after the state: the request's number (low, high), examples, right,
/// clipped, and how many chunks the answer names.
pub const WORDS: usize = 6;
/// The loss sum's byte: after the state and header words, 8-aligned.
pub const LOSS_BYTE: usize = 32;
/// The chunk list's first byte.
pub const CHUNKS_BYTE: usize = LOSS_BYTE + 8;

/// A reply buffer's state: the training worker sets it pending before it asks, and the helper
/// sets it once its answer is written, or once it failed (then its reason comes in a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyState {
    Pending = 0,
    Written = 1,
    Failed = 2,
}

impl ReplyState {
    /// The state a word holds; any other value is no state a helper writes.
    pub fn from_word(word: i32) -> Option<Self> {
        match word {
            0 => Some(Self::Pending),
            1 => Some(Self::Written),
            2 => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Where a reply's parts lie in its buffer: room for `room` chunks and a sum of `dim` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLayout {
    pub room: usize,
    pub dim: usize,
}

impl ReplyLayout {
    /// The gradient sum's byte offset (after the chunk list, 4-aligned as it is).
    pub fn sum_byte(&self) -> usize {
        CHUNKS_BYTE + 4 * self.room
    }

    /// The bytes a buffer needs for this layout.
    pub fn bytes(&self) -> usize {
        self.sum_byte() + 4 * self.dim
    }
}

/// An answer's header words (after the state word), or why it cannot be written: a count past
/// what a 32-bit word holds.
pub fn header_words(
    seq: u64,
    examples: usize,
    correct: usize,
    clipped: usize,
    named: usize,
) -> Result<[i32; WORDS], String> {
    let word = |v: usize, what: &str| {
        u32::try_from(v)
            .map(|v| v as i32)
            .map_err(|_| format!("its {what} ({v}) do not fit a 32-bit word"))
    };
    Ok([
        seq as u32 as i32,
        (seq >> 32) as u32 as i32,
        word(examples, "examples")?,
        word(correct, "examples right")?,
        word(clipped, "examples clipped")?,
        word(named, "chunks")?,
    ])
}

/// The reply a header's words and loss sum make, and how many chunks it names (unchecked: the
/// caller bounds it by its layout's room before reading the list).
pub fn reply_from_words(words: [i32; WORDS], loss_sum: f64) -> (SliceReply, u32) {
    let w = |i: usize| u64::from(words[i] as u32);
    let reply = SliceReply::Done {
        seq: w(0) | (w(1) << 32),
        loss_sum,
        examples: w(2),
        correct: w(3),
        clipped: w(4),
    };
    (reply, words[5] as u32)
}

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub use web::{ReplyMemory, SharedStep, StepMemory, mark, write_reply};

#[cfg(all(feature = "browser", target_arch = "wasm32"))]
mod web {
    use js_sys::{
        Atomics, Float32Array, Float64Array, Int32Array, SharedArrayBuffer, Uint8Array, Uint32Array,
    };
    use learning::dpsgd::BatchGradient;
    use protocol::worker::SliceReply;

    use super::{
        CHUNKS_BYTE, LOSS_BYTE, ReplyLayout, ReplyState, STATE, WORDS, header_words,
        reply_from_words,
    };

    /// A shared buffer of at least `bytes`: `slot`'s if it is large enough (and `true`), else a
    /// new one with a quarter more room (a Poisson batch's size varies from step to step).
    fn at_least(slot: &mut Option<SharedArrayBuffer>, bytes: usize) -> (SharedArrayBuffer, bool) {
        match slot {
            Some(b) if b.byte_length() as usize >= bytes => (b.clone(), true),
            _ => {
                let b = SharedArrayBuffer::new((bytes + bytes / 4).max(8) as u32);
                *slot = Some(b.clone());
                (b, false)
            }
        }
    }

    /// A claimed step's parameters, images and labels: views of [`StepMemory`].
    pub struct SharedStep {
        pub params: Float32Array,
        pub images: Float32Array,
        pub labels: Uint8Array,
    }

    /// The memory a claimed step's parameters and batch are written to once, for every helper.
    /// It is written only between steps: every helper has answered the last step, or the step
    /// failed and its memory was dropped (`HelperPool::forget_shared`); a helper copies what it
    /// reads before it computes.
    #[derive(Default)]
    pub struct StepMemory {
        params: Option<SharedArrayBuffer>,
        images: Option<SharedArrayBuffer>,
        labels: Option<SharedArrayBuffer>,
    }

    impl StepMemory {
        /// Views of exactly `params`, `images` and `labels`, written into this memory, and
        /// whether all of it is memory an earlier step used.
        pub fn fill(
            &mut self,
            params: &[f32],
            images: &[f32],
            labels: &[u8],
        ) -> (SharedStep, bool) {
            let floats = |slot: &mut Option<SharedArrayBuffer>, values: &[f32]| {
                let (buffer, reused) = at_least(slot, values.len() * 4);
                let view =
                    Float32Array::new_with_byte_offset_and_length(&buffer, 0, values.len() as u32);
                view.copy_from(values);
                (view, reused)
            };
            let (params, params_reused) = floats(&mut self.params, params);
            let (images, images_reused) = floats(&mut self.images, images);
            let (buffer, labels_reused) = at_least(&mut self.labels, labels.len());
            let view = Uint8Array::new_with_byte_offset_and_length(&buffer, 0, labels.len() as u32);
            view.copy_from(labels);
            let step = SharedStep {
                params,
                images,
                labels: view,
            };
            (step, params_reused && images_reused && labels_reused)
        }
    }

    /// A helper's reply buffer, as the training worker keeps it from step to step.
    pub struct ReplyMemory {
        pub buffer: SharedArrayBuffer,
        pub layout: ReplyLayout,
        state: Int32Array,
    }

    impl ReplyMemory {
        /// `slot`'s buffer if it holds `layout`'s chunks and sum (and `true`), else a new one;
        /// set pending.
        pub fn for_step(
            slot: &mut Option<ReplyMemory>,
            layout: ReplyLayout,
        ) -> (&ReplyMemory, bool) {
            let fits = slot
                .as_ref()
                .is_some_and(|r| r.layout.dim == layout.dim && r.layout.room >= layout.room);
            if !fits {
                *slot = None;
            }
            let reply = slot.get_or_insert_with(|| {
                let buffer = SharedArrayBuffer::new(layout.bytes() as u32);
                let state = Int32Array::new_with_byte_offset_and_length(&buffer, 0, 1);
                ReplyMemory {
                    buffer,
                    layout,
                    state,
                }
            });
            let _ = Atomics::store(&reply.state, STATE, ReplyState::Pending as i32);
            (reply, fits)
        }

        /// The state, after waiting up to `ms` for it to leave pending (this thread blocks:
        /// only for a wait that is normally well under a chunk's time).
        pub fn wait(&self, ms: f64) -> Option<ReplyState> {
            let _ = Atomics::wait_with_timeout(&self.state, STATE, ReplyState::Pending as i32, ms);
            self.state()
        }

        /// The state now (none: a word no helper writes).
        pub fn state(&self) -> Option<ReplyState> {
            Atomics::load(&self.state, STATE)
                .ok()
                .and_then(ReplyState::from_word)
        }

        /// The written answer: its reply, the chunks it names and its sum, copied out of the
        /// shared memory before anything checks them. The chunk count is bounded by this
        /// buffer's room before the list is read.
        pub fn read(&self) -> Result<(SliceReply, Vec<u32>, Vec<f32>), String> {
            let words = Int32Array::new_with_byte_offset_and_length(&self.buffer, 4, WORDS as u32);
            let mut header = [0i32; WORDS];
            words.copy_to(&mut header);
            let loss =
                Float64Array::new_with_byte_offset_and_length(&self.buffer, LOSS_BYTE as u32, 1);
            let (reply, named) = reply_from_words(header, loss.get_index(0));
            if named as usize > self.layout.room {
                return Err(format!(
                    "it names {named} chunks: its reply has room for {}",
                    self.layout.room
                ));
            }
            let chunks = Uint32Array::new_with_byte_offset_and_length(
                &self.buffer,
                CHUNKS_BYTE as u32,
                named,
            );
            let sum = Float32Array::new_with_byte_offset_and_length(
                &self.buffer,
                self.layout.sum_byte() as u32,
                self.layout.dim as u32,
            );
            Ok((reply, chunks.to_vec(), sum.to_vec()))
        }
    }

    /// A helper's side: writes its answer to request `seq` (the sum of `chunks`) into `buffer`
    /// laid out as `layout`, then marks it written and wakes the training worker.
    pub fn write_reply(
        buffer: &SharedArrayBuffer,
        layout: ReplyLayout,
        seq: u64,
        g: &BatchGradient,
        chunks: &[u32],
    ) -> Result<(), String> {
        if (buffer.byte_length() as usize) < layout.bytes() {
            return Err(format!(
                "its reply buffer has {} bytes: expected {} for {} chunks and {} values",
                buffer.byte_length(),
                layout.bytes(),
                layout.room,
                layout.dim
            ));
        }
        if chunks.len() > layout.room || g.sum.len() != layout.dim {
            return Err(format!(
                "an answer of {} chunks and {} values: its reply has room for {} and {}",
                chunks.len(),
                g.sum.len(),
                layout.room,
                layout.dim
            ));
        }
        let words = header_words(seq, g.batch_size, g.correct, g.clipped, chunks.len())?;
        Int32Array::new_with_byte_offset_and_length(buffer, 4, WORDS as u32).copy_from(&words);
        Float64Array::new_with_byte_offset_and_length(buffer, LOSS_BYTE as u32, 1)
            .set_index(0, g.loss_sum);
        Uint32Array::new_with_byte_offset_and_length(
            buffer,
            CHUNKS_BYTE as u32,
            chunks.len() as u32,
        )
        .copy_from(chunks);
        Float32Array::new_with_byte_offset_and_length(
            buffer,
            layout.sum_byte() as u32,
            layout.dim as u32,
        )
        .copy_from(&g.sum);
        mark(buffer, ReplyState::Written);
        Ok(())
    }

    /// Sets a reply buffer's state (after its answer, if any, is written: the store orders the
    /// writes before it for the thread that sees the state) and wakes the training worker.
    pub fn mark(buffer: &SharedArrayBuffer, state: ReplyState) {
        if buffer.byte_length() < 4 {
            return;
        }
        let word = Int32Array::new_with_byte_offset_and_length(buffer, 0, 1);
        let _ = Atomics::store(&word, STATE, state as i32);
        let _ = Atomics::notify(&word, STATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let seq = (7u64 << 32) | 0xffff_fff0;
        let words = header_words(seq, 64, 60, 3, 9).unwrap();
        let (reply, named) = reply_from_words(words, 12.5);
        assert_eq!(named, 9);
        assert_eq!(
            reply,
            SliceReply::Done {
                seq,
                loss_sum: 12.5,
                examples: 64,
                correct: 60,
                clipped: 3
            }
        );
    }

    #[test]
    fn a_count_past_a_word_is_refused_not_wrapped() {
        let err = header_words(1, usize::MAX, 0, 0, 0).unwrap_err();
        assert!(err.contains("examples"), "{err}");
    }

    #[test]
    fn the_parts_do_not_overlap_and_the_sum_is_aligned() {
        let l = ReplyLayout { room: 9, dim: 100 };
        const {
            assert!(LOSS_BYTE >= 4 * (1 + WORDS));
            assert!(LOSS_BYTE.is_multiple_of(8));
            assert!(CHUNKS_BYTE >= LOSS_BYTE + 8);
        }
        assert_eq!(l.sum_byte() % 4, 0);
        assert_eq!(l.bytes(), l.sum_byte() + 400);
        assert_eq!(ReplyState::from_word(1), Some(ReplyState::Written));
        assert_eq!(ReplyState::from_word(3), None);
    }
}
