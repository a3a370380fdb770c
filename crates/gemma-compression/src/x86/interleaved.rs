//! Kernels of [`crate::interleaved`]: AVX-512 VNNI (16 rows per integer dot) and AVX2 (two halves of 8), for
//! every interleaved format. Both compute each row's block sums exactly and add them as the scalar twin
//! `dot_groups_scalar` does, in block order `acc = fma(d_w * d_a, isum, acc)` and, for Q4_1 and Q5_1,
//! `acc = fma(m_w, d_a * sum_a, acc)`, so all three agree bit for bit.
//!
//! The kernels are generic over the format as `BITS` (8, 5 or 4), `MIN` (offsets) and `NL` (IQ4_NL's table
//! codes), the things their code depends on; [`InterleavedFormat::from_bits`] gives the format back.
//!
//! IQ4_NL's nibbles become its signed table values by a byte shuffle, after which the block is Q8_0's case:
//! VNNI looks up `value + 128` (unsigned, as `vpdpbusd` wants) and takes `128` times the activations' sum
//! back out; AVX2 looks up the signed values and multiplies `|q|` by `a` with `q`'s sign (`|q| <= 127`, so
//! `vpmaddubsw`'s pair sums fit i16).

use std::arch::x86_64::*;

use crate::interleaved::{InterleavedActs, InterleavedFormat, ROW_GROUP};
use crate::iq4::KVALUES;

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

/// Runs `$kernel::<BITS, MIN, NL, T>` over every group and every chunk of up to `$max` tokens.
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
                    $((InterleavedFormat::Q8_0, $t) => $kernel::<8, false, false, $t>(gw, $blocks, $acts, t0, out, width),)*
                    $((InterleavedFormat::Q5_0, $t) => $kernel::<5, false, false, $t>(gw, $blocks, $acts, t0, out, width),)*
                    $((InterleavedFormat::Q4_0, $t) => $kernel::<4, false, false, $t>(gw, $blocks, $acts, t0, out, width),)*
                    $((InterleavedFormat::Q4_1, $t) => $kernel::<4, true, false, $t>(gw, $blocks, $acts, t0, out, width),)*
                    $((InterleavedFormat::Q5_1, $t) => $kernel::<5, true, false, $t>(gw, $blocks, $acts, t0, out, width),)*
                    $((InterleavedFormat::IQ4_NL, $t) => $kernel::<4, false, true, $t>(gw, $blocks, $acts, t0, out, width),)*
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

/// The 64 codes of dword `k` of the 16 rows of a group block as unsigned bytes (Q8_0's signed quants and
/// IQ4_NL's table values as `q + 128`, the others as stored). `runs` is where the block's codes start (after
/// its head).
///
/// # Safety
/// As [`group_vnni`]; `runs` is the codes of a whole group block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unsigned_quants_vnni<const BITS: u32, const NL: bool>(runs: *const u8, k: usize) -> __m512i {
    if BITS == 8 {
        let q = _mm512_loadu_si512(runs.add(64 * k).cast());
        return _mm512_xor_si512(q, _mm512_set1_epi8(0x80u8 as i8));
    }
    let run = runs.add(if BITS == 5 { 40 } else { 32 } * k);
    let nib = _mm256_loadu_si256(run.cast());
    let m = _mm256_set1_epi8(0x0f);
    let lo = _mm256_and_si256(nib, m);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(nib), m);
    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    if NL {
        return _mm512_shuffle_epi8(table_plus_128_vnni(), v);
    }
    if BITS == 5 {
        let fifth: __mmask64 = run.add(32).cast::<u64>().read_unaligned();
        _mm512_mask_add_epi8(v, fifth, v, _mm512_set1_epi8(16))
    } else {
        v
    }
}

/// IQ4_NL's table as `value + 128` (1..=241, unsigned) in each 128-bit lane, for `vpshufb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn table_plus_128_vnni() -> __m512i {
    const T: [u8; 16] = {
        let mut t = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            t[i] = (KVALUES[i] as i32 + 128) as u8;
            i += 1;
        }
        t
    };
    // SAFETY: reads the 16 bytes of `T`.
    let lane = unsafe { _mm_loadu_si128(T.as_ptr().cast()) };
    _mm512_broadcast_i32x4(lane)
}

