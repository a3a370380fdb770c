//! llama.cpp's sampling flags on the `gemma` binary, checked by their observable effect on the real
//! default model (Gemma 3 270M), and `gemma run`/`tokenize`/`bench` on SmolLM2 (llama architecture).

use std::process::{Command, Output};

use serde_json::Value;

fn gemma_model() -> String {
    gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model").display().to_string()
}

fn gemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).args(args).output().expect("run gemma")
}

fn ok(args: &[&str]) -> String {
    let o = gemma(args);
    assert!(o.status.success(), "gemma {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// `gemma run -m MODEL --prompt PROMPT -n N --json EXTRA...`, parsed.
fn run_json(model: &str, prompt: &str, n: usize, extra: &[&str]) -> Value {
    let n = n.to_string();
    let mut args = vec!["run", "-m", model, "--prompt", prompt, "-n", &n, "--json"];
    args.extend_from_slice(extra);
    let out = ok(&args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("stdout of {args:?} is not one JSON object ({e}): {out}"))
}

fn ids(v: &Value) -> Vec<u64> {
    v["gen_ids"].as_array().expect("gen_ids").iter().map(|x| x.as_u64().expect("id")).collect()
}

fn text(v: &Value) -> String {
    v["text"].as_str().expect("text").to_string()
}

/// Asserts a usage error (exit code 2) whose message names `flag`.
fn usage_error(args: &[&str], flag: &str) {
    let o = gemma(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "gemma {args:?} should be a usage error; stderr: {stderr}");
    assert!(stderr.contains(flag), "the message of gemma {args:?} should name {flag}: {stderr}");
    assert!(o.stdout.is_empty(), "nothing on stdout for a usage error");
}

const STORY: &str = "Once upon a time, in a small village by the sea,";

#[test]
fn stop_strings_cut_the_text_exactly_before_the_first_match() {
    let m = gemma_model();
    let full = run_json(&m, STORY, 40, &[]);
    let full_text = text(&full);
    assert_eq!(full["stop_reason"], "length", "40 greedy tokens of a story do not end early: {full_text:?}");
    // A word from the middle of the greedy text (its first occurrence is what must stop generation).
    let word = full_text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.len() >= 4)
        .nth(2)
        .unwrap_or_else(|| panic!("no third word of 4+ letters in {full_text:?}"))
        .to_string();
    let at = full_text.find(&word).expect("word is in the text");
    assert!(at > 0);
    let expected = &full_text[..at];

    // Repeatable; a stop string that never appears changes nothing.
    let stopped = run_json(&m, STORY, 40, &["--stop", "never appears here", "--stop", &word]);
    assert_eq!(text(&stopped), expected);
    assert_eq!(stopped["stop_reason"], "stop");
    assert_eq!(stopped["stop_string"], word.as_str());
    assert!(ids(&stopped).len() < ids(&full).len(), "generation ended at the stop string");
    assert_eq!(ids(&stopped)[..], ids(&full)[..ids(&stopped).len()], "same greedy tokens up to the stop");

    // llama.cpp's name (-r/--reverse-prompt) and the streamed output (text held back, never shown).
    let streamed = ok(&["run", "-m", &m, "--prompt", STORY, "-n", "40", "-r", &word]);
    assert_eq!(streamed, format!("{expected}\n"));

    // A stop string across token boundaries: the two words around a space.
    let words: Vec<&str> = full_text.split(' ').filter(|w| !w.is_empty()).collect();
    let pair = format!("{} {}", words[3], words[4]);
    let at = full_text.find(&pair).expect("pair is in the text");
    let stopped = run_json(&m, STORY, 40, &["--reverse-prompt", &pair]);
    assert_eq!(text(&stopped), &full_text[..at]);
}

#[test]
fn logit_bias_bans_and_forces_tokens() {
    let m = gemma_model();
    let prompt = "The capital of France is";
    let base = run_json(&m, prompt, 4, &["--logprobs", "2"]);
    let first = ids(&base)[0];
    let second_best = base["logprobs"][0]["top_logprobs"][1]["id"].as_u64().expect("second-best id");
    assert_ne!(first, second_best);

    // Banning the greedy first token makes the runner-up the greedy choice.
    let ban = format!("{first}-inf");
    let banned = run_json(&m, prompt, 4, &["--logit-bias", &ban]);
    assert_eq!(ids(&banned)[0], second_best, "banned {first}");
    assert!(!ids(&banned).contains(&first), "a banned token never comes back");

    // A large positive bias forces a token that the model would not choose (short flag, repeatable).
    let forced_id = ids(&base)[2];
    assert_ne!(forced_id, first);
    let force = format!("{forced_id}+100");
    let forced = run_json(&m, prompt, 3, &["-l", &force, "-l", &ban]);
    assert_eq!(ids(&forced), vec![forced_id; 3]);
}

#[test]
fn ignore_eos_generates_max_tokens() {
    // SmolLM2 Instruct answers a ChatML turn briefly and ends it with <|im_end|>.
    let smol = "smollm2-135m-instruct";
    let prompt = "<|im_start|>user\nSay only the word yes.<|im_end|>\n<|im_start|>assistant\n";
    let max = 24;
    let short = run_json(smol, prompt, max, &[]);
    let n = ids(&short).len();
    assert_eq!(short["stop_reason"], "stop", "the model ends its turn: {short}");
    assert!(n < max, "{n} tokens");
    let long = run_json(smol, prompt, max, &["--ignore-eos"]);
    assert_eq!(ids(&long).len(), max);
    assert_eq!(long["stop_reason"], "length");
    assert_eq!(ids(&long)[..n], ids(&short)[..], "the same answer, then more instead of the end of turn");

    // Gemma 3 270M is a base model that rarely ends by itself: a bias that makes its end-of-generation
    // tokens (<eos> = 1, <end_of_turn> = 106) win at once ends it with no text; --ignore-eos bans both
    // (the ban outweighs any bias) and gives the plain greedy text at full length.
    let m = gemma_model();
    let greedy = run_json(&m, STORY, 12, &[]);
    for eog in ["1+100", "106+100"] {
        let ended = run_json(&m, STORY, 12, &["-l", eog]);
        assert!(ids(&ended).is_empty() && text(&ended).is_empty(), "{eog}: {ended}");
        assert_eq!(ended["stop_reason"], "stop");
    }
    let ignored = run_json(&m, STORY, 12, &["-l", "1+100", "-l", "106+100", "--ignore-eos"]);
    assert_eq!(ids(&ignored), ids(&greedy));
    assert_eq!(ignored["stop_reason"], "length");
}

#[test]
fn penalties_change_a_repetitive_greedy_text() {
    let m = gemma_model();
    let prompt = "Repeat after me: la la la la la la la la la la la la";
    let n = 24;
    let greedy = run_json(&m, prompt, n, &[]);
    let count_distinct = |v: &Value| {
        let mut i = ids(v);
        i.sort_unstable();
        i.dedup();
        i.len()
    };
    assert!(count_distinct(&greedy) * 3 <= n, "the greedy text repeats itself: {greedy}");

    let penalized = run_json(&m, prompt, n, &["--repeat-penalty", "1.5"]);
    assert_ne!(text(&penalized), text(&greedy));
    assert!(count_distinct(&penalized) > count_distinct(&greedy), "fewer repeats: {penalized}");

    // A window of 0 turns the penalties off; presence and frequency penalties also break the loop.
    let off = run_json(&m, prompt, n, &["--repeat-penalty", "1.5", "--repeat-last-n", "0"]);
    assert_eq!(ids(&off), ids(&greedy));
    for flags in [["--presence-penalty", "5"], ["--frequency-penalty", "1"]] {
        let v = run_json(&m, prompt, n, &flags);
        assert_ne!(ids(&v), ids(&greedy), "{flags:?}");
    }
    let whole_context = run_json(&m, prompt, n, &["--repeat-penalty", "1.5", "--repeat-last-n", "-1"]);
    assert_ne!(ids(&whole_context), ids(&greedy));
}

#[test]
fn mirostat_is_random_but_the_same_for_the_same_seed() {
    let m = gemma_model();
    let n = 16;
    let runs: Vec<Vec<u64>> = ["1", "1", "2", "3"]
        .iter()
        .map(|seed| ids(&run_json(&m, STORY, n, &["--mirostat", "2", "--seed", seed])))
        .collect();
    assert_eq!(runs[0], runs[1], "same seed, same tokens");
    assert!(runs[1..].iter().any(|r| r != &runs[0]), "other seeds draw other tokens: {runs:?}");
    // Mirostat 1 with its learning rate and target entropy, deterministic by seed too.
    let v1 = ["--mirostat", "1", "--mirostat-lr", "0.2", "--mirostat-ent", "3", "--seed", "7"];
    assert_eq!(ids(&run_json(&m, STORY, n, &v1)), ids(&run_json(&m, STORY, n, &v1)));
}

/// The DRY goldens: llama.cpp's greedy tokens with DRY on (`scripts/llama_dry_goldens.py`).
fn dry_goldens() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_dry.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("DRY goldens")).expect("DRY goldens json")
}

