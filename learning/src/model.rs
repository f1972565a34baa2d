//! TinyCNN: the one model every part of the product trains, sends and evaluates.
//!
//! ```text
//! input            [batch, 1, 28, 28]   a task's normalised images (crate::task)
//! conv1 3×3, 16    [batch, 16, 26, 26]  + ReLU
//! max-pool 2×2     [batch, 16, 13, 13]
//! conv2 3×3, 32    [batch, 32, 11, 11]  + ReLU
//! max-pool 2×2     [batch, 32, 5, 5]    (floor: the last row and column are dropped)
//! flatten          [batch, 800]
//! fc 800 → 10      [batch, 10]          logits
//! ```
//!
//! 12 810 parameters (160 + 4 640 + 8 010), 51 240 bytes as f32: small enough that a browser tab
//! sends its whole update every round. No batch norm: its statistics would mix examples, which
//! breaks per-example clipping (Opacus rejects it for the same reason).
//!
//! Parameters travel as one flat `f32` vector in the order given by [`ParamLayout`]; the same
//! layout is used by the wire, the aggregation math and the checkpoints.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

use crate::LearningError;
use crate::kernels::{Mat, MatMut, im2col3, matmul, swap_outer, taps_first, taps_last};

/// Hyper-parameters of [`TinyCnn`]. The defaults are the product's model; the server and every
/// client must use the same values, which the parameter count on the wire checks.
#[derive(Config, Debug, PartialEq, Eq)]
pub struct TinyCnnConfig {
    /// Output channels of the first 3×3 convolution.
    #[config(default = 16)]
    pub conv1_channels: usize,
    /// Output channels of the second 3×3 convolution.
    #[config(default = 32)]
    pub conv2_channels: usize,
    /// Number of classes (a task's).
    #[config(default = 10)]
    pub num_classes: usize,
}

/// Side of an input image (every task's today).
pub const IMAGE_SIDE: usize = 28;
/// Pixels in an input image.
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Spatial side after conv1 (26), pool (13), conv2 (11), pool (5).
const FEATURE_SIDE: usize = ((IMAGE_SIDE - 2) / 2 - 2) / 2;
/// The outputs of each layer that reach the features. A 2×2 pool with floor drops an odd side's
/// last row and column, so conv2's 11th row and column are never read; conv2's first 10 outputs
/// read only pool 1's first 12 rows (of 13), which read only conv1's first 24 (of 26), which
/// read only the image's first 26 (of 28). The forward and backward passes compute these
/// outputs alone — the same logits as burn's layers, and the same gradients for finite images
/// (a NaN in the unread border no longer reaches one through 0 × NaN), with 15 % fewer of
/// conv1's and 17 % fewer of conv2's products: conv2 10 × 10, pool 1 12 × 12, conv1 24 × 24.
pub(crate) const CONV2_USED: usize = 2 * FEATURE_SIDE;
pub(crate) const POOL1_USED: usize = CONV2_USED + 2;
pub(crate) const CONV1_USED: usize = 2 * POOL1_USED;
const _: () = assert!(
    CONV1_USED + 2 <= IMAGE_SIDE,
    "conv1's used outputs read the image"
);

/// The model. See the module documentation for shapes.
#[derive(Module, Debug)]
pub struct TinyCnn {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) fc: Linear,
}

impl TinyCnnConfig {
    /// A freshly initialised model (burn's Kaiming-uniform defaults, seeded by `device.seed`).
    pub fn init(&self, device: &Device) -> TinyCnn {
        self.build(None, device)
    }

    /// The model with every parameter drawn by `initializer`, or burn's defaults for `None`.
    fn build(&self, initializer: Option<Initializer>, device: &Device) -> TinyCnn {
        let conv = |channels: [usize; 2]| {
            let config = Conv2dConfig::new(channels, [3, 3]);
            match &initializer {
                Some(i) => config.with_initializer(i.clone()),
                None => config,
            }
            .init(device)
        };
        let fc = LinearConfig::new(self.flat_features(), self.num_classes);
        let fc = match &initializer {
            Some(i) => fc.with_initializer(i.clone()),
            None => fc,
        };
        TinyCnn {
            conv1: conv([1, self.conv1_channels]),
            conv2: conv([self.conv1_channels, self.conv2_channels]),
            fc: fc.init(device),
        }
    }

    /// Inputs of the final linear layer (800 with the defaults).
    pub fn flat_features(&self) -> usize {
        self.conv2_channels * FEATURE_SIDE * FEATURE_SIDE
    }

    /// Where each parameter tensor lives in the flat vector.
    pub fn layout(&self) -> ParamLayout {
        let (c1, c2, k) = (self.conv1_channels, self.conv2_channels, self.num_classes);
        ParamLayout::new(vec![
            ("conv1.weight", vec![c1, 1, 3, 3]),
            ("conv1.bias", vec![c1]),
            ("conv2.weight", vec![c2, c1, 3, 3]),
            ("conv2.bias", vec![c2]),
            ("fc.weight", vec![self.flat_features(), k]),
            ("fc.bias", vec![k]),
        ])
    }

