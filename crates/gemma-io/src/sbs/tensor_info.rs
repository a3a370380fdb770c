//! gemma.cpp's tensor table (`gemma/tensor_info.cc`, `gemma/weights.h`): every tensor a model may have, with its
//! shape, how its exporter lays it out, and the order in which gemma.cpp visits tensors.
//!
//! SBS tensors are 2-D. Layouts that matter when converting from other formats:
//! - `qkv_ein_{i}`: `[(heads + 2 * kv_heads) * qkv_dim, model_dim]`: all Q heads' rows, then for each KV head its
//!   K rows followed by its V rows (K and V interleaved per KV head; `kv_einsum` `[2, kv, d, qkv]` transposed to
//!   `[kv, 2, qkv, d]`).
//! - `att_ein_{i}`: `[heads * model_dim, qkv_dim]`, i.e. `[heads, model_dim, qkv_dim]` (the attention output
//!   projection per head, transposed).
//! - `gating_ein_{i}`: `[2 * ff_hidden_dim, model_dim]`: the gate rows, then the up rows.
//! - `linear_w_{i}`: `[model_dim, ff_hidden_dim]`.
//! - norms (`pre_att_ns`, `pre_ff_ns`, `post_att_ns`, `post_ff_ns`, `query_norm`, `key_norm`, `c_final_norm`):
//!   one row holding the raw scale `w`; the kernel multiplies by `1 + w` (GGUF files store `1 + w`).

use std::collections::HashMap;

use super::config::{LayerAttentionType, LayerConfig, ModelConfig, PostNormType, PromptWrapping};
use super::types::SbsType;

/// One tensor's description (gemma.cpp's `TensorInfo`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TensorInfo {
    /// Name without the `_{layer}` suffix.
    pub base_name: String,
    /// Suffixes of the tensor's names in the original (JAX) checkpoint.
    pub source_names: Vec<String>,
    /// Reshape applied before transposing; normally empty.
    pub preshape: Vec<u64>,
    /// Transpose axes applied by the exporter.
    pub axes: Vec<u64>,
    /// Shape after the transpose; the SBS tensor collapses it to 2-D (see [`TensorInfo::extents`]).
    pub shape: Vec<u64>,
    /// If non-empty on the first of several tensors: the result's name, then the names concatenated after it;
    /// `[""]` marks the others.
    pub concat_names: Vec<String>,
    pub concat_axis: u64,
    /// The most compressed type this tensor may be stored as.
    pub min_size: SbsType,
    pub scaled_softplus: bool,
    /// Whether the columns (rather than the rows) take the extra dimensions when collapsing to 2-D.
    pub cols_take_extra_dims: bool,
}

impl TensorInfo {
    /// gemma.cpp's `ExtentsFromInfo`: `(rows, cols)` of the 2-D SBS tensor; `(0, 0)` for absent tensors.
    pub fn extents(&self) -> (u64, u64) {
        let Some((&last, lead)) = self.shape.split_last() else {
            return (0, 0);
        };
        // Saturating: dimensions come from a file's config, and an absurd shape must reach the size checks
        // (`TensorRecord::new`) rather than overflow here.
        let product = |dims: &[u64]| dims.iter().fold(1u64, |a, &b| a.saturating_mul(b));
        let (rows, cols) = if self.cols_take_extra_dims {
            let rows = lead.first().copied().unwrap_or(1);
            (rows, last.saturating_mul(product(lead.get(1..).unwrap_or(&[]))))
        } else {
            (product(lead), last)
        };
        if rows == 0 || cols == 0 {
            (0, 0)
        } else {
            (rows, cols)
        }
    }
}

/// gemma.cpp's `LayerSuffix`.
pub fn layer_suffix(layer: usize) -> String {
    format!("_{layer}")
}

/// gemma.cpp's `StripLayerSuffix`: everything before the last `_`.
pub fn strip_layer_suffix(name: &str) -> &str {
    match name.rfind('_') {
        Some(i) => &name[..i],
        None => name,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

struct Spec<'a> {
    name: &'a str,
    sources: &'a [&'a str],
    axes: &'a [u64],
    shape: Vec<u64>,
    min: SbsType,
}

