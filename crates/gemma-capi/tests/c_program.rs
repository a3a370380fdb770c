//! A real C program (`tests/c/smoke.c`) compiled with the system C compiler against `include/gemma.h` and the
//! crate's shared library, run on the default model: its checks must hold, its struct layouts must be Rust's,
//! and its greedy text must be the library's.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::MAX_TOKENS;
use gemma_capi::{GemmaGenerationInfo, GemmaParams};

mod common;

/// The shared library cargo built for this test run. `cargo test` builds the library's every crate type,
/// the cdylib included, into the folder of the test binaries (`target/<profile>/deps`); a plain
/// `cargo build` puts a copy one folder up.
fn shared_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary folder");
    let name = format!("{}gemma_capi{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let candidates = [deps.join(&name), deps.parent().map(|p| p.join(&name)).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("no {name} next to the test binary ({candidates:?}); cargo builds it with the crate's tests")
    })
}

/// Compiles the C file `source` against gemma.h and the shared library into `exe`.
fn compile(source: &Path, exe: &Path) {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let library = shared_library();
    let lib_dir = library.parent().expect("library folder");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(&compiler)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(source)
        .arg(&library)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler '{compiler}': {e}"));
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}{}",
        source.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value after `key ` on its line of the program's report.
fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no '{key}' line in:\n{report}"))
}

#[test]
fn c_program_builds_runs_and_generates_the_librarys_text() {
    // Golden prompt 5: its first 9 greedy steps are certain, so the start of llama.cpp's text is fixed.
    let golden = &common::goldens()[5];
    assert!(golden.certain_steps() >= 9);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("smoke");
    compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/smoke.c"), &exe);
    let output = Command::new(&exe)
        .arg(common::model_path())
        .arg(&golden.prompt)
        .arg(MAX_TOKENS.to_string())
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke failed ({}):\n{stdout}\n{stderr}", output.status);
    let (report, generated) = stdout.split_once("--- generated ---\n").expect("generated marker");

    let version = format!("{} {}", env!("CARGO_PKG_VERSION"), gemma_capi::gemma_version());
    assert_eq!(field(report, "version"), version);
    assert_eq!(field(report, "sizeof_params"), std::mem::size_of::<GemmaParams>().to_string());
    assert_eq!(field(report, "sizeof_info"), std::mem::size_of::<GemmaGenerationInfo>().to_string());
    let prefill_offset = std::mem::offset_of!(GemmaGenerationInfo, prefill_tokens_per_second);
    assert_eq!(field(report, "offsetof_info_prefill"), prefill_offset.to_string());
    let ids: Vec<u32> = field(report, "ids").split(' ').map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids, golden.prompt_ids, "the prompt's ids are llama.cpp's");

    let library = common::Library::get();
    assert_eq!(field(report, "vocab"), library.tokenizer.vocab_size().to_string());
    assert_eq!(field(report, "context"), library.model.config.context_length.to_string());
    let expected = library.greedy(&ids, MAX_TOKENS);
    assert_eq!(generated, expected.text, "the C program's greedy text is the library's");
    assert_eq!(field(report, "generated_tokens"), expected.gen_ids.len().to_string());
    assert_eq!(expected.gen_ids[..9], golden.gen_ids[..9], "llama.cpp's certain steps");
}

#[test]
fn the_guides_example_program_compiles_and_prints_the_librarys_text() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/c-api.md")).unwrap();
    let example = guide
        .split("```c\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .find(|code| code.contains("int main("))
        .expect("docs/c-api.md has a C program");
    let dir = tempfile::tempdir().unwrap();
    let (source, exe) = (dir.path().join("example.c"), dir.path().join("example"));
    std::fs::write(&source, example).unwrap();
    compile(&source, &exe);
    let output = Command::new(&exe).arg(common::model_path()).output().expect("run the example");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    let library = common::Library::get();
    let prompt_ids = library.tokenizer.encode("The capital of France is", true, true);
    let expected = library.greedy(&prompt_ids, 32);
    assert_eq!(stdout, format!("{}\n[{} bytes generated]\n", expected.text, expected.text.len()));
}
