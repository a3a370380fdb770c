//! ollama's REST API on the real server and model: `/api/generate` and `/api/chat` give the text the other
//! endpoints give for the same prompt and settings (greedy `/completion`, `/v1/chat/completions`), streamed
//! NDJSON pieces add up to the plain answer, `context` continues a conversation token for token, `format`,
//! stop, `num_predict`, seeds and log-probabilities, the model listing endpoints, and every refusal in
//! ollama's `{"error": "..."}` shape.

mod common;

use std::sync::OnceLock;

use common::{client, post};
use serde_json::{json, Value};

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

fn url(path: &str) -> String {
    format!("{}{path}", base())
}

/// A non-streamed ollama answer (200 expected).
async fn ask(path: &str, mut body: Value) -> Value {
    body["stream"] = json!(false);
    let (status, v) = post(&url(path), body.clone()).await;
    assert_eq!(status, 200, "{path} {body} → {v}");
    v
}

/// A streamed answer: the NDJSON objects in order.
async fn stream_lines(path: &str, body: Value) -> Vec<Value> {
    let r = client().post(url(path)).json(&body).send().await.expect("request sent");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.expect("stream read");
    assert!(text.ends_with('\n'), "{text}");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The 4xx of `body` on `path` in ollama's shape; returns the message.
async fn refused(path: &str, body: Value, status: u16) -> String {
    let (got, v) = post(&url(path), body.clone()).await;
    assert_eq!(got, status, "{path} {body} → {v}");
    let message = v["error"].as_str().unwrap_or_else(|| panic!("{path} {body}: not ollama's error shape: {v}"));
    assert!(!message.is_empty());
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    message.to_string()
}

fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && s.ends_with('Z')
}

/// The durations and counts of a closing object.
fn assert_summary(v: &Value) {
    assert_eq!(v["done"], true, "{v}");
    assert!(is_rfc3339(v["created_at"].as_str().unwrap()), "{v}");
    for key in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(v[key].as_u64().is_some(), "{key} missing: {v}");
    }
    assert!(v["total_duration"].as_u64() >= v["eval_duration"].as_u64(), "{v}");
    assert!(v["prompt_eval_count"].as_u64().unwrap() > 0, "{v}");
    assert!(["stop", "length"].contains(&v["done_reason"].as_str().unwrap()), "{v}");
}

async fn tokenize(content: &str, add_special: bool) -> Vec<u64> {
    let (status, v) = post(&url("/tokenize"), json!({"content": content, "add_special": add_special})).await;
    assert_eq!(status, 200, "{v}");
    v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

/// Gemma's user turn and the opening of the model's, as its chat template writes them.
fn gemma_turn(text: &str) -> String {
    format!("<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n")
}

#[tokio::test]
async fn greedy_raw_generate_is_llama_servers_completion() {
    let prompt = "The three primary colours are";
    let native = {
        let (status, v) = post(&url("/completion"), json!({"prompt": prompt, "n_predict": 12, "temperature": 0})).await;
        assert_eq!(status, 200, "{v}");
        v
    };
    let v = ask(
        "/api/generate",
        json!({"model": "gemma3", "prompt": prompt, "raw": true, "options": {"temperature": 0, "num_predict": 12}}),
    )
    .await;
    assert_eq!(v["response"], native["content"], "{v}");
    assert_eq!(v["eval_count"], 12);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["prompt_eval_count"], native["tokens_evaluated"]);
    assert!(v.get("context").is_none(), "raw mode returns no context: {v}");
    assert!(v["model"].as_str().unwrap().ends_with(":latest"), "the served model is named: {v}");
    assert_summary(&v);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..4], ["model", "created_at", "response", "done"], "ollama's key order");
}

