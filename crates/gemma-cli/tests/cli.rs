//! The `gemma` binary as users call it (the user guide's invocations and the subcommands), on the real model.

use std::process::{Command, Output};

mod common;
use common::{gemma, model};

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn ok(args: &[&str]) -> String {
    let o = gemma(args);
    assert!(o.status.success(), "gemma {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    stdout(&o)
}

#[test]
fn user_guide_generation_is_greedy_by_default_and_sensible() {
    let m = model();
    let out = ok(&["--weights", &m, "--prompt", "The capital of France is", "--max-tokens", "8"]);
    assert!(out.contains("Paris") || out.contains("the capital"), "unexpected continuation: {out:?}");
    // Same again: greedy is deterministic.
    assert_eq!(out, ok(&["--weights", &m, "--prompt", "The capital of France is", "--max-tokens", "8"]));
    // `--temperature 0` is greedy too, and the explicit flags of the guide are accepted.
    let explicit = ok(&[
        "--weights",
        &m,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--top-k",
        "40",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]);
    assert_eq!(out, explicit);
}

#[test]
fn run_json_prints_one_object_with_ids_text_and_speeds() {
    let m = model();
    let out = ok(&["run", "-m", &m, "--prompt", "The capital of France is", "--max-tokens", "6", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout is exactly one JSON object");
    assert_eq!(v["prompt_ids"], serde_json::json!([2, 818, 5279, 529, 7001, 563]));
    // llama.cpp's greedy continuation starts " the capital of the" (margins well above the near-tie bound).
    assert_eq!(v["gen_ids"].as_array().unwrap().len(), 6);
    assert_eq!(v["gen_ids"][1], 5279);
    assert!(v["text"].as_str().unwrap().contains("capital"));
    assert!(v["prefill_tok_s"].as_f64().unwrap() > 0.0 && v["decode_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn same_seed_same_sampled_text() {
    let m = model();
    let args = [
        "run",
        "-m",
        &m,
        "-p",
        "Once upon a time",
        "-n",
        "12",
        "--temperature",
        "0.9",
        "--top-k",
        "40",
        "--seed",
        "11",
        "--json",
    ];
    let a: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let b: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(a["gen_ids"], b["gen_ids"]);
}

#[test]
fn encode_decode_tokenize_detokenize() {
    let m = model();
    assert_eq!(ok(&["--weights", &m, "--encode", "The capital of France is"]).trim(), "2 818 5279 529 7001 563");
    assert_eq!(
        ok(&["--weights", &m, "--decode", "818 5279 529 7001 563"]).trim_end_matches('\n'),
        "The capital of France is"
    );
    assert_eq!(ok(&["tokenize", "-m", &m, "The capital of France is"]).trim(), "[2,818,5279,529,7001,563]");
    assert_eq!(ok(&["tokenize", "-m", &m, "--no-bos", "<start_of_turn>user"]).trim(), "[105,2364]");
    let plain: Vec<u32> =
        serde_json::from_str(&ok(&["tokenize", "-m", &m, "--no-bos", "--no-special", "<start_of_turn>"])).unwrap();
    assert_ne!(plain, vec![105], "with --no-special the marker is plain text");
    assert_eq!(ok(&["detokenize", "-m", &m, "[818, 5279, 529]"]).trim_end_matches('\n'), "The capital of");
}

#[test]
fn print_config_backend_and_info() {
    let m = model();
    let cfg = ok(&["--weights", &m, "--print-config"]);
    assert!(cfg.contains("architecture: gemma3") && cfg.contains("layers: 18 (15 sliding-window, 3 global)"), "{cfg}");
    let backend = ok(&["--weights", &m, "--print-backend", "--threads", "2"]);
    assert!(
        backend.contains("device: cpu") && backend.contains("threads: 2") && backend.contains("simd: "),
        "{backend}"
    );
    // The guide's `--device cpu` is the default; `--device cuda` is refused as a usage error, before any
    // model is loaded, and a device that does not exist is clap's error.
    let on_cpu = ok(&["--weights", &m, "--print-backend", "--threads", "2", "--device", "cpu"]);
    assert_eq!(on_cpu, backend);
    for (device, says) in [("cuda", "--device cuda:0: this gemma has no GPU backend"), ("cuda:1", "--device cuda:1:")] {
        let out = gemma(&["--weights", "/no/such/model.gguf", "--device", device, "--prompt", "hi"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says) && err.contains("--device cpu"), "{err}");
    }
    for bad in ["tpu", "cuda:x"] {
        let out = gemma(&["run", "--device", bad, "--prompt", "hi"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--device"), "{err}");
    }
    let info = ok(&["info", "-m", &m]);
    assert!(info.contains("token_embd.weight") && info.contains("q8_0") && info.contains("262144 string items"));
    assert!(info.contains("tensors (236)"));
}

#[test]
fn rope_freq_base_replaces_the_global_layers_base() {
    let m = model();
    let cfg = ok(&["--weights", &m, "--rope-freq-base", "10000", "--print-config"]);
    assert!(cfg.contains("rope_base: 10000 (freq_scale: 1, local layers: 10000)"), "{cfg}");
    // Position 0 is not rotated; later positions see other angles in the global layers.
    let ids = "2,818,5279,529,7001,563";
    let default = ok(&["logits", "-m", &m, "--ids", ids, "--top-k", "1"]);
    let changed = ok(&["--rope-freq-base", "10000", "logits", "-m", &m, "--ids", ids, "--top-k", "1"]);
    let (d, c): (Vec<&str>, Vec<&str>) = (default.lines().collect(), changed.lines().collect());
    assert_eq!(d[0], c[0]);
    assert_ne!(d[5], c[5]);
    let o = gemma(&["--weights", &m, "--rope-freq-base", "0", "--print-config"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("RoPE base 0"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn logits_prints_one_json_line_per_position() {
    let m = model();
    let out = ok(&["logits", "-m", &m, "--ids", "2,818,5279,529,7001,563", "--top-k", "3"]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["pos"], 5);
    assert_eq!(lines[5]["top"].as_array().unwrap().len(), 3);
    // llama.cpp's best token after "The capital of France is" is " the" (id 506).
    assert_eq!(lines[5]["top"][0][0], 506);
}

#[test]
fn bad_input_gives_clear_errors_and_exit_codes() {
    let m = model();
    // Usage errors: exit 2.
    let o = gemma(&["--weights", &m, "--max-tokens", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    let o = gemma(&["--weights", &m]);
    assert_eq!(o.status.code(), Some(2), "nothing to do is a usage error");
    // A missing file: exit 1 and a one-line message naming it.
    let o = gemma(&["--weights", "/nonexistent/model.gguf", "--prompt", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/model.gguf") && err.lines().count() == 1, "{err}");
    // A file that is not a model.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file").unwrap();
    let o = gemma(&["--weights", junk.to_str().unwrap(), "--prompt", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a GGUF file"));
    // A prompt longer than the context.
    let o = gemma(&["run", "-m", &m, "--ctx", "4", "--prompt", "one two three four five six seven"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("context"), "{}", String::from_utf8_lossy(&o.stderr));
    // A token id outside the vocabulary.
    let o = gemma(&["detokenize", "-m", &m, "999999999"]);
    assert_eq!(o.status.code(), Some(2));
    // More threads than a pool may have: an error, not an abort while starting them.
    let o = gemma(&["run", "-m", &m, "--threads", "100000000", "--prompt", "hi", "-n", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than the 512"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bench_reports_pp_tg_and_machine() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = ok(&["bench", "-m", &m, "-p", "16", "-n", "4", "-t", "1,2", "-r", "2", "--json", json.to_str().unwrap()]);
    assert!(out.contains("| 1 | pp16 |") && out.contains("| 2 | tg4 |") && out.contains("peak RSS"), "{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["results"].as_array().unwrap().len(), 4);
    assert!(report["results"][0]["tokens_per_second"]["mean"].as_f64().unwrap() > 0.0);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 100 << 20, "the model is mapped and touched");
    assert_eq!(report["machine"]["device"], "cpu");
    assert!(report["commit"].as_str().is_some_and(|c| !c.is_empty()));

    // Several sequences decoded together, as the server batches its streams.
    let out = ok(&["bench", "-m", &m, "-p", "0", "-n", "4", "-s", "1,3", "-t", "1", "-r", "1"]);
    assert!(out.contains("| 1 | tg4 |") && out.contains("| 1 | tg4 x3 |"), "{out}");
    let o = gemma(&["bench", "-m", &m, "-s", "0"]);
    assert_eq!(o.status.code(), Some(2));

    // llama-bench's -pg and depth lists: every test at every depth, in its order and names.
    let out = ok(&["bench", "-m", &m, "-p", "8", "-n", "2", "-pg", "8,2", "-d", "0,16", "-t", "1", "-r", "1"]);
    let tests: Vec<&str> = out.lines().filter_map(|l| l.split(" | ").nth(1)).skip(1).collect();
    assert_eq!(tests, ["pp8", "tg2", "pp8+tg2", "pp8 @ d16", "tg2 @ d16", "pp8+tg2 @ d16"], "{out}");
    for bad in [&["-pg", "8"][..], &["-pg", "8,x"], &["-d", "40000"], &["-o", "xml"]] {
        let o = gemma(&[&["bench", "-m", &m, "-r", "1"][..], bad].concat());
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
    // llama-bench's output formats, with its field names; only the results on stdout.
    let fields = |v: &serde_json::Value| {
        assert!(v["avg_ts"].as_f64().unwrap() > 0.0 && v["avg_ns"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["samples_ns"].as_array().unwrap().len(), 2);
        assert_eq!(v["backends"], "CPU");
        assert_eq!(v["model_n_params"], 268_098_176);
        (v["n_prompt"].as_u64().unwrap(), v["n_gen"].as_u64().unwrap(), v["n_depth"].as_u64().unwrap())
    };
    let args = ["bench", "-m", &m, "-p", "8", "-n", "2", "-pg", "8,2", "-d", "4", "-t", "1", "-r", "2", "-o"];
    let json: serde_json::Value = serde_json::from_str(&ok(&[&args[..], &["json"]].concat())).unwrap();
    let counts: Vec<_> = json.as_array().unwrap().iter().map(fields).collect();
    assert_eq!(counts, [(8, 0, 4), (0, 2, 4), (8, 2, 4)]);
    let jsonl = ok(&[&args[..], &["jsonl"]].concat());
    let counts: Vec<_> = jsonl.lines().map(|l| fields(&serde_json::from_str(l).unwrap())).collect();
    assert_eq!(counts, [(8, 0, 4), (0, 2, 4), (8, 2, 4)]);
    let csv = ok(&[&args[..], &["csv"]].concat());
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("build_commit,") && lines[0].contains(",n_prompt,n_gen,n_depth,"), "{csv}");
    assert!(lines[3].contains(",\"8\",\"2\",\"4\","), "{csv}");
    let md = ok(&[&args[..], &["md"]].concat());
    assert!(md.starts_with("| model | size | params | backend | threads | test | t/s |"), "{md}");
    assert!(md.contains("| gemma3 Q4_K_M | 235.16 MiB | 268.10 M | CPU | 1 | pp8+tg2 @ d4 |"), "{md}");

    // The user guide's form.
    let guide = dir.path().join("guide.json");
    let out = ok(&[
        "--bench",
        "--prompt",
        "hello",
        "--max-tokens",
        "8",
        "--weights",
        &m,
        "--bench-warmup",
        "1",
        "--bench-iters",
        "2",
        "--bench-json",
        guide.to_str().unwrap(),
    ]);
    assert!(out.contains("decode:") && out.contains("prefill:"), "{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&guide).unwrap()).unwrap();
    for key in ["mean", "p50", "p90"] {
        assert!(report["tok_s"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert_eq!(report["device"]["device"], "cpu");
    assert!(report["device"]["simd"].as_str().is_some());
    assert!(report["threads"].as_u64().unwrap() >= 1);
}

/// gemma.cpp checkpoints through the binary: `convert` to SFP, `info`, `run` (the file's own tokenizer gives
/// the GGUF's prompt ids), `blob-compare`, and `convert` back to an F32 GGUF, which holds the SFP values
/// exactly and so continues the prompt as the SBS file does: the first four greedy tokens, whose margins are
/// 0.6 to 2.5 (the fifth and sixth are near-ties, 0.15 and 0).
#[test]
fn sbs_checkpoints_convert_inspect_run_and_convert_back() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let sbs = dir.path().join("model.sbs");
    let sbs = sbs.to_str().unwrap();
    ok(&["convert", "-i", &m, "-o", sbs, "-t", "sfp"]);
    let info = ok(&["info", "-m", sbs]);
    assert!(
        info.contains("gemma.cpp SBS") && info.contains("weight = sfp") && info.contains("262144 pieces"),
        "{info}"
    );
    assert!(info.contains("qkv_ein_0        sfp   1536 x 640"), "{info}");
    let run = |model: &str| -> serde_json::Value {
        let args = ["-m", model, "run", "-p", "The capital of France is", "-n", "8", "--temperature", "0", "--json"];
        serde_json::from_str(&ok(&args)).expect("run --json prints one object")
    };
    let (from_gguf, from_sbs) = (run(&m), run(sbs));
    assert_eq!(from_sbs["prompt_ids"], from_gguf["prompt_ids"]);
    let gen = |v: &serde_json::Value| v["gen_ids"].as_array().expect("gen_ids").clone();
    assert_eq!(gen(&from_sbs).len(), 8);
    let same = ok(&["blob-compare", sbs, sbs]);
    let counts: Vec<&str> = same.lines().last().unwrap_or("").split_whitespace().collect();
    assert!(counts.len() > 3 && counts[0] == counts[2] && same.contains("common blobs equal"), "{same}");
    let back = dir.path().join("back.gguf");
    let back = back.to_str().unwrap();
    ok(&["convert", "-i", sbs, "-o", back]);
    let from_back = run(back);
    assert_eq!(from_back["prompt_ids"], from_gguf["prompt_ids"]);
    assert_eq!(gen(&from_back)[..4], gen(&from_sbs)[..4], "{from_back} vs {from_sbs}");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // `gemma ... | head -1`: stdout is a pipe whose reading end is already closed, so every write fails
    // with EPIPE (Rust ignores SIGPIPE). That is the reader's choice, not an error, and never a panic.
    let m = model();
    let cases: [&[&str]; 6] = [
        &["info", "-m", &m],
        &["tokenize", "-m", &m, "hello world"],
        &["detokenize", "-m", &m, "2", "9259"],
        &["run", "-m", &m, "-n", "200", "--prompt", "Once upon a time"],
        &["chat", "-m", &m, "-n", "8"],
        &["sysinfo"],
    ];
    for args in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            // For `chat`: a question, then a command; other commands do not read stdin.
            let _ = stdin.write_all(b"Hello.\n/stats\n");
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
        assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// Ctrl-C while `gemma convert` writes: the temporary output is removed and the command exits 130, leaving
/// the folder as it was.
#[test]
fn an_interrupted_conversion_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.sbs");
    let child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["convert", "-i", &model(), "-o", out.to_str().unwrap(), "--type", "f32"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the writer's temporary file is there, then interrupt.
    let start = std::time::Instant::now();
    while std::fs::read_dir(dir.path()).unwrap().count() == 0 {
        assert!(start.elapsed().as_secs() < 60, "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let temp = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().file_name();
    assert!(temp.to_string_lossy().starts_with(".model.sbs.") && temp.to_string_lossy().ends_with(".partial"));
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left in the folder");
}

#[test]
fn a_prompt_cache_skips_the_saved_prompt_and_changes_no_token() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.cache");
    let cache = file.to_str().unwrap();
    let prompt = "The history of lighthouses goes back to ancient times, when fires were lit on hilltops. Today";
    let run = |prompt: &str, extra: &[&str]| -> serde_json::Value {
        let args = [&["run", "-m", &m, "--prompt", prompt, "-n", "8", "--temperature", "0", "--json"][..], extra];
        serde_json::from_str(&ok(&args.concat())).unwrap()
    };
    let fresh = run(prompt, &[]);
    let n = fresh["prompt_ids"].as_array().unwrap().len() as u64;

    // The first run writes the prompt (but its last token); the next one evaluates only that token.
    let first = run(prompt, &["--prompt-cache", cache]);
    assert_eq!(first["prompt_cached"], 0);
    let again = run(prompt, &["--prompt-cache", cache]);
    assert_eq!(again["prompt_cached"], n - 1);
    for v in [&first, &again] {
        assert_eq!(v["gen_ids"], fresh["gen_ids"]);
        assert_eq!(v["prompt_ids"], fresh["prompt_ids"]);
    }

    // A longer prompt reuses the saved start; read-only leaves the file as it was.
    let saved = std::fs::read(&file).unwrap();
    let longer = format!("{prompt}, most");
    let reused = run(&longer, &["--prompt-cache", cache, "--prompt-cache-ro"]);
    assert_eq!(reused["prompt_cached"], n - 1);
    assert_eq!(reused["gen_ids"], run(&longer, &[])["gen_ids"]);
    assert_eq!(std::fs::read(&file).unwrap(), saved);

    // --prompt-cache-all keeps the answer too: a prompt that goes on with it reuses all of that.
    let all = run(prompt, &["--prompt-cache", cache, "--prompt-cache-all"]);
    let text = all["text"].as_str().unwrap();
    let follow = run(&format!("{prompt}{text}"), &["--prompt-cache", cache, "--prompt-cache-ro"]);
    assert!(follow["prompt_cached"].as_u64().unwrap() > n, "{follow}");
    assert_eq!(follow["gen_ids"], run(&format!("{prompt}{text}"), &[])["gen_ids"]);

    // Another model's cache or a damaged file: a clear error, exit 1; the flags need --prompt-cache.
    let o = gemma(&["run", "-m", "smollm2-135m-instruct", "--prompt", "hi", "-n", "1", "--prompt-cache", cache]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("does not fit this model"), "{}", common::stderr(&o));
    std::fs::write(&file, &saved[..saved.len() / 2]).unwrap();
    let o = gemma(&["run", "-m", &m, "--prompt", "hi", "-n", "1", "--prompt-cache", cache]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("cut short"), "{}", common::stderr(&o));
    let o = gemma(&["run", "-m", &m, "--prompt", "hi", "-n", "1", "--prompt-cache-all"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `--context-shift` (llama-completion's flag, with `--keep`): generation goes on past the context, shifting
/// where llama.cpp shifts, with llama.cpp's tokens (`testdata/goldens/gemma3_270m_llama_context_shift.json`,
/// up to its first near-tie); without it, it stops at the context's end. `-n -1` is no limit.
#[test]
fn context_shift_generates_past_the_context_as_llama_cpp_does() {
    let m = model();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_context_shift.json");
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &golden["cases"][0];
    let prompt = case["prompt"].as_str().unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let args = [&["run", "-m", &m, "--prompt", prompt, "--ctx", "256", "--temperature", "0", "--json"][..], extra];
        serde_json::from_str(&ok(&args.concat())).unwrap()
    };
    let shifted = run(&["-n", "640", "--context-shift"]);
    assert_eq!((shifted["stop_reason"].as_str(), shifted["context_shifts"].as_u64()), (Some("length"), Some(4)));
    let ours: Vec<u64> = serde_json::from_value(shifted["gen_ids"].clone()).unwrap();
    let llama: Vec<u64> = serde_json::from_value(case["gen_ids"].clone()).unwrap();
    let margins: Vec<f64> = serde_json::from_value(case["gen_top1_top2_margin"].clone()).unwrap();
    let first_tie = margins.iter().position(|&x| x < 0.1).unwrap_or(margins.len());
    assert_eq!(ours.len(), 640);
    assert_eq!(ours[..first_tie], llama[..first_tie]);

    let plain = run(&["-n", "-1"]);
    assert_eq!(plain["stop_reason"], "context_full");
    // Every position filled, and one more token sampled from the last.
    assert_eq!(plain["gen_ids"].as_array().unwrap().len(), 256 + 1 - case["prompt_ids"].as_array().unwrap().len());
    assert!(plain.get("context_shifts").is_none());

    // The whole prompt kept (--keep -1) and the shifted cache saved: the next run reuses the whole prompt and
    // generates what a fresh run does.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("shifted.cache");
    let cache = cache.to_str().unwrap();
    let saved = run(&["-n", "300", "--context-shift", "--keep", "-1", "--prompt-cache", cache, "--prompt-cache-all"]);
    assert_eq!(saved["context_shifts"], 1);
    let again = run(&["-n", "8", "--prompt-cache", cache, "--prompt-cache-ro"]);
    let n = case["prompt_ids"].as_array().unwrap().len() as u64;
    assert_eq!(again["prompt_cached"], n - 1);
    assert_eq!(again["gen_ids"], run(&["-n", "8"])["gen_ids"]);

    // --keep needs --context-shift; a count below -1 is refused.
    for bad in [&["--keep", "3"][..], &["--context-shift", "-n", "-2"]] {
        let o = gemma(&[&["run", "-m", &m, "--prompt", "hi"][..], bad].concat());
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn spec_type_gives_the_same_tokens_and_reports_its_drafts() {
    let m = model();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["run", "-m", &m, "--prompt", "The capital of France is", "-n", "60", "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(ok(&args).trim()).expect("one JSON object")
    };
    let plain = run(&[]);
    assert!(plain.get("draft_n").is_none());
    for t in ["ngram-simple", "ngram-mod"] {
        let sp = run(&["--spec-type", t]);
        assert_eq!(sp["gen_ids"], plain["gen_ids"], "{t}");
        assert_eq!(sp["text"], plain["text"], "{t}");
        // The greedy continuation loops: drafts are made and kept.
        assert!(sp["draft_n_accepted"].as_u64().unwrap() > 0, "{t}: {sp}");
    }
    // Streamed text and the summary line.
    let o =
        gemma(&["run", "-m", &m, "--prompt", "The capital of France is", "-n", "60", "--spec-type", "ngram-simple"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim_end(), plain["text"].as_str().unwrap().trim_end());
    assert!(String::from_utf8_lossy(&o.stderr).contains("drafted tokens accepted"));
    // Unknown, unimplemented or out-of-range settings: usage errors naming the flag.
    for bad in [
        &["--spec-type", "bogus"][..],
        &["--spec-type", "ngram-map-k"],
        &["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "0"],
    ] {
        let mut args = vec!["run", "-m", &m, "--prompt", "hi", "-n", "1"];
        args.extend_from_slice(bad);
        let o = gemma(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--spec"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `--spec-draft-model` (llama.cpp's flag, alias `--model-draft`): a draft model guesses, the output is the
/// model's own; the settings that cannot work are refused, as the server refuses a draft model.
#[test]
fn a_draft_model_gives_the_same_tokens() {
    let m = model();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["run", "-m", &m, "--prompt", "Once upon a time", "-n", "40", "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(ok(&args).trim()).expect("one JSON object")
    };
    let plain = run(&[]);
    // The model drafting for itself: every greedy draft is kept.
    for flag in ["--spec-draft-model", "--model-draft"] {
        let sp = run(&[flag, &m, "--spec-draft-n-max", "5"]);
        assert_eq!(sp["gen_ids"], plain["gen_ids"], "{flag}");
        let (n, kept) = (sp["draft_n"].as_u64().unwrap(), sp["draft_n_accepted"].as_u64().unwrap());
        assert!(n > 20 && kept == n, "{flag}: {sp}");
    }
    let smollm2 = gemma_fetch::resolve_model("smollm2-135m-instruct").unwrap().display().to_string();
    for (bad, code, wanted) in [
        (vec!["--spec-type", "draft-simple"], 2, "--spec-draft-model"),
        (vec!["--spec-type", "ngram-simple", "--spec-draft-model", m.as_str()], 2, "leave --spec-type out"),
        (vec!["--spec-draft-model", m.as_str(), "--spec-draft-p-min", "1.5"], 2, "--spec-draft-p-min"),
        (vec!["--spec-draft-model", "missing-draft.gguf"], 1, "missing-draft.gguf"),
        (vec!["--spec-draft-model", smollm2.as_str()], 1, "cannot draft"),
    ] {
        let mut args = vec!["run", "-m", &m, "--prompt", "hi", "-n", "1"];
        args.extend_from_slice(&bad);
        let o = gemma(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{bad:?}: {err}");
        assert!(err.contains(wanted) && !err.contains("panicked"), "{bad:?}: {err}");
    }
    let o = gemma(&["serve", "-m", &m, "--spec-draft-model", &m, "--port", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("n-grams only"), "{err}");
}

/// `-ctk`/`-ctv` (llama.cpp's spellings, long forms too) store the cache in the type: the text runs, an unknown
/// type is a usage error naming the allowed ones, and a prompt cache saved with one type is refused by another.
#[test]
fn cache_types_run_and_their_files_keep_the_type() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.cache");
    let cache = file.to_str().unwrap();
    let prompt = "The capital of France is";
    let base = ["run", "-m", &m, "--prompt", prompt, "-n", "6", "--temperature", "0", "--json"];
    let run =
        |extra: &[&str]| -> serde_json::Value { serde_json::from_str(&ok(&[&base[..], extra].concat())).unwrap() };
    let q8 = run(&["-ctk", "q8_0", "-ctv", "q8_0", "--prompt-cache", cache]);
    assert_eq!(q8["gen_ids"].as_array().unwrap().len(), 6);
    let again = run(&["--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--prompt-cache", cache]);
    assert_eq!(again["gen_ids"], q8["gen_ids"]);
    assert!(again["prompt_cached"].as_u64().unwrap() > 0, "{again}");
    let o = gemma(&[&base[..], &["--prompt-cache", cache]].concat());
    assert_eq!(o.status.code(), Some(1));
    let err = common::stderr(&o);
    assert!(err.contains("q8_0/q8_0") && err.contains("f32/f32"), "{err}");
    common::fails_clearly(&[&base[..], &["-ctk", "q3_k"]].concat(), 2, &["q3_k", "f32, f16, bf16, q8_0"]);
}
