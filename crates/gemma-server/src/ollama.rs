//! ollama's REST API (`docs/ollama.md`), so that ollama's clients (its Python package, Open WebUI, ...) can use
//! this server unchanged: `/api/generate` and `/api/chat` (NDJSON streams by default), `/api/embed` and the
//! older `/api/embeddings`, `/api/tags`, `/api/ps`, `/api/show`, `/api/version`, and `GET /` ("Ollama is
//! running"). Requests run on the same engine, sampling, chat template and grammar code as the other
//! dialects; ollama's option names and defaults (its `api.DefaultOptions`) apply. Errors are ollama's
//! `{"error": "message"}`. One model is served: any `model` name is taken to mean it, as on the OpenAI
//! routes, and responses name the served model.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use gemma_core::chat::ChatMessage;
use gemma_core::sampling::TokenLogprobs;
use gemma_core::{SamplingParams, Tokenizer};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api_error::ApiError;
use crate::embeddings::{check_inputs, compute, embedding_model};
use crate::engine::{Event, Finish, LoadedModel};
use crate::fields::Fields;
use crate::model_info::meta_json;
use crate::openai::{
    build_tables, parse_dry, parse_llama_sampling, piece_text, schema_grammar, submit, validated, Dialect, Plan,
    FIELD_LIMIT, MAX_STOPS,
};
use crate::server::{off_runtime, read_body, AppState};

/// The ollama release whose API this follows (`/api/version`; clients compare it with what they need).
pub const OLLAMA_VERSION: &str = "0.32.15";
/// ollama's limit on `top_logprobs`.
const MAX_TOP_LOGPROBS: u64 = 20;
/// `/api/show` empties metadata arrays longer than this unless `verbose` (ollama's rule).
const SHOWN_ARRAY: usize = 5;
/// ollama's `api.DefaultOptions` for sampling (min-p is 0 there: the field is unset).
const DEFAULT_TEMPERATURE: f32 = 0.8;
const DEFAULT_TOP_K: usize = 40;
const DEFAULT_TOP_P: f32 = 0.9;
/// `expires_at` of `/api/ps`: the model is never unloaded.
const NEVER: &str = "9999-12-31T23:59:59Z";

/// The `/api/...` routes behind the API key check.
pub fn protected_routes() -> Router<AppState> {
    Router::new()
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings_legacy))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/pull", post(model_management))
        .route("/api/push", post(model_management))
        .route("/api/create", post(model_management))
        .route("/api/copy", post(model_management))
        .route("/api/delete", delete(model_management))
        .route("/api/blobs/{digest}", post(model_management).head(model_management))
}

/// `GET /` (and `HEAD /`), which ollama's clients probe, and `/api/version`: they say nothing about the model.
pub fn public_routes() -> Router<AppState> {
    Router::new().route("/", get(|| async { "Ollama is running" })).route("/api/version", get(version))
}

/// Whether errors on `path` take ollama's shape.
pub fn is_ollama_path(path: &str) -> bool {
    path.starts_with("/api/")
}

async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_VERSION}))
}

async fn model_management(req: Request) -> Response {
    let what = req.uri().path().trim_start_matches("/api/").split('/').next().unwrap_or_default().to_string();
    failure(ApiError::not_implemented(format!(
        "/api/{what} is not supported: gemma-server serves the one model it was started with (-m); \
             models are not pulled, created, copied or deleted through the API"
    )))
}

fn failure(e: ApiError) -> Response {
    e.into_ollama_response()
}

/// The served model's name as ollama writes names (`name:tag`, the tag `latest` when the id has none).
pub fn model_name(m: &LoadedModel) -> String {
    if m.id.contains(':') {
        m.id.clone()
    } else {
        format!("{}:latest", m.id)
    }
}

/// Now, as ollama's `created_at` (RFC 3339, UTC, microseconds).
fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs(), Some(d.subsec_micros()))
}

fn rfc3339(secs: u64, micros: Option<u32>) -> String {
    let base = gemma_core::chat::format_utc("%FT%T", secs).unwrap_or_default();
    match micros {
        Some(us) => format!("{base}.{us:06}Z"),
        None => format!("{base}Z"),
    }
}

/// Nanoseconds between two instants (ollama's durations).
fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------------------
// /api/generate and /api/chat

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Generate,
    Chat,
}

impl Kind {
    fn verb(self) -> &'static str {
        match self {
            Kind::Generate => "generate",
            Kind::Chat => "chat",
        }
    }
}

