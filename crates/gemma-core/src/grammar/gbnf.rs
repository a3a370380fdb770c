//! GBNF, llama.cpp's grammar notation: `name ::= alternatives` rules over literals (`"abc"`), character
//! classes (`[a-z]`, `[^"\\]`), any character (`.`), rule references, groups, `*` `+` `?` `{m}` `{m,}`
//! `{m,n}`, token ids (`<[42]>`, `!<[42]>`) and `#` comments. The start rule is `root`.
//!
//! Parsed into one flat element array, as a pushdown matcher wants it: each rule is a run of alternatives,
//! each alternative a run of elements closed by `Alt` (another follows) or `End`.
//! Repetitions are rewritten into helper rules the way llama.cpp does (`S{m,n}` = m copies of `S` then
//! n-m nested optional rules), so the same grammar accepts the same texts.

use std::collections::HashMap;

/// A grammar that could not be parsed or would not terminate.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GrammarError {
    #[error("grammar syntax error at line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    #[error("grammar rule '{0}' is used but never defined")]
    UndefinedRule(String),
    #[error("grammar has no 'root' rule")]
    NoRoot,
    #[error("grammar rule '{0}' is left-recursive (it can reach itself without consuming a character)")]
    LeftRecursive(String),
    #[error("grammar is too large: {0}")]
    TooLarge(String),
}

/// llama.cpp's cap on one repetition count (`{m,n}`); a larger upper bound means "no upper bound".
const MAX_REPETITION: u64 = 2000;
/// Caps on the rewritten grammar, so a hostile grammar fails fast instead of exhausting memory.
const MAX_RULES: usize = 200_000;
const MAX_ELEMENTS: usize = 4_000_000;
/// Groups nested deeper than this are refused (the parser recurses on groups).
const MAX_GROUP_DEPTH: usize = 256;

/// One element of a rule, in the flat array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Element {
    /// End of a rule's last alternative.
    End,
    /// End of an alternative; another alternative of the same rule follows.
    Alt,
    /// A reference to rule `n`.
    Rule(u32),
    /// One character matching class `n` of [`Grammar::classes`].
    Char(u32),
    /// One whole token with this id (`<[id]>`), or any token but it (`!<[id]>`).
    Token { id: u32, negated: bool },
}

impl Element {
    pub(crate) fn ends_alternative(self) -> bool {
        matches!(self, Element::End | Element::Alt)
    }
}

/// A set of code points: ranges, or everything but them; `.` is the negation of nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CharClass {
    pub(crate) negated: bool,
    pub(crate) ranges: Vec<(u32, u32)>,
}

impl CharClass {
    pub(crate) fn matches(&self, c: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }

    /// True when some code point in `lo..=hi` matches (for a UTF-8 sequence cut by a token boundary).
    pub(crate) fn matches_some_in(&self, lo: u32, hi: u32) -> bool {
        if self.negated {
            // Everything in lo..=hi excluded only if the ranges cover it; llama.cpp answers "no" as soon as one
            // range overlaps, which we follow so both accept the same tokens.
            !self.ranges.iter().any(|&(a, b)| a <= hi && lo <= b)
        } else {
            self.ranges.iter().any(|&(a, b)| a <= hi && lo <= b)
        }
    }
}

