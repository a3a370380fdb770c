//! Register-tiled dots of the 32-element block formats: Q8_0, Q5_0, Q4_0 against Q8_0 activations and Q4_1,
//! Q5_1 against Q8_1. One kernel serves `QuantFormat::dot_rows` (a slab of weight rows x all tokens of a batch)
//! and `vec_dot` (one row, one token), at two levels: AVX2 (`maddubs`/`madd`, one block per 256-bit vector)
//! and AVX-512 VNNI (`vpdpbusd` on 512-bit vectors holding two blocks: one convert and one fma per two blocks
//! and pair, where 256-bit vectors need that per block; Zen 5 runs 512-bit ops at full width).
//!
//! Why results never depend on the tiling: every (row, token) pair goes through the same operations in the
//! same order, whatever tile it lands in, remainders included. Per block (AVX2) or block pair (VNNI), i32 lanes
//! hold the exact integer dot of 4 consecutive elements each; they are converted to f32 and added with one
//! fma, scaled by `d_w * d_a` of their block, into f32 lanes; offset formats also add `m * s` to a scalar. At
//! the end, a fixed horizontal sum (plus that scalar). Tiles only share loads and per-block preparation
//! between pairs. The two levels sum the same exact integers in different lane orders, so they agree to float
//! rounding, not bit for bit.
//!
//! Integer lanes per level:
//! - VNNI multiplies unsigned by signed bytes, so weights become unsigned `q + bias` (Q8_0: `q ^ 0x80` is
//!   `q + 128`; Q4_0/Q5_0 store `q + 8` / `q + 16` already) and each lane starts at `-bias * (sum of its 4
//!   activations)`, computed once per token and block pair and shared by all rows of the tile.
//! - AVX2 `maddubs` sums pairs in saturating i16: Q8_0 moves the weight's sign onto the activation
//!   (`|w| <= 128`), Q4_0/Q5_0 subtract `maddubs(bias, a)` in i16 (all sums stay far inside i16), Q4_1/Q5_1
//!   are unsigned already.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{dot_u8_i8, hsum_f32x8};
use crate::q_legacy::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, QK};
use crate::SimdLevel;

/// The byte layout of a weight block format and its activation format, as the tiled kernels need it.
pub(crate) trait TiledBlock {
    /// Bytes of one weight block.
    const W_BYTES: usize;
    /// Bytes of one activation block: 34 for Q8_0, 36 for Q8_1.
    const A_BYTES: usize;
    /// Where the 32 activation quants start in their block.
    const A_QS: usize;
    /// The offset formats (Q4_1/Q5_1): each block adds `m * s` (`m` at byte 2 of the weight block, `s` at
    /// byte 2 of the Q8_1 block).
    const OFFSET: bool;
    /// What the unsigned quants handed to the integer dot exceed the stored values by (0 when unsigned).
    const BIAS: u8;
    /// Q8_0: the quants are signed bytes (AVX2 moves their sign onto the activations).
    const SIGNED: bool;
    /// The 32 quants of the block at `b`, unsigned (`q + BIAS`), or for `SIGNED` the raw signed bytes.
    ///
    /// # Safety
    /// The CPU supports avx2, fma and f16c; `b` points at `W_BYTES` readable bytes.
    unsafe fn quants_avx2(b: *const u8) -> __m256i;
    /// The quants of the blocks at `a` and `b` as unsigned bytes `q + BIAS` (Q8_0 included), in the block
    /// pair layout of [`vnni`]: dword lane `2k` holds elements `4k..4k + 4` of `a`, lane `2k + 1` those of `b`.
    ///
    /// # Safety
    /// The CPU supports avx2, fma, f16c, bmi2, avx512f, avx512bw, avx512vl and avx512vnni; `a` and `b` each
    /// point at `W_BYTES` readable bytes.
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i;
}

/// Kernel levels of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TileLevel {
    Avx2,
    /// AVX-512 F, BW, VL and VNNI.
    Vnni,
}

impl std::fmt::Display for TileLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TileLevel::Avx2 => "avx2+fma",
            TileLevel::Vnni => "avx512-vnni",
        })
    }
}

impl TileLevel {
    /// Every level this CPU can run (for tests: none is skipped that the CPU has).
    #[cfg(test)]
    pub(crate) fn supported() -> Vec<TileLevel> {
        let mut levels = Vec::new();
        if SimdLevel::supported().contains(&SimdLevel::Avx2) {
            levels.push(TileLevel::Avx2);
            if vnni_detected() {
                levels.push(TileLevel::Vnni);
            }
        }
        levels
    }

    /// The level dispatch uses: VNNI where the CPU has it and [`crate::simd_level`] allows AVX-512, AVX2 where
    /// that is allowed, else none (scalar). Detected once.
    pub(crate) fn best() -> Option<TileLevel> {
        static BEST: OnceLock<Option<TileLevel>> = OnceLock::new();
        *BEST.get_or_init(|| match crate::simd_level() {
            SimdLevel::Avx512 if vnni_detected() => Some(TileLevel::Vnni),
            SimdLevel::Avx512 | SimdLevel::Avx2 => Some(TileLevel::Avx2),
            SimdLevel::Scalar => None,
        })
    }
}

/// Whether the CPU has what the VNNI kernels are compiled for (on top of the AVX2 level's avx2, fma, f16c).
fn vnni_detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("bmi2")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// `dot_rows` at `level`: `out[r * n_tokens + t]` = dot of weight row `r` with activation row `t`.
///
/// Panics unless `n` is a whole number of blocks, `w` holds exactly `rows` rows and `acts` exactly `n_tokens`
/// rows of `n` elements, and `out` has `rows * n_tokens` entries (the caller contract of `dot_rows`).
///
/// # Safety
/// The CPU supports `level` (see [`TileLevel::supported`]).
pub(crate) unsafe fn dot_rows<F: TiledBlock>(
    level: TileLevel,
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    let nb = n / QK;
    let w_stride = nb * F::W_BYTES;
    let a_stride = nb * F::A_BYTES;
    assert!(
        n.is_multiple_of(QK)
            && Some(w.len()) == rows.checked_mul(w_stride)
            && Some(acts.len()) == n_tokens.checked_mul(a_stride)
            && Some(out.len()) == rows.checked_mul(n_tokens),
        "dot_rows of {n} elements: {rows} rows in {} bytes, {n_tokens} tokens in {} bytes, {} outputs",
        w.len(),
        acts.len(),
        out.len()
    );
    let slab = Slab { nb, w: w.as_ptr(), w_stride, rows, a: acts.as_ptr(), a_stride, n_tokens, out: out.as_mut_ptr() };
    // SAFETY: the lengths were checked above, which is all `Slab` asks; the caller vouches for the CPU.
    match level {
        TileLevel::Avx2 => avx2::dot_slab::<F>(&slab),
        TileLevel::Vnni => vnni::dot_slab::<F>(&slab),
    }
}

/// How far ahead of the tile decode prefetches weights: about 120 ns of streaming at 30 GB/s, past the
/// DRAM latency (measured on Zen 4: 8-16 KB were best; without prefetch the 178 MB output matrix reads at
/// about a fifth of the speed).
const PREFETCH_BYTES: usize = 12 * 1024;

