//! The 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1 (byte layouts of ggml-common.h).
//!
//! Every format decodes a block to 32 small integers `q` with a scale `d` and an offset `m` (value = q*d + m),
//! so one generic decoder, scalar dot and format impl serve them all; only the bit packing differs per type.
//! Nibble formats store element `j` in the low nibble of `qs[j]` and element `j + 16` in its high nibble; the
//! 5-bit formats keep bit 4 of element `j` in bit `j` of the little-endian u32 `qh`.

use std::marker::PhantomData;

use crate::rounding::{largest_magnitude, round_away};
use crate::{
    assert_dequantize_lengths, assert_dot_lengths, check_quantize_lengths, f16_le, put_f16_le, GgmlType, QuantError,
    QuantFormat,
};

pub(crate) const QK: usize = 32;

/// One decoded block: element `i` is `q[i] as f32 * d + m` (`m` is 0 for the symmetric formats).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block32 {
    pub q: [i8; QK],
    pub d: f32,
    pub m: f32,
}

/// One decoded activation block (Q8_0 or Q8_1): quants, scale and, for Q8_1, `s = d * sum(q)` (else 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActBlock32 {
    pub q: [i8; QK],
    pub d: f32,
    pub s: f32,
}

/// The per-type part of a 32-element block format.
pub(crate) trait LegacyCodec: Send + Sync + 'static {
    const TY: GgmlType;
    /// The activation format of its dot product (Q8_0 or Q8_1).
    const ACT: GgmlType;
    /// Whether values are `q * d + m` (Q4_1, Q5_1) rather than `q * d`. Symmetric formats must not add their
    /// zero `m`: `-0.0 + 0.0` is `+0.0`, and ggml's decoder (which llama-quantize's F32 output copies) keeps the
    /// sign of a zero product.
    const AFFINE: bool = false;
    fn decode(block: &[u8]) -> Block32;
    /// `x` holds one block (32 values); `block` its bytes.
    fn encode(x: &[f32], block: &mut [u8]);
    /// `dot_rows` with this machine's SIMD kernels, if this format has them; returns whether they ran (else
    /// the caller runs the scalar twin). `vec_dot` is this with one row and one token, so both share one path.
    fn dot_rows_simd(_n: usize, _w: &[u8], _rows: usize, _acts: &[u8], _n_tokens: usize, _out: &mut [f32]) -> bool {
        false
    }
    /// A SIMD row decoder for this machine, if this format has one; returns whether it ran.
    fn dequantize_simd(_src: &[u8], _dst: &mut [f32]) -> bool {
        false
    }
    /// A SIMD row encoder for this machine producing the same bytes as `encode`; returns whether it ran.
    fn quantize_simd(_src: &[f32], _dst: &mut [u8]) -> bool {
        false
    }
}

/// A 32-element block format as a [`QuantFormat`].
pub(crate) struct Legacy<C>(pub(crate) PhantomData<C>);

pub(crate) static Q4_0_FORMAT: Legacy<Q4_0> = Legacy(PhantomData);
pub(crate) static Q4_1_FORMAT: Legacy<Q4_1> = Legacy(PhantomData);
pub(crate) static Q5_0_FORMAT: Legacy<Q5_0> = Legacy(PhantomData);
pub(crate) static Q5_1_FORMAT: Legacy<Q5_1> = Legacy(PhantomData);
pub(crate) static Q8_0_FORMAT: Legacy<Q8_0> = Legacy(PhantomData);
pub(crate) static Q8_1_FORMAT: Legacy<Q8_1> = Legacy(PhantomData);

impl<C: LegacyCodec> QuantFormat for Legacy<C> {
    fn ggml_type(&self) -> GgmlType {
        C::TY
    }

    fn vec_dot_type(&self) -> GgmlType {
        C::ACT
    }

    fn dequantize_row(&self, src: &[u8], dst: &mut [f32]) {
        assert_dequantize_lengths(C::TY, src, dst);
        if !C::dequantize_simd(src, dst) {
            dequantize_scalar::<C>(src, dst);
        }
    }

