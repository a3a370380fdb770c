//! gemma.cpp's own weight formats (the tensor types of its `.sbs` files): F32, BF16, SFP, NUQ and I8, as one
//! trait, [`SbsCodec`], beside the GGML [`QuantFormat`](crate::QuantFormat).
//!
//! Why a sibling trait rather than more `QuantFormat`s: an SBS tensor is one *stream* (gemma.cpp's
//! `PackedSpan` plus `packed_ofs`), not a row of self-contained blocks. NUQ and I8 keep a table or a scale
//! per group of 256 or 128 elements counted from the start of the whole tensor, so a row of 640 elements
//! starts in the middle of a group and its bytes cannot be sliced out on their own. Activations are also
//! plain f32 (or bf16, as gemma.cpp's MatMul uses them), never quantized blocks. So every method here takes
//! the whole stream and an element offset, and `dot_rows` takes the first row's index instead of row slices.
//!
//! Dot products accumulate in f32 with FMA in a fixed pattern (element `i` into lane `i % 8` of accumulator
//! `(i / 8) % 4`, then a fixed reduction tree), which the AVX2 kernels and their scalar twins share, so the two
//! agree bit for bit and a result never depends on how calls are batched.

use crate::float::{FloatCodec, BF16 as Bf16Rounding};
use crate::{int8_groups, nuq, sfp};

/// Which gemma.cpp number format a stream holds (gemma.cpp's `Type`, less the non-weight types). The SBS
/// file-format ids live with the file reader; this is the number format only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SbsCodecType {
    F32,
    Bf16,
    /// 8-bit switched floating point, |x| <= 1.875.
    Sfp,
    /// Non-uniform quantization: per 256 elements, 16 SFP centres and 4-bit indices.
    Nuq,
    /// Per 128 elements, a bf16 inverse scale and zero point, then one i8 each.
    I8,
}

impl SbsCodecType {
    pub const ALL: [SbsCodecType; 5] =
        [SbsCodecType::F32, SbsCodecType::Bf16, SbsCodecType::Sfp, SbsCodecType::Nuq, SbsCodecType::I8];

    /// gemma.cpp's name for the type (`kTypeStrings`).
    pub fn name(self) -> &'static str {
        match self {
            SbsCodecType::F32 => "f32",
            SbsCodecType::Bf16 => "bf16",
            SbsCodecType::Sfp => "sfp",
            SbsCodecType::Nuq => "nuq",
            SbsCodecType::I8 => "i8",
        }
    }
}

impl std::fmt::Display for SbsCodecType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SbsCodecError {
    /// SFP and NUQ hold magnitudes up to 1.875 only (scale first, see [`scale_weights`]); no format holds NaN,
    /// and I8 needs finite values.
    #[error("{codec}: element {index} = {value} cannot be encoded")]
    OutOfRange { codec: SbsCodecType, index: usize, value: f32 },
    /// Encoding must start on a group boundary (256 elements for NUQ, 128 for I8).
    #[error("{codec}: packed offset {packed_ofs} is not a multiple of the group size {group}")]
    UnalignedOffset { codec: SbsCodecType, packed_ofs: usize, group: usize },
    /// The stream is shorter than `packed_bytes(packed_ofs + n)`.
    #[error("{codec}: {n} elements at offset {packed_ofs} need a {needed}-byte stream, it has {got}")]
    StreamTooShort { codec: SbsCodecType, packed_ofs: usize, n: usize, needed: usize, got: usize },
}

