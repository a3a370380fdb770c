//! `POST /generate`: the parity checklist's plain endpoint. `{"prompt", sampling fields, "session"?,
//! "stream"?}` → `{"text", "finish_reason", "session", "usage"}`. With a `session` id the prompt continues
//! what the session holds (earlier prompts and answers), and the session's KV cache is kept between calls, so
//! a call prefills only its new tokens. Sessions are bounded (`inference.max_sessions`); the least recently
//! used is evicted first. A call runs at the LoRA scales of its `lora` field (else the global ones, as
//! `/completion`); a session whose cache was computed at other scales prefills its whole history again.
//!
//! With `"stream": true` the answer comes as newline-delimited JSON (`application/x-ndjson`, as ollama's
//! `/api/generate` streams): `{"text": "...", "done": false}` per piece of text, then one last line with
//! `"done": true` and the `finish_reason`, `session` and `usage` of the plain answer, or with `"done": true`
//! and an `error` object if the request fails after the answer has started (headers already sent). A client
//! that disconnects cancels the generation.

use std::time::Instant;

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api_error::ApiError;
use crate::engine::{Event, Finish, GenerationRequest, LoadedModel, SessionRef};
use crate::fields::Fields;
use crate::openai::{collect_choices, parse_plan, submit_error, Dialect, Plan};
use crate::server::{off_runtime, read_body, AppState};

/// Longest session id.
pub const MAX_SESSION_ID: usize = 128;

pub async fn generate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let parsing = loaded.clone();
    let (stream, session, plan, prompt_ids, session_ref) = off_runtime(move || parse_body(&bytes, &parsing)).await?;
    let (tx, rx) = unbounded_channel();
    // A session's whole history is checked against the context by the engine, which knows it.
    let (server_on, server_keep) = state.context_shift();
    let context_shift =
        plan.shift.resolve(server_on, server_keep, prompt_ids.len(), loaded.tokenizer.add_bos(), loaded.ctx);
    let room = if context_shift.is_some() { usize::MAX } else { loaded.ctx.saturating_sub(prompt_ids.len()).max(1) };
    let req = GenerationRequest {
        prompt_ids,
        max_tokens: plan.max_tokens.unwrap_or(room).min(room),
        sampling: plan.sampling,
        stop: plan.stop,
        top_logprobs: None,
        choice: 0,
        n: 1,
        session: session_ref,
        lora: plan.lora.clone().unwrap_or_else(|| loaded.lora_scales()),
        events: tx,
        submitted: received,
        context_shift,
    };
    state.engine().submit(req).map_err(submit_error)?;
    if stream {
        let lines = Body::from_stream(ndjson_lines(rx, session));
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response());
    }
    let results = collect_choices(rx, 1).await?;
    let r = results.into_iter().next().ok_or_else(|| ApiError::internal("the engine sent no result"))?;
    let finish = r.finish.ok_or_else(|| ApiError::internal("the engine sent no finish"))?;
    Ok(Json(json!({
        "text": r.text,
        "finish_reason": finish.reason.as_str(),
        "session": session,
        "usage": usage(&finish),
    }))
    .into_response())
}

/// A `/generate` body: whether to stream, the session id, the checked plan, the prompt's ids and the session.
pub(crate) type Parsed = (bool, Option<String>, Plan, Vec<u32>, Option<SessionRef>);

/// Reads and checks a `/generate` body.
pub(crate) fn parse_body(bytes: &[u8], loaded: &LoadedModel) -> Result<Parsed, ApiError> {
    let f = Fields::parse(bytes)?;
    if !matches!(f.raw("prompt"), None | Some(Value::String(_))) {
        return Err(ApiError::invalid_param("prompt", "'prompt' must be a string").with_code("invalid_type"));
    }
    let stream = f.get::<bool>("stream")?.unwrap_or(false);
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
    let mut plan = parse_plan(&f, loaded, Dialect::Completion)?;
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
    Ok((stream, session, plan, prompt_ids, session_ref))
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "cached_tokens": f.cached_tokens,
    })
}

/// The streamed answer: a line per piece of text, then the closing line (see the module's doc). Dropping the
/// stream (the client left) drops the receiver, which cancels the sequence.
fn ndjson_lines(
    rx: UnboundedReceiver<(usize, Event)>,
    session: Option<String>,
) -> impl Stream<Item = Result<String, Infallible>> {
    let line = |v: Value| format!("{v}\n");
    let failed = |e: ApiError| {
        let mut v = e.body();
        v["done"] = json!(true);
        v
    };
    stream::unfold(Some(rx), move |rx| {
        let session = session.clone();
        async move {
            let mut rx = rx?;
            loop {
                let (closing, v) = match rx.recv().await {
                    None => (true, failed(ApiError::internal("the inference engine stopped"))),
                    Some((_, Event::Chunk(c))) if c.text.is_empty() => continue,
                    Some((_, Event::Chunk(c))) => (false, json!({"text": c.text, "done": false})),
                    Some((_, Event::Done(f))) => (
                        true,
                        json!({"text": "", "done": true, "finish_reason": f.reason.as_str(), "session": session,
                               "usage": usage(&f)}),
                    ),
                    Some((_, Event::Error(m))) => (true, failed(ApiError::internal(m))),
                    Some((_, Event::Rejected(m))) => (true, failed(ApiError::invalid(m))),
                };
                return Some((Ok(line(v)), (!closing).then_some(rx)));
            }
        }
    })
}
