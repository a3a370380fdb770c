//! Register-tiled `dot_rows` for the 256-element super-block formats with Q8_K activations.
//!
//! A tile is `R` weight rows x `T` tokens. Per super-block each row is unpacked once (quants as unsigned bytes and
//! sub-block scales as i16 lanes) and used by all `T` tokens; each activation chunk is loaded once and used by all
//! `R` rows. Integer products go `maddubs` (u8 x i8 -> i16 pairs) then `madd` / `vpdpwssd` with the sub-block
//! scales into i32 lanes, which are exact whatever the order. The only float work per (row, token) pair is, per
//! super-block, `acc = fma(d_w * d_a, sum, acc)` (plus the mins term for formats with mins) and one horizontal sum
//! at the end, in the same order in every tile shape: so a pair's result is bitwise the same whatever tile it
//! was computed in, and `vec_dot` (a 1 x 1 tile) equals `dot_rows`.

use std::arch::x86_64::*;
use std::marker::PhantomData;

pub(crate) use crate::k_quants::Q8K_BYTES;
use crate::k_quants::{Q8K_QS, QK_K};
use crate::GgmlType;

/// One weight format's super-block, seen by the 256-bit (AVX2) tile loop: 8 chunks of 32 elements.
pub(crate) trait Avx2Block {
    const TY: GgmlType;
    /// The quants `chunk` gives are signed (IQ4_XS's table values, -127..=113), not unsigned: `maddubs` then
    /// takes their magnitudes and moves their signs onto the activations (|q|, |a| <= 127 keep pairs in i16).
    const SIGNED: bool = false;
    /// What a row keeps of one super-block while its chunks are unpacked (scales, super-scales).
    type Row: Copy;
    /// # Safety: the CPU supports avx2, fma, f16c; `b` points at one whole block.
    unsafe fn prepare(b: *const u8) -> Self::Row;
    /// Chunk `C` (elements `32C..32C + 32`): the quants as unsigned bytes and the i16 scale of each
    /// `maddubs` output lane. # Safety: as `prepare`.
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Self::Row) -> (__m256i, __m256i);
    /// The i32 lanes a (row, token) pair's integer sum starts from (e.g. minus a quant offset). # Safety: as
    /// `prepare`; `a` points at one whole Q8_K block.
    unsafe fn start(row: &Self::Row, a: *const u8) -> __m256i;
    /// Adds one super-block's integer sum `sum` of a pair into its f32 accumulator. # Safety: as `start`.
    unsafe fn finish(row: &Self::Row, a: *const u8, sum: __m256i, acc: __m256) -> __m256;
}

/// The same for the 512-bit (AVX-512 F/BW/VL/VNNI) tile loop: 4 chunks of 64 elements.
pub(crate) trait Avx512Block {
    const TY: GgmlType;
    /// As [`Avx2Block::SIGNED`].
    const SIGNED: bool = false;
    type Row: Copy;
    /// # Safety: the CPU supports avx512f/bw/vl/vnni, avx2, fma, f16c; `b` points at one whole block.
    unsafe fn prepare(b: *const u8) -> Self::Row;
    /// Chunk `C` (elements `64C..64C + 64`). # Safety: as `prepare`.
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Self::Row) -> (__m512i, __m512i);
    /// # Safety: as `prepare`; `a` points at one whole Q8_K block.
    unsafe fn start(row: &Self::Row, a: *const u8) -> __m512i;
    /// # Safety: as `start`.
    unsafe fn finish(row: &Self::Row, a: *const u8, sum: __m512i, acc: __m512) -> __m512;
}

