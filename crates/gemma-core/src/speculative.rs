//! Speculative decoding: the next tokens are guessed, then checked in one forward pass and kept while the
//! model's own sampler picks the same tokens, so the output is the same as without speculation
//! (`docs/speculative.md`). The guesses come from n-grams of the context (llama.cpp's `--spec-type
//! ngram-simple` / `ngram-mod`: the last few tokens found earlier, and what followed them copied) or from a
//! smaller draft model with the same vocabulary (`draft-simple`, llama.cpp's `--spec-draft-model`), which
//! generates them greedily.

use std::fmt;
use std::sync::Arc;

use gemma_ops::ThreadPool;

use crate::batch::Batch;
use crate::kv_cache::KvCache;
use crate::model::{Model, Scratch};

/// Which drafter guesses the tokens (llama.cpp's `--spec-type` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecType {
    /// The `size_m` tokens after the last earlier occurrence of the last `size_n` tokens.
    NgramSimple,
    /// A table from the hash of every `n_match` tokens of the context to the token after them, followed token
    /// by token.
    NgramMod,
    /// A draft model's greedy continuation ([`SpeculativeParams::draft_model`]).
    DraftSimple,
}

impl SpecType {
    /// Names as llama.cpp spells them.
    pub const NAMES: &'static [&'static str] = &["ngram-simple", "ngram-mod", "draft-simple"];

    pub fn name(self) -> &'static str {
        match self {
            SpecType::NgramSimple => "ngram-simple",
            SpecType::NgramMod => "ngram-mod",
            SpecType::DraftSimple => "draft-simple",
        }
    }

    /// A llama.cpp `--spec-type` value: `None` for `none`; an error names the known types, and says which
    /// of llama.cpp's types this engine lacks.
    pub fn parse(name: &str) -> Result<Option<SpecType>, SpecError> {
        match name.trim() {
            "none" => Ok(None),
            "ngram-simple" => Ok(Some(SpecType::NgramSimple)),
            "ngram-mod" => Ok(Some(SpecType::NgramMod)),
            "draft-simple" => Ok(Some(SpecType::DraftSimple)),
            other @ ("ngram-map-k" | "ngram-map-k4v" | "ngram-cache" | "draft-eagle3" | "draft-dflash"
            | "draft-dspark" | "draft-mtp") => Err(SpecError::Unsupported(other.to_string())),
            other => Err(SpecError::Unknown(other.to_string())),
        }
    }
}

impl fmt::Display for SpecType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("unknown speculative type `{0}` (known: none, ngram-simple, ngram-mod, draft-simple)")]
    Unknown(String),
    #[error(
        "speculative type `{0}` is llama.cpp's but not implemented here (use ngram-simple, ngram-mod or \
         draft-simple)"
    )]
    Unsupported(String),
    #[error("the draft model cannot draft for this model: {0}")]
    IncompatibleDraft(String),
    #[error("{0}")]
    Invalid(String),
}

/// Speculation settings, with llama.cpp's defaults (`common_params_speculative`).
#[derive(Clone, Debug, PartialEq)]
pub struct SpeculativeParams {
    pub kind: SpecType,
    /// ngram-simple: tokens that must match (`--spec-ngram-simple-size-n`, 12).
    pub simple_size_n: usize,
    /// ngram-simple: tokens drafted (`--spec-ngram-simple-size-m`, 48).
    pub simple_size_m: usize,
    /// ngram-mod: tokens hashed per lookup (`--spec-ngram-mod-n-match`, 24).
    pub mod_n_match: usize,
    /// ngram-mod: fewest tokens of a draft; a shorter one is dropped (`--spec-ngram-mod-n-min`, 48).
    pub mod_n_min: usize,
    /// ngram-mod: most tokens of a draft (`--spec-ngram-mod-n-max`, 64).
    pub mod_n_max: usize,
    /// An extra cap on a draft's length (`--spec-draft-n-max`). llama.cpp applies that flag only to draft
    /// models (3 when absent), so `None` (the default) reproduces its n-gram drafts.
    pub draft_n_max: Option<usize>,
    /// draft-simple: a shorter draft is dropped (`--spec-draft-n-min`, 0).
    pub draft_n_min: usize,
    /// draft-simple: the draft stops before a token whose probability among the draft model's ten best is
    /// below this (`--spec-draft-p-min`, 0: never).
    pub draft_p_min: f32,
    /// draft-simple: the draft model (`--spec-draft-model`).
    pub draft_model: Option<DraftModel>,
}

