//! Embeddings on the real server with the real EmbeddingGemma 300M: OpenAI's `/v1/embeddings` (strings and
//! token ids, `dimensions`, base64, usage, the `/embeddings` alias, the 400s), Gemini's `:embedContent` and
//! `:batchEmbedContents` (task prompts, `outputDimensionality`), generation refused on an embedding model and
//! embeddings refused on a generative one, ollama's `/api/embed` and `/api/embeddings`, and the official `openai`
//! Python package. The vectors are checked
//! against the independent float64 reference in testdata/goldens/embeddinggemma_300m_ref_f64.json.

mod common;

use std::sync::OnceLock;

use base64::Engine as _;
use common::post;
use serde_json::{json, Value};

const EMBEDDING_MODEL: &str = "embeddinggemma-300m";
const WIDTH: usize = 768;
/// Relative L2 distance allowed from the float64 reference (the engine is at ~1e-6).
const TOLERANCE: f64 = 1e-4;

/// The server with EmbeddingGemma, shared by the tests of this file.
fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let model = gemma_fetch::resolve_model(EMBEDDING_MODEL).expect("the embedding model is available");
        let mut config = common::test_config();
        config.model = model.to_string_lossy().into_owned();
        config.ctx = 2048;
        common::start(config)
    })
}

/// The server with the default (generative) test model.
fn generative_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| common::start(common::test_config()))
}

struct Golden {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f64>,
}

fn goldens() -> &'static [Golden] {
    static GOLDENS: OnceLock<Vec<Golden>> = OnceLock::new();
    GOLDENS.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/embeddinggemma_300m_ref_f64.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens readable")).unwrap();
        v["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Golden {
                text: t["text"].as_str().unwrap().to_string(),
                ids: t["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect(),
                embedding: t["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect(),
            })
            .collect()
    })
}

fn golden(text: &str) -> &'static Golden {
    goldens().iter().find(|g| g.text == text).unwrap_or_else(|| panic!("no golden for {text:?}"))
}

const HELLO: &str = "hello world";
const QUERY: &str = "task: search result | query: What is the capital of France?";
const PARIS: &str = "title: none | text: Paris is the capital and most populous city of France.";
const GUITAR: &str = "task: sentence similarity | query: A man is playing a guitar.";

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖got − want‖ / ‖want‖.
fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let d: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    d / norm(want)
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let e = rel_l2(got, want);
    assert!(e < TOLERANCE, "{what}: relative L2 {e:.3e} from the reference");
}

/// The first `d` values, renormalised (Matryoshka truncation).
fn truncated(v: &[f64], d: usize) -> Vec<f64> {
    let n = norm(&v[..d]);
    v[..d].iter().map(|x| x / n).collect()
}