    fn quantize_row(&self, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
        check_quantize_lengths(C::TY, src, dst)?;
        if !C::quantize_simd(src, dst) {
            quantize_scalar::<C>(src, dst);
        }
        Ok(())
    }

    fn vec_dot(&self, n: usize, w: &[u8], act: &[u8]) -> f32 {
        assert_dot_lengths(C::TY, C::ACT, n, w, act);
        let mut out = [0.0f32];
        if C::dot_rows_simd(n, w, 1, act, 1, &mut out) {
            out[0]
        } else {
            dot_scalar::<C>(w, act)
        }
    }

    fn dot_rows(&self, n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) {
        if !C::dot_rows_simd(n, w, rows, acts, n_tokens, out) {
            dot_rows_scalar::<C>(n, w, rows, acts, n_tokens, out);
        }
    }
}

/// Scalar `dot_rows` (the twin of the tiled kernels): [`dot_scalar`] for every pair. Panics unless the slices
/// hold exactly `rows` weight rows, `n_tokens` activation rows and `rows * n_tokens` outputs (caller contract).
pub(crate) fn dot_rows_scalar<C: LegacyCodec>(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) {
    let strides = C::TY.row_bytes(n).zip(C::ACT.row_bytes(n));
    let fits = |(ws, a): (usize, usize)| {
        Some(w.len()) == ws.checked_mul(rows)
            && Some(acts.len()) == a.checked_mul(n_tokens)
            && Some(out.len()) == rows.checked_mul(n_tokens)
    };
    let (w_stride, a_stride) = match strides {
        Some(st) if fits(st) => st,
        _ => panic!(
            "dot_rows {}x{} of {n} elements: {rows} rows in {} bytes, {n_tokens} tokens in {} bytes, {} outputs",
            C::TY,
            C::ACT,
            w.len(),
            acts.len(),
            out.len()
        ),
    };
    if n == 0 {
        out.fill(0.0); // every dot is an empty sum
        return;
    }
    for (r, wr) in w.chunks_exact(w_stride).enumerate() {
        for (t, a) in acts.chunks_exact(a_stride).enumerate() {
            out[r * n_tokens + t] = dot_scalar::<C>(wr, a);
        }
    }
}

/// The tiled SIMD kernels at this machine's level ([`TileLevel::best`](crate::x86::legacy_tiles::TileLevel));
/// false when the level is scalar.
#[cfg(target_arch = "x86_64")]
pub(crate) fn tiled_dot_rows<C: crate::x86::legacy_tiles::TiledBlock>(
    n: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) -> bool {
    use crate::x86::legacy_tiles::{dot_rows, TileLevel};
    match TileLevel::best() {
        Some(level) => {
            // SAFETY: `best` only returns levels whose features the CPU reports; `dot_rows` checks lengths.
            unsafe { dot_rows::<C>(level, n, w, rows, acts, n_tokens, out) };
            true
        }
        None => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn tiled_dot_rows<C>(
    _n: usize,
    _w: &[u8],
    _rows: usize,
    _acts: &[u8],
    _n_tokens: usize,
    _out: &mut [f32],
) -> bool {
    false
}

/// Scalar decoder (the twin of any SIMD decoder).
pub(crate) fn dequantize_scalar<C: LegacyCodec>(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(C::TY.type_size()).zip(dst.chunks_exact_mut(QK)) {
        let b = C::decode(block);
        for (o, &q) in out.iter_mut().zip(b.q.iter()) {
            *o = if C::AFFINE { q as f32 * b.d + b.m } else { q as f32 * b.d };
        }
    }
}

/// Scalar encoder (the twin of any SIMD encoder).
pub(crate) fn quantize_scalar<C: LegacyCodec>(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(C::TY.type_size())) {
        C::encode(x, block);
    }
}

/// Scalar dot product with activations in `C::ACT` (the twin of every SIMD dot): per block the integer sum of
/// products, scaled by both block scales, plus `m * s` for the offset formats (ggml's formula).
pub(crate) fn dot_scalar<C: LegacyCodec>(w: &[u8], act: &[u8]) -> f32 {
    let act_bytes = C::ACT.type_size();
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(C::TY.type_size()).zip(act.chunks_exact(act_bytes)) {
        let wq = C::decode(wb);
        let aq = decode_act(C::ACT, ab);
        let isum: i32 = wq.q.iter().zip(aq.q.iter()).map(|(&x, &y)| x as i32 * y as i32).sum();
        sum += (wq.d * aq.d) * isum as f32 + wq.m * aq.s;
    }
    sum
}

/// Decodes a Q8_0 or Q8_1 activation block.
pub(crate) fn decode_act(act_ty: GgmlType, block: &[u8]) -> ActBlock32 {
    let (s, qs) = match act_ty {
        GgmlType::Q8_1 => (f16_le(&block[2..]), &block[4..4 + QK]),
        _ => (0.0, &block[2..2 + QK]),
    };
    ActBlock32 { q: i8_array(qs), d: f16_le(block), s }
}

fn i8_array(bytes: &[u8]) -> [i8; QK] {
    let mut q = [0i8; QK];
    for (d, &b) in q.iter_mut().zip(bytes) {
        *d = b as i8;
    }
    q
}

/// Splits 16 packed bytes into the 32 nibbles they hold, in element order.
fn unpack_nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0f;
        q[j + QK / 2] = qs[j] >> 4;
    }
    q
}

