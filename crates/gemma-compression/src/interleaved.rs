//! Q8_0 and Q5_0 weights repacked with 16 rows interleaved, for products with several tokens at once
//! (a batched decode step, a prefill) and with one.
//!
//! In GGML's layout each row's blocks lie one after another, so a SIMD lane can only hold part of one row's
//! block: every 64 multiply-adds end in a float conversion and a scaled add. Here block `b` of 16 rows is
//! stored as their 16 f16 scales followed by their quants 4 at a time (dword `k` of rows 0..16 together), so
//! one 512-bit integer dot product advances the block sums of all 16 rows, and the conversion and scaled add
//! happen once per block for 16 rows. The values are the format's own, unchanged, and the block sums exact;
//! only the order of the float additions differs from [`crate::QuantFormat::dot_rows`]: per row and token
//! the block products are added in block order, `acc = fma(d_w * d_a, sum, acc)`, as the scalar twin does.
//!
//! Layout of one block of a group (16 f16 scales first, then per `k` in 0..8 the 64 quants `r * 4 + e` of
//! dword `k` of each row `r`):
//! - Q8_0: the 64 signed bytes (544 bytes per group block, as 16 GGML blocks);
//! - Q5_0: the 64 unsigned 5-bit values `q + 16` as 32 bytes of nibbles (byte `m` holds value `m` in its low
//!   nibble and value `m + 32` in its high one) and a 64-bit word of their fifth bits (352 bytes, as GGML).

use std::ops::Range;

use crate::{quant_format, GgmlType, QuantError};

/// Rows per interleaved group.
pub const ROW_GROUP: usize = 16;
/// Elements per block.
const QK: usize = 32;

/// The formats that can be interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterleavedFormat {
    Q8_0,
    Q5_0,
}

impl InterleavedFormat {
    pub fn of(ty: GgmlType) -> Option<InterleavedFormat> {
        match ty {
            GgmlType::Q8_0 => Some(InterleavedFormat::Q8_0),
            GgmlType::Q5_0 => Some(InterleavedFormat::Q5_0),
            _ => None,
        }
    }

    /// Bytes of one block of a group.
    pub const fn group_block_bytes(self) -> usize {
        match self {
            InterleavedFormat::Q8_0 => 2 * ROW_GROUP + 8 * 64,
            InterleavedFormat::Q5_0 => 2 * ROW_GROUP + 8 * (32 + 8),
        }
    }

    /// Bytes of the quants of one `k` (after the scales).
    pub(crate) const fn k_bytes(self) -> usize {
        match self {
            InterleavedFormat::Q8_0 => 64,
            InterleavedFormat::Q5_0 => 40,
        }
    }
}

/// A matrix of `rows x cols` in groups of 16 interleaved rows (the last group padded with zero rows).
pub struct InterleavedRows {
    format: InterleavedFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for InterleavedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InterleavedRows({:?}, {} x {})", self.format, self.rows, self.cols)
    }
}

