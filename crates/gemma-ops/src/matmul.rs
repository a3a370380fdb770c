//! Products of quantized weight matrices with activations: one token (matvec) or many (matmul).
//!
//! Activations are quantized once per matrix into the format the weight type pairs with
//! ([`QuantFormat::vec_dot_type`]), as llama.cpp does, then each output is one `vec_dot`.

use gemma_compression::{quant_format, GgmlType, QuantError, QuantFormat};

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
    let out_shared = SharedMut::new(out);
    let m = w.rows;
    pool.for_ranges(m, ROWS_PER_TASK, &|rows| {
        let w_slab = &w.data[rows.start * w.row_bytes..rows.end * w.row_bytes];
        if n == 1 {
            // SAFETY: tasks own disjoint row ranges, and with one token those are disjoint ranges of `out`.
            let dst = unsafe { out_shared.slice(rows.clone()) };
            w.format.dot_rows(w.cols, w_slab, rows.len(), &acts.data, 1, dst);
            return;
        }
        TILE.with_borrow_mut(|tile| {
            tile.resize(rows.len() * n, 0.0);
            w.format.dot_rows(w.cols, w_slab, rows.len(), &acts.data, n, tile);
            // Transpose rows x tokens into the token-major output, 16 tokens at a time so both sides stream.
            for t0 in (0..n).step_by(16) {
                let t1 = (t0 + 16).min(n);
                for (k, src) in tile.chunks_exact(n).enumerate() {
                    for (t, &v) in src.iter().enumerate().take(t1).skip(t0) {
                        // SAFETY: this task alone writes columns `rows` of every token's output row.
                        unsafe { out_shared.slice(t * m + rows.start + k..t * m + rows.start + k + 1)[0] = v };
                    }
                }
            }
        });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_matches_dequantized_reference_and_is_thread_count_independent() {
        let (rows, cols, n) = (37, 256, 5);
        let mut seed = 7;
        let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4K, GgmlType::F32] {
            let f = quant_format(ty).unwrap();
            let rb = ty.row_bytes(cols).unwrap();
            let mut wq = vec![0u8; rb * rows];
            for (src, dst) in wf.chunks(cols).zip(wq.chunks_mut(rb)) {
                f.quantize_row(src, dst).unwrap();
            }
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
}
