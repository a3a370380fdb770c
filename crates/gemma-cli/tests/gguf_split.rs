//! `gemma gguf-split` through the binary on the default model: every part of four split jobs, and the merge of
//! one, byte for byte what llama-gguf-split wrote (sha256 in `testdata/goldens/llama_gguf_split.json`, from
//! `scripts/llama_gguf_split_goldens.py`), `--dry-run` printing its plan; the parts used as a model (`info`,
//! `run`); bad splits and bad arguments give clear errors and leave nothing behind; Ctrl-C leaves no part.

use std::path::Path;
use std::process::Command;

mod common;
use common::{fails_clearly, files_in, gemma, model, stderr};

fn sha256(path: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn goldens() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens/llama_gguf_split.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn splits_and_merges_to_llama_gguf_splits_bytes() {
    let m = model();
    let g = goldens();
    assert_eq!(sha256(Path::new(&m)), g["model_sha256"].as_str().unwrap(), "the goldens' model");
    for job in g["jobs"].as_array().unwrap() {
        let name = job["name"].as_str().unwrap();
        let options: Vec<&str> = job["options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
        // Each job in its own folder, removed before the next: at most two copies of the model on disk.
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("out");
        let prefix = prefix.to_str().unwrap();

        let args: Vec<&str> = ["gguf-split"].into_iter().chain(options.iter().copied()).collect();
        let dry = gemma(&[&args[..], &["--dry-run", &m, prefix]].concat());
        assert!(dry.status.success(), "{name}: {}", stderr(&dry));
        assert_eq!(stdout(&dry), job["dry_run_stdout"].as_str().unwrap(), "{name}: the plan printed");
        assert!(files_in(dir.path()).is_empty(), "{name}: --dry-run writes nothing");

        let o = gemma(&[&args[..], &[&m, prefix]].concat());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let parts = job["parts"].as_array().unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p["file"].as_str().unwrap()).collect();
        assert_eq!(files_in(dir.path()), names, "{name}: the parts, no temporary file");
        for p in parts {
            let path = dir.path().join(p["file"].as_str().unwrap());
            assert_eq!(sha256(&path), p["sha256"].as_str().unwrap(), "{name}: {}", path.display());
        }
        if let Some(merged) = job.get("merged") {
            let first = dir.path().join(names[0]);
            let out = dir.path().join("merged.gguf");
            let o = gemma(&["gguf-split", "--merge", first.to_str().unwrap(), out.to_str().unwrap()]);
            assert!(o.status.success(), "{name}: {}", stderr(&o));
            assert_eq!(sha256(&out), merged["sha256"].as_str().unwrap(), "{name}: merged");
            // Not the original: llama-gguf-split keeps split.no, split.tensors.count and split.count = 0.
            assert_eq!(merged["equals_original"], false);
            // Merging again refuses to overwrite.
            let again = gemma(&["gguf-split", "--merge", first.to_str().unwrap(), out.to_str().unwrap()]);
            assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
            assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
        }
    }
}

#[test]
fn a_split_model_is_used_by_its_first_part_and_bad_parts_are_clear_errors() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    let o = gemma(&["gguf-split", "--split-max-tensors", "100", &m, prefix.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let part = |no: u32| dir.path().join(format!("m-{no:05}-of-00003.gguf"));
    let first = part(1);
    let first = first.to_str().unwrap();

    let info = gemma(&["info", "-m", first]);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = stdout(&info);
    assert!(text.contains("split model: 3 files"), "{text}");
    assert!(text.contains("part 3/3:") && text.contains("m-00003-of-00003.gguf"), "{text}");

    let run = |model: &str| gemma(&["run", "-m", model, "-p", "The capital of France is", "-n", "12", "--temp", "0"]);
    let (single, split) = (run(&m), run(first));
    assert!(split.status.success(), "{}", stderr(&split));
    assert_eq!(stdout(&split), stdout(&single), "the same greedy text");

    // The second part given: point at the first.
    fails_clearly(
        &["run", "-m", part(2).to_str().unwrap(), "-p", "x"],
        1,
        &["part 2 of 3", "open the first part", first],
    );
    // A truncated part.
    let third = part(3);
    let saved = std::fs::read(&third).unwrap();
    std::fs::write(&third, &saved[..saved.len() / 2]).unwrap();
    fails_clearly(&["info", "-m", first], 1, &[third.to_str().unwrap(), "truncated"]);
    // A part from another split of the model in its place.
    let other = dir.path().join("other");
    let o = gemma(&["gguf-split", "--split-max-size", "100M", &m, other.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(dir.path().join("other-00003-of-00003.gguf"), &third).unwrap();
    fails_clearly(&["run", "-m", first, "-p", "x"], 1, &[third.to_str().unwrap(), "is also in"]);
    // A missing part.
    std::fs::remove_file(&third).unwrap();
    fails_clearly(&["run", "-m", first, "-p", "x"], 1, &["part 3 of 3", third.to_str().unwrap()]);
    fails_clearly(&["gguf-split", "--merge", first, dir.path().join("x.gguf").to_str().unwrap()], 1, &["part 3 of 3"]);
    assert!(!dir.path().join("x.gguf").exists());
}

#[test]
fn bad_arguments_are_usage_errors_and_write_nothing() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let check = fails_clearly;
    check(&["gguf-split", "--split-max-size", "100K", &m, out], 2, &["supported units are M", "K"]);
    check(&["gguf-split", "--split-max-size", "1.5G", &m, out], 2, &["positive whole number"]);
    check(&["gguf-split", "--split-max-size", "0M", &m, out], 2, &["positive whole number"]);
    check(&["gguf-split", "--split-max-tensors", "0", &m, out], 2, &["at least 1"]);
    check(&["gguf-split", "--split-max-tensors", "9", "--split-max-size", "9M", &m, out], 2, &["cannot be used with"]);
    check(&["gguf-split", "--split", "--merge", &m, out], 2, &["cannot be used with"]);
    check(&["gguf-split", &m], 2, &["GGUF_OUT"]);
    // Merging a file that is not a split.
    check(&["gguf-split", "--merge", &m, out], 1, &["not a split model"]);
    check(&["gguf-split", dir.path().join("none.gguf").to_str().unwrap(), out], 1, &["none.gguf"]);
    assert!(files_in(dir.path()).is_empty(), "nothing written");
}

/// Ctrl-C while the parts are written: every temporary part is removed, none is renamed into place.
#[test]
fn an_interrupted_split_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    let child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["gguf-split", "--split-max-tensors", "100", &model(), prefix.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the second part's temporary file is there (the first is complete by then).
    let start = std::time::Instant::now();
    while !files_in(dir.path()).iter().any(|n| n.starts_with(".m-00002-of-00003.gguf.")) {
        assert!(start.elapsed().as_secs() < 60, "no temporary part appeared: {:?}", files_in(dir.path()));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(files_in(dir.path()).is_empty(), "nothing left: {:?}", files_in(dir.path()));
}
