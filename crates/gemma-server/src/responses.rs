//! OpenAI's Responses API as llama-server serves it: `POST /v1/responses` (and `/responses`) and
//! `POST /v1/responses/input_tokens`. A request is turned into a chat completion (`input` and
//! `instructions` become messages, `max_output_tokens` becomes `max_tokens`, the sampling fields pass through)
//! and answered as a `response` object, or as the SSE events `response.created` ... `response.completed`.
//! What this server cannot honour (tools, images, files, `previous_response_id`) is a 400 naming the field;
//! docs/openai-compatibility.md lists it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api_error::ApiError;
use crate::engine::{Event, Finish, LoadedModel};
use crate::fields::Fields;
use crate::openai::{collect_choices, parse_messages, request_id, submit, Dialect, Plan};
use crate::server::{off_runtime, read_body, AppState};

pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn input_tokens(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let answer = async {
        let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
        let loaded = state.loaded()?;
        let n = off_runtime(move || count_input_tokens(&bytes, &loaded)).await?;
        Ok::<_, ApiError>(Json(json!({"input_tokens": n, "object": "response.input_tokens"})).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let parsing = loaded.clone();
    let plan = off_runtime(move || parse_plan(&bytes, &parsing)).await?;
    let rx = submit(&state, &plan, &loaded, received)?;
    let meta = Meta::new(&loaded);
    if plan.stream {
        return Ok(stream_response(rx, meta).into_response());
    }
    let results = collect_choices(rx, 1).await?;
    let r = results.into_iter().next().unwrap_or_default();
    let output =
        if r.text.is_empty() { Vec::new() } else { vec![message_item(&meta.message_id, &r.text, "completed")] };
    let mut body = meta.response("completed", output, r.finish.as_ref());
    body["completed_at"] = json!(now());
    Ok(Json(body).into_response())
}

/// The request as the chat completion the engine runs: the converted body read by the chat dialect's parser
/// (sampling fields, stop, grammar, ... as there), errors renamed to the Responses fields they came from.
pub(crate) fn parse_plan(body: &[u8], loaded: &LoadedModel) -> Result<Plan, ApiError> {
    let map = body_map(body)?;
    let text_format = map.get("text").is_some_and(|t| !t.is_null());
    let chat = to_chat(map)?;
    crate::openai::parse_plan(&chat, loaded, Dialect::Chat).map_err(|e| {
        let mut e = rename_param(e);
        // `text.format` became `response_format`: a schema it cannot turn into a grammar is the client's `text`.
        if text_format && e.param.as_deref() == Some("response_format") {
            e.param = Some("text".into());
        }
        e
    })
}

/// `input_tokens`: the tokens of the prompt the request renders to (BOS and special tokens included), as
/// llama-server counts them; the context is not checked.
pub(crate) fn count_input_tokens(body: &[u8], loaded: &LoadedModel) -> Result<usize, ApiError> {
    let chat = to_chat(body_map(body)?)?;
    let messages = parse_messages(&chat).map_err(rename_param)?;
    let text = crate::llama_server::render_messages(&messages, &loaded.chat, true).map_err(rename_param)?;
    let tok = &loaded.tokenizer;
    Ok(tok.encode(&text, tok.add_bos(), true).len())
}

fn body_map(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        // The same refusal as every other endpoint's.
        _ => Err(Fields::parse(body).err().unwrap_or_else(|| ApiError::invalid("the body must be a JSON object"))),
    }
}

/// The chat parser names the chat fields; the client wrote the Responses ones.
fn rename_param(mut e: ApiError) -> ApiError {
    e.param = match e.param.as_deref() {
        Some("messages") => Some("input".into()),
        Some("max_tokens") => Some("max_output_tokens".into()),
        _ => e.param,
    };
    e
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message).with_code("invalid_value")
}

fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message).with_code("unsupported_parameter")
}

