//! Gemma 3 (decoder-only, as in the Gemma 3 technical report):
//!
//! ```text
//! x = embed(token) * sqrt(d_model)
//! per layer:  h = RMSNorm(x)
//!             q, k, v = h Wq, h Wk, h Wv;  q, k = RMSNorm per head (QK-norm);  q, k = RoPE(q, k)
//!             a = softmax(q k^T / sqrt(query_pre_attn_scalar)) v   (grouped-query; sliding window on local layers)
//!             x = x + RMSNorm(a Wo)                                 (post-attention norm)
//!             h = RMSNorm(x);  x = x + RMSNorm((GELU(h Wgate) * h Wup) Wdown)   (post-FFN norm)
//! logits = RMSNorm(x) E^T   (tied embedding)
//! ```
//! Local (sliding-window) layers use RoPE base 10,000; global layers the file's base.
//!
//! EmbeddingGemma runs the same layers with attention over the whole input (no causal mask, the sliding window
//! centred on each token); `model::embedding` pools the final states into one vector.

use gemma_io::GgufFile;
use gemma_ops::matmul::RowBlocks;
use gemma_ops::rope::{rope_inv_freq, RopeAngles};
use gemma_ops::vector::{add_assign, gelu_mul, rms_norm, scale};

use super::attention::{attention, AttentionShape};
use super::output::OutputHead;
use super::{rms_norm_rows, sized, Products, Scratch, WeightName};
use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::weights::{matrix, sbs_matrix, sbs_norm, vector, Matrix, SbsBlockMatrices};

pub struct Gemma3Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
    post_ffn_norm: Vec<f32>,
}

pub struct Gemma3Weights {
    embedding: Matrix,
    /// Final norm and output projection (tied to the embedding unless the file has `output.weight`).
    pub(super) head: OutputHead,
    layers: Vec<Gemma3Layer>,
    /// RoPE inverse frequencies of the global and the local (sliding-window) layers.
    inv_freq_global: Vec<f32>,
    inv_freq_local: Vec<f32>,
}

