//! Perplexity and KL divergence of a model over a text, measured as llama.cpp's `llama-perplexity` measures them.
//!
//! The text's tokens are cut into chunks of `n_ctx`. Each chunk starts from an empty cache, its first token
//! replaced by BOS when the model adds one, and only its second half is scored, so every scored token has at
//! least `n_ctx / 2` tokens before it. Strided perplexity (`--ppl-stride`, [`ChunkPlan::strided`]) slides a
//! window over the text instead and scores the last `stride` tokens of each. `--kl-divergence-base` files ([`LogProbWriter`], [`LogProbReader`]) are
//! llama.cpp's: the tokens, then each scored row's log-probabilities quantized to 16 bits; either tool reads
//! the other's. See `docs/perplexity.md`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use gemma_ops::vector::exp_fast;
use gemma_ops::ThreadPool;

use crate::{Batch, BatchToken, KvCache, Model, ModelError, Scratch};

/// The first bytes of a log-probability file.
pub const LOG_PROB_MAGIC: &[u8; 8] = b"_logits_";

/// Logit rows computed per forward pass. A row is `vocab_size` floats (1 MiB for Gemma 3), so this bounds the
/// memory of a run; the weights are read once per pass, which 64 rows amortize.
const ROWS_PER_PASS: usize = 64;

/// Tokens per forward pass at most (the model splits longer batches anyway).
const TOKENS_PER_PASS: usize = crate::kv_cache::MAX_UBATCH;

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("a context of {0} tokens scores nothing: use at least 4 (the second half of each chunk is scored)")]
    ContextTooSmall(usize),
    #[error("a context of {n_ctx} tokens is more than the model's {max}")]
    ContextTooLarge { n_ctx: usize, max: usize },
    #[error("the text is {tokens} tokens long; a context of {n_ctx} needs at least {} (two chunks)", 2 * n_ctx)]
    TooFewTokens { tokens: usize, n_ctx: usize },
    #[error(
        "strided perplexity over windows of {window} tokens (context {n_ctx} + stride {stride} / 2, rounded up to \
         a multiple of 256 as llama.cpp sizes it) needs at least {} tokens (two windows); the text is {tokens} tokens long",
        2 * window
    )]
    TooFewTokensForStride { tokens: usize, n_ctx: usize, stride: usize, window: usize },
    #[error(
        "a stride of {stride} does not fit the window of {window} tokens it makes with a context of {n_ctx} (the \
         context + stride / 2, rounded up to a multiple of 256 as llama.cpp sizes it): use 1 to {}",
        window.saturating_sub(1)
    )]
    BadStride { stride: usize, n_ctx: usize, window: usize },
    #[error("strided perplexity neither saves log-probabilities nor compares with a base (nor does llama.cpp's)")]
    StridedLogProbs,
    #[error("{0} is an embedding model: it gives no next-token probabilities")]
    EmbeddingModel(String),
    #[error("{path}: {message}")]
    LogProbFile { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("stopped before the end")]
    Cancelled,
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// How a text is cut and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Chunks to score.
    pub n_chunks: usize,
    /// Chunks run side by side in one batch (llama.cpp's `n_batch / n_ctx`); the results do not depend on it.
    pub n_seq: usize,
    /// Strided perplexity (llama-perplexity's `--ppl-stride`): chunk `i` starts at token `i * stride`, keeps
    /// its first token (no BOS put in) and has its last `stride` tokens scored. `None`: chunks one after the
    /// other, BOS first, second half scored.
    pub stride: Option<usize>,
}

/// The window of a strided run: the context llama.cpp gives it, `n_ctx + stride / 2` rounded up to a multiple
/// of 256 as every llama.cpp context is (its strided mode takes the whole context as its window). Errors when
/// the context is under 4 tokens or the stride is 0 or not shorter than the window (where llama.cpp reads
/// outside its logits).
pub fn strided_window(n_ctx: usize, stride: usize) -> Result<usize, PerplexityError> {
    if n_ctx < 4 {
        return Err(PerplexityError::ContextTooSmall(n_ctx));
    }
    let window = n_ctx.saturating_add(stride / 2).div_ceil(256).saturating_mul(256);
    if stride == 0 || stride >= window {
        return Err(PerplexityError::BadStride { stride, n_ctx, window });
    }
    Ok(window)
}

impl ChunkPlan {
    /// The plan for `n_tokens` tokens: every whole chunk, or the first `max_chunks`. Errors as llama.cpp's
    /// tool does when the text is shorter than two chunks.
    pub fn new(
        n_tokens: usize,
        n_ctx: usize,
        max_chunks: Option<usize>,
        n_seq: usize,
    ) -> Result<ChunkPlan, PerplexityError> {
        if n_ctx < 4 {
            return Err(PerplexityError::ContextTooSmall(n_ctx));
        }
        if n_tokens < 2 * n_ctx {
            return Err(PerplexityError::TooFewTokens { tokens: n_tokens, n_ctx });
        }
        let all = n_tokens / n_ctx;
        Ok(ChunkPlan { n_ctx, n_chunks: max_chunks.map_or(all, |m| m.min(all)), n_seq: n_seq.max(1), stride: None })
    }

