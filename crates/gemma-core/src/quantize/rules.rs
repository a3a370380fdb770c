//! Which GGML type each tensor gets: llama.cpp's `llama_tensor_get_type` rules (`src/llama-quant.cpp`),
//! restated for the file types made here.
//!
//! The rules depend on the tensor's name (its category), its row width, the model's layer count and
//! grouped-query ratio, and *counters*: the k-th attention-V or FFN-down tensor seen, in llama.cpp's tensor order
//! (see [`llama_tensor_order`]), decides where the "more bits" layers are. So the plan is made over all tensors
//! at once, in that order.

use std::cmp::Ordering;

use gemma_io::GgmlType;

/// llama.cpp's `llama_ftype`: what `llama-quantize` is asked to make. Only the types whose codecs exist here
/// (`Q2_K_S` needs an importance matrix).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    AllF32,
    MostlyF16,
    MostlyBf16,
    MostlyQ4_0,
    MostlyQ4_1,
    MostlyQ5_0,
    MostlyQ5_1,
    MostlyQ8_0,
    MostlyQ2_K,
    MostlyQ2_K_S,
    MostlyQ3_K_S,
    MostlyQ3_K_M,
    MostlyQ3_K_L,
    MostlyQ4_K_S,
    MostlyQ4_K_M,
    MostlyQ5_K_S,
    MostlyQ5_K_M,
    MostlyQ6_K,
    MostlyIQ4_NL,
    MostlyIQ4_XS,
}

/// llama-quantize's type names this tool does not make, and why (for the usage error).
const NOT_MADE_HERE: &[(&str, &str)] = &[
    ("IQ1_S", "an i-quant (importance-matrix type)"),
    ("IQ1_M", "an i-quant (importance-matrix type)"),
    ("IQ2_XXS", "an i-quant (importance-matrix type)"),
    ("IQ2_XS", "an i-quant (importance-matrix type)"),
    ("IQ2_S", "an i-quant (importance-matrix type)"),
    ("IQ2_M", "an i-quant (importance-matrix type)"),
    ("IQ3_XXS", "an i-quant (importance-matrix type)"),
    ("IQ3_XS", "an i-quant"),
    ("IQ3_S", "an i-quant"),
    ("IQ3_M", "an i-quant"),
    ("TQ1_0", "a ternary type"),
    ("TQ2_0", "a ternary type"),
    ("MXFP4_MOE", "a mixture-of-experts type"),
    ("Q1_0", "a codec not implemented here"),
    ("Q2_0", "a codec not implemented here"),
    ("COPY", "a copy, not a quantization"),
];

impl FileType {
    pub const ALL: [FileType; 20] = [
        FileType::AllF32,
        FileType::MostlyF16,
        FileType::MostlyBf16,
        FileType::MostlyQ4_0,
        FileType::MostlyQ4_1,
        FileType::MostlyQ5_0,
        FileType::MostlyQ5_1,
        FileType::MostlyQ8_0,
        FileType::MostlyQ2_K,
        FileType::MostlyQ2_K_S,
        FileType::MostlyQ3_K_S,
        FileType::MostlyQ3_K_M,
        FileType::MostlyQ3_K_L,
        FileType::MostlyQ4_K_S,
        FileType::MostlyQ4_K_M,
        FileType::MostlyQ5_K_S,
        FileType::MostlyQ5_K_M,
        FileType::MostlyQ6_K,
        FileType::MostlyIQ4_NL,
        FileType::MostlyIQ4_XS,
    ];