/// llama.cpp's default `--spec-draft-n-max` for draft models.
pub const DRAFT_N_MAX: usize = 3;

/// A draft model checked against the model it drafts for ([`DraftModel::new`]). Compared by identity.
#[derive(Clone)]
pub struct DraftModel(Arc<Model>);

impl fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DraftModel({})", self.0.config.name)
    }
}

impl PartialEq for DraftModel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// llama.cpp's `SPEC_VOCAB_MAX_SIZE_DIFFERENCE`.
const VOCAB_MAX_SIZE_DIFFERENCE: usize = 128;
/// llama.cpp's `SPEC_VOCAB_CHECK_START_TOKEN_ID`: the token texts compared start here.
const VOCAB_CHECK_START: usize = 5;

impl DraftModel {
    /// `draft` as the draft model of `target`, if their vocabularies agree as llama.cpp requires
    /// (`common_speculative_are_compatible`): the same BOS rule and BOS/EOS ids, at most 128 tokens more or
    /// fewer, and the same text for every token both have from id 5 on.
    pub fn new(target: &Model, draft: Arc<Model>) -> Result<DraftModel, SpecError> {
        let bad = |why: String| SpecError::IncompatibleDraft(why);
        if draft.is_embedding_model() {
            return Err(bad(format!("{} is an embedding model", draft.config.name)));
        }
        let (t, d) =
            (target.tokenizer().map_err(|e| bad(e.to_string()))?, draft.tokenizer().map_err(|e| bad(e.to_string()))?);
        if (t.add_bos(), t.bos_id(), t.eos_id()) != (d.add_bos(), d.bos_id(), d.eos_id()) {
            return Err(bad(format!(
                "BOS/EOS differ (target: add BOS {}, BOS {:?}, EOS {:?}; draft: {}, {:?}, {:?})",
                t.add_bos(),
                t.bos_id(),
                t.eos_id(),
                d.add_bos(),
                d.bos_id(),
                d.eos_id()
            )));
        }
        let (nt, nd) = (t.vocab_size(), d.vocab_size());
        if nt.abs_diff(nd) > VOCAB_MAX_SIZE_DIFFERENCE {
            return Err(bad(format!(
                "vocabularies of {nt} and {nd} tokens differ by more than {VOCAB_MAX_SIZE_DIFFERENCE}"
            )));
        }
        for id in VOCAB_CHECK_START..nt.min(nd) {
            let id = id as u32;
            if t.piece(id) != d.piece(id) {
                return Err(bad(format!(
                    "token {id} is {:?} in the target, {:?} in the draft",
                    t.piece(id),
                    d.piece(id)
                )));
            }
        }
        Ok(DraftModel(draft))
    }

    pub fn model(&self) -> &Model {
        &self.0
    }
}

impl SpeculativeParams {
    pub fn new(kind: SpecType) -> SpeculativeParams {
        SpeculativeParams {
            kind,
            simple_size_n: 12,
            simple_size_m: 48,
            mod_n_match: 24,
            mod_n_min: 48,
            mod_n_max: 64,
            draft_n_max: None,
            draft_n_min: 0,
            draft_p_min: 0.0,
            draft_model: None,
        }
    }