    /// The plan of llama-perplexity's strided perplexity for a context of `n_ctx` and `stride`: windows of
    /// [`strided_window`] tokens, one every `stride` tokens while a whole window fits (or the first
    /// `max_chunks`). Errors as [`strided_window`] does, and as llama.cpp's tool does when the text is shorter
    /// than two windows.
    pub fn strided(
        n_tokens: usize,
        n_ctx: usize,
        stride: usize,
        max_chunks: Option<usize>,
        n_seq: usize,
    ) -> Result<ChunkPlan, PerplexityError> {
        let window = strided_window(n_ctx, stride)?;
        if n_tokens < 2 * window {
            return Err(PerplexityError::TooFewTokensForStride { tokens: n_tokens, n_ctx, stride, window });
        }
        let all = (n_tokens - window).div_ceil(stride);
        Ok(ChunkPlan {
            n_ctx: window,
            n_chunks: max_chunks.map_or(all, |m| m.min(all)),
            n_seq: n_seq.max(1),
            stride: Some(stride),
        })
    }

    /// Where chunk `c` starts in the text.
    pub fn start(&self, c: usize) -> usize {
        c * self.stride.unwrap_or(self.n_ctx)
    }

    /// The first scored position of a chunk.
    pub fn first(&self) -> usize {
        match self.stride {
            Some(s) => self.n_ctx.saturating_sub(s + 1),
            None => self.n_ctx / 2,
        }
    }

    /// The last scored position of a chunk (it predicts the chunk's last token).
    pub fn last_scored(&self) -> usize {
        self.n_ctx - 2
    }

    /// Whether position `pos` of a chunk is scored.
    pub fn is_scored(&self, pos: usize) -> bool {
        (self.first()..=self.last_scored()).contains(&pos)
    }

    /// Positions scored per chunk: `first .. n_ctx - 1`, each predicting the token after it.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.first()
    }

    /// Checks that `model` can run the plan over `n_tokens` tokens.
    pub fn check(&self, model: &Model, n_tokens: usize) -> Result<(), PerplexityError> {
        if model.is_embedding_model() {
            return Err(PerplexityError::EmbeddingModel(model.config.name.clone()));
        }
        let max = model.config.context_length;
        if self.n_ctx > max {
            return Err(PerplexityError::ContextTooLarge { n_ctx: self.n_ctx, max });
        }
        if self.n_ctx < 4 {
            return Err(PerplexityError::ContextTooSmall(self.n_ctx));
        }
        if let Some(stride) = self.stride {
            if stride == 0 || stride >= self.n_ctx {
                return Err(PerplexityError::BadStride { stride, n_ctx: self.n_ctx, window: self.n_ctx });
            }
        }
        if self.n_chunks > 0 && n_tokens < self.start(self.n_chunks - 1) + self.n_ctx {
            return Err(PerplexityError::TooFewTokens { tokens: n_tokens, n_ctx: self.n_ctx });
        }
        Ok(())
    }

    /// The chunks run side by side, `n_seq` at a time.
    pub fn groups(&self) -> impl Iterator<Item = Vec<usize>> + '_ {
        (0..self.n_chunks).step_by(self.n_seq).map(|g| (g..(g + self.n_seq).min(self.n_chunks)).collect())
    }

    /// One group's tokens as a batch, chunk `chunks[i]` as sequence `i`, its first token replaced by `bos` when
    /// given (llama.cpp's tools do so when the model adds a BOS token) unless the plan is strided (llama.cpp's
    /// strided mode puts its BOS in after the tokens went to the model, so it never counts); `logits(pos)` says
    /// which positions' logits are wanted.
    pub fn group_tokens(
        &self,
        tokens: &[u32],
        bos: Option<u32>,
        chunks: &[usize],
        logits: impl Fn(usize) -> bool,
    ) -> Vec<BatchToken> {
        let bos = bos.filter(|_| self.stride.is_none());
        let mut all = Vec::with_capacity(chunks.len() * self.n_ctx);
        for (seq, &c) in chunks.iter().enumerate() {
            let start = self.start(c);
            for pos in 0..self.n_ctx {
                let token = match (pos, bos) {
                    (0, Some(b)) => b,
                    _ => tokens[start + pos],
                };
                all.push(BatchToken { token, pos, seq, logits: logits(pos) });
            }
        }
        all
    }
}

/// Running sums of negative log-likelihoods.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllStats {
    pub count: usize,
    pub sum: f64,
    pub sum_sq: f64,
}

impl NllStats {
    pub fn add(&mut self, nll: f64) {
        self.count += 1;
        self.sum += nll;
        self.sum_sq += nll * nll;
    }

