//! The SentencePiece `ModelProto` (gemma.cpp's tokenizer blob) from a GGUF vocabulary, and back.
//!
//! llama.cpp's converter copies SentencePiece's pieces, scores and piece types (same numbering) into
//! `tokenizer.ggml.*`, with three changes that are undone here (checked against Gemma 3's own `tokenizer.model`):
//! - pieces the Hugging Face tokenizer calls special become `control` (SentencePiece has only `<pad>`, `<eos>` and
//!   `<bos>` as control, `<unk>` as unknown, and `<mask>`, `<start_of_turn>`, `<unusedN>`... as user-defined);
//! - every control and user-defined piece gets the score -1000 (SentencePiece: 0);
//! - user-defined pieces have `▁` turned back into spaces (`▁▁` is stored as two spaces).
//!
//! What it drops entirely is the trainer and normalizer settings, which are fixed for Gemma 3 and are restored as
//! Gemma 3's `tokenizer.model` has them: a BPE model with byte fallback, digits split, the `identity` normalizer
//! (no charsmap), no dummy prefix and no whitespace collapsing.

use gemma_io::sbs::sentencepiece_model::{ModelType, NormalizerSpec, PieceType, SentencePiece, TrainerSpec};
use gemma_io::sbs::ModelProto;
use gemma_io::{GgufFile, MetaArray, MetaValue, StringList};

use super::ConvertError;

fn meta_id(gguf: &GgufFile, key: &str) -> Result<Option<i32>, ConvertError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|x| i32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| ConvertError::BadMetadata { key: key.into(), what: format!("not a token id: {v}") }),
    }
}

// llama.cpp's token types, its score for special tokens and SentencePiece's space marker: one definition, the
// tokenizer's, which applies the same rules in the other direction.
use crate::tokenizer::sentencepiece_proto::{
    gguf_vocab_entry, BYTE as GGML_BYTE, CONTROL as GGML_CONTROL, NORMAL as GGML_NORMAL, SPACE_MARK,
    SPECIAL_SCORE as GGML_SPECIAL_SCORE, UNKNOWN as GGML_UNKNOWN, UNUSED as GGML_UNUSED,
    USER_DEFINED as GGML_USER_DEFINED,
};

/// The numbers of array `key`, if present, by `convert`; an error when it is not an array of numbers.
fn numbers<T>(
    gguf: &GgufFile,
    key: &str,
    convert: fn(&MetaArray) -> Option<Vec<T>>,
) -> Result<Option<Vec<T>>, ConvertError> {
    let not_numbers = || ConvertError::Tokenizer(format!("{key} is not an array of numbers"));
    gguf.get(key).map(|v| v.as_array().and_then(convert).ok_or_else(not_numbers)).transpose()
}

