//! DRY ("Don't Repeat Yourself"), llama.cpp's `llama_sampler_dry` (from koboldcpp): a token that would
//! extend a run of tokens already seen in the recent history, a run longer than `dry_allowed_length`,
//! loses `dry_multiplier · dry_base^(run length − dry_allowed_length)` from its logit.
//!
//! Sequence breakers (texts such as a newline or `:`) end the stretch a repeat may span: a repeat is
//! never counted across the latest breaker, so a model may keep a list's format ("- name: ...") without
//! being pushed away from it. Breakers are texts but the history is tokens, so [`DryBreakers`] turns
//! them into token sequences once per vocabulary, as `llama_sampler_init_dry` does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Candidates, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Longest breaker in bytes; longer ones are cut to this (llama.cpp's `MAX_CHAR_LEN`).
pub const MAX_BREAKER_BYTES: usize = 40;
/// Most tokens of a breaker after its first token (llama.cpp's `MAX_SEQ_LEN`). It bounds the breaker
/// scan of every sampled token, which would otherwise grow with the breakers' lengths.
pub const MAX_BREAKER_TAIL_TOKENS: usize = 20;

/// `ln(f32::MAX)`: exponents are capped so that `base^exponent` stays finite (llama.cpp's clamp).
const FLOAT_MAX_LOG: f32 = 88.722_84;

/// The sequence breakers of one vocabulary, as token sequences keyed by their first ("head") token.
///
/// A token whose text contains a whole breaker is a head with an empty tail. A token whose text ends
/// with the start of a breaker is a head whose tail is the tokenization of the rest of the breaker, so
/// breakers that span token boundaries are found too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DryBreakers {
    tails: HashMap<u32, Vec<Vec<u32>>>,
}

impl DryBreakers {
    /// Matches `breakers` against every token text of `tokenizer` (rendered as llama.cpp's single-token
    /// detokenization does, control tokens included). Empty breakers are skipped; longer than
    /// [`MAX_BREAKER_BYTES`] bytes they are cut. This scans the whole vocabulary once: build it once per
    /// breaker list and share it (it is behind an [`Arc`] in the sampler).
    pub fn new(tokenizer: &Tokenizer, breakers: &[String]) -> DryBreakers {
        let strip_space = tokenizer.add_space_prefix();
        Self::build(
            tokenizer.vocab_size(),
            |id| {
                let text = tokenizer.token_piece_bytes(id, true).unwrap_or_default();
                // llama.cpp's detokenize drops the space a space-prefixing tokenizer put first.
                match text {
                    [b' ', rest @ ..] if strip_space => rest,
                    _ => text,
                }
            },
            // A tail cut inside a UTF-8 character is not text; the replacement character stands in for
            // the lone bytes (llama.cpp tokenizes the bytes; this only matters for non-ASCII breakers).
            |tail| tokenizer.encode(&String::from_utf8_lossy(tail), false, false),
            breakers,
        )
    }

    /// Breakers given directly as token sequences (the first token is the head), e.g. for tests or
    /// for breakers that are not texts. Empty sequences are skipped.
    pub fn from_token_sequences(sequences: &[Vec<u32>]) -> DryBreakers {
        let mut out = DryBreakers::default();
        for seq in sequences {
            if let Some((&head, tail)) = seq.split_first() {
                out.insert(head, tail.to_vec());
            }
        }
        out
    }

    /// The tails of the breakers that begin with `head`.
    pub fn tails(&self, head: u32) -> &[Vec<u32>] {
        self.tails.get(&head).map_or(&[], Vec::as_slice)
    }

