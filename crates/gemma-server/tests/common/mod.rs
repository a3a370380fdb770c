//! Starting the real server (real Gemma 3 270M, loopback, port 0) for the integration tests, and small
//! helpers to talk to it.
#![allow(dead_code)]

use std::process::Command;
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

/// Runs the Python client `tests/SCRIPT` with `args` and returns what it printed, after checking that it
/// succeeded. The Python `package` it drives must be installed (`.ci/run` installs it); if not, the test
/// fails saying how to install it.
pub fn run_python_client(package: &str, script: &str, args: &[&str]) -> String {
    let probe = Command::new("python3").args(["-c", &format!("import {package}")]).output().expect("python3 runs");
    assert!(
        probe.status.success(),
        "the `{package}` Python package is needed for this test: run `python3 -m pip install {package}` ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3").arg(&script).args(args).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the {package} client {script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Starts a server that asks for an API key, runs `script` (a client of the Python `package`) against it with
/// its URL and the key, and checks that it printed each of `checks`.
pub fn python_client_passes(package: &str, script: &str, checks: &[&str]) {
    let key = format!("{package}-python-test-key");
    let mut config = test_config();
    config.api_keys = vec![key.clone()];
    let base = start(config);
    let stdout = run_python_client(package, script, &[&base, &key]);
    for check in checks {
        assert!(stdout.contains(check), "missing '{check}' in:\n{stdout}");
    }
}
