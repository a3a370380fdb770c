//! Q4_K and Q6_K super-blocks for the tiled k-quant kernels ([`super::k_tiles`]), in 256-bit (AVX2) and 512-bit
//! (AVX-512 VNNI) versions, and the `dot_rows` entry points of each level.
//!
//! Both formats feed `maddubs` with unsigned quants: Q4_K's are 0..=15 and its mins are applied in f32 through
//! Q8_K's bsums; Q6_K's are used as stored (0..=63) and the +32 offset is removed by starting each integer sum
//! at `-32 * sum(scale * bsum)`. `maddubs` pair sums stay within i16 (at most 2 * 63 * 127).

use std::arch::x86_64::*;

use super::k_tiles::{self, q8k_d, Avx2Block, Avx512Block, OnAvx2, OnAvx512};
use crate::k_quants::{k4_scales_mins_packed, Q4K, Q6K, Q8K_BSUMS};
use crate::GgmlType;

/// Rows x tokens of the full tiles, and rows of the one-token tiles (decode), picked by measuring
/// `benches/k_quants.rs` on this Zen 4-class machine (the AVX2 one with `GEMMA_SIMD=avx2`).
const AVX2_TILE: (usize, usize, usize) = (2, 4, 2);
const AVX512_TILE: (usize, usize, usize) = (2, 4, 4);

/// The f16 at `p`, converted with F16C.
///
/// # Safety
/// The CPU supports f16c; `p` is valid for 2 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes(std::ptr::read_unaligned(p.cast::<[u8; 2]>()));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Q8_K's 16 bsums (i16) of the block at `a`.
///
/// # Safety
/// avx2; `a` points at a whole Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsums(a: *const u8) -> __m256i {
    _mm256_loadu_si256(a.add(Q8K_BSUMS).cast())
}

/// The 8 scales and 8 mins of a Q4_K/Q5_K block as bytes in two u64 (byte `j` = sub-block `j`).
///
/// # Safety
/// `b` points at a whole Q4_K/Q5_K block.
#[inline(always)]
unsafe fn k4_scales_mins(b: *const u8) -> (u64, u64) {
    k4_scales_mins_packed(&std::ptr::read_unaligned(b.add(4).cast::<[u8; 12]>()))
}

/// Per-row state of a Q4_K super-block on AVX2.
#[derive(Clone, Copy)]
pub(crate) struct Q4KRow256 {
    d: f32,
    dmin: f32,
    /// The 8 scales as i16, repeated in both 128-bit lanes.
    scales: __m256i,
    /// Mins as i16, each twice (lanes `2j`, `2j + 1` = min `j`), to `madd` with the 16 bsums.
    mins: __m256i,
}

/// `pshufb` index that broadcasts i16 lane `j` of a 128-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn broadcast_word_idx(j: usize) -> __m256i {
    let lo = (2 * j) as i16;
    _mm256_set1_epi16(lo | ((lo + 1) << 8))
}

/// Mins, each repeated for two bsums, as 16 i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_for_bsums(mn: u64) -> __m256i {
    let pairs =
        _mm_shuffle_epi8(_mm_cvtsi64_si128(mn as i64), _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
    _mm256_cvtepu8_epi16(pairs)
}