impl InterleavedRows {
    /// Repacks `rows` rows of `cols` elements of `ty` (Q8_0 or Q5_0, GGML's layout). `done(bytes)` is called as
    /// the source is consumed in order, with the length of the prefix of `src` no longer needed (callers that
    /// mapped the source can release those pages).
    pub fn repack(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        src: &[u8],
        done: &mut dyn FnMut(usize),
    ) -> Result<InterleavedRows, QuantError> {
        let format = InterleavedFormat::of(ty).ok_or(QuantError::Unsupported(ty))?;
        let row_bytes = ty.row_bytes(cols).ok_or(QuantError::BadLength { ty, n: cols })?;
        if src.len() != rows * row_bytes {
            return Err(QuantError::BadBufferLength { ty, n: rows * cols, expected: rows * row_bytes, got: src.len() });
        }
        let (blocks, gbb, kb) = (cols / QK, format.group_block_bytes(), format.k_bytes());
        let groups = rows.div_ceil(ROW_GROUP);
        let mut data = vec![0u8; groups * blocks * gbb];
        let group_bytes = blocks * gbb;
        for (g, out) in data.chunks_exact_mut(group_bytes).enumerate() {
            for r in 0..ROW_GROUP.min(rows - g * ROW_GROUP) {
                let row = &src[(g * ROW_GROUP + r) * row_bytes..][..row_bytes];
                for (block, dst) in row.chunks_exact(ty.type_size()).zip(out.chunks_exact_mut(gbb)) {
                    dst[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                    let runs = &mut dst[2 * ROW_GROUP..];
                    match format {
                        // Dword `k` of the row goes to bytes `4r..4r + 4` of run `k`.
                        InterleavedFormat::Q8_0 => {
                            for (k, run) in runs.chunks_exact_mut(kb).enumerate() {
                                run[4 * r..4 * r + 4].copy_from_slice(&block[2 + 4 * k..6 + 4 * k]);
                            }
                        }
                        // Value `j = 4r + e` of run `k`: its nibble in byte `j % 32` (high half for `j >= 32`),
                        // its fifth bit at bit `j % 8` of byte `32 + j / 8`. GGML's 5-bit value is already
                        // `q + 16`: the nibble of element `i` is the low half of byte `i` (high half of byte
                        // `i - 16` from 16 on) and its fifth bit is bit `i` of `qh`.
                        InterleavedFormat::Q5_0 => {
                            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                            let qs = &block[6..6 + QK / 2];
                            let (at, shift) = (4 * (r % 8), 4 * (r / 8));
                            for (k, run) in runs.chunks_exact_mut(kb).enumerate() {
                                for e in 0..4 {
                                    let i = 4 * k + e;
                                    let nibble = if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 };
                                    run[at + e] |= nibble << shift;
                                }
                                run[32 + r / 2] |= (((qh >> (4 * k)) & 0x0f) as u8) << (4 * (r % 2));
                            }
                        }
                    }
                }
            }
            done(((g + 1) * ROW_GROUP).min(rows) * row_bytes);
        }
        Ok(InterleavedRows { format, rows, cols, data })
    }

    pub fn format(&self) -> InterleavedFormat {
        self.format
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

    /// The signed quant of row `r` (within its group), element `4 k + e` of block `blk` (a group block).
    fn quant(format: InterleavedFormat, blk: &[u8], r: usize, k: usize, e: usize) -> i32 {
        let run = &blk[2 * ROW_GROUP + format.k_bytes() * k..][..format.k_bytes()];
        let j = 4 * r + e;
        match format {
            InterleavedFormat::Q8_0 => run[j] as i8 as i32,
            InterleavedFormat::Q5_0 => {
                let lo = (run[j % 32] >> (4 * (j / 32))) & 0x0f;
                let hi = (run[32 + j / 8] >> (j % 8)) & 1;
                (lo | hi << 4) as i32 - 16
            }
        }
    }

    /// Row `r` decoded to f32 (`d * q`, as the GGML format decodes it).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {} x {}", self.rows, self.cols);
        let (blocks, gbb) = (self.cols / QK, self.format.group_block_bytes());
        let group = &self.data[(r / ROW_GROUP) * blocks * gbb..][..blocks * gbb];
        let rr = r % ROW_GROUP;
        for (b, o) in out.chunks_exact_mut(QK).enumerate() {
            let blk = &group[b * gbb..][..gbb];
            let d = half::f16::from_le_bytes([blk[2 * rr], blk[2 * rr + 1]]).to_f32();
            for (i, o) in o.iter_mut().enumerate() {
                *o = d * Self::quant(self.format, blk, rr, i / 4, i % 4) as f32;
            }
        }
    }

    /// The dots of the rows of `groups` with every token of `acts`: `tile[t * w + i]` for token `t` and row
    /// `groups.start * 16 + i`, where `w = 16 * groups.len()` (padding rows included, as zeros).
    pub fn dot_groups(&self, groups: Range<usize>, acts: &InterleavedActs, tile: &mut [f32]) {
        let (blocks, gbb) = (self.cols / QK, self.format.group_block_bytes());
        assert!(groups.end <= self.groups(), "groups {groups:?} of {}", self.groups());
        assert_eq!(acts.blocks, blocks, "activations of another width");
        assert_eq!(tile.len(), acts.n_tokens * ROW_GROUP * groups.len(), "tile size");
        let w = &self.data[groups.start * blocks * gbb..groups.end * blocks * gbb];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::has_avx512_vnni() {
                // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; lengths were checked above.
                unsafe { crate::x86::interleaved::dot_groups_vnni(self.format, w, blocks, acts, tile) };
                return;
            }
            if crate::simd_level() >= crate::SimdLevel::Avx2 {
                // SAFETY: the CPU has AVX2, FMA and F16C; lengths were checked above.
                unsafe { crate::x86::interleaved::dot_groups_avx2(self.format, w, blocks, acts, tile) };
                return;
            }
        }
        dot_groups_scalar(self.format, w, blocks, acts, tile);
    }
}

