//! The request parsing of every endpoint as one function, for the `server_request` fuzz target
//! (`fuzz/fuzz_targets/server_request.rs`, docs/fuzzing.md): everything a body goes through before the model,
//! with a [`LoadedModel`] built by [`model`] as the server builds it, never run.

use std::time::Duration;

use crate::api_error::ApiError;
use crate::engine::{EngineConfig, LoadedModel};
use crate::error::LoadError;
use crate::fields::Fields;
use crate::ollama::Kind;
use crate::openai::{engine_settings, Dialect, Plan};

/// The endpoints [`parse_request`] reads bodies for, by number.
pub const ENDPOINTS: [&str; 21] = [
    "/v1/completions",
    "/v1/chat/completions",
    "/completion",
    ":generateContent",
    ":streamGenerateContent",
    "/generate",
    "/v1/embeddings",
    ":embedContent",
    ":batchEmbedContents",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/apply-template",
    "/tokenize",
    "/detokenize",
    "/embedding",
    "/v1/responses",
    "/v1/responses/input_tokens",
    "/v1/messages",
    "/v1/messages/count_tokens",
];

/// What the requests are parsed for: the model at `path` loaded as the server loads it (tokenizer, chat
/// template, `/api/show`'s file facts), with a small context so that its limits are reachable, and an
/// embedding width so that the embedding endpoints' parsers run too (the server checks the model kind before
/// them). Built here, not in the fuzz target, so that it follows every change to [`LoadedModel`].
pub fn model(path: &str) -> Result<LoadedModel, LoadError> {
    let config = EngineConfig {
        model: path.to_string(),
        parallel: 1,
        ctx: 256,
        threads: 1,
        queue_size: 1,
        prefix_cache_tokens: 0,
        prefill_chunk: 512,
        request_timeout: Duration::from_secs(60),
        max_sessions: 1,
        speculative: None,
        loras: Vec::new(),
        cache_types: Default::default(),
    };
    let (_, mut loaded) = crate::engine::load(&config)?;
    loaded.embedding_dim = Some(768);
    Ok(loaded)
}

/// Parses `body` as endpoint `ENDPOINTS[endpoint % ENDPOINTS.len()]` would, then works out what the engine would
/// be given. `Err` is the client's error; a panic, or an error that is not a 4xx, is a bug the fuzz target
/// reports.
pub fn parse_request(endpoint: usize, body: &[u8], loaded: &LoadedModel) -> Result<(), ApiError> {
    let plans: Vec<Plan> = match endpoint % ENDPOINTS.len() {
        0 => vec![crate::openai::parse_plan(&Fields::parse(body)?, loaded, Dialect::Completion)?],
        1 => vec![crate::openai::parse_plan(&Fields::parse(body)?, loaded, Dialect::Chat)?],
        2 => {
            let (plan, native) = crate::llama_native::parse(&Fields::parse(body)?, loaded)?;
            assert!(native.n_probs <= 100 && native.n_predict >= -1);
            vec![plan]
        }
        3 => vec![crate::gemini::parse_plan(&Fields::parse(body)?, loaded, false)?],
        4 => vec![crate::gemini::parse_plan(&Fields::parse(body)?, loaded, true)?],
        5 => {
            let (_, session, plan, prompt, _) = crate::generate::parse_body(body, loaded)?;
            assert!(session.is_some() || !prompt.is_empty());
            vec![plan]
        }
        6 => {
            let (inputs, dims, _) = crate::embeddings::parse_openai(body, loaded)?;
            check_embedding_inputs(&inputs, dims.into_iter(), loaded);
            Vec::new()
        }
        e @ (7 | 8) => {
            let requests = crate::embeddings::parse_gemini(body, loaded, e == 8)?;
            let inputs: Vec<Vec<u32>> = requests.iter().map(|(ids, _)| ids.clone()).collect();
            check_embedding_inputs(&inputs, requests.iter().filter_map(|(_, d)| *d), loaded);
            Vec::new()
        }
        e @ (9 | 10) => {
            let kind = if e == 9 { Kind::Generate } else { Kind::Chat };
            let g = crate::ollama::parse_generation(body, loaded, kind)?;
            assert!(g.kind == kind && (kind == Kind::Generate || !g.with_context));
            g.plan.into_iter().collect()
        }
        11 => {
            let (inputs, dims) = crate::ollama::parse_embed(body, loaded)?;
            check_embedding_inputs(&inputs, dims.into_iter(), loaded);
            Vec::new()
        }
        12 => {
            let ids = crate::ollama::parse_embeddings_legacy(body, loaded)?;
            check_embedding_inputs(&ids.into_iter().collect::<Vec<_>>(), std::iter::empty(), loaded);
            Vec::new()
        }
        13 => {
            crate::llama_server::render_request(&Fields::parse(body)?, &loaded.chat)?;
            Vec::new()
        }
        14 => {
            let v = crate::llama_server::tokenize_body(body, loaded)?;
            assert!(v["tokens"].is_array());
            Vec::new()
        }
        15 => {
            crate::llama_server::detokenize_body(body, loaded)?;
            Vec::new()
        }
        17 => vec![crate::responses::parse_plan(body, loaded)?],
        18 => {
            let n = crate::responses::count_input_tokens(body, loaded)?;
            assert!(n >= 1);
            Vec::new()
        }
        19 => vec![crate::anthropic::parse_plan(&Fields::parse(body)?, loaded)?],
        20 => {
            assert!(crate::anthropic::parse_count_tokens(body, loaded)? >= 1);
            Vec::new()
        }
        _ => {
            let inputs = crate::llama_server::embedding_inputs(body, loaded)?;
            check_embedding_inputs(&inputs, std::iter::empty(), loaded);
            Vec::new()
        }
    };
    for plan in &plans {
        assert!(plan.n >= 1 && plan.n * plan.prompts.len() <= crate::openai::MAX_CHOICES);
        for (p, prompt) in plan.prompts.iter().enumerate() {
            assert!(prompt.len() < loaded.ctx, "a prompt the context cannot hold was accepted");
            assert!(prompt.iter().all(|&id| (id as usize) < loaded.vocab_size));
            let (_, max_tokens, sampling) = engine_settings(plan, p, prompt.len(), loaded.ctx, false);
            assert!(max_tokens >= 1 && max_tokens <= loaded.ctx - prompt.len());
            let (_, shifted_max, _) = engine_settings(plan, p, prompt.len(), loaded.ctx, true);
            assert!(shifted_max >= 1);
            if let Err(e) = sampling.validate() {
                panic!("accepted sampling settings the engine refuses: {e}");
            }
        }
    }
    Ok(())
}

fn check_embedding_inputs(inputs: &[Vec<u32>], dims: impl Iterator<Item = usize>, loaded: &LoadedModel) {
    for ids in inputs {
        assert!(!ids.is_empty() && ids.len() <= loaded.ctx);
        assert!(ids.iter().all(|&id| (id as usize) < loaded.vocab_size));
    }
    for d in dims {
        assert!(d >= 1 && Some(d) <= loaded.embedding_dim);
    }
}
