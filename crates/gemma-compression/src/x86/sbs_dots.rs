//! AVX2+FMA dot products of gemma.cpp's SBS formats (F32, BF16, SFP, NUQ, I8) with f32 or bf16 activations.
//!
//! Every kernel decodes eight weights at a time to f32 and accumulates with FMA in the pattern their scalar
//! twins (`dot_scalar` / `dot_bf16_scalar` beside each format, built on `sbs_codec::dot_lanes_scalar`) use:
//! element `i` into lane `i % 8` of accumulator `(i / 8) % 4`, zero-padded to whole lanes, reduced as
//! `hsum((acc0 + acc1) + (acc2 + acc3))`. Decoding is exact in both, so kernel and twin agree bit for bit.
//! At the AVX-512 level SFP has a VBMI version (byte-table decoding, [`SfpVbmi`]) and decoded rows meet several
//! tokens in a two-row kernel; both accumulate in the same pattern. Also here: the row decoders to bf16 that
//! the bf16 tiles (`super::bf16_tile`) read.
//!
//! Chunks of eight that straddle a NUQ or I8 group boundary, and the last partial chunk, are decoded by the
//! scalar element decoders into a zero-padded buffer.

use std::arch::x86_64::*;

use super::hsum_f32x8;
use crate::int8_groups::{i8_group_params, i8_value_at, I8_GROUP, I8_GROUP_BYTES};
use crate::nuq::{cluster_dp_row, nuq_value_at, ClusterCost, NUQ_CLUSTERS, NUQ_GROUP, NUQ_GROUP_BYTES};
use crate::sbs_codec::{bf16_at, bf16_to_f32, f32_at, round_to_bf16};
use crate::sfp::sfp_decode;

/// The shared accumulation: `$n` elements; `$w`/`$a` give the eight weights/activations of a whole chunk
/// starting at element `$i`, `$wt`/`$at` the zero-padded `$len` (< 8) of the last partial chunk.
macro_rules! fma_dot {
    ($n:expr, w = |$wi:ident| $w:expr, w_tail = |$wti:ident, $wtl:ident| $wt:expr,
     a = |$ai:ident| $a:expr, a_tail = |$ati:ident, $atl:ident| $at:expr) => {{
        let n: usize = $n;
        let full = n / 8;
        let mut acc = [_mm256_setzero_ps(); 4];
        let (mut acc0, mut acc1, mut acc2, mut acc3) = (acc[0], acc[1], acc[2], acc[3]);
        let mut c = 0;
        while c + 4 <= full {
            let i = c * 8;
            let w = {
                let $wi = i;
                $w
            };
            let a = {
                let $ai = i;
                $a
            };
            acc0 = _mm256_fmadd_ps(w, a, acc0);
            let w = {
                let $wi = i + 8;
                $w
            };
            let a = {
                let $ai = i + 8;
                $a
            };
            acc1 = _mm256_fmadd_ps(w, a, acc1);
            let w = {
                let $wi = i + 16;
                $w
            };
            let a = {
                let $ai = i + 16;
                $a
            };
            acc2 = _mm256_fmadd_ps(w, a, acc2);
            let w = {
                let $wi = i + 24;
                $w
            };
            let a = {
                let $ai = i + 24;
                $a
            };
            acc3 = _mm256_fmadd_ps(w, a, acc3);
            c += 4;
        }
        acc = [acc0, acc1, acc2, acc3];
        while c < n.div_ceil(8) {
            let i = c * 8;
            let (w, a) = if c < full {
                let $wi = i;
                let w = $w;
                let $ai = i;
                (w, $a)
            } else {
                let ($wti, $wtl) = (i, n - i);
                let w = $wt;
                let ($ati, $atl) = (i, n - i);
                (w, $at)
            };
            acc[c % 4] = _mm256_fmadd_ps(w, a, acc[c % 4]);
            c += 1;
        }
        hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
    }};
}

/// `len` (<= 8) values from `f`, zero-padded to eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tail_vec(len: usize, mut f: impl FnMut(usize) -> f32) -> __m256 {
    let mut buf = [0.0f32; 8];
    for (k, b) in buf.iter_mut().enumerate().take(len) {
        *b = f(k);
    }
    _mm256_loadu_ps(buf.as_ptr())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8(x: &[f32]) -> __m256 {
    let x = &x[..8];
    _mm256_loadu_ps(x.as_ptr())
}

/// Eight little-endian f32 from the start of `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8_bytes(b: &[u8]) -> __m256 {
    let b = &b[..32];
    _mm256_loadu_ps(b.as_ptr().cast())
}

/// Eight little-endian bf16 from the start of `b`, widened (exactly) to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16x8_bytes(b: &[u8]) -> __m256 {
    let b = &b[..16];
    let h = _mm_loadu_si128(b.as_ptr().cast());
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

/// Eight bf16 (bits) widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16x8(a: &[u16]) -> __m256 {
    let a = &a[..8];
    let h = _mm_loadu_si128(a.as_ptr().cast());
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

/// Eight bytes from the start of `b` as the low half of an xmm register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_8_bytes(b: &[u8]) -> __m128i {
    let b = &b[..8];
    _mm_cvtsi64_si128(i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
}

/// Rounds each lane to the nearest bf16 (ties to even; NaN kept NaN with the quiet bit set), as
/// `sbs_codec::round_to_bf16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_bf16x8(v: __m256) -> __m256 {
    let u = _mm256_castps_si256(v);
    let lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    let rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
    let rounded = _mm256_and_si256(rounded, _mm256_set1_epi32(0xffff_0000u32 as i32));
    let quiet_nan =
        _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(0xffff_0000u32 as i32)), _mm256_set1_epi32(0x0040_0000));
    let is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet_nan, is_nan))
}

/// Decodes eight SFP codes (in the low bytes of `b`) to f32 with the shift-based decoder: without the sign,
/// code `e` is bf16 `0x3400 + (e << 5)` below 64 and `0x3800 + (e << 4)` from 64 on, and 0 is 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_sfp_x8(b: __m128i) -> __m256 {
    let c = _mm256_cvtepu8_epi32(b);
    let e = _mm256_and_si256(c, _mm256_set1_epi32(0x7f));
    let small = _mm256_cmpgt_epi32(_mm256_set1_epi32(64), e);
    let v_small = _mm256_add_epi32(_mm256_set1_epi32(0x3400), _mm256_slli_epi32(e, 5));
    let v_large = _mm256_add_epi32(_mm256_set1_epi32(0x3800), _mm256_slli_epi32(e, 4));
    let v = _mm256_blendv_epi8(v_large, v_small, small);
    let v = _mm256_andnot_si256(_mm256_cmpeq_epi32(e, _mm256_setzero_si256()), v);
    let sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 8);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_or_si256(v, sign), 16))
}

