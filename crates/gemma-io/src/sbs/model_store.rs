//! A whole gemma.cpp checkpoint (`gemma/model_store.cc`, `gemma/weights.cc`): the blob store plus its `config`,
//! `toc` and `tokenizer` blobs and one blob per tensor.
//!
//! Single-file format (2025-04 on): tensor blobs named after the tensors, then `config` (serialized
//! [`ModelConfig`]), `tokenizer` (a serialized SentencePiece ModelProto, or `unavailable`) and `toc` (one serialized
//! [`TensorRecord`] per tensor blob, back to back). gemma.cpp still reads the "pre-2025" format, and so does this:
//! no `toc`, tensor blob names prefixed by their type (`F` f32, `B` bf16, `$` SFP, `2` NUQ, `I` I8), shapes from
//! the tensor table, scales in an optional `Fscales` blob, usually no `config` (the model is deduced from the
//! tensor names) and the tokenizer in a separate file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::blob_store::{BlobFileWriter, BlobRange, BlobStore, BlobWriter};
use super::config::{Model, ModelConfig};
use super::error::SbsError;
use super::fields::{append_fields, bytes_to_words, read_fields, FieldVisitor, Fields};
use super::sentencepiece_model::ModelProto;
use super::tensor_info::{strip_layer_suffix, tensor_slots, TensorInfoRegistry};
use super::types::SbsType;

/// Blob names of the single-file format.
pub const CONFIG_KEY: &str = "config";
pub const TOKENIZER_KEY: &str = "tokenizer";
pub const TOC_KEY: &str = "toc";
/// Pre-2025 blob of per-tensor scales (`F` marks f32).
pub const SCALES_KEY: &str = "Fscales";
/// What gemma.cpp stores in the tokenizer blob when it has no tokenizer.
pub const MOCK_TOKENIZER: &[u8] = b"unavailable";
/// gemma.cpp's `kMaxQKVDim`.
pub const MAX_QKV_DIM: u32 = 1024;

/// One `toc` record: a tensor's metadata as gemma.cpp's `MatPtr` serializes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRecord {
    /// Also the blob key: at most 16 bytes, e.g. `qkv_ein_17`.
    pub name: String,
    pub ty: SbsType,
    /// Bytes per stored element, `ty.element_bytes()`.
    pub element_bytes: u32,
    /// Stored elements, NUQ tables and I8 scales included, padding excluded (`ty.num_elements(rows * cols)`).
    pub num_elements: u32,
    pub rows: u32,
    pub cols: u32,
    /// Multiplier for every decoded value (SFP and NUQ weights are scaled into their range).
    pub scale: f32,
    /// Elements from one row to the next in memory (`>= cols`; the file itself is always packed).
    pub stride: u32,
}

impl Default for TensorRecord {
    fn default() -> Self {
        TensorRecord {
            name: String::new(),
            ty: SbsType::Unknown,
            element_bytes: 0,
            num_elements: 0,
            rows: 0,
            cols: 0,
            scale: 1.0,
            stride: 0,
        }
    }
}

impl Fields for TensorRecord {
    fn name(&self) -> &'static str {
        "MatPtr"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit(&mut self.name);
        v.visit(&mut self.ty);
        v.visit(&mut self.element_bytes);
        v.visit(&mut self.num_elements);
        v.visit(&mut self.rows);
        v.visit(&mut self.cols);
        v.visit(&mut self.scale);
        v.visit(&mut self.stride);
    }
}

impl TensorRecord {
    /// A packed `rows x cols` tensor of type `ty` with scale 1 (gemma.cpp's `MatPtr(name, type, extents)`).
    pub fn new(name: &str, ty: SbsType, rows: u64, cols: u64) -> Result<TensorRecord, SbsError> {
        let invalid = |what: String| SbsError::InvalidWrite { what: format!("tensor '{name}': {what}") };
        if super::blob_store::key_bytes(name).is_none() {
            return Err(invalid("the name must be 1 to 16 bytes without NUL".into()));
        }
        if ty == SbsType::Unknown {
            return Err(invalid("type is unknown".into()));
        }
        let values = rows.checked_mul(cols).ok_or_else(|| invalid("too many values".into()))?;
        let num = ty.num_elements(values).filter(|&n| n <= u64::from(u32::MAX));
        let (Ok(r), Ok(c), Some(num)) = (u32::try_from(rows), u32::try_from(cols), num) else {
            return Err(invalid(format!("shape {rows}x{cols} does not fit gemma.cpp's 32-bit fields")));
        };
        Ok(TensorRecord {
            name: name.into(),
            ty,
            element_bytes: ty.element_bytes(),
            num_elements: num as u32,
            rows: r,
            cols: c,
            scale: 1.0,
            stride: c,
        })
    }

