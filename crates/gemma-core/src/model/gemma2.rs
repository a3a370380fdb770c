//! Gemma 2 (as in the Gemma 2 technical report) and Gemma 1 (the Gemma report), decoder-only:
//!
//! ```text
//! x = embed(token) * sqrt(d_model)
//! per layer:  h = RMSNorm(x)
//!             q, k, v = h Wq, h Wk, h Wv;  q, k = RoPE(q, k)             (NeoX halves, one base for all layers)
//!             s = q k^T / sqrt(query_pre_attn_scalar)
//!             s = cap_attn * tanh(s / cap_attn)                          (Gemma 2: attention logit soft-capping)
//!             a = softmax(s + mask) v                                    (grouped-query; Gemma 2: sliding window
//!                                                                         on every other layer, the first local)
//!             x = x + RMSNorm(a Wo)                                      (Gemma 2: post-attention norm;
//!                                                                         Gemma 1: x = x + a Wo)
//!             h = RMSNorm(x);  x = x + RMSNorm((GELU(h Wgate) * h Wup) Wdown)   (Gemma 2: post-FFN norm)
//! logits = RMSNorm(x) E^T   (tied embedding)
//! logits = cap_final * tanh(logits / cap_final)                          (Gemma 2: final logit soft-capping)
//! ```
//! Gemma 2 is Gemma 1 with the sliding window, the two post norms and the two soft-caps added; both scale the
//! queries by `head_dim^-1/2` except Gemma 2 27B (`(d_model / n_heads)^-1/2`). Unlike Gemma 3 there is no
//! QK-norm. GGUF norms hold `1 + w` already (llama.cpp's converter adds the 1), so they load as they are;
//! gemma.cpp's SBS files hold `w`.

use gemma_io::GgufFile;
use gemma_ops::matmul::RowBlocks;
use gemma_ops::rope::{rope_inv_freq, RopeAngles};
use gemma_ops::vector::{add_assign, gelu_mul, scale};

use super::attention::{attention, AttentionShape};
use super::output::OutputHead;
use super::{rms_norm_rows, sized, Products, Scratch, WeightName};
use crate::batch::Batch;
use crate::config::{Architecture, ModelConfig};
use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::weights::{matrix, sbs_matrix, sbs_norm, vector, Matrix, SbsBlockMatrices};

/// Gemma 2's norms of each block's output, before it joins the residual stream.
struct PostNorms {
    attention: Vec<f32>,
    ffn: Vec<f32>,
}

pub struct Gemma2Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
    /// `None` for Gemma 1.
    post_norms: Option<PostNorms>,
}

pub struct Gemma2Weights {
    embedding: Matrix,
    /// Final norm and output projection (tied to the embedding unless the file has `output.weight`).
    pub(super) head: OutputHead,
    layers: Vec<Gemma2Layer>,
    /// RoPE inverse frequencies of the global and the local (sliding-window) layers: the same unless the file
    /// gives the local layers a base of their own (`rope.freq_base_swa`) or `--rope-freq-base` changes the
    /// global one.
    inv_freq_global: Vec<f32>,
    inv_freq_local: Vec<f32>,
}

