//! The vocabulary: token texts, scores and attributes, indexed both ways.

use gemma_io::StringList;

/// Token attributes, the bits llama.cpp keeps per token (`llama_token_attr`). A token may carry several:
/// e.g. an end-of-turn marker stored as a normal token is promoted to `NORMAL | CONTROL`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenAttrs(u16);

impl TokenAttrs {
    pub const UNDEFINED: TokenAttrs = TokenAttrs(0);
    pub const UNKNOWN: TokenAttrs = TokenAttrs(1 << 0);
    pub const UNUSED: TokenAttrs = TokenAttrs(1 << 1);
    pub const NORMAL: TokenAttrs = TokenAttrs(1 << 2);
    pub const CONTROL: TokenAttrs = TokenAttrs(1 << 3);
    pub const USER_DEFINED: TokenAttrs = TokenAttrs(1 << 4);
    pub const BYTE: TokenAttrs = TokenAttrs(1 << 5);
    /// Swallow whitespace to the left of the token when it is matched as a special token.
    pub const LSTRIP: TokenAttrs = TokenAttrs(1 << 7);
    /// Swallow whitespace to the right of the token when it is matched as a special token.
    pub const RSTRIP: TokenAttrs = TokenAttrs(1 << 8);

    /// The attributes implied by a `tokenizer.ggml.token_type` entry
    /// (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; anything else undefined).
    pub fn from_gguf_token_type(token_type: i64) -> TokenAttrs {
        match token_type {
            1 => TokenAttrs::NORMAL,
            2 => TokenAttrs::UNKNOWN,
            3 => TokenAttrs::CONTROL,
            4 => TokenAttrs::USER_DEFINED,
            5 => TokenAttrs::UNUSED,
            6 => TokenAttrs::BYTE,
            _ => TokenAttrs::UNDEFINED,
        }
    }

    pub fn bits(self) -> u16 {
        self.0
    }

    /// True when at least one bit of `other` is set here.
    pub fn intersects(self, other: TokenAttrs) -> bool {
        self.0 & other.0 != 0
    }

    pub fn with(self, other: TokenAttrs) -> TokenAttrs {
        TokenAttrs(self.0 | other.0)
    }

    pub fn without(self, other: TokenAttrs) -> TokenAttrs {
        TokenAttrs(self.0 & !other.0)
    }
}

impl std::ops::BitOr for TokenAttrs {
    type Output = TokenAttrs;
    fn bitor(self, rhs: TokenAttrs) -> TokenAttrs {
        self.with(rhs)
    }
}

/// Token texts, scores and attributes. Ids are positions; `id_of` maps text back to id.
#[derive(Clone)]
pub(crate) struct Vocab {
    /// Texts back to back in one buffer (a `Vec<String>` of 262,144 pieces costs ~12 MB, this ~4 MB).
    pieces: StringList,
    scores: Vec<f32>,
    attrs: Vec<TokenAttrs>,
    /// Open-addressing table from text to id (`id + 1`, 0 = empty), probing linearly from the text's hash.
    /// It stores ids, not copies of the texts: a `HashMap<String, u32>` of Gemma's 262,144 pieces costs ~17 MB.
    index: Vec<u32>,
}

/// FNV-1a: short keys, no need for DoS resistance (the keys come from the model file, not from users).
fn text_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl Vocab {
    /// `scores` and `attrs` must be as long as `pieces` (the caller checks; extra entries are ignored,
    /// missing ones read as score 0 / undefined). Empty texts get a unique placeholder so that every id
    /// has a distinct text, and for duplicated texts the later id wins the text → id map, both as
    /// llama.cpp does.
    pub(crate) fn new(texts: StringList, scores: Vec<f32>, attrs: Vec<TokenAttrs>) -> Vocab {
        let pieces: StringList = if texts.iter().any(str::is_empty) {
            let placeholder = |id: usize| format!("[EMPTY_{id}]");
            texts.iter().enumerate().map(|(id, t)| if t.is_empty() { placeholder(id) } else { t.to_owned() }).collect()
        } else {
            texts
        };
        let n = pieces.len();
        let mask = (2 * n).next_power_of_two().max(2) - 1;
        let mut index = vec![0u32; mask + 1];
        for (id, piece) in pieces.iter().enumerate() {
            let mut slot = text_hash(piece) as usize & mask;
            // A duplicated text takes the later id's value, as llama.cpp's map does.
            while index[slot] != 0 && pieces.get(index[slot] as usize - 1) != Some(piece) {
                slot = (slot + 1) & mask;
            }
            // Ids fit in u32: the caller rejects larger vocabularies.
            index[slot] = id as u32 + 1;
        }
        let mut scores = scores;
        scores.resize(n, 0.0);
        let mut attrs = attrs;
        attrs.resize(n, TokenAttrs::UNDEFINED);
        Vocab { pieces, scores, attrs, index }
    }

    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize)
    }

    pub(crate) fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    pub(crate) fn attrs(&self, id: u32) -> Option<TokenAttrs> {
        self.attrs.get(id as usize).copied()
    }

    pub(crate) fn set_attrs(&mut self, id: u32, attrs: TokenAttrs) {
        if let Some(slot) = self.attrs.get_mut(id as usize) {
            *slot = attrs;
        }
    }

    pub(crate) fn add_attrs(&mut self, id: u32, attrs: TokenAttrs) {
        if let Some(slot) = self.attrs.get_mut(id as usize) {
            *slot = slot.with(attrs);
        }
    }

    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        let mask = self.index.len() - 1;
        let mut slot = text_hash(text) as usize & mask;
        loop {
            match self.index[slot] {
                0 => return None,
                e if self.pieces.get(e as usize - 1) == Some(text) => return Some(e - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &str, TokenAttrs)> {
        self.pieces.iter().zip(&self.attrs).enumerate().map(|(id, (piece, attrs))| (id as u32, piece, *attrs))
    }
}
