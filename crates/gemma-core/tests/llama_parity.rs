//! Parity of the Llama forward pass with llama.cpp, on SmolLM2 135M Instruct (architecture `llama`, Q4_1
//! weights, tied Q8_0 embedding) and the shared goldens (`testdata/goldens/README.md` defines the comparisons).
//! The model runs on the golden token ids directly, without a tokenizer.

use std::sync::OnceLock;

use gemma_core::{Architecture, Batch, BatchToken, KvCache, Model, Scratch};
use gemma_ops::vector::argmax;
use gemma_ops::ThreadPool;
use serde::Deserialize;

mod common;
use common::{
    assert_near_tie_pick, max_abs_diff, teacher_forced, teacher_forced_agreement, top_k,
    two_prompts_in_one_batch_match_each_alone,
};

const MODEL: &str = "smollm2-135m-instruct";

#[derive(Deserialize)]
struct Golden {
    prompt_ids: Vec<u32>,
    gen_ids: Vec<u32>,
    top10_first: Vec<(u32, f32)>,
    gen_top1_top2_margin: Vec<f32>,
}

/// llama.cpp's five best tokens (id, log-probability) at every teacher-forced step of each golden prompt
/// (recorded by `scripts/llama_topk_goldens.py` with the llama-server built beside the project).
#[derive(Deserialize)]
struct LlamaTop {
    prompt_ids: Vec<u32>,
    top_logprobs: Vec<Vec<(u32, f64)>>,
}

struct Fixture {
    model: Model,
    pool: ThreadPool,
    goldens: Vec<Golden>,
    reference_f64: Vec<Golden>,
    llama_top: Vec<LlamaTop>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = gemma_fetch::resolve_model(MODEL).expect("SmolLM2 model available");
        let model = Model::open(&path).expect("model loads");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/");
        let read = |name: &str| std::fs::read_to_string(format!("{dir}{name}")).expect("golden file");
        Fixture {
            model,
            pool: ThreadPool::new(2),
            goldens: serde_json::from_str(&read("smollm2_goldens_shared.json")).expect("golden json"),
            reference_f64: serde_json::from_str(&read("smollm2_ref_f64_shared.json")).expect("f64 json"),
            llama_top: serde_json::from_str(&read("smollm2_llama_top5.json")).expect("top-5 json"),
        }
    })
}

fn greedy(row: &[f32]) -> u32 {
    argmax(row).expect("non-empty logits").0 as u32
}

/// Greedy generation of `n` tokens after `prompt`: one prefill pass, then one token per pass, reusing one
/// cache and one scratch (the decode path).
fn generate_greedy(model: &Model, prompt: &[u32], n: usize, pool: &ThreadPool) -> Vec<u32> {
    let mut cache: KvCache = model.new_cache(prompt.len() + n);
    let mut scratch = Scratch::default();
    let caches = std::slice::from_mut(&mut cache);
    let mut next = greedy(
        model.forward_with(&Batch::sequence(prompt, 0, 0, false), caches, pool, &mut scratch).expect("prefill").row(0),
    );
    let mut out = vec![next];
    while out.len() < n {
        let pos = prompt.len() + out.len() - 1;
        let logits =
            model.forward_with(&Batch::sequence(&[next], pos, 0, false), caches, pool, &mut scratch).expect("decode");
        next = greedy(logits.row(0));
        out.push(next);
    }
    out
}

#[test]
fn config_reads_the_llama_hyperparameters() {
    let c = &fixture().model.config;
    assert_eq!(c.arch, Architecture::Llama);
    assert_eq!((c.n_layers, c.d_model, c.ffn_dim), (30, 576, 1536));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.vocab_size, c.context_length), (49152, 8192));
    assert_eq!((c.rope_base, c.rope_freq_scale, c.rope_freq_factors), (100_000.0, 1.0, false));
    assert!((c.rms_eps - 1e-5).abs() < 1e-9);
    assert_eq!((c.sliding_window, c.rope_base_local, c.final_logit_softcap), (None, None, None));
    assert!(c.layer_is_local.iter().all(|&l| !l));
    assert_eq!((c.embedding_scale, c.query_scale), (1.0, 0.125));
    let summary = c.summary();
    assert!(summary.contains("architecture: llama") && summary.contains("layers: 30\n"), "{summary}");
    assert!(!summary.contains("sliding") && !summary.contains("softcap"), "{summary}");
}

#[test]
fn teacher_forced_argmax_matches_llama_cpp() {
    let f = fixture();
    let goldens = f.goldens.iter().map(|g| (&g.prompt_ids[..], &g.gen_ids[..], &g.gen_top1_top2_margin[..]));
    let (failures, confident, confident_ok) = teacher_forced_agreement(&f.model, &f.pool, goldens);
    assert!(failures.is_empty(), "argmax differs where llama.cpp's margin >= 1.0:\n{}", failures.join("\n"));
    let share = confident_ok as f64 / confident as f64;
    eprintln!("teacher-forced agreement at margin >= 0.5: {confident_ok}/{confident} ({:.1}%)", share * 100.0);
    assert!(confident > 100, "the goldens have {confident} confident steps");
    assert!(share >= 0.98, "only {confident_ok}/{confident} steps with margin >= 0.5 agree");
}

