//! Text ↔ token ids from the vocabulary in a GGUF file, reproducing llama.cpp (`src/llama-vocab.cpp`)
//! token for token.
//!
//! Two tokenizer kinds ([`TokenizerModel`]), chosen by `tokenizer.ggml.model`:
//! - `llama`, SentencePiece (Gemma): each raw fragment has its spaces escaped to U+2581 and is merged
//!   by token score ([`SpmModel`]);
//! - `gpt2`, byte-level BPE (SmolLM2, Llama 3, Qwen2, ...): each raw fragment is cut into words by the
//!   pre-tokenizer named in `tokenizer.ggml.pre` ([`PreTokenizer`]), each word's bytes are written in
//!   GPT-2's byte alphabet and merged by `tokenizer.ggml.merges` rank ([`BpeModel`]).
//!
//! Either way the text is first split at special tokens ([`special`]), which are matched whole.
//! Decoding maps each id to its bytes (SentencePiece: U+2581 back to a space, `<0xHH>` to the byte;
//! BPE: each character of the byte alphabet back to its byte; control tokens to nothing unless asked
//! for) and joins them; [`StreamDecoder`] does the same incrementally without ever splitting a
//! character.

mod bpe;
mod pretokenize;
pub(crate) mod sentencepiece_proto;
mod special;
mod spm;
mod stream;
mod unicode_class;
mod vocab;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use gemma_io::{GgufFile, MetaArray, StringList};

use crate::grammar::GrammarVocab;

pub use bpe::BpeModel;
pub use pretokenize::{PreTokenizer, PreTokenizerKind};
use special::{Fragment, SpecialTokenMatcher};
pub use spm::SpmModel;
pub use stream::StreamDecoder;
pub use vocab::TokenAttrs;
use vocab::Vocab;

/// The character SentencePiece uses for a space inside tokens.
const ESCAPED_SPACE: char = '\u{2581}';

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata lacks '{0}'")]
    MissingKey(&'static str),
    #[error("tokenizer metadata '{key}' is not {expected}")]
    WrongType { key: &'static str, expected: &'static str },
    #[error("tokenizer kind '{0}' is not supported (supported: 'llama', SentencePiece; 'gpt2', byte-level BPE)")]
    UnsupportedModel(String),
    #[error("tokenizer metadata '{key}' has {found} entries, fewer than the {expected} tokens")]
    TooFewEntries { key: &'static str, found: usize, expected: usize },
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("the vocabulary has {0} tokens, more than 32-bit token ids can address")]
    VocabTooLarge(usize),
    #[error("byte token {id} has text '{text}', expected '<0xHH>'")]
    BadByteToken { id: u32, text: String },
}

/// The subword algorithm, from `tokenizer.ggml.model`.
// Both variants hold a fixed byte table (~2 kB); a tokenizer has exactly one, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TokenizerModel {
    /// `llama`: SentencePiece.
    Spm(SpmModel),
    /// `gpt2`: byte-level BPE.
    Bpe(BpeModel),
}

/// Ids with a special role. `None` where the model has no such token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokenIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn (`<end_of_turn>` for Gemma).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpecialRole {
    Bos,
    Eos,
    Eot,
    Eom,
    Unk,
    Sep,
    Pad,
    Mask,
    FimPre,
    FimSuf,
    FimMid,
    FimPad,
    FimRep,
    FimSep,
}

impl SpecialTokenIds {
    fn slot(&mut self, role: SpecialRole) -> &mut Option<u32> {
        match role {
            SpecialRole::Bos => &mut self.bos,
            SpecialRole::Eos => &mut self.eos,
            SpecialRole::Eot => &mut self.eot,
            SpecialRole::Eom => &mut self.eom,
            SpecialRole::Unk => &mut self.unk,
            SpecialRole::Sep => &mut self.sep,
            SpecialRole::Pad => &mut self.pad,
            SpecialRole::Mask => &mut self.mask,
            SpecialRole::FimPre => &mut self.fim_pre,
            SpecialRole::FimSuf => &mut self.fim_suf,
            SpecialRole::FimMid => &mut self.fim_mid,
            SpecialRole::FimPad => &mut self.fim_pad,
            SpecialRole::FimRep => &mut self.fim_rep,
            SpecialRole::FimSep => &mut self.fim_sep,
        }
    }
}

