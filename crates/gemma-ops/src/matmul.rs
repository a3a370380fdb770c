//! Products of quantized weight matrices with activations: one token (matvec) or many (matmul).
//!
//! Activations are quantized once per matrix into the format the weight type pairs with
//! ([`QuantFormat::vec_dot_type`]), as llama.cpp does, then each output is one `vec_dot`.

use gemma_compression::bf16_tile::{
    bf16_words, dot_bf16_tile, dot_i8_row_bf16, dot_nuq_row_bf16, dot_sfp_row_bf16, has_avx512_bf16, has_fused_i8_row,
    has_fused_nuq_row, has_fused_sfp_row, round_acts_to_bf16,
};
use gemma_compression::float_panels::{FloatPanels, PANEL_ROWS};
use gemma_compression::interleaved::{InterleavedActs, InterleavedRows, ROW_GROUP};
use gemma_compression::interleaved_k::InterleavedKRows;
use gemma_compression::{
    dot_decoded_rows, i8_packed_bytes, quant_format, sbs_codec, GgmlType, QuantError, QuantFormat, SbsCodec,
    SbsCodecType, I8_GROUP,
};

use crate::pool::{SharedMut, ThreadPool};

/// A row-major matrix of `rows` rows of `cols` elements in one number format, borrowed from the weights.
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub format: &'static dyn QuantFormat,
    pub row_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("matrix of {rows}x{cols} {ty} needs {expected} bytes, got {got}")]
    Size { rows: usize, cols: usize, ty: GgmlType, expected: usize, got: usize },
    #[error("SBS matrix of {rows}x{cols} {ty}: {why}")]
    SbsLayout { rows: usize, cols: usize, ty: SbsCodecType, why: String },
}

impl<'a> QMatrix<'a> {
    pub fn new(data: &'a [u8], rows: usize, cols: usize, ty: GgmlType) -> Result<Self, MatrixError> {
        let format = quant_format(ty)?;
        let row_bytes = ty.row_bytes(cols).ok_or(QuantError::BadLength { ty, n: cols })?;
        let expected = row_bytes.checked_mul(rows);
        if expected != Some(data.len()) {
            return Err(MatrixError::Size {
                rows,
                cols,
                ty,
                expected: expected.unwrap_or(usize::MAX),
                got: data.len(),
            });
        }
        Ok(QMatrix { data, rows, cols, format, row_bytes })
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.format.ggml_type()
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Decodes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.format.dequantize_row(self.row(r), out);
    }
}

/// Activations of several tokens, each row quantized to one format.
#[derive(Default)]
pub struct QuantizedActs {
    pub ty: Option<GgmlType>,
    pub data: Vec<u8>,
    pub row_bytes: usize,
    pub n_rows: usize,
    /// The activations of [`matmul_interleaved`] (Q8_0 in the interleaved kernels' layout).
    pub interleaved: InterleavedActs,
}

impl QuantizedActs {
    /// Quantizes `x` (`n_rows` rows of `cols`) to `ty`, reusing this buffer.
    pub fn quantize(&mut self, ty: GgmlType, x: &[f32], cols: usize) -> Result<(), QuantError> {
        let format = quant_format(ty)?;
        let row_bytes = ty.row_bytes(cols).ok_or(QuantError::BadLength { ty, n: cols })?;
        let n_rows = x.len() / cols;
        self.data.resize(row_bytes * n_rows, 0);
        for (src, dst) in x.chunks_exact(cols).zip(self.data.chunks_exact_mut(row_bytes)) {
            format.quantize_row(src, dst)?;
        }
        self.ty = Some(ty);
        self.row_bytes = row_bytes;
        self.n_rows = n_rows;
        Ok(())
    }

    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.row_bytes..(i + 1) * self.row_bytes]
    }
}