    /// Rebuilds a model from a flat vector laid out as [`TinyCnnConfig::layout`], bit-exact.
    pub fn from_flat(&self, flat: &[f32], device: &Device) -> Result<TinyCnn, LearningError> {
        let layout = self.layout();
        layout.check_len(flat)?;
        // Zeros are cheaper than a random draw, and every one is overwritten below.
        let mut model = self.build(Some(Initializer::Zeros), device);
        let data = |i: usize| {
            let e = &layout.entries[i];
            TensorData::new(layout.slice(flat, i).to_vec(), e.shape.clone())
        };
        model.conv1.weight = Param::from_data(data(0), device);
        model.conv1.bias = Some(Param::from_data(data(1), device));
        model.conv2.weight = Param::from_data(data(2), device);
        model.conv2.bias = Some(Param::from_data(data(3), device));
        model.fc.weight = Param::from_data(data(4), device);
        model.fc.bias = Some(Param::from_data(data(5), device));
        Ok(model)
    }
}

impl TinyCnnConfig {
    /// The parameters of `flat` in the kernels' layout ([`Weights`]): what a step multiplies,
    /// with no burn module built per step (building one copied every parameter into tensors).
    pub(crate) fn weights(&self, flat: &[f32]) -> Result<Weights, LearningError> {
        let layout = self.layout();
        layout.check_len(flat)?;
        let part = |i: usize| layout.slice(flat, i);
        let positions = FEATURE_SIDE * FEATURE_SIDE;
        let (c1, c2, k) = (self.conv1_channels, self.conv2_channels, self.num_classes);
        let conv2 = taps_last(part(2), c1);
        let fc = swap_outer(part(4), c2, positions, k);
        let in_place = InPlaceWeights {
            // One input channel: burn's `[c1, 1, 3, 3]` is `[c1 × 9]`, taps last already.
            conv1: swap_outer(part(0), c1, 9, 1),
            conv2: swap_outer(&conv2, c2, 9 * c1, 1),
            fc_wide: widen_rows(&fc, k),
        };
        Ok(Weights {
            conv1_bias: part(1).to_vec(),
            conv2,
            conv2_bias: part(3).to_vec(),
            fc,
            fc_bias: part(5).to_vec(),
            in_place,
        })
    }

    /// The inverse of [`TinyCnnConfig::weights`] for a gradient: its pieces in the kernels'
    /// orders (conv2's taps last, fc's rows `(y, x, c)`) as one flat vector in the layout's
    /// (burn's) orders.
    pub(crate) fn to_layout(&self, parts: [Vec<f32>; 6]) -> Vec<f32> {
        self.kernel_order_to_layout(&parts.concat())
    }

    /// [`TinyCnnConfig::to_layout`] of the pieces already one after the other (each piece has
    /// the same length and place as in the layout; only the orders inside conv2's and fc's
    /// weights differ). Any element type: a distributed step rounds each example's gradient in
    /// the kernels' order and puts only its integer sum in the layout's.
    pub(crate) fn kernel_order_to_layout<T: Copy>(&self, flat: &[T]) -> Vec<T> {
        let layout = self.layout();
        assert_eq!(flat.len(), layout.num_params(), "one value a parameter");
        let part = |i: usize| layout.slice(flat, i);
        let positions = FEATURE_SIDE * FEATURE_SIDE;
        let mut out = Vec::with_capacity(flat.len());
        out.extend_from_slice(part(0)); // one input channel: taps last is burn's order
        out.extend_from_slice(part(1));
        out.extend(taps_first(part(2), self.conv1_channels));
        out.extend_from_slice(part(3));
        out.extend(swap_outer(
            part(4),
            positions,
            self.conv2_channels,
            self.num_classes,
        ));
        out.extend_from_slice(part(5));
        out
    }

    /// Logits `[batch × classes]` of `images` (`batch × 28 × 28` values) under `params`.
    pub fn logits(&self, params: &[f32], images: &[f32]) -> Result<Vec<f32>, LearningError> {
        self.logits_with(&self.weights(params)?, images)
    }

    /// [`TinyCnnConfig::logits`] with the weights already in the kernels' layout (an
    /// evaluation prepares them once for all its batches).
    pub(crate) fn logits_with(
        &self,
        w: &Weights,
        images: &[f32],
    ) -> Result<Vec<f32>, LearningError> {
        check_images(images, images.len() / IMAGE_PIXELS)?;
        Ok(forward_kept(self, w, images).logits)
    }
}

/// An error unless `images` holds `batch` whole images.
pub(crate) fn check_images(images: &[f32], batch: usize) -> Result<(), LearningError> {
    match batch.checked_mul(IMAGE_PIXELS) {
        Some(n) if n == images.len() => Ok(()),
        _ => Err(LearningError::BatchShape {
            batch,
            actual: images.len(),
        }),
    }
}