    /// llama-quantize's name for it.
    pub fn name(self) -> &'static str {
        match self {
            FileType::AllF32 => "F32",
            FileType::MostlyF16 => "F16",
            FileType::MostlyBf16 => "BF16",
            FileType::MostlyQ4_0 => "Q4_0",
            FileType::MostlyQ4_1 => "Q4_1",
            FileType::MostlyQ5_0 => "Q5_0",
            FileType::MostlyQ5_1 => "Q5_1",
            FileType::MostlyQ8_0 => "Q8_0",
            FileType::MostlyQ2_K => "Q2_K",
            FileType::MostlyQ2_K_S => "Q2_K_S",
            FileType::MostlyQ3_K_S => "Q3_K_S",
            FileType::MostlyQ3_K_M => "Q3_K_M",
            FileType::MostlyQ3_K_L => "Q3_K_L",
            FileType::MostlyQ4_K_S => "Q4_K_S",
            FileType::MostlyQ4_K_M => "Q4_K_M",
            FileType::MostlyQ5_K_S => "Q5_K_S",
            FileType::MostlyQ5_K_M => "Q5_K_M",
            FileType::MostlyQ6_K => "Q6_K",
            FileType::MostlyIQ4_NL => "IQ4_NL",
            FileType::MostlyIQ4_XS => "IQ4_XS",
        }
    }

    /// The `general.file_type` value (llama.cpp's `llama_ftype` number).
    pub fn id(self) -> u32 {
        match self {
            FileType::AllF32 => 0,
            FileType::MostlyF16 => 1,
            FileType::MostlyQ4_0 => 2,
            FileType::MostlyQ4_1 => 3,
            FileType::MostlyQ8_0 => 7,
            FileType::MostlyQ5_0 => 8,
            FileType::MostlyQ5_1 => 9,
            FileType::MostlyQ2_K => 10,
            FileType::MostlyQ3_K_S => 11,
            FileType::MostlyQ3_K_M => 12,
            FileType::MostlyQ3_K_L => 13,
            FileType::MostlyQ4_K_S => 14,
            FileType::MostlyQ4_K_M => 15,
            FileType::MostlyQ5_K_S => 16,
            FileType::MostlyQ5_K_M => 17,
            FileType::MostlyQ6_K => 18,
            FileType::MostlyQ2_K_S => 21,
            FileType::MostlyIQ4_NL => 25,
            FileType::MostlyIQ4_XS => 30,
            FileType::MostlyBf16 => 32,
        }
    }

    /// The type every quantizable tensor starts from before the mixture rules (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::AllF32 => GgmlType::F32,
            FileType::MostlyF16 => GgmlType::F16,
            FileType::MostlyBf16 => GgmlType::BF16,
            FileType::MostlyQ4_0 => GgmlType::Q4_0,
            FileType::MostlyQ4_1 => GgmlType::Q4_1,
            FileType::MostlyQ5_0 => GgmlType::Q5_0,
            FileType::MostlyQ5_1 => GgmlType::Q5_1,
            FileType::MostlyQ8_0 => GgmlType::Q8_0,
            FileType::MostlyQ2_K | FileType::MostlyQ2_K_S => GgmlType::Q2K,
            FileType::MostlyQ3_K_S | FileType::MostlyQ3_K_M | FileType::MostlyQ3_K_L => GgmlType::Q3K,
            FileType::MostlyQ4_K_S | FileType::MostlyQ4_K_M => GgmlType::Q4K,
            FileType::MostlyQ5_K_S | FileType::MostlyQ5_K_M => GgmlType::Q5K,
            FileType::MostlyQ6_K => GgmlType::Q6K,
            FileType::MostlyIQ4_NL => GgmlType::IQ4_NL,
            FileType::MostlyIQ4_XS => GgmlType::IQ4_XS,
        }
    }

    /// Parses a type as llama-quantize does: its name in any case (`q4_k_m`), the aliases `Q3_K`, `Q4_K`, `Q5_K`
    /// (the `_M` mixtures), or the `llama_ftype` number. A type llama-quantize knows but this tool does not make
    /// is an error saying why; anything else is an error listing what is supported.
    pub fn parse(text: &str) -> Result<FileType, FileTypeError> {
        let upper = text.trim().to_ascii_uppercase();
        let alias = match upper.as_str() {
            "Q3_K" => Some(FileType::MostlyQ3_K_M),
            "Q4_K" => Some(FileType::MostlyQ4_K_M),
            "Q5_K" => Some(FileType::MostlyQ5_K_M),
            _ => None,
        };
        if let Some(t) = alias.or_else(|| FileType::ALL.into_iter().find(|t| t.name() == upper)) {
            return Ok(t);
        }
        if let Some((name, why)) = NOT_MADE_HERE.iter().find(|(name, _)| *name == upper) {
            return Err(FileTypeError::NotMadeHere { name: (*name).to_string(), why });
        }
        if let Ok(id) = upper.parse::<u32>() {
            if let Some(t) = FileType::ALL.into_iter().find(|t| t.id() == id) {
                return Ok(t);
            }
        }
        Err(FileTypeError::Unknown { name: text.to_string() })
    }

    /// The supported names, for help and error texts.
    pub fn supported_names() -> String {
        let mut names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
        names.extend(["Q3_K (= Q3_K_M)", "Q4_K (= Q4_K_M)", "Q5_K (= Q5_K_M)"]);
        names.join(", ")
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a file type name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileTypeError {
    #[error(
        "{name} is a llama-quantize type this tool does not make ({why}); supported: {}",
        FileType::supported_names()
    )]
    NotMadeHere { name: String, why: &'static str },
    #[error("unknown quantization type '{name}'; supported: {}", FileType::supported_names())]
    Unknown { name: String },
}

