//! Float weights (F32, F16, BF16) repacked at load in panels of 16 rows, element-major: element `k` of the
//! 16 rows of a panel lie side by side, so one vector load holds one element of 16 rows and each token's
//! activation is broadcast against it. A product needs no horizontal sums, and a tile of 4 panels x 6 tokens
//! loads 4 vectors and 6 scalars per 24 multiply-adds (the row-major dot pattern of [`crate::float`] loads
//! 10 vectors and ends every (row, token) in a lane reduction).
//!
//! The pattern: each (row, token) is one chain from +0, `acc = fma(w[k], x[k], acc)` for `k` in order. Lanes
//! never mix, so every SIMD level, tile shape, batch and thread count gives the scalar twin's bits.
//!
//! Layout: panel `p` holds rows `16p..16p + 16` (the last padded with zero rows) as `cols` runs of 16
//! elements in the stored type; panels start on 64-byte boundaries.

use std::ops::Range;

use crate::float::{FloatCodec, BF16, F16, F32};
use crate::{GgmlType, QuantError};

/// Rows per panel.
pub const PANEL_ROWS: usize = 16;

/// A 64-byte line, so that panels (and most runs of 16 elements) never straddle cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A float matrix of `rows x cols` in panels of 16 rows.
pub struct FloatPanels {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// Bytes of one panel, a whole number of lines.
    panel_bytes: usize,
    data: Vec<Line>,
}

impl std::fmt::Debug for FloatPanels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FloatPanels({}, {} x {})", self.ty, self.rows, self.cols)
    }
}

