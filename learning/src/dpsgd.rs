//! DP-SGD as Opacus defines it: Poisson sampling with rate q, per-example gradients clipped to
//! L2 norm C, their sum plus Gaussian noise N(0, σ²C²) from a cryptographically secure RNG,
//! divided by the expected batch size qN, then an ordinary optimizer step.
//!
//! # How per-example gradients are computed
//!
//! One batched forward pass and TinyCNN's backward written out ([`crate::backward`]) give dL/dz
//! of every pre-activation z (conv1, conv2, fc) for every example separately, because the loss
//! is a sum over examples. The weight gradient of example i is then built from its own layer
//! input a_i:
//!
//! * convolution: `dW_i = dz_iᵀ · unfold(a_i)`, `db_i = Σ_spatial dz_i`: for conv1 a gemm per
//!   example on its own contiguous rows of the batch's channels-last buffers
//!   ([`crate::kernels`]); for conv2, whose dz is at most one position of each pool window, a
//!   sum along the pool's routes ([`crate::routes`])
//! * linear: `dW_i = a_i ⊗ dz_i`, whose norm is `‖a_i‖·‖dz_i‖`, so the fc layer is never
//!   materialised per example: the clipped sum is one matmul `aᵀ · (f ⊙ dz)`.
//!
//! Non-DP training needs no example's own gradient: each weight gradient is one sum over the
//! whole batch (a product for conv1, the routes for conv2). (Until issue 17, dL/dz came from
//! burn's autodiff through zero "tap" leaves added to each z, and every product from
//! burn-flex's per-example kernels. The tests still hold every gradient to burn's autodiff on a
//! batch of one.)

use rand::rngs::{ChaCha20Rng, SysRng};
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::data::NUM_CLASSES;
use crate::kernels::{Mat, MatMut, column_sums, matmul, sum_squares};
use crate::model::{IMAGE_PIXELS, TinyCnnConfig, Weights, check_images};
use crate::routes::Group;

/// Opacus adds this to the norm before dividing, so a zero gradient gets factor 1, not NaN.
const CLIP_EPS: f32 = 1e-6;

/// The RNG for noise and Poisson sampling: ChaCha20 keyed from the operating system (the
/// browser's `crypto.getRandomValues` in wasm). A predictable RNG would let anyone who knows
/// its seed subtract the noise, so no public constructor takes a seed.
pub struct SecureRng(ChaCha20Rng);

impl SecureRng {
    /// A generator keyed by the operating system's CSPRNG.
    pub fn from_os() -> Result<Self, crate::LearningError> {
        ChaCha20Rng::try_from_rng(&mut SysRng)
            .map(Self)
            .map_err(|e| crate::LearningError::Rng(e.to_string()))
    }

    /// A reproducible generator. Tests only: its noise is predictable.
    #[cfg(test)]
    pub(crate) fn seeded(seed: u64) -> Self {
        Self(ChaCha20Rng::seed_from_u64(seed))
    }

    /// One standard normal draw.
    pub fn normal(&mut self) -> f32 {
        StandardNormal.sample(&mut self.0)
    }

    /// Indices of `0..n` each included independently with probability `q` (Poisson sampling:
    /// the batch size itself is random, which the privacy analysis requires).
    pub fn poisson_sample(&mut self, n: usize, q: f64) -> Vec<usize> {
        (0..n).filter(|_| self.0.random::<f64>() < q).collect()
    }

    /// 32 fresh bytes: the key of a generator of its own (a distributed round's rounding,
    /// which the tab's helper workers draw from too).
    pub(crate) fn key(&mut self) -> [u8; 32] {
        let mut key = [0u8; 32];
        rand::Rng::fill_bytes(&mut self.0, &mut key);
        key
    }

    /// The generator itself, for samplers that take any `Rng` (Skellam noise, rounding).
    pub(crate) fn inner(&mut self) -> &mut ChaCha20Rng {
        &mut self.0
    }

    /// Fisher–Yates shuffle (non-DP epochs).
    pub fn shuffle(&mut self, v: &mut [usize]) {
        rand::seq::SliceRandom::shuffle(v, &mut self.0);
    }
}

impl std::fmt::Debug for SecureRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecureRng(..)") // never print the key
    }
}

/// The summed (and, with DP, clipped) gradient of one batch, flat in layout order.
#[derive(Debug, Clone)]
pub struct BatchGradient {
    /// Σ over the batch of (clipped) per-example gradients; not yet noised or averaged.
    pub sum: Vec<f32>,
    /// Σ of per-example cross-entropy losses.
    pub loss_sum: f64,
    /// Examples whose arg-max prediction was right.
    pub correct: usize,
    /// Examples in the batch.
    pub batch_size: usize,
    /// Examples whose gradient norm exceeded C and was scaled down.
    pub clipped: usize,
}

impl BatchGradient {
    /// The gradient of no example: what an empty Poisson batch contributes (its step still
    /// takes place, as pure noise).
    pub fn empty(dim: usize) -> Self {
        Self {
            sum: vec![0.0; dim],
            loss_sum: 0.0,
            correct: 0,
            batch_size: 0,
            clipped: 0,
        }
    }

