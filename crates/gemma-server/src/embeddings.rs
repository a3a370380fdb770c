//! Embeddings from an embedding model (EmbeddingGemma): OpenAI's `POST /v1/embeddings` (also at `/embeddings`,
//! as llama-server) and Gemini's `:embedContent` / `:batchEmbedContents`. Vectors are L2-normalised, as
//! sentence-transformers, OpenAI and llama-server return them.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use gemma_core::model::embedding::truncate_embedding;
use serde::Serialize;
use serde_json::Value;

use crate::api_error::ApiError;
use crate::engine::{EmbeddingRequest, LoadedModel, SubmitError};
use crate::fields::Fields;
use crate::openai::submit_error;
use crate::server::{off_runtime, read_body, AppState};

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

pub async fn openai_embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

/// Typed rather than `json!`, so that the floats print as f32 (shortest round trip), not widened to f64.
#[derive(Serialize)]
struct OpenAiResponse {
    object: &'static str,
    data: Vec<OpenAiItem>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct OpenAiItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

/// Floats, or their little-endian f32 bytes in base64 (`encoding_format: "base64"`).
#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Floats(Vec<f32>),
    Base64(String),
}

async fn openai(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = embedding_model(&state)?;
    let parsing = loaded.clone();
    let (inputs, dims, base64) = off_runtime(move || parse_openai(&bytes, &parsing)).await?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = compute(&state, inputs, dims).await?;
    let data: Vec<OpenAiItem> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Floats(v)
            };
            OpenAiItem { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(OpenAiResponse {
        object: "list",
        data,
        model: loaded.id.clone(),
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    })
    .into_response())
}

/// An OpenAI embeddings body as read: the inputs' token ids, `dimensions`, base64.
pub(crate) type OpenAiBody = (Vec<Vec<u32>>, Option<usize>, bool);
/// One Gemini input as read: its token ids and `outputDimensionality`.
pub(crate) type GeminiInput = (Vec<u32>, Option<usize>);

/// An OpenAI embeddings body: the inputs' token ids, `dimensions` and whether to answer in base64.
pub(crate) fn parse_openai(bytes: &[u8], parsing: &LoadedModel) -> Result<OpenAiBody, ApiError> {
    let f = Fields::parse(bytes)?;
    let inputs = openai_inputs(&f, parsing)?;
    let dims = dimensions(&f, "dimensions", parsing)?;
    let base64 = match f.get::<String>("encoding_format")?.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("'encoding_format' must be \"float\" or \"base64\", got \"{other}\""),
            )
            .with_code("invalid_value"))
        }
    };
    Ok((inputs, dims, base64))
}

/// `input`: a string, a list of strings, a list of token ids, or a list of lists of token ids.
fn openai_inputs(f: &Fields, m: &LoadedModel) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |why: &str| ApiError::invalid_param("input", why.to_string()).with_code("invalid_value");
    let input = f.raw("input").ok_or_else(|| {
        ApiError::invalid_param("input", "'input' is required").with_code("missing_required_parameter")
    })?;
    let inputs: Vec<Vec<u32>> = match input {
        Value::String(s) => vec![m.tokenizer.encode_input(s, true)],
        Value::Array(items) if items.is_empty() => return Err(bad("'input' must not be an empty list")),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(|s| m.tokenizer.encode_input(s, true)).collect()
        }
        Value::Array(items) if items.iter().all(Value::is_number) => vec![token_ids(items, m)?],
        Value::Array(items) if items.iter().all(Value::is_array) => {
            items.iter().map(|i| token_ids(i.as_array().map_or(&[][..], Vec::as_slice), m)).collect::<Result<_, _>>()?
        }
        _ => return Err(bad("'input' must be a string, a list of strings, or token ids (a list, or a list of lists)")),
    };
    check_inputs(&inputs, m, "input")?;
    Ok(inputs)
}

fn token_ids(items: &[Value], m: &LoadedModel) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| {
            v.as_u64().and_then(|id| u32::try_from(id).ok()).filter(|&id| (id as usize) < m.vocab_size).ok_or_else(
                || {
                    ApiError::invalid_param(
                        "input",
                        format!("token {v} is not an id of the vocabulary of {} tokens", m.vocab_size),
                    )
                    .with_code("invalid_value")
                },
            )
        })
        .collect()
}

