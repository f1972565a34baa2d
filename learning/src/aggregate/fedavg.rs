//! Federated Averaging (McMahan et al. 2017) over flat parameter vectors, as a running sum:
//! each update is folded in as it arrives and dropped, so memory is O(parameters) whether ten
//! or ten thousand clients reply. Accumulates in f64 so the order of arrival does not matter
//! to the last f32 bit for realistic client counts.

use super::{AggregationError, Aggregator, check_update};

/// Σ num_examples·update and Σ num_examples so far.
#[derive(Debug, Clone)]
pub struct FedAvg {
    sum: Vec<f64>,
    total_weight: u64,
    count: usize,
}

impl FedAvg {
    /// An empty aggregate for vectors of `num_params`.
    pub fn new(num_params: usize) -> Self {
        Self {
            sum: vec![0.0; num_params],
            total_weight: 0,
            count: 0,
        }
    }

    /// Folds in one client's update with weight `num_examples`, after checking it.
    pub fn add(&mut self, update: &[f32], num_examples: u64) -> Result<(), AggregationError> {
        check_update(update, self.sum.len(), num_examples)?;
        let total_weight = self
            .total_weight
            .checked_add(num_examples)
            .ok_or(AggregationError::WeightOverflow { num_examples })?;
        let w = num_examples as f64;
        for (s, u) in self.sum.iter_mut().zip(update) {
            *s += w * *u as f64;
        }
        self.total_weight = total_weight;
        self.count += 1;
        Ok(())
    }

    /// Updates folded in so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Σ num_examples so far.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The running sum Σ num_examples·update: what a gateway sends for its clients of a round.
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// A running sum formed elsewhere (a gateway's partial), checked as an update is: the
    /// length, finite values, and a weight of at least 1 per update it holds.
    pub fn from_parts(
        num_params: usize,
        sum: Vec<f64>,
        total_weight: u64,
        count: usize,
    ) -> Result<Self, AggregationError> {
        if sum.len() != num_params {
            return Err(AggregationError::Length {
                expected: num_params,
                actual: sum.len(),
            });
        }
        if let Some((index, &value)) = sum.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(AggregationError::NonFinite {
                index,
                value: value as f32,
            });
        }
        if (count as u64) > total_weight {
            return Err(AggregationError::ZeroWeight);
        }
        Ok(Self {
            sum,
            total_weight,
            count,
        })
    }

    /// Folds in another running sum: the same aggregate as adding its updates here (up to the
    /// order of f64 additions), so gateways can sum their clients' updates and send one vector.
    pub fn merge(&mut self, other: &FedAvg) -> Result<(), AggregationError> {
        if other.sum.len() != self.sum.len() {
            return Err(AggregationError::Length {
                expected: self.sum.len(),
                actual: other.sum.len(),
            });
        }
        let total_weight = self.total_weight.checked_add(other.total_weight).ok_or(
            AggregationError::WeightOverflow {
                num_examples: other.total_weight,
            },
        )?;
        for (s, o) in self.sum.iter_mut().zip(&other.sum) {
            *s += o;
        }
        self.total_weight = total_weight;
        self.count += other.count;
        Ok(())
    }

    /// The weighted mean update.
    pub fn mean(&self) -> Result<Vec<f32>, AggregationError> {
        if self.count == 0 {
            return Err(AggregationError::Empty);
        }
        let w = self.total_weight as f64;
        Ok(self.sum.iter().map(|s| (s / w) as f32).collect())
    }
}

impl Aggregator for FedAvg {
    fn add(&mut self, update: &[f32], num_examples: u64) -> Result<(), AggregationError> {
        FedAvg::add(self, update, num_examples)
    }

    fn count(&self) -> usize {
        self.count
    }

    fn takes_partials(&self) -> bool {
        true
    }

    fn add_partial(&mut self, partial: &FedAvg) -> Result<(), AggregationError> {
        self.merge(partial)
    }

