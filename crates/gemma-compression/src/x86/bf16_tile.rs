//! The bf16 tile kernels of [`crate::bf16_tile`]: AVX-512 BF16 (`vdpbf16ps`) and an AVX2 emulation of the
//! same lanes. Both follow the pattern the module documents, so they equal the scalar twin bit for bit.
//!
//! With several tokens, blocks of rows x tokens (4 x 6 on AVX-512, 2 x 4 on AVX2) make one pass per
//! accumulator over its chunks, so each loaded vector serves a whole row or column of the block. With one
//! token each row streams through memory in order, its four accumulators in registers.

use std::arch::x86_64::*;

use super::sbs_dots::SfpVbmi;
use crate::bf16_tile::{ACCS, BF16_CHUNK};

/// Elements ahead of the one-token kernels' loads that they prefetch (12 KB, as the GGML tiles: the rows of
/// a matrix follow each other in memory, and without the hints one row at a time streams at well below the
/// memory's speed). A hint past the end of the weights is harmless.
const PREFETCH_AHEAD: usize = 6 * 1024;

/// # Safety
/// The CPU supports avx512f, avx512bw and avx512bf16; every row is `k` long, `acts` holds whole tokens of
/// `k` and `out` has `rows x tokens` places (checked by the caller).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn dot_bf16_tile_avx512(w: &[&[u16]], acts: &[u16], k: usize, out: &mut [f32]) {
    let tokens = acts.len() / k.max(1);
    assert!(w.iter().all(|r| r.len() == k) && acts.len() == tokens * k && out.len() == w.len() * tokens);
    if tokens == 1 {
        for (o, row) in out.iter_mut().zip(w) {
            *o = row_one_token512(row, acts);
        }
        return;
    }
    let mut r0 = 0;
    while r0 < w.len() {
        let rows = (w.len() - r0).min(4);
        let mut t0 = 0;
        while t0 < tokens {
            let t = (tokens - t0).min(6);
            match (rows, t) {
                (4, 6) => block512::<4, 6>(w, r0, acts, t0, k, out, tokens),
                (4, n) => block512_tokens::<4>(w, r0, acts, t0, n, k, out, tokens),
                (3, n) => block512_tokens::<3>(w, r0, acts, t0, n, k, out, tokens),
                (2, n) => block512_tokens::<2>(w, r0, acts, t0, n, k, out, tokens),
                (_, n) => block512_tokens::<1>(w, r0, acts, t0, n, k, out, tokens),
            }
            t0 += t;
        }
        r0 += rows;
    }
}

/// Loads chunk `c` of a row (zero-padded past `k`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn chunk512(p: *const u16, c: usize, k: usize) -> __m512bh {
    let i = c * BF16_CHUNK;
    let mask: __mmask32 = if i + BF16_CHUNK <= k { !0 } else { (1u32 << (k - i)) - 1 };
    std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p.add(i).cast()))
}

