//! I8, gemma.cpp's integer quantization (`compression/int-inl.h`): groups of 128 elements, each stored as a
//! bf16 inverse scale, a bf16 zero point (both little-endian), then one i8 per element. Group `g` starts at
//! byte `g * 132`; a stream of `n` elements takes `4 * ceil(n / 128) + n` bytes (`I8Stream::PackedEnd`).
//!
//! Encoding, per group, as gemma.cpp's `QuantizeGroup`: `scale = 255 / (max - min)` (range 0 counts as 1),
//! `zero_point = trunc(-scale * min - 128)`, both rounded to bf16 (and `1 / scale` for the stored inverse);
//! `q = clamp(round_half_even(fma(bf16(scale), x, bf16(zero_point))), -128, 127)`. The zero point's
//! `-scale * min - 128` is computed with one FMA, as the compilers that build gemma.cpp contract it for FMA
//! targets. Decoding is `fma(inv_scale, q, -zero_point * inv_scale)`.

use crate::sbs_codec::{
    assert_dot_stream, bf16_bits_rounded, bf16_to_f32, check_stream, dot_lanes_scalar, round_to_bf16, SbsCodec,
    SbsCodecError, SbsCodecType,
};

/// Elements per group.
pub const I8_GROUP: usize = 128;
/// Bytes of a whole group: inverse scale, zero point, 128 values.
pub(crate) const I8_GROUP_BYTES: usize = 4 + I8_GROUP;

/// Bytes of an I8 stream of `n` elements.
pub fn i8_packed_bytes(n: usize) -> usize {
    4 * n.div_ceil(I8_GROUP) + n
}

/// Byte offset of the header of the group holding element `p`.
#[inline(always)]
pub(crate) fn i8_group_offset(p: usize) -> usize {
    (p / I8_GROUP) * I8_GROUP_BYTES
}

/// `(inv_scale, -zero_point * inv_scale)` of the group whose header starts at byte `g`.
#[inline(always)]
pub(crate) fn i8_group_params(packed: &[u8], g: usize) -> (f32, f32) {
    let inv_scale = bf16_to_f32(u16::from_le_bytes([packed[g], packed[g + 1]]));
    let zero_point = bf16_to_f32(u16::from_le_bytes([packed[g + 2], packed[g + 3]]));
    (inv_scale, -zero_point * inv_scale)
}

/// The value of element `p`.
#[inline(always)]
pub(crate) fn i8_value_at(packed: &[u8], p: usize) -> f32 {
    let g = i8_group_offset(p);
    let (inv_scale, zero_scaled) = i8_group_params(packed, g);
    let q = packed[g + 4 + p % I8_GROUP] as i8;
    inv_scale.mul_add(q as f32, zero_scaled)
}

/// Quantizes one group (at most 128 values) into `out` (4 + len bytes).
fn quantize_group(x: &[f32], out: &mut [u8]) {
    let (mut min_val, mut max_val) = (f32::MAX, f32::MIN);
    for &v in x {
        min_val = min_val.min(v);
        max_val = max_val.max(v);
    }
    let mut range = max_val - min_val;
    if range == 0.0 {
        range = 1.0;
    }
    let scale_f = 255.0 / range;
    // C++'s float -> int32 conversion truncates toward zero; Rust's `as` does too (and saturates).
    let zero_point_f = ((-scale_f).mul_add(min_val, -128.0) as i32) as f32;
    let scale = bf16_bits_rounded(scale_f);
    let inv_scale = bf16_bits_rounded(1.0 / scale_f);
    let zero_point = bf16_bits_rounded(zero_point_f);
    out[0..2].copy_from_slice(&inv_scale.to_le_bytes());
    out[2..4].copy_from_slice(&zero_point.to_le_bytes());
    let (mul, add) = (bf16_to_f32(scale), bf16_to_f32(zero_point));
    for (o, &v) in out[4..4 + x.len()].iter_mut().zip(x) {
        let q = (mul.mul_add(v, add).round_ties_even() as i32).clamp(-128, 127);
        *o = q as i8 as u8;
    }
}

