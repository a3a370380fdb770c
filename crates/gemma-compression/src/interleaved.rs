//! The 32-element block formats (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1, IQ4_NL) repacked with 16 rows interleaved, for
//! products with several tokens at once (a batched decode step, a prefill) and with one.
//!
//! In GGML's layout each row's blocks lie one after another, so a SIMD lane can only hold part of one row's
//! block: every 64 multiply-adds end in a float conversion and a scaled add. Here block `b` of 16 rows is
//! stored as their 16 f16 scales followed by their quants 4 at a time (dword `k` of rows 0..16 together), so
//! one 512-bit integer dot product advances the block sums of all 16 rows, and the conversion and scaled add
//! happen once per block for 16 rows. The stored codes are the format's own, unchanged (Q8_0 signed, the
//! others GGML's unsigned `u`: Q4_0 `q + 8`, Q5_0 `q + 16`, Q4_1 and Q5_1 `q`, IQ4_NL the 4-bit index into
//! [`KVALUES`], `q = KVALUES[u]`), and the block sums exact; the kernels take the offset of Q4_0/Q5_0 back out
//! as `8` or `16` times the activations' block sum, and decode IQ4_NL's indices by a table lookup. Per row
//! and token the block products are added in block order, as the scalar twin does:
//! - `acc = fma(d_w * d_a, isum, acc)`, with `isum` the integer dot of the signed quants and the activations;
//! - Q4_1 and Q5_1 then add the offset term, `acc = fma(m_w, d_a * sum_a, acc)`, where `sum_a` is the integer
//!   sum of the activations' quants and `d_a * sum_a` one f32 product of the f16-decoded activation scale and
//!   that sum (exact as f32: `|sum_a| <= 4064`). GGML instead rounds `s = d * sum` to f16 in its Q8_1
//!   activations, so on these formats the result differs from [`crate::QuantFormat::dot_rows`] by that
//!   rounding as well as by the order of the float additions; elsewhere only by the order.
//!
//! Layout of one block of a group: 16 f16 scales `d`, for Q4_1 and Q5_1 then 16 f16 offsets `m`, then per `k`
//! in 0..8 the 64 codes `j = r * 4 + e` of dword `k` of each row `r`:
//! - Q8_0: the 64 signed bytes (544 bytes per group block, as 16 GGML blocks);
//! - Q4_0, Q4_1, IQ4_NL: 32 bytes of nibbles, byte `m` holding code `m` in its low nibble and code `m + 32` in its
//!   high one (288, 320 and 288 bytes, as GGML);
//! - Q5_0, Q5_1: the low four bits of the 5-bit codes as those 32 bytes of nibbles, then a 64-bit word of
//!   their fifth bits, bit `j` for code `j` (352 and 384 bytes, as GGML).

use std::ops::Range;

use crate::iq4::KVALUES;
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
    Q4_0,
    Q4_1,
    Q5_1,
    /// Q4_0's layout with the nibbles indices into [`KVALUES`].
    #[allow(non_camel_case_types)] // GGML's name, as `GgmlType::IQ4_NL`
    IQ4_NL,
}

impl InterleavedFormat {
    pub fn of(ty: GgmlType) -> Option<InterleavedFormat> {
        match ty {
            GgmlType::Q8_0 => Some(InterleavedFormat::Q8_0),
            GgmlType::Q5_0 => Some(InterleavedFormat::Q5_0),
            GgmlType::Q4_0 => Some(InterleavedFormat::Q4_0),
            GgmlType::Q4_1 => Some(InterleavedFormat::Q4_1),
            GgmlType::Q5_1 => Some(InterleavedFormat::Q5_1),
            GgmlType::IQ4_NL => Some(InterleavedFormat::IQ4_NL),
            _ => None,
        }
    }

    /// Whether the blocks carry an offset `m` (value `d * q + m`).
    pub(crate) const fn has_min(self) -> bool {
        matches!(self, InterleavedFormat::Q4_1 | InterleavedFormat::Q5_1)
    }

