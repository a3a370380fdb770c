//! The rest of llama-server's native API, with its field names, defaults and error shapes: `GET /props`
//! (and `POST /props`, refused unless started with `--props`), `GET /slots` (`--no-slots` turns it off),
//! `POST /slots/{id}?action=save|restore|erase` (with `--slot-save-path`),
//! `POST /apply-template`, `POST /tokenize` / `/detokenize`, `GET`/`POST
//! /lora-adapters` (there are none), `POST /embedding` (llama-server's own embedding format) and the
//! answers llama-server gives on a model that cannot serve `/infill` (no fill-in-the-middle tokens) or
//! `/rerank` (not a reranker).
//!
//! llama-server's own errors are `{"error": {"code", "message", "type"}}` with the status in `code`; the "not
//! supported" answers here use that shape, request errors the server's usual one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gemma_core::chat::{ChatMessage, ChatTemplate, TemplateSource};
use gemma_core::{SamplingParams, Tokenizer};
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::config::ServerConfig;
use crate::engine::slots::SlotState;
use crate::engine::{LoadedModel, SlotAction, SlotActionError, SlotCommand};
use crate::fields::Fields;
use crate::server::{off_runtime, read_body, AppState};
use crate::{embeddings, llama_native, openai};

/// llama-server's marker for media in a prompt. This server takes no media (`modalities` are all off); the
/// key is there because clients read it.
const MEDIA_MARKER: &str = "<__media__>";

/// What these endpoints need from the server's settings.
pub struct Options {
    model: String,
    parallel: usize,
    endpoint_props: bool,
    endpoint_slots: bool,
    slot_save_path: Option<std::path::PathBuf>,
    /// `--keep`: the `n_keep` of requests that give none.
    n_keep: i64,
    /// `model_path` and `model_ftype`, read from the file once.
    file_facts: OnceLock<(String, String)>,
}

impl Options {
    pub fn new(config: &ServerConfig) -> Options {
        Options {
            model: config.model.clone(),
            parallel: config.parallel,
            endpoint_props: config.endpoint_props,
            endpoint_slots: config.endpoint_slots,
            slot_save_path: config.slot_save_path.clone(),
            n_keep: config.n_keep,
            file_facts: OnceLock::new(),
        }
    }

    /// The model file's path and llama.cpp's name of its quantisation (`general.file_type`).
    fn file_facts(&self) -> (String, String) {
        self.file_facts
            .get_or_init(|| {
                let Ok(path) = gemma_fetch::resolve_model(&self.model) else {
                    return (self.model.clone(), ftype_name(None).to_string());
                };
                let ftype = gemma_io::GgufFile::open(&path)
                    .ok()
                    .and_then(|f| f.get("general.file_type").and_then(|v| v.as_u64()));
                (path.to_string_lossy().into_owned(), ftype_name(ftype).to_string())
            })
            .clone()
    }
}

/// llama-server's error object: `{"error": {"code": status, "message", "type"}}`.
fn llama_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message.into(), "type": kind}});
    (status, Json(body)).into_response()
}

fn not_supported(message: impl Into<String>) -> Response {
    llama_error(StatusCode::NOT_IMPLEMENTED, "not_supported_error", message)
}

/// llama.cpp's names of `general.file_type` values (`llama_ftype`).
fn ftype_name(ftype: Option<u64>) -> &'static str {
    match ftype {
        Some(0) => "all F32",
        Some(1) => "F16",
        Some(2) => "Q4_0",
        Some(3) => "Q4_1",
        Some(7) => "Q8_0",
        Some(8) => "Q5_0",
        Some(9) => "Q5_1",
        Some(10) => "Q2_K - Medium",
        Some(11) => "Q3_K - Small",
        Some(12) => "Q3_K - Medium",
        Some(13) => "Q3_K - Large",
        Some(14) => "Q4_K - Small",
        Some(15) => "Q4_K - Medium",
        Some(16) => "Q5_K - Small",
        Some(17) => "Q5_K - Medium",
        Some(18) => "Q6_K",
        Some(19) => "IQ2_XXS - 2.0625 bpw",
        Some(20) => "IQ2_XS - 2.3125 bpw",
        Some(21) => "Q2_K - Small",
        Some(22) => "IQ3_XS - 3.3 bpw",
        Some(23) => "IQ3_XXS - 3.0625 bpw",
        Some(24) => "IQ1_S - 1.5625 bpw",
        Some(25) => "IQ4_NL - 4.5 bpw",
        Some(26) => "IQ3_S - 3.4375 bpw",
        Some(27) => "IQ3_S mix - 3.66 bpw",
        Some(28) => "IQ2_S - 2.5 bpw",
        Some(29) => "IQ2_M - 2.7 bpw",
        Some(30) => "IQ4_XS - 4.25 bpw",
        Some(31) => "IQ1_M - 1.75 bpw",
        Some(32) => "BF16",
        Some(36) => "TQ1_0 - 1.69 bpw ternary",
        Some(37) => "TQ2_0 - 2.06 bpw ternary",
        Some(38) => "MXFP4 MoE",
        _ => "unknown, may not work",
    }
}