/// One row against one token, in memory order with the four accumulators live.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn row_one_token512(row: &[u16], act: &[u16]) -> f32 {
    let k = row.len();
    let chunks = k.div_ceil(BF16_CHUNK);
    let (w, a) = (row.as_ptr(), act.as_ptr());
    let mut acc = [_mm512_setzero_ps(); ACCS];
    let mut c = 0;
    while c + ACCS <= k / BF16_CHUNK {
        for (j, s) in acc.iter_mut().enumerate() {
            let at = (c + j) * BF16_CHUNK;
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(at + PREFETCH_AHEAD).cast());
            let wv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(at).cast()));
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(a.add(at).cast()));
            *s = _mm512_dpbf16_ps(*s, wv, av);
        }
        c += ACCS;
    }
    while c < chunks {
        acc[c % ACCS] = _mm512_dpbf16_ps(acc[c % ACCS], chunk512(w, c, k), chunk512(a, c, k));
        c += 1;
    }
    reduce512(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// One SFP row against one token: 64 codes at a time become two chunks of bf16 in registers ([`SfpVbmi`])
/// and go straight into `vdpbf16ps`, in the shared pattern, so the result equals decoding the row and
/// calling the tile kernel.
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512vbmi and avx512bf16; `codes` and `act` have the same length.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
pub(crate) unsafe fn dot_sfp_row_avx512(codes: &[u8], act: &[u16]) -> f32 {
    let k = codes.len();
    assert_eq!(act.len(), k);
    let sfp = SfpVbmi::new();
    let a = act.as_ptr();
    let mut acc = [_mm512_setzero_ps(); ACCS];
    let mut c = 0;
    // two chunks per step; a step of four chunks keeps the accumulator index static
    while (c + 4) * BF16_CHUNK <= k {
        for pair in 0..2 {
            let at = (c + 2 * pair) * BF16_CHUNK;
            _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().wrapping_add(at + PREFETCH_AHEAD / 2).cast());
            let [w0, w1] = sfp.decode64(&codes[at..]).map(|w| std::mem::transmute::<__m512i, __m512bh>(w));
            let a0 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(a.add(at).cast()));
            let a1 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(a.add(at + BF16_CHUNK).cast()));
            acc[2 * pair] = _mm512_dpbf16_ps(acc[2 * pair], w0, a0);
            acc[2 * pair + 1] = _mm512_dpbf16_ps(acc[2 * pair + 1], w1, a1);
        }
        c += 4;
    }
    // the rest: at most three chunks, the last maybe partial, decoded through the table
    let chunks = k.div_ceil(BF16_CHUNK);
    while c < chunks {
        let at = c * BF16_CHUNK;
        let mut buf = [0u16; BF16_CHUNK];
        let len = (k - at).min(BF16_CHUNK);
        for (b, &code) in buf.iter_mut().zip(&codes[at..at + len]) {
            *b = crate::sfp::sfp_decode_bf16(code);
        }
        acc[c % ACCS] = _mm512_dpbf16_ps(acc[c % ACCS], chunk512(buf.as_ptr(), 0, len), chunk512(a.add(at), 0, len));
        c += 1;
    }
    reduce512(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// One I8 row of whole groups against one token: each group's 128 values are decoded in registers
/// (`fma(inv_scale, q, -zero_point * inv_scale)`, rounded to bf16 by `vcvtne2ps2bf16`) as four chunks, which
/// are accumulators 0..3 of the shared pattern, so the result equals decoding the row to bf16 and calling the
/// tile kernel. `vcvtne2ps2bf16` treats f32 denormals as zero where the row decoder rounds them, so a chunk
/// holding a denormal, an infinity or a NaN (only a damaged or contrived group makes one) is rounded like the
/// decoder, one value at a time.
///
/// # Safety
/// The CPU supports avx512f, avx512bw, avx512dq and avx512bf16; `packed` starts at a group header and holds
/// `act.len() / 128` whole groups; `act.len()` is a multiple of 128.
#[allow(clippy::needless_range_loop)] // the index names the accumulator register
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16")]
pub(crate) unsafe fn dot_i8_row_avx512(packed: &[u8], act: &[u16]) -> f32 {
    use crate::int8_groups::{i8_group_params, I8_GROUP, I8_GROUP_BYTES};
    let k = act.len();
    let groups = k / I8_GROUP;
    assert!(k.is_multiple_of(I8_GROUP) && packed.len() >= groups * I8_GROUP_BYTES);
    let a = act.as_ptr();
    let mut acc = [_mm512_setzero_ps(); ACCS];
    for g in 0..groups {
        let head = g * I8_GROUP_BYTES;
        _mm_prefetch::<_MM_HINT_T0>(packed.as_ptr().wrapping_add(head + PREFETCH_AHEAD / 2).cast());
        let (inv_scale, zero_scaled) = i8_group_params(packed, head);
        let (scale_v, zero_v) = (_mm512_set1_ps(inv_scale), _mm512_set1_ps(zero_scaled));
        let values = packed.as_ptr().add(head + 4);
        for c in 0..ACCS {
            let q = _mm256_loadu_si256(values.add(c * BF16_CHUNK).cast());
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
            let (lo, hi) = (_mm512_fmadd_ps(scale_v, lo, zero_v), _mm512_fmadd_ps(scale_v, hi, zero_v));
            // QNaN, +-infinity, denormal, SNaN
            const SPECIAL: i32 = 0x01 | 0x08 | 0x10 | 0x20 | 0x80;
            let special = _mm512_fpclass_ps_mask::<SPECIAL>(lo) | _mm512_fpclass_ps_mask::<SPECIAL>(hi);
            let w = if special == 0 {
                _mm512_cvtne2ps_pbh(hi, lo)
            } else {
                let mut f = [0f32; BF16_CHUNK];
                _mm512_storeu_ps(f.as_mut_ptr(), lo);
                _mm512_storeu_ps(f.as_mut_ptr().add(16), hi);
                let words: [u16; BF16_CHUNK] = f.map(crate::sbs_codec::bf16_bits_rounded);
                chunk512(words.as_ptr(), 0, BF16_CHUNK)
            };
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                a.add(g * I8_GROUP + c * BF16_CHUNK).cast(),
            ));
            acc[c] = _mm512_dpbf16_ps(acc[c], w, av);
        }
    }
    reduce512(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// One NUQ row against one token: the row's elements `ofs..ofs + act.len()` of the stream, `ofs` a multiple
/// of 32 and the length of 128. Each group's 16 centres become a table of bf16 words, and each chunk's 32
/// 4-bit indices pick from it (`vpermw`) straight into `vdpbf16ps`, in the shared pattern, so the result
/// equals decoding the row to bf16 and calling the tile kernel (the words are the decoder's own: SFP
/// centres are exact bf16).
///
/// # Safety
/// The CPU supports avx512f, avx512bw and avx512bf16; `ofs % 32 == 0`, `act.len() % 128 == 0`, and the stream
/// holds the elements (checked by the caller).
#[allow(clippy::needless_range_loop)] // the index names the accumulator register
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn dot_nuq_row_avx512(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
    use crate::nuq::{NUQ_CLUSTERS, NUQ_GROUP, NUQ_GROUP_BYTES};
    let k = act.len();
    assert!(ofs.is_multiple_of(BF16_CHUNK) && k.is_multiple_of(ACCS * BF16_CHUNK));
    let a = act.as_ptr();
    let mut acc = [_mm512_setzero_ps(); ACCS];
    let mut group = usize::MAX;
    let mut table = _mm512_setzero_si512();
    let nibble = _mm512_set1_epi32(0x0f);
    let mut c = 0;
    while c * BF16_CHUNK < k {
        for j in 0..ACCS {
            let p = ofs + (c + j) * BF16_CHUNK;
            let base = p / NUQ_GROUP * NUQ_GROUP_BYTES;
            if p / NUQ_GROUP != group {
                group = p / NUQ_GROUP;
                let centres: [u16; 32] = std::array::from_fn(|i| {
                    if i < NUQ_CLUSTERS {
                        crate::sfp::sfp_decode_bf16(packed[base + i])
                    } else {
                        0
                    }
                });
                table = _mm512_loadu_si512(centres.as_ptr().cast());
                _mm_prefetch::<_MM_HINT_T0>(packed.as_ptr().wrapping_add(base + PREFETCH_AHEAD / 2).cast());
            }
            // 16 index bytes; byte i holds element 2i (low nibble) and 2i + 1 (high nibble), which are the
            // two words of dword i
            let bytes = _mm_loadu_si128(packed.as_ptr().add(base + NUQ_CLUSTERS + p % NUQ_GROUP / 2).cast());
            let b = _mm512_cvtepu8_epi32(bytes);
            let idx = _mm512_or_si512(
                _mm512_and_si512(b, nibble),
                _mm512_slli_epi32::<12>(_mm512_and_si512(b, _mm512_set1_epi32(0xf0))),
            );
            let w = std::mem::transmute::<__m512i, __m512bh>(_mm512_permutexvar_epi16(idx, table));
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(a.add((c + j) * BF16_CHUNK).cast()));
            acc[j] = _mm512_dpbf16_ps(acc[j], w, av);
        }
        c += ACCS;
    }
    reduce512(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// A block of `R` rows against `n` (1..=6) tokens.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block512_tokens<const R: usize>(
    w: &[&[u16]],
    r0: usize,
    acts: &[u16],
    t0: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
    tokens: usize,
) {
    match n {
        1 => block512::<R, 1>(w, r0, acts, t0, k, out, tokens),
        2 => block512::<R, 2>(w, r0, acts, t0, k, out, tokens),
        3 => block512::<R, 3>(w, r0, acts, t0, k, out, tokens),
        4 => block512::<R, 4>(w, r0, acts, t0, k, out, tokens),
        5 => block512::<R, 5>(w, r0, acts, t0, k, out, tokens),
        _ => block512::<R, 6>(w, r0, acts, t0, k, out, tokens),
    }
}

/// Rows `r0..r0 + R` against tokens `t0..t0 + T`: one pass per accumulator over its chunks, `R x T` sums
/// live in each, every weight load serving `T` tokens and every activation load `R` rows.
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // the indices name registers of the block
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block512<const R: usize, const T: usize>(
    w: &[&[u16]],
    r0: usize,
    acts: &[u16],
    t0: usize,
    k: usize,
    out: &mut [f32],
    tokens: usize,
) {
    let rows: [*const u16; R] = std::array::from_fn(|r| w[r0 + r].as_ptr());
    let a0 = acts[t0 * k..(t0 + T) * k].as_ptr();
    let chunks = k.div_ceil(BF16_CHUNK);
    // A few tokens (a decode batch) leave the product memory-bound: the first token block asks for the weights
    // PREFETCH_AHEAD further on, as the one-token kernel does (rows usually follow each other in memory).
    let prefetch = t0 == 0 && tokens <= 12;
    // accumulator p's chunks, R x T sums live (returned by value: no zeroed array on the stack)
    let pass = |p: usize| {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut c = p;
        while c < chunks {
            if prefetch {
                for row in rows {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c * BF16_CHUNK + PREFETCH_AHEAD).cast());
                }
            }
            let wv: [__m512bh; R] = std::array::from_fn(|r| chunk512(rows[r], c, k));
            for t in 0..T {
                let av = chunk512(a0.add(t * k), c, k);
                for r in 0..R {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], av);
                }
            }
            c += ACCS;
        }
        acc
    };
    let add = |x: [[__m512; T]; R], y: [[__m512; T]; R]| -> [[__m512; T]; R] {
        std::array::from_fn(|r| std::array::from_fn(|t| _mm512_add_ps(x[r][t], y[r][t])))
    };
    const { assert!(ACCS == 4) };
    let s01 = add(pass(0), pass(1));
    let s23 = add(pass(2), pass(3));
    for r in 0..R {
        for t in 0..T {
            out[(r0 + r) * tokens + t0 + t] = reduce512(_mm512_add_ps(s01[r][t], s23[r][t]));
        }
    }
}

