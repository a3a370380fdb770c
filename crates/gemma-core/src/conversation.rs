//! A multi-turn conversation over one KV cache: what `gemma chat` and the C API's `gemma_chat` run.
//!
//! Each turn renders the whole conversation with the model's chat template and tokenizes it, keeps the part of
//! the cache that agrees with those ids and prefills only the rest, so a turn costs its own new tokens, not the
//! whole history. When the conversation and room for an answer no longer fit in the context, the oldest
//! exchanges are dropped (the system prompt stays), as llama.cpp's and ollama's chats do. With
//! `GenerationOptions::speculative` set, answers are decoded with n-gram drafts taken from the whole
//! conversation; they are the answers plain decoding gives (`docs/speculative.md`).

use gemma_ops::{KvType, ThreadPool};

use crate::chat::{reusable_prefix_len, ChatMessage, ChatTemplate, ChatTemplateError};
use crate::error::ModelError;
use crate::generate::{GenerationOptions, GenerationOutput, Session, TokenEvent};
use crate::lora::LoraError;
use crate::model::Model;
use crate::sampling::Sampler;
use crate::speculative::SpeculativeParams;
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("the chat template cannot render this conversation: {0}")]
    Template(#[source] ChatTemplateError),
    #[error(
        "the message is {tokens} tokens long and does not fit in the context of {context} with room for an answer"
    )]
    MessageTooLong { tokens: usize, context: usize },
    #[error("unknown role '{0}' (a conversation holds system, user and assistant messages)")]
    UnknownRole(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// What one turn did.
#[derive(Debug)]
pub struct Turn {
    /// The answer; its `prompt_ids` are the tokens prefilled for this turn (the rest came from the cache).
    pub output: GenerationOutput,
    /// Tokens of the rendered conversation whose keys and values were kept from the turns before.
    pub reused: usize,
    /// Oldest messages dropped to make room for this turn.
    pub dropped_messages: usize,
}

pub struct Conversation<'m> {
    tokenizer: &'m Tokenizer,
    template: &'m ChatTemplate,
    session: Session<'m>,
    /// The conversation; a system message, when set, is first.
    messages: Vec<ChatMessage>,
    /// The ids whose keys and values are in the session's cache, in order.
    cached: Vec<u32>,
    options: GenerationOptions,
    /// One sampler for the whole conversation, as llama.cpp's interactive mode keeps one: penalties and DRY
    /// see every turn, Mirostat's μ and the random draws go on from turn to turn.
    sampler: Sampler,
}

