//! Register-tiled dots of float weight rows (F32, F16, BF16) with f32 activations, in the lane pattern of
//! [`crate::float`]: 16 lanes per (row, token), one FMA per element, chunk tails zero-padded, lanes summed
//! as a tree. AVX-512 keeps a 4 rows x 6 tokens tile in 24 registers; AVX2 splits the 16 lanes into two
//! halves of 8 (each lane's chain is the same, so the results are bitwise those of AVX-512 and the scalar
//! twin).

use std::arch::x86_64::*;

use crate::float::{FloatCodec, FloatKind, FLOAT_LANES, FLOAT_TOKEN_GROUP};

/// A slab of weight rows and activation rows, checked by the caller: `rows` rows of `k` elements (`row_bytes`
/// apart) in `w`, `tokens` rows of `k` f32 in `acts`, `out` holding `rows * tokens` results.
pub(crate) struct FloatSlab<'a> {
    pub k: usize,
    pub w: &'a [u8],
    pub rows: usize,
    pub acts: &'a [f32],
    pub tokens: usize,
    pub out: &'a mut [f32],
}

/// 16 weights of `kind` starting at `p` as f32 (exact conversions).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
pub(super) unsafe fn load16_avx512(kind: FloatKind, p: *const u8) -> __m512 {
    // SAFETY (all arms): the caller guarantees 16 elements of `kind` at `p`.
    match kind {
        FloatKind::F32 => unsafe { _mm512_loadu_ps(p as *const f32) },
        FloatKind::F16 => unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) },
        FloatKind::Bf16 => unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
        },
    }
}

/// 8 weights of `kind` starting at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load8_avx2(kind: FloatKind, p: *const u8) -> __m256 {
    // SAFETY (all arms): the caller guarantees 8 elements of `kind` at `p`.
    match kind {
        FloatKind::F32 => unsafe { _mm256_loadu_ps(p as *const f32) },
        FloatKind::F16 => unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) },
        FloatKind::Bf16 => unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
        },
    }
}

/// The 16 lanes summed in the pattern's order (`i + 8`, `i + 4`, `i + 2`, `i + 1`), given as two halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn reduce_halves(lo: __m256, hi: __m256) -> f32 {
    // SAFETY: register operations only, on the CPU features of this function.
    unsafe { super::hsum_f32x8(_mm256_add_ps(lo, hi)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn reduce_avx512(v: __m512) -> f32 {
    // SAFETY: register operations only, on the CPU features of this function.
    unsafe {
        reduce_halves(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))))
    }
}

/// The last, partial chunk of one row (weights as raw bytes) and of one token, zero-padded to 16 lanes.
fn padded_tail(s: &FloatSlab, elem: usize, r: usize, t: usize, full: usize) -> ([u8; 64], [f32; FLOAT_LANES]) {
    let k = s.k;
    let mut w = [0u8; 64];
    let mut a = [0f32; FLOAT_LANES];
    let row = &s.w[r * k * elem..(r + 1) * k * elem];
    w[..(k - full) * elem].copy_from_slice(&row[full * elem..]);
    a[..k - full].copy_from_slice(&s.acts[t * k + full..(t + 1) * k]);
    (w, a)
}

/// Every (row, token) of the slab with AVX-512.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX-512 F and BW; the slab's lengths must be as documented.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
pub(crate) unsafe fn dot_rows_avx512<C: FloatCodec>(s: &mut FloatSlab) {
    // Groups of tokens whose activations stay in L2 while every row of the slab passes over them.
    // Within a group, one tile of tokens (in L1) meets every row of the slab (in L2) before the next.
    for (g0, g1) in token_groups(s.tokens) {
        let mut t0 = g0;
        while t0 < g1 {
            let t = (g1 - t0).min(6);
            let mut r0 = 0;
            while r0 < s.rows {
                let r = (s.rows - r0).min(4);
                // SAFETY: the CPU features are this function's own; the tile lies inside the slab.
                unsafe {
                    match (r, t) {
                        (4, 6) => tile_avx512::<C, 4, 6>(s, r0, t0),
                        (4, 5) => tile_avx512::<C, 4, 5>(s, r0, t0),
                        (4, 4) => tile_avx512::<C, 4, 4>(s, r0, t0),
                        (4, 3) => tile_avx512::<C, 4, 3>(s, r0, t0),
                        (4, 2) => tile_avx512::<C, 4, 2>(s, r0, t0),
                        (4, _) => tile_avx512::<C, 4, 1>(s, r0, t0),
                        (_, 6) => {
                            for rr in r0..r0 + r {
                                tile_avx512::<C, 1, 6>(s, rr, t0)
                            }
                        }
                        _ => {
                            for rr in r0..r0 + r {
                                for tt in t0..t0 + t {
                                    tile_avx512::<C, 1, 1>(s, rr, tt)
                                }
                            }
                        }
                    }
                }
                r0 += r;
            }
            t0 += t;
        }
    }
}

/// Token ranges of at most [`FLOAT_TOKEN_GROUP`] tokens covering `0..tokens`.
fn token_groups(tokens: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..tokens).step_by(FLOAT_TOKEN_GROUP).map(move |g| (g, (g + FLOAT_TOKEN_GROUP).min(tokens)))
}