/// A Responses body as a chat-completions body (llama-server's conversion, with its refusals, and the
/// fields it would pass on but this server cannot honour refused too).
pub(crate) fn to_chat(mut body: Map<String, Value>) -> Result<Fields, ApiError> {
    let input = match body.remove("input") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_param("input", "'input' is required").with_code("missing_required_parameter"))
        }
        Some(v) => v,
    };
    match body.remove("previous_response_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(_)) => {
            return Err(unsupported(
                "previous_response_id",
                "'previous_response_id' is not supported: this server stores no responses; send the whole \
                 conversation in 'input'",
            ))
        }
        Some(_) => return Err(bad("previous_response_id", "'previous_response_id' must be a string")),
    }
    let mut messages: Vec<Value> = Vec::new();
    match body.remove("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("instructions", "'instructions' must be a string")),
    }
    match input {
        Value::String(s) => messages.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for item in items {
                add_item(&mut messages, item)?;
            }
        }
        _ => return Err(bad("input", "'input' must be a string or a list of input items")),
    }
    if !messages.iter().any(|m| m["role"] != "system") {
        return Err(bad("input", "'input' holds no message"));
    }
    body.insert("messages".into(), Value::Array(messages));

    match body.remove("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(t)) if t.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(unsupported("tools", "'tools' (function calling, built-in tools) is not supported"))
        }
        Some(_) => return Err(bad("tools", "'tools' must be a list")),
    }
    body.remove("tool_choice");
    body.remove("parallel_tool_calls");
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("background", "'background' responses are not supported"));
    }
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(unsupported("n", "a response has one output: 'n' must be 1")),
    }
    // A response's logprobs are always `[]` (as llama-server's): nothing to compute.
    for name in ["logprobs", "top_logprobs", "stream_options", "reasoning", "max_completion_tokens"] {
        body.remove(name);
    }
    if let Some(m) = body.remove("max_output_tokens").filter(|m| !m.is_null()) {
        body.insert("max_tokens".into(), m);
    } else {
        body.remove("max_tokens");
    }
    if let Some(text) = body.remove("text").filter(|t| !t.is_null()) {
        text_format(&mut body, &text)?;
    }
    Ok(Fields::from_value(Value::Object(body)).unwrap_or_default())
}

/// `text.format`: plain text, any JSON object, or JSON following `schema` (a grammar, as the chat
/// dialect's `response_format`). llama-server ignores it; ignoring it here would change the answer.
fn text_format(body: &mut Map<String, Value>, text: &Value) -> Result<(), ApiError> {
    let Some(text) = text.as_object() else { return Err(bad("text", "'text' must be an object")) };
    let format = match text.get("format") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(f)) => f,
        Some(_) => return Err(bad("text", "'text.format' must be an object")),
    };
    let constrained = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(()),
        Some("json_object") => json!({"type": "json_object"}),
        Some("json_schema") => {
            let schema = format.get("schema").filter(|s| s.is_object() || s.is_boolean());
            let schema = schema.ok_or_else(|| bad("text", "'text.format.schema' must be a JSON Schema object"))?;
            json!({"type": "json_schema", "json_schema": {"schema": schema}})
        }
        _ => return Err(bad("text", "'text.format.type' must be 'text', 'json_object' or 'json_schema'")),
    };
    if body.contains_key("response_format") {
        return Err(bad("text", "give 'text.format' or 'response_format', not both"));
    }
    body.insert("response_format".into(), constrained);
    Ok(())
}

/// One `input` item: a message (`role` and `content`, a string or a list of parts), merged into the
/// assistant message before it when both are the assistant's (as llama-server merges them).
fn add_item(messages: &mut Vec<Value>, item: Value) -> Result<(), ApiError> {
    let Value::Object(item) = item else {
        return Err(bad("input", "each 'input' item must be an object"));
    };
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        Some("function_call" | "function_call_output") => {
            return Err(unsupported("input", format!("'{}' items are not supported (no tools)", kind.unwrap_or(""))))
        }
        Some("reasoning") => return Err(unsupported("input", "'reasoning' items are not supported")),
        _ => {}
    }
    let role = item.get("role").and_then(Value::as_str);
    let parts = match item.get("content") {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => match role {
            Some("user" | "system" | "developer") => input_parts(parts)?,
            Some("assistant") => output_parts(parts)?,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let has_content = matches!(item.get("content"), Some(Value::String(_) | Value::Array(_)));
    match role {
        Some(role @ ("user" | "system" | "developer")) if has_content => {
            messages.push(json!({"role": role, "content": parts}));
        }
        // llama-server wants `type: "message"` on an assistant item; OpenAI's easy input messages leave it
        // out, and they mean the same.
        Some("assistant") if has_content && matches!(kind, None | Some("message")) => match messages.last_mut() {
            Some(prev) if prev["role"] == "assistant" => {
                if let Some(content) = prev["content"].as_array_mut() {
                    content.extend(parts);
                }
            }
            _ => messages.push(json!({"role": "assistant", "content": parts})),
        },
        _ => {
            return Err(bad(
                "input",
                "cannot determine the type of an 'input' item: each must be a message with a 'role' \
                 (user, system, developer or assistant) and a 'content'",
            ))
        }
    }
    Ok(())
}

fn part_text<'a>(part: &'a Value, what: &str) -> Result<&'a str, ApiError> {
    part.get("text").and_then(Value::as_str).ok_or_else(|| bad("input", format!("'{what}' parts need a string 'text'")))
}

