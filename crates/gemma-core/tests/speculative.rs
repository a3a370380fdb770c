//! Speculative decoding (n-gram drafts, and a draft model's, checked in one forward pass) on the real Gemma 3
//! 270M model: the tokens, text, streamed pieces, stop handling and the KV cache left behind are those of plain
//! decoding.

use std::sync::{Arc, OnceLock};

use gemma_core::generate::{ContextShift, GenerationOptions, GenerationOutput, StopReason};
use gemma_core::quantize::{quantize_file, FileType, QuantizeOptions};
use gemma_core::sampling::Mirostat;
use gemma_core::speculative::DraftModel;
use gemma_core::{Model, SamplingParams, Session, SpecType, SpeculativeParams};

mod common;
use common::DefaultModel;

fn fixture() -> &'static DefaultModel {
    common::default_model()
}

/// A prompt that makes the model quote text it has seen (drafts get accepted).
const REPEAT: &str = "<start_of_turn>user\nRepeat the following text exactly, word for word:\n\nThe quick brown fox \
jumps over the lazy dog. Rust is a systems programming language that runs blazingly fast, prevents segfaults, and \
guarantees thread safety. It accomplishes these goals by being memory safe without using garbage collection. The \
borrow checker validates references at compile time, so whole classes of bugs never reach production.<end_of_turn>\n\
<start_of_turn>model\n";

struct Run {
    out: GenerationOutput,
    streamed: String,
    /// Tokens in the session's cache afterwards.
    cache_len: usize,
}

fn run_ids(ids: &[u32], opts: &GenerationOptions, ctx: usize) -> Run {
    let f = fixture();
    let mut session = Session::new(&f.model, ctx);
    let mut streamed = String::new();
    let out = session
        .generate(&f.tokenizer, ids, opts, &f.pool, &mut |piece| streamed.push_str(piece))
        .expect("generation runs");
    Run { out, streamed, cache_len: session.len() }
}

fn encode(prompt: &str) -> Vec<u32> {
    let f = fixture();
    f.tokenizer.encode(prompt, f.tokenizer.add_bos(), true)
}

/// The draft model of the draft-simple runs: the default model requantized to Q8_0 (so it sometimes guesses
/// what the Q4_K_M target does not pick), kept in the models folder's `test-files/` (made once; the quantizer
/// renames only a whole file).
fn draft_model() -> &'static DraftModel {
    static D: OnceLock<DraftModel> = OnceLock::new();
    D.get_or_init(|| {
        let dir = gemma_fetch::models_dir().join("test-files");
        std::fs::create_dir_all(&dir).expect("test files folder");
        let path = dir.join("gemma-3-270m-q8_0.gguf");
        if !path.exists() {
            let source = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model");
            let mut options = QuantizeOptions::new(FileType::parse("Q8_0").expect("type"));
            options.allow_requantize = true;
            options.threads = 2;
            quantize_file(&source, &path, &options, &mut |_| {}).expect("Q8_0 draft model");
        }
        let draft = Model::open(&path).expect("draft model loads");
        DraftModel::new(&fixture().model, Arc::new(draft)).expect("the same vocabulary")
    })
}

fn spec(kind: SpecType) -> SpeculativeParams {
    let mut p = SpeculativeParams::new(kind);
    if kind == SpecType::DraftSimple {
        p.draft_model = Some(draft_model().clone());
    }
    p
}

const KINDS: [SpecType; 3] = [SpecType::NgramSimple, SpecType::NgramMod, SpecType::DraftSimple];

