//! File formats. GGUF (llama.cpp's container) is read zero-copy from a memory map and can be written.

pub mod gguf;
pub mod sbs;

pub use gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, TensorInfo, ValueType};
