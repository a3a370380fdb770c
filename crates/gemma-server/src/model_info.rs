//! What the model-listing endpoints (ollama's `/api/tags`, `/api/ps`, `/api/show`) say about the served model
//! file, gathered once when it loads: size, time, an identifying digest, architecture, quantization, parameter
//! count, metadata, tensor table and chat template.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gemma_core::quantize::FileType;
use gemma_core::Model;
use gemma_io::{GgufFile, MetaValue, TensorInfo};
use sha2::{Digest, Sha256};

/// How much of the file the digest reads: the GGUF header (metadata, vocabulary, tensor table) and the first
/// weights, without reading gigabytes at start-up.
const DIGEST_BYTES: u64 = 16 << 20;

pub struct ModelFileInfo {
    pub path: PathBuf,
    /// Bytes on disk.
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified: u64,
    /// SHA-256 (hex) of the file's first 16 MiB and its size: an identifier, not a checksum of the whole file.
    /// Worked out when first asked for ([`ModelFileInfo::digest`]), not at start-up.
    digest: std::sync::OnceLock<String>,
    /// `general.architecture` (`gemma3`, `llama`, ...).
    pub architecture: String,
    /// llama-quantize's name of `general.file_type` (`Q4_K_M`), when the file says.
    pub file_type: Option<&'static str>,
    /// `general.parameter_count`, or the tensors' elements counted.
    pub parameter_count: u64,
    /// The context the model was trained for, and its hidden width.
    pub context_length: usize,
    pub embedding_length: usize,
    /// The model's own file header (metadata and tensor table), shared with the model rather than copied:
    /// its vocabulary arrays alone are megabytes.
    file: Arc<GgufFile>,
}

impl ModelFileInfo {
    pub fn read(model: &Model, path: &Path) -> ModelFileInfo {
        let file = &model.file;
        let stat = std::fs::metadata(path).ok();
        // A split model's size is all its parts'.
        let size = match &stat {
            Some(m) if file.parts().len() == 1 => m.len(),
            _ => file.file_size(),
        };
        let modified = stat
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let file_type = file
            .get("general.file_type")
            .and_then(MetaValue::as_u64)
            .and_then(|id| FileType::ALL.iter().find(|t| u64::from(t.id()) == id))
            .map(|t| t.name());
        let parameter_count = file
            .get("general.parameter_count")
            .and_then(MetaValue::as_u64)
            .unwrap_or_else(|| file.tensors().iter().map(|t| t.n_elements).sum());
        ModelFileInfo {
            path: path.to_path_buf(),
            size,
            modified,
            digest: std::sync::OnceLock::new(),
            architecture: file.get("general.architecture").and_then(MetaValue::as_str).unwrap_or_default().to_string(),
            file_type,
            parameter_count,
            context_length: model.config.context_length,
            embedding_length: model.config.d_model,
            file: Arc::clone(file),
        }
    }

    /// The file's metadata, in its order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        self.file.metadata()
    }

    /// The file's tensor table.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.file.tensors()
    }

    /// ollama's `parameter_size`: "268.10M", "1B", "7.6B" (its `format.HumanNumber`).
    /// The file's identifying digest (read once, on first use; empty if the file cannot be read).
    pub fn digest(&self) -> &str {
        self.digest.get_or_init(|| {
            digest(&self.path, self.size).unwrap_or_else(|e| {
                tracing::warn!("cannot read {} for its digest: {e}", self.path.display());
                String::new()
            })
        })
    }

    pub fn parameter_size(&self) -> String {
        human_number(self.parameter_count)
    }
}

fn digest(path: &Path, size: u64) -> std::io::Result<String> {
    let mut head = Vec::new();
    std::fs::File::open(path)?.take(DIGEST_BYTES).read_to_end(&mut head)?;
    let mut h = Sha256::new();
    h.update(&head);
    h.update(size.to_le_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn human_number(n: u64) -> String {
    let scaled = |unit: f64| n as f64 / unit;
    let whole = |x: f64| x == x.floor();
    if n >= 1_000_000_000 {
        let x = scaled(1e9);
        if whole(x) {
            format!("{x:.0}B")
        } else {
            format!("{x:.1}B")
        }
    } else if n >= 1_000_000 {
        let x = scaled(1e6);
        if whole(x) {
            format!("{x:.0}M")
        } else {
            format!("{x:.2}M")
        }
    } else if n >= 1_000 {
        format!("{:.0}K", scaled(1e3))
    } else {
        n.to_string()
    }
}

/// A metadata value as JSON; arrays longer than `max_array` come out empty (ollama's non-verbose `/api/show`).
pub fn meta_json(v: &MetaValue, max_array: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        MetaValue::U8(x) => Value::from(*x),
        MetaValue::I8(x) => Value::from(*x),
        MetaValue::U16(x) => Value::from(*x),
        MetaValue::I16(x) => Value::from(*x),
        MetaValue::U32(x) => Value::from(*x),
        MetaValue::I32(x) => Value::from(*x),
        MetaValue::U64(x) => Value::from(*x),
        MetaValue::I64(x) => Value::from(*x),
        // Through its shortest text, so that 1e-6 prints as 1e-6 and not as the f64 nearest the f32.
        MetaValue::F32(x) => format!("{x}").parse::<f64>().ok().map_or(Value::Null, Value::from),
        MetaValue::F64(x) => Value::from(*x),
        MetaValue::Bool(x) => Value::from(*x),
        MetaValue::String(s) => Value::from(s.as_str()),
        MetaValue::Array(a) if a.len() > max_array => Value::Array(Vec::new()),
        MetaValue::Array(a) => Value::Array(a.iter().map(|e| meta_json(&e, max_array)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sizes_read_as_ollama_writes_them() {
        assert_eq!(human_number(268_098_176), "268.10M");
        assert_eq!(human_number(1_000_000_000), "1B");
        assert_eq!(human_number(7_615_616_512), "7.6B");
        assert_eq!(human_number(3_000_000), "3M");
        assert_eq!(human_number(12_345), "12K");
        assert_eq!(human_number(999), "999");
    }

    #[test]
    fn metadata_becomes_json_with_long_arrays_emptied() {
        assert_eq!(meta_json(&MetaValue::F32(1e-6), 5), serde_json::json!(1e-6));
        assert_eq!(meta_json(&MetaValue::strings(["a", "b"]), 5), serde_json::json!(["a", "b"]));
        assert_eq!(meta_json(&MetaValue::strings(["a"; 6]), 5), serde_json::json!([]));
        assert_eq!(meta_json(&MetaValue::U64(u64::MAX), 5), serde_json::json!(u64::MAX));
    }
}
