//! The `gemma-server` binary: a bad configuration is a clear startup error, and SIGTERM during a stream lets
//! the stream finish and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_gemma-server");

#[test]
fn unknown_config_keys_and_bad_values_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server_config.toml");
    std::fs::write(&path, "[server]\nport = 8080\ntimeout_secs = 5\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `timeout_secs`"), "{err}");

    std::fs::write(&path, "[inference]\nmax_batch_size = \"many\"\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid type"));

    let out = Command::new(BIN).args(["--parallel", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["--api-key", "a", "--api-key-file", "/nonexistent"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the two key options conflict");
}

#[tokio::test]
async fn sigterm_during_a_stream_finishes_it_and_exits_zero() {
    let model = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).unwrap();
    let mut child = Command::new(BIN)
        .arg("--model")
        .arg(&model)
        .args(["--port", "0", "--ctx", "512", "--threads", "2", "--parallel", "2"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("the server logs its address");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    while client.get(format!("{base}/health")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the model did not load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "A story:", "max_tokens": 40, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut stream = futures_util::StreamExt::fuse(r.bytes_stream());
    let mut body = String::new();
    while !body.contains("data: ") {
        let chunk = futures_util::StreamExt::next(&mut stream).await.unwrap().unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "the stream ended properly");
    let finish: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert!(finish["choices"][0]["finish_reason"].is_string());
    let t0 = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0));
    assert!(client.get(format!("{base}/health")).send().await.is_err(), "nothing listens any more");
}
