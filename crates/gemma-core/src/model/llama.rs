//! The Llama family (Llama 2/3, SmolLM, TinyLlama, ...; GGUF architecture `llama`), as llama.cpp runs it:
//!
//! ```text
//! x = embed(token)
//! per layer:  h = RMSNorm(x)
//!             q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv);  q, k = RoPE(q, k)   (adjacent pairs)
//!             a = softmax(q k^T / sqrt(head_dim)) v          (grouped-query, causal, no window)
//!             x = x + a Wo (+bo)
//!             h = RMSNorm(x);  x = x + (SiLU(h Wgate) * h Wup) Wdown   (optional biases on each)
//! logits = RMSNorm(x) Wout^T   (Wout = the embedding when the file has no `output.weight`)
//! ```
//! Llama's rotary embedding rotates adjacent pairs (2i, 2i+1) — llama.cpp's "normal" rope; the converter
//! permutes Wq and Wk so this matches the Hugging Face checkpoints. Llama 3's long-context scaling arrives as
//! the `rope_freqs` tensor: per-frequency divisors of the rotation angle.

use gemma_io::GgufFile;
use gemma_ops::rope::{rope_inv_freq, RopeAngles};
use gemma_ops::vector::{add_assign, scale, silu_mul};
use gemma_ops::QuantizedActs;

use super::attention::{attention, AttentionShape};
use super::output::OutputHead;
use super::{rms_norm_rows, sized, Products, Scratch, WeightName};
use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::weights::{matrix, optional_vector, vector, Matrix};

/// A projection with its optional bias (some Llama derivatives have biases; Llama itself does not).
struct Linear {
    weight: Matrix,
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn load(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: matrix(file, &format!("{name}.weight"), rows, cols)?,
            bias: optional_vector(file, &format!("{name}.bias"), rows)?,
        })
    }

    /// `out = x W^T + b` for every row of `x`.
    fn apply(
        &self,
        mm: &mut Products<'_, '_>,
        name: WeightName,
        x: &[f32],
        out: &mut [f32],
        acts: &mut QuantizedActs,
    ) -> Result<(), ModelError> {
        mm.matmul(name, &self.weight, x, out, acts)?;
        if let Some(b) = &self.bias {
            out.chunks_exact_mut(b.len()).for_each(|row| add_assign(row, b));
        }
        Ok(())
    }
}

pub struct LlamaLayer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

pub struct LlamaWeights {
    embedding: Matrix,
    /// Final norm and output projection (tied to the embedding unless the file has `output.weight`).
    pub(super) head: OutputHead,
    layers: Vec<LlamaLayer>,
    /// RoPE inverse frequencies (the same for every layer), with the frequency scale and any
    /// per-frequency factors folded in.
    inv_freq: Vec<f32>,
}

