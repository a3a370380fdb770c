//! Models: loading weights and running the forward pass. One file per architecture.

mod attention;
pub mod embedding;
pub mod gemma2;
pub mod gemma3;
pub mod llama;
mod output;

use std::path::Path;
use std::sync::Arc;

use gemma_io::sbs::blob_store::BLOB_MAGIC;
use gemma_io::sbs::SbsFile;
use gemma_io::{GgufFile, GgufWriter, MetaValue};
use gemma_ops::matmul::matmul_view;
use gemma_ops::vector::{rms_norm, scale};
use gemma_ops::{KvType, QuantizedActs, ThreadPool};

use crate::batch::{Batch, Logits};
use crate::config::{Architecture, ModelConfig};
use crate::error::ModelError;
use crate::kv_cache::{KvCache, MAX_UBATCH};
use crate::lora::{LoraAdapter, LoraError, LoraPass};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::weights::{Matrix, WeightFile};

/// A loaded model: the memory-mapped file, its configuration and its weights.
pub struct Model {
    /// The GGUF file. For an SBS checkpoint, a metadata-only GGUF naming the architecture and the model, so
    /// that code reading GGUF metadata (the chat template's choice) sees the model it is; the weights and
    /// the tokenizer then come from [`Model::sbs`]. Shared, so a front end can keep reading the metadata
    /// (vocabulary included) without a copy.
    pub file: Arc<GgufFile>,
    /// The gemma.cpp checkpoint, when the model was opened from an SBS file.
    sbs: Option<SbsFile>,
    pub config: ModelConfig,
    weights: Weights,
    /// Pooling and projections, for embedding models.
    embedding_head: Option<embedding::EmbeddingHead>,
    /// LoRA adapters ([`Model::load_lora`]) and the scale each runs at when a pass names none.
    loras: Vec<LoraAdapter>,
    lora_scales: Vec<f32>,
    /// The types [`Model::new_cache`] stores keys and values in ([`Model::set_cache_types`]).
    cache_types: (KvType, KvType),
}

enum Weights {
    /// Gemma 1 and Gemma 2.
    Gemma2(gemma2::Gemma2Weights),
    Gemma3(gemma3::Gemma3Weights),
    Llama(llama::LlamaWeights),
}

/// Changes to a model's configuration made at load time, as llama.cpp's `--rope-freq-base` makes them.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// RoPE base of the global (full-attention) layers instead of the file's. Sliding-window layers keep
    /// theirs, as in llama.cpp. gemma.cpp runs the non-multimodal Gemma 3 models (270M, 1B) with 10,000 there
    /// where the models were trained with 1,000,000: `Some(10_000.0)` reproduces its outputs.
    pub rope_freq_base: Option<f32>,
}

impl LoadOptions {
    fn apply(&self, config: &mut ModelConfig) -> Result<(), ModelError> {
        if let Some(base) = self.rope_freq_base {
            if !(base.is_finite() && base > 1.0) {
                return Err(ModelError::InvalidOption(format!("RoPE base {base} must be a number above 1")));
            }
            config.rope_base = base;
        }
        Ok(())
    }
}

impl Model {
    /// Opens a GGUF file or a gemma.cpp SBS checkpoint, told apart by their magic, or a sentence-transformers
    /// folder of EmbeddingGemma (converted in memory to what llama.cpp's converter writes, F32).
    pub fn open(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        Self::open_with(path, &LoadOptions::default())
    }

    /// [`Model::open`] with the configuration changes of `options`.
    pub fn open_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model, ModelError> {
        let path = path.as_ref();
        if crate::convert::is_model_folder(path) {
            let file = crate::convert::sentence_transformers_file(path).map_err(|e| ModelError::Folder(Box::new(e)))?;
            return Self::from_gguf_with(file, options);
        }
        if is_sbs_file(path) {
            return Self::from_sbs_with(SbsFile::open(path)?, options);
        }
        Self::from_gguf_with(GgufFile::open(path)?, options)
    }

    pub fn from_gguf(file: GgufFile) -> Result<Model, ModelError> {
        Self::from_gguf_with(file, &LoadOptions::default())
    }

