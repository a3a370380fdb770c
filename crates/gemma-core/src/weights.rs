//! Looking up and checking weight tensors, in a GGUF file or a gemma.cpp SBS file. Matrices stay in the
//! memory map where the file's layout allows; small vectors (norm weights) are decoded to f32 once.

use std::sync::Arc;

use gemma_compression::float_panels::{is_float_panel_type, FloatPanels};
use gemma_compression::interleaved::{InterleavedFormat, InterleavedRows};
use gemma_compression::interleaved_k::{InterleavedKFormat, InterleavedKRows};
use gemma_compression::{quant_format, sbs_codec, SbsCodecType, NUQ_GROUP};
use gemma_io::sbs::{SbsFile, SbsType};
use gemma_io::{GgufFile, TensorInfo};
use gemma_ops::matmul::{RowBlocks, SbsMatrix, WeightView};
use gemma_ops::QMatrix;

use crate::config::ModelConfig;
use crate::error::ModelError;

/// The file a model's weights are read from. Matrices made from one kind are viewed through the same kind.
#[derive(Clone, Copy)]
pub enum WeightFile<'a> {
    Gguf(&'a GgufFile),
    Sbs(&'a SbsFile),
}

/// A weight matrix of `rows` outputs by `cols` inputs.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
}

#[derive(Clone, Debug)]
enum Storage {
    /// A GGUF tensor, by reference into the file.
    Gguf(TensorInfo),
    /// Rows `map` of the SBS tensor at index `tensor` of the file's toc.
    Sbs { tensor: usize, ty: SbsCodecType, stream_rows: usize, map: RowBlocks, scale: f32 },
    /// A GGUF tensor repacked at load for the interleaved kernels (shared by the matrices cloned from it,
    /// as a tied output head).
    Interleaved(Arc<InterleavedRows>),
    /// The same for Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K and Q3_K.
    InterleavedK(Arc<InterleavedKRows>),
    /// An F32, F16 or BF16 tensor repacked at load in panels of 16 rows.
    FloatPanels(Arc<FloatPanels>),
    /// An SBS-format stream built at load (a tensor whose file layout the kernels cannot read in place).
    Owned { stream: Vec<u8>, ty: SbsCodecType, scale: f32 },
}

impl Matrix {
    /// The matrix as a kernel operand, borrowing its bytes from `file` (or from `self`).
    pub fn view<'a>(&'a self, file: WeightFile<'a>) -> WeightView<'a> {
        // Shape and format were checked when the matrix was made, so these cannot fail for a matrix used
        // with the file it came from.
        match (&self.storage, file) {
            (Storage::Interleaved(m), _) => WeightView::Interleaved(m),
            (Storage::InterleavedK(m), _) => WeightView::InterleavedK(m),
            (Storage::FloatPanels(m), _) => WeightView::FloatPanels(m),
            (Storage::Gguf(info), WeightFile::Gguf(f)) => WeightView::Ggml(
                QMatrix::new(f.tensor_data(info), self.rows, self.cols, info.ggml_type)
                    .unwrap_or_else(|e| unreachable!("matrix {} was validated at load: {e}", info.name)),
            ),
            (&Storage::Sbs { tensor, ty, stream_rows, map, scale }, WeightFile::Sbs(f)) => {
                let t = f.tensors().get(tensor).unwrap_or_else(|| unreachable!("SBS tensor {tensor} vanished"));
                WeightView::Sbs(
                    SbsMatrix::new(f.tensor_data(t), ty, stream_rows, self.rows, self.cols, map, scale)
                        .unwrap_or_else(|e| unreachable!("SBS matrix {} was validated at load: {e}", t.key)),
                )
            }
            (Storage::Owned { stream, ty, scale }, _) => WeightView::Sbs(
                SbsMatrix::new(
                    stream,
                    *ty,
                    self.rows,
                    self.rows,
                    self.cols,
                    RowBlocks::contiguous(0, self.rows),
                    *scale,
                )
                .unwrap_or_else(|e| unreachable!("an owned matrix is built consistent: {e}")),
            ),
            _ => unreachable!("a matrix is only viewed through the kind of file it was loaded from"),
        }
    }
}

/// The token embedding: a table read a row at a time by lookups, so float formats keep the file's layout
/// (panels would turn each lookup into a strided gather, and an embedding model never multiplies by it).
const LOOKUP_TABLE: &str = "token_embd.weight";