/// A parsed grammar (see the module docs).
#[derive(Clone, Debug)]
pub struct Grammar {
    pub(crate) elements: Vec<Element>,
    /// Index in `elements` of each rule's first alternative.
    pub(crate) rule_start: Vec<u32>,
    pub(crate) classes: Vec<CharClass>,
    names: Vec<String>,
    pub(crate) root: u32,
    source: String,
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Grammar {
    /// Parses GBNF text; the start rule is `root`.
    pub fn parse(source: &str) -> Result<Grammar, GrammarError> {
        let mut p = Parser {
            src: source.as_bytes(),
            pos: 0,
            rules: Vec::new(),
            ids: HashMap::new(),
            names: Vec::new(),
            depth: 0,
            classes: Vec::new(),
            class_ids: HashMap::new(),
            n_elements: 0,
        };
        p.skip_space(true);
        while p.pos < p.src.len() {
            p.parse_rule()?;
        }
        // llama.cpp refuses a rule that is used but never defined, and an undefined name numbered below the last
        // defined rule; one numbered after every defined rule and no longer referenced (`x{0}` removes the
        // reference) is let through there, so it is here: such a name is simply dropped.
        let defined_end = p.rules.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let mut referenced = vec![false; p.rules.len()];
        for e in p.rules.iter().flatten().flatten().flatten() {
            if let Element::Rule(id) = *e {
                referenced[id as usize] = true;
            }
        }
        for (id, rule) in p.rules.iter().enumerate() {
            if rule.is_none() && (id < defined_end || referenced[id]) {
                return Err(GrammarError::UndefinedRule(p.names[id].clone()));
            }
        }
        p.rules.truncate(defined_end);
        let root = *p.ids.get("root").filter(|&&r| (r as usize) < p.rules.len()).ok_or(GrammarError::NoRoot)?;
        let (classes, names) = (p.classes, p.names);
        let mut elements = Vec::with_capacity(p.n_elements + p.rules.len());
        let mut rule_start = Vec::with_capacity(p.rules.len());
        for rule in p.rules.into_iter().flatten() {
            rule_start.push(elements.len() as u32);
            let n = rule.len();
            for (i, alt) in rule.into_iter().enumerate() {
                elements.extend(alt);
                elements.push(if i + 1 == n { Element::End } else { Element::Alt });
            }
        }
        let grammar = Grammar { elements, rule_start, classes, names, root, source: source.to_owned() };
        grammar.check_left_recursion()?;
        Ok(grammar)
    }

    /// The grammar of the empty text only (`root ::= ""`).
    pub fn nothing() -> Grammar {
        Grammar {
            elements: vec![Element::End],
            rule_start: vec![0],
            classes: Vec::new(),
            names: vec!["root".into()],
            root: 0,
            source: "root ::= \"\"".into(),
        }
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The start element of each alternative of rule `rule`.
    pub(crate) fn alternatives(&self, rule: u32) -> impl Iterator<Item = u32> + '_ {
        let mut at = Some(self.rule_start[rule as usize]);
        std::iter::from_fn(move || {
            let start = at?;
            let mut i = start as usize;
            while !self.elements[i].ends_alternative() {
                i += 1;
            }
            at = (self.elements[i] == Element::Alt).then_some(i as u32 + 1);
            Some(start)
        })
    }

    /// Refuses rules that reach themselves before consuming anything: matching them would never end.
    fn check_left_recursion(&self) -> Result<(), GrammarError> {
        let n = self.rule_start.len();
        // Which rules have an empty alternative. llama.cpp counts only these as able to match nothing (not
        // rules that are empty through other rules), so `( [x]* )*` is accepted as it is there; the matcher's
        // duplicate check and expansion cap keep such grammars finite.
        let nullable: Vec<bool> =
            (0..n).map(|r| self.alternatives(r as u32).any(|s| self.elements[s as usize].ends_alternative())).collect();
        // Edges r -> x where x can come first in r; a cycle is left recursion.
        let first: Vec<Vec<u32>> = (0..n)
            .map(|r| {
                let mut out = Vec::new();
                for start in self.alternatives(r as u32) {
                    let mut i = start as usize;
                    while let Element::Rule(x) = self.elements[i] {
                        out.push(x);
                        if !nullable[x as usize] {
                            break;
                        }
                        i += 1;
                    }
                }
                out
            })
            .collect();
        // Iterative depth-first search with colours (0 new, 1 on the path, 2 done).
        let mut colour = vec![0u8; n];
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (r, ref mut next)) = path.last_mut() {
                if let Some(&x) = first[r].get(*next) {
                    *next += 1;
                    match colour[x as usize] {
                        1 => return Err(GrammarError::LeftRecursive(self.names[x as usize].clone())),
                        0 => {
                            colour[x as usize] = 1;
                            path.push((x as usize, 0));
                        }
                        _ => {}
                    }
                } else {
                    colour[r] = 2;
                    path.pop();
                }
            }
        }
        Ok(())
    }
}

