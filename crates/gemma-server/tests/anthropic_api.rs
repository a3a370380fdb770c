//! Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) on the real server and model, against
//! llama-server's answers to the same greedy requests (testdata/goldens/llama_anthropic.json, recorded by
//! scripts/llama_anthropic_goldens.py from llama.cpp 0c1e570 on Gemma 3 270M with Gemma 3's template): the same
//! keys and event sequence, the same text and token counts; and the 400s, in Anthropic's error envelope.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::{client, post, post_bytes};
use serde_json::{json, Value};

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/llama_anthropic.json");
        let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("goldens parse");
        assert!(g["llama_cpp"]["commit"].as_str().is_some_and(|c| c.len() == 40), "the llama.cpp commit is recorded");
        g
    })
}

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

const KEY: &str = "anthropic-api-test-key";

fn locked() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut c = common::test_config();
        c.api_keys = vec![KEY.into()];
        common::start(c)
    })
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

/// Every key llama-server gives, at every level of objects, we give too (we may add some: see docs).
fn assert_has_keys(ours: &Value, theirs: &Value, at: &str) {
    if let (Some(o), Some(t)) = (ours.as_object(), theirs.as_object()) {
        for (k, tv) in t {
            let ov = o.get(k).unwrap_or_else(|| panic!("{at}.{k} missing from {ours}"));
            assert_has_keys(ov, tv, &format!("{at}.{k}"));
        }
    }
}

/// A streamed answer's events: `(name, data)`, from the SSE `event:` and `data:` lines.
async fn sse(url: &str, body: Value) -> Vec<(String, Value)> {
    let r = client().post(url).json(&body).send().await.expect("request sent");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text = r.text().await.expect("stream read");
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = Some(n.to_string());
        } else if let Some(d) = line.strip_prefix("data: ") {
            let n = name.take().unwrap_or_else(|| panic!("a data line without an event line in:\n{text}"));
            let data: Value = serde_json::from_str(d).expect("event data is JSON");
            assert_eq!(data["type"], n.as_str(), "the event's name is its data's type");
            out.push((n, data));
        }
    }
    out
}

/// The event names with runs of `content_block_delta` folded into one (how text splits into deltas may differ).
fn sequence<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !(n == "content_block_delta" && out.last() == Some(&n)) {
            out.push(n);
        }
    }
    out
}

fn streamed_text(events: &[(String, Value)]) -> String {
    events.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect()
}

/// The prompt tokens an answer reports, cached or not.
fn prompt_tokens(usage: &Value) -> u64 {
    usage["input_tokens"].as_u64().unwrap() + usage["cache_read_input_tokens"].as_u64().unwrap()
}

/// A final assistant message is continued: llama-server's answer repeats its text, Anthropic's (and ours) does not.
fn prefill(request: &Value) -> String {
    let last = request["messages"].as_array().and_then(|m| m.last()).unwrap();
    if last["role"] == "assistant" {
        last["content"].as_str().unwrap().to_string()
    } else {
        String::new()
    }
}