    /// The bounds llama.cpp's flags enforce.
    pub fn validate(&self) -> Result<(), SpecError> {
        let check = |name: &str, v: usize, lo: usize| {
            if v < lo || v > 1024 {
                Err(SpecError::Invalid(format!("{name} must be between {lo} and 1024, got {v}")))
            } else {
                Ok(())
            }
        };
        check("--spec-ngram-simple-size-n", self.simple_size_n, 1)?;
        check("--spec-ngram-simple-size-m", self.simple_size_m, 1)?;
        check("--spec-ngram-mod-n-match", self.mod_n_match, 1)?;
        check("--spec-ngram-mod-n-min", self.mod_n_min, 0)?;
        check("--spec-ngram-mod-n-max", self.mod_n_max, 0)?;
        if self.kind == SpecType::DraftSimple {
            if !(0.0..=1.0).contains(&self.draft_p_min) {
                return Err(SpecError::Invalid(format!(
                    "--spec-draft-p-min must be between 0 and 1, got {}",
                    self.draft_p_min
                )));
            }
            check("--spec-draft-n-min", self.draft_n_min, 0)?;
        }
        Ok(())
    }

    /// Most tokens one draft can hold.
    pub fn max_draft(&self) -> usize {
        let n = match self.kind {
            SpecType::NgramSimple => self.simple_size_m,
            SpecType::NgramMod => self.mod_n_max,
            SpecType::DraftSimple => return self.draft_n_max.unwrap_or(DRAFT_N_MAX),
        };
        self.draft_n_max.map_or(n, |cap| cap.min(n))
    }
}

/// Counts of one generation, as llama-server's `timings.draft_n` / `draft_n_accepted` and its statistics line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Drafts verified.
    pub drafts: usize,
    /// Tokens drafted (`draft_n`).
    pub draft_n: usize,
    /// Drafted tokens the model's sampler picked too (`draft_n_accepted`).
    pub draft_n_accepted: usize,
}

impl SpecStats {
    /// Accepted over drafted tokens (0 with no draft).
    pub fn acceptance(&self) -> f64 {
        if self.draft_n == 0 {
            0.0
        } else {
            self.draft_n_accepted as f64 / self.draft_n as f64
        }
    }
}

/// llama.cpp's ngram-simple: the last `n` tokens (those of `history` and then `last`, the token just sampled)
/// are looked for in `history`, newest occurrence first, not counting the current one; the up to `m` tokens
/// after it are the draft. No draft when the history is short (`n + m + 1` tokens or fewer), nothing matches,
/// or fewer than `n` tokens follow the match.
pub fn ngram_simple_draft(history: &[u32], last: u32, n: usize, m: usize) -> Vec<u32> {
    let len = history.len();
    if n == 0 || len <= n + m + 1 {
        return Vec::new();
    }
    let pattern_head = &history[len - n + 1..];
    // Start at len - n - 1 and go back; position 0 means "no match", as in llama.cpp.
    let found = (1..len - n).rev().find(|&j| history[j..j + n - 1] == *pattern_head && history[j + n - 1] == last);
    let Some(at) = found else { return Vec::new() };
    let take = m.min(len - (at + n));
    if take < n {
        return Vec::new();
    }
    history[at + n..at + n + take].to_vec()
}

/// Entries of ngram-mod's table (llama.cpp's 4 Mi).
const MOD_TABLE: usize = 4 * 1024 * 1024;
const MOD_EMPTY: i32 = -1;

/// llama.cpp's ngram-mod: a table from a hash of `n` tokens to the token that followed them last, filled from
/// the context as it grows; a draft follows the table from the last `n` tokens until a hash has no entry.
pub struct NgramMod {
    n: usize,
    entries: Vec<i32>,
    used: usize,
    /// Tokens of the history already added (llama.cpp's `i_last`).
    added_to: usize,
    /// Length of the last draft, and how many rounds in a row accepted less than a quarter of one.
    last_draft: usize,
    low_rounds: u32,
}

