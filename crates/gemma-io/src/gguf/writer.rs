//! GGUF writing: the exact layout llama.cpp writes (header, metadata, tensor table, padding, tensor data with each
//! tensor padded to the alignment), validated on the way in so that every file written here parses with
//! [`GgufFile`](super::GgufFile).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use super::reader::{align_up, tensor_geometry, GgufError, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_TENSOR_NAME_LEN};
use super::types::GgmlType;
use super::value::{MetaArray, MetaValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};

const ALIGNMENT_KEY: &str = "general.alignment";

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory and writes it out.
///
/// ```
/// use gemma_io::gguf::{GgufWriter, GgmlType, MetaValue};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", MetaValue::String("llama".into())).unwrap();
/// w.add_tensor("x", &[2], GgmlType::F32, vec![0; 8]).unwrap();
/// let bytes = w.to_bytes();
/// let f = gemma_io::GgufFile::from_bytes(bytes, "x.gguf").unwrap();
/// assert_eq!(f.tensors()[0].dims, vec![2]);
/// ```
pub struct GgufWriter {
    version: u32,
    alignment: u32,
    metadata: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    tensor_names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty GGUF v3 file with 32-byte alignment.
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT as u32,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            tensor_names: HashSet::new(),
        }
    }

    /// Sets the format version: 2 or 3 (identical layouts for little-endian files).
    pub fn version(mut self, version: u32) -> Result<GgufWriter, GgufError> {
        if version != 2 && version != 3 {
            return Err(invalid(format!("version {version} (only 2 and 3 can be written)")));
        }
        self.version = version;
        Ok(self)
    }

    /// Sets the tensor data alignment (a power of two). Any value but the default 32 is recorded as the
    /// `general.alignment` metadata entry, as readers expect.
    pub fn alignment(mut self, alignment: u32) -> Result<GgufWriter, GgufError> {
        self.set_alignment(alignment)?;
        Ok(self)
    }

    fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufError> {
        if !alignment.is_power_of_two() {
            return Err(invalid(format!("alignment {alignment} is not a power of two")));
        }
        self.alignment = alignment;
        let existing = self.metadata.iter().position(|(k, _)| k == ALIGNMENT_KEY);
        match (existing, alignment as u64 == DEFAULT_ALIGNMENT) {
            (Some(i), true) => {
                self.metadata.remove(i);
                self.keys.remove(ALIGNMENT_KEY);
            }
            (Some(i), false) => self.metadata[i].1 = MetaValue::U32(alignment),
            (None, true) => {}
            (None, false) => {
                self.metadata.push((ALIGNMENT_KEY.to_string(), MetaValue::U32(alignment)));
                self.keys.insert(ALIGNMENT_KEY.to_string());
            }
        }
        Ok(())
    }

    /// Adds one metadata entry. Keys must be non-empty and unique; array items must all have the array's element
    /// type, arrays may nest at most 4 deep. `general.alignment` (a power-of-two u32) sets the alignment, so
    /// metadata copied from another file keeps its meaning.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetaValue) -> Result<(), GgufError> {
        let key = key.into();
        if key.is_empty() {
            return Err(invalid("empty metadata key".to_string()));
        }
        if key == ALIGNMENT_KEY {
            return match value {
                MetaValue::U32(a) => self.set_alignment(a),
                other => {
                    Err(invalid(format!("{ALIGNMENT_KEY} must be a u32, got {} {other}", other.value_type().name())))
                }
            };
        }
        if self.keys.contains(&key) {
            return Err(invalid(format!("duplicate metadata key '{key}'")));
        }
        check_value(&key, &value, 0)?;
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor; `dims` in GGML order (row length first). `data` must be exactly the tensor's size for its
    /// type and shape.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let name = name.into();
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(invalid(format!(
                "tensor name '{name}' is {} bytes, longer than ggml's limit of {MAX_TENSOR_NAME_LEN}",
                name.len()
            )));
        }
        if self.tensor_names.contains(&name) {
            return Err(invalid(format!("duplicate tensor name '{name}'")));
        }
        let (_, n_bytes) = tensor_geometry(dims, ggml_type).map_err(|why| invalid(format!("tensor '{name}' {why}")))?;
        if data.len() as u64 != n_bytes {
            return Err(invalid(format!(
                "tensor '{name}' of type {ggml_type} and shape {dims:?} takes {n_bytes} bytes, but {} were given",
                data.len()
            )));
        }
        self.tensor_names.insert(name.clone());
        self.tensors.push(PendingTensor { name, dims: dims.to_vec(), ggml_type, data });
        Ok(())
    }

    /// Metadata in the order it will be written (including `general.alignment` when recorded).
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// Writes the whole file.
    pub fn write_to(&self, mut out: impl Write) -> std::io::Result<()> {
        let header = self.encode_header();
        out.write_all(&header)?;
        // Padding is written from a small buffer: the alignment may be large.
        let zeros = [0u8; 4096];
        for t in &self.tensors {
            out.write_all(&t.data)?;
            let mut padding = self.padding(t.data.len());
            while padding > 0 {
                let n = padding.min(zeros.len());
                out.write_all(&zeros[..n])?;
                padding -= n;
            }
        }
        out.flush()
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.encode_header();
        // Sized once: growing a large image by doubling would copy it several times.
        bytes.reserve_exact(self.tensors.iter().map(|t| t.data.len() + self.padding(t.data.len())).sum());
        for t in &self.tensors {
            bytes.extend_from_slice(&t.data);
            bytes.resize(bytes.len() + self.padding(t.data.len()), 0);
        }
        bytes
    }

    /// [`GgufWriter::to_bytes`], freeing each tensor's data once it is copied (half the peak memory for a
    /// large model built in memory).
    pub fn into_bytes(mut self) -> Vec<u8> {
        let mut bytes = self.encode_header();
        bytes.reserve_exact(self.tensors.iter().map(|t| t.data.len() + self.padding(t.data.len())).sum());
        for t in &mut self.tensors {
            let data = std::mem::take(&mut t.data);
            bytes.extend_from_slice(&data);
            let a = self.alignment as usize;
            bytes.resize(bytes.len() + (a - data.len() % a) % a, 0);
        }
        bytes
    }

    /// Writes the file to `path` through a temporary file in the same folder that is renamed into place only
    /// once complete and synced, so a crash never leaves a partial file under the final name.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let failed = |source| GgufError::WriteFailed { path: path.to_path_buf(), source };
        let temp = crate::output_temp_file(path).map_err(failed)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file());
        self.write_to(&mut out).map_err(failed)?;
        drop(out);
        temp.as_file().sync_all().map_err(failed)?;
        temp.persist(path).map_err(|e| failed(e.error))?;
        Ok(())
    }

    fn padding(&self, len: usize) -> usize {
        let a = self.alignment as usize;
        (a - len % a) % a
    }

    /// Everything before the tensor data, padding included.
    fn encode_header(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&GGUF_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut b, key);
            b.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut b, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            // Sizes were bounded by i64::MAX when the tensor was added.
            offset = align_up(offset + t.data.len() as u64, self.alignment as u64).unwrap_or(u64::MAX);
        }
        b.resize(b.len() + self.padding(b.len()), 0);
        b
    }
}

