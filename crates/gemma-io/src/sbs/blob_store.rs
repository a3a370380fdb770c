//! gemma.cpp's blob store (`io/blob_store.cc`): a file of named, 256-byte-aligned blobs.
//!
//! Both layouts are little-endian and share a 16-byte header `{magic: u32, num_blobs: u32, file_bytes: u64}` and
//! a directory of `2 * num_blobs` 16-byte entries: first every key (up to 16 bytes of name, NUL-padded), then every
//! range (`offset: u64, bytes: u64`). Blobs follow each other in directory order, each starting at a multiple of
//! 256 bytes and zero-padded to the next one.
//!
//! - **V2** (written since 2025-07): a placeholder header `{magic, 0, 65536}` zero-padded to 256 bytes, the blobs,
//!   zero padding, then the directory and the real header as the last 16 bytes; the file size is a multiple of
//!   65,536 (mmap needs whole pages, up to 64 KiB on Arm). Writing needs neither the blob count nor the blobs in
//!   memory up front.
//! - **V1** (older files, read only, as gemma.cpp does): the real header and the directory at the start, padded
//!   to 256 bytes, then the blobs; the end may or may not be padded to 65,536.
//!
//! gemma.cpp tries V1 first: a start header with the right magic and a non-zero count is V1, anything else is
//! looked for at the end.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::SbsError;
use crate::file_bytes::FileBytes;

/// `SBS\n` as a little-endian u32.
pub const BLOB_MAGIC: u32 = 0x0A53_4253;
/// Every blob starts at a multiple of this (an upper bound on SVE vectors and cache lines).
pub const BLOB_ALIGN: u64 = 256;
/// V2 files are padded to a multiple of this.
pub const END_ALIGN: u64 = 64 * 1024;
/// gemma.cpp refuses more blobs than this (a damaged count would otherwise allocate without bound).
pub const MAX_BLOBS: u32 = 16 * 1024;
/// Longest key.
pub const MAX_KEY_LEN: usize = 16;
const HEADER_BYTES: u64 = 16;
const ENTRY_BYTES: u64 = 16;

/// Which on-disk layout a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobLayout {
    /// Header and directory at the start (pre-2025-07 files).
    V1,
    /// Header and directory at the end (what gemma.cpp writes now).
    V2,
}

/// Where a blob's bytes are (padding excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRange {
    pub offset: u64,
    pub bytes: u64,
}

impl BlobRange {
    pub fn end(&self) -> u64 {
        self.offset + self.bytes
    }
}

/// `n` rounded up to a multiple of `align` (a power of two).
pub(crate) fn round_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// Bytes before the first blob of a V1 file: header and directory, padded.
fn v1_blobs_start(num_blobs: u64) -> u64 {
    round_up(HEADER_BYTES + 2 * ENTRY_BYTES * num_blobs, BLOB_ALIGN)
}

/// The 16-byte on-disk form of a key; `None` if it is empty, longer than 16 bytes or holds a NUL.
pub fn key_bytes(key: &str) -> Option<[u8; 16]> {
    let b = key.as_bytes();
    if b.is_empty() || b.len() > MAX_KEY_LEN || b.contains(&0) {
        return None;
    }
    let mut out = [0u8; 16];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// A parsed blob store. Blob bytes stay in the memory map and are handed out as borrowed slices.
pub struct BlobStore {
    path: PathBuf,
    storage: FileBytes,
    layout: BlobLayout,
    keys: Vec<String>,
    ranges: Vec<BlobRange>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("blobs", &self.keys.len())
            .finish()
    }
}

impl BlobStore {
    /// Memory-maps and parses a file.
    pub fn open(path: impl AsRef<Path>) -> Result<BlobStore, SbsError> {
        let path = path.as_ref().to_path_buf();
        let storage = FileBytes::open(&path).map_err(|source| SbsError::Io { path: path.clone(), source })?;
        Self::parse(path, storage)
    }

