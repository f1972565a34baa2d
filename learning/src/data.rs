//! Image data sets in the IDX format of LeCun's MNIST distribution: 28×28 grey images, one byte
//! a pixel, labels below 10 — the format every task of [`crate::task`] reads today (its files
//! checked against pinned SHA-256 values there), and the one a browser user's own files are
//! parsed from (not hashed: they are theirs).
//!
//! IDX: big-endian magic `0x00000803` (images: count, rows, cols, then u8 pixels) or
//! `0x00000801` (labels: count, then u8 labels).

use std::path::PathBuf;

use crate::model::IMAGE_PIXELS;

/// Classes a label may name (the labels file holds one byte each, below this).
pub const NUM_CLASSES: usize = 10;

/// Mean and standard deviation of a data set's pixels in [0, 1]: a batch is `(x − mean)/std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelStats {
    pub mean: f32,
    pub std: f32,
}

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// What can be wrong with a data set's files. Every variant names the file and what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {dataset} file {path}: {source} ({install})")]
    Io {
        dataset: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        /// How to get the files.
        install: &'static str,
    },
    #[error(
        "{file}: sha256 is {actual}, expected {expected} (the original uncompressed {dataset} file)"
    )]
    Hash {
        dataset: &'static str,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{file}: {actual} bytes is too short: expected at least {expected} bytes ({what})")]
    Truncated {
        file: String,
        expected: usize,
        actual: usize,
        what: &'static str,
    },
    #[error(
        "{file}: {actual} bytes: expected exactly {expected} bytes ({what}; nothing after the last record)"
    )]
    Size {
        file: String,
        expected: usize,
        actual: usize,
        what: &'static str,
    },
    #[error("{file}: magic number is {found:#010x}, expected {expected:#010x} ({what} IDX file)")]
    Magic {
        file: String,
        expected: u32,
        found: u32,
        what: &'static str,
    },
    #[error("{file}: images are {rows}×{cols}, expected 28×28")]
    ImageSize { file: String, rows: u32, cols: u32 },
    #[error(
        "{images} holds {n_images} images but {labels} holds {n_labels} labels: expected the same count"
    )]
    CountMismatch {
        images: String,
        n_images: usize,
        labels: String,
        n_labels: usize,
    },
    #[error("{file}: label {label} at index {index} is not a class 0-9")]
    Label {
        file: String,
        label: u8,
        index: usize,
    },
}

