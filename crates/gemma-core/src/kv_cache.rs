//! Per-sequence key/value cache: for each layer, one row of `n_kv_heads * head_dim` keys and values per
//! position. Global layers keep every position and grow as positions are filled (memory follows the tokens
//! actually used); sliding-window layers keep a ring of `window + MAX_UBATCH` rows, enough for every query of
//! a forward pass to still find its whole window.

use std::ops::Range;

use gemma_ops::{KvRows, KvType};

use crate::error::ModelError;

/// Most tokens one forward pass runs at once; larger batches are split (llama.cpp's n_ubatch).
pub const MAX_UBATCH: usize = 512;

/// One layer's keys or values: rows of `row_len` elements stored in a [`KvType`] (f32 rows as floats, the
/// others as their GGML blocks).
#[derive(Clone)]
pub struct KvBuf {
    ty: KvType,
    row_len: usize,
    floats: Vec<f32>,
    bytes: Vec<u8>,
}

impl KvBuf {
    fn new(ty: KvType, row_len: usize) -> KvBuf {
        KvBuf { ty, row_len, floats: Vec::new(), bytes: Vec::new() }
    }
    /// Backing elements per row: floats for f32, bytes otherwise.
    fn unit(&self) -> usize {
        match self.ty {
            KvType::F32 => self.row_len,
            t => t.row_bytes(self.row_len).unwrap_or(0),
        }
    }
    pub fn ty(&self) -> KvType {
        self.ty
    }
    /// Rows held.
    pub fn rows(&self) -> usize {
        match self.ty {
            KvType::F32 => self.floats.len() / self.row_len.max(1),
            _ => self.bytes.len() / self.unit().max(1),
        }
    }
    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        self.floats.capacity() * 4 + self.bytes.capacity()
    }
    fn truncate(&mut self, rows: usize) {
        let n = rows * self.unit();
        self.floats.truncate(n);
        self.bytes.truncate(n);
    }
    /// Grows to `rows` rows (new rows zero).
    fn grow(&mut self, rows: usize) {
        let n = rows * self.unit();
        match self.ty {
            KvType::F32 if self.floats.len() < n => self.floats.resize(n, 0.0),
            KvType::F32 => {}
            _ if self.bytes.len() < n => self.bytes.resize(n, 0),
            _ => {}
        }
    }
    /// Moves rows `src` to start at row `dst`.
    fn copy_within(&mut self, src: Range<usize>, dst: usize) {
        let u = self.unit();
        match self.ty {
            KvType::F32 => self.floats.copy_within(src.start * u..src.end * u, dst * u),
            _ => self.bytes.copy_within(src.start * u..src.end * u, dst * u),
        }
    }
    /// The first `rows` rows (fewer when fewer are held).
    fn prefix(&self, rows: usize) -> KvBuf {
        let n = rows * self.unit();
        KvBuf {
            ty: self.ty,
            row_len: self.row_len,
            floats: self.floats[..n.min(self.floats.len())].to_vec(),
            bytes: self.bytes[..n.min(self.bytes.len())].to_vec(),
        }
    }
    /// Row `dst` becomes row `src` of `from` (a buffer of the same type and width).
    fn copy_row_from(&mut self, dst: usize, from: &KvBuf, src: usize) {
        let u = self.unit();
        match self.ty {
            KvType::F32 => self.floats[dst * u..(dst + 1) * u].copy_from_slice(&from.floats[src * u..(src + 1) * u]),
            _ => self.bytes[dst * u..(dst + 1) * u].copy_from_slice(&from.bytes[src * u..(src + 1) * u]),
        }
    }
    /// Stores `x` (`row_len` floats) as row `r`, rounded to the buffer's type as llama.cpp rounds it.
    pub fn set_row(&mut self, r: usize, x: &[f32]) {
        let u = self.unit();
        match self.ty {
            KvType::F32 => self.floats[r * u..(r + 1) * u].copy_from_slice(x),
            t => t.encode(x, &mut self.bytes[r * u..(r + 1) * u]),
        }
    }
    /// Row `r` as floats.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let u = self.unit();
        match self.ty {
            KvType::F32 => self.floats[r * u..(r + 1) * u].to_vec(),
            t => {
                let mut x = vec![0.0; self.row_len];
                t.decode(&self.bytes[r * u..(r + 1) * u], &mut x);
                x
            }
        }
    }
    /// Applies `f` to row `r` as floats (decoded and encoded again for an encoded type, as llama.cpp's K-shift
    /// converts a quantized cache to f32, rotates and copies it back).
    fn update_row(&mut self, r: usize, f: &mut dyn FnMut(&mut [f32])) {
        let u = self.unit();
        match self.ty {
            KvType::F32 => f(&mut self.floats[r * u..(r + 1) * u]),
            _ => {
                let mut x = self.row(r);
                f(&mut x);
                self.set_row(r, &x);
            }
        }
    }
    /// The rows for the attention kernels.
    pub fn view(&self) -> KvRows<'_> {
        match self.ty {
            KvType::F32 => KvRows::F32(&self.floats),
            t => KvRows::Encoded(t, &self.bytes),
        }
    }
    /// Appends the first `rows` rows to `out`, little-endian.
    fn write(&self, rows: usize, out: &mut Vec<u8>) {
        let n = rows * self.unit();
        match self.ty {
            KvType::F32 => self.floats[..n].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            _ => out.extend_from_slice(&self.bytes[..n]),
        }
    }
    /// Bytes [`KvBuf::write`] gives for `rows` rows.
    fn file_bytes(ty: KvType, row_len: usize, rows: usize) -> Option<usize> {
        ty.row_bytes(row_len)?.checked_mul(rows)
    }
    /// Reads rows written by [`KvBuf::write`] (exactly `file_bytes` long).
    fn read(ty: KvType, row_len: usize, bytes: &[u8]) -> KvBuf {
        let mut b = KvBuf::new(ty, row_len);
        match ty {
            KvType::F32 => {
                b.floats = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            _ => b.bytes = bytes.to_vec(),
        }
        b
    }
}

