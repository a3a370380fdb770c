//! Split GGUF models, as llama.cpp's `llama-gguf-split` makes them: `PREFIX-00001-of-0000N.gguf`, ..., the
//! first with all the metadata, each with `split.no` (0-based), `split.count` and `split.tensors.count`, the
//! tensors in the input's order, so many per file.
//!
//! Reading a split model is [`GgufFile::open`] on its first part. This module has the naming rule and the two
//! writers: [`SplitPlan`] (one file into parts) and [`merge`] (parts into one file), with llama-gguf-split's
//! bytes: same metadata order (`split.*` keys moved to the end as ggml's `gguf_set_val_*` does), version 3,
//! 32-byte alignment, ggml's dimension count (trailing 1s dropped), every tensor padded to 32 bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::reader::{align_up, GgufError, GgufFile};
use super::value::MetaValue;
use super::writer::{put_string, put_value};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// 0-based index of this part (u16).
pub const KEY_NO: &str = "split.no";
/// How many parts (u16); 0 in a merged file.
pub const KEY_COUNT: &str = "split.count";
/// Tensors in all parts together (i32).
pub const KEY_TENSORS_COUNT: &str = "split.tensors.count";

/// llama.cpp's `llama_split_path`: `PREFIX-0000K-of-0000N.gguf` for part `no` (0-based) of `count`.
pub fn split_path(prefix: &Path, no: u32, count: u32) -> PathBuf {
    let mut name = prefix.as_os_str().to_os_string();
    name.push(format!("-{:05}-of-{count:05}.gguf", no + 1));
    PathBuf::from(name)
}

/// llama.cpp's `llama_split_prefix`: the prefix of `path` when its name ends in part `no`'s (0-based) suffix
/// `-0000K-of-0000N.gguf` (with something before it), else `None`.
pub fn split_prefix(path: &Path, no: u32, count: u32) -> Option<PathBuf> {
    let text = path.to_str()?;
    let suffix = format!("-{:05}-of-{count:05}.gguf", no + 1);
    let prefix = text.strip_suffix(&suffix)?;
    (!prefix.is_empty()).then(|| PathBuf::from(prefix))
}

/// How `--split` cuts the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitLimit {
    /// At most this many tensors per part (`--split-max-tensors`).
    Tensors(usize),
    /// At most this many bytes of tensor data (each padded to 32) per part (`--split-max-size`); the
    /// metadata is not counted, as in llama-gguf-split.
    Bytes(u64),
}

/// What one output part holds.
#[derive(Clone, Debug)]
pub struct PlannedPart {
    pub metadata: Vec<(String, MetaValue)>,
    /// Indices into the input's [`GgufFile::tensors`], in order.
    pub tensors: Vec<usize>,
}

/// The parts `--split` makes of one model, before anything is written.
#[derive(Clone, Debug)]
pub struct SplitPlan {
    parts: Vec<PlannedPart>,
    /// The input's tensor count: a plan is only written with the file it was made for.
    n_tensors: usize,
}

/// ggml's `gguf_set_val_*`: an existing key is removed and the new value appended.
fn set(metadata: &mut Vec<(String, MetaValue)>, key: &str, value: MetaValue) {
    metadata.retain(|(k, _)| k != key);
    metadata.push((key.to_string(), value));
}

fn split_error(file: &GgufFile, what: String) -> GgufError {
    GgufError::Split { path: file.path().to_path_buf(), what }
}

/// llama-gguf-split writes 32-byte alignment whatever `general.alignment` says (ggml's writer ignores the key),
/// so another alignment would give a file that says one thing and does another.
fn check_alignment(file: &GgufFile) -> Result<(), GgufError> {
    if file.alignment() != DEFAULT_ALIGNMENT {
        return Err(split_error(
            file,
            format!(
                "general.alignment is {}: llama-gguf-split writes {DEFAULT_ALIGNMENT}-byte aligned data whatever \
                 the key says, which would make a damaged file; only {DEFAULT_ALIGNMENT} is supported",
                file.alignment()
            ),
        ));
    }
    Ok(())
}

