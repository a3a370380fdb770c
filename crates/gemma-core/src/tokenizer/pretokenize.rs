//! Pre-tokenizers for byte-level BPE: cutting a raw-text fragment into words before any merging, as
//! llama.cpp's `unicode_regex_split` does for the regex list of each `tokenizer.ggml.pre`.
//!
//! The regexes need look-ahead (`\s+(?!\S)`), which the `regex` crate lacks, so each rule is a
//! hand-written scanner over code points, like llama.cpp's own fast paths. A rule list is applied in
//! order: every rule re-splits each word the previous rules produced, and never looks past a word's
//! ends (so `\s+(?!\S)` at the end of a word takes the whole whitespace run). Rules that only isolate
//! their matches (`\p{N}`, `[0-9]{3}`) keep the text between matches as one word.

use std::ops::Range;

use super::unicode_class::{is_whitespace, CharClass};

/// Which rule list a vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// llama.cpp's list for `default` (and for a missing `pre`): runs of punctuation and `$+<=>^~|`,
    /// then the GPT-2 rule, then runs of digits, then ASCII digit triples.
    Default,
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Every digit alone (`\p{N}`), then the GPT-2 rule: StarCoder, SmolLM and relatives.
    DigitsThenGpt2,
    /// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3,
    /// Qwen2: as Llama 3, but `\p{N}` (one digit per word) instead of `\p{N}{1,3}`.
    Qwen2,
}

/// A pre-tokenizer chosen from `tokenizer.ggml.pre`, with the per-model flags llama.cpp ties to it.
#[derive(Clone, Debug)]
pub struct PreTokenizer {
    kind: PreTokenizerKind,
    /// A word that is itself a vocabulary token is emitted whole, without merging (Llama 3).
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the metadata does not say.
    adds_bos: bool,
}

/// `pre` names per rule list, as llama.cpp maps them (`gpt2` is accepted as a spelling of `gpt-2`).
const GPT2_NAMES: &[&str] = &[
    "gpt-2",
    "gpt2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "exaone4",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
];
const DIGITS_THEN_GPT2_NAMES: &[&str] =
    &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"];
/// Llama 3 proper: also ignores merges for whole-token words and adds BOS by default.
const LLAMA3_NAMES: &[&str] =
    &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"];
/// The Llama 3 regex without Llama 3's other flags.
const LLAMA3_REGEX_ONLY_NAMES: &[&str] = &["dbrx", "smaug-bpe"];
const QWEN2_NAMES: &[&str] =
    &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open", "grok-2"];

impl PreTokenizer {
    pub fn new(kind: PreTokenizerKind) -> PreTokenizer {
        PreTokenizer { kind, ignore_merges: false, adds_bos: false }
    }

    /// The pre-tokenizer for a `tokenizer.ggml.pre` value, plus a warning when the value is missing
    /// (llama.cpp's `default` list is used, as llama.cpp does) or unknown (the GPT-2 rule is used;
    /// llama.cpp would refuse the file).
    pub fn from_name(pre: Option<&str>) -> (PreTokenizer, Option<String>) {
        let Some(pre) = pre else {
            let warning = "tokenizer.ggml.pre is missing: using llama.cpp's 'default' pre-tokenizer; \
                           tokens may differ from the model's own tokenizer"
                .to_owned();
            return (PreTokenizer::new(PreTokenizerKind::Default), Some(warning));
        };
        let kind = if pre == "default" {
            PreTokenizerKind::Default
        } else if GPT2_NAMES.contains(&pre) {
            PreTokenizerKind::Gpt2
        } else if DIGITS_THEN_GPT2_NAMES.contains(&pre) {
            PreTokenizerKind::DigitsThenGpt2
        } else if LLAMA3_NAMES.contains(&pre) {
            return (PreTokenizer { kind: PreTokenizerKind::Llama3, ignore_merges: true, adds_bos: true }, None);
        } else if LLAMA3_REGEX_ONLY_NAMES.contains(&pre) {
            PreTokenizerKind::Llama3
        } else if QWEN2_NAMES.contains(&pre) {
            PreTokenizerKind::Qwen2
        } else {
            let warning = format!(
                "unknown pre-tokenizer '{pre}' (tokenizer.ggml.pre): using the GPT-2 rule; \
                 tokens may differ from the model's own tokenizer"
            );
            return (PreTokenizer::new(PreTokenizerKind::Gpt2), Some(warning));
        };
        (PreTokenizer::new(kind), None)
    }

    pub fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    pub fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// Whether llama.cpp adds BOS for this pre-tokenizer when `tokenizer.ggml.add_bos_token` is absent.
    pub fn adds_bos_by_default(&self) -> bool {
        self.adds_bos
    }