    pub fn from_gguf_with(file: GgufFile, options: &LoadOptions) -> Result<Model, ModelError> {
        let mut config = ModelConfig::from_gguf(&file)?;
        options.apply(&mut config)?;
        let weights = match config.arch {
            Architecture::Gemma | Architecture::Gemma2 => Weights::Gemma2(gemma2::Gemma2Weights::load(&file, &config)?),
            Architecture::Gemma3 | Architecture::GemmaEmbedding => {
                Weights::Gemma3(gemma3::Gemma3Weights::load(&file, &config)?)
            }
            Architecture::Llama => Weights::Llama(llama::LlamaWeights::load(&file, &config)?),
        };
        let embedding_head = config.pooling.map(|p| embedding::EmbeddingHead::load(&file, &config, p)).transpose()?;
        crate::weights::settle_resident_pages(&file);
        Ok(Model {
            file: Arc::new(file),
            sbs: None,
            config,
            weights,
            embedding_head,
            loras: Vec::new(),
            lora_scales: Vec::new(),
            cache_types: (KvType::F32, KvType::F32),
        })
    }

    /// A model from a gemma.cpp checkpoint (Gemma 3, Gemma 2 or Gemma 1 layers), run with the SBS codec kernels.
    pub fn from_sbs(file: SbsFile) -> Result<Model, ModelError> {
        Self::from_sbs_with(file, &LoadOptions::default())
    }

    pub fn from_sbs_with(file: SbsFile, options: &LoadOptions) -> Result<Model, ModelError> {
        let mut config = ModelConfig::from_sbs(file.config())?;
        options.apply(&mut config)?;
        let weights = match config.arch {
            Architecture::Gemma | Architecture::Gemma2 => {
                Weights::Gemma2(gemma2::Gemma2Weights::load_sbs(&file, &config)?)
            }
            _ => Weights::Gemma3(gemma3::Gemma3Weights::load_sbs(&file, &config)?),
        };
        // The SBS kernels read the mapped tensors in place, so without this the first prompt pays a page
        // fault per 4 KiB of weights (the GGUF path touches its weights while repacking them).
        file.blobs().prefetch();
        let mut meta = GgufWriter::new();
        let text = |s: &str| MetaValue::String(s.to_string());
        meta.add_metadata("general.architecture", text(config.arch.name()))?;
        meta.add_metadata("general.name", text(&config.name))?;
        let view = GgufFile::from_bytes(meta.to_bytes(), file.path())?;
        Ok(Model {
            file: Arc::new(view),
            sbs: Some(file),
            config,
            weights,
            embedding_head: None,
            loras: Vec::new(),
            lora_scales: Vec::new(),
            cache_types: (KvType::F32, KvType::F32),
        })
    }

    /// Loads the LoRA adapter at `path` (llama.cpp's `--lora-scaled FILE SCALE`; `--lora FILE` is scale 1) and
    /// returns its id, its index in [`Model::loras`]. `scale` is its default scale, used by every pass that
    /// names no scales ([`Model::forward_with`]); [`Model::forward_lora`] takes scales per sequence.
    pub fn load_lora(&mut self, path: impl AsRef<Path>, scale: f32) -> Result<usize, LoraError> {
        if self.sbs.is_some() {
            return Err(LoraError::SbsModel);
        }
        if !scale.is_finite() {
            return Err(LoraError::BadScale(scale));
        }
        let adapter = LoraAdapter::load(path.as_ref(), &self.file, &self.config)?;
        self.loras.push(adapter);
        self.lora_scales.push(scale);
        Ok(self.loras.len() - 1)
    }

    /// The loaded LoRA adapters, by id.
    pub fn loras(&self) -> &[LoraAdapter] {
        &self.loras
    }

    /// The default scale of each adapter, by id.
    pub fn lora_scales(&self) -> &[f32] {
        &self.lora_scales
    }

    /// Sets the default scale of adapter `id` (0 turns it off).
    pub fn set_lora_scale(&mut self, id: usize, scale: f32) -> Result<(), LoraError> {
        if !scale.is_finite() {
            return Err(LoraError::BadScale(scale));
        }
        let count = self.loras.len();
        *self.lora_scales.get_mut(id).ok_or(LoraError::NoAdapter { id, count })? = scale;
        Ok(())
    }