/// Whether `ty` can be repacked in panels.
pub fn is_float_panel_type(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

impl FloatPanels {
    /// Repacks `rows` rows of `cols` elements of `ty` (F32, F16 or BF16, GGML's row-major layout).
    /// `done(bytes)` is called as the source is consumed in order, with the length of the prefix of `src` no
    /// longer needed (callers that mapped the source can release those pages).
    pub fn repack(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        src: &[u8],
        done: &mut dyn FnMut(usize),
    ) -> Result<FloatPanels, QuantError> {
        if !is_float_panel_type(ty) {
            return Err(QuantError::Unsupported(ty));
        }
        let elem = ty.type_size();
        let row_bytes = cols * elem;
        if src.len() != rows * row_bytes {
            return Err(QuantError::BadBufferLength { ty, n: rows * cols, expected: rows * row_bytes, got: src.len() });
        }
        let panel_bytes = (PANEL_ROWS * row_bytes).div_ceil(64) * 64;
        let panels = rows.div_ceil(PANEL_ROWS);
        let mut data = vec![Line([0; 64]); panels * panel_bytes / 64];
        let bytes = lines_as_bytes_mut(&mut data);
        for (p, panel) in bytes.chunks_exact_mut(panel_bytes.max(1)).enumerate().take(panels) {
            for r in 0..PANEL_ROWS.min(rows - p * PANEL_ROWS) {
                let row = &src[(p * PANEL_ROWS + r) * row_bytes..][..row_bytes];
                match elem {
                    4 => scatter_row::<4>(row, panel, r),
                    _ => scatter_row::<2>(row, panel, r),
                }
            }
            done(((p + 1) * PANEL_ROWS).min(rows) * row_bytes);
        }
        Ok(FloatPanels { ty, rows, cols, panel_bytes, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Panels of 16 rows (the last may be padded).
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL_ROWS)
    }

    fn panel_data(&self, panels: Range<usize>) -> &[u8] {
        &lines_as_bytes(&self.data)[panels.start * self.panel_bytes..panels.end * self.panel_bytes]
    }

    /// Row `r` decoded to f32 (exact: the stored values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {} x {}", self.rows, self.cols);
        let elem = self.ty.type_size();
        let panel = self.panel_data(r / PANEL_ROWS..r / PANEL_ROWS + 1);
        let lane = r % PANEL_ROWS;
        for (k, o) in out.iter_mut().enumerate() {
            *o = load_elem(self.ty, &panel[(k * PANEL_ROWS + lane) * elem..]);
        }
    }

    /// The products of the rows of `panels` with each of the `tokens` rows of `acts` (`cols` f32 each):
    /// `tile[t * w + i]` for token `t` and row `panels.start * 16 + i`, where `w = 16 * panels.len()`
    /// (padding rows included, as zeros).
    pub fn dot_panels(&self, panels: Range<usize>, acts: &[f32], tokens: usize, tile: &mut [f32]) {
        let width = PANEL_ROWS * panels.len();
        assert_eq!(tile.len(), tokens * width, "tile size");
        // SAFETY: `tile` holds `tokens` rows of `width` values, and the borrow is exclusive.
        let out = unsafe { PanelOut::new(tile.as_mut_ptr(), width, width) };
        self.dot_panels_to(panels, acts, tokens, &out);
    }

    /// The products of [`FloatPanels::dot_panels`], written straight into a matrix's output: row
    /// `panels.start * 16 + i` of token `t` goes to `out[t * stride + i]`, for the real rows only.
    ///
    /// # Safety
    /// `out` must be valid for writes at `t * stride + i` for every token `t < tokens` and real row `i` of the
    /// panels (`i < min(16 * panels.len(), rows - 16 * panels.start)`), and nothing else may access those
    /// places during the call (tasks of one product write disjoint row ranges).
    pub unsafe fn dot_panels_into(
        &self,
        panels: Range<usize>,
        acts: &[f32],
        tokens: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let cols = (PANEL_ROWS * panels.len()).min(self.rows.saturating_sub(PANEL_ROWS * panels.start));
        assert!(tokens <= 1 || cols <= stride, "rows overlap from token to token");
        // SAFETY: the caller's guarantee, for exactly these tokens and columns.
        self.dot_panels_to(panels, acts, tokens, &unsafe { PanelOut::new(out, stride, cols) });
    }

    fn dot_panels_to(&self, panels: Range<usize>, acts: &[f32], tokens: usize, out: &PanelOut) {
        assert!(panels.start <= panels.end && panels.end <= self.panels(), "panels {panels:?} of {}", self.panels());
        assert_eq!(acts.len(), tokens * self.cols, "activations of another width");
        let s = PanelSlab {
            w: self.panel_data(panels.clone()),
            panel_bytes: self.panel_bytes,
            panels: panels.len(),
            k: self.cols,
            acts,
            tokens,
        };
        match self.ty {
            GgmlType::F32 => dot_panels_dispatch::<F32>(&s, out),
            GgmlType::F16 => dot_panels_dispatch::<F16>(&s, out),
            _ => dot_panels_dispatch::<BF16>(&s, out),
        }
    }
}

/// Where the products go: column `c` (a row of the slab, from its first) of token `t` at
/// `ptr + t * stride + c`, for `c < cols` only (the panels' padding rows, and rows past `cols`, are dropped).
pub(crate) struct PanelOut {
    ptr: *mut f32,
    stride: usize,
    cols: usize,
}

impl PanelOut {
    /// # Safety
    /// `ptr + t * stride + c` must be writable for every token `t` of the slab it is used with and `c < cols`,
    /// and nothing else may access those places while the `PanelOut` is in use.
    pub(crate) unsafe fn new(ptr: *mut f32, stride: usize, cols: usize) -> PanelOut {
        PanelOut { ptr, stride, cols }
    }

    /// Columns kept.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Where column `c` of token `t` goes (writable when `c < cols`, by the constructor's contract).
    pub(crate) fn at(&self, t: usize, c: usize) -> *mut f32 {
        self.ptr.wrapping_add(t * self.stride + c)
    }

    /// Writes `v` (16 rows from column `c`) for token `t`, dropping columns from `cols` on.
    pub(crate) fn write(&self, t: usize, c: usize, v: &[f32; PANEL_ROWS]) {
        let n = self.cols.saturating_sub(c).min(PANEL_ROWS);
        // SAFETY: the constructor's contract covers columns below `cols` of every token of the slab.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.at(t, c), n) };
    }
}

/// Element `k` of `row` (elements of `E` bytes) to lane `r` of run `k` of `panel`.
fn scatter_row<const E: usize>(row: &[u8], panel: &mut [u8], r: usize) {
    for (run, e) in panel.chunks_exact_mut(PANEL_ROWS * E).zip(row.chunks_exact(E)) {
        run[r * E..(r + 1) * E].copy_from_slice(e);
    }
}

fn load_elem(ty: GgmlType, b: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 => F32::load(b),
        GgmlType::F16 => F16::load(b),
        _ => BF16::load(b),
    }
}

fn lines_as_bytes(lines: &[Line]) -> &[u8] {
    // SAFETY: `Line` is 64 plain bytes with no padding, so the lines are `64 * len` initialised bytes.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), lines.len() * 64) }
}

