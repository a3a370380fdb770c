//! Kernels of [`crate::interleaved_k`]: AVX-512 VNNI (16 rows per integer dot) and AVX2 (two halves of 8), for
//! Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K and Q3_K with Q8_K activations. Both compute each row's super-block sums exactly and add them
//! as the scalar twin `dot_groups_scalar` does, so all three agree bit for bit.
//!
//! IQ4_XS's indices become table values by a byte shuffle, as IQ4_NL's do in [`super::interleaved`]: VNNI
//! looks up `q + 128` and takes `128 sum_j sc_j * sum_j(a)` back out with the Q8_K block sums; AVX2 looks up
//! the signed `q` and multiplies `|a|` by `q` with `a`'s sign (`-127 <= q <= 113` negates exactly, and
//! `|a| <= 128` fits `vpmaddubsw`'s unsigned operand, so the pair sums fit i16 even for `a = -128`).

use std::arch::x86_64::*;

use crate::interleaved_k::{
    InterleavedKFormat, Q2K_DMIN, Q2K_MIN, Q2K_QS, Q2K_SC, Q2K_SUB, Q3K_PAIR, Q3K_QS, Q3K_SC, Q4K_DMIN, Q4K_MIN,
    Q4K_QS, Q4K_SC, Q4K_SUB, Q5K_SUB, Q6K_QS, Q6K_SC, Q6K_SUB, ROW_GROUP, XS_QS, XS_SC,
};
use crate::iq4::KVALUES;
use crate::k_quants::{Q8K_BSUMS, Q8K_BYTES, Q8K_QS};

use crate::x86::interleaved::{table_plus_128_vnni, PREFETCH_AHEAD};
use crate::x86::k_tiles::q8k_d;

/// Runs `$q4::<T, false>` (Q4_K), `$q5::<T, true>` (Q5_K), `$q6::<T>`, `$xs::<T>`, `$q2::<T>` or `$q3::<T>` over every
/// group and every chunk of up to `$max` tokens.
macro_rules! over_groups {
    ($format:expr, $w:expr, $blocks:expr, $acts:expr, $n_tokens:expr, $tile:expr, $q4:ident, $q5:ident, $q6:ident,
     $xs:ident, $q2:ident, $q3:ident, [$($t:literal),*], $max:literal) => {{
        // the kernels read raw pointers: the lengths are checked here, whatever the caller did
        let n_tokens = crate::interleaved_k::check($format, $w, $blocks, $acts, $tile);
        assert_eq!(n_tokens, $n_tokens, "token count");
        let gbb = $format.group_block_bytes();
        let groups = $w.len() / ($blocks * gbb);
        let width = groups * ROW_GROUP;
        for g in 0..groups {
            let gw = $w.as_ptr().add(g * $blocks * gbb);
            let out = $tile.as_mut_ptr().add(g * ROW_GROUP);
            let mut t0 = 0;
            while t0 < $n_tokens {
                let left = ($n_tokens - t0).min($max);
                // SAFETY (every arm): `check` sized the group, the activations and the tile.
                t0 += match ($format, left) {
                    $((InterleavedKFormat::Q4K, $t) => $q4::<$t, false>(gw, $blocks, $acts.as_ptr(), t0, out, width),)*
                    $((InterleavedKFormat::Q5K, $t) => $q5::<$t, true>(gw, $blocks, $acts.as_ptr(), t0, out, width),)*
                    $((InterleavedKFormat::Q6K, $t) => $q6::<$t>(gw, $blocks, $acts.as_ptr(), t0, out, width),)*
                    $((InterleavedKFormat::IQ4_XS, $t) => $xs::<$t>(gw, $blocks, $acts.as_ptr(), t0, out, width),)*
                    $((InterleavedKFormat::Q2K, $t) => $q2::<$t>(gw, $blocks, $acts.as_ptr(), t0, out, width),)*
                    $((InterleavedKFormat::Q3K, $t) => $q3::<$t>(gw, $blocks, $acts.as_ptr(), t0, out, width),)*
                    _ => unreachable!("token chunks are 1..={}", $max),
                };
            }
        }
    }};
}

