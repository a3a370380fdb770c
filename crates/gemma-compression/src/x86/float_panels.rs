//! Products of float weight panels ([`crate::float_panels`]) with f32 activations: one vector of 16 rows
//! (two halves of 8 on AVX2) times one broadcast activation per multiply-add, each lane its own chain.
//! AVX-512 keeps a tile of 4 panels x 6 tokens in 24 registers (8 panels for a lone token); AVX2 one panel
//! x 6 tokens in 12 (4 panels for one token, 2 for two).

use std::arch::x86_64::*;

use super::float_tiles::{load16_avx512, load8_avx2};
use crate::float::FloatCodec;
use crate::float_panels::{panel_block, PanelOut, PanelSlab, PANEL_ROWS};

/// Tokens per tile.
const TILE_TOKENS: usize = 6;
/// Steps of `k` ahead whose weights the first token tile of a panel block prefetches.
const PREFETCH_STEPS: usize = 8;

/// Runs `$tile::<C, $p, T>(args)` for the token count `$t` (1..=6) as a constant.
macro_rules! with_tokens {
    ($t:expr, $tile:ident :: <$c:ty, $p:literal> ($($arg:expr),*)) => {
        match $t {
            6 => $tile::<$c, $p, 6>($($arg),*),
            5 => $tile::<$c, $p, 5>($($arg),*),
            4 => $tile::<$c, $p, 4>($($arg),*),
            3 => $tile::<$c, $p, 3>($($arg),*),
            2 => $tile::<$c, $p, 2>($($arg),*),
            _ => $tile::<$c, $p, 1>($($arg),*),
        }
    };
}

/// The loop order of both levels: blocks of panels that stay in L2 while every tile of up to 6 tokens (in L1)
/// passes over them; `tile(p, t0, t, left)` runs the tile of tokens `t0..t0 + t` from panel `p`, with `left`
/// panels left in the block, and returns how many panels it took.
#[inline(always)]
fn for_each_tile(s: &PanelSlab, mut tile: impl FnMut(usize, usize, usize, usize) -> usize) {
    let block = panel_block(s.panel_bytes);
    for b0 in (0..s.panels).step_by(block) {
        let b1 = (b0 + block).min(s.panels);
        for t0 in (0..s.tokens).step_by(TILE_TOKENS) {
            let t = (s.tokens - t0).min(TILE_TOKENS);
            let mut p = b0;
            while p < b1 {
                p += tile(p, t0, t, b1 - p);
            }
        }
    }
}

/// Every (row, token) of the slab with AVX-512.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX-512 F and BW; the slab must be as [`PanelSlab`] documents, and `out`
/// built for the slab's tokens (its constructor's contract).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
pub(crate) unsafe fn dot_panels_avx512<C: FloatCodec>(s: &PanelSlab, out: &PanelOut) {
    assert!(s.w.len() >= s.panels * s.panel_bytes && s.k * PANEL_ROWS * C::TY.type_size() <= s.panel_bytes);
    assert!(s.acts.len() >= s.tokens * s.k);
    for_each_tile(s, |p, t0, t, left| {
        // SAFETY: the CPU features are this function's own; the tile lies inside the checked slab.
        unsafe {
            // One token alone gets 8 panels, so that 8 chains hide the FMA latency.
            if t == 1 && left >= 8 {
                tile_avx512::<C, 8, 1>(s, p, t0, out);
                8
            } else if left >= 4 {
                with_tokens!(t, tile_avx512::<C, 4>(s, p, t0, out));
                4
            } else {
                with_tokens!(t, tile_avx512::<C, 1>(s, p, t0, out));
                1
            }
        }
    });
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
#[allow(clippy::needless_range_loop)] // the indices name the accumulator registers
unsafe fn tile_avx512<C: FloatCodec, const P: usize, const T: usize>(
    s: &PanelSlab,
    p0: usize,
    t0: usize,
    out: &PanelOut,
) {
    let (k, elem) = (s.k, C::TY.type_size());
    let step = PANEL_ROWS * elem;
    let prefetch = t0 == 0;
    let w = s.w.as_ptr().wrapping_add(p0 * s.panel_bytes);
    let a = s.acts.as_ptr().wrapping_add(t0 * k);
    let mut acc = [[_mm512_setzero_ps(); T]; P];
    for i in 0..k {
        if prefetch {
            for p in 0..P {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(p * s.panel_bytes + (i + PREFETCH_STEPS) * step).cast());
            }
        }
        // SAFETY: `i < k` and `k * step <= panel_bytes`, so each load lies in its panel; token `t0 + t` has
        // `k` activations.
        unsafe {
            let wv: [__m512; P] = std::array::from_fn(|p| load16_avx512(C::KIND, w.add(p * s.panel_bytes + i * step)));
            for t in 0..T {
                let x = _mm512_set1_ps(*a.add(t * k + i));
                for p in 0..P {
                    acc[p][t] = _mm512_fmadd_ps(wv[p], x, acc[p][t]);
                }
            }
        }
    }
    for t in 0..T {
        for p in 0..P {
            let (c, n) = (PANEL_ROWS * (p0 + p), out.cols().saturating_sub(PANEL_ROWS * (p0 + p)).min(PANEL_ROWS));
            let at = out.at(t0 + t, c);
            // SAFETY: token `t0 + t` is one of the slab's, and the first `n` rows from column `c` are real
            // ones, so `out` guarantees them writable and ours.
            unsafe { _mm512_mask_storeu_ps(at, ((1u32 << n) - 1) as u16, acc[p][t]) };
        }
    }
}

