//! Kernels: products of quantized matrices with activations, attention, norms, rotary embedding, and the
//! thread pool they run on. Nothing here knows about models.

pub mod attention;
pub mod matmul;
pub mod pool;
pub mod rope;
pub mod vector;

pub use attention::{
    grouped_query_attention, grouped_query_attention_with, AttentionKernel, AttnSpan, KvView, ATTENTION_BLOCK,
};
pub use matmul::{matmul, MatrixError, QMatrix, QuantizedActs};
pub use pool::{SharedMut, ThreadPool};