    /// Bits of a code: 8, 5 or 4.
    pub(crate) const fn bits(self) -> u32 {
        match self {
            InterleavedFormat::Q8_0 => 8,
            InterleavedFormat::Q5_0 | InterleavedFormat::Q5_1 => 5,
            InterleavedFormat::Q4_0 | InterleavedFormat::Q4_1 | InterleavedFormat::IQ4_NL => 4,
        }
    }

    /// Whether the codes are indices into [`KVALUES`] (IQ4_NL).
    pub(crate) const fn is_table(self) -> bool {
        matches!(self, InterleavedFormat::IQ4_NL)
    }

    /// The format with codes of `bits` bits, with or without offsets, table-decoded or not (the kernels'
    /// const parameters).
    pub(crate) const fn from_bits(bits: u32, min: bool, table: bool) -> InterleavedFormat {
        match (bits, min, table) {
            (8, false, false) => InterleavedFormat::Q8_0,
            (5, false, false) => InterleavedFormat::Q5_0,
            (4, false, false) => InterleavedFormat::Q4_0,
            (4, true, false) => InterleavedFormat::Q4_1,
            (5, true, false) => InterleavedFormat::Q5_1,
            (4, false, true) => InterleavedFormat::IQ4_NL,
            _ => panic!("no such interleaved format"),
        }
    }

    /// What a stored code adds to the signed quant: `q = code + offset` (Q8_0's codes are already signed;
    /// IQ4_NL's are looked up instead).
    pub(crate) const fn offset(self) -> i32 {
        match self {
            InterleavedFormat::Q5_0 => -16,
            InterleavedFormat::Q4_0 => -8,
            InterleavedFormat::Q8_0 | InterleavedFormat::Q4_1 | InterleavedFormat::Q5_1 | InterleavedFormat::IQ4_NL => {
                0
            }
        }
    }

    /// Bytes of one block of a group.
    pub const fn group_block_bytes(self) -> usize {
        self.head_bytes() + 8 * self.k_bytes()
    }

    /// Bytes of the scales (and offsets) that start a group block.
    pub(crate) const fn head_bytes(self) -> usize {
        if self.has_min() {
            4 * ROW_GROUP
        } else {
            2 * ROW_GROUP
        }
    }

