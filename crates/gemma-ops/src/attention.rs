//! Scaled dot-product attention over cached keys and values, tiled: each task takes one query token, one KV
//! head with all the query heads that share it, and one block of positions, so a key or value row is read once
//! for the whole group. Blocks give partial softmaxes (running max, sum, unnormalised output) merged in block
//! order; the blocks of a query depend only on its own positions, so results never depend on the batch or the
//! thread count.

use std::ops::Range;

use crate::pool::{SharedMut, ThreadPool};
use crate::vector::{axpy, exp_fast, exp_shifted_sum};

/// Positions per block. Long contexts split into several blocks, which run in parallel even for one token.
pub const ATTENTION_BLOCK: usize = 256;

/// Keys and values of one layer for one sequence: position-major rows of `row_len` floats
/// (all KV heads of a position side by side).
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub row_len: usize,
    /// Rows in a ring buffer: position `p` lives in row `p % ring` (`0`: row `p`).
    pub ring: usize,
}

impl KvView<'_> {
    fn row(&self, p: usize) -> usize {
        if self.ring == 0 {
            p
        } else {
            p % self.ring
        }
    }
    /// Start of KV head `off`'s slice of position `p`, checked against both buffers.
    fn offset(&self, p: usize, off: usize, d: usize) -> usize {
        let r = self.row(p) * self.row_len + off;
        assert!(r + d <= self.keys.len() && r + d <= self.values.len(), "position {p} is outside the KV buffers");
        r
    }
}

/// What one query token attends to: its sequence's cached keys/values and the positions it may see.
pub struct AttnSpan<'a> {
    pub kv: KvView<'a>,
    pub positions: Range<usize>,
}

/// One block for a group of `g` query heads (`qs`: `g` rows of `d`): per head the block's max score and sum of
/// `exp(score - max)` go to `stats[2j]`, `stats[2j + 1]`, and `sum exp(score - max) * value` to `out[j]`.
/// `scores` holds at least `g * positions.len()` floats.
type BlockKernel = unsafe fn(&[f32], usize, &KvView, usize, Range<usize>, &mut [f32], &mut [f32], &mut [f32]);

/// The portable kernel: also the reference the SIMD kernels are tested against.
#[allow(clippy::too_many_arguments)]
fn block_scalar(
    qs: &[f32],
    g: usize,
    kv: &KvView,
    off: usize,
    positions: Range<usize>,
    scores: &mut [f32],
    stats: &mut [f32],
    out: &mut [f32],
) {
    let d = qs.len() / g;
    let np = positions.len();
    for (idx, p) in positions.clone().enumerate() {
        let r = kv.offset(p, off, d);
        let k = &kv.keys[r..r + d];
        for j in 0..g {
            scores[j * np + idx] = qs[j * d..(j + 1) * d].iter().zip(k).map(|(a, b)| a * b).sum();
        }
    }
    softmax_stats(&mut scores[..g * np], np, stats);
    out[..g * d].fill(0.0);
    for (idx, p) in positions.enumerate() {
        let r = kv.offset(p, off, d);
        let v = &kv.values[r..r + d];
        for j in 0..g {
            let w = scores[j * np + idx];
            for (o, x) in out[j * d..(j + 1) * d].iter_mut().zip(v) {
                *o = w.mul_add(*x, *o);
            }
        }
    }
}

