//! `gemma imatrix` through the binary: a run whose matrix `gemma quantize --imatrix` takes, both formats, the
//! periodic saves and Ctrl-C, and every kind of bad input giving a clear error, the right exit code and no file
//! left behind. (Parity of the sums with llama-imatrix is `gemma-core`'s `tests/imatrix_parity.rs`.)

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use gemma_io::imatrix::Imatrix;

const TEXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/perplexity/lighthouses.txt");

mod common;
use common::{fails_clearly, files_in, gemma, model, stderr};

#[test]
fn computes_a_matrix_that_quantize_takes() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lighthouses.gguf");
    let o =
        gemma(&["imatrix", "-m", &m, "-f", TEXT, "-c", "64", "--chunks", "3", "-t", "2", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("[1]") && text.contains(",[3]") && text.contains("Final estimate: PPL = "), "{text}");
    let matrix = Imatrix::open(&out).expect("reads back");
    assert!(matrix.has_metadata);
    assert_eq!((matrix.chunk_count, matrix.chunk_size), (3, 64));
    assert_eq!(matrix.datasets, [TEXT]);
    // 18 layers x (Q, K, V, attention output, gate, up, down); no token_embd (the tied head multiplies by it)
    assert_eq!(matrix.entries.len(), 18 * 7);
    assert!(matrix.entries.values().all(|e| e.counts == [3 * 64]));

    let dat = dir.path().join("lighthouses.dat");
    let o = gemma(&[
        "imatrix",
        "-m",
        &m,
        "-f",
        TEXT,
        "-c",
        "64",
        "--chunks",
        "3",
        "--no-ppl",
        "--output-format",
        "dat",
        "-o",
        dat.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("PPL"));
    let legacy = Imatrix::open(&dat).expect("reads back");
    assert!(legacy.is_legacy);
    // the same weights either way: sums / count = values / ncall
    let (a, b) = (matrix.weights().expect("weights"), legacy.weights().expect("weights"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, w) in &a {
        for (x, y) in w.iter().zip(&b[name]) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{name}: {x} vs {y}");
        }
    }

    let q = dir.path().join("q4_0.gguf");
    let o = gemma(&[
        "quantize",
        "--allow-requantize",
        "--imatrix",
        out.to_str().unwrap(),
        &m,
        q.to_str().unwrap(),
        "q4_0",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files_in(dir.path()), ["lighthouses.dat", "lighthouses.gguf", "q4_0.gguf"], "no temp files");
}

/// Ctrl-C stops a run between two passes: the last periodic save is kept whole, nothing half written.
#[test]
fn an_interrupted_run_keeps_its_last_save() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imatrix.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["imatrix", "-m", &model(), "-f", "-", "-c", "64", "-b", "64", "--no-ppl", "--threads", "2"])
        .args(["--output-frequency", "1", "-o", out.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a text long enough that the run is far from done when interrupted (hundreds of chunks)
    let text = std::fs::read_to_string(TEXT).unwrap().repeat(30);
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("seconds per pass") {
        assert!(err.read_line(&mut log).unwrap() > 0, "the run ended early: {log}");
    }
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    std::io::Read::read_to_string(&mut err, &mut log).unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted;") && log.contains("holds the matrix of the first"), "{log}");
    assert_eq!(files_in(dir.path()), ["imatrix.gguf"], "the save, no temp file");
    let saved = Imatrix::open(&out).expect("the save reads");
    assert!(saved.chunk_count >= 1);
    assert!(saved.entries.values().all(|e| e.counts == [i64::from(saved.chunk_count) * 64]));
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing_behind() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.gguf");
    let out = out_path.to_str().unwrap();
    let missing = dir.path().join("no-such.txt");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "A lighthouse stands on the rock.").unwrap();
    let folder_missing = dir.path().join("no/such/folder/out.gguf");
    let check = |args: &[&str], code: i32, wanted: &[&str]| {
        fails_clearly(args, code, wanted);
        assert_eq!(files_in(dir.path()), ["short.txt"], "gemma {args:?} left a file");
    };
    let base = ["imatrix", "-m", m.as_str(), "-o", out, "-t", "2"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().copied().chain(extra.iter().copied()).map(str::to_string).collect()
    };
    let run = |extra: &[&'static str], code, wanted: &[&str]| {
        let args = with(extra);
        check(&args.iter().map(String::as_str).collect::<Vec<_>>(), code, wanted)
    };
    let missing_s = missing.to_str().unwrap();
    let short_s = short.to_str().unwrap();
    check(&["imatrix", "-m", &m, "-f", missing_s, "-o", out], 1, &["cannot read", "no-such.txt"]);
    check(&["imatrix", "-m", &m, "-f", short_s, "-o", out], 1, &["tokens long", "needs at least 1024"]);
    check(&["imatrix", "-m", &m, "-f", TEXT, "-c", "512", "-o", out], 1, &["needs at least 1024 (two chunks)"]);
    check(&["imatrix", "-m", &m, "-f", TEXT, "-o", folder_missing.to_str().unwrap()], 1, &["does not exist"]);
    check(&["imatrix", "-m", &m, "-f", TEXT, "-o", dir.path().to_str().unwrap()], 1, &["is a folder"]);
    check(&["imatrix", "-m", "/no/such/model.gguf", "-f", TEXT, "-o", out], 1, &["cannot"]);
    check(&["imatrix", "-m", &m, "-o", out], 2, &["--file"]);
    run(&["-f", TEXT, "-c", "2"], 2, &["--ctx-size 2"]);
    run(&["-f", TEXT, "--chunks", "0"], 2, &["--chunks must be at least 1"]);
    run(&["-f", TEXT, "--output-frequency", "0"], 2, &["--output-frequency"]);
    run(&["-f", TEXT, "--output-format", "ggml"], 2, &["ggml"]);
    run(&["-f", TEXT, "-b", "0"], 2, &["--batch-size"]);
    run(&["-f", TEXT, "--threads", "3"], 2, &["give the thread count once"]);
    check(&["imatrix", "-m", &m, "-f", TEXT, "-o", out, "-t", "0"], 2, &["-t must be at least 1"]);
}
