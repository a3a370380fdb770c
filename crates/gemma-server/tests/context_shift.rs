//! Context shift in the server: llama-server's `--context-shift` with `n_keep` / `n_discard` on its native
//! and OpenAI endpoints, and ollama's `shift` (on by default) within `num_ctx`, against llama-server's greedy
//! runs past a 256-token context (`testdata/goldens/gemma3_270m_llama_context_shift.json`,
//! `scripts/llama_context_shift_goldens.py`: `--swa-full --context-shift -c 256`).

mod common;

use std::sync::OnceLock;

use common::post;
use serde_json::{json, Value};

const CTX: usize = 256;

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_context_shift.json");
        let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("JSON");
        assert_eq!(g["ctx"], CTX as u64);
        g
    })
}

/// A server with a 256-token context, with or without `--context-shift`.
fn base(shift: bool) -> &'static str {
    static ON: OnceLock<String> = OnceLock::new();
    static OFF: OnceLock<String> = OnceLock::new();
    let cell = if shift { &ON } else { &OFF };
    cell.get_or_init(|| {
        let config =
            gemma_server::ServerConfig { ctx: CTX, parallel: 4, context_shift: shift, ..common::test_config() };
        common::start(config)
    })
}

fn ids(v: &Value) -> Vec<u64> {
    serde_json::from_value(v.clone()).expect("token ids")
}

/// Steps up to llama.cpp's first near-tie (its top two within 0.1), where two engines may part.
fn sure_steps(case: &Value) -> usize {
    let margins: Vec<f64> = serde_json::from_value(case["gen_top1_top2_margin"].clone()).expect("margins");
    margins.iter().position(|&m| m < 0.1).unwrap_or(margins.len())
}

#[tokio::test]
async fn native_completions_shift_as_llama_server_does() {
    let g = goldens();
    let body = |case: &Value| {
        json!({"prompt": case["prompt_ids"], "n_predict": g["n_predict"], "n_keep": case["n_keep"],
               "temperature": 0, "return_tokens": true})
    };
    // The three cases at once: the engine shifts each sequence on its own.
    let runs = futures_util::future::join_all(g["cases"].as_array().unwrap().iter().map(|case| async move {
        let (status, v) = post(&format!("{}/completion", base(true)), body(case)).await;
        assert_eq!(status, 200, "{v}");
        (case, v)
    }))
    .await;
    for (p, (case, v)) in runs.iter().enumerate() {
        let (ours, llama) = (ids(&v["tokens"]), ids(&case["gen_ids"]));
        assert_eq!(ours.len(), 640, "case {p}");
        let n = sure_steps(case);
        assert_eq!(ours[..n], llama[..n], "case {p}: llama.cpp's tokens up to its first near-tie (step {n})");
        assert_eq!((v["stop_type"].as_str(), v["truncated"].as_bool()), (Some("limit"), Some(true)), "case {p}");
    }

    // Without --context-shift the sequence stops where llama-server's does, before the context's end.
    let case = &g["cases"][0];
    let (status, v) = post(&format!("{}/completion", base(false)), body(case)).await;
    assert_eq!(status, 200, "{v}");
    let (ours, llama) = (ids(&v["tokens"]), ids(&case["no_shift_gen_ids"]));
    assert_eq!(ours.len(), llama.len());
    let n = sure_steps(case).min(llama.len());
    assert_eq!(ours[..n], llama[..n]);
    assert_eq!(v["truncated"], false);

    // n_discard drops that many tokens at a time; a bad n_keep or n_discard is a 400.
    let mut small = body(case);
    small["n_discard"] = json!(16);
    let (status, v) = post(&format!("{}/completion", base(true)), small).await;
    assert_eq!((status, v["tokens_predicted"].as_u64()), (200, Some(640)), "{v}");
    for bad in [json!({"n_keep": -2}), json!({"n_keep": "all"}), json!({"n_discard": -1})] {
        let mut b = body(case);
        b.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let (status, v) = post(&format!("{}/completion", base(true)), b).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
}

#[tokio::test]
async fn openai_completions_go_past_the_context_with_the_server_flag() {
    let case = &goldens()["cases"][0];
    let body = json!({"prompt": case["prompt"], "max_tokens": 400, "temperature": 0});
    let (status, v) = post(&format!("{}/v1/completions", base(true)), body.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["usage"]["completion_tokens"].as_u64(), v["choices"][0]["finish_reason"].as_str()),
        (Some(400), Some("length"))
    );
    let (status, v) = post(&format!("{}/v1/completions", base(false)), body).await;
    assert_eq!(status, 200, "{v}");
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some((CTX - prompt) as u64), "the room the context leaves");
}

#[tokio::test]
async fn ollama_shifts_within_num_ctx_unless_told_not_to() {
    let case = &goldens()["cases"][0];
    let generate = |options: Value, shift: Option<bool>| async move {
        let mut body = json!({"model": "gemma", "prompt": case["prompt"], "raw": true, "stream": false,
                              "options": options});
        if let Some(s) = shift {
            body["shift"] = json!(s);
        }
        // The server without --context-shift: ollama's API shifts on its own.
        let (status, v) = post(&format!("{}/api/generate", base(false)), body).await;
        assert_eq!(status, 200, "{v}");
        v
    };
    let prompt = case["prompt_ids"].as_array().unwrap().len() as u64;
    // num_ctx 128 (below the server's 256): the shift comes at 128 and generation goes on to num_predict.
    let v = generate(json!({"num_ctx": 128, "num_predict": 300, "temperature": 0}), None).await;
    assert_eq!((v["eval_count"].as_u64(), v["done_reason"].as_str()), (Some(300), Some("length")), "{v}");
    let v = generate(json!({"num_ctx": 128, "num_predict": 300, "temperature": 0}), Some(false)).await;
    assert_eq!((v["eval_count"].as_u64(), v["done_reason"].as_str()), (Some(128 - prompt), Some("length")), "{v}");
}
