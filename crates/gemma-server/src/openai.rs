//! The OpenAI dialect: `/v1/completions` and `/v1/chat/completions`, plain JSON or SSE streams.

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
use gemma_core::chat::ChatMessage;
use gemma_core::sampling::{seed_for_choice, Mirostat, SamplerStage, SamplingError, TokenLogprobs};
use gemma_core::{ContextShift, SamplingParams, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api_error::ApiError;
use crate::engine::{Event, Finish, GenerationRequest, LoadedModel, RequestShift, SubmitError};
use crate::fields::Fields;
use crate::server::{off_runtime, read_body, AppState};

/// Most choices one request may ask for (`n` times the number of prompts).
pub const MAX_CHOICES: usize = 16;
/// Most stop strings.
pub(crate) const MAX_STOPS: usize = 16;
/// Most DRY sequence breakers: each is matched against the whole vocabulary when a request comes.
pub(crate) const MAX_DRY_BREAKERS: usize = 32;
/// OpenAI's limit on `top_logprobs`.
const MAX_TOP_LOGPROBS: u64 = 20;
/// `max_tokens` of a completion that names none (OpenAI's default).
const DEFAULT_COMPLETION_TOKENS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Completion,
    Chat,
}

/// A parsed and checked request (the Gemini dialect builds one too).
pub(crate) struct Plan {
    pub(crate) dialect: Dialect,
    pub(crate) prompts: Vec<Vec<u32>>,
    pub(crate) n: usize,
    pub(crate) max_tokens: Option<usize>,
    pub(crate) sampling: SamplingParams,
    pub(crate) stop: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// `Some(k)`: log-probabilities of the chosen tokens and the `k` best alternatives.
    pub(crate) logprobs: Option<usize>,
    pub(crate) shift: ShiftRequest,
    /// The LoRA scales a request's `lora` field asks for (by id); `None`: the server's global scales.
    pub(crate) lora: Option<Vec<f32>>,
}

/// What a request says of context shift: llama-server's `n_keep` and `n_discard` (on every completion
/// endpoint), and for ollama's API whether to shift at all (`shift`) within which context (`num_ctx`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ShiftRequest {
    /// `None`: as the server's `--context-shift` says.
    pub(crate) on: Option<bool>,
    /// Prompt tokens never dropped, BOS not counted (-1: the whole prompt); `None`: the server's `--keep`.
    pub(crate) n_keep: Option<i64>,
    /// Tokens dropped at a time (0: half of those after the kept ones).
    pub(crate) n_discard: usize,
    /// The request's context when smaller than the server's (ollama's `num_ctx`).
    pub(crate) ctx: Option<usize>,
}

impl ShiftRequest {
    /// llama-server's fields `n_keep` (an integer, -1 or more) and `n_discard` (0 or more).
    pub(crate) fn parse(f: &Fields) -> Result<ShiftRequest, ApiError> {
        let n_keep = match f.raw("n_keep") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|&k| k >= -1).ok_or_else(|| {
                ApiError::invalid_param("n_keep", "'n_keep' must be an integer, -1 or more").with_code("invalid_type")
            })?),
        };
        let n_discard = f.integer_in("n_discard", 0..=u32::MAX as u64)?.unwrap_or(0) as usize;
        Ok(ShiftRequest { on: None, n_keep, n_discard, ctx: None })
    }

    /// The engine's settings for a prompt of `prompt_len` tokens on a server whose context shift is
    /// `server_on` with `server_keep` (`--keep`), as llama-server resolves them: `n_keep` -1 is the prompt,
    /// BOS is added to the count.
    pub(crate) fn resolve(
        &self,
        server_on: bool,
        server_keep: i64,
        prompt_len: usize,
        bos: bool,
        ctx: usize,
    ) -> Option<RequestShift> {
        if !self.on.unwrap_or(server_on) {
            return None;
        }
        let n_keep = self.n_keep.unwrap_or(server_keep);
        let keep = usize::try_from(n_keep).unwrap_or(prompt_len).saturating_add(usize::from(bos));
        let discard = (self.n_discard > 0).then_some(self.n_discard);
        Some(RequestShift { rule: ContextShift { keep, discard }, ctx: self.ctx.unwrap_or(ctx).min(ctx) })
    }
}

