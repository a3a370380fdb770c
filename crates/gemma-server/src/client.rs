//! `gemma client`: an interactive terminal client for a running server, in either dialect. Reads one user
//! line at a time, streams the answer as it arrives, and keeps the conversation (so the server's prefix
//! cache serves each next turn). Works with piped input: every line is one turn; end of input ends it.
//! `/reset` starts a new conversation; `/quit` or `/exit` leaves.

use std::io::{BufRead, Write};

use serde_json::{json, Value};

use crate::error::ClientError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientDialect {
    /// `POST /v1/chat/completions` (SSE).
    #[default]
    Openai,
    /// `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`.
    Gemini,
}

/// The flags of `gemma client`.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Which API to speak.
    #[arg(long, value_enum, default_value_t = ClientDialect::Openai)]
    pub dialect: ClientDialect,
    /// Longest answer, in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
}

/// One exchange so far.
struct Turn {
    user: String,
    model: String,
}

/// Runs the conversation: lines from `input`, answers streamed to `output` (a prompt marker too when
/// `interactive`). Returns at end of input or `/quit`.
pub async fn run(
    args: &ClientArgs,
    input: impl BufRead,
    output: &mut impl Write,
    interactive: bool,
) -> Result<(), ClientError> {
    let http = reqwest::Client::builder().build().map_err(ClientError::Build)?;
    let base = args.url.trim_end_matches('/').to_string();
    let model = server_model(&http, &base, args).await?;
    let mut history: Vec<Turn> = Vec::new();
    let mut lines = input.lines();
    loop {
        if interactive {
            write!(output, "> ")?;
            output.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(ClientError::Input)?;
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                history.clear();
                writeln!(output, "(new conversation)")?;
                continue;
            }
            _ => {}
        }
        let answer = match args.dialect {
            ClientDialect::Openai => openai_turn(&http, &base, args, &model, &history, line, output).await?,
            ClientDialect::Gemini => gemini_turn(&http, &base, args, &model, &history, line, output).await?,
        };
        writeln!(output)?;
        output.flush()?;
        history.push(Turn { user: line.to_string(), model: answer });
    }
    Ok(())
}

fn authorised(req: reqwest::RequestBuilder, args: &ClientArgs) -> reqwest::RequestBuilder {
    match &args.api_key {
        Some(key) => req.bearer_auth(key),
        None => req,
    }
}

/// The model the server runs (`GET /v1/models`).
async fn server_model(http: &reqwest::Client, base: &str, args: &ClientArgs) -> Result<String, ClientError> {
    let r = authorised(http.get(format!("{base}/v1/models")), args)
        .send()
        .await
        .map_err(|source| ClientError::Unreachable { base: base.to_string(), source })?;
    let status = r.status();
    let v: Value = r.json().await.map_err(ClientError::ModelListNotJson)?;
    if !status.is_success() {
        return Err(ClientError::Status { status, message: error_text(&v) });
    }
    v["data"][0]["id"].as_str().map(str::to_string).ok_or(ClientError::NoModel)
}

fn error_text(v: &Value) -> String {
    v["error"]["message"].as_str().map_or_else(|| v.to_string(), str::to_string)
}

async fn openai_turn(
    http: &reqwest::Client,
    base: &str,
    args: &ClientArgs,
    model: &str,
    history: &[Turn],
    line: &str,
    output: &mut impl Write,
) -> Result<String, ClientError> {
    let mut messages = Vec::new();
    for t in history {
        messages.push(json!({"role": "user", "content": t.user}));
        messages.push(json!({"role": "assistant", "content": t.model}));
    }
    messages.push(json!({"role": "user", "content": line}));
    let mut body = json!({"model": model, "messages": messages, "stream": true, "max_tokens": args.max_tokens});
    if let Some(t) = args.temperature {
        body["temperature"] = json!(t);
    }
    let req = authorised(http.post(format!("{base}/v1/chat/completions")), args).json(&body);
    stream_sse(req, output, |v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string)).await
}

async fn gemini_turn(
    http: &reqwest::Client,
    base: &str,
    args: &ClientArgs,
    model: &str,
    history: &[Turn],
    line: &str,
    output: &mut impl Write,
) -> Result<String, ClientError> {
    let mut contents = Vec::new();
    for t in history {
        contents.push(json!({"role": "user", "parts": [{"text": t.user}]}));
        contents.push(json!({"role": "model", "parts": [{"text": t.model}]}));
    }
    contents.push(json!({"role": "user", "parts": [{"text": line}]}));
    let mut config = json!({"maxOutputTokens": args.max_tokens});
    if let Some(t) = args.temperature {
        config["temperature"] = json!(t);
    }
    let body = json!({"contents": contents, "generationConfig": config});
    let url = format!("{base}/v1beta/models/{model}:streamGenerateContent?alt=sse");
    let req = authorised(http.post(url), args).json(&body);
    stream_sse(req, output, |v| {
        let parts = v["candidates"][0]["content"]["parts"].as_array()?;
        Some(parts.iter().filter_map(|p| p["text"].as_str()).collect())
    })
    .await
}

/// Sends `req`, prints the text each SSE event carries as it arrives, and returns the whole answer. An error
/// status or an error event is an error.
async fn stream_sse(
    req: reqwest::RequestBuilder,
    output: &mut impl Write,
    text_of: impl Fn(&Value) -> Option<String>,
) -> Result<String, ClientError> {
    let mut r = req.send().await.map_err(ClientError::Request)?;
    let status = r.status();
    if !status.is_success() {
        let v: Value = r.json().await.unwrap_or(Value::Null);
        return Err(ClientError::Status { status, message: error_text(&v) });
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut answer = String::new();
    while let Some(chunk) = r.chunk().await.map_err(ClientError::Stream)? {
        pending.extend_from_slice(&chunk);
        // Events are lines; a line may be split across chunks (and a character across lines never is).
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:").map(str::trim_start) else { continue };
            if data == "[DONE]" {
                return Ok(answer);
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|source| ClientError::EventNotJson { data: data.to_string(), source })?;
            if v.get("error").is_some() {
                return Err(ClientError::ServerFailed(error_text(&v)));
            }
            if let Some(text) = text_of(&v) {
                write!(output, "{text}")?;
                output.flush()?;
                answer.push_str(&text);
            }
        }
    }
    Ok(answer)
}
