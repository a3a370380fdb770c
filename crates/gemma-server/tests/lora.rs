//! LoRA adapters in the server, as llama-server takes them: `--lora` / `--lora-scaled` /
//! `--lora-init-without-apply`, `GET` / `POST /lora-adapters`, and the per-request `lora` field, against
//! llama-server's greedy tokens with the same adapter (`testdata/goldens/gemma3_270m_llama_lora.json`, from
//! `scripts/llama_lora_goldens.py`).

use std::sync::OnceLock;

use clap::Parser;
use gemma_core::lora::synthetic::Spec;
use serde_json::{json, Value};

mod common;
use common::{post, start, test_config};

const GOLDENS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_lora.json");

/// Below this margin between llama.cpp's best two logits the engines may pick differently.
const NEAR_TIE: f64 = 0.5;

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(GOLDENS).expect("goldens")).expect("json"))
}

/// A server with the script's adapter loaded at scale `scale` (its own, so tests that set the global scales
/// do not meet), and the adapter's path.
fn server(scale: f32) -> (String, String) {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let path = dir.join("lora.gguf");
    Spec::gemma3_270m().writer().expect("adapter").write_file(&path).expect("written");
    let mut config = test_config();
    config.loras = vec![(path.clone(), scale)];
    (start(config), path.display().to_string())
}

async fn get(url: &str) -> Value {
    common::client().get(url).send().await.expect("request").json().await.expect("json")
}