    /// Cuts `text` into words, in order; concatenated they give `text` back.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let chars = CodePoints::new(text);
        if chars.len() == 0 {
            return Vec::new();
        }
        let all = 0..chars.len();
        let whole = std::slice::from_ref(&all);
        let is_number = |t: &CodePoints, pos: usize| t.class(pos) == Some(CharClass::Number);
        let gpt2 = |t: &CodePoints, end: usize, pos: usize| gpt2_word_end(t, end, pos);
        let words = match self.kind {
            PreTokenizerKind::Gpt2 => chars.resplit(whole, gpt2),
            PreTokenizerKind::DigitsThenGpt2 => chars.resplit(&chars.isolate(whole, is_number, false), gpt2),
            PreTokenizerKind::Llama3 => chars.resplit(whole, |t, end, pos| llama3_word_end(t, end, pos, 3)),
            PreTokenizerKind::Qwen2 => chars.resplit(whole, |t, end, pos| llama3_word_end(t, end, pos, 1)),
            PreTokenizerKind::Default => {
                let words = chars.isolate(whole, is_default_punctuation, true);
                let words = chars.resplit(&words, gpt2);
                let words = chars.isolate(&words, is_number, true);
                chars.isolate_ascii_digit_triples(&words)
            }
        };
        words.into_iter().filter_map(|range| chars.slice(text, range)).collect()
    }
}

/// `[\p{P}\$\+<=>\^~\|]` of the `default` list.
fn is_default_punctuation(t: &CodePoints, pos: usize) -> bool {
    t.class(pos) == Some(CharClass::Punctuation) || t.char(pos).is_some_and(|c| "$+<=>^~|".contains(c))
}

/// The text as code points with their classes, and the byte offset where each starts.
struct CodePoints {
    chars: Vec<char>,
    classes: Vec<CharClass>,
    spaces: Vec<bool>,
    /// `byte_starts[i]` is where code point `i` starts; one extra entry holds the text's length.
    byte_starts: Vec<usize>,
}

/// What the scanners ask about the code point at a position; all false outside the current word
/// (llama.cpp's empty flags), which is how the rules stop at word ends.
#[derive(Clone, Copy, Default)]
struct Flags {
    in_range: bool,
    letter: bool,
    number: bool,
    whitespace: bool,
}

impl Flags {
    /// `[^\s\p{L}\p{N}]`, inside the word.
    fn other(self) -> bool {
        self.in_range && !(self.whitespace || self.letter || self.number)
    }
}

impl CodePoints {
    fn new(text: &str) -> CodePoints {
        let mut chars = Vec::with_capacity(text.len());
        let mut byte_starts = Vec::with_capacity(text.len() + 1);
        for (at, c) in text.char_indices() {
            chars.push(c);
            byte_starts.push(at);
        }
        byte_starts.push(text.len());
        let classes = chars.iter().map(|&c| CharClass::of(c)).collect();
        let spaces = chars.iter().map(|&c| is_whitespace(c)).collect();
        CodePoints { chars, classes, spaces, byte_starts }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn char(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).copied()
    }

    fn class(&self, pos: usize) -> Option<CharClass> {
        self.classes.get(pos).copied()
    }

    /// The code point at `pos` if it lies before `end` (the current word's end).
    fn char_before(&self, end: usize, pos: usize) -> Option<char> {
        if pos < end {
            self.char(pos)
        } else {
            None
        }
    }

    fn flags(&self, end: usize, pos: usize) -> Flags {
        if pos >= end {
            return Flags::default();
        }
        match (self.classes.get(pos), self.spaces.get(pos)) {
            (Some(&class), Some(&whitespace)) => Flags {
                in_range: true,
                letter: class == CharClass::Letter,
                number: class == CharClass::Number,
                whitespace,
            },
            _ => Flags::default(),
        }
    }