/// Metadata keys of special ids, in the order llama.cpp applies them (the deprecated FIM keys last,
/// so they override the newer ones).
const SPECIAL_ID_KEYS: [(&str, SpecialRole); 17] = [
    ("tokenizer.ggml.bos_token_id", SpecialRole::Bos),
    ("tokenizer.ggml.eos_token_id", SpecialRole::Eos),
    ("tokenizer.ggml.eot_token_id", SpecialRole::Eot),
    ("tokenizer.ggml.eom_token_id", SpecialRole::Eom),
    ("tokenizer.ggml.unknown_token_id", SpecialRole::Unk),
    ("tokenizer.ggml.seperator_token_id", SpecialRole::Sep),
    ("tokenizer.ggml.padding_token_id", SpecialRole::Pad),
    ("tokenizer.ggml.mask_token_id", SpecialRole::Mask),
    ("tokenizer.ggml.fim_pre_token_id", SpecialRole::FimPre),
    ("tokenizer.ggml.fim_suf_token_id", SpecialRole::FimSuf),
    ("tokenizer.ggml.fim_mid_token_id", SpecialRole::FimMid),
    ("tokenizer.ggml.fim_pad_token_id", SpecialRole::FimPad),
    ("tokenizer.ggml.fim_rep_token_id", SpecialRole::FimRep),
    ("tokenizer.ggml.fim_sep_token_id", SpecialRole::FimSep),
    ("tokenizer.ggml.prefix_token_id", SpecialRole::FimPre),
    ("tokenizer.ggml.suffix_token_id", SpecialRole::FimSuf),
    ("tokenizer.ggml.middle_token_id", SpecialRole::FimMid),
];

/// Texts by which llama.cpp recognises roles that the metadata did not name. A token found this way
/// is promoted to a control token.
const AUTO_DETECTED_ROLES: [(SpecialRole, &[&str]); 8] = [
    (
        SpecialRole::Eot,
        &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ],
    ),
    (SpecialRole::Eom, &["<|eom_id|>"]),
    (
        SpecialRole::FimPre,
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        SpecialRole::FimSuf,
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        SpecialRole::FimMid,
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (SpecialRole::FimPad, &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]),
    (SpecialRole::FimRep, &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]),
    (SpecialRole::FimSep, &["<|file_sep|>"]),
];

/// Texts of tokens that end generation (llama.cpp decides this by text). Each becomes a control token,
/// which is why Gemma 3's user-defined `</s>` is not matched when special parsing is off.
const END_OF_GENERATION_TEXTS: [&str; 22] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Everything the tokenizer takes from the metadata, gathered before any of it is interpreted.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenizerSource {
    pub(crate) model: String,
    pub(crate) tokens: StringList,
    pub(crate) scores: Option<Vec<f32>>,
    pub(crate) token_types: Option<Vec<i64>>,
    /// Special ids as found under [`SPECIAL_ID_KEYS`], in that order.
    pub(crate) special_ids: Vec<(SpecialRoleKey, u64)>,
    pub(crate) add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (embedding models such as EmbeddingGemma end every input with EOS).
    pub(crate) add_eos: Option<bool>,
    pub(crate) add_space_prefix: Option<bool>,
    pub(crate) general_name: Option<String>,
    pub(crate) general_architecture: Option<String>,
    pub(crate) tokenizer_pre: Option<String>,
    /// `tokenizer.ggml.merges` ("left right" per entry, by rank); BPE only.
    pub(crate) merges: Option<Vec<String>>,
}

/// The `tokenizer.ggml.model` values this module implements.
const SUPPORTED_MODELS: [&str; 2] = ["llama", "gpt2"];