/// A checked `/api/generate` or `/api/chat` body.
pub(crate) struct Generation {
    pub(crate) kind: Kind,
    /// `None`: an empty prompt (no messages), which ollama answers as a load request.
    pub(crate) plan: Option<Plan>,
    /// `/api/generate` without `raw`: the closing object carries `context`.
    pub(crate) with_context: bool,
}

pub async fn generate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    run(state, headers, body, Kind::Generate).await.unwrap_or_else(failure)
}

pub async fn chat(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    run(state, headers, body, Kind::Chat).await.unwrap_or_else(failure)
}

async fn run(state: AppState, headers: HeaderMap, body: Body, kind: Kind) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    if loaded.embedding_dim.is_some() {
        // ollama's answer for a model without the completion capability.
        return Err(ApiError::invalid(format!(
            "\"{}\" does not support {}: it is an embedding model (use /api/embed)",
            model_name(&loaded),
            kind.verb()
        )));
    }
    let parsing = loaded.clone();
    let g = off_runtime(move || parse_generation(&bytes, &parsing, kind)).await?;
    let reply = Reply {
        kind,
        model: model_name(&loaded),
        with_context: g.with_context,
        tok: loaded.tokenizer.clone(),
        received,
        submitted: Instant::now(),
    };
    let Some(plan) = g.plan else {
        return Ok(Json(reply.load()).into_response());
    };
    let rx = submit(&state, &plan, &loaded, received)?;
    let prompt = plan.prompts.into_iter().next().unwrap_or_default();
    let progress = Progress::new(prompt);
    if plan.stream {
        let lines = Body::from_stream(ndjson(rx, reply, progress));
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response());
    }
    let mut progress = progress;
    let mut rx = rx;
    loop {
        match rx.recv().await {
            None => return Err(ApiError::internal("the inference engine stopped")),
            Some((_, Event::Chunk(c))) => {
                progress.add(&c.text, c.token, c.logprob);
            }
            Some((_, Event::Done(f))) => {
                return Ok(Json(reply.last(&progress, f, &progress.text, &progress.logprobs)).into_response());
            }
            Some((_, Event::Error(m))) => return Err(ApiError::internal(m)),
            Some((_, Event::Rejected(m))) => return Err(ApiError::invalid(m)),
        }
    }
}

