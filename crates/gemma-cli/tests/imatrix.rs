//! `gemma imatrix` through the binary: a run whose matrix `gemma quantize --imatrix` takes, both formats, the
//! periodic saves and Ctrl-C, and every kind of bad input giving a clear error, the right exit code and no file
//! left behind; `--in-file` combining and converting matrices to llama-imatrix's bytes, and continuing from them;
//! `--show-statistics` printing llama-imatrix's tables. (Parity of the sums with llama-imatrix is `gemma-core`'s
//! `tests/imatrix_parity.rs`.)

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
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
    check(&["imatrix", "-m", &m, "-o", out], 2, &["-f FILE", "--in-file"]);
    run(&["-f", TEXT, "-c", "2"], 2, &["--ctx-size 2"]);
    run(&["-f", TEXT, "--chunks", "0"], 2, &["--chunks must be at least 1"]);
    run(&["-f", TEXT, "--output-frequency", "0"], 2, &["--output-frequency"]);
    run(&["-f", TEXT, "--output-format", "ggml"], 2, &["ggml"]);
    run(&["-f", TEXT, "-b", "0"], 2, &["--batch-size"]);
    run(&["-f", TEXT, "--threads", "3"], 2, &["give the thread count once"]);
    check(&["imatrix", "-m", &m, "-f", TEXT, "-o", out, "-t", "0"], 2, &["-t must be at least 1"]);
}

/// The repository root: the recorded llama-imatrix files' paths are relative to it.
fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn gemma_in_repo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).args(args).current_dir(repo()).output().expect("run gemma")
}

fn sha256(path: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).expect("read output");
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `--in-file` alone: llama-imatrix's combining and converting, byte for byte. The hashes are of the files
/// llama-imatrix wrote with the same arguments (`docs/quantize.md`).
#[test]
fn combines_and_converts_matrices_to_llama_imatrix_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = "testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf";
    let f32 = "testdata/imatrix/gemma3-270m-f32-lighthouses.imatrix.gguf";
    let dat = "testdata/imatrix/gemma3-270m-lighthouses.imatrix.dat";
    let both = format!("{q4},{f32}");
    let mixed = format!("{q4},{dat}");
    let cases: [(&str, Vec<&str>, &str); 5] = [
        ("combined.gguf", vec!["--in-file", &both], "7cf4ac913589c5f1009b85ad8c5a9637c868a79c13a0e9b2268539b6370c7d7b"),
        // a repeated --in-file adds up as a list does (llama-imatrix warns and keeps only the last)
        (
            "repeated.gguf",
            vec!["--in-file", q4, "--in-file", f32],
            "7cf4ac913589c5f1009b85ad8c5a9637c868a79c13a0e9b2268539b6370c7d7b",
        ),
        ("fromdat.gguf", vec!["--in-file", dat], "c60524e563f84291c306dfd9915f28569c8f70df7501ef7a08b6a32c5ed8fd17"),
        (
            "todat.dat",
            vec!["--in-file", q4, "--output-format", "dat"],
            "b989957547d382424eb36e6286f2bd25d5b4e309cbb4f93b7deffde304dc545e",
        ),
        (
            "mixed.gguf",
            vec!["--in-file", &mixed, "-c", "128"],
            "541234edce510559ce34b8895e8636fab7934b7ae01e1d01e7b6c78213f45bc9",
        ),
    ];
    for (name, args, want) in cases {
        let out = dir.path().join(name);
        let mut all = vec!["imatrix", "-o", out.to_str().unwrap()];
        all.extend(args);
        let o = gemma_in_repo(&all);
        assert!(o.status.success(), "gemma {all:?}: {}", stderr(&o));
        assert_eq!(sha256(&out), want, "gemma {all:?}");
    }
    let combined = Imatrix::open(dir.path().join("combined.gguf")).expect("reads back");
    let (a, b) = (Imatrix::open(repo().join(q4)).unwrap(), Imatrix::open(repo().join(f32)).unwrap());
    assert_eq!(combined.datasets, [a.datasets.clone(), b.datasets.clone()].concat());
    let name = "blk.5.ffn_down.weight";
    assert_eq!(combined.entries[name].counts[0], a.entries[name].counts[0] + b.entries[name].counts[0]);
}

/// `--show-statistics`: llama-imatrix's two tables, character for character (its output recorded from a GGUF
/// file at the default chunk size, and from a `.dat` file, whose averages are scaled by `-c`).
#[test]
fn shows_llama_imatrix_statistics() {
    for (file, extra, golden) in [
        ("testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf", None, "gemma3-270m-lighthouses.statistics.txt"),
        (
            "testdata/imatrix/gemma3-270m-lighthouses.imatrix.dat",
            Some("128"),
            "gemma3-270m-lighthouses-dat-c128.statistics.txt",
        ),
    ] {
        let mut args = vec!["imatrix", "--in-file", file, "--show-statistics"];
        if let Some(c) = extra {
            args.extend(["-c", c]);
        }
        let o = gemma_in_repo(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let want = std::fs::read_to_string(repo().join("testdata/imatrix").join(golden)).expect("golden");
        let got = String::from_utf8_lossy(&o.stdout);
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "{golden} line {}", i + 1);
        }
        assert_eq!(got.lines().count(), want.lines().count(), "{golden}");
    }
}