/// Index into [`SPECIAL_ID_KEYS`].
pub(crate) type SpecialRoleKey = usize;

/// Renders every token once (llama.cpp's token-to-piece cache, built with specials shown) so decoding
/// is a slice lookup.
#[derive(Clone)]
struct PieceBytes {
    bytes: Vec<u8>,
    /// `ends[id]` is where token `id`'s bytes end; it starts where `id - 1`'s end.
    ends: Vec<usize>,
}

impl PieceBytes {
    fn get(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let end = *self.ends.get(id)?;
        let start = if id == 0 { 0 } else { *self.ends.get(id - 1)? };
        self.bytes.get(start..end)
    }
}

/// A tokenizer loaded from GGUF metadata.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    model: TokenizerModel,
    special_ids: SpecialTokenIds,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    special_matcher: SpecialTokenMatcher,
    end_of_generation: BTreeSet<u32>,
    pieces: PieceBytes,
    warnings: Vec<String>,
    /// Token texts for grammar matching, built on first use.
    grammar_vocab: OnceLock<Arc<GrammarVocab>>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model_name())
            .field("vocab_size", &self.vocab.len())
            .field("special_ids", &self.special_ids)
            .field("add_bos", &self.add_bos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("special_tokens", &self.special_matcher.len())
            .field("end_of_generation", &self.end_of_generation)
            .finish()
    }
}

fn string_key(file: &GgufFile, key: &'static str) -> Result<Option<String>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(value) => {
            value.as_str().map(|s| Some(s.to_owned())).ok_or(TokenizerError::WrongType { key, expected: "a string" })
        }
    }
}

fn bool_key(file: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(value) => value.as_bool().map(Some).ok_or(TokenizerError::WrongType { key, expected: "a bool" }),
    }
}

fn array_key<'f>(file: &'f GgufFile, key: &'static str) -> Result<Option<&'f MetaArray>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(value) => value.as_array().map(Some).ok_or(TokenizerError::WrongType { key, expected: "an array" }),
    }
}

impl Tokenizer {
    /// Reads the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const SCORES: &str = "tokenizer.ggml.scores";
        const TYPES: &str = "tokenizer.ggml.token_type";
        const MERGES: &str = "tokenizer.ggml.merges";

