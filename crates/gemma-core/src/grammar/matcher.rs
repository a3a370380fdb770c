//! Matching tokens against a grammar: a set of pushdown stacks, one per way the text so far can be parsed,
//! each stopped at the terminal it waits for (llama.cpp's algorithm, so both engines allow the same tokens).
//! Text is matched by code point; a token that ends inside a UTF-8 character is allowed when some
//! continuation of it could match.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::gbnf::{Element, Grammar};
use crate::tokenizer::Tokenizer;

/// A stack of element indices; the top (last) is the terminal the parse waits for. Empty: the grammar is
/// complete along this parse.
type Stack = Vec<u32>;

/// Expansion steps allowed in one [`advance`]: a grammar whose ambiguity explodes stops there.
const MAX_EXPANSIONS: usize = 100_000;
/// Stack elements looked at in one [`advance`], for the same reason.
const MAX_EXPANSION_WORK: usize = 10_000_000;

/// Where a UTF-8 character cut by a token boundary stands: its bits so far and the bytes still to come
/// (`-1`: the bytes are not UTF-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PartialUtf8 {
    value: u32,
    remaining: i8,
}

impl PartialUtf8 {
    /// Feeds one byte; returns a completed code point.
    fn push(&mut self, b: u8) -> Option<u32> {
        if self.remaining < 0 {
            return None;
        }
        if self.remaining > 0 {
            if b >> 6 != 2 {
                self.remaining = -1;
                return None;
            }
            self.value = (self.value << 6) | u32::from(b & 0x3F);
            self.remaining -= 1;
            return (self.remaining == 0).then_some(self.value);
        }
        let (len, mask) = match b >> 4 {
            0..=7 => (1, 0x7F),
            12 | 13 => (2, 0x1F),
            14 => (3, 0x0F),
            15 => (4, 0x07),
            _ => {
                self.remaining = -1;
                return None;
            }
        };
        self.value = u32::from(b) & mask;
        self.remaining = len - 1;
        (len == 1).then_some(self.value)
    }

    /// The code points this cut character could still become (`None`: none, or an overlong form).
    fn possible_range(self) -> Option<(u32, u32)> {
        let n = self.remaining;
        if n < 0 || (n == 1 && self.value < 2) {
            return None;
        }
        let mut lo = self.value << (6 * n as u32);
        let hi = lo | ((1u32 << (6 * n as u32)) - 1);
        if lo == 0 {
            lo = match n {
                2 => 1 << 11,
                3 => 1 << 16,
                _ => lo,
            };
        }
        Some((lo, hi))
    }
}

/// Stacks collected by [`advance`] for one position of the text, each once, in the order found. An
/// ambiguous grammar can keep thousands of stacks that share their expansions: the stacks already expanded
/// at this position are remembered across the [`advance`] calls, so each is expanded once, and past a few
/// the collected stacks are looked up in a hash set. (Checking each new stack against the list, and
/// expanding the same stacks again for every stack, made a fuzzed 150-byte grammar run for minutes.)
#[derive(Default)]
struct StackList {
    stacks: Vec<Stack>,
    index: HashSet<Stack>,
    expanded: Expanded,
}

impl StackList {
    fn push(&mut self, stack: Stack) {
        if self.index.is_empty() && self.stacks.len() < 16 {
            if !self.stacks.contains(&stack) {
                self.stacks.push(stack);
            }
            return;
        }
        if self.index.is_empty() {
            self.index.extend(self.stacks.iter().cloned());
        }
        if self.index.insert(stack.clone()) {
            self.stacks.push(stack);
        }
    }
}

/// Pushes onto `out` every stack that `stack` expands to, each with a terminal on top (or empty).
fn advance(g: &Grammar, stack: Stack, out: &mut StackList) {
    let mut todo = vec![stack];
    let (mut steps, mut work) = (0, 0);
    while let Some(stack) = todo.pop() {
        steps += 1;
        // Stacks that grow on every expansion (a rule reached again through a rule that only matches nothing
        // through other rules, which llama.cpp lets through and then runs out of memory on) cost their length.
        work += stack.len();
        if steps > MAX_EXPANSIONS || work > MAX_EXPANSION_WORK {
            continue;
        }
        match stack.last().map(|&i| g.elements[i as usize]) {
            Some(Element::Rule(_)) if out.expanded.contains(&stack) => {}
            Some(Element::Rule(rule)) => {
                let at = stack[stack.len() - 1];
                for start in g.alternatives(rule) {
                    let mut next = stack[..stack.len() - 1].to_vec();
                    if !g.elements[at as usize + 1].ends_alternative() {
                        next.push(at + 1);
                    }
                    if !g.elements[start as usize].ends_alternative() {
                        next.push(start);
                    }
                    todo.push(next);
                }
                out.expanded.insert(stack);
            }
            // A terminal on top, or empty (complete): a stack to keep.
            _ => out.push(stack),
        }
    }
}