impl Gemma2Weights {
    /// The weights of a `gemma2` or `gemma` GGUF (llama.cpp's tensor names).
    pub fn load(file: &GgufFile, c: &ModelConfig) -> Result<Gemma2Weights, ModelError> {
        let (d, hd, ff) = (c.d_model, c.head_dim, c.ffn_dim);
        let embedding = matrix(file, "token_embd.weight", c.vocab_size, d)?;
        let head = OutputHead::load(file, c, &embedding)?;
        let inv_freq_local = rope_inv_freq(hd, c.rope_base_local.unwrap_or(c.rope_base), 1.0);
        let inv_freq_global = rope_inv_freq(hd, c.rope_base, c.rope_freq_scale);
        let with_post_norms = c.arch == Architecture::Gemma2;
        let layers = (0..c.n_layers)
            .map(|l| {
                let n = |s: &str| format!("blk.{l}.{s}.weight");
                let post_norms = with_post_norms
                    .then(|| -> Result<PostNorms, ModelError> {
                        Ok(PostNorms {
                            attention: vector(file, &n("post_attention_norm"), d)?,
                            ffn: vector(file, &n("post_ffw_norm"), d)?,
                        })
                    })
                    .transpose()?;
                Ok(Gemma2Layer {
                    attn_norm: vector(file, &n("attn_norm"), d)?,
                    wq: matrix(file, &n("attn_q"), c.n_heads * hd, d)?,
                    wk: matrix(file, &n("attn_k"), c.n_kv_heads * hd, d)?,
                    wv: matrix(file, &n("attn_v"), c.n_kv_heads * hd, d)?,
                    wo: matrix(file, &n("attn_output"), d, c.n_heads * hd)?,
                    ffn_norm: vector(file, &n("ffn_norm"), d)?,
                    w_gate: matrix(file, &n("ffn_gate"), ff, d)?,
                    w_up: matrix(file, &n("ffn_up"), ff, d)?,
                    w_down: matrix(file, &n("ffn_down"), d, ff)?,
                    post_norms,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Gemma2Weights { embedding, head, layers, inv_freq_global, inv_freq_local })
    }

    /// The weights of a gemma.cpp SBS checkpoint of Gemma 2 (or Gemma 1: no post norms), laid out as for
    /// Gemma 3 ([`SbsBlockMatrices`]); norms are raw `w`, loaded as `1 + w`; the output projection is the
    /// embedding (tied).
    pub fn load_sbs(file: &gemma_io::sbs::SbsFile, c: &ModelConfig) -> Result<Gemma2Weights, ModelError> {
        let (d, hd) = (c.d_model, c.head_dim);
        let embedding =
            sbs_matrix(file, "c_embedding", c.vocab_size, d, c.vocab_size, RowBlocks::contiguous(0, c.vocab_size))?;
        let head = OutputHead::new(sbs_norm(file, "c_final_norm", d)?, embedding.clone());
        let inv_freq_local = rope_inv_freq(hd, c.rope_base_local.unwrap_or(c.rope_base), 1.0);
        let inv_freq_global = rope_inv_freq(hd, c.rope_base, c.rope_freq_scale);
        let with_post_norms = c.arch == Architecture::Gemma2;
        let layers = (0..c.n_layers)
            .map(|l| {
                let n = |s: &str| format!("{s}_{l}");
                let m = SbsBlockMatrices::load(file, c, l)?;
                let post_norms = with_post_norms
                    .then(|| -> Result<PostNorms, ModelError> {
                        Ok(PostNorms {
                            attention: sbs_norm(file, &n("post_att_ns"), d)?,
                            ffn: sbs_norm(file, &n("post_ff_ns"), d)?,
                        })
                    })
                    .transpose()?;
                Ok(Gemma2Layer {
                    attn_norm: sbs_norm(file, &n("pre_att_ns"), d)?,
                    wq: m.wq,
                    wk: m.wk,
                    wv: m.wv,
                    wo: m.wo,
                    ffn_norm: sbs_norm(file, &n("pre_ff_ns"), d)?,
                    w_gate: m.w_gate,
                    w_up: m.w_up,
                    w_down: m.w_down,
                    post_norms,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Gemma2Weights { embedding, head, layers, inv_freq_global, inv_freq_local })
    }

    /// The rotations that move a key `distance` positions back on the global and on the local layers.
    pub(super) fn rotations_back(&self, distance: usize) -> (RopeAngles, RopeAngles) {
        (RopeAngles::backward(distance, &self.inv_freq_global), RopeAngles::backward(distance, &self.inv_freq_local))
    }
}

/// Runs the decoder layers over `batch`, leaving the final hidden states in `s.x` (the caller applies the
/// output head, which soft-caps the logits when the configuration says so). The caches must already have
/// room for the batch's positions.
pub(crate) fn forward(
    mm: &mut Products<'_, '_>,
    c: &ModelConfig,
    w: &Gemma2Weights,
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
        let local = c.layer_is_local[l];
        let rope = if local { &rope_local } else { &rope_global };
        h.copy_from_slice(x);
        rms_norm_rows(pool, h, &lw.attn_norm, c.rms_eps);
        mm.matmul(name(l, "attn_q"), &lw.wq, h, q, acts)?;
        mm.matmul(name(l, "attn_k"), &lw.wk, h, k, acts)?;
        mm.matmul(name(l, "attn_v"), &lw.wv, h, v, acts)?;
        pool.for_chunks_mut(q, q_width, &|i, row| {
            for head in row.chunks_exact_mut(hd) {
                rope.neox(head, i);
                scale(head, c.query_scale);
            }
        });
        pool.for_chunks_mut(k, kv_width, &|i, row| row.chunks_exact_mut(hd).for_each(|head| rope.neox(head, i)));
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
            window: if local { c.sliding_window } else { None },
            causal: true,
            softcap: c.attn_logit_softcap,
        };
        attention(pool, l, &shape, batch, caches, q, k, v, attn);
        mm.matmul(name(l, "attn_output"), &lw.wo, attn, proj, acts)?;
        if let Some(post) = &lw.post_norms {
            rms_norm_rows(pool, proj, &post.attention, c.rms_eps);
        }
        add_assign(x, proj);

        // Feed-forward block.
        h.copy_from_slice(x);
        rms_norm_rows(pool, h, &lw.ffn_norm, c.rms_eps);
        mm.matmul(name(l, "ffn_gate"), &lw.w_gate, h, gate, acts)?;
        mm.matmul(name(l, "ffn_up"), &lw.w_up, h, up, acts)?;
        let up = &*up;
        pool.for_chunks_mut(gate, ff, &|i, g| gelu_mul(g, &up[i * ff..(i + 1) * ff]));
        mm.matmul(name(l, "ffn_down"), &lw.w_down, gate, proj, acts)?;
        if let Some(post) = &lw.post_norms {
            rms_norm_rows(pool, proj, &post.ffn, c.rms_eps);
        }
        add_assign(x, proj);
    }
    Ok(())
}
