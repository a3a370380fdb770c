//! Generation sessions: a sequence's KV cache plus the prefill / decode loop, streaming text as it comes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gemma_ops::{KvType, ThreadPool};

use crate::batch::Batch;
use crate::error::ModelError;
use crate::kv_cache::{KvCache, KvFileError};
use crate::lora::LoraError;
use crate::model::{Model, Scratch};
use crate::sampling::{Sampler, SamplingParams, TokenLogprobs};
use crate::speculative::{prepare_draft, Drafter, SpecStats, SpeculativeParams};
use crate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Prompt tokens per forward pass during prefill: bounds the activation memory of long prompts.
pub const PREFILL_CHUNK: usize = 512;

/// What to generate. Build it with `..Default::default()` so new fields don't break callers.
#[derive(Clone, Debug)]
pub struct GenerationOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Set from another thread (Ctrl-C, a closed connection) to stop after the current token.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Generation ends where one of these first appears in the text; it and what follows are not shown.
    pub stop: Vec<String>,
    /// `Some(n)`: report each generated token's log-probability and the `n` most likely alternatives
    /// (see [`TokenLogprobs`]: raw model logits, before any sampling stage).
    pub logprobs: Option<usize>,
    /// `Some`: when the context is full, make room as llama.cpp's `--context-shift` does and go on; `None`:
    /// stop there ([`StopReason::ContextFull`]).
    pub context_shift: Option<ContextShift>,
    /// `Some`: self-speculative decoding with n-grams (llama.cpp's `--spec-type ngram-*`, `docs/speculative.md`):
    /// tokens guessed from the context are checked in one forward pass. The tokens are the same as without it.
    pub speculative: Option<SpeculativeParams>,
}

/// llama.cpp's context shift. When a sequence's cache holds `ctx - 1` tokens and another must go in, the
/// `discard` tokens after the first `keep` are forgotten and the rest move back (their keys re-rotated, not
/// recomputed): by default half of what follows `keep`, so generation can go on past the context's end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextShift {
    /// Tokens at the start that are never dropped, BOS included (llama.cpp's `n_keep` after it adds BOS).
    pub keep: usize,
    /// Tokens dropped at a time; `None`: half of those after `keep` (llama-server's `n_discard` 0).
    pub discard: Option<usize>,
}

impl ContextShift {
    /// The `(keep, discard)` of a shift of a cache holding `len` of `ctx` tokens, as llama-server clamps them:
    /// `keep` at most `ctx - 4`, at least one token left after the dropped ones. `discard` 0: nothing can go.
    pub fn plan(&self, len: usize, ctx: usize) -> (usize, usize) {
        let keep = self.keep.min(ctx.saturating_sub(4)).min(len);
        let left = len - keep;
        (keep, self.discard.unwrap_or(left / 2).min(left.saturating_sub(1)))
    }
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            cancel: None,
            stop: Vec::new(),
            logprobs: None,
            context_shift: None,
            speculative: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (EOS, `<end_of_turn>`).
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// [`GenerationOptions::cancel`] was set.
    Cancelled,
    /// One of [`GenerationOptions::stop`] appeared in the text.
    StopString,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
            StopReason::StopString => "stop",
        }
    }
}

/// One step of [`Session::generate_streaming`].
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    /// The generated token; `None` for the final event after the last token.
    pub id: Option<u32>,
    /// Text released now. It may be empty (an unfinished character, or text that could begin a stop
    /// string) and may include text of earlier tokens that was held back.
    pub text: &'a str,
    /// With [`GenerationOptions::logprobs`], this token's log-probabilities.
    pub logprobs: Option<&'a TokenLogprobs>,
}

#[derive(Clone, Debug)]
pub struct GenerationOutput {
    pub prompt_ids: Vec<u32>,
    /// Generated ids, the end-of-generation token excluded. After a stop string they include the
    /// token(s) that completed it, though `text` does not.
    pub gen_ids: Vec<u32>,
    /// The text shown: up to, not including, a stop string.
    pub text: String,
    pub stop_reason: StopReason,
    /// The end-of-generation token that ended it, with [`StopReason::EndOfGeneration`].
    pub end_token: Option<u32>,
    /// The stop string that ended generation, with [`StopReason::StopString`].
    pub stop_string: Option<String>,
    /// One entry per id of `gen_ids` when [`GenerationOptions::logprobs`] was set, else empty.
    pub logprobs: Vec<TokenLogprobs>,
    /// The context shifts made on the way, in order, as `(keep, discard)` ([`GenerationOptions::context_shift`]):
    /// the cache's tokens are the prompt and the generated tokens with `discard` tokens after the first
    /// `keep` removed at each.
    pub context_shifts: Vec<(usize, usize)>,
    /// Drafts made and tokens accepted with [`GenerationOptions::speculative`] (zeros without it).
    pub speculative: SpecStats,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

impl GenerationOutput {
    pub fn prefill_tok_s(&self) -> f64 {
        tokens_per_second(self.prompt_ids.len(), self.prefill_secs)
    }
    /// Decode speed over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tok_s(&self) -> f64 {
        tokens_per_second(self.gen_ids.len().saturating_sub(1), self.decode_secs)
    }
}

