//! Dots of bf16 weight rows with bf16 activations, the way gemma.cpp's MatMul takes SFP and BF16 weights:
//! activations rounded to bf16 once per product, every product exact in f32, f32 sums. Where the CPU has
//! AVX-512 BF16 one `vdpbf16ps` does 32 multiply-adds, twice the f32 FMA rate, which is what a prefill needs.
//!
//! Every kernel accumulates one (row, token) pair in the same pattern, so a result never depends on the
//! tile shape, the batch or the SIMD level:
//! - four accumulators of 16 f32 lanes start at +0; chunk `c` (elements `32c..32c + 32`, the last one
//!   zero-padded) goes to accumulator `c % 4`, adding elements `32c + 2i + 1` then `32c + 2i` to its lane `i`,
//!   each with one rounding (`vdpbf16ps` as Intel defines it, and as Zen 4 computes it). Four independent
//!   chains let one row stream through memory at full speed when a single token leaves nothing else to
//!   overlap;
//! - inputs below 2^-126 count as zero, and so does a lane that falls below it (the instruction's DAZ and
//!   FTZ; the AVX2 emulation does the former for weights, [`round_acts_to_bf16`] for activations, and skips
//!   the latter, which only a partial sum below 1.2e-38 would show);
//! - the accumulators are summed lane by lane as `(a0 + a1) + (a2 + a3)`, then the lanes as `i + 8`, then
//!   `i + 4`, `i + 2`, `i + 1`.

/// Elements one accumulation step takes (one 512-bit register of bf16).
pub const BF16_CHUNK: usize = 32;
const LANES: usize = 16;
/// Accumulators per dot (chunk `c` goes to `c % ACCS`).
pub(crate) const ACCS: usize = 4;

/// Rounds f32 activations to bf16 bits (nearest even; NaN stays NaN) with magnitudes below 2^-126 flushed
/// to (signed) zero, as the dot kernels' inputs must be.
pub fn round_acts_to_bf16(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len(), "round_acts_to_bf16: {} values into {}", x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        let b = crate::sbs_codec::bf16_bits_rounded(v);
        *o = if b & 0x7f80 == 0 { b & 0x8000 } else { b };
    }
}

/// The dots of the bf16 weight rows `w` (each `k` long) with the tokens of `acts` (`tokens` rows of `k`):
/// `out[r * tokens + t]`. Each result is the same whatever the number of rows and tokens in the call.
pub fn dot_bf16_tile(w: &[&[u16]], acts: &[u16], k: usize, out: &mut [f32]) {
    let tokens = acts.len().checked_div(k).unwrap_or(0);
    assert!(
        w.iter().all(|r| r.len() == k) && acts.len() == tokens * k && out.len() == w.len() * tokens,
        "dot_bf16_tile: {} rows of {k} (lengths {:?}), {} activations, {} outputs",
        w.len(),
        w.iter().map(|r| r.len()).collect::<Vec<_>>(),
        acts.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512_bf16() {
            // SAFETY: the CPU reports AVX-512 F, BW and BF16; the shapes were checked above.
            unsafe { crate::x86::bf16_tile::dot_bf16_tile_avx512(w, acts, k, out) };
            return;
        }
        if crate::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: simd_level() is at least Avx2 only when the CPU reports avx2, fma and f16c.
            unsafe { crate::x86::bf16_tile::dot_bf16_tile_avx2(w, acts, k, out) };
            return;
        }
    }
    dot_bf16_tile_scalar(w, acts, k, out);
}

/// One row of SFP codes against one token's bf16 activations, equal to decoding the row with
/// `SfpCodec::decode_bf16` and calling [`dot_bf16_tile`]. With [`has_fused_sfp_row`] the codes are decoded
/// in registers (no copy of the row); otherwise this is the scalar twin, and decoding the rows first is faster.
pub fn dot_sfp_row_bf16(codes: &[u8], act: &[u16]) -> f32 {
    assert_eq!(codes.len(), act.len(), "dot_sfp_row_bf16: {} codes, {} activations", codes.len(), act.len());
    #[cfg(target_arch = "x86_64")]
    if has_fused_sfp_row() {
        // SAFETY: the CPU reports AVX-512 F, BW, VBMI and BF16; the lengths are equal.
        return unsafe { crate::x86::bf16_tile::dot_sfp_row_avx512(codes, act) };
    }
    dot_bf16_lanes(codes.len(), |i| crate::sfp::sfp_decode_bf16(codes[i]), |i| act[i])
}