fn check_answer(name: &str, request: &Value, ours: &Value, theirs: &Value) {
    assert_has_keys(ours, theirs, name);
    assert_eq!(keys(ours), keys(theirs), "{name}: {ours}");
    assert_eq!((&ours["type"], &ours["role"]), (&json!("message"), &json!("assistant")), "{name}");
    assert!(ours["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{name}: {ours}");
    let text = ours["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(ours["content"][0]["type"], "text", "{name}: {ours}");
    assert_eq!(format!("{}{text}", prefill(request)), theirs["content"][0]["text"].as_str().unwrap(), "{name}");
    assert_eq!(ours["stop_sequence"], theirs["stop_sequence"], "{name}");
    // llama-server says `end_turn` when a stop sequence matched; Anthropic's API (and we) say `stop_sequence`.
    let want = if theirs["stop_sequence"].is_string() { json!("stop_sequence") } else { theirs["stop_reason"].clone() };
    assert_eq!(ours["stop_reason"], want, "{name}");
    assert_eq!(prompt_tokens(&ours["usage"]), prompt_tokens(&theirs["usage"]), "{name}: {ours}");
    assert_eq!(ours["usage"]["output_tokens"], theirs["usage"]["output_tokens"], "{name}");
}

#[tokio::test]
async fn greedy_answers_match_llama_server_plain_and_streamed() {
    let url = format!("{}/v1/messages", base());
    let mut cases: Vec<Value> = goldens()["generations"].as_array().unwrap().clone();
    // Without `max_tokens` both ask for up to 4096 tokens; a stop sequence ends it first.
    cases.extend(goldens()["errors"].as_array().unwrap().iter().filter(|c| c["name"] == "no_max_tokens").cloned());
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let request = &case["request"];
        let theirs = &case["response"]["body"];
        let (status, ours) = post(&url, request.clone()).await;
        assert_eq!(status, 200, "{name}: {ours}");
        check_answer(name, request, &ours, theirs);
        let Some(their_events) = case["stream"]["events"].as_array() else { continue };
        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        let events = sse(&url, streamed).await;
        assert_eq!(
            sequence(events.iter().map(|(n, _)| n.as_str())),
            sequence(their_events.iter().map(|e| e["event"].as_str().unwrap())),
            "{name}: the event sequence"
        );
        for (n, data) in &events {
            let theirs = their_events.iter().find(|e| e["event"] == n.as_str()).unwrap();
            assert_has_keys(data, &theirs["data"], &format!("{name}: {n}"));
        }
        assert_eq!(streamed_text(&events), ours["content"][0]["text"].as_str().unwrap_or_default(), "{name}");
        let start = &events[0].1["message"];
        assert!(start["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{name}: {start}");
        assert_eq!(start["content"], json!([]), "{name}");
        assert_eq!(prompt_tokens(&start["usage"]), prompt_tokens(&theirs["usage"]), "{name}");
        let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(delta["delta"]["stop_reason"], ours["stop_reason"], "{name}");
        assert_eq!(delta["delta"]["stop_sequence"], ours["stop_sequence"], "{name}");
        assert_eq!(delta["usage"]["output_tokens"], ours["usage"]["output_tokens"], "{name}");
    }
}

#[tokio::test]
async fn count_tokens_match_llama_server_and_the_answers_usage() {
    for case in goldens()["count_tokens"].as_array().unwrap() {
        let (status, v) = post(&format!("{}/v1/messages/count_tokens", base()), case["request"].clone()).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v, case["response"]["body"], "{}", case["name"]);
    }
    let plain = &goldens()["generations"][0];
    assert_eq!(plain["name"], "plain");
    assert_eq!(
        goldens()["count_tokens"][0]["response"]["body"]["input_tokens"].as_u64(),
        Some(prompt_tokens(&plain["response"]["body"]["usage"])),
        "count_tokens counts the prompt the answer reads"
    );
}

async fn assert_400(url: &str, body: Value, param: &str) {
    let (status, v) = post(url, body.clone()).await;
    assert_eq!(status, 400, "{body} -> {v}");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["param"], param, "{body} -> {v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn bad_and_unsupported_requests_are_400_naming_the_field() {
    let url = format!("{}/v1/messages", base());
    let count = format!("{}/v1/messages/count_tokens", base());
    let user = json!([{"role": "user", "content": "Hi"}]);
    // llama-server answers these with a 400 too.
    for case in goldens()["errors"].as_array().unwrap() {
        if case["name"] == "bad_temperature_type" {
            assert_eq!(case["response"]["status"], 400);
            assert_400(&url, case["request"].clone(), "temperature").await;
        }
    }
    // llama-server answers these with a 500 ('messages' missing) or a generation from whatever it was given;
    // they are the client's mistakes, so a 400 here.
    assert_400(&url, json!({"max_tokens": 4}), "messages").await;
    assert_400(&count, json!({}), "messages").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": "hi"}), "messages").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": []}), "messages").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}), "messages").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": [{"role": "user"}]}), "messages").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": [{"role": "user", "content": 7}]}), "messages").await;
    assert_400(&url, json!({"max_tokens": 0, "messages": user}), "max_tokens").await;
    assert_400(&url, json!({"max_tokens": -1, "messages": user}), "max_tokens").await;
    assert_400(&url, json!({"max_tokens": 4, "top_p": 2, "messages": user}), "top_p").await;
    assert_400(&url, json!({"max_tokens": 4, "top_k": "x", "messages": user}), "top_k").await;
    assert_400(&url, json!({"max_tokens": 4, "stop_sequences": "x", "messages": user}), "stop_sequences").await;
    assert_400(&url, json!({"max_tokens": 4, "stream": "yes", "messages": user}), "stream").await;
    assert_400(&url, json!({"max_tokens": 4, "system": 3, "messages": user}), "system").await;
    assert_400(&url, json!({"max_tokens": 4, "system": [{"type": "image"}], "messages": user}), "system").await;
    // What would change the answer if ignored is refused: tools, tool blocks, images, thinking.
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    assert_400(&url, json!({"max_tokens": 4, "messages": user, "tools": tools}), "tools").await;
    assert_400(&count, json!({"messages": user, "tools": tools}), "tools").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": user, "tool_choice": {"type": "any"}}), "tool_choice").await;
    assert_400(
        &url,
        json!({"max_tokens": 4, "messages": user, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
        "thinking",
    )
    .await;
    let schema = json!({"type": "json_schema", "schema": {"type": "object"}});
    assert_400(&url, json!({"max_tokens": 4, "messages": user, "output_format": schema}), "output_format").await;
    assert_400(&url, json!({"max_tokens": 4, "messages": user, "output_config": {"format": schema}}), "output_config")
        .await;
    for block in [
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}),
        json!({"type": "tool_use", "id": "t1", "name": "f", "input": {}}),
        json!({"type": "tool_result", "tool_use_id": "t1", "content": "42"}),
        json!({"type": "thinking", "thinking": "hmm", "signature": ""}),
        json!({"type": "document", "source": {"type": "text", "data": "x"}}),
    ] {
        let messages = json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}, block]}]);
        assert_400(&url, json!({"max_tokens": 4, "messages": messages}), "messages").await;
    }
    // An over-long prompt names the context.
    let long = json!([{"role": "user", "content": "word ".repeat(2000)}]);
    let (status, v) = post(&url, json!({"max_tokens": 4, "messages": long})).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("context_length_exceeded")), "{v}");
    // Not JSON at all.
    let r = client().post(&url).header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!((&v["type"], &v["error"]["type"]), (&json!("error"), &json!("invalid_request_error")), "{v}");
    // Harmless fields are accepted: a disabled thinking, `tool_choice` auto with no tools, metadata, cache_control.
    let (status, v) = post(
        &url,
        json!({"max_tokens": 2, "temperature": 0, "thinking": {"type": "disabled"}, "tool_choice": {"type": "auto"},
               "metadata": {"user_id": "u"}, "tools": [],
               "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
               "messages": user}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn the_api_key_is_read_from_x_api_key_or_authorization() {
    let body = json!({"max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]});
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let url = format!("{}{path}", locked());
        let send = |h: Option<(&'static str, String)>| {
            let mut r = client().post(&url).json(&body);
            if let Some((k, v)) = h {
                r = r.header(k, v);
            }
            r.send()
        };
        let ok = send(Some(("x-api-key", KEY.to_string()))).await.unwrap();
        assert_eq!(ok.status().as_u16(), 200, "{path}");
        let ok = send(Some(("authorization", format!("Bearer {KEY}")))).await.unwrap();
        assert_eq!(ok.status().as_u16(), 200, "{path}");
        for h in [None, Some(("x-api-key", "wrong".to_string()))] {
            let r = send(h).await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "{path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!((&v["type"], &v["error"]["type"]), (&json!("error"), &json!("authentication_error")), "{v}");
        }
    }
}

#[tokio::test]
async fn hostile_bodies_are_4xx_in_anthropics_envelope() {
    let user = json!([{"role": "user", "content": "x"}]);
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{\"messages\": \"\xc3\x28\"}".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        b"{\"max_tokens\": Infinity}".to_vec(),
        b"\"just a string\"".to_vec(),
    ];
    for (field, values) in [
        ("max_tokens", vec![json!(-1), json!(1e300), json!("NaN"), json!([1]), json!(true)]),
        ("temperature", vec![json!(-1), json!(1e300), json!("NaN")]),
        ("top_k", vec![json!(-1), json!(1.5), json!({"a": 1})]),
        ("stop_sequences", vec![json!(vec!["a"; 17]), json!([null]), json!(5)]),
        ("system", vec![json!([{"type": "text"}]), json!([5]), json!({"text": "x"})]),
        (
            "messages",
            vec![
                json!({}),
                json!([{}]),
                json!(["x"]),
                json!([{"role": 5, "content": "x"}]),
                json!([{"role": "user", "content": [{}]}]),
                json!([{"role": "user", "content": [{"type": 7}]}]),
                json!([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]),
            ],
        ),
    ] {
        for v in values {
            let mut b = json!({"max_tokens": 1, "messages": user});
            b[field] = v;
            bodies.push(b.to_string().into_bytes());
        }
    }
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        for body in &bodies {
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            let (status, v) = post_bytes(&format!("{}{path}", base()), body.clone()).await;
            // count_tokens reads only the prompt's fields: a bad `max_tokens` or sampling field is not its concern.
            if path.ends_with("count_tokens") && status == 200 {
                assert!(v["input_tokens"].as_u64().is_some_and(|n| n > 0), "{path} {shown} → {v}");
                continue;
            }
            assert!((400..500).contains(&status), "{path} {shown} → {status} {v}");
            assert_eq!(v["type"], "error", "{path} {shown} → {v}");
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path} {shown} → {v}");
        }
    }
}
