//! File formats. GGUF (llama.cpp's container) is read zero-copy from a memory map and can be written; gemma.cpp's
//! SBS files and Hugging Face's safetensors are read the same way.

mod file_bytes;
pub mod gguf;
pub mod safetensors;
pub mod sbs;

pub use gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, StringList, TensorInfo, ValueType};
pub use safetensors::{SafetensorsDtype, SafetensorsError, SafetensorsFile, SafetensorsTensor};

/// A temp-file builder for outputs renamed into place when complete. Temp files are private (0600) by default;
/// a model file should be readable like any other file the user creates (0644 less the umask).
pub(crate) fn output_temp_builder<'a>() -> tempfile::Builder<'a, 'a> {
    #[allow(unused_mut)]
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    builder
}