/// A user, system or developer message's parts: `input_text` only (no images or files here).
fn input_parts(parts: &[Value]) -> Result<Vec<Value>, ApiError> {
    parts
        .iter()
        .map(|p| match p.get("type").and_then(Value::as_str) {
            Some("input_text") => Ok(json!({"type": "text", "text": part_text(p, "input_text")?})),
            Some("input_image") => Err(unsupported("input", "'input_image' parts are not supported (text only)")),
            Some("input_file") => Err(unsupported("input", "'input_file' parts are not supported")),
            _ => {
                Err(bad("input", "a content part's 'type' must be one of 'input_text', 'input_image', or 'input_file'"))
            }
        })
        .collect()
}

/// An assistant message's parts: `output_text` (or `input_text`); a `refusal` is refused, as llama-server's
/// chat parser refuses it.
fn output_parts(parts: &[Value]) -> Result<Vec<Value>, ApiError> {
    parts
        .iter()
        .map(|p| match p.get("type").and_then(Value::as_str) {
            Some(t @ ("output_text" | "input_text")) => Ok(json!({"type": "text", "text": part_text(p, t)?})),
            Some("refusal") => Err(unsupported("input", "'refusal' parts are not supported")),
            _ => Err(bad("input", "an assistant content part's 'type' must be 'output_text' or 'refusal'")),
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The ids and times of one response.
struct Meta {
    id: String,
    message_id: String,
    created_at: u64,
    model: String,
}

impl Meta {
    fn new(loaded: &LoadedModel) -> Meta {
        Meta {
            id: format!("resp_{}", request_id()),
            message_id: format!("msg_{}", request_id()),
            created_at: now(),
            model: loaded.id.clone(),
        }
    }

    /// The `response` object; `usage` once it is finished.
    fn response(&self, status: &str, output: Vec<Value>, finish: Option<&Finish>) -> Value {
        let mut r = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": output,
        });
        if let Some(f) = finish {
            r["usage"] = json!({
                "input_tokens": f.prompt_tokens,
                "output_tokens": f.completion_tokens,
                "total_tokens": f.prompt_tokens + f.completion_tokens,
                "input_tokens_details": {"cached_tokens": f.cached_tokens},
            });
        }
        r
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "role": "assistant", "status": status, "content": [text_part(text)]})
}

/// The SSE events, each with its `event:` line, as llama-server sends them (plus OpenAI's
/// `sequence_number`, `output_index` and `content_index`): `response.created` and `response.in_progress`,
/// then with the first text `response.output_item.added` and `response.content_part.added`, a
/// `response.output_text.delta` per piece, and at the end `response.output_text.done`,
/// `response.content_part.done`, `response.output_item.done` and `response.completed`. No `[DONE]`.
/// An error mid-stream is a `data: {"error": ...}` line, and the stream ends.
fn stream_response(
    rx: UnboundedReceiver<(usize, Event)>,
    meta: Meta,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let state = StreamState { rx, meta: Arc::new(meta), text: String::new(), seq: 0, started: false, over: false };
    let events = stream::unfold(state, |mut s| async move {
        let batch = s.next_events().await?;
        Some((stream::iter(batch.into_iter().map(Ok)), s))
    })
    .flatten();
    Sse::new(events).keep_alive(KeepAlive::default())
}

struct StreamState {
    rx: UnboundedReceiver<(usize, Event)>,
    meta: Arc<Meta>,
    text: String,
    seq: u64,
    started: bool,
    over: bool,
}

impl StreamState {
    fn event(&mut self, kind: &str, mut data: Value) -> SseEvent {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        SseEvent::default().event(kind).data(data.to_string())
    }

    fn error(&mut self, e: ApiError) -> Vec<SseEvent> {
        self.over = true;
        vec![SseEvent::default().data(e.body().to_string())]
    }

