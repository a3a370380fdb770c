//! Hostile request bodies through the real server (real model, as the other tests): every body-reading
//! endpoint answers each with a 4xx and an error object that says what is wrong, never a 500 or a dropped
//! connection. The fuzz target `server_request` (docs/fuzzing.md) covers the same parsers at random; these
//! are the cases worth keeping by name.

mod common;

use std::sync::OnceLock;

use common::client;
use serde_json::{json, Value};

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

/// Sends raw bytes as JSON; the status and the body read as JSON (`Null` when it is not).
async fn send(path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", base()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: the connection failed: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Each body must be a 4xx with `{"error": {"message": ...}}`.
async fn assert_refused(path: &str, bodies: Vec<Vec<u8>>) {
    for body in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        let (status, v) = send(path, body).await;
        assert!((400..500).contains(&status), "{path} {shown} → {status} {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{path} {shown} → {status} without an error message: {v}");
    }
}

/// Each body must be a 4xx with ollama's `{"error": "..."}` (the `/api/...` routes).
async fn assert_refused_ollama(path: &str, bodies: Vec<Vec<u8>>) {
    for body in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        let (status, v) = send(path, body).await;
        assert!((400..500).contains(&status), "{path} {shown} → {status} {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{path} {shown} → {status} without ollama's error message: {v}");
    }
}

/// `base` with `field` set to each value, as bytes.
fn with_each(base: &Value, field: &str, values: &[Value]) -> Vec<Vec<u8>> {
    values
        .iter()
        .map(|v| {
            let mut b = base.clone();
            b[field] = v.clone();
            b.to_string().into_bytes()
        })
        .collect()
}

/// Bodies that no endpoint takes: not JSON, not UTF-8, nested past the parser's depth, not an object.
fn malformed() -> Vec<Vec<u8>> {
    vec![
        b"".to_vec(),
        b"{\"prompt\": \"\xc3\x28\"}".to_vec(),
        b"\xff\xfe{}".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{{\"a\": {}1{}}}", "{\"b\": ".repeat(5_000), "}".repeat(5_000)).into_bytes(),
        b"{\"prompt\": NaN}".to_vec(),
        b"{\"prompt\": \"x\", \"max_tokens\": Infinity}".to_vec(),
        b"{\"prompt\": \"x\", \"temperature\": -1e999}".to_vec(),
        b"{\"prompt\": \"x\",}".to_vec(),
        b"\"just a string\"".to_vec(),
        b"[{\"prompt\": \"x\"}]".to_vec(),
        b"{\"prompt\": \"x\"} trailing".to_vec(),
    ]
}

/// Numbers past any limit, below zero, NaN-like strings and wrong types.
fn bad_numbers() -> Vec<Value> {
    vec![
        json!(-1),
        json!(-9_223_372_036_854_775_808i64),
        json!(1e300),
        json!(-1e300),
        json!("NaN"),
        json!("Infinity"),
        json!("7"),
        json!([1]),
        json!({"a": 1}),
        json!(true),
    ]
}

#[tokio::test]
async fn openai_completions_and_chat_refuse_hostile_bodies() {
    let completion = json!({"prompt": "x", "max_tokens": 1});
    let mut bodies = malformed();
    for field in ["max_tokens", "n", "logprobs", "top_k", "min_keep", "dry_allowed_length"] {
        let mut values = bad_numbers();
        values.push(json!(18_446_744_073_709_551_616f64));
        values.push(json!(3.5));
        bodies.extend(with_each(&completion, field, &values));
    }
    for field in ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty"] {
        bodies.extend(with_each(&completion, field, &[json!("NaN"), json!(1e300), json!(-1e300), json!([0.5])]));
    }
    bodies.extend(with_each(
        &completion,
        "logit_bias",
        &[
            json!({"4294967296": 1}),
            json!({"99999999999999999999": 1}),
            json!({"-1": 1}),
            json!({"262144": 1}),
            json!({"1": "NaN"}),
            json!({"1": 1e300}),
            json!([[1, 1]]),
            json!("1:5"),
        ],
    ));
    bodies.extend(with_each(
        &completion,
        "prompt",
        &[
            json!([]),
            json!([[]]),
            json!([-1]),
            json!([4_294_967_296u64]),
            json!([1.5]),
            json!([null]),
            json!([["a"]]),
            json!({"text": "x"}),
            json!(vec![1000; 600]),
        ],
    ));
    bodies.extend(with_each(&completion, "stop", &[json!(vec!["a"; 17]), json!([null]), json!(5)]));
    bodies.extend(with_each(&completion, "seed", &[json!("1"), json!(1.5), json!(1e300)]));
    bodies.extend(with_each(&completion, "samplers", &[json!("zzz"), json!(["nope"]), json!(5)]));
    bodies.extend(with_each(
        &completion,
        "grammar",
        &[json!("root ::= ["), json!("root ::= root"), json!("root ::= undefined"), json!(5)],
    ));
    bodies.extend(with_each(&completion, "json_schema", &[json!("x"), json!(5), json!(["a"])]));
    bodies.extend(with_each(&completion, "dry_sequence_breakers", &[json!([]), json!([1]), json!(vec!["a"; 33])]));
    assert_refused("/v1/completions", bodies).await;

    let chat = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1});
    let mut bodies = malformed();
    bodies.extend(with_each(
        &chat,
        "messages",
        &[
            json!([]),
            json!({}),
            json!([{}]),
            json!([{"role": 5, "content": "x"}]),
            json!([{"role": "wizard", "content": "x"}]),
            json!([{"role": "user", "content": 5}]),
            json!([{"role": "user", "content": [{"type": "text"}]}]),
            json!([{"role": "user", "content": [{"type": "text", "text": "x y ".repeat(1_000)}]}]),
            json!(["x"]),
        ],
    ));
    bodies.extend(with_each(&chat, "top_logprobs", &[json!(21), json!(-1), json!(1e300)]));
    bodies.extend(with_each(&chat, "response_format", &[json!({"type": "xml"}), json!("json"), json!({})]));
    bodies.extend(with_each(&chat, "stream_options", &[json!({"include_usage": "yes"}), json!([])]));
    assert_refused("/v1/chat/completions", bodies).await;
}

