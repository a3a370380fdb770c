//! Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K and Q3_K weights repacked with 16 rows interleaved, the super-block twin of
//! [`crate::interleaved`].
//!
//! In GGML's layout a SIMD register holds part of one row's super-block, and the register-tiled kernels spend
//! as long unpacking its scales and reducing its lanes as multiplying. Here super-block `b` of 16 rows is
//! stored together, each dword of quants next to the same dword of the 15 other rows, so one 512-bit integer
//! dot product advances a sub-block sum of all 16 rows, one multiply applies their 16 sub-block scales, and
//! the float work happens once per super-block for 16 rows. The activations are GGML's Q8_K rows, unchanged;
//! the values and every integer sum are the format's own, so a result differs from
//! [`crate::QuantFormat::dot_rows`] only in the order of the float additions. Per row and token:
//! - Q4_K: `isum = sum_j sc_j * dot_j(q, a)`, `mins = sum_j m_j * (bsum_2j + bsum_2j+1)`, then
//!   `acc = fma(d * d_a, isum, acc)` and `acc = fma(-(dmin * d_a), mins, acc)`, super-block by super-block;
//! - Q5_K: as Q4_K, `q` five bits;
//! - Q6_K: with the quants stored as `q + 32`, `isum = sum_j sc_j * dot_j(q + 32, a) - 32 sum_j sc_j * bsum_j`,
//!   then `acc = fma(d * d_a, isum, acc)`;
//! - IQ4_XS: `q` the table value ([`crate::iq4`]'s `kvalues_iq4nl`) of the stored 4-bit index, `sc_j = ls_j - 32`,
//!   `isum = sum_j sc_j * dot_j(q, a)`, then `acc = fma(d * d_a, isum, acc)` (the VNNI kernel looks up `q + 128`,
//!   unsigned as `vpdpbusd` wants, and takes `128 sum_j sc_j * (bsum_2j + bsum_2j+1)` back out);
//! - Q2_K: 16 sub-blocks of 16, `isum = sum_j sc_j * dot_j(q, a)`, `mins = sum_j m_j * bsum_j` (Q8_K's block
//!   sums are per 16 values, Q2_K's sub-blocks), then the two fmas of Q4_K;
//! - Q3_K: 16 sub-blocks of 16, `sc_j` the signed 6-bit scale (`-32..=31`), the quants stored unsigned as
//!   `u = q + 4` in `0..=7` (GGML's low two bits and its high bit, which is set for `q >= 0`),
//!   `isum = sum_j sc_j * dot_j(u, a) - 4 sum_j sc_j * bsum_j`, then `acc = fma(d * d_a, isum, acc)`.
//!
//! Layout of one super-block of a group (`r` is the row in the group). A run is the 64 values `v = 4 r + e`
//! (element `4 k + e` of a sub-block, row `r`) of dword `k` of the 16 rows; runs are stored in pairs of 64
//! bytes, byte `v` holding the low four bits of value `v` of the first run in its low nibble and of the second
//! in its high nibble, so one load and two masks unpack two runs.
//! - Q4_K (2,496 bytes, GGML's 16 x 144 = 2,304): 16 f16 `d`; 16 f16 `dmin`; the 6-bit scales as bytes,
//!   sub-block `j` at `64 + 16 j + r`; the mins as i16 pairs `(m_2p, m_2p+1)` at `192 + 64 p + 4 r`; then the
//!   run pairs `(k, k + 1)` (k even) of sub-block `j` (32 elements, 8 runs) at `448 + 256 j + 32 k`.
//! - Q5_K (3,008 bytes, GGML's 16 x 176 = 2,816): Q4_K's header; then per sub-block `j` 320 bytes at
//!   `448 + 320 j`: the low four bits as Q4_K's run pairs (256 bytes), then 64 bytes of top bits, bit `k` of
//!   byte `v` being bit 4 of value `v` of run `k`.
//! - Q6_K (3,616 bytes, GGML's 3,360): 16 f16 `d`; the signed scales as i16 pairs `(sc_2p, sc_2p+1)` at
//!   `32 + 64 p + 4 r`; then per sub-block `j` (16 elements, 4 runs) 192 bytes at `544 + 192 j`: the run pairs
//!   (0, 1) and (2, 3), then 64 bytes of top bits, bits `2 k` and `2 k + 1` of byte `v` being bits 4 and 5 of
//!   value `v` of run `k`.
//! - IQ4_XS (2,336 bytes, GGML's 16 x 136 = 2,176): 16 f16 `d`; the signed scales `ls - 32` as i16 pairs
//!   `(sc_2p, sc_2p+1)` at `32 + 64 p + 4 r`; then the run pairs `(k, k + 1)` (k even) of the 4-bit table
//!   indices of sub-block `j` (32 elements, 8 runs) at `288 + 256 j + 32 k`, as Q4_K's.
//! - Q2_K (1,600 bytes, GGML's 16 x 84 = 1,344): 16 f16 `d`; 16 f16 `dmin`; the 4-bit scales as bytes,
//!   sub-block `j` at `64 + 16 j + r`; the 4-bit mins as byte pairs `(m_2p, m_2p+1)` at `320 + 32 p + 2 r`
//!   (widened to the i16 pairs of `vpdpwssd` in the kernel); then sub-block `j` (16 elements, 4 runs) in 64
//!   bytes at `576 + 64 j`, bits `2 k` and `2 k + 1` of byte `v` being value `v` of run `k`, so one load and
//!   four shift-and-masks unpack the sub-block.
//! - Q3_K (1,824 bytes, GGML's 16 x 110 = 1,760): 16 f16 `d`; the signed scales as byte pairs
//!   `(sc_2p, sc_2p+1)` at `32 + 32 p + 2 r` (sign-extended to the i16 pairs of `vpdpwssd` in the kernel, which
//!   also gives each sub-block's scales by a shift); then per sub-block pair `(2p, 2p + 1)` 192 bytes at
//!   `288 + 192 p`: the low two bits of sub-block `2p` as Q2_K stores its quants (64 bytes, run `k` in bits
//!   `2 k` and `2 k + 1` of byte `v`), those of sub-block `2p + 1` likewise, then 64 bytes of high bits, bit
//!   `4 s + k` of byte `v` being the high bit (bit 2 of `u`) of value `v` of run `k` of sub-block `2p + s`.

