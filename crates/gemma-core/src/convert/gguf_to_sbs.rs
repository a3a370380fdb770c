//! GGUF (llama.cpp) to SBS (gemma.cpp) for Gemma 3 and Gemma 2 models.

use std::path::Path;

use gemma_compression::SbsCodecType;
use gemma_io::sbs::model_store::BlobSink;
use gemma_io::sbs::tensor_info::exported_tensors;
use gemma_io::sbs::{Model, ModelConfig, PromptWrapping, SbsType, SbsWriter, TensorRecord};
use gemma_io::{GgufFile, MetaValue};

use super::gguf_names::{dequantize, gguf_name_of, is_norm, split_layer};
use super::parallel_encode::{default_threads, encode_sbs_tensor};
use super::tokenizer_proto::model_proto_from_gguf;
use super::{ConvertError, ConvertProgress};

/// gemma.cpp's RoPE base on the global layers of configs with `use_global_timescale` (Gemma 3).
pub const GEMMA3_ROPE_BASE_GLOBAL: f64 = 1_000_000.0;
/// gemma.cpp's RoPE base everywhere else (Gemma 3's sliding-window layers, every Gemma 2 layer).
pub const ROPE_BASE_LOCAL: f64 = 10_000.0;

/// How to write the SBS file.
#[derive(Clone, Debug)]
pub struct GgufToSbsOptions {
    /// Type of the weight matrices. Norms and the embedding are stored as BF16 (F32 when this is F32), as
    /// gemma.cpp's exporter stores them.
    pub weight_type: SbsCodecType,
    /// Prompt wrapping written in the config; `None`: instruction-tuned if the GGUF has a chat template.
    pub wrapping: Option<PromptWrapping>,
    /// Encoder threads (NUQ clustering is slow).
    pub threads: usize,
}

impl Default for GgufToSbsOptions {
    fn default() -> Self {
        GgufToSbsOptions { weight_type: SbsCodecType::Sfp, wrapping: None, threads: default_threads() }
    }
}

/// The SBS file type of a number format.
pub fn sbs_type_of(codec: SbsCodecType) -> SbsType {
    match codec {
        SbsCodecType::F32 => SbsType::F32,
        SbsCodecType::Bf16 => SbsType::BF16,
        SbsCodecType::Sfp => SbsType::SFP,
        SbsCodecType::Nuq => SbsType::NUQ,
        SbsCodecType::I8 => SbsType::I8,
    }
}

/// The number format the converter stores SBS tensor `base` (a name without layer suffix) in.
pub fn tensor_codec(base: &str, requested: SbsCodecType) -> SbsCodecType {
    if is_norm(base) {
        // Norm scales are tiny and precision-critical, as in gemma.cpp's exporters.
        if requested == SbsCodecType::F32 {
            SbsCodecType::F32
        } else {
            SbsCodecType::Bf16
        }
    } else if base == "c_embedding" && requested != SbsCodecType::F32 {
        // gemma.cpp caps the embedding at BF16 (`min_size = kBF16` in its tensor_info, `c_*` tensors are BF16 in
        // its exporter): it is also the tied output head, so its precision goes straight into the logits.
        SbsCodecType::Bf16
    } else {
        requested
    }
}

fn meta_u64(gguf: &GgufFile, key: &str) -> Result<Option<u64>, ConvertError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| ConvertError::BadMetadata {
            key: key.into(),
            what: format!("not an unsigned integer: {v}"),
        }),
    }
}

fn require_u64(gguf: &GgufFile, key: &str) -> Result<u64, ConvertError> {
    meta_u64(gguf, key)?.ok_or_else(|| ConvertError::BadMetadata { key: key.into(), what: "missing".into() })
}

