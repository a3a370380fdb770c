//! A Hugging Face sentence-transformers folder of EmbeddingGemma (`config.json` of a `Gemma3TextModel` with
//! bidirectional attention, `model.safetensors`, `tokenizer.model`, `modules.json` naming the Pooling and
//! Dense modules) to a GGUF file of llama.cpp's `gemma-embedding` architecture, with the tensor names, the
//! `1 + w` norms and the metadata llama.cpp's converter writes (`--sentence-transformers-dense-modules`), so
//! llama.cpp runs the result too.

use std::path::{Path, PathBuf};

use gemma_io::sbs::ModelProto;
use gemma_io::{GgmlType, GgufWriter, MetaValue, SafetensorsDtype, SafetensorsFile, SafetensorsTensor};
use serde_json::Value;

use super::sbs_to_gguf::GgufOutputType;
use super::tokenizer_proto::gguf_vocab_metadata;
use super::{ConvertError, ConvertProgress};
use crate::config::Pooling;

/// Whether `dir` looks like a sentence-transformers / Hugging Face model folder (a `config.json` beside a
/// `model.safetensors`).
pub fn is_model_folder(dir: &Path) -> bool {
    dir.is_dir() && dir.join("config.json").is_file() && dir.join("model.safetensors").is_file()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io { path: path.to_path_buf(), source }
}

fn read_json(path: &Path) -> Result<Value, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text)
        .map_err(|e| ConvertError::BadMetadata { key: path.display().to_string(), what: format!("invalid JSON: {e}") })
}

/// The fields of `config.json` the conversion needs.
struct HfConfig {
    layers: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    context: usize,
    rms_eps: f32,
    rope_global: f32,
    rope_local: f32,
    sliding_window: usize,
    vocab: usize,
}

impl HfConfig {
    fn read(dir: &Path) -> Result<HfConfig, ConvertError> {
        let path = dir.join("config.json");
        let c = read_json(&path)?;
        let bad = |key: &str, what: String| ConvertError::BadMetadata { key: format!("config.json: {key}"), what };
        let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "gemma3_text" {
            return Err(ConvertError::Unsupported(format!(
                "{}: model_type '{model_type}' is not supported (EmbeddingGemma folders, model_type gemma3_text, are)",
                path.display()
            )));
        }
        if c.get("use_bidirectional_attention").and_then(Value::as_bool) != Some(true) {
            return Err(ConvertError::Unsupported(format!(
                "{}: only embedding models (use_bidirectional_attention: true) convert from a folder; for \
                 generative Gemma 3 checkpoints use llama.cpp's converter",
                path.display()
            )));
        }
        let uint = |key: &str| -> Result<usize, ConvertError> {
            c.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(key, "missing, or not a positive integer".into()))
        };
        let float = |key: &str, default: f64| -> Result<f32, ConvertError> {
            match c.get(key) {
                None | Some(Value::Null) => Ok(default as f32),
                Some(v) => v.as_f64().map(|v| v as f32).ok_or_else(|| bad(key, format!("not a number: {v}"))),
            }
        };
        for key in ["attn_logit_softcapping", "final_logit_softcapping", "rope_scaling"] {
            if c.get(key).is_some_and(|v| !v.is_null()) {
                return Err(bad(key, "is set; this converter handles models without it".into()));
            }
        }
        let layers = uint("num_hidden_layers")?;
        let sliding: Vec<bool> = match c.get("layer_types").and_then(Value::as_array) {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(bad("layer_types", format!("unknown layer type {t}"))),
                })
                .collect::<Result<_, _>>()?,
            None => {
                let pattern = c.get("_sliding_window_pattern").and_then(Value::as_u64).unwrap_or(6) as usize;
                (0..layers).map(|l| pattern > 0 && l % pattern < pattern - 1).collect()
            }
        };
        if sliding.len() != layers {
            return Err(bad("layer_types", format!("{} entries for {layers} layers", sliding.len())));
        }
        // llama.cpp (and this engine) place sliding layers by the pattern of 6: five, then one global.
        if sliding.iter().enumerate().any(|(l, &s)| s != (l % 6 < 5)) {
            return Err(bad("layer_types", "not five sliding-window layers then one global, repeated".into()));
        }
        let heads = uint("num_attention_heads")?;
        let head_dim = uint("head_dim")?;
        let query_scalar = float("query_pre_attn_scalar", head_dim as f64)?;
        if query_scalar != head_dim as f32 {
            return Err(bad("query_pre_attn_scalar", format!("{query_scalar} differs from head_dim {head_dim}")));
        }
        if c.get("hidden_activation").and_then(Value::as_str).is_some_and(|a| a != "gelu_pytorch_tanh") {
            return Err(bad("hidden_activation", "only gelu_pytorch_tanh is supported".into()));
        }
        Ok(HfConfig {
            layers,
            hidden: uint("hidden_size")?,
            intermediate: uint("intermediate_size")?,
            heads,
            kv_heads: uint("num_key_value_heads")?,
            head_dim,
            context: uint("max_position_embeddings")?,
            rms_eps: float("rms_norm_eps", 1e-6)?,
            rope_global: float("rope_theta", 1e6)?,
            rope_local: float("rope_local_base_freq", 1e4)?,
            // The folder's own value: transformers' config object halves it for bidirectional models, and
            // llama.cpp's converter writes the file's number too.
            sliding_window: uint("sliding_window")?,
            vocab: uint("vocab_size")?,
        })
    }
}

