//! SFP, gemma.cpp's 8-bit "switched floating point" (`compression/sfp-inl.h`): sign-magnitude, no subnormals,
//! largest magnitude 1.875. Codes with bit 6 set ("large", |x| >= 2^-7) hold a 4-bit exponent (bias 15) and
//! 3 mantissa bits; the others a 4-bit exponent (bias 23) and 2 mantissa bits, down to 1.01 * 2^-23. Code
//! 0x80 (-0) is reserved and decodes to -0.0.
//!
//! Encoding follows gemma.cpp's vector encoder (`EncBytes`) exactly: f32 is first truncated to bf16; of the
//! bf16's 7 mantissa bits the top 6 are kept, then rounded to nearest even at 3 or 2 bits depending on the
//! exponent, where anything from 1.1111 * 2^-8 up is rounded as large. Magnitudes above 1.875 (which
//! gemma.cpp never encodes: `ScaleWeights` clamps them first) saturate to +-1.875, as gemma.cpp's own rounding
//! does for bf16 inputs up to 1.921875; NaN is an error.

use crate::sbs_codec::{
    assert_dot_stream, bf16_to_f32, check_stream, dot_lanes_scalar, SbsCodec, SbsCodecError, SbsCodecType,
};

/// Largest encodable magnitude (`SfpStream::kMax`).
pub const SFP_MAX: f32 = 1.875;

/// bf16 bits of the decoded value of each code: the shift-based decoder. Without the sign, a code `e` in
/// 1..64 is bf16 `0x3400 + (e << 5)` and in 64..128 `0x3800 + (e << 4)`; 0 is 0; bit 7 is the sign.
const fn decode_bf16_bits(code: u8) -> u16 {
    let e = (code & 0x7f) as u16;
    let sign = ((code & 0x80) as u16) << 8;
    let magnitude = if e == 0 {
        0
    } else if e < 64 {
        0x3400 + (e << 5)
    } else {
        0x3800 + (e << 4)
    };
    sign | magnitude
}

const fn build_decode_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = decode_bf16_bits(c as u8);
        c += 1;
    }
    t
}

/// Decoded bf16 bits of every code.
pub(crate) static SFP_TO_BF16: [u16; 256] = build_decode_table();

/// The value of one SFP code, as bf16 bits (exact: every SFP value is a bf16).
#[inline(always)]
pub fn sfp_decode_bf16(code: u8) -> u16 {
    SFP_TO_BF16[code as usize]
}

/// The value of one SFP code.
#[inline(always)]
pub fn sfp_decode(code: u8) -> f32 {
    bf16_to_f32(SFP_TO_BF16[code as usize])
}

/// Encodes one bf16 (bits) with gemma.cpp's `EncBytes` arithmetic on its two bytes. Magnitudes above 1.875
/// saturate; the caller has rejected NaN.
pub fn sfp_encode_bf16(bits: u16) -> u8 {
    let sign = (bits >> 8) as u8 & 0x80;
    // Saturate: from 1.9375 on, the byte arithmetic below would overflow the exponent.
    let bits = if bits & 0x7fff > 0x3ff0 { (bits & 0x8000) | 0x3ff0 } else { bits };
    let lo = bits as u8;
    // Biased bf16 exponent (< 128 as |x| < 2) and the top 6 of the 7 mantissa bits.
    let mut biased_e = ((bits >> 7) & 0xff) as u8;
    let m6 = (lo & 0x7f) >> 1;

    // From 1.1111 * 2^-8 on, the value rounds to at least 2^-7, so round at 3 bits ("large"), else at 2.
    const MIN_LARGE_E: u8 = 127 - 8;
    let large_before_round = biased_e > MIN_LARGE_E || (biased_e == MIN_LARGE_E && m6 > 0x3b);
    // Mantissa with the kept bits at positions 6..4 (large) or 5..4 (small); carry lands in bit 7 or 6.
    let m_shl = if large_before_round { m6 << 1 } else { m6 };
    let odd = (m_shl >> 4) & 1;
    let rounded = m_shl + odd + 7;
    let carry_bit = if large_before_round { 0x80 } else { 0x40 };
    let carry_clear = rounded & !carry_bit;
    if carry_clear != rounded {
        biased_e += 1;
    }

    const MIN_NORMAL_E: u8 = 127 - 23;
    if biased_e < MIN_NORMAL_E {
        return 0; // also turns -0 and tiny negatives into +0: -0 is reserved
    }
    let large = biased_e > MIN_LARGE_E;
    let mut m = carry_clear >> 4;
    if biased_e == MIN_NORMAL_E {
        // 1.00 * 2^-23 would encode as zero, so it becomes 1.01 * 2^-23.
        m = m.max(1);
    }
    let em = if large {
        let e = biased_e.wrapping_add((15i8 - 127) as u8);
        m | (e << 3)
    } else {
        let e = biased_e.wrapping_add((23i8 - 127) as u8);
        m | (e << 2)
    };
    (em & 0x7f) | sign
}