/// The GGML types a tensor can be written as here (for `--output-tensor-type` / `--token-embedding-type`).
pub const TENSOR_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// A GGML type by its ggml name in any case (`q6_k`, `Q8_0`, `bf16`), as llama-quantize's `parse_ggml_type`;
/// only the types this tool can write.
pub fn parse_tensor_type(text: &str) -> Option<GgmlType> {
    TENSOR_TYPES.into_iter().find(|t| t.name().eq_ignore_ascii_case(text.trim()))
}

/// llama.cpp's broad tensor categories (`tensor_get_category`), by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorCategory {
    Output,
    TokenEmbd,
    AttentionQkv,
    AttentionKvB,
    AttentionV,
    AttentionK,
    AttentionQ,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl TensorCategory {
    /// The first matching rule wins, in llama.cpp's order (`attn_qkv` before `attn_v`, ...).
    pub fn of(name: &str) -> TensorCategory {
        if name == "output.weight" {
            return TensorCategory::Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return TensorCategory::TokenEmbd;
        }
        let rules = [
            ("attn_qkv.weight", TensorCategory::AttentionQkv),
            ("attn_kv_b.weight", TensorCategory::AttentionKvB),
            ("attn_v.weight", TensorCategory::AttentionV),
            ("attn_k.weight", TensorCategory::AttentionK),
            ("attn_q.weight", TensorCategory::AttentionQ),
            ("attn_output.weight", TensorCategory::AttentionOutput),
            ("ffn_up", TensorCategory::FfnUp),
            ("ffn_gate", TensorCategory::FfnGate),
            ("ffn_down", TensorCategory::FfnDown),
        ];
        rules.into_iter().find(|(part, _)| name.contains(part)).map_or(TensorCategory::Other, |(_, c)| c)
    }

    /// Attention-V-like tensors (V, fused QKV, MLA's KV-B) share one counter and one set of rules: they are the
    /// most sensitive to quantization.
    fn is_attention_v(self) -> bool {
        matches!(self, TensorCategory::AttentionV | TensorCategory::AttentionQkv | TensorCategory::AttentionKvB)
    }
}

/// llama.cpp's order of tensors when quantizing (its `weights_map` comparator): tensors outside any block first
/// (layer -1), then by layer number, then by name bytewise. The output file is written in this order.
pub fn llama_tensor_order(a: &str, b: &str) -> Ordering {
    layer_of(a).cmp(&layer_of(b)).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// The `N` of a name starting `blk.N` (what `sscanf(name, "blk.%d.")` reads), else -1.
fn layer_of(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else { return -1 };
    let rest = rest.trim_start();
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    let end = digits.bytes().position(|c| !c.is_ascii_digit()).unwrap_or(digits.len());
    if end == 0 {
        return -1;
    }
    // A number too long for an int is undefined in sscanf; saturating keeps the order total.
    digits[..end].parse::<i64>().map_or(i64::MAX, |v| sign * v.min(i32::MAX as i64))
}

/// Whether llama-quantize would quantize this tensor at all (`tensor_allows_quantization`): only weights of two
/// or more dimensions, never norms, and none of the small or special tensors it lists.
pub fn allows_quantization(name: &str, n_dims: usize, quantize_output: bool) -> bool {
    if n_dims < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    if !quantize_output && name == "output.weight" {
        return false;
    }
    const KEEP_CONTAINING: &[&str] = &[
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    const KEEP_EXACT: &[&str] = &["position_embd.weight", "token_types.weight"];
    !KEEP_EXACT.contains(&name) && !KEEP_CONTAINING.iter().any(|part| name.contains(part))
}

/// What the rules need to know about the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// Query heads per KV head in layer 0 (0 when the file says there are no KV heads).
    pub n_gqa: u32,
    /// llama.cpp's `LLM_TYPE_70B` (80 Llama layers with grouped-query attention): its V gets more bits.
    pub is_70b: bool,
}

/// The user's choices that steer the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeChoice {
    pub file_type: FileType,
    /// `--pure`: no mixture, every quantizable tensor gets the default type (row-width fallbacks still apply).
    pub pure: bool,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `false` with `--leave-output-tensor`.
    pub quantize_output: bool,
    /// An importance matrix is given (`--imatrix` with at least one entry left after the filters).
    pub has_imatrix: bool,
}

/// One tensor as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct TensorShape<'a> {
    pub name: &'a str,
    /// Dimensions after dropping trailing 1s (ggml's `ggml_n_dims`).
    pub n_dims: usize,
    /// Row width (`ne[0]`).
    pub row_len: u64,
    pub ggml_type: GgmlType,
}

