//! Helpers shared by the model parity tests (`mod common;` in each: every test file is its own crate).
#![allow(dead_code)]

pub mod gemma2_files;

use std::sync::OnceLock;

use gemma_core::sampling::greedy;
use gemma_core::{Batch, BatchToken, Model, Tokenizer};
use gemma_ops::ThreadPool;

/// The default model (Gemma 3 270M), its tokenizer and a pool of 2 threads, loaded once per test binary.
pub struct DefaultModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub pool: ThreadPool,
}

pub fn default_model() -> &'static DefaultModel {
    static M: OnceLock<DefaultModel> = OnceLock::new();
    M.get_or_init(|| {
        let path = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model available");
        let model = Model::open(&path).expect("model loads");
        let tokenizer = Tokenizer::from_gguf(&model.file).expect("tokenizer loads");
        DefaultModel { model, tokenizer, pool: ThreadPool::new(2) }
    })
}

/// The default model requantized to F32 (what `llama-quantize --allow-requantize MODEL OUT F32` writes,
/// byte for byte), in a temporary folder that lives as long as the returned guard.
pub fn f32_default_model() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("f32.gguf");
    let mut options = gemma_core::quantize::QuantizeOptions::new(gemma_core::quantize::FileType::AllF32);
    options.allow_requantize = true;
    options.threads = 2;
    let source = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model");
    gemma_core::quantize::quantize_file(&source, &path, &options, &mut |_| {}).expect("F32 file");
    let model = Model::open(&path).expect("F32 model");
    (dir, model)
}

/// Logits at the positions that predict `gen_ids`, feeding `prompt_ids + gen_ids[..n-1]` in one pass.
pub fn teacher_forced(model: &Model, pool: &ThreadPool, prompt_ids: &[u32], gen_ids: &[u32]) -> Vec<Vec<f32>> {
    let n_gen = gen_ids.len();
    let ids: Vec<u32> = prompt_ids.iter().chain(&gen_ids[..n_gen - 1]).copied().collect();
    let first_predicting = prompt_ids.len() - 1;
    let batch = Batch {
        tokens: ids
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: pos >= first_predicting })
            .collect(),
    };
    let mut cache = model.new_cache(ids.len());
    let logits = model.forward(&batch, std::slice::from_mut(&mut cache), pool).expect("forward");
    assert_eq!(logits.len(), n_gen, "logits only for the rows that asked");
    (0..n_gen).map(|i| logits.row(i).to_vec()).collect()
}

/// [`teacher_forced`] in prefill chunks of 128, as a long prompt's prefill runs (sliding windows then move
/// across chunk boundaries): logits at each position from the prompt's last on.
pub fn teacher_forced_in_chunks(model: &Model, prompt: &[u32], gen: &[u32]) -> Vec<Vec<f32>> {
    let pool = &default_model().pool;
    let ids: Vec<u32> = prompt.iter().chain(gen).copied().collect();
    let mut cache = model.new_cache(ids.len());
    let mut scratch = gemma_core::Scratch::default();
    let mut out = Vec::new();
    for (c, chunk) in ids.chunks(128).enumerate() {
        let mut batch = Batch::default();
        for (i, &token) in chunk.iter().enumerate() {
            let pos = c * 128 + i;
            batch.push(BatchToken { token, pos, seq: 0, logits: pos + 1 >= prompt.len() && pos < ids.len() - 1 });
        }
        let logits = model.forward_with(&batch, std::slice::from_mut(&mut cache), pool, &mut scratch).expect("forward");
        out.extend((0..logits.len()).map(|i| logits.row(i).to_vec()));
    }
    out
}

/// Log-probabilities of a logit row, in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|v| (*v as f64 - max).exp()).sum();
    x.iter().map(|v| *v as f64 - max - sum.ln()).collect()
}

/// Teacher-forced argmax against llama.cpp's greedy tokens over goldens given as (prompt ids, generated ids,
/// llama.cpp's top-1 / top-2 margins): the steps where they differ although the margin is at least 1.0, and
/// (steps with a margin of at least 0.5, how many of those agree).
pub fn teacher_forced_agreement<'a>(
    model: &Model,
    pool: &ThreadPool,
    goldens: impl IntoIterator<Item = (&'a [u32], &'a [u32], &'a [f32])>,
) -> (Vec<String>, usize, usize) {
    let (mut failures, mut confident, mut confident_ok) = (Vec::new(), 0usize, 0usize);
    for (p, (prompt, gen, margins)) in goldens.into_iter().enumerate() {
        for (i, row) in teacher_forced(model, pool, prompt, gen).iter().enumerate() {
            let ours = greedy(row);
            if margins[i] >= 1.0 && ours != gen[i] {
                failures
                    .push(format!("prompt {p} step {i}: ours {ours}, llama.cpp {} (margin {})", gen[i], margins[i]));
            }
            if margins[i] >= 0.5 {
                confident += 1;
                confident_ok += (ours == gen[i]) as usize;
            }
        }
    }
    (failures, confident, confident_ok)
}