/// # Safety
/// The CPU supports AVX-512 F, BW, VL and VNNI. (Lengths are checked here; panics if they do not match.)
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn dot_groups_vnni(
    format: InterleavedKFormat,
    w: &[u8],
    blocks: usize,
    acts: &[u8],
    n_tokens: usize,
    tile: &mut [f32],
) {
    over_groups!(
        format,
        w,
        blocks,
        acts,
        n_tokens,
        tile,
        k4_vnni,
        k4_vnni,
        q6_k_vnni,
        iq4_xs_vnni,
        q2_k_vnni,
        q3_k_vnni,
        [1, 2, 3, 4, 5, 6, 7, 8],
        8
    );
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C. (Lengths are checked here.)
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_groups_avx2(
    format: InterleavedKFormat,
    w: &[u8],
    blocks: usize,
    acts: &[u8],
    n_tokens: usize,
    tile: &mut [f32],
) {
    over_groups!(
        format,
        w,
        blocks,
        acts,
        n_tokens,
        tile,
        k4_avx2,
        k4_avx2,
        q6_k_avx2,
        iq4_xs_avx2,
        q2_k_avx2,
        q3_k_avx2,
        [1, 2, 3, 4],
        4
    );
}

/// The two runs of a run pair (16 rows x 4 values each) as bytes, row `r`'s in dword `r`.
///
/// # Safety
/// AVX-512 F/BW/VL; `pair` points at 64 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_pair_vnni(pair: *const u8) -> (__m512i, __m512i) {
    let nib = _mm512_loadu_si512(pair.cast());
    let m = _mm512_set1_epi8(0x0f);
    (_mm512_and_si512(nib, m), _mm512_and_si512(_mm512_srli_epi16::<4>(nib), m))
}

/// Ors the top bits of Q5_K's eight runs `$wq` (bytes, row `r`'s in dword `r`) in from their 64 bytes
/// `$high`, bit `k` of byte `v` being bit 4 of value `v` of run `k`. 16-bit shifts: the mask drops what
/// crosses a byte (no shift moves a bit more than four places).
macro_rules! q5_k_high_bits {
    ($wq:ident, $high:expr, $and:ident, $or:ident, $srli:ident, $slli:ident, $set1:ident) => {{
        let (high, m) = ($high, $set1(0x10));
        $wq[0] = $or($wq[0], $and($slli::<4>(high), m));
        $wq[1] = $or($wq[1], $and($slli::<3>(high), m));
        $wq[2] = $or($wq[2], $and($slli::<2>(high), m));
        $wq[3] = $or($wq[3], $and($slli::<1>(high), m));
        $wq[4] = $or($wq[4], $and(high, m));
        $wq[5] = $or($wq[5], $and($srli::<1>(high), m));
        $wq[6] = $or($wq[6], $and($srli::<2>(high), m));
        $wq[7] = $or($wq[7], $and($srli::<3>(high), m));
    }};
}

/// The Q4_K sum of each Q8_K block's 16 `bsums` over a 32-element sub-block, as the i16 pairs
/// `(B_2p, B_2p+1)` for p in 0..4.
///
/// # Safety
/// AVX2; `a` points at a whole Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsum_pairs_32(a: *const u8) -> [i32; 4] {
    let b32 = _mm256_madd_epi16(_mm256_loadu_si256(a.add(Q8K_BSUMS).cast()), _mm256_set1_epi16(1));
    let pairs = _mm256_packs_epi32(b32, b32);
    [
        _mm256_extract_epi32::<0>(pairs),
        _mm256_extract_epi32::<1>(pairs),
        _mm256_extract_epi32::<4>(pairs),
        _mm256_extract_epi32::<5>(pairs),
    ]
}

/// One Q4_K (or, `FIVE`, Q5_K) group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`dot_groups_vnni`]; `gw` is a whole group of `blocks` super-blocks, `acts` holds the tokens' Q8_K rows
/// and `out` has `T` rows of `width` from it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn k4_vnni<const T: usize, const FIVE: bool>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let format = if FIVE { InterleavedKFormat::Q5K } else { InterleavedKFormat::Q4K };
    let (gbb, sub_bytes) = (format.group_block_bytes(), if FIVE { Q5K_SUB } else { Q4K_SUB });
    let a_row = blocks * Q8K_BYTES;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..8 {
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(Q4K_SC + 16 * j).cast()));
            let mut wq = [_mm512_setzero_si512(); 8];
            for p in 0..4 {
                (wq[2 * p], wq[2 * p + 1]) = run_pair_vnni(blk.add(Q4K_QS + sub_bytes * j + 64 * p));
            }
            if FIVE {
                let high = _mm512_loadu_si512(blk.add(Q4K_QS + sub_bytes * j + 256).cast());
                q5_k_high_bits!(
                    wq,
                    high,
                    _mm512_and_si512,
                    _mm512_or_si512,
                    _mm512_srli_epi16,
                    _mm512_slli_epi16,
                    _mm512_set1_epi8
                );
            }
            for (t, isum) in isum.iter_mut().enumerate() {
                let qa = act(t).add(Q8K_QS + 32 * j).cast::<i32>();
                let mut s = _mm512_setzero_si512();
                for (k, q) in wq.iter().enumerate() {
                    s = _mm512_dpbusd_epi32(s, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
                }
                *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(s, sc));
            }
        }
        let dd = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        let dm = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(Q4K_DMIN).cast()));
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = act(t);
            let mut mins = _mm512_setzero_si512();
            for (p, pair) in bsum_pairs_32(a).into_iter().enumerate() {
                let m = _mm512_loadu_si512(blk.add(Q4K_MIN + 64 * p).cast());
                mins = _mm512_dpwssd_epi32(mins, m, _mm512_set1_epi32(pair));
            }
            let da = _mm512_set1_ps(q8k_d(a));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dd, da), _mm512_cvtepi32_ps(isum[t]), *acc);
            *acc = _mm512_fnmadd_ps(_mm512_mul_ps(dm, da), _mm512_cvtepi32_ps(mins), *acc);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add((t0 + t) * width), *acc);
    }
    T
}