type Alternative = Vec<Element>;

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    /// Each rule's alternatives, `None` until defined.
    rules: Vec<Option<Vec<Alternative>>>,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    depth: usize,
    classes: Vec<CharClass>,
    class_ids: HashMap<CharClass, u32>,
    n_elements: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, GrammarError> {
        let before = &self.src[..self.pos.min(self.src.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        Err(GrammarError::Syntax { line, column, message: message.into() })
    }

    /// Spaces, tabs and `#` comments; newlines too where a rule may continue.
    fn skip_space(&mut self, newlines: bool) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newlines => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\r' | b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<String, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(is_word_byte) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.error("expected a rule name");
        }
        Ok(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    fn symbol(&mut self, name: &str) -> Result<u32, GrammarError> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        self.new_symbol(name.to_owned())
    }

    fn new_symbol(&mut self, name: String) -> Result<u32, GrammarError> {
        if self.rules.len() >= MAX_RULES {
            return Err(GrammarError::TooLarge(format!("more than {MAX_RULES} rules after rewriting repetitions")));
        }
        let id = self.rules.len() as u32;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        self.rules.push(None);
        Ok(id)
    }

    /// A helper rule for a group or repetition inside rule `base`, named as llama.cpp names them.
    fn helper_symbol(&mut self, base: &str) -> Result<u32, GrammarError> {
        let id = self.rules.len();
        self.new_symbol(format!("{base}_{id}"))
    }

    fn define(&mut self, id: u32, alternatives: Vec<Alternative>) -> Result<(), GrammarError> {
        self.n_elements += alternatives.iter().map(|a| a.len() + 1).sum::<usize>();
        if self.n_elements > MAX_ELEMENTS {
            return Err(GrammarError::TooLarge(format!(
                "more than {MAX_ELEMENTS} elements after rewriting repetitions"
            )));
        }
        // A rule defined twice keeps its last definition, as in llama.cpp.
        self.rules[id as usize] = Some(alternatives);
        Ok(())
    }

    fn class(&mut self, class: CharClass) -> u32 {
        if let Some(&id) = self.class_ids.get(&class) {
            return id;
        }
        let id = self.classes.len() as u32;
        self.classes.push(class.clone());
        self.class_ids.insert(class, id);
        id
    }

    fn parse_rule(&mut self) -> Result<(), GrammarError> {
        let name = self.name()?;
        self.skip_space(false);
        let id = self.symbol(&name)?;
        if !self.src[self.pos..].starts_with(b"::=") {
            return self.error(format!("expected '::=' after rule name '{name}'"));
        }
        self.pos += 3;
        self.skip_space(true);
        let alternatives = self.alternatives(&name, false)?;
        self.define(id, alternatives)?;
        match self.peek() {
            Some(b'\r') => self.pos += if self.src.get(self.pos + 1) == Some(&b'\n') { 2 } else { 1 },
            Some(b'\n') => self.pos += 1,
            None => {}
            Some(_) => return self.error("expected a newline or the end of the grammar"),
        }
        self.skip_space(true);
        Ok(())
    }

    fn alternatives(&mut self, rule_name: &str, nested: bool) -> Result<Vec<Alternative>, GrammarError> {
        let mut out = vec![self.sequence(rule_name, nested)?];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            self.skip_space(true);
            out.push(self.sequence(rule_name, nested)?);
        }
        Ok(out)
    }

    fn sequence(&mut self, rule_name: &str, nested: bool) -> Result<Alternative, GrammarError> {
        let mut seq: Alternative = Vec::new();
        // Where the last item (what a repetition applies to) starts, and how many rules it stands for.
        let mut last_start: Option<usize> = None;
        let mut last_rules: u64 = 1;
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    self.pos += 1;
                    last_start = Some(seq.len());
                    last_rules = 1;
                    loop {
                        match self.peek() {
                            None => return self.error("unterminated string literal"),
                            Some(b'"') => break,
                            Some(_) => {
                                let c = self.char()?;
                                let class = self.class(CharClass { negated: false, ranges: vec![(c, c)] });
                                seq.push(Element::Char(class));
                            }
                        }
                    }
                    self.pos += 1;
                    self.skip_space(nested);
                }
                b'[' => {
                    self.pos += 1;
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None => return self.error("unterminated character class"),
                            Some(b']') => break,
                            Some(_) => {
                                let lo = self.char()?;
                                let mut hi = lo;
                                if self.peek() == Some(b'-') && self.src.get(self.pos + 1).is_some_and(|&b| b != b']') {
                                    self.pos += 1;
                                    hi = self.char()?;
                                }
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    self.pos += 1;
                    last_start = Some(seq.len());
                    last_rules = 1;
                    // An empty class (`[]`, `[^]`) adds nothing in llama.cpp: it matches the empty text, and a
                    // repetition after it has no item to repeat.
                    if !ranges.is_empty() {
                        let class = self.class(CharClass { negated, ranges });
                        seq.push(Element::Char(class));
                    }
                    self.skip_space(nested);
                }
                b'.' => {
                    self.pos += 1;
                    last_start = Some(seq.len());
                    last_rules = 1;
                    let class = self.class(CharClass { negated: true, ranges: Vec::new() });
                    seq.push(Element::Char(class));
                    self.skip_space(nested);
                }
                b'<' | b'!' => {
                    let negated = b == b'!';
                    if negated {
                        self.pos += 1;
                    }
                    let id = self.token_id()?;
                    last_start = Some(seq.len());
                    last_rules = 1;
                    seq.push(Element::Token { id, negated });
                    self.skip_space(nested);
                }
                b'(' => {
                    self.pos += 1;
                    self.skip_space(true);
                    self.depth += 1;
                    if self.depth > MAX_GROUP_DEPTH {
                        return self.error(format!("groups nested more than {MAX_GROUP_DEPTH} deep"));
                    }
                    let before = self.rules.len();
                    let id = self.helper_symbol(rule_name)?;
                    let alternatives = self.alternatives(rule_name, true)?;
                    self.define(id, alternatives)?;
                    self.depth -= 1;
                    last_rules = (self.rules.len() - before).max(1) as u64;
                    last_start = Some(seq.len());
                    seq.push(Element::Rule(id));
                    if self.peek() != Some(b')') {
                        return self.error("expected ')'");
                    }
                    self.pos += 1;
                    self.skip_space(nested);
                }
                b'*' | b'+' | b'?' => {
                    self.pos += 1;
                    self.skip_space(nested);
                    let (min, max) = match b {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        _ => (0, Some(1)),
                    };
                    self.repeat(rule_name, &mut seq, last_start, &mut last_rules, min, max)?;
                }
                b'{' => {
                    self.pos += 1;
                    self.skip_space(nested);
                    let min = self.int()?;
                    self.skip_space(nested);
                    let max = match self.peek() {
                        Some(b'}') => Some(min),
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_space(nested);
                            let max =
                                if self.peek().is_some_and(|b| b.is_ascii_digit()) { Some(self.int()?) } else { None };
                            self.skip_space(nested);
                            if self.peek() != Some(b'}') {
                                return self.error("expected '}'");
                            }
                            max
                        }
                        _ => return self.error("expected ',' or '}' in a repetition"),
                    };
                    self.pos += 1;
                    self.skip_space(nested);
                    if min > MAX_REPETITION {
                        return self.error(format!("repetition count {min} is over {MAX_REPETITION}"));
                    }
                    let max = max.filter(|&m| m <= MAX_REPETITION);
                    if max.is_some_and(|m| m < min) {
                        return self.error("a repetition's maximum is below its minimum");
                    }
                    self.repeat(rule_name, &mut seq, last_start, &mut last_rules, min, max)?;
                }
                b if is_word_byte(b) => {
                    let name = self.name()?;
                    let id = self.symbol(&name)?;
                    self.skip_space(nested);
                    last_start = Some(seq.len());
                    last_rules = 1;
                    seq.push(Element::Rule(id));
                }
                _ => break,
            }
        }
        Ok(seq)
    }

    /// Rewrites the last item `S` of `seq` as `S{min,max}` (`max` None: unbounded): `min` copies of `S`, then
    /// either `S' ::= S S' |` (unbounded) or `max - min` nested rules `S'(k) ::= S S'(k-1) |`.
    fn repeat(
        &mut self,
        rule_name: &str,
        seq: &mut Alternative,
        last_start: Option<usize>,
        last_rules: &mut u64,
        min: u64,
        max: Option<u64>,
    ) -> Result<(), GrammarError> {
        let Some(start) = last_start.filter(|&s| s < seq.len()) else {
            return self.error("a repetition ('*', '+', '?' or '{') must follow an item");
        };
        let item: Alternative = seq[start..].to_vec();
        let total = match max {
            Some(m) if m > 0 => m,
            _ => min.max(1),
        };
        if last_rules.saturating_mul(total) > MAX_REPETITION {
            return Err(GrammarError::TooLarge(
                "a repetition of a repeated item would need too many rules; reduce the repetition counts".into(),
            ));
        }
        seq.truncate(start);
        for _ in 0..min {
            seq.extend_from_slice(&item);
        }
        let optional = match max {
            None => 1,
            Some(m) => m - min,
        };
        let mut last: Option<u32> = None;
        for _ in 0..optional {
            let id = self.helper_symbol(rule_name)?;
            let mut body = item.clone();
            match max {
                None => body.push(Element::Rule(id)),
                Some(_) => body.extend(last.map(Element::Rule)),
            }
            self.define(id, vec![body, Vec::new()])?;
            last = Some(id);
        }
        seq.extend(last.map(Element::Rule));
        *last_rules = last_rules.saturating_mul(total);
        Ok(())
    }

    fn int(&mut self) -> Result<u64, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.error("expected an integer");
        }
        std::str::from_utf8(&self.src[start..self.pos])
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or_else(|| self.error("integer too large"), Ok)
    }

    /// `<[id]>`: a token by id.
    fn token_id(&mut self) -> Result<u32, GrammarError> {
        if !self.src[self.pos..].starts_with(b"<[") {
            return self.error("expected a token id as '<[id]>' (token texts are not supported)");
        }
        self.pos += 2;
        let id = self.int()?;
        if !self.src[self.pos..].starts_with(b"]>") {
            return self.error("expected ']>' after a token id");
        }
        self.pos += 2;
        u32::try_from(id).map_or_else(|_| self.error("token id too large"), Ok)
    }

    /// One character of a literal or class: an escape or one UTF-8 character.
    fn char(&mut self) -> Result<u32, GrammarError> {
        let Some(b) = self.peek() else { return self.error("unexpected end of the grammar") };
        if b == b'\\' {
            let Some(e) = self.src.get(self.pos + 1).copied() else { return self.error("unexpected end after '\\'") };
            self.pos += 2;
            return match e {
                b'x' => self.hex(2),
                b'u' => self.hex(4),
                b'U' => self.hex(8),
                b't' => Ok('\t' as u32),
                b'r' => Ok('\r' as u32),
                b'n' => Ok('\n' as u32),
                b'\\' | b'"' | b'[' | b']' | b'-' => Ok(u32::from(e)),
                _ => {
                    self.pos -= 2;
                    self.error(format!("unknown escape '\\{}'", char::from(e)))
                }
            };
        }
        let len = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return self.error("invalid UTF-8"),
        };
        let bytes = self.src.get(self.pos..self.pos + len);
        match bytes.and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.chars().next()) {
            Some(c) => {
                self.pos += len;
                Ok(c as u32)
            }
            None => self.error("invalid UTF-8"),
        }
    }

    fn hex(&mut self, digits: usize) -> Result<u32, GrammarError> {
        let text = self.src.get(self.pos..self.pos + digits).and_then(|s| std::str::from_utf8(s).ok());
        match text.and_then(|t| u32::from_str_radix(t, 16).ok().filter(|_| t.bytes().all(|b| b.is_ascii_hexdigit()))) {
            Some(v) => {
                self.pos += digits;
                Ok(v)
            }
            None => self.error(format!("expected {digits} hex digits")),
        }
    }
}