impl SplitPlan {
    /// llama-gguf-split's `split_strategy`: tensors in file order, a new part when the limit is reached; with
    /// `no_tensor_first_split` the first part has the metadata only. A part left empty (a tensor larger than
    /// the size limit) is an error, as there.
    pub fn new(file: &GgufFile, limit: SplitLimit, no_tensor_first_split: bool) -> Result<SplitPlan, GgufError> {
        check_alignment(file)?;
        match limit {
            SplitLimit::Tensors(0) => return Err(split_error(file, "the tensor limit must be at least 1".into())),
            SplitLimit::Bytes(0) => return Err(split_error(file, "the size limit must be above 0".into())),
            _ => {}
        }
        let n_tensors = file.tensors().len();
        let n_tensors_i32 = i32::try_from(n_tensors)
            .map_err(|_| split_error(file, format!("{n_tensors} tensors do not fit split.tensors.count (i32)")))?;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        if no_tensor_first_split {
            groups.push(Vec::new());
        }
        let mut current = 0u64;
        for (i, t) in file.tensors().iter().enumerate() {
            let padded = align_up(t.n_bytes, DEFAULT_ALIGNMENT).unwrap_or(u64::MAX);
            let next = current.saturating_add(padded);
            let cut = match limit {
                SplitLimit::Bytes(max) => next > max,
                SplitLimit::Tensors(max) => i > 0 && i % max == 0,
            };
            if cut {
                if groups.last().is_some_and(Vec::is_empty) {
                    return Err(split_error(
                        file,
                        format!(
                            "tensor '{}' ({} bytes) alone is over the size limit, so a part would have no \
                             tensors",
                            t.name, t.n_bytes
                        ),
                    ));
                }
                groups.push(Vec::new());
                current = padded;
            } else {
                current = next;
            }
            if let Some(g) = groups.last_mut() {
                g.push(i);
            }
        }
        let count = u16::try_from(groups.len())
            .map_err(|_| split_error(file, format!("{} parts are more than llama.cpp's 65535", groups.len())))?;
        let parts = groups
            .into_iter()
            .enumerate()
            .map(|(no, tensors)| {
                let mut metadata = if no == 0 { file.metadata().to_vec() } else { Vec::new() };
                // The order ggml leaves them in: split.count is set twice (a placeholder, then the count).
                set(&mut metadata, KEY_NO, MetaValue::U16(no as u16));
                set(&mut metadata, KEY_COUNT, MetaValue::U16(0));
                set(&mut metadata, KEY_TENSORS_COUNT, MetaValue::I32(n_tensors_i32));
                set(&mut metadata, KEY_COUNT, MetaValue::U16(count));
                PlannedPart { metadata, tensors }
            })
            .collect();
        Ok(SplitPlan { parts, n_tensors })
    }

    fn check_file(&self, file: &GgufFile) -> Result<(), GgufError> {
        if file.tensors().len() != self.n_tensors {
            return Err(split_error(file, format!("the plan was made for a model of {} tensors", self.n_tensors)));
        }
        Ok(())
    }

    pub fn parts(&self) -> &[PlannedPart] {
        &self.parts
    }

    /// The output file names for `prefix`.
    pub fn paths(&self, prefix: &Path) -> Vec<PathBuf> {
        let count = self.parts.len() as u32;
        (0..count).map(|no| split_path(prefix, no, count)).collect()
    }

    /// What llama-gguf-split prints as a part's size: its header plus the unpadded tensor bytes.
    pub fn part_size(&self, file: &GgufFile, no: usize) -> Result<u64, GgufError> {
        self.check_file(file)?;
        let part = self.parts.get(no).ok_or_else(|| split_error(file, format!("no part {no}")))?;
        let header = encode_header(file, &part.metadata, &part.tensors)?;
        Ok(header.len() as u64 + part.tensors.iter().map(|&i| file.tensors()[i].n_bytes).sum::<u64>())
    }

    /// Writes every part, each through a temporary file in the output folder; the temporary files are renamed
    /// into place only once all of them are complete, so an error (or Ctrl-C, whose handler removes the
    /// `.NAME.*.partial` files) leaves no part behind. `progress` is told each part's path as it starts.
    pub fn write(
        &self,
        file: &GgufFile,
        prefix: &Path,
        mut progress: impl FnMut(&Path),
    ) -> Result<Vec<PathBuf>, GgufError> {
        self.check_file(file)?;
        let paths = self.paths(prefix);
        let mut temps = Vec::with_capacity(paths.len());
        for (part, path) in self.parts.iter().zip(&paths) {
            progress(path);
            temps.push(write_temp(file, &part.metadata, &part.tensors, path)?);
        }
        for (temp, path) in temps.into_iter().zip(&paths) {
            temp.persist(path).map_err(|e| GgufError::WriteFailed { path: path.clone(), source: e.error })?;
        }
        Ok(paths)
    }
}

/// What [`merge`] did.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    pub parts: Vec<PathBuf>,
    pub n_tensors: usize,
}

