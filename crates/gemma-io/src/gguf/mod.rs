//! GGUF v2/v3: metadata, tensor infos, and zero-copy tensor views into a read-only memory map (one file, or the
//! parts of a split model); a writer; and llama-gguf-split's split and merge ([`split`]).
//!
//! Every length, count and offset read from the file is checked before use, so a damaged file is a
//! [`GgufError`] naming the file and the problem, never a panic or an out-of-bounds read.

pub mod lora;
mod reader;
pub mod split;
mod types;
mod value;
mod writer;

pub use reader::{GgufError, GgufFile, GgufPart, TensorInfo};
pub use split::{split_path, split_prefix};
pub use types::GgmlType;
pub use value::{MetaArray, MetaValue, StringList, ValueType};
pub use writer::GgufWriter;

/// `GGUF` in little-endian byte order.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