/// The gemma.cpp config for a GGUF file (`gemma3` or `gemma2`): the known model whose dimensions match, with
/// `weight` as its weight type. Checks that the file's RoPE bases, sliding window and soft-caps are those
/// gemma.cpp runs that model with. The config says whether the global layers use RoPE base 1,000,000
/// (`use_global_timescale`): the file's base decides, so gemma.cpp runs Gemma 3 270M as llama.cpp does
/// although its own table leaves that model at 10,000.
pub fn sbs_config_for_gguf(
    gguf: &GgufFile,
    weight: SbsType,
    wrapping: Option<PromptWrapping>,
) -> Result<ModelConfig, ConvertError> {
    let arch = gguf.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("");
    let gemma2 = match arch {
        "gemma3" => false,
        "gemma2" => true,
        "gemma" => {
            return Err(ConvertError::Unsupported(
                "architecture 'gemma': gemma.cpp no longer has Gemma 1 models, so no SBS config can name one".into(),
            ))
        }
        _ => {
            return Err(ConvertError::Unsupported(format!(
                "architecture '{arch}': only gemma3 and gemma2 GGUF files convert to SBS"
            )))
        }
    };
    let k = |s: &str| format!("{arch}.{s}");
    let layers = require_u64(gguf, &k("block_count"))?;
    let model_dim = require_u64(gguf, &k("embedding_length"))?;
    let ff = require_u64(gguf, &k("feed_forward_length"))?;
    let heads = require_u64(gguf, &k("attention.head_count"))?;
    let kv_heads = meta_u64(gguf, &k("attention.head_count_kv"))?.unwrap_or(heads);
    let qkv_dim = match meta_u64(gguf, &k("attention.key_length"))? {
        Some(q) => q,
        None => model_dim / heads.max(1),
    };
    let vocab = match gguf.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
        Some(tokens) => tokens.len() as u64,
        None => gguf.tensor("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0),
    };
    let described = format!(
        "{arch}: {layers} layers, model_dim {model_dim}, ff {ff}, {heads} heads, {kv_heads} KV heads, \
         qkv_dim {qkv_dim}, vocab {vocab}"
    );
    let matches = |c: &ModelConfig| {
        let Some(l) = c.layer_configs.first() else { return false };
        u64::from(c.num_layers) == layers
            && u64::from(c.model_dim) == model_dim
            && u64::from(c.vocab_size) == vocab
            && u64::from(l.ff_hidden_dim) == ff
            && u64::from(l.heads) == heads
            && u64::from(l.kv_heads) == kv_heads
            && u64::from(l.qkv_dim) == qkv_dim
            // Gemma 3 layers have QK norms, Gemma 2's do not.
            && l.use_qk_norm != gemma2
            && c.wrapping != PromptWrapping::PaliGemma
    };
    let model = Model::known()
        .find(|&m| ModelConfig::canonical(m).is_some_and(|c| matches(&c)))
        .ok_or_else(|| ConvertError::UnknownModel(described.clone()))?;
    let pretrained = gguf.get("tokenizer.chat_template").is_none();
    let mut config =
        ModelConfig::new(model, weight, wrapping.unwrap_or_else(|| model.choose_wrapping(Some(pretrained))));
    if !config.vit_config.layer_configs.is_empty() {
        return Err(ConvertError::Unsupported(format!(
            "{} has an image encoder that a GGUF language model file does not hold",
            model.prefix()
        )));
    }
    check_gguf_settings(gguf, arch, &mut config)?;
    Ok(config)
}

