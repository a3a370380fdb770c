//! The inference engine: one OS thread owns the model, the thread pool and every sequence, and runs
//! continuous batching. Each step builds one batch with the next token of every decoding sequence plus a
//! bounded chunk of prompt tokens of sequences still prefilling, so the weights are read once per step for all
//! of them. New requests join between steps; finished sequences leave their KV cache to the prefix cache.

pub mod prefix_cache;
mod sequence;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gemma_core::chat::ChatTemplate;
use gemma_core::sampling::TokenLogprobs;
use gemma_core::{Batch, BatchToken, KvCache, Model, SamplingParams, Scratch, Tokenizer};
use gemma_ops::ThreadPool;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use prefix_cache::PrefixCache;
use sequence::{Sequence, StepResult};

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
    /// Which choice of its request this is: events go out tagged with it.
    pub choice: usize,
    /// Shared by the choices of one request; dropping the receiver cancels them all.
    pub events: UnboundedSender<(usize, Event)>,
    pub submitted: Instant,
}

/// What a sequence reports, in order: chunks, then exactly one `Done` or `Error`.
#[derive(Clone, Debug)]
pub enum Event {
    Chunk(Chunk),
    Done(Finish),
    Error(String),
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
}

/// Loading state shared between the engine thread and the HTTP handlers.
#[derive(Default)]
pub struct EngineState {
    pub loaded: OnceLock<Arc<LoadedModel>>,
    pub failed: Mutex<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
}

/// The HTTP side's end of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<GenerationRequest>,
    pub state: Arc<EngineState>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Queues a request; never blocks.
    pub fn submit(&self, req: GenerationRequest) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let r = self.tx.try_send(req);
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
    let thread = std::thread::Builder::new().name("gemma-engine".into()).spawn(move || match load(&config) {
        Ok((model, loaded)) => {
            let tokenizer = loaded.tokenizer.clone();
            let _ = state.loaded.set(Arc::new(loaded));
            let _ = loaded_tx.send(Ok(()));
            tracing::info!(model = %config.model, ctx = config.ctx, parallel = config.parallel, "model loaded");
            let pool = ThreadPool::new(config.threads);
            Engine::new(&model, &tokenizer, &pool, &config, &metrics).run(rx);
        }
        Err(e) => {
            tracing::error!("cannot load the model: {e:#}");
            *state.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
            let _ = loaded_tx.send(Err(format!("{e:#}")));
        }
    })?;
    Ok(SpawnedEngine { handle, thread, loaded: loaded_rx })
}

