//! IQ4_NL and IQ4_XS on the existing tiles: a byte-table lookup (`pshufb` / 512-bit `vpshufb`, the 16 table
//! values fit one 128-bit lane) turns the 4-bit indices into the int8 values, then the integer dots are those
//! of Q8_0 / Q4_K.
//! - IQ4_NL is a [`TiledBlock`] with signed quants, like Q8_0: AVX2 moves the weight's sign onto the Q8_0
//!   activations, VNNI takes `q + 128` (a second table) and starts each lane at `-128 * sum(a)`.
//! - IQ4_XS is an [`Avx2Block`] / [`Avx512Block`] with signed quants ([`Avx2Block::SIGNED`]) and eight
//!   signed sub-block scales (`ls - 32`), no mins: each super-block adds `d * d_a * sum` in f32, as the scalar
//!   twin.

use std::arch::x86_64::*;

use super::k_quants::f16_ptr;
use super::k_tiles::{self, q8k_d, Avx2Block, Avx512Block, OnAvx2, OnAvx512};
use super::legacy_tiles::{nibbles, nibbles_pair, TiledBlock};
use crate::iq4::{xs_scale, IQ4_NL, IQ4_XS, KVALUES};
use crate::GgmlType;

/// Rows x tokens of the full tiles and rows of the decode tiles: the Q4_K shapes (same register budget).
const AVX2_TILE: (usize, usize, usize) = (2, 4, 2);
const AVX512_TILE: (usize, usize, usize) = (2, 4, 4);

/// The table as 16 bytes, plus `bias` (wrapping) on each.
fn table_bytes(bias: u8) -> [u8; 16] {
    KVALUES.map(|v| (v as u8).wrapping_add(bias))
}

/// The table in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn table256() -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(table_bytes(0).as_ptr().cast()))
}

/// The table plus `bias` in all four 128-bit lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn table512(bias: u8) -> __m512i {
    _mm512_broadcast_i32x4(_mm_loadu_si128(table_bytes(bias).as_ptr().cast()))
}