/// The decoded table of the NUQ group last used.
struct NuqTable {
    group: usize,
    lo: __m256,
    hi: __m256,
}

/// Eight NUQ weights from element `$p` on (a macro so it inlines into the kernel: as a function it was not,
/// and its vector result went through memory).
macro_rules! nuq_load8 {
    ($packed:expr, $p:expr, $table:expr) => {{
        let packed: &[u8] = $packed;
        let p: usize = $p;
        let table: &mut NuqTable = $table;
        if p % NUQ_GROUP + 8 > NUQ_GROUP {
            tail_vec(8, |k| nuq_value_at(packed, p + k))
        } else {
            let within = p % NUQ_GROUP;
            let g = p / NUQ_GROUP;
            let base = g * NUQ_GROUP_BYTES;
            if g != table.group {
                let t = &packed[base..base + NUQ_CLUSTERS];
                let mut centres = [0.0f32; NUQ_CLUSTERS];
                for (c, &code) in centres.iter_mut().zip(t) {
                    *c = sfp_decode(code);
                }
                table.lo = _mm256_loadu_ps(centres.as_ptr());
                table.hi = _mm256_loadu_ps(centres[8..].as_ptr());
                table.group = g;
            }
            // The eight nibbles start at bit 4 * within of the group's index bytes; an odd start needs a fifth byte.
            let first = base + NUQ_CLUSTERS + within / 2;
            let odd = within & 1;
            let word = match packed.get(first..first + 8) {
                Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                None => {
                    // near the end of the stream: only the 4 or 5 bytes these elements use
                    let mut b = [0u8; 8];
                    b[..4 + odd].copy_from_slice(&packed[first..first + 4 + odd]);
                    u64::from_le_bytes(b)
                }
            };
            let nibbles = (word >> (4 * odd)) as u32;
            let idx = _mm256_and_si256(
                _mm256_srlv_epi32(_mm256_set1_epi32(nibbles as i32), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                _mm256_set1_epi32(0xf),
            );
            let lo = _mm256_permutevar8x32_ps(table.lo, idx);
            let hi = _mm256_permutevar8x32_ps(table.hi, idx);
            // index bit 3 picks the upper table: move it to the sign bit for blendv
            _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)))
        }
    }};
}

/// The parameters of the I8 group last used.
struct I8Params {
    group: usize,
    inv_scale: __m256,
    zero_scaled: __m256,
}

/// Eight I8 weights from element `$p` on (a macro, as `nuq_load8!`).
macro_rules! i8_load8 {
    ($packed:expr, $p:expr, $params:expr) => {{
        let packed: &[u8] = $packed;
        let p: usize = $p;
        let params: &mut I8Params = $params;
        if p % I8_GROUP + 8 > I8_GROUP {
            tail_vec(8, |k| i8_value_at(packed, p + k))
        } else {
            let within = p % I8_GROUP;
            let g = p / I8_GROUP;
            let base = g * I8_GROUP_BYTES;
            if g != params.group {
                let (inv_scale, zero_scaled) = i8_group_params(packed, base);
                params.inv_scale = _mm256_set1_ps(inv_scale);
                params.zero_scaled = _mm256_set1_ps(zero_scaled);
                params.group = g;
            }
            let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load_8_bytes(&packed[base + 4 + within..])));
            _mm256_fmadd_ps(params.inv_scale, q, params.zero_scaled)
        }
    }};
}

/// Generates the f32-activation and bf16-activation kernels of one format from its eight-weight loader.
/// `$state` is set up once per call; `$round` is applied to the weights for bf16 activations (rounding F32
/// and I8 weights to bf16, as gemma.cpp's MatMul sees them).
macro_rules! sbs_kernels {
    ($f32_name:ident, $bf16_name:ident, $doc:literal,
     state = |$packed:ident| $state:expr,
     load8 = |$st:ident, $p:ident| $load:expr,
     value = |$vp:ident| $value:expr,
     round = |$rv:ident| $round:expr, round_scalar = |$rs:ident| $round_scalar:expr) => {
        #[doc = concat!($doc, " x f32 activations. # Safety: the CPU supports avx2, fma and f16c.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn $f32_name($packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
            #[allow(unused_mut, unused_variables)]
            let mut $st = $state;
            fma_dot!(
                act.len(),
                w = |i| {
                    let $p = ofs + i;
                    $load
                },
                w_tail = |i, len| tail_vec(len, |k| {
                    let $vp = ofs + i + k;
                    $value
                }),
                a = |i| load_f32x8(&act[i..]),
                a_tail = |i, len| tail_vec(len, |k| act[i + k])
            )
        }

        #[doc = concat!($doc, " x bf16 activations. # Safety: the CPU supports avx2, fma and f16c.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn $bf16_name($packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
            #[allow(unused_mut, unused_variables)]
            let mut $st = $state;
            fma_dot!(
                act.len(),
                w = |i| {
                    let $p = ofs + i;
                    let $rv = $load;
                    $round
                },
                w_tail = |i, len| tail_vec(len, |k| {
                    let $vp = ofs + i + k;
                    let $rs = $value;
                    $round_scalar
                }),
                a = |i| load_bf16x8(&act[i..]),
                a_tail = |i, len| tail_vec(len, |k| bf16_to_f32(act[i + k]))
            )
        }
    };
}

sbs_kernels!(
    dot_f32,
    dot_f32_bf16,
    "F32 weights",
    state = |packed| (),
    load8 = |st, p| load_f32x8_bytes(&packed[4 * p..]),
    value = |p| f32_at(packed, p),
    round = |v| round_bf16x8(v),
    round_scalar = |v| round_to_bf16(v)
);

sbs_kernels!(
    dot_bf16,
    dot_bf16_bf16,
    "BF16 weights",
    state = |packed| (),
    load8 = |st, p| load_bf16x8_bytes(&packed[2 * p..]),
    value = |p| bf16_to_f32(bf16_at(packed, p)),
    round = |v| v,
    round_scalar = |v| v
);

