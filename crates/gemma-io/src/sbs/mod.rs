//! gemma.cpp's own checkpoint format: `.sbs` blob stores holding a model config, a tensor table (`toc`), a
//! SentencePiece tokenizer and one blob per tensor.
//!
//! - [`fields`]: gemma.cpp's `IFields` serialization (u32 words, forward and backward compatible).
//! - [`blob_store`]: the container (both on-disk layouts), zero-copy from a memory map, and its writer.
//! - [`config`], [`tensor_info`], [`types`]: `ModelConfig`, gemma.cpp's table of known models and tensors, and
//!   the tensor element types.
//! - [`model_store`]: [`SbsFile`] (open a checkpoint) and [`SbsWriter`] (write one).
//! - [`sentencepiece_model`]: the tokenizer blob's `ModelProto`.
//!
//! Every damaged file is an [`SbsError`], never a panic.

pub mod blob_store;
pub mod config;
mod error;
pub mod fields;
pub mod model_store;
pub mod sentencepiece_model;
pub mod tensor_info;
pub mod types;

pub use blob_store::{BlobFileWriter, BlobLayout, BlobRange, BlobStore, BlobWriter};
pub use config::{LayerConfig, Model, ModelConfig, PromptWrapping, VitConfig};
pub use error::SbsError;
pub use fields::{Field, FieldVisitor, Fields, FieldsError, ReadResult};
pub use model_store::{SbsFile, SbsFormat, SbsOpenOptions, SbsTensor, SbsWriter, TensorRecord};
pub use sentencepiece_model::ModelProto;
pub use types::SbsType;
