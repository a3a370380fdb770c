//! AVX2 dots of Q4_K and Q6_K with Q8_K activations. Per super-block the integer products go through
//! `maddubs` (unsigned quants x signed activations) and `madd` with the sub-block scale, into 8 i32 lanes that
//! are scaled by `d_w * d_a` into f32 lanes; the mins / +32 offsets are applied through Q8_K's bsums.

use std::arch::x86_64::*;

use super::{f16_at, hsum_f32x8, load_16, load_32};
use crate::k_quants::{scales_mins_k4, Q8K_BSUMS, Q8K_QS};
use crate::GgmlType;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_at(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Slices `w` and `act` to exactly the super-blocks of an `n`-element row (panics if either is short).
fn rows<'a>(ty: GgmlType, n: usize, w: &'a [u8], act: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    let nb = n / 256;
    (
        &w[..nb * ty.type_size()],
        &act[..nb * GgmlType::Q8K.type_size()],
    )
}

/// Q4_K x Q8_K. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let (w, act) = rows(GgmlType::Q4K, n, w, act);
    let low4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut acc_mins = 0.0f32;
    for (wb, ab) in w
        .chunks_exact(GgmlType::Q4K.type_size())
        .zip(act.chunks_exact(GgmlType::Q8K.type_size()))
    {
        let da = f32_at(ab);
        let (sc, mn) = scales_mins_k4(&wb[4..16]);
        // mins: sum over sub-blocks j of min[j] * (bsum[2j] + bsum[2j+1])
        let bsums = &ab[Q8K_BSUMS..];
        let mut summs = 0i32;
        for (j, &m) in mn.iter().enumerate() {
            let b0 = i16::from_le_bytes([bsums[4 * j], bsums[4 * j + 1]]) as i32;
            let b1 = i16::from_le_bytes([bsums[4 * j + 2], bsums[4 * j + 3]]) as i32;
            summs += m as i32 * (b0 + b1);
        }
        let qs = &wb[16..144];
        let q8 = &ab[Q8K_QS..Q8K_BSUMS];
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let bits = load_32(&qs[32 * c..]);
            let lo = _mm256_and_si256(bits, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
            let p_lo = _mm256_maddubs_epi16(lo, load_32(&q8[64 * c..]));
            let p_hi = _mm256_maddubs_epi16(hi, load_32(&q8[64 * c + 32..]));
            let s_lo = _mm256_madd_epi16(p_lo, _mm256_set1_epi16(sc[2 * c] as i16));
            let s_hi = _mm256_madd_epi16(p_hi, _mm256_set1_epi16(sc[2 * c + 1] as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(s_lo, s_hi));
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(wb) * da),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
        acc_mins += (f16_at(&wb[2..]) * da) * summs as f32;
    }
    hsum_f32x8(acc) - acc_mins
}

/// Q6_K x Q8_K. Quants are used unsigned (0..63) and the +32 bias is removed as 32 * sum(scale * bsum).
/// # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q6_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let (w, act) = rows(GgmlType::Q6K, n, w, act);
    let low4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (wb, ab) in w
        .chunks_exact(GgmlType::Q6K.type_size())
        .zip(act.chunks_exact(GgmlType::Q8K.type_size()))
    {
        let (ql, qh, scales) = (&wb[..128], &wb[128..192], &wb[192..208]);
        let q8 = &ab[Q8K_QS..Q8K_BSUMS];
        let scales16 = _mm256_cvtepi8_epi16(load_16(scales));
        let bias = _mm256_slli_epi32(_mm256_madd_epi16(load_32(&ab[Q8K_BSUMS..]), scales16), 5);
        let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), bias);
        for half in 0..2 {
            let l0 = load_32(&ql[64 * half..]);
            let l1 = load_32(&ql[64 * half + 32..]);
            let h = load_32(&qh[32 * half..]);
            // element groups of 32 within this half: low nibbles of l0, of l1, high nibbles of l0, of l1,
            // with 2 high bits each from h at shifts 0, 2, 4, 6
            let groups = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, low4),
                    _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x03)), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, low4),
                    _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x0c)), 2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                    _mm256_and_si256(h, _mm256_set1_epi8(0x30)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                    _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0xc0u8 as i8)), 2),
                ),
            ];
            for (k, q) in groups.into_iter().enumerate() {
                let g = 4 * half + k; // 32-element group = sub-blocks 2g and 2g + 1
                let p = _mm256_maddubs_epi16(q, load_32(&q8[32 * g..]));
                let s = _mm256_set_m128i(
                    _mm_set1_epi16(scales[2 * g + 1] as i8 as i16),
                    _mm_set1_epi16(scales[2 * g] as i8 as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(&wb[208..]) * f32_at(ab)),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_f32x8(acc)
}
