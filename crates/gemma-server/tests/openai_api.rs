//! The OpenAI endpoints against the real server and model: shapes, streaming, stop, n, seed, usage, errors,
//! batching invariance and the prefix cache.

mod common;

use std::io::{Read, Write};
use std::sync::OnceLock;

use common::{client, metric, post, sse_events};
use futures_util::future::join_all;
use serde_json::{json, Value};

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

async fn complete(body: Value) -> Value {
    let (status, v) = post(&format!("{}/v1/completions", base()), body).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Each `(field, value, says)`: a one-token completion with `field` set to `value` is a 400 naming the
/// field, whose message contains `says`.
async fn assert_each_is_a_400(url: &str, cases: impl IntoIterator<Item = (&str, Value, &str)>) {
    for (field, value, says) in cases {
        let mut body = json!({"prompt": "x", "max_tokens": 1});
        body[field] = value.clone();
        let (status, v) = post(url, body).await;
        assert_eq!(status, 400, "{field}: {value} → {v}");
        assert_eq!(v["error"]["param"].as_str(), Some(field), "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{field}: {value} → {message}");
    }
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn health_models_and_tokenize() {
    let r = client().get(format!("{}/health", base())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let models: Value = client().get(format!("{}/v1/models", base())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");
    assert!(models["data"][0]["id"].as_str().unwrap().contains("gemma-3-270m"));

    let (s, t) = post(&format!("{}/tokenize", base()), json!({"content": "Hello world", "add_special": true})).await;
    assert_eq!(s, 200);
    let ids: Vec<u64> = t["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids[0], 2, "Gemma adds <bos> (id 2)");
    assert!(ids.len() >= 3);
    let (s, d) = post(&format!("{}/detokenize", base()), json!({"tokens": ids})).await;
    assert_eq!(s, 200);
    assert_eq!(d["content"], "<bos>Hello world", "control tokens are shown, as llama-server shows them");
    let (s, e) = post(&format!("{}/detokenize", base()), json!({"tokens": [999_999_999u64]})).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("tokens")));
}

#[tokio::test]
async fn completion_shape_and_streaming_give_the_same_text() {
    let body = json!({"model": "whatever", "prompt": "The capital of France is", "max_tokens": 8,
                      "temperature": 0, "some_unknown_field": {"x": 1}});
    let v = complete(body.clone()).await;
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["index"], 0);
    let text = text_of(&v);
    assert!(!text.is_empty());
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    let usage = &v["usage"];
    let (_, t) =
        post(&format!("{}/tokenize", base()), json!({"content": "The capital of France is", "add_special": true}))
            .await;
    assert_eq!(usage["prompt_tokens"].as_u64().unwrap() as usize, t["tokens"].as_array().unwrap().len());
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + completion);
    if finish == "length" {
        assert_eq!(completion, 8);
    } else {
        assert_eq!(finish, "stop");
    }

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = client().post(format!("{}/v1/completions", base())).json(&streamed).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let joined: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| c["text"].as_str().unwrap_or("")).collect();
    assert_eq!(joined, text, "streamed text equals the plain response");
    let last_choice = chunks.iter().rev().find(|c| !c["choices"].as_array().unwrap().is_empty()).unwrap();
    assert_eq!(last_choice["choices"][0]["finish_reason"], finish);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
}