#[tokio::test]
async fn llama_native_completion_refuses_hostile_bodies() {
    let completion = json!({"prompt": "x", "n_predict": 1});
    let mut bodies = malformed();
    bodies.extend(with_each(
        &completion,
        "n_predict",
        &[
            json!(-2),
            json!(-9_223_372_036_854_775_808i64),
            json!(1e300),
            json!("NaN"),
            json!(18_446_744_073_709_551_615u64),
        ],
    ));
    bodies.extend(with_each(
        &completion,
        "n_probs",
        &[json!(101), json!(-1), json!(18_446_744_073_709_551_615u64), json!(1e300), json!("5")],
    ));
    bodies.extend(with_each(
        &completion,
        "top_k",
        &[json!(1e300), json!("NaN"), json!(1.5), json!(18_446_744_073_709_551_615u64)],
    ));
    bodies.extend(with_each(&completion, "seed", &[json!(-2), json!(1.5), json!("x")]));
    bodies.extend(with_each(&completion, "repeat_last_n", &[json!(-2), json!(1e300), json!("all")]));
    bodies.extend(with_each(&completion, "dry_penalty_last_n", &[json!(-2), json!(4_294_967_296u64)]));
    bodies.extend(with_each(
        &completion,
        "logit_bias",
        &[
            json!([[262_144, 1]]),
            json!([[-1, 1]]),
            json!([[4_294_967_296u64, 1]]),
            json!([[1, "NaN"]]),
            json!([[1, true]]),
            json!([[1]]),
            json!([1, 2]),
            json!({"999999999": 1}),
        ],
    ));
    bodies.extend(with_each(&completion, "prompt", &[json!([]), json!(vec!["x"; 17]), json!(vec![1000; 600])]));
    bodies.extend(with_each(&completion, "temperature", &[json!(1e300), json!("hot")]));
    bodies.extend(with_each(&completion, "mirostat", &[json!(3), json!(-1)]));
    bodies.extend(with_each(&completion, "ignore_eos", &[json!("yes")]));
    assert_refused("/completion", bodies).await;
}