    /// `e^(mean nll)`.
    pub fn perplexity(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama-perplexity's `--ppl-output-type 1` columns: the mean nll and its standard error (the variance
    /// itself, unscaled, when it is not positive, as llama.cpp prints it).
    pub fn mean_nll_and_error(&self) -> (f64, f64) {
        let mean = self.sum / self.count as f64;
        let var = self.sum_sq / self.count as f64 - mean * mean;
        (mean, if var > 0.0 { (var / (self.count as f64 - 1.0)).sqrt() } else { var })
    }

    /// llama.cpp's `+/-`: the perplexity times the standard error of the mean nll; `None` before two values.
    pub fn perplexity_error(&self) -> Option<f64> {
        let (mean, sd) = mean_and_error(self.sum, self.sum_sq, self.count)?;
        Some((mean).exp() * sd)
    }
}

/// Mean and standard error of the mean from a sum and a sum of squares (`None` without a positive variance).
fn mean_and_error(sum: f64, sum_sq: f64, count: usize) -> Option<(f64, f64)> {
    if count < 2 {
        return None;
    }
    let mean = sum / count as f64;
    let var = sum_sq / count as f64 - mean * mean;
    (var > 0.0).then(|| (mean, (var / (count - 1) as f64).sqrt()))
}

/// `(max, index of the first max, ln Σ e^(l - max))` of a row of logits; the sum is kept in f64.
fn log_sum_exp(row: &[f32]) -> (f32, usize, f32) {
    let (mut imax, mut max) = (0, row[0]);
    for (i, &l) in row.iter().enumerate().skip(1) {
        if l > max {
            (imax, max) = (i, l);
        }
    }
    let mut sum = 0f64;
    for c in row.chunks(16) {
        // 16 single-precision terms at a time vectorise; their sum goes to f64 so 262,144 terms lose nothing.
        sum += c.iter().map(|&l| exp_fast(l - max)).sum::<f32>() as f64;
    }
    (max, imax, sum.ln() as f32)
}

/// `-ln p(token)` under a row of logits.
pub fn token_nll(row: &[f32], token: usize) -> f64 {
    let (max, _, lse) = log_sum_exp(row);
    (max + lse - row[token]) as f64
}

/// Length in u16 of one row of a log-probability file for a vocabulary of `n_vocab`: two f32 (scale and
/// offset) then one u16 per token, padded to an even count.
pub fn log_prob_row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Round to the nearest integer, ties to even, as `x + 1.5 * 2^23` does in single precision.
fn nearest_int(x: f32) -> i32 {
    ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Writes a row's log-probabilities in llama.cpp's 16-bit form into `out` (`log_prob_row_len` long): the
/// log-probabilities within 16 of the best are mapped linearly onto 0..=65535, the rest to 0. Returns
/// `-ln p(token)`.
pub fn encode_log_probs(row: &[f32], token: usize, out: &mut [u16]) -> f64 {
    let (max, _, lse) = log_sum_exp(row);
    let min = row.iter().copied().fold(row[0], f32::min).max(max - 16.0);
    let min_log_prob = min - max - lse;
    let scale = (max - min) / 65535.0;
    let (head, values) = out.split_at_mut(4);
    for (pair, v) in head.chunks_exact_mut(2).zip([scale, min_log_prob]) {
        let b = v.to_le_bytes();
        pair[0] = u16::from_le_bytes([b[0], b[1]]);
        pair[1] = u16::from_le_bytes([b[2], b[3]]);
    }
    values.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (q, &l) in values.iter_mut().zip(row) {
            if l > min {
                *q = nearest_int(inv * (l - min)) as u16;
            }
        }
    }
    (max + lse - row[token]) as f64
}

/// The scale and offset of an encoded row: log p(i) = `scale * q[i] + offset`.
fn decode_header(row: &[u16]) -> (f32, f32) {
    let f = |a: u16, b: u16| {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        f32::from_le_bytes([a[0], a[1], b[0], b[1]])
    };
    (f(row[0], row[1]), f(row[2], row[3]))
}

/// How one row of the model under test compares with the base model's row.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowDivergence {
    /// `-ln p(token)` under the model.
    pub nll: f64,
    /// `-ln p(token)` under the base (from its 16-bit row).
    pub nll_base: f64,
    /// KL(base || model) over the base's tokens within 16 of its best log-probability.
    pub kld: f64,
    /// `p(token) - p_base(token)`.
    pub p_diff: f64,
    /// Whether both put their maximum on the same token.
    pub same_top: bool,
}

/// Compares a row of logits with the base's encoded row, as llama.cpp does.
pub fn row_divergence(row: &[f32], base: &[u16], token: usize) -> RowDivergence {
    let (max, imax, lse) = log_sum_exp(row);
    let (scale, offset) = decode_header(base);
    let q = &base[4..4 + row.len()];
    let nll = max + lse - row[token];
    let nll_base = -(scale * q[token] as f32 + offset);
    let norm = max + lse;
    let mut kld = 0f64;
    let (mut imax_base, mut best_base) = (0, f32::NEG_INFINITY);
    for (i, (&qi, &l)) in q.iter().zip(row).enumerate() {
        let log_p_base = scale * qi as f32 + offset;
        if i == 0 || log_p_base > best_base {
            (imax_base, best_base) = (i, log_p_base);
        }
        if log_p_base > -16.0 {
            kld += (exp_fast(log_p_base) * (log_p_base - l + norm)) as f64;
        }
    }
    RowDivergence {
        nll: nll as f64,
        nll_base: nll_base as f64,
        kld,
        p_diff: ((-nll).exp() - (-nll_base).exp()) as f64,
        same_top: imax == imax_base,
    }
}

/// Running sums of a KL-divergence run, and every row's KLD and Δp for the percentiles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DivergenceStats {
    pub nll: NllStats,
    pub nll_base: NllStats,
    pub sum_nll_nll_base: f64,
    pub kld: NllStats,
    pub p_diff: NllStats,
    pub p_diff_sq: NllStats,
    pub max_abs_p_diff: f64,
    pub same_top: usize,
    pub kld_values: Vec<f32>,
    pub p_diff_values: Vec<f32>,
}