/// Checks that a GGUF file's RoPE bases, sliding window and soft-caps are the ones `config` (gemma.cpp's
/// model) runs with, and records the global RoPE base in `config.use_global_timescale`. gemma.cpp hard-codes
/// these, so a file with others would silently run differently.
pub fn check_gguf_settings(gguf: &GgufFile, arch: &str, config: &mut ModelConfig) -> Result<(), ConvertError> {
    let k = |s: &str| format!("{arch}.{s}");
    let name = config.model.prefix();
    let mismatch = |key: String, got: f64, want: String| ConvertError::BadMetadata {
        key,
        what: format!("{got}, but gemma.cpp runs {name} with {want}"),
    };
    let f64_of = |key: &str| gguf.get(key).map(|v| v.as_f64().unwrap_or(f64::NAN));
    // llama.cpp's default when the key is absent.
    let global = f64_of(&k("rope.freq_base")).unwrap_or(ROPE_BASE_LOCAL);
    let gemma3 = arch == "gemma3";
    // Gemma 2's sliding-window layers share the global base unless the file gives them their own.
    if global == GEMMA3_ROPE_BASE_GLOBAL && gemma3 {
        config.use_global_timescale = Some(true);
    } else if global == ROPE_BASE_LOCAL {
        config.use_global_timescale = Some(false);
    } else {
        let want = if gemma3 {
            format!("{ROPE_BASE_LOCAL} or {GEMMA3_ROPE_BASE_GLOBAL}")
        } else {
            ROPE_BASE_LOCAL.to_string()
        };
        return Err(mismatch(k("rope.freq_base"), global, want));
    }
    for key in [k("rope.freq_base_swa"), k("rope.local.freq_base")] {
        if let Some(got) = f64_of(&key) {
            if got != ROPE_BASE_LOCAL {
                return Err(mismatch(key, got, ROPE_BASE_LOCAL.to_string()));
            }
        }
    }
    let window = config.attention_window_sizes.iter().copied().min().unwrap_or(0);
    // llama.cpp's Gemma 2 default window; Gemma 3 files always say.
    let file_window = meta_u64(gguf, &k("attention.sliding_window"))?.or((!gemma3).then_some(4096));
    if let Some(w) = file_window {
        if w != u64::from(window) {
            return Err(ConvertError::BadMetadata {
                key: k("attention.sliding_window"),
                what: format!("{w}, but gemma.cpp's {name} uses {window}"),
            });
        }
    }
    if !gemma3 {
        if let Some(p) = meta_u64(gguf, &k("attention.sliding_window_pattern"))? {
            if p != 2 {
                return Err(ConvertError::BadMetadata {
                    key: k("attention.sliding_window_pattern"),
                    what: format!("{p}, but gemma.cpp's {name} alternates local and global layers"),
                });
            }
        }
        // llama.cpp's defaults: 50 and 30.
        let caps =
            [("attn_logit_softcapping", 50.0, config.att_cap), ("final_logit_softcapping", 30.0, config.final_cap)];
        for (key, default, want) in caps {
            let got = f64_of(&k(key)).unwrap_or(default);
            if got != f64::from(want) {
                return Err(mismatch(k(key), got, want.to_string()));
            }
        }
    }
    Ok(())
}

fn check_rows(name: &str, rows: usize, row_len: usize, want_rows: usize, want_len: usize) -> Result<(), ConvertError> {
    if rows != want_rows || row_len != want_len {
        return Err(ConvertError::BadTensor {
            tensor: name.into(),
            what: format!("{rows} rows of {row_len}, expected {want_rows} rows of {want_len}"),
        });
    }
    Ok(())
}

