//! Model layer: configuration, tokenizers, the Gemma 3 and Llama forward passes, KV cache, chat templates,
//! sampling and generation.

pub mod batch;
pub mod chat;
pub mod config;
pub mod conversation;
pub mod convert;
pub mod error;
pub mod generate;
pub mod grammar;
pub mod hellaswag;
pub mod imatrix;
pub mod kv_cache;
pub mod lora;
pub mod model;
pub mod multiple_choice;
pub mod perplexity;
pub mod quantize;
pub mod random;
pub mod sampling;
pub mod speculative;
pub mod stop;
pub mod task_scoring;
pub mod tokenizer;
pub mod weights;
pub mod winogrande;

pub use batch::{Batch, BatchToken, Logits};
pub use config::{Architecture, ModelConfig};
pub use conversation::{Conversation, ConversationError, Turn};
pub use error::ModelError;
pub use gemma_ops::{KvType, KvTypeError};
pub use generate::{ContextShift, GenerationOptions, GenerationOutput, Session, StopReason};
pub use kv_cache::{KvBuf, KvCache, KvFileError};
pub use model::{LoadOptions, Model, Scratch};
pub use sampling::{Sampler, SamplingParams};
pub use speculative::{SpecError, SpecStats, SpecType, SpeculativeParams};
pub use tokenizer::Tokenizer;
