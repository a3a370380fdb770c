//! Choosing the next token from logits, following llama.cpp's sampler chain (`src/llama-sampler.cpp`,
//! `common/sampling.cpp`):
//!
//! `logit_bias` → the configurable chain (default: penalties → DRY → top-n-σ → top-k → typical-p → top-p →
//! min-p → XTC → temperature) → a random draw; or, with Mirostat, `logit_bias` → temperature →
//! Mirostat v1/v2 (llama.cpp skips the chain, penalties and DRY included, in Mirostat mode).
//!
//! Greedy settings with nothing that can move the maximum (no bias, penalties, DRY, typical-p or XTC) are
//! a plain argmax over the logits. Every other path works in buffers owned by the [`Sampler`], so no
//! token allocates once the buffers have grown to the vocabulary. The random draws are llama.cpp's own
//! (`std::mt19937` as libstdc++ uses it, [`crate::random`]): the same seed gives the same text, and the
//! same text as llama.cpp wherever the two engines' probabilities agree.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::grammar::{Grammar, GrammarError, GrammarMatcher, GrammarVocab};
use crate::random::Mt19937;
use crate::tokenizer::Tokenizer;

mod dry;

pub use dry::DryBreakers;

/// A bad sampler name, letter or value.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error(
        "unknown sampler '{0}' (known: penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature)"
    )]
    UnknownSampler(String),
    #[error("unknown sampler letter '{0}' (known: e=penalties d=dry s=top_n_sigma k=top_k y=typ_p p=top_p m=min_p x=xtc t=temperature)")]
    UnknownSamplerLetter(char),
    #[error("sampler '{0}' is not supported by gemma-rs")]
    UnsupportedSampler(String),
    #[error("mirostat must be 0 (off), 1 or 2, got {0}")]
    BadMirostat(u8),
    #[error("{name} must be {requirement}, got {value}")]
    BadValue { name: &'static str, requirement: &'static str, value: f32 },
    #[error("logit bias '{0}' is not TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 15043-inf)")]
    BadLogitBias(String),
    #[error("{0}")]
    Grammar(#[from] GrammarError),
}

/// One stage of the sampler chain. The serde names are llama.cpp's canonical `--samplers` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SamplerStage {
    /// Repeat, frequency and presence penalties over the last `penalty_last_n` tokens.
    #[serde(rename = "penalties")]
    Penalties,
    /// DRY: penalizes tokens that would extend a repeated run of tokens.
    #[serde(rename = "dry")]
    Dry,
    /// Masks logits below `max − top_n_sigma·σ`.
    #[serde(rename = "top_n_sigma")]
    TopNSigma,
    #[serde(rename = "top_k")]
    TopK,
    /// Locally typical sampling.
    #[serde(rename = "typ_p")]
    TypicalP,
    #[serde(rename = "top_p")]
    TopP,
    #[serde(rename = "min_p")]
    MinP,
    /// Exclude Top Choices.
    #[serde(rename = "xtc")]
    Xtc,
    #[serde(rename = "temperature")]
    Temperature,
}

impl SamplerStage {
    /// llama.cpp's default order.
    pub const DEFAULT_CHAIN: [SamplerStage; 9] = [
        SamplerStage::Penalties,
        SamplerStage::Dry,
        SamplerStage::TopNSigma,
        SamplerStage::TopK,
        SamplerStage::TypicalP,
        SamplerStage::TopP,
        SamplerStage::MinP,
        SamplerStage::Xtc,
        SamplerStage::Temperature,
    ];

    /// The canonical name (`--samplers` form).
    pub fn name(self) -> &'static str {
        match self {
            SamplerStage::Penalties => "penalties",
            SamplerStage::Dry => "dry",
            SamplerStage::TopNSigma => "top_n_sigma",
            SamplerStage::TopK => "top_k",
            SamplerStage::TypicalP => "typ_p",
            SamplerStage::TopP => "top_p",
            SamplerStage::MinP => "min_p",
            SamplerStage::Xtc => "xtc",
            SamplerStage::Temperature => "temperature",
        }
    }

    /// The letter of the short form (`--sampling-seq`).
    pub fn letter(self) -> char {
        match self {
            SamplerStage::Penalties => 'e',
            SamplerStage::Dry => 'd',
            SamplerStage::TopNSigma => 's',
            SamplerStage::TopK => 'k',
            SamplerStage::TypicalP => 'y',
            SamplerStage::TopP => 'p',
            SamplerStage::MinP => 'm',
            SamplerStage::Xtc => 'x',
            SamplerStage::Temperature => 't',
        }
    }

    /// Parses llama.cpp's `--samplers` form: names separated by `;`, case-insensitive, with its aliases
    /// (`top-k`, `topk`, `nucleus`, `temp`, `typ`, ...). Empty names are skipped.
    pub fn parse_names(list: &str) -> Result<Vec<SamplerStage>, SamplingError> {
        let mut chain = Vec::new();
        for raw in list.split(';') {
            let name = raw.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let stage = match name.as_str() {
                "penalties" => SamplerStage::Penalties,
                "dry" => SamplerStage::Dry,
                "top_n_sigma" | "top-n-sigma" | "topnsigma" => SamplerStage::TopNSigma,
                "top_k" | "top-k" | "topk" => SamplerStage::TopK,
                "typ_p" | "typ-p" | "typp" | "typ" => SamplerStage::TypicalP,
                "top_p" | "top-p" | "topp" | "nucleus" => SamplerStage::TopP,
                "min_p" | "min-p" | "minp" => SamplerStage::MinP,
                "xtc" => SamplerStage::Xtc,
                "temperature" | "temp" => SamplerStage::Temperature,
                "infill" | "adaptive_p" | "adaptive-p" | "adaptivep" => {
                    return Err(SamplingError::UnsupportedSampler(name));
                }
                _ => return Err(SamplingError::UnknownSampler(raw.trim().to_string())),
            };
            chain.push(stage);
        }
        Ok(chain)
    }

    /// Parses the short letter form (`--sampling-seq`, e.g. `kptm`): e=penalties, d=dry,
    /// s=top_n_sigma, k=top_k, y=typ_p, p=top_p, m=min_p, x=xtc, t=temperature.
    pub fn parse_letters(letters: &str) -> Result<Vec<SamplerStage>, SamplingError> {
        let mut chain = Vec::new();
        for c in letters.chars() {
            let stage = match c {
                'e' => SamplerStage::Penalties,
                'd' => SamplerStage::Dry,
                's' => SamplerStage::TopNSigma,
                'k' => SamplerStage::TopK,
                'y' => SamplerStage::TypicalP,
                'p' => SamplerStage::TopP,
                'm' => SamplerStage::MinP,
                'x' => SamplerStage::Xtc,
                't' => SamplerStage::Temperature,
                'i' => return Err(SamplingError::UnsupportedSampler("infill".into())),
                'a' => return Err(SamplingError::UnsupportedSampler("adaptive_p".into())),
                other => return Err(SamplingError::UnknownSamplerLetter(other)),
            };
            chain.push(stage);
        }
        Ok(chain)
    }
}

/// Mirostat mode. In JSON it is llama.cpp's integer: 0 off, 1 Mirostat, 2 Mirostat 2.0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Mirostat {
    #[default]
    Off,
    V1,
    V2,
}

impl TryFrom<u8> for Mirostat {
    type Error = SamplingError;
    fn try_from(version: u8) -> Result<Self, Self::Error> {
        match version {
            0 => Ok(Mirostat::Off),
            1 => Ok(Mirostat::V1),
            2 => Ok(Mirostat::V2),
            v => Err(SamplingError::BadMirostat(v)),
        }
    }
}

impl From<Mirostat> for u8 {
    fn from(m: Mirostat) -> u8 {
        match m {
            Mirostat::Off => 0,
            Mirostat::V1 => 1,
            Mirostat::V2 => 2,
        }
    }
}

/// Mirostat v1 estimates the Zipf exponent from this many of the most probable tokens (llama.cpp's m).
pub const MIROSTAT_M: usize = 100;

/// Sampling settings. `temperature <= 0`, or `top_k == 1` with top-k in the chain and Mirostat off, is
/// greedy. Every field has a neutral default, so build it with `..Default::default()`; in JSON every
/// field is optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// Only the low 32 bits count, as in llama.cpp; `None` or `0xFFFFFFFF` (llama.cpp's `-1`): seeded from
    /// the clock.
    pub seed: Option<u64>,
    /// How many of the latest tokens (prompt and generated) the penalties look at; 0 disables them.
    pub penalty_last_n: usize,
    /// Divides positive logits and multiplies negative ones of seen tokens; 1.0 disables it.
    pub repeat_penalty: f32,
    /// Subtracted `count` times from the logit of a seen token; 0.0 disables it.
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of a seen token; 0.0 disables it.
    pub presence_penalty: f32,
    /// Added to the logit of a token before anything else; `f32::NEG_INFINITY` bans the token.
    pub logit_bias: Vec<(u32, f32)>,
    /// Locally typical sampling; 1.0 disables it.
    pub typical_p: f32,
    /// Top-n-σ; 0 or less disables it.
    pub top_n_sigma: f32,
    /// Chance that XTC runs on a token; 0.0 disables it.
    pub xtc_probability: f32,
    /// XTC removes the top tokens with probability at least this, but the last of them; above 0.5 disables it.
    pub xtc_threshold: f32,
    /// Top-p, min-p, typical-p and XTC keep at least this many candidates; 0 means 1.
    pub min_keep: usize,
    pub mirostat: Mirostat,
    /// Mirostat's target surprise (llama.cpp `--mirostat-ent`).
    pub mirostat_tau: f32,
    /// Mirostat's learning rate (llama.cpp `--mirostat-lr`).
    pub mirostat_eta: f32,
    /// DRY: the penalty of a token that would extend a repeat just past `dry_allowed_length`; 0.0
    /// disables DRY.
    pub dry_multiplier: f32,
    /// DRY: the penalty grows by this factor per further token of the repeat; below 1.0 disables DRY.
    pub dry_base: f32,
    /// DRY: repeats of up to this many tokens are not penalized.
    pub dry_allowed_length: u32,
    /// DRY: how many of the latest tokens (prompt and generated) are scanned for repeats; 0 disables
    /// DRY, -1 means the whole context.
    pub dry_penalty_last_n: i32,
    /// DRY: texts that end a repeat (a repeat never spans the latest of them); matched against token
    /// texts, so they need the vocabulary (see [`Sampler::for_model`]).
    pub dry_sequence_breakers: Vec<String>,
    /// Dynamic temperature (llama.cpp `--dynatemp-range`): above 0, the temperature stage uses a
    /// temperature between `temperature ± dynatemp_range`, higher the flatter the candidates are.
    pub dynatemp_range: f32,
    /// How the dynamic temperature follows the normalised entropy (llama.cpp `--dynatemp-exp`).
    pub dynatemp_exponent: f32,
    /// The order of the chain (unused with Mirostat). A stage not listed does not run.
    pub samplers: Vec<SamplerStage>,
    /// A GBNF grammar (llama.cpp's `--grammar`) the generated text must follow; end of generation is
    /// allowed only where the grammar is complete. It needs the vocabulary: [`Sampler::for_model`] (or
    /// [`Sampler::set_grammar_vocab`]) applies it, [`Sampler::new`] alone does not.
    pub grammar: Option<String>,
}

