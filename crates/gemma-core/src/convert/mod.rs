//! Conversions between llama.cpp's GGUF files and gemma.cpp's SBS checkpoints, and gemma.cpp's file tools.
//!
//! - [`gguf_to_sbs`]: dequantizes a Gemma 3 GGUF, undoes llama.cpp's `+1` on the norms, fuses and reorders tensors
//!   as gemma.cpp expects (`qkv_ein`, `att_ein`, `gating_ein`), picks the config from gemma.cpp's table of known
//!   models and synthesizes the SentencePiece `ModelProto` from the GGUF vocabulary.
//! - [`sbs_to_gguf`]: the reverse, so llama.cpp can run gemma.cpp checkpoints (F32, F16, BF16 or Q8_0 weights).
//! - [`migrate`]: gemma.cpp's `migrate_weights` (pre-2025 multi-file layout to one file).
//! - [`blob_compare`]: gemma.cpp's `blob_compare`, with per-tensor difference statistics.
//! - [`merge_lora`]: llama.cpp's `llama-export-lora`, LoRA adapters merged into a GGUF model's weights.
//!
//! The conversion knows the models' layouts, so it lives in the model layer rather than with the file formats.

pub mod blob_compare;
mod gguf_names;
pub mod gguf_to_sbs;
pub mod merge_lora;
pub mod migrate;
mod parallel_encode;
pub mod sbs_to_gguf;
pub mod sentence_transformers;
pub mod tokenizer_proto;

use std::path::PathBuf;

use gemma_compression::{QuantError, SbsCodecError};
use gemma_io::sbs::SbsError;
use gemma_io::GgufError;

pub use blob_compare::{blob_compare, BlobComparison, BlobDifference, TensorDifference};
pub use gguf_to_sbs::{gguf_to_sbs, sbs_config_for_gguf, sbs_layout_values, tensor_codec, write_sbs, GgufToSbsOptions};
pub use merge_lora::{merge_lora, MergeAdapter, MergeSummary};
pub use migrate::migrate;
pub use migrate::migrate_into;
pub use parallel_encode::encode_sbs_tensor;
pub use sbs_to_gguf::{build_gguf, decode_sbs_tensor, sbs_to_gguf, GgufOutputType, SbsToGgufOptions};
pub use sentence_transformers::{is_model_folder, sentence_transformers_file, sentence_transformers_gguf};
pub use tokenizer_proto::{gguf_vocab_metadata, model_proto_from_gguf};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Lora(#[from] gemma_io::gguf::lora::LoraFileError),
    #[error(transparent)]
    Sbs(#[from] SbsError),
    #[error(transparent)]
    Safetensors(#[from] gemma_io::SafetensorsError),
    #[error("tensor '{tensor}': {source}")]
    Codec {
        tensor: String,
        #[source]
        source: SbsCodecError,
    },
    #[error("tensor '{tensor}': {source}")]
    Quant {
        tensor: String,
        #[source]
        source: QuantError,
    },
    #[error("the input lacks tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{tensor}': {what}")]
    BadTensor { tensor: String, what: String },
    #[error("GGUF metadata '{key}': {what}")]
    BadMetadata { key: String, what: String },
    #[error("no model in gemma.cpp's table matches: {0}")]
    UnknownModel(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// One step of a conversion, for progress bars: `done` of `total` tensors, the last one being `tensor`.
#[derive(Clone, Copy, Debug)]
pub struct ConvertProgress<'a> {
    pub done: usize,
    pub total: usize,
    pub tensor: &'a str,
}

/// A progress callback that does nothing.
pub fn no_progress(_: ConvertProgress<'_>) {}