/// One Q6_K group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`k4_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_k_vnni<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::Q6K.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..16 {
            let sc = scales_of_pairs_vnni(blk.add(Q6K_SC + 64 * (j / 2)), j % 2 == 1);
            let sub = blk.add(Q6K_QS + Q6K_SUB * j);
            let (q0, q1) = run_pair_vnni(sub);
            let (q2, q3) = run_pair_vnni(sub.add(64));
            // bits 2k, 2k + 1 of each top byte are run k's bits 4 and 5 (16-bit shifts: the mask drops what
            // crosses a byte)
            let top = _mm512_loadu_si512(sub.add(128).cast());
            let m = _mm512_set1_epi8(0x30);
            let wq = [
                _mm512_or_si512(q0, _mm512_and_si512(_mm512_slli_epi16::<4>(top), m)),
                _mm512_or_si512(q1, _mm512_and_si512(_mm512_slli_epi16::<2>(top), m)),
                _mm512_or_si512(q2, _mm512_and_si512(top, m)),
                _mm512_or_si512(q3, _mm512_and_si512(_mm512_srli_epi16::<2>(top), m)),
            ];
            for (t, isum) in isum.iter_mut().enumerate() {
                let qa = act(t).add(Q8K_QS + 16 * j).cast::<i32>();
                let mut s = _mm512_setzero_si512();
                for (k, q) in wq.iter().enumerate() {
                    s = _mm512_dpbusd_epi32(s, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
                }
                *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(s, sc));
            }
        }
        let dd = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = act(t);
            // the quants' +32 times the activations, taken back out: 32 sum_j sc_j bsum_j
            let mut offset = _mm512_setzero_si512();
            for p in 0..8 {
                let sc = _mm512_loadu_si512(blk.add(Q6K_SC + 64 * p).cast());
                let bs = a.add(Q8K_BSUMS + 4 * p).cast::<i32>().read_unaligned();
                offset = _mm512_dpwssd_epi32(offset, sc, _mm512_set1_epi32(bs));
            }
            let isum = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<5>(offset));
            let da = _mm512_set1_ps(q8k_d(a));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dd, da), _mm512_cvtepi32_ps(isum), *acc);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add((t0 + t) * width), *acc);
    }
    T
}

/// The sub-block scales `sc_j` of a Q6_K or IQ4_XS group super-block as i32 (row `r` in lane `r`), from the
/// i16 pairs `(sc_2p, sc_2p+1)` of the 16 rows at `pairs`.
///
/// # Safety
/// AVX-512 F; `pairs` points at 64 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scales_of_pairs_vnni(pairs: *const u8, odd: bool) -> __m512i {
    let pairs = _mm512_loadu_si512(pairs.cast());
    if odd {
        _mm512_srai_epi32::<16>(pairs)
    } else {
        _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pairs))
    }
}

/// One IQ4_XS group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`k4_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn iq4_xs_vnni<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::IQ4_XS.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let table = table_plus_128_vnni();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..8 {
            let sc = scales_of_pairs_vnni(blk.add(XS_SC + 64 * (j / 2)), j % 2 == 1);
            let mut wq = [_mm512_setzero_si512(); 8];
            for p in 0..4 {
                let (lo, hi) = run_pair_vnni(blk.add(XS_QS + Q4K_SUB * j + 64 * p));
                wq[2 * p] = _mm512_shuffle_epi8(table, lo);
                wq[2 * p + 1] = _mm512_shuffle_epi8(table, hi);
            }
            for (t, isum) in isum.iter_mut().enumerate() {
                let qa = act(t).add(Q8K_QS + 32 * j).cast::<i32>();
                let mut s = _mm512_setzero_si512();
                for (k, q) in wq.iter().enumerate() {
                    s = _mm512_dpbusd_epi32(s, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
                }
                *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(s, sc));
            }
        }
        let dd = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = act(t);
            // the table's +128 times the activations, taken back out: 128 sum_j sc_j (bsum_2j + bsum_2j+1)
            let mut offset = _mm512_setzero_si512();
            for (p, pair) in bsum_pairs_32(a).into_iter().enumerate() {
                let sc = _mm512_loadu_si512(blk.add(XS_SC + 64 * p).cast());
                offset = _mm512_dpwssd_epi32(offset, sc, _mm512_set1_epi32(pair));
            }
            let isum = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<7>(offset));
            let da = _mm512_set1_ps(q8k_d(a));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dd, da), _mm512_cvtepi32_ps(isum), *acc);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add((t0 + t) * width), *acc);
    }
    T
}