/// A checked `dot_rows` call as raw pointers: `w` holds `rows` rows `w_stride` bytes apart, `a` holds
/// `n_tokens` rows `a_stride` bytes apart (each row `nb` blocks), `out` has `rows * n_tokens` entries.
struct Slab {
    nb: usize,
    w: *const u8,
    w_stride: usize,
    rows: usize,
    a: *const u8,
    a_stride: usize,
    n_tokens: usize,
    out: *mut f32,
}

/// Generates a level's tile kernel and slab driver from its `weights`, `acts` and `dot` (defined beside the
/// macro call with the same target features). Only the AVX2 level uses it now; VNNI has its own block-pair
/// kernel in [`vnni`].
macro_rules! tiled_kernels {
    ($features:literal, rows_prefill = $rp:literal, tokens_prefill = $tp:literal, rows_decode = $rd:literal) => {
        /// One tile: rows `r0..r0 + R` against tokens `t0..t0 + T`.
        ///
        /// # Safety
        /// The CPU supports this level; `s` is a checked slab with `r0 + R <= rows` and `t0 + T <= n_tokens`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile<F: TiledBlock, const R: usize, const T: usize>(s: &Slab, r0: usize, t0: usize) {
            const { assert!(R <= 8, "row scales are converted 8 at a time") };
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut acc_offset = [[0.0f32; T]; R];
            let w0 = s.w.add(r0 * s.w_stride);
            let a0 = s.a.add(t0 * s.a_stride);
            // Decode streams the weights from memory once, and the hardware prefetchers lose track of R
            // interleaved rows: prefetch the tile's R * w_stride contiguous bytes [`PREFETCH_BYTES`] ahead,
            // spread evenly over its blocks, one hint per cache line (a hint: past the slab's end is harmless).
            let span = R * s.w_stride;
            let (pf_step, pf_rem) = (span / s.nb.max(1), span % s.nb.max(1));
            let (mut pf_goal, mut pf_frac, mut pf_next) = (0usize, 0usize, 0usize);
            let pf_base = w0.wrapping_add(PREFETCH_BYTES);
            for b in 0..s.nb {
                if T == 1 {
                    pf_goal += pf_step;
                    pf_frac += pf_rem;
                    if pf_frac >= s.nb {
                        pf_goal += 1;
                        pf_frac -= s.nb;
                    }
                    while pf_next < pf_goal {
                        _mm_prefetch::<_MM_HINT_T0>(pf_base.wrapping_add(pf_next).cast());
                        pf_next += 64;
                    }
                }
                // With several tokens the R row scales go through one f16 conversion and one multiply per
                // token; in decode that costs more than it saves. Either way each product is the same f32
                // `d_w * d_a`.
                let mut dw_bits = _mm_setzero_si128();
                let mut dw = [0.0f32; R];
                let mut wq = [[_mm256_setzero_si256(); 2]; R];
                let mut m = [0.0f32; R];
                for r in 0..R {
                    let p = w0.add(r * s.w_stride + b * F::W_BYTES);
                    if T == 1 {
                        dw[r] = f16_to_f32(p);
                    } else {
                        dw_bits = insert_u16(dw_bits, r, p.cast::<u16>().read_unaligned());
                    }
                    wq[r] = weights::<F>(p);
                    if F::OFFSET {
                        m[r] = f16_to_f32(p.add(2));
                    }
                }
                let mut da = [0.0f32; T];
                let mut aq = [[_mm256_setzero_si256(); 2]; T];
                let mut sa = [0.0f32; T];
                for t in 0..T {
                    let p = a0.add(t * s.a_stride + b * F::A_BYTES);
                    da[t] = f16_to_f32(p);
                    aq[t] = acts::<F>(p.add(F::A_QS));
                    if F::OFFSET {
                        sa[t] = f16_to_f32(p.add(2));
                    }
                }
                let mut d_wa = [[0.0f32; 8]; T];
                if T > 1 {
                    let dw = _mm256_cvtph_ps(dw_bits);
                    for t in 0..T {
                        _mm256_storeu_ps(d_wa[t].as_mut_ptr(), _mm256_mul_ps(dw, _mm256_set1_ps(da[t])));
                    }
                }
                for r in 0..R {
                    for t in 0..T {
                        let lanes = _mm256_cvtepi32_ps(dot::<F>(wq[r], aq[t]));
                        let d = _mm256_set1_ps(if T == 1 { dw[r] * da[t] } else { d_wa[t][r] });
                        acc[r][t] = _mm256_fmadd_ps(d, lanes, acc[r][t]);
                        if F::OFFSET {
                            acc_offset[r][t] += m[r] * sa[t];
                        }
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    let mut v = hsum_f32x8(acc[r][t]);
                    if F::OFFSET {
                        v += acc_offset[r][t];
                    }
                    *s.out.add((r0 + r) * s.n_tokens + t0 + t) = v;
                }
            }
        }

        /// Covers rows `0..rows` x tokens `0..n_tokens` with R x T tiles, then the leftover tokens with R x 1
        /// and the leftover rows with 1 x T and 1 x 1.
        ///
        /// # Safety
        /// As [`tile`].
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn cover<F: TiledBlock, const R: usize, const T: usize>(s: &Slab) {
            let mut r = 0;
            while r + R <= s.rows {
                let mut t = 0;
                while t + T <= s.n_tokens {
                    tile::<F, R, T>(s, r, t);
                    t += T;
                }
                while t < s.n_tokens {
                    tile::<F, R, 1>(s, r, t);
                    t += 1;
                }
                r += R;
            }
            while r < s.rows {
                let mut t = 0;
                while t + T <= s.n_tokens {
                    tile::<F, 1, T>(s, r, t);
                    t += T;
                }
                while t < s.n_tokens {
                    tile::<F, 1, 1>(s, r, t);
                    t += 1;
                }
                r += 1;
            }
        }

        /// # Safety
        /// The CPU supports this level; `s` is checked (see [`Slab`]).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_slab<F: TiledBlock>(s: &Slab) {
            if s.n_tokens < $tp {
                // decode and small batches: tall tiles, several rows share each activation load
                cover::<F, $rd, 1>(s);
            } else {
                cover::<F, $rp, $tp>(s);
            }
        }

        /// `v` with 16-bit lane `i` (< 8) set to `x`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn insert_u16(v: __m128i, i: usize, x: u16) -> __m128i {
            let x = x as i32;
            match i {
                0 => _mm_insert_epi16::<0>(v, x),
                1 => _mm_insert_epi16::<1>(v, x),
                2 => _mm_insert_epi16::<2>(v, x),
                3 => _mm_insert_epi16::<3>(v, x),
                4 => _mm_insert_epi16::<4>(v, x),
                5 => _mm_insert_epi16::<5>(v, x),
                6 => _mm_insert_epi16::<6>(v, x),
                _ => _mm_insert_epi16::<7>(v, x),
            }
        }

        /// The little-endian f16 at `p`, converted with F16C.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16_to_f32(p: *const u8) -> f32 {
            let bits = p.cast::<u16>().read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }
    };
}

mod avx2 {
    use super::*;

    tiled_kernels!("avx2,fma,f16c", rows_prefill = 3, tokens_prefill = 4, rows_decode = 4);