async fn embeddings(body: Value) -> Value {
    let (status, v) = post(&format!("{}/v1/embeddings", base()), body).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The 400 error of `body` on `path`, checking its `param` and `code`.
async fn assert_400(path: &str, body: Value, param: Option<&str>, code: &str) -> Value {
    let (status, v) = post(&format!("{}{path}", base()), body.clone()).await;
    assert_eq!(status, 400, "{path} {body} → {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["param"].as_str(), param, "{path} {body} → {v}");
    assert_eq!(v["error"]["code"].as_str(), Some(code), "{path} {body} → {v}");
    v
}

#[tokio::test]
async fn strings_give_the_reference_embeddings() {
    let texts: Vec<&str> = goldens().iter().map(|g| g.text.as_str()).collect();
    let v = embeddings(json!({"model": EMBEDDING_MODEL, "input": texts})).await;
    assert_eq!(v["object"], "list");
    assert!(v["model"].as_str().is_some_and(|m| !m.is_empty()), "{}", v["model"]);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), goldens().len());
    for (i, (item, g)) in data.iter().zip(goldens()).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let e = floats(&item["embedding"]);
        assert_eq!(e.len(), WIDTH);
        assert!((norm(&e) - 1.0).abs() < 1e-5, "not unit length: {}", norm(&e));
        assert_close(&e, &g.embedding, &format!("{:?}", g.text));
    }
    // Usage counts every token, BOS and EOS included.
    let tokens: usize = goldens().iter().map(|g| g.ids.len()).sum();
    assert_eq!(v["usage"], json!({"prompt_tokens": tokens, "total_tokens": tokens}));

    // A single string: the same vector as in the batch, and its own usage.
    let one = embeddings(json!({"input": HELLO})).await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["index"], 0);
    let hello = goldens().iter().position(|g| g.text == HELLO).unwrap();
    assert_eq!(one["data"][0]["embedding"], data[hello]["embedding"], "batched and single results differ");
    assert_eq!(one["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
}

/// Requests arriving together may share the engine's passes; each still gets exactly its own vectors, in its
/// own order (a pass's results do not depend on what else it holds).
#[tokio::test]
async fn concurrent_requests_get_exactly_their_own_vectors() {
    let texts: Vec<&str> = goldens().iter().map(|g| g.text.as_str()).collect();
    let bodies: Vec<Value> = (0..12)
        .map(|i| {
            let pick: Vec<&str> = (0..1 + i % 3).map(|j| texts[(i + 2 * j) % texts.len()]).collect();
            json!({"input": pick})
        })
        .collect();
    let alone: Vec<Value> = {
        let mut out = Vec::new();
        for b in &bodies {
            out.push(embeddings(b.clone()).await);
        }
        out
    };
    let together = futures_util::future::join_all(bodies.iter().cloned().map(embeddings)).await;
    for ((a, t), b) in alone.iter().zip(&together).zip(&bodies) {
        assert_eq!(a["data"], t["data"], "{b}");
        assert_eq!(a["usage"], t["usage"], "{b}");
    }
}

#[tokio::test]
async fn token_ids_give_the_reference_embeddings() {
    let picked = [golden(QUERY), golden(PARIS), golden(GUITAR)];
    let lists: Vec<&Vec<u32>> = picked.iter().map(|g| &g.ids).collect();
    let v = embeddings(json!({"input": lists})).await;
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (item, g) in data.iter().zip(picked) {
        assert_close(&floats(&item["embedding"]), &g.embedding, &format!("ids of {:?}", g.text));
    }
    let tokens: usize = picked.iter().map(|g| g.ids.len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    assert_eq!(v["usage"]["total_tokens"], tokens);

    // One flat list of ids is one input; the same ids as a string give the same vector.
    let flat = embeddings(json!({"input": golden(HELLO).ids})).await;
    assert_eq!(flat["data"].as_array().unwrap().len(), 1);
    assert_close(&floats(&flat["data"][0]["embedding"]), &golden(HELLO).embedding, "ids of hello world");
    let text = embeddings(json!({"input": HELLO})).await;
    assert_eq!(flat["data"][0]["embedding"], text["data"][0]["embedding"]);
    assert_eq!(flat["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn dimensions_keep_the_first_values_renormalised() {
    let v = embeddings(json!({"input": [HELLO, PARIS], "dimensions": 256})).await;
    for (item, text) in v["data"].as_array().unwrap().iter().zip([HELLO, PARIS]) {
        let e = floats(&item["embedding"]);
        assert_eq!(e.len(), 256);
        assert!((norm(&e) - 1.0).abs() < 1e-5, "not renormalised: {}", norm(&e));
        assert_close(&e, &truncated(&golden(text).embedding, 256), &format!("{text:?} at 256"));
    }
    // The full width is allowed and is the untruncated vector.
    let full = embeddings(json!({"input": HELLO, "dimensions": WIDTH})).await;
    let plain = embeddings(json!({"input": HELLO})).await;
    assert_eq!(full["data"][0]["embedding"], plain["data"][0]["embedding"]);
}

#[tokio::test]
async fn base64_is_the_little_endian_f32_bytes() {
    let float = embeddings(json!({"input": [HELLO, QUERY], "encoding_format": "float"})).await;
    let b64 = embeddings(json!({"input": [HELLO, QUERY], "encoding_format": "base64"})).await;
    for (f, b) in float["data"].as_array().unwrap().iter().zip(b64["data"].as_array().unwrap()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b["embedding"].as_str().expect("a base64 string"))
            .expect("valid base64");
        assert_eq!(bytes.len(), WIDTH * 4);
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let want: Vec<f32> = floats(&f["embedding"]).iter().map(|&x| x as f32).collect();
        assert_eq!(decoded, want, "base64 and float encodings differ");
        assert_eq!(b["index"], f["index"]);
    }
    assert_eq!(b64["usage"], float["usage"]);
    // With dimensions too.
    let short = embeddings(json!({"input": HELLO, "encoding_format": "base64", "dimensions": 128})).await;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(short["data"][0]["embedding"].as_str().unwrap()).unwrap();
    assert_eq!(bytes.len(), 128 * 4);
}

#[tokio::test]
async fn the_embeddings_alias_answers_the_same() {
    let (status, alias) = post(&format!("{}/embeddings", base()), json!({"input": [HELLO, PARIS]})).await;
    assert_eq!(status, 200, "{alias}");
    let v1 = embeddings(json!({"input": [HELLO, PARIS]})).await;
    assert_eq!(alias["data"], v1["data"]);
    assert_eq!(alias["usage"], v1["usage"]);
}

/// llama-server's own format at `/embedding`: `content` (or `input`) → `[{"index", "embedding": [[...]]}]`,
/// the same vectors as `/v1/embeddings`.
#[tokio::test]
async fn llama_servers_embedding_format_has_the_same_vectors() {
    let v1 = embeddings(json!({"input": [HELLO, PARIS]})).await;
    for body in [json!({"content": [HELLO, PARIS]}), json!({"input": [HELLO, PARIS], "embd_normalize": 2})] {
        let (status, v) = post(&format!("{}/embedding", base()), body.clone()).await;
        assert_eq!(status, 200, "{body} → {v}");
        let items = v.as_array().expect("a list");
        assert_eq!(items.len(), 2);
        for (i, item) in items.iter().enumerate() {
            let keys: Vec<&str> = item.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["index", "embedding"]);
            assert_eq!(item["index"].as_u64(), Some(i as u64));
            assert_eq!(item["embedding"].as_array().unwrap().len(), 1, "one pooled row");
            assert_eq!(item["embedding"][0], v1["data"][i]["embedding"]);
        }
    }
    for (body, param) in [(json!({}), "input"), (json!({"content": "x", "embd_normalize": -1}), "embd_normalize")] {
        let (status, v) = post(&format!("{}/embedding", base()), body.clone()).await;
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{body} → {v}");
    }
    // A generative model answers as llama-server does without `--embeddings`: 501, its error shape.
    let (status, v) = post(&format!("{}/embedding", generative_base()), json!({"content": HELLO})).await;
    assert_eq!(
        (status, v["error"]["code"].as_u64(), v["error"]["type"].as_str()),
        (501, Some(501), Some("not_supported_error"))
    );
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_field() {
    let p = "/v1/embeddings";
    assert_400(p, json!({"input": []}), Some("input"), "invalid_value").await;
    assert_400(p, json!({"model": EMBEDDING_MODEL}), Some("input"), "missing_required_parameter").await;
    // Token ids outside the vocabulary (262144 tokens), negative, or not integers.
    let v = assert_400(p, json!({"input": [2, 10_000_000, 1]}), Some("input"), "invalid_value").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("10000000"), "{v}");
    assert_400(p, json!({"input": [[2, 1], [2, 262144, 1]]}), Some("input"), "invalid_value").await;
    assert_400(p, json!({"input": [2, -1, 1]}), Some("input"), "invalid_value").await;
    assert_400(p, json!({"input": [2, 1.5, 1]}), Some("input"), "invalid_value").await;
    // Mixed kinds of input, and an empty list of ids.
    assert_400(p, json!({"input": ["text", 5]}), Some("input"), "invalid_value").await;
    assert_400(p, json!({"input": [[2, 1], []]}), Some("input"), "invalid_value").await;
    assert_400(p, json!({"input": 5}), Some("input"), "invalid_value").await;
    // dimensions: 1 to 768.
    assert_400(p, json!({"input": HELLO, "dimensions": 0}), Some("dimensions"), "invalid_value").await;
    let v = assert_400(p, json!({"input": HELLO, "dimensions": 769}), Some("dimensions"), "invalid_value").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("768"), "{v}");
    assert_400(p, json!({"input": HELLO, "encoding_format": "hex"}), Some("encoding_format"), "invalid_value").await;
    // Longer than the context (2048 tokens).
    let long: Vec<u32> = std::iter::once(2).chain(std::iter::repeat_n(818, 2100)).chain([1]).collect();
    let v = assert_400(p, json!({"input": [long]}), Some("input"), "context_length_exceeded").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("2048"), "{v}");
    let words = "word ".repeat(2100);
    assert_400(p, json!({"input": ["short", words]}), Some("input"), "context_length_exceeded").await;
    // The server still answers after the errors.
    embeddings(json!({"input": HELLO})).await;
}