/// One Q2_K group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`k4_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q2_k_vnni<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::Q2K.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let three = _mm512_set1_epi8(3);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..16 {
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(Q2K_SC + 16 * j).cast()));
            // bits 2k, 2k + 1 of each byte are run k (16-bit shifts: the mask drops what crosses a byte)
            let q = _mm512_loadu_si512(blk.add(Q2K_QS + Q2K_SUB * j).cast());
            let wq = [
                _mm512_and_si512(q, three),
                _mm512_and_si512(_mm512_srli_epi16::<2>(q), three),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q), three),
                _mm512_and_si512(_mm512_srli_epi16::<6>(q), three),
            ];
            for (t, isum) in isum.iter_mut().enumerate() {
                let qa = act(t).add(Q8K_QS + 16 * j).cast::<i32>();
                let mut s = _mm512_setzero_si512();
                for (k, q) in wq.iter().enumerate() {
                    s = _mm512_dpbusd_epi32(s, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
                }
                *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(s, sc));
            }
        }
        let dd = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        let dm = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(Q2K_DMIN).cast()));
        // the byte pairs (m_2p, m_2p+1) widened to i16 pairs, against the block sums (bsum_2p, bsum_2p+1)
        let m: [__m512i; 8] =
            std::array::from_fn(|p| _mm512_cvtepu8_epi16(_mm256_loadu_si256(blk.add(Q2K_MIN + 32 * p).cast())));
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = act(t);
            let mut mins = _mm512_setzero_si512();
            for (p, m) in m.iter().enumerate() {
                let bs = a.add(Q8K_BSUMS + 4 * p).cast::<i32>().read_unaligned();
                mins = _mm512_dpwssd_epi32(mins, *m, _mm512_set1_epi32(bs));
            }
            let da = _mm512_set1_ps(q8k_d(a));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dd, da), _mm512_cvtepi32_ps(isum[t]), *acc);
            *acc = _mm512_fnmadd_ps(_mm512_mul_ps(dm, da), _mm512_cvtepi32_ps(mins), *acc);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add((t0 + t) * width), *acc);
    }
    T
}

/// The four runs of Q3_K sub-block `2 p + s` as bytes `u = q + 4` in `0..=7`, from its low bits `low` (run `k`
/// in bits `2 k`, as Q2_K) and its pair's high bits `high` (run `k` in bit `4 s + k`). 16-bit shifts: the masks
/// drop what crosses a byte (no shift moves a bit more than five places).
macro_rules! q3_k_runs {
    ($low:expr, $high:expr, $s:expr, $and:ident, $or:ident, $srli:ident, $slli:ident, $set1:ident) => {{
        let (low, three, four) = ($low, $set1(3), $set1(4));
        let high = if $s == 1 { $srli::<4>($high) } else { $high };
        [
            $or($and(low, three), $and($slli::<2>(high), four)),
            $or($and($srli::<2>(low), three), $and($slli::<1>(high), four)),
            $or($and($srli::<4>(low), three), $and(high, four)),
            $or($and($srli::<6>(low), three), $and($srli::<1>(high), four)),
        ]
    }};
}

/// One Q3_K group against tokens `t0..t0 + T`; returns `T`.
///
/// # Safety
/// As [`k4_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q3_k_vnni<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::Q3K.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        // the byte pairs (sc_2p, sc_2p+1) sign-extended to i16 pairs: the scales of the sub-blocks (by a shift)
        // and the operand of the offset's vpdpwssd
        let sc_pairs: [__m512i; 8] =
            std::array::from_fn(|p| _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk.add(Q3K_SC + 32 * p).cast())));
        let mut isum = [_mm512_setzero_si512(); T];
        for (p, pairs) in sc_pairs.iter().enumerate() {
            let sub = blk.add(Q3K_QS + Q3K_PAIR * p);
            let high = _mm512_loadu_si512(sub.add(128).cast());
            for s in 0..2 {
                let j = 2 * p + s;
                let sc = if s == 1 {
                    _mm512_srai_epi32::<16>(*pairs)
                } else {
                    _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(*pairs))
                };
                let low = _mm512_loadu_si512(sub.add(64 * s).cast());
                let wq = q3_k_runs!(
                    low,
                    high,
                    s,
                    _mm512_and_si512,
                    _mm512_or_si512,
                    _mm512_srli_epi16,
                    _mm512_slli_epi16,
                    _mm512_set1_epi8
                );
                for (t, isum) in isum.iter_mut().enumerate() {
                    let qa = act(t).add(Q8K_QS + 16 * j).cast::<i32>();
                    let mut dot = _mm512_setzero_si512();
                    for (k, q) in wq.iter().enumerate() {
                        dot = _mm512_dpbusd_epi32(dot, *q, _mm512_set1_epi32(qa.add(k).read_unaligned()));
                    }
                    *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(dot, sc));
                }
            }
        }
        let dd = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = act(t);
            // the quants' +4 times the activations, taken back out: 4 sum_j sc_j bsum_j
            let mut offset = _mm512_setzero_si512();
            for (p, pairs) in sc_pairs.iter().enumerate() {
                let bs = a.add(Q8K_BSUMS + 4 * p).cast::<i32>().read_unaligned();
                offset = _mm512_dpwssd_epi32(offset, *pairs, _mm512_set1_epi32(bs));
            }
            let isum = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<2>(offset));
            let da = _mm512_set1_ps(q8k_d(a));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dd, da), _mm512_cvtepi32_ps(isum), *acc);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add((t0 + t) * width), *acc);
    }
    T
}

