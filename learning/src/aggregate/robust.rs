//! Aggregation rules that bound what a minority of hostile clients can do to the model. Each
//! holds the round's updates ([`Held`], at most [`MAX_BUFFERED_UPDATES`]) because its answer
//! depends on all of them at once; all are deterministic in the set of updates (not their
//! order, up to f64 rounding of the final mean).
//!
//! A weight is a number the client declares, and a rule meant to resist lying clients must not
//! let one buy influence with it: the median and the trimmed mean are unweighted, and norm
//! bounding and Multi-Krum average what they keep weighted by shard size as FedAvg does, but
//! with every weight capped at the round's median weight (a minority cannot raise it).

#[cfg(test)]
use super::AggregatorConfig;
use super::{AggregationError, Aggregator, MAX_BUFFERED_UPDATES, check_update};

/// The round's updates and their weights.
#[derive(Debug, Clone)]
pub struct Held {
    num_params: usize,
    updates: Vec<Vec<f32>>,
    weights: Vec<u64>,
    total_weight: u64,
}

impl Held {
    pub fn new(num_params: usize) -> Self {
        Self {
            num_params,
            updates: Vec::new(),
            weights: Vec::new(),
            total_weight: 0,
        }
    }

    fn add(&mut self, update: &[f32], num_examples: u64) -> Result<(), AggregationError> {
        check_update(update, self.num_params, num_examples)?;
        if self.updates.len() >= MAX_BUFFERED_UPDATES {
            return Err(AggregationError::Full {
                limit: MAX_BUFFERED_UPDATES,
            });
        }
        self.total_weight = self
            .total_weight
            .checked_add(num_examples)
            .ok_or(AggregationError::WeightOverflow { num_examples })?;
        self.updates.push(update.to_vec());
        self.weights.push(num_examples);
        Ok(())
    }

    fn count(&self) -> usize {
        self.updates.len()
    }

    fn non_empty(&self) -> Result<(), AggregationError> {
        if self.updates.is_empty() {
            Err(AggregationError::Empty)
        } else {
            Ok(())
        }
    }

    /// The round's median weight: no update counts for more than this.
    fn weight_cap(&self) -> f64 {
        let mut w: Vec<f64> = self.weights.iter().map(|&w| w as f64).collect();
        w.sort_unstable_by(f64::total_cmp);
        median_sorted(&w)
    }

    /// Σ wᵢ·sᵢ·uᵢ / Σ wᵢ over `chosen`, with `scale(i)` = sᵢ and wᵢ the weight capped at
    /// [`Self::weight_cap`].
    fn weighted_mean(&self, chosen: &[usize], scale: impl Fn(usize) -> f64) -> Vec<f32> {
        let cap = self.weight_cap();
        let mut sum = vec![0.0f64; self.num_params];
        let mut total = 0.0f64;
        for &i in chosen {
            let w = (self.weights[i] as f64).min(cap);
            let ws = w * scale(i);
            total += w;
            for (s, &u) in sum.iter_mut().zip(&self.updates[i]) {
                *s += ws * u as f64;
            }
        }
        sum.iter().map(|s| (s / total) as f32).collect()
    }

    /// Applies `reduce` to every coordinate's values across the updates (sorted ascending).
    fn per_coordinate(&self, reduce: impl Fn(&[f32]) -> f32) -> Vec<f32> {
        let mut column = Vec::with_capacity(self.updates.len());
        (0..self.num_params)
            .map(|j| {
                column.clear();
                column.extend(self.updates.iter().map(|u| u[j]));
                column.sort_unstable_by(f32::total_cmp);
                reduce(&column)
            })
            .collect()
    }
}

/// A rule over the round's [`Held`] updates; [`Aggregator`] comes with it.
trait HeldRule: Send + std::fmt::Debug {
    fn held(&self) -> &Held;
    fn held_mut(&mut self) -> &mut Held;
    /// The aggregate of the held updates (there is at least one).
    fn form(&self) -> Result<Vec<f32>, AggregationError>;
}

impl<R: HeldRule> Aggregator for R {
    fn add(&mut self, update: &[f32], num_examples: u64) -> Result<(), AggregationError> {
        self.held_mut().add(update, num_examples)
    }

    fn count(&self) -> usize {
        self.held().count()
    }

    fn aggregate(&self) -> Result<Vec<f32>, AggregationError> {
        self.held().non_empty()?;
        self.form()
    }
}

fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median_sorted(sorted: &[f64]) -> f64 {
    let k = sorted.len();
    if k % 2 == 1 {
        sorted[k / 2]
    } else {
        (sorted[k / 2 - 1] + sorted[k / 2]) / 2.0
    }
}

/// FedAvg of the updates, each first scaled down to an L2 norm of at most the bound: the
/// configured one, or the median norm of the round (Sun et al., "Can you really backdoor
/// federated learning?", 2019). Bounds magnitude, not direction: a sign-flipped update of
/// honest size passes.
#[derive(Debug, Clone)]
pub struct NormBound {
    held: Held,
    bound: Option<f32>,
}

impl NormBound {
    pub fn new(num_params: usize, bound: Option<f32>) -> Self {
        Self {
            held: Held::new(num_params),
            bound,
        }
    }

    /// The bound this round's updates are clipped to.
    pub fn bound(&self) -> Result<f64, AggregationError> {
        self.held.non_empty()?;
        Ok(self.bound_for(&self.norms()))
    }

    fn norms(&self) -> Vec<f64> {
        self.held.updates.iter().map(|u| l2_norm(u)).collect()
    }

    /// The configured bound, or the median of `norms`.
    fn bound_for(&self, norms: &[f64]) -> f64 {
        if let Some(b) = self.bound {
            return b as f64;
        }
        let mut sorted = norms.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        median_sorted(&sorted)
    }
}

impl HeldRule for NormBound {
    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }

    fn form(&self) -> Result<Vec<f32>, AggregationError> {
        let norms = self.norms();
        let bound = self.bound_for(&norms);
        let all: Vec<usize> = (0..self.held.count()).collect();
        Ok(self.held.weighted_mean(&all, |i| {
            if norms[i] > bound {
                bound / norms[i]
            } else {
                1.0
            }
        }))
    }
}

/// The coordinate-wise median (Yin et al., "Byzantine-robust distributed learning: towards
/// optimal statistical rates", ICML 2018). Fewer than half the updates cannot move any
/// coordinate outside the range of the honest ones.
#[derive(Debug, Clone)]
pub struct CoordinateMedian {
    held: Held,
}

impl CoordinateMedian {
    pub fn new(num_params: usize) -> Self {
        Self {
            held: Held::new(num_params),
        }
    }
}

impl HeldRule for CoordinateMedian {
    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }

    fn form(&self) -> Result<Vec<f32>, AggregationError> {
        Ok(self.held.per_coordinate(|col| {
            let k = col.len();
            if k % 2 == 1 {
                col[k / 2]
            } else {
                ((col[k / 2 - 1] as f64 + col[k / 2] as f64) / 2.0) as f32
            }
        }))
    }
}

/// The coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, ⌊trim·n⌋ of the largest
/// and of the smallest values are dropped and the rest averaged. Resists up to ⌊trim·n⌋ hostile
/// updates; trim 0 is the unweighted mean.
#[derive(Debug, Clone)]
pub struct TrimmedMean {
    held: Held,
    trim: f64,
}

impl TrimmedMean {
    /// `trim` in [0, 0.5) (the run config checks it; a larger one is read as just below 0.5).
    pub fn new(num_params: usize, trim: f64) -> Self {
        Self {
            held: Held::new(num_params),
            trim: trim.clamp(0.0, 0.499),
        }
    }
}

impl HeldRule for TrimmedMean {
    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }

    fn form(&self) -> Result<Vec<f32>, AggregationError> {
        let k = self.held.count();
        // trim < 0.5 keeps at least one value: k − 2⌊trim·k⌋ ≥ 1.
        let t = (self.trim * k as f64).floor() as usize;
        Ok(self.held.per_coordinate(|col| {
            let kept = &col[t..k - t];
            (kept.iter().map(|&x| x as f64).sum::<f64>() / kept.len() as f64) as f32
        }))
    }
}

/// Multi-Krum (Blanchard et al., "Machine learning with adversaries: Byzantine tolerant gradient
/// descent", NeurIPS 2017; El Mhamdi et al. 2018): each update's score is the sum of its squared
/// distances to its n − f − 2 nearest others; the `keep` updates with the lowest scores
/// (default and at most n − f) are averaged by weight. Tolerates f hostile updates of n ≥ 2f + 3.
/// Cost: n²/2 distances (≈ 1.6 · 10⁹ multiply-adds at the 500-update limit).
#[derive(Debug, Clone)]
pub struct MultiKrum {
    held: Held,
    byzantine: u32,
    keep: Option<u32>,
}

