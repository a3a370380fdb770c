//! Byte-level BPE (GPT-2 style), as llama.cpp's `llm_tokenizer_bpe_session` does it.
//!
//! Each raw-text fragment is cut into words by the [`PreTokenizer`]. Every byte of a word is then
//! written as one printable character (GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for
//! themselves, the rest map to U+0100.. in order), which is the alphabet the vocabulary and the merges
//! are written in. The word starts as one symbol per such character; the adjacent pair with the lowest
//! merge rank is joined first (the leftmost on equal ranks), and the new symbol's pairs with its
//! neighbours become candidates, until no pair has a rank. A symbol that is not a vocabulary token is
//! spelled with single-character tokens, as llama.cpp does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenize::PreTokenizer;
use super::vocab::Vocab;

/// GPT-2's byte → character map and its inverse.
#[derive(Clone, Debug)]
pub(crate) struct ByteAlphabet {
    byte_to_char: [char; 256],
    /// Indexed by code point; every character of the alphabet is below U+0144.
    char_to_byte: [Option<u8>; 0x144],
}

impl ByteAlphabet {
    pub(crate) fn new() -> ByteAlphabet {
        let mut byte_to_char = ['\0'; 256];
        let mut char_to_byte = [None; 0x144];
        let mut next_unprintable = 0x100u32;
        for byte in 0..=255u8 {
            let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if printable {
                u32::from(byte)
            } else {
                next_unprintable += 1;
                next_unprintable - 1
            };
            let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
            byte_to_char[byte as usize] = c;
            if let Some(slot) = char_to_byte.get_mut(code as usize) {
                *slot = Some(byte);
            }
        }
        ByteAlphabet { byte_to_char, char_to_byte }
    }

