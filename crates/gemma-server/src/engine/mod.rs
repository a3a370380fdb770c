//! The inference engine: one OS thread owns the model, the thread pool and every sequence, and runs
//! continuous batching. Each step builds one batch with the next token of every decoding sequence plus a
//! bounded chunk of prompt tokens of sequences still prefilling, so the weights are read once per step for all
//! of them. New requests join between steps; finished sequences leave their KV cache to the prefix cache.

pub mod prefix_cache;
mod sequence;
pub mod sessions;
pub mod slots;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gemma_core::chat::ChatTemplate;
use gemma_core::sampling::{DryBreakers, TokenLogprobs};
use gemma_core::{Batch, BatchToken, ContextShift, KvCache, Model, SamplingParams, Scratch, Tokenizer};
use gemma_ops::ThreadPool;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::LoadError;
use crate::metrics::Metrics;
use prefix_cache::PrefixCache;
use sequence::{Sequence, StepResult, Verified};
use sessions::{SessionBusy, Sessions};
use slots::{SlotTable, SlotTask};

/// Most embedding requests run together (their inputs share passes of up to the context length).
const MAX_EMBEDDING_REQUESTS: usize = 64;

/// Most tokens of one forward pass when no sequence is decoding (a lone prompt prefills in big chunks).
const IDLE_PREFILL_CHUNK: usize = 512;

/// One generation: a prompt, how to sample, and where to send the results.
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    /// Sampling, penalties and logit bias.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)`: report each generated token's log-probability and the `k` most likely alternatives.
    pub top_logprobs: Option<usize>,
    /// Which choice of its request this is: events go out tagged with it. With `n` > 1 the choices are
    /// `choice..choice + n`.
    pub choice: usize,
    /// Choices generated from this prompt. They share one prefill: when the prompt is done its KV cache is
    /// copied for each, and choice `choice + k` samples with seed `seed + k`.
    pub n: usize,
    /// Keep this sequence's KV cache and tokens under a session id between calls (`POST /generate`).
    pub session: Option<SessionRef>,
    /// The scale of each LoRA adapter for this request (by id; missing ones are 0).
    pub lora: Vec<f32>,
    /// Shared by the choices of one request; dropping the receiver cancels them all.
    pub events: UnboundedSender<(usize, Event)>,
    pub submitted: Instant,
    /// `Some`: when the sequence's context is full, shift it (llama-server's `--context-shift`) and go on.
    pub context_shift: Option<RequestShift>,
}

/// A request's context shift: llama.cpp's rule, applied when the sequence holds `ctx - 1` tokens (`ctx`: the
/// request's context, at most the server's; ollama's `num_ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestShift {
    pub rule: ContextShift,
    pub ctx: usize,
}

