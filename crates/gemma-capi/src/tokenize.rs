//! Text to token ids and back, into caller buffers (llama.cpp's two-call pattern: a buffer too small gives
//! `GEMMA_ERR_BUFFER_TOO_SMALL` and the size needed).

use std::ffi::{c_char, c_int};

use crate::c_str::{read_str, write_opt};
use crate::error::{code_call, CapiError};
use crate::model::{model_ref, GemmaModel};

/// Tokenizes `text` (special tokens such as `<start_of_turn>` are recognised, as in generation). With
/// `add_bos` non-zero the model's BOS token comes first if the model uses one. `*n_out` receives the number of
/// ids; they are written to `out` only if `cap` holds them all, else `GEMMA_ERR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `model` is NULL or a live handle; `text` is NULL or NUL-terminated; `out` is NULL or valid for `cap`
/// writes of `uint32_t`; `n_out` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_tokenize(
    model: *const GemmaModel,
    text: *const c_char,
    add_bos: c_int,
    out: *mut u32,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    code_call(|| {
        // SAFETY: `model` is NULL or live by the contract.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: `text` is NULL or NUL-terminated by the contract; it is only read during this call.
        let text = unsafe { read_str(text, "text") }?;
        if n_out.is_null() {
            return Err(CapiError::NullPointer("n_out"));
        }
        if out.is_null() && cap > 0 {
            return Err(CapiError::NullPointer("out (with cap above 0)"));
        }
        let tokenizer = &m.tokenizer;
        let ids = tokenizer.encode(text, add_bos != 0 && tokenizer.add_bos(), true);
        // SAFETY: `n_out` is not NULL, and valid for a write by the contract.
        unsafe { write_opt(n_out, ids.len()) };
        if ids.len() > cap {
            return Err(CapiError::BufferTooSmall { needed: ids.len(), capacity: cap, unit: "token ids" });
        }
        if !ids.is_empty() {
            // SAFETY: `out` is not NULL (cap >= ids.len() > 0), valid for `cap` writes by the contract, and
            // cannot overlap `ids`, a fresh Rust allocation.
            unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr(), out, ids.len()) };
        }
        Ok(())
    })
}

/// Turns `n_ids` token ids into UTF-8 text (bytes that do not form UTF-8 become U+FFFD); control tokens such as
/// `<bos>` are left out unless `render_special` is non-zero. `*n_out` receives the text's length in bytes,
/// without the terminating NUL; the text and a NUL are written to `out` only if `cap >= *n_out + 1`, else
/// `GEMMA_ERR_BUFFER_TOO_SMALL`. An id outside the vocabulary is `GEMMA_ERR_INVALID_TOKEN`.
///
/// # Safety
/// `model` is NULL or a live handle; `ids` is NULL or valid for `n_ids` reads; `out` is NULL or valid for
/// `cap` writes; `n_out` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_detokenize(
    model: *const GemmaModel,
    ids: *const u32,
    n_ids: usize,
    render_special: c_int,
    out: *mut c_char,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    code_call(|| {
        // SAFETY: `model` is NULL or live by the contract.
        let m = unsafe { model_ref(model) }?;
        if n_out.is_null() {
            return Err(CapiError::NullPointer("n_out"));
        }
        if out.is_null() && cap > 0 {
            return Err(CapiError::NullPointer("out (with cap above 0)"));
        }
        let ids: &[u32] = match n_ids {
            0 => &[],
            _ if ids.is_null() => return Err(CapiError::NullPointer("ids (with n_ids above 0)")),
            // SAFETY: not NULL, and valid for `n_ids` reads by the contract; only read during this call.
            _ => unsafe { std::slice::from_raw_parts(ids, n_ids) },
        };
        let vocab = m.tokenizer.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(CapiError::InvalidToken { id, vocab });
        }
        let text = m.tokenizer.decode(ids, render_special != 0);
        // SAFETY: `n_out` is not NULL, and valid for a write by the contract.
        unsafe { write_opt(n_out, text.len()) };
        if text.len() >= cap {
            return Err(CapiError::BufferTooSmall {
                needed: text.len() + 1,
                capacity: cap,
                unit: "bytes (text and terminating NUL)",
            });
        }
        // SAFETY: `out` is not NULL (cap > text.len() >= 0), valid for `cap >= text.len() + 1` writes by the
        // contract, and cannot overlap `text`, a fresh Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), text.len());
            *out.add(text.len()) = 0;
        }
        Ok(())
    })
}
