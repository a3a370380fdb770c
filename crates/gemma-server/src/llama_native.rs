//! llama-server's own completion endpoint, `POST /completion` (and `/completions`): its request fields and
//! defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, `n_predict` -1 = until the end of the text or
//! the context), its response (`content`, `stop_type`, `stopping_word`, `tokens_predicted`, `timings`,
//! `completion_probabilities` with `n_probs`, ...) and its stream (one `data:` event per token, the last with
//! `stop: true` and the whole summary, no `[DONE]`). A list of prompts answers with a list of results.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use gemma_core::sampling::TokenLogprobs;
use gemma_core::stop::StopMatcher;
use gemma_core::{SamplingParams, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api_error::ApiError;
use crate::engine::{Event, Finish, FinishReason, LoadedModel};
use crate::fields::Fields;
use crate::openai::{
    parse_dry, parse_grammar, parse_llama_sampling, parse_logit_bias, parse_prompts, piece_text, submit, validated,
    Dialect, Plan, MAX_CHOICES, MAX_STOPS,
};
use crate::server::{off_runtime, read_body, AppState};

/// llama-server caps `n_probs` nowhere; this keeps a response's size sane.
const MAX_N_PROBS: u64 = 100;

pub async fn completion(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(body, &headers, state.max_body_bytes()).await?;
    let loaded = state.loaded()?;
    let parsing = loaded.clone();
    let (plan, native) = off_runtime(move || parse(&Fields::parse(&bytes)?, &parsing)).await?;
    let rx = submit(&state, &plan, &loaded, received)?;
    let summary = Summary { plan, native, loaded, received };
    if summary.plan.stream {
        let state = StreamState { rx, summary, results: Vec::new(), done: 0 };
        let events = stream::unfold(state, |mut s| async move {
            let batch = s.next_events().await?;
            Some((stream::iter(batch.into_iter().map(Ok::<_, Infallible>)), s))
        })
        .flatten();
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let mut results: Vec<Progress> = Vec::new();
    let mut rx = rx;
    let total = summary.plan.prompts.len();
    let mut done = 0;
    while done < total {
        let Some((i, event)) = rx.recv().await else {
            return Err(ApiError::internal("the inference engine stopped"));
        };
        if results.len() <= i {
            results.resize_with(i + 1, Progress::default);
        }
        match event {
            Event::Chunk(c) => results[i].add(&c.text, c.token, c.logprob),
            Event::Done(f) => {
                results[i].finish = Some((f, Instant::now()));
                done += 1;
            }
            Event::Error(m) => return Err(ApiError::internal(m)),
            Event::Rejected(m) => return Err(ApiError::invalid(m)),
        }
    }
    let bodies: Vec<Value> = results.iter().enumerate().map(|(i, r)| summary.final_json(i, r, true)).collect();
    Ok(Json(if summary.native.many { Value::Array(bodies) } else { bodies.into_iter().next().unwrap_or_default() })
        .into_response())
}

/// What the native response needs beyond the shared plan.
pub(crate) struct Native {
    /// The request gave a list of prompts: answer with a list.
    many: bool,
    pub(crate) n_predict: i64,
    pub(crate) n_probs: usize,
    return_tokens: bool,
}

pub(crate) fn parse(f: &Fields, loaded: &LoadedModel) -> Result<(Plan, Native), ApiError> {
    let tok = &loaded.tokenizer;
    if f.raw("prompt").is_none() {
        return Err(ApiError::invalid_param("prompt", "'prompt' is required").with_code("missing_required_parameter"));
    }
    let many = matches!(f.raw("prompt"), Some(Value::Array(items)) if items.first().is_some_and(|v| !v.is_number()));
    let prompts = parse_prompts(f, tok, loaded.vocab_size)?;
    if prompts.len() > MAX_CHOICES {
        return Err(ApiError::invalid_param("prompt", format!("at most {MAX_CHOICES} prompts per request")));
    }
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
        }
        if p.len() >= loaded.ctx {
            return Err(ApiError::invalid_param(
                "prompt",
                format!("the prompt has {} tokens, but the context holds {}", p.len(), loaded.ctx),
            )
            .with_code("context_length_exceeded"));
        }
    }
    // `n_predict` (or `max_tokens`): -1 is "until the end"; llama-server generates one token even for 0.
    let n_predict = match f.raw("n_predict").or(f.raw("max_tokens")) {
        None | Some(Value::Null) => -1,
        Some(v) => v.as_i64().filter(|n| *n >= -1).ok_or_else(|| {
            ApiError::invalid_param("n_predict", format!("'n_predict' must be an integer, -1 or more, got {v}"))
                .with_code("invalid_value")
        })?,
    };
    let max_tokens = (n_predict >= 0).then_some((n_predict as usize).max(1));

    let number = |name: &str, default: f32, range: std::ops::RangeInclusive<f64>| -> Result<f32, ApiError> {
        Ok(f.number_in(name, range)?.map_or(default, |v| v as f32))
    };
    let top_k = match f.raw("top_k") {
        None | Some(Value::Null) => 40,
        Some(v) => match v.as_i64() {
            Some(k) if k <= 0 => 0,
            Some(k) => k as usize,
            None => {
                return Err(ApiError::invalid_param("top_k", "'top_k' must be an integer").with_code("invalid_type"))
            }
        },
    };
    let seed = match f.raw("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(-1) => None,
            Some(s) if s >= 0 => Some(s as u64),
            _ => match v.as_u64() {
                Some(s) if s == u32::MAX as u64 => None,
                Some(s) => Some(s),
                None => {
                    return Err(ApiError::invalid_param("seed", "'seed' must be an integer (-1: random)")
                        .with_code("invalid_type"))
                }
            },
        },
    };
    let mut logit_bias = match f.raw("logit_bias") {
        Some(Value::Array(pairs)) => parse_bias_pairs(pairs, loaded.vocab_size)?,
        _ => parse_logit_bias(f, loaded.vocab_size)?,
    };
    if f.get::<bool>("ignore_eos")?.unwrap_or(false) {
        logit_bias.extend(tok.end_of_generation_ids().map(|id| (id, f32::NEG_INFINITY)));
    }
    let base = SamplingParams {
        temperature: number("temperature", 0.8, -1e9..=1e9)?.max(0.0),
        top_k,
        top_p: number("top_p", 0.95, 0.0..=1.0)?,
        min_p: number("min_p", 0.05, 0.0..=1.0)?,
        presence_penalty: number("presence_penalty", 0.0, -1e9..=1e9)?,
        frequency_penalty: number("frequency_penalty", 0.0, -1e9..=1e9)?,
        seed,
        logit_bias,
        ..SamplingParams::default()
    };
    let sampling = parse_llama_sampling(f, base)
        .and_then(|p| parse_dry(f, p))
        .and_then(|p| parse_grammar(f, p))
        .and_then(validated)?;
    let stop = f.string_or_list("stop")?;
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid_param("stop", format!("at most {MAX_STOPS} stop strings")));
    }
    let n_probs = f.integer_in("n_probs", 0..=MAX_N_PROBS)?.unwrap_or(0) as usize;
    let plan = Plan {
        dialect: Dialect::Completion,
        prompts,
        n: 1,
        max_tokens,
        sampling,
        stop,
        stream: f.get::<bool>("stream")?.unwrap_or(false),
        include_usage: false,
        logprobs: (n_probs > 0).then_some(n_probs),
        shift: crate::openai::ShiftRequest::parse(f)?,
        lora: crate::llama_server::parse_lora(f, loaded)?,
    };
    let return_tokens = f.get::<bool>("return_tokens")?.unwrap_or(false);
    Ok((plan, Native { many, n_predict, n_probs, return_tokens }))
}

