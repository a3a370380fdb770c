//! Parity of the Gemma 3 270M forward pass with llama.cpp on the shared goldens
//! (`testdata/goldens/README.md` defines the comparisons).

use std::sync::OnceLock;

use gemma_core::generate::GenerationOptions;
use gemma_core::{Batch, Model, SamplingParams, Session, Tokenizer};
use gemma_ops::ThreadPool;
use serde::Deserialize;

mod common;
use common::{
    assert_near_tie_pick, teacher_forced, teacher_forced_agreement, top_k, two_prompts_in_one_batch_match_each_alone,
};

#[derive(Deserialize)]
struct Golden {
    prompt: String,
    prompt_ids: Vec<u32>,
    gen_ids: Vec<u32>,
    top10_first: Vec<(u32, f32)>,
    gen_top1_top2_margin: Vec<f32>,
}

struct Fixture {
    model: Model,
    tokenizer: Tokenizer,
    pool: ThreadPool,
    goldens: Vec<Golden>,
    reference_f64: Vec<Golden>,
    llama_top: Vec<LlamaTop>,
}

/// llama.cpp's five best tokens (id, log-probability) at every teacher-forced step of each golden prompt.
#[derive(Deserialize)]
struct LlamaTop {
    prompt_ids: Vec<u32>,
    top_logprobs: Vec<Vec<(u32, f64)>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model available");
        let model = Model::open(&path).expect("model loads");
        let tokenizer = Tokenizer::from_gguf(&model.file).expect("tokenizer loads");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/");
        let read = |name: &str| -> Vec<Golden> {
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}{name}")).expect("golden file"))
                .expect("golden json")
        };
        Fixture {
            model,
            tokenizer,
            pool: ThreadPool::new(2),
            goldens: read("gemma3_270m_goldens_shared.json"),
            reference_f64: read("gemma3_270m_ref_f64_shared.json"),
            llama_top: serde_json::from_str(
                &std::fs::read_to_string(format!("{dir}gemma3_270m_llama_top5.json")).expect("top-5 file"),
            )
            .expect("top-2 json"),
        }
    })
}

#[test]
fn prompts_tokenize_to_the_golden_ids() {
    let f = fixture();
    for g in &f.goldens {
        assert_eq!(f.tokenizer.encode(&g.prompt, true, true), g.prompt_ids, "prompt {:?}", g.prompt);
    }
}

#[test]
fn teacher_forced_argmax_matches_llama_cpp() {
    let f = fixture();
    let goldens = f.goldens.iter().map(|g| (&g.prompt_ids[..], &g.gen_ids[..], &g.gen_top1_top2_margin[..]));
    let (failures, confident, confident_ok) = teacher_forced_agreement(&f.model, &f.pool, goldens);
    assert!(failures.is_empty(), "argmax differs where llama.cpp's margin >= 1.0:\n{}", failures.join("\n"));
    let share = confident_ok as f64 / confident as f64;
    eprintln!("teacher-forced agreement at margin >= 0.5: {confident_ok}/{confident} ({:.1}%)", share * 100.0);
    assert!(share >= 0.98, "only {confident_ok}/{confident} steps with margin >= 0.5 agree");
}

#[test]
fn first_step_logits_are_close_to_llama_cpp() {
    let f = fixture();
    for (p, (g, r)) in f.goldens.iter().zip(&f.reference_f64).enumerate() {
        let rows = teacher_forced(&f.model, &f.pool, &g.prompt_ids, &g.gen_ids);
        let ours = top_k(&rows[0], 10);
        let theirs = &g.top10_first;
        if g.gen_top1_top2_margin[0] >= 0.5 {
            assert_eq!(ours[0].0, theirs[0].0, "prompt {p}: top-1 differs");
        } else {
            assert!(
                ours[0].0 == theirs[0].0 || ours[0].0 == theirs[1].0,
                "prompt {p}: top-1 not among llama.cpp's two best"
            );
        }
        // Each of the top 10: within 1.0 of llama.cpp's or 0.5 of the f64 reference's at the same rank, or, if
        // the whole top 10 is shifted, its gap to the best within 0.5 of theirs (softmax ignores a common
        // shift). A common shift is where equally valid summation orders differ most: on the chat-format
        // prompt 8 the top 10 sits 0.4-0.9 higher or lower (llama.cpp 4.56, f64 4.98, gemma-rs 4.7-5.4 by
        // kernel level) while the gaps between ranks agree to 0.35.
        let gap = |top: &[(u32, f32)], rank: usize| top[rank].1 - top[0].1;
        for rank in 0..10 {
            let d_llama = (ours[rank].1 - theirs[rank].1).abs();
            let d_f64 = (ours[rank].1 - r.top10_first[rank].1).abs();
            let gap_llama = (gap(&ours, rank) - gap(theirs, rank)).abs();
            let gap_f64 = (gap(&ours, rank) - gap(&r.top10_first, rank)).abs();
            assert!(
                (d_llama <= 1.0 || d_f64 <= 0.5)
                    || ((gap_llama <= 0.5 || gap_f64 <= 0.5) && (d_llama <= 1.5 || d_f64 <= 1.0)),
                "prompt {p} rank {rank}: ours {:?}, llama.cpp {:?}, f64 {:?}",
                ours[rank],
                theirs[rank],
                r.top10_first[rank]
            );
        }
    }
}

