//! Model hyper-parameters, read from GGUF metadata (with the defaults llama.cpp also supplies).

use gemma_io::{GgufFile, MetaValue};

use crate::error::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Gemma 1 (GGUF architecture `gemma`): every layer global, no post norms, no soft-capping.
    Gemma,
    /// Gemma 2 (GGUF `gemma2`): alternating sliding-window and global layers, post-attention and post-FFN
    /// norms, attention and final logit soft-capping.
    Gemma2,
    Gemma3,
    /// EmbeddingGemma: Gemma 3 layers with bidirectional attention, read out by pooling (GGUF architecture
    /// `gemma-embedding`, as llama.cpp names it).
    GemmaEmbedding,
    /// The Llama family (Llama 1-3, SmolLM, TinyLlama, ...): GGUF architecture `llama`.
    Llama,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Gemma => "gemma",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
            Architecture::GemmaEmbedding => "gemma-embedding",
            Architecture::Llama => "llama",
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    pub rms_eps: f32,
    /// Rotary base and frequency scale (1 / linear scaling factor) of global (full-attention) layers.
    pub rope_base: f32,
    pub rope_freq_scale: f32,
    /// The file has a `rope_freqs` tensor: per-frequency divisors of the rotation angles (Llama 3 style
    /// long-context scaling, computed by the converter).
    pub rope_freq_factors: bool,
    /// Rotary base of sliding-window layers; `None` when the model has none.
    pub rope_base_local: Option<f32>,
    /// Keys a sliding-window layer sees (the query's own position included); `None`: no sliding layers.
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window?
    pub layer_is_local: Vec<bool>,
    /// Factor the queries are multiplied by before the dot products.
    pub query_scale: f32,
    /// Factor the token embeddings are multiplied by (sqrt(d_model) for Gemma, 1 for Llama).
    pub embedding_scale: f32,
    /// `tanh` soft-capping of the final logits, when the model uses it.
    pub final_logit_softcap: Option<f32>,
    /// `tanh` soft-capping of the attention scores (after the query scaling, before the mask and softmax),
    /// when the model uses it (Gemma 2).
    pub attn_logit_softcap: Option<f32>,
    /// Whether a token sees only earlier positions (decoders) or the whole input (embedding models; their
    /// sliding window is then centred on the token: it sees `sliding_window / 2` positions either side).
    pub causal: bool,
    /// How an embedding model turns its final hidden states into one vector; `None` for generative models.
    pub pooling: Option<Pooling>,
}

/// llama.cpp's pooling types (`{arch}.pooling_type`), as sentence-transformers' Pooling module reads out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token of the input (BOS and EOS included).
    Mean,
    /// The first token's state.
    Cls,
    /// The last token's state.
    Last,
}

impl Pooling {
    /// From llama.cpp's numbering (`LLAMA_POOLING_TYPE_*`: 1 mean, 2 CLS, 3 last).
    fn from_gguf(v: usize) -> Option<Pooling> {
        Some(match v {
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            3 => Pooling::Last,
            _ => return None,
        })
    }

    pub fn gguf_value(self) -> u32 {
        match self {
            Pooling::Mean => 1,
            Pooling::Cls => 2,
            Pooling::Last => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

struct Meta<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    fn get(&self, k: &str) -> Option<&MetaValue> {
        self.file.get(&self.key(k))
    }
    fn usize(&self, k: &str) -> Result<usize, ModelError> {
        self.opt_usize(k)?.ok_or_else(|| ModelError::MissingMetadata(self.key(k)))
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>, ModelError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().and_then(|v| usize::try_from(v).ok()).map(Some).ok_or_else(|| {
                ModelError::BadMetadata { key: self.key(k), why: format!("expected an unsigned integer, found {v}") }
            }),
        }
    }
    fn opt_f32(&self, k: &str) -> Result<Option<f32>, ModelError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|v| Some(v as f32)).ok_or_else(|| ModelError::BadMetadata {
                key: self.key(k),
                why: format!("expected a number, found {v}"),
            }),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<&str>, ModelError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| ModelError::BadMetadata {
                key: self.key(k),
                why: format!("expected a string, found {v}"),
            }),
        }
    }
    fn unsupported(&self, k: &str, why: String) -> ModelError {
        ModelError::BadMetadata { key: self.key(k), why }
    }
}