sbs_kernels!(
    dot_sfp,
    dot_sfp_bf16,
    "SFP weights",
    state = |packed| (),
    load8 = |st, p| decode_sfp_x8(load_8_bytes(&packed[p..])),
    value = |p| sfp_decode(packed[p]),
    round = |v| v,
    round_scalar = |v| v
);

sbs_kernels!(
    dot_nuq,
    dot_nuq_bf16,
    "NUQ weights",
    state = |packed| NuqTable { group: usize::MAX, lo: _mm256_setzero_ps(), hi: _mm256_setzero_ps() },
    load8 = |st, p| nuq_load8!(packed, p, &mut st),
    value = |p| nuq_value_at(packed, p),
    round = |v| v,
    round_scalar = |v| v
);

sbs_kernels!(
    dot_i8,
    dot_i8_bf16,
    "I8 weights",
    state = |packed| I8Params { group: usize::MAX, inv_scale: _mm256_setzero_ps(), zero_scaled: _mm256_setzero_ps() },
    load8 = |st, p| i8_load8!(packed, p, &mut st),
    value = |p| i8_value_at(packed, p),
    round = |v| round_bf16x8(v),
    round_scalar = |v| round_to_bf16(v)
);

/// The high and low bytes of the bf16 that each SFP magnitude (0..128) stands for (`decode_sfp_x8`'s rule),
/// as 64-byte halves for `vpermi2b`.
const fn sfp_bf16_byte_tables() -> [[u8; 128]; 2] {
    let mut t = [[0u8; 128]; 2];
    let mut m = 1;
    while m < 128 {
        let v: u16 = if m < 64 { 0x3400 + ((m as u16) << 5) } else { 0x3800 + ((m as u16) << 4) };
        t[0][m] = (v >> 8) as u8;
        t[1][m] = v as u8;
        m += 1;
    }
    t
}
static SFP_BF16_BYTES: [[u8; 128]; 2] = sfp_bf16_byte_tables();

/// The registers that turn 64 SFP codes into 64 bf16 with AVX-512 VBMI: two byte-table lookups
/// (`vpermi2b`) give each code's high and low byte, two more interleave them into words.
#[derive(Clone, Copy)]
pub(crate) struct SfpVbmi {
    hi: [__m512i; 2],
    lo: [__m512i; 2],
    /// Byte 2j of a word vector: the low byte of element j (from `lo`), byte 2j + 1 its high byte (from
    /// `hi`); elements 0..32 and 32..64.
    words: [__m512i; 2],
    sign: __m512i,
}

impl SfpVbmi {
    /// # Safety
    /// The CPU supports avx512f, avx512bw and avx512vbmi.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) unsafe fn new() -> SfpVbmi {
        let table = |half: &[u8; 128], k: usize| _mm512_loadu_si512(half[64 * k..].as_ptr().cast());
        let mut words = [[0u8; 64]; 2];
        for (h, idx) in words.iter_mut().enumerate() {
            for j in 0..32 {
                idx[2 * j] = (32 * h + j) as u8;
                idx[2 * j + 1] = (64 + 32 * h + j) as u8;
            }
        }
        SfpVbmi {
            hi: [table(&SFP_BF16_BYTES[0], 0), table(&SFP_BF16_BYTES[0], 1)],
            lo: [table(&SFP_BF16_BYTES[1], 0), table(&SFP_BF16_BYTES[1], 1)],
            words: words.map(|w| _mm512_loadu_si512(w.as_ptr().cast())),
            sign: _mm512_set1_epi8(0x80u8 as i8),
        }
    }

    /// The bf16 of the 64 codes at `codes`: elements 0..32, then 32..64.
    ///
    /// # Safety
    /// As [`SfpVbmi::new`]; `codes` has at least 64 bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) unsafe fn decode64(&self, codes: &[u8]) -> [__m512i; 2] {
        let c = _mm512_loadu_si512(codes[..64].as_ptr().cast());
        let hi = _mm512_or_si512(_mm512_permutex2var_epi8(self.hi[0], c, self.hi[1]), _mm512_and_si512(c, self.sign));
        let lo = _mm512_permutex2var_epi8(self.lo[0], c, self.lo[1]);
        self.words.map(|idx| _mm512_permutex2var_epi8(lo, idx, hi))
    }
}

/// SFP weights x f32 activations with AVX-512 VBMI: 64 codes become bf16 with two byte-table lookups, in
/// place of the shifts and compares of [`dot_sfp`]. The accumulation is [`dot_sfp`]'s to the bit: a 16-lane
/// register holds its accumulators 0 and 1 (elements 32k..32k+16), another 2 and 3, and whatever is left after
/// the last whole 64 goes through [`dot_sfp`]'s own tail steps.
///
/// # Safety
/// The CPU supports avx2, fma, f16c, avx512f, avx512bw and avx512vbmi.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn dot_sfp_vbmi(packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
    let n = act.len();
    let codes = &packed[ofs..ofs + n];
    let vbmi = SfpVbmi::new();
    let widen = |w: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(w)));
    let (mut x, mut y) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i + 64 <= n {
        let a = &act[i..i + 64];
        for (h, w) in vbmi.decode64(&codes[i..]).into_iter().enumerate() {
            let (w_lo, w_hi) = (_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64::<1>(w));
            x = _mm512_fmadd_ps(widen(w_lo), _mm512_loadu_ps(a[32 * h..].as_ptr()), x);
            y = _mm512_fmadd_ps(widen(w_hi), _mm512_loadu_ps(a[32 * h + 16..].as_ptr()), y);
        }
        i += 64;
    }
    let sfp = |j: usize, len: usize| {
        if len == 8 {
            decode_sfp_x8(load_8_bytes(&codes[j..]))
        } else {
            tail_vec(len, |k| sfp_decode(codes[j + k]))
        }
    };
    let acts = |j: usize, len: usize| if len == 8 { load_f32x8(&act[j..]) } else { tail_vec(len, |k| act[j + k]) };
    finish_pattern(n, i, x, y, sfp, acts)
}

