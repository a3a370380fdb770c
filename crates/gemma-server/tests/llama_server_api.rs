//! llama-server's native side endpoints on the real server and model, against llama-server's own answers on
//! the same requests (testdata/goldens/llama_server_native.json, recorded by
//! scripts/llama_server_native_goldens.py from llama.cpp 0c1e570 on Gemma 3 270M): `/props`, `/slots`,
//! `/apply-template`, `/tokenize`, `/detokenize`, `/lora-adapters`, the aliases, and the "not supported"
//! answers for what this model cannot do (`/infill`, `/rerank`, `/embedding`, saving slots).

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use common::{client, post};
use serde_json::{json, Value};

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/llama_server_native.json");
        let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("goldens parse");
        assert!(g["llama_cpp"]["commit"].as_str().is_some_and(|c| c.len() == 40), "the llama.cpp commit is recorded");
        g
    })
}

/// The default test server (8 slots, context 512).
fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

/// One slot, `--props`.
fn one_slot() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut c = common::test_config();
        c.parallel = 1;
        c.endpoint_props = true;
        common::start(c)
    })
}

const KEY: &str = "llama-api-test-key";

/// `--no-slots` and an API key.
fn locked() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut c = common::test_config();
        c.endpoint_slots = false;
        c.api_keys = vec![KEY.into()];
        common::start(c)
    })
}

