//! Generation: parameters, a streaming callback, and one `gemma_core` session per call.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::generate::TokenEvent;
use gemma_core::{
    ContextShift, GenerationOptions, GenerationOutput, KvType, ModelError, SamplingParams, Session, StopReason,
};

use crate::c_str::{read_str, to_malloced, write_opt};
use crate::error::{code_call, value_call, CapiError};
use crate::model::{model_ref, GemmaModel};

/// `gemma_params.seed` that draws the seed from the clock (llama.cpp's `LLAMA_DEFAULT_SEED`).
pub const GEMMA_SEED_RANDOM: u32 = u32::MAX;

/// The `token` a callback gets with the text still held back when generation ends (an unfinished character).
pub const GEMMA_NO_TOKEN: i32 = -1;

/// `gemma_params` of the C API; field meanings are in `gemma.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmaParams {
    pub max_tokens: i32,
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub seed: u32,
    pub chat: i32,
    pub n_ctx: i32,
    pub context_shift: i32,
    pub n_keep: i32,
    /// A `gemma_cache_type` (GGML type id) for the keys of the KV cache.
    pub type_k: i32,
    /// A `gemma_cache_type` for the values.
    pub type_v: i32,
}

/// The `gemma_cache_type` enumerators of `gemma.h` (`GEMMA_CACHE_Q8_0`, ...): every KV cache type by its GGML
/// type id, the values llama.cpp's `llama_context_params.type_k` / `type_v` take.
pub fn cache_type_enumerators() -> Vec<(String, i32)> {
    KvType::ALL.iter().map(|t| (format!("GEMMA_CACHE_{}", t.name().to_uppercase()), ggml_id(*t))).collect()
}

fn ggml_id(t: KvType) -> i32 {
    // GGML type ids are small (under 64).
    i32::try_from(t.ggml_type().id()).unwrap_or(i32::MAX)
}

/// The KV cache types `params` asks for (keys, values).
pub(crate) fn cache_types(params: &GemmaParams) -> Result<(KvType, KvType), CapiError> {
    let one = |field: &str, id: i32| {
        KvType::ALL.into_iter().find(|&t| ggml_id(t) == id).ok_or_else(|| {
            let allowed: Vec<String> =
                cache_type_enumerators().into_iter().map(|(n, v)| format!("{n} ({v})")).collect();
            CapiError::InvalidArgument(format!(
                "{field} {id} is not a KV cache type: allowed are {}",
                allowed.join(", ")
            ))
        })
    };
    Ok((one("type_k", params.type_k)?, one("type_v", params.type_v)?))
}

/// `gemma_stop_reason` of the C API.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmaStopReason {
    EndOfGeneration = 0,
    MaxTokens = 1,
    ContextFull = 2,
    Callback = 3,
}

impl GemmaStopReason {
    pub const ALL: [GemmaStopReason; 4] = [Self::EndOfGeneration, Self::MaxTokens, Self::ContextFull, Self::Callback];

    /// The enumerator's name in `gemma.h`.
    pub fn c_name(self) -> &'static str {
        match self {
            Self::EndOfGeneration => "GEMMA_STOP_END_OF_GENERATION",
            Self::MaxTokens => "GEMMA_STOP_MAX_TOKENS",
            Self::ContextFull => "GEMMA_STOP_CONTEXT_FULL",
            Self::Callback => "GEMMA_STOP_CALLBACK",
        }
    }

    fn from_library(reason: StopReason) -> GemmaStopReason {
        match reason {
            // No stop strings are passed to the library, so a stop string cannot end generation here.
            StopReason::EndOfGeneration | StopReason::StopString => Self::EndOfGeneration,
            StopReason::MaxTokens => Self::MaxTokens,
            StopReason::ContextFull => Self::ContextFull,
            StopReason::Cancelled => Self::Callback,
        }
    }
}

/// `gemma_generation_info` of the C API.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GemmaGenerationInfo {
    pub n_prompt_tokens: i32,
    pub n_generated_tokens: i32,
    /// A [`GemmaStopReason`].
    pub stop_reason: i32,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub n_context_shifts: i32,
}

/// `gemma_token_callback` of the C API: the token id (or [`GEMMA_NO_TOKEN`]), its text (`piece_len` bytes of
/// UTF-8, then a NUL) and the caller's pointer; non-zero stops generation.
pub type GemmaTokenCallback =
    unsafe extern "C" fn(token: i32, piece: *const c_char, piece_len: usize, user_data: *mut c_void) -> c_int;

