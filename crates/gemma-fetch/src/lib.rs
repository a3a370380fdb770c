//! Model downloads into the local cache. (Pull is being written; resolution of cached names works.)

use std::path::{Path, PathBuf};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "gemma-3-270m";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{0}' is neither an existing file nor a known model name (known: gemma-3-270m, smollm2-135m-instruct)")]
    Unknown(String),
    #[error("model '{name}' is not in the cache ({path}); pulling is not implemented yet")]
    NotCached { name: String, path: PathBuf },
}

/// A model this project knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    pub file_name: &'static str,
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel { name: "gemma-3-270m", file_name: "gemma-3-270m-q4_k_m.gguf" },
    KnownModel { name: "smollm2-135m-instruct", file_name: "SmolLM2-135M-Instruct.Q4_1.gguf" },
];

/// `$GEMMA_MODELS`, or `~/.cache/gemma-rs/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GEMMA_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("gemma-rs").join("models")
}

/// A path that exists is used as is; a known name resolves to its cached file.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf, FetchError> {
    if Path::new(name_or_path).exists() {
        return Ok(PathBuf::from(name_or_path));
    }
    let known = KNOWN_MODELS
        .iter()
        .find(|m| m.name == name_or_path)
        .ok_or_else(|| FetchError::Unknown(name_or_path.to_string()))?;
    let path = models_dir().join(known.file_name);
    if path.exists() {
        Ok(path)
    } else {
        Err(FetchError::NotCached { name: known.name.to_string(), path })
    }
}
