//! The 256-element super-block formats ("k-quants"): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the activation format
//! Q8_K (byte layouts of ggml-common.h).
//!
//! Every weight format decodes a super-block to 256 small integers `q`, 16 (or 8) integer sub-block scales and
//! mins, and two f32 super-scales: element `i` of sub-block `s` is `(d * scale[s]) * q[i] - dmin * min[s]`.
//! One generic decoder, scalar dot and format impl serve them all; only the bit packing differs per type.
//! Q8_K is `d: f32, qs: [i8; 256], bsums: [i16; 16]` (sums of each 16 quants, used for the mins).

use std::marker::PhantomData;
use std::ops::Range;

use crate::rounding::{largest_magnitude, nearest_int};
use crate::{
    assert_dequantize_lengths, assert_dot_lengths, check_quantize_lengths, f16_le, put_f16_le, GgmlType, QuantError,
    QuantFormat,
};

pub(crate) const QK_K: usize = 256;
/// Byte offsets inside a Q8_K block.
pub(crate) const Q8K_QS: usize = 4;
pub(crate) const Q8K_BSUMS: usize = 4 + QK_K;
/// Bytes of one Q8_K block (scale, quants, sums of 16).
pub(crate) const Q8K_BYTES: usize = Q8K_BSUMS + 32;
/// Smallest group maximum treated as non-zero by the encoders (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// One decoded super-block.
#[derive(Clone, Debug)]
pub(crate) struct Block256 {
    pub q: [i8; QK_K],
    pub scale: [i16; 16],
    pub min: [i16; 16],
    /// 16 sub-blocks of 16 elements, or 8 of 32.
    pub n_sub: usize,
    pub d: f32,
    pub dmin: f32,
}

impl Block256 {
    fn new(n_sub: usize, d: f32, dmin: f32) -> Block256 {
        Block256 { q: [0; QK_K], scale: [0; 16], min: [0; 16], n_sub, d, dmin }
    }
}

/// One decoded Q8_K activation block.
pub(crate) struct ActBlock256 {
    pub d: f32,
    pub q: [i8; QK_K],
    pub bsums: [i16; 16],
}

pub(crate) fn decode_q8_k(b: &[u8]) -> ActBlock256 {
    let mut a = ActBlock256 { d: f32::from_le_bytes([b[0], b[1], b[2], b[3]]), q: [0; QK_K], bsums: [0; 16] };
    for (o, &v) in a.q.iter_mut().zip(&b[Q8K_QS..Q8K_BSUMS]) {
        *o = v as i8;
    }
    for (o, c) in a.bsums.iter_mut().zip(b[Q8K_BSUMS..].chunks_exact(2)) {
        *o = i16::from_le_bytes([c[0], c[1]]);
    }
    a
}

/// The per-type part of a super-block format.
pub(crate) trait KCodec: Send + Sync + 'static {
    const TY: GgmlType;
    fn decode(block: &[u8]) -> Block256;
    /// `x` holds one super-block (256 values); `block` its bytes.
    fn encode(x: &[f32], block: &mut [u8]);
    /// `dot_rows` with this machine's best SIMD kernel, if this format has one; returns whether it ran.
    /// Lengths are already checked.
    fn dot_rows_simd(_n: usize, _w: &[u8], _rows: usize, _acts: &[u8], _n_tokens: usize, _out: &mut [f32]) -> bool {
        false
    }
    /// A SIMD row encoder for this machine producing the same bytes as `encode`; returns whether it ran.
    fn quantize_simd(_src: &[f32], _dst: &mut [u8]) -> bool {
        false
    }
}

/// A super-block format as a [`QuantFormat`].
pub(crate) struct KFormat<C>(pub(crate) PhantomData<C>);

pub(crate) static Q2_K_FORMAT: KFormat<Q2K> = KFormat(PhantomData);
pub(crate) static Q3_K_FORMAT: KFormat<Q3K> = KFormat(PhantomData);
pub(crate) static Q4_K_FORMAT: KFormat<Q4K> = KFormat(PhantomData);
pub(crate) static Q5_K_FORMAT: KFormat<Q5K> = KFormat(PhantomData);
pub(crate) static Q6_K_FORMAT: KFormat<Q6K> = KFormat(PhantomData);
pub(crate) static Q8_K_FORMAT: KFormat<Q8K> = KFormat(PhantomData);

impl<C: KCodec> QuantFormat for KFormat<C> {
    fn ggml_type(&self) -> GgmlType {
        C::TY
    }

    fn vec_dot_type(&self) -> GgmlType {
        GgmlType::Q8K
    }

    fn dequantize_row(&self, src: &[u8], dst: &mut [f32]) {
        assert_dequantize_lengths(C::TY, src, dst);
        dequantize_scalar::<C>(src, dst);
    }