impl MultiKrum {
    pub fn new(num_params: usize, byzantine: u32, keep: Option<u32>) -> Self {
        Self {
            held: Held::new(num_params),
            byzantine,
            keep,
        }
    }

    /// Indices of the updates Multi-Krum keeps, best score first.
    pub fn selected(&self) -> Result<Vec<usize>, AggregationError> {
        self.held.non_empty()?;
        let n = self.held.count();
        let f = self.byzantine as usize;
        let needed = 2 * u64::from(self.byzantine) + 3;
        if (n as u64) < needed {
            return Err(AggregationError::TooFewForKrum {
                byzantine: self.byzantine,
                needed,
                actual: n,
            });
        }
        let u = &self.held.updates;
        let mut dist = vec![vec![0.0f64; n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let d: f64 = u[i]
                    .iter()
                    .zip(&u[j])
                    .map(|(&a, &b)| {
                        let x = a as f64 - b as f64;
                        x * x
                    })
                    .sum();
                dist[i][j] = d;
                dist[j][i] = d;
            }
        }
        let neighbours = n - f - 2;
        let mut scored: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
                others.sort_unstable_by(f64::total_cmp);
                (others[..neighbours].iter().sum(), i)
            })
            .collect();
        scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let keep = self.keep.map_or(n - f, |m| (m as usize).clamp(1, n - f));
        Ok(scored[..keep].iter().map(|&(_, i)| i).collect())
    }
}