/// llama-server's list form of `logit_bias`: `[[id, bias], ...]`, where a bias of `false` bans the token.
fn parse_bias_pairs(pairs: &[Value], vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::invalid_param("logit_bias", m).with_code("invalid_value");
    pairs
        .iter()
        .map(|pair| {
            let (id, bias) = match pair.as_array().map(Vec::as_slice) {
                Some([id, bias]) => (id, bias),
                _ => return Err(bad(format!("each 'logit_bias' entry must be [token id, bias], got {pair}"))),
            };
            let id = id
                .as_u64()
                .filter(|&i| (i as usize) < vocab)
                .ok_or_else(|| bad(format!("{id} is not a token id of the vocabulary of {vocab}")))?;
            let bias = match bias {
                Value::Bool(false) => f32::NEG_INFINITY,
                b => b
                    .as_f64()
                    .filter(|b| b.is_finite())
                    .ok_or_else(|| bad(format!("the bias of {id} must be a number or false")))?
                    as f32,
            };
            Ok((id as u32, bias))
        })
        .collect()
}

/// One prompt's output so far.
#[derive(Default)]
struct Progress {
    content: String,
    tokens: Vec<u32>,
    probs: Vec<(u32, TokenLogprobs)>,
    first_token: Option<Instant>,
    finish: Option<(Finish, Instant)>,
}