/// Rows `8 h..8 h + 8` of the two runs of a run pair as bytes.
///
/// # Safety
/// AVX2; `pair` points at 64 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_pair_avx2(pair: *const u8, h: usize) -> (__m256i, __m256i) {
    let nib = _mm256_loadu_si256(pair.add(32 * h).cast());
    let m = _mm256_set1_epi8(0x0f);
    (_mm256_and_si256(nib, m), _mm256_and_si256(_mm256_srli_epi16::<4>(nib), m))
}

/// One Q4_K (or, `FIVE`, Q5_K) group against tokens `t0..t0 + T`, rows 0..8 and 8..16 in separate halves;
/// returns `T`.
///
/// # Safety
/// As [`k4_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_avx2<const T: usize, const FIVE: bool>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let format = if FIVE { InterleavedKFormat::Q5K } else { InterleavedKFormat::Q4K };
    let (gbb, sub_bytes) = (format.group_block_bytes(), if FIVE { Q5K_SUB } else { Q4K_SUB });
    let a_row = blocks * Q8K_BYTES;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        for h in 0..2 {
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..8 {
                let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(Q4K_SC + 16 * j + 8 * h).cast()));
                let mut wq = [_mm256_setzero_si256(); 8];
                for p in 0..4 {
                    (wq[2 * p], wq[2 * p + 1]) = run_pair_avx2(blk.add(Q4K_QS + sub_bytes * j + 64 * p), h);
                }
                if FIVE {
                    let high = _mm256_loadu_si256(blk.add(Q4K_QS + sub_bytes * j + 256 + 32 * h).cast());
                    q5_k_high_bits!(
                        wq,
                        high,
                        _mm256_and_si256,
                        _mm256_or_si256,
                        _mm256_srli_epi16,
                        _mm256_slli_epi16,
                        _mm256_set1_epi8
                    );
                }
                for (t, isum) in isum.iter_mut().enumerate() {
                    let qa = act(t).add(Q8K_QS + 32 * j).cast::<i32>();
                    let mut dot = _mm256_setzero_si256();
                    for (k, q) in wq.iter().enumerate() {
                        // q <= 31 times |a| <= 128: pair sums fit i16
                        let p = _mm256_maddubs_epi16(*q, _mm256_set1_epi32(qa.add(k).read_unaligned()));
                        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
                    }
                    *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(dot, sc));
                }
            }
            let dd = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            let dm = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(Q4K_DMIN + 16 * h).cast()));
            for (t, acc) in acc.iter_mut().enumerate() {
                let a = act(t);
                let mut mins = _mm256_setzero_si256();
                for (p, pair) in bsum_pairs_32(a).into_iter().enumerate() {
                    let m = _mm256_loadu_si256(blk.add(Q4K_MIN + 64 * p + 32 * h).cast());
                    mins = _mm256_add_epi32(mins, _mm256_madd_epi16(m, _mm256_set1_epi32(pair)));
                }
                let da = _mm256_set1_ps(q8k_d(a));
                acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(dd, da), _mm256_cvtepi32_ps(isum[t]), acc[h]);
                acc[h] = _mm256_fnmadd_ps(_mm256_mul_ps(dm, da), _mm256_cvtepi32_ps(mins), acc[h]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add((t0 + t) * width), acc[0]);
        _mm256_storeu_ps(out.add((t0 + t) * width + 8), acc[1]);
    }
    T
}