    /// Q8_0: `[|w|, w]` (the sign source); else `[q + BIAS, unused]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weights<F: TiledBlock>(b: *const u8) -> [__m256i; 2] {
        let q = F::quants_avx2(b);
        if F::SIGNED {
            [_mm256_sign_epi8(q, q), q]
        } else {
            [q, q]
        }
    }

    /// `[a, maddubs(BIAS, a)]` (the second only for the biased unsigned formats).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn acts<F: TiledBlock>(qs: *const u8) -> [__m256i; 2] {
        let a = _mm256_loadu_si256(qs.cast());
        let bias = if F::BIAS != 0 && !F::SIGNED {
            _mm256_maddubs_epi16(_mm256_set1_epi8(F::BIAS as i8), a)
        } else {
            _mm256_setzero_si256()
        };
        [a, bias]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<F: TiledBlock>(w: [__m256i; 2], a: [__m256i; 2]) -> __m256i {
        if F::SIGNED {
            dot_u8_i8(w[0], _mm256_sign_epi8(a[0], w[1]))
        } else if F::BIAS != 0 {
            let pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(w[0], a[0]), a[1]);
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        } else {
            dot_u8_i8(w[0], a[0])
        }
    }
}

/// AVX-512 VNNI on 512-bit vectors, two blocks per instruction.
///
/// A "block pair" vector holds blocks `2i` (A) and `2i + 1` (B) interleaved by 4-byte groups: dword lane `2k`
/// has elements `4k..4k + 4` of A, lane `2k + 1` those of B (weights and activations alike, so `vpdpbusd`
/// multiplies matching elements and each i32 lane stays inside one block). The scale of a (row, token) pair is
/// then the 64-bit pattern `[d_w(A) * d_a(A), d_w(B) * d_a(B)]` repeated: one broadcast load, one convert and
/// one fma per two blocks. A trailing odd block is a pair whose B activations, start and scales are zero.
mod vnni {
    use super::*;

    /// Rows x tokens of a prefill tile: 16 accumulators + 4 weight, 4 activation and 4 start vectors fill the
    /// 32 zmm registers.
    const ROWS_PREFILL: usize = 4;
    const TOKENS_PREFILL: usize = 4;
    /// Rows of a decode (one token) tile.
    const ROWS_DECODE: usize = 8;

    /// One tile: rows `r0..r0 + R` against tokens `t0..t0 + T`.
    ///
    /// # Safety
    /// The CPU supports the VNNI level; `s` is a checked slab with `r0 + R <= rows` and `t0 + T <= n_tokens`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<F: TiledBlock, const R: usize, const T: usize>(s: &Slab, prep: &Prepared, r0: usize, t0: usize) {
        const { assert!(R <= 8, "the scales of 8 rows fill one vector") };
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut acc_offset = [[0.0f32; T]; R];
        let w0 = s.w.add(r0 * s.w_stride);
        let a0 = s.a.add(t0 * s.a_stride);
        let pairs = s.nb.div_ceil(2);
        // Decode streams the weights from memory once, and the hardware prefetchers lose track of R
        // interleaved rows: prefetch the tile's R * w_stride contiguous bytes [`PREFETCH_BYTES`] ahead,
        // spread evenly over its block pairs, one hint per cache line (a hint: past the slab's end is harmless).
        let span = R * s.w_stride;
        let (pf_step, pf_rem) = (span / pairs.max(1), span % pairs.max(1));
        let (mut pf_goal, mut pf_frac, mut pf_next) = (0usize, 0usize, 0usize);
        let pf_base = w0.wrapping_add(PREFETCH_BYTES);
        for i in 0..pairs {
            if T == 1 {
                pf_goal += pf_step;
                pf_frac += pf_rem;
                if pf_frac >= pairs {
                    pf_goal += 1;
                    pf_frac -= pairs;
                }
                while pf_next < pf_goal {
                    _mm_prefetch::<_MM_HINT_T0>(pf_base.wrapping_add(pf_next).cast());
                    pf_next += 64;
                }
            }
            let pair_prep = prep.pair(i, t0);
            if 2 * i + 1 < s.nb {
                block_pair::<F, R, T, true>(s, w0, a0, &pair_prep, 2 * i, &mut acc, &mut acc_offset);
            } else {
                block_pair::<F, R, T, false>(s, w0, a0, &pair_prep, 2 * i, &mut acc, &mut acc_offset);
            }
        }
        for r in 0..R {
            for t in 0..T {
                let v = acc[r][t];
                let lo = _mm512_castps512_ps256(v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                let mut v = hsum_f32x8(_mm256_add_ps(lo, hi));
                if F::OFFSET {
                    v += acc_offset[r][t];
                }
                *s.out.add((r0 + r) * s.n_tokens + t0 + t) = v;
            }
        }
    }