/// Encodes `src` into the stream at element `packed_ofs` (a multiple of 128), as gemma.cpp's `IntCodec::Enc`.
/// Values must be finite.
pub fn i8_encode(src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<(), SbsCodecError> {
    if !packed_ofs.is_multiple_of(I8_GROUP) {
        return Err(SbsCodecError::UnalignedOffset { codec: SbsCodecType::I8, packed_ofs, group: I8_GROUP });
    }
    check_stream(&I8_CODEC, packed.len(), packed_ofs, src.len())?;
    if let Some(i) = src.iter().position(|v| !v.is_finite()) {
        return Err(SbsCodecError::OutOfRange { codec: SbsCodecType::I8, index: packed_ofs + i, value: src[i] });
    }
    for (g, group) in src.chunks(I8_GROUP).enumerate() {
        let start = i8_group_offset(packed_ofs + g * I8_GROUP);
        quantize_group(group, &mut packed[start..start + 4 + group.len()]);
    }
    Ok(())
}

pub(crate) struct I8Codec;
pub(crate) static I8_CODEC: I8Codec = I8Codec;

impl I8Codec {
    pub(crate) fn dot_scalar(packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
        dot_lanes_scalar(act.len(), |i| i8_value_at(packed, ofs + i), |i| act[i])
    }
    pub(crate) fn dot_bf16_scalar(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
        dot_lanes_scalar(act.len(), |i| round_to_bf16(i8_value_at(packed, ofs + i)), |i| bf16_to_f32(act[i]))
    }
}

impl SbsCodec for I8Codec {
    fn codec_type(&self) -> SbsCodecType {
        SbsCodecType::I8
    }
    fn group_size(&self) -> usize {
        I8_GROUP
    }
    fn packed_bytes(&self, n: usize) -> usize {
        i8_packed_bytes(n)
    }
    fn encode(&self, src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<usize, SbsCodecError> {
        i8_encode(src, packed, packed_ofs).map(|()| 0)
    }
    fn decode(&self, packed: &[u8], packed_ofs: usize, dst: &mut [f32]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        for (i, o) in dst.iter_mut().enumerate() {
            *o = i8_value_at(packed, packed_ofs + i);
        }
        Ok(())
    }
    fn decode_bf16(&self, packed: &[u8], packed_ofs: usize, dst: &mut [u16]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        if crate::x86_dispatch!(sbs_dots::decode_i8_bf16_avx2(packed, packed_ofs, dst)).is_some() {
            return Ok(());
        }
        for (i, o) in dst.iter_mut().enumerate() {
            *o = crate::sbs_codec::bf16_bits_rounded(i8_value_at(packed, packed_ofs + i));
        }
        Ok(())
    }
    fn dot(&self, packed: &[u8], packed_ofs: usize, act: &[f32]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_i8(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_scalar(packed, packed_ofs, act)
    }
    fn dot_bf16(&self, packed: &[u8], packed_ofs: usize, act: &[u16]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_i8_bf16(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_bf16_scalar(packed, packed_ofs, act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::TestRng;

    /// Independent reference for one group, written from int-inl.h's arithmetic step by step.
    fn reference_group(x: &[f32]) -> (u16, u16, Vec<i8>) {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let range = if max - min == 0.0 { 1.0 } else { max - min };
        let scale = 255.0 / range;
        let zp = (-scale).mul_add(min, -128.0).trunc();
        let (s, zpb) = (round_to_bf16(scale), round_to_bf16(zp));
        let q = x.iter().map(|&v| s.mul_add(v, zpb).round_ties_even().clamp(-128.0, 127.0) as i8).collect();
        (bf16_bits_rounded(1.0 / scale), bf16_bits_rounded(zp), q)
    }

    #[test]
    fn groups_are_laid_out_and_quantized_as_gemma_cpp() {
        let mut rng = TestRng::new(11);
        // 2.25 groups (int_test.cc TestMultiGroup), a partial last group
        let n = 2 * I8_GROUP + I8_GROUP / 4;
        let x: Vec<f32> = rng.row(n);
        assert_eq!(i8_packed_bytes(n), 4 * 3 + n);
        let mut packed = vec![0u8; i8_packed_bytes(n)];
        i8_encode(&x, &mut packed, 0).unwrap();
        for (g, group) in x.chunks(I8_GROUP).enumerate() {
            let (inv, zp, q) = reference_group(group);
            let b = g * I8_GROUP_BYTES;
            assert_eq!(u16::from_le_bytes([packed[b], packed[b + 1]]), inv, "group {g} inverse scale");
            assert_eq!(u16::from_le_bytes([packed[b + 2], packed[b + 3]]), zp, "group {g} zero point");
            let stored: Vec<i8> = packed[b + 4..b + 4 + group.len()].iter().map(|&v| v as i8).collect();
            assert_eq!(stored, q, "group {g} values");
        }
    }

    #[test]
    fn decode_error_is_within_one_step_and_offsets_agree() {
        let mut rng = TestRng::new(12);
        let n = 10 * I8_GROUP + I8_GROUP / 2;
        let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let mut packed = vec![0u8; i8_packed_bytes(n)];
        i8_encode(&x, &mut packed, 0).unwrap();
        let mut all = vec![0.0f32; n];
        I8_CODEC.decode(&packed, 0, &mut all).unwrap();
        for (g, (group, dec)) in x.chunks(I8_GROUP).zip(all.chunks(I8_GROUP)).enumerate() {
            let min = group.iter().copied().fold(f32::INFINITY, f32::min);
            let max = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // one quantization step, widened for the bf16 scale and zero point (relative error 2^-8 each)
            let step = (max - min) / 255.0;
            let tol = step * (0.5 + 2.0 * 128.0 / 256.0) + 1e-6;
            for (&a, &b) in group.iter().zip(dec) {
                assert!((a - b).abs() <= tol, "group {g}: {a} -> {b} (step {step})");
            }
        }
        // int_test.cc TestUnalignedOffset / TestSmallDequantize: any offset gives the same values
        for (ofs, len) in [(4, 4), (I8_GROUP + 100, 16), (2 * I8_GROUP + 100, 32), (3 * I8_GROUP + 100, 64), (1, n - 1)]
        {
            let mut part = vec![0.0f32; len];
            I8_CODEC.decode(&packed, ofs, &mut part).unwrap();
            assert_eq!(part, all[ofs..ofs + len]);
            let mut bf = vec![0u16; len];
            I8_CODEC.decode_bf16(&packed, ofs, &mut bf).unwrap();
            assert!(bf.iter().zip(&part).all(|(&b, &f)| b == bf16_bits_rounded(f)));
        }
        // int_test.cc TestOffset: re-encoding at a group offset rewrites only those groups
        i8_encode(&x[..2 * I8_GROUP], &mut packed, 5 * I8_GROUP).unwrap();
        let mut mid = vec![0.0f32; 2 * I8_GROUP];
        I8_CODEC.decode(&packed, 5 * I8_GROUP, &mut mid).unwrap();
        assert_eq!(mid, all[..2 * I8_GROUP]);
    }

    #[test]
    fn ramp_pattern_of_int_test_decodes_closely() {
        // int_test.cc TestDequantizeAndZeroPad's pattern: i - 128 over 4096 values (groups spanning 127).
        let x: Vec<f32> = (0..4096).map(|i| i as f32 - 128.0).collect();
        let mut packed = vec![0u8; i8_packed_bytes(x.len())];
        i8_encode(&x, &mut packed, 0).unwrap();
        let mut dec = vec![0.0f32; x.len()];
        I8_CODEC.decode(&packed, 0, &mut dec).unwrap();
        let worst = x.iter().zip(&dec).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("i8 ramp: worst abs error {worst}");
        // all-positive groups far from zero get a large zero point that bf16 cannot hold exactly
        assert!(worst <= 16.0, "{worst}");
        // the first group straddles zero: the zero point is exact and the error is below one step
        assert!(x[..128].iter().zip(&dec[..128]).all(|(a, b)| (a - b).abs() <= 1.0));
    }

    #[test]
    fn constant_groups_and_errors() {
        let mut packed = vec![0u8; i8_packed_bytes(128)];
        i8_encode(&[0.25; 128], &mut packed, 0).unwrap();
        let mut dec = [0.0f32; 128];
        I8_CODEC.decode(&packed, 0, &mut dec).unwrap();
        // range 0 counts as 1: scale 255, zero point trunc(-255 * 0.25 - 128) = -191
        assert_eq!(bf16_to_f32(u16::from_le_bytes([packed[2], packed[3]])), -191.0);
        assert!(dec.iter().all(|&v| (v - 0.25).abs() < 0.01), "{}", dec[0]);
        assert!(matches!(
            i8_encode(&[0.0; 4], &mut packed, 64),
            Err(SbsCodecError::UnalignedOffset { packed_ofs: 64, group: 128, .. })
        ));
        assert!(matches!(
            i8_encode(&[1.0, f32::INFINITY], &mut packed, 0),
            Err(SbsCodecError::OutOfRange { index: 1, .. })
        ));
        assert!(matches!(i8_encode(&[0.0; 200], &mut packed, 0), Err(SbsCodecError::StreamTooShort { .. })));
    }
}