    fn aggregate(&self) -> Result<Vec<f32>, AggregationError> {
        self.mean()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_by_num_examples() {
        // Prepare
        let mut agg = FedAvg::new(3);
        // Execute
        agg.add(&[1.0, 0.0, 2.0], 100).expect("valid");
        agg.add(&[4.0, 3.0, -1.0], 200).expect("valid");
        // Assert: (100·u1 + 200·u2) / 300
        assert_eq!(agg.mean().expect("non-empty"), vec![3.0, 2.0, 0.0]);
        assert_eq!(
            agg.apply(&[1.0, 1.0, 1.0]).expect("len"),
            vec![4.0, 3.0, 1.0]
        );
        assert_eq!((agg.count(), agg.total_weight()), (2, 300));
    }

    /// Two gateways' partial sums merged give the aggregate of all their updates.
    #[test]
    fn merged_partials_equal_the_aggregate_of_every_update() {
        let updates: Vec<(Vec<f32>, u64)> = (0..7)
            .map(|i| (vec![i as f32 * 0.3, 1.0 - i as f32, 0.25], 100 + i * 37))
            .collect();
        let mut all = FedAvg::new(3);
        let (mut a, mut b) = (FedAvg::new(3), FedAvg::new(3));
        for (i, (u, n)) in updates.iter().enumerate() {
            all.add(u, *n).unwrap();
            if i % 3 == 0 { &mut a } else { &mut b }.add(u, *n).unwrap();
        }
        // As a coordinator receives them: rebuilt from their parts, then merged.
        let mut merged = FedAvg::new(3);
        for part in [&a, &b] {
            let part =
                FedAvg::from_parts(3, part.sum().to_vec(), part.total_weight(), part.count())
                    .unwrap();
            Aggregator::add_partial(&mut merged, &part).unwrap();
        }
        assert_eq!(
            (merged.count(), merged.total_weight()),
            (7, all.total_weight())
        );
        for (m, e) in merged.mean().unwrap().iter().zip(all.mean().unwrap()) {
            assert!((m - e).abs() <= 1e-6 * e.abs().max(1.0), "{m} vs {e}");
        }
        // A partial of the wrong length, with a non-finite value, or claiming more updates
        // than its weight allows, is refused.
        assert!(FedAvg::from_parts(3, vec![0.0; 2], 1, 1).is_err());
        assert!(FedAvg::from_parts(3, vec![0.0, f64::NAN, 0.0], 1, 1).is_err());
        assert!(FedAvg::from_parts(3, vec![0.0; 3], 1, 2).is_err());
        assert!(merged.merge(&FedAvg::new(4)).is_err());
    }

    #[test]
    fn equal_weights_give_the_plain_mean_in_any_order() {
        let updates: Vec<Vec<f32>> = (0..50).map(|i| vec![i as f32 * 0.1, -(i as f32)]).collect();
        let mut fwd = FedAvg::new(2);
        let mut rev = FedAvg::new(2);
        for u in &updates {
            fwd.add(u, 7).expect("valid");
        }
        for u in updates.iter().rev() {
            rev.add(u, 7).expect("valid");
        }
        assert_eq!(fwd.mean(), rev.mean());
        let m = fwd.mean().expect("non-empty");
        assert!((m[0] - 2.45).abs() < 1e-6 && (m[1] + 24.5).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_updates_without_changing_the_sum() {
        let mut agg = FedAvg::new(2);
        agg.add(&[1.0, 1.0], 1).expect("valid");
        assert_eq!(
            agg.add(&[1.0], 1),
            Err(AggregationError::Length {
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            agg.add(&[1.0, f32::NAN], 1).unwrap_err().to_string(),
            "update value at index 1 is NaN: expected a finite number"
        );
        assert_eq!(
            agg.add(&[f32::INFINITY, 0.0], 1).unwrap_err().to_string(),
            "update value at index 0 is inf: expected a finite number"
        );
        assert_eq!(agg.add(&[1.0, 1.0], 0), Err(AggregationError::ZeroWeight));
        // Attack: a weight that wraps the u64 total to 0 (2^64 − 1 after a weight of 1).
        assert_eq!(
            agg.add(&[1.0, 1.0], u64::MAX),
            Err(AggregationError::WeightOverflow {
                num_examples: u64::MAX
            })
        );
        assert_eq!(agg.total_weight(), 1);
        // Finite updates whose mean overflows the model: refused, not committed as inf.
        let mut big = FedAvg::new(1);
        big.add(&[3.0e38], 6000).expect("finite");
        assert!(matches!(
            big.apply(&[3.0e38]),
            Err(AggregationError::NonFinite { index: 0, .. })
        ));
        assert_eq!(agg.mean().expect("one update"), vec![1.0, 1.0]);
        assert_eq!(FedAvg::new(2).mean(), Err(AggregationError::Empty));
    }
}
