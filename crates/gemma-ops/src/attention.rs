//! Scaled dot-product attention of one query head over cached keys and values.

use crate::pool::{SharedMut, ThreadPool};
#[cfg(target_arch = "x86_64")]
use crate::vector::x86 as vector_x86;
use crate::vector::{axpy_scalar, dot_scalar, softmax};

/// Keys and values of one layer for one sequence: position-major rows of `row_len` floats
/// (all KV heads of a position side by side).
pub struct KvView<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub row_len: usize,
    /// Rows in a ring buffer: position `p` lives in row `p % ring` (`0`: row `p`).
    pub ring: usize,
}

impl KvView<'_> {
    fn row(&self, p: usize) -> usize {
        if self.ring == 0 {
            p
        } else {
            p % self.ring
        }
    }
}

/// `out = softmax(q · K[p] for p in positions) · V`, reading KV head `kv_head` (of width `q.len()`).
/// The query is expected pre-scaled. `scores` is scratch space.
pub fn attend(
    q: &[f32],
    kv: &KvView,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { attend_avx512(q, kv, kv_head, positions, out, scores) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { attend_avx2(q, kv, kv_head, positions, out, scores) };
        }
    }
    attend_with(dot_scalar, axpy_scalar, q, kv, kv_head, positions, out, scores)
}

/// The attention loop over positions, with the dot and axpy kernels given (inlined into each SIMD variant so
/// the feature check happens once per head, not once per key).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_with(
    dot: impl Fn(&[f32], &[f32]) -> f32,
    axpy: impl Fn(f32, &[f32], &mut [f32]),
    q: &[f32],
    kv: &KvView,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = q.len();
    let off = kv_head * d;
    scores.clear();
    for p in positions.clone() {
        let r = kv.row(p) * kv.row_len + off;
        scores.push(dot(q, &kv.keys[r..r + d]));
    }
    softmax(scores);
    out.fill(0.0);
    for (p, &w) in positions.zip(scores.iter()) {
        let r = kv.row(p) * kv.row_len + off;
        axpy(w, &kv.values[r..r + d], out);
    }
}

/// `attend` compiled for one instruction set, with that set's dot and axpy inlined.
macro_rules! attend_for {
    ($name:ident, $features:literal, $dot:ident, $axpy:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            q: &[f32],
            kv: &KvView,
            kv_head: usize,
            positions: std::ops::Range<usize>,
            out: &mut [f32],
            scores: &mut Vec<f32>,
        ) {
            // SAFETY (both closures): this function only runs where the CPU has these features.
            attend_with(
                |a, b| unsafe { vector_x86::$dot(a, b) },
                |a, x, y| unsafe { vector_x86::$axpy(a, x, y) },
                q,
                kv,
                kv_head,
                positions,
                out,
                scores,
            )
        }
    };
}
attend_for!(attend_avx512, "avx512f", dot_avx512, axpy_avx512);
attend_for!(attend_avx2, "avx2,fma", dot_avx2, axpy_avx2);

thread_local! {
    /// Per-thread attention scores, kept so decoding allocates nothing once warm.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What one query token attends to: its sequence's cached keys/values and the positions it may see.
pub struct AttnSpan<'a> {
    pub kv: KvView<'a>,
    pub positions: std::ops::Range<usize>,
}

/// Grouped-query attention for a batch: `q` holds one row of `n_heads * head_dim` per token (pre-scaled),
/// `spans[i]` says what token `i` sees; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
/// Writes `out`, one row of `n_heads * head_dim` per token. Heads of all tokens run in parallel.
pub fn grouped_query_attention(
    pool: &ThreadPool,
    q: &[f32],
    spans: &[AttnSpan],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let q_row = n_heads * head_dim;
    assert_eq!(q.len(), spans.len() * q_row, "query rows do not match the spans");
    assert_eq!(out.len(), q.len(), "output rows do not match the queries");
    let group = n_heads / n_kv_heads.max(1);
    let out_shared = SharedMut::new(out);
    pool.run(spans.len() * n_heads, &|task| {
        let (i, h) = (task / n_heads, task % n_heads);
        let span = &spans[i];
        let head = i * q_row + h * head_dim..i * q_row + (h + 1) * head_dim;
        // SAFETY: task (i, h) alone writes this head's slice of row i.
        let o = unsafe { out_shared.slice(head.clone()) };
        SCORES.with_borrow_mut(|scores| attend(&q[head], &span.kv, h / group, span.positions.clone(), o, scores));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attends_to_the_matching_key() {
        // Two heads of width 2 per position; head 1 has one key aligned with the query.
        let keys = vec![0., 0., 1., 0., /* pos 1 */ 0., 0., 0., 1., /* pos 2 */ 0., 0., -1., 0.];
        let values = vec![0., 0., 10., 20., /* */ 0., 0., 30., 40., /* */ 0., 0., 50., 60.];
        let kv = KvView { keys: &keys, values: &values, row_len: 4, ring: 0 };
        let q = [0.0, 50.0];
        let mut out = [0.0; 2];
        attend(&q, &kv, 1, 0..3, &mut out, &mut Vec::new());
        assert!((out[0] - 30.0).abs() < 1e-3 && (out[1] - 40.0).abs() < 1e-3, "{out:?}");
        // With equal scores the result is the mean of the values in range.
        attend(&[0.0, 0.0], &kv, 1, 1..3, &mut out, &mut Vec::new());
        assert!((out[0] - 40.0).abs() < 1e-4 && (out[1] - 50.0).abs() < 1e-4);
    }

    #[test]
    fn ring_rows_wrap_around() {
        // A ring of 2 rows holding positions 2 (row 0) and 3 (row 1), one head of width 1.
        let (keys, values) = (vec![1.0, 1.0], vec![5.0, 7.0]);
        let kv = KvView { keys: &keys, values: &values, row_len: 1, ring: 2 };
        let mut out = [0.0];
        attend(&[0.0], &kv, 0, 3..4, &mut out, &mut Vec::new());
        assert_eq!(out[0], 7.0);
        attend(&[0.0], &kv, 0, 2..4, &mut out, &mut Vec::new());
        assert!((out[0] - 6.0).abs() < 1e-6);
    }

    #[test]
    fn simd_attention_matches_the_scalar_loop() {
        let (d, n) = (256, 300);
        let keys: Vec<f32> = (0..n * 2 * d).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3).collect();
        let values: Vec<f32> = (0..n * 2 * d).map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0).collect();
        let kv = KvView { keys: &keys, values: &values, row_len: 2 * d, ring: 0 };
        let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.01).sin()).collect();
        let (mut want, mut got) = (vec![0.0; d], vec![0.0; d]);
        attend_with(dot_scalar, axpy_scalar, &q, &kv, 1, 17..n, &mut want, &mut Vec::new());
        attend(&q, &kv, 1, 17..n, &mut got, &mut Vec::new());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
}
