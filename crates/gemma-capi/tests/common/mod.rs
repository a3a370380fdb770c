//! What the C API tests share (`mod common;` in each: every test file is its own crate): the default model's
//! path, llama.cpp's goldens, and the library's own greedy generation to compare with; EmbeddingGemma's path and
//! its reference embeddings.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use gemma_core::{GenerationOptions, GenerationOutput, Model, SamplingParams, Session, Tokenizer};
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
        let mut session = Session::new(&self.model, self.model.config.context_length);
        let opts = GenerationOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() };
        session.generate(&self.tokenizer, prompt_ids, &opts, &self.pool, &mut |_| {}).expect("library generates")
    }
}