use std::ops::Range;

use crate::iq4::{xs_scale, KVALUES};
use crate::k_quants::{scales_mins_k4, scales_q3_k, Q8K_BSUMS, Q8K_BYTES, Q8K_QS, QK_K};
use crate::{GgmlType, QuantError};

/// Rows per interleaved group.
pub const ROW_GROUP: usize = 16;

/// The super-block formats that can be interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterleavedKFormat {
    Q4K,
    Q5K,
    Q6K,
    #[allow(non_camel_case_types)] // GGML's name, as `GgmlType::IQ4_XS`
    IQ4_XS,
    Q2K,
    Q3K,
}

impl InterleavedKFormat {
    pub fn of(ty: GgmlType) -> Option<InterleavedKFormat> {
        match ty {
            GgmlType::Q4K => Some(InterleavedKFormat::Q4K),
            GgmlType::Q5K => Some(InterleavedKFormat::Q5K),
            GgmlType::Q6K => Some(InterleavedKFormat::Q6K),
            GgmlType::IQ4_XS => Some(InterleavedKFormat::IQ4_XS),
            GgmlType::Q2K => Some(InterleavedKFormat::Q2K),
            GgmlType::Q3K => Some(InterleavedKFormat::Q3K),
            _ => None,
        }
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            InterleavedKFormat::Q4K => GgmlType::Q4K,
            InterleavedKFormat::Q5K => GgmlType::Q5K,
            InterleavedKFormat::Q6K => GgmlType::Q6K,
            InterleavedKFormat::IQ4_XS => GgmlType::IQ4_XS,
            InterleavedKFormat::Q2K => GgmlType::Q2K,
            InterleavedKFormat::Q3K => GgmlType::Q3K,
        }
    }

    /// Bytes of one super-block of a group.
    pub const fn group_block_bytes(self) -> usize {
        match self {
            InterleavedKFormat::Q4K => Q4K_QS + 8 * Q4K_SUB,
            InterleavedKFormat::Q5K => Q4K_QS + 8 * Q5K_SUB,
            InterleavedKFormat::Q6K => Q6K_QS + 16 * Q6K_SUB,
            InterleavedKFormat::IQ4_XS => XS_QS + 8 * Q4K_SUB,
            InterleavedKFormat::Q2K => Q2K_QS + 16 * Q2K_SUB,
            InterleavedKFormat::Q3K => Q3K_QS + 8 * Q3K_PAIR,
        }
    }
}

// Offsets within a group super-block (see the module's doc).
pub(crate) const Q4K_DMIN: usize = 32;
pub(crate) const Q4K_SC: usize = 64;
pub(crate) const Q4K_MIN: usize = 192;
pub(crate) const Q4K_QS: usize = 448;
/// Bytes of one sub-block's runs.
pub(crate) const Q4K_SUB: usize = 256;
/// Bytes of one Q5_K sub-block's runs and top bits (the header is Q4_K's).
pub(crate) const Q5K_SUB: usize = 320;
pub(crate) const Q6K_SC: usize = 32;
pub(crate) const Q6K_QS: usize = 544;
pub(crate) const Q6K_SUB: usize = 192;
pub(crate) const XS_SC: usize = 32;
pub(crate) const XS_QS: usize = 288;
pub(crate) const Q2K_DMIN: usize = 32;
pub(crate) const Q2K_SC: usize = 64;
pub(crate) const Q2K_MIN: usize = 320;
pub(crate) const Q2K_QS: usize = 576;
pub(crate) const Q2K_SUB: usize = 64;
pub(crate) const Q3K_SC: usize = 32;
pub(crate) const Q3K_QS: usize = 288;
/// Bytes of one sub-block pair's low bits and high bits.
pub(crate) const Q3K_PAIR: usize = 192;

/// A matrix of `rows x cols` in groups of 16 interleaved rows (the last group padded with zero rows).
pub struct InterleavedKRows {
    format: InterleavedKFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for InterleavedKRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InterleavedKRows({:?}, {} x {})", self.format, self.rows, self.cols)
    }
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn or_word(b: &mut [u8], at: usize, v: u32) {
    let w = word(b, at) | v;
    b[at..at + 4].copy_from_slice(&w.to_le_bytes());
}

