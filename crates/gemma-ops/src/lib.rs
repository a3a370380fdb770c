//! Kernels: products of quantized matrices with activations, attention, norms, rotary embedding, and the
//! thread pool they run on. Nothing here knows about models.

pub mod attention;
pub mod matmul;
pub mod pool;
pub mod rope;
pub mod vector;

pub use attention::{attend, grouped_query_attention, AttnSpan, KvView};
pub use matmul::{matmul, MatrixError, QMatrix, QuantizedActs};
pub use pool::{SharedMut, ThreadPool};
