//! One running sequence: its prompt, sampler, streaming decoder and stop strings, and what it has generated.
//! Its KV cache lives beside it in the engine (the forward pass takes all caches as one slice).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use gemma_core::sampling::{token_logprobs, DryBreakers};
use gemma_core::stop::StopMatcher;
use gemma_core::tokenizer::StreamDecoder;
use gemma_core::{Sampler, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use super::{Chunk, Event, Finish, FinishReason, GenerationRequest, RequestShift};
use crate::metrics::Metrics;

/// What a step did to a sequence.
pub(super) enum StepResult {
    Continue,
    /// The sequence is over; `None` when the client is gone and nothing more is to be sent.
    Finished(Option<FinishReason>),
}

pub(super) struct Sequence<'t> {
    prompt: Vec<u32>,
    max_tokens: usize,
    top_logprobs: Option<usize>,
    choice: usize,
    events: UnboundedSender<(usize, Event)>,
    submitted: Instant,
    deadline: Instant,
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stop: StopMatcher,
    generated: Vec<u32>,
    /// Sampled but not yet run through the model.
    pending: Option<u32>,
    /// Prompt tokens taken from the prefix cache.
    reused: usize,
    last_token_at: Option<Instant>,
    /// The request this sequence is a choice of.
    group: u64,
    /// Waits for the request's first choice to finish the prompt, then copies its cache.
    awaiting_fork: bool,
    session: Option<String>,
    /// Its place in the slot table.
    slot: usize,
    context_shift: Option<RequestShift>,
    /// The context shifts made, as `(keep, discard)`.
    shifts: Vec<(usize, usize)>,
    /// LoRA scales by adapter id.
    lora: Vec<f32>,
}