/// Packs the low nibbles of 32 quants into 16 bytes (element j low, j + 16 high).
fn pack_nibbles(q: &[u8; QK], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4);
    }
}

/// Bit 4 of each of 32 quants, as the 5-bit formats store it.
fn pack_high_bits(q: &[u8; QK]) -> u32 {
    q.iter().enumerate().fold(0u32, |acc, (j, &v)| acc | (((v as u32 >> 4) & 1) << j))
}

fn u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// 5-bit quants from nibbles and the `qh` bit plane.
fn unpack_5bit(qs: &[u8], qh: u32) -> [u8; QK] {
    let mut q = unpack_nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) << 4) as u8;
    }
    q
}

/// Symmetric quantization as ggml's Q4_0/Q5_0 reference does it: the signed value of largest magnitude maps to
/// `-half_levels`, quants are `trunc(x/d + (half_levels + 0.5))` clamped to `2*half_levels - 1`: one addition of
/// `8.5`/`16.5`, as ggml's `x0 + 8.5f`, since adding `half_levels` then `0.5` rounds twice and can truncate to a
/// different quant.
fn quantize_symmetric(x: &[f32], half_levels: f32) -> (f32, [u8; QK]) {
    let (_, max) = largest_magnitude(x.iter().copied());
    let d = max / -half_levels;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let top = (2.0 * half_levels) as i32 - 1;
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = ((v * id + (half_levels + 0.5)) as i8 as i32).min(top) as u8;
    }
    (d, q)
}

/// Affine quantization as ggml's Q4_1/Q5_1 reference does it: `min` maps to 0, `max` to `top`.
fn quantize_affine(x: &[f32], top: u8) -> (f32, f32, [u8; QK]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / top as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (((v - min) * id + 0.5) as u8).min(top);
    }
    (d, min, q)
}

/// The Q8_0/Q8_1 reference rule: `d = amax / 127`, `q = roundf(x / d)` (ties away from zero). Returns `d` in f32.
pub(crate) fn quantize_q8(x: &[f32], qs: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (o, &v) in qs.iter_mut().zip(x) {
        *o = round_away(v * id) as i8 as u8;
    }
    d
}

#[allow(non_camel_case_types)]
pub(crate) struct Q4_0;
impl LegacyCodec for Q4_0 {
    const TY: GgmlType = GgmlType::Q4_0;
    const ACT: GgmlType = GgmlType::Q8_0;
    fn decode(b: &[u8]) -> Block32 {
        let mut q = [0i8; QK];
        for (o, v) in q.iter_mut().zip(unpack_nibbles(&b[2..18])) {
            *o = v as i8 - 8;
        }
        Block32 { q, d: f16_le(b), m: 0.0 }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let (d, q) = quantize_symmetric(x, 8.0);
        put_f16_le(b, d);
        pack_nibbles(&q, &mut b[2..18]);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        tiled_dot_rows::<Self>(n, w, rows, acts, n_tokens, out)
    }
}