/// One Q6_K group against tokens `t0..t0 + T`, in two halves of 8 rows; returns `T`.
///
/// # Safety
/// As [`k4_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_avx2<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::Q6K.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        for h in 0..2 {
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..16 {
                let sc = scales_of_pairs_avx2(blk.add(Q6K_SC + 64 * (j / 2) + 32 * h), j % 2 == 1);
                let sub = blk.add(Q6K_QS + Q6K_SUB * j);
                let (q0, q1) = run_pair_avx2(sub, h);
                let (q2, q3) = run_pair_avx2(sub.add(64), h);
                let top = _mm256_loadu_si256(sub.add(128 + 32 * h).cast());
                let m = _mm256_set1_epi8(0x30);
                let wq = [
                    _mm256_or_si256(q0, _mm256_and_si256(_mm256_slli_epi16::<4>(top), m)),
                    _mm256_or_si256(q1, _mm256_and_si256(_mm256_slli_epi16::<2>(top), m)),
                    _mm256_or_si256(q2, _mm256_and_si256(top, m)),
                    _mm256_or_si256(q3, _mm256_and_si256(_mm256_srli_epi16::<2>(top), m)),
                ];
                for (t, isum) in isum.iter_mut().enumerate() {
                    let qa = act(t).add(Q8K_QS + 16 * j).cast::<i32>();
                    let mut dot = _mm256_setzero_si256();
                    for (k, q) in wq.iter().enumerate() {
                        // q + 32 <= 63 times |a| <= 128: pair sums fit i16
                        let p = _mm256_maddubs_epi16(*q, _mm256_set1_epi32(qa.add(k).read_unaligned()));
                        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
                    }
                    *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(dot, sc));
                }
            }
            let dd = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            for (t, acc) in acc.iter_mut().enumerate() {
                let a = act(t);
                let mut offset = _mm256_setzero_si256();
                for p in 0..8 {
                    let sc = _mm256_loadu_si256(blk.add(Q6K_SC + 64 * p + 32 * h).cast());
                    let bs = a.add(Q8K_BSUMS + 4 * p).cast::<i32>().read_unaligned();
                    offset = _mm256_add_epi32(offset, _mm256_madd_epi16(sc, _mm256_set1_epi32(bs)));
                }
                let isum = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<5>(offset));
                let da = _mm256_set1_ps(q8k_d(a));
                acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(dd, da), _mm256_cvtepi32_ps(isum), acc[h]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add((t0 + t) * width), acc[0]);
        _mm256_storeu_ps(out.add((t0 + t) * width + 8), acc[1]);
    }
    T
}

/// Rows `8 h..8 h + 8` of [`scales_of_pairs_vnni`] (`pairs` already offset to the half).
///
/// # Safety
/// AVX2; `pairs` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_of_pairs_avx2(pairs: *const u8, odd: bool) -> __m256i {
    let pairs = _mm256_loadu_si256(pairs.cast());
    if odd {
        _mm256_srai_epi32::<16>(pairs)
    } else {
        _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pairs))
    }
}

/// One IQ4_XS group against tokens `t0..t0 + T`, in two halves of 8 rows; returns `T`.
///
/// # Safety
/// As [`k4_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs_avx2<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::IQ4_XS.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let ones = _mm256_set1_epi16(1);
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES.as_ptr().cast()));
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        for h in 0..2 {
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..8 {
                let sc = scales_of_pairs_avx2(blk.add(XS_SC + 64 * (j / 2) + 32 * h), j % 2 == 1);
                let mut wq = [_mm256_setzero_si256(); 8];
                for p in 0..4 {
                    let (lo, hi) = run_pair_avx2(blk.add(XS_QS + Q4K_SUB * j + 64 * p), h);
                    wq[2 * p] = _mm256_shuffle_epi8(table, lo);
                    wq[2 * p + 1] = _mm256_shuffle_epi8(table, hi);
                }
                for (t, isum) in isum.iter_mut().enumerate() {
                    let qa = act(t).add(Q8K_QS + 32 * j).cast::<i32>();
                    let mut dot = _mm256_setzero_si256();
                    for (k, q) in wq.iter().enumerate() {
                        let a = _mm256_set1_epi32(qa.add(k).read_unaligned());
                        // |a| <= 128 (unsigned) times q with a's sign (|q| <= 127): pair sums fit i16
                        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(*q, a));
                        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
                    }
                    *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(dot, sc));
                }
            }
            let dd = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            for (t, acc) in acc.iter_mut().enumerate() {
                let da = _mm256_set1_ps(q8k_d(act(t)));
                acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(dd, da), _mm256_cvtepi32_ps(isum[t]), acc[h]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add((t0 + t) * width), acc[0]);
        _mm256_storeu_ps(out.add((t0 + t) * width + 8), acc[1]);
    }
    T
}

