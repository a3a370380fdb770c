//! Conversations: `gemma_chat`, a `gemma_core::Conversation` whose KV cache lives from turn to turn.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gemma_core::chat::ChatMessage;
use gemma_core::{Conversation, ConversationError, ModelError, SpecStats, SpecType, SpeculativeParams};

use crate::c_str::{read_str, write_opt};
use crate::error::{code_call, value_call, CapiError};
use crate::generate::{
    c_token_handler, cache_types, context_shift, defaults, event_handler, hand_out_text, options_with_stop, template,
    GemmaGenerationInfo, GemmaParams, GemmaTokenCallback,
};
use crate::lora::{check_index, check_scale, ChatHold};
use crate::model::{model_ref, saturating_c_int, GemmaModel};

/// `gemma_chat_info` of the C API.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GemmaChatInfo {
    /// `n_prompt_tokens` counts the tokens prefilled for this turn only.
    pub generation: GemmaGenerationInfo,
    pub n_reused_tokens: i32,
    pub n_dropped_messages: i32,
    pub n_context_tokens: i32,
}

/// A message as C reads it: the role and the content, each NUL-terminated (the content may hold NULs of its
/// own, hence its length).
struct CMessage {
    role: CString,
    content: Vec<u8>,
}

/// `gemma_chat` of the C API.
pub struct GemmaChat {
    /// Borrows the model handle for as long as the chat lives: `gemma.h` has the chat freed before its model.
    model: &'static GemmaModel,
    conversation: Conversation<'static>,
    /// The conversation's cancel flag: set when the token callback asks to stop, cleared at each turn.
    stop: Arc<AtomicBool>,
    /// The conversation's messages for `gemma_chat_message`, remade whenever the conversation changes.
    c_messages: Vec<CMessage>,
    /// Speculative decoding's counts of the last turn (`gemma_chat_speculative_stats`).
    last_spec: SpecStats,
    /// Keeps `gemma_lora_load` off the model while `conversation` borrows it; last, so dropped after it.
    _hold: ChatHold,
}

// The C header lets a chat move between threads (used by one at a time).
const _: () = {
    const fn movable_between_threads<T: Send>() {}
    movable_between_threads::<GemmaChat>()
};

impl GemmaChat {
    /// A conversation on `m` with a context of `n_ctx` tokens (0: the model's).
    pub fn new(
        m: &'static GemmaModel,
        system: Option<&str>,
        params: GemmaParams,
        n_ctx: usize,
    ) -> Result<GemmaChat, CapiError> {
        if m.is_embedding_model() {
            return Err(CapiError::EmbeddingModel(ModelError::EmbeddingModel(m.model_name().to_string())));
        }
        let template = template(m)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut options = options_with_stop(&params, &stop)?;
        if params.context_shift != 0 && params.n_keep < 0 {
            return Err(CapiError::InvalidArgument(
                "n_keep -1 (the whole prompt) has no meaning in a chat: give the tokens to keep after BOS".into(),
            ));
        }
        // The kept tokens are counted from the conversation's start, BOS added as llama-server adds it.
        options.context_shift = context_shift(&params, m.tokenizer.add_bos(), usize::MAX);
        let ctx = if n_ctx == 0 { m.context_length() } else { n_ctx.min(m.context_length()) };
        let (model, hold, lora_scales) = m.hold_for_chat();
        let mut conversation =
            Conversation::with_cache_types(model, &m.tokenizer, template, ctx, cache_types(&params)?, options)
                .map_err(CapiError::Generation)?;
        // The chat starts at the model-wide default scales and keeps its own from then on.
        conversation.set_lora_scales(Some(lora_scales)).map_err(CapiError::Lora)?;
        conversation.set_system(system);
        let mut chat = GemmaChat {
            model: m,
            conversation,
            stop,
            c_messages: Vec::new(),
            last_spec: SpecStats::default(),
            _hold: hold,
        };
        chat.remake_c_messages();
        Ok(chat)
    }

    fn remake_c_messages(&mut self) {
        self.c_messages = self
            .conversation
            .messages()
            .iter()
            .map(|m| {
                let mut content = m.content.clone().into_bytes();
                content.push(0);
                // Roles are checked to be one of three names, none with a NUL.
                CMessage { role: CString::new(m.role.as_str()).unwrap_or_default(), content }
            })
            .collect();
    }