    fn quantize_row(&self, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
        check_quantize_lengths(C::TY, src, dst)?;
        if !C::quantize_simd(src, dst) {
            quantize_scalar::<C>(src, dst);
        }
        Ok(())
    }

    fn vec_dot(&self, n: usize, w: &[u8], act: &[u8]) -> f32 {
        assert_dot_lengths(C::TY, GgmlType::Q8K, n, w, act);
        // a 1 x 1 dot_rows, so a pair's result never depends on how it was batched
        let mut out = [0f32];
        if C::dot_rows_simd(n, w, 1, act, 1, &mut out) {
            out[0]
        } else {
            dot_scalar::<C>(w, act)
        }
    }

    fn dot_rows(&self, n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) {
        let (w_row, a_row) = (C::TY.row_bytes(n), GgmlType::Q8K.row_bytes(n));
        assert!(
            w_row.is_some_and(|b| b * rows == w.len())
                && a_row.is_some_and(|b| b * n_tokens == acts.len())
                && out.len() == rows * n_tokens,
            "{} dot_rows of {n} elements: {rows} rows in {} bytes, {n_tokens} tokens in {} bytes, {} outputs",
            C::TY,
            w.len(),
            acts.len(),
            out.len()
        );
        if !C::dot_rows_simd(n, w, rows, acts, n_tokens, out) {
            dot_rows_scalar::<C>(n, w, rows, acts, n_tokens, out);
        }
    }
}

/// Scalar `dot_rows` (the twin of the tiled SIMD kernels): [`dot_scalar`] for every (row, token) pair.
pub(crate) fn dot_rows_scalar<C: KCodec>(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    let w_row = w.len() / rows.max(1);
    let a_row = GgmlType::Q8K.row_bytes(n).unwrap_or(0);
    for (wr, o) in w.chunks_exact(w_row.max(1)).zip(out.chunks_exact_mut(n_tokens.max(1))) {
        for (a, y) in acts.chunks_exact(a_row.max(1)).zip(o.iter_mut()) {
            *y = dot_scalar::<C>(wr, a);
        }
    }
}

pub(crate) fn dequantize_scalar<C: KCodec>(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(C::TY.type_size()).zip(dst.chunks_exact_mut(QK_K)) {
        let b = C::decode(block);
        let sub_len = QK_K / b.n_sub;
        for (s, (o, q)) in out.chunks_exact_mut(sub_len).zip(b.q.chunks_exact(sub_len)).enumerate() {
            let dl = b.d * b.scale[s] as f32;
            let ml = b.dmin * b.min[s] as f32;
            for (y, &v) in o.iter_mut().zip(q) {
                *y = dl * v as f32 - ml;
            }
        }
    }
}

pub(crate) fn quantize_scalar<C: KCodec>(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(C::TY.type_size())) {
        C::encode(x, block);
    }
}

/// Scalar dot with Q8_K activations (the twin of every SIMD dot), ggml's formula: per super-block
/// `d*d8 * sum_s scale[s] * sum(q*q8) - dmin*d8 * sum_s min[s] * bsums(s)`, all sums integer.
pub(crate) fn dot_scalar<C: KCodec>(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(C::TY.type_size()).zip(act.chunks_exact(GgmlType::Q8K.type_size())) {
        let b = C::decode(wb);
        let a = decode_q8_k(ab);
        let sub_len = QK_K / b.n_sub;
        let mut isum = 0i32;
        let mut summs = 0i32;
        for s in 0..b.n_sub {
            let range = s * sub_len..(s + 1) * sub_len;
            let dot: i32 = b.q[range.clone()].iter().zip(&a.q[range]).map(|(&x, &y)| x as i32 * y as i32).sum();
            isum += b.scale[s] as i32 * dot;
            let groups = s * sub_len / 16..(s + 1) * sub_len / 16;
            let bsum: i32 = a.bsums[groups].iter().map(|&v| v as i32).sum();
            summs += b.min[s] as i32 * bsum;
        }
        sum += (b.d * a.d) * isum as f32 - (b.dmin * a.d) * summs as f32;
    }
    sum
}

/// The 6-bit scale and min of sub-block `j` (0..8) from Q4_K/Q5_K's 12 packed bytes (ggml's get_scale_min_k4).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The eight 6-bit scales and eight mins of a Q4_K/Q5_K block as bytes of two u64 (byte `j` = sub-block `j`),
/// with word operations: scales 0..4 and mins 0..4 are the low 6 bits of bytes 0..4 and 4..8; scales and mins
/// 4..8 take their low 4 bits from the nibbles of bytes 8..12 and their high 2 bits from the top of bytes 0..8.
pub(crate) fn k4_scales_mins_packed(q: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let sc_lo = w0 & 0x3f3f_3f3f;
    let mn_lo = w1 & 0x3f3f_3f3f;
    // (byte >> 6) << 4 for every byte at once: bits 6, 7 of each byte move to bits 4, 5 of the same byte
    let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030);
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030);
    (sc_lo as u64 | (sc_hi as u64) << 32, mn_lo as u64 | (mn_hi as u64) << 32)
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block.
pub(crate) fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, q);
    }
    (sc, mn)
}