/// One Q2_K group against tokens `t0..t0 + T`, in two halves of 8 rows; returns `T`.
///
/// # Safety
/// As [`k4_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_avx2<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::Q2K.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let ones = _mm256_set1_epi16(1);
    let three = _mm256_set1_epi8(3);
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        for h in 0..2 {
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..16 {
                let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(Q2K_SC + 16 * j + 8 * h).cast()));
                let q = _mm256_loadu_si256(blk.add(Q2K_QS + Q2K_SUB * j + 32 * h).cast());
                let wq = [
                    _mm256_and_si256(q, three),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(q), three),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), three),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(q), three),
                ];
                for (t, isum) in isum.iter_mut().enumerate() {
                    let qa = act(t).add(Q8K_QS + 16 * j).cast::<i32>();
                    let mut dot = _mm256_setzero_si256();
                    for (k, q) in wq.iter().enumerate() {
                        // q <= 3 times |a| <= 128: pair sums fit i16
                        let p = _mm256_maddubs_epi16(*q, _mm256_set1_epi32(qa.add(k).read_unaligned()));
                        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
                    }
                    *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(dot, sc));
                }
            }
            let dd = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            let dm = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(Q2K_DMIN + 16 * h).cast()));
            for (t, acc) in acc.iter_mut().enumerate() {
                let a = act(t);
                let mut mins = _mm256_setzero_si256();
                for p in 0..8 {
                    let m = _mm256_cvtepu8_epi16(_mm_loadu_si128(blk.add(Q2K_MIN + 32 * p + 16 * h).cast()));
                    let bs = a.add(Q8K_BSUMS + 4 * p).cast::<i32>().read_unaligned();
                    mins = _mm256_add_epi32(mins, _mm256_madd_epi16(m, _mm256_set1_epi32(bs)));
                }
                let da = _mm256_set1_ps(q8k_d(a));
                acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(dd, da), _mm256_cvtepi32_ps(isum[t]), acc[h]);
                acc[h] = _mm256_fnmadd_ps(_mm256_mul_ps(dm, da), _mm256_cvtepi32_ps(mins), acc[h]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add((t0 + t) * width), acc[0]);
        _mm256_storeu_ps(out.add((t0 + t) * width + 8), acc[1]);
    }
    T
}

