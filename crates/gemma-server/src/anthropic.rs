//! Anthropic's Messages API, as llama-server serves it: `POST /v1/messages` (plain JSON or an SSE stream of
//! named events) and `POST /v1/messages/count_tokens`, on the chat path of the OpenAI dialect (the same
//! template, prompt and engine). Text only: tools, images, documents and thinking are refused with a 400
//! (docs/anthropic.md).

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use gemma_core::chat::ChatMessage;
use gemma_core::SamplingParams;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api_error::ApiError;
use crate::engine::{Event, Finish, FinishReason, LoadedModel};
use crate::fields::Fields;
use crate::openai::{collect_choices, request_id, submit, validated, Dialect, Plan, MAX_STOPS};
use crate::server::{off_runtime, read_body, AppState};

/// `max_tokens` of a request that names none: Anthropic requires it, llama-server takes 4096 (the context's
/// room caps it in any case).
pub(crate) const DEFAULT_MAX_TOKENS: usize = 4096;

/// Whether `path` is one of this API's routes (its errors then take Anthropic's envelope).
pub fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

pub async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body).await.unwrap_or_else(error_response)
}

pub async fn count_tokens(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let counted = async {
        let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
        let loaded = state.loaded()?;
        let n = off_runtime(move || parse_count_tokens(&bytes, &loaded)).await?;
        Ok::<_, ApiError>(Json(json!({"input_tokens": n})).into_response())
    };
    counted.await.unwrap_or_else(error_response)
}

async fn handle(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let parsing = loaded.clone();
    let plan = off_runtime(move || parse_plan(&Fields::parse(&bytes)?, &parsing)).await?;
    let rx = submit(&state, &plan, &loaded, received)?;
    let answer = Answer {
        id: format!("msg_{}", request_id()),
        model: loaded.id.clone(),
        stop: plan.stop.clone(),
        prompt_tokens: plan.prompts[0].len(),
    };
    if plan.stream {
        return Ok(stream_response(rx, answer).into_response());
    }
    let results = collect_choices(rx, 1).await?;
    let result = results.into_iter().next().unwrap_or_default();
    let finish = result.finish.ok_or_else(|| ApiError::internal("the generation ended without a finish"))?;
    // As llama-server: no text block when nothing was generated.
    let content: Vec<Value> =
        if result.text.is_empty() { Vec::new() } else { vec![json!({"type": "text", "text": result.text})] };
    let (stop_reason, stop_sequence) = answer.stop_reason(&finish);
    Ok(Json(json!({
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": answer.model,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "cache_read_input_tokens": finish.cached_tokens,
            "input_tokens": finish.prompt_tokens.saturating_sub(finish.cached_tokens),
            "output_tokens": finish.completion_tokens,
        },
    }))
    .into_response())
}