#[tokio::test]
async fn gemini_generate_and_generate_refuse_hostile_bodies() {
    let gemini = json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 1}});
    let config = |c: Value| {
        let mut b = gemini.clone();
        b["generationConfig"] = c;
        b.to_string().into_bytes()
    };
    let mut bodies = malformed();
    bodies.extend(with_each(
        &gemini,
        "contents",
        &[
            json!([]),
            json!([{}]),
            json!([{"role": "god", "parts": [{"text": "x"}]}]),
            json!([{"parts": [{"inline": 1}]}]),
        ],
    ));
    bodies.extend(with_each(&gemini, "systemInstruction", &[json!("be nice"), json!({"parts": 5})]));
    for c in [
        json!({"maxOutputTokens": 0}),
        json!({"maxOutputTokens": -1}),
        json!({"maxOutputTokens": 1e300}),
        json!({"candidateCount": 17}),
        json!({"topK": -1}),
        json!({"topP": "NaN"}),
        json!({"temperature": 1e300}),
        json!({"responseMimeType": "text/xml"}),
        json!({"responseMimeType": "text/plain", "responseSchema": {"type": "OBJECT"}}),
        json!({"stopSequences": vec!["a"; 17]}),
        json!("hot"),
    ] {
        bodies.push(config(c));
    }
    assert_refused("/v1beta/models/m:generateContent", bodies.clone()).await;
    assert_refused("/v1beta/models/m:streamGenerateContent", bodies).await;

    let generate = json!({"prompt": "x", "max_tokens": 1});
    let mut bodies = malformed();
    bodies.extend(with_each(&generate, "prompt", &[json!([1, 2]), json!(5)]));
    bodies.extend(with_each(
        &generate,
        "session",
        &[json!(""), json!("a b"), json!("x".repeat(129)), json!(5), json!("\u{0}")],
    ));
    bodies.extend(with_each(&generate, "n", &[json!(2), json!(0)]));
    bodies.extend(with_each(&generate, "max_tokens", &bad_numbers()));
    assert_refused("/generate", bodies).await;
}

#[tokio::test]
async fn embeddings_and_tokenizer_endpoints_refuse_hostile_bodies() {
    // The default model makes no embeddings: these endpoints must still answer a 4xx, whatever the body.
    let mut bodies = malformed();
    bodies.extend(with_each(&json!({"input": "x"}), "input", &[json!([]), json!([[-1]]), json!([1e300]), json!(5)]));
    bodies.push(json!({"input": "x"}).to_string().into_bytes());
    assert_refused("/v1/embeddings", bodies).await;
    assert_refused("/v1beta/models/m:embedContent", malformed()).await;
    assert_refused("/v1beta/models/m:batchEmbedContents", malformed()).await;

    let mut bodies = malformed();
    // llama-server's content: a string or a list of strings and token ids.
    let ids = [json!(5), json!(["x", {}]), json!([1.5]), json!([-1]), json!(["x", 262_144]), json!({"a": 1})];
    bodies.extend(with_each(&json!({"content": "x"}), "content", &ids));
    for flag in ["add_special", "parse_special", "with_pieces"] {
        bodies.extend(with_each(&json!({"content": "x"}), flag, &[json!("yes"), json!(1)]));
    }
    assert_refused("/tokenize", bodies).await;
    let mut bodies = malformed();
    bodies.extend(with_each(
        &json!({"tokens": [1]}),
        "tokens",
        &[json!([262_144]), json!([-1]), json!([4_294_967_296u64]), json!([1.5]), json!("1 2")],
    ));
    assert_refused("/detokenize", bodies).await;
}