/// A task's settings under llama-server's names, in its order (the form `/props` and `/slots` show).
/// `stream` is what the request asked for when known (the engine does not know it: `/slots` leaves it out).
fn params_json(
    m: &LoadedModel,
    p: &SamplingParams,
    n_predict: i64,
    n_probs: usize,
    stream: Option<bool>,
    n_keep: i64,
) -> Value {
    let eog: Vec<u32> = m.tokenizer.end_of_generation_ids().collect();
    let ignore_eos =
        !eog.is_empty() && eog.iter().all(|id| p.logit_bias.iter().any(|(b, v)| b == id && *v == f32::NEG_INFINITY));
    let mut v = crate::llama_native::sampler_settings(p);
    // In two parts: one `json!` this long outgrows the macro's recursion limit.
    let rest = json!({
        // llama-server's adaptive-p sampler, which this server does not have: its "off" values.
        "adaptive_target": -1.0,
        "adaptive_decay": 0.9_f32,
        "max_tokens": n_predict,
        "n_predict": n_predict,
        // The server's `--keep` (a request's own `n_keep` is not kept with its slot); `n_discard` 0 is half.
        "n_keep": n_keep,
        "n_discard": 0,
        "ignore_eos": ignore_eos,
        "stream": stream.unwrap_or(false),
        "n_probs": n_probs,
        "min_keep": p.min_keep,
        "chat_format": "Content-only",
        "reasoning_format": "none",
        "reasoning_in_content": false,
        "generation_prompt": "",
        "samplers": p.samplers.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "speculative.types": m.speculative.map_or("none", |t| t.name()),
        "timings_per_token": false,
        "post_sampling_probs": false,
        "backend_sampling": false,
        "lora": [],
    });
    if let Value::Object(rest) = rest {
        v.extend(rest);
    }
    if stream.is_none() {
        v.shift_remove("stream");
    }
    Value::Object(v)
}

/// What the template can do, under llama.cpp's names, found by rendering probes as llama.cpp does. Message
/// content is always a string here (text parts are joined before rendering), and there are no tools.
fn template_caps(t: &ChatTemplate) -> Value {
    let marker = "\u{1}probe\u{1}";
    let renders_marker = |messages: &[ChatMessage]| t.render(messages, false).is_ok_and(|s| s.contains(marker));
    let system = match t.source() {
        TemplateSource::BuiltinGemma | TemplateSource::BuiltinChatml => true,
        _ => renders_marker(&[ChatMessage::system(marker), ChatMessage::user("x")]),
    };
    json!({
        "supports_object_arguments": false,
        "supports_parallel_tool_calls": false,
        "supports_preserve_reasoning": false,
        "supports_reasoning_effort": false,
        "supports_string_content": renders_marker(&[ChatMessage::user(marker)]),
        "supports_system_role": system,
        "supports_tool_calls": false,
        "supports_tools": false,
        "supports_typed_content": false,
    })
}

