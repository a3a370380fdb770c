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
        self.len = if self.prefix_lost(len) { 0 } else { len };
        for l in &mut self.layers {
            let rows = if l.ring == 0 { self.len } else { self.len.min(l.ring) };
            l.keys.truncate(rows * self.row_len);
            l.values.truncate(rows * self.row_len);
        }
        self.len
    }

    /// A new cache holding the first `len` positions of this one (fewer when this cache holds fewer). Like
    /// [`KvCache::truncate`], a ring layer that has already overwritten part of the window of position
    /// `len - 1` cannot give that prefix back: then the copy is empty. Check the copy's [`KvCache::len`] for
    /// how much is usable.
    pub fn copy_prefix(&self, len: usize) -> KvCache {
        let len = len.min(self.len);
        let len = if self.prefix_lost(len) { 0 } else { len };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                // The rows `truncate` would keep: position p lives in row `slot(p)`, and a prefix of a ring
                // longer than the ring needs every row.
                let rows = if l.ring == 0 { len } else { len.min(l.ring) };
                let n = (rows * self.row_len).min(l.keys.len());
                LayerKv { keys: l.keys[..n].to_vec(), values: l.values[..n].to_vec(), ring: l.ring, window: l.window }
            })
            .collect();
        KvCache { layers, row_len: self.row_len, len, capacity: self.capacity }
    }

    /// Whether going back to `len` positions (`len <= self.len`) would need ring rows already overwritten.
    fn prefix_lost(&self, len: usize) -> bool {
        self.layers.iter().any(|l| l.ring != 0 && self.len - len > l.ring - l.window.min(l.ring))
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

    /// Fills positions `0..end` with values that name their layer, position and lane, writing each
    /// position to its row as the forward pass does.
    fn fill(c: &mut KvCache, end: usize) {
        c.reserve_to(end).unwrap();
        let row_len = c.row_len();
        for l in 0..c.layers.len() {
            for pos in c.len()..end {
                let layer = c.layer_mut(l);
                let row = layer.slot(pos);
                for j in 0..row_len {
                    layer.keys[row * row_len + j] = (l * 1_000_000 + pos * 10 + j) as f32;
                    layer.values[row * row_len + j] = -((l * 1_000_000 + pos * 10 + j) as f32);
                }
            }
        }
        c.set_len(end);
    }

    /// The key and value of `pos` in layer `l`, read through the ring.
    fn at(c: &KvCache, l: usize, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let layer = c.layer(l);
        let row = layer.slot(pos) * c.row_len();
        (layer.keys[row..row + c.row_len()].to_vec(), layer.values[row..row + c.row_len()].to_vec())
    }

    #[test]
    fn a_copied_prefix_holds_the_same_rows_and_grows_on_its_own() {
        let mut c = KvCache::new(&[None, Some(8)], 3, 2_000);
        fill(&mut c, 300);
        let copy = c.copy_prefix(120);
        assert_eq!((copy.len(), copy.capacity(), copy.row_len()), (120, 2_000, 3));
        for l in 0..2 {
            for pos in 0..120 {
                assert_eq!(at(&copy, l, pos), at(&c, l, pos), "layer {l} position {pos}");
            }
            assert_eq!(copy.layer(l).keys.len(), 120 * 3, "only the prefix's rows are copied");
        }
        // The copy is independent: extending it leaves the original alone.
        let mut copy = copy;
        let before = at(&c, 0, 130);
        for l in 0..2 {
            copy.reserve_to(200).unwrap();
            let row_len = copy.row_len();
            let row = copy.layer(l).slot(130) * row_len;
            copy.layer_mut(l).keys[row] = 42.0;
        }
        assert_eq!(at(&c, 0, 130), before);
        // Asking for more than is held copies what is held.
        assert_eq!(c.copy_prefix(10_000).len(), 300);
        assert_eq!(c.copy_prefix(0).len(), 0);
    }

    #[test]
    fn a_wrapped_ring_copies_a_prefix_only_while_its_window_survives() {
        let ring = 8 + MAX_UBATCH;
        let mut c = KvCache::new(&[Some(8), None], 2, 10_000);
        fill(&mut c, 3 * ring + 5);
        // Going back less than the ring's slack: the window of the last kept position is intact.
        let keep = 3 * ring + 5 - 100;
        let copy = c.copy_prefix(keep);
        assert_eq!(copy.len(), keep);
        assert_eq!(copy.layer(0).keys.len(), ring * 2, "a wrapped ring is copied whole");
        for pos in keep - 8..keep {
            assert_eq!(at(&copy, 0, pos), at(&c, 0, pos));
            let (k, _) = at(&copy, 0, pos);
            assert_eq!(k[0], (pos * 10) as f32, "position {pos} is really in the copy");
        }
        assert_eq!(at(&copy, 1, 17), at(&c, 1, 17));
        // The same answer `truncate` gives: too far back is unusable.
        let far = 3 * ring + 5 - (MAX_UBATCH + 1);
        assert_eq!(c.copy_prefix(far).len(), 0);
        let mut t = c.copy_prefix(3 * ring + 5);
        assert_eq!(t.len(), 3 * ring + 5);
        assert_eq!(t.truncate(far), 0);
        assert_eq!(c.len(), 3 * ring + 5, "copying never changes the original");
    }

    #[test]
    fn small_contexts_need_no_ring() {
        let c = KvCache::new(&[Some(512)], 2, 1000);
        assert_eq!(c.layer(0).ring, 0);
    }
}
