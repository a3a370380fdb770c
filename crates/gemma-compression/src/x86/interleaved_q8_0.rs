//! Kernels of [`crate::interleaved_q8_0`]: AVX-512 VNNI (16 rows per integer dot) and AVX2 (two halves of 8).
//! Both compute each row's block sums exactly and add them as the scalar twin `dot_groups_scalar` does,
//! `acc = fma(d_w * d_a, sum, acc)` in block order, so all three agree bit for bit.

use std::arch::x86_64::*;

use crate::interleaved_q8_0::{InterleavedActs, GROUP_BLOCK_BYTES, ROW_GROUP};

/// Checks the slice lengths every kernel relies on; returns (groups, tile width).
fn check(w: &[u8], blocks: usize, acts: &InterleavedActs, tile: &[f32]) -> (usize, usize) {
    let group_bytes = blocks * GROUP_BLOCK_BYTES;
    assert!(group_bytes > 0 && w.len() % group_bytes == 0, "whole groups");
    let groups = w.len() / group_bytes;
    let width = groups * ROW_GROUP;
    let n = acts.n_tokens * blocks;
    assert!(acts.d.len() >= n && acts.neg_bias.len() >= n && acts.qs.len() >= 32 * n, "activations");
    assert_eq!(tile.len(), acts.n_tokens * width, "tile");
    (groups, width)
}

/// # Safety
/// The CPU supports AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn dot_groups_vnni(w: &[u8], blocks: usize, acts: &InterleavedActs, tile: &mut [f32]) {
    let (groups, width) = check(w, blocks, acts, tile);
    for g in 0..groups {
        let gw = w.as_ptr().add(g * blocks * GROUP_BLOCK_BYTES);
        let out = tile.as_mut_ptr().add(g * ROW_GROUP);
        let mut t0 = 0;
        while t0 < acts.n_tokens {
            // SAFETY (all arms): `check` sized the group, activations and tile for these tokens.
            t0 += match acts.n_tokens - t0 {
                1 => group_vnni::<1>(gw, blocks, acts, t0, out, width),
                2 => group_vnni::<2>(gw, blocks, acts, t0, out, width),
                3 => group_vnni::<3>(gw, blocks, acts, t0, out, width),
                4 => group_vnni::<4>(gw, blocks, acts, t0, out, width),
                5 => group_vnni::<5>(gw, blocks, acts, t0, out, width),
                6 => group_vnni::<6>(gw, blocks, acts, t0, out, width),
                7 => group_vnni::<7>(gw, blocks, acts, t0, out, width),
                _ => group_vnni::<8>(gw, blocks, acts, t0, out, width),
            };
        }
    }
}