    /// Adds blocks `ba` and `ba + 1` (only `ba` unless `HAS_B`) of rows `w0..` x tokens `a0..` into the tile's
    /// accumulators. `prepared`, unless null, holds the pair's weights as [`prepare_band`] left them.
    ///
    /// # Safety
    /// As [`tile`]; `w0` and `a0` are the tile's first row and token, `ba + HAS_B < nb`; `prepared` is null or
    /// points at the `R + 1` vectors [`prepare_band`] wrote for this pair of these rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn block_pair<F: TiledBlock, const R: usize, const T: usize, const HAS_B: bool>(
        s: &Slab,
        w0: *const u8,
        a0: *const u8,
        prep: &Prepared,
        ba: usize,
        acc: &mut [[__m512; T]; R],
        acc_offset: &mut [[f32; T]; R],
    ) {
        if T == 1 {
            decode_block_pair::<F, R, HAS_B, T>(s, w0, a0, ba, acc, acc_offset);
            return;
        }
        // Per row: the pair's unsigned quants, and its two f16 scales (B's zero when there is no B).
        let mut wq = [_mm512_setzero_si512(); R];
        let mut m = [[0.0f32; 2]; R];
        let dw = if prep.band.is_null() || F::OFFSET {
            // the offset formats are never prepared (see `cover`)
            let mut dw_bits = [0i32; 8];
            for r in 0..R {
                let pa = w0.add(r * s.w_stride + ba * F::W_BYTES);
                // without a B block, A's quants stand in for B's: they meet zero activations
                let pb = if HAS_B { pa.add(F::W_BYTES) } else { pa };
                wq[r] = F::quants_pair_vnni(pa, pb);
                dw_bits[r] = f16_pair_bits(pa, HAS_B.then_some(pb));
                if F::OFFSET {
                    m[r] = [f16_to_f32(pa.add(2)), if HAS_B { f16_to_f32(pb.add(2)) } else { 0.0 }];
                }
            }
            _mm512_cvtph_ps(_mm256_setr_epi32(
                dw_bits[0], dw_bits[1], dw_bits[2], dw_bits[3], dw_bits[4], dw_bits[5], dw_bits[6], dw_bits[7],
            ))
        } else {
            for (r, q) in wq.iter_mut().enumerate() {
                *q = prep.band.add(r).read();
            }
            _mm512_castsi512_ps(prep.band.add(R).read())
        };
        // Per token: the pair's activations, each lane's start value, and `d_w * d_a` of every row
        // (`prod[t][2r..2r + 2]`, read back as one 64-bit broadcast per row).
        let mut aq = [_mm512_setzero_si512(); T];
        let mut start = [_mm512_setzero_si512(); T];
        let mut prod = [[0.0f64; 8]; T];
        let mut sa = [[0.0f32; 2]; T];
        for t in 0..T {
            let pa = a0.add(t * s.a_stride + ba * F::A_BYTES);
            let pb = HAS_B.then(|| pa.add(F::A_BYTES));
            let da = if F::OFFSET || prep.acts.is_null() {
                (aq[t], start[t]) = acts_pair::<F>(pa.add(F::A_QS), pb.map(|p| p.add(F::A_QS)));
                let da = _mm_cvtph_ps(_mm_cvtsi32_si128(f16_pair_bits(pa, pb)));
                _mm512_broadcastsd_pd(_mm_castps_pd(da))
            } else {
                let q = prep.acts.add(2 * t * prep.pairs);
                (aq[t], start[t]) = (q.read(), q.add(1).read());
                _mm512_castsi512_pd(_mm512_set1_epi64(prep.acts_d.add(t * prep.pairs).read()))
            };
            _mm512_storeu_pd(prod[t].as_mut_ptr(), _mm512_castps_pd(_mm512_mul_ps(dw, _mm512_castpd_ps(da))));
            if F::OFFSET {
                sa[t] = [f16_to_f32(pa.add(2)), pb.map_or(0.0, |p| f16_to_f32(p.add(2)))];
            }
        }
        // Left to itself the compiler keeps `prod` in registers and pays a shuffle per pair; hidden behind
        // `black_box`, each pair's scale is one broadcast load instead (load ports are idle here).
        let prod = std::hint::black_box(&prod);
        for r in 0..R {
            for t in 0..T {
                let lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start[t], wq[r], aq[t]));
                let d = _mm512_castpd_ps(_mm512_set1_pd(prod[t][r]));
                acc[r][t] = _mm512_fmadd_ps(d, lanes, acc[r][t]);
                if F::OFFSET {
                    acc_offset[r][t] += m[r][0] * sa[t][0];
                    if HAS_B {
                        acc_offset[r][t] += m[r][1] * sa[t][1];
                    }
                }
            }
        }
    }

    /// The unsigned quants of blocks `ba` and `ba + 1` (A's again without a B: they meet zero activations) of
    /// rows `w0..w0 + R` into `wq`; returns their f16 scales as f32, lanes `2r` / `2r + 1` for row `r` (B's
    /// zero without a B).
    ///
    /// # Safety
    /// As [`block_pair`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn weights_pair<F: TiledBlock, const R: usize, const HAS_B: bool>(
        s: &Slab,
        w0: *const u8,
        ba: usize,
        wq: &mut [__m512i; R],
    ) -> __m512 {
        let mut dw_bits = [0i32; 8];
        for r in 0..R {
            let pa = w0.add(r * s.w_stride + ba * F::W_BYTES);
            let pb = if HAS_B { pa.add(F::W_BYTES) } else { pa };
            wq[r] = F::quants_pair_vnni(pa, pb);
            dw_bits[r] = f16_pair_bits(pa, HAS_B.then_some(pb));
        }
        _mm512_cvtph_ps(_mm256_setr_epi32(
            dw_bits[0], dw_bits[1], dw_bits[2], dw_bits[3], dw_bits[4], dw_bits[5], dw_bits[6], dw_bits[7],
        ))
    }

    /// Unpacks rows `w0..w0 + R` once for all the tiles of a prefill band: per block pair `i`, vectors
    /// `band[i * (R + 1) + r]` hold row r's quants and `band[i * (R + 1) + R]` the f32 scales, exactly what
    /// [`weights_pair`] gives the tile (so the bits do not depend on which path a tile takes).
    ///
    /// # Safety
    /// As [`tile`]; `w0` is a row of the slab with `R` rows from it; `band` has `nb.div_ceil(2) * (R + 1)`
    /// writable vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prepare_band<F: TiledBlock, const R: usize>(s: &Slab, w0: *const u8, band: *mut __m512i) {
        let mut wq = [_mm512_setzero_si512(); R];
        for i in 0..s.nb.div_ceil(2) {
            let dw = if 2 * i + 1 < s.nb {
                weights_pair::<F, R, true>(s, w0, 2 * i, &mut wq)
            } else {
                weights_pair::<F, R, false>(s, w0, 2 * i, &mut wq)
            };
            let out = band.add(i * (R + 1));
            for (r, q) in wq.iter().enumerate() {
                out.add(r).write(*q);
            }
            out.add(R).write(_mm512_castps_si512(dw));
        }
    }

    /// Prepares tokens `t0..t0 + tokens` once for all the bands of a prefill slab: for token `t` and block pair
    /// `i`, `acts[2 * (t * pairs + i)]` holds the pair's activations, `+ 1` the lanes' start values, and
    /// `acts_d[t * pairs + i]` the bits of the two f32 scales, exactly what [`acts_pair`] and the f16 conversion give the
    /// tile.
    ///
    /// # Safety
    /// As [`tile`] with `t0 + tokens <= n_tokens`; `acts` / `acts_d` have `2 * tokens * pairs` / `tokens *
    /// pairs` writable entries.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prepare_acts<F: TiledBlock>(s: &Slab, t0: usize, tokens: usize, acts: *mut __m512i, acts_d: *mut i64) {
        let pairs = s.nb.div_ceil(2);
        for t in 0..tokens {
            for i in 0..pairs {
                let pa = s.a.add((t0 + t) * s.a_stride + 2 * i * F::A_BYTES);
                let pb = (2 * i + 1 < s.nb).then(|| pa.add(F::A_BYTES));
                let (q, start) = acts_pair::<F>(pa.add(F::A_QS), pb.map(|p| p.add(F::A_QS)));
                let k = t * pairs + i;
                acts.add(2 * k).write(q);
                acts.add(2 * k + 1).write(start);
                let da = _mm_cvtph_ps(_mm_cvtsi32_si128(f16_pair_bits(pa, pb)));
                acts_d.add(k).write(_mm_cvtsi128_si64(_mm_castps_si128(da)));
            }
        }
    }

    /// [`block_pair`] for one token (decode): each row's scale pair is converted and multiplied on its own in
    /// a 128-bit vector and broadcast, rather than gathered into an 8-row vector (scalar inserts) and stored
    /// for broadcast loads; with one token nothing is shared that would pay for that. The products are the
    /// same f32 `d_w * d_a`, so the bits equal those of the many-token tiles.
    ///
    /// # Safety
    /// As [`block_pair`] with `T == 1`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn decode_block_pair<F: TiledBlock, const R: usize, const HAS_B: bool, const T: usize>(
        s: &Slab,
        w0: *const u8,
        a0: *const u8,
        ba: usize,
        acc: &mut [[__m512; T]; R],
        acc_offset: &mut [[f32; T]; R],
    ) {
        let pa = a0.add(ba * F::A_BYTES);
        let pb = HAS_B.then(|| pa.add(F::A_BYTES));
        let (aq, start) = acts_pair::<F>(pa.add(F::A_QS), pb.map(|p| p.add(F::A_QS)));
        let da = _mm_cvtph_ps(_mm_cvtsi32_si128(f16_pair_bits(pa, pb)));
        let sa = if F::OFFSET { [f16_to_f32(pa.add(2)), pb.map_or(0.0, |p| f16_to_f32(p.add(2)))] } else { [0.0; 2] };
        for r in 0..R {
            let pa = w0.add(r * s.w_stride + ba * F::W_BYTES);
            // without a B block, A's quants stand in for B's: they meet zero activations
            let pb = if HAS_B { pa.add(F::W_BYTES) } else { pa };
            let wq = F::quants_pair_vnni(pa, pb);
            let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(f16_pair_bits(pa, HAS_B.then_some(pb))));
            let d = _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_castps_pd(_mm_mul_ps(dw, da))));
            let lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, wq, aq));
            acc[r][0] = _mm512_fmadd_ps(d, lanes, acc[r][0]);
            if F::OFFSET {
                acc_offset[r][0] += f16_to_f32(pa.add(2)) * sa[0];
                if HAS_B {
                    acc_offset[r][0] += f16_to_f32(pb.add(2)) * sa[1];
                }
            }
        }
    }

    /// Covers rows `0..rows` x tokens `0..n_tokens` with R x T tiles, then the leftover tokens with R x 1
    /// and the leftover rows with 1 x T and 1 x 1.
    ///
    /// # Safety
    /// As [`tile`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn cover<F: TiledBlock, const R: usize, const T: usize>(s: &Slab, buffers: Option<&mut PrepBuffers>) {
        let none = Prepared::NONE;
        let full_tokens = s.n_tokens - s.n_tokens % T;
        // The offset formats are left unprepared: measured, preparing made Q4_1 / Q5_1 slower (their scalar
        // `m * s` terms dominate).
        if let (Some(buf), true) = (buffers, !F::OFFSET && T > 1 && s.rows >= R && full_tokens > 0) {
            // Token chunks keep the prepared activations in L2; each chunk re-prepares the row bands (cheap next
            // to the chunk's tiles).
            let pairs = s.nb.div_ceil(2);
            let chunk = (PREP_TOKENS - PREP_TOKENS % T).max(T);
            buf.band.clear();
            buf.band.resize(pairs * (R + 1), _mm512_setzero_si512());
            buf.acts.clear();
            buf.acts.resize(2 * chunk.min(full_tokens) * pairs, _mm512_setzero_si512());
            buf.acts_d.clear();
            buf.acts_d.resize(chunk.min(full_tokens) * pairs, 0);
            let mut c0 = 0;
            while c0 < full_tokens {
                let len = chunk.min(full_tokens - c0);
                prepare_acts::<F>(s, c0, len, buf.acts.as_mut_ptr(), buf.acts_d.as_mut_ptr());
                let mut r = 0;
                while r + R <= s.rows {
                    prepare_band::<F, R>(s, s.w.add(r * s.w_stride), buf.band.as_mut_ptr());
                    let prep = Prepared {
                        band: buf.band.as_ptr(),
                        acts: buf.acts.as_ptr(),
                        acts_d: buf.acts_d.as_ptr(),
                        pairs,
                        t_base: c0,
                        band_stride: R + 1,
                    };
                    let mut t = c0;
                    while t < c0 + len {
                        tile::<F, R, T>(s, &prep, r, t);
                        t += T;
                    }
                    r += R;
                }
                c0 += len;
            }
            let mut r = 0;
            while r + R <= s.rows {
                for t in full_tokens..s.n_tokens {
                    tile::<F, R, 1>(s, &none, r, t);
                }
                r += R;
            }
            cover_rows::<F, T>(s, r);
            return;
        }
        let mut r = 0;
        while r + R <= s.rows {
            let mut t = 0;
            while t + T <= s.n_tokens {
                tile::<F, R, T>(s, &none, r, t);
                t += T;
            }
            while t < s.n_tokens {
                tile::<F, R, 1>(s, &none, r, t);
                t += 1;
            }
            r += R;
        }
        cover_rows::<F, T>(s, r);
    }

    /// Rows `r..rows` one at a time: 1 x T tiles, then 1 x 1.
    ///
    /// # Safety
    /// As [`tile`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn cover_rows<F: TiledBlock, const T: usize>(s: &Slab, mut r: usize) {
        let none = Prepared::NONE;
        while r < s.rows {
            let mut t = 0;
            while t + T <= s.n_tokens {
                tile::<F, 1, T>(s, &none, r, t);
                t += T;
            }
            while t < s.n_tokens {
                tile::<F, 1, 1>(s, &none, r, t);
                t += 1;
            }
            r += 1;
        }
    }

    /// Tokens whose prepared activations one prefill chunk holds: 64 x 136 bytes per block pair, 280 KB for
    /// 2048-element rows.
    const PREP_TOKENS: usize = 64;

    /// The thread's reusable buffers for prepared weights and activations (see [`Prepared`]).
    struct PrepBuffers {
        band: Vec<__m512i>,
        acts: Vec<__m512i>,
        acts_d: Vec<i64>,
    }

    /// Where a tile finds its weights and activations already unpacked ([`prepare_band`], [`prepare_acts`]);
    /// null pointers: unpack them from the slab.
    struct Prepared {
        band: *const __m512i,
        acts: *const __m512i,
        acts_d: *const i64,
        pairs: usize,
        /// The token that `acts` starts at.
        t_base: usize,
        band_stride: usize,
    }

    impl Prepared {
        const NONE: Prepared = Prepared {
            band: std::ptr::null(),
            acts: std::ptr::null(),
            acts_d: std::ptr::null(),
            pairs: 0,
            t_base: 0,
            band_stride: 0,
        };

        /// This at block pair `i` and token `t0` (null stays null).
        ///
        /// # Safety
        /// Non-null pointers were prepared for pair `i` and token `t0`.
        #[inline(always)]
        unsafe fn pair(&self, i: usize, t0: usize) -> Prepared {
            if self.band.is_null() {
                return Prepared::NONE;
            }
            let k = (t0 - self.t_base) * self.pairs + i;
            let acts_null = self.acts.is_null();
            Prepared {
                band: self.band.add(i * self.band_stride),
                acts: if acts_null { self.acts } else { self.acts.add(2 * k) },
                acts_d: if acts_null { self.acts_d } else { self.acts_d.add(k) },
                ..*self
            }
        }
    }

    /// # Safety
    /// The CPU supports the VNNI level; `s` is checked (see [`Slab`]).
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_slab<F: TiledBlock>(s: &Slab) {
        if s.n_tokens < TOKENS_PREFILL {
            // decode and small batches: tall tiles, several rows share each activation load
            cover::<F, ROWS_DECODE, 1>(s, None);
        } else {
            // the buffers are reused by every slab this thread runs (no allocation once they are large enough)
            thread_local! {
                static BUFFERS: std::cell::RefCell<PrepBuffers> = const {
                    std::cell::RefCell::new(PrepBuffers { band: Vec::new(), acts: Vec::new(), acts_d: Vec::new() })
                };
            }
            BUFFERS.with_borrow_mut(|buf| {
                // SAFETY: as this function's own contract; `cover` sizes the buffers itself.
                unsafe { cover::<F, ROWS_PREFILL, TOKENS_PREFILL>(s, Some(buf)) }
            });
        }
    }

    /// The pair's activations (B's zero when absent) and each lane's start value `-BIAS * (sum of its 4
    /// activations)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn acts_pair<F: TiledBlock>(qa: *const u8, qb: Option<*const u8>) -> (__m512i, __m512i) {
        let b = match qb {
            Some(p) => _mm256_loadu_si256(p.cast()),
            None => _mm256_setzero_si256(),
        };
        let a = interleave_dwords(_mm256_loadu_si256(qa.cast()), b);
        let zero = _mm512_setzero_si512();
        let start = if F::BIAS != 0 {
            _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(F::BIAS as i8), a))
        } else {
            zero
        };
        (a, start)
    }

    /// The f16 at `a` in the low 16 bits, the one at `b` (or 0) in the high 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn f16_pair_bits(a: *const u8, b: Option<*const u8>) -> i32 {
        let lo = a.cast::<u16>().read_unaligned() as u32;
        let hi = b.map_or(0, |p| p.cast::<u16>().read_unaligned() as u32);
        (lo | hi << 16) as i32
    }

    /// The little-endian f16 at `p`, converted with F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn f16_to_f32(p: *const u8) -> f32 {
        let bits = p.cast::<u16>().read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// Dword `k` of `a` to lane `2k`, dword `k` of `b` to lane `2k + 1` (the block pair layout of [`vnni`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn interleave_dwords(a: __m256i, b: __m256i) -> __m512i {
    let idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    _mm512_permutex2var_epi32(_mm512_castsi256_si512(a), idx, _mm512_castsi256_si512(b))
}