/// Reads and checks a body of `/api/generate` or `/api/chat` into what the engine gets.
pub(crate) fn parse_generation(bytes: &[u8], loaded: &LoadedModel, kind: Kind) -> Result<Generation, ApiError> {
    let f = Fields::parse(bytes)?;
    let name = model_name(loaded);
    f.get::<String>("model")?;
    let stream = f.get::<bool>("stream")?.unwrap_or(true);
    let unload = keep_alive_is_zero(&f)?;
    check_think(&f, &name)?;
    let logprobs = f.get::<bool>("logprobs")?.unwrap_or(false);
    let top_logprobs = match f.raw("top_logprobs") {
        None => 0,
        Some(v) => v.as_u64().filter(|k| *k <= MAX_TOP_LOGPROBS).ok_or_else(|| {
            ApiError::invalid_param("top_logprobs", format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"))
        })? as usize,
    };
    let options = f.object("options")?.unwrap_or_default();
    let Options { sampling, max_tokens, stop, window, num_keep } = parse_options(&options, loaded)?;
    let sampling = validated(SamplingParams { grammar: parse_format(&f)?, ..sampling })?;
    let truncate = f.get::<bool>("truncate")?.unwrap_or(true);
    let shift = f.get::<bool>("shift")?.unwrap_or(true);
    let tok = &loaded.tokenizer;

    let (ids, with_context) = match kind {
        Kind::Generate => {
            for field in ["images", "suffix", "template"] {
                let given = match f.raw(field) {
                    Some(Value::String(s)) => !s.is_empty(),
                    Some(Value::Array(a)) => !a.is_empty(),
                    Some(_) => true,
                    None => false,
                };
                if given {
                    return Err(unsupported_input(field, &name));
                }
            }
            let prompt = f.get::<String>("prompt")?.unwrap_or_default();
            let system = f.get::<String>("system")?.filter(|s| !s.is_empty());
            let raw = f.get::<bool>("raw")?.unwrap_or(false);
            let context = f.get::<Vec<u64>>("context")?.unwrap_or_default();
            if raw && (system.is_some() || !context.is_empty()) {
                return Err(ApiError::invalid("raw mode does not support template, system, or context"));
            }
            if let Some(bad) = context.iter().find(|&&id| id >= loaded.vocab_size as u64) {
                return Err(ApiError::invalid_param(
                    "context",
                    format!("'context' holds {bad}, which is not a token id of this model's vocabulary"),
                ));
            }
            if prompt.is_empty() {
                return load_request(unload, kind);
            }
            let ids = if raw {
                tok.encode(&prompt, tok.add_bos(), true)
            } else {
                let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
                messages.push(ChatMessage::user(prompt));
                if context.is_empty() {
                    loaded.chat.encode(tok, &messages, true).map_err(template_error)?
                } else {
                    // The new turn continues the given tokens, as ollama continues their text.
                    let text = loaded.chat.render(&messages, true).map_err(template_error)?;
                    let mut ids: Vec<u32> = context.iter().map(|&id| id as u32).collect();
                    ids.extend(tok.encode(&text, false, true));
                    ids
                }
            };
            let ids = if truncate { truncated_prompt(ids, window, num_keep, shift, tok.add_bos())? } else { ids };
            (ids, !raw)
        }
        Kind::Chat => {
            if f.raw("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) {
                // What ollama answers for a model whose template has no tools (Gemma 3's has none).
                return Err(ApiError::invalid_param("tools", format!("\"{name}\" does not support tools")));
            }
            let messages = parse_messages(&f, &name)?;
            if messages.is_empty() {
                return load_request(unload, kind);
            }
            let ids = if truncate {
                fitting_conversation(&messages, window, |m| loaded.chat.encode(tok, m, true))?
            } else {
                loaded.chat.encode(tok, &messages, true).map_err(template_error)?
            };
            (ids, false)
        }
    };
    if ids.len() >= window {
        return Err(ApiError::invalid_param(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            format!(
                "the prompt has {} tokens, but the context holds {window} (at least one must be left to generate)",
                ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = window - ids.len();
    build_tables(loaded, &sampling);
    let plan = Plan {
        dialect: if kind == Kind::Chat { Dialect::Chat } else { Dialect::Completion },
        prompts: vec![ids],
        n: 1,
        // A shifted context has room for any number of tokens (ollama's num_predict -1 is no limit then).
        max_tokens: if shift { max_tokens } else { Some(max_tokens.map_or(room, |m| m.min(room))) },
        sampling,
        stop,
        stream,
        include_usage: false,
        logprobs: logprobs.then_some(top_logprobs),
        // ollama shifts the context while it generates unless `shift` is false, keeping `num_keep` tokens
        // after BOS (it hands llama-server `--keep` only when `num_keep` is above 0).
        shift: crate::openai::ShiftRequest {
            on: Some(shift),
            n_keep: Some(num_keep.max(0)),
            n_discard: 0,
            ctx: Some(window),
        },
        lora: None,
    };
    Ok(Generation { kind, plan: Some(plan), with_context })
}

/// The tokens of the longest tail of the conversation that fits the context, as ollama's `truncate` chooses
/// it: the oldest messages are dropped one by one (the system messages among them kept, in front) until the
/// prompt has at most `window` tokens; the last message always stays, fitting or not.
fn fitting_conversation(
    messages: &[ChatMessage],
    window: usize,
    encode: impl Fn(&[ChatMessage]) -> Result<Vec<u32>, gemma_core::chat::ChatTemplateError>,
) -> Result<Vec<u32>, ApiError> {
    let last = messages.len().saturating_sub(1);
    let mut start = 0;
    loop {
        let mut kept: Vec<ChatMessage> = messages[..start].iter().filter(|m| m.role == "system").cloned().collect();
        kept.extend_from_slice(&messages[start..]);
        match encode(&kept) {
            Ok(ids) if ids.len() <= window || start >= last => {
                if start > 0 {
                    tracing::debug!(dropped = start, "truncating input messages which exceed context length");
                }
                return Ok(ids);
            }
            // A tail the template refuses (one that starts with the model's turn, where the template wants
            // turns to alternate from the user's) is passed over; the whole conversation must render.
            Err(e) if start == 0 || start >= last => return Err(template_error(e)),
            _ => start += 1,
        }
    }
}

/// A prompt longer than the context cut as ollama cuts it before handing it to llama-server with context
/// shift on: the first `num_keep` tokens (and BOS) stay, then as many of the last tokens as leave half of the
/// rest of the context free. With `shift: false` such a prompt is ollama's 400.
fn truncated_prompt(ids: Vec<u32>, window: usize, num_keep: i64, shift: bool, bos: bool) -> Result<Vec<u32>, ApiError> {
    if window <= 1 || ids.len() < window {
        return Ok(ids);
    }
    if !shift {
        return Err(ApiError::invalid_param(
            "prompt",
            "the prompt is longer than the context length currently available to the model; shorten the prompt, \
             adjust the context length in settings, or use a model with a longer context length",
        )
        .with_code("context_length_exceeded"));
    }
    let keep = if num_keep < 0 { ids.len() } else { usize::try_from(num_keep).unwrap_or(usize::MAX) };
    let keep = keep.saturating_add(usize::from(bos)).min(window - 1);
    let limit = window - ((window - keep) / 2).max(1);
    let discard = ids.len() - limit;
    tracing::warn!(limit, prompt = ids.len(), keep, "truncating input prompt");
    Ok(ids[..keep].iter().chain(&ids[keep + discard..]).copied().collect())
}

/// An empty prompt (or no messages) loads the model in ollama; here it is loaded already. `keep_alive: 0`
/// with it asks ollama to unload the model, which this server cannot do.
fn load_request(unload: bool, kind: Kind) -> Result<Generation, ApiError> {
    if unload {
        return Err(ApiError::invalid(
            "keep_alive 0 asks to unload the model, but gemma-server keeps the one model it serves loaded",
        ));
    }
    Ok(Generation { kind, plan: None, with_context: false })
}

fn template_error(e: gemma_core::chat::ChatTemplateError) -> ApiError {
    ApiError::invalid_param("messages", format!("the chat template cannot render these messages: {e}"))
}

fn unsupported_input(field: &str, name: &str) -> ApiError {
    let why = match field {
        "images" => format!("\"{name}\" does not support images: this server runs text-only models"),
        "suffix" => format!("\"{name}\" does not support insert (a 'suffix' needs a fill-in-the-middle model)"),
        _ => "a 'template' (a Go template override) is not supported: the model's own chat template is used; \
              send \"raw\": true with a prompt you have formatted yourself instead"
            .to_string(),
    };
    ApiError::invalid_param(field, why)
}

/// `keep_alive`: a duration string ("5m", "1h", "-1") or a number of seconds; only whether it is zero matters.
fn keep_alive_is_zero(f: &Fields) -> Result<bool, ApiError> {
    match f.raw("keep_alive") {
        None => Ok(false),
        Some(Value::Number(n)) => Ok(n.as_f64() == Some(0.0)),
        Some(Value::String(s)) => {
            Ok(s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse::<f64>().ok() == Some(0.0))
        }
        Some(_) => Err(ApiError::invalid_param(
            "keep_alive",
            "'keep_alive' must be a duration (\"5m\") or a number of seconds",
        )),
    }
}

/// `think`: no model served here thinks, so only "off" (false, or absent) is taken, as ollama answers.
fn check_think(f: &Fields, name: &str) -> Result<(), ApiError> {
    match f.raw("think") {
        None | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Bool(true)) => {
            Err(ApiError::invalid_param("think", format!("\"{name}\" does not support thinking")))
        }
        Some(Value::String(s)) if ["high", "medium", "low", "max"].contains(&s.as_str()) => {
            Err(ApiError::invalid_param("think", format!("\"{name}\" does not support thinking")))
        }
        Some(_) => Err(ApiError::invalid_param(
            "think",
            "'think' must be a boolean or one of \"high\", \"medium\", \"low\", \"max\"",
        )),
    }
}

/// `format`: "json" (any JSON object) or a JSON Schema, as a grammar (the llama.cpp converter, as
/// llama-server's `json_schema`, which is what ollama hands it).
fn parse_format(f: &Fields) -> Result<Option<String>, ApiError> {
    let schema = match f.raw("format") {
        None => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) if s == "json" => json!({"type": "object"}),
        Some(Value::Object(o)) if o.is_empty() => json!({"type": "object"}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(v) => {
            return Err(ApiError::invalid_param(
                "format",
                format!("invalid format: {v}; expected \"json\" or a valid JSON Schema object"),
            ))
        }
    };
    schema_grammar(&schema).map(Some).map_err(|e| {
        ApiError::invalid_param("format", format!("'format' is not a JSON Schema this server can follow: {e}"))
    })
}

/// What `options` decides.
struct Options {
    sampling: SamplingParams,
    /// The most tokens to generate (`None`: until the end of the turn or the context).
    max_tokens: Option<usize>,
    stop: Vec<String>,
    /// The context window (`num_ctx`, at most the server's).
    window: usize,
    /// `num_keep`: the prompt tokens (after BOS) a truncated prompt keeps from its start; -1 keeps all.
    num_keep: i64,
}

/// ollama's default `num_keep`.
const DEFAULT_NUM_KEEP: i64 = 4;

/// ollama's `options` with its defaults (`api.DefaultOptions`): temperature 0.8, top-k 40, top-p 0.9, min-p 0,
/// typical-p 1, repeat_last_n 64, repeat_penalty 1, no presence or frequency penalty, seed -1 (random),
/// num_predict -1. Its runner settings (num_gpu, num_thread, num_batch, use_mmap, ...) and unknown keys are
/// ignored, as ollama ignores unknown keys. llama-server's other sampling fields (mirostat, dry_*, xtc_*, ...)
/// are read under their names.
fn parse_options(o: &Fields, loaded: &LoadedModel) -> Result<Options, ApiError> {
    let int = |name: &str| -> Result<Option<i64>, ApiError> {
        match o.raw(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                ApiError::invalid_param(name, format!("option \"{name}\" must be an integer, got {v}"))
                    .with_code("invalid_type")
            }),
        }
    };
    let number = |name: &str, default: f32| -> Result<f32, ApiError> {
        Ok(o.number_in(name, -FIELD_LIMIT..=FIELD_LIMIT)?.map_or(default, |v| v as f32))
    };
    let top_k = int("top_k")?.map_or(DEFAULT_TOP_K, |k| usize::try_from(k).unwrap_or(0));
    let seed = match int("seed")? {
        None | Some(-1) => None,
        Some(s) if s >= 0 => Some(s as u64),
        Some(s) => {
            return Err(ApiError::invalid_param(
                "seed",
                format!("option \"seed\" must be -1 (random) or more, got {s}"),
            ))
        }
    };
    let base = SamplingParams {
        temperature: number("temperature", DEFAULT_TEMPERATURE)?.max(0.0),
        top_k,
        top_p: o.number_in("top_p", 0.0..=1.0)?.map_or(DEFAULT_TOP_P, |v| v as f32),
        min_p: o.number_in("min_p", 0.0..=1.0)?.map_or(0.0, |v| v as f32),
        presence_penalty: number("presence_penalty", 0.0)?,
        frequency_penalty: number("frequency_penalty", 0.0)?,
        seed,
        ..SamplingParams::default()
    };
    let sampling = parse_llama_sampling(o, base).and_then(|p| parse_dry(o, p))?;
    let max_tokens = match int("num_predict")? {
        None => None,
        Some(n) if n < 0 => None,
        // As llama-server, which ollama hands it to, generates one token for 0.
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX).max(1)),
    };
    let stop = o.string_or_list("stop")?;
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid_param("stop", format!("at most {MAX_STOPS} stop strings")));
    }
    let window = match int("num_ctx")? {
        None => loaded.ctx,
        Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX).min(loaded.ctx),
        Some(n) => {
            return Err(ApiError::invalid_param("num_ctx", format!("option \"num_ctx\" must be 1 or more, got {n}")))
        }
    };
    let num_keep = match int("num_keep")? {
        None => DEFAULT_NUM_KEEP,
        Some(n) if n >= -1 => n,
        Some(n) => {
            return Err(ApiError::invalid_param(
                "num_keep",
                format!("option \"num_keep\" must be -1 (the whole prompt) or more, got {n}"),
            ))
        }
    };
    Ok(Options { sampling, max_tokens, stop, window, num_keep })
}

