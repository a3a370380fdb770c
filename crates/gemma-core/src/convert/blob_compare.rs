//! gemma.cpp's `blob_compare`: compares two blob stores blob by blob. Tensor blobs that differ are decoded and
//! compared value by value (largest and mean absolute difference, number of differing values); other blobs by
//! bytes.

use std::path::Path;

use gemma_io::sbs::{BlobStore, SbsFile, SbsTensor};

use super::sbs_to_gguf::decode_sbs_tensor;
use super::ConvertError;

/// How two tensors' decoded values differ.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDifference {
    pub elements: u64,
    /// Values that differ (NaN equals NaN).
    pub differing: u64,
    pub max_abs: f32,
    pub mean_abs: f64,
}

/// How one blob of the first file compares with the blob of the same name in the second.
#[derive(Clone, Debug, PartialEq)]
pub enum BlobDifference {
    Equal,
    /// Different sizes (and not two tensors of the same shape).
    Size {
        a: u64,
        b: u64,
    },
    /// Same size, different bytes; not tensors (or of different shapes or types that cannot be decoded).
    Bytes {
        differing: u64,
        bytes: u64,
    },
    /// Tensors of the same shape with different bytes.
    Tensor(TensorDifference),
}

/// The result of comparing two files.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlobComparison {
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// Blobs present in both, in the first file's order.
    pub blobs: Vec<(String, BlobDifference)>,
}

impl BlobComparison {
    /// Same keys and every blob byte-equal.
    pub fn identical(&self) -> bool {
        self.only_in_a.is_empty()
            && self.only_in_b.is_empty()
            && self.blobs.iter().all(|(_, d)| *d == BlobDifference::Equal)
    }
}

/// A file opened as a checkpoint (tensors known) or, failing that, as a bare blob store.
enum Opened {
    Checkpoint(Box<SbsFile>),
    Store(BlobStore),
}

impl Opened {
    fn open(path: &Path) -> Result<Opened, ConvertError> {
        match SbsFile::open(path) {
            Ok(f) => Ok(Opened::Checkpoint(Box::new(f))),
            Err(_) => Ok(Opened::Store(BlobStore::open(path)?)),
        }
    }
    fn blobs(&self) -> &BlobStore {
        match self {
            Opened::Checkpoint(f) => f.blobs(),
            Opened::Store(s) => s,
        }
    }
    fn tensor(&self, key: &str) -> Option<(&SbsFile, &SbsTensor)> {
        match self {
            Opened::Checkpoint(f) => f.tensors().iter().find(|t| t.key == key).map(|t| (&**f, t)),
            Opened::Store(_) => None,
        }
    }
}

fn tensor_difference(a: &[f32], b: &[f32]) -> TensorDifference {
    let mut d = TensorDifference { elements: a.len() as u64, differing: 0, max_abs: 0.0, mean_abs: 0.0 };
    let mut sum = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        if x == y || (x.is_nan() && y.is_nan()) {
            continue;
        }
        d.differing += 1;
        let diff = (x - y).abs();
        if diff > d.max_abs || diff.is_nan() {
            d.max_abs = diff;
        }
        sum += f64::from(diff);
    }
    if !a.is_empty() {
        d.mean_abs = sum / a.len() as f64;
    }
    d
}

fn compare_blob(a: &Opened, b: &Opened, key: &str) -> Result<BlobDifference, ConvertError> {
    let (da, db) = (a.blobs().blob(key).unwrap_or(&[]), b.blobs().blob(key).unwrap_or(&[]));
    if da == db {
        return Ok(BlobDifference::Equal);
    }
    if let (Some((fa, ta)), Some((fb, tb))) = (a.tensor(key), b.tensor(key)) {
        if (ta.record.rows, ta.record.cols) == (tb.record.rows, tb.record.cols) {
            let (va, vb) = (decode_sbs_tensor(fa, ta)?, decode_sbs_tensor(fb, tb)?);
            return Ok(BlobDifference::Tensor(tensor_difference(&va, &vb)));
        }
    }
    if da.len() != db.len() {
        return Ok(BlobDifference::Size { a: da.len() as u64, b: db.len() as u64 });
    }
    let differing = da.iter().zip(db).filter(|(x, y)| x != y).count() as u64;
    Ok(BlobDifference::Bytes { differing, bytes: da.len() as u64 })
}

/// Compares the blobs of two files (SBS checkpoints, or any blob store).
pub fn blob_compare(a: &Path, b: &Path) -> Result<BlobComparison, ConvertError> {
    let (a, b) = (Opened::open(a)?, Opened::open(b)?);
    let mut out = BlobComparison::default();
    for key in a.blobs().keys() {
        if b.blobs().find(key).is_none() {
            out.only_in_a.push(key.clone());
            continue;
        }
        out.blobs.push((key.clone(), compare_blob(&a, &b, key)?));
    }
    out.only_in_b = b.blobs().keys().iter().filter(|k| a.blobs().find(k).is_none()).cloned().collect();
    Ok(out)
}