/// SFP codes to bf16 bits with AVX-512 VBMI: 64 codes per step through [`SfpVbmi`], the rest through the
/// scalar table.
///
/// # Safety
/// The CPU supports avx512f, avx512bw and avx512vbmi; `codes` and `out` have the same length.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn decode_sfp_bf16_vbmi(codes: &[u8], out: &mut [u16]) {
    assert_eq!(codes.len(), out.len());
    let n = codes.len();
    let sfp = SfpVbmi::new();
    let mut i = 0;
    while i + 64 <= n {
        let dst = out[i..i + 64].as_mut_ptr();
        for (h, w) in sfp.decode64(&codes[i..]).into_iter().enumerate() {
            _mm512_storeu_si512(dst.add(32 * h).cast(), w);
        }
        i += 64;
    }
    for (o, &c) in out[i..].iter_mut().zip(&codes[i..]) {
        *o = crate::sfp::sfp_decode_bf16(c);
    }
}

/// SFP codes to bf16 bits with AVX2: 16 codes per step through the shift-based decoder.
///
/// # Safety
/// The CPU supports avx2, fma and f16c; `codes` and `out` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn decode_sfp_bf16_avx2(codes: &[u8], out: &mut [u16]) {
    assert_eq!(codes.len(), out.len());
    let n = codes.len();
    let mut i = 0;
    while i + 16 <= n {
        let a = _mm256_srli_epi32::<16>(_mm256_castps_si256(decode_sfp_x8(load_8_bytes(&codes[i..]))));
        let b = _mm256_srli_epi32::<16>(_mm256_castps_si256(decode_sfp_x8(load_8_bytes(&codes[i + 8..]))));
        // packus works per 128-bit half: [a0..3 b0..3 | a4..7 b4..7], then the quarters reordered
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
        _mm256_storeu_si256(out[i..i + 16].as_mut_ptr().cast(), packed);
        i += 16;
    }
    for (o, &c) in out[i..].iter_mut().zip(&codes[i..]) {
        *o = crate::sfp::sfp_decode_bf16(c);
    }
}

/// NUQ elements `ofs..ofs + out.len()` to bf16 bits: per group, the 16 centres' low and high bytes become
/// two 16-byte tables, and `pshufb` looks 16 indices up in each; elements before a 32-aligned place in the
/// group, and after the last whole 32, go through the scalar decoder.
///
/// # Safety
/// The CPU supports avx2, fma and f16c; the stream holds the elements (checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn decode_nuq_bf16_avx2(packed: &[u8], ofs: usize, out: &mut [u16]) {
    let end = ofs + out.len();
    let mut p = ofs;
    while p < end {
        let g = p / NUQ_GROUP;
        let group_end = ((g + 1) * NUQ_GROUP).min(end);
        let base = g * NUQ_GROUP_BYTES;
        let mut centres = [0u16; NUQ_CLUSTERS];
        for (c, &code) in centres.iter_mut().zip(&packed[base..base + NUQ_CLUSTERS]) {
            *c = crate::sfp::sfp_decode_bf16(code);
        }
        let lo_tab: [u8; 16] = std::array::from_fn(|i| centres[i] as u8);
        let hi_tab: [u8; 16] = std::array::from_fn(|i| (centres[i] >> 8) as u8);
        let (lo_tab, hi_tab) = (_mm_loadu_si128(lo_tab.as_ptr().cast()), _mm_loadu_si128(hi_tab.as_ptr().cast()));
        let nibble = _mm_set1_epi8(0x0f);
        while p < group_end {
            let within = p % NUQ_GROUP;
            if !within.is_multiple_of(32) || p + 32 > group_end {
                out[p - ofs] = crate::sfp::sfp_decode_bf16(packed[base + crate::nuq::nuq_index_at(packed, p) as usize]);
                p += 1;
                continue;
            }
            // 16 index bytes: element 2j is byte j's low nibble, 2j + 1 its high one
            let bytes = _mm_loadu_si128(packed[base + NUQ_CLUSTERS + within / 2..].as_ptr().cast());
            let lo = _mm_and_si128(bytes, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), nibble);
            let dst = out[p - ofs..p - ofs + 32].as_mut_ptr();
            for (h, idx) in [_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)].into_iter().enumerate() {
                let (l, u) = (_mm_shuffle_epi8(lo_tab, idx), _mm_shuffle_epi8(hi_tab, idx));
                _mm_storeu_si128(dst.add(16 * h).cast(), _mm_unpacklo_epi8(l, u));
                _mm_storeu_si128(dst.add(16 * h + 8).cast(), _mm_unpackhi_epi8(l, u));
            }
            p += 32;
        }
    }
}

/// I8 elements `ofs..ofs + out.len()` to bf16 bits, each value `inv_scale * q + zero` (one FMA, as the scalar
/// decoder) rounded to the nearest bf16; eight at a time within a group, the rest through the scalar decoder.
///
/// # Safety
/// The CPU supports avx2, fma and f16c; the stream holds the elements (checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn decode_i8_bf16_avx2(packed: &[u8], ofs: usize, out: &mut [u16]) {
    let end = ofs + out.len();
    let mut p = ofs;
    while p < end {
        let g = crate::int8_groups::i8_group_offset(p);
        let group_end = ((p / I8_GROUP + 1) * I8_GROUP).min(end);
        let (inv_scale, zero_scaled) = i8_group_params(packed, g);
        let (scale_v, zero_v) = (_mm256_set1_ps(inv_scale), _mm256_set1_ps(zero_scaled));
        while p + 8 <= group_end {
            let q = _mm256_cvtepi8_epi32(load_8_bytes(&packed[g + 4 + p % I8_GROUP..]));
            let v = round_bf16x8(_mm256_fmadd_ps(scale_v, _mm256_cvtepi32_ps(q), zero_v));
            let words = _mm256_srli_epi32::<16>(_mm256_castps_si256(v));
            let packed_words = _mm_packus_epi32(_mm256_castsi256_si128(words), _mm256_extracti128_si256::<1>(words));
            _mm_storeu_si128(out[p - ofs..p - ofs + 8].as_mut_ptr().cast(), packed_words);
            p += 8;
        }
        while p < group_end {
            out[p - ofs] = crate::sbs_codec::bf16_bits_rounded(i8_value_at(packed, p));
            p += 1;
        }
    }
}