/// Lanes `i + 8`, then `i + 4`, `i + 2`, `i + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn reduce512(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    reduce256(_mm256_add_ps(lo, hi))
}

/// Eight lanes: `i + 4`, then `i + 2`, `i + 1`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce256(s8: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
}

/// # Safety
/// The CPU supports avx2 and fma; shapes as for [`dot_bf16_tile_avx512`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_bf16_tile_avx2(w: &[&[u16]], acts: &[u16], k: usize, out: &mut [f32]) {
    let tokens = acts.len() / k.max(1);
    assert!(w.iter().all(|r| r.len() == k) && acts.len() == tokens * k && out.len() == w.len() * tokens);
    if tokens == 1 {
        for (o, row) in out.iter_mut().zip(w) {
            *o = row_one_token256(row, acts);
        }
        return;
    }
    let mut r0 = 0;
    while r0 < w.len() {
        let rows = (w.len() - r0).min(2);
        let mut t0 = 0;
        while t0 < tokens {
            let t = (tokens - t0).min(4);
            match (rows, t) {
                (2, 4) => block256::<2, 4>(w, r0, acts, t0, k, out, tokens),
                (2, 3) => block256::<2, 3>(w, r0, acts, t0, k, out, tokens),
                (2, 2) => block256::<2, 2>(w, r0, acts, t0, k, out, tokens),
                (2, _) => block256::<2, 1>(w, r0, acts, t0, k, out, tokens),
                (_, 4) => block256::<1, 4>(w, r0, acts, t0, k, out, tokens),
                (_, 3) => block256::<1, 3>(w, r0, acts, t0, k, out, tokens),
                (_, 2) => block256::<1, 2>(w, r0, acts, t0, k, out, tokens),
                _ => block256::<1, 1>(w, r0, acts, t0, k, out, tokens),
            }
            t0 += t;
        }
        r0 += rows;
    }
}