    fn slice<'t>(&self, text: &'t str, range: Range<usize>) -> Option<&'t str> {
        text.get(*self.byte_starts.get(range.start)?..*self.byte_starts.get(range.end)?)
    }

    /// Re-splits every word with a scanner that, given the word's end and a start position, returns
    /// where the next piece ends (always past the start).
    fn resplit(
        &self,
        words: &[Range<usize>],
        piece_end: impl Fn(&CodePoints, usize, usize) -> usize,
    ) -> Vec<Range<usize>> {
        let mut out = Vec::with_capacity(words.len() * 2);
        for word in words {
            let mut pos = word.start;
            while pos < word.end {
                let end = piece_end(self, word.end, pos).clamp(pos + 1, word.end);
                out.push(pos..end);
                pos = end;
            }
        }
        out
    }

    /// Isolates the matches of a one-code-point class (`runs`: of `class+`) in every word; the text
    /// between matches stays one word.
    fn isolate(
        &self,
        words: &[Range<usize>],
        matches: impl Fn(&CodePoints, usize) -> bool,
        runs: bool,
    ) -> Vec<Range<usize>> {
        let mut out = Vec::with_capacity(words.len() * 2);
        for word in words {
            let mut gap_start = word.start;
            let mut pos = word.start;
            while pos < word.end {
                if !matches(self, pos) {
                    pos += 1;
                    continue;
                }
                let match_start = pos;
                pos += 1;
                while runs && pos < word.end && matches(self, pos) {
                    pos += 1;
                }
                if gap_start < match_start {
                    out.push(gap_start..match_start);
                }
                out.push(match_start..pos);
                gap_start = pos;
            }
            if gap_start < word.end {
                out.push(gap_start..word.end);
            }
        }
        out
    }

    /// `[0-9][0-9][0-9]`: leftmost non-overlapping triples of ASCII digits are isolated.
    fn isolate_ascii_digit_triples(&self, words: &[Range<usize>]) -> Vec<Range<usize>> {
        let mut out = Vec::with_capacity(words.len() * 2);
        let digit = |pos: usize| self.char(pos).is_some_and(|c| c.is_ascii_digit());
        for word in words {
            let mut gap_start = word.start;
            let mut pos = word.start;
            while pos < word.end {
                if pos + 3 <= word.end && digit(pos) && digit(pos + 1) && digit(pos + 2) {
                    if gap_start < pos {
                        out.push(gap_start..pos);
                    }
                    out.push(pos..pos + 3);
                    pos += 3;
                    gap_start = pos;
                } else {
                    pos += 1;
                }
            }
            if gap_start < word.end {
                out.push(gap_start..word.end);
            }
        }
        out
    }

    /// Length of the whitespace run at `pos`, and the end of its last `\r` or `\n` if it has one.
    fn whitespace_run(&self, end: usize, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_line_break_end = None;
        while self.flags(end, pos + n).whitespace {
            if matches!(self.char(pos + n), Some('\r' | '\n')) {
                last_line_break_end = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_line_break_end)
    }
}

/// The end of the contraction at `pos` (`'s 't 're 've 'm 'll 'd`), if there is one; `any_case` for
/// the `(?i:…)` variant.
fn contraction_end(t: &CodePoints, end: usize, pos: usize, any_case: bool) -> Option<usize> {
    if t.char_before(end, pos) != Some('\'') {
        return None;
    }
    let fold = |c: Option<char>| c.map(|c| if any_case { c.to_ascii_lowercase() } else { c });
    let next = fold(t.char_before(end, pos + 1))?;
    if matches!(next, 's' | 't' | 'm' | 'd') {
        return Some(pos + 2);
    }
    let pair = (next, fold(t.char_before(end, pos + 2))?);
    matches!(pair, ('r', 'e') | ('v', 'e') | ('l', 'l')).then_some(pos + 3)
}

