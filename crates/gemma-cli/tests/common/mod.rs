//! What the binary's tests share: the default model, running `gemma`, and reading what it left.
#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::process::{Command, Output};

pub fn model() -> String {
    gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model").display().to_string()
}

pub fn gemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).args(args).output().expect("run gemma")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The names in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `gemma args` and checks that it failed with exit `code`, a message holding every `wanted` text, and no
/// panic.
pub fn fails_clearly(args: &[&str], code: i32, wanted: &[&str]) {
    let o = gemma(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "gemma {args:?}: {err}");
    for w in wanted {
        assert!(err.contains(w), "gemma {args:?}: no '{w}' in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}