/// Parses a `/v1/messages` body into the engine's plan: one prompt, one choice.
pub(crate) fn parse_plan(f: &Fields, loaded: &LoadedModel) -> Result<Plan, ApiError> {
    let prompt = parse_prompt(f, loaded)?;
    if prompt.len() >= loaded.ctx {
        return Err(ApiError::invalid_param(
            "messages",
            format!(
                "the prompt has {} tokens, but the context holds {} (at least one must be left to generate)",
                prompt.len(),
                loaded.ctx
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let max_tokens =
        f.integer_in("max_tokens", 1..=u64::MAX)?.map_or(DEFAULT_MAX_TOKENS, |m| m.min(usize::MAX as u64) as usize);
    let sampling = validated(SamplingParams {
        temperature: f.number_in("temperature", 0.0..=100.0)?.unwrap_or(1.0) as f32,
        top_p: f.number_in("top_p", 0.0..=1.0)?.unwrap_or(1.0) as f32,
        top_k: f.integer_in("top_k", 0..=u32::MAX as u64)?.unwrap_or(0) as usize,
        ..SamplingParams::default()
    })?;
    let stop = match f.raw("stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(_)) => f.string_or_list("stop_sequences")?,
        Some(_) => {
            return Err(ApiError::invalid_param("stop_sequences", "'stop_sequences' must be a list of strings")
                .with_code("invalid_type"))
        }
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid_param("stop_sequences", format!("at most {MAX_STOPS} stop sequences")));
    }
    let stream = f.get::<bool>("stream")?.unwrap_or(false);
    Ok(Plan {
        dialect: Dialect::Chat,
        prompts: vec![prompt],
        n: 1,
        max_tokens: Some(max_tokens),
        sampling,
        stop,
        stream,
        include_usage: false,
        logprobs: None,
        shift: Default::default(),
        lora: None,
    })
}

/// The tokens a `/v1/messages/count_tokens` body's prompt takes (what `input_tokens` would say).
pub(crate) fn parse_count_tokens(body: &[u8], loaded: &LoadedModel) -> Result<usize, ApiError> {
    Ok(parse_prompt(&Fields::parse(body)?, loaded)?.len())
}

/// `model`, `system` and `messages` rendered with the model's chat template and tokenized, after refusing
/// what this server would otherwise have to ignore (tools, thinking, non-text content).
fn parse_prompt(f: &Fields, loaded: &LoadedModel) -> Result<Vec<u32>, ApiError> {
    f.get::<String>("model")?;
    reject_unsupported(f)?;
    let mut messages = Vec::new();
    if let Some(system) = f.raw("system") {
        // As llama-server: the blocks of `system` are joined into one text, each stamp normalized.
        let mut blocks = text_of(system, "system")?;
        blocks.iter_mut().for_each(normalize_billing_header);
        messages.push(ChatMessage::system(blocks.concat()));
    }
    let items =
        match f.raw("messages") {
            None => {
                return Err(ApiError::invalid_param("messages", "'messages' is required")
                    .with_code("missing_required_parameter"))
            }
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(Value::Array(_)) => return Err(ApiError::invalid_param("messages", "'messages' is empty")),
            Some(_) => {
                return Err(ApiError::invalid_param("messages", "'messages' must be a list of messages")
                    .with_code("invalid_type"))
            }
        };
    let bad = |m: String| ApiError::invalid_param("messages", m).with_code("invalid_type");
    for (i, m) in items.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            Some(other) => {
                return Err(bad(format!("messages[{i}]: the role must be 'user' or 'assistant', not '{other}'")))
            }
            None => return Err(bad(format!("messages[{i}] needs a 'role', 'user' or 'assistant'"))),
        };
        let content = m.get("content").ok_or_else(|| bad(format!("messages[{i}] needs a 'content'")))?;
        // As llama-server: a message whose content list is empty is left out.
        if content.as_array().is_some_and(Vec::is_empty) {
            continue;
        }
        // A list of text blocks stays a list of parts, as llama-server hands it to the template.
        let blocks = text_of(content, &format!("messages[{i}].content"))?;
        messages.push(match content {
            Value::Array(_) => ChatMessage::with_parts(role, blocks),
            _ => ChatMessage::new(role, blocks.concat()),
        });
    }
    if messages.iter().all(|m| m.role == "system") {
        return Err(ApiError::invalid_param("messages", "'messages' holds no content"));
    }
    // A final assistant message is continued (Anthropic's prefill): the answer goes on from its text.
    let text = crate::llama_server::render_messages(&messages, &loaded.chat, true)?;
    let tok = &loaded.tokenizer;
    let prompt = tok.encode(&text, tok.add_bos(), true);
    if prompt.is_empty() {
        return Err(ApiError::invalid_param("messages", "the prompt is empty"));
    }
    Ok(prompt)
}

/// The texts of a `system` or message `content`: a string, or a list of `text` blocks. Any other block would
/// change the answer if dropped, so it is refused.
fn text_of(content: &Value, name: &str) -> Result<Vec<String>, ApiError> {
    let param = if name == "system" { "system" } else { "messages" };
    let bad = |m: String| ApiError::invalid_param(param, m).with_code("invalid_type");
    match content {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => match block.get("text").and_then(Value::as_str) {
                        Some(t) => texts.push(t.to_string()),
                        None => return Err(bad(format!("{name}[{j}]: a text block needs a string 'text'"))),
                    },
                    Some(kind @ ("tool_use" | "tool_result" | "server_tool_use" | "web_search_tool_result")) => {
                        return Err(ApiError::invalid_param(
                            param,
                            format!("{name}[{j}]: '{kind}' blocks are not supported (this server has no tool use)"),
                        )
                        .with_code("unsupported_content"))
                    }
                    Some(kind @ ("thinking" | "redacted_thinking")) => {
                        return Err(ApiError::invalid_param(
                            param,
                            format!(
                                "{name}[{j}]: '{kind}' blocks are not supported (this server has no extended thinking)"
                            ),
                        )
                        .with_code("unsupported_content"))
                    }
                    Some(kind) => {
                        return Err(ApiError::invalid_param(
                            param,
                            format!("{name}[{j}]: '{kind}' blocks are not supported (text only)"),
                        )
                        .with_code("unsupported_content"))
                    }
                    None => return Err(bad(format!("{name}[{j}]: each block needs a string 'type'"))),
                }
            }
            Ok(texts)
        }
        _ => Err(bad(format!("'{name}' must be a string or a list of text blocks"))),
    }
}