    /// The SBS checkpoint the model was opened from, if it was.
    pub fn sbs(&self) -> Option<&SbsFile> {
        self.sbs.as_ref()
    }

    /// The model's own tokenizer: from the GGUF vocabulary, or from an SBS file's SentencePiece blob.
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        match &self.sbs {
            None => Ok(Tokenizer::from_gguf(&self.file)?),
            Some(sbs) => {
                let proto = sbs.tokenizer()?.ok_or(TokenizerError::MissingKey("tokenizer (SBS blob)"))?;
                Ok(Tokenizer::from_sentencepiece(&proto)?)
            }
        }
    }

    fn weight_file(&self) -> WeightFile<'_> {
        match &self.sbs {
            Some(sbs) => WeightFile::Sbs(sbs),
            None => WeightFile::Gguf(&self.file),
        }
    }

    /// A KV cache for one sequence of up to `capacity` tokens (capped at the model's context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        self.cache_of_types(capacity, self.cache_types)
    }

    /// A KV cache as [`Model::new_cache`] whose keys and values are stored in `types` instead of the model's
    /// [`Model::cache_types`] (a caller with its own setting, as a C API call's parameters).
    pub fn new_cache_of_types(&self, capacity: usize, types: (KvType, KvType)) -> Result<KvCache, ModelError> {
        self.check_cache_types(types)?;
        Ok(self.cache_of_types(capacity, types))
    }

    fn cache_of_types(&self, capacity: usize, types: (KvType, KvType)) -> KvCache {
        let c = &self.config;
        // A centred window looks ahead, so embedding models keep every position (their inputs are short).
        let windows: Vec<Option<usize>> =
            c.layer_is_local.iter().map(|&local| if local && c.causal { c.sliding_window } else { None }).collect();
        KvCache::with_types(&windows, c.n_kv_heads * c.head_dim, capacity.min(c.context_length), types)
    }

    /// Stores keys and values of every cache made from now on in these types (llama.cpp's `--cache-type-k`
    /// and `--cache-type-v`; default f32). A head width that is not a whole number of the type's blocks is
    /// an error.
    pub fn set_cache_types(&mut self, keys: KvType, values: KvType) -> Result<(), ModelError> {
        self.check_cache_types((keys, values))?;
        self.cache_types = (keys, values);
        Ok(())
    }

    fn check_cache_types(&self, (keys, values): (KvType, KvType)) -> Result<(), ModelError> {
        for t in [keys, values] {
            if !self.config.head_dim.is_multiple_of(t.block_size()) {
                return Err(ModelError::CacheType(format!(
                    "a {t} cache needs heads of a multiple of {} values; this model's are {}",
                    t.block_size(),
                    self.config.head_dim
                )));
            }
        }
        Ok(())
    }

    /// The types caches store keys and values in.
    pub fn cache_types(&self) -> (KvType, KvType) {
        self.cache_types
    }

    /// Whether the model makes embeddings (it pools its states into one vector per input) rather than text.
    pub fn is_embedding_model(&self) -> bool {
        self.embedding_head.is_some()
    }

    /// The width of the model's embeddings; `None` for generative models.
    pub fn embedding_dim(&self) -> Option<usize> {
        self.embedding_head.as_ref().map(|h| h.dim)
    }

    /// The L2-normalised embedding of each input (token ids, with the BOS and EOS the tokenizer adds:
    /// [`Tokenizer::add_bos`], [`Tokenizer::add_eos`]). Inputs are run several to a pass, whole, in passes
    /// of up to the context length in tokens; an input longer than the context is an error.
    pub fn embed(&self, inputs: &[&[u32]], pool: &ThreadPool) -> Result<Vec<Vec<f32>>, ModelError> {
        let not_embedding = || ModelError::NotEmbeddingModel(self.config.name.clone());
        let head = self.embedding_head.as_ref().ok_or_else(not_embedding)?;
        let Weights::Gemma3(w) = &self.weights else { return Err(not_embedding()) };
        let mut scratch = Scratch::default();
        embedding::embed_inputs(
            self.weight_file(),
            &self.config,
            head,
            w.head.norm(),
            inputs,
            pool,
            &mut scratch,
            &mut |batch, group, scratch| {
                let mut caches: Vec<KvCache> = group.iter().map(|ids| self.new_cache(ids.len())).collect();
                validate_batch(batch, &caches, self.config.vocab_size)?;
                self.forward_ubatch(batch, &mut caches, pool, scratch, None, None)
            },
        )
    }

    /// Context shift, as llama.cpp's: forgets the `discard` positions of `cache` after the first `keep` and
    /// moves the later ones back, their keys rotated by `-discard` positions with this model's RoPE. The
    /// moved keys and values are not recomputed, so they still carry what the forgotten tokens told them.
    /// An embedding model's cache is never shifted.
    pub fn shift_context(&self, cache: &mut KvCache, keep: usize, discard: usize) -> Result<(), ModelError> {
        if self.is_embedding_model() {
            return Err(ModelError::ContextShift("an embedding model reads its whole input at once".into()));
        }
        let c = &self.config;
        match &self.weights {
            Weights::Gemma2(w) => {
                let (global, local) = w.rotations_back(discard);
                cache.shift(keep, discard, &mut |layer, keys| {
                    let rope = if c.layer_is_local[layer] { &local } else { &global };
                    keys.chunks_exact_mut(c.head_dim).for_each(|head| rope.neox(head, 0));
                })
            }
            Weights::Gemma3(w) => {
                let (global, local) = w.rotations_back(discard);
                cache.shift(keep, discard, &mut |layer, keys| {
                    let rope = if c.layer_is_local[layer] { &local } else { &global };
                    keys.chunks_exact_mut(c.head_dim).for_each(|head| rope.neox(head, 0));
                })
            }
            Weights::Llama(w) => {
                let rope = w.rotation_back(discard);
                cache.shift(keep, discard, &mut |_, keys| {
                    keys.chunks_exact_mut(c.head_dim).for_each(|head| rope.adjacent(head, 0));
                })
            }
        }
    }

    /// Runs `batch` through the model. Token `t` reads and extends `caches[t.seq]`; each sequence's tokens
    /// must continue its cache at consecutive positions. Returns the logits of the tokens that asked for them.
    pub fn forward(&self, batch: &Batch, caches: &mut [KvCache], pool: &ThreadPool) -> Result<Logits, ModelError> {
        let mut scratch = Scratch::default();
        self.forward_with(batch, caches, pool, &mut scratch)?;
        Ok(std::mem::take(&mut scratch.logits))
    }

    /// [`Model::forward`] working in `scratch`, whose buffers are reused from pass to pass (a decode loop that
    /// keeps one `Scratch` allocates nothing per token). The logits are left in `scratch.logits`.
    pub fn forward_with<'s>(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        pool: &ThreadPool,
        scratch: &'s mut Scratch,
    ) -> Result<&'s Logits, ModelError> {
        self.forward_passes(batch, caches, pool, scratch, None, None)
    }

    /// [`Model::forward_with`] with LoRA scales per sequence: `lora_scales[seq][id]` is the scale of adapter
    /// `id` for the tokens of sequence `seq` (a missing entry is 0), so sequences with different adapters or
    /// scales share one pass. The model's default scales ([`Model::lora_scales`]) are not used.
    pub fn forward_lora<'s>(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        pool: &ThreadPool,
        scratch: &'s mut Scratch,
        lora_scales: &[Vec<f32>],
    ) -> Result<&'s Logits, ModelError> {
        self.forward_passes(batch, caches, pool, scratch, None, Some(lora_scales))
    }

    /// [`Model::forward_with`] showing `observer` the input of every product with a weight matrix, as
    /// llama.cpp's evaluation callback shows llama-imatrix (`gemma_core::imatrix`). The results are the same.
    pub fn forward_observed<'s>(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        pool: &ThreadPool,
        scratch: &'s mut Scratch,
        observer: &mut dyn MatmulObserver,
    ) -> Result<&'s Logits, ModelError> {
        self.forward_passes(batch, caches, pool, scratch, Some(observer), None)
    }

    fn forward_passes<'s>(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        pool: &ThreadPool,
        scratch: &'s mut Scratch,
        mut observer: Option<&mut dyn MatmulObserver>,
        lora_scales: Option<&[Vec<f32>]>,
    ) -> Result<&'s Logits, ModelError> {
        validate_batch(batch, caches, self.config.vocab_size)?;
        // Without scales of its own, every sequence runs at the defaults.
        let defaults;
        let lora_scales = match lora_scales {
            Some(s) => Some(s),
            None if self.loras.is_empty() => None,
            None => {
                defaults = vec![self.lora_scales.clone(); caches.len()];
                Some(&defaults[..])
            }
        };
        if batch.len() <= MAX_UBATCH {
            self.forward_ubatch(batch, caches, pool, scratch, observer, lora_scales)?;
            return Ok(&scratch.logits);
        }
        // Bounded passes keep activation memory small and let sliding-window layers use a fixed ring.
        let mut all = Logits { vocab_size: self.config.vocab_size, ..Default::default() };
        for (k, chunk) in batch.tokens.chunks(MAX_UBATCH).enumerate() {
            let pass = Batch { tokens: chunk.to_vec() };
            let observer = observer.as_mut().map(|o| &mut **o as &mut dyn MatmulObserver);
            self.forward_ubatch(&pass, caches, pool, scratch, observer, lora_scales)?;
            all.batch_index.extend(scratch.logits.batch_index.iter().map(|i| i + k * MAX_UBATCH));
            all.data.extend_from_slice(&scratch.logits.data);
        }
        scratch.logits = all;
        Ok(&scratch.logits)
    }

    fn forward_ubatch(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        pool: &ThreadPool,
        scratch: &mut Scratch,
        observer: Option<&mut dyn MatmulObserver>,
        lora_scales: Option<&[Vec<f32>]>,
    ) -> Result<(), ModelError> {
        for t in &batch.tokens {
            caches[t.seq].reserve_to(t.pos + 1)?;
        }
        let c = &self.config;
        let lora = lora_scales.and_then(|s| LoraPass::new(&self.loras, s, batch.tokens.iter().map(|t| t.seq)));
        let mut products = Products { file: self.weight_file(), pool, observer, lora };
        let head = match &self.weights {
            Weights::Gemma2(w) => {
                gemma2::forward(&mut products, c, w, batch, caches, scratch)?;
                &w.head
            }
            Weights::Gemma3(w) => {
                gemma3::forward(&mut products, c, w, batch, caches, scratch)?;
                &w.head
            }
            Weights::Llama(w) => {
                llama::forward(&mut products, c, w, batch, caches, scratch)?;
                &w.head
            }
        };
        for t in &batch.tokens {
            caches[t.seq].set_len(t.pos + 1);
        }
        let Scratch { x, last, acts, logits, .. } = scratch;
        head.logits(&mut products, c, batch, x, last, acts, logits)
    }
}

