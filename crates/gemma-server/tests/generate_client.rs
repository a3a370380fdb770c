//! `POST /generate` with and without sessions (kept KV, LRU eviction, errors), and `gemma client`'s library
//! function driving the real server with piped input in both dialects.

mod common;

use std::sync::OnceLock;

use common::{metric, post};
use serde_json::{json, Value};

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut config = common::test_config();
        config.max_sessions = 2;
        common::start(config)
    })
}

async fn generate(body: Value) -> Value {
    let (status, v) = post(&format!("{}/generate", base()), body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn generate_without_a_session_matches_completions() {
    let v = generate(json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})).await;
    let (_, c) = post(
        &format!("{}/v1/completions", base()),
        json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(v["text"], c["choices"][0]["text"], "{v} vs {c}");
    assert_eq!(v["session"], Value::Null);
    assert_eq!(v["usage"]["completion_tokens"], c["usage"]["completion_tokens"]);
    assert!(["stop", "length"].contains(&v["finish_reason"].as_str().unwrap()));
}

#[tokio::test]
async fn a_session_keeps_its_history_and_cache_and_the_oldest_is_evicted_and_must_fit() {
    let first = generate(json!({"prompt": "My name is Ada.", "max_tokens": 5, "temperature": 0,
                                "session": "s-one"}))
    .await;
    let p1 = first["usage"]["prompt_tokens"].as_u64().unwrap();
    let c1 = first["usage"]["completion_tokens"].as_u64().unwrap();
    // A new session has nothing of its own (at most the shared BOS from the prefix cache).
    assert!(first["usage"]["cached_tokens"].as_u64().unwrap() <= 1, "{first}");
    let (_, t) =
        post(&format!("{}/tokenize", base()), json!({"content": "My name is Ada.", "add_special": true})).await;
    assert_eq!(p1 as usize, t["tokens"].as_array().unwrap().len(), "BOS + the prompt");

    let second = generate(json!({"prompt": " What is my name?", "max_tokens": 5, "temperature": 0,
                                 "session": "s-one"}))
    .await;
    let (_, t2) =
        post(&format!("{}/tokenize", base()), json!({"content": " What is my name?", "add_special": false})).await;
    let new = t2["tokens"].as_array().unwrap().len() as u64;
    // The whole history is the prompt; all of it but the last answer token came from the session's cache.
    assert_eq!(second["usage"]["prompt_tokens"].as_u64().unwrap(), p1 + c1 + new, "{second}");
    assert!(second["usage"]["cached_tokens"].as_u64().unwrap() >= p1 + c1 - 1, "{second}");

    // Two more sessions with a limit of two: "s-one" is the least recently used and goes.
    for id in ["s-two", "s-three"] {
        generate(json!({"prompt": "Hello.", "max_tokens": 2, "session": id})).await;
    }
    let again = generate(json!({"prompt": "Hi.", "max_tokens": 2, "session": "s-one"})).await;
    assert!(again["usage"]["cached_tokens"].as_u64().unwrap() <= 1, "{again}");
    let (_, t3) = post(&format!("{}/tokenize", base()), json!({"content": "Hi.", "add_special": true})).await;
    assert_eq!(again["usage"]["prompt_tokens"].as_u64().unwrap() as usize, t3["tokens"].as_array().unwrap().len());

    // A session whose history outgrows the context is refused with a 400, and the server carries on.
    let long = "word ".repeat(300);
    generate(json!({"prompt": long, "max_tokens": 1, "session": "s-long"})).await;
    let (status, v) =
        post(&format!("{}/generate", base()), json!({"prompt": long, "max_tokens": 1, "session": "s-long"})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("tokens"), "{v}");
    // The refused call left the session as it was: a short prompt continues it from its cache.
    let short = generate(json!({"prompt": " Done.", "max_tokens": 1, "session": "s-long"})).await;
    assert!(short["usage"]["cached_tokens"].as_u64().unwrap() >= 300, "{short}");
    generate(json!({"prompt": "Still here?", "max_tokens": 2})).await;
}

/// A server of its own for the streamed sessions, so that they do not change which of the other test's
/// sessions is least recently used.
fn stream_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

/// The lines of a streamed `/generate`, each parsed, after checking the status and the content type.
async fn generate_streamed(base: &str, body: Value) -> Vec<Value> {
    let r = common::client().post(format!("{base}/generate")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    assert!(text.ends_with('\n'), "every line ends with a newline: {text:?}");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}"))).collect()
}

#[tokio::test]
async fn streamed_generate_gives_the_plain_answer_line_by_line() {
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
    let plain = generate(body.clone()).await;
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let lines = generate_streamed(base(), streamed_body).await;
    let (last, pieces) = lines.split_last().expect("at least the closing line");
    assert!(pieces.len() >= 2, "several pieces expected: {lines:?}");
    assert!(pieces.iter().all(|l| l["done"] == false && !l["text"].as_str().unwrap().is_empty()), "{lines:?}");
    let text: String = pieces.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(text, plain["text"].as_str().unwrap());
    assert_eq!(last["done"], true);
    assert_eq!(last["finish_reason"], plain["finish_reason"]);
    assert_eq!(last["usage"]["completion_tokens"], plain["usage"]["completion_tokens"]);

    // A session works streamed too, and a refusal after the answer started is the closing line's error.
    let lines =
        generate_streamed(stream_base(), json!({"prompt": "Hello.", "max_tokens": 2, "session": "s", "stream": true}))
            .await;
    assert_eq!(lines.last().unwrap()["session"], "s");
    let long = json!({"prompt": "word ".repeat(300), "max_tokens": 1, "session": "s-long", "stream": true});
    generate_streamed(stream_base(), long.clone()).await;
    let lines = generate_streamed(stream_base(), long).await;
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{lines:?}");
    assert!(last["error"]["message"].as_str().unwrap().contains("tokens"), "{lines:?}");
}

#[tokio::test]
async fn bad_generate_requests_are_400() {
    let url = format!("{}/generate", base());
    for body in [
        json!({"max_tokens": 3}),
        json!({"prompt": ["a", "b"]}),
        json!({"prompt": "x", "session": "has space"}),
        json!({"prompt": "x", "session": "a".repeat(200)}),
        json!({"prompt": "x", "session": 5}),
        json!({"prompt": "x", "temperature": "hot"}),
        json!({"prompt": "x", "stream": "yes"}),
    ] {
        let (status, v) = post(&url, body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert!(v["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn the_terminal_client_streams_answers_and_keeps_the_conversation() {
    for dialect in [gemma_server::client::ClientDialect::Openai, gemma_server::client::ClientDialect::Gemini] {
        let metrics = || async {
            let text = common::client().get(format!("{}/metrics", base())).send().await.unwrap().text().await.unwrap();
            metric(&text, "gemma_prefix_cache_hits_total")
        };
        let hits_before = metrics().await;
        let args = gemma_server::client::ClientArgs {
            url: base().to_string(),
            api_key: None,
            dialect,
            max_tokens: 8,
            temperature: Some(0.0),
        };
        // Piped input: one turn per line, a blank line skipped, the conversation kept between turns.
        let input = b"Say hello.\n\nSay goodbye.\n/quit\nnever sent\n";
        let mut out = Vec::new();
        gemma_server::client::run(&args, &input[..], &mut out, false).await.expect("the client runs");
        let out = String::from_utf8(out).unwrap();
        let answers: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(answers.len() >= 2, "{dialect:?}: two answers expected in {out:?}");
        // The second turn resends the first, which the prefix cache serves.
        assert!(metrics().await > hits_before, "{dialect:?}: the second turn reused no prefix");
    }
    // A server that is not there is a clear error, not a hang.
    let args = gemma_server::client::ClientArgs {
        url: "http://127.0.0.1:9".into(),
        api_key: None,
        dialect: gemma_server::client::ClientDialect::Openai,
        max_tokens: 8,
        temperature: None,
    };
    let e = gemma_server::client::run(&args, &b"hi\n"[..], &mut Vec::new(), false).await.unwrap_err();
    assert!(format!("{e:#}").contains("cannot reach"), "{e:#}");
}

#[tokio::test]
async fn n_choices_share_one_prefill_and_sample_as_separate_requests_would() {
    let url = format!("{}/v1/completions", base());
    let body = |n: usize, seed: u64| {
        json!({"prompt": "Once upon a time, in a small village,", "max_tokens": 8, "temperature": 1.0, "seed": seed,
               "n": n})
    };
    let (status, many) = post(&url, body(3, 40)).await;
    assert_eq!(status, 200, "{many}");
    // Choice k of a request with seed s samples like a lone request with seed s + k: the copied KV cache and
    // the shared logits give exactly what a prefill of its own would.
    for k in 0..3u64 {
        let (_, one) = post(&url, body(1, 40 + k)).await;
        assert_eq!(many["choices"][k as usize]["text"], one["choices"][0]["text"], "choice {k}: {many} vs {one}");
    }
    let (_, t) = post(
        &format!("{}/tokenize", base()),
        json!({"content": "Once upon a time, in a small village,", "add_special": true}),
    )
    .await;
    assert_eq!(many["usage"]["prompt_tokens"].as_u64().unwrap() as usize, t["tokens"].as_array().unwrap().len());
}
