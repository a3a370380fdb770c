//! GGUF parsing with bounds checks on every read.
//!
//! The checks follow llama.cpp's own loader (`ggml/src/gguf.cpp`): sizes and counts are bounded by the bytes
//! left in the file, shapes must not overflow, and the tensor data must be packed in table order, each tensor
//! padded to the alignment. That last rule is what turns a damaged type id, dimension or offset into an error
//! instead of a silently wrong view of the weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::types::GgmlType;
use super::value::{MetaArray, MetaValue, StringList, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::file_bytes::FileBytes;

/// Most dimensions a GGML tensor can have.
pub(crate) const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays (an array at depth 0 may hold arrays down to depth 3), so a hostile file
/// cannot exhaust the stack.
pub(crate) const MAX_ARRAY_DEPTH: u32 = 4;
/// Longest tensor name ggml accepts (`GGML_MAX_NAME` is 64 including the terminating NUL).
pub(crate) const MAX_TENSOR_NAME_LEN: usize = 63;
/// Most elements in one metadata array. Each element becomes a 32-byte [`MetaValue`], so without a cap a damaged
/// count over a large file could make parsing allocate many gigabytes; real vocabularies are below 2^20.
pub(crate) const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Elements reserved up front for an array; more are added only as they are actually parsed.
const ARRAY_PREALLOC: usize = 1 << 16;
/// Metadata entries and tensor infos reserved up front, likewise.
const TABLE_PREALLOC: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (it starts with \"{}\", expected \"GGUF\")", .found.escape_ascii())]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: unsupported GGUF version {version} (this reader handles versions 2 and 3{hint})")]
    UnsupportedVersion { path: PathBuf, version: u32, hint: &'static str },
    #[error(
        "{path}: file is truncated or damaged: {what} (at byte {offset}): {needed} bytes needed, \
         but the file ends at byte {len}"
    )]
    Truncated { path: PathBuf, what: String, offset: u64, needed: u64, len: u64 },
    #[error("{path}: tensor '{tensor}' has unknown type id {id}")]
    UnknownTensorType { path: PathBuf, tensor: String, id: u32 },
    #[error(
        "{path}: file is truncated: tensor '{tensor}' data (bytes {start}..{end}) runs past the end of the file \
         ({len} bytes)"
    )]
    TensorOutOfBounds { path: PathBuf, tensor: String, start: u64, end: u64, len: u64 },
    #[error("{path}: malformed file: {what}")]
    Malformed { path: PathBuf, what: String },
    /// A split model (`NAME-00001-of-0000N.gguf`, ...) whose parts do not fit together.
    #[error("{path}: split model: {what}")]
    Split { path: PathBuf, what: String },
    /// A part of a split model is not where llama.cpp's naming rule puts it.
    #[error("{path}: part {no} of {count} of the split model {first} is missing: {source}")]
    SplitPartMissing {
        path: PathBuf,
        first: String,
        no: u32,
        count: u32,
        #[source]
        source: std::io::Error,
    },
    /// The writer was asked for something a GGUF file cannot hold (or this reader would reject).
    #[error("cannot write GGUF: {what}")]
    InvalidWrite { what: String },
    #[error("{path}: cannot write file: {source}")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One tensor's description; its bytes are at [`GgufFile::tensor_data`].
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the row length (contiguous), `dims[1]` the number of rows, ...
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section (of the part holding it, in a split model).
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row length (`dims[0]`); saturates at `usize::MAX` where it does not fit (32-bit targets).
    pub fn row_len(&self) -> usize {
        usize::try_from(self.dims.first().copied().unwrap_or(1)).unwrap_or(usize::MAX)
    }
    /// Number of rows (product of all dims but the first); saturates at `usize::MAX` rather than overflowing,
    /// which a tensor with a zero row length and huge other dims could otherwise do.
    pub fn n_rows(&self) -> usize {
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX)
    }
}