pub async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Dialect::Completion).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Dialect::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(state: AppState, headers: HeaderMap, body: Body, dialect: Dialect) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let parsing = loaded.clone();
    let plan = off_runtime(move || parse_plan(&Fields::parse(&bytes)?, &parsing, dialect)).await?;
    let rx = submit(&state, &plan, &loaded, received)?;
    let meta = ResponseMeta::new(&plan, &loaded);
    if plan.stream {
        Ok(stream_response(rx, plan, meta, loaded.tokenizer.clone()).into_response())
    } else {
        collect_response(rx, &plan, &meta, &loaded.tokenizer).await.map(|v| Json(v).into_response())
    }
}

pub(crate) fn parse_plan(f: &Fields, loaded: &LoadedModel, dialect: Dialect) -> Result<Plan, ApiError> {
    f.get::<String>("model")?;
    f.get::<String>("user")?;
    let tok = &loaded.tokenizer;
    let prompts = match dialect {
        Dialect::Completion => parse_prompts(f, tok, loaded.vocab_size)?,
        Dialect::Chat => {
            // As llama-server: a final assistant message is continued, not closed.
            let text = crate::llama_server::render_messages(&parse_messages(f)?, &loaded.chat, true)?;
            vec![tok.encode(&text, tok.add_bos(), true)]
        }
    };
    let param = if dialect == Dialect::Chat { "messages" } else { "prompt" };
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::invalid_param(param, "the prompt is empty"));
        }
        if p.len() >= loaded.ctx {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "the prompt has {} tokens, but the context holds {} (at least one must be left to generate)",
                    p.len(),
                    loaded.ctx
                ),
            )
            .with_code("context_length_exceeded"));
        }
    }

    let n = f.integer_in("n", 1..=MAX_CHOICES as u64)?.unwrap_or(1) as usize;
    if n * prompts.len() > MAX_CHOICES {
        return Err(ApiError::invalid_param("n", format!("at most {MAX_CHOICES} choices (n × prompts) per request")));
    }
    let max_tokens = match f.integer_in("max_completion_tokens", 1..=u64::MAX)? {
        Some(m) => Some(m),
        None => f.integer_in("max_tokens", 1..=u64::MAX)?,
    }
    .map(|m| m.min(usize::MAX as u64) as usize)
    .or((dialect == Dialect::Completion).then_some(DEFAULT_COMPLETION_TOKENS));

    let temperature = f.number_in("temperature", 0.0..=100.0)?.unwrap_or(1.0) as f32;
    let top_p = f.number_in("top_p", 0.0..=1.0)?.unwrap_or(1.0) as f32;
    let top_k = f.integer_in("top_k", 0..=u32::MAX as u64)?.unwrap_or(0) as usize;
    let min_p = f.number_in("min_p", 0.0..=1.0)?.unwrap_or(0.0) as f32;
    let presence_penalty = f.number_in("presence_penalty", -2.0..=2.0)?.unwrap_or(0.0) as f32;
    let frequency_penalty = f.number_in("frequency_penalty", -2.0..=2.0)?.unwrap_or(0.0) as f32;
    let seed =
        match f.raw("seed") {
            None => None,
            Some(v) => Some(v.as_u64().or_else(|| v.as_i64().map(|s| s as u64)).ok_or_else(|| {
                ApiError::invalid_param("seed", "'seed' must be an integer").with_code("invalid_type")
            })?),
        };
    let logit_bias = parse_logit_bias(f, loaded.vocab_size)?;
    let sampling = parse_llama_sampling(
        f,
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            ..SamplingParams::default()
        },
    )
    .and_then(|p| parse_dry(f, p))
    .and_then(|p| parse_grammar(f, p))
    .and_then(validated)?;
    build_tables(loaded, &sampling);

    let stop = f.string_or_list("stop")?;
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid_param("stop", format!("at most {MAX_STOPS} stop strings")));
    }
    let stream = f.get::<bool>("stream")?.unwrap_or(false);
    let include_usage = match f.raw("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid_param("stream_options", "'include_usage' must be a boolean")
                    .with_code("invalid_type"))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid_param("stream_options", "'stream_options' must be an object")
                .with_code("invalid_type"))
        }
    };
    let logprobs = match dialect {
        Dialect::Completion => f.integer_in("logprobs", 0..=MAX_TOP_LOGPROBS)?.map(|k| k as usize),
        Dialect::Chat => {
            let on = f.get::<bool>("logprobs")?.unwrap_or(false);
            let top = f.integer_in("top_logprobs", 0..=MAX_TOP_LOGPROBS)?;
            if top.is_some() && !on {
                return Err(ApiError::invalid_param("top_logprobs", "'top_logprobs' needs 'logprobs': true"));
            }
            on.then_some(top.unwrap_or(0) as usize)
        }
    };
    reject_unsupported(f, dialect)?;
    let shift = ShiftRequest::parse(f)?;
    let lora = crate::llama_server::parse_lora(f, loaded)?;
    Ok(Plan { dialect, prompts, n, max_tokens, sampling, stop, stream, include_usage, logprobs, shift, lora })
}

