//! Importance matrices, computed as llama.cpp's `llama-imatrix` computes them: the model runs over a text in
//! chunks (perplexity's chunking: `n_ctx` tokens each, BOS first, from an empty cache) and, for every product of
//! activations with a weight matrix of the decoder layers, each input column's squared activation is summed
//! over the tokens, with the count of tokens. `gemma quantize --imatrix` and `llama-quantize --imatrix` weigh
//! the rounding error of each column by these sums over the count. See `docs/quantize.md`.
//!
//! What is collected is what llama-imatrix's callback keeps: products whose weight is named `blk.*` (the token
//! embedding is a lookup, not a product; the attention products have no weight), and `output.weight` only with
//! `process_output`. A head tied to the embedding multiplies by `token_embd.weight`, so it is never collected.
//! Products over fewer than 16 tokens are skipped, as llama-imatrix skips them (the passes here are never that
//! small unless a whole group of chunks is).

pub mod statistics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use gemma_io::imatrix::{Imatrix, ImatrixEntry};
use gemma_ops::ThreadPool;

use crate::kv_cache::MAX_UBATCH;
use crate::model::{MatmulObserver, WeightName};
use crate::perplexity::{token_nll, ChunkPlan, NllStats, PerplexityError};
use crate::{Batch, KvCache, Model, ModelError, Scratch};

/// Products over fewer tokens than this are not collected (llama-imatrix's rule, meant for generation steps).
pub const MIN_TOKENS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ImatrixRunError {
    #[error(transparent)]
    Plan(#[from] PerplexityError),
    #[error("non-finite activations reached {0}: the model or its file is broken")]
    NotFinite(String),
    #[error(
        "no product saw {MIN_TOKENS} tokens in one pass, so nothing was collected: use more text or a larger context"
    )]
    NothingCollected,
    #[error("stopped before the end")]
    Cancelled,
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One matrix's running sums.
#[derive(Clone, Debug)]
struct Sums {
    /// Per input column, the sum of the squared activations (f64, so long runs lose nothing; stored as f32).
    squares: Vec<f64>,
    tokens: u64,
}

/// Collects the sums of squared input activations of every product a forward pass shows it
/// ([`Model::forward_observed`]).
#[derive(Clone, Debug, Default)]
pub struct Collector {
    process_output: bool,
    sums: BTreeMap<WeightName, Sums>,
    /// The first matrix whose sums stopped being finite.
    not_finite: Option<WeightName>,
}

impl Collector {
    /// A collector of the decoder layers' matrices, and of `output.weight` too when `process_output`
    /// (llama-imatrix's `--process-output`).
    pub fn new(process_output: bool) -> Collector {
        Collector { process_output, ..Collector::default() }
    }

    fn wants(&self, w: &WeightName) -> bool {
        w.layer.is_some() || (self.process_output && w.tensor == "output")
    }

    /// The most tokens any matrix has seen.
    pub fn max_tokens(&self) -> u64 {
        self.sums.values().map(|s| s.tokens).max().unwrap_or(0)
    }

    /// Matrices collected so far.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The matrix as llama-imatrix saves it: sums and counts by GGUF name, `chunk_count` = the most tokens seen
    /// over `chunk_size` (whole chunks so far), `datasets` naming the text.
    pub fn to_imatrix(&self, datasets: Vec<String>, chunk_size: usize) -> Imatrix {
        let entries = self
            .sums
            .iter()
            .map(|(w, s)| {
                let sums = s.squares.iter().map(|&v| v as f32).collect();
                (w.to_string(), ImatrixEntry { sums, counts: vec![s.tokens as i64] })
            })
            .collect();
        Imatrix {
            entries,
            datasets,
            chunk_count: (self.max_tokens() / chunk_size.max(1) as u64) as u32,
            chunk_size: chunk_size as u32,
            is_legacy: false,
            has_metadata: true,
        }
    }
}

impl MatmulObserver for Collector {
    fn observe(&mut self, weight: WeightName, input: &[f32], cols: usize) {
        let rows = input.len() / cols.max(1);
        if rows < MIN_TOKENS || !self.wants(&weight) {
            return;
        }
        let s = self.sums.entry(weight).or_insert_with(|| Sums { squares: vec![0.0; cols], tokens: 0 });
        for row in input.chunks_exact(cols) {
            for (acc, &x) in s.squares.iter_mut().zip(row) {
                *acc += f64::from(x) * f64::from(x);
            }
        }
        s.tokens += rows as u64;
        if self.not_finite.is_none() && s.squares.iter().any(|v| !v.is_finite()) {
            self.not_finite = Some(weight);
        }
    }
}