impl TiledBlock for IQ4_NL {
    const W_BYTES: usize = 18;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: bool = false;
    const BIAS: u8 = 128;
    const SIGNED: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(b: *const u8) -> __m256i {
        _mm256_shuffle_epi8(table256(), nibbles(b.add(2)))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn quants_pair_vnni(a: *const u8, b: *const u8) -> __m512i {
        _mm512_shuffle_epi8(table512(128), nibbles_pair(a.add(2), b.add(2)))
    }
}

/// The eight sub-block scales `ls - 32` of the IQ4_XS block at `b`, as i16.
///
/// # Safety
/// `b` points at a whole IQ4_XS block.
#[inline(always)]
unsafe fn xs_scales(b: *const u8) -> [i16; 8] {
    let head = std::slice::from_raw_parts(b, 8);
    std::array::from_fn(|ib| xs_scale(head, ib) as i16 - 32)
}

/// Per-row state of an IQ4_XS super-block on AVX2.
#[derive(Clone, Copy)]
pub(crate) struct XsRow256 {
    d: f32,
    /// The 8 scales as i16, repeated in both 128-bit lanes.
    scales: __m256i,
}

impl Avx2Block for IQ4_XS {
    const TY: GgmlType = GgmlType::IQ4_XS;
    const SIGNED: bool = true;
    type Row = XsRow256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> XsRow256 {
        let sc = xs_scales(b);
        XsRow256 { d: f16_ptr(b), scales: _mm256_broadcastsi128_si256(_mm_loadu_si128(sc.as_ptr().cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &XsRow256) -> (__m256i, __m256i) {
        // sub-block C: the 16 index bytes at qs[16C] (byte 8 of the block), low nibbles first
        let q = _mm256_shuffle_epi8(table256(), nibbles(b.add(8 + 16 * C)));
        let lo = (2 * C) as i16;
        (q, _mm256_shuffle_epi8(row.scales, _mm256_set1_epi16(lo | ((lo + 1) << 8))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn start(_row: &XsRow256, _a: *const u8) -> __m256i {
        _mm256_setzero_si256()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(row: &XsRow256, a: *const u8, sum: __m256i, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(_mm256_set1_ps(row.d * q8k_d(a)), _mm256_cvtepi32_ps(sum), acc)
    }
}

/// Per-row state of an IQ4_XS super-block on AVX-512.
#[derive(Clone, Copy)]
pub(crate) struct XsRow512 {
    d: f32,
    /// The 8 scales as i16 in the low lanes.
    scales: __m512i,
}

impl Avx512Block for IQ4_XS {
    const TY: GgmlType = GgmlType::IQ4_XS;
    const SIGNED: bool = true;
    type Row = XsRow512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prepare(b: *const u8) -> XsRow512 {
        let sc = xs_scales(b);
        XsRow512 { d: f16_ptr(b), scales: _mm512_zextsi128_si512(_mm_loadu_si128(sc.as_ptr().cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const C: usize>(b: *const u8, row: &XsRow512) -> (__m512i, __m512i) {
        // sub-blocks 2C, 2C + 1: 128-bit lanes [A, A, B, B] of the 32 index bytes [A, B] at qs[32C], the odd
        // lanes shifted to their high nibbles
        let ab = _mm512_castsi256_si512(_mm256_loadu_si256(b.add(8 + 32 * C).cast()));
        let x = _mm512_shuffle_i64x2::<0b01_01_00_00>(ab, ab);
        let x = _mm512_mask_blend_epi64(0b1100_1100, x, _mm512_srli_epi16::<4>(x));
        let idx = _mm512_and_si512(x, _mm512_set1_epi8(0x0f));
        let q = _mm512_shuffle_epi8(table512(0), idx);
        // i16 lanes 0..16 take scale 2C, lanes 16..32 scale 2C + 1
        let first = (2 * C) as i16;
        let sidx = _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(first), _mm512_set1_epi16(first + 1));
        (q, _mm512_permutexvar_epi16(sidx, row.scales))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn start(_row: &XsRow512, _a: *const u8) -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn finish(row: &XsRow512, a: *const u8, sum: __m512i, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(_mm512_set1_ps(row.d * q8k_d(a)), _mm512_cvtepi32_ps(sum), acc)
    }
}

/// `dot_rows` of IQ4_XS rows with Q8_K activations on AVX2.
///
/// # Safety
/// The CPU supports avx2, fma and f16c. (Lengths are checked.)
pub(crate) unsafe fn dot_rows_iq4_xs_avx2(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    k_tiles::dot_rows::<OnAvx2<IQ4_XS>, { AVX2_TILE.0 }, { AVX2_TILE.1 }, { AVX2_TILE.2 }>(
        n, w, rows, acts, n_tokens, out,
    )
}

/// `dot_rows` of IQ4_XS rows with Q8_K activations on AVX-512 VNNI.
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c. (Lengths are checked.)
pub(crate) unsafe fn dot_rows_iq4_xs_avx512(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    k_tiles::dot_rows::<OnAvx512<IQ4_XS>, { AVX512_TILE.0 }, { AVX512_TILE.1 }, { AVX512_TILE.2 }>(
        n, w, rows, acts, n_tokens, out,
    )
}

/// IQ4_NL x Q8_0, one row and one token on the tiles at `level` (what `vec_dot` runs), for the
/// kernel-versus-scalar tests.
///
/// # Safety
/// The CPU supports `level`.
#[cfg(test)]
unsafe fn dot_one_nl(level: super::legacy_tiles::TileLevel, n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut out = [0.0f32];
    super::legacy_tiles::dot_rows::<IQ4_NL>(level, n, w, 1, act, 1, &mut out);
    out[0]
}

/// [`dot_one_nl`] on AVX2. # Safety: the CPU supports avx2, fma and f16c.
#[cfg(test)]
pub(crate) unsafe fn dot_one_nl_avx2(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_one_nl(super::legacy_tiles::TileLevel::Avx2, n, w, act)
}

/// [`dot_one_nl`] on AVX-512 VNNI. # Safety: the CPU supports the VNNI tiles' features (avx512f/bw/vl/vnni,
/// bmi2, avx2, fma, f16c).
#[cfg(test)]
pub(crate) unsafe fn dot_one_nl_vnni(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_one_nl(super::legacy_tiles::TileLevel::Vnni, n, w, act)
}