/// Inverse of [`scale_min_k4`] for all eight sub-blocks (values must be < 64).
fn pack_scales_mins_k4(sc: &[u8; 8], mn: &[u8; 8], q: &mut [u8]) {
    q[..12].fill(0);
    for j in 0..8 {
        if j < 4 {
            q[j] = sc[j];
            q[j + 4] = mn[j];
        } else {
            q[j + 4] = (sc[j] & 0x0f) | ((mn[j] & 0x0f) << 4);
            q[j - 4] |= (sc[j] >> 4) << 6;
            q[j] |= (mn[j] >> 4) << 6;
        }
    }
}

/// `d`, `dmin` and the eight scales and mins shared by the Q4_K and Q5_K layouts (quants left zero).
fn decode_k4_header(b: &[u8]) -> Block256 {
    let mut out = Block256::new(8, f16_le(b), f16_le(&b[2..]));
    let (sc, mn) = scales_mins_k4(&b[4..16]);
    for j in 0..8 {
        out.scale[j] = sc[j] as i16;
        out.min[j] = mn[j] as i16;
    }
    out
}

/// The sixteen signed 6-bit scales of a Q3_K block (stored with a +32 bias).
pub(crate) fn scales_q3_k(q: &[u8]) -> [i16; 16] {
    let mut out = [0i16; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { q[j] & 0x0f } else { q[j - 8] >> 4 };
        let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i16 - 32;
    }
    out
}

/// Packs 2-bit fields as Q2_K/Q3_K store them: element `i` of each 128 goes to byte `i % 32`, bits `2 * (i / 32)`.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// The 2-bit field of element `i` (Q2_K/Q3_K layout).
#[inline(always)]
fn bits2(qs: &[u8], i: usize) -> u8 {
    (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3
}

// ---------------------------------------------------------------------------------------------------------------
// Encoders' search routines: the same searches as llama.cpp's reference quantizers, so files we write decode
// like theirs.

/// Asymmetric quants in `0..=nmax` for one group, searching the scale that minimises the weighted error
/// (llama.cpp's make_qkx2_quants). Returns (scale, -min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        best_error += weights[i] * err(scale * q as f32 + min - x[i]);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric quants in `-nmax..nmax` (stored +nmax) with x^2-weighted scale search (llama.cpp's
/// make_qx_quants with rmse_type 1 and no importance weights). Sums are formed in ggml's order, `(w * l) * l` in
/// f32 rather than `w * (l * l)`, so the chosen scale is bit-for-bit llama-quantize's.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = largest_magnitude(x.iter().copied());
    if amax < GROUP_MAX_EPS {
        l[..x.len()].fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = quant(iscale, v);
        l[i] = (q + nmax) as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = quant(iscale, v);
            let w = v * v;
            sumlx += w * v * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit quants with iterative x^2-weighted refinement (llama.cpp's make_q3_quants, do_rmse on).
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len();
    let (amax, max) = largest_magnitude(x.iter().copied());
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = q as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for v in l[..n].iter_mut() {
        *v += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Shared Q4_K/Q5_K encoder: per 32-element sub-block an asymmetric search, 6-bit scales and mins, then the
/// quants requantized with the stored scales. Returns the 256 quants (0..=nmax).
fn encode_k4_scales(x: &[f32], block: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0.0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..], rmin, 0.1, nstep, false);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    pack_scales_mins_k4(&ls, &lm, &mut block[4..16]);
    let d = put_f16_le(block, max_scale / 63.0);
    let dmin = put_f16_le(&mut block[2..], max_min / 63.0);
    for j in 0..8 {
        let dl = d * ls[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin * lm[j] as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    l
}

// ---------------------------------------------------------------------------------------------------------------

/// Q2_K: `scales[16]` (4-bit scale | 4-bit min << 4), `qs[64]` 2-bit quants, `d`, `dmin`.
pub(crate) struct Q2K;
impl KCodec for Q2K {
    const TY: GgmlType = GgmlType::Q2K;
    fn decode(b: &[u8]) -> Block256 {
        let mut out = Block256::new(16, f16_le(&b[80..]), f16_le(&b[82..]));
        for (s, &packed) in b[..16].iter().enumerate() {
            out.scale[s] = (packed & 0x0f) as i16;
            out.min[s] = (packed >> 4) as i16;
        }
        let qs = &b[16..80];
        for (i, q) in out.q.iter_mut().enumerate() {
            *q = bits2(qs, i) as i8;
        }
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        const Q4SCALE: f32 = 15.0;
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0.0f32; 16], [0.0f32; 16]);
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        let mut weights = [0.0f32; 16];
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..], -0.5, 0.1, 15, true);
            max_scale = max_scale.max(scales[j]);
            max_min = max_min.max(mins[j]);
        }
        let mut sc = [0u8; 16];
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            put_f16_le(&mut b[80..], max_scale / Q4SCALE);
        } else {
            put_f16_le(&mut b[80..], 0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) as u8) << 4;
            }
            put_f16_le(&mut b[82..], max_min / Q4SCALE);
        } else {
            put_f16_le(&mut b[82..], 0.0);
        }
        b[..16].copy_from_slice(&sc);
        let (d, dmin) = (f16_le(&b[80..]), f16_le(&b[82..]));
        for j in 0..16 {
            let dl = d * (sc[j] & 0x0f) as f32;
            if dl == 0.0 {
                continue;
            }
            let dm = dmin * (sc[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dl).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut b[16..80]);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::k_quants as k;
            dispatch_dot_rows(k::dot_rows_q2_k_avx512, k::dot_rows_q2_k_avx2, (n, w, rows, acts, n_tokens, out))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, w, rows, acts, n_tokens, out);
            false
        }
    }
}

