//! How gemma.cpp's SBS tensors correspond to llama.cpp's GGUF tensors of a Gemma 3 model, and GGUF tensor access.

use gemma_compression::quant_format;
use gemma_io::GgufFile;

use super::ConvertError;

/// The GGUF name of a one-to-one SBS tensor (norms, embedding, `linear_w`); `None` for the fused ones.
pub(crate) fn gguf_name_of(base: &str, layer: Option<usize>) -> Option<String> {
    let per_layer = |suffix: &str| layer.map(|l| format!("blk.{l}.{suffix}.weight"));
    match base {
        "c_embedding" => Some("token_embd.weight".into()),
        "c_final_norm" => Some("output_norm.weight".into()),
        "pre_att_ns" => per_layer("attn_norm"),
        "pre_ff_ns" => per_layer("ffn_norm"),
        "post_att_ns" => per_layer("post_attention_norm"),
        "post_ff_ns" => per_layer("post_ffw_norm"),
        "query_norm" => per_layer("attn_q_norm"),
        "key_norm" => per_layer("attn_k_norm"),
        "linear_w" => per_layer("ffn_down"),
        _ => None,
    }
}

/// Whether an SBS base name is an RMS norm scale (stored as raw `w`; GGUF stores `1 + w`).
pub(crate) fn is_norm(base: &str) -> bool {
    matches!(
        base,
        "c_final_norm" | "pre_att_ns" | "pre_ff_ns" | "post_att_ns" | "post_ff_ns" | "query_norm" | "key_norm"
    )
}

/// Splits `qkv_ein_3` into `("qkv_ein", Some(3))`; per-model names have no layer.
pub(crate) fn split_layer(name: &str) -> (&str, Option<usize>) {
    if let Some(i) = name.rfind('_') {
        if let Ok(layer) = name[i + 1..].parse::<usize>() {
            return (&name[..i], Some(layer));
        }
    }
    (name, None)
}

/// A GGUF tensor dequantized to f32: `(values, rows, row_len)`, row-major.
pub(crate) fn dequantize(gguf: &GgufFile, name: &str) -> Result<(Vec<f32>, usize, usize), ConvertError> {
    let t = gguf.tensor(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
    let bad = |what: String| ConvertError::BadTensor { tensor: name.into(), what };
    let row_len = t.row_len();
    let rows = t.n_rows();
    let n = rows.checked_mul(row_len).ok_or_else(|| bad(format!("shape {:?} is too large", t.dims)))?;
    let format = quant_format(t.ggml_type).map_err(|source| ConvertError::Quant { tensor: name.into(), source })?;
    let row_bytes = t
        .ggml_type
        .row_bytes(row_len)
        .ok_or_else(|| bad(format!("row of {row_len} does not fit {} blocks", t.ggml_type.name())))?;
    let data = gguf.tensor_data(t);
    if data.len() != row_bytes * rows {
        return Err(bad(format!("{} bytes of data, {} expected", data.len(), row_bytes * rows)));
    }
    let mut out = vec![0.0f32; n];
    if row_len > 0 {
        for (src, dst) in data.chunks_exact(row_bytes).zip(out.chunks_exact_mut(row_len)) {
            format.dequantize_row(src, dst);
        }
    }
    Ok((out, rows, row_len))
}