    /// Adds the gradient of another slice of the same step. Clipping is per example, so the
    /// sum of the slices' clipped sums is the whole batch's clipped sum.
    pub fn add(&mut self, other: &BatchGradient) -> Result<(), crate::LearningError> {
        if other.sum.len() != self.sum.len() {
            return Err(crate::LearningError::ParamLength {
                expected: self.sum.len(),
                actual: other.sum.len(),
            });
        }
        for (s, o) in self.sum.iter_mut().zip(&other.sum) {
            *s += o;
        }
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.batch_size += other.batch_size;
        self.clipped += other.clipped;
        Ok(())
    }
}

/// Per-example gradients of a batch, one flat vector per example (layout order): what the tests
/// hold the batched computations to (autodiff; the distributed step's unit gradients). No step
/// materialises these.
#[cfg(test)]
pub(crate) fn per_example_gradients(
    config: &TinyCnnConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
) -> Result<Vec<Vec<f32>>, crate::LearningError> {
    let w = config.weights(params)?;
    check_images(images, labels.len())?;
    let parts = per_example_layers(config, &w, images, labels);
    let [w1, b1, w2, b2] = &parts.conv;
    let (a, dz, k) = (&parts.fc_input, &parts.fc_dz, config.num_classes);
    let f = config.flat_features();
    Ok((0..labels.len())
        .map(|i| {
            let dz_i = &dz[i * k..(i + 1) * k];
            let fc: Vec<f32> = a[i * f..(i + 1) * f]
                .iter()
                .flat_map(|a_ij| dz_i.iter().map(move |d| a_ij * d))
                .collect();
            let [w1, b1, w2, b2] = [w1, b1, w2, b2].map(|t| t.row(i).to_vec());
            config.to_layout([w1, b1, w2, b2, fc, dz_i.to_vec()])
        })
        .collect())
}

/// The gradient of one batch: per-example clipped to `max_grad_norm` when it is `Some` (DP),
/// plain otherwise. An error when `params` or `images` do not fit the model and the labels.
pub fn batch_gradient(
    config: &TinyCnnConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
    max_grad_norm: Option<f32>,
) -> Result<BatchGradient, crate::LearningError> {
    let w = config.weights(params)?;
    check_images(images, labels.len())?;
    let mut total = BatchGradient::empty(config.layout().num_params());
    add_batch(&mut total, config, &w, images, labels, max_grad_norm);
    Ok(total)
}

/// Adds a batch's (clipped) gradient sum and counts to `total`, [`CHUNK`] examples at a time:
/// what [`batch_gradient`] computes, for [`claimed_gradient`], which adds the chunks a worker
/// claims one by one with the weights unpacked once. `images` must hold `labels.len()` examples
/// ([`check_images`]).
fn add_batch(
    total: &mut BatchGradient,
    config: &TinyCnnConfig,
    w: &Weights,
    images: &[f32],
    labels: &[u8],
    max_grad_norm: Option<f32>,
) {
    for (images, labels) in images
        .chunks(CHUNK * IMAGE_PIXELS)
        .zip(labels.chunks(CHUNK))
    {
        let (part, logits, part_clipped) = match max_grad_norm {
            Some(c) => clipped_sum(config, w, images, labels, c),
            None => plain_sum(config, w, images, labels),
        };
        total.sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
        let (part_loss, part_correct) = loss_and_correct(&logits, labels);
        total.loss_sum += part_loss;
        total.correct += part_correct;
        total.clipped += part_clipped;
    }
    total.batch_size += labels.len();
}

/// The (clipped) gradient sum of the chunks `claim` hands out: each call returns the index of
/// the next chunk of [`CHUNK`] examples this caller takes, until one at or past the batch's
/// end. For workers sharing one step, each taking the next chunk none has taken (a shared
/// counter): the step then ends within a chunk of every worker being done, where a split fixed
/// before the step waits for whichever worker the machine slowed down during it (in the
/// browser, 2 workers went from 1.48× to 1.54× of one in 180 paired rounds:
/// `benchmarks/paired-claims.log`).
pub fn claimed_gradient(
    config: &TinyCnnConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
    max_grad_norm: Option<f32>,
    claim: &mut dyn FnMut() -> usize,
) -> Result<BatchGradient, crate::LearningError> {
    let w = config.weights(params)?;
    check_images(images, labels.len())?;
    let mut total = BatchGradient::empty(config.layout().num_params());
    loop {
        let start = claim().saturating_mul(CHUNK);
        if start >= labels.len() {
            return Ok(total);
        }
        let end = (start + CHUNK).min(labels.len());
        let pixels = &images[start * IMAGE_PIXELS..end * IMAGE_PIXELS];
        add_batch(
            &mut total,
            config,
            &w,
            pixels,
            &labels[start..end],
            max_grad_norm,
        );
    }
}

/// Examples whose activations go through the layers together. Each example's gradient is its
/// own, so a batch is a sum over chunks, and a chunk's buffers stay in the caches: at batch 512
/// the activations and unfolded inputs are tens of MB, and natively the DP step ran ≈ 30 %
/// slower per example than in chunks of 64 (`benchmarks/chunk-ab-native.log`). Chunks of 8 are
/// faster still, most when every core trains (their buffers likely stay in a core's own L2
/// cache; not measured directly): two threads at batch 512 went from 15 771 to 20 677
/// samples/s (1.53× → 1.84× of one thread), one thread at batch 64 +17 %, wasm in node at
/// batch 64 +21 %, at 512 the same (`benchmarks/chunk8-ab-*.log`).
pub const CHUNK: usize = 8;