/// Replaces each head's row of scores by `exp(score - max)`, recording max and sum in `stats`.
fn softmax_stats(scores: &mut [f32], np: usize, stats: &mut [f32]) {
    for (j, row) in scores.chunks_exact_mut(np).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = exp_shifted_sum(row, max);
        stats[2 * j] = max;
        stats[2 * j + 1] = sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{softmax_stats, KvView};

    /// The few vector operations the block kernel needs, for one register width.
    pub(super) trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn splat(x: f32) -> Self;
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn sum(self) -> f32;
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    // SAFETY (every method of both impls): only called from functions compiled with the matching target
    // features, which run only where the CPU has them; pointers are in bounds by the callers' checks.
    impl Lanes for Avx512 {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx512(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            _mm512_reduce_add_ps(self.0)
        }
    }

    impl Lanes for Avx2 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx2(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let h = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps(self.0, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
        }
    }

    /// Scores of up to four heads (`GN`, from head `j0`) against every key of the block: each key chunk is
    /// loaded once for all of them.
    #[inline(always)]
    unsafe fn scores_heads<V: Lanes, const GN: usize>(
        qs: &[f32],
        d: usize,
        j0: usize,
        kv: &KvView,
        off: usize,
        positions: Range<usize>,
        scores: &mut [f32],
    ) {
        let np = positions.len();
        let q = qs[j0 * d..(j0 + GN) * d].as_ptr();
        for (idx, p) in positions.enumerate() {
            let k = kv.keys[kv.offset(p, off, d)..][..d].as_ptr();
            // SAFETY: register set-up; this function runs only with V's target features (its callers').
            let mut acc = [unsafe { V::zero() }; GN];
            for c in (0..d).step_by(V::N) {
                // SAFETY: c + N <= d (d is a multiple of 2N); q covers GN rows of d.
                unsafe {
                    let kc = V::load(k.add(c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = V::fma(V::load(q.add(j * d + c)), kc, *a);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                // SAFETY: register arithmetic, with V's target features as above.
                scores[(j0 + j) * np + idx] = unsafe { a.sum() };
            }
        }
    }

    /// `out[j] = sum_p w[j][p] * value[p]` for up to four heads, two vector chunks of the row at a time kept in
    /// registers across all positions.
    #[inline(always)]
    unsafe fn accumulate_heads<V: Lanes, const GN: usize>(
        d: usize,
        j0: usize,
        kv: &KvView,
        off: usize,
        positions: Range<usize>,
        scores: &[f32],
        out: &mut [f32],
    ) {
        let np = positions.len();
        let o = out[j0 * d..(j0 + GN) * d].as_mut_ptr();
        for c in (0..d).step_by(2 * V::N) {
            // SAFETY: register set-up; this function runs only with V's target features (its callers').
            let mut acc = [[unsafe { V::zero() }; 2]; GN];
            for (idx, p) in positions.clone().enumerate() {
                let v = kv.values[kv.offset(p, off, d)..][..d].as_ptr();
                // SAFETY: c + 2N <= d.
                let (v0, v1) = unsafe { (V::load(v.add(c)), V::load(v.add(c + V::N))) };
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: register arithmetic, with V's target features as above.
                    let w = unsafe { V::splat(scores[(j0 + j) * np + idx]) };
                    // SAFETY: plain register arithmetic.
                    unsafe {
                        a[0] = V::fma(w, v0, a[0]);
                        a[1] = V::fma(w, v1, a[1]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                // SAFETY: j < GN, c + 2N <= d: inside this group's output rows.
                unsafe {
                    a[0].store(o.add(j * d + c));
                    a[1].store(o.add(j * d + c + V::N));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn block<V: Lanes>(
        qs: &[f32],
        g: usize,
        kv: &KvView,
        off: usize,
        positions: Range<usize>,
        scores: &mut [f32],
        stats: &mut [f32],
        out: &mut [f32],
    ) {
        let d = qs.len() / g;
        if !d.is_multiple_of(2 * V::N) {
            return super::block_scalar(qs, g, kv, off, positions, scores, stats, out);
        }
        let np = positions.len();
        let mut j0 = 0;
        while j0 < g {
            let r = positions.clone();
            // SAFETY: the callers' contract (features present); bounds are checked inside.
            unsafe {
                match g - j0 {
                    1 => scores_heads::<V, 1>(qs, d, j0, kv, off, r, scores),
                    2 => scores_heads::<V, 2>(qs, d, j0, kv, off, r, scores),
                    3 => scores_heads::<V, 3>(qs, d, j0, kv, off, r, scores),
                    _ => scores_heads::<V, 4>(qs, d, j0, kv, off, r, scores),
                }
            }
            j0 += 4;
        }
        softmax_stats(&mut scores[..g * np], np, stats);
        let mut j0 = 0;
        while j0 < g {
            let r = positions.clone();
            // SAFETY: as above.
            unsafe {
                match g - j0 {
                    1 => accumulate_heads::<V, 1>(d, j0, kv, off, r, scores, out),
                    2 => accumulate_heads::<V, 2>(d, j0, kv, off, r, scores, out),
                    3 => accumulate_heads::<V, 3>(d, j0, kv, off, r, scores, out),
                    _ => accumulate_heads::<V, 4>(d, j0, kv, off, r, scores, out),
                }
            }
            j0 += 4;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512(
        qs: &[f32],
        g: usize,
        kv: &KvView,
        off: usize,
        positions: Range<usize>,
        scores: &mut [f32],
        stats: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY: this function only runs where the CPU has AVX-512F.
        unsafe { block::<Avx512>(qs, g, kv, off, positions, scores, stats, out) }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2(
        qs: &[f32],
        g: usize,
        kv: &KvView,
        off: usize,
        positions: Range<usize>,
        scores: &mut [f32],
        stats: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY: this function only runs where the CPU has AVX2 and FMA.
        unsafe { block::<Avx2>(qs, g, kv, off, positions, scores, stats, out) }
    }
}

/// The SIMD level attention runs at: AVX-512F, AVX2+FMA or portable, lowered by `GEMMA_SIMD` like the
/// matrix kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    Scalar,
    Avx2,
    Avx512,
}

impl AttentionKernel {
    /// The best kernel this CPU runs (within `GEMMA_SIMD`).
    pub fn detect() -> AttentionKernel {
        match gemma_compression::simd_level() {
            #[cfg(target_arch = "x86_64")]
            gemma_compression::SimdLevel::Avx512 if is_x86_feature_detected!("avx512f") => AttentionKernel::Avx512,
            #[cfg(target_arch = "x86_64")]
            gemma_compression::SimdLevel::Avx512 | gemma_compression::SimdLevel::Avx2
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") =>
            {
                AttentionKernel::Avx2
            }
            _ => AttentionKernel::Scalar,
        }
    }

    /// Every kernel this CPU can run, the portable one first.
    pub fn available() -> Vec<AttentionKernel> {
        let mut all = vec![AttentionKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(AttentionKernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                all.push(AttentionKernel::Avx512);
            }
        }
        all
    }

    fn block_fn(self) -> BlockKernel {
        match self {
            #[cfg(target_arch = "x86_64")]
            AttentionKernel::Avx512 => x86::block_avx512,
            #[cfg(target_arch = "x86_64")]
            AttentionKernel::Avx2 => x86::block_avx2,
            _ => block_scalar_unsafe,
        }
    }
}

/// [`block_scalar`] with the kernel pointer's signature.
#[allow(clippy::too_many_arguments)]
unsafe fn block_scalar_unsafe(
    qs: &[f32],
    g: usize,
    kv: &KvView,
    off: usize,
    positions: Range<usize>,
    scores: &mut [f32],
    stats: &mut [f32],
    out: &mut [f32],
) {
    block_scalar(qs, g, kv, off, positions, scores, stats, out)
}

/// Per-thread block scratch: scores and per-head statistics.
#[derive(Default)]
struct BlockScratch {
    scores: Vec<f32>,
    stats: Vec<f32>,
}

thread_local! {
    static BLOCK_SCRATCH: std::cell::RefCell<BlockScratch> = const {
        std::cell::RefCell::new(BlockScratch { scores: Vec::new(), stats: Vec::new() })
    };
    /// The calling thread's block table and partial results, kept so decoding allocates nothing once warm.
    static PARTIALS: std::cell::RefCell<(Vec<usize>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Grouped-query attention for a batch: `q` holds one row of `n_heads * head_dim` per token (pre-scaled),
/// `spans[i]` says what token `i` sees; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
/// Writes `out`, one row of `n_heads * head_dim` per token.
pub fn grouped_query_attention(
    pool: &ThreadPool,
    q: &[f32],
    spans: &[AttnSpan],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    grouped_query_attention_with(AttentionKernel::detect(), pool, q, spans, n_heads, n_kv_heads, head_dim, out)
}

/// [`grouped_query_attention`] with the kernel chosen by the caller (tests compare them).
#[allow(clippy::too_many_arguments)]
pub fn grouped_query_attention_with(
    kernel: AttentionKernel,
    pool: &ThreadPool,
    q: &[f32],
    spans: &[AttnSpan],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let q_row = n_heads * head_dim;
    assert_eq!(q.len(), spans.len() * q_row, "query rows do not match the spans");
    assert_eq!(out.len(), q.len(), "output rows do not match the queries");
    assert!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        "{n_heads} query heads do not group over {n_kv_heads}"
    );
    let g = n_heads / n_kv_heads;
    let d = head_dim;
    let block_fn = kernel.block_fn();
    let n_blocks = |span: &AttnSpan| span.positions.len().div_ceil(ATTENTION_BLOCK).max(1);

    PARTIALS.with_borrow_mut(|(first_block, partials)| {
        // first_block[i]: index of span i's first block among all blocks of the batch.
        first_block.clear();
        let mut total = 0;
        for span in spans {
            first_block.push(total);
            total += n_blocks(span);
        }
        first_block.push(total);
        let multi = total > spans.len();
        // One partial per (block, KV head) of queries that span several blocks: per head max, sum, output.
        let part_len = g * (2 + d);
        if multi {
            partials.resize(total * n_kv_heads * part_len, 0.0);
        }
        let out_shared = SharedMut::new(out);
        let part_shared = SharedMut::new(partials.as_mut_slice());
        let first_block = &*first_block;

        pool.run(total * n_kv_heads, &|task| {
            let (gb, kvh) = (task / n_kv_heads, task % n_kv_heads);
            let i = first_block.partition_point(|&b| b <= gb) - 1;
            let span = &spans[i];
            let b = gb - first_block[i];
            let start = span.positions.start + b * ATTENTION_BLOCK;
            let positions = start..(start + ATTENTION_BLOCK).min(span.positions.end);
            let heads = i * q_row + kvh * g * d..i * q_row + (kvh + 1) * g * d;
            BLOCK_SCRATCH.with_borrow_mut(|s| {
                s.scores.resize(g * ATTENTION_BLOCK.max(positions.len()), 0.0);
                s.stats.resize(2 * g, 0.0);
                if n_blocks(span) == 1 {
                    // SAFETY: task (i, kvh) alone writes this group's slice of row i.
                    let o = unsafe { out_shared.slice(heads.clone()) };
                    // SAFETY: `kernel` is only a SIMD kernel where the CPU supports it.
                    unsafe { block_fn(&q[heads], g, &span.kv, kvh * d, positions, &mut s.scores, &mut s.stats, o) };
                    for (j, o) in o.chunks_exact_mut(d).enumerate() {
                        let inv = 1.0 / s.stats[2 * j + 1];
                        o.iter_mut().for_each(|x| *x *= inv);
                    }
                } else {
                    let at = task * part_len;
                    // SAFETY: each task owns its partial slot.
                    let part = unsafe { part_shared.slice(at..at + part_len) };
                    let (stats, o) = part.split_at_mut(2 * g);
                    // SAFETY: as above.
                    unsafe { block_fn(&q[heads], g, &span.kv, kvh * d, positions, &mut s.scores, stats, o) };
                }
            });
        });

        if multi {
            let partials = &*partials;
            pool.run(spans.len() * n_kv_heads, &|task| {
                let (i, kvh) = (task / n_kv_heads, task % n_kv_heads);
                let (b0, b1) = (first_block[i], first_block[i + 1]);
                if b1 - b0 == 1 {
                    return;
                }
                let heads = i * q_row + kvh * g * d..i * q_row + (kvh + 1) * g * d;
                // SAFETY: task (i, kvh) alone writes this group's slice of row i.
                let o = unsafe { out_shared.slice(heads) };
                let part = |b: usize| &partials[(b * n_kv_heads + kvh) * part_len..][..part_len];
                for (j, oj) in o.chunks_exact_mut(d).enumerate() {
                    let max = (b0..b1).map(|b| part(b)[2 * j]).fold(f32::NEG_INFINITY, f32::max);
                    oj.fill(0.0);
                    let mut sum = 0.0;
                    for b in b0..b1 {
                        let p = part(b);
                        let scale = exp_fast(p[2 * j] - max);
                        sum += p[2 * j + 1] * scale;
                        axpy(scale, &p[2 * g + j * d..2 * g + (j + 1) * d], oj);
                    }
                    let inv = 1.0 / sum;
                    oj.iter_mut().for_each(|x| *x *= inv);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attend_one(kernel: AttentionKernel, q: &[f32], kv: &KvView, n_kv: usize, positions: Range<usize>) -> Vec<f32> {
        let pool = ThreadPool::new(1);
        let mut out = vec![0.0; q.len()];
        let spans = [AttnSpan { kv: *kv, positions }];
        grouped_query_attention_with(kernel, &pool, q, &spans, n_kv, n_kv, q.len() / n_kv, &mut out);
        out
    }

    #[test]
    fn attends_to_the_matching_key() {
        // Two heads of width 2 per position; head 1 has one key aligned with the query.
        let keys = vec![0., 0., 1., 0., /* pos 1 */ 0., 0., 0., 1., /* pos 2 */ 0., 0., -1., 0.];
        let values = vec![0., 0., 10., 20., /* */ 0., 0., 30., 40., /* */ 0., 0., 50., 60.];
        let kv = KvView { keys: &keys, values: &values, row_len: 4, ring: 0 };
        for kernel in AttentionKernel::available() {
            let out = attend_one(kernel, &[0.0, 0.0, 0.0, 50.0], &kv, 2, 0..3);
            assert!((out[2] - 30.0).abs() < 1e-3 && (out[3] - 40.0).abs() < 1e-3, "{kernel:?}: {out:?}");
            // With equal scores the result is the mean of the values in range.
            let out = attend_one(kernel, &[0.0; 4], &kv, 2, 1..3);
            assert!((out[2] - 40.0).abs() < 1e-4 && (out[3] - 50.0).abs() < 1e-4, "{kernel:?}: {out:?}");
        }
    }

    #[test]
    fn ring_rows_wrap_around() {
        // A ring of 2 rows holding positions 2 (row 0) and 3 (row 1), one head of width 1.
        let (keys, values) = (vec![1.0, 1.0], vec![5.0, 7.0]);
        let kv = KvView { keys: &keys, values: &values, row_len: 1, ring: 2 };
        assert_eq!(attend_one(AttentionKernel::Scalar, &[0.0], &kv, 1, 3..4), [7.0]);
        assert!((attend_one(AttentionKernel::Scalar, &[0.0], &kv, 1, 2..4)[0] - 6.0).abs() < 1e-6);
    }

    /// Plain two-pass softmax attention in f64: the reference for every kernel and block split.
    fn reference(q: &[f32], kv: &KvView, kv_head: usize, positions: Range<usize>) -> Vec<f64> {
        let d = q.len();
        let off = kv_head * d;
        let scores: Vec<f64> = positions
            .clone()
            .map(|p| {
                let r = kv.row(p) * kv.row_len + off;
                q.iter().zip(&kv.keys[r..r + d]).map(|(a, b)| *a as f64 * *b as f64).sum()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = w.iter().sum();
        let mut out = vec![0.0; d];
        for (p, wp) in positions.zip(&w) {
            let r = kv.row(p) * kv.row_len + off;
            for (o, v) in out.iter_mut().zip(&kv.values[r..r + d]) {
                *o += wp / sum * *v as f64;
            }
        }
        out
    }

    /// Every kernel the CPU has, on GQA groups of 1–5 heads, head widths 64 and 256, spans of one block and of
    /// several blocks (merged), a ring buffer: all agree with the f64 reference, and a token's result is
    /// bitwise the same alone, in a batch, and on 2 threads.
    #[test]
    fn simd_kernels_match_the_reference_and_are_batch_invariant() {
        let kernels = AttentionKernel::available();
        #[cfg(target_arch = "x86_64")]
        {
            // Never pass by silently skipping a level the CPU has.
            assert_eq!(kernels.contains(&AttentionKernel::Avx512), is_x86_feature_detected!("avx512f"));
            assert_eq!(
                kernels.contains(&AttentionKernel::Avx2),
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            );
        }
        for (d, n_heads, n_kv) in [(256, 4, 1), (64, 9, 3), (64, 5, 1), (256, 2, 2), (48, 4, 2)] {
            let n = 700;
            let row = n_kv * d;
            let keys: Vec<f32> = (0..n * row).map(|i| ((i * 7919 % 1013) as f32 / 500.0 - 1.0) * 0.5).collect();
            let values: Vec<f32> = (0..n * row).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
            let plain = KvView { keys: &keys, values: &values, row_len: row, ring: 0 };
            let ring = KvView { keys: &keys, values: &values, row_len: row, ring: 600 };
            let cases: Vec<(KvView, Range<usize>)> =
                vec![(plain, 0..1), (plain, 0..3), (plain, 17..200), (plain, 0..700), (ring, 150..690)];
            let qs: Vec<Vec<f32>> = (0..cases.len())
                .map(|c| (0..n_heads * d).map(|i| ((i + 31 * c) as f32 * 0.37).sin() * 6.0).collect())
                .collect();
            for kernel in &kernels {
                let mut alone = Vec::new();
                for ((kv, pos), q) in cases.iter().zip(&qs) {
                    let pool = ThreadPool::new(1);
                    let mut out = vec![0.0; q.len()];
                    let spans = [AttnSpan { kv: *kv, positions: pos.clone() }];
                    grouped_query_attention_with(*kernel, &pool, q, &spans, n_heads, n_kv, d, &mut out);
                    for h in 0..n_heads {
                        let want = reference(&q[h * d..(h + 1) * d], kv, h / (n_heads / n_kv), pos.clone());
                        for (x, (g, w)) in out[h * d..(h + 1) * d].iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 2e-4 * (1.0 + w.abs()),
                                "{kernel:?} d{d} h{h} {pos:?} [{x}]: {g} vs {w}"
                            );
                        }
                    }
                    alone.push(out);
                }
                // The same queries as one batch on two threads: bitwise equal.
                let pool = ThreadPool::new(2);
                let q_all: Vec<f32> = qs.concat();
                let spans: Vec<AttnSpan> =
                    cases.iter().map(|(kv, pos)| AttnSpan { kv: *kv, positions: pos.clone() }).collect();
                let mut out = vec![0.0; q_all.len()];
                grouped_query_attention_with(*kernel, &pool, &q_all, &spans, n_heads, n_kv, d, &mut out);
                assert_eq!(out, alone.concat(), "{kernel:?} d{d}: batching changed the result");
            }
        }
    }

    #[test]
    /// A causal prefill batch (token i sees 0..=i) on two threads: every kernel gives the same result.
    fn kernels_agree_on_a_causal_batch() {
        let (d, nh, nkv, n) = (256, 4, 1, 14);
        let row = nkv * d;
        let keys: Vec<f32> = (0..1024 * row).map(|i| ((i * 7919 % 1013) as f32 / 500.0 - 1.0) * 0.5).collect();
        let values: Vec<f32> = (0..1024 * row).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
        let kv = KvView { keys: &keys, values: &values, row_len: row, ring: 1024 };
        let q: Vec<f32> = (0..n * nh * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let spans: Vec<AttnSpan> = (0..n).map(|i| AttnSpan { kv, positions: 0..i + 1 }).collect();
        let pool = ThreadPool::new(2);
        let mut outs = Vec::new();
        for k in AttentionKernel::available() {
            let mut out = vec![0.0; q.len()];
            grouped_query_attention_with(k, &pool, &q, &spans, nh, nkv, d, &mut out);
            outs.push(out);
        }
        for o in &outs[1..] {
            let md = o.iter().zip(&outs[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(md < 1e-4, "max diff {md}");
        }
    }
}
