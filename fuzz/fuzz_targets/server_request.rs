//! gemma-server's request parsing: the first byte picks the endpoint (`gemma_server::fuzzing::ENDPOINTS`), the
//! rest is the body. Everything a body goes through before the model runs: JSON, every field, the prompt's
//! tokens and chat template, sampling settings, grammars from schemas, and what the engine would be given.
//! A refusal must be a 4xx; a panic (or a failed check of what was accepted) is a finding.
//!
//! The tokenizer and chat template come from a real GGUF (`GEMMA_FUZZ_MODEL`, default Gemma 3 270M in the
//! model cache), loaded once as the server loads it (`gemma_server::fuzzing::model`) and never run.
#![no_main]

use std::sync::OnceLock;

use gemma_server::engine::LoadedModel;
use libfuzzer_sys::fuzz_target;

fn loaded() -> &'static LoadedModel {
    static LOADED: OnceLock<LoadedModel> = OnceLock::new();
    LOADED.get_or_init(|| {
        let path = std::env::var("GEMMA_FUZZ_MODEL").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf")
        });
        gemma_server::fuzzing::model(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    })
}

// Loaded before the first input, so that the load (seconds under the sanitizers) is not timed as one.
fuzz_target!(init: { loaded(); }, |data: &[u8]| {
    let Some((&endpoint, body)) = data.split_first() else { return };
    if let Err(e) = gemma_server::fuzzing::parse_request(endpoint as usize, body, loaded()) {
        let name = gemma_server::fuzzing::ENDPOINTS[endpoint as usize % gemma_server::fuzzing::ENDPOINTS.len()];
        assert!(e.status.is_client_error(), "{name} answered {}: {}", e.status, e.message);
        assert!(!e.message.is_empty());
    }
});