#[tokio::test]
async fn ollama_endpoints_refuse_hostile_bodies() {
    let generate = json!({"prompt": "x", "stream": false, "options": {"num_predict": 1}});
    let options = |o: Value| {
        let mut b = generate.clone();
        b["options"] = o;
        b.to_string().into_bytes()
    };
    let mut bodies = malformed();
    bodies.extend(with_each(&generate, "prompt", &[json!(5), json!(["x"]), json!({"text": "x"})]));
    bodies.extend(with_each(
        &generate,
        "context",
        &[json!([-1]), json!([262_144]), json!([4_294_967_296u64]), json!([1.5]), json!("1 2"), json!([null])],
    ));
    bodies.extend(with_each(&generate, "format", &[json!(5), json!("xml"), json!(["json"]), json!({"type": 5})]));
    bodies.extend(with_each(&generate, "raw", &[json!("yes"), json!(1)]));
    bodies.extend(with_each(&generate, "truncate", &[json!("yes"), json!(1)]));
    bodies.extend(with_each(&generate, "shift", &[json!("no"), json!(0)]));
    bodies.extend(with_each(&generate, "system", &[json!(5)]));
    bodies.extend(with_each(&generate, "stream", &[json!("no")]));
    bodies.extend(with_each(&generate, "think", &[json!(true), json!("deep"), json!(5)]));
    bodies.extend(with_each(&generate, "keep_alive", &[json!([]), json!({})]));
    bodies.extend(with_each(&generate, "top_logprobs", &[json!(21), json!(-1), json!(1e300), json!("2")]));
    bodies.extend(with_each(&generate, "options", &[json!(5), json!("hot"), json!([1])]));
    for field in ["num_predict", "top_k", "seed", "repeat_last_n", "num_ctx", "mirostat", "num_keep"] {
        let mut values = bad_numbers();
        values.push(json!(3.5));
        // ollama takes -1 for these (seed: random; repeat_last_n: the whole context; num_predict: no limit;
        // top_k: off), and any negative number for the last two.
        let negative_ok = ["num_predict", "top_k"].contains(&field);
        let taken = |v: &Value| v.as_i64().is_some_and(|n| n == -1 || (n < 0 && negative_ok));
        bodies.extend(values.into_iter().filter(|v| !taken(v)).map(|v| options(json!({field: v}))));
    }
    for field in ["temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty"] {
        for v in [json!("NaN"), json!(1e300), json!(-1e300), json!([0.5])] {
            bodies.push(options(json!({field: v})));
        }
    }
    for stop in [json!(vec!["a"; 17]), json!([null]), json!(5)] {
        bodies.push(options(json!({"stop": stop})));
    }
    assert_refused_ollama("/api/generate", bodies).await;

    let chat = json!({"messages": [{"role": "user", "content": "x"}], "stream": false, "options": {"num_predict": 1}});
    let mut bodies = malformed();
    bodies.extend(with_each(
        &chat,
        "messages",
        &[
            json!({}),
            json!("x"),
            json!([5]),
            json!([{}]),
            json!([{"role": 5, "content": "x"}]),
            json!([{"role": "wizard", "content": "x"}]),
            json!([{"role": "user", "content": 5}]),
            json!([{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
            json!([{"role": "user", "content": "x y ".repeat(1_000)}]),
            json!([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]),
        ],
    ));
    bodies.extend(with_each(&chat, "tools", &[json!([{"type": "function"}])]));
    bodies.extend(with_each(&chat, "format", &[json!(5), json!("yaml")]));
    assert_refused_ollama("/api/chat", bodies).await;

    // The default model makes no embeddings: these must still answer a 4xx, whatever the body.
    let mut bodies = malformed();
    bodies.extend(with_each(&json!({"input": "x"}), "input", &[json!([1]), json!(5), json!([["x"]])]));
    assert_refused_ollama("/api/embed", bodies).await;
    assert_refused_ollama("/api/embeddings", malformed()).await;
    let mut bodies = malformed();
    bodies.extend(with_each(&json!({"model": "m"}), "model", &[json!(5), json!(""), json!(null)]));
    bodies.extend(with_each(&json!({"model": "m"}), "verbose", &[json!("yes")]));
    assert_refused_ollama("/api/show", bodies).await;
}

#[tokio::test]
async fn llama_server_side_endpoints_refuse_hostile_bodies() {
    let chat = json!({"messages": [{"role": "user", "content": "x"}]});
    let mut bodies = malformed();
    let messages = [
        json!("x"),
        json!([1]),
        json!([{"role": 5, "content": "x"}]),
        json!([{"role": "wizard", "content": "x"}]),
        json!([{"role": "user"}]),
        json!([{"role": "user", "content": [{"type": "image_url"}]}]),
        json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
               {"role": "assistant", "content": "c"}]),
    ];
    bodies.extend(with_each(&chat, "messages", &messages));
    bodies.extend(with_each(&chat, "add_generation_prompt", &[json!("yes"), json!(0)]));
    assert_refused("/apply-template", bodies).await;
    // The generative model makes no embeddings, and POST /props is off: 501s, not 4xx; their bodies are not
    // read. /lora-adapters reads its body.
    let mut bodies = malformed();
    bodies.retain(|b| !b.starts_with(b"[{"));
    bodies.push(b"{}".to_vec());
    bodies.push(b"5".to_vec());
    assert_refused("/lora-adapters", bodies).await;
}
