//! A bounded load test on loopback: 200 requests from 16 concurrent clients against the real server. Every
//! answer is a 200 or a deliberate 503 (queue full, with Retry-After, which the clients honour), every
//! request is served in the end, and the server is healthy and correct afterwards.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{client, post};
use futures_util::future::join_all;
use serde_json::json;

const REQUESTS: usize = 200;
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_from_sixteen_clients() {
    let mut config = common::test_config();
    // A small queue so that some 503s can happen; they must come with Retry-After.
    config.queue_size = 8;
    let base = common::start(config);
    let (_, reference) =
        post(&format!("{base}/v1/completions"), json!({"prompt": "Count: 1, 2,", "max_tokens": 4, "temperature": 0}))
            .await;
    let reference = reference["choices"][0]["text"].as_str().expect("a reference text").to_string();

    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let clients = (0..CLIENTS).map(|c| {
        let (base, next, ok, busy) = (base.clone(), next.clone(), ok.clone(), busy.clone());
        let reference = reference.clone();
        async move {
            let http = client();
            let mut bad = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    break;
                }
                let (route, body) = match i % 4 {
                    0 => (
                        "v1/chat/completions",
                        json!({"messages": [{"role": "user", "content": format!("Hi {i}")}],
                                                        "max_tokens": 3}),
                    ),
                    1 => ("v1/completions", json!({"prompt": "Count: 1, 2,", "max_tokens": 4, "temperature": 0})),
                    2 => (
                        "v1/completions",
                        json!({"prompt": format!("Client {c} says"), "max_tokens": 3,
                                                   "stream": true}),
                    ),
                    _ => (
                        "generate",
                        json!({"prompt": format!("Note {i}:"), "max_tokens": 2,
                                             "session": format!("load-{c}")}),
                    ),
                };
                // A deliberate 503 is retried after its Retry-After (capped), as a well-behaved client does.
                let (status, text) = loop {
                    let r = http.post(format!("{base}/{route}")).json(&body).send().await.expect("request sent");
                    let status = r.status().as_u16();
                    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let text = r.text().await.unwrap_or_default();
                    match (status, retry_after) {
                        (503, Some(secs)) => {
                            busy.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(std::time::Duration::from_millis(250 * secs.min(4))).await;
                        }
                        _ => break (status, text),
                    }
                };
                match status {
                    200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if i % 4 == 1 {
                            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                            if v["choices"][0]["text"] != reference.as_str() {
                                bad.push(format!("request {i}: batching changed the text: {v}"));
                            }
                        }
                    }
                    _ => bad.push(format!("request {i} to /{route}: {status} {text}")),
                }
            }
            bad
        }
    });
    let bad: Vec<String> = join_all(clients).await.into_iter().flatten().collect();
    assert!(bad.is_empty(), "unexpected answers:\n{}", bad.join("\n"));
    let (ok, busy) = (ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
    assert_eq!(ok, REQUESTS, "every request is served in the end");
    eprintln!("load: {ok} served, {busy} deliberate 503s");

    // Still healthy and still right.
    let health = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, v) =
        post(&format!("{base}/v1/completions"), json!({"prompt": "Count: 1, 2,", "max_tokens": 4, "temperature": 0}))
            .await;
    assert_eq!((status, v["choices"][0]["text"].as_str()), (200, Some(reference.as_str())));
    let metrics = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.lines().any(|l| l.contains("status=\"5") && !l.contains("status=\"503\"")), "{metrics}");
}
