//! Kernels of [`crate::interleaved`]: AVX-512 VNNI (16 rows per integer dot) and AVX2 (two halves of 8), for
//! Q8_0 and Q5_0. Both compute each row's block sums exactly and add them as the scalar twin
//! `dot_groups_scalar` does, `acc = fma(d_w * d_a, sum, acc)` in block order, so all three agree bit for bit.

use std::arch::x86_64::*;

use crate::interleaved::{InterleavedActs, InterleavedFormat, ROW_GROUP};

/// Checks the slice lengths every kernel relies on; returns (groups, tile width).
fn check(format: InterleavedFormat, w: &[u8], blocks: usize, acts: &InterleavedActs, tile: &[f32]) -> (usize, usize) {
    let group_bytes = blocks * format.group_block_bytes();
    assert!(group_bytes > 0 && w.len().is_multiple_of(group_bytes), "whole groups");
    let groups = w.len() / group_bytes;
    let width = groups * ROW_GROUP;
    let n = acts.n_tokens * blocks;
    assert!(acts.d.len() >= n && acts.sum.len() >= n && acts.qs.len() >= 32 * n, "activations");
    assert_eq!(tile.len(), acts.n_tokens * width, "tile");
    (groups, width)
}

/// How far ahead of the block being read one token's product asks for the weights. With one token the
/// product streams the matrix at memory speed and the hardware prefetcher alone leaves bandwidth unused.
pub(crate) const PREFETCH_AHEAD: usize = 8 * 1024;

/// Runs `$kernel::<Q5, T>` over every group and every chunk of up to `$max` tokens.
macro_rules! over_groups {
    ($format:expr, $w:expr, $blocks:expr, $acts:expr, $tile:expr, $kernel:ident, [$($t:literal),*], $max:literal) => {{
        let (groups, width) = check($format, $w, $blocks, $acts, $tile);
        let gbb = $format.group_block_bytes();
        for g in 0..groups {
            let gw = $w.as_ptr().add(g * $blocks * gbb);
            let out = $tile.as_mut_ptr().add(g * ROW_GROUP);
            let mut t0 = 0;
            while t0 < $acts.n_tokens {
                let left = ($acts.n_tokens - t0).min($max);
                // SAFETY (every arm): `check` sized the group, the activations and the tile for these tokens.
                t0 += match ($format, left) {
                    $((InterleavedFormat::Q8_0, $t) => $kernel::<false, $t>(gw, $blocks, $acts, t0, out, width),)*
                    $((InterleavedFormat::Q5_0, $t) => $kernel::<true, $t>(gw, $blocks, $acts, t0, out, width),)*
                    _ => unreachable!("token chunks are 1..={}", $max),
                };
            }
        }
    }};
}

/// # Safety
/// The CPU supports AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn dot_groups_vnni(
    format: InterleavedFormat,
    w: &[u8],
    blocks: usize,
    acts: &InterleavedActs,
    tile: &mut [f32],
) {
    over_groups!(format, w, blocks, acts, tile, group_vnni, [1, 2, 3, 4, 5, 6, 7, 8], 8);
}

/// The 64 quants of dword `k` of the 16 rows of a group block, as unsigned bytes (`q + 128` for Q8_0,
/// `q + 16` for Q5_0).
///
/// # Safety
/// As [`group_vnni`]; `blk` is a whole group block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unsigned_quants_vnni<const Q5: bool>(blk: *const u8, k: usize) -> __m512i {
    if Q5 {
        let run = blk.add(2 * ROW_GROUP + 40 * k);
        let nib = _mm256_loadu_si256(run.cast());
        let m = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(nib, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(nib), m);
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let fifth: __mmask64 = run.add(32).cast::<u64>().read_unaligned();
        _mm512_mask_add_epi8(v, fifth, v, _mm512_set1_epi8(16))
    } else {
        let q = _mm512_loadu_si512(blk.add(2 * ROW_GROUP + 64 * k).cast());
        _mm512_xor_si512(q, _mm512_set1_epi8(0x80u8 as i8))
    }
}

/// One group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`dot_groups_vnni`]; `gw` is a whole group, the tokens exist and `out` has `T` rows of `width` from it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_vnni<const Q5: bool, const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: &InterleavedActs,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let (gbb, bias) = if Q5 {
        (InterleavedFormat::Q5_0.group_block_bytes(), -16)
    } else {
        (InterleavedFormat::Q8_0.group_block_bytes(), -128)
    };
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        let mut wq = [_mm512_setzero_si512(); 8];
        for (k, q) in wq.iter_mut().enumerate() {
            *q = unsigned_quants_vnni::<Q5>(blk, k);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let i = (t0 + t) * blocks + b;
            let qa = acts.qs.as_ptr().add(32 * i).cast::<i32>();
            // the unsigned quants' offset times the activations, taken back out
            let mut sum = _mm512_set1_epi32(bias * *acts.sum.get_unchecked(i));
            for (k, q) in wq.iter().enumerate() {
                sum = _mm512_dpbusd_epi32(sum, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
            }
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(*acts.d.get_unchecked(i)));
            *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), *acc);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add((t0 + t) * width), *acc);
    }
    T
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_groups_avx2(
    format: InterleavedFormat,
    w: &[u8],
    blocks: usize,
    acts: &InterleavedActs,
    tile: &mut [f32],
) {
    over_groups!(format, w, blocks, acts, tile, group_avx2, [1, 2, 3, 4], 4);
}

