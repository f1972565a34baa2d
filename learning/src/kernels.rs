//! The training step's dense kernels on plain slices: a checked matrix product (the `gemm`
//! crate's, the one burn-flex itself calls) and im2col / col2im of a 3×3 convolution for a
//! whole batch at once.
//!
//! Why not burn-flex's `conv2d` and batched `matmul`: they run one small gemm per example, with
//! an NHWC copy of the input, a transposed copy of the weights and a scatter of the output
//! around each, so at TinyCNN's sizes that overhead cost as much as the arithmetic (in wasm:
//! forward convolutions 29 % of a DP step, conv2's transpose 20 %, the per-example weight
//! gradients 24 %, unfold's index tensors 5 %; `benchmarks/wasm-step-profile-64.txt`). Laid out
//! channel-major over the batch, `[channels, batch, side, side]`, each convolution of the batch
//! is one gemm whose long dimension is the whole batch. Written as a module that does not know
//! TinyCNN, so that it could be proposed to burn-flex as a batched 3×3 path.

/// A matrix inside a slice: element (r, c) at `r · row_stride + c · col_stride`. Strides let
/// one buffer be read as its transpose, or one example's block of a batch, without a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `rows × cols`, row-major and dense.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// `rows × cols` with the given strides. Panics (a bug of the caller) when an element it
    /// names lies outside `data`: the gemm below reads through raw pointers.
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        assert!(
            span(rows, cols, row_stride, col_stride) <= data.len(),
            "a {rows}×{cols} matrix with strides ({row_stride}, {col_stride}) does not fit in {} values",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A dense row-major `rows × cols` matrix to write.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
}

impl<'a> MatMut<'a> {
    /// Panics (a bug of the caller) unless `data` holds exactly `rows × cols` values.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a {rows}×{cols} output");
        Self { data, rows, cols }
    }
}

