//! The training step's dense kernels on plain slices: a checked matrix product (the `gemm`
//! crate's, the one burn-flex itself calls) and im2col of a 3×3 convolution for a whole batch
//! at once (col2im, its adjoint, is the tests' oracle for [`crate::routes`], which replaced
//! it in the step).
//!
//! Why not burn-flex's `conv2d` and batched `matmul`: they run one small gemm per example, with
//! an NHWC copy of the input, a transposed copy of the weights and a scatter of the output
//! around each, so at TinyCNN's sizes that overhead cost as much as the arithmetic (in wasm:
//! forward convolutions 29 % of a DP step, conv2's transpose 20 %, the per-example weight
//! gradients 24 %, unfold's index tensors 5 %; `benchmarks/wasm-step-profile-64.txt`). With the
//! activations laid out channels last, `[batch, side, side, channels]`, each convolution of the
//! batch is one gemm whose long dimension is every position of every image, an example's rows
//! are contiguous (its weight gradient is a gemm on its own rows), and im2col copies runs of
//! `3 · channels` values. Written as a module that does not know TinyCNN, so that it could be
//! proposed to burn-flex as a batched 3×3 path.

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
    fn strided(
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
        let len = rows
            .checked_mul(cols)
            .expect("an output within the address space");
        assert_eq!(data.len(), len, "a {rows}×{cols} output");
        Self { data, rows, cols }
    }
}