/// llama-gguf-split `--merge`: the model whose first part is `first` (every part checked as
/// [`GgufFile::open`] does) into one file at `output`, which must not exist. The metadata is the first part's
/// with `split.count` set to 0 (so the result is not taken for a split again), `split.no` and
/// `split.tensors.count` kept, as llama-gguf-split leaves them. With `dry_run` nothing is written.
pub fn merge(first: &Path, output: &Path, dry_run: bool) -> Result<MergeSummary, GgufError> {
    let single = GgufFile::open_single(first)?;
    let count = match single.get(KEY_COUNT) {
        None => return Err(split_error(&single, format!("not a split model: it has no {KEY_COUNT}"))),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(u16::MAX)).contains(&n) => n as u32,
            _ => return Err(split_error(&single, format!("{KEY_COUNT} is {v}, not a split count"))),
        },
    };
    if split_prefix(first, 0, count).is_none() {
        return Err(split_error(
            &single,
            format!("the first of {count} parts must be named PREFIX-00001-of-{count:05}.gguf (llama.cpp's rule)"),
        ));
    }
    drop(single);
    let file = GgufFile::open(first)?;
    check_alignment(&file)?;
    if output.exists() {
        return Err(GgufError::WriteFailed {
            path: output.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the output file already exists"),
        });
    }
    let mut metadata = file.metadata().to_vec();
    set(&mut metadata, KEY_COUNT, MetaValue::U16(0));
    let tensors: Vec<usize> = (0..file.tensors().len()).collect();
    if dry_run {
        // Still encode, so that what would fail to write fails here too.
        encode_header(&file, &metadata, &tensors)?;
    } else {
        let temp = write_temp(&file, &metadata, &tensors, output)?;
        temp.persist(output).map_err(|e| GgufError::WriteFailed { path: output.to_path_buf(), source: e.error })?;
    }
    Ok(MergeSummary { parts: file.parts().iter().map(|p| p.path.clone()).collect(), n_tensors: tensors.len() })
}

/// ggml's `ggml_n_dims`: trailing dimensions of 1 are not written. A dropped 0 would change the tensor, so it
/// is an error (ggml would write a broken file).
fn ggml_dims<'a>(file: &GgufFile, name: &str, dims: &'a [u64]) -> Result<&'a [u64], GgufError> {
    let n = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1).max(1).min(dims.len());
    if dims[n..].iter().any(|&d| d != 1) {
        return Err(split_error(
            file,
            format!("tensor '{name}' has a zero dimension ({dims:?}), which ggml cannot copy"),
        ));
    }
    Ok(&dims[..n])
}

/// Header, metadata, tensor table and padding, as ggml's `gguf_get_meta_data` writes them for a fresh context
/// (version 3, alignment 32).
fn encode_header(file: &GgufFile, metadata: &[(String, MetaValue)], tensors: &[usize]) -> Result<Vec<u8>, GgufError> {
    let mut b = Vec::new();
    b.extend_from_slice(&GGUF_MAGIC);
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut b, key);
        b.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut b, value);
    }
    let mut offset = 0u64;
    for &i in tensors {
        let t = &file.tensors()[i];
        put_string(&mut b, &t.name);
        let dims = ggml_dims(file, &t.name, &t.dims)?;
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        offset = align_up(offset.saturating_add(t.n_bytes), DEFAULT_ALIGNMENT).unwrap_or(u64::MAX);
    }
    let padded = align_up(b.len() as u64, DEFAULT_ALIGNMENT).unwrap_or(0) as usize;
    b.resize(padded.max(b.len()), 0);
    Ok(b)
}

/// One output file, complete and synced, still under its temporary name.
fn write_temp(
    file: &GgufFile,
    metadata: &[(String, MetaValue)],
    tensors: &[usize],
    path: &Path,
) -> Result<tempfile::NamedTempFile, GgufError> {
    let failed = |source| GgufError::WriteFailed { path: path.to_path_buf(), source };
    let header = encode_header(file, metadata, tensors)?;
    let temp = crate::output_temp_file(path).map_err(failed)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file());
    out.write_all(&header).map_err(failed)?;
    let zeros = [0u8; DEFAULT_ALIGNMENT as usize];
    for &i in tensors {
        let t = &file.tensors()[i];
        let data = file.tensor_data(t);
        out.write_all(data).map_err(failed)?;
        let pad = (align_up(t.n_bytes, DEFAULT_ALIGNMENT).unwrap_or(t.n_bytes) - t.n_bytes) as usize;
        out.write_all(&zeros[..pad]).map_err(failed)?;
        // Copied: this process does not need the pages again.
        file.release_pages(data);
    }
    out.flush().map_err(failed)?;
    drop(out);
    temp.as_file().sync_all().map_err(failed)?;
    Ok(temp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(split_path(Path::new("a/m"), 0, 3), Path::new("a/m-00001-of-00003.gguf"));
        assert_eq!(split_path(Path::new("m"), 11, 12), Path::new("m-00012-of-00012.gguf"));
        assert_eq!(split_prefix(Path::new("a/m-00002-of-00003.gguf"), 1, 3), Some(PathBuf::from("a/m")));
        assert_eq!(split_prefix(Path::new("a/m-00002-of-00003.gguf"), 0, 3), None);
        assert_eq!(split_prefix(Path::new("m-00001-of-00004.gguf"), 0, 3), None);
        // Nothing before the suffix: llama.cpp's rule wants a longer name.
        assert_eq!(split_prefix(Path::new("-00001-of-00003.gguf"), 0, 3), None);
    }
}