impl NgramMod {
    pub fn new(n: usize) -> NgramMod {
        NgramMod { n, entries: vec![MOD_EMPTY; MOD_TABLE], used: 0, added_to: 0, last_draft: 0, low_rounds: 0 }
    }

    fn index(&self, tokens: &[u32]) -> usize {
        // llama.cpp's LCG-style hash over the tokens (as signed 32-bit values widened to 64 bits).
        let mut h: u64 = 0;
        for &t in &tokens[..self.n] {
            h = h.wrapping_mul(6364136223846793005).wrapping_add(t as i32 as i64 as u64);
        }
        (h % self.entries.len() as u64) as usize
    }

    fn add(&mut self, tokens: &[u32]) {
        let i = self.index(tokens);
        if self.entries[i] == MOD_EMPTY {
            self.used += 1;
        }
        self.entries[i] = tokens[self.n] as i32;
    }

    fn reset(&mut self) {
        self.entries.fill(MOD_EMPTY);
        self.used = 0;
    }

    /// A new prompt (llama.cpp's `begin`): its n-grams go in; a table over a quarter full starts again.
    pub fn begin(&mut self, prompt: &[u32]) {
        self.added_to = 0;
        self.last_draft = 0;
        let n = self.n;
        if prompt.len() < n {
            return;
        }
        for i in 0..prompt.len() - n {
            self.add(&prompt[i..]);
        }
        self.added_to = prompt.len() - n;
        if self.used as f64 / self.entries.len() as f64 > 0.25 {
            self.reset();
        }
    }

    /// A draft of `n_min..=n_max` tokens after `history` and `last`, or none.
    pub fn draft(&mut self, history: &[u32], last: u32, n_min: usize, n_max: usize) -> Vec<u32> {
        self.last_draft = 0;
        let (len, n) = (history.len(), self.n);
        if len < n {
            return Vec::new();
        }
        // New n-grams go in 32 tokens at a time, as in llama.cpp.
        if self.added_to + 32 < len {
            for i in self.added_to..len - n {
                self.add(&history[i..]);
            }
            self.added_to = len - n;
        }
        let mut window: Vec<u32> = history[len - n + 1..].to_vec();
        window.push(last);
        for i in 0..n_max {
            let next = self.entries[self.index(&window[i..])];
            if next == MOD_EMPTY {
                if i < n_min {
                    return Vec::new();
                }
                break;
            }
            window.push(next as u32);
        }
        let draft = window.split_off(n);
        self.last_draft = draft.len();
        draft
    }

    /// After a draft was checked (llama.cpp's `accept`): five rounds in a row that kept under a quarter of
    /// their draft clear the table (it is filled again from the whole history at the next draft).
    pub fn accept(&mut self, accepted: usize) {
        if self.last_draft == 0 {
            return;
        }
        if (accepted as f64 / self.last_draft as f64) < 0.25 {
            self.low_rounds += 1;
            if self.low_rounds >= 5 {
                self.reset();
                self.low_rounds = 0;
                self.added_to = 0;
            }
        } else {
            self.low_rounds = 0;
        }
    }
}

/// How many drafted tokens may follow the token just sampled, as llama-server allows: none past `max_tokens`
/// (`tokens_left`: what may still be generated after that token), the context's last position left free for a
/// context shift, at most `MAX_UBATCH - 1` (one forward pass) and the type's own cap. Check
/// [`KvCache::can_go_back`] too before running them ([`prepare_draft`] does both).
pub fn draft_room(params: &SpeculativeParams, tokens_left: usize, cache_len: usize, ctx: usize) -> usize {
    tokens_left.min(ctx.saturating_sub(cache_len + 2)).min(params.max_draft()).min(crate::kv_cache::MAX_UBATCH - 1)
}