/// The nibbles of the 16 bytes at `a` and at `b` in the block pair layout: element j of a block is the low
/// nibble of its byte j, element j + 16 the high one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn nibbles_pair(a: *const u8, b: *const u8) -> __m512i {
    let both =
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm_loadu_si128(a.cast())), _mm_loadu_si128(b.cast()));
    // lanes 2k / 2k + 1 take dword k % 4 of A / B; lanes 8.. (elements 16..) shift their high nibbles down
    let idx = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 0, 4, 1, 5, 2, 6, 3, 7);
    let x = _mm512_permutexvar_epi32(idx, _mm512_castsi256_si512(both));
    let x = _mm512_mask_srli_epi32::<4>(x, 0xff00, x);
    _mm512_and_si512(x, _mm512_set1_epi8(0x0f))
}

/// `nib | 0x10` in the bytes of the pair layout whose bit is set in the `qh` words at `a` and `b`: element j
/// of A sits in byte `8 * (j / 4) + j % 4`, of B 4 bytes further, so `pdep` spreads each word into the mask.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn with_high_bits_pair(nib: __m512i, a: *const u8, b: *const u8) -> __m512i {
    let qa = a.cast::<u32>().read_unaligned() as u64;
    let qb = b.cast::<u32>().read_unaligned() as u64;
    let mask = _pdep_u64(qa, 0x0f0f_0f0f_0f0f_0f0f) | _pdep_u64(qb, 0xf0f0_f0f0_f0f0_f0f0);
    _mm512_mask_add_epi8(nib, mask, nib, _mm512_set1_epi8(0x10))
}

