//! llama.cpp's non-linear 4-bit "i-quants" IQ4_NL and IQ4_XS (byte layouts of ggml-common.h).
//!
//! Both store 4-bit indices into one fixed table of 16 signed values ([`KVALUES`], denser near zero, where
//! weights are), so a block decodes to 8-bit integers `q` and a scale, like the linear formats:
//! - IQ4_NL: 32 elements, `d: f16`, `qs[16]` (element `j` in the low nibble of `qs[j]`, `j + 16` in the high
//!   one), value `d * q`. Dots take Q8_0 activations, as in ggml, and it runs on the Q4_0 tiles
//!   ([`crate::q_legacy`]).
//! - IQ4_XS: 256-element super-blocks, `d: f16`, `scales_h: u16`, `scales_l[4]`, `qs[128]`; eight 32-element
//!   sub-blocks, each with a 6-bit scale `ls` (low 4 bits in nibble `ib % 2` of `scales_l[ib / 2]`, high 2 bits
//!   at bit `2 * ib` of `scales_h`), value `d * (ls - 32) * q`; sub-block `ib` keeps its 32 indices in
//!   `qs[16 * ib..16 * ib + 16]` as IQ4_NL does. Dots take Q8_K activations, as in ggml, on the k-quant tiles
//!   ([`crate::k_quants`]).
//!
//! The encoders reproduce llama.cpp's `quantize_iq4_nl` / `quantize_iq4_xs` (what `llama-quantize` writes):
//! per 32 elements a weighted least-squares scale, searched over 15 starting scales. Without an importance
//! matrix an element weighs `x^2`; with one ([`encode_nl`] / [`encode_xs`] given the importances, through
//! [`crate::weighted`]) it weighs its column's importance times `sqrt(sigma2 + x^2)`.

use crate::k_quants::{Block256, KCodec, QK_K};
use crate::q_legacy::{Block32, LegacyCodec, QK};
use crate::rounding::{largest_magnitude, nearest_int};
use crate::{f16_le, put_f16_le, GgmlType};

/// ggml's `kvalues_iq4nl`: the value of each 4-bit index.
pub(crate) const KVALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Bytes of an IQ4_XS super-block: d, scales_h, scales_l[4], qs[128].
const XS_BYTES: usize = 136;
/// How many scales either side of the first guess the encoder tries (ggml's `ntry` in `quantize_iq4_nl` and
/// `quantize_iq4_xs`).
const NTRY: i32 = 7;
/// Smallest group maximum treated as non-zero (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// The 32 table values of the 16 index bytes at `qs`, in element order.
fn lookup_32(qs: &[u8]) -> [i8; QK] {
    let mut q = [0i8; QK];
    for j in 0..QK / 2 {
        q[j] = KVALUES[(qs[j] & 0x0f) as usize];
        q[j + QK / 2] = KVALUES[(qs[j] >> 4) as usize];
    }
    q
}

/// Packs 32 indices as IQ4_NL and each IQ4_XS sub-block store them.
fn pack_32(l: &[u8], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = l[j] | (l[j + QK / 2] << 4);
    }
}

