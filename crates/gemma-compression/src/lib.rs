//! Number formats: GGML's block quantization types, bit-compatible with llama.cpp, and their dot products.
//!
//! Model code never branches on a weight type. It asks [`quant_format`] for the [`QuantFormat`] of a tensor and
//! calls `dequantize_row`, `quantize_row` and `vec_dot` on it. A dot product pairs a weight row with activations
//! already quantized to the weight format's [`QuantFormat::vec_dot_type`], exactly as ggml pairs them, so that
//! results sit close to llama.cpp's.
//!
//! Kernels are picked at run time from the CPU's SIMD level ([`simd_level`]); every SIMD kernel has a scalar
//! twin that it is tested against.

/// Runs `x86::$module::$func(args)` when this machine's [`simd_level`] is AVX2 or better and gives
/// `Some(result)`, else `None` (the caller then runs the scalar twin).
macro_rules! x86_dispatch {
    ($module:ident :: $func:ident ( $($arg:expr),* )) => {{
        #[cfg(target_arch = "x86_64")]
        let out = if $crate::simd_level() >= $crate::SimdLevel::Avx2 {
            // SAFETY: simd_level() is at least Avx2 only when the CPU reports avx2, fma and f16c, the
            // features every kernel in crate::x86 is compiled for; the kernels check their own slice lengths.
            Some(unsafe { $crate::x86::$module::$func($($arg),*) })
        } else {
            None
        };
        #[cfg(not(target_arch = "x86_64"))]
        let out = {
            let _ = ($($arg),*);
            None
        };
        out
    }};
}
pub(crate) use x86_dispatch;

pub mod bf16_tile;
mod float;
pub mod float_panels;
mod int8_groups;
pub mod interleaved;
pub mod interleaved_k;
mod iq4;
mod k_quants;
mod nuq;
mod q_legacy;
mod rounding;
mod sbs_codec;
mod sfp;
#[cfg(test)]
mod test_data;
pub mod weighted;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

pub use float::FLOAT_TOKEN_GROUP;
pub use gemma_io::GgmlType;
pub use int8_groups::{i8_encode, i8_packed_bytes, I8_GROUP};
pub use nuq::{nuq_cluster, nuq_encode, nuq_packed_bytes, NuqClusterBuf, NUQ_CLUSTERS, NUQ_GROUP};
pub use sbs_codec::{dot_decoded_rows, sbs_codec, scale_weights, SbsCodec, SbsCodecError, SbsCodecType};
pub use sfp::{sfp_decode, sfp_decode_bf16, sfp_encode, sfp_encode_bf16, sfp_encode_slice, SFP_MAX};

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("number format {0} is not supported")]
    Unsupported(GgmlType),
    #[error("quantizing to {0} is not supported")]
    NoQuantize(GgmlType),
    #[error("row of {n} elements is not a whole number of {ty} blocks")]
    BadLength { ty: GgmlType, n: usize },
    /// The destination buffer of `quantize_row` is not `row_bytes(src.len())` long.
    #[error("{ty} row of {n} elements needs {expected} bytes, the buffer has {got}")]
    BadBufferLength { ty: GgmlType, n: usize, expected: usize, got: usize },
    /// Importance weights must come one per element of the row.
    #[error("{ty} row of {n} elements needs {n} importance weights, got {got}")]
    BadWeightsLength { ty: GgmlType, n: usize, got: usize },
}