/// Q8_0 activations laid out for the interleaved kernels: per token and block the f32 scale, the sum of the
/// quants (for the kernels that take the weights as unsigned), and the 32 quants.
#[derive(Default)]
pub struct InterleavedActs {
    pub(crate) n_tokens: usize,
    pub(crate) blocks: usize,
    pub(crate) d: Vec<f32>,
    pub(crate) sum: Vec<i32>,
    pub(crate) qs: Vec<u8>,
    row: Vec<u8>,
}

impl InterleavedActs {
    /// Quantizes `x` (tokens of `cols` values) to Q8_0 exactly as the GGML kernels' activations are.
    pub fn quantize(&mut self, x: &[f32], cols: usize) -> Result<(), QuantError> {
        let ty = GgmlType::Q8_0;
        if cols == 0 || !cols.is_multiple_of(QK) || !x.len().is_multiple_of(cols) {
            return Err(QuantError::BadLength { ty, n: cols });
        }
        let q8 = quant_format(ty)?;
        self.n_tokens = x.len() / cols;
        self.blocks = cols / QK;
        let n = self.n_tokens * self.blocks;
        self.d.resize(n, 0.0);
        self.sum.resize(n, 0);
        self.qs.resize(n * QK, 0);
        self.row.resize(self.blocks * 34, 0);
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            q8.quantize_row(xt, &mut self.row)?;
            for (b, block) in self.row.chunks_exact(34).enumerate() {
                let i = t * self.blocks + b;
                self.d[i] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                self.sum[i] = block[2..].iter().map(|&q| q as i8 as i32).sum::<i32>();
                self.qs[i * QK..(i + 1) * QK].copy_from_slice(&block[2..]);
            }
        }
        Ok(())
    }
}