impl Progress {
    fn add(&mut self, text: &str, token: Option<u32>, logprob: Option<TokenLogprobs>) {
        self.content.push_str(text);
        if let Some(id) = token {
            self.first_token.get_or_insert_with(Instant::now);
            self.tokens.push(id);
            if let Some(lp) = logprob {
                self.probs.push((id, lp));
            }
        }
    }
}

struct Summary {
    plan: Plan,
    native: Native,
    loaded: Arc<LoadedModel>,
    received: Instant,
}

impl Summary {
    /// The closing object of prompt `i`: its text (`with_content`; a stream has sent it already), the counts,
    /// why it stopped, the settings and the timings.
    fn final_json(&self, i: usize, r: &Progress, with_content: bool) -> Value {
        let tok = &self.loaded.tokenizer;
        let (finish, ended) = r.finish.unwrap_or((
            Finish {
                reason: FinishReason::Length,
                prompt_tokens: 0,
                completion_tokens: 0,
                cached_tokens: 0,
                stop_word: None,
                context_shifts: 0,
                speculative: None,
            },
            Instant::now(),
        ));
        let stops = StopMatcher::new(self.plan.stop.clone());
        let word = finish.stop_word.and_then(|w| stops.stops().get(w)).cloned();
        let stop_type = match (finish.reason, &word) {
            (FinishReason::Stop, Some(_)) => "word",
            (FinishReason::Stop, None) => "eos",
            (FinishReason::Length, _) => "limit",
        };
        let prompt = &self.plan.prompts[i];
        let first = r.first_token.unwrap_or(ended);
        let prompt_ms = first.duration_since(self.received).as_secs_f64() * 1e3;
        let predicted_ms = ended.duration_since(first).as_secs_f64() * 1e3;
        let evaluated = finish.prompt_tokens - finish.cached_tokens;
        let per = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
        let mut v = json!({
            "index": i,
            "content": if with_content { r.content.as_str() } else { "" },
            "tokens": if with_content && self.native.return_tokens { r.tokens.clone() } else { Vec::new() },
            "id_slot": 0,
            "stop": true,
            "model": self.loaded.id,
            "tokens_predicted": finish.completion_tokens,
            "tokens_evaluated": finish.prompt_tokens,
            "generation_settings": self.settings(),
            "prompt": tok.decode(prompt, true),
            "has_new_line": r.content.contains('\n'),
            "truncated": finish.context_shifts > 0,
            "stop_type": stop_type,
            "stopping_word": word.unwrap_or_default(),
            "tokens_cached": (finish.prompt_tokens + finish.completion_tokens).saturating_sub(1),
            "timings": {
                "cache_n": finish.cached_tokens,
                "prompt_n": evaluated,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": per(evaluated, prompt_ms),
                "prompt_per_second": if prompt_ms > 0.0 { evaluated as f64 * 1e3 / prompt_ms } else { 0.0 },
                "predicted_n": finish.completion_tokens,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": per(finish.completion_tokens, predicted_ms),
                "predicted_per_second":
                    if predicted_ms > 0.0 { finish.completion_tokens as f64 * 1e3 / predicted_ms } else { 0.0 },
            },
        });
        // As llama-server: the draft counts when a draft ran.
        if let Some(st) = finish.speculative.filter(|st| st.draft_n > 0) {
            v["timings"]["draft_n"] = json!(st.draft_n);
            v["timings"]["draft_n_accepted"] = json!(st.draft_n_accepted);
        }
        if self.native.n_probs > 0 && with_content {
            v["completion_probabilities"] = probabilities_json(tok, &r.probs);
        }
        v
    }

