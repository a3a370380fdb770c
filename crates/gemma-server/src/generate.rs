//! `POST /generate`: the parity checklist's plain endpoint. `{"prompt", sampling fields, "session"?}` →
//! `{"text", "finish_reason", "session", "usage"}`. With a `session` id the prompt continues what the
//! session holds (earlier prompts and answers), and the session's KV cache is kept between calls, so a call
//! prefills only its new tokens. Sessions are bounded (`inference.max_sessions`); the least recently used
//! is evicted first.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc::unbounded_channel;

use crate::api_error::ApiError;
use crate::engine::{GenerationRequest, SessionRef};
use crate::fields::Fields;
use crate::openai::{collect_choices, parse_plan, submit_error, Dialect};
use crate::server::{read_body, AppState};

/// Longest session id.
pub const MAX_SESSION_ID: usize = 128;

pub async fn generate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let f = Fields::parse(&bytes)?;
    if !matches!(f.raw("prompt"), None | Some(Value::String(_))) {
        return Err(ApiError::invalid_param("prompt", "'prompt' must be a string").with_code("invalid_type"));
    }
    if f.get::<bool>("stream")?.unwrap_or(false) {
        return Err(ApiError::invalid_param("stream", "'/generate' does not stream; use /v1/completions"));
    }
    if f.integer_in("n", 1..=1)?.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("n", "'/generate' makes one answer"));
    }
    let session = f.get::<String>("session")?;
    if let Some(id) = &session {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
        if id.is_empty() || id.len() > MAX_SESSION_ID || !id.chars().all(valid) {
            return Err(ApiError::invalid_param(
                "session",
                format!("'session' must be 1 to {MAX_SESSION_ID} characters of A-Z a-z 0-9 - _ . :"),
            ));
        }
    }
    // Checks the prompt and every sampling field the way /v1/completions does.
    let mut plan = parse_plan(&f, &loaded, Dialect::Completion)?;
    let tok = &loaded.tokenizer;
    let (prompt_ids, session_ref) = match &session {
        Some(id) => {
            // The engine puts BOS first only when the session is new.
            let text = f.get::<String>("prompt")?.unwrap_or_default();
            let bos = plan.prompts.first().and_then(|p| p.first().copied()).filter(|_| tok.add_bos());
            (tok.encode(&text, false, true), Some(SessionRef { id: id.clone(), first_token: bos }))
        }
        None => (plan.prompts.swap_remove(0), None),
    };
    if session.is_none() && prompt_ids.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    let (tx, rx) = unbounded_channel();
    // A session's whole history is checked against the context by the engine, which knows it.
    let room = loaded.ctx.saturating_sub(prompt_ids.len()).max(1);
    let req = GenerationRequest {
        prompt_ids,
        max_tokens: plan.max_tokens.unwrap_or(room).min(room),
        sampling: plan.sampling,
        stop: plan.stop,
        top_logprobs: None,
        choice: 0,
        n: 1,
        session: session_ref,
        events: tx,
        submitted: received,
    };
    state.engine().submit(req).map_err(submit_error)?;
    let results = collect_choices(rx, 1).await?;
    let r = results.into_iter().next().ok_or_else(|| ApiError::internal("the engine sent no result"))?;
    let finish = r.finish.ok_or_else(|| ApiError::internal("the engine sent no finish"))?;
    Ok(Json(json!({
        "text": r.text,
        "finish_reason": finish.reason.as_str(),
        "session": session,
        "usage": {
            "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
            "total_tokens": finish.prompt_tokens + finish.completion_tokens,
            "cached_tokens": finish.cached_tokens,
        },
    })))
}