impl InterleavedKRows {
    /// Repacks `rows` rows of `cols` elements of `ty` (Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K or Q3_K, GGML's layout). `done(bytes)` is called as
    /// the source is consumed in order, with the length of the prefix of `src` no longer needed.
    pub fn repack(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        src: &[u8],
        done: &mut dyn FnMut(usize),
    ) -> Result<InterleavedKRows, QuantError> {
        let format = InterleavedKFormat::of(ty).ok_or(QuantError::Unsupported(ty))?;
        let row_bytes = ty.row_bytes(cols).ok_or(QuantError::BadLength { ty, n: cols })?;
        if src.len() != rows * row_bytes {
            return Err(QuantError::BadBufferLength { ty, n: rows * cols, expected: rows * row_bytes, got: src.len() });
        }
        let (blocks, gbb) = (cols / QK_K, format.group_block_bytes());
        let mut data = vec![0u8; rows.div_ceil(ROW_GROUP) * blocks * gbb];
        for (g, out) in data.chunks_exact_mut(blocks * gbb).enumerate() {
            for r in 0..ROW_GROUP.min(rows - g * ROW_GROUP) {
                let row = &src[(g * ROW_GROUP + r) * row_bytes..][..row_bytes];
                for (block, dst) in row.chunks_exact(ty.type_size()).zip(out.chunks_exact_mut(gbb)) {
                    match format {
                        InterleavedKFormat::Q4K => repack_q4_k(block, dst, r),
                        InterleavedKFormat::Q5K => repack_q5_k(block, dst, r),
                        InterleavedKFormat::Q6K => repack_q6_k(block, dst, r),
                        InterleavedKFormat::IQ4_XS => repack_iq4_xs(block, dst, r),
                        InterleavedKFormat::Q2K => repack_q2_k(block, dst, r),
                        InterleavedKFormat::Q3K => repack_q3_k(block, dst, r),
                    }
                }
            }
            done(((g + 1) * ROW_GROUP).min(rows) * row_bytes);
        }
        Ok(InterleavedKRows { format, rows, cols, data })
    }

    pub fn format(&self) -> InterleavedKFormat {
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

    /// Row `r` decoded to f32, exactly as GGML's format decodes it (`d * sc * q - dmin * m`, no `m` but for
    /// Q4_K, Q5_K and Q2_K).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {} x {}", self.rows, self.cols);
        let (blocks, gbb) = (self.cols / QK_K, self.format.group_block_bytes());
        let group = &self.data[(r / ROW_GROUP) * blocks * gbb..][..blocks * gbb];
        let rr = r % ROW_GROUP;
        for (blk, o) in group.chunks_exact(gbb).zip(out.chunks_exact_mut(QK_K)) {
            let h = header(self.format, blk, rr);
            let sub = QK_K / h.sub_blocks;
            for (j, o) in o.chunks_exact_mut(sub).enumerate() {
                let dl = h.d * h.scale[j] as f32;
                let ml = h.dmin * h.min[j] as f32;
                for (i, y) in o.iter_mut().enumerate() {
                    *y = dl * quant(self.format, blk, rr, j, i) as f32 - ml;
                }
            }
        }
    }

    /// The dots of the rows of `groups` with every token of `acts` (Q8_K rows of `cols`): `tile[t * w + i]` for
    /// token `t` and row `groups.start * 16 + i`, where `w = 16 * groups.len()` (padding rows included, as
    /// zeros).
    pub fn dot_groups(&self, groups: Range<usize>, acts: &[u8], tile: &mut [f32]) {
        let (blocks, gbb) = (self.cols / QK_K, self.format.group_block_bytes());
        assert!(groups.end <= self.groups(), "groups {groups:?} of {}", self.groups());
        let w = &self.data[groups.start * blocks * gbb..groups.end * blocks * gbb];
        let n_tokens = check(self.format, w, blocks, acts, tile);
        #[cfg(target_arch = "x86_64")]
        {
            if crate::has_avx512_vnni() {
                // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; `check` sized the weights, activations and tile.
                unsafe { crate::x86::interleaved_k::dot_groups_vnni(self.format, w, blocks, acts, n_tokens, tile) };
                return;
            }
            if crate::simd_level() >= crate::SimdLevel::Avx2 {
                // SAFETY: the CPU has AVX2, FMA and F16C; as above.
                unsafe { crate::x86::interleaved_k::dot_groups_avx2(self.format, w, blocks, acts, n_tokens, tile) };
                return;
            }
        }
        dot_groups_scalar(self.format, w, blocks, acts, n_tokens, tile);
    }
}

/// Checks the lengths every kernel relies on (whole groups of `blocks` super-blocks, whole Q8_K rows, a tile
/// of every token by every row); returns the number of tokens.
pub(crate) fn check(format: InterleavedKFormat, w: &[u8], blocks: usize, acts: &[u8], tile: &[f32]) -> usize {
    let group_bytes = blocks * format.group_block_bytes();
    assert!(group_bytes > 0 && w.len().is_multiple_of(group_bytes), "whole groups");
    let a_row = blocks * Q8K_BYTES;
    assert!(acts.len().is_multiple_of(a_row), "whole Q8_K rows of {} super-blocks", blocks);
    let n_tokens = acts.len() / a_row;
    assert_eq!(tile.len(), n_tokens * (w.len() / group_bytes) * ROW_GROUP, "tile");
    n_tokens
}

/// Writes GGML Q4_K block `b` as row `r` of a group super-block.
fn repack_q4_k(b: &[u8], dst: &mut [u8], r: usize) {
    repack_k4_header(b, dst, r);
    repack_k4_nibbles(&b[16..144], dst, r, Q4K_SUB);
}

/// Writes GGML Q5_K block `b` (Q4_K's header, `qh[32]`, then Q4_K's `qs[128]`) as row `r` of a group
/// super-block.
fn repack_q5_k(b: &[u8], dst: &mut [u8], r: usize) {
    repack_k4_header(b, dst, r);
    repack_k4_nibbles(&b[48..176], dst, r, Q5K_SUB);
    // GGML: element `i` has its top bit in bit `i / 32` of `qh[i % 32]`.
    let qh = &b[16..48];
    for j in 0..8 {
        for k in 0..8 {
            let top = (word(qh, 4 * k) >> j) & 0x0101_0101;
            or_word(dst, Q4K_QS + Q5K_SUB * j + 256 + 4 * r, top << k);
        }
    }
}