/// The scalar twin of the kernels: per row and token, `acc = fma(d_w * d_a, block sum, acc)` in block order.
pub(crate) fn dot_groups_scalar(
    format: InterleavedFormat,
    w: &[u8],
    blocks: usize,
    acts: &InterleavedActs,
    tile: &mut [f32],
) {
    let gbb = format.group_block_bytes();
    let groups = w.len() / (blocks * gbb);
    let width = groups * ROW_GROUP;
    for (g, gw) in w.chunks_exact(blocks * gbb).enumerate() {
        for t in 0..acts.n_tokens {
            for r in 0..ROW_GROUP {
                let mut acc = 0.0f32;
                for b in 0..blocks {
                    let blk = &gw[b * gbb..][..gbb];
                    let dw = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
                    let i = t * blocks + b;
                    let a = &acts.qs[i * QK..(i + 1) * QK];
                    let mut sum = 0i32;
                    for k in 0..QK / 4 {
                        for e in 0..4 {
                            sum += InterleavedRows::quant(format, blk, r, k, e) * a[4 * k + e] as i8 as i32;
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
pub(crate) mod tests {
    use super::*;
    use crate::test_data::TestRng;

    pub(crate) fn ggml_rows(rng: &mut TestRng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let f = quant_format(ty).unwrap();
        let rb = ty.row_bytes(cols).unwrap();
        let mut out = vec![0u8; rows * rb];
        for row in out.chunks_exact_mut(rb) {
            f.quantize_row(&rng.row(cols), row).unwrap();
        }
        out
    }

    /// The 32 quants of a GGML block as signed values.
    fn block_quants(format: InterleavedFormat, block: &[u8]) -> [i8; QK] {
        let mut q = [0i8; QK];
        match format {
            InterleavedFormat::Q8_0 => q.iter_mut().zip(&block[2..34]).for_each(|(q, &b)| *q = b as i8),
            InterleavedFormat::Q5_0 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                for j in 0..QK / 2 {
                    let (lo, hi) = (block[6 + j] & 0x0f, block[6 + j] >> 4);
                    q[j] = ((lo | (((high >> j) & 1) as u8) << 4) as i8) - 16;
                    q[j + 16] = ((hi | (((high >> (j + 16)) & 1) as u8) << 4) as i8) - 16;
                }
            }
        }
        q
    }

    /// The layout of the module's doc written value by value from decoded quants: the repacking (which moves
    /// GGML's bytes and bits directly) must give the same bytes.
    #[test]
    fn repacking_writes_the_documented_layout() {
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let mut rng = TestRng::new(9);
            let (rows, cols) = (37, 160);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            let format = InterleavedFormat::of(ty).unwrap();
            let (rb, gbb, kb) = (ty.row_bytes(cols).unwrap(), format.group_block_bytes(), format.k_bytes());
            let blocks = cols / QK;
            let mut want = vec![0u8; rows.div_ceil(ROW_GROUP) * blocks * gbb];
            for r in 0..rows {
                let (g, rr) = (r / ROW_GROUP, r % ROW_GROUP);
                for (b, block) in src[r * rb..(r + 1) * rb].chunks_exact(ty.type_size()).enumerate() {
                    let dst = &mut want[(g * blocks + b) * gbb..][..gbb];
                    dst[2 * rr..2 * rr + 2].copy_from_slice(&block[..2]);
                    let q = block_quants(format, block);
                    for k in 0..QK / 4 {
                        let run = &mut dst[2 * ROW_GROUP + kb * k..][..kb];
                        for e in 0..4 {
                            let (j, v) = (4 * rr + e, q[4 * k + e]);
                            match format {
                                InterleavedFormat::Q8_0 => run[j] = v as u8,
                                InterleavedFormat::Q5_0 => {
                                    let u = (v + 16) as u8;
                                    run[j % 32] |= (u & 0x0f) << (4 * (j / 32));
                                    run[32 + j / 8] |= ((u >> 4) & 1) << (j % 8);
                                }
                            }
                        }
                    }
                }
            }
            let m = InterleavedRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
            assert!(m.data[..] == want[..], "{ty}: repacked bytes differ from the documented layout");
        }
    }

    #[test]
    fn repacking_keeps_every_value() {
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let mut rng = TestRng::new(5);
            let (rows, cols) = (21, 96);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            let rb = ty.row_bytes(cols).unwrap();
            let mut released = Vec::new();
            let m = InterleavedRows::repack(ty, rows, cols, &src, &mut |b| released.push(b)).unwrap();
            assert_eq!(m.groups(), 2);
            assert_eq!(released, [16 * rb, 21 * rb]);
            assert_eq!(m.bytes(), 2 * 16 * rb, "{ty}: as many bytes as GGML's (with the padding rows)");
            let f = quant_format(ty).unwrap();
            let (mut want, mut got) = (vec![0.0f32; cols], vec![0.0f32; cols]);
            for r in 0..rows {
                f.dequantize_row(&src[r * rb..(r + 1) * rb], &mut want);
                m.dequantize_row(r, &mut got);
                assert_eq!(got, want, "{ty} row {r}");
            }
            assert!(InterleavedRows::repack(ty, rows, cols, &src[1..], &mut |_| {}).is_err());
            assert!(InterleavedRows::repack(ty, rows, 100, &src, &mut |_| {}).is_err());
        }
        assert!(InterleavedRows::repack(GgmlType::Q4_0, 1, 32, &[0; 18], &mut |_| {}).is_err());
    }

    /// The scalar twin is within rounding of the GGML dot products of the same rows (only the order of the
    /// float additions differs), and padding rows give zeros.
    #[test]
    fn scalar_twin_is_within_rounding_of_ggml_dots() {
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let mut rng = TestRng::new(9);
            let (rows, cols, tokens) = (40, 640, 3);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            let m = InterleavedRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
            let x: Vec<f32> = (0..tokens).flat_map(|_| rng.row(cols)).collect();
            let mut acts = InterleavedActs::default();
            acts.quantize(&x, cols).unwrap();
            let mut tile = vec![0.0; tokens * 48];
            dot_groups_scalar(m.format(), &m.data, cols / 32, &acts, &mut tile);
            let f = quant_format(ty).unwrap();
            let q8 = quant_format(GgmlType::Q8_0).unwrap();
            let (rb, ab) = (ty.row_bytes(cols).unwrap(), GgmlType::Q8_0.row_bytes(cols).unwrap());
            let mut qa = vec![0u8; ab];
            for t in 0..tokens {
                q8.quantize_row(&x[t * cols..(t + 1) * cols], &mut qa).unwrap();
                for r in 0..rows {
                    let want = f.vec_dot(cols, &src[r * rb..(r + 1) * rb], &qa);
                    let got = tile[t * 48 + r];
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{ty} ({t}, {r}): {got} vs {want}");
                }
                assert!(tile[t * 48 + 40..t * 48 + 48].iter().all(|&v| v == 0.0), "padding rows");
            }
        }
    }
}