/// The draft to run after `last` (the token just sampled, not yet run) in the next forward pass, for a
/// sequence whose cache `cache` holds `history` (one token per position, or more after a context shift, as the
/// n-grams are looked for there) and which may still generate `tokens_left` tokens after `last`, in a context
/// of `ctx` positions: the drafter's guess cut by [`draft_room`] (no token past `max_tokens`, the context's last
/// position left free for a context shift, one forward pass), and none at all unless the cache can forget every
/// drafted position again ([`KvCache::can_go_back`]: a sliding-window ring can only go back so far). Empty when
/// there is no draft. `Session`'s generation and the server's sequences both draft through it; a draft model
/// runs on `pool` (without one, or after a context shift, a draft model makes no draft).
#[allow(clippy::too_many_arguments)]
pub fn prepare_draft(
    drafter: &mut Drafter,
    params: &SpeculativeParams,
    history: &[u32],
    last: u32,
    tokens_left: usize,
    cache: &KvCache,
    ctx: usize,
    pool: Option<&ThreadPool>,
) -> Vec<u32> {
    let len = cache.len();
    let room = draft_room(params, tokens_left, len, ctx);
    let mut draft = drafter.draft(history, last, len, room, pool);
    draft.truncate(room);
    if !draft.is_empty() && !cache.can_go_back(len + 1 + draft.len(), len + 1) {
        draft.clear();
    }
    draft
}

/// The drafter of one generation (one sequence).
pub enum Drafter {
    Simple { n: usize, m: usize },
    Mod { table: Box<NgramMod>, n_min: usize, n_max: usize },
    Model(Box<ModelDrafter>),
}

/// A draft model drafting for one sequence: its own KV cache, kept holding a prefix of the target's tokens.
pub struct ModelDrafter {
    model: DraftModel,
    cache: KvCache,
    /// The token of each position of `cache`.
    tokens: Vec<u32>,
    scratch: Scratch,
    n_min: usize,
    p_min: f32,
}

/// Tokens per prefill pass of the draft model.
const DRAFT_PREFILL_CHUNK: usize = 512;

impl ModelDrafter {
    fn new(model: DraftModel, params: &SpeculativeParams, ctx: usize) -> ModelDrafter {
        let cache = model.model().new_cache(ctx);
        ModelDrafter {
            model,
            cache,
            tokens: Vec::new(),
            scratch: Scratch::default(),
            n_min: params.draft_n_min,
            p_min: params.draft_p_min,
        }
    }

    /// Up to `n_max` tokens to follow `history` (the target's cache, one token per position) and `last`, as
    /// llama.cpp's draft-simple makes them: the draft model's best token each step, stopping before one whose
    /// probability among its ten best is below `p_min`; none if fewer than `n_min`. The draft cache first drops
    /// what the target did not keep and runs what it has not seen.
    fn draft(&mut self, history: &[u32], last: u32, n_max: usize, pool: &ThreadPool) -> Vec<u32> {
        match self.try_draft(history, last, n_max, pool) {
            Ok(d) if d.len() >= self.n_min => d,
            Ok(_) => Vec::new(),
            Err(_) => {
                // A failed draft pass costs only the speed-up: the target goes on alone (its own passes report
                // their errors), and the draft model starts again next time.
                self.cache.clear();
                self.tokens.clear();
                Vec::new()
            }
        }
    }

