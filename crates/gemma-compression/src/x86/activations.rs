//! AVX2 activation quantizers (Q8_0, Q8_1, Q8_K) and the Q8_0 row decoder (embedding lookups). The quantizers
//! produce the same bytes as their scalar twins: the same f32 operations in the same order per element, and
//! the same rounding rule (ties away from zero for Q8_0/Q8_1, ties to even for Q8_K).

use std::arch::x86_64::*;

use super::{f16_at, hsum_i32x8};
use crate::k_quants::{Q8K_BSUMS, Q8K_QS};
use crate::{put_f16_le, GgmlType};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8(x: &[f32]) -> __m256 {
    let x = &x[..8];
    _mm256_loadu_ps(x.as_ptr())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_f32x8(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_f32x8(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// Largest |x| over `x` (a multiple of 8 long).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn amax(x: &[f32]) -> f32 {
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        m = _mm256_max_ps(m, abs_f32x8(load_f32x8(c)));
    }
    hmax_f32x8(m)
}

/// `roundf` per lane: truncate, then step away from zero when the dropped fraction is at least one half
/// (`v - trunc(v)` is exact, so this matches roundf bit for bit).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_away_f32x8(v: __m256) -> __m256 {
    let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    let frac = abs_f32x8(_mm256_sub_ps(v, t));
    let step = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0)), _mm256_set1_ps(1.0));
    let up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5), _CMP_GE_OQ);
    _mm256_add_ps(t, _mm256_and_ps(up, step))
}

/// Packs four vectors of 8 i32 (each within i8 range) into 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32x32(q: [__m256i; 4]) -> __m256i {
    // packs work per 128-bit lane, leaving the dwords of the four inputs interleaved; permute restores order
    let w01 = _mm256_packs_epi32(q[0], q[1]);
    let w23 = _mm256_packs_epi32(q[2], q[3]);
    let b = _mm256_packs_epi16(w01, w23);
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_32(v: __m256i, out: &mut [u8]) {
    let out = &mut out[..32];
    _mm256_storeu_si256(out.as_mut_ptr().cast(), v);
}

/// One Q8_0/Q8_1 block's quants into `qs`; returns (d, sum of quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_q8(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let d = amax(&x[..32]) / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for (k, v) in q.iter_mut().enumerate() {
        *v = _mm256_cvttps_epi32(round_away_f32x8(_mm256_mul_ps(load_f32x8(&x[8 * k..]), id)));
    }
    let sum = hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    store_32(pack_i32x32(q), qs);
    (d, sum)
}

/// # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(GgmlType::Q8_0.type_size())) {
        let (d, _) = quantize_block_q8(x, &mut b[2..]);
        put_f16_le(b, d);
    }
}

/// # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(GgmlType::Q8_1.type_size())) {
        let (d, sum) = quantize_block_q8(x, &mut b[4..]);
        put_f16_le(b, d);
        put_f16_le(&mut b[2..], sum as f32 * d);
    }
}

/// # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(256).zip(dst.chunks_exact_mut(GgmlType::Q8K.type_size())) {
        let amax = amax(x);
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        // the signed value of the first element with |x| == amax, as the scalar scan picks it
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for (k, c) in x.chunks_exact(8).enumerate() {
            let hits = _mm256_movemask_ps(_mm256_cmp_ps(abs_f32x8(load_f32x8(c)), target, _CMP_EQ_OQ));
            if hits != 0 {
                max = x[8 * k + hits.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let vscale = _mm256_set1_ps(iscale);
        let (qs, rest) = b[Q8K_QS..].split_at_mut(Q8K_BSUMS - Q8K_QS);
        let top = _mm256_set1_epi32(127);
        for (g, (xc, qc)) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, v) in q.iter_mut().enumerate() {
                let scaled = _mm256_mul_ps(load_f32x8(&xc[8 * k..]), vscale);
                let rounded = _mm256_round_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                *v = _mm256_min_epi32(_mm256_cvtps_epi32(rounded), top);
            }
            let s0 = hsum_i32x8(_mm256_add_epi32(q[0], q[1])) as i16;
            let s1 = hsum_i32x8(_mm256_add_epi32(q[2], q[3])) as i16;
            rest[4 * g..4 * g + 2].copy_from_slice(&s0.to_le_bytes());
            rest[4 * g + 2..4 * g + 4].copy_from_slice(&s1.to_le_bytes());
            store_32(pack_i32x32(q), qc);
        }
        b[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(GgmlType::Q8_0.type_size()).zip(dst.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(b));
        let qs = &b[2..34];
        let out = &mut out[..32];
        for k in 0..4 {
            let bytes = _mm_loadl_epi64(qs[8 * k..8 * k + 8].as_ptr().cast());
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), d);
            _mm256_storeu_ps(out[8 * k..8 * k + 8].as_mut_ptr(), v);
        }
    }
}