    /// One turn: the user's `message`, then the answer, streamed to `on_token` as `gemma_generate` streams.
    pub fn send(
        &mut self,
        message: &str,
        on_token: &mut dyn FnMut(Option<u32>, &str) -> bool,
    ) -> Result<(String, GemmaChatInfo), CapiError> {
        self.stop.store(false, Ordering::Relaxed);
        let stop = self.stop.clone();
        let mut on_event = event_handler(&stop, on_token);
        let turn = self.conversation.send(message, &self.model.pool, &mut on_event).map_err(|e| match e {
            ConversationError::Template(e) => CapiError::ChatTemplate(e.to_string()),
            ConversationError::MessageTooLong { tokens, context } => {
                CapiError::PromptTooLong { prompt: tokens, context }
            }
            ConversationError::UnknownRole(role) => CapiError::InvalidArgument(format!("unknown role '{role}'")),
            ConversationError::Model(e) => CapiError::Generation(e),
        });
        self.remake_c_messages();
        let turn = turn?;
        self.last_spec = turn.output.speculative;
        let info = GemmaChatInfo {
            generation: GemmaGenerationInfo::of(&turn.output),
            n_reused_tokens: saturating_c_int(turn.reused),
            n_dropped_messages: saturating_c_int(turn.dropped_messages),
            n_context_tokens: saturating_c_int(self.conversation.context_used()),
        };
        Ok((turn.output.text, info))
    }

    pub fn add_message(&mut self, role: &str, content: &str) -> Result<(), CapiError> {
        let mut messages = self.conversation.messages().to_vec();
        messages.push(ChatMessage::new(role, content));
        self.conversation.set_messages(messages).map_err(|e| CapiError::InvalidArgument(e.to_string()))?;
        self.remake_c_messages();
        Ok(())
    }

    pub fn set_system(&mut self, system: Option<&str>) {
        self.conversation.set_system(system);
        self.remake_c_messages();
    }

    pub fn clear(&mut self) {
        self.conversation.clear();
        self.remake_c_messages();
    }

    pub fn context_used(&self) -> usize {
        self.conversation.context_used()
    }

    /// `gemma chat --spec-type NAME` with llama.cpp's default settings; `None` or "none" turns it off.
    pub fn set_speculative(&mut self, name: Option<&str>) -> Result<(), CapiError> {
        let kind = match name {
            None => None,
            Some(name) => SpecType::parse(name).map_err(|e| CapiError::InvalidArgument(e.to_string()))?,
        };
        if kind == Some(SpecType::DraftSimple) {
            return Err(CapiError::InvalidArgument(
                "spec_type: draft-simple needs a draft model, which the C API does not load (use ngram-simple or \
                 ngram-mod)"
                    .into(),
            ));
        }
        self.conversation.set_speculative(kind.map(SpeculativeParams::new));
        Ok(())
    }

    /// The chat's scale of adapter `index`.
    pub fn lora_scale(&self, index: i32) -> Result<f32, CapiError> {
        let scales = self.conversation.lora_scales();
        let i = check_index(index, self.model.lora_count())?;
        Ok(scales.get(i).copied().unwrap_or(0.0))
    }

    /// Sets the chat's scale of adapter `index`; a change empties the KV cache (the next turn prefills the
    /// whole conversation at the new scales).
    pub fn set_lora_scale(&mut self, index: i32, scale: f32) -> Result<(), CapiError> {
        check_scale(scale)?;
        let count = self.model.lora_count();
        let i = check_index(index, count)?;
        let mut scales = self.conversation.lora_scales().to_vec();
        scales.resize(count.max(scales.len()), 0.0);
        scales[i] = scale;
        self.conversation.set_lora_scales(Some(scales)).map_err(CapiError::Lora)
    }
}

/// # Safety
/// `chat` is NULL or a live handle from `gemma_chat_new`, used by no other thread during the call.
unsafe fn chat_mut<'a>(chat: *mut GemmaChat) -> Result<&'a mut GemmaChat, CapiError> {
    // SAFETY: by the contract, not NULL means a live handle that this call alone uses.
    unsafe { chat.as_mut() }.ok_or(CapiError::NullPointer("chat"))
}

/// # Safety
/// `chat` is NULL or a live handle from `gemma_chat_new`, not changed by another thread during the call.
unsafe fn chat_ref<'a>(chat: *const GemmaChat) -> Result<&'a GemmaChat, CapiError> {
    // SAFETY: by the contract, not NULL means a live handle that nothing changes during the call.
    unsafe { chat.as_ref() }.ok_or(CapiError::NullPointer("chat"))
}

/// # Safety
/// `text` is NULL or NUL-terminated.
unsafe fn optional_str<'a>(text: *const c_char, what: &'static str) -> Result<Option<&'a str>, CapiError> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, so NUL-terminated by the contract.
    unsafe { read_str(text, what) }.map(Some)
}

