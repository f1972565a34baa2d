//! How a round's updates become one: the interface every aggregation rule implements, so the
//! round drives FedAvg, the robust rules (and later secure aggregation) the same way.
//!
//! * [`FedAvg`]: the weighted running sum, memory O(parameters).
//! * [`robust`]: norm bounding, coordinate-wise median, trimmed mean, Multi-Krum; they hold the
//!   round's updates (at most [`MAX_BUFFERED_UPDATES`]).
//!
//! Every update is checked where it enters ([`check_update`]): right length, finite, a weight
//! ≥ 1. A refused update leaves the aggregate as it was.

mod fedavg;
pub mod robust;
mod secure;

pub use fedavg::FedAvg;
pub use protocol::admin::{AggregatorConfig, MAX_BUFFERED_UPDATES};
pub use robust::{CoordinateMedian, MultiKrum, NormBound, TrimmedMean};
pub use secure::SecureSum;

/// Why an update cannot enter the aggregate, or why the aggregate cannot be formed. Nothing is
/// added when this is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregationError {
    #[error("update has {actual} values, expected {expected}")]
    Length { expected: usize, actual: usize },
    #[error("update value at index {index} is {value}: expected a finite number")]
    NonFinite { index: usize, value: f32 },
    #[error("num_examples is 0: expected at least 1 (it is the update's weight)")]
    ZeroWeight,
    #[error("num_examples {num_examples} would take the round's total weight past 2^64")]
    WeightOverflow { num_examples: u64 },
    #[error("no update was aggregated")]
    Empty,
    #[error(
        "this run uses secure aggregation: the server takes masked vectors only, never an update in the clear"
    )]
    Plaintext,
    #[error("this aggregator takes updates in the clear: a masked vector is not one")]
    Masked,
    #[error("this aggregation rule looks at each update: a sum of several is not one")]
    NeedsEachUpdate,
    #[error(
        "this aggregator already holds {limit} updates, the most it keeps in memory: update refused (sample fewer clients per round)"
    )]
    Full { limit: usize },
    #[error(
        "Multi-Krum with f = {byzantine} needs at least 2f + 3 = {needed} updates; the round has {actual}"
    )]
    TooFewForKrum {
        byzantine: u32,
        needed: u64,
        actual: usize,
    },
}

/// A rule that turns the updates of one round into the update applied to the global model.
pub trait Aggregator: Send + std::fmt::Debug {
    /// Checks one client's update (`num_examples` is its weight) and takes it, or refuses it
    /// and keeps nothing of it.
    fn add(&mut self, update: &[f32], num_examples: u64) -> Result<(), AggregationError>;

    /// Updates taken so far.
    fn count(&self) -> usize;

    /// Secure aggregation: a masked vector arrived (it goes to the protocol's running sum, and
    /// is only counted here). Rules that need updates in the clear refuse it.
    fn add_masked(&mut self) -> Result<(), AggregationError> {
        Err(AggregationError::Masked)
    }

    /// Secure aggregation's unmask step is done: `mean` is the decoded weighted mean of the
    /// masked vectors.
    fn set_unmasked(&mut self, mean: Vec<f32>) -> Result<(), AggregationError> {
        let _never_in_the_clear = mean;
        Err(AggregationError::Masked)
    }

    /// Whether a running sum formed elsewhere (a gateway's, over its clients' updates) can be
    /// folded in; rules that look at each update cannot.
    fn takes_partials(&self) -> bool {
        false
    }

    /// Folds in a gateway's running sum of updates it checked (see [`FedAvg::merge`]).
    fn add_partial(&mut self, partial: &FedAvg) -> Result<(), AggregationError> {
        let _each_update_needed = partial;
        Err(AggregationError::NeedsEachUpdate)
    }

    /// The round's aggregate update.
    fn aggregate(&self) -> Result<Vec<f32>, AggregationError>;

    /// `global + aggregate`: the next global model, refused if any value is not finite (finite
    /// updates can still sum past f32::MAX, and such a model is never committed).
    fn apply(&self, global: &[f32]) -> Result<Vec<f32>, AggregationError> {
        let update = self.aggregate()?;
        if global.len() != update.len() {
            return Err(AggregationError::Length {
                expected: update.len(),
                actual: global.len(),
            });
        }
        let next: Vec<f32> = global.iter().zip(update).map(|(g, u)| g + u).collect();
        if let Some((index, &value)) = next.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(AggregationError::NonFinite { index, value });
        }
        Ok(next)
    }
}

/// The aggregator `config` names, for vectors of `num_params`.
pub fn build(config: &AggregatorConfig, num_params: usize) -> Box<dyn Aggregator> {
    match *config {
        AggregatorConfig::FedAvg => Box::new(FedAvg::new(num_params)),
        AggregatorConfig::NormBound { bound } => Box::new(NormBound::new(num_params, bound)),
        AggregatorConfig::Median => Box::new(CoordinateMedian::new(num_params)),
        AggregatorConfig::TrimmedMean { trim } => Box::new(TrimmedMean::new(num_params, trim)),
        AggregatorConfig::MultiKrum { byzantine, keep } => {
            Box::new(MultiKrum::new(num_params, byzantine, keep))
        }
    }
}

/// The checks every update passes before any rule sees it.
pub fn check_update(
    update: &[f32],
    expected_len: usize,
    num_examples: u64,
) -> Result<(), AggregationError> {
    if update.len() != expected_len {
        return Err(AggregationError::Length {
            expected: expected_len,
            actual: update.len(),
        });
    }
    if num_examples == 0 {
        return Err(AggregationError::ZeroWeight);
    }
    if let Some((index, &value)) = update.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(AggregationError::NonFinite { index, value });
    }
    Ok(())
}