/// Synthesizes the SentencePiece model of a GGUF file's `llama` (SentencePiece) vocabulary.
pub fn model_proto_from_gguf(gguf: &GgufFile) -> Result<ModelProto, ConvertError> {
    let model = gguf.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
    if model != "llama" {
        return Err(ConvertError::Tokenizer(format!(
            "tokenizer.ggml.model is '{model}'; only SentencePiece ('llama') vocabularies become a ModelProto"
        )));
    }
    let tokens = gguf
        .get("tokenizer.ggml.tokens")
        .ok_or_else(|| ConvertError::Tokenizer("tokenizer.ggml.tokens is missing".into()))?
        .as_array()
        .and_then(MetaArray::strings)
        .ok_or_else(|| ConvertError::Tokenizer("tokenizer.ggml.tokens is not an array of strings".into()))?;
    let scores = numbers(gguf, "tokenizer.ggml.scores", MetaArray::to_f32s)?;
    let types = numbers(gguf, "tokenizer.ggml.token_type", MetaArray::to_i64s)?;
    for (key, len) in [("scores", scores.as_ref().map(Vec::len)), ("token_type", types.as_ref().map(Vec::len))] {
        if let Some(len) = len.filter(|&l| l != tokens.len()) {
            return Err(ConvertError::Tokenizer(format!(
                "tokenizer.ggml.{key} has {len} entries for {} tokens",
                tokens.len()
            )));
        }
    }
    let id = |key: &str, default: i32| -> Result<i32, ConvertError> {
        Ok(meta_id(gguf, &format!("tokenizer.ggml.{key}"))?.unwrap_or(default))
    };
    let (unk, bos, eos, pad) =
        (id("unknown_token_id", 3)?, id("bos_token_id", 2)?, id("eos_token_id", 1)?, id("padding_token_id", 0)?);
    let mut pieces = Vec::with_capacity(tokens.len());
    for (i, piece) in tokens.iter().enumerate() {
        let score = scores.as_ref().map_or(0.0, |s| s[i]);
        let ggml_type = types.as_ref().map_or(i64::from(GGML_NORMAL), |t| t[i]);
        let id = i as i64;
        let ty = match i32::try_from(ggml_type).unwrap_or(-1) {
            // 0 is llama.cpp's "undefined", which its SentencePiece path never writes.
            0 | GGML_NORMAL => PieceType::Normal,
            GGML_UNKNOWN => PieceType::Unknown,
            GGML_CONTROL if id == i64::from(unk) => PieceType::Unknown,
            GGML_CONTROL if [bos, eos, pad].iter().any(|&s| i64::from(s) == id) => PieceType::Control,
            GGML_CONTROL | GGML_USER_DEFINED => PieceType::UserDefined,
            GGML_UNUSED => PieceType::Unused,
            GGML_BYTE => PieceType::Byte,
            _ => return Err(ConvertError::Tokenizer(format!("token {i} has an unknown type {ggml_type}"))),
        };
        let piece = if ggml_type == i64::from(GGML_USER_DEFINED) {
            piece.replace(' ', SPACE_MARK.encode_utf8(&mut [0; 4]))
        } else {
            piece.to_string()
        };
        let special = matches!(ty, PieceType::Control | PieceType::Unknown | PieceType::UserDefined);
        let score = if special && score == GGML_SPECIAL_SCORE { 0.0 } else { score };
        pieces.push(SentencePiece {
            piece: Some(piece),
            score: Some(score),
            // SentencePiece leaves the default (normal) type unset.
            r#type: (ty != PieceType::Normal).then_some(ty as i32),
        });
    }
    let piece_at = |id: i32| usize::try_from(id).ok().and_then(|i| tokens.get(i));
    for (what, v) in [("unknown", unk), ("bos", bos), ("eos", eos)] {
        if piece_at(v).is_none() {
            return Err(ConvertError::Tokenizer(format!("{what} id {v} is outside the vocabulary")));
        }
    }
    let vocab_size = i32::try_from(tokens.len())
        .map_err(|_| ConvertError::Tokenizer(format!("{} tokens are too many", tokens.len())))?;
    // Pieces other than SentencePiece's defaults are recorded, as the trainer does.
    let named = |id: i32, default: &str| piece_at(id).filter(|p| *p != default).map(str::to_string);
    let trainer_spec = TrainerSpec {
        model_type: Some(ModelType::Bpe as i32),
        vocab_size: Some(vocab_size),
        input_format: Some("tsv".into()),
        split_by_unicode_script: Some(true),
        split_by_whitespace: Some(false),
        split_by_number: Some(true),
        split_digits: Some(true),
        allow_whitespace_only_pieces: Some(true),
        byte_fallback: Some(true),
        unk_id: Some(unk),
        bos_id: Some(bos),
        eos_id: Some(eos),
        pad_id: Some(pad),
        unk_piece: named(unk, "<unk>"),
        bos_piece: piece_at(bos).map(str::to_string),
        eos_piece: piece_at(eos).map(str::to_string),
        pad_piece: named(pad, "<pad>"),
        seed_sentencepieces_file: Some(String::new()),
        ..TrainerSpec::default()
    };
    let add_space_prefix = gguf.get("tokenizer.ggml.add_space_prefix").and_then(MetaValue::as_bool).unwrap_or(false);
    let normalizer_spec = NormalizerSpec {
        name: Some("identity".into()),
        precompiled_charsmap: Some(Vec::new()),
        add_dummy_prefix: Some(add_space_prefix),
        remove_extra_whitespaces: Some(false),
        escape_whitespaces: None,
        normalization_rule_tsv: None,
    };
    Ok(ModelProto {
        pieces,
        trainer_spec: Some(trainer_spec),
        normalizer_spec: Some(normalizer_spec),
        self_test_data: None,
        denormalizer_spec: None,
    })
}

/// The `tokenizer.ggml.*` metadata llama.cpp expects for a SentencePiece vocabulary, from a `ModelProto`.
pub fn gguf_vocab_metadata(proto: &ModelProto) -> Result<Vec<(String, MetaValue)>, ConvertError> {
    if proto.pieces.is_empty() {
        return Err(ConvertError::Tokenizer("the ModelProto has no pieces".into()));
    }
    let trainer = proto.trainer_spec.clone().unwrap_or_default();
    if trainer.model_type() != ModelType::Bpe && trainer.model_type() != ModelType::Unigram {
        return Err(ConvertError::Tokenizer(format!(
            "SentencePiece model type {:?} has no llama.cpp equivalent",
            trainer.model_type()
        )));
    }
    let mut tokens = StringList::new();
    let mut scores = Vec::with_capacity(proto.pieces.len());
    let mut types = Vec::with_capacity(proto.pieces.len());
    for p in &proto.pieces {
        let (piece, score, ty) = gguf_vocab_entry(p);
        tokens.push(&piece);
        scores.push(score);
        types.push(ty);
    }
    let add_space_prefix = proto.normalizer_spec.as_ref().is_some_and(|n| n.add_dummy_prefix());
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), MetaValue::String("default".into())),
        ("tokenizer.ggml.tokens".to_string(), MetaValue::Array(MetaArray::String(tokens))),
        ("tokenizer.ggml.scores".to_string(), MetaValue::Array(MetaArray::F32(scores))),
        ("tokenizer.ggml.token_type".to_string(), MetaValue::Array(MetaArray::I32(types))),
    ];
    let n = proto.pieces.len();
    for (key, id) in [
        ("bos_token_id", trainer.bos_id()),
        ("eos_token_id", trainer.eos_id()),
        ("unknown_token_id", trainer.unk_id()),
        ("padding_token_id", trainer.pad_id()),
    ] {
        // SentencePiece marks a disabled special token with -1; llama.cpp then has no such key.
        if let Ok(id) = u32::try_from(id) {
            if id as usize >= n {
                return Err(ConvertError::Tokenizer(format!("{key} {id} is outside the {n} pieces")));
            }
            out.push((format!("tokenizer.ggml.{key}"), MetaValue::U32(id)));
        }
    }
    out.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(true)));
    out.push(("tokenizer.ggml.add_sep_token".into(), MetaValue::Bool(false)));
    out.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(false)));
    out.push(("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(add_space_prefix)));
    Ok(out)
}
