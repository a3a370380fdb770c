//! Parity of the Llama forward pass with llama.cpp, on SmolLM2 135M Instruct (architecture `llama`, Q4_1
//! weights, tied Q8_0 embedding) and the shared goldens (`testdata/goldens/README.md` defines the comparisons).
//! The model runs on the golden token ids directly, without a tokenizer.

use std::sync::OnceLock;

use gemma_core::{Architecture, Batch, BatchToken, KvCache, Model, Scratch};
use gemma_ops::vector::argmax;
use gemma_ops::ThreadPool;
use serde::Deserialize;

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

/// Logits at the positions that predict `gen_ids`, feeding `prompt_ids + gen_ids[..n-1]` in one pass.
fn teacher_forced(f: &Fixture, g: &Golden) -> Vec<Vec<f32>> {
    let n_gen = g.gen_ids.len();
    let ids: Vec<u32> = g.prompt_ids.iter().chain(&g.gen_ids[..n_gen - 1]).copied().collect();
    let first_predicting = g.prompt_ids.len() - 1;
    let batch = Batch {
        tokens: ids
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: pos >= first_predicting })
            .collect(),
    };
    let mut cache = f.model.new_cache(ids.len());
    let logits = f.model.forward(&batch, std::slice::from_mut(&mut cache), &f.pool).expect("forward");
    assert_eq!(logits.len(), n_gen, "logits only for the rows that asked");
    (0..n_gen).map(|i| logits.row(i).to_vec()).collect()
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

fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
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
    let (mut confident, mut confident_ok) = (0usize, 0usize);
    let mut failures = Vec::new();
    for (p, g) in f.goldens.iter().enumerate() {
        for (i, row) in teacher_forced(f, g).iter().enumerate() {
            let ours = greedy(row);
            let margin = g.gen_top1_top2_margin[i];
            if margin >= 1.0 && ours != g.gen_ids[i] {
                failures
                    .push(format!("prompt {p} step {i}: ours {ours}, llama.cpp {} (margin {margin})", g.gen_ids[i]));
            }
            if margin >= 0.5 {
                confident += 1;
                confident_ok += (ours == g.gen_ids[i]) as usize;
            }
        }
    }
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
        let rows = teacher_forced(f, g);
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
            // At the first near-tie our token must be one llama.cpp itself has tied with its best, within the
            // near-tie margin of 0.75 (teacher-forced on the same context, identical to ours up to this step).
            let top = &f.llama_top[p].top_logprobs[first_tie];
            let tied: Vec<u32> = top.iter().filter(|x| x.1 >= top[0].1 - 0.75).map(|x| x.0).collect();
            let mine = ours[first_tie];
            assert!(
                mine == g.gen_ids[first_tie] || tied.contains(&mine),
                "prompt {p} step {first_tie}: ours {mine}, llama.cpp's tokens within 0.75 of its best {top:?}"
            );
        }
    }
}

#[test]
fn a_batch_of_two_prompts_gives_each_its_own_logits() {
    let f = fixture();
    let (a, b) = (&f.goldens[1].prompt_ids, &f.goldens[2].prompt_ids);
    let alone = |ids: &[u32]| {
        let mut cache = f.model.new_cache(64);
        let logits =
            f.model.forward(&Batch::sequence(ids, 0, 0, true), std::slice::from_mut(&mut cache), &f.pool).unwrap();
        (0..logits.len()).map(|i| logits.row(i).to_vec()).collect::<Vec<_>>()
    };
    let (la, lb) = (alone(a), alone(b));
    // Interleave the two sequences in one batch.
    let mut batch = Batch::default();
    for i in 0..a.len().max(b.len()) {
        if let Some(&t) = a.get(i) {
            batch.push(BatchToken { token: t, pos: i, seq: 0, logits: true });
        }
        if let Some(&t) = b.get(i) {
            batch.push(BatchToken { token: t, pos: i, seq: 1, logits: true });
        }
    }
    let mut caches = vec![f.model.new_cache(64), f.model.new_cache(64)];
    let logits = f.model.forward(&batch, &mut caches, &f.pool).unwrap();
    let (mut ia, mut ib) = (0, 0);
    for (row, &bi) in logits.batch_index.iter().enumerate() {
        let t = batch.tokens[bi];
        let want = if t.seq == 0 { &la[ia] } else { &lb[ib] };
        if t.seq == 0 {
            ia += 1
        } else {
            ib += 1
        }
        let d = max_abs_diff(logits.row(row), want);
        assert!(d < 1e-3, "seq {} pos {}: max diff {d}", t.seq, t.pos);
    }
    assert_eq!((ia, ib), (a.len(), b.len()));
    // Decoding one more token for both sequences in one batch matches decoding each alone.
    let next = [greedy(&la[a.len() - 1]), greedy(&lb[b.len() - 1])];
    let step = Batch {
        tokens: vec![
            BatchToken { token: next[0], pos: a.len(), seq: 0, logits: true },
            BatchToken { token: next[1], pos: b.len(), seq: 1, logits: true },
        ],
    };
    let both = f.model.forward(&step, &mut caches, &f.pool).unwrap();
    for (s, ids) in [a, b].iter().enumerate() {
        let mut extended = ids.to_vec();
        extended.push(next[s]);
        let single = alone(&extended);
        let d = max_abs_diff(both.row(s), single.last().unwrap());
        assert!(d < 1e-3, "decode step of seq {s}: max diff {d}");
    }
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