    /// The vocabulary scan, over any token texts and tokenizer (so it can be tested on a toy vocabulary).
    fn build<'v>(
        n_tokens: usize,
        text_of: impl Fn(u32) -> &'v [u8],
        tokenize: impl Fn(&[u8]) -> Vec<u32>,
        breakers: &[String],
    ) -> DryBreakers {
        let breakers: Vec<&[u8]> = breakers
            .iter()
            .map(|b| &b.as_bytes()[..b.len().min(MAX_BREAKER_BYTES)])
            .filter(|b| !b.is_empty())
            .collect();
        // The same tail comes up for many tokens (every token ending in "\n" for a breaker "\n\n"):
        // tokenize each (breaker, split point) once.
        let mut tail_tokens: HashMap<(usize, usize), Vec<u32>> = HashMap::new();
        let mut out = DryBreakers::default();
        for id in 0..n_tokens as u32 {
            let word = text_of(id);
            for (b, &breaker) in breakers.iter().enumerate() {
                if contains(word, breaker) {
                    out.insert(id, Vec::new());
                    continue;
                }
                // Every place where the token's text ends with a proper prefix of the breaker.
                for pos in (0..word.len()).filter(|&pos| word[pos] == breaker[0]) {
                    let overlap = word.len() - pos;
                    if overlap < breaker.len() && word[pos..] == breaker[..overlap] {
                        let tail = tail_tokens.entry((b, overlap)).or_insert_with(|| {
                            let mut t = tokenize(&breaker[overlap..]);
                            t.truncate(MAX_BREAKER_TAIL_TOKENS);
                            t
                        });
                        out.insert(id, tail.clone());
                    }
                }
            }
        }
        out
    }

    /// Adds a breaker unless the same (head, tail) is already there.
    fn insert(&mut self, head: u32, tail: Vec<u32>) {
        let tails = self.tails.entry(head).or_default();
        if !tails.contains(&tail) {
            tails.push(tail);
        }
    }

    /// True when the token alone is a breaker (its text contains a whole breaker): DRY never penalizes
    /// it, since emitting it ends the repeat.
    fn is_single_token_breaker(&self, id: u32) -> bool {
        self.tails(id).iter().any(Vec::is_empty)
    }

    /// How long a repeat ending at the newest token may be: the number of tokens after the latest
    /// complete breaker in `recent` (newest first), or all of them when there is none. At each head,
    /// the longest tail that matches wins.
    fn repeat_limit(&self, recent: &[u32]) -> usize {
        for (i, &token) in recent.iter().enumerate() {
            let Some(tails) = self.tails.get(&token) else { continue };
            // The tail follows the head, so it lies at recent[i-1], recent[i-2], ... (newer tokens).
            let longest = tails
                .iter()
                .filter(|tail| tail.len() <= i && tail.iter().enumerate().all(|(o, &t)| recent[i - 1 - o] == t))
                .map(Vec::len)
                .max();
            if let Some(len) = longest {
                return i - len;
            }
        }
        recent.len()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// DRY's state in a [`super::Sampler`]: the scanned window of the history and buffers reused per token.
#[derive(Clone, Debug)]
pub(super) struct Dry {
    breakers: Arc<DryBreakers>,
    /// How many of the latest tokens are scanned (`dry_penalty_last_n`, −1 resolved to the context).
    window: usize,
    /// The accepted tokens, at most `window`, oldest first.
    history: VecDeque<u32>,
    /// The history newest first, the order the scan works in.
    recent: Vec<u32>,
    /// The Z-array of `recent`: from position k on, `z[k]` tokens equal the newest ones.
    z: Vec<usize>,
    /// For each token that would extend a repeat, the longest such repeat.
    longest: HashMap<u32, usize>,
}

impl Dry {
    pub(super) fn new(breakers: Arc<DryBreakers>, window: usize) -> Dry {
        Dry {
            breakers,
            window,
            // The window may stand for a whole context; grow as tokens come rather than up front.
            history: VecDeque::with_capacity(window.min(4096)),
            recent: Vec::new(),
            z: Vec::new(),
            longest: HashMap::new(),
        }
    }

    pub(super) fn accept(&mut self, id: u32) {
        if self.history.len() >= self.window {
            self.history.pop_front();
        }
        self.history.push_back(id);
    }

    pub(super) fn reset(&mut self) {
        self.history.clear();
    }

    /// Finds, for every token, the longest repeat it would extend (into `self.longest`); false when
    /// nothing can be penalized.
    fn find_repeats(&mut self, allowed_length: usize) -> bool {
        self.longest.clear();
        let n = self.history.len();
        if n <= allowed_length {
            return false;
        }
        self.recent.clear();
        self.recent.extend(self.history.iter().rev());
        let limit = self.breakers.repeat_limit(&self.recent);
        if limit < allowed_length {
            return false;
        }
        z_array(&self.recent, &mut self.z);
        // z[k] = r means the r tokens before recent[k-1] (recent[k..k+r]) equal the r newest tokens, so
        // emitting recent[k-1] next would make that repeat r + 1 long. Repeats never reach past the
        // latest breaker, hence the limit.
        for k in 1..n {
            let len = self.z[k].min(limit);
            if len >= allowed_length {
                let next = self.recent[k - 1];
                let best = self.longest.entry(next).or_insert(len);
                *best = (*best).max(len);
            }
        }
        !self.longest.is_empty()
    }

    /// Subtracts DRY's penalty from the candidates that would extend a repeat.
    pub(super) fn apply(&mut self, c: &mut Candidates, p: &SamplingParams) {
        let allowed = p.dry_allowed_length as usize;
        if !self.find_repeats(allowed) {
            return;
        }
        let max_exponent = if p.dry_base > 1.000_001 { (FLOAT_MAX_LOG / p.dry_base.ln()) as i64 } else { 0 };
        let penalty = |len: usize| {
            let mut exponent = (len - allowed) as i64;
            if max_exponent > 0 {
                exponent = exponent.min(max_exponent);
            }
            // In double precision like llama.cpp's std::pow(float, int), then rounded to f32.
            (p.dry_multiplier as f64 * (p.dry_base as f64).powf(exponent as f64)) as f32
        };
        let breakers = &self.breakers;
        let penalize = |id: u32, logit: &mut f32, len: usize| {
            if !breakers.is_single_token_breaker(id) {
                *logit -= penalty(len);
            }
        };
        if c.id_indexed {
            for (&id, &len) in &self.longest {
                if let Some(cand) = c.items.get_mut(id as usize) {
                    penalize(id, &mut cand.logit, len);
                }
            }
        } else {
            for cand in &mut c.items {
                if let Some(&len) = self.longest.get(&cand.id) {
                    penalize(cand.id, &mut cand.logit, len);
                }
            }
        }
        c.sorted = false;
    }

    #[cfg(test)]
    pub(super) fn history_len(&self) -> usize {
        self.history.len()
    }
}

/// The Z-array of `s` into `z`: `z[k]` is the length of the longest common prefix of `s` and `s[k..]`
/// (`z[0] = s.len()`). Linear time: inside the rightmost match found so far, `z[k]` starts from what
/// the same offset inside its prefix already knows.
fn z_array(s: &[u32], z: &mut Vec<usize>) {
    let n = s.len();
    z.clear();
    z.resize(n, 0);
    if n == 0 {
        return;
    }
    z[0] = n;
    let (mut left, mut right) = (0, 0); // the match s[left..right] == s[..right - left]
    for k in 1..n {
        let mut len = if k < right { (right - k).min(z[k - left]) } else { 0 };
        while k + len < n && s[len] == s[k + len] {
            len += 1;
        }
        z[k] = len;
        if k + len > right {
            (left, right) = (k, k + len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_array_matches_the_definition() {
        let s = [1u32, 2, 3, 3, 2, 3, 9, 1, 2, 3, 1, 2, 3, 1];
        let mut z = Vec::new();
        z_array(&s, &mut z);
        for k in 0..s.len() {
            let naive = (0..s.len() - k).take_while(|&i| s[i] == s[k + i]).count();
            assert_eq!(z[k], naive, "k = {k}");
        }
    }

    /// A toy vocabulary: its texts, and a tokenizer that splits greedily by the longest known text.
    fn toy_vocab() -> (Vec<&'static [u8]>, impl Fn(&[u8]) -> Vec<u32>) {
        let texts: Vec<&'static [u8]> = vec![b"a", b"b", b":", b"\n", b"x\n", b"ab", b"<", b"/", b"e>", b"<e", b"*"];
        let lookup = texts.clone();
        let tokenize = move |mut s: &[u8]| {
            let mut out = Vec::new();
            while !s.is_empty() {
                let (id, len) = lookup
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| s.starts_with(t))
                    .map(|(i, t)| (i as u32, t.len()))
                    .max_by_key(|&(_, l)| l)
                    .unwrap_or((u32::MAX, 1));
                out.push(id);
                s = &s[len..];
            }
            out
        };
        (texts, tokenize)
    }

    #[test]
    fn breakers_inside_a_token_and_across_tokens() {
        let (texts, tokenize) = toy_vocab();
        let breakers = vec!["\n".to_string(), "</e>".to_string(), String::new()];
        let b = DryBreakers::build(texts.len(), |id| texts[id as usize], tokenize, &breakers);
        // "\n" and "x\n" contain the newline breaker: single-token breakers.
        assert_eq!(b.tails(3), &[Vec::<u32>::new()]);
        assert_eq!(b.tails(4), &[Vec::<u32>::new()]);
        assert!(b.is_single_token_breaker(4));
        // "<" starts "</e>": the rest "/e>" tokenizes to "/", "e>". "<e" does not end with a prefix of it.
        assert_eq!(b.tails(6), &[vec![7, 8]]);
        assert!(b.tails(9).is_empty());
        assert!(!b.is_single_token_breaker(6));
        // Tokens that take no part in a breaker are not heads.
        assert!(b.tails(0).is_empty() && b.tails(2).is_empty());
        // The empty breaker is skipped (it would match every token).
        assert_eq!(b.tails.len(), 3);
    }

    #[test]
    fn long_breakers_are_cut() {
        let (texts, tokenize) = toy_vocab();
        // 41 bytes: cut to 40 "a"s, found only in tokens that are a prefix-overlap, never whole.
        let long = "a".repeat(MAX_BREAKER_BYTES + 1);
        let b = DryBreakers::build(texts.len(), |id| texts[id as usize], &tokenize, &[long]);
        // "a" and "ab"? "a" ends with "a" (overlap 1): tail = 39 "a" tokens, cut to 20.
        assert_eq!(b.tails(0), &[vec![0; MAX_BREAKER_TAIL_TOKENS]]);
        assert!(b.tails(5).is_empty(), "\"ab\" does not end with a prefix of \"aaa...\"");
    }

    #[test]
    fn repeat_limit_stops_at_the_latest_complete_breaker() {
        // Breakers: token 9 alone, and the two-token sequence 7 8.
        let b = DryBreakers::from_token_sequences(&[vec![9], vec![7, 8]]);
        // Newest first: 1 2 8 7 3 → the 7 8 breaker ends 2 tokens from the end.
        assert_eq!(b.repeat_limit(&[1, 2, 8, 7, 3]), 2);
        // A 7 not followed by 8 is no breaker; the 9 further back is.
        assert_eq!(b.repeat_limit(&[1, 2, 3, 7, 4, 9, 5]), 5);
        // The newest token a breaker: nothing may repeat.
        assert_eq!(b.repeat_limit(&[9, 1, 2]), 0);
        assert_eq!(b.repeat_limit(&[1, 2, 3]), 3);
        // A head whose tail would lie past the newest token does not count.
        assert_eq!(b.repeat_limit(&[7, 1]), 2);
    }
}