/// Whether loading repacks the tensor: formats with interleaved kernels (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1, IQ4_NL,
/// Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K, Q3_K) always, float matrices (F32, F16, BF16) into panels unless the tensor is the lookup table.
fn is_repacked(info: &TensorInfo) -> bool {
    let ty = info.ggml_type;
    InterleavedFormat::of(ty).is_some()
        || InterleavedKFormat::of(ty).is_some()
        || (is_float_panel_type(ty) && info.dims.len() == 2 && info.name != LOOKUP_TABLE)
}

/// The tensor repacked for the interleaved or panel kernels when [`is_repacked`] says so (`matrix` has
/// checked its shape and format). The file pages of the original are released as they are copied, so the
/// copy does not add to the resident set.
fn repacked(file: &GgufFile, info: &TensorInfo, rows: usize, cols: usize) -> Result<Option<Storage>, ModelError> {
    let ty = info.ggml_type;
    if !is_repacked(info) {
        return Ok(None);
    }
    let data = file.tensor_data(info);
    // Release in steps of a few MiB, not one system call per group.
    const STEP: usize = 4 << 20;
    let mut released = 0;
    let mut done = |done: usize| {
        if done - released >= STEP || done == data.len() {
            file.release_pages(&data[released..done]);
            released = done;
        }
    };
    let storage = if is_float_panel_type(ty) {
        FloatPanels::repack(ty, rows, cols, data, &mut done).map(|m| Storage::FloatPanels(Arc::new(m)))
    } else if InterleavedKFormat::of(ty).is_some() {
        InterleavedKRows::repack(ty, rows, cols, data, &mut done).map(|m| Storage::InterleavedK(Arc::new(m)))
    } else {
        InterleavedRows::repack(ty, rows, cols, data, &mut done).map(|m| Storage::Interleaved(Arc::new(m)))
    };
    storage.map(Some).map_err(|source| ModelError::TensorFormat { name: info.name.clone(), source: source.into() })
}

/// After loading: maps every tensor the kernels read in place, then releases again the pages of the
/// repacked ones. The page cache may hold a file in large folios, and a later first fault on a tensor would
/// map its whole folio, neighbouring repacked tensors included, back into the resident set; faulting the
/// in-place tensors now and releasing afterwards leaves nothing to fault later.
pub(crate) fn settle_resident_pages(file: &GgufFile) {
    for t in file.tensors().iter().filter(|t| !is_repacked(t)) {
        // Every 4096th byte from the start, and the last: together they lie in every page of the tensor.
        let data = file.tensor_data(t);
        std::hint::black_box(data.iter().step_by(4096).chain(data.last()).fold(0u8, |a, &b| a ^ b));
    }
    for t in file.tensors().iter().filter(|t| is_repacked(t)) {
        file.release_pages(file.tensor_data(t));
    }
}

fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// Loads `name` as a `rows x cols` matrix (GGUF dims `[cols, rows]`), checking shape and number format.
pub fn matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
    let info = tensor(file, name)?;
    if info.dims != [cols as u64, rows as u64] {
        return Err(ModelError::TensorShape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![cols as u64, rows as u64],
        });
    }
    QMatrix::new(file.tensor_data(info), rows, cols, info.ggml_type)
        .map_err(|source| ModelError::TensorFormat { name: name.into(), source })?;
    let storage = repacked(file, info, rows, cols)?.unwrap_or_else(|| Storage::Gguf(info.clone()));
    Ok(Matrix { rows, cols, storage })
}

/// Loads `name` as a vector of `len` values, decoded to f32.
pub fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let info = tensor(file, name)?;
    if info.dims != [len as u64] {
        return Err(ModelError::TensorShape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![len as u64],
        });
    }
    let format = quant_format(info.ggml_type)?;
    let mut out = vec![0f32; len];
    format.dequantize_row(file.tensor_data(info), &mut out);
    Ok(out)
}

/// Like [`vector`], but `Ok(None)` when the file has no tensor `name` (optional biases, rope factors).
pub fn optional_vector(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(_) => vector(file, name, len).map(Some),
    }
}

/// The kernels' codec for an SBS tensor type; `None` for types that hold no weights (F64, U32, U64).
fn sbs_codec_type(ty: SbsType) -> Option<SbsCodecType> {
    match ty {
        SbsType::F32 => Some(SbsCodecType::F32),
        SbsType::BF16 => Some(SbsCodecType::Bf16),
        SbsType::SFP => Some(SbsCodecType::Sfp),
        SbsType::NUQ => Some(SbsCodecType::Nuq),
        SbsType::I8 => Some(SbsCodecType::I8),
        SbsType::Unknown | SbsType::F64 | SbsType::U32 | SbsType::U64 => None,
    }
}

