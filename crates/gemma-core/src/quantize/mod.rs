//! `gemma quantize`: llama.cpp's `llama-quantize` for GGUF → GGUF, written to give the same bytes.
//!
//! Each tensor's type follows llama.cpp's rules ([`rules`]); its data is decoded to f32 as ggml decodes it and
//! encoded with the encoders llama-quantize runs without an importance matrix (`quantize_row_*_ref`; for IQ4,
//! `quantize_iq4_*`, which search more scales than its `_ref`), which `gemma-compression` implements bit for
//! bit. The metadata is copied in order, with `general.quantization_version` and `general.file_type` moved to
//! the end as llama.cpp's `gguf_set_val_u32` does, and the tensors are written in llama.cpp's order (by layer, then name). So the output file is the one
//! llama-quantize writes, byte for byte (`tests/quantize_parity.rs`).
//!
//! With an importance matrix ([`ImatrixInput`], `--imatrix`), tensors are encoded with ggml's importance-weighted
//! encoders (`gemma_compression::weighted`, what `ggml_quantize_chunk` runs when it is given weights), the
//! `quantize.imatrix.*` keys are added, and the rules that depend on it apply (Q2_K_S; Q4_0/Q5_0's first
//! FFN-down layers; IQ4_NL/IQ4_XS keep their first FFN-down layers in IQ4 rather than Q5_K).
//!
//! A split input (its first part) is read whole and written as one file, as llama-quantize does without
//! `--keep-split`.
//!
//! Not implemented: the i-quants other than IQ4_NL and IQ4_XS, `--tensor-type` overrides, layer pruning, split
//! output (`--keep-split`), mixture-of-experts models.

pub mod rules;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gemma_compression::weighted::quantize_row_weighted;
use gemma_compression::{quant_format, QuantError};
use gemma_io::imatrix::{Imatrix, ImatrixError};
use gemma_io::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, TensorInfo};

use crate::convert::ConvertProgress;
pub use rules::{
    parse_tensor_type, requires_imatrix, FileType, FileTypeError, ModelFacts, PlannedType, TypeChoice, TENSOR_TYPES,
};

/// `general.quantization_version`: ggml's `GGML_QNT_VERSION`, the layout of the quantized blocks.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Architectures whose tensor names and hyperparameters the rules were checked on.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["gemma3", "gemma2", "gemma", "gemma-embedding", "llama"];

/// Elements handed to one thread at a time (llama.cpp's chunk size; any size gives the same bytes).
const CHUNK_ELEMENTS: usize = 32 * 512;

/// An importance matrix as llama-quantize uses it: per matrix name, one weight per input column (the file's
/// sums divided by the token counts), after `--include-weights` / `--exclude-weights`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImatrixInput {
    /// Written to `quantize.imatrix.file`: the path as the user gave it.
    pub label: String,
    pub weights: BTreeMap<String, Vec<f32>>,
    /// The first dataset the file names (`quantize.imatrix.dataset`).
    pub dataset: Option<String>,
    /// Chunks the statistics were gathered over (`quantize.imatrix.chunks_count` when positive).
    pub chunk_count: u32,
}

impl ImatrixInput {
    /// Reads an imatrix file (GGUF or legacy `.dat`) as llama-quantize's `load_imatrix` and `prepare_imatrix`
    /// do: `exclude` drops the entries whose names contain any of its strings; a non-empty `include` keeps only
    /// those containing one of its strings (llama-quantize refuses both at once).
    pub fn load(path: &Path, include: &[String], exclude: &[String]) -> Result<ImatrixInput, QuantizeError> {
        let imatrix =
            Imatrix::open(path).map_err(|source| QuantizeError::Imatrix { path: path.to_path_buf(), source })?;
        ImatrixInput::from_imatrix(&imatrix, path.display().to_string(), include, exclude)
            .map_err(|source| QuantizeError::Imatrix { path: path.to_path_buf(), source })
    }

    pub fn from_imatrix(
        imatrix: &Imatrix,
        label: String,
        include: &[String],
        exclude: &[String],
    ) -> Result<ImatrixInput, ImatrixError> {
        if !imatrix.is_legacy && !imatrix.has_metadata {
            return Err(ImatrixError::MissingMetadata);
        }
        let mut weights = imatrix.weights()?;
        weights.retain(|name, _| !exclude.iter().any(|e| name.contains(e.as_str())));
        if !include.is_empty() {
            weights.retain(|name, _| include.iter().any(|i| name.contains(i.as_str())));
        }
        Ok(ImatrixInput {
            label,
            weights,
            dataset: imatrix.datasets.first().cloned(),
            chunk_count: imatrix.chunk_count,
        })
    }
}

