//! `gemma perplexity` through the binary on the default model: llama-perplexity's output lines, `--json`,
//! a saved base compared with itself, and clear errors for bad input (nothing left behind).

use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const TEXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/perplexity/lighthouses.txt");

fn model() -> &'static str {
    static MODEL: OnceLock<String> = OnceLock::new();
    MODEL.get_or_init(|| {
        gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model").display().to_string()
    })
}

fn gemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["perplexity", "-m", model(), "--threads", "2"])
        .args(args)
        .output()
        .expect("run gemma")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

fn fails(o: Output) -> (i32, String) {
    assert!(!o.status.success(), "succeeded: {}", String::from_utf8_lossy(&o.stdout));
    (o.status.code().expect("an exit code"), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `gemma perplexity ARGS` fails with exit code `code`, its error naming every piece of `wanted`, no panic.
fn expect_error(args: &[&str], code: i32, wanted: &[&str]) {
    let (got, err) = fails(gemma(args));
    assert_eq!(got, code, "{args:?}: {err}");
    for w in wanted {
        assert!(err.contains(w), "{args:?}: no '{w}' in {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn prints_llama_cpp_lines_and_json() {
    let text = ok(gemma(&["-f", TEXT, "-c", "64", "--chunks", "3"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let running: Vec<f64> = lines[0]
        .split(',')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            let (n, v) = s.strip_prefix('[').and_then(|s| s.split_once(']')).expect("[n]value");
            assert_eq!(n, (i + 1).to_string());
            v.parse().unwrap()
        })
        .collect();
    assert_eq!(running.len(), 3);
    let final_line = lines[1].strip_prefix("Final estimate: PPL = ").expect(lines[1]);
    let (ppl, err) = final_line.split_once(" +/- ").unwrap();
    assert_eq!(ppl, format!("{:.4}", running[2]));
    assert!(err.parse::<f64>().unwrap() > 0.0);

    let json: Value = serde_json::from_str(&ok(gemma(&["-f", TEXT, "-c", "64", "--chunks", "3", "--json"]))).unwrap();
    assert_eq!(
        (json["n_ctx"].as_u64(), json["chunks"].as_u64(), json["scored"].as_u64()),
        (Some(64), Some(3), Some(93))
    );
    assert_eq!(format!("{:.4}", json["ppl"].as_f64().unwrap()), ppl);
    assert_eq!(json["running_ppl"].as_array().unwrap().len(), 3);
}

#[test]
fn a_saved_base_compares_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kld");
    let base = base.to_str().unwrap();
    let saved: Value = serde_json::from_str(&ok(gemma(&[
        "-f",
        TEXT,
        "-c",
        "32",
        "--chunks",
        "2",
        "--kl-divergence-base",
        base,
        "--json",
    ])))
    .unwrap();
    let text = ok(gemma(&["--kl-divergence", "--kl-divergence-base", base]));
    assert!(text.starts_with("chunk             PPL"), "{text}");
    for needle in ["Mean PPL(Q)", "Mean    KLD:", "Maximum KLD:", "Median  KLD:", "RMS Δp    :", "Same top p: 100.000"]
    {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    let json: Value =
        serde_json::from_str(&ok(gemma(&["--kl-divergence", "--kl-divergence-base", base, "--json"]))).unwrap();
    assert_eq!(json["count"].as_u64(), Some(30));
    assert!(json["kld_mean"]["value"].as_f64().unwrap().abs() < 1e-5, "{json}");
    assert!((json["ppl"]["value"].as_f64().unwrap() - saved["ppl"].as_f64().unwrap()).abs() < 1e-9);
    // --kl-divergence reads its tokens from the base: a text or a chunk length is a usage error.
    let (code, err) = fails(gemma(&["--kl-divergence", "--kl-divergence-base", base, "-f", TEXT]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("drop --file"), "{err}");
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kld");
    let base_s = base.to_str().unwrap();

    let (code, err) = fails(gemma(&["-p", "Too short to score.", "--kl-divergence-base", base_s]));
    assert_eq!(code, 1);
    assert!(err.contains("needs at least 1024"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no base file, no temporary file");

    let (code, err) = fails(gemma(&["-f", "/nonexistent/text.txt"]));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent/text.txt"), "{err}");

    let (code, err) = fails(gemma(&["-f", TEXT, "-c", "2"]));
    assert_eq!(code, 2);
    assert!(err.contains("--ctx-size 2 scores nothing"), "{err}");

    let (code, err) = fails(gemma(&[]));
    assert_eq!(code, 2);
    assert!(err.contains("give the text to score"), "{err}");

    let (code, err) = fails(gemma(&["--kl-divergence"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kl-divergence-base"), "{err}");

    std::fs::write(&base, b"not a base file at all").unwrap();
    let (code, err) = fails(gemma(&["--kl-divergence", "--kl-divergence-base", base_s]));
    assert_eq!(code, 1);
    assert!(err.contains("not a file of log-probabilities"), "{err}");

    let (code, err) = fails(gemma(&["--kl-divergence", "--kl-divergence-base", "/nonexistent/base.kld"]));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/base.kld"), "{err}");

    // A base saved by a model with another vocabulary (SmolLM2's 49,152 tokens) cannot be compared.
    let smol = gemma_fetch::resolve_model("smollm2-135m-instruct").expect("SmolLM2 model").display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["perplexity", "-m", &smol, "-f", TEXT, "-c", "16", "--chunks", "2", "--kl-divergence-base", base_s])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, err) = fails(gemma(&["--kl-divergence", "--kl-divergence-base", base_s]));
    assert_eq!(code, 1);
    assert!(err.contains("vocabulary of 49152 tokens; this model has 262144"), "{err}");
}

const HELLASWAG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/hellaswag/everyday-tasks.txt");

/// `--hellaswag` prints what llama-perplexity printed on the same tasks (`testdata/hellaswag/`: 16 tasks
/// written for this test in HellaSwag's format; llama-perplexity's output recorded from
/// `llama-perplexity -m gemma-3-270m-q4_k_m.gguf -f everyday-tasks.txt --hellaswag -t 2`): the same tasks in
/// the same random order, right and wrong alike, so the same running accuracy after every task.
#[test]
fn hellaswag_scores_as_llama_perplexity() {
    let text = ok(gemma(&["-f", HELLASWAG, "--hellaswag"]));
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/hellaswag/everyday-tasks.llama-perplexity.txt"
    ))
    .unwrap();
    assert_eq!(text, want);

    // the first 5 tasks of the random order are llama-perplexity's first 5 whatever the count asked
    let text = ok(gemma(&["-f", HELLASWAG, "--hellaswag", "--hellaswag-tasks", "5", "--json"]));
    let report: Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(report["tasks"], 5);
    // llama-perplexity's fifth line: 20%
    assert_eq!((report["correct"].as_u64(), report["acc_norm"].as_f64()), (Some(1), Some(20.0)));
    let per_task = report["per_task"].as_array().unwrap();
    assert!(per_task[4]["context"].as_str().unwrap().starts_with("Making coffee"), "{per_task:?}");
}

#[test]
fn hellaswag_bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "ctx\n1\na\nb\nc\n").unwrap();
    let gold = dir.path().join("gold.txt");
    std::fs::write(&gold, "ctx\nB\na\nb\nc\nd\n").unwrap();
    let (short, gold) = (short.to_str().unwrap(), gold.to_str().unwrap());
    let cases: [(&[&str], i32, &[&str]); 6] = [
        (&["--hellaswag"], 2, &["-f FILE"]),
        (&["-f", HELLASWAG, "--hellaswag", "--hellaswag-tasks", "0"], 2, &["at least 1"]),
        (&["-f", short, "--hellaswag"], 1, &["6 lines per task", "5 lines"]),
        (&["-f", gold, "--hellaswag"], 1, &["'B'", "not 0, 1, 2 or 3"]),
        (&["-f", HELLASWAG, "--hellaswag", "-c", "8"], 1, &["more than the context of 8"]),
        (&["-p", "text", "--hellaswag"], 2, &["--prompt"]),
    ];
    for (args, code, wanted) in cases {
        expect_error(args, code, wanted);
    }
}

const WINOGRANDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/winogrande/everyday-tasks.csv");

/// `--winogrande` in llama-perplexity's format: a line per task (running accuracy, the two scores, the choice,
/// the answer) for all 26 tasks (llama-perplexity's reader loses a file's last line; this does not). The
/// scores themselves are checked against llama-perplexity in `gemma-core/tests/winogrande.rs`.
#[test]
fn winogrande_prints_llama_perplexity_lines() {
    let text = ok(gemma(&["-f", WINOGRANDE, "--winogrande"]));
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 26, "{text}");
    let mut correct = 0;
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 6, "{line}");
        assert_eq!(f[0], (i + 1).to_string());
        correct += usize::from(f[4] == f[5]);
        assert_eq!(f[1], format!("{:.4}", 100.0 * correct as f64 / (i + 1) as f64), "{line}");
        for score in &f[2..4] {
            let (whole, decimals) = score.split_once('.').expect("a decimal point");
            assert!(whole.starts_with('-') && decimals.len() == 6, "{line}");
        }
    }
    assert!(text.ends_with("\n\n\n"), "llama-perplexity's two empty lines at the end");

    let text = ok(gemma(&["-f", WINOGRANDE, "--winogrande", "--winogrande-tasks", "3", "--json"]));
    let report: Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!((report["tasks"].as_u64(), report["per_task"].as_array().map(Vec::len)), (Some(3), Some(3)));
}

#[test]
fn winogrande_bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.csv");
    std::fs::write(&none, "index,sentence,option1,option2,answer\n0,no blank,a,b,1\n").unwrap();
    let some = dir.path().join("some.csv");
    std::fs::write(&some, "0,A _ b.,x,y,1\n1,no blank,a,b,1\n2,A _ c.,x,y,5\n").unwrap();
    let (none, some) = (none.to_str().unwrap(), some.to_str().unwrap());
    let (code, err) = fails(gemma(&["--winogrande"]));
    assert!(code == 2 && err.contains("-f FILE"), "{err}");
    let (code, err) = fails(gemma(&["-f", none, "--winogrande"]));
    assert!(code == 1 && err.contains("no task could be read") && err.contains("2 lines skipped"), "{err}");
    let (code, err) = fails(gemma(&["-f", WINOGRANDE, "--winogrande", "--hellaswag"]));
    assert!(code == 2 && err.contains("--hellaswag"), "{err}");
    // unreadable lines are reported and skipped, as llama-perplexity skips them
    let o = gemma(&["-f", some, "--winogrande"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let text = ok(o);
    assert_eq!(text.lines().filter(|l| !l.is_empty()).count(), 1, "{text}");
    assert!(err.contains("some.csv:2 skipped: the sentence has no _"), "{err}");
    assert!(err.contains("some.csv:3 skipped: the answer is not 1 or 2"), "{err}");
}

const MULTIPLE_CHOICE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/multiple-choice/everyday-questions.bin");

/// `--multiple-choice` on llama.cpp's binary task format (`everyday-questions.bin`: 20 questions written for
/// this test, made from `everyday-questions.txt` by `scripts/multiple_choice_file.py`) prints llama-perplexity's
/// table, character for character (recorded from `llama-perplexity -m gemma-3-270m-q4_k_m.gguf -f
/// everyday-questions.bin --multiple-choice -t 2 -np 8`, its two lines of progress dots left out).
#[test]
fn multiple_choice_scores_as_llama_perplexity() {
    let bytes = std::fs::read(MULTIPLE_CHOICE).unwrap();
    let tasks = gemma_core::multiple_choice::parse(&bytes).expect("the file reads");
    assert_eq!(gemma_core::multiple_choice::to_bytes(&tasks), bytes, "our writer gives the script's bytes");
    let text = ok(gemma(&["-f", MULTIPLE_CHOICE, "--multiple-choice"]));
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/multiple-choice/everyday-questions.llama-perplexity.txt"
    ))
    .unwrap();
    assert_eq!(text, want);
    let text = ok(gemma(&["-f", MULTIPLE_CHOICE, "--multiple-choice", "--multiple-choice-tasks", "4", "--json"]));
    let report: Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(report["per_task"].as_array().map(Vec::len), Some(4));
}

#[test]
fn multiple_choice_bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(MULTIPLE_CHOICE).unwrap();
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let text = dir.path().join("text.bin");
    std::fs::write(&text, "just some text that is not a task file\n").unwrap();
    let empty_answer = dir.path().join("empty.bin");
    let mut tasks = gemma_core::multiple_choice::parse(&bytes).unwrap();
    tasks[2].mc1.answers[1].clear();
    std::fs::write(&empty_answer, gemma_core::multiple_choice::to_bytes(&tasks)).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cases: [(Vec<String>, i32, &[&str]); 4] = [
        (vec!["--multiple-choice".into()], 2, &["-f FILE"]),
        (vec!["-f".into(), path(&cut), "--multiple-choice".into()], 1, &["cut or damaged", "past the end"]),
        (vec!["-f".into(), path(&text), "--multiple-choice".into()], 1, &["cut or damaged"]),
        (vec!["-f".into(), path(&empty_answer), "--multiple-choice".into()], 1, &["task 3", "an empty answer"]),
    ];
    for (args, code, wanted) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_error(&args, code, wanted);
    }
}