#[tokio::test]
async fn templated_generate_and_chat_answer_as_openai_chat() {
    let question = "What is the capital of France?";
    let openai = |messages: Value| async move {
        let (status, v) =
            post(&url("/v1/chat/completions"), json!({"messages": messages, "max_tokens": 10, "temperature": 0})).await;
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    let options = json!({"temperature": 0, "num_predict": 10});

    // /api/generate puts the prompt in a user turn (with the system message) of the model's template.
    let plain = ask("/api/generate", json!({"model": "m", "prompt": question, "options": options})).await;
    assert_eq!(plain["response"], openai(json!([{"role": "user", "content": question}])).await);
    let with_system =
        ask("/api/generate", json!({"prompt": question, "system": "Answer in French.", "options": options})).await;
    let messages = json!([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": question}]);
    assert_eq!(with_system["response"], openai(messages.clone()).await);

    // /api/chat renders the messages with the same template; roles are read in any case, as ollama does.
    let chat = ask("/api/chat", json!({"model": "m", "messages": messages, "options": options})).await;
    assert_eq!(chat["message"]["role"], "assistant");
    assert_eq!(chat["message"]["content"], with_system["response"]);
    assert!(chat.get("context").is_none() && chat.get("response").is_none(), "{chat}");
    assert_summary(&chat);
    let history = json!([
        {"role": "USER", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": question},
    ]);
    let chat = ask("/api/chat", json!({"messages": history, "options": options})).await;
    let history = json!([
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": question},
    ]);
    assert_eq!(chat["message"]["content"], openai(history).await);
}

#[tokio::test]
async fn streamed_lines_add_up_to_the_plain_answer() {
    let options = json!({"temperature": 0, "num_predict": 16});
    for (path, body, text_of) in [
        (
            "/api/generate",
            json!({"prompt": "Write a sentence about the sea.", "options": options}),
            (|v: &Value| v["response"].as_str().map(str::to_string)) as fn(&Value) -> Option<String>,
        ),
        (
            "/api/chat",
            json!({"messages": [{"role": "user", "content": "Write a sentence about the sea."}], "options": options}),
            |v: &Value| v["message"]["content"].as_str().map(str::to_string),
        ),
    ] {
        let plain = ask(path, body.clone()).await;
        // `stream` defaults to true.
        let lines = stream_lines(path, body).await;
        let (last, pieces) = lines.split_last().unwrap();
        assert!(pieces.len() >= 2, "{lines:?}");
        for p in pieces {
            assert_eq!(p["done"], false, "{p}");
            assert!(p.get("done_reason").is_none() && p.get("eval_count").is_none(), "{p}");
            assert!(is_rfc3339(p["created_at"].as_str().unwrap()));
        }
        let streamed: String = pieces.iter().map(|p| text_of(p).unwrap()).collect();
        assert_eq!(streamed, text_of(&plain).unwrap(), "{path}");
        assert_eq!(text_of(last).as_deref(), Some(""), "{last}");
        assert_summary(last);
        for key in ["eval_count", "prompt_eval_count", "done_reason", "context"] {
            assert_eq!(last.get(key), plain.get(key), "{path} {key}");
        }
        if path == "/api/chat" {
            assert_eq!(last["message"]["role"], "assistant");
        }
    }
}

#[tokio::test]
async fn context_continues_the_tokens_of_the_last_answer() {
    let options = json!({"temperature": 0, "num_predict": 8});
    let first = ask("/api/generate", json!({"prompt": "My name is Ada.", "options": options})).await;
    let context: Vec<u64> = first["context"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    // The context is the prompt's tokens (template and BOS included), then the answer's.
    let prompt_ids = tokenize(&gemma_turn("My name is Ada."), true).await;
    assert_eq!(first["prompt_eval_count"], prompt_ids.len());
    assert_eq!(&context[..prompt_ids.len()], prompt_ids);
    let answer_ids = tokenize(first["response"].as_str().unwrap(), false).await;
    assert_eq!(&context[prompt_ids.len()..], answer_ids);

    let second =
        ask("/api/generate", json!({"prompt": "What is my name?", "context": context, "options": options})).await;
    // The same as generating from the concatenated tokens.
    let mut all = context.clone();
    all.extend(tokenize(&gemma_turn("What is my name?"), false).await);
    let (status, native) = post(&url("/completion"), json!({"prompt": all, "n_predict": 8, "temperature": 0})).await;
    assert_eq!(status, 200, "{native}");
    assert_eq!(second["response"], native["content"]);
    assert_eq!(second["prompt_eval_count"], all.len());
    let next: Vec<u64> = second["context"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(&next[..all.len()], all, "the context grows");
}

#[tokio::test]
async fn format_constrains_the_answer_to_json() {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "legs": {"type": "integer", "maximum": 99}},
        "required": ["name", "legs"],
    });
    for (path, body) in [
        (
            "/api/generate",
            json!({"prompt": "Describe a cat as JSON.", "format": schema,
                   "options": {"temperature": 0, "num_predict": 64}}),
        ),
        (
            "/api/chat",
            json!({"messages": [{"role": "user", "content": "Describe a cat as JSON."}], "format": schema,
                   "options": {"temperature": 0, "num_predict": 64}}),
        ),
    ] {
        let v = ask(path, body).await;
        let text = v["response"].as_str().or(v["message"]["content"].as_str()).unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert!(parsed["name"].is_string() && parsed["legs"].is_u64(), "{parsed}");
        assert_eq!(v["done_reason"], "stop", "{v}");
    }
    // "json": any JSON object.
    let v = ask(
        "/api/generate",
        json!({"prompt": "Reply with a JSON object with a key \"ok\".", "format": "json",
               "options": {"temperature": 0, "num_predict": 200}}),
    )
    .await;
    let text = v["response"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?} {v}"));
    assert!(parsed.is_object(), "{parsed}");
}

#[tokio::test]
async fn stop_num_predict_and_seeds_act_as_in_ollama() {
    let prompt = "Count from one to twenty in words: one, two,";
    let greedy = |extra: Value| {
        let mut options = json!({"temperature": 0, "num_predict": 24});
        for (k, v) in extra.as_object().unwrap() {
            options[k] = v.clone();
        }
        ask("/api/generate", json!({"prompt": prompt, "raw": true, "options": options}))
    };
    let full = greedy(json!({})).await;
    let text = full["response"].as_str().unwrap().to_string();
    let stop = text.split(',').nth(2).map(str::trim).filter(|s| !s.is_empty()).expect("a third word").to_string();
    let stopped = greedy(json!({"stop": [stop.clone(), "zzzz"]})).await;
    let cut = stopped["response"].as_str().unwrap();
    assert!(text.starts_with(cut) && !cut.contains(&stop), "{cut:?} from {text:?} stopping at {stop:?}");
    assert_eq!(stopped["done_reason"], "stop");

    let short = greedy(json!({"num_predict": 3})).await;
    assert_eq!((short["eval_count"].as_u64(), short["done_reason"].as_str()), (Some(3), Some("length")));
    assert!(text.starts_with(short["response"].as_str().unwrap()));

    // Sampling with ollama's defaults (temperature 0.8, top-k 40, top-p 0.9): a seed makes it reproducible.
    let sampled = |seed: i64| {
        ask(
            "/api/generate",
            json!({"prompt": "Once upon a time", "raw": true,
                                     "options": {"seed": seed, "num_predict": 16}}),
        )
    };
    let (a, b) = (sampled(7).await, sampled(7).await);
    assert_eq!(a["response"], b["response"]);
    let other: Vec<Value> = futures_util::future::join_all((8..12).map(sampled)).await;
    assert!(other.iter().any(|o| o["response"] != a["response"]), "the seed changes nothing");
}

#[tokio::test]
async fn logprobs_come_with_each_token() {
    let body = json!({"prompt": "The sky is", "raw": true, "logprobs": true, "top_logprobs": 2,
                      "options": {"temperature": 0, "num_predict": 3}});
    let v = ask("/api/generate", body.clone()).await;
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), 3, "{v}");
    let joined: String = lps.iter().map(|l| l["token"].as_str().unwrap()).collect();
    assert_eq!(joined, v["response"].as_str().unwrap());
    for l in lps {
        let top = l["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        // Greedy: the chosen token is the most likely.
        assert_eq!(top[0]["token"], l["token"]);
        assert!(l["logprob"].as_f64().unwrap() <= 0.0);
    }
    let lines = stream_lines("/api/generate", body).await;
    let streamed: Vec<&Value> = lines.iter().filter_map(|l| l["logprobs"].as_array()).flatten().collect();
    assert_eq!(streamed.len(), 3);
    let tokens = |ls: &[&Value]| ls.iter().map(|l| l["token"].clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&streamed), tokens(&lps.iter().collect::<Vec<_>>()));
}

#[tokio::test]
async fn empty_prompts_are_load_requests() {
    let v = ask("/api/generate", json!({"model": "gemma3"})).await;
    assert_eq!(
        (v["done"].as_bool(), v["done_reason"].as_str(), v["response"].as_str()),
        (Some(true), Some("load"), Some(""))
    );
    let v = ask("/api/chat", json!({"model": "gemma3", "messages": []})).await;
    assert_eq!(v["done_reason"], "load");
    assert_eq!(v["message"], json!({"role": "assistant", "content": ""}));
    // A load request streams nothing: one object, as ollama answers it.
    let r = client().post(url("/api/generate")).json(&json!({"prompt": ""})).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["done_reason"], "load");
}

