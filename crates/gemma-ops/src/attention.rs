//! Scaled dot-product attention over cached keys and values, tiled: each task takes up to [`TASK_ROWS`] query
//! rows (consecutive tokens of one sequence, each with all the query heads that share one KV head) and one
//! block of positions, and works through them in register tiles of [`TILE_ROWS`], so a key or value row is
//! loaded once per tile and comes from memory once per task. Tasks run block by block, so in a long prefill
//! the threads keep one block in their caches for all the tokens that see it.
//!
//! Blocks are fixed by absolute position (block `b` holds positions `b * ATTENTION_BLOCK..(b + 1) *
//! ATTENTION_BLOCK`), so neighbouring tokens share them. Each block gives a partial softmax (running max, sum,
//! unnormalised output), merged in block order. A query's arithmetic never depends on its tile: scores are
//! indexed by position in the block, a position outside the query's own span gets weight exactly 0 (so its
//! multiply-adds leave the accumulators unchanged), the max is over its own positions, and the sum of weights
//! takes lanes by position in the block. Results are thus the same for a token alone, in any batch, on any
//! number of threads.

use std::ops::Range;

use crate::kv_type::{round_queries, KvType};
use crate::pool::{SharedMut, ThreadPool};
use crate::vector::{axpy, exp_fast};

/// Positions per block. Long contexts split into several blocks, which run in parallel even for one token.
pub const ATTENTION_BLOCK: usize = 256;

/// Query rows a tile aims for (tokens times heads per KV head): the register budget of the kernels' score and
/// value loops.
const TILE_ROWS: usize = 12;

/// Query rows a task aims for (tokens times heads per KV head): the kernels take them [`TILE_ROWS`] at a time
/// against one block, whose keys and values thus come from memory once for all of them and stay in the core's
/// cache between tiles (a block of Gemma 3's 256-wide heads is 512 KiB).
const TASK_ROWS: usize = 48;

/// Cached rows of keys or values: plain f32, or encoded in a [`KvType`] (decoded block by block as read).
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    Encoded(KvType, &'a [u8]),
}

impl KvRows<'_> {
    fn ty(&self) -> KvType {
        match self {
            KvRows::F32(_) => KvType::F32,
            KvRows::Encoded(t, _) => *t,
        }
    }
    /// Whether the rows are the same buffer.
    fn same(&self, o: &KvRows) -> bool {
        match (self, o) {
            (KvRows::F32(a), KvRows::F32(b)) => std::ptr::eq(*a, *b),
            (KvRows::Encoded(s, a), KvRows::Encoded(t, b)) => s == t && std::ptr::eq(*a, *b),
            _ => false,
        }
    }
    /// Writes elements `off..off + d` of the rows of positions `base + idx`, `idx` in `range`, to
    /// `dst[idx * d..]` as f32.
    fn decode_into(&self, kv: &KvView, base: usize, range: Range<usize>, off: usize, d: usize, dst: &mut [f32]) {
        for idx in range {
            let row = kv.row(base + idx);
            let out = &mut dst[idx * d..(idx + 1) * d];
            match self {
                KvRows::F32(x) => {
                    let at = row * kv.row_len + off;
                    assert!(at + d <= x.len(), "position {} is outside the KV buffers", base + idx);
                    out.copy_from_slice(&x[at..at + d]);
                }
                KvRows::Encoded(t, x) => {
                    let (bs, ts) = (t.block_size(), t.ggml_type().type_size());
                    assert!(off.is_multiple_of(bs) && d.is_multiple_of(bs), "KV heads must be whole {t} blocks");
                    let row_bytes = kv.row_len / bs * ts;
                    let at = row * row_bytes + off / bs * ts;
                    let n = d / bs * ts;
                    assert!(at + n <= x.len(), "position {} is outside the KV buffers", base + idx);
                    t.decode(&x[at..at + n], out);
                }
            }
        }
    }
}

/// Keys and values of one layer for one sequence: position-major rows of `row_len` elements
/// (all KV heads of a position side by side).
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub keys: KvRows<'a>,
    pub values: KvRows<'a>,
    pub row_len: usize,
    /// Rows in a ring buffer: position `p` lives in row `p % ring` (`0`: row `p`).
    pub ring: usize,
}

impl<'a> KvView<'a> {
    /// A view of f32 rows.
    pub fn f32(keys: &'a [f32], values: &'a [f32], row_len: usize, ring: usize) -> KvView<'a> {
        KvView { keys: KvRows::F32(keys), values: KvRows::F32(values), row_len, ring }
    }
    fn row(&self, p: usize) -> usize {
        if self.ring == 0 {
            p
        } else {
            p % self.ring
        }
    }
    /// Whether two views are the same buffers, read the same way (tokens of one sequence).
    fn same(&self, o: &KvView) -> bool {
        self.keys.same(&o.keys) && self.values.same(&o.values) && self.row_len == o.row_len && self.ring == o.ring
    }
}

/// What one query token attends to: its sequence's cached keys/values and the positions it may see.
pub struct AttnSpan<'a> {
    pub kv: KvView<'a>,
    pub positions: Range<usize>,
}

/// One block's work: query rows of `d` floats side by side in `q`, each with its own positions `own[r]`
/// (relative to the block's first position `base`), against the `d` floats from `off` of f32 rows of `row_len`
/// (`ring` as in [`KvView`]).
struct BlockJob<'a> {
    q: &'a [f32],
    own: &'a [Range<usize>],
    keys: &'a [f32],
    values: &'a [f32],
    row_len: usize,
    ring: usize,
    off: usize,
    d: usize,
    base: usize,
    /// `cap * tanh(score / cap)` on every score before the softmax, when set.
    softcap: Option<f32>,
}

impl BlockJob<'_> {
    /// The positions any row sees, relative to `base`.
    fn range(&self) -> Range<usize> {
        let lo = self.own.iter().map(|r| r.start).min().unwrap_or(0);
        let hi = self.own.iter().map(|r| r.end).max().unwrap_or(0);
        lo..hi.max(lo)
    }
    /// Start of the head's slice of position `p`, checked against both buffers.
    fn offset(&self, p: usize) -> usize {
        let row = if self.ring == 0 { p } else { p % self.ring };
        let r = row * self.row_len + self.off;
        assert!(
            r + self.d <= self.keys.len() && r + self.d <= self.values.len(),
            "position {p} is outside the KV buffers"
        );
        r
    }
    /// The row of key (or value) of position `base + idx`.
    fn key(&self, idx: usize) -> &[f32] {
        &self.keys[self.offset(self.base + idx)..][..self.d]
    }
    fn value(&self, idx: usize) -> &[f32] {
        &self.values[self.offset(self.base + idx)..][..self.d]
    }
}

