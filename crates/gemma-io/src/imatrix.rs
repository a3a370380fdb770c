//! Importance-matrix files, as llama.cpp's `llama-imatrix` writes them and `llama-quantize --imatrix` reads them
//! (`common/imatrix-loader.cpp`).
//!
//! Two formats:
//! - **GGUF** (the default since 2025): per matrix two F32 tensors, `NAME.in_sum2` (the sum over tokens of each
//!   input column's squared activation, `[n_col, n_mat]`) and `NAME.counts` (tokens seen, `[1, n_mat]`), with
//!   metadata `imatrix.datasets` (strings), `imatrix.chunk_count` and `imatrix.chunk_size` (u32).
//! - **legacy `.dat`**: `i32 n_entries`, then per entry `i32 name_len`, the name, `i32 ncall`, `i32 nval`,
//!   `nval` f32 values (already divided by the token count and multiplied by `ncall`); then optionally
//!   `i32 chunk_count`, `i32 dataset_len`, the dataset name.
//!
//! A file that starts with the GGUF magic is read as GGUF, anything else as legacy (llama.cpp tries GGUF and
//! falls back). Damage gives an [`ImatrixError`], never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue};

/// One matrix's statistics, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// GGUF: sums of squared activations, `n_col * n_mat` (one row per expert). Legacy: the stored values.
    pub sums: Vec<f32>,
    /// GGUF: tokens counted per expert (rounded to integers, as llama.cpp does). Legacy: `[ncall]`.
    pub counts: Vec<i64>,
}

/// A whole importance-matrix file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    /// By matrix name (`blk.0.attn_q.weight`), in name order as llama.cpp's `std::map`.
    pub entries: BTreeMap<String, ImatrixEntry>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
    pub is_legacy: bool,
    /// GGUF: all three metadata keys are there (llama-quantize refuses a GGUF file without them).
    pub has_metadata: bool,
}

pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";

/// Why an importance-matrix file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("no importance data in the file")]
    Empty,
    #[error("legacy imatrix file is truncated or damaged at byte {at}: {what}")]
    Legacy { at: usize, what: &'static str },
    #[error("imatrix tensor '{name}': {what}")]
    Tensor { name: String, what: String },
    #[error("imatrix metadata '{key}': {what}")]
    Metadata { key: &'static str, what: &'static str },
    #[error("GGUF imatrix file has no imatrix metadata ({KEY_DATASETS}, {KEY_CHUNK_COUNT}, {KEY_CHUNK_SIZE})")]
    MissingMetadata,
    #[error("imatrix entry '{name}' has a value that is not finite")]
    NotFinite { name: String },
    #[error("imatrix entry '{name}' has {theirs} {what} where the matrices already added have {ours}")]
    Mismatch { name: String, what: &'static str, ours: usize, theirs: usize },
    #[error("cannot add to a legacy imatrix: start from Imatrix::raw")]
    AddToLegacy,
    #[error("cannot write {path}: {source}")]
    WriteFailed { path: std::path::PathBuf, source: std::io::Error },
}

/// Which file an importance matrix is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// llama-imatrix's default: raw sums and counts.
    Gguf,
    /// `--output-format dat`: per-chunk averages.
    Legacy,
}

impl Imatrix {
    /// Reads a file in either format.
    pub fn open(path: impl AsRef<Path>) -> Result<Imatrix, ImatrixError> {
        let bytes = std::fs::read(path.as_ref())?;
        Imatrix::from_bytes(bytes, path.as_ref())
    }

    /// Reads a file's bytes in either format (`name` for error messages).
    pub fn from_bytes(bytes: Vec<u8>, name: impl AsRef<Path>) -> Result<Imatrix, ImatrixError> {
        if bytes.starts_with(b"GGUF") {
            let file = GgufFile::from_bytes(bytes, name.as_ref())?;
            Imatrix::from_gguf(&file)
        } else {
            Imatrix::from_legacy(&bytes)
        }
    }

