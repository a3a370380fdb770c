//! Encoders that take per-column importance weights: ggml's `quantize_row_*_impl` (what `ggml_quantize_chunk`
//! runs when llama-quantize has an importance matrix), bit for bit.
//!
//! These are different searches from the reference encoders in `k_quants.rs` / `q_legacy.rs` (which stay as
//! they are for the no-imatrix path): the K-quants search each sub-block's scale and min with
//! `make_qkx3_quants` and then quantize the sub-block scales themselves with a weighted search
//! (`make_qp_quants`), and the legacy types search their scale too. Each weight is the importance of the
//! column times `sqrt(sigma2 + x^2)` (sigma2: the mean square of the super-block, or of the row for the
//! 32-element types), except Q6_K, which takes the importance as it is. IQ4_NL and IQ4_XS run their reference
//! search with these weights in place of `x^2` (`iq4.rs`; sigma2 there is twice the mean square of the block
//! or super-block).
//!
//! The arithmetic follows ggml's C expression by expression, in f32 and in the same order (`w * x * l` is
//! `(w * x) * l`), because a different rounding can pick a different scale and so different bytes. Integer
//! conversions to bytes wrap as C's do (a quant can come out negative from a search on odd data).

// The loops index several arrays in step, as ggml's do; keeping them index-by-index keeps the order of the f32
// operations visibly the same as the C.
#![allow(clippy::needless_range_loop)]

use crate::k_quants::{scale_min_k4, scales_q3_k, QK_K};
use crate::rounding::{largest_magnitude, nearest_int};
use crate::{put_f16_le, quant_format, GgmlType, QuantError};

/// ggml's GROUP_MAX_EPS.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Whether `ty` has an importance-weighted encoder that differs from its reference one. Q8_0 and the float
/// types ignore the weights (as ggml's do).
pub fn uses_importance(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::IQ4_NL
            | GgmlType::IQ4_XS
    )
}

/// Encodes one row of `ty` with importance `weights` (one per element of the row, as llama-quantize passes an
/// imatrix entry for every row of a matrix). `dst` must be exactly `ty.row_bytes(src.len())` long. Types that
/// ignore the weights are encoded with their reference encoder.
pub fn quantize_row_weighted(ty: GgmlType, src: &[f32], weights: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let format = quant_format(ty)?;
    if !uses_importance(ty) {
        return format.quantize_row(src, dst);
    }
    let n = src.len();
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(QuantError::BadLength { ty, n });
    }
    let expected = n / bs * ty.type_size();
    if dst.len() != expected {
        return Err(QuantError::BadBufferLength { ty, n, expected, got: dst.len() });
    }
    if weights.len() != n {
        return Err(QuantError::BadWeightsLength { ty, n, got: weights.len() });
    }
    let tb = ty.type_size();
    let blocks = src.chunks_exact(bs).zip(weights.chunks_exact(bs)).zip(dst.chunks_exact_mut(tb));
    match ty {
        GgmlType::Q2K => blocks.for_each(|((x, w), b)| q2_k(x, w, b)),
        GgmlType::Q3K => blocks.for_each(|((x, w), b)| q3_k(x, w, b)),
        GgmlType::Q4K => blocks.for_each(|((x, w), b)| q45_k(x, w, b, 15)),
        GgmlType::Q5K => blocks.for_each(|((x, w), b)| q45_k(x, w, b, 31)),
        GgmlType::Q6K => blocks.for_each(|((x, w), b)| q6_k(x, w, b)),
        // IQ4 weighs by the mean square of its own block (32 or 256 elements), inside the block encoder
        GgmlType::IQ4_NL => blocks.for_each(|((x, w), b)| crate::iq4::encode_nl(x, Some(w), b)),
        GgmlType::IQ4_XS => blocks.for_each(|((x, w), b)| crate::iq4::encode_xs(x, Some(w), b)),
        _ => {
            // The 32-element types weigh by the mean square of the whole row (ggml divides by n_per_row).
            let sum_x2 = src.iter().fold(0.0f32, |s, &v| s + v * v);
            let sigma2 = sum_x2 / n as f32;
            for ((x, qw), b) in blocks {
                let mut weight = [0.0f32; 32];
                for j in 0..32 {
                    weight[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
                }
                match ty {
                    GgmlType::Q4_0 => q4_0(x, &weight, b),
                    GgmlType::Q5_0 => q5_0(x, &weight, b),
                    GgmlType::Q4_1 => q4_1(x, &weight, b),
                    _ => q5_1(x, &weight, b),
                }
            }
        }
    }
    Ok(())
}

