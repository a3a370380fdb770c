//! One running sequence: its prompt, sampler, streaming decoder and stop strings, and what it has generated.
//! Its KV cache lives beside it in the engine (the forward pass takes all caches as one slice).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use gemma_core::sampling::{token_logprobs, DryBreakers};
use gemma_core::speculative::{prepare_draft, Drafter, SpecStats};
use gemma_core::stop::StopMatcher;
use gemma_core::tokenizer::StreamDecoder;
use gemma_core::{KvCache, SpeculativeParams};
use gemma_core::{Sampler, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use super::{Chunk, Event, Finish, FinishReason, GenerationRequest, RequestShift};
use crate::metrics::Metrics;

/// After a row of a pass was sampled: whether the sequence's next row (a drafted token the sampler chose) is to
/// be sampled too, or its part of the pass is over.
pub(super) enum Verified {
    NextRow,
    /// Over; `Some(len)`: the cache must go back to `len` positions (drafted tokens not chosen).
    Done(Option<usize>),
}

/// Self-speculative decoding of one sequence (`docs/speculative.md`).
struct Speculation {
    params: SpeculativeParams,
    drafter: Drafter,
    /// The tokens of the sequence: prompt and generated (the n-grams are looked for there).
    history: Vec<u32>,
    /// The tokens run after the pending one in the last pass, the cache length before that pass, and how many
    /// of that pass's rows were sampled.
    draft: Vec<u32>,
    start: usize,
    row: usize,
    stats: SpecStats,
}

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
    speculation: Option<Box<Speculation>>,
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
            speculation: None,
            lora: req.lora,
            prompt: req.prompt_ids,
            choice: req.choice,
            events: req.events,
        }
    }

    /// Decodes with n-gram drafts from now on.
    pub(super) fn speculate(&mut self, params: &SpeculativeParams) {
        let ctx = self.context_shift.map_or(usize::MAX, |s| s.ctx);
        let drafter = Drafter::new(params, &self.prompt, ctx);
        self.speculation = Some(Box::new(Speculation {
            params: params.clone(),
            drafter,
            history: self.prompt.clone(),
            draft: Vec::new(),
            start: 0,
            row: 0,
            stats: SpecStats::default(),
        }));
    }

    /// The tokens to run after the pending one in the next pass (empty: none), for a cache holding `cache`:
    /// no token past `max_tokens`, the context's last position left free, and only positions the cache can
    /// forget again.
    pub(super) fn make_draft(&mut self, cache: &KvCache) -> &[u32] {
        let (Some(sp), Some(pending)) = (self.speculation.as_deref_mut(), self.pending) else { return &[] };
        let len = cache.len();
        let ctx = self.context_shift.map_or(cache.capacity(), |s| s.ctx.min(cache.capacity()));
        let left = self.max_tokens.saturating_sub(self.generated.len() + 1);
        let history = &sp.history[..sp.history.len() - 1];
        // The server drafts with n-grams only (it refuses draft models at start-up): no thread pool here.
        let draft = prepare_draft(&mut sp.drafter, &sp.params, history, pending, left, cache, ctx, None);
        if !draft.is_empty() {
            sp.stats.drafts += 1;
            sp.stats.draft_n += draft.len();
        }
        sp.draft = draft;
        sp.start = len;
        sp.row = 0;
        &sp.draft
    }

    /// The positions its cache holds for the row about to be sampled: those of the pass up to that row's token
    /// (the drafted tokens after it may still be dropped).
    pub(super) fn cache_len_for_row(&self, cache_len: usize) -> usize {
        match self.speculation.as_deref() {
            Some(sp) if !sp.draft.is_empty() => sp.start + 1 + sp.row,
            _ => cache_len,
        }
    }

    /// After [`Sequence::on_logits`] sampled a row (`finished`: the sequence ended there): a drafted token that
    /// the sampler chose means the next row follows it; otherwise the pass is over for this sequence, and the
    /// drafted positions after the chosen ones are to be forgotten.
    pub(super) fn verified(&mut self, finished: bool) -> Verified {
        let pending = self.pending;
        let Some(sp) = self.speculation.as_deref_mut() else { return Verified::Done(None) };
        if sp.draft.is_empty() {
            return Verified::Done(None);
        }
        let k = sp.row;
        if !finished && k < sp.draft.len() && pending == Some(sp.draft[k]) {
            sp.row += 1;
            sp.stats.draft_n_accepted += 1;
            return Verified::NextRow;
        }
        sp.drafter.accept(k);
        sp.draft.clear();
        sp.row = 0;
        Verified::Done(Some(sp.start + 1 + k))
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
        if let Some(sp) = self.speculation.as_deref_mut() {
            sp.history.push(id);
        }

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
                    speculative: self.speculation.as_deref().map(|sp| sp.stats),
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
