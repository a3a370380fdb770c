//! The Gemini dialect: `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (SSE), with
//! `contents` / `parts` / `role`, `systemInstruction` and `generationConfig`, on the same engine
//! (`:embedContent` and `:batchEmbedContents` are in [`crate::embeddings`]).

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use gemma_core::chat::ChatMessage;
use gemma_core::SamplingParams;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::engine::{Event, Finish, FinishReason, LoadedModel};
use crate::fields::Fields;
use crate::openai::{collect_choices, schema_grammar, submit, Dialect, Plan, MAX_CHOICES};
use crate::server::{off_runtime, read_body, AppState};

pub async fn generate_content(
    State(state): State<AppState>,
    Path(model_action): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, model_action, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(state: AppState, model_action: String, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received = Instant::now();
    let stream = match model_action.rsplit_once(':') {
        Some((_, "generateContent")) => false,
        Some((_, "streamGenerateContent")) => true,
        Some((_, "embedContent")) => return crate::embeddings::gemini(state, headers, body, false).await,
        Some((_, "batchEmbedContents")) => return crate::embeddings::gemini(state, headers, body, true).await,
        _ => return Err(ApiError::not_found(format!("unknown model action '{model_action}'"))),
    };
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let parsing = loaded.clone();
    let plan = off_runtime(move || parse_plan(&Fields::parse(&bytes)?, &parsing, stream)).await?;
    let rx = submit(&state, &plan, &loaded, received)?;
    let model = loaded.id.clone();
    if !stream {
        let results = collect_choices(rx, plan.n).await?;
        let candidates: Vec<Value> = results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({"content": {"role": "model", "parts": [{"text": r.text}]},
                       "finishReason": finish_reason(r.finish), "index": i})
            })
            .collect();
        let finishes: Vec<Finish> = results.iter().filter_map(|r| r.finish).collect();
        return Ok(Json(json!({"candidates": candidates, "usageMetadata": usage(&finishes), "modelVersion": model}))
            .into_response());
    }
    let total = plan.n;
    let state = (rx, Vec::<Finish>::new(), false);
    let events = stream::unfold(state, move |(mut rx, mut finishes, over)| {
        let model = model.clone();
        async move {
            if over {
                return None;
            }
            let data = |v: Value| SseEvent::default().data(v.to_string());
            let (out, over) = match rx.recv().await {
                None => (vec![data(ApiError::internal("the inference engine stopped").body())], true),
                Some((i, Event::Chunk(c))) if !c.text.is_empty() => {
                    let v = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": c.text}]}, "index": i}],
                                   "modelVersion": model});
                    (vec![data(v)], false)
                }
                Some((_, Event::Chunk(_))) => (Vec::new(), false),
                Some((i, Event::Done(f))) => {
                    finishes.push(f);
                    let last = finishes.len() == total;
                    let mut v = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                                                       "finishReason": finish_reason(Some(f)), "index": i}],
                                       "modelVersion": model});
                    if last {
                        v["usageMetadata"] = usage(&finishes);
                    }
                    (vec![data(v)], last)
                }
                Some((_, Event::Error(m))) => (vec![data(ApiError::internal(m).body())], true),
                Some((_, Event::Rejected(m))) => (vec![data(ApiError::invalid(m).body())], true),
            };
            Some((stream::iter(out.into_iter().map(Ok::<_, Infallible>)), (rx, finishes, over)))
        }
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

fn finish_reason(f: Option<Finish>) -> &'static str {
    match f.map(|f| f.reason) {
        Some(FinishReason::Stop) => "STOP",
        Some(FinishReason::Length) => "MAX_TOKENS",
        None => "OTHER",
    }
}

fn usage(finishes: &[Finish]) -> Value {
    let prompt = finishes.first().map_or(0, |f| f.prompt_tokens);
    let generated: usize = finishes.iter().map(|f| f.completion_tokens).sum();
    let cached = finishes.first().map_or(0, |f| f.cached_tokens);
    json!({"promptTokenCount": prompt, "candidatesTokenCount": generated, "totalTokenCount": prompt + generated,
           "cachedContentTokenCount": cached})
}

/// The text of a `Content`'s `parts` (text parts only).
fn parts_text(content: &Value, param: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid_param(param, "each content needs 'parts', a list of {\"text\": ...}")
            .with_code("invalid_type")
    };
    let parts = content.get("parts").and_then(Value::as_array).ok_or_else(bad)?;
    let texts: Result<Vec<&str>, ApiError> =
        parts.iter().map(|p| p.get("text").and_then(Value::as_str).ok_or_else(bad)).collect();
    Ok(texts?.concat())
}

/// Gemini's structured output: `responseMimeType` `application/json` constrains the text to JSON, to
/// `responseJsonSchema` (a JSON Schema) or `responseSchema` (Gemini's OpenAPI subset: upper-case types,
/// `nullable`, `propertyOrdering`) when given. The grammar comes from the same converter as llama-server's
/// `json_schema`.
fn response_grammar(g: &Fields) -> Result<Option<String>, ApiError> {
    let bad = |name: &str, m: String| ApiError::invalid_param(name, m).with_code("invalid_value");
    let mime = g.get::<String>("responseMimeType")?.unwrap_or_else(|| "text/plain".into());
    let schema = match (g.raw("responseJsonSchema"), g.raw("responseSchema")) {
        (Some(_), Some(_)) => {
            return Err(bad("responseSchema", "give 'responseSchema' or 'responseJsonSchema', not both".into()))
        }
        (Some(s), None) => Some(("responseJsonSchema", s.clone())),
        (None, Some(s)) => Some(("responseSchema", openapi_to_json_schema(s))),
        (None, None) => None,
    };
    match (mime.as_str(), schema) {
        ("text/plain", None) => Ok(None),
        ("application/json", None) => schema_grammar(&Value::Object(Default::default()))
            .map(Some)
            .map_err(|e| bad("responseMimeType", e.to_string())),
        ("application/json", Some((name, schema))) => {
            schema_grammar(&schema).map(Some).map_err(|e| bad(name, format!("'{name}': {e}")))
        }
        ("text/plain", Some((name, _))) => {
            Err(bad(name, format!("'{name}' needs 'responseMimeType': 'application/json'")))
        }
        (other, _) => Err(bad(
            "responseMimeType",
            format!("'responseMimeType' must be 'text/plain' or 'application/json', got '{other}'"),
        )),
    }
}

