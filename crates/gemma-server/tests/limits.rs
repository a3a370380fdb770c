//! Keys, JWTs, rate limits, a full queue and client disconnects, on a server with one sequence slot and a
//! queue of one. The tests share that server and take turns (they watch its metrics).

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{client, metric};
use futures_util::future::join_all;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const KEY: &str = "test-key-7f3a9c";
const SECRET: &str = "jwt-secret-for-the-tests-0123456789";

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut c = common::test_config();
        c.parallel = 1;
        c.queue_size = 1;
        c.api_keys = vec!["another-key-1".into(), KEY.into()];
        c.jwt_secret = Some(SECRET.into());
        c.rate_limit_enabled = true;
        c.max_requests_per_minute = 20;
        common::start(c)
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(claims: Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

async fn get_models(auth: Option<&str>) -> (u16, Value, Option<String>) {
    let mut r = client().get(format!("{}/v1/models", base()));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test]
async fn keys_and_tokens_are_checked() {
    let _turn = TURN.lock().await;
    let (s, body, _) = get_models(None).await;
    assert_eq!(s, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (s, body, _) = get_models(Some("Bearer wrong-key")).await;
    assert_eq!(s, 401);
    assert!(!body.to_string().contains("wrong-key"), "the key is not echoed");
    assert_eq!(get_models(Some(&format!("Bearer {KEY}"))).await.0, 200);
    assert_eq!(get_models(Some(&format!("Bearer {KEY}x"))).await.0, 401);
    assert_eq!(get_models(Some(KEY)).await.0, 401, "the Bearer scheme is required");
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(client().get(format!("{}/health", base())).send().await.unwrap().status(), 200);
    assert_eq!(client().get(format!("{}/metrics", base())).send().await.unwrap().status(), 200);
    // A completion needs the key too.
    let r = client().post(format!("{}/v1/completions", base())).json(&json!({"prompt": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let t = now();
    let ok = jwt(json!({"sub": "alice", "exp": t + 300, "nbf": t - 10}), SECRET);
    assert_eq!(get_models(Some(&format!("Bearer {ok}"))).await.0, 200);
    let expired = jwt(json!({"sub": "alice", "exp": t - 1}), SECRET);
    let (s, body, _) = get_models(Some(&format!("Bearer {expired}"))).await;
    assert_eq!(s, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
    let early = jwt(json!({"sub": "alice", "exp": t + 300, "nbf": t + 120}), SECRET);
    assert_eq!(get_models(Some(&format!("Bearer {early}"))).await.0, 401);
    let forged = jwt(json!({"sub": "alice", "exp": t + 300}), "some-other-secret-of-enough-length");
    assert_eq!(get_models(Some(&format!("Bearer {forged}"))).await.0, 401);
}

#[tokio::test]
async fn each_caller_has_a_rate_limit() {
    let _turn = TURN.lock().await;
    let token = jwt(json!({"sub": "burst", "exp": now() + 300}), SECRET);
    let auth = format!("Bearer {token}");
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..21 {
        let (s, body, r) = get_models(Some(&auth)).await;
        if s == 429 {
            assert_eq!(body["error"]["type"], "rate_limit_error");
            retry = r;
        }
        statuses.push(s);
    }
    assert!(statuses[..20].iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(statuses[20], 429);
    let retry: u64 = retry.expect("429 carries Retry-After").parse().unwrap();
    assert!((1..=4).contains(&retry), "{retry}");
    // Another caller is not limited by the first one's bucket.
    let other = jwt(json!({"sub": "calm", "exp": now() + 300}), SECRET);
    assert_eq!(get_models(Some(&format!("Bearer {other}"))).await.0, 200);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let _turn = TURN.lock().await;
    let send = || async {
        let r = client()
            .post(format!("{}/v1/completions", base()))
            .header("authorization", format!("Bearer {KEY}"))
            .json(&json!({"prompt": "Tell me a long story about a dragon", "max_tokens": 24, "temperature": 0}))
            .send()
            .await
            .unwrap();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), retry)
    };
    // One runs, one waits, the others find the queue full.
    let results = join_all((0..4).map(|_| send())).await;
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "{results:?}");
    assert!(busy.iter().all(|(_, r)| r.as_deref() == Some("1")));
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 503), "{results:?}");
    assert!(results.iter().any(|(s, _)| *s == 200));
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_sequence() {
    let _turn = TURN.lock().await;
    let metrics = || async { client().get(format!("{}/metrics", base())).send().await.unwrap().text().await.unwrap() };
    let before = metric(&metrics().await, "gemma_generated_tokens_total");
    let r = client()
        .post(format!("{}/v1/completions", base()))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&json!({"prompt": "Write a very long essay about rivers.", "max_tokens": 400, "temperature": 0,
                      "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        let chunk = stream.next().await.expect("stream goes on").unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    drop(stream);
    let t0 = Instant::now();
    loop {
        let m = metrics().await;
        if metric(&m, "gemma_running_sequences") == 0.0 {
            let generated = metric(&m, "gemma_generated_tokens_total") - before;
            assert!(generated < 200.0, "the sequence stopped early: {generated} tokens");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the sequence was not cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
