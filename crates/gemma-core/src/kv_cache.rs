//! Per-sequence key/value cache: for each layer, one row of `n_kv_heads * head_dim` keys and values per
//! position, grown as positions are filled (so memory follows the tokens actually used).

use crate::error::ModelError;

pub struct LayerKv {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

pub struct KvCache {
    layers: Vec<LayerKv>,
    row_len: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions of a model with `n_layers` layers of `row_len` KV values.
    pub fn new(n_layers: usize, row_len: usize, capacity: usize) -> KvCache {
        KvCache {
            layers: (0..n_layers)
                .map(|_| LayerKv {
                    keys: Vec::new(),
                    values: Vec::new(),
                })
                .collect(),
            row_len,
            len: 0,
            capacity,
        }
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

    /// Forgets every position from `len` on (keeps the allocation).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for l in &mut self.layers {
            l.keys.truncate(self.len * self.row_len);
            l.values.truncate(self.len * self.row_len);
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Makes room for positions up to `end` (exclusive) in every layer, checking the capacity.
    pub(crate) fn reserve_to(&mut self, end: usize) -> Result<(), ModelError> {
        if end > self.capacity {
            return Err(ModelError::ContextFull {
                pos: end - 1,
                ctx: self.capacity,
            });
        }
        for l in &mut self.layers {
            if l.keys.len() < end * self.row_len {
                l.keys.resize(end * self.row_len, 0.0);
                l.values.resize(end * self.row_len, 0.0);
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