/// A weight matrix of the forward pass by its GGUF name: `blk.{layer}.{tensor}.weight`, or `{tensor}.weight`
/// outside the layers (`output`, or `token_embd` for a head tied to the embedding). A model read from an SBS
/// checkpoint names its matrices the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeightName {
    pub layer: Option<usize>,
    pub tensor: &'static str,
}

impl WeightName {
    pub(crate) fn block(layer: usize, tensor: &'static str) -> WeightName {
        WeightName { layer: Some(layer), tensor }
    }
}

impl std::fmt::Display for WeightName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.layer {
            Some(l) => write!(f, "blk.{l}.{}.weight", self.tensor),
            None => write!(f, "{}.weight", self.tensor),
        }
    }
}

/// Sees the input of every product of activations with a weight matrix during a forward pass.
pub trait MatmulObserver {
    /// `input` holds one row of `cols` f32 activations per token of the pass (the values the product reads,
    /// before any quantization the kernel does), in batch order.
    fn observe(&mut self, weight: WeightName, input: &[f32], cols: usize);
}

/// The weight products of one forward pass: the kernels, the observer when there is one, and the LoRA
/// adapters' products when any is on, so the architecture files name each product once and stay free of
/// observing and adapter code.
pub(crate) struct Products<'a, 'o> {
    pub(crate) file: WeightFile<'a>,
    pub(crate) pool: &'a ThreadPool,
    observer: Option<&'o mut dyn MatmulObserver>,
    lora: Option<LoraPass<'a>>,
}

