//! Starting the real server (real Gemma 3 270M, loopback, port 0) for the integration tests, and small
//! helpers to talk to it.
#![allow(dead_code)]

use std::time::Duration;

use gemma_server::ServerConfig;
use serde_json::Value;

/// Starts a server on its own runtime thread (it outlives any one test's runtime) and waits until the
/// model is loaded. Returns the base URL.
pub fn start(config: ServerConfig) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let mut server = gemma_server::start(config).await.expect("server starts");
            server.wait_loaded().await.expect("model loads");
            tx.send(format!("http://{}", server.local_addr())).unwrap();
            server.wait().await.unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(120)).expect("the server came up")
}

/// The real model, small context, loopback, any free port.
pub fn test_config() -> ServerConfig {
    let model = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("the test model is available");
    ServerConfig {
        model: model.to_string_lossy().into_owned(),
        host: "127.0.0.1".into(),
        port: 0,
        parallel: 8,
        ctx: 512,
        threads: 2,
        queue_size: 64,
        ..ServerConfig::default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

pub async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = client().post(url).json(&body).send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Posts `body` as it is (it may not even be JSON) with a JSON content type; returns the status and the
/// answer's JSON (`Null` when it is none). A failed connection panics, naming the URL.
pub async fn post_bytes(url: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: the connection failed: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Reads a whole SSE response and returns the `data:` payloads in order.
pub async fn sse_events(r: reqwest::Response) -> Vec<String> {
    let body = r.text().await.expect("stream read");
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// A metric's value in the Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}