/// TinyCNN's parameters in the kernels' channels-last orders ([`crate::kernels`]): conv
/// weights with their taps in im2col's order `(y, x, c_in)`, fc's rows in the order `(y, x, c)`
/// in which the pooled features come out. (burn's orders are `[c_out, c_in, 3, 3]` and rows
/// `(c, y, x)`; a step's gradients go back to them, [`crate::dpsgd`].)
pub(crate) struct Weights {
    pub conv1_bias: Vec<f32>,
    /// conv2's weights taps last, `[c2 × 9·c1]`: what the backward's routes multiply.
    pub conv2: Vec<f32>,
    pub conv2_bias: Vec<f32>,
    /// fc's weights `[f × k]`: what `dL/dh2 = dz · fcᵀ` multiplies.
    pub fc: Vec<f32>,
    pub fc_bias: Vec<f32>,
    /// The weights as the forward pass's matrix products read them.
    pub in_place: InPlaceWeights,
}

/// The weights the forward pass's matrix products multiply, laid out so that gemm reads them
/// where they are instead of copying them first. gemm computes column-major results, so it
/// swaps the operands of our row-major products and works on their transposes. It copies
/// ("packs") its left operand, of m rows, into a buffer it allocates and frees at every call
/// when m ≤ 2·mc (its row block, at most 8 micro-rows) and either m is not a multiple of its
/// SIMD width (4 lanes of f32 in wasm, 8 natively with FMA) or the operand is not column-major;
/// a larger m is packed block by block into a buffer it keeps per thread. Made once a step,
/// these layouts spare every chunk of 8 examples three per-call buffers (in wasm 24 KB for the
/// logits, 20 KB for conv2, 1 KB for conv1), as long as the channel counts are multiples of 4
/// (TinyCNN's 16 and 32; others still compute right, with the copies). The allocator puts a
/// per-call buffer back at the same place call after call, and in a tab one that lay at the
/// offset within a page of a live buffer of the chunk made steps up to 1.5× slower, for rounds
/// at a time (`benchmarks/placement.log`, `benchmarks/gemm-in-place.log`;
/// `dpsgd::per_example_weights` avoids the same copy). What is left of gemm's allocations in a
/// step is a few hundred bytes a call.
pub(crate) struct InPlaceWeights {
    /// conv1's weights taps first, `[9 × c1]`.
    conv1: Vec<f32>,
    /// conv2's weights taps first, `[9·c1 × c2]`.
    conv2: Vec<f32>,
    /// fc's weights `[f × k]` with each row padded with zeros to [`wide_classes`] columns: the
    /// logits' product sees one row per class, and 10 is not a multiple of a SIMD width.
    fc_wide: Vec<f32>,
}

/// `fc [f × classes]` with each row padded with zeros to [`wide_classes`] columns.
fn widen_rows(fc: &[f32], classes: usize) -> Vec<f32> {
    let wide = wide_classes(classes);
    let mut out = Vec::with_capacity(fc.len() / classes.max(1) * wide);
    for row in fc.chunks_exact(classes.max(1)) {
        out.extend_from_slice(row);
        out.resize(out.len() + wide - classes, 0.0);
    }
    out
}

/// The classes rounded up to a multiple of 16, and so of every SIMD width gemm has
/// ([`InPlaceWeights`]).
pub(crate) fn wide_classes(classes: usize) -> usize {
    classes.next_multiple_of(16)
}

/// Logits `[b × k]` = `features [b × f] · fc [f × k]` + the bias of each class, computed over
/// the zero-padded [`InPlaceWeights::fc_wide`].
fn fc_logits(features: &[f32], w: &Weights, b: usize, f: usize, k: usize) -> Vec<f32> {
    let wide = wide_classes(k);
    let mut product = vec![0.0; b * wide];
    matmul(
        MatMut::new(&mut product, b, wide),
        Mat::new(features, b, f),
        Mat::new(&w.in_place.fc_wide, f, wide),
        false,
    );
    let mut logits = Vec::with_capacity(b * k);
    for row in product.chunks_exact(wide.max(1)) {
        logits.extend(row[..k].iter().zip(&w.fc_bias).map(|(v, bias)| bias + v));
    }
    logits
}