/// The 32 nibbles of the 16 bytes at `p` in element order: element j is the low nibble of byte j, j + 16 the
/// high one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
    let hi = _mm256_srli_epi16(x, 4);
    _mm256_and_si256(_mm256_blend_epi32(x, hi, 0b1111_0000), _mm256_set1_epi8(0x0f))
}

/// 0x10 in byte j where bit j of the little-endian u32 at `p` is set (bit 4 of the 5-bit quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits_avx2(p: *const u8) -> __m256i {
    let bits = p.cast::<u32>().read_unaligned();
    // byte j takes byte j / 8 of `bits`, then keeps only bit j % 8
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

impl TiledBlock for Q8_0 {
    const W_BYTES: usize = 34;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: bool = false;
    const BIAS: u8 = 128;
    const SIGNED: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(b: *const u8) -> __m256i {
        _mm256_loadu_si256(b.add(2).cast())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i {
        let q = interleave_dwords(_mm256_loadu_si256(a.add(2).cast()), _mm256_loadu_si256(b.add(2).cast()));
        _mm512_xor_si512(q, _mm512_set1_epi8(0x80u8 as i8))
    }
}

impl TiledBlock for Q4_0 {
    const W_BYTES: usize = 18;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: bool = false;
    const BIAS: u8 = 8;
    const SIGNED: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(b: *const u8) -> __m256i {
        nibbles(b.add(2))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i {
        nibbles_pair(a.add(2), b.add(2))
    }
}

impl TiledBlock for Q5_0 {
    const W_BYTES: usize = 22;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: bool = false;
    const BIAS: u8 = 16;
    const SIGNED: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(b: *const u8) -> __m256i {
        _mm256_or_si256(nibbles(b.add(6)), high_bits_avx2(b.add(2)))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i {
        with_high_bits_pair(nibbles_pair(a.add(6), b.add(6)), a.add(2), b.add(2))
    }
}

impl TiledBlock for Q4_1 {
    const W_BYTES: usize = 20;
    const A_BYTES: usize = 36;
    const A_QS: usize = 4;
    const OFFSET: bool = true;
    const BIAS: u8 = 0;
    const SIGNED: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(b: *const u8) -> __m256i {
        nibbles(b.add(4))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i {
        nibbles_pair(a.add(4), b.add(4))
    }
}

impl TiledBlock for Q5_1 {
    const W_BYTES: usize = 24;
    const A_BYTES: usize = 36;
    const A_QS: usize = 4;
    const OFFSET: bool = true;
    const BIAS: u8 = 0;
    const SIGNED: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(b: *const u8) -> __m256i {
        _mm256_or_si256(nibbles(b.add(8)), high_bits_avx2(b.add(4)))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i {
        with_high_bits_pair(nibbles_pair(a.add(8), b.add(8)), a.add(4), b.add(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q_legacy::{dot_scalar, LegacyCodec};
    use crate::test_data::{assert_close, f16_bytes, TestRng};
    use crate::{quant_format, GgmlType};

    /// Every level this CPU has, announced; a level it lacks is reported, never silently dropped.
    fn levels() -> Vec<TileLevel> {
        let levels = TileLevel::supported();
        if !levels.contains(&TileLevel::Avx2) {
            println!("avx2+fma: not supported by this CPU, only the scalar kernels run");
        }
        if !levels.contains(&TileLevel::Vnni) {
            println!("avx512-vnni: not supported by this CPU");
        }
        println!("tiled levels checked: {levels:?} (dispatch uses {:?})", TileLevel::best());
        levels
    }

    /// `dot_rows` at a level, as a plain function.
    type TiledDotRows = unsafe fn(TileLevel, usize, &[u8], usize, &[u8], usize, &mut [f32]);

    /// A format under test: its codec-specific pieces as plain functions.
    struct Case {
        ty: GgmlType,
        act: GgmlType,
        /// `dot_rows` at a level.
        tiled: TiledDotRows,
        scalar: fn(&[u8], &[u8]) -> f32,
    }

    fn case<C: LegacyCodec + TiledBlock>() -> Case {
        Case { ty: C::TY, act: C::ACT, tiled: dot_rows::<C>, scalar: dot_scalar::<C> }
    }

    fn cases() -> Vec<Case> {
        vec![
            case::<Q8_0>(),
            case::<Q5_0>(),
            case::<Q4_0>(),
            case::<Q4_1>(),
            case::<Q5_1>(),
            case::<crate::iq4::IQ4_NL>(),
        ]
    }

    /// `rows` weight rows of `n` elements: either quantized from model-shaped data, or raw random bytes (every
    /// bit pattern, Q8_0's -128 included) with the scales (and offsets) overwritten by `scale`.
    fn weights(
        rng: &mut TestRng,
        ty: GgmlType,
        rows: usize,
        n: usize,
        raw: bool,
        scale: &dyn Fn(&mut TestRng) -> f32,
    ) -> Vec<u8> {
        let f = quant_format(ty).unwrap();
        let rb = ty.row_bytes(n).unwrap();
        let mut w = vec![0u8; rows * rb];
        if raw {
            w = rng.bytes(rows * rb);
            let halves = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) { 2 } else { 1 };
            for b in w.chunks_exact_mut(ty.type_size()) {
                b[..2].copy_from_slice(&f16_bytes(scale(rng)));
                if halves == 2 {
                    let m = if scale(rng) == 1.0 { 0.0 } else { rng.uniform() };
                    b[2..4].copy_from_slice(&f16_bytes(m));
                }
            }
        } else {
            for row in w.chunks_exact_mut(rb) {
                f.quantize_row(&rng.row(n), row).unwrap();
            }
        }
        w
    }

    /// `tokens` activation rows quantized from model-shaped data, or with unit scale (and s = 0) and random
    /// quants in -127..=127 when `unit`.
    fn activations(rng: &mut TestRng, act: GgmlType, tokens: usize, n: usize, unit: bool) -> Vec<u8> {
        let rb = act.row_bytes(n).unwrap();
        let mut a = vec![0u8; tokens * rb];
        for row in a.chunks_exact_mut(rb) {
            if unit {
                for b in row.chunks_exact_mut(act.type_size()) {
                    b[..2].copy_from_slice(&f16_bytes(1.0));
                    let qs = if act == GgmlType::Q8_1 {
                        b[2..4].copy_from_slice(&f16_bytes(0.0));
                        4
                    } else {
                        2
                    };
                    for q in &mut b[qs..] {
                        *q = ((rng.next_u64() % 255) as i32 - 127) as i8 as u8;
                    }
                }
            } else {
                quant_format(act).unwrap().quantize_row(&rng.row(n), row).unwrap();
            }
        }
        a
    }

    /// The scalar twin for every pair, `out[r * tokens + t]`.
    fn scalar_all(c: &Case, n: usize, w: &[u8], rows: usize, a: &[u8], tokens: usize) -> Vec<f32> {
        let (wb, ab) = (c.ty.row_bytes(n).unwrap(), c.act.row_bytes(n).unwrap());
        let mut out = Vec::new();
        for r in 0..rows {
            for t in 0..tokens {
                out.push((c.scalar)(&w[r * wb..(r + 1) * wb], &a[t * ab..(t + 1) * ab]));
            }
        }
        out
    }

    fn tiled_all(c: &Case, level: TileLevel, n: usize, w: &[u8], rows: usize, a: &[u8], tokens: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * tokens];
        // SAFETY: `level` comes from TileLevel::supported(), so the CPU has its features.
        unsafe { (c.tiled)(level, n, w, rows, a, tokens, &mut out) };
        out
    }

    #[test]
    fn tiled_integer_sums_equal_the_scalar_twin_exactly() {
        for level in levels() {
            for c in cases() {
                let mut rng = TestRng::new(c.ty.id() as u64 * 7 + 1);
                // unit scales: results are the integer sums themselves, exact in f32 for up to 10 blocks
                for (i, &(rows, tokens, blocks)) in
                    [(1, 1, 1), (5, 6, 1), (9, 11, 2), (4, 4, 10), (3, 1, 7), (8, 3, 3)].iter().enumerate()
                {
                    let n = blocks * QK;
                    let mut w = weights(&mut rng, c.ty, rows, n, true, &|_| 1.0);
                    let mut a = activations(&mut rng, c.act, tokens, n, true);
                    if i == 1 {
                        // extreme quants: every weight byte 0xff (Q8_0: -1; others: the largest quant)
                        // against activations of +-127
                        for b in w.chunks_exact_mut(c.ty.type_size()) {
                            let head = if matches!(c.ty, GgmlType::Q4_1 | GgmlType::Q5_1) { 4 } else { 2 };
                            b[head..].fill(0xff);
                        }
                        let qs = if c.act == GgmlType::Q8_1 { 4 } else { 2 };
                        for (k, b) in a.chunks_exact_mut(c.act.type_size()).enumerate() {
                            b[qs..].fill(if k % 2 == 0 { 127 } else { (-127i8) as u8 });
                        }
                    }
                    let got = tiled_all(&c, level, n, &w, rows, &a, tokens);
                    let want = scalar_all(&c, n, &w, rows, &a, tokens);
                    assert_eq!(got, want, "{} {level} {rows}x{tokens}x{blocks} blocks", c.ty);
                }
                println!("{} {level}: integer sums equal scalar", c.ty);
            }
        }
    }

    #[test]
    fn tiled_float_results_match_the_scalar_twin() {
        for level in levels() {
            for c in cases() {
                let mut rng = TestRng::new(c.ty.id() as u64 * 13 + 2);
                for &(rows, tokens, n) in &[(1, 1, 32), (7, 5, 640), (4, 9, 2048), (9, 1, 96), (2, 4, 640)] {
                    for raw in [false, true] {
                        let w = weights(&mut rng, c.ty, rows, n, raw, &|r| r.uniform() * 0.05);
                        let a = activations(&mut rng, c.act, tokens, n, false);
                        let got = tiled_all(&c, level, n, &w, rows, &a, tokens);
                        let want = scalar_all(&c, n, &w, rows, &a, tokens);
                        let f = quant_format(c.ty).unwrap();
                        let fa = quant_format(c.act).unwrap();
                        let (wb, ab) = (c.ty.row_bytes(n).unwrap(), c.act.row_bytes(n).unwrap());
                        for r in 0..rows {
                            let mut wd = vec![0.0f32; n];
                            f.dequantize_row(&w[r * wb..(r + 1) * wb], &mut wd);
                            for t in 0..tokens {
                                let mut ad = vec![0.0f32; n];
                                fa.dequantize_row(&a[t * ab..(t + 1) * ab], &mut ad);
                                // sum of |terms|, the m*s terms included (s = d * sum(q) of the block)
                                let abs: f32 = wd.iter().zip(&ad).map(|(x, y)| (x * y).abs()).sum();
                                let k = r * tokens + t;
                                assert_close(
                                    got[k],
                                    want[k],
                                    1e-5,
                                    abs,
                                    &format!("{} {level} {rows}x{tokens} n={n} raw={raw} ({r},{t})", c.ty),
                                );
                            }
                        }
                    }
                }
                println!("{} {level}: float results within 1e-5 of scalar", c.ty);
            }
        }
    }

    /// Every (rows, tokens) shape gives each pair the bits of its one-pair call, at every level, and through
    /// the public `dot_rows` / `vec_dot` of the dispatched level.
    #[test]
    fn tiled_results_are_bitwise_independent_of_the_batch_shape() {
        for level in levels() {
            for c in cases() {
                let mut rng = TestRng::new(c.ty.id() as u64 * 17 + 3);
                // 20 blocks, and 21: the VNNI kernel's block pairs end in a lone block
                for n in [640, 672] {
                    let (wb, ab) = (c.ty.row_bytes(n).unwrap(), c.act.row_bytes(n).unwrap());
                    let w = weights(&mut rng, c.ty, 9, n, false, &|_| 0.0);
                    let a = activations(&mut rng, c.act, 11, n, false);
                    let single: Vec<Vec<f32>> = (0..9)
                        .map(|r| {
                            (0..11)
                                .map(|t| {
                                    let (wr, at) = (&w[r * wb..(r + 1) * wb], &a[t * ab..(t + 1) * ab]);
                                    tiled_all(&c, level, n, wr, 1, at, 1)[0]
                                })
                                .collect()
                        })
                        .collect();
                    for rows in 1..=9 {
                        for tokens in 1..=11 {
                            // a window of the rows and tokens, not always starting at 0
                            let (r0, t0) = ((rows * 5) % (10 - rows), (tokens * 3) % (12 - tokens));
                            let ws = &w[r0 * wb..(r0 + rows) * wb];
                            let at = &a[t0 * ab..(t0 + tokens) * ab];
                            let got = tiled_all(&c, level, n, ws, rows, at, tokens);
                            for r in 0..rows {
                                for t in 0..tokens {
                                    assert_eq!(
                                        got[r * tokens + t].to_bits(),
                                        single[r0 + r][t0 + t].to_bits(),
                                        "{} {level}: {rows}x{tokens} batch, pair ({r}, {t})",
                                        c.ty
                                    );
                                }
                            }
                        }
                    }
                    if Some(level) == TileLevel::best() {
                        let f = quant_format(c.ty).unwrap();
                        let mut out = vec![0.0f32; 9 * 11];
                        f.dot_rows(n, &w, 9, &a, 11, &mut out);
                        for r in 0..9 {
                            for t in 0..11 {
                                let v = f.vec_dot(n, &w[r * wb..(r + 1) * wb], &a[t * ab..(t + 1) * ab]);
                                assert_eq!(v.to_bits(), single[r][t].to_bits(), "{} vec_dot ({r}, {t})", c.ty);
                                assert_eq!(out[r * 11 + t].to_bits(), v.to_bits(), "{} dot_rows ({r}, {t})", c.ty);
                            }
                        }
                    }
                }
                println!("{} {level}: every batch shape gives the one-pair bits (n = 640, 672)", c.ty);
            }
        }
    }

    /// Prefill batches longer than one prepared chunk of the VNNI kernel (`PREP_TOKENS`), with leftover rows
    /// and tokens, still give each pair the bits of its one-pair call.
    #[test]
    fn long_batches_give_the_one_pair_bits() {
        for level in levels() {
            for c in cases() {
                let mut rng = TestRng::new(c.ty.id() as u64 * 23 + 5);
                let (rows, tokens, n) = (9, 150, 96);
                let (wb, ab) = (c.ty.row_bytes(n).unwrap(), c.act.row_bytes(n).unwrap());
                let w = weights(&mut rng, c.ty, rows, n, false, &|_| 0.0);
                let a = activations(&mut rng, c.act, tokens, n, false);
                let got = tiled_all(&c, level, n, &w, rows, &a, tokens);
                for r in 0..rows {
                    for t in 0..tokens {
                        let (wr, at) = (&w[r * wb..(r + 1) * wb], &a[t * ab..(t + 1) * ab]);
                        let single = tiled_all(&c, level, n, wr, 1, at, 1)[0];
                        assert_eq!(got[r * tokens + t].to_bits(), single.to_bits(), "{} {level} ({r}, {t})", c.ty);
                    }
                }
                println!("{} {level}: {rows}x{tokens} batch gives the one-pair bits", c.ty);
            }
        }
    }

    /// Both levels build the same exact integer sums per block but add them in different orders (AVX2 one
    /// block per 8 lanes, VNNI two blocks per 16 lanes), so they agree to float rounding: within 1e-5 of the
    /// sum of |terms| of each dot.
    #[test]
    fn avx2_and_vnni_levels_agree_to_rounding() {
        let levels = levels();
        if !levels.contains(&TileLevel::Vnni) {
            println!("avx512-vnni not on this CPU: nothing to compare the avx2 kernels with");
            return;
        }
        for c in cases() {
            let mut rng = TestRng::new(c.ty.id() as u64 * 19 + 4);
            let (f, fa) = (quant_format(c.ty).unwrap(), quant_format(c.act).unwrap());
            // 20 blocks (even) and 21 (the VNNI kernel's lone trailing block)
            for (raw, n) in [(false, 640), (true, 640), (false, 672), (true, 672)] {
                let (rows, tokens) = (13, 7);
                let (wb, ab) = (c.ty.row_bytes(n).unwrap(), c.act.row_bytes(n).unwrap());
                let w = weights(&mut rng, c.ty, rows, n, raw, &|r| r.uniform() * 0.05);
                let a = activations(&mut rng, c.act, tokens, n, false);
                let x = tiled_all(&c, TileLevel::Avx2, n, &w, rows, &a, tokens);
                let y = tiled_all(&c, TileLevel::Vnni, n, &w, rows, &a, tokens);
                let mut differ = 0;
                for r in 0..rows {
                    let mut wd = vec![0.0f32; n];
                    f.dequantize_row(&w[r * wb..(r + 1) * wb], &mut wd);
                    for t in 0..tokens {
                        let mut ad = vec![0.0f32; n];
                        fa.dequantize_row(&a[t * ab..(t + 1) * ab], &mut ad);
                        let abs: f32 = wd.iter().zip(&ad).map(|(p, q)| (p * q).abs()).sum();
                        let k = r * tokens + t;
                        assert_close(y[k], x[k], 1e-5, abs, &format!("{} n={n} raw={raw} ({r},{t})", c.ty));
                        differ += usize::from(x[k].to_bits() != y[k].to_bits());
                    }
                }
                println!(
                    "{} n={n} raw={raw}: avx2 and avx512-vnni within 1e-5 ({differ} of {} differ in bits)",
                    c.ty,
                    rows * tokens
                );
            }
        }
    }

    #[test]
    fn scalar_dot_rows_matches_scalar_pairs() {
        let c = case::<Q5_0>();
        let mut rng = TestRng::new(5);
        let (rows, tokens, n) = (3, 5, 64);
        let w = weights(&mut rng, c.ty, rows, n, false, &|_| 0.0);
        let a = activations(&mut rng, c.act, tokens, n, false);
        let mut out = vec![0.0f32; rows * tokens];
        crate::q_legacy::dot_rows_scalar::<Q5_0>(n, &w, rows, &a, tokens, &mut out);
        assert_eq!(out, scalar_all(&c, n, &w, rows, &a, tokens));
    }
}
