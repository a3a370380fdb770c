//! LoRA adapters (`gemma_lora_*`, `gemma_chat_*_lora_scale`): loaded onto an open model with the library's
//! `Model::load_lora`, run by every pass through `Session` / `Conversation` scales (the library's
//! `forward_lora`), never copied here.
//!
//! Scales live here, not in the library's `Model`: the model-wide defaults (`gemma_lora_set_scale`) are read
//! by each `gemma_generate` and copied by each new chat, which then has its own (`gemma_chat_set_lora_scale`).
//! So setting a scale never writes the model, and the model is written only by `gemma_lora_load`, under its
//! write lock (generations hold the read lock) and only while no chat borrows it (chats hold the model for
//! their whole life without a lock; a load while one is open is refused).

use std::ffi::{c_char, c_int, CString};

use gemma_core::Model;

use crate::c_str::{read_str, write_opt};
use crate::error::{code_call, value_call, CapiError};
use crate::model::{model_ref, saturating_c_int, GemmaModel};

/// The adapters of a model handle, by index (= the library's adapter id).
#[derive(Default)]
pub struct Loras {
    /// The model-wide default scale of each adapter.
    pub(crate) scales: Vec<f32>,
    meta: Vec<LoraMeta>,
    /// Chats alive on the handle: each borrows the model, so no adapter may be loaded meanwhile.
    open_chats: usize,
}

/// What `gemma_lora_path` and friends hand out: owned by the handle, never removed, so the pointers stay
/// valid as long as the model (a `CString`'s bytes do not move when the `Vec` holding it grows).
struct LoraMeta {
    path: CString,
    task_name: CString,
    prompt_prefix: CString,
}

/// A text as C reads it; one with a NUL in it is cut there.
fn c_text(text: &str) -> CString {
    CString::new(text.split('\0').next().unwrap_or_default()).unwrap_or_default()
}

pub(crate) fn check_scale(scale: f32) -> Result<(), CapiError> {
    if scale.is_finite() {
        Ok(())
    } else {
        Err(CapiError::InvalidArgument(format!("LoRA scale {scale} is not a finite number")))
    }
}

/// `index` as an adapter index below `count`.
pub(crate) fn check_index(index: i32, count: usize) -> Result<usize, CapiError> {
    usize::try_from(index)
        .ok()
        .filter(|&i| i < count)
        .ok_or_else(|| CapiError::InvalidArgument(format!("there is no LoRA adapter {index} ({count} loaded)")))
}

/// A chat's hold on its model: counted in [`Loras::open_chats`] until dropped (after the chat's conversation,
/// which borrows the model: it is the chat's last field).
pub(crate) struct ChatHold(&'static GemmaModel);

impl Drop for ChatHold {
    fn drop(&mut self) {
        let mut loras = self.0.loras();
        loras.open_chats = loras.open_chats.saturating_sub(1);
    }
}

impl GemmaModel {
    /// Loads the adapter at `path` with the default scale `scale`; returns its index.
    pub fn load_lora(&self, path: &str, scale: f32) -> Result<usize, CapiError> {
        check_scale(scale)?;
        // The write lock waits for running generations; chats hold no lock, so they are counted instead.
        let mut model = self.model_mut()?;
        let mut loras = self.loras();
        if loras.open_chats > 0 {
            return Err(CapiError::InvalidArgument(format!(
                "cannot load a LoRA adapter while {} chat(s) are open on this model: load adapters before \
                 starting chats, or free the chats first",
                loras.open_chats
            )));
        }
        let id = model.load_lora(path, scale).map_err(CapiError::Lora)?;
        let adapter = &model.loras()[id];
        loras.meta.push(LoraMeta {
            path: c_text(path),
            task_name: c_text(adapter.task_name()),
            prompt_prefix: c_text(adapter.prompt_prefix()),
        });
        loras.scales.push(scale);
        Ok(id)
    }

    pub fn lora_count(&self) -> usize {
        self.loras().scales.len()
    }

    /// The model-wide default scale of adapter `index`.
    pub fn lora_scale(&self, index: i32) -> Result<f32, CapiError> {
        let loras = self.loras();
        Ok(loras.scales[check_index(index, loras.scales.len())?])
    }

    pub fn set_lora_scale(&self, index: i32, scale: f32) -> Result<(), CapiError> {
        check_scale(scale)?;
        let mut loras = self.loras();
        let i = check_index(index, loras.scales.len())?;
        loras.scales[i] = scale;
        Ok(())
    }

    /// A text of adapter `index`'s, owned by the handle.
    fn lora_text(&self, index: i32, text: fn(&LoraMeta) -> &CString) -> Result<*const c_char, CapiError> {
        let loras = self.loras();
        Ok(text(&loras.meta[check_index(index, loras.meta.len())?]).as_ptr())
    }

    /// The model for a chat's whole life, with the model-wide default scales as the chat's first ones.
    pub(crate) fn hold_for_chat(&'static self) -> (&'static Model, ChatHold, Vec<f32>) {
        let guard = self.model();
        // Counted while the read lock is held, so a load (which checks the count under the write lock) is
        // either finished or refused from now until the hold is dropped.
        let scales = {
            let mut loras = self.loras();
            loras.open_chats += 1;
            loras.scales.clone()
        };
        let model: *const Model = &*guard;
        drop(guard);
        // SAFETY: the model lives inside this handle, which outlives the chat (gemma.h: chats are freed before
        // their model). It is written only by `load_lora`, under the write lock and only while no chat is
        // counted; this chat is counted until its `ChatHold` drops, after its last use of the reference.
        (unsafe { &*model }, ChatHold(self), scales)
    }
}

/// Loads a LoRA adapter onto `model`; see `gemma.h`.
///
/// # Safety
/// `model` is NULL or a live handle; `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_load(model: *mut GemmaModel, path: *const c_char, scale: f32) -> c_int {
    let mut index = 0;
    let code = code_call(|| {
        // SAFETY: NULL or a live handle by the contract; only shared access is used.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: NULL or NUL-terminated by the contract; copied.
        let path = unsafe { read_str(path, "path") }?;
        let id = m.load_lora(path, scale)?;
        index = c_int::try_from(id).map_err(|_| CapiError::Internal(format!("adapter index {id} overflows int")))?;
        Ok(())
    });
    if code == crate::Status::Ok as c_int {
        index
    } else {
        code
    }
}

