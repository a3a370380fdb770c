//! Context shift (llama.cpp's `--context-shift`) on the default model, against llama-server's greedy runs
//! past the end of a 256-token context (`testdata/goldens/gemma3_270m_llama_context_shift.json`,
//! `scripts/llama_context_shift_goldens.py`).

mod common;

use common::default_model;
use gemma_core::sampling::greedy;
use gemma_core::{ContextShift, GenerationOptions, Session, StopReason};

struct Case {
    prompt_ids: Vec<u32>,
    n_keep: i64,
    gen_ids: Vec<u32>,
    margins: Vec<f32>,
    no_shift_gen_ids: Vec<u32>,
}

fn goldens() -> (usize, Vec<Case>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_context_shift.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("JSON");
    fn field<T: serde::de::DeserializeOwned>(c: &serde_json::Value, k: &str) -> T {
        serde_json::from_value(c[k].clone()).expect(k)
    }
    let cases = g["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            prompt_ids: field(c, "prompt_ids"),
            n_keep: field(c, "n_keep"),
            gen_ids: field(c, "gen_ids"),
            margins: field(c, "gen_top1_top2_margin"),
            no_shift_gen_ids: field(c, "no_shift_gen_ids"),
        })
        .collect();
    (g["ctx"].as_u64().expect("ctx") as usize, cases)
}

/// The best logit less the second best.
fn top_margin(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// llama-server's `n_keep`: the prompt's tokens for -1, else the tokens asked for, and then one more for BOS.
fn shift_of(case: &Case) -> ContextShift {
    let keep = if case.n_keep < 0 { case.prompt_ids.len() } else { case.n_keep as usize } + 1;
    ContextShift { keep, discard: None }
}

/// Feeding llama.cpp's own tokens and shifting where it shifts, our argmax is its token at every step it is
/// sure of (a margin of 1 or more), before and after each of the four shifts, and at nearly every step of 0.5.
/// The top-1 / top-2 margins stay as close to llama.cpp's after a shift as before one (measured: 0.13 before,
/// 0.15 after, mean absolute difference). Recomputing the kept tokens instead of shifting the cache (a
/// different, also plausible, way to go on) picks the same tokens but is 0.70 away: the test tells them apart.
#[test]
fn teacher_forced_through_shifts_the_argmax_is_llama_cpps() {
    let m = default_model();
    let (ctx, cases) = goldens();
    let (mut sure_after_shift, mut confident, mut confident_ok) = (0, 0, 0);
    // |our top-1 - top-2 logit margin - llama.cpp's| before any shift, after one, and for the recomputed way.
    let (mut before, mut after, mut recomputed_diff) = (Vec::new(), Vec::new(), Vec::new());
    for (p, case) in cases.iter().enumerate() {
        let shift = shift_of(case);
        let mut session = Session::new(&m.model, ctx);
        let mut logits = session.prefill(&case.prompt_ids, &m.pool).expect("prompt").to_vec();
        // The same tokens with the kept ones recomputed at their new positions after each shift.
        let mut recomputed = Session::new(&m.model, ctx);
        let mut recomputed_logits = Vec::new();
        let mut history = case.prompt_ids.clone();
        let mut shifts = 0;
        for (i, (&want, &margin)) in case.gen_ids.iter().zip(&case.margins).enumerate() {
            let ours = greedy(&logits);
            if margin >= 1.0 {
                assert_eq!(ours, want, "case {p} step {i} (after {shifts} shifts): llama.cpp's margin {margin}");
                sure_after_shift += (shifts > 0) as usize;
            }
            if shifts == 0 {
                before.push((top_margin(&logits) - margin).abs());
            } else {
                after.push((top_margin(&logits) - margin).abs());
                recomputed_diff.push((top_margin(&recomputed_logits) - margin).abs());
            }
            if margin >= 0.5 {
                confident += 1;
                confident_ok += (ours == want) as usize;
            }
            if session.len() + 1 >= ctx {
                let (keep, discard) = shift.plan(session.len(), ctx);
                session.shift_context(keep, discard).expect("shift");
                assert_eq!(session.len(), ctx - 1 - discard);
                history.drain(keep..keep + discard);
                shifts += 1;
                recomputed.reset();
                recomputed.prefill(&history, &m.pool).expect("recompute");
            }
            logits = session.prefill(&[want], &m.pool).expect("step").to_vec();
            history.push(want);
            if shifts > 0 {
                recomputed_logits = recomputed.prefill(&[want], &m.pool).expect("recomputed step").to_vec();
            }
        }
        assert_eq!(shifts, 4, "case {p}: 640 tokens through a 256-token context");
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (before, after, recomputed) = (mean(&before), mean(&after), mean(&recomputed_diff));
    eprintln!(
        "sure steps after a shift: {sure_after_shift}; margin >= 0.5: {confident_ok}/{confident}; mean margin \
         difference from llama.cpp: {before:.4} before a shift, {after:.4} after, {recomputed:.4} recomputed"
    );
    assert!(sure_after_shift > 1000, "{sure_after_shift} sure steps after a shift");
    assert!(confident_ok * 100 >= confident * 99, "{confident_ok} of {confident} steps with a margin >= 0.5 agree");
    assert!(after < 0.2 && after < before + 0.05, "after a shift the margins stay as close to llama.cpp's as before");
    assert!(recomputed > 3.0 * after, "recomputing the kept tokens is told apart from shifting the cache");
}

/// `Session::generate` shifts where llama.cpp does: with the shift on it runs on past the context to the
/// token limit, llama.cpp's tokens until its first near-tie; without it, it stops where llama.cpp stops.
#[test]
fn generation_goes_on_past_the_context_with_a_shift_and_stops_without() {
    let m = default_model();
    let (ctx, cases) = goldens();
    let case = &cases[0];
    let opts =
        |context_shift| GenerationOptions { max_tokens: case.gen_ids.len(), context_shift, ..Default::default() };
    let greedy_params = |mut o: GenerationOptions| {
        o.sampling.temperature = 0.0;
        o
    };
    let mut session = Session::new(&m.model, ctx);
    let out = session
        .generate(&m.tokenizer, &case.prompt_ids, &greedy_params(opts(Some(shift_of(case)))), &m.pool, &mut |_| {})
        .expect("generation");
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    assert_eq!(out.gen_ids.len(), case.gen_ids.len());
    assert_eq!(out.context_shifts.len(), 4);
    let first_tie = case.margins.iter().position(|&x| x < 0.1).unwrap_or(case.margins.len());
    assert_eq!(out.gen_ids[..first_tie], case.gen_ids[..first_tie]);

    let mut session = Session::new(&m.model, ctx);
    let out = session
        .generate(&m.tokenizer, &case.prompt_ids, &greedy_params(opts(None)), &m.pool, &mut |_| {})
        .expect("generation");
    assert_eq!(out.stop_reason, StopReason::ContextFull);
    assert!(out.context_shifts.is_empty());
    // llama.cpp stops one token earlier: it never fills the context's last position.
    assert_eq!(out.gen_ids.len(), case.no_shift_gen_ids.len() + 1);
}