/// Encodes one f32 as gemma.cpp's f32 path does: truncated (not rounded) to bf16 first.
#[inline]
pub fn sfp_encode(v: f32) -> u8 {
    sfp_encode_bf16((v.to_bits() >> 16) as u16)
}

/// Encodes `src` into `dst` (same length). NaN is an error; magnitudes above 1.875 saturate.
pub fn sfp_encode_slice(src: &[f32], dst: &mut [u8]) -> Result<(), SbsCodecError> {
    for (i, (&v, o)) in src.iter().zip(dst.iter_mut()).enumerate() {
        if v.is_nan() {
            return Err(SbsCodecError::OutOfRange { codec: SbsCodecType::Sfp, index: i, value: v });
        }
        *o = sfp_encode(v);
    }
    Ok(())
}

pub(crate) struct SfpCodec;
pub(crate) static SFP_CODEC: SfpCodec = SfpCodec;

impl SfpCodec {
    pub(crate) fn dot_scalar(packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
        dot_lanes_scalar(act.len(), |i| sfp_decode(packed[ofs + i]), |i| act[i])
    }
    pub(crate) fn dot_bf16_scalar(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
        dot_lanes_scalar(act.len(), |i| sfp_decode(packed[ofs + i]), |i| bf16_to_f32(act[i]))
    }
}

