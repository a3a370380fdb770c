//! llama.cpp's `llama-export-lora`: LoRA adapters merged into the weights of their base model, written as a new
//! GGUF that runs without them. For every base matrix `W` the adapters adapt, in adapter order,
//!
//! ```text
//! W <- s_i (B_i A_i) + W,   s_i = user_scale_i * alpha_i / rank_i   (user_scale_i when alpha_i is 0)
//! ```
//!
//! computed in f32 from the dequantized base, then stored as F32 when the base matrix was F32 and as F16
//! otherwise; every other tensor is copied byte for byte. As llama-export-lora writes it: the base metadata in
//! its order with `general.file_type` moved to the end and set to F16 (1) whatever the tensors are, and the
//! tensors sorted by name. Each product `B_i A_i` is summed over the rank in f64 and rounded once to f32;
//! llama.cpp sums in f32 in its matmul kernel's order (which differs between CPUs), so where a product is not
//! exact in f32 the two can differ in the last bit before the F16 rounding (`docs/lora.md`).

use std::collections::BTreeSet;

use gemma_io::gguf::lora::{lora_scale, LoraFile, LoraPair};
use gemma_io::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorInfo};
use gemma_ops::ThreadPool;

use super::gguf_names::dequantize;
use super::{ConvertError, ConvertProgress};

/// `general.file_type` llama-export-lora writes: `LLAMA_FTYPE_MOSTLY_F16`.
const FILE_TYPE_F16: u32 = 1;

/// One adapter to merge, at the user's scale.
pub struct MergeAdapter {
    pub lora: LoraFile,
    pub scale: f32,
}

/// What [`merge_lora`] did: tensors merged and copied.
#[derive(Clone, Debug, Default)]
pub struct MergeSummary {
    pub merged: usize,
    pub copied: usize,
}

/// A matrix of f32 values, row-major, `cols` to a row.
struct Rows {
    values: Vec<f32>,
    cols: usize,
}

impl Rows {
    /// Tensor `name` of `file`, dequantized.
    fn of(file: &GgufFile, name: &str) -> Result<Rows, ConvertError> {
        let (values, _, cols) = dequantize(file, name)?;
        Ok(Rows { values, cols })
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }
}

/// Checks adapter `a` against the base model as llama-export-lora and llama.cpp's loader do: a LoRA adapter of
/// the base's architecture, unquantized factors, and factors whose shapes fit the base tensor.
fn check_adapter(base: &GgufFile, arch: &str, a: &MergeAdapter) -> Result<(), ConvertError> {
    let path = a.lora.file.path().display();
    if a.lora.architecture != arch {
        return Err(ConvertError::Unsupported(format!(
            "{path}: model arch and LoRA arch mismatch (the adapter is for '{}', the model is '{arch}')",
            a.lora.architecture
        )));
    }
    if !a.scale.is_finite() {
        return Err(ConvertError::Unsupported(format!("{path}: scale {} is not a finite number", a.scale)));
    }
    for pair in &a.lora.pairs {
        for t in [&pair.a, &pair.b] {
            if !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                return Err(ConvertError::Unsupported(format!(
                    "{path}: tensor '{}' is {}: quantized LoRA adapters are not supported, please retry with f16 or \
                     f32",
                    t.name,
                    t.ggml_type.name()
                )));
            }
        }
        let Some(info) = base.tensor(&pair.base).filter(|t| t.dims.len() == 2) else {
            return Err(ConvertError::Unsupported(format!(
                "{path}: LoRA tensor '{}' does not exist in base model (hint: maybe wrong base model?)",
                pair.base
            )));
        };
        if !pair.fits(&info.dims) {
            return Err(ConvertError::BadTensor {
                tensor: pair.base.clone(),
                what: format!(
                    "{path}: lora_a {:?} and lora_b {:?} do not fit a base tensor of {:?} (hint: maybe wrong base \
                     model?)",
                    pair.a.dims, pair.b.dims, info.dims
                ),
            });
        }
    }
    Ok(())
}