/// Runs the chunks of `tokens` laid out by `plan` through the model, showing every product to `collector`.
/// `bos` replaces each chunk's first token, as llama-imatrix does when the model adds a BOS token. With `nll`,
/// the second half of every chunk is scored as llama-imatrix's default does (perplexity's positions).
/// `on_chunk(chunk, collector, nll)` is called after each chunk. Setting `cancel` stops the run between two
/// forward passes with [`ImatrixRunError::Cancelled`].
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model,
    pool: &ThreadPool,
    tokens: &[u32],
    bos: Option<u32>,
    plan: &ChunkPlan,
    collector: &mut Collector,
    mut nll: Option<&mut NllStats>,
    on_chunk: &mut dyn FnMut(usize, &Collector, Option<&NllStats>),
    cancel: Option<&AtomicBool>,
) -> Result<(), ImatrixRunError> {
    plan.check(model, tokens.len())?;
    // llama-imatrix asks for every position's logits; only the output product needs them all, and only when
    // it is collected (an untied head).
    let all_rows = collector.process_output && model.file.tensor("output.weight").is_some();
    let mut scratch = Scratch::default();
    let mut nlls: Vec<f64> = Vec::new();
    // Each chunk's scored values, added to `nll` chunk after chunk once the group is done (so each chunk's
    // running perplexity is what llama-imatrix prints after it).
    let mut by_chunk: Vec<Vec<f64>> = Vec::new();
    for chunks in plan.groups() {
        let mut caches: Vec<KvCache> = chunks.iter().map(|_| model.new_cache(plan.n_ctx)).collect();
        by_chunk.iter_mut().for_each(Vec::clear);
        by_chunk.resize(chunks.len(), Vec::new());
        let scored = |pos| nll.is_some() && plan.is_scored(pos);
        let all = plan.group_tokens(tokens, bos, &chunks, |pos| scored(pos) || all_rows);
        // Passes of equal size, none over MAX_UBATCH: a short last pass would drop under MIN_TOKENS.
        let n_passes = all.len().div_ceil(MAX_UBATCH);
        for pass in all.chunks(all.len().div_ceil(n_passes)) {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(ImatrixRunError::Cancelled);
            }
            let pass = Batch { tokens: pass.to_vec() };
            let logits = model.forward_observed(&pass, &mut caches, pool, &mut scratch, collector)?;
            if let Some(w) = collector.not_finite {
                return Err(ImatrixRunError::NotFinite(w.to_string()));
            }
            if nll.is_none() {
                continue;
            }
            // Each scored row's sequence and next token (rows outside the scored half are there for the
            // output product).
            let targets: Vec<Option<(usize, usize)>> = logits
                .batch_index
                .iter()
                .map(|&b| {
                    let t = pass.tokens[b];
                    let next = tokens[chunks[t.seq] * plan.n_ctx + t.pos + 1] as usize;
                    plan.is_scored(t.pos).then_some((t.seq, next))
                })
                .collect();
            nlls.clear();
            nlls.resize(targets.len(), 0.0);
            pool.for_chunks_mut(&mut nlls, 1, &|i, out| {
                if let Some((_, next)) = targets[i] {
                    out[0] = token_nll(logits.row(i), next);
                }
            });
            for (t, &v) in targets.iter().zip(&nlls) {
                if let Some((seq, _)) = t {
                    by_chunk[*seq].push(v);
                }
            }
        }
        for (seq, &c) in chunks.iter().enumerate() {
            if let Some(stats) = nll.as_deref_mut() {
                by_chunk[seq].iter().for_each(|&v| stats.add(v));
            }
            on_chunk(c, collector, nll.as_deref());
        }
    }
    if collector.is_empty() {
        return Err(ImatrixRunError::NothingCollected);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(layer: Option<usize>, tensor: &'static str) -> WeightName {
        WeightName { layer, tensor }
    }

    #[test]
    fn collects_squares_and_tokens_of_layer_products_only() {
        let mut c = Collector::new(false);
        let cols = 3;
        let input: Vec<f32> = (0..MIN_TOKENS * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        c.observe(name(Some(0), "attn_q"), &input, cols);
        c.observe(name(Some(0), "attn_q"), &input, cols);
        c.observe(name(None, "output"), &input, cols);
        c.observe(name(None, "token_embd"), &input, cols);
        // a generation-sized pass is skipped
        c.observe(name(Some(1), "ffn_down"), &input[..(MIN_TOKENS - 1) * cols], cols);
        let m = c.to_imatrix(vec!["t.txt".into()], 8);
        assert_eq!(m.entries.keys().collect::<Vec<_>>(), vec!["blk.0.attn_q.weight"]);
        let e = &m.entries["blk.0.attn_q.weight"];
        assert_eq!(e.counts, vec![2 * MIN_TOKENS as i64]);
        for (j, &s) in e.sums.iter().enumerate() {
            let expected: f32 = input.chunks_exact(cols).map(|r| 2.0 * r[j] * r[j]).sum();
            assert_eq!(s, expected, "column {j}");
        }
        assert_eq!((m.chunk_count, m.chunk_size, m.datasets.len()), (4, 8, 1));

        let mut with_output = Collector::new(true);
        with_output.observe(name(None, "output"), &input, cols);
        with_output.observe(name(None, "token_embd"), &input, cols);
        let m = with_output.to_imatrix(vec![], 8);
        assert_eq!(m.entries.keys().collect::<Vec<_>>(), vec!["output.weight"]);
    }

    #[test]
    fn non_finite_activations_are_noticed() {
        let mut c = Collector::new(false);
        let mut input = vec![1.0f32; MIN_TOKENS * 2];
        input[5] = f32::INFINITY;
        c.observe(name(Some(2), "ffn_up"), &input, 2);
        assert_eq!(c.not_finite.map(|w| w.to_string()).as_deref(), Some("blk.2.ffn_up.weight"));
    }
}