    /// The GGUF format (`common_imatrix_load`).
    pub fn from_gguf(file: &GgufFile) -> Result<Imatrix, ImatrixError> {
        if file.tensors().is_empty() {
            return Err(ImatrixError::Empty);
        }
        let mut out = Imatrix::default();
        let datasets = file.get(KEY_DATASETS);
        if let Some(strings) = datasets.and_then(MetaValue::as_array).and_then(|a| a.strings()) {
            out.datasets = strings.iter().map(str::to_string).collect();
        }
        let u32_key = |key: &'static str| -> Result<Option<u32>, ImatrixError> {
            match file.get(key) {
                None => Ok(None),
                Some(MetaValue::U32(v)) => Ok(Some(*v)),
                // llama.cpp's gguf_get_val_u32 aborts on another type
                Some(_) => Err(ImatrixError::Metadata { key, what: "not a u32" }),
            }
        };
        let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
        let chunk_size = u32_key(KEY_CHUNK_SIZE)?;
        out.has_metadata = datasets.is_some() && chunk_count.is_some() && chunk_size.is_some();
        out.chunk_count = chunk_count.unwrap_or(0);
        out.chunk_size = chunk_size.unwrap_or(0);

        let mut pairs: BTreeMap<&str, (Option<&crate::TensorInfo>, Option<&crate::TensorInfo>)> = BTreeMap::new();
        for t in file.tensors() {
            if let Some(base) = t.name.strip_suffix(SUFFIX_SUMS) {
                pairs.entry(base).or_default().0 = Some(t);
            } else if let Some(base) = t.name.strip_suffix(SUFFIX_COUNTS) {
                pairs.entry(base).or_default().1 = Some(t);
            }
        }
        for (name, pair) in pairs {
            let tensor_error = |what: &str| ImatrixError::Tensor { name: name.to_string(), what: what.to_string() };
            let (Some(sums), Some(counts)) = pair else {
                return Err(tensor_error("has sums without counts, or counts without sums"));
            };
            if sums.ggml_type != GgmlType::F32 || counts.ggml_type != GgmlType::F32 {
                return Err(tensor_error("sums and counts must be F32"));
            }
            let sums = f32s(file.tensor_data(sums));
            let counts: Vec<i64> = f32s(file.tensor_data(counts)).iter().map(|&c| c.round() as i64).collect();
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(tensor_error("the sums are not a whole number of rows, one per count"));
            }
            out.entries.insert(name.to_string(), ImatrixEntry { sums, counts });
        }
        Ok(out)
    }

    /// The legacy `.dat` format (`common_imatrix_load_legacy`).
    pub fn from_legacy(bytes: &[u8]) -> Result<Imatrix, ImatrixError> {
        let mut r = LegacyReader { bytes, at: 0 };
        let n_entries = r.i32("entry count")?;
        if n_entries < 1 {
            return Err(ImatrixError::Empty);
        }
        let mut out = Imatrix { is_legacy: true, ..Imatrix::default() };
        for _ in 0..n_entries {
            let len = r.len("name length")?;
            let name = r.take(len, "name")?;
            // llama.cpp reads the name as a C string: it ends at the first NUL
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            let name = String::from_utf8_lossy(name).into_owned();
            let ncall = r.i32("call count")?;
            let nval = r.i32("value count")?;
            if nval < 1 {
                return Err(ImatrixError::Legacy { at: r.at, what: "an entry has no values" });
            }
            let data = r.take(nval as usize * 4, "values")?;
            out.entries.insert(name, ImatrixEntry { sums: f32s(data), counts: vec![ncall as i64] });
        }
        // the chunk count and dataset name are optional, and read leniently, as llama.cpp does
        if r.at < bytes.len() {
            if let Ok(n) = r.i32("chunk count") {
                out.chunk_count = n as u32;
                if let Ok(len) = r.i32("dataset length") {
                    if len > 0 {
                        if let Ok(name) = r.take(len as usize, "dataset") {
                            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                            out.datasets.push(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The per-column weights llama-quantize quantizes with (`load_imatrix`): GGUF sums divided by each
    /// expert's count (1 where a count is 0); legacy values divided by `ncall` (as they are when it is not
    /// positive). Non-finite values are an error, as llama-quantize's check.
    pub fn weights(&self) -> Result<BTreeMap<String, Vec<f32>>, ImatrixError> {
        let mut out = BTreeMap::new();
        for (name, e) in &self.entries {
            let mut w = vec![0f32; e.sums.len()];
            if self.is_legacy {
                let ncall = e.counts.first().copied().unwrap_or(0);
                for (o, &s) in w.iter_mut().zip(&e.sums) {
                    *o = if ncall > 0 { s / ncall as f32 } else { s };
                }
            } else {
                let n_col = e.sums.len() / e.counts.len().max(1);
                for (j, &count) in e.counts.iter().enumerate() {
                    let count = count as f32;
                    for i in 0..n_col {
                        w[j * n_col + i] = if count > 0.0 { e.sums[j * n_col + i] / count } else { 1.0 };
                    }
                }
            }
            if w.iter().any(|v| !v.is_finite()) {
                return Err(ImatrixError::NotFinite { name: name.clone() });
            }
            out.insert(name.clone(), w);
        }
        Ok(out)
    }

    /// The GGUF file llama-imatrix writes, to its bytes: `general.type = imatrix`, the three `imatrix.*` keys,
    /// then per entry (in name order) `NAME.in_sum2` `[n_col, n_mat]` and `NAME.counts` `[1, n_mat]`, both F32.
    pub fn to_gguf(&self) -> Result<GgufWriter, ImatrixError> {
        let mut w = GgufWriter::new();
        w.add_metadata("general.type", MetaValue::String("imatrix".to_string()))?;
        w.add_metadata(KEY_DATASETS, MetaValue::strings(&self.datasets))?;
        w.add_metadata(KEY_CHUNK_COUNT, MetaValue::U32(self.chunk_count))?;
        w.add_metadata(KEY_CHUNK_SIZE, MetaValue::U32(self.chunk_size))?;
        for (name, e) in &self.entries {
            let n_mat = e.counts.len().max(1);
            let n_col = (e.sums.len() / n_mat) as u64;
            let counts: Vec<f32> = e.counts.iter().map(|&c| c as f32).collect();
            // ggml stores a tensor's dimensions without the trailing 1s (`ggml_n_dims`)
            let (sums_dims, counts_dims): (&[u64], &[u64]) =
                if n_mat == 1 { (&[n_col], &[1]) } else { (&[n_col, n_mat as u64], &[1, n_mat as u64]) };
            w.add_tensor(format!("{name}{SUFFIX_SUMS}"), sums_dims, GgmlType::F32, f32_bytes(&e.sums))?;
            w.add_tensor(format!("{name}{SUFFIX_COUNTS}"), counts_dims, GgmlType::F32, f32_bytes(&counts))?;
        }
        Ok(w)
    }

    /// The legacy `.dat` bytes (entries in name order, then the chunk count and the last dataset name: the text
    /// of this run, or of the last file combined, as llama-imatrix stores it).
    pub fn to_legacy_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((self.entries.len() as i32).to_le_bytes());
        for (name, e) in &self.entries {
            out.extend((name.len() as i32).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend((e.counts.first().copied().unwrap_or(0) as i32).to_le_bytes());
            out.extend((e.sums.len() as i32).to_le_bytes());
            out.extend(f32_bytes(&e.sums));
        }
        out.extend((self.chunk_count as i32).to_le_bytes());
        let dataset = self.datasets.last().map_or("", String::as_str);
        out.extend((dataset.len() as i32).to_le_bytes());
        out.extend(dataset.as_bytes());
        out
    }
}

impl Imatrix {
    /// An empty matrix of raw sums (GGUF form) for chunks of `chunk_size` tokens, to add files to
    /// ([`Imatrix::add`]).
    pub fn raw(chunk_size: u32) -> Imatrix {
        Imatrix { chunk_size, has_metadata: true, ..Imatrix::default() }
    }

    /// Adds another matrix's statistics to this one of raw sums, as llama-imatrix's `--in-file` combines files:
    /// GGUF sums and counts are added as they are (in f32, so combining files gives llama-imatrix's bytes); a
    /// legacy file's per-chunk averages are turned back into sums and counts of `chunk_size`-token chunks
    /// (values and `ncall` times this matrix's `chunk_size`). A matrix seen with one count gets the other's
    /// number of counts (experts). The datasets are appended, and the chunk count becomes the largest count
    /// over `chunk_size`. A matrix of another size is an error, and nothing is added.
    pub fn add(&mut self, other: &Imatrix) -> Result<(), ImatrixError> {
        if self.is_legacy {
            return Err(ImatrixError::AddToLegacy);
        }
        let chunk_size = self.chunk_size as i64;
        for (name, theirs) in &other.entries {
            let mismatch =
                |what, ours: usize, theirs: usize| ImatrixError::Mismatch { name: name.clone(), what, ours, theirs };
            if let Some(ours) = self.entries.get(name) {
                if ours.sums.len() != theirs.sums.len() {
                    return Err(mismatch("values", ours.sums.len(), theirs.sums.len()));
                }
                let (n, have) = (theirs.counts.len(), ours.counts.len());
                if !other.is_legacy && have != n && have != 1 {
                    return Err(mismatch("counts", have, n));
                }
            }
        }
        for (name, theirs) in &other.entries {
            let e = self
                .entries
                .entry(name.clone())
                .or_insert_with(|| ImatrixEntry { sums: vec![0.0; theirs.sums.len()], counts: Vec::new() });
            if other.is_legacy {
                if e.counts.is_empty() {
                    e.counts.push(0);
                }
                let ncall = theirs.counts.first().copied().unwrap_or(0);
                for (s, &v) in e.sums.iter_mut().zip(&theirs.sums) {
                    *s += v * chunk_size as f32;
                }
                for c in &mut e.counts {
                    *c += ncall * chunk_size;
                }
            } else {
                if e.counts.len() <= 1 {
                    let first = e.counts.first().copied().unwrap_or(0);
                    e.counts.resize(theirs.counts.len().max(1), first);
                }
                for (s, &v) in e.sums.iter_mut().zip(&theirs.sums) {
                    *s += v;
                }
                for (c, &v) in e.counts.iter_mut().zip(&theirs.counts) {
                    *c += v;
                }
            }
        }
        self.datasets.extend(other.datasets.iter().cloned());
        let most = self.entries.values().flat_map(|e| e.counts.iter().copied()).max().unwrap_or(0);
        self.chunk_count = (most / chunk_size.max(1)) as u32;
        Ok(())
    }

    /// The legacy form of a matrix of raw sums (as llama-imatrix's `save_imatrix_legacy` stores it): per entry
    /// `ncall` = the largest count over `chunk_size`, rounded up, and values = `sum / count * ncall` (1 * ncall
    /// for an expert that saw nothing); entries that saw no token at all are left out.
    pub fn to_legacy(&self) -> Imatrix {
        let chunk_size = i64::from(self.chunk_size.max(1));
        let mut entries = BTreeMap::new();
        for (name, e) in &self.entries {
            let max = e.counts.iter().copied().max().unwrap_or(0);
            if max <= 0 {
                continue;
            }
            let ncall = (max + chunk_size - 1) / chunk_size;
            let n_col = e.sums.len() / e.counts.len().max(1);
            let sums = e
                .sums
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let count = e.counts[i / n_col.max(1)] as f32;
                    let (s, count) = if count == 0.0 { (1.0, 1.0) } else { (s, count) };
                    (s / count) * ncall as f32
                })
                .collect();
            entries.insert(name.clone(), ImatrixEntry { sums, counts: vec![ncall] });
        }
        Imatrix { entries, is_legacy: true, has_metadata: false, ..self.clone() }
    }

    /// Writes a matrix of raw sums (GGUF form) as `format`, through a temporary file in the same folder renamed
    /// into place once complete and synced.
    pub fn write_file(&self, path: impl AsRef<Path>, format: ImatrixFormat) -> Result<(), ImatrixError> {
        let path = path.as_ref();
        let failed = |source| ImatrixError::WriteFailed { path: path.to_path_buf(), source };
        let bytes = match format {
            ImatrixFormat::Gguf => self.to_gguf()?.into_bytes(),
            ImatrixFormat::Legacy => self.to_legacy().to_legacy_bytes(),
        };
        let mut temp = crate::output_temp_file(path).map_err(failed)?;
        std::io::Write::write_all(&mut temp, &bytes).map_err(failed)?;
        temp.as_file().sync_all().map_err(failed)?;
        temp.persist(path).map_err(|e| failed(e.error))?;
        Ok(())
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct LegacyReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> LegacyReader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ImatrixError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(ImatrixError::Legacy { at: self.at, what })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, ImatrixError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len(&mut self, what: &'static str) -> Result<usize, ImatrixError> {
        let at = self.at;
        usize::try_from(self.i32(what)?).map_err(|_| ImatrixError::Legacy { at, what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.attn_q.weight".to_string(),
            ImatrixEntry { sums: vec![4.0, 8.0, 0.5, 2.0], counts: vec![4] },
        );
        entries.insert(
            "blk.0.ffn_down.weight".to_string(),
            ImatrixEntry { sums: vec![1.0, 2.0, 3.0, 6.0, 9.0, 12.0], counts: vec![3, 0] },
        );
        Imatrix {
            entries,
            datasets: vec!["lighthouses.txt".to_string()],
            chunk_count: 5,
            chunk_size: 128,
            is_legacy: false,
            has_metadata: true,
        }
    }

    #[test]
    fn gguf_round_trip_and_weights() {
        let m = sample();
        let bytes = m.to_gguf().expect("writer").into_bytes();
        let back = Imatrix::from_bytes(bytes, "x.gguf").expect("reads");
        assert_eq!(back, m);
        let w = back.weights().expect("weights");
        assert_eq!(w["blk.0.attn_q.weight"], vec![1.0, 2.0, 0.125, 0.5]);
        // a zero count gives weights of 1 for that expert's columns
        assert_eq!(w["blk.0.ffn_down.weight"], vec![1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn legacy_round_trip_and_weights() {
        let mut m = sample();
        m.is_legacy = true;
        m.has_metadata = false;
        m.entries.get_mut("blk.0.ffn_down.weight").expect("entry").counts = vec![0];
        let bytes = m.to_legacy_bytes();
        let back = Imatrix::from_bytes(bytes.clone(), "x.dat").expect("reads");
        assert_eq!(back, Imatrix { chunk_size: 0, ..m.clone() });
        let w = back.weights().expect("weights");
        assert_eq!(w["blk.0.attn_q.weight"], vec![1.0, 2.0, 0.125, 0.5]);
        // ncall 0: the values as stored
        assert_eq!(w["blk.0.ffn_down.weight"], vec![1.0, 2.0, 3.0, 6.0, 9.0, 12.0]);
        // the trailer is optional
        let without: usize = 4 + 4 + "lighthouses.txt".len();
        let back = Imatrix::from_legacy(&bytes[..bytes.len() - without]).expect("no trailer");
        assert_eq!((back.chunk_count, back.datasets.len()), (0, 0));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let mut m = sample();
        m.is_legacy = true;
        let legacy = m.to_legacy_bytes();
        let gguf = sample().to_gguf().expect("writer").into_bytes();
        for bytes in [&legacy, &gguf] {
            for cut in 0..bytes.len() {
                // a legacy file cut inside its optional trailer still reads; everything else must not panic
                let _ = Imatrix::from_bytes(bytes[..cut].to_vec(), "cut");
            }
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[at] ^= flip;
                    if let Ok(m) = Imatrix::from_bytes(b, "flipped") {
                        let _ = m.weights();
                    }
                }
            }
        }
        // the entries themselves cannot be cut
        let header = 4 + 4 + "blk.0.attn_q.weight".len() + 8;
        assert!(matches!(Imatrix::from_legacy(&legacy[..header + 3]), Err(ImatrixError::Legacy { .. })));
        assert!(matches!(Imatrix::from_legacy(&[0, 0, 0, 0]), Err(ImatrixError::Empty)));
        assert!(matches!(Imatrix::from_legacy(&[]), Err(ImatrixError::Legacy { .. })));
    }

    #[test]
    fn gguf_needs_pairs_of_f32_tensors_and_finite_values() {
        let mut w = GgufWriter::new();
        w.add_tensor("a.in_sum2", &[2, 1], GgmlType::F32, f32_bytes(&[1.0, 2.0])).expect("tensor");
        let err = Imatrix::from_bytes(w.into_bytes(), "x").expect_err("no counts");
        assert!(matches!(err, ImatrixError::Tensor { .. }), "{err}");

        let mut w = GgufWriter::new();
        w.add_tensor("a.in_sum2", &[3, 1], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0])).expect("tensor");
        w.add_tensor("a.counts", &[2, 1], GgmlType::F32, f32_bytes(&[1.0, 1.0])).expect("tensor");
        let err = Imatrix::from_bytes(w.into_bytes(), "x").expect_err("3 sums, 2 counts");
        assert!(matches!(err, ImatrixError::Tensor { .. }), "{err}");

        let mut w = GgufWriter::new();
        w.add_tensor("a.in_sum2", &[2, 1], GgmlType::F32, f32_bytes(&[f32::INFINITY, 2.0])).expect("tensor");
        w.add_tensor("a.counts", &[1, 1], GgmlType::F32, f32_bytes(&[1.0])).expect("tensor");
        let m = Imatrix::from_bytes(w.into_bytes(), "x").expect("reads");
        assert!(!m.has_metadata);
        assert!(matches!(m.weights(), Err(ImatrixError::NotFinite { .. })));

        let err = Imatrix::from_bytes(GgufWriter::new().into_bytes(), "x").expect_err("no tensors");
        assert!(matches!(err, ImatrixError::Empty));
    }

    #[test]
    fn adding_matrices_sums_them_as_llama_imatrix_combines_files() {
        let mut m = Imatrix::raw(4);
        m.add(&sample()).unwrap();
        m.add(&sample()).unwrap();
        let q = &m.entries["blk.0.attn_q.weight"];
        assert_eq!((q.sums.as_slice(), q.counts.as_slice()), ([8.0, 16.0, 1.0, 4.0].as_slice(), [8].as_slice()));
        assert_eq!(m.entries["blk.0.ffn_down.weight"].counts, [6, 0]);
        // the largest count (8) over the chunk size (4)
        assert_eq!((m.chunk_count, m.chunk_size, m.is_legacy), (2, 4, false));
        assert_eq!(m.datasets.len(), 2 * sample().datasets.len());

        // a legacy file's per-chunk averages become sums and counts of chunk_size-token chunks
        let mut from_legacy = Imatrix::raw(4);
        from_legacy.add(&sample().to_legacy()).unwrap();
        let q = &from_legacy.entries["blk.0.attn_q.weight"];
        // ncall 1: the values are sums / 4 * 1, times 4 again
        assert_eq!((q.sums.as_slice(), q.counts.as_slice()), ([4.0, 8.0, 0.5, 2.0].as_slice(), [4].as_slice()));

        // one count meets several: it becomes one per expert
        let mut one = Imatrix::raw(4);
        one.entries.insert("blk.0.ffn_down.weight".into(), ImatrixEntry { sums: vec![0.0; 6], counts: vec![5] });
        one.add(&sample()).unwrap();
        assert_eq!(one.entries["blk.0.ffn_down.weight"].counts, [8, 5]);

        // a matrix of another size is refused and nothing is added
        let mut other = sample();
        other.entries.get_mut("blk.0.ffn_down.weight").unwrap().sums.truncate(4);
        let before = m.clone();
        let e = m.add(&other).unwrap_err();
        assert!(matches!(e, ImatrixError::Mismatch { what: "values", ours: 6, theirs: 4, .. }), "{e}");
        assert_eq!(m, before);
        let mut three = sample();
        three.entries.get_mut("blk.0.ffn_down.weight").unwrap().counts = vec![1, 1, 1];
        three.entries.get_mut("blk.0.ffn_down.weight").unwrap().sums = vec![0.0; 6];
        let e = m.add(&three).unwrap_err();
        assert!(matches!(e, ImatrixError::Mismatch { what: "counts", ours: 2, theirs: 3, .. }), "{e}");
        assert!(matches!(sample().to_legacy().add(&sample()), Err(ImatrixError::AddToLegacy)));
    }
}