#[tokio::test]
async fn the_model_is_listed_and_shown() {
    let r = client().get(base()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "Ollama is running");
    assert_eq!(client().head(base()).send().await.unwrap().status().as_u16(), 200);
    let version: Value = client().get(url("/api/version")).send().await.unwrap().json().await.unwrap();
    assert!(version["version"].as_str().is_some_and(|v| v.split('.').count() == 3), "{version}");

    let tags: Value = client().get(url("/api/tags")).send().await.unwrap().json().await.unwrap();
    let m = &tags["models"][0];
    assert_eq!(tags["models"].as_array().unwrap().len(), 1);
    let name = m["name"].as_str().unwrap();
    assert!(name.ends_with(":latest") && m["model"] == name, "{m}");
    assert!(m["size"].as_u64().unwrap() > 100_000_000, "{m}");
    let digest = m["digest"].as_str().unwrap();
    assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{m}");
    assert!(is_rfc3339(m["modified_at"].as_str().unwrap()));
    let details = &m["details"];
    assert_eq!(details["format"], "gguf");
    assert_eq!(details["family"], "gemma3");
    assert_eq!(details["families"], json!(["gemma3"]));
    assert_eq!(details["quantization_level"], "Q4_K_M");
    assert!(details["parameter_size"].as_str().unwrap().ends_with('M'), "{details}");

    let ps: Value = client().get(url("/api/ps")).send().await.unwrap().json().await.unwrap();
    let p = &ps["models"][0];
    assert_eq!((&p["name"], &p["digest"], &p["details"]), (&m["name"], &m["digest"], &m["details"]));
    assert_eq!(p["context_length"], 512);
    assert!(is_rfc3339(p["expires_at"].as_str().unwrap()));

    let show = ask("/api/show", json!({"model": name})).await;
    assert_eq!(show["details"], *details);
    assert_eq!(show["capabilities"], json!(["completion"]));
    let info = &show["model_info"];
    assert_eq!(info["general.architecture"], "gemma3");
    assert!(info["gemma3.context_length"].as_u64().unwrap() >= 32_768, "{info}");
    assert_eq!(info["tokenizer.ggml.tokens"], json!([]), "long arrays are emptied unless verbose");
    assert!(info.get("tokenizer.chat_template").is_none() && info.get("general.name").is_none());
    assert!(show["template"].as_str().unwrap().contains("start_of_turn"), "{}", show["template"]);
    assert!(show["tensors"].as_array().unwrap().iter().any(|t| t["name"] == "token_embd.weight"));
    let verbose = ask("/api/show", json!({"name": name, "verbose": true})).await;
    assert_eq!(verbose["model_info"]["tokenizer.ggml.tokens"].as_array().unwrap().len(), 262_144);
    assert_eq!(refused("/api/show", json!({}), 400).await, "model is required");
}