/// Elements ahead of the current chunk whose weights are prefetched (8 cache lines of f32).
const PREFETCH_AHEAD: usize = 128;

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
#[allow(clippy::needless_range_loop)] // the indices name the accumulator registers
unsafe fn tile_avx512<C: FloatCodec, const R: usize, const T: usize>(s: &mut FloatSlab, r0: usize, t0: usize) {
    // Tiles after the first of a token group find the rows in cache.
    let prefetch = t0.is_multiple_of(FLOAT_TOKEN_GROUP);
    let (k, kind, elem) = (s.k, C::KIND, C::TY.type_size());
    let full = k / FLOAT_LANES * FLOAT_LANES;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let w_at = |r: usize, i: usize| s.w.as_ptr().wrapping_add(((r0 + r) * k + i) * elem);
    let a_at = |t: usize, i: usize| s.acts.as_ptr().wrapping_add((t0 + t) * k + i);
    let mut i = 0;
    while i < full {
        // The first tile of a row block reads its weights from memory: ask for them a few lines ahead.
        if prefetch {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(w_at(r, i + PREFETCH_AHEAD).cast());
            }
        }
        // SAFETY: `i + 16 <= full <= k`, so every load reads inside its row.
        unsafe {
            let w: [__m512; R] = std::array::from_fn(|r| load16_avx512(kind, w_at(r, i)));
            for t in 0..T {
                let a = _mm512_loadu_ps(a_at(t, i));
                for r in 0..R {
                    acc[r][t] = _mm512_fmadd_ps(w[r], a, acc[r][t]);
                }
            }
        }
        i += FLOAT_LANES;
    }
    for r in 0..R {
        for t in 0..T {
            let mut v = acc[r][t];
            if full < k {
                let (w, a) = padded_tail(s, elem, r0 + r, t0 + t, full);
                // SAFETY: the padded buffers hold 16 elements each.
                v = unsafe { _mm512_fmadd_ps(load16_avx512(kind, w.as_ptr()), _mm512_loadu_ps(a.as_ptr()), v) };
            }
            // SAFETY: register operations only.
            s.out[(r0 + r) * s.tokens + t0 + t] = unsafe { reduce_avx512(v) };
        }
    }
}

/// Every (row, token) of the slab with AVX2 (two 8-lane halves per pair).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the slab's lengths must be as documented.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows_avx2<C: FloatCodec>(s: &mut FloatSlab) {
    // The loop order of the AVX-512 kernel.
    for (g0, g1) in token_groups(s.tokens) {
        let mut t0 = g0;
        while t0 < g1 {
            let t = (g1 - t0).min(3);
            let mut r0 = 0;
            while r0 < s.rows {
                let r = (s.rows - r0).min(2);
                // SAFETY: the CPU features are this function's own; the tile lies inside the slab.
                unsafe {
                    if (r, t) == (2, 3) {
                        tile_avx2::<C, 2, 3>(s, r0, t0);
                    } else {
                        for rr in r0..r0 + r {
                            for tt in t0..t0 + t {
                                tile_avx2::<C, 1, 1>(s, rr, tt);
                            }
                        }
                    }
                }
                r0 += r;
            }
            t0 += t;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // the indices name the accumulator registers
unsafe fn tile_avx2<C: FloatCodec, const R: usize, const T: usize>(s: &mut FloatSlab, r0: usize, t0: usize) {
    let (k, kind, elem) = (s.k, C::KIND, C::TY.type_size());
    let full = k / FLOAT_LANES * FLOAT_LANES;
    // acc[r][t][half]: lanes 0..8 and 8..16 of the pattern.
    let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
    let w_at = |r: usize, i: usize| s.w.as_ptr().wrapping_add(((r0 + r) * k + i) * elem);
    let a_at = |t: usize, i: usize| s.acts.as_ptr().wrapping_add((t0 + t) * k + i);
    let mut i = 0;
    while i < full {
        for h in 0..2 {
            let j = i + 8 * h;
            // SAFETY: `j + 8 <= full <= k`, so every load reads inside its row.
            unsafe {
                let w: [__m256; R] = std::array::from_fn(|r| load8_avx2(kind, w_at(r, j)));
                for t in 0..T {
                    let a = _mm256_loadu_ps(a_at(t, j));
                    for r in 0..R {
                        acc[r][t][h] = _mm256_fmadd_ps(w[r], a, acc[r][t][h]);
                    }
                }
            }
        }
        i += FLOAT_LANES;
    }
    for r in 0..R {
        for t in 0..T {
            let tail = (full < k).then(|| padded_tail(s, elem, r0 + r, t0 + t, full));
            let mut halves = acc[r][t];
            for (h, v) in halves.iter_mut().enumerate() {
                if let Some((w, a)) = &tail {
                    // SAFETY: the padded buffers hold 16 elements; half `h` reads 8 of them.
                    *v = unsafe {
                        _mm256_fmadd_ps(
                            load8_avx2(kind, w.as_ptr().add(8 * h * elem)),
                            _mm256_loadu_ps(a.as_ptr().add(8 * h)),
                            *v,
                        )
                    };
                }
            }
            // SAFETY: register operations only.
            s.out[(r0 + r) * s.tokens + t0 + t] = unsafe { reduce_halves(halves[0], halves[1]) };
        }
    }
}