/// Embeddings of whole inputs (token ids with their BOS/EOS), computed on the engine thread between steps.
pub struct EmbeddingRequest {
    pub inputs: Vec<Vec<u32>>,
    /// One L2-normalised vector per input, or why they could not be computed.
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// What the engine's queue carries.
#[allow(clippy::large_enum_variant)] // nearly every job is a generation; boxing it would only add an allocation
pub enum Job {
    Generate(GenerationRequest),
    Embed(EmbeddingRequest),
    Slot(SlotCommand),
}

/// llama-server's slot actions: save a slot's KV cache to a file, restore one (into the prefix cache, where
/// the next request that starts with its tokens finds it), or erase it.
pub struct SlotCommand {
    pub slot: usize,
    pub action: SlotAction,
    pub reply: tokio::sync::oneshot::Sender<Result<SlotOutcome, SlotActionError>>,
}

pub enum SlotAction {
    Save(std::path::PathBuf),
    Restore(std::path::PathBuf),
    Erase,
}

/// Positions saved, restored or erased, and the file's size (0 for erase).
#[derive(Debug)]
pub struct SlotOutcome {
    pub tokens: usize,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotActionError {
    #[error("slot {0} is processing a request")]
    Busy(usize),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    File(#[from] gemma_core::KvFileError),
    #[error("{tokens} positions do not fit the prefix cache (inference.prefix_cache_tokens = {budget})")]
    TooLong { tokens: usize, budget: usize },
}

/// A request's session: `prompt_ids` are appended to what the session already holds.
#[derive(Clone, Debug)]
pub struct SessionRef {
    pub id: String,
    /// Put first when the session is new (the tokenizer's BOS).
    pub first_token: Option<u32>,
}

/// What a sequence reports, in order: chunks, then exactly one `Done`, `Error` or `Rejected`.
#[derive(Clone, Debug)]
pub enum Event {
    Chunk(Chunk),
    Done(Finish),
    /// The engine failed.
    Error(String),
    /// The request cannot be served as asked (a 400): e.g. a session's history no longer fits the context.
    Rejected(String),
}

/// Text released by one step (possibly empty while a character or a possible stop string is held back) and
/// the token that produced it, if any (the final flush has none).
#[derive(Clone, Debug)]
pub struct Chunk {
    pub text: String,
    pub token: Option<u32>,
    pub logprob: Option<TokenLogprobs>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation token or a stop string.
    Stop,
    /// `max_tokens`, the context or the time limit.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens that came from the prefix cache.
    pub cached_tokens: usize,
    /// Which of the request's stop strings ended it, if one did (a `Stop` without one is an end-of-generation
    /// token).
    pub stop_word: Option<usize>,
    /// Context shifts made on the way (llama-server reports `truncated` then).
    pub context_shifts: usize,
    /// With speculative decoding, its drafts (llama-server's `timings.draft_n` / `draft_n_accepted`).
    pub speculative: Option<gemma_core::SpecStats>,
}

/// The model facts the HTTP side needs once loading is done.
pub struct LoadedModel {
    pub id: String,
    pub tokenizer: Arc<Tokenizer>,
    /// Context length of each sequence.
    pub ctx: usize,
    pub vocab_size: usize,
    /// The GGUF's chat template (or the built-in one for its family).
    pub chat: ChatTemplate,
    pub created: u64,
    /// The width of the model's embeddings when it is an embedding model (which serves `/v1/embeddings`
    /// and no generation).
    pub embedding_dim: Option<usize>,
    /// DRY's breaker tables, shared by the request parsers (which build them off the engine thread) and
    /// the engine (which looks them up).
    pub dry_tables: Arc<DryTables>,
    /// The file's facts for the model-listing endpoints.
    pub file_info: Arc<crate::model_info::ModelFileInfo>,
    /// The n-gram drafts sequences decode with (`--spec-type`; `/slots` and `/props` show it).
    pub speculative: Option<gemma_core::SpecType>,
    /// The LoRA adapters loaded, by id, and the scales requests get when they name none (llama-server's
    /// global scales: `POST /lora-adapters` sets them).
    pub loras: Vec<LoraInfo>,
    pub lora_scales: Mutex<Vec<f32>>,
}

/// What `GET /lora-adapters` says of an adapter.
#[derive(Clone, Debug)]
pub struct LoraInfo {
    pub path: std::path::PathBuf,
    pub task_name: String,
    pub prompt_prefix: String,
}

impl LoadedModel {
    /// The global LoRA scales now.
    pub fn lora_scales(&self) -> Vec<f32> {
        self.lora_scales.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// DRY's breakers for the breaker lists used last, newest first. Matching a list against the vocabulary
/// scans all of it (tens to hundreds of milliseconds on a large one); most requests use the default list.
#[derive(Default)]
pub struct DryTables {
    recent: Mutex<RecentTables>,
}

/// (breaker list, its breakers), newest first.
type RecentTables = Vec<(Vec<String>, Arc<DryBreakers>)>;

impl DryTables {
    const KEEP: usize = 8;

    /// The breakers of `list`, built (without holding the lock) when none of the last few requests used it.
    pub fn get(&self, tokenizer: &Tokenizer, list: &[String]) -> Arc<DryBreakers> {
        if let Some(hit) = Self::take_front(&mut self.lock(), list) {
            return hit;
        }
        let built = Arc::new(DryBreakers::new(tokenizer, list));
        let mut recent = self.lock();
        // Another thread may have built the same list meanwhile: keep one entry.
        Self::take_front(&mut recent, list).unwrap_or_else(|| {
            recent.insert(0, (list.to_vec(), built.clone()));
            recent.truncate(Self::KEEP);
            built
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentTables> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The breakers of `list` if they are kept, moved to the front.
    fn take_front(recent: &mut RecentTables, list: &[String]) -> Option<Arc<DryBreakers>> {
        let at = recent.iter().position(|(cached, _)| cached == list)?;
        let hit = recent.remove(at);
        let breakers = hit.1.clone();
        recent.insert(0, hit);
        Some(breakers)
    }
}

/// Loading state shared between the engine thread and the HTTP handlers.
#[derive(Default)]
pub struct EngineState {
    pub loaded: OnceLock<Arc<LoadedModel>>,
    pub failed: Mutex<Option<String>>,
    /// The sequences running now and the last one of each slot (`GET /slots`).
    pub slots: Mutex<SlotTable>,
}

impl EngineState {
    /// A copy of the slot table, taken under its lock.
    pub fn slots(&self) -> SlotTable {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
    #[error("{0} is an embedding model: it serves /v1/embeddings, not text generation")]
    EmbeddingModel(String),
    #[error("{0} is not an embedding model: start the server with one (e.g. -m embeddinggemma-300m) for embeddings")]
    NotEmbeddingModel(String),
}

/// The HTTP side's end of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    pub state: Arc<EngineState>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Queues a generation request; never blocks. An embedding model refuses it.
    pub fn submit(&self, req: GenerationRequest) -> Result<(), SubmitError> {
        if let Some(loaded) = self.loaded().filter(|l| l.embedding_dim.is_some()) {
            return Err(SubmitError::EmbeddingModel(loaded.id.clone()));
        }
        self.enqueue(Job::Generate(req))
    }

    /// Queues a slot action; never blocks.
    pub fn submit_slot(&self, cmd: SlotCommand) -> Result<(), SubmitError> {
        self.enqueue(Job::Slot(cmd))
    }

    /// Queues an embedding request; never blocks. Only an embedding model takes it.
    pub fn submit_embedding(&self, req: EmbeddingRequest) -> Result<(), SubmitError> {
        if let Some(loaded) = self.loaded().filter(|l| l.embedding_dim.is_none()) {
            return Err(SubmitError::NotEmbeddingModel(loaded.id.clone()));
        }
        self.enqueue(Job::Embed(req))
    }

    fn enqueue(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let r = self.tx.try_send(job);
        if r.is_err() {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        }
        r.map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::QueueFull,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    pub fn loaded(&self) -> Option<Arc<LoadedModel>> {
        self.state.loaded.get().cloned()
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub model: String,
    pub parallel: usize,
    pub ctx: usize,
    pub threads: usize,
    pub queue_size: usize,
    pub prefix_cache_tokens: usize,
    pub prefill_chunk: usize,
    pub request_timeout: Duration,
    /// Sessions (`POST /generate`) kept at most; the least recently used goes first.
    pub max_sessions: usize,
    /// Self-speculative decoding of every sequence (`--spec-type`).
    pub speculative: Option<gemma_core::SpeculativeParams>,
    /// LoRA adapters to load, with their starting scales.
    pub loras: Vec<(std::path::PathBuf, f32)>,
    /// Types of the KV cache's keys and values.
    pub cache_types: (gemma_core::KvType, gemma_core::KvType),
}

/// A started engine: its handle, its thread, and the outcome of loading the model (`Err` with the reason).
pub struct SpawnedEngine {
    pub handle: EngineHandle,
    pub thread: std::thread::JoinHandle<()>,
    pub loaded: tokio::sync::oneshot::Receiver<Result<(), String>>,
}

/// Starts the engine thread, which loads the model and then serves requests until every handle is dropped
/// and the last sequence has finished.
pub fn spawn(config: EngineConfig, metrics: Arc<Metrics>) -> std::io::Result<SpawnedEngine> {
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::sync_channel(config.queue_size);
    let state = Arc::new(EngineState::default());
    let handle = EngineHandle { tx, state: state.clone(), metrics: metrics.clone() };
    let start = |config: &EngineConfig| {
        let pool = ThreadPool::try_new(config.threads)
            .map_err(|source| LoadError::Threads { threads: config.threads, source })?;
        load(config).map(|(model, loaded)| (pool, model, loaded))
    };
    let thread = std::thread::Builder::new().name("gemma-engine".into()).spawn(move || match start(&config) {
        Ok((pool, model, loaded)) => {
            let tokenizer = loaded.tokenizer.clone();
            let dry_tables = loaded.dry_tables.clone();
            *state.slots.lock().unwrap_or_else(|p| p.into_inner()) = SlotTable::new(config.parallel);
            let _ = state.loaded.set(Arc::new(loaded));
            let _ = loaded_tx.send(Ok(()));
            tracing::info!(model = %config.model, ctx = config.ctx, parallel = config.parallel, "model loaded");
            Engine::new(&model, &tokenizer, &pool, &config, &metrics, dry_tables, state.clone()).run(rx);
        }
        Err(e) => {
            let report = crate::error_report(&e);
            tracing::error!("cannot load the model: {report}");
            *state.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
            let _ = loaded_tx.send(Err(report));
        }
    })?;
    Ok(SpawnedEngine { handle, thread, loaded: loaded_rx })
}

pub(crate) fn load(config: &EngineConfig) -> Result<(Model, LoadedModel), LoadError> {
    let path = gemma_fetch::resolve_model(&config.model)?;
    let mut model =
        Model::open(&path).map_err(|source| LoadError::Model { path: path.clone(), source: Box::new(source) })?;
    model
        .set_cache_types(config.cache_types.0, config.cache_types.1)
        .map_err(|source| LoadError::Model { path: path.clone(), source: Box::new(source) })?;
    for (adapter, scale) in &config.loras {
        model
            .load_lora(adapter, *scale)
            .map_err(|source| LoadError::Lora { path: adapter.clone(), source: Box::new(source) })?;
    }
    let loras = model
        .loras()
        .iter()
        .map(|l| LoraInfo {
            path: l.path().to_path_buf(),
            task_name: l.task_name().to_string(),
            prompt_prefix: l.prompt_prefix().to_string(),
        })
        .collect();
    let tokenizer = model.tokenizer().map_err(|e| LoadError::Tokenizer(Box::new(e)))?;
    let chat = ChatTemplate::from_gguf(&model.file, &tokenizer).map_err(LoadError::ChatTemplate)?;
    let id = if std::path::Path::new(&config.model).exists() {
        path.file_stem().map_or_else(|| config.model.clone(), |s| s.to_string_lossy().into_owned())
    } else {
        config.model.clone()
    };
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let file_info = Arc::new(crate::model_info::ModelFileInfo::read(&model, &path));
    let loaded = LoadedModel {
        id,
        ctx: config.ctx.min(model.config.context_length),
        vocab_size: model.config.vocab_size,
        tokenizer: Arc::new(tokenizer),
        chat,
        created,
        embedding_dim: model.embedding_dim(),
        dry_tables: Arc::default(),
        file_info,
        speculative: config.speculative.as_ref().map(|p| p.kind),
        loras,
        lora_scales: Mutex::new(model.lora_scales().to_vec()),
    };
    Ok((model, loaded))
}

struct Engine<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    pool: &'a ThreadPool,
    config: &'a EngineConfig,
    metrics: &'a Metrics,
    /// `seqs[i]` reads and writes `caches[i]` (the forward pass wants the caches as one slice).
    seqs: Vec<Sequence<'a>>,
    caches: Vec<KvCache>,
    prefix_cache: PrefixCache<KvCache>,
    sessions: Sessions,
    /// A request taken from the queue that waits for enough free sequence slots.
    held: Option<GenerationRequest>,
    /// Numbers the requests, so that the choices of one can find each other.
    next_group: u64,
    scratch: Scratch,
    /// The LoRA scales the prefix cache's entries were computed with ([`lora_key`]): a request with other
    /// scales empties it, as llama-server clears a slot's cache when its adapters change.
    prefix_lora: Vec<u32>,
    /// Shared with the request parsers, which have usually built a request's table already.
    dry_tables: Arc<DryTables>,
    /// Where the slot table lives (read by `GET /slots`).
    state: Arc<EngineState>,
}

impl<'a> Engine<'a> {
    fn new(
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        pool: &'a ThreadPool,
        config: &'a EngineConfig,
        metrics: &'a Metrics,
        dry_tables: Arc<DryTables>,
        state: Arc<EngineState>,
    ) -> Self {
        Engine {
            model,
            tokenizer,
            pool,
            config,
            metrics,
            seqs: Vec::new(),
            caches: Vec::new(),
            prefix_cache: PrefixCache::new(config.prefix_cache_tokens),
            sessions: Sessions::new(config.max_sessions),
            held: None,
            next_group: 0,
            scratch: Scratch::default(),
            prefix_lora: lora_key(model.lora_scales()),
            dry_tables,
            state,
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut open = true;
        loop {
            // Admit waiting requests between steps; block only when there is nothing to do. A request needs a
            // slot per choice; one with more choices than `parallel` runs alone.
            loop {
                if self.held.is_none() && open && self.seqs.len() < self.config.parallel {
                    let next = if self.seqs.is_empty() {
                        rx.recv().map_err(|_| TryRecvError::Disconnected)
                    } else {
                        rx.try_recv()
                    };
                    match next {
                        Ok(Job::Generate(req)) => {
                            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                            self.held = Some(req);
                        }
                        Ok(Job::Slot(cmd)) => {
                            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                            self.slot_action(cmd);
                            continue;
                        }
                        Ok(Job::Embed(req)) => {
                            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                            // Embedding requests that queued meanwhile share the pass (each input whole).
                            let mut batch = vec![req];
                            while batch.len() < MAX_EMBEDDING_REQUESTS {
                                match rx.try_recv() {
                                    Ok(Job::Embed(more)) => batch.push(more),
                                    Ok(Job::Generate(g)) => {
                                        self.held = Some(g);
                                        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Ok(Job::Slot(cmd)) => {
                                        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                                        self.slot_action(cmd);
                                        break;
                                    }
                                    Err(TryRecvError::Empty) => break,
                                    Err(TryRecvError::Disconnected) => {
                                        open = false;
                                        break;
                                    }
                                }
                                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                            }
                            self.embed(batch);
                            continue;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => open = false,
                    }
                }
                let Some(n) = self.held.as_ref().map(|r| r.n.max(1)) else { break };
                if !self.seqs.is_empty() && self.seqs.len() + n > self.config.parallel {
                    break;
                }
                if let Some(req) = self.held.take() {
                    self.admit(req);
                }
            }
            if self.seqs.is_empty() {
                if open || self.held.is_some() {
                    continue;
                }
                return;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if result.is_err() {
                // A bug must not wedge the server: fail what is running and carry on with a clean slate.
                tracing::error!("the engine step panicked; failing {} sequences", self.seqs.len());
                self.slot_table().release_all();
                for s in self.seqs.drain(..) {
                    if let Some(id) = s.session() {
                        self.sessions.release(id);
                    }
                    s.fail("internal error in the inference engine");
                }
                self.caches.clear();
                self.scratch = Scratch::default();
            }
            self.update_gauges();
        }
    }

    /// Runs embedding requests at once, together (an embedding model has no sequences decoding meanwhile). A
    /// batch that fails is run again request by request, so one request's failure is its own.
    fn embed(&mut self, batch: Vec<EmbeddingRequest>) {
        let batch: Vec<EmbeddingRequest> = batch.into_iter().filter(|r| !r.reply.is_closed()).collect();
        if batch.len() > 1 {
            let inputs: Vec<&[u32]> = batch.iter().flat_map(|r| r.inputs.iter().map(Vec::as_slice)).collect();
            if let Ok(mut vectors) = self.embed_inputs(&inputs) {
                for req in batch.into_iter().rev() {
                    let mine = vectors.split_off(vectors.len() - req.inputs.len());
                    let _ = req.reply.send(Ok(mine));
                }
                return;
            }
        }
        for req in batch {
            let inputs: Vec<&[u32]> = req.inputs.iter().map(Vec::as_slice).collect();
            let _ = req.reply.send(self.embed_inputs(&inputs));
        }
    }

    fn embed_inputs(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.model.embed(inputs, self.pool)));
        match result {
            Ok(Ok(vectors)) => {
                let tokens: usize = inputs.iter().map(|r| r.len()).sum();
                self.metrics.prompt_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
                Ok(vectors)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                tracing::error!("an embedding pass panicked");
                Err("internal error in the inference engine".to_string())
            }
        }
    }

    fn admit(&mut self, mut req: GenerationRequest) {
        if req.events.is_closed() {
            return;
        }
        let ctx = self.config.ctx.min(self.model.config.context_length);
        // A session's request continues what the session holds; its KV cache is moved out while it runs.
        let mut session_cache = None;
        // Tokens the session held before this request (to put it back when the request is refused), and the
        // LoRA scales its cache was computed with.
        let mut session_len = 0;
        let mut session_lora = Vec::new();
        if let Some(session) = &req.session {
            match self.sessions.take(&session.id) {
                Err(SessionBusy) => {
                    let message = format!("session '{}' is busy with another request", session.id);
                    let _ = req.events.send((req.choice, Event::Rejected(message)));
                    return;
                }
                Ok(Some(held)) => {
                    let mut tokens = held.tokens;
                    session_len = tokens.len();
                    tokens.extend_from_slice(&req.prompt_ids);
                    req.prompt_ids = tokens;
                    // Keys and values computed at other LoRA scales are not reused: the whole history is
                    // prefilled again at this request's (llama-server clears a slot's cache when its adapters
                    // change).
                    session_cache = Some(if lora_key(&held.lora) == lora_key(&req.lora) {
                        held.cache
                    } else {
                        self.model.new_cache(self.config.ctx)
                    });
                    session_lora = held.lora;
                }
                Ok(None) => {
                    if let Some(first) = session.first_token {
                        req.prompt_ids.insert(0, first);
                    }
                }
            }
            self.sessions.mark_busy(&session.id);
        }
        if req.prompt_ids.is_empty() || req.prompt_ids.len() >= ctx {
            let message = format!(
                "the prompt has {} tokens; it must have between 1 and {} tokens",
                req.prompt_ids.len(),
                ctx - 1
            );
            self.refuse_session(&mut req, session_cache, session_len, session_lora);
            let _ = req.events.send((req.choice, Event::Rejected(message)));
            return;
        }
        if let Some(bad) = req.prompt_ids.iter().find(|&&id| id as usize >= self.model.config.vocab_size) {
            let message = format!("token id {bad} is outside the vocabulary");
            self.refuse_session(&mut req, session_cache, session_len, session_lora);
            let _ = req.events.send((req.choice, Event::Rejected(message)));
            return;
        }
        self.metrics.prompt_tokens.fetch_add(req.prompt_ids.len() as u64, Ordering::Relaxed);
        let (cache, reused) = match session_cache {
            Some(mut cache) => {
                // All but the last prompt token may come from the session (its logits are needed).
                let shared = common_prefix_len(&req.prompt_ids, cache.len()).min(req.prompt_ids.len() - 1);
                let kept = cache.truncate(shared);
                if kept > 0 {
                    self.metrics.prefix_cache_hits.fetch_add(1, Ordering::Relaxed);
                    self.metrics.prefix_cache_reused_tokens.fetch_add(kept as u64, Ordering::Relaxed);
                }
                (cache, kept)
            }
            None => match self.prefix_cache_for(&req.lora).copy_longest_prefix(&req.prompt_ids) {
                Some(r) => {
                    self.metrics.prefix_cache_hits.fetch_add(1, Ordering::Relaxed);
                    self.metrics.prefix_cache_reused_tokens.fetch_add(r.reused_tokens as u64, Ordering::Relaxed);
                    (r.cache, r.reused_tokens)
                }
                None => (self.model.new_cache(self.config.ctx), 0),
            },
        };
        let deadline = req.submitted + self.config.request_timeout;
        let dry =
            req.sampling.dry_active().then(|| self.dry_tables.get(self.tokenizer, &req.sampling.dry_sequence_breakers));
        let group = self.next_group;
        self.next_group += 1;
        let n = req.n.max(1);
        let base_seed = req.sampling.seed;
        for k in 1..n {
            // The other choices wait, cache-less, for the first one's prefill and then copy its cache.
            let mut follower = GenerationRequest {
                prompt_ids: req.prompt_ids.clone(),
                max_tokens: req.max_tokens,
                sampling: req.sampling.clone(),
                stop: req.stop.clone(),
                top_logprobs: req.top_logprobs,
                choice: req.choice + k,
                n: 1,
                session: None,
                lora: req.lora.clone(),
                events: req.events.clone(),
                submitted: req.submitted,
                context_shift: req.context_shift,
            };
            follower.sampling.seed = gemma_core::sampling::seed_for_choice(base_seed, k);
            let slot = self.slot_table().acquire(slot_task(&follower, group, reused));
            let mut seq = Sequence::new(follower, self.tokenizer, dry.clone(), ctx, reused, deadline, group, true);
            seq.set_slot(slot);
            if let Some(params) = &self.config.speculative {
                seq.speculate(params);
            }
            self.seqs.push(seq);
            self.caches.push(self.model.new_cache(0));
        }
        let slot = self.slot_table().acquire(slot_task(&req, group, reused));
        let mut seq = Sequence::new(req, self.tokenizer, dry, ctx, reused, deadline, group, false);
        seq.set_slot(slot);
        if let Some(params) = &self.config.speculative {
            seq.speculate(params);
        }
        self.seqs.push(seq);
        self.caches.push(cache);
        self.update_gauges();
    }

    /// The prefix cache, emptied first when its entries were computed with LoRA scales other than `lora`.
    fn prefix_cache_for(&mut self, lora: &[f32]) -> &mut PrefixCache<KvCache> {
        let key = lora_key(lora);
        if key != self.prefix_lora {
            self.prefix_cache = PrefixCache::new(self.prefix_cache.budget());
            self.prefix_lora = key;
        }
        &mut self.prefix_cache
    }

    /// A refused request leaves its session as it was (or frees the id of a session it would have started).
    fn refuse_session(
        &mut self,
        req: &mut GenerationRequest,
        cache: Option<KvCache>,
        session_len: usize,
        lora: Vec<f32>,
    ) {
        let Some(session) = &req.session else { return };
        match cache {
            Some(cache) => {
                req.prompt_ids.truncate(session_len);
                self.sessions.put(session.id.clone(), std::mem::take(&mut req.prompt_ids), cache, lora);
            }
            None => self.sessions.release(&session.id),
        }
    }

    /// One forward pass over every running sequence, then sampling for those that produced logits.
    fn step(&mut self) {
        let now = Instant::now();
        // Sequences whose client went away or whose time is up leave before the pass.
        for i in (0..self.seqs.len()).rev() {
            if let Some(done) = self.seqs[i].check_abort(now) {
                self.finish(i, done);
            }
        }
        if self.seqs.is_empty() {
            return;
        }

        self.shift_full_contexts();
        if self.seqs.is_empty() {
            return;
        }

        let mut batch = Batch::default();
        let mut decoding = 0;
        for (i, s) in self.seqs.iter_mut().enumerate() {
            if let Some(token) = s.pending_token() {
                let pos = self.caches[i].len();
                batch.push(BatchToken { token, pos, seq: i, logits: true });
                // Speculation: drafted tokens ride along, each with its logits (docs/speculative.md).
                for (k, &token) in s.make_draft(&self.caches[i]).iter().enumerate() {
                    batch.push(BatchToken { token, pos: pos + 1 + k, seq: i, logits: true });
                }
                decoding += 1;
            }
        }
        let mut budget =
            if decoding == 0 { self.config.prefill_chunk.max(IDLE_PREFILL_CHUNK) } else { self.config.prefill_chunk };
        for (i, s) in self.seqs.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let done = self.caches[i].len();
            let rest = s.prompt().get(done..).unwrap_or_default();
            if s.pending_token().is_some() || rest.is_empty() || s.awaiting_fork() {
                continue;
            }
            let take = rest.len().min(budget);
            for (k, &token) in rest[..take].iter().enumerate() {
                let last = k + 1 == rest.len();
                batch.push(BatchToken { token, pos: done + k, seq: i, logits: last });
            }
            budget -= take;
        }
        if batch.is_empty() {
            return;
        }
        let mut served: Vec<usize> = batch.tokens.iter().map(|t| t.seq).collect();
        served.dedup();
        self.metrics.engine_steps.fetch_add(1, Ordering::Relaxed);
        self.metrics.engine_step_tokens.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.metrics.engine_step_sequences_max.fetch_max(served.len() as u64, Ordering::Relaxed);

        let pass = if self.model.loras().is_empty() {
            self.model.forward_with(&batch, &mut self.caches, self.pool, &mut self.scratch)
        } else {
            let scales: Vec<Vec<f32>> = self.seqs.iter().map(|s| s.lora().to_vec()).collect();
            self.model.forward_lora(&batch, &mut self.caches, self.pool, &mut self.scratch, &scales)
        };
        if let Err(e) = pass {
            tracing::error!("forward pass failed: {e}");
            let message = format!("inference failed: {e}");
            self.slot_table().release_all();
            for i in (0..self.seqs.len()).rev() {
                self.seqs[i].send_error(&message);
                if let Some(id) = self.seqs[i].session() {
                    self.sessions.release(id);
                }
                self.seqs.swap_remove(i);
                self.caches.swap_remove(i);
            }
            return;
        }

        let logits = &self.scratch.logits;
        let mut finished = Vec::new();
        // Sequences whose part of the pass is over (speculation: the rows after a drafted token not chosen).
        let mut done = vec![false; self.seqs.len()];
        for row in 0..logits.len() {
            let Some(seq) = logits.batch_index.get(row).and_then(|&b| batch.tokens.get(b)).map(|t| t.seq) else {
                continue;
            };
            if done[seq] {
                continue;
            }
            // The prompt is done: the request's other choices copy its cache and sample from the same logits.
            if self.seqs[seq].pending_token().is_none() {
                let group = self.seqs[seq].group();
                for f in 0..self.seqs.len() {
                    if f == seq || !self.seqs[f].awaiting_fork() || self.seqs[f].group() != group {
                        continue;
                    }
                    self.caches[f] = self.caches[seq].copy_prefix(self.caches[seq].len());
                    self.seqs[f].forked();
                    let (cache_len, capacity) = (self.caches[f].len(), self.caches[f].capacity());
                    if let StepResult::Finished(reason) =
                        self.seqs[f].on_logits(logits.row(row), cache_len, capacity, self.metrics)
                    {
                        finished.push((f, reason));
                    }
                }
            }
            let cache_len = self.seqs[seq].cache_len_for_row(self.caches[seq].len());
            let capacity = self.caches[seq].capacity();
            let result = self.seqs[seq].on_logits(logits.row(row), cache_len, capacity, self.metrics);
            let ended = matches!(result, StepResult::Finished(_));
            match self.seqs[seq].verified(ended) {
                Verified::NextRow => {}
                Verified::Done(keep) => {
                    done[seq] = true;
                    if let Some(keep) = keep {
                        // Checked before the pass (`KvCache::can_go_back`); a refusal would be a bug.
                        if self.caches[seq].truncate(keep) != keep && !ended {
                            tracing::error!("a sequence's KV cache could not drop its rejected draft");
                            self.seqs[seq].send_error("inference failed: the KV cache could not go back");
                            finished.push((seq, None));
                            continue;
                        }
                    }
                }
            }
            if let StepResult::Finished(reason) = result {
                finished.push((seq, reason));
            }
        }
        self.update_slots();
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (seq, reason) in finished {
            self.finish(seq, reason);
        }
    }

    /// Shifts the context of every decoding sequence whose next token would fill its last position (those
    /// that asked for it); one whose context cannot be shifted ends there.
    fn shift_full_contexts(&mut self) {
        for i in (0..self.seqs.len()).rev() {
            let Some(shift) = self.seqs[i].context_shift() else { continue };
            let cache = &mut self.caches[i];
            let ctx = shift.ctx.min(cache.capacity());
            if self.seqs[i].pending_token().is_none() || cache.len() + 1 < ctx {
                continue;
            }
            let (keep, discard) = shift.rule.plan(cache.len(), ctx);
            match (discard > 0).then(|| self.model.shift_context(cache, keep, discard)) {
                Some(Ok(())) => {
                    tracing::debug!(keep, discard, "context shift");
                    self.seqs[i].shifted(keep, discard);
                }
                Some(Err(e)) => {
                    tracing::warn!("context shift refused: {e}");
                    self.finish(i, Some(FinishReason::Length));
                }
                None => self.finish(i, Some(FinishReason::Length)),
            }
        }
    }

    /// Ends sequence `i`: reports the finish (unless the client is gone) and hands its cache to its session or
    /// the prefix cache.
    fn finish(&mut self, i: usize, reason: Option<FinishReason>) {
        let seq = self.seqs.swap_remove(i);
        let cache = self.caches.swap_remove(i);
        self.slot_table().release(seq.slot());
        if seq.awaiting_fork() {
            // Never ran: it holds nothing worth keeping.
            seq.finish(reason);
            return;
        }
        let session = seq.session().map(str::to_string);
        let slot = seq.slot();
        let seq_lora = seq.lora().to_vec();
        let tokens = seq.finish(reason);
        self.slot_table().set_tokens(slot, tokens.clone());
        match session {
            Some(id) => self.sessions.put(id, tokens, cache, seq_lora),
            None if lora_key(seq_lora.as_slice()) == self.prefix_lora => self.prefix_cache.insert(tokens, cache),
            None => {}
        }
    }

    /// Saves, restores or erases a slot's KV cache, between steps.
    fn slot_action(&mut self, cmd: SlotCommand) {
        let result = self.run_slot_action(cmd.slot, cmd.action);
        let _ = cmd.reply.send(result);
    }

    fn run_slot_action(&mut self, slot: usize, action: SlotAction) -> Result<SlotOutcome, SlotActionError> {
        let (busy, tokens) = {
            let table = self.slot_table();
            let s = table.slots().get(slot);
            (s.is_some_and(|s| s.processing), s.map(|s| s.tokens.clone()).unwrap_or_default())
        };
        if busy {
            return Err(SlotActionError::Busy(slot));
        }
        match action {
            SlotAction::Save(path) => {
                // A finished sequence's cache is in the prefix cache (unless evicted since: then nothing).
                let (tokens, cache) = self
                    .prefix_cache
                    .copy_of(&tokens)
                    .unwrap_or_else(|| (Vec::new(), self.model.new_cache(self.config.ctx)));
                let bytes = cache.to_bytes(&tokens)?;
                // Written aside and renamed, so a reader never sees half a file.
                let partial = path.with_extension("partial");
                std::fs::write(&partial, &bytes)
                    .and_then(|()| std::fs::rename(&partial, &path))
                    .map_err(|source| SlotActionError::Write { path, source })?;
                Ok(SlotOutcome { tokens: tokens.len(), bytes: bytes.len() })
            }
            SlotAction::Restore(path) => {
                let bytes = std::fs::read(&path).map_err(|source| SlotActionError::Read { path, source })?;
                let (tokens, cache) = KvCache::from_bytes(&bytes, &self.model.new_cache(self.config.ctx))?;
                let n = tokens.len();
                if n > self.prefix_cache.budget() {
                    return Err(SlotActionError::TooLong { tokens: n, budget: self.prefix_cache.budget() });
                }
                self.prefix_cache.insert(tokens.clone(), cache);
                self.slot_table().set_tokens(slot, tokens);
                self.update_gauges();
                Ok(SlotOutcome { tokens: n, bytes: bytes.len() })
            }
            SlotAction::Erase => {
                let n = if tokens.is_empty() { 0 } else { self.prefix_cache.remove_covering(&tokens) };
                self.slot_table().set_tokens(slot, Vec::new());
                self.update_gauges();
                Ok(SlotOutcome { tokens: n, bytes: 0 })
            }
        }
    }

    fn slot_table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.state.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies each running sequence's progress into the slot table (one lock per step).
    fn update_slots(&self) {
        let mut table = self.slot_table();
        for (s, cache) in self.seqs.iter().zip(&self.caches) {
            let slot = s.slot();
            let before = table.slots().get(slot).and_then(|t| t.task.as_ref()).map_or(0, |t| t.n_decoded);
            let generated = s.generated();
            let new_line = generated
                .get(before..)
                .unwrap_or_default()
                .iter()
                .any(|&id| self.tokenizer.token_piece_bytes(id, false).is_some_and(|b| b.contains(&b'\n')));
            // A shifted cache holds fewer tokens than the prompt it has processed.
            let processed = if s.context_shifts() > 0 { s.prompt().len() } else { cache.len().min(s.prompt().len()) }
                .saturating_sub(s.reused());
            table.update(slot, processed, generated.len(), new_line);
        }
    }

    fn update_gauges(&self) {
        let m = self.metrics;
        m.running_sequences.store(self.seqs.len() as u64, Ordering::Relaxed);
        let prefix = self.prefix_cache.tokens() as u64;
        let running: usize = self.caches.iter().map(|c| c.len()).sum();
        let sessions = self.sessions.tokens() as u64;
        m.prefix_cache_tokens.store(prefix, Ordering::Relaxed);
        m.kv_tokens_in_use.store(prefix + sessions + running as u64, Ordering::Relaxed);
    }
}

/// What the slot table shows of a request's sequence when it is admitted.
fn slot_task(req: &GenerationRequest, group: u64, reused: usize) -> SlotTask {
    SlotTask {
        id_task: group,
        n_prompt_tokens: req.prompt_ids.len(),
        n_prompt_tokens_cache: reused,
        n_prompt_tokens_processed: 0,
        sampling: req.sampling.clone(),
        max_tokens: req.max_tokens,
        n_probs: req.top_logprobs.unwrap_or(0),
        n_decoded: 0,
        has_new_line: false,
        has_next_token: true,
    }
}

/// How many leading tokens of `prompt` a cache of `cached` positions may hold (a session's cache holds
/// exactly the session's tokens, which `prompt` starts with).
fn common_prefix_len(prompt: &[u32], cached: usize) -> usize {
    cached.min(prompt.len())
}

/// LoRA scales compared as the pass sees them: bit patterns, every zero alike, trailing zeros dropped (an
/// adapter at scale 0 and a missing one are the same).
fn lora_key(scales: &[f32]) -> Vec<u32> {
    let mut key: Vec<u32> = scales.iter().map(|&s| if s == 0.0 { 0 } else { s.to_bits() }).collect();
    while key.last() == Some(&0) {
        key.pop();
    }
    key
}