/// Half `h` of chunk `c` of a row: its 16 bf16 (zero-padded past `k`) as two f32 vectors, the odd elements
/// (the high halves of the dwords) and the even ones.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn half_chunk(row: &[u16], c: usize, h: usize) -> (__m256, __m256) {
    let i = c * BF16_CHUNK + 16 * h;
    let v = if i + 16 <= row.len() {
        _mm256_loadu_si256(row.as_ptr().add(i).cast())
    } else {
        let mut buf = [0u16; 16];
        let have = row.len().saturating_sub(i);
        buf[..have].copy_from_slice(&row[i.min(row.len())..]);
        _mm256_loadu_si256(buf.as_ptr().cast())
    };
    let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000u32 as i32));
    let even = _mm256_slli_epi32::<16>(v);
    (_mm256_castsi256_ps(odd), _mm256_castsi256_ps(even))
}

/// `v` with lanes below 2^-126 in magnitude (zero exponent) set to zero (`vdpbf16ps`'s DAZ, for weights).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn daz(v: __m256) -> __m256 {
    let bits = _mm256_castps_si256(v);
    let tiny = _mm256_cmpeq_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7f80_0000)), _mm256_setzero_si256());
    _mm256_castsi256_ps(_mm256_andnot_si256(tiny, bits))
}