/// Σ of the per-example gradients each scaled by Opacus's clip factor, flat in layout order;
/// the logits; how many examples were scaled down.
fn clipped_sum(
    config: &TinyCnnConfig,
    w: &Weights,
    images: &[f32],
    labels: &[u8],
    c: f32,
) -> (Vec<f32>, Vec<f32>, usize) {
    let b = labels.len();
    let parts = per_example_layers(config, w, images, labels);
    let norms_sq = parts.norms_sq(config);
    let [w1, b1, w2, b2] = &parts.conv;
    let (mut a, dz, k) = (parts.fc_input, parts.fc_dz, config.num_classes);
    let f = config.flat_features();
    let (factors, bad) = clip_factors(&norms_sq, c);
    let clipped = factors.iter().filter(|f| **f < 1.0).count();
    let [w1, b1, w2, b2] = [w1, b1, w2, b2].map(|t| t.weighted_sum(&factors));
    // fc: aᵀ · (factor ⊙ dz). A dropped example's rows become exact zeros: 0 × ∞ would be NaN.
    let dz_scaled: Vec<f32> = dz
        .chunks_exact(k)
        .zip(&factors)
        .flat_map(|(row, f)| row.iter().map(move |d| if *f == 0.0 { 0.0 } else { f * d }))
        .collect();
    for &i in &bad {
        a[i * f..(i + 1) * f].fill(0.0);
    }
    let (fc_w, fc_b) = fc_gradient(&a, &dz_scaled, b, f, k);
    let sum = config.to_layout([w1, b1, w2, b2, fc_w, fc_b]);
    (sum, parts.logits, clipped)
}

/// The plain gradient sum: no example's own gradient is needed, so conv1's weight gradient is
/// one product over the whole batch, `dz1ᵀ [c1 × b·576] · u1 [b·576 × 9]` (as
/// [`per_example_weights`] computes it for a batch of one), and conv2's one sum along dz2's
/// routes over the whole batch.
fn plain_sum(
    config: &TinyCnnConfig,
    w: &Weights,
    images: &[f32],
    labels: &[u8],
) -> (Vec<f32>, Vec<f32>, usize) {
    let b = labels.len();
    let pass = crate::backward::pass(config, w, images, labels);
    let (c1, k) = (config.conv1_channels, config.num_classes);
    // The whole batch's rows as one example's: one product.
    let w1 = per_example_weights(&pass.dz1, &pass.u1, c1, 9, 1).values;
    let b1 = column_sums(&pass.dz1, c1);
    let w2 = pass.dz2.weight_sums(&pass.u2, c1 * 9, Group::Batch);
    let b2 = pass.dz2.bias_sums(Group::Batch);
    let f = config.flat_features();
    let (fc_w, fc_b) = fc_gradient(&pass.fc_input, &pass.dz3, b, f, k);
    let sum = config.to_layout([w1, b1, w2, b2, fc_w, fc_b]);
    (sum, pass.logits, 0)
}

/// fc's weight and bias gradients summed over the batch: `aᵀ · dz` `[800, k]` and `Σ dz`.
fn fc_gradient(a: &[f32], dz: &[f32], b: usize, f: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let mut weight = vec![0.0; f * k];
    matmul(
        MatMut::new(&mut weight, f, k),
        Mat::new(a, b, f).t(),
        Mat::new(dz, b, k),
        false,
    );
    (weight, column_sums(dz, k))
}

/// Opacus's clip factor `min(1, C / (‖g‖ + 1e-6))` of each example, from its squared norm, and
/// the examples whose norm is not finite. Those get factor 0 and must also get all-zero rows:
/// an infinite norm alone would give the finite factor 0, and 0 × ∞ in one of its entries would
/// be NaN and poison the whole batch's sum.
fn clip_factors(norms_sq: &[f32], c: f32) -> (Vec<f32>, Vec<usize>) {
    let mut bad = Vec::new();
    let factors = norms_sq
        .iter()
        .enumerate()
        .map(|(i, sq)| {
            if sq.is_finite() {
                ((sq.sqrt() + CLIP_EPS).recip() * c).min(1.0)
            } else {
                bad.push(i);
                0.0
            }
        })
        .collect();
    (factors, bad)
}

/// One value per example and entry, `[b, len]` flat: a layer's per-example gradients.
struct PerExample {
    values: Vec<f32>,
    len: usize,
}

impl PerExample {
    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.len..][..self.len]
    }

    /// Σ_i factor_i · row_i. A factor of 0 skips its row (a dropped example's non-finite
    /// values never reach the sum: 0 × ∞ would be NaN).
    fn weighted_sum(&self, factors: &[f32]) -> Vec<f32> {
        let mut sum = vec![0.0; self.len];
        for (row, &f) in self.values.chunks_exact(self.len.max(1)).zip(factors) {
            if f != 0.0 {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += f * v);
            }
        }
        sum
    }
}