/// One gemma.cpp weight format. Offsets (`packed_ofs`) count elements from the start of the stream, as in
/// gemma.cpp; a matrix of `rows x cols` is one stream with row `r` at `r * cols`.
///
/// `encode` and `decode*` check the stream length and return errors. The dots (`dot`, `dot_bf16`,
/// `dot_rows`) are the hot path: their length contracts are the caller's (computed from a validated tensor
/// shape) and a violation panics rather than reading out of bounds, as for `QuantFormat::vec_dot`.
pub trait SbsCodec: Sync + Send {
    fn codec_type(&self) -> SbsCodecType;
    /// Elements that share side information (1 for F32, BF16 and SFP; 256 for NUQ; 128 for I8). Encoding
    /// starts at a multiple of it.
    fn group_size(&self) -> usize;
    /// Bytes of a stream of `n` elements (gemma.cpp's `PackedEnd` for NUQ and I8).
    fn packed_bytes(&self, n: usize) -> usize;
    /// Encodes `src` into the stream at element offset `packed_ofs` (a multiple of `group_size`), exactly as
    /// gemma.cpp's `Compress` does. Returns the number of unused NUQ clusters (0 for the other formats).
    fn encode(&self, src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<usize, SbsCodecError>;
    /// Decodes `dst.len()` elements starting at element `packed_ofs` to f32.
    fn decode(&self, packed: &[u8], packed_ofs: usize, dst: &mut [f32]) -> Result<(), SbsCodecError>;
    /// Decodes to bf16 bits as gemma.cpp's bf16 `DecompressAndZeroPad` does: exact for BF16, SFP and NUQ,
    /// rounded to nearest even for F32 and I8.
    fn decode_bf16(&self, packed: &[u8], packed_ofs: usize, dst: &mut [u16]) -> Result<(), SbsCodecError> {
        let mut tmp = vec![0.0f32; dst.len()];
        self.decode(packed, packed_ofs, &mut tmp)?;
        for (o, &v) in dst.iter_mut().zip(&tmp) {
            *o = bf16_bits_rounded(v);
        }
        Ok(())
    }
    /// Dot of `act.len()` elements starting at `packed_ofs` with f32 activations.
    fn dot(&self, packed: &[u8], packed_ofs: usize, act: &[f32]) -> f32;
    /// Dot with bf16 activations (bits), as gemma.cpp's MatMul computes it: weights taken as bf16 (F32 and I8
    /// rounded to nearest even), products exact in f32, f32 sums.
    fn dot_bf16(&self, packed: &[u8], packed_ofs: usize, act: &[u16]) -> f32;

    /// Every dot of `rows` weight rows of `n` elements, the first at row index `first_row` of the stream, with
    /// `n_tokens` activation rows of `n` f32 in `acts`: `out[r * n_tokens + t]` = dot of stream row
    /// `first_row + r` with activation row `t`. Each result is bitwise `dot` of that pair, whatever `rows` and
    /// `n_tokens` are. With several tokens a row is decoded once and its f32 copy dotted with each token.
    #[allow(clippy::too_many_arguments)] // mirrors QuantFormat::dot_rows plus the first row's index
    fn dot_rows(
        &self,
        n: usize,
        packed: &[u8],
        first_row: usize,
        rows: usize,
        acts: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) {
        assert!(
            acts.len() == n * n_tokens && out.len() == rows * n_tokens,
            "dot_rows: {n_tokens} tokens of {n} in {} activations, {rows} rows into {} outputs",
            acts.len(),
            out.len()
        );
        if n_tokens == 1 {
            for (r, o) in out.iter_mut().enumerate() {
                *o = self.dot(packed, (first_row + r) * n, acts);
            }
            return;
        }
        // Two rows decoded at a time: the batched kernel lets each activation load serve both.
        let mut pair = vec![0.0f32; 2 * n];
        for r in (0..rows).step_by(2) {
            let count = (rows - r).min(2);
            for (j, row) in pair[..count * n].chunks_exact_mut(n.max(1)).enumerate() {
                if let Err(e) = self.decode(packed, (first_row + r + j) * n, row) {
                    panic!("dot_rows: {e}");
                }
            }
            // The decoded rows are exactly what `dot` multiplies, and the f32 dot accumulates the same way.
            dot_decoded_rows(&pair[..count * n], n, acts, &mut out[r * n_tokens..(r + count) * n_tokens]);
        }
    }
}

/// The codec for a format.
pub fn sbs_codec(t: SbsCodecType) -> &'static dyn SbsCodec {
    match t {
        SbsCodecType::F32 => &F32_CODEC,
        SbsCodecType::Bf16 => &BF16_CODEC,
        SbsCodecType::Sfp => &sfp::SFP_CODEC,
        SbsCodecType::Nuq => &nuq::NUQ_CODEC,
        SbsCodecType::I8 => &int8_groups::I8_CODEC,
    }
}

/// gemma.cpp's `ScaleWeights`: if some |x| exceeds 1.875 (SFP's largest magnitude), divides every value by
/// `maxabs / 1.875` (multiplying by its f64-computed reciprocal), clamps magnitudes to 1.875 and returns the
/// factor that restores the originals (the tensor's `scale`); else leaves `raw` alone and returns 1.
pub fn scale_weights(raw: &mut [f32]) -> f32 {
    let maxabs = raw.iter().fold(0.0f32, |m, &x| if m < x.abs() { x.abs() } else { m });
    if maxabs <= sfp::SFP_MAX {
        return 1.0;
    }
    let scale = maxabs / sfp::SFP_MAX;
    let inv_scale = (1.0 / scale as f64) as f32;
    for x in raw.iter_mut() {
        let magn = (*x * inv_scale).abs().min(sfp::SFP_MAX);
        *x = magn.copysign(*x);
    }
    scale
}