/// `messages`: `{role, content, images?, tool_calls?, thinking?, tool_name?}`; the role is read in lower
/// case, as ollama does.
fn parse_messages(f: &Fields, name: &str) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: String| ApiError::invalid_param("messages", m).with_code("invalid_type");
    let items = match f.raw("messages") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("'messages' must be a list of messages".into())),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let m = m.as_object().ok_or_else(|| bad(format!("message {i} must be an object")))?;
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("message {i} needs a string 'role'")))?
                .to_lowercase();
            if !["system", "user", "assistant", "tool"].contains(&role.as_str()) {
                return Err(bad(format!("message {i} has the unknown role '{role}'")));
            }
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(bad(format!("the 'content' of message {i} must be a string"))),
            };
            let non_empty = |key: &str| m.get(key).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            if non_empty("images") {
                return Err(unsupported_input("images", name));
            }
            if non_empty("tool_calls") {
                return Err(ApiError::invalid_param("messages", format!("\"{name}\" does not support tools")));
            }
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// What the responses need besides the engine's events.
struct Reply {
    kind: Kind,
    model: String,
    with_context: bool,
    tok: Arc<Tokenizer>,
    received: Instant,
    /// When the request went to the engine (parsed and templated).
    submitted: Instant,
}

/// The answer so far.
struct Progress {
    prompt: Vec<u32>,
    text: String,
    logprobs: Vec<(u32, TokenLogprobs)>,
    first_token: Option<Instant>,
}