impl Gemma3Weights {
    pub fn load(file: &GgufFile, c: &ModelConfig) -> Result<Gemma3Weights, ModelError> {
        let (d, hd, ff) = (c.d_model, c.head_dim, c.ffn_dim);
        let embedding = matrix(file, "token_embd.weight", c.vocab_size, d)?;
        let head = OutputHead::load(file, c, &embedding)?;
        let inv_local = rope_inv_freq(hd, c.rope_base_local.unwrap_or(c.rope_base), 1.0);
        let inv_global = rope_inv_freq(hd, c.rope_base, c.rope_freq_scale);
        let layers = (0..c.n_layers)
            .map(|l| {
                let n = |s: &str| format!("blk.{l}.{s}.weight");
                Ok(Gemma3Layer {
                    attn_norm: vector(file, &n("attn_norm"), d)?,
                    wq: matrix(file, &n("attn_q"), c.n_heads * hd, d)?,
                    wk: matrix(file, &n("attn_k"), c.n_kv_heads * hd, d)?,
                    wv: matrix(file, &n("attn_v"), c.n_kv_heads * hd, d)?,
                    wo: matrix(file, &n("attn_output"), d, c.n_heads * hd)?,
                    q_norm: vector(file, &n("attn_q_norm"), hd)?,
                    k_norm: vector(file, &n("attn_k_norm"), hd)?,
                    post_attn_norm: vector(file, &n("post_attention_norm"), d)?,
                    ffn_norm: vector(file, &n("ffn_norm"), d)?,
                    w_gate: matrix(file, &n("ffn_gate"), ff, d)?,
                    w_up: matrix(file, &n("ffn_up"), ff, d)?,
                    w_down: matrix(file, &n("ffn_down"), d, ff)?,
                    post_ffn_norm: vector(file, &n("post_ffw_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Gemma3Weights { embedding, head, layers, inv_freq_global: inv_global, inv_freq_local: inv_local })
    }
}

impl Gemma3Weights {
    /// The weights of a gemma.cpp SBS checkpoint (tensor layouts in `gemma_io::sbs::tensor_info`; the fused
    /// matrices in [`SbsBlockMatrices`]): norms are raw `w`, loaded as `1 + w`; the output projection is the
    /// embedding (tied).
    pub fn load_sbs(file: &gemma_io::sbs::SbsFile, c: &ModelConfig) -> Result<Gemma3Weights, ModelError> {
        let (d, hd) = (c.d_model, c.head_dim);
        let embedding =
            sbs_matrix(file, "c_embedding", c.vocab_size, d, c.vocab_size, RowBlocks::contiguous(0, c.vocab_size))?;
        let head = OutputHead::new(sbs_norm(file, "c_final_norm", d)?, embedding.clone());
        let inv_local = rope_inv_freq(hd, c.rope_base_local.unwrap_or(c.rope_base), 1.0);
        let inv_global = rope_inv_freq(hd, c.rope_base, c.rope_freq_scale);
        let layers = (0..c.n_layers)
            .map(|l| {
                let n = |s: &str| format!("{s}_{l}");
                let m = SbsBlockMatrices::load(file, c, l)?;
                Ok(Gemma3Layer {
                    attn_norm: sbs_norm(file, &n("pre_att_ns"), d)?,
                    wq: m.wq,
                    wk: m.wk,
                    wv: m.wv,
                    wo: m.wo,
                    q_norm: sbs_norm(file, &n("query_norm"), hd)?,
                    k_norm: sbs_norm(file, &n("key_norm"), hd)?,
                    post_attn_norm: sbs_norm(file, &n("post_att_ns"), d)?,
                    ffn_norm: sbs_norm(file, &n("pre_ff_ns"), d)?,
                    w_gate: m.w_gate,
                    w_up: m.w_up,
                    w_down: m.w_down,
                    post_ffn_norm: sbs_norm(file, &n("post_ff_ns"), d)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Gemma3Weights { embedding, head, layers, inv_freq_global: inv_global, inv_freq_local: inv_local })
    }
}

impl Gemma3Weights {
    /// The rotations that move a key `distance` positions back on the global and on the local layers.
    pub(super) fn rotations_back(&self, distance: usize) -> (RopeAngles, RopeAngles) {
        (RopeAngles::backward(distance, &self.inv_freq_global), RopeAngles::backward(distance, &self.inv_freq_local))
    }
}

/// Runs the decoder layers over `batch`, leaving the final hidden states in `s.x` (the caller applies the
/// output head). The caches must already have room for the batch's positions.
pub(crate) fn forward(
    mm: &mut Products<'_, '_>,
    c: &ModelConfig,
    w: &Gemma3Weights,
    batch: &Batch,
    caches: &mut [KvCache],
    s: &mut Scratch,
) -> Result<(), ModelError> {
    let pool = mm.pool;
    let n = batch.len();
    let (d, hd, ff) = (c.d_model, c.head_dim, c.ffn_dim);
    let (q_width, kv_width) = (c.n_heads * hd, c.n_kv_heads * hd);
    let Scratch { x, h, q, k, v, attn, proj, gate, up, acts, .. } = s;
    let (x, h, q, k, v) =
        (sized(x, n * d), sized(h, n * d), sized(q, n * q_width), sized(k, n * kv_width), sized(v, n * kv_width));
    let (attn, proj, gate, up) = (sized(attn, n * q_width), sized(proj, n * d), sized(gate, n * ff), sized(up, n * ff));

    // Embedding, scaled by sqrt(d_model).
    mm.embed_tokens(&w.embedding, batch, x, c.embedding_scale, acts)?;

    let positions = || batch.tokens.iter().map(|t| t.pos);
    let (rope_global, rope_local) =
        (RopeAngles::new(positions(), &w.inv_freq_global), RopeAngles::new(positions(), &w.inv_freq_local));

    let name = WeightName::block;
    for (l, lw) in w.layers.iter().enumerate() {
        // Attention block.
        let rope = if c.layer_is_local[l] { &rope_local } else { &rope_global };
        h.copy_from_slice(x);
        rms_norm_rows(pool, h, &lw.attn_norm, c.rms_eps);
        mm.matmul(name(l, "attn_q"), &lw.wq, h, q, acts)?;
        mm.matmul(name(l, "attn_k"), &lw.wk, h, k, acts)?;
        mm.matmul(name(l, "attn_v"), &lw.wv, h, v, acts)?;
        pool.for_chunks_mut(q, q_width, &|i, row| {
            for head in row.chunks_exact_mut(hd) {
                rms_norm(head, &lw.q_norm, c.rms_eps);
                rope.neox(head, i);
                scale(head, c.query_scale);
            }
        });
        pool.for_chunks_mut(k, kv_width, &|i, row| {
            for head in row.chunks_exact_mut(hd) {
                rms_norm(head, &lw.k_norm, c.rms_eps);
                rope.neox(head, i);
            }
        });
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
            window: if c.layer_is_local[l] { c.sliding_window } else { None },
            causal: c.causal,
            softcap: None,
        };
        attention(pool, l, &shape, batch, caches, q, k, v, attn);
        mm.matmul(name(l, "attn_output"), &lw.wo, attn, proj, acts)?;
        rms_norm_rows(pool, proj, &lw.post_attn_norm, c.rms_eps);
        add_assign(x, proj);

        // Feed-forward block.
        h.copy_from_slice(x);
        rms_norm_rows(pool, h, &lw.ffn_norm, c.rms_eps);
        mm.matmul(name(l, "ffn_gate"), &lw.w_gate, h, gate, acts)?;
        mm.matmul(name(l, "ffn_up"), &lw.w_up, h, up, acts)?;
        let up = &*up;
        pool.for_chunks_mut(gate, ff, &|i, g| gelu_mul(g, &up[i * ff..(i + 1) * ff]));
        mm.matmul(name(l, "ffn_down"), &lw.w_down, gate, proj, acts)?;
        rms_norm_rows(pool, proj, &lw.post_ffn_norm, c.rms_eps);
        add_assign(x, proj);
    }
    Ok(())
}