fn invalid(what: String) -> GgufError {
    GgufError::InvalidWrite { what }
}

fn check_value(key: &str, value: &MetaValue, depth: u32) -> Result<(), GgufError> {
    if let MetaValue::Array(items) = value {
        check_array(key, items, depth)?;
    }
    Ok(())
}

/// Element types are right by construction; what is left to check are GGUF's limits.
fn check_array(key: &str, items: &MetaArray, depth: u32) -> Result<(), GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(invalid(format!("metadata '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep")));
    }
    if items.len() as u64 > MAX_ARRAY_LEN {
        return Err(invalid(format!(
            "metadata '{key}': array of {} elements is longer than the limit of {MAX_ARRAY_LEN}",
            items.len()
        )));
    }
    if let MetaArray::Array(inner) = items {
        for item in inner {
            check_array(key, item, depth + 1)?;
        }
    }
    Ok(())
}

pub(crate) fn put_string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_value(b: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I8(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => b.push(u8::from(*v)),
        MetaValue::String(s) => put_string(b, s),
        MetaValue::U64(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => b.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(items) => put_array(b, items),
    }
}

fn put_array(b: &mut Vec<u8>, items: &MetaArray) {
    b.extend_from_slice(&items.elem_type().id().to_le_bytes());
    b.extend_from_slice(&(items.len() as u64).to_le_bytes());
    macro_rules! plain {
        ($v:expr) => {
            $v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match items {
        MetaArray::U8(v) => b.extend_from_slice(v),
        MetaArray::I8(v) => plain!(v),
        MetaArray::U16(v) => plain!(v),
        MetaArray::I16(v) => plain!(v),
        MetaArray::U32(v) => plain!(v),
        MetaArray::I32(v) => plain!(v),
        MetaArray::F32(v) => plain!(v),
        MetaArray::Bool(v) => v.iter().for_each(|&x| b.push(u8::from(x))),
        MetaArray::String(v) => v.iter().for_each(|s| put_string(b, s)),
        MetaArray::Array(v) => v.iter().for_each(|inner| put_array(b, inner)),
        MetaArray::U64(v) => plain!(v),
        MetaArray::I64(v) => plain!(v),
        MetaArray::F64(v) => plain!(v),
    }
}