impl Default for SamplingParams {
    /// The user guide's defaults: temperature 1.0, top-k 1 (so greedy), top-p 1.0; everything that
    /// llama.cpp adds is off, with llama.cpp's values for its knobs (last-n 64, XTC threshold 0.1,
    /// Mirostat τ 5, η 0.1, DRY base 1.75, allowed length 2, last-n 64, breakers `\n : " *`) and its
    /// default chain order.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            penalty_last_n: 64,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            typical_p: 1.0,
            top_n_sigma: -1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            min_keep: 0,
            mirostat: Mirostat::Off,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 64,
            dry_sequence_breakers: default_dry_sequence_breakers(),
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            samplers: SamplerStage::DEFAULT_CHAIN.to_vec(),
            grammar: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// True when the pick is the best surviving candidate rather than a random draw.
    pub fn is_greedy(&self) -> bool {
        // Temperature acts only as a stage of the chain (llama.cpp has no greedy shortcut: without the stage
        // it samples), or before Mirostat; a dynamic temperature may rise above 0 even from 0.
        let temperature_runs = self.mirostat != Mirostat::Off || self.chain_has(SamplerStage::Temperature);
        let dynamic = self.mirostat == Mirostat::Off && self.dynatemp_range > 0.0;
        (self.temperature <= 0.0 && temperature_runs && !dynamic)
            || (self.mirostat == Mirostat::Off && self.top_k == 1 && self.samplers.contains(&SamplerStage::TopK))
    }

    /// True when penalties would change any logit (whatever the chain).
    pub fn penalties_enabled(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0)
    }

    /// True when DRY would change any logit, given a history (llama.cpp's condition; whatever the chain).
    pub fn dry_enabled(&self) -> bool {
        self.dry_multiplier != 0.0 && self.dry_base >= 1.0 && self.dry_penalty_last_n != 0
    }

    /// True when the sampler runs DRY: enabled, in the chain, and not replaced by Mirostat.
    pub fn dry_active(&self) -> bool {
        self.dry_enabled() && self.chain_has(SamplerStage::Dry)
    }

    fn chain_has(&self, stage: SamplerStage) -> bool {
        self.mirostat == Mirostat::Off && self.samplers.contains(&stage)
    }

    /// True when greedy sampling is a plain argmax of the logits: nothing runs that could change which
    /// token is the best (top-k, top-p, min-p, top-n-σ and temperature never drop the maximum).
    pub fn is_plain_argmax(&self) -> bool {
        self.is_greedy()
            && self.logit_bias.is_empty()
            && !(self.chain_has(SamplerStage::Penalties) && self.penalties_enabled())
            && !self.dry_active()
            && !(self.chain_has(SamplerStage::TypicalP) && self.typical_p < 1.0)
            && !(self.chain_has(SamplerStage::Xtc) && xtc_enabled(self.xtc_probability, self.xtc_threshold))
    }

    /// Checks the values llama.cpp rejects, and the ones that would make no sense.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name, requirement, value| Err(SamplingError::BadValue { name, requirement, value });
        if !self.temperature.is_finite() {
            return bad("temperature", "finite", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", "in [0, 1]", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "in [0, 1]", self.min_p);
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0 && (1.0 / self.repeat_penalty).is_finite()) {
            return bad("repeat_penalty", "finite and greater than 0", self.repeat_penalty);
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", "finite", self.frequency_penalty);
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", "finite", self.presence_penalty);
        }
        if self.typical_p.is_nan() {
            return bad("typical_p", "a number", self.typical_p);
        }
        if self.top_n_sigma.is_nan() {
            return bad("top_n_sigma", "a number", self.top_n_sigma);
        }
        if !(0.0..=1.0).contains(&self.xtc_probability) {
            return bad("xtc_probability", "in [0, 1]", self.xtc_probability);
        }
        if self.xtc_threshold.is_nan() {
            return bad("xtc_threshold", "a number", self.xtc_threshold);
        }
        if !self.dynatemp_range.is_finite() {
            return bad("dynatemp_range", "finite", self.dynatemp_range);
        }
        if !self.dynatemp_exponent.is_finite() {
            return bad("dynatemp_exponent", "finite", self.dynatemp_exponent);
        }
        if !self.mirostat_tau.is_finite() {
            return bad("mirostat_tau", "finite", self.mirostat_tau);
        }
        if !self.mirostat_eta.is_finite() {
            return bad("mirostat_eta", "finite", self.mirostat_eta);
        }
        if !self.dry_multiplier.is_finite() {
            return bad("dry_multiplier", "finite", self.dry_multiplier);
        }
        if !self.dry_base.is_finite() {
            return bad("dry_base", "finite", self.dry_base);
        }
        if self.dry_penalty_last_n < -1 {
            return bad("dry_penalty_last_n", "-1 (the context) or more", self.dry_penalty_last_n as f32);
        }
        if let Some(&(_, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY) {
            return bad("logit_bias", "a number below +inf", b);
        }
        if let Some(grammar) = &self.grammar {
            Grammar::parse(grammar)?;
        }
        Ok(())
    }
}

/// llama.cpp's default DRY sequence breakers: newline, colon, double quote, asterisk.
pub fn default_dry_sequence_breakers() -> Vec<String> {
    ["\n", ":", "\"", "*"].map(String::from).to_vec()
}

fn xtc_enabled(probability: f32, threshold: f32) -> bool {
    probability > 0.0 && threshold <= 0.5
}

/// Parses llama.cpp's `--logit-bias` form: `TOKEN_ID+BIAS` or `TOKEN_ID-BIAS`, e.g. `15043+1`,
/// `15043-inf` (bans the token).
pub fn parse_logit_bias(arg: &str) -> Result<(u32, f32), SamplingError> {
    let bad = || SamplingError::BadLogitBias(arg.to_string());
    let arg_trimmed = arg.trim();
    let sign_at = arg_trimmed.find(['+', '-']).ok_or_else(bad)?;
    let id: u32 = arg_trimmed[..sign_at].trim().parse().map_err(|_| bad())?;
    let magnitude: f32 = arg_trimmed[sign_at + 1..].trim().parse().map_err(|_| bad())?;
    if magnitude.is_nan() || magnitude.is_sign_negative() {
        return Err(bad());
    }
    let bias = if arg_trimmed[sign_at..].starts_with('-') { -magnitude } else { magnitude };
    if bias == f32::INFINITY {
        return Err(bad());
    }
    Ok((id, bias))
}