fn check_inputs(inputs: &[Vec<u32>], m: &LoadedModel, param: &str) -> Result<(), ApiError> {
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param(
            param,
            format!("{} inputs; at most {MAX_INPUTS} per request", inputs.len()),
        )
        .with_code("invalid_value"));
    }
    for (i, ids) in inputs.iter().enumerate() {
        if ids.is_empty() {
            return Err(ApiError::invalid_param(param, format!("input {i} has no tokens")).with_code("invalid_value"));
        }
        if ids.len() > m.ctx {
            return Err(ApiError::invalid_param(
                param,
                format!("input {i} has {} tokens; this model's maximum context length is {} tokens", ids.len(), m.ctx),
            )
            .with_code("context_length_exceeded"));
        }
    }
    Ok(())
}

/// OpenAI's `dimensions` / Gemini's `outputDimensionality`: 1 up to the model's width.
fn dimensions(f: &Fields, name: &str, m: &LoadedModel) -> Result<Option<usize>, ApiError> {
    let Some(d) = f.get::<u64>(name)? else { return Ok(None) };
    let width = m.embedding_dim.unwrap_or(0);
    if d == 0 || d as usize > width {
        return Err(ApiError::invalid_param(name, format!("'{name}' must be between 1 and {width}, got {d}"))
            .with_code("invalid_value"));
    }
    Ok(Some(d as usize))
}

/// The loaded model, if it makes embeddings: checked before the body is parsed, so that a request to the wrong
/// kind of model hears that first (the engine refuses it too).
fn embedding_model(state: &AppState) -> Result<std::sync::Arc<LoadedModel>, ApiError> {
    let loaded = state.loaded()?;
    match loaded.embedding_dim {
        Some(_) => Ok(loaded),
        None => Err(submit_error(SubmitError::NotEmbeddingModel(loaded.id.clone()))),
    }
}

/// Runs the inputs on the engine and truncates the vectors to `dims`.
pub(crate) async fn compute(
    state: &AppState,
    inputs: Vec<Vec<u32>>,
    dims: Option<usize>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    state.engine().submit_embedding(EmbeddingRequest { inputs, reply }).map_err(submit_error)?;
    let vectors = rx
        .await
        .map_err(|_| ApiError::internal("the inference engine stopped"))?
        .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))?;
    Ok(match dims {
        Some(d) => vectors.iter().map(|v| truncate_embedding(v, d)).collect(),
        None => vectors,
    })
}

/// Gemini's `taskType` as EmbeddingGemma's task prompt (its model card's prompts; `title` goes into the
/// document prompt).
fn task_prompt(task: Option<&str>, title: Option<&str>) -> Result<String, String> {
    let query = |t: &str| format!("task: {t} | query: ");
    Ok(match task.unwrap_or("TASK_TYPE_UNSPECIFIED") {
        "TASK_TYPE_UNSPECIFIED" => String::new(),
        "RETRIEVAL_QUERY" => query("search result"),
        "RETRIEVAL_DOCUMENT" => format!("title: {} | text: ", title.filter(|t| !t.is_empty()).unwrap_or("none")),
        "SEMANTIC_SIMILARITY" => query("sentence similarity"),
        "CLASSIFICATION" => query("classification"),
        "CLUSTERING" => query("clustering"),
        "QUESTION_ANSWERING" => query("question answering"),
        "FACT_VERIFICATION" => query("fact checking"),
        "CODE_RETRIEVAL_QUERY" => query("code retrieval"),
        other => return Err(format!("unknown taskType '{other}'")),
    })
}

