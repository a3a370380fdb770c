//! `gemma embed` (and the other commands) on the real EmbeddingGemma 300M: vectors against the independent
//! float64 reference in testdata/goldens/embeddinggemma_300m_ref_f64.json, `--json`, `--dimensions`,
//! `--similarity`, `--file -`, the usage errors, and the refusals between embedding and generative models.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const EMBEDDING_MODEL: &str = "embeddinggemma-300m";
const WIDTH: usize = 768;
/// Relative L2 distance allowed from the float64 reference (the engine is at ~1e-6).
const TOLERANCE: f64 = 1e-4;

const HELLO: &str = "hello world";
const QUERY: &str = "task: search result | query: What is the capital of France?";
const PARIS: &str = "title: none | text: Paris is the capital and most populous city of France.";
const MITOCHONDRIA: &str = "title: none | text: The mitochondria is the powerhouse of the cell.";

/// The embedding model's folder (pulled on first use).
fn model() -> &'static str {
    static MODEL: OnceLock<String> = OnceLock::new();
    MODEL.get_or_init(|| {
        gemma_fetch::resolve_model(EMBEDDING_MODEL).expect("the embedding model is available").display().to_string()
    })
}

fn gemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).args(args).output().expect("run gemma")
}

fn gemma_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gemma");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().expect("gemma finishes")
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// The exit code and stderr of a command that must fail.
fn fails(o: Output) -> (i32, String) {
    assert!(!o.status.success(), "succeeded: {}", String::from_utf8_lossy(&o.stdout));
    (o.status.code().expect("an exit code"), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The reference entry of `text`.
fn reference(text: &str) -> &'static Value {
    static GOLDENS: OnceLock<Value> = OnceLock::new();
    let v = GOLDENS.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/embeddinggemma_300m_ref_f64.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("goldens readable")).unwrap()
    });
    v["texts"].as_array().unwrap().iter().find(|t| t["text"] == text).expect("a golden for the text")
}

fn golden(text: &str) -> Vec<f64> {
    reference(text)["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn golden_tokens(text: &str) -> usize {
    reference(text)["ids"].as_array().unwrap().len()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let d: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    let e = d / norm(want);
    assert!(e < TOLERANCE, "{what}: relative L2 {e:.3e} from the reference");
}

/// One vector per line of plain output.
fn vectors(out: &str) -> Vec<Vec<f64>> {
    out.lines()
        .map(|l| l.split(' ').map(|x| x.parse::<f64>().unwrap_or_else(|_| panic!("not a float: {x:?}"))).collect())
        .collect()
}

#[test]
fn plain_output_is_one_line_of_floats_per_text() {
    let out = ok(gemma(&["embed", "-m", model(), HELLO, QUERY]), "gemma embed");
    let v = vectors(&out);
    assert_eq!(v.len(), 2, "{out}");
    for (e, text) in v.iter().zip([HELLO, QUERY]) {
        assert_eq!(e.len(), WIDTH);
        assert!((norm(e) - 1.0).abs() < 1e-5, "not unit length: {}", norm(e));
        assert_close(e, &golden(text), text);
    }
}

#[test]
fn json_output_is_an_openai_embeddings_response() {
    let out = ok(gemma(&["embed", "-m", model(), "--json", HELLO, PARIS]), "gemma embed --json");
    let v: Value = serde_json::from_str(out.trim()).expect("stdout is one JSON object");
    assert_eq!(v["object"], "list");
    assert!(v["model"].as_str().is_some_and(|m| !m.is_empty()), "{}", v["model"]);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, (item, text)) in data.iter().zip([HELLO, PARIS]).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let e: Vec<f64> = item["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_close(&e, &golden(text), text);
    }
    // Every token counts, BOS and EOS included.
    let tokens = golden_tokens(HELLO) + golden_tokens(PARIS);
    assert_eq!(v["usage"], serde_json::json!({"prompt_tokens": tokens, "total_tokens": tokens}));
}

#[test]
fn dimensions_truncate_and_renormalise() {
    let out = ok(gemma(&["embed", "-m", model(), "--dimensions", "128", HELLO]), "gemma embed --dimensions");
    let v = vectors(&out);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].len(), 128);
    assert!((norm(&v[0]) - 1.0).abs() < 1e-5, "not renormalised: {}", norm(&v[0]));
    let g = golden(HELLO);
    let n = norm(&g[..128]);
    let want: Vec<f64> = g[..128].iter().map(|x| x / n).collect();
    assert_close(&v[0], &want, "hello world at 128");
}

