//! The attention step shared by every architecture: store this batch's keys and values in each sequence's
//! cache, then let every query head attend causally (optionally within a sliding window) over its cache.

use gemma_ops::{grouped_query_attention, AttnSpan, KvView, ThreadPool};

use crate::batch::Batch;
use crate::kv_cache::KvCache;

pub(crate) struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Keys visible to a query, its own included; `None` for full causal attention.
    pub window: Option<usize>,
}

/// `q`: batch rows of `n_heads * head_dim` (already rotated and scaled); `k`, `v`: batch rows of
/// `n_kv_heads * head_dim` (keys rotated). Writes `out` (batch rows of `n_heads * head_dim`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention(
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
        let dst = slot * kv_row..(slot + 1) * kv_row;
        layer_kv.keys[dst.clone()].copy_from_slice(&k[i * kv_row..(i + 1) * kv_row]);
        layer_kv.values[dst].copy_from_slice(&v[i * kv_row..(i + 1) * kv_row]);
    }
    let spans: Vec<AttnSpan> = batch
        .tokens
        .iter()
        .map(|t| {
            let lkv = caches[t.seq].layer(layer);
            let first = shape.window.map_or(0, |w| (t.pos + 1).saturating_sub(w));
            AttnSpan {
                kv: KvView { keys: &lkv.keys, values: &lkv.values, row_len: kv_row, ring: lkv.ring },
                positions: first..t.pos + 1,
            }
        })
        .collect();
    grouped_query_attention(pool, q, &spans, shape.n_heads, shape.n_kv_heads, shape.head_dim, out);
}