fn lines_as_bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: as above; the borrow is exclusive, and every byte pattern is a valid `Line`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64) }
}

/// Panels and tokens checked by [`FloatPanels::dot_panels`]: `panels` panels of `panel_bytes` in `w`, each
/// `k` runs of 16 elements; `tokens` rows of `k` f32 in `acts`.
pub(crate) struct PanelSlab<'a> {
    pub w: &'a [u8],
    pub panel_bytes: usize,
    pub panels: usize,
    pub k: usize,
    pub acts: &'a [f32],
    pub tokens: usize,
}

/// The scalar twin: one fused multiply-add chain per (row, token).
pub(crate) fn dot_panels_scalar<C: FloatCodec>(s: &PanelSlab, out: &PanelOut) {
    let elem = C::TY.type_size();
    for p in 0..s.panels {
        let panel = &s.w[p * s.panel_bytes..][..s.panel_bytes];
        for t in 0..s.tokens {
            let x = &s.acts[t * s.k..(t + 1) * s.k];
            let mut acc = [0.0f32; PANEL_ROWS];
            for (k, &xk) in x.iter().enumerate() {
                let run = &panel[k * PANEL_ROWS * elem..][..PANEL_ROWS * elem];
                for (a, e) in acc.iter_mut().zip(run.chunks_exact(elem)) {
                    *a = C::load(e).mul_add(xk, *a);
                }
            }
            out.write(t, p * PANEL_ROWS, &acc);
        }
    }
}

fn dot_panels_dispatch<C: FloatCodec>(s: &PanelSlab, out: &PanelOut) {
    #[cfg(target_arch = "x86_64")]
    {
        let level = crate::simd_level();
        if level >= crate::SimdLevel::Avx512 {
            // SAFETY: the AVX-512 level implies AVX2, FMA, F16C, AVX-512 F and BW; lengths were checked.
            unsafe { crate::x86::float_panels::dot_panels_avx512::<C>(s, out) };
            return;
        }
        if level >= crate::SimdLevel::Avx2 {
            // SAFETY: the AVX2 level implies FMA and F16C; lengths were checked.
            unsafe { crate::x86::float_panels::dot_panels_avx2::<C>(s, out) };
            return;
        }
    }
    dot_panels_scalar::<C>(s, out);
}