        let model = string_key(file, MODEL)?.ok_or(TokenizerError::MissingKey(MODEL))?;
        if !SUPPORTED_MODELS.contains(&model.as_str()) {
            // Checked before reading the vocabulary: nothing else matters for an unsupported kind.
            return Err(TokenizerError::UnsupportedModel(model));
        }
        let strings = |key: &'static str| -> Result<&StringList, TokenizerError> {
            let list = array_key(file, key)?.ok_or(TokenizerError::MissingKey(key))?.strings();
            list.ok_or(TokenizerError::WrongType { key, expected: "an array of strings" })
        };
        let tokens = strings(TOKENS)?.clone();
        let scores = array_key(file, SCORES)?
            .map(|values| {
                values.to_f32s().ok_or(TokenizerError::WrongType { key: SCORES, expected: "an array of numbers" })
            })
            .transpose()?;
        let token_types = array_key(file, TYPES)?
            .map(|values| {
                values.to_i64s().ok_or(TokenizerError::WrongType { key: TYPES, expected: "an array of integers" })
            })
            .transpose()?;
        let merges = if model == "gpt2" { Some(strings(MERGES)?.iter().map(str::to_owned).collect()) } else { None };
        let mut special_ids = Vec::new();
        for (index, &(key, _)) in SPECIAL_ID_KEYS.iter().enumerate() {
            if let Some(value) = file.get(key) {
                // A negative id (some converters write -1 for "none") is out of range like any other,
                // so the default stays; only a non-integer is an error.
                let id = value
                    .as_u64()
                    .or_else(|| value.as_i64().map(|_| u64::MAX))
                    .ok_or(TokenizerError::WrongType { key, expected: "a token id" })?;
                special_ids.push((index, id));
            }
        }
        let source = TokenizerSource {
            model,
            tokens,
            scores,
            token_types,
            special_ids,
            add_bos: bool_key(file, "tokenizer.ggml.add_bos_token")?,
            add_eos: bool_key(file, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: bool_key(file, "tokenizer.ggml.add_space_prefix")?,
            general_name: string_key(file, "general.name")?,
            general_architecture: string_key(file, "general.architecture")?,
            tokenizer_pre: string_key(file, "tokenizer.ggml.pre")?,
            merges,
        };
        Tokenizer::from_source(source)
    }

    /// Builds the tokenizer, applying llama.cpp's load-time fix-ups in its order: token types → attrs,
    /// special ids, role auto-detection, unused marking, end-of-generation set, special-token cache,
    /// per-model strip flags, piece cache.
    pub(crate) fn from_source(source: TokenizerSource) -> Result<Tokenizer, TokenizerError> {
        let is_bpe = match source.model.as_str() {
            "llama" => false,
            "gpt2" => true,
            _ => return Err(TokenizerError::UnsupportedModel(source.model)),
        };
        let n = source.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        let scores = match source.scores {
            Some(scores) if scores.len() < n => {
                return Err(TokenizerError::TooFewEntries {
                    key: "tokenizer.ggml.scores",
                    found: scores.len(),
                    expected: n,
                })
            }
            Some(scores) => scores,
            None => vec![0.0; n],
        };
        let attrs = match source.token_types {
            Some(types) if types.len() < n => {
                return Err(TokenizerError::TooFewEntries {
                    key: "tokenizer.ggml.token_type",
                    found: types.len(),
                    expected: n,
                })
            }
            Some(types) => types.into_iter().map(TokenAttrs::from_gguf_token_type).collect(),
            None => vec![TokenAttrs::NORMAL; n],
        };
        let mut vocab = Vocab::new(source.tokens, scores, attrs);
        let in_range = |id: u64| u32::try_from(id).ok().filter(|&id| (id as usize) < n);

        // The kind's defaults (SentencePiece: 1, 2, 0; BPE: 11, 11, none), then whatever the metadata
        // names (out-of-range ids are ignored).
        let mut ids = if is_bpe {
            SpecialTokenIds { bos: in_range(11), eos: in_range(11), ..SpecialTokenIds::default() }
        } else {
            SpecialTokenIds { bos: in_range(1), eos: in_range(2), unk: in_range(0), ..SpecialTokenIds::default() }
        };
        for &(key_index, id) in &source.special_ids {
            if let (Some(&(_, role)), Some(id)) = (SPECIAL_ID_KEYS.get(key_index), in_range(id)) {
                *ids.slot(role) = Some(id);
            }
        }

        // Roles the metadata left out are recognised by text (lowest id when several texts match).
        for (role, texts) in AUTO_DETECTED_ROLES {
            if ids.slot(role).is_some() {
                continue;
            }
            if let Some(id) = texts.iter().filter_map(|t| vocab.id_of(t)).min() {
                *ids.slot(role) = Some(id);
                vocab.add_attrs(id, TokenAttrs::CONTROL);
            }
        }

        let unused: Vec<u32> = vocab
            .iter()
            .filter(|(_, piece, attrs)| attrs.intersects(TokenAttrs::CONTROL) && piece.contains("unused"))
            .map(|(id, _, _)| id)
            .collect();
        for id in unused {
            vocab.add_attrs(id, TokenAttrs::UNUSED);
        }

        let end_of_generation = end_of_generation_ids(&mut vocab, &ids);

        let special_matcher = SpecialTokenMatcher::new(&vocab);
        apply_model_strip_flags(
            &mut vocab,
            &special_matcher,
            &source.general_name,
            &source.tokenizer_pre,
            &source.general_architecture,
        );

        let mut warnings = Vec::new();
        let (model, add_bos, add_space_prefix) = if is_bpe {
            let (pre, warning) = PreTokenizer::from_name(source.tokenizer_pre.as_deref());
            warnings.extend(warning);
            let merges = source.merges.unwrap_or_default();
            if merges.is_empty() {
                warnings
                    .push("tokenizer.ggml.merges is empty: every word is spelled character by character".to_owned());
            }
            let add_bos = source.add_bos.unwrap_or(pre.adds_bos_by_default());
            (TokenizerModel::Bpe(BpeModel::new(&merges, pre)), add_bos, source.add_space_prefix.unwrap_or(false))
        } else {
            let model = TokenizerModel::Spm(SpmModel::new(&vocab, ids.unk));
            (model, source.add_bos.unwrap_or(true), source.add_space_prefix.unwrap_or(true))
        };
        let pieces = render_pieces(&vocab, &model)?;
        Ok(Tokenizer {
            vocab,
            model,
            special_ids: ids,
            add_bos,
            add_eos: source.add_eos.unwrap_or(false),
            add_space_prefix,
            special_matcher,
            end_of_generation,
            pieces,
            warnings,
            grammar_vocab: OnceLock::new(),
        })
    }

    /// The metadata name of the tokenizer kind (`llama` for SentencePiece, `gpt2` for byte-level BPE).
    pub fn model_name(&self) -> &'static str {
        match self.model {
            TokenizerModel::Spm(_) => "llama",
            TokenizerModel::Bpe(_) => "gpt2",
        }
    }

    /// Things about the vocabulary that loaded but may not tokenize as the model expects (an unknown
    /// or missing `tokenizer.ggml.pre`, no merges). Empty for a well-formed file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn model(&self) -> &TokenizerModel {
        &self.model
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn special_ids(&self) -> &SpecialTokenIds {
        &self.special_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.special_ids.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.special_ids.eos
    }

    /// Whether the model wants BOS at the start of a prompt (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the model wants EOS at the end of an input (`tokenizer.ggml.add_eos_token`): embedding models'
    /// inputs, as llama.cpp's `add_special` adds it.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether a space is put before text at the start and after special tokens
    /// (`tokenizer.ggml.add_space_prefix`; false for Gemma 3).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The id of the token with exactly this text (as stored: SentencePiece spaces are U+2581, BPE
    /// texts are in the byte alphabet, a space being U+0120).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.vocab.id_of(piece)
    }

    /// The stored text of a token.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.vocab.piece(id)
    }

    pub fn token_attrs(&self, id: u32) -> Option<TokenAttrs> {
        self.vocab.attrs(id)
    }

    /// Whether generating this token ends generation: EOS, end-of-turn and the other tokens llama.cpp
    /// counts as end-of-generation.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    pub fn end_of_generation_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.end_of_generation.iter().copied()
    }

    /// The ids of a whole model input: [`Tokenizer::encode`] with the BOS and the EOS the model asks for
    /// ([`Tokenizer::add_bos`], [`Tokenizer::add_eos`]), as llama.cpp's `add_special`. Embedding models' inputs
    /// are encoded this way.
    pub fn encode_input(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut ids = self.encode(text, self.add_bos, parse_special);
        if self.add_eos {
            ids.extend(self.special_ids.eos);
        }
        ids
    }

    /// Text → token ids. `add_bos` puts the BOS id first (pass [`Tokenizer::add_bos`] for the model's
    /// own preference); `parse_special` lets control tokens such as `<start_of_turn>` be recognised in
    /// the text (user-defined tokens are recognised either way).
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(bos) = self.special_ids.bos {
                ids.push(bos);
            }
        }
        let mut escaped = String::new();
        let mut after_special = true;
        for fragment in self.special_matcher.partition(text, &self.vocab, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Fragment::Text { start, end } => {
                    let fragment = text.get(start..end).unwrap_or_default();
                    if let TokenizerModel::Bpe(bpe) = &self.model {
                        bpe.encode(&self.vocab, fragment, &mut ids);
                        after_special = false;
                        continue;
                    }
                    escaped.clear();
                    if self.add_space_prefix && after_special {
                        escaped.push(ESCAPED_SPACE);
                    }
                    for c in fragment.chars() {
                        escaped.push(if c == ' ' { ESCAPED_SPACE } else { c });
                    }
                    if let TokenizerModel::Spm(spm) = &self.model {
                        spm.encode(&self.vocab, &escaped, &mut ids);
                    }
                    after_special = false;
                }
            }
        }
        ids
    }

    /// The bytes a token decodes to: U+2581 (SentencePiece) becomes a space, a BPE text's characters
    /// the bytes they stand for, `<0xHH>` the byte itself, user-defined tokens their text; control and
    /// unknown tokens are empty unless `render_special`. `None` for an id outside the vocabulary.
    pub fn token_piece_bytes(&self, id: u32, render_special: bool) -> Option<&[u8]> {
        let attrs = self.vocab.attrs(id)?;
        if !render_special && attrs.intersects(TokenAttrs::CONTROL | TokenAttrs::UNKNOWN) {
            return Some(&[]);
        }
        self.pieces.get(id)
    }

    /// Every token's text as grammars match it, built once (about 0.1 s for a 262k vocabulary).
    pub fn grammar_vocab(&self) -> Arc<GrammarVocab> {
        self.grammar_vocab.get_or_init(|| Arc::new(GrammarVocab::new(self))).clone()
    }

    /// Token ids → text. Byte tokens that do not form valid UTF-8, and ids outside the vocabulary,
    /// become U+FFFD.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            self.append_piece(id, render_special, i == 0, &mut bytes);
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        }
    }

    /// A decoder for streaming: push ids one by one, get back only complete characters.
    pub fn stream_decoder(&self, render_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::with_special_rendering(self, render_special)
    }

    /// Appends one token's bytes. With a space prefix configured, llama.cpp drops one leading space
    /// from the first token (the space encoding added).
    fn append_piece(&self, id: u32, render_special: bool, first: bool, out: &mut Vec<u8>) {
        let Some(piece) = self.token_piece_bytes(id, render_special) else {
            out.extend_from_slice(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0u8; 4]).as_bytes());
            return;
        };
        let piece = match piece {
            [b' ', rest @ ..] if first && self.add_space_prefix => rest,
            _ => piece,
        };
        out.extend_from_slice(piece);
    }
}