fn saturating_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The library's defaults: generation options and sampling parameters as every front end starts from them.
pub(crate) fn defaults() -> GemmaParams {
    let options = GenerationOptions::default();
    let sampling = &options.sampling;
    GemmaParams {
        max_tokens: saturating_i32(options.max_tokens),
        temperature: sampling.temperature,
        top_k: saturating_i32(sampling.top_k),
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        repeat_penalty: sampling.repeat_penalty,
        repeat_last_n: saturating_i32(sampling.penalty_last_n),
        seed: sampling.seed.map_or(GEMMA_SEED_RANDOM, |s| s as u32),
        chat: 0,
        n_ctx: 0,
        context_shift: 0,
        n_keep: 0,
        type_k: ggml_id(KvType::F32),
        type_v: ggml_id(KvType::F32),
    }
}

/// Checks `params` and turns them into the library's generation options.
fn generation_options(params: &GemmaParams) -> Result<GenerationOptions, CapiError> {
    let non_negative = |name: &str, value: i32| {
        usize::try_from(value).map_err(|_| CapiError::InvalidArgument(format!("{name} must be 0 or more, got {value}")))
    };
    let max_tokens = non_negative("max_tokens", params.max_tokens)?;
    let top_k = non_negative("top_k", params.top_k)?;
    let penalty_last_n = match params.repeat_last_n {
        // The window never holds more than the sequence, which never outgrows the context.
        -1 => usize::MAX,
        n => usize::try_from(n)
            .map_err(|_| CapiError::InvalidArgument(format!("repeat_last_n must be -1 or more, got {n}")))?,
    };
    let sampling = SamplingParams {
        temperature: params.temperature,
        top_k,
        top_p: params.top_p,
        min_p: params.min_p,
        repeat_penalty: params.repeat_penalty,
        penalty_last_n,
        seed: (params.seed != GEMMA_SEED_RANDOM).then_some(u64::from(params.seed)),
        ..Default::default()
    };
    sampling.validate()?;
    if params.n_keep < -1 {
        return Err(CapiError::InvalidArgument(format!("n_keep must be -1 or more, got {}", params.n_keep)));
    }
    Ok(GenerationOptions { max_tokens, sampling, ..Default::default() })
}

/// The context shift `params` ask for (llama-completion's `--context-shift --keep`): `n_keep` tokens after BOS
/// are never dropped, -1 keeps `whole_prompt` tokens; no more than `whole_prompt` are kept.
pub(crate) fn context_shift(params: &GemmaParams, add_bos: bool, whole_prompt: usize) -> Option<ContextShift> {
    (params.context_shift != 0).then(|| {
        let keep = usize::try_from(params.n_keep)
            .map_or(whole_prompt, |n| n.saturating_add(usize::from(add_bos)).min(whole_prompt));
        ContextShift { keep, discard: None }
    })
}

/// The default parameters (the library's: greedy, because top_k is 1; 256 tokens at most).
#[no_mangle]
pub extern "C" fn gemma_params_default() -> GemmaParams {
    // The body cannot fail; the fallback is what C's `{0}` would give.
    let zero = GemmaParams {
        max_tokens: 0,
        temperature: 0.0,
        top_k: 0,
        top_p: 0.0,
        min_p: 0.0,
        repeat_penalty: 0.0,
        repeat_last_n: 0,
        seed: 0,
        chat: 0,
        n_ctx: 0,
        context_shift: 0,
        n_keep: 0,
        type_k: 0,
        type_v: 0,
    };
    value_call(zero, || Ok(defaults()))
}

/// A generation's text and figures.
pub struct Generated {
    pub text: String,
    pub info: GemmaGenerationInfo,
}

impl GemmaGenerationInfo {
    pub(crate) fn of(out: &GenerationOutput) -> GemmaGenerationInfo {
        GemmaGenerationInfo {
            n_prompt_tokens: saturating_i32(out.prompt_ids.len()),
            n_generated_tokens: saturating_i32(out.gen_ids.len()),
            stop_reason: GemmaStopReason::from_library(out.stop_reason) as i32,
            prefill_tokens_per_second: out.prefill_tok_s(),
            decode_tokens_per_second: out.decode_tok_s(),
            n_context_shifts: saturating_i32(out.context_shifts.len()),
        }
    }
}

