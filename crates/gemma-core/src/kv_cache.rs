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

    /// The cache as a file's bytes (`docs/openai-compatibility.md`, slot saving): its positions with the
    /// token ids they hold (`tokens`, one per position), every layer's rows, little-endian.
    pub fn to_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>, KvFileError> {
        if tokens.len() != self.len {
            return Err(KvFileError::Mismatch(format!("{} token ids for {} positions", tokens.len(), self.len)));
        }
        let floats: usize = self.layers.iter().map(|l| 2 * self.rows(l, self.len)).sum::<usize>() * self.row_len;
        let mut out = Vec::with_capacity(32 + tokens.len() * 4 + self.layers.len() * 24 + floats * 4);
        out.extend_from_slice(KV_MAGIC);
        out.extend_from_slice(&KV_VERSION.to_le_bytes());
        for n in [self.layers.len(), self.row_len, self.len] {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        tokens.iter().for_each(|t| out.extend_from_slice(&t.to_le_bytes()));
        for l in &self.layers {
            let n = self.rows(l, self.len) * self.row_len;
            if l.keys.len() < n || l.values.len() < n {
                return Err(KvFileError::Mismatch("a layer holds fewer rows than its positions".into()));
            }
            for v in [l.ring as u64, l.window as u64] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            l.keys[..n].iter().chain(&l.values[..n]).for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        Ok(out)
    }

    /// Reads a cache written by [`KvCache::to_bytes`] into the shape of `like` (an empty cache of the running
    /// model, with its capacity): the token ids and the cache. A file of another model, another layout or
    /// more positions than the capacity is refused; nothing is allocated beyond what the bytes hold.
    pub fn from_bytes(bytes: &[u8], like: &KvCache) -> Result<(Vec<u32>, KvCache), KvFileError> {
        let mut r = Reader(bytes);
        if r.take(KV_MAGIC.len())? != KV_MAGIC {
            return Err(KvFileError::NotKvCache);
        }
        let version = u32::from_le_bytes(r.array()?);
        if version != KV_VERSION {
            return Err(KvFileError::Version(version));
        }
        let (layers, row_len, len) = (r.u64()?, r.u64()?, r.u64()?);
        if layers != like.layers.len() as u64 || row_len != like.row_len as u64 {
            return Err(KvFileError::Mismatch(format!(
                "{layers} layers of {row_len} values per position; this model has {} of {}",
                like.layers.len(),
                like.row_len
            )));
        }
        if len > like.capacity as u64 {
            return Err(KvFileError::Mismatch(format!("{len} positions; the context holds {}", like.capacity)));
        }
        let len = len as usize;
        let tokens: Vec<u32> = r
            .take(len.checked_mul(4).ok_or(KvFileError::Truncated)?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut cache = KvCache {
            layers: Vec::with_capacity(like.layers.len()),
            row_len: like.row_len,
            len,
            capacity: like.capacity,
        };
        for (i, shape) in like.layers.iter().enumerate() {
            let (ring, window) = (r.u64()?, r.u64()?);
            if ring != shape.ring as u64 || window != shape.window as u64 {
                return Err(KvFileError::Mismatch(format!("layer {i}'s attention window differs")));
            }
            let n = like.rows(shape, len).checked_mul(like.row_len).ok_or(KvFileError::Truncated)?;
            let mut floats = r
                .take(n.checked_mul(8).ok_or(KvFileError::Truncated)?)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            let keys: Vec<f32> = floats.by_ref().take(n).collect();
            let values: Vec<f32> = floats.collect();
            cache.layers.push(LayerKv { keys, values, ring: shape.ring, window: shape.window });
        }
        if !r.0.is_empty() {
            return Err(KvFileError::Mismatch(format!("{} bytes after the last layer", r.0.len())));
        }
        Ok((tokens, cache))
    }

    /// Rows layer `l` holds for `len` positions.
    fn rows(&self, l: &LayerKv, len: usize) -> usize {
        if l.ring == 0 {
            len
        } else {
            len.min(l.ring)
        }
    }
}

const KV_MAGIC: &[u8; 4] = b"GKVC";
const KV_VERSION: u32 = 1;

/// Why KV cache bytes cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum KvFileError {
    #[error("not a gemma-rs KV cache file")]
    NotKvCache,
    #[error("KV cache file version {0} is not supported (this build reads version 1)")]
    Version(u32),
    #[error("the KV cache file is cut short")]
    Truncated,
    #[error("the KV cache does not fit this model: {0}")]
    Mismatch(String),
}

/// Reads the file's fields in order.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KvFileError> {
        if n > self.0.len() {
            return Err(KvFileError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KvFileError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64, KvFileError> {
        Ok(u64::from_le_bytes(self.array()?))
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
    fn saved_bytes_read_back_into_the_same_cache_and_bad_files_are_errors() {
        let ring = 8 + MAX_UBATCH;
        let like = KvCache::new(&[Some(8), None], 3, 10_000);
        for len in [0, 5, 2 * ring + 7] {
            let mut c = KvCache::new(&[Some(8), None], 3, 10_000);
            fill(&mut c, len);
            let tokens: Vec<u32> = (0..len as u32).collect();
            let bytes = c.to_bytes(&tokens).unwrap();
            let (back_tokens, back) = KvCache::from_bytes(&bytes, &like).unwrap();
            assert_eq!((back_tokens, back.len(), back.capacity()), (tokens, len, 10_000));
            for l in 0..2 {
                assert_eq!(back.layer(l).keys, c.layer(l).keys, "layer {l}");
                assert_eq!(back.layer(l).values, c.layer(l).values, "layer {l}");
            }
            // Every cut is an error, never a panic.
            for cut in 0..bytes.len().min(200) {
                assert!(KvCache::from_bytes(&bytes[..cut], &like).is_err(), "cut at {cut}");
            }
            assert!(matches!(KvCache::from_bytes(&bytes[..bytes.len() - 1], &like), Err(KvFileError::Truncated)));
        }
        let mut c = KvCache::new(&[Some(8), None], 3, 10_000);
        fill(&mut c, 20);
        let tokens: Vec<u32> = (0..20).collect();
        assert!(matches!(c.to_bytes(&tokens[..3]), Err(KvFileError::Mismatch(_))));
        let bytes = c.to_bytes(&tokens).unwrap();
        // Another model's layout, a smaller context, a longer file, another file.
        for other in [
            KvCache::new(&[Some(8)], 3, 10_000),
            KvCache::new(&[Some(8), None], 4, 10_000),
            KvCache::new(&[None, None], 3, 10_000),
            KvCache::new(&[Some(8), None], 3, 10),
        ] {
            assert!(matches!(KvCache::from_bytes(&bytes, &other), Err(KvFileError::Mismatch(_))));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(KvCache::from_bytes(&longer, &like), Err(KvFileError::Mismatch(_))));
        assert!(matches!(KvCache::from_bytes(b"GGUF\x03\0\0\0", &like), Err(KvFileError::NotKvCache)));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert!(matches!(KvCache::from_bytes(&v2, &like), Err(KvFileError::Version(2))));
        // A huge declared length is refused before anything is allocated for it.
        let mut huge = bytes[..24].to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(KvCache::from_bytes(&huge, &KvCache::new(&[Some(8), None], 3, usize::MAX)).is_err());
    }

    #[test]
    fn small_contexts_need_no_ring() {
        let c = KvCache::new(&[Some(512)], 2, 1000);
        assert_eq!(c.layer(0).ring, 0);
    }
}
