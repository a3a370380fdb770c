//! SBS (gemma.cpp) to GGUF (llama.cpp) for Gemma 3 checkpoints, so llama.cpp users can run gemma.cpp files.

use std::path::{Path, PathBuf};

use gemma_compression::{quant_format, SbsCodecType};
use gemma_io::sbs::{ModelConfig, SbsFile, SbsOpenOptions, SbsTensor, SbsType};
use gemma_io::{GgmlType, GgufWriter, MetaValue};

use super::gguf_names::gguf_name_of;
use super::gguf_to_sbs::GEMMA3_ROPE_BASE_GLOBAL;
use super::tokenizer_proto::gguf_vocab_metadata;
use super::{ConvertError, ConvertProgress};

/// The type of the GGUF weight matrices (norms are always F32, as llama.cpp's converter writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufOutputType {
    /// Exact for every SBS type.
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl GgufOutputType {
    pub fn ggml_type(self) -> GgmlType {
        match self {
            GgufOutputType::F32 => GgmlType::F32,
            GgufOutputType::F16 => GgmlType::F16,
            GgufOutputType::Bf16 => GgmlType::BF16,
            GgufOutputType::Q8_0 => GgmlType::Q8_0,
        }
    }
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    pub fn file_type(self) -> u32 {
        match self {
            GgufOutputType::F32 => 0,
            GgufOutputType::F16 => 1,
            GgufOutputType::Q8_0 => 7,
            GgufOutputType::Bf16 => 32,
        }
    }
    pub fn parse(s: &str) -> Option<GgufOutputType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => GgufOutputType::F32,
            "f16" => GgufOutputType::F16,
            "bf16" => GgufOutputType::Bf16,
            "q8_0" | "q8" => GgufOutputType::Q8_0,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct SbsToGgufOptions {
    pub out_type: GgufOutputType,
    /// A `tokenizer.model` for files without a tokenizer blob (pre-2025 files).
    pub tokenizer_path: Option<PathBuf>,
}

impl Default for SbsToGgufOptions {
    fn default() -> Self {
        SbsToGgufOptions { out_type: GgufOutputType::F32, tokenizer_path: None }
    }
}

fn codec_of(ty: SbsType) -> Option<SbsCodecType> {
    Some(match ty {
        SbsType::F32 => SbsCodecType::F32,
        SbsType::BF16 => SbsCodecType::Bf16,
        SbsType::SFP => SbsCodecType::Sfp,
        SbsType::NUQ => SbsCodecType::Nuq,
        SbsType::I8 => SbsCodecType::I8,
        _ => return None,
    })
}

/// A tensor of an SBS file decoded to f32, its scale applied: `rows * cols` values, row-major.
pub fn decode_sbs_tensor(file: &SbsFile, tensor: &SbsTensor) -> Result<Vec<f32>, ConvertError> {
    let r = &tensor.record;
    let codec = codec_of(r.ty).ok_or_else(|| ConvertError::BadTensor {
        tensor: r.name.clone(),
        what: format!("type {} is not a weight format", r.ty.name()),
    })?;
    let n = r.rows as usize * r.cols as usize;
    let mut out = vec![0.0f32; n];
    gemma_compression::sbs_codec(codec)
        .decode(file.tensor_data(tensor), 0, &mut out)
        .map_err(|source| ConvertError::Codec { tensor: r.name.clone(), source })?;
    if r.scale != 1.0 {
        for x in &mut out {
            *x *= r.scale;
        }
    }
    Ok(out)
}

fn decode_named(file: &SbsFile, name: &str) -> Result<Option<(Vec<f32>, usize, usize)>, ConvertError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(t) => Ok(Some((decode_sbs_tensor(file, t)?, t.record.rows as usize, t.record.cols as usize))),
    }
}

fn require(file: &SbsFile, name: &str) -> Result<(Vec<f32>, usize, usize), ConvertError> {
    decode_named(file, name)?.ok_or_else(|| ConvertError::MissingTensor(name.into()))
}

fn check_shape(name: &str, got: (usize, usize), want: (usize, usize)) -> Result<(), ConvertError> {
    if got != want {
        return Err(ConvertError::BadTensor {
            tensor: name.into(),
            what: format!("{}x{}, expected {}x{}", got.0, got.1, want.0, want.1),
        });
    }
    Ok(())
}