    async fn next_events(&mut self) -> Option<Vec<SseEvent>> {
        if self.over {
            return None;
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let r = self.meta.response("in_progress", Vec::new(), None);
            out.push(self.event("response.created", json!({"response": r})));
            out.push(self.event("response.in_progress", json!({"response": r})));
            return Some(out);
        }
        let Some((_, event)) = self.rx.recv().await else {
            return Some(self.error(ApiError::internal("the inference engine stopped")));
        };
        let id = self.meta.message_id.clone();
        match event {
            Event::Chunk(c) if c.text.is_empty() => {}
            Event::Chunk(c) => {
                if self.text.is_empty() {
                    let item = json!({"id": id, "type": "message", "role": "assistant", "status": "in_progress",
                                      "content": []});
                    out.push(self.event("response.output_item.added", json!({"output_index": 0, "item": item})));
                    out.push(self.event(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": 0, "content_index": 0,
                               "part": {"type": "output_text", "text": ""}}),
                    ));
                }
                self.text.push_str(&c.text);
                out.push(self.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": c.text}),
                ));
            }
            Event::Done(f) => {
                self.over = true;
                let mut output = Vec::new();
                if !self.text.is_empty() {
                    let text = std::mem::take(&mut self.text);
                    out.push(self.event(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text}),
                    ));
                    out.push(self.event(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": 0, "content_index": 0, "part": text_part(&text)}),
                    ));
                    let item = message_item(&id, &text, "completed");
                    out.push(self.event("response.output_item.done", json!({"output_index": 0, "item": item})));
                    output.push(item);
                }
                let r = self.meta.response("completed", output, Some(&f));
                out.push(self.event("response.completed", json!({"response": r})));
            }
            Event::Error(m) => return Some(self.error(ApiError::internal(m))),
            Event::Rejected(m) => return Some(self.error(ApiError::invalid(m))),
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Value, ApiError> {
        let Value::Object(map) = body else { panic!("an object") };
        let f = to_chat(map)?;
        Ok(json!({
            "messages": f.raw("messages").cloned(),
            "max_tokens": f.raw("max_tokens").cloned(),
            "response_format": f.raw("response_format").cloned(),
        }))
    }

    #[test]
    fn instructions_and_items_become_chat_messages() {
        let v = chat(json!({
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
                {"role": "assistant", "content": "d"},
                {"role": "developer", "content": "e"},
            ],
            "max_output_tokens": 7,
            "max_tokens": 99,
        }))
        .unwrap();
        let text = |t: &str| json!({"type": "text", "text": t});
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [text("a"), text("b")]},
                {"role": "assistant", "content": [text("c"), text("d")]},
                {"role": "developer", "content": [text("e")]},
            ])
        );
        assert_eq!(v["max_tokens"], 7);
        let v = chat(json!({"input": "hi", "max_tokens": 99})).unwrap();
        assert_eq!((&v["messages"], &v["max_tokens"]), (&json!([{"role": "user", "content": "hi"}]), &Value::Null));
    }

    #[test]
    fn text_format_becomes_response_format() {
        let schema = json!({"type": "object"});
        let v = chat(json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": schema}}}));
        assert_eq!(v.unwrap()["response_format"], json!({"type": "json_schema", "json_schema": {"schema": schema}}));
        let v = chat(json!({"input": "x", "text": {"format": {"type": "text"}, "verbosity": "low"}})).unwrap();
        assert_eq!(v["response_format"], Value::Null);
        let e = chat(json!({"input": "x", "text": {"format": {"type": "json_object"}}, "response_format": {}}));
        assert_eq!(e.unwrap_err().param.as_deref(), Some("text"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_field() {
        let cases = [
            (json!({}), "input"),
            (json!({"input": null}), "input"),
            (json!({"input": 1}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": [1]}), "input"),
            (json!({"instructions": "x", "input": [{"role": "system", "content": "y"}]}), "input"),
            (json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}), "input"),
            (json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}]}), "input"),
            (json!({"input": [{"type": "message", "role": "assistant", "content": [{"type": "refusal"}]}]}), "input"),
            (json!({"input": [{"type": "message", "role": "tool", "content": "x"}]}), "input"),
            (json!({"input": "x", "previous_response_id": "resp_1"}), "previous_response_id"),
            (json!({"input": "x", "instructions": 1}), "instructions"),
            (json!({"input": "x", "tools": [{"type": "function", "name": "f"}]}), "tools"),
            (json!({"input": "x", "tools": {}}), "tools"),
            (json!({"input": "x", "n": 3}), "n"),
            (json!({"input": "x", "background": true}), "background"),
            (json!({"input": "x", "text": 5}), "text"),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
        // Empty ones mean nothing.
        chat(json!({"input": "x", "previous_response_id": "", "tools": [], "n": 1, "background": false})).unwrap();
    }
}
