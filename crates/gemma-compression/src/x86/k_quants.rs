//! The k-quant super-blocks for the tiled kernels ([`super::k_tiles`]), in 256-bit (AVX2) and 512-bit
//! (AVX-512 VNNI) versions, and the `dot_rows` entry points of each level.
//!
//! Every format feeds `maddubs` with unsigned quants and folds what that leaves out into integer or f32 terms
//! computed once per (row, token) pair from Q8_K's bsums:
//! - Q4_K (0..=15), Q5_K (0..=31) and Q2_K (0..=3) are unsigned already; their mins are applied in f32 as
//!   `dmin * d_a * sum(min * bsum)`, like the scalar twin.
//! - Q6_K's quants are used as stored (0..=63) and Q3_K's as `q + 4` (0..=7); the offset (32, 4) is removed by
//!   starting each integer sum at `-offset * sum(scale * bsum)`.
//!
//! `maddubs` pair sums stay within i16 (at most 2 * 63 * 127), and `scale * pair` within i32.

use std::arch::x86_64::*;

use super::k_tiles::{self, q8k_d, Avx2Block, Avx512Block, OnAvx2, OnAvx512};
use crate::k_quants::{k4_scales_mins_packed, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K_BSUMS};
use crate::GgmlType;

/// Rows x tokens of the full tiles, and rows of the one-token tiles (decode), picked by measuring
/// `benches/k_quants.rs` on this Zen 4-class machine (the AVX2 one with `GEMMA_SIMD=avx2`) for Q4_K and Q6_K;
/// the other formats use the same shapes (same register budget per row).
const AVX2_TILE: (usize, usize, usize) = (2, 4, 2);
const AVX512_TILE: (usize, usize, usize) = (2, 4, 4);

/// The f16 at `p`, converted with F16C.
///
/// # Safety
/// The CPU supports f16c; `p` is valid for 2 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_ptr(p: *const u8) -> f32 {
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

/// The 16 biased 6-bit scales of a Q3_K block (byte `j` = scale `j` + 32) from its 12 packed bytes, four at a
/// time with word operations: scales 0..8 take their low 4 bits from the low nibbles of bytes 0..8, scales 8..16
/// from the high nibbles, and their high 2 bits from bits `2 * (j / 4)` of byte `8 + j % 4`.
pub(crate) fn q3_k_scales_packed(q: &[u8; 12]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (w0, w1, high) = (word(0), word(1), word(2));
    // bits 2k, 2k + 1 of each byte of `high` as bits 4, 5 of the same byte
    let top = |k: u32| ((high >> (2 * k)) & 0x0303_0303) << 4;
    let out = [
        (w0 & 0x0f0f_0f0f) | top(0),
        (w1 & 0x0f0f_0f0f) | top(1),
        ((w0 >> 4) & 0x0f0f_0f0f) | top(2),
        ((w1 >> 4) & 0x0f0f_0f0f) | top(3),
    ];
    let mut bytes = [0u8; 16];
    for (o, w) in bytes.chunks_exact_mut(4).zip(out) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    bytes
}

/// The 16 signed scales (-32..=31) of the Q3_K block at `b`, as i16.
///
/// # Safety
/// avx2; `b` points at a whole Q3_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k_scales(b: *const u8) -> __m256i {
    let biased = q3_k_scales_packed(&std::ptr::read_unaligned(b.add(96).cast::<[u8; 12]>()));
    let s8 = _mm_sub_epi8(_mm_loadu_si128(biased.as_ptr().cast()), _mm_set1_epi8(32));
    _mm256_cvtepi8_epi16(s8)
}

/// The 16 scales (low nibbles) and 16 mins (high nibbles) of the Q2_K block at `b`, as i16.
///
/// # Safety
/// avx2; `b` points at a whole Q2_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_scales_mins(b: *const u8) -> (__m256i, __m256i) {
    let packed = _mm_loadu_si128(b.cast());
    let nibble = _mm_set1_epi8(0x0f);
    let scales = _mm_and_si128(packed, nibble);
    let mins = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
    (_mm256_cvtepu8_epi16(scales), _mm256_cvtepu8_epi16(mins))
}

/// Bit `from` of every byte of `v` moved to bit `to` of the same byte, all other bits clear. (16-bit shifts:
/// what crosses into the neighbouring byte is masked off.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn move_bit(v: __m256i, from: u32, to: u32) -> __m256i {
    let moved = if from >= to {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128((from - to) as i32))
    } else {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128((to - from) as i32))
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(1 << to))
}