/// How many values a strided matrix spans: its last element's index + 1 (0 when empty).
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`. On the calling thread (the step
/// is already split across threads or workers by the caller). Panics when the shapes do not
/// chain: every shape here is fixed by TinyCNN's configuration, never by a peer's input.
/// The workspace's only `unsafe`: gemm's API takes raw pointers and strides.
#[allow(unsafe_code)]
pub(crate) fn matmul(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "({}×{}) · ({}×{}) into {}×{}",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols,
        dst.rows,
        dst.cols
    );
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.data.fill(0.0);
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("a stride within the address space");
    // SAFETY: `Mat::strided` checked that every element of lhs and rhs lies inside its slice,
    // `MatMut::new` that dst is exactly m × n row-major (row stride n, column stride 1); dst is
    // borrowed mutably, so it overlaps neither input. gemm reads and writes nothing else.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The batch's planes `[channels, batch, side, side]` as im2col of a 3×3 convolution without
/// padding, stride 1: `[channels · 9, batch · out²]` with `out = side − 2`, row `(c, dy, dx)`
/// holding input `(c, b, y + dy, x + dx)` at column `(b, y, x)`. A convolution of the batch is
/// then `W [c_out × channels·9] · cols`. Built by whole-row copies, no index arithmetic per value.
pub(crate) fn im2col3(planes: &[f32], channels: usize, batch: usize, side: usize) -> Vec<f32> {
    let out = side.saturating_sub(2);
    let plane = side * side;
    assert_eq!(
        planes.len(),
        channels * batch * plane,
        "[channels, batch, side, side]"
    );
    let mut cols = Vec::with_capacity(channels * 9 * batch * out * out);
    if out == 0 || batch == 0 {
        return cols;
    }
    for group in planes.chunks_exact(batch * plane) {
        for (dy, dx) in TAPS {
            for p in group.chunks_exact(plane) {
                for y in 0..out {
                    cols.extend_from_slice(&p[(y + dy) * side + dx..][..out]);
                }
            }
        }
    }
    cols
}

/// The adjoint of [`im2col3`]: each column value added back to the input position it was
/// copied from, `[channels, batch, side, side]`. dL/d(input) of a convolution is
/// `col2im3(Wᵀ · dL/d(output))`.
pub(crate) fn col2im3(cols: &[f32], channels: usize, batch: usize, side: usize) -> Vec<f32> {
    let out = side.saturating_sub(2);
    let plane = side * side;
    assert_eq!(
        cols.len(),
        channels * 9 * batch * out * out,
        "im2col3's shape"
    );
    let mut planes = vec![0.0; channels * batch * plane];
    let per_row = batch * out * out;
    if per_row == 0 {
        return planes;
    }
    let per_channel = cols.chunks_exact(9 * per_row);
    for (c_rows, group) in per_channel.zip(planes.chunks_exact_mut(batch * plane)) {
        for (row, (dy, dx)) in c_rows.chunks_exact(per_row).zip(TAPS) {
            for (src, p) in row
                .chunks_exact(out * out)
                .zip(group.chunks_exact_mut(plane))
            {
                for (y, s) in src.chunks_exact(out).enumerate() {
                    let d = &mut p[(y + dy) * side + dx..][..out];
                    d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                }
            }
        }
    }
    planes
}

/// `[outer, inner, len]` → `[inner, outer, len]`: between the kernels' channel-major layout
/// `[channels, batch, …]` and one row per example `[batch, channels, …]`.
pub(crate) fn swap_outer(v: &[f32], outer: usize, inner: usize, len: usize) -> Vec<f32> {
    assert_eq!(v.len(), outer * inner * len, "[outer, inner, len]");
    let mut out = Vec::with_capacity(v.len());
    for i in 0..inner {
        for o in 0..outer {
            out.extend_from_slice(&v[(o * inner + i) * len..][..len]);
        }
    }
    out
}

/// The nine taps `(dy, dx)` of a 3×3 kernel in burn's weight order (row-major).
const TAPS: [(usize, usize); 9] = [
    (0, 0),
    (0, 1),
    (0, 2),
    (1, 0),
    (1, 1),
    (1, 2),
    (2, 0),
    (2, 1),
    (2, 2),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 - 500.0) / 250.0)
            .collect()
    }

    /// The product of plain loops, in f64.
    fn naive(lhs: Mat<'_>, rhs: Mat<'_>) -> Vec<f32> {
        let at = |m: &Mat<'_>, r: usize, c: usize| m.data[r * m.row_stride + c * m.col_stride];
        let mut out = Vec::new();
        for r in 0..lhs.rows {
            for c in 0..rhs.cols {
                let s: f64 = (0..lhs.cols)
                    .map(|k| f64::from(at(&lhs, r, k)) * f64::from(at(&rhs, k, c)))
                    .sum();
                out.push(s as f32);
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "at {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matmul_reads_strided_and_transposed_views() {
        // One example's block of a batch laid out [rows, batch · cols], read as itself and as
        // its transpose: the two views the per-example gradients use.
        let (rows, batch, cols) = (5, 3, 7);
        let a = values(rows * batch * cols, 1);
        let b = values(rows * batch * cols, 2);
        for example in 0..batch {
            let lhs = Mat::strided(&a[example * cols..], rows, cols, batch * cols, 1);
            let rhs = Mat::strided(&b[example * cols..], rows, cols, batch * cols, 1).t();
            let mut out = vec![0.0; rows * rows];
            matmul(MatMut::new(&mut out, rows, rows), lhs, rhs, false);
            assert_close(&out, &naive(lhs, rhs));
            // Accumulating adds a second product.
            matmul(MatMut::new(&mut out, rows, rows), lhs, rhs, true);
            let twice: Vec<f32> = naive(lhs, rhs).iter().map(|v| 2.0 * v).collect();
            assert_close(&out, &twice);
        }
        // Sizes past gemm's blocks, and k = 0.
        let (m, k, n) = (37, 150, 301);
        let (a, b) = (values(m * k, 3), values(k * n, 4));
        let mut out = vec![0.0; m * n];
        matmul(
            MatMut::new(&mut out, m, n),
            Mat::new(&a, m, k),
            Mat::new(&b, k, n),
            false,
        );
        assert_close(&out, &naive(Mat::new(&a, m, k), Mat::new(&b, k, n)));
        let mut out = vec![9.0; 6];
        matmul(
            MatMut::new(&mut out, 2, 3),
            Mat::new(&[], 2, 0),
            Mat::new(&[], 0, 3),
            false,
        );
        assert_eq!(out, [0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_view_past_its_slice_is_refused() {
        let data = [0.0; 10];
        let _ = Mat::strided(&data, 3, 4, 4, 1); // needs 12
    }

    #[test]
    fn im2col_is_burn_s_unfold_and_col2im_its_adjoint() {
        use burn::tensor::module::unfold4d;
        use burn::tensor::ops::UnfoldOptions;
        use burn::tensor::{Device, Tensor, TensorData};
        let (channels, batch, side) = (3, 2, 6);
        let out = side - 2;
        let planes = values(channels * batch * side * side, 5);
        let cols = im2col3(&planes, channels, batch, side);
        // burn's unfold of [batch, channels, side, side] gives [batch, channels·9, out²].
        let mut nchw = Vec::new();
        for b in 0..batch {
            for c in 0..channels {
                let plane = (c * batch + b) * side * side;
                nchw.extend_from_slice(&planes[plane..][..side * side]);
            }
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(nchw, [batch, channels, side, side]),
            &Device::flex(),
        );
        let unfold = unfold4d(x, [3, 3], UnfoldOptions::new([1, 1], [0, 0], [1, 1]));
        let unfold: Vec<f32> = unfold.into_data().try_to_vec().expect("f32");
        for b in 0..batch {
            for row in 0..channels * 9 {
                let ours = &cols[row * batch * out * out + b * out * out..][..out * out];
                let burn = &unfold[(b * channels * 9 + row) * out * out..][..out * out];
                assert_eq!(ours, burn, "example {b}, row {row}");
            }
        }
        // ⟨im2col(x), y⟩ = ⟨x, col2im(y)⟩ for any y: col2im is the adjoint.
        let y = values(cols.len(), 6);
        let back = col2im3(&y, channels, batch, side);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let (lhs, rhs) = (dot(&cols, &y), dot(&planes, &back));
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