/// `/completion` greedy tokens of `case` with `extra` fields (`lora`).
async fn completion(base: &str, case: &Value, extra: Value) -> Vec<u64> {
    let n = case["runs"][0]["gen_ids"].as_array().expect("ids").len();
    let mut body = json!({"prompt": case["prompt_ids"], "n_predict": n, "temperature": 0, "return_tokens": true});
    body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
    let (status, v) = post(&format!("{base}/completion"), body).await;
    assert_eq!(status, 200, "{v}");
    v["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("id")).collect()
}

/// llama.cpp's run of `case` at `scale`: its tokens and margins.
fn golden_run(case: &Value, scale: f64) -> (Vec<u64>, Vec<f64>) {
    let run = case["runs"].as_array().expect("runs").iter().find(|r| r["scale"] == scale).expect("scale");
    let ids = run["gen_ids"].as_array().expect("ids").iter().map(|t| t.as_u64().expect("id")).collect();
    let margins = run["top1_top2_margin"].as_array().expect("margins").iter().map(|m| m.as_f64().expect("m")).collect();
    (ids, margins)
}

/// Ours equal llama.cpp's until they part, and they part at a near-tie of llama.cpp's; returns how many
/// tokens were equal.
fn follows(ours: &[u64], case: &Value, scale: f64) -> usize {
    let (want, margins) = golden_run(case, scale);
    let first_diff = ours.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(want.len());
    if first_diff < want.len() {
        let m = margins[first_diff];
        assert!(
            m < NEAR_TIE,
            "{} at scale {scale}: parts from llama.cpp at step {first_diff} (margin {m})",
            case["prompt"]
        );
    }
    first_diff
}

#[tokio::test]
async fn the_request_lora_field_follows_llama_server() {
    let (base, path) = server(1.0);
    let listed = get(&format!("{base}/lora-adapters")).await;
    let mut want = goldens()["llama_server_lora_adapters"].clone();
    want[0]["path"] = json!(path);
    assert_eq!(listed, want, "GET /lora-adapters in llama-server's form");

    let mut equal = 0;
    for case in goldens()["cases"].as_array().expect("cases") {
        let mut by_scale = Vec::new();
        for scale in [1.0, 0.5, 0.0] {
            let ours = completion(&base, case, json!({"lora": [{"id": 0, "scale": scale}]})).await;
            equal += follows(&ours, case, scale);
            by_scale.push(ours);
        }
        // No field: the global scale (1); an empty list too, as in llama-server.
        assert_eq!(completion(&base, case, json!({})).await, by_scale[0]);
        assert_eq!(completion(&base, case, json!({"lora": []})).await, by_scale[0]);
        // An entry without a scale is 0; a list that leaves the adapter out, too.
        assert_eq!(completion(&base, case, json!({"lora": [{"id": 0}]})).await, by_scale[2]);
        // The prefix cache never serves a prompt computed at another scale.
        assert_eq!(completion(&base, case, json!({"lora": [{"id": 0, "scale": 0.5}]})).await, by_scale[1]);
    }
    assert!(equal >= 60, "only {equal} tokens equal to llama.cpp's");

    // Requests at different scales decoded together get their own texts.
    let case = &goldens()["cases"][1];
    let (a, b) = tokio::join!(
        completion(&base, case, json!({"lora": [{"id": 0, "scale": 1.0}]})),
        completion(&base, case, json!({"lora": [{"id": 0, "scale": 0.0}]}))
    );
    assert_eq!(a, completion(&base, case, json!({"lora": [{"id": 0, "scale": 1.0}]})).await);
    assert_eq!(b, completion(&base, case, json!({"lora": [{"id": 0, "scale": 0.0}]})).await);
    assert_ne!(a, b);

    // Chat completions take the field too.
    let chat = |lora: Value| {
        let body = json!({"messages": [{"role": "user", "content": "Write a line about the sea."}], "max_tokens": 16,
                          "temperature": 0, "lora": lora});
        let url = format!("{base}/v1/chat/completions");
        async move {
            let (status, v) = post(&url, body).await;
            assert_eq!(status, 200, "{v}");
            v["choices"][0]["message"]["content"].as_str().expect("content").to_string()
        }
    };
    let (on, off) = (chat(json!([{"id": 0, "scale": 1.0}])).await, chat(json!([{"id": 0, "scale": 0.0}])).await);
    assert_ne!(on, off, "the adapter changes the chat answer");
    assert_eq!(chat(Value::Null).await, on, "no field: the global scale");

    // Entries naming no adapter change nothing, as in llama-server: the list turns the others off.
    let case = &goldens()["cases"][0];
    let off = completion(&base, case, json!({"lora": [{"id": 0, "scale": 0.0}]})).await;
    for ignored in [json!([{"id": 1, "scale": 1.0}]), json!([{"id": -1, "scale": 1.0}]), json!([{"scale": 1.0}])] {
        assert_eq!(completion(&base, case, json!({"lora": ignored})).await, off, "lora {ignored}");
    }
    // Bad fields are 400s naming the field.
    for bad in [
        json!("x"),
        json!({"id": 0}),
        json!(["x"]),
        json!([{"id": "0", "scale": 1.0}]),
        json!([{"id": 0, "scale": "big"}]),
    ] {
        let body = json!({"prompt": "Hi", "n_predict": 2, "lora": bad});
        let (status, v) = post(&format!("{base}/completion"), body).await;
        assert_eq!(status, 400, "lora {bad}: {v}");
        assert!(v.to_string().contains("lora"), "lora {bad}: {v}");
    }
}

#[tokio::test]
async fn post_lora_adapters_sets_the_global_scales() {
    let (base, _) = server(1.0);
    let case = &goldens()["cases"][0];
    let on = completion(&base, case, json!({})).await;
    follows(&on, case, 1.0);
    let url = format!("{base}/lora-adapters");

    let (status, v) = post(&url, json!([{"id": 0, "scale": 0.5}])).await;
    assert_eq!((status, v), (200, json!({"success": true})));
    assert_eq!(get(&url).await[0]["scale"], 0.5);
    follows(&completion(&base, case, json!({})).await, case, 0.5);

    // An empty list sets every adapter to 0, as llama-server's does.
    let (status, _) = post(&url, json!([])).await;
    assert_eq!(status, 200);
    assert_eq!(get(&url).await[0]["scale"], 0.0);
    let off = completion(&base, case, json!({})).await;
    follows(&off, case, 0.0);
    // A request can still turn it on.
    assert_eq!(completion(&base, case, json!({"lora": [{"id": 0, "scale": 1.0}]})).await, on);

    for bad in [json!({"id": 0, "scale": 1}), json!([{"id": 0, "scale": "x"}]), json!([7])] {
        let (status, v) = post(&url, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    assert_eq!(get(&url).await[0]["scale"], 0.0, "a refused body changes nothing");
    // An id that names no adapter is ignored, as llama-server ignores it.
    let (status, _) = post(&url, json!([{"id": 0, "scale": 1.0}, {"id": 3, "scale": 1.0}])).await;
    assert_eq!(status, 200);
    assert_eq!(get(&url).await[0]["scale"], 1.0);
}

#[tokio::test]
async fn init_without_apply_loads_the_adapters_at_scale_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lora.gguf");
    Spec::gemma3_270m().writer().expect("adapter").write_file(&path).expect("written");
    let p = path.to_str().expect("utf-8 path");
    let parse = |args: &[&str]| {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: gemma_server::ServeArgs,
        }
        let cli = Cli::try_parse_from(std::iter::once("gemma-server").chain(args.iter().copied())).expect("flags");
        gemma_server::ServerConfig::from_args(&cli.serve)
    };
    let config = parse(&["--lora", p, "--lora-scaled", &format!("{p}:0.25"), "--lora-scaled", p, "-0.5"]).expect("ok");
    let scales: Vec<f32> = config.loras.iter().map(|l| l.1).collect();
    assert_eq!(scales, [1.0, 0.25, -0.5]);
    let config = parse(&["--lora", p, "--lora-init-without-apply"]).expect("ok");
    assert_eq!(config.loras, [(path.clone(), 0.0)]);
    for bad in [vec!["--lora-scaled", "x.gguf:abc"], vec!["--lora-scaled", "a:b:c"], vec!["--lora", ""]] {
        assert!(parse(&bad).is_err(), "{bad:?}");
    }

    let mut config = test_config();
    config.loras = vec![(path.clone(), 0.0)];
    let base = start(config);
    assert_eq!(get(&format!("{base}/lora-adapters")).await[0]["scale"], 0.0);
    let case = &goldens()["cases"][2];
    follows(&completion(&base, case, json!({})).await, case, 0.0);
    follows(&completion(&base, case, json!({"lora": [{"id": 0, "scale": 1.0}]})).await, case, 1.0);

    // An adapter that does not load stops the server from starting, with the reason.
    let mut config = test_config();
    config.loras = vec![(dir.path().join("missing.gguf"), 1.0)];
    let mut server = gemma_server::start(config).await.expect("listens");
    let e = server.wait_loaded().await.expect_err("the adapter is missing");
    assert!(e.to_string().contains("missing.gguf"), "{e}");
}

/// `/completion`'s greedy `n` tokens after the prompt `ids` at scale `scale` of adapter 0, and their text.
async fn completion_ids(base: &str, ids: &[u64], n: usize, scale: f32) -> (Vec<u64>, String) {
    let body = json!({"prompt": ids, "n_predict": n, "temperature": 0, "return_tokens": true,
                      "lora": [{"id": 0, "scale": scale}]});
    let (status, v) = post(&format!("{base}/completion"), body).await;
    assert_eq!(status, 200, "{v}");
    let tokens = v["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("id")).collect();
    (tokens, v["content"].as_str().expect("content").to_string())
}

async fn tokenize(base: &str, text: &str, add_special: bool) -> Vec<u64> {
    let (status, v) = post(&format!("{base}/tokenize"), json!({"content": text, "add_special": add_special})).await;
    assert_eq!(status, 200, "{v}");
    v["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("id")).collect()
}

#[tokio::test]
async fn a_generate_session_recomputes_its_cache_when_the_scales_change() {
    let (base, _) = server(1.0);
    let generate = |body: Value| {
        let url = format!("{base}/generate");
        async move {
            let (status, v) = post(&url, body).await;
            assert_eq!(status, 200, "{v}");
            v
        }
    };
    let turn = |prompt: &str, max_tokens: usize, extra: Value| {
        let mut body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "session": "s"});
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        body
    };
    // Two one-token turns at the global scale 1: the second reuses the first's cache.
    let (p1, p2, p3) = ("My name is Ada.", " What is my name?", " Tell me a story about the sea.");
    generate(turn(p1, 1, json!({}))).await;
    let second = generate(turn(p2, 1, json!({}))).await;
    assert!(second["usage"]["cached_tokens"].as_u64().expect("cached") > 0, "{second}");

    // The session's history as ids, its answers as /completion gives them at scale 1.
    let mut history = tokenize(&base, p1, true).await;
    history.extend(completion_ids(&base, &history, 1, 1.0).await.0);
    history.extend(tokenize(&base, p2, false).await);
    history.extend(completion_ids(&base, &history, 1, 1.0).await.0);
    history.extend(tokenize(&base, p3, false).await);

    // The global scale goes to 0: the session's cache (computed at 1) is not reused, and the answer is that of
    // the whole history at scale 0.
    let (status, _) = post(&format!("{base}/lora-adapters"), json!([{"id": 0, "scale": 0.0}])).await;
    assert_eq!(status, 200);
    let third = generate(turn(p3, 12, json!({}))).await;
    assert_eq!(third["usage"]["cached_tokens"], 0, "{third}");
    assert_eq!(third["usage"]["prompt_tokens"].as_u64(), Some(history.len() as u64), "{third}");
    let (at_zero, text_at_zero) = completion_ids(&base, &history, 12, 0.0).await;
    assert_eq!(third["text"], text_at_zero.as_str(), "the whole history at scale 0");
    assert_ne!(text_at_zero, completion_ids(&base, &history, 12, 1.0).await.1, "the scale matters here");
    history.extend(at_zero);

    // A request's own `lora` field counts too: scale 1 again recomputes, the same scale then reuses.
    let p4 = " And then?";
    history.extend(tokenize(&base, p4, false).await);
    let fourth = generate(turn(p4, 6, json!({"lora": [{"id": 0, "scale": 1.0}]}))).await;
    assert_eq!(fourth["usage"]["cached_tokens"], 0, "{fourth}");
    assert_eq!(fourth["text"], completion_ids(&base, &history, 6, 1.0).await.1.as_str(), "the `lora` field");
    let fifth = generate(turn(" Go on.", 2, json!({"lora": [{"id": 0, "scale": 1.0}]}))).await;
    assert!(fifth["usage"]["cached_tokens"].as_u64().expect("cached") > 0, "same scales: reused: {fifth}");
}

#[tokio::test]
async fn responses_take_the_lora_field_as_llama_server_and_messages_do_not() {
    let (base, _) = server(0.0);
    let question = "Write a line about the sea.";
    let chat = |lora: Value| {
        let body = json!({"messages": [{"role": "user", "content": question}], "max_tokens": 16, "temperature": 0,
                          "lora": lora});
        let url = format!("{base}/v1/chat/completions");
        async move {
            let (status, v) = post(&url, body).await;
            assert_eq!(status, 200, "{v}");
            v["choices"][0]["message"]["content"].as_str().expect("content").to_string()
        }
    };
    let response = |lora: Value| {
        let body = json!({"input": question, "max_output_tokens": 16, "temperature": 0, "lora": lora});
        let url = format!("{base}/v1/responses");
        async move {
            let (status, v) = post(&url, body).await;
            assert_eq!(status, 200, "{v}");
            v["output"][0]["content"][0]["text"].as_str().expect("text").to_string()
        }
    };
    let on = json!([{"id": 0, "scale": 1.0}]);
    let (chat_on, chat_off) = (chat(on.clone()).await, chat(Value::Null).await);
    assert_ne!(chat_on, chat_off, "the adapter changes the answer");
    // llama-server's Responses route copies the body into a chat completion, `lora` included.
    assert_eq!(response(on.clone()).await, chat_on, "/v1/responses honours `lora`");
    assert_eq!(response(Value::Null).await, chat_off, "no field: the global scale");
    let (status, v) = post(&format!("{base}/v1/responses"), json!({"input": "Hi", "lora": "x"})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("lora"), "{v}");

    // llama-server's Anthropic conversion keeps only the fields it knows: `lora` is not among them, so
    // /v1/messages runs at the global scales.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": 16,
                      "temperature": 0, "lora": on});
    let (status, v) = post(&format!("{base}/v1/messages"), body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["text"].as_str(), Some(chat_off.as_str()), "/v1/messages ignores `lora`");
}