/// Panels whose weights stay in L2 while every token tile passes over them: about 512 KiB, in whole tiles
/// of 4 panels.
pub(crate) fn panel_block(panel_bytes: usize) -> usize {
    ((512 << 10) / panel_bytes.max(1) / 4 * 4).max(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::TestRng;

    fn stored<C: FloatCodec>(values: &[f32]) -> Vec<u8> {
        let mut w = vec![0u8; values.len() * C::TY.type_size()];
        for (v, b) in values.iter().zip(w.chunks_exact_mut(C::TY.type_size())) {
            C::store(*v, b);
        }
        w
    }

    /// Every SIMD level the CPU has gives the scalar twin's bits, for every float type, tile shape and
    /// panel count (padded last panels too), and rows decode to the stored values.
    #[test]
    fn kernels_equal_the_scalar_twin_bitwise() {
        fn check<C: FloatCodec>(rng: &mut TestRng) {
            for cols in [1, 3, 16, 40, 768] {
                for rows in [1, 15, 16, 17, 64, 100, 129] {
                    let values: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
                    let w = stored::<C>(&values);
                    let mut released = 0;
                    let m = FloatPanels::repack(C::TY, rows, cols, &w, &mut |d| released = d).unwrap();
                    assert_eq!(released, w.len());
                    let mut row = vec![0f32; cols];
                    for r in [0, rows / 2, rows - 1] {
                        m.dequantize_row(r, &mut row);
                        let want: Vec<f32> = w[r * cols * C::TY.type_size()..][..cols * C::TY.type_size()]
                            .chunks_exact(C::TY.type_size())
                            .map(C::load)
                            .collect();
                        assert_eq!(row, want, "{} row {r}", C::TY);
                    }
                    for tokens in [1, 2, 5, 6, 7, 13] {
                        let acts: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
                        let np = m.panels();
                        for panels in [0..np, np / 2..np, 0..np.div_ceil(2)] {
                            let s = PanelSlab {
                                w: m.panel_data(panels.clone()),
                                panel_bytes: m.panel_bytes,
                                panels: panels.len(),
                                k: cols,
                                acts: &acts,
                                tokens,
                            };
                            let width = PANEL_ROWS * panels.len();
                            let mut want = vec![0f32; tokens * width];
                            // SAFETY: each buffer holds `tokens` rows of `width` values, used by one kernel at a time.
                            let to = |v: &mut Vec<f32>| unsafe { PanelOut::new(v.as_mut_ptr(), width, width) };
                            dot_panels_scalar::<C>(&s, &to(&mut want));
                            #[cfg(target_arch = "x86_64")]
                            for level in crate::SimdLevel::supported() {
                                let mut got = vec![f32::NAN; want.len()];
                                match level {
                                    crate::SimdLevel::Scalar => continue,
                                    // SAFETY: the CPU reports this level.
                                    crate::SimdLevel::Avx2 => unsafe {
                                        crate::x86::float_panels::dot_panels_avx2::<C>(&s, &to(&mut got))
                                    },
                                    // SAFETY: the CPU reports this level.
                                    crate::SimdLevel::Avx512 => unsafe {
                                        crate::x86::float_panels::dot_panels_avx512::<C>(&s, &to(&mut got))
                                    },
                                }
                                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                                assert!(same, "{} {level} {rows}x{cols} tokens {tokens} panels {panels:?}", C::TY);
                            }
                            // The entry point, and each token alone, give the same bits.
                            let mut got = vec![0f32; want.len()];
                            m.dot_panels(panels.clone(), &acts, tokens, &mut got);
                            assert_eq!(got, want);
                            // Written into a wider output: the real rows only, nothing else touched.
                            let stride = rows + 3;
                            let mut wide = vec![f32::NAN; tokens * stride];
                            // SAFETY: `wide` holds `tokens` rows of `stride >= rows` values.
                            unsafe { m.dot_panels_into(panels.clone(), &acts, tokens, wide.as_mut_ptr(), stride) };
                            let first = panels.start * PANEL_ROWS;
                            let real = width.min(rows - first.min(rows));
                            for t in 0..tokens {
                                assert_eq!(wide[t * stride..][..real], want[t * width..][..real]);
                                assert!(wide[t * stride + real..(t + 1) * stride].iter().all(|v| v.is_nan()));
                            }
                            for t in [0, tokens - 1] {
                                let mut one = vec![0f32; width];
                                m.dot_panels(panels.clone(), &acts[t * cols..(t + 1) * cols], 1, &mut one);
                                assert_eq!(one, want[t * width..(t + 1) * width]);
                            }
                        }
                    }
                }
            }
        }
        let mut rng = TestRng::new(11);
        check::<F32>(&mut rng);
        check::<F16>(&mut rng);
        check::<BF16>(&mut rng);
    }

    /// The products are the rows' dots (float64 reference), padding rows are zero, and the chains are the
    /// ones documented: sequential fused multiply-adds from +0.
    #[test]
    fn products_are_the_dots_of_the_rows() {
        let mut rng = TestRng::new(3);
        let (rows, cols, tokens) = (21, 50, 3);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let w = stored::<F32>(&values);
        let m = FloatPanels::repack(GgmlType::F32, rows, cols, &w, &mut |_| {}).unwrap();
        let acts: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
        let mut tile = vec![0f32; tokens * 32];
        m.dot_panels(0..2, &acts, tokens, &mut tile);
        for t in 0..tokens {
            for r in 0..32 {
                let got = tile[t * 32 + r];
                if r >= rows {
                    assert_eq!(got, 0.0);
                    continue;
                }
                let (wr, x) = (&values[r * cols..(r + 1) * cols], &acts[t * cols..(t + 1) * cols]);
                let chain = wr.iter().zip(x).fold(0.0f32, |acc, (a, b)| a.mul_add(*b, acc));
                assert_eq!(got.to_bits(), chain.to_bits());
                let exact: f64 = wr.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((got as f64 - exact).abs() < 1e-4, "{got} vs {exact}");
            }
        }
    }

    #[test]
    fn wrong_types_and_lengths_are_errors() {
        assert!(FloatPanels::repack(GgmlType::Q8_0, 1, 32, &[0; 34], &mut |_| {}).is_err());
        assert!(FloatPanels::repack(GgmlType::F32, 2, 4, &[0; 31], &mut |_| {}).is_err());
        assert!(FloatPanels::repack(GgmlType::F16, 0, 4, &[], &mut |_| {}).is_ok_and(|m| m.panels() == 0));
    }
}