/// ggml's `MAX(a, b)` / `MIN(a, b)` on floats: `a > b ? a : b` (differs from `f32::max` only for NaN).
#[inline(always)]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// ggml's `make_qx_quants` with importance weights (rmse_type 1): symmetric quants stored `+nmax`, the scale
/// searched over 19 candidates.
fn make_qx_quants_w(nmax: i32, x: &[f32], l: &mut [i8], qw: &[f32]) -> f32 {
    let n = x.len();
    let (amax, max) = largest_magnitude(x.iter().copied());
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = quant(iscale, x[i]);
        l[i] = (q + nmax) as i8;
        let (w, qf) = (qw[i], q as f32);
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..n {
            let (w, qf) = (qw[i], quant(iscale, x[i]) as f32);
            sumlx += w * x[i] * qf;
            suml2 += w * qf * qf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = (quant(iscale, x[i]) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx3_quants` (squared error, not MAD): asymmetric quants in `0..=nmax`; returns (scale, -min).
fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_mad += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, qf) = (weights[i], q as f32);
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                mad += weights[i] * (diff * diff);
            }
            if mad < best_mad {
                l[..n].copy_from_slice(&laux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qp_quants`: non-negative quants in `0..=nmax` of non-negative values (the sub-block scales and
/// mins), a weighted scale search then up to five rounds of per-element refinement. A negative quant (odd
/// input) is stored wrapped to a byte, as ggml's `uint8_t` store does.
fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let (w, lf) = (qw[i], l[i] as f32);
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let (w, li) = (qw[i], l[i] as f32);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The K-quants' weight of element `x` with importance `qw`: `qw * sqrt(sigma2 + x^2)`.
#[inline(always)]
fn k_weight(qw: f32, sigma2: f32, x: f32) -> f32 {
    qw * (sigma2 + x * x).sqrt()
}

fn sum_squares(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |s, &v| s + v * v)
}

/// `quantize_row_q2_K_impl` for one block: `scales[16]`, `qs[64]`, `d`, `dmin`.
fn q2_k(x: &[f32], qw: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (mut mins, mut scales, mut sw) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    let sigma2 = sum_squares(x) / QK_K as f32;
    for j in 0..16 {
        let mut weight = [0.0f32; 16];
        for i in 0..16 {
            weight[i] = k_weight(qw[16 * j + i], sigma2, x[16 * j + i]);
        }
        sw[j] = weight.iter().fold(0.0f32, |s, &w| s + w);
        (scales[j], mins[j]) =
            make_qkx3_quants(3, &x[16 * j..16 * j + 16], &weight, &mut l[16 * j..16 * j + 16], -0.9, 0.05, 36);
    }
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    let dm = put_f16_le(&mut b[80..], dm);
    let mm = put_f16_le(&mut b[82..], mm);
    for j in 0..16 {
        b[j] = ls[j] | (lm[j] << 4);
    }
    for j in 0..16 {
        let d = dm * (b[j] & 0x0f) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (b[j] >> 4) as f32;
        for i in 0..16 {
            l[16 * j + i] = nearest_int((x[16 * j + i] + m) / d).clamp(0, 3) as u8;
        }
    }
    let qs = &mut b[16..80];
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// `quantize_row_q3_K_impl` for one block: `hmask[32]`, `qs[64]`, `scales[12]`, `d`.
fn q3_k(x: &[f32], qw: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let (mut scales, mut sw) = ([0.0f32; 16], [0.0f32; 16]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    for j in 0..16 {
        let mut weight = [0.0f32; 16];
        for i in 0..16 {
            weight[i] = k_weight(qw[16 * j + i], sigma2, x[16 * j + i]);
        }
        sw[j] = weight.iter().fold(0.0f32, |s, &w| s + w);
        scales[j] = make_qx_quants_w(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16], &weight);
    }
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants_w(32, &scales, &mut ls, &sw);
    let sc = &mut b[96..108];
    sc.fill(0);
    for j in 0..16 {
        let v = ls[j] as u8;
        if j < 8 {
            sc[j] = v & 0x0f;
        } else {
            sc[j - 8] |= (v & 0x0f) << 4;
        }
        sc[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
    }
    let d = put_f16_le(&mut b[108..], d_block);
    let stored = scales_q3_k(&b[96..108]);
    for j in 0..16 {
        let dl = d * stored[j] as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dl).clamp(-4, 3) + 4) as i8;
        }
    }
    let mut low = [0u8; QK_K];
    let hmask = &mut b[..32];
    hmask.fill(0);
    for (i, (&v, lo)) in l.iter().zip(low.iter_mut()).enumerate() {
        let v = v as u8;
        if v > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *lo = v.wrapping_sub(4);
        } else {
            *lo = v;
        }
    }
    let qs = &mut b[32..96];
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] = low[j + k] | (low[j + k + 32] << 2) | (low[j + k + 64] << 4) | (low[j + k + 96] << 6);
        }
    }
}