/// The 2-bit field at bits `shift, shift + 1` of every byte of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn field2(v: __m256i, shift: u32) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32)), _mm256_set1_epi8(3))
}

/// `pshufb` index that broadcasts i16 lane `j` of a 128-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn broadcast_word_idx(j: usize) -> __m256i {
    let lo = (2 * j) as i16;
    _mm256_set1_epi16(lo | ((lo + 1) << 8))
}

/// `pshufb` index for 16-element sub-blocks: the low 128-bit lane (maddubs lanes 0..8) broadcasts i16 lane
/// `2j`, the high one lane `2j + 1`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_word_idx(j: usize) -> __m256i {
    let first = (4 * j) as i16;
    let second = first + 2;
    _mm256_set_m128i(_mm_set1_epi16(second | ((second + 1) << 8)), _mm_set1_epi16(first | ((first + 1) << 8)))
}

/// Mins, each repeated for two bsums, as 16 i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_for_bsums(mn: u64) -> __m256i {
    let pairs =
        _mm_shuffle_epi8(_mm_cvtsi64_si128(mn as i64), _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
    _mm256_cvtepu8_epi16(pairs)
}

/// `acc + d * d_a * sum - dmin * d_a * sum(mins * bsums)`: one super-block of a format with mins (`mins` has an
/// i16 min for each of the 16 bsums), the scalar twin's two products.
///
/// # Safety
/// avx2; `a` points at a whole Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish_with_mins256(d: f32, dmin: f32, mins: __m256i, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
    let da = q8k_d(a);
    let mins = _mm256_madd_epi16(bsums(a), mins);
    let acc = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sum), acc);
    _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(mins), acc)
}

/// Per-row state of a Q4_K or Q5_K super-block on AVX2 (8 sub-blocks of 32 with scales and mins).
#[derive(Clone, Copy)]
pub(crate) struct ScalesMins8Row256 {
    d: f32,
    dmin: f32,
    /// The 8 scales as i16, repeated in both 128-bit lanes.
    scales: __m256i,
    /// Mins as i16, each twice (lanes `2j`, `2j + 1` = min `j`), to `madd` with the 16 bsums.
    mins: __m256i,
}

/// The Q4_K/Q5_K header (`d`, `dmin`, packed scales and mins at bytes 0..16) of the block at `b`.
///
/// # Safety
/// avx2; `b` points at a whole Q4_K/Q5_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare_k4_256(b: *const u8) -> ScalesMins8Row256 {
    let (sc, mn) = k4_scales_mins(b);
    let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
    ScalesMins8Row256 {
        d: f16_ptr(b),
        dmin: f16_ptr(b.add(2)),
        scales: _mm256_broadcastsi128_si256(sc16),
        mins: mins_for_bsums(mn),
    }
}

