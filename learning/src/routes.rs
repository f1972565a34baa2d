//! The 2×2 max-pool's backward by index, and the products after it that read only where a
//! gradient landed.
//!
//! Each output of [`relu_pool`](crate::model::relu_pool) sends its gradient to one input: its
//! window's first maximum, if that passed ReLU. After conv2 (its used 10 × 10 outputs → 5 × 5)
//! that is at most 25 of 100 positions per channel, so dL/dz2 is at least 75 % zeros. The two
//! products that took dL/dz2 densely — conv2's transpose `dz2 · W2` and each example's weight
//! gradient `dz2ᵀ · u2` — cost 0.92 MFLOP per example each (1.1 over burn's 11 × 11), more than
//! half of a DP step's arithmetic. Following the routes costs at most 0.23 MFLOP each, less
//! where ReLU stopped the gradient: the same sums without their zero terms (the tests hold them
//! to the dense products, and the whole backward to burn's autodiff).

use crate::model::{for_each_window, has_nan, window_inputs, window_max, window_max_with_nan};

/// What a sum over routes adds up: each example's own, or the whole batch's (one row, also for
/// an empty batch).
#[derive(Clone, Copy)]
pub(crate) enum Group {
    Example,
    Batch,
}

impl Group {
    fn count(self, images: usize) -> usize {
        match self {
            Group::Example => images,
            Group::Batch => 1,
        }
    }

    fn of(self, image: usize) -> usize {
        match self {
            Group::Example => image,
            Group::Batch => 0,
        }
    }
}

/// Where the gradient of every output of a ReLU + 2×2 pool goes, for whole images
/// `[images, side, side, channels]` (channels last) of z.
pub(crate) struct Routes {
    /// Per pool output, in the pool's output order `[images, side / 2, side / 2, channels]`:
    /// the position `y · side + x` within its image whose channel the gradient reaches.
    positions: Vec<u32>,
    /// And that gradient: dL/d(output), or 0 where ReLU stops it (a NaN passes, as in burn).
    grads: Vec<f32>,
    images: usize,
    side: usize,
    channels: usize,
}

impl Routes {
    /// dL/dz of ReLU + pool as routes, from dL/d(its output) `d_out` and z, by the forward's
    /// window rule ([`crate::model::relu_pool`]). ([`crate::model::relu_pool_backward`] writes
    /// the same dL/dz out densely for conv1, in its own loop: building it from routes, a scatter
    /// per output, made a wasm DP step ≈ 15 % slower.)
    pub(crate) fn new(d_out: &[f32], z: &[f32], side: usize, channels: usize) -> Self {
        let plane = side * side * channels;
        let images = z.len().checked_div(plane).unwrap_or(0);
        let half = side / 2;
        debug_assert_eq!(d_out.len(), images * half * half * channels);
        let mut routes = Routes {
            positions: vec![0; d_out.len()],
            grads: vec![0.0; d_out.len()],
            images,
            side,
            channels,
        };
        if has_nan(z) {
            routes.fill(d_out, z, window_max_with_nan);
        } else {
            routes.fill(d_out, z, window_max);
        }
        routes
    }

    fn fill(&mut self, d_out: &[f32], z: &[f32], rule: impl Fn([f32; 4]) -> (u32, f32)) {
        let (side, channels) = (self.side, self.channels);
        let at = window_inputs(side, channels);
        let positions_per_image = side * side;
        for_each_window(d_out.len(), side, channels, |o, top| {
            let [a, b, c, d] = at.map(|shift| &z[top + shift..][..channels]);
            // Within its image; side² ≤ u32::MAX for any image a batch can hold.
            let first = ((top / channels) % positions_per_image) as u32;
            route_lanes(
                [a, b, c, d],
                &d_out[o..][..channels],
                first,
                side as u32,
                &mut self.positions[o..][..channels],
                &mut self.grads[o..][..channels],
                &rule,
            );
        });
    }

    /// Pool outputs per image.
    fn per_image(&self) -> usize {
        let half = self.side / 2;
        half * half * self.channels
    }