/// One GGML number format. Model code never branches on the weight type; it calls these.
///
/// Length contracts (`src`, `dst`, `w`, `act` sizes) are the caller's to keep: they are computed by model code
/// from tensor shapes the GGUF reader has already validated. `dequantize_row` and `vec_dot` panic on a length
/// mismatch rather than read out of bounds; `quantize_row` returns an error.
pub trait QuantFormat: Sync + Send {
    fn ggml_type(&self) -> GgmlType;
    /// Elements per block (same as the GgmlType's geometry).
    fn block_size(&self) -> usize {
        self.ggml_type().block_size()
    }
    /// Bytes per block (same as the GgmlType's geometry).
    fn block_bytes(&self) -> usize {
        self.ggml_type().type_size()
    }
    /// The format activations are quantized to before `vec_dot` with a row of this type, as llama.cpp pairs them:
    /// Q4_0, Q5_0, Q8_0, IQ4_NL -> Q8_0; Q4_1, Q5_1 -> Q8_1; Q2_K..Q6_K, IQ4_XS -> Q8_K; F32, F16, BF16 -> F32 (activations as
    /// plain little-endian f32 bytes; we keep float weights' dots in f32). Q8_1 and Q8_K pair with themselves.
    fn vec_dot_type(&self) -> GgmlType;
    /// Decode one row: `src` holds exactly `dst.len() / block_size` blocks.
    fn dequantize_row(&self, src: &[u8], dst: &mut [f32]);
    /// Encode one row (`dst` must be exactly `row_bytes(src.len())` long). Every format here can encode, with
    /// llama.cpp's reference (`quantize_row_*_ref`) algorithm.
    fn quantize_row(&self, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError>;
    /// Dot product of one weight row (`n` elements of this format) with activations already quantized to
    /// `vec_dot_type()` (`act` holds `n` elements of that format). Uses the best SIMD level available
    /// (runtime-detected), else scalar.
    ///
    /// Q8_1 and Q8_K are activation formats; their dots (with themselves) are scalar only and exist for
    /// completeness and tests, not for model weights.
    fn vec_dot(&self, n: usize, w: &[u8], act: &[u8]) -> f32;

    /// Every dot product of a slab of weight rows with a set of activation rows: for `r < rows` and
    /// `t < n_tokens`, `out[r * n_tokens + t]` = the dot of weight row `r` with activation row `t`, where weight
    /// rows lie `row_bytes(n)` apart in `w` and activation rows `vec_dot_type().row_bytes(n)` apart in `acts`.
    ///
    /// This is the matmul kernel (decode is `n_tokens == 1`). Implementations tile rows x tokens so one load
    /// feeds several products, but each result must be bitwise the same whatever `rows` and `n_tokens` are and
    /// equal to `vec_dot` of that pair: batching sequences together must never change their results.
    fn dot_rows(&self, n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) {
        let w_bytes = w.len() / rows.max(1);
        let a_bytes = acts.len() / n_tokens.max(1);
        assert!(
            w_bytes * rows == w.len() && a_bytes * n_tokens == acts.len() && out.len() == rows * n_tokens,
            "dot_rows: {rows} rows in {} bytes, {n_tokens} tokens in {} bytes, {} outputs",
            w.len(),
            acts.len(),
            out.len()
        );
        for r in 0..rows {
            let wr = &w[r * w_bytes..(r + 1) * w_bytes];
            for t in 0..n_tokens {
                out[r * n_tokens + t] = self.vec_dot(n, wr, &acts[t * a_bytes..(t + 1) * a_bytes]);
            }
        }
    }
}

/// The implementation for a type. Returns [`QuantError::Unsupported`] for the plain integer types and F64.
pub fn quant_format(t: GgmlType) -> Result<&'static dyn QuantFormat, QuantError> {
    Ok(match t {
        GgmlType::F32 => &float::F32_FORMAT,
        GgmlType::F16 => &float::F16_FORMAT,
        GgmlType::BF16 => &float::BF16_FORMAT,
        GgmlType::Q4_0 => &q_legacy::Q4_0_FORMAT,
        GgmlType::Q4_1 => &q_legacy::Q4_1_FORMAT,
        GgmlType::Q5_0 => &q_legacy::Q5_0_FORMAT,
        GgmlType::Q5_1 => &q_legacy::Q5_1_FORMAT,
        GgmlType::Q8_0 => &q_legacy::Q8_0_FORMAT,
        GgmlType::Q8_1 => &q_legacy::Q8_1_FORMAT,
        GgmlType::Q2K => &k_quants::Q2_K_FORMAT,
        GgmlType::Q3K => &k_quants::Q3_K_FORMAT,
        GgmlType::Q4K => &k_quants::Q4_K_FORMAT,
        GgmlType::Q5K => &k_quants::Q5_K_FORMAT,
        GgmlType::Q6K => &k_quants::Q6_K_FORMAT,
        GgmlType::Q8K => &k_quants::Q8_K_FORMAT,
        GgmlType::IQ4_NL => &IQ4_NL_FORMAT,
        GgmlType::IQ4_XS => &IQ4_XS_FORMAT,
        GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64 => {
            return Err(QuantError::Unsupported(t))
        }
    })
}

static IQ4_NL_FORMAT: q_legacy::Legacy<iq4::IQ4_NL> = q_legacy::Legacy(std::marker::PhantomData);
static IQ4_XS_FORMAT: k_quants::KFormat<iq4::IQ4_XS> = k_quants::KFormat(std::marker::PhantomData);

/// The SIMD level the kernels dispatch to on this machine (detected once, cached).
///
/// `Avx512` means AVX-512F+BW; kernels without a 512-bit version run their AVX2 version at that level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    Avx512,
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2+fma",
            SimdLevel::Avx512 => "avx512",
        })
    }
}

impl SimdLevel {
    /// Every level this CPU can run, lowest first (always starts with `Scalar`).
    pub fn supported() -> Vec<SimdLevel> {
        let mut levels = vec![SimdLevel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                levels.push(SimdLevel::Avx2);
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    levels.push(SimdLevel::Avx512);
                }
            }
        }
        levels
    }
}

/// The best level the CPU supports, lowered by `GEMMA_SIMD=scalar|avx2` when set (for comparing kernels from
/// the outside; a level above the CPU's is ignored).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = SimdLevel::supported().last().copied().unwrap_or(SimdLevel::Scalar);
        let requested = match std::env::var("GEMMA_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") => SimdLevel::Avx2,
            _ => best,
        };
        requested.min(best)
    })
}