fn info(s: Spec<'_>) -> TensorInfo {
    TensorInfo {
        base_name: s.name.into(),
        source_names: strings(s.sources),
        axes: s.axes.to_vec(),
        shape: s.shape,
        min_size: s.min,
        ..TensorInfo::default()
    }
}

/// All tensors of a model by name (gemma.cpp's `TensorInfoRegistry`).
#[derive(Clone, Debug)]
pub struct TensorInfoRegistry {
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl TensorInfoRegistry {
    pub fn new(config: &ModelConfig) -> TensorInfoRegistry {
        let mut r = TensorInfoRegistry { tensors: Vec::new(), index: HashMap::new() };
        r.add_model_tensors(config);
        for (i, layer) in config.layer_configs.iter().enumerate() {
            r.add_layer_tensors(config, layer, i);
        }
        for (i, layer) in config.vit_config.layer_configs.iter().enumerate() {
            r.add_image_layer_tensors(config, layer, i);
        }
        r
    }

    /// The tensor named `name` (a per-model name, or a base name with a layer suffix).
    pub fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// `(rows, cols)` of `name`, `(0, 0)` if unknown (gemma.cpp's `ExtentsFromInfo(Find(name))`).
    pub fn extents(&self, name: &str) -> (u64, u64) {
        self.find(name).map_or((0, 0), TensorInfo::extents)
    }

    fn add(&mut self, suffix: &str, mut t: TensorInfo) {
        for n in &mut t.concat_names {
            n.push_str(suffix);
        }
        let name = format!("{}{}", t.base_name, suffix);
        self.index.entry(name).or_insert(self.tensors.len());
        self.tensors.push(t);
    }

    fn add_model_tensors(&mut self, c: &ModelConfig) {
        let d = u64::from(c.model_dim);
        let vd = u64::from(c.vit_config.model_dim);
        let pw = u64::from(c.vit_config.patch_width);
        use SbsType::{BF16, F32};
        let specs = [
            Spec {
                name: "c_embedding",
                sources: &["embedder/input_embedding"],
                axes: &[0, 1],
                shape: vec![c.vocab_size.into(), d],
                min: BF16,
            },
            Spec { name: "c_final_norm", sources: &["final_norm/scale"], axes: &[0], shape: vec![d], min: BF16 },
            Spec {
                name: "enc_norm_bias",
                sources: &["img/Transformer/encoder_norm/bias"],
                axes: &[0],
                shape: vec![vd],
                min: BF16,
            },
            Spec {
                name: "enc_norm_scale",
                sources: &["img/Transformer/encoder_norm/scale"],
                axes: &[0],
                shape: vec![vd],
                min: BF16,
            },
            Spec { name: "img_emb_bias", sources: &["img/embedding/bias"], axes: &[0], shape: vec![vd], min: F32 },
        ];
        for s in specs {
            self.add("", info(s));
        }
        let mut kernel = info(Spec {
            name: "img_emb_kernel",
            sources: &["img/embedding/kernel"],
            axes: &[3, 0, 1, 2],
            shape: vec![vd, pw, pw, 3],
            min: BF16,
        });
        kernel.cols_take_extra_dims = true;
        self.add("", kernel);
        let specs = [
            Spec {
                name: "img_head_bias",
                sources: &["img/head/bias", "embedder/mm_input_projection/b"],
                axes: &[0],
                shape: vec![d],
                min: F32,
            },
            Spec {
                name: "img_head_kernel",
                sources: &["img/head/kernel", "embedder/mm_input_projection/w"],
                axes: &[1, 0],
                shape: vec![d, vd],
                min: BF16,
            },
            Spec {
                name: "img_pos_emb",
                sources: &["img/pos_embedding"],
                axes: &[0, 1],
                shape: vec![c.vit_config.seq_len.into(), vd],
                min: F32,
            },
            // RMS norm of the soft tokens before the position embedding.
            Spec {
                name: "mm_embed_norm",
                sources: &["embedder/mm_soft_embedding_norm/scale"],
                axes: &[0],
                shape: vec![vd],
                min: BF16,
            },
        ];
        for s in specs {
            self.add("", info(s));
        }
    }

    fn add_image_layer_tensors(&mut self, c: &ModelConfig, l: &LayerConfig, layer: usize) {
        let suffix = layer_suffix(layer);
        let vd = u64::from(c.vit_config.model_dim);
        let (heads, kv, qkv, ff) =
            (u64::from(l.heads), u64::from(l.kv_heads), u64::from(l.qkv_dim), u64::from(l.ff_hidden_dim));
        use SbsType::{BF16, F32};
        let mha = |s: &str| format!("MultiHeadDotProductAttention_0/{s}");
        let mut attn_out_w =
            info(Spec { name: "attn_out_w", sources: &[], axes: &[2, 0, 1], shape: vec![vd, heads, qkv], min: BF16 });
        attn_out_w.source_names = vec![mha("out/kernel")];
        attn_out_w.cols_take_extra_dims = true;
        self.add(&suffix, attn_out_w);
        let mut simple = |name: &str,
                          source: String,
                          axes: &[u64],
                          shape: Vec<u64>,
                          min: SbsType,
                          concat: &[&str],
                          concat_axis: u64| {
            let mut t = info(Spec { name, sources: &[], axes, shape, min });
            t.source_names = vec![source];
            t.concat_names = strings(concat);
            t.concat_axis = concat_axis;
            self.add(&suffix, t);
        };
        simple("attn_out_b", mha("out/bias"), &[0], vec![vd], F32, &[], 0);
        simple(
            "q_ein_w",
            mha("query/kernel"),
            &[1, 2, 0],
            vec![heads, qkv, vd],
            BF16,
            &["qkv_ein_w", "k_ein_w", "v_ein_w"],
            1,
        );
        simple("k_ein_w", mha("key/kernel"), &[1, 2, 0], vec![heads, qkv, vd], BF16, &[""], 0);
        simple("v_ein_w", mha("value/kernel"), &[1, 2, 0], vec![heads, qkv, vd], BF16, &[""], 0);
        simple("qkv_ein_w", mha("qkv/kernel"), &[1, 2, 0], vec![heads, 3 * qkv, vd], BF16, &[], 0);
        simple("q_ein_b", mha("query/bias"), &[0, 1], vec![heads, qkv], F32, &["qkv_ein_b", "k_ein_b", "v_ein_b"], 1);
        simple("k_ein_b", mha("key/bias"), &[0, 1], vec![kv, qkv], F32, &[""], 0);
        simple("v_ein_b", mha("value/bias"), &[0, 1], vec![kv, qkv], F32, &[""], 0);
        simple("qkv_ein_b", mha("qkv/bias"), &[0, 1], vec![heads + kv * 2, qkv], F32, &[], 0);
        simple("linear_0_w", "MlpBlock_0/Dense_0/kernel".into(), &[1, 0], vec![ff, vd], BF16, &[], 0);
        simple("linear_0_b", "MlpBlock_0/Dense_0/bias".into(), &[0], vec![ff], F32, &[], 0);
        simple("linear_1_w", "MlpBlock_0/Dense_1/kernel".into(), &[1, 0], vec![vd, ff], BF16, &[], 0);
        simple("linear_1_b", "MlpBlock_0/Dense_1/bias".into(), &[0], vec![vd], F32, &[], 0);
        for (name, norm, what) in [
            ("ln_0_bias", "LayerNorm_0", "bias"),
            ("ln_0_scale", "LayerNorm_0", "scale"),
            ("ln_1_bias", "LayerNorm_1", "bias"),
            ("ln_1_scale", "LayerNorm_1", "scale"),
        ] {
            let mut t = info(Spec { name, sources: &[], axes: &[0], shape: vec![vd], min: BF16 });
            t.source_names = vec![
                format!("img/Transformer/encoderblock/{norm}/{what}"),
                format!("img/Transformer/encoderblock_{layer}/{norm}/{what}"),
            ];
            self.add(&suffix, t);
        }
    }

    fn add_layer_tensors(&mut self, c: &ModelConfig, l: &LayerConfig, layer: usize) {
        let suffix = layer_suffix(layer);
        let d = u64::from(c.model_dim);
        let (heads, kv, qkv, ff) =
            (u64::from(l.heads), u64::from(l.kv_heads), u64::from(l.qkv_dim), u64::from(l.ff_hidden_dim));
        // Default `min_size` of gemma.cpp's `TensorInfo`: any type down to I8.
        use SbsType::{BF16, F32, I8};
        let gating_axes: [u64; 3] = if l.optimized_gating { [0, 1, 2] } else { [0, 2, 1] };
        let mut add = |name: &str, sources: &[&str], axes: &[u64], shape: Vec<u64>, min: SbsType, concat: &[&str]| {
            let mut t = info(Spec { name, sources, axes, shape, min });
            t.concat_names = strings(concat);
            self.add(&suffix, t);
        };
        add("key_norm", &["attn/_key_norm/scale"], &[0], vec![qkv], BF16, &[]);
        add("query_norm", &["attn/_query_norm/scale"], &[0], vec![qkv], BF16, &[]);
        add("qkv1_w", &["attn/q_einsum/w"], &[0, 2, 1], vec![heads * qkv, d], I8, &["qkv_ein", "qkv2_w"]);
        add("qkv2_w", &["attn/kv_einsum/w"], &[1, 0, 3, 2], vec![2 * kv * qkv, d], I8, &[""]);
        add("q_ein", &["attention_block/proj_q/kernel"], &[1, 0], vec![d, d], I8, &["qkv_ein", "k_ein", "v_ein"]);
        add("k_ein", &["attention_block/proj_k/kernel"], &[1, 0], vec![qkv, d], I8, &[""]);
        add("v_ein", &["attention_block/proj_v/kernel"], &[1, 0], vec![qkv, d], I8, &[""]);
        add("qkv_ein", &["attn/qkv_einsum/w"], &[1, 0, 3, 2], vec![(heads + 2 * kv) * qkv, d], I8, &[]);
        add("attn_ob", &["attention_block/proj_final/bias"], &[0], vec![d], F32, &[]);
        add(
            "gating_ein",
            &["mlp/gating_einsum/w", "mlp/gating_einsum", "mlp_block/ffw_up/w"],
            &gating_axes,
            vec![2, ff, d],
            I8,
            &[],
        );
        add("gating1_w", &["none"], &gating_axes, vec![ff, d], I8, &[]);
        add("gating2_w", &["none"], &gating_axes, vec![ff, d], I8, &[]);
        add("linear_w", &["mlp/linear/w", "mlp/linear", "mlp_block/ffw_down/kernel"], &[1, 0], vec![d, ff], I8, &[]);
        add("pre_att_ns", &["pre_attention_norm/scale", "temporal_pre_norm/scale"], &[0], vec![d], BF16, &[]);
        add("pre_ff_ns", &["pre_ffw_norm/scale", "channel_pre_norm/scale"], &[0], vec![d], BF16, &[]);
        add("post_att_ns", &["post_attention_norm/scale"], &[0], vec![d], BF16, &[]);
        add("post_ff_ns", &["post_ffw_norm/scale"], &[0], vec![d], BF16, &[]);
        add("ffw_gat_b", &["mlp_block/ffw_up/b"], &[0], vec![2 * ff], F32, &[]);
        add("ffw_out_b", &["mlp_block/ffw_down/bias"], &[0], vec![d], F32, &[]);
        let mut att_ein = info(Spec {
            name: "att_ein",
            sources: &["attn/attn_vec_einsum/w", "attention_block/proj_final/kernel"],
            axes: &[0, 2, 1],
            shape: vec![heads, d, qkv],
            min: I8,
        });
        att_ein.preshape = vec![heads, qkv, d];
        self.add(&suffix, att_ein);
        let mut att_w = info(Spec { name: "att_w", sources: &[], axes: &[], shape: vec![d, heads, qkv], min: I8 });
        att_w.cols_take_extra_dims = true;
        self.add(&suffix, att_w);
    }
}

/// One tensor slot in gemma.cpp's `ForEachTensor` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSlot {
    pub name: String,
    pub rows: u64,
    pub cols: u64,
    /// The file must hold it; otherwise it is one of several alternatives (e.g. `qkv_ein` or `qkv1_w`+`qkv2_w`).
    pub must_read: bool,
    /// Written by gemma.cpp's exporter for this model (the alternative it chooses).
    pub exported: bool,
}

