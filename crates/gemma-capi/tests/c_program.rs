//! Real C programs compiled with the system C compiler against `include/gemma.h` and the crate's shared
//! library: `tests/c/smoke.c` on the default model (its checks must hold, its struct layouts must be Rust's,
//! and its greedy text must be the library's), `tests/c/embed.c` on EmbeddingGemma (its vectors must be the
//! float64 reference's), and the guide's four example programs.

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

/// The guide's C program that calls `function`, compiled into `dir`; the executable's path.
fn guide_program(dir: &Path, function: &str) -> PathBuf {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/c-api.md")).unwrap();
    let example = guide
        .split("```c\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .find(|code| code.contains("int main(") && code.contains(&format!("{function}(")))
        .unwrap_or_else(|| panic!("docs/c-api.md has a C program calling {function}"));
    let (source, exe) = (dir.join(format!("{function}.c")), dir.join(function));
    std::fs::write(&source, example).unwrap();
    compile(&source, &exe);
    exe
}

/// Runs `exe` with `args`; its standard output, which it must have written successfully.
fn run(exe: &Path, args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(exe).args(args).output().expect("run the C program");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{} failed ({}):\n{stdout}\n{stderr}", exe.display(), output.status);
    stdout
}

#[test]
fn the_guides_example_program_compiles_and_prints_the_librarys_text() {
    let dir = tempfile::tempdir().unwrap();
    let exe = guide_program(dir.path(), "gemma_generate");
    let stdout = run(&exe, &[common::model_path().as_os_str()]);

    let library = common::Library::get();
    let prompt_ids = library.tokenizer.encode("The capital of France is", true, true);
    let expected = library.greedy(&prompt_ids, 32);
    assert_eq!(stdout, format!("{}\n[{} bytes generated]\n", expected.text, expected.text.len()));
}

#[test]
fn the_guides_chat_example_answers_as_the_library_does_and_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let exe = guide_program(dir.path(), "gemma_chat_send");
    let stdout = run(&exe, &[common::model_path().as_os_str()]);

    // The library's conversation, turn by turn.
    let library = common::Library::get();
    let template = gemma_core::chat::ChatTemplate::from_gguf(&library.model.file, &library.tokenizer).unwrap();
    let options = gemma_core::GenerationOptions {
        max_tokens: 24,
        sampling: gemma_core::SamplingParams::greedy(),
        ..Default::default()
    };
    let context = library.model.config.context_length;
    let mut conversation =
        gemma_core::Conversation::new(&library.model, &library.tokenizer, &template, context, options).unwrap();
    conversation.set_system(Some("Answer in one short sentence."));
    let mut expected = String::new();
    for question in ["What is the capital of France?", "And of Italy?"] {
        let turn = conversation.send(question, &library.pool, &mut |_| {}).unwrap();
        let prefilled = turn.output.prompt_ids.len();
        expected +=
            &format!("> {question}\n{}\n[{prefilled} tokens prefilled, {} reused]\n", turn.output.text, turn.reused);
    }
    assert_eq!(stdout, expected);
    let second = stdout.lines().filter(|l| l.starts_with('[')).nth(1).unwrap();
    assert!(!second.ends_with(" 0 reused]"), "the second turn reuses the first's cache: {second}");
}

#[test]
fn the_guides_lora_example_generates_the_librarys_text_with_and_without_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let exe = guide_program(dir.path(), "gemma_lora_load");
    let adapter = dir.path().join("lora.gguf");
    gemma_core::lora::synthetic::Spec::gemma3_270m().writer().unwrap().write_file(&adapter).unwrap();
    let stdout = run(&exe, &[common::model_path().as_os_str(), adapter.as_os_str()]);

    let library = common::Library::get();
    let prompt_ids = library.tokenizer.encode("The capital of France is", true, true);
    let base = library.greedy(&prompt_ids, 16).text;
    // The library's own model with the adapter loaded at scale 1.
    let mut model = gemma_core::Model::open(common::model_path()).unwrap();
    model.load_lora(&adapter, 1.0).unwrap();
    let options = gemma_core::GenerationOptions {
        max_tokens: 16,
        sampling: gemma_core::SamplingParams::greedy(),
        ..Default::default()
    };
    let with = gemma_core::Session::new(&model, model.config.context_length)
        .generate(&library.tokenizer, &prompt_ids, &options, &library.pool, &mut |_| {})
        .unwrap()
        .text;
    assert_ne!(with, base);
    assert_eq!(stdout, format!("[scale 1.0] {with}\n[scale 0.0] {base}\n"));
    // A file that is not an adapter: the program's error, from the library's message.
    let output = Command::new(&exe).arg(common::model_path()).arg(common::model_path()).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error -11 (the LoRA adapter cannot be loaded): "), "{stderr}");
}

#[test]
fn c_embedding_program_gives_the_reference_vectors_and_the_wrong_kind_errors() {
    // Short texts (one of them empty, one not ASCII) keep the run fast.
    let goldens: Vec<_> = [0, 1, 5, 7].map(|i| &common::embedding_goldens()[i]).into();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("embed");
    compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/embed.c"), &exe);
    let (embedder, generator) = (common::embedding_model_path(), common::model_path());
    let mut args = vec![embedder.as_os_str(), generator.as_os_str()];
    args.extend(goldens.iter().map(|g| std::ffi::OsStr::new(&g.text)));
    let report = run(&exe, &args);

    assert_eq!(field(&report, "dim"), "768");
    let not_embedding = field(&report, "embed_on_generative");
    assert!(not_embedding.contains("is not an embedding model"), "{not_embedding}");
    let not_generative = field(&report, "generate_on_embedding");
    assert!(not_generative.contains("is an embedding model") && not_generative.contains("gemma_embed"));
    for (i, golden) in goldens.iter().enumerate() {
        let v: Vec<f32> = field(&report, &format!("vector {i}")).split(' ').map(|x| x.parse().unwrap()).collect();
        let err = common::rel_l2(&v, &golden.embedding);
        assert!(err < 1e-5, "{:?}: relative L2 error {err:e}", golden.text);
    }
}

#[test]
fn the_guides_embedding_example_ranks_the_documents_as_the_library_does() {
    let dir = tempfile::tempdir().unwrap();
    let exe = guide_program(dir.path(), "gemma_embed");
    let path = common::embedding_model_path();
    let stdout = run(&exe, &[path.as_os_str()]);
    let scores: Vec<(f64, &str)> = stdout
        .lines()
        .map(|line| {
            let (score, text) = line.split_once(' ').expect("'SCORE TEXT' lines");
            (score.parse().unwrap(), text)
        })
        .collect();
    assert_eq!(scores.len(), 2, "{stdout}");

    // The library's own cosine similarities of the same texts.
    let model = gemma_core::Model::open(&path).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let pool = gemma_ops::ThreadPool::new(2);
    let query = tokenizer.encode_input("task: search result | query: What is the capital of France?", true);
    for (score, text) in &scores {
        let doc = tokenizer.encode_input(text, true);
        let v = model.embed(&[&query, &doc], &pool).unwrap();
        let expected = gemma_core::model::embedding::cosine_similarity(&v[0], &v[1]);
        assert!((score - f64::from(expected)).abs() < 1e-3, "{text}: {score} against {expected}");
    }
    assert!(scores[0].1.contains("Paris") && scores[0].0 > scores[1].0 + 0.1, "{stdout}");
}