/// Gemini's OpenAPI schema as a JSON Schema: types in lower case, `nullable: true` as a type list with
/// `null`, and the properties in `propertyOrdering`'s order (the rest after them).
fn openapi_to_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else { return schema.clone() };
    let mut out = serde_json::Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => {
                out.insert(
                    key.clone(),
                    value.as_str().map_or_else(|| value.clone(), |t| Value::from(t.to_lowercase())),
                );
            }
            "properties" => {
                let Value::Object(props) = value else {
                    out.insert(key.clone(), value.clone());
                    continue;
                };
                let order: Vec<&str> = map
                    .get("propertyOrdering")
                    .and_then(Value::as_array)
                    .map(|o| o.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut ordered = serde_json::Map::new();
                for name in order.iter().copied().chain(props.keys().map(String::as_str)) {
                    if let (Some(p), false) = (props.get(name), ordered.contains_key(name)) {
                        ordered.insert(name.to_owned(), openapi_to_json_schema(p));
                    }
                }
                out.insert(key.clone(), Value::Object(ordered));
            }
            "items" => {
                out.insert(key.clone(), openapi_to_json_schema(value));
            }
            "anyOf" => {
                let list = value.as_array().map(|a| a.iter().map(openapi_to_json_schema).collect());
                out.insert(key.clone(), list.map_or_else(|| value.clone(), Value::Array));
            }
            "nullable" | "propertyOrdering" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if map.get("nullable").and_then(Value::as_bool) == Some(true) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
    }
    Value::Object(out)
}

pub(crate) fn parse_plan(f: &Fields, loaded: &LoadedModel, stream: bool) -> Result<Plan, ApiError> {
    let contents = match f.raw("contents") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(
                ApiError::invalid_param("contents", "'contents' must be a non-empty list").with_code("invalid_type")
            )
        }
    };
    let mut messages = Vec::new();
    if let Some(system) = f.raw("systemInstruction").or(f.raw("system_instruction")) {
        messages.push(ChatMessage::system(parts_text(system, "systemInstruction")?));
    }
    for c in contents {
        let role = match c.get("role").and_then(Value::as_str) {
            None | Some("user") => "user",
            Some("model") => "assistant",
            Some(other) => return Err(ApiError::invalid_param("contents", format!("unknown role '{other}'"))),
        };
        messages.push(ChatMessage::new(role, parts_text(c, "contents")?));
    }
    let prompt = loaded.chat.encode(&loaded.tokenizer, &messages, true).map_err(|e| {
        ApiError::invalid_param("contents", format!("the chat template cannot render these contents: {e}"))
    })?;
    if prompt.len() >= loaded.ctx {
        return Err(ApiError::invalid_param(
            "contents",
            format!("the prompt has {} tokens, but the context holds {}", prompt.len(), loaded.ctx),
        )
        .with_code("context_length_exceeded"));
    }
    let config = f.object("generationConfig")?.or(f.object("generation_config")?);
    let empty = Fields::parse(b"{}")?;
    let g = config.as_ref().unwrap_or(&empty);
    let n = g.integer_in("candidateCount", 1..=MAX_CHOICES as u64)?.unwrap_or(1) as usize;
    let max_tokens = g.integer_in("maxOutputTokens", 1..=u64::MAX)?.map(|m| m.min(usize::MAX as u64) as usize);
    let seed =
        match g.raw("seed") {
            None => None,
            Some(v) => Some(v.as_u64().or_else(|| v.as_i64().map(|s| s as u64)).ok_or_else(|| {
                ApiError::invalid_param("seed", "'seed' must be an integer").with_code("invalid_type")
            })?),
        };
    let sampling = SamplingParams {
        temperature: g.number_in("temperature", 0.0..=100.0)?.unwrap_or(1.0) as f32,
        top_p: g.number_in("topP", 0.0..=1.0)?.unwrap_or(1.0) as f32,
        top_k: g.integer_in("topK", 0..=u32::MAX as u64)?.unwrap_or(0) as usize,
        presence_penalty: g.number_in("presencePenalty", -2.0..=2.0)?.unwrap_or(0.0) as f32,
        frequency_penalty: g.number_in("frequencyPenalty", -2.0..=2.0)?.unwrap_or(0.0) as f32,
        seed,
        grammar: response_grammar(g)?,
        ..SamplingParams::default()
    };
    if sampling.grammar.is_some() {
        sampling.validate().map_err(|e| ApiError::invalid_param("responseSchema", e.to_string()))?;
        // Built once, here rather than on the engine thread.
        loaded.tokenizer.grammar_vocab();
    }
    let stop = g.string_or_list("stopSequences")?;
    if stop.len() > crate::openai::MAX_STOPS {
        let most = crate::openai::MAX_STOPS;
        return Err(ApiError::invalid_param("stopSequences", format!("at most {most} stop sequences")));
    }
    Ok(Plan {
        dialect: Dialect::Chat,
        prompts: vec![prompt],
        n,
        max_tokens,
        sampling,
        stop,
        stream,
        include_usage: false,
        logprobs: None,
        shift: Default::default(),
        lora: None,
    })
}