/// Every tensor slot gemma.cpp visits for `config`, in its `ForEachTensor` order (which is also the order in which
/// pre-2025 files' scales are handed out, and the order `Gemma::Save` writes blobs in).
pub fn tensor_slots(config: &ModelConfig) -> Vec<TensorSlot> {
    let reg = TensorInfoRegistry::new(config);
    let mut out = Vec::new();
    let mut push = |name: String, must_read: bool, exported: bool| {
        let (rows, cols) = reg.extents(&name);
        out.push(TensorSlot { name, rows, cols, must_read, exported });
    };
    push("c_embedding".into(), true, true);
    push("c_final_norm".into(), true, true);
    if !config.vit_config.layer_configs.is_empty() {
        for n in [
            "enc_norm_bias",
            "enc_norm_scale",
            "img_emb_bias",
            "img_emb_kernel",
            "img_pos_emb",
            "img_head_bias",
            "img_head_kernel",
        ] {
            push(n.into(), true, true);
        }
        if config.wrapping == PromptWrapping::GemmaVlm {
            push("mm_embed_norm".into(), true, true);
        }
    }
    let layers = config.layer_configs.iter().map(|l| (l, false));
    let vit_layers = config.vit_config.layer_configs.iter().map(|l| (l, true));
    let mut lm_index = 0usize;
    let mut vit_index = 0usize;
    for (l, in_vit) in layers.chain(vit_layers) {
        let idx = if in_vit {
            vit_index += 1;
            vit_index - 1
        } else {
            lm_index += 1;
            lm_index - 1
        };
        let s = layer_suffix(idx);
        let mut p = |base: &str, must: bool, exported: bool| push(format!("{base}{s}"), must, exported);
        if l.attention_type == LayerAttentionType::Vit {
            for n in [
                "attn_out_w",
                "attn_out_b",
                "qkv_ein_w",
                "qkv_ein_b",
                "linear_0_w",
                "linear_0_b",
                "linear_1_w",
                "linear_1_b",
                "ln_0_bias",
                "ln_0_scale",
                "ln_1_bias",
                "ln_1_scale",
            ] {
                p(n, true, true);
            }
            continue;
        }
        p("att_w", false, false);
        p("att_ein", false, true);
        p("qkv_ein", false, true);
        p("qkv1_w", false, false);
        p("qkv2_w", false, false);
        p("gating_ein", false, true);
        p("gating1_w", false, false);
        p("gating2_w", false, false);
        p("linear_w", false, true);
        p("pre_att_ns", true, true);
        p("pre_ff_ns", true, true);
        if l.post_norm == PostNormType::Scale {
            p("post_att_ns", true, true);
            p("post_ff_ns", true, true);
        }
        if l.use_qk_norm {
            p("key_norm", true, true);
            p("query_norm", true, true);
        }
        if l.ff_biases {
            p("ffw_gat_b", true, true);
            p("ffw_out_b", true, true);
        }
    }
    out
}

/// The tensors gemma.cpp's exporter writes for `config`, in order: `(name, rows, cols)`.
pub fn exported_tensors(config: &ModelConfig) -> Vec<(String, u64, u64)> {
    tensor_slots(config).into_iter().filter(|s| s.exported).map(|s| (s.name, s.rows, s.cols)).collect()
}