impl<'m> Conversation<'m> {
    /// An empty conversation with a context of `ctx` tokens (capped at the model's). An embedding model cannot
    /// hold one: it makes no text.
    pub fn new(
        model: &'m Model,
        tokenizer: &'m Tokenizer,
        template: &'m ChatTemplate,
        ctx: usize,
        options: GenerationOptions,
    ) -> Result<Conversation<'m>, ModelError> {
        Self::with_cache_types(model, tokenizer, template, ctx, model.cache_types(), options)
    }

    /// A conversation as [`Conversation::new`] whose KV cache stores keys and values in `cache_types` (keys,
    /// values) rather than the model's [`Model::cache_types`].
    pub fn with_cache_types(
        model: &'m Model,
        tokenizer: &'m Tokenizer,
        template: &'m ChatTemplate,
        ctx: usize,
        cache_types: (KvType, KvType),
        options: GenerationOptions,
    ) -> Result<Conversation<'m>, ModelError> {
        if model.is_embedding_model() {
            return Err(ModelError::EmbeddingModel(model.config.name.clone()));
        }
        let session = Session::with_cache_types(model, ctx, cache_types)?;
        let sampler = Sampler::for_model(options.sampling.clone(), tokenizer, session.context_len());
        Ok(Conversation { tokenizer, template, session, messages: Vec::new(), cached: Vec::new(), options, sampler })
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Tokens the context holds.
    pub fn context_len(&self) -> usize {
        self.session.context_len()
    }

    /// Tokens in the cache now.
    pub fn context_used(&self) -> usize {
        self.session.len()
    }

    /// Sets the system prompt; `None` or an empty text removes it. The next turn reuses the cache as far as
    /// the rendered conversation still agrees with it.
    pub fn set_system(&mut self, system: Option<&str>) {
        self.messages.retain(|m| m.role != "system");
        if let Some(text) = system.filter(|t| !t.is_empty()) {
            self.messages.insert(0, ChatMessage::system(text));
        }
    }

    /// Replaces the conversation (one saved earlier, say). The cache is kept: the next turn reuses whatever
    /// prefix the new conversation shares with it. Roles are checked here; whether the template accepts their
    /// order shows at the next turn.
    pub fn set_messages(&mut self, messages: Vec<ChatMessage>) -> Result<(), ConversationError> {
        if let Some(bad) = messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
            return Err(ConversationError::UnknownRole(bad.role.clone()));
        }
        self.messages = messages;
        Ok(())
    }

    /// Forgets the conversation but the system prompt, empties the cache and restarts the sampler's history
    /// and Mirostat (its random draws go on).
    pub fn clear(&mut self) {
        self.messages.retain(|m| m.role == "system");
        self.session.reset();
        self.cached.clear();
        self.sampler.reset();
    }

    /// Turns speculative decoding with n-grams on (or off with `None`) from the next turn on; the answers stay
    /// the same.
    pub fn set_speculative(&mut self, params: Option<SpeculativeParams>) {
        self.options.speculative = params;
    }

    /// Runs the conversation's passes at its own LoRA scales (`None`: the model's defaults, as
    /// [`Session::set_lora_scales`]). When the scales change, the cache is emptied: keys and values computed at
    /// the old scales are not reused, so the next turn prefills the whole conversation again (llama-server
    /// clears a slot's cache when its adapters change). Messages and the sampler stay.
    pub fn set_lora_scales(&mut self, scales: Option<Vec<f32>>) -> Result<(), LoraError> {
        if self.session.set_lora_scales(scales)? {
            self.session.reset();
            self.cached.clear();
        }
        Ok(())
    }

    /// The scales the conversation's passes run at (its own, else the model's defaults).
    pub fn lora_scales(&self) -> &[f32] {
        self.session.effective_lora_scales()
    }

    /// Index of the first message after the system prompt.
    fn history_start(&self) -> usize {
        usize::from(self.messages.first().is_some_and(|m| m.role == "system"))
    }

    /// Adds the user's `text`, generates the answer (reporting each token to `on_token`, as
    /// [`Session::generate_streaming`]) and adds both to the conversation; an answer cut short (`max_tokens`,
    /// `cancel`, a full context) is kept as far as it went. On an error the messages are as they were.
    pub fn send(
        &mut self,
        text: &str,
        pool: &ThreadPool,
        on_token: &mut dyn FnMut(&TokenEvent<'_>),
    ) -> Result<Turn, ConversationError> {
        let ctx = self.session.context_len();
        // Room left for the answer before old turns are dropped.
        let reserve = self.options.max_tokens.min(ctx / 2).max(1);
        let mut messages = self.messages.clone();
        messages.push(ChatMessage::user(text));
        let start = self.history_start();
        let mut dropped_messages = 0;
        let ids = loop {
            let ids = self.template.encode(self.tokenizer, &messages, true).map_err(ConversationError::Template)?;
            if ids.len() + reserve <= ctx {
                break ids;
            }
            // Drop the oldest user/assistant exchange, keeping the system prompt and the new message.
            let history = messages.len() - start - 1;
            if history == 0 {
                return Err(ConversationError::MessageTooLong { tokens: ids.len(), context: ctx });
            }
            let n = if history >= 2 && messages[start + 1].role == "assistant" { 2 } else { 1 };
            messages.drain(start..start + n);
            dropped_messages += n;
        };

        let keep = reusable_prefix_len(&self.cached, &ids);
        let reused = self.session.truncate(keep);
        // The sampler sees the conversation as the cache holds it, then the new tokens (generation accepts
        // those): exact even when the cache was cut back to a shorter shared prefix.
        self.sampler.forget_tokens();
        self.sampler.accept_all(&ids[..reused]);
        // Speculative decoding (`options.speculative`) looks for its n-grams in the whole conversation the cache
        // holds (earlier turns, this prompt, the answer so far), as llama-server's slot does in its whole prompt.
        let result = self.session.generate_streaming_after(
            &mut self.sampler,
            self.tokenizer,
            &ids[..reused],
            &ids[reused..],
            &self.options,
            pool,
            on_token,
        );
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                // The cache may hold part of the prompt; the next turn starts from a known state.
                self.session.reset();
                self.cached.clear();
                return Err(e.into());
            }
        };
        // The cache holds the prompt and the generated tokens that were fed back (not the last one).
        self.cached = ids;
        self.cached.extend_from_slice(&output.gen_ids);
        for &(keep, discard) in &output.context_shifts {
            self.cached.drain(keep..keep + discard);
        }
        self.cached.truncate(self.session.len());
        messages.push(ChatMessage::assistant(output.text.clone()));
        self.messages = messages;
        Ok(Turn { output, reused, dropped_messages })
    }
}
