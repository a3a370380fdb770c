//! The C API of gemma-rs (`include/gemma.h`): open a model, tokenize, detokenize, generate text, hold a
//! conversation over a kept KV cache, apply LoRA adapters and (with an embedding model) embed text, through opaque handles and plain C types. Every entry point is a thin layer over `gemma-core`.
//!
//! Rules every entry point keeps: pointers are checked for NULL, strings for UTF-8, and no panic crosses into
//! C (each body runs under `catch_unwind`, a panic becomes `GEMMA_ERR_INTERNAL`). A failure returns an error
//! code (or NULL) and leaves its message in the thread's `gemma_last_error()`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod c_str;
mod chat;
mod embed;
mod error;
mod generate;
mod lora;
mod model;
mod tokenize;

use std::ffi::{c_char, c_int};

pub use chat::{
    gemma_chat_add_message, gemma_chat_clear, gemma_chat_context_used, gemma_chat_free, gemma_chat_get_lora_scale,
    gemma_chat_message, gemma_chat_n_messages, gemma_chat_new, gemma_chat_send, gemma_chat_set_lora_scale,
    gemma_chat_set_speculative, gemma_chat_set_system, gemma_chat_speculative_stats, GemmaChat, GemmaChatInfo,
};
pub use embed::{gemma_embed, gemma_embed_batch, gemma_model_embedding_dim};
pub use error::{CapiError, Status};
pub use generate::{
    cache_type_enumerators, gemma_generate, gemma_params_default, GemmaGenerationInfo, GemmaParams, GemmaStopReason,
    GemmaTokenCallback, GEMMA_NO_TOKEN, GEMMA_SEED_RANDOM,
};
pub use lora::{
    gemma_lora_count, gemma_lora_get_scale, gemma_lora_load, gemma_lora_path, gemma_lora_prompt_prefix,
    gemma_lora_set_scale, gemma_lora_task_name,
};
pub use model::{
    gemma_model_context_length, gemma_model_free, gemma_model_name, gemma_model_open, gemma_model_vocab_size,
    GemmaModel,
};
pub use tokenize::{gemma_detokenize, gemma_tokenize};

use error::value_call;

/// The library's version as `major * 10000 + minor * 100 + patch`.
#[no_mangle]
pub extern "C" fn gemma_version() -> c_int {
    value_call(0, || {
        let part = |s: &str| s.parse::<c_int>().unwrap_or(0);
        Ok(part(env!("CARGO_PKG_VERSION_MAJOR")) * 10_000
            + part(env!("CARGO_PKG_VERSION_MINOR")) * 100
            + part(env!("CARGO_PKG_VERSION_PATCH")))
    })
}

/// The library's version as text ("0.1.0"); a static string.
#[no_mangle]
pub extern "C" fn gemma_version_string() -> *const c_char {
    const VERSION: &std::ffi::CStr =
        match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => panic!("the package version has a NUL in it"),
        };
    VERSION.as_ptr()
}

/// A static description of a status code ("unknown status" for a code that is none).
#[no_mangle]
pub extern "C" fn gemma_error_string(code: c_int) -> *const c_char {
    Status::from_code(code).map_or(c"unknown status".as_ptr(), |s| s.description().as_ptr())
}

/// The message of the last failed call on this thread ("" if none failed yet). The string belongs to the
/// library and stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn gemma_last_error() -> *const c_char {
    value_call(c"".as_ptr(), || Ok(error::last_error_ptr()))
}

/// Frees a string the library handed out (`gemma_generate`'s text); NULL is ignored.
///
/// # Safety
/// `text` is NULL or a string from the library that was not freed before.
#[no_mangle]
pub unsafe extern "C" fn gemma_string_free(text: *mut c_char) {
    value_call((), || {
        // SAFETY: NULL or a live string of `c_str::to_malloced` by the contract.
        unsafe { c_str::free_malloced(text) };
        Ok(())
    })
}