impl LlamaWeights {
    pub fn load(file: &GgufFile, c: &ModelConfig) -> Result<LlamaWeights, ModelError> {
        let (d, hd, ff) = (c.d_model, c.head_dim, c.ffn_dim);
        let embedding = matrix(file, "token_embd.weight", c.vocab_size, d)?;
        let head = OutputHead::load(file, c, &embedding)?;
        let mut inv_freq = rope_inv_freq(hd, c.rope_base, c.rope_freq_scale);
        if let Some(factors) = optional_vector(file, "rope_freqs.weight", hd / 2)? {
            // llama.cpp rotates by freq_scale * (pos * base^(-2i/d)) / factor[i].
            for (f, factor) in inv_freq.iter_mut().zip(&factors) {
                if !(*factor > 0.0 && factor.is_finite()) {
                    return Err(ModelError::BadMetadata {
                        key: "rope_freqs.weight".into(),
                        why: format!("frequency factor {factor} is not positive"),
                    });
                }
                *f /= factor;
            }
        }
        let layers = (0..c.n_layers)
            .map(|l| {
                let n = |s: &str| format!("blk.{l}.{s}");
                Ok(LlamaLayer {
                    attn_norm: vector(file, &n("attn_norm.weight"), d)?,
                    wq: Linear::load(file, &n("attn_q"), c.n_heads * hd, d)?,
                    wk: Linear::load(file, &n("attn_k"), c.n_kv_heads * hd, d)?,
                    wv: Linear::load(file, &n("attn_v"), c.n_kv_heads * hd, d)?,
                    wo: Linear::load(file, &n("attn_output"), d, c.n_heads * hd)?,
                    ffn_norm: vector(file, &n("ffn_norm.weight"), d)?,
                    w_gate: Linear::load(file, &n("ffn_gate"), ff, d)?,
                    w_up: Linear::load(file, &n("ffn_up"), ff, d)?,
                    w_down: Linear::load(file, &n("ffn_down"), d, ff)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(LlamaWeights { embedding, head, layers, inv_freq })
    }
}

impl LlamaWeights {
    /// The rotation that moves a key `distance` positions back.
    pub(super) fn rotation_back(&self, distance: usize) -> RopeAngles {
        RopeAngles::backward(distance, &self.inv_freq)
    }
}

/// Runs the decoder layers over `batch`, leaving the final hidden states in `s.x` (the caller applies the
/// output head). The caches must already have room for the batch's positions.
pub(crate) fn forward(
    mm: &mut Products<'_, '_>,
    c: &ModelConfig,
    w: &LlamaWeights,
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
    let shape = AttentionShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: hd,
        window: None,
        causal: true,
        softcap: None,
    };

    mm.embed_tokens(&w.embedding, batch, x, c.embedding_scale, acts)?;
    let rope = RopeAngles::new(batch.tokens.iter().map(|t| t.pos), &w.inv_freq);

    let name = WeightName::block;
    for (l, lw) in w.layers.iter().enumerate() {
        // Attention block.
        h.copy_from_slice(x);
        rms_norm_rows(pool, h, &lw.attn_norm, c.rms_eps);
        lw.wq.apply(mm, name(l, "attn_q"), h, q, acts)?;
        lw.wk.apply(mm, name(l, "attn_k"), h, k, acts)?;
        lw.wv.apply(mm, name(l, "attn_v"), h, v, acts)?;
        pool.for_chunks_mut(q, q_width, &|i, row| {
            for head in row.chunks_exact_mut(hd) {
                rope.adjacent(head, i);
                scale(head, c.query_scale);
            }
        });
        pool.for_chunks_mut(k, kv_width, &|i, row| {
            for head in row.chunks_exact_mut(hd) {
                rope.adjacent(head, i);
            }
        });
        attention(pool, l, &shape, batch, caches, q, k, v, attn);
        lw.wo.apply(mm, name(l, "attn_output"), attn, proj, acts)?;
        add_assign(x, proj);

        // Feed-forward block (SwiGLU).
        h.copy_from_slice(x);
        rms_norm_rows(pool, h, &lw.ffn_norm, c.rms_eps);
        lw.w_gate.apply(mm, name(l, "ffn_gate"), h, gate, acts)?;
        lw.w_up.apply(mm, name(l, "ffn_up"), h, up, acts)?;
        let up = &*up;
        pool.for_chunks_mut(gate, ff, &|i, g| silu_mul(g, &up[i * ff..(i + 1) * ff]));
        lw.w_down.apply(mm, name(l, "ffn_down"), gate, proj, acts)?;
        add_assign(x, proj);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A tiny synthetic Llama in F32 (so activations stay unquantized) with every optional piece SmolLM2
    //! lacks: biases on all projections, a separate `output.weight`, `rope_freqs` factors and linear rope
    //! scaling. Its logits must match a plain float64 transcription of the formulas in the module docs.

    use gemma_io::{GgmlType, GgufFile, GgufWriter, MetaValue};

    use crate::batch::Batch;
    use crate::model::Model;
    use gemma_ops::ThreadPool;

    const D: usize = 16;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HD: usize = D / HEADS;
    const FF: usize = 24;
    const VOCAB: usize = 10;
    const LAYERS: usize = 2;
    const BASE: f64 = 500.0;
    const SCALING: f64 = 2.0;
    const EPS: f64 = 1e-5;
    const FACTORS: [f32; HD / 2] = [1.0, 3.0];

    /// Deterministic values in [-0.5, 0.5).
    struct Values(u64);
    impl Values {
        fn take(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        }
    }

    /// The model's tensors by name, each with its GGUF dims.
    fn tensors() -> Vec<(String, Vec<u64>, Vec<f32>)> {
        let mut r = Values(7);
        let mut t = Vec::new();
        let mat = |t: &mut Vec<_>, name: String, rows: usize, cols: usize, r: &mut Values| {
            t.push((name, vec![cols as u64, rows as u64], r.take(rows * cols)));
        };
        mat(&mut t, "token_embd.weight".into(), VOCAB, D, &mut r);
        mat(&mut t, "output.weight".into(), VOCAB, D, &mut r);
        let norm = |r: &mut Values| r.take(D).iter().map(|v| 1.0 + v).collect::<Vec<f32>>();
        t.push(("output_norm.weight".into(), vec![D as u64], norm(&mut r)));
        t.push(("rope_freqs.weight".into(), vec![HD as u64 / 2], FACTORS.to_vec()));
        for l in 0..LAYERS {
            t.push((format!("blk.{l}.attn_norm.weight"), vec![D as u64], norm(&mut r)));
            t.push((format!("blk.{l}.ffn_norm.weight"), vec![D as u64], norm(&mut r)));
            for (name, rows, cols) in [
                ("attn_q", HEADS * HD, D),
                ("attn_k", KV_HEADS * HD, D),
                ("attn_v", KV_HEADS * HD, D),
                ("attn_output", D, HEADS * HD),
                ("ffn_gate", FF, D),
                ("ffn_up", FF, D),
                ("ffn_down", D, FF),
            ] {
                mat(&mut t, format!("blk.{l}.{name}.weight"), rows, cols, &mut r);
                t.push((format!("blk.{l}.{name}.bias"), vec![rows as u64], r.take(rows)));
            }
        }
        t
    }

    fn gguf(tensors: &[(String, Vec<u64>, Vec<f32>)]) -> GgufFile {
        let mut w = GgufWriter::new();
        let meta = [
            ("general.architecture", MetaValue::String("llama".into())),
            ("llama.block_count", MetaValue::U32(LAYERS as u32)),
            ("llama.embedding_length", MetaValue::U32(D as u32)),
            ("llama.feed_forward_length", MetaValue::U32(FF as u32)),
            ("llama.attention.head_count", MetaValue::U32(HEADS as u32)),
            ("llama.attention.head_count_kv", MetaValue::U32(KV_HEADS as u32)),
            ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(EPS as f32)),
            ("llama.rope.freq_base", MetaValue::F32(BASE as f32)),
            ("llama.rope.scaling.type", MetaValue::String("linear".into())),
            ("llama.rope.scaling.factor", MetaValue::F32(SCALING as f32)),
            ("llama.vocab_size", MetaValue::U32(VOCAB as u32)),
            ("llama.context_length", MetaValue::U32(64)),
        ];
        for (k, v) in meta {
            w.add_metadata(k, v).unwrap();
        }
        for (name, dims, values) in tensors {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.add_tensor(name.as_str(), dims, GgmlType::F32, bytes).unwrap();
        }
        GgufFile::from_bytes(w.to_bytes(), "tiny-llama.gguf").unwrap()
    }

    /// The forward pass in float64, straight from the formulas; logits of every position.
    fn reference(tensors: &[(String, Vec<u64>, Vec<f32>)], ids: &[u32]) -> Vec<Vec<f64>> {
        let get = |name: &str| -> Vec<f64> {
            tensors.iter().find(|t| t.0 == name).unwrap().2.iter().map(|&v| v as f64).collect()
        };
        // y = W x + b for W of `x.len()` columns.
        let linear = |name: &str, x: &[f64]| -> Vec<f64> {
            let (w, b) = (get(&format!("{name}.weight")), get(&format!("{name}.bias")));
            b.iter()
                .enumerate()
                .map(|(r, bi)| bi + (0..x.len()).map(|c| w[r * x.len() + c] * x[c]).sum::<f64>())
                .collect()
        };
        let rms_norm = |x: &[f64], w: &[f64]| -> Vec<f64> {
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + EPS).sqrt();
            x.iter().zip(w).map(|(v, wi)| v * inv * wi).collect()
        };
        let rope = |x: &mut [f64], pos: usize| {
            for head in x.chunks_exact_mut(HD) {
                for i in 0..HD / 2 {
                    let theta = pos as f64 / SCALING * BASE.powf(-2.0 * i as f64 / HD as f64) / FACTORS[i] as f64;
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * theta.cos() - b * theta.sin();
                    head[2 * i + 1] = a * theta.sin() + b * theta.cos();
                }
            }
        };
        let emb = get("token_embd.weight");
        let mut xs: Vec<Vec<f64>> = ids.iter().map(|&t| emb[t as usize * D..(t as usize + 1) * D].to_vec()).collect();
        for l in 0..LAYERS {
            let p = |s: &str| format!("blk.{l}.{s}");
            let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
            for (pos, x) in xs.iter().enumerate() {
                let h = rms_norm(x, &get(&p("attn_norm.weight")));
                let (mut q, mut k) = (linear(&p("attn_q"), &h), linear(&p("attn_k"), &h));
                rope(&mut q, pos);
                rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(linear(&p("attn_v"), &h));
            }
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut a = vec![0.0; HEADS * HD];
                for hq in 0..HEADS {
                    let hk = hq / (HEADS / KV_HEADS);
                    let q = &qs[pos][hq * HD..(hq + 1) * HD];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| q.iter().zip(&ks[j][hk * HD..]).map(|(a, b)| a * b).sum::<f64>() / (HD as f64).sqrt())
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        for e in 0..HD {
                            a[hq * HD + e] += (s - max).exp() / total * vs[j][hk * HD + e];
                        }
                    }
                }
                let o = linear(&p("attn_output"), &a);
                x.iter_mut().zip(&o).for_each(|(xi, oi)| *xi += oi);
                let h = rms_norm(x, &get(&p("ffn_norm.weight")));
                let (g, u) = (linear(&p("ffn_gate"), &h), linear(&p("ffn_up"), &h));
                let m: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let down = linear(&p("ffn_down"), &m);
                x.iter_mut().zip(&down).for_each(|(xi, di)| *xi += di);
            }
        }
        let out = get("output.weight");
        xs.iter()
            .map(|x| {
                let h = rms_norm(x, &get("output_norm.weight"));
                (0..VOCAB).map(|r| (0..D).map(|c| out[r * D + c] * h[c]).sum()).collect()
            })
            .collect()
    }

    #[test]
    fn forward_matches_a_float64_transcription_of_the_formulas() {
        let t = tensors();
        let model = Model::from_gguf(gguf(&t)).unwrap();
        assert_eq!(model.config.rope_freq_scale, 0.5);
        assert!(model.config.rope_freq_factors);
        let ids = [3u32, 9, 0, 4, 4, 7, 1];
        let want = reference(&t, &ids);
        let pool = ThreadPool::new(2);
        let mut cache = model.new_cache(16);
        // The first four tokens in one pass, then the rest one at a time through the cache.
        let mut got = Vec::new();
        let first = model.forward(&Batch::sequence(&ids[..4], 0, 0, true), std::slice::from_mut(&mut cache), &pool);
        let first = first.unwrap();
        got.extend((0..4).map(|i| first.row(i).to_vec()));
        for (pos, &id) in ids.iter().enumerate().skip(4) {
            let step = model.forward(&Batch::sequence(&[id], pos, 0, true), std::slice::from_mut(&mut cache), &pool);
            got.push(step.unwrap().row(0).to_vec());
        }
        for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
            for (a, b) in g.iter().zip(w) {
                assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "position {pos}: {g:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn a_missing_weight_is_a_typed_error() {
        let t: Vec<_> = tensors().into_iter().filter(|t| t.0 != "blk.1.ffn_up.weight").collect();
        let err = Model::from_gguf(gguf(&t)).err().expect("load fails").to_string();
        assert!(err.contains("blk.1.ffn_up.weight"), "{err}");
    }
}