/// A value and its standard error.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub value: f64,
    pub error: f64,
}

/// What llama.cpp prints at the end of a KL-divergence run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DivergenceSummary {
    pub count: usize,
    pub ppl: Estimate,
    pub ppl_base: Estimate,
    /// Correlation of the two models' per-token nll.
    pub ln_ppl_correlation: f64,
    pub ln_ppl_ratio: Estimate,
    pub ppl_ratio: Estimate,
    pub ppl_diff: Estimate,
    pub kld_mean: Estimate,
    /// KLD at `KLD_PERCENTILES` (min, 0.1%, 1%, 5%, 10%, median, 90%, 95%, 99%, 99.9%, max).
    pub kld_percentiles: Vec<(f64, f64)>,
    pub p_diff_mean: Estimate,
    /// Δp at `P_DIFF_PERCENTILES`.
    pub p_diff_percentiles: Vec<(f64, f64)>,
    pub p_diff_rms: Estimate,
    pub same_top: Estimate,
}

pub const KLD_PERCENTILES: [f64; 11] = [0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0];
pub const P_DIFF_PERCENTILES: [f64; 13] = [0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

impl DivergenceStats {
    pub fn add(&mut self, r: &RowDivergence) {
        self.nll.add(r.nll);
        self.nll_base.add(r.nll_base);
        self.sum_nll_nll_base += r.nll * r.nll_base;
        self.kld.add(r.kld);
        self.p_diff.add(r.p_diff);
        self.p_diff_sq.add(r.p_diff * r.p_diff);
        self.max_abs_p_diff = self.max_abs_p_diff.max(r.p_diff.abs());
        self.same_top += r.same_top as usize;
        self.kld_values.push(r.kld as f32);
        self.p_diff_values.push(r.p_diff as f32);
    }

    pub fn count(&self) -> usize {
        self.nll.count
    }

    /// Perplexity of the model and its error.
    pub fn ppl(&self) -> Estimate {
        let e = estimate(self.nll.sum, self.nll.sum_sq, self.count());
        Estimate { value: e.value.exp(), error: e.value.exp() * e.error }
    }

    /// `ln(PPL(model) / PPL(base))` and its error, counting the correlation of the two.
    pub fn ln_ppl_ratio(&self) -> Estimate {
        let (a, b) = (self.ln_ppl(), self.ln_ppl_base());
        let cov = self.covariance();
        Estimate { value: a.value - b.value, error: (a.error * a.error + b.error * b.error - 2.0 * cov).sqrt() }
    }

    /// Mean KLD and its error.
    pub fn kld_mean(&self) -> Estimate {
        estimate(self.kld.sum, self.kld.sum_sq, self.count())
    }

    /// Root mean square Δp and its error.
    pub fn p_diff_rms(&self) -> Estimate {
        let mse = estimate(self.p_diff_sq.sum, self.p_diff_sq.sum_sq, self.count());
        let rms = mse.value.sqrt();
        Estimate { value: rms, error: if rms > 0.0 { 0.5 / rms * mse.error } else { 0.0 } }
    }

    /// Share of rows whose best token is the base's, and its error.
    pub fn same_top(&self) -> Estimate {
        let n = self.count();
        let p = self.same_top as f64 / n.max(1) as f64;
        Estimate { value: p, error: if n > 1 { (p * (1.0 - p) / (n - 1) as f64).sqrt() } else { 0.0 } }
    }

    fn ln_ppl(&self) -> Estimate {
        estimate(self.nll.sum, self.nll.sum_sq, self.count())
    }

    fn ln_ppl_base(&self) -> Estimate {
        estimate(self.nll_base.sum, self.nll_base.sum_sq, self.count())
    }

    /// Covariance of the two mean nlls.
    fn covariance(&self) -> f64 {
        let n = self.count();
        if n < 10 {
            return 0.0;
        }
        let nf = n as f64;
        (self.sum_nll_nll_base / nf - (self.nll.sum / nf) * (self.nll_base.sum / nf)) / (nf - 1.0)
    }

    pub fn summary(&self) -> DivergenceSummary {
        let (lp, lb) = (self.ln_ppl(), self.ln_ppl_base());
        let cov = self.covariance();
        let ppl = self.ppl();
        let ppl_base = Estimate { value: lb.value.exp(), error: lb.value.exp() * lb.error };
        let ratio = self.ln_ppl_ratio();
        let ppl_cov = ppl.value * ppl_base.value * cov;
        let sorted = |v: &[f32]| {
            let mut v: Vec<f32> = v.to_vec();
            v.sort_by(f32::total_cmp);
            v
        };
        let (klds, p_diffs) = (sorted(&self.kld_values), sorted(&self.p_diff_values));
        DivergenceSummary {
            count: self.count(),
            ppl,
            ppl_base,
            ln_ppl_correlation: cov / (lp.error * lb.error),
            ln_ppl_ratio: ratio,
            ppl_ratio: Estimate { value: ratio.value.exp(), error: ratio.value.exp() * ratio.error },
            ppl_diff: Estimate {
                value: ppl.value - ppl_base.value,
                error: (ppl.error * ppl.error + ppl_base.error * ppl_base.error - 2.0 * ppl_cov).sqrt(),
            },
            kld_mean: self.kld_mean(),
            kld_percentiles: KLD_PERCENTILES.iter().map(|&f| (f, percentile(&klds, f))).collect(),
            p_diff_mean: estimate(self.p_diff.sum, self.p_diff.sum_sq, self.count()),
            p_diff_percentiles: P_DIFF_PERCENTILES.iter().map(|&f| (f, percentile(&p_diffs, f))).collect(),
            p_diff_rms: self.p_diff_rms(),
            same_top: self.same_top(),
        }
    }
}

/// Mean and standard error, zero error below 11 values as llama.cpp reports it.
fn estimate(sum: f64, sum_sq: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate { value: 0.0, error: 0.0 };
    }
    let value = sum / count as f64;
    let var = sum_sq / count as f64 - value * value;
    let error = if var > 0.0 && count > 10 { (var / (count - 1) as f64).sqrt() } else { 0.0 };
    Estimate { value, error }
}