#[test]
fn similarity_ranks_the_relevant_document_first() {
    let out =
        ok(gemma(&["embed", "-m", model(), "--similarity", QUERY, PARIS, MITOCHONDRIA]), "gemma embed --similarity");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 3, "{out}");
        assert_eq!(row[i], "1.0000", "the diagonal: {out}");
        for cell in row {
            assert!(cell.len() == 6 && cell.as_bytes()[1] == b'.', "4 decimals: {cell:?}");
        }
    }
    let s = |i: usize, j: usize| rows[i][j].parse::<f64>().unwrap();
    // The reference: query·Paris 0.5825, query·mitochondria 0.0790, Paris·mitochondria 0.4490.
    assert!((s(0, 1) - 0.5825).abs() <= 2e-4, "{out}");
    assert!((s(0, 2) - 0.0790).abs() <= 2e-4, "{out}");
    assert!((s(1, 2) - 0.4490).abs() <= 2e-4, "{out}");
    assert!(s(0, 1) > s(0, 2), "{out}");
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        assert_eq!(rows[i][j], rows[j][i], "not symmetric: {out}");
    }
}

#[test]
fn file_dash_reads_standard_input_lines() {
    // Blank lines are skipped; arguments come first, then the lines.
    let o = gemma_stdin(&["embed", "-m", model(), "--file", "-", HELLO], &format!("{QUERY}\n\n{PARIS}\n"));
    let v = vectors(&ok(o, "gemma embed --file -"));
    assert_eq!(v.len(), 3);
    for (e, text) in v.iter().zip([HELLO, QUERY, PARIS]) {
        assert_close(e, &golden(text), text);
    }
    // And from a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inputs.txt");
    std::fs::write(&path, format!("{MITOCHONDRIA}\n")).unwrap();
    let v = vectors(&ok(gemma(&["embed", "-m", model(), "-f", path.to_str().unwrap()]), "gemma embed -f FILE"));
    assert_eq!(v.len(), 1);
    assert_close(&v[0], &golden(MITOCHONDRIA), MITOCHONDRIA);
}

#[test]
fn usage_mistakes_exit_2() {
    let (code, err) = fails(gemma(&["embed", "-m", model()]));
    assert_eq!(code, 2, "{err}");
    // `--file` with nothing in it is nothing to embed either.
    let (code, err) = fails(gemma_stdin(&["embed", "-m", model(), "--file", "-"], "\n  \n"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to embed"), "{err}");
    let (code, err) = fails(gemma(&["embed", "-m", model(), "--dimensions", "0", HELLO]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--dimensions"), "{err}");
    let (code, err) = fails(gemma(&["embed", "-m", model(), "--dimensions", "1000", HELLO]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1000") && err.contains("768"), "{err}");
    let (code, err) = fails(gemma(&["embed", "-m", model(), "--json", "--similarity", HELLO]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_generative_model_does_not_embed() {
    let generative = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model");
    let (code, err) = fails(gemma(&["embed", "-m", generative.to_str().unwrap(), HELLO]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not an embedding model"), "{err}");
    // The default model is generative too.
    let (code, err) = fails(gemma(&["embed", HELLO]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not an embedding model"), "{err}");
}

#[test]
fn the_embedding_model_does_not_generate() {
    let (code, err) = fails(gemma(&["run", "-m", model(), "--prompt", "hi"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is an embedding model"), "{err}");
    // The user guide's style and `gemma chat` too.
    let (code, err) = fails(gemma(&["--weights", model(), "--prompt", "hi", "--max-tokens", "2"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is an embedding model"), "{err}");
    let (code, err) = fails(gemma_stdin(&["chat", "-m", model()], "hi\n"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is an embedding model"), "{err}");
}

#[test]
fn an_input_longer_than_the_context_is_an_error() {
    // "hello world again" is 5 tokens with BOS and EOS.
    let (code, err) = fails(gemma(&["embed", "-m", model(), "--ctx", "4", HELLO, "hello world again"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("input 2 has 5 tokens"), "{err}");
}

#[test]
fn tokenize_adds_bos_and_eos_for_the_embedding_model() {
    model(); // pulled (once, by this process) before the binary looks it up by name
    let out = ok(gemma(&["tokenize", "-m", EMBEDDING_MODEL, HELLO]), "gemma tokenize");
    assert_eq!(out.trim(), "[2,23391,1902,1]");
}