impl Progress {
    fn new(prompt: Vec<u32>) -> Progress {
        Progress { prompt, text: String::new(), logprobs: Vec::new(), first_token: None }
    }

    fn add(&mut self, text: &str, token: Option<u32>, logprob: Option<TokenLogprobs>) {
        self.text.push_str(text);
        if token.is_some() {
            self.first_token.get_or_insert_with(Instant::now);
        }
        if let (Some(id), Some(lp)) = (token, logprob) {
            self.logprobs.push((id, lp));
        }
    }
}

/// Log-probability entries as ollama writes them: `{token, logprob, bytes, top_logprobs?}` per token.
fn logprob_entries(tok: &Tokenizer, tokens: &[(u32, TokenLogprobs)]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = piece_text(tok, id);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    tokens
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.chosen.logprob);
            if !lp.top.is_empty() {
                e["top_logprobs"] = lp.top.iter().map(|t| entry(t.id, t.logprob)).collect();
            }
            e
        })
        .collect()
}

impl Reply {
    /// A response object with `text` as its `response` (generate) or `message.content` (chat).
    fn object(&self, text: &str, done: bool) -> Value {
        let mut v = Map::new();
        v.insert("model".into(), json!(self.model));
        v.insert("created_at".into(), json!(now_rfc3339()));
        match self.kind {
            Kind::Generate => v.insert("response".into(), json!(text)),
            Kind::Chat => v.insert("message".into(), json!({"role": "assistant", "content": text})),
        };
        v.insert("done".into(), json!(done));
        Value::Object(v)
    }