    /// Parses a blob store held in memory (`name` is used in error messages).
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<BlobStore, SbsError> {
        Self::parse(name.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: FileBytes) -> Result<BlobStore, SbsError> {
        let buf = storage.bytes();
        let len = buf.len() as u64;
        let truncated = |what, needed| SbsError::Truncated { path: path.clone(), what, needed, len };
        if len < HEADER_BYTES {
            return Err(truncated("the header", HEADER_BYTES));
        }
        let start_magic = u32_at(buf, 0).unwrap_or(0);
        let start_count = u32_at(buf, 4).unwrap_or(0);
        let (layout, header_at, dir_at, num_blobs) = if start_magic == BLOB_MAGIC && start_count != 0 {
            if start_count > MAX_BLOBS {
                return Err(SbsError::TooManyBlobs { path, count: start_count.into(), max: MAX_BLOBS });
            }
            let dir_end = HEADER_BYTES + 2 * ENTRY_BYTES * u64::from(start_count);
            if dir_end > len {
                return Err(truncated("the directory", dir_end));
            }
            (BlobLayout::V1, 0usize, HEADER_BYTES, u64::from(start_count))
        } else {
            let at = len - HEADER_BYTES;
            let end_magic = u32_at(buf, at as usize).unwrap_or(0);
            if end_magic != BLOB_MAGIC && start_magic == BLOB_MAGIC {
                // It starts like a single-file SBS checkpoint, whose directory closes the file.
                return Err(SbsError::NoDirectory { path, len });
            }
            if end_magic != BLOB_MAGIC {
                return Err(SbsError::BadMagic {
                    path,
                    found: start_magic,
                    found_end: end_magic,
                    expected: BLOB_MAGIC,
                });
            }
            let count = u32_at(buf, at as usize + 4).unwrap_or(0);
            if count > MAX_BLOBS {
                return Err(SbsError::TooManyBlobs { path, count: count.into(), max: MAX_BLOBS });
            }
            let dir_bytes = 2 * ENTRY_BYTES * u64::from(count);
            if dir_bytes > at {
                return Err(truncated("the directory", dir_bytes + HEADER_BYTES));
            }
            (BlobLayout::V2, at as usize, at - dir_bytes, u64::from(count))
        };
        if num_blobs == 0 {
            if header_at == 0 && layout == BlobLayout::V2 {
                // One header and nothing after it: the first 16 bytes of a file, not an empty store.
                return Err(truncated("blobs after the header", HEADER_BYTES + 1));
            }
            return Err(SbsError::NoBlobs { path });
        }
        let file_bytes = u64_at(buf, header_at + 8).unwrap_or(0);
        if file_bytes != len {
            return Err(SbsError::SizeMismatch { path, header: file_bytes, actual: len });
        }

        let n = num_blobs as usize;
        let mut keys = Vec::with_capacity(n);
        let mut index = HashMap::with_capacity(n);
        for i in 0..n {
            let at = (dir_at + ENTRY_BYTES * i as u64) as usize;
            let raw = buf.get(at..at + MAX_KEY_LEN).ok_or_else(|| truncated("the directory", len + 1))?;
            let name_len = raw.iter().position(|&b| b == 0).unwrap_or(MAX_KEY_LEN);
            let bad_key = |problem: &str| SbsError::BadKey { path: path.clone(), index: i, problem: problem.into() };
            if name_len == 0 {
                return Err(bad_key("empty"));
            }
            let key = std::str::from_utf8(&raw[..name_len]).map_err(|_| bad_key("not UTF-8"))?.to_string();
            if index.insert(key.clone(), i).is_some() {
                return Err(SbsError::DuplicateKey { path, key });
            }
            keys.push(key);
        }

        // Blobs must be back to back in directory order, which also rules out overlaps and misalignment.
        let blobs_start = match layout {
            BlobLayout::V1 => v1_blobs_start(num_blobs),
            BlobLayout::V2 => BLOB_ALIGN,
        };
        let blobs_limit = match layout {
            BlobLayout::V1 => len,
            BlobLayout::V2 => dir_at,
        };
        let mut ranges = Vec::with_capacity(n);
        let mut expected = blobs_start;
        for (i, key) in keys.iter().enumerate() {
            let at = (dir_at + ENTRY_BYTES * (num_blobs + i as u64)) as usize;
            let offset = u64_at(buf, at).unwrap_or(0);
            let bytes = u64_at(buf, at + 8).unwrap_or(0);
            let bad = |problem: String| SbsError::BadRange {
                path: path.clone(),
                index: i,
                key: key.clone(),
                offset,
                bytes,
                problem,
            };
            if offset & (BLOB_ALIGN - 1) != 0 {
                return Err(bad(format!("offset is not a multiple of {BLOB_ALIGN}")));
            }
            if bytes == 0 {
                return Err(bad("blob is empty".into()));
            }
            if offset != expected {
                return Err(bad(format!("expected the blob at offset {expected} (blobs are back to back)")));
            }
            let end = offset.checked_add(bytes).filter(|&e| e <= blobs_limit);
            let Some(end) = end else {
                return Err(bad(format!("runs past byte {blobs_limit}, where the blobs must end")));
            };
            expected = round_up(end, BLOB_ALIGN);
            ranges.push(BlobRange { offset, bytes });
        }
        Ok(BlobStore { path, storage, layout, keys, ranges, index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn layout(&self) -> BlobLayout {
        self.layout
    }
    pub fn file_bytes(&self) -> u64 {
        self.storage.bytes().len() as u64
    }
    /// Keys in directory order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// Index of `key` in [`BlobStore::keys`].
    pub fn find(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }
    pub fn range(&self, key: &str) -> Option<BlobRange> {
        self.find(key).and_then(|i| self.ranges.get(i).copied())
    }
    /// Ranges in directory order.
    pub fn ranges(&self) -> &[BlobRange] {
        &self.ranges
    }
    /// The bytes of blob `index` (zero-copy), or `None` if there is no such blob.
    pub fn blob_at(&self, index: usize) -> Option<&[u8]> {
        let r = self.ranges.get(index)?;
        // Ranges were checked against the file length when parsing.
        self.storage.bytes().get(r.offset as usize..r.end() as usize)
    }
    /// The bytes of the blob named `key` (zero-copy).
    pub fn blob(&self, key: &str) -> Option<&[u8]> {
        self.blob_at(self.find(key)?)
    }
    /// The whole file.
    pub fn file_data(&self) -> &[u8] {
        self.storage.bytes()
    }
    /// Maps the whole file's pages in now rather than on first touch, for callers about to read all of it
    /// (a model's first forward pass). Only a hint: nothing fails if the kernel declines.
    pub fn prefetch(&self) {
        self.storage.prefetch();
    }
}

/// Writes the V2 layout to any sink, one blob at a time (gemma.cpp's `BlobWriter`).
pub struct BlobWriter<W: Write> {
    out: W,
    keys: Vec<[u8; 16]>,
    key_set: HashSet<[u8; 16]>,
    sizes: Vec<u64>,
    offset: u64,
}

fn io_err(e: std::io::Error) -> SbsError {
    SbsError::WriteFailed { path: PathBuf::new(), source: e }
}

const ZEROS: [u8; 4096] = [0; 4096];

fn write_zeros(out: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

impl<W: Write> BlobWriter<W> {
    /// Starts a file: writes the placeholder header.
    pub fn new(mut out: W) -> Result<BlobWriter<W>, SbsError> {
        let mut head = [0u8; BLOB_ALIGN as usize];
        head[0..4].copy_from_slice(&BLOB_MAGIC.to_le_bytes());
        head[8..16].copy_from_slice(&END_ALIGN.to_le_bytes());
        out.write_all(&head).map_err(io_err)?;
        Ok(BlobWriter { out, keys: Vec::new(), key_set: HashSet::new(), sizes: Vec::new(), offset: BLOB_ALIGN })
    }

    /// Appends a blob (non-empty; the key 1..=16 bytes without NUL, unique).
    pub fn add(&mut self, key: &str, data: &[u8]) -> Result<BlobRange, SbsError> {
        let invalid = |what: String| SbsError::InvalidWrite { what };
        let k = key_bytes(key).ok_or_else(|| invalid(format!("blob key '{key}' must be 1 to 16 bytes without NUL")))?;
        if data.is_empty() {
            return Err(invalid(format!("blob '{key}' is empty")));
        }
        if self.keys.len() + 1 >= MAX_BLOBS as usize {
            return Err(invalid(format!("more than {} blobs", MAX_BLOBS - 1)));
        }
        if !self.key_set.insert(k) {
            return Err(invalid(format!("blob key '{key}' is used twice")));
        }
        let bytes = data.len() as u64;
        self.out.write_all(data).map_err(io_err)?;
        write_zeros(&mut self.out, round_up(bytes, BLOB_ALIGN) - bytes).map_err(io_err)?;
        let range = BlobRange { offset: self.offset, bytes };
        self.keys.push(k);
        self.sizes.push(bytes);
        self.offset += round_up(bytes, BLOB_ALIGN);
        Ok(range)
    }

    /// Number of blobs added so far.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Writes padding, the directory and the header, and returns the sink.
    pub fn finish(mut self) -> Result<W, SbsError> {
        let n = self.keys.len() as u64;
        if n == 0 {
            return Err(SbsError::InvalidWrite { what: "a blob store needs at least one blob".into() });
        }
        // gemma.cpp reserves room for a V1-sized header+directory when computing the V2 file size.
        let file_bytes = round_up(self.offset + v1_blobs_start(n), END_ALIGN);
        let tail = HEADER_BYTES + 2 * ENTRY_BYTES * n;
        write_zeros(&mut self.out, file_bytes - self.offset - tail).map_err(io_err)?;
        let mut dir = Vec::with_capacity(tail as usize);
        for k in &self.keys {
            dir.extend_from_slice(k);
        }
        let mut offset = BLOB_ALIGN;
        for &bytes in &self.sizes {
            dir.extend_from_slice(&offset.to_le_bytes());
            dir.extend_from_slice(&bytes.to_le_bytes());
            offset = round_up(offset + bytes, BLOB_ALIGN);
        }
        dir.extend_from_slice(&BLOB_MAGIC.to_le_bytes());
        dir.extend_from_slice(&(n as u32).to_le_bytes());
        dir.extend_from_slice(&file_bytes.to_le_bytes());
        self.out.write_all(&dir).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        Ok(self.out)
    }
}

/// Writes a blob store file through a temporary file in the same directory, renamed into place only when complete.
pub struct BlobFileWriter {
    path: PathBuf,
    inner: BlobWriter<std::io::BufWriter<tempfile::NamedTempFile>>,
}

impl BlobFileWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<BlobFileWriter, SbsError> {
        let path = path.as_ref().to_path_buf();
        let failed = |source| SbsError::WriteFailed { path: path.clone(), source };
        let temp = crate::output_temp_file(&path).map_err(failed)?;
        let inner =
            BlobWriter::new(std::io::BufWriter::with_capacity(1 << 20, temp)).map_err(|e| with_path(e, &path))?;
        Ok(BlobFileWriter { path, inner })
    }

    pub fn add(&mut self, key: &str, data: &[u8]) -> Result<BlobRange, SbsError> {
        self.inner.add(key, data).map_err(|e| with_path(e, &self.path))
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Finishes the file and renames it to its final path.
    pub fn finish(self) -> Result<(), SbsError> {
        let path = self.path;
        let buffered = self.inner.finish().map_err(|e| with_path(e, &path))?;
        let failed = |source| SbsError::WriteFailed { path: path.clone(), source };
        let temp = buffered.into_inner().map_err(|e| failed(e.into_error()))?;
        temp.as_file().sync_all().map_err(failed)?;
        temp.persist(&path).map_err(|e| failed(e.error))?;
        Ok(())
    }
}

fn with_path(e: SbsError, path: &Path) -> SbsError {
    match e {
        SbsError::WriteFailed { source, .. } => SbsError::WriteFailed { path: path.to_path_buf(), source },
        other => other,
    }
}

/// The whole V2 file for `blobs`, in memory.
pub fn encode_blob_store<'a>(blobs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Vec<u8>, SbsError> {
    let mut w = BlobWriter::new(Vec::new())?;
    for (key, data) in blobs {
        w.add(key, data)?;
    }
    w.finish()
}

/// The whole file for `blobs` in the older V1 layout (header and directory first), which gemma.cpp still reads but
/// no longer writes. `pad_end` pads the file to 65,536 bytes as later V1 writers did. For tests and migration.
pub fn encode_blob_store_v1<'a>(
    blobs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    pad_end: bool,
) -> Result<Vec<u8>, SbsError> {
    let blobs: Vec<(&str, &[u8])> = blobs.into_iter().collect();
    let invalid = |what: String| SbsError::InvalidWrite { what };
    let n = blobs.len() as u64;
    if n == 0 || n >= u64::from(MAX_BLOBS) {
        return Err(invalid(format!("a blob store needs 1 to {} blobs, not {n}", MAX_BLOBS - 1)));
    }
    let start = v1_blobs_start(n);
    let mut keys = Vec::with_capacity(blobs.len());
    let mut seen = HashSet::new();
    let mut ranges = Vec::with_capacity(blobs.len());
    let mut offset = start;
    for (key, data) in &blobs {
        let k = key_bytes(key).ok_or_else(|| invalid(format!("blob key '{key}' must be 1 to 16 bytes without NUL")))?;
        if data.is_empty() || !seen.insert(k) {
            return Err(invalid(format!("blob '{key}' is empty or its key is used twice")));
        }
        keys.push(k);
        ranges.push((offset, data.len() as u64));
        offset = round_up(offset + data.len() as u64, BLOB_ALIGN);
    }
    let file_bytes = if pad_end { round_up(offset, END_ALIGN) } else { offset };
    let mut out = Vec::with_capacity(file_bytes as usize);
    out.extend_from_slice(&BLOB_MAGIC.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&file_bytes.to_le_bytes());
    for k in &keys {
        out.extend_from_slice(k);
    }
    for (o, b) in &ranges {
        out.extend_from_slice(&o.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    out.resize(start as usize, 0);
    for (_, data) in &blobs {
        out.extend_from_slice(data);
        out.resize(round_up(out.len() as u64, BLOB_ALIGN) as usize, 0);
    }
    out.resize(file_bytes as usize, 0);
    Ok(out)
}
