//! OpenAI's Responses API (`/v1/responses`, `/v1/responses/input_tokens` and their `/responses` aliases) on
//! the real server and model, against llama-server's answers on the same requests
//! (testdata/goldens/llama_responses.json, recorded by scripts/llama_responses_goldens.py from llama.cpp
//! 0c1e570 on Gemma 3 270M with Gemma 3's template): the same greedy text, keys, event sequence, token counts
//! and refusals; and the official `openai` Python package's `client.responses` against it.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::{client, post, post_bytes};
use serde_json::{json, Value};

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/llama_responses.json");
        let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("goldens parse");
        assert!(g["llama_cpp"]["commit"].as_str().is_some_and(|c| c.len() == 40), "the llama.cpp commit is recorded");
        g
    })
}

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

/// Every key llama-server sends is there too (this server adds some of OpenAI's: `sequence_number`, ...);
/// llama-server's `timings` are its own.
fn has_llama_keys(ours: &Value, theirs: &Value, what: &str) {
    let mut want = keys(theirs);
    want.remove("timings");
    let have = keys(ours);
    assert!(want.is_subset(&have), "{what}: llama-server's keys {want:?}, ours {have:?}");
}

/// A stream's events: each block's `event:` name and `data:` JSON.
async fn events(r: reqwest::Response) -> Vec<(Option<String>, Value)> {
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.expect("stream read");
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(d).expect("data is JSON"));
                }
            }
            data.map(|d| (name, d))
        })
        .collect()
}

/// The event names with each run of text deltas as one (the pieces a token's text is sent in may differ).
fn sequence(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if n == "response.output_text.delta" && out.last() == Some(&n) {
            continue;
        }
        out.push(n);
    }
    out
}

fn text_of(response: &Value) -> &str {
    response["output"][0]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {response}"))
}

#[tokio::test]
async fn answers_llama_servers_text_with_its_keys() {
    for c in goldens()["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let want = &c["response"]["body"];
        let (status, v) = post(&format!("{}/v1/responses", base()), c["request"].clone()).await;
        assert_eq!(status, 200, "{name}: {v}");
        has_llama_keys(&v, want, name);
        has_llama_keys(&v["output"][0], &want["output"][0], name);
        has_llama_keys(&v["output"][0]["content"][0], &want["output"][0]["content"][0], name);
        has_llama_keys(&v["usage"], &want["usage"], name);
        for key in ["object", "status"] {
            assert_eq!(v[key], want[key], "{name}: {key}");
        }
        for key in ["type", "role", "status"] {
            assert_eq!(v["output"][0][key], want["output"][0][key], "{name}: output {key}");
        }
        assert!(
            v["id"].as_str().unwrap().starts_with("resp_")
                && v["output"][0]["id"].as_str().unwrap().starts_with("msg_")
        );
        assert_eq!(text_of(&v), text_of(want), "{name}: the greedy text");
        for key in ["input_tokens", "output_tokens", "total_tokens"] {
            assert_eq!(v["usage"][key], want["usage"][key], "{name}: usage {key}");
        }
        let (status, count) = post(&format!("{}/v1/responses/input_tokens", base()), c["request"].clone()).await;
        assert_eq!((status, &count), (200, &c["input_tokens"]["body"]), "{name}: input_tokens");
    }
}