/// One GGUF tensor to write: name, row length, rows, values, whether it is a norm (kept F32).
struct Pending {
    name: String,
    row_len: usize,
    rows: usize,
    values: Vec<f32>,
    norm: bool,
}

/// The GGUF tensors of one layer, in the order llama.cpp's converter writes them.
fn layer_tensors(file: &SbsFile, config: &ModelConfig, layer: usize) -> Result<Vec<Pending>, ConvertError> {
    let l = config
        .layer_configs
        .get(layer)
        .ok_or_else(|| ConvertError::Unsupported(format!("layer {layer} has no config")))?;
    let (d, heads, kv, qkv, ff) = (
        config.model_dim as usize,
        l.heads as usize,
        l.kv_heads as usize,
        l.qkv_dim as usize,
        l.ff_hidden_dim as usize,
    );
    let s = |base: &str| format!("{base}_{layer}");
    let g = |suffix: &str| format!("blk.{layer}.{suffix}.weight");
    // Q, K, V: `qkv_ein` or the `qkv1_w` + `qkv2_w` pair (same rows, split after the Q heads).
    let qkv_rows = (heads + 2 * kv) * qkv;
    let fused = match decode_named(file, &s("qkv_ein"))? {
        Some((v, r, c)) => {
            check_shape(&s("qkv_ein"), (r, c), (qkv_rows, d))?;
            v
        }
        None => {
            let (mut q, qr, qc) = require(file, &s("qkv1_w"))?;
            check_shape(&s("qkv1_w"), (qr, qc), (heads * qkv, d))?;
            let (kvw, kr, kc) = require(file, &s("qkv2_w"))?;
            check_shape(&s("qkv2_w"), (kr, kc), (2 * kv * qkv, d))?;
            q.extend_from_slice(&kvw);
            q
        }
    };
    let head = qkv * d;
    let q = fused[..heads * head].to_vec();
    let (mut k, mut v) = (Vec::with_capacity(kv * head), Vec::with_capacity(kv * head));
    for h in 0..kv {
        let start = heads * head + 2 * h * head;
        k.extend_from_slice(&fused[start..start + head]);
        v.extend_from_slice(&fused[start + head..start + 2 * head]);
    }
    // Attention output: `att_ein` is [heads, model_dim, qkv_dim]; GGUF wants [model_dim][heads * qkv_dim]
    // (which is gemma.cpp's own transposed `att_w`).
    let attn_output = match decode_named(file, &s("att_w"))? {
        Some((w, r, c)) => {
            check_shape(&s("att_w"), (r, c), (d, heads * qkv))?;
            w
        }
        None => {
            let (a, r, c) = require(file, &s("att_ein"))?;
            check_shape(&s("att_ein"), (r, c), (heads * d, qkv))?;
            let mut out = vec![0.0f32; d * heads * qkv];
            for h in 0..heads {
                for m in 0..d {
                    let src = (h * d + m) * qkv;
                    let dst = m * heads * qkv + h * qkv;
                    out[dst..dst + qkv].copy_from_slice(&a[src..src + qkv]);
                }
            }
            out
        }
    };
    let (gate, up) = match decode_named(file, &s("gating_ein"))? {
        Some((w, r, c)) => {
            check_shape(&s("gating_ein"), (r, c), (2 * ff, d))?;
            let (gate, up) = w.split_at(ff * d);
            (gate.to_vec(), up.to_vec())
        }
        None => {
            let (gate, gr, gc) = require(file, &s("gating1_w"))?;
            check_shape(&s("gating1_w"), (gr, gc), (ff, d))?;
            let (up, ur, uc) = require(file, &s("gating2_w"))?;
            check_shape(&s("gating2_w"), (ur, uc), (ff, d))?;
            (gate, up)
        }
    };
    let (down, dr, dc) = require(file, &s("linear_w"))?;
    check_shape(&s("linear_w"), (dr, dc), (d, ff))?;
    let norm = |base: &str, len: usize| -> Result<Pending, ConvertError> {
        let (values, r, c) = require(file, &s(base))?;
        check_shape(&s(base), (r, c), (1, len))?;
        let name = gguf_name_of(base, Some(layer)).unwrap_or_default();
        Ok(Pending { name, row_len: len, rows: 1, values, norm: true })
    };
    let matrix = |suffix: &str, values: Vec<f32>, row_len: usize, rows: usize| Pending {
        name: g(suffix),
        row_len,
        rows,
        values,
        norm: false,
    };
    Ok(vec![
        matrix("attn_k", k, d, kv * qkv),
        norm("key_norm", qkv)?,
        norm("pre_att_ns", d)?,
        matrix("attn_output", attn_output, heads * qkv, d),
        matrix("attn_q", q, d, heads * qkv),
        norm("query_norm", qkv)?,
        matrix("attn_v", v, d, kv * qkv),
        matrix("ffn_down", down, ff, d),
        matrix("ffn_gate", gate, d, ff),
        norm("pre_ff_ns", d)?,
        matrix("ffn_up", up, d, ff),
        norm("post_att_ns", d)?,
        norm("post_ff_ns", d)?,
    ])
}

