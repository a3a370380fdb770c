//! Float "formats": F32, F16 and BF16 weights, dotted with plain little-endian f32 activations in f32.

use crate::{assert_dequantize_lengths, assert_dot_lengths, check_quantize_lengths, GgmlType, QuantError, QuantFormat};

/// Conversion between one stored element and f32.
pub(crate) trait FloatCodec: Send + Sync + 'static {
    const TY: GgmlType;
    /// `bytes` holds exactly one element.
    fn load(bytes: &[u8]) -> f32;
    fn store(v: f32, bytes: &mut [u8]);
}

pub(crate) struct F32;
impl FloatCodec for F32 {
    const TY: GgmlType = GgmlType::F32;
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

    /// f32 accumulation in eight independent lanes (so the compiler vectorizes it), summed pairwise at the end.
    fn vec_dot(&self, n: usize, w: &[u8], act: &[u8]) -> f32 {
        assert_dot_lengths(C::TY, GgmlType::F32, n, w, act);
        const LANES: usize = 8;
        let wsize = C::TY.type_size();
        let mut acc = [0.0f32; LANES];
        let (wc, ac) = (w.chunks_exact(wsize * LANES), act.chunks_exact(4 * LANES));
        let (wr, ar) = (wc.remainder(), ac.remainder());
        for (wb, ab) in wc.zip(ac) {
            for (k, a) in acc.iter_mut().enumerate() {
                *a += C::load(&wb[k * wsize..]) * F32::load(&ab[4 * k..]);
            }
        }
        for (k, (wb, ab)) in wr.chunks_exact(wsize).zip(ar.chunks_exact(4)).enumerate() {
            acc[k] += C::load(wb) * F32::load(ab);
        }
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
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
