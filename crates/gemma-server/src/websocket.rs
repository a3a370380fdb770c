//! `GET /v1/ws`: streaming over a WebSocket. The client sends a request as JSON (a completion with `prompt` or
//! a chat with `messages`, the same fields as the HTTP endpoints); the server answers with one message per
//! piece of text, `{"type": "chunk", "index", "text"}`, then `{"type": "done", "choices": [{"index",
//! "finish_reason"}], "usage"}`. Sending `{"cancel": true}` stops the generation (answered by
//! `{"type": "cancelled"}`); closing the socket stops it too. One request at a time per socket; the socket
//! stays open for the next one. Errors are `{"type": "error", "error": {...}}`.

use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::engine::{Event, Finish};
use crate::fields::Fields;
use crate::openai::{parse_plan, submit, usage_json, Dialect};
use crate::server::{AppState, ConnectionPermit};

pub async fn upgrade(
    State(state): State<AppState>,
    permit: Option<Extension<ConnectionPermit>>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = state.max_body_bytes();
    // The connection counts against `max_connections` until the socket closes, not just its handshake.
    let permit = permit.and_then(|Extension(p)| p.take());
    ws.max_message_size(limit).on_upgrade(move |socket| async move {
        let _held = permit;
        serve_socket(state, socket).await
    })
}

fn error_message(e: &ApiError) -> Message {
    let mut body = e.body();
    body["type"] = json!("error");
    Message::Text(body.to_string().into())
}

/// What the client sent, as text (`None`: the socket is closed or broken).
fn text_of(msg: Option<Result<Message, axum::Error>>) -> Option<Option<String>> {
    match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => None,
        Some(Ok(Message::Text(t))) => Some(Some(t.as_str().to_string())),
        Some(Ok(Message::Binary(b))) => Some(Some(String::from_utf8_lossy(&b).into_owned())),
        Some(Ok(_)) => Some(None),
    }
}

fn is_cancel(text: &str) -> bool {
    serde_json::from_str::<Value>(text).ok().and_then(|v| v.get("cancel").and_then(Value::as_bool)) == Some(true)
}

async fn serve_socket(state: AppState, mut socket: WebSocket) {
    loop {
        let Some(text) = text_of(socket.recv().await) else { return };
        let Some(text) = text else { continue };
        if is_cancel(&text) {
            continue; // nothing is running
        }
        let received = Instant::now();
        let started = (|| {
            let loaded = state.loaded()?;
            let fields = Fields::parse(text.as_bytes())?;
            let dialect = if fields.raw("messages").is_some() { Dialect::Chat } else { Dialect::Completion };
            let plan = parse_plan(&fields, &loaded, dialect)?;
            let rx = submit(&state, &plan, &loaded, received)?;
            Ok::<_, ApiError>((rx, plan.prompts.len() * plan.n, plan.n))
        })();
        let (mut rx, total, n) = match started {
            Ok(s) => s,
            Err(e) => {
                if socket.send(error_message(&e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut finishes: Vec<(usize, Finish)> = Vec::new();
        loop {
            tokio::select! {
                event = rx.recv() => {
                    let (reply, last) = match event {
                        None => (Some(error_message(&ApiError::internal("the inference engine stopped"))), true),
                        Some((i, Event::Chunk(c))) if !c.text.is_empty() => {
                            let v = json!({"type": "chunk", "index": i, "text": c.text});
                            (Some(Message::Text(v.to_string().into())), false)
                        }
                        Some((_, Event::Chunk(_))) => (None, false),
                        Some((i, Event::Done(f))) => {
                            finishes.push((i, f));
                            if finishes.len() == total {
                                finishes.sort_by_key(|(i, _)| *i);
                                let choices: Vec<Value> = finishes
                                    .iter()
                                    .map(|(i, f)| json!({"index": i, "finish_reason": f.reason.as_str()}))
                                    .collect();
                                let all: Vec<Finish> = finishes.iter().map(|(_, f)| *f).collect();
                                let v = json!({"type": "done", "choices": choices, "usage": usage_json(&all, n)});
                                (Some(Message::Text(v.to_string().into())), true)
                            } else {
                                (None, false)
                            }
                        }
                        Some((_, Event::Error(m))) => (Some(error_message(&ApiError::internal(m))), true),
                        Some((_, Event::Rejected(m))) => (Some(error_message(&ApiError::invalid(m))), true),
                    };
                    if let Some(reply) = reply {
                        if socket.send(reply).await.is_err() {
                            return; // dropping `rx` cancels the sequences
                        }
                    }
                    if last {
                        break;
                    }
                }
                msg = socket.recv() => {
                    match text_of(msg) {
                        None => return,
                        Some(Some(t)) if is_cancel(&t) => {
                            drop(rx);
                            if socket.send(Message::Text(json!({"type": "cancelled"}).to_string().into())).await.is_err() {
                                return;
                            }
                            break;
                        }
                        Some(Some(_)) => {
                            let busy = ApiError::invalid("a request is already running on this socket; send {\"cancel\": true} first");
                            if socket.send(error_message(&busy)).await.is_err() {
                                return;
                            }
                        }
                        Some(None) => {}
                    }
                }
            }
        }
    }
}