#[tokio::test]
async fn chat_plain_and_streamed() {
    let body = json!({"messages": [{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": "Name a colour."}],
                      "max_tokens": 10, "temperature": 0});
    let (s, v) = post(&format!("{}/v1/chat/completions", base()), body.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let content = msg["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let r = client().post(format!("{}/v1/chat/completions", base())).json(&streamed).send().await.unwrap();
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String =
        chunks.iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(joined, content);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], v["choices"][0]["finish_reason"]);
}

#[tokio::test]
async fn stop_strings_cut_the_text() {
    let prompt = "Count: one, two, three, four, five,";
    let full = text_of(&complete(json!({"prompt": prompt, "max_tokens": 12, "temperature": 0})).await);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "{full:?}");
    // A stop string from the middle of the greedy text: the answer is everything before its first occurrence.
    let stop: String = chars[3..5].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let v =
        complete(json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop.clone(), "zzzz"]})).await;
    assert_eq!(text_of(&v), expected);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let r = client()
        .post(format!("{}/v1/completions", base()))
        .json(&json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": stop, "stream": true}))
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let joined: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(joined, expected);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn n_choices_and_seeds_are_reproducible() {
    let body = json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 1.0, "n": 3, "seed": 1234});
    let a = complete(body.clone()).await;
    let b = complete(body.clone()).await;
    let texts = |v: &Value| -> Vec<String> {
        v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    let indices: Vec<u64> = a["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
    assert_eq!(texts(&a), texts(&b), "the same seed gives the same choices");
    let completion: u64 = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion > 3 && completion <= 18);
    let mut other = body;
    other["seed"] = json!(99);
    let c = complete(other).await;
    assert_ne!(texts(&a), texts(&c), "another seed draws other text");
    let distinct: std::collections::HashSet<String> = texts(&a).into_iter().collect();
    assert!(distinct.len() > 1, "the choices of one request draw differently");
}

#[tokio::test]
async fn logprobs_are_reported() {
    let v = complete(json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0, "logprobs": 2})).await;
    let lp = &v["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert_eq!(n, v["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2);
        // Greedy: the chosen token is the most likely one.
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-4, "{chosen} {best}");
    }
    let (s, v) = post(
        &format!("{}/v1/chat/completions", base()),
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0,
               "logprobs": true, "top_logprobs": 3}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
}

