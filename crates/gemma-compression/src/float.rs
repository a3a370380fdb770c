//! Float "formats": F32, F16 and BF16 weights, dotted with plain little-endian f32 activations in f32.
//!
//! Every dot follows one pattern, so a result never depends on the SIMD level, the tile or the batch:
//! 16 lanes start at +0; element `16c + i` (the last chunk zero-padded) is added to lane `i` with one fused
//! multiply-add; the lanes are summed as `i + 8`, then `i + 4`, `i + 2`, `i + 1`. The tiled kernels are in
//! `x86::float_tiles`; [`dot_rows_scalar`] is their twin.

use crate::{assert_dequantize_lengths, assert_dot_lengths, check_quantize_lengths, GgmlType, QuantError, QuantFormat};

/// Conversion between one stored element and f32.
pub(crate) trait FloatCodec: Send + Sync + 'static {
    const TY: GgmlType;
    const KIND: FloatKind;
    /// `bytes` holds exactly one element.
    fn load(bytes: &[u8]) -> f32;
    fn store(v: f32, bytes: &mut [u8]);
}

pub(crate) struct F32;
impl FloatCodec for F32 {
    const TY: GgmlType = GgmlType::F32;
    const KIND: FloatKind = FloatKind::F32;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline(always)]
    fn store(v: f32, b: &mut [u8]) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) struct F16;
impl FloatCodec for F16 {
    const TY: GgmlType = GgmlType::F16;
    const KIND: FloatKind = FloatKind::F16;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
    }
    #[inline(always)]
    fn store(v: f32, b: &mut [u8]) {
        b.copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
    }
}

pub(crate) struct BF16;
impl FloatCodec for BF16 {
    const TY: GgmlType = GgmlType::BF16;
    const KIND: FloatKind = FloatKind::Bf16;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
    }
    /// ggml's rule: round to nearest even, NaN kept NaN (quieted).
    #[inline(always)]
    fn store(v: f32, b: &mut [u8]) {
        let u = v.to_bits();
        let h = if (u & 0x7fff_ffff) > 0x7f80_0000 {
            ((u >> 16) | 64) as u16
        } else {
            (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
        };
        b.copy_from_slice(&h.to_le_bytes());
    }
}

/// The stored element type, for the SIMD kernels' loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F16,
    Bf16,
}

/// Lanes of the dot pattern.
pub(crate) const FLOAT_LANES: usize = 16;

/// Tokens whose f32 activations are taken together by the row-major float kernels (and by a matmul's parallel
/// region over a float matrix in the file's layout; repacked ones use [`crate::float_panels`]):
/// 48 rows of a 1,152-wide input are 216 KiB, which stay in L2 while the weights stream past.
pub const FLOAT_TOKEN_GROUP: usize = 48;

/// The lanes summed as a tree: `i + 8`, then `i + 4`, `i + 2`, `i + 1`.
#[inline(always)]
pub(crate) fn reduce_lanes(l: &[f32; FLOAT_LANES]) -> f32 {
    let s8: [f32; 8] = std::array::from_fn(|i| l[i] + l[i + 8]);
    let s4: [f32; 4] = std::array::from_fn(|i| s8[i] + s8[i + 4]);
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// One (row, token) dot in the pattern: the scalar twin of the kernels.
fn dot_scalar<C: FloatCodec>(k: usize, w: &[u8], act: &[f32]) -> f32 {
    let size = C::TY.type_size();
    let mut lanes = [0.0f32; FLOAT_LANES];
    for c in 0..k.div_ceil(FLOAT_LANES) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let j = c * FLOAT_LANES + i;
            let (wv, av) = if j < k { (C::load(&w[j * size..]), act[j]) } else { (0.0, 0.0) };
            *lane = wv.mul_add(av, *lane);
        }
    }
    reduce_lanes(&lanes)
}

/// [`QuantFormat::dot_rows`] one pair at a time with [`dot_scalar`].
pub(crate) fn dot_rows_scalar<C: FloatCodec>(k: usize, w: &[u8], rows: usize, acts: &[f32], out: &mut [f32]) {
    let row_bytes = k * C::TY.type_size();
    let tokens = out.len() / rows.max(1);
    for r in 0..rows {
        for t in 0..tokens {
            out[r * tokens + t] = dot_scalar::<C>(k, &w[r * row_bytes..(r + 1) * row_bytes], &acts[t * k..(t + 1) * k]);
        }
    }
}

