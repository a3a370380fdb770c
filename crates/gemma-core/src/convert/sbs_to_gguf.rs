//! SBS (gemma.cpp) to GGUF (llama.cpp) for Gemma 3 and Gemma 2 checkpoints, so llama.cpp users can run gemma.cpp
//! files.

use std::path::{Path, PathBuf};

use gemma_compression::{quant_format, SbsCodecType};
use gemma_io::sbs::{ModelConfig, SbsFile, SbsOpenOptions, SbsTensor, SbsType};
use gemma_io::{GgmlType, GgufWriter, MetaValue};

use super::gguf_names::gguf_name_of;
use super::tokenizer_proto::gguf_vocab_metadata;
use super::{ConvertError, ConvertProgress};
use crate::config::Architecture;

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
fn layer_tensors(
    file: &SbsFile,
    config: &ModelConfig,
    layer: usize,
    arch: Architecture,
) -> Result<Vec<Pending>, ConvertError> {
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
    let qk_norm = arch == Architecture::Gemma3;
    let mut out = vec![matrix("attn_k", k, d, kv * qkv)];
    if qk_norm {
        out.push(norm("key_norm", qkv)?);
    }
    out.push(norm("pre_att_ns", d)?);
    out.push(matrix("attn_output", attn_output, heads * qkv, d));
    out.push(matrix("attn_q", q, d, heads * qkv));
    if qk_norm {
        out.push(norm("query_norm", qkv)?);
    }
    out.extend([
        matrix("attn_v", v, d, kv * qkv),
        matrix("ffn_down", down, ff, d),
        matrix("ffn_gate", gate, d, ff),
        norm("pre_ff_ns", d)?,
        matrix("ffn_up", up, d, ff),
        norm("post_att_ns", d)?,
        norm("post_ff_ns", d)?,
    ]);
    Ok(out)
}

/// `general.size_label` from gemma.cpp's model prefix, e.g. `gemma3-270m` -> `270M`.
fn size_label(config: &ModelConfig) -> String {
    config.model.prefix().rsplit('-').next().unwrap_or("").to_ascii_uppercase()
}

/// The GGUF metadata of a Gemma 3 or Gemma 2 model, with the key set (and order) of llama.cpp's own files of
/// that architecture; RoPE base and soft-caps as `run` (gemma-rs's reading of the SBS config) has them.
fn gguf_metadata(
    config: &ModelConfig,
    run: &crate::config::ModelConfig,
    vocab: Vec<(String, MetaValue)>,
    out: GgufOutputType,
) -> Result<Vec<(String, MetaValue)>, ConvertError> {
    let l = config.layer_configs.first().ok_or_else(|| ConvertError::Unsupported("the config has no layers".into()))?;
    let window = config.attention_window_sizes.iter().copied().min().unwrap_or(config.max_seq_len);
    let s = |v: &str| MetaValue::String(v.into());
    let (arch, family, basename) = match run.arch {
        Architecture::Gemma2 => ("gemma2", "Gemma 2", "gemma-2"),
        _ => ("gemma3", "Gemma 3", "gemma-3"),
    };
    let k = |key: &str| format!("{arch}.{key}");
    let tags = MetaValue::strings([arch, "gemma", "google", "text-generation"]);
    let mut m = vec![
        ("general.architecture".to_string(), s(arch)),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(&format!("{family} {}", size_label(config).to_ascii_lowercase()))),
        ("general.basename".into(), s(basename)),
        ("general.size_label".into(), s(&size_label(config))),
        ("general.license".into(), s("gemma")),
        ("general.tags".into(), tags),
        (k("context_length"), MetaValue::U32(config.max_seq_len)),
        (k("embedding_length"), MetaValue::U32(config.model_dim)),
        (k("block_count"), MetaValue::U32(config.num_layers)),
        (k("feed_forward_length"), MetaValue::U32(l.ff_hidden_dim)),
        (k("attention.head_count"), MetaValue::U32(l.heads)),
    ];
    if run.arch == Architecture::Gemma2 {
        m.extend([
            (k("attention.head_count_kv"), MetaValue::U32(l.kv_heads)),
            // gemma.cpp's RMSNorm epsilon.
            (k("attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-6)),
            (k("attention.key_length"), MetaValue::U32(l.qkv_dim)),
            (k("attention.value_length"), MetaValue::U32(l.qkv_dim)),
            (k("attn_logit_softcapping"), MetaValue::F32(config.att_cap)),
            (k("final_logit_softcapping"), MetaValue::F32(config.final_cap)),
            (k("attention.sliding_window"), MetaValue::U32(window)),
        ]);
        // llama.cpp's default base is gemma.cpp's for Gemma 2 (10,000); a config asking for another says so.
        if run.rope_base != 10_000.0 {
            m.push((k("rope.freq_base"), MetaValue::F32(run.rope_base)));
        }
    } else {
        m.extend([
            (k("attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-6)),
            (k("attention.key_length"), MetaValue::U32(l.qkv_dim)),
            (k("attention.value_length"), MetaValue::U32(l.qkv_dim)),
            (k("rope.freq_base"), MetaValue::F32(run.rope_base)),
            (k("attention.sliding_window"), MetaValue::U32(window)),
            (k("attention.head_count_kv"), MetaValue::U32(l.kv_heads)),
        ]);
        // llama.cpp runs the sliding-window layers at 10k itself; the larger Gemma 3 models scale global RoPE
        // by 8.
        if !config.vit_config.layer_configs.is_empty() {
            m.push((k("rope.scaling.type"), s("linear")));
            m.push((k("rope.scaling.factor"), MetaValue::F32(8.0)));
        }
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
    let run = crate::config::ModelConfig::from_sbs(config)
        .map_err(|e| ConvertError::Unsupported(format!("{}: {e}", config.model.prefix())))?;
    if !matches!(run.arch, Architecture::Gemma3 | Architecture::Gemma2) {
        return Err(ConvertError::Unsupported(format!(
            "{}: only Gemma 3 and Gemma 2 checkpoints convert to GGUF",
            config.model.prefix()
        )));
    }
    let proto = file
        .tokenizer()?
        .ok_or_else(|| ConvertError::Tokenizer("the file has no tokenizer; pass a tokenizer.model file".into()))?;
    let mut writer = GgufWriter::new();
    for (k, v) in gguf_metadata(config, &run, gguf_vocab_metadata(&proto)?, options.out_type)? {
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
        for p in layer_tensors(file, config, layer, run.arch)? {
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