/// Builds what a request's sampling needs from the vocabulary (grammar texts, DRY breakers) on the parsing
/// thread, so that admitting the request does not stall the engine's running streams.
pub(crate) fn build_tables(loaded: &LoadedModel, sampling: &SamplingParams) {
    if sampling.grammar.is_some() {
        loaded.tokenizer.grammar_vocab();
    }
    if sampling.dry_active() {
        loaded.dry_tables.get(&loaded.tokenizer, &sampling.dry_sequence_breakers);
    }
}

/// Fields that would change the result if ignored are refused rather than silently dropped.
fn reject_unsupported(f: &Fields, dialect: Dialect) -> Result<(), ApiError> {
    let unsupported = |name: &str, why: &str| Err(ApiError::invalid_param(name, format!("'{name}' {why}")));
    if f.get::<bool>("echo")?.unwrap_or(false) {
        return unsupported("echo", "is not supported");
    }
    if f.integer_in("best_of", 0..=u64::MAX)?.is_some_and(|b| b > 1) {
        return unsupported("best_of", "greater than 1 is not supported");
    }
    if f.get::<String>("suffix")?.is_some_and(|s| !s.is_empty()) {
        return unsupported("suffix", "is not supported");
    }
    if dialect == Dialect::Chat
        && (f.raw("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) || f.raw("functions").is_some())
    {
        return unsupported("tools", "(function calling) is not supported");
    }
    Ok(())
}

/// Numbers llama-server's fields may take: finite, and no larger than any setting means.
pub(crate) const FIELD_LIMIT: f64 = 1e9;

/// llama-server's sampling fields beyond OpenAI's, under its names (`repeat_penalty`, `repeat_last_n`,
/// `typical_p`, `top_n_sigma`, `xtc_probability`, `xtc_threshold`, `mirostat`, `mirostat_tau`,
/// `mirostat_eta`, `min_keep`, `dynatemp_range`, `dynatemp_exponent`, `samplers`), so a body written for
/// llama-server samples the same way here. Values are checked as the CLI checks its flags.
pub(crate) fn parse_llama_sampling(f: &Fields, mut p: SamplingParams) -> Result<SamplingParams, ApiError> {
    let number = |name: &str| -> Result<Option<f32>, ApiError> {
        Ok(f.number_in(name, -FIELD_LIMIT..=FIELD_LIMIT)?.map(|v| v as f32))
    };
    let bad = |name: &str, m: String| ApiError::invalid_param(name, m).with_code("invalid_value");
    if let Some(v) = number("repeat_penalty")? {
        p.repeat_penalty = v;
    }
    if let Some(v) = f.raw("repeat_last_n") {
        p.penalty_last_n = match v.as_i64() {
            Some(-1) => usize::MAX,
            Some(n) if n >= 0 => n as usize,
            _ => {
                return Err(bad(
                    "repeat_last_n",
                    format!("'repeat_last_n' must be -1 (the whole context) or more, got {v}"),
                ))
            }
        };
    }
    for (name, field) in [
        ("typical_p", &mut p.typical_p),
        ("top_n_sigma", &mut p.top_n_sigma),
        ("xtc_probability", &mut p.xtc_probability),
        ("xtc_threshold", &mut p.xtc_threshold),
        ("mirostat_tau", &mut p.mirostat_tau),
        ("mirostat_eta", &mut p.mirostat_eta),
        ("dynatemp_range", &mut p.dynatemp_range),
        ("dynatemp_exponent", &mut p.dynatemp_exponent),
    ] {
        if let Some(v) = number(name)? {
            *field = v;
        }
    }
    if let Some(m) = f.integer_in("mirostat", 0..=2)? {
        p.mirostat = Mirostat::try_from(m as u8).map_err(|e| bad("mirostat", e.to_string()))?;
    }
    if let Some(k) = f.integer_in("min_keep", 0..=u32::MAX as u64)? {
        p.min_keep = k as usize;
    }
    match f.raw("samplers") {
        None | Some(Value::Null) => {}
        Some(Value::String(letters)) => {
            p.samplers =
                SamplerStage::parse_letters(letters).map_err(|e| bad("samplers", format!("'samplers': {e}")))?;
        }
        Some(Value::Array(_)) => {
            let names = f.get::<Vec<String>>("samplers")?.unwrap_or_default();
            p.samplers =
                SamplerStage::parse_names(&names.join(";")).map_err(|e| bad("samplers", format!("'samplers': {e}")))?;
        }
        Some(_) => {
            return Err(bad("samplers", "'samplers' must be a list of sampler names or a string of letters".into()))
        }
    }
    Ok(p)
}

/// Constrained output, as llama-server takes it: `grammar` (GBNF), `json_schema` (a JSON Schema, turned into
/// a grammar as llama.cpp does), or OpenAI's `response_format` (`text`, `json_object` with an optional
/// `schema`, or `json_schema` with `json_schema.schema`). One of them at most.
pub(crate) fn parse_grammar(f: &Fields, mut p: SamplingParams) -> Result<SamplingParams, ApiError> {
    let bad = |name: &str, m: String| ApiError::invalid_param(name, m).with_code("invalid_value");
    let grammar = f.get::<String>("grammar")?.filter(|g| !g.is_empty());
    let mut schema: Option<(&str, Value)> = match f.raw("json_schema") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Object(_) | Value::Bool(_))) => Some(("json_schema", v.clone())),
        Some(_) => return Err(bad("json_schema", "'json_schema' must be a JSON Schema object".into())),
    };
    match f.raw("response_format") {
        None | Some(Value::Null) => {}
        Some(Value::Object(format)) => {
            let kind = format.get("type").and_then(Value::as_str);
            let from_format = match kind {
                Some("text") => None,
                Some("json_object") => {
                    Some(format.get("schema").cloned().unwrap_or_else(|| Value::Object(Default::default())))
                }
                Some("json_schema") => Some(
                    format
                        .get("json_schema")
                        .and_then(|j| j.get("schema"))
                        .cloned()
                        .unwrap_or_else(|| Value::Object(Default::default())),
                ),
                _ => {
                    return Err(bad(
                        "response_format",
                        "'response_format.type' must be 'text', 'json_object' or 'json_schema'".into(),
                    ))
                }
            };
            if let Some(s) = from_format {
                if schema.is_some() {
                    return Err(bad("response_format", "give 'response_format' or 'json_schema', not both".into()));
                }
                schema = Some(("response_format", s));
            }
        }
        Some(_) => return Err(bad("response_format", "'response_format' must be an object".into())),
    }
    p.grammar = match (grammar, schema) {
        (Some(_), Some((name, _))) => {
            return Err(bad(name, format!("give '{name}' or 'grammar', not both")));
        }
        (Some(g), None) => Some(g),
        (None, Some((name, s))) => {
            // An empty schema means any object, as in llama-server.
            let s = if s.as_object().is_some_and(|o| o.is_empty()) { serde_json::json!({"type": "object"}) } else { s };
            Some(schema_grammar(&s).map_err(|e| bad(name, format!("'{name}': {e}")))?)
        }
        (None, None) => None,
    };
    Ok(p)
}