/// A tensor's planned type, and whether it fell back from a type its rows do not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedType {
    pub ggml_type: GgmlType,
    pub fell_back_from: Option<GgmlType>,
}

/// Chooses every tensor's type; `tensors` must be in [`llama_tensor_order`] (the counters depend on it).
pub fn plan_types(facts: &ModelFacts, choice: &TypeChoice, tensors: &[TensorShape<'_>]) -> Vec<PlannedType> {
    let mut state = RuleState {
        n_attention_v: tensors.iter().filter(|t| TensorCategory::of(t.name).is_attention_v()).count(),
        tied_embeddings: !tensors.iter().any(|t| TensorCategory::of(t.name) == TensorCategory::Output),
        ..RuleState::default()
    };
    tensors.iter().map(|t| state.tensor_type(facts, choice, t)).collect()
}

/// The counters llama.cpp keeps while it walks the tensors.
#[derive(Default)]
struct RuleState {
    n_attention_v: usize,
    i_attention_v: usize,
    i_ffn_down: usize,
    tied_embeddings: bool,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third layer between.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

fn is_quantized(t: GgmlType) -> bool {
    t.block_size() > 1
}

impl RuleState {
    /// `llama_tensor_get_type`: overrides first, then the mixture, then the row-width fallback.
    fn tensor_type(&mut self, facts: &ModelFacts, choice: &TypeChoice, t: &TensorShape<'_>) -> PlannedType {
        let keep = PlannedType { ggml_type: t.ggml_type, fell_back_from: None };
        if !allows_quantization(t.name, t.n_dims, choice.quantize_output) {
            return keep;
        }
        let category = TensorCategory::of(t.name);
        // An explicit type for these two is taken as given, without the fallback.
        if let (Some(ty), TensorCategory::TokenEmbd) = (choice.token_embedding_type, category) {
            return PlannedType { ggml_type: ty, fell_back_from: None };
        }
        if let (Some(ty), TensorCategory::Output) = (choice.output_tensor_type, category) {
            return PlannedType { ggml_type: ty, fell_back_from: None };
        }
        let default = choice.file_type.default_type();
        if !is_quantized(default) {
            return PlannedType { ggml_type: default, fell_back_from: None };
        }
        let mixed = if choice.pure { default } else { self.mixture_type(facts, choice, t, category, default) };
        fallback(mixed, t.row_len)
    }

    /// `llama_tensor_get_type_impl` for the file types made here (no i-quants, no experts, no Falcon).
    fn mixture_type(
        &mut self,
        facts: &ModelFacts,
        choice: &TypeChoice,
        t: &TensorShape<'_>,
        category: TensorCategory,
        default: GgmlType,
    ) -> GgmlType {
        use FileType as F;
        use GgmlType as G;
        let ftype = choice.file_type;
        let mut new_type = default;
        if category == TensorCategory::Output || (self.tied_embeddings && category == TensorCategory::TokenEmbd) {
            // A tied embedding is also the output head, so it is quantized like one.
            if let Some(ty) = choice.output_tensor_type {
                new_type = ty;
            } else if !t.row_len.is_multiple_of(new_type.block_size() as u64) {
                new_type = G::Q8_0;
            } else if new_type != G::Q8_0 {
                new_type = G::Q6K;
            }
        } else if category == TensorCategory::TokenEmbd {
            if let Some(ty) = choice.token_embedding_type {
                new_type = ty;
            }
        } else if category.is_attention_v() {
            let i = self.i_attention_v;
            match ftype {
                F::MostlyQ2_K => new_type = if facts.n_gqa >= 4 { G::Q4K } else { G::Q3K },
                F::MostlyQ2_K_S if facts.n_gqa >= 4 => new_type = G::Q4K,
                F::MostlyQ3_K_M => new_type = if i < 2 { G::Q5K } else { G::Q4K },
                F::MostlyQ3_K_L => new_type = G::Q5K,
                F::MostlyQ4_K_M | F::MostlyQ5_K_M if use_more_bits(i, self.n_attention_v) => new_type = G::Q6K,
                F::MostlyQ4_K_S if i < 4 => new_type = G::Q5K,
                F::MostlyIQ4_NL | F::MostlyIQ4_XS if facts.n_gqa >= 4 => new_type = G::Q5K,
                _ => {}
            }
            if facts.is_70b && matches!(new_type, G::Q3K | G::Q4K) {
                // 70B's V is 8x smaller than its Q (8 heads share it): more bits cost little.
                new_type = G::Q5K;
            }
            self.i_attention_v += 1;
        } else if category == TensorCategory::FfnDown {
            let (i, n) = (self.i_ffn_down, facts.n_layer);
            match ftype {
                F::MostlyQ2_K => new_type = G::Q3K,
                F::MostlyQ2_K_S if i < n / 8 => new_type = G::Q4K,
                F::MostlyQ3_K_M => new_type = if i < n / 16 { G::Q5K } else { G::Q4K },
                F::MostlyQ3_K_L => new_type = G::Q5K,
                F::MostlyQ4_K_M | F::MostlyQ5_K_M if use_more_bits(i, n) => new_type = G::Q6K,
                F::MostlyQ4_K_S if i < n / 8 => new_type = G::Q5K,
                F::MostlyIQ4_NL | F::MostlyIQ4_XS if i < n / 8 && !choice.has_imatrix => new_type = G::Q5K,
                // With an importance matrix only (so that the plain path stays what it was): the first FFN-down
                // layers of Q4_0/Q5_0 go wrong even with one; the affine types hold up.
                F::MostlyQ4_0 if choice.has_imatrix && i < n / 8 => new_type = G::Q4_1,
                F::MostlyQ5_0 if choice.has_imatrix && i < n / 8 => new_type = G::Q5_1,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if category == TensorCategory::AttentionOutput {
            match ftype {
                F::MostlyQ2_K => new_type = G::Q3K,
                F::MostlyQ3_K_M => new_type = G::Q4K,
                F::MostlyQ3_K_L => new_type = G::Q5K,
                _ => {}
            }
        }
        new_type
    }
}

/// `tensor_type_fallback`: a type whose block does not divide the row width is replaced by a 32-block type
/// of about the same size (Q2_K, Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0; IQ4_XS → IQ4_NL), and by F16 when even
/// 32 does not divide it.
fn fallback(ty: GgmlType, row_len: u64) -> PlannedType {
    if row_len.is_multiple_of(ty.block_size() as u64) {
        return PlannedType { ggml_type: ty, fell_back_from: None };
    }
    let smaller = match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        other => other,
    };
    let ggml_type = if row_len.is_multiple_of(smaller.block_size() as u64) { smaller } else { GgmlType::F16 };
    PlannedType { ggml_type, fell_back_from: Some(ty) }
}

/// llama.cpp's `tensor_requires_imatrix`: a tensor planned as Q2_K in a Q2_K_S file needs importance weights
/// (the token embedding and the output head never do).
pub fn requires_imatrix(name: &str, planned: GgmlType, file_type: FileType) -> bool {
    let exempt = ["token_embd.weight", "per_layer_token_embd.weight", "output.weight"];
    !exempt.contains(&name) && planned == GgmlType::Q2K && file_type == FileType::MostlyQ2_K_S
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEMMA_LAYERS: usize = 18;

    fn choice(file_type: FileType) -> TypeChoice {
        TypeChoice {
            file_type,
            pure: false,
            output_tensor_type: None,
            token_embedding_type: None,
            quantize_output: true,
            has_imatrix: false,
        }
    }

    /// A Gemma 3 270M-like tensor list (640 wide, FFN 2048, tied embedding), in llama.cpp's order.
    fn gemma_like(n_layer: usize, width: u64) -> Vec<(String, usize, u64)> {
        let mut names = vec![("token_embd.weight".to_string(), 2, width), ("output_norm.weight".to_string(), 1, width)];
        for l in 0..n_layer {
            for (part, dims, row) in [
                ("attn_k.weight", 2, width),
                ("attn_q.weight", 2, width),
                ("attn_v.weight", 2, width),
                ("attn_output.weight", 2, 1024),
                ("attn_norm.weight", 1, width),
                ("ffn_down.weight", 2, 2048),
                ("ffn_gate.weight", 2, width),
                ("ffn_up.weight", 2, width),
            ] {
                names.push((format!("blk.{l}.{part}"), dims, row));
            }
        }
        names.sort_by(|a, b| llama_tensor_order(&a.0, &b.0));
        names
    }

    fn plan(facts: &ModelFacts, choice: &TypeChoice, tensors: &[(String, usize, u64)]) -> Vec<(String, GgmlType)> {
        let shapes: Vec<TensorShape<'_>> = tensors
            .iter()
            .map(|(name, n_dims, row_len)| TensorShape {
                name,
                n_dims: *n_dims,
                row_len: *row_len,
                ggml_type: GgmlType::F32,
            })
            .collect();
        let planned = plan_types(facts, choice, &shapes);
        tensors.iter().zip(planned).map(|((n, _, _), p)| (n.clone(), p.ggml_type)).collect()
    }

    fn type_of(planned: &[(String, GgmlType)], name: &str) -> GgmlType {
        planned.iter().find(|(n, _)| n == name).map(|(_, t)| *t).unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn q2_k_s_and_the_imatrix_rules() {
        let tensors = gemma_like(GEMMA_LAYERS, 1024);
        let facts = ModelFacts { n_layer: GEMMA_LAYERS, n_gqa: 4, is_70b: false };
        let planned = plan(&facts, &choice(FileType::MostlyQ2_K_S), &tensors);
        // 18 / 8 = 2 FFN-down layers get Q4_K; V gets Q4_K with 4 query heads per KV head
        assert_eq!(type_of(&planned, "blk.1.ffn_down.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&planned, "blk.2.ffn_down.weight"), GgmlType::Q2K);
        assert_eq!(type_of(&planned, "blk.5.attn_v.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&planned, "blk.5.attn_output.weight"), GgmlType::Q2K);
        assert!(requires_imatrix("blk.2.ffn_down.weight", GgmlType::Q2K, FileType::MostlyQ2_K_S));
        assert!(!requires_imatrix("token_embd.weight", GgmlType::Q2K, FileType::MostlyQ2_K_S));
        assert!(!requires_imatrix("blk.2.ffn_down.weight", GgmlType::Q2K, FileType::MostlyQ2_K));
        // Q4_0 / Q5_0 lift their first FFN-down layers to Q4_1 / Q5_1 only with an importance matrix
        for (ft, plain, lifted) in [
            (FileType::MostlyQ4_0, GgmlType::Q4_0, GgmlType::Q4_1),
            (FileType::MostlyQ5_0, GgmlType::Q5_0, GgmlType::Q5_1),
        ] {
            let without = plan(&facts, &choice(ft), &tensors);
            let with = plan(&facts, &TypeChoice { has_imatrix: true, ..choice(ft) }, &tensors);
            assert_eq!(type_of(&without, "blk.0.ffn_down.weight"), plain);
            assert_eq!(type_of(&with, "blk.0.ffn_down.weight"), lifted);
            assert_eq!(type_of(&with, "blk.1.ffn_down.weight"), lifted);
            assert_eq!(type_of(&with, "blk.2.ffn_down.weight"), plain);
        }
        // IQ4 lifts its first FFN-down layers to Q5_K only without one; V is Q5_K either way (4 heads per KV)
        for (ft, ty) in [(FileType::MostlyIQ4_NL, GgmlType::IQ4_NL), (FileType::MostlyIQ4_XS, GgmlType::IQ4_XS)] {
            let without = plan(&facts, &choice(ft), &tensors);
            let with = plan(&facts, &TypeChoice { has_imatrix: true, ..choice(ft) }, &tensors);
            assert_eq!(type_of(&without, "blk.1.ffn_down.weight"), GgmlType::Q5K);
            assert_eq!(type_of(&with, "blk.0.ffn_down.weight"), ty);
            assert_eq!(type_of(&with, "blk.1.ffn_down.weight"), ty);
            assert_eq!(type_of(&without, "blk.2.ffn_down.weight"), ty);
            assert_eq!(type_of(&with, "blk.5.attn_v.weight"), GgmlType::Q5K);
            assert!(!requires_imatrix("blk.2.ffn_down.weight", ty, ft));
        }
    }

    #[test]
    fn use_more_bits_marks_the_ends_and_every_third_layer() {
        let marked: Vec<usize> = (0..18).filter(|&i| use_more_bits(i, 18)).collect();
        // 18/8 = 2, 7*18/8 = 15: layers 0-1, 15-17, and 2 + 3k + 2 = 4, 7, 10, 13.
        assert_eq!(marked, vec![0, 1, 4, 7, 10, 13, 15, 16, 17]);
        let marked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(marked, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn tensor_order_is_by_layer_number_then_name() {
        let mut names = vec!["blk.10.ffn_up.weight", "blk.2.attn_v.weight", "token_embd.weight", "blk.2.attn_k.weight"];
        names.sort_by(|a, b| llama_tensor_order(a, b));
        assert_eq!(names, ["token_embd.weight", "blk.2.attn_k.weight", "blk.2.attn_v.weight", "blk.10.ffn_up.weight"]);
        assert_eq!(layer_of("blk.7"), 7);
        assert_eq!(layer_of("blkx.7.a"), -1);
        assert_eq!(layer_of("blk.x"), -1);
    }

    #[test]
    fn q4_k_m_gives_more_bits_to_v_and_ffn_down_on_the_marked_layers() {
        let facts = ModelFacts { n_layer: GEMMA_LAYERS, n_gqa: 4, is_70b: false };
        // 1024-wide rows so no fallback hides the mixture
        let planned = plan(&facts, &choice(FileType::MostlyQ4_K_M), &gemma_like(GEMMA_LAYERS, 1024));
        for l in 0..GEMMA_LAYERS {
            let more = use_more_bits(l, GEMMA_LAYERS);
            let want = if more { GgmlType::Q6K } else { GgmlType::Q4K };
            assert_eq!(type_of(&planned, &format!("blk.{l}.attn_v.weight")), want, "layer {l}");
            assert_eq!(type_of(&planned, &format!("blk.{l}.ffn_down.weight")), want, "layer {l}");
            assert_eq!(type_of(&planned, &format!("blk.{l}.attn_q.weight")), GgmlType::Q4K);
            assert_eq!(type_of(&planned, &format!("blk.{l}.attn_norm.weight")), GgmlType::F32);
        }
        // tied: the embedding is the output head, Q6_K
        assert_eq!(type_of(&planned, "token_embd.weight"), GgmlType::Q6K);
    }

    #[test]
    fn rows_that_do_not_fit_a_256_block_fall_back() {
        let facts = ModelFacts { n_layer: GEMMA_LAYERS, n_gqa: 4, is_70b: false };
        let planned = plan(&facts, &choice(FileType::MostlyQ4_K_M), &gemma_like(GEMMA_LAYERS, 640));
        // 640 = 2.5 x 256: Q4_K -> Q5_0, Q6_K -> Q8_0; the tied embedding goes straight to Q8_0
        assert_eq!(type_of(&planned, "blk.0.attn_q.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&planned, "blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&planned, "blk.2.attn_v.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&planned, "blk.0.ffn_down.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&planned, "token_embd.weight"), GgmlType::Q8_0);
        // a row of 48 fits no block of 32 either: F16
        assert_eq!(
            fallback(GgmlType::Q4K, 48),
            PlannedType { ggml_type: GgmlType::F16, fell_back_from: Some(GgmlType::Q4K) }
        );
        assert_eq!(fallback(GgmlType::Q5K, 96).ggml_type, GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q3K, 96).ggml_type, GgmlType::Q4_0);
    }

    #[test]
    fn q3_k_m_and_q2_k_follow_the_gqa_and_layer_rules() {
        let tensors = gemma_like(GEMMA_LAYERS, 1024);
        let gqa4 = ModelFacts { n_layer: GEMMA_LAYERS, n_gqa: 4, is_70b: false };
        let gqa3 = ModelFacts { n_gqa: 3, ..gqa4 };
        let q3km = plan(&gqa4, &choice(FileType::MostlyQ3_K_M), &tensors);
        assert_eq!(type_of(&q3km, "blk.0.attn_v.weight"), GgmlType::Q5K);
        assert_eq!(type_of(&q3km, "blk.1.attn_v.weight"), GgmlType::Q5K);
        assert_eq!(type_of(&q3km, "blk.2.attn_v.weight"), GgmlType::Q4K);
        // 18/16 = 1: only layer 0's FFN-down gets Q5_K
        assert_eq!(type_of(&q3km, "blk.0.ffn_down.weight"), GgmlType::Q5K);
        assert_eq!(type_of(&q3km, "blk.1.ffn_down.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&q3km, "blk.5.attn_output.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&q3km, "blk.5.ffn_up.weight"), GgmlType::Q3K);
        let q2k4 = plan(&gqa4, &choice(FileType::MostlyQ2_K), &tensors);
        let q2k3 = plan(&gqa3, &choice(FileType::MostlyQ2_K), &tensors);
        assert_eq!(type_of(&q2k4, "blk.3.attn_v.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&q2k3, "blk.3.attn_v.weight"), GgmlType::Q3K);
        assert_eq!(type_of(&q2k3, "blk.3.ffn_down.weight"), GgmlType::Q3K);
        assert_eq!(type_of(&q2k3, "blk.3.attn_output.weight"), GgmlType::Q3K);
        assert_eq!(type_of(&q2k3, "blk.3.ffn_gate.weight"), GgmlType::Q2K);
        let q4ks = plan(&gqa4, &choice(FileType::MostlyQ4_K_S), &tensors);
        assert_eq!(type_of(&q4ks, "blk.3.attn_v.weight"), GgmlType::Q5K);
        assert_eq!(type_of(&q4ks, "blk.4.attn_v.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&q4ks, "blk.1.ffn_down.weight"), GgmlType::Q5K);
        assert_eq!(type_of(&q4ks, "blk.2.ffn_down.weight"), GgmlType::Q4K);
        let seventy = ModelFacts { n_layer: GEMMA_LAYERS, n_gqa: 8, is_70b: true };
        let q4km70 = plan(&seventy, &choice(FileType::MostlyQ4_K_M), &tensors);
        assert_eq!(type_of(&q4km70, "blk.2.attn_v.weight"), GgmlType::Q5K);
    }

    #[test]
    fn pure_overrides_and_untied_outputs() {
        let facts = ModelFacts { n_layer: 8, n_gqa: 1, is_70b: false };
        let mut tensors = gemma_like(8, 1024);
        tensors.push(("output.weight".to_string(), 2, 1024));
        tensors.sort_by(|a, b| llama_tensor_order(&a.0, &b.0));
        let pure = TypeChoice { pure: true, ..choice(FileType::MostlyQ4_K_M) };
        let planned = plan(&facts, &pure, &tensors);
        assert!(planned.iter().all(|(n, t)| *t == if n.contains("norm") { GgmlType::F32 } else { GgmlType::Q4K }));
        // untied: output gets Q6_K, the embedding keeps the default
        let planned = plan(&facts, &choice(FileType::MostlyQ4_K_M), &tensors);
        assert_eq!(type_of(&planned, "output.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&planned, "token_embd.weight"), GgmlType::Q4K);
        let overridden = TypeChoice {
            output_tensor_type: Some(GgmlType::Q8_0),
            token_embedding_type: Some(GgmlType::Q5_1),
            ..choice(FileType::MostlyQ4_0)
        };
        let planned = plan(&facts, &overridden, &tensors);
        assert_eq!(type_of(&planned, "output.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&planned, "token_embd.weight"), GgmlType::Q5_1);
        let leave = TypeChoice { quantize_output: false, ..choice(FileType::MostlyQ4_0) };
        let planned = plan(&facts, &leave, &tensors);
        assert_eq!(type_of(&planned, "output.weight"), GgmlType::F32);
        // float file types: every quantizable tensor gets the float type, no mixture
        let planned = plan(&facts, &choice(FileType::MostlyF16), &tensors);
        assert_eq!(type_of(&planned, "blk.0.attn_v.weight"), GgmlType::F16);
        assert_eq!(type_of(&planned, "output.weight"), GgmlType::F16);
        assert_eq!(type_of(&planned, "blk.0.attn_norm.weight"), GgmlType::F32);
    }

    #[test]
    fn file_types_parse_as_llama_quantize_names_them() {
        assert_eq!(FileType::parse("q4_k_m"), Ok(FileType::MostlyQ4_K_M));
        assert_eq!(FileType::parse("Q4_K"), Ok(FileType::MostlyQ4_K_M));
        assert_eq!(FileType::parse("q3_k"), Ok(FileType::MostlyQ3_K_M));
        assert_eq!(FileType::parse("Q5_K"), Ok(FileType::MostlyQ5_K_M));
        assert_eq!(FileType::parse("bf16"), Ok(FileType::MostlyBf16));
        assert_eq!(FileType::parse("7"), Ok(FileType::MostlyQ8_0));
        for t in FileType::ALL {
            assert_eq!(FileType::parse(t.name()), Ok(t));
            assert_eq!(FileType::parse(&t.id().to_string()), Ok(t));
        }
        assert_eq!(FileType::parse("iq4_xs"), Ok(FileType::MostlyIQ4_XS));
        assert_eq!(FileType::parse("25"), Ok(FileType::MostlyIQ4_NL));
        assert!(matches!(FileType::parse("iq3_s"), Err(FileTypeError::NotMadeHere { .. })));
        assert_eq!(FileType::parse("q2_k_s"), Ok(FileType::MostlyQ2_K_S));
        assert_eq!(FileType::parse("21"), Ok(FileType::MostlyQ2_K_S));
        assert!(matches!(FileType::parse("IQ2_XXS"), Err(FileTypeError::NotMadeHere { .. })));
        let unknown = FileType::parse("q9").unwrap_err().to_string();
        assert!(unknown.contains("'q9'") && unknown.contains("Q4_K_M"), "{unknown}");
        assert_eq!(parse_tensor_type("Q6_k"), Some(GgmlType::Q6K));
        assert_eq!(parse_tensor_type("q8_1"), None);
    }

    #[test]
    fn norms_one_dimensional_and_special_tensors_are_kept() {
        assert!(!allows_quantization("blk.0.attn_norm.weight", 2, true));
        assert!(!allows_quantization("blk.0.attn_q.bias", 2, true));
        assert!(!allows_quantization("rope_freqs.weight", 1, true));
        assert!(!allows_quantization("blk.0.ffn_gate_inp.weight", 2, true));
        assert!(!allows_quantization("output.weight", 2, false));
        assert!(allows_quantization("output.weight", 2, true));
        assert!(allows_quantization("blk.0.ffn_gate.weight", 2, true));
    }
}