/// Dots of two decoded weight rows (`w` holds both, each `k` long) with each token of `acts`: `out` row `r`
/// holds row `r`'s dots with every token. Six tokens at a time, so each weight vector loaded serves six
/// tokens and each activation vector both rows. Every dot accumulates exactly as [`dot_f32_slices`]
/// (accumulators 0|1 and 2|3 of the shared pattern held in two 16-lane registers, the leftover chunks and
/// the tail through the same 8-lane steps), so each result equals its one-pair call bit for bit.
///
/// # Safety
/// The CPU supports avx2, fma, f16c and avx512f.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(crate) unsafe fn dot_row_pair_tokens_avx512(w: &[f32], acts: &[f32], out: &mut [f32]) {
    let k = w.len() / 2;
    let tokens = out.len() / 2;
    assert!(
        w.len() == 2 * k && out.len() == 2 * tokens && acts.len() == k * tokens,
        "two rows of {k}, {tokens} tokens"
    );
    let mut t0 = 0;
    while t0 < tokens {
        t0 += match tokens - t0 {
            1 => pair_tokens::<1>(w, k, acts, t0, out, tokens),
            2 => pair_tokens::<2>(w, k, acts, t0, out, tokens),
            3 => pair_tokens::<3>(w, k, acts, t0, out, tokens),
            4 => pair_tokens::<4>(w, k, acts, t0, out, tokens),
            5 => pair_tokens::<5>(w, k, acts, t0, out, tokens),
            _ => pair_tokens::<6>(w, k, acts, t0, out, tokens),
        };
    }
}

/// Tokens `t0..t0 + T` of [`dot_row_pair_tokens_avx512`]; returns `T`.
///
/// # Safety
/// As [`dot_row_pair_tokens_avx512`], with the tokens present.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn pair_tokens<const T: usize>(
    w: &[f32],
    k: usize,
    acts: &[f32],
    t0: usize,
    out: &mut [f32],
    tokens: usize,
) -> usize {
    let a0 = acts[t0 * k..(t0 + T) * k].as_ptr();
    let (r0, r1) = (w[..k].as_ptr(), w[k..2 * k].as_ptr());
    let mut x = [[_mm512_setzero_ps(); T]; 2];
    let mut y = [[_mm512_setzero_ps(); T]; 2];
    let mut i = 0;
    while i + 32 <= k {
        let w0 = [_mm512_loadu_ps(r0.add(i)), _mm512_loadu_ps(r1.add(i))];
        let w1 = [_mm512_loadu_ps(r0.add(i + 16)), _mm512_loadu_ps(r1.add(i + 16))];
        for t in 0..T {
            let a = a0.add(t * k + i);
            let (lo, hi) = (_mm512_loadu_ps(a), _mm512_loadu_ps(a.add(16)));
            for r in 0..2 {
                x[r][t] = _mm512_fmadd_ps(w0[r], lo, x[r][t]);
                y[r][t] = _mm512_fmadd_ps(w1[r], hi, y[r][t]);
            }
        }
        i += 32;
    }
    for r in 0..2 {
        let row = &w[r * k..(r + 1) * k];
        for t in 0..T {
            let act = &acts[(t0 + t) * k..(t0 + t + 1) * k];
            out[r * tokens + t0 + t] = finish_dot(row, act, i, x[r][t], y[r][t]);
        }
    }
    T
}

/// The end of one dot after its whole 32-element steps (`done` elements) left accumulators 0|1 of the shared
/// pattern in `x` and 2|3 in `y`: the remaining chunks into accumulator `c % 4`, as `fma_dot!` does after its
/// whole groups of four, then the shared reduction. `w(j, len)` and `a(j, len)` give chunk `j`'s eight values
/// (`len` of them, zero-padded, for the last partial chunk).
///
/// # Safety
/// The CPU supports avx2, fma, f16c and avx512f.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn finish_pattern(
    n: usize,
    done: usize,
    x: __m512,
    y: __m512,
    mut w: impl FnMut(usize, usize) -> __m256,
    mut a: impl FnMut(usize, usize) -> __m256,
) -> f32 {
    let half = |v: __m512, k: usize| {
        if k == 0 {
            _mm512_castps512_ps256(v)
        } else {
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
        }
    };
    let mut acc = [half(x, 0), half(x, 1), half(y, 0), half(y, 1)];
    let mut c = done / 8;
    while c < n.div_ceil(8) {
        let (j, len) = (c * 8, (n - c * 8).min(8));
        acc[c % 4] = _mm256_fmadd_ps(w(j, len), a(j, len), acc[c % 4]);
        c += 1;
    }
    hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// Dots of one or two decoded weight rows (`w` holds them, each `k` long) with each token of `acts`, with AVX2:
/// `out` row `r` holds row `r`'s dots with every token. Blocks of the rows x 4 tokens make one pass per
/// accumulator of the shared pattern (chunk `c` of eight into accumulator `c % 4`, in order), so each weight
/// vector loaded serves four tokens and each activation vector both rows, and every result equals
/// [`dot_f32_slices`] bit for bit.
///
/// # Safety
/// The CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows_tokens_avx2(w: &[f32], k: usize, acts: &[f32], out: &mut [f32]) {
    let rows = w.len() / k.max(1);
    let tokens = acts.len() / k.max(1);
    assert!(
        (1..=2).contains(&rows) && w.len() == rows * k && acts.len() == tokens * k && out.len() == rows * tokens,
        "one or two rows of {k}, {tokens} tokens"
    );
    let mut t0 = 0;
    while t0 < tokens {
        let t = (tokens - t0).min(4);
        match (rows, t) {
            (2, 4) => rows_tokens_avx2::<2, 4>(w, k, acts, t0, out, tokens),
            (2, 3) => rows_tokens_avx2::<2, 3>(w, k, acts, t0, out, tokens),
            (2, 2) => rows_tokens_avx2::<2, 2>(w, k, acts, t0, out, tokens),
            (2, _) => rows_tokens_avx2::<2, 1>(w, k, acts, t0, out, tokens),
            (_, 4) => rows_tokens_avx2::<1, 4>(w, k, acts, t0, out, tokens),
            (_, 3) => rows_tokens_avx2::<1, 3>(w, k, acts, t0, out, tokens),
            (_, 2) => rows_tokens_avx2::<1, 2>(w, k, acts, t0, out, tokens),
            _ => rows_tokens_avx2::<1, 1>(w, k, acts, t0, out, tokens),
        }
        t0 += t;
    }
}