/// Element count and byte size of a tensor of shape `dims` and type `ty`, or why the shape is invalid.
///
/// Shared by the reader and the writer so that the writer never produces a file the reader rejects.
pub(crate) fn tensor_geometry(dims: &[u64], ty: GgmlType) -> Result<(u64, u64), String> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(format!("has {} dimensions (1 to {MAX_DIMS} allowed)", dims.len()));
    }
    // ggml stores dims as int64: anything above i64::MAX is a negative dimension there.
    if let Some((j, d)) = dims.iter().enumerate().find(|(_, &d)| d > i64::MAX as u64) {
        return Err(format!("dimension {j} is {d}, beyond ggml's limit of {}", i64::MAX));
    }
    // Zero dims make the element count 0, but the other dims must still multiply without overflow, or the
    // row count of a zero-length-row tensor would overflow later.
    let nonzero_product =
        dims.iter().filter(|&&d| d != 0).try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
    if nonzero_product.is_none() {
        return Err(format!("shape {dims:?} overflows: its element count exceeds {}", i64::MAX));
    }
    let n_elements = if dims.contains(&0) { 0 } else { nonzero_product.unwrap_or(0) };
    let block = ty.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(format!("row length {} is not a multiple of the {ty} block size {block}", dims[0]));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(ty.type_size() as u64)
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("shape {dims:?} of type {ty} has a byte size that overflows"))?;
    Ok((n_elements, n_bytes))
}

/// `n` rounded up to a multiple of `alignment` (a power of two), or `None` on overflow.
pub(crate) fn align_up(n: u64, alignment: u64) -> Option<u64> {
    n.checked_add(alignment - 1).map(|v| v & !(alignment - 1))
}

/// One file of a GGUF model: the only one, or one part of a split model.
#[derive(Clone, Debug)]
pub struct GgufPart {
    pub path: PathBuf,
    pub file_size: u64,
    /// Start of this file's tensor data section.
    pub data_offset: u64,
    /// How many of the model's tensors this file holds (they follow those of the parts before it).
    pub n_tensors: usize,
}

