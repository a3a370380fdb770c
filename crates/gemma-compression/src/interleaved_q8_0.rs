//! Q8_0 weights repacked with 16 rows interleaved, for the matrices a batched decode step multiplies with
//! several tokens at once (the output head above all).
//!
//! In GGML's layout each row's blocks lie one after another, so a SIMD lane can only hold part of one row's
//! block: every 64 multiply-adds end in a float conversion and a scaled add. Here block `b` of 16 rows is
//! stored as their 16 f16 scales followed by their quants 4 at a time (dword `k` of rows 0..16 at byte `64 k`),
//! so one 512-bit integer dot product advances the block dot of all 16 rows, and the conversion and scaled
//! add happen once per block for 16 rows. The values are Q8_0's, unchanged; only the order of the float
//! additions differs from [`crate::QuantFormat::dot_rows`]: per row and token the block products are added
//! in block order, `acc = fma(d_w * d_a, sum, acc)`, which the scalar twin does too.

use std::ops::Range;

use crate::{quant_format, GgmlType, QuantError};

/// Rows per interleaved group.
pub const ROW_GROUP: usize = 16;
/// Elements per Q8_0 block.
const QK: usize = 32;
/// Bytes of a Q8_0 block: f16 scale and 32 quants.
const Q8_0_BLOCK: usize = 34;
/// Bytes of one block of a group: 16 f16 scales, then 8 runs of 64 bytes (dword `k` of each of the 16 rows).
pub const GROUP_BLOCK_BYTES: usize = 2 * ROW_GROUP + QK * ROW_GROUP;

/// A Q8_0 matrix of `rows x cols` in groups of 16 interleaved rows (the last group padded with zero rows).
pub struct InterleavedQ8_0 {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for InterleavedQ8_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InterleavedQ8_0({} x {})", self.rows, self.cols)
    }
}