/// `text` with every decimal number replaced by `#`, and the numbers: two outputs that differ only in their
/// values give the same mask.
fn mask_decimals(text: &str) -> (String, Vec<f64>) {
    let (mut masked, mut values, mut run) = (String::new(), Vec::new(), String::new());
    for c in text.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_digit() || c == '.' || (c == '-' && run.is_empty()) {
            run.push(c);
            continue;
        }
        if run.contains('.') {
            masked.push('#');
            values.push(run.parse().unwrap_or_else(|_| panic!("{run} in {text}")));
        } else {
            masked.push_str(&run);
        }
        run.clear();
        masked.push(c);
    }
    masked.pop();
    (masked, values)
}

/// `--ppl-stride` and `--ppl-output-type 1` print what llama-perplexity printed on stdout for the same settings
/// (`testdata/perplexity/stride/`, recorded by `scripts/llama_perplexity_stride_goldens.py`, flash attention on
/// and off): character for character but for the values, which land inside the range llama.cpp's two
/// attention paths span, widened by as much as those two differ at most in the run (at least 2%; few tokens
/// per window, see `gemma-core/tests/perplexity.rs`). Without a stride, output type 1's lines end with the mean and standard
/// error of -ln p, and every chunk of a group run side by side shows the group's first token (`-b 128`: two
/// chunks of 64 per group), as llama.cpp's do; our final estimate follows its empty line.
#[test]
fn output_types_print_llama_perplexity_lines() {
    let settings: [(&str, &[&str]); 3] = [
        ("c128-stride32", &["-c", "128", "--ppl-stride", "32", "--chunks", "6"]),
        ("c64-stride16-type1", &["-c", "64", "--ppl-stride", "16", "--chunks", "8", "--ppl-output-type", "1"]),
        ("c64-type1", &["-c", "64", "-b", "128", "--chunks", "4", "--ppl-output-type", "1"]),
    ];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/perplexity/stride");
    for (name, args) in settings {
        let mut cmd = vec!["-f", TEXT];
        cmd.extend_from_slice(args);
        let ours = ok(gemma(&cmd));
        let read = |fa: &str| std::fs::read_to_string(format!("{dir}/{name}.fa-{fa}.txt")).unwrap();
        let (on, off) = (read("on"), read("off"));
        let (mut ours_mask, ours_values) = mask_decimals(&ours);
        if !args.contains(&"--ppl-stride") {
            // llama-perplexity's final estimate goes to stderr, ours after its empty line on stdout
            let (lines, last) = ours_mask.trim_end().rsplit_once('\n').unwrap();
            assert_eq!(last, "Final estimate: PPL = # +/- #", "{ours}");
            ours_mask = format!("{lines}\n\n");
        }
        let (on_mask, on_values) = mask_decimals(&on);
        let (off_mask, off_values) = mask_decimals(&off);
        assert_eq!(on_mask, off_mask, "{name}: llama's two runs print alike");
        assert_eq!(ours_mask, on_mask, "{name}: ours\n{ours}\nllama.cpp's\n{on}");
        assert_eq!(ours_values.len() - on_values.len(), usize::from(!args.contains(&"--ppl-stride")) * 2);
        let slack =
            1.0 + on_values.iter().zip(&off_values).map(|(a, b)| a.max(*b) / a.min(*b) - 1.0).fold(0.02, f64::max);
        for (i, (&v, (&a, &b))) in ours_values.iter().zip(on_values.iter().zip(&off_values)).enumerate() {
            let (lo, hi) = (a.min(b) / slack, a.max(b) * slack);
            assert!((lo..=hi).contains(&v), "{name} value {i}: {v} outside {lo}..{hi}\n{ours}");
        }
    }
}