impl Avx2Block for Q4K {
    const TY: GgmlType = GgmlType::Q4K;
    type Row = ScalesMins8Row256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> ScalesMins8Row256 {
        prepare_k4_256(b)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &ScalesMins8Row256) -> (__m256i, __m256i) {
        let c = C;
        // sub-block c: low nibbles of qs[32 * (c / 2)..] for even c, high nibbles for odd c
        let bits = _mm256_loadu_si256(b.add(16 + 32 * (c / 2)).cast());
        let bits = if c.is_multiple_of(2) { bits } else { _mm256_srli_epi16(bits, 4) };
        let q = _mm256_and_si256(bits, _mm256_set1_epi8(0x0f));
        (q, _mm256_shuffle_epi8(row.scales, broadcast_word_idx(c)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(_row: &ScalesMins8Row256, _a: *const u8) -> __m256i {
        _mm256_setzero_si256()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &ScalesMins8Row256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        finish_with_mins256(row.d, row.dmin, row.mins, a, sum, acc)
    }
}

impl Avx2Block for Q5K {
    const TY: GgmlType = GgmlType::Q5K;
    type Row = ScalesMins8Row256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> ScalesMins8Row256 {
        prepare_k4_256(b)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &ScalesMins8Row256) -> (__m256i, __m256i) {
        let c = C;
        // sub-block c: low 4 bits as Q4_K's (qs at byte 48), bit 4 is bit c of qh[0..32] (byte 16)
        let bits = _mm256_loadu_si256(b.add(48 + 32 * (c / 2)).cast());
        let bits = if c.is_multiple_of(2) { bits } else { _mm256_srli_epi16(bits, 4) };
        let high = move_bit(_mm256_loadu_si256(b.add(16).cast()), c as u32, 4);
        let q = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi8(0x0f)), high);
        (q, _mm256_shuffle_epi8(row.scales, broadcast_word_idx(c)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(_row: &ScalesMins8Row256, _a: *const u8) -> __m256i {
        _mm256_setzero_si256()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &ScalesMins8Row256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        finish_with_mins256(row.d, row.dmin, row.mins, a, sum, acc)
    }
}

/// Per-row state on AVX2 of a super-block with 16 signed scales and an offset on its quants (Q6_K, Q3_K).
#[derive(Clone, Copy)]
pub(crate) struct Scales16Row256 {
    d: f32,
    /// Scales 0..8 (as i16) in both 128-bit lanes, and scales 8..16.
    scales_lo: __m256i,
    scales_hi: __m256i,
    /// `-offset * scale` for the 16 sub-blocks, to `madd` with the bsums.
    offsets: __m256i,
}

impl Scales16Row256 {
    /// From the 16 i16 scales `s16`, for quants fed to `maddubs` as `q + 2^OFFSET_LOG2`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn new<const OFFSET_LOG2: i32>(d: f32, s16: __m256i) -> Scales16Row256 {
        Scales16Row256 {
            d,
            scales_lo: _mm256_permute2x128_si256(s16, s16, 0x00),
            scales_hi: _mm256_permute2x128_si256(s16, s16, 0x11),
            offsets: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<OFFSET_LOG2>(s16)),
        }
    }

    /// The scale of each `maddubs` lane of chunk `c` (32 elements: sub-blocks `2c`, `2c + 1`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk_scales(&self, c: usize) -> __m256i {
        let scales = if c < 4 { self.scales_lo } else { self.scales_hi };
        _mm256_shuffle_epi8(scales, pair_word_idx(c % 4))
    }
}

impl Avx2Block for Q6K {
    const TY: GgmlType = GgmlType::Q6K;
    type Row = Scales16Row256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Scales16Row256 {
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
        Scales16Row256::new::<5>(f16_ptr(b.add(208)), s16)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Scales16Row256) -> (__m256i, __m256i) {
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
        (q, row.chunk_scales(c))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(row: &Scales16Row256, a: *const u8) -> __m256i {
        _mm256_madd_epi16(bsums(a), row.offsets)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &Scales16Row256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(_mm256_set1_ps(row.d * q8k_d(a)), _mm256_cvtepi32_ps(sum), acc)
    }
}

impl Avx2Block for Q3K {
    const TY: GgmlType = GgmlType::Q3K;
    type Row = Scales16Row256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Scales16Row256 {
        Scales16Row256::new::<2>(f16_ptr(b.add(108)), q3_k_scales(b))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Scales16Row256) -> (__m256i, __m256i) {
        let c = C;
        // chunk c = elements 32c..32c + 32: low 2 bits at bits 2(c % 4) of qs[32(c / 4)..] (byte 32 on); bit 2 of
        // q + 4 is bit c of hmask[0..32] (set: q = low bits, clear: q = low bits - 4)
        let low = field2(_mm256_loadu_si256(b.add(32 + 32 * (c / 4)).cast()), 2 * (c % 4) as u32);
        let high = move_bit(_mm256_loadu_si256(b.cast()), c as u32, 2);
        (_mm256_or_si256(low, high), row.chunk_scales(c))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(row: &Scales16Row256, a: *const u8) -> __m256i {
        _mm256_madd_epi16(bsums(a), row.offsets)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &Scales16Row256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(_mm256_set1_ps(row.d * q8k_d(a)), _mm256_cvtepi32_ps(sum), acc)
    }
}

/// Per-row state of a Q2_K super-block on AVX2 (16 sub-blocks of 16 with scales and mins).
#[derive(Clone, Copy)]
pub(crate) struct ScalesMins16Row256 {
    d: f32,
    dmin: f32,
    /// Scales 0..8 (as i16) in both 128-bit lanes, and scales 8..16.
    scales_lo: __m256i,
    scales_hi: __m256i,
    /// The 16 mins as i16, to `madd` with the 16 bsums.
    mins: __m256i,
}

impl Avx2Block for Q2K {
    const TY: GgmlType = GgmlType::Q2K;
    type Row = ScalesMins16Row256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> ScalesMins16Row256 {
        let (s16, mins) = q2_k_scales_mins(b);
        ScalesMins16Row256 {
            d: f16_ptr(b.add(80)),
            dmin: f16_ptr(b.add(82)),
            scales_lo: _mm256_permute2x128_si256(s16, s16, 0x00),
            scales_hi: _mm256_permute2x128_si256(s16, s16, 0x11),
            mins,
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &ScalesMins16Row256) -> (__m256i, __m256i) {
        let c = C;
        // chunk c = elements 32c..32c + 32: bits 2(c % 4) of qs[32(c / 4)..] (byte 16 on)
        let q = field2(_mm256_loadu_si256(b.add(16 + 32 * (c / 4)).cast()), 2 * (c % 4) as u32);
        let scales = if c < 4 { row.scales_lo } else { row.scales_hi };
        (q, _mm256_shuffle_epi8(scales, pair_word_idx(c % 4)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(_row: &ScalesMins16Row256, _a: *const u8) -> __m256i {
        _mm256_setzero_si256()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &ScalesMins16Row256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        finish_with_mins256(row.d, row.dmin, row.mins, a, sum, acc)
    }
}

/// i16 lane indices for `vpermw`: lane `l` reads scale `first + l / 16` (Q4_K, Q5_K: 32-element sub-blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scale_index_by_16(first: usize) -> __m512i {
    _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(first as i16), _mm512_set1_epi16(first as i16 + 1))
}

/// i16 lane indices for `vpermw`: lane `l` reads scale `first + l / 8` (16-element sub-blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scale_index_by_8(first: usize) -> __m512i {
    let step = |k: i64| k * 0x0001_0001_0001_0001;
    let base = _mm512_set_epi64(step(3), step(3), step(2), step(2), step(1), step(1), 0, 0);
    _mm512_add_epi16(base, _mm512_set1_epi16(first as i16))
}

/// Per-half i16 shift counts: `lo` for the low 256 bits (elements 0..32 of a chunk), `hi` for the high 256.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn half_counts(lo: usize, hi: usize) -> __m512i {
    _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(lo as i16), _mm512_set1_epi16(hi as i16))
}

/// The 32 bytes at `p` in both 256-bit halves.
///
/// # Safety
/// avx512f; `p` is valid for 32 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load_both_halves(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast()))
}

/// Bit `lo` of every byte in the low half and bit `hi` in the high half, moved to bit 0 (16-bit shifts: bits
/// that cross bytes are masked off).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bit_per_half(v: __m512i, lo: usize, hi: usize) -> __m512i {
    _mm512_and_si512(_mm512_srlv_epi16(v, half_counts(lo, hi)), _mm512_set1_epi8(1))
}