/// Builds the end-of-generation set as llama.cpp does (FIM pad/repo/separator, tokens with an
/// end-of-generation text — promoted to control — then EOS, EOT, EOM), including its fix-ups for
/// vocabularies where `<|end|>` or `</s>` are ordinary tokens.
fn end_of_generation_ids(vocab: &mut Vocab, ids: &SpecialTokenIds) -> BTreeSet<u32> {
    let mut eog: BTreeSet<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep].into_iter().flatten().collect();
    for text in END_OF_GENERATION_TEXTS {
        if let Some(id) = vocab.id_of(text) {
            eog.insert(id);
            vocab.add_attrs(id, TokenAttrs::CONTROL);
        }
    }
    // gpt-oss channel markers are always rendered.
    for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(id) = vocab.id_of(text) {
            vocab.set_attrs(id, TokenAttrs::USER_DEFINED);
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());

    let eog_with_text =
        |vocab: &Vocab, eog: &BTreeSet<u32>, text: &str| vocab.id_of(text).filter(|id| eog.contains(id));
    // Harmony / solar-open: `<|end|>` ends a message there, not generation.
    let has_return = eog_with_text(vocab, &eog, "<|return|>").is_some();
    let has_call =
        eog_with_text(vocab, &eog, "<|call|>").is_some() || eog_with_text(vocab, &eog, "<|calls|>").is_some();
    let has_flush = eog_with_text(vocab, &eog, "<|flush|>").is_some();
    if let Some(end) = eog_with_text(vocab, &eog, "<|end|>") {
        if has_call && (has_return || has_flush) {
            eog.remove(&end);
            vocab.set_attrs(end, TokenAttrs::USER_DEFINED);
        }
    }
    // Gemma 4 / PLaMo: `</s>` is an ordinary token when these markers exist.
    let has_normal_s_marker = eog_with_text(vocab, &eog, "<|tool_response>").is_some()
        || eog_with_text(vocab, &eog, "<|plamo:eos|>").is_some();
    if let Some(s) = eog_with_text(vocab, &eog, "</s>") {
        if has_normal_s_marker {
            eog.remove(&s);
            vocab.set_attrs(s, TokenAttrs::NORMAL);
        }
    }
    eog
}

