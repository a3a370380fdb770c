//! Ctrl-C during a command that writes a model file. The writers (`gemma-io`) write `.NAME.XXXXXX.partial` in
//! the output's folder and rename it when complete; an interrupted command removes that temporary file before
//! exiting (130, as a shell reports SIGINT), so it leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

/// Installs the Ctrl-C handler for a command writing `output`.
pub(crate) fn remove_partial_output_on_ctrl_c(output: &Path) -> Result<()> {
    remove_partial_outputs_on_ctrl_c(std::slice::from_ref(&output.to_path_buf()))
}

/// Installs the Ctrl-C handler for a command writing several files (`gguf-split`'s parts): the temporary
/// file of each is removed.
pub(crate) fn remove_partial_outputs_on_ctrl_c(outputs: &[PathBuf]) -> Result<()> {
    let targets: Vec<(PathBuf, String)> = outputs
        .iter()
        .map(|output| {
            let dir = match output.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => ".".into(),
            };
            (dir, format!(".{}.", output.file_name().unwrap_or_default().to_string_lossy()))
        })
        .collect();
    ctrlc::set_handler(move || {
        for (dir, prefix) in &targets {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with(prefix.as_str()) && name.ends_with(".partial") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        eprintln!("\ninterrupted: nothing written");
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

/// A flag Ctrl-C sets, for the commands that stop between two passes of the model (`perplexity`, `imatrix`)
/// and then clean up themselves: a base file in progress is removed, a save is never cut in the middle.
pub(crate) fn cancel_flag_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    ctrlc::set_handler(move || set.store(true, Ordering::Relaxed)).context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}
