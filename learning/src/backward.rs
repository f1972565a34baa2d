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
//! dh2 = dz3 · W_fcᵀ                                   [b, 800]
//! dz2 = each dh2 at its window's argmax, if z2 > 0    [b, 32, 11, 11]
//! dh1 = conv_transpose(dz2, W2)                       [b, 16, 13, 13]
//! dz1 = each dh1 at its window's argmax, if z1 > 0    [b, 16, 26, 26]
//! ```
//!
//! ReLU and the 2×2 pool run together in one pass over z that keeps each window's argmax
//! ([`crate::model::relu_pool`], in the forward pass every evaluation uses too), with burn's
//! rules: the first maximum of a window in row-major order wins, a NaN wins, ReLU's gradient at
//! 0 is 0. The tests hold the result to burn's autodiff through burn's own layers.

use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::{IMAGE_SIDE, TinyCnn, TinyCnnConfig, tensor_vec};

/// What one pass gives: the layers' inputs (the weight gradients multiply them) and dL/dz.
pub(crate) struct Pass {
    /// The images `[b, 1, 28, 28]` (conv1's input).
    pub x: Tensor<4>,
    /// conv2's input `[b, 16, 13, 13]`.
    pub h1: Tensor<4>,
    /// fc's input `[b, 800]`.
    pub fc_input: Tensor<2>,
    /// Logits `[b × 10]`.
    pub logits: Vec<f32>,
    /// dL/dz1 `[b, 16, 676]`, dL/dz2 `[b, 32, 121]`, dL/dlogits `[b, 10]`.
    pub dz1: Tensor<3>,
    pub dz2: Tensor<3>,
    pub dz3: Tensor<2>,
}

/// Forward and backward of the summed cross-entropy of a batch.
pub(crate) fn pass(
    model: &TinyCnn,
    config: &TinyCnnConfig,
    images: &[f32],
    labels: &[u8],
    device: &Device,
) -> Pass {
    let b = labels.len();
    let (c1, c2, k) = (
        config.conv1_channels,
        config.conv2_channels,
        config.num_classes,
    );
    let (s1, s2) = (IMAGE_SIDE - 2, (IMAGE_SIDE - 2) / 2 - 2); // 26, 11
    let x = Tensor::<4>::from_data(
        TensorData::new(images.to_vec(), [b, 1, IMAGE_SIDE, IMAGE_SIDE]),
        device,
    );
    let kept = model.forward_kept(x.clone());
    let logits = tensor_vec(kept.logits);

    let dz3 = Tensor::<2>::from_data(
        TensorData::new(softmax_minus_onehot(&logits, labels, k), [b, k]),
        device,
    );
    let dh2 = tensor_vec(dz3.clone().matmul(model.fc.weight.val().transpose()));
    let dz2 = kept.pool2.backward(&dh2, &kept.z2);
    let dz2 = Tensor::<4>::from_data(TensorData::new(dz2, [b, c2, s2, s2]), device);
    let transposed = ConvTransposeOptions::new([1, 1], [0, 0], [0, 0], [1, 1], 1);
    let dh1 = conv_transpose2d(dz2.clone(), model.conv2.weight.val(), None, transposed);
    let dz1 = kept.pool1.backward(&tensor_vec(dh1), &kept.z1);
    let dz1 = Tensor::<3>::from_data(TensorData::new(dz1, [b, c1, s1 * s1]), device);
    Pass {
        x,
        h1: kept.h1,
        fc_input: kept.fc_input,
        logits,
        dz1,
        dz2: dz2.reshape([b, c2, s2 * s2]),
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
