//! The log-probabilities the multiple-choice benchmarks (HellaSwag, Winogrande, llama.cpp's multiple-choice
//! files) compare: each candidate text
//! is a token sequence run whole from an empty cache, and a query asks for the log-probability of one token
//! under the logits after one position. Only the positions some query needs get logits, in passes of at most
//! [`MAX_UBATCH`] tokens and [`MAX_LOGIT_ROWS`] rows (each row is a whole vocabulary: 1 MiB for Gemma 3).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use gemma_ops::ThreadPool;

use crate::kv_cache::MAX_UBATCH;
use crate::perplexity::token_nll;
use crate::random::Mt19937;
use crate::{Batch, BatchToken, KvCache, Model, ModelError, Scratch};

/// Why a benchmark run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("a task needs {tokens} tokens for one candidate, more than the context of {ctx}")]
    TooLong { tokens: usize, ctx: usize },
    #[error("stopped before the end")]
    Cancelled,
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Scores `tasks` in order with `score_one`, calling `on_task(i, score)` after each; setting `cancel` stops
/// between two tasks with [`ScoringError::Cancelled`].
pub fn score_each<T, S>(
    tasks: &[T],
    cancel: Option<&AtomicBool>,
    on_task: &mut dyn FnMut(usize, &S),
    mut score_one: impl FnMut(&T) -> Result<S, ScoringError>,
) -> Result<Vec<S>, ScoringError> {
    let mut out = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(ScoringError::Cancelled);
        }
        let score = score_one(task)?;
        on_task(i, &score);
        out.push(score);
    }
    Ok(out)
}

/// An error unless every sequence fits in `n_ctx` tokens.
pub fn check_fits(seqs: &[Vec<u32>], n_ctx: usize) -> Result<(), ScoringError> {
    match seqs.iter().map(Vec::len).max() {
        Some(tokens) if tokens > n_ctx => Err(ScoringError::TooLong { tokens, ctx: n_ctx }),
        _ => Ok(()),
    }
}

/// `n` of `tasks` in the random order llama-perplexity's Winogrande and multiple-choice modes pick them
/// (`std::mt19937` seeded with 1, `int(2^-32 * rng() * left)` in float, the last index swapped into the
/// hole); all, in order, when `n` is 0 or not below their number.
pub fn pick_in_llama_order<T: Clone>(tasks: Vec<T>, n: usize) -> Vec<T> {
    if n == 0 || n >= tasks.len() {
        return tasks;
    }
    let mut rng = Mt19937::new(1);
    let scale = 1.0 / (1.0 + u32::MAX as f32);
    let mut left: Vec<usize> = (0..tasks.len()).collect();
    let mut picked = Vec::with_capacity(n);
    for _ in 0..n {
        let j = ((scale * rng.next_u32() as f32 * left.len() as f32) as usize).min(left.len() - 1);
        picked.push(tasks[left[j]].clone());
        left.swap_remove(j);
    }
    picked
}

/// Rows of logits computed in one pass.
pub const MAX_LOGIT_ROWS: usize = 64;

/// The log-probability of `target` under the logits after position `pos` of sequence `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub seq: usize,
    pub pos: usize,
    pub target: u32,
}

/// Answers `queries` about `seqs`, in query order (natural-log probabilities).
pub fn log_probs(
    model: &Model,
    pool: &ThreadPool,
    scratch: &mut Scratch,
    seqs: &[Vec<u32>],
    queries: &[Query],
) -> Result<Vec<f64>, ModelError> {
    let mut asked: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (i, q) in queries.iter().enumerate() {
        asked.entry((q.seq, q.pos)).or_default().push(i);
    }
    let all: Vec<BatchToken> = seqs
        .iter()
        .enumerate()
        .flat_map(|(seq, tokens)| {
            let asked = &asked;
            tokens.iter().enumerate().map(move |(pos, &token)| BatchToken {
                token,
                pos,
                seq,
                logits: asked.contains_key(&(seq, pos)),
            })
        })
        .collect();
    let mut caches: Vec<KvCache> = seqs.iter().map(|s| model.new_cache(s.len())).collect();
    let mut out = vec![0f64; queries.len()];
    let mut nlls: Vec<f64> = Vec::new();
    let mut start = 0;
    while start < all.len() {
        let (mut end, mut rows) = (start, 0);
        while end < all.len() && end - start < MAX_UBATCH && rows + usize::from(all[end].logits) <= MAX_LOGIT_ROWS {
            rows += usize::from(all[end].logits);
            end += 1;
        }
        let pass = Batch { tokens: all[start..end].to_vec() };
        let logits = model.forward_with(&pass, &mut caches, pool, scratch)?;
        // (row, query) pairs of this pass
        let pairs: Vec<(usize, usize)> = logits
            .batch_index
            .iter()
            .enumerate()
            .flat_map(|(row, &b)| {
                let t = &pass.tokens[b];
                asked[&(t.seq, t.pos)].iter().map(move |&q| (row, q))
            })
            .collect();
        nlls.clear();
        nlls.resize(pairs.len(), 0.0);
        pool.for_chunks_mut(&mut nlls, 1, &|i, o| {
            let (row, q) = pairs[i];
            o[0] = token_nll(logits.row(row), queries[q].target as usize);
        });
        for (&(_, q), &nll) in pairs.iter().zip(&nlls) {
            out[q] = -nll;
        }
        start = end;
    }
    Ok(out)
}

/// The tokens every sequence starts with (at most the shortest less one, so each has a token to score).
pub fn common_prefix(seqs: &[Vec<u32>]) -> usize {
    let shortest = seqs.iter().map(Vec::len).min().unwrap_or(0);
    let mut common = 0;
    while common + 1 < shortest && seqs.iter().all(|s| s[common] == seqs[0][common]) {
        common += 1;
    }
    common
}

/// For each sequence, the mean log-probability of its tokens after the prefix all share (llama-perplexity's
/// HellaSwag and multiple-choice score of a candidate continuation).
pub fn mean_continuation_log_probs(
    model: &Model,
    pool: &ThreadPool,
    scratch: &mut Scratch,
    seqs: &[Vec<u32>],
) -> Result<Vec<f64>, ModelError> {
    let first = common_prefix(seqs).max(1);
    let queries: Vec<Query> = seqs
        .iter()
        .enumerate()
        .flat_map(|(seq, tokens)| (first..tokens.len()).map(move |t| Query { seq, pos: t - 1, target: tokens[t] }))
        .collect();
    let lp = log_probs(model, pool, scratch, seqs, &queries)?;
    let mut sums = vec![0f64; seqs.len()];
    let mut counts = vec![0usize; seqs.len()];
    for (q, v) in queries.iter().zip(lp) {
        sums[q.seq] += v;
        counts[q.seq] += 1;
    }
    Ok(sums.iter().zip(&counts).map(|(s, &c)| s / c.max(1) as f64).collect())
}

/// The index of the largest value (the first of equals).
pub fn first_max(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}