/// Weight half-chunk with DAZ applied.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_half(row: &[u16], c: usize, h: usize) -> (__m256, __m256) {
    let (odd, even) = half_chunk(row, c, h);
    (daz(odd), daz(even))
}

/// `acc` plus the pair products of a half-chunk, odd element first (one `vdpbf16ps` lane step each).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_step(acc: __m256, w: (__m256, __m256), a: (__m256, __m256)) -> __m256 {
    _mm256_fmadd_ps(w.1, a.1, _mm256_fmadd_ps(w.0, a.0, acc))
}

/// The accumulators combined, `(a0 + a1) + (a2 + a3)` per half, then the halves (lane `i + 8`) and the lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish256(parts: [[__m256; 2]; ACCS]) -> f32 {
    let half =
        |h: usize| _mm256_add_ps(_mm256_add_ps(parts[0][h], parts[1][h]), _mm256_add_ps(parts[2][h], parts[3][h]));
    reduce256(_mm256_add_ps(half(0), half(1)))
}

/// One row against one token in memory order, its eight half-accumulators live.
#[inline]
#[allow(clippy::needless_range_loop)] // `h` picks both a half of the chunk and its accumulator
#[target_feature(enable = "avx2,fma")]
unsafe fn row_one_token256(row: &[u16], act: &[u16]) -> f32 {
    let chunks = row.len().div_ceil(BF16_CHUNK);
    let mut acc = [[_mm256_setzero_ps(); 2]; ACCS];
    for c in 0..chunks {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(c * BF16_CHUNK + PREFETCH_AHEAD).cast());
        for h in 0..2 {
            acc[c % ACCS][h] = pair_step(acc[c % ACCS][h], weight_half(row, c, h), half_chunk(act, c, h));
        }
    }
    finish256(acc)
}

/// Rows `r0..r0 + R` against tokens `t0..t0 + T`: one pass per accumulator and half (the halves never meet
/// before the reduction), `R x T` sums live in each.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block256<const R: usize, const T: usize>(
    w: &[&[u16]],
    r0: usize,
    acts: &[u16],
    t0: usize,
    k: usize,
    out: &mut [f32],
    tokens: usize,
) {
    let a0 = &acts[t0 * k..(t0 + T) * k];
    let chunks = k.div_ceil(BF16_CHUNK);
    // accumulator p's chunks in half h, R x T sums live (returned by value: no zeroed array on the stack)
    let pass = |p: usize, h: usize| {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut c = p;
        while c < chunks {
            let wv: [(__m256, __m256); R] = std::array::from_fn(|r| weight_half(w[r0 + r], c, h));
            for t in 0..T {
                let av = half_chunk(&a0[t * k..(t + 1) * k], c, h);
                for r in 0..R {
                    acc[r][t] = pair_step(acc[r][t], wv[r], av);
                }
            }
            c += ACCS;
        }
        acc
    };
    let add = |x: [[__m256; T]; R], y: [[__m256; T]; R]| -> [[__m256; T]; R] {
        std::array::from_fn(|r| std::array::from_fn(|t| _mm256_add_ps(x[r][t], y[r][t])))
    };
    const { assert!(ACCS == 4) };
    // per half (a0 + a1) + (a2 + a3), then lane i + 8 is the second half's lane i
    let half = |h: usize| add(add(pass(0, h), pass(1, h)), add(pass(2, h), pass(3, h)));
    let first = half(0);
    let second = half(1);
    for r in 0..R {
        for t in 0..T {
            out[(r0 + r) * tokens + t0 + t] = reduce256(_mm256_add_ps(first[r][t], second[r][t]));
        }
    }
}