/// Runs `opts` with and without each speculation type and checks they agree; returns the speculative runs.
/// Exact equality holds because a batch gives each token the logits a one-token pass gives it, bit for bit
/// (`batch_and_single_token_logits_differ_by_rounding_only` measures it): no near tie can flip.
fn assert_same_as_plain(what: &str, ids: &[u32], opts: &GenerationOptions, ctx: usize) -> Vec<Run> {
    let plain = run_ids(ids, opts, ctx);
    assert_eq!(plain.out.speculative.draft_n, 0);
    KINDS
        .iter()
        .map(|&kind| {
            let sp = run_ids(ids, &GenerationOptions { speculative: Some(spec(kind)), ..opts.clone() }, ctx);
            let label = format!("{what}, {kind}");
            assert_eq!(sp.out.gen_ids, plain.out.gen_ids, "{label}: tokens");
            assert_eq!(sp.out.text, plain.out.text, "{label}: text");
            assert_eq!(sp.streamed, plain.streamed, "{label}: streamed text");
            assert_eq!(sp.out.stop_reason, plain.out.stop_reason, "{label}: stop reason");
            assert_eq!(sp.out.end_token, plain.out.end_token, "{label}: end token");
            assert_eq!(sp.out.stop_string, plain.out.stop_string, "{label}: stop string");
            assert_eq!(sp.out.context_shifts, plain.out.context_shifts, "{label}: context shifts");
            assert_eq!(sp.cache_len, plain.cache_len, "{label}: the cache holds what plain decoding leaves");
            let st = sp.out.speculative;
            assert!(st.draft_n_accepted <= st.draft_n && st.drafts <= st.draft_n.max(st.drafts), "{label}: {st:?}");
            eprintln!(
                "{label}: {} tokens, {} drafts, {}/{} drafted tokens accepted",
                sp.out.gen_ids.len(),
                st.drafts,
                st.draft_n_accepted,
                st.draft_n
            );
            sp
        })
        .collect()
}

fn greedy(max_tokens: usize) -> GenerationOptions {
    GenerationOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() }
}

#[test]
fn greedy_tokens_are_the_same_with_and_without_speculation() {
    let mut accepted = 0;
    let mut rejected = 0;
    for (prompt, n) in [(REPEAT, 120), ("Once upon a time", 200), ("The capital of France is", 60)] {
        for sp in assert_same_as_plain(prompt, &encode(prompt), &greedy(n), 1024) {
            accepted += sp.out.speculative.draft_n_accepted;
            rejected += sp.out.speculative.draft_n - sp.out.speculative.draft_n_accepted;
        }
    }
    assert!(accepted > 0, "no drafted token was ever accepted");
    assert!(rejected > 0, "no draft was ever cut short: the rollback went untested");
}

#[test]
fn drafts_are_accepted_on_a_repetitive_prompt() {
    for sp in assert_same_as_plain("repeat", &encode(REPEAT), &greedy(120), 1024) {
        let st = sp.out.speculative;
        assert!(st.draft_n_accepted >= 40, "{st:?}");
    }
}

/// Sampling draws, penalties, DRY and Mirostat see exactly the accepted tokens in order, as llama.cpp's
/// `common_sampler_sample_and_accept_n` samples each drafted position from the target's own distribution:
/// with a seed the tokens are those of plain decoding.
#[test]
fn seeded_sampling_with_penalties_dry_and_mirostat_is_unchanged() {
    let ids = encode(REPEAT);
    let chain = SamplingParams {
        temperature: 0.7,
        top_k: 20,
        top_p: 0.95,
        seed: Some(7),
        repeat_penalty: 1.1,
        dry_multiplier: 0.8,
        ..Default::default()
    };
    let mirostat = SamplingParams { temperature: 0.8, mirostat: Mirostat::V2, seed: Some(3), ..Default::default() };
    let mut accepted = 0;
    for (what, sampling) in [("chain", chain), ("mirostat", mirostat)] {
        let opts = GenerationOptions { max_tokens: 150, sampling, ..Default::default() };
        for sp in assert_same_as_plain(what, &ids, &opts, 1024) {
            accepted += sp.out.speculative.draft_n_accepted;
        }
    }
    assert!(accepted > 0, "the sampled runs never accepted a draft");
}