    /// Bytes of the codes of one `k` (after the head).
    pub(crate) const fn k_bytes(self) -> usize {
        match self.bits() {
            8 => 64,
            5 => 40,
            _ => 32,
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
    /// Repacks `rows` rows of `cols` elements of `ty` (one of the [`InterleavedFormat`]s, GGML's layout).
    /// `done(bytes)` is called as the source is consumed in order, with the length of the prefix of `src` no
    /// longer needed (callers that mapped the source can release those pages).
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
        let (blocks, gbb, kb, hb) = (cols / QK, format.group_block_bytes(), format.k_bytes(), format.head_bytes());
        // GGML's block: f16 d, f16 m (offset formats), the 32-bit fifth bits (5-bit formats), 16 bytes of nibbles.
        let ggml_head = if format.has_min() { 4 } else { 2 };
        let qs_at = ggml_head + if format.bits() == 5 { 4 } else { 0 };
        let groups = rows.div_ceil(ROW_GROUP);
        let mut data = vec![0u8; groups * blocks * gbb];
        let group_bytes = blocks * gbb;
        for (g, out) in data.chunks_exact_mut(group_bytes).enumerate() {
            for r in 0..ROW_GROUP.min(rows - g * ROW_GROUP) {
                let row = &src[(g * ROW_GROUP + r) * row_bytes..][..row_bytes];
                for (block, dst) in row.chunks_exact(ty.type_size()).zip(out.chunks_exact_mut(gbb)) {
                    dst[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                    if format.has_min() {
                        dst[2 * ROW_GROUP + 2 * r..][..2].copy_from_slice(&block[2..4]);
                    }
                    let runs = &mut dst[hb..];
                    if format == InterleavedFormat::Q8_0 {
                        // Dword `k` of the row goes to bytes `4r..4r + 4` of run `k`.
                        for (k, run) in runs.chunks_exact_mut(kb).enumerate() {
                            run[4 * r..4 * r + 4].copy_from_slice(&block[2 + 4 * k..6 + 4 * k]);
                        }
                        continue;
                    }
                    // Code `j = 4r + e` of run `k`: its nibble in byte `j % 32` (high half for `j >= 32`), its
                    // fifth bit (5-bit formats) at bit `j % 8` of byte `32 + j / 8`. In GGML's block the nibble
                    // of element `i` is the low half of byte `i` of the nibbles (high half of byte `i - 16` from
                    // 16 on) and its fifth bit is bit `i` of `qh`.
                    let qs = &block[qs_at..qs_at + QK / 2];
                    let five = format.bits() == 5;
                    let qh = if five {
                        u32::from_le_bytes([
                            block[ggml_head],
                            block[ggml_head + 1],
                            block[ggml_head + 2],
                            block[ggml_head + 3],
                        ])
                    } else {
                        0
                    };
                    let (at, shift) = (4 * (r % 8), 4 * (r / 8));
                    for (k, run) in runs.chunks_exact_mut(kb).enumerate() {
                        for e in 0..4 {
                            let i = 4 * k + e;
                            let nibble = if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 };
                            run[at + e] |= nibble << shift;
                        }
                        if five {
                            run[32 + r / 2] |= (((qh >> (4 * k)) & 0x0f) as u8) << (4 * (r % 2));
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

    /// The signed quant of row `r` (within its group), element `4 k + e` of block `blk` (a group block):
    /// its stored code plus the format's offset (IQ4_NL: the table value of the code).
    fn quant(format: InterleavedFormat, blk: &[u8], r: usize, k: usize, e: usize) -> i32 {
        let run = &blk[format.head_bytes() + format.k_bytes() * k..][..format.k_bytes()];
        let j = 4 * r + e;
        let code = match format.bits() {
            8 => run[j] as i8 as i32,
            bits => {
                let lo = (run[j % 32] >> (4 * (j / 32))) & 0x0f;
                let hi = if bits == 5 { (run[32 + j / 8] >> (j % 8)) & 1 } else { 0 };
                (lo | hi << 4) as i32
            }
        };
        if format.is_table() {
            return KVALUES[code as usize] as i32;
        }
        code + format.offset()
    }

    /// The f16 scale `d` and offset `m` (0 for formats without one) of row `r` of block `blk`.
    fn scale_min(format: InterleavedFormat, blk: &[u8], r: usize) -> (f32, f32) {
        let f16_at = |at: usize| half::f16::from_le_bytes([blk[at], blk[at + 1]]).to_f32();
        let m = if format.has_min() { f16_at(2 * ROW_GROUP + 2 * r) } else { 0.0 };
        (f16_at(2 * r), m)
    }

    /// Row `r` decoded to f32 (`q * d + m`, as the GGML format decodes it).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {} x {}", self.rows, self.cols);
        let (blocks, gbb) = (self.cols / QK, self.format.group_block_bytes());
        let group = &self.data[(r / ROW_GROUP) * blocks * gbb..][..blocks * gbb];
        let rr = r % ROW_GROUP;
        for (b, o) in out.chunks_exact_mut(QK).enumerate() {
            let blk = &group[b * gbb..][..gbb];
            let (d, m) = Self::scale_min(self.format, blk, rr);
            for (i, o) in o.iter_mut().enumerate() {
                *o = Self::quant(self.format, blk, rr, i / 4, i % 4) as f32 * d + m;
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
/// quants (for the kernels that take the weights as unsigned codes, and the offset term of Q4_1 and Q5_1),
/// and the 32 quants.
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

/// The scalar twin of the kernels: per row and token, in block order, `acc = fma(d_w * d_a, isum, acc)` and,
/// for the offset formats, `acc = fma(m_w, d_a * sum_a, acc)` (see the module's doc).
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
                    let (dw, mw) = InterleavedRows::scale_min(format, blk, r);
                    let i = t * blocks + b;
                    let a = &acts.qs[i * QK..(i + 1) * QK];
                    let mut isum = 0i32;
                    for k in 0..QK / 4 {
                        for e in 0..4 {
                            isum += InterleavedRows::quant(format, blk, r, k, e) * a[4 * k + e] as i8 as i32;
                        }
                    }
                    acc = (dw * acts.d[i]).mul_add(isum as f32, acc);
                    if format.has_min() {
                        acc = mw.mul_add(acts.d[i] * acts.sum[i] as f32, acc);
                    }
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

    /// Every format, and for each its GGML type.
    pub(crate) const ALL: [(InterleavedFormat, GgmlType); 6] = [
        (InterleavedFormat::Q8_0, GgmlType::Q8_0),
        (InterleavedFormat::Q5_0, GgmlType::Q5_0),
        (InterleavedFormat::Q4_0, GgmlType::Q4_0),
        (InterleavedFormat::Q4_1, GgmlType::Q4_1),
        (InterleavedFormat::Q5_1, GgmlType::Q5_1),
        (InterleavedFormat::IQ4_NL, GgmlType::IQ4_NL),
    ];

    /// The 32 codes of a GGML block as stored (Q8_0 signed, the others GGML's unsigned codes or indices), decoded from
    /// ggml-common.h's block layouts.
    fn block_codes(format: InterleavedFormat, block: &[u8]) -> [i32; QK] {
        let mut q = [0i32; QK];
        let head = if format.has_min() { 4 } else { 2 };
        match format.bits() {
            8 => q.iter_mut().zip(&block[2..34]).for_each(|(q, &b)| *q = b as i8 as i32),
            bits => {
                let (high, qs) = if bits == 5 {
                    (u32::from_le_bytes(block[head..head + 4].try_into().unwrap()), &block[head + 4..head + 20])
                } else {
                    (0, &block[head..head + 16])
                };
                for j in 0..QK / 2 {
                    q[j] = (qs[j] & 0x0f) as i32 | (((high >> j) & 1) << 4) as i32;
                    q[j + 16] = (qs[j] >> 4) as i32 | (((high >> (j + 16)) & 1) << 4) as i32;
                }
            }
        }
        q
    }

    /// The layout of the module's doc written value by value from decoded codes: the repacking (which moves
    /// GGML's bytes and bits directly) must give the same bytes.
    #[test]
    fn repacking_writes_the_documented_layout() {
        for (format, ty) in ALL {
            let mut rng = TestRng::new(9);
            let (rows, cols) = (37, 160);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            assert_eq!(InterleavedFormat::of(ty), Some(format));
            assert_eq!(InterleavedFormat::from_bits(format.bits(), format.has_min(), format.is_table()), format);
            let (rb, gbb, kb) = (ty.row_bytes(cols).unwrap(), format.group_block_bytes(), format.k_bytes());
            let head = if format.has_min() { 64 } else { 32 };
            let blocks = cols / QK;
            let mut want = vec![0u8; rows.div_ceil(ROW_GROUP) * blocks * gbb];
            for r in 0..rows {
                let (g, rr) = (r / ROW_GROUP, r % ROW_GROUP);
                for (b, block) in src[r * rb..(r + 1) * rb].chunks_exact(ty.type_size()).enumerate() {
                    let dst = &mut want[(g * blocks + b) * gbb..][..gbb];
                    dst[2 * rr..2 * rr + 2].copy_from_slice(&block[..2]);
                    if format.has_min() {
                        dst[32 + 2 * rr..32 + 2 * rr + 2].copy_from_slice(&block[2..4]);
                    }
                    let q = block_codes(format, block);
                    for k in 0..QK / 4 {
                        let run = &mut dst[head + kb * k..][..kb];
                        for e in 0..4 {
                            let (j, v) = (4 * rr + e, q[4 * k + e]);
                            if format.bits() == 8 {
                                run[j] = v as u8;
                            } else {
                                run[j % 32] |= (v as u8 & 0x0f) << (4 * (j / 32));
                                if format.bits() == 5 {
                                    run[32 + j / 8] |= ((v as u8 >> 4) & 1) << (j % 8);
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
        for (_, ty) in ALL {
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
        assert!(InterleavedRows::repack(GgmlType::Q8_1, 1, 32, &[0; 36], &mut |_| {}).is_err());
    }

    /// The scalar twin is within rounding of the GGML dot products of the same rows (only the order of the
    /// float additions differs, and for Q4_1 and Q5_1 GGML's f16 rounding of `d_a * sum_a`), and padding rows
    /// give zeros.
    #[test]
    fn scalar_twin_is_within_rounding_of_ggml_dots() {
        for (format, ty) in ALL {
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
            let act_ty = f.vec_dot_type();
            let qa_f = quant_format(act_ty).unwrap();
            let (rb, ab) = (ty.row_bytes(cols).unwrap(), act_ty.row_bytes(cols).unwrap());
            let mut qa = vec![0u8; ab];
            for t in 0..tokens {
                qa_f.quantize_row(&x[t * cols..(t + 1) * cols], &mut qa).unwrap();
                for r in 0..rows {
                    let want = f.vec_dot(cols, &src[r * rb..(r + 1) * rb], &qa);
                    // GGML's s = f16(d * sum_a) with the unrounded d: within 2^-10 of d_a * sum_a.
                    let s_rounding: f32 = if format.has_min() {
                        (0..cols / QK)
                            .map(|b| {
                                let blk = &m.data[((r / 16) * (cols / QK) + b) * format.group_block_bytes()..];
                                let i = t * (cols / QK) + b;
                                let mw = InterleavedRows::scale_min(format, blk, r % 16).1;
                                (mw * acts.d[i] * acts.sum[i] as f32).abs() / 1024.0
                            })
                            .sum()
                    } else {
                        0.0
                    };
                    let got = tile[t * 48 + r];
                    let tol = 1e-4 * (1.0 + want.abs()) + s_rounding;
                    assert!((got - want).abs() <= tol, "{ty} ({t}, {r}): {got} vs {want}");
                }
                assert!(tile[t * 48 + 40..t * 48 + 48].iter().all(|&v| v == 0.0), "padding rows");
            }
        }
    }

    /// The offset formats' twin against the exact sum of the decoded values (f64): only float rounding apart,
    /// since `d_a * sum_a` is the decoded activations' own block sum.
    #[test]
    fn offset_formats_are_within_rounding_of_the_exact_dot() {
        for ty in [GgmlType::Q4_1, GgmlType::Q5_1] {
            let mut rng = TestRng::new(4);
            let (rows, cols) = (16, 640);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            let m = InterleavedRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
            let x = rng.row(cols);
            let mut acts = InterleavedActs::default();
            acts.quantize(&x, cols).unwrap();
            let mut tile = vec![0.0; 16];
            dot_groups_scalar(m.format(), &m.data, cols / 32, &acts, &mut tile);
            let mut w = vec![0.0f32; cols];
            for (r, &got) in tile.iter().enumerate() {
                m.dequantize_row(r, &mut w);
                // `mag` bounds the terms the float additions round: |d q a| and |m a| apart.
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for (j, &wv) in w.iter().enumerate() {
                    let a = acts.d[j / QK] as f64 * acts.qs[j] as i8 as f64;
                    let blk = &m.data[(j / QK) * m.format().group_block_bytes()..];
                    let (d, mw) = InterleavedRows::scale_min(m.format(), blk, r);
                    let q = InterleavedRows::quant(m.format(), blk, r, (j % QK) / 4, j % 4);
                    exact += wv as f64 * a;
                    mag += ((d * q as f32).abs() + mw.abs()) as f64 * a.abs();
                }
                assert!((got as f64 - exact).abs() <= 4e-6 * mag, "{ty} row {r}: {got} vs {exact}");
            }
        }
    }
}