fn golden_ids(v: &Value, field: &str, n: usize) -> Vec<u64> {
    v[field].as_array().expect("ids").iter().take(n).map(|x| x.as_u64().expect("id")).collect()
}

#[test]
fn dry_flags_follow_llama_cpp() {
    let m = gemma_model();
    let goldens = dry_goldens();
    let prompt = |g: &Value| g["prompt"].as_str().expect("prompt").to_string();
    // Case 0: default breakers, multiplier 0.8; its first near-tie after DRY is at step 8.
    let cat = &goldens[0];
    let dry = run_json(&m, &prompt(cat), 8, &["--dry-multiplier", "0.8"]);
    assert_eq!(ids(&dry), golden_ids(cat, "gen_ids", 8), "{dry}");
    let plain = run_json(&m, &prompt(cat), 8, &[]);
    assert_eq!(ids(&plain), golden_ids(cat, "no_dry_gen_ids", 8));
    assert_ne!(ids(&dry), ids(&plain));
    // The switches: a window of 0, a chain without DRY (names or letters), and Mirostat turn it off; a base
    // below 1 is ignored (the default 1.75 stays), as in llama.cpp.
    for off in
        [&["--dry-penalty-last-n", "0"][..], &["--samplers", "penalties;top_k;temperature"], &["--sampling-seq", "ekt"]]
    {
        let v = run_json(&m, &prompt(cat), 8, &[&["--dry-multiplier", "0.8"][..], off].concat());
        assert_eq!(ids(&v), ids(&plain), "{off:?}");
    }
    for on in [&["--dry-base", "0.5"][..], &["--sampling-seq", "edkt"], &["--samplers", "dry;top_k"]] {
        let v = run_json(&m, &prompt(cat), 8, &[&["--dry-multiplier", "0.8"][..], on].concat());
        assert_eq!(ids(&v), ids(&dry), "{on:?}");
    }

    // Cases 1 and 2: one prompt, "love you" (across two tokens) or a newline as the only breaker.
    let love = &goldens[1];
    let common = ["--dry-multiplier", "1", "--dry-base", "1.5", "--dry-allowed-length", "2"];
    let with_breaker =
        run_json(&m, &prompt(love), 12, &[&common[..], &["--dry-sequence-breaker", "love you"]].concat());
    assert_eq!(ids(&with_breaker), golden_ids(love, "gen_ids", 12));
    // `\n` is an escape, as in llama.cpp; the first breaker given replaces the defaults.
    let newline = run_json(&m, &prompt(love), 4, &[&common[..], &["--dry-sequence-breaker", "\\n"]].concat());
    assert_eq!(ids(&newline), golden_ids(&goldens[2], "gen_ids", 4));
    // "none" clears the breakers named before it: no breaker at all, so DRY acts again.
    let none = run_json(
        &m,
        &prompt(love),
        4,
        &[&common[..], &["--dry-sequence-breaker", "love you", "--dry-sequence-breaker", "none"]].concat(),
    );
    assert_ne!(ids(&none), golden_ids(love, "gen_ids", 4));
}

