//! The one error type of the SBS reader and writer.

use std::path::PathBuf;

use super::fields::FieldsError;

/// Why an SBS file could not be read or written. Every check on data from a file ends here, never in a panic.
#[derive(Debug, thiserror::Error)]
pub enum SbsError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write file: {source}")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file is truncated or damaged: {what} needs {needed} bytes but the file has {len}")]
    Truncated { path: PathBuf, what: &'static str, needed: u64, len: u64 },
    #[error("{path}: not an SBS blob store (magic {found:#010x} at the start and {found_end:#010x} at the end, expected {expected:#010x})")]
    BadMagic { path: PathBuf, found: u32, found_end: u32, expected: u32 },
    #[error(
        "{path}: file is truncated or damaged: it starts like an SBS checkpoint but does not end with its \
         blob directory ({len} bytes; a complete file ends with the magic 0x0a534253 and the blob count)"
    )]
    NoDirectory { path: PathBuf, len: u64 },
    #[error("{path}: absurd blob count {count} (at most {max}); the file is damaged")]
    TooManyBlobs { path: PathBuf, count: u64, max: u32 },
    #[error("{path}: the blob store holds no blobs; the file is damaged")]
    NoBlobs { path: PathBuf },
    #[error("{path}: header says the file has {header} bytes but it has {actual} (truncated?)")]
    SizeMismatch { path: PathBuf, header: u64, actual: u64 },
    #[error("{path}: blob {index} ('{key}') at offset {offset}, {bytes} bytes: {problem}")]
    BadRange { path: PathBuf, index: usize, key: String, offset: u64, bytes: u64, problem: String },
    #[error("{path}: directory key {index} is invalid: {problem}")]
    BadKey { path: PathBuf, index: usize, problem: String },
    #[error("{path}: key '{key}' appears twice in the directory")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: blob '{blob}' has {len} bytes, not a whole number of {unit}-byte words")]
    BadBlobLength { path: PathBuf, blob: String, len: u64, unit: u64 },
    #[error("{path}: cannot deserialize blob '{blob}': {source}")]
    Fields {
        path: PathBuf,
        blob: String,
        #[source]
        source: FieldsError,
    },
    #[error("{path}: invalid model config: {what}")]
    BadConfig { path: PathBuf, what: String },
    #[error("{path}: tensor '{tensor}': {what}")]
    BadTensor { path: PathBuf, tensor: String, what: String },
    #[error("{path}: cannot decode the tokenizer (a SentencePiece ModelProto): {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    /// The writer was asked for something an SBS file cannot hold (or gemma.cpp would reject).
    #[error("cannot write SBS: {what}")]
    InvalidWrite { what: String },
}