    /// The answer to an empty prompt: the model is loaded.
    fn load(&self) -> Value {
        let mut v = self.object("", true);
        v["done_reason"] = json!("load");
        v
    }

    /// A piece of a stream.
    fn piece(&self, text: &str, logprobs: &[(u32, TokenLogprobs)]) -> Value {
        let mut v = self.object(text, false);
        if !logprobs.is_empty() {
            v["logprobs"] = logprob_entries(&self.tok, logprobs);
        }
        v
    }

    /// The closing object: `text` (empty when streamed), why it stopped, `context` (generate, not raw: the
    /// prompt's tokens and the answer's), the counts and the durations in nanoseconds.
    fn last(&self, p: &Progress, f: Finish, text: &str, logprobs: &[(u32, TokenLogprobs)]) -> Value {
        let now = Instant::now();
        let first = p.first_token.unwrap_or(now);
        let mut v = self.object(text, true);
        v["done_reason"] = json!(f.reason.as_str());
        if self.with_context {
            let mut context = p.prompt.clone();
            context.extend(self.tok.encode(&p.text, false, false));
            v["context"] = json!(context);
        }
        v["total_duration"] = json!(nanos(self.received, now));
        v["load_duration"] = json!(nanos(self.received, self.submitted));
        v["prompt_eval_count"] = json!(f.prompt_tokens);
        v["prompt_eval_duration"] = json!(nanos(self.submitted, first));
        v["eval_count"] = json!(f.completion_tokens);
        v["eval_duration"] = json!(nanos(first, now));
        if !logprobs.is_empty() {
            v["logprobs"] = logprob_entries(&self.tok, logprobs);
        }
        v
    }
}

/// The NDJSON stream: a line per piece of text, then the closing object; a failure after the answer has
/// begun is a last `{"error": ...}` line, as ollama sends it. Dropping the stream (the client left) drops the
/// receiver, which cancels the sequence.
fn ndjson(
    rx: UnboundedReceiver<(usize, Event)>,
    reply: Reply,
    progress: Progress,
) -> impl Stream<Item = Result<String, Infallible>> {
    let line = |v: Value| format!("{v}\n");
    stream::unfold(Some((rx, reply, progress)), move |s| async move {
        let (mut rx, reply, mut p) = s?;
        loop {
            let (closing, v) = match rx.recv().await {
                None => (true, json!({"error": "the inference engine stopped"})),
                Some((_, Event::Chunk(c))) => {
                    let before = p.logprobs.len();
                    p.add(&c.text, c.token, c.logprob);
                    if c.text.is_empty() && p.logprobs.len() == before {
                        continue;
                    }
                    (false, reply.piece(&c.text, &p.logprobs[before..]))
                }
                Some((_, Event::Done(f))) => (true, reply.last(&p, f, "", &[])),
                Some((_, Event::Error(m))) | Some((_, Event::Rejected(m))) => (true, json!({"error": m})),
            };
            return Some((Ok(line(v)), (!closing).then_some((rx, reply, p))));
        }
    })
}