/// `general.size_label` from gemma.cpp's model prefix, e.g. `gemma3-270m` -> `270M`.
fn size_label(config: &ModelConfig) -> String {
    config.model.prefix().rsplit('-').next().unwrap_or("").to_ascii_uppercase()
}

/// The GGUF metadata of a Gemma 3 model, with the key set (and order) of llama.cpp's own Gemma 3 files.
fn gemma3_metadata(
    config: &ModelConfig,
    vocab: Vec<(String, MetaValue)>,
    out: GgufOutputType,
) -> Result<Vec<(String, MetaValue)>, ConvertError> {
    let l = config.layer_configs.first().ok_or_else(|| ConvertError::Unsupported("the config has no layers".into()))?;
    let window = config.attention_window_sizes.iter().copied().min().unwrap_or(config.max_seq_len);
    let s = |v: &str| MetaValue::String(v.into());
    let tags = MetaValue::strings(["gemma3", "gemma", "google", "text-generation"]);
    let mut m = vec![
        ("general.architecture", s("gemma3")),
        ("general.type", s("model")),
        ("general.name", s(&format!("Gemma 3 {}", size_label(config).to_ascii_lowercase()))),
        ("general.basename", s("gemma-3")),
        ("general.size_label", s(&size_label(config))),
        ("general.license", s("gemma")),
        ("general.tags", tags),
        ("gemma3.context_length", MetaValue::U32(config.max_seq_len)),
        ("gemma3.embedding_length", MetaValue::U32(config.model_dim)),
        ("gemma3.block_count", MetaValue::U32(config.num_layers)),
        ("gemma3.feed_forward_length", MetaValue::U32(l.ff_hidden_dim)),
        ("gemma3.attention.head_count", MetaValue::U32(l.heads)),
        // gemma.cpp's RMSNorm epsilon.
        ("gemma3.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-6)),
        ("gemma3.attention.key_length", MetaValue::U32(l.qkv_dim)),
        ("gemma3.attention.value_length", MetaValue::U32(l.qkv_dim)),
        ("gemma3.rope.freq_base", MetaValue::F32(GEMMA3_ROPE_BASE_GLOBAL as f32)),
        ("gemma3.attention.sliding_window", MetaValue::U32(window)),
        ("gemma3.attention.head_count_kv", MetaValue::U32(l.kv_heads)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect::<Vec<_>>();
    // llama.cpp runs the sliding-window layers at 10k (GEMMA3_ROPE_BASE_LOCAL) itself; the larger Gemma 3
    // models scale global RoPE by 8.
    if !config.vit_config.layer_configs.is_empty() {
        m.push(("gemma3.rope.scaling.type".into(), s("linear")));
        m.push(("gemma3.rope.scaling.factor".into(), MetaValue::F32(8.0)));
    }
    m.extend(vocab);
    m.push(("general.quantization_version".into(), MetaValue::U32(2)));
    m.push(("general.file_type".into(), MetaValue::U32(out.file_type())));
    Ok(m)
}

fn encode_rows(p: &Pending, ty: GgmlType) -> Result<Vec<u8>, ConvertError> {
    encode_matrix(&p.name, &p.values, p.rows, p.row_len, ty)
}

/// `rows` rows of `row_len` values encoded in the GGML type `ty`.
pub(super) fn encode_matrix(
    name: &str,
    values: &[f32],
    rows: usize,
    row_len: usize,
    ty: GgmlType,
) -> Result<Vec<u8>, ConvertError> {
    let quant = |source| ConvertError::Quant { tensor: name.to_string(), source };
    let format = quant_format(ty).map_err(quant)?;
    let row_bytes = ty.row_bytes(row_len).ok_or_else(|| ConvertError::BadTensor {
        tensor: name.to_string(),
        what: format!("rows of {row_len} do not fit {} blocks", ty.name()),
    })?;
    if values.len() != rows * row_len {
        return Err(ConvertError::BadTensor {
            tensor: name.to_string(),
            what: format!("{} values for {rows} rows of {row_len}", values.len()),
        });
    }
    let mut out = vec![0u8; row_bytes * rows];
    for (src, dst) in values.chunks_exact(row_len).zip(out.chunks_exact_mut(row_bytes)) {
        format.quantize_row(src, dst).map_err(quant)?;
    }
    Ok(out)
}

fn add_pending(writer: &mut GgufWriter, mut p: Pending, out: GgufOutputType) -> Result<(), ConvertError> {
    let ty = if p.norm { GgmlType::F32 } else { out.ggml_type() };
    if p.norm {
        // gemma.cpp multiplies by 1 + w; llama.cpp's files hold 1 + w.
        for x in &mut p.values {
            *x += 1.0;
        }
    }
    let data = encode_rows(&p, ty)?;
    let dims = if p.rows == 1 { vec![p.row_len as u64] } else { vec![p.row_len as u64, p.rows as u64] };
    writer.add_tensor(p.name.clone(), &dims, ty, data)?;
    Ok(())
}

/// Builds the GGUF file of an open SBS checkpoint (in memory, ready to write).
pub fn build_gguf(
    file: &SbsFile,
    options: &SbsToGgufOptions,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<GgufWriter, ConvertError> {
    let config = file.config();
    if !config.model.prefix().starts_with("gemma3") {
        return Err(ConvertError::Unsupported(format!(
            "{}: only Gemma 3 checkpoints convert to GGUF",
            config.model.prefix()
        )));
    }
    let proto = file
        .tokenizer()?
        .ok_or_else(|| ConvertError::Tokenizer("the file has no tokenizer; pass a tokenizer.model file".into()))?;
    let mut writer = GgufWriter::new();
    for (k, v) in gemma3_metadata(config, gguf_vocab_metadata(&proto)?, options.out_type)? {
        writer.add_metadata(k, v)?;
    }
    let total = 2 + config.num_layers as usize;
    let d = config.model_dim as usize;
    let (final_norm, r, c) = require(file, "c_final_norm")?;
    check_shape("c_final_norm", (r, c), (1, d))?;
    let (embedding, r, c) = require(file, "c_embedding")?;
    check_shape("c_embedding", (r, c), (config.vocab_size as usize, d))?;
    let head = vec![
        Pending { name: "output_norm.weight".into(), row_len: d, rows: 1, values: final_norm, norm: true },
        Pending { name: "token_embd.weight".into(), row_len: d, rows: r, values: embedding, norm: false },
    ];
    for (i, p) in head.into_iter().enumerate() {
        add_pending(&mut writer, p, options.out_type)?;
        progress(ConvertProgress { done: i + 1, total, tensor: if i == 0 { "c_final_norm" } else { "c_embedding" } });
    }
    for layer in 0..config.num_layers as usize {
        for p in layer_tensors(file, config, layer)? {
            add_pending(&mut writer, p, options.out_type)?;
        }
        progress(ConvertProgress { done: 3 + layer, total, tensor: &format!("layer {layer}") });
    }
    Ok(writer)
}

/// Converts the SBS checkpoint `input` to a GGUF file at `output` (temp file renamed when complete).
pub fn sbs_to_gguf(
    input: &Path,
    output: &Path,
    options: &SbsToGgufOptions,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<(), ConvertError> {
    let open = SbsOpenOptions { tokenizer_path: options.tokenizer_path.clone(), pretrained: None };
    let file = SbsFile::open_with(input, &open)?;
    build_gguf(&file, options, progress)?.write_file(output)?;
    Ok(())
}