impl<'t> Sequence<'t> {
    /// `dry_breakers`: DRY's breakers for the request's list, when DRY is on; `ctx`: the context length,
    /// what DRY's `dry_penalty_last_n = -1` stands for.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        req: GenerationRequest,
        tokenizer: &'t Tokenizer,
        dry_breakers: Option<Arc<DryBreakers>>,
        ctx: usize,
        reused: usize,
        deadline: Instant,
        group: u64,
        awaiting_fork: bool,
    ) -> Self {
        let mut sampler = Sampler::with_dry_breakers(req.sampling, dry_breakers.unwrap_or_default(), ctx);
        if sampler.params().grammar.is_some() {
            sampler.set_grammar_vocab(tokenizer.grammar_vocab());
        }
        // Penalties and DRY look at the prompt too, as in llama-server.
        sampler.accept_all(&req.prompt_ids);
        Sequence {
            max_tokens: req.max_tokens,
            top_logprobs: req.top_logprobs,
            submitted: req.submitted,
            deadline,
            tokenizer,
            sampler,
            decoder: StreamDecoder::new(tokenizer),
            stop: StopMatcher::new(req.stop.iter().cloned()),
            generated: Vec::new(),
            pending: None,
            reused,
            last_token_at: None,
            group,
            awaiting_fork,
            session: req.session.map(|s| s.id),
            slot: 0,
            context_shift: req.context_shift,
            shifts: Vec::new(),
            lora: req.lora,
            prompt: req.prompt_ids,
            choice: req.choice,
            events: req.events,
        }
    }

    pub(super) fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    pub(super) fn slot(&self) -> usize {
        self.slot
    }

    pub(super) fn set_slot(&mut self, slot: usize) {
        self.slot = slot;
    }

    pub(super) fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Prompt tokens taken from the prefix cache (or the session).
    pub(super) fn reused(&self) -> usize {
        self.reused
    }

    pub(super) fn group(&self) -> u64 {
        self.group
    }

    pub(super) fn awaiting_fork(&self) -> bool {
        self.awaiting_fork
    }

    /// Its cache now holds the whole prompt, copied from the request's first choice.
    pub(super) fn forked(&mut self) {
        self.awaiting_fork = false;
    }

    /// The scale of each LoRA adapter for this sequence, by id.
    pub(super) fn lora(&self) -> &[f32] {
        &self.lora
    }

    pub(super) fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    pub(super) fn context_shift(&self) -> Option<RequestShift> {
        self.context_shift
    }

    /// Its cache forgot `discard` tokens after the first `keep`.
    pub(super) fn shifted(&mut self, keep: usize, discard: usize) {
        self.shifts.push((keep, discard));
    }

    pub(super) fn context_shifts(&self) -> usize {
        self.shifts.len()
    }

    /// The token to run next when the sequence is decoding.
    pub(super) fn pending_token(&self) -> Option<u32> {
        self.pending
    }

    /// `Some` when the sequence must end before the next pass: its client is gone (`Some(None)`) or its time
    /// is up.
    pub(super) fn check_abort(&self, now: Instant) -> Option<Option<FinishReason>> {
        if self.events.is_closed() {
            Some(None)
        } else if now >= self.deadline {
            Some(Some(FinishReason::Length))
        } else {
            None
        }
    }

    /// Samples the next token from the logits after the last token run. `cache_len` positions are now in the
    /// sequence's cache, which holds `capacity` at most.
    pub(super) fn on_logits(
        &mut self,
        logits: &[f32],
        cache_len: usize,
        capacity: usize,
        metrics: &Metrics,
    ) -> StepResult {
        let id = self.sampler.sample(logits);
        self.sampler.accept_generated(id);
        let logprob = self.top_logprobs.map(|k| token_logprobs(logits, id, k));

        let now = Instant::now();
        match self.last_token_at {
            None => metrics.observe_ttft(now.duration_since(self.submitted).as_secs_f64()),
            Some(prev) => metrics.observe_inter_token(now.duration_since(prev).as_secs_f64()),
        }
        self.last_token_at = Some(now);
        if self.tokenizer.is_end_of_generation(id) {
            return StepResult::Finished(Some(FinishReason::Stop));
        }
        metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
        self.generated.push(id);

        let piece = self.decoder.push(id);
        let step = self.stop.push(&piece);
        let (text, stopped) = (step.text.to_string(), step.stopped);
        if self.events.send((self.choice, Event::Chunk(Chunk { text, token: Some(id), logprob }))).is_err() {
            return StepResult::Finished(None);
        }
        if stopped {
            return StepResult::Finished(Some(FinishReason::Stop));
        }
        // With a context shift the engine makes room before the next pass.
        if self.generated.len() >= self.max_tokens || (self.context_shift.is_none() && cache_len >= capacity) {
            return StepResult::Finished(Some(FinishReason::Length));
        }
        self.pending = Some(id);
        StepResult::Continue
    }

    /// Sends what is left and the finish (nothing when `reason` is `None`: the client is gone). Returns the
    /// tokens the sequence's cache covers (a prefix of prompt + generated less what context shifts dropped;
    /// the prefix cache trims the rest).
    pub(super) fn finish(mut self, reason: Option<FinishReason>) -> Vec<u32> {
        if let Some(mut reason) = reason {
            let tail = self.decoder.finish();
            let step = self.stop.push(&tail);
            let mut text = step.text.to_string();
            if step.stopped {
                reason = FinishReason::Stop;
            } else {
                text.push_str(self.stop.finish());
            }
            if !text.is_empty() {
                let _ = self.events.send((self.choice, Event::Chunk(Chunk { text, token: None, logprob: None })));
            }
            let stop_word = self.stop.matched().and_then(|w| self.stop.stops().iter().position(|s| s == w));
            let _ = self.events.send((
                self.choice,
                Event::Done(Finish {
                    reason,
                    prompt_tokens: self.prompt.len(),
                    completion_tokens: self.generated.len(),
                    cached_tokens: self.reused,
                    stop_word,
                    context_shifts: self.shifts.len(),
                }),
            ));
        }
        let mut tokens = self.prompt;
        tokens.extend_from_slice(&self.generated);
        for (keep, discard) in self.shifts {
            tokens.drain(keep..keep + discard);
        }
        tokens
    }

    pub(super) fn send_error(&self, message: &str) {
        let _ = self.events.send((self.choice, Event::Error(message.to_string())));
    }

    pub(super) fn fail(self, message: &str) {
        self.send_error(message);
    }
}