#[test]
fn a_grammar_advances_over_the_accepted_tokens_only() {
    let sampling =
        SamplingParams { grammar: Some(r#"root ::= [A-Za-z ,.]+ "\n""#.to_owned()), ..SamplingParams::greedy() };
    let opts = GenerationOptions { max_tokens: 100, sampling, ..Default::default() };
    assert_same_as_plain("grammar", &encode(REPEAT), &opts, 1024);
}

/// A stop string and a token limit that fall inside a draft end generation exactly where they do without it:
/// no token past them, and the cache rolled back to what plain decoding leaves.
#[test]
fn stop_strings_and_limits_inside_a_draft_hold() {
    let ids = encode(REPEAT);
    let plain = run_ids(&ids, &greedy(120), 1024);
    let text = plain.out.text.clone();
    // Stops picked late in the text, where the drafts run (the text repeats itself by then).
    let late = text.len() * 3 / 4;
    let mut cut = late;
    while !text.is_char_boundary(cut) || !text.is_char_boundary(cut + 5) {
        cut += 1;
    }
    let stop = text[cut..cut + 5].to_string();
    let opts = GenerationOptions { stop: vec![stop.clone()], ..greedy(120) };
    for sp in assert_same_as_plain("stop string", &ids, &opts, 1024) {
        assert_eq!(sp.out.stop_reason, StopReason::StopString);
        assert!(!sp.streamed.contains(&stop));
    }
    for n in [61, 77, 90] {
        for sp in assert_same_as_plain("limit", &ids, &greedy(n), 1024) {
            assert_eq!(sp.out.gen_ids.len(), n);
        }
    }
}

/// An end-of-generation token picked where a draft proposed another token ends generation as without
/// speculation, the cache rolled back. (Gemma 3 270M is a base model that seldom ends on its own: a bias of +4 on
/// `<eos>` makes it end 29 tokens in, at a drafted position.)
#[test]
fn an_end_of_generation_token_inside_a_draft_ends_it_the_same() {
    let mut opts = greedy(120);
    opts.sampling.logit_bias.push((1, 4.0));
    let runs = assert_same_as_plain("eos", &encode(REPEAT), &opts, 1024);
    for sp in &runs {
        assert_eq!(sp.out.stop_reason, StopReason::EndOfGeneration);
        assert_eq!(sp.out.end_token, Some(1));
    }
    assert!(runs.iter().any(|sp| sp.out.speculative.draft_n > 0), "no draft ran before the end");
}

/// Past the sliding window (512) and past the end of its ring (512 + 512 rows), drafted positions are written
/// over ring rows and taken back: the tokens still match plain decoding.
#[test]
fn rollback_across_the_sliding_window_ring_matches_plain_decoding() {
    let paragraph = "In the beginning the village had one well, and every morning the children carried water up \
                     the hill to the old school, where the teacher counted the buckets and wrote the number on the \
                     board. ";
    let mut prompt = String::from("<start_of_turn>user\nRepeat this story exactly:\n\n");
    for i in 0..14 {
        prompt.push_str(&format!("Day {i}. {paragraph}"));
    }
    prompt.push_str("<end_of_turn>\n<start_of_turn>model\n");
    let ids = encode(&prompt);
    assert!(ids.len() > 600 && ids.len() < 900, "{} prompt tokens", ids.len());
    // End-of-turn banned (llama.cpp's --ignore-eos), so generation goes on past the ring's end.
    let f = fixture();
    let mut opts = greedy(1100 - ids.len() + 200);
    opts.sampling.logit_bias.extend(f.tokenizer.end_of_generation_ids().map(|id| (id, f32::NEG_INFINITY)));
    let runs = assert_same_as_plain("ring", &ids, &opts, 2048);
    for sp in runs {
        assert!(ids.len() + sp.out.gen_ids.len() > 1100, "{} tokens", sp.out.gen_ids.len());
        assert!(sp.out.speculative.draft_n_accepted > 0, "{:?}", sp.out.speculative);
    }
}

/// Context shifts happen at the same tokens: drafts stop short of the context's last position.
#[test]
fn context_shifts_are_unchanged() {
    let opts = GenerationOptions { context_shift: Some(ContextShift { keep: 1, discard: None }), ..greedy(300) };
    for sp in assert_same_as_plain("shift", &encode("Once upon a time"), &opts, 96) {
        assert!(!sp.out.context_shifts.is_empty());
    }
}

/// Measures (prints) how far a batch's logits are from one-token passes over the same tokens: the rounding
/// that could tip a near tie between speculative and plain decoding.
#[test]
fn batch_and_single_token_logits_differ_by_rounding_only() {
    let f = fixture();
    let ids = encode(REPEAT);
    let plain = run_ids(&ids, &greedy(48), 1024);
    let batched = common::teacher_forced(&f.model, &f.pool, &ids, &plain.out.gen_ids);
    let mut session = Session::new(&f.model, 1024);
    let mut worst: f32 = 0.0;
    let mut margin = f32::INFINITY;
    let mut row = session.prefill(&ids, &f.pool).expect("prefill").to_vec();
    for (i, &tok) in plain.out.gen_ids.iter().enumerate() {
        worst = worst.max(common::max_abs_diff(&row, &batched[i]));
        let top = common::top_k(&row, 2);
        margin = margin.min(top[0].1 - top[1].1);
        if i + 1 < plain.out.gen_ids.len() {
            row = session.prefill(&[tok], &f.pool).expect("decode").to_vec();
        }
    }
    eprintln!("largest |batch - single| logit difference: {worst:e}; smallest top-2 margin: {margin}");
    // 0 on the machines measured so far (docs/speculative.md); anything beyond rounding would be a bug.
    assert!(worst < 1e-3, "{worst}");
}

/// A draft model's drafts follow llama.cpp's draft-simple settings: at most `--spec-draft-n-max` tokens (3 by
/// default), none shorter than `--spec-draft-n-min`, cut before a token below `--spec-draft-p-min`; and the
/// output never changes.
#[test]
fn draft_model_settings_shape_the_drafts() {
    let ids = encode("Once upon a time");
    let opts = greedy(80);
    let run = |p: SpeculativeParams| run_ids(&ids, &GenerationOptions { speculative: Some(p), ..opts.clone() }, 512);
    let plain = run_ids(&ids, &opts, 512);
    let default = run(spec(SpecType::DraftSimple));
    let st = default.out.speculative;
    assert!(st.drafts > 0 && st.draft_n <= 3 * st.drafts, "{st:?}");
    assert!(st.draft_n_accepted * 2 > st.draft_n, "a Q8_0 draft of the same model mostly agrees: {st:?}");
    let long = run(SpeculativeParams { draft_n_max: Some(8), ..spec(SpecType::DraftSimple) });
    assert!(long.out.speculative.draft_n > 3 * long.out.speculative.drafts, "{:?}", long.out.speculative);
    // No draft is ever as long as 9 tokens when n_max is 8: --spec-draft-n-min 9 drops them all.
    let none = run(SpeculativeParams { draft_n_max: Some(8), draft_n_min: 9, ..spec(SpecType::DraftSimple) });
    assert_eq!(none.out.speculative.draft_n, 0);
    // A probability of 1 among the ten best never happens: p-min 1 stops every draft before its first token.
    let sure = run(SpeculativeParams { draft_p_min: 1.0, ..spec(SpecType::DraftSimple) });
    assert_eq!(sure.out.speculative.draft_n, 0);
    let half = run(SpeculativeParams { draft_p_min: 0.5, ..spec(SpecType::DraftSimple) });
    let st_half = half.out.speculative;
    assert!(st_half.draft_n < st.draft_n && st_half.draft_n_accepted * 10 >= st_half.draft_n * 8, "{st_half:?}");
    for r in [&default, &long, &none, &sure, &half] {
        assert_eq!(r.out.gen_ids, plain.out.gen_ids);
    }
}

/// A draft model must share the target's vocabulary, as llama.cpp checks it: SmolLM2's is refused, naming
/// what differs.
#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let smollm2 = gemma_fetch::resolve_model("smollm2-135m-instruct").expect("SmolLM2");
    let other = Arc::new(Model::open(smollm2).expect("SmolLM2 loads"));
    let e = DraftModel::new(&fixture().model, other).expect_err("another vocabulary").to_string();
    assert!(e.contains("cannot draft") && (e.contains("BOS") || e.contains("token")), "{e}");
}
