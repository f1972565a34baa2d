//! The demo data the server holds: MNIST's training set, split into shards handed to clients
//! over HTTP, and the 10 000-image test set every global model is evaluated on.

use std::sync::Arc;

use learning::shard::partition;
use learning::{Dataset, TaskData};
use protocol::admin::{FieldError, ShardConfig};

/// MNIST, loaded once at start.
#[derive(Debug)]
pub struct DemoData {
    pub mnist: TaskData,
}

/// A run's split of the training set: example indices per shard.
#[derive(Debug, Clone)]
pub struct Shards {
    pub config: ShardConfig,
    pub indices: Arc<Vec<Vec<usize>>>,
}

impl DemoData {
    pub fn new(mnist: TaskData) -> Arc<Self> {
        Arc::new(Self { mnist })
    }

    /// Splits the training set as `config` says (deterministic for its seed).
    pub fn shards(&self, config: ShardConfig) -> Result<Shards, FieldError> {
        let parts = partition(
            &self.mnist.train.labels,
            config.num_shards as usize,
            config.scheme,
            config.seed,
        )
        .map_err(|e| protocol::fields::SHARDS.error_because("this split", e.to_string()))?;
        Ok(Shards {
            config,
            indices: Arc::new(parts),
        })
    }

    /// One shard as a data set.
    pub fn shard(&self, indices: &[usize]) -> Dataset {
        self.mnist.train.subset(indices)
    }

    pub fn test(&self) -> &Dataset {
        &self.mnist.test
    }
}