/// `UPPER[i]` = how many table values are <= `i - 127`, for `i` in 0..=240: for `x` strictly inside the table's
/// range, `UPPER[floor(x) + 127]` is the first index whose value exceeds `x` (the values are integers).
const UPPER: [u8; 241] = {
    let mut t = [0u8; 241];
    let mut i = 0;
    while i < 241 {
        let mut c = 0;
        while c < 16 && KVALUES[c] as i32 <= i as i32 - 127 {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

/// The index whose table value is nearest to `x`, as ggml's `best_index_int8` picks it: its binary search
/// finds the first value above `x` (here a table lookup on `floor(x)`, the encoders' hot spot), then the lower
/// neighbour wins only when `x - lower < upper - x` in f32.
fn best_index(x: f32) -> u8 {
    let v = |i: usize| KVALUES[i] as f32;
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) || x.is_nan() {
        // (ggml's search compares NaN false all the way and ends at the top)
        return 15;
    }
    // -127 < x < 113: floor(x) + 127 is in 0..=239
    // floor by truncation (f32::floor is a libm call without SSE4.1)
    let t = x as i32;
    let floor = if t as f32 > x { t - 1 } else { t };
    let hi = UPPER.get((floor + 127) as usize).map_or(15, |&h| h as usize);
    if x - v(hi - 1) < v(hi) - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// `(sum w*q*x, sum w*q*q)` with `q` the table value nearest to `id * x`, in ggml's order of float operations.
fn weighted_sums(xb: &[f32], w: &[f32; QK], id: f32) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for (&x, &w) in xb.iter().zip(w) {
        let q = KVALUES[best_index(id * x) as usize] as f32;
        sumqx += w * q * x;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The weights of the scale search: `x^2` without an importance matrix; with one, the column's importance
/// `qw` times `sqrt(sigma2 + x^2)`, `sigma2` twice the mean square of the whole block (32 elements for IQ4_NL,
/// the 256-element super-block for IQ4_XS), as `quantize_row_iq4_nl_impl` weighs them.
fn search_weights(xb: &[f32], importance: Option<(&[f32], f32)>) -> [f32; QK] {
    let mut w = [0.0f32; QK];
    match importance {
        None => w.iter_mut().zip(xb).for_each(|(w, &x)| *w = x * x),
        Some((qw, sigma2)) => {
            for ((w, &x), &q) in w.iter_mut().zip(xb).zip(qw) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
    }
    w
}

/// `sigma2` of [`search_weights`]: `2 / n` times the sum of squares of the `n` elements of the block.
fn sigma2(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |s, &v| s + v * v) * (2.0 / x.len() as f32)
}

/// The scale of one 32-element group: a least-squares fit (weighted by `w`) from the scale that maps the
/// group's signed maximum to +127, then the best of 15 fits starting from the scales that map it to
/// `-127 + k`, `k = -7..=7` (ggml's per-block search in `quantize_row_iq4_nl_impl`). 0 for a group of (near)
/// zeros.
fn group_scale(xb: &[f32], w: &[f32; QK]) -> f32 {
    let (amax, max) = largest_magnitude(xb.iter().copied());
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let first = -max / KVALUES[0] as f32;
    let (sumqx, sumq2) = weighted_sums(xb, w, 1.0 / first);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + KVALUES[0] as i32) as f32 / max;
        let (sumqx, sumq2) = weighted_sums(xb, w, id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Indices of `xb` at scale `d` (all 8, the index of the value nearest 0, when `d` is 0).
fn indices(xb: &[f32], d: f32, l: &mut [u8]) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (o, &x) in l.iter_mut().zip(xb) {
        *o = best_index(id * x);
    }
}

/// One IQ4_NL block of 32 elements (`quantize_row_iq4_nl_impl` with a block of 32), weighted by the 32
/// `importance` values if given.
pub(crate) fn encode_nl(x: &[f32], importance: Option<&[f32]>, b: &mut [u8]) {
    let w = search_weights(x, importance.map(|qw| (qw, sigma2(x))));
    let d = group_scale(x, &w);
    put_f16_le(b, d);
    // the indices come from the unrounded f32 scale, as in ggml
    let mut l = [0u8; QK];
    indices(x, d, &mut l);
    pack_32(&l, &mut b[2..18]);
}

/// One IQ4_XS super-block of 256 elements (`quantize_row_iq4_nl_impl` with super-blocks of 256), weighted by
/// the 256 `importance` values if given.
pub(crate) fn encode_xs(x: &[f32], importance: Option<&[f32]>, b: &mut [u8]) {
    let b = &mut b[..XS_BYTES];
    // sigma2 is the whole super-block's
    let importance = importance.map(|qw| (qw, sigma2(x)));
    let mut scales = [0.0f32; QK_K / QK];
    for (ib, (s, xb)) in scales.iter_mut().zip(x.chunks_exact(QK)).enumerate() {
        let qw = importance.map(|(qw, s2)| (&qw[QK * ib..QK * (ib + 1)], s2));
        *s = group_scale(xb, &search_weights(xb, qw));
    }
    let (_, max_scale) = largest_magnitude(scales);
    // the largest sub-block scale maps to -32; an all-zero block stores d = -0.0, as ggml does
    let d = -max_scale / 32.0;
    put_f16_le(b, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let (scales_l, qs) = b[4..].split_at_mut(4);
    for (ib, (&s, xb)) in scales.iter().zip(x.chunks_exact(QK)).enumerate() {
        let ls = nearest_int(id * s).clamp(-32, 31);
        // indices from the unrounded f32 super-scale times the integer sub-block scale, as in ggml
        let mut l = [0u8; QK];
        indices(xb, d * ls as f32, &mut l);
        pack_32(&l, &mut qs[16 * ib..16 * ib + 16]);
        let stored = (ls + 32) as u8;
        if ib % 2 == 0 {
            scales_l[ib / 2] = stored & 0x0f;
        } else {
            scales_l[ib / 2] |= (stored & 0x0f) << 4;
        }
        scales_h |= ((stored >> 4) as u16) << (2 * ib);
    }
    b[2..4].copy_from_slice(&scales_h.to_le_bytes());
}

/// IQ4_NL: `d: f16`, `qs[16]`.
#[allow(non_camel_case_types)]
pub(crate) struct IQ4_NL;
impl LegacyCodec for IQ4_NL {
    const TY: GgmlType = GgmlType::IQ4_NL;
    const ACT: GgmlType = GgmlType::Q8_0;
    fn decode(b: &[u8]) -> Block32 {
        Block32 { q: lookup_32(&b[2..18]), d: f16_le(b), m: 0.0 }
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        encode_nl(x, None, b);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        crate::q_legacy::tiled_dot_rows::<Self>(n, w, rows, acts, n_tokens, out)
    }
}

/// The 6-bit scale (0..=63, stored `+ 32`) of sub-block `ib` of the IQ4_XS block `b`.
pub(crate) fn xs_scale(b: &[u8], ib: usize) -> u8 {
    let h = u16::from_le_bytes([b[2], b[3]]);
    ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f) | ((((h >> (2 * ib)) & 3) as u8) << 4)
}

/// IQ4_XS: `d: f16`, `scales_h: u16`, `scales_l[4]`, `qs[128]`.
#[allow(non_camel_case_types)]
pub(crate) struct IQ4_XS;
impl KCodec for IQ4_XS {
    const TY: GgmlType = GgmlType::IQ4_XS;
    fn decode(b: &[u8]) -> Block256 {
        let mut out = Block256 { q: [0; QK_K], scale: [0; 16], min: [0; 16], n_sub: 8, d: f16_le(b), dmin: 0.0 };
        for ib in 0..QK_K / QK {
            out.scale[ib] = xs_scale(b, ib) as i16 - 32;
            out.q[QK * ib..QK * (ib + 1)].copy_from_slice(&lookup_32(&b[8 + 16 * ib..]));
        }
        out
    }
    fn encode(x: &[f32], b: &mut [u8]) {
        encode_xs(x, None, b);
    }
    fn dot_rows_simd(n: usize, w: &[u8], rows: usize, acts: &[u8], n_tokens: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::iq4 as k;
            crate::k_quants::dispatch_dot_rows(
                k::dot_rows_iq4_xs_avx512,
                k::dot_rows_iq4_xs_avx2,
                (n, w, rows, acts, n_tokens, out),
            )
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, w, rows, acts, n_tokens, out);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant_format;
    use crate::test_data::{assert_close, dequant, f16_bytes, quant, TestRng};

    /// ggml's `dequantize_row_iq4_nl`, written out from its definition: `d * kvalues[nibble]`.
    fn ggml_dequant_nl(b: &[u8]) -> Vec<f32> {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut y = vec![0.0; 32];
        for j in 0..16 {
            y[j] = d * KVALUES[(b[2 + j] & 0xf) as usize] as f32;
            y[j + 16] = d * KVALUES[(b[2 + j] >> 4) as usize] as f32;
        }
        y
    }

    /// ggml's `dequantize_row_iq4_xs`: `dl = d * (ls - 32)`, then `dl * kvalues[nibble]`.
    fn ggml_dequant_xs(b: &[u8]) -> Vec<f32> {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        let mut y = vec![0.0; 256];
        for ib in 0..8 {
            let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32 | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
            let dl = d * (ls - 32) as f32;
            for j in 0..16 {
                let q = b[8 + 16 * ib + j];
                y[32 * ib + j] = dl * KVALUES[(q & 0xf) as usize] as f32;
                y[32 * ib + j + 16] = dl * KVALUES[(q >> 4) as usize] as f32;
            }
        }
        y
    }

    #[test]
    fn iq4_nl_hand_built_block() {
        let mut b = Vec::from(f16_bytes(0.5));
        // element j: index j (low nibble); element j + 16: index 15 - j (high nibble)
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequant(GgmlType::IQ4_NL, &b);
        for j in 0..16 {
            assert_eq!(v[j], KVALUES[j] as f32 * 0.5);
            assert_eq!(v[j + 16], KVALUES[15 - j] as f32 * 0.5);
        }
        assert_eq!(v[0], -63.5);
        assert_eq!(v[16], 56.5);
    }

    #[test]
    fn iq4_xs_hand_built_block() {
        let mut b = Vec::from(f16_bytes(0.25));
        // stored scales 0, 1, 31, 32, 33, 40, 63, 17: low nibbles in scales_l, high 2 bits in scales_h
        let stored = [0u8, 1, 31, 32, 33, 40, 63, 17];
        let h: u16 = stored.iter().enumerate().map(|(i, &s)| ((s >> 4) as u16) << (2 * i)).sum();
        b.extend(h.to_le_bytes());
        for p in 0..4 {
            b.push((stored[2 * p] & 0xf) | ((stored[2 * p + 1] & 0xf) << 4));
        }
        for ib in 0..8u8 {
            b.extend((0..16u8).map(|j| ((j + ib) & 0xf) | (((15 - j) & 0xf) << 4)));
        }
        assert_eq!(b.len(), 136);
        let v = dequant(GgmlType::IQ4_XS, &b);
        for (ib, &s) in stored.iter().enumerate() {
            assert_eq!(xs_scale(&b, ib), s);
            let dl = 0.25 * (s as f32 - 32.0);
            for j in 0..16 {
                assert_eq!(v[32 * ib + j], dl * KVALUES[(j + ib) % 16] as f32, "sub-block {ib} element {j}");
                assert_eq!(v[32 * ib + 16 + j], dl * KVALUES[15 - j] as f32, "sub-block {ib} element {}", 16 + j);
            }
        }
        // scale 0 stored means -32: the block's most negative multiplier
        assert_eq!(v[0], 0.25 * -32.0 * -127.0);
    }

    #[test]
    fn dequantize_equals_ggml_formula_on_random_bytes() {
        let mut rng = TestRng::new(41);
        for (ty, reference) in
            [(GgmlType::IQ4_NL, ggml_dequant_nl as fn(&[u8]) -> Vec<f32>), (GgmlType::IQ4_XS, ggml_dequant_xs)]
        {
            let mut bytes = rng.bytes(ty.type_size() * 64);
            for b in bytes.chunks_exact_mut(ty.type_size()) {
                b[..2].copy_from_slice(&f16_bytes(rng.uniform() * 0.1));
            }
            let got = dequant(ty, &bytes);
            let want: Vec<f32> = bytes.chunks_exact(ty.type_size()).flat_map(reference).collect();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{ty}"
            );
        }
    }

    #[test]
    fn best_index_is_the_nearest_table_value_ties_up() {
        for (i, &v) in KVALUES.iter().enumerate() {
            assert_eq!(best_index(v as f32), i as u8);
        }
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(1000.0), 15);
        // midpoint of -10 and 1 is -4.5: a tie takes the upper value, below it the lower one
        assert_eq!(best_index(-4.5), 8);
        assert_eq!(best_index(-4.6), 7);
        assert_eq!(best_index(0.0), 8);
        assert_eq!(best_index(100.9), 14);
        assert_eq!(best_index(101.0), 15);
    }

    /// ggml's `best_index_int8` as written: a binary search, then the lower neighbour only when strictly nearer.
    fn best_index_by_search(x: f32) -> u8 {
        let v = |i: usize| KVALUES[i] as f32;
        if x <= v(0) {
            return 0;
        }
        if x >= v(15) {
            return 15;
        }
        let (mut lo, mut hi) = (0usize, 15usize);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if x < v(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        if x - v(hi - 1) < v(hi) - x {
            (hi - 1) as u8
        } else {
            hi as u8
        }
    }

    #[test]
    fn table_lookup_equals_the_binary_search() {
        let mut rng = TestRng::new(3);
        let mut xs: Vec<f32> = (0..200_000).map(|_| rng.uniform() * 140.0).collect();
        for i in -130..=120 {
            let v = i as f32;
            // every integer, the neighbouring floats, and every midpoint of two table values
            xs.extend([v, v.next_up(), v.next_down(), v + 0.5, (v + 0.5).next_up(), (v + 0.5).next_down()]);
        }
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-30, -1e-30]);
        for x in xs {
            assert_eq!(best_index(x), best_index_by_search(x), "{x}");
        }
    }

    /// The generator of `scripts/ggml_iq4_vectors.c`, value for value: the inputs, then the importances.
    fn ggml_vector_inputs() -> (Vec<f32>, Vec<f32>) {
        const SCALES: [f32; 8] = [1.0, 0.5, 0.03125, 3.0, 0.0078125, 0.37, 12.5, 0.001];
        let mut state = 0x1234u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (mut scale, mut shift, mut kind) = (1.0f32, 0.0f32, 0u64);
        let x = (0..16 * 1024)
            .map(|i| {
                if i % 32 == 0 {
                    scale = SCALES[(next() % 8) as usize];
                    shift = if next().is_multiple_of(4) { scale * 0.25 } else { 0.0 };
                    kind = next() % 16;
                }
                let r = next() % 64;
                let k = ((next() % 2001) as i32 - 1000) as f32;
                match (i < 256, kind, r) {
                    (true, _, _) | (false, 0, _) | (false, 3.., 0) => 0.0,
                    (false, 1, _) => k * 1e-19,
                    (false, 2, _) => scale,
                    (false, _, 1) => k * scale * 0.01,
                    _ => k * scale * 0.001 + shift,
                }
            })
            .collect();
        let qw = (0..1024)
            .map(|j| {
                let v = (next() % 1000 + 1) as f32 * 0.01;
                let v = if next().is_multiple_of(16) || (32..64).contains(&j) { 0.0 } else { v };
                if (96..128).contains(&j) {
                    v * 1e-30
                } else {
                    v
                }
            })
            .collect();
        (x, qw)
    }

    /// The blocks of `got` that differ from `golden`'s, by index.
    fn differing_blocks(ty: GgmlType, got: &[u8], golden: &[u8]) -> Vec<usize> {
        assert_eq!(got.len(), golden.len(), "{ty}");
        let tb = ty.type_size();
        got.chunks_exact(tb)
            .zip(golden.chunks_exact(tb))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect()
    }

    /// Our encoders write llama.cpp's bytes (`quantize_iq4_nl` / `quantize_iq4_xs` without an importance matrix,
    /// what llama-quantize calls), on inputs with zero, below-threshold, constant and outlier groups.
    #[test]
    fn encoders_write_ggml_bytes() {
        let (x, _) = ggml_vector_inputs();
        for (ty, golden) in [
            (GgmlType::IQ4_NL, &include_bytes!("../testdata/iq4_nl.bin")[..]),
            (GgmlType::IQ4_XS, &include_bytes!("../testdata/iq4_xs.bin")[..]),
        ] {
            let rb = ty.row_bytes(1024).unwrap();
            let mut got = vec![0u8; 16 * rb];
            for (row, out) in x.chunks_exact(1024).zip(got.chunks_exact_mut(rb)) {
                quant_format(ty).unwrap().quantize_row(row, out).unwrap();
            }
            let bad = differing_blocks(ty, &got, golden);
            assert!(bad.is_empty(), "{ty}: blocks {bad:?} differ from llama.cpp's of {}", got.len() / ty.type_size());
        }
    }

    /// With an importance matrix (one importance per column, every row weighted alike, as llama-quantize passes
    /// it), including zero and tiny importances: llama.cpp's bytes too, which differ from the unweighted ones.
    #[test]
    fn weighted_encoders_write_ggml_bytes() {
        let (x, qw) = ggml_vector_inputs();
        for (ty, golden, plain) in [
            (
                GgmlType::IQ4_NL,
                &include_bytes!("../testdata/iq4_nl_imatrix.bin")[..],
                &include_bytes!("../testdata/iq4_nl.bin")[..],
            ),
            (
                GgmlType::IQ4_XS,
                &include_bytes!("../testdata/iq4_xs_imatrix.bin")[..],
                &include_bytes!("../testdata/iq4_xs.bin")[..],
            ),
        ] {
            let rb = ty.row_bytes(1024).unwrap();
            let mut got = vec![0u8; 16 * rb];
            for (row, out) in x.chunks_exact(1024).zip(got.chunks_exact_mut(rb)) {
                crate::weighted::quantize_row_weighted(ty, row, &qw, out).unwrap();
            }
            let bad = differing_blocks(ty, &got, golden);
            assert!(bad.is_empty(), "{ty}: blocks {bad:?} differ from llama.cpp's of {}", got.len() / ty.type_size());
            let changed = differing_blocks(ty, &got, plain).len();
            assert!(changed * 2 > got.len() / ty.type_size(), "{ty}: the importances changed only {changed} blocks");
        }
    }

    #[test]
    fn all_zero_blocks_encode_as_ggml_does() {
        let nl = quant(GgmlType::IQ4_NL, &[0.0; 32]);
        assert_eq!(&nl[..2], &[0, 0]);
        assert!(nl[2..].iter().all(|&b| b == 0x88), "index 8 (value 1) is nearest 0");
        let xs = quant(GgmlType::IQ4_XS, &[0.0; 256]);
        // d = -0.0, every scale stored as 32 (multiplier 0)
        assert_eq!(&xs[..8], &[0x00, 0x80, 0xaa, 0xaa, 0, 0, 0, 0]);
        assert!(xs[8..].iter().all(|&b| b == 0x88));
        assert!(dequant(GgmlType::IQ4_XS, &xs).iter().all(|&v| v == 0.0));
    }

    /// Round trips stay within a fraction of the largest magnitude their scale covers (the group for IQ4_NL,
    /// the super-block for IQ4_XS, whose 6-bit sub-block scales are relative to its largest): half the table's
    /// widest gap (24 of 127 at the top) plus the f16 and 6-bit scale roundings.
    #[test]
    fn round_trips_are_close() {
        let mut rng = TestRng::new(7);
        for (ty, group, bound) in [(GgmlType::IQ4_NL, 32, 0.12f32), (GgmlType::IQ4_XS, 256, 0.14)] {
            let mut worst = 0.0f32;
            for _ in 0..20 {
                let x = rng.row(1024);
                let y = dequant(ty, &quant(ty, &x));
                for (xb, yb) in x.chunks(group).zip(y.chunks(group)) {
                    let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    for (a, b) in xb.iter().zip(yb) {
                        assert!((a - b).abs() <= bound * amax, "{ty}: {a} -> {b}, above {bound} x {amax}");
                        worst = worst.max((a - b).abs() / amax);
                    }
                }
            }
            println!("{ty}: largest error {worst} of the largest magnitude");
        }
    }

    /// The scalar dots against ggml's formula in f64 (decoded weights times decoded activations), and against
    /// the true dot within the activations' rounding.
    #[test]
    fn vec_dot_is_ggml_formula() {
        let mut rng = TestRng::new(9);
        for ty in [GgmlType::IQ4_NL, GgmlType::IQ4_XS] {
            let f = quant_format(ty).unwrap();
            let act_ty = f.vec_dot_type();
            for n in [256, 512, 2048] {
                let w = quant(ty, &rng.row(n));
                let x = rng.row(n);
                let a = quant(act_ty, &x);
                let (wd, ad) = (dequant(ty, &w), dequant(act_ty, &a));
                let exact: f64 = wd.iter().zip(&ad).map(|(&p, &q)| p as f64 * q as f64).sum();
                let abs: f64 = wd.iter().zip(&ad).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
                let scalar = if ty == GgmlType::IQ4_NL {
                    crate::q_legacy::dot_scalar::<IQ4_NL>(&w, &a)
                } else {
                    crate::k_quants::dot_scalar::<IQ4_XS>(&w, &a)
                };
                assert_close(scalar, exact as f32, 2e-6, abs as f32, &format!("{ty} n={n} scalar"));
                let got = f.vec_dot(n, &w, &a);
                assert_close(got, exact as f32, 2e-6, abs as f32, &format!("{ty} n={n} dispatched"));
                let truth: f64 = wd.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
                assert_close(got, truth as f32, 0.02, abs as f32, &format!("{ty} n={n} truth"));
            }
        }
    }

    #[test]
    fn quantize_rejects_bad_lengths() {
        let f = quant_format(GgmlType::IQ4_XS).unwrap();
        let mut dst = vec![0u8; 136];
        assert!(f.quantize_row(&[0.0; 128], &mut dst).is_err());
        assert!(f.quantize_row(&[0.0; 256], &mut dst[..135]).is_err());
    }
}