#[test]
fn first_step_logits_are_close_to_llama_cpp() {
    let f = fixture();
    let mut worst = 0f32;
    for (p, (g, r)) in f.goldens.iter().zip(&f.reference_f64).enumerate() {
        assert_eq!(g.prompt_ids, r.prompt_ids, "f64 reference out of step with the goldens");
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
        for rank in 0..10 {
            let d_llama = (ours[rank].1 - theirs[rank].1).abs();
            let d_f64 = (ours[rank].1 - r.top10_first[rank].1).abs();
            worst = worst.max(d_llama);
            assert!(
                d_llama <= 1.0 || d_f64 <= 0.5,
                "prompt {p} rank {rank}: ours {:?}, llama.cpp {:?}, f64 {:?}",
                ours[rank],
                theirs[rank],
                r.top10_first[rank]
            );
        }
    }
    eprintln!("largest first-step top-10 logit gap to llama.cpp: {worst:.3}");
}

#[test]
fn free_running_greedy_follows_llama_cpp_until_a_near_tie() {
    let f = fixture();
    for (p, g) in f.goldens.iter().enumerate() {
        assert_eq!(f.llama_top[p].prompt_ids, g.prompt_ids, "top-5 file out of step with the goldens");
        let ours = generate_greedy(&f.model, &g.prompt_ids, g.gen_ids.len(), &f.pool);
        let first_tie = g.gen_top1_top2_margin.iter().position(|&m| m < 0.75).unwrap_or(g.gen_ids.len());
        assert_eq!(ours[..first_tie], g.gen_ids[..first_tie], "prompt {p}: tokens before the first near-tie");
        if first_tie < g.gen_ids.len() {
            let top = &f.llama_top[p].top_logprobs[first_tie];
            assert_near_tie_pick(p, first_tie, ours[first_tie], g.gen_ids[first_tie], top);
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
    let run = |threads: usize| generate_greedy(&f.model, &g.prompt_ids, 16, &ThreadPool::new(threads));
    assert_eq!(run(1), run(2));
}

#[test]
fn a_prompt_longer_than_one_pass_gives_the_same_logits_however_it_is_fed() {
    // All golden prompts and continuations back to back: over 512 tokens, so one forward call is split into
    // passes of at most 512, and only the rows that ask get logits, at their batch indices.
    let f = fixture();
    let ids: Vec<u32> =
        f.goldens.iter().cycle().take(18).flat_map(|g| g.prompt_ids.iter().chain(&g.gen_ids)).copied().collect();
    assert!(ids.len() > 600, "{} tokens", ids.len());
    let wanted = [3, 511, 512, ids.len() - 1];
    let batch = Batch {
        tokens: ids
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: wanted.contains(&pos) })
            .collect(),
    };
    let mut cache = f.model.new_cache(ids.len());
    let whole = f.model.forward(&batch, std::slice::from_mut(&mut cache), &f.pool).unwrap();
    assert_eq!(whole.batch_index, wanted);
    assert_eq!(cache.len(), ids.len());
    // The same tokens in uneven pieces, the wanted rows taken from the piece that holds them.
    let mut cache = f.model.new_cache(ids.len());
    let piece = 300;
    for (k, chunk) in ids.chunks(piece).enumerate() {
        let logits = f
            .model
            .forward(&Batch::sequence(chunk, k * piece, 0, true), std::slice::from_mut(&mut cache), &f.pool)
            .unwrap();
        for (row, &pos) in wanted.iter().enumerate() {
            if pos / piece == k {
                let d = max_abs_diff(whole.row(row), logits.row(pos % piece));
                assert!(d < 1e-3, "position {pos}: max diff {d}");
            }
        }
    }
}

#[test]
fn malformed_batches_are_errors_not_panics() {
    let f = fixture();
    let mut cache = f.model.new_cache(8);
    let caches = std::slice::from_mut(&mut cache);
    let out_of_vocab = Batch::sequence(&[49_152], 0, 0, false);
    assert!(f.model.forward(&out_of_vocab, caches, &f.pool).unwrap_err().to_string().contains("vocabulary"));
    let gap = Batch::sequence(&[1, 2], 3, 0, false);
    assert!(f.model.forward(&gap, caches, &f.pool).is_err());
    let too_long = Batch::sequence(&[1; 9], 0, 0, false);
    assert!(f.model.forward(&too_long, caches, &f.pool).unwrap_err().to_string().contains("context is full"));
}
