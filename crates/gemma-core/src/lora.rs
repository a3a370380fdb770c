//! LoRA adapters, applied as llama.cpp applies them (`build_lora_mm`, `build_inp_embd`): for every weight
//! matrix `W` an adapter adapts, a product `y = W x` becomes
//!
//! ```text
//! y = W x + s * (B (A x)),   s = user_scale * alpha / rank   (or user_scale when alpha is 0)
//! ```
//!
//! with `rank` the width of `B` (`lora_b`'s first GGUF dimension). The token embedding's pair is the other
//! way round (`A` is a table of one rank-wide row per token): `e = E[t] + s * (B A[t])`, added before the
//! model's embedding scale. The scales are not folded into the weights, so each sequence of a batch can run
//! with its own scales, and they can change between passes without reloading. Everything here runs through
//! [`Products`](crate::model) so the architecture files name each product once and never see adapters.
//! See `docs/lora.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gemma_io::gguf::lora::{lora_scale, LoraFile, LoraFileError, LoraPair};
use gemma_io::GgufFile;
use gemma_ops::matmul::matmul_view;
use gemma_ops::{QuantizedActs, ThreadPool};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::{matrix, Matrix, WeightFile};

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    File(#[from] LoraFileError),
    #[error("{path}: model arch and LoRA arch mismatch (the adapter is for '{adapter}', the model is '{model}')")]
    Architecture { path: PathBuf, adapter: String, model: String },
    #[error("{path}: LoRA tensor '{name}' does not exist in base model (hint: maybe wrong base model?)")]
    UnknownTensor { path: PathBuf, name: String },
    #[error("{path}: tensor '{name}' has incorrect shape: lora_a {a:?}, lora_b {b:?} for a base tensor of {base:?} (hint: maybe wrong base model?)")]
    Shape { path: PathBuf, name: String, a: Vec<u64>, b: Vec<u64>, base: Vec<u64> },
    #[error("{path}: tensor '{name}': {source}")]
    Tensor {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<ModelError>,
    },
    #[error("LoRA adapters need a GGUF base model (this one is a gemma.cpp SBS checkpoint)")]
    SbsModel,
    #[error("LoRA scale {0} is not a finite number")]
    BadScale(f32),
    #[error("there is no LoRA adapter {id} ({count} loaded)")]
    NoAdapter { id: usize, count: usize },
}

/// The two factors of one adapted matrix, repacked for the kernels like base weights.
struct Factors {
    /// `rank` rows of the base input width (for the embedding: one row of `rank` per token).
    a: Matrix,
    /// The base output rows of `rank` (for the embedding: `d_model` rows of `rank`).
    b: Matrix,
    rank: usize,
}

/// A LoRA adapter loaded for one model.
pub struct LoraAdapter {
    path: PathBuf,
    /// The adapter's tensors (matrices repacked at load view their own copies; others view the map).
    file: GgufFile,
    alpha: f32,
    task_name: String,
    prompt_prefix: String,
    /// By base tensor name; the token embedding's pair is kept apart.
    products: HashMap<String, Factors>,
    embedding: Option<Factors>,
}

