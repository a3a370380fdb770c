//! Sentence embeddings, as sentence-transformers computes them for EmbeddingGemma:
//!
//! ```text
//! h = final RMSNorm of the decoder's last states (attention over the whole input)
//! e = pool(h)                     (mean over every token, BOS and EOS included; or first / last token)
//! e = e W_dense2^T W_dense3^T     (the optional projections, 768 -> 3072 -> 768 for EmbeddingGemma)
//! e = e / |e|                     (L2 normalisation)
//! ```

use gemma_io::GgufFile;
use gemma_ops::matmul::matmul_view;
use gemma_ops::ThreadPool;

use super::{rms_norm_rows, sized, Scratch};
use crate::batch::{Batch, BatchToken};
use crate::config::{ModelConfig, Pooling};
use crate::error::ModelError;
use crate::weights::{matrix, Matrix, WeightFile};

/// The readout of an embedding model: pooling and the dense projections after it.
pub(crate) struct EmbeddingHead {
    pooling: Pooling,
    /// Applied in order to the pooled vector (`dense_2`, `dense_3` in llama.cpp's names).
    projections: Vec<Matrix>,
    /// Width of the final vector.
    pub(crate) dim: usize,
}

impl EmbeddingHead {
    /// The head of a GGUF embedding model: `dense_2.weight` and `dense_3.weight` when present (llama.cpp's
    /// converter writes them with `--sentence-transformers-dense-modules`).
    pub(crate) fn load(file: &GgufFile, c: &ModelConfig, pooling: Pooling) -> Result<EmbeddingHead, ModelError> {
        let mut projections = Vec::new();
        let mut width = c.d_model;
        for name in ["dense_2.weight", "dense_3.weight"] {
            let Some(info) = file.tensor(name) else { continue };
            // `matrix` checks the whole shape; this only reads the output width it must have.
            let rows = info.dims.get(1).and_then(|&r| usize::try_from(r).ok()).unwrap_or(0);
            projections.push(matrix(file, name, rows, width)?);
            width = rows;
        }
        Ok(EmbeddingHead { pooling, projections, dim: width })
    }
}

/// Runs one pass over a batch of whole inputs (the group's inputs are the batch's sequences, in order).
pub(crate) type GroupForward<'a> = dyn FnMut(&Batch, &[&[u32]], &mut Scratch) -> Result<(), ModelError> + 'a;

/// Runs `inputs` (token ids, each a whole input with its BOS/EOS) through `forward` in passes of up to the
/// context length in tokens, and returns one L2-normalised embedding per input. `forward` runs a batch of the
/// given inputs (sequence `i` is input `i` of the group), whose tokens ask for no logits, leaving the final
/// hidden states in `scratch.x`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed_inputs(
    file: WeightFile<'_>,
    c: &ModelConfig,
    head: &EmbeddingHead,
    final_norm: &[f32],
    inputs: &[&[u32]],
    pool: &ThreadPool,
    scratch: &mut Scratch,
    forward: &mut GroupForward<'_>,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let max_tokens = c.context_length;
    for ids in inputs {
        if ids.is_empty() {
            return Err(ModelError::BadBatch("an input to embed has no tokens".into()));
        }
        if ids.len() > c.context_length {
            return Err(ModelError::ContextFull { pos: ids.len() - 1, ctx: c.context_length });
        }
    }
    let mut out = Vec::with_capacity(inputs.len());
    let mut next = 0;
    while next < inputs.len() {
        // Whole inputs only: a token must see every other token of its input in the same pass.
        let mut end = next + 1;
        let mut tokens = inputs[next].len();
        while end < inputs.len() && tokens + inputs[end].len() <= max_tokens {
            tokens += inputs[end].len();
            end += 1;
        }
        let group = &inputs[next..end];
        let mut batch = Batch { tokens: Vec::with_capacity(tokens) };
        for (seq, ids) in group.iter().enumerate() {
            for (pos, &token) in ids.iter().enumerate() {
                batch.push(BatchToken { token, pos, seq, logits: false });
            }
        }
        forward(&batch, group, scratch)?;
        let d = c.d_model;
        let Scratch { x, h, acts, .. } = scratch;
        let x = &mut x[..tokens * d];
        rms_norm_rows(pool, x, final_norm, c.rms_eps);
        // Pool each input's rows.
        let pooled = sized(h, group.len() * d);
        let mut row = 0;
        for (ids, dst) in group.iter().zip(pooled.chunks_exact_mut(d)) {
            let rows = &x[row * d..(row + ids.len()) * d];
            match head.pooling {
                Pooling::Mean => {
                    dst.fill(0.0);
                    for r in rows.chunks_exact(d) {
                        dst.iter_mut().zip(r).for_each(|(a, &b)| *a += b);
                    }
                    let inv = 1.0 / ids.len() as f32;
                    dst.iter_mut().for_each(|a| *a *= inv);
                }
                Pooling::Cls => dst.copy_from_slice(&rows[..d]),
                Pooling::Last => dst.copy_from_slice(&rows[rows.len() - d..]),
            }
            row += ids.len();
        }
        let mut vectors = pooled.to_vec();
        for m in &head.projections {
            let mut projected = vec![0f32; group.len() * m.rows];
            matmul_view(pool, &m.view(file), &vectors, &mut projected, acts)?;
            vectors = projected;
        }
        for v in vectors.chunks_exact(head.dim) {
            out.push(l2_normalized(v));
        }
        next = end;
    }
    Ok(out)
}

/// The first `dims` values of an embedding, normalised again: Matryoshka truncation, which EmbeddingGemma was
/// trained for (512, 256, 128), and OpenAI's `dimensions`. `dims` at or above the width returns it whole.
pub fn truncate_embedding(v: &[f32], dims: usize) -> Vec<f32> {
    l2_normalized(&v[..dims.min(v.len())])
}

/// The cosine similarity of two vectors (0 when either is zero).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let d = norm(a) * norm(b);
    if d > 0.0 {
        (dot / d) as f32
    } else {
        0.0
    }
}

/// `v / |v|` (computed in f64); a zero vector stays zero, as llama.cpp's `common_embd_normalize`.
fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|&x| (f64::from(x) * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_gives_unit_vectors_and_keeps_zero() {
        let v = l2_normalized(&[3.0, 4.0]);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(l2_normalized(&[0.0, 0.0]), [0.0, 0.0]);
    }

    #[test]
    fn truncation_renormalises_and_cosine_is_scale_free() {
        assert_eq!(truncate_embedding(&[3.0, 4.0, 12.0], 2), [0.6, 0.8]);
        assert_eq!(truncate_embedding(&[0.6, 0.8], 5), [0.6, 0.8]);
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