impl Avx2Block for Q4K {
    const TY: GgmlType = GgmlType::Q4K;
    type Row = Q4KRow256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Q4KRow256 {
        let (sc, mn) = k4_scales_mins(b);
        let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
        Q4KRow256 {
            d: f16_ptr(b),
            dmin: f16_ptr(b.add(2)),
            scales: _mm256_broadcastsi128_si256(sc16),
            mins: mins_for_bsums(mn),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Q4KRow256) -> (__m256i, __m256i) {
        let c = C;
        // sub-block c: low nibbles of qs[32 * (c / 2)..] for even c, high nibbles for odd c
        let bits = _mm256_loadu_si256(b.add(16 + 32 * (c / 2)).cast());
        let bits = if c.is_multiple_of(2) { bits } else { _mm256_srli_epi16(bits, 4) };
        let q = _mm256_and_si256(bits, _mm256_set1_epi8(0x0f));
        (q, _mm256_shuffle_epi8(row.scales, broadcast_word_idx(c)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(_row: &Q4KRow256, _a: *const u8) -> __m256i {
        _mm256_setzero_si256()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &Q4KRow256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        let da = q8k_d(a);
        let mins = _mm256_madd_epi16(bsums(a), row.mins);
        let acc = _mm256_fmadd_ps(_mm256_set1_ps(row.d * da), _mm256_cvtepi32_ps(sum), acc);
        _mm256_fnmadd_ps(_mm256_set1_ps(row.dmin * da), _mm256_cvtepi32_ps(mins), acc)
    }
}

/// Per-row state of a Q6_K super-block on AVX2.
#[derive(Clone, Copy)]
pub(crate) struct Q6KRow256 {
    d: f32,
    /// Scales 0..8 (as i16) in both 128-bit lanes, and scales 8..16.
    scales_lo: __m256i,
    scales_hi: __m256i,
    /// `-32 * scale` for the 16 sub-blocks, to `madd` with the bsums.
    offsets: __m256i,
}

impl Avx2Block for Q6K {
    const TY: GgmlType = GgmlType::Q6K;
    type Row = Q6KRow256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Q6KRow256 {
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
        Q6KRow256 {
            d: f16_ptr(b.add(208)),
            scales_lo: _mm256_permute2x128_si256(s16, s16, 0x00),
            scales_hi: _mm256_permute2x128_si256(s16, s16, 0x11),
            offsets: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s16, 5)),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Q6KRow256) -> (__m256i, __m256i) {
        let c = C;
        // chunk c = elements 32c..32c + 32: half h = c / 4, group k = c % 4 of it. Low 4 bits: ql[64h + 32(k % 2)..]
        // (low nibbles for k < 2, high for k >= 2); high 2 bits: qh[32h..] at bit 2k.
        let (h, k) = (c / 4, c % 4);
        let low = _mm256_loadu_si256(b.add(64 * h + 32 * (k % 2)).cast());
        let low = if k < 2 { low } else { _mm256_srli_epi16(low, 4) };
        let high = _mm256_loadu_si256(b.add(128 + 32 * h).cast());
        // move bits 2k, 2k + 1 of each byte to bits 4, 5 (16-bit shifts: what crosses bytes is masked off)
        let high = match k {
            0 => _mm256_slli_epi16(high, 4),
            1 => _mm256_slli_epi16(high, 2),
            2 => high,
            _ => _mm256_srli_epi16(high, 2),
        };
        let q = _mm256_or_si256(
            _mm256_and_si256(low, _mm256_set1_epi8(0x0f)),
            _mm256_and_si256(high, _mm256_set1_epi8(0x30)),
        );
        // maddubs lanes 0..8 are sub-block 2c, lanes 8..16 sub-block 2c + 1 (16 elements each)
        let j = c % 4;
        let scales = if c < 4 { row.scales_lo } else { row.scales_hi };
        let idx = _mm256_setr_epi8(
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8,
            4 * j as i8 + 1,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
            4 * j as i8 + 2,
            4 * j as i8 + 3,
        );
        (q, _mm256_shuffle_epi8(scales, idx))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(row: &Q6KRow256, a: *const u8) -> __m256i {
        _mm256_madd_epi16(bsums(a), row.offsets)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &Q6KRow256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(_mm256_set1_ps(row.d * q8k_d(a)), _mm256_cvtepi32_ps(sum), acc)
    }
}

/// i16 lane indices for `vpermw`: lane `l` reads scale `first + l / 16` (Q4_K: 32-element sub-blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scale_index_by_16(first: usize) -> __m512i {
    _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(first as i16), _mm512_set1_epi16(first as i16 + 1))
}

/// i16 lane indices for `vpermw`: lane `l` reads scale `first + l / 8` (Q6_K: 16-element sub-blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scale_index_by_8(first: usize) -> __m512i {
    let step = |k: i64| k * 0x0001_0001_0001_0001;
    let base = _mm512_set_epi64(step(3), step(3), step(2), step(2), step(1), step(1), 0, 0);
    _mm512_add_epi16(base, _mm512_set1_epi16(first as i16))
}

/// Per-row state of a Q4_K super-block on AVX-512.
#[derive(Clone, Copy)]
pub(crate) struct Q4KRow512 {
    d: f32,
    dmin: f32,
    /// The 8 scales as i16 in the low lanes.
    scales: __m512i,
    mins: __m256i,
}

impl Avx512Block for Q4K {
    const TY: GgmlType = GgmlType::Q4K;
    type Row = Q4KRow512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Q4KRow512 {
        let (sc, mn) = k4_scales_mins(b);
        Q4KRow512 {
            d: f16_ptr(b),
            dmin: f16_ptr(b.add(2)),
            scales: _mm512_zextsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64))),
            mins: mins_for_bsums(mn),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Q4KRow512) -> (__m512i, __m512i) {
        let c = C;
        // elements 64c..64c + 64: the low nibbles of qs[32c..32c + 32], then their high nibbles
        let bits = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(16 + 32 * c).cast()));
        let shifts = _mm512_mask_blend_epi16(0xffff_0000, _mm512_setzero_si512(), _mm512_set1_epi16(4));
        let q = _mm512_and_si512(_mm512_srlv_epi16(bits, shifts), _mm512_set1_epi8(0x0f));
        (q, _mm512_permutexvar_epi16(scale_index_by_16(2 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(_row: &Q4KRow512, _a: *const u8) -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &Q4KRow512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        let da = q8k_d(a);
        let mins = _mm512_zextsi256_si512(_mm256_madd_epi16(bsums(a), row.mins));
        let acc = _mm512_fmadd_ps(_mm512_set1_ps(row.d * da), _mm512_cvtepi32_ps(sum), acc);
        _mm512_fnmadd_ps(_mm512_set1_ps(row.dmin * da), _mm512_cvtepi32_ps(mins), acc)
    }
}

/// Per-row state of a Q6_K super-block on AVX-512.
#[derive(Clone, Copy)]
pub(crate) struct Q6KRow512 {
    d: f32,
    /// The 16 scales as i16 in the low lanes.
    scales: __m512i,
    offsets: __m256i,
}

impl Avx512Block for Q6K {
    const TY: GgmlType = GgmlType::Q6K;
    type Row = Q6KRow512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Q6KRow512 {
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
        Q6KRow512 {
            d: f16_ptr(b.add(208)),
            scales: _mm512_zextsi256_si512(s16),
            offsets: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s16, 5)),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Q6KRow512) -> (__m512i, __m512i) {
        let c = C;
        // chunk c = elements 64c..64c + 64 = groups k = 2(c % 2), 2(c % 2) + 1 of half h = c / 2: low 4 bits are the
        // low (c even) or high (c odd) nibbles of ql[64h..64h + 64]; high 2 bits are qh[32h..32h + 32] at bit 2k
        let h = c / 2;
        let low = _mm512_loadu_si512(b.add(64 * h).cast());
        let low = if c.is_multiple_of(2) { low } else { _mm512_srli_epi16(low, 4) };
        let high = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(128 + 32 * h).cast()));
        // move bits 2k, 2k + 1 to bits 4, 5: k = 0, 1 shift left by 4, 2; k = 2, 3 by 0 and right by 2
        let high = if c.is_multiple_of(2) {
            let by = _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(4), _mm512_set1_epi16(2));
            _mm512_sllv_epi16(high, by)
        } else {
            let by = _mm512_mask_blend_epi16(0xffff_0000, _mm512_setzero_si512(), _mm512_set1_epi16(2));
            _mm512_srlv_epi16(high, by)
        };
        let q = _mm512_or_si512(
            _mm512_and_si512(low, _mm512_set1_epi8(0x0f)),
            _mm512_and_si512(high, _mm512_set1_epi8(0x30)),
        );
        (q, _mm512_permutexvar_epi16(scale_index_by_8(4 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(row: &Q6KRow512, a: *const u8) -> __m512i {
        _mm512_zextsi256_si512(_mm256_madd_epi16(bsums(a), row.offsets))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &Q6KRow512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(_mm512_set1_ps(row.d * q8k_d(a)), _mm512_cvtepi32_ps(sum), acc)
    }
}

/// `dot_rows` of Q4_K rows with Q8_K activations on AVX2.
///
/// # Safety
/// The CPU supports avx2, fma and f16c. (Lengths are checked.)
pub(crate) unsafe fn dot_rows_q4_k_avx2(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    k_tiles::dot_rows::<OnAvx2<Q4K>, { AVX2_TILE.0 }, { AVX2_TILE.1 }, { AVX2_TILE.2 }>(n, w, rows, acts, n_tokens, out)
}

/// `dot_rows` of Q4_K rows on AVX-512 VNNI.
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c. (Lengths are checked.)
pub(crate) unsafe fn dot_rows_q4_k_avx512(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    k_tiles::dot_rows::<OnAvx512<Q4K>, { AVX512_TILE.0 }, { AVX512_TILE.1 }, { AVX512_TILE.2 }>(
        n, w, rows, acts, n_tokens, out,
    )
}

/// `dot_rows` of Q6_K rows with Q8_K activations on AVX2.
///
/// # Safety
/// The CPU supports avx2, fma and f16c. (Lengths are checked.)
pub(crate) unsafe fn dot_rows_q6_k_avx2(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    k_tiles::dot_rows::<OnAvx2<Q6K>, { AVX2_TILE.0 }, { AVX2_TILE.1 }, { AVX2_TILE.2 }>(n, w, rows, acts, n_tokens, out)
}

/// `dot_rows` of Q6_K rows on AVX-512 VNNI.
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c. (Lengths are checked.)
pub(crate) unsafe fn dot_rows_q6_k_avx512(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    k_tiles::dot_rows::<OnAvx512<Q6K>, { AVX512_TILE.0 }, { AVX512_TILE.1 }, { AVX512_TILE.2 }>(
        n, w, rows, acts, n_tokens, out,
    )
}

/// Q4_K x Q8_K dot of one row on AVX2 (a 1 x 1 tile: the same code path as `dot_rows`).
///
/// # Safety
/// The CPU supports avx2, fma and f16c.
#[cfg(test)]
pub(crate) unsafe fn dot_q4_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut out = [0f32];
    dot_rows_q4_k_avx2(n, w, 1, act, 1, &mut out);
    out[0]
}

/// Q6_K x Q8_K dot of one row on AVX2 (a 1 x 1 tile).
///
/// # Safety
/// The CPU supports avx2, fma and f16c.
#[cfg(test)]
pub(crate) unsafe fn dot_q6_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut out = [0f32];
    dot_rows_q6_k_avx2(n, w, 1, act, 1, &mut out);
    out[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::{dot_rows_scalar, Q8K_QS, QK_K};
    use crate::test_data::{assert_close, TestRng};
    use crate::x86::k_tiles::Q8K_BYTES;
    use crate::{cpu_has_avx512_vnni, quant_format};

    type Kernel = unsafe fn(usize, &[u8], usize, &[u8], usize, &mut [f32]);

    /// One SIMD level's `dot_rows` for Q4_K and Q6_K.
    struct Level {
        name: &'static str,
        q4_k: Kernel,
        q6_k: Kernel,
    }

    /// Every level this CPU runs, scalar first, printing each one that is skipped because the CPU lacks it.
    fn levels() -> Vec<Level> {
        fn scalar_q4_k(n: usize, w: &[u8], rows: usize, a: &[u8], t: usize, out: &mut [f32]) {
            dot_rows_scalar::<Q4K>(n, w, rows, a, t, out)
        }
        fn scalar_q6_k(n: usize, w: &[u8], rows: usize, a: &[u8], t: usize, out: &mut [f32]) {
            dot_rows_scalar::<Q6K>(n, w, rows, a, t, out)
        }
        let mut out = vec![Level { name: "scalar", q4_k: scalar_q4_k, q6_k: scalar_q6_k }];
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            out.push(Level { name: "avx2", q4_k: dot_rows_q4_k_avx2, q6_k: dot_rows_q6_k_avx2 });
            if cpu_has_avx512_vnni() {
                out.push(Level { name: "avx512-vnni", q4_k: dot_rows_q4_k_avx512, q6_k: dot_rows_q6_k_avx512 });
            } else {
                println!("skipping avx512-vnni: not supported by this CPU");
            }
        } else {
            println!("skipping avx2 and avx512-vnni: not supported by this CPU");
        }
        println!("k-quant dot_rows levels run: {:?}", out.iter().map(|l| l.name).collect::<Vec<_>>());
        out
    }

    fn kernel(level: &Level, ty: GgmlType) -> Kernel {
        match ty {
            GgmlType::Q4K => level.q4_k,
            _ => level.q6_k,
        }
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// Random weight rows: random quant and scale bytes; super-scales unit (`unit`) or small random values.
    fn weights(rng: &mut TestRng, ty: GgmlType, rows: usize, n: usize, unit: bool) -> Vec<u8> {
        let mut w = rng.bytes(rows * ty.row_bytes(n).unwrap());
        for b in w.chunks_exact_mut(ty.type_size()) {
            let offsets: &[usize] = if ty == GgmlType::Q4K { &[0, 2] } else { &[208] };
            for &o in offsets {
                let v = if unit { 1.0 } else { rng.uniform() * 0.002 };
                b[o..o + 2].copy_from_slice(&f16_bytes(v));
            }
        }
        w
    }

    /// Q8_K activation rows: unit scale and random quants (`unit`), or quantized from real-shaped values.
    fn activations(rng: &mut TestRng, n: usize, tokens: usize, unit: bool) -> Vec<u8> {
        let rb = GgmlType::Q8K.row_bytes(n).unwrap();
        let mut a = vec![0u8; rb * tokens];
        for row in a.chunks_exact_mut(rb) {
            if unit {
                for b in row.chunks_exact_mut(Q8K_BYTES) {
                    b[..4].copy_from_slice(&1.0f32.to_le_bytes());
                    for q in &mut b[Q8K_QS..Q8K_BSUMS] {
                        *q = ((rng.next_u64() % 255) as i32 - 127) as i8 as u8;
                    }
                    for g in 0..16 {
                        let s: i32 = b[Q8K_QS + 16 * g..Q8K_QS + 16 * g + 16].iter().map(|&q| q as i8 as i32).sum();
                        b[Q8K_BSUMS + 2 * g..Q8K_BSUMS + 2 * g + 2].copy_from_slice(&(s as i16).to_le_bytes());
                    }
                }
            } else {
                quant_format(GgmlType::Q8K).unwrap().quantize_row(&rng.row(n), row).unwrap();
            }
        }
        a
    }

    /// Sum of |w_i * a_i| over a pair, the scale of its float rounding error.
    fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f32 {
        let (mut wd, mut ad) = (vec![0f32; n], vec![0f32; n]);
        quant_format(ty).unwrap().dequantize_row(w, &mut wd);
        quant_format(GgmlType::Q8K).unwrap().dequantize_row(a, &mut ad);
        // Q4_K's mins are a separate product: count them too
        let mins: f32 = wd.iter().map(|v| v.abs()).sum::<f32>() * ad.iter().fold(0f32, |m, v| m.max(v.abs()));
        wd.iter().zip(&ad).map(|(x, y)| (x * y).abs()).sum::<f32>() + mins
    }

    fn run(k: Kernel, n: usize, w: &[u8], rows: usize, a: &[u8], tokens: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * tokens];
        // SAFETY: `levels()` lists a kernel only when the CPU reports its features.
        unsafe { k(n, w, rows, a, tokens, &mut out) };
        out
    }

    #[test]
    fn k4_scales_mins_packed_matches_scale_min_k4() {
        let mut rng = TestRng::new(11);
        for _ in 0..2000 {
            let q: [u8; 12] = std::array::from_fn(|_| rng.next_u64() as u8);
            let (sc, mn) = k4_scales_mins_packed(&q);
            let (want_sc, want_mn) = crate::k_quants::scales_mins_k4(&q);
            assert_eq!(sc.to_le_bytes(), want_sc, "{q:?}");
            assert_eq!(mn.to_le_bytes(), want_mn, "{q:?}");
        }
    }

    /// Unit super-scales, one block: every result is the exact integer sum, so each level must equal scalar
    /// exactly, in every tile shape. Includes blocks of extreme quants and scales.
    #[test]
    fn dot_rows_integer_sums_equal_scalar_at_every_level() {
        let levels = levels();
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let mut rng = TestRng::new(500 + ty.id() as u64);
            let scalar = kernel(&levels[0], ty);
            for case in 0..40 {
                let (rows, tokens) = (1 + case % 9, 1 + case % 11);
                let mut w = weights(&mut rng, ty, rows, QK_K, true);
                let mut a = activations(&mut rng, QK_K, tokens, true);
                if case >= 36 {
                    // all-ones bytes: largest quants, scales and mins; activations all +-127
                    w.fill(0xff);
                    for b in w.chunks_exact_mut(ty.type_size()) {
                        let offsets: &[usize] = if ty == GgmlType::Q4K { &[0, 2] } else { &[208] };
                        for &o in offsets {
                            b[o..o + 2].copy_from_slice(&f16_bytes(1.0));
                        }
                    }
                    let q = if case % 2 == 0 { 127i8 } else { -127 };
                    for b in a.chunks_exact_mut(Q8K_BYTES) {
                        b[Q8K_QS..Q8K_BSUMS].fill(q as u8);
                        for g in 0..16 {
                            b[Q8K_BSUMS + 2 * g..Q8K_BSUMS + 2 * g + 2].copy_from_slice(&(q as i16 * 16).to_le_bytes());
                        }
                    }
                }
                let want = run(scalar, QK_K, &w, rows, &a, tokens);
                for level in &levels[1..] {
                    let got = run(kernel(level, ty), QK_K, &w, rows, &a, tokens);
                    assert_eq!(got, want, "{ty} {} case {case}: integer sums differ", level.name);
                }
            }
            println!("{ty}: integer sums equal scalar at every level");
        }
    }

    /// Realistic scales and activations, rows x tokens from 1 x 1 to 37 x 13: each level within 1e-5 of the
    /// scalar twin (relative to the sum of |terms|), and bitwise the same as the pair computed alone.
    #[test]
    fn dot_rows_matches_scalar_and_is_tile_invariant_at_every_level() {
        let levels = levels();
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let mut rng = TestRng::new(900 + ty.id() as u64);
            for case in 0..24 {
                let n = QK_K * [1, 2, 4, 8][case % 4];
                let (rows, tokens) = if case == 23 {
                    (37, 13)
                } else {
                    (1 + (rng.next_u64() % 9) as usize, 1 + (rng.next_u64() % 11) as usize)
                };
                let w = weights(&mut rng, ty, rows, n, false);
                let a = activations(&mut rng, n, tokens, false);
                let (w_row, a_row) = (ty.row_bytes(n).unwrap(), GgmlType::Q8K.row_bytes(n).unwrap());
                let want = run(kernel(&levels[0], ty), n, &w, rows, &a, tokens);
                for level in &levels {
                    let k = kernel(level, ty);
                    let got = run(k, n, &w, rows, &a, tokens);
                    for r in 0..rows {
                        let wr = &w[r * w_row..(r + 1) * w_row];
                        for t in 0..tokens {
                            let at = &a[t * a_row..(t + 1) * a_row];
                            let what = format!("{ty} {} n={n} {rows}x{tokens} pair ({r}, {t})", level.name);
                            let v = got[r * tokens + t];
                            assert_close(v, want[r * tokens + t], 1e-5, magnitude(ty, wr, at, n), &what);
                            let alone = run(k, n, wr, 1, at, 1)[0];
                            assert_eq!(v.to_bits(), alone.to_bits(), "{what}: {v} in a tile, {alone} alone");
                        }
                    }
                }
            }
            println!(
                "{ty}: dot_rows within 1e-5 of scalar and tile-invariant at {:?}",
                levels.iter().map(|l| l.name).collect::<Vec<_>>()
            );
        }
    }

    /// The public API at this machine's dispatched level: `dot_rows` in one call equals `vec_dot` of each pair,
    /// bit for bit, for weights quantized from real-shaped data.
    #[test]
    fn format_dot_rows_equals_vec_dot_bitwise() {
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let f = quant_format(ty).unwrap();
            let mut rng = TestRng::new(1300 + ty.id() as u64);
            for case in 0..12 {
                let n = QK_K * (1 + case % 4);
                let rows = 1 + (rng.next_u64() % 20) as usize;
                let tokens = 1 + (rng.next_u64() % 11) as usize;
                let w_row = ty.row_bytes(n).unwrap();
                let mut w = vec![0u8; rows * w_row];
                for row in w.chunks_exact_mut(w_row) {
                    f.quantize_row(&rng.row(n), row).unwrap();
                }
                let a = activations(&mut rng, n, tokens, false);
                let a_row = GgmlType::Q8K.row_bytes(n).unwrap();
                let mut out = vec![0f32; rows * tokens];
                f.dot_rows(n, &w, rows, &a, tokens, &mut out);
                for r in 0..rows {
                    for t in 0..tokens {
                        let one = f.vec_dot(n, &w[r * w_row..(r + 1) * w_row], &a[t * a_row..(t + 1) * a_row]);
                        assert_eq!(
                            out[r * tokens + t].to_bits(),
                            one.to_bits(),
                            "{ty} n={n} {rows}x{tokens} ({r}, {t})"
                        );
                    }
                }
            }
            println!("{ty}: dot_rows == vec_dot bitwise at {}", crate::simd_level());
        }
    }
}
