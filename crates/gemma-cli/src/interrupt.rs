//! Ctrl-C during a command that writes a model file. The writers (`gemma-io`) write `.NAME.XXXXXX.partial` in
//! the output's folder and rename it when complete; an interrupted command removes that temporary file before
//! exiting (130, as a shell reports SIGINT), so it leaves nothing behind.

use std::path::Path;

use anyhow::{Context, Result};

/// Installs the Ctrl-C handler for a command writing `output`.
pub(crate) fn remove_partial_output_on_ctrl_c(output: &Path) -> Result<()> {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => ".".into(),
    };
    let prefix = format!(".{}.", output.file_name().unwrap_or_default().to_string_lossy());
    ctrlc::set_handler(move || {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(".partial") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        eprintln!("\ninterrupted: nothing written");
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}