/// Q3_K: `hmask[32]` (bit 2 of each quant, inverted sense), `qs[64]` low 2 bits, `scales[12]` (16 6-bit signed
/// scales), `d`.
pub(crate) struct Q3K;
impl KCodec for Q3K {
    const TY: GgmlType = GgmlType::Q3K;
    fn decode(b: &[u8]) -> Block256 {
        let mut out = Block256::new(16, f16_le(&b[108..]), 0.0);
        out.scale = scales_q3_k(&b[96..108]);
        let (hmask, qs) = (&b[..32], &b[32..96]);
        for (i, q) in out.q.iter_mut().enumerate() {
            let high_set = hmask[i % 32] & (1 << (i / 32)) != 0;
            *q = bits2(qs, i) as i8 - if high_set { 0 } else { 4 };
        }
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..]);
        }
        let (_, max_scale) = largest_magnitude(scales);
        let sc = &mut b[96..108];
        sc.fill(0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let v = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc[j] = v & 0x0f;
                } else {
                    sc[j - 8] |= (v & 0x0f) << 4;
                }
                sc[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
            }
            put_f16_le(&mut b[108..], 1.0 / iscale);
        } else {
            put_f16_le(&mut b[108..], 0.0);
        }
        let d = f16_le(&b[108..]);
        let stored = scales_q3_k(&b[96..108]);
        for j in 0..16 {
            let dl = d * stored[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dl).clamp(-4, 3) + 4) as i8;
            }
        }
        let mut low = [0u8; QK_K];
        let hmask = &mut b[..32];
        hmask.fill(0);
        for (i, (&v, lo)) in l.iter().zip(low.iter_mut()).enumerate() {
            let v = v as u8;
            if v > 3 {
                hmask[i % 32] |= 1 << (i / 32);
                *lo = v - 4;
            } else {
                *lo = v;
            }
        }
        pack_2bit(&low, &mut b[32..96]);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::k_quants as k;
            dispatch_dot_rows(k::dot_rows_q3_k_avx512, k::dot_rows_q3_k_avx2, (n, w, rows, acts, n_tokens, out))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, w, rows, acts, n_tokens, out);
            false
        }
    }
}

/// Q4_K: `d`, `dmin`, `scales[12]` (8 6-bit scales and mins), `qs[128]` nibbles (per 64 elements: 32 low
/// nibbles, then the 32 high nibbles of the same bytes).
pub(crate) struct Q4K;
impl KCodec for Q4K {
    const TY: GgmlType = GgmlType::Q4K;
    fn decode(b: &[u8]) -> Block256 {
        let mut out = decode_k4_header(b);
        let qs = &b[16..144];
        for (i, q) in out.q.iter_mut().enumerate() {
            let byte = qs[32 * (i / 64) + i % 32];
            *q = if i % 64 < 32 { byte & 0x0f } else { byte >> 4 } as i8;
        }
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let l = encode_k4_scales(x, b, 15, -1.0, 20);
        let qs = &mut b[16..144];
        for c in 0..4 {
            for k in 0..32 {
                qs[32 * c + k] = l[64 * c + k] | (l[64 * c + 32 + k] << 4);
            }
        }
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::k_quants as k;
            dispatch_dot_rows(k::dot_rows_q4_k_avx512, k::dot_rows_q4_k_avx2, (n, w, rows, acts, n_tokens, out))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, w, rows, acts, n_tokens, out);
            false
        }
    }
}

