//! `gemma-server --spec-type ngram-simple`: several sequences decoding with n-gram drafts in the same passes
//! give the tokens of a server without speculation, and report llama-server's `timings.draft_n` /
//! `draft_n_accepted` and `/slots` `speculative` (docs/speculative.md).

mod common;

use std::sync::OnceLock;

use common::post;
use gemma_core::{SpecType, SpeculativeParams};
use serde_json::{json, Value};

fn base(speculative: bool) -> &'static str {
    static ON: OnceLock<String> = OnceLock::new();
    static OFF: OnceLock<String> = OnceLock::new();
    let cell = if speculative { &ON } else { &OFF };
    cell.get_or_init(|| {
        let spec = speculative.then(|| SpeculativeParams::new(SpecType::NgramSimple));
        common::start(gemma_server::ServerConfig { ctx: 1024, parallel: 4, speculative: spec, ..common::test_config() })
    })
}

const REPEAT: &str = "<start_of_turn>user\nRepeat the following text exactly, word for word:\n\nThe quick brown fox \
jumps over the lazy dog. Rust is a systems programming language that runs blazingly fast, prevents segfaults, and \
guarantees thread safety. It accomplishes these goals by being memory safe without using garbage collection. The \
borrow checker validates references at compile time, so whole classes of bugs never reach production.<end_of_turn>\n\
<start_of_turn>model\n";

fn requests() -> Vec<Value> {
    vec![
        json!({"prompt": REPEAT, "n_predict": 120, "temperature": 0, "return_tokens": true}),
        json!({"prompt": "Once upon a time", "n_predict": 150, "temperature": 0, "return_tokens": true}),
        json!({"prompt": REPEAT, "n_predict": 100, "temperature": 0.7, "top_k": 20, "seed": 7,
               "repeat_penalty": 1.1, "return_tokens": true}),
        json!({"prompt": REPEAT, "n_predict": 120, "temperature": 0, "stop": ["used to"], "return_tokens": true}),
        // A limit that falls inside a draft.
        json!({"prompt": REPEAT, "n_predict": 77, "temperature": 0, "return_tokens": true}),
    ]
}

#[tokio::test]
async fn concurrent_speculative_sequences_give_the_plain_servers_tokens() {
    let mut plain = Vec::new();
    for body in requests() {
        let (status, v) = post(&format!("{}/completion", base(false)), body).await;
        assert_eq!(status, 200, "{v}");
        assert!(v["timings"].get("draft_n").is_none(), "{v}");
        plain.push(v);
    }
    // All at once: their tokens and drafts share forward passes.
    let runs = futures_util::future::join_all(requests().into_iter().map(|body| async move {
        let (status, v) = post(&format!("{}/completion", base(true)), body).await;
        assert_eq!(status, 200, "{v}");
        v
    }))
    .await;
    let (mut accepted, mut drafted) = (0, 0);
    for (i, (sp, pl)) in runs.iter().zip(&plain).enumerate() {
        eprintln!("request {i}: {}", sp["timings"]);
        assert_eq!(sp["tokens"], pl["tokens"], "request {i}");
        assert_eq!(sp["content"], pl["content"], "request {i}");
        assert_eq!(sp["stop_type"], pl["stop_type"], "request {i}");
        let t = &sp["timings"];
        if let Some(n) = t["draft_n"].as_u64() {
            let a = t["draft_n_accepted"].as_u64().expect("draft_n_accepted beside draft_n");
            assert!(a <= n, "{t}");
            accepted += a;
            drafted += n;
        }
    }
    assert!(runs[0]["timings"]["draft_n_accepted"].as_u64().unwrap_or(0) > 0, "{}", runs[0]["timings"]);
    assert_eq!(runs[3]["stop_type"], "word");
    assert_eq!((runs[4]["tokens"].as_array().map(Vec::len), runs[4]["stop_type"].as_str()), (Some(77), Some("limit")));
    assert!(accepted > 0);
    assert!(drafted > accepted, "no draft was cut short: the rollback went untested");

    for (speculative, url) in [(true, base(true)), (false, base(false))] {
        let slots: Value = common::client().get(format!("{url}/slots")).send().await.unwrap().json().await.unwrap();
        assert!(slots.as_array().unwrap().iter().all(|s| s["speculative"] == speculative), "{slots}");
        let props: Value = common::client().get(format!("{url}/props")).send().await.unwrap().json().await.unwrap();
        let types = &props["default_generation_settings"]["params"]["speculative.types"];
        assert_eq!(types, if speculative { "ngram-simple" } else { "none" }, "{props}");
    }
}

#[test]
fn an_unknown_or_missing_spec_type_is_a_config_error() {
    let args = |t: &str| gemma_server::ServeArgs {
        spec: gemma_server::SpecArgs { spec_type: Some(t.into()), ..Default::default() },
        ..Default::default()
    };
    for bad in ["ngram-map-k", "bogus"] {
        let err = gemma_server::ServerConfig::from_args(&args(bad)).unwrap_err().to_string();
        assert!(err.contains("--spec-type"), "{err}");
    }
    let ok = gemma_server::ServerConfig::from_args(&args("ngram-mod")).expect("valid");
    assert_eq!(ok.speculative.map(|p| p.kind), Some(SpecType::NgramMod));
    assert!(gemma_server::ServerConfig::from_args(&args("none")).unwrap().speculative.is_none());
}