#[allow(non_camel_case_types)]
pub(crate) struct Q4_1;
impl LegacyCodec for Q4_1 {
    const TY: GgmlType = GgmlType::Q4_1;
    const AFFINE: bool = true;
    const ACT: GgmlType = GgmlType::Q8_1;
    fn decode(b: &[u8]) -> Block32 {
        let mut q = [0i8; QK];
        for (o, v) in q.iter_mut().zip(unpack_nibbles(&b[4..20])) {
            *o = v as i8;
        }
        Block32 { q, d: f16_le(b), m: f16_le(&b[2..]) }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let (d, min, q) = quantize_affine(x, 15);
        put_f16_le(b, d);
        put_f16_le(&mut b[2..], min);
        pack_nibbles(&q, &mut b[4..20]);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        tiled_dot_rows::<Self>(n, w, rows, acts, n_tokens, out)
    }
}

#[allow(non_camel_case_types)]
pub(crate) struct Q5_0;
impl LegacyCodec for Q5_0 {
    const TY: GgmlType = GgmlType::Q5_0;
    const ACT: GgmlType = GgmlType::Q8_0;
    fn decode(b: &[u8]) -> Block32 {
        let mut q = [0i8; QK];
        for (o, v) in q.iter_mut().zip(unpack_5bit(&b[6..22], u32_le(&b[2..]))) {
            *o = v as i8 - 16;
        }
        Block32 { q, d: f16_le(b), m: 0.0 }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let (d, q) = quantize_symmetric(x, 16.0);
        put_f16_le(b, d);
        b[2..6].copy_from_slice(&pack_high_bits(&q).to_le_bytes());
        pack_nibbles(&q, &mut b[6..22]);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        tiled_dot_rows::<Self>(n, w, rows, acts, n_tokens, out)
    }
}

#[allow(non_camel_case_types)]
pub(crate) struct Q5_1;
impl LegacyCodec for Q5_1 {
    const TY: GgmlType = GgmlType::Q5_1;
    const AFFINE: bool = true;
    const ACT: GgmlType = GgmlType::Q8_1;
    fn decode(b: &[u8]) -> Block32 {
        let mut q = [0i8; QK];
        for (o, v) in q.iter_mut().zip(unpack_5bit(&b[8..24], u32_le(&b[4..]))) {
            *o = v as i8;
        }
        Block32 { q, d: f16_le(b), m: f16_le(&b[2..]) }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let (d, min, q) = quantize_affine(x, 31);
        put_f16_le(b, d);
        put_f16_le(&mut b[2..], min);
        b[4..8].copy_from_slice(&pack_high_bits(&q).to_le_bytes());
        pack_nibbles(&q, &mut b[8..24]);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        tiled_dot_rows::<Self>(n, w, rows, acts, n_tokens, out)
    }
}

#[allow(non_camel_case_types)]
pub(crate) struct Q8_0;
impl LegacyCodec for Q8_0 {
    const TY: GgmlType = GgmlType::Q8_0;
    const ACT: GgmlType = GgmlType::Q8_0;
    fn decode(b: &[u8]) -> Block32 {
        Block32 { q: i8_array(&b[2..34]), d: f16_le(b), m: 0.0 }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let d = quantize_q8(x, &mut b[2..34]);
        put_f16_le(b, d);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        tiled_dot_rows::<Self>(n, w, rows, acts, n_tokens, out)
    }
    fn dequantize_simd(src: &[u8], dst: &mut [f32]) -> bool {
        crate::x86_dispatch!(activations::dequantize_q8_0(src, dst)).is_some()
    }
    fn quantize_simd(src: &[f32], dst: &mut [u8]) -> bool {
        crate::x86_dispatch!(activations::quantize_q8_0(src, dst)).is_some()
    }
}