impl SbsCodec for SfpCodec {
    fn codec_type(&self) -> SbsCodecType {
        SbsCodecType::Sfp
    }
    fn group_size(&self) -> usize {
        1
    }
    fn packed_bytes(&self, n: usize) -> usize {
        n
    }
    fn encode(&self, src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<usize, SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, src.len())?;
        sfp_encode_slice(src, &mut packed[packed_ofs..packed_ofs + src.len()]).map_err(|e| match e {
            SbsCodecError::OutOfRange { codec, index, value } => {
                SbsCodecError::OutOfRange { codec, index: packed_ofs + index, value }
            }
            other => other,
        })?;
        Ok(0)
    }
    fn decode(&self, packed: &[u8], packed_ofs: usize, dst: &mut [f32]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        let codes = &packed[packed_ofs..packed_ofs + dst.len()];
        for (o, &c) in dst.iter_mut().zip(codes) {
            *o = sfp_decode(c);
        }
        Ok(())
    }
    fn decode_bf16(&self, packed: &[u8], packed_ofs: usize, dst: &mut [u16]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        let codes = &packed[packed_ofs..packed_ofs + dst.len()];
        #[cfg(target_arch = "x86_64")]
        if crate::has_avx512_vbmi() {
            // SAFETY: the CPU reports AVX-512 F/BW/VBMI (with AVX2, FMA and F16C); lengths are equal.
            unsafe { crate::x86::sbs_dots::decode_sfp_bf16_vbmi(codes, dst) };
            return Ok(());
        }
        if crate::x86_dispatch!(sbs_dots::decode_sfp_bf16_avx2(codes, dst)).is_some() {
            return Ok(());
        }
        for (o, &c) in dst.iter_mut().zip(codes) {
            *o = sfp_decode_bf16(c);
        }
        Ok(())
    }
    fn dot(&self, packed: &[u8], packed_ofs: usize, act: &[f32]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        #[cfg(target_arch = "x86_64")]
        if crate::has_avx512_vbmi() {
            // SAFETY: the CPU reports AVX-512 F/BW/VBMI (with AVX2, FMA and F16C); the stream was checked.
            return unsafe { crate::x86::sbs_dots::dot_sfp_vbmi(packed, packed_ofs, act) };
        }
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_sfp(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_scalar(packed, packed_ofs, act)
    }
    fn dot_bf16(&self, packed: &[u8], packed_ofs: usize, act: &[u16]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_sfp_bf16(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_bf16_scalar(packed, packed_ofs, act)
    }
}

#[cfg(test)]
// The golden values are sfp_test.cc's decimal literals, kept as written there.
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Independent decoder, from the format's definition (sfp_test.cc's `F32FromSFP8`): assemble binary32
    /// from sign, exponent and mantissa fields.
    fn reference_decode(code: u32) -> f32 {
        let sign32 = (code & 0x80) << 24;
        let sfp = code & 0x7f;
        if sfp == 0 {
            return f32::from_bits(sign32);
        }
        let large = sfp >= 64;
        let m_bits = if large { 3 } else { 2 };
        let m = sfp & ((1 << m_bits) - 1);
        let e = sfp >> m_bits;
        let e_bias = if large { 15 } else { 23 };
        let exp32 = (127 + e - e_bias) << 23;
        f32::from_bits(sign32 | exp32 | (m << (23 - m_bits)))
    }

    /// Independent encoder, from the format's definition (sfp_test.cc's `SFP8FromF32`: round to nearest even
    /// in binary32 at 3 or 2 mantissa bits, switching at 1.1111 * 2^-8 before and 1.111 * 2^-8 after
    /// rounding), applied to what gemma.cpp's vector encoder actually rounds: the input truncated to bf16 and
    /// then to 6 mantissa bits, its magnitude clamped to 1.875.
    fn reference_encode(x: f32) -> u32 {
        let x = f32::from_bits(x.to_bits() & 0xfffe_0000);
        let s = (x.to_bits() & 0x8000_0000) >> 24;
        let f = x.abs().min(SFP_MAX);
        let bits = f.to_bits();
        let mut large = f >= 0.007568359375;
        let mut m_bits = if large { 3 } else { 2 };
        let m32 = bits & 0x007f_ffff;
        let is_odd = (m32 >> (23 - m_bits)) & 1;
        let rounded = bits + is_odd + (1 << (23 - m_bits - 1)) - 1;
        if f >= 0.00732421875 {
            large = true;
            m_bits = 3;
        }
        let mut m = (rounded & 0x007f_ffff) >> (23 - m_bits);
        let e = (rounded >> 23) as i32 - 127;
        if e <= -23 {
            if e < -23 {
                return 0;
            }
            if m == 0 {
                m = 1;
            }
        }
        let e_sfp = (e + if large { 15 } else { 23 }) as u32;
        assert!(e_sfp < 16, "{x}");
        (e_sfp << m_bits) | m | s
    }

    #[test]
    fn every_code_decodes_as_the_format_defines() {
        for code in 0..=255u8 {
            let want = reference_decode(code as u32);
            assert_eq!(sfp_decode(code).to_bits(), want.to_bits(), "code {code:#04x}");
        }
        assert_eq!(sfp_decode(0x7f), 1.875);
        assert_eq!(sfp_decode(0xff), -1.875);
        assert_eq!(sfp_decode(0x01), 1.25 * 2f32.powi(-23));
        assert_eq!(sfp_decode(0x40), 2f32.powi(-7));
    }

    #[test]
    fn all_255_values_are_distinct() {
        let unique: BTreeSet<u32> = (0..=255u8).filter(|&c| c != 0x80).map(|c| sfp_decode(c).to_bits()).collect();
        assert_eq!(unique.len(), 255);
    }

    #[test]
    fn every_code_round_trips_through_decode_and_encode() {
        for code in 0..=255u8 {
            if code == 0x80 {
                assert_eq!(sfp_encode(sfp_decode(code)), 0, "-0 encodes as +0");
                continue;
            }
            let v = sfp_decode(code);
            assert_eq!(sfp_encode(v), code, "code {code:#04x} = {v:e}");
            assert_eq!(sfp_encode_bf16(sfp_decode_bf16(code)), code);
            assert_eq!(reference_encode(v), code as u32);
        }
    }

    #[test]
    fn every_bf16_input_encodes_like_the_reference() {
        let mut checked = 0;
        for bits in 0..=u16::MAX {
            let x = bf16_to_f32(bits);
            if x.is_nan() {
                continue;
            }
            let got = sfp_encode_bf16(bits);
            assert_eq!(got as u32, reference_encode(x), "bf16 {bits:#06x} = {x:e}");
            checked += 1;
        }
        // 65,536 patterns less the 254 NaNs
        assert_eq!(checked, 65536 - 254);
    }

    #[test]
    fn gemma_cpp_golden_values() {
        // sfp_test.cc TestGolden: (input, decoded output), both signs.
        let golden: [(f32, f32); 24] = [
            (0.46875, 0.46875),
            (0.9375, 0.9375),
            (0.484375, 0.5),
            (0.96875, 1.0),
            (0.28125, 0.28125),
            (0.5625, 0.5625),
            (0.296875, 0.3125),
            (0.59375, 0.625),
            (0.279296875, 0.28125),
            (0.55859375, 0.5625),
            (0.265625, 0.25),
            (0.53125, 0.5),
            (0.0068359375, 0.0068359375),
            (0.00732421875, 0.0078125),
            (0.007568359375, 0.0078125),
            (1.0, 1.0),
            (1.0625, 1.0),
            (2.384185791015625E-7, 2.384185791015625E-7),
            (1.49011611938E-07, 1.49011611938E-07),
            (1.19209289551E-07, 1.49011611938E-07),
            (5.96046447754E-08, 0.0),
            (8.94069671631E-08, 0.0),
            (1.11758708954E-07, 1.49011611938E-07),
            (0.013841, 0.013671875),
        ];
        for (input, output) in golden {
            for sign in [1.0f32, -1.0] {
                let (x, want) = (input * sign, output * sign);
                // gemma.cpp's test feeds the vector encoder a bf16 rounded to nearest
                let code = sfp_encode_bf16(crate::sbs_codec::bf16_bits_rounded(x));
                assert_eq!(sfp_decode(code), want, "{x:e}");
                assert_eq!(sfp_encode(x), code, "f32 path {x:e}");
            }
        }
    }

    /// The distortion over every bf16 value with the low three mantissa bits zero, within [-1.875, 1.875]
    /// (sfp_test.cc TestEncDec; its deterministic counts and ranges).
    #[test]
    fn distortion_matches_gemma_cpp_test() {
        let mut inputs = Vec::new();
        for i in 0..0x8000u32 / 8 {
            let f = bf16_to_f32((i * 8) as u16);
            if f.is_finite() && f <= SFP_MAX {
                inputs.push(f);
                inputs.push(-f);
            }
        }
        let mut codes = vec![0u8; inputs.len()];
        sfp_encode_slice(&inputs, &mut codes).unwrap();
        let (mut exact, mut to_zero, mut sign_flip) = (0, 0, 0);
        let (mut sum_l1, mut sum_l1_zero, mut max_l1, mut log_snr, mut n_snr) = (0f64, 0f64, 0f32, 0f64, 0);
        for (&x, &c) in inputs.iter().zip(&codes) {
            let y = sfp_decode(c);
            let l1 = (x - y).abs();
            let rounded_to_zero = x != 0.0 && y == 0.0;
            exact += (x == y) as usize;
            to_zero += rounded_to_zero as usize;
            sign_flip += ((x < 0.0) != (y < 0.0) && !rounded_to_zero) as usize;
            sum_l1 += l1 as f64;
            if rounded_to_zero {
                sum_l1_zero += l1 as f64;
            }
            max_l1 = max_l1.max(l1);
            if l1 != 0.0 {
                log_snr += (1.0 + x.abs() as f64 / l1 as f64).ln();
                n_snr += 1;
            }
        }
        let snr = (log_snr / n_snr as f64).exp();
        let mean_l1 = sum_l1 / inputs.len() as f64;
        println!("{} inputs: exact {exact}, to zero {to_zero}, sum L1 {sum_l1}, snr {snr}", inputs.len());
        assert_eq!(to_zero, 3322);
        assert_eq!(exact, 256);
        assert_eq!(sign_flip, 0);
        assert_eq!(max_l1, 0.0625);
        assert!((4e-4..=5e-4).contains(&mean_l1), "{mean_l1}");
        assert!((5e-6..=6e-6).contains(&sum_l1_zero), "{sum_l1_zero}");
        assert!((1.880..=1.885).contains(&sum_l1), "{sum_l1}");
        assert!((2.70..=2.75).contains(&snr), "{snr}");
    }

    #[test]
    fn the_lowest_bf16_mantissa_bit_is_ignored_as_in_gemma_cpp() {
        // 1 + 9/128: round to nearest at 3 bits would give 1.125, but EncBytes first drops the bf16's lowest
        // mantissa bit (1 + 8/128 is a tie, kept even), so gemma.cpp stores 1.0.
        assert_eq!(sfp_decode(sfp_encode(1.0 + 9.0 / 128.0)), 1.0);
        assert_eq!(sfp_decode(sfp_encode(1.0 + 10.0 / 128.0)), 1.125);
    }

    #[test]
    fn saturates_above_max_and_rejects_nan() {
        assert_eq!(sfp_encode(1.9), 0x7f);
        assert_eq!(sfp_encode(-1.9), 0xff);
        assert_eq!(sfp_encode(100.0), 0x7f);
        assert_eq!(sfp_encode(f32::NEG_INFINITY), 0xff);
        let mut out = [0u8; 3];
        let err = sfp_encode_slice(&[0.5, f32::NAN, 0.1], &mut out);
        assert!(
            matches!(err, Err(SbsCodecError::OutOfRange { codec: SbsCodecType::Sfp, index: 1, value }) if value.is_nan())
        );
    }
}