/// Linear interpolation between the sorted values around `fraction` (the median of an even count is the mean
/// of the middle two).
fn percentile(sorted: &[f32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let p = fraction.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let i = p as usize;
    let t = p - i as f64;
    (1.0 - t) * sorted[i] as f64 + t * sorted[(i + 1).min(sorted.len() - 1)] as f64
}

/// Writes a log-probability file, to a temporary name renamed into place by [`LogProbWriter::finish`] (a run
/// that stops early leaves nothing behind).
pub struct LogProbWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    n_vocab: usize,
    done: bool,
}

impl LogProbWriter {
    /// Starts the file: magic, chunk length, vocabulary size, chunk count and the tokens of the chunks.
    pub fn create(
        path: &Path,
        plan: &ChunkPlan,
        n_vocab: usize,
        tokens: &[u32],
    ) -> Result<LogProbWriter, PerplexityError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".partial-{}", std::process::id()));
        let tmp = path.with_file_name(name);
        if plan.stride.is_some() {
            return Err(PerplexityError::StridedLogProbs);
        }
        let io = |source| PerplexityError::Io { path: path.to_path_buf(), source };
        let file = File::create(&tmp).map_err(io)?;
        let mut w = LogProbWriter { out: BufWriter::new(file), tmp, path: path.to_path_buf(), n_vocab, done: false };
        let mut head = Vec::with_capacity(20 + 4 * plan.n_chunks * plan.n_ctx);
        head.extend_from_slice(LOG_PROB_MAGIC);
        head.extend_from_slice(&(plan.n_ctx as u32).to_le_bytes());
        head.extend_from_slice(&(n_vocab as i32).to_le_bytes());
        head.extend_from_slice(&(plan.n_chunks as i32).to_le_bytes());
        for &t in &tokens[..plan.n_chunks * plan.n_ctx] {
            head.extend_from_slice(&(t as i32).to_le_bytes());
        }
        w.out.write_all(&head).map_err(io)?;
        Ok(w)
    }

    fn write_rows(&mut self, rows: &[u16]) -> Result<(), PerplexityError> {
        debug_assert_eq!(rows.len() % log_prob_row_len(self.n_vocab), 0);
        let mut bytes = Vec::with_capacity(rows.len() * 2);
        for v in rows {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&bytes).map_err(|source| PerplexityError::Io { path: self.path.clone(), source })
    }

    /// Flushes the file and gives it its name.
    pub fn finish(mut self) -> Result<(), PerplexityError> {
        let io = |path: &Path, source| PerplexityError::Io { path: path.to_path_buf(), source };
        self.out.flush().map_err(|e| io(&self.path, e))?;
        self.out.get_ref().sync_all().map_err(|e| io(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for LogProbWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a log-probability file written by this module or by llama.cpp.
pub struct LogProbReader {
    input: BufReader<File>,
    path: PathBuf,
    /// Chunk length.
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunks: usize,
    /// The tokens of every chunk, `n_chunks * n_ctx`.
    pub tokens: Vec<u32>,
    bytes: Vec<u8>,
}

impl LogProbReader {
    /// Opens the file and checks its header, its tokens and its length.
    pub fn open(path: &Path) -> Result<LogProbReader, PerplexityError> {
        let bad = |message: String| PerplexityError::LogProbFile { path: path.to_path_buf(), message };
        let io = |source| PerplexityError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut input = BufReader::new(file);
        let mut head = [0u8; 20];
        if len < 20 || input.read_exact(&mut head).is_err() || &head[..8] != LOG_PROB_MAGIC {
            return Err(bad("not a file of log-probabilities (written by --kl-divergence-base)".into()));
        }
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (n_ctx, n_vocab, n_chunks) = (word(8) as usize, word(12) as i32, word(16) as i32);
        if n_ctx < 4 || n_vocab <= 0 || n_chunks <= 0 {
            return Err(bad(format!("impossible header: n_ctx {n_ctx}, vocabulary {n_vocab}, {n_chunks} chunks")));
        }
        let (n_vocab, n_chunks) = (n_vocab as usize, n_chunks as usize);
        let plan = ChunkPlan { n_ctx, n_chunks, n_seq: 1, stride: None };
        let expected = (n_chunks as u128) * (n_ctx as u128) * 4
            + (n_chunks as u128) * (plan.scored_per_chunk() as u128) * (log_prob_row_len(n_vocab) as u128) * 2
            + 20;
        if len as u128 != expected {
            return Err(bad(format!(
                "{len} bytes where {n_chunks} chunks of {n_ctx} tokens over a vocabulary of {n_vocab} take \
                 {expected}: the file is truncated or not what its header says"
            )));
        }
        let mut raw = vec![0u8; n_chunks * n_ctx * 4];
        input.read_exact(&mut raw).map_err(io)?;
        let mut tokens = Vec::with_capacity(n_chunks * n_ctx);
        for (i, b) in raw.chunks_exact(4).enumerate() {
            let t = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if t < 0 || t as usize >= n_vocab {
                return Err(bad(format!("token {i} is {t}, outside the vocabulary of {n_vocab}")));
            }
            tokens.push(t as u32);
        }
        Ok(LogProbReader { input, path: path.to_path_buf(), n_ctx, n_vocab, n_chunks, tokens, bytes: Vec::new() })
    }

    /// Reads the next `n_rows` rows into `rows`.
    fn read_rows(&mut self, n_rows: usize, rows: &mut Vec<u16>) -> Result<(), PerplexityError> {
        let n = n_rows * log_prob_row_len(self.n_vocab);
        self.bytes.resize(2 * n, 0);
        self.input
            .read_exact(&mut self.bytes)
            .map_err(|source| PerplexityError::Io { path: self.path.clone(), source })?;
        rows.clear();
        rows.extend(self.bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
        Ok(())
    }
}

/// What a run does with each scored row.
pub enum Scoring<'a> {
    /// Perplexity, optionally saving every row's log-probabilities as a base for later comparisons.
    Perplexity { stats: &'a mut NllStats, save: Option<&'a mut LogProbWriter> },
    /// KL divergence from a base file's rows (the run's tokens must be the file's).
    Divergence { stats: &'a mut DivergenceStats, base: &'a mut LogProbReader },
}

/// Runs the chunks of `tokens` laid out by `plan` and scores every row, calling `on_chunk(chunk)` once a
/// chunk's rows are all counted. `bos` replaces each chunk's first token, as llama.cpp does when the model
/// adds a BOS token (not in a strided plan, which saves no log-probabilities and reads no base either). Setting `cancel` stops the run between two forward passes with
/// [`PerplexityError::Cancelled`] (a base file being written is then dropped unfinished, so it leaves nothing).
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model,
    pool: &ThreadPool,
    tokens: &[u32],
    bos: Option<u32>,
    plan: &ChunkPlan,
    mut scoring: Scoring<'_>,
    on_chunk: &mut dyn FnMut(usize, &Scoring<'_>),
    cancel: Option<&AtomicBool>,
) -> Result<(), PerplexityError> {
    plan.check(model, tokens.len())?;
    if plan.stride.is_some() && !matches!(scoring, Scoring::Perplexity { save: None, .. }) {
        return Err(PerplexityError::StridedLogProbs);
    }
    let n_vocab = model.config.vocab_size;
    let row_len = log_prob_row_len(n_vocab);
    let mut scratch = Scratch::default();
    let mut encoded: Vec<u16> = Vec::new();
    let mut results: Vec<Mutex<RowDivergence>> = Vec::new();
    for chunks in plan.groups() {
        let mut caches: Vec<KvCache> = chunks.iter().map(|_| model.new_cache(plan.n_ctx)).collect();
        // Logits for the scored positions only.
        let all = plan.group_tokens(tokens, bos, &chunks, |pos| plan.is_scored(pos));
        let mut rest = &all[..];
        while !rest.is_empty() {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(PerplexityError::Cancelled);
            }
            let mut n = 0;
            let mut rows = 0;
            while n < rest.len() && n < TOKENS_PER_PASS && rows < ROWS_PER_PASS {
                rows += rest[n].logits as usize;
                n += 1;
            }
            let pass = Batch { tokens: rest[..n].to_vec() };
            rest = &rest[n..];
            let logits = model.forward_with(&pass, &mut caches, pool, &mut scratch)?;
            if logits.is_empty() {
                continue;
            }
            // Each row's place: its chunk and position, and the token it predicts.
            let places: Vec<(usize, usize, usize)> = logits
                .batch_index
                .iter()
                .map(|&b| {
                    let t = pass.tokens[b];
                    let c = chunks[t.seq];
                    (c, t.pos, tokens[plan.start(c) + t.pos + 1] as usize)
                })
                .collect();
            let n_rows = places.len();
            results.clear();
            results.extend((0..n_rows).map(|_| Mutex::new(RowDivergence::default())));
            let put = |i: usize, r: RowDivergence| *results[i].lock().unwrap_or_else(|e| e.into_inner()) = r;
            match &mut scoring {
                Scoring::Perplexity { save: Some(_), .. } => {
                    encoded.resize(n_rows * row_len, 0);
                    pool.for_chunks_mut(&mut encoded, row_len, &|i, out| {
                        let nll = encode_log_probs(logits.row(i), places[i].2, out);
                        put(i, RowDivergence { nll, ..Default::default() });
                    });
                }
                Scoring::Perplexity { save: None, .. } => pool.run(n_rows, &|i| {
                    put(i, RowDivergence { nll: token_nll(logits.row(i), places[i].2), ..Default::default() })
                }),
                Scoring::Divergence { base, .. } => {
                    base.read_rows(n_rows, &mut encoded)?;
                    let encoded = &encoded;
                    pool.run(n_rows, &|i| {
                        let b = &encoded[i * row_len..(i + 1) * row_len];
                        put(i, row_divergence(logits.row(i), b, places[i].2));
                    });
                }
            }
            if let Scoring::Perplexity { save: Some(w), .. } = &mut scoring {
                w.write_rows(&encoded)?;
            }
            for (i, r) in results.iter().enumerate() {
                let r = *r.lock().unwrap_or_else(|e| e.into_inner());
                match &mut scoring {
                    Scoring::Perplexity { stats, .. } => stats.add(r.nll),
                    Scoring::Divergence { stats, .. } => stats.add(&r),
                }
                if places[i].1 == plan.last_scored() {
                    on_chunk(places[i].0, &scoring);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_000) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    fn reference_nll(row: &[f32], tok: usize) -> f64 {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        max + sum.ln() - row[tok] as f64
    }

    #[test]
    fn token_nll_is_the_negative_log_softmax() {
        for seed in 0..5 {
            let row = logits(1000 + seed as usize, seed);
            for tok in [0, 17, 999] {
                let (got, want) = (token_nll(&row, tok), reference_nll(&row, tok));
                assert!((got - want).abs() < 2e-5, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn encoded_rows_hold_the_log_probabilities_within_a_step() {
        let row = logits(1001, 3);
        let mut out = vec![0u16; log_prob_row_len(row.len())];
        assert_eq!(out.len(), 1002 + 4);
        let nll = encode_log_probs(&row, 5, &mut out);
        assert!((nll - reference_nll(&row, 5)).abs() < 2e-5);
        let (scale, offset) = decode_header(&out);
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        assert!((scale - 16.0 / 65535.0).abs() < 1e-9, "the range is the best 16 of log-probability");
        for (i, &l) in row.iter().enumerate() {
            let want = -reference_nll(&row, i);
            let got = (scale * out[4 + i] as f32 + offset) as f64;
            if l > max - 16.0 {
                assert!((got - want).abs() <= scale as f64 * 0.5 + 1e-4, "{i}: {got} vs {want}");
            } else {
                assert_eq!(out[4 + i], 0);
            }
        }
        assert_eq!(out[1005], 0, "the padding of an odd vocabulary stays zero");
        // A row of equal logits has a zero scale and every value zero.
        let flat = vec![1.5f32; 8];
        let mut out = vec![7u16; log_prob_row_len(8)];
        let nll = encode_log_probs(&flat, 2, &mut out);
        assert!((nll - (8f64).ln()).abs() < 1e-6);
        assert_eq!(decode_header(&out).0, 0.0);
        assert!(out[4..].iter().all(|&q| q == 0));
    }

    #[test]
    fn a_row_against_itself_diverges_by_quantization_only() {
        let row = logits(4096, 9);
        let mut base = vec![0u16; log_prob_row_len(row.len())];
        encode_log_probs(&row, 100, &mut base);
        let d = row_divergence(&row, &base, 100);
        assert!(d.kld.abs() < 1e-4, "{d:?}");
        assert!(d.same_top);
        assert!((d.nll - d.nll_base).abs() < 2e-4 && d.p_diff.abs() < 1e-4, "{d:?}");
        // Shifting every logit changes nothing; sharpening one token moves its probability and the KLD.
        let shifted: Vec<f32> = row.iter().map(|v| v + 3.0).collect();
        assert!(row_divergence(&shifted, &base, 100).kld.abs() < 1e-4);
        let mut sharper = row.clone();
        sharper[100] += 5.0;
        let d = row_divergence(&sharper, &base, 100);
        assert!(d.kld > 1e-3 && d.p_diff > 0.0 && d.nll < d.nll_base, "{d:?}");
    }

    #[test]
    fn kld_is_the_divergence_of_the_two_distributions() {
        let (a, b) = (logits(3000, 1), logits(3000, 2));
        let mut base = vec![0u16; log_prob_row_len(a.len())];
        encode_log_probs(&a, 0, &mut base);
        let d = row_divergence(&b, &base, 0);
        let la: Vec<f64> = (0..a.len()).map(|i| -reference_nll(&a, i)).collect();
        let lb: Vec<f64> = (0..b.len()).map(|i| -reference_nll(&b, i)).collect();
        let amax = la.iter().copied().fold(f64::MIN, f64::max);
        let want: f64 = la.iter().zip(&lb).filter(|(x, _)| **x > amax - 16.0).map(|(x, y)| x.exp() * (x - y)).sum();
        assert!((d.kld - want).abs() < 1e-3 * want.max(1.0), "{} vs {want}", d.kld);
    }

    #[test]
    fn statistics_follow_llama_cpp_formulas() {
        let mut s = NllStats::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            s.add(v);
        }
        assert!((s.perplexity() - 2.5f64.exp()).abs() < 1e-12);
        // var = E[x^2] - E[x]^2 = 7.5 - 6.25; error = e^mean * sqrt(var / (n - 1)).
        let want = 2.5f64.exp() * (1.25f64 / 3.0).sqrt();
        assert!((s.perplexity_error().unwrap() - want).abs() < 1e-12);
        assert_eq!(NllStats::default().perplexity_error(), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 1.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.0), 1.0);
    }

    #[test]
    fn plans_need_two_chunks_and_a_scored_half() {
        assert!(matches!(ChunkPlan::new(100, 3, None, 1), Err(PerplexityError::ContextTooSmall(3))));
        assert!(matches!(
            ChunkPlan::new(100, 64, None, 1),
            Err(PerplexityError::TooFewTokens { tokens: 100, n_ctx: 64 })
        ));
        let p = ChunkPlan::new(1000, 128, None, 4).unwrap();
        assert_eq!((p.n_chunks, p.first(), p.scored_per_chunk()), (7, 64, 63));
        assert_eq!(
            ChunkPlan::new(1000, 128, Some(2), 0).unwrap(),
            ChunkPlan { n_ctx: 128, n_chunks: 2, n_seq: 1, stride: None }
        );
    }

    /// llama-perplexity's strided windows: its context rounded up to 256, one window per stride while a whole
    /// window fits (the last may end short of the text), the last `stride` positions scored, BOS never put in.
    #[test]
    fn strided_plans_are_llama_cpp_windows() {
        let window = |c, s| strided_window(c, s).unwrap();
        assert_eq!((window(128, 32), window(64, 16), window(250, 20), window(64, 255)), (256, 256, 512, 256));
        let p = ChunkPlan::strided(700, 128, 32, None, 1).unwrap();
        assert_eq!((p.n_ctx, p.n_chunks, p.stride), (256, 14, Some(32)));
        assert_eq!((p.start(13), p.first(), p.last_scored(), p.scored_per_chunk()), (416, 223, 254, 32));
        assert!(p.start(13) + p.n_ctx <= 700 && p.start(14) + p.n_ctx > 700);
        assert_eq!(ChunkPlan::strided(512, 128, 32, Some(3), 1).unwrap().n_chunks, 3);
        assert_eq!(ChunkPlan::strided(512, 128, 32, None, 1).unwrap().n_chunks, 8);
        let batch = p.group_tokens(&(0..700).collect::<Vec<u32>>(), Some(2), &[0, 2], |pos| p.is_scored(pos));
        assert_eq!((batch[0].token, batch[256].token, batch[256].pos), (0, 64, 0), "no BOS put in");
        assert_eq!(batch.iter().filter(|t| t.logits).count(), 64);
        assert!(matches!(
            ChunkPlan::strided(511, 128, 32, None, 1),
            Err(PerplexityError::TooFewTokensForStride { tokens: 511, window: 256, .. })
        ));
        for stride in [0, 600] {
            let err = ChunkPlan::strided(5000, 64, stride, None, 1).unwrap_err();
            assert!(matches!(err, PerplexityError::BadStride { .. }), "{err}");
        }
        assert!(ChunkPlan::strided(5000, usize::MAX, usize::MAX, None, 1).is_err(), "no overflow");
        let dir = tempfile::tempdir().unwrap();
        let err = LogProbWriter::create(&dir.path().join("x"), &p, 20, &[0; 700]).err().unwrap();
        assert!(matches!(err, PerplexityError::StridedLogProbs));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn output_type_1_columns_are_llama_cpp_mean_and_error() {
        let mut s = NllStats::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            s.add(v);
        }
        assert_eq!(s.mean_nll_and_error(), (2.5, (1.25f64 / 3.0).sqrt()));
        let mut one = NllStats::default();
        one.add(2.0);
        assert_eq!(one.mean_nll_and_error(), (2.0, 0.0), "no spread: the variance itself");
    }

    #[test]
    fn damaged_log_prob_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plan = ChunkPlan { n_ctx: 8, n_chunks: 2, n_seq: 1, stride: None };
        let tokens: Vec<u32> = (0..16).collect();
        let path = dir.path().join("base.bin");
        let mut w = LogProbWriter::create(&path, &plan, 20, &tokens).unwrap();
        assert!(!path.exists(), "the file gets its name only when finished");
        let row = logits(20, 1);
        let mut rows = vec![0u16; 2 * 3 * log_prob_row_len(20)];
        for r in rows.chunks_exact_mut(log_prob_row_len(20)) {
            encode_log_probs(&row, 1, r);
        }
        w.write_rows(&rows).unwrap();
        w.finish().unwrap();
        let r = LogProbReader::open(&path).unwrap();
        assert_eq!((r.n_ctx, r.n_vocab, r.n_chunks, &r.tokens[..]), (8, 20, 2, &tokens[..]));
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            match LogProbReader::open(&path) {
                Err(PerplexityError::LogProbFile { message, .. }) => assert!(message.contains(what), "{message}"),
                other => panic!("{}", other.is_ok()),
            }
        };
        check(&good[..good.len() - 1], "truncated");
        check(&good[..10], "not a file of log-probabilities");
        let mut bad = good.clone();
        bad[0] = b'X';
        check(&bad, "not a file of log-probabilities");
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&25i32.to_le_bytes());
        check(&bad, "outside the vocabulary");
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&(-1i32).to_le_bytes());
        check(&bad, "impossible header");
        // A writer dropped before `finish` leaves nothing.
        let other = dir.path().join("other.bin");
        drop(LogProbWriter::create(&other, &plan, 20, &tokens).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