/// A block kernel: per row `r` the block's max score and sum of `exp(score - max)` go to `stats[2r]`,
/// `stats[2r + 1]`, and `sum exp(score - max) * value` to `out[r * d..]`. `scores` holds
/// `own.len() * ATTENTION_BLOCK` floats.
type BlockKernel = unsafe fn(&BlockJob, &mut [f32], &mut [f32], &mut [f32]);

/// The portable kernel: also the reference the SIMD kernels are tested against.
fn block_scalar(job: &BlockJob, scores: &mut [f32], stats: &mut [f32], out: &mut [f32]) {
    let (d, n) = (job.d, job.own.len());
    let range = job.range();
    for idx in range.clone() {
        let k = job.key(idx);
        for (r, q) in job.q.chunks_exact(d).enumerate() {
            scores[r * ATTENTION_BLOCK + idx] = q.iter().zip(k).map(|(a, b)| a * b).sum();
        }
    }
    softmax_stats(job, range.clone(), scores, stats);
    out[..n * d].fill(0.0);
    for idx in range {
        let v = job.value(idx);
        for r in 0..n {
            let w = scores[r * ATTENTION_BLOCK + idx];
            for (o, x) in out[r * d..(r + 1) * d].iter_mut().zip(v) {
                *o = w.mul_add(*x, *o);
            }
        }
    }
}

/// Replaces each row's scores in `range` by its weights `exp(score - max)` (exactly 0 outside the row's own
/// positions), recording max and sum in `stats`. Soft-capping happens here, so every kernel (and every KV
/// cache type, decoded before the kernels) caps the same way.
#[inline(always)]
fn softmax_stats(job: &BlockJob, range: Range<usize>, scores: &mut [f32], stats: &mut [f32]) {
    for (r, own) in job.own.iter().enumerate() {
        let row = &mut scores[r * ATTENTION_BLOCK..(r + 1) * ATTENTION_BLOCK];
        if let Some(cap) = job.softcap {
            soft_cap(&mut row[own.clone()], cap);
        }
        let max = row[own.clone()].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        stats[2 * r] = max;
        stats[2 * r + 1] = exp_masked_sum(row, range.clone(), own.clone(), max);
    }
}

/// `x = cap * tanh(x / cap)` for each score. A plain loop over [`tanh_lane`], which the compiler vectorises
/// inside each SIMD kernel (libm's `tanh` made a 1,044-token prefill a third slower: `docs/architectures.md`);
/// the same scalar code runs at every level, so the kernels stay bitwise alike.
#[inline(always)]
fn soft_cap(scores: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    scores.iter_mut().for_each(|s| *s = cap * tanh_lane(*s * inv));
}

/// `tanh(x)` as `1 - 2 / (exp(2|x|) + 1)` with [`exp_lane`], sign restored: within 3e-7 of the true value
/// (absolute), branch-free so it vectorises.
#[inline(always)]
fn tanh_lane(x: f32) -> f32 {
    let e = exp_lane(2.0 * x.abs());
    (1.0 - 2.0 / (e + 1.0)).copysign(x)
}

/// [`exp_fast`], bit for bit, with the exponent taken from the rounding constant's bits rather than a
/// float-to-int conversion (whose saturation keeps the compiler from vectorising it).
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer, held in the low mantissa bits
    #[allow(clippy::manual_clamp)]
    let t = x.max(-87.0).min(88.0) * LOG2_E;
    let r = t + ROUND;
    let i = r - ROUND;
    let f = (t - i) * std::f32::consts::LN_2;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // r's bits are those of ROUND plus the integer i (|i| <= 127 < 2^22).
    let e = (r.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    f32::from_bits((e.wrapping_add(127) << 23) as u32) * p
}