async fn get(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

#[tokio::test]
async fn props_have_llama_servers_keys_and_the_completion_defaults() {
    let want = &goldens()["default"]["props"]["body"];
    let (status, v) = get(&format!("{}/props", base())).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(keys(&v), keys(want));
    let (ours, theirs) = (&v["default_generation_settings"], &want["default_generation_settings"]);
    assert_eq!(keys(ours), keys(theirs));
    assert_eq!(keys(&ours["params"]), keys(&theirs["params"]));
    // Every default of `/completion` is llama-server's, printed the same way (f32 values widened).
    for (k, theirs) in theirs["params"].as_object().unwrap() {
        assert_eq!(&ours["params"][k], theirs, "params.{k}");
    }
    assert_eq!((ours["n_ctx"].as_u64(), v["total_slots"].as_u64()), (Some(512), Some(8)), "our context and slots");
    for k in ["model_ftype", "modalities", "bos_token", "eos_token", "endpoint_slots", "endpoint_props", "is_sleeping"]
    {
        assert_eq!(&v[k], &want[k], "{k}");
    }
    // The template is ours (Gemma's; llama-server falls back to ChatML for this file), with the caps
    // llama-server finds for a plain template.
    assert!(v["chat_template"].as_str().unwrap().contains("<start_of_turn>"));
    assert_eq!(v["chat_template_caps"], want["chat_template_caps"]);
    assert!(v["model_path"].as_str().unwrap().ends_with("gemma-3-270m-q4_k_m.gguf"));
    assert_eq!(v["endpoint_metrics"], true, "/metrics is always on here");

    // POST /props: refused by default, as llama-server does; accepted with --props.
    let (status, v) = post(&format!("{}/props", base()), json!({})).await;
    let refused =
        &goldens()["default"]["not_served"].as_array().unwrap().iter().find(|c| c["path"] == "/props").unwrap()
            ["response"];
    assert_eq!((status, &v), (refused["status"].as_u64().unwrap() as u16, &refused["body"]));
    let (status, v) = post(&format!("{}/props", one_slot()), json!({})).await;
    let enabled = &goldens()["props_enabled"];
    assert_eq!((status, &v), (enabled["status"].as_u64().unwrap() as u16, &enabled["body"]));
}

#[tokio::test]
async fn apply_template_renders_what_llama_server_renders() {
    let cases = goldens()["gemma_template"].as_array().unwrap();
    assert!(cases.len() >= 16);
    for c in cases {
        let (status, v) = post(&format!("{}/apply-template", base()), c["request"].clone()).await;
        let want = &c["response"];
        assert_eq!(status as u64, want["status"].as_u64().unwrap(), "{}: {v}", c["name"]);
        if status == 200 {
            assert_eq!(v["prompt"], want["body"]["prompt"], "{}", c["name"]);
        }
    }
    // The rendered prompt is what /completion then runs: the same tokens as the chat endpoint's prompt.
    let messages = json!([{"role": "user", "content": "Hi"}]);
    let (_, t) = post(&format!("{}/apply-template", base()), json!({"messages": messages})).await;
    let (_, ids) = post(&format!("{}/tokenize", base()), json!({"content": t["prompt"], "add_special": true})).await;
    let (_, chat) =
        post(&format!("{}/v1/chat/completions", base()), json!({"messages": messages, "max_tokens": 1})).await;
    assert_eq!(chat["usage"]["prompt_tokens"].as_u64().unwrap() as usize, ids["tokens"].as_array().unwrap().len());
    // Bad bodies are 400s.
    for body in [
        json!({"messages": "hi"}),
        json!({"messages": [{"role": "user", "content": "a"}], "add_generation_prompt": 1}),
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
    ] {
        let (status, v) = post(&format!("{}/apply-template", base()), body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
    }
}

#[tokio::test]
async fn tokenize_and_detokenize_answer_as_llama_server() {
    for (path, cases) in [("/tokenize", "tokenize"), ("/detokenize", "detokenize")] {
        for c in goldens()["default"][cases].as_array().unwrap() {
            let (status, v) = post(&format!("{}{path}", base()), c["request"].clone()).await;
            assert_eq!(
                (status as u64, &v),
                (c["response"]["status"].as_u64().unwrap(), &c["response"]["body"]),
                "{path} {}",
                c["request"]
            );
        }
    }
    // Where llama-server fails with a 500, these are 400s naming the field.
    for (path, body, param) in [
        ("/tokenize", json!({"content": 5}), "content"),
        ("/tokenize", json!({"content": ["a", 999999999]}), "content"),
        ("/tokenize", json!({"content": "a", "with_pieces": "yes"}), "with_pieces"),
        ("/detokenize", json!({"tokens": [999999999]}), "tokens"),
        ("/detokenize", json!({"tokens": [-1]}), "tokens"),
        ("/detokenize", json!({"tokens": "x"}), "tokens"),
    ] {
        let (status, v) = post(&format!("{}{path}", base()), body.clone()).await;
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{path} {body} → {v}");
    }
}

#[tokio::test]
async fn what_this_model_cannot_do_is_answered_as_llama_server_does() {
    for c in goldens()["default"]["not_served"].as_array().unwrap() {
        let path = c["path"].as_str().unwrap();
        if path == "/props" {
            continue; // checked with the props
        }
        let r = client().post(format!("{}{path}", base())).json(&c["request"]).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        let want = &c["response"];
        assert_eq!(status as u64, want["status"].as_u64().unwrap(), "{path}: {v}");
        if want["body"]["error"].is_object() {
            assert_eq!(keys(&v["error"]), keys(&want["body"]["error"]), "{path}: {v}");
            assert_eq!(
                (&v["error"]["code"], &v["error"]["type"]),
                (&want["body"]["error"]["code"], &want["body"]["error"]["type"]),
                "{path}"
            );
        } else {
            assert_eq!(v, want["body"], "{path}");
        }
        // The model has no fill-in-the-middle tokens: the same reason, word for word.
        if path == "/infill" {
            assert_eq!(v["error"]["message"], want["body"]["error"]["message"]);
        }
    }
    let (_, v) = get(&format!("{}/lora-adapters", base())).await;
    assert_eq!(v, goldens()["default"]["lora_adapters"]["body"]);
}

#[tokio::test]
async fn aliases_reach_the_same_endpoints() {
    let (status, health) = get(&format!("{}/v1/health", base())).await;
    assert_eq!((status, &health), (200, &goldens()["default"]["health_v1"]["body"]));
    let (_, models) = get(&format!("{}/models", base())).await;
    let (_, v1) = get(&format!("{}/v1/models", base())).await;
    assert_eq!(models["data"][0]["id"], v1["data"][0]["id"]);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0});
    let (s1, a) = post(&format!("{}/chat/completions", base()), body.clone()).await;
    let (s2, b) = post(&format!("{}/v1/chat/completions", base()), body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
}

#[tokio::test]
async fn slots_show_each_sequence_with_llama_servers_keys() {
    let d = &goldens()["default"];
    let url = format!("{}/slots", one_slot());
    let (status, fresh) = get(&url).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&fresh[0]), keys(&d["slots_fresh"]["body"][0]), "an idle slot that never ran: {fresh}");

    // While a long answer streams, its slot is processing and the only slot is taken.
    let prompt = "Write a long story about a cat.";
    let body = json!({"prompt": prompt, "n_predict": 200, "temperature": 0, "stream": true, "n_probs": 2,
                      "ignore_eos": true});
    let stream = client().post(format!("{}/completion", one_slot())).json(&body).send().await.unwrap();
    let mut running = Value::Null;
    for _ in 0..400 {
        let (_, v) = get(&url).await;
        if v[0]["is_processing"] == true && v[0]["next_token"][0]["n_decoded"].as_u64().unwrap_or(0) > 0 {
            running = v[0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running.is_object(), "the slot was never seen processing");
    let (busy, _) = get(&format!("{url}?fail_on_no_slot=1")).await;
    assert_eq!(busy, 503, "no idle slot");
    drop(stream);

    let want = &d["slots_after"]["body"][0];
    let mut want_params = keys(&want["params"]);
    want_params.remove("stream"); // the engine does not know whether the client streams
    assert_eq!(keys(&running), keys(want));
    assert_eq!(keys(&running["params"]), want_params);
    assert_eq!(keys(&running["next_token"][0]), keys(&want["next_token"][0]));
    let (_, t) = post(&format!("{}/tokenize", one_slot()), json!({"content": prompt, "add_special": true})).await;
    assert_eq!(running["n_prompt_tokens"].as_u64().unwrap() as usize, t["tokens"].as_array().unwrap().len());
    assert_eq!(running["next_token"][0]["has_next_token"], true);
    let p = &running["params"];
    assert_eq!(
        (p["n_probs"].as_u64(), p["ignore_eos"].as_bool(), p["top_k"].as_u64()),
        (Some(2), Some(true), Some(40))
    );
    assert_eq!(p["n_predict"].as_u64(), Some(200));

    // Once it has ended (the client went away), the slot is idle and keeps the task for inspection.
    let mut idle = Value::Null;
    for _ in 0..400 {
        let (_, v) = get(&url).await;
        if v[0]["is_processing"] == false {
            idle = v[0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(idle["id_task"], running["id_task"], "{idle}");
    assert_eq!(idle["next_token"][0]["has_next_token"], false);
    let (fine, _) = get(&format!("{url}?fail_on_no_slot=1")).await;
    assert_eq!(fine, d["slots_fail_on_no_slot"]["status"].as_u64().unwrap() as u16);

    // A finished request: decoded count and new lines as its answer had them.
    let (_, done) =
        post(&format!("{}/completion", one_slot()), json!({"prompt": "Hi", "n_predict": 3, "temperature": 0})).await;
    let (_, v) = get(&url).await;
    let next = &v[0]["next_token"][0];
    assert_eq!(next["n_decoded"], done["tokens_predicted"]);
    assert_eq!(next["has_new_line"], done["has_new_line"]);
}

#[tokio::test]
async fn no_slots_and_keys_are_honoured() {
    let no_slots = &goldens()["no_slots"];
    let r = client().get(format!("{}/slots", locked())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status().as_u16() as u64, no_slots["status"].as_u64().unwrap());
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (&v["error"]["type"], &v["error"]["code"]),
        (&no_slots["body"]["error"]["type"], &no_slots["body"]["error"]["code"])
    );
    // Everything but the health checks needs the key, as in llama-server.
    for path in ["/props", "/slots", "/lora-adapters", "/models"] {
        let r = client().get(format!("{}{path}", locked())).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    for path in ["/apply-template", "/tokenize", "/infill", "/rerank", "/slots/0?action=save", "/embedding"] {
        let r = client().post(format!("{}{path}", locked())).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    for path in ["/health", "/v1/health"] {
        let r = client().get(format!("{}{path}", locked())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client().get(format!("{}/props", locked())).bearer_auth(KEY).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["endpoint_slots"].as_bool(), v["endpoint_props"].as_bool()), (Some(false), Some(false)));
}

/// One slot, `--slot-save-path` in a temporary directory (removed by the test that uses it).
fn saving() -> &'static (String, std::path::PathBuf) {
    static BASE: OnceLock<(String, std::path::PathBuf)> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gemma-slot-save-test-{}", std::process::id()));
        let mut c = common::test_config();
        c.parallel = 1;
        c.slot_save_path = Some(dir.clone());
        (common::start(c), dir)
    })
}

#[tokio::test]
async fn a_saved_slot_restored_continues_as_the_uninterrupted_run() {
    let (base, dir) = saving();
    let want = &goldens()["slot_save"];
    let slot = |action: &str, body: Value| {
        let url = format!("{base}/slots/0?action={action}");
        async move { post(&url, body).await }
    };
    let greedy =
        |prompt: Value, n: u64| json!({"prompt": prompt, "n_predict": n, "temperature": 0, "return_tokens": true});

    let (_, p) =
        post(&format!("{base}/tokenize"), json!({"content": "The capital of France is", "add_special": true})).await;
    let prompt: Vec<u64> = p["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    let (_, first) = post(&format!("{base}/completion"), greedy(json!(prompt), 4)).await;
    // llama-server's numbers on the same request: 9 positions (the last token is never run).
    let (status, saved) = slot("save", json!({"filename": "a.bin"})).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(keys(&saved), keys(&want["save"]["body"]));
    assert_eq!(
        (&saved["n_saved"], &saved["id_slot"], &saved["filename"]),
        (&want["save"]["body"]["n_saved"], &json!(0), &json!("a.bin"))
    );
    let size = std::fs::metadata(dir.join("a.bin")).unwrap().len();
    assert_eq!(saved["n_written"].as_u64(), Some(size));
    let (_, erased) = slot("erase", json!({})).await;
    assert_eq!(erased, json!({"id_slot": 0, "n_erased": saved["n_saved"]}));
    assert_eq!(keys(&erased), keys(&want["erase"]["body"]));

    // The uninterrupted run of a longer prompt, with nothing cached (the erase dropped the slot's cache).
    let mut longer = prompt.clone();
    longer.extend(first["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()));
    longer.push(236761); // "."
    let (_, cold) = post(&format!("{base}/completion"), greedy(json!(longer), 8)).await;
    assert_eq!(cold["timings"]["cache_n"], 0, "{cold}");
    slot("erase", json!({})).await;

    // Restored, the same prompt continues from the saved positions and gives the same tokens.
    let (status, restored) = slot("restore", json!({"filename": "a.bin"})).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(keys(&restored), keys(&want["restore"]["body"]));
    assert_eq!((&restored["n_restored"], &restored["n_read"]), (&saved["n_saved"], &saved["n_written"]));
    let (_, warm) = post(&format!("{base}/completion"), greedy(json!(longer), 8)).await;
    assert_eq!(warm["timings"]["cache_n"], saved["n_saved"], "{warm}");
    assert_eq!((&warm["tokens"], &warm["content"]), (&cold["tokens"], &cold["content"]));

    // The errors llama-server gives, and a damaged file.
    std::fs::write(dir.join("bad.bin"), b"GKVC\x01\0\0\0 not a cache").unwrap();
    for (case, path, body) in [
        ("restore_missing", "/slots/0?action=restore", json!({"filename": "missing.bin"})),
        ("restore_missing", "/slots/0?action=restore", json!({"filename": "bad.bin"})),
        ("bad_filename", "/slots/0?action=save", json!({"filename": "../x.bin"})),
        ("bad_slot_id", "/slots/abc?action=save", json!({"filename": "b.bin"})),
        ("bad_action", "/slots/0?action=fly", json!({})),
        ("no_action", "/slots/0", json!({})),
    ] {
        let (status, v) = post(&format!("{base}{path}"), body.clone()).await;
        let w = &want[case];
        assert_eq!(status as u64, w["status"].as_u64().unwrap(), "{path} {body}: {v}");
        assert_eq!(
            (&v["error"]["type"], &v["error"]["code"]),
            (&w["body"]["error"]["type"], &w["body"]["error"]["code"])
        );
    }
    let (status, v) = post(&format!("{base}/slots/0?action=restore"), json!({"filename": "bad.bin"})).await;
    assert!(status == 400 && v["error"]["message"].as_str().unwrap().starts_with("Unable to restore slot"), "{v}");
    let (status, v) = post(&format!("{base}/slots/0?action=save"), json!({})).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("filename")));
    std::fs::remove_dir_all(dir).unwrap();
}