/// What to make.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub file_type: FileType,
    /// `--allow-requantize`: quantize tensors that are already quantized.
    pub allow_requantize: bool,
    /// `--pure`: no k-quant mixture.
    pub pure: bool,
    /// `--leave-output-tensor`: keep `output.weight` as it is.
    pub leave_output_tensor: bool,
    pub output_tensor_type: Option<GgmlType>,
    pub token_embedding_type: Option<GgmlType>,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// `--imatrix`: importance weights (an input with no entries left counts as none, as in llama-quantize).
    pub imatrix: Option<ImatrixInput>,
}

impl QuantizeOptions {
    pub fn new(file_type: FileType) -> QuantizeOptions {
        QuantizeOptions {
            file_type,
            allow_requantize: false,
            pure: false,
            leave_output_tensor: false,
            output_tensor_type: None,
            token_embedding_type: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            imatrix: None,
        }
    }

    /// The importance weights, if any are left.
    fn imatrix(&self) -> Option<&ImatrixInput> {
        self.imatrix.as_ref().filter(|m| !m.weights.is_empty())
    }
}

/// Why quantizing failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("input and output are the same file: {0}")]
    SameFile(PathBuf),
    #[error(
        "tensor '{tensor}' is already quantized ({ty}): requantizing is disabled, because quantizing quantized \
         weights again loses more quality than quantizing the 16- or 32-bit original; pass --allow-requantize to \
         do it anyway"
    )]
    Requantize { tensor: String, ty: GgmlType },
    #[error(
        "architecture '{arch}' is not supported: llama-quantize's type rules are only checked here for {}",
        SUPPORTED_ARCHITECTURES.join(", ")
    )]
    UnsupportedArchitecture { arch: String },
    #[error("mixture-of-experts models ({0} experts) are not supported")]
    Experts(u64),
    #[error("GGUF metadata '{key}': {what}")]
    BadMetadata { key: String, what: String },
    #[error("tensor '{tensor}': rows of {row_len} elements are not a whole number of {ty} blocks ({block})")]
    RowWidth { tensor: String, row_len: u64, ty: GgmlType, block: usize },
    #[error("tensor '{tensor}': cannot convert from {from} to {to}")]
    Convert { tensor: String, from: GgmlType, to: GgmlType },
    #[error("importance matrix {path}: {source}")]
    Imatrix {
        path: PathBuf,
        #[source]
        source: ImatrixError,
    },
    #[error(
        "tensor '{tensor}' is {ty} in a {file_type} file, which needs an importance matrix (--imatrix){}",
        if *.has_imatrix { ", and the importance matrix has no entry for it" } else { "" }
    )]
    NeedsImatrix { tensor: String, ty: GgmlType, file_type: FileType, has_imatrix: bool },
    #[error("importance matrix entry for '{tensor}' has {got} values, the tensor's rows have {want} elements")]
    ImatrixSize { tensor: String, got: usize, want: u64 },
    #[error("tensor '{tensor}': {source}")]
    Quant {
        tensor: String,
        #[source]
        source: QuantError,
    },
}

/// One tensor of the output, in output order.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    /// As written (trailing 1s dropped, as ggml writes them).
    pub dims: Vec<u64>,
    pub from: GgmlType,
    pub to: GgmlType,
    /// The type the rules chose before the row width forced another.
    pub fell_back_from: Option<GgmlType>,
}

/// What was done.
#[derive(Clone, Debug)]
pub struct QuantizeSummary {
    pub tensors: Vec<PlannedTensor>,
    /// Tensor data bytes before and after (padding excluded, as llama-quantize counts).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub n_elements: u64,
    pub elapsed: Duration,
}

impl QuantizeSummary {
    /// Tensors whose rows did not fit the type the rules chose.
    pub fn n_fallbacks(&self) -> usize {
        self.tensors.iter().filter(|t| t.fell_back_from.is_some()).count()
    }
}