/// Writes the header of GGML Q4_K or Q5_K block `b` (`d`, `dmin`, the 6-bit scales and mins) as row `r`.
fn repack_k4_header(b: &[u8], dst: &mut [u8], r: usize) {
    dst[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
    dst[Q4K_DMIN + 2 * r..Q4K_DMIN + 2 * r + 2].copy_from_slice(&b[2..4]);
    let (sc, mn) = scales_mins_k4(&b[4..16]);
    for j in 0..8 {
        dst[Q4K_SC + 16 * j + r] = sc[j];
    }
    for p in 0..4 {
        let at = Q4K_MIN + 64 * p + 4 * r;
        dst[at..at + 2].copy_from_slice(&(mn[2 * p] as u16).to_le_bytes());
        dst[at + 2..at + 4].copy_from_slice(&(mn[2 * p + 1] as u16).to_le_bytes());
    }
}

/// Writes the low nibbles `qs` of a GGML Q4_K or Q5_K block as row `r`'s run pairs, sub-block `j` at
/// `Q4K_QS + sub_bytes * j`.
fn repack_k4_nibbles(qs: &[u8], dst: &mut [u8], r: usize, sub_bytes: usize) {
    // GGML: byte `32 c + l` holds element `64 c + l` in its low nibble and `64 c + 32 + l` in its high one, so
    // sub-block `j` is the low (even `j`) or high (odd `j`) nibbles of bytes `32 (j / 2)..`.
    for j in 0..8 {
        for k in 0..8 {
            let nibbles = (word(qs, 32 * (j / 2) + 4 * k) >> (4 * (j % 2))) & 0x0f0f_0f0f;
            or_word(dst, Q4K_QS + sub_bytes * j + 64 * (k / 2) + 4 * r, nibbles << (4 * (k % 2)));
        }
    }
}

/// Writes GGML Q6_K block `b` as row `r` of a group super-block.
fn repack_q6_k(b: &[u8], dst: &mut [u8], r: usize) {
    dst[2 * r..2 * r + 2].copy_from_slice(&b[208..210]);
    let sc = &b[192..208];
    for p in 0..8 {
        let at = Q6K_SC + 64 * p + 4 * r;
        dst[at..at + 2].copy_from_slice(&(sc[2 * p] as i8 as i16).to_le_bytes());
        dst[at + 2..at + 4].copy_from_slice(&(sc[2 * p + 1] as i8 as i16).to_le_bytes());
    }
    // GGML: element `i` = (half, k4, l) = (i / 128, i % 128 / 32, i % 32) has its low four bits in byte
    // `64 half + 32 (k4 % 2) + l` of `ql` (high nibble for k4 >= 2) and its top two at bits `2 k4` of byte
    // `32 half + l` of `qh`. Four consecutive elements from a multiple of four share half, k4 and bit positions.
    let (ql, qh) = (&b[..128], &b[128..192]);
    for j in 0..16 {
        let sub = Q6K_QS + Q6K_SUB * j;
        for k in 0..4 {
            let i = 16 * j + 4 * k;
            let (half, k4, l) = (i / 128, i % 128 / 32, i % 32);
            let low = (word(ql, 64 * half + 32 * (k4 % 2) + l) >> (4 * (k4 / 2))) & 0x0f0f_0f0f;
            let high = (word(qh, 32 * half + l) >> (2 * k4)) & 0x0303_0303;
            or_word(dst, sub + 64 * (k / 2) + 4 * r, low << (4 * (k % 2)));
            or_word(dst, sub + 128 + 4 * r, high << (2 * k));
        }
    }
}

/// Writes GGML IQ4_XS block `b` as row `r` of a group super-block.
fn repack_iq4_xs(b: &[u8], dst: &mut [u8], r: usize) {
    dst[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
    for p in 0..4 {
        let at = XS_SC + 64 * p + 4 * r;
        dst[at..at + 2].copy_from_slice(&(xs_scale(b, 2 * p) as i16 - 32).to_le_bytes());
        dst[at + 2..at + 4].copy_from_slice(&(xs_scale(b, 2 * p + 1) as i16 - 32).to_le_bytes());
    }
    // GGML: sub-block `j` keeps element `l` in the low nibble of `qs[16 j + l]` and `l + 16` in the high one.
    let qs = &b[8..136];
    for j in 0..8 {
        for k in 0..8 {
            let nibbles = (word(qs, 16 * j + 4 * (k % 4)) >> (4 * (k / 4))) & 0x0f0f_0f0f;
            or_word(dst, XS_QS + Q4K_SUB * j + 64 * (k / 2) + 4 * r, nibbles << (4 * (k % 2)));
        }
    }
}

/// Writes GGML Q2_K block `b` (`scales[16]`, `qs[64]`, `d`, `dmin`) as row `r` of a group super-block.
fn repack_q2_k(b: &[u8], dst: &mut [u8], r: usize) {
    dst[2 * r..2 * r + 2].copy_from_slice(&b[80..82]);
    dst[Q2K_DMIN + 2 * r..Q2K_DMIN + 2 * r + 2].copy_from_slice(&b[82..84]);
    for j in 0..16 {
        dst[Q2K_SC + 16 * j + r] = b[j] & 0x0f;
        dst[Q2K_MIN + 32 * (j / 2) + 2 * r + j % 2] = b[j] >> 4;
    }
    // GGML: element `i` = (half, shift, l) = (i / 128, i % 128 / 32, i % 32) is bits `2 shift` of byte
    // `32 half + l` of `qs`. Four consecutive elements from a multiple of four share half and shift.
    let qs = &b[16..80];
    for j in 0..16 {
        for k in 0..4 {
            let i = 16 * j + 4 * k;
            let (half, shift, l) = (i / 128, i % 128 / 32, i % 32);
            let q = (word(qs, 32 * half + l) >> (2 * shift)) & 0x0303_0303;
            or_word(dst, Q2K_QS + Q2K_SUB * j + 4 * r, q << (2 * k));
        }
    }
}

/// Writes GGML Q3_K block `b` (`hmask[32]`, `qs[64]`, `scales[12]`, `d`) as row `r` of a group super-block.
fn repack_q3_k(b: &[u8], dst: &mut [u8], r: usize) {
    dst[2 * r..2 * r + 2].copy_from_slice(&b[108..110]);
    for (j, sc) in scales_q3_k(&b[96..108]).into_iter().enumerate() {
        dst[Q3K_SC + 32 * (j / 2) + 2 * r + j % 2] = sc as i8 as u8;
    }
    // GGML: element `i` has its low two bits where Q2_K keeps them (bits `2 (i % 128 / 32)` of byte
    // `32 (i / 128) + i % 32` of `qs`) and its high bit in bit `i / 32` of `hmask[i % 32]`. Four consecutive
    // elements from a multiple of four share those bit positions.
    let (hmask, qs) = (&b[..32], &b[32..96]);
    for j in 0..16 {
        let pair = Q3K_QS + Q3K_PAIR * (j / 2);
        for k in 0..4 {
            let i = 16 * j + 4 * k;
            let (half, shift, l) = (i / 128, i % 128 / 32, i % 32);
            let low = (word(qs, 32 * half + l) >> (2 * shift)) & 0x0303_0303;
            let high = (word(hmask, l) >> (i / 32)) & 0x0101_0101;
            or_word(dst, pair + 64 * (j % 2) + 4 * r, low << (2 * k));
            or_word(dst, pair + 128 + 4 * r, high << (4 * (j % 2) + k));
        }
    }
}

/// One row's super-block header: scales, scale of scales and (Q4_K) mins.
struct Header {
    d: f32,
    dmin: f32,
    /// Sub-block scales and mins (8 used by Q4_K, Q5_K and IQ4_XS, 16 by Q6_K, Q2_K and Q3_K).
    scale: [i32; 16],
    min: [i32; 16],
    sub_blocks: usize,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    crate::f16_le(&b[at..])
}

fn i16_at(b: &[u8], at: usize) -> i32 {
    i16::from_le_bytes([b[at], b[at + 1]]) as i32
}

fn header(format: InterleavedKFormat, blk: &[u8], r: usize) -> Header {
    match format {
        InterleavedKFormat::Q4K | InterleavedKFormat::Q5K => Header {
            d: f16_at(blk, 2 * r),
            dmin: f16_at(blk, Q4K_DMIN + 2 * r),
            scale: std::array::from_fn(|j| if j < 8 { blk[Q4K_SC + 16 * j + r] as i32 } else { 0 }),
            min: std::array::from_fn(
                |j| if j < 8 { i16_at(blk, Q4K_MIN + 64 * (j / 2) + 4 * r + 2 * (j % 2)) } else { 0 },
            ),
            sub_blocks: 8,
        },
        InterleavedKFormat::Q6K => Header {
            d: f16_at(blk, 2 * r),
            dmin: 0.0,
            scale: std::array::from_fn(|j| i16_at(blk, Q6K_SC + 64 * (j / 2) + 4 * r + 2 * (j % 2))),
            min: [0; 16],
            sub_blocks: 16,
        },
        InterleavedKFormat::IQ4_XS => Header {
            d: f16_at(blk, 2 * r),
            dmin: 0.0,
            scale: std::array::from_fn(
                |j| if j < 8 { i16_at(blk, XS_SC + 64 * (j / 2) + 4 * r + 2 * (j % 2)) } else { 0 },
            ),
            min: [0; 16],
            sub_blocks: 8,
        },
        InterleavedKFormat::Q2K => Header {
            d: f16_at(blk, 2 * r),
            dmin: f16_at(blk, Q2K_DMIN + 2 * r),
            scale: std::array::from_fn(|j| blk[Q2K_SC + 16 * j + r] as i32),
            min: std::array::from_fn(|j| blk[Q2K_MIN + 32 * (j / 2) + 2 * r + j % 2] as i32),
            sub_blocks: 16,
        },
        InterleavedKFormat::Q3K => Header {
            d: f16_at(blk, 2 * r),
            dmin: 0.0,
            scale: std::array::from_fn(|j| blk[Q3K_SC + 32 * (j / 2) + 2 * r + j % 2] as i8 as i32),
            min: [0; 16],
            sub_blocks: 16,
        },
    }
}

/// The signed quant of row `r` (within its group), element `i` of sub-block `j` of super-block `blk` (IQ4_XS:
/// the table value of the stored index).
fn quant(format: InterleavedKFormat, blk: &[u8], r: usize, j: usize, i: usize) -> i32 {
    let (v, k) = (4 * r + i % 4, i / 4);
    let nibble = |pair: usize| ((blk[pair + v] >> (4 * (k % 2))) & 0x0f) as i32;
    match format {
        InterleavedKFormat::Q4K => nibble(Q4K_QS + Q4K_SUB * j + 64 * (k / 2)),
        InterleavedKFormat::Q5K => {
            let sub = Q4K_QS + Q5K_SUB * j;
            nibble(sub + 64 * (k / 2)) | (((blk[sub + 256 + v] >> k) & 1) as i32) << 4
        }
        InterleavedKFormat::Q6K => {
            let sub = Q6K_QS + Q6K_SUB * j;
            let top = ((blk[sub + 128 + v] >> (2 * k)) & 3) as i32;
            (nibble(sub + 64 * (k / 2)) | top << 4) - 32
        }
        InterleavedKFormat::IQ4_XS => KVALUES[nibble(XS_QS + Q4K_SUB * j + 64 * (k / 2)) as usize] as i32,
        InterleavedKFormat::Q2K => ((blk[Q2K_QS + Q2K_SUB * j + v] >> (2 * k)) & 3) as i32,
        InterleavedKFormat::Q3K => {
            let pair = Q3K_QS + Q3K_PAIR * (j / 2);
            let low = (blk[pair + 64 * (j % 2) + v] >> (2 * k)) & 3;
            let high = (blk[pair + 128 + v] >> (4 * (j % 2) + k)) & 1;
            (low | high << 2) as i32 - 4
        }
    }
}

/// The scalar twin of the kernels (see the module's doc for the order of the float operations).
pub(crate) fn dot_groups_scalar(
    format: InterleavedKFormat,
    w: &[u8],
    blocks: usize,
    acts: &[u8],
    n_tokens: usize,
    tile: &mut [f32],
) {
    let gbb = format.group_block_bytes();
    let width = w.len() / (blocks * gbb) * ROW_GROUP;
    let sub = match format {
        InterleavedKFormat::Q4K | InterleavedKFormat::Q5K | InterleavedKFormat::IQ4_XS => 32,
        InterleavedKFormat::Q6K | InterleavedKFormat::Q2K | InterleavedKFormat::Q3K => 16,
    };
    for (g, gw) in w.chunks_exact(blocks * gbb).enumerate() {
        for t in 0..n_tokens {
            for r in 0..ROW_GROUP {
                let mut acc = 0.0f32;
                for b in 0..blocks {
                    let blk = &gw[b * gbb..][..gbb];
                    let a = &acts[(t * blocks + b) * Q8K_BYTES..][..Q8K_BYTES];
                    let da = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
                    let bsum = |s: usize| i16_at(a, Q8K_BSUMS + 2 * s);
                    let h = header(format, blk, r);
                    let mut isum = 0i32;
                    let mut mins = 0i32;
                    for j in 0..QK_K / sub {
                        let dot: i32 =
                            (0..sub).map(|i| quant(format, blk, r, j, i) * a[Q8K_QS + sub * j + i] as i8 as i32).sum();
                        isum += h.scale[j] * dot;
                        let sums: i32 = (sub * j / 16..sub * (j + 1) / 16).map(bsum).sum();
                        mins += h.min[j] * sums;
                    }
                    acc = (h.d * da).mul_add(isum as f32, acc);
                    if matches!(format, InterleavedKFormat::Q4K | InterleavedKFormat::Q5K | InterleavedKFormat::Q2K) {
                        acc = (-(h.dmin * da)).mul_add(mins as f32, acc);
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
    use crate::interleaved::tests::ggml_rows;
    use crate::quant_format;
    use crate::test_data::TestRng;

    /// Every format's GGML type.
    pub(crate) const ALL_TYPES: [GgmlType; 6] =
        [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::IQ4_XS, GgmlType::Q2K, GgmlType::Q3K];

    fn q8k_rows(rng: &mut TestRng, tokens: usize, cols: usize) -> Vec<u8> {
        ggml_rows(rng, GgmlType::Q8K, tokens, cols)
    }

    /// IQ4_XS's layout of the module's doc written value by value from ggml-common.h's `block_iq4_xs` (scales
    /// from `scales_h` / `scales_l`, indices from the nibbles of `qs`): the repacking, which moves whole words,
    /// must give the same bytes, padding rows all zero.
    #[test]
    fn repacking_writes_the_documented_iq4_xs_layout() {
        let ty = GgmlType::IQ4_XS;
        let mut rng = TestRng::new(23);
        let (rows, cols) = (21, 512);
        let src = ggml_rows(&mut rng, ty, rows, cols);
        let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
        let (rb, gbb, blocks) = (ty.row_bytes(cols).unwrap(), m.format().group_block_bytes(), cols / QK_K);
        assert_eq!(gbb, 2336);
        let mut want = vec![0u8; m.groups() * blocks * gbb];
        for r in 0..rows {
            let (g, rr) = (r / ROW_GROUP, r % ROW_GROUP);
            for (b, block) in src[r * rb..(r + 1) * rb].chunks_exact(136).enumerate() {
                let dst = &mut want[(g * blocks + b) * gbb..][..gbb];
                dst[2 * rr..2 * rr + 2].copy_from_slice(&block[..2]);
                let scales_h = u16::from_le_bytes([block[2], block[3]]);
                for j in 0..8 {
                    let ls =
                        ((block[4 + j / 2] >> (4 * (j % 2))) & 0x0f) as i16 | (((scales_h >> (2 * j)) & 3) << 4) as i16;
                    let at = 32 + 64 * (j / 2) + 4 * rr + 2 * (j % 2);
                    dst[at..at + 2].copy_from_slice(&(ls - 32).to_le_bytes());
                    for i in 0..32 {
                        let index = (block[8 + 16 * j + i % 16] >> (4 * (i / 16))) & 0x0f;
                        // value v = 4 r + e of run k = i / 4; runs k, k + 1 (k even) share 64 bytes
                        let (k, v) = (i / 4, 4 * rr + i % 4);
                        dst[288 + 256 * j + 32 * (k - k % 2) + v] |= index << (4 * (k % 2));
                    }
                }
            }
        }
        assert!(m.data_for_tests() == want.as_slice(), "IQ4_XS group bytes differ from the documented layout");
    }

    /// Q2_K's layout of the module's doc written value by value from ggml-common.h's `block_q2_K` (`scales[16]`
    /// as scale | min << 4, then `qs[64]`, `d`, `dmin`; element `128 h + 32 s + l` in bits `2 s` of
    /// `qs[32 h + l]`): the repacking, which moves whole words, must give the same bytes, padding rows all zero.
    #[test]
    fn repacking_writes_the_documented_q2_k_layout() {
        let ty = GgmlType::Q2K;
        let mut rng = TestRng::new(29);
        let (rows, cols) = (21, 512);
        let src = ggml_rows(&mut rng, ty, rows, cols);
        let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
        let (rb, gbb, blocks) = (ty.row_bytes(cols).unwrap(), m.format().group_block_bytes(), cols / QK_K);
        assert_eq!(gbb, 1600);
        let mut want = vec![0u8; m.groups() * blocks * gbb];
        for r in 0..rows {
            let (g, rr) = (r / ROW_GROUP, r % ROW_GROUP);
            for (b, block) in src[r * rb..(r + 1) * rb].chunks_exact(84).enumerate() {
                let dst = &mut want[(g * blocks + b) * gbb..][..gbb];
                dst[2 * rr..2 * rr + 2].copy_from_slice(&block[80..82]);
                dst[32 + 2 * rr..32 + 2 * rr + 2].copy_from_slice(&block[82..84]);
                for j in 0..16 {
                    dst[64 + 16 * j + rr] = block[j] & 0x0f;
                    dst[320 + 32 * (j / 2) + 2 * rr + j % 2] = block[j] >> 4;
                    for i in 0..16 {
                        let e = 16 * j + i;
                        let q = (block[16 + 32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
                        // value v = 4 r + e of run k = i / 4, at bits 2 k of byte v of the sub-block's 64
                        let (k, v) = (i / 4, 4 * rr + i % 4);
                        dst[576 + 64 * j + v] |= q << (2 * k);
                    }
                }
            }
        }
        assert!(m.data_for_tests() == want.as_slice(), "Q2_K group bytes differ from the documented layout");
    }

    /// Q3_K's layout of the module's doc written value by value from ggml-common.h's `block_q3_K` (`hmask[32]`,
    /// `qs[64]`, `scales[12]`, `d`; element `128 h + 32 s + l` has its low bits in bits `2 s` of `qs[32 h + l]`
    /// and its high bit in bit `4 h + s` of `hmask[l]`; scale `j`'s low four bits in the low (j < 8) or high
    /// nibble of `scales[j % 8]`, its top two in bits `2 (j / 4)` of `scales[8 + j % 4]`, less 32): the
    /// repacking, which moves whole words, must give the same bytes, padding rows all zero.
    #[test]
    fn repacking_writes_the_documented_q3_k_layout() {
        let ty = GgmlType::Q3K;
        let mut rng = TestRng::new(31);
        let (rows, cols) = (21, 512);
        let src = ggml_rows(&mut rng, ty, rows, cols);
        let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
        let (rb, gbb, blocks) = (ty.row_bytes(cols).unwrap(), m.format().group_block_bytes(), cols / QK_K);
        assert_eq!(gbb, 1824);
        let mut want = vec![0u8; m.groups() * blocks * gbb];
        for r in 0..rows {
            let (g, rr) = (r / ROW_GROUP, r % ROW_GROUP);
            for (b, block) in src[r * rb..(r + 1) * rb].chunks_exact(110).enumerate() {
                let dst = &mut want[(g * blocks + b) * gbb..][..gbb];
                dst[2 * rr..2 * rr + 2].copy_from_slice(&block[108..110]);
                for j in 0..16 {
                    let low = (block[96 + j % 8] >> (4 * (j / 8))) & 0x0f;
                    let top = (block[104 + j % 4] >> (2 * (j / 4))) & 3;
                    dst[32 + 32 * (j / 2) + 2 * rr + j % 2] = ((low | top << 4) as i8 - 32) as u8;
                    for i in 0..16 {
                        let e = 16 * j + i;
                        let (h, s, l) = (e / 128, e % 128 / 32, e % 32);
                        let q = (block[32 + 32 * h + l] >> (2 * s)) & 3;
                        let hbit = (block[l] >> (4 * h + s)) & 1;
                        // value v = 4 r + e of run k = i / 4 of sub-block j, in pair j / 2's 192 bytes
                        let (k, v) = (i / 4, 4 * rr + i % 4);
                        let pair = 288 + 192 * (j / 2);
                        dst[pair + 64 * (j % 2) + v] |= q << (2 * k);
                        dst[pair + 128 + v] |= hbit << (4 * (j % 2) + k);
                    }
                }
            }
        }
        assert!(m.data_for_tests() == want.as_slice(), "Q3_K group bytes differ from the documented layout");
    }

    /// Q5_K's layout of the module's doc written value by value from ggml-common.h's `block_q5_K` (`d`, `dmin`,
    /// `scales[12]` as Q4_K's, `qh[32]`, `qs[128]`; element `64 c + 32 h + l` has its low four bits in the low
    /// (h = 0) or high nibble of `qs[32 c + l]` and its top bit in bit `2 c + h` of `qh[l]`): the repacking,
    /// which moves whole words, must give the same bytes, padding rows all zero.
    #[test]
    fn repacking_writes_the_documented_q5_k_layout() {
        let ty = GgmlType::Q5K;
        let mut rng = TestRng::new(37);
        let (rows, cols) = (21, 512);
        let src = ggml_rows(&mut rng, ty, rows, cols);
        let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
        let (rb, gbb, blocks) = (ty.row_bytes(cols).unwrap(), m.format().group_block_bytes(), cols / QK_K);
        assert_eq!(gbb, 3008);
        let mut want = vec![0u8; m.groups() * blocks * gbb];
        for r in 0..rows {
            let (g, rr) = (r / ROW_GROUP, r % ROW_GROUP);
            for (b, block) in src[r * rb..(r + 1) * rb].chunks_exact(176).enumerate() {
                let dst = &mut want[(g * blocks + b) * gbb..][..gbb];
                dst[2 * rr..2 * rr + 2].copy_from_slice(&block[..2]);
                dst[32 + 2 * rr..32 + 2 * rr + 2].copy_from_slice(&block[2..4]);
                let sc = &block[4..16];
                for j in 0..8 {
                    // ggml's get_scale_min_k4
                    let (d, m) = if j < 4 {
                        (sc[j] & 63, sc[j + 4] & 63)
                    } else {
                        ((sc[j + 4] & 0x0f) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
                    };
                    dst[64 + 16 * j + rr] = d;
                    let at = 192 + 64 * (j / 2) + 4 * rr + 2 * (j % 2);
                    dst[at..at + 2].copy_from_slice(&(m as u16).to_le_bytes());
                    for i in 0..32 {
                        let e = 32 * j + i;
                        let (c, h, l) = (e / 64, e % 64 / 32, e % 32);
                        let low = (block[48 + 32 * c + l] >> (4 * h)) & 0x0f;
                        let top = (block[16 + l] >> (2 * c + h)) & 1;
                        // value v = 4 r + e of run k = i / 4; runs k, k + 1 (k even) share 64 bytes
                        let (k, v) = (i / 4, 4 * rr + i % 4);
                        dst[448 + 320 * j + 32 * (k - k % 2) + v] |= low << (4 * (k % 2));
                        dst[448 + 320 * j + 256 + v] |= top << k;
                    }
                }
            }
        }
        assert!(m.data_for_tests() == want.as_slice(), "Q5_K group bytes differ from the documented layout");
    }

    /// Every value of every row, padding rows aside, decodes to GGML's own dequantization, bit for bit.
    #[test]
    fn repacking_keeps_every_value() {
        for ty in ALL_TYPES {
            let mut rng = TestRng::new(17);
            let (rows, cols) = (37, 512);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
            assert_eq!(m.groups(), 3);
            let rb = ty.row_bytes(cols).unwrap();
            let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                quant_format(ty).unwrap().dequantize_row(&src[r * rb..(r + 1) * rb], &mut want);
                m.dequantize_row(r, &mut got);
                assert_eq!(got, want, "{ty} row {r}");
            }
        }
    }

    /// The scalar twin is GGML's dot up to the order of float additions (Q4_K's scale and min terms nearly
    /// cancel, so the rounding is relative to them, not to the result).
    #[test]
    fn scalar_twin_is_within_rounding_of_ggml_dots() {
        for ty in ALL_TYPES {
            let mut rng = TestRng::new(5);
            let (rows, cols, tokens) = (21, 768, 3);
            let src = ggml_rows(&mut rng, ty, rows, cols);
            let acts = q8k_rows(&mut rng, tokens, cols);
            let m = InterleavedKRows::repack(ty, rows, cols, &src, &mut |_| {}).unwrap();
            let width = m.groups() * ROW_GROUP;
            let mut tile = vec![0f32; tokens * width];
            dot_groups_scalar(m.format(), m.data_for_tests(), cols / QK_K, &acts, tokens, &mut tile);
            let mut want = vec![0f32; rows * tokens];
            quant_format(ty).unwrap().dot_rows(cols, &src, rows, &acts, tokens, &mut want);
            for r in 0..rows {
                for t in 0..tokens {
                    let (g, w) = (tile[t * width + r], want[r * tokens + t]);
                    assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{ty} row {r} token {t}: {g} vs {w}");
                }
            }
            for t in 0..tokens {
                assert!(tile[t * width + rows..(t + 1) * width].iter().all(|&v| v == 0.0), "padding rows are zero");
            }
        }
    }

    #[test]
    fn other_formats_and_bad_lengths_are_errors() {
        assert!(InterleavedKRows::repack(GgmlType::Q8_0, 16, 256, &[0; 16 * 34 * 8], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::Q4K, 16, 256, &[0; 100], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::Q6K, 16, 100, &[0; 100], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::IQ4_XS, 16, 256, &[0; 16 * 136 - 1], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::IQ4_NL, 16, 256, &[0; 16 * 144], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::Q2K, 16, 256, &[0; 16 * 84 + 1], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::Q3K, 16, 256, &[0; 16 * 110 - 2], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::Q5K, 16, 256, &[0; 16 * 176 + 1], &mut |_| {}).is_err());
        assert!(InterleavedKRows::repack(GgmlType::Q8K, 16, 256, &[0; 16 * 292], &mut |_| {}).is_err());
    }
}