#[test]
fn free_running_greedy_follows_llama_cpp_until_a_near_tie() {
    let f = fixture();
    for (p, g) in f.goldens.iter().enumerate() {
        assert_eq!(f.llama_top[p].prompt_ids, g.prompt_ids, "top-5 file out of step with the goldens");
        let mut session = Session::new(&f.model, 4096);
        let opts =
            GenerationOptions { max_tokens: g.gen_ids.len(), sampling: SamplingParams::greedy(), ..Default::default() };
        let out = session.generate(&f.tokenizer, &g.prompt_ids, &opts, &f.pool, &mut |_| {}).expect("generate");
        let first_tie = g.gen_top1_top2_margin.iter().position(|&m| m < 0.75).unwrap_or(g.gen_ids.len());
        let stop = first_tie.min(out.gen_ids.len());
        assert_eq!(
            out.gen_ids[..stop],
            g.gen_ids[..stop],
            "prompt {p}: tokens before the first near-tie (step {first_tie})"
        );
        if first_tie < g.gen_ids.len() && first_tie < out.gen_ids.len() {
            // Usually llama.cpp's runner-up; prompt 3 has three tokens within 0.12 at its first tie.
            let top = &f.llama_top[p].top_logprobs[first_tie];
            assert_near_tie_pick(p, first_tie, out.gen_ids[first_tie], g.gen_ids[first_tie], top);
        }
    }
}

#[test]
fn a_batch_of_two_prompts_gives_each_its_own_logits() {
    let f = fixture();
    two_prompts_in_one_batch_match_each_alone(&f.model, &f.pool, &f.goldens[1].prompt_ids, &f.goldens[2].prompt_ids);
}

#[test]
fn threads_do_not_change_greedy_tokens() {
    let f = fixture();
    let g = &f.goldens[0];
    let run = |threads: usize| {
        let pool = ThreadPool::new(threads);
        let mut session = Session::new(&f.model, 256);
        let opts = GenerationOptions { max_tokens: 16, sampling: SamplingParams::greedy(), ..Default::default() };
        session.generate(&f.tokenizer, &g.prompt_ids, &opts, &pool, &mut |_| {}).unwrap().gen_ids
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let f = fixture();
    let mut session = Session::new(&f.model, 8);
    let opts = GenerationOptions { max_tokens: 4, sampling: SamplingParams::greedy(), ..Default::default() };
    let err = session.generate(&f.tokenizer, &f.goldens[1].prompt_ids, &opts, &f.pool, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("context is full"), "{err}");
}

#[test]
fn sliding_window_ring_gives_the_same_logits_however_the_prompt_is_fed() {
    // The 1,110-token prompt wraps the ring of the sliding-window layers (512 + 512 rows): feeding it in one
    // call (split into passes of 512) or in uneven pieces must give the same final logits.
    let f = fixture();
    let ids = &f.goldens[12].prompt_ids;
    assert!(ids.len() > 1024);
    let last_logits = |piece: usize| {
        let mut cache = f.model.new_cache(4096);
        assert!(cache.layer(0).ring > 0 && cache.layer(5).ring == 0, "local layers use a ring, global ones do not");
        let mut last = Vec::new();
        for (k, chunk) in ids.chunks(piece).enumerate() {
            let logits = f
                .model
                .forward(&Batch::sequence(chunk, k * piece, 0, false), std::slice::from_mut(&mut cache), &f.pool)
                .unwrap();
            last = logits.row(0).to_vec();
        }
        last
    };
    let (whole, pieces) = (last_logits(ids.len()), last_logits(300));
    let max_diff = whole.iter().zip(&pieces).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "max diff {max_diff}");
}