/// Q8_1 is an activation format (the partner of Q4_1/Q5_1); as a "weight" it dots with itself, scalar only.
#[allow(non_camel_case_types)]
pub(crate) struct Q8_1;
impl LegacyCodec for Q8_1 {
    const TY: GgmlType = GgmlType::Q8_1;
    const ACT: GgmlType = GgmlType::Q8_1;
    fn decode(b: &[u8]) -> Block32 {
        Block32 { q: i8_array(&b[4..36]), d: f16_le(b), m: 0.0 }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        let d = quantize_q8(x, &mut b[4..36]);
        let sum: i32 = b[4..36].iter().map(|&q| q as i8 as i32).sum();
        put_f16_le(b, d);
        put_f16_le(&mut b[2..], sum as f32 * d);
    }
    fn quantize_simd(src: &[f32], dst: &mut [u8]) -> bool {
        crate::x86_dispatch!(activations::quantize_q8_1(src, dst)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant_format;
    use crate::test_data::{assert_close, dequant, f16_bytes, quant, TestRng};

    #[test]
    fn q4_0_hand_built_block() {
        let mut b = Vec::from(f16_bytes(0.5));
        // element j = j % 16 in the low nibble, 15 - j in the high nibble
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequant(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(v[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(v[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_hand_built_block() {
        let mut b = Vec::from(f16_bytes(0.25));
        b.extend(f16_bytes(-1.0));
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let v = dequant(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(v[j], j as f32 * 0.25 - 1.0);
            assert_eq!(v[j + 16], 3.0 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q5_0_hand_built_block() {
        let mut b = Vec::from(f16_bytes(2.0));
        // high bit set for elements 1, 3 (low half) and 16 + 2 (high half)
        let qh: u32 = (1 << 1) | (1 << 3) | (1 << 18);
        b.extend(qh.to_le_bytes());
        b.extend((0..16u8).map(|j| j | (5 << 4)));
        let v = dequant(GgmlType::Q5_0, &b);
        for j in 0..16 {
            let hi_lo = if j == 1 || j == 3 { 16 } else { 0 };
            assert_eq!(v[j], ((j as i32 | hi_lo) - 16) as f32 * 2.0, "element {j}");
            let hi_hi = if j == 2 { 16 } else { 0 };
            assert_eq!(v[j + 16], ((5 | hi_hi) - 16) as f32 * 2.0, "element {}", j + 16);
        }
    }

    #[test]
    fn q5_1_hand_built_block() {
        let mut b = Vec::from(f16_bytes(0.5));
        b.extend(f16_bytes(3.0));
        let qh: u32 = 0x8000_0001; // elements 0 and 31
        b.extend(qh.to_le_bytes());
        b.extend((0..16u8).map(|j| (15 - j) | (j << 4)));
        let v = dequant(GgmlType::Q5_1, &b);
        assert_eq!(v[0], (15 + 16) as f32 * 0.5 + 3.0);
        assert_eq!(v[1], 14.0 * 0.5 + 3.0);
        assert_eq!(v[16], 3.0);
        assert_eq!(v[31], (15 + 16) as f32 * 0.5 + 3.0);
        assert_eq!(v[30], 14.0 * 0.5 + 3.0);
    }

    #[test]
    fn q8_0_and_q8_1_hand_built_blocks() {
        let mut b = Vec::from(f16_bytes(0.125));
        b.extend((0..32i32).map(|j| (j * 8 - 127) as i8 as u8));
        let v = dequant(GgmlType::Q8_0, &b);
        for (j, &x) in v.iter().enumerate() {
            assert_eq!(x, (j as f32 * 8.0 - 127.0) * 0.125);
        }
        let mut b1 = Vec::from(f16_bytes(0.125));
        b1.extend(f16_bytes(99.0)); // s is not part of the value
        b1.extend_from_slice(&b[2..]);
        assert_eq!(dequant(GgmlType::Q8_1, &b1), v);
    }

    #[test]
    fn q8_quantizers_match_the_reference_rule() {
        // amax 127 gives d = 1 exactly, so rounding of x / d is visible: 2.5 -> 3, -0.5 -> -1 (ties away).
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -0.5;
        x[3] = 0.49;
        x[4] = -126.5;
        let b = quant(GgmlType::Q8_0, &x);
        assert_eq!(&b[..2], &f16_bytes(1.0));
        assert_eq!(&b[2..7], &[127u8, 3, (-1i8) as u8, 0, (-127i8) as u8]);
        let b1 = quant(GgmlType::Q8_1, &x);
        let sum = 127 + 3 - 1 - 127;
        assert_eq!(&b1[2..4], &f16_bytes(sum as f32));
        assert_eq!(&b1[4..36], &b[2..34]);
    }

    #[test]
    fn q4_0_encoder_matches_the_reference_rule() {
        // max-magnitude value -8 gives d = 1: quants are trunc(x + 8.5) clamped to 15.
        let mut x = [0.0f32; 32];
        x[0] = -8.0;
        x[1] = 7.9;
        x[2] = 1.5; // 10.0 -> 10
        x[3] = 1.49; // 9.99 -> 9
        x[16] = -0.5; // 8.0 -> 8
        let b = quant(GgmlType::Q4_0, &x);
        assert_eq!(&b[..2], &f16_bytes(1.0));
        let q: Vec<u8> = unpack_nibbles(&b[2..18]).to_vec();
        assert_eq!(&q[..4], &[0, 15, 10, 9]);
        assert_eq!(q[16], 8);
        assert_eq!(q[5], 8);
    }

    /// Largest error of a round trip per block, against `bound(block)`.
    fn check_round_trip(ty: GgmlType, bound: impl Fn(&[f32]) -> f32) {
        let mut rng = TestRng::new(ty.id() as u64 + 1);
        for _ in 0..20 {
            let x = rng.row(32 * 16);
            let y = dequant(ty, &quant(ty, &x));
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let b = bound(xb);
                for (a, c) in xb.iter().zip(yb) {
                    assert!((a - c).abs() <= b, "{ty}: {a} -> {c}, error above {b}");
                }
            }
        }
        // an all-zero block stays zero
        assert!(dequant(ty, &quant(ty, &[0.0; 32])).iter().all(|&v| v == 0.0));
    }

    fn amax(x: &[f32]) -> f32 {
        x.iter().fold(0.0, |a, &v| a.max(v.abs()))
    }

    fn range(x: &[f32]) -> (f32, f32) {
        let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = x.iter().fold(f32::MIN, |a, &v| a.max(v));
        (max - min, min.abs().max(max.abs()))
    }

    // Bounds: half a step, except the symmetric formats lose one full step at the extreme opposite their
    // signed max (q is clamped to 2^bits - 1), plus the f16 rounding of d (and m).
    #[test]
    fn q4_0_round_trip() {
        check_round_trip(GgmlType::Q4_0, |x| amax(x) * (1.0 / 8.0 + 1.0 / 1024.0));
    }
    #[test]
    fn q5_0_round_trip() {
        check_round_trip(GgmlType::Q5_0, |x| amax(x) * (1.0 / 16.0 + 1.0 / 1024.0));
    }
    #[test]
    fn q8_0_round_trip() {
        check_round_trip(GgmlType::Q8_0, |x| amax(x) * (0.5 / 127.0 + 1.0 / 1024.0));
    }
    #[test]
    fn q8_1_round_trip() {
        check_round_trip(GgmlType::Q8_1, |x| amax(x) * (0.5 / 127.0 + 1.0 / 1024.0));
    }
    #[test]
    fn q4_1_round_trip() {
        check_round_trip(GgmlType::Q4_1, |x| {
            let (r, m) = range(x);
            r * (0.5 / 15.0 + 1.0 / 1024.0) + m / 1024.0
        });
    }
    #[test]
    fn q5_1_round_trip() {
        check_round_trip(GgmlType::Q5_1, |x| {
            let (r, m) = range(x);
            r * (0.5 / 31.0 + 1.0 / 1024.0) + m / 1024.0
        });
    }

    /// vec_dot(w, quantize(x)) against the f32 dots of the decoded rows: exact formula (decoded activations) to
    /// float rounding, and the true dot within the activation quantization error.
    fn check_vec_dot(ty: GgmlType) {
        let f = quant_format(ty).unwrap();
        let act_ty = f.vec_dot_type();
        let mut rng = TestRng::new(100 + ty.id() as u64);
        for n in [32, 64, 640, 2048] {
            let w = quant(ty, &rng.row(n));
            let x = rng.row(n);
            let a = quant(act_ty, &x);
            let (wd, ad) = (dequant(ty, &w), dequant(act_ty, &a));
            let got = f.vec_dot(n, &w, &a);

            let exact: f64 = wd.iter().zip(&ad).map(|(&p, &q)| p as f64 * q as f64).sum();
            let abs: f64 = wd.iter().zip(&ad).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
            // Q8_1 carries s = d * sum(q) rounded to f16; the offset formats multiply it by m.
            // (2^-10 covers rounding s to f16 and using the f32 d for it where the decode uses the f16 d)
            let s_err: f64 = w
                .chunks(ty.type_size())
                .zip(ad.chunks(32))
                .map(|(wb, ac)| {
                    let s: f64 = ac.iter().map(|&v| v as f64).sum();
                    (offset_of(ty, wb) as f64 * s).abs() / 1024.0
                })
                .sum();
            assert_close(got, exact as f32, 1.0, (2e-6 * abs + s_err) as f32 + 1e-30, &format!("{ty} n={n} formula"));

            let truth: f64 = wd.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
            // per element the activation error is at most its block's step (amax/127) over 2, plus f16 of d
            let act_err: f64 = wd
                .chunks(32)
                .zip(x.chunks(32))
                .map(|(wc, xc)| {
                    let step = amax(xc) as f64 * (0.5 / 127.0 + 1.0 / 1024.0);
                    wc.iter().map(|v| v.abs() as f64).sum::<f64>() * step
                })
                .sum();
            assert_close(got, truth as f32, 1.0, (act_err + s_err + 1e-5 * abs) as f32, &format!("{ty} n={n} truth"));
        }
    }

    /// The offset `m` of an offset-format block (0 for the symmetric ones).
    fn offset_of(ty: GgmlType, b: &[u8]) -> f32 {
        match ty {
            GgmlType::Q4_1 => Q4_1::decode(b).m,
            GgmlType::Q5_1 => Q5_1::decode(b).m,
            _ => 0.0,
        }
    }

    #[test]
    fn vec_dot_q4_0() {
        check_vec_dot(GgmlType::Q4_0);
    }
    #[test]
    fn vec_dot_q4_1() {
        check_vec_dot(GgmlType::Q4_1);
    }
    #[test]
    fn vec_dot_q5_0() {
        check_vec_dot(GgmlType::Q5_0);
    }
    #[test]
    fn vec_dot_q5_1() {
        check_vec_dot(GgmlType::Q5_1);
    }
    #[test]
    fn vec_dot_q8_0() {
        check_vec_dot(GgmlType::Q8_0);
    }
    #[test]
    fn vec_dot_q8_1() {
        check_vec_dot(GgmlType::Q8_1);
    }

    #[test]
    fn scalar_dot_is_ggml_formula_on_hand_built_blocks() {
        // Q4_1 block: d = 0.5, m = -2, all quants 3 -> values -0.5; Q8_1 block: d = 0.25, q = 4, s = 0.25*128.
        let mut w = Vec::from(f16_bytes(0.5));
        w.extend(f16_bytes(-2.0));
        w.extend([0x33u8; 16]);
        let mut a = Vec::from(f16_bytes(0.25));
        a.extend(f16_bytes(32.0));
        a.extend([4u8; 32]);
        // sum over 32 of (-0.5 * 1.0) = -16
        assert_eq!(dot_scalar::<Q4_1>(&w, &a), -16.0);
        assert_eq!(Q4_1_FORMAT.vec_dot(32, &w, &a), -16.0);
    }
}