/// One group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`dot_groups_vnni`]; `gw` is a whole group, the tokens exist and `out` has `T` rows of `width` from it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_vnni<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: &InterleavedActs,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let mut acc = [_mm512_setzero_ps(); T];
    // The quants taken as unsigned (q + 128); the activations' `neg_bias` takes the 128 back out.
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    for b in 0..blocks {
        let blk = gw.add(b * GROUP_BLOCK_BYTES);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        let mut wq = [_mm512_setzero_si512(); 8];
        for (k, q) in wq.iter_mut().enumerate() {
            *q = _mm512_xor_si512(_mm512_loadu_si512(blk.add(2 * ROW_GROUP + 64 * k).cast()), flip);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let i = (t0 + t) * blocks + b;
            let qa = acts.qs.as_ptr().add(32 * i).cast::<i32>();
            let mut sum = _mm512_set1_epi32(*acts.neg_bias.get_unchecked(i));
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
pub(crate) unsafe fn dot_groups_avx2(w: &[u8], blocks: usize, acts: &InterleavedActs, tile: &mut [f32]) {
    let (groups, width) = check(w, blocks, acts, tile);
    for g in 0..groups {
        let gw = w.as_ptr().add(g * blocks * GROUP_BLOCK_BYTES);
        let out = tile.as_mut_ptr().add(g * ROW_GROUP);
        let mut t0 = 0;
        while t0 < acts.n_tokens {
            // SAFETY (all arms): as in `dot_groups_vnni`.
            t0 += match acts.n_tokens - t0 {
                1 => group_avx2::<1>(gw, blocks, acts, t0, out, width),
                2 => group_avx2::<2>(gw, blocks, acts, t0, out, width),
                3 => group_avx2::<3>(gw, blocks, acts, t0, out, width),
                _ => group_avx2::<4>(gw, blocks, acts, t0, out, width),
            };
        }
    }
}

/// One group against tokens `t0..t0 + T`, rows 0..8 and 8..16 in separate halves; returns `T`.
///
/// # Safety
/// As [`group_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: &InterleavedActs,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let ones = _mm256_set1_epi16(1);
    for b in 0..blocks {
        let blk = gw.add(b * GROUP_BLOCK_BYTES);
        for h in 0..2 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            for (t, acc) in acc.iter_mut().enumerate() {
                let i = (t0 + t) * blocks + b;
                let qa = acts.qs.as_ptr().add(32 * i).cast::<i32>();
                let mut sum = _mm256_setzero_si256();
                for k in 0..8 {
                    let q = _mm256_loadu_si256(blk.add(2 * ROW_GROUP + 64 * k + 32 * h).cast());
                    let a = _mm256_set1_epi32(qa.add(k).read_unaligned());
                    // |q| (at most 128) times a with q's sign: pair sums stay within i16
                    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(a, q));
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
    use crate::interleaved_q8_0::{dot_groups_scalar, InterleavedActs, InterleavedQ8_0};
    use crate::test_data::TestRng;
    use crate::{cpu_has_avx512_vnni, quant_format, GgmlType};

    /// Every kernel level the CPU has gives the scalar twin's bits, for every token count 1..=11 (all the
    /// kernels' tile shapes and their leftovers), on real-shaped data and on extreme quants.
    #[test]
    fn kernels_equal_the_scalar_twin_bit_for_bit() {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        assert!(avx2, "every x86-64 machine this project targets has AVX2");
        let vnni = cpu_has_avx512_vnni();
        println!("interleaved Q8_0 kernels checked: avx2{}", if vnni { ", avx512-vnni" } else { " (no avx512-vnni here)" });
        let mut rng = TestRng::new(31);
        let q8 = quant_format(GgmlType::Q8_0).unwrap();
        for (rows, cols, extreme) in [(35, 640, false), (16, 96, true), (48, 2048, false)] {
            let rb = GgmlType::Q8_0.row_bytes(cols).unwrap();
            let mut src = vec![0u8; rows * rb];
            for row in src.chunks_exact_mut(rb) {
                q8.quantize_row(&rng.row(cols), row).unwrap();
                if extreme {
                    for (b, block) in row.chunks_exact_mut(34).enumerate() {
                        block[2..].fill(if b % 2 == 0 { 0x80 } else { 0x7f }); // -128 and +127
                    }
                }
            }
            let m = InterleavedQ8_0::from_q8_0(rows, cols, &src, &mut |_| {}).unwrap();
            for tokens in 1..=11 {
                let mut x: Vec<f32> = (0..tokens).flat_map(|_| rng.row(cols)).collect();
                if extreme {
                    x.iter_mut().enumerate().for_each(|(i, v)| *v = if i % 3 == 0 { -1.0 } else { 1.0 });
                }
                let mut acts = InterleavedActs::default();
                acts.quantize(&x, cols).unwrap();
                let width = m.groups() * 16;
                let mut want = vec![0.0f32; tokens * width];
                dot_groups_scalar(m.data_for_tests(), cols / 32, &acts, &mut want);
                let mut got = vec![f32::NAN; tokens * width];
                // SAFETY: checked above that the CPU has AVX2, FMA and F16C.
                unsafe { super::dot_groups_avx2(m.data_for_tests(), cols / 32, &acts, &mut got) };
                assert_eq!(bits(&got), bits(&want), "avx2 {rows}x{cols}, {tokens} tokens");
                if vnni {
                    let mut got = vec![f32::NAN; tokens * width];
                    // SAFETY: the CPU reports AVX-512 F/BW/VL/VNNI.
                    unsafe { super::dot_groups_vnni(m.data_for_tests(), cols / 32, &acts, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "vnni {rows}x{cols}, {tokens} tokens");
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
