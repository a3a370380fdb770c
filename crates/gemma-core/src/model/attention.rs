//! The attention step shared by every architecture: store this batch's keys and values in each sequence's
//! cache, then let every query head attend over its cache: causally (optionally within a sliding window), or,
//! for embedding models, over the whole input (a sliding window then centred on the query).

use gemma_ops::{grouped_query_attention, AttnSpan, KvView, ThreadPool};

use crate::batch::Batch;
use crate::kv_cache::KvCache;

pub(crate) struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Keys visible to a query, its own included; `None` for full attention. Without `causal`, a query sees
    /// `window / 2` positions either side of its own (llama.cpp's symmetric window, transformers'
    /// `|i - j| < window / 2 + 1`).
    pub window: Option<usize>,
    /// Whether a query sees only earlier positions. Without it, every token of a sequence must be in the
    /// batch (a query sees the positions up to the last one of its sequence here).
    pub causal: bool,
    /// Gemma 2's attention logit soft-cap: scores become `cap * tanh(score / cap)` before the softmax.
    pub softcap: Option<f32>,
}

/// `q`: batch rows of `n_heads * head_dim` (already rotated and scaled); `k`, `v`: batch rows of
/// `n_kv_heads * head_dim` (keys rotated). Writes `out` (batch rows of `n_heads * head_dim`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    pool: &ThreadPool,
    layer: usize,
    shape: &AttentionShape,
    batch: &Batch,
    caches: &mut [KvCache],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    let kv_row = shape.n_kv_heads * shape.head_dim;
    for (i, t) in batch.tokens.iter().enumerate() {
        let layer_kv = caches[t.seq].layer_mut(layer);
        let slot = layer_kv.slot(t.pos);
        layer_kv.keys.set_row(slot, &k[i * kv_row..(i + 1) * kv_row]);
        layer_kv.values.set_row(slot, &v[i * kv_row..(i + 1) * kv_row]);
    }
    // Without causality a query sees up to its sequence's last position in this batch (decoders allocate
    // nothing here).
    let mut seq_end = Vec::new();
    if !shape.causal {
        seq_end.resize(caches.len(), 0usize);
        for t in &batch.tokens {
            seq_end[t.seq] = seq_end[t.seq].max(t.pos + 1);
        }
    }
    let spans: Vec<AttnSpan> = batch
        .tokens
        .iter()
        .map(|t| {
            let lkv = caches[t.seq].layer(layer);
            let positions = if shape.causal {
                shape.window.map_or(0, |w| (t.pos + 1).saturating_sub(w))..t.pos + 1
            } else {
                let half = shape.window.map(|w| w / 2);
                let end = half.map_or(seq_end[t.seq], |h| seq_end[t.seq].min(t.pos + h + 1));
                half.map_or(0, |h| t.pos.saturating_sub(h))..end
            };
            let kv = KvView { keys: lkv.keys.view(), values: lkv.values.view(), row_len: kv_row, ring: lkv.ring };
            AttnSpan { kv, positions }
        })
        .collect();
    grouped_query_attention(pool, q, &spans, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.softcap, out);
}