#[test]
fn sampler_chain_order_and_truncating_samplers() {
    let m = gemma_model();
    let n = 8;
    let greedy = ids(&run_json(&m, STORY, n, &[]));
    let base = run_json(&m, STORY, 1, &["--logprobs", "2"]);
    let second_best = base["logprobs"][0]["top_logprobs"][1]["id"].as_u64().expect("second-best id");

    // The names and the letters give the same chain.
    let by_names = run_json(&m, STORY, n, &["--top-k", "40", "--samplers", "top_k;temperature", "--seed", "4"]);
    let by_letters = run_json(&m, STORY, n, &["--top-k", "40", "--sampling-seq", "kt", "--seed", "4"]);
    let by_alias = run_json(&m, STORY, n, &["--top-k", "40", "--sampler-seq", "kt", "--seed", "4"]);
    assert_eq!(ids(&by_names), ids(&by_letters));
    assert_eq!(ids(&by_names), ids(&by_alias));
    // Without top-k in the chain, --top-k 1 no longer makes it greedy: some seed draws another token.
    let drawn: Vec<Vec<u64>> =
        ["1", "2", "3"].iter().map(|s| ids(&run_json(&m, STORY, n, &["--sampling-seq", "t", "--seed", s]))).collect();
    assert!(drawn.iter().any(|d| d != &greedy), "{drawn:?}");

    // A tiny top-n-sigma keeps only the best token: greedy whatever the seed (tiny: step 4 has two tokens 0.002
    // apart).
    for seed in ["1", "2"] {
        let v = run_json(&m, STORY, n, &["--top-k", "0", "--top-nsigma", "0.000001", "--seed", seed]);
        assert_eq!(ids(&v), greedy, "top-nsigma, seed {seed}");
    }
    // A tiny typical-p keeps one token, so the seed no longer matters.
    let typical: Vec<Vec<u64>> = ["1", "2"]
        .iter()
        .map(|s| ids(&run_json(&m, STORY, n, &["--top-k", "0", "--typical", "0.0001", "--seed", s])))
        .collect();
    assert_eq!(typical[0], typical[1]);
    // XTC always on with threshold 0 removes the best of the top two: the runner-up is chosen.
    let xtc =
        run_json(&m, STORY, 1, &["--top-k", "2", "--xtc-probability", "1", "--xtc-threshold", "0", "--seed", "1"]);
    assert_eq!(ids(&xtc), vec![second_best]);
}