/// One group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`dot_groups_vnni`]; `gw` is a whole group, the tokens exist and `out` has `T` rows of `width` from it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_vnni<const BITS: u32, const MIN: bool, const NL: bool, const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: &InterleavedActs,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let format = InterleavedFormat::from_bits(BITS, MIN, NL);
    let (gbb, head) = (format.group_block_bytes(), format.head_bytes());
    // What the unsigned codes add to each signed quant, taken back out as that times the activations' sum.
    let bias = if BITS == 8 || NL { -128 } else { format.offset() };
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        let mw = if MIN { _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(2 * ROW_GROUP).cast())) } else { dw };
        let mut wq = [_mm512_setzero_si512(); 8];
        for (k, q) in wq.iter_mut().enumerate() {
            *q = unsigned_quants_vnni::<BITS, NL>(blk.add(head), k);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let i = (t0 + t) * blocks + b;
            let qa = acts.qs.as_ptr().add(32 * i).cast::<i32>();
            let (da, sa) = (*acts.d.get_unchecked(i), *acts.sum.get_unchecked(i));
            let mut sum = if bias != 0 { _mm512_set1_epi32(bias * sa) } else { _mm512_setzero_si512() };
            for (k, q) in wq.iter().enumerate() {
                sum = _mm512_dpbusd_epi32(sum, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
            }
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(da));
            *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), *acc);
            if MIN {
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(da * sa as f32), *acc);
            }
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

/// The 32 codes of dword `k` of rows `8 h..8 h + 8` of a group block: Q8_0 signed, IQ4_NL's signed table
/// values, the others unsigned as stored. `runs` is where the block's codes start (after its head).
///
/// # Safety
/// As [`group_avx2`]; `runs` is the codes of a whole group block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_quants_avx2<const BITS: u32, const NL: bool>(runs: *const u8, k: usize, h: usize) -> __m256i {
    if BITS == 8 {
        return _mm256_loadu_si256(runs.add(64 * k + 32 * h).cast());
    }
    let run = runs.add(if BITS == 5 { 40 } else { 32 } * k);
    let nib = _mm256_loadu_si256(run.cast());
    let m = _mm256_set1_epi8(0x0f);
    let v = if h == 0 { _mm256_and_si256(nib, m) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(nib), m) };
    if NL {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES.as_ptr().cast()));
        return _mm256_shuffle_epi8(table, v);
    }
    if BITS != 5 {
        return v;
    }
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
}