/// f32 to bf16 bits, round to nearest even (hwy's `BF16FromF32`, ggml's rule; NaN stays NaN).
pub(crate) fn bf16_bits_rounded(v: f32) -> u16 {
    let mut b = [0u8; 2];
    Bf16Rounding::store(v, &mut b);
    u16::from_le_bytes(b)
}

/// `v` rounded to the nearest bf16, as f32.
#[inline]
pub(crate) fn round_to_bf16(v: f32) -> f32 {
    f32::from_bits((bf16_bits_rounded(v) as u32) << 16)
}

#[inline(always)]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Checks that a stream of `packed_len` bytes holds elements `packed_ofs..packed_ofs + n`.
pub(crate) fn check_stream(
    codec: &dyn SbsCodec,
    packed_len: usize,
    packed_ofs: usize,
    n: usize,
) -> Result<(), SbsCodecError> {
    let needed = codec.packed_bytes(packed_ofs + n);
    if packed_len < needed {
        return Err(SbsCodecError::StreamTooShort {
            codec: codec.codec_type(),
            packed_ofs,
            n,
            needed,
            got: packed_len,
        });
    }
    Ok(())
}

/// Panics unless the stream holds the elements a dot reads (a caller contract, see [`SbsCodec`]).
pub(crate) fn assert_dot_stream(codec: &dyn SbsCodec, packed_len: usize, packed_ofs: usize, n: usize) {
    if let Err(e) = check_stream(codec, packed_len, packed_ofs, n) {
        panic!("dot: {e}");
    }
}

/// Lanes per accumulator and accumulators of the shared dot pattern.
pub(crate) const DOT_LANES: usize = 8;
pub(crate) const DOT_ACCS: usize = 4;

/// The scalar twin of every SBS dot kernel: `w(i) * a(i)` for `i < n`, accumulated with FMA into lane `i % 8`
/// of accumulator `(i / 8) % 4`, padded with zero products to a whole number of lanes, then reduced as
/// `hsum((acc0 + acc1) + (acc2 + acc3))` with the AVX2 kernels' horizontal-sum tree.
#[inline]
pub(crate) fn dot_lanes_scalar(n: usize, mut w: impl FnMut(usize) -> f32, mut a: impl FnMut(usize) -> f32) -> f32 {
    let mut acc = [[0.0f32; DOT_LANES]; DOT_ACCS];
    let padded = n.div_ceil(DOT_LANES) * DOT_LANES;
    for i in 0..padded {
        let (wi, ai) = if i < n { (w(i), a(i)) } else { (0.0, 0.0) };
        let slot = &mut acc[(i / DOT_LANES) % DOT_ACCS][i % DOT_LANES];
        *slot = wi.mul_add(ai, *slot);
    }
    reduce_lanes(&acc)
}

/// `hsum((acc0 + acc1) + (acc2 + acc3))`, in the AVX2 `hsum_f32x8` order.
#[inline]
pub(crate) fn reduce_lanes(acc: &[[f32; DOT_LANES]; DOT_ACCS]) -> f32 {
    let mut s = [0.0f32; DOT_LANES];
    for (k, v) in s.iter_mut().enumerate() {
        *v = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
    }
    let t: [f32; 4] = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// Dot of two f32 slices with the shared pattern (AVX2 when available).
pub(crate) fn dot_f32_values(w: &[f32], a: &[f32]) -> f32 {
    assert_eq!(w.len(), a.len(), "dot of {} weights with {} activations", w.len(), a.len());
    if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_f32_slices(w, a)) {
        return r;
    }
    dot_lanes_scalar(w.len(), |i| w[i], |i| a[i])
}