#[tokio::test]
async fn generation_on_the_embedding_model_is_model_not_supported() {
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let v = assert_400("/v1/chat/completions", chat, None, "model_not_supported").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("embedding model"), "{v}");
    assert_400("/v1/completions", json!({"prompt": "hi", "max_tokens": 4}), None, "model_not_supported").await;
    let gemini = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    assert_400(&format!("/v1beta/models/{EMBEDDING_MODEL}:generateContent"), gemini, None, "model_not_supported").await;
}

/// ollama's `/api/embed` and `/api/embeddings`: the vectors of `/v1/embeddings`, `dimensions`, `truncate`, an
/// empty input, and generation refused in ollama's error shape.
#[tokio::test]
async fn ollama_embed_gives_the_openai_vectors() {
    let url = |path: &str| format!("{}{path}", base());
    let texts = [HELLO, QUERY, PARIS];
    let openai = embeddings(json!({"input": texts})).await;
    let (status, v) = post(&url("/api/embed"), json!({"model": "embeddinggemma", "input": texts})).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["model"].as_str().unwrap().ends_with(":latest"), "{v}");
    let vectors = v["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    for (got, item) in vectors.iter().zip(openai["data"].as_array().unwrap()) {
        assert_eq!(*got, item["embedding"], "/api/embed and /v1/embeddings differ");
    }
    assert_eq!(v["prompt_eval_count"], openai["usage"]["prompt_tokens"]);
    assert!(v["total_duration"].as_u64().unwrap() >= v["load_duration"].as_u64().unwrap());

    // One string, `dimensions` (truncated and renormalised, as ollama), and the legacy endpoint.
    let (_, one) = post(&url("/api/embed"), json!({"input": PARIS, "dimensions": 128})).await;
    let small = embeddings(json!({"input": PARIS, "dimensions": 128})).await;
    assert_eq!(one["embeddings"][0], small["data"][0]["embedding"]);
    let (status, legacy) = post(&url("/api/embeddings"), json!({"model": "m", "prompt": QUERY})).await;
    assert_eq!(status, 200, "{legacy}");
    assert_eq!(legacy["embedding"], vectors[1]);
    assert_close(&floats(&legacy["embedding"]), &golden(QUERY).embedding, "legacy");

    // An empty input only loads the model, as in ollama.
    let (_, empty) = post(&url("/api/embed"), json!({"input": ""})).await;
    assert_eq!(empty["embeddings"], json!([]));
    let (_, empty) = post(&url("/api/embeddings"), json!({"prompt": ""})).await;
    assert_eq!(empty["embedding"], json!([]));

    // An input longer than the context (2048 here) is cut to fit, its end token kept; `truncate: false` refuses it.
    let long = "word ".repeat(2100);
    let (status, v) = post(&url("/api/embed"), json!({"input": long, "truncate": false})).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("the input length exceeds the context length")), "{v}");
    let (status, cut) = post(&url("/api/embed"), json!({"input": long})).await;
    assert_eq!(status, 200, "{cut}");
    assert_eq!(cut["prompt_eval_count"], 2048);
    let (_, ids) = post(&url("/tokenize"), json!({"content": long, "add_special": true})).await;
    let ids = ids["tokens"].as_array().unwrap();
    let mut kept: Vec<Value> = ids[..2047].to_vec();
    kept.push(ids[ids.len() - 1].clone());
    let by_ids = embeddings(json!({"input": kept})).await;
    assert_eq!(cut["embeddings"][0], by_ids["data"][0]["embedding"]);

    // Refusals are ollama's `{"error": "..."}`.
    for (path, body, wanted) in [
        ("/api/embed", json!({"input": [1, 2]}), "invalid input type"),
        ("/api/embed", json!({"input": "x", "dimensions": 769}), "dimensions"),
        ("/api/embed", json!({"input": "x", "truncate": "yes"}), "truncate"),
        ("/api/embeddings", json!({"prompt": 5}), "prompt"),
        ("/api/generate", json!({"prompt": "hi"}), "does not support generate"),
        ("/api/chat", json!({"messages": [{"role": "user", "content": "hi"}]}), "does not support chat"),
    ] {
        let (status, v) = post(&url(path), body.clone()).await;
        assert_eq!(status, 400, "{path} {body} → {v}");
        assert!(v["error"].as_str().is_some_and(|m| m.contains(wanted)), "{path} {body} → {v}");
    }
    let (status, show) = post(&url("/api/show"), json!({"model": "embeddinggemma"})).await;
    assert_eq!(status, 200, "{show}");
    assert_eq!(show["capabilities"], json!(["embedding"]));
}