/// `quantize_row_q4_K_impl` (`nmax` 15) and `quantize_row_q5_K_impl` (`nmax` 31) for one block: `d`, `dmin`,
/// `scales[12]`, then Q5_K's `qh[32]`, then `qs[128]`.
fn q45_k(x: &[f32], qw: &[f32], b: &mut [u8], nmax: i32) {
    let mut l = [0u8; QK_K];
    let (mut mins, mut scales, mut sw) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    for j in 0..8 {
        let mut weights = [0.0f32; 32];
        for i in 0..32 {
            weights[i] = k_weight(qw[32 * j + i], sigma2, x[32 * j + i]);
        }
        sw[j] = weights.iter().fold(0.0f32, |s, &w| s + w);
        (scales[j], mins[j]) =
            make_qkx3_quants(nmax, &x[32 * j..32 * j + 32], &weights, &mut l[32 * j..32 * j + 32], -0.9, 0.05, 36);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    let sc = &mut b[4..16];
    for j in 0..8 {
        let (mut s, mut m) = (ls[j], lm[j]);
        if nmax == 31 {
            // Q5_K clamps the 6-bit fields; Q4_K stores them as they come (as ggml does)
            s = s.min(63);
            m = m.min(63);
        }
        if j < 4 {
            sc[j] = s;
            sc[j + 4] = m;
        } else {
            sc[j + 4] = (s & 0x0f) | ((m & 0x0f) << 4);
            sc[j - 4] |= (s >> 4) << 6;
            sc[j] |= (m >> 4) << 6;
        }
    }
    let d = put_f16_le(&mut b[0..], d_block);
    let dmin = put_f16_le(&mut b[2..], m_block);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &b[4..16]);
        let dl = d * s as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    if nmax == 15 {
        let qs = &mut b[16..144];
        for c in 0..4 {
            for k in 0..32 {
                qs[32 * c + k] = l[64 * c + k] | (l[64 * c + 32 + k] << 4);
            }
        }
    } else {
        let (qh, qs) = b[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for k in 0..32 {
                let (mut l1, mut l2) = (l[64 * c + k], l[64 * c + 32 + k]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[k] |= 1 << (2 * c);
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[k] |= 2 << (2 * c);
                }
                qs[32 * c + k] = l1 | (l2 << 4);
            }
        }
    }
}

/// `quantize_row_q6_K_impl` for one block: `ql[128]`, `qh[64]`, `scales[16]`, `d`. The importance is used as
/// it is (no sigma2 term).
fn q6_k(x: &[f32], qw: &[f32], b: &mut [u8]) {
    crate::k_quants::encode_q6_k(x, b, |r, l| make_qx_quants_w(32, &x[r.clone()], l, &qw[r]));
}

/// `quantize_row_q4_0_impl` for one block: `d`, `qs[16]`.
fn q4_0(x: &[f32], weight: &[f32; 32], b: &mut [u8]) {
    let mut l = [0i8; 32];
    let d = make_qx_quants_w(8, x, &mut l, weight);
    put_f16_le(b, d);
    for j in 0..16 {
        b[2 + j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
    }
}

/// The 5-bit types' `qh`: bit 4 of quant `j` at bit `j`.
fn high_bits(l: &[u8; 32]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..16 {
        qh |= (((l[j] & 0x10) >> 4) as u32) << j;
        qh |= (((l[j + 16] & 0x10) >> 4) as u32) << (j + 16);
    }
    qh.to_le_bytes()
}

fn low_nibbles(l: &[u8; 32], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = (l[j] & 0x0f) | ((l[j + 16] & 0x0f) << 4);
    }
}

/// `quantize_row_q5_0_impl` for one block: `d`, `qh[4]`, `qs[16]`.
fn q5_0(x: &[f32], weight: &[f32; 32], b: &mut [u8]) {
    let mut l = [0i8; 32];
    let d = make_qx_quants_w(16, x, &mut l, weight);
    put_f16_le(b, d);
    let l = l.map(|v| v as u8);
    b[2..6].copy_from_slice(&high_bits(&l));
    low_nibbles(&l, &mut b[6..22]);
}