/// One GPT-2 piece starting at `pos`.
fn gpt2_word_end(t: &CodePoints, end: usize, pos: usize) -> usize {
    if let Some(after) = contraction_end(t, end, pos, false) {
        return after;
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional leading space, then a run of one kind.
    let space_led = t.char_before(end, pos) == Some(' ');
    let first = if space_led { t.flags(end, pos + 1) } else { t.flags(end, pos) };
    let mut p = pos + usize::from(space_led);
    if first.letter {
        while t.flags(end, p).letter {
            p += 1;
        }
        return p;
    }
    if first.number {
        while t.flags(end, p).number {
            p += 1;
        }
        return p;
    }
    if first.other() {
        while t.flags(end, p).other() {
            p += 1;
        }
        return p;
    }
    let (n, _) = t.whitespace_run(end, pos);
    // `\s+(?!\S)`: before a non-space, the run leaves its last space to lead the next piece.
    if n > 1 && pos + n < end {
        return pos + n - 1;
    }
    // `\s+` (a single space before a non-space, or a run that reaches the end of the word).
    pos + n.max(1)
}

/// One Llama 3 / Qwen2 piece starting at `pos`; `max_digits` is 3 (`\p{N}{1,3}`) or 1 (`\p{N}`).
fn llama3_word_end(t: &CodePoints, end: usize, pos: usize, max_digits: usize) -> usize {
    if let Some(after) = contraction_end(t, end, pos, true) {
        return after;
    }
    let c = t.char_before(end, pos);
    let here = t.flags(end, pos);
    // `[^\r\n\p{L}\p{N}]?\p{L}+`: any one non-letter, non-digit, non-line-break may lead a letter run.
    if !(matches!(c, Some('\r' | '\n')) || here.number) && (here.letter || t.flags(end, pos + 1).letter) {
        let mut p = pos + 1;
        while t.flags(end, p).letter {
            p += 1;
        }
        return p;
    }
    if here.number {
        let mut p = pos;
        while p - pos < max_digits && t.flags(end, p).number {
            p += 1;
        }
        return p;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let space_led = c == Some(' ');
    let first = if space_led { t.flags(end, pos + 1) } else { here };
    if here.in_range && !(first.whitespace || first.letter || first.number) {
        let mut p = pos + usize::from(space_led);
        while t.flags(end, p).other() {
            p += 1;
        }
        while matches!(t.char_before(end, p), Some('\r' | '\n')) {
            p += 1;
        }
        return p;
    }
    let (n, last_line_break_end) = t.whitespace_run(end, pos);
    // `\s*[\r\n]+`: whitespace up to and including the last line break of the run.
    if let Some(after) = last_line_break_end {
        return after;
    }
    if n > 1 && pos + n < end {
        return pos + n - 1;
    }
    pos + n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(kind: PreTokenizerKind, text: &str) -> Vec<&str> {
        PreTokenizer::new(kind).split(text)
    }

    #[test]
    fn gpt2_rule_keeps_one_leading_space_per_word() {
        assert_eq!(
            split(PreTokenizerKind::Gpt2, "Hello  world's 12 ab!!  \n"),
            vec!["Hello", " ", " world", "'s", " 12", " ab", "!!", "  \n"]
        );
        // Contractions are case-sensitive for GPT-2, case-insensitive for Llama 3.
        assert_eq!(split(PreTokenizerKind::Gpt2, "IT'S"), vec!["IT", "'", "S"]);
        assert_eq!(split(PreTokenizerKind::Llama3, "IT'S"), vec!["IT", "'S"]);
    }

    #[test]
    fn digits_then_gpt2_isolates_every_digit_first() {
        // The digit split comes first, so the space before "1" ends its word and stays alone.
        assert_eq!(split(PreTokenizerKind::DigitsThenGpt2, "a 123  b"), vec!["a", " ", "1", "2", "3", " ", " b"]);
        assert_eq!(split(PreTokenizerKind::DigitsThenGpt2, "x  9"), vec!["x", "  ", "9"]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_keeps_line_breaks_with_whitespace() {
        assert_eq!(split(PreTokenizerKind::Llama3, "12345 x"), vec!["123", "45", " x"]);
        assert_eq!(split(PreTokenizerKind::Qwen2, "123"), vec!["1", "2", "3"]);
        assert_eq!(split(PreTokenizerKind::Llama3, "a \n\n  b"), vec!["a", " \n\n", " ", " b"]);
        assert_eq!(split(PreTokenizerKind::Llama3, "x...\n\ny"), vec!["x", "...\n\n", "y"]);
        assert_eq!(split(PreTokenizerKind::Llama3, "\tword"), vec!["\tword"]);
    }

    #[test]
    fn default_rule_isolates_punctuation_digits_and_triples() {
        assert_eq!(split(PreTokenizerKind::Default, "ab+c 12345"), vec!["ab", "+", "c", " ", "123", "45"]);
    }

    #[test]
    fn words_concatenate_to_the_text() {
        let text = "  Mixed\tCASE's 1,000,000 ½ 中文 🤖\r\n\r\n  end  ";
        for kind in [
            PreTokenizerKind::Default,
            PreTokenizerKind::Gpt2,
            PreTokenizerKind::DigitsThenGpt2,
            PreTokenizerKind::Llama3,
            PreTokenizerKind::Qwen2,
        ] {
            let words = split(kind, text);
            assert!(words.iter().all(|w| !w.is_empty()), "{kind:?}: {words:?}");
            assert_eq!(words.concat(), text, "{kind:?}");
        }
    }

    #[test]
    fn unknown_or_missing_names_warn() {
        let (pre, warning) = PreTokenizer::from_name(Some("smollm"));
        assert_eq!(pre.kind(), PreTokenizerKind::DigitsThenGpt2);
        assert!(warning.is_none());
        let (pre, warning) = PreTokenizer::from_name(Some("llama-bpe"));
        assert!(pre.kind() == PreTokenizerKind::Llama3 && pre.ignore_merges() && pre.adds_bos_by_default());
        assert!(warning.is_none());
        let (pre, warning) = PreTokenizer::from_name(Some("no-such-model"));
        assert_eq!(pre.kind(), PreTokenizerKind::Gpt2);
        assert!(warning.is_some_and(|w| w.contains("no-such-model")));
        let (pre, warning) = PreTokenizer::from_name(None);
        assert_eq!(pre.kind(), PreTokenizerKind::Default);
        assert!(warning.is_some());
    }
}
