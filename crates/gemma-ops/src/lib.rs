//! Kernels: products of quantized matrices with activations, attention, norms, rotary embedding, and the
//! thread pool they run on. Nothing here knows about models.

pub mod attention;
pub mod kv_type;
pub mod matmul;
pub mod pool;
pub mod rope;
pub mod vector;

pub use attention::{
    grouped_query_attention, grouped_query_attention_with, AttentionKernel, AttnSpan, KvRows, KvView, ATTENTION_BLOCK,
};
pub use kv_type::{round_queries, KvType, KvTypeError};
pub use matmul::{matmul, MatrixError, QMatrix, QuantizedActs};
pub use pool::{SharedMut, ThreadPool};