    /// Bytes of the tensor's blob.
    pub fn packed_bytes(&self) -> u64 {
        u64::from(self.num_elements) * u64::from(self.element_bytes)
    }

    /// Why this record is inconsistent, if it is.
    fn problem(&self) -> Option<String> {
        if self.ty == SbsType::Unknown {
            return Some("type is unknown".into());
        }
        if self.element_bytes != self.ty.element_bytes() {
            return Some(format!("element size {} does not match type {}", self.element_bytes, self.ty.name()));
        }
        let values = u64::from(self.rows) * u64::from(self.cols);
        if values == 0 {
            return Some(format!("empty shape {}x{}", self.rows, self.cols));
        }
        let expected = self.ty.num_elements(values);
        if expected != Some(u64::from(self.num_elements)) {
            return Some(format!(
                "{} elements, but a {}x{} {} tensor has {:?}",
                self.num_elements,
                self.rows,
                self.cols,
                self.ty.name(),
                expected
            ));
        }
        if self.stride < self.cols {
            return Some(format!("stride {} is less than cols {}", self.stride, self.cols));
        }
        if !self.scale.is_finite() {
            return Some("scale is not finite".into());
        }
        None
    }
}

/// Which generation of gemma.cpp's formats a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbsFormat {
    /// `config`, `toc` and `tokenizer` blobs.
    SingleFile,
    /// Type-prefixed tensor names, no `toc`; the tokenizer in a separate file.
    Pre2025,
}

/// A tensor of an open file.
#[derive(Clone, Debug, PartialEq)]
pub struct SbsTensor {
    pub record: TensorRecord,
    /// The blob key (the name, with the type prefix for pre-2025 files).
    pub key: String,
    pub range: BlobRange,
}

/// Options for [`SbsFile::open_with`], for what pre-2025 files lack.
#[derive(Clone, Debug, Default)]
pub struct SbsOpenOptions {
    /// A `tokenizer.model` file; overrides the file's own tokenizer blob, as gemma.cpp's `--tokenizer` does.
    pub tokenizer_path: Option<PathBuf>,
    /// For files without a config: `Some(true)` for a pretrained (not instruction-tuned) model.
    pub pretrained: Option<bool>,
}

enum TokenizerSource {
    Blob(usize),
    External(Vec<u8>),
    None,
}

/// An open SBS checkpoint: config, tensor table, tokenizer, and zero-copy tensor bytes.
pub struct SbsFile {
    blobs: BlobStore,
    format: SbsFormat,
    config: ModelConfig,
    tensors: Vec<SbsTensor>,
    index: HashMap<String, usize>,
    tokenizer: TokenizerSource,
}

impl std::fmt::Debug for SbsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SbsFile")
            .field("path", &self.blobs.path())
            .field("format", &self.format)
            .field("model", &self.config.model)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn config_error(path: &Path, what: String) -> SbsError {
    SbsError::BadConfig { path: path.to_path_buf(), what }
}

/// Words of a blob that holds serialized fields.
fn blob_words(blobs: &BlobStore, key: &str) -> Result<Option<Vec<u32>>, SbsError> {
    let Some(bytes) = blobs.blob(key) else { return Ok(None) };
    bytes_to_words(bytes).map(Some).ok_or_else(|| SbsError::BadBlobLength {
        path: blobs.path().to_path_buf(),
        blob: key.into(),
        len: bytes.len() as u64,
        unit: 4,
    })
}

