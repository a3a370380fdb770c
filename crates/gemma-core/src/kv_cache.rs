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
    /// After a context shift ([`KvCache::shift`]): ring layers have no rows for positions below this one
    /// (kept tokens the ring had already overwritten before the shift). 0 otherwise.
    lost_below: usize,
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
        KvCache { layers, row_len, len: 0, capacity, lost_below: 0 }
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
        if self.len == 0 {
            self.lost_below = 0;
        }
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
        let lost_below = if len == 0 { 0 } else { self.lost_below };
        KvCache { layers, row_len: self.row_len, len, capacity: self.capacity, lost_below }
    }

    /// Whether going back to `len` positions (`len <= self.len`) would need ring rows already overwritten (or
    /// lost in a context shift).
    fn prefix_lost(&self, len: usize) -> bool {
        !self.can_go_back(self.len, len)
    }

    /// Whether a cache holding `from` positions (this one, or this one after more positions are appended)
    /// could go back to `to` with [`KvCache::truncate`]: a ring layer keeps `MAX_UBATCH` rows beyond its window,
    /// so positions written over the last `MAX_UBATCH` can be forgotten, no more. Speculative decoding asks
    /// before it writes a draft it may have to take back.
    pub fn can_go_back(&self, from: usize, to: usize) -> bool {
        let to = to.min(from);
        !self.layers.iter().any(|l| {
            l.ring != 0
                && (from - to > l.ring - l.window.min(l.ring)
                    || (to > 0 && (to + 1).saturating_sub(l.window) < self.lost_below))
        })
    }

    /// Context shift (llama.cpp's `seq_rm` + `seq_add`): forgets the `discard` positions after the first `keep`
    /// and moves every later one back by `discard`. `rotate_back(layer, key_row)` must re-rotate one moved key
    /// row of `layer` by `-discard` positions (the model knows its RoPE); values move unchanged.
    ///
    /// Sliding-window layers keep only a ring of recent rows, so a kept token the ring has already
    /// overwritten is gone; the shift is refused (nothing changes) when the next position's window would
    /// need such a token.
    pub fn shift(
        &mut self,
        keep: usize,
        discard: usize,
        rotate_back: &mut dyn FnMut(usize, &mut [f32]),
    ) -> Result<(), ModelError> {
        let len = self.len;
        if discard == 0 {
            return Ok(());
        }
        if keep + discard > len {
            return Err(ModelError::BadBatch(format!(
                "a context shift cannot drop positions {keep}..{} of {len}",
                keep + discard
            )));
        }
        let new_len = len - discard;
        // Ring layers: the oldest position that still has a row, before and after the shift.
        let mut plans = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            if l.ring == 0 {
                plans.push(None);
                continue;
            }
            let valid_from = len.saturating_sub(l.ring).max(self.lost_below);
            let new_valid_from =
                if valid_from <= keep { valid_from } else { keep.max(valid_from.saturating_sub(discard)) }
                    .max(new_len.saturating_sub(l.ring));
            if (new_len + 1).saturating_sub(l.window) < new_valid_from {
                return Err(ModelError::ContextShift(format!(
                    "the sliding window of position {new_len} would need kept positions below {new_valid_from}, \
                     which its ring already overwrote"
                )));
            }
            plans.push(Some(new_valid_from));
        }
        let r = self.row_len;
        let mut new_lost_below = 0;
        for (li, (l, plan)) in self.layers.iter_mut().zip(plans).enumerate() {
            match plan {
                None => {
                    l.keys.copy_within((keep + discard) * r..len * r, keep * r);
                    l.values.copy_within((keep + discard) * r..len * r, keep * r);
                    l.keys.truncate(new_len * r);
                    l.values.truncate(new_len * r);
                    for row in l.keys[keep * r..new_len * r].chunks_exact_mut(r) {
                        rotate_back(li, row);
                    }
                }
                Some(valid_from) => {
                    let (old_keys, old_values) = (l.keys.clone(), l.values.clone());
                    let rows = new_len.min(l.ring);
                    l.keys.truncate(rows * r);
                    l.values.truncate(rows * r);
                    for q in valid_from..new_len {
                        let src = if q < keep { q } else { q + discard };
                        let (from, to) = (l.slot(src) * r, l.slot(q) * r);
                        l.keys[to..to + r].copy_from_slice(&old_keys[from..from + r]);
                        l.values[to..to + r].copy_from_slice(&old_values[from..from + r]);
                        if q >= keep {
                            rotate_back(li, &mut l.keys[to..to + r]);
                        }
                    }
                    new_lost_below = new_lost_below.max(valid_from);
                }
            }
        }
        self.len = new_len;
        self.lost_below = new_lost_below;
        Ok(())
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
        for n in [self.layers.len(), self.row_len, self.len, self.lost_below] {
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
        if version != KV_VERSION && version != 1 {
            return Err(KvFileError::Version(version));
        }
        let (layers, row_len, len) = (r.u64()?, r.u64()?, r.u64()?);
        // Version 2 adds the positions a context shift lost (version 1 files were never shifted).
        let lost_below = if version == 1 { 0 } else { r.u64()? };
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
        if lost_below > len {
            return Err(KvFileError::Mismatch(format!("{lost_below} positions lost of {len}")));
        }
        let (len, lost_below) = (len as usize, lost_below as usize);
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
            lost_below,
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
const KV_VERSION: u32 = 2;

/// Why KV cache bytes cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum KvFileError {
    #[error("not a gemma-rs KV cache file")]
    NotKvCache,
    #[error("KV cache file version {0} is not supported (this build reads versions 1 and 2)")]
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
    use std::ops::Range;

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
    fn can_go_back_allows_the_ring_slack_and_no_more() {
        let mut c = KvCache::new(&[Some(4), None], 2, 10_000);
        c.reserve_to(5_000).unwrap();
        c.set_len(5_000);
        // A draft written from position 5 000 can be taken back while it is at most MAX_UBATCH long.
        assert!(c.can_go_back(5_000 + MAX_UBATCH, 5_000));
        assert!(!c.can_go_back(5_001 + MAX_UBATCH, 5_000));
        assert!(c.can_go_back(5_000, 5_000));
        // Without ring layers any prefix can come back.
        let c = KvCache::new(&[None], 2, 10_000);
        assert!(c.can_go_back(9_000, 1));
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

    /// Shifts `c` with a rotation that negates a moved key, so the test can tell it was applied once.
    fn shift(c: &mut KvCache, keep: usize, discard: usize) -> Result<(), ModelError> {
        c.shift(keep, discard, &mut |_, row| row.iter_mut().for_each(|x| *x = -*x))
    }

    /// After a shift of `discard` positions after `keep`, position `q` holds what position `q + discard`
    /// held, its key rotated; the first `keep` positions are untouched.
    fn assert_shifted(
        c: &KvCache,
        before: &KvCache,
        keep: usize,
        discard: usize,
        layer: usize,
        positions: Range<usize>,
    ) {
        for q in positions {
            let (src, sign) = if q < keep { (q, 1.0) } else { (q + discard, -1.0) };
            let (k, v) = at(before, layer, src);
            let k: Vec<f32> = k.iter().map(|x| x * sign).collect();
            assert_eq!(at(c, layer, q), (k, v), "layer {layer} position {q}");
        }
    }

    #[test]
    fn a_context_shift_drops_positions_and_moves_the_rest_back() {
        // Layer 0 keeps every position; layer 1 a ring of 8 + MAX_UBATCH rows, not yet wrapped.
        let mut c = KvCache::new(&[None, Some(8)], 3, 2_000);
        fill(&mut c, 300);
        let before = c.copy_prefix(300);
        shift(&mut c, 5, 147).unwrap();
        assert_eq!(c.len(), 153);
        for l in 0..2 {
            assert_shifted(&c, &before, 5, 147, l, 0..153);
        }
        // New positions go on from the shortened length.
        fill(&mut c, 160);
        assert_eq!(at(&c, 0, 159), at(&before, 0, 159));
        assert!(shift(&mut c, 0, 0).is_ok() && c.len() == 160);
        assert!(matches!(shift(&mut c, 100, 61), Err(ModelError::BadBatch(_))), "more than the cache holds");
    }

    #[test]
    fn a_wrapped_ring_shifts_what_it_still_holds_and_remembers_what_it_lost() {
        let ring = 8 + MAX_UBATCH;
        let mut c = KvCache::new(&[None, Some(8)], 3, 2_000);
        fill(&mut c, 1_000);
        let before = c.copy_prefix(1_000);
        // The ring holds positions 480..1000: the kept 0..4 are gone from it, the moved ones are there.
        shift(&mut c, 4, 498).unwrap();
        assert_eq!(c.len(), 502);
        assert_shifted(&c, &before, 4, 498, 0, 0..502);
        assert_shifted(&c, &before, 4, 498, 1, 4..502);
        assert_eq!(c.lost_below, 4);
        // Going back to where a window would need a lost kept row clears the cache; not so far back keeps it.
        assert_eq!(c.copy_prefix(10).len(), 0);
        assert_eq!(c.copy_prefix(100).len(), 100);
        // The file keeps what was lost.
        let bytes = c.to_bytes(&[7; 502]).unwrap();
        let (_, back) = KvCache::from_bytes(&bytes, &KvCache::new(&[None, Some(8)], 3, 2_000)).unwrap();
        assert_eq!(back.lost_below, 4);
        assert_eq!(c.truncate(10), 0);
        assert_eq!(c.lost_below, 0, "an empty cache has lost nothing");

        // A shift whose next window needs kept rows the ring already overwrote is refused, and changes nothing.
        let mut c = KvCache::new(&[None, Some(8)], 3, 2_000);
        fill(&mut c, 2_000);
        let before = c.copy_prefix(2_000);
        assert!(matches!(shift(&mut c, 1_395, 600), Err(ModelError::ContextShift(_))));
        assert_eq!(c.len(), 2_000);
        assert_shifted(&c, &before, 2_000, 0, 1, 2_000 - ring..2_000);
        // With the kept rows still in the ring it goes through.
        shift(&mut c, 1_495, 500).unwrap();
        assert_shifted(&c, &before, 1_495, 500, 1, 1_480..1_500);
    }

    #[test]
    fn a_version_1_file_still_reads() {
        let mut c = KvCache::new(&[None, Some(8)], 3, 2_000);
        fill(&mut c, 20);
        let v2 = c.to_bytes(&[1; 20]).unwrap();
        // Version 1 is version 2 without the lost-positions word after the length.
        let mut v1 = v2[..4].to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&v2[8..32]);
        v1.extend_from_slice(&v2[40..]);
        let (tokens, back) = KvCache::from_bytes(&v1, &KvCache::new(&[None, Some(8)], 3, 2_000)).unwrap();
        assert_eq!((tokens.len(), back.len(), back.lost_below), (20, 20, 0));
        assert_shifted(&back, &c, 20, 0, 1, 0..20);
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
        let mut v3 = bytes.clone();
        v3[4] = 3;
        assert!(matches!(KvCache::from_bytes(&v3, &like), Err(KvFileError::Version(3))));
        // Lost positions beyond the length are refused.
        let mut lost = bytes.clone();
        lost[32..40].copy_from_slice(&21u64.to_le_bytes());
        assert!(matches!(KvCache::from_bytes(&lost, &like), Err(KvFileError::Mismatch(_))));
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