#[tokio::test]
async fn bad_requests_are_400_with_openai_errors() {
    let url = format!("{}/v1/completions", base());
    let cases = [
        (json!({"prompt": "x", "temperature": "hot"}), Some("temperature")),
        (json!({"max_tokens": 4}), Some("prompt")),
        (json!({"prompt": "x", "n": 0}), Some("n")),
        (json!({"prompt": "x", "n": 1e10}), Some("n")),
        (json!({"prompt": "x", "max_tokens": -1}), Some("max_tokens")),
        (json!({"prompt": "x", "stop": [1, 2]}), Some("stop")),
        (json!({"prompt": "x", "top_p": 3}), Some("top_p")),
        (json!({"prompt": [1, "a"]}), Some("prompt")),
        (json!({"prompt": [999_999_999u64]}), Some("prompt")),
        (json!({"prompt": "x", "stream": "yes"}), Some("stream")),
        (json!({"prompt": "x", "stream_options": {"include_usage": 1}}), Some("stream_options")),
        (json!({"prompt": "x", "logit_bias": {"abc": 1}}), Some("logit_bias")),
        (json!({"prompt": "x", "echo": true}), Some("echo")),
        (json!([1, 2, 3]), None),
    ];
    for (body, param) in cases {
        let (status, v) = post(&url, body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e.get("code").is_some() && e.get("param").is_some());
        assert_eq!(e["param"].as_str(), param, "{body} → {v}");
    }
    let chat = format!("{}/v1/chat/completions", base());
    for body in [
        json!({"messages": "hi"}),
        json!({"messages": []}),
        json!({"messages": [{"content": "no role"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
    ] {
        let (status, v) = post(&chat, body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
    }
}

#[tokio::test]
async fn dry_fields_act_like_llama_server_and_bad_values_are_400() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_dry.json");
    let goldens: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Case 0 (default breakers, multiplier 0.8): llama.cpp's first 8 tokens (its first near-tie after DRY
    // is at step 8), as text.
    let cat = &goldens[0];
    let first8 = |field: &str| -> Vec<u64> {
        cat[field].as_array().unwrap().iter().take(8).map(|x| x.as_u64().unwrap()).collect()
    };
    let (s, expected) = post(&format!("{}/detokenize", base()), json!({"tokens": first8("gen_ids")})).await;
    assert_eq!(s, 200, "{expected}");
    let body = json!({"prompt": cat["prompt_ids"], "max_tokens": 8, "temperature": 0, "dry_multiplier": 0.8});
    let dry = complete(body.clone()).await;
    assert_eq!(text_of(&dry), expected["content"].as_str().unwrap(), "{dry}");
    let mut plain = body.clone();
    plain["dry_multiplier"] = json!(0.0);
    assert_ne!(text_of(&complete(plain).await), text_of(&dry), "DRY changes the text");
    // llama-server's other fields, spelled out with their defaults (a base below 1 means the default).
    let mut spelled = body.clone();
    for (k, v) in [
        ("dry_base", json!(0.5)),
        ("dry_allowed_length", json!(2)),
        ("dry_penalty_last_n", json!(64)),
        ("dry_sequence_breakers", json!(["\n", ":", "\"", "*"])),
    ] {
        spelled[k] = v;
    }
    assert_eq!(text_of(&complete(spelled).await), text_of(&dry));
    // Chat bodies take the fields too.
    let (s, v) = post(
        &format!("{}/v1/chat/completions", base()),
        json!({"messages": [{"role": "user", "content": "Say la la la la la la"}], "max_tokens": 4,
               "temperature": 0, "dry_multiplier": 0.8, "dry_sequence_breakers": ["la la"],
               "dry_penalty_last_n": -1}),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    let url = format!("{}/v1/completions", base());
    let many: Vec<String> = (0..40).map(|i| format!("b{i}")).collect();
    let cases = [
        ("dry_multiplier", json!("strong"), "'dry_multiplier'"),
        ("dry_multiplier", json!(1e300), "'dry_multiplier' must be between"),
        ("dry_base", json!([1.5]), "'dry_base'"),
        ("dry_allowed_length", json!(-1), "'dry_allowed_length' must be a non-negative integer"),
        ("dry_penalty_last_n", json!(-2), "'dry_penalty_last_n' must be an integer from -1"),
        ("dry_penalty_last_n", json!(1.5), "'dry_penalty_last_n' must be an integer"),
        ("dry_sequence_breakers", json!([]), "must be a non-empty array of strings"),
        ("dry_sequence_breakers", json!("\n"), "'dry_sequence_breakers'"),
        ("dry_sequence_breakers", json!(["\n", 1]), "'dry_sequence_breakers'"),
        ("dry_sequence_breakers", json!(many), "at most 32"),
    ];
    assert_each_is_a_400(&url, cases).await;
}

#[tokio::test]
async fn over_long_prompt_is_400() {
    let long = "word ".repeat(700);
    let (status, v) = post(&format!("{}/v1/completions", base()), json!({"prompt": long, "max_tokens": 4})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (status, v) =
        post(&format!("{}/v1/chat/completions", base()), json!({"messages": [{"role": "user", "content": long}]}))
            .await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")));
}

/// Sends raw bytes and returns the status line's code.
fn raw_request(addr: &str, head_and_body: &[u8], close_write: bool) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    s.write_all(head_and_body).unwrap();
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    // The status line is enough (the server may keep the connection open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn malformed_bodies_are_4xx_and_the_server_keeps_serving() {
    let url = format!("{}/v1/completions", base());
    let send = |body: Vec<u8>| {
        let url = url.clone();
        async move {
            client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"prompt\": \"x\"".to_vec(),
        b"not json at all".to_vec(),
        b"".to_vec(),
        b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
        b"{\"prompt\": \"x\", \"max_tokens\": 1e400}".to_vec(),
        b"{\"prompt\": \"x\", \"max_tokens\": 123456789012345678901234567890}".to_vec(),
        b"{\"prompt\": \"x\", \"temperature\": 1e38}".to_vec(),
        b"{\"prompt\": {\"nested\": [[[[]]]]}}".to_vec(),
        format!("{{\"prompt\": {}}}", "[".repeat(10_000)).into_bytes(),
        b"null".to_vec(),
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let status = send(body).await;
        assert!((400..500).contains(&status), "{shown} → {status}");
    }
    // Too large: 413, from the declared length, before the body is read.
    let addr = base().trim_start_matches("http://").to_string();
    let head =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n";
    let status = tokio::task::spawn_blocking(move || raw_request(&addr, head.as_bytes(), false)).await.unwrap();
    assert_eq!(status, 413);
    // A body cut short: the declared length never arrives.
    let addr = base().trim_start_matches("http://").to_string();
    let head =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let status =
        tokio::task::spawn_blocking(move || raw_request(&addr, format!("{head}{{\"prompt\": ").as_bytes(), true))
            .await
            .unwrap();
    assert!(status == 0 || (400..500).contains(&status), "truncated body → {status}");
    // Garbage instead of HTTP.
    let addr = base().trim_start_matches("http://").to_string();
    let status =
        tokio::task::spawn_blocking(move || raw_request(&addr, b"\x00\x01\x02 GARBAGE\r\n\r\n", true)).await.unwrap();
    assert!(status == 0 || (400..500).contains(&status), "garbage → {status}");
    // Unknown route: 404 with an error body.
    let r = client().get(format!("{}/v2/nothing", base())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Still serving.
    let v = complete(json!({"prompt": "Still alive?", "max_tokens": 2, "temperature": 0})).await;
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn sixteen_concurrent_greedy_requests_equal_each_alone() {
    let prompts: Vec<String> = (0..16)
        .map(|i| format!("Fact number {i} about the {} is that", ["sea", "sky", "moon", "forest"][i % 4]))
        .collect();
    let body = |p: &str| json!({"prompt": p, "max_tokens": 8, "temperature": 0});
    // All at once first (cold: prompts prefilled in chunks beside decoding sequences), then one by one (the
    // prefix cache now holds each prompt: the rerun prefills only its last token).
    let together: Vec<String> = join_all(prompts.iter().map(|p| complete(body(p)))).await.iter().map(text_of).collect();
    let mut alone = Vec::new();
    for p in &prompts {
        alone.push(text_of(&complete(body(p)).await));
    }
    assert_eq!(together, alone);
    let metrics = client().get(format!("{}/metrics", base())).send().await.unwrap().text().await.unwrap();
    assert!(metric(&metrics, "gemma_engine_step_sequences_max") >= 4.0, "requests were batched together");
    assert!(together.iter().collect::<std::collections::HashSet<_>>().len() > 1, "prompts give different text");
}

/// A conversation that ends with an assistant message is continued, as llama-server continues it: the
/// answer goes on from the assistant's text (the same prompt as `/apply-template` renders, and the same greedy
/// tokens as `/completion` on it), where before the turn was closed and a new one opened.
#[tokio::test]
async fn a_final_assistant_message_is_continued() {
    let messages = json!([{"role": "user", "content": "Name a large city in France."},
                          {"role": "assistant", "content": "The largest city in France is"}]);
    let (s, chat) = post(
        &format!("{}/v1/chat/completions", base()),
        json!({"messages": messages, "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{chat}");
    let (s, rendered) = post(&format!("{}/apply-template", base()), json!({"messages": messages})).await;
    assert_eq!(s, 200, "{rendered}");
    let prompt = rendered["prompt"].as_str().unwrap();
    assert!(prompt.ends_with("<start_of_turn>model\nThe largest city in France is"), "{prompt}");
    let (s, native) =
        post(&format!("{}/completion", base()), json!({"prompt": prompt, "n_predict": 6, "temperature": 0})).await;
    assert_eq!(s, 200, "{native}");
    assert!(!native["content"].as_str().unwrap_or_default().is_empty(), "{native}");
    assert_eq!(chat["choices"][0]["message"]["content"], native["content"], "{chat} {native}");
    assert_eq!(chat["usage"]["prompt_tokens"], native["tokens_evaluated"], "{chat} {native}");
    // two assistant messages at the end are refused, as llama-server refuses them
    let mut two = messages.clone();
    two.as_array_mut().unwrap().push(json!({"role": "assistant", "content": "Paris"}));
    let (s, err) = post(&format!("{}/v1/chat/completions", base()), json!({"messages": two, "max_tokens": 2})).await;
    assert_eq!(s, 400, "{err}");
}

#[tokio::test]
async fn second_chat_turn_reuses_the_prefix_cache() {
    let url = format!("{}/v1/chat/completions", base());
    let question = "Write one sentence about lighthouses and the sea, please, for my notebook.";
    let (s, first) = post(
        &url,
        json!({"messages": [{"role": "user", "content": question}], "max_tokens": 12,
                                       "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{first}");
    let hits_before = metric(
        &client().get(format!("{}/metrics", base())).send().await.unwrap().text().await.unwrap(),
        "gemma_prefix_cache_hits_total",
    );
    let reply = first["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let (s, second) = post(
        &url,
        json!({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply},
                            {"role": "user", "content": "And one more?"}],
               "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{second}");
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= first_prompt, "the whole first prompt was reused: {cached} of {first_prompt}");
    let metrics = client().get(format!("{}/metrics", base())).send().await.unwrap().text().await.unwrap();
    assert!(metric(&metrics, "gemma_prefix_cache_hits_total") > hits_before);
    assert!(metric(&metrics, "gemma_prefix_cache_reused_tokens_total") >= cached as f64);
    assert!(metrics.contains("gemma_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"));
    assert!(metrics.contains("gemma_time_to_first_token_seconds_count"));
    assert!(metric(&metrics, "gemma_generated_tokens_total") > 0.0);
}

#[tokio::test]
async fn gemini_generate_content_matches_chat() {
    let question = "Say hello to the moon.";
    let (s, chat) = post(
        &format!("{}/v1/chat/completions", base()),
        json!({"messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{chat}");
    let expected = chat["choices"][0]["message"]["content"].as_str().unwrap();
    let body = json!({"contents": [{"role": "user", "parts": [{"text": question}]}],
                      "generationConfig": {"temperature": 0, "maxOutputTokens": 8}});
    let (s, v) = post(&format!("{}/v1beta/models/gemma-3-270m:generateContent", base()), body.clone()).await;
    assert_eq!(s, 200, "{v}");
    let c = &v["candidates"][0];
    assert_eq!(c["content"]["role"], "model");
    assert_eq!(c["content"]["parts"][0]["text"], expected);
    let reason = if chat["choices"][0]["finish_reason"] == "stop" { "STOP" } else { "MAX_TOKENS" };
    assert_eq!(c["finishReason"], reason);
    assert_eq!(v["usageMetadata"]["promptTokenCount"], chat["usage"]["prompt_tokens"]);

    let r = client()
        .post(format!("{}/v1beta/models/gemma-3-270m:streamGenerateContent?alt=sse", base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_events(r).await;
    let chunks: Vec<Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let joined: String = chunks
        .iter()
        .map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(joined, expected);
    assert_eq!(chunks.last().unwrap()["candidates"][0]["finishReason"], reason);
    assert!(chunks.last().unwrap()["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);

    let (s, _) = post(&format!("{}/v1beta/models/gemma-3-270m:countTokens", base()), body).await;
    assert_eq!(s, 404);
    let (s, e) = post(&format!("{}/v1beta/models/gemma-3-270m:generateContent", base()), json!({"contents": []})).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("contents")));
    let many: Vec<String> = (0..17).map(|i| format!("stop{i}")).collect();
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                      "generationConfig": {"stopSequences": many}});
    let (s, e) = post(&format!("{}/v1beta/models/gemma-3-270m:generateContent", base()), body).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("stopSequences")), "{e}");
}

async fn ws_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    match futures_util::StreamExt::next(ws).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn websocket_streams_and_cancels() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let request = json!({"prompt": "The moon is", "max_tokens": 6, "temperature": 0});
    let expected = text_of(&complete(request.clone()).await);
    let url = format!("{}/v1/ws", base().replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
    // A whole generation: chunks, then the finish with usage.
    ws.send(Message::Text(request.to_string().into())).await.unwrap();
    let mut text = String::new();
    let done = loop {
        let m = ws_json(&mut ws).await;
        match m["type"].as_str() {
            Some("chunk") => text.push_str(m["text"].as_str().unwrap()),
            Some("done") => break m,
            _ => panic!("{m}"),
        }
    };
    assert_eq!(text, expected);
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(done["choices"][0]["finish_reason"].is_string());

    // A long generation cancelled after two chunks; the socket then serves the next request.
    let long = json!({"prompt": "Write a long essay about the history of bridges.", "max_tokens": 300,
                      "temperature": 0});
    ws.send(Message::Text(long.to_string().into())).await.unwrap();
    let mut chunks = 0;
    while chunks < 2 {
        assert_eq!(ws_json(&mut ws).await["type"], "chunk");
        chunks += 1;
    }
    ws.send(Message::Text(json!({"cancel": true}).to_string().into())).await.unwrap();
    loop {
        let m = ws_json(&mut ws).await;
        match m["type"].as_str() {
            Some("chunk") => chunks += 1,
            Some("cancelled") => break,
            _ => panic!("{m}"),
        }
    }
    assert!(chunks < 300, "cancelled early ({chunks} chunks)");
    ws.send(Message::Text(json!({"prompt": "x", "temperature": "hot"}).to_string().into())).await.unwrap();
    let m = ws_json(&mut ws).await;
    assert_eq!((m["type"].as_str(), m["error"]["param"].as_str()), (Some("error"), Some("temperature")));
    ws.send(Message::Text(request.to_string().into())).await.unwrap();
    let mut again = String::new();
    loop {
        let m = ws_json(&mut ws).await;
        match m["type"].as_str() {
            Some("chunk") => again.push_str(m["text"].as_str().unwrap()),
            Some("done") => break,
            _ => panic!("{m}"),
        }
    }
    assert_eq!(again, expected);
    ws.close(None).await.unwrap();
}

/// llama-server's own sampling fields (beyond OpenAI's) are taken under its names, act, and are checked.
#[tokio::test]
async fn llama_server_sampling_fields_act_and_bad_values_are_400() {
    let story = "Once upon a time, in a small village by the sea, there lived";
    let greedy = json!({"prompt": story, "max_tokens": 16, "temperature": 0});
    let plain = text_of(&complete(greedy.clone()).await);
    // A strong repeat penalty over the whole context changes a greedy story.
    let mut penalized = greedy.clone();
    penalized["repeat_penalty"] = json!(3.0);
    penalized["repeat_last_n"] = json!(-1);
    assert_ne!(text_of(&complete(penalized).await), plain, "repeat_penalty acts");
    // A chain without top-k: top_k 1 no longer makes it greedy, so some seed draws another text; with the
    // chain spelled in full (names or letters) the same seed gives the same text.
    let sampled = |seed: u64, samplers: Value| json!({"prompt": story, "max_tokens": 8, "temperature": 1.0, "top_k": 1, "seed": seed, "samplers": samplers});
    let mut texts = Vec::new();
    for seed in 1..=4 {
        texts.push(text_of(&complete(sampled(seed, json!("t"))).await));
    }
    assert!(texts.iter().any(|t| t != &texts[0]), "without top-k in the chain the seed matters: {texts:?}");
    let full = text_of(&complete(sampled(5, json!(["top_k", "temperature"]))).await);
    assert_eq!(full, text_of(&complete(sampled(5, json!("kt"))).await), "names and letters name the same chain");
    assert_eq!(full, text_of(&complete(sampled(6, json!("kt"))).await), "top-k 1 in the chain is greedy");
    // Mirostat 2, XTC, typical-p, top-n-sigma, min_keep and dynamic temperature run and are seeded.
    let extras = json!({"prompt": story, "max_tokens": 8, "temperature": 0.8, "seed": 3, "mirostat": 2,
                        "mirostat_tau": 4.0, "mirostat_eta": 0.2});
    assert_eq!(text_of(&complete(extras.clone()).await), text_of(&complete(extras).await));
    let extras = json!({"prompt": story, "max_tokens": 8, "temperature": 0.8, "seed": 3, "top_k": 40,
                        "xtc_probability": 0.5, "xtc_threshold": 0.1, "typical_p": 0.9, "top_n_sigma": 2.0,
                        "min_keep": 2, "dynatemp_range": 0.3, "dynatemp_exponent": 1.5});
    assert_eq!(text_of(&complete(extras.clone()).await), text_of(&complete(extras).await));
    // Each field is read: a tiny top-n-sigma or typical-p, or a Mirostat with τ 0, leaves one token, so a
    // sampled request no longer depends on its seed (without them, seeds 1 and 2 differ).
    let sampled = |seed: u64| json!({"prompt": story, "max_tokens": 8, "temperature": 1.0, "seed": seed});
    assert_ne!(text_of(&complete(sampled(1)).await), text_of(&complete(sampled(2)).await));
    for (field, value) in [("top_n_sigma", json!(1e-6)), ("typical_p", json!(1e-6)), ("mirostat_tau", json!(0.0))] {
        let mut texts = Vec::new();
        for seed in [1, 2] {
            let mut body = sampled(seed);
            body[field] = value.clone();
            if field == "mirostat_tau" {
                body["mirostat"] = json!(2);
                body["mirostat_eta"] = json!(0.0);
            }
            texts.push(text_of(&complete(body).await));
        }
        assert_eq!(texts[0], texts[1], "{field} {value}");
    }
    // Several choices of one seeded request differ and are reproducible; a random seed (-1) stays random
    // for every choice, request after request.
    let choices = |seed: i64| async move {
        let v = complete(json!({"prompt": story, "max_tokens": 8, "temperature": 1.0, "seed": seed, "n": 2})).await;
        (0..2).map(|i| v["choices"][i]["text"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let seeded = choices(11).await;
    assert_ne!(seeded[0], seeded[1], "choices draw differently");
    assert_eq!(seeded, choices(11).await, "and reproducibly");
    assert_ne!(choices(-1).await, choices(-1).await, "-1 is random for every choice");

    let url = format!("{}/v1/completions", base());
    let cases = [
        ("repeat_penalty", json!(0), "repeat_penalty must be finite and greater than 0"),
        ("repeat_penalty", json!("strong"), "'repeat_penalty'"),
        ("repeat_last_n", json!(-2), "'repeat_last_n' must be -1"),
        ("mirostat", json!(3), "'mirostat'"),
        ("min_keep", json!(-1), "'min_keep'"),
        ("xtc_probability", json!(2), "xtc_probability must be in [0, 1]"),
        ("dynatemp_range", json!(1e300), "'dynatemp_range' must be between"),
        ("samplers", json!("kq?"), "samplers"),
        ("samplers", json!(["top_k", "nonsense"]), "nonsense"),
        ("samplers", json!([1, 2]), "'samplers'"),
        ("samplers", json!(7), "'samplers' must be a list"),
    ];
    assert_each_is_a_400(&url, cases).await;
}

/// `grammar`, `json_schema` and `response_format` constrain the output as in llama-server; a bad grammar or
/// schema is a 400 naming the field.
#[tokio::test]
async fn grammar_json_schema_and_response_format_constrain_the_output() {
    let yes_no = complete(json!({"prompt": "Is the sky blue?", "max_tokens": 8, "temperature": 0,
                                 "grammar": "root ::= (\"yes\" | \"no\")"}))
    .await;
    let text = text_of(&yes_no);
    assert!(text == "yes" || text == "no", "{text:?}");
    assert_eq!(yes_no["choices"][0]["finish_reason"], "stop", "{yes_no}");

    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                        "required": ["name", "age"], "additionalProperties": false});
    let url = format!("{}/v1/chat/completions", base());
    let chat = |format: Value, temperature: f64| {
        json!({"messages": [{"role": "user", "content": "Make up a person."}], "max_tokens": 96,
               "temperature": temperature, "seed": 5, "response_format": format})
    };
    for format in [
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}),
        json!({"type": "json_object", "schema": schema}),
    ] {
        for temperature in [0.0, 1.0] {
            let (status, v) = post(&url, chat(format.clone(), temperature)).await;
            assert_eq!(status, 200, "{v}");
            let content = v["choices"][0]["message"]["content"].as_str().unwrap();
            let person: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
            assert!(person["name"].is_string() && person["age"].is_i64(), "{person}");
        }
    }
    // json_object without a schema: any JSON object (this model writes long ones: whole when it stops).
    let (status, v) = post(&url, chat(json!({"type": "json_object"}), 0.0)).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with('{'), "{content:?}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).is_ok_and(|o| o.is_object()), "{content:?}");
    }
    // llama-server's own field on the completions endpoint.
    let v = complete(json!({"prompt": "Colour of grass:", "max_tokens": 8, "temperature": 0,
                             "json_schema": {"enum": ["red", "green", "blue"]}}))
    .await;
    assert!(["\"red\"", "\"green\"", "\"blue\""].contains(&text_of(&v).as_str()), "{v}");

    let completions = format!("{}/v1/completions", base());
    let cases = [
        ("grammar", json!("root ::= \"a"), "unterminated string"),
        ("grammar", json!("root ::= missing"), "'missing' is used but never defined"),
        ("grammar", json!(7), "grammar"),
        ("json_schema", json!({"type": "nonsense"}), "nonsense"),
        ("json_schema", json!("{}"), "must be a JSON Schema object"),
        ("response_format", json!({"type": "xml"}), "'text', 'json_object' or 'json_schema'"),
        ("response_format", json!("json"), "must be an object"),
    ];
    assert_each_is_a_400(&completions, cases).await;
    let (status, v) =
        post(&completions, json!({"prompt": "x", "grammar": "root ::= \"a\"", "json_schema": {"type": "string"}}))
            .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not both"), "{v}");
}

/// Gemini's structured output: `responseMimeType: application/json` with `responseSchema` (upper-case types,
/// `propertyOrdering`, `nullable`) or `responseJsonSchema`; a schema without the JSON type is a 400.
#[tokio::test]
async fn gemini_response_schema_constrains_the_output() {
    let url = format!("{}/v1beta/models/gemma-3-270m:generateContent", base());
    let ask = |config: Value| json!({"contents": [{"role": "user", "parts": [{"text": "Describe a fruit."}]}], "generationConfig": config});
    let openapi = json!({"type": "OBJECT", "properties": {
        "sweet": {"type": "BOOLEAN"}, "name": {"type": "STRING", "maxLength": 16},
        "colour": {"type": "STRING", "enum": ["red", "yellow", "green"], "nullable": true}},
        "required": ["name", "sweet", "colour"], "propertyOrdering": ["name", "colour", "sweet"]});
    let json_schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
        "sweet": {"type": "boolean"}}, "required": ["name", "sweet"], "additionalProperties": false});
    for (field, schema) in [("responseSchema", openapi), ("responseJsonSchema", json_schema)] {
        for temperature in [0.0, 1.0] {
            let config = json!({"responseMimeType": "application/json", field: schema, "temperature": temperature,
                                "seed": 9, "maxOutputTokens": 96});
            let (s, v) = post(&url, ask(config)).await;
            assert_eq!(s, 200, "{v}");
            let text = v["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap();
            let fruit: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{field}: {text:?}: {e}"));
            assert!(fruit["name"].is_string() && fruit["sweet"].is_boolean(), "{fruit}");
            if field == "responseSchema" {
                let keys: Vec<&String> = fruit.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["name", "colour", "sweet"], "propertyOrdering is kept: {text}");
                assert!(
                    fruit["colour"].is_null()
                        || ["red", "yellow", "green"].contains(&fruit["colour"].as_str().unwrap())
                );
            }
        }
    }
    for (config, param) in [
        (json!({"responseSchema": {"type": "STRING"}}), "responseSchema"),
        (json!({"responseMimeType": "text/x.enum"}), "responseMimeType"),
        (json!({"responseMimeType": "application/json", "responseSchema": {"type": "WHATEVER"}}), "responseSchema"),
    ] {
        let (s, e) = post(&url, ask(config)).await;
        assert_eq!((s, e["error"]["param"].as_str()), (400, Some(param)), "{e}");
    }
}