/// gemma.cpp's checks on a config read from a file.
fn check_config(path: &Path, c: &ModelConfig) -> Result<(), SbsError> {
    if c.model == Model::Unknown {
        return Err(config_error(path, "model is unknown".into()));
    }
    if c.weight == SbsType::Unknown {
        return Err(config_error(path, "weight type is unknown".into()));
    }
    if c.layer_configs.len() != c.num_layers as usize {
        return Err(config_error(path, format!("{} layer configs for {} layers", c.layer_configs.len(), c.num_layers)));
    }
    if c.attention_window_sizes.len() != c.layer_configs.len() {
        return Err(config_error(
            path,
            format!("{} attention window sizes for {} layers", c.attention_window_sizes.len(), c.layer_configs.len()),
        ));
    }
    for l in c.layer_configs.iter().chain(&c.vit_config.layer_configs) {
        if l.qkv_dim > MAX_QKV_DIM {
            return Err(config_error(path, format!("qkv_dim {} exceeds {MAX_QKV_DIM}", l.qkv_dim)));
        }
    }
    Ok(())
}

/// The smallest type by bits, first one on ties (gemma.cpp's choice of the weight type).
fn smallest_type(types: impl IntoIterator<Item = SbsType>) -> SbsType {
    let mut best = SbsType::Unknown;
    let mut best_bits = u32::MAX;
    for t in types {
        if t.bits() < best_bits {
            best_bits = t.bits();
            best = t;
        }
    }
    best
}

/// gemma.cpp's pre-2025 type prefixes.
fn type_from_prefix(c: u8) -> SbsType {
    match c {
        b'F' => SbsType::F32,
        b'B' => SbsType::BF16,
        b'$' => SbsType::SFP,
        b'2' => SbsType::NUQ,
        b'I' => SbsType::I8,
        _ => SbsType::Unknown,
    }
}