/// A token's log-probability.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// The chosen token's log-probability and the `top_n` most likely tokens, best first (ties: lower id
/// first). These are the log-softmax of the raw model logits over the whole vocabulary, before bias,
/// penalties, temperature or truncation: what OpenAI's `logprobs` and llama-server's default
/// (`post_sampling_probs: false`) report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// Computes [`TokenLogprobs`] for `chosen` from one row of raw logits (NaN logits count as −inf).
pub fn token_logprobs(logits: &[f32], chosen: u32, top_n: usize) -> TokenLogprobs {
    let clean = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let max = logits.iter().map(|&v| clean(v)).fold(f32::NEG_INFINITY, f32::max);
    let log_sum = if max == f32::NEG_INFINITY {
        f64::NEG_INFINITY
    } else {
        let sum: f64 = logits.iter().map(|&v| (clean(v) as f64 - max as f64).exp()).sum();
        max as f64 + sum.ln()
    };
    let logprob = |v: f32| {
        let v = clean(v);
        if v == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            (v as f64 - log_sum) as f32
        }
    };
    // Insertion into a short sorted list: top_n is small (OpenAI allows up to 20).
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        for (i, &v) in logits.iter().enumerate() {
            let v = clean(v);
            if top.len() == top_n && top.last().is_some_and(|&(_, worst)| v <= worst) {
                continue;
            }
            let at = top.partition_point(|&(_, t)| t >= v);
            top.insert(at, (i as u32, v));
            top.truncate(top_n);
        }
    }
    TokenLogprobs {
        chosen: TokenLogprob {
            id: chosen,
            logprob: logits.get(chosen as usize).map_or(f32::NEG_INFINITY, |&v| logprob(v)),
        },
        top: top.into_iter().map(|(id, v)| TokenLogprob { id, logprob: logprob(v) }).collect(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    id: u32,
    logit: f32,
    /// Probability, valid after a softmax.
    p: f32,
}

/// Highest logit first; the lower id first among equals, so every order is deterministic.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// The working set of tokens, like llama.cpp's `llama_token_data_array`.
#[derive(Clone, Debug, Default)]
struct Candidates {
    items: Vec<Candidate>,
    /// Sorted by [`by_logit_desc`].
    sorted: bool,
    /// `items[i].id == i` for every i (the full vocabulary in order).
    id_indexed: bool,
}

impl Candidates {
    fn fill(&mut self, logits: &[f32]) {
        self.items.clear();
        self.items.extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
            id: i as u32,
            logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
            p: 0.0,
        }));
        self.sorted = false;
        self.id_indexed = true;
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.items.sort_unstable_by(by_logit_desc);
            self.sorted = true;
            self.id_indexed = false;
        }
    }

    /// Sorts only the best `k` to the front (the rest stays in no particular order).
    fn sort_prefix(&mut self, k: usize) {
        if self.sorted {
            return;
        }
        if k >= self.items.len() {
            self.sort();
            return;
        }
        if k > 0 {
            self.items.select_nth_unstable_by(k - 1, by_logit_desc);
            self.items[..k].sort_unstable_by(by_logit_desc);
        }
        self.id_indexed = false;
    }

    fn truncate(&mut self, n: usize) {
        if n < self.items.len() {
            self.items.truncate(n);
            self.id_indexed = false;
        }
    }

    fn max_logit(&self) -> f32 {
        if self.sorted {
            self.items.first().map_or(f32::NEG_INFINITY, |c| c.logit)
        } else {
            self.items.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max)
        }
    }

    /// Fills `p` with the softmax of the logits (uniform if every logit is −inf).
    fn softmax(&mut self, sort: bool) {
        if sort {
            self.sort();
        }
        let max = self.max_logit();
        if max == f32::NEG_INFINITY {
            let uniform = 1.0 / self.items.len().max(1) as f32;
            self.items.iter_mut().for_each(|c| c.p = uniform);
            return;
        }
        // In f32 and in this order, as llama.cpp's softmax, so the cut-offs that follow fall where its do.
        let mut sum = 0.0f32;
        for c in &mut self.items {
            c.p = (c.logit - max).exp();
            sum += c.p;
        }
        self.items.iter_mut().for_each(|c| c.p /= sum);
    }

    fn apply_logit_bias(&mut self, bias: &[(u32, f32)]) {
        for &(id, b) in bias {
            let slot = if self.id_indexed {
                self.items.get_mut(id as usize)
            } else {
                self.items.iter_mut().find(|c| c.id == id)
            };
            if let Some(c) = slot {
                c.logit += b;
                if c.logit.is_nan() {
                    c.logit = f32::NEG_INFINITY;
                }
            }
        }
        self.sorted = false;
    }

    /// llama.cpp's penalties: for a token seen `count > 0` times in the window, a repeat penalty divides
    /// a positive logit (multiplies a negative one), then `count·frequency + presence` is subtracted.
    fn apply_penalties(&mut self, counts: &HashMap<u32, u32>, p: &SamplingParams) {
        let penalize = |c: &mut Candidate, count: u32| {
            if c.logit <= 0.0 {
                c.logit *= p.repeat_penalty;
            } else {
                c.logit /= p.repeat_penalty;
            }
            c.logit -= count as f32 * p.frequency_penalty + p.presence_penalty;
        };
        if self.id_indexed {
            for (&id, &count) in counts {
                if let Some(c) = self.items.get_mut(id as usize) {
                    penalize(c, count);
                }
            }
        } else {
            for c in &mut self.items {
                if let Some(&count) = counts.get(&c.id) {
                    penalize(c, count);
                }
            }
        }
        self.sorted = false;
    }

    /// Masks (−inf) the logits below `max − n·σ`, σ over the finite logits.
    fn top_n_sigma(&mut self, n: f32) {
        if n <= 0.0 || self.items.len() <= 1 {
            return;
        }
        let finite = || self.items.iter().map(|c| c.logit).filter(|&l| l != f32::NEG_INFINITY);
        let count = finite().count();
        if count == 0 {
            return;
        }
        let max = finite().fold(f32::NEG_INFINITY, f32::max);
        let mean = finite().map(|l| l as f64).sum::<f64>() / count as f64;
        let var = finite().map(|l| (l as f64 - mean).powi(2)).sum::<f64>() / count as f64;
        let threshold = max - n * var.sqrt() as f32;
        for c in &mut self.items {
            if c.logit < threshold {
                c.logit = f32::NEG_INFINITY;
            }
        }
    }

    fn top_k(&mut self, k: usize) {
        if k == 0 {
            return;
        }
        let k = k.min(self.items.len());
        self.sort_prefix(k);
        self.truncate(k);
        self.sorted = true;
    }

    fn top_p(&mut self, top_p: f32, min_keep: usize) {
        if top_p >= 1.0 || self.items.is_empty() {
            return;
        }
        self.softmax(false);
        // Like llama.cpp, try the best 256 of a large unsorted vocabulary before sorting all of it.
        if !self.sorted && self.items.len() > 1024 {
            self.sort_prefix(256);
            if let Some(keep) = top_p_cut(&self.items[..256], top_p, min_keep) {
                self.truncate(keep);
                self.sorted = true;
                return;
            }
        }
        self.sort();
        let keep = top_p_cut(&self.items, top_p, min_keep).unwrap_or(self.items.len());
        self.truncate(keep);
    }

    fn min_p(&mut self, min_p: f32, min_keep: usize) {
        if min_p <= 0.0 || self.items.is_empty() {
            return;
        }
        // p_i >= min_p · p_max  <=>  logit_i >= logit_max + ln(min_p)
        let min_logit = self.max_logit() + min_p.ln();
        if !self.sorted {
            let kept = self.items.iter().filter(|c| c.logit >= min_logit).count();
            if kept > 0 && kept >= min_keep {
                if kept < self.items.len() {
                    self.items.retain(|c| c.logit >= min_logit);
                    self.id_indexed = false;
                }
                return;
            }
            self.sort();
        }
        let mut keep = 1; // the best token always stays
        while keep < self.items.len() && (self.items[keep].logit >= min_logit || keep < min_keep) {
            keep += 1;
        }
        self.truncate(keep);
    }

    /// Locally typical sampling: keeps the tokens whose surprise is closest to the entropy until their
    /// probabilities add up to more than `typical_p`. `order` and `spare` are reusable buffers.
    fn typical(&mut self, typical_p: f32, min_keep: usize, order: &mut Vec<(f32, u32)>, spare: &mut Vec<Candidate>) {
        if typical_p >= 1.0 || self.items.is_empty() {
            return;
        }
        self.softmax(true);
        // p·ln p → 0 as p → 0; skipping p = 0 avoids llama.cpp's 0·(−inf) = NaN with banned tokens.
        let entropy: f32 = self.items.iter().filter(|c| c.p > 0.0).map(|c| -c.p * c.p.ln()).sum();
        order.clear();
        order.extend(self.items.iter().enumerate().map(|(i, c)| ((-c.p.ln() - entropy).abs(), i as u32)));
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut cum = 0.0f32;
        let mut keep = order.len();
        for (i, &(_, idx)) in order.iter().enumerate() {
            cum += self.items[idx as usize].p;
            if cum > typical_p && (min_keep == 0 || i + 1 >= min_keep) {
                keep = i + 1;
                break;
            }
        }
        // Reorder through `spare` and copy back, so `items` keeps its one allocation.
        spare.clear();
        spare.reserve(self.items.len());
        spare.extend(order[..keep].iter().map(|&(_, idx)| self.items[idx as usize]));
        self.items.clear();
        self.items.extend_from_slice(spare);
        self.sorted = false;
        self.id_indexed = false;
    }

    /// XTC: with chance `probability`, removes every token with p ≥ threshold except the least likely
    /// of them.
    fn xtc(&mut self, probability: f32, threshold: f32, min_keep: usize, rng: &mut Mt19937) {
        if !xtc_enabled(probability, threshold) || self.items.len() < 2 {
            return;
        }
        let chance = rng.uniform_f32();
        if chance > probability {
            return;
        }
        self.softmax(true);
        let last_above = self.items.iter().take_while(|c| c.p >= threshold).count().saturating_sub(1);
        if self.items.len() - last_above >= min_keep && last_above > 0 {
            self.items.drain(..last_above);
            self.id_indexed = false;
        }
    }

    /// Divides the logits by `temperature`; at 0 or below keeps only the best token finite (llama.cpp).
    fn temperature(&mut self, temperature: f32) {
        if self.items.is_empty() {
            return;
        }
        if temperature <= 0.0 {
            let best = self.best_index();
            for (i, c) in self.items.iter_mut().enumerate() {
                if i != best {
                    c.logit = f32::NEG_INFINITY;
                }
            }
            return;
        }
        self.items.iter_mut().for_each(|c| c.logit /= temperature);
    }

    /// llama.cpp's dynamic temperature (`temp_ext`): the temperature runs from `temperature - range`
    /// (at least 0) for a certain choice to `temperature + range` for a uniform one, by the entropy of the
    /// candidates over its maximum raised to `exponent`. Leaves the candidates sorted, as llama.cpp does.
    fn dynamic_temperature(&mut self, temperature: f32, range: f32, exponent: f32) {
        if self.items.len() <= 1 {
            return;
        }
        let (min_temp, max_temp) = ((temperature - range).max(0.0), temperature + range);
        let max_entropy = -(1.0 / self.items.len() as f32).ln();
        self.softmax(true);
        let entropy = self.items.iter().filter(|c| c.p > 0.0).fold(0.0f32, |e, c| e - c.p * c.p.ln());
        let dyn_temp = min_temp + (max_temp - min_temp) * (entropy / max_entropy).powf(exponent);
        // A negative exponent at zero entropy gives infinity, and -inf / inf would let a masked token be
        // drawn (llama.cpp's flaw); the top of the range is what that limit means.
        self.temperature(if dyn_temp.is_finite() { dyn_temp } else { max_temp });
    }

    fn best_index(&self) -> usize {
        let mut best = 0;
        for (i, c) in self.items.iter().enumerate().skip(1) {
            if by_logit_desc(c, &self.items[best]).is_lt() {
                best = i;
            }
        }
        best
    }

    /// Draws an index by the softmax of the logits, as llama.cpp's `dist` sampler: f32 weights
    /// `exp(logit - max)` summed in f64, one uniform double, and the first candidate (in the current order)
    /// whose running sum reaches that fraction of the total. One number is drawn even for a single candidate,
    /// so the stream stays aligned with llama.cpp's.
    /// The weights are kept in `p` (unnormalised), so each `exp` is computed once.
    fn draw(&mut self, rng: &mut Mt19937) -> usize {
        let u = rng.uniform_f64();
        let max = self.max_logit();
        if self.items.len() <= 1 || max == f32::NEG_INFINITY {
            return 0;
        }
        let mut sum = 0.0f64;
        for c in &mut self.items {
            c.p = (c.logit - max).exp();
            sum += f64::from(c.p);
        }
        let target = sum * u;
        let mut run = 0.0f64;
        for (i, c) in self.items.iter().enumerate() {
            run += f64::from(c.p);
            if run >= target {
                return i;
            }
        }
        self.items.len() - 1
    }

    /// Draws an index by the `p` already computed (Mirostat), as `std::discrete_distribution` does.
    fn draw_by_p(&self, rng: &mut Mt19937) -> usize {
        rng.discrete(self.items.iter().map(|c| c.p))
    }
}