/// Q5_K: as Q4_K plus `qh[32]`: bit 4 of element `i` is bit `i / 32` of `qh[i % 32]`.
pub(crate) struct Q5K;
impl KCodec for Q5K {
    const TY: GgmlType = GgmlType::Q5K;
    fn decode(b: &[u8]) -> Block256 {
        let mut out = decode_k4_header(b);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        for (i, q) in out.q.iter_mut().enumerate() {
            let byte = qs[32 * (i / 64) + i % 32];
            let low = if i % 64 < 32 { byte & 0x0f } else { byte >> 4 };
            let high = (qh[i % 32] >> (i / 32)) & 1;
            *q = (low | (high << 4)) as i8;
        }
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let l = encode_k4_scales(x, b, 31, -0.5, 15);
        let (qh, qs) = b[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for k in 0..32 {
                let (l1, l2) = (l[64 * c + k], l[64 * c + 32 + k]);
                qh[k] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
                qs[32 * c + k] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
            }
        }
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::k_quants as k;
            dispatch_dot_rows(k::dot_rows_q5_k_avx512, k::dot_rows_q5_k_avx2, (n, w, rows, acts, n_tokens, out))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, w, rows, acts, n_tokens, out);
            false
        }
    }
}

/// Q6_K: `ql[128]` low 4 bits, `qh[64]` high 2 bits, `scales[16]` i8, `d`; quants are stored +32.
pub(crate) struct Q6K;
impl KCodec for Q6K {
    const TY: GgmlType = GgmlType::Q6K;
    fn decode(b: &[u8]) -> Block256 {
        let mut out = Block256::new(16, f16_le(&b[208..]), 0.0);
        for (o, &s) in out.scale.iter_mut().zip(&b[192..208]) {
            *o = s as i8 as i16;
        }
        let (ql, qh) = (&b[..128], &b[128..192]);
        for (i, q) in out.q.iter_mut().enumerate() {
            let (half, k, l) = (i / 128, (i % 128) / 32, i % 32);
            let low_byte = ql[64 * half + 32 * (k % 2) + l];
            let low = if k < 2 { low_byte & 0x0f } else { low_byte >> 4 };
            let high = (qh[32 * half + l] >> (2 * k)) & 3;
            *q = (low | (high << 4)) as i8 - 32;
        }
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        encode_q6_k(x, b, |r, l| make_qx_quants(32, &x[r], l));
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::k_quants as k;
            dispatch_dot_rows(k::dot_rows_q6_k_avx512, k::dot_rows_q6_k_avx2, (n, w, rows, acts, n_tokens, out))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, w, rows, acts, n_tokens, out);
            false
        }
    }
}

/// A `dot_rows` kernel of one format and SIMD level (`unsafe`: the CPU must support the level).
#[cfg(target_arch = "x86_64")]
pub(crate) type DotRowsKernel = unsafe fn(usize, &[u8], usize, &[u8], usize, &mut [f32]);

/// Runs the AVX-512 VNNI kernel where [`has_avx512_vnni`](crate::has_avx512_vnni), else the AVX2 one where
/// [`simd_level`](crate::simd_level) allows; returns whether either ran.
#[cfg(target_arch = "x86_64")]
pub(crate) fn dispatch_dot_rows(
    avx512: DotRowsKernel,
    avx2: DotRowsKernel,
    (n, w, rows, acts, n_tokens, out): (usize, &[u8], usize, &[u8], usize, &mut [f32]),
) -> bool {
    if crate::has_avx512_vnni() {
        // SAFETY: has_avx512_vnni() is true only when the CPU reports avx512f/bw/vl/vnni and simd_level() is
        // Avx512, which also requires avx2, fma and f16c.
        unsafe { avx512(n, w, rows, acts, n_tokens, out) };
        true
    } else if crate::simd_level() >= crate::SimdLevel::Avx2 {
        // SAFETY: simd_level() is at least Avx2 only when the CPU reports avx2, fma and f16c.
        unsafe { avx2(n, w, rows, acts, n_tokens, out) };
        true
    } else {
        false
    }
}

/// Q8_K: the activation format of the k-quants. As a "weight" it dots with itself, scalar only.
pub(crate) struct Q8K;
impl KCodec for Q8K {
    const TY: GgmlType = GgmlType::Q8K;
    fn decode(b: &[u8]) -> Block256 {
        let a = decode_q8_k(b);
        let mut out = Block256::new(16, a.d, 0.0);
        out.q = a.q;
        out.scale = [1; 16];
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        encode_q8_k(x, b);
    }
    fn quantize_simd(src: &[f32], dst: &mut [u8]) -> bool {
        crate::x86_dispatch!(activations::quantize_q8_k(src, dst)).is_some()
    }
}

