//! Per-sequence key/value cache: for each layer, one row of `n_kv_heads * head_dim` keys and values per
//! position. Global layers keep every position and grow as positions are filled (memory follows the tokens
//! actually used); sliding-window layers keep a ring of `window + MAX_UBATCH` rows, enough for every query of
//! a forward pass to still find its whole window.

use crate::error::ModelError;

/// Most tokens one forward pass runs at once; larger batches are split (llama.cpp's n_ubatch).
pub const MAX_UBATCH: usize = 512;

pub struct LayerKv {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
    /// Rows in the ring (`0`: one row per position, no wrap-around).
    pub ring: usize,
    /// Positions a query sees on this layer (`usize::MAX`: all).
    window: usize,
}

impl LayerKv {
    /// The row holding position `pos`.
    pub fn slot(&self, pos: usize) -> usize {
        if self.ring == 0 {
            pos
        } else {
            pos % self.ring
        }
    }
}

pub struct KvCache {
    layers: Vec<LayerKv>,
    row_len: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions of `row_len` KV values per layer; `windows[l]` is layer `l`'s
    /// sliding window (`None`: full attention).
    pub fn new(windows: &[Option<usize>], row_len: usize, capacity: usize) -> KvCache {
        let layers = windows
            .iter()
            .map(|w| {
                let (ring, window) = match *w {
                    Some(w) if w + MAX_UBATCH < capacity => (w + MAX_UBATCH, w),
                    _ => (0, usize::MAX),
                };
                LayerKv { keys: Vec::new(), values: Vec::new(), ring, window }
            })
            .collect();
        KvCache { layers, row_len, len: 0, capacity }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn row_len(&self) -> usize {
        self.row_len
    }
    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.keys.capacity() + l.values.capacity()) * 4).sum()
    }

    /// Forgets every position from `len` on and returns the length kept. A ring layer that has already
    /// overwritten part of the window of position `len - 1` cannot go back that far: then the cache is cleared
    /// and 0 is returned.
    pub fn truncate(&mut self, len: usize) -> usize {
        let len = len.min(self.len);
        let lost = self.layers.iter().any(|l| l.ring != 0 && self.len - len > l.ring - l.window.min(l.ring));
        self.len = if lost { 0 } else { len };
        for l in &mut self.layers {
            let rows = if l.ring == 0 { self.len } else { self.len.min(l.ring) };
            l.keys.truncate(rows * self.row_len);
            l.values.truncate(rows * self.row_len);
        }
        self.len
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Makes room for positions up to `end` (exclusive) in every layer, checking the capacity.
    pub(crate) fn reserve_to(&mut self, end: usize) -> Result<(), ModelError> {
        if end > self.capacity {
            return Err(ModelError::ContextFull { pos: end - 1, ctx: self.capacity });
        }
        for l in &mut self.layers {
            let rows = if l.ring == 0 { end } else { end.min(l.ring) };
            if l.keys.len() < rows * self.row_len {
                l.keys.resize(rows * self.row_len, 0.0);
                l.values.resize(rows * self.row_len, 0.0);
            }
        }
        Ok(())
    }

    /// Marks positions up to `end` (exclusive) as filled.
    pub(crate) fn set_len(&mut self, end: usize) {
        self.len = self.len.max(end);
    }

    pub fn layer(&self, l: usize) -> &LayerKv {
        &self.layers[l]
    }

    pub(crate) fn layer_mut(&mut self, l: usize) -> &mut LayerKv {
        &mut self.layers[l]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_layers_hold_only_window_plus_ubatch() {
        let mut c = KvCache::new(&[Some(4), None], 2, 10_000);
        c.reserve_to(5_000).unwrap();
        c.set_len(5_000);
        assert_eq!(c.layer(0).keys.len(), (4 + MAX_UBATCH) * 2);
        assert_eq!(c.layer(1).keys.len(), 5_000 * 2);
        assert_eq!(c.layer(0).slot(4 + MAX_UBATCH + 3), 3);
        assert_eq!(c.layer(1).slot(4 + MAX_UBATCH + 3), 4 + MAX_UBATCH + 3);
        // Going back less than the ring's slack keeps the cache; further clears it.
        assert_eq!(c.truncate(4_900), 4_900);
        assert_eq!(c.truncate(4_000), 0);
        assert!(c.is_empty());
        assert!(matches!(c.reserve_to(10_001), Err(ModelError::ContextFull { .. })));
    }

    #[test]
    fn small_contexts_need_no_ring() {
        let c = KvCache::new(&[Some(512)], 2, 1000);
        assert_eq!(c.layer(0).ring, 0);
    }
}