/// Per-example pieces from one forward pass and the written-out backward ([`crate::backward`]).
struct LayerGradients {
    /// Per-example conv1 weight `[b, 16 · 9]`, conv1 bias `[b, 16]`, conv2 weight
    /// `[b, 32 · 9 · 16]` (taps last), conv2 bias `[b, 32]` gradients.
    conv: [PerExample; 4],
    /// fc input `[b, 800]` (rows `(y, x, c)`) and dL/dlogits `[b, 10]`.
    fc_input: Vec<f32>,
    fc_dz: Vec<f32>,
    /// Logits `[b, 10]`.
    logits: Vec<f32>,
}

impl LayerGradients {
    /// Each example's squared gradient norm, layer by layer; fc's weight gradient a_i ⊗ dz_i
    /// has norm ‖a_i‖·‖dz_i‖ and is never built for it.
    fn norms_sq(&self, config: &TinyCnnConfig) -> Vec<f32> {
        let (f, k) = (config.flat_features(), config.num_classes);
        let (a, dz) = (&self.fc_input, &self.fc_dz);
        (0..dz.len() / k.max(1))
            .map(|i| {
                let layers: f32 = self.conv.iter().map(|t| sum_squares(t.row(i))).sum();
                let a_sq = sum_squares(&a[i * f..][..f]);
                layers + (a_sq + 1.0) * sum_squares(&dz[i * k..][..k])
            })
            .collect()
    }

    /// Example `i`'s gradient times `factor`, in the kernels' orders, written over `out` (as
    /// many values as it holds: one a parameter); all zeros when `factor` is 0 (a non-finite
    /// gradient: 0 × ∞ would be NaN).
    fn write_scaled(&self, config: &TinyCnnConfig, i: usize, factor: f32, out: &mut Vec<f32>) {
        let len = out.len();
        out.clear();
        if factor == 0.0 {
            out.resize(len, 0.0);
            return;
        }
        for layer in &self.conv {
            out.extend(layer.row(i).iter().map(|v| v * factor));
        }
        let (f, k) = (config.flat_features(), config.num_classes);
        let dz: Vec<f32> = self.fc_dz[i * k..][..k]
            .iter()
            .map(|d| d * factor)
            .collect();
        for a in &self.fc_input[i * f..][..f] {
            out.extend(dz.iter().map(|d| a * d));
        }
        out.extend_from_slice(&dz);
        debug_assert_eq!(out.len(), len);
    }
}

/// Each example's gradient over its clipping norm, `g / max(‖g‖, C)` (norm at most 1), handed
/// to `each` one example at a time in one buffer: what a distributed step rounds. In the
/// kernels' orders ([`TinyCnnConfig::kernel_order_to_layout`] puts a sum of them in the
/// layout's), computed in chunks like [`batch_gradient`], fc's weight gradient written straight
/// into the buffer: materialising each example's gradient in the layout's order took longer
/// than the whole local clipped sum (`benchmarks/distributed-step-parts.log`). An example whose
/// squared norm is not finite in f32 is handed as zeros: it still counts, and adds nothing.
pub(crate) fn each_unit_gradient(
    config: &TinyCnnConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
    clip: f32,
    mut each: impl FnMut(&[f32]) -> Result<(), crate::LearningError>,
) -> Result<(), crate::LearningError> {
    let w = config.weights(params)?;
    check_images(images, labels.len())?;
    let mut unit = vec![0.0; params.len()];
    for (images, labels) in images
        .chunks(CHUNK * IMAGE_PIXELS)
        .zip(labels.chunks(CHUNK))
    {
        let parts = per_example_layers(config, &w, images, labels);
        for (i, sq) in parts.norms_sq(config).into_iter().enumerate() {
            parts.write_scaled(config, i, unit_factor(sq, clip), &mut unit);
            each(&unit)?;
        }
    }
    Ok(())
}

/// `1 / max(‖g‖, C)` from `‖g‖²`: what scales a gradient to its clipped self over C. Not
/// Opacus's `C / (‖g‖ + 10⁻⁶)` of the local step ([`clip_factors`]): a distributed step counts
/// in units of C, and this is its clip over C exactly. 0 when ‖g‖² is not finite in f32 (as the
/// local step drops such an example) or the factor is not (a subnormal C).
fn unit_factor(norm_sq: f32, clip: f32) -> f32 {
    if !norm_sq.is_finite() {
        return 0.0;
    }
    let factor = (1.0 / f64::from(norm_sq).sqrt().max(f64::from(clip))) as f32;
    if factor.is_finite() { factor } else { 0.0 }
}

fn per_example_layers(
    config: &TinyCnnConfig,
    w: &Weights,
    images: &[f32],
    labels: &[u8],
) -> LayerGradients {
    let b = labels.len();
    let pass = crate::backward::pass(config, w, images, labels);
    let (c1, c2) = (config.conv1_channels, config.conv2_channels);
    LayerGradients {
        conv: [
            per_example_weights(&pass.dz1, &pass.u1, c1, 9, b),
            per_example_biases(&pass.dz1, c1, b),
            PerExample {
                values: pass.dz2.weight_sums(&pass.u2, c1 * 9, Group::Example),
                len: c2 * c1 * 9,
            },
            PerExample {
                values: pass.dz2.bias_sums(Group::Example),
                len: c2,
            },
        ],
        fc_input: pass.fc_input,
        fc_dz: pass.dz3,
        logits: pass.logits,
    }
}