thread_local! {
    /// Per-thread results of one task (rows x tokens), kept so matmuls allocate nothing once warm.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Fewest weight rows a task takes: enough work to amortise the hand-out.
const ROWS_PER_TASK: usize = 16;

/// `out[t][r] = W[r] · x[t]` for every token `t` of `x` (`n` rows of `w.cols`) and weight row `r`.
/// `out` holds `n` rows of `w.rows`. `scratch` keeps the quantized activations between calls.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut QuantizedActs,
) -> Result<(), QuantError> {
    let n = x.len() / w.cols;
    assert_eq!(x.len(), n * w.cols, "activation length is not a multiple of the matrix width");
    assert_eq!(out.len(), n * w.rows, "output length does not match");
    scratch.quantize(w.format.vec_dot_type(), x, w.cols)?;
    let acts = &*scratch;
    let m = w.rows;
    // Float weights take f32 activations, 4 bytes a value: all the tokens of a long prompt would not stay in
    // cache while each task's rows pass over them, so the tokens go in groups, one parallel region each.
    let group = if w.format.vec_dot_type() == GgmlType::F32 { gemma_compression::FLOAT_TOKEN_GROUP } else { n.max(1) };
    for g0 in (0..n).step_by(group) {
        let g = group.min(n - g0);
        let acts = &acts.data[g0 * acts.row_bytes..(g0 + g) * acts.row_bytes];
        let out_shared = SharedMut::new(&mut out[g0 * m..(g0 + g) * m]);
        pool.for_ranges(m, ROWS_PER_TASK, &|rows| {
            let w_slab = &w.data[rows.start * w.row_bytes..rows.end * w.row_bytes];
            if g == 1 {
                // SAFETY: tasks own disjoint row ranges, and with one token those are disjoint ranges of `out`.
                let dst = unsafe { out_shared.slice(rows.clone()) };
                w.format.dot_rows(w.cols, w_slab, rows.len(), acts, 1, dst);
                return;
            }
            TILE.with_borrow_mut(|tile| {
                tile.resize(rows.len() * g, 0.0);
                w.format.dot_rows(w.cols, w_slab, rows.len(), acts, g, tile);
                // SAFETY: this task alone writes columns `rows` of every token's output row.
                unsafe { scatter_tile(tile, rows.len(), g, &out_shared, m, rows.start) };
            });
        });
    }
    Ok(())
}

/// `out[t][r] = W[r] · x[t]` for a Q8_0, Q5_0, Q4_0, Q4_1, Q5_1 or IQ4_NL matrix repacked with 16 rows interleaved
/// ([`InterleavedRows`]); `acts` keeps the quantized activations between calls.
pub fn matmul_interleaved(
    pool: &ThreadPool,
    w: &InterleavedRows,
    x: &[f32],
    out: &mut [f32],
    acts: &mut InterleavedActs,
) -> Result<(), QuantError> {
    let n = x.len() / w.cols();
    assert_eq!(x.len(), n * w.cols(), "activation length is not a multiple of the matrix width");
    assert_eq!(out.len(), n * w.rows(), "output length does not match");
    acts.quantize(x, w.cols())?;
    let acts = &*acts;
    over_row_groups(pool, w.groups(), w.rows(), n, out, &|groups, tile| w.dot_groups(groups, acts, tile));
    Ok(())
}

/// `out[t][r] = W[r] · x[t]` for a Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K or Q3_K matrix repacked with 16 rows interleaved
/// ([`InterleavedKRows`]), with Q8_K activations kept in `scratch` between calls.
pub fn matmul_interleaved_k(
    pool: &ThreadPool,
    w: &InterleavedKRows,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut QuantizedActs,
) -> Result<(), QuantError> {
    let n = x.len() / w.cols();
    assert_eq!(x.len(), n * w.cols(), "activation length is not a multiple of the matrix width");
    assert_eq!(out.len(), n * w.rows(), "output length does not match");
    scratch.quantize(GgmlType::Q8K, x, w.cols())?;
    let acts = &scratch.data;
    over_row_groups(pool, w.groups(), w.rows(), n, out, &|groups, tile| w.dot_groups(groups, acts, tile));
    Ok(())
}

/// `out[t][r] = W[r] · x[t]` for a float matrix repacked in panels of 16 rows ([`FloatPanels`]); the
/// activations are taken as they are, and each task writes its rows straight into `out`.
pub fn matmul_float_panels(pool: &ThreadPool, w: &FloatPanels, x: &[f32], out: &mut [f32]) {
    let n = x.len() / w.cols();
    assert_eq!(x.len(), n * w.cols(), "activation length is not a multiple of the matrix width");
    assert_eq!(out.len(), n * w.rows(), "output length does not match");
    let rows = w.rows();
    if n == 0 || rows == 0 {
        return;
    }
    let out_shared = SharedMut::new(out);
    pool.for_ranges(w.panels(), ROWS_PER_TASK / PANEL_ROWS, &|panels| {
        let first = panels.start * PANEL_ROWS;
        // SAFETY: `out` holds `n` rows of `rows` (asserted above) and `first < rows`; this task alone writes
        // the real rows of its panels in every token's row, and the kernel writes no others.
        unsafe { w.dot_panels_into(panels, x, n, out_shared.ptr().wrapping_add(first), rows) };
    });
}

/// Hands out the 16-row groups of an interleaved matrix of `rows` rows to the pool; `dot(groups, tile)` fills
/// a task's tile (token-major, 16 columns per group, padding rows included), whose real rows are copied to
/// every token's row of `out` (`n` rows of `rows`).
fn over_row_groups(
    pool: &ThreadPool,
    groups: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
    dot: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
) {
    let out_shared = SharedMut::new(out);
    pool.for_ranges(groups, ROWS_PER_TASK / ROW_GROUP, &|groups| {
        TILE.with_borrow_mut(|tile| {
            let width = groups.len() * ROW_GROUP;
            tile.resize(n * width, 0.0);
            let first = groups.start * ROW_GROUP;
            dot(groups, tile);
            let len = width.min(rows - first);
            for t in 0..n {
                // SAFETY: this task alone writes columns `first..first + len` of every token's output row.
                let dst = unsafe { out_shared.slice(t * rows + first..t * rows + first + len) };
                dst.copy_from_slice(&tile[t * width..t * width + len]);
            }
        });
    });
}