/// llama.cpp's per-model lstrip/rstrip flags, chosen by model name, pre-tokenizer or architecture.
fn apply_model_strip_flags(
    vocab: &mut Vocab,
    special_matcher: &SpecialTokenMatcher,
    general_name: &Option<String>,
    tokenizer_pre: &Option<String>,
    general_architecture: &Option<String>,
) {
    let contains_any =
        |s: &Option<String>, needles: &[&str]| s.as_deref().is_some_and(|s| needles.iter().any(|n| s.contains(n)));
    let name = general_name.as_ref().map(|s| s.to_ascii_lowercase());
    if contains_any(tokenizer_pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"])
        || contains_any(general_architecture, &["nomic-bert-moe", "jina-bert-v3"])
    {
        if let Some(id) = vocab.id_of("<mask>") {
            vocab.add_attrs(id, TokenAttrs::LSTRIP);
        }
    } else if contains_any(&name, &["phi-3", "phi3"]) {
        for id in special_matcher.ids() {
            vocab.add_attrs(id, TokenAttrs::RSTRIP);
        }
        if let Some(id) = vocab.id_of("</s>") {
            vocab.add_attrs(id, TokenAttrs::RSTRIP);
        }
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(id) = vocab.id_of(text) {
                let attrs = vocab.attrs(id).unwrap_or_default().without(TokenAttrs::RSTRIP);
                vocab.set_attrs(id, attrs);
            }
        }
    } else if contains_any(&name, &["modern-bert"]) {
        if let Some(id) = vocab.id_of("[MASK]") {
            vocab.add_attrs(id, TokenAttrs::LSTRIP);
        }
    }
}