/// A parsed GGUF model. Tensor data stays in the memory map(s) and is handed out as borrowed slices.
///
/// A split model (llama.cpp's `llama-gguf-split`) opened by its first file is one `GgufFile` with one tensor
/// table: metadata from the first file, each tensor's bytes from the file that holds it (see [`GgufFile::open`]).
pub struct GgufFile {
    path: PathBuf,
    /// Part 0 is the file at `path`; split models add the others in order.
    parts: Vec<GgufPart>,
    storages: Vec<FileBytes>,
    /// For each tensor, the index of the part holding its bytes.
    tensor_part: Vec<usize>,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("parts", &self.parts.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses a model file. When it is the first part of a split model (`split.count` above 1,
    /// `split.no` 0), the other parts are found by llama.cpp's naming rule (`PREFIX-0000K-of-0000N.gguf`, see
    /// [`crate::gguf::split_path`]), each mapped and checked: its `split.no`, `split.count` and
    /// `split.tensors.count`, no tensor twice, and the total tensor count. A missing, foreign or damaged part is
    /// an error naming that file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let mut file = Self::open_single(path)?;
        file.attach_split_parts()?;
        Ok(file)
    }

    /// Memory-maps and parses exactly one file, ignoring any split metadata (a split part alone).
    pub fn open_single(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let storage = FileBytes::open(&path).map_err(|source| GgufError::Io { path: path.clone(), source })?;
        let file = Self::parse(path, storage)?;
        // The metadata and tensor table are parsed into owned values: their pages are not read again.
        let bytes = file.storages[0].bytes();
        let header = usize::try_from(file.data_offset).unwrap_or(0).min(bytes.len());
        file.release_pages(&bytes[..header]);
        Ok(file)
    }

    /// A non-negative integer split key (`split.*`), `None` when absent; anything else is an error.
    fn split_key(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n)),
                None => Err(GgufError::Split {
                    path: self.path.clone(),
                    what: format!("{key} must be a non-negative integer, found {} {v}", v.value_type().name()),
                }),
            },
        }
    }

    /// llama.cpp's rule (`llama_model_loader`): a file with `split.count` above 1 must be part 0, and the
    /// others are `PREFIX-0000K-of-0000N.gguf` next to it.
    fn attach_split_parts(&mut self) -> Result<(), GgufError> {
        let count = match self.split_key(super::split::KEY_COUNT)? {
            Some(n) if n > 1 => n,
            _ => return Ok(()),
        };
        let split_err = |path: &Path, what: String| GgufError::Split { path: path.to_path_buf(), what };
        let count = u32::try_from(count)
            .ok()
            .filter(|&c| c <= u32::from(u16::MAX))
            .ok_or_else(|| split_err(&self.path, format!("split.count {count} is above llama.cpp's limit of 65535")))?;
        let no = self.split_key(super::split::KEY_NO)?.ok_or_else(|| {
            split_err(&self.path, format!("the file says it is one of {count} parts (split.count) but has no split.no"))
        })?;
        if no != 0 {
            let first = u32::try_from(no)
                .ok()
                .and_then(|no| super::split::split_prefix(&self.path, no, count))
                .map(|prefix| {
                    format!(": open the first part, {}", super::split::split_path(&prefix, 0, count).display())
                })
                .unwrap_or_default();
            return Err(split_err(
                &self.path,
                format!("this is part {} of {count}; a split model is opened by its first part{first}", no + 1),
            ));
        }
        let prefix = super::split::split_prefix(&self.path, 0, count).ok_or_else(|| {
            split_err(
                &self.path,
                format!(
                    "the first of {count} parts must be named PREFIX-00001-of-{count:05}.gguf (llama.cpp's rule), \
                     or the other parts cannot be found"
                ),
            )
        })?;
        let expected = self.split_key(super::split::KEY_TENSORS_COUNT)?.ok_or_else(|| {
            split_err(&self.path, format!("the first of {count} parts has no {}", super::split::KEY_TENSORS_COUNT))
        })?;
        for no in 1..count {
            let part_path = super::split::split_path(&prefix, no, count);
            let part = match GgufFile::open_single(&part_path) {
                Ok(part) => part,
                Err(GgufError::Io { path, source }) => {
                    let first = self.path.display().to_string();
                    return Err(GgufError::SplitPartMissing { path, first, no: no + 1, count, source });
                }
                Err(e) => return Err(e),
            };
            let foreign = |what: String| {
                split_err(&part_path, format!("{what}: it is not part {} of {}", no + 1, self.path.display()))
            };
            let keys = [
                (super::split::KEY_NO, Some(u64::from(no))),
                (super::split::KEY_COUNT, Some(u64::from(count))),
                (super::split::KEY_TENSORS_COUNT, Some(expected)),
            ];
            for (key, want) in keys {
                let found = part.split_key(key)?;
                if found != want {
                    let found = found.map_or("no such key".to_string(), |n| n.to_string());
                    let want = want.map_or(String::new(), |n| n.to_string());
                    return Err(foreign(format!("{key} is {found}, expected {want}")));
                }
            }
            self.append_part(part)?;
        }
        if self.tensors.len() as u64 != expected {
            return Err(split_err(
                &self.path,
                format!(
                    "{} says the model has {expected} tensors, but its {count} parts hold {}",
                    super::split::KEY_TENSORS_COUNT,
                    self.tensors.len()
                ),
            ));
        }
        Ok(())
    }

    /// Takes over `part`'s tensors (its metadata, only `split.*` keys as llama-gguf-split writes them, is not
    /// used, as in llama.cpp).
    fn append_part(&mut self, part: GgufFile) -> Result<(), GgufError> {
        let index = self.parts.len();
        for t in &part.tensors {
            if let Some(&i) = self.tensor_index.get(&t.name) {
                let other = &self.parts[self.tensor_part[i]].path;
                return Err(GgufError::Split {
                    path: part.path.clone(),
                    what: format!("tensor '{}' is also in {}", t.name, other.display()),
                });
            }
        }
        let GgufFile { parts, storages, tensors, .. } = part;
        for t in tensors {
            self.tensor_index.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
            self.tensor_part.push(index);
        }
        self.parts.extend(parts);
        self.storages.extend(storages);
        Ok(())
    }

    /// Parses a GGUF image held in memory (`name` is used in error messages).
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<GgufFile, GgufError> {
        Self::parse(name.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: FileBytes) -> Result<GgufFile, GgufError> {
        let mut r = Cursor { buf: storage.bytes(), pos: 0, path: &path };
        let magic = r.take(4, || "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { path: path.clone(), found: magic.to_vec() });
        }
        let version = r.u32(|| "version".into())?;
        if version != 2 && version != 3 {
            // A big-endian file read on a little-endian host shows its version in the high half.
            let hint = if version != 0 && version & 0xFFFF == 0 {
                "; the version looks byte-swapped: is this a big-endian file?"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion { path: path.clone(), version, hint });
        }
        let n_tensors = r.u64(|| "tensor count".into())?;
        let n_kv = r.u64(|| "metadata count".into())?;
        // Each metadata entry takes at least 13 bytes (key length, a one-byte key, type) and each tensor info at
        // least 32: a count that could not fit in the rest of the file is damage, and must not drive an
        // allocation.
        r.check_count(n_kv, 13, || "metadata entries".into())?;
        r.check_count(n_tensors, 32, || "tensor infos".into())?;

        // Counts are only bounds until the entries actually parse, so reserve modestly.
        let mut metadata = Vec::with_capacity((n_kv as usize).min(TABLE_PREALLOC));
        let mut meta_index = HashMap::with_capacity((n_kv as usize).min(TABLE_PREALLOC));
        for i in 0..n_kv {
            let key_pos = r.pos;
            let key = r.string(|| format!("key of metadata entry {i}"))?;
            if key.is_empty() {
                return Err(r.malformed(format!("metadata entry {i} (at byte {key_pos}) has an empty key")));
            }
            if meta_index.contains_key(&key) {
                return Err(r.malformed(format!("duplicate metadata key '{key}' (entry {i}, at byte {key_pos})")));
            }
            let ty = r.value_type(|| format!("type of metadata '{key}'"))?;
            let value = r.value(ty, &key)?;
            meta_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").and_then(|&i| metadata.get(i)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, MetaValue::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, other)) => {
                return Err(r.malformed(format!(
                    "general.alignment must be a power-of-two u32, found {} {other}",
                    other.value_type().name()
                )))
            }
        };

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity((n_tensors as usize).min(TABLE_PREALLOC));
        let mut tensor_index = HashMap::with_capacity((n_tensors as usize).min(TABLE_PREALLOC));
        for i in 0..n_tensors {
            let name_pos = r.pos;
            let name = r.string(|| format!("name of tensor {i}"))?;
            if name.len() > MAX_TENSOR_NAME_LEN {
                return Err(r.malformed(format!(
                    "tensor {i} (at byte {name_pos}) has a {}-byte name, longer than ggml's limit of \
                     {MAX_TENSOR_NAME_LEN}",
                    name.len()
                )));
            }
            if tensor_index.contains_key(&name) {
                return Err(r.malformed(format!("duplicate tensor name '{name}' (tensor {i}, at byte {name_pos})")));
            }
            let n_dims = r.u32(|| format!("dimension count of tensor '{name}'"))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(r.malformed(format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for j in 0..n_dims {
                dims.push(r.u64(|| format!("dimension {j} of tensor '{name}'"))?);
            }
            let type_id = r.u32(|| format!("type of tensor '{name}'"))?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                path: path.clone(),
                tensor: name.clone(),
                id: type_id,
            })?;
            let offset = r.u64(|| format!("offset of tensor '{name}'"))?;
            let (n_elements, n_bytes) =
                tensor_geometry(&dims, ggml_type).map_err(|why| r.malformed(format!("tensor '{name}' {why}")))?;
            if offset % alignment != 0 {
                return Err(r.malformed(format!(
                    "tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            tensor_index.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes });
        }

        let header_end = r.pos as u64;
        let len = r.buf.len() as u64;
        let data_offset = align_up(header_end, alignment).unwrap_or(u64::MAX);

        // The data section is the tensors back to back in table order, each padded to the alignment; llama.cpp
        // rejects anything else, and so a wrong type or shape (which changes a size) cannot go unnoticed.
        let mut expected = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            if t.offset != expected {
                return Err(r.malformed(format!(
                    "tensor '{}' (tensor {i}) has data offset {}, expected {expected}: tensor data must follow \
                     the tensor table in order, each tensor padded to {alignment} bytes",
                    t.name, t.offset
                )));
            }
            expected = align_up(t.n_bytes, alignment)
                .and_then(|padded| expected.checked_add(padded))
                .ok_or_else(|| r.malformed(format!("tensor '{}' (tensor {i}): data section size overflows", t.name)))?;
        }

        if !tensors.is_empty() && data_offset > len {
            return Err(GgufError::Truncated {
                path: path.clone(),
                what: "padding before the tensor data".into(),
                offset: header_end,
                needed: data_offset.saturating_sub(header_end),
                len,
            });
        }
        // The data section must hold every tensor (padding after the last one is not required).
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        path: path.clone(),
                        tensor: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    })
                }
            }
        }

        let part = GgufPart { path: path.clone(), file_size: len, data_offset, n_tensors: tensors.len() };
        Ok(GgufFile {
            path,
            parts: vec![part],
            storages: vec![storage],
            tensor_part: vec![0; tensors.len()],
            version,
            alignment,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            data_offset,
        })
    }

    /// The file opened (the first part of a split model).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The files the model is read from: one, or the parts of a split model in order.
    pub fn parts(&self) -> &[GgufPart] {
        &self.parts
    }
    /// Which of [`GgufFile::parts`] holds the tensor called `name`.
    pub fn tensor_part(&self, name: &str) -> Option<usize> {
        self.tensor_index.get(name).and_then(|&i| self.tensor_part.get(i).copied())
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Start of the tensor data section, in bytes from the start of the file (of the first part; see
    /// [`GgufFile::parts`] for the others).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// Bytes on disk, all parts together.
    pub fn file_size(&self) -> u64 {
        self.parts.iter().map(|p| p.file_size).sum()
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).and_then(|&i| self.metadata.get(i)).map(|(_, v)| v)
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The tensor's bytes (bounds were checked when the file was opened).
    ///
    /// # Panics
    /// If `t` is not a tensor of this file and its range lies outside the file: that is a bug in the caller,
    /// not damage in the file. [`GgufFile::tensor_bytes`] never panics.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        match self.data_range(t) {
            Some(bytes) => bytes,
            None => panic!(
                "{}: tensor '{}' (offset {}, {} bytes) does not belong to this file",
                self.path.display(),
                t.name,
                t.offset,
                t.n_bytes
            ),
        }
    }

    /// Drops the file pages that lie wholly inside `bytes` (a slice of this file's data, e.g. of
    /// [`GgufFile::tensor_data`]) from this process's resident set, for data that was copied elsewhere:
    /// touched again, they are read back from the file. A no-op for files held in memory and for slices
    /// outside the mapping; a refusal from the kernel is ignored (it only means the pages stay).
    pub fn release_pages(&self, bytes: &[u8]) {
        // Each mapping ignores slices outside itself.
        for storage in &self.storages {
            storage.release_pages(bytes);
        }
    }

    /// The bytes of the tensor called `name`, if the file has one.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).and_then(|t| self.data_range(t))
    }

    fn data_range(&self, t: &TensorInfo) -> Option<&[u8]> {
        // Offsets are relative to the data section of the part holding the tensor.
        let part = if self.parts.len() == 1 { 0 } else { self.tensor_part(&t.name)? };
        let start = self.parts.get(part)?.data_offset.checked_add(t.offset)?;
        let end = start.checked_add(t.n_bytes)?;
        self.storages.get(part)?.bytes().get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// A read position over the file image. Descriptions of what is being read are built lazily (closures), since
/// they are only needed for error messages and the vocabulary arrays have hundreds of thousands of elements.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed { path: self.path.to_path_buf(), what }
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n).map(|end| (n, end)))
            .and_then(|(n, end)| self.buf.get(self.pos..end).map(|s| (n, s)));
        match slice {
            Some((n, s)) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                len: self.buf.len() as u64,
            }),
        }
    }

    /// Errs when `count` items of at least `min_each` bytes cannot fit in the rest of the file.
    fn check_count(&self, count: u64, min_each: u64, what: impl FnOnce() -> String) -> Result<(), GgufError> {
        let needed = count.saturating_mul(min_each);
        if needed > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{count} {}", what()),
                offset: self.pos as u64,
                needed,
                len: self.buf.len() as u64,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn str(&mut self, what: impl Fn() -> String) -> Result<&'a str, GgufError> {
        let start = self.pos;
        let len = self.u64(|| format!("length of {}", what()))?;
        let bytes = self.take(len, &what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            self.malformed(format!(
                "{} (string at byte {start}) is not valid UTF-8 (bad byte at string offset {})",
                what(),
                e.valid_up_to()
            ))
        })
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        self.str(what).map(str::to_owned)
    }

    fn bool(&mut self, key: &str) -> Result<bool, GgufError> {
        let at = self.pos;
        match self.array::<1>(|| format!("value of metadata '{key}'"))? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(self.malformed(format!("metadata '{key}': bool byte {b} at byte {at} is neither 0 nor 1"))),
        }
    }

    fn value_type(&mut self, what: impl Fn() -> String) -> Result<ValueType, GgufError> {
        let at = self.pos;
        let id = self.u32(&what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.malformed(format!("{} at byte {at}: unknown value type id {id}", what())))
    }

    /// An array value: its header (element type and count, checked against GGUF's limits and the bytes left),
    /// then its elements, stored by type.
    fn meta_array(&mut self, key: &str, depth: u32) -> Result<MetaArray, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(format!(
                "metadata '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep (at byte {})",
                self.pos
            )));
        }
        let elem = self.value_type(|| format!("element type of metadata '{key}'"))?;
        let count = self.u64(|| format!("element count of metadata '{key}'"))?;
        if count > MAX_ARRAY_LEN {
            return Err(self.malformed(format!(
                "metadata '{key}': array of {count} elements is longer than the limit of {MAX_ARRAY_LEN}"
            )));
        }
        // Smallest encoding of one element: a bound on how many can possibly follow.
        let min_size = match elem {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        };
        self.check_count(count, min_size, || format!("elements of metadata '{key}'"))?;
        macro_rules! plain {
            ($variant:ident, $t:ty) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                let bytes = self.take(count * SIZE as u64, || format!("elements of metadata '{key}'"))?;
                MetaArray::$variant(
                    bytes.chunks_exact(SIZE).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
                )
            }};
        }
        Ok(match elem {
            ValueType::U8 => plain!(U8, u8),
            ValueType::I8 => plain!(I8, i8),
            ValueType::U16 => plain!(U16, u16),
            ValueType::I16 => plain!(I16, i16),
            ValueType::U32 => plain!(U32, u32),
            ValueType::I32 => plain!(I32, i32),
            ValueType::F32 => plain!(F32, f32),
            ValueType::U64 => plain!(U64, u64),
            ValueType::I64 => plain!(I64, i64),
            ValueType::F64 => plain!(F64, f64),
            ValueType::Bool => MetaArray::Bool((0..count).map(|_| self.bool(key)).collect::<Result<_, _>>()?),
            ValueType::String => {
                let mut list = StringList::new();
                for _ in 0..count {
                    list.push(self.str(|| format!("value of metadata '{key}'"))?);
                }
                MetaArray::String(list)
            }
            ValueType::Array => {
                let mut arrays = Vec::with_capacity((count as usize).min(ARRAY_PREALLOC));
                for _ in 0..count {
                    arrays.push(self.meta_array(key, depth + 1)?);
                }
                MetaArray::Array(arrays)
            }
        })
    }

    fn value(&mut self, ty: ValueType, key: &str) -> Result<MetaValue, GgufError> {
        let what = || format!("value of metadata '{key}'");
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => MetaValue::Bool(self.bool(key)?),
            ValueType::String => MetaValue::String(self.string(what)?),
            ValueType::Array => MetaValue::Array(self.meta_array(key, 0)?),
        })
    }
}