#[test]
fn strided_bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kld");
    let base = base.to_str().unwrap();
    let cases: [(&[&str], i32, &[&str]); 7] = [
        (
            &["-f", TEXT, "-c", "64", "--ppl-stride", "600"],
            2,
            &["--ppl-stride 600", "window of 512 tokens", "1 to 511"],
        ),
        (&["-f", TEXT, "-c", "64", "--ppl-stride", "16", "--hellaswag"], 2, &["--hellaswag"]),
        (&["-f", TEXT, "--ppl-stride", "16", "--kl-divergence-base", base], 2, &["--kl-divergence-base"]),
        (&["-p", "Too short.", "-c", "64", "--ppl-stride", "16"], 1, &["windows of 256 tokens", "at least 512"]),
        (&["-f", TEXT, "--ppl-output-type", "2"], 2, &["--ppl-output-type"]),
        (&["-f", TEXT, "--ppl-output-type", "1", "--json"], 2, &["--json"]),
        (&["-f", TEXT, "-c", "2", "--ppl-stride", "1"], 2, &["scores nothing"]),
    ];
    for (args, code, wanted) in cases {
        expect_error(args, code, wanted);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // --json reports the stride and the window
    let json: Value =
        serde_json::from_str(&ok(gemma(&["-f", TEXT, "-c", "64", "--ppl-stride", "16", "--chunks", "2", "--json"])))
            .unwrap();
    assert_eq!(
        (json["n_ctx"].as_u64(), json["stride"].as_u64(), json["scored"].as_u64()),
        (Some(256), Some(16), Some(32))
    );
}