/// Starts a conversation on `model`; see `gemma.h`.
///
/// # Safety
/// `model` is NULL or a live handle that outlives the chat; `system_prompt` is NULL or NUL-terminated;
/// `params` is NULL or points to a `gemma_params`.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_new(
    model: *const GemmaModel,
    system_prompt: *const c_char,
    params: *const GemmaParams,
    n_ctx: c_int,
) -> *mut GemmaChat {
    value_call(std::ptr::null_mut(), || {
        // SAFETY: `model` is NULL or a live handle that outlives the chat (the contract), so borrowing it for
        // the chat's whole life is sound.
        let m: &'static GemmaModel = unsafe { model_ref(model) }?;
        // SAFETY: NULL or NUL-terminated by the contract; copied into the conversation.
        let system = unsafe { optional_str(system_prompt, "system_prompt") }?;
        // SAFETY: NULL or a gemma_params by the contract; copied, not kept.
        let params = unsafe { params.as_ref() }.copied().unwrap_or_else(defaults);
        let n_ctx = usize::try_from(n_ctx.max(0)).unwrap_or(0);
        Ok(Box::into_raw(Box::new(GemmaChat::new(m, system, params, n_ctx)?)))
    })
}

/// Frees a chat; NULL is ignored.
///
/// # Safety
/// `chat` is NULL or a live handle from `gemma_chat_new`, not used again.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_free(chat: *mut GemmaChat) {
    value_call((), || {
        if !chat.is_null() {
            // SAFETY: a live handle from `Box::into_raw` in `gemma_chat_new`, freed once by the contract.
            drop(unsafe { Box::from_raw(chat) });
        }
        Ok(())
    })
}

/// Sends a user message and generates the answer; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle used by no other thread; `message` is NULL or NUL-terminated; `callback`, if
/// given, is safe to call with `user_data`; `out_text` and `out_info` are NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_send(
    chat: *mut GemmaChat,
    message: *const c_char,
    callback: Option<GemmaTokenCallback>,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
    out_info: *mut GemmaChatInfo,
) -> c_int {
    code_call(|| {
        // SAFETY: `out_text` and `out_info` are NULL or valid for a write by the contract.
        unsafe {
            write_opt(out_text, std::ptr::null_mut());
            write_opt(out_info, GemmaChatInfo::default());
        }
        // SAFETY: NULL or a live handle used only by this call, by the contract.
        let chat = unsafe { chat_mut(chat) }?;
        // SAFETY: NULL or NUL-terminated by the contract; copied into the conversation.
        let message = unsafe { read_str(message, "message") }?;
        // SAFETY: the caller vouches for `callback` and `user_data` for the length of this call.
        let mut on_token = unsafe { c_token_handler(callback, user_data) };
        let (text, info) = chat.send(message, &mut on_token)?;
        // SAFETY: `out_text` is NULL or valid for a write by the contract.
        unsafe { hand_out_text(out_text, &text) }?;
        // SAFETY: NULL or valid for a write by the contract.
        unsafe { write_opt(out_info, info) };
        Ok(())
    })
}

/// Appends a message without generating; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle used by no other thread; `role` and `content` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_add_message(
    chat: *mut GemmaChat,
    role: *const c_char,
    content: *const c_char,
) -> c_int {
    code_call(|| {
        // SAFETY: NULL or a live handle used only by this call, by the contract.
        let chat = unsafe { chat_mut(chat) }?;
        // SAFETY: NULL or NUL-terminated by the contract; both are copied.
        let (role, content) = unsafe { (read_str(role, "role")?, read_str(content, "content")?) };
        chat.add_message(role, content)
    })
}

/// Sets (or with NULL or "" removes) the system prompt; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle used by no other thread; `system_prompt` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_set_system(chat: *mut GemmaChat, system_prompt: *const c_char) -> c_int {
    code_call(|| {
        // SAFETY: NULL or a live handle used only by this call, by the contract.
        let chat = unsafe { chat_mut(chat) }?;
        // SAFETY: NULL or NUL-terminated by the contract; copied.
        let system = unsafe { optional_str(system_prompt, "system_prompt") }?;
        chat.set_system(system);
        Ok(())
    })
}

/// Forgets the conversation but its system prompt; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_clear(chat: *mut GemmaChat) -> c_int {
    code_call(|| {
        // SAFETY: NULL or a live handle used only by this call, by the contract.
        unsafe { chat_mut(chat) }?.clear();
        Ok(())
    })
}