/// Each example's convolution weight gradient `dz_iᵀ [c_out × n] · u_i [n × taps]`, from the
/// batch's `dz [b · n, c_out]` and im2col `u [b · n, taps]` (channels last: an example's rows
/// are contiguous).
///
/// Each product is computed as its transpose `u_iᵀ · dz_i [taps × c_out]` and then transposed
/// back, because of how gemm allocates ([`crate::model::InPlaceWeights`] gives its rule). Asked
/// for `dz_iᵀ · u_i`, gemm sees 9 (taps) rows, not a multiple of its SIMD width, and copies
/// the left operand into a buffer it allocates and frees at every call (24 KB in wasm, 32 KB
/// natively), eight times a chunk. The allocator put that buffer back at the same place call
/// after call, within a cache line (mod 4 KB) of the chunk's live fc input, and steps ran up to
/// 1.5× slower in a tab for rounds at a time (`benchmarks/placement.log`). Asked for the
/// transpose, gemm sees c_out rows read straight from `dz` (TinyCNN's 16, a multiple of every
/// SIMD width) and allocates nothing large.
fn per_example_weights(dz: &[f32], u: &[f32], c_out: usize, taps: usize, b: usize) -> PerExample {
    let len = c_out * taps;
    let mut values = vec![0.0; b * len];
    let n = dz.len().checked_div(c_out * b).unwrap_or(0);
    if n > 0 {
        let mut transposed = vec![0.0; len];
        let examples = dz.chunks_exact(n * c_out).zip(u.chunks_exact(n * taps));
        for (out, (dz, u)) in values.chunks_exact_mut(len).zip(examples) {
            matmul(
                MatMut::new(&mut transposed, taps, c_out),
                Mat::new(u, n, taps).t(),
                Mat::new(dz, n, c_out),
                false,
            );
            for (c, row) in out.chunks_exact_mut(taps).enumerate() {
                for (t, v) in row.iter_mut().enumerate() {
                    *v = transposed[t * c_out + c];
                }
            }
        }
    }
    PerExample { values, len }
}

/// Each example's bias gradient: its dz summed over positions, from `dz [b · n, c_out]`.
fn per_example_biases(dz: &[f32], c_out: usize, b: usize) -> PerExample {
    let mut values = Vec::with_capacity(b * c_out);
    if let Some(per_example @ 1..) = dz.len().checked_div(b) {
        for example in dz.chunks_exact(per_example) {
            values.extend(column_sums(example, c_out));
        }
    }
    PerExample { values, len: c_out }
}

/// Σ cross-entropy and the number of right arg-max predictions, from logits `[b × 10]`.
pub(crate) fn loss_and_correct(logits: &[f32], labels: &[u8]) -> (f64, usize) {
    let mut loss = 0.0;
    let mut correct = 0;
    for (row, &label) in logits.chunks_exact(NUM_CLASSES).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64
            + row
                .iter()
                .map(|v| ((v - max) as f64).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[label as usize] as f64;
        let argmax = row
            .iter()
            .enumerate()
            .fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
        correct += usize::from(argmax == label as usize);
    }
    (loss, correct)
}

/// Adds N(0, σ²) to every coordinate.
pub fn add_gaussian_noise(v: &mut [f32], std: f32, rng: &mut SecureRng) {
    for x in v {
        *x += std * rng.normal();
    }
}

pub use protocol::config::Optimizer;