// ---------------------------------------------------------------------------------------------------------
// /api/embed and /api/embeddings

/// Typed, so that the floats print as f32.
#[derive(Serialize)]
struct EmbedResponse {
    model: String,
    embeddings: Vec<Vec<f32>>,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: usize,
}

#[derive(Serialize)]
struct LegacyEmbedding {
    embedding: Vec<f32>,
}

pub async fn embed(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    embed_inner(state, headers, body).await.unwrap_or_else(failure)
}

async fn embed_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = embedding_model(&state)?;
    let parsing = loaded.clone();
    let (inputs, dims) = off_runtime(move || parse_embed(&bytes, &parsing)).await?;
    let submitted = Instant::now();
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let embeddings = if inputs.is_empty() { Vec::new() } else { compute(&state, inputs, dims).await? };
    Ok(Json(EmbedResponse {
        model: model_name(&loaded),
        embeddings,
        total_duration: nanos(received, Instant::now()),
        load_duration: nanos(received, submitted),
        prompt_eval_count: tokens,
    })
    .into_response())
}

/// An `/api/embed` body: each input's token ids (none for an empty `input`: ollama then only loads the model)
/// and `dimensions`. `truncate` (default true) cuts an input longer than the context to fit, keeping its end
/// token; with `truncate: false` such an input is a 400.
pub(crate) fn parse_embed(bytes: &[u8], loaded: &LoadedModel) -> Result<(Vec<Vec<u32>>, Option<usize>), ApiError> {
    let f = Fields::parse(bytes)?;
    f.get::<String>("model")?;
    keep_alive_is_zero(&f)?;
    f.object("options")?;
    let texts: Vec<String> = match f.raw("input") {
        None => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>().ok_or_else(|| {
                ApiError::invalid_param("input", "invalid input type: 'input' must be a string or a list of strings")
            })?
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "input",
                "invalid input type: 'input' must be a string or a list of strings",
            ))
        }
    };
    let truncate = f.get::<bool>("truncate")?.unwrap_or(true);
    let dims = match f.raw("dimensions") {
        None => None,
        Some(v) => {
            let width = loaded.embedding_dim.unwrap_or(0);
            match v.as_u64() {
                Some(0) => None,
                Some(d) if d as usize <= width => Some(d as usize),
                _ => {
                    return Err(ApiError::invalid_param(
                        "dimensions",
                        format!("'dimensions' must be between 1 and {width} (0: all), got {v}"),
                    ))
                }
            }
        }
    };
    let tok = &loaded.tokenizer;
    let mut inputs = Vec::with_capacity(texts.len());
    for text in &texts {
        let mut ids = tok.encode_input(text, true);
        if ids.len() > loaded.ctx {
            if !truncate {
                return Err(ApiError::invalid_param("input", "the input length exceeds the context length")
                    .with_code("context_length_exceeded"));
            }
            let end = tok.add_eos().then(|| ids.last().copied()).flatten();
            ids.truncate(loaded.ctx - usize::from(end.is_some()));
            ids.extend(end);
        }
        inputs.push(ids);
    }
    check_inputs(&inputs, loaded, "input")?;
    Ok((inputs, dims))
}

pub async fn embeddings_legacy(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    legacy_inner(state, headers, body).await.unwrap_or_else(failure)
}

async fn legacy_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = embedding_model(&state)?;
    let parsing = loaded.clone();
    let input = off_runtime(move || parse_embeddings_legacy(&bytes, &parsing)).await?;
    let embedding = match input {
        None => Vec::new(),
        Some(ids) => compute(&state, vec![ids], None).await?.into_iter().next().unwrap_or_default(),
    };
    Ok(Json(LegacyEmbedding { embedding }).into_response())
}