/// Each token's bytes with specials shown (what llama.cpp's piece cache holds).
fn render_pieces(vocab: &Vocab, model: &TokenizerModel) -> Result<PieceBytes, TokenizerError> {
    let mut bytes = Vec::with_capacity(vocab.len() * 8);
    let mut ends = Vec::with_capacity(vocab.len());
    for (id, piece, attrs) in vocab.iter() {
        if attrs.intersects(TokenAttrs::UNKNOWN | TokenAttrs::CONTROL | TokenAttrs::USER_DEFINED) {
            bytes.extend_from_slice(piece.as_bytes());
        } else if let (true, TokenizerModel::Bpe(bpe)) = (attrs.intersects(TokenAttrs::NORMAL), model) {
            bpe.alphabet().decode(piece, &mut bytes);
        } else if attrs.intersects(TokenAttrs::NORMAL) {
            let unescaped: Cow<'_, str> = if piece.contains(ESCAPED_SPACE) {
                Cow::Owned(piece.replace(ESCAPED_SPACE, " "))
            } else {
                Cow::Borrowed(piece)
            };
            bytes.extend_from_slice(unescaped.as_bytes());
        } else if attrs.intersects(TokenAttrs::BYTE) {
            bytes.push(
                parse_byte_token(piece).ok_or_else(|| TokenizerError::BadByteToken { id, text: piece.to_owned() })?,
            );
        }
        // Unused and undefined tokens render as nothing.
        ends.push(bytes.len());
    }
    Ok(PieceBytes { bytes, ends })
}

/// `<0xHH>` → the byte.
fn parse_byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;