/// Tokens per second (0 when no time was measured).
pub fn tokens_per_second(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Whether two sets of LoRA scales make the same passes: a missing entry is 0, and 0 equals -0.
pub fn same_lora_scales(a: &[f32], b: &[f32]) -> bool {
    (0..a.len().max(b.len())).all(|i| a.get(i).copied().unwrap_or(0.0) == b.get(i).copied().unwrap_or(0.0))
}

/// One sequence being generated.
pub struct Session<'m> {
    model: &'m Model,
    cache: KvCache,
    scratch: Scratch,
    /// LoRA scales of this session's passes (by adapter id); `None`: the model's defaults.
    lora_scales: Option<Vec<f32>>,
}

impl<'m> Session<'m> {
    /// A session whose context holds up to `ctx` tokens (capped at the model's context length).
    pub fn new(model: &'m Model, ctx: usize) -> Session<'m> {
        Session { model, cache: model.new_cache(ctx), scratch: Scratch::default(), lora_scales: None }
    }

    /// A session as [`Session::new`] whose KV cache stores keys and values in `types` (keys, values) rather
    /// than the model's [`Model::cache_types`].
    pub fn with_cache_types(model: &'m Model, ctx: usize, types: (KvType, KvType)) -> Result<Session<'m>, ModelError> {
        Ok(Session {
            model,
            cache: model.new_cache_of_types(ctx, types)?,
            scratch: Scratch::default(),
            lora_scales: None,
        })
    }

    /// Runs this session's passes with its own LoRA scales (`scales[id]` for adapter `id`, a missing entry is 0)
    /// instead of the model's defaults ([`Model::lora_scales`]); `None` goes back to the defaults. Returns
    /// whether the scales the passes use changed. The cache is left alone: keys and values computed at other
    /// scales stay in it (clear it with [`Session::reset`] to recompute them, as
    /// [`crate::Conversation::set_lora_scales`] does).
    pub fn set_lora_scales(&mut self, scales: Option<Vec<f32>>) -> Result<bool, LoraError> {
        if let Some(&bad) = scales.iter().flatten().find(|s| !s.is_finite()) {
            return Err(LoraError::BadScale(bad));
        }
        let before = self.effective_lora_scales().to_vec();
        self.lora_scales = scales;
        Ok(!same_lora_scales(&before, self.effective_lora_scales()))
    }

    /// The session's own LoRA scales, if it has any.
    pub fn lora_scales(&self) -> Option<&[f32]> {
        self.lora_scales.as_deref()
    }

    /// The LoRA scales the session's passes run at: its own, else the model's defaults.
    pub fn effective_lora_scales(&self) -> &[f32] {
        self.lora_scales.as_deref().unwrap_or(self.model.lora_scales())
    }

    /// One forward pass of `batch` at the session's LoRA scales; the logits are in `self.scratch`.
    fn forward(&mut self, batch: &Batch, pool: &ThreadPool) -> Result<(), ModelError> {
        let cache = std::slice::from_mut(&mut self.cache);
        match &self.lora_scales {
            Some(scales) => {
                self.model.forward_lora(batch, cache, pool, &mut self.scratch, std::slice::from_ref(scales))?
            }
            None => self.model.forward_with(batch, cache, pool, &mut self.scratch)?,
        };
        Ok(())
    }

    pub fn context_len(&self) -> usize {
        self.cache.capacity()
    }
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.cache.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
    pub fn reset(&mut self) {
        self.cache.clear();
    }
    /// Keeps the first `len` tokens of the cache (for a chat turn that shares a prefix with the last) and
    /// returns how many were kept: fewer than asked (0) when a sliding-window layer has already overwritten
    /// what that position needs.
    pub fn truncate(&mut self, len: usize) -> usize {
        self.cache.truncate(len)
    }

    /// A context shift ([`Model::shift_context`]): forgets `discard` tokens after the first `keep`.
    pub fn shift_context(&mut self, keep: usize, discard: usize) -> Result<(), ModelError> {
        self.model.shift_context(&mut self.cache, keep, discard)
    }

    /// Forgets the positions from `len` on (drafted tokens the model did not choose). The caller checked with
    /// [`KvCache::can_go_back`] that it is possible.
    fn rewind(&mut self, len: usize) -> Result<(), ModelError> {
        if self.cache.truncate(len) != len {
            return Err(ModelError::BadBatch(format!("the KV cache could not go back to {len} positions")));
        }
        Ok(())
    }

    /// The cache as a file's bytes ([`KvCache::to_bytes`]), with `tokens`, the ids of its positions.
    pub fn save_state(&self, tokens: &[u32]) -> Result<Vec<u8>, KvFileError> {
        self.cache.to_bytes(tokens)
    }

    /// Replaces the cache with one written by [`Session::save_state`] for this model and returns the token
    /// ids of its positions. On an error the session is left as it was.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<Vec<u32>, KvFileError> {
        let (tokens, cache) = KvCache::from_bytes(bytes, &self.cache)?;
        self.cache = cache;
        Ok(tokens)
    }

    /// Appends `ids` to the sequence and returns the logits after the last one.
    pub fn prefill(&mut self, ids: &[u32], pool: &ThreadPool) -> Result<&[f32], ModelError> {
        if ids.is_empty() {
            return Err(ModelError::BadBatch("nothing to prefill".into()));
        }
        let end = self.cache.len() + ids.len();
        if end > self.cache.capacity() {
            return Err(ModelError::ContextFull { pos: end - 1, ctx: self.cache.capacity() });
        }
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let batch = Batch::sequence(chunk, self.cache.len(), 0, false);
            self.forward(&batch, pool)?;
        }
        Ok(self.scratch.logits.row(0))
    }

