//! Model layer: configuration, tokenizer, the Gemma 3 forward pass, KV cache, sampling and generation.

pub mod batch;
pub mod config;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use batch::{Batch, BatchToken, Logits};
pub use config::{Architecture, ModelConfig};
pub use error::ModelError;
pub use generate::{GenerationOptions, GenerationOutput, Session, StopReason};
pub use kv_cache::KvCache;
pub use model::{Model, Scratch};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