/// The dots of the decoded weight rows in `w` (each `k` long) with the tokens of `acts` (`n_tokens` rows of
/// `k`): `out[r * n_tokens + t]`, each bitwise what [`SbsCodec::dot`] of the row's stream gives that token (a
/// prefill's products). Rows go two at a time against six tokens with AVX-512, four with AVX2, so each loaded
/// vector serves several products.
pub fn dot_decoded_rows(w: &[f32], k: usize, acts: &[f32], out: &mut [f32]) {
    let k = k.max(1);
    let (rows, tokens) = (w.len() / k, acts.len() / k);
    assert!(w.len() == rows * k && acts.len() == tokens * k && out.len() == rows * tokens, "dot_decoded_rows shapes");
    let mut r = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::simd_level() >= crate::SimdLevel::Avx512 {
        while r + 2 <= rows {
            // SAFETY: simd_level() is Avx512 only when the CPU reports AVX-512F (and AVX2, FMA, F16C).
            unsafe {
                crate::x86::sbs_dots::dot_row_pair_tokens_avx512(
                    &w[r * k..(r + 2) * k],
                    acts,
                    &mut out[r * tokens..(r + 2) * tokens],
                )
            };
            r += 2;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd_level() >= crate::SimdLevel::Avx2 && tokens > 1 {
        while r < rows {
            let count = (rows - r).min(2);
            // SAFETY: simd_level() is at least Avx2 only when the CPU reports avx2, fma and f16c.
            unsafe {
                crate::x86::sbs_dots::dot_rows_tokens_avx2(
                    &w[r * k..(r + count) * k],
                    k,
                    acts,
                    &mut out[r * tokens..(r + count) * tokens],
                )
            };
            r += count;
        }
    }
    while r < rows {
        let row = &w[r * k..(r + 1) * k];
        for (o, a) in out[r * tokens..(r + 1) * tokens].iter_mut().zip(acts.chunks_exact(k)) {
            *o = dot_f32_values(row, a);
        }
        r += 1;
    }
}

/// The F32 stream format: little-endian f32, one per element.
pub(crate) struct F32Codec;
/// The BF16 stream format: little-endian bf16, one per element; encoding rounds to nearest even.
pub(crate) struct Bf16Codec;

pub(crate) static F32_CODEC: F32Codec = F32Codec;
pub(crate) static BF16_CODEC: Bf16Codec = Bf16Codec;

#[inline(always)]
pub(crate) fn f32_at(packed: &[u8], p: usize) -> f32 {
    let b = &packed[4 * p..4 * p + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
pub(crate) fn bf16_at(packed: &[u8], p: usize) -> u16 {
    u16::from_le_bytes([packed[2 * p], packed[2 * p + 1]])
}

impl F32Codec {
    pub(crate) fn dot_scalar(packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
        dot_lanes_scalar(act.len(), |i| f32_at(packed, ofs + i), |i| act[i])
    }
    pub(crate) fn dot_bf16_scalar(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
        dot_lanes_scalar(act.len(), |i| round_to_bf16(f32_at(packed, ofs + i)), |i| bf16_to_f32(act[i]))
    }
}

impl SbsCodec for F32Codec {
    fn codec_type(&self) -> SbsCodecType {
        SbsCodecType::F32
    }
    fn group_size(&self) -> usize {
        1
    }
    fn packed_bytes(&self, n: usize) -> usize {
        4 * n
    }
    fn encode(&self, src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<usize, SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, src.len())?;
        for (i, &v) in src.iter().enumerate() {
            packed[4 * (packed_ofs + i)..4 * (packed_ofs + i) + 4].copy_from_slice(&v.to_le_bytes());
        }
        Ok(0)
    }
    fn decode(&self, packed: &[u8], packed_ofs: usize, dst: &mut [f32]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        for (i, o) in dst.iter_mut().enumerate() {
            *o = f32_at(packed, packed_ofs + i);
        }
        Ok(())
    }
    fn dot(&self, packed: &[u8], packed_ofs: usize, act: &[f32]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_f32(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_scalar(packed, packed_ofs, act)
    }
    fn dot_bf16(&self, packed: &[u8], packed_ofs: usize, act: &[u16]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_f32_bf16(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_bf16_scalar(packed, packed_ofs, act)
    }
}

impl Bf16Codec {
    pub(crate) fn dot_scalar(packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
        dot_lanes_scalar(act.len(), |i| bf16_to_f32(bf16_at(packed, ofs + i)), |i| act[i])
    }
    pub(crate) fn dot_bf16_scalar(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
        dot_lanes_scalar(act.len(), |i| bf16_to_f32(bf16_at(packed, ofs + i)), |i| bf16_to_f32(act[i]))
    }
}

impl SbsCodec for Bf16Codec {
    fn codec_type(&self) -> SbsCodecType {
        SbsCodecType::Bf16
    }
    fn group_size(&self) -> usize {
        1
    }
    fn packed_bytes(&self, n: usize) -> usize {
        2 * n
    }
    fn encode(&self, src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<usize, SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, src.len())?;
        for (i, &v) in src.iter().enumerate() {
            let p = 2 * (packed_ofs + i);
            Bf16Rounding::store(v, &mut packed[p..p + 2]);
        }
        Ok(0)
    }
    fn decode(&self, packed: &[u8], packed_ofs: usize, dst: &mut [f32]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        for (i, o) in dst.iter_mut().enumerate() {
            *o = bf16_to_f32(bf16_at(packed, packed_ofs + i));
        }
        Ok(())
    }
    fn decode_bf16(&self, packed: &[u8], packed_ofs: usize, dst: &mut [u16]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        for (i, o) in dst.iter_mut().enumerate() {
            *o = bf16_at(packed, packed_ofs + i);
        }
        Ok(())
    }
    fn dot(&self, packed: &[u8], packed_ofs: usize, act: &[f32]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_bf16(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_scalar(packed, packed_ofs, act)
    }
    fn dot_bf16(&self, packed: &[u8], packed_ofs: usize, act: &[u16]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_bf16_bf16(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_bf16_scalar(packed, packed_ofs, act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{assert_close, TestRng};

    fn encoded(ty: SbsCodecType, x: &[f32]) -> Vec<u8> {
        let codec = sbs_codec(ty);
        let mut packed = vec![0u8; codec.packed_bytes(x.len())];
        codec.encode(x, &mut packed, 0).unwrap();
        packed
    }

    #[test]
    fn registry_sizes_and_names() {
        for ty in SbsCodecType::ALL {
            assert_eq!(sbs_codec(ty).codec_type(), ty);
        }
        let sizes: Vec<usize> = SbsCodecType::ALL.iter().map(|&t| sbs_codec(t).packed_bytes(640 * 3)).collect();
        // NUQ: 8 groups (the last partial) of 16 table bytes + 960 index bytes; I8: 15 groups of 4 + 1920
        assert_eq!(sizes, [7680, 3840, 1920, 8 * 16 + 960, 15 * 4 + 1920]);
        assert_eq!(SbsCodecType::ALL.map(|t| t.name()), ["f32", "bf16", "sfp", "nuq", "i8"]);
    }

    #[test]
    fn f32_and_bf16_round_trip() {
        let mut rng = TestRng::new(21);
        let x = rng.row(333);
        let mut back = vec![0.0f32; x.len()];
        sbs_codec(SbsCodecType::F32).decode(&encoded(SbsCodecType::F32, &x), 0, &mut back).unwrap();
        assert_eq!(back, x);
        let packed = encoded(SbsCodecType::Bf16, &x);
        sbs_codec(SbsCodecType::Bf16).decode(&packed, 0, &mut back).unwrap();
        for (&a, &b) in x.iter().zip(&back) {
            assert_eq!(b, round_to_bf16(a));
        }
        let mut bits = vec![0u16; 10];
        sbs_codec(SbsCodecType::F32).decode_bf16(&encoded(SbsCodecType::F32, &x), 7, &mut bits).unwrap();
        assert!(bits.iter().zip(&x[7..]).all(|(&b, &v)| b == bf16_bits_rounded(v)));
    }

    #[test]
    fn scale_weights_is_gemma_cpps() {
        let mut small = vec![0.5, -1.875, 1.0];
        assert_eq!(scale_weights(&mut small), 1.0);
        assert_eq!(small, [0.5, -1.875, 1.0]);
        let mut big = vec![3.75, -1.0, 0.0, -3.75];
        assert_eq!(scale_weights(&mut big), 2.0);
        assert_eq!(big, [1.875, -0.5, 0.0, -1.875]);
    }

    #[test]
    fn dots_are_close_to_the_exact_dot_of_the_decoded_weights() {
        let mut rng = TestRng::new(22);
        for ty in SbsCodecType::ALL {
            let codec = sbs_codec(ty);
            let n = 2048;
            let mut x = rng.row(n);
            scale_weights(&mut x);
            let packed = encoded(ty, &x);
            for (ofs, len) in [(0, 640), (640, 640), (17, 1000), (5, 3)] {
                let mut w = vec![0.0f32; len];
                codec.decode(&packed, ofs, &mut w).unwrap();
                let a = rng.row(len);
                let want: f64 = w.iter().zip(&a).map(|(&p, &q)| p as f64 * q as f64).sum();
                let abs: f64 = w.iter().zip(&a).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
                assert_close(codec.dot(&packed, ofs, &a), want as f32, 1e-6, abs as f32, &format!("{ty} {ofs}+{len}"));
                // bf16 activations: the same with both sides taken as bf16
                let a16: Vec<u16> = a.iter().map(|&v| bf16_bits_rounded(v)).collect();
                let want16: f64 =
                    w.iter().zip(&a16).map(|(&p, &q)| round_to_bf16(p) as f64 * bf16_to_f32(q) as f64).sum();
                assert_close(
                    codec.dot_bf16(&packed, ofs, &a16),
                    want16 as f32,
                    1e-6,
                    abs as f32,
                    &format!("{ty} bf16"),
                );
            }
        }
    }

    #[test]
    fn dot_rows_equals_dot_bitwise_whatever_the_batch() {
        let mut rng = TestRng::new(23);
        let (n, rows) = (640, 9);
        for ty in SbsCodecType::ALL {
            let codec = sbs_codec(ty);
            let mut x = rng.row(n * rows);
            scale_weights(&mut x);
            let packed = encoded(ty, &x);
            let tokens = 5;
            let acts = rng.row(n * tokens);
            for (first, count, t) in [(0, rows, tokens), (2, 5, 1), (3, 4, 3), (8, 1, tokens)] {
                let mut out = vec![0.0f32; count * t];
                codec.dot_rows(n, &packed, first, count, &acts[..n * t], t, &mut out);
                for r in 0..count {
                    for k in 0..t {
                        let single = codec.dot(&packed, (first + r) * n, &acts[k * n..(k + 1) * n]);
                        assert_eq!(out[r * t + k].to_bits(), single.to_bits(), "{ty} row {} token {k}", first + r);
                    }
                }
            }
        }
    }

    #[test]
    fn short_streams_are_errors() {
        for ty in SbsCodecType::ALL {
            let codec = sbs_codec(ty);
            let packed = vec![0u8; codec.packed_bytes(100)];
            let mut out = vec![0.0f32; 50];
            assert!(codec.decode(&packed, 50, &mut out).is_ok(), "{ty}");
            assert!(matches!(codec.decode(&packed, 51, &mut out), Err(SbsCodecError::StreamTooShort { .. })), "{ty}");
            assert!(matches!(
                codec.encode(&[0.0; 101], &mut vec![0u8; codec.packed_bytes(100)], 0),
                Err(SbsCodecError::StreamTooShort { .. })
            ));
        }
    }

    /// Real weights: a Gemma 3 270M matrix (dequantized from its GGUF), scaled as gemma.cpp scales it,
    /// through every codec, dotted with real-shaped activations. Checks (and prints) each codec's error
    /// against the f32 dot of the original weights.
    #[test]
    fn real_model_matrix_through_every_codec() {
        let path = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("the default model is in the cache");
        let file = gemma_io::GgufFile::open(&path).unwrap();
        let t = file.tensor("blk.0.attn_q.weight").expect("blk.0.attn_q.weight");
        let (n, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let fmt = crate::quant_format(t.ggml_type).unwrap();
        let mut w = vec![0.0f32; n * rows];
        fmt.dequantize_row(file.tensor_data(t), &mut w);
        let mut scaled = w.clone();
        let scale = scale_weights(&mut scaled);
        let mut rng = TestRng::new(24);
        let act = rng.row(n);
        let exact: Vec<f64> =
            w.chunks(n).map(|r| r.iter().zip(&act).map(|(&p, &q)| p as f64 * q as f64).sum()).collect();
        let rms = (exact.iter().map(|v| v * v).sum::<f64>() / rows as f64).sqrt();
        for (ty, bound) in [
            (SbsCodecType::F32, 1e-5),
            (SbsCodecType::Bf16, 0.005),
            (SbsCodecType::Sfp, 0.05),
            (SbsCodecType::Nuq, 0.12),
            (SbsCodecType::I8, 0.01),
        ] {
            let codec = sbs_codec(ty);
            let packed = encoded(ty, &scaled);
            let mut out = vec![0.0f32; rows];
            codec.dot_rows(n, &packed, 0, rows, &act, 1, &mut out);
            let err = (out.iter().zip(&exact).map(|(&o, &e)| (o as f64 * scale as f64 - e).powi(2)).sum::<f64>()
                / rows as f64)
                .sqrt();
            println!(
                "{} {rows}x{n} ({ty}, {} bytes): rms dot error {:.5} of rms {:.4} ({:.3}%)",
                t.name,
                packed.len(),
                err,
                rms,
                100.0 * err / rms
            );
            assert!(err <= bound * rms, "{ty}: rms error {err} > {bound} * {rms}");
        }
    }
}
