//! Status codes, the errors behind them, the per-thread last-error message, and the guard every entry point
//! runs its body in (no panic crosses into C).

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use gemma_core::lora::LoraError;
use gemma_core::sampling::SamplingError;
use gemma_core::ModelError;

/// What a `gemma_*` function returns: `GEMMA_OK` (0) or a negative error code. The names and values are the
/// enum `gemma_status` of `gemma.h` (a test holds the two together).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    InvalidArgument = -1,
    InvalidUtf8 = -2,
    BufferTooSmall = -3,
    ModelLoad = -4,
    InvalidToken = -5,
    ContextFull = -6,
    ChatTemplate = -7,
    Generation = -8,
    Internal = -9,
    WrongModelKind = -10,
    Lora = -11,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::InvalidArgument,
        Status::InvalidUtf8,
        Status::BufferTooSmall,
        Status::ModelLoad,
        Status::InvalidToken,
        Status::ContextFull,
        Status::ChatTemplate,
        Status::Generation,
        Status::Internal,
        Status::WrongModelKind,
        Status::Lora,
    ];

    /// The enumerator's name in `gemma.h`.
    pub fn c_name(self) -> &'static str {
        match self {
            Status::Ok => "GEMMA_OK",
            Status::InvalidArgument => "GEMMA_ERR_INVALID_ARGUMENT",
            Status::InvalidUtf8 => "GEMMA_ERR_INVALID_UTF8",
            Status::BufferTooSmall => "GEMMA_ERR_BUFFER_TOO_SMALL",
            Status::ModelLoad => "GEMMA_ERR_MODEL_LOAD",
            Status::InvalidToken => "GEMMA_ERR_INVALID_TOKEN",
            Status::ContextFull => "GEMMA_ERR_CONTEXT_FULL",
            Status::ChatTemplate => "GEMMA_ERR_CHAT_TEMPLATE",
            Status::Generation => "GEMMA_ERR_GENERATION",
            Status::Internal => "GEMMA_ERR_INTERNAL",
            Status::WrongModelKind => "GEMMA_ERR_WRONG_MODEL_KIND",
            Status::Lora => "GEMMA_ERR_LORA",
        }
    }

    /// A short description, NUL-terminated for `gemma_error_string`.
    pub fn description(self) -> &'static CStr {
        match self {
            Status::Ok => c"success",
            Status::InvalidArgument => c"invalid argument",
            Status::InvalidUtf8 => c"string is not valid UTF-8",
            Status::BufferTooSmall => c"buffer too small",
            Status::ModelLoad => c"cannot load the model",
            Status::InvalidToken => c"token id outside the vocabulary",
            Status::ContextFull => c"the context is full",
            Status::ChatTemplate => c"the chat template failed",
            Status::Generation => c"generation failed",
            Status::Internal => c"internal error",
            Status::WrongModelKind => c"wrong kind of model for this call (generative or embedding)",
            Status::Lora => c"the LoRA adapter cannot be loaded",
        }
    }

    pub fn from_code(code: c_int) -> Option<Status> {
        Status::ALL.into_iter().find(|s| *s as c_int == code)
    }
}