/// One Gemini `EmbedContentRequest`: the text of its `content.parts`, with the task prompt in front.
fn gemini_input(f: &Fields, m: &LoadedModel) -> Result<(Vec<u32>, Option<usize>), ApiError> {
    let content = f.object("content")?.ok_or_else(|| {
        ApiError::invalid_param("content", "'content' is required").with_code("missing_required_parameter")
    })?;
    let parts = content.get::<Vec<Value>>("parts")?.unwrap_or_default();
    if parts.is_empty() {
        return Err(ApiError::invalid_param("content.parts", "'content.parts' must hold at least one text part")
            .with_code("invalid_value"));
    }
    let mut text = String::new();
    for p in &parts {
        match p.get("text").and_then(Value::as_str) {
            Some(t) => text.push_str(t),
            None => {
                return Err(ApiError::invalid_param("content.parts", "only text parts can be embedded")
                    .with_code("invalid_value"))
            }
        }
    }
    let task = f.get::<String>("taskType")?;
    let title = f.get::<String>("title")?;
    let prompt = task_prompt(task.as_deref(), title.as_deref())
        .map_err(|e| ApiError::invalid_param("taskType", e).with_code("invalid_value"))?;
    let ids = m.tokenizer.encode_input(&format!("{prompt}{text}"), true);
    Ok((ids, dimensions(f, "outputDimensionality", m)?))
}

/// A Gemini `:embedContent` body (`batch` false) or `:batchEmbedContents` body: each input's token ids and
/// `outputDimensionality`.
pub(crate) fn parse_gemini(bytes: &[u8], parsing: &LoadedModel, batch: bool) -> Result<Vec<GeminiInput>, ApiError> {
    let f = Fields::parse(bytes)?;
    let requests: Vec<GeminiInput> = if batch {
        let items = f.get::<Vec<Value>>("requests")?.unwrap_or_default();
        if items.is_empty() {
            return Err(
                ApiError::invalid_param("requests", "'requests' must be a non-empty list").with_code("invalid_value")
            );
        }
        items
            .iter()
            .map(|item| {
                let item = Fields::from_value(item.clone()).ok_or_else(|| {
                    ApiError::invalid_param("requests", "each request must be an object").with_code("invalid_type")
                })?;
                gemini_input(&item, parsing)
            })
            .collect::<Result<_, _>>()?
    } else {
        vec![gemini_input(&f, parsing)?]
    };
    let ids: Vec<Vec<u32>> = requests.iter().map(|(ids, _)| ids.clone()).collect();
    check_inputs(&ids, parsing, if batch { "requests" } else { "content" })?;
    Ok(requests)
}

/// `:embedContent` (`batch` false) and `:batchEmbedContents`.
pub(crate) async fn gemini(state: AppState, headers: HeaderMap, body: Body, batch: bool) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = embedding_model(&state)?;
    let parsing = loaded.clone();
    let requests = off_runtime(move || parse_gemini(&bytes, &parsing, batch)).await?;
    let dims: Vec<Option<usize>> = requests.iter().map(|(_, d)| *d).collect();
    let vectors = compute(&state, requests.into_iter().map(|(ids, _)| ids).collect(), None).await?;
    let values: Vec<GeminiEmbedding> = vectors
        .iter()
        .zip(dims)
        .map(|(v, d)| GeminiEmbedding { values: d.map_or_else(|| v.clone(), |d| truncate_embedding(v, d)) })
        .collect();
    if batch {
        return Ok(Json(GeminiBatch { embeddings: values }).into_response());
    }
    let embedding = values.into_iter().next().ok_or_else(|| ApiError::internal("no embedding computed"))?;
    Ok(Json(GeminiSingle { embedding }).into_response())
}

#[derive(Serialize)]
struct GeminiEmbedding {
    values: Vec<f32>,
}

#[derive(Serialize)]
struct GeminiSingle {
    embedding: GeminiEmbedding,
}

#[derive(Serialize)]
struct GeminiBatch {
    embeddings: Vec<GeminiEmbedding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_types_become_embeddinggemma_prompts() {
        assert_eq!(task_prompt(None, None).unwrap(), "");
        assert_eq!(task_prompt(Some("RETRIEVAL_QUERY"), None).unwrap(), "task: search result | query: ");
        assert_eq!(task_prompt(Some("RETRIEVAL_DOCUMENT"), None).unwrap(), "title: none | text: ");
        assert_eq!(task_prompt(Some("RETRIEVAL_DOCUMENT"), Some("Paris")).unwrap(), "title: Paris | text: ");
        assert_eq!(task_prompt(Some("SEMANTIC_SIMILARITY"), None).unwrap(), "task: sentence similarity | query: ");
        assert!(task_prompt(Some("poetry"), None).unwrap_err().contains("unknown taskType 'poetry'"));
    }
}