    /// Runs the prompt and samples up to `max_tokens` tokens, calling `on_text` with each piece of
    /// complete UTF-8 text as soon as it exists (and no stop string can begin in it).
    pub fn generate(
        &mut self,
        tokenizer: &Tokenizer,
        prompt_ids: &[u32],
        opts: &GenerationOptions,
        pool: &ThreadPool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationOutput, ModelError> {
        self.generate_streaming(tokenizer, prompt_ids, opts, pool, &mut |event| {
            if !event.text.is_empty() {
                on_text(event.text)
            }
        })
    }

    /// [`Session::generate`] that reports every generated token as it comes, with its log-probabilities
    /// when asked for, then one last event (`id: None`) with the text still held back at the end.
    pub fn generate_streaming(
        &mut self,
        tokenizer: &Tokenizer,
        prompt_ids: &[u32],
        opts: &GenerationOptions,
        pool: &ThreadPool,
        on_token: &mut dyn FnMut(&TokenEvent<'_>),
    ) -> Result<GenerationOutput, ModelError> {
        let mut sampler = Sampler::for_model(opts.sampling.clone(), tokenizer, self.cache.capacity());
        self.generate_streaming_with(&mut sampler, tokenizer, prompt_ids, opts, pool, on_token)
    }

    /// [`Session::generate_streaming`] with a sampler that lives longer than one call (a conversation keeps
    /// one, as llama.cpp's interactive mode does: penalties and DRY see every turn, the random draws go on).
    /// `opts.sampling` is not looked at; the prompt and the generated tokens (not an end-of-generation one) are
    /// accepted into `sampler`.
    pub fn generate_streaming_with(
        &mut self,
        sampler: &mut Sampler,
        tokenizer: &Tokenizer,
        prompt_ids: &[u32],
        opts: &GenerationOptions,
        pool: &ThreadPool,
        on_token: &mut dyn FnMut(&TokenEvent<'_>),
    ) -> Result<GenerationOutput, ModelError> {
        self.generate_streaming_after(sampler, tokenizer, &[], prompt_ids, opts, pool, on_token)
    }

    /// [`Session::generate_streaming_with`] told which tokens the cache already holds (`earlier`, one per
    /// position): speculative decoding looks for its n-grams there too, as llama.cpp looks in the whole context.
    /// Nothing else changes.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_streaming_after(
        &mut self,
        sampler: &mut Sampler,
        tokenizer: &Tokenizer,
        earlier: &[u32],
        prompt_ids: &[u32],
        opts: &GenerationOptions,
        pool: &ThreadPool,
        on_token: &mut dyn FnMut(&TokenEvent<'_>),
    ) -> Result<GenerationOutput, ModelError> {
        let ctx = self.cache.capacity();
        if self.cache.len() + prompt_ids.len() > ctx {
            return Err(ModelError::ContextFull { pos: self.cache.len() + prompt_ids.len() - 1, ctx });
        }
        // Penalties and DRY count the prompt too, as llama.cpp's samplers do.
        sampler.accept_all(prompt_ids);
        let mut decoder = StreamDecoder::new(tokenizer);
        let mut stops = StopMatcher::new(opts.stop.iter().cloned());
        let mut text = String::new();
        let mut logprobs = Vec::new();

        let t0 = Instant::now();
        self.prefill(prompt_ids, pool)?;
        let prefill_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let mut gen_ids = Vec::new();
        let mut end_token = None;
        let mut context_shifts = Vec::new();
        let cancelled = || opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));

        // Speculation: the tokens of the cache (the n-grams are looked for there), the drafter, and the draft
        // being checked. The last forward pass ran `[x, draft...]` from position `batch_start`; logits row `row`
        // follows `x` and the first `row` drafted tokens, all of which the sampler chose.
        let mut history: Vec<u32> = Vec::new();
        let mut drafter = None;
        if let Some(params) = &opts.speculative {
            history.extend_from_slice(earlier);
            history.extend_from_slice(prompt_ids);
            drafter = Some(Drafter::new(params, &history, ctx));
        }
        let mut stats = SpecStats::default();
        let mut draft: Vec<u32> = Vec::new();
        let mut row = 0;
        let mut batch_start = 0;

        let stop_reason = loop {
            if gen_ids.len() >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            let logits = self.scratch.logits.row(row);
            let id = sampler.sample(logits);
            if tokenizer.is_end_of_generation(id) {
                end_token = Some(id);
                break StopReason::EndOfGeneration;
            }
            let token_logprobs = opts.logprobs.map(|n| sampler.logprobs(logits, id, n));
            sampler.accept_generated(id);
            gen_ids.push(id);
            if drafter.is_some() {
                history.push(id);
            }
            let step = stops.push(&decoder.push(id));
            text.push_str(step.text);
            on_token(&TokenEvent { id: Some(id), text: step.text, logprobs: token_logprobs.as_ref() });
            logprobs.extend(token_logprobs);
            if step.stopped {
                break StopReason::StopString;
            }
            if gen_ids.len() >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            if row < draft.len() && draft[row] == id {
                // The sampler chose the drafted token: it is in the cache already and the next row follows it.
                if cancelled() {
                    break StopReason::Cancelled;
                }
                row += 1;
                stats.draft_n_accepted += 1;
                continue;
            }
            if !draft.is_empty() {
                // Another token (or the one after a fully accepted draft): forget the drafted positions not chosen.
                if let Some(d) = drafter.as_mut() {
                    d.accept(row);
                }
                self.rewind(batch_start + 1 + row)?;
                draft.clear();
                row = 0;
            }
            // llama.cpp shifts when the token would fill the last position; without a shift it goes on
            // until the cache is full.
            if let Some(shift) = opts.context_shift.filter(|_| self.cache.len() + 1 >= ctx) {
                let (keep, discard) = shift.plan(self.cache.len(), ctx);
                if discard == 0 {
                    break StopReason::ContextFull;
                }
                self.shift_context(keep, discard)?;
                context_shifts.push((keep, discard));
            }
            if self.cache.len() >= ctx {
                break StopReason::ContextFull;
            }
            if cancelled() {
                break StopReason::Cancelled;
            }
            if let (Some(d), Some(params)) = (drafter.as_mut(), &opts.speculative) {
                let left = opts.max_tokens - gen_ids.len() - 1;
                let history = &history[..history.len() - 1];
                draft = prepare_draft(d, params, history, id, left, &self.cache, ctx, Some(pool));
            }
            batch_start = self.cache.len();
            let batch = if draft.is_empty() {
                Batch::sequence(&[id], batch_start, 0, true)
            } else {
                stats.drafts += 1;
                stats.draft_n += draft.len();
                let ids: Vec<u32> = std::iter::once(id).chain(draft.iter().copied()).collect();
                Batch::sequence(&ids, batch_start, 0, true)
            };
            self.forward(&batch, pool)?;
        };
        if !draft.is_empty() {
            // Stopped inside a draft: the cache keeps what it would hold without speculation (the tokens before
            // the last one sampled).
            if let Some(d) = drafter.as_mut() {
                d.accept(row);
            }
            self.rewind(batch_start + 1 + row)?;
        }
        // Bytes of an unfinished character and text held back for a stop string that never came.
        let tail_piece = decoder.finish();
        let mut tail = stops.push(&tail_piece).text.to_string();
        let stop_string = stops.matched().map(str::to_string);
        tail.push_str(stops.finish());
        text.push_str(&tail);
        on_token(&TokenEvent { id: None, text: &tail, logprobs: None });
        let stop_reason = if stop_string.is_some() { StopReason::StopString } else { stop_reason };
        Ok(GenerationOutput {
            prompt_ids: prompt_ids.to_vec(),
            gen_ids,
            text,
            stop_reason,
            end_token,
            stop_string,
            logprobs,
            context_shifts,
            speculative: stats,
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
        })
    }
}