/// The grammar of a JSON schema, logging what it could not express (a `pattern` it lets any string through
/// for), as llama-server does.
pub(crate) fn schema_grammar(schema: &Value) -> Result<String, gemma_core::grammar::JsonSchemaError> {
    let converted = gemma_core::grammar::convert_json_schema(schema)?;
    for warning in &converted.warnings {
        tracing::warn!("json schema: {warning}");
    }
    Ok(converted.grammar)
}

/// The whole sampling setting, checked once every field is in, as the CLI checks its flags.
pub(crate) fn validated(p: SamplingParams) -> Result<SamplingParams, ApiError> {
    p.validate().map_err(|e| {
        let name = match &e {
            SamplingError::BadValue { name, .. } => *name,
            SamplingError::Grammar(_) => "grammar",
            _ => "samplers",
        };
        ApiError::invalid_param(name, format!("'{name}': {e}")).with_code("invalid_value")
    })?;
    Ok(p)
}

/// llama-server's DRY fields: `dry_multiplier`, `dry_base` (below 1 means the default, as there),
/// `dry_allowed_length`, `dry_penalty_last_n` (-1: the whole context) and `dry_sequence_breakers` (a
/// non-empty list of strings).
pub(crate) fn parse_dry(f: &Fields, mut p: SamplingParams) -> Result<SamplingParams, ApiError> {
    if let Some(m) = f.number_in("dry_multiplier", -FIELD_LIMIT..=FIELD_LIMIT)? {
        p.dry_multiplier = m as f32;
    }
    if let Some(b) = f.number_in("dry_base", -FIELD_LIMIT..=FIELD_LIMIT)? {
        if b >= 1.0 {
            p.dry_base = b as f32;
        }
    }
    if let Some(n) = f.integer_in("dry_allowed_length", 0..=i32::MAX as u64)? {
        p.dry_allowed_length = n as u32;
    }
    if let Some(v) = f.raw("dry_penalty_last_n") {
        let n = v.as_i64().filter(|n| (-1..=i32::MAX as i64).contains(n)).ok_or_else(|| {
            ApiError::invalid_param(
                "dry_penalty_last_n",
                format!("'dry_penalty_last_n' must be an integer from -1 (the whole context) to {}, got {v}", i32::MAX),
            )
            .with_code("invalid_value")
        })?;
        p.dry_penalty_last_n = n as i32;
    }
    if f.raw("dry_sequence_breakers").is_some() {
        let bad = |m: &str| ApiError::invalid_param("dry_sequence_breakers", m).with_code("invalid_value");
        let breakers = f
            .get::<Vec<String>>("dry_sequence_breakers")?
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("'dry_sequence_breakers' must be a non-empty array of strings"))?;
        if breakers.len() > MAX_DRY_BREAKERS {
            return Err(bad(&format!("at most {MAX_DRY_BREAKERS} DRY sequence breakers")));
        }
        p.dry_sequence_breakers = breakers;
    }
    Ok(p)
}

