//! SentencePiece-style subword merging, as llama.cpp's `llm_tokenizer_spm` does it.
//!
//! The text (spaces already escaped to U+2581) starts as one symbol per UTF-8 character. Every adjacent
//! pair whose concatenation is a vocabulary token is a candidate; the candidate with the highest token
//! score is merged first (on equal scores the leftmost), and the new symbol's pairs with its neighbours
//! become candidates. A max-heap of candidates keeps this O(n log n): stale candidates (one side already
//! merged elsewhere) are recognised by their recorded byte length and dropped when popped.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::vocab::Vocab;

/// The SentencePiece merge model. Everything it needs besides the vocabulary is the byte fallback.
#[derive(Clone, Debug)]
pub struct SpmModel {
    /// The token for each byte value: `<0xHH>`, else the one-character token for that byte.
    byte_tokens: [Option<u32>; 256],
    /// Used for a byte that has no token at all (llama.cpp aborts there; we degrade instead).
    unknown: Option<u32>,
}

/// A span of the escaped text in the doubly-linked list of live symbols. `len == 0` means merged away.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    len: usize,
}

/// A merge candidate: symbols `left` and `right` (adjacent), whose joined text is a token with `score`
/// and `size` bytes.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl Ord for Candidate {
    /// Higher score first, then the leftmost pair. Scores are compared with `<` as llama.cpp does, so a
    /// NaN score ties with everything instead of poisoning the order.
    fn cmp(&self, other: &Candidate) -> Ordering {
        if self.score < other.score {
            Ordering::Less
        } else if other.score < self.score {
            Ordering::Greater
        } else {
            other.left.cmp(&self.left)
        }
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Candidate) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Candidate) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// Working state of one encode call.
struct Merger<'a> {
    vocab: &'a Vocab,
    text: &'a str,
    symbols: Vec<Symbol>,
    candidates: BinaryHeap<Candidate>,
    /// Joined text → the (left start, left len, right len) it was formed from, for re-segmenting a
    /// symbol that is not itself a token. The last candidate registered for a text wins.
    merged_from: HashMap<&'a str, (usize, usize, usize)>,
}

impl SpmModel {
    pub(crate) fn new(vocab: &Vocab, unknown: Option<u32>) -> SpmModel {
        let mut byte_tokens = [None; 256];
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{byte:02X}>");
            *slot = vocab.id_of(&hex).or_else(|| {
                // Only an ASCII byte can be a one-character token text (texts are valid UTF-8).
                let c = u8::try_from(byte).ok().filter(u8::is_ascii).map(char::from)?;
                vocab.id_of(c.encode_utf8(&mut [0u8; 4]))
            });
        }
        SpmModel { byte_tokens, unknown }
    }

    /// The fallback token for one byte.
    pub(crate) fn byte_token(&self, byte: u8) -> Option<u32> {
        self.byte_tokens.get(byte as usize).copied().flatten()
    }

    /// Appends the tokens of `escaped` (a raw-text fragment with spaces already turned into U+2581).
    pub(crate) fn encode(&self, vocab: &Vocab, escaped: &str, out: &mut Vec<u32>) {
        if escaped.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = escaped
            .char_indices()
            .map(|(start, c)| Symbol { prev: None, next: None, start, len: c.len_utf8() })
            .collect();
        let n = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = if i + 1 < n { Some(i + 1) } else { None };
        }
        let mut merger =
            Merger { vocab, text: escaped, symbols, candidates: BinaryHeap::new(), merged_from: HashMap::new() };
        for i in 1..n {
            merger.add_candidate(i - 1, i);
        }
        merger.merge_all();

        let mut cursor = if n > 0 { Some(0) } else { None };
        while let Some(i) = cursor {
            let Some(&symbol) = merger.symbols.get(i) else {
                break;
            };
            self.resegment(&merger, symbol.start, symbol.len, out);
            cursor = symbol.next;
        }
    }

    /// Emits the token for the span, or the tokens of the pair it was merged from, or its bytes.
    fn resegment(&self, merger: &Merger<'_>, start: usize, len: usize, out: &mut Vec<u32>) {
        // An explicit stack instead of recursion; right halves are pushed first so left comes out first.
        let mut pending = vec![(start, len)];
        while let Some((start, len)) = pending.pop() {
            let Some(text) = merger.text.get(start..start + len) else {
                continue;
            };
            if let Some(id) = merger.vocab.id_of(text) {
                out.push(id);
                continue;
            }
            // llama.cpp looks the halves up by symbol index, which after later merges can point at a
            // grown symbol; recording the spans themselves keeps the recursion well-founded. For valid
            // UTF-8 input this branch is never taken: every merged symbol is a token by construction.
            if let Some(&(left_start, left_len, right_len)) = merger.merged_from.get(text) {
                if left_len + right_len == len && left_len > 0 && right_len > 0 {
                    pending.push((left_start + left_len, right_len));
                    pending.push((left_start, left_len));
                    continue;
                }
            }
            for &byte in text.as_bytes() {
                if let Some(id) = self.byte_token(byte).or(self.unknown) {
                    out.push(id);
                }
            }
        }
    }
}

impl<'a> Merger<'a> {
    fn add_candidate(&mut self, left: usize, right: usize) {
        let (Some(l), Some(r)) = (self.symbols.get(left), self.symbols.get(right)) else {
            return;
        };
        let size = l.len + r.len;
        let Some(joined) = self.text.get(l.start..l.start + size) else {
            return;
        };
        let Some(id) = self.vocab.id_of(joined) else {
            return;
        };
        let Some(score) = self.vocab.score(id) else {
            return;
        };
        self.candidates.push(Candidate { left, right, score, size });
        self.merged_from.insert(joined, (l.start, l.len, r.len));
    }

    fn merge_all(&mut self) {
        while let Some(candidate) = self.candidates.pop() {
            let (Some(&left), Some(&right)) = (self.symbols.get(candidate.left), self.symbols.get(candidate.right))
            else {
                continue;
            };
            // Stale: one side was merged away, or grew, since this candidate was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != candidate.size {
                continue;
            }
            if let Some(l) = self.symbols.get_mut(candidate.left) {
                l.len += right.len;
                l.next = right.next;
            }
            if let Some(r) = self.symbols.get_mut(candidate.right) {
                r.len = 0;
            }
            if let Some(after) = right.next {
                if let Some(a) = self.symbols.get_mut(after) {
                    a.prev = Some(candidate.left);
                }
            }
            if let Some(before) = left.prev {
                self.add_candidate(before, candidate.left);
            }
            if let Some(after) = right.next {
                self.add_candidate(candidate.left, after);
            }
        }
    }
}