impl InterleavedQ8_0 {
    /// Repacks `rows` Q8_0 rows of `cols` elements (GGML's layout). `done(bytes)` is called as the source is
    /// consumed in order, with the length of the prefix of `src` no longer needed (callers that mapped the
    /// source can release those pages).
    pub fn from_q8_0(
        rows: usize,
        cols: usize,
        src: &[u8],
        done: &mut dyn FnMut(usize),
    ) -> Result<InterleavedQ8_0, QuantError> {
        let ty = GgmlType::Q8_0;
        let row_bytes = ty.row_bytes(cols).ok_or(QuantError::BadLength { ty, n: cols })?;
        if src.len() != rows * row_bytes {
            return Err(QuantError::BadBufferLength { ty, n: rows * cols, expected: rows * row_bytes, got: src.len() });
        }
        let blocks = cols / QK;
        let groups = rows.div_ceil(ROW_GROUP);
        let mut data = vec![0u8; groups * blocks * GROUP_BLOCK_BYTES];
        for (g, out) in data.chunks_exact_mut(blocks * GROUP_BLOCK_BYTES).enumerate() {
            for r in 0..ROW_GROUP.min(rows - g * ROW_GROUP) {
                let row = &src[(g * ROW_GROUP + r) * row_bytes..][..row_bytes];
                for (b, block) in row.chunks_exact(Q8_0_BLOCK).enumerate() {
                    let dst = &mut out[b * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                    dst[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                    for k in 0..QK / 4 {
                        let at = 2 * ROW_GROUP + 64 * k + 4 * r;
                        dst[at..at + 4].copy_from_slice(&block[2 + 4 * k..2 + 4 * k + 4]);
                    }
                }
            }
            done(((g + 1) * ROW_GROUP).min(rows) * row_bytes);
        }
        Ok(InterleavedQ8_0 { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Groups of 16 rows (the last may be padded).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(ROW_GROUP)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    #[cfg(test)]
    pub(crate) fn data_for_tests(&self) -> &[u8] {
        &self.data
    }

    /// The dots of the rows of `groups` with every token of `acts`: `tile[t * w + i]` for token `t` and row
    /// `groups.start * 16 + i`, where `w = 16 * groups.len()` (padding rows included, as zeros).
    pub fn dot_groups(&self, groups: Range<usize>, acts: &InterleavedActs, tile: &mut [f32]) {
        let blocks = self.cols / QK;
        assert!(groups.end <= self.groups(), "groups {groups:?} of {}", self.groups());
        assert_eq!(acts.blocks, blocks, "activations of another width");
        assert_eq!(tile.len(), acts.n_tokens * ROW_GROUP * groups.len(), "tile size");
        let group_bytes = blocks * GROUP_BLOCK_BYTES;
        let w = &self.data[groups.start * group_bytes..groups.end * group_bytes];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::has_avx512_vnni() {
                // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; lengths were checked above.
                unsafe { crate::x86::interleaved_q8_0::dot_groups_vnni(w, blocks, acts, tile) };
                return;
            }
            if crate::simd_level() >= crate::SimdLevel::Avx2 {
                // SAFETY: the CPU has AVX2, FMA and F16C; lengths were checked above.
                unsafe { crate::x86::interleaved_q8_0::dot_groups_avx2(w, blocks, acts, tile) };
                return;
            }
        }
        dot_groups_scalar(w, blocks, acts, tile);
    }
}

/// Q8_0 activations laid out for the interleaved kernels: per token and block the f32 scale, `-128 *` the sum
/// of the quants (the VNNI kernel's correction for taking the weights as unsigned), and the 32 quants.
#[derive(Default)]
pub struct InterleavedActs {
    pub(crate) n_tokens: usize,
    pub(crate) blocks: usize,
    pub(crate) d: Vec<f32>,
    pub(crate) neg_bias: Vec<i32>,
    pub(crate) qs: Vec<u8>,
    row: Vec<u8>,
}

impl InterleavedActs {
    /// Quantizes `x` (tokens of `cols` values) to Q8_0 exactly as the GGML kernels' activations are.
    pub fn quantize(&mut self, x: &[f32], cols: usize) -> Result<(), QuantError> {
        let ty = GgmlType::Q8_0;
        if cols == 0 || cols % QK != 0 || x.len() % cols != 0 {
            return Err(QuantError::BadLength { ty, n: cols });
        }
        let q8 = quant_format(ty)?;
        self.n_tokens = x.len() / cols;
        self.blocks = cols / QK;
        let n = self.n_tokens * self.blocks;
        self.d.resize(n, 0.0);
        self.neg_bias.resize(n, 0);
        self.qs.resize(n * QK, 0);
        self.row.resize(self.blocks * Q8_0_BLOCK, 0);
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            q8.quantize_row(xt, &mut self.row)?;
            for (b, block) in self.row.chunks_exact(Q8_0_BLOCK).enumerate() {
                let i = t * self.blocks + b;
                self.d[i] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                self.neg_bias[i] = -128 * block[2..].iter().map(|&q| q as i8 as i32).sum::<i32>();
                self.qs[i * QK..(i + 1) * QK].copy_from_slice(&block[2..]);
            }
        }
        Ok(())
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
}

/// The scalar twin of the kernels: per row and token, `acc = fma(d_w * d_a, block sum, acc)` in block order.
pub(crate) fn dot_groups_scalar(w: &[u8], blocks: usize, acts: &InterleavedActs, tile: &mut [f32]) {
    let group_bytes = blocks * GROUP_BLOCK_BYTES;
    let groups = w.len() / group_bytes;
    let width = groups * ROW_GROUP;
    for (g, gw) in w.chunks_exact(group_bytes).enumerate() {
        for t in 0..acts.n_tokens {
            for r in 0..ROW_GROUP {
                let mut acc = 0.0f32;
                for b in 0..blocks {
                    let blk = &gw[b * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                    let dw = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
                    let i = t * blocks + b;
                    let a = &acts.qs[i * QK..(i + 1) * QK];
                    let mut sum = 0i32;
                    for k in 0..QK / 4 {
                        for e in 0..4 {
                            let q = blk[2 * ROW_GROUP + 64 * k + 4 * r + e] as i8 as i32;
                            sum += q * a[4 * k + e] as i8 as i32;
                        }
                    }
                    acc = (dw * acts.d[i]).mul_add(sum as f32, acc);
                }
                tile[t * width + g * ROW_GROUP + r] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::TestRng;

    fn q8_0_rows(rng: &mut TestRng, rows: usize, cols: usize) -> Vec<u8> {
        let q8 = quant_format(GgmlType::Q8_0).unwrap();
        let mut out = vec![0u8; rows * GgmlType::Q8_0.row_bytes(cols).unwrap()];
        for row in out.chunks_exact_mut(GgmlType::Q8_0.row_bytes(cols).unwrap()) {
            q8.quantize_row(&rng.row(cols), row).unwrap();
        }
        out
    }

    #[test]
    fn repacking_keeps_every_scale_and_quant() {
        let mut rng = TestRng::new(5);
        let (rows, cols) = (21, 96);
        let src = q8_0_rows(&mut rng, rows, cols);
        let mut released = Vec::new();
        let m = InterleavedQ8_0::from_q8_0(rows, cols, &src, &mut |b| released.push(b)).unwrap();
        assert_eq!(m.groups(), 2);
        assert_eq!(released, [16 * 102, 21 * 102]);
        let rb = 102;
        for r in 0..rows {
            for b in 0..3 {
                let blk = &m.data[(r / 16) * 3 * GROUP_BLOCK_BYTES + b * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                let orig = &src[r * rb + b * 34..][..34];
                assert_eq!(blk[2 * (r % 16)..2 * (r % 16) + 2], orig[..2]);
                for j in 0..32 {
                    assert_eq!(blk[32 + 64 * (j / 4) + 4 * (r % 16) + j % 4], orig[2 + j], "row {r} block {b} quant {j}");
                }
            }
        }
        // padding rows are zero
        let last = &m.data[3 * GROUP_BLOCK_BYTES..];
        assert!((5..16).all(|r| last[2 * r] == 0 && last[32 + 4 * r] == 0));
        assert!(InterleavedQ8_0::from_q8_0(rows, cols, &src[1..], &mut |_| {}).is_err());
        assert!(InterleavedQ8_0::from_q8_0(rows, 100, &src, &mut |_| {}).is_err());
    }

    /// The scalar twin is within rounding of the GGML dot products of the same rows (only the order of the
    /// float additions differs).
    #[test]
    fn scalar_twin_is_within_rounding_of_ggml_dots() {
        let mut rng = TestRng::new(9);
        let (rows, cols, tokens) = (40, 640, 3);
        let src = q8_0_rows(&mut rng, rows, cols);
        let m = InterleavedQ8_0::from_q8_0(rows, cols, &src, &mut |_| {}).unwrap();
        let x: Vec<f32> = (0..tokens).flat_map(|_| rng.row(cols)).collect();
        let mut acts = InterleavedActs::default();
        acts.quantize(&x, cols).unwrap();
        let mut tile = vec![0.0; tokens * 48];
        dot_groups_scalar(&m.data, cols / 32, &acts, &mut tile);
        let q8 = quant_format(GgmlType::Q8_0).unwrap();
        let rb = GgmlType::Q8_0.row_bytes(cols).unwrap();
        let mut qa = vec![0u8; rb];
        for t in 0..tokens {
            q8.quantize_row(&x[t * cols..(t + 1) * cols], &mut qa).unwrap();
            for r in 0..rows {
                let want = q8.vec_dot(cols, &src[r * rb..(r + 1) * rb], &qa);
                let got = tile[t * 48 + r];
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "({t}, {r}): {got} vs {want}");
            }
            assert!(tile[t * 48 + 40..t * 48 + 48].iter().all(|&v| v == 0.0), "padding rows");
        }
    }
}