    /// Each image's `(channel, position, gradient)` for the gradients not 0, in order.
    fn image_routes(&self) -> impl Iterator<Item = impl Iterator<Item = (usize, usize, f32)>> {
        let (per_image, channels) = (self.per_image().max(1), self.channels);
        let positions = self.positions.chunks_exact(per_image);
        positions
            .zip(self.grads.chunks_exact(per_image))
            .take(self.images)
            .map(move |(positions, grads)| {
                positions
                    .iter()
                    .zip(grads)
                    .enumerate()
                    .filter(|(_, (_, g))| **g != 0.0)
                    .map(move |(o, (p, g))| (o % channels, *p as usize, *g))
            })
    }

    /// Σ of every routed gradient times the layer input's row at its position, per example or
    /// for the whole batch: `[examples or 1, channels, taps]`, from the layer's im2col `u`
    /// `[images · side², taps]`. Per example it is each one's weight gradient `dzᵀ · u`.
    pub(crate) fn weight_sums(&self, u: &[f32], taps: usize, group: Group) -> Vec<f32> {
        let rows_per_image = self.side * self.side;
        assert_eq!(
            u.len(),
            self.images * rows_per_image * taps,
            "[images · side², taps]"
        );
        let len = self.channels * taps;
        let mut sums = vec![0.0; group.count(self.images) * len];
        let images = self
            .image_routes()
            .zip(u.chunks_exact((rows_per_image * taps).max(1)));
        for (img, (routes, rows)) in images.enumerate() {
            let sum = &mut sums[group.of(img) * len..][..len];
            for (ch, p, g) in routes {
                axpy(&mut sum[ch * taps..][..taps], g, &rows[p * taps..][..taps]);
            }
        }
        sums
    }

    /// Σ of the gradients per channel, per example (its bias gradient) or for the whole batch:
    /// `[examples or 1, channels]`.
    pub(crate) fn bias_sums(&self, group: Group) -> Vec<f32> {
        let mut sums = vec![0.0; group.count(self.images) * self.channels];
        for (img, routes) in self.image_routes().enumerate() {
            let sum = &mut sums[group.of(img) * self.channels..][..self.channels];
            for (ch, _, g) in routes {
                sum[ch] += g;
            }
        }
        sums
    }

    /// dL/d(input) of the 3×3 convolution (no padding, stride 1) whose output z these routes
    /// are of, `[images, side + 2, side + 2, c_in]`, from its weights `[channels, 3, 3, c_in]`:
    /// each routed gradient adds its channel's filter, scaled, onto the 3 × 3 inputs its
    /// position read (col2im of `dz · W`, without the zero rows).
    pub(crate) fn conv3_input_gradient(&self, weights: &[f32], c_in: usize) -> Vec<f32> {
        let in_side = self.side + 2;
        let (run, plane) = (3 * c_in, in_side * in_side * c_in);
        assert_eq!(
            weights.len(),
            self.channels * 3 * run,
            "[c_out, 3, 3, c_in]"
        );
        let mut dx = vec![0.0; self.images * plane];
        for (routes, image) in self.image_routes().zip(dx.chunks_exact_mut(plane.max(1))) {
            for (ch, p, g) in routes {
                let (y, x) = (p / self.side, p % self.side);
                let filter = &weights[ch * 3 * run..][..3 * run];
                for (dy, taps) in filter.chunks_exact(run).enumerate() {
                    axpy(
                        &mut image[((y + dy) * in_side + x) * c_in..][..run],
                        g,
                        taps,
                    );
                }
            }
        }
        dx
    }
}

/// One window of [`Routes::fill`], a lane per channel: the winner's position and its gradient
/// if it passed ReLU, by arithmetic and selects only, so that the loop vectorises (separate
/// slice arguments tell the compiler they do not overlap, as in `model::pool_lanes`; `g` is
/// read before the select: read inside it, it became a branch and the loop stayed scalar, 7 %
/// of a wasm DP step). The rules give the winner's value after ReLU, which is not 0 exactly
/// when the winner passes ReLU (positive, or NaN).
#[inline(never)]
fn route_lanes(
    [a, b, c, d]: [&[f32]; 4],
    g: &[f32],
    first: u32,
    side: u32,
    positions: &mut [u32],
    grads: &mut [f32],
    rule: &impl Fn([f32; 4]) -> (u32, f32),
) {
    let inputs = a.iter().zip(b).zip(c).zip(d);
    for ((((((&a, &b), &c), &d), &g), p), grad) in inputs.zip(g).zip(positions).zip(grads) {
        let (winner, value) = rule([a, b, c, d]);
        *p = first + (winner & 1) + (winner >> 1) * side;
        *grad = if value != 0.0 { g } else { 0.0 };
    }
}