/// Fields that would change the answer if ignored.
fn reject_unsupported(f: &Fields) -> Result<(), ApiError> {
    let refuse = |name: &str, why: &str| {
        Err(ApiError::invalid_param(name, format!("'{name}' {why}")).with_code("unsupported_parameter"))
    };
    if f.raw("tools").is_some_and(|t| t.as_array().is_none_or(|t| !t.is_empty())) {
        return refuse("tools", "(tool use) is not supported");
    }
    if let Some(choice) = f.raw("tool_choice") {
        if !matches!(choice.get("type").and_then(Value::as_str), Some("auto" | "none")) {
            return refuse("tool_choice", "can only be 'auto' or 'none': this server has no tool use");
        }
    }
    if let Some(thinking) = f.raw("thinking") {
        if thinking.get("type").and_then(Value::as_str) != Some("disabled") {
            return refuse("thinking", "(extended thinking) is not supported; only {\"type\": \"disabled\"}");
        }
    }
    // Structured output: a JSON schema the answer would have to follow.
    if f.raw("output_format").is_some() {
        return refuse("output_format", "(structured output) is not supported");
    }
    if f.raw("output_config").is_some_and(|c| c.get("format").is_some_and(|v| !v.is_null())) {
        return refuse("output_config", "with a 'format' (structured output) is not supported");
    }
    for name in ["mcp_servers", "container"] {
        if f.raw(name).is_some() {
            return refuse(name, "is not supported");
        }
    }
    Ok(())
}

/// Claude Code's system prompt opens with a billing header whose `cch=` stamp changes on every request and so
/// defeats the prefix cache; like llama-server, its five characters are replaced by `fffff`.
fn normalize_billing_header(text: &mut String) {
    const HEADER: &str = "x-anthropic-billing-header:";
    if !text.starts_with(HEADER) {
        return;
    }
    let Some(at) = text[HEADER.len()..].find("cch=").map(|i| HEADER.len() + i + 4) else { return };
    let stamp = text.as_bytes().get(at..at + 6);
    if stamp.is_some_and(|s| s[..5].is_ascii() && s[5] == b';') {
        text.replace_range(at..at + 5, "fffff");
    }
}

/// What an answer says besides its text.
struct Answer {
    id: String,
    model: String,
    stop: Vec<String>,
    prompt_tokens: usize,
}

impl Answer {
    /// `stop_reason` and `stop_sequence`: Anthropic's `stop_sequence` when one of the request's sequences
    /// ended the text (llama-server says `end_turn` then), `end_turn` at the end of the turn, `max_tokens`
    /// at the limit.
    fn stop_reason(&self, f: &Finish) -> (&'static str, Value) {
        match (f.reason, f.stop_word.and_then(|i| self.stop.get(i))) {
            (FinishReason::Stop, Some(word)) => ("stop_sequence", Value::from(word.as_str())),
            (FinishReason::Stop, None) => ("end_turn", Value::Null),
            (FinishReason::Length, _) => ("max_tokens", Value::Null),
        }
    }
}

fn named(event: &str, data: Value) -> SseEvent {
    SseEvent::default().event(event).data(data.to_string())
}

