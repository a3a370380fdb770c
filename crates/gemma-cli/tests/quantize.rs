//! `gemma quantize` through the binary: a real quantization, and every kind of bad input giving a clear error,
//! the right exit code and no file left behind. (Byte parity with llama-quantize is `gemma-core`'s
//! `tests/quantize_parity.rs`.)

mod common;
use common::{fails_clearly, files_in, gemma, model, stderr};

#[test]
fn quantizes_the_default_model_and_prints_a_summary() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8_0.gguf");
    let o = gemma(&["quantize", "--allow-requantize", &m, out.to_str().unwrap(), "q8_0", "--threads", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for line in ["as Q8_0 with 2 threads", "model size =", "quant size =", "quantize time ="] {
        assert!(text.contains(line), "no '{line}' in {text}");
    }
    // piped: no progress bar on stderr
    assert!(!stderr(&o).contains("quantizing to"), "{}", stderr(&o));
    assert_eq!(files_in(dir.path()), ["q8_0.gguf"], "only the output, no temp file");
    let info = gemma(&["info", "-m", out.to_str().unwrap()]);
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(String::from_utf8_lossy(&info.stdout).contains("q8_0"));
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing_behind() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.gguf");
    let out = out_path.to_str().unwrap();
    let check = fails_clearly;
    // already quantized: refused with llama-quantize's reason unless asked
    check(&["quantize", &m, out, "Q4_0"], 2, &["already quantized", "--allow-requantize"]);
    // types: unknown, and llama-quantize's that need an importance matrix
    check(&["quantize", &m, out, "Q9_K"], 2, &["unknown quantization type 'Q9_K'", "Q4_K_M"]);
    check(&["quantize", &m, out, "IQ2_XS"], 2, &["does not make", "importance"]);
    check(&["quantize", "--allow-requantize", "--output-tensor-type", "iq3_s", &m, out, "Q4_0"], 2, &["iq3_s"]);
    // an importance matrix does not make the unwritten i-quants possible
    let imatrix = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf");
    check(&["quantize", "--allow-requantize", "--imatrix", imatrix, &m, out, "IQ3_S"], 2, &["does not make"]);
    // another model's importance matrix: its rows (Gemma's 640) do not fit SmolLM2's (576), refused as
    // llama-quantize refuses it rather than quantized unweighted
    let smol = gemma_fetch::resolve_model("smollm2-135m-instruct").expect("SmolLM2 model").display().to_string();
    check(
        &["quantize", "--allow-requantize", "--imatrix", imatrix, &smol, out, "IQ4_XS"],
        1,
        &["importance matrix entry for 'blk.0.", "640 values", "576 elements"],
    );
    // a 256-block type on 640-wide rows (llama-quantize aborts here)
    check(
        &["quantize", "--allow-requantize", "--token-embedding-type", "q4_k", &m, out, "Q8_0"],
        2,
        &["token_embd.weight", "640", "q4_K"],
    );
    // files
    check(&["quantize", "/nonexistent/model.gguf", out, "Q8_0"], 1, &["/nonexistent/model.gguf"]);
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file").unwrap();
    check(&["quantize", junk.to_str().unwrap(), out, "Q8_0"], 1, &["not a GGUF file"]);
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&m).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    check(&["quantize", "--allow-requantize", truncated.to_str().unwrap(), out, "Q8_0"], 1, &["truncated"]);
    check(&["quantize", "--allow-requantize", &m, &m, "Q8_0"], 2, &["same file"]);
    let unwritable = dir.path().join("no-such-dir").join("out.gguf");
    check(&["quantize", "--allow-requantize", &m, unwritable.to_str().unwrap(), "Q8_0"], 1, &["no-such-dir"]);
    check(&["quantize", &m, out, "Q8_0", "0"], 2, &["NTHREADS"]);
    // importance matrices: Q2_K_S needs one; a damaged one is named; the filters need one
    check(&["quantize", "--allow-requantize", &m, out, "Q2_K_S"], 2, &["blk.", "Q2_K_S", "--imatrix"]);
    let junk_path = junk.to_str().unwrap();
    check(
        &["quantize", "--allow-requantize", "--imatrix", junk_path, &m, out, "Q4_K_M"],
        1,
        &["importance matrix", "junk.gguf"],
    );
    check(&["quantize", "--allow-requantize", "--include-weights", "ffn", &m, out, "Q4_K_M"], 2, &["--imatrix"]);
    assert_eq!(files_in(dir.path()), ["junk.gguf", "truncated.gguf"], "no output or temp file left");
}