/// The stacks one [`advance`] has expanded: a short list (the usual case, cheap to build), then a hash set.
#[derive(Default)]
struct Expanded {
    few: Vec<Stack>,
    many: HashSet<Stack>,
}

impl Expanded {
    fn contains(&self, stack: &Stack) -> bool {
        self.few.contains(stack) || (!self.many.is_empty() && self.many.contains(stack))
    }

    fn insert(&mut self, stack: Stack) {
        if self.few.len() < 16 {
            self.few.push(stack);
        } else {
            self.many.insert(stack);
        }
    }
}

/// `stack` once its top terminal has matched: the top gives way to the element after it, if any.
fn past_top(g: &Grammar, stack: &[u32], top: u32) -> Stack {
    let mut next = stack[..stack.len() - 1].to_vec();
    if !g.elements[top as usize + 1].ends_alternative() {
        next.push(top + 1);
    }
    next
}

/// The stacks that follow `stacks` after code point `c`.
fn accept_char(g: &Grammar, stacks: &[Stack], c: u32) -> Vec<Stack> {
    let mut out = StackList::default();
    for stack in stacks {
        let Some(&top) = stack.last() else { continue };
        let Element::Char(class) = g.elements[top as usize] else { continue };
        if g.classes[class as usize].matches(c) {
            advance(g, past_top(g, stack, top), &mut out);
        }
    }
    out.stacks
}

/// True when a stack of `stacks` could go on with the cut character `partial`.
fn partial_fits(g: &Grammar, stacks: &[Stack], partial: PartialUtf8) -> bool {
    let Some((lo, hi)) = partial.possible_range() else { return false };
    stacks.iter().any(|s| match s.last().map(|&i| g.elements[i as usize]) {
        Some(Element::Char(class)) => g.classes[class as usize].matches_some_in(lo, hi),
        _ => false,
    })
}

/// Every token's text as the grammar sees it (special tokens as their text), with the end-of-generation
/// tokens and the tokens in byte order, for checking the whole vocabulary at once.
#[derive(Debug)]
pub struct GrammarVocab {
    pieces: Vec<Box<[u8]>>,
    end_of_generation: Vec<bool>,
    /// Token ids sorted by their bytes, and the bytes each shares with the one before it.
    sorted: Vec<u32>,
    shared_prefix: Vec<u16>,
}

impl GrammarVocab {
    pub fn new(tokenizer: &Tokenizer) -> GrammarVocab {
        let n = tokenizer.vocab_size() as u32;
        GrammarVocab::from_pieces(
            (0..n).map(|id| tokenizer.token_piece_bytes(id, true).unwrap_or(&[]).to_vec()).collect(),
            (0..n).map(|id| tokenizer.is_end_of_generation(id)).collect(),
        )
    }

    /// A vocabulary of these token texts; `end_of_generation[id]` marks the tokens that end generation.
    pub fn from_pieces(pieces: Vec<Vec<u8>>, end_of_generation: Vec<bool>) -> GrammarVocab {
        let n = pieces.len();
        let pieces: Vec<Box<[u8]>> = pieces.into_iter().map(Vec::into_boxed_slice).collect();
        let mut end_of_generation = end_of_generation;
        end_of_generation.resize(n, false);
        let mut sorted: Vec<u32> = (0..n as u32).collect();
        sorted.sort_by(|&a, &b| pieces[a as usize].cmp(&pieces[b as usize]));
        let mut shared_prefix = vec![0u16; n];
        for i in 1..n {
            let (a, b) = (&pieces[sorted[i - 1] as usize], &pieces[sorted[i] as usize]);
            let common = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
            shared_prefix[i] = common.min(usize::from(u16::MAX)) as u16;
        }
        GrammarVocab { pieces, end_of_generation, sorted, shared_prefix }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p)
    }

    fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.get(id as usize).copied().unwrap_or(false)
    }

    /// The first end-of-generation token, if any.
    pub fn first_end_of_generation(&self) -> Option<u32> {
        self.end_of_generation.iter().position(|&e| e).map(|i| i as u32)
    }
}