/// Optimizer state for one `fit` call (FedAvg restarts it every round).
#[derive(Debug, Clone)]
pub struct OptimizerState {
    kind: Optimizer,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl OptimizerState {
    pub fn new(kind: Optimizer, num_params: usize) -> Self {
        let v = if matches!(kind, Optimizer::Adam { .. }) {
            vec![0.0; num_params]
        } else {
            Vec::new()
        };
        Self {
            kind,
            m: vec![0.0; num_params],
            v,
            t: 0,
        }
    }

    /// `params ← params − lr · update(grad)`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        self.t += 1;
        match self.kind {
            Optimizer::Sgd { momentum } => {
                for ((p, g), m) in params.iter_mut().zip(grad).zip(&mut self.m) {
                    *m = if self.t == 1 { *g } else { momentum * *m + g };
                    *p -= lr * if momentum == 0.0 { *g } else { *m };
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let c1 = 1.0 - beta1.powi(self.t);
                let c2 = 1.0 - beta2.powi(self.t);
                for (((p, g), m), v) in params
                    .iter_mut()
                    .zip(grad)
                    .zip(&mut self.m)
                    .zip(&mut self.v)
                {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *p -= lr * (*m / c1) / ((*v / c2).sqrt() + epsilon);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TinyCnnConfig;

    use burn::tensor::{Device, Tensor, TensorData};

    use crate::model::tensor_vec;

    fn setup(b: usize, seed: u64) -> (TinyCnnConfig, Vec<f32>, Vec<f32>, Vec<u8>) {
        setup_with(TinyCnnConfig::new(), b, seed)
    }

    fn setup_with(
        config: TinyCnnConfig,
        b: usize,
        seed: u64,
    ) -> (TinyCnnConfig, Vec<f32>, Vec<f32>, Vec<u8>) {
        let device = Device::flex();
        device.seed(seed);
        let params = config.init(&device).to_flat();
        let mut rng = SecureRng::seeded(seed);
        let images: Vec<f32> = (0..b * 784).map(|_| rng.normal()).collect();
        let labels: Vec<u8> = (0..b).map(|i| (i * 7 % 10) as u8).collect();
        (config, params, images, labels)
    }

    /// Gradient of one example by burn's own autodiff on the module (batch of one).
    fn autodiff_gradient(
        config: &TinyCnnConfig,
        params: &[f32],
        image: &[f32],
        label: u8,
    ) -> Vec<f32> {
        let ad = Device::flex().autodiff();
        let model = config.from_flat(params, &ad).expect("len");
        let x = Tensor::<4>::from_data(TensorData::new(image.to_vec(), [1, 1, 28, 28]), &ad);
        let k = config.num_classes;
        let mut onehot = vec![0f32; k];
        onehot[label as usize] = 1.0;
        let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [1, k]), &ad);
        let loss = (burn::tensor::activation::log_softmax(model.forward_burn(x), 1) * onehot)
            .sum()
            .neg();
        let grads = loss.backward();
        let g = |t: Option<Tensor<4>>| tensor_vec(t.expect("grad"));
        let g1 = |t: Option<Tensor<1>>| tensor_vec(t.expect("grad"));
        let bias = |p: &Option<burn::module::Param<Tensor<1>>>| p.as_ref().expect("bias").val();
        let mut out = g(model.conv1.weight.val().grad(&grads));
        out.extend(g1(bias(&model.conv1.bias).grad(&grads)));
        out.extend(g(model.conv2.weight.val().grad(&grads)));
        out.extend(g1(bias(&model.conv2.bias).grad(&grads)));
        out.extend(tensor_vec(
            model.fc.weight.val().grad(&grads).expect("grad"),
        ));
        out.extend(g1(bias(&model.fc.bias).grad(&grads)));
        out
    }

    #[test]
    fn each_unit_gradient_is_an_examples_gradient_over_its_clipping_norm() {
        // 11 examples: a whole chunk and a partial one; C between the examples' norms, so
        // some are scaled down and some only divided by C.
        let (config, params, images, labels) = setup(11, 5);
        let grads = per_example_gradients(&config, &params, &images, &labels).unwrap();
        let norms: Vec<f32> = grads.iter().map(|g| sum_squares(g).sqrt()).collect();
        let clip = norms.iter().sum::<f32>() / norms.len() as f32;
        assert!(norms.iter().any(|n| *n > clip) && norms.iter().any(|n| *n < clip));
        let mut seen = 0;
        each_unit_gradient(&config, &params, &images, &labels, clip, |unit| {
            let (g, n) = (&grads[seen], norms[seen]);
            let unit = config.kernel_order_to_layout(unit);
            for (u, v) in unit.iter().zip(g) {
                let want = v / n.max(clip);
                assert!(
                    (u - want).abs() <= 1e-6 + 1e-4 * want.abs(),
                    "{u} vs {want}"
                );
            }
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 11);
    }

    #[test]
    fn an_example_whose_gradient_is_not_finite_is_handed_as_zeros() {
        let (config, mut params, images, labels) = setup(3, 6);
        params[20] = f32::NAN; // a conv1 weight: every example's gradient is NaN
        let mut seen = 0;
        each_unit_gradient(&config, &params, &images, &labels, 1.0, |unit| {
            assert!(unit.iter().all(|v| *v == 0.0));
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 3, "they still count");
        assert_eq!(unit_factor(f32::INFINITY, 1.0), 0.0);
        assert_eq!(unit_factor(f32::NAN, 1.0), 0.0);
        assert!(
            (unit_factor(25.0, 1.0) - 0.2).abs() < 1e-7,
            "above C: 1 / ‖g‖"
        );
        assert!(
            (unit_factor(0.25, 1.0) - 1.0).abs() < 1e-7,
            "below C: 1 / C"
        );
        assert_eq!(
            unit_factor(0.0, 1e-45),
            0.0,
            "a subnormal C: the factor overflows"
        );
    }

    #[test]
    fn per_example_gradients_equal_batch_of_one_autodiff() {
        let (config, params, images, labels) = setup(5, 1);
        assert_matches_autodiff(&config, &params, &images, &labels);
    }

    /// With sizes for which gemm copies its operands, the gradients are still burn's.
    #[test]
    fn sizes_gemm_must_copy_still_give_burn_s_gradients() {
        let sizes = TinyCnnConfig::sizes_gemm_must_copy();
        let (config, params, images, labels) = setup_with(sizes, 3, 2);
        assert_matches_autodiff(&config, &params, &images, &labels);
    }

    /// Images with flat regions (as real digits have: a constant background) give pooling
    /// windows of equal activations, and ReLU inputs of exactly 0 at their edges: still
    /// burn's gradients. (Which of equal activations gets the gradient does not change a
    /// weight gradient when their input patches are equal too; `relu_pool`'s own test holds
    /// the first-maximum rule.)
    #[test]
    fn images_with_flat_regions_give_burn_s_gradients() {
        let (config, params, _, labels) = setup(4, 3);
        let images: Vec<f32> = (0..4 * 784)
            .map(|i| match (i % 784) / 28 {
                r if r < 10 => 1.0, // a flat band
                r if r < 20 => ((i % 7) as f32) * 0.5,
                _ => -0.5,
            })
            .collect();
        assert_matches_autodiff(&config, &params, &images, &labels);
    }

    fn assert_matches_autodiff(
        config: &TinyCnnConfig,
        params: &[f32],
        images: &[f32],
        labels: &[u8],
    ) {
        let per_ex = per_example_gradients(config, params, images, labels).expect("len");
        assert_eq!(per_ex.len(), labels.len());
        let mut max_diff = 0f32;
        for (i, g) in per_ex.iter().enumerate() {
            let reference =
                autodiff_gradient(config, params, &images[i * 784..(i + 1) * 784], labels[i]);
            assert_eq!(g.len(), reference.len());
            for (a, b) in g.iter().zip(&reference) {
                max_diff = max_diff.max((a - b).abs() / (1.0 + b.abs()));
            }
        }
        // Tolerance: float32 summation order differs between the two paths.
        assert!(max_diff < 1e-4, "max relative difference {max_diff}");
    }

    /// On a batch of more than one [`CHUNK`] (and a partial last one), against the per-example
    /// gradients and the logits of the whole batch at once.
    #[test]
    fn clipping_bounds_every_example_and_matches_the_explicit_sum() {
        let n = CHUNK + 6;
        let (config, params, images, labels) = setup(n, 2);
        let per_ex = per_example_gradients(&config, &params, &images, &labels).expect("len");
        let norms: Vec<f32> = per_ex
            .iter()
            .map(|g| g.iter().map(|v| v * v).sum::<f32>().sqrt())
            .collect();
        let c = 0.5 * norms.iter().copied().fold(f32::INFINITY, f32::min); // clips all
        let c = c.min(0.5 * norms.iter().copied().sum::<f32>() / norms.len() as f32);
        let mut expected = vec![0f32; params.len()];
        for (g, n) in per_ex.iter().zip(&norms) {
            let f = (c / (n + CLIP_EPS)).min(1.0);
            let clipped_norm = g.iter().map(|v| (v * f).powi(2)).sum::<f32>().sqrt();
            assert!(
                clipped_norm <= c * (1.0 + 1e-5),
                "clipped norm {clipped_norm} > C {c}"
            );
            for (e, v) in expected.iter_mut().zip(g) {
                *e += f * v;
            }
        }
        let got = batch_gradient(&config, &params, &images, &labels, Some(c)).expect("fits");
        assert_eq!((got.clipped, got.batch_size), (n, n));
        for (a, b) in got.sum.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let sum_norm = got.sum.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            sum_norm <= n as f32 * c * (1.0 + 1e-5),
            "the sum of n clipped gradients has norm ≤ nC"
        );
        let logits = config.logits(&params, &images).expect("fits");
        let (loss_sum, correct) = loss_and_correct(&logits, &labels);
        assert!(
            (got.loss_sum - loss_sum).abs() <= 1e-6 * loss_sum.abs(),
            "{} vs {loss_sum}",
            got.loss_sum
        );
        assert_eq!(got.correct, correct);
        // A huge C clips nothing and gives the plain gradient.
        let plain = batch_gradient(&config, &params, &images, &labels, None).expect("fits");
        let loose = batch_gradient(&config, &params, &images, &labels, Some(1e9)).expect("fits");
        assert_eq!(loose.clipped, 0);
        for (a, b) in plain.sum.iter().zip(&loose.sum) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }

    /// Two workers claiming chunks from one counter: a counter shared by A and B hands out 0
    /// to A, 1 to B, 2 and 3 to A, 4 to B, then 5 (past the end) to A and 6 to B. Each sums
    /// exactly the chunks it took and stops at its first claim past the end, and the two sums
    /// add up to the batch's clipped sum (up to float summation order).
    #[test]
    fn chunks_claimed_by_two_workers_sum_to_the_batch() {
        let n = 4 * CHUNK + 3; // 5 chunks, the last partial
        let (config, params, images, labels) = setup(n, 4);
        let whole = batch_gradient(&config, &params, &images, &labels, Some(0.5)).expect("fits");
        let claimed = |handed: &[usize]| {
            let mut handed = handed.iter().copied();
            let mut claim = || {
                handed
                    .next()
                    .expect("no claim after the first past the end")
            };
            claimed_gradient(&config, &params, &images, &labels, Some(0.5), &mut claim)
                .expect("fits")
        };
        let (a, b) = (claimed(&[0, 2, 3, 5]), claimed(&[1, 4, 6]));
        assert_eq!((a.batch_size, b.batch_size), (3 * CHUNK, CHUNK + 3));
        let mut both = a.clone();
        both.add(&b).expect("same length");
        assert_eq!(
            (both.batch_size, both.clipped, both.correct),
            (whole.batch_size, whole.clipped, whole.correct)
        );
        assert!((both.loss_sum - whole.loss_sum).abs() <= 1e-6 * whole.loss_sum.abs());
        for (x, y) in both.sum.iter().zip(&whole.sum) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
        // A worker whose first claim is past the end takes nothing.
        assert_eq!(claimed(&[5]).batch_size, 0);
        // Only the chunk claimed: chunk 4 alone is the batch's last 3 examples.
        let last = batch_gradient(
            &config,
            &params,
            &images[4 * CHUNK * 784..],
            &labels[4 * CHUNK..],
            Some(0.5),
        )
        .expect("fits");
        assert_eq!(claimed(&[4, 9]).sum, last.sum);
    }

    #[test]
    fn a_non_finite_per_example_norm_gets_clip_factor_zero() {
        // Attack: the server sends a model whose activations overflow. Every example's
        // gradient is NaN or infinite; with DP each must contribute nothing (not NaN).
        let (config, params, images, labels) = setup(4, 3);
        let huge: Vec<f32> = params.iter().map(|p| p * 1e30).collect();
        let g = batch_gradient(&config, &huge, &images, &labels, Some(1.0)).expect("fits");
        assert!(g.sum.iter().all(|v| *v == 0.0), "every example dropped");
        assert_eq!(g.clipped, 4);
    }

    /// Attack: one example of a batch holds a NaN pixel (a poisoned record). Its gradient is
    /// dropped and nothing of it reaches the others': the sum is the other examples' alone.
    #[test]
    fn a_poisoned_example_is_dropped_without_touching_the_others() {
        let (config, params, mut images, labels) = setup(4, 5);
        images[2 * 784 + 400] = f32::NAN;
        let got = batch_gradient(&config, &params, &images, &labels, Some(1.0)).expect("fits");
        let mut others = images[..2 * 784].to_vec();
        others.extend_from_slice(&images[3 * 784..]);
        let rest = [labels[0], labels[1], labels[3]];
        let want = batch_gradient(&config, &params, &others, &rest, Some(1.0)).expect("fits");
        assert!(got.sum.iter().all(|v| v.is_finite()), "no NaN in the sum");
        for (a, b) in got.sum.iter().zip(&want.sum) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert_eq!(
            got.clipped,
            want.clipped + 1,
            "the poisoned example counts as clipped"
        );
    }

    /// The model never reads an image's last two rows and columns (TinyCNN's pools drop what
    /// they reach, `model::CONV1_USED`): a NaN there changes no logit and no gradient, and the
    /// example is not dropped (burn's autodiff would give it NaN gradients through 0 × NaN).
    #[test]
    fn a_nan_where_the_model_never_reads_changes_nothing() {
        let (config, params, mut images, labels) = setup(2, 7);
        let clean = batch_gradient(&config, &params, &images, &labels, Some(1.0)).expect("fits");
        images[784 + 27 * 28 + 27] = f32::NAN;
        images[784 + 26 * 28 + 3] = f32::NAN;
        let got = batch_gradient(&config, &params, &images, &labels, Some(1.0)).expect("fits");
        assert_eq!(got.sum, clean.sum);
        assert_eq!(got.clipped, clean.clipped);
        // One pixel inside what it reads is a poisoned example (dropped, as tested above).
        images[784 + 25 * 28 + 25] = f32::NAN;
        let got = batch_gradient(&config, &params, &images, &labels, Some(1.0)).expect("fits");
        assert!(got.sum.iter().all(|v| v.is_finite()));
        assert_ne!(got.sum, clean.sum);
    }

    /// An example whose norm is infinite (not NaN) is dropped like a NaN one: its clip factor
    /// 0 alone would leave 0 × ∞ = NaN in the sum.
    #[test]
    fn an_infinite_norm_drops_its_example() {
        let (factors, bad) = clip_factors(&[4.0, f32::INFINITY, f32::NAN, 0.25], 1.0);
        assert_eq!(bad, [1, 2]);
        assert_eq!(factors[1..3], [0.0, 0.0]);
        assert!((factors[0] - 0.5).abs() < 1e-6, "{factors:?}");
        assert_eq!(factors[3], 1.0);
    }

    #[test]
    fn noise_has_the_requested_std() {
        let mut rng = SecureRng::from_os().expect("OS randomness");
        let (sigma, c) = (1.3f32, 0.7f32);
        let mut v = vec![0f32; 200_000];
        add_gaussian_noise(&mut v, sigma * c, &mut rng);
        let n = v.len() as f64;
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // Standard error of the std estimate is std/√(2n) ≈ 0.0014 here; allow ~7 of them.
        assert!((std - (sigma * c) as f64).abs() < 0.01, "std {std}");
        assert!(mean.abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn poisson_sampling_has_rate_q() {
        let mut rng = SecureRng::seeded(3);
        let sizes: Vec<usize> = (0..200)
            .map(|_| rng.poisson_sample(6000, 0.01).len())
            .collect();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((mean - 60.0).abs() < 2.0, "mean batch {mean}");
        assert!(sizes.iter().any(|s| *s != sizes[0]), "batch size varies");
    }

    #[test]
    fn optimizers_descend_a_quadratic() {
        for kind in [
            Optimizer::Sgd { momentum: 0.0 },
            Optimizer::Sgd { momentum: 0.9 },
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
        ] {
            let mut p = vec![3.0f32, -2.0];
            let mut st = OptimizerState::new(kind, 2);
            for _ in 0..500 {
                let g = p.clone(); // ∇ ½‖p‖²
                st.step(&mut p, &g, 0.05);
            }
            assert!(p.iter().all(|v| v.abs() < 1e-2), "{kind:?} ended at {p:?}");
        }
    }
}
