//! AVX2 dots of the 32-element block formats with Q8_0 / Q8_1 activations. One block is one 256-bit vector
//! of quants; its integer dot goes into 8 i32 lanes, is scaled by `d_w * d_a` and accumulated in f32 lanes.

use std::arch::x86_64::*;

use super::{dot_i8, dot_u8_i8, f16_at, hsum_f32x8, load_16, load_32};
use crate::GgmlType;

/// The 32 nibbles of 16 packed bytes in element order (element j low nibble of byte j, j + 16 high nibble).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: &[u8]) -> __m256i {
    let b = load_16(qs);
    let m = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(b, m);
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// 0x10 in byte j where bit j of the little-endian u32 at `qh` is set, else 0 (bit 4 of the 5-bit quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits(qh: &[u8]) -> __m256i {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    // byte j takes byte j / 8 of `bits`, then keeps only bit j % 8
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Shared block loop: `quants(w_block)` gives the block's quants and whether they are unsigned; offset formats
/// also add `m * s` per block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_blocks(
    ty: GgmlType,
    act_ty: GgmlType,
    n: usize,
    w: &[u8],
    act: &[u8],
    quants: impl Fn(&[u8]) -> __m256i,
    unsigned: bool,
) -> f32 {
    let nb = n / 32;
    let (wsize, asize) = (ty.type_size(), act_ty.type_size());
    let (w, act) = (&w[..nb * wsize], &act[..nb * asize]);
    let offset = act_ty == GgmlType::Q8_1;
    let a_qs = if offset { 4 } else { 2 };
    let mut acc = _mm256_setzero_ps();
    let mut acc_offset = 0.0f32;
    for (wb, ab) in w.chunks_exact(wsize).zip(act.chunks_exact(asize)) {
        let x = quants(wb);
        let y = load_32(&ab[a_qs..]);
        let sum = if unsigned {
            dot_u8_i8(x, y)
        } else {
            dot_i8(x, y)
        };
        let d = _mm256_set1_ps(f16_at(wb) * f16_at(ab));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc);
        if offset {
            acc_offset += f16_at(&wb[2..]) * f16_at(&ab[2..]);
        }
    }
    hsum_f32x8(acc) + acc_offset
}

/// Q8_0 x Q8_0. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q8_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_blocks(
        GgmlType::Q8_0,
        GgmlType::Q8_0,
        n,
        w,
        act,
        |b| load_32(&b[2..]),
        false,
    )
}

/// Q4_0 x Q8_0: nibbles - 8. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let quants = |b: &[u8]| _mm256_sub_epi8(nibbles(&b[2..18]), _mm256_set1_epi8(8));
    dot_blocks(GgmlType::Q4_0, GgmlType::Q8_0, n, w, act, quants, false)
}

/// Q5_0 x Q8_0: (nibbles | bit4) - 16. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q5_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let quants = |b: &[u8]| {
        _mm256_sub_epi8(
            _mm256_or_si256(nibbles(&b[6..22]), high_bits(&b[2..6])),
            _mm256_set1_epi8(16),
        )
    };
    dot_blocks(GgmlType::Q5_0, GgmlType::Q8_0, n, w, act, quants, false)
}

/// Q4_1 x Q8_1: unsigned nibbles, plus m * s. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_1(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_blocks(
        GgmlType::Q4_1,
        GgmlType::Q8_1,
        n,
        w,
        act,
        |b| nibbles(&b[4..20]),
        true,
    )
}

/// Q5_1 x Q8_1: unsigned nibbles | bit4, plus m * s. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q5_1(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let quants = |b: &[u8]| _mm256_or_si256(nibbles(&b[8..24]), high_bits(&b[4..8]));
    dot_blocks(GgmlType::Q5_1, GgmlType::Q8_1, n, w, act, quants, true)
}