/// One Q3_K group against tokens `t0..t0 + T`, in two halves of 8 rows; returns `T`.
///
/// # Safety
/// As [`k4_vnni`], for AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k_avx2<const T: usize>(
    gw: *const u8,
    blocks: usize,
    acts: *const u8,
    t0: usize,
    out: *mut f32,
    width: usize,
) -> usize {
    let gbb = InterleavedKFormat::Q3K.group_block_bytes();
    let a_row = blocks * Q8K_BYTES;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for b in 0..blocks {
        let blk = gw.add(b * gbb);
        if T == 1 {
            super::prefetch_lines(blk.wrapping_add(PREFETCH_AHEAD), gbb);
        }
        let act = |t: usize| acts.add((t0 + t) * a_row + b * Q8K_BYTES);
        for h in 0..2 {
            let sc_pairs: [__m256i; 8] = std::array::from_fn(|p| {
                _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(Q3K_SC + 32 * p + 16 * h).cast()))
            });
            let mut isum = [_mm256_setzero_si256(); T];
            for (p, pairs) in sc_pairs.iter().enumerate() {
                let sub = blk.add(Q3K_QS + Q3K_PAIR * p + 32 * h);
                let high = _mm256_loadu_si256(sub.add(128).cast());
                for s in 0..2 {
                    let j = 2 * p + s;
                    let sc = if s == 1 {
                        _mm256_srai_epi32::<16>(*pairs)
                    } else {
                        _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(*pairs))
                    };
                    let low = _mm256_loadu_si256(sub.add(64 * s).cast());
                    let wq = q3_k_runs!(
                        low,
                        high,
                        s,
                        _mm256_and_si256,
                        _mm256_or_si256,
                        _mm256_srli_epi16,
                        _mm256_slli_epi16,
                        _mm256_set1_epi8
                    );
                    for (t, isum) in isum.iter_mut().enumerate() {
                        let qa = act(t).add(Q8K_QS + 16 * j).cast::<i32>();
                        let mut dot = _mm256_setzero_si256();
                        for (k, q) in wq.iter().enumerate() {
                            // u <= 7 times |a| <= 128: pair sums fit i16
                            let p = _mm256_maddubs_epi16(*q, _mm256_set1_epi32(qa.add(k).read_unaligned()));
                            dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
                        }
                        *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(dot, sc));
                    }
                }
            }
            let dd = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
            for (t, acc) in acc.iter_mut().enumerate() {
                let a = act(t);
                let mut offset = _mm256_setzero_si256();
                for (p, pairs) in sc_pairs.iter().enumerate() {
                    let bs = a.add(Q8K_BSUMS + 4 * p).cast::<i32>().read_unaligned();
                    offset = _mm256_add_epi32(offset, _mm256_madd_epi16(*pairs, _mm256_set1_epi32(bs)));
                }
                let isum = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<2>(offset));
                let da = _mm256_set1_ps(q8k_d(a));
                acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(dd, da), _mm256_cvtepi32_ps(isum), acc[h]);
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
    use crate::interleaved::tests::ggml_rows;
    use crate::interleaved_k::tests::ALL_TYPES;
    use crate::interleaved_k::{dot_groups_scalar, InterleavedKRows, ROW_GROUP};
    use crate::k_quants::QK_K;
    use crate::test_data::TestRng;
    use crate::{cpu_has_avx512_vnni, GgmlType};

    /// Every kernel level the CPU has gives the scalar twin's bits, for every format and every token count
    /// 1..=11 (all the kernels' tile shapes and their leftovers), on random data and on extreme quants.
    #[test]
    fn kernels_equal_the_scalar_twin_bit_for_bit() {
        let avx2 =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        assert!(avx2, "every x86-64 machine this project targets has AVX2");
        let vnni = cpu_has_avx512_vnni();
        println!(
            "interleaved k kernels checked: avx2{}",
            if vnni { ", avx512-vnni" } else { " (no avx512-vnni here)" }
        );
        let mut rng = TestRng::new(41);
        for ty in ALL_TYPES {
            for (rows, cols, extreme) in [(35, 512, false), (16, 256, true), (48, 2048, false)] {
                let mut src = ggml_rows(&mut rng, ty, rows, cols);
                if extreme {
                    // every quant, scale and min at its largest: 0xff bytes (Q6_K's scales then read -1),
                    // and half the blocks with the largest positive Q6_K scales
                    src.fill(0xff);
                    if ty == GgmlType::Q6K {
                        for (b, block) in src.chunks_exact_mut(ty.type_size()).enumerate() {
                            if b % 2 == 0 {
                                block[192..208].fill(0x7f);
                            }
                            block[208..210].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
                        }
                    } else if ty == GgmlType::IQ4_XS {
                        // odd blocks every scale -32 and index 0 (value -127), even ones 31 and 15 (113)
                        for (b, block) in src.chunks_exact_mut(ty.type_size()).enumerate() {
                            if b % 2 == 1 {
                                block.fill(0);
                            }
                            block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
                        }
                    } else if ty == GgmlType::Q3K {
                        // even blocks every quant +3 (u = 7) and scale 31, odd ones -4 (u = 0) and -32; d 0.5
                        for (b, block) in src.chunks_exact_mut(ty.type_size()).enumerate() {
                            if b % 2 == 1 {
                                block.fill(0);
                            }
                            block[108..110].copy_from_slice(&[0x00, 0x38]);
                        }
                    } else if ty == GgmlType::Q2K {
                        // every quant 3, scale 15 and min 15, d and dmin 0.5
                        for block in src.chunks_exact_mut(ty.type_size()) {
                            block[80..84].copy_from_slice(&[0x00, 0x38, 0x00, 0x38]);
                        }
                    } else {
                        for block in src.chunks_exact_mut(ty.type_size()) {
                            block[..4].copy_from_slice(&[0x00, 0x38, 0x00, 0x38]);
                        }
                    }
                }
                let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
                let blocks = cols / QK_K;
                for tokens in 1..=11 {
                    let mut acts = ggml_rows(&mut rng, GgmlType::Q8K, tokens, cols);
                    if extreme {
                        for (i, block) in acts.chunks_exact_mut(GgmlType::Q8K.type_size()).enumerate() {
                            // every activation quant -128 (even blocks) or +127, with matching block sums
                            let (q, s): (u8, i16) = if i % 2 == 0 { (0x80, -128 * 16) } else { (0x7f, 127 * 16) };
                            block[4..4 + QK_K].fill(q);
                            for c in block[4 + QK_K..].chunks_exact_mut(2) {
                                c.copy_from_slice(&s.to_le_bytes());
                            }
                        }
                    }
                    let width = m.groups() * ROW_GROUP;
                    let mut want = vec![0.0f32; tokens * width];
                    dot_groups_scalar(m.format(), m.data_for_tests(), blocks, &acts, tokens, &mut want);
                    let mut got = vec![f32::NAN; tokens * width];
                    // SAFETY: checked above that the CPU has AVX2, FMA and F16C.
                    unsafe { super::dot_groups_avx2(m.format(), m.data_for_tests(), blocks, &acts, tokens, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "{ty} avx2 {rows}x{cols}, {tokens} tokens");
                    if vnni {
                        let mut got = vec![f32::NAN; tokens * width];
                        // SAFETY: the CPU reports AVX-512 F/BW/VL/VNNI.
                        unsafe {
                            super::dot_groups_vnni(m.format(), m.data_for_tests(), blocks, &acts, tokens, &mut got)
                        };
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