/// One row of I8 groups (`packed` from the row's first group header, `act.len() / 128` whole groups) against
/// one token's bf16 activations, equal to decoding the row with `I8Codec::decode_bf16` and calling
/// [`dot_bf16_tile`]. With [`has_fused_i8_row`] the groups are decoded in registers; otherwise this is the
/// scalar twin on the decoded values.
pub fn dot_i8_row_bf16(packed: &[u8], act: &[u16]) -> f32 {
    use crate::int8_groups::{i8_packed_bytes, i8_value_at, I8_GROUP};
    let k = act.len();
    assert!(
        k.is_multiple_of(I8_GROUP) && packed.len() >= i8_packed_bytes(k),
        "dot_i8_row_bf16: {} bytes for {k} activations (whole groups of {I8_GROUP})",
        packed.len()
    );
    #[cfg(target_arch = "x86_64")]
    if has_fused_i8_row() {
        // SAFETY: the CPU reports AVX-512 F, BW, DQ and BF16; whole groups were checked above.
        return unsafe { crate::x86::bf16_tile::dot_i8_row_avx512(packed, act) };
    }
    dot_bf16_lanes(k, |i| crate::sbs_codec::bf16_bits_rounded(i8_value_at(packed, i)), |i| act[i])
}

/// Whether [`dot_i8_row_bf16`] has its fused kernel here (AVX-512 DQ and BF16).
pub fn has_fused_i8_row() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512_bf16() && is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Elements `ofs..ofs + act.len()` of a NUQ stream (one row) against one token's bf16 activations, equal to
/// decoding them with `NuqCodec::decode_bf16` and calling [`dot_bf16_tile`]. With [`has_fused_nuq_row`] for
/// the length and `ofs` a multiple of 32 (rows of a matrix of such a width) the indices pick their bf16
/// centres in registers; otherwise this is the scalar twin.
pub fn dot_nuq_row_bf16(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
    let k = act.len();
    crate::sbs_codec::assert_dot_stream(&crate::nuq::NuqCodec, packed.len(), ofs, k);
    #[cfg(target_arch = "x86_64")]
    if has_fused_nuq_row(k) && ofs.is_multiple_of(BF16_CHUNK) {
        // SAFETY: the CPU reports AVX-512 F, BW and BF16; alignment and the stream's extent were checked.
        return unsafe { crate::x86::bf16_tile::dot_nuq_row_avx512(packed, ofs, act) };
    }
    dot_bf16_lanes(k, |i| crate::sfp::sfp_decode_bf16(crate::nuq::nuq_code_at(packed, ofs + i)), |i| act[i])
}

/// Whether [`dot_nuq_row_bf16`] decodes rows of `k` values in registers here (AVX-512 BF16, `k` a multiple of
/// 128, four chunks of 32).
pub fn has_fused_nuq_row(k: usize) -> bool {
    has_avx512_bf16() && k.is_multiple_of(ACCS * BF16_CHUNK)
}

/// Whether [`dot_sfp_row_bf16`] has its fused kernel here (AVX-512 VBMI and BF16).
pub fn has_fused_sfp_row() -> bool {
    has_avx512_bf16() && crate::has_avx512_vbmi()
}

/// Whether the AVX-512 BF16 kernel runs here: the CPU has it and `GEMMA_SIMD` does not ask for less.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| crate::simd_level() >= crate::SimdLevel::Avx512 && is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn daz(b: u16) -> f32 {
    if b & 0x7f80 == 0 {
        0.0
    } else {
        f32::from_bits((b as u32) << 16)
    }
}

/// One `vdpbf16ps` lane step: `acc + w * a` rounded once, with FTZ.
#[inline(always)]
fn lane_step(acc: f32, w: u16, a: u16) -> f32 {
    let r = daz(w).mul_add(daz(a), acc);
    if r.abs() < f32::MIN_POSITIVE {
        0.0f32.copysign(r)
    } else {
        r
    }
}