/// Messages in the conversation, the system prompt included; a negative status if `chat` is NULL.
///
/// # Safety
/// `chat` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_n_messages(chat: *const GemmaChat) -> c_int {
    // SAFETY: NULL or a live handle by the contract.
    unsafe { chat_info(chat, |c| c.c_messages.len()) }
}

/// Speculative decoding for the next turns; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle used by no other thread; `spec_type` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_set_speculative(chat: *mut GemmaChat, spec_type: *const c_char) -> c_int {
    code_call(|| {
        // SAFETY: NULL or a live handle used only by this call, by the contract.
        let chat = unsafe { chat_mut(chat) }?;
        // SAFETY: NULL or NUL-terminated by the contract; read during the call only.
        let name = unsafe { optional_str(spec_type, "spec_type") }?;
        chat.set_speculative(name)
    })
}

/// The last turn's drafted and accepted token counts; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle; `n_drafted` and `n_accepted` are NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_speculative_stats(
    chat: *const GemmaChat,
    n_drafted: *mut i32,
    n_accepted: *mut i32,
) -> c_int {
    code_call(|| {
        // SAFETY: NULL or a live handle by the contract.
        let st = unsafe { chat_ref(chat) }?.last_spec;
        // SAFETY: NULL or valid for a write by the contract.
        unsafe {
            write_opt(n_drafted, saturating_c_int(st.draft_n));
            write_opt(n_accepted, saturating_c_int(st.draft_n_accepted));
        }
        Ok(())
    })
}

/// Tokens the chat's KV cache holds now; a negative status if `chat` is NULL.
///
/// # Safety
/// `chat` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_context_used(chat: *const GemmaChat) -> c_int {
    // SAFETY: NULL or a live handle by the contract.
    unsafe { chat_info(chat, GemmaChat::context_used) }
}

/// A count read off `chat`, or `GEMMA_ERR_INVALID_ARGUMENT` if it is NULL (as `model_info` for models).
///
/// # Safety
/// `chat` is NULL or a live handle.
unsafe fn chat_info(chat: *const GemmaChat, get: impl FnOnce(&GemmaChat) -> usize) -> c_int {
    value_call(crate::Status::InvalidArgument as c_int, || {
        // SAFETY: NULL or a live handle by the contract.
        Ok(saturating_c_int(get(unsafe { chat_ref(chat) }?)))
    })
}

/// Message `index` of the conversation; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle; `role`, `content` and `content_len` are NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_message(
    chat: *const GemmaChat,
    index: usize,
    role: *mut *const c_char,
    content: *mut *const c_char,
    content_len: *mut usize,
) -> c_int {
    code_call(|| {
        // SAFETY: NULL or valid for a write by the contract; cleared in case of failure.
        unsafe {
            write_opt(role, std::ptr::null());
            write_opt(content, std::ptr::null());
            write_opt(content_len, 0);
        }
        // SAFETY: NULL or a live handle by the contract.
        let chat = unsafe { chat_ref(chat) }?;
        let n = chat.c_messages.len();
        let m = chat.c_messages.get(index).ok_or_else(|| {
            CapiError::InvalidArgument(format!("message index {index} is out of range: the chat has {n} messages"))
        })?;
        // SAFETY: NULL or valid for a write by the contract; the pointers stay valid while the chat's messages
        // are unchanged, as `gemma.h` says.
        unsafe {
            write_opt(role, m.role.as_ptr());
            write_opt(content, m.content.as_ptr().cast());
            write_opt(content_len, m.content.len() - 1);
        }
        Ok(())
    })
}

/// Sets the chat's own scale of LoRA adapter `index`; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_set_lora_scale(chat: *mut GemmaChat, index: i32, scale: f32) -> c_int {
    code_call(|| {
        // SAFETY: NULL or a live handle used only by this call, by the contract.
        unsafe { chat_mut(chat) }?.set_lora_scale(index, scale)
    })
}

/// The chat's scale of LoRA adapter `index` into `*scale`; see `gemma.h`.
///
/// # Safety
/// `chat` is NULL or a live handle; `scale` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_chat_get_lora_scale(chat: *const GemmaChat, index: i32, scale: *mut f32) -> c_int {
    code_call(|| {
        if scale.is_null() {
            return Err(CapiError::NullPointer("scale"));
        }
        // SAFETY: NULL or a live handle by the contract.
        let value = unsafe { chat_ref(chat) }?.lora_scale(index)?;
        // SAFETY: not NULL, so valid for a write by the contract.
        unsafe { write_opt(scale, value) };
        Ok(())
    })
}
