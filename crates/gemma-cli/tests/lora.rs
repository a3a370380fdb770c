//! llama.cpp's LoRA flags (`--lora`, `--lora-scaled`) on `gemma run`, `logits`, `bench` and `chat`, with the
//! deterministic adapter of `scripts/llama_lora_goldens.py` on the real default model.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::gemma;
use gemma_core::lora::synthetic::Spec;
use gemma_core::{GenerationOptions, Model, SamplingParams, Session};
use serde_json::Value;

mod common;

const PROMPT: &str = "Once upon a time, in a small village by the sea,";

fn ok(args: &[&str]) -> String {
    let o = gemma(args);
    assert!(o.status.success(), "gemma {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

fn adapter(dir: &Path) -> PathBuf {
    let path = dir.join("lora.gguf");
    Spec::gemma3_270m().writer().expect("adapter").write_file(&path).expect("written");
    path
}

/// Greedy `gen_ids` of `gemma run --json` with `extra` flags.
fn run_ids(extra: &[&str]) -> Vec<u64> {
    let mut args = vec!["run", "--prompt", PROMPT, "-n", "24", "--temp", "0", "--threads", "2", "--json"];
    args.extend_from_slice(extra);
    let v: Value = serde_json::from_str(ok(&args).trim()).expect("json");
    v["gen_ids"].as_array().expect("gen_ids").iter().map(|x| x.as_u64().expect("id")).collect()
}

/// The library's greedy tokens with the adapter loaded at `scale`.
fn library_ids(path: &Path, scale: f32) -> Vec<u64> {
    let mut model = Model::open(gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("model")).expect("loads");
    model.load_lora(path, scale).expect("adapter");
    let tokenizer = model.tokenizer().expect("tokenizer");
    let ids = tokenizer.encode(PROMPT, tokenizer.add_bos(), true);
    let pool = gemma_ops::ThreadPool::new(2);
    let opts = GenerationOptions { max_tokens: 24, sampling: SamplingParams::greedy(), ..Default::default() };
    let out = Session::new(&model, 256).generate(&tokenizer, &ids, &opts, &pool, &mut |_| {}).expect("generates");
    out.gen_ids.iter().map(|&t| u64::from(t)).collect()
}

#[test]
fn run_applies_the_adapters_at_their_scales() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = adapter(dir.path());
    let p = path.to_str().expect("utf-8");
    let base = run_ids(&[]);
    let full = run_ids(&["--lora", p]);
    assert_ne!(full, base, "the adapter changes the text");
    assert_eq!(full, library_ids(&path, 1.0), "--lora is scale 1");
    let half = run_ids(&["--lora-scaled", &format!("{p}:0.5")]);
    assert_eq!(half, library_ids(&path, 0.5));
    assert_ne!(half, full);
    // llama.cpp's FNAME:SCALE and the two-value form agree; scale 0 is the base model.
    assert_eq!(run_ids(&["--lora-scaled", p, "0.5"]), half);
    assert_eq!(run_ids(&["--lora-scaled", p, "0"]), base);
    // Several adapters (comma-separated and repeated flags); those at scale 0 add nothing.
    assert_eq!(run_ids(&["--lora", p, "--lora-scaled", &format!("{p}:0,{p}:0"), "--lora-scaled", p, "0"]), full);
}

#[test]
fn logits_bench_and_chat_take_the_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = adapter(dir.path());
    let p = path.to_str().expect("utf-8");
    let logits = |extra: &[&str]| {
        let mut args = vec!["logits", "--prompt", "The capital of France is", "--threads", "2"];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let base = logits(&[]);
    assert_ne!(logits(&["--lora", p]), base);
    assert_eq!(logits(&["--lora-scaled", &format!("{p}:0")]), base);

    let bench = ok(&["bench", "-p", "8", "-n", "4", "-r", "1", "-t", "2", "--lora", p]);
    assert!(bench.contains("pp8") && bench.contains("tg4"), "{bench}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["chat", "--temp", "0", "--threads", "2", "--lora", p])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat starts");
    use std::io::Write as _;
    child.stdin.take().expect("stdin").write_all(b"Hello\n").expect("written");
    let out = child.wait_with_output().expect("chat ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
}

#[test]
fn bad_adapters_and_flags_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = adapter(dir.path());
    let p = path.to_str().expect("utf-8");
    let fails = |args: &[&str], code: i32, needle: &str| {
        let o = gemma(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "gemma {args:?}: {stderr}");
        assert!(stderr.contains(needle), "gemma {args:?} should say {needle:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    let missing = dir.path().join("missing.gguf");
    fails(&["run", "-p", "x", "--lora", missing.to_str().expect("utf-8")], 1, "missing.gguf");
    fails(&["run", "-p", "x", "--lora-scaled", &format!("{p}:abc")], 2, "--lora-scaled");
    fails(&["run", "-p", "x", "--lora-scaled", "a:b:c"], 2, "FNAME:SCALE");
    fails(&["run", "-p", "x", "--lora-scaled", p], 2, "needs a scale");
    // A model file is not an adapter.
    let model = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("model");
    fails(&["run", "-p", "x", "--lora", model.to_str().expect("utf-8")], 1, "general.type");
    // The adapter of another architecture.
    fails(&["run", "-m", "smollm2-135m-instruct", "-p", "x", "--lora", p], 1, "mismatch");
}
