//! gemma.cpp's model configuration (`gemma/configs.{h,cc}`): the `config` blob of an SBS file, and the table of
//! models gemma.cpp knows.
//!
//! Field order is the wire order and must never change; gemma.cpp only appends. Fields gemma.cpp no longer uses
//! (Griffin's, the tensor-scale count) are still read and written so the words line up.

use super::fields::{write_fields, FieldEnum, FieldVisitor, Fields, FieldsError};
use super::types::SbsType;

macro_rules! field_enum {
    ($(#[$m:meta])* $name:ident, $label:literal { $($(#[$vm:meta])* $variant:ident = $id:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
        #[repr(u32)]
        pub enum $name { $($(#[$vm])* $variant = $id),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }

        impl FieldEnum for $name {
            const ENUM_NAME: &'static str = $label;
            fn to_u32(self) -> u32 {
                self as u32
            }
            fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $($id => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        crate::sbs_field_impl!(enum $name);
    };
}

field_enum!(
    /// How prompts are wrapped: instruction-tuned models need turn markers.
    PromptWrapping, "PromptWrapping" {
        GemmaIt = 0,
        #[default]
        GemmaPt = 1,
        /// Gemma 3 1B and up.
        GemmaVlm = 2,
        PaliGemma = 3,
    }
);

field_enum!(LayerAttentionType, "LayerAttentionType" { #[default] Gemma = 0, Vit = 1 });

field_enum!(
    /// Normalization after attention and after the FFW.
    PostNormType, "PostNormType" { #[default] None = 0, Scale = 1 }
);

field_enum!(
    /// What follows the Q/K projections.
    PostQKType, "PostQKType" { #[default] Rope = 0, HalfRope = 1 }
);

field_enum!(ActivationType, "ActivationType" { #[default] Gelu = 0 });

field_enum!(
    /// How attention queries are scaled.
    QueryScaleType, "QueryScaleType" { #[default] SqrtKeySize = 0, SqrtModelDimDivNumHeads = 1 }
);

field_enum!(
    /// gemma.cpp's model ids. Ids 1, 2, 5, 6, 8 and 9 belonged to models gemma.cpp dropped (Gemma 1, Griffin,
    /// the first PaliGemma) and are invalid. Names follow gemma.cpp's (`PALIGEMMA2_3B_224`).
    #[allow(non_camel_case_types)]
    Model, "Model" {
        #[default]
        Unknown = 0,
        Gemma2_9B = 3,
        Gemma2_27B = 4,
        Gemma2_2B = 7,
        PaliGemma2_3B_224 = 10,
        PaliGemma2_3B_448 = 11,
        PaliGemma2_10B_224 = 12,
        PaliGemma2_10B_448 = 13,
        Gemma3_4B = 14,
        Gemma3_1B = 15,
        Gemma3_12B = 16,
        Gemma3_27B = 17,
        Gemma3_270M = 18,
    }
);

impl PromptWrapping {
    /// gemma.cpp's `WrappingSuffix`, used in specifiers.
    pub fn suffix(self) -> &'static str {
        match self {
            PromptWrapping::GemmaIt => "-it",
            PromptWrapping::GemmaPt => "-pt",
            PromptWrapping::GemmaVlm => "-vlm",
            PromptWrapping::PaliGemma => "-pg",
        }
    }
}

impl Model {
    /// Every known model (gemma.cpp's `ForEachModel`: not `Unknown`).
    pub fn known() -> impl Iterator<Item = Model> {
        Model::ALL.iter().copied().filter(|&m| m != Model::Unknown)
    }

    /// gemma.cpp's `ModelPrefix`: the canonical name without the wrapping suffix (stable; used in specifiers).
    pub fn prefix(self) -> &'static str {
        match self {
            Model::Unknown => "unknown",
            Model::Gemma2_2B => "gemma2-2b",
            Model::Gemma2_9B => "9b",
            Model::Gemma2_27B => "27b",
            Model::PaliGemma2_3B_224 => "paligemma2-3b-224",
            Model::PaliGemma2_3B_448 => "paligemma2-3b-448",
            Model::PaliGemma2_10B_224 => "paligemma2-10b-224",
            Model::PaliGemma2_10B_448 => "paligemma2-10b-448",
            Model::Gemma3_4B => "gemma3-4b",
            Model::Gemma3_1B => "gemma3-1b",
            Model::Gemma3_12B => "gemma3-12b",
            Model::Gemma3_27B => "gemma3-27b",
            Model::Gemma3_270M => "gemma3-270m",
        }
    }

    /// Multimodal Gemma 3 (prompt wrapping `GemmaVlm`).
    pub fn is_vlm(self) -> bool {
        matches!(self, Model::Gemma3_4B | Model::Gemma3_1B | Model::Gemma3_12B | Model::Gemma3_27B)
    }

    pub fn is_paligemma(self) -> bool {
        matches!(
            self,
            Model::PaliGemma2_3B_224 | Model::PaliGemma2_3B_448 | Model::PaliGemma2_10B_224 | Model::PaliGemma2_10B_448
        )
    }

    /// gemma.cpp's `ChooseWrapping`: fixed for PaliGemma and VLMs, else instruction-tuned unless `pretrained`.
    pub fn choose_wrapping(self, pretrained: Option<bool>) -> PromptWrapping {
        if self.is_paligemma() {
            PromptWrapping::PaliGemma
        } else if self.is_vlm() {
            PromptWrapping::GemmaVlm
        } else if pretrained == Some(true) {
            PromptWrapping::GemmaPt
        } else {
            PromptWrapping::GemmaIt
        }
    }

    /// gemma.cpp's `DeduceModel` for files without a config: from the layer count and whether ViT tensors
    /// (`vit`) and 448-pixel position embeddings (`res448`) are present.
    pub fn deduce(layers: usize, vit: bool, res448: bool) -> Model {
        match layers {
            18 => Model::Gemma3_270M,
            26 if vit => Model::Gemma3_1B,
            26 => Model::Gemma2_2B,
            27 if res448 => Model::PaliGemma2_3B_448,
            27 => Model::PaliGemma2_3B_224,
            34 => Model::Gemma3_4B,
            42 if vit && res448 => Model::PaliGemma2_10B_448,
            42 if vit => Model::PaliGemma2_10B_224,
            42 => Model::Gemma2_9B,
            46 => Model::Gemma2_27B,
            48 => Model::Gemma3_12B,
            62 => Model::Gemma3_27B,
            _ => Model::Unknown,
        }
    }
}

/// Per-layer configuration (gemma.cpp's `LayerConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    pub model_dim: u32,
    pub ff_hidden_dim: u32,
    pub heads: u32,
    pub kv_heads: u32,
    /// Length of each Q, K and V vector (the head dimension).
    pub qkv_dim: u32,
    pub ff_biases: bool,
    /// Whether the gating einsum's halves are stored gate-then-up as `[2, ff_hidden_dim, model_dim]` (Gemma 3).
    pub optimized_gating: bool,
    pub post_norm: PostNormType,
    pub attention_type: LayerAttentionType,
    pub activation: ActivationType,
    pub post_qk: PostQKType,
    pub use_qk_norm: bool,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            model_dim: 0,
            ff_hidden_dim: 0,
            heads: 0,
            kv_heads: 0,
            qkv_dim: 0,
            ff_biases: false,
            optimized_gating: true,
            post_norm: PostNormType::None,
            attention_type: LayerAttentionType::Gemma,
            activation: ActivationType::Gelu,
            post_qk: PostQKType::Rope,
            use_qk_norm: false,
        }
    }
}

impl Fields for LayerConfig {
    fn name(&self) -> &'static str {
        "LayerConfig"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        // Formerly Griffin's; always zero/false.
        let mut unused_griffin_dim = 0u32;
        let mut unused_conv1d_width = 0u32;
        let mut unused_softmax_attn_output_biases = false;
        v.visit(&mut self.model_dim);
        v.visit(&mut unused_griffin_dim);
        v.visit(&mut self.ff_hidden_dim);
        v.visit(&mut self.heads);
        v.visit(&mut self.kv_heads);
        v.visit(&mut self.qkv_dim);
        v.visit(&mut unused_conv1d_width);
        v.visit(&mut self.ff_biases);
        v.visit(&mut unused_softmax_attn_output_biases);
        v.visit(&mut self.optimized_gating);
        v.visit(&mut self.post_norm);
        v.visit(&mut self.attention_type);
        v.visit(&mut self.activation);
        v.visit(&mut self.post_qk);
        v.visit(&mut self.use_qk_norm);
        // gemma.cpp's (empty) `InternalLayerConfig` is visited inline, not as a nested struct.
    }
}
crate::sbs_field_impl!(struct LayerConfig);

/// Image encoder dimensions (gemma.cpp's `VitConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub model_dim: u32,
    pub seq_len: u32,
    pub num_scales: u32,
    pub patch_width: u32,
    pub image_size: u32,
    pub layer_configs: Vec<LayerConfig>,
    pub pool_dim: u32,
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig {
            model_dim: 0,
            seq_len: 0,
            num_scales: 0,
            patch_width: 14,
            image_size: 224,
            layer_configs: Vec::new(),
            pool_dim: 1,
        }
    }
}

impl Fields for VitConfig {
    fn name(&self) -> &'static str {
        "VitConfig"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit(&mut self.model_dim);
        v.visit(&mut self.seq_len);
        v.visit(&mut self.num_scales);
        v.visit(&mut self.patch_width);
        v.visit(&mut self.image_size);
        v.visit(&mut self.layer_configs);
        v.visit(&mut self.pool_dim);
    }
}
crate::sbs_field_impl!(struct VitConfig);

/// gemma.cpp's `ModelConfig`: the `config` blob.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Major version of the architecture family.
    pub model_family_version: u32,
    /// For display only.
    pub display_name: String,
    pub model: Model,
    pub wrapping: PromptWrapping,
    /// The smallest weight type in the file.
    pub weight: SbsType,
    pub num_layers: u32,
    pub model_dim: u32,
    pub vocab_size: u32,
    pub max_seq_len: u32,
    /// No longer set nor used by gemma.cpp.
    pub unused_num_tensor_scales: u32,
    /// Attention logit soft cap (0: none).
    pub att_cap: f32,
    /// Final logit soft cap (0: none).
    pub final_cap: f32,
    pub absolute_pe: bool,
    pub query_scale: QueryScaleType,
    pub layer_configs: Vec<LayerConfig>,
    /// Per layer: the sliding window, or `max_seq_len` for global layers.
    pub attention_window_sizes: Vec<u32>,
    pub norm_num_groups: u32,
    pub vit_config: VitConfig,
    /// Used only for the ViT copy of the config.
    pub pool_dim: u32,
    pub eos_id: i32,
    pub secondary_eos_id: i32,
    /// Tensor base names that take a scale from the `Fscales` blob of pre-2025 files.
    pub scale_base_names: Vec<String>,
    /// Whether the global (non-sliding-window) layers rotate with RoPE base 1,000,000 rather than 10,000
    /// (gemma.cpp's field since October 2025; `None`: the config predates it).
    pub use_global_timescale: Option<bool>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model_family_version: 1,
            display_name: String::new(),
            model: Model::Unknown,
            wrapping: PromptWrapping::GemmaPt,
            weight: SbsType::Unknown,
            num_layers: 0,
            model_dim: 0,
            vocab_size: 0,
            max_seq_len: 0,
            unused_num_tensor_scales: 0,
            att_cap: 0.0,
            final_cap: 0.0,
            absolute_pe: false,
            query_scale: QueryScaleType::SqrtKeySize,
            layer_configs: Vec::new(),
            attention_window_sizes: Vec::new(),
            norm_num_groups: 1,
            vit_config: VitConfig::default(),
            pool_dim: 1,
            eos_id: 1,
            secondary_eos_id: 1,
            scale_base_names: Vec::new(),
            use_global_timescale: None,
        }
    }
}

impl Fields for ModelConfig {
    fn name(&self) -> &'static str {
        "ModelConfig"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit(&mut self.model_family_version);
        v.visit(&mut self.display_name);
        v.visit(&mut self.model);
        v.visit(&mut self.wrapping);
        v.visit(&mut self.weight);
        v.visit(&mut self.num_layers);
        v.visit(&mut self.model_dim);
        v.visit(&mut self.vocab_size);
        v.visit(&mut self.max_seq_len);
        v.visit(&mut self.unused_num_tensor_scales);
        v.visit(&mut self.att_cap);
        v.visit(&mut self.final_cap);
        v.visit(&mut self.absolute_pe);
        // Formerly Griffin's.
        let mut unused_use_local_attention = false;
        v.visit(&mut unused_use_local_attention);
        v.visit(&mut self.query_scale);
        v.visit(&mut self.layer_configs);
        v.visit(&mut self.attention_window_sizes);
        v.visit(&mut self.norm_num_groups);
        v.visit(&mut self.vit_config);
        v.visit(&mut self.pool_dim);
        v.visit(&mut self.eos_id);
        v.visit(&mut self.secondary_eos_id);
        v.visit(&mut self.scale_base_names);
        // gemma.cpp's (empty) `InternalModelConfig` is visited inline.
        v.visit(&mut self.use_global_timescale);
    }
}

