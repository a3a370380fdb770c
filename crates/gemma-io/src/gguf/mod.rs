//! GGUF v2/v3: metadata, tensor infos, and zero-copy tensor views into a read-only memory map; and a writer.
//!
//! Every length, count and offset read from the file is checked before use, so a damaged file is a
//! [`GgufError`] naming the file and the problem, never a panic or an out-of-bounds read.

mod reader;
mod types;
mod value;
mod writer;

pub use reader::{GgufError, GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{MetaArray, MetaValue, StringList, ValueType};
pub use writer::GgufWriter;

/// `GGUF` in little-endian byte order.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