/// The 2-bit field at bits `lo, lo + 1` of every byte in the low half and `hi, hi + 1` in the high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn field2_per_half(v: __m512i, lo: usize, hi: usize) -> __m512i {
    _mm512_and_si512(_mm512_srlv_epi16(v, half_counts(lo, hi)), _mm512_set1_epi8(3))
}

/// The AVX-512 counterpart of [`finish_with_mins256`].
///
/// # Safety
/// avx512f/bw/vl; `a` points at a whole Q8_K block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn finish_with_mins512(d: f32, dmin: f32, mins: __m256i, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
    let da = q8k_d(a);
    let mins = _mm512_zextsi256_si512(_mm256_madd_epi16(bsums(a), mins));
    let acc = _mm512_fmadd_ps(_mm512_set1_ps(d * da), _mm512_cvtepi32_ps(sum), acc);
    _mm512_fnmadd_ps(_mm512_set1_ps(dmin * da), _mm512_cvtepi32_ps(mins), acc)
}

/// Per-row state of a Q4_K or Q5_K super-block on AVX-512.
#[derive(Clone, Copy)]
pub(crate) struct ScalesMins8Row512 {
    d: f32,
    dmin: f32,
    /// The 8 scales as i16 in the low lanes.
    scales: __m512i,
    mins: __m256i,
}