pub struct LayerKv {
    pub keys: KvBuf,
    pub values: KvBuf,
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
    /// The types of keys and values (llama.cpp's `--cache-type-k`, `--cache-type-v`).
    types: (KvType, KvType),
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
        KvCache::with_types(windows, row_len, capacity, (KvType::F32, KvType::F32))
    }

    /// [`KvCache::new`] storing keys and values in `types` (`row_len` must be whole blocks of both; the model
    /// checks its heads are).
    pub fn with_types(windows: &[Option<usize>], row_len: usize, capacity: usize, types: (KvType, KvType)) -> KvCache {
        let layers = windows
            .iter()
            .map(|w| {
                let (ring, window) = match *w {
                    Some(w) if w + MAX_UBATCH < capacity => (w + MAX_UBATCH, w),
                    _ => (0, usize::MAX),
                };
                LayerKv { keys: KvBuf::new(types.0, row_len), values: KvBuf::new(types.1, row_len), ring, window }
            })
            .collect();
        KvCache { layers, row_len, types, len: 0, capacity, lost_below: 0 }
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
    /// The types keys and values are stored in.
    pub fn types(&self) -> (KvType, KvType) {
        self.types
    }
    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.keys.bytes() + l.values.bytes()).sum()
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
            l.keys.truncate(rows);
            l.values.truncate(rows);
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
                LayerKv { keys: l.keys.prefix(rows), values: l.values.prefix(rows), ring: l.ring, window: l.window }
            })
            .collect();
        let lost_below = if len == 0 { 0 } else { self.lost_below };
        KvCache { layers, row_len: self.row_len, types: self.types, len, capacity: self.capacity, lost_below }
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
        let mut new_lost_below = 0;
        for (li, (l, plan)) in self.layers.iter_mut().zip(plans).enumerate() {
            let mut rotate = |row: &mut [f32]| rotate_back(li, row);
            match plan {
                None => {
                    l.keys.copy_within(keep + discard..len, keep);
                    l.values.copy_within(keep + discard..len, keep);
                    l.keys.truncate(new_len);
                    l.values.truncate(new_len);
                    for row in keep..new_len {
                        l.keys.update_row(row, &mut rotate);
                    }
                }
                Some(valid_from) => {
                    let (old_keys, old_values) = (l.keys.clone(), l.values.clone());
                    let rows = new_len.min(l.ring);
                    l.keys.truncate(rows);
                    l.values.truncate(rows);
                    for q in valid_from..new_len {
                        let src = if q < keep { q } else { q + discard };
                        let (from, to) = (l.slot(src), l.slot(q));
                        l.keys.copy_row_from(to, &old_keys, from);
                        l.values.copy_row_from(to, &old_values, from);
                        if q >= keep {
                            l.keys.update_row(to, &mut rotate);
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
            l.keys.grow(rows);
            l.values.grow(rows);
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
    /// token ids they hold (`tokens`, one per position), the key and value types, every layer's rows in those
    /// types, little-endian (`docs/kv-cache.md`).
    pub fn to_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>, KvFileError> {
        if tokens.len() != self.len {
            return Err(KvFileError::Mismatch(format!("{} token ids for {} positions", tokens.len(), self.len)));
        }
        let mut out = Vec::with_capacity(48 + tokens.len() * 4 + self.layers.len() * 16 + self.bytes());
        out.extend_from_slice(KV_MAGIC);
        out.extend_from_slice(&KV_VERSION.to_le_bytes());
        for n in [self.layers.len(), self.row_len, self.len, self.lost_below] {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        for t in [self.types.0, self.types.1] {
            out.extend_from_slice(&t.ggml_type().id().to_le_bytes());
        }
        tokens.iter().for_each(|t| out.extend_from_slice(&t.to_le_bytes()));
        for l in &self.layers {
            let rows = self.rows(l, self.len);
            if l.keys.rows() < rows || l.values.rows() < rows {
                return Err(KvFileError::Mismatch("a layer holds fewer rows than its positions".into()));
            }
            for v in [l.ring as u64, l.window as u64] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            l.keys.write(rows, &mut out);
            l.values.write(rows, &mut out);
        }
        Ok(out)
    }

    /// Reads a cache written by [`KvCache::to_bytes`] into the shape of `like` (an empty cache of the running
    /// model, with its capacity and cache types): the token ids and the cache. A file of another model, another
    /// layout, other cache types or more positions than the capacity is refused; nothing is allocated beyond
    /// what the bytes hold.
    pub fn from_bytes(bytes: &[u8], like: &KvCache) -> Result<(Vec<u32>, KvCache), KvFileError> {
        let mut r = Reader(bytes);
        if r.take(KV_MAGIC.len())? != KV_MAGIC {
            return Err(KvFileError::NotKvCache);
        }
        let version = u32::from_le_bytes(r.array()?);
        if !(1..=KV_VERSION).contains(&version) {
            return Err(KvFileError::Version(version));
        }
        let (layers, row_len, len) = (r.u64()?, r.u64()?, r.u64()?);
        // Version 2 adds the positions a context shift lost (version 1 files were never shifted), version 3 the
        // cache types (older files hold f32 rows).
        let lost_below = if version == 1 { 0 } else { r.u64()? };
        let types = if version < 3 {
            (KvType::F32, KvType::F32)
        } else {
            let mut ty = || -> Result<KvType, KvFileError> {
                let id = u32::from_le_bytes(r.array()?);
                gemma_io::GgmlType::from_id(id)
                    .and_then(KvType::from_ggml)
                    .ok_or_else(|| KvFileError::Mismatch(format!("unknown cache type id {id}")))
            };
            (ty()?, ty()?)
        };
        if layers != like.layers.len() as u64 || row_len != like.row_len as u64 {
            return Err(KvFileError::Mismatch(format!(
                "{layers} layers of {row_len} values per position; this model has {} of {}",
                like.layers.len(),
                like.row_len
            )));
        }
        if types != like.types {
            return Err(KvFileError::Types { file: types, cache: like.types });
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
            types,
            len,
            capacity: like.capacity,
            lost_below,
        };
        for (i, shape) in like.layers.iter().enumerate() {
            let (ring, window) = (r.u64()?, r.u64()?);
            if ring != shape.ring as u64 || window != shape.window as u64 {
                return Err(KvFileError::Mismatch(format!("layer {i}'s attention window differs")));
            }
            let rows = like.rows(shape, len);
            let mut buf = |ty: KvType| -> Result<KvBuf, KvFileError> {
                let n = KvBuf::file_bytes(ty, like.row_len, rows).ok_or(KvFileError::Truncated)?;
                Ok(KvBuf::read(ty, like.row_len, r.take(n)?))
            };
            let (keys, values) = (buf(types.0)?, buf(types.1)?);
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
const KV_VERSION: u32 = 3;

/// Why KV cache bytes cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum KvFileError {
    #[error("not a gemma-rs KV cache file")]
    NotKvCache,
    #[error("KV cache file version {0} is not supported (this build reads versions 1 to 3)")]
    Version(u32),
    #[error(
        "the KV cache file holds {}/{} keys/values; this context stores {}/{} (--cache-type-k/--cache-type-v)",
        file.0, file.1, cache.0, cache.1
    )]
    Types { file: (KvType, KvType), cache: (KvType, KvType) },
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
        assert_eq!(c.layer(0).keys.rows(), 4 + MAX_UBATCH);
        assert_eq!(c.layer(1).keys.rows(), 5_000);
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
                let k: Vec<f32> = (0..row_len).map(|j| (l * 1_000_000 + pos * 10 + j) as f32).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                layer.keys.set_row(row, &k);
                layer.values.set_row(row, &v);
            }
        }
        c.set_len(end);
    }

    /// The key and value of `pos` in layer `l`, read through the ring.
    fn at(c: &KvCache, l: usize, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let layer = c.layer(l);
        let row = layer.slot(pos);
        (layer.keys.row(row), layer.values.row(row))
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
        // Version 1 is version 3 without the lost-positions word after the length and the two type words.
        let mut v1 = v2[..4].to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&v2[8..32]);
        v1.extend_from_slice(&v2[48..]);
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
            assert_eq!(copy.layer(l).keys.rows(), 120, "only the prefix's rows are copied");
        }
        // The copy is independent: extending it leaves the original alone.
        let mut copy = copy;
        let before = at(&c, 0, 130);
        for l in 0..2 {
            copy.reserve_to(200).unwrap();
            let row = copy.layer(l).slot(130);
            copy.layer_mut(l).keys.set_row(row, &[42.0; 3]);
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
        assert_eq!(copy.layer(0).keys.rows(), ring, "a wrapped ring is copied whole");
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
                assert_eq!(back.layer(l).keys.floats, c.layer(l).keys.floats, "layer {l}");
                assert_eq!(back.layer(l).values.floats, c.layer(l).values.floats, "layer {l}");
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
        let mut v4 = bytes.clone();
        v4[4] = 4;
        assert!(matches!(KvCache::from_bytes(&v4, &like), Err(KvFileError::Version(4))));
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

    /// A cache of every type: rows are stored rounded to the type, a context shift decodes, rotates and encodes
    /// the moved keys again, a copy and a saved file hold the same bytes, and a file of other types is refused.
    #[test]
    fn every_cache_type_stores_shifts_copies_and_saves() {
        for t in KvType::ALL {
            let types = (t, if t == KvType::F32 { KvType::Q8_0 } else { t });
            let mut c = KvCache::with_types(&[None, Some(8)], 64, 2_000, types);
            c.reserve_to(700).unwrap();
            let x = |l: usize, pos: usize| -> Vec<f32> {
                (0..64).map(|j| (((l * 7 + pos * 13 + j * 3) % 97) as f32 - 48.0) / 16.0).collect()
            };
            for l in 0..2 {
                for pos in 0..700 {
                    let layer = c.layer_mut(l);
                    let row = layer.slot(pos);
                    layer.keys.set_row(row, &x(l, pos));
                    layer.values.set_row(row, &x(l + 5, pos));
                }
            }
            c.set_len(700);
            let rounded = |ty: KvType, v: Vec<f32>| {
                let mut b = vec![0u8; ty.row_bytes(64).unwrap()];
                ty.encode(&v, &mut b);
                let mut out = vec![0.0; 64];
                ty.decode(&b, &mut out);
                out
            };
            assert_eq!(at(&c, 1, 650), (rounded(types.0, x(1, 650)), rounded(types.1, x(6, 650))), "{t}");
            let per_row = types.0.row_bytes(64).unwrap() + types.1.row_bytes(64).unwrap();
            assert!(c.bytes() >= (700 + 8 + MAX_UBATCH) * per_row, "{t}: {}", c.bytes());
            // Save and read back: the same rows; another type's cache refuses the file.
            let bytes = c.to_bytes(&[3; 700]).unwrap();
            let like = KvCache::with_types(&[None, Some(8)], 64, 2_000, types);
            let (_, back) = KvCache::from_bytes(&bytes, &like).unwrap();
            for l in 0..2 {
                for pos in [0, 100, 699] {
                    if l == 0 || pos > 200 {
                        assert_eq!(at(&back, l, pos), at(&c, l, pos), "{t} layer {l} position {pos}");
                    }
                }
            }
            let other = KvCache::with_types(&[None, Some(8)], 64, 2_000, (KvType::F16, KvType::Bf16));
            let e = KvCache::from_bytes(&bytes, &other).err().unwrap();
            assert!(matches!(e, KvFileError::Types { .. }) && e.to_string().contains("--cache-type-k"), "{e}");
            // Shift: a moved key is decoded, negated and encoded again (exact for a sign flip).
            let before = c.copy_prefix(700);
            shift(&mut c, 4, 100).unwrap();
            for (l, from) in [(0, 0), (1, 100)] {
                for q in from..600 {
                    let (src, sign) = if q < 4 { (q, 1.0) } else { (q + 100, -1.0) };
                    let (k, v) = at(&before, l, src);
                    let k = rounded(types.0, k.iter().map(|x| x * sign).collect());
                    assert_eq!(at(&c, l, q), (k, v), "{t} layer {l} position {q}");
                }
            }
        }
    }
}
