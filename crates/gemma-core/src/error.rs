//! Errors of the model layer.

use gemma_compression::QuantError;
use gemma_ops::MatrixError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    File(#[from] gemma_io::GgufError),
    #[error(transparent)]
    Sbs(#[from] gemma_io::sbs::SbsError),
    #[error("model metadata lacks '{0}'")]
    MissingMetadata(String),
    #[error("model metadata '{key}' is unusable: {why}")]
    BadMetadata { key: String, why: String },
    #[error("architecture '{0}' is not supported (supported: gemma3, gemma-embedding, llama)")]
    UnsupportedArchitecture(String),
    #[error("model lacks tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, found: Vec<u64>, expected: Vec<u64> },
    #[error("tensor '{name}': {source}")]
    TensorFormat {
        name: String,
        #[source]
        source: MatrixError,
    },
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("the context is full: position {pos} does not fit in a context of {ctx} tokens")]
    ContextFull { pos: usize, ctx: usize },
    #[error("the context cannot be shifted: {0}")]
    ContextShift(String),
    #[error("cache type: {0}")]
    CacheType(String),
    #[error(
        "{0} is not an embedding model (its file names no pooling); embeddings come from models such as EmbeddingGemma"
    )]
    NotEmbeddingModel(String),
    #[error("{0} is an embedding model: it turns text into vectors (`gemma embed`, /v1/embeddings), it does not generate text")]
    EmbeddingModel(String),
    #[error("batch is malformed: {0}")]
    BadBatch(String),
    #[error("invalid load option: {0}")]
    InvalidOption(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A model folder (safetensors) that could not be read as a model.
    #[error(transparent)]
    Folder(Box<crate::convert::ConvertError>),
}

/// An error and its causes on one line, as `{:#}` prints them, but without a cause whose text the message before
/// it already quotes (these libraries' errors name their source in their own message). What the front ends
/// show users.
pub fn error_report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    for cause in std::iter::successors(Some(e), |e| e.source()) {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