/// The f32 scale of a Q8_K block (`a` points at it).
///
/// # Safety
/// `a` is valid for 4 bytes.
#[inline(always)]
pub(crate) unsafe fn q8k_d(a: *const u8) -> f32 {
    f32::from_le_bytes(std::ptr::read_unaligned(a.cast::<[u8; 4]>()))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_f32x8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum_f32x16(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    hsum_f32x8(_mm256_add_ps(lo, hi))
}

/// Start of each row's (or token's) blocks, after checking each slice holds `nb` blocks of `bytes`.
#[inline(always)]
fn starts<const N: usize>(rows: &[&[u8]; N], nb: usize, bytes: usize) -> [*const u8; N] {
    for r in rows {
        assert!(r.len() >= nb * bytes, "k-quant tile: row shorter than its blocks");
    }
    std::array::from_fn(|i| rows[i].as_ptr())
}

/// How many super-blocks ahead each weight row is prefetched. Decode streams weights from memory; the hardware
/// prefetcher alone leaves Q6_K's 210-byte blocks (read out of order: scales last, quants first) well below
/// bandwidth.
const PREFETCH_BLOCKS: usize = 2;

/// Prefetches block `PREFETCH_BLOCKS` ahead of `wb` in every row, when `ahead` (the block exists).
#[inline(always)]
fn prefetch_next<const R: usize>(wb: &[*const u8; R], bytes: usize, ahead: bool) {
    if !ahead {
        return;
    }
    for &p in wb {
        super::prefetch_lines(p.wrapping_add(PREFETCH_BLOCKS * bytes), bytes);
    }
}

/// Adds chunk `C` of one super-block to every pair's integer sum (AVX2).
///
/// # Safety
/// As [`tile_avx2`]; `wb` and `ab` point at whole blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk_avx2<F: Avx2Block, const C: usize, const R: usize, const T: usize>(
    wb: &[*const u8; R],
    ab: &[*const u8; T],
    rows: &[F::Row; R],
    sum: &mut [[__m256i; T]; R],
) {
    let mut chunks = [(_mm256_setzero_si256(), _mm256_setzero_si256()); R];
    for r in 0..R {
        chunks[r] = F::chunk::<C>(wb[r], &rows[r]);
    }
    for t in 0..T {
        let y = _mm256_loadu_si256(ab[t].add(Q8K_QS + 32 * C).cast());
        for r in 0..R {
            let (q, s) = chunks[r];
            let pairs = if F::SIGNED {
                _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(y, q))
            } else {
                _mm256_maddubs_epi16(q, y)
            };
            let p = _mm256_madd_epi16(pairs, s);
            sum[r][t] = _mm256_add_epi32(sum[r][t], p);
        }
    }
}

/// Adds chunk `C` of one super-block to every pair's integer sum (AVX-512 VNNI).
///
/// # Safety
/// As [`tile_avx512`]; `wb` and `ab` point at whole blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn chunk_avx512<F: Avx512Block, const C: usize, const R: usize, const T: usize>(
    wb: &[*const u8; R],
    ab: &[*const u8; T],
    rows: &[F::Row; R],
    sum: &mut [[__m512i; T]; R],
) {
    let mut chunks = [(_mm512_setzero_si512(), _mm512_setzero_si512()); R];
    for r in 0..R {
        chunks[r] = F::chunk::<C>(wb[r], &rows[r]);
    }
    for t in 0..T {
        let y = _mm512_loadu_si512(ab[t].add(Q8K_QS + 64 * C).cast());
        for r in 0..R {
            let (q, s) = chunks[r];
            let pairs = if F::SIGNED {
                // no 512-bit `sign`: negate the activations where the quant is negative
                let y = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(q), _mm512_setzero_si512(), y);
                _mm512_maddubs_epi16(_mm512_abs_epi8(q), y)
            } else {
                _mm512_maddubs_epi16(q, y)
            };
            sum[r][t] = _mm512_dpwssd_epi32(sum[r][t], pairs, s);
        }
    }
}