    pub(crate) fn char_of(&self, byte: u8) -> char {
        self.byte_to_char[byte as usize]
    }

    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        self.char_to_byte.get(c as usize).copied().flatten()
    }

    /// A vocabulary text → the bytes it stands for. A character outside the alphabet becomes
    /// `[UNK_BYTE_0x…<text>]`, llama.cpp's rendering.
    pub(crate) fn decode(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.byte_of(c) {
                Some(byte) => out.push(byte),
                None => {
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    for byte in c.encode_utf8(&mut [0u8; 4]).bytes() {
                        out.extend_from_slice(format!("{byte:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
    }
}

/// Merge ranks from `tokenizer.ggml.merges`. The halves of every merge are interned, so looking up a
/// pair costs two string lookups and one integer-pair lookup, with no allocation.
#[derive(Clone, Debug, Default)]
struct MergeRanks {
    parts: HashMap<String, u32>,
    ranks: HashMap<(u32, u32), u32>,
}

impl MergeRanks {
    fn new(merges: &[String]) -> MergeRanks {
        let mut table = MergeRanks::default();
        for (rank, merge) in merges.iter().enumerate() {
            // The halves are split at the first space after the first byte, as llama.cpp does; an entry
            // without one would only pair two empty texts, which no symbol ever is.
            let Some(space) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (Some(left), Some(right)) = (merge.get(..space), merge.get(space + 1..)) else {
                continue;
            };
            let left = table.intern(left);
            let right = table.intern(right);
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            // A repeated merge keeps its first (lowest) rank.
            table.ranks.entry((left, right)).or_insert(rank);
        }
        table
    }

    fn intern(&mut self, part: &str) -> u32 {
        let next = self.parts.len() as u32;
        *self.parts.entry(part.to_owned()).or_insert(next)
    }

    fn rank(&self, left: &str, right: &str) -> Option<u32> {
        let left = *self.parts.get(left)?;
        let right = *self.parts.get(right)?;
        self.ranks.get(&(left, right)).copied()
    }

    fn len(&self) -> usize {
        self.ranks.len()
    }
}

/// The byte-level BPE model: pre-tokenizer, merge ranks and byte alphabet.
#[derive(Clone, Debug)]
pub struct BpeModel {
    pre: PreTokenizer,
    merges: MergeRanks,
    alphabet: ByteAlphabet,
}

/// A span of the encoded word in the doubly-linked list of live symbols. `len == 0`: merged away.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    len: usize,
}

/// A merge candidate, ordered by rank then by the left symbol's position (the heap pops the
/// smallest); `size` is the joined byte length, which tells a stale candidate from a live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
}

impl BpeModel {
    pub(crate) fn new(merges: &[String], pre: PreTokenizer) -> BpeModel {
        BpeModel { pre, merges: MergeRanks::new(merges), alphabet: ByteAlphabet::new() }
    }

    pub fn pre_tokenizer(&self) -> &PreTokenizer {
        &self.pre
    }

    /// Number of distinct merges.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    pub(crate) fn alphabet(&self) -> &ByteAlphabet {
        &self.alphabet
    }

    /// Appends the tokens of one raw-text fragment.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut encoded = String::new();
        for word in self.pre.split(text) {
            encoded.clear();
            encoded.extend(word.bytes().map(|b| self.alphabet.char_of(b)));
            self.encode_word(vocab, &encoded, out);
        }
    }

    /// Appends the tokens of one pre-tokenized word, already in the byte alphabet.
    fn encode_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.pre.ignore_merges() {
            if let Some(id) = vocab.id_of(word) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<Symbol> =
            word.char_indices().map(|(start, c)| Symbol { prev: None, next: None, start, len: c.len_utf8() }).collect();
        let n = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = if i + 1 < n { Some(i + 1) } else { None };
        }
        let mut queue = BinaryHeap::new();
        for i in 1..n {
            self.push_candidate(word, &symbols, i - 1, i, &mut queue);
        }
        while let Some(Reverse(candidate)) = queue.pop() {
            let (Some(&left), Some(&right)) = (symbols.get(candidate.left), symbols.get(candidate.right)) else {
                continue;
            };
            // Stale: a side was merged away or grew since this candidate was queued (symbols only grow,
            // so equal total length means both sides are as they were).
            if left.len == 0 || right.len == 0 || left.len + right.len != candidate.size {
                continue;
            }
            if let Some(l) = symbols.get_mut(candidate.left) {
                l.len += right.len;
                l.next = right.next;
            }
            if let Some(r) = symbols.get_mut(candidate.right) {
                r.len = 0;
            }
            if let Some(after) = right.next {
                if let Some(a) = symbols.get_mut(after) {
                    a.prev = Some(candidate.left);
                }
                self.push_candidate(word, &symbols, candidate.left, after, &mut queue);
            }
            if let Some(before) = left.prev {
                self.push_candidate(word, &symbols, before, candidate.left, &mut queue);
            }
        }

        let mut cursor = Some(0);
        while let Some(i) = cursor {
            let Some(&symbol) = symbols.get(i) else {
                break;
            };
            let text = word.get(symbol.start..symbol.start + symbol.len).unwrap_or_default();
            match vocab.id_of(text) {
                Some(id) => out.push(id),
                // llama.cpp looks each byte of the text up as a one-byte token: only ASCII bytes can be
                // one (texts are UTF-8), the others are dropped.
                None => out.extend(
                    text.bytes()
                        .filter(u8::is_ascii)
                        .filter_map(|b| vocab.id_of(char::from(b).encode_utf8(&mut [0; 4]))),
                ),
            }
            cursor = symbol.next;
        }
    }

    fn push_candidate(
        &self,
        word: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Reverse<Candidate>>,
    ) {
        let (Some(l), Some(r)) = (symbols.get(left), symbols.get(right)) else {
            return;
        };
        let (Some(left_text), Some(right_text)) =
            (word.get(l.start..l.start + l.len), word.get(r.start..r.start + r.len))
        else {
            return;
        };
        if let Some(rank) = self.merges.rank(left_text, right_text) {
            queue.push(Reverse(Candidate { rank, left, right, size: l.len + r.len }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s_and_round_trips() {
        let alphabet = ByteAlphabet::new();
        assert_eq!(alphabet.char_of(b'A'), 'A');
        assert_eq!(alphabet.char_of(b' '), '\u{120}'); // 'Ġ'
        assert_eq!(alphabet.char_of(b'\n'), '\u{10A}'); // 'Ċ'
        assert_eq!(alphabet.char_of(0), '\u{100}');
        assert_eq!(alphabet.char_of(0xAD), '\u{143}');
        for byte in 0..=255u8 {
            assert_eq!(alphabet.byte_of(alphabet.char_of(byte)), Some(byte));
        }
        let mut out = Vec::new();
        alphabet.decode("Ġhi\u{10A}", &mut out);
        assert_eq!(out, b" hi\n");
        out.clear();
        alphabet.decode("a€", &mut out);
        assert_eq!(out, b"a[UNK_BYTE_0xe282aca\xe2\x82\xac]");
    }

    #[test]
    fn merges_split_at_the_first_space_after_the_first_byte_and_keep_the_first_rank() {
        let merges: Vec<String> = ["a b", "ab c", "a b", "nospace", "Ġ Ġ"].map(String::from).to_vec();
        let ranks = MergeRanks::new(&merges);
        assert_eq!(ranks.rank("a", "b"), Some(0));
        assert_eq!(ranks.rank("ab", "c"), Some(1));
        assert_eq!(ranks.rank("Ġ", "Ġ"), Some(4));
        assert_eq!(ranks.rank("b", "a"), None);
        assert_eq!(ranks.len(), 3);
    }
}