fn embed_content_url(action: &str) -> String {
    format!("{}/v1beta/models/{EMBEDDING_MODEL}:{action}", base())
}

async fn embed_content(body: Value) -> Vec<f64> {
    let (status, v) = post(&embed_content_url("embedContent"), body).await;
    assert_eq!(status, 200, "{v}");
    floats(&v["embedding"]["values"])
}

#[tokio::test]
async fn gemini_embed_content_puts_the_task_prompt_in_front() {
    let text = |t: &str| json!({"parts": [{"text": t}]});
    let query =
        embed_content(json!({"content": text("What is the capital of France?"), "taskType": "RETRIEVAL_QUERY"})).await;
    assert_eq!(query.len(), WIDTH);
    assert_close(&query, &golden(QUERY).embedding, "RETRIEVAL_QUERY");
    // Documents get "title: none | text: " without a title.
    let doc = embed_content(json!({
        "content": text("Paris is the capital and most populous city of France."),
        "taskType": "RETRIEVAL_DOCUMENT"
    }))
    .await;
    assert_close(&doc, &golden(PARIS).embedding, "RETRIEVAL_DOCUMENT");
    let guitar =
        embed_content(json!({"content": text("A man is playing a guitar."), "taskType": "SEMANTIC_SIMILARITY"})).await;
    assert_close(&guitar, &golden(GUITAR).embedding, "SEMANTIC_SIMILARITY");
    // No task: the text as it is; several parts are one text.
    let plain = embed_content(json!({"content": {"parts": [{"text": "hello"}, {"text": " world"}]}})).await;
    assert_close(&plain, &golden(HELLO).embedding, "no taskType");
    let unspecified = embed_content(json!({"content": text(HELLO), "taskType": "TASK_TYPE_UNSPECIFIED"})).await;
    assert_close(&unspecified, &golden(HELLO).embedding, "TASK_TYPE_UNSPECIFIED");
    // The OpenAI endpoint given the prompt by hand agrees exactly.
    let openai = embeddings(json!({"input": QUERY})).await;
    assert_eq!(floats(&openai["data"][0]["embedding"]), query);
}