    fn try_draft(
        &mut self,
        history: &[u32],
        last: u32,
        n_max: usize,
        pool: &ThreadPool,
    ) -> Result<Vec<u32>, crate::error::ModelError> {
        let model = self.model.model();
        if history.len() + 1 + n_max > self.cache.capacity() {
            return Ok(Vec::new());
        }
        let common = self.tokens.iter().zip(history).take_while(|(a, b)| a == b).count();
        if self.cache.truncate(common) != common {
            // A sliding-window layer cannot go back that far: start again.
            self.cache.clear();
        }
        self.tokens.truncate(self.cache.len());
        let mut fed: Vec<u32> = history[self.tokens.len()..].to_vec();
        fed.push(last);
        // The best next token and its probability after the last token run.
        let mut next = (0, 0.0);
        for chunk in fed.chunks(DRAFT_PREFILL_CHUNK) {
            let batch = Batch::sequence(chunk, self.tokens.len(), 0, false);
            let out = model.forward_with(&batch, std::slice::from_mut(&mut self.cache), pool, &mut self.scratch)?;
            next = best_of_ten(out.row(0));
            self.tokens.extend_from_slice(chunk);
        }
        let mut draft = Vec::with_capacity(n_max);
        loop {
            let (best, p) = next;
            if p < self.p_min {
                break;
            }
            draft.push(best);
            if draft.len() >= n_max {
                break;
            }
            let batch = Batch::sequence(&[best], self.tokens.len(), 0, true);
            let out = model.forward_with(&batch, std::slice::from_mut(&mut self.cache), pool, &mut self.scratch)?;
            next = best_of_ten(out.row(0));
            self.tokens.push(best);
        }
        Ok(draft)
    }
}

/// The most likely token and its probability among the ten most likely (llama.cpp's draft sampler: top-k 10,
/// then the softmax of what is left); ties go to the lower id.
fn best_of_ten(logits: &[f32]) -> (u32, f32) {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(11);
    for (i, &l) in logits.iter().enumerate() {
        if top.len() < 10 || l > top[top.len() - 1].1 {
            let at = top.iter().position(|&(_, x)| l > x).unwrap_or(top.len());
            top.insert(at, (i as u32, l));
            top.truncate(10);
        }
    }
    let Some(&(best, max)) = top.first() else { return (0, 0.0) };
    let sum: f32 = top.iter().map(|&(_, l)| (l - max).exp()).sum();
    (best, 1.0 / sum)
}

impl Drafter {
    /// A drafter for a sequence whose context starts with `prompt`, in a context of `ctx` positions (the size of
    /// a draft model's cache).
    pub fn new(params: &SpeculativeParams, prompt: &[u32], ctx: usize) -> Drafter {
        match params.kind {
            SpecType::DraftSimple => match &params.draft_model {
                Some(m) => Drafter::Model(Box::new(ModelDrafter::new(m.clone(), params, ctx))),
                // `validate` refuses this; without a model there is nothing to draft with.
                None => Drafter::Simple { n: 0, m: 0 },
            },
            SpecType::NgramSimple => Drafter::Simple { n: params.simple_size_n, m: params.simple_size_m },
            SpecType::NgramMod => {
                let mut table = Box::new(NgramMod::new(params.mod_n_match));
                table.begin(prompt);
                Drafter::Mod { table, n_min: params.mod_n_min, n_max: params.mod_n_max }
            }
        }
    }

    /// A draft to follow `history` (the tokens of the cache, which holds `cache_len` positions) and `last` (the
    /// token just sampled, not yet run); empty when there is none. A draft model makes at most `room` tokens,
    /// on `pool`, and none without one or after a context shift (the cache then holds fewer positions than
    /// the history has tokens). [`prepare_draft`] cuts every draft to what may run.
    fn draft(
        &mut self,
        history: &[u32],
        last: u32,
        cache_len: usize,
        room: usize,
        pool: Option<&ThreadPool>,
    ) -> Vec<u32> {
        match self {
            Drafter::Simple { n, m } => ngram_simple_draft(history, last, *n, *m),
            Drafter::Mod { table, n_min, n_max } => table.draft(history, last, *n_min, *n_max),
            Drafter::Model(m) => match pool {
                Some(pool) if history.len() == cache_len && room > 0 => m.draft(history, last, room, pool),
                _ => Vec::new(),
            },
        }
    }