/// `logit_bias`: an object from token id (as a string) to a bias in [-100, 100].
pub(crate) fn parse_logit_bias(f: &Fields, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = f.raw("logit_bias") else { return Ok(Vec::new()) };
    let bad = |m: String| ApiError::invalid_param("logit_bias", m);
    let map = v.as_object().ok_or_else(|| bad("'logit_bias' must be an object of token id → bias".into()))?;
    map.iter()
        .map(|(k, b)| {
            let id: u32 = k.parse().map_err(|_| bad(format!("'{k}' is not a token id")))?;
            if id as usize >= vocab {
                return Err(bad(format!("token id {id} is outside the vocabulary of {vocab}")));
            }
            let b = b.as_f64().filter(|b| (-100.0..=100.0).contains(b));
            let b = b.ok_or_else(|| bad(format!("the bias of {id} must be a number in [-100, 100]")))?;
            Ok((id, b as f32))
        })
        .collect()
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists of token ids.
pub(crate) fn parse_prompts(f: &Fields, tok: &Tokenizer, vocab: usize) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        )
        .with_code("invalid_type")
    };
    let encode = |s: &str| tok.encode(s, tok.add_bos(), true);
    let ids = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
        items
            .iter()
            .map(|v| {
                let id = v.as_u64().ok_or_else(bad)?;
                if id as usize >= vocab || id > u32::MAX as u64 {
                    return Err(ApiError::invalid_param("prompt", format!("token id {id} is outside the vocabulary")));
                }
                Ok(id as u32)
            })
            .collect()
    };
    match f.raw("prompt") {
        None => Err(ApiError::invalid_param("prompt", "'prompt' is required").with_code("missing_required_parameter")),
        Some(Value::String(s)) => Ok(vec![encode(s)]),
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::invalid_param("prompt", "'prompt' is empty")),
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => items.iter().map(|v| v.as_str().map(encode).ok_or_else(bad)).collect(),
            Value::Number(_) => Ok(vec![ids(items)?]),
            Value::Array(_) => items.iter().map(|v| v.as_array().ok_or_else(bad).and_then(|a| ids(a))).collect(),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