#[tokio::test]
async fn gemini_batch_embed_contents_with_output_dimensionality() {
    let body = json!({"requests": [
        {"content": {"parts": [{"text": "What is the capital of France?"}]}, "taskType": "RETRIEVAL_QUERY",
         "outputDimensionality": 128},
        {"content": {"parts": [{"text": HELLO}]}},
        {"content": {"parts": [{"text": "Paris is the capital and most populous city of France."}]},
         "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 512},
    ]});
    let (status, v) = post(&embed_content_url("batchEmbedContents"), body).await;
    assert_eq!(status, 200, "{v}");
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 3);
    let (q, h, d) = (floats(&e[0]["values"]), floats(&e[1]["values"]), floats(&e[2]["values"]));
    assert_eq!((q.len(), h.len(), d.len()), (128, WIDTH, 512));
    assert!((norm(&q) - 1.0).abs() < 1e-5 && (norm(&d) - 1.0).abs() < 1e-5);
    assert_close(&q, &truncated(&golden(QUERY).embedding, 128), "batch query at 128");
    assert_close(&h, &golden(HELLO).embedding, "batch hello");
    assert_close(&d, &truncated(&golden(PARIS).embedding, 512), "batch document at 512");
    // embedContent with outputDimensionality too.
    let one = embed_content(json!({"content": {"parts": [{"text": HELLO}]}, "outputDimensionality": 256})).await;
    assert_close(&one, &truncated(&golden(HELLO).embedding, 256), "embedContent at 256");
}