/// The rotary frequency scale (1 / factor) from `rope.scaling.*`, as llama.cpp reads it. Only plain linear
/// interpolation changes the angles uniformly; YaRN and LongRoPE need machinery this engine does not have.
fn rope_freq_scale(m: &Meta) -> Result<f32, ModelError> {
    let kind = m.opt_str("rope.scaling.type")?.unwrap_or("linear");
    let factor = match m.opt_f32("rope.scaling.factor")? {
        Some(f) => Some(f),
        None => m.opt_f32("rope.scale_linear")?, // the older key
    };
    match kind {
        "none" => Ok(1.0),
        "linear" => match factor {
            // llama.cpp reads a factor of 0 as "not set".
            None | Some(0.0) => Ok(1.0),
            Some(f) if f > 0.0 && f.is_finite() => Ok(1.0 / f),
            Some(f) => Err(m.unsupported("rope.scaling.factor", format!("scaling factor {f} is not positive"))),
        },
        "yarn" | "longrope" => {
            Err(m.unsupported("rope.scaling.type", format!("rope scaling '{kind}' is not supported (only linear)")))
        }
        other => Err(m.unsupported("rope.scaling.type", format!("unknown rope scaling '{other}'"))),
    }
}

/// `v` rounded to the nearest bf16 (ties to even), for finite `v`.
fn round_to_bf16(v: f32) -> f32 {
    let bits = v.to_bits();
    f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

/// Which layers use the sliding window, as llama.cpp's `load_swa_pattern` reads
/// `attention.sliding_window_pattern`: a list of one flag per layer, or a period `n` (layer `l` is local unless
/// `l % n == n - 1`; 0: every layer local), `default_period` when the key is absent.
fn sliding_layers(m: &Meta, n_layers: usize, default_period: usize) -> Result<Vec<bool>, ModelError> {
    const KEY: &str = "attention.sliding_window_pattern";
    if let Some(list) = m.get(KEY).and_then(|v| v.as_array()) {
        let flags: Option<Vec<bool>> = list.iter().map(|v| v.as_bool()).collect();
        return match flags {
            Some(flags) if flags.len() == n_layers => Ok(flags),
            _ => Err(m.unsupported(KEY, format!("expected {n_layers} booleans, found {}", list.len()))),
        };
    }
    let period = m.opt_usize(KEY)?.unwrap_or(default_period);
    Ok((0..n_layers).map(|l| period == 0 || l % period < period - 1).collect())
}

/// Most layers, most heads and widest head a GGUF file may declare (gemma.cpp caps `qkv_dim` at 1024 too).
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch_name = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::MissingMetadata("general.architecture".into()))?;
        let arch = match arch_name {
            "gemma" => Architecture::Gemma,
            "gemma2" => Architecture::Gemma2,
            "gemma3" => Architecture::Gemma3,
            "gemma-embedding" => Architecture::GemmaEmbedding,
            "llama" => Architecture::Llama,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let m = Meta { file, arch: arch_name };
        let d_model = m.usize("embedding_length")?;
        let n_layers = m.usize("block_count")?;
        let n_heads = m.usize("attention.head_count")?;
        let n_kv_heads = m.opt_usize("attention.head_count_kv")?.unwrap_or(n_heads);
        let head_dim = match m.opt_usize("attention.key_length")? {
            Some(h) => h,
            None if n_heads > 0 => d_model / n_heads,
            None => 0,
        };
        if let Some(v) = m.opt_usize("attention.value_length")? {
            if v != head_dim {
                return Err(m.unsupported(
                    "attention.value_length",
                    format!("value length {v} differs from key length {head_dim}; not supported"),
                ));
            }
        }
        if n_layers == 0
            || d_model == 0
            || n_heads == 0
            || n_kv_heads == 0
            || head_dim == 0
            || head_dim % 2 != 0
            || n_heads % n_kv_heads != 0
        {
            return Err(ModelError::BadMetadata {
                key: m.key("attention.head_count"),
                why: format!("inconsistent shape: {n_layers} layers, d_model {d_model}, {n_heads} heads, {n_kv_heads} KV heads, head dim {head_dim}"),
            });
        }
        // Sizes from the file bound allocations made before any tensor is read (per-layer tables, RoPE
        // frequencies, head-sized products); no released model comes near these limits.
        if n_layers > MAX_LAYERS || head_dim > MAX_HEAD_DIM || n_heads > MAX_HEADS {
            return Err(ModelError::BadMetadata {
                key: m.key("block_count"),
                why: format!(
                    "{n_layers} layers, {n_heads} heads of {head_dim} (at most {MAX_LAYERS} layers, {MAX_HEADS} \
                     heads of {MAX_HEAD_DIM})"
                ),
            });
        }
        // Partial rotary embeddings (rotating only part of each head) are not implemented.
        if let Some(n_rot) = m.opt_usize("rope.dimension_count")? {
            if n_rot != head_dim {
                return Err(m.unsupported(
                    "rope.dimension_count",
                    format!("rotating {n_rot} of {head_dim} head dimensions is not supported"),
                ));
            }
        }
        if let Some(experts) = m.opt_usize("expert_count")?.filter(|&e| e > 0) {
            return Err(m.unsupported("expert_count", format!("mixture of {experts} experts is not supported")));
        }
        let vocab_size = match m.opt_usize("vocab_size")? {
            Some(v) => v,
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| ModelError::MissingMetadata("tokenizer.ggml.tokens".into()))?,
        };
        let context_length = m.opt_usize("context_length")?.unwrap_or(8192);
        if context_length == 0 {
            return Err(ModelError::BadMetadata { key: m.key("context_length"), why: "zero".into() });
        }
        let rope_freq_scale = rope_freq_scale(&m)?;
        let common = ModelConfig {
            arch,
            name: file.get("general.name").and_then(|v| v.as_str()).unwrap_or(arch_name).to_string(),
            n_layers,
            d_model,
            ffn_dim: m.usize("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_eps: m.opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            rope_base: m.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
            rope_freq_scale,
            rope_freq_factors: file.tensor("rope_freqs.weight").is_some(),
            rope_base_local: None,
            sliding_window: None,
            layer_is_local: vec![false; n_layers],
            query_scale: 1.0 / (head_dim as f32).sqrt(),
            embedding_scale: 1.0,
            final_logit_softcap: None,
            attn_logit_softcap: None,
            causal: true,
            pooling: None,
        };
        match arch {
            Architecture::Gemma => Ok(ModelConfig { embedding_scale: (d_model as f32).sqrt(), ..common }),
            Architecture::Gemma2 => Self::gemma2(&m, common),
            Architecture::Gemma3 => Self::gemma3(&m, common),
            Architecture::GemmaEmbedding => Self::gemma_embedding(&m, Self::gemma3(&m, common)?),
            Architecture::Llama => Ok(common),
        }
    }

    /// Gemma 3's additions: sliding-window layers, embedding scaling, logit soft-capping.
    fn gemma3(m: &Meta, c: ModelConfig) -> Result<ModelConfig, ModelError> {
        let sliding_window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
        // Five sliding-window layers, then one global (llama.cpp's default pattern of 6).
        let layer_is_local = match sliding_window {
            Some(_) => sliding_layers(m, c.n_layers, 6)?,
            None => vec![false; c.n_layers],
        };
        Ok(ModelConfig {
            rope_base_local: sliding_window
                .map(|_| m.opt_f32("rope.freq_base_swa"))
                .transpose()?
                .map(|b| b.unwrap_or(10_000.0)),
            sliding_window,
            layer_is_local,
            // Gemma 3 27B scales by (d_model / n_heads)^-1/2; the other sizes by head_dim^-1/2.
            query_scale: if c.n_layers == 62 { 1.0 / ((c.d_model / c.n_heads) as f32).sqrt() } else { c.query_scale },
            embedding_scale: (c.d_model as f32).sqrt(),
            final_logit_softcap: m.opt_f32("final_logit_softcapping")?.filter(|&cap| cap > 0.0),
            ..c
        })
    }

    /// Gemma 2, read as llama.cpp reads it: a sliding window (default 4096) on every other layer starting with
    /// the first (layers 0, 2, 4, ... local; no pattern key), one RoPE base for all layers, soft-caps of the
    /// attention scores (default 50) and of the final logits (default 30), and the query scale by model size:
    /// the 27B (46 layers) scales by (d_model / n_heads)^-1/2, the others by head_dim^-1/2.
    fn gemma2(m: &Meta, c: ModelConfig) -> Result<ModelConfig, ModelError> {
        let window = m.opt_usize("attention.sliding_window")?.unwrap_or(4096);
        if window == 0 {
            return Err(m.unsupported("attention.sliding_window", "zero".into()));
        }
        let cap = |key: &str, default: f32| -> Result<f32, ModelError> {
            let cap = m.opt_f32(key)?.unwrap_or(default);
            // llama.cpp divides by the cap unconditionally, so a cap that is not positive is no model's.
            if cap > 0.0 && cap.is_finite() {
                Ok(cap)
            } else {
                Err(m.unsupported(key, format!("soft-cap {cap} is not a positive number")))
            }
        };
        Ok(ModelConfig {
            rope_base_local: Some(m.opt_f32("rope.freq_base_swa")?.unwrap_or(c.rope_base)),
            sliding_window: Some(window),
            layer_is_local: sliding_layers(m, c.n_layers, 2)?,
            query_scale: if c.n_layers == 46 { 1.0 / ((c.d_model / c.n_heads) as f32).sqrt() } else { c.query_scale },
            embedding_scale: (c.d_model as f32).sqrt(),
            final_logit_softcap: Some(cap("final_logit_softcapping", 30.0)?),
            attn_logit_softcap: Some(cap("attn_logit_softcapping", 50.0)?),
            ..c
        })
    }

    /// EmbeddingGemma: Gemma 3's layers, attention over the whole input, mean pooling unless the file says
    /// otherwise.
    fn gemma_embedding(m: &Meta, c: ModelConfig) -> Result<ModelConfig, ModelError> {
        let pooling = match m.opt_usize("pooling_type")? {
            None => Pooling::Mean,
            Some(v) => Pooling::from_gguf(v).ok_or_else(|| {
                // 0 is llama.cpp's "none" (a vector per token), which nothing here returns.
                m.unsupported("pooling_type", format!("pooling type {v} is not supported (1 mean, 2 CLS, 3 last)"))
            })?,
        };
        Ok(ModelConfig { causal: false, pooling: Some(pooling), ..c })
    }

    /// The configuration of a gemma.cpp SBS checkpoint, from its `config` blob: Gemma 3 layers (QK norm, post
    /// norms), Gemma 2 layers (post norms, attention and final soft-caps) or Gemma 1 layers (neither), as
    /// gemma.cpp's layer fields say. Things gemma.cpp hard-codes rather than stores: RMS eps 1e-6, RoPE base
    /// 10,000 except on the global layers of a config with `use_global_timescale`, which take 1,000,000, and
    /// the embedding scale sqrt(d_model) rounded to bf16. A Gemma 3 config written before gemma.cpp had that
    /// field gets 1,000,000 on its global layers: every Gemma 3 was trained with it (gemma.cpp then used it
    /// only for 1B and up; its table still leaves the 270M at 10,000, `docs/sbs.md`).
    pub fn from_sbs(c: &gemma_io::sbs::ModelConfig) -> Result<ModelConfig, ModelError> {
        use gemma_io::sbs::config::{ActivationType, LayerAttentionType, PostNormType, PostQKType, QueryScaleType};
        use gemma_io::sbs::PromptWrapping;
        let bad = |key: &str, why: String| ModelError::BadMetadata { key: format!("config.{key}"), why };
        let first = c.layer_configs.first().ok_or_else(|| bad("layer_configs", "the model has no layers".into()))?;
        let n_layers = c.layer_configs.len();
        if c.num_layers as usize != n_layers || c.attention_window_sizes.len() != n_layers {
            return Err(bad(
                "num_layers",
                format!(
                    "{} layers, {} layer configs, {} window sizes",
                    c.num_layers,
                    n_layers,
                    c.attention_window_sizes.len()
                ),
            ));
        }
        if c.wrapping == PromptWrapping::PaliGemma {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "{} (PaliGemma reads images; only text models run here)",
                c.model.prefix()
            )));
        }
        // Which Gemma generation a layer belongs to, from the fields that tell them apart.
        let generation = |l: &gemma_io::sbs::config::LayerConfig| {
            let gemma_layer = l.attention_type == LayerAttentionType::Gemma
                && l.post_qk == PostQKType::Rope
                && l.activation == ActivationType::Gelu
                && !l.ff_biases;
            match (gemma_layer, l.use_qk_norm, l.post_norm) {
                (true, true, PostNormType::Scale) => Some(Architecture::Gemma3),
                (true, false, PostNormType::Scale) => Some(Architecture::Gemma2),
                (true, false, PostNormType::None) => Some(Architecture::Gemma),
                _ => None,
            }
        };
        let arch = generation(first);
        for (i, l) in c.layer_configs.iter().enumerate() {
            if arch.is_none() || generation(l) != arch {
                return Err(ModelError::UnsupportedArchitecture(format!(
                    "{} (SBS layer {i} is not a Gemma 1, 2 or 3 layer like layer 0: {l:?})",
                    c.model.prefix()
                )));
            }
            if (l.model_dim, l.ff_hidden_dim, l.heads, l.kv_heads, l.qkv_dim)
                != (first.model_dim, first.ff_hidden_dim, first.heads, first.kv_heads, first.qkv_dim)
            {
                return Err(bad("layer_configs", format!("layer {i} differs in shape from layer 0")));
            }
        }
        let arch = arch.unwrap_or(Architecture::Gemma3);
        if arch == Architecture::Gemma3 && c.att_cap != 0.0 {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "{} (attention soft-capping at {} on Gemma 3 layers)",
                c.model.prefix(),
                c.att_cap
            )));
        }
        if !(c.att_cap >= 0.0 && c.final_cap >= 0.0) {
            return Err(bad("att_cap", format!("soft-caps {} / {} (0 means none)", c.att_cap, c.final_cap)));
        }
        let (d_model, n_heads, n_kv_heads, head_dim) =
            (c.model_dim as usize, first.heads as usize, first.kv_heads as usize, first.qkv_dim as usize);
        if d_model == 0
            || d_model != first.model_dim as usize
            || n_heads == 0
            || n_kv_heads == 0
            || n_heads % n_kv_heads != 0
            || head_dim == 0
            || head_dim % 2 != 0
            || first.ff_hidden_dim == 0
            || c.vocab_size == 0
            || c.max_seq_len == 0
        {
            return Err(bad(
                "layer_configs",
                format!(
                    "inconsistent shape: d_model {d_model} (layers: {}), {n_heads} heads, {n_kv_heads} KV heads, \
                     head dim {head_dim}, ffn {}, vocab {}, max_seq_len {}",
                    first.model_dim, first.ff_hidden_dim, c.vocab_size, c.max_seq_len
                ),
            ));
        }
        let layer_is_local: Vec<bool> = c.attention_window_sizes.iter().map(|&w| w != c.max_seq_len).collect();
        let mut windows = c.attention_window_sizes.iter().filter(|&&w| w != c.max_seq_len);
        let sliding_window = windows.next().map(|&w| w as usize);
        if let Some(w) = sliding_window {
            if w == 0 || windows.any(|&other| other as usize != w) {
                return Err(bad("attention_window_sizes", format!("{:?}", c.attention_window_sizes)));
            }
        }
        let query_scale = match c.query_scale {
            QueryScaleType::SqrtKeySize => 1.0 / (head_dim as f32).sqrt(),
            QueryScaleType::SqrtModelDimDivNumHeads => 1.0 / ((d_model / n_heads) as f32).sqrt(),
        };
        // gemma.cpp rounds sqrt(d_model) to bf16, as Gemma's embedder casts before multiplying.
        let embedding_scale = round_to_bf16((d_model as f32).sqrt());
        let global_timescale = c.use_global_timescale.unwrap_or(arch == Architecture::Gemma3);
        Ok(ModelConfig {
            arch,
            name: if c.display_name.is_empty() { c.model.prefix().to_string() } else { c.display_name.clone() },
            n_layers,
            d_model,
            ffn_dim: first.ff_hidden_dim as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: c.vocab_size as usize,
            context_length: c.max_seq_len as usize,
            rms_eps: 1e-6,
            rope_base: if global_timescale { 1_000_000.0 } else { 10_000.0 },
            rope_freq_scale: 1.0,
            rope_freq_factors: false,
            rope_base_local: sliding_window.map(|_| 10_000.0),
            sliding_window,
            layer_is_local,
            query_scale,
            embedding_scale,
            final_logit_softcap: Some(c.final_cap).filter(|&cap| cap > 0.0),
            attn_logit_softcap: Some(c.att_cap).filter(|&cap| cap > 0.0),
            causal: true,
            pooling: None,
        })
    }

    /// A human-readable summary, one `key: value` per line; lines for features the model lacks are left out.
    pub fn summary(&self) -> String {
        let mut s = format!("architecture: {}\nname: {}\n", self.arch.name(), self.name);
        let local = self.layer_is_local.iter().filter(|&&l| l).count();
        match self.sliding_window {
            Some(w) => {
                s += &format!("layers: {} ({local} sliding-window, {} global)\n", self.n_layers, self.n_layers - local);
                s += &format!("sliding_window: {w}\n");
            }
            None => s += &format!("layers: {}\n", self.n_layers),
        }
        s += &format!(
            "d_model: {}\nffn_dim: {}\nheads: {} (kv heads: {}, head_dim: {})\nvocab_size: {}\ncontext_length: {}\n\
             rms_eps: {:e}\nrope_base: {} (freq_scale: {}",
            self.d_model,
            self.ffn_dim,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.vocab_size,
            self.context_length,
            self.rms_eps,
            self.rope_base,
            self.rope_freq_scale,
        );
        if let Some(b) = self.rope_base_local {
            s += &format!(", local layers: {b}");
        }
        if self.rope_freq_factors {
            s += ", per-frequency factors";
        }
        s += &format!(")\nquery_scale: {}\nembedding_scale: {}", self.query_scale, self.embedding_scale);
        if let Some(cap) = self.attn_logit_softcap {
            s += &format!("\nattn_logit_softcap: {cap}");
        }
        if let Some(cap) = self.final_logit_softcap {
            s += &format!("\nfinal_logit_softcap: {cap}");
        }
        if !self.causal {
            s += "\nattention: bidirectional";
        }
        if let Some(p) = self.pooling {
            s += &format!("\npooling: {}", p.name());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use gemma_io::GgufWriter;

    use super::*;

    /// A metadata-only GGUF of a small Llama, with `extra` keys added (`llama.` prefixed unless they hold a dot
    /// already at the front, like `general.architecture`).
    fn llama_file(extra: &[(&str, MetaValue)]) -> GgufFile {
        file_of("llama", extra)
    }

    /// [`llama_file`] for architecture `arch` (keys prefixed with it).
    fn file_of(arch: &str, extra: &[(&str, MetaValue)]) -> GgufFile {
        let mut w = GgufWriter::new();
        let mut keys: Vec<(String, MetaValue)> = vec![
            ("general.architecture".into(), MetaValue::String(arch.into())),
            (format!("{arch}.block_count"), MetaValue::U32(2)),
            (format!("{arch}.embedding_length"), MetaValue::U32(64)),
            (format!("{arch}.feed_forward_length"), MetaValue::U32(128)),
            (format!("{arch}.attention.head_count"), MetaValue::U32(4)),
            (format!("{arch}.vocab_size"), MetaValue::U32(100)),
        ];
        for (k, v) in extra {
            let key = if k.starts_with("general.") { k.to_string() } else { format!("{arch}.{k}") };
            keys.retain(|(existing, _)| *existing != key);
            keys.push((key, v.clone()));
        }
        for (k, v) in keys {
            w.add_metadata(k, v).unwrap();
        }
        GgufFile::from_bytes(w.to_bytes(), "test.gguf").unwrap()
    }

    #[test]
    fn sbs_configs_map_onto_gemma3_with_gemma_cpp_constants() {
        use gemma_io::sbs::config::{Model as SbsModel, QueryScaleType};
        use gemma_io::sbs::ModelConfig as SbsConfig;
        let mut small = SbsConfig::canonical(SbsModel::Gemma3_270M).unwrap();
        // A config from before gemma.cpp's `use_global_timescale`: the base Gemma 3 was trained with.
        small.use_global_timescale = None;
        let c = ModelConfig::from_sbs(&small).unwrap();
        assert_eq!(c.arch, Architecture::Gemma3);
        assert_eq!((c.n_layers, c.d_model, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim), (18, 640, 2048, 4, 1, 256));
        assert_eq!((c.vocab_size, c.context_length, c.sliding_window), (262_144, 32_768, Some(512)));
        assert_eq!(c.layer_is_local.iter().filter(|&&l| !l).count(), 3);
        assert!(!c.layer_is_local[5] && c.layer_is_local[6]);
        assert_eq!((c.rope_base, c.rope_base_local, c.rms_eps), (1_000_000.0, Some(10_000.0), 1e-6));
        assert_eq!((c.query_scale, c.embedding_scale, c.final_logit_softcap), (1.0 / 16.0, 25.25, None));
        // The field, where the config has it, decides: gemma.cpp's own table leaves the 270M at 10,000.
        let table = SbsConfig::canonical(SbsModel::Gemma3_270M).unwrap();
        assert_eq!(table.use_global_timescale, Some(false));
        assert_eq!(ModelConfig::from_sbs(&table).unwrap().rope_base, 10_000.0);
        // The query scale is the file's: gemma.cpp's own 27B config says 1/sqrt(head_dim = 128).
        let mut big = SbsConfig::canonical(SbsModel::Gemma3_27B).unwrap();
        assert_eq!(ModelConfig::from_sbs(&big).unwrap().query_scale, 1.0 / (128f32).sqrt());
        assert_eq!(ModelConfig::from_sbs(&big).unwrap().rope_base, 1_000_000.0);
        big.query_scale = QueryScaleType::SqrtModelDimDivNumHeads;
        assert_eq!(ModelConfig::from_sbs(&big).unwrap().query_scale, 1.0 / (168f32).sqrt());
        big.attention_window_sizes[0] = 7;
        assert!(ModelConfig::from_sbs(&big).unwrap_err().to_string().contains("attention_window_sizes"));
    }

    /// gemma.cpp's Gemma 2 entries: post norms without QK norm, soft-caps 50 / 30, windows of 4096 on every
    /// other layer from layer 0, RoPE base 10,000 everywhere; PaliGemma (images) and mixed layers refused.
    #[test]
    fn sbs_gemma2_configs_map_onto_gemma2() {
        use gemma_io::sbs::config::{Model as SbsModel, PostNormType};
        use gemma_io::sbs::ModelConfig as SbsConfig;
        let c = ModelConfig::from_sbs(&SbsConfig::canonical(SbsModel::Gemma2_2B).unwrap()).unwrap();
        assert_eq!(c.arch, Architecture::Gemma2);
        assert_eq!(
            (c.n_layers, c.d_model, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim),
            (26, 2304, 9216, 8, 4, 256)
        );
        assert_eq!(
            (c.attn_logit_softcap, c.final_logit_softcap, c.sliding_window),
            (Some(50.0), Some(30.0), Some(4096))
        );
        assert_eq!(c.layer_is_local[..3], [true, false, true]);
        assert_eq!(
            (c.rope_base, c.rope_base_local, c.query_scale, c.embedding_scale),
            (10_000.0, Some(10_000.0), 1.0 / 16.0, 48.0)
        );
        // The 27B scales queries by (d_model / heads)^-1/2 = 144^-1/2.
        let c = ModelConfig::from_sbs(&SbsConfig::canonical(SbsModel::Gemma2_27B).unwrap()).unwrap();
        assert_eq!(c.query_scale, 1.0 / 12.0);
        // Without post norms (and caps): Gemma 1 layers.
        let mut g1 = SbsConfig::canonical(SbsModel::Gemma2_2B).unwrap();
        g1.layer_configs.iter_mut().for_each(|l| l.post_norm = PostNormType::None);
        (g1.att_cap, g1.final_cap) = (0.0, 0.0);
        let c = ModelConfig::from_sbs(&g1).unwrap();
        assert_eq!((c.arch, c.attn_logit_softcap, c.final_logit_softcap), (Architecture::Gemma, None, None));
        // One Gemma 3 layer among Gemma 2 ones.
        let mut mixed = SbsConfig::canonical(SbsModel::Gemma2_2B).unwrap();
        mixed.layer_configs[3].use_qk_norm = true;
        let e = ModelConfig::from_sbs(&mixed).unwrap_err();
        assert!(matches!(e, ModelError::UnsupportedArchitecture(_)) && e.to_string().contains("layer 3"), "{e}");
        let e = ModelConfig::from_sbs(&SbsConfig::canonical(SbsModel::PaliGemma2_3B_224).unwrap()).unwrap_err();
        assert!(e.to_string().contains("PaliGemma"), "{e}");
        let mut negative = SbsConfig::canonical(SbsModel::Gemma2_2B).unwrap();
        negative.att_cap = -1.0;
        assert!(ModelConfig::from_sbs(&negative).unwrap_err().to_string().contains("soft-caps"));
    }

    #[test]
    fn llama_defaults_follow_llama_cpp() {
        let c = ModelConfig::from_gguf(&llama_file(&[])).unwrap();
        assert_eq!(c.arch, Architecture::Llama);
        // No head_count_kv: as many KV heads as heads; no key_length: d_model / heads.
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size), (4, 4, 16, 100));
        assert_eq!((c.rope_base, c.rope_freq_scale, c.rope_freq_factors), (10_000.0, 1.0, false));
        assert_eq!((c.query_scale, c.embedding_scale), (0.25, 1.0));
        assert_eq!((c.sliding_window, c.rope_base_local, c.final_logit_softcap), (None, None, None));
        assert_eq!(c.layer_is_local, vec![false, false]);
        assert!(c.summary().contains("layers: 2\n"), "{}", c.summary());
    }

    /// Gemma 2 and Gemma 1 read as llama.cpp's `llama_model_gemma2` / `llama_model_gemma` read them.
    #[test]
    fn gemma2_and_gemma1_follow_llama_cpp() {
        let gemma2 = |extra: &[(&str, MetaValue)]| ModelConfig::from_gguf(&file_of("gemma2", extra));
        let six = [("block_count", MetaValue::U32(6))];
        let c = gemma2(&six).unwrap();
        assert_eq!(c.arch, Architecture::Gemma2);
        // Defaults: window 4096 on layers 0, 2, 4; caps 50 and 30; one RoPE base; head_dim^-1/2.
        assert_eq!(c.layer_is_local, [true, false, true, false, true, false]);
        assert_eq!(
            (c.sliding_window, c.attn_logit_softcap, c.final_logit_softcap),
            (Some(4096), Some(50.0), Some(30.0))
        );
        assert_eq!(
            (c.rope_base, c.rope_base_local, c.query_scale, c.embedding_scale),
            (10_000.0, Some(10_000.0), 0.25, 8.0)
        );
        let c = gemma2(&[
            ("block_count", MetaValue::U32(6)),
            ("attention.sliding_window", MetaValue::U32(512)),
            ("attention.sliding_window_pattern", MetaValue::U32(3)),
            ("attn_logit_softcapping", MetaValue::F32(20.0)),
            ("final_logit_softcapping", MetaValue::F32(10.0)),
            ("rope.freq_base", MetaValue::F32(1e6)),
            ("rope.freq_base_swa", MetaValue::F32(1e4)),
        ])
        .unwrap();
        assert_eq!(c.layer_is_local, [true, true, false, true, true, false]);
        assert_eq!(
            (c.sliding_window, c.attn_logit_softcap, c.final_logit_softcap),
            (Some(512), Some(20.0), Some(10.0))
        );
        assert_eq!((c.rope_base, c.rope_base_local), (1e6, Some(1e4)));
        let flags = MetaValue::Array(
            gemma_io::MetaArray::from_values(gemma_io::gguf::ValueType::Bool, [true, true].map(MetaValue::Bool))
                .unwrap(),
        );
        let listed = gemma2(&[("attention.sliding_window_pattern", flags.clone())]).unwrap();
        assert_eq!(listed.layer_is_local, [true, true]);
        let short = gemma2(&[("block_count", MetaValue::U32(3)), ("attention.sliding_window_pattern", flags)]);
        assert!(short.unwrap_err().to_string().contains("expected 3 booleans"));
        // The 27B (46 layers) scales queries by (d_model / n_heads)^-1/2 = 1/4 here, not head_dim^-1/2 = 1/8.
        let big = [("block_count", MetaValue::U32(46)), ("attention.key_length", MetaValue::U32(64))];
        assert_eq!(gemma2(&big).unwrap().query_scale, 0.25);
        let small = [("block_count", MetaValue::U32(26)), ("attention.key_length", MetaValue::U32(64))];
        assert_eq!(gemma2(&small).unwrap().query_scale, 0.125);
        let zero_cap = gemma2(&[("attn_logit_softcapping", MetaValue::F32(0.0))]).unwrap_err().to_string();
        assert!(
            zero_cap.contains("gemma2.attn_logit_softcapping") && zero_cap.contains("not a positive"),
            "{zero_cap}"
        );

        let c = ModelConfig::from_gguf(&file_of("gemma", &[("attention.sliding_window", MetaValue::U32(8))])).unwrap();
        assert_eq!(c.arch, Architecture::Gemma);
        // Gemma 1 reads no window, no caps: every layer global, as llama.cpp's graph for it.
        assert_eq!((c.sliding_window, c.attn_logit_softcap, c.final_logit_softcap), (None, None, None));
        assert_eq!((c.layer_is_local.clone(), c.query_scale, c.embedding_scale), (vec![false, false], 0.25, 8.0));
    }

    #[test]
    fn linear_rope_scaling_divides_the_frequencies() {
        let linear = |extra: &[(&str, MetaValue)]| ModelConfig::from_gguf(&llama_file(extra)).unwrap().rope_freq_scale;
        assert_eq!(linear(&[("rope.scaling.factor", MetaValue::F32(4.0))]), 0.25);
        assert_eq!(linear(&[("rope.scale_linear", MetaValue::F32(2.0))]), 0.5);
        let typed =
            [("rope.scaling.type", MetaValue::String("linear".into())), ("rope.scaling.factor", MetaValue::F32(8.0))];
        assert_eq!(linear(&typed), 0.125);
        let none =
            [("rope.scaling.type", MetaValue::String("none".into())), ("rope.scaling.factor", MetaValue::F32(8.0))];
        assert_eq!(linear(&none), 1.0);
    }

    #[test]
    fn unsupported_llama_variants_are_clear_errors() {
        let err = |extra: &[(&str, MetaValue)]| ModelConfig::from_gguf(&llama_file(extra)).unwrap_err().to_string();
        let yarn = err(&[("rope.scaling.type", MetaValue::String("yarn".into()))]);
        assert!(yarn.contains("llama.rope.scaling.type") && yarn.contains("'yarn' is not supported"), "{yarn}");
        let unknown = err(&[("rope.scaling.type", MetaValue::String("llama3".into()))]);
        assert!(unknown.contains("unknown rope scaling 'llama3'"), "{unknown}");
        let partial = err(&[("rope.dimension_count", MetaValue::U32(8))]);
        assert!(partial.contains("rotating 8 of 16"), "{partial}");
        let moe = err(&[("expert_count", MetaValue::U32(8))]);
        assert!(moe.contains("mixture of 8 experts"), "{moe}");
        // sizes that would allocate or overflow before any tensor is read
        let layers = err(&[("block_count", MetaValue::U64(1 << 40))]);
        assert!(layers.contains("1099511627776 layers"), "{layers}");
        let wide = err(&[("attention.key_length", MetaValue::U32(1 << 30))]);
        assert!(wide.contains("heads of 1073741824"), "{wide}");
        let no_context = err(&[("context_length", MetaValue::U32(0))]);
        assert!(no_context.contains("llama.context_length") && no_context.contains("zero"), "{no_context}");
        let gqa = err(&[("attention.head_count_kv", MetaValue::U32(3))]);
        assert!(gqa.contains("inconsistent shape"), "{gqa}");
        let values = err(&[("attention.value_length", MetaValue::U32(8))]);
        assert!(values.contains("value length 8"), "{values}");
        let arch = err(&[("general.architecture", MetaValue::String("mamba".into()))]);
        assert!(arch.contains("'mamba' is not supported"), "{arch}");
    }
}