/// One group against tokens `t0..t0 + T`, rows 0..8 and 8..16 in separate halves; returns `T`.
///
/// # Safety
/// As [`group_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<const BITS: u32, const MIN: bool, const NL: bool, const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: &InterleavedActs,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let format = InterleavedFormat::from_bits(BITS, MIN, NL);
    let (gbb, head, bias) = (format.group_block_bytes(), format.head_bytes(), format.offset());
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let ones = _mm256_set1_epi16(1);
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        for h in 0..2 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            let mw = if MIN { _mm256_cvtph_ps(_mm_loadu_si128(blk.add(2 * ROW_GROUP + 16 * h).cast())) } else { dw };
            let mut wq = [_mm256_setzero_si256(); 8];
            for (k, q) in wq.iter_mut().enumerate() {
                *q = half_quants_avx2::<BITS, NL>(blk.add(head), k, h);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let i = (t0 + t) * blocks + b;
                let qa = acts.qs.as_ptr().add(32 * i).cast::<i32>();
                let (da, sa) = (*acts.d.get_unchecked(i), *acts.sum.get_unchecked(i));
                let mut sum = if bias != 0 { _mm256_set1_epi32(bias * sa) } else { _mm256_setzero_si256() };
                for (k, q) in wq.iter().enumerate() {
                    let a = _mm256_set1_epi32(qa.add(k).read_unaligned());
                    // 4/5-bit codes <= 31 times a; Q8_0 and IQ4_NL: |q| <= 128 times a with q's sign. Pair
                    // sums fit i16.
                    let p = if BITS == 8 || NL {
                        _mm256_maddubs_epi16(_mm256_abs_epi8(*q), _mm256_sign_epi8(a, *q))
                    } else {
                        _mm256_maddubs_epi16(*q, a)
                    };
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, ones));
                }
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                acc[h] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc[h]);
                if MIN {
                    acc[h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(da * sa as f32), acc[h]);
                }
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
    use crate::interleaved::tests::ALL;
    use crate::interleaved::{dot_groups_scalar, InterleavedActs, InterleavedRows};
    use crate::test_data::TestRng;
    use crate::{cpu_has_avx512_vnni, quant_format, GgmlType};

    /// How a test matrix's blocks are filled.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fill {
        /// Quantized from random rows.
        Real,
        /// Every code at the format's extremes, alternating by block (Q8_0 -128 / +127, the others all 0 /
        /// all ones: Q4_0 -8 / +7, Q4_1 0 / 15, Q5_0 -16 / +15, Q5_1 0 / 31, IQ4_NL -127 / +113), scales as
        /// quantized.
        Extreme,
        /// The same codes with large scales and offsets of both signs.
        ExtremeLargeScales,
    }

    /// Every kernel level the CPU has gives the scalar twin's bits, for every format and every token count
    /// 1..=11 (all the kernels' tile shapes and their leftovers), with padded groups, on real-shaped data and
    /// on extreme codes and scales.
    #[test]
    fn kernels_equal_the_scalar_twin_bit_for_bit() {
        let avx2 =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        assert!(avx2, "every x86-64 machine this project targets has AVX2");
        let vnni = cpu_has_avx512_vnni();
        println!("interleaved kernels checked: avx2{}", if vnni { ", avx512-vnni" } else { " (no avx512-vnni here)" });
        let mut rng = TestRng::new(31);
        for (format, ty) in ALL {
            let f = quant_format(ty).unwrap();
            let cases = [
                (35, 640, Fill::Real),
                (16, 96, Fill::Extreme),
                (21, 96, Fill::ExtremeLargeScales),
                (48, 2048, Fill::Real),
            ];
            for (rows, cols, fill) in cases {
                let rb = ty.row_bytes(cols).unwrap();
                let mut src = vec![0u8; rows * rb];
                for row in src.chunks_exact_mut(rb) {
                    f.quantize_row(&rng.row(cols), row).unwrap();
                    if fill == Fill::Real {
                        continue;
                    }
                    let head = if format.has_min() { 4 } else { 2 };
                    for (b, block) in row.chunks_exact_mut(ty.type_size()).enumerate() {
                        let low = b % 2 == 0;
                        if ty == GgmlType::Q8_0 {
                            block[2..].fill(if low { 0x80 } else { 0x7f });
                        } else {
                            block[head..].fill(if low { 0x00 } else { 0xff });
                        }
                        if fill == Fill::ExtremeLargeScales {
                            let big = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
                            block[..2].copy_from_slice(&big(if b % 3 == 0 { -30000.0 } else { 40000.0 }));
                            if format.has_min() {
                                block[2..4].copy_from_slice(&big(if b % 4 < 2 { 50000.0 } else { -60000.0 }));
                            }
                        }
                    }
                }
                let m = InterleavedRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
                for tokens in 1..=11 {
                    let mut x: Vec<f32> = (0..tokens).flat_map(|_| rng.row(cols)).collect();
                    if fill != Fill::Real {
                        x.iter_mut().enumerate().for_each(|(i, v)| *v = if i % 3 == 0 { -1.0 } else { 1.0 });
                    }
                    let mut acts = InterleavedActs::default();
                    acts.quantize(&x, cols).unwrap();
                    let width = m.groups() * 16;
                    let mut want = vec![0.0f32; tokens * width];
                    dot_groups_scalar(m.format(), m.data_for_tests(), cols / 32, &acts, &mut want);
                    assert!(want.iter().all(|v| v.is_finite()), "{ty} {fill:?}: finite results");
                    let mut got = vec![f32::NAN; tokens * width];
                    // SAFETY: checked above that the CPU has AVX2, FMA and F16C.
                    unsafe { super::dot_groups_avx2(m.format(), m.data_for_tests(), cols / 32, &acts, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "{ty} avx2 {rows}x{cols} {fill:?}, {tokens} tokens");
                    if vnni {
                        let mut got = vec![f32::NAN; tokens * width];
                        // SAFETY: the CPU reports AVX-512 F/BW/VL/VNNI.
                        unsafe { super::dot_groups_vnni(m.format(), m.data_for_tests(), cols / 32, &acts, &mut got) };
                        assert_eq!(bits(&got), bits(&want), "{ty} vnni {rows}x{cols} {fill:?}, {tokens} tokens");
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