/// llama.cpp's Q8_K reference: the signed value of largest magnitude maps to -127, quants round to nearest even,
/// `d = 1 / iscale` in f32, bsums are the sums of each 16 quants. An all-zero block is all zero bytes.
pub(crate) fn encode_q8_k(x: &[f32], b: &mut [u8]) {
    let (amax, max) = largest_magnitude(x.iter().copied());
    if amax == 0.0 {
        b[..GgmlType::Q8K.type_size()].fill(0);
        return;
    }
    let iscale = -127.0 / max;
    let qs = &mut b[Q8K_QS..Q8K_BSUMS];
    for (o, &v) in qs.iter_mut().zip(x) {
        *o = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    let mut bsums = [0u8; 32];
    for (g, group) in qs.chunks_exact(16).enumerate() {
        let sum: i32 = group.iter().map(|&q| q as i8 as i32).sum();
        bsums[2 * g..2 * g + 2].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    b[Q8K_BSUMS..Q8K_BSUMS + 32].copy_from_slice(&bsums);
    b[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// A Q6_K block (`ql[128]`, `qh[64]`, `scales[16]`, `d`) once `sub_block_scale(range, levels)` has found each
/// 16-element sub-block's scale and levels (ggml's reference search, or its importance-weighted one): the
/// 8-bit sub-block scales against the largest, the levels redone at them, the packing.
pub(crate) fn encode_q6_k(x: &[f32], b: &mut [u8], mut sub_block_scale: impl FnMut(Range<usize>, &mut [i8]) -> f32) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for (ib, scale) in scales.iter_mut().enumerate() {
        let r = 16 * ib..16 * ib + 16;
        *scale = sub_block_scale(r.clone(), &mut l[r]);
    }
    let (max_abs_scale, max_scale) = largest_magnitude(scales);
    if max_abs_scale < GROUP_MAX_EPS {
        b[..210].fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = put_f16_le(&mut b[208..], 1.0 / iscale);
    for ib in 0..16 {
        b[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dl = d * (b[192 + j] as i8) as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, qh) = b[..192].split_at_mut(128);
    for half in 0..2 {
        for k in 0..32 {
            let q = |o: usize| l[128 * half + k + o] as u8;
            ql[64 * half + k] = (q(0) & 0x0f) | ((q(64) & 0x0f) << 4);
            ql[64 * half + 32 + k] = (q(32) & 0x0f) | ((q(96) & 0x0f) << 4);
            qh[32 * half + k] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant_format;
    use crate::test_data::{assert_close, dequant, f16_bytes, quant, TestRng};

    #[test]
    fn scale_min_k4_packing_round_trips_and_matches_ggml_bits() {
        let sc = [1u8, 2, 63, 40, 17, 33, 63, 0];
        let mn = [5u8, 0, 62, 48, 31, 16, 1, 63];
        let mut packed = [0u8; 12];
        pack_scales_mins_k4(&sc, &mn, &mut packed);
        assert_eq!(scales_mins_k4(&packed), (sc, mn));
        // j < 4: plain 6-bit fields; j >= 4: low nibbles in bytes 8..12, high 2 bits in the top of bytes 0..8
        assert_eq!(packed[0] & 63, 1);
        assert_eq!(packed[8], (17 & 0x0f) | ((31 & 0x0f) << 4));
        assert_eq!(packed[0] >> 6, 17 >> 4);
        assert_eq!(packed[4] >> 6, 31 >> 4);
    }

    #[test]
    fn q4_k_hand_built_block() {
        // d = 0.5, dmin = 0.25; sub-block j has scale j + 1 and min 2j; quant of element i is i % 16.
        let mut b = Vec::from(f16_bytes(0.5));
        b.extend(f16_bytes(0.25));
        let sc: [u8; 8] = std::array::from_fn(|j| j as u8 + 1);
        let mn: [u8; 8] = std::array::from_fn(|j| 2 * j as u8);
        let mut packed = [0u8; 12];
        pack_scales_mins_k4(&sc, &mn, &mut packed);
        b.extend(packed);
        for _chunk in 0..4 {
            for k in 0..32u8 {
                b.push((k % 16) | (((k + 32) % 16) << 4));
            }
        }
        let v = dequant(GgmlType::Q4K, &b);
        for (i, &x) in v.iter().enumerate() {
            let j = i / 32;
            let want = 0.5 * sc[j] as f32 * (i % 16) as f32 - 0.25 * mn[j] as f32;
            assert_eq!(x, want, "element {i}");
        }
    }

    #[test]
    fn q5_k_hand_built_block() {
        let mut b = Vec::from(f16_bytes(1.0));
        b.extend(f16_bytes(0.0));
        let mut packed = [0u8; 12];
        pack_scales_mins_k4(&[1; 8], &[0; 8], &mut packed);
        b.extend(packed);
        // qh: element i has its high bit iff i % 3 == 0
        let mut qh = [0u8; 32];
        for i in (0..256).filter(|i| i % 3 == 0) {
            qh[i % 32] |= 1 << (i / 32);
        }
        b.extend(qh);
        b.extend([0x97u8; 128]); // low nibble 7, high nibble 9
        let v = dequant(GgmlType::Q5K, &b);
        for (i, &x) in v.iter().enumerate() {
            let low = if i % 64 < 32 { 7 } else { 9 };
            let want = (low + if i % 3 == 0 { 16 } else { 0 }) as f32;
            assert_eq!(x, want, "element {i}");
        }
    }

    #[test]
    fn q6_k_hand_built_block() {
        // quant (stored) of element i is i % 64 ; scales s -> s - 8; d = 0.5
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for i in 0..256 {
            let q = (i % 64) as u8;
            let (half, k, l) = (i / 128, (i % 128) / 32, i % 32);
            let idx = 64 * half + 32 * (k % 2) + l;
            ql[idx] |= if k < 2 { q & 0x0f } else { (q & 0x0f) << 4 };
            qh[32 * half + l] |= (q >> 4) << (2 * k);
        }
        let mut b = Vec::from(ql);
        b.extend(qh);
        b.extend((0..16).map(|s| (s as i8 - 8) as u8));
        b.extend(f16_bytes(0.5));
        let v = dequant(GgmlType::Q6K, &b);
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, (0.5 * ((i / 16) as f32 - 8.0)) * ((i % 64) as f32 - 32.0), "element {i}");
        }
    }

    #[test]
    fn q3_k_hand_built_block() {
        // all low bits 2, high bit set for the first 128 elements only; scales j -> j - 32 + 20; d = 0.25
        let mut b = vec![0u8; 32];
        for m in b.iter_mut() {
            *m = 0x0f; // bits 0..3: elements 0..127
        }
        b.extend([0xaau8; 64]); // every 2-bit field = 2
        let mut sc = [0u8; 12];
        for j in 0..16usize {
            let v = (j + 20) as u8; // stored with bias 32: value j - 12
            if j < 8 {
                sc[j] |= v & 0x0f;
            } else {
                sc[j - 8] |= (v & 0x0f) << 4;
            }
            sc[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
        }
        b.extend(sc);
        b.extend(f16_bytes(0.25));
        let v = dequant(GgmlType::Q3K, &b);
        for (i, &x) in v.iter().enumerate() {
            let q = if i < 128 { 2 } else { 2 - 4 };
            let want = (0.25 * ((i / 16) as f32 - 12.0)) * q as f32;
            assert_eq!(x, want, "element {i}");
        }
    }

    #[test]
    fn q2_k_hand_built_block() {
        // scale s = s % 16, min 1; d = 0.5, dmin = 2; 2-bit fields: element i -> (i / 32) % 4
        let mut b: Vec<u8> = (0..16u8).map(|s| s | (1 << 4)).collect();
        b.extend([0b1110_0100u8; 64]); // fields 0,1,2,3 at shifts 0,2,4,6
        b.extend(f16_bytes(0.5));
        b.extend(f16_bytes(2.0));
        let v = dequant(GgmlType::Q2K, &b);
        for (i, &x) in v.iter().enumerate() {
            let q = ((i % 128) / 32) as f32;
            assert_eq!(x, 0.5 * (i / 16) as f32 * q - 2.0, "element {i}");
        }
    }

    #[test]
    fn q8_k_encoder_matches_the_reference_rule() {
        let mut x = [0.0f32; 256];
        x[0] = 1.0;
        x[5] = -2.0; // signed max: iscale = 63.5, d = 1 / 63.5
        x[17] = 0.5 / 63.5 * 3.0; // 1.5 -> ties to even: 2
        let b = quant(GgmlType::Q8K, &x);
        let a = decode_q8_k(&b);
        assert_eq!(a.d, 1.0 / (-127.0f32 / -2.0));
        assert_eq!(a.q[5], -127);
        assert_eq!(a.q[0], 64); // 63.5 -> ties to even
        assert_eq!(a.q[17], 2);
        assert_eq!(a.bsums[0], 64 - 127);
        assert_eq!(a.bsums[1], 2);
        assert!(quant(GgmlType::Q8K, &[0.0; 256]).iter().all(|&v| v == 0));
    }

    fn check_round_trip(ty: GgmlType, bound: impl Fn(&[f32]) -> f32) {
        let mut rng = TestRng::new(7 + ty.id() as u64);
        let mut worst = 0.0f32;
        for _ in 0..10 {
            let x = rng.row(QK_K * 4);
            let y = dequant(ty, &quant(ty, &x));
            // bounds are per sub-block of 16 relative to the super-block's amax: k-quants share 6-bit scales
            for (xb, yb) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
                let b = bound(xb);
                for (a, c) in xb.iter().zip(yb) {
                    assert!((a - c).abs() <= b, "{ty}: {a} -> {c}, error above {b}");
                    worst = worst.max((a - c).abs() / b);
                }
            }
        }
        assert!(dequant(ty, &quant(ty, &[0.0; QK_K])).iter().all(|&v| v == 0.0), "{ty} zero block");
        println!("{ty}: worst error {worst:.3} of the bound");
    }

    fn amax(x: &[f32]) -> f32 {
        x.iter().fold(0.0, |a, &v| a.max(v.abs()))
    }

    // Bounds, relative to the super-block's largest magnitude A: a sub-block's step is at most about
    // A / (levels - 1) * (1 + scale quantization slack); the search may trade a little max error for RMS error.
    #[test]
    fn q8_k_round_trip() {
        check_round_trip(GgmlType::Q8K, |x| amax(x) * (0.5 / 127.0) * 1.001);
    }
    #[test]
    fn q6_k_round_trip() {
        check_round_trip(GgmlType::Q6K, |x| amax(x) / 31.0);
    }
    #[test]
    fn q5_k_round_trip() {
        check_round_trip(GgmlType::Q5K, |x| amax(x) * 2.0 / 31.0);
    }
    #[test]
    fn q4_k_round_trip() {
        check_round_trip(GgmlType::Q4K, |x| amax(x) * 2.0 / 15.0);
    }
    #[test]
    fn q3_k_round_trip() {
        check_round_trip(GgmlType::Q3K, |x| amax(x) * 2.0 / 4.0);
    }
    #[test]
    fn q2_k_round_trip() {
        check_round_trip(GgmlType::Q2K, |x| amax(x) * 2.0 / 3.0);
    }

    /// vec_dot(w, quantize(x)) against the f32 dots of the decoded rows: exact formula (decoded activations) to
    /// float rounding, and the true dot within the activation quantization error.
    fn check_vec_dot(ty: GgmlType) {
        let f = quant_format(ty).unwrap();
        let mut rng = TestRng::new(300 + ty.id() as u64);
        for n in [256, 512, 640 * 4, 2048] {
            let w = quant(ty, &rng.row(n));
            let x = rng.row(n);
            let a = quant(GgmlType::Q8K, &x);
            let (wd, ad) = (dequant(ty, &w), dequant(GgmlType::Q8K, &a));
            let got = f.vec_dot(n, &w, &a);
            let exact: f64 = wd.iter().zip(&ad).map(|(&p, &q)| p as f64 * q as f64).sum();
            let abs: f64 = wd.iter().zip(&ad).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
            // the dot's mins term is a separate product, so allow rounding relative to it as well
            let mins: f64 = wd.iter().map(|v| v.abs() as f64).sum::<f64>() * amax(&ad) as f64;
            assert_close(got, exact as f32, 1.0, (3e-6 * (abs + mins)) as f32 + 1e-30, &format!("{ty} n={n} formula"));

            let truth: f64 = wd.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
            let act_err: f64 = wd
                .chunks(QK_K)
                .zip(x.chunks(QK_K))
                .map(|(wc, xc)| wc.iter().map(|v| v.abs() as f64).sum::<f64>() * amax(xc) as f64 * 0.5 / 127.0)
                .sum();
            assert_close(got, truth as f32, 1.0, (act_err * 1.01 + 1e-5 * (abs + mins)) as f32, &format!("{ty} n={n}"));
        }
    }

    #[test]
    fn vec_dot_q2_k() {
        check_vec_dot(GgmlType::Q2K);
    }
    #[test]
    fn vec_dot_q3_k() {
        check_vec_dot(GgmlType::Q3K);
    }
    #[test]
    fn vec_dot_q4_k() {
        check_vec_dot(GgmlType::Q4K);
    }
    #[test]
    fn vec_dot_q5_k() {
        check_vec_dot(GgmlType::Q5K);
    }
    #[test]
    fn vec_dot_q6_k() {
        check_vec_dot(GgmlType::Q6K);
    }
    #[test]
    fn vec_dot_q8_k() {
        check_vec_dot(GgmlType::Q8K);
    }
}