/// How many of the sorted `items` top-p keeps, if their cumulative probability reaches `top_p`.
fn top_p_cut(items: &[Candidate], top_p: f32, min_keep: usize) -> Option<usize> {
    let mut cum = 0.0f32;
    for (i, c) in items.iter().enumerate() {
        cum += c.p;
        if cum >= top_p && i + 1 >= min_keep {
            return Some(i + 1);
        }
    }
    None
}

/// The 32-bit seed llama.cpp would use: the low 32 bits of `seed`; `None` when there is none or it is
/// `0xFFFFFFFF` (llama.cpp's `LLAMA_DEFAULT_SEED`, what `--seed -1` gives), meaning a random one.
fn fixed_seed(seed: Option<u64>) -> Option<u32> {
    seed.map(|s| s as u32).filter(|&s| s != u32::MAX)
}

/// A random seed: the clock mixed with a process-wide counter, so samplers made within one clock tick
/// (several choices of a request, XTC beside the final draw) still draw independently.
fn random_seed() -> u32 {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (nanos as u32) ^ (nanos >> 32) as u32 ^ count.wrapping_mul(0x9E37_79B9)
}

/// The seed of choice `k` of a request seeded with `seed` (`n > 1`, or several prompts): `seed + k` on
/// llama.cpp's 32 bits, never landing on the "random" value; a random request stays random for each choice.
pub fn seed_for_choice(seed: Option<u64>, k: usize) -> Option<u64> {
    fixed_seed(seed).map(|s| (u64::from(s) + k as u64) % u64::from(u32::MAX))
}

/// Picks tokens by [`SamplingParams`], remembering what penalties, DRY and Mirostat need between tokens.
pub struct Sampler {
    params: SamplingParams,
    plain_argmax: bool,
    /// The final draw's generator (llama.cpp's `dist` or Mirostat), and XTC's own, both from the same seed
    /// as llama.cpp seeds each of its samplers.
    rng: Mt19937,
    xtc_rng: Mt19937,
    candidates: Candidates,
    /// Typical-p's (score, index) order and its reordered candidates.
    typical_order: Vec<(f32, u32)>,
    typical_spare: Vec<Candidate>,
    /// The last `penalty_last_n` accepted tokens and how often each occurs among them.
    history: VecDeque<u32>,
    counts: HashMap<u32, u32>,
    /// DRY's history and breakers, when DRY runs.
    dry: Option<dry::Dry>,
    mirostat_mu: f32,
    /// The grammar's state, once the vocabulary is known ([`Sampler::set_grammar_vocab`]).
    grammar: Option<GrammarMatcher>,
    /// Which tokens the grammar allows, when the first pick was refused.
    allowed: Vec<bool>,
}

