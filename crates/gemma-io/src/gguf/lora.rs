//! LoRA adapter files as llama.cpp reads them (`llama_adapter_lora_init`): a GGUF with `general.type` =
//! `adapter`, `adapter.type` = `lora`, `adapter.lora.alpha` (0 when absent) and, for each adapted base tensor
//! `NAME`, a pair `NAME.lora_a` / `NAME.lora_b`. Norm vectors (`*_norm.weight`) are skipped as llama.cpp skips
//! them; any other tensor is an error. Checking the pairs against a base model is the model's job
//! (`gemma_core::lora`): this only reads and pairs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{GgufError, GgufFile, MetaValue, TensorInfo};

/// One adapted base tensor: its name (`blk.0.attn_q.weight`) and the two factors.
#[derive(Clone, Debug)]
pub struct LoraPair {
    pub base: String,
    /// GGUF dims `[d_in, rank]` (for the token embedding, `[rank, n_vocab]`).
    pub a: TensorInfo,
    /// GGUF dims `[rank, d_out]` (for the token embedding, `[rank, d_model]`).
    pub b: TensorInfo,
}

/// The base tensor llama.cpp adapts by lookup rather than by product: its factors are the other way round.
pub const TOKEN_EMBEDDING: &str = "token_embd.weight";

impl LoraPair {
    /// Whether this pair adapts the token embedding (a lookup: `A` holds a rank-wide row per token).
    pub fn is_token_embedding(&self) -> bool {
        self.base == TOKEN_EMBEDDING
    }

    /// The rank: `lora_b`'s first GGUF dimension, as llama.cpp reads it.
    pub fn rank(&self) -> usize {
        self.b.dims[0] as usize
    }

    /// Whether the factors fit a base matrix of GGUF dims `base` (`[d_in, d_out]`) as llama.cpp's loader
    /// checks them: the base's width and height are the factors' outer sides, their inner sides agree and the
    /// rank is not 0.
    pub fn fits(&self, base: &[u64]) -> bool {
        let ([d_in, d_out], (a, b)) = (base, (&self.a.dims, &self.b.dims)) else { return false };
        let fits = if self.is_token_embedding() {
            *d_in == b[1] && *d_out == a[1] && a[0] == b[0]
        } else {
            *d_in == a[0] && *d_out == b[1] && a[1] == b[0]
        };
        fits && b[0] != 0
    }
}

/// llama.cpp's scale of an adapted matrix: `user_scale * alpha / rank`, or `user_scale` when alpha is 0.
pub fn lora_scale(alpha: f32, rank: usize, user_scale: f32) -> f32 {
    if alpha != 0.0 {
        user_scale * alpha / rank as f32
    } else {
        user_scale
    }
}

/// A LoRA adapter file, read and paired, not yet checked against a model.
pub struct LoraFile {
    pub file: GgufFile,
    /// `general.architecture`.
    pub architecture: String,
    /// `adapter.lora.alpha`; 0 means "scale by the user's scale alone", as in llama.cpp.
    pub alpha: f32,
    /// `adapter.lora.task_name` and `adapter.lora.prompt_prefix` (llama-server lists them), empty when absent.
    pub task_name: String,
    pub prompt_prefix: String,
    /// Sorted by base name.
    pub pairs: Vec<LoraPair>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoraFileError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "{path}: expect general.type to be 'adapter', but got '{found}' (is this a model rather than an adapter?)"
    )]
    NotAdapter { path: PathBuf, found: String },
    #[error("{path}: expect adapter.type to be 'lora', but got '{found}'")]
    NotLora { path: PathBuf, found: String },
    #[error("{path}: metadata '{key}' must be {expected}")]
    BadMetadata { path: PathBuf, key: &'static str, expected: &'static str },
    #[error("{path}: activated LoRA (adapter.alora.invocation_tokens) is not supported")]
    Activated { path: PathBuf },
    #[error("{path}: LoRA tensor '{name}' has unexpected suffix (expected .lora_a or .lora_b)")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: LoRA tensor pair for '{base}' is missing its {missing}")]
    MissingHalf { path: PathBuf, base: String, missing: &'static str },
    #[error("{path}: LoRA tensor '{name}' must be a matrix, it has {dims} dimensions")]
    NotMatrix { path: PathBuf, name: String, dims: usize },
}

impl LoraFile {
    pub fn open(path: impl AsRef<Path>) -> Result<LoraFile, LoraFileError> {
        Self::from_gguf(GgufFile::open_single(path)?)
    }

    pub fn from_gguf(file: GgufFile) -> Result<LoraFile, LoraFileError> {
        let path = file.path().to_path_buf();
        let text = |key: &'static str| -> Result<String, LoraFileError> {
            match file.get(key) {
                None => Ok(String::new()),
                Some(v) => v.as_str().map(str::to_string).ok_or_else(|| LoraFileError::BadMetadata {
                    path: path.clone(),
                    key,
                    expected: "a string",
                }),
            }
        };
        let general_type = text("general.type")?;
        if general_type != "adapter" {
            return Err(LoraFileError::NotAdapter { path, found: general_type });
        }
        let architecture = text("general.architecture")?;
        let adapter_type = text("adapter.type")?;
        if adapter_type != "lora" {
            return Err(LoraFileError::NotLora { path, found: adapter_type });
        }
        let alpha = match file.get("adapter.lora.alpha") {
            None => 0.0,
            Some(MetaValue::F32(a)) if a.is_finite() => *a,
            Some(_) => {
                return Err(LoraFileError::BadMetadata { path, key: "adapter.lora.alpha", expected: "a finite f32" })
            }
        };
        if file.get("adapter.alora.invocation_tokens").is_some() {
            return Err(LoraFileError::Activated { path });
        }
        let task_name = text("adapter.lora.task_name")?;
        let prompt_prefix = text("adapter.lora.prompt_prefix")?;

        let mut halves: BTreeMap<String, (Option<TensorInfo>, Option<TensorInfo>)> = BTreeMap::new();
        for t in file.tensors() {
            let (base, is_a) = if let Some(base) = t.name.strip_suffix(".lora_a") {
                (base, true)
            } else if let Some(base) = t.name.strip_suffix(".lora_b") {
                (base, false)
            } else if t.name.ends_with("_norm.weight") {
                continue;
            } else {
                return Err(LoraFileError::UnexpectedTensor { path, name: t.name.clone() });
            };
            if t.dims.len() != 2 {
                return Err(LoraFileError::NotMatrix { path, name: t.name.clone(), dims: t.dims.len() });
            }
            let entry = halves.entry(base.to_string()).or_default();
            if is_a {
                entry.0 = Some(t.clone());
            } else {
                entry.1 = Some(t.clone());
            }
        }
        let mut pairs = Vec::with_capacity(halves.len());
        for (base, (a, b)) in halves {
            match (a, b) {
                (Some(a), Some(b)) => pairs.push(LoraPair { base, a, b }),
                (None, _) => return Err(LoraFileError::MissingHalf { path, base, missing: "lora_a" }),
                (_, None) => return Err(LoraFileError::MissingHalf { path, base, missing: "lora_b" }),
            }
        }
        Ok(LoraFile { file, architecture, alpha, task_name, prompt_prefix, pairs })
    }
}