/// One Dense module of `modules.json`: its folder and shape.
struct Dense {
    dir: PathBuf,
    in_features: usize,
    out_features: usize,
}

/// Pooling and Dense modules from `modules.json` (a folder without one is a bare model: mean pooling, no
/// projections, as llama.cpp assumes for the architecture).
fn read_modules(dir: &Path) -> Result<(Pooling, Vec<Dense>), ConvertError> {
    let path = dir.join("modules.json");
    if !path.exists() {
        return Ok((Pooling::Mean, Vec::new()));
    }
    let bad = |what: String| ConvertError::BadMetadata { key: path.display().to_string(), what };
    let modules = read_json(&path)?;
    let modules = modules.as_array().ok_or_else(|| bad("not a list of modules".into()))?;
    let mut pooling = Pooling::Mean;
    let mut dense = Vec::new();
    for m in modules {
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = dir.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
        let short = kind.rsplit('.').next().unwrap_or(kind);
        match short {
            "Transformer" | "Normalize" => {}
            "Pooling" => {
                let c = read_json(&sub.join("config.json"))?;
                let on = |k: &str| c.get(k).and_then(Value::as_bool) == Some(true);
                pooling = if on("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else if on("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if on("pooling_mode_lasttoken") {
                    Pooling::Last
                } else {
                    return Err(bad(format!("{}: a pooling mode other than mean, CLS or last token", sub.display())));
                };
            }
            "Dense" => {
                let c = read_json(&sub.join("config.json"))?;
                let size = |k: &str| c.get(k).and_then(Value::as_u64).map(|v| v as usize).filter(|&v| v > 0);
                let (Some(in_features), Some(out_features)) = (size("in_features"), size("out_features")) else {
                    return Err(bad(format!("{}: no in_features / out_features", sub.display())));
                };
                if c.get("bias").and_then(Value::as_bool) == Some(true) {
                    return Err(bad(format!("{}: Dense layers with a bias are not supported", sub.display())));
                }
                let activation = c.get("activation_function").and_then(Value::as_str).unwrap_or("");
                if !activation.ends_with("Identity") {
                    return Err(bad(format!("{}: activation {activation} is not supported", sub.display())));
                }
                dense.push(Dense { dir: sub, in_features, out_features });
            }
            other => return Err(bad(format!("module type {other} is not supported"))),
        }
    }
    if dense.len() > 2 {
        return Err(bad(format!("{} Dense modules; llama.cpp's format holds two", dense.len())));
    }
    Ok((pooling, dense))
}

/// Builds the GGUF file of the EmbeddingGemma folder `dir` (in memory, ready to write or to load).
pub fn sentence_transformers_gguf(
    dir: &Path,
    out_type: GgufOutputType,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<GgufWriter, ConvertError> {
    let c = HfConfig::read(dir)?;
    let (pooling, dense) = read_modules(dir)?;
    let tok_path = dir.join("tokenizer.model");
    let proto = ModelProto::decode_bytes(&std::fs::read(&tok_path).map_err(io(&tok_path))?)
        .map_err(|e| ConvertError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    let tokenizer_config = match dir.join("tokenizer_config.json") {
        p if p.exists() => Some(read_json(&p)?),
        _ => None,
    };
    let flag = |k: &str, default: bool| {
        tokenizer_config.as_ref().and_then(|t| t.get(k)).and_then(Value::as_bool).unwrap_or(default)
    };
    let mut vocab = gguf_vocab_metadata(&proto)?;
    for (key, value) in vocab.iter_mut() {
        match key.as_str() {
            "tokenizer.ggml.add_bos_token" => *value = MetaValue::Bool(flag("add_bos_token", true)),
            "tokenizer.ggml.add_eos_token" => *value = MetaValue::Bool(flag("add_eos_token", false)),
            _ => {}
        }
    }
    let n_pieces = proto.pieces.len();

    let st_path = dir.join("model.safetensors");
    let st = SafetensorsFile::open(&st_path)?;
    let arch = "gemma-embedding";
    let s = |v: &str| MetaValue::String(v.into());
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut meta: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(dir.file_name().and_then(|n| n.to_str()).unwrap_or("embeddinggemma"))),
        ("general.file_type".into(), MetaValue::U32(out_type.file_type())),
        ("general.quantization_version".into(), MetaValue::U32(2)),
    ];
    let k = |key: &str| format!("{arch}.{key}");
    meta.extend([
        (k("context_length"), u(c.context)),
        (k("embedding_length"), u(c.hidden)),
        (k("block_count"), u(c.layers)),
        (k("feed_forward_length"), u(c.intermediate)),
        (k("attention.head_count"), u(c.heads)),
        (k("attention.layer_norm_rms_epsilon"), MetaValue::F32(c.rms_eps)),
        (k("attention.key_length"), u(c.head_dim)),
        (k("attention.value_length"), u(c.head_dim)),
        (k("rope.freq_base"), MetaValue::F32(c.rope_global)),
        (k("rope.freq_base_swa"), MetaValue::F32(c.rope_local)),
        (k("attention.sliding_window"), u(c.sliding_window)),
        (k("attention.head_count_kv"), u(c.kv_heads)),
    ]);
    for (i, d) in dense.iter().enumerate() {
        let n = i + 2;
        meta.push((k(&format!("dense_{n}_feat_in")), u(d.in_features)));
        meta.push((k(&format!("dense_{n}_feat_out")), u(d.out_features)));
    }
    meta.push((k("pooling_type"), MetaValue::U32(pooling.gguf_value())));
    meta.extend(vocab);
    let mut writer = GgufWriter::new();
    for (key, value) in meta {
        writer.add_metadata(key, value)?;
    }

    let (d, hd, ff) = (c.hidden, c.head_dim, c.intermediate);
    // (safetensors name, GGUF name, shape as [rows, cols] or [len], norm)
    let mut plan: Vec<(String, String, Vec<usize>, bool)> = vec![
        ("embed_tokens.weight".into(), "token_embd.weight".into(), vec![c.vocab, d], false),
        ("norm.weight".into(), "output_norm.weight".into(), vec![d], true),
    ];
    for l in 0..c.layers {
        let hf = |s: &str| format!("layers.{l}.{s}.weight");
        let gg = |s: &str| format!("blk.{l}.{s}.weight");
        plan.extend([
            (hf("input_layernorm"), gg("attn_norm"), vec![d], true),
            (hf("self_attn.q_proj"), gg("attn_q"), vec![c.heads * hd, d], false),
            (hf("self_attn.k_proj"), gg("attn_k"), vec![c.kv_heads * hd, d], false),
            (hf("self_attn.v_proj"), gg("attn_v"), vec![c.kv_heads * hd, d], false),
            (hf("self_attn.o_proj"), gg("attn_output"), vec![d, c.heads * hd], false),
            (hf("self_attn.q_norm"), gg("attn_q_norm"), vec![hd], true),
            (hf("self_attn.k_norm"), gg("attn_k_norm"), vec![hd], true),
            (hf("post_attention_layernorm"), gg("post_attention_norm"), vec![d], true),
            (hf("pre_feedforward_layernorm"), gg("ffn_norm"), vec![d], true),
            (hf("mlp.gate_proj"), gg("ffn_gate"), vec![ff, d], false),
            (hf("mlp.up_proj"), gg("ffn_up"), vec![ff, d], false),
            (hf("mlp.down_proj"), gg("ffn_down"), vec![d, ff], false),
            (hf("post_feedforward_layernorm"), gg("post_ffw_norm"), vec![d], true),
        ]);
    }
    let total = plan.len() + dense.len();
    for (i, (hf_name, gguf_name, shape, norm)) in plan.iter().enumerate() {
        // Some checkpoints prefix every name with `model.`.
        let name = if st.tensor(hf_name).is_some() { hf_name.clone() } else { format!("model.{hf_name}") };
        let (rows, cols) = if shape.len() == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
        let raw_f32 = out_type == GgufOutputType::F32 && !*norm && n_pieces >= c.vocab;
        match st.tensor(&name).filter(|t| raw_f32 && t.dtype == SafetensorsDtype::F32) {
            Some(t) => {
                // Little-endian f32 rows are GGML's F32 layout: copied once, not decoded and re-encoded.
                check_shape(t, hf_name, shape)?;
                add_bytes(&mut writer, gguf_name, rows, cols, false, GgmlType::F32, st.tensor_bytes(t).to_vec())?;
                st.release(t);
            }
            None => {
                let mut values = tensor_values(&st, &name, hf_name, shape)?;
                if gguf_name == "token_embd.weight" && n_pieces < c.vocab {
                    // llama.cpp drops the embedding rows beyond the tokenizer's pieces.
                    values.truncate(n_pieces * d);
                }
                if *norm {
                    // Gemma's RMSNorm multiplies by 1 + w; llama.cpp's files hold 1 + w.
                    values.iter_mut().for_each(|v| *v += 1.0);
                }
                let rows = values.len() / cols.max(1);
                add_tensor(&mut writer, gguf_name, &values, rows, cols, if *norm { None } else { Some(out_type) })?;
            }
        }
        progress(ConvertProgress { done: i + 1, total, tensor: gguf_name });
    }
    let mut width = d;
    for (i, m) in dense.iter().enumerate() {
        let name = format!("dense_{}.weight", i + 2);
        if m.in_features != width {
            return Err(ConvertError::BadTensor {
                tensor: name,
                what: format!("takes {} features, the previous stage gives {width}", m.in_features),
            });
        }
        let path = m.dir.join("model.safetensors");
        let file = SafetensorsFile::open(&path)?;
        let values = tensor_values(&file, "linear.weight", "linear.weight", &[m.out_features, m.in_features])?;
        add_tensor(&mut writer, &name, &values, m.out_features, m.in_features, Some(out_type))?;
        width = m.out_features;
        progress(ConvertProgress { done: plan.len() + i + 1, total, tensor: &name });
    }
    Ok(writer)
}

/// The folder `dir` as the F32 GGUF file it converts to, held in memory (how a folder is loaded and shown).
pub fn sentence_transformers_file(dir: &Path) -> Result<gemma_io::GgufFile, ConvertError> {
    let writer = sentence_transformers_gguf(dir, GgufOutputType::F32, &mut super::no_progress)?;
    Ok(gemma_io::GgufFile::from_bytes(writer.into_bytes(), dir)?)
}

/// The f32 values of safetensors tensor `name`, checked to have `shape`.
fn tensor_values(st: &SafetensorsFile, name: &str, shown: &str, shape: &[usize]) -> Result<Vec<f32>, ConvertError> {
    let t = st.tensor(name).ok_or_else(|| ConvertError::MissingTensor(format!("{shown} ({})", st.path().display())))?;
    check_shape(t, shown, shape)?;
    let values = st.f32_values(name)?;
    st.release(t);
    Ok(values)
}

fn check_shape(t: &SafetensorsTensor, shown: &str, shape: &[usize]) -> Result<(), ConvertError> {
    if t.shape != shape {
        return Err(ConvertError::BadTensor {
            tensor: shown.to_string(),
            what: format!("shape {:?}, expected {shape:?}", t.shape),
        });
    }
    Ok(())
}

/// Adds a `rows x cols` tensor (a vector when `rows` is 1), F32 for norms (`out` = `None`) as llama.cpp.
fn add_tensor(
    writer: &mut GgufWriter,
    name: &str,
    values: &[f32],
    rows: usize,
    cols: usize,
    out: Option<GgufOutputType>,
) -> Result<(), ConvertError> {
    let ty = out.map_or(GgmlType::F32, |o| o.ggml_type());
    let data = super::sbs_to_gguf::encode_matrix(name, values, rows, cols, ty)?;
    add_bytes(writer, name, rows, cols, out.is_none(), ty, data)
}

/// Adds encoded data of a `rows x cols` tensor; a norm (`vector`) has the one dimension llama.cpp gives it.
fn add_bytes(
    writer: &mut GgufWriter,
    name: &str,
    rows: usize,
    cols: usize,
    vector: bool,
    ty: GgmlType,
    data: Vec<u8>,
) -> Result<(), ConvertError> {
    let dims = if vector && rows == 1 { vec![cols as u64] } else { vec![cols as u64, rows as u64] };
    writer.add_tensor(name.to_string(), &dims, ty, data)?;
    Ok(())
}