/// Generation options for `params`, with `stop` as their cancel flag (see [`event_handler`]).
pub(crate) fn options_with_stop(params: &GemmaParams, stop: &Arc<AtomicBool>) -> Result<GenerationOptions, CapiError> {
    let mut options = generation_options(params)?;
    options.cancel = Some(stop.clone());
    Ok(options)
}

/// The library's token event handler that passes each token to `on_token` (its id and the text it completes)
/// until `on_token` returns true: then `stop` is set, so generation with [`options_with_stop`] ends right after
/// that token, and `on_token` is not called again.
pub(crate) fn event_handler<'a>(
    stop: &'a AtomicBool,
    on_token: &'a mut dyn FnMut(Option<u32>, &str) -> bool,
) -> impl FnMut(&TokenEvent<'_>) + 'a {
    move |event: &TokenEvent<'_>| {
        let last_with_nothing_new = event.id.is_none() && event.text.is_empty();
        if !stop.load(Ordering::Relaxed) && !last_with_nothing_new && on_token(event.id, event.text) {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs one generation for `prompt`, reporting each token to `on_token` (its id and the text it completes);
/// `on_token` returns true to stop, and is not called again after that.
pub fn generate(
    m: &GemmaModel,
    prompt: &str,
    params: &GemmaParams,
    on_token: &mut dyn FnMut(Option<u32>, &str) -> bool,
) -> Result<Generated, CapiError> {
    if m.is_embedding_model() {
        // Its output layer pools states into a vector; there are no logits to sample from.
        return Err(CapiError::EmbeddingModel(ModelError::EmbeddingModel(m.model_name().to_string())));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut options = options_with_stop(params, &stop)?;
    let context = match usize::try_from(params.n_ctx) {
        Ok(0) => m.context_length(),
        Ok(n) => n.min(m.context_length()),
        Err(_) => {
            return Err(CapiError::InvalidArgument(format!("n_ctx must be 0 or more, got {}", params.n_ctx)));
        }
    };
    let mut on_event = event_handler(&stop, on_token);
    let tokenizer = &m.tokenizer;
    let prompt_ids = if params.chat != 0 {
        template(m)?
            .encode(tokenizer, &[ChatMessage::user(prompt)], true)
            .map_err(|e| CapiError::ChatTemplate(e.to_string()))?
    } else {
        tokenizer.encode(prompt, tokenizer.add_bos(), true)
    };
    if prompt_ids.is_empty() {
        return Err(CapiError::InvalidArgument(
            "the prompt is empty and the model adds no BOS token: nothing to continue from".into(),
        ));
    }
    // Room for at least one generated token.
    if prompt_ids.len() >= context {
        return Err(CapiError::PromptTooLong { prompt: prompt_ids.len(), context });
    }
    options.context_shift = context_shift(params, tokenizer.add_bos(), prompt_ids.len());
    // The read lock keeps `gemma_lora_load` out for the length of the generation.
    let model = m.model();
    let mut session =
        Session::with_cache_types(&model, context, cache_types(params)?).map_err(CapiError::Generation)?;
    // The model-wide default scales as they are now (`gemma_lora_set_scale`).
    session.set_lora_scales(Some(m.loras().scales.clone())).map_err(CapiError::Lora)?;
    let out = session
        .generate_streaming(tokenizer, &prompt_ids, &options, &m.pool, &mut on_event)
        .map_err(CapiError::Generation)?;
    Ok(Generated { info: GemmaGenerationInfo::of(&out), text: out.text })
}

/// The model's chat template, or why it cannot be used.
pub(crate) fn template(m: &GemmaModel) -> Result<&ChatTemplate, CapiError> {
    m.chat_template.as_ref().map_err(|e| CapiError::ChatTemplate(e.clone()))
}

/// `callback` as the token handler of [`generate`] and the chat: each piece goes out NUL-terminated.
///
/// # Safety
/// `callback`, if given, is safe to call with `user_data` for as long as the result is used.
pub(crate) unsafe fn c_token_handler(
    callback: Option<GemmaTokenCallback>,
    user_data: *mut c_void,
) -> impl FnMut(Option<u32>, &str) -> bool {
    let mut piece = Vec::new();
    move |id: Option<u32>, text: &str| {
        let Some(callback) = callback else { return false };
        // The piece goes out NUL-terminated so that C can print it as a string.
        piece.clear();
        piece.extend_from_slice(text.as_bytes());
        piece.push(0);
        let token = id.map_or(GEMMA_NO_TOKEN, |id| i32::try_from(id).unwrap_or(GEMMA_NO_TOKEN));
        // SAFETY: the caller vouches for the callback and `user_data`; `piece` holds `text.len()` bytes and a
        // NUL, and lives until the callback returns.
        unsafe { callback(token, piece.as_ptr().cast(), text.len(), user_data) != 0 }
    }
}

/// Hands `text` to C through `out_text` (NULL: not wanted) as a string freed with `gemma_string_free`.
///
/// # Safety
/// `out_text` is NULL or valid for a write.
pub(crate) unsafe fn hand_out_text(out_text: *mut *mut c_char, text: &str) -> Result<(), CapiError> {
    if !out_text.is_null() {
        let copy = to_malloced(text);
        if copy.is_null() {
            return Err(CapiError::OutOfMemory(text.len() + 1));
        }
        // SAFETY: not NULL, and valid for a write by the contract.
        unsafe { out_text.write(copy) };
    }
    Ok(())
}

/// Generates a continuation of `prompt` (or, with `params->chat`, the model's answer to it as a user turn);
/// see `gemma.h` for every argument.
///
/// # Safety
/// `model` is NULL or a live handle; `prompt` is NULL or NUL-terminated; `params` is NULL or points to a
/// `gemma_params`; `callback`, if given, is safe to call with `user_data`; `out_text` and `out_info` are NULL or
/// valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_generate(
    model: *const GemmaModel,
    prompt: *const c_char,
    params: *const GemmaParams,
    callback: Option<GemmaTokenCallback>,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
    out_info: *mut GemmaGenerationInfo,
) -> c_int {
    code_call(|| {
        // On failure the outputs hold nothing to free or read.
        // SAFETY: `out_text` and `out_info` are NULL or valid for a write by the contract.
        unsafe {
            write_opt(out_text, std::ptr::null_mut());
            write_opt(out_info, GemmaGenerationInfo::default());
        }
        // SAFETY: `model` is NULL or live by the contract.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: `prompt` is NULL or NUL-terminated by the contract; it is only read during this call.
        let prompt = unsafe { read_str(prompt, "prompt") }?;
        // SAFETY: `params` is NULL or points to a gemma_params by the contract; it is copied, not kept.
        let params = unsafe { params.as_ref() }.copied().unwrap_or_else(defaults);
        // SAFETY: the caller vouches for `callback` and `user_data` for the length of this call.
        let mut on_token = unsafe { c_token_handler(callback, user_data) };
        let generated = generate(m, prompt, &params, &mut on_token)?;
        // SAFETY: `out_text` is NULL or valid for a write by the contract.
        unsafe { hand_out_text(out_text, &generated.text) }?;
        // SAFETY: NULL or valid for a write by the contract.
        unsafe { write_opt(out_info, generated.info) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_librarys() {
        let p = gemma_params_default();
        let options = generation_options(&p).unwrap();
        let library = GenerationOptions::default();
        assert_eq!(options.max_tokens, library.max_tokens);
        assert_eq!(options.sampling, library.sampling);
        assert!(options.sampling.is_greedy(), "the library's defaults are greedy (top-k 1)");
    }

    #[test]
    fn bad_params_are_errors_naming_the_field() {
        let with = |change: fn(&mut GemmaParams)| {
            let mut p = gemma_params_default();
            change(&mut p);
            generation_options(&p).unwrap_err().to_string()
        };
        assert!(with(|p| p.max_tokens = -1).contains("max_tokens must be 0 or more"));
        assert!(with(|p| p.top_k = -3).contains("top_k"));
        assert!(with(|p| p.repeat_last_n = -2).contains("repeat_last_n"));
        assert!(with(|p| p.top_p = 1.5).contains("top_p"));
        assert!(with(|p| p.temperature = f32::NAN).contains("temperature"));
        assert!(with(|p| p.repeat_penalty = 0.0).contains("repeat_penalty"));
    }

    #[test]
    fn temperature_zero_is_greedy_and_seeds_map() {
        let mut p = gemma_params_default();
        p.temperature = 0.0;
        p.top_k = 40;
        p.seed = 7;
        let options = generation_options(&p).unwrap();
        assert!(options.sampling.is_greedy());
        assert_eq!(options.sampling.seed, Some(7));
        p.seed = GEMMA_SEED_RANDOM;
        assert_eq!(generation_options(&p).unwrap().sampling.seed, None);
    }
}