/// The Q4_K/Q5_K header of the block at `b`, for AVX-512.
///
/// # Safety
/// avx512f/bw/vl; `b` points at a whole Q4_K/Q5_K block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prepare_k4_512(b: *const u8) -> ScalesMins8Row512 {
    let (sc, mn) = k4_scales_mins(b);
    ScalesMins8Row512 {
        d: f16_ptr(b),
        dmin: f16_ptr(b.add(2)),
        scales: _mm512_zextsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64))),
        mins: mins_for_bsums(mn),
    }
}

/// Elements `64c..64c + 64` of a Q4_K/Q5_K super-block's low 4 bits: the low nibbles of the 32 bytes at `qs`,
/// then their high nibbles.
///
/// # Safety
/// avx512f/bw; `qs` is valid for 32 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles_low_then_high(qs: *const u8) -> __m512i {
    let bits = load_both_halves(qs);
    _mm512_and_si512(_mm512_srlv_epi16(bits, half_counts(0, 4)), _mm512_set1_epi8(0x0f))
}

impl Avx512Block for Q4K {
    const TY: GgmlType = GgmlType::Q4K;
    type Row = ScalesMins8Row512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> ScalesMins8Row512 {
        prepare_k4_512(b)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &ScalesMins8Row512) -> (__m512i, __m512i) {
        let c = C;
        // elements 64c..64c + 64: the low nibbles of qs[32c..32c + 32], then their high nibbles
        let q = nibbles_low_then_high(b.add(16 + 32 * c));
        (q, _mm512_permutexvar_epi16(scale_index_by_16(2 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(_row: &ScalesMins8Row512, _a: *const u8) -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &ScalesMins8Row512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        finish_with_mins512(row.d, row.dmin, row.mins, a, sum, acc)
    }
}

impl Avx512Block for Q5K {
    const TY: GgmlType = GgmlType::Q5K;
    type Row = ScalesMins8Row512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> ScalesMins8Row512 {
        prepare_k4_512(b)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &ScalesMins8Row512) -> (__m512i, __m512i) {
        let c = C;
        // elements 64c..64c + 64 = sub-blocks 2c, 2c + 1: low 4 bits as Q4_K's (qs at byte 48); bit 4 is bit 2c
        // (low half) or 2c + 1 (high half) of qh[0..32] (byte 16)
        let low = nibbles_low_then_high(b.add(48 + 32 * c));
        let high = bit_per_half(load_both_halves(b.add(16)), 2 * c, 2 * c + 1);
        let q = _mm512_or_si512(low, _mm512_slli_epi16::<4>(high));
        (q, _mm512_permutexvar_epi16(scale_index_by_16(2 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(_row: &ScalesMins8Row512, _a: *const u8) -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &ScalesMins8Row512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        finish_with_mins512(row.d, row.dmin, row.mins, a, sum, acc)
    }
}

/// Per-row state on AVX-512 of a super-block with 16 signed scales and an offset on its quants (Q6_K, Q3_K).
#[derive(Clone, Copy)]
pub(crate) struct Scales16Row512 {
    d: f32,
    /// The 16 scales as i16 in the low lanes.
    scales: __m512i,
    /// `-offset * scale` for the 16 sub-blocks.
    offsets: __m256i,
}

impl Scales16Row512 {
    /// From the 16 i16 scales `s16`, for quants fed to `maddubs` as `q + 2^OFFSET_LOG2`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn new<const OFFSET_LOG2: i32>(d: f32, s16: __m256i) -> Scales16Row512 {
        Scales16Row512 {
            d,
            scales: _mm512_zextsi256_si512(s16),
            offsets: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<OFFSET_LOG2>(s16)),
        }
    }
}

impl Avx512Block for Q6K {
    const TY: GgmlType = GgmlType::Q6K;
    type Row = Scales16Row512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Scales16Row512 {
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
        Scales16Row512::new::<5>(f16_ptr(b.add(208)), s16)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Scales16Row512) -> (__m512i, __m512i) {
        let c = C;
        // chunk c = elements 64c..64c + 64 = groups k = 2(c % 2), 2(c % 2) + 1 of half h = c / 2: low 4 bits are the
        // low (c even) or high (c odd) nibbles of ql[64h..64h + 64]; high 2 bits are qh[32h..32h + 32] at bit 2k
        let h = c / 2;
        let low = _mm512_loadu_si512(b.add(64 * h).cast());
        let low = if c.is_multiple_of(2) { low } else { _mm512_srli_epi16(low, 4) };
        let high = load_both_halves(b.add(128 + 32 * h));
        // move bits 2k, 2k + 1 to bits 4, 5: k = 0, 1 shift left by 4, 2; k = 2, 3 by 0 and right by 2
        let high = if c.is_multiple_of(2) {
            _mm512_sllv_epi16(high, half_counts(4, 2))
        } else {
            _mm512_srlv_epi16(high, half_counts(0, 2))
        };
        let q = _mm512_or_si512(
            _mm512_and_si512(low, _mm512_set1_epi8(0x0f)),
            _mm512_and_si512(high, _mm512_set1_epi8(0x30)),
        );
        (q, _mm512_permutexvar_epi16(scale_index_by_8(4 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(row: &Scales16Row512, a: *const u8) -> __m512i {
        _mm512_zextsi256_si512(_mm256_madd_epi16(bsums(a), row.offsets))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &Scales16Row512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(_mm512_set1_ps(row.d * q8k_d(a)), _mm512_cvtepi32_ps(sum), acc)
    }
}

impl Avx512Block for Q3K {
    const TY: GgmlType = GgmlType::Q3K;
    type Row = Scales16Row512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> Scales16Row512 {
        Scales16Row512::new::<2>(f16_ptr(b.add(108)), q3_k_scales(b))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &Scales16Row512) -> (__m512i, __m512i) {
        let c = C;
        // chunk c = elements 64c..64c + 64 = groups k = 2(c % 2), k + 1 of the 128-element half c / 2: low 2 bits at
        // bits 2k (low half of the vector) and 2k + 2 (high half) of qs[32(c / 2)..]; bit 2 of q + 4 is bit 2c
        // (low half) or 2c + 1 (high half) of hmask[0..32]
        let k = 2 * (c % 2);
        let low = field2_per_half(load_both_halves(b.add(32 + 32 * (c / 2))), 2 * k, 2 * k + 2);
        let high = bit_per_half(load_both_halves(b), 2 * c, 2 * c + 1);
        let q = _mm512_or_si512(low, _mm512_slli_epi16::<2>(high));
        (q, _mm512_permutexvar_epi16(scale_index_by_8(4 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(row: &Scales16Row512, a: *const u8) -> __m512i {
        _mm512_zextsi256_si512(_mm256_madd_epi16(bsums(a), row.offsets))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &Scales16Row512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(_mm512_set1_ps(row.d * q8k_d(a)), _mm512_cvtepi32_ps(sum), acc)
    }
}

/// Per-row state of a Q2_K super-block on AVX-512.
#[derive(Clone, Copy)]
pub(crate) struct ScalesMins16Row512 {
    d: f32,
    dmin: f32,
    /// The 16 scales as i16 in the low lanes.
    scales: __m512i,
    /// The 16 mins as i16, to `madd` with the 16 bsums.
    mins: __m256i,
}

impl Avx512Block for Q2K {
    const TY: GgmlType = GgmlType::Q2K;
    type Row = ScalesMins16Row512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> ScalesMins16Row512 {
        let (s16, mins) = q2_k_scales_mins(b);
        ScalesMins16Row512 {
            d: f16_ptr(b.add(80)),
            dmin: f16_ptr(b.add(82)),
            scales: _mm512_zextsi256_si512(s16),
            mins,
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &ScalesMins16Row512) -> (__m512i, __m512i) {
        let c = C;
        // as Q3_K's low 2 bits, from qs at byte 16
        let k = 2 * (c % 2);
        let q = field2_per_half(load_both_halves(b.add(16 + 32 * (c / 2))), 2 * k, 2 * k + 2);
        (q, _mm512_permutexvar_epi16(scale_index_by_8(4 * c), row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(_row: &ScalesMins16Row512, _a: *const u8) -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &ScalesMins16Row512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        finish_with_mins512(row.d, row.dmin, row.mins, a, sum, acc)
    }
}

/// The `dot_rows` entry points of one format: `$avx2` and `$avx512` run its tiles on each level.
macro_rules! dot_rows_entry_points {
    ($fmt:ty, $name:literal, $avx2:ident, $avx512:ident) => {
        #[doc = concat!("`dot_rows` of ", $name, " rows with Q8_K activations on AVX2.")]
        ///
        /// # Safety
        /// The CPU supports avx2, fma and f16c. (Lengths are checked.)
        pub(crate) unsafe fn $avx2(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) {
            k_tiles::dot_rows::<OnAvx2<$fmt>, { AVX2_TILE.0 }, { AVX2_TILE.1 }, { AVX2_TILE.2 }>(
                n, w, rows, acts, n_tokens, out,
            )
        }

        #[doc = concat!("`dot_rows` of ", $name, " rows with Q8_K activations on AVX-512 VNNI.")]
        ///
        /// # Safety
        /// The CPU supports avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c. (Lengths are checked.)
        pub(crate) unsafe fn $avx512(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) {
            k_tiles::dot_rows::<OnAvx512<$fmt>, { AVX512_TILE.0 }, { AVX512_TILE.1 }, { AVX512_TILE.2 }>(
                n, w, rows, acts, n_tokens, out,
            )
        }
    };
}

dot_rows_entry_points!(Q2K, "Q2_K", dot_rows_q2_k_avx2, dot_rows_q2_k_avx512);
dot_rows_entry_points!(Q3K, "Q3_K", dot_rows_q3_k_avx2, dot_rows_q3_k_avx512);
dot_rows_entry_points!(Q4K, "Q4_K", dot_rows_q4_k_avx2, dot_rows_q4_k_avx512);
dot_rows_entry_points!(Q5K, "Q5_K", dot_rows_q5_k_avx2, dot_rows_q5_k_avx512);
dot_rows_entry_points!(Q6K, "Q6_K", dot_rows_q6_k_avx2, dot_rows_q6_k_avx512);

/// One row's dot with Q8_K activations on AVX2 (a 1 x 1 tile: the same code path as `dot_rows`), for the
/// single-row kernel tests.
///
/// # Safety
/// The CPU supports avx2, fma and f16c.
#[cfg(test)]
pub(crate) unsafe fn dot_one_avx2<F: Avx2Block>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut out = [0f32];
    k_tiles::dot_rows::<OnAvx2<F>, 1, 1, 1>(n, w, 1, act, 1, &mut out);
    out[0]
}

/// The same on AVX-512 VNNI.
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[cfg(test)]
pub(crate) unsafe fn dot_one_avx512<F: Avx512Block>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut out = [0f32];
    k_tiles::dot_rows::<OnAvx512<F>, 1, 1, 1>(n, w, 1, act, 1, &mut out);
    out[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iq4::IQ4_XS;
    use crate::k_quants::{dot_rows_scalar, KCodec, Q8K_QS, QK_K};
    use crate::test_data::{assert_close, f16_bytes, TestRng};
    use crate::x86::k_tiles::Q8K_BYTES;
    use crate::{cpu_has_avx512_vnni, quant_format};

    type Kernel = unsafe fn(usize, &[u8], usize, &[u8], usize, &mut [f32]);

    /// The formats with tiled kernels.
    const FORMATS: [GgmlType; 6] =
        [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::IQ4_XS];

    /// One SIMD level's `dot_rows` for every format in [`FORMATS`] (same order).
    struct Level {
        name: &'static str,
        kernels: [Kernel; 6],
    }

    fn scalar<C: KCodec>(n: usize, w: &[u8], rows: usize, a: &[u8], t: usize, out: &mut [f32]) {
        dot_rows_scalar::<C>(n, w, rows, a, t, out)
    }

    /// Every level this CPU runs, scalar first, printing each one that is skipped because the CPU lacks it.
    fn levels() -> Vec<Level> {
        let mut out = vec![Level {
            name: "scalar",
            kernels: [scalar::<Q2K>, scalar::<Q3K>, scalar::<Q4K>, scalar::<Q5K>, scalar::<Q6K>, scalar::<IQ4_XS>],
        }];
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            out.push(Level {
                name: "avx2",
                kernels: [
                    dot_rows_q2_k_avx2,
                    dot_rows_q3_k_avx2,
                    dot_rows_q4_k_avx2,
                    dot_rows_q5_k_avx2,
                    dot_rows_q6_k_avx2,
                    crate::x86::iq4::dot_rows_iq4_xs_avx2,
                ],
            });
            if cpu_has_avx512_vnni() {
                out.push(Level {
                    name: "avx512-vnni",
                    kernels: [
                        dot_rows_q2_k_avx512,
                        dot_rows_q3_k_avx512,
                        dot_rows_q4_k_avx512,
                        dot_rows_q5_k_avx512,
                        dot_rows_q6_k_avx512,
                        crate::x86::iq4::dot_rows_iq4_xs_avx512,
                    ],
                });
            } else {
                println!("skipping avx512-vnni: not supported by this CPU");
            }
        } else {
            println!("skipping avx2 and avx512-vnni: not supported by this CPU");
        }
        let names: Vec<_> = out.iter().map(|l| l.name).collect();
        // a CPU with the feature must run its level: nothing above may quietly drop it
        assert_eq!(names.contains(&"avx512-vnni"), cpu_has_avx512_vnni() && names.contains(&"avx2"));
        println!("k-quant dot_rows levels run: {names:?}");
        out
    }

    fn kernel(level: &Level, ty: GgmlType) -> Kernel {
        let i = FORMATS.iter().position(|&f| f == ty).expect("a format with tiles");
        level.kernels[i]
    }

    /// Byte offsets of the f16 super-scales (`d`, and `dmin` where the format has mins) in one block.
    fn super_scale_offsets(ty: GgmlType) -> &'static [usize] {
        match ty {
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::IQ4_XS => &[0],
            _ => &[208],
        }
    }

    /// Random weight rows: random quant and scale bytes; super-scales unit (`unit`) or small random values.
    fn weights(rng: &mut TestRng, ty: GgmlType, rows: usize, n: usize, unit: bool) -> Vec<u8> {
        let mut w = rng.bytes(rows * ty.row_bytes(n).unwrap());
        for b in w.chunks_exact_mut(ty.type_size()) {
            for &o in super_scale_offsets(ty) {
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
        // the mins (Q2_K, Q4_K, Q5_K) are a separate product: count them too
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

    #[test]
    fn q3_k_scales_packed_matches_the_decoder() {
        let mut rng = TestRng::new(12);
        for i in 0..2000 {
            let q: [u8; 12] = match i {
                0 => [0; 12],
                1 => [0xff; 12],
                _ => std::array::from_fn(|_| rng.next_u64() as u8),
            };
            let got = q3_k_scales_packed(&q).map(|v| v as i16 - 32);
            assert_eq!(got, crate::k_quants::scales_q3_k(&q), "{q:?}");
        }
    }

    /// Unit super-scales, one block: every result is the exact integer sum, so each level must equal scalar
    /// exactly, in every tile shape. Includes blocks of extreme quants and scales.
    #[test]
    fn dot_rows_integer_sums_equal_scalar_at_every_level() {
        let levels = levels();
        for ty in FORMATS {
            let mut rng = TestRng::new(500 + ty.id() as u64);
            let scalar = kernel(&levels[0], ty);
            for case in 0..40 {
                let (rows, tokens) = (1 + case % 9, 1 + case % 11);
                let mut w = weights(&mut rng, ty, rows, QK_K, true);
                let mut a = activations(&mut rng, QK_K, tokens, true);
                if case >= 36 {
                    // all-ones bytes: largest quants, scales and mins; all-zero bytes: Q3_K's most negative
                    // quants (-4) and scales (-32). Activations all +-127.
                    w.fill(if case < 38 { 0xff } else { 0x00 });
                    for b in w.chunks_exact_mut(ty.type_size()) {
                        for &o in super_scale_offsets(ty) {
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
        for ty in FORMATS {
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
    /// bit for bit, for weights quantized from real-shaped data, and equals the kernel of the level it dispatches
    /// to (so these formats do run their tiles).
    #[test]
    fn format_dot_rows_equals_vec_dot_bitwise() {
        let levels = levels();
        for ty in FORMATS {
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
                let dispatched = match crate::simd_level() {
                    crate::SimdLevel::Avx512 if crate::has_avx512_vnni() => "avx512-vnni",
                    level if level >= crate::SimdLevel::Avx2 => "avx2",
                    _ => "scalar",
                };
                let level = levels.iter().find(|l| l.name == dispatched).expect("the dispatched level is listed");
                let want = run(kernel(level, ty), n, &w, rows, &a, tokens);
                assert_eq!(
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{ty} n={n}: dot_rows is not the {dispatched} kernel"
                );
            }
            println!("{ty}: dot_rows == vec_dot bitwise, and == the {} kernel", crate::simd_level());
        }
    }
}