impl Products<'_, '_> {
    /// `out = x W^T` for every row of `x`, shown to the observer first.
    pub(crate) fn matmul(
        &mut self,
        name: WeightName,
        w: &Matrix,
        x: &[f32],
        out: &mut [f32],
        acts: &mut QuantizedActs,
    ) -> Result<(), ModelError> {
        if let Some(o) = self.observer.as_deref_mut() {
            o.observe(name, x, w.cols);
        }
        matmul_view(self.pool, &w.view(self.file), x, out, acts)?;
        // The token embedding's adapter is a lookup's (`Products::embed_tokens`), never a tied head's product.
        if let Some(lora) = self.lora.as_mut().filter(|_| name.tensor != "token_embd") {
            lora.add_products(self.pool, &name.to_string(), x, out, acts)?;
        }
        Ok(())
    }

    /// The next products read only the batch rows `rows` (the output head's), in that order.
    pub(crate) fn select_rows(&mut self, rows: &[usize]) {
        if let Some(lora) = self.lora.as_mut() {
            lora.select_rows(rows);
        }
    }

    /// Looks up the embedding of every batch token into `x` (one row of `d_model` each), adds the adapters'
    /// embedding terms, then multiplies by `factor` (and the table's own scale, folded into one multiplier as
    /// gemma.cpp does).
    pub(crate) fn embed_tokens(
        &mut self,
        embedding: &Matrix,
        batch: &Batch,
        x: &mut [f32],
        factor: f32,
        acts: &mut QuantizedActs,
    ) -> Result<(), ModelError> {
        let table = embedding.view(self.file);
        let factor = factor * table.scale();
        for (t, row) in batch.tokens.iter().zip(x.chunks_exact_mut(embedding.cols)) {
            table.decode_row(t.token as usize, row);
        }
        if let Some(lora) = self.lora.as_mut() {
            let tokens: Vec<u32> = batch.tokens.iter().map(|t| t.token).collect();
            lora.add_embeddings(self.pool, &tokens, x, acts)?;
        }
        if factor != 1.0 {
            x.chunks_exact_mut(embedding.cols).for_each(|row| scale(row, factor));
        }
        Ok(())
    }
}