/// The forward pass, keeping what the written-out backward needs ([`crate::backward`]).
/// Activations are laid out channels last, `[batch, side, side, channels]`: each convolution is
/// one matrix product for the whole batch, and ReLU + pool one elementwise pass over channel
/// vectors ([`crate::kernels`], [`relu_pool`]). `images` holds whole images (checked by every
/// caller).
pub(crate) fn forward_kept(config: &TinyCnnConfig, w: &Weights, images: &[f32]) -> Kept {
    let b = images.len() / IMAGE_PIXELS;
    let (c1, c2, k) = (
        config.conv1_channels,
        config.conv2_channels,
        config.num_classes,
    );
    // Only the outputs that reach the features ([`CONV1_USED`]).
    // conv1 [b·576 × 9] · [9 × c1] → [b, 24, 24, c1] → pool [b, 12, 12, c1]
    let u1 = im2col3(images, 1, b, IMAGE_SIDE, CONV1_USED);
    let z1 = conv(&u1, &w.in_place.conv1, &w.conv1_bias);
    let h1 = relu_pool(&z1, CONV1_USED, c1);
    // conv2 [b·100 × 9·c1] · [9·c1 × c2] → [b, 10, 10, c2] → pool [b, 5, 5, c2]
    let u2 = im2col3(&h1, c1, b, POOL1_USED, CONV2_USED);
    let z2 = conv(&u2, &w.in_place.conv2, &w.conv2_bias);
    let fc_input = relu_pool(&z2, CONV2_USED, c2);
    // fc [b × 800] · [800 × k], each example's features in (y, x, c) order as w.fc's rows.
    let logits = fc_logits(&fc_input, w, b, config.flat_features(), k);
    Kept {
        u1,
        z1,
        u2,
        z2,
        fc_input,
        logits,
    }
}

/// `rows` copies of `row`, one after another: a bias for every output row. (Collecting
/// `cycle().take(..)` pushed value by value: 17 % of a wasm DP step.)
fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * row.len());
    for _ in 0..rows {
        out.extend_from_slice(row);
    }
    out
}

/// A convolution of the batch from its im2col `cols` (`[n, taps]`) and its weights taps first
/// (`[taps, c_out]`, [`InPlaceWeights`]): `cols · weights` plus each output channel's bias,
/// `[n, c_out]`.
fn conv(cols: &[f32], weights: &[f32], bias: &[f32]) -> Vec<f32> {
    let c_out = bias.len();
    let taps = weights.len() / c_out.max(1);
    let n = cols.len() / taps.max(1);
    let mut out = repeat_rows(bias, n);
    matmul(
        MatMut::new(&mut out, n, c_out),
        Mat::new(cols, n, taps),
        Mat::new(weights, taps, c_out),
        true,
    );
    out
}

#[cfg(test)]
impl TinyCnnConfig {
    /// Channel and class counts that none of gemm's SIMD widths divides, so its operand copies
    /// come back ([`InPlaceWeights`]): for tests that the results do not depend on them.
    pub(crate) fn sizes_gemm_must_copy() -> Self {
        Self::new()
            .with_conv1_channels(6)
            .with_conv2_channels(10)
            .with_num_classes(17)
    }
}

impl TinyCnn {
    /// The same logits through burn's own layers (ReLU, `MaxPool2d`), differentiable by burn's
    /// autodiff: the oracle the written-out backward is tested against.
    #[cfg(test)]
    pub(crate) fn forward_burn(&self, images: Tensor<4>) -> Tensor<2> {
        use burn::nn::Relu;
        use burn::nn::pool::MaxPool2dConfig;
        let (pool, relu) = (MaxPool2dConfig::new([2, 2]).init(), Relu::new());
        let batch = images.dims()[0];
        let h1 = pool.forward(relu.forward(self.conv1.forward(images)));
        let h2 = pool.forward(relu.forward(self.conv2.forward(h1)));
        self.fc.forward(h2.reshape([batch as i64, -1]))
    }

    /// Parameters as one flat vector in [`TinyCnnConfig::layout`] order.
    pub fn to_flat(&self) -> Vec<f32> {
        let mut flat = Vec::with_capacity(self.num_params());
        let bias = |b: &Option<Param<Tensor<1>>>| b.as_ref().map(|p| p.val());
        let tensors: [Option<Vec<f32>>; 6] = [
            Some(tensor_vec(self.conv1.weight.val())),
            bias(&self.conv1.bias).map(tensor_vec),
            Some(tensor_vec(self.conv2.weight.val())),
            bias(&self.conv2.bias).map(tensor_vec),
            Some(tensor_vec(self.fc.weight.val())),
            bias(&self.fc.bias).map(tensor_vec),
        ];
        for t in tensors.into_iter().flatten() {
            flat.extend_from_slice(&t);
        }
        flat
    }
}

/// What [`forward_kept`] keeps, channels last ([`crate::kernels`]): each layer's input as the
/// weight gradients read it, and each pre-activation (the pools' backward reads them).
pub(crate) struct Kept {
    /// im2col of the images `[b · 576, 9]` (conv1's input, at its used outputs).
    pub u1: Vec<f32>,
    /// conv1's used outputs `[b, 24, 24, 16]`.
    pub z1: Vec<f32>,
    /// im2col of conv2's input `[b · 100, 9 · 16]`.
    pub u2: Vec<f32>,
    /// conv2's used outputs `[b, 10, 10, 32]`.
    pub z2: Vec<f32>,
    /// fc's input `[b, 800]`, each row in `(y, x, c)` order.
    pub fc_input: Vec<f32>,
    /// `[b, 10]`.
    pub logits: Vec<f32>,
}

