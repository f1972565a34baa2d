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
use crate::kernels::{Mat, MatMut, im2col3, matmul, swap_outer};

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
    /// The parameters of `flat` by layer, read in place: what a step's kernels multiply, with
    /// no burn module built per step (building one copied every parameter into new tensors).
    pub(crate) fn weights<'a>(&self, flat: &'a [f32]) -> Result<Weights<'a>, LearningError> {
        let layout = self.layout();
        layout.check_len(flat)?;
        let part = |i: usize| layout.slice(flat, i);
        Ok(Weights {
            conv1: part(0),
            conv1_bias: part(1),
            conv2: part(2),
            conv2_bias: part(3),
            fc: part(4),
            fc_bias: part(5),
        })
    }

    /// Logits `[batch × classes]` of `images` (`batch × 28 × 28` values) under `params`.
    pub fn logits(&self, params: &[f32], images: &[f32]) -> Result<Vec<f32>, LearningError> {
        let weights = self.weights(params)?;
        check_images(images, images.len() / IMAGE_PIXELS)?;
        Ok(forward_kept(self, &weights, images).logits)
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

/// TinyCNN's parameters as slices of the flat vector, in burn's shapes: conv weights
/// `[c_out, c_in · 3 · 3]` (row-major, as im2col's rows are ordered), fc `[800, classes]`.
pub(crate) struct Weights<'a> {
    pub conv1: &'a [f32],
    pub conv1_bias: &'a [f32],
    pub conv2: &'a [f32],
    pub conv2_bias: &'a [f32],
    pub fc: &'a [f32],
    pub fc_bias: &'a [f32],
}

/// The forward pass, keeping what the written-out backward needs ([`crate::backward`]).
/// Activations are laid out channel-major over the batch, `[channels, batch, side, side]`, so
/// that each convolution is one matrix product for the whole batch ([`crate::kernels`]). ReLU
/// and the max-pool run together ([`relu_pool`]): burn-flex's pool was a quarter of a training
/// step (`benchmarks/step-profile-native-512.txt`). `images` holds whole images (checked by
/// every caller).
pub(crate) fn forward_kept(config: &TinyCnnConfig, w: &Weights<'_>, images: &[f32]) -> Kept {
    let b = images.len() / IMAGE_PIXELS;
    let (c1, c2, k) = (
        config.conv1_channels,
        config.conv2_channels,
        config.num_classes,
    );
    let (s1, s2) = (IMAGE_SIDE - 2, (IMAGE_SIDE - 2) / 2 - 2); // 26, 11
    // conv1 [c1 × 9] · [9 × b·676] → [c1, b, 26, 26] → pool [c1, b, 13, 13]
    let u1 = im2col3(images, 1, b, IMAGE_SIDE);
    let z1 = conv(w.conv1, w.conv1_bias, &u1, 9);
    let (h1, pool1) = relu_pool(&z1, s1);
    // conv2 [c2 × c1·9] · [c1·9 × b·121] → [c2, b, 11, 11] → pool [c2, b, 5, 5]
    let u2 = im2col3(&h1, c1, b, s1 / 2);
    let z2 = conv(w.conv2, w.conv2_bias, &u2, c1 * 9);
    let (h2, pool2) = relu_pool(&z2, s2);
    // fc [b × 800] · [800 × k]: each example's features in burn's flatten order (c, y, x).
    let fc_input = swap_outer(&h2, c2, b, FEATURE_SIDE * FEATURE_SIDE);
    let f = config.flat_features();
    let mut logits: Vec<f32> = w.fc_bias.iter().copied().cycle().take(b * k).collect();
    matmul(
        MatMut::new(&mut logits, b, k),
        Mat::new(&fc_input, b, f),
        Mat::new(w.fc, f, k),
        true,
    );
    Kept {
        u1,
        z1,
        pool1,
        u2,
        z2,
        pool2,
        fc_input,
        logits,
    }
}