/// An SBS tensor checked to be `rows x cols` in a weight type: its toc index, codec and scale.
struct SbsTensorRef {
    index: usize,
    ty: SbsCodecType,
    scale: f32,
}

fn sbs_tensor(file: &SbsFile, name: &str, rows: usize, cols: usize) -> Result<SbsTensorRef, ModelError> {
    let index = file
        .tensors()
        .iter()
        .position(|t| t.record.name == name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let record = &file.tensors()[index].record;
    if (record.rows as usize, record.cols as usize) != (rows, cols) {
        return Err(ModelError::TensorShape {
            name: name.into(),
            found: vec![record.rows.into(), record.cols.into()],
            expected: vec![rows as u64, cols as u64],
        });
    }
    let ty = sbs_codec_type(record.ty).ok_or_else(|| ModelError::BadMetadata {
        key: format!("toc: {name}"),
        why: format!("type {} holds no weights", record.ty.name()),
    })?;
    Ok(SbsTensorRef { index, ty, scale: record.scale })
}

/// Rows of the SBS tensor `name` (a `stream_rows x cols` stream) picked by `map` as a `rows x cols` matrix.
pub fn sbs_matrix(
    file: &SbsFile,
    name: &str,
    stream_rows: usize,
    cols: usize,
    rows: usize,
    map: RowBlocks,
) -> Result<Matrix, ModelError> {
    let t = sbs_tensor(file, name, stream_rows, cols)?;
    let data = file.tensor_data(&file.tensors()[t.index]);
    SbsMatrix::new(data, t.ty, stream_rows, rows, cols, map, t.scale)
        .map_err(|source| ModelError::TensorFormat { name: name.into(), source })?;
    Ok(Matrix { rows, cols, storage: Storage::Sbs { tensor: t.index, ty: t.ty, stream_rows, map, scale: t.scale } })
}

/// The seven matrices of one SBS decoder layer, in whichever of gemma.cpp's alternative forms the file holds
/// them (its `weights.cc` accepts each pair): Q, K, V from `qkv_ein_{l}` (all Q heads' rows, then per KV
/// head its K rows and its V rows) or from `qkv1_w_{l}` (Q) and `qkv2_w_{l}` (K and V per KV head); the
/// output projection from `att_ein_{l}` (rebuilt, [`sbs_attention_output`]) or `att_w_{l}`; gate and up from
/// `gating_ein_{l}` (gate rows, then up rows) or `gating1_w_{l}` and `gating2_w_{l}`; down from `linear_w_{l}`.
pub struct SbsBlockMatrices {
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

impl SbsBlockMatrices {
    pub fn load(file: &SbsFile, c: &ModelConfig, layer: usize) -> Result<SbsBlockMatrices, ModelError> {
        let (d, hd, ff) = (c.d_model, c.head_dim, c.ffn_dim);
        let (q_rows, kv_rows) = (c.n_heads * hd, c.n_kv_heads * hd);
        let n = |s: &str| format!("{s}_{layer}");
        let has = |s: &str| file.tensor(&n(s)).is_some();
        let all = |rows: usize| RowBlocks::contiguous(0, rows);
        // K and V alternate per KV head, `head_dim` rows each, from stream row `first` on.
        let kv_head_rows = |first| RowBlocks { first, block: hd, stride: 2 * hd };
        let (wq, wk, wv) = if has("qkv_ein") || !has("qkv1_w") {
            let qkv = |rows, map| sbs_matrix(file, &n("qkv_ein"), q_rows + 2 * kv_rows, d, rows, map);
            (qkv(q_rows, all(q_rows))?, qkv(kv_rows, kv_head_rows(q_rows))?, qkv(kv_rows, kv_head_rows(q_rows + hd))?)
        } else {
            let kv = |map| sbs_matrix(file, &n("qkv2_w"), 2 * kv_rows, d, kv_rows, map);
            (
                sbs_matrix(file, &n("qkv1_w"), q_rows, d, q_rows, all(q_rows))?,
                kv(kv_head_rows(0))?,
                kv(kv_head_rows(hd))?,
            )
        };
        let wo = if has("att_ein") || !has("att_w") {
            sbs_attention_output(file, &n("att_ein"), c.n_heads, d, hd)?
        } else {
            sbs_matrix(file, &n("att_w"), d, q_rows, d, all(d))?
        };
        let (w_gate, w_up) = if has("gating_ein") || !has("gating1_w") {
            let half = |first| sbs_matrix(file, &n("gating_ein"), 2 * ff, d, ff, RowBlocks::contiguous(first, ff));
            (half(0)?, half(ff)?)
        } else {
            (
                sbs_matrix(file, &n("gating1_w"), ff, d, ff, all(ff))?,
                sbs_matrix(file, &n("gating2_w"), ff, d, ff, all(ff))?,
            )
        };
        let w_down = sbs_matrix(file, &n("linear_w"), d, ff, d, all(d))?;
        Ok(SbsBlockMatrices { wq, wk, wv, wo, w_gate, w_up, w_down })
    }
}

/// The SBS norm weight `name` (`len` raw values `w`, times the tensor's scale) as the `1 + w` the kernels
/// multiply by (GGUF stores `1 + w` already).
pub fn sbs_norm(file: &SbsFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = sbs_tensor(file, name, 1, len)?;
    let mut out = vec![0f32; len];
    sbs_codec(t.ty)
        .decode(file.tensor_data(&file.tensors()[t.index]), 0, &mut out)
        .map_err(|e| ModelError::BadMetadata { key: format!("toc: {name}"), why: e.to_string() })?;
    for w in &mut out {
        *w = 1.0 + *w * t.scale;
    }
    Ok(out)
}

/// gemma.cpp's attention output tensor `att_ein` (`[heads, d_model, head_dim]`) as the `d_model x
/// (heads * head_dim)` output projection, in the tensor's own number format (gemma.cpp's `InitAttWeights`).
/// Row `m` is the concatenation over heads `h` of stream rows `h * d_model + m`, which the file does not
/// hold contiguously, so the matrix is rebuilt at load: by copying bytes for the per-element formats, by
/// decoding and re-encoding for I8 (gemma.cpp's `InitAttWeightsI8`). NUQ is never re-clustered (seconds of
/// work; gemma.cpp's `InitAttWeightsNUQ` is unused, it runs NUQ files in its `to_bf16` mode): when `head_dim`
/// is a multiple of the 256-value group, every head row is whole groups, copied as bytes; otherwise the
/// values are decoded to BF16, exactly (every NUQ value is an SFP value, so a bf16).
pub fn sbs_attention_output(
    file: &SbsFile,
    name: &str,
    heads: usize,
    d_model: usize,
    head_dim: usize,
) -> Result<Matrix, ModelError> {
    let t = sbs_tensor(file, name, heads * d_model, head_dim)?;
    let src = file.tensor_data(&file.tensors()[t.index]);
    let codec = sbs_codec(t.ty);
    let cols = heads * head_dim;
    let bad = |why: String| ModelError::BadMetadata { key: format!("toc: {name}"), why };
    // Head rows that are whole units of the format (elements, or NUQ groups) move as bytes.
    let whole_units = codec.group_size() == 1 || (t.ty == SbsCodecType::Nuq && head_dim.is_multiple_of(NUQ_GROUP));
    let (stream, ty) = if whole_units {
        let span = codec.packed_bytes(head_dim);
        let mut stream = vec![0u8; codec.packed_bytes(d_model * cols)];
        for m in 0..d_model {
            for h in 0..heads {
                let (from, to) = ((h * d_model + m) * span, (m * heads + h) * span);
                let (Some(s), Some(d)) = (src.get(from..from + span), stream.get_mut(to..to + span)) else {
                    return Err(bad("tensor shorter than its shape".into()));
                };
                d.copy_from_slice(s);
            }
        }
        (stream, t.ty)
    } else if t.ty == SbsCodecType::Nuq {
        let mut words = vec![0u16; head_dim];
        let mut bf16 = vec![0u8; 2 * d_model * cols];
        for m in 0..d_model {
            for h in 0..heads {
                codec.decode_bf16(src, (h * d_model + m) * head_dim, &mut words).map_err(|e| bad(e.to_string()))?;
                let at = 2 * (m * cols + h * head_dim);
                for (dst, w) in bf16[at..at + 2 * head_dim].chunks_exact_mut(2).zip(&words) {
                    dst.copy_from_slice(&w.to_le_bytes());
                }
            }
        }
        (bf16, SbsCodecType::Bf16)
    } else {
        let mut values = vec![0f32; d_model * cols];
        for (m, row) in values.chunks_exact_mut(cols).enumerate() {
            for (h, part) in row.chunks_exact_mut(head_dim).enumerate() {
                codec.decode(src, (h * d_model + m) * head_dim, part).map_err(|e| bad(e.to_string()))?;
            }
        }
        let mut stream = vec![0u8; codec.packed_bytes(d_model * cols)];
        codec.encode(&values, &mut stream, 0).map_err(|e| bad(e.to_string()))?;
        (stream, t.ty)
    };
    Ok(Matrix { rows: d_model, cols, storage: Storage::Owned { stream, ty, scale: t.scale } })
}