impl HeldRule for MultiKrum {
    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }

    fn form(&self) -> Result<Vec<f32>, AggregationError> {
        let chosen = self.selected()?;
        Ok(self.held.weighted_mean(&chosen, |_| 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `honest` updates near `centre` (small deterministic spread) and `hostile` copies of `evil`.
    fn round(
        agg: &mut dyn Aggregator,
        centre: [f32; 2],
        honest: usize,
        evil: [f32; 2],
        hostile: usize,
    ) {
        for i in 0..honest {
            let d = (i as f32 - honest as f32 / 2.0) * 0.01;
            agg.add(&[centre[0] + d, centre[1] - d], 100)
                .expect("honest");
        }
        for _ in 0..hostile {
            // A weight of 10⁶ claims to be most of the round's data.
            agg.add(&evil, 1_000_000).expect("finite, hence accepted");
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn median_and_trimmed_mean_ignore_a_minority_of_huge_heavy_updates() {
        // Attack: 2 of 7 send ±10³⁰ and claim 10⁴ times the honest weight.
        let mut median = CoordinateMedian::new(2);
        round(&mut median, [1.0, -1.0], 5, [1e30, -1e30], 2);
        assert!(close(&median.aggregate().unwrap(), &[1.0, -1.0], 0.03));
        let mut trimmed = TrimmedMean::new(2, 0.3);
        round(&mut trimmed, [1.0, -1.0], 5, [1e30, -1e30], 2);
        assert!(close(&trimmed.aggregate().unwrap(), &[1.0, -1.0], 0.03));
        // Too little trimming lets them through: the rule is doing the work.
        let mut weak = TrimmedMean::new(2, 0.1);
        round(&mut weak, [1.0, -1.0], 5, [1e30, -1e30], 2);
        assert!(weak.aggregate().unwrap()[0] > 1e28);
    }

    #[test]
    fn median_of_an_even_count_is_the_middle_pair_mean() {
        let mut m = CoordinateMedian::new(1);
        for v in [4.0, 1.0, 3.0, 2.0] {
            m.add(&[v], 1).unwrap();
        }
        assert_eq!(m.aggregate().unwrap(), vec![2.5]);
    }

    #[test]
    fn multi_krum_keeps_the_honest_cluster_and_weights_it() {
        // Attack: 2 of 7 (f = 2 tolerated) send a far update with a huge weight.
        let mut krum = MultiKrum::new(2, 2, None);
        round(&mut krum, [1.0, 0.0], 5, [-50.0, 80.0], 2);
        let chosen = krum.selected().unwrap();
        assert_eq!(chosen.len(), 5);
        assert!(
            chosen.iter().all(|&i| i < 5),
            "kept a hostile update: {chosen:?}"
        );
        assert!(close(&krum.aggregate().unwrap(), &[1.0, 0.0], 0.03));
        // keep = 1 is Krum itself; keep past n − f is held to n − f.
        let mut one = MultiKrum::new(2, 2, Some(1));
        round(&mut one, [1.0, 0.0], 5, [-50.0, 80.0], 2);
        assert_eq!(one.selected().unwrap().len(), 1);
        let mut many = MultiKrum::new(2, 2, Some(100));
        round(&mut many, [1.0, 0.0], 5, [-50.0, 80.0], 2);
        assert_eq!(many.selected().unwrap().len(), 5);
    }

    #[test]
    fn multi_krum_refuses_a_round_too_small_for_its_f() {
        let mut krum = MultiKrum::new(2, 2, None);
        round(&mut krum, [1.0, 0.0], 6, [0.0, 0.0], 0);
        assert_eq!(
            krum.aggregate().unwrap_err().to_string(),
            "Multi-Krum with f = 2 needs at least 2f + 3 = 7 updates; the round has 6"
        );
    }

    #[test]
    fn norm_bound_shrinks_an_update_to_the_bound() {
        // Attack: one of four scales its update by 1 000.
        let mut adaptive = NormBound::new(2, None);
        round(&mut adaptive, [3.0, 4.0], 3, [3000.0, 4000.0], 1);
        let b = adaptive.bound().unwrap();
        assert!((b - 5.0).abs() < 0.05, "median norm {b}");
        // The hostile update enters with norm ≈ 5 and the median weight: ≈ (3, 4), not 1 000×.
        assert!(close(&adaptive.aggregate().unwrap(), &[3.0, 4.0], 0.05));
        // Attack: a sign flip of honest size that claims 10⁴ times the honest weight. With its
        // claimed weight it would reverse the round (≈ (−3, −4)); capped at the median weight
        // it is one update of four.
        let mut flipped = NormBound::new(2, None);
        round(&mut flipped, [3.0, 4.0], 3, [-3.0, -4.0], 1);
        assert!(close(&flipped.aggregate().unwrap(), &[1.5, 2.0], 0.05));
        let mut fixed = NormBound::new(2, Some(1.0));
        fixed.add(&[30.0, 40.0], 1).unwrap();
        fixed.add(&[0.3, 0.4], 1).unwrap();
        // (0.6, 0.8) and (0.3, 0.4) averaged.
        assert!(close(&fixed.aggregate().unwrap(), &[0.45, 0.6], 1e-6));
    }

    #[test]
    fn refused_updates_leave_nothing_and_the_buffer_is_bounded() {
        let mut m = CoordinateMedian::new(2);
        assert_eq!(m.aggregate(), Err(AggregationError::Empty));
        assert!(m.add(&[f32::NAN, 0.0], 1).is_err());
        assert!(m.add(&[1.0], 1).is_err());
        assert_eq!(m.add(&[1.0, 1.0], 0), Err(AggregationError::ZeroWeight));
        m.add(&[1.0, 1.0], u64::MAX).unwrap();
        assert!(matches!(
            m.add(&[1.0, 1.0], 1),
            Err(AggregationError::WeightOverflow { .. })
        ));
        assert_eq!(m.count(), 1);
        // Attack: more updates than the aggregator holds.
        let mut t = TrimmedMean::new(1, 0.1);
        for _ in 0..MAX_BUFFERED_UPDATES {
            t.add(&[1.0], 1).unwrap();
        }
        assert_eq!(
            t.add(&[1.0], 1),
            Err(AggregationError::Full {
                limit: MAX_BUFFERED_UPDATES
            })
        );
        assert_eq!(t.aggregate().unwrap(), vec![1.0]);
    }

    #[test]
    fn every_rule_refuses_a_model_that_overflows() {
        for config in [
            AggregatorConfig::FedAvg,
            AggregatorConfig::NormBound { bound: None },
            AggregatorConfig::Median,
            AggregatorConfig::TrimmedMean { trim: 0.1 },
            AggregatorConfig::MultiKrum {
                byzantine: 0,
                keep: None,
            },
        ] {
            let mut agg = super::super::build(&config, 1);
            for _ in 0..3 {
                agg.add(&[3.0e38], 6000).unwrap();
            }
            assert!(
                matches!(
                    agg.apply(&[3.0e38]),
                    Err(AggregationError::NonFinite { .. })
                ),
                "{config:?}"
            );
        }
    }
}