impl LoraAdapter {
    /// Reads the adapter at `path` and checks it against the base model `base` (its architecture, that every
    /// adapted tensor exists there, and that the factors' shapes fit it), as llama.cpp's loader does.
    pub(crate) fn load(path: &Path, base: &GgufFile, config: &ModelConfig) -> Result<LoraAdapter, LoraError> {
        let lora = LoraFile::open(path)?;
        let path = path.to_path_buf();
        let model_arch = config.arch.name();
        if lora.architecture != model_arch {
            return Err(LoraError::Architecture { path, adapter: lora.architecture, model: model_arch.into() });
        }
        let mut products = HashMap::new();
        let mut embedding = None;
        for pair in &lora.pairs {
            let info = base.tensor(&pair.base).filter(|t| t.dims.len() == 2);
            let Some(info) = info else {
                return Err(LoraError::UnknownTensor { path, name: pair.base.clone() });
            };
            if !pair.fits(&info.dims) {
                return Err(LoraError::Shape {
                    path,
                    name: pair.base.clone(),
                    a: pair.a.dims.clone(),
                    b: pair.b.dims.clone(),
                    base: info.dims.clone(),
                });
            }
            let factors = factors(&lora, pair, &path)?;
            if pair.is_token_embedding() {
                embedding = Some(factors);
            } else {
                products.insert(pair.base.clone(), factors);
            }
        }
        Ok(LoraAdapter {
            path,
            file: lora.file,
            alpha: lora.alpha,
            task_name: lora.task_name,
            prompt_prefix: lora.prompt_prefix,
            products,
            embedding,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// `adapter.lora.task_name`, empty when the file has none.
    pub fn task_name(&self) -> &str {
        &self.task_name
    }

    /// `adapter.lora.prompt_prefix`, empty when the file has none.
    pub fn prompt_prefix(&self) -> &str {
        &self.prompt_prefix
    }

    /// How many base matrices it adapts (the token embedding included).
    pub fn n_adapted(&self) -> usize {
        self.products.len() + usize::from(self.embedding.is_some())
    }

    /// llama.cpp's scale of one adapted matrix at `user_scale`.
    fn scale(&self, rank: usize, user_scale: f32) -> f32 {
        lora_scale(self.alpha, rank, user_scale)
    }
}

/// Both factors of `pair` as kernel matrices (any format the base weights may have: F32, F16, BF16, Q8_0...).
fn factors(lora: &LoraFile, pair: &LoraPair, path: &Path) -> Result<Factors, LoraError> {
    let tensor_error = |name: &str, e: ModelError| LoraError::Tensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        source: Box::new(e),
    };
    let dims = |t: &gemma_io::TensorInfo| (t.dims[1] as usize, t.dims[0] as usize);
    let ((a_rows, a_cols), (b_rows, b_cols)) = (dims(&pair.a), dims(&pair.b));
    let a = matrix(&lora.file, &pair.a.name, a_rows, a_cols).map_err(|e| tensor_error(&pair.a.name, e))?;
    let b = matrix(&lora.file, &pair.b.name, b_rows, b_cols).map_err(|e| tensor_error(&pair.b.name, e))?;
    Ok(Factors { a, b, rank: b_cols })
}

/// The adapters of one forward pass and the user scale of each (sequence, adapter), with the buffers the
/// products work in.
pub(crate) struct LoraPass<'a> {
    adapters: &'a [LoraAdapter],
    /// `scales[seq][adapter]`.
    scales: &'a [Vec<f32>],
    /// The sequence of each batch token.
    batch_seq: Vec<usize>,
    /// The sequence of each row of the next product's input (the batch, or the rows the output head takes).
    row_seq: Vec<usize>,
    row_scale: Vec<f32>,
    ax: Vec<f32>,
    delta: Vec<f32>,
}

impl<'a> LoraPass<'a> {
    /// `None` when no adapter would change anything (none loaded, or every scale 0): the pass is then the
    /// base model's, bit for bit, at no cost.
    pub(crate) fn new(
        adapters: &'a [LoraAdapter],
        scales: &'a [Vec<f32>],
        batch_seq: impl Iterator<Item = usize>,
    ) -> Option<LoraPass<'a>> {
        let batch_seq: Vec<usize> = batch_seq.collect();
        let active = batch_seq.iter().any(|&s| scales.get(s).is_some_and(|v| v.iter().any(|&x| x != 0.0)));
        if adapters.is_empty() || !active {
            return None;
        }
        let row_seq = batch_seq.clone();
        Some(LoraPass {
            adapters,
            scales,
            batch_seq,
            row_seq,
            row_scale: Vec::new(),
            ax: Vec::new(),
            delta: Vec::new(),
        })
    }

