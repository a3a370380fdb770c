//! Embeddings: the L2-normalised vector of a text from an embedding model (EmbeddingGemma), into a caller
//! buffer with the two-call pattern of `gemma_tokenize` (a buffer too small gives `GEMMA_ERR_BUFFER_TOO_SMALL`
//! and the number of floats needed).

use std::borrow::Cow;
use std::ffi::{c_char, c_int};

use gemma_core::ModelError;

use crate::c_str::{read_str, read_str_named, write_opt};
use crate::error::{code_call, CapiError};
use crate::model::{model_ref, GemmaModel};

impl GemmaModel {
    /// The width of the model's embeddings, or why it makes none.
    fn embedding_width(&self) -> Result<usize, CapiError> {
        self.embedding_dim()
            .ok_or_else(|| CapiError::NotEmbeddingModel(ModelError::NotEmbeddingModel(self.model_name().to_string())))
    }

    /// The embeddings of `texts` (each encoded as a whole input: BOS, text, EOS), one after the other in `out`
    /// (`texts.len() * width` floats), with the two-call protocol: `*n_out` gets the floats needed, and nothing
    /// is computed or written when `cap` is too small for them. `name` names text `i` in errors.
    ///
    /// # Safety
    /// `out` is NULL or valid for `cap` writes of `f32`, and `cap` is 0 when it is NULL; `n_out` is valid for
    /// one write.
    unsafe fn embed_into(
        &self,
        texts: &[&str],
        name: &dyn Fn(usize) -> Cow<'static, str>,
        out: *mut f32,
        cap: usize,
        n_out: *mut usize,
    ) -> Result<(), CapiError> {
        let width = self.embedding_width()?;
        let context = self.context_length();
        let mut inputs = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            // Special tokens written in the text are recognised, as in gemma_tokenize and `gemma embed`.
            let ids = self.tokenizer.encode_input(text, true);
            if ids.is_empty() {
                return Err(CapiError::InvalidArgument(format!(
                    "{} is empty and the model adds no BOS or EOS token: nothing to embed",
                    name(i)
                )));
            }
            if ids.len() > context {
                return Err(CapiError::InputTooLong { what: name(i), tokens: ids.len(), context });
            }
            inputs.push(ids);
        }
        let needed = texts.len().checked_mul(width).ok_or_else(|| {
            CapiError::InvalidArgument(format!("{} texts of {width} floats each overflow size_t", texts.len()))
        })?;
        // SAFETY: valid for a write by this function's contract.
        unsafe { n_out.write(needed) };
        if needed > cap {
            return Err(CapiError::BufferTooSmall { needed, capacity: cap, unit: "floats" });
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let vectors = self.model().embed(&refs, &self.pool).map_err(CapiError::Embedding)?;
        if vectors.len() != texts.len() || vectors.iter().any(|v| v.len() != width) {
            return Err(CapiError::Internal(format!(
                "the library returned {} embeddings for {} texts, not all of width {width}",
                vectors.len(),
                texts.len()
            )));
        }
        for (i, v) in vectors.iter().enumerate() {
            // SAFETY: `out` is not NULL (cap >= needed > 0) and valid for `cap >= texts.len() * width` writes by
            // the contract, so `i * width + width` floats fit; it cannot overlap `v`, a fresh Rust allocation.
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out.add(i * width), width) };
        }
        Ok(())
    }
}

/// The checks every embedding call makes on its output arguments: `n_out` is required and set to 0 until the
/// size is known, `out` may be NULL only with `cap` 0.
///
/// # Safety
/// `n_out` is NULL or valid for one write.
unsafe fn check_outputs(out: *mut f32, cap: usize, n_out: *mut usize) -> Result<(), CapiError> {
    if n_out.is_null() {
        return Err(CapiError::NullPointer("n_out"));
    }
    // SAFETY: not NULL, and valid for a write by the contract.
    unsafe { write_opt(n_out, 0) };
    if out.is_null() && cap > 0 {
        return Err(CapiError::NullPointer("out (with cap above 0)"));
    }
    Ok(())
}

/// The width of the model's embeddings (768 for EmbeddingGemma), 0 for a generative model, or a negative
/// error code (`model` NULL).
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_model_embedding_dim(model: *const GemmaModel) -> c_int {
    // SAFETY: `model` is NULL or live by the contract.
    unsafe { crate::model::model_info(model, |m| crate::model::saturating_c_int(m.embedding_dim().unwrap_or(0))) }
}

/// The L2-normalised embedding of `text` (with the model's BOS and EOS; special tokens recognised).
/// `*n_out` receives the width; the vector is written to `out` only if `cap` holds it, else
/// `GEMMA_ERR_BUFFER_TOO_SMALL` (and the model is not run). A generative model is
/// `GEMMA_ERR_WRONG_MODEL_KIND`; a text longer than the context, `GEMMA_ERR_CONTEXT_FULL`.
///
/// # Safety
/// `model` is NULL or a live handle; `text` is NULL or NUL-terminated; `out` is NULL or valid for `cap`
/// writes of `float`; `n_out` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_embed(
    model: *const GemmaModel,
    text: *const c_char,
    out: *mut f32,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    code_call(|| {
        // SAFETY: `model` is NULL or live by the contract.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: `text` is NULL or NUL-terminated by the contract; it is only read during this call.
        let text = unsafe { read_str(text, "text") }?;
        // SAFETY: `n_out` is NULL or valid for a write by the contract.
        unsafe { check_outputs(out, cap, n_out) }?;
        // SAFETY: `out` is NULL with cap 0 (checked) or valid for `cap` writes, and `n_out` is not NULL and
        // valid for a write, by the contract.
        unsafe { m.embed_into(&[text], &|_| "the text".into(), out, cap, n_out) }
    })
}

/// The embeddings of `n_texts` texts, one after the other in `out` (`n_texts * width` floats), computed several
/// to a forward pass. `*n_out` receives `n_texts * width`; the rest is as `gemma_embed`.
///
/// # Safety
/// `model` is NULL or a live handle; `texts` is NULL or valid for `n_texts` reads, each NULL or NUL-terminated;
/// `out` is NULL or valid for `cap` writes of `float`; `n_out` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_embed_batch(
    model: *const GemmaModel,
    texts: *const *const c_char,
    n_texts: usize,
    out: *mut f32,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    code_call(|| {
        // SAFETY: `model` is NULL or live by the contract.
        let m = unsafe { model_ref(model) }?;
        let pointers: &[*const c_char] = match n_texts {
            0 => &[],
            _ if texts.is_null() => return Err(CapiError::NullPointer("texts (with n_texts above 0)")),
            // SAFETY: not NULL, and valid for `n_texts` reads by the contract; only read during this call.
            _ => unsafe { std::slice::from_raw_parts(texts, n_texts) },
        };
        let strs = pointers
            .iter()
            .enumerate()
            // SAFETY: each pointer is NULL or NUL-terminated by the contract, and only read during this call.
            .map(|(i, &p)| unsafe { read_str_named(p, || format!("texts[{i}]")) })
            .collect::<Result<Vec<&str>, _>>()?;
        // SAFETY: `n_out` is NULL or valid for a write by the contract.
        unsafe { check_outputs(out, cap, n_out) }?;
        // SAFETY: `out` is NULL with cap 0 (checked) or valid for `cap` writes, and `n_out` is not NULL and
        // valid for a write, by the contract.
        unsafe { m.embed_into(&strs, &|i| format!("texts[{i}]").into(), out, cap, n_out) }
    })
}