/// Calls `f(first output, index in z of the top-left input)` for every 2×2 window (stride 2,
/// floor: an odd last row and column are dropped) of images `[.., side, side, channels]` laid
/// out channels last, in output order. A window's outputs are `channels` consecutive values;
/// its inputs' channel vectors start at the top-left index plus each of [`window_inputs`].
pub(crate) fn for_each_window(
    outputs: usize,
    side: usize,
    channels: usize,
    mut f: impl FnMut(usize, usize),
) {
    let half = side / 2;
    let per_image = half * half * channels;
    if per_image == 0 {
        return;
    }
    for img in 0..outputs / per_image {
        for i in 0..half {
            for j in 0..half {
                let out = ((img * half + i) * half + j) * channels;
                f(out, ((img * side + 2 * i) * side + 2 * j) * channels);
            }
        }
    }
}

/// Where a window's four inputs start relative to its top-left one, in the pool's order (0, 1
/// on the top row, 2, 3 on the bottom).
pub(crate) fn window_inputs(side: usize, channels: usize) -> [usize; 4] {
    [0, channels, side * channels, (side + 1) * channels]
}

/// Outputs of a 2×2 pool of `z` (whole images `side × side × channels`).
fn pooled_len(z: usize, side: usize, channels: usize) -> usize {
    let half = side / 2;
    z.checked_div(side * side * channels).unwrap_or(0) * half * half * channels
}

/// Whether any value is NaN, in one pass without an early exit (which vectorises). NaN is rare
/// (a broken model): knowing it up front keeps its rule out of the hot loops.
pub(crate) fn has_nan(z: &[f32]) -> bool {
    z.iter().fold(false, |nan, v| nan | v.is_nan())
}

/// ReLU then 2×2 max-pool (stride 2, floor) of images `[.., side, side, channels]` laid out
/// channels last, `[.., side / 2, side / 2, channels]`. burn's rules: the first maximum of a
/// window in row-major order wins (ties are common: a constant background gives equal
/// activations), a NaN wins (see [`window_max_with_nan`]). One lane per channel: the four
/// inputs of a window are four channel vectors, so the selects vectorise.
pub(crate) fn relu_pool(z: &[f32], side: usize, channels: usize) -> Vec<f32> {
    if has_nan(z) {
        pool_windows(z, side, channels, window_max_with_nan)
    } else {
        pool_windows(z, side, channels, window_max)
    }
}

fn pool_windows(
    z: &[f32],
    side: usize,
    channels: usize,
    rule: impl Fn([f32; 4]) -> (u32, f32),
) -> Vec<f32> {
    let mut out = vec![0.0; pooled_len(z.len(), side, channels)];
    let at = window_inputs(side, channels);
    for_each_window(out.len(), side, channels, |o, top| {
        let [a, b, c, d] = at.map(|shift| &z[top + shift..][..channels]);
        pool_lanes(a, b, c, d, &mut out[o..][..channels], &rule);
    });
    out
}

/// One window of [`pool_windows`], a lane per channel. Its own function so that every slice
/// is a separate argument, which tells the compiler they do not overlap: it vectorises the
/// loop instead of checking at run time (inside the closure it did not; wasm profile).
#[inline(never)]
fn pool_lanes(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    out: &mut [f32],
    rule: &impl Fn([f32; 4]) -> (u32, f32),
) {
    for ((((out, a), b), c), d) in out.iter_mut().zip(a).zip(b).zip(c).zip(d) {
        *out = rule([*a, *b, *c, *d]).1;
    }
}

/// dL/dz of [`relu_pool`] from dL/d(its output): each output's gradient goes to its window's
/// first maximum, recomputed from z by the forward's rule (nothing is kept between the
/// passes), through ReLU (0 where z ≤ 0; a NaN passes, as in burn). Every input of a window is
/// written once, by selects.
pub(crate) fn relu_pool_backward(
    d_out: &[f32],
    z: &[f32],
    side: usize,
    channels: usize,
) -> Vec<f32> {
    debug_assert_eq!(d_out.len(), pooled_len(z.len(), side, channels));
    if has_nan(z) {
        route_windows(d_out, z, side, channels, window_max_with_nan)
    } else {
        route_windows(d_out, z, side, channels, window_max)
    }
}

fn route_windows(
    d_out: &[f32],
    z: &[f32],
    side: usize,
    channels: usize,
    rule: impl Fn([f32; 4]) -> (u32, f32),
) -> Vec<f32> {
    // Inputs outside every window (an odd side's last row and column) get 0.
    let mut dz = vec![0.0; z.len()];
    let at = window_inputs(side, channels);
    for_each_window(d_out.len(), side, channels, |o, top| {
        let [a, b, c, d] = at.map(|shift| &z[top + shift..][..channels]);
        let (upper, lower) = dz[top..].split_at_mut(side * channels);
        let (da, db) = upper[..2 * channels].split_at_mut(channels);
        let (dc, dd) = lower[..2 * channels].split_at_mut(channels);
        let g = &d_out[o..][..channels];
        route_lanes([a, b, c, d], g, da, db, dc, dd, &rule);
    });
    dz
}