/// One `R x T` tile on AVX2: `out[r][t]` = dot of weight row `r` with activation row `t`, each `nb` blocks.
///
/// # Safety
/// The CPU supports avx2, fma and f16c. (Slice lengths are checked here.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile_avx2<F: Avx2Block, const R: usize, const T: usize>(
    nb: usize,
    w: &[&[u8]; R],
    a: &[&[u8]; T],
) -> [[f32; T]; R] {
    let wp = starts(w, nb, F::TY.type_size());
    let ap = starts(a, nb, Q8K_BYTES);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let (mut wb, mut ab) = (wp, ap);
        for r in 0..R {
            // SAFETY: `starts` checked every row holds `nb` blocks, so block `b` of each is in bounds.
            wb[r] = wp[r].add(b * F::TY.type_size());
        }
        for t in 0..T {
            // SAFETY: as above, for the activation rows.
            ab[t] = ap[t].add(b * Q8K_BYTES);
        }
        prefetch_next::<R>(&wb, F::TY.type_size(), b + PREFETCH_BLOCKS < nb);
        let mut rows = [F::prepare(wb[0]); R];
        for r in 1..R {
            rows[r] = F::prepare(wb[r]);
        }
        let mut sum = [[_mm256_setzero_si256(); T]; R];
        for r in 0..R {
            for t in 0..T {
                sum[r][t] = F::start(&rows[r], ab[t]);
            }
        }
        // chunk numbers are const parameters so every shift, mask and index is a constant
        chunk_avx2::<F, 0, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 1, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 2, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 3, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 4, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 5, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 6, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx2::<F, 7, R, T>(&wb, &ab, &rows, &mut sum);
        for r in 0..R {
            for t in 0..T {
                acc[r][t] = F::finish(&rows[r], ab[t], sum[r][t], acc[r][t]);
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_f32x8(acc[r][t]);
        }
    }
    out
}