/// Where generation stands in a grammar: feed it each generated token with [`GrammarMatcher::accept`].
#[derive(Clone, Debug)]
pub struct GrammarMatcher {
    grammar: Arc<Grammar>,
    vocab: Arc<GrammarVocab>,
    stacks: Vec<Stack>,
    partial: PartialUtf8,
}

impl GrammarMatcher {
    pub fn new(grammar: Arc<Grammar>, vocab: Arc<GrammarVocab>) -> GrammarMatcher {
        let mut m = GrammarMatcher { grammar, vocab, stacks: Vec::new(), partial: PartialUtf8::default() };
        m.reset();
        m
    }

    pub fn vocab(&self) -> &GrammarVocab {
        &self.vocab
    }

    /// Back to the start of the grammar.
    pub fn reset(&mut self) {
        let g = &self.grammar;
        let mut stacks = StackList::default();
        for start in g.alternatives(g.root) {
            let stack = if g.elements[start as usize].ends_alternative() { Vec::new() } else { vec![start] };
            advance(g, stack, &mut stacks);
        }
        self.stacks = stacks.stacks;
        self.partial = PartialUtf8::default();
    }

    /// True when the text so far is a whole sentence of the grammar (an end-of-generation token may come).
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(Vec::is_empty)
    }

    /// The stacks after the bytes of `piece`, from `stacks` and `partial`; None when no parse survives.
    fn walk(
        &self,
        mut stacks: Vec<Stack>,
        mut partial: PartialUtf8,
        piece: &[u8],
    ) -> Option<(Vec<Stack>, PartialUtf8)> {
        for &b in piece {
            if let Some(c) = partial.push(b) {
                stacks = accept_char(&self.grammar, &stacks, c);
            }
            if stacks.is_empty() || partial.remaining < 0 {
                return None;
            }
        }
        Some((stacks, partial))
    }

    /// Whole-token elements on top of a stack that take `id`: the stacks after it.
    fn token_stacks(&self, id: u32) -> Vec<Stack> {
        self.token_stack_list(id).stacks
    }

    fn token_stack_list(&self, id: u32) -> StackList {
        let g = &self.grammar;
        let mut out = StackList::default();
        for stack in &self.stacks {
            let Some(&top) = stack.last() else { continue };
            if let Element::Token { id: want, negated } = g.elements[top as usize] {
                if (want == id) != negated {
                    advance(g, past_top(g, stack, top), &mut out);
                }
            }
        }
        out
    }

    fn ends_well(&self, stacks: &[Stack], partial: PartialUtf8) -> bool {
        partial.remaining == 0 || partial_fits(&self.grammar, stacks, partial)
    }

    /// True when token `id` may come next.
    pub fn allows(&self, id: u32) -> bool {
        if self.vocab.is_end_of_generation(id) {
            return self.is_complete();
        }
        let piece = self.vocab.piece(id);
        if piece.first().is_none_or(|&b| b == 0) {
            return false;
        }
        if !self.token_stacks(id).is_empty() {
            return true;
        }
        let start: Vec<Stack> = self.char_stacks();
        match self.walk(start, self.partial, piece) {
            Some((stacks, partial)) => self.ends_well(&stacks, partial),
            None => false,
        }
    }

    /// The stacks waiting for a character (a whole-token element takes no characters).
    fn char_stacks(&self) -> Vec<Stack> {
        let g = &self.grammar;
        self.stacks
            .iter()
            .filter(|s| s.last().is_some_and(|&i| matches!(g.elements[i as usize], Element::Char(_))))
            .cloned()
            .collect()
    }

    /// Moves past the text `bytes` (not a token: e.g. text forced into the output). Returns false, changing
    /// nothing, when the grammar does not allow it.
    pub fn accept_text(&mut self, bytes: &[u8]) -> bool {
        match self.walk(self.char_stacks(), self.partial, bytes) {
            Some((stacks, partial)) if self.ends_well(&stacks, partial) => {
                self.stacks = stacks;
                self.partial = partial;
                true
            }
            _ => false,
        }
    }

    /// Moves past token `id`. Returns false (and changes nothing) when the grammar does not allow it.
    pub fn accept(&mut self, id: u32) -> bool {
        if !self.allows(id) {
            return false;
        }
        if self.vocab.is_end_of_generation(id) {
            self.stacks.retain(Vec::is_empty);
            return true;
        }
        let mut stacks = self.token_stack_list(id);
        if let Some((walked, partial)) = self.walk(self.char_stacks(), self.partial, self.vocab.piece(id)) {
            if self.ends_well(&walked, partial) {
                for s in walked {
                    stacks.push(s);
                }
                self.partial = partial;
            }
        }
        self.stacks = stacks.stacks;
        true
    }

    /// Marks in `allowed` (one entry per token id) every token that may come next. Walks the tokens in byte
    /// order, reusing the parse of the bytes each shares with the one before, so a shared prefix is matched
    /// once and a dead prefix rules out every token that starts with it.
    pub fn allowed_tokens(&self, allowed: &mut Vec<bool>) {
        let vocab = &self.vocab;
        allowed.clear();
        allowed.resize(vocab.len(), false);
        let complete = self.is_complete();
        // The stack sets met on the way, each once, and the moves between them by one code point: inside a
        // string most characters lead back to the same set, so most steps are a lookup.
        let mut sets = StackSets::default();
        let start = sets.intern(self.char_stacks());
        // states[d]: the parse after the first d bytes of the current token.
        let mut states: Vec<(u32, PartialUtf8)> = vec![(start, self.partial)];
        // Bytes of the current path known dead from this depth on.
        let mut dead_from = usize::MAX;
        let has_token_elements = self
            .stacks
            .iter()
            .any(|s| s.last().is_some_and(|&i| matches!(self.grammar.elements[i as usize], Element::Token { .. })));
        for (k, &id) in vocab.sorted.iter().enumerate() {
            let piece = vocab.piece(id);
            let shared = usize::from(vocab.shared_prefix[k]);
            states.truncate(shared.min(states.len() - 1) + 1);
            if vocab.is_end_of_generation(id) {
                allowed[id as usize] = complete;
                continue;
            }
            if piece.first().is_none_or(|&b| b == 0) {
                continue;
            }
            if has_token_elements && !self.token_stacks(id).is_empty() {
                allowed[id as usize] = true;
            }
            if dead_from <= shared {
                // Still under a prefix the grammar refuses.
                continue;
            }
            dead_from = usize::MAX;
            let mut alive = true;
            while states.len() <= piece.len() {
                let depth = states.len() - 1;
                let (set, mut partial) = states[depth];
                let next = match partial.push(piece[depth]) {
                    Some(c) => sets.step(&self.grammar, set, c),
                    None => Some(set),
                };
                match next {
                    Some(next) if partial.remaining >= 0 => states.push((next, partial)),
                    _ => {
                        dead_from = depth + 1;
                        alive = false;
                        break;
                    }
                }
            }
            if alive {
                let (set, partial) = states[piece.len()];
                if self.ends_well(&sets.stacks[set as usize], partial) {
                    allowed[id as usize] = true;
                }
            }
        }
    }
}