/// `acc += g · x`, lane by lane.
#[inline(always)]
fn axpy(acc: &mut [f32], g: f32, x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, x)| *a += g * x);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Mat, MatMut, col2im3, column_sums, im2col3, matmul};
    use crate::model::relu_pool_backward;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        // Ties and non-positive values in most windows, as real activations have.
        (0..n)
            .map(|i| ((((i + 31 * seed) * 2_654_435_761) >> 9) % 17) as f32 / 4.0 - 1.5)
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// The routes give the dense backward's products: the input gradient (dz · W, col2im),
    /// each image's and the batch's weight gradients (dzᵀ · u) and bias gradients (Σ dz), on
    /// conv2's odd side (a dropped row and column) and an even one.
    #[test]
    fn routed_products_equal_the_dense_ones() {
        for (images, side, c_in, c_out) in [(3, 11, 4, 5), (2, 6, 2, 3)] {
            let z = values(images * side * side * c_out, 1);
            let half = side / 2;
            let d_out = values(images * half * half * c_out, 2);
            let taps = 9 * c_in;
            let input = values(images * (side + 2) * (side + 2) * c_in, 3);
            let u = im2col3(&input, c_in, images, side + 2, side);
            let w = values(c_out * taps, 4);
            let routes = Routes::new(&d_out, &z, side, c_out);
            let dz = relu_pool_backward(&d_out, &z, side, c_out);
            let routed = |v: &[f32]| v.iter().filter(|g| **g != 0.0).count();
            let stopped = routed(&d_out) - routed(&dz);
            assert!(
                stopped > 0 && 2 * stopped < d_out.len(),
                "ReLU stops some: {stopped}"
            );

            let n = images * side * side;
            let mut du = vec![0.0; n * taps];
            let (dz_m, w_m) = (Mat::new(&dz, n, c_out), Mat::new(&w, c_out, taps));
            matmul(MatMut::new(&mut du, n, taps), dz_m, w_m, false);
            let dense_dx = col2im3(&du, c_in, images, side + 2);
            assert_close(&routes.conv3_input_gradient(&w, c_in), &dense_dx);

            let mut per_image = Vec::new();
            for (dz, u) in dz
                .chunks_exact(side * side * c_out)
                .zip(u.chunks_exact(side * side * taps))
            {
                let mut g = vec![0.0; c_out * taps];
                let (dz_t, u_m) = (
                    Mat::new(dz, side * side, c_out).t(),
                    Mat::new(u, side * side, taps),
                );
                matmul(MatMut::new(&mut g, c_out, taps), dz_t, u_m, false);
                per_image.extend(g);
            }
            assert_close(&routes.weight_sums(&u, taps, Group::Example), &per_image);
            let batch: Vec<f32> = (0..c_out * taps)
                .map(|j| per_image.chunks_exact(c_out * taps).map(|g| g[j]).sum())
                .collect();
            assert_close(&routes.weight_sums(&u, taps, Group::Batch), &batch);

            let biases: Vec<f32> = dz
                .chunks_exact(side * side * c_out)
                .flat_map(|dz| column_sums(dz, c_out))
                .collect();
            assert_close(&routes.bias_sums(Group::Example), &biases);
            assert_close(&routes.bias_sums(Group::Batch), &column_sums(&dz, c_out));
        }
    }

    /// A NaN activation wins its window and carries its gradient (burn's rule); a window of
    /// non-positive values routes nothing.
    #[test]
    fn a_nan_passes_and_relu_stops_the_rest() {
        let z = [f32::NAN, -1.0, 2.0, -2.0, -1.0, 0.0, 0.0, -3.0];
        let routes = Routes::new(&[5.0, 7.0], &z, 2, 2);
        assert_eq!(routes.positions[0], 0, "channel 0's NaN at position 0 wins");
        assert_eq!(routes.grads, [5.0, 0.0]);
    }
}