/// The 32 quants of dword `k` of rows `8 h..8 h + 8` of a group block: Q8_0 signed, Q5_0 as `q + 16`.
///
/// # Safety
/// As [`group_avx2`]; `blk` is a whole group block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_quants_avx2<const Q5: bool>(blk: *const u8, k: usize, h: usize) -> __m256i {
    if Q5 {
        let run = blk.add(2 * ROW_GROUP + 40 * k);
        let nib = _mm256_loadu_si256(run.cast());
        let m = _mm256_set1_epi8(0x0f);
        let v = if h == 0 { _mm256_and_si256(nib, m) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(nib), m) };
        // the 32 fifth bits of these values, one per byte: 16 where set
        let bits = _mm256_set1_epi32(run.add(32 + 4 * h).cast::<i32>().read_unaligned());
        let spread = _mm256_shuffle_epi8(
            bits,
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(16)))
    } else {
        _mm256_loadu_si256(blk.add(2 * ROW_GROUP + 64 * k + 32 * h).cast())
    }
}

/// One group against tokens `t0..t0 + T`, rows 0..8 and 8..16 in separate halves; returns `T`.
///
/// # Safety
/// As [`group_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<const Q5: bool, const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: &InterleavedActs,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb =
        if Q5 { InterleavedFormat::Q5_0.group_block_bytes() } else { InterleavedFormat::Q8_0.group_block_bytes() };
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let ones = _mm256_set1_epi16(1);
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        for h in 0..2 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            let mut wq = [_mm256_setzero_si256(); 8];
            for (k, q) in wq.iter_mut().enumerate() {
                *q = half_quants_avx2::<Q5>(blk, k, h);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let i = (t0 + t) * blocks + b;
                let qa = acts.qs.as_ptr().add(32 * i).cast::<i32>();
                let mut sum =
                    if Q5 { _mm256_set1_epi32(-16 * *acts.sum.get_unchecked(i)) } else { _mm256_setzero_si256() };
                for (k, q) in wq.iter().enumerate() {
                    let a = _mm256_set1_epi32(qa.add(k).read_unaligned());
                    // Q5_0: q + 16 <= 31 times a; Q8_0: |q| <= 128 times a with q's sign. Pair sums fit i16.
                    let p = if Q5 {
                        _mm256_maddubs_epi16(*q, a)
                    } else {
                        _mm256_maddubs_epi16(_mm256_abs_epi8(*q), _mm256_sign_epi8(a, *q))
                    };
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, ones));
                }
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*acts.d.get_unchecked(i)));
                acc[h] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc[h]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add((t0 + t) * width), acc[0]);
        _mm256_storeu_ps(out.add((t0 + t) * width + 8), acc[1]);
    }
    T
}

#[cfg(test)]
mod tests {
    use crate::interleaved::{dot_groups_scalar, InterleavedActs, InterleavedRows};
    use crate::test_data::TestRng;
    use crate::{cpu_has_avx512_vnni, quant_format, GgmlType};

    /// Every kernel level the CPU has gives the scalar twin's bits, for both formats and every token count
    /// 1..=11 (all the kernels' tile shapes and their leftovers), on real-shaped data and on extreme quants.
    #[test]
    fn kernels_equal_the_scalar_twin_bit_for_bit() {
        let avx2 =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        assert!(avx2, "every x86-64 machine this project targets has AVX2");
        let vnni = cpu_has_avx512_vnni();
        println!("interleaved kernels checked: avx2{}", if vnni { ", avx512-vnni" } else { " (no avx512-vnni here)" });
        let mut rng = TestRng::new(31);
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let f = quant_format(ty).unwrap();
            for (rows, cols, extreme) in [(35, 640, false), (16, 96, true), (48, 2048, false)] {
                let rb = ty.row_bytes(cols).unwrap();
                let mut src = vec![0u8; rows * rb];
                for row in src.chunks_exact_mut(rb) {
                    f.quantize_row(&rng.row(cols), row).unwrap();
                    if extreme {
                        // every quant at the format's extremes: Q8_0 -128 / +127, Q5_0 -16 / +15
                        for (b, block) in row.chunks_exact_mut(ty.type_size()).enumerate() {
                            block[2..].fill(if b % 2 == 0 { 0x80 } else { 0x7f });
                            if ty == GgmlType::Q5_0 {
                                block[2..].fill(if b % 2 == 0 { 0x00 } else { 0xff });
                            }
                        }
                    }
                }
                let m = InterleavedRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
                for tokens in 1..=11 {
                    let mut x: Vec<f32> = (0..tokens).flat_map(|_| rng.row(cols)).collect();
                    if extreme {
                        x.iter_mut().enumerate().for_each(|(i, v)| *v = if i % 3 == 0 { -1.0 } else { 1.0 });
                    }
                    let mut acts = InterleavedActs::default();
                    acts.quantize(&x, cols).unwrap();
                    let width = m.groups() * 16;
                    let mut want = vec![0.0f32; tokens * width];
                    dot_groups_scalar(m.format(), m.data_for_tests(), cols / 32, &acts, &mut want);
                    let mut got = vec![f32::NAN; tokens * width];
                    // SAFETY: checked above that the CPU has AVX2, FMA and F16C.
                    unsafe { super::dot_groups_avx2(m.format(), m.data_for_tests(), cols / 32, &acts, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "{ty} avx2 {rows}x{cols}, {tokens} tokens");
                    if vnni {
                        let mut got = vec![f32::NAN; tokens * width];
                        // SAFETY: the CPU reports AVX-512 F/BW/VL/VNNI.
                        unsafe { super::dot_groups_vnni(m.format(), m.data_for_tests(), cols / 32, &acts, &mut got) };
                        assert_eq!(bits(&got), bits(&want), "{ty} vnni {rows}x{cols}, {tokens} tokens");
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
