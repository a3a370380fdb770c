//! Splitting text at special tokens before the subword algorithm sees it (llama.cpp's
//! `tokenizer_st_partition`).
//!
//! Control, user-defined and unknown tokens are matched as whole strings. The tokens are tried one
//! after another, longest text first; each one splits every still-raw fragment at all of its
//! leftmost non-overlapping occurrences. This is *not* leftmost-longest matching: with tokens `ab` and
//! `bcd`, the text `abcd` becomes `a` + `bcd`. When special parsing is off, control and unknown tokens
//! are skipped but user-defined ones (Gemma's `\n`, whitespace runs, `\t`, HTML tags) still split.

use super::vocab::{TokenAttrs, Vocab};

/// A piece of the input: raw text (a byte range of the input, on char boundaries) or a matched token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text { start: usize, end: usize },
    Token(u32),
}

/// The special tokens in matching order, plus a byte trie over their texts that finds, in one pass,
/// which of them occur in a text at all: the rest cannot split anything, so they are not searched for.
#[derive(Clone)]
pub(crate) struct SpecialTokenMatcher {
    /// Token ids, longest text first; equal lengths by ascending id.
    ordered: Vec<u32>,
    trie: Vec<TrieNode>,
}

#[derive(Clone, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// Position in `ordered` of the token whose text ends here.
    rank: Option<u32>,
}

impl TrieNode {
    fn child(&self, byte: u8) -> Option<u32> {
        self.children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .and_then(|i| self.children.get(i))
            .map(|&(_, node)| node)
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for lstrip/rstrip.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl SpecialTokenMatcher {
    /// Collects the control, user-defined and unknown tokens of `vocab` as they are *now*: llama.cpp
    /// builds this cache after the end-of-generation fix-ups and before the per-model strip flags.
    pub(crate) fn new(vocab: &Vocab) -> SpecialTokenMatcher {
        let special = TokenAttrs::CONTROL | TokenAttrs::USER_DEFINED | TokenAttrs::UNKNOWN;
        let mut ordered: Vec<(usize, u32)> = vocab
            .iter()
            .filter(|(_, _, attrs)| attrs.intersects(special))
            .map(|(id, piece, _)| (piece.len(), id))
            .collect();
        // llama.cpp's sort is unstable; among equal lengths the order only matters for tokens that can
        // overlap each other, and ascending id is the deterministic choice.
        ordered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let ordered: Vec<u32> = ordered.into_iter().map(|(_, id)| id).collect();

        let mut trie = vec![TrieNode::default()];
        for (rank, &id) in ordered.iter().enumerate() {
            let Some(piece) = vocab.piece(id) else {
                continue;
            };
            let mut node = 0usize;
            for &byte in piece.as_bytes() {
                let existing = trie.get(node).and_then(|n| n.child(byte));
                node = match existing {
                    Some(next) => next as usize,
                    None => {
                        let next = trie.len();
                        trie.push(TrieNode::default());
                        if let Some(parent) = trie.get_mut(node) {
                            let at = parent.children.partition_point(|&(b, _)| b < byte);
                            parent.children.insert(at, (byte, next as u32));
                        }
                        next
                    }
                };
            }
            if let Some(end) = trie.get_mut(node) {
                // Texts are unique in practice; on a duplicate keep the first (earlier-tried) token.
                end.rank.get_or_insert(rank as u32);
            }
        }
        SpecialTokenMatcher { ordered, trie }
    }

    /// Number of special tokens (llama.cpp's "special tokens cache size").
    pub(crate) fn len(&self) -> usize {
        self.ordered.len()
    }

    /// The special token ids in matching order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ordered.iter().copied()
    }

    /// Marks, by rank, every special token that occurs somewhere in `text`.
    fn occurring(&self, text: &[u8]) -> Vec<bool> {
        let mut present = vec![false; self.ordered.len()];
        for start in 0..text.len() {
            let mut node = 0usize;
            for &byte in text.get(start..).unwrap_or_default() {
                let Some(next) = self.trie.get(node).and_then(|n| n.child(byte)) else {
                    break;
                };
                node = next as usize;
                if let Some(rank) = self.trie.get(node).and_then(|n| n.rank) {
                    if let Some(flag) = present.get_mut(rank as usize) {
                        *flag = true;
                    }
                }
            }
        }
        present
    }

    /// Splits `text` into raw-text fragments and special tokens, in order.
    pub(crate) fn partition(&self, text: &str, vocab: &Vocab, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text { start: 0, end: text.len() });
        let present = self.occurring(text.as_bytes());
        let skipped_unless_parsing = TokenAttrs::CONTROL | TokenAttrs::UNKNOWN;
        for (&id, _) in self.ordered.iter().zip(&present).filter(|(_, present)| **present) {
            let (Some(piece), Some(attrs)) = (vocab.piece(id), vocab.attrs(id)) else {
                continue;
            };
            if !parse_special && attrs.intersects(skipped_unless_parsing) {
                continue;
            }
            fragments = split_at_token(text, &fragments, id, piece, attrs);
        }
        fragments
    }
}

/// One pass of the partition: every raw fragment is cut at each leftmost non-overlapping occurrence of
/// `piece`, honouring the token's lstrip/rstrip flags.
fn split_at_token(text: &str, fragments: &[Fragment], id: u32, piece: &str, attrs: TokenAttrs) -> Vec<Fragment> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(fragments.len() + 2);
    for &fragment in fragments {
        let Fragment::Text { start, end } = fragment else {
            out.push(fragment);
            continue;
        };
        let mut base = start;
        loop {
            let found = text.get(base..end).and_then(|rest| rest.find(piece));
            let Some(relative) = found else {
                if base < end {
                    out.push(Fragment::Text { start: base, end });
                }
                break;
            };
            let at = base + relative;
            let mut left_end = at;
            if attrs.intersects(TokenAttrs::LSTRIP) {
                while left_end > base && bytes.get(left_end - 1).copied().is_some_and(is_c_space) {
                    left_end -= 1;
                }
            }
            if left_end > base {
                out.push(Fragment::Text { start: base, end: left_end });
            }
            out.push(Fragment::Token(id));
            let mut right = at + piece.len();
            if right >= end {
                break;
            }
            if attrs.intersects(TokenAttrs::RSTRIP) {
                while right < end && bytes.get(right).copied().is_some_and(is_c_space) {
                    right += 1;
                }
            }
            base = right;
        }
    }
    out
}