    /// How many tokens of the last draft the sampler kept.
    pub fn accept(&mut self, accepted: usize) {
        if let Drafter::Mod { table, .. } = self {
            table.accept(accepted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_copies_what_followed_the_newest_earlier_match() {
        let mut h: Vec<u32> = (1..=20).collect();
        h.extend([6, 7]);
        // pattern (n = 3): 6 7 | 8 -> found at index 5 (tokens 6 7 8); draft = 9 10 11 12.
        assert_eq!(ngram_simple_draft(&h, 8, 3, 4), vec![9, 10, 11, 12]);
        // no match for 6 7 99
        assert!(ngram_simple_draft(&h, 99, 3, 4).is_empty());
        // too short a history: len <= n + m + 1
        assert!(ngram_simple_draft(&h, 8, 3, 19).is_empty());
    }

    #[test]
    fn simple_takes_the_newest_match_and_needs_n_tokens_after_it() {
        // "1 2" twice before the current one: the newer occurrence wins.
        let h: Vec<u32> = vec![0, 1, 2, 10, 11, 12, 13, 14, 1, 2, 20, 21, 22, 23, 24, 25, 26, 1];
        assert_eq!(ngram_simple_draft(&h, 2, 2, 5), vec![20, 21, 22, 23, 24]);
        // "1 2 3" matches with only two tokens after it, fewer than n = 3: no draft
        let h: Vec<u32> = vec![7, 7, 7, 7, 7, 7, 7, 7, 7, 1, 2, 3, 1, 2];
        assert!(ngram_simple_draft(&h, 3, 3, 3).is_empty());
        // with n = 2 ("2 3"), the two tokens after the match are enough
        assert_eq!(ngram_simple_draft(&h, 3, 2, 3), vec![1, 2]);
    }

    #[test]
    fn mod_drafts_follow_the_table() {
        let mut m = NgramMod::new(2);
        let prompt: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7, 8];
        m.begin(&prompt);
        // after 2 3 comes 4 5 6 7 8 (the last n-gram, 7 8, has no successor)
        assert_eq!(m.draft(&[9, 2], 3, 0, 4), vec![4, 5, 6, 7]);
        assert_eq!(m.draft(&[9, 2], 3, 0, 10), vec![4, 5, 6, 7, 8]);
        assert_eq!(m.draft(&[9, 2], 3, 5, 10).len(), 5);
        assert!(m.draft(&[9, 2], 3, 6, 10).is_empty(), "shorter than n_min");
        assert!(m.draft(&[9, 9], 9, 0, 10).is_empty());
    }

    /// The draft sampler's probability is the softmax over the ten best logits only; ties go to the lower id.
    #[test]
    fn best_of_ten_is_the_top_token_and_its_share_of_the_top_ten() {
        let mut logits = vec![-100.0f32; 50];
        logits[7] = 2.0;
        for (i, l) in logits.iter_mut().enumerate().skip(20).take(9) {
            *l = (i as f32 - 30.0) * 0.1;
        }
        logits[40] = 2.0; // a tie with id 7
        let (best, p) = best_of_ten(&logits);
        assert_eq!(best, 7);
        let top: Vec<f32> = {
            let mut v = logits.clone();
            v.sort_by(|a, b| b.total_cmp(a));
            v.truncate(10);
            v
        };
        let want = 1.0 / top.iter().map(|l| (l - 2.0).exp()).sum::<f32>();
        assert!((p - want).abs() < 1e-6, "{p} vs {want}");
        // The eleventh best and below play no part: lowering them changes nothing.
        logits[0] = -1e9;
        assert_eq!(best_of_ten(&logits), (7, p));
        assert_eq!(best_of_ten(&[0.5]), (0, 1.0));
    }

    #[test]
    fn parse_names() {
        assert_eq!(SpecType::parse("ngram-simple"), Ok(Some(SpecType::NgramSimple)));
        assert_eq!(SpecType::parse("draft-simple"), Ok(Some(SpecType::DraftSimple)));
        assert_eq!(SpecType::parse("none"), Ok(None));
        assert!(matches!(SpecType::parse("ngram-map-k"), Err(SpecError::Unsupported(_))));
        assert!(matches!(SpecType::parse("bogus"), Err(SpecError::Unknown(_))));
    }
}