/// gemma.cpp's `LayerIdxFromKey`: the number after the last `_` (its leading digits), else 0.
fn layer_index_of(key: &str) -> u64 {
    let Some(i) = key.rfind('_') else { return 0 };
    let digits: String = key[i + 1..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

impl SbsFile {
    /// Opens a file (either format), memory-mapping its blobs.
    pub fn open(path: impl AsRef<Path>) -> Result<SbsFile, SbsError> {
        Self::open_with(path, &SbsOpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: &SbsOpenOptions) -> Result<SbsFile, SbsError> {
        Self::from_store(BlobStore::open(path)?, options)
    }

    /// Parses a file held in memory (`name` is used in error messages).
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>, options: &SbsOpenOptions) -> Result<SbsFile, SbsError> {
        Self::from_store(BlobStore::from_bytes(bytes, name)?, options)
    }

    /// Interprets an already parsed blob store.
    pub fn from_store(blobs: BlobStore, options: &SbsOpenOptions) -> Result<SbsFile, SbsError> {
        let path = blobs.path().to_path_buf();
        let config = Self::read_or_deduce_config(&blobs, options)?;
        let tokenizer = Self::tokenizer_source(&blobs, options)?;
        let mut file = SbsFile {
            blobs,
            format: SbsFormat::SingleFile,
            config,
            tensors: Vec::new(),
            index: HashMap::new(),
            tokenizer,
        };
        if file.blobs.find(TOC_KEY).is_some() {
            file.read_toc()?;
        } else {
            file.format = SbsFormat::Pre2025;
            file.create_records()?;
        }
        for (i, t) in file.tensors.iter().enumerate() {
            if file.index.insert(t.record.name.clone(), i).is_some() {
                return Err(SbsError::BadTensor { path, tensor: t.record.name.clone(), what: "listed twice".into() });
            }
        }
        Ok(file)
    }

    fn read_or_deduce_config(blobs: &BlobStore, options: &SbsOpenOptions) -> Result<ModelConfig, SbsError> {
        let path = blobs.path();
        if let Some(words) = blob_words(blobs, CONFIG_KEY)? {
            let mut config = ModelConfig::default();
            let result = read_fields(&mut config, &words, 0).map_err(|source| SbsError::Fields {
                path: path.to_path_buf(),
                blob: CONFIG_KEY.into(),
                source,
            })?;
            // gemma.cpp writes exactly one struct; anything after it means a damaged blob size.
            if result.pos != words.len() {
                return Err(config_error(path, format!("{} words after the config", words.len() - result.pos)));
            }
            check_config(path, &config)?;
            return Ok(config);
        }
        // Pre-2025: deduce the model from the tensor names, the weight type from the type prefixes.
        let mut blobs_per_type = [0usize; 9];
        for key in blobs.keys() {
            let t = type_from_prefix(key.as_bytes().first().copied().unwrap_or(0));
            blobs_per_type[t.id() as usize] += 1;
        }
        // The weights are the smallest type with at least 4 blobs (small tensors such as norms stay wider).
        let weight = smallest_type(
            SbsType::ALL.iter().copied().filter(|t| *t != SbsType::Unknown && blobs_per_type[t.id() as usize] >= 4),
        );
        let mut max_layer = 0u64;
        for key in blobs.keys() {
            let layer = layer_index_of(key);
            if layer >= 999 {
                return Err(config_error(path, format!("blob '{key}' names layer {layer}")));
            }
            max_layer = max_layer.max(layer);
        }
        let vit = blobs.keys().iter().any(|k| k.contains("qkv_ein_w"));
        let res448 = blobs.keys().iter().enumerate().any(|(i, k)| {
            k.contains("img_pos_emb") && blobs.ranges().get(i).is_some_and(|r| r.bytes > 448 * 448 * 5 * 2)
        });
        let model = Model::deduce(max_layer as usize + 1, vit, res448);
        if model == Model::Unknown {
            return Err(config_error(
                path,
                format!("no config blob, and {} layers match no known model", max_layer + 1),
            ));
        }
        if weight == SbsType::Unknown {
            return Err(config_error(path, "no config blob, and the tensor types cannot be deduced".into()));
        }
        Ok(ModelConfig::new(model, weight, model.choose_wrapping(options.pretrained)))
    }

    fn tokenizer_source(blobs: &BlobStore, options: &SbsOpenOptions) -> Result<TokenizerSource, SbsError> {
        if let Some(p) = &options.tokenizer_path {
            let bytes = std::fs::read(p).map_err(|source| SbsError::Io { path: p.clone(), source })?;
            return Ok(TokenizerSource::External(bytes));
        }
        match blobs.find(TOKENIZER_KEY) {
            Some(i) if blobs.blob_at(i) != Some(MOCK_TOKENIZER) => Ok(TokenizerSource::Blob(i)),
            _ => Ok(TokenizerSource::None),
        }
    }

    fn read_toc(&mut self) -> Result<(), SbsError> {
        let path = self.blobs.path().to_path_buf();
        let words = blob_words(&self.blobs, TOC_KEY)?.unwrap_or_default();
        let mut pos = 0;
        while pos < words.len() {
            let mut record = TensorRecord::default();
            let result = read_fields(&mut record, &words, pos).map_err(|source| SbsError::Fields {
                path: path.clone(),
                blob: TOC_KEY.into(),
                source,
            })?;
            pos = result.pos;
            // Records older than the `stride` field: packed.
            if record.stride == 0 {
                record.stride = record.cols;
            }
            let bad = |what: String| SbsError::BadTensor { path: path.clone(), tensor: record.name.clone(), what };
            if let Some(problem) = record.problem() {
                return Err(bad(problem));
            }
            let Some(range) = self.blobs.range(&record.name) else {
                return Err(bad("listed in the toc but there is no blob of that name".into()));
            };
            if range.bytes != record.packed_bytes() {
                return Err(bad(format!("blob has {} bytes, the toc says {}", range.bytes, record.packed_bytes())));
            }
            self.tensors.push(SbsTensor { key: record.name.clone(), record, range });
        }
        let weight = smallest_type(self.tensors.iter().map(|t| t.record.ty));
        if weight == SbsType::Unknown {
            return Err(config_error(&path, "the toc lists no tensors".into()));
        }
        if weight != self.config.weight {
            return Err(config_error(
                &path,
                format!(
                    "weight type is {} but the smallest tensor type is {}",
                    self.config.weight.name(),
                    weight.name()
                ),
            ));
        }
        Ok(())
    }

    /// Pre-2025: records from the type-prefixed blob names and the tensor table; scales from `Fscales`.
    fn create_records(&mut self) -> Result<(), SbsError> {
        let path = self.blobs.path().to_path_buf();
        let registry = TensorInfoRegistry::new(&self.config);
        for (i, key) in self.blobs.keys().iter().enumerate() {
            let ty = type_from_prefix(key.as_bytes().first().copied().unwrap_or(0));
            if ty == SbsType::Unknown {
                continue; // Not a tensor.
            }
            let name = &key[1..];
            let bad = |what: String| SbsError::BadTensor { path: path.clone(), tensor: name.into(), what };
            let Some(info) = registry.find(name) else {
                if name == "scales" {
                    continue;
                }
                return Err(bad(format!("unknown tensor for {}", self.config.model.prefix())));
            };
            let (rows, cols) = info.extents();
            let record = TensorRecord::new(name, ty, rows, cols).map_err(|e| bad(e.to_string()))?;
            let range = self.blobs.ranges().get(i).copied().unwrap_or(BlobRange { offset: 0, bytes: 0 });
            if range.bytes != record.packed_bytes() {
                return Err(bad(format!(
                    "blob has {} bytes, a {rows}x{cols} {} tensor {}",
                    range.bytes,
                    ty.name(),
                    record.packed_bytes()
                )));
            }
            self.tensors.push(SbsTensor { record, key: key.clone(), range });
        }
        let Some(scale_bytes) = self.blobs.blob(SCALES_KEY) else { return Ok(()) };
        let scales = bytes_to_words(scale_bytes).ok_or_else(|| SbsError::BadBlobLength {
            path: path.clone(),
            blob: SCALES_KEY.into(),
            len: scale_bytes.len() as u64,
            unit: 4,
        })?;
        if !scales.is_empty() && self.config.scale_base_names.is_empty() {
            return Err(config_error(&path, "the file has scales but the model takes none".into()));
        }
        // Scales go, in gemma.cpp's tensor visiting order, to the present tensors whose base name takes one.
        let by_name: HashMap<String, usize> =
            self.tensors.iter().enumerate().map(|(i, t)| (t.record.name.clone(), i)).collect();
        let wants: HashSet<&str> = self.config.scale_base_names.iter().map(String::as_str).collect();
        let mut next = scales.iter();
        for slot in tensor_slots(&self.config) {
            let Some(&i) = by_name.get(&slot.name) else { continue };
            if !wants.contains(strip_layer_suffix(&slot.name)) {
                continue;
            }
            let Some(&bits) = next.next() else {
                return Err(config_error(&path, format!("{} scales are too few", scales.len())));
            };
            if let Some(t) = self.tensors.get_mut(i) {
                t.record.scale = f32::from_bits(bits);
            }
        }
        let left = next.count();
        if left != 0 {
            return Err(config_error(&path, format!("{left} of {} scales belong to no tensor", scales.len())));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        self.blobs.path()
    }
    pub fn format(&self) -> SbsFormat {
        self.format
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// Tensors in file order.
    pub fn tensors(&self) -> &[SbsTensor] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&SbsTensor> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }
    /// A tensor's packed bytes, straight from the memory map.
    pub fn tensor_data(&self, tensor: &SbsTensor) -> &[u8] {
        self.blobs.blob(&tensor.key).unwrap_or(&[])
    }
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }
    /// The serialized SentencePiece model, if the file (or the options) provide one.
    pub fn tokenizer_bytes(&self) -> Option<&[u8]> {
        match &self.tokenizer {
            TokenizerSource::Blob(i) => self.blobs.blob_at(*i),
            TokenizerSource::External(b) => Some(b),
            TokenizerSource::None => None,
        }
    }
    /// The parsed tokenizer, if there is one.
    pub fn tokenizer(&self) -> Result<Option<ModelProto>, SbsError> {
        let Some(bytes) = self.tokenizer_bytes() else { return Ok(None) };
        ModelProto::decode_bytes(bytes)
            .map(Some)
            .map_err(|source| SbsError::Tokenizer { path: self.blobs.path().to_path_buf(), source })
    }
    /// The underlying blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }
}

/// Where [`SbsWriter`] puts blobs: a file (temp file renamed at the end) or memory.
pub trait BlobSink {
    type Output;
    fn add_blob(&mut self, key: &str, data: &[u8]) -> Result<BlobRange, SbsError>;
    fn finish_blobs(self) -> Result<Self::Output, SbsError>;
}

impl<W: std::io::Write> BlobSink for BlobWriter<W> {
    type Output = W;
    fn add_blob(&mut self, key: &str, data: &[u8]) -> Result<BlobRange, SbsError> {
        self.add(key, data)
    }
    fn finish_blobs(self) -> Result<W, SbsError> {
        self.finish()
    }
}

impl BlobSink for BlobFileWriter {
    type Output = ();
    fn add_blob(&mut self, key: &str, data: &[u8]) -> Result<BlobRange, SbsError> {
        self.add(key, data)
    }
    fn finish_blobs(self) -> Result<(), SbsError> {
        self.finish()
    }
}

/// Writes a single-file SBS checkpoint the way gemma.cpp does (`WeightsPtrs::AddTensorDataToWriter` then
/// `WriteSingleFile`): tensor blobs in the order added, then `config`, `tokenizer` and `toc`.
pub struct SbsWriter<S: BlobSink> {
    sink: S,
    toc: Vec<u32>,
    types: Vec<SbsType>,
    names: HashSet<String>,
}

impl SbsWriter<BlobFileWriter> {
    /// Writes to `path` through a temp file that is renamed only when [`SbsWriter::finish`] succeeds.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, SbsError> {
        Ok(Self::new(BlobFileWriter::create(path)?))
    }
}

impl SbsWriter<BlobWriter<Vec<u8>>> {
    /// Writes into memory; [`SbsWriter::finish`] returns the file's bytes.
    pub fn in_memory() -> Result<Self, SbsError> {
        Ok(Self::new(BlobWriter::new(Vec::new())?))
    }
}

impl<S: BlobSink> SbsWriter<S> {
    pub fn new(sink: S) -> Self {
        SbsWriter { sink, toc: Vec::new(), types: Vec::new(), names: HashSet::new() }
    }

    /// Adds a tensor: `data` is its packed encoding (`record.packed_bytes()` bytes).
    pub fn add_tensor(&mut self, record: &TensorRecord, data: &[u8]) -> Result<(), SbsError> {
        let invalid = |what: String| SbsError::InvalidWrite { what: format!("tensor '{}': {what}", record.name) };
        if let Some(problem) = record.problem() {
            return Err(invalid(problem));
        }
        if record.stride != record.cols && record.rows != 1 {
            return Err(invalid("SBS tensors are written packed (stride == cols)".into()));
        }
        if data.len() as u64 != record.packed_bytes() {
            return Err(invalid(format!("{} bytes of data for {} bytes", data.len(), record.packed_bytes())));
        }
        if [CONFIG_KEY, TOKENIZER_KEY, TOC_KEY].contains(&record.name.as_str())
            || !self.names.insert(record.name.clone())
        {
            return Err(invalid("name is used twice or reserved".into()));
        }
        let mut r = record.clone();
        append_fields(&mut r, &mut self.toc).map_err(|e| invalid(e.to_string()))?;
        self.sink.add_blob(&record.name, data)?;
        self.types.push(record.ty);
        Ok(())
    }

    /// Writes `config`, the tokenizer (a serialized ModelProto; `None` writes gemma.cpp's `unavailable`) and the
    /// `toc`, and completes the file. `config.weight` must be the smallest tensor type, as gemma.cpp checks.
    pub fn finish(mut self, config: &ModelConfig, tokenizer: Option<&[u8]>) -> Result<S::Output, SbsError> {
        let invalid = |what: String| SbsError::InvalidWrite { what };
        if self.types.is_empty() {
            return Err(invalid("an SBS file needs at least one tensor".into()));
        }
        check_config(Path::new("config"), config).map_err(|e| invalid(e.to_string()))?;
        let weight = smallest_type(self.types.iter().copied());
        if weight != config.weight {
            return Err(invalid(format!(
                "config.weight is {} but the smallest tensor type is {}",
                config.weight.name(),
                weight.name()
            )));
        }
        let mut words = Vec::new();
        append_fields(&mut config.clone(), &mut words).map_err(|e| invalid(format!("config: {e}")))?;
        self.sink.add_blob(CONFIG_KEY, &super::fields::words_to_bytes(&words))?;
        let tokenizer = match tokenizer {
            Some(t) if !t.is_empty() => t,
            _ => MOCK_TOKENIZER,
        };
        self.sink.add_blob(TOKENIZER_KEY, tokenizer)?;
        self.sink.add_blob(TOC_KEY, &super::fields::words_to_bytes(&self.toc))?;
        self.sink.finish_blobs()
    }
}