/// `messages`: objects with a `role` and a `content` that is a string or a list of text parts.
pub(crate) fn parse_messages(f: &Fields) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: &str| ApiError::invalid_param("messages", m.to_string()).with_code("invalid_type");
    let items = match f.raw("messages") {
        None => {
            return Err(
                ApiError::invalid_param("messages", "'messages' is required").with_code("missing_required_parameter")
            )
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(ApiError::invalid_param("messages", "'messages' is empty")),
        Some(_) => return Err(bad("'messages' must be a list of messages")),
    };
    items
        .iter()
        .map(|m| {
            let role =
                m.get("role").and_then(Value::as_str).ok_or_else(|| bad("each message needs a string 'role'"))?;
            let role = match role {
                "developer" => "system",
                "system" | "user" | "assistant" | "tool" => role,
                other => return Err(bad(&format!("unknown role '{other}'"))),
            };
            match m.get("content") {
                None | Some(Value::Null) => Ok(ChatMessage::new(role, "")),
                Some(Value::String(s)) => Ok(ChatMessage::new(role, s.as_str())),
                // Text parts stay parts: llama-server hands them to a template that reads them as a list.
                Some(Value::Array(parts)) => {
                    let texts: Result<Vec<String>, ApiError> = parts
                        .iter()
                        .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => Ok(t.to_string()),
                            _ => Err(bad("only text content parts are supported")),
                        })
                        .collect();
                    Ok(ChatMessage::with_parts(role, texts?))
                }
                Some(_) => Err(bad("'content' must be a string or a list of text parts")),
            }
        })
        .collect()
}

/// Queues one request per prompt, each with the plan's `n` choices (they share one prefill). When the queue
/// is full, what was queued is cancelled (the receiver is dropped) and the client is told to retry.
pub(crate) fn submit(
    state: &AppState,
    plan: &Plan,
    loaded: &LoadedModel,
    received: Instant,
) -> Result<UnboundedReceiver<(usize, Event)>, ApiError> {
    let (tx, rx) = unbounded_channel();
    let (server_on, server_keep) = state.context_shift();
    for (p, prompt) in plan.prompts.iter().enumerate() {
        let context_shift =
            plan.shift.resolve(server_on, server_keep, prompt.len(), loaded.tokenizer.add_bos(), loaded.ctx);
        let (choice, max_tokens, sampling) =
            engine_settings(plan, p, prompt.len(), loaded.ctx, context_shift.is_some());
        let req = GenerationRequest {
            prompt_ids: prompt.clone(),
            max_tokens,
            sampling,
            stop: plan.stop.clone(),
            top_logprobs: plan.logprobs,
            choice,
            n: plan.n,
            session: None,
            lora: plan.lora.clone().unwrap_or_else(|| loaded.lora_scales()),
            events: tx.clone(),
            submitted: received,
            context_shift,
        };
        state.engine().submit(req).map_err(submit_error)?;
    }
    Ok(rx)
}

/// What the engine gets for prompt `p` (of `prompt_len` tokens) of a plan: its first choice's number, the
/// most tokens it may generate (what the context leaves, at most, unless it is shifted: then what was asked,
/// or no limit, as in llama-server) and its sampling settings.
pub(crate) fn engine_settings(
    plan: &Plan,
    p: usize,
    prompt_len: usize,
    ctx: usize,
    shifted: bool,
) -> (usize, usize, SamplingParams) {
    let room = if shifted { usize::MAX } else { ctx.saturating_sub(prompt_len) };
    let choice = p * plan.n;
    let mut sampling = plan.sampling.clone();
    // Each choice draws differently, but reproducibly for a given seed (the engine adds the choice's
    // place within the prompt's `n`).
    sampling.seed = seed_for_choice(sampling.seed, choice);
    (choice, plan.max_tokens.unwrap_or(room).min(room), sampling)
}

pub(crate) fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull => ApiError::unavailable("the server is busy: the request queue is full", 1),
        SubmitError::Stopped => ApiError::unavailable("the server is shutting down", 5),
        e @ (SubmitError::EmbeddingModel(_) | SubmitError::NotEmbeddingModel(_)) => {
            ApiError::invalid(e.to_string()).with_code("model_not_supported")
        }
    }
}

pub(crate) struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
    object: &'static str,
    chunk_object: &'static str,
}