/// The f32 values of SBS tensor `name` (e.g. `qkv_ein_3`) laid out as gemma.cpp expects, from the GGUF file:
/// dequantized, fused and reordered, norms without llama.cpp's `+1`.
pub fn sbs_layout_values(gguf: &GgufFile, config: &ModelConfig, name: &str) -> Result<Vec<f32>, ConvertError> {
    let (base, layer) = split_layer(name);
    let d = config.model_dim as usize;
    let layer_config = layer.and_then(|l| config.layer_configs.get(l));
    let unknown = || ConvertError::Unsupported(format!("tensor '{name}' has no GGUF counterpart"));
    let blk = |s: &str| format!("blk.{}.{s}.weight", layer.unwrap_or(0));
    match (base, layer_config) {
        ("qkv_ein", Some(l)) => {
            let (heads, kv, qkv) = (l.heads as usize, l.kv_heads as usize, l.qkv_dim as usize);
            let (q, qr, ql) = dequantize(gguf, &blk("attn_q"))?;
            check_rows(&blk("attn_q"), qr, ql, heads * qkv, d)?;
            let (k, kr, kl) = dequantize(gguf, &blk("attn_k"))?;
            check_rows(&blk("attn_k"), kr, kl, kv * qkv, d)?;
            let (v, vr, vl) = dequantize(gguf, &blk("attn_v"))?;
            check_rows(&blk("attn_v"), vr, vl, kv * qkv, d)?;
            // All Q heads, then K and V interleaved per KV head.
            let mut out = q;
            out.reserve(2 * kv * qkv * d);
            let head = qkv * d;
            for g in 0..kv {
                out.extend_from_slice(&k[g * head..(g + 1) * head]);
                out.extend_from_slice(&v[g * head..(g + 1) * head]);
            }
            Ok(out)
        }
        ("att_ein", Some(l)) => {
            let (heads, qkv) = (l.heads as usize, l.qkv_dim as usize);
            let (o, rows, row_len) = dequantize(gguf, &blk("attn_output"))?;
            check_rows(&blk("attn_output"), rows, row_len, d, heads * qkv)?;
            // GGUF: row m holds all heads' inputs for output m; SBS: [heads, model_dim, qkv_dim].
            let mut out = Vec::with_capacity(o.len());
            for h in 0..heads {
                for m in 0..d {
                    let start = m * row_len + h * qkv;
                    out.extend_from_slice(&o[start..start + qkv]);
                }
            }
            Ok(out)
        }
        ("gating_ein", Some(l)) => {
            let ff = l.ff_hidden_dim as usize;
            let (gate, gr, gl) = dequantize(gguf, &blk("ffn_gate"))?;
            check_rows(&blk("ffn_gate"), gr, gl, ff, d)?;
            let (up, ur, ul) = dequantize(gguf, &blk("ffn_up"))?;
            check_rows(&blk("ffn_up"), ur, ul, ff, d)?;
            let mut out = gate;
            out.extend_from_slice(&up);
            Ok(out)
        }
        _ => {
            let gguf_name = gguf_name_of(base, layer).ok_or_else(unknown)?;
            let (mut values, _, _) = dequantize(gguf, &gguf_name)?;
            if is_norm(base) {
                for x in &mut values {
                    *x -= 1.0;
                }
            }
            Ok(values)
        }
    }
}