#[tokio::test]
async fn bad_requests_are_ollama_errors() {
    let ok = json!({"model": "m", "prompt": "x", "stream": false, "options": {"num_predict": 1}});
    let with = |key: &str, value: Value| {
        let mut b = ok.clone();
        b[key] = value;
        b
    };
    let options = |o: Value| with("options", o);
    let cases: Vec<(Value, &str)> = vec![
        (with("images", json!(["aGk="])), "does not support images"),
        (with("suffix", json!("return x")), "does not support insert"),
        (with("template", json!("{{ .Prompt }}")), "template"),
        (json!({"prompt": "x", "raw": true, "system": "s"}), "raw mode does not support template, system, or context"),
        (json!({"prompt": "x", "raw": true, "context": [2]}), "raw mode does not support"),
        (with("think", json!(true)), "does not support thinking"),
        (with("think", json!("high")), "does not support thinking"),
        (with("format", json!("xml")), "invalid format"),
        (with("format", json!({"type": "nonsense"})), "format"),
        (with("context", json!([262_144])), "vocabulary"),
        (with("top_logprobs", json!(21)), "top_logprobs must be between 0 and 20"),
        (with("keep_alive", json!([1])), "keep_alive"),
        (json!({"prompt": "x ".repeat(600), "truncate": false}), "context holds 512"),
        (options(json!({"temperature": "hot"})), "temperature"),
        (options(json!({"num_predict": "ten"})), "num_predict"),
        (options(json!({"top_p": 2})), "top_p"),
        (options(json!({"seed": -5})), "seed"),
        (options(json!({"stop": [1]})), "stop"),
        (options(json!({"mirostat": 3})), "mirostat"),
        (options(json!({"num_ctx": 0})), "num_ctx"),
        (json!({"prompt": "x ".repeat(20), "truncate": false, "options": {"num_ctx": 8}}), "context holds 8"),
        (options(json!({"num_keep": -2})), "num_keep"),
        (with("options", json!("hot")), "options"),
        (json!({"prompt": "", "keep_alive": 0}), "unload"),
    ];
    for (body, wanted) in cases {
        let message = refused("/api/generate", body.clone(), 400).await;
        assert!(message.contains(wanted), "{body} → {message:?}, wanted {wanted:?}");
    }
    let chat = json!({"messages": [{"role": "user", "content": "x"}], "stream": false, "options": {"num_predict": 1}});
    let chat_with = |key: &str, value: Value| {
        let mut b = chat.clone();
        b[key] = value;
        b
    };
    let weather = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
    let cases: Vec<(Value, &str)> = vec![
        (chat_with("tools", weather), "does not support tools"),
        (chat_with("messages", json!([{"role": "user", "content": "x", "images": ["aGk="]}])), "images"),
        (
            chat_with(
                "messages",
                json!([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}]),
            ),
            "does not support tools",
        ),
        (chat_with("messages", json!([{"role": "wizard", "content": "x"}])), "unknown role"),
        (chat_with("messages", json!([{"role": "user", "content": ["x"]}])), "must be a string"),
        (chat_with("messages", json!("hi")), "list of messages"),
        (chat_with("format", json!(5)), "invalid format"),
        (json!({"messages": [], "keep_alive": "0s"}), "unload"),
    ];
    for (body, wanted) in cases {
        let message = refused("/api/chat", body.clone(), 400).await;
        assert!(message.contains(wanted), "{body} → {message:?}, wanted {wanted:?}");
    }

    // Malformed JSON, an embedding request to a generative model, model management, an unknown route.
    let r = client().post(url("/api/generate")).body("{\"prompt\": ").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("JSON"));
    assert!(refused("/api/embed", json!({"input": "x"}), 400).await.contains("not an embedding model"));
    assert!(refused("/api/embeddings", json!({"prompt": "x"}), 400).await.contains("not an embedding model"));
    assert!(refused("/api/pull", json!({"model": "llama3"}), 501).await.contains("not supported"));
    assert!(refused("/api/nope", json!({}), 404).await.contains("/api/nope"));
    let r = client().delete(url("/api/delete")).json(&json!({"model": "x"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 501);
}

#[tokio::test]
async fn keys_and_limits_apply_with_ollamas_error_shape() {
    let mut config = common::test_config();
    config.api_keys = vec!["ollama-key".into(), "limited-key".into()];
    config.rate_limit_enabled = true;
    config.max_requests_per_minute = 5;
    let base = common::start(config);
    // Over the rate limit: 429 with Retry-After and ollama's error body.
    let mut last = None;
    for _ in 0..6 {
        last = Some(client().get(format!("{base}/api/ps")).bearer_auth("limited-key").send().await.unwrap());
    }
    let r = last.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = client().get(format!("{base}/api/tags")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let r = client().get(format!("{base}/api/tags")).bearer_auth("ollama-key").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The liveness probe and the version need no key, as /health.
    assert_eq!(client().get(&base).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(client().get(format!("{base}/api/version")).send().await.unwrap().status().as_u16(), 200);
    // A body over the limit: 413 from the declared length. Only the head is sent: a client still writing a
    // body the server has already refused can see a broken pipe instead of the answer.
    let addr = base.trim_start_matches("http://").to_string();
    let (status, v) =
        tokio::task::spawn_blocking(move || declared_too_large(&addr, "/api/generate", "ollama-key")).await.unwrap();
    assert_eq!(status, 413);
    assert!(v["error"].is_string(), "{v}");
}

/// Sends the head of a POST declaring a 3 MiB JSON body and reads the answer (the server closes the
/// connection after it): its status and JSON body.
fn declared_too_large(addr: &str, path: &str, key: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        3 << 20
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {text}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut body = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            body.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        body
    } else {
        rest.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn prompts_longer_than_the_context_are_cut_as_ollama_cuts_them() {
    // /api/generate keeps BOS and `num_keep` (4) tokens, then the end of the prompt that leaves half of the
    // rest of the context free: what ollama hands llama-server.
    let prompt = "Lighthouses guide ships along dangerous coasts at night. ".repeat(60);
    let ids = tokenize(&prompt, true).await;
    let (window, keep) = (512, 5);
    assert!(ids.len() > window, "{} tokens", ids.len());
    let limit = window - (window - keep) / 2;
    let mut cut = ids[..keep].to_vec();
    cut.extend_from_slice(&ids[ids.len() - (limit - keep)..]);
    let (status, native) = post(&url("/completion"), json!({"prompt": cut, "n_predict": 8, "temperature": 0})).await;
    assert_eq!(status, 200, "{native}");
    let options = json!({"temperature": 0, "num_predict": 8});
    let v = ask("/api/generate", json!({"prompt": prompt, "raw": true, "options": options})).await;
    assert_eq!(v["prompt_eval_count"], limit);
    assert_eq!(v["response"], native["content"]);

    // `num_keep` and `num_ctx` set the cut: 1 kept token (BOS) in 64 leaves 33; -1 keeps the whole start.
    let small = json!({"num_ctx": 64, "num_keep": 0, "num_predict": 1});
    assert_eq!(ask("/api/generate", json!({"prompt": prompt, "options": small})).await["prompt_eval_count"], 33);
    let all = json!({"num_ctx": 64, "num_keep": -1, "num_predict": 1});
    assert_eq!(ask("/api/generate", json!({"prompt": prompt, "options": all})).await["prompt_eval_count"], 63);

    // Without context shift ollama refuses such a prompt; without truncation so does this server.
    let message = refused("/api/generate", json!({"prompt": prompt, "shift": false}), 400).await;
    assert!(message.contains("the prompt is longer than the context length"), "{message}");
    let message = refused("/api/generate", json!({"prompt": prompt, "truncate": false}), 400).await;
    assert!(message.contains("context holds 512"), "{message}");

    // /api/chat drops the oldest messages until the conversation fits, keeping the system message in front
    // (a tail that would open with the model's turn is passed over: Gemma's turns alternate from the user's).
    let long = "Tell me everything about lighthouses, their keepers and their lamps. ".repeat(30);
    let question = "What is the capital of France?";
    let history = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": long},
        {"role": "assistant", "content": long},
        {"role": "user", "content": question},
    ]);
    let options = json!({"temperature": 0, "num_predict": 10});
    let chat = ask("/api/chat", json!({"messages": history, "options": options})).await;
    let kept = json!([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]);
    let (status, openai) =
        post(&url("/v1/chat/completions"), json!({"messages": kept, "max_tokens": 10, "temperature": 0})).await;
    assert_eq!(status, 200, "{openai}");
    assert_eq!(chat["message"]["content"], openai["choices"][0]["message"]["content"]);
    assert_eq!(chat["prompt_eval_count"], openai["usage"]["prompt_tokens"]);
    let message = refused("/api/chat", json!({"messages": history, "truncate": false}), 400).await;
    assert!(message.contains("context holds 512"), "{message}");
    // The last message always stays: alone too long, it is refused.
    let message = refused("/api/chat", json!({"messages": [{"role": "user", "content": long.repeat(2)}]}), 400).await;
    assert!(message.contains("context holds 512"), "{message}");
}
