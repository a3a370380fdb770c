//! llama-server's native `POST /completion` against the real server and model: llama-server's answers on the
//! same requests (recorded from llama-server, llama.cpp 0c1e570, on the default model), its response keys, its
//! stream, lists of prompts, `n_probs`, its defaults and bad requests.

mod common;

use std::sync::OnceLock;

use common::{client, post, sse_events};
use serde_json::{json, Value};

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

async fn complete(body: Value) -> Value {
    let (status, v) = post(&format!("{}/completion", base()), body).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The keys of llama-server's non-streamed answer without `n_probs`.
const LLAMA_KEYS: [&str; 16] = [
    "content",
    "generation_settings",
    "has_new_line",
    "id_slot",
    "index",
    "model",
    "prompt",
    "stop",
    "stop_type",
    "stopping_word",
    "timings",
    "tokens",
    "tokens_cached",
    "tokens_evaluated",
    "tokens_predicted",
    "truncated",
];

#[tokio::test]
async fn greedy_answers_are_llama_servers() {
    // llama-server: {"prompt":"The capital of France is","n_predict":30,"temperature":0,"stop":[" country"]}
    let v = complete(json!({"prompt": "The capital of France is", "n_predict": 30, "temperature": 0,
                            "stop": [" country"]}))
    .await;
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, LLAMA_KEYS);
    assert_eq!(v["content"], " the capital of the");
    assert_eq!((v["stop_type"].as_str(), v["stopping_word"].as_str()), (Some("word"), Some(" country")));
    assert_eq!((v["tokens_predicted"].as_u64(), v["tokens_evaluated"].as_u64()), (Some(5), Some(6)));
    assert_eq!(v["tokens_cached"].as_u64(), Some(10));
    assert_eq!(v["prompt"], "<bos>The capital of France is");
    assert_eq!(v["stop"], true);

    // n_predict reached: "limit"; 0 still gives one token, as llama-server does.
    let v = complete(json!({"prompt": "The capital of France is", "n_predict": 4, "temperature": 0})).await;
    assert_eq!((v["content"].as_str(), v["stop_type"].as_str()), (Some(" the capital of the"), Some("limit")));
    let v = complete(json!({"prompt": "The capital of France is", "n_predict": 0})).await;
    assert_eq!(v["tokens_predicted"].as_u64(), Some(1));

    // A list of prompts answers with a list (llama-server: ")\n\n" for "a", index 0 first).
    let v = complete(json!({"prompt": ["a", "b"], "n_predict": 2, "temperature": 0})).await;
    let list = v.as_array().expect("a list for a list of prompts");
    assert_eq!(list.len(), 2);
    assert_eq!((list[0]["index"].as_u64(), list[0]["content"].as_str()), (Some(0), Some(")\n\n")));
    assert_eq!(list[1]["index"].as_u64(), Some(1));

    // The end of the text (<end_of_turn>, pushed to the top by a bias): "eos", nothing shown.
    let v = complete(json!({"prompt": "Hello", "n_predict": 8, "temperature": 0, "logit_bias": [[106, 100.0]]})).await;
    assert_eq!((v["stop_type"].as_str(), v["content"].as_str()), (Some("eos"), Some("")));
}

#[tokio::test]
async fn streams_a_token_per_event_and_a_closing_summary() {
    let body = json!({"prompt": "The capital of France is", "n_predict": 6, "temperature": 0, "stream": true,
                      "n_probs": 2});
    let r = client().post(format!("{}/completion", base())).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events: Vec<Value> = sse_events(r).await.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(events.len(), 7, "six tokens, then the summary (no [DONE])");
    let text: String = events.iter().map(|e| e["content"].as_str().unwrap()).collect();
    let plain = complete(json!({"prompt": "The capital of France is", "n_predict": 6, "temperature": 0, "n_probs": 2,
                                "return_tokens": true}))
    .await;
    assert_eq!(text, plain["content"].as_str().unwrap());
    for (k, e) in events[..6].iter().enumerate() {
        assert_eq!((e["stop"].as_bool(), e["tokens_predicted"].as_u64()), (Some(false), Some(k as u64 + 1)));
        assert_eq!(e["tokens"][0], plain["tokens"][k]);
        let probs = &e["completion_probabilities"][0];
        assert_eq!(probs, &plain["completion_probabilities"][k]);
        assert_eq!(probs["top_logprobs"].as_array().unwrap().len(), 2);
        assert!(probs["logprob"].as_f64().unwrap() <= 0.0);
    }
    let last = &events[6];
    assert_eq!((last["stop"].as_bool(), last["stop_type"].as_str()), (Some(true), Some("limit")));
    assert!(last["timings"]["predicted_n"].as_u64() == Some(6) && last["generation_settings"].is_object());
}

#[tokio::test]
async fn defaults_are_llama_servers_and_fields_are_checked() {
    let v = complete(json!({"prompt": "Hi", "n_predict": 1})).await;
    let s = &v["generation_settings"];
    assert_eq!(
        (s["top_k"].as_u64(), s["seed"].as_u64(), s["n_predict"].as_i64()),
        (Some(40), Some(4294967295), Some(1))
    );
    for (name, want) in [("temperature", 0.8), ("top_p", 0.95), ("min_p", 0.05)] {
        assert!((s[name].as_f64().unwrap() - want).abs() < 1e-6, "{name}: {}", s[name]);
    }
    // llama-server's list form of logit_bias, `false` banning a token, and ignore_eos.
    let v = complete(json!({"prompt": "Hi", "n_predict": 2, "logit_bias": [[506, 2.5], [1, false]],
                            "ignore_eos": true, "seed": 7}))
    .await;
    let bias = v["generation_settings"]["logit_bias"].as_array().unwrap();
    assert_eq!((&bias[0], &bias[1]), (&json!([506, 2.5]), &json!([1, false])));
    assert_eq!(v["generation_settings"]["seed"].as_u64(), Some(7));

    for (body, param) in [
        (json!({"n_predict": 2}), "prompt"),
        (json!({"prompt": "x", "n_predict": -2}), "n_predict"),
        (json!({"prompt": "x", "temperature": "hot"}), "temperature"),
        (json!({"prompt": "x", "logit_bias": [[506]]}), "logit_bias"),
        (json!({"prompt": "x", "logit_bias": [[999999999, 1.0]]}), "logit_bias"),
        (json!({"prompt": "x", "n_probs": 1000}), "n_probs"),
        (json!({"prompt": [999999999]}), "prompt"),
    ] {
        let (status, v) = post(&format!("{}/completion", base()), body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert_eq!(v["error"]["param"].as_str(), Some(param), "{body} → {v}");
    }
}