    /// The next products read the batch rows `rows` (the output head's selection), in that order.
    pub(crate) fn select_rows(&mut self, rows: &[usize]) {
        self.row_seq.clear();
        self.row_seq.extend(rows.iter().map(|&i| self.batch_seq[i]));
    }

    /// Per row, the scale of `adapter` for a matrix of `rank`; false when every row's is 0.
    fn row_scales(&mut self, adapter: usize, rank: usize) -> bool {
        let (ad, scales) = (&self.adapters[adapter], self.scales);
        self.row_scale.clear();
        self.row_scale.extend(
            self.row_seq
                .iter()
                .map(|&s| ad.scale(rank, scales.get(s).and_then(|v| v.get(adapter)).copied().unwrap_or(0.0))),
        );
        self.row_scale.iter().any(|&s| s != 0.0)
    }

    /// Adds every adapter's `s * (B (A x))` for the matrix `name` to `out` (one row of the base output per
    /// row of `x`).
    pub(crate) fn add_products(
        &mut self,
        pool: &ThreadPool,
        name: &str,
        x: &[f32],
        out: &mut [f32],
        acts: &mut QuantizedActs,
    ) -> Result<(), ModelError> {
        let n = self.row_seq.len();
        for i in 0..self.adapters.len() {
            let adapter = &self.adapters[i];
            let Some(f) = adapter.products.get(name) else { continue };
            if !self.row_scales(i, f.rank) {
                continue;
            }
            let file = WeightFile::Gguf(&adapter.file);
            self.ax.resize(n * f.rank, 0.0);
            matmul_view(pool, &f.a.view(file), x, &mut self.ax, acts)?;
            self.delta.resize(n * f.b.rows, 0.0);
            matmul_view(pool, &f.b.view(file), &self.ax, &mut self.delta, acts)?;
            add_scaled_rows(out, &self.delta, &self.row_scale);
        }
        Ok(())
    }

    /// Adds every adapter's `s * (B A[t])` to the embedding rows `x` of the batch tokens `tokens`.
    pub(crate) fn add_embeddings(
        &mut self,
        pool: &ThreadPool,
        tokens: &[u32],
        x: &mut [f32],
        acts: &mut QuantizedActs,
    ) -> Result<(), ModelError> {
        self.row_seq.clone_from(&self.batch_seq);
        for i in 0..self.adapters.len() {
            let adapter = &self.adapters[i];
            let Some(f) = &adapter.embedding else { continue };
            if !self.row_scales(i, f.rank) {
                continue;
            }
            let file = WeightFile::Gguf(&adapter.file);
            let table = f.a.view(file);
            self.ax.resize(tokens.len() * f.rank, 0.0);
            for (&t, row) in tokens.iter().zip(self.ax.chunks_exact_mut(f.rank)) {
                table.decode_row(t as usize, row);
            }
            self.delta.resize(tokens.len() * f.b.rows, 0.0);
            matmul_view(pool, &f.b.view(file), &self.ax, &mut self.delta, acts)?;
            add_scaled_rows(x, &self.delta, &self.row_scale);
        }
        Ok(())
    }
}

/// `out[i] += scale[i] * delta[i]` row by row, the product rounded before the sum as in llama.cpp's graph
/// (`ggml_scale`, then `ggml_add`). A row of scale 0 is left as it is.
fn add_scaled_rows(out: &mut [f32], delta: &[f32], scale: &[f32]) {
    let width = out.len() / scale.len().max(1);
    for ((o, d), &s) in out.chunks_exact_mut(width).zip(delta.chunks_exact(width)).zip(scale) {
        if s != 0.0 {
            o.iter_mut().zip(d).for_each(|(o, &d)| *o += s * d);
        }
    }
}

/// The deterministic adapter `scripts/llama_lora_goldens.py` writes (the same bytes), so tests and benchmarks
/// have a LoRA adapter for Gemma 3 270M where none can be downloaded.
pub mod synthetic {
    use gemma_io::{GgmlType, GgufError, GgufWriter, MetaValue};