/// Every (row, token) of the slab with AVX2.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the slab and `out` as for [`dot_panels_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_panels_avx2<C: FloatCodec>(s: &PanelSlab, out: &PanelOut) {
    assert!(s.w.len() >= s.panels * s.panel_bytes && s.k * PANEL_ROWS * C::TY.type_size() <= s.panel_bytes);
    assert!(s.acts.len() >= s.tokens * s.k);
    for_each_tile(s, |p, t0, t, left| {
        // SAFETY: the CPU features are this function's own; the tile lies inside the checked slab.
        unsafe {
            // At least 8 chains (two halves per panel) hide the FMA latency for one or two tokens.
            if t == 1 && left >= 4 {
                tile_avx2::<C, 4, 1>(s, p, t0, out);
                4
            } else if t == 2 && left >= 2 {
                tile_avx2::<C, 2, 2>(s, p, t0, out);
                2
            } else {
                with_tokens!(t, tile_avx2::<C, 1>(s, p, t0, out));
                1
            }
        }
    });
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // the indices name the accumulator registers
unsafe fn tile_avx2<C: FloatCodec, const P: usize, const T: usize>(
    s: &PanelSlab,
    p0: usize,
    t0: usize,
    out: &PanelOut,
) {
    let (k, elem) = (s.k, C::TY.type_size());
    let step = PANEL_ROWS * elem;
    let a = s.acts.as_ptr().wrapping_add(t0 * k);
    let w = s.w.as_ptr().wrapping_add(p0 * s.panel_bytes);
    // acc[p][t][half]: rows 0..8 and 8..16 of panel `p0 + p`.
    let mut acc = [[[_mm256_setzero_ps(); 2]; T]; P];
    for i in 0..k {
        // SAFETY: as in the AVX-512 tile.
        unsafe {
            for p in 0..P {
                let at = w.add(p * s.panel_bytes + i * step);
                let (lo, hi) = (load8_avx2(C::KIND, at), load8_avx2(C::KIND, at.add(8 * elem)));
                for t in 0..T {
                    let x = _mm256_set1_ps(*a.add(t * k + i));
                    acc[p][t][0] = _mm256_fmadd_ps(lo, x, acc[p][t][0]);
                    acc[p][t][1] = _mm256_fmadd_ps(hi, x, acc[p][t][1]);
                }
            }
        }
    }
    for p in 0..P {
        for t in 0..T {
            let c = PANEL_ROWS * (p0 + p);
            if c + PANEL_ROWS <= out.cols() {
                let at = out.at(t0 + t, c);
                // SAFETY: 16 real rows from column `c` of one of the slab's tokens, guaranteed by `out`.
                unsafe {
                    _mm256_storeu_ps(at, acc[p][t][0]);
                    _mm256_storeu_ps(at.add(8), acc[p][t][1]);
                }
            } else {
                let mut v = [0f32; PANEL_ROWS];
                // SAFETY: `v` holds 16 values.
                unsafe {
                    _mm256_storeu_ps(v.as_mut_ptr(), acc[p][t][0]);
                    _mm256_storeu_ps(v.as_mut_ptr().add(8), acc[p][t][1]);
                }
                out.write(t0 + t, c, &v);
            }
        }
    }
}