/// The model facts the rules need, from the file's metadata.
pub fn model_facts(file: &GgufFile) -> Result<ModelFacts, QuantizeError> {
    let arch_key = "general.architecture";
    let arch = file
        .get(arch_key)
        .and_then(MetaValue::as_str)
        .ok_or_else(|| bad_metadata(arch_key, "missing or not a string"))?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(QuantizeError::UnsupportedArchitecture { arch: arch.to_string() });
    }
    let expert_key = format!("{arch}.expert_count");
    let n_expert = file.get(&expert_key).and_then(MetaValue::as_u64).unwrap_or(0);
    if n_expert > 1 {
        return Err(QuantizeError::Experts(n_expert));
    }
    let layers_key = format!("{arch}.block_count");
    let n_layer = file
        .get(&layers_key)
        .and_then(MetaValue::as_u64)
        .filter(|&n| n > 0 && n <= 4096)
        .ok_or_else(|| bad_metadata(&layers_key, "missing, zero or not a count"))?;
    // Heads may be one number or one per layer; llama.cpp's n_gqa() looks at layer 0.
    let first_count = |key: &str| -> Option<u64> {
        match file.get(key)? {
            MetaValue::Array(a) => a.get(0).and_then(|v| v.as_u64()),
            v => v.as_u64(),
        }
    };
    let heads_key = format!("{arch}.attention.head_count");
    let n_head = first_count(&heads_key).ok_or_else(|| bad_metadata(&heads_key, "missing or not a count"))?;
    let n_head_kv = first_count(&format!("{arch}.attention.head_count_kv")).unwrap_or(n_head);
    let n_gqa = n_head.checked_div(n_head_kv).map_or(0, |g| u32::try_from(g).unwrap_or(u32::MAX));
    Ok(ModelFacts { n_layer: n_layer as usize, n_gqa, is_70b: arch == "llama" && n_layer == 80 && n_head != n_head_kv })
}

fn bad_metadata(key: &str, what: &str) -> QuantizeError {
    QuantizeError::BadMetadata { key: key.to_string(), what: what.to_string() }
}

/// Dimensions as ggml writes them: trailing 1s dropped (at least one dimension left).
fn written_dims(dims: &[u64]) -> Vec<u64> {
    let n = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    dims[..n.min(dims.len()).max(1)].to_vec()
}

/// Every tensor's output type, in output order, checked: a quantized source needs `allow_requantize`, and
/// every conversion must be one the codecs can do on these row widths.
pub fn plan(file: &GgufFile, options: &QuantizeOptions) -> Result<Vec<PlannedTensor>, QuantizeError> {
    let facts = model_facts(file)?;
    let mut order: Vec<&TensorInfo> = file.tensors().iter().collect();
    order.sort_by(|a, b| rules::llama_tensor_order(&a.name, &b.name));
    let dims: Vec<Vec<u64>> = order.iter().map(|t| written_dims(&t.dims)).collect();
    let shapes: Vec<rules::TensorShape<'_>> = order
        .iter()
        .zip(&dims)
        .map(|(t, d)| rules::TensorShape {
            name: &t.name,
            n_dims: d.len(),
            row_len: t.dims.first().copied().unwrap_or(1),
            ggml_type: t.ggml_type,
        })
        .collect();
    let choice = TypeChoice {
        file_type: options.file_type,
        pure: options.pure,
        output_tensor_type: options.output_tensor_type,
        token_embedding_type: options.token_embedding_type,
        quantize_output: !options.leave_output_tensor,
        has_imatrix: options.imatrix().is_some(),
    };
    let planned = rules::plan_types(&facts, &choice, &shapes);
    let mut out = Vec::with_capacity(order.len());
    let imatrix = options.imatrix();
    for ((t, dims), p) in order.iter().zip(dims).zip(planned) {
        let (from, to) = (t.ggml_type, p.ggml_type);
        let quantizable = rules::allows_quantization(&t.name, dims.len(), !options.leave_output_tensor);
        if quantizable && imatrix.is_none() && requires_imatrix(&t.name, to, options.file_type) {
            return Err(QuantizeError::NeedsImatrix {
                tensor: t.name.clone(),
                ty: to,
                file_type: options.file_type,
                has_imatrix: false,
            });
        }
        if from != to {
            if let Some(m) = imatrix {
                let weights = imatrix_weights(m, &t.name, t.dims.first().copied().unwrap_or(1))?;
                if weights.is_none() && requires_imatrix(&t.name, to, options.file_type) {
                    return Err(QuantizeError::NeedsImatrix {
                        tensor: t.name.clone(),
                        ty: to,
                        file_type: options.file_type,
                        has_imatrix: true,
                    });
                }
            }
            if from.block_size() > 1 && !options.allow_requantize {
                return Err(QuantizeError::Requantize { tensor: t.name.clone(), ty: from });
            }
            let convertible = quant_format(from).is_ok() && TENSOR_TYPES.contains(&to);
            if !convertible {
                return Err(QuantizeError::Convert { tensor: t.name.clone(), from, to });
            }
            let row_len = dims[0];
            if !row_len.is_multiple_of(to.block_size() as u64) {
                // only an explicit --output-tensor-type / --token-embedding-type gets here (the rules fall back)
                return Err(QuantizeError::RowWidth {
                    tensor: t.name.clone(),
                    row_len,
                    ty: to,
                    block: to.block_size(),
                });
            }
        }
        out.push(PlannedTensor { name: t.name.clone(), dims, from, to, fell_back_from: p.fell_back_from });
    }
    Ok(out)
}