/// Rows `0..R` of `w` against tokens `t0..t0 + T` of [`dot_rows_tokens_avx2`].
///
/// # Safety
/// As [`dot_rows_tokens_avx2`], with the tokens present.
#[inline]
#[allow(clippy::needless_range_loop)] // the indices name registers of the block
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_tokens_avx2<const R: usize, const T: usize>(
    w: &[f32],
    k: usize,
    acts: &[f32],
    t0: usize,
    out: &mut [f32],
    tokens: usize,
) {
    let wp: [*const f32; R] = std::array::from_fn(|r| w[r * k..].as_ptr());
    let ap: [*const f32; T] = std::array::from_fn(|t| acts[(t0 + t) * k..].as_ptr());
    let s01 = add_blocks(pass_avx2::<R, T>(&wp, &ap, k, 0), pass_avx2::<R, T>(&wp, &ap, k, 1));
    let s23 = add_blocks(pass_avx2::<R, T>(&wp, &ap, k, 2), pass_avx2::<R, T>(&wp, &ap, k, 3));
    let sums = add_blocks(s01, s23);
    for r in 0..R {
        for t in 0..T {
            out[r * tokens + t0 + t] = hsum_f32x8(sums[r][t]);
        }
    }
}

/// Accumulator `p` of every (row, token) pair of a block: chunks `p, p + 4, ...` of eight, the last partial
/// chunk zero-padded.
///
/// # Safety
/// The CPU supports avx2, fma and f16c; each pointer starts a row of `k` values.
#[inline]
#[allow(clippy::needless_range_loop)] // the indices name registers of the block
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<const R: usize, const T: usize>(
    wp: &[*const f32; R],
    ap: &[*const f32; T],
    k: usize,
    p: usize,
) -> [[__m256; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let full = k / 8;
    let mut c = p;
    while c < full {
        let wv: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(wp[r].add(8 * c)));
        for t in 0..T {
            let av = _mm256_loadu_ps(ap[t].add(8 * c));
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(wv[r], av, acc[r][t]);
            }
        }
        c += 4;
    }
    if c == full && !k.is_multiple_of(8) {
        let padded = |ptr: *const f32| {
            let mut buf = [0.0f32; 8];
            std::ptr::copy_nonoverlapping(ptr.add(8 * c), buf.as_mut_ptr(), k % 8);
            _mm256_loadu_ps(buf.as_ptr())
        };
        let wv: [__m256; R] = std::array::from_fn(|r| padded(wp[r]));
        for t in 0..T {
            let av = padded(ap[t]);
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(wv[r], av, acc[r][t]);
            }
        }
    }
    acc
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_blocks<const R: usize, const T: usize>(x: [[__m256; T]; R], y: [[__m256; T]; R]) -> [[__m256; T]; R] {
    std::array::from_fn(|r| std::array::from_fn(|t| _mm256_add_ps(x[r][t], y[r][t])))
}

/// [`finish_pattern`] for f32 weights.
///
/// # Safety
/// The CPU supports avx2, fma, f16c and avx512f.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn finish_dot(w: &[f32], act: &[f32], done: usize, x: __m512, y: __m512) -> f32 {
    let f32s =
        |v: &[f32], j: usize, len: usize| if len == 8 { load_f32x8(&v[j..]) } else { tail_vec(len, |k| v[j + k]) };
    finish_pattern(w.len(), done, x, y, |j, len| f32s(w, j, len), |j, len| f32s(act, j, len))
}

/// Dot of two f32 slices of equal length (the decoded-row path of `dot_rows`). # Safety: the CPU supports
/// avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32_slices(w: &[f32], a: &[f32]) -> f32 {
    let n = a.len().min(w.len());
    fma_dot!(
        n,
        w = |i| load_f32x8(&w[i..]),
        w_tail = |i, len| tail_vec(len, |k| w[i + k]),
        a = |i| load_f32x8(&a[i..]),
        a_tail = |i, len| tail_vec(len, |k| a[i + k])
    )
}

