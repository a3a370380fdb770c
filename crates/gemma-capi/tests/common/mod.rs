//! What the C API tests share (`mod common;` in each: every test file is its own crate): the default model's
//! path, llama.cpp's goldens, and the library's own greedy generation to compare with; EmbeddingGemma's path and
//! its reference embeddings; handles opened through the C API once per test binary, and small C-side helpers.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gemma_capi::{
    gemma_last_error, gemma_model_open, gemma_params_default, gemma_string_free, GemmaModel, GemmaParams,
};

use gemma_core::{GenerationOptions, GenerationOutput, KvType, Model, SamplingParams, Session, Tokenizer};
use gemma_ops::ThreadPool;

/// Greedy continuations in the tests are this long: enough to pass several certain golden steps, and fast.
pub const MAX_TOKENS: usize = 16;

/// The default model (Gemma 3 270M), pulled into the cache on first use as every model test does.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model available"))
        .clone()
}

/// EmbeddingGemma 300M (its sentence-transformers folder), pulled into the cache on first use.
pub fn embedding_model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| gemma_fetch::resolve_model("embeddinggemma-300m").expect("EmbeddingGemma available")).clone()
}

/// One text of the float64 reference embeddings (`scripts/embeddinggemma_reference.py`).
#[derive(serde::Deserialize)]
pub struct EmbeddingGolden {
    pub text: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

pub fn embedding_goldens() -> &'static [EmbeddingGolden] {
    #[derive(serde::Deserialize)]
    struct File {
        texts: Vec<EmbeddingGolden>,
    }
    static GOLDENS: OnceLock<Vec<EmbeddingGolden>> = OnceLock::new();
    GOLDENS.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/embeddinggemma_300m_ref_f64.json");
        let file: File =
            serde_json::from_str(&std::fs::read_to_string(path).expect("goldens readable")).expect("goldens parse");
        file.texts
    })
}

/// |a - b| / |b|, in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    (d / n).sqrt()
}

/// One prompt of llama.cpp's goldens (`testdata/goldens/README.md`).
#[derive(serde::Deserialize)]
pub struct Golden {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub gen_ids: Vec<u32>,
    pub gen_top1_top2_margin: Vec<f32>,
}

impl Golden {
    /// The leading greedy steps whose top-1 / top-2 margin is at least 0.75: there every correct engine
    /// picks llama.cpp's token (the goldens' free-running rule).
    pub fn certain_steps(&self) -> usize {
        self.gen_top1_top2_margin.iter().take_while(|&&m| m >= 0.75).count()
    }
}

pub fn goldens() -> &'static [Golden] {
    static GOLDENS: OnceLock<Vec<Golden>> = OnceLock::new();
    GOLDENS.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_goldens_shared.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("goldens readable")).expect("goldens parse")
    })
}

/// The library itself, loaded apart from any C handle.
pub struct Library {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub pool: ThreadPool,
}

impl Library {
    pub fn get() -> &'static Library {
        static LIBRARY: OnceLock<Library> = OnceLock::new();
        LIBRARY.get_or_init(|| {
            let model = Model::open(model_path()).expect("model loads");
            let tokenizer = model.tokenizer().expect("tokenizer loads");
            Library { model, tokenizer, pool: ThreadPool::new(2) }
        })
    }

    /// The library's greedy generation from `prompt_ids`, in a context as long as the model's (as the C API
    /// runs it).
    pub fn greedy(&self, prompt_ids: &[u32], max_tokens: usize) -> GenerationOutput {
        self.greedy_with_cache_types(prompt_ids, max_tokens, self.model.cache_types())
    }

    /// [`Library::greedy`] with a KV cache of these types (keys, values).
    pub fn greedy_with_cache_types(
        &self,
        prompt_ids: &[u32],
        max_tokens: usize,
        types: (KvType, KvType),
    ) -> GenerationOutput {
        let mut session =
            Session::with_cache_types(&self.model, self.model.config.context_length, types).expect("cache types fit");
        let opts = GenerationOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() };
        session.generate(&self.tokenizer, prompt_ids, &opts, &self.pool, &mut |_| {}).expect("library generates")
    }
}

/// This thread's `gemma_last_error()`.
pub fn last_error() -> String {
    // SAFETY: gemma_last_error returns a NUL-terminated string valid until the next failing call here.
    unsafe { CStr::from_ptr(gemma_last_error()) }.to_str().unwrap().to_string()
}

pub fn c_string(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Greedy parameters (temperature 0) for at most `max_tokens` tokens.
pub fn greedy_params(max_tokens: usize) -> GemmaParams {
    GemmaParams { temperature: 0.0, max_tokens: max_tokens as i32, ..gemma_params_default() }
}

/// A model handle opened through the C API, shared by the tests of one binary and never freed.
pub struct Handle(pub *mut GemmaModel);
// SAFETY: gemma.h lets a handle be used from several threads (every call only reads it); it is never freed.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    pub fn get(&self) -> *const GemmaModel {
        self.0
    }
}

fn open(path: &Path) -> Handle {
    let path = c_string(path.to_str().unwrap());
    // SAFETY: a NUL-terminated path.
    let model = unsafe { gemma_model_open(path.as_ptr(), 2) };
    assert!(!model.is_null(), "open failed: {}", last_error());
    Handle(model)
}

/// The default generative model (Gemma 3 270M), opened through the C API once per test binary.
pub fn generator() -> *const GemmaModel {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| open(&model_path())).get()
}

/// EmbeddingGemma 300M, opened through the C API once per test binary.
pub fn embedder() -> *const GemmaModel {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| open(&embedding_model_path())).get()
}

/// What a generation's callback saw.
#[derive(Default)]
pub struct Streamed {
    pub tokens: Vec<i32>,
    pub text: String,
    /// Return non-zero at this call (0: never).
    pub stop_after: usize,
}

/// A `gemma_token_callback` whose `user_data` is a [`Streamed`].
pub unsafe extern "C" fn collect(token: i32, piece: *const c_char, len: usize, user_data: *mut c_void) -> c_int {
    // SAFETY: `user_data` is the `Streamed` the test passed, alive and not otherwise borrowed during the
    // call.
    let streamed = unsafe { &mut *user_data.cast::<Streamed>() };
    // SAFETY: the API passes `len` bytes and a NUL.
    let bytes = unsafe { std::slice::from_raw_parts(piece.cast::<u8>(), len + 1) };
    assert_eq!(bytes[len], 0, "piece is NUL-terminated");
    streamed.text.push_str(std::str::from_utf8(&bytes[..len]).expect("pieces are UTF-8"));
    streamed.tokens.push(token);
    c_int::from(streamed.stop_after != 0 && streamed.tokens.len() >= streamed.stop_after)
}

/// The text a call handed out in `out` (NULL: none), freed.
///
/// # Safety
/// `out` is NULL or a string from the library, not used after this.
pub unsafe fn take_text(out: *mut c_char) -> Option<String> {
    (!out.is_null()).then(|| {
        // SAFETY: a NUL-terminated string from the library, freed once right after.
        let text = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_string();
        // SAFETY: as above.
        unsafe { gemma_string_free(out) };
        text
    })
}