/// A run that starts from `--in-file` matrices adds to them: one chunk, then the next two with `--chunk 1`
/// on top of it, make the three chunks' matrix (each chunk runs from an empty cache, so sums add up, to f32
/// rounding); `--save-frequency` copies count the loaded chunks and are named by the chunks they hold, as
/// llama-imatrix's are.
#[test]
fn runs_continue_from_loaded_matrices() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (first, rest, whole) = (path("first.gguf"), path("rest.gguf"), path("whole.gguf"));
    let base = ["imatrix", "-m", m.as_str(), "-f", TEXT, "-c", "64", "-t", "2", "--no-ppl"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let o = gemma(&args);
        assert!(o.status.success(), "gemma {args:?}: {}", stderr(&o));
    };
    run(&["--chunks", "1", "-o", &first]);
    // one chunk at a time (-b 64), so that a copy is made after the second chunk
    run(&["--chunk", "1", "--chunks", "2", "-b", "64", "--in-file", &first, "--save-frequency", "2", "-o", &rest]);
    run(&["--chunks", "3", "-o", &whole]);
    assert_eq!(files_in(dir.path()), ["first.gguf", "rest.gguf", "rest.gguf.at_2", "whole.gguf"]);
    let (rest, whole) = (Imatrix::open(&rest).unwrap(), Imatrix::open(&whole).unwrap());
    assert_eq!((rest.chunk_count, rest.chunk_size), (3, 64));
    assert_eq!(rest.datasets, [TEXT, TEXT]);
    assert_eq!(rest.entries.keys().collect::<Vec<_>>(), whole.entries.keys().collect::<Vec<_>>());
    for (name, w) in &whole.entries {
        let r = &rest.entries[name];
        assert_eq!(r.counts, w.counts, "{name}");
        for (j, (x, y)) in r.sums.iter().zip(&w.sums).enumerate() {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{name}[{j}]: {x} vs {y}");
        }
    }
    let copy = Imatrix::open(dir.path().join("rest.gguf.at_2")).unwrap();
    assert_eq!((copy.chunk_count, copy.entries["blk.0.attn_q.weight"].counts[0]), (2, 128));

    // --parse-special reads control tokens in the text as such: other tokens, other sums
    let special = dir.path().join("special.txt");
    let text = std::fs::read_to_string(TEXT).unwrap();
    std::fs::write(&special, format!("<start_of_turn>user\n{text}")).unwrap();
    let sums = |extra: &[&str]| {
        let out = path("special.gguf");
        let mut args = vec!["imatrix", "-m", m.as_str(), "-f", special.to_str().unwrap(), "-c", "64", "-t", "2"];
        args.extend(["--no-ppl", "--chunks", "1", "-o", &out]);
        args.extend(extra);
        let o = gemma(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        Imatrix::open(&out).unwrap().entries["blk.0.attn_q.weight"].sums.clone()
    };
    assert_ne!(sums(&[]), sums(&["--parse-special"]));
}

#[test]
fn bad_matrices_and_flags_give_clear_errors() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let out = out.to_str().unwrap();
    let q4 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf");
    let odd = dir.path().join("odd.gguf");
    let mut small = Imatrix::raw(64);
    small.add(&Imatrix::open(q4).unwrap()).unwrap();
    small.entries.get_mut("blk.3.ffn_up.weight").unwrap().sums.truncate(64);
    small.write_file(&odd, gemma_io::imatrix::ImatrixFormat::Gguf).unwrap();
    let odd = odd.to_str().unwrap();
    let both = format!("{q4},{odd}");
    fails_clearly(&["imatrix", "--show-statistics", "-o", out], 2, &["exactly one matrix"]);
    fails_clearly(&["imatrix", "--show-statistics", "--in-file", &both], 2, &["exactly one matrix"]);
    fails_clearly(&["imatrix", "--show-statistics", "--in-file", q4, "-f", TEXT], 2, &["drop -f"]);
    fails_clearly(&["imatrix", "--in-file", "/no/such.gguf", "-o", out], 1, &["cannot read", "/no/such.gguf"]);
    fails_clearly(&["imatrix", "--in-file", TEXT, "-o", out], 1, &["cannot read", "lighthouses.txt"]);
    fails_clearly(&["imatrix", "--in-file", &both, "-o", out], 1, &["blk.3.ffn_up.weight", "64 values", "640"]);
    fails_clearly(
        &["imatrix", "-m", &m, "-f", TEXT, "-c", "64", "--chunk", "1000", "-o", out],
        1,
        &["--chunk 1000", "not enough left"],
    );
    assert_eq!(files_in(dir.path()), ["odd.gguf"]);
}
