//! TinyCNN's backward pass written out: dL/dz of every pre-activation for a batch, without
//! burn's autodiff.
//!
//! Per-example gradients need dL/dz for each layer (the weight gradients are then built from
//! each example's own layer input, [`crate::dpsgd`]). burn's autodiff got them through zero
//! "tap" leaves, but its path goes through burn-flex's max-pool, a generic 3-D kernel that also
//! writes an i64 index per output: 26–28 % of a batch-512 training step under perf
//! (`benchmarks/step-profile-native-512.txt`). Replacing only the pool inside autodiff did not
//! pay (`benchmarks/pool-experiments-native.txt`: every variant was slower). TinyCNN is three
//! layers, so the backward is short:
//!
//! ```text
//! dz3 = softmax(logits) − onehot                      [b, 10]   (summed cross-entropy)
//! dh2 = dz3 · W_fcᵀ                                   [b, 5, 5, 32]
//! dz2 = each dh2 at its window's argmax, if z2 > 0    [b, 10, 10, 32], kept as routes
//! dh1 = col2im(dz2 · W2)  (conv2's transpose)         [b, 12, 12, 16], along the routes
//! dz1 = each dh1 at its window's argmax, if z1 > 0    [b, 24, 24, 16]
//! ```
//!
//! (Channels last, as the forward pass lays them out: every product is one gemm for the whole
//! batch, [`crate::kernels`] — but those that take dz2: at most one position of each pool window
//! has a gradient, so they follow its routes, [`crate::routes`].)
//!
//! ReLU and the 2×2 pool run together in one pass over z, and the backward finds each window's
//! argmax again from z ([`crate::model::relu_pool`], [`crate::model::relu_pool_backward`]), with burn's
//! rules: the first maximum of a window in row-major order wins, a NaN wins, ReLU's gradient at
//! 0 is 0. The tests hold the result to burn's autodiff through burn's own layers.

use crate::kernels::{Mat, MatMut, matmul};
use crate::model::{
    CONV1_USED, CONV2_USED, IMAGE_PIXELS, Kept, TinyCnnConfig, Weights, forward_kept,
    relu_pool_backward,
};
use crate::routes::Routes;

/// What one pass gives, channels last like the forward pass: the layers' inputs (the weight
/// gradients multiply them) and dL/dz.
pub(crate) struct Pass {
    /// im2col of the images `[b · 576, 9]` and of conv2's input `[b · 100, 9 · 16]` (the
    /// outputs that reach the features, [`crate::model::CONV1_USED`]).
    pub u1: Vec<f32>,
    pub u2: Vec<f32>,
    /// fc's input `[b, 800]`, rows in `(y, x, c)` order.
    pub fc_input: Vec<f32>,
    /// Logits `[b, 10]`.
    pub logits: Vec<f32>,
    /// dL/dz1 `[b · 576, 16]`, dL/dz2 as routes (`[b · 100, 32]` with at most one position
    /// of each pool window not 0), dL/dlogits `[b, 10]`.
    pub dz1: Vec<f32>,
    pub dz2: Routes,
    pub dz3: Vec<f32>,
}

/// Forward and backward of the summed cross-entropy of a batch (`images` holds one whole
/// image per label: checked by the callers).
pub(crate) fn pass(config: &TinyCnnConfig, w: &Weights, images: &[f32], labels: &[u8]) -> Pass {
    let b = labels.len();
    debug_assert_eq!(images.len(), b * IMAGE_PIXELS);
    let (c1, c2, k) = (
        config.conv1_channels,
        config.conv2_channels,
        config.num_classes,
    );
    let f = config.flat_features();
    let Kept {
        u1,
        z1,
        u2,
        z2,
        fc_input,
        logits,
    } = forward_kept(config, w, images);

    let dz3 = softmax_minus_onehot(&logits, labels, k);
    // dh2 = dz3 · W_fcᵀ [b, 800], each row in (y, x, c) order: the pool's outputs, channels last.
    let mut dh2 = vec![0.0; b * f];
    matmul(
        MatMut::new(&mut dh2, b, f),
        Mat::new(&dz3, b, k),
        Mat::new(&w.fc, f, k).t(),
        false,
    );
    let dz2 = Routes::new(&dh2, &z2, CONV2_USED, c2);
    // dh1 = conv2's transpose, col2im(dz2 · W2) [b, 12, 12, c1], along dz2's routes.
    let dh1 = dz2.conv3_input_gradient(&w.conv2, c1);
    let dz1 = relu_pool_backward(&dh1, &z1, CONV1_USED, c1);
    Pass {
        u1,
        u2,
        fc_input,
        logits,
        dz1,
        dz2,
        dz3,
    }
}

/// dL/dlogits of the summed cross-entropy: softmax − onehot, row by row.
fn softmax_minus_onehot(logits: &[f32], labels: &[u8], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for (row, &label) in logits.chunks_exact(k).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        out.extend(
            exp.iter()
                .enumerate()
                .map(|(j, e)| e / sum - f32::from(j == label as usize)),
        );
    }
    out
}