/// Adapters loaded onto `model`, or a negative status (`model` NULL).
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_count(model: *const GemmaModel) -> c_int {
    // SAFETY: NULL or live by the contract.
    unsafe { crate::model::model_info(model, |m| saturating_c_int(m.lora_count())) }
}

/// # Safety
/// `model` is NULL or a live handle.
unsafe fn lora_text(model: *const GemmaModel, index: i32, text: fn(&LoraMeta) -> &CString) -> *const c_char {
    value_call(std::ptr::null(), || {
        // SAFETY: NULL or live by the contract.
        unsafe { model_ref(model) }?.lora_text(index, text)
    })
}

/// The path adapter `index` was loaded from; owned by the model. NULL on a bad index or NULL model.
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_path(model: *const GemmaModel, index: i32) -> *const c_char {
    // SAFETY: NULL or live by the contract.
    unsafe { lora_text(model, index, |m| &m.path) }
}

/// The adapter's `adapter.lora.task_name` ("" when it has none); owned by the model.
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_task_name(model: *const GemmaModel, index: i32) -> *const c_char {
    // SAFETY: NULL or live by the contract.
    unsafe { lora_text(model, index, |m| &m.task_name) }
}

/// The adapter's `adapter.lora.prompt_prefix` ("" when it has none); owned by the model.
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_prompt_prefix(model: *const GemmaModel, index: i32) -> *const c_char {
    // SAFETY: NULL or live by the contract.
    unsafe { lora_text(model, index, |m| &m.prompt_prefix) }
}

/// The model-wide default scale of adapter `index` into `*scale`.
///
/// # Safety
/// `model` is NULL or a live handle; `scale` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_get_scale(model: *const GemmaModel, index: i32, scale: *mut f32) -> c_int {
    code_call(|| {
        if scale.is_null() {
            return Err(CapiError::NullPointer("scale"));
        }
        // SAFETY: NULL or live by the contract.
        let value = unsafe { model_ref(model) }?.lora_scale(index)?;
        // SAFETY: not NULL, so valid for a write by the contract.
        unsafe { write_opt(scale, value) };
        Ok(())
    })
}

/// Sets the model-wide default scale of adapter `index` (0 turns it off); see `gemma.h`.
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_lora_set_scale(model: *mut GemmaModel, index: i32, scale: f32) -> c_int {
    code_call(|| {
        // SAFETY: NULL or live by the contract; only shared access is used.
        unsafe { model_ref(model) }?.set_lora_scale(index, scale)
    })
}
