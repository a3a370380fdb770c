//! `gemma export-lora` through the binary: the merge llama-export-lora writes (byte parity itself is
//! `gemma-core`'s `tests/export_lora_parity.rs`), and bad input giving a clear error, the right exit code and no
//! file left behind.

use sha2::{Digest, Sha256};

mod common;
use common::{fails_clearly, files_in, gemma, model, stderr};
use gemma_core::lora::synthetic::Spec;

/// llama-export-lora's output for the default model and the synthetic adapter at scale 1 (the `gemma_lora` job of
/// `testdata/goldens/llama_export_lora.json`).
fn golden_sha256() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/llama_export_lora.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["jobs"]["gemma_lora"]["file_sha256"].as_str().unwrap().to_string()
}

#[test]
fn merges_an_adapter_into_llama_export_loras_file() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("lora.gguf");
    Spec::gemma3_270m().writer().unwrap().write_file(&adapter).unwrap();
    let out = dir.path().join("merged.gguf");
    let m = model();
    let o = gemma(&["-m", &m, "export-lora", "--lora", adapter.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("merged 54 tensors") && text.contains("wrote 236 tensors"), "{text}");
    let bytes = std::fs::read(&out).unwrap();
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, golden_sha256(), "llama-export-lora's bytes");
    assert_eq!(files_in(dir.path()), ["lora.gguf", "merged.gguf"], "no temp file left");
    // The merged file is a model like any other.
    let run = gemma(&["-m", out.to_str().unwrap(), "run", "-p", "The capital of France is", "-n", "4", "--temp", "0"]);
    assert!(run.status.success(), "{}", stderr(&run));
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let out = dir.path().join("out.gguf");
    let out = out.to_str().unwrap();
    let llama = dir.path().join("llama-lora.gguf");
    Spec::smollm2_135m().writer().unwrap().write_file(&llama).unwrap();
    let llama = llama.to_str().unwrap();
    fails_clearly(&["-m", &m, "export-lora", "-o", out], 2, &["nothing to merge", "--lora"]);
    fails_clearly(&["-m", &m, "export-lora", "--lora-scaled", "x.gguf:abc", "-o", out], 2, &["not a number"]);
    fails_clearly(&["-m", &m, "export-lora", "--lora", "missing.gguf", "-o", out], 1, &["missing.gguf"]);
    fails_clearly(&["-m", &m, "export-lora", "--lora", llama, "-o", out], 1, &["arch mismatch", "'llama'"]);
    // A model given as the adapter.
    fails_clearly(&["-m", &m, "export-lora", "--lora", &m, "-o", out], 1, &["general.type", "adapter"]);
    fails_clearly(&["-m", "no-such-model.gguf", "export-lora", "--lora", llama, "-o", out], 1, &["no-such-model"]);
    assert_eq!(files_in(dir.path()), ["llama-lora.gguf"], "nothing written");
}