/// A convolution of the batch from its im2col `cols` (`[taps, n]`): `weight · cols` plus each
/// output channel's bias, `[c_out, n]`.
fn conv(weight: &[f32], bias: &[f32], cols: &[f32], taps: usize) -> Vec<f32> {
    let (c_out, n) = (bias.len(), cols.len() / taps);
    let mut out = Vec::with_capacity(c_out * n);
    for &b in bias {
        out.extend(std::iter::repeat_n(b, n));
    }
    matmul(
        MatMut::new(&mut out, c_out, n),
        Mat::new(weight, c_out, taps),
        Mat::new(cols, taps, n),
        true,
    );
    out
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

/// What [`forward_kept`] keeps, channel-major over the batch ([`crate::kernels`]): each layer's
/// input as the weight gradients read it, each pre-activation, where each pool output came from.
pub(crate) struct Kept {
    /// im2col of the images `[9, b · 676]` (conv1's input).
    pub u1: Vec<f32>,
    /// conv1's output `[16, b, 26, 26]`.
    pub z1: Vec<f32>,
    pub pool1: PoolRoute,
    /// im2col of conv2's input `[16 · 9, b · 121]`.
    pub u2: Vec<f32>,
    /// conv2's output `[32, b, 11, 11]`.
    pub z2: Vec<f32>,
    pub pool2: PoolRoute,
    /// fc's input `[b, 800]`.
    pub fc_input: Vec<f32>,
    /// `[b, 10]`.
    pub logits: Vec<f32>,
}

/// Where each output of a 2×2 max-pool came from: which of its window's four inputs (0, 1 on
/// the top row, 2, 3 on the bottom) is the first maximum. A byte per output rather than an
/// index (≈ 2 MB instead of 14 at batch 512), and an output can only name its own window.
pub(crate) struct PoolRoute {
    offsets: Vec<u8>,
    side: usize,
}

impl PoolRoute {
    /// Calls `f(output, index in z of its maximum)` for every output, in output order: nested
    /// loops over planes, rows and columns (a division and a remainder per output cost 4 % of a
    /// wasm step).
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let (side, half) = (self.side, self.side / 2);
        let per_plane = half * half;
        if per_plane == 0 {
            return;
        }
        for (p, plane) in self.offsets.chunks_exact(per_plane).enumerate() {
            let base = p * side * side;
            for (i, row) in plane.chunks_exact(half).enumerate() {
                let top = base + 2 * i * side;
                for (j, &off) in row.iter().enumerate() {
                    let at = top + usize::from(off >> 1) * side + 2 * j + usize::from(off & 1);
                    f(p * per_plane + i * half + j, at);
                }
            }
        }
    }

    /// The index in z of each output's maximum, in output order.
    #[cfg(test)]
    fn indices(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.offsets.len());
        self.for_each(|_, at| out.push(at));
        out
    }

    /// dL/dz from dL/d(pool output) for `relu_pool(z)`: each output's gradient goes to its
    /// argmax, through ReLU (0 where z ≤ 0; a NaN passes, as in burn).
    pub(crate) fn backward(&self, d_out: &[f32], z: &[f32]) -> Vec<f32> {
        debug_assert_eq!(d_out.len(), self.offsets.len());
        // An assignment, not a sum: 2×2 windows at stride 2 never share an input.
        let mut dz = vec![0.0; z.len()];
        self.for_each(|o, at| {
            if z[at] > 0.0 || z[at].is_nan() {
                dz[at] = d_out[o];
            }
        });
        dz
    }
}

/// ReLU then 2×2 max-pool (stride 2, floor: an odd last row and column are dropped) of square
/// planes of `side × side`, one after another: the pooled values and where they came from.
/// burn's rules: the first maximum of a window in row-major order wins (ties are common: a
/// constant background gives equal activations), a NaN wins (see [`window_max_with_nan`]).
pub(crate) fn relu_pool(z: &[f32], side: usize) -> (Vec<f32>, PoolRoute) {
    debug_assert_eq!(z.len() % (side * side), 0, "whole planes");
    // NaN is rare (a broken model): one pass to find it keeps it out of the hot loop.
    if !z.iter().fold(false, |nan, v| nan | v.is_nan()) {
        return relu_pool_nan_free(z, side);
    }
    let half = side / 2;
    let planes = z.len() / (side * side);
    let mut out = Vec::with_capacity(planes * half * half);
    let mut offsets = Vec::with_capacity(planes * half * half);
    for plane in z.chunks_exact(side * side) {
        for i in 0..half {
            for j in 0..half {
                let (offset, value) = window_max_with_nan(plane, 2 * i * side + 2 * j, side);
                out.push(value);
                offsets.push(offset);
            }
        }
    }
    (out, PoolRoute { offsets, side })
}

/// ReLU of a number that is not NaN: a compare and a select. (`f32::max` keeps IEEE's NaN
/// rule, which WebAssembly has no instruction for: it compiled to a call of libm's `fmaxf`,
/// 12 % of a wasm DP step; benchmarks/wasm-step-profile-64.txt.)
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// [`relu_pool`] of NaN-free z, a pair of rows at a time into outputs sized up front: no
/// per-window call, bounds check or push (in wasm the per-window function called through a
/// pointer was 10 % of a DP step, the pushes 6 %; benchmarks/wasm-step-profile-64.txt). In
/// each window the top pair's first maximum wins unless the bottom pair's is strictly greater:
/// the first maximum in row-major order, in selects.
fn relu_pool_nan_free(z: &[f32], side: usize) -> (Vec<f32>, PoolRoute) {
    let half = side / 2;
    let n = z.len() / (side * side) * half * half;
    let (mut out, mut offsets) = (vec![0.0; n], vec![0u8; n]);
    if half > 0 {
        let rows = z
            .chunks_exact(side * side)
            .flat_map(|plane| plane.chunks_exact(2 * side).take(half));
        let outputs = out
            .chunks_exact_mut(half)
            .zip(offsets.chunks_exact_mut(half));
        for (pair, (out_row, off_row)) in rows.zip(outputs) {
            let (top, bottom) = pair.split_at(side);
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            for ((t, b), (o, off)) in windows.zip(out_row.iter_mut().zip(off_row.iter_mut())) {
                let (a, b1, c, d) = (relu(t[0]), relu(t[1]), relu(b[0]), relu(b[1]));
                let (top_max, top_at) = if b1 > a { (b1, 1) } else { (a, 0) };
                let (bottom_max, bottom_at) = if d > c { (d, 3) } else { (c, 2) };
                (*o, *off) = if bottom_max > top_max {
                    (bottom_max, bottom_at)
                } else {
                    (top_max, top_at)
                };
            }
        }
    }
    (out, PoolRoute { offsets, side })
}