/// Whether the CPU reports AVX-512 F, BW, VL and VNNI (the 512-bit integer dot kernels' features), whatever
/// `GEMMA_SIMD` says. Tests use it to run every kernel level the CPU has.
pub fn cpu_has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether kernels with an AVX-512 VNNI version should run it: [`simd_level`] is `Avx512` (so `GEMMA_SIMD`
/// can still lower it) and [`cpu_has_avx512_vnni`]. Detected once, cached.
pub fn has_avx512_vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| simd_level() >= SimdLevel::Avx512 && cpu_has_avx512_vnni())
}

/// Whether kernels with an AVX-512 VBMI version (byte-table lookups) should run it: [`simd_level`] is `Avx512`
/// and the CPU reports VBMI. Detected once, cached.
pub fn has_avx512_vbmi() -> bool {
    static VBMI: OnceLock<bool> = OnceLock::new();
    *VBMI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            simd_level() >= SimdLevel::Avx512 && is_x86_feature_detected!("avx512vbmi")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Checks a `quantize_row` call's lengths and returns the number of blocks.
fn check_quantize_lengths(ty: GgmlType, src: &[f32], dst: &[u8]) -> Result<usize, QuantError> {
    let n = src.len();
    let expected = ty.row_bytes(n).ok_or(QuantError::BadLength { ty, n })?;
    if dst.len() != expected {
        return Err(QuantError::BadBufferLength { ty, n, expected, got: dst.len() });
    }
    Ok(n / ty.block_size())
}

/// Panics unless `src` holds exactly the blocks for `dst` (a caller contract, see [`QuantFormat`]).
fn assert_dequantize_lengths(ty: GgmlType, src: &[u8], dst: &[f32]) {
    assert!(
        ty.row_bytes(dst.len()) == Some(src.len()),
        "dequantize {ty}: {} bytes cannot decode into {} values",
        src.len(),
        dst.len()
    );
}

/// Panics unless `w` holds `n` elements of `ty` and `act` holds `n` elements of `act_ty` (a caller contract).
fn assert_dot_lengths(ty: GgmlType, act_ty: GgmlType, n: usize, w: &[u8], act: &[u8]) {
    assert!(
        ty.row_bytes(n) == Some(w.len()) && act_ty.row_bytes(n) == Some(act.len()),
        "vec_dot {ty}x{act_ty} of {n} elements: got {} weight bytes and {} activation bytes",
        w.len(),
        act.len()
    );
}

/// Little-endian f16 at the start of `bytes` (block headers; `bytes` has at least 2 bytes by construction).
#[inline(always)]
fn f16_le(bytes: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// Writes `v` rounded to f16 (round to nearest even, as ggml) at the start of `bytes`; returns the stored value.
#[inline(always)]
fn put_f16_le(bytes: &mut [u8], v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    bytes[..2].copy_from_slice(&h.to_bits().to_le_bytes());
    h.to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_covers_every_float_and_block_type() {
        for t in GgmlType::ALL {
            match quant_format(t) {
                Ok(f) => {
                    assert_eq!(f.ggml_type(), t);
                    assert_eq!(f.block_size(), t.block_size());
                    assert_eq!(f.block_bytes(), t.type_size());
                }
                Err(QuantError::Unsupported(u)) => {
                    assert_eq!(u, t);
                    assert!(matches!(t, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64));
                }
                Err(e) => panic!("unexpected error for {t}: {e}"),
            }
        }
    }

    #[test]
    fn vec_dot_types_pair_as_in_ggml() {
        use GgmlType::*;
        let pairs = [
            (F32, F32),
            (F16, F32),
            (BF16, F32),
            (Q4_0, Q8_0),
            (Q5_0, Q8_0),
            (Q8_0, Q8_0),
            (Q4_1, Q8_1),
            (Q5_1, Q8_1),
            (Q8_1, Q8_1),
            (Q2K, Q8K),
            (Q3K, Q8K),
            (Q4K, Q8K),
            (Q5K, Q8K),
            (Q6K, Q8K),
            (Q8K, Q8K),
            (IQ4_NL, Q8_0),
            (IQ4_XS, Q8K),
        ];
        for (w, a) in pairs {
            assert_eq!(quant_format(w).unwrap().vec_dot_type(), a, "{w}");
        }
    }

    #[test]
    fn quantize_rejects_bad_lengths() {
        let f = quant_format(GgmlType::Q4_0).unwrap();
        let mut dst = vec![0u8; 18];
        assert!(matches!(f.quantize_row(&[0.0; 31], &mut dst), Err(QuantError::BadLength { n: 31, .. })));
        let mut short = vec![0u8; 17];
        assert!(matches!(
            f.quantize_row(&[0.0; 32], &mut short),
            Err(QuantError::BadBufferLength { expected: 18, got: 17, .. })
        ));
    }

    #[test]
    fn simd_level_is_supported_and_displays() {
        let level = simd_level();
        assert!(SimdLevel::supported().contains(&level));
        assert_eq!(SimdLevel::Scalar.to_string(), "scalar");
        assert_eq!(SimdLevel::Avx2.to_string(), "avx2+fma");
        assert_eq!(SimdLevel::Avx512.to_string(), "avx512");
        println!("simd level: {level}, supported: {:?}", SimdLevel::supported());
    }
}