/// Why a call failed; its text becomes `gemma_last_error()`.
#[derive(Debug, thiserror::Error)]
pub enum CapiError {
    #[error("{0} is NULL")]
    NullPointer(&'static str),
    #[error("{what} is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    InvalidUtf8 { what: Cow<'static, str>, valid_up_to: usize },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the buffer holds {capacity} {unit} but {needed} are needed")]
    BufferTooSmall { needed: usize, capacity: usize, unit: &'static str },
    #[error("cannot load the model: {}", gemma_core::error::error_report(.0))]
    ModelLoad(#[source] ModelError),
    #[error("cannot load the LoRA adapter: {}", gemma_core::error::error_report(.0))]
    Lora(#[source] LoraError),
    #[error("cannot start {threads} threads: {source}")]
    Threads {
        threads: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    InvalidToken { id: u32, vocab: usize },
    #[error("the prompt is {prompt} tokens long but the context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("{what} is {tokens} tokens long (BOS and EOS included) but the model's context holds {context}")]
    InputTooLong { what: Cow<'static, str>, tokens: usize, context: usize },
    /// `gemma_embed` on a generative model (the library's `NotEmbeddingModel`).
    #[error("{0}")]
    NotEmbeddingModel(#[source] ModelError),
    /// `gemma_generate` on an embedding model (the library's `EmbeddingModel`).
    #[error("{0}; in the C API its vectors come from gemma_embed")]
    EmbeddingModel(#[source] ModelError),
    #[error("the chat template cannot be used: {0}")]
    ChatTemplate(String),
    #[error("invalid sampling parameters: {0}")]
    Sampling(#[from] SamplingError),
    #[error("generation failed: {}", gemma_core::error::error_report(.0))]
    Generation(#[source] ModelError),
    #[error("embedding failed: {}", gemma_core::error::error_report(.0))]
    Embedding(#[source] ModelError),
    #[error("cannot allocate {0} bytes for the text")]
    OutOfMemory(usize),
    #[error("internal error (a panic in gemma-rs): {0}")]
    Panic(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CapiError {
    pub fn status(&self) -> Status {
        match self {
            CapiError::NullPointer(_) | CapiError::InvalidArgument(_) | CapiError::Sampling(_) => {
                Status::InvalidArgument
            }
            CapiError::InvalidUtf8 { .. } => Status::InvalidUtf8,
            CapiError::BufferTooSmall { .. } => Status::BufferTooSmall,
            CapiError::ModelLoad(_) | CapiError::Threads { .. } => Status::ModelLoad,
            CapiError::InvalidToken { .. } => Status::InvalidToken,
            CapiError::PromptTooLong { .. }
            | CapiError::InputTooLong { .. }
            | CapiError::Generation(ModelError::ContextFull { .. })
            | CapiError::Embedding(ModelError::ContextFull { .. }) => Status::ContextFull,
            CapiError::Embedding(ModelError::TokenOutOfRange { .. }) => Status::InvalidToken,
            CapiError::NotEmbeddingModel(_)
            | CapiError::EmbeddingModel(_)
            | CapiError::Embedding(ModelError::NotEmbeddingModel(_)) => Status::WrongModelKind,
            CapiError::ChatTemplate(_) => Status::ChatTemplate,
            CapiError::Lora(LoraError::BadScale(_) | LoraError::NoAdapter { .. }) => Status::InvalidArgument,
            CapiError::Lora(_) => Status::Lora,
            CapiError::Generation(_) | CapiError::Embedding(_) => Status::Generation,
            CapiError::OutOfMemory(_) | CapiError::Panic(_) | CapiError::Internal(_) => Status::Internal,
        }
    }
}

thread_local! {
    /// The message of the last failed call on this thread; `gemma_last_error` hands out a pointer into it.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // A message with a NUL in it (from a file name, say) is cut there rather than lost.
    let bytes: Vec<u8> = message.into_bytes().into_iter().take_while(|&b| b != 0).collect();
    let message = CString::new(bytes).unwrap_or_default();
    // During thread teardown the slot may be gone; the message is then dropped, never a panic.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = message);
}

/// The last error message of this thread; valid until the next failing call on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.try_with(|last| last.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs the body of an entry point that returns a value: on an error (or a panic) the message becomes the
/// thread's last error and `on_error` is returned.
pub fn value_call<T>(on_error: T, body: impl FnOnce() -> Result<T, CapiError>) -> T {
    match guarded(body) {
        Ok(value) => value,
        Err(e) => {
            set_last_error(e.to_string());
            on_error
        }
    }
}

/// The body's result, with a panic turned into [`CapiError::Panic`]. The body only touches memory the
/// caller handed over and the model, whose state a panic leaves consistent (generation state lives in the
/// call), so observing it after a caught panic is sound.
fn guarded<T>(body: impl FnOnce() -> Result<T, CapiError>) -> Result<T, CapiError> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(CapiError::Panic(panic_message(&*payload))))
}

/// Runs the body of an entry point that returns a status: an error (or a panic) becomes its code, and its
/// message the thread's last error.
pub fn code_call(body: impl FnOnce() -> Result<(), CapiError>) -> c_int {
    match guarded(body) {
        Ok(()) => Status::Ok as c_int,
        Err(e) => {
            set_last_error(e.to_string());
            e.status() as c_int
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: the pointer comes from this thread's CString, not replaced before it is read here.
        unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let code = code_call(|| panic!("boom {}", 42));
        assert_eq!(code, Status::Internal as c_int);
        assert!(last_error().contains("boom 42"), "{}", last_error());
        assert_eq!(value_call(7, || panic!("again")), 7);
        assert!(last_error().contains("again"));
    }

    #[test]
    fn errors_map_to_their_codes_and_messages() {
        assert_eq!(code_call(|| Err(CapiError::NullPointer("model"))), Status::InvalidArgument as c_int);
        assert_eq!(last_error(), "model is NULL");
        let e = CapiError::BufferTooSmall { needed: 5, capacity: 2, unit: "token ids" };
        assert_eq!(code_call(|| Err(e)), Status::BufferTooSmall as c_int);
        assert_eq!(code_call(|| Ok(())), 0);
        // A success leaves the last message alone.
        assert!(last_error().contains("5 are needed"));
    }

    #[test]
    fn embedding_errors_map_to_their_codes() {
        let full = CapiError::Embedding(ModelError::ContextFull { pos: 2048, ctx: 2048 });
        assert_eq!(full.status(), Status::ContextFull);
        let kind = CapiError::Embedding(ModelError::NotEmbeddingModel("m".into()));
        assert_eq!(kind.status(), Status::WrongModelKind);
        assert_eq!(CapiError::NotEmbeddingModel(ModelError::NotEmbeddingModel("m".into())).status(), kind.status());
        let generate = CapiError::EmbeddingModel(ModelError::EmbeddingModel("e".into()));
        assert_eq!(generate.status(), Status::WrongModelKind);
        assert!(generate.to_string().starts_with("e is an embedding model"), "{generate}");
        assert!(generate.to_string().ends_with("gemma_embed"), "{generate}");
        let too_long = CapiError::InputTooLong { what: "texts[2]".into(), tokens: 3000, context: 2048 };
        assert_eq!(too_long.status(), Status::ContextFull);
        let bad = CapiError::Embedding(ModelError::BadBatch("x".into()));
        assert_eq!(bad.status(), Status::Generation);
    }

    #[test]
    fn a_nul_in_a_message_cuts_it() {
        code_call(|| Err(CapiError::InvalidArgument("before\0after".into())));
        assert_eq!(last_error(), "before");
    }

    #[test]
    fn codes_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s as c_int), Some(s));
        }
        assert_eq!(Status::from_code(1), None);
    }
}