    /// The settings the request ran with, under llama-server's names.
    fn settings(&self) -> Value {
        let p = &self.plan.sampling;
        let mut v = sampler_settings(p);
        // where llama-server puts it: after the other DRY settings
        let at = v.keys().position(|k| k == "dry_penalty_last_n").map_or(v.len(), |i| i + 1);
        v.shift_insert(at, "dry_sequence_breakers".into(), json!(p.dry_sequence_breakers));
        let rest = json!({
            "stop": self.plan.stop,
            "n_predict": self.native.n_predict,
            "max_tokens": self.native.n_predict,
            "stream": self.plan.stream,
            "n_probs": self.native.n_probs,
            "min_keep": p.min_keep,
            "grammar": p.grammar.clone().unwrap_or_default(),
            "logit_bias": p.logit_bias.iter().map(|(id, b)| json!([id, if b.is_finite() { json!(b) } else { json!(false) }])).collect::<Vec<_>>(),
        });
        if let Value::Object(rest) = rest {
            v.extend(rest);
        }
        Value::Object(v)
    }
}

/// `completion_probabilities`: each token with its log-probability and the `n_probs` most likely.
fn probabilities_json(tok: &Tokenizer, probs: &[(u32, TokenLogprobs)]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = piece_text(tok, id);
        json!({"id": id, "token": text, "bytes": text.as_bytes(), "logprob": logprob})
    };
    probs
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.chosen.logprob);
            e["top_logprobs"] = lp.top.iter().map(|t| entry(t.id, t.logprob)).collect();
            e
        })
        .collect()
}

struct StreamState {
    rx: UnboundedReceiver<(usize, Event)>,
    summary: Summary,
    results: Vec<Progress>,
    done: usize,
}

impl StreamState {
    async fn next_events(&mut self) -> Option<Vec<SseEvent>> {
        let total = self.summary.plan.prompts.len();
        if self.done == total {
            return None;
        }
        let data = |v: Value| SseEvent::default().data(v.to_string());
        let Some((i, event)) = self.rx.recv().await else {
            self.done = total;
            return Some(vec![data(ApiError::internal("the inference engine stopped").body())]);
        };
        if self.results.len() <= i {
            self.results.resize_with(i + 1, Progress::default);
        }
        match event {
            Event::Chunk(c) => {
                let r = &mut self.results[i];
                let (text, token) = (c.text.clone(), c.token);
                r.add(&c.text, c.token, c.logprob.clone());
                if text.is_empty() && token.is_none() {
                    return Some(Vec::new());
                }
                let mut v = json!({
                    "index": i,
                    "content": text,
                    "tokens": token.map(|t| vec![t]).unwrap_or_default(),
                    "stop": false,
                    "id_slot": -1,
                    "tokens_predicted": r.tokens.len(),
                    "tokens_evaluated": self.summary.plan.prompts[i].len(),
                });
                if let (Some(lp), Some(id)) = (c.logprob, token) {
                    v["completion_probabilities"] = probabilities_json(&self.summary.loaded.tokenizer, &[(id, lp)]);
                }
                Some(vec![data(v)])
            }
            Event::Done(f) => {
                self.results[i].finish = Some((f, Instant::now()));
                self.done += 1;
                Some(vec![data(self.summary.final_json(i, &self.results[i], false))])
            }
            Event::Error(m) => {
                self.done = total;
                Some(vec![data(ApiError::internal(m).body())])
            }
            Event::Rejected(m) => {
                self.done = total;
                Some(vec![data(ApiError::invalid(m).body())])
            }
        }
    }
}

/// The sampler settings llama-server reports (in `/completion`'s `generation_settings` and `/props`), under
/// its names and in its order, from `seed` to `mirostat_eta` (without the DRY breakers, which only
/// `/completion` shows).
pub(crate) fn sampler_settings(p: &SamplingParams) -> serde_json::Map<String, Value> {
    let v = json!({
        "seed": p.seed.unwrap_or(u32::MAX as u64),
        "temperature": p.temperature,
        "dynatemp_range": p.dynatemp_range,
        "dynatemp_exponent": p.dynatemp_exponent,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "top_n_sigma": p.top_n_sigma,
        "xtc_probability": p.xtc_probability,
        "xtc_threshold": p.xtc_threshold,
        "typical_p": p.typical_p,
        "repeat_last_n": if p.penalty_last_n == usize::MAX { -1 } else { p.penalty_last_n as i64 },
        "repeat_penalty": p.repeat_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "dry_multiplier": p.dry_multiplier,
        "dry_base": p.dry_base,
        "dry_allowed_length": p.dry_allowed_length,
        "dry_penalty_last_n": p.dry_penalty_last_n,
        "mirostat": u8::from(p.mirostat),
        "mirostat_tau": p.mirostat_tau,
        "mirostat_eta": p.mirostat_eta,
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
