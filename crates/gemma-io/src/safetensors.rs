//! safetensors (Hugging Face's tensor container), read zero-copy from a memory map.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping each tensor name to its
//! `dtype`, `shape` and `data_offsets` (`[begin, end)` into the data that follows the header), and an optional
//! `__metadata__` map of strings. Every offset, size and dtype is checked when the file is opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::file_bytes::FileBytes;

/// A header larger than this is refused before it is read (real headers are a few hundred KiB at most).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {why}")]
    BadHeader { path: PathBuf, why: String },
    #[error("{path}: tensor '{name}': {why}")]
    BadTensor { path: PathBuf, name: String, why: String },
    #[error("{path}: no tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
}

/// The element types of safetensors files that hold weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetensorsDtype {
    F32,
    F16,
    Bf16,
}

impl SafetensorsDtype {
    fn parse(s: &str) -> Option<SafetensorsDtype> {
        Some(match s {
            "F32" => SafetensorsDtype::F32,
            "F16" => SafetensorsDtype::F16,
            "BF16" => SafetensorsDtype::Bf16,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            SafetensorsDtype::F32 => 4,
            SafetensorsDtype::F16 | SafetensorsDtype::Bf16 => 2,
        }
    }
}

/// One tensor: element type, shape (outermost first, as PyTorch), and its bytes' range in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsTensor {
    pub name: String,
    pub dtype: SafetensorsDtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl SafetensorsTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct SafetensorsFile {
    path: PathBuf,
    bytes: FileBytes,
    /// Sorted by name.
    tensors: BTreeMap<String, SafetensorsTensor>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile, SafetensorsError> {
        let path = path.as_ref().to_path_buf();
        let bytes = FileBytes::open(&path).map_err(|source| SafetensorsError::Io { path: path.clone(), source })?;
        Self::parse(path, bytes)
    }

    /// A file held in memory (tests, or data that did not come from disk).
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<SafetensorsFile, SafetensorsError> {
        Self::parse(name.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: FileBytes) -> Result<SafetensorsFile, SafetensorsError> {
        let bad = |why: String| SafetensorsError::BadHeader { path: path.clone(), why };
        let data = bytes.bytes();
        let Some(len) = data.get(..8) else {
            return Err(bad(format!("{} bytes, too short for the header length", data.len())));
        };
        let header_len = u64::from_le_bytes(len.try_into().map_err(|_| bad("unreadable header length".into()))?);
        if header_len > MAX_HEADER || header_len > (data.len() - 8) as u64 {
            return Err(bad(format!("header length {header_len} exceeds the file's {} bytes", data.len())));
        }
        let header_end = 8 + header_len as usize;
        let header: serde_json::Value = serde_json::from_slice(&data[8..header_end])
            .map_err(|e| bad(format!("the header is not valid JSON: {e}")))?;
        let serde_json::Value::Object(entries) = header else {
            return Err(bad("the header is not a JSON object".into()));
        };
        let data_len = data.len() - header_end;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                let serde_json::Value::Object(m) = entry else {
                    return Err(bad("__metadata__ is not an object".into()));
                };
                for (k, v) in m {
                    let v = v.as_str().ok_or_else(|| bad(format!("__metadata__.{k} is not a string")))?;
                    metadata.insert(k, v.to_string());
                }
                continue;
            }
            let t = parse_tensor(&name, &entry, data_len, header_end).map_err(|why| SafetensorsError::BadTensor {
                path: path.clone(),
                name: name.clone(),
                why,
            })?;
            tensors.insert(name, t);
        }
        // Tensors may not overlap (safetensors requires them to tile the data exactly; overlap is what matters
        // for safety of interpretation, gaps are tolerated as some writers pad).
        let mut spans: Vec<&SafetensorsTensor> = tensors.values().collect();
        spans.sort_by_key(|t| (t.start, t.end));
        for pair in spans.windows(2) {
            if pair[1].start < pair[0].end {
                return Err(SafetensorsError::BadTensor {
                    path: path.clone(),
                    name: pair[1].name.clone(),
                    why: format!("its data overlaps tensor '{}'", pair[0].name),
                });
            }
        }
        Ok(SafetensorsFile { path, bytes, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors, by name.
    pub fn tensors(&self) -> impl Iterator<Item = &SafetensorsTensor> {
        self.tensors.values()
    }

    pub fn tensor(&self, name: &str) -> Option<&SafetensorsTensor> {
        self.tensors.get(name)
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw little-endian bytes of `t` (a tensor of this file).
    pub fn tensor_bytes(&self, t: &SafetensorsTensor) -> &[u8] {
        &self.bytes.bytes()[t.start..t.end]
    }

    /// The tensor `name` decoded to f32 (row-major, outermost dimension first).
    pub fn f32_values(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| SafetensorsError::MissingTensor { path: self.path.clone(), name: name.to_string() })?;
        let raw = self.tensor_bytes(t);
        Ok(match t.dtype {
            SafetensorsDtype::F32 => {
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            SafetensorsDtype::F16 => {
                raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            SafetensorsDtype::Bf16 => {
                raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
        })
    }

    /// Drops the file pages of `t` from this process's resident set (after its values were copied).
    pub fn release(&self, t: &SafetensorsTensor) {
        self.bytes.release_pages(self.tensor_bytes(t));
    }
}

fn parse_tensor(
    name: &str,
    entry: &serde_json::Value,
    data_len: usize,
    header_end: usize,
) -> Result<SafetensorsTensor, String> {
    let dtype_name = entry.get("dtype").and_then(|v| v.as_str()).ok_or("no string 'dtype'")?;
    let dtype = SafetensorsDtype::parse(dtype_name)
        .ok_or_else(|| format!("element type {dtype_name} is not supported (F32, F16 and BF16 are)"))?;
    let shape = entry
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or("no array 'shape'")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or("a dimension is not an unsigned integer"))
        .collect::<Result<Vec<usize>, _>>()?;
    let offsets = entry.get("data_offsets").and_then(|v| v.as_array()).ok_or("no array 'data_offsets'")?;
    let [begin, end] = offsets.as_slice() else {
        return Err(format!("'data_offsets' has {} entries, expected 2", offsets.len()));
    };
    let offset = |v: &serde_json::Value| v.as_u64().and_then(|v| usize::try_from(v).ok());
    let (Some(begin), Some(end)) = (offset(begin), offset(end)) else {
        return Err("'data_offsets' are not unsigned integers".into());
    };
    if begin > end || end > data_len {
        return Err(format!("data [{begin}, {end}) lies outside the {data_len} data bytes"));
    }
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("the shape overflows")?;
    let expected = elements.checked_mul(dtype.size()).ok_or("the shape overflows")?;
    if end - begin != expected {
        return Err(format!(
            "shape {shape:?} of {dtype_name} needs {expected} bytes, the offsets give {}",
            end - begin
        ));
    }
    Ok(SafetensorsTensor { name: name.to_string(), dtype, shape, start: header_end + begin, end: header_end + end })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tensors as a safetensors file's bytes (F32 only).
    fn safetensors_bytes(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, shape, values) in tensors {
            let end = offset + 4 * values.len();
            header.insert(
                name.to_string(),
                serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, end] }),
            );
            offset = end;
        }
        let mut text = serde_json::Value::Object(header).to_string().into_bytes();
        // Writers pad the header with spaces to 8 bytes.
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        for (_, _, values) in tensors {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    fn sample() -> Vec<u8> {
        safetensors_bytes(&[
            ("a.weight", vec![2, 3], (0..6).map(|i| i as f32).collect()),
            ("b", vec![2], vec![-1.5, 2.0]),
        ])
    }

    #[test]
    fn reads_tensors_and_values() {
        let f = SafetensorsFile::from_bytes(sample(), "t.safetensors").unwrap();
        let names: Vec<&str> = f.tensors().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "b"]);
        assert_eq!(f.tensor("a.weight").unwrap().shape, [2, 3]);
        assert_eq!(f.f32_values("a.weight").unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(f.f32_values("b").unwrap(), [-1.5, 2.0]);
        let err = f.f32_values("c").unwrap_err().to_string();
        assert!(err.contains("no tensor 'c'"), "{err}");
    }

    #[test]
    fn half_precision_tensors_decode() {
        let header = br#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},"__metadata__":{"format":"pt"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        bytes.extend_from_slice(&half::f16::from_f32(-3.0).to_le_bytes());
        bytes.extend_from_slice(&half::bf16::from_f32(1.25).to_le_bytes());
        let f = SafetensorsFile::from_bytes(bytes, "h").unwrap();
        assert_eq!(f.f32_values("h").unwrap(), [0.5, -3.0]);
        assert_eq!(f.f32_values("b").unwrap(), [1.25]);
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    }

    /// Every truncation and every single-byte change of a small file is an error or a valid file, never a
    /// panic, and truncations inside the data are always errors.
    #[test]
    fn damage_is_an_error_never_a_panic() {
        let good = sample();
        for len in 0..good.len() {
            assert!(SafetensorsFile::from_bytes(good[..len].to_vec(), "t").is_err(), "truncated to {len}");
        }
        for i in 0..good.len() {
            for v in [0u8, 0xff, b'"', b'9', b'{'] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(f) = SafetensorsFile::from_bytes(bad, "t") {
                    for t in f.tensors() {
                        assert_eq!(f.tensor_bytes(t).len(), t.len() * t.dtype.size());
                    }
                }
            }
        }
    }

    #[test]
    fn bad_headers_name_the_problem() {
        let err = |bytes: Vec<u8>| SafetensorsFile::from_bytes(bytes, "m.safetensors").err().unwrap().to_string();
        let with_header = |h: &str, data: usize| {
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h.as_bytes());
            b.extend(std::iter::repeat_n(0u8, data));
            b
        };
        assert!(err(vec![1, 2, 3]).contains("too short"));
        assert!(err(with_header("[]", 0)).contains("not a JSON object"));
        assert!(err(with_header("{", 0)).contains("not valid JSON"));
        let e = err(with_header(r#"{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, 8));
        assert!(e.contains("tensor 'x'") && e.contains("I64 is not supported"), "{e}");
        let e = err(with_header(r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8));
        assert!(e.contains("needs 12 bytes"), "{e}");
        let e = err(with_header(r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8));
        assert!(e.contains("outside the 8 data bytes"), "{e}");
        let e = err(with_header(
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        ));
        assert!(e.contains("overlaps"), "{e}");
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err(huge).contains("exceeds"));
    }
}