fn load(config: &EngineConfig) -> anyhow::Result<(Model, LoadedModel)> {
    use anyhow::Context as _;
    let path = gemma_fetch::resolve_model(&config.model)?;
    let model = Model::open(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&model.file).context("cannot load the tokenizer")?;
    let chat = ChatTemplate::from_gguf(&model.file, &tokenizer).context("cannot load the chat template")?;
    let id = if std::path::Path::new(&config.model).exists() {
        path.file_stem().map_or_else(|| config.model.clone(), |s| s.to_string_lossy().into_owned())
    } else {
        config.model.clone()
    };
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let loaded = LoadedModel {
        id,
        ctx: config.ctx.min(model.config.context_length),
        vocab_size: model.config.vocab_size,
        tokenizer: Arc::new(tokenizer),
        chat,
        created,
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
    scratch: Scratch,
}

impl<'a> Engine<'a> {
    fn new(
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        pool: &'a ThreadPool,
        config: &'a EngineConfig,
        metrics: &'a Metrics,
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
            scratch: Scratch::default(),
        }
    }

    fn run(mut self, rx: Receiver<GenerationRequest>) {
        let mut open = true;
        loop {
            // Admit waiting requests between steps; block only when there is nothing to do.
            while open && self.seqs.len() < self.config.parallel {
                let next = if self.seqs.is_empty() {
                    rx.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    rx.try_recv()
                };
                match next {
                    Ok(req) => {
                        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                        self.admit(req);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if self.seqs.is_empty() {
                if open {
                    continue;
                }
                return;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if result.is_err() {
                // A bug must not wedge the server: fail what is running and carry on with a clean slate.
                tracing::error!("the engine step panicked; failing {} sequences", self.seqs.len());
                for s in self.seqs.drain(..) {
                    s.fail("internal error in the inference engine");
                }
                self.caches.clear();
                self.scratch = Scratch::default();
            }
            self.update_gauges();
        }
    }

    fn admit(&mut self, req: GenerationRequest) {
        if req.events.is_closed() {
            return;
        }
        let ctx = self.config.ctx.min(self.model.config.context_length);
        if req.prompt_ids.is_empty() || req.prompt_ids.len() >= ctx {
            let _ = req.events.send((
                req.choice,
                Event::Error(format!(
                    "the prompt has {} tokens; it must have between 1 and {} tokens",
                    req.prompt_ids.len(),
                    ctx - 1
                )),
            ));
            return;
        }
        if let Some(bad) = req.prompt_ids.iter().find(|&&id| id as usize >= self.model.config.vocab_size) {
            let _ = req.events.send((req.choice, Event::Error(format!("token id {bad} is outside the vocabulary"))));
            return;
        }
        self.metrics.prompt_tokens.fetch_add(req.prompt_ids.len() as u64, Ordering::Relaxed);
        let (cache, reused) = match self.prefix_cache.take_longest_prefix(&req.prompt_ids) {
            Some(r) => {
                self.metrics.prefix_cache_hits.fetch_add(1, Ordering::Relaxed);
                self.metrics.prefix_cache_reused_tokens.fetch_add(r.reused_tokens as u64, Ordering::Relaxed);
                (r.cache, r.reused_tokens)
            }
            None => (self.model.new_cache(self.config.ctx), 0),
        };
        let deadline = req.submitted + self.config.request_timeout;
        self.seqs.push(Sequence::new(req, self.tokenizer, reused, deadline));
        self.caches.push(cache);
        self.update_gauges();
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

        let mut batch = Batch::default();
        let mut decoding = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            if let Some(token) = s.pending_token() {
                batch.push(BatchToken { token, pos: self.caches[i].len(), seq: i, logits: true });
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
            if s.pending_token().is_some() || rest.is_empty() {
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

        if let Err(e) = self.model.forward_with(&batch, &mut self.caches, self.pool, &mut self.scratch) {
            tracing::error!("forward pass failed: {e}");
            let message = format!("inference failed: {e}");
            for i in (0..self.seqs.len()).rev() {
                self.seqs[i].send_error(&message);
                self.seqs.swap_remove(i);
                self.caches.swap_remove(i);
            }
            return;
        }

        let logits = &self.scratch.logits;
        let mut finished = Vec::new();
        for row in 0..logits.len() {
            let Some(seq) = logits.batch_index.get(row).and_then(|&b| batch.tokens.get(b)).map(|t| t.seq) else {
                continue;
            };
            let cache_len = self.caches[seq].len();
            let capacity = self.caches[seq].capacity();
            match self.seqs[seq].on_logits(logits.row(row), cache_len, capacity, self.metrics) {
                StepResult::Continue => {}
                StepResult::Finished(reason) => finished.push((seq, reason)),
            }
        }
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (seq, reason) in finished {
            self.finish(seq, reason);
        }
    }

    /// Ends sequence `i`: reports the finish (unless the client is gone) and hands its cache to the prefix cache.
    fn finish(&mut self, i: usize, reason: Option<FinishReason>) {
        let seq = self.seqs.swap_remove(i);
        let cache = self.caches.swap_remove(i);
        let tokens = seq.finish(reason);
        self.prefix_cache.insert(tokens, cache);
    }

    fn update_gauges(&self) {
        let m = self.metrics;
        m.running_sequences.store(self.seqs.len() as u64, Ordering::Relaxed);
        let prefix = self.prefix_cache.tokens() as u64;
        let running: usize = self.caches.iter().map(|c| c.len()).sum();
        m.prefix_cache_tokens.store(prefix, Ordering::Relaxed);
        m.kv_tokens_in_use.store(prefix + running as u64, Ordering::Relaxed);
    }
}