/// A tensor's importance weights as llama-quantize looks them up: by name; none when the matrix has no entry;
/// an entry of another size is an error, except for the token embedding (whose entry, when a tied model's
/// output head was measured, does not describe its rows).
fn imatrix_weights<'a>(m: &'a ImatrixInput, name: &str, row_len: u64) -> Result<Option<&'a [f32]>, QuantizeError> {
    let Some(w) = m.weights.get(name) else { return Ok(None) };
    if w.len() as u64 == row_len {
        return Ok(Some(w));
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Ok(None);
    }
    Err(QuantizeError::ImatrixSize { tensor: name.to_string(), got: w.len(), want: row_len })
}

/// llama.cpp's key override values: strings are cut to 127 bytes (`strncpy` into a 128-byte field); here at a
/// character boundary.
fn override_string(text: &str) -> String {
    let mut end = text.len().min(127);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Whether two paths name the same file (also through links); a path that does not exist names no file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) if x == y => true,
        #[cfg(unix)]
        (Ok(_), Ok(_)) => {
            use std::os::unix::fs::MetadataExt;
            match (std::fs::metadata(a), std::fs::metadata(b)) {
                (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Quantizes `input` into `output` (written through a temp file renamed into place when complete, so a failure
/// leaves no partial file). `progress` hears of each tensor as it is done.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<QuantizeSummary, QuantizeError> {
    let start = Instant::now();
    if same_file(input, output) {
        return Err(QuantizeError::SameFile(output.to_path_buf()));
    }
    let file = GgufFile::open(input)?;
    let writer = quantize_gguf(&file, options, progress)?;
    let summary = writer.summary;
    writer.writer.write_file(output)?;
    Ok(QuantizeSummary { elapsed: start.elapsed(), ..summary })
}

/// A quantized model in memory, ready to be written.
pub struct QuantizedGguf {
    pub writer: GgufWriter,
    pub summary: QuantizeSummary,
}

/// Quantizes an open file in memory (what [`quantize_file`] writes out).
pub fn quantize_gguf(
    file: &GgufFile,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<QuantizedGguf, QuantizeError> {
    let start = Instant::now();
    let planned = plan(file, options)?;
    let mut writer = GgufWriter::new();
    // llama.cpp copies every key in order, then sets these two (gguf_set_val_* removes a key and appends it)
    // and drops the split keys.
    // With an importance matrix, llama-quantize sets four more keys the same way (as key overrides).
    let mut set = vec![
        ("general.quantization_version", MetaValue::U32(QUANTIZATION_VERSION)),
        ("general.file_type", MetaValue::U32(options.file_type.id())),
    ];
    let imatrix = options.imatrix();
    if let Some(m) = imatrix {
        set.push(("quantize.imatrix.file", MetaValue::String(override_string(&m.label))));
        if let Some(dataset) = &m.dataset {
            set.push(("quantize.imatrix.dataset", MetaValue::String(override_string(dataset))));
        }
        set.push(("quantize.imatrix.entries_count", MetaValue::U32(m.weights.len() as u32)));
        if m.chunk_count > 0 {
            set.push(("quantize.imatrix.chunks_count", MetaValue::U32(m.chunk_count)));
        }
    }
    let dropped = ["split.no", "split.count", "split.tensors.count"];
    for (key, value) in file.metadata() {
        if !set.iter().any(|(k, _)| k == key) && !dropped.contains(&key.as_str()) {
            writer.add_metadata(key.clone(), value.clone())?;
        }
    }
    for (key, value) in set {
        writer.add_metadata(key, value)?;
    }

    let threads = options.threads.max(1);
    let (mut bytes_in, mut bytes_out, mut n_elements) = (0u64, 0u64, 0u64);
    for (done, p) in planned.iter().enumerate() {
        let info = file.tensor(&p.name).ok_or_else(|| QuantizeError::Convert {
            tensor: p.name.clone(),
            from: p.from,
            to: p.to,
        })?;
        let src = file.tensor_data(info);
        let data = if p.from == p.to {
            src.to_vec()
        } else {
            let weights = match imatrix {
                Some(m) => imatrix_weights(m, &p.name, info.dims.first().copied().unwrap_or(1))?,
                None => None,
            };
            convert_tensor(&p.name, src, info, p.to, weights, threads)?
        };
        bytes_in += src.len() as u64;
        bytes_out += data.len() as u64;
        n_elements += info.n_elements;
        writer.add_tensor(p.name.clone(), &p.dims, p.to, data)?;
        // the copy is made; the mapped pages are not needed again
        file.release_pages(src);
        progress(ConvertProgress { done: done + 1, total: planned.len(), tensor: &p.name });
    }
    Ok(QuantizedGguf {
        writer,
        summary: QuantizeSummary { tensors: planned, bytes_in, bytes_out, n_elements, elapsed: start.elapsed() },
    })
}

/// Decodes a tensor to f32 and encodes it as `to`, `threads` ways over chunks of whole rows.
fn convert_tensor(
    name: &str,
    src: &[u8],
    info: &TensorInfo,
    to: GgmlType,
    weights: Option<&[f32]>,
    threads: usize,
) -> Result<Vec<u8>, QuantizeError> {
    let quant_error = |source| QuantizeError::Quant { tensor: name.to_string(), source };
    let decoder = quant_format(info.ggml_type).map_err(quant_error)?;
    let encoder = quant_format(to).map_err(quant_error)?;
    let row_len = info.row_len();
    let n_rows = info.n_rows();
    let bad_width = || QuantizeError::RowWidth {
        tensor: name.to_string(),
        row_len: row_len as u64,
        ty: to,
        block: to.block_size(),
    };
    let in_row = info.ggml_type.row_bytes(row_len).ok_or_else(bad_width)?;
    let out_row = to.row_bytes(row_len).ok_or_else(bad_width)?;
    let mut out = vec![0u8; out_row * n_rows];
    if n_rows == 0 || row_len == 0 {
        return Ok(out);
    }
    let rows_per_chunk = CHUNK_ELEMENTS.div_ceil(row_len).max(1);
    let jobs: Vec<Mutex<(usize, &mut [u8])>> =
        out.chunks_mut(rows_per_chunk * out_row).enumerate().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<QuantError>> = Mutex::new(None);
    let work = || {
        let mut values = vec![0f32; rows_per_chunk * row_len];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else { break };
            let mut job = job.lock().unwrap_or_else(|e| e.into_inner());
            let (chunk, dst) = &mut *job;
            let first_row = *chunk * rows_per_chunk;
            let rows = dst.len() / out_row;
            for r in 0..rows {
                let row = first_row + r;
                let values = &mut values[r * row_len..(r + 1) * row_len];
                decoder.dequantize_row(&src[row * in_row..(row + 1) * in_row], values);
                let dst = &mut dst[r * out_row..(r + 1) * out_row];
                // every row of a matrix takes the same weights (one per input column)
                let done = match weights {
                    Some(w) => quantize_row_weighted(to, values, w, dst),
                    None => encoder.quantize_row(values, dst),
                };
                if let Err(e) = done {
                    first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    return;
                }
            }
        }
    };
    let workers = threads.min(jobs.len());
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
    drop(jobs);
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(quant_error(e)),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_dims_drop_trailing_ones() {
        assert_eq!(written_dims(&[640, 1]), vec![640]);
        assert_eq!(written_dims(&[640, 256, 1, 1]), vec![640, 256]);
        assert_eq!(written_dims(&[1, 1]), vec![1]);
        assert_eq!(written_dims(&[1, 5]), vec![1, 5]);
    }
}