/// How many values a strided matrix spans: its last element's index + 1 (0 when empty).
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        // Checked: the SAFETY argument of `matmul` rests on this bound.
        let last = |n: usize, stride: usize| (n - 1).checked_mul(stride);
        last(rows, row_stride)
            .zip(last(cols, col_stride))
            .and_then(|(r, c)| r.checked_add(c)?.checked_add(1))
            .expect("a view within the address space")
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`. On the calling thread (the step
/// is already split across threads or workers by the caller). Panics when the shapes do not
/// chain: the shapes follow from TinyCNN's configuration and the batch size, both checked
/// before a step starts (a wrong image count is an error there, never a panic here).
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
    // gemm's argument order: dst, then each matrix's column stride before its row stride.
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

/// im2col of a 3×3 convolution without padding, stride 1, for a batch of images laid out
/// channels last, `[batch, side, side, channels]`, at its top-left `out × out` outputs (at most
/// `side − 2`: TinyCNN's pools never read the others, [`crate::model`]):
/// `[batch · out², 9 · channels]`, row `(b, y, x)` holding the taps in `(dy, dx, c)` order, i.e.
/// input `(b, y + dy, x + dx, c)`. A convolution of the batch is then `cols · Wᵀ` with W's taps
/// in the same order ([`taps_last`]). Each row is three copies of `3 · channels` contiguous
/// values.
pub(crate) fn im2col3(
    images: &[f32],
    channels: usize,
    batch: usize,
    side: usize,
    out: usize,
) -> Vec<f32> {
    let image = side * side * channels;
    assert_eq!(images.len(), batch * image, "[batch, side, side, channels]");
    assert!(out + 2 <= side, "a 3 × 3 window inside the image");
    let run = 3 * channels;
    let mut cols = Vec::with_capacity(batch * out * out * 3 * run);
    for img in images.chunks_exact(image.max(1)) {
        for y in 0..out {
            for x in 0..out {
                let at = |dy: usize| &img[((y + dy) * side + x) * channels..][..run];
                if channels == 1 {
                    // Runs of 3 values: a copy call each would cost more than the values.
                    let [r0, r1, r2] = [0, 1, 2].map(at);
                    cols.extend([
                        r0[0], r0[1], r0[2], r1[0], r1[1], r1[2], r2[0], r2[1], r2[2],
                    ]);
                } else {
                    (0..3).for_each(|dy| cols.extend_from_slice(at(dy)));
                }
            }
        }
    }
    cols
}

/// The adjoint of [`im2col3`]: each column value added back to the input position it was
/// copied from, `[batch, side, side, channels]`. dL/d(input) of a convolution is
/// `col2im3(dL/d(output) · W)`. (Training follows the pool's routes instead,
/// [`crate::routes::Routes::conv3_input_gradient`]; this is its tests' oracle.)
#[cfg(test)]
pub(crate) fn col2im3(cols: &[f32], channels: usize, batch: usize, side: usize) -> Vec<f32> {
    let out = side.saturating_sub(2);
    let image = side * side * channels;
    let run = 3 * channels;
    assert_eq!(cols.len(), batch * out * out * 3 * run, "im2col3's shape");
    let mut images = vec![0.0; batch * image];
    if cols.is_empty() {
        return images;
    }
    let per_image = cols.chunks_exact(out * out * 3 * run);
    for (img, rows) in images.chunks_exact_mut(image).zip(per_image) {
        for (position, row) in rows.chunks_exact(3 * run).enumerate() {
            let (y, x) = (position / out, position % out);
            for (dy, taps) in row.chunks_exact(run).enumerate() {
                let d = &mut img[((y + dy) * side + x) * channels..][..run];
                d.iter_mut().zip(taps).for_each(|(d, t)| *d += t);
            }
        }
    }
    images
}

/// A convolution's weights `[c_out, c_in, 3, 3]` (burn's) with the taps in im2col's order,
/// `[c_out, 3, 3, c_in]`; [`taps_first`] is the inverse (for the gradients).
pub(crate) fn taps_last(weights: &[f32], c_in: usize) -> Vec<f32> {
    let per_out = 9 * c_in;
    assert!(
        per_out > 0 && weights.len().is_multiple_of(per_out),
        "[c_out, c_in, 3, 3]"
    );
    let mut out = Vec::with_capacity(weights.len());
    for w in weights.chunks_exact(per_out.max(1)) {
        out.extend(swap_outer(w, c_in, 9, 1));
    }
    out
}

/// The inverse of [`taps_last`]: `[c_out, 3, 3, c_in]` → `[c_out, c_in, 3, 3]`.
pub(crate) fn taps_first<T: Copy>(weights: &[T], c_in: usize) -> Vec<T> {
    let per_out = 9 * c_in;
    assert!(
        per_out > 0 && weights.len().is_multiple_of(per_out),
        "[c_out, 3, 3, c_in]"
    );
    let mut out = Vec::with_capacity(weights.len());
    for w in weights.chunks_exact(per_out.max(1)) {
        out.extend(swap_outer(w, 9, c_in, 1));
    }
    out
}

/// `[outer, inner, len]` → `[inner, outer, len]`: between burn's channel-first orders and the
/// kernels' channels-last ones.
pub(crate) fn swap_outer<T: Copy>(v: &[T], outer: usize, inner: usize, len: usize) -> Vec<T> {
    assert_eq!(v.len(), outer * inner * len, "[outer, inner, len]");
    let mut out = Vec::with_capacity(v.len());
    for i in 0..inner {
        for o in 0..outer {
            out.extend_from_slice(&v[(o * inner + i) * len..][..len]);
        }
    }
    out
}

/// Σ of each column of a row-major `[rows, cols]` matrix: one vector add per row, so it
/// vectorises (a single running sum per value is latency-bound).
pub(crate) fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0.0; cols];
    for row in m.chunks_exact(cols.max(1)) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    sums
}

/// Σ v² with eight running sums, which vectorise; one running sum is a chain of dependent adds.
/// f32 for gradients' norms; f64 for a rounded vector's (exact there: whole numbers).
pub(crate) fn sum_squares<T>(v: &[T]) -> T
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let mut acc = [T::default(); 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(T::default(), |s, &x| s + x * x);
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a = *a + x * x);
    }
    acc.iter().fold(T::default(), |s, &a| s + a) + tail
}

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
        // One block of a buffer laid out [rows, batch · cols], read as itself and as its
        // transpose: strides, not copies.
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
    fn sums_cover_every_value_and_the_tail() {
        let m: Vec<f32> = (1..=15).map(|v| v as f32).collect(); // 5 rows × 3 columns
        assert_eq!(column_sums(&m, 3), [35.0, 40.0, 45.0]);
        for n in [0, 1, 7, 8, 9, 17] {
            let v: Vec<f32> = (1..=n).map(|v| v as f32).collect();
            let want: f32 = v.iter().map(|x| x * x).sum();
            assert_eq!(sum_squares(&v), want, "{n} values");
        }
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
        let planes = values(channels * batch * side * side, 5); // [batch, side, side, channels]
        let cols = im2col3(&planes, channels, batch, side, out);
        // burn's unfold of [batch, channels, side, side] gives [batch, channels·9, out²].
        let mut nchw = Vec::new();
        for b in 0..batch {
            for c in 0..channels {
                let pixels = (0..side * side).map(|p| planes[(b * side * side + p) * channels + c]);
                nchw.extend(pixels);
            }
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(nchw, [batch, channels, side, side]),
            &Device::flex(),
        );
        let unfold = unfold4d(x, [3, 3], UnfoldOptions::new([1, 1], [0, 0], [1, 1]));
        let unfold: Vec<f32> = unfold.into_data().try_to_vec().expect("f32");
        let (mut ours, mut burn) = (Vec::new(), Vec::new());
        for b in 0..batch {
            for c in 0..channels {
                for tap in 0..9 {
                    for pos in 0..out * out {
                        ours.push(cols[(b * out * out + pos) * 9 * channels + tap * channels + c]);
                        burn.push(unfold[((b * channels + c) * 9 + tap) * out * out + pos]);
                    }
                }
            }
        }
        assert_eq!(ours, burn);
        // The top-left outputs alone are those rows of the whole im2col.
        let part = im2col3(&planes, channels, batch, side, out - 1);
        let rows = cols.chunks_exact(9 * channels).enumerate();
        let kept = rows.filter(|(r, _)| (r % (out * out)) / out < out - 1 && r % out < out - 1);
        assert_eq!(
            part,
            kept.flat_map(|(_, row)| row.to_vec()).collect::<Vec<_>>()
        );
        // The weights' tap order follows, and back.
        let w = values(4 * channels * 9, 7);
        let last = taps_last(&w, channels);
        assert_eq!(last[channels], w[1], "second tap of input channel 0");
        assert_eq!(taps_first(&last, channels), w);
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