/// One row of NUQ's clustering program, compiled with FMA so the lanes vectorize. # Safety: the CPU
/// supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn cluster_dp_row_fma(
    cc: &ClusterCost,
    prev_costs: &[f32],
    prev_arg: &[u32],
    costs: &mut [f32],
    arg: &mut [u32],
) {
    cluster_dp_row(cc, prev_costs, prev_arg, costs, arg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8_groups::I8Codec;
    use crate::nuq::NuqCodec;
    use crate::sbs_codec::{bf16_bits_rounded, sbs_codec, Bf16Codec, F32Codec, SbsCodecType};
    use crate::sfp::SfpCodec;
    use crate::test_data::TestRng;

    /// The VBMI SFP kernel gives the AVX2 kernel's and the scalar twin's bits, for every length around its
    /// 64-element steps and 8-element chunks, at odd offsets, over every code.
    #[test]
    fn sfp_vbmi_kernel_equals_avx2_and_scalar_bit_for_bit() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi"))
        {
            println!("skipping the SFP VBMI kernel: the CPU lacks AVX-512 VBMI");
            return;
        }
        let mut rng = TestRng::new(64);
        let packed: Vec<u8> = (0..5000).map(|i| if i < 256 { i as u8 } else { rng.next_u64() as u8 }).collect();
        for n in [1usize, 7, 8, 9, 31, 32, 33, 63, 64, 65, 95, 96, 127, 128, 129, 200, 640, 2048, 2061] {
            for ofs in [0usize, 3, 256, 1000] {
                let act: Vec<f32> = (0..n).map(|_| rng.uniform() * 4.0).collect();
                // SAFETY: the CPU reports the features checked above (AVX-512 implies AVX2/FMA/F16C here).
                let (vbmi, avx2) = unsafe { (dot_sfp_vbmi(&packed, ofs, &act), dot_sfp(&packed, ofs, &act)) };
                let scalar = SfpCodec::dot_scalar(&packed, ofs, &act);
                assert_eq!(vbmi.to_bits(), avx2.to_bits(), "n={n} ofs={ofs}: {vbmi} vs avx2 {avx2}");
                assert_eq!(vbmi.to_bits(), scalar.to_bits(), "n={n} ofs={ofs}: {vbmi} vs scalar {scalar}");
            }
        }
        // Through the codec: the dispatched dot is the same.
        let act: Vec<f32> = (0..640).map(|_| rng.uniform()).collect();
        let via_codec = sbs_codec(SbsCodecType::Sfp).dot(&packed, 17, &act);
        assert_eq!(via_codec.to_bits(), SfpCodec::dot_scalar(&packed, 17, &act).to_bits());
    }

    /// Two decoded rows against many tokens give each pair's one-token `dot_f32_slices` bits.
    #[test]
    fn row_pair_kernel_equals_one_token_dots_bit_for_bit() {
        if !is_x86_feature_detected!("avx512f") {
            println!("skipping the AVX-512 row-pair kernel: the CPU lacks AVX-512F");
            return;
        }
        let mut rng = TestRng::new(66);
        for n in [1usize, 8, 31, 32, 33, 100, 640, 2061] {
            for tokens in [1usize, 2, 5, 6, 7, 12, 13] {
                let w: Vec<f32> = (0..2 * n).map(|_| rng.uniform()).collect();
                let acts: Vec<f32> = (0..n * tokens).map(|_| rng.uniform() * 3.0).collect();
                let mut out = vec![f32::NAN; 2 * tokens];
                // SAFETY: AVX-512F checked above (with AVX2/FMA/F16C on every such CPU).
                unsafe { dot_row_pair_tokens_avx512(&w, &acts, &mut out) };
                for r in 0..2 {
                    for t in 0..tokens {
                        // SAFETY: as above.
                        let one = unsafe { dot_f32_slices(&w[r * n..(r + 1) * n], &acts[t * n..(t + 1) * n]) };
                        assert_eq!(out[r * tokens + t].to_bits(), one.to_bits(), "n={n} tokens={tokens} ({r},{t})");
                    }
                }
            }
        }
    }

    /// The NUQ and I8 row decoders to bf16 equal the scalar element decoders (rounded to bf16 for I8) for
    /// every start and length that crosses group boundaries, starts mid-byte or mid-group, or is short.
    #[test]
    fn nuq_and_i8_bf16_row_decoders_equal_the_element_decoders() {
        require_avx2();
        let mut rng = TestRng::new(91);
        let n = 3 * NUQ_GROUP + 77;
        for ty in [SbsCodecType::Nuq, SbsCodecType::I8] {
            let packed = stream(ty, &mut rng, n);
            for (ofs, len) in [(0, n), (1, 40), (31, 300), (32, 64), (640, n - 640), (255, 2), (256, 256), (7, 0)] {
                let want: Vec<u16> = (ofs..ofs + len)
                    .map(|p| match ty {
                        SbsCodecType::Nuq => crate::sbs_codec::bf16_bits_rounded(nuq_value_at(&packed, p)),
                        _ => crate::sbs_codec::bf16_bits_rounded(i8_value_at(&packed, p)),
                    })
                    .collect();
                let mut got = vec![0u16; len];
                // SAFETY: require_avx2 checked the CPU features; the stream holds n elements.
                unsafe {
                    match ty {
                        SbsCodecType::Nuq => decode_nuq_bf16_avx2(&packed, ofs, &mut got),
                        _ => decode_i8_bf16_avx2(&packed, ofs, &mut got),
                    }
                }
                assert_eq!(got, want, "{ty} ofs {ofs} len {len}");
            }
        }
    }

    #[test]
    fn avx2_row_token_kernel_equals_one_token_dots_bit_for_bit() {
        require_avx2();
        let mut rng = TestRng::new(67);
        for n in [1usize, 8, 31, 32, 33, 100, 640, 2061] {
            for rows in [1usize, 2] {
                for tokens in [1usize, 2, 3, 4, 5, 7, 9] {
                    let w: Vec<f32> = (0..rows * n).map(|_| rng.uniform()).collect();
                    let acts: Vec<f32> = (0..n * tokens).map(|_| rng.uniform() * 3.0).collect();
                    let mut out = vec![f32::NAN; rows * tokens];
                    // SAFETY: require_avx2 checked the CPU features.
                    unsafe { dot_rows_tokens_avx2(&w, n, &acts, &mut out) };
                    for r in 0..rows {
                        for t in 0..tokens {
                            // SAFETY: as above.
                            let one = unsafe { dot_f32_slices(&w[r * n..(r + 1) * n], &acts[t * n..(t + 1) * n]) };
                            let got = out[r * tokens + t];
                            assert_eq!(got.to_bits(), one.to_bits(), "n={n} rows={rows} tokens={tokens} ({r},{t})");
                        }
                    }
                }
            }
        }
    }

    type F32Kernel = unsafe fn(&[u8], usize, &[f32]) -> f32;
    type Bf16Kernel = unsafe fn(&[u8], usize, &[u16]) -> f32;

    struct Case {
        ty: SbsCodecType,
        simd: F32Kernel,
        scalar: fn(&[u8], usize, &[f32]) -> f32,
        simd_bf16: Bf16Kernel,
        scalar_bf16: fn(&[u8], usize, &[u16]) -> f32,
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                ty: SbsCodecType::F32,
                simd: dot_f32,
                scalar: F32Codec::dot_scalar,
                simd_bf16: dot_f32_bf16,
                scalar_bf16: F32Codec::dot_bf16_scalar,
            },
            Case {
                ty: SbsCodecType::Bf16,
                simd: dot_bf16,
                scalar: Bf16Codec::dot_scalar,
                simd_bf16: dot_bf16_bf16,
                scalar_bf16: Bf16Codec::dot_bf16_scalar,
            },
            Case {
                ty: SbsCodecType::Sfp,
                simd: dot_sfp,
                scalar: SfpCodec::dot_scalar,
                simd_bf16: dot_sfp_bf16,
                scalar_bf16: SfpCodec::dot_bf16_scalar,
            },
            Case {
                ty: SbsCodecType::Nuq,
                simd: dot_nuq,
                scalar: NuqCodec::dot_scalar,
                simd_bf16: dot_nuq_bf16,
                scalar_bf16: NuqCodec::dot_bf16_scalar,
            },
            Case {
                ty: SbsCodecType::I8,
                simd: dot_i8,
                scalar: I8Codec::dot_scalar,
                simd_bf16: dot_i8_bf16,
                scalar_bf16: I8Codec::dot_bf16_scalar,
            },
        ]
    }

    /// The AVX2 kernels run here, and they are what every level from AVX2 up runs: there is no AVX-512
    /// variant to skip. Fails loudly on a CPU without AVX2 rather than passing without checking anything.
    fn require_avx2() {
        assert!(
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            "this x86-64 CPU lacks avx2+fma+f16c: the SBS kernels cannot be checked here"
        );
        if is_x86_feature_detected!("avx512f") {
            println!("avx512 reported: the f32-activation SBS dots run their AVX2 kernels there, except SFP (VBMI, checked below); the bf16 tiles are checked in bf16_tile");
        }
    }

    /// A stream of `n` elements of `ty`, encoded from weight-shaped values within SFP's range.
    fn stream(ty: SbsCodecType, rng: &mut TestRng, n: usize) -> Vec<u8> {
        let codec = sbs_codec(ty);
        let mut x = rng.row(n);
        crate::sbs_codec::scale_weights(&mut x);
        let mut packed = vec![0u8; codec.packed_bytes(n)];
        codec.encode(&x, &mut packed, 0).unwrap();
        packed
    }

    #[test]
    fn sbs_dot_kernels_equal_their_scalar_twins_bitwise() {
        require_avx2();
        let mut rng = TestRng::new(606);
        for case in cases() {
            // 3 rows of 640 (row starts mid-NUQ-group), plus odd lengths and offsets that straddle groups.
            let total = 2048 + 37;
            let packed = stream(case.ty, &mut rng, total);
            let mut checked = 0;
            for (ofs, n) in [(0, 640), (640, 640), (1280, 640), (3, 1), (5, 29), (120, 200), (250, 300), (1, 2083)] {
                let act: Vec<f32> = rng.row(n);
                let act_bf16: Vec<u16> = act.iter().map(|&v| bf16_bits_rounded(v)).collect();
                let want = (case.scalar)(&packed, ofs, &act);
                // SAFETY: require_avx2 checked the CPU features.
                let got = unsafe { (case.simd)(&packed, ofs, &act) };
                assert_eq!(got.to_bits(), want.to_bits(), "{} f32 ofs {ofs} n {n}: {got} vs {want}", case.ty);
                let want = (case.scalar_bf16)(&packed, ofs, &act_bf16);
                // SAFETY: as above.
                let got = unsafe { (case.simd_bf16)(&packed, ofs, &act_bf16) };
                assert_eq!(got.to_bits(), want.to_bits(), "{} bf16 ofs {ofs} n {n}: {got} vs {want}", case.ty);
                // and the public entry point (dispatching at this CPU's level) gives the same
                let codec = sbs_codec(case.ty);
                assert_eq!(codec.dot(&packed, ofs, &act).to_bits(), (case.scalar)(&packed, ofs, &act).to_bits());
                checked += 1;
            }
            println!("{}: avx2 dots equal scalar bitwise on {checked} ranges", case.ty);
        }
    }

    #[test]
    fn sfp_decoder_covers_every_code() {
        require_avx2();
        for chunk in 0..32u8 {
            let codes: [u8; 8] = std::array::from_fn(|k| chunk * 8 + k as u8);
            let mut got = [0.0f32; 8];
            // SAFETY: require_avx2 checked the CPU features.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), decode_sfp_x8(load_8_bytes(&codes))) };
            for (k, &c) in codes.iter().enumerate() {
                assert_eq!(got[k].to_bits(), sfp_decode(c).to_bits(), "code {c:#04x}");
            }
        }
    }

    /// Both SFP-to-bf16 row decoders give the table's bits for every code, at every length (whole steps and
    /// tails).
    #[test]
    fn sfp_row_decoders_to_bf16_equal_the_table() {
        require_avx2();
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 200, 256, 640] {
            let codes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let want: Vec<u16> = codes.iter().map(|&c| crate::sfp::sfp_decode_bf16(c)).collect();
            let mut got = vec![0u16; len];
            // SAFETY: require_avx2 checked the CPU features.
            unsafe { decode_sfp_bf16_avx2(&codes, &mut got) };
            assert_eq!(got, want, "avx2, {len} codes");
            if crate::has_avx512_vbmi() {
                got.fill(0);
                // SAFETY: the CPU reports AVX-512 VBMI.
                unsafe { decode_sfp_bf16_vbmi(&codes, &mut got) };
                assert_eq!(got, want, "vbmi, {len} codes");
            }
        }
        let every: Vec<u8> = (0..=255u8).collect();
        let mut got = vec![0u16; 256];
        // SAFETY: require_avx2 checked the CPU features.
        unsafe { decode_sfp_bf16_avx2(&every, &mut got) };
        assert!(every.iter().zip(&got).all(|(&c, &g)| crate::sfp::sfp_decode_bf16(c) == g));
    }

    #[test]
    fn bf16_rounding_lanes_equal_scalar() {
        require_avx2();
        let mut rng = TestRng::new(17);
        let mut vals: Vec<f32> = (0..4096).map(|_| f32::from_bits(rng.next_u64() as u32)).collect();
        // ties, both parities, and the specials
        vals.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::INFINITY, -0.0, f32::MAX, f32::NAN]);
        for c in vals.chunks(8) {
            let mut buf = [0.0f32; 8];
            buf[..c.len()].copy_from_slice(c);
            let mut got = [0.0f32; 8];
            // SAFETY: require_avx2 checked the CPU features.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), round_bf16x8(_mm256_loadu_ps(buf.as_ptr()))) };
            for k in 0..8 {
                assert_eq!(got[k].to_bits(), round_to_bf16(buf[k]).to_bits(), "{:e}", buf[k]);
            }
        }
    }

    #[test]
    fn clustering_row_with_fma_equals_scalar() {
        require_avx2();
        let mut rng = TestRng::new(31);
        for _ in 0..4 {
            let x: Vec<f32> = (0..NUQ_GROUP).map(|_| rng.normal() * 0.3).collect();
            let mut sorted: Vec<f32> = x.clone();
            sorted.sort_by(f32::total_cmp);
            let cc = ClusterCost::for_sorted(&sorted);
            let prev: Vec<f32> = (0..NUQ_GROUP).map(|m| cc.cost_for_test(0, m)).collect();
            let prev_arg = vec![0u32; NUQ_GROUP];
            let (mut c1, mut a1) = (vec![0.0f32; NUQ_GROUP], vec![0u32; NUQ_GROUP]);
            let (mut c2, mut a2) = (vec![0.0f32; NUQ_GROUP], vec![0u32; NUQ_GROUP]);
            cluster_dp_row(&cc, &prev, &prev_arg, &mut c1, &mut a1);
            // SAFETY: require_avx2 checked the CPU features.
            unsafe { cluster_dp_row_fma(&cc, &prev, &prev_arg, &mut c2, &mut a2) };
            assert_eq!(a1, a2);
            assert!(c1.iter().zip(&c2).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}
