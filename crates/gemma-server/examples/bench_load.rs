//! Load generator for `scripts/bench-server.sh`: aggregate generated tokens/s at several numbers of
//! concurrent streams, and the time to first token of a chat's second turn (1,000-token history) against a
//! cold prompt of the same length. Speaks only the OpenAI endpoints, so it measures gemma-server and
//! llama-server alike. Prints one JSON object.
//!
//!   bench_load --url http://127.0.0.1:8080 [--streams 1,4,8] [--requests 2] [--max-tokens 64]

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::future::join_all;
use serde_json::{json, Value};

struct Options {
    url: String,
    streams: Vec<usize>,
    requests: usize,
    max_tokens: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { url: "http://127.0.0.1:8080".into(), streams: vec![1, 4, 8], requests: 2, max_tokens: 64 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => o.url = value,
            "--streams" => o.streams = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--requests" => o.requests = value.parse()?,
            "--max-tokens" => o.max_tokens = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(o)
}

/// One non-streamed completion; returns the generated token count.
async fn completion(http: &reqwest::Client, url: &str, prompt: &str, max_tokens: usize) -> anyhow::Result<u64> {
    // `ignore_eos` (llama-server) and a prompt that invites a long answer keep both servers generating.
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
    let v: Value =
        http.post(format!("{url}/v1/completions")).json(&body).send().await?.error_for_status()?.json().await?;
    v["usage"]["completion_tokens"].as_u64().context("no usage in the answer")
}

/// `streams` clients, each sending `requests` completions one after another.
async fn throughput(http: &reqwest::Client, o: &Options, streams: usize) -> anyhow::Result<Value> {
    let start = Instant::now();
    let runs = (0..streams).map(|s| async move {
        let mut tokens = 0;
        for r in 0..o.requests {
            let prompt = format!("Story {s}-{r}. Write a long story about a dragon who learns to sing.");
            tokens += completion(http, &o.url, &prompt, o.max_tokens).await?;
        }
        anyhow::Ok(tokens)
    });
    let mut total = 0;
    for r in join_all(runs).await {
        total += r?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(
        json!({"streams": streams, "generated_tokens": total, "seconds": secs, "tokens_per_second": total as f64 / secs}),
    )
}

/// A history of about 1,000 tokens, made unique by `nonce` so that no cache holds it beforehand.
fn history(nonce: &str) -> String {
    let mut s = format!("Session {nonce}. Here are some notes to remember.\n");
    for i in 0..50 {
        s.push_str(&format!("Note {i}: the box number {i} holds {} red marbles.\n", (i * 7) % 13 + 1));
    }
    s
}

/// Seconds from sending a streamed chat request to its first content chunk.
async fn ttft(http: &reqwest::Client, url: &str, messages: &Value) -> anyhow::Result<f64> {
    let body = json!({"messages": messages, "max_tokens": 8, "temperature": 0, "stream": true});
    let start = Instant::now();
    let mut r = http.post(format!("{url}/v1/chat/completions")).json(&body).send().await?.error_for_status()?;
    let mut buf = String::new();
    while let Some(chunk) = r.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        for line in buf.lines() {
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                return Ok(start.elapsed().as_secs_f64());
            }
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                if v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
                    return Ok(start.elapsed().as_secs_f64());
                }
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Cold: the second-turn messages of a conversation never seen. Warm: the first turn is sent first, then the
/// second turn (which repeats the first turn and its answer) is timed.
async fn prefix_reuse(http: &reqwest::Client, url: &str, round: usize) -> anyhow::Result<Value> {
    let second_turn = |nonce: &str, answer: &str| {
        json!([
            {"role": "user", "content": history(nonce)},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "How many marbles are in box 12?"},
        ])
    };
    let cold_messages = second_turn(&format!("cold-{round}-{}", std::process::id()), "I will remember the notes.");
    let cold = ttft(http, url, &cold_messages).await?;

    let nonce = format!("warm-{round}-{}", std::process::id());
    let first = json!([{"role": "user", "content": history(&nonce)}]);
    let v: Value = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"messages": first, "max_tokens": 16, "temperature": 0}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    let history_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let warm = ttft(http, url, &second_turn(&nonce, &answer)).await?;
    Ok(json!({"history_tokens": history_tokens, "cold_ttft_s": cold, "warm_ttft_s": warm, "ratio": warm / cold}))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    // Warm-up: the first request pays for page faults of the weights.
    completion(&http, &o.url, "Hello", 4).await.context("the server does not answer")?;
    let mut results = Vec::new();
    for &s in &o.streams {
        let r = throughput(&http, &o, s).await?;
        eprintln!("{r}");
        results.push(r);
    }
    let mut reuse = Vec::new();
    for round in 0..2 {
        let r = prefix_reuse(&http, &o.url, round).await?;
        eprintln!("{r}");
        reuse.push(r);
    }
    println!("{}", json!({"url": o.url, "throughput": results, "prefix_reuse": reuse}));
    Ok(())
}
