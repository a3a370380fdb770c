//! gemma-server's request parsing: the first byte picks the endpoint (`gemma_server::fuzzing::ENDPOINTS`), the
//! rest is the body. Everything a body goes through before the model runs: JSON, every field, the prompt's
//! tokens and chat template, sampling settings, grammars from schemas, and what the engine would be given.
//! A refusal must be a 4xx; a panic (or a failed check of what was accepted) is a finding.
//!
//! The tokenizer and chat template come from a real GGUF (`GEMMA_FUZZ_MODEL`, default Gemma 3 270M in the
//! model cache); the model is loaded once for its file facts and never run.
#![no_main]

use std::sync::{Arc, OnceLock};

use gemma_core::chat::ChatTemplate;
use gemma_core::{ModelConfig, Tokenizer};
use gemma_io::GgufFile;
use gemma_server::engine::LoadedModel;
use gemma_server::model_info::ModelFileInfo;
use libfuzzer_sys::fuzz_target;

fn loaded() -> &'static LoadedModel {
    static LOADED: OnceLock<LoadedModel> = OnceLock::new();
    LOADED.get_or_init(|| {
        let path = std::env::var("GEMMA_FUZZ_MODEL").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf")
        });
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // `/api/show`'s file facts are read from a model: loaded once (270M: a second), never run.
        let model = gemma_core::Model::open(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let config = ModelConfig::from_gguf(&file).expect("model config");
        let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
        let chat = ChatTemplate::from_gguf(&file, &tokenizer).expect("chat template");
        LoadedModel {
            id: "fuzz".into(),
            tokenizer: Arc::new(tokenizer),
            // Small, so that the context limits are reachable.
            ctx: 256,
            vocab_size: config.vocab_size,
            chat,
            created: 0,
            // The parsers of the embedding endpoints run too (the server checks the model kind first).
            embedding_dim: Some(768),
            dry_tables: Arc::default(),
            file_info: Arc::new(ModelFileInfo::read(&model, std::path::Path::new(&path))),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&endpoint, body)) = data.split_first() else { return };
    if let Err(e) = gemma_server::fuzzing::parse_request(endpoint as usize, body, loaded()) {
        let name = gemma_server::fuzzing::ENDPOINTS[endpoint as usize % gemma_server::fuzzing::ENDPOINTS.len()];
        assert!(e.status.is_client_error(), "{name} answered {}: {}", e.status, e.message);
        assert!(!e.message.is_empty());
    }
});