/// `GET /props`: the server's settings, the model and the defaults of `POST /completion`.
pub async fn get_props(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let m = state.loaded()?;
    let opts = state.llama_options();
    let (plan, native) = {
        let m = m.clone();
        // What `/completion` runs a request without settings with.
        off_runtime(move || llama_native::parse(&Fields::parse(br#"{"prompt": "x"}"#)?, &m)).await?
    };
    let (path, ftype) = {
        let state = state.clone();
        off_runtime(move || Ok(state.llama_options().file_facts())).await?
    };
    Ok(Json(json!({
        "default_generation_settings": {
            "params": params_json(&m, &plan.sampling, native.n_predict, native.n_probs, Some(plan.stream), opts.n_keep),
            "n_ctx": m.ctx,
        },
        "total_slots": opts.parallel,
        "model_alias": m.id,
        "model_ftype": ftype,
        "model_path": path,
        "modalities": {"vision": false, "video": false, "audio": false},
        "media_marker": MEDIA_MARKER,
        "endpoint_slots": opts.endpoint_slots,
        "endpoint_props": opts.endpoint_props,
        "endpoint_metrics": true,
        "ui": false,
        "ui_settings": {},
        "chat_template": m.chat.template_text(),
        "chat_template_caps": template_caps(&m.chat),
        "bos_token": m.chat.bos_token(),
        "eos_token": m.chat.eos_token(),
        "build_info": concat!("gemma-rs-", env!("CARGO_PKG_VERSION")),
        "is_sleeping": false,
        "cors_proxy_enabled": false,
    })))
}

/// `POST /props`: refused unless the server was started with `--props`; there is nothing to change yet, as
/// in llama-server.
pub async fn post_props(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if !state.llama_options().endpoint_props {
        return not_supported("This server does not support changing global properties. Start it with `--props`");
    }
    match read_body(body, &headers, state.max_body_bytes()).await.and_then(|b| Fields::parse(&b)) {
        Ok(_) => Json(json!({"success": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One slot under llama-server's names (the form it shows without `--slots-debug`).
fn slot_json(s: &SlotState, m: &LoadedModel, n_keep: i64) -> Value {
    let mut v =
        json!({"id": s.id, "n_ctx": m.ctx, "speculative": m.speculative.is_some(), "is_processing": s.processing});
    if let Some(t) = &s.task {
        v["id_task"] = json!(t.id_task);
        v["n_prompt_tokens"] = json!(t.n_prompt_tokens);
        v["n_prompt_tokens_processed"] = json!(t.n_prompt_tokens_processed);
        v["n_prompt_tokens_cache"] = json!(t.n_prompt_tokens_cache);
        v["params"] = params_json(m, &t.sampling, t.max_tokens as i64, t.n_probs, None, n_keep);
        v["next_token"] = json!([{
            "has_next_token": t.has_next_token,
            "has_new_line": t.has_new_line,
            "n_remain": t.max_tokens.saturating_sub(t.n_decoded),
            "n_decoded": t.n_decoded,
        }]);
    }
    v
}

/// `GET /slots`: each slot's sequence (running, or the last it ran). `?fail_on_no_slot=1` answers 503 when
/// every slot is busy.
pub async fn get_slots(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    if !state.llama_options().endpoint_slots {
        return not_supported("This server does not support slots endpoint. Start it without `--no-slots`");
    }
    let m = match state.loaded() {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let table = state.engine().state.slots();
    if query.get("fail_on_no_slot").is_some_and(|v| !v.is_empty()) && table.slots().iter().all(|s| s.processing) {
        return llama_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "no slot available");
    }
    Json(table.slots().iter().map(|s| slot_json(s, &m, state.llama_options().n_keep)).collect::<Vec<_>>())
        .into_response()
}

/// `POST /slots/{id}?action=save|restore|erase` (save and restore with `{"filename"}`), with
/// `--slot-save-path`. Saving writes the KV cache of the slot's last sequence (kept in the prefix cache after
/// it ended) with its token ids; restoring puts a saved cache back into the prefix cache, so the next request
/// that starts with those tokens continues from it; erasing drops the slot's cache.
pub async fn post_slots(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    slot_action(state, id, query, headers, body).await.unwrap_or_else(|r| r)
}

async fn slot_action(
    state: AppState,
    id: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let Some(dir) = state.llama_options().slot_save_path.clone() else {
        return Err(not_supported("This server does not support slots action. Start it with `--slot-save-path`"));
    };
    let invalid = |m: &str| llama_error(StatusCode::BAD_REQUEST, "invalid_request_error", m);
    let slot: usize = id.parse().map_err(|_| invalid("Invalid slot ID"))?;
    let kind = query.get("action").map(String::as_str).unwrap_or_default().to_string();
    if !matches!(kind.as_str(), "save" | "restore" | "erase") {
        return Err(invalid("Invalid action"));
    }
    let bytes = read_body(body, &headers, state.max_body_bytes()).await.map_err(IntoResponse::into_response)?;
    let filename = if kind == "erase" {
        None
    } else {
        let f = Fields::parse(&bytes).map_err(IntoResponse::into_response)?;
        let name = f.get::<String>("filename").map_err(IntoResponse::into_response)?.ok_or_else(|| {
            ApiError::invalid_param("filename", "'filename' is required")
                .with_code("missing_required_parameter")
                .into_response()
        })?;
        if !valid_filename(&name) {
            return Err(invalid("Invalid filename"));
        }
        Some(name)
    };
    let action = match (kind.as_str(), &filename) {
        ("save", Some(name)) => {
            std::fs::create_dir_all(&dir).map_err(|e| {
                ApiError::internal(format!("cannot create the slot directory {}: {e}", dir.display())).into_response()
            })?;
            SlotAction::Save(dir.join(name))
        }
        ("restore", Some(name)) => SlotAction::Restore(dir.join(name)),
        _ => SlotAction::Erase,
    };
    let started = std::time::Instant::now();
    let (reply, rx) = tokio::sync::oneshot::channel();
    state
        .engine()
        .submit_slot(SlotCommand { slot, action, reply })
        .map_err(|e| openai::submit_error(e).into_response())?;
    let outcome = rx.await.map_err(|_| ApiError::internal("the inference engine stopped").into_response())?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let outcome = outcome.map_err(|e| match (&e, kind.as_str()) {
        (SlotActionError::Write { .. }, _) => ApiError::internal(e.to_string()).into_response(),
        (_, "restore") => invalid(&format!("Unable to restore slot: {e}")),
        _ => invalid(&e.to_string()),
    })?;
    let (n, bytes) = (outcome.tokens, outcome.bytes);
    Ok(Json(match kind.as_str() {
        "save" => json!({"id_slot": slot, "filename": filename, "n_saved": n, "n_written": bytes,
                         "timings": {"save_ms": ms}}),
        "restore" => json!({"id_slot": slot, "filename": filename, "n_restored": n, "n_read": bytes,
                            "timings": {"restore_ms": ms}}),
        _ => json!({"id_slot": slot, "n_erased": n}),
    })
    .into_response())
}

/// A slot file's name: a plain name inside the slot directory (letters, digits, `.`, `-`, `_`; not starting
/// with a dot; at most 255 bytes), never a path.
fn valid_filename(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `POST /apply-template`: `{"messages", "add_generation_prompt"?}` → `{"prompt"}`, the text
/// `/v1/chat/completions` would run, rendered by the model's chat template.
pub async fn apply_template(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
        let m = state.loaded()?;
        off_runtime(move || render_request(&Fields::parse(&bytes)?, &m.chat)).await
    }
    .await;
    match result {
        Ok(prompt) => Json(json!({"prompt": prompt})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Renders a chat request as llama-server does by default: a conversation that ends with an assistant
/// message is continued (the messages before it, the opening of an assistant turn, then its text as
/// written); otherwise `add_generation_prompt` (default true) opens the assistant's turn.
pub(crate) fn render_request(f: &Fields, chat: &ChatTemplate) -> Result<String, ApiError> {
    let add_generation_prompt = f.get::<bool>("add_generation_prompt")?.unwrap_or(true);
    let messages = match f.raw("messages") {
        Some(Value::Array(items)) if items.is_empty() => Vec::new(),
        Some(Value::Array(items))
            if items.iter().any(|m| m.get("role").is_some_and(|r| r != "assistant") && m.get("content").is_none()) =>
        {
            return Err(ApiError::invalid_param("messages", "All non-assistant messages must contain 'content'"));
        }
        _ => openai::parse_messages(f)?,
    };
    render_messages(&messages, chat, add_generation_prompt)
}

/// A conversation as llama-server renders it for `/apply-template` and its chat completions: one that ends
/// with an assistant message is continued (the messages before it, the opening of an assistant turn, then its
/// text as written: the answer goes on from there); otherwise `add_generation_prompt` opens the assistant's turn.
pub(crate) fn render_messages(
    messages: &[ChatMessage],
    chat: &ChatTemplate,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    let failed =
        |e| ApiError::invalid_param("messages", format!("the chat template cannot render these messages: {e}"));
    match messages.split_last() {
        Some((last, before)) if last.role == "assistant" => {
            if before.last().is_some_and(|m| m.role == "assistant") {
                return Err(ApiError::invalid_param(
                    "messages",
                    "Cannot have 2 or more assistant messages at the end of the list.",
                ));
            }
            let mut text = chat.render(before, true).map_err(failed)?;
            text.push_str(&last.content);
            Ok(text)
        }
        _ => chat.render(messages, add_generation_prompt).map_err(failed),
    }
}

/// llama-server's `/tokenize` content: a string, or a list mixing strings and token ids (the BOS/EOS of
/// `add_special` go with a first element that is a string).
fn tokenize_content(
    content: &Value,
    tok: &Tokenizer,
    vocab: usize,
    add_special: bool,
    parse_special: bool,
) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::invalid_param("content", "'content' must be a string or a list of strings and token ids")
            .with_code("invalid_type")
    };
    let text = |s: &str, special: bool| {
        // `add_special`: the BOS and the EOS the model wants (an embedding model ends its inputs with EOS).
        if special {
            tok.encode_input(s, parse_special)
        } else {
            tok.encode(s, false, parse_special)
        }
    };
    match content {
        Value::String(s) => Ok(text(s, add_special)),
        Value::Array(items) => {
            let mut ids = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => ids.extend(text(s, add_special && i == 0)),
                    Value::Number(n) => {
                        let id = n.as_u64().filter(|&id| (id as usize) < vocab).ok_or_else(|| {
                            ApiError::invalid_param("content", format!("{n} is not a token id of the vocabulary"))
                        })?;
                        ids.push(id as u32);
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(ids)
        }
        _ => Err(bad()),
    }
}

/// A token's text as llama-server's `with_pieces` shows it: a string when it is valid UTF-8, else its bytes.
fn piece_json(tok: &Tokenizer, id: u32) -> Value {
    let bytes = tok.token_piece_bytes(id, true).unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!(bytes),
    }
}

/// `POST /tokenize`: `{"content", "add_special"? (false), "parse_special"? (true), "with_pieces"? (false)}` →
/// `{"tokens": [ids]}`, or `[{"id", "piece"}]` with pieces. Without `content`, no tokens.
pub async fn tokenize(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let m = state.loaded()?;
    off_runtime(move || tokenize_body(&bytes, &m).map(Json)).await
}

/// `/tokenize`'s answer to `body`.
pub(crate) fn tokenize_body(body: &[u8], m: &LoadedModel) -> Result<Value, ApiError> {
    let f = Fields::parse(body)?;
    let add_special = f.get::<bool>("add_special")?.unwrap_or(false);
    let parse_special = f.get::<bool>("parse_special")?.unwrap_or(true);
    let with_pieces = f.get::<bool>("with_pieces")?.unwrap_or(false);
    let ids = match f.raw("content") {
        None => Vec::new(),
        Some(c) => tokenize_content(c, &m.tokenizer, m.vocab_size, add_special, parse_special)?,
    };
    let tokens: Value = if with_pieces {
        ids.iter().map(|&id| json!({"id": id, "piece": piece_json(&m.tokenizer, id)})).collect()
    } else {
        json!(ids)
    };
    Ok(json!({"tokens": tokens}))
}

/// `POST /detokenize`: `{"tokens": [ids]}` → `{"content"}`, each token's text as written (control tokens
/// such as `<bos>` included, as llama-server shows them).
pub async fn detokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let m = state.loaded()?;
    off_runtime(move || detokenize_body(&bytes, &m).map(Json)).await
}

/// `/detokenize`'s answer to `body`.
pub(crate) fn detokenize_body(body: &[u8], m: &LoadedModel) -> Result<Value, ApiError> {
    let f = Fields::parse(body)?;
    let ids = f.get::<Vec<u32>>("tokens")?.unwrap_or_default();
    let mut text = Vec::new();
    for &id in &ids {
        let piece = m
            .tokenizer
            .token_piece_bytes(id, true)
            .ok_or_else(|| ApiError::invalid_param("tokens", format!("token id {id} is outside the vocabulary")))?;
        text.extend_from_slice(piece);
    }
    Ok(json!({"content": String::from_utf8_lossy(&text)}))
}

/// `GET /lora-adapters`: the adapters loaded (`--lora`, `--lora-scaled`) with their global scales, in
/// llama-server's form.
pub async fn get_lora_adapters(State(state): State<AppState>) -> Response {
    let m = match state.loaded() {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let scales = m.lora_scales();
    let list: Vec<Value> = m
        .loras
        .iter()
        .enumerate()
        .map(|(id, l)| {
            json!({
                "id": id,
                "path": l.path.display().to_string(),
                "scale": scales.get(id).copied().unwrap_or(0.0),
                "task_name": l.task_name,
                "prompt_prefix": l.prompt_prefix,
            })
        })
        .collect();
    Json(Value::Array(list)).into_response()
}

/// `POST /lora-adapters`: `[{"id", "scale"}]` sets the global scales, llama-server's way: an adapter the list
/// does not name goes to 0, an id that names no adapter is ignored.
pub async fn post_lora_adapters(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(body, &headers, state.max_body_bytes()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let m = match state.loaded() {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(entries)) => match lora_scales(&entries, m.loras.len(), "the body") {
            Ok(scales) => {
                *m.lora_scales.lock().unwrap_or_else(|p| p.into_inner()) = scales;
                Json(json!({"success": true})).into_response()
            }
            Err(e) => e.into_response(),
        },
        Ok(_) => llama_error(StatusCode::BAD_REQUEST, "invalid_request_error", "Request body must be an array"),
        Err(e) => {
            ApiError::invalid(format!("the body is not valid JSON: {e}")).with_code("invalid_json").into_response()
        }
    }
}

/// A request's `lora` field (`/completion`, `/v1/completions`, `/v1/chat/completions`): `[{"id", "scale"}]`,
/// the scale of every adapter for this request, unnamed ones 0. Absent, null or empty: the global scales.
pub(crate) fn parse_lora(f: &crate::fields::Fields, loaded: &LoadedModel) -> Result<Option<Vec<f32>>, ApiError> {
    match f.raw("lora") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(entries)) if entries.is_empty() => Ok(None),
        Some(Value::Array(entries)) => lora_scales(entries, loaded.loras.len(), "lora").map(Some),
        Some(_) => {
            Err(ApiError::invalid_param("lora", "'lora' must be an array of objects with 'id' and 'scale' fields"))
        }
    }
}

/// The scales `[{"id", "scale"}]` give `count` adapters: unnamed ones 0, and, as llama-server's
/// `parse_lora_request`, an entry whose id names no adapter (or that has none) changes nothing. An entry that
/// is not an object, an id that is not an integer or a scale that is not a number is a 400.
fn lora_scales(entries: &[Value], count: usize, what: &str) -> Result<Vec<f32>, ApiError> {
    let bad = |m: String| ApiError::invalid_param(what, m);
    let mut scales = vec![0.0f32; count];
    for e in entries {
        if !e.is_object() {
            return Err(bad(format!("entry {e} is not an object with 'id' and 'scale'")));
        }
        let id = match e.get("id") {
            None => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| bad(format!("entry {e}: 'id' must be an integer")))?),
        };
        let scale = match e.get("scale") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .map(|s| s as f32)
                .filter(|s| s.is_finite())
                .ok_or_else(|| bad(format!("entry {e}: 'scale' must be a number")))?,
        };
        if let Some(slot) = id.and_then(|i| usize::try_from(i).ok()).and_then(|i| scales.get_mut(i)) {
            *slot = scale;
        }
    }
    Ok(scales)
}

/// `POST /infill`: fill-in-the-middle needs the model's FIM prefix, suffix and middle tokens.
pub async fn infill(State(state): State<AppState>) -> Response {
    let m = match state.loaded() {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    // The token texts llama.cpp recognises as FIM tokens (the GGUF may also name them by id; this model's
    // family has neither).
    let fim = [
        ("prefix", ["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>"]),
        ("suffix", ["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>"]),
        ("middle", ["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>"]),
    ];
    let missing: String = fim
        .iter()
        .filter(|(_, texts)| texts.iter().all(|t| m.tokenizer.token_id(t).is_none()))
        .map(|(name, _)| format!("{name} token is missing. "))
        .collect();
    if missing.is_empty() {
        return not_supported("Infill is not implemented by this server");
    }
    not_supported(format!("Infill is not supported by this model: {missing}"))
}

/// `POST /rerank` (and `/reranking`, `/v1/rerank`, `/v1/reranking`): needs a reranker model.
pub async fn rerank() -> Response {
    not_supported("This server does not support reranking: the model is not a reranker")
}

/// `POST /embedding`: llama-server's own embedding format, `{"content" | "input"}` →
/// `[{"index", "embedding": [[...]]}]` (one pooled, L2-normalised vector per input). A generative model
/// answers as llama-server does without `--embeddings`.
pub async fn embedding(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let m = match state.loaded() {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    if m.embedding_dim.is_none() {
        return not_supported(format!(
            "This server does not support embeddings: {} is not an embedding model (start it with one, e.g. -m \
             embeddinggemma-300m)",
            m.id
        ));
    }
    native_embedding(state, headers, body, m).await.unwrap_or_else(IntoResponse::into_response)
}

async fn native_embedding(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    m: Arc<LoadedModel>,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let inputs = off_runtime(move || embedding_inputs(&bytes, &m)).await?;
    let vectors = embeddings::compute(&state, inputs, None).await?;
    let items: Vec<NativeEmbedding> =
        vectors.into_iter().enumerate().map(|(index, v)| NativeEmbedding { index, embedding: [v] }).collect();
    Ok(Json(items).into_response())
}

/// Typed, so that the floats print as f32 (shortest round trip), as `/v1/embeddings` prints them.
#[derive(serde::Serialize)]
struct NativeEmbedding {
    index: usize,
    /// llama-server's rows: one, the pooled vector.
    embedding: [Vec<f32>; 1],
}

/// The token ids of `/embedding`'s inputs (`input`, or llama-server's `content`).
pub(crate) fn embedding_inputs(body: &[u8], m: &LoadedModel) -> Result<Vec<Vec<u32>>, ApiError> {
    {
        let f = Fields::parse(body)?;
        // Only L2 (llama-server's default, 2) is offered: the engine returns normalised vectors.
        if let Some(n) = f.raw("embd_normalize") {
            if n.as_i64() != Some(2) {
                return Err(ApiError::invalid_param("embd_normalize", "only 2 (Euclidean) is supported")
                    .with_code("invalid_value"));
            }
        }
        let mut map = serde_json::Map::new();
        match (f.raw("input"), f.raw("content")) {
            (Some(v), _) | (None, Some(v)) => map.insert("input".to_string(), v.clone()),
            (None, None) => {
                return Err(ApiError::invalid_param("input", "\"input\" or \"content\" must be provided")
                    .with_code("missing_required_parameter"))
            }
        };
        let (inputs, _, _) = embeddings::parse_openai(Value::Object(map).to_string().as_bytes(), m)?;
        Ok(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_files_are_plain_names() {
        for ok in ["a.bin", "slot_0-save.kv", "X"] {
            assert!(valid_filename(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "a\\b", "a b", "\u{0}", &"x".repeat(256)] {
            assert!(!valid_filename(bad), "{bad:?}");
        }
    }

    #[test]
    fn file_types_have_llama_cpps_names() {
        assert_eq!(ftype_name(Some(15)), "Q4_K - Medium");
        assert_eq!(ftype_name(Some(0)), "all F32");
        assert_eq!(ftype_name(Some(32)), "BF16");
        assert_eq!(ftype_name(Some(999)), "unknown, may not work");
        assert_eq!(ftype_name(None), "unknown, may not work");
    }

    #[test]
    fn a_final_assistant_message_is_continued() {
        let chat = ChatTemplate::builtin_gemma();
        let f = Fields::parse(
            br#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Yes, "}],
                 "add_generation_prompt": true}"#,
        )
        .unwrap();
        assert_eq!(
            render_request(&f, &chat).unwrap(),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n Yes, "
        );
        let two = Fields::parse(
            br#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a"},
                              {"role": "assistant", "content": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(render_request(&two, &chat).unwrap_err().status, StatusCode::BAD_REQUEST);
        let empty = Fields::parse(br#"{"messages": []}"#).unwrap();
        assert_eq!(render_request(&empty, &chat).unwrap(), "<start_of_turn>model\n");
    }
}