/// The activations' bytes as f32 (they are written as whole f32 values; an unaligned buffer is copied).
fn acts_f32(bytes: &[u8]) -> std::borrow::Cow<'_, [f32]> {
    // SAFETY: every bit pattern is a valid f32, and `align_to` only yields the aligned middle.
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    if head.is_empty() && tail.is_empty() {
        std::borrow::Cow::Borrowed(mid)
    } else {
        std::borrow::Cow::Owned(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// The tiled kernel for this CPU, or the scalar twin.
fn dot_rows_dispatch<C: FloatCodec>(k: usize, w: &[u8], rows: usize, acts: &[f32], tokens: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut slab = crate::x86::float_tiles::FloatSlab { k, w, rows, acts, tokens, out };
        let level = crate::simd_level();
        if level >= crate::SimdLevel::Avx512 {
            // SAFETY: the AVX-512 level implies AVX2, FMA, F16C, AVX-512 F and BW; the caller checked lengths.
            unsafe { crate::x86::float_tiles::dot_rows_avx512::<C>(&mut slab) };
            return;
        }
        if level >= crate::SimdLevel::Avx2 {
            // SAFETY: the AVX2 level implies FMA and F16C; the caller checked lengths.
            unsafe { crate::x86::float_tiles::dot_rows_avx2::<C>(&mut slab) };
            return;
        }
        let crate::x86::float_tiles::FloatSlab { out, .. } = slab;
        dot_rows_scalar::<C>(k, w, rows, acts, out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = tokens;
        dot_rows_scalar::<C>(k, w, rows, acts, out);
    }
}

pub(crate) struct FloatFormat<C>(std::marker::PhantomData<C>);

pub(crate) static F32_FORMAT: FloatFormat<F32> = FloatFormat(std::marker::PhantomData);
pub(crate) static F16_FORMAT: FloatFormat<F16> = FloatFormat(std::marker::PhantomData);
pub(crate) static BF16_FORMAT: FloatFormat<BF16> = FloatFormat(std::marker::PhantomData);

impl<C: FloatCodec> QuantFormat for FloatFormat<C> {
    fn ggml_type(&self) -> GgmlType {
        C::TY
    }

    fn vec_dot_type(&self) -> GgmlType {
        GgmlType::F32
    }

    fn dequantize_row(&self, src: &[u8], dst: &mut [f32]) {
        assert_dequantize_lengths(C::TY, src, dst);
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(C::TY.type_size())) {
            *o = C::load(b);
        }
    }

    fn quantize_row(&self, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
        check_quantize_lengths(C::TY, src, dst)?;
        for (&v, b) in src.iter().zip(dst.chunks_exact_mut(C::TY.type_size())) {
            C::store(v, b);
        }
        Ok(())
    }

    /// The module's dot pattern (bitwise equal to [`QuantFormat::dot_rows`] of the pair).
    fn vec_dot(&self, n: usize, w: &[u8], act: &[u8]) -> f32 {
        assert_dot_lengths(C::TY, GgmlType::F32, n, w, act);
        let mut out = [0.0f32];
        dot_rows_dispatch::<C>(n, w, 1, &acts_f32(act), 1, &mut out);
        out[0]
    }

    fn dot_rows(&self, n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) {
        let row_bytes = C::TY.row_bytes(n).unwrap_or(0);
        assert!(
            w.len() == rows * row_bytes && acts.len() == n_tokens * 4 * n && out.len() == rows * n_tokens,
            "dot_rows: {rows} rows of {n} in {} bytes, {n_tokens} tokens in {} bytes, {} outputs",
            w.len(),
            acts.len(),
            out.len()
        );
        dot_rows_dispatch::<C>(n, w, rows, &acts_f32(acts), n_tokens, out);
    }
}

#[cfg(test)]
mod tests {
    use crate::quant_format;
    use crate::test_data::{assert_close, TestRng};
    use crate::GgmlType;

    #[test]
    fn hand_built_values_decode_exactly() {
        let f32b: Vec<u8> = [1.5f32, -2.25, 0.0, 1e-30].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = [0x3e00u16, 0xc080, 0x0000, 0x7bff].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16b: Vec<u8> = [0x3fc0u16, 0xc010, 0x8000, 0x4049].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0.0f32; 4];
        quant_format(GgmlType::F32).unwrap().dequantize_row(&f32b, &mut out);
        assert_eq!(out, [1.5, -2.25, 0.0, 1e-30]);
        quant_format(GgmlType::F16).unwrap().dequantize_row(&f16b, &mut out);
        assert_eq!(out, [1.5, -2.25, 0.0, 65504.0]);
        quant_format(GgmlType::BF16).unwrap().dequantize_row(&bf16b, &mut out);
        assert_eq!(out, [1.5, -2.25, -0.0, 3.140625]);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_like_ggml() {
        let f = quant_format(GgmlType::BF16).unwrap();
        let mut b = [0u8; 8];
        // 1 + 2^-8 is a tie between 1.0 (even) and 1 + 2^-7; 1 + 3*2^-8 ties up to 1 + 2^-6.
        f.quantize_row(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::NAN, -0.0], &mut b).unwrap();
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x3f80);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x3f82);
        assert!(f32::from_bits((u16::from_le_bytes([b[4], b[5]]) as u32) << 16).is_nan());
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0x8000);
    }

    /// Every SIMD level the CPU has gives the scalar twin's bits, whatever the tile shape, for every float
    /// type and for widths with and without a partial last chunk.
    #[test]
    fn tiled_kernels_equal_the_scalar_twin_bitwise() {
        use super::{dot_rows_scalar, FloatCodec, BF16, F16, F32};
        fn check<C: FloatCodec>(rng: &mut TestRng) {
            for k in [1, 15, 16, 17, 40, 768] {
                for (rows, tokens) in [(1, 1), (4, 6), (5, 7), (9, 13), (2, 3), (3, 1)] {
                    let values: Vec<f32> = (0..rows * k).map(|_| rng.normal()).collect();
                    let mut w = vec![0u8; rows * k * C::TY.type_size()];
                    for (v, b) in values.iter().zip(w.chunks_exact_mut(C::TY.type_size())) {
                        C::store(*v, b);
                    }
                    let acts: Vec<f32> = (0..tokens * k).map(|_| rng.normal()).collect();
                    let mut want = vec![0f32; rows * tokens];
                    dot_rows_scalar::<C>(k, &w, rows, &acts, &mut want);
                    #[cfg(target_arch = "x86_64")]
                    for level in crate::SimdLevel::supported() {
                        let mut got = vec![0f32; rows * tokens];
                        let mut slab =
                            crate::x86::float_tiles::FloatSlab { k, w: &w, rows, acts: &acts, tokens, out: &mut got };
                        match level {
                            crate::SimdLevel::Scalar => continue,
                            // SAFETY: the CPU reports this level.
                            crate::SimdLevel::Avx2 => unsafe { crate::x86::float_tiles::dot_rows_avx2::<C>(&mut slab) },
                            // SAFETY: the CPU reports this level.
                            crate::SimdLevel::Avx512 => unsafe {
                                crate::x86::float_tiles::dot_rows_avx512::<C>(&mut slab)
                            },
                        }
                        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} {level} k={k} {rows}x{tokens}: {got:?} vs {want:?}", C::TY);
                    }
                    // The format's entry points agree with the twin too.
                    let f = quant_format(C::TY).unwrap();
                    let act_bytes: Vec<u8> = acts.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let mut got = vec![0f32; rows * tokens];
                    f.dot_rows(k, &w, rows, &act_bytes, tokens, &mut got);
                    assert_eq!(got, want);
                    let row_bytes = k * C::TY.type_size();
                    assert_eq!(f.vec_dot(k, &w[..row_bytes], &act_bytes[..4 * k]).to_bits(), want[0].to_bits());
                }
            }
        }
        let mut rng = TestRng::new(7);
        check::<F32>(&mut rng);
        check::<F16>(&mut rng);
        check::<BF16>(&mut rng);
    }

    #[test]
    fn round_trips_and_dots() {
        let mut rng = TestRng::new(42);
        for (ty, rel) in [(GgmlType::F32, 0.0), (GgmlType::F16, 1.0 / 2048.0), (GgmlType::BF16, 1.0 / 256.0)] {
            let f = quant_format(ty).unwrap();
            for n in [1, 7, 8, 33, 640] {
                let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let y: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
                f.quantize_row(&x, &mut w).unwrap();
                let mut back = vec![0.0f32; n];
                f.dequantize_row(&w, &mut back);
                for (a, b) in x.iter().zip(&back) {
                    assert!((a - b).abs() <= a.abs() * rel, "{ty}: {a} -> {b}");
                }
                let act: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
                let got = f.vec_dot(n, &w, &act);
                let want: f64 = back.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
                let abs: f64 = back.iter().zip(&y).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                assert_close(got, want as f32, 1e-6, abs as f32, &format!("{ty} n={n}"));
            }
        }
    }
}
