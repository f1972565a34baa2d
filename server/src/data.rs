//! The data the server holds, one set per task it could load: the training set, split into
//! shards handed to clients over HTTP, and the test set every global model is evaluated on.

use std::sync::Arc;

use learning::shard::partition;
use learning::{Dataset, Task, TaskData};
use protocol::admin::{FieldError, ShardConfig};

/// The tasks' data sets, loaded once at start.
#[derive(Debug)]
pub struct DemoData {
    sets: Vec<(&'static Task, TaskData)>,
}

/// A run's split of the training set: example indices per shard.
#[derive(Debug, Clone)]
pub struct Shards {
    pub config: ShardConfig,
    pub indices: Arc<Vec<Vec<usize>>>,
}

impl DemoData {
    pub fn new(sets: Vec<(&'static Task, TaskData)>) -> Arc<Self> {
        Arc::new(Self { sets })
    }

    /// `task`'s data, if it was loaded.
    pub fn of(&self, task: &Task) -> Option<&TaskData> {
        self.sets
            .iter()
            .find(|(t, _)| t.id == task.id)
            .map(|(_, d)| d)
    }

    /// The tasks whose data is here.
    pub fn tasks(&self) -> impl Iterator<Item = &'static Task> + '_ {
        self.sets.iter().map(|(t, _)| *t)
    }

    /// Splits `task`'s training set as `config` says (deterministic for its seed).
    pub fn shards(&self, task: &Task, config: ShardConfig) -> Result<Shards, FieldError> {
        let data = self.of(task).ok_or_else(|| {
            protocol::fields::SHARDS.error_because(
                "on",
                format!(
                    "off: this server has no {} data ({}), so clients must bring their own",
                    task.name, task.files.install
                ),
            )
        })?;
        let parts = partition(
            &data.train.labels,
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

    /// One shard of `task`'s training set as a data set.
    pub fn shard(&self, task: &Task, indices: &[usize]) -> Option<Dataset> {
        Some(self.of(task)?.train.subset(indices))
    }
}