/// `row[i] = exp(row[i] - max)` for `i` in `own`, `0` elsewhere in `range` (whole 16-position groups around
/// it); returns the sum in 16 partial sums by position, so the zeros around `own` never change it.
#[inline(always)]
fn exp_masked_sum(row: &mut [f32], range: Range<usize>, own: Range<usize>, max: f32) -> f32 {
    const L: usize = 16;
    let mut partial = [0f32; L];
    let groups = range.start / L..range.end.div_ceil(L);
    let (lo, len) = (own.start as u32, own.len() as u32);
    for (c, chunk) in row[groups.start * L..groups.end * L].chunks_exact_mut(L).enumerate() {
        let first = ((groups.start + c) * L) as u32;
        for l in 0..L {
            let e = exp_lane(chunk[l] - max);
            let inside = (first + l as u32).wrapping_sub(lo) < len;
            chunk[l] = if inside { e } else { 0.0 };
            partial[l] += chunk[l];
        }
    }
    partial.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{softmax_stats, BlockJob, ATTENTION_BLOCK, TILE_ROWS};

    /// The few vector operations the block kernel needs, for one register width.
    pub(super) trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn splat(x: f32) -> Self;
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// From `N` vectors of `N` lanes side by side at `p`, the vector of their sums (lane `s`: the sum of
        /// vector `s`), by a fixed tree for each lane.
        unsafe fn transpose_sum(p: *const f32) -> Self;
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
        unsafe fn transpose_sum(p: *const f32) -> Self {
            // The tree of `_mm512_reduce_add_ps` for every lane: halves, quarters, then pairs within a quarter.
            // Vectors are taken in the order that leaves vector `s`'s sum in lane `s`.
            // SAFETY: p holds 16 vectors of 16 floats (the caller's contract).
            let v: [__m512; 16] =
                std::array::from_fn(|j| unsafe { _mm512_loadu_ps(p.add(16 * (4 * (j % 4) + j / 4))) });
            // Lane i + lane i + 8, two vectors in one register.
            let s: [__m512; 8] = std::array::from_fn(|i| {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
            });
            // Then lane i + lane i + 4: one vector per quarter.
            let t: [__m512; 4] = std::array::from_fn(|i| {
                let (a, b) = (s[2 * i], s[2 * i + 1]);
                _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
            });
            // Then lane i + lane i + 2 within each quarter, and lane 0 + lane 1.
            let u: [__m512; 2] = std::array::from_fn(|i| {
                let (a, b) = (t[2 * i], t[2 * i + 1]);
                _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(a, b), _mm512_shuffle_ps::<0b11_10_11_10>(a, b))
            });
            Avx512(_mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(u[0], u[1]),
                _mm512_shuffle_ps::<0b11_01_11_01>(u[0], u[1]),
            ))
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
        unsafe fn transpose_sum(p: *const f32) -> Self {
            // For every lane the tree of a horizontal sum (128-bit halves, lane i + lane i + 2, lane 0 + lane 1),
            // as the kernel used before taking 8 positions at once. Vectors are taken in the
            // order that leaves vector `s`'s sum in lane `s`.
            // SAFETY: p holds 8 vectors of 8 floats (the caller's contract).
            let v: [__m256; 8] = std::array::from_fn(|j| unsafe { _mm256_loadu_ps(p.add(8 * (4 * (j % 2) + j / 2))) });
            let s: [__m256; 4] = std::array::from_fn(|i| {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
            });
            let u: [__m256; 2] = std::array::from_fn(|i| {
                let (a, b) = (s[2 * i], s[2 * i + 1]);
                _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(a, b), _mm256_shuffle_ps::<0b11_10_11_10>(a, b))
            });
            Avx2(_mm256_add_ps(
                _mm256_shuffle_ps::<0b10_00_10_00>(u[0], u[1]),
                _mm256_shuffle_ps::<0b11_01_11_01>(u[0], u[1]),
            ))
        }
    }

    /// Products of rows `r0..r0 + R` with `P` keys from position `idx`, left as `N`-lane vectors in `raw`
    /// (row `j`, position `idx`: `raw[(j * N + idx % N) * N..]`): each key chunk is loaded once for all rows,
    /// each row chunk once for all keys. A vector is the same whatever `R`, `P` and `r0`.
    #[inline(always)]
    unsafe fn scores_at<V: Lanes, const R: usize, const P: usize>(
        job: &BlockJob,
        q: &[*const f32; R],
        idx: usize,
        offs: &Offsets,
        raw: &mut [f32; RAW],
    ) {
        // SAFETY: `offs` holds checked offsets of d floats inside the keys (and values).
        let k: [*const f32; P] = std::array::from_fn(|i| unsafe { job.keys.as_ptr().add(offs[idx + i]) });
        // SAFETY: register set-up; this function runs only with V's target features (its callers').
        let mut acc = [[unsafe { V::zero() }; R]; P];
        // The next keys, fetched into L1 while these are reduced (an address only: never read here).
        let next: [*const f32; P] =
            std::array::from_fn(|i| job.keys.as_ptr().wrapping_add(offs[(idx + P + i).min(ATTENTION_BLOCK - 1)]));
        for c in (0..job.d).step_by(V::N) {
            if c % 16 == 0 {
                for n in next {
                    prefetch(n.wrapping_add(c));
                }
            }
            // SAFETY: c + N <= d (d is a multiple of 2N); each q[j] and k[i] cover d floats.
            unsafe {
                let kc: [V; P] = std::array::from_fn(|i| V::load(k[i].add(c)));
                for (j, qj) in q.iter().enumerate() {
                    let qc = V::load(qj.add(c));
                    for (ai, ki) in acc.iter_mut().zip(&kc) {
                        ai[j] = V::fma(qc, *ki, ai[j]);
                    }
                }
            }
        }
        for (i, ai) in acc.iter().enumerate() {
            for (j, a) in ai.iter().enumerate() {
                let at = (j * V::N + (idx + i) % V::N) * V::N;
                assert!(at + V::N <= RAW);
                // SAFETY: inside `raw`, checked above.
                unsafe { a.store(raw.as_mut_ptr().add(at)) };
            }
        }
    }

    /// Asks for the cache line holding `p` (a hint: any address is allowed).
    #[inline(always)]
    fn prefetch(p: *const f32) {
        // SAFETY: a prefetch never faults and reads nothing into the program; SSE is part of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }

    /// Per position of a block (in the job's range): the start of its key and value rows, checked.
    type Offsets = [usize; ATTENTION_BLOCK];

    /// Floats of the products kept for one group of `N` positions: `N` vectors per row.
    const RAW: usize = TILE_ROWS * 16 * 16;

    /// Scores of rows `r0..r0 + R` against every key of the block's range, two keys at a time. Each group of
    /// `N` positions (aligned in the block) reduces its products at once, a lane per position, so a score's
    /// sum takes the same path whatever positions the range holds around it.
    #[inline(always)]
    unsafe fn scores_rows<V: Lanes, const R: usize>(job: &BlockJob, offs: &Offsets, r0: usize, scores: &mut [f32]) {
        let q: [*const f32; R] = std::array::from_fn(|j| job.q[(r0 + j) * job.d..][..job.d].as_ptr());
        let range = job.range();
        let mut raw = [0f32; RAW];
        for group in (range.start / V::N..range.end.div_ceil(V::N)).map(|g| g * V::N) {
            let end = range.end.min(group + V::N);
            let mut idx = range.start.max(group);
            while idx + 2 <= end {
                // SAFETY: the callers' contract (features present); bounds are checked inside.
                unsafe { scores_at::<V, R, 2>(job, &q, idx, offs, &mut raw) };
                idx += 2;
            }
            if idx < end {
                // SAFETY: as above.
                unsafe { scores_at::<V, R, 1>(job, &q, idx, offs, &mut raw) };
            }
            for j in 0..R {
                let at = (r0 + j) * ATTENTION_BLOCK + group;
                assert!(at + V::N <= scores.len() && (j + 1) * V::N * V::N <= RAW);
                // SAFETY: N vectors of N floats inside `raw`, N floats inside `scores` (checked above). Lanes
                // for positions outside the range hold stale sums: the softmax masks them.
                unsafe { V::transpose_sum(raw.as_ptr().add(j * V::N * V::N)).store(scores.as_mut_ptr().add(at)) };
            }
        }
    }

    /// `out[r] = sum_p w[r][p] * value[p]` for rows `r0..r0 + R`, `C` vector chunks of the value row at a time
    /// kept in registers across all positions.
    #[inline(always)]
    unsafe fn accumulate_rows<V: Lanes, const R: usize, const C: usize>(
        job: &BlockJob,
        offs: &Offsets,
        r0: usize,
        scores: &[f32],
        out: &mut [f32],
    ) {
        let d = job.d;
        let o = out[r0 * d..(r0 + R) * d].as_mut_ptr();
        let range = job.range();
        assert!(range.end <= ATTENTION_BLOCK);
        let w = scores[r0 * ATTENTION_BLOCK..(r0 + R) * ATTENTION_BLOCK].as_ptr();
        for c in (0..d).step_by(C * V::N) {
            // SAFETY: register set-up; this function runs only with V's target features (its callers').
            let mut acc = [[unsafe { V::zero() }; C]; R];
            for idx in range.clone() {
                // SAFETY: `offs` holds checked offsets of d floats inside the values (and keys).
                let v = unsafe { job.values.as_ptr().add(offs[idx]) };
                let ahead = job.values.as_ptr().wrapping_add(offs[(idx + 8).min(range.end - 1)] + c);
                for line in (0..C * V::N).step_by(16) {
                    prefetch(ahead.wrapping_add(line));
                }
                // SAFETY: c + C * N <= d (d is a multiple of 2N, C is 1 or 2).
                let vc: [V; C] = std::array::from_fn(|h| unsafe { V::load(v.add(c + h * V::N)) });
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: j < R and idx < ATTENTION_BLOCK (checked above): inside these rows of `scores`;
                    // register arithmetic with V's target features, as above.
                    let w = unsafe { V::splat(*w.add(j * ATTENTION_BLOCK + idx)) };
                    for (ah, vh) in a.iter_mut().zip(&vc) {
                        // SAFETY: plain register arithmetic.
                        *ah = unsafe { V::fma(w, *vh, *ah) };
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                for (h, ah) in a.iter().enumerate() {
                    // SAFETY: j < R, c + C * N <= d: inside these rows of `out`.
                    unsafe { ah.store(o.add(j * d + c + h * V::N)) };
                }
            }
        }
    }

    /// Calls `$f::<V, n, ...>` for `$n` rows (1 to 12).
    macro_rules! by_rows {
        ($n:expr, $f:ident, $v:ty, [$($c:tt)*], $($arg:expr),*) => {
            match $n {
                1 => $f::<$v, 1 $($c)*>($($arg),*),
                2 => $f::<$v, 2 $($c)*>($($arg),*),
                3 => $f::<$v, 3 $($c)*>($($arg),*),
                4 => $f::<$v, 4 $($c)*>($($arg),*),
                5 => $f::<$v, 5 $($c)*>($($arg),*),
                6 => $f::<$v, 6 $($c)*>($($arg),*),
                7 => $f::<$v, 7 $($c)*>($($arg),*),
                8 => $f::<$v, 8 $($c)*>($($arg),*),
                9 => $f::<$v, 9 $($c)*>($($arg),*),
                10 => $f::<$v, 10 $($c)*>($($arg),*),
                11 => $f::<$v, 11 $($c)*>($($arg),*),
                _ => $f::<$v, 12 $($c)*>($($arg),*),
            }
        };
    }

    #[inline(always)]
    unsafe fn block<V: Lanes, const C: usize>(job: &BlockJob, scores: &mut [f32], stats: &mut [f32], out: &mut [f32]) {
        let (d, n) = (job.d, job.own.len());
        if !d.is_multiple_of(2 * V::N) {
            return super::block_scalar(job, scores, stats, out);
        }
        const { assert!(TILE_ROWS == 12) };
        // Where each position's key and value start, checked once here (`offset` asserts both buffers).
        let mut offs = [0usize; ATTENTION_BLOCK];
        for idx in job.range() {
            offs[idx] = job.offset(job.base + idx);
        }
        for r0 in (0..n).step_by(TILE_ROWS) {
            // SAFETY: the callers' contract (features present); bounds are checked inside.
            unsafe { by_rows!((n - r0).min(TILE_ROWS), scores_rows, V, [], job, &offs, r0, scores) };
        }
        softmax_stats(job, job.range(), scores, stats);
        for r0 in (0..n).step_by(TILE_ROWS) {
            // SAFETY: as above.
            unsafe { by_rows!((n - r0).min(TILE_ROWS), accumulate_rows, V, [, C], job, &offs, r0, scores, out) };
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512(job: &BlockJob, scores: &mut [f32], stats: &mut [f32], out: &mut [f32]) {
        // SAFETY: this function only runs where the CPU has AVX-512F.
        unsafe { block::<Avx512, 2>(job, scores, stats, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2(job: &BlockJob, scores: &mut [f32], stats: &mut [f32], out: &mut [f32]) {
        // SAFETY: this function only runs where the CPU has AVX2 and FMA.
        unsafe { block::<Avx2, 1>(job, scores, stats, out) }
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
unsafe fn block_scalar_unsafe(job: &BlockJob, scores: &mut [f32], stats: &mut [f32], out: &mut [f32]) {
    block_scalar(job, scores, stats, out)
}

/// Per-thread block scratch: the tile's query rows, their own ranges, scores, per-row statistics and outputs.
#[derive(Default)]
struct BlockScratch {
    q: Vec<f32>,
    own: Vec<Range<usize>>,
    scores: Vec<f32>,
    stats: Vec<f32>,
    out: Vec<f32>,
    /// The block's keys and values decoded to f32 (encoded caches only), and a query row's encoding.
    keys: Vec<f32>,
    values: Vec<f32>,
    q_bytes: Vec<u8>,
}

/// A batch's layout: tiles of consecutive tokens and where each token's partial results go.
#[derive(Default)]
struct Plan {
    /// Per tile: first token, end token.
    tiles: Vec<[usize; 2]>,
    /// `(absolute block, tile)` of every task of one KV head, block by block: the threads work through a
    /// block's tiles one after another, so the block stays in their caches.
    tasks: Vec<(usize, usize)>,
    /// `first_slot[i]`: token `i`'s first partial slot (one per block of its span); one entry past the end.
    first_slot: Vec<usize>,
    partials: Vec<f32>,
}

thread_local! {
    static BLOCK_SCRATCH: std::cell::RefCell<BlockScratch> = const {
        std::cell::RefCell::new(BlockScratch {
            q: Vec::new(),
            own: Vec::new(),
            scores: Vec::new(),
            stats: Vec::new(),
            out: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            q_bytes: Vec::new(),
        })
    };
    /// The calling thread's plan and partial results, kept so decoding allocates nothing once warm.
    static PLAN: std::cell::RefCell<Plan> = const {
        std::cell::RefCell::new(Plan {
            tiles: Vec::new(),
            tasks: Vec::new(),
            first_slot: Vec::new(),
            partials: Vec::new(),
        })
    };
}

/// Absolute blocks a span touches (none for an empty span).
fn blocks_of(positions: &Range<usize>) -> Range<usize> {
    if positions.is_empty() {
        0..0
    } else {
        positions.start / ATTENTION_BLOCK..(positions.end - 1) / ATTENTION_BLOCK + 1
    }
}

/// Whether token `b` may join the tile whose last token is `a`: same sequence, and spans that move forward
/// without a gap, so the tokens sharing any block see one run of positions.
fn tiles_with(a: &AttnSpan, b: &AttnSpan) -> bool {
    let (pa, pb) = (&a.positions, &b.positions);
    a.kv.same(&b.kv)
        && !pa.is_empty()
        && !pb.is_empty()
        && pb.start >= pa.start
        && pb.end >= pa.end
        && pb.start <= pa.end
}

/// Grouped-query attention for a batch: `q` holds one row of `n_heads * head_dim` per token (pre-scaled),
/// `spans[i]` says what token `i` sees; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
/// With `softcap = Some(cap)` each score `s` becomes `cap * tanh(s / cap)` before the softmax (Gemma 2's
/// attention logit soft-capping). Writes `out`, one row of `n_heads * head_dim` per token (zeros for a token
/// that sees no position).
#[allow(clippy::too_many_arguments)]
pub fn grouped_query_attention(
    pool: &ThreadPool,
    q: &[f32],
    spans: &[AttnSpan],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    softcap: Option<f32>,
    out: &mut [f32],
) {
    let kernel = AttentionKernel::detect();
    grouped_query_attention_with(kernel, pool, q, spans, n_heads, n_kv_heads, head_dim, softcap, out)
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
    softcap: Option<f32>,
    out: &mut [f32],
) {
    if let Some(cap) = softcap {
        assert!(cap > 0.0 && cap.is_finite(), "attention soft-cap {cap} is not a positive number");
    }
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
    let tile_tokens = (TASK_ROWS / g).max(1);

    PLAN.with_borrow_mut(|plan| {
        let Plan { tiles, tasks, first_slot, partials } = plan;
        tiles.clear();
        tasks.clear();
        first_slot.clear();
        let (mut n_slots, mut multi) = (0, false);
        let mut i = 0;
        while i < spans.len() {
            let mut end = i + 1;
            while end < spans.len() && end - i < tile_tokens && tiles_with(&spans[end - 1], &spans[end]) {
                end += 1;
            }
            let b0 = spans[i..end].iter().map(|s| blocks_of(&s.positions).start).min().unwrap_or(0);
            let b1 = spans[i..end].iter().map(|s| blocks_of(&s.positions).end).max().unwrap_or(0);
            tasks.extend((b0..b1).map(|b| (b, tiles.len())));
            tiles.push([i, end]);
            for span in &spans[i..end] {
                first_slot.push(n_slots);
                n_slots += blocks_of(&span.positions).len();
                multi |= blocks_of(&span.positions).len() > 1;
                if span.positions.is_empty() {
                    let t = first_slot.len() - 1;
                    out[t * q_row..(t + 1) * q_row].fill(0.0);
                }
            }
            i = end;
        }
        first_slot.push(n_slots);
        tasks.sort_unstable();
        let n_tasks = tasks.len() * n_kv_heads;
        // One partial per (block, KV head) of tokens that span several blocks: per head max, sum, output.
        let part_len = g * (2 + d);
        if multi {
            partials.resize(n_slots * n_kv_heads * part_len, 0.0);
        }
        let out_shared = SharedMut::new(out);
        let part_shared = SharedMut::new(partials.as_mut_slice());
        let (tiles, tasks, first_slot) = (&*tiles, &*tasks, &*first_slot);

        pool.run(n_tasks, &|task| {
            let (kvh, (b, ti)) = (task / tasks.len(), tasks[task % tasks.len()]);
            let [t0, t1] = tiles[ti];
            let base = b * ATTENTION_BLOCK;
            let block = base..base + ATTENTION_BLOCK;
            // The tile's tokens that see this block (consecutive, as spans move forward).
            let takes = |t: &usize| {
                let p = &spans[*t].positions;
                p.start < block.end && p.end > block.start
            };
            let Some(first) = (t0..t1).find(takes) else { return };
            let last = (first..t1).take_while(takes).last().unwrap_or(first);
            let tokens = first..last + 1;
            BLOCK_SCRATCH.with_borrow_mut(|s| {
                s.q.clear();
                s.own.clear();
                for t in tokens.clone() {
                    let p = &spans[t].positions;
                    let own = p.start.max(block.start) - base..p.end.min(block.end) - base;
                    let at = t * q_row + kvh * g * d;
                    s.q.extend_from_slice(&q[at..at + g * d]);
                    s.own.extend(std::iter::repeat_n(own, g));
                }
                let n = s.own.len();
                s.scores.resize(n * ATTENTION_BLOCK, 0.0);
                s.stats.resize(2 * n, 0.0);
                s.out.resize(n * d, 0.0);
                let kv = &spans[t0].kv;
                let job = match (kv.keys, kv.values) {
                    (KvRows::F32(keys), KvRows::F32(values)) => BlockJob {
                        q: &s.q,
                        own: &s.own,
                        keys,
                        values,
                        row_len: kv.row_len,
                        ring: kv.ring,
                        off: kvh * d,
                        d,
                        base,
                        softcap,
                    },
                    _ => {
                        // Encoded rows: this block's slice of the head decoded once for all the tile's rows
                        // (a ring of one block, so position `base + idx` is row `idx`), and the queries rounded
                        // to what llama.cpp dots with such keys.
                        let lo = s.own.iter().map(|r| r.start).min().unwrap_or(0);
                        let hi = s.own.iter().map(|r| r.end).max().unwrap_or(0).max(lo);
                        s.keys.resize(ATTENTION_BLOCK * d, 0.0);
                        s.values.resize(ATTENTION_BLOCK * d, 0.0);
                        kv.keys.decode_into(kv, base, lo..hi, kvh * d, d, &mut s.keys);
                        kv.values.decode_into(kv, base, lo..hi, kvh * d, d, &mut s.values);
                        if let Some(qt) = kv.keys.ty().query_type() {
                            round_queries(qt, &mut s.q, d, &mut s.q_bytes);
                        }
                        BlockJob {
                            q: &s.q,
                            own: &s.own,
                            keys: &s.keys,
                            values: &s.values,
                            row_len: d,
                            ring: ATTENTION_BLOCK,
                            off: 0,
                            d,
                            base,
                            softcap,
                        }
                    }
                };
                // SAFETY: `kernel` is only a SIMD kernel where the CPU supports it.
                unsafe { block_fn(&job, &mut s.scores, &mut s.stats, &mut s.out) };
                for (k, t) in tokens.enumerate() {
                    let stats = &s.stats[2 * g * k..2 * g * (k + 1)];
                    let res = &s.out[g * d * k..g * d * (k + 1)];
                    let tb = blocks_of(&spans[t].positions);
                    if tb.len() == 1 {
                        // SAFETY: the token's only block: task (t, kvh) alone writes this group's slice of row t.
                        let o = unsafe { out_shared.slice(t * q_row + kvh * g * d..t * q_row + (kvh + 1) * g * d) };
                        for (j, (o, r)) in o.chunks_exact_mut(d).zip(res.chunks_exact(d)).enumerate() {
                            let inv = 1.0 / stats[2 * j + 1];
                            o.iter_mut().zip(r).for_each(|(o, r)| *o = r * inv);
                        }
                    } else {
                        let at = ((first_slot[t] + b - tb.start) * n_kv_heads + kvh) * part_len;
                        // SAFETY: each (token, block, KV head) has its own partial slot.
                        let part = unsafe { part_shared.slice(at..at + part_len) };
                        part[..2 * g].copy_from_slice(stats);
                        part[2 * g..].copy_from_slice(res);
                    }
                }
            });
        });

        if multi {
            let partials = &*partials;
            pool.run(spans.len() * n_kv_heads, &|task| {
                let (i, kvh) = (task / n_kv_heads, task % n_kv_heads);
                let (b0, b1) = (first_slot[i], first_slot[i + 1]);
                if b1 - b0 <= 1 {
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
        grouped_query_attention_with(kernel, &pool, q, &spans, n_kv, n_kv, q.len() / n_kv, None, &mut out);
        out
    }

    #[test]
    fn attends_to_the_matching_key() {
        // Two heads of width 2 per position; head 1 has one key aligned with the query.
        let keys = vec![0., 0., 1., 0., /* pos 1 */ 0., 0., 0., 1., /* pos 2 */ 0., 0., -1., 0.];
        let values = vec![0., 0., 10., 20., /* */ 0., 0., 30., 40., /* */ 0., 0., 50., 60.];
        let kv = KvView::f32(&keys, &values, 4, 0);
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
        let kv = KvView::f32(&keys, &values, 1, 2);
        assert_eq!(attend_one(AttentionKernel::Scalar, &[0.0], &kv, 1, 3..4), [7.0]);
        assert!((attend_one(AttentionKernel::Scalar, &[0.0], &kv, 1, 2..4)[0] - 6.0).abs() < 1e-6);
    }

    /// Plain two-pass softmax attention in f64: the reference for every kernel and block split.
    fn reference(q: &[f32], kv: &KvView, kv_head: usize, positions: Range<usize>) -> Vec<f64> {
        reference_capped(q, kv, kv_head, positions, None)
    }

    /// [`reference`] with the scores soft-capped (`cap * tanh(s / cap)`) before the softmax.
    fn reference_capped(q: &[f32], kv: &KvView, kv_head: usize, positions: Range<usize>, cap: Option<f64>) -> Vec<f64> {
        let d = q.len();
        let off = kv_head * d;
        let row = |rows: &KvRows, p: usize| {
            let mut x = vec![0f32; d];
            rows.decode_into(kv, p, 0..1, off, d, &mut x);
            x
        };
        let scores: Vec<f64> = positions
            .clone()
            .map(|p| q.iter().zip(&row(&kv.keys, p)).map(|(a, b)| *a as f64 * *b as f64).sum())
            .map(|s: f64| cap.map_or(s, |c| c * (s / c).tanh()))
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = w.iter().sum();
        let mut out = vec![0.0; d];
        for (p, wp) in positions.zip(&w) {
            for (o, v) in out.iter_mut().zip(&row(&kv.values, p)) {
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
            let plain = KvView::f32(&keys, &values, row, 0);
            let ring = KvView::f32(&keys, &values, row, 600);
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
                    grouped_query_attention_with(*kernel, &pool, q, &spans, n_heads, n_kv, d, None, &mut out);
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
                grouped_query_attention_with(*kernel, &pool, &q_all, &spans, n_heads, n_kv, d, None, &mut out);
                assert_eq!(out, alone.concat(), "{kernel:?} d{d}: batching changed the result");
            }
        }
    }

    #[test]
    fn tanh_lane_is_tanh() {
        let mut worst = 0f64;
        for i in -400_000..400_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((tanh_lane(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst < 3e-7, "{worst}");
        for (x, want) in [(0.0, 0.0), (-0.0, -0.0), (100.0, 1.0), (-1e6, -1.0), (f32::INFINITY, 1.0)] {
            assert_eq!(tanh_lane(x), want, "{x}");
        }
    }

    #[test]
    fn exp_lane_is_exp_fast() {
        let xs = (-200_000..200_000).map(|i| i as f32 * 1e-3).chain([f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -0.0]);
        for x in xs {
            assert_eq!(exp_lane(x).to_bits(), exp_fast(x).to_bits(), "{x}");
        }
    }

    /// EmbeddingGemma's bidirectional windows (each token sees a window centred on it, clipped to the sequence,
    /// so neighbours share blocks and tiles) next to a second sequence's causal sliding windows in a ring buffer,
    /// with some empty and single-position spans: every token's output is bitwise what it gets alone, for every
    /// kernel on 1 and 2 threads, and close to the f64 reference.
    #[test]
    fn windowed_batches_match_tokens_alone() {
        for (d, n_heads, n_kv, n, half) in [(256, 3, 1, 530, 256), (64, 2, 2, 300, 40)] {
            let row = n_kv * d;
            let data = |seed: usize, len: usize| -> Vec<f32> {
                (0..len).map(|i| ((i * 7919 + seed * 104_729) % 1013) as f32 / 506.0 - 1.0).collect()
            };
            let (ka, va) = (data(1, n * row), data(2, n * row));
            let (kb, vb) = (data(3, 512 * row), data(4, 512 * row));
            let a = KvView::f32(&ka, &va, row, 0);
            let b = KvView::f32(&kb, &vb, row, 512);
            let mut spans: Vec<AttnSpan> =
                (0..n).map(|i| AttnSpan { kv: a, positions: i.saturating_sub(half)..(i + half + 1).min(n) }).collect();
            spans.extend((600..900usize).map(|p| AttnSpan { kv: b, positions: (p + 1).saturating_sub(300)..p + 1 }));
            spans.push(AttnSpan { kv: b, positions: 700..700 });
            spans.push(AttnSpan { kv: a, positions: 255..256 });
            spans.push(AttnSpan { kv: a, positions: 256..257 });
            let q: Vec<f32> = (0..spans.len() * n_heads * d).map(|i| ((i * 31) as f32 * 0.37).sin() * 0.2).collect();
            let q_row = n_heads * d;
            for kernel in AttentionKernel::available() {
                let alone: Vec<f32> = spans
                    .iter()
                    .enumerate()
                    .flat_map(|(i, span)| {
                        let pool = ThreadPool::new(1);
                        let mut out = vec![0.0; q_row];
                        let one = [AttnSpan { kv: span.kv, positions: span.positions.clone() }];
                        let qi = &q[i * q_row..(i + 1) * q_row];
                        grouped_query_attention_with(kernel, &pool, qi, &one, n_heads, n_kv, d, None, &mut out);
                        out
                    })
                    .collect();
                for threads in [1, 2] {
                    let pool = ThreadPool::new(threads);
                    let mut out = vec![f32::NAN; q.len()];
                    grouped_query_attention_with(kernel, &pool, &q, &spans, n_heads, n_kv, d, None, &mut out);
                    for (i, (got, want)) in out.chunks_exact(q_row).zip(alone.chunks_exact(q_row)).enumerate() {
                        assert!(
                            got.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{kernel:?} d{d} {threads} threads: token {i} ({:?}) differs from alone",
                            spans[i].positions
                        );
                    }
                }
                for (i, span) in spans.iter().enumerate() {
                    for h in 0..n_heads {
                        let got = &alone[i * q_row + h * d..i * q_row + (h + 1) * d];
                        if span.positions.is_empty() {
                            assert!(got.iter().all(|x| *x == 0.0), "{kernel:?}: an empty span gives zeros");
                            continue;
                        }
                        let qh = &q[i * q_row + h * d..i * q_row + (h + 1) * d];
                        let want = reference(qh, &span.kv, h / (n_heads / n_kv), span.positions.clone());
                        for (x, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                                "{kernel:?} d{d} token {i} h{h} [{x}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The grouped reduction of scores gives each lane exactly the horizontal sum of its vector, in the order
    /// a single vector's sum takes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposed_sums_are_horizontal_sums() {
        use std::arch::x86_64::*;
        use x86::Lanes;
        let raw: Vec<f32> =
            (0..256).map(|i| ((i * 7919 % 1013) as f32 * 0.731).sin() * 10f32.powi(i % 7 - 3)).collect();
        if is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            unsafe fn check(raw: &[f32]) {
                let mut got = [0f32; 16];
                // SAFETY: raw holds 16 x 16 floats; got holds 16.
                unsafe { <x86::Avx512 as x86::Lanes>::transpose_sum(raw.as_ptr()).store(got.as_mut_ptr()) };
                for (s, g) in got.iter().enumerate() {
                    // SAFETY: row s of raw holds 16 floats.
                    let want = _mm512_reduce_add_ps(unsafe { _mm512_loadu_ps(raw[16 * s..].as_ptr()) });
                    assert_eq!(g.to_bits(), want.to_bits(), "lane {s}");
                }
            }
            // SAFETY: the CPU has AVX-512F.
            unsafe { check(&raw) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn check(raw: &[f32]) {
                let mut got = [0f32; 8];
                // SAFETY: raw holds 8 x 8 floats; got holds 8.
                unsafe { <x86::Avx2 as x86::Lanes>::transpose_sum(raw.as_ptr()).store(got.as_mut_ptr()) };
                for (s, g) in got.iter().enumerate() {
                    let x = &raw[8 * s..8 * s + 8];
                    let h: Vec<f32> = (0..4).map(|i| x[i] + x[i + 4]).collect();
                    let want = (h[0] + h[2]) + (h[1] + h[3]);
                    assert_eq!(g.to_bits(), want.to_bits(), "lane {s}");
                }
            }
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { check(&raw) };
        }
    }

    /// A token that needs merging next to one that sees nothing (as many block slots as tokens).
    #[test]
    fn an_empty_span_beside_a_merged_one() {
        let d = 64;
        let keys: Vec<f32> = (0..400 * d).map(|i| ((i * 7919 % 1013) as f32 / 500.0 - 1.0) * 0.5).collect();
        let values: Vec<f32> = (0..400 * d).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
        let kv = KvView::f32(&keys, &values, d, 0);
        let q: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        for kernel in AttentionKernel::available() {
            let spans = [AttnSpan { kv, positions: 5..5 }, AttnSpan { kv, positions: 200..300 }];
            let mut out = vec![f32::NAN; 2 * d];
            grouped_query_attention_with(kernel, &ThreadPool::new(1), &q, &spans, 1, 1, d, None, &mut out);
            assert!(out[..d].iter().all(|x| *x == 0.0));
            assert_eq!(out[d..], attend_one(kernel, &q[d..], &kv, 1, 200..300)[..], "{kernel:?}");
        }
    }

    #[test]
    /// A causal prefill batch (token i sees 0..=i) on two threads: every kernel gives the same result.
    fn kernels_agree_on_a_causal_batch() {
        let (d, nh, nkv, n) = (256, 4, 1, 14);
        let row = nkv * d;
        let keys: Vec<f32> = (0..1024 * row).map(|i| ((i * 7919 % 1013) as f32 / 500.0 - 1.0) * 0.5).collect();
        let values: Vec<f32> = (0..1024 * row).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
        let kv = KvView::f32(&keys, &values, row, 1024);
        let q: Vec<f32> = (0..n * nh * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let spans: Vec<AttnSpan> = (0..n).map(|i| AttnSpan { kv, positions: 0..i + 1 }).collect();
        let pool = ThreadPool::new(2);
        let mut outs = Vec::new();
        for k in AttentionKernel::available() {
            let mut out = vec![0.0; q.len()];
            grouped_query_attention_with(k, &pool, &q, &spans, nh, nkv, d, None, &mut out);
            outs.push(out);
        }
        for o in &outs[1..] {
            let md = o.iter().zip(&outs[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(md < 1e-4, "max diff {md}");
        }
    }

    /// Keys and values stored in every cache type: each kernel reads them as the f64 reference over the
    /// decoded rows (queries rounded as llama.cpp rounds them for such keys) does, the SIMD kernels agree with
    /// the scalar one, and a token's result is bitwise the same alone and in a batch on 2 threads.
    #[test]
    fn encoded_caches_match_the_reference_for_every_type() {
        let (d, n_heads, n_kv, n) = (64, 4, 2, 600);
        let row = n_kv * d;
        let keys: Vec<f32> = (0..n * row).map(|i| ((i * 7919 % 1013) as f32 / 500.0 - 1.0) * 0.5).collect();
        let values: Vec<f32> = (0..n * row).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
        let cases = [0..1, 0..3, 17..300, 0..600, 250..520];
        let q: Vec<f32> = (0..cases.len() * n_heads * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let q_row = n_heads * d;
        for (kt, vt) in
            KvType::ALL.iter().map(|t| (*t, *t)).chain([(KvType::Q8_0, KvType::F16), (KvType::F32, KvType::Q4_0)])
        {
            let encode = |t: KvType, x: &[f32]| {
                let mut b = vec![0u8; t.row_bytes(x.len()).unwrap()];
                for (src, dst) in x.chunks_exact(row).zip(b.chunks_exact_mut(t.row_bytes(row).unwrap())) {
                    t.encode(src, dst);
                }
                b
            };
            let (kb, vb) = (encode(kt, &keys), encode(vt, &values));
            fn rows<'a>(t: KvType, f: &'a [f32], b: &'a [u8]) -> KvRows<'a> {
                if t == KvType::F32 {
                    KvRows::F32(f)
                } else {
                    KvRows::Encoded(t, b)
                }
            }
            let kv = KvView { keys: rows(kt, &keys, &kb), values: rows(vt, &values, &vb), row_len: row, ring: 0 };
            let spans: Vec<AttnSpan> = cases.iter().map(|p| AttnSpan { kv, positions: p.clone() }).collect();
            let mut results = Vec::new();
            for kernel in AttentionKernel::available() {
                let mut alone = Vec::new();
                for (i, span) in spans.iter().enumerate() {
                    let qi = &q[i * q_row..(i + 1) * q_row];
                    let mut out = vec![0.0; q_row];
                    let one = [AttnSpan { kv, positions: span.positions.clone() }];
                    grouped_query_attention_with(
                        kernel,
                        &ThreadPool::new(1),
                        qi,
                        &one,
                        n_heads,
                        n_kv,
                        d,
                        None,
                        &mut out,
                    );
                    for h in 0..n_heads {
                        let mut qh = qi[h * d..(h + 1) * d].to_vec();
                        if let Some(qt) = kt.query_type() {
                            round_queries(qt, &mut qh, d, &mut Vec::new());
                        }
                        let want = reference(&qh, &kv, h / (n_heads / n_kv), span.positions.clone());
                        for (x, (g, w)) in out[h * d..(h + 1) * d].iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 2e-4 * (1.0 + w.abs()),
                                "{kernel:?} {kt}/{vt} token {i} h{h} [{x}]: {g} vs {w}"
                            );
                        }
                    }
                    alone.extend(out);
                }
                let mut out = vec![0.0; q.len()];
                grouped_query_attention_with(kernel, &ThreadPool::new(2), &q, &spans, n_heads, n_kv, d, None, &mut out);
                assert_eq!(out, alone, "{kernel:?} {kt}/{vt}: batching changed the result");
                results.push(out);
            }
            for (k, r) in results.iter().enumerate().skip(1) {
                let md = r.iter().zip(&results[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(md < 1e-4, "{kt}/{vt}: kernel {k} differs from the scalar one by {md}");
            }
        }
    }

    /// Soft-capped scores (Gemma 2's attention logit cap) in every kernel and cache type: one token's span of
    /// one block and of several (merged), in a ring, alone and in a batch on 2 threads, all as the f64
    /// reference that caps before the softmax; the cap changes the result (the scores reach well past it).
    #[test]
    fn soft_capped_scores_match_the_reference_in_every_kernel_and_cache_type() {
        let (d, n_heads, n_kv, n) = (64, 4, 2, 600);
        let row = n_kv * d;
        let keys: Vec<f32> = (0..n * row).map(|i| ((i * 7919 % 1013) as f32 / 500.0 - 1.0) * 0.5).collect();
        let values: Vec<f32> = (0..n * row).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
        let cases = [(0, 0..1), (0, 17..300), (0, 0..600), (300, 250..520)];
        let q: Vec<f32> = (0..cases.len() * n_heads * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let q_row = n_heads * d;
        let cap = 5.0f32;
        for t in [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0] {
            let enc = |x: &[f32]| {
                let mut b = vec![0u8; t.row_bytes(x.len()).unwrap()];
                for (src, dst) in x.chunks_exact(row).zip(b.chunks_exact_mut(t.row_bytes(row).unwrap())) {
                    t.encode(src, dst);
                }
                b
            };
            let (kb, vb) = (enc(&keys), enc(&values));
            let view = |ring| match t {
                KvType::F32 => KvView::f32(&keys, &values, row, ring),
                _ => KvView { keys: KvRows::Encoded(t, &kb), values: KvRows::Encoded(t, &vb), row_len: row, ring },
            };
            let spans: Vec<AttnSpan> =
                cases.iter().map(|(ring, p)| AttnSpan { kv: view(*ring), positions: p.clone() }).collect();
            let mut scalar = None;
            for kernel in AttentionKernel::available() {
                let mut alone = Vec::new();
                for (i, span) in spans.iter().enumerate() {
                    let qi = &q[i * q_row..(i + 1) * q_row];
                    let one = [AttnSpan { kv: span.kv, positions: span.positions.clone() }];
                    let (mut capped, mut plain) = (vec![0.0; q_row], vec![0.0; q_row]);
                    let pool = ThreadPool::new(1);
                    grouped_query_attention_with(kernel, &pool, qi, &one, n_heads, n_kv, d, Some(cap), &mut capped);
                    grouped_query_attention_with(kernel, &pool, qi, &one, n_heads, n_kv, d, None, &mut plain);
                    if span.positions.len() > 1 {
                        assert_ne!(capped, plain, "{kernel:?} {t} token {i}: the cap changed nothing");
                    }
                    for h in 0..n_heads {
                        let mut qh = qi[h * d..(h + 1) * d].to_vec();
                        if let Some(qt) = t.query_type() {
                            round_queries(qt, &mut qh, d, &mut Vec::new());
                        }
                        let kvh = h / (n_heads / n_kv);
                        let want = reference_capped(&qh, &span.kv, kvh, span.positions.clone(), Some(cap as f64));
                        for (x, (g, w)) in capped[h * d..(h + 1) * d].iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 2e-4 * (1.0 + w.abs()),
                                "{kernel:?} {t} token {i} h{h} [{x}]: {g} vs {w}"
                            );
                        }
                    }
                    alone.extend(capped);
                }
                let mut out = vec![0.0; q.len()];
                grouped_query_attention_with(
                    kernel,
                    &ThreadPool::new(2),
                    &q,
                    &spans,
                    n_heads,
                    n_kv,
                    d,
                    Some(cap),
                    &mut out,
                );
                assert_eq!(out, alone, "{kernel:?} {t}: batching changed the capped result");
                match &scalar {
                    None => scalar = Some(out),
                    Some(s) => {
                        let md = out.iter().zip(s).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                        assert!(md < 1e-4, "{t}: {kernel:?} differs from the scalar kernel by {md}");
                    }
                }
            }
        }
    }
}