/// One window of [`route_windows`], a lane per channel; separate arguments for the same
/// reason as [`pool_lanes`].
#[inline(never)]
fn route_lanes(
    [a, b, c, d]: [&[f32]; 4],
    g: &[f32],
    da: &mut [f32],
    db: &mut [f32],
    dc: &mut [f32],
    dd: &mut [f32],
    rule: &impl Fn([f32; 4]) -> (u32, f32),
) {
    let passes = |z: f32| z > 0.0 || z.is_nan();
    let inputs = a.iter().zip(b).zip(c).zip(d);
    let grads = da
        .iter_mut()
        .zip(db.iter_mut())
        .zip(dc.iter_mut())
        .zip(dd.iter_mut());
    for (((((&a, &b), &c), &d), (((da, db), dc), dd)), &g) in inputs.zip(grads).zip(g) {
        let (winner, _) = rule([a, b, c, d]);
        *da = if winner == 0 && passes(a) { g } else { 0.0 };
        *db = if winner == 1 && passes(b) { g } else { 0.0 };
        *dc = if winner == 2 && passes(c) { g } else { 0.0 };
        *dd = if winner == 3 && passes(d) { g } else { 0.0 };
    }
}

/// The index in z of each pool output's maximum, in output order (tests: burn's pool returns
/// these).
#[cfg(test)]
fn argmax_indices(z: &[f32], side: usize, channels: usize) -> Vec<usize> {
    let at = window_inputs(side, channels);
    let mut out = vec![0; pooled_len(z.len(), side, channels)];
    let rule = if has_nan(z) {
        window_max_with_nan
    } else {
        window_max
    };
    for_each_window(out.len(), side, channels, |o, top| {
        for ch in 0..channels {
            let window = at.map(|shift| z[top + shift + ch]);
            out[o + ch] = top + at[rule(window).0 as usize] + ch;
        }
    });
    out
}

/// ReLU of a number that is not NaN: a compare and a select. (`f32::max` keeps IEEE's NaN
/// rule, which WebAssembly has no instruction for: it compiled to a call of libm's `fmaxf`,
/// 12 % of a wasm DP step; benchmarks/wasm-step-profile-64.txt.)
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// The first maximum of a window of NaN-free values after ReLU, and its place: the top pair's
/// first maximum wins unless the bottom pair's is strictly greater (row-major order), in
/// selects only.
#[inline(always)]
pub(crate) fn window_max([a, b, c, d]: [f32; 4]) -> (u32, f32) {
    let (a, b, c, d) = (relu(a), relu(b), relu(c), relu(d));
    let (top_at, top_max) = if b > a { (1, b) } else { (0, a) };
    let (bottom_at, bottom_max) = if d > c { (3, d) } else { (2, c) };
    if bottom_max > top_max {
        (bottom_at, bottom_max)
    } else {
        (top_at, top_max)
    }
}

/// The window rule of [`window_max`] where a NaN wins and passes ReLU, so that it propagates
/// as in burn (whose pool keeps the last NaN of a window, this the first: either way the
/// example's gradient is not finite, and DP-SGD gives it clip factor 0).
pub(crate) fn window_max_with_nan(window: [f32; 4]) -> (u32, f32) {
    let relu = |v: f32| if v > 0.0 || v.is_nan() { v } else { 0.0 };
    let (mut best, mut value) = (0, relu(window[0]));
    for (k, v) in (1u32..).zip(&window[1..]) {
        let v = relu(*v);
        if v > value || (v.is_nan() && !value.is_nan()) {
            (best, value) = (k, v);
        }
    }
    (best, value)
}

/// Reads a tensor back as `Vec<f32>`. Every tensor here is f32 on the CPU, so this cannot fail
/// short of a bug in burn.
pub(crate) fn tensor_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("TinyCNN tensors are f32 (burn's default float type)")
}

/// One named parameter tensor inside the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayoutEntry {
    /// Burn's field path, e.g. `conv1.weight`.
    pub name: String,
    /// Burn's shape (linear weights are `[in, out]`).
    pub shape: Vec<usize>,
    /// First index in the flat vector.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

/// The order, shapes and offsets of the parameters in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamLayout {
    pub entries: Vec<LayoutEntry>,
}

impl ParamLayout {
    fn new(parts: Vec<(&str, Vec<usize>)>) -> Self {
        let mut offset = 0;
        let entries = parts
            .into_iter()
            .map(|(name, shape)| {
                let len = shape.iter().product();
                let e = LayoutEntry {
                    name: name.to_string(),
                    shape,
                    offset,
                    len,
                };
                offset += len;
                e
            })
            .collect();
        Self { entries }
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.entries.last().map_or(0, |e| e.offset + e.len)
    }

