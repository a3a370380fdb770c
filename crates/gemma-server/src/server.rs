//! The HTTP side: shared state, the router, the middleware (request metrics, in-flight limit, keys and rate
//! limit) and the small endpoints (health, models, metrics).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api_error::ApiError;
use crate::auth::{Authenticator, RateLimiter};
use crate::config::ServerConfig;
use crate::engine::{EngineHandle, LoadedModel};
use crate::metrics::Metrics;
use crate::{
    anthropic, embeddings, gemini, generate, llama_native, llama_server, ollama, openai, responses, websocket,
};

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    auth: Authenticator,
    rate_limit: Option<RateLimiter>,
    in_flight: Arc<Semaphore>,
    max_body_bytes: usize,
    llama: llama_server::Options,
    /// `--context-shift` and `--keep`.
    context_shift: (bool, i64),
}

impl AppState {
    pub fn new(config: &ServerConfig, engine: EngineHandle, metrics: Arc<Metrics>) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                engine,
                metrics,
                auth: Authenticator::new(&config.api_keys, config.jwt_secret.as_deref()),
                rate_limit: config.rate_limit_enabled.then(|| RateLimiter::new(config.max_requests_per_minute)),
                in_flight: Arc::new(Semaphore::new(config.max_connections)),
                max_body_bytes: config.max_body_bytes,
                llama: llama_server::Options::new(config),
                context_shift: (config.context_shift, config.n_keep),
            }),
        }
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.inner.engine
    }

    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// Whether requests' contexts are shifted when full (`--context-shift`), and the default `n_keep`.
    pub(crate) fn context_shift(&self) -> (bool, i64) {
        self.inner.context_shift
    }

    pub(crate) fn llama_options(&self) -> &llama_server::Options {
        &self.inner.llama
    }

    /// The loaded model, or a 503 while it is loading (or failed to load).
    pub fn loaded(&self) -> Result<Arc<LoadedModel>, ApiError> {
        self.inner.engine.loaded().ok_or_else(|| ApiError::unavailable("the model is loading", 1))
    }
}

/// Runs `f` (parsing a request: JSON, chat template, tokenizer) on tokio's blocking threads, so a large
/// request body does not hold up an async worker that other connections are waiting on.
pub(crate) async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("request parsing failed: {e}")))?
}

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/completion", post(llama_native::completion))
        .route("/completions", post(llama_native::completion))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings::openai_embeddings))
        .route("/embeddings", post(embeddings::openai_embeddings))
        .route("/tokenize", post(llama_server::tokenize))
        .route("/detokenize", post(llama_server::detokenize))
        .route("/v1beta/models/{model_action}", post(gemini::generate_content))
        .route("/v1/ws", get(websocket::upgrade))
        .route("/generate", post(generate::generate))
        .merge(ollama::protected_routes())
        // The rest of llama-server's routes (llama_server.rs) and its aliases of ours.
        .route("/chat/completions", post(openai::chat_completions))
        .route("/models", get(models))
        .route("/props", get(llama_server::get_props).post(llama_server::post_props))
        .route("/slots", get(llama_server::get_slots))
        .route("/slots/{id_slot}", post(llama_server::post_slots))
        .route("/apply-template", post(llama_server::apply_template))
        .route("/lora-adapters", get(llama_server::get_lora_adapters).post(llama_server::post_lora_adapters))
        .route("/embedding", post(llama_server::embedding))
        .route("/infill", post(llama_server::infill))
        .route("/rerank", post(llama_server::rerank))
        .route("/reranking", post(llama_server::rerank))
        .route("/v1/rerank", post(llama_server::rerank))
        .route("/v1/reranking", post(llama_server::rerank))
        // OpenAI's Responses API (responses.rs).
        .route("/v1/responses", post(responses::create))
        .route("/responses", post(responses::create))
        .route("/v1/responses/input_tokens", post(responses::input_tokens))
        .route("/responses/input_tokens", post(responses::input_tokens))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .merge(ollama::public_routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A request's place among the `max_connections` in flight. A handler that outlives its response (the
/// WebSocket endpoint) takes the permit out and keeps it for the connection's life.
#[derive(Clone)]
pub struct ConnectionPermit(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnectionPermit {
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Counts requests by route pattern and status, and bounds the requests in flight. The permit lives as
/// long as the response body, so a long stream counts until it ends (a WebSocket until it closes).
async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let metrics = state.inner.metrics.clone();
    let Ok(permit) = state.inner.in_flight.clone().try_acquire_owned() else {
        metrics.count_request(&route, 503);
        return ApiError::unavailable("too many requests in flight", 1).into_response_for(req.uri().path());
    };
    let slot = ConnectionPermit(Arc::new(std::sync::Mutex::new(Some(permit))));
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;
    metrics.count_request(&route, response.status().as_u16());
    let permit = slot.take();
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Checks the API key or token and the caller's rate limit. Keys are never logged.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Gemini clients send the key as `x-goog-api-key`, Anthropic's as `x-api-key` (llama-server reads it too).
    let headers = req.headers();
    let bearer = |name: &str| headers.get(name).map(|v| [b"Bearer ".as_slice(), v.as_bytes()].concat());
    let (goog, anthropic) = (bearer("x-goog-api-key"), bearer("x-api-key"));
    let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).or(goog.as_deref()).or(anthropic.as_deref());
    let caller = match state.inner.auth.check(header) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(path = %req.uri().path(), "unauthorised request: {e}");
            return ApiError::unauthorized(e.to_string()).into_response_for(req.uri().path());
        }
    };
    if let Some(limiter) = &state.inner.rate_limit {
        if let Err(wait) = limiter.check(&caller, Instant::now()) {
            return ApiError::rate_limited(wait.as_secs_f64().ceil() as u64).into_response_for(req.uri().path());
        }
    }
    next.run(req).await
}

/// Reads a request body of at most `limit` bytes: a larger declared or actual size is a 413, a body that
/// breaks off a 400.
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

async fn health(State(state): State<AppState>) -> Response {
    if state.inner.engine.loaded().is_some() {
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    }
    let failed = state.inner.engine.state.failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let body = match failed {
        Some(error) => json!({"status": "error", "error": error}),
        None => json!({"status": "loading"}),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.inner.metrics.render()).into_response()
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let m = state.loaded()?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": m.id, "object": "model", "created": m.created, "owned_by": "gemma-rs",
                  "meta": {"n_ctx": m.ctx, "n_vocab": m.vocab_size}}],
    })))
}

async fn not_found(req: Request) -> Response {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
        .into_response_for(req.uri().path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_413_even_without_a_declared_length() {
        let ok = read_body(Body::from(vec![b'x'; 100]), &HeaderMap::new(), 100).await.unwrap();
        assert_eq!(ok.len(), 100);
        let chunks = futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 30])));
        let e = read_body(Body::from_stream(chunks), &HeaderMap::new(), 100).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "101".parse().unwrap());
        let e = read_body(Body::empty(), &declared, 100).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