/// `quantize_row_q4_1_impl` for one block: `d`, `m`, `qs[16]`.
fn q4_1(x: &[f32], weight: &[f32; 32], b: &mut [u8]) {
    let mut l = [0u8; 32];
    let (d, neg_min) = make_qkx3_quants(15, x, weight, &mut l, -0.9, 0.05, 36);
    put_f16_le(b, d);
    put_f16_le(&mut b[2..], -neg_min);
    for j in 0..16 {
        b[4 + j] = l[j] | (l[j + 16] << 4);
    }
}

/// `quantize_row_q5_1_impl` for one block: `d`, `m`, `qh[4]`, `qs[16]`.
fn q5_1(x: &[f32], weight: &[f32; 32], b: &mut [u8]) {
    let mut l = [0u8; 32];
    let (d, neg_min) = make_qkx3_quants(31, x, weight, &mut l, -0.9, 0.05, 36);
    put_f16_le(b, d);
    put_f16_le(&mut b[2..], -neg_min);
    b[4..8].copy_from_slice(&high_bits(&l));
    low_nibbles(&l, &mut b[8..24]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::TestRng;

    fn test_row(n: usize, seed: u64) -> Vec<f32> {
        TestRng::new(seed).row(n)
    }

    const TYPES: [GgmlType; 11] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ];

    fn squared_error(ty: GgmlType, x: &[f32], w: &[f32], bytes: &[u8]) -> f64 {
        let mut back = vec![0f32; x.len()];
        quant_format(ty).expect("format").dequantize_row(bytes, &mut back);
        x.iter().zip(&back).zip(w).map(|((a, b), w)| *w as f64 * ((a - b) as f64).powi(2)).sum()
    }

    #[test]
    fn weighted_rows_decode_close_and_favour_heavy_columns() {
        let n = 512;
        let x = test_row(n, 7);
        // the first half of the columns matters 100x more
        let w: Vec<f32> = (0..n).map(|i| if i % 64 < 32 { 100.0 } else { 1.0 }).collect();
        let flat = vec![1.0f32; n];
        for ty in TYPES {
            let bytes_len = ty.row_bytes(n).expect("row bytes");
            let (mut weighted, mut plain) = (vec![0u8; bytes_len], vec![0u8; bytes_len]);
            quantize_row_weighted(ty, &x, &w, &mut weighted).expect("weighted");
            quantize_row_weighted(ty, &x, &flat, &mut plain).expect("flat");
            let rms: f64 = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64).sqrt();
            let err_w = squared_error(ty, &x, &w, &weighted);
            let err_p = squared_error(ty, &x, &w, &plain);
            let total_w: f64 = w.iter().map(|&v| v as f64).sum();
            assert!((err_w / total_w).sqrt() < 0.5 * rms, "{ty}: weighted error too large");
            assert!(err_w <= err_p * 1.02, "{ty}: importance did not help ({err_w} vs {err_p})");
        }
    }

    #[test]
    fn zero_rows_and_length_errors() {
        for ty in TYPES {
            let n = 256;
            let mut out = vec![0xAAu8; ty.row_bytes(n).expect("row bytes")];
            quantize_row_weighted(ty, &vec![0.0; n], &vec![1.0; n], &mut out).expect("zeros");
            let mut back = vec![1f32; n];
            quant_format(ty).expect("format").dequantize_row(&out, &mut back);
            assert!(back.iter().all(|&v| v == 0.0), "{ty}: zeros do not decode to zeros");
            assert!(matches!(
                quantize_row_weighted(ty, &vec![0.0; n], &vec![1.0; n - 1], &mut out),
                Err(QuantError::BadWeightsLength { .. })
            ));
            assert!(quantize_row_weighted(ty, &vec![0.0; n], &vec![1.0; n], &mut out[1..]).is_err());
        }
        // Q8_0 ignores the weights: the reference bytes
        let x = test_row(64, 3);
        let (mut a, mut b) = (vec![0u8; 68], vec![0u8; 68]);
        quantize_row_weighted(GgmlType::Q8_0, &x, &[0.0; 64], &mut a).expect("q8_0");
        quant_format(GgmlType::Q8_0).expect("format").quantize_row(&x, &mut b).expect("q8_0 ref");
        assert_eq!(a, b);
    }
}