/// The 16 lanes summed in the kernels' order.
#[inline(always)]
pub(crate) fn reduce_bf16_lanes(l: &[f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for i in 0..8 {
        s8[i] = l[i] + l[i + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// One (row, token) dot in the shared pattern: the scalar twin of every kernel.
pub(crate) fn dot_bf16_scalar(w: &[u16], a: &[u16]) -> f32 {
    dot_bf16_lanes(w.len().min(a.len()), |i| w[i], |i| a[i])
}

/// [`dot_bf16_scalar`] of `k` elements given one at a time.
fn dot_bf16_lanes(k: usize, w: impl Fn(usize) -> u16, a: impl Fn(usize) -> u16) -> f32 {
    let mut accs = [[0.0f32; LANES]; ACCS];
    for c in 0..k.div_ceil(BF16_CHUNK) {
        for (i, lane) in accs[c % ACCS].iter_mut().enumerate() {
            let j = c * BF16_CHUNK + 2 * i;
            let (w_at, a_at) = (|p: usize| if p < k { w(p) } else { 0 }, |p: usize| if p < k { a(p) } else { 0 });
            *lane = lane_step(*lane, w_at(j + 1), a_at(j + 1));
            *lane = lane_step(*lane, w_at(j), a_at(j));
        }
    }
    let lanes: [f32; LANES] = std::array::from_fn(|i| (accs[0][i] + accs[1][i]) + (accs[2][i] + accs[3][i]));
    reduce_bf16_lanes(&lanes)
}

/// [`dot_bf16_tile`] one pair at a time.
pub(crate) fn dot_bf16_tile_scalar(w: &[&[u16]], acts: &[u16], k: usize, out: &mut [f32]) {
    let tokens = out.len() / w.len().max(1);
    for (r, row) in w.iter().enumerate() {
        for t in 0..tokens {
            out[r * tokens + t] = dot_bf16_scalar(row, &acts[t * k..(t + 1) * k]);
        }
    }
}

/// `bytes` (little-endian bf16, as in an SBS stream) as words, when they are 2-byte aligned (an SBS blob
/// always is: blobs start on 256-byte boundaries of a page-aligned mapping).
#[inline]
pub fn bf16_words(bytes: &[u8]) -> Option<&[u16]> {
    if !bytes.len().is_multiple_of(2) || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<u16>()) {
        return None;
    }
    // SAFETY: the pointer is aligned for u16 and the length is even, so the prefix and suffix are empty;
    // every bit pattern is a valid u16.
    let (head, words, tail) = unsafe { bytes.align_to::<u16>() };
    (head.is_empty() && tail.is_empty()).then_some(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::TestRng;

    fn random_bf16(rng: &mut TestRng, n: usize) -> Vec<u16> {
        rng.row(n).into_iter().map(crate::sbs_codec::bf16_bits_rounded).collect()
    }

    /// Each kernel this CPU runs against the scalar twin, bit for bit, for tile shapes on both sides of
    /// every kernel's row and token blocking and widths with and without a partial last chunk.
    #[test]
    fn every_kernel_equals_the_scalar_twin_for_every_tile_shape() {
        let mut rng = TestRng::new(7);
        let mut checked = Vec::new();
        for k in [32usize, 64, 96, 128, 160, 640, 40, 7, 1, 200] {
            for rows in 1..=9 {
                for tokens in [1usize, 2, 3, 4, 5, 6, 7, 11, 13] {
                    let w: Vec<Vec<u16>> = (0..rows).map(|_| random_bf16(&mut rng, k)).collect();
                    let w_refs: Vec<&[u16]> = w.iter().map(|r| r.as_slice()).collect();
                    let mut acts = vec![0u16; tokens * k];
                    let raw: Vec<f32> = rng.row(tokens * k);
                    round_acts_to_bf16(&raw, &mut acts);
                    let mut want = vec![0f32; rows * tokens];
                    dot_bf16_tile_scalar(&w_refs, &acts, k, &mut want);
                    #[cfg(target_arch = "x86_64")]
                    {
                        let mut got = vec![0f32; rows * tokens];
                        if is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw") {
                            // SAFETY: checked just above.
                            unsafe { crate::x86::bf16_tile::dot_bf16_tile_avx512(&w_refs, &acts, k, &mut got) };
                            assert_eq!(bits(&got), bits(&want), "avx512bf16 k {k} rows {rows} tokens {tokens}");
                            checked.push("avx512bf16");
                        }
                        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                            // SAFETY: checked just above.
                            unsafe { crate::x86::bf16_tile::dot_bf16_tile_avx2(&w_refs, &acts, k, &mut got) };
                            assert_eq!(bits(&got), bits(&want), "avx2 k {k} rows {rows} tokens {tokens}");
                            checked.push("avx2");
                        }
                    }
                    // and the twin is the plain f64 dot of the rounded values, to within f32 summation error
                    for r in 0..rows {
                        for t in 0..tokens {
                            let exact: f64 = (0..k).map(|i| daz(w[r][i]) as f64 * daz(acts[t * k + i]) as f64).sum();
                            let bound: f64 =
                                (0..k).map(|i| (daz(w[r][i]) as f64 * daz(acts[t * k + i]) as f64).abs()).sum::<f64>()
                                    * 1e-6;
                            assert!((want[r * tokens + t] as f64 - exact).abs() <= bound + 1e-30);
                        }
                    }
                }
            }
        }
        checked.sort();
        checked.dedup();
        println!("bf16 tile kernels checked against the scalar twin: {checked:?}");
    }

    /// The fused SFP kernel (or, without it, the twin on the codes) equals decoding then the scalar twin, for
    /// every code and lengths with and without whole steps of four chunks and a partial last chunk.
    #[test]
    fn fused_sfp_row_equals_decoding_then_the_twin() {
        let mut rng = TestRng::new(5);
        for k in [1usize, 31, 32, 64, 127, 128, 129, 256, 640, 700, 1024, 2048] {
            let codes: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
            let mut act = vec![0u16; k];
            round_acts_to_bf16(&rng.row(k), &mut act);
            let decoded: Vec<u16> = codes.iter().map(|&c| crate::sfp::sfp_decode_bf16(c)).collect();
            let want = dot_bf16_scalar(&decoded, &act);
            let got = dot_sfp_row_bf16(&codes, &act);
            assert_eq!(got.to_bits(), want.to_bits(), "k {k}: {got} vs {want}");
        }
        println!("fused SFP kernel checked: {}", has_fused_sfp_row());
    }

    /// The fused I8 kernel (or the twin on the groups) equals decoding the row to bf16 then the scalar twin,
    /// on random groups and on groups whose scale makes denormal, infinite and NaN values.
    #[test]
    fn fused_i8_row_equals_decoding_then_the_twin() {
        use crate::int8_groups::I8_GROUP_BYTES;
        use crate::{sbs_codec, SbsCodecType};
        let codec = sbs_codec(SbsCodecType::I8);
        let mut rng = TestRng::new(8);
        for k in [128usize, 256, 640, 1024, 2048] {
            let mut packed = vec![0u8; codec.packed_bytes(k)];
            codec.encode(&rng.row(k), &mut packed, 0).unwrap();
            let mut act = vec![0u16; k];
            round_acts_to_bf16(&rng.row(k), &mut act);
            let check = |packed: &[u8], act: &[u16], what: &str| {
                let mut decoded = vec![0u16; k];
                codec.decode_bf16(packed, 0, &mut decoded).unwrap();
                let want = dot_bf16_scalar(&decoded, act);
                let got = dot_i8_row_bf16(packed, act);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "k {k} {what}: {got} vs {want}"
                );
            };
            check(&packed, &act, "random");
            // inverse scales (bf16 bits) of 2^-140 (denormal values), 1.2e-38 (values at the edge of the
            // normal range), infinity, NaN; zero point 0 so q * inv_scale is the value
            for (bits, what) in [(0x0010u16, "denormal"), (0x0082, "edge"), (0x7f80, "inf"), (0x7fc1, "nan")] {
                let mut odd = packed.clone();
                let g = (k / 128 - 1) * I8_GROUP_BYTES;
                odd[g..g + 4].copy_from_slice(&[bits as u8, (bits >> 8) as u8, 0, 0]);
                check(&odd, &act, what);
            }
            // Every value of a group 0.99994 * 2^-126, a denormal the decoder rounds up to the normal 2^-126
            // (inverse scale 1.0078 * 2^-126, zero point -0.9922, q = 0), against activations 1.5 so that no
            // lane is flushed: the sum is nonzero only if those values are rounded as the decoder rounds them.
            let mut edge = packed.clone();
            edge[..4].copy_from_slice(&[0x81, 0x00, 0x7e, 0xbf]);
            edge[4..I8_GROUP_BYTES].fill(0);
            let ones = vec![0x3fc0u16; k];
            check(&edge, &ones, "rounded up to normal");
        }
        println!("fused I8 kernel checked: {}", has_fused_i8_row());
    }

    /// The NUQ row kernel equals decoding then the scalar twin, for rows that start inside a group (as the
    /// 640-wide rows of Gemma 3 270M do), at its start, and unaligned rows that take the twin.
    #[test]
    fn nuq_row_equals_decoding_then_the_twin() {
        use crate::{sbs_codec, SbsCodecType};
        let codec = sbs_codec(SbsCodecType::Nuq);
        let mut rng = TestRng::new(9);
        let n = 4 * 2048;
        let mut packed = vec![0u8; codec.packed_bytes(n)];
        let values: Vec<f32> = rng.row(n).iter().map(|v| v.clamp(-1.8, 1.8)).collect();
        codec.encode(&values, &mut packed, 0).unwrap();
        for (ofs, k) in [(0usize, 128usize), (640, 640), (1280, 640), (96, 256), (256, 2048), (8, 128), (0, 100)] {
            let mut act = vec![0u16; k];
            round_acts_to_bf16(&rng.row(k), &mut act);
            let mut decoded = vec![0u16; k];
            codec.decode_bf16(&packed, ofs, &mut decoded).unwrap();
            let want = dot_bf16_scalar(&decoded, &act);
            let got = dot_nuq_row_bf16(&packed, ofs, &act);
            assert_eq!(got.to_bits(), want.to_bits(), "ofs {ofs} k {k}: {got} vs {want}");
        }
        // the last element of the stream, and one past it
        let act = vec![0x3f80u16; 128];
        dot_nuq_row_bf16(&packed, n - 128, &act);
        assert!(std::panic::catch_unwind(|| dot_nuq_row_bf16(&packed, n - 96, &act)).is_err());
    }

    #[test]
    fn subnormal_activations_are_flushed_and_nan_survives() {
        let mut out = [0u16; 4];
        round_acts_to_bf16(&[1e-39, -1e-39, f32::NAN, 1.0], &mut out);
        assert_eq!(out[0], 0);
        assert_eq!(out[1], 0x8000);
        assert!(f32::from_bits((out[2] as u32) << 16).is_nan());
        assert_eq!(out[3], 0x3f80);
    }

    /// The twin's lane step is `vdpbf16ps`'s: odd element first, one rounding per add, DAZ and FTZ. On a CPU
    /// with AVX-512 BF16 the instruction itself is checked on the cases that tell these rules apart.
    #[test]
    fn lane_rules_are_the_instructions() {
        // tiny products and partial sums flush to zero
        assert_eq!(lane_step(0.0, 0x0080, 0x3f00), 0.0);
        let mut w = [0u16; 32];
        let mut a = [0u16; 32];
        (w[0], a[0], w[1], a[1]) = (0x0080, 0x3f80, 0x8080, 0x3f00);
        assert_eq!(dot_bf16_scalar(&w, &a), f32::from_bits(0x0080_0000));
        // odd element first: 1 + 2^-24 stays 1 (a tie, to even), then + 2^-23 gives 1 + 2^-23; the other
        // order would give 1 + 2^-23 + 2^-24 -> 1 + 2^-22 (a tie, to even)
        let mut w2 = [0u16; 160];
        let mut a2 = [0u16; 160];
        (w2[0], a2[0]) = (0x3f80, 0x3f80); // chunk 0: lane 0 of accumulator 0 = 1
        (w2[129], a2[129]) = (0x3380, 0x3f80); // chunk 4 (accumulator 0 again), odd: 2^-24
        (w2[128], a2[128]) = (0x3400, 0x3f80); // chunk 4, even: 2^-23
        let odd_first = (1.0f32 + 2f32.powi(-24)) + 2f32.powi(-23);
        let even_first = (1.0f32 + 2f32.powi(-23)) + 2f32.powi(-24);
        assert_ne!(odd_first, even_first);
        assert_eq!(dot_bf16_scalar(&w2, &a2), odd_first);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw") {
            let mut rng = TestRng::new(3);
            for case in 0..2000 {
                let w: Vec<u16> = (0..320).map(|_| rng.next_u64() as u16).collect();
                let a: Vec<u16> = (0..320).map(|_| rng.next_u64() as u16).collect();
                let w = if case == 0 { [0x0080, 0x3f80, 0x8080, 0x3f00].repeat(80) } else { w };
                let mut got = [0f32; 1];
                // SAFETY: checked just above.
                unsafe { crate::x86::bf16_tile::dot_bf16_tile_avx512(&[&w], &a, 320, &mut got) };
                let want = dot_bf16_scalar(&w, &a);
                assert!(
                    got[0].to_bits() == want.to_bits() || (got[0].is_nan() && want.is_nan()),
                    "case {case}: {} vs {}",
                    got[0],
                    want
                );
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
