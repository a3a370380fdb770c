//! Model hyper-parameters, read from GGUF metadata (with the defaults llama.cpp also supplies).

use gemma_io::{GgufFile, MetaValue};

use crate::error::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Gemma3,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Gemma3 => "gemma3",
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
    /// Rotary base and frequency scale of global (full-attention) layers.
    pub rope_base: f32,
    pub rope_freq_scale: f32,
    /// Rotary base of sliding-window layers.
    pub rope_base_local: f32,
    /// Keys a sliding-window layer sees (the query's own position included); `None`: no sliding layers.
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window?
    pub layer_is_local: Vec<bool>,
    /// Factor the queries are multiplied by before the dot products (query_pre_attn_scalar^-1/2).
    pub query_scale: f32,
    /// Factor the token embeddings are multiplied by (sqrt(d_model) for Gemma).
    pub embedding_scale: f32,
    /// `tanh` soft-capping of the final logits, when the model uses it.
    pub final_logit_softcap: Option<f32>,
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
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch_name = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::MissingMetadata("general.architecture".into()))?;
        let arch = match arch_name {
            "gemma3" => Architecture::Gemma3,
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
                return Err(ModelError::BadMetadata {
                    key: m.key("attention.value_length"),
                    why: format!("value length {v} differs from key length {head_dim}; not supported"),
                });
            }
        }
        if n_layers == 0
            || d_model == 0
            || n_heads == 0
            || n_kv_heads == 0
            || head_dim == 0
            || n_heads % n_kv_heads != 0
        {
            return Err(ModelError::BadMetadata {
                key: m.key("attention.head_count"),
                why: format!("inconsistent shape: {n_layers} layers, d_model {d_model}, {n_heads} heads, {n_kv_heads} KV heads, head dim {head_dim}"),
            });
        }
        let vocab_size = file
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| ModelError::MissingMetadata("tokenizer.ggml.tokens".into()))?;
        let rope_freq_scale = match m.opt_f32("rope.scaling.factor")? {
            Some(f) if f > 0.0 => 1.0 / f,
            _ => m.opt_f32("rope.freq_scale")?.unwrap_or(1.0),
        };
        let sliding_window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
        // Gemma 3: five sliding-window layers, then one global (llama.cpp's default pattern of 6).
        let pattern = m.opt_usize("attention.sliding_window_pattern")?.unwrap_or(6);
        let layer_is_local =
            (0..n_layers).map(|l| sliding_window.is_some() && (pattern == 0 || l % pattern < pattern - 1)).collect();
        Ok(ModelConfig {
            arch,
            name: file.get("general.name").and_then(|v| v.as_str()).unwrap_or(arch_name).to_string(),
            n_layers,
            d_model,
            ffn_dim: m.usize("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: m.opt_usize("context_length")?.unwrap_or(8192),
            rms_eps: m.opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            rope_base: m.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
            rope_freq_scale,
            rope_base_local: m.opt_f32("rope.freq_base_swa")?.unwrap_or(10_000.0),
            sliding_window,
            layer_is_local,
            // Gemma 3 27B scales by (d_model / n_heads)^-1/2; the other sizes by head_dim^-1/2.
            query_scale: if n_layers == 62 {
                1.0 / ((d_model / n_heads) as f32).sqrt()
            } else {
                1.0 / (head_dim as f32).sqrt()
            },
            embedding_scale: (d_model as f32).sqrt(),
            final_logit_softcap: m.opt_f32("final_logit_softcapping")?.filter(|&c| c > 0.0),
        })
    }

    /// A human-readable summary, one `key: value` per line.
    pub fn summary(&self) -> String {
        let local = self.layer_is_local.iter().filter(|&&l| l).count();
        format!(
            "architecture: {}\nname: {}\nlayers: {} ({} sliding-window, {} global)\nd_model: {}\nffn_dim: {}\n\
             heads: {} (kv heads: {}, head_dim: {})\nvocab_size: {}\ncontext_length: {}\nrms_eps: {:e}\n\
             rope_base: {} (local layers: {}, freq_scale: {})\nsliding_window: {}\nquery_scale: {}\n\
             embedding_scale: {}\nfinal_logit_softcap: {}",
            self.arch.name(),
            self.name,
            self.n_layers,
            local,
            self.n_layers - local,
            self.d_model,
            self.ffn_dim,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.vocab_size,
            self.context_length,
            self.rms_eps,
            self.rope_base,
            self.rope_base_local,
            self.rope_freq_scale,
            self.sliding_window.map_or("none".to_string(), |w| w.to_string()),
            self.query_scale,
            self.embedding_scale,
            self.final_logit_softcap.map_or("none".to_string(), |c| c.to_string()),
        )
    }
}
