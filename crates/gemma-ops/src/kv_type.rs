//! Number formats of the KV cache (llama.cpp's `--cache-type-k` / `--cache-type-v`): rows are stored in one of
//! GGML's formats and decoded by the attention kernels block by block (`docs/kv-cache.md`).

use gemma_compression::{quant_format, GgmlType};

/// The format of cached keys or values. llama.cpp's default is `f16`; ours is `f32` (our parity goldens were
/// recorded with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Iq4Nl,
    Q5_0,
    Q5_1,
}

/// An unknown cache type name.
#[derive(Debug, thiserror::Error)]
#[error("unsupported cache type '{0}': allowed are {allowed}", allowed = KvType::allowed())]
pub struct KvTypeError(pub String);

impl KvType {
    /// Every type, in llama.cpp's order of `--cache-type-k`'s help.
    pub const ALL: [KvType; 9] = [
        KvType::F32,
        KvType::F16,
        KvType::Bf16,
        KvType::Q8_0,
        KvType::Q4_0,
        KvType::Q4_1,
        KvType::Iq4Nl,
        KvType::Q5_0,
        KvType::Q5_1,
    ];

    /// llama.cpp's spelling (`f16`, `q8_0`, ...).
    pub fn name(self) -> &'static str {
        self.ggml_type().name()
    }

    /// The allowed names, comma-separated (for help and errors).
    pub fn allowed() -> String {
        KvType::ALL.map(KvType::name).join(", ")
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Bf16 => GgmlType::BF16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
            KvType::Q4_1 => GgmlType::Q4_1,
            KvType::Iq4Nl => GgmlType::IQ4_NL,
            KvType::Q5_0 => GgmlType::Q5_0,
            KvType::Q5_1 => GgmlType::Q5_1,
        }
    }

    /// The type with this GGML type, if the cache can hold it.
    pub fn from_ggml(t: GgmlType) -> Option<KvType> {
        KvType::ALL.into_iter().find(|k| k.ggml_type() == t)
    }

    /// Elements per encoded block (1 for the float types).
    pub fn block_size(self) -> usize {
        self.ggml_type().block_size()
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        self.ggml_type().row_bytes(n)
    }

    /// The format queries are rounded to before their dot with keys of this type, as llama.cpp's flash
    /// attention converts Q to the K type's `vec_dot_type` (`None`: queries stay f32). For f16 keys llama.cpp
    /// rounds Q only in its one-query-at-a-time path, not in its tiled prefill; we keep Q in f32 there, which
    /// its prefill (the teacher-forced goldens) does.
    pub fn query_type(self) -> Option<GgmlType> {
        match self {
            KvType::F32 | KvType::F16 => None,
            KvType::Bf16 => Some(GgmlType::BF16),
            KvType::Q8_0 | KvType::Q4_0 | KvType::Iq4Nl | KvType::Q5_0 => Some(GgmlType::Q8_0),
            KvType::Q4_1 | KvType::Q5_1 => Some(GgmlType::Q8_1),
        }
    }

    /// Encodes `src` (a whole number of blocks) into `dst` (`row_bytes(src.len())` bytes), with the same rounding
    /// as llama.cpp's CPU `set_rows` (f16/bf16: to nearest even; q8_0: `quantize_row_q8_0`).
    pub fn encode(self, src: &[f32], dst: &mut [u8]) {
        let f = quant_format(self.ggml_type()).expect("every KV type has a format");
        f.quantize_row(src, dst).expect("KV rows are whole blocks of the right length");
    }

    /// Decodes `src` (`row_bytes(dst.len())` bytes) into `dst`. f16 and bf16 have their own loops here (the
    /// float formats' `dequantize_row` converts one element at a time); the block formats use
    /// gemma-compression's decoders (SIMD where it has them).
    pub fn decode(self, src: &[u8], dst: &mut [f32]) {
        match self {
            KvType::F16 => decode_f16(src, dst),
            KvType::Bf16 => {
                assert_eq!(src.len(), 2 * dst.len(), "bf16 row length");
                for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                }
            }
            t => quant_format(t.ggml_type()).expect("every KV type has a format").dequantize_row(src, dst),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = KvTypeError;
    fn from_str(s: &str) -> Result<KvType, KvTypeError> {
        let lower = s.to_ascii_lowercase();
        KvType::ALL.into_iter().find(|k| k.name() == lower).ok_or_else(|| KvTypeError(s.to_string()))
    }
}

/// f16 little-endian values to f32: F16C eight at a time where the CPU has it (and `GEMMA_SIMD` allows AVX2),
/// else [`decode_f16_scalar`]. Both are exact conversions, so they agree bit for bit.
pub fn decode_f16(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "f16 row length");
    #[cfg(target_arch = "x86_64")]
    if gemma_compression::simd_level() >= gemma_compression::SimdLevel::Avx2
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("avx")
    {
        // SAFETY: the CPU has F16C and AVX (checked above); lengths are checked above.
        unsafe { decode_f16_f16c(src, dst) };
        return;
    }
    decode_f16_scalar(src, dst);
}

/// The portable twin of [`decode_f16`].
pub fn decode_f16_scalar(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn decode_f16_f16c(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: 16 bytes from byte 2i and 8 floats from i are inside `src` and `dst` (src holds 2n bytes).
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    decode_f16_scalar(&src[2 * i..], &mut dst[i..]);
}

/// Rounds each `d`-long row of `q` in place to `ty` and back (what llama.cpp's dot with a quantized key sees).
pub fn round_queries(ty: GgmlType, q: &mut [f32], d: usize, scratch: &mut Vec<u8>) {
    let f = quant_format(ty).expect("query types have formats");
    let bytes = ty.row_bytes(d).expect("head width is whole blocks of the query type");
    scratch.resize(bytes, 0);
    for row in q.chunks_exact_mut(d) {
        f.quantize_row(row, scratch).expect("lengths checked above");
        f.dequantize_row(scratch, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_llama_spells_them() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>().unwrap(), t);
        }
        assert_eq!("Q8_0".parse::<KvType>().unwrap(), KvType::Q8_0);
        let e = "q3_k".parse::<KvType>().unwrap_err().to_string();
        assert!(e.contains("'q3_k'") && e.contains("f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"), "{e}");
    }

    #[test]
    fn simd_f16_decoding_equals_the_scalar_twin() {
        // Every f16 bit pattern (NaNs included: compared by bits), in a row whose length is not a multiple of 8.
        let src: Vec<u8> = (0..=u16::MAX).chain([1, 2, 3]).flat_map(|h| h.to_le_bytes()).collect();
        let (mut a, mut b) = (vec![0f32; src.len() / 2], vec![1f32; src.len() / 2]);
        decode_f16(&src, &mut a);
        decode_f16_scalar(&src, &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn rows_round_trip_with_llama_rounding() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for t in KvType::ALL {
            let mut bytes = vec![0u8; t.row_bytes(64).unwrap()];
            t.encode(&x, &mut bytes);
            let mut back = vec![0f32; 64];
            t.decode(&bytes, &mut back);
            let err = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let bound = match t {
                KvType::F32 => 0.0,
                KvType::F16 => 3.0 / 2048.0,
                KvType::Bf16 => 3.0 / 256.0,
                KvType::Q8_0 => 3.0 / 127.0,
                _ => 3.0 / 7.0,
            };
            assert!(err <= bound, "{t}: {err}");
        }
        // f16: ties to even (1 + 2^-11 lies halfway between 1 and 1 + 2^-10).
        let mut b = [0u8; 2];
        KvType::F16.encode(&[1.0 + 2f32.powi(-11)], &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3c00);
    }
}