/// A `/api/embeddings` body: the prompt's token ids, `None` for an empty prompt (a load request).
pub(crate) fn parse_embeddings_legacy(bytes: &[u8], loaded: &LoadedModel) -> Result<Option<Vec<u32>>, ApiError> {
    let f = Fields::parse(bytes)?;
    f.get::<String>("model")?;
    keep_alive_is_zero(&f)?;
    f.object("options")?;
    let prompt = f.get::<String>("prompt")?.unwrap_or_default();
    if prompt.is_empty() {
        return Ok(None);
    }
    let ids = loaded.tokenizer.encode_input(&prompt, true);
    check_inputs(std::slice::from_ref(&ids), loaded, "prompt")?;
    Ok(Some(ids))
}

// ---------------------------------------------------------------------------------------------------------
// /api/tags, /api/ps, /api/show

fn details(m: &LoadedModel) -> Value {
    let info = &m.file_info;
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": info.parameter_size(),
        "quantization_level": info.file_type.unwrap_or(""),
    })
}

/// The served model as `/api/tags` and `/api/ps` list it.
fn model_entry(m: &LoadedModel) -> Value {
    let name = model_name(m);
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(m.file_info.modified, None),
        "size": m.file_info.size,
        "digest": m.file_info.digest(),
        "details": details(m),
    })
}

async fn tags(State(state): State<AppState>) -> Response {
    match state.loaded() {
        Ok(m) => Json(json!({"models": [model_entry(&m)]})).into_response(),
        Err(e) => failure(e),
    }
}

async fn ps(State(state): State<AppState>) -> Response {
    let m = match state.loaded() {
        Ok(m) => m,
        Err(e) => return failure(e),
    };
    let mut entry = model_entry(&m);
    // ollama's running-model list has no modification time
    if let Some(o) = entry.as_object_mut() {
        o.shift_remove("modified_at");
        o.insert("expires_at".into(), json!(NEVER));
        o.insert("size_vram".into(), json!(0));
        o.insert("context_length".into(), json!(m.ctx));
    }
    Json(json!({"models": [entry]})).into_response()
}

async fn show(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    show_inner(state, headers, body).await.unwrap_or_else(failure)
}

async fn show_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let m = state.loaded()?;
    let f = Fields::parse(&bytes)?;
    let asked = f.get::<String>("model")?.or(f.get::<String>("name")?).filter(|s| !s.is_empty());
    if asked.is_none() {
        return Err(ApiError::invalid_param("model", "model is required"));
    }
    let verbose = f.get::<bool>("verbose")?.unwrap_or(false);
    let info = m.file_info.clone();
    let model_info = off_runtime(move || {
        let max_array = if verbose { usize::MAX } else { SHOWN_ARRAY };
        let map: Map<String, Value> = info
            .metadata()
            .iter()
            .filter(|(k, _)| k != "general.name" && k != "tokenizer.chat_template")
            .map(|(k, v)| (k.clone(), meta_json(v, max_array)))
            .collect();
        Ok(Value::Object(map))
    })
    .await?;
    let info = &m.file_info;
    let license = info.metadata().iter().find(|(k, _)| k == "general.license").and_then(|(_, v)| v.as_str());
    let capabilities = if m.embedding_dim.is_some() { ["embedding"] } else { ["completion"] };
    let tensors: Vec<Value> =
        info.tensors().iter().map(|t| json!({"name": t.name, "type": t.ggml_type.name(), "shape": t.dims})).collect();
    let mut v = json!({
        "modelfile": format!("# Modelfile generated by gemma-server\nFROM {}\n", info.path.display()),
        "template": m.chat.template_text(),
        "details": details(&m),
        "model_info": model_info,
        "tensors": tensors,
        "capabilities": capabilities,
        "modified_at": rfc3339(info.modified, None),
    });
    if let Some(l) = license {
        v["license"] = json!(l);
    }
    Ok(Json(v).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, Some(42)), "2023-11-14T22:13:20.000042Z");
    }

    #[test]
    fn keep_alive_zero_is_recognised_in_its_forms() {
        let zero = |body: &str| keep_alive_is_zero(&Fields::parse(body.as_bytes()).unwrap());
        for z in [r#"{"keep_alive": 0}"#, r#"{"keep_alive": "0"}"#, r#"{"keep_alive": "0s"}"#, r#"{"keep_alive": 0.0}"#]
        {
            assert!(zero(z).unwrap(), "{z}");
        }
        for nz in [r#"{}"#, r#"{"keep_alive": "5m"}"#, r#"{"keep_alive": -1}"#, r#"{"keep_alive": "-1"}"#] {
            assert!(!zero(nz).unwrap(), "{nz}");
        }
        assert!(zero(r#"{"keep_alive": [1]}"#).is_err());
    }
}