impl ResponseMeta {
    fn new(plan: &Plan, loaded: &LoadedModel) -> ResponseMeta {
        let (prefix, object, chunk_object) = match plan.dialect {
            Dialect::Completion => ("cmpl", "text_completion", "text_completion"),
            Dialect::Chat => ("chatcmpl", "chat.completion", "chat.completion.chunk"),
        };
        ResponseMeta {
            id: format!("{prefix}-{}", request_id()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: loaded.id.clone(),
            object,
            chunk_object,
        }
    }
}

/// A unique, unguessable-enough id: time and a counter, hashed.
pub fn request_id() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = Sha256::digest(format!("{nanos}:{n}:{}", std::process::id()).as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
pub(crate) struct ChoiceResult {
    pub(crate) text: String,
    pub(crate) tokens: Vec<(u32, TokenLogprobs)>,
    pub(crate) finish: Option<Finish>,
}

async fn collect_response(
    rx: UnboundedReceiver<(usize, Event)>,
    plan: &Plan,
    meta: &ResponseMeta,
    tok: &Tokenizer,
) -> Result<Value, ApiError> {
    let results = collect_choices(rx, plan.prompts.len() * plan.n).await?;
    let choices: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let finish = r.finish.map(|f| f.reason.as_str());
            let logprobs = plan.logprobs.map(|_| logprobs_json(plan.dialect, tok, &r.tokens));
            match plan.dialect {
                Dialect::Completion => {
                    json!({"index": i, "text": r.text, "logprobs": logprobs, "finish_reason": finish})
                }
                Dialect::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
            }
        })
        .collect();
    let finishes: Vec<Finish> = results.iter().filter_map(|r| r.finish).collect();
    Ok(json!({
        "id": meta.id,
        "object": meta.object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage_json(&finishes, plan.n),
    }))
}

/// Waits for every choice to finish and gathers its text, tokens and finish.
pub(crate) async fn collect_choices(
    mut rx: UnboundedReceiver<(usize, Event)>,
    total: usize,
) -> Result<Vec<ChoiceResult>, ApiError> {
    let mut results: Vec<ChoiceResult> = (0..total).map(|_| ChoiceResult::default()).collect();
    let mut done = 0;
    while done < total {
        let Some((i, event)) = rx.recv().await else {
            return Err(ApiError::internal("the inference engine stopped"));
        };
        let Some(r) = results.get_mut(i) else { continue };
        match event {
            Event::Chunk(c) => {
                r.text.push_str(&c.text);
                if let (Some(id), Some(lp)) = (c.token, c.logprob) {
                    r.tokens.push((id, lp));
                }
            }
            Event::Done(f) => {
                r.finish = Some(f);
                done += 1;
            }
            Event::Error(m) => return Err(ApiError::internal(m)),
            Event::Rejected(m) => return Err(ApiError::invalid(m)),
        }
    }
    Ok(results)
}