/// Where the rows of a logical matrix lie in an SBS tensor's stream: logical row `r` is stream row
/// `first + (r / block) * stride + r % block`. One block covers a contiguous slice (Q out of `qkv_ein`,
/// the gate or up half of `gating_ein`); blocks with a stride pick K or V out of `qkv_ein`, whose K and V
/// rows alternate per KV head. Rows are selected by index because NUQ and I8 streams cannot be sliced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowBlocks {
    pub first: usize,
    pub block: usize,
    pub stride: usize,
}

impl RowBlocks {
    /// `rows` consecutive stream rows starting at `first`.
    pub fn contiguous(first: usize, rows: usize) -> RowBlocks {
        RowBlocks { first, block: rows.max(1), stride: rows.max(1) }
    }

    pub fn stream_row(&self, r: usize) -> usize {
        self.first + (r / self.block) * self.stride + r % self.block
    }
}

/// A matrix of `rows x cols` stored in one of gemma.cpp's number formats (an SBS tensor), borrowed from the
/// file: `stream` is the whole tensor, whose rows `map` selects. Every product is multiplied by `scale`.
#[derive(Clone, Copy)]
pub struct SbsMatrix<'a> {
    pub stream: &'a [u8],
    pub codec: &'static dyn SbsCodec,
    pub rows: usize,
    pub cols: usize,
    pub map: RowBlocks,
    pub scale: f32,
}

impl<'a> SbsMatrix<'a> {
    /// Checks that every row `map` selects lies inside a stream of `stream_rows x cols` elements in `ty`.
    pub fn new(
        stream: &'a [u8],
        ty: SbsCodecType,
        stream_rows: usize,
        rows: usize,
        cols: usize,
        map: RowBlocks,
        scale: f32,
    ) -> Result<Self, MatrixError> {
        let codec = sbs_codec(ty);
        let bad = |why: String| MatrixError::SbsLayout { rows, cols, ty, why };
        let needed = stream_rows.checked_mul(cols).map(|n| codec.packed_bytes(n));
        if needed != Some(stream.len()) {
            return Err(bad(format!("{stream_rows} rows need {needed:?} bytes, the stream has {}", stream.len())));
        }
        if map.block == 0 || cols == 0 {
            return Err(bad("empty rows".into()));
        }
        if rows > 0 && map.stream_row(rows - 1) >= stream_rows {
            return Err(bad(format!(
                "row {} maps to stream row {} of {stream_rows}",
                rows - 1,
                map.stream_row(rows - 1)
            )));
        }
        if rows > map.block && map.stride < map.block {
            return Err(bad(format!("blocks of {} rows every {} rows overlap", map.block, map.stride)));
        }
        if !scale.is_finite() {
            return Err(bad(format!("scale {scale} is not finite")));
        }
        Ok(SbsMatrix { stream, codec, rows, cols, map, scale })
    }

    /// Decodes row `r` into `out` (`cols` values), without the scale.
    pub fn decode_row(&self, r: usize, out: &mut [f32]) -> Result<(), gemma_compression::SbsCodecError> {
        self.codec.decode(self.stream, self.map.stream_row(r) * self.cols, out)
    }
}