#[test]
fn logprobs_in_run_json() {
    let m = gemma_model();
    let v = run_json(&m, "The capital of France is", 5, &["--logprobs", "3"]);
    let gen = ids(&v);
    let lps = v["logprobs"].as_array().expect("logprobs array");
    assert_eq!(lps.len(), gen.len());
    for (lp, &id) in lps.iter().zip(&gen) {
        assert_eq!(lp["id"].as_u64(), Some(id));
        let chosen = lp["logprob"].as_f64().expect("chosen logprob");
        let top = lp["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3);
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().expect("logprob")).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "best first: {values:?}");
        assert!(values[0] <= 0.0 && values.iter().map(|x| x.exp()).sum::<f64>() <= 1.0 + 1e-4);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["id"].as_u64(), Some(id));
        assert!((chosen - values[0]).abs() < 1e-6);
        assert!(top[0]["token"].is_string());
    }
    let piece: String = lps.iter().map(|lp| lp["token"].as_str().expect("token text")).collect();
    assert_eq!(piece, text(&v), "the token texts spell the text");
    // Without the flag there is no logprobs field; without --json the flag is refused.
    assert!(run_json(&m, "The capital of France is", 2, &[])["logprobs"].is_null());
    let o = gemma(&["run", "-m", &m, "--prompt", "x", "--logprobs", "2"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_values_are_usage_errors_naming_the_flag() {
    let m = gemma_model();
    let run = |extra: &[&str], flag: &str| {
        let mut args = vec!["run", "-m", m.as_str(), "--prompt", "hi", "-n", "2"];
        args.extend_from_slice(extra);
        usage_error(&args, flag);
    };
    run(&["--repeat-penalty", "0"], "--repeat-penalty");
    run(&["--seed", "one"], "--seed");
    run(&["--dynatemp-range", "inf"], "--dynatemp-range");
    run(&["--dynatemp-exp", "nan"], "--dynatemp-exp");
    run(&["--repeat-penalty", "inf"], "--repeat-penalty");
    run(&["--repeat-last-n", "-2"], "--repeat-last-n");
    run(&["--presence-penalty", "nan"], "--presence-penalty");
    run(&["--frequency-penalty", "inf"], "--frequency-penalty");
    run(&["--mirostat", "3"], "--mirostat");
    run(&["--mirostat", "2", "--mirostat-lr", "nan"], "--mirostat-lr");
    run(&["--mirostat", "2", "--mirostat-ent", "inf"], "--mirostat-ent");
    run(&["--samplers", "top_k;banana"], "--samplers");
    run(&["--sampling-seq", "kq"], "--sampling-seq");
    run(&["--logit-bias", "15043"], "--logit-bias");
    run(&["-l", "abc+1"], "--logit-bias");
    run(&["--logit-bias", "5+inf"], "--logit-bias");
    run(&["--logit-bias", "99999999-inf"], "--logit-bias");
    run(&["--typical", "nan"], "--typical");
    run(&["--top-nsigma", "nan"], "--top-nsigma");
    run(&["--xtc-probability", "1.5"], "--xtc-probability");
    run(&["--xtc-threshold", "nan"], "--xtc-threshold");
    run(&["--min-p", "2"], "--min-p");
    run(&["--top-p", "0"], "--top-p");
    run(&["--stop", ""], "--stop");
    run(&["--samplers", "top_k", "--sampling-seq", "k"], "--sampling-seq");
    run(&["--dry-multiplier", "nan"], "--dry-multiplier");
    run(&["--dry-multiplier", "0.8", "--dry-base", "inf"], "--dry-base");
    run(&["--dry-penalty-last-n", "-2"], "--dry-penalty-last-n");
    run(&["--dry-allowed-length", "many"], "--dry-allowed-length");
    // The same checks guard `gemma chat` before it reads anything.
    usage_error(&["chat", "-m", &m, "--repeat-penalty", "-1"], "--repeat-penalty");
}

#[test]
fn help_documents_the_sampling_flags() {
    let help = ok(&["run", "--help"]);
    for flag in [
        "--repeat-penalty",
        "--repeat-last-n",
        "--presence-penalty",
        "--frequency-penalty",
        "--mirostat",
        "--mirostat-lr",
        "--mirostat-ent",
        "--samplers",
        "--sampling-seq",
        "--logit-bias",
        "--typical",
        "--top-nsigma",
        "--xtc-probability",
        "--xtc-threshold",
        "--dry-multiplier",
        "--dry-base",
        "--dry-allowed-length",
        "--dry-penalty-last-n",
        "--dry-sequence-breaker",
        "--dynatemp-range",
        "--dynatemp-exp",
        "--ignore-eos",
        "--reverse-prompt",
        "--stop",
        "--logprobs",
    ] {
        assert!(help.contains(flag), "`gemma run --help` lacks {flag}");
    }
}

/// The SmolLM2 goldens (llama.cpp's greedy continuations) from the test data.
fn smollm2_golden(prompt: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/smollm2_goldens_shared.json");
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("json");
    all.into_iter().find(|c| c["prompt"] == prompt).expect("golden case")
}

#[test]
fn smollm2_run_matches_llama_cpp_up_to_the_first_near_tie() {
    let prompt = "The capital of France is";
    let golden = smollm2_golden(prompt);
    let margins: Vec<f64> =
        golden["gen_top1_top2_margin"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
    let gold_ids: Vec<u64> = golden["gen_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect();
    // Two correct engines agree until llama.cpp's best two tokens are near-tied (goldens README, rule 3).
    let agree = margins.iter().position(|&m| m < 0.75).unwrap_or(margins.len());
    assert!(agree >= 3, "the golden has a usable prefix");

    // By its known name, resolved from the model cache.
    let v = run_json("smollm2-135m-instruct", prompt, agree, &[]);
    assert_eq!(v["prompt_ids"], golden["prompt_ids"], "no BOS for SmolLM2, ids as llama.cpp's");
    assert_eq!(ids(&v), gold_ids[..agree]);
    let gold_text = golden["gen_text"].as_str().unwrap();
    assert!(!text(&v).is_empty() && gold_text.starts_with(&text(&v)), "{:?} vs {gold_text:?}", text(&v));

    // Streamed as plain text too; the sampling flags work on the llama path (stop string inside the text).
    let streamed = ok(&["run", "-m", "smollm2-135m-instruct", "--prompt", prompt, "-n", &agree.to_string()]);
    assert_eq!(streamed, format!("{}\n", text(&v)));
    let stopped = run_json("smollm2-135m-instruct", prompt, agree, &["--stop", "."]);
    assert_eq!(text(&stopped), gold_text[..gold_text.find('.').unwrap()]);
    // llama.cpp's escapes: a backslash-n typed in a shell is a newline.
    let stopped = run_json("smollm2-135m-instruct", prompt, agree, &["-r", r"\n"]);
    assert_eq!(text(&stopped), gold_text[..gold_text.find('\n').unwrap()]);
}

#[test]
fn smollm2_tokenize_and_bench() {
    let golden = smollm2_golden("Once upon a time, in a small village by the sea,");
    let out = ok(&["tokenize", "-m", "smollm2-135m-instruct", golden["prompt"].as_str().unwrap()]);
    let got: Value = serde_json::from_str(out.trim()).expect("JSON ids");
    assert_eq!(got, golden["prompt_ids"]);

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let json_arg = json.to_str().unwrap();
    let out = ok(&["bench", "-m", "smollm2-135m-instruct", "-p", "16", "-n", "4", "-r", "1", "--json", json_arg]);
    assert!(out.contains("pp16") && out.contains("tg4"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["tokens_per_second"]["mean"].as_f64().is_some_and(|t| t > 0.0)), "{report}");
}

/// llama.cpp's seeds: `-1` is a random seed; a seed keeps only its low 32 bits, as llama.cpp's `uint32_t`.
#[test]
fn seeds_read_as_llama_cpp_reads_them() {
    let m = gemma_model();
    let sampled = |seed: &str| ids(&run_json(&m, STORY, 16, &["--temperature", "1", "--top-k", "0", "--seed", seed]));
    assert_eq!(sampled("5"), sampled("4294967301"), "2^32 + 5 is seed 5");
    let random: Vec<_> = (0..3).map(|_| sampled("-1")).collect();
    assert!(random.iter().any(|r| r != &random[0]), "-1 draws a new seed each run: {random:?}");
}

/// Dynamic temperature samples even from temperature 0 (llama.cpp: a temperature between 0 and the range),
/// and is as reproducible by seed as everything else.
#[test]
fn dynamic_temperature_samples_from_zero_and_follows_the_seed() {
    let m = gemma_model();
    let greedy = ids(&run_json(&m, STORY, 8, &["--temperature", "0"]));
    let dynamic = |seed: &str| {
        ids(&run_json(&m, STORY, 8, &["--temperature", "0", "--top-k", "0", "--dynatemp-range", "1.5", "--seed", seed]))
    };
    let runs: Vec<_> = ["1", "2", "3", "4"].iter().map(|s| dynamic(s)).collect();
    assert!(runs.iter().any(|r| r != &greedy), "a range above 0 samples: {runs:?}");
    assert_eq!(runs[0], dynamic("1"), "same seed, same tokens");
}

/// `--grammar`, `--grammar-file`, `--json-schema` and `--json-schema-file` constrain the output; a bad grammar
/// or schema is a usage error naming it.
#[test]
fn grammars_and_json_schemas_constrain_the_output() {
    let m = gemma_model();
    let yes_no = run_json(&m, "Is the sky blue?", 8, &["--temp", "0", "--grammar", r#"root ::= ("yes" | "no")"#]);
    assert!(["yes", "no"].contains(&text(&yes_no).as_str()), "{yes_no}");

    let dir = tempfile::tempdir().expect("temp dir");
    let schema = r#"{"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                     "count": {"type": "integer", "minimum": 1, "maximum": 9}},
                     "required": ["colour", "count"], "additionalProperties": false}"#;
    let schema_file = dir.path().join("schema.json");
    std::fs::write(&schema_file, schema).expect("write schema");
    let grammar_file = dir.path().join("digits.gbnf");
    std::fs::write(&grammar_file, "# three digits\nroot ::= [0-9]{3}\n").expect("write grammar");
    for (flag, value) in
        [("--json-schema", schema.to_string()), ("--json-schema-file", schema_file.display().to_string())]
    {
        for temperature in ["0", "1.5"] {
            let v =
                run_json(&m, "Pick a colour and a count.", 64, &["--temp", temperature, "--seed", "4", flag, &value]);
            let out: Value = serde_json::from_str(&text(&v)).unwrap_or_else(|e| panic!("{flag}: {v}: {e}"));
            assert!(["red", "green", "blue"].contains(&out["colour"].as_str().unwrap_or("")), "{out}");
            assert!((1..=9).contains(&out["count"].as_i64().unwrap_or(0)), "{out}");
        }
    }
    let digits =
        text(&run_json(&m, "A number:", 8, &["--temp", "1", "--grammar-file", grammar_file.to_str().unwrap()]));
    assert!(digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()), "{digits:?}");

    usage_error(
        &["run", "-m", &m, "-p", "x", "--grammar", "root ::= (\"a\""],
        "--grammar: grammar syntax error at line 1, column 14: expected ')'",
    );
    usage_error(&["run", "-m", &m, "-p", "x", "--json-schema", "{\"type\": 3}"], "--json-schema");
    usage_error(&["run", "-m", &m, "-p", "x", "--json-schema", "{not json"], "--json-schema");
    usage_error(&["run", "-m", &m, "-p", "x", "--grammar", "root ::= \"a\"", "--json-schema", "{}"], "--json-schema");
    let missing = gemma(&["run", "-m", &m, "-p", "x", "--grammar-file", "/nonexistent/g.gbnf"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read --grammar-file"));
}
