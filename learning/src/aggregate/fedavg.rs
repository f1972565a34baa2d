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