    /// The part of `flat` that holds entry `i`.
    pub fn slice<'a, T>(&self, flat: &'a [T], i: usize) -> &'a [T] {
        let e = &self.entries[i];
        &flat[e.offset..e.offset + e.len]
    }

    /// The layout in 16 hex digits: SHA-256 of every entry's name and shape, in order. Two
    /// models with the same signature read a flat vector the same way.
    pub fn signature(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.name.as_bytes());
            for d in &e.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update([0xff]);
        }
        crate::data::hex(&h.finalize()[..8])
    }

    /// An error naming both lengths when `flat` does not fit this layout.
    pub fn check_len(&self, flat: &[f32]) -> Result<(), LearningError> {
        if flat.len() == self.num_params() {
            Ok(())
        } else {
            Err(LearningError::ParamLength {
                expected: self.num_params(),
                actual: flat.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_burn_module() {
        let device = Device::flex();
        let config = TinyCnnConfig::new();
        let model = config.init(&device);
        let layout = config.layout();
        assert_eq!(layout.num_params(), 12_810);
        assert_eq!(layout.num_params() as u64, protocol::config::MODEL_DIM);
        assert_eq!(model.num_params(), layout.num_params());
        assert_eq!(model.conv1.weight.dims(), [16, 1, 3, 3]);
        assert_eq!(model.fc.weight.dims(), [800, 10]);
        let logits = config
            .logits(&model.to_flat(), &[0.0; 3 * IMAGE_PIXELS])
            .expect("fits");
        assert_eq!(logits.len(), 3 * 10);
    }

    #[test]
    fn flat_round_trip_is_bit_exact() {
        let device = Device::flex();
        device.seed(7);
        let config = TinyCnnConfig::new();
        let flat = config.init(&device).to_flat();
        assert!(
            flat.iter().any(|v| *v != 0.0),
            "random init is not all zeros"
        );
        let back = config
            .from_flat(&flat, &device)
            .expect("right length")
            .to_flat();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&flat), bits(&back));
        // Same forward output after the round trip.
        let x = Tensor::<4>::ones([2, 1, 28, 28], &device);
        let forward = |flat: &[f32]| {
            let model = config.from_flat(flat, &device).expect("len");
            tensor_vec(model.forward_burn(x.clone()))
        };
        assert_eq!(forward(&flat), forward(&back));
    }

    /// A gradient shaped like the parameters goes back to the layout they came from: the
    /// kernels' orders and burn's are inverse permutations.
    #[test]
    fn the_kernels_layout_round_trips() {
        let config = TinyCnnConfig::new();
        let flat: Vec<f32> = (0..config.layout().num_params())
            .map(|i| i as f32)
            .collect();
        let w = config.weights(&flat).expect("fits");
        let (c1, c2, k) = (
            config.conv1_channels,
            config.conv2_channels,
            config.num_classes,
        );
        assert_eq!(swap_outer(&w.in_place.conv2, 9 * c1, c2, 1), w.conv2);
        let wide = wide_classes(k);
        for (row, fc) in w
            .in_place
            .fc_wide
            .chunks_exact(wide)
            .zip(w.fc.chunks_exact(k))
        {
            assert_eq!(&row[..k], fc);
            assert!(row[k..].iter().all(|v| *v == 0.0), "padded with zeros");
        }
        let parts = [
            swap_outer(&w.in_place.conv1, 9, c1, 1),
            w.conv1_bias,
            w.conv2,
            w.conv2_bias,
            w.fc,
            w.fc_bias,
        ];
        assert_eq!(config.to_layout(parts), flat);
    }

    #[test]
    fn relu_pool_takes_the_first_maximum_and_drops_an_odd_edge() {
        // One 3×3 plane: the pool sees only the top-left 2×2 window (floor).
        let z = [1.0, 3.0, 9.0, 3.0, -1.0, 9.0, 9.0, 9.0, 9.0];
        let out = relu_pool(&z, 3, 1);
        assert_eq!(out, [3.0]);
        assert_eq!(
            relu_pool_backward(&[5.0], &z, 3, 1),
            [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        // All negative: the output is 0 and the gradient stops at ReLU.
        let z = [-1.0, -2.0, -3.0, -4.0];
        let out = relu_pool(&z, 2, 1);
        assert_eq!(out, [0.0]);
        assert_eq!(relu_pool_backward(&[5.0], &z, 2, 1), [0.0; 4]);
        // Ties go to the first (top row first); a NaN wins and its gradient passes.
        let z = [2.0, 1.0, 2.0, 2.0, 1.0, f32::NAN, 0.0, 3.0];
        let out = relu_pool(&z, 2, 1);
        assert_eq!(out[0], 2.0);
        assert!(out[1].is_nan());
        let dz = relu_pool_backward(&[5.0, 7.0], &z, 2, 1);
        assert_eq!(&dz[..4], [5.0, 0.0, 0.0, 0.0]);
        assert_eq!(&dz[4..], [0.0, 7.0, 0.0, 0.0]);
        // Within a row too.
        let z = [3.0, 3.0, 0.0, 0.0];
        assert_eq!(relu_pool_backward(&[1.0], &z, 2, 1), [1.0, 0.0, 0.0, 0.0]);
        // Bottom row strictly greater wins, at its first maximum.
        let z = [1.0, 1.0, 4.0, 4.0];
        assert_eq!(relu_pool_backward(&[1.0], &z, 2, 1), [0.0, 0.0, 1.0, 0.0]);
    }

    /// The forward pass every evaluation and training step uses (im2col + one gemm per layer,
    /// ReLU and pool on the host) gives burn's own layers' logits, on inputs with flat regions
    /// and negative values alike, with TinyCNN's sizes and with sizes for which gemm copies its
    /// operands; and refuses images that are not whole.
    #[test]
    fn the_forward_pass_equals_burn_s_layers() {
        for config in [TinyCnnConfig::new(), TinyCnnConfig::sizes_gemm_must_copy()] {
            forward_equals_burn(&config);
        }
    }

    fn forward_equals_burn(config: &TinyCnnConfig) {
        let device = Device::flex();
        device.seed(11);
        let model = config.init(&device);
        let images: Vec<f32> = (0..3 * IMAGE_PIXELS)
            .map(|i| {
                if i % IMAGE_PIXELS < 300 {
                    0.7
                } else {
                    ((i * 37 % 101) as f32 - 50.0) / 25.0
                }
            })
            .collect();
        let ours = config.logits(&model.to_flat(), &images).expect("fits");
        let x = Tensor::<4>::from_data(TensorData::new(images.clone(), [3, 1, 28, 28]), &device);
        let burn = tensor_vec(model.forward_burn(x));
        assert_eq!(ours.len(), burn.len());
        for (a, b) in ours.iter().zip(&burn) {
            // Summation order differs (one gemm for the batch against burn's per example).
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let err = config
            .logits(&model.to_flat(), &images[1..])
            .expect_err("a partial image");
        assert_eq!(
            err.to_string(),
            "a batch of 2 examples needs 1568 pixel values (28 × 28 each), got 2351"
        );
    }

    /// The host pool and its backward route each output where burn's pool does (burn's
    /// indices are what its backward scatters through): planes full of ties, negative windows, odd sides.
    #[test]
    fn the_pool_routes_each_output_where_burn_s_pool_does() {
        use burn::tensor::module::max_pool2d_with_indices;
        use burn::tensor::ops::MaxPoolOptions;
        let device = Device::flex();
        for side in [26, 11, 5] {
            // Values from {-1, 0, 1, 2}: most windows hold a tie, some only non-positive values.
            let z: Vec<f32> = (0..2 * 3 * side * side)
                .map(|i| ((i * 7 + i / 5) % 4) as f32 - 1.0)
                .collect();
            // Ours reads the same planes channels last.
            let (images, channels, plane) = (2, 3, side * side);
            let nchw = |img: usize, ch: usize, p: usize| (img * channels + ch) * plane + p;
            let mut nhwc = Vec::new();
            for img in 0..images {
                for p in 0..plane {
                    nhwc.extend((0..channels).map(|ch| z[nchw(img, ch, p)]));
                }
            }
            let ours = relu_pool(&nhwc, side, channels);
            let x = Tensor::<4>::from_data(TensorData::new(z.clone(), [2, 3, side, side]), &device)
                .clamp_min(0.0);
            let (values, indices) = max_pool2d_with_indices(x, MaxPoolOptions::new([2, 2]));
            let values = tensor_vec(values);
            let burn: Vec<i64> = indices.into_data().convert::<i64>().try_to_vec().unwrap();
            // Output (img, y, x, ch) of ours is burn's (img, ch, y, x).
            let out_plane = (side / 2) * (side / 2);
            let ours_at = |img: usize, ch: usize, p: usize| (img * out_plane + p) * channels + ch;
            let indices = argmax_indices(&nhwc, side, channels);
            for img in 0..images {
                for ch in 0..channels {
                    for p in 0..out_plane {
                        let (o, b) = (ours_at(img, ch, p), (img * channels + ch) * out_plane + p);
                        assert_eq!(ours[o], values[b], "side {side}");
                        let local = (indices[o] / channels % plane) as i64;
                        assert_eq!(local, burn[b], "side {side}, image {img}, channel {ch}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_signature_names_the_layout() {
        let a = TinyCnnConfig::new().layout().signature();
        assert_eq!(a.len(), 16);
        assert_eq!(a, TinyCnnConfig::new().layout().signature());
        let wider = TinyCnnConfig::new().with_conv2_channels(64);
        assert_ne!(a, wider.layout().signature());
    }

    #[test]
    fn wrong_length_is_a_clear_error() {
        let config = TinyCnnConfig::new();
        let err = config.from_flat(&[0.0; 5], &Device::flex()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter vector has 5 values, expected 12810 (the task's model layout)"
        );
    }
}