/// The window rule of [`relu_pool_nan_free`] where a NaN wins and passes ReLU, so that it
/// propagates as in burn (whose pool keeps the last NaN of a window, this the first: either way
/// the example's gradient is not finite, and DP-SGD gives it clip factor 0).
fn window_max_with_nan(plane: &[f32], first: usize, side: usize) -> (u8, f32) {
    let relu = |v: f32| if v > 0.0 || v.is_nan() { v } else { 0.0 };
    let at = [first, first + 1, first + side, first + side + 1];
    let (mut best, mut value) = (0, relu(plane[first]));
    for (k, q) in (1u8..).zip(&at[1..]) {
        let v = relu(plane[*q]);
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
    pub fn slice<'a>(&self, flat: &'a [f32], i: usize) -> &'a [f32] {
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

    #[test]
    fn relu_pool_takes_the_first_maximum_and_drops_an_odd_edge() {
        // One 3×3 plane: the pool sees only the top-left 2×2 window (floor).
        let z = [1.0, 3.0, 9.0, 3.0, -1.0, 9.0, 9.0, 9.0, 9.0];
        let (out, route) = relu_pool(&z, 3);
        assert_eq!(out, [3.0]);
        assert_eq!(
            route.backward(&[5.0], &z),
            [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        // All negative: the output is 0 and the gradient stops at ReLU.
        let z = [-1.0, -2.0, -3.0, -4.0];
        let (out, route) = relu_pool(&z, 2);
        assert_eq!(out, [0.0]);
        assert_eq!(route.backward(&[5.0], &z), [0.0; 4]);
        // Ties go to the first (top row first); a NaN wins and its gradient passes.
        let z = [2.0, 1.0, 2.0, 2.0, 1.0, f32::NAN, 0.0, 3.0];
        let (out, route) = relu_pool(&z, 2);
        assert_eq!(out[0], 2.0);
        assert!(out[1].is_nan());
        let dz = route.backward(&[5.0, 7.0], &z);
        assert_eq!(&dz[..4], [5.0, 0.0, 0.0, 0.0]);
        assert_eq!(&dz[4..], [0.0, 7.0, 0.0, 0.0]);
        // Within a row too.
        let z = [3.0, 3.0, 0.0, 0.0];
        let (_, route) = relu_pool(&z, 2);
        assert_eq!(route.backward(&[1.0], &z), [1.0, 0.0, 0.0, 0.0]);
        // Bottom row strictly greater wins, at its first maximum.
        let z = [1.0, 1.0, 4.0, 4.0];
        let (_, route) = relu_pool(&z, 2);
        assert_eq!(route.backward(&[1.0], &z), [0.0, 0.0, 1.0, 0.0]);
    }

    /// The forward pass every evaluation and training step uses (im2col + one gemm per layer,
    /// ReLU and pool on the host) gives burn's own layers' logits, on inputs with flat regions
    /// and negative values alike; and refuses images that are not whole.
    #[test]
    fn the_forward_pass_equals_burn_s_layers() {
        let device = Device::flex();
        device.seed(11);
        let config = TinyCnnConfig::new();
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

    /// The host pool routes each output where burn's pool does (burn's indices are what its
    /// backward scatters through): planes full of ties, negative windows, odd sides.
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
            let (ours, route) = relu_pool(&z, side);
            let x = Tensor::<4>::from_data(TensorData::new(z.clone(), [2, 3, side, side]), &device)
                .clamp_min(0.0);
            let (values, indices) = max_pool2d_with_indices(x, MaxPoolOptions::new([2, 2]));
            assert_eq!(ours, tensor_vec(values), "side {side}");
            let burn: Vec<i64> = indices.into_data().convert::<i64>().try_to_vec().unwrap();
            let plane = side * side;
            let local: Vec<i64> = route
                .indices()
                .into_iter()
                .map(|a| (a % plane) as i64)
                .collect();
            assert_eq!(local, burn, "side {side}");
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