/// The SSE stream: `message_start` at once, then `content_block_start` / `content_block_delta` (`text_delta`)
/// as text comes, `content_block_stop`, `message_delta` (stop reason, usage) and `message_stop`. An error
/// is an `error` event that ends the stream.
fn stream_response(
    rx: UnboundedReceiver<(usize, Event)>,
    answer: Answer,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    struct S {
        rx: UnboundedReceiver<(usize, Event)>,
        answer: Answer,
        started: bool,
        block_open: bool,
        over: bool,
    }
    let s = S { rx, answer, started: false, block_open: false, over: false };
    let events = stream::unfold(s, |mut s| async move {
        if s.over {
            return None;
        }
        let mut out = Vec::new();
        if !s.started {
            s.started = true;
            // The cached share of the prompt is known only when generation ends (`message_delta`).
            out.push(named(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": s.answer.id, "type": "message", "role": "assistant", "content": [],
                    "model": s.answer.model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"cache_read_input_tokens": 0, "input_tokens": s.answer.prompt_tokens, "output_tokens": 0},
                }}),
            ));
            return Some((stream::iter(out.into_iter().map(Ok::<_, Infallible>)), s));
        }
        match s.rx.recv().await {
            Some((_, Event::Chunk(c))) => {
                if !c.text.is_empty() {
                    if !s.block_open {
                        s.block_open = true;
                        out.push(named(
                            "content_block_start",
                            json!({"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
                        ));
                    }
                    out.push(named(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": c.text}}),
                    ));
                }
            }
            Some((_, Event::Done(f))) => {
                s.over = true;
                if s.block_open {
                    out.push(named("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
                }
                let (stop_reason, stop_sequence) = s.answer.stop_reason(&f);
                out.push(named(
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                           "usage": {"output_tokens": f.completion_tokens,
                                     "input_tokens": f.prompt_tokens.saturating_sub(f.cached_tokens),
                                     "cache_read_input_tokens": f.cached_tokens}}),
                ));
                out.push(named("message_stop", json!({"type": "message_stop"})));
            }
            Some((_, Event::Error(m))) => {
                s.over = true;
                out.push(named("error", error_body(&ApiError::internal(m))));
            }
            Some((_, Event::Rejected(m))) => {
                s.over = true;
                out.push(named("error", error_body(&ApiError::invalid(m))));
            }
            None => {
                s.over = true;
                out.push(named("error", error_body(&ApiError::internal("the inference engine stopped"))));
            }
        }
        Some((stream::iter(out.into_iter().map(Ok::<_, Infallible>)), s))
    })
    .flatten();
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Anthropic's error type for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error envelope, `{"type": "error", "error": {"type", "message"}}`, with the field (`param`)
/// and `code` this server's other APIs give.
pub(crate) fn error_body(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(e.status), "message": e.message, "param": e.param,
                                      "code": e.code}})
}

/// An error as this API's clients read it (status and `Retry-After` as elsewhere).
pub fn error_response(e: ApiError) -> Response {
    let body = error_body(&e);
    let retry = e.retry_after_secs;
    let mut response = (e.status, Json(body)).into_response();
    if let Some(v) = retry.and_then(|s| axum::http::HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_billing_stamp_is_blanked_and_nothing_else_changes() {
        let mut s = "x-anthropic-billing-header: cc_version=2.1; cch=a5145;You are Claude Code.".to_string();
        normalize_billing_header(&mut s);
        assert_eq!(s, "x-anthropic-billing-header: cc_version=2.1; cch=fffff;You are Claude Code.");
        for text in [
            "You are helpful. cch=a5145;",
            "x-anthropic-billing-header: cch=a51;",
            "x-anthropic-billing-header: cch=é5145;",
        ] {
            let mut t = text.to_string();
            normalize_billing_header(&mut t);
            assert_eq!(t, text);
        }
    }

    #[test]
    fn blocks_other_than_text_are_refused_naming_the_field() {
        let e = text_of(&json!([{"type": "image", "source": {}}]), "messages[0].content").unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("messages")));
        assert!(e.message.contains("image"), "{}", e.message);
        let e = text_of(&json!([{"type": "text"}]), "system").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("system"));
        assert_eq!(
            text_of(&json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), "system").unwrap(),
            ["a", "b"]
        );
        let f = Fields::parse(br#"{"tools": [{"name": "f"}]}"#).unwrap();
        assert_eq!(reject_unsupported(&f).unwrap_err().param.as_deref(), Some("tools"));
        let f = Fields::parse(br#"{"thinking": {"type": "enabled", "budget_tokens": 1024}}"#).unwrap();
        assert_eq!(reject_unsupported(&f).unwrap_err().param.as_deref(), Some("thinking"));
        let f = Fields::parse(br#"{"tools": [], "tool_choice": {"type": "auto"}, "thinking": {"type": "disabled"}}"#)
            .unwrap();
        assert!(reject_unsupported(&f).is_ok());
    }

    #[test]
    fn errors_take_anthropics_envelope() {
        let v = error_body(&ApiError::invalid_param("max_tokens", "bad"));
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "max_tokens");
        assert_eq!(error_body(&ApiError::unauthorized("no"))["error"]["type"], "authentication_error");
        assert_eq!(error_body(&ApiError::unavailable("busy", 1))["error"]["type"], "overloaded_error");
    }
}