/// A weight matrix in either family of formats, as the forward pass sees it. The format family is chosen
/// once per matrix product, never per row.
#[derive(Clone, Copy)]
pub enum WeightView<'a> {
    Ggml(QMatrix<'a>),
    Sbs(SbsMatrix<'a>),
    /// Q8_0, Q5_0, Q4_0, Q4_1, Q5_1 or IQ4_NL repacked at load with 16 rows interleaved.
    Interleaved(&'a InterleavedRows),
    /// Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K or Q3_K repacked at load with 16 rows interleaved.
    InterleavedK(&'a InterleavedKRows),
    /// F32, F16 or BF16 repacked at load in panels of 16 rows.
    FloatPanels(&'a FloatPanels),
}

impl WeightView<'_> {
    pub fn rows(&self) -> usize {
        match self {
            WeightView::Ggml(w) => w.rows,
            WeightView::Sbs(w) => w.rows,
            WeightView::Interleaved(w) => w.rows(),
            WeightView::InterleavedK(w) => w.rows(),
            WeightView::FloatPanels(w) => w.rows(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            WeightView::Ggml(w) => w.cols,
            WeightView::Sbs(w) => w.cols,
            WeightView::Interleaved(w) => w.cols(),
            WeightView::InterleavedK(w) => w.cols(),
            WeightView::FloatPanels(w) => w.cols(),
        }
    }

    /// The factor every decoded value is multiplied by (1 for GGML formats).
    pub fn scale(&self) -> f32 {
        match self {
            WeightView::Ggml(_)
            | WeightView::Interleaved(_)
            | WeightView::InterleavedK(_)
            | WeightView::FloatPanels(_) => 1.0,
            WeightView::Sbs(w) => w.scale,
        }
    }

    /// Decodes row `r` into `out` (`cols` values) without [`WeightView::scale`]. `r` and `out.len()` are
    /// the caller's contract (a row index below `rows`, `cols` values), as for [`QMatrix::dequantize_row`].
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        match self {
            WeightView::Ggml(w) => w.dequantize_row(r, out),
            WeightView::Interleaved(w) => w.dequantize_row(r, out),
            WeightView::InterleavedK(w) => w.dequantize_row(r, out),
            WeightView::FloatPanels(w) => w.dequantize_row(r, out),
            WeightView::Sbs(w) => {
                if let Err(e) = w.decode_row(r, out) {
                    panic!("decoding row {r} of a validated SBS matrix: {e}");
                }
            }
        }
    }
}

/// [`matmul`], [`matmul_interleaved`], [`matmul_interleaved_k`], [`matmul_float_panels`] or [`matmul_sbs`], whichever kind of matrix `w` is.
pub fn matmul_view(
    pool: &ThreadPool,
    w: &WeightView,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut QuantizedActs,
) -> Result<(), QuantError> {
    match w {
        WeightView::Ggml(q) => matmul(pool, q, x, out, scratch),
        WeightView::Interleaved(w) => matmul_interleaved(pool, w, x, out, &mut scratch.interleaved),
        WeightView::InterleavedK(w) => matmul_interleaved_k(pool, w, x, out, scratch),
        WeightView::FloatPanels(w) => {
            matmul_float_panels(pool, w, x, out);
            Ok(())
        }
        WeightView::Sbs(s) => {
            matmul_sbs(pool, s, x, out);
            Ok(())
        }
    }
}

thread_local! {
    /// Per-thread decoded weight row for SBS products of several tokens.
    static SBS_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[t][r] = scale * (W[r] · x[t])` for an SBS matrix, parallel over rows like [`matmul`]; allocates
/// nothing once the thread-local buffers have grown. Compressed weights take bf16 activations where the CPU
/// has AVX-512 BF16, as in gemma.cpp's MatMul ([`sbs_takes_bf16_acts`]); F32 weights, and every format on
/// other CPUs, take the f32 activations as they are, each result bitwise the codec's `dot` of that row and
/// token: with several tokens a row is decoded once and its exact f32 values dotted with each token in the
/// same fixed pattern. Either way a result does not depend on the batch shape or the
/// thread count.
pub fn matmul_sbs(pool: &ThreadPool, w: &SbsMatrix, x: &[f32], out: &mut [f32]) {
    let (m, k) = (w.rows, w.cols);
    let n = x.len() / k;
    assert_eq!(x.len(), n * k, "activation length is not a multiple of the matrix width");
    assert_eq!(out.len(), n * m, "output length does not match");
    if sbs_takes_bf16_acts(w.codec.codec_type()) {
        matmul_sbs_bf16(pool, w, x, out);
        return;
    }
    let out_shared = SharedMut::new(out);
    pool.for_ranges(m, ROWS_PER_TASK, &|rows| {
        if n == 1 {
            // SAFETY: tasks own disjoint row ranges, and with one token those are disjoint ranges of `out`.
            let dst = unsafe { out_shared.slice(rows.clone()) };
            for (r, d) in rows.clone().zip(dst.iter_mut()) {
                *d = w.codec.dot(w.stream, w.map.stream_row(r) * k, x) * w.scale;
            }
            return;
        }
        SBS_ROW.with_borrow_mut(|row| {
            TILE.with_borrow_mut(|tile| {
                tile.resize(rows.len() * n, 0.0);
                // Two rows at a time: the kernel lets each activation load serve both.
                for (pair, first) in rows.clone().step_by(2).enumerate() {
                    let count = (rows.end - first).min(2);
                    row.resize(count * k, 0.0);
                    for (j, dst) in row.chunks_exact_mut(k).enumerate() {
                        let r = first + j;
                        if let Err(e) = w.codec.decode(w.stream, w.map.stream_row(r) * k, dst) {
                            panic!("matmul_sbs: row {r} of a validated matrix: {e}");
                        }
                    }
                    // Bitwise what `codec.dot` gives each token (the decoded row is what it multiplies).
                    let dst = &mut tile[2 * pair * n..(2 * pair + count) * n];
                    dot_decoded_rows(row, k, x, dst);
                    dst.iter_mut().for_each(|d| *d *= w.scale);
                }
                // SAFETY: this task alone writes columns `rows` of every token's output row.
                unsafe { scatter_tile(tile, rows.len(), n, &out_shared, m, rows.start) };
            });
        });
    });
}

/// Whether products with `ty` weights round their activations to bf16, as gemma.cpp's MatMul does, on CPUs
/// with AVX-512 BF16, where `vdpbf16ps` does twice the multiply-adds of f32 FMA: the compressed formats, whose
/// weights are decoded to bf16 as gemma.cpp decodes them (exactly for SFP, BF16 and NUQ; I8 values rounded to
/// the nearest bf16). F32 weights keep f32 activations, as do all formats without AVX-512 BF16: the AVX2
/// emulation of the bf16 lanes measured 20-35% slower than the f32 kernels.
pub fn sbs_takes_bf16_acts(ty: SbsCodecType) -> bool {
    ty != SbsCodecType::F32 && has_avx512_bf16()
}

thread_local! {
    /// The bf16 activations of the calling thread's SBS product in progress, read by every task.
    static SBS_ACTS_BF16: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread weight rows decoded to bf16.
    static SBS_ROWS_BF16: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Weight rows per call of the bf16 tile kernel (its AVX-512 block height; a whole task's 16 rows per call
/// measured no faster).
const BF16_TILE_ROWS: usize = 4;

/// [`matmul_sbs`] with bf16 activations ([`sbs_takes_bf16_acts`]): the activations rounded to bf16 once, then
/// every row (decoded to bf16 once, or read in place for BF16) dotted with every token by [`dot_bf16_tile`].
/// Each (row, token) accumulates in the same pattern whatever the batch, so a token's result does not depend
/// on the tokens beside it or the thread count.
fn matmul_sbs_bf16(pool: &ThreadPool, w: &SbsMatrix, x: &[f32], out: &mut [f32]) {
    let (m, k) = (w.rows, w.cols);
    let n = x.len() / k;
    let ty = w.codec.codec_type();
    // One token of SFP, NUQ or I8 rows the fused kernels take: decoded in registers, no copy of the row.
    let fused_sfp = n == 1 && ty == SbsCodecType::Sfp && has_fused_sfp_row();
    let fused_i8 = n == 1 && ty == SbsCodecType::I8 && k % I8_GROUP == 0 && has_fused_i8_row();
    let fused_nuq = n == 1 && ty == SbsCodecType::Nuq && has_fused_nuq_row(k);
    // BF16 rows are read where they lie (an SBS blob is aligned); the other formats are decoded to `buf`.
    let in_place = |r: usize| {
        let ofs = w.map.stream_row(r) * k;
        (ty == SbsCodecType::Bf16).then(|| bf16_words(&w.stream[2 * ofs..2 * (ofs + k)])).flatten()
    };
    SBS_ACTS_BF16.with_borrow_mut(|acts| {
        acts.resize(n * k, 0);
        round_acts_to_bf16(x, acts);
        let acts: &[u16] = acts;
        let out_shared = SharedMut::new(out);
        pool.for_ranges(m, ROWS_PER_TASK, &|rows| {
            if fused_sfp || fused_i8 || fused_nuq {
                // SAFETY: tasks own disjoint row ranges, and with one token those are disjoint ranges of `out`.
                let dst = unsafe { out_shared.slice(rows.clone()) };
                for (r, d) in rows.clone().zip(dst.iter_mut()) {
                    let ofs = w.map.stream_row(r) * k;
                    *d = if fused_sfp {
                        dot_sfp_row_bf16(&w.stream[ofs..ofs + k], acts)
                    } else if fused_nuq {
                        dot_nuq_row_bf16(w.stream, ofs, acts)
                    } else {
                        // rows start at group boundaries since `k` is a multiple of the group
                        let at = i8_packed_bytes(ofs);
                        dot_i8_row_bf16(&w.stream[at..at + i8_packed_bytes(k)], acts)
                    } * w.scale;
                }
                return;
            }
            SBS_ROWS_BF16.with_borrow_mut(|buf| {
                TILE.with_borrow_mut(|tile| {
                    tile.resize(rows.len() * n, 0.0);
                    buf.resize(BF16_TILE_ROWS * k, 0);
                    for first in rows.clone().step_by(BF16_TILE_ROWS) {
                        let count = (rows.end - first).min(BF16_TILE_ROWS);
                        for (j, dst) in buf.chunks_exact_mut(k).take(count).enumerate() {
                            let r = first + j;
                            if in_place(r).is_none() {
                                if let Err(e) = w.codec.decode_bf16(w.stream, w.map.stream_row(r) * k, dst) {
                                    panic!("matmul_sbs: row {r} of a validated matrix: {e}");
                                }
                            }
                        }
                        let mut refs: [&[u16]; BF16_TILE_ROWS] = [&[]; BF16_TILE_ROWS];
                        for (j, slot) in refs.iter_mut().take(count).enumerate() {
                            *slot = in_place(first + j).unwrap_or(&buf[j * k..(j + 1) * k]);
                        }
                        let at = (first - rows.start) * n;
                        let dst = &mut tile[at..at + count * n];
                        dot_bf16_tile(&refs[..count], acts, k, dst);
                        dst.iter_mut().for_each(|d| *d *= w.scale);
                    }
                    // SAFETY: this task alone writes columns `rows` of every token's output row.
                    unsafe { scatter_tile(tile, rows.len(), n, &out_shared, m, rows.start) };
                });
            });
        });
    });
}

/// Writes a task's `k_rows x n` tile (row-major) into columns `col..col + k_rows` of the token-major output
/// (`n` rows of `m`), 16x16 blocks transposed in registers where AVX-512 is available.
///
/// # Safety
/// The caller alone writes those columns of every token row of `out`.
unsafe fn scatter_tile(tile: &[f32], k_rows: usize, n: usize, out: &SharedMut<f32>, m: usize, col: usize) {
    let mut k0 = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && n >= 16 {
        while k0 + 16 <= k_rows {
            let mut t0 = 0;
            while t0 + 16 <= n {
                let mut block = [0f32; 256];
                // SAFETY: the CPU has AVX-512F.
                unsafe { transpose16_avx512(&tile[k0 * n + t0..], n, &mut block) };
                for (t, src) in block.chunks_exact(16).enumerate() {
                    let at = (t0 + t) * m + col + k0;
                    // SAFETY: the caller's contract: these columns of token row t0 + t are ours.
                    unsafe { out.slice(at..at + 16).copy_from_slice(src) };
                }
                t0 += 16;
            }
            // SAFETY: as above.
            unsafe { scatter_scalar(tile, k0..k0 + 16, t0..n, n, out, m, col) };
            k0 += 16;
        }
    }
    // SAFETY: as above.
    unsafe { scatter_scalar(tile, k0..k_rows, 0..n, n, out, m, col) };
}

/// The portable twin of [`scatter_tile`] for tile rows `ks` and tokens `ts`.
///
/// # Safety
/// As for [`scatter_tile`].
unsafe fn scatter_scalar(
    tile: &[f32],
    ks: std::ops::Range<usize>,
    ts: std::ops::Range<usize>,
    n: usize,
    out: &SharedMut<f32>,
    m: usize,
    col: usize,
) {
    if ks.is_empty() {
        return;
    }
    for t in ts {
        // SAFETY: the caller's contract.
        let dst = unsafe { out.slice(t * m + col + ks.start..t * m + col + ks.end) };
        for (d, k) in dst.iter_mut().zip(ks.clone()) {
            *d = tile[k * n + t];
        }
    }
}

/// `dst[t * 16 + k] = src[k * stride + t]` for a 16x16 block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16_avx512(src: &[f32], stride: usize, dst: &mut [f32; 256]) {
    use std::arch::x86_64::*;
    assert!(src.len() >= 15 * stride + 16, "transpose source too short");
    // SAFETY: 16 rows of 16 floats at `stride` are inside `src` (checked above).
    let mut r: [__m512; 16] = std::array::from_fn(|k| unsafe { _mm512_loadu_ps(src.as_ptr().add(k * stride)) });
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        r[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    for h in 0..2 {
        for i in 0..4 {
            t[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(r[8 * h + i], r[8 * h + 4 + i]);
            t[8 * h + 4 + i] = _mm512_shuffle_f32x4::<0xDD>(r[8 * h + i], r[8 * h + 4 + i]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
        r[8 + i] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[8 + i]);
    }
    for (k, v) in r.iter().enumerate() {
        // SAFETY: row k of `dst` holds 16 floats.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(16 * k), *v) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of `wf` (`cols` wide) in `ty`, GGML's layout.
    fn quantize_rows(ty: GgmlType, wf: &[f32], cols: usize) -> Vec<u8> {
        let (f, rb) = (quant_format(ty).unwrap(), ty.row_bytes(cols).unwrap());
        let mut wq = vec![0u8; rb * (wf.len() / cols)];
        for (src, dst) in wf.chunks(cols).zip(wq.chunks_mut(rb)) {
            f.quantize_row(src, dst).unwrap();
        }
        wq
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn simd_scatter_matches_the_scalar_twin() {
        for (k_rows, n, m, col) in [(16, 16, 16, 0), (48, 37, 80, 16), (20, 300, 40, 3), (16, 5, 16, 0)] {
            let tile: Vec<f32> = (0..k_rows * n).map(|i| i as f32).collect();
            let (mut want, mut got) = (vec![-1.0; n * m], vec![-1.0; n * m]);
            // SAFETY: single-threaded; the tile fits in the columns.
            unsafe {
                scatter_scalar(&tile, 0..k_rows, 0..n, n, &SharedMut::new(&mut want), m, col);
                scatter_tile(&tile, k_rows, n, &SharedMut::new(&mut got), m, col);
            }
            assert_eq!(got, want, "{k_rows}x{n}");
            assert_eq!(want[(n - 1) * m + col + k_rows - 1], ((k_rows - 1) * n + n - 1) as f32);
        }
    }

    #[test]
    fn sbs_matmul_equals_the_codec_dot_bitwise_for_every_batch_shape() {
        // A `qkv_ein`-like stream: 2 Q blocks, then K and V alternating per KV head (2 heads of 24 rows).
        let (cols, q_rows, kv_rows, kv_heads) = (256, 48, 24, 2);
        let stream_rows = q_rows + 2 * kv_rows * kv_heads;
        let mut seed = 11;
        let wf: Vec<f32> = (0..stream_rows * cols).map(|_| lcg(&mut seed) * 1.5).collect();
        let x: Vec<f32> = (0..7 * cols).map(|_| lcg(&mut seed)).collect();
        for ty in SbsCodecType::ALL {
            let codec = sbs_codec(ty);
            let mut stream = vec![0u8; codec.packed_bytes(stream_rows * cols)];
            codec.encode(&wf, &mut stream, 0).unwrap();
            let v_map = RowBlocks { first: q_rows + kv_rows, block: kv_rows, stride: 2 * kv_rows };
            for (map, rows) in [(RowBlocks::contiguous(0, q_rows), q_rows), (v_map, kv_rows * kv_heads)] {
                let w = SbsMatrix::new(&stream, ty, stream_rows, rows, cols, map, 0.75).unwrap();
                for n in [1, 2, 7] {
                    let xs = &x[..n * cols];
                    let mut results = Vec::new();
                    for threads in [1, 2] {
                        let mut out = vec![f32::NAN; n * rows];
                        matmul_sbs(&ThreadPool::new(threads), &w, xs, &mut out);
                        results.push(out);
                    }
                    assert_eq!(results[0], results[1], "{ty}: thread count changed the result");
                    let mut deq = vec![0f32; cols];
                    for r in 0..rows {
                        let ofs = map.stream_row(r) * cols;
                        codec.decode(&stream, ofs, &mut deq).unwrap();
                        for t in 0..n {
                            let at = &xs[t * cols..(t + 1) * cols];
                            // one row against one token, with the activations as that product takes them
                            let want = if sbs_takes_bf16_acts(ty) {
                                let mut row = vec![0u16; cols];
                                codec.decode_bf16(&stream, ofs, &mut row).unwrap();
                                let mut act = vec![0u16; cols];
                                round_acts_to_bf16(at, &mut act);
                                let mut one = [0f32];
                                dot_bf16_tile(&[&row], &act, cols, &mut one);
                                one[0] * 0.75
                            } else {
                                codec.dot(&stream, ofs, at) * 0.75
                            };
                            let got = results[0][t * rows + r];
                            assert_eq!(got.to_bits(), want.to_bits(), "{ty} n{n} r{r} t{t}: {got} vs {want}");
                            let exact: f32 = deq.iter().zip(at).map(|(a, b)| a * b).sum::<f32>() * 0.75;
                            // bf16 activations (and I8 weights rounded to bf16): each off by at most 2^-9 of itself
                            let magnitude: f32 = deq.iter().zip(at).map(|(a, b)| (a * b).abs()).sum::<f32>() * 0.75;
                            let tol = if sbs_takes_bf16_acts(ty) {
                                4e-3 * (magnitude + 1.0)
                            } else {
                                1e-3 * (1.0 + exact.abs())
                            };
                            assert!((exact - got).abs() < tol, "{ty}: {exact} vs {got}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sbs_matrices_outside_their_stream_are_errors() {
        let stream = vec![0u8; 4 * 64 * 3];
        let ok = SbsMatrix::new(&stream, SbsCodecType::F32, 3, 3, 64, RowBlocks::contiguous(0, 3), 1.0);
        assert!(ok.is_ok());
        let short = SbsMatrix::new(&stream[1..], SbsCodecType::F32, 3, 3, 64, RowBlocks::contiguous(0, 3), 1.0);
        assert!(short.err().unwrap().to_string().contains("the stream has 767"));
        let beyond = SbsMatrix::new(&stream, SbsCodecType::F32, 3, 2, 64, RowBlocks::contiguous(2, 2), 1.0);
        assert!(beyond.err().unwrap().to_string().contains("row 1 maps to stream row 3 of 3"));
        let nan = SbsMatrix::new(&stream, SbsCodecType::F32, 3, 3, 64, RowBlocks::contiguous(0, 3), f32::NAN);
        assert!(nan.is_err());
    }

    #[test]
    fn matmul_matches_dequantized_reference_and_is_thread_count_independent() {
        let (rows, cols, n) = (37, 256, 5);
        let mut seed = 7;
        let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4K, GgmlType::F32] {
            let wq = quantize_rows(ty, &wf, cols);
            let w = QMatrix::new(&wq, rows, cols, ty).unwrap();
            let mut deq = vec![0f32; cols];
            let mut results = Vec::new();
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads);
                let mut out = vec![0f32; n * rows];
                matmul(&pool, &w, &x, &mut out, &mut QuantizedActs::default()).unwrap();
                for r in 0..rows {
                    w.dequantize_row(r, &mut deq);
                    for t in 0..n {
                        let want: f32 = deq.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| a * b).sum();
                        let got = out[t * rows + r];
                        assert!((want - got).abs() < 0.05 * (1.0 + want.abs()), "{ty} r{r} t{t}: {want} vs {got}");
                    }
                }
                results.push(out);
            }
            assert_eq!(results[0], results[1], "{ty}: thread count changed the result");
        }
    }

    /// The repacked matrices through the whole matmul path: a padded last group (37 rows = two groups and 5
    /// rows), one token and several, one thread and two. The repacked kernels add in another order than the
    /// GGML layout's (and keep Q4_1/Q5_1's `d_a * sum_a` in f32), so they agree with it to float rounding, and
    /// with themselves bit for bit.
    #[test]
    fn repacked_matmuls_match_the_ggml_layout_with_a_padded_last_group() {
        let (rows, cols) = (37, 512);
        let mut seed = 11;
        let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        use GgmlType::*;
        for ty in [Q8_0, Q5_0, Q4_0, Q4_1, Q5_1, IQ4_NL, Q4K, Q5K, Q6K, IQ4_XS, Q2K, Q3K, F32, F16, BF16] {
            let wq = quantize_rows(ty, &wf, cols);
            let plain = QMatrix::new(&wq, rows, cols, ty).unwrap();
            let interleaved = InterleavedRows::repack(ty, rows, cols, &wq, &mut |_| {}).ok();
            let interleaved_k = InterleavedKRows::repack(ty, rows, cols, &wq, &mut |_| {}).ok();
            let panels = FloatPanels::repack(ty, rows, cols, &wq, &mut |_| {}).ok();
            let layouts = [interleaved.is_some(), interleaved_k.is_some(), panels.is_some()];
            assert_eq!(layouts.iter().filter(|&&l| l).count(), 1, "{ty} repacks into exactly one layout");
            for n in [1, 5] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
                let mut want = vec![0f32; n * rows];
                matmul(&ThreadPool::new(1), &plain, &x, &mut want, &mut QuantizedActs::default()).unwrap();
                let mut results = Vec::new();
                for threads in [1, 2] {
                    let pool = ThreadPool::new(threads);
                    let mut out = vec![f32::NAN; n * rows];
                    if let Some(w) = &interleaved {
                        matmul_interleaved(&pool, w, &x, &mut out, &mut InterleavedActs::default()).unwrap();
                    }
                    if let Some(w) = &interleaved_k {
                        matmul_interleaved_k(&pool, w, &x, &mut out, &mut QuantizedActs::default()).unwrap();
                    }
                    if let Some(w) = &panels {
                        matmul_float_panels(&pool, w, &x, &mut out);
                    }
                    for (i, (w, g)) in want.iter().zip(&out).enumerate() {
                        let (t, r) = (i / rows, i % rows);
                        // GGML's Q8_1 activations round `s = d * sum` to f16 for the offset term `m * s` of Q4_1
                        // and Q5_1; the interleaved kernels keep it in f32: 2^-10 of |m| |x| per block apart.
                        let s_rounding: f32 = if matches!(ty, Q4_1 | Q5_1) {
                            let row = &wq[r * ty.row_bytes(cols).unwrap()..][..ty.row_bytes(cols).unwrap()];
                            let xt = &x[t * cols..(t + 1) * cols];
                            row.chunks_exact(ty.type_size())
                                .zip(xt.chunks_exact(32))
                                .map(|(b, xb)| {
                                    let m = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
                                    m.abs() * xb.iter().map(|v| v.abs()).sum::<f32>() / 1024.0
                                })
                                .sum()
                        } else {
                            0.0
                        };
                        let tol = 1e-4 * (1.0 + w.abs()) + s_rounding;
                        assert!((w - g).abs() <= tol, "{ty} n{n} t{t} r{r}: {w} vs {g}");
                    }
                    results.push(out);
                }
                assert_eq!(results[0], results[1], "{ty} n{n}: thread count changed the result");
            }
        }
    }
}