/// Usage over all choices: each prompt counted once, every generated token counted.
pub(crate) fn usage_json(finishes: &[Finish], n: usize) -> Value {
    let prompt: usize = finishes.iter().step_by(n.max(1)).map(|f| f.prompt_tokens).sum();
    let cached: usize = finishes.iter().step_by(n.max(1)).map(|f| f.cached_tokens).sum();
    let completion: usize = finishes.iter().map(|f| f.completion_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

pub(crate) fn piece_text(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_piece_bytes(id, true).unwrap_or_default()).into_owned()
}

/// Log-probabilities in the dialect's shape: chat's `content` list, or the legacy completion columns.
fn logprobs_json(dialect: Dialect, tok: &Tokenizer, tokens: &[(u32, TokenLogprobs)]) -> Value {
    match dialect {
        Dialect::Chat => {
            let entry = |id: u32, lp: f32| {
                let text = piece_text(tok, id);
                json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
            };
            let content: Vec<Value> = tokens
                .iter()
                .map(|(id, lp)| {
                    let mut e = entry(*id, lp.chosen.logprob);
                    e["top_logprobs"] = lp.top.iter().map(|t| entry(t.id, t.logprob)).collect();
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Dialect::Completion => {
            let mut offset = 0;
            let mut text_offset = Vec::new();
            let mut pieces = Vec::new();
            for (id, _) in tokens {
                let p = piece_text(tok, *id);
                text_offset.push(offset);
                offset += p.len();
                pieces.push(p);
            }
            let top: Vec<Value> = tokens
                .iter()
                .map(|(_, lp)| {
                    let m: serde_json::Map<String, Value> =
                        lp.top.iter().map(|t| (piece_text(tok, t.id), json!(t.logprob))).collect();
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": pieces,
                "token_logprobs": tokens.iter().map(|(_, lp)| lp.chosen.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": text_offset,
            })
        }
    }
}

/// The SSE stream: chunks as the engine sends them, a final chunk per choice with its `finish_reason`, the
/// usage chunk when asked for, and `data: [DONE]`. Dropping the stream (the client left) drops the
/// receiver, which cancels the sequences.
fn stream_response(
    rx: UnboundedReceiver<(usize, Event)>,
    plan: Plan,
    meta: ResponseMeta,
    tok: Arc<Tokenizer>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let total = plan.prompts.len() * plan.n;
    let state =
        StreamState { rx, plan, meta, tok, total, finishes: vec![None; total], done: 0, started: false, over: false };
    let events = stream::unfold(state, |mut s| async move {
        let batch = s.next_events().await?;
        Some((stream::iter(batch.into_iter().map(Ok)), s))
    })
    .flatten();
    Sse::new(events).keep_alive(KeepAlive::default())
}

struct StreamState {
    rx: UnboundedReceiver<(usize, Event)>,
    plan: Plan,
    meta: ResponseMeta,
    tok: Arc<Tokenizer>,
    total: usize,
    finishes: Vec<Option<Finish>>,
    done: usize,
    started: bool,
    over: bool,
}

impl StreamState {
    fn chunk(&self, choice: Value) -> Value {
        let mut c = json!({
            "id": self.meta.id,
            "object": self.meta.chunk_object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
        });
        if self.plan.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn choice(&self, index: usize, text: Option<&str>, logprobs: Value, finish: Option<&str>) -> Value {
        match self.plan.dialect {
            Dialect::Completion => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish})
            }
            Dialect::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    async fn next_events(&mut self) -> Option<Vec<SseEvent>> {
        if self.over {
            return None;
        }
        let data = |v: Value| SseEvent::default().data(v.to_string());
        if !self.started {
            self.started = true;
            if self.plan.dialect == Dialect::Chat {
                let roles = (0..self.total)
                    .map(|i| {
                        let choice = json!({"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": null, "finish_reason": null});
                        data(self.chunk(choice))
                    })
                    .collect();
                return Some(roles);
            }
        }
        let Some((i, event)) = self.rx.recv().await else {
            self.over = true;
            let e = ApiError::internal("the inference engine stopped");
            return Some(vec![data(e.body()), SseEvent::default().data("[DONE]")]);
        };
        match event {
            Event::Chunk(c) => {
                let logprobs = match (&c.logprob, c.token) {
                    (Some(lp), Some(id)) => logprobs_json(self.plan.dialect, &self.tok, &[(id, lp.clone())]),
                    _ => Value::Null,
                };
                if c.text.is_empty() && logprobs.is_null() {
                    return Some(Vec::new());
                }
                Some(vec![data(self.chunk(self.choice(i, Some(&c.text), logprobs, None)))])
            }
            Event::Done(f) => {
                if let Some(slot) = self.finishes.get_mut(i) {
                    *slot = Some(f);
                }
                self.done += 1;
                let mut out = vec![data(self.chunk(self.choice(i, None, Value::Null, Some(f.reason.as_str()))))];
                if self.done == self.total {
                    self.over = true;
                    if self.plan.include_usage {
                        let finishes: Vec<Finish> = self.finishes.iter().flatten().copied().collect();
                        out.push(data(json!({
                            "id": self.meta.id,
                            "object": self.meta.chunk_object,
                            "created": self.meta.created,
                            "model": self.meta.model,
                            "choices": [],
                            "usage": usage_json(&finishes, self.plan.n),
                        })));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                }
                Some(out)
            }
            Event::Error(m) => {
                self.over = true;
                Some(vec![data(ApiError::internal(m).body()), SseEvent::default().data("[DONE]")])
            }
            Event::Rejected(m) => {
                self.over = true;
                Some(vec![data(ApiError::invalid(m).body()), SseEvent::default().data("[DONE]")])
            }
        }
    }
}