impl Sampler {
    /// A sampler for `params` as given (see [`SamplingParams::validate`] for checking user input; bad
    /// values never panic, they only give odd choices). Without a vocabulary DRY has no sequence
    /// breakers and `dry_penalty_last_n = -1` scans every accepted token: use [`Sampler::for_model`]
    /// when DRY may be on.
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler::with_dry_breakers(params, Arc::default(), usize::MAX)
    }

    /// A sampler for a model: DRY's sequence breakers are matched against `tokenizer`'s vocabulary
    /// (only when DRY runs, as the match scans the whole vocabulary), and `dry_penalty_last_n = -1`
    /// stands for `context_size` tokens (llama.cpp's context size).
    pub fn for_model(params: SamplingParams, tokenizer: &Tokenizer, context_size: usize) -> Sampler {
        let breakers = if params.dry_active() {
            Arc::new(DryBreakers::new(tokenizer, &params.dry_sequence_breakers))
        } else {
            Arc::default()
        };
        let mut sampler = Sampler::with_dry_breakers(params, breakers, context_size);
        if sampler.params.grammar.is_some() {
            sampler.set_grammar_vocab(tokenizer.grammar_vocab());
        }
        sampler
    }

    /// Starts following `params.grammar` over this vocabulary (see [`Tokenizer::grammar_vocab`]); without a
    /// grammar it does nothing. The grammar must have passed [`SamplingParams::validate`]: one that does not
    /// parse allows only end of generation.
    pub fn set_grammar_vocab(&mut self, vocab: Arc<GrammarVocab>) {
        let Some(text) = &self.params.grammar else { return };
        let grammar = Grammar::parse(text).unwrap_or_else(|_| Grammar::nothing());
        self.grammar = Some(GrammarMatcher::new(Arc::new(grammar), vocab));
    }

    /// [`Sampler::for_model`] with breakers already built (shared between sequences that use the same
    /// breaker list; `params.dry_sequence_breakers` is not looked at).
    pub fn with_dry_breakers(params: SamplingParams, breakers: Arc<DryBreakers>, context_size: usize) -> Sampler {
        let dry = params.dry_active().then(|| {
            let window = match params.dry_penalty_last_n {
                -1 => context_size,
                n => usize::try_from(n).unwrap_or(0),
            };
            dry::Dry::new(breakers, window)
        });
        let (seed, xtc_seed) = match fixed_seed(params.seed) {
            Some(s) => (s, s),
            None => (random_seed(), random_seed()),
        };
        Sampler {
            plain_argmax: params.is_plain_argmax(),
            rng: Mt19937::new(seed),
            xtc_rng: Mt19937::new(xtc_seed),
            candidates: Candidates::default(),
            typical_order: Vec::new(),
            typical_spare: Vec::new(),
            history: VecDeque::with_capacity(params.penalty_last_n.min(4096)),
            counts: HashMap::new(),
            dry,
            mirostat_mu: 2.0 * params.mirostat_tau,
            params,
            grammar: None,
            allowed: Vec::new(),
        }
    }

    /// [`Sampler::new`] after [`SamplingParams::validate`].
    pub fn try_new(params: SamplingParams) -> Result<Sampler, SamplingError> {
        params.validate()?;
        Ok(Sampler::new(params))
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token of the sequence (prompt or generated) for the penalties and DRY, like
    /// llama.cpp's `llama_sampler_accept`. [`Sampler::sample`] does not do this by itself.
    pub fn accept(&mut self, id: u32) {
        if let Some(dry) = &mut self.dry {
            dry.accept(id);
        }
        let n = self.params.penalty_last_n;
        if !self.params.penalties_enabled() {
            return;
        }
        if self.history.len() >= n {
            if let Some(old) = self.history.pop_front() {
                if let Some(count) = self.counts.get_mut(&old) {
                    *count -= 1;
                    if *count == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.history.push_back(id);
        *self.counts.entry(id).or_insert(0) += 1;
    }

    /// [`Sampler::accept`] for a token the sampler picked: the grammar moves past it too (the prompt is not
    /// part of the grammar's text).
    pub fn accept_generated(&mut self, id: u32) {
        self.accept(id);
        if let Some(g) = &mut self.grammar {
            g.accept(id);
        }
    }

    /// [`Sampler::accept`] for each of `ids`, e.g. the prompt.
    pub fn accept_all(&mut self, ids: &[u32]) {
        if self.params.penalties_enabled() || self.dry.is_some() {
            ids.iter().for_each(|&id| self.accept(id));
        }
    }

    /// Forgets the accepted tokens and restarts Mirostat (the random generator goes on).
    pub fn reset(&mut self) {
        self.forget_tokens();
        self.mirostat_mu = 2.0 * self.params.mirostat_tau;
    }

    /// Forgets the accepted tokens only: Mirostat's μ and the random generator go on (for a conversation
    /// whose earlier tokens are accepted again after its cache was cut back).
    pub fn forget_tokens(&mut self) {
        self.history.clear();
        self.counts.clear();
        if let Some(dry) = &mut self.dry {
            dry.reset();
        }
        if let Some(g) = &mut self.grammar {
            g.reset();
        }
    }

    /// Mirostat's current μ (the surprise cut-off), when Mirostat is on.
    pub fn mirostat_mu(&self) -> Option<f32> {
        (self.params.mirostat != Mirostat::Off).then_some(self.mirostat_mu)
    }

    /// The log-probabilities of `chosen` and the `top_n` best tokens in the raw `logits`
    /// (see [`TokenLogprobs`]).
    pub fn logprobs(&self, logits: &[f32], chosen: u32, top_n: usize) -> TokenLogprobs {
        token_logprobs(logits, chosen, top_n)
    }

    /// Picks a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.grammar.is_some() {
            return self.sample_with_grammar(logits);
        }
        self.sample_unconstrained(logits, None)
    }

    /// The chain on `logits`; tokens not marked in `allowed` are set to -inf first, as llama.cpp's grammar
    /// stage does.
    fn sample_unconstrained(&mut self, logits: &[f32], allowed: Option<&[bool]>) -> u32 {
        if self.plain_argmax && allowed.is_none() {
            return greedy(logits);
        }
        self.candidates.fill(logits);
        if self.candidates.items.is_empty() {
            return 0;
        }
        if let Some(allowed) = allowed {
            for c in &mut self.candidates.items {
                if !allowed.get(c.id as usize).copied().unwrap_or(false) {
                    c.logit = f32::NEG_INFINITY;
                }
            }
        }
        if !self.params.logit_bias.is_empty() {
            self.candidates.apply_logit_bias(&self.params.logit_bias);
        }
        match self.params.mirostat {
            Mirostat::Off => self.run_chain(),
            Mirostat::V1 | Mirostat::V2 => self.run_mirostat(logits.len()),
        }
    }

    /// llama.cpp's grammar sampling: pick as usual and keep the pick if the grammar allows it; otherwise mask
    /// every token the grammar refuses and pick again (the random draws go on from the first pick). A greedy
    /// pick takes the best allowed token directly.
    fn sample_with_grammar(&mut self, logits: &[f32]) -> u32 {
        let Some(matcher) = self.grammar.take() else { return self.sample_unconstrained(logits, None) };
        let id = self.pick_allowed(&matcher, logits);
        self.grammar = Some(matcher);
        id
    }

    fn pick_allowed(&mut self, matcher: &GrammarMatcher, logits: &[f32]) -> u32 {
        if self.plain_argmax {
            let best = greedy(logits);
            if matcher.allows(best) {
                return best;
            }
            // The next best tokens in order until one is allowed (ties: the lower id, as `greedy`).
            let c = &mut self.candidates;
            c.fill(logits);
            c.sort_prefix(64);
            if let Some(id) = c.items.iter().take(64).map(|c| c.id).find(|&id| matcher.allows(id)) {
                return id;
            }
        } else {
            let id = self.sample_unconstrained(logits, None);
            if matcher.allows(id) {
                return id;
            }
        }
        let fallback = matcher.vocab().first_end_of_generation().unwrap_or(0);
        let mut allowed = std::mem::take(&mut self.allowed);
        matcher.allowed_tokens(&mut allowed);
        let id = if allowed.iter().any(|&a| a) {
            let id = self.sample_unconstrained(logits, Some(&allowed));
            if allowed.get(id as usize).copied().unwrap_or(false) {
                id
            } else {
                fallback
            }
        } else {
            fallback
        };
        self.allowed = allowed;
        id
    }

    fn run_chain(&mut self) -> u32 {
        for i in 0..self.params.samplers.len() {
            let p = &self.params;
            let c = &mut self.candidates;
            match p.samplers[i] {
                SamplerStage::Penalties => {
                    if p.penalties_enabled() && !self.counts.is_empty() {
                        c.apply_penalties(&self.counts, p);
                    }
                }
                SamplerStage::Dry => {
                    if let Some(dry) = &mut self.dry {
                        dry.apply(c, p);
                    }
                }
                SamplerStage::TopNSigma => c.top_n_sigma(p.top_n_sigma),
                SamplerStage::TopK => c.top_k(p.top_k),
                SamplerStage::TypicalP => {
                    c.typical(p.typical_p, p.min_keep, &mut self.typical_order, &mut self.typical_spare)
                }
                SamplerStage::TopP => c.top_p(p.top_p, p.min_keep),
                SamplerStage::MinP => c.min_p(p.min_p, p.min_keep),
                SamplerStage::Xtc => c.xtc(p.xtc_probability, p.xtc_threshold, p.min_keep, &mut self.xtc_rng),
                SamplerStage::Temperature if p.dynatemp_range > 0.0 => {
                    c.dynamic_temperature(p.temperature, p.dynatemp_range, p.dynatemp_exponent)
                }
                SamplerStage::Temperature => c.temperature(p.temperature),
            }
        }
        let c = &mut self.candidates;
        let at = if self.params.is_greedy() { c.best_index() } else { c.draw(&mut self.rng) };
        c.items.get(at).map_or(0, |c| c.id)
    }

    /// llama.cpp's Mirostat chain: temperature, then v1 (Zipf-estimated top-k) or v2 (surprise cut-off),
    /// a draw, and μ ← μ − η·(observed surprise − τ). Computed in f32 as llama.cpp does.
    fn run_mirostat(&mut self, n_vocab: usize) -> u32 {
        let p = &self.params;
        let c = &mut self.candidates;
        c.temperature(p.temperature);
        if p.temperature <= 0.0 {
            return c.items.get(c.best_index()).map_or(0, |c| c.id);
        }
        c.softmax(true);
        if p.mirostat == Mirostat::V1 {
            // Estimate the Zipf exponent s from the ratios of the m most probable tokens.
            let (mut sum_ti_bi, mut sum_ti_sq) = (0.0f32, 0.0f32);
            for i in 0..(MIROSTAT_M - 1).min(c.items.len() - 1) {
                let t_i = ((i + 2) as f32 / (i + 1) as f32).ln();
                let b_i = (c.items[i].p / c.items[i + 1].p).ln();
                sum_ti_bi += t_i * b_i;
                sum_ti_sq += t_i * t_i;
            }
            let s_hat = sum_ti_bi / sum_ti_sq;
            let epsilon_hat = s_hat - 1.0;
            let k = ((epsilon_hat * 2f32.powf(self.mirostat_mu)) / (1.0 - (n_vocab as f32).powf(-epsilon_hat)))
                .powf(1.0 / s_hat);
            // llama.cpp keeps max(int(k), 1): on x86 a float that is NaN or beyond i32 converts to i32::MIN,
            // so an overflowing estimate keeps one token, not all of them.
            let k = if k > -2_147_483_649.0 && k < 2_147_483_648.0 { k as i32 } else { i32::MIN };
            c.top_k(k.max(1) as usize);
        } else {
            let mu = self.mirostat_mu;
            let keep = c.items.iter().take_while(|x| -x.p.log2() <= mu).count();
            c.truncate(keep.max(1));
        }
        c.softmax(true);
        let idx = c.draw_by_p(&mut self.rng);
        let Some(chosen) = c.items.get(idx).copied() else { return 0 };
        let observed_surprise = -chosen.p.log2();
        self.mirostat_mu -= p.mirostat_eta * (observed_surprise - p.mirostat_tau);
        chosen.id
    }
}

/// Index of the largest logit (the lowest index on ties).
pub fn greedy(logits: &[f32]) -> u32 {
    gemma_ops::vector::argmax(logits).map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 5.0, 3.0, 4.9, -2.0, 0.0]
    }

    fn random(params: SamplingParams) -> SamplingParams {
        SamplingParams { top_k: 0, seed: Some(1), ..params }
    }

    fn draws(params: &SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params.clone());
        (0..n).map(|_| s.sample(logits)).collect()
    }

    #[test]
    fn greedy_picks_the_max() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits()), 1);
        // top_k 1 is greedy whatever the temperature.
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, ..Default::default() });
        assert_eq!(s.sample(&logits()), 1);
        assert!(SamplingParams::default().is_plain_argmax());
        assert!(SamplingParams::greedy().is_plain_argmax());
    }

    #[test]
    fn same_seed_same_choices_and_top_k_restricts() {
        let params =
            SamplingParams { temperature: 1.5, top_k: 3, top_p: 1.0, min_p: 0.0, seed: Some(42), ..Default::default() };
        let a = draws(&params, &logits(), 200);
        assert_eq!(a, draws(&params, &logits(), 200));
        assert!(a.iter().all(|t| [1, 3, 2].contains(t)), "top-k 3 allows only the 3 best");
        assert!([1, 3, 2].iter().all(|t| a.contains(t)), "each of the 3 best is drawn sometimes");
        let other = draws(&SamplingParams { seed: Some(43), ..params }, &logits(), 200);
        assert_ne!(a, other);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // The best token alone has probability 0.48: top-p 0.4 keeps only it, top-p 0.6 also the runner-up.
        let p = random(SamplingParams { top_p: 0.4, ..Default::default() });
        assert!(draws(&p, &logits(), 100).iter().all(|&t| t == 1));
        let p = random(SamplingParams { top_p: 0.6, ..Default::default() });
        let drawn = draws(&p, &logits(), 300);
        assert!(drawn.iter().all(|t| *t == 1 || *t == 3) && drawn.contains(&3));
        // min-p 0.5 keeps tokens within ln(2) of the best logit: 5.0 and 4.9.
        let p = random(SamplingParams { min_p: 0.5, ..Default::default() });
        let drawn = draws(&p, &logits(), 300);
        assert!(drawn.iter().all(|t| *t == 1 || *t == 3));
        assert!(drawn.contains(&1) && drawn.contains(&3));
    }

    #[test]
    fn top_p_on_a_large_vocabulary_matches_the_full_sort() {
        // 5,000 tokens exercise the best-256 shortcut and its fallback to a full sort.
        let big: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 5000) as f32 / 500.0).collect();
        for top_p in [0.05f32, 0.5, 0.99] {
            let mut fast = Candidates::default();
            fast.fill(&big);
            fast.top_p(top_p, 0);
            let mut slow = Candidates::default();
            slow.fill(&big);
            slow.softmax(true);
            let keep = top_p_cut(&slow.items, top_p, 0).unwrap();
            let ids = |c: &Candidates| c.items.iter().map(|x| x.id).collect::<Vec<_>>();
            assert_eq!(ids(&fast), ids(&slow)[..keep], "top-p {top_p}");
        }
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        // Two tokens with logits differing by ln(3): expect a 3:1 split.
        let l = vec![(3.0f32).ln(), 0.0];
        let p = SamplingParams { top_k: 0, seed: Some(7), ..Default::default() };
        let n = 20_000;
        let zeros = draws(&p, &l, n).iter().filter(|&&t| t == 0).count() as f64 / n as f64;
        assert!((zeros - 0.75).abs() < 0.02, "{zeros}");
    }

    /// The logits after the penalties stage, given the accepted history.
    fn penalized(params: SamplingParams, history: &[u32], logits: &[f32]) -> Vec<f32> {
        let mut s = Sampler::new(SamplingParams { samplers: vec![SamplerStage::Penalties], ..params });
        s.accept_all(history);
        s.candidates.fill(logits);
        s.candidates.apply_penalties(&s.counts, &s.params);
        s.candidates.items.iter().map(|c| c.logit).collect()
    }

    #[test]
    fn each_penalty_changes_exactly_the_seen_tokens_by_the_right_amount() {
        let l = [2.0f32, -1.0, 3.0, 0.5, -2.0, 0.0];
        // Token 0 seen twice, 1 once, 3 once, 5 once; 2 and 4 never.
        let history = [0, 1, 0, 3, 5];
        let repeat = penalized(SamplingParams { repeat_penalty: 2.0, ..Default::default() }, &history, &l);
        assert_eq!(repeat, vec![1.0, -2.0, 3.0, 0.25, -2.0, 0.0]);
        let freq = penalized(SamplingParams { frequency_penalty: 0.5, ..Default::default() }, &history, &l);
        assert_eq!(freq, vec![1.0, -1.5, 3.0, 0.0, -2.0, -0.5]);
        let presence = penalized(SamplingParams { presence_penalty: 0.25, ..Default::default() }, &history, &l);
        assert_eq!(presence, vec![1.75, -1.25, 3.0, 0.25, -2.0, -0.25]);
        // All three: (l / r or l · r) − count·f − p.
        let all = SamplingParams {
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        assert_eq!(penalized(all.clone(), &history, &l), vec![-0.25, -2.75, 3.0, -0.5, -2.0, -0.75]);
        // A window of the last 2 tokens sees only 3 and 5.
        let windowed = penalized(SamplingParams { penalty_last_n: 2, ..all.clone() }, &history, &l);
        assert_eq!(windowed, vec![2.0, -1.0, 3.0, -0.5, -2.0, -0.75]);
        // penalty_last_n 0 disables penalties entirely.
        let off = SamplingParams { penalty_last_n: 0, ..all };
        assert!(!off.penalties_enabled());
        assert_eq!(penalized(off, &history, &l), l.to_vec());
    }

    #[test]
    fn penalties_move_the_greedy_choice_and_keep_the_plain_path_otherwise() {
        let p = SamplingParams { temperature: 0.0, frequency_penalty: 1.0, ..Default::default() };
        assert!(!p.is_plain_argmax());
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&logits()), 1, "nothing seen yet: the plain best");
        s.accept(1);
        assert_eq!(s.sample(&logits()), 3, "token 1 lost 1.0: 4.0 < 4.9");
        s.accept(3);
        assert_eq!(s.sample(&logits()), 1, "both seen once: 4.0 vs 3.9");
        // Penalties left out of the chain do nothing, so greedy stays a plain argmax.
        let p = SamplingParams {
            temperature: 0.0,
            frequency_penalty: 1.0,
            samplers: vec![SamplerStage::Temperature],
            ..Default::default()
        };
        assert!(p.is_plain_argmax());
    }

    /// DRY on, in a chain of DRY alone, with token-sequence breakers and an unlimited context.
    fn dry_params(multiplier: f32, base: f32, allowed_length: u32, last_n: i32) -> SamplingParams {
        SamplingParams {
            dry_multiplier: multiplier,
            dry_base: base,
            dry_allowed_length: allowed_length,
            dry_penalty_last_n: last_n,
            // Greedy needs the temperature stage (temperature 0 acts only there, as in llama.cpp).
            samplers: vec![SamplerStage::Dry, SamplerStage::Temperature],
            ..SamplingParams::greedy()
        }
    }

    /// The logits after the DRY stage, given the accepted history and breakers as token sequences.
    fn dry_logits(params: SamplingParams, breakers: &[Vec<u32>], history: &[u32], logits: &[f32]) -> Vec<f32> {
        let breakers = Arc::new(DryBreakers::from_token_sequences(breakers));
        let mut s = Sampler::with_dry_breakers(params, breakers, 1000);
        s.accept_all(history);
        s.candidates.fill(logits);
        if let Some(dry) = &mut s.dry {
            dry.apply(&mut s.candidates, &s.params);
        }
        s.candidates.items.iter().map(|c| c.logit).collect()
    }

    /// DRY's penalty as llama.cpp computes it: in double precision, rounded to f32.
    fn pen(multiplier: f32, base: f32, exponent: i32) -> f32 {
        (multiplier as f64 * (base as f64).powi(exponent)) as f32
    }

    /// How much DRY took from each logit (starting from all zeros).
    fn dry_penalties(params: SamplingParams, breakers: &[Vec<u32>], history: &[u32], vocab: usize) -> Vec<f32> {
        dry_logits(params, breakers, history, &vec![0.0; vocab]).iter().map(|l| -l).collect()
    }

    #[test]
    fn dry_penalty_is_multiplier_times_base_to_the_excess_length() {
        // 0 1 2 3 ... 0 1 2: emitting 3 would make the repeat "0 1 2" four long. Its length so far is 3,
        // so the penalty is 0.8 · 1.75^(3 − allowed length); nothing else extends a repeat of 2 or more.
        let history = [0, 1, 2, 3, 4, 0, 1, 2];
        let p = |allowed| dry_penalties(dry_params(0.8, 1.75, allowed, -1), &[], &history, 6);
        let expected = |pen: f32| vec![0.0, 0.0, 0.0, pen, 0.0, 0.0];
        assert_eq!(p(2), expected(pen(0.8, 1.75, 1)));
        assert_eq!(p(3), expected(0.8));
        assert_eq!(p(4), expected(0.0), "a repeat of 3 is within an allowed length of 4");
        assert_eq!(p(1), expected(pen(0.8, 1.75, 2)), "exponent 3 − 1");
        // A longer repeat: 5 tokens (1 2 3 4 5) → 0.8 · 1.75³ on token 6.
        let history = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5];
        let taken = dry_penalties(dry_params(0.8, 1.75, 2, -1), &[], &history, 8);
        assert_eq!(taken, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, pen(0.8, 1.75, 3), 0.0]);
        // Two places extend repeats: the longest repeat for each token counts.
        // 7 8 1 ... 8 2 ... 7 8: after "7 8" came 1 (repeat 2); after "8" came 1 and 2 (repeat 1).
        let history = [7, 8, 1, 9, 8, 2, 9, 7, 8];
        let taken = dry_penalties(dry_params(1.0, 2.0, 1, -1), &[], &history, 10);
        assert_eq!(taken[1], 2.0, "7 8 → 1: 1 · 2^(2 − 1)");
        assert_eq!(taken[2], 1.0, "8 → 2: 1 · 2^(1 − 1)");
        assert_eq!(taken[9], 0.0);
    }

    #[test]
    fn dry_matches_llama_cpp_sampler_tests() {
        // llama.cpp's tests/test-sampling.cpp `test_dry` cases: uniform probabilities, a history, and
        // the probabilities after DRY and a softmax.
        let check = |n: usize, history: &[u32], expected: &[f32], params: SamplingParams, breakers: &[Vec<u32>]| {
            let logits = vec![(1.0 / n as f32).ln(); n];
            let out = dry_logits(params, breakers, history, &logits);
            let max = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = out.iter().map(|l| (l - max).exp()).sum();
            for (i, (&l, &e)) in out.iter().zip(expected).enumerate() {
                let p = (l - max).exp() / sum;
                assert!((p - e).abs() < 1e-5, "token {i}: {p} vs {e} (history {history:?})");
            }
        };
        let q = [0.25f32; 4];
        let f = [0.2f32; 5];
        check(4, &[0, 1], &q, dry_params(1.0, 1.1, 2, 4), &[]);
        check(4, &[0, 1, 2, 0, 1], &[0.296923, 0.296923, 0.109232, 0.296923], dry_params(1.0, 1.1, 2, 5), &[]);
        check(5, &[0, 1, 3, 4, 0, 1], &f, dry_params(1.0, 1.1, 2, 6), &[vec![3]]);
        check(
            5,
            &[0, 1, 2, 0, 1],
            &[0.241818, 0.241818, 0.032727, 0.241818, 0.241818],
            dry_params(2.0, 1.1, 2, 5),
            &[],
        );
        check(5, &[0, 1, 2, 3, 4, 0, 1], &f, dry_params(1.0, 1.1, 4, 7), &[]);
    }

    #[test]
    fn dry_breakers_stop_the_repeat() {
        // 7 1 2 3 4 7 1 2 3: the repeat "7 1 2 3" (4 long) would go on with 4.
        let history = [7, 1, 2, 3, 4, 7, 1, 2, 3];
        let p = dry_params(0.8, 1.75, 2, -1);
        let none = dry_penalties(p.clone(), &[], &history, 8);
        assert_eq!(none[4], pen(0.8, 1.75, 2));
        // With 7 a breaker, the repeat counts only after the latest 7: "1 2 3", 3 long.
        let seven = dry_penalties(p.clone(), &[vec![7]], &history, 8);
        assert_eq!(seven[4], pen(0.8, 1.75, 1));
        // A breaker as the newest token: nothing repeats across it.
        let history_after = [1, 2, 3, 4, 1, 2, 3, 7];
        assert!(dry_penalties(p.clone(), &[vec![7]], &history_after, 8).iter().all(|&x| x == 0.0));
        // A single-token breaker is never penalized itself: 1 2 7 3 1 2 → 7 would extend "1 2".
        let history = [1, 2, 7, 3, 1, 2];
        assert_eq!(dry_penalties(p.clone(), &[], &history, 8)[7], 0.8);
        assert_eq!(dry_penalties(p.clone(), &[vec![7]], &history, 8)[7], 0.0);

        // A two-token breaker (8 9) counts only when complete.
        let complete = [8, 9, 1, 2, 3, 4, 8, 9, 1, 2, 3];
        let cut = dry_penalties(p.clone(), &[vec![8, 9]], &complete, 10);
        assert_eq!(cut[4], pen(0.8, 1.75, 1), "the repeat restarts after 8 9: 1 2 3");
        let broken = [8, 5, 1, 2, 3, 4, 8, 5, 1, 2, 3];
        let whole = dry_penalties(p, &[vec![8, 9]], &broken, 10);
        assert_eq!(whole[4], pen(0.8, 1.75, 3), "8 5 is no breaker: 8 5 1 2 3 repeats");
    }

    #[test]
    fn dry_window_and_switches() {
        // The repeat "0 1 2" starts 10 tokens back: a window of 6 does not see its first occurrence.
        let history = [0, 1, 2, 3, 9, 9, 8, 0, 1, 2];
        let on_3 = |last_n| dry_penalties(dry_params(1.0, 2.0, 2, last_n), &[], &history, 10)[3];
        assert_eq!(on_3(-1), 2.0);
        assert_eq!(on_3(10), 2.0);
        assert_eq!(on_3(9), 1.0, "the window starts at 1: the repeat is 1 2");
        assert_eq!(on_3(6), 0.0);
        // -1 stands for the context size given to the sampler.
        let mut s = Sampler::with_dry_breakers(dry_params(1.0, 2.0, 2, -1), Arc::default(), 6);
        s.accept_all(&history);
        s.candidates.fill(&[0.0; 10]);
        s.dry.as_mut().unwrap().apply(&mut s.candidates, &s.params);
        assert_eq!(s.candidates.items[3].logit, 0.0);

        // Off: multiplier 0, base below 1, window 0, DRY left out of the chain, or Mirostat.
        let on = dry_params(1.0, 2.0, 2, -1);
        assert!(on.dry_active() && !on.is_plain_argmax());
        for off in [
            SamplingParams { dry_multiplier: 0.0, ..on.clone() },
            SamplingParams { dry_base: 0.99, ..on.clone() },
            SamplingParams { dry_penalty_last_n: 0, ..on.clone() },
            SamplingParams { samplers: vec![SamplerStage::TopK], ..on.clone() },
            SamplingParams { mirostat: Mirostat::V2, ..on.clone() },
        ] {
            assert!(!off.dry_active());
            let s = Sampler::new(off);
            assert!(s.dry.is_none(), "no DRY history is kept when DRY is off");
        }
        assert!(SamplingParams::greedy().is_plain_argmax());
        // The history is bounded by the window, and reset forgets it.
        let mut s = Sampler::new(dry_params(1.0, 2.0, 2, 4));
        s.accept_all(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(s.dry.as_ref().unwrap().history_len(), 4);
        s.reset();
        assert_eq!(s.dry.as_ref().unwrap().history_len(), 0);
    }

    #[test]
    fn dry_moves_the_greedy_choice_and_keeps_huge_exponents_finite() {
        // Token 3 is the best (5.0 vs 4.9 for token 1), but it would extend "1 2" → 3.
        let l = [0.0f32, 4.9, 0.0, 5.0, 0.0];
        let mut s = Sampler::new(SamplingParams { top_k: 0, ..dry_params(0.5, 1.75, 2, -1) });
        s.accept_all(&[1, 2, 3, 0, 1, 2]);
        assert_eq!(s.sample(&l), 1, "5.0 − 0.5 < 4.9");
        let mut plain = Sampler::new(SamplingParams { dry_multiplier: 0.0, ..dry_params(0.5, 1.75, 2, -1) });
        plain.accept_all(&[1, 2, 3, 0, 1, 2]);
        assert_eq!(plain.sample(&l), 3);
        // A repeat of 40 with base 10: 10^38 overflows nothing since the exponent is capped at
        // ⌊88.72 / ln 10⌋ = 38 (10^38 < f32::MAX).
        let history: Vec<u32> = (0..40).chain(0..40).collect();
        let taken = dry_penalties(dry_params(1.0, 10.0, 0, -1), &[], &history, 41);
        assert!(taken[0] > 1e37 && taken[0].is_finite(), "{}", taken[0]);
    }

    #[test]
    fn dry_values_are_checked() {
        let ok = SamplingParams { dry_multiplier: 0.8, dry_penalty_last_n: -1, ..Default::default() };
        assert!(ok.validate().is_ok());
        for (bad, name) in [
            (SamplingParams { dry_multiplier: f32::NAN, ..ok.clone() }, "dry_multiplier"),
            (SamplingParams { dry_multiplier: f32::INFINITY, ..ok.clone() }, "dry_multiplier"),
            (SamplingParams { dry_base: f32::NAN, ..ok.clone() }, "dry_base"),
            (SamplingParams { dry_penalty_last_n: -2, ..ok.clone() }, "dry_penalty_last_n"),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
        let d = SamplingParams::default();
        assert_eq!((d.dry_multiplier, d.dry_base, d.dry_allowed_length, d.dry_penalty_last_n), (0.0, 1.75, 2, 64));
        assert_eq!(d.dry_sequence_breakers, vec!["\n", ":", "\"", "*"]);
        let p: SamplingParams =
            serde_json::from_str(r#"{"dry_multiplier":0.8,"dry_sequence_breakers":["\n"],"samplers":["dry"]}"#)
                .unwrap();
        assert_eq!((p.dry_multiplier, p.dry_base), (0.8, 1.75));
        assert_eq!(p.dry_sequence_breakers, vec!["\n"]);
        assert!(p.dry_active());
    }

    #[test]
    fn logit_bias_bans_and_boosts() {
        let ban = vec![(1, f32::NEG_INFINITY)];
        let mut s = Sampler::new(SamplingParams { logit_bias: ban.clone(), ..SamplingParams::greedy() });
        assert_eq!(s.sample(&logits()), 3);
        let p = random(SamplingParams { temperature: 2.0, logit_bias: ban, ..Default::default() });
        let drawn = draws(&p, &logits(), 2000);
        assert!(!drawn.contains(&1) && drawn.contains(&3) && drawn.contains(&2));
        // Token 4 (−2.0) plus 5.5 is 3.5, still below token 1 (5.0); plus 7.5 it is 5.5, the new best.
        let best_with = |b: f32| {
            Sampler::new(SamplingParams { logit_bias: vec![(4, b)], ..SamplingParams::greedy() }).sample(&logits())
        };
        assert_eq!(best_with(5.5), 1);
        assert_eq!(best_with(7.5), 4);
        // Ids outside the vocabulary are ignored.
        let mut s = Sampler::new(SamplingParams { logit_bias: vec![(99, 10.0)], ..SamplingParams::greedy() });
        assert_eq!(s.sample(&logits()), 1);
        // Everything banned: the first candidate, no panic.
        let all: Vec<(u32, f32)> = (0..6).map(|i| (i, f32::NEG_INFINITY)).collect();
        let p = random(SamplingParams { logit_bias: all, ..Default::default() });
        assert_eq!(draws(&p, &logits(), 3), vec![0, 0, 0]);
    }

    #[test]
    fn chain_order_matters_where_it_should() {
        // Logits 2, 1, 0 at temperature 0.5 become 4, 2, 0. min-p 0.2 keeps logits within ln 5 = 1.61 of the
        // best: before the temperature that is tokens 0 and 1, after it only token 0.
        let l = [2.0f32, 1.0, 0.0];
        let base = random(SamplingParams { temperature: 0.5, min_p: 0.2, ..Default::default() });
        let min_p_first =
            SamplingParams { samplers: vec![SamplerStage::MinP, SamplerStage::Temperature], ..base.clone() };
        let temp_first = SamplingParams { samplers: vec![SamplerStage::Temperature, SamplerStage::MinP], ..base };
        let a = draws(&min_p_first, &l, 500);
        assert!(a.contains(&0) && a.contains(&1) && !a.contains(&2));
        assert!(draws(&temp_first, &l, 500).iter().all(|&t| t == 0));
        // Penalties before top-k 1 can change the winner; after it they cannot.
        let p = SamplingParams { temperature: 0.0, frequency_penalty: 1.0, top_k: 1, ..Default::default() };
        let mut before =
            Sampler::new(SamplingParams { samplers: vec![SamplerStage::Penalties, SamplerStage::TopK], ..p.clone() });
        let mut after =
            Sampler::new(SamplingParams { samplers: vec![SamplerStage::TopK, SamplerStage::Penalties], ..p });
        before.accept(1);
        after.accept(1);
        assert_eq!(before.sample(&logits()), 3);
        assert_eq!(after.sample(&logits()), 1);
    }

    #[test]
    fn typical_p_can_drop_the_most_likely_token() {
        // p = 1/2, 1/4, 1/8, 1/8: entropy 1.213 nats; |−ln p − H| = 0.52, 0.17, 0.87, 0.87, so the typical
        // order is 1, 0, 2, 3. Typical-p 0.2 keeps token 1 alone (0.25 > 0.2); 0.5 keeps 1 and 0.
        let l = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        // (top-k 0: the default top-k 1 runs before typical-p and would keep token 0 alone.)
        let only = SamplingParams { typical_p: 0.2, top_k: 0, ..SamplingParams::greedy() };
        assert!(!only.is_plain_argmax());
        assert_eq!(Sampler::new(only).sample(&l), 1);
        let p = random(SamplingParams { typical_p: 0.5, ..Default::default() });
        let drawn = draws(&p, &l, 500);
        assert!(drawn.contains(&0) && drawn.contains(&1) && drawn.iter().all(|&t| t < 2));
    }

    #[test]
    fn top_n_sigma_and_xtc() {
        // Logits 10, 9, 0, 0, 0: mean 3.8, σ 4.66, so 1-σ keeps logits ≥ 5.34: tokens 0 and 1.
        let l = [10.0f32, 9.0, 0.0, 0.0, 0.0];
        let p = random(SamplingParams { temperature: 20.0, top_n_sigma: 1.0, ..Default::default() });
        let drawn = draws(&p, &l, 500);
        assert!(drawn.contains(&0) && drawn.contains(&1) && drawn.iter().all(|&t| t < 2));
        // XTC always on, threshold 0.1: p = 0.5, 0.3, 0.15, 0.05 → tokens 0 and 1 go (2 is the last above).
        let l = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let p = random(SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.1, ..Default::default() });
        let drawn = draws(&p, &l, 500);
        assert!(drawn.contains(&2) && drawn.contains(&3) && drawn.iter().all(|&t| t >= 2));
        // Threshold above 0.5 disables it.
        let p = random(SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.6, ..Default::default() });
        assert!(draws(&p, &l, 500).contains(&0));
    }

    #[test]
    fn mirostat_v2_updates_mu_by_llama_cpp_formula() {
        // One dominant token: while μ is below the surprise of every other token only token 0 survives,
        // is drawn with p' = 1 (surprise 0), and μ grows by η·τ each step: μ_n = 2τ + n·η·τ.
        let l = [10.0f32, 0.0, 0.0, 0.0];
        let (tau, eta) = (5.0f32, 0.1f32);
        let p = SamplingParams {
            mirostat: Mirostat::V2,
            mirostat_tau: tau,
            mirostat_eta: eta,
            seed: Some(3),
            ..Default::default()
        };
        assert!(!p.is_greedy(), "top-k 1 does not make Mirostat greedy");
        let mut s = Sampler::new(p.clone());
        assert_eq!(s.mirostat_mu(), Some(2.0 * tau));
        let second_surprise = -((0.0f32 - 10.0).exp() / (1.0 + 3.0 * (-10.0f32).exp())).log2(); // ≈ 14.43
        let mut mu = 2.0 * tau;
        let mut steps = 0;
        while mu + eta * tau < second_surprise {
            assert_eq!(s.sample(&l), 0);
            mu -= eta * (0.0 - tau);
            steps += 1;
            assert!((s.mirostat_mu().unwrap() - mu).abs() < 1e-5, "step {steps}");
        }
        assert_eq!(steps, 8);
        // On a spread distribution μ follows μ ← μ − η(−log2 p' − τ), p' renormalised over the tokens
        // with surprise ≤ μ, and the observed surprise averages to τ. (p_i ∝ e^−0.15i has an entropy of
        // 4.2 bits, so τ = 3 is reachable by truncation.)
        let tau = 3.0f32;
        let l: Vec<f32> = (0..64).map(|i| -0.15 * i as f32).collect();
        let probs: Vec<f64> = {
            let e: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let mut s = Sampler::new(SamplingParams { seed: Some(11), mirostat_tau: tau, ..p });
        let mut surprises = Vec::new();
        for step in 0..3000 {
            let mu = s.mirostat_mu().unwrap() as f64;
            let id = s.sample(&l) as usize;
            let kept: f64 = probs.iter().filter(|&&q| -q.log2() <= mu).sum::<f64>().max(probs[0]);
            assert!(-probs[id].log2() <= mu || id == 0, "step {step}: token {id} has surprise above μ {mu}");
            let observed = -(probs[id] / kept).log2();
            let expected = mu - eta as f64 * (observed - tau as f64);
            assert!((s.mirostat_mu().unwrap() as f64 - expected).abs() < 1e-4, "step {step}: {expected}");
            surprises.push(observed);
        }
        let mean = surprises[1000..].iter().sum::<f64>() / 2000.0;
        assert!((mean - tau as f64).abs() < 0.1, "mean surprise {mean}");
    }

    #[test]
    fn mirostat_v1_uses_the_zipf_estimate() {
        // Exact Zipf p_i ∝ (i+1)^−1.5 over 1,000 tokens: ŝ = 1.5, ε = 0.5, μ = 10 gives
        // k = (0.5·2^10 / (1 − 1000^−0.5))^(1/1.5) ≈ 65.4, so the first draw is among the best 65.
        let s_exp = 1.5f64;
        let n = 1000usize;
        let l: Vec<f32> = (0..n).map(|i| (-s_exp * ((i + 1) as f64).ln()) as f32).collect();
        let k = ((0.5 * 2f64.powi(10)) / (1.0 - (n as f64).powf(-0.5))).powf(1.0 / s_exp);
        assert!((k - 65.4).abs() < 0.1, "{k}");
        let z65: f64 = (1..=65).map(|r| (r as f64).powf(-s_exp)).sum();
        let mut highest = 0;
        for seed in 0..1500 {
            let p = SamplingParams { mirostat: Mirostat::V1, seed: Some(seed), ..Default::default() };
            let mut s = Sampler::new(p);
            let id = s.sample(&l) as usize;
            assert!(id < 65, "seed {seed}: {id}");
            highest = highest.max(id);
            let p_renorm = ((id + 1) as f64).powf(-s_exp) / z65;
            let mu = 10.0 - 0.1 * (-p_renorm.log2() - 5.0);
            assert!((s.mirostat_mu().unwrap() as f64 - mu).abs() < 1e-3);
        }
        assert!(highest >= 40, "draws reach deep into the 65 kept: {highest}");
    }

    #[test]
    fn sampler_names_and_letters_parse_like_llama_cpp() {
        use SamplerStage::*;
        assert_eq!(
            SamplerStage::parse_names("penalties;top_k;top_p;min_p;temperature").unwrap(),
            vec![Penalties, TopK, TopP, MinP, Temperature]
        );
        assert_eq!(
            SamplerStage::parse_names("Top-K; nucleus;typ;TEMP;minp;top-n-sigma;xtc;").unwrap(),
            vec![TopK, TopP, TypicalP, Temperature, MinP, TopNSigma, Xtc]
        );
        // llama.cpp's own default list parses to our default chain.
        let llama_default = "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature";
        assert_eq!(SamplerStage::parse_names(llama_default).unwrap(), SamplerStage::DEFAULT_CHAIN.to_vec());
        assert_eq!(SamplerStage::parse_letters("edskypmxt").unwrap(), SamplerStage::DEFAULT_CHAIN.to_vec());
        assert_eq!(SamplerStage::parse_letters("kptm").unwrap(), vec![TopK, TopP, Temperature, MinP]);
        let names: String = SamplerStage::DEFAULT_CHAIN.iter().map(|s| s.name()).collect::<Vec<_>>().join(";");
        assert_eq!(SamplerStage::parse_names(&names).unwrap(), SamplerStage::DEFAULT_CHAIN.to_vec());
        let letters: String = SamplerStage::DEFAULT_CHAIN.iter().map(|s| s.letter()).collect();
        assert_eq!(letters, "edskypmxt");
        assert_eq!(SamplerStage::parse_names("DRY;penalties").unwrap(), vec![Dry, Penalties]);
        assert_eq!(SamplerStage::parse_letters("dk").unwrap(), vec![Dry, TopK]);

        let err = SamplerStage::parse_names("top_k;bogus").unwrap_err();
        assert_eq!(err, SamplingError::UnknownSampler("bogus".into()));
        assert!(err.to_string().contains("unknown sampler 'bogus'"));
        assert_eq!(SamplerStage::parse_letters("kz").unwrap_err(), SamplingError::UnknownSamplerLetter('z'));
        assert_eq!(
            SamplerStage::parse_names("infill").unwrap_err(),
            SamplingError::UnsupportedSampler("infill".into())
        );
        assert!(matches!(SamplerStage::parse_letters("a"), Err(SamplingError::UnsupportedSampler(_))));
    }

    #[test]
    fn params_from_json_and_validation() {
        let p: SamplingParams = serde_json::from_str(
            r#"{"temperature":0.7,"mirostat":2,"samplers":["top_k","typ_p"],"logit_bias":[[5,-1.5]]}"#,
        )
        .unwrap();
        assert_eq!(p.temperature, 0.7);
        assert_eq!(p.mirostat, Mirostat::V2);
        assert_eq!(p.samplers, vec![SamplerStage::TopK, SamplerStage::TypicalP]);
        assert_eq!(p.logit_bias, vec![(5, -1.5)]);
        assert_eq!(p.top_p, 1.0, "missing fields take the defaults");
        assert!(serde_json::from_str::<SamplingParams>(r#"{"mirostat":3}"#).is_err());
        let back: SamplingParams = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);

        assert!(SamplingParams::default().validate().is_ok());
        let bad = SamplingParams { repeat_penalty: 0.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("repeat_penalty"));
        assert!(Sampler::try_new(SamplingParams { top_p: 1.5, ..Default::default() }).is_err());
        assert!(SamplingParams { frequency_penalty: f32::NAN, ..Default::default() }.validate().is_err());

        assert_eq!(parse_logit_bias("15043+1").unwrap(), (15043, 1.0));
        assert_eq!(parse_logit_bias("15043-0.5").unwrap(), (15043, -0.5));
        assert_eq!(parse_logit_bias("7-inf").unwrap(), (7, f32::NEG_INFINITY));
        for bad in ["15043", "+1", "x+1", "7+nan", "7+inf", "7+-1"] {
            assert!(parse_logit_bias(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logprobs_are_the_normalised_log_softmax() {
        // Logits ln 1..ln 4 (+ any shift) give p = 0.1, 0.2, 0.3, 0.4.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln() + 100.0).collect();
        let lp = token_logprobs(&l, 1, 2);
        assert!((lp.chosen.logprob - 0.2f32.ln()).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.id).collect::<Vec<_>>(), vec![3, 2]);
        assert!((lp.top[0].logprob - 0.4f32.ln()).abs() < 1e-5);
        assert!((lp.top[1].logprob - 0.3f32.ln()).abs() < 1e-5);
        let all = token_logprobs(&l, 0, 10);
        assert_eq!(all.top.len(), 4);
        let total: f64 = all.top.iter().map(|t| (t.logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // Ties keep the lower id first; NaN counts as impossible.
        let lp = token_logprobs(&[0.0, f32::NAN, 0.0], 1, 3);
        assert_eq!(lp.top.iter().map(|t| t.id).collect::<Vec<_>>(), vec![0, 2, 1]);
        assert_eq!(lp.chosen.logprob, f32::NEG_INFINITY);
        assert!((lp.top[0].logprob - 0.5f32.ln()).abs() < 1e-6);
        assert!(token_logprobs(&l, 0, 0).top.is_empty());
    }

    #[test]
    fn non_greedy_sampling_reuses_its_buffers() {
        let big: Vec<f32> = (0..4096).map(|i| ((i * 31) % 97) as f32 / 10.0).collect();
        let p = SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.9,
            typical_p: 0.95,
            frequency_penalty: 0.2,
            seed: Some(5),
            ..Default::default()
        };
        let mut s = Sampler::new(p);
        s.accept_all(&(0..64).collect::<Vec<u32>>());
        let id = s.sample(&big);
        s.accept(id);
        let buffers = |s: &Sampler| (s.candidates.items.as_ptr(), s.typical_order.as_ptr());
        let (cap_a, cap_b) = (s.candidates.items.capacity(), s.typical_spare.capacity());
        let before = buffers(&s);
        for _ in 0..50 {
            let id = s.sample(&big);
            s.accept(id);
        }
        assert_eq!(buffers(&s), before);
        assert_eq!((s.candidates.items.capacity(), s.typical_spare.capacity()), (cap_a, cap_b));
    }

    #[test]
    fn choice_seeds_stay_on_llama_cpp_32_bits_and_never_become_random() {
        assert_eq!(seed_for_choice(Some(5), 0), Some(5));
        assert_eq!(seed_for_choice(Some(5), 3), Some(8));
        // Only the low 32 bits count; the "random" value stays random for every choice.
        assert_eq!(seed_for_choice(Some((1 << 32) + 5), 1), Some(6));
        assert_eq!(seed_for_choice(Some(u64::MAX), 1), None);
        assert_eq!(seed_for_choice(Some(u32::MAX as u64), 2), None);
        assert_eq!(seed_for_choice(None, 2), None);
        // A seed next to the "random" value steps over it.
        let next = seed_for_choice(Some(u32::MAX as u64 - 1), 1).map(|s| s as u32);
        assert!(next.is_some_and(|s| s != u32::MAX), "{next:?}");
    }

    #[test]
    fn temperature_zero_is_greedy_only_where_the_temperature_stage_runs() {
        let greedy = SamplingParams::greedy();
        assert!(greedy.is_greedy());
        // llama.cpp: without the temperature stage, temperature 0 changes nothing and the draw samples.
        let no_stage = SamplingParams { samplers: vec![SamplerStage::TopK], top_k: 0, ..greedy.clone() };
        assert!(!no_stage.is_greedy());
        let logits: Vec<f32> = (0..64).map(|i| (i % 7) as f32 * 0.3).collect();
        let picks: std::collections::HashSet<u32> = (0..8)
            .map(|seed| Sampler::new(SamplingParams { seed: Some(seed), ..no_stage.clone() }).sample(&logits))
            .collect();
        assert!(picks.len() > 1, "{picks:?}");
        // Mirostat applies the temperature itself; dynamic temperature may lift 0.
        assert!(SamplingParams { mirostat: Mirostat::V2, samplers: vec![], ..greedy.clone() }.is_greedy());
        assert!(!SamplingParams { dynatemp_range: 0.5, top_k: 0, ..greedy }.is_greedy());
    }
}