    /// What the script writes: seed, rank, alpha, the two value shifts, and the adapted matrices as
    /// (name, input width, output width).
    pub struct Spec {
        pub architecture: &'static str,
        pub seed: u32,
        pub rank: usize,
        pub alpha: f32,
        pub a_shift: i32,
        pub b_shift: i32,
        pub n_layers: usize,
        pub targets: Vec<(&'static str, usize, usize)>,
    }

    impl Spec {
        /// The adapter of `scripts/llama_lora_goldens.py` for Gemma 3 270M.
        pub fn gemma3_270m() -> Spec {
            Spec {
                architecture: "gemma3",
                seed: 0x10AA,
                rank: 8,
                alpha: 16.0,
                a_shift: 3,
                b_shift: 7,
                n_layers: 18,
                targets: vec![("attn_q", 640, 1024), ("attn_v", 640, 256), ("ffn_down", 2048, 640)],
            }
        }

        /// The adapter of `scripts/llama_lora_goldens.py ... smollm2` for SmolLM2 135M (llama architecture): the
        /// matrices the Gemma one leaves out.
        pub fn smollm2_135m() -> Spec {
            Spec {
                architecture: "llama",
                n_layers: 30,
                targets: vec![
                    ("attn_k", 576, 192),
                    ("attn_output", 576, 576),
                    ("ffn_gate", 576, 1536),
                    ("ffn_up", 576, 1536),
                ],
                ..Spec::gemma3_270m()
            }
        }

        /// The adapter as a GGUF writer (metadata as gguf-py and convert_lora_to_gguf.py write it).
        pub fn writer(&self) -> Result<GgufWriter, GgufError> {
            let mut w = GgufWriter::new();
            let text = |s: &str| MetaValue::String(s.to_string());
            w.add_metadata("general.architecture", text(self.architecture))?;
            w.add_metadata("general.type", text("adapter"))?;
            w.add_metadata("adapter.type", text("lora"))?;
            w.add_metadata("adapter.lora.alpha", MetaValue::F32(self.alpha))?;
            let mut t = 0u32;
            let r = self.rank;
            for layer in 0..self.n_layers {
                for &(name, d_in, d_out) in &self.targets {
                    let a = f16_bytes(&values(self.seed, t, r * d_in, self.a_shift));
                    let b = f16_bytes(&values(self.seed, t + 1, d_out * r, self.b_shift));
                    w.add_tensor(
                        format!("blk.{layer}.{name}.weight.lora_a"),
                        &[d_in as u64, r as u64],
                        GgmlType::F16,
                        a,
                    )?;
                    w.add_tensor(
                        format!("blk.{layer}.{name}.weight.lora_b"),
                        &[r as u64, d_out as u64],
                        GgmlType::F16,
                        b,
                    )?;
                    t += 2;
                }
            }
            Ok(w)
        }
    }

    /// The values of tensor `t` (numbered in file order), `n` of them: an integer hash of (seed, t, i) mapped
    /// to `k * 2^-(10 + shift)` with `k` in -1023..=1023, exact in f16 (see the script for the rule).
    pub fn values(seed: u32, t: u32, n: usize, shift: i32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let mut x = seed
                    .wrapping_mul(0x9E37_79B1)
                    .wrapping_add(t.wrapping_mul(0x85EB_CA77))
                    .wrapping_add((i as u32).wrapping_mul(0xC2B2_AE3D));
                x ^= x >> 16;
                x = x.wrapping_mul(0x7FEB_352D);
                x ^= x >> 15;
                x = x.wrapping_mul(0x846C_A68B);
                x ^= x >> 16;
                let k = (x % 2047) as i32 - 1023;
                k as f32 * 2f32.powi(-(10 + shift))
            })
            .collect()
    }

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
    }
}
