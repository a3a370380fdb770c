//! x86-64 kernels: AVX2 (+FMA, F16C) everywhere, and AVX-512 VNNI tiles for the formats the models use
//! (`legacy_tiles`: Q8_0 Q5_0 Q4_0 Q4_1 Q5_1; `k_tiles`: Q2_K Q3_K Q4_K Q5_K Q6_K; `interleaved`: Q8_0 Q5_0
//! Q4_0 Q4_1 Q5_1 IQ4_NL repacked with 16 rows interleaved; `interleaved_k`: Q4_K Q5_K Q6_K IQ4_XS Q2_K Q3_K likewise; `iq4`:
//! IQ4_NL on the legacy tiles, IQ4_XS on the k-quant tiles, for GGML's layout), gemma.cpp's formats
//! (`sbs_dots`) and AVX-512 BF16 tiles (`bf16_tile`). Each has a scalar twin in its format's module; the tests
//! beside each kernel check it against the twin at every SIMD level the CPU reports.
//!
//! Every kernel is an `unsafe fn` whose safety requirement is the CPU feature set it is compiled for; slice
//! lengths are checked before any raw load.

pub(crate) mod activations;
pub(crate) mod bf16_tile;
pub(crate) mod float_panels;
pub(crate) mod float_tiles;
pub(crate) mod interleaved;
pub(crate) mod interleaved_k;
pub(crate) mod iq4;
pub(crate) mod k_quants;
pub(crate) mod k_tiles;
pub(crate) mod legacy;
pub(crate) mod legacy_tiles;
pub(crate) mod sbs_dots;

use std::arch::x86_64::*;

/// The little-endian f16 at the start of `b`, converted with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(b: &[u8]) -> f32 {
    let bits = u16::from_le_bytes([b[0], b[1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32x8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Products of 32 unsigned bytes `u` (0..=255, here at most 128) with 32 signed bytes `y`, summed in groups of
/// four into 8 i32 lanes. Pair sums stay within i16 because |u| <= 128 and |y| <= 127.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(u: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1))
}

/// Asks for every cache line of the `bytes` bytes at `p` (a hint: addresses past the data are harmless).
#[inline(always)]
fn prefetch_lines(p: *const u8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line).cast()) };
    }
}

#[cfg(test)]
mod tests;