/// Converts an open GGUF file into `writer` and completes it. Returns the config written.
pub fn write_sbs<S: BlobSink>(
    gguf: &GgufFile,
    options: &GgufToSbsOptions,
    writer: SbsWriter<S>,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<(ModelConfig, S::Output), ConvertError> {
    let config = sbs_config_for_gguf(gguf, sbs_type_of(options.weight_type), options.wrapping)?;
    write_sbs_as(gguf, config, options, writer, progress)
}

/// [`write_sbs`] with the config given rather than looked up among gemma.cpp's known models (its dimensions
/// must be the file's).
pub fn write_sbs_as<S: BlobSink>(
    gguf: &GgufFile,
    config: ModelConfig,
    options: &GgufToSbsOptions,
    mut writer: SbsWriter<S>,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<(ModelConfig, S::Output), ConvertError> {
    let tokenizer = model_proto_from_gguf(gguf)?.encode_bytes();
    let tensors = exported_tensors(&config);
    let total = tensors.len();
    for (i, (name, rows, cols)) in tensors.iter().enumerate() {
        let mut values = sbs_layout_values(gguf, &config, name)?;
        if values.len() as u64 != rows * cols {
            return Err(ConvertError::BadTensor {
                tensor: name.clone(),
                what: format!("{} values for a {rows}x{cols} tensor", values.len()),
            });
        }
        let codec = tensor_codec(split_layer(name).0, options.weight_type);
        let (packed, scale) = encode_sbs_tensor(name, &mut values, codec, options.threads)?;
        let mut record = TensorRecord::new(name, sbs_type_of(codec), *rows, *cols)?;
        record.scale = scale;
        writer.add_tensor(&record, &packed)?;
        progress(ConvertProgress { done: i + 1, total, tensor: name });
    }
    let out = writer.finish(&config, Some(&tokenizer))?;
    Ok((config, out))
}

/// Converts the GGUF file `input` to a single-file SBS checkpoint at `output` (written to a temp file that is
/// renamed only once complete). Returns the config written.
pub fn gguf_to_sbs(
    input: &Path,
    output: &Path,
    options: &GgufToSbsOptions,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<ModelConfig, ConvertError> {
    let gguf = GgufFile::open(input)?;
    let (config, ()) = write_sbs(&gguf, options, SbsWriter::create(output)?, progress)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemma_io::GgufWriter;

    /// A metadata-only GGUF of `arch` with Gemma 2 2B's dimensions (what llama.cpp's converter writes for
    /// it), `extra` keys added or replacing.
    fn gemma2_2b_metadata(arch: &str, extra: &[(&str, MetaValue)]) -> GgufFile {
        let mut keys: Vec<(String, MetaValue)> = vec![
            ("general.architecture".into(), MetaValue::String(arch.into())),
            (format!("{arch}.block_count"), MetaValue::U32(26)),
            (format!("{arch}.embedding_length"), MetaValue::U32(2304)),
            (format!("{arch}.feed_forward_length"), MetaValue::U32(9216)),
            (format!("{arch}.attention.head_count"), MetaValue::U32(8)),
            (format!("{arch}.attention.head_count_kv"), MetaValue::U32(4)),
            (format!("{arch}.attention.key_length"), MetaValue::U32(256)),
            (format!("{arch}.attention.sliding_window"), MetaValue::U32(4096)),
            (format!("{arch}.attn_logit_softcapping"), MetaValue::F32(50.0)),
            (format!("{arch}.final_logit_softcapping"), MetaValue::F32(30.0)),
            ("tokenizer.ggml.tokens".into(), MetaValue::strings((0..256_000).map(|i| format!("t{i}")))),
        ];
        for (k, v) in extra {
            let k = format!("{arch}.{k}");
            keys.retain(|(existing, _)| *existing != k);
            keys.push((k, v.clone()));
        }
        let mut w = GgufWriter::new();
        for (k, v) in keys {
            w.add_metadata(k, v).expect("metadata");
        }
        GgufFile::from_bytes(w.to_bytes(), "gemma2-2b.gguf").expect("GGUF")
    }

    #[test]
    fn gemma2_files_map_onto_gemma_cpps_gemma2_2b() {
        let c = sbs_config_for_gguf(&gemma2_2b_metadata("gemma2", &[]), SbsType::SFP, None).unwrap();
        assert_eq!((c.model, c.weight, c.wrapping), (Model::Gemma2_2B, SbsType::SFP, PromptWrapping::GemmaPt));
        assert_eq!(c.use_global_timescale, Some(false));
        // llama.cpp's defaults (window 4096, caps 50 / 30, base 10,000) are gemma.cpp's.
        let defaults = GgufFile::from_bytes(
            {
                let f = gemma2_2b_metadata("gemma2", &[]);
                let mut w = GgufWriter::new();
                for (k, v) in f.metadata() {
                    if !k.contains("softcapping") && !k.contains("sliding_window") {
                        w.add_metadata(k.clone(), v.clone()).unwrap();
                    }
                }
                w.to_bytes()
            },
            "defaults.gguf",
        )
        .unwrap();
        assert_eq!(sbs_config_for_gguf(&defaults, SbsType::SFP, None).unwrap().model, Model::Gemma2_2B);
        // Settings gemma.cpp would silently run differently are refused, naming the key.
        for (key, value) in [
            ("attn_logit_softcapping", MetaValue::F32(40.0)),
            ("final_logit_softcapping", MetaValue::F32(0.0)),
            ("attention.sliding_window", MetaValue::U32(512)),
            ("attention.sliding_window_pattern", MetaValue::U32(3)),
            ("rope.freq_base", MetaValue::F32(1e6)),
        ] {
            let e = sbs_config_for_gguf(&gemma2_2b_metadata("gemma2", &[(key, value)]), SbsType::SFP, None);
            let e = e.expect_err(key).to_string();
            assert!(e.contains(key) && e.contains("gemma2-2b"), "{e}");
        }
        // The same dimensions under the Gemma 3 architecture are no known model (Gemma 3 1B has 26 layers but
        // other widths), and Gemma 1 has no gemma.cpp model left.
        let e = sbs_config_for_gguf(&gemma2_2b_metadata("gemma3", &[]), SbsType::SFP, None).unwrap_err();
        assert!(matches!(e, ConvertError::UnknownModel(_)), "{e}");
        let e = sbs_config_for_gguf(&gemma2_2b_metadata("gemma", &[]), SbsType::SFP, None).unwrap_err();
        assert!(e.to_string().contains("Gemma 1"), "{e}");
    }
}