/// Stack sets by number, and the code-point moves between them, for one [`GrammarMatcher::allowed_tokens`].
#[derive(Default)]
struct StackSets {
    stacks: Vec<Vec<Stack>>,
    ids: HashMap<Vec<Stack>, u32>,
    /// Per set, the set after each ASCII character ([`NOT_YET`] or [`NO_PARSE`] where there is none).
    ascii: Vec<[u32; 128]>,
    /// (set, code point) -> the set after it, `None` when no parse survives, for the other characters.
    moves: HashMap<(u32, u32), Option<u32>>,
}

const NOT_YET: u32 = u32::MAX;
const NO_PARSE: u32 = u32::MAX - 1;

impl StackSets {
    fn intern(&mut self, stacks: Vec<Stack>) -> u32 {
        if let Some(&id) = self.ids.get(&stacks) {
            return id;
        }
        let id = self.stacks.len() as u32;
        self.ids.insert(stacks.clone(), id);
        self.stacks.push(stacks);
        self.ascii.push([NOT_YET; 128]);
        id
    }

    fn step(&mut self, g: &Grammar, set: u32, c: u32) -> Option<u32> {
        let known = match c {
            0..=127 => match self.ascii[set as usize][c as usize] {
                NOT_YET => None,
                NO_PARSE => Some(None),
                next => Some(Some(next)),
            },
            _ => self.moves.get(&(set, c)).copied(),
        };
        if let Some(next) = known {
            return next;
        }
        let after = accept_char(g, &self.stacks[set as usize], c);
        let next = (!after.is_empty()).then(|| self.intern(after));
        if c < 128 {
            self.ascii[set as usize][c as usize] = next.unwrap_or(NO_PARSE);
        } else {
            self.moves.insert((set, c), next);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matcher over a made-up vocabulary, one token per string; the last token is end of generation.
    fn matcher(grammar: &str, pieces: &[&[u8]]) -> GrammarMatcher {
        let g = Arc::new(Grammar::parse(grammar).expect("grammar parses"));
        let mut all: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        all.push(b"</s>".to_vec());
        let mut end_of_generation = vec![false; all.len()];
        end_of_generation[pieces.len()] = true;
        GrammarMatcher::new(g, Arc::new(GrammarVocab::from_pieces(all, end_of_generation)))
    }

    fn check_mask_agrees(m: &GrammarMatcher) {
        let mut mask = Vec::new();
        m.allowed_tokens(&mut mask);
        for id in 0..m.vocab.len() as u32 {
            assert_eq!(mask[id as usize], m.allows(id), "token {id} {:?}", String::from_utf8_lossy(m.vocab.piece(id)));
        }
    }

    #[test]
    fn an_ambiguous_repetition_stays_fast() {
        // Found by fuzzing (a 150-byte grammar): 203 copies of a group that may match nothing keep about 2,000
        // stacks, which were each compared with all the others and expanded again from scratch: minutes for
        // 20 characters.
        let mut m = matcher(r#"root ::= ( "y"? | "|>"{0,2} . [*/-H]* .{4} ){203} [c-g]"#, &[b"|>", b"c", b"0"]);
        for chunk in b"|>|>:06c\"0'|>|>*+ bb".chunks(3) {
            assert!(m.accept_text(chunk), "{:?}", String::from_utf8_lossy(chunk));
            check_mask_agrees(&m);
        }
        assert!(!m.is_complete());
        assert!(m.accept_text(b"c"));
        assert!(m.is_complete());
    }

    #[test]
    fn tokens_follow_the_grammar_and_the_mask_agrees_with_single_checks() {
        let pieces: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"c", b"{", b"}", b"\"", b"x\"", b"1", b"12", b" "];
        let mut m = matcher(r#"root ::= "a" ("b" | "c")* "1""#, pieces);
        check_mask_agrees(&m);
        assert!(m.allows(0) && m.allows(1) && m.allows(2) && !m.allows(3) && !m.allows(12));
        assert!(m.accept(1)); // "ab"
        check_mask_agrees(&m);
        assert!(m.allows(3) && m.allows(4) && m.allows(9) && !m.allows(10) && !m.allows(0));
        assert!(!m.is_complete());
        assert!(m.accept(9));
        assert!(m.is_complete() && m.allows(12) && !m.allows(9));
        check_mask_agrees(&m);
    }

    #[test]
    fn a_character_cut_by_a_token_boundary_is_allowed_when_it_can_still_match() {
        // "é" is C3 A9, "À" C3 80; "ж" is D0 B6.
        let pieces: &[&[u8]] = &[b"\xC3", b"\xA9", b"\xD0", b"\xB6", b"e", b"\x80"];
        let mut m = matcher("root ::= [à-ÿ]+", pieces);
        check_mask_agrees(&m);
        assert!(m.allows(0) && !m.allows(2) && !m.allows(1) && !m.allows(4));
        assert!(m.accept(0));
        assert!(m.allows(1) && !m.allows(5) && !m.allows(0) && !m.allows(4));
        check_mask_agrees(&m);
        assert!(m.accept(1));
        assert!(m.is_complete());
        check_mask_agrees(&m);
    }

    #[test]
    fn whole_token_elements_match_by_id() {
        let pieces: &[&[u8]] = &[b"<think>", b"hi", b"x"];
        let mut m = matcher("root ::= <[0]> \"hi\" !<[2]>", pieces);
        assert!(m.allows(0) && !m.allows(1));
        check_mask_agrees(&m);
        assert!(m.accept(0) && m.accept(1));
        assert!(m.allows(0) && m.allows(1) && !m.allows(2));
        check_mask_agrees(&m);
    }
}