/// One `R x T` tile on AVX-512 VNNI (see [`tile_avx2`]).
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile_avx512<F: Avx512Block, const R: usize, const T: usize>(
    nb: usize,
    w: &[&[u8]; R],
    a: &[&[u8]; T],
) -> [[f32; T]; R] {
    let wp = starts(w, nb, F::TY.type_size());
    let ap = starts(a, nb, Q8K_BYTES);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for b in 0..nb {
        let (mut wb, mut ab) = (wp, ap);
        for r in 0..R {
            // SAFETY: `starts` checked every row holds `nb` blocks, so block `b` of each is in bounds.
            wb[r] = wp[r].add(b * F::TY.type_size());
        }
        for t in 0..T {
            // SAFETY: as above, for the activation rows.
            ab[t] = ap[t].add(b * Q8K_BYTES);
        }
        prefetch_next::<R>(&wb, F::TY.type_size(), b + PREFETCH_BLOCKS < nb);
        let mut rows = [F::prepare(wb[0]); R];
        for r in 1..R {
            rows[r] = F::prepare(wb[r]);
        }
        let mut sum = [[_mm512_setzero_si512(); T]; R];
        for r in 0..R {
            for t in 0..T {
                sum[r][t] = F::start(&rows[r], ab[t]);
            }
        }
        chunk_avx512::<F, 0, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx512::<F, 1, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx512::<F, 2, R, T>(&wb, &ab, &rows, &mut sum);
        chunk_avx512::<F, 3, R, T>(&wb, &ab, &rows, &mut sum);
        for r in 0..R {
            for t in 0..T {
                acc[r][t] = F::finish(&rows[r], ab[t], sum[r][t], acc[r][t]);
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_f32x16(acc[r][t]);
        }
    }
    out
}

/// A tile function of one format at one SIMD level.
pub(crate) trait TileKernel {
    const TY: GgmlType;
    /// # Safety: the CPU supports the kernel's SIMD level.
    unsafe fn tile<const R: usize, const T: usize>(nb: usize, w: &[&[u8]; R], a: &[&[u8]; T]) -> [[f32; T]; R];
}

/// Format `F`'s tiles on AVX2.
pub(crate) struct OnAvx2<F>(PhantomData<F>);
/// Format `F`'s tiles on AVX-512 VNNI.
pub(crate) struct OnAvx512<F>(PhantomData<F>);

impl<F: Avx2Block> TileKernel for OnAvx2<F> {
    const TY: GgmlType = F::TY;
    unsafe fn tile<const R: usize, const T: usize>(nb: usize, w: &[&[u8]; R], a: &[&[u8]; T]) -> [[f32; T]; R] {
        tile_avx2::<F, R, T>(nb, w, a)
    }
}

impl<F: Avx512Block> TileKernel for OnAvx512<F> {
    const TY: GgmlType = F::TY;
    unsafe fn tile<const R: usize, const T: usize>(nb: usize, w: &[&[u8]; R], a: &[&[u8]; T]) -> [[f32; T]; R] {
        tile_avx512::<F, R, T>(nb, w, a)
    }
}

/// Weight rows kept together while every token tile runs past them (16 rows are 16-30 KB of weights, so they
/// stay in L1/L2 while the activations stream).
const ROW_BLOCK: usize = 16;

/// `dot_rows` (see [`QuantFormat::dot_rows`](crate::QuantFormat::dot_rows)) from `K`'s tiles: full `R x T`
/// tiles, leftover rows as `1 x T` tiles, leftover tokens (all of them in decode) as `RD x 1` / `1 x 1` tiles. A
/// pair's result does not depend on which tile computed it.
///
/// # Safety
/// The CPU supports `K`'s SIMD level. (Lengths are checked: `w` holds `rows` rows of `n` elements, `acts`
/// `n_tokens` Q8_K rows, `out` `rows * n_tokens` results; panics otherwise.)
pub(crate) unsafe fn dot_rows<K: TileKernel, const R: usize, const T: usize, const RD: usize>(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let w_row = nb * K::TY.type_size();
    let a_row = nb * Q8K_BYTES;
    assert!(
        n.is_multiple_of(QK_K)
            && w.len() == rows * w_row
            && acts.len() == n_tokens * a_row
            && out.len() == rows * n_tokens,
        "{} dot_rows: lengths do not match {rows} rows x {n_tokens} tokens of {n}",
        K::TY
    );
    let w_at = |r: usize| &w[r * w_row..(r + 1) * w_row];
    let a_at = |t: usize| &acts[t * a_row..(t + 1) * a_row];
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let r_end = (r0 + ROW_BLOCK).min(rows);
        let mut t = 0;
        while t < n_tokens {
            let full_t = t + T <= n_tokens;
            let mut r = r0;
            while r < r_end {
                let full_r = r + if full_t { R } else { RD } <= r_end;
                // SAFETY (all four arms): the caller guarantees the CPU supports `K`'s level.
                match (full_r, full_t) {
                    (true, true) => {
                        let v = K::tile::<R, T>(
                            nb,
                            &std::array::from_fn(|i| w_at(r + i)),
                            &std::array::from_fn(|i| a_at(t + i)),
                        );
                        for (i, row) in v.iter().enumerate() {
                            let o = (r + i) * n_tokens + t;
                            out[o..o + T].copy_from_slice(row);
                        }
                    }
                    (true, false) => {
                        let v = K::tile::<RD, 1>(nb, &std::array::from_fn(|i| w_at(r + i)), &[a_at(t)]);
                        for (i, row) in v.iter().enumerate() {
                            out[(r + i) * n_tokens + t] = row[0];
                        }
                    }
                    (false, true) => {
                        let v = K::tile::<1, T>(nb, &[w_at(r)], &std::array::from_fn(|i| a_at(t + i)));
                        let o = r * n_tokens + t;
                        out[o..o + T].copy_from_slice(&v[0]);
                    }
                    (false, false) => {
                        out[r * n_tokens + t] = K::tile::<1, 1>(nb, &[w_at(r)], &[a_at(t)])[0][0];
                    }
                }
                r += match (full_r, full_t) {
                    (true, true) => R,
                    (true, false) => RD,
                    _ => 1,
                };
            }
            t += if full_t { T } else { 1 };
        }
    }
}