/// Adds `scale * (B A)` of `pair` to `w` (the base tensor's rows, f32), row by row on `pool`.
fn add_product(
    lora: &LoraFile,
    pair: &LoraPair,
    scale: f32,
    w: &mut Rows,
    pool: &ThreadPool,
) -> Result<(), ConvertError> {
    let (a, b) = (Rows::of(&lora.file, &pair.a.name)?, Rows::of(&lora.file, &pair.b.name)?);
    let cols = w.cols;
    let embedding = pair.is_token_embedding();
    pool.for_chunks_mut(&mut w.values, cols, &|r, row| {
        for (c, x) in row.iter_mut().enumerate() {
            let product: f64 = if embedding {
                // Rows are tokens, columns embedding dimensions: A holds a rank-wide row per token, B one per
                // dimension.
                a.row(r).iter().zip(b.row(c)).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum()
            } else {
                // Rows are outputs, columns inputs: B holds a rank-wide row per output, A a row of inputs per
                // rank.
                b.row(r).iter().enumerate().map(|(k, p)| f64::from(*p) * f64::from(a.row(k)[c])).sum()
            };
            *x += product as f32 * scale;
        }
    });
    Ok(())
}

/// Merges `adapters` into `base` as llama-export-lora does; returns the new file, ready to write.
pub fn merge_lora(
    base: &GgufFile,
    adapters: &[MergeAdapter],
    pool: &ThreadPool,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<(GgufWriter, MergeSummary), ConvertError> {
    if base.get("split.count").is_some() {
        return Err(ConvertError::Unsupported(
            "split models are not supported (as in llama-export-lora): merge the parts into one file first with \
             `gemma gguf-split --merge`"
                .into(),
        ));
    }
    let arch = base.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("");
    for a in adapters {
        check_adapter(base, arch, a)?;
    }
    // llama-export-lora merges adapters only when they adapt the same tensors.
    let names = |a: &MergeAdapter| a.lora.pairs.iter().map(|p| p.base.clone()).collect::<BTreeSet<String>>();
    let adapted = adapters.first().map(names).unwrap_or_default();
    if adapters.iter().any(|a| names(a) != adapted) {
        return Err(ConvertError::Unsupported(
            "the adapters do not adapt the same tensors; merge them one by one instead of all at once (as \
             llama-export-lora asks)"
                .into(),
        ));
    }

    let mut writer = GgufWriter::new();
    for (key, value) in base.metadata() {
        if key != "general.file_type" {
            writer.add_metadata(key.clone(), value.clone())?;
        }
    }
    writer.add_metadata("general.file_type", MetaValue::U32(FILE_TYPE_F16))?;

    let mut tensors: Vec<&TensorInfo> = base.tensors().iter().collect();
    tensors.sort_by(|x, y| x.name.cmp(&y.name));
    let mut summary = MergeSummary::default();
    let total = tensors.len();
    for (i, t) in tensors.into_iter().enumerate() {
        if !adapted.contains(&t.name) {
            writer.add_tensor(t.name.clone(), &t.dims, t.ggml_type, base.tensor_data(t).to_vec())?;
            summary.copied += 1;
        } else {
            let mut w = Rows::of(base, &t.name)?;
            for a in adapters {
                let pair = a.lora.pairs.iter().find(|p| p.base == t.name).ok_or_else(|| {
                    ConvertError::MissingTensor(format!("{}.lora_a (in {})", t.name, a.lora.file.path().display()))
                })?;
                add_product(&a.lora, pair, lora_scale(a.lora.alpha, pair.rank(), a.scale), &mut w, pool)?;
            }
            let (ty, bytes) = if t.ggml_type == GgmlType::F32 {
                (GgmlType::F32, w.values.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
            } else {
                (GgmlType::F16, w.values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect())
            };
            writer.add_tensor(t.name.clone(), &t.dims, ty, bytes)?;
            summary.merged += 1;
        }
        progress(ConvertProgress { done: i + 1, total, tensor: &t.name });
    }
    Ok((writer, summary))
}