const GEMMA2_VOCAB: u32 = 256_000;
const GEMMA3_VOCAB: u32 = 262_144;

fn base_config() -> ModelConfig {
    ModelConfig {
        scale_base_names: [
            "att_ein",
            "qkv_ein",
            "gr_lin_x_w",
            "gr_lin_y_w",
            "gr_lin_out_w",
            "gr_gate_w",
            "gating_ein",
            "linear_w",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ModelConfig::default()
    }
}

/// `num` window sizes repeating `pattern`.
fn repeated_windows(num: u32, pattern: &[u32]) -> Vec<u32> {
    (0..num as usize).map(|i| pattern[i % pattern.len()]).collect()
}

struct Dims {
    model_dim: u32,
    layers: u32,
    ff: u32,
    heads: u32,
    kv_heads: u32,
    qkv_dim: u32,
}

fn gemma2(model: Model, name: &str, d: Dims, query_scale: QueryScaleType) -> ModelConfig {
    let layer = LayerConfig {
        model_dim: d.model_dim,
        ff_hidden_dim: d.ff,
        heads: d.heads,
        kv_heads: d.kv_heads,
        qkv_dim: d.qkv_dim,
        optimized_gating: false,
        post_norm: PostNormType::Scale,
        ..LayerConfig::default()
    };
    let max_seq_len = 8192;
    ModelConfig {
        display_name: name.into(),
        model,
        model_dim: d.model_dim,
        vocab_size: GEMMA2_VOCAB,
        max_seq_len,
        num_layers: d.layers,
        layer_configs: vec![layer; d.layers as usize],
        query_scale,
        attention_window_sizes: repeated_windows(d.layers, &[4096, max_seq_len]),
        att_cap: 50.0,
        final_cap: 30.0,
        eos_id: 1,
        secondary_eos_id: 107,
        use_global_timescale: Some(false),
        ..base_config()
    }
}

fn gemma3(model: Model, name: &str, d: Dims, window: u32, wrapping: PromptWrapping) -> ModelConfig {
    let layer = LayerConfig {
        model_dim: d.model_dim,
        ff_hidden_dim: d.ff,
        heads: d.heads,
        kv_heads: d.kv_heads,
        qkv_dim: d.qkv_dim,
        optimized_gating: true,
        post_norm: PostNormType::Scale,
        use_qk_norm: true,
        ..LayerConfig::default()
    };
    let max_seq_len = 32 * 1024;
    ModelConfig {
        display_name: name.into(),
        model,
        wrapping,
        model_dim: d.model_dim,
        vocab_size: GEMMA3_VOCAB,
        max_seq_len,
        num_layers: d.layers,
        layer_configs: vec![layer; d.layers as usize],
        query_scale: QueryScaleType::SqrtKeySize,
        // Five local layers, then one global.
        attention_window_sizes: repeated_windows(d.layers, &[window, window, window, window, window, max_seq_len]),
        att_cap: 0.0,
        final_cap: 0.0,
        eos_id: 1,
        secondary_eos_id: 106,
        // gemma.cpp's table gives the 270M RoPE base 10,000 on its global layers too (the model was trained
        // with 1,000,000; see docs/sbs.md).
        use_global_timescale: Some(model != Model::Gemma3_270M),
        ..base_config()
    }
}

/// gemma.cpp's `AddVitConfig`: the SigLIP image encoder of PaliGemma (and Gemma 3 4B+).
fn add_vit(config: &mut ModelConfig, image_size: u32) {
    config.vit_config.model_dim = 1152;
    config.vocab_size = 256_000 + 1024 + 128;
    config.vit_config.image_size = image_size;
    config.vit_config.patch_width = 14;
    let patches = image_size / 14;
    config.vit_config.seq_len = patches * patches;
    for layer in &mut config.layer_configs {
        layer.optimized_gating = false;
    }
    let vit_layer = LayerConfig {
        model_dim: 1152,
        ff_hidden_dim: 4304,
        heads: 16,
        kv_heads: 16,
        qkv_dim: 72,
        ff_biases: true,
        attention_type: LayerAttentionType::Vit,
        ..LayerConfig::default()
    };
    config.vit_config.layer_configs = vec![vit_layer; 27];
    config.vit_config.num_scales = 4 * 27;
}

fn paligemma2(base: ModelConfig, model: Model, name: &str, image_size: u32) -> ModelConfig {
    let mut c = base;
    c.display_name = name.into();
    c.model = model;
    c.wrapping = PromptWrapping::PaliGemma;
    add_vit(&mut c, image_size);
    c
}

/// Gemma 3 4B/12B/27B: the language model plus a 896-pixel ViT with 4x4 pooling.
fn gemma3_with_vit(lm: ModelConfig) -> ModelConfig {
    let mut c = lm;
    add_vit(&mut c, 896);
    c.vocab_size = GEMMA3_VOCAB;
    c.vit_config.pool_dim = 4;
    // `add_vit` resets optimized gating, which Gemma 3 uses.
    for layer in &mut c.layer_configs {
        layer.optimized_gating = true;
    }
    c
}

fn dims(model_dim: u32, layers: u32, ff: u32, heads: u32, kv_heads: u32, qkv_dim: u32) -> Dims {
    Dims { model_dim, layers, ff, heads, kv_heads, qkv_dim }
}

impl ModelConfig {
    /// gemma.cpp's canonical config of a known model (`ConfigFromModel`); `None` for `Unknown`. The wrapping is
    /// the model's own and `weight` is unset.
    pub fn canonical(model: Model) -> Option<ModelConfig> {
        use PromptWrapping::{GemmaIt, GemmaVlm};
        let g2_2b =
            || gemma2(Model::Gemma2_2B, "Gemma2_2B", dims(2304, 26, 9216, 8, 4, 256), QueryScaleType::SqrtKeySize);
        let g2_9b =
            || gemma2(Model::Gemma2_9B, "Gemma2_9B", dims(3584, 42, 14336, 16, 8, 256), QueryScaleType::SqrtKeySize);
        Some(match model {
            Model::Unknown => return None,
            Model::Gemma2_2B => g2_2b(),
            Model::Gemma2_9B => g2_9b(),
            Model::Gemma2_27B => gemma2(
                Model::Gemma2_27B,
                "Gemma2_27B",
                dims(4608, 46, 36864, 32, 16, 128),
                QueryScaleType::SqrtModelDimDivNumHeads,
            ),
            Model::PaliGemma2_3B_224 => paligemma2(g2_2b(), model, "PaliGemma2_3B_224", 224),
            Model::PaliGemma2_3B_448 => paligemma2(g2_2b(), model, "PaliGemma2_3B_448", 448),
            Model::PaliGemma2_10B_224 => paligemma2(g2_9b(), model, "PaliGemma2_10B_224", 224),
            Model::PaliGemma2_10B_448 => paligemma2(g2_9b(), model, "PaliGemma2_10B_448", 448),
            Model::Gemma3_1B => gemma3(model, "Gemma3_1B", dims(1152, 26, 6912, 4, 1, 256), 512, GemmaVlm),
            Model::Gemma3_4B => {
                gemma3_with_vit(gemma3(model, "Gemma3_4B", dims(2560, 34, 10240, 8, 4, 256), 1024, GemmaVlm))
            }
            Model::Gemma3_12B => {
                gemma3_with_vit(gemma3(model, "Gemma3_12B", dims(3840, 48, 15360, 16, 8, 256), 1024, GemmaVlm))
            }
            Model::Gemma3_27B => {
                gemma3_with_vit(gemma3(model, "Gemma3_27B", dims(5376, 62, 21504, 32, 16, 128), 1024, GemmaVlm))
            }
            Model::Gemma3_270M => gemma3(model, "Gemma3_270M", dims(640, 18, 2048, 4, 1, 256), 512, GemmaIt),
        })
    }

    /// gemma.cpp's `ModelConfig(model, weight, wrapping)`.
    pub fn new(model: Model, weight: SbsType, wrapping: PromptWrapping) -> ModelConfig {
        let mut c = Self::canonical(model).unwrap_or_default();
        c.model = model;
        c.weight = weight;
        c.wrapping = wrapping;
        c
    }

    /// gemma.cpp's `Specifier`, e.g. `gemma3-270m-sfp-it`; `None` if model or weight is unknown.
    pub fn specifier(&self) -> Option<String> {
        if self.model == Model::Unknown || self.weight == SbsType::Unknown {
            return None;
        }
        let mut s = format!("{}-{}", self.model.prefix(), self.weight.name());
        if !matches!(self.wrapping, PromptWrapping::GemmaVlm | PromptWrapping::PaliGemma) {
            s.push_str(self.wrapping.suffix());
        }
        Some(s)
    }

    /// Parses a [`ModelConfig::specifier`] (gemma.cpp's string constructor); `None` unless exactly one model
    /// prefix and one type name match.
    pub fn from_specifier(spec: &str) -> Option<ModelConfig> {
        let mut models = Model::known().filter(|m| spec.starts_with(&format!("{}-", m.prefix())));
        let model = models.next()?;
        if models.next().is_some() {
            return None;
        }
        let mut types = SbsType::ALL[1..].iter().copied().filter(|t| spec.contains(t.name()));
        let weight = types.next()?;
        if types.next().is_some() {
            return None;
        }
        let mut wrappings = PromptWrapping::ALL.iter().copied().filter(|w| spec.contains(w.suffix()));
        let wrapping = match (wrappings.next(), wrappings.next()) {
            (Some(w), None) => w,
            (None, _) => model.choose_wrapping(None),
            (Some(_), Some(_)) => return None,
        };
        Some(ModelConfig::new(model, weight, wrapping))
    }

    /// Whether layer `layer` attends globally (its window is the whole sequence).
    pub fn is_global_layer(&self, layer: usize) -> bool {
        self.attention_window_sizes.get(layer) == Some(&self.max_seq_len)
    }

    /// gemma.cpp's `TestEqual`: equal serializations after ignoring what its config converter does not set
    /// (`display_name`, `model`, `pool_dim`, EOS ids, scale names, per-layer `optimized_gating`).
    pub fn test_equal(&self, other: &ModelConfig) -> bool {
        if self.layer_configs.len() != other.layer_configs.len() {
            return false;
        }
        let a = self.clone();
        let mut b = other.clone();
        b.display_name = a.display_name.clone();
        b.model = a.model;
        b.pool_dim = a.pool_dim;
        b.eos_id = a.eos_id;
        b.secondary_eos_id = a.secondary_eos_id;
        b.scale_base_names = a.scale_base_names.clone();
        for (lb, la) in b.layer_configs.iter_mut().zip(&a.layer_configs) {
            lb.optimized_gating = la.optimized_gating;
        }
        match (write_fields(&a), write_fields(&b)) {
            (Ok(wa), Ok(wb)) => wa == wb,
            _ => false,
        }
    }

    /// gemma.cpp's `OverwriteWithCanonical`: if exactly one known model's canonical config (with this weight and
    /// wrapping) is [`test_equal`](Self::test_equal) to `self`, replaces `self` with it.
    pub fn overwrite_with_canonical(&mut self) -> bool {
        let mut found = None;
        for model in Model::known() {
            let c = ModelConfig::new(model, self.weight, self.wrapping);
            if c.test_equal(self) {
                if found.is_some() {
                    return false;
                }
                found = Some(c);
            }
        }
        match found {
            Some(c) => {
                *self = c;
                true
            }
            None => false,
        }
    }

    /// The serialized `config` blob words.
    pub fn to_words(&self) -> Result<Vec<u32>, FieldsError> {
        write_fields(self)
    }
}
