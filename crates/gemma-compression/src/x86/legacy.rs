//! AVX2 single dots of the 32-element block formats, for the kernel-versus-scalar tests: each is the tiled
//! kernel of [`legacy_tiles`](super::legacy_tiles) with one row and one token, exactly what `vec_dot` runs.
#![cfg(test)]

use super::legacy_tiles::{dot_rows, TileLevel, TiledBlock};
use crate::q_legacy::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

/// # Safety: the CPU supports avx2, fma and f16c. Panics unless `w` and `act` hold exactly `n` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn one_dot<F: TiledBlock>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut out = [0.0f32];
    dot_rows::<F>(TileLevel::Avx2, n, w, 1, act, 1, &mut out);
    out[0]
}

/// Q8_0 x Q8_0. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q8_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
    one_dot::<Q8_0>(n, w, act)
}

/// Q4_0 x Q8_0. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
    one_dot::<Q4_0>(n, w, act)
}

/// Q5_0 x Q8_0. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q5_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
    one_dot::<Q5_0>(n, w, act)
}

/// Q4_1 x Q8_1. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_1(n: usize, w: &[u8], act: &[u8]) -> f32 {
    one_dot::<Q4_1>(n, w, act)
}

/// Q5_1 x Q8_1. # Safety: the CPU supports avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q5_1(n: usize, w: &[u8], act: &[u8]) -> f32 {
    one_dot::<Q5_1>(n, w, act)
}