/// The buffers a forward pass works in, kept between passes.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    acts: QuantizedActs,
    /// The logits of the last pass.
    pub logits: Logits,
}

/// RMS-normalises each `w.len()`-wide row of `x` with weight `w`.
fn rms_norm_rows(pool: &ThreadPool, x: &mut [f32], w: &[f32], eps: f32) {
    pool.for_chunks_mut(x, w.len(), &|_, row| rms_norm(row, w, eps));
}

/// `buf` resized to `n` values (keeps its allocation between passes).
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.resize(n, 0.0);
    buf
}

/// Whether the file at `path` starts with the SBS blob-store magic (a file that cannot be read is left
/// to the GGUF reader, whose error names the problem).
pub fn is_sbs_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && u32::from_le_bytes(magic) == BLOB_MAGIC
}

/// Checks token ids and that every sequence's tokens extend its cache at consecutive positions.
fn validate_batch(batch: &Batch, caches: &[KvCache], vocab: usize) -> Result<(), ModelError> {
    let mut next: Vec<Option<usize>> = vec![None; caches.len()];
    for t in &batch.tokens {
        if t.token as usize >= vocab {
            return Err(ModelError::TokenOutOfRange { id: t.token, vocab });
        }
        let cache = caches
            .get(t.seq)
            .ok_or_else(|| ModelError::BadBatch(format!("sequence {} has no cache ({} given)", t.seq, caches.len())))?;
        let expected = next[t.seq].unwrap_or(cache.len());
        if t.pos != expected {
            return Err(ModelError::BadBatch(format!(
                "sequence {} continues at position {expected}, got a token at position {}",
                t.seq, t.pos
            )));
        }
        if t.pos >= cache.capacity() {
            return Err(ModelError::ContextFull { pos: t.pos, ctx: cache.capacity() });
        }
        next[t.seq] = Some(t.pos + 1);
    }
    Ok(())
}
