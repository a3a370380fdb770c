//! The model handle: a loaded model with its tokenizer, chat template and thread pool.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CString};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use gemma_core::chat::ChatTemplate;
use gemma_core::{Model, Tokenizer};
use gemma_ops::ThreadPool;

use crate::c_str::read_str;
use crate::error::{value_call, CapiError};

/// `gemma_model` of the C API. Generation and embedding keep their state in the call and only read the
/// model, so one handle serves several threads at once. The one writer is `gemma_lora_load`, which adds an
/// adapter under the write lock of `model`, and only while no chat borrows the model (`lora.rs`).
pub struct GemmaModel {
    model: RwLock<Model>,
    /// The LoRA adapters' default scales, their facts, and the chats that borrow `model`.
    pub(crate) loras: Mutex<crate::lora::Loras>,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) pool: ThreadPool,
    /// The model's chat template, or why it cannot be used: a model with a broken template still generates
    /// plain text, so the error waits for a call that asks for the template.
    pub(crate) chat_template: Result<ChatTemplate, String>,
    name: CString,
    /// Facts fixed at open, read without the lock.
    context_length: usize,
    embedding_dim: Option<usize>,
    model_name: String,
}

// The C header promises that a handle may be shared between threads.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<GemmaModel>()
};

impl GemmaModel {
    /// Loads the model at `path` with a pool of `n_threads` threads (0: one per available core).
    pub fn open(path: &str, n_threads: usize) -> Result<GemmaModel, CapiError> {
        let threads = match n_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let model = Model::open(path).map_err(CapiError::ModelLoad)?;
        let tokenizer = model.tokenizer().map_err(CapiError::ModelLoad)?;
        let pool = ThreadPool::try_new(threads).map_err(|source| CapiError::Threads { threads, source })?;
        let chat_template = ChatTemplate::from_gguf(&model.file, &tokenizer).map_err(|e| e.to_string());
        // A name is metadata text; one with a NUL in it is cut there.
        let name = model.config.name.split('\0').next().unwrap_or_default();
        let name = CString::new(name).unwrap_or_default();
        Ok(GemmaModel {
            context_length: model.config.context_length,
            embedding_dim: model.embedding_dim(),
            model_name: model.config.name.clone(),
            model: RwLock::new(model),
            loras: Mutex::default(),
            tokenizer,
            pool,
            chat_template,
            name,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The width of an embedding model's vectors; `None` for a generative model.
    pub fn embedding_dim(&self) -> Option<usize> {
        self.embedding_dim
    }

    pub fn is_embedding_model(&self) -> bool {
        self.embedding_dim.is_some()
    }

    /// The model's name from its metadata, as the library's errors name it.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The model, for reading. A panic never leaves it half-changed (an adapter is pushed whole), so a
    /// poisoned lock is still good.
    pub(crate) fn model(&self) -> ModelRead<'_> {
        let guard = self.model.read().unwrap_or_else(|p| p.into_inner());
        READING.with(|n| n.set(n.get() + 1));
        ModelRead(guard)
    }

    /// The model, for `gemma_lora_load` only. Refused on a thread that is reading a model (a token callback of
    /// `gemma_generate` calling `gemma_lora_load`), which would otherwise wait for itself forever.
    pub(crate) fn model_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Model>, CapiError> {
        if READING.with(Cell::get) > 0 {
            return Err(CapiError::InvalidArgument(
                "gemma_lora_load cannot run inside a token callback (the generation reads the model)".into(),
            ));
        }
        Ok(self.model.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// The adapters' state (scales, facts, open chats).
    pub(crate) fn loras(&self) -> MutexGuard<'_, crate::lora::Loras> {
        self.loras.lock().unwrap_or_else(|p| p.into_inner())
    }
}

thread_local! {
    /// Read locks of a model this thread holds (a generation whose token callback is running, say).
    static READING: Cell<usize> = const { Cell::new(0) };
}

/// A read lock on a handle's model, counted in [`READING`] while held.
pub(crate) struct ModelRead<'a>(RwLockReadGuard<'a, Model>);

impl std::ops::Deref for ModelRead<'_> {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.0
    }
}

impl Drop for ModelRead<'_> {
    fn drop(&mut self) {
        READING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// The model behind a handle from C.
///
/// # Safety
/// `model` is NULL or a handle from `gemma_model_open` that was not freed.
pub(crate) unsafe fn model_ref<'a>(model: *const GemmaModel) -> Result<&'a GemmaModel, CapiError> {
    // SAFETY: by the contract, not NULL means a live handle, which `as_ref` may borrow.
    unsafe { model.as_ref() }.ok_or(CapiError::NullPointer("model"))
}

pub(crate) fn saturating_c_int(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// Opens a GGUF file, a gemma.cpp SBS checkpoint or an EmbeddingGemma sentence-transformers folder. NULL on
/// failure, with the reason in `gemma_last_error()`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gemma_model_open(path: *const c_char, n_threads: c_int) -> *mut GemmaModel {
    value_call(std::ptr::null_mut(), || {
        // SAFETY: `path` is NULL or NUL-terminated by this function's contract; it is only read here.
        let path = unsafe { read_str(path, "path") }?;
        let threads = usize::try_from(n_threads.max(0)).unwrap_or(0);
        Ok(Box::into_raw(Box::new(GemmaModel::open(path, threads)?)))
    })
}

/// Frees a model handle; NULL is ignored.
///
/// # Safety
/// `model` is NULL or a handle from `gemma_model_open` that was not freed, and no other call is using it.
#[no_mangle]
pub unsafe extern "C" fn gemma_model_free(model: *mut GemmaModel) {
    value_call((), || {
        if !model.is_null() {
            // SAFETY: a live handle from Box::into_raw in gemma_model_open, given back once (the contract).
            drop(unsafe { Box::from_raw(model) });
        }
        Ok(())
    })
}

/// Tokens in the model's vocabulary, or a negative error code (`model` NULL).
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_model_vocab_size(model: *const GemmaModel) -> c_int {
    // SAFETY: `model` is NULL or live by the contract.
    unsafe { model_info(model, |m| saturating_c_int(m.vocab_size())) }
}

/// The model's context length in tokens, or a negative error code (`model` NULL).
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_model_context_length(model: *const GemmaModel) -> c_int {
    // SAFETY: `model` is NULL or live by the contract.
    unsafe { model_info(model, |m| saturating_c_int(m.context_length())) }
}

/// The model's name from its metadata (may be empty), owned by the handle; NULL if `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gemma_model_name(model: *const GemmaModel) -> *const c_char {
    value_call(std::ptr::null(), || {
        // SAFETY: `model` is NULL or live by the contract.
        Ok(unsafe { model_ref(model) }?.name.as_ptr())
    })
}

/// # Safety
/// `model` is NULL or a live handle.
pub(crate) unsafe fn model_info(model: *const GemmaModel, get: impl FnOnce(&GemmaModel) -> c_int) -> c_int {
    value_call(crate::Status::InvalidArgument as c_int, || {
        // SAFETY: `model` is NULL or live by the contract.
        Ok(get(unsafe { model_ref(model) }?))
    })
}