#[tokio::test]
async fn streams_llama_servers_events() {
    for c in goldens()["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let want = c["stream"]["events"].as_array().unwrap();
        let mut body = c["request"].clone();
        body["stream"] = json!(true);
        let r = client().post(format!("{}/v1/responses", base())).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let got = events(r).await;
        for (n, d) in &got {
            assert_eq!(n.as_deref(), d["type"].as_str(), "{name}: each event's name is its data's type");
        }
        let names = |evs: Vec<String>| sequence(evs.into_iter());
        assert_eq!(
            names(got.iter().map(|(n, _)| n.clone().unwrap_or_default()).collect()),
            names(want.iter().map(|e| e["event"].as_str().unwrap().to_string()).collect()),
            "{name}: the event sequence"
        );
        // The first event of each kind has llama-server's keys (and its response object, its own).
        for w in want {
            let (n, d) = got.iter().find(|(n, _)| n.as_deref() == w["event"].as_str()).unwrap();
            has_llama_keys(d, &w["data"], n.as_deref().unwrap());
            if d["response"].is_object() {
                has_llama_keys(&d["response"], &w["data"]["response"], n.as_deref().unwrap());
            }
        }
        let deltas: String = got
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"))
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        let want_text = text_of(&c["response"]["body"]);
        assert_eq!(deltas, want_text, "{name}: the streamed text");
        let (_, done) = got.iter().find(|(n, _)| n.as_deref() == Some("response.output_text.done")).unwrap();
        assert_eq!(done["text"], want_text);
        let (_, completed) = got.last().unwrap();
        assert_eq!(text_of(&completed["response"]), want_text);
        assert_eq!(completed["response"]["status"], "completed");
        assert_eq!(completed["response"]["usage"]["output_tokens"], c["response"]["body"]["usage"]["output_tokens"]);
        let seq: Vec<u64> = got.iter().map(|(_, d)| d["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(seq, (0..got.len() as u64).collect::<Vec<_>>(), "{name}: sequence numbers");
    }
}

#[tokio::test]
async fn refuses_what_llama_server_refuses() {
    for e in goldens()["errors"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let mut request = e["request"].clone();
        request["max_output_tokens"] = json!(4);
        for (path, want) in [("/v1/responses", &e["response"]), ("/v1/responses/input_tokens", &e["input_tokens"])] {
            let (status, v) = post(&format!("{}{path}", base()), request.clone()).await;
            if name == "assistant_without_type" {
                // OpenAI's easy input message: an assistant item needs no `type` here (llama-server wants one).
                assert_eq!(status, 200, "{name} {path}: {v}");
                continue;
            }
            assert_eq!(status as u64, want["status"].as_u64().unwrap(), "{name} {path}: {v}");
            assert_eq!(v["error"]["type"], want["body"]["error"]["type"], "{name} {path}");
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(v["error"]["param"].is_string(), "{name} {path}: the field is named: {v}");
        }
    }
}

#[tokio::test]
async fn refuses_what_would_change_the_answer_if_ignored() {
    let tool = json!({"type": "function", "name": "f", "parameters": {"type": "object"}});
    let cases = [
        (json!({"input": "Hi", "tools": [tool]}), "tools"),
        (json!({"input": "Hi", "tools": [{"type": "web_search"}]}), "tools"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}),
            "input",
        ),
        (json!({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}), "input"),
        (json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}), "input"),
        (json!({"input": [{"type": "reasoning", "summary": [], "content": [{"text": "t"}]}]}), "input"),
        (json!({"input": "Hi", "n": 2}), "n"),
        (json!({"input": "Hi", "background": true}), "background"),
        (json!({"input": "Hi", "text": {"format": {"type": "xml"}}}), "text"),
        (json!({"input": "Hi", "max_output_tokens": 0}), "max_output_tokens"),
        (json!({"input": "Hi", "instructions": 5}), "instructions"),
        (json!({"input": []}), "input"),
        (json!({"input": "word ".repeat(1000)}), "input"),
        (json!({"input": "Hi", "temperature": "hot"}), "temperature"),
    ];
    for (body, param) in cases {
        let (status, v) = post(&format!("{}/v1/responses", base()), body.clone()).await;
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{body} → {v}");
    }
    let r = client().post(format!("{}/v1/responses", base())).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn hostile_bodies_are_a_4xx_with_a_message() {
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\xff\xfe{}".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{{\"input\": {}1{}}}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
        b"{\"input\": NaN}".to_vec(),
        b"\"just a string\"".to_vec(),
        b"[{\"input\": \"x\"}]".to_vec(),
    ];
    let inputs = [
        json!({}),
        json!([5]),
        json!([null]),
        json!([[]]),
        json!([{"role": 5, "content": "x"}]),
        json!([{"role": "tool", "content": "x"}]),
        json!([{"role": "user", "content": 5}]),
        json!([{"role": "user"}]),
        json!([{"role": "user", "content": [5]}]),
        json!([{"role": "user", "content": [{"type": "input_text", "text": 5}]}]),
        json!([{"role": "assistant", "type": "message", "content": [{"type": "output_text"}]}]),
        json!([{"role": "system", "content": "only a system message"}]),
        json!("x y ".repeat(1_000)),
    ];
    for input in inputs {
        bodies.push(json!({"input": input, "max_output_tokens": 1}).to_string().into_bytes());
    }
    for (field, value) in [
        ("max_output_tokens", json!(-1)),
        ("max_output_tokens", json!("7")),
        ("temperature", json!(1e300)),
        ("top_p", json!(2)),
        ("instructions", json!(["a"])),
        ("previous_response_id", json!(5)),
        ("tools", json!("all")),
        ("text", json!("json")),
        ("text", json!({"format": "json"})),
        ("text", json!({"format": {"type": "json_schema"}})),
        ("text", json!({"format": {"type": "json_schema", "schema": {"type": "nope"}}})),
        ("stream", json!("yes")),
        ("seed", json!("1")),
    ] {
        let mut b = json!({"input": "x", "max_output_tokens": 1});
        b[field] = value;
        bodies.push(b.to_string().into_bytes());
    }
    for path in ["/v1/responses", "/v1/responses/input_tokens"] {
        for body in &bodies {
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            let (status, v) = post_bytes(&format!("{}{path}", base()), body.clone()).await;
            if path.ends_with("input_tokens") && (200..300).contains(&status) {
                // The count reads only what shapes the prompt; sampling fields are the generation's.
                assert!(v["input_tokens"].as_u64().is_some_and(|n| n > 0), "{path} {shown} → {v}");
                continue;
            }
            assert!((400..500).contains(&status), "{path} {shown} → {status} {v}");
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path} {shown} → {v}");
        }
    }
}

#[tokio::test]
async fn text_format_constrains_the_answer() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    let body = json!({"input": "Say hi.", "max_output_tokens": 12, "temperature": 0,
                      "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}});
    let (status, v) = post(&format!("{}/v1/responses", base()), body).await;
    assert_eq!(status, 200, "{v}");
    let compact: String = text_of(&v).chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.starts_with("{\"a\":"), "{v}");
}

#[tokio::test]
async fn aliases_answer_as_the_v1_routes() {
    let g = goldens();
    let request = &g["cases"][0]["request"];
    let (status, v) = post(&format!("{}/responses", base()), request.clone()).await;
    assert_eq!((status, text_of(&v)), (200, text_of(&g["alias"]["body"])));
    let (status, count) = post(&format!("{}/responses/input_tokens", base()), request.clone()).await;
    assert_eq!((status, &count), (200, &g["alias_input_tokens"]["body"]));
}

#[test]
fn the_official_openai_package_uses_the_responses_api() {
    let checks = ["create ok", "stream ok", "items ok", "400 ok", "401 ok", "all ok"];
    common::python_client_passes("openai", "responses_client.py", &checks);
}
