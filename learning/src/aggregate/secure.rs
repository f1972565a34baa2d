//! Secure aggregation's side of the aggregation interface: the server never holds an update,
//! only how many masked vectors arrived and, after the unmask step, their decoded mean.

use super::{AggregationError, Aggregator};

/// Masked vectors in (counted), the unmasked mean out.
#[derive(Debug)]
pub struct SecureSum {
    num_params: usize,
    masked: usize,
    mean: Option<Vec<f32>>,
}

impl SecureSum {
    pub fn new(num_params: usize) -> Self {
        Self {
            num_params,
            masked: 0,
            mean: None,
        }
    }
}

impl Aggregator for SecureSum {
    /// An update in the clear is refused: a client that sends one has not masked it.
    fn add(&mut self, _update: &[f32], _num_examples: u64) -> Result<(), AggregationError> {
        Err(AggregationError::Plaintext)
    }

    fn count(&self) -> usize {
        self.masked
    }

    fn add_masked(&mut self) -> Result<(), AggregationError> {
        self.masked += 1;
        Ok(())
    }

    fn set_unmasked(&mut self, mean: Vec<f32>) -> Result<(), AggregationError> {
        super::check_update(&mean, self.num_params, 1)?;
        self.mean = Some(mean);
        Ok(())
    }

    fn aggregate(&self) -> Result<Vec<f32>, AggregationError> {
        self.mean.clone().ok_or(AggregationError::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_masked_vectors_go_in_and_only_the_unmasked_mean_comes_out() {
        let mut s = SecureSum::new(2);
        assert_eq!(s.add(&[1.0, 2.0], 10), Err(AggregationError::Plaintext));
        assert_eq!(
            s.aggregate(),
            Err(AggregationError::Empty),
            "nothing before unmasking"
        );
        s.add_masked().unwrap();
        s.add_masked().unwrap();
        assert_eq!(s.count(), 2);
        assert!(s.set_unmasked(vec![f32::NAN, 0.0]).is_err());
        s.set_unmasked(vec![0.5, -0.5]).unwrap();
        assert_eq!(s.apply(&[1.0, 1.0]).unwrap(), [1.5, 0.5]);
        // A plaintext rule refuses masked vectors.
        let mut fedavg = crate::aggregate::FedAvg::new(2);
        assert_eq!(fedavg.add_masked(), Err(AggregationError::Masked));
    }
}