/// The `k` best (id, logit) of `row`, best first.
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// At the first near-tie of prompt `p` (step `step`, where the goldens' margin is below 0.75), our token must
/// be llama.cpp's, its runner-up, or one llama.cpp has within the near-tie margin (0.75) of its best: `top` is
/// its teacher-forced top 5 there (recorded by `scripts/llama_topk_goldens.py` on the same context, identical to
/// ours up to this step). The runner-up always counts because llama.cpp's two runs do not agree on the margin
/// itself: at prompt 8 step 8 its generation has 0.48 and its teacher-forced pass 0.83.
pub fn assert_near_tie_pick(p: usize, step: usize, ours: u32, llama: u32, top: &[(u32, f64)]) {
    let tied: Vec<u32> =
        top.iter().enumerate().filter(|(i, x)| *i == 1 || x.1 >= top[0].1 - 0.75).map(|(_, x)| x.0).collect();
    assert!(
        ours == llama || tied.contains(&ours),
        "prompt {p} step {step}: ours {ours}, not among llama.cpp's best, runner-up and tokens within 0.75 of \
         its best {top:?}"
    );
}

/// Prompts `a` and `b` interleaved in one batch, and then one decode step of both together, give each the
/// logits it gets alone (to 1e-3).
pub fn two_prompts_in_one_batch_match_each_alone(model: &Model, pool: &ThreadPool, a: &[u32], b: &[u32]) {
    let alone = |ids: &[u32]| {
        let mut cache = model.new_cache(64);
        let logits = model.forward(&Batch::sequence(ids, 0, 0, true), std::slice::from_mut(&mut cache), pool).unwrap();
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
    let mut caches = vec![model.new_cache(64), model.new_cache(64)];
    let logits = model.forward(&batch, &mut caches, pool).unwrap();
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
    let both = model.forward(&step, &mut caches, pool).unwrap();
    for (s, ids) in [a, b].iter().enumerate() {
        let mut extended = ids.to_vec();
        extended.push(next[s]);
        let single = alone(&extended);
        let d = max_abs_diff(both.row(s), single.last().unwrap());
        assert!(d < 1e-3, "decode step of seq {s}: max diff {d}");
    }
}

/// What llama.cpp's file tools wrote (`llama-quantize`, `llama-export-lora`), as their goldens scripts record
/// it: the file's size and sha256, its metadata keys in order, and each tensor's name, type, dims and data sha256.
#[derive(serde::Deserialize)]
pub struct GoldenFile {
    pub file_sha256: String,
    pub file_size: u64,
    pub metadata_keys: Vec<String>,
    pub tensors: Vec<GoldenTensor>,
}

#[derive(serde::Deserialize)]
pub struct GoldenTensor {
    pub name: String,
    #[serde(rename = "type")]
    pub ggml_type: String,
    pub dims: Vec<u64>,
    pub sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// How the GGUF file `bytes` differs from what `tool` wrote (`golden`): empty when it is the same file.
pub fn differences_from_golden(bytes: &[u8], golden: &GoldenFile, tool: &str) -> Vec<String> {
    let out = match gemma_io::GgufFile::from_bytes(bytes.to_vec(), "output.gguf") {
        Ok(f) => f,
        Err(e) => return vec![format!("the output does not parse: {e}")],
    };
    let mut problems = Vec::new();
    let keys: Vec<&str> = out.metadata().iter().map(|(k, _)| k.as_str()).collect();
    if keys != golden.metadata_keys.iter().map(String::as_str).collect::<Vec<_>>() {
        problems.push(format!("metadata keys differ: {keys:?}"));
    }
    if out.tensors().len() != golden.tensors.len() {
        problems.push(format!("{} tensors, {tool} wrote {}", out.tensors().len(), golden.tensors.len()));
    }
    for (ours, theirs) in out.tensors().iter().zip(&golden.tensors) {
        let ours_desc = (ours.name.as_str(), ours.ggml_type.name(), ours.dims.as_slice());
        let theirs_desc = (theirs.name.as_str(), theirs.ggml_type.as_str(), theirs.dims.as_slice());
        if ours_desc != theirs_desc {
            problems.push(format!("tensor {ours_desc:?}, {tool} {theirs_desc:?}"));
        } else if sha256_hex(out.tensor_data(ours)) != theirs.sha256 {
            problems.push(format!("tensor {} ({}) data differs", ours.name, ours.ggml_type));
        }
    }
    if problems.is_empty() && (bytes.len() as u64 != golden.file_size || sha256_hex(bytes) != golden.file_sha256) {
        problems.push(format!(
            "tensors equal, but the file differs ({} bytes, {tool} {})",
            bytes.len(),
            golden.file_size
        ));
    }
    problems
}