/// Images and labels, kept as bytes (1 byte a pixel) until a batch is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dataset {
    /// `len × 784` pixels, row-major.
    pub images: Vec<u8>,
    /// One class (0–9) per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Parses an images file and a labels file (names are only for error messages).
    pub fn from_idx(
        images_name: &str,
        images: &[u8],
        labels_name: &str,
        labels: &[u8],
    ) -> Result<Self, DataError> {
        let n_images = read_header(images_name, images, IMAGES_MAGIC, 16, "images")?;
        let rows = be_u32(images, 8);
        let cols = be_u32(images, 12);
        if rows as usize * cols as usize != IMAGE_PIXELS || rows != cols {
            return Err(DataError::ImageSize {
                file: images_name.into(),
                rows,
                cols,
            });
        }
        // Exact sizes: a file with bytes after its last record is refused (its bytes would name
        // another dataset, and so another privacy ledger, for the same records). Checked
        // arithmetic: a declared count of 2³² − 1 overflows a 32-bit (wasm) usize.
        let need = n_images
            .checked_mul(IMAGE_PIXELS)
            .and_then(|b| b.checked_add(16))
            .unwrap_or(usize::MAX);
        exact_size(
            images_name,
            need,
            images.len(),
            "16-byte header + 784 bytes per image",
        )?;
        let n_labels = read_header(labels_name, labels, LABELS_MAGIC, 8, "labels")?;
        exact_size(
            labels_name,
            n_labels.saturating_add(8),
            labels.len(),
            "8-byte header + 1 byte per label",
        )?;
        if n_images != n_labels {
            return Err(DataError::CountMismatch {
                images: images_name.into(),
                n_images,
                labels: labels_name.into(),
                n_labels,
            });
        }
        let labels = labels[8..8 + n_labels].to_vec();
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= NUM_CLASSES)
        {
            return Err(DataError::Label {
                file: labels_name.into(),
                label,
                index,
            });
        }
        Ok(Self {
            images: images[16..].to_vec(),
            labels,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of example `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]
    }

    /// A new dataset holding the examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_PIXELS);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// How many examples of each class.
    pub fn label_histogram(&self) -> [u32; NUM_CLASSES] {
        let mut h = [0; NUM_CLASSES];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }

    /// The first `per_class` examples of each class, class by class: what the client page
    /// shows of the data a tab trains on.
    pub fn first_of_each_class(&self, per_class: usize) -> Vec<usize> {
        let mut taken = [0usize; NUM_CLASSES];
        let mut picked: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let seen = &mut taken[self.labels[i] as usize];
                *seen += 1;
                *seen <= per_class
            })
            .collect();
        picked.sort_by_key(|&i| self.labels[i]);
        picked
    }

    /// Normalised pixels `(x/255 − mean)/std` and labels for the examples at `indices`.
    pub fn batch(&self, indices: &[usize], pixels: PixelStats) -> (Vec<f32>, Vec<u8>) {
        let mut x = Vec::with_capacity(indices.len() * IMAGE_PIXELS);
        for &i in indices {
            x.extend(
                self.image(i)
                    .iter()
                    .map(|&p| (p as f32 / 255.0 - pixels.mean) / pixels.std),
            );
        }
        (x, indices.iter().map(|&i| self.labels[i]).collect())
    }
}

/// A file of exactly `expected` bytes, or why not (too short, or too long).
fn exact_size(
    file: &str,
    expected: usize,
    actual: usize,
    what: &'static str,
) -> Result<(), DataError> {
    match actual.cmp(&expected) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(DataError::Truncated {
            file: file.into(),
            expected,
            actual,
            what,
        }),
        std::cmp::Ordering::Greater => Err(DataError::Size {
            file: file.into(),
            expected,
            actual,
            what,
        }),
    }
}

fn read_header(
    file: &str,
    bytes: &[u8],
    magic: u32,
    header: usize,
    what: &'static str,
) -> Result<usize, DataError> {
    if bytes.len() < header {
        return Err(DataError::Truncated {
            file: file.into(),
            expected: header,
            actual: bytes.len(),
            what: if header == 16 {
                "16-byte IDX images header"
            } else {
                "8-byte IDX labels header"
            },
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::Magic {
            file: file.into(),
            expected: magic,
            found,
            what,
        });
    }
    Ok(be_u32(bytes, 4) as usize)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds IDX bytes (used by tests and by tools that write small data sets).
pub fn to_idx(dataset: &Dataset) -> (Vec<u8>, Vec<u8>) {
    let n = dataset.len() as u32;
    let mut images = Vec::with_capacity(16 + dataset.images.len());
    for v in [IMAGES_MAGIC, n, 28, 28] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    images.extend_from_slice(&dataset.images);
    let mut labels = Vec::with_capacity(8 + dataset.labels.len());
    for v in [LABELS_MAGIC, n] {
        labels.extend_from_slice(&v.to_be_bytes());
    }
    labels.extend_from_slice(&dataset.labels);
    (images, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset {
            images: (0..3 * 784).map(|i| (i % 256) as u8).collect(),
            labels: vec![3, 1, 4],
        }
    }

    #[test]
    fn idx_round_trip() {
        let (im, lb) = to_idx(&tiny());
        assert_eq!(
            Dataset::from_idx("im", &im, "lb", &lb).expect("valid"),
            tiny()
        );
    }

    #[test]
    fn idx_errors_name_the_file_and_expectation() {
        let (im, lb) = to_idx(&tiny());
        let err = |r: Result<Dataset, DataError>| r.unwrap_err().to_string();

        let e = err(Dataset::from_idx("my-images", &im[..100], "lb", &lb));
        assert!(
            e.contains("my-images") && e.contains("expected at least 2368 bytes"),
            "{e}"
        );

        let e = err(Dataset::from_idx("my-images", &im[..10], "lb", &lb));
        assert!(
            e.contains("my-images") && e.contains("16-byte IDX images header"),
            "{e}"
        );

        let mut wrong_magic = im.clone();
        wrong_magic[3] = 0x01;
        let e = err(Dataset::from_idx(
            "my-images",
            &wrong_magic,
            "my-labels",
            &lb,
        ));
        assert!(
            e.contains("magic number is 0x00000801, expected 0x00000803"),
            "{e}"
        );

        let mut bad = lb.clone();
        bad[9] = 12;
        let e = err(Dataset::from_idx("im", &im, "my-labels", &bad));
        assert!(e.contains("my-labels: label 12 at index 1"), "{e}");

        let (im2, _) = to_idx(&tiny().subset(&[0, 1]));
        let e = err(Dataset::from_idx("im", &im2, "lb", &lb));
        assert!(e.contains("2 images") && e.contains("3 labels"), "{e}");

        // A byte after the last record (it would give the same records another fingerprint,
        // and so a fresh privacy ledger) and a count that overflows: refused, not parsed.
        let mut padded = im.clone();
        padded.push(0);
        let e = err(Dataset::from_idx("my-images", &padded, "lb", &lb));
        assert!(e.contains("expected exactly 2368 bytes"), "{e}");
        let mut huge = im.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Dataset::from_idx("im", &huge, "lb", &lb).is_err());
    }

    #[test]
    fn the_first_examples_of_each_class_come_class_by_class() {
        let labels = vec![3, 1, 3, 3, 0, 1, 3];
        let data = Dataset {
            images: vec![0; labels.len() * IMAGE_PIXELS],
            labels,
        };
        // Two of each class at most, in file order within a class; absent classes are absent.
        assert_eq!(data.first_of_each_class(2), [4, 1, 5, 0, 2]);
        assert_eq!(data.first_of_each_class(0), Vec::<usize>::new());
    }
}