#[tokio::test]
async fn gemini_bad_requests_are_400s() {
    let embed = format!("/v1beta/models/{EMBEDDING_MODEL}:embedContent");
    let batch = format!("/v1beta/models/{EMBEDDING_MODEL}:batchEmbedContents");
    let text = json!({"parts": [{"text": HELLO}]});
    let v = assert_400(&embed, json!({"content": text, "taskType": "POETRY"}), Some("taskType"), "invalid_value").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("POETRY"), "{v}");
    assert_400(&embed, json!({"taskType": "RETRIEVAL_QUERY"}), Some("content"), "missing_required_parameter").await;
    assert_400(
        &embed,
        json!({"content": text, "outputDimensionality": 0}),
        Some("outputDimensionality"),
        "invalid_value",
    )
    .await;
    assert_400(
        &embed,
        json!({"content": text, "outputDimensionality": 1000}),
        Some("outputDimensionality"),
        "invalid_value",
    )
    .await;
    assert_400(&batch, json!({"requests": []}), Some("requests"), "invalid_value").await;
    assert_400(&embed, json!({"content": {"parts": []}}), Some("content.parts"), "invalid_value").await;
    assert_400(&embed, json!({"content": {}}), Some("content.parts"), "invalid_value").await;
    let bad = json!({"requests": [{"content": text}, {"content": text, "taskType": "nope"}]});
    assert_400(&batch, bad, Some("taskType"), "invalid_value").await;
}

/// `/tokenize` with `add_special` gives what an input is embedded as: BOS and, for this model, EOS.
#[tokio::test]
async fn tokenize_adds_the_eos_an_embedding_model_wants() {
    let (status, v) =
        post(&format!("{}/tokenize", base()), json!({"content": "hello world", "add_special": true})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tokens"], json!([2, 23391, 1902, 1]));
    let (_, v) = post(&format!("{}/tokenize", base()), json!({"content": "hello world", "add_special": false})).await;
    assert_eq!(v["tokens"], json!([23391, 1902]));
}

#[tokio::test]
async fn a_generative_model_refuses_embeddings() {
    let base = generative_base();
    let (status, v) = post(&format!("{base}/v1/embeddings"), json!({"input": HELLO})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "model_not_supported", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not an embedding model"), "{v}");
    let (status, v) = post(&format!("{base}/embeddings"), json!({"input": [HELLO, "x"]})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "model_not_supported", "{v}");
    let url = format!("{base}/v1beta/models/gemma:embedContent");
    let (status, v) = post(&url, json!({"content": {"parts": [{"text": HELLO}]}})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "model_not_supported", "{v}");
}

#[test]
fn the_official_openai_package_gets_the_reference_embeddings() {
    let stdout = common::run_python_client("openai", "openai_embeddings_client.py", &[base(), HELLO, QUERY, PARIS]);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: not JSON:\n{stdout}"));
    let vectors = v["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    for (e, text) in vectors.iter().zip([HELLO, QUERY, PARIS]) {
        assert_close(&floats(e), &golden(text).embedding, &format!("openai package, {text:?}"));
    }
    let tokens: usize = [HELLO, QUERY, PARIS].iter().map(|t| golden(t).ids.len()).sum();
    assert_eq!(v["prompt_tokens"], tokens);
    // The package's default encoding is base64 (decoded by the package): the same numbers as floats.
    let short = floats(&v["short"]);
    assert_eq!(short.len(), 256);
    assert_close(&short, &truncated(&golden(HELLO).embedding, 256), "openai package, dimensions=256");
}
