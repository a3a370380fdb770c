//! File formats. GGUF (llama.cpp's container) is read zero-copy from a memory map and can be written; gemma.cpp's
//! SBS files and Hugging Face's safetensors are read the same way.

mod file_bytes;
pub mod gguf;
pub mod imatrix;
pub mod safetensors;
pub mod sbs;

pub use gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, StringList, TensorInfo, ValueType};
pub use safetensors::{SafetensorsDtype, SafetensorsError, SafetensorsFile, SafetensorsTensor};

/// The temporary file an output at `path` is written to before it is renamed into place: `.NAME.XXXXXX.partial`
/// in the same folder (so the rename is atomic, and a command interrupted on the way can find and remove it).
/// Temp files are private (0600) by default; a model file should be readable like any other file the user
/// creates (0644 less the umask).
pub(crate) fn output_temp_file(path: &std::path::Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let prefix = format!(".{}.", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    #[allow(unused_mut)]
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    builder.prefix(&prefix).suffix(".partial").tempfile_in(dir)
}
