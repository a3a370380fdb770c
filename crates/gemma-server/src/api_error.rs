//! Errors as HTTP responses in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, or in
//! ollama's, `{"error": "message"}`, on its `/api/...` routes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after_secs: None }
    }

    /// A request that cannot be served as written (400).
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A field with a wrong type or value (400), naming the field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_string()), ..ApiError::invalid(message) }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message).with_code("invalid_api_key")
    }

    pub fn rate_limited(retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate limit reached for this key")
                .with_code("rate_limit_exceeded")
        }
    }

    /// The server cannot take the request now (503); the client may retry after `retry_after_secs`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_busy", message)
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).with_code("not_found")
    }

    /// A part of an API this server does not implement (501).
    pub fn not_implemented(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_IMPLEMENTED, "invalid_request_error", message).with_code("not_implemented")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl ApiError {
    /// The same error (status, `Retry-After`) with ollama's body, `{"error": "message"}`.
    pub fn into_ollama_response(self) -> Response {
        let body = json!({"error": self.message});
        self.respond(body)
    }

    /// The error in the shape the route's clients read: ollama's under `/api/`, Anthropic's under
    /// `/v1/messages`, OpenAI's elsewhere.
    pub fn into_response_for(self, path: &str) -> Response {
        if crate::ollama::is_ollama_path(path) {
            self.into_ollama_response()
        } else if crate::anthropic::is_anthropic_path(path) {
            crate::anthropic::error_response(self)
        } else {
            self.into_response()
        }
    }

    fn respond(self, body: serde_json::Value) -> Response {
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        self.respond(body)
    }
}
