//! A tokenizer from a serialized SentencePiece model (`ModelProto`): the `tokenizer` blob of a gemma.cpp SBS
//! file, or a checkpoint's `tokenizer.model`.
//!
//! The model is read as llama.cpp's converter writes it into a GGUF vocabulary for the `llama` (SPM)
//! tokenizer, so that the ids are the GGUF path's: the pieces in id order with their scores and types, except
//! that user-defined pieces the Hugging Face tokenizer calls special (`<start_of_turn>`, `<end_of_turn>`,
//! `<mask>`, `<unusedN>`) and the unknown piece become control tokens, control and user-defined tokens score
//! -1000, and user-defined pieces have `▁` turned back into spaces. The trainer spec gives the special ids,
//! and `add_dummy_prefix` is `add_space_prefix`.

use gemma_io::sbs::sentencepiece_model::{ModelType, NormalizerSpec, PieceType, SentencePiece, TrainerSpec};
use gemma_io::sbs::ModelProto;

use super::{Tokenizer, TokenizerError, TokenizerSource, SPECIAL_ID_KEYS};

/// llama.cpp's token types (`LLAMA_TOKEN_TYPE_*`).
pub(crate) const NORMAL: i32 = 1;
pub(crate) const UNKNOWN: i32 = 2;
pub(crate) const CONTROL: i32 = 3;
pub(crate) const USER_DEFINED: i32 = 4;
pub(crate) const UNUSED: i32 = 5;
pub(crate) const BYTE: i32 = 6;
/// The score llama.cpp's converter gives control and user-defined tokens.
pub(crate) const SPECIAL_SCORE: f32 = -1000.0;
/// SentencePiece's space marker.
pub(crate) const SPACE_MARK: char = '\u{2581}';

/// Gemma's user-defined pieces that its Hugging Face tokenizer lists as special, which llama.cpp's converter
/// therefore writes as control tokens (matched only when special tokens are parsed).
fn is_hf_special(piece: &str) -> bool {
    matches!(piece, "<mask>" | "<start_of_turn>" | "<end_of_turn>")
        || piece
            .strip_prefix("<unused")
            .and_then(|r| r.strip_suffix('>'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The GGUF token type llama.cpp's converter gives a piece (it takes the unknown piece as control, as the
/// Hugging Face tokenizer lists it as special).
fn gguf_token_type(ty: PieceType, piece: &str) -> i32 {
    match ty {
        PieceType::Normal => NORMAL,
        PieceType::Unknown | PieceType::Control => CONTROL,
        PieceType::UserDefined if is_hf_special(piece) => CONTROL,
        PieceType::UserDefined => USER_DEFINED,
        PieceType::Unused => UNUSED,
        PieceType::Byte => BYTE,
    }
}

/// What llama.cpp's converter writes into a GGUF vocabulary for one piece: its text, score and token type.
pub(crate) fn gguf_vocab_entry(p: &SentencePiece) -> (String, f32, i32) {
    let ty = gguf_token_type(p.r#type(), p.piece());
    // User-defined tokens are matched as raw text, so llama.cpp stores their spaces unescaped.
    let text = if ty == USER_DEFINED { p.piece().replace(SPACE_MARK, " ") } else { p.piece().to_string() };
    let score = if matches!(ty, CONTROL | USER_DEFINED) { SPECIAL_SCORE } else { p.score() };
    (text, score, ty)
}

impl Tokenizer {
    /// Builds the tokenizer of a SentencePiece model. Only BPE-type models are read (Gemma's): llama.cpp's
    /// SPM algorithm merges by score, which is SentencePiece's BPE, not its unigram search.
    pub fn from_sentencepiece(proto: &ModelProto) -> Result<Tokenizer, TokenizerError> {
        let default_trainer = TrainerSpec::default();
        let trainer = proto.trainer_spec.as_ref().unwrap_or(&default_trainer);
        if trainer.model_type() != ModelType::Bpe {
            return Err(TokenizerError::UnsupportedModel(format!(
                "SentencePiece {:?} (only BPE models are supported)",
                trainer.model_type()
            )));
        }
        let default_normalizer = NormalizerSpec::default();
        let normalizer = proto.normalizer_spec.as_ref().unwrap_or(&default_normalizer);
        let mut tokens = gemma_io::StringList::new();
        let mut scores = Vec::with_capacity(proto.pieces.len());
        let mut token_types = Vec::with_capacity(proto.pieces.len());
        for p in &proto.pieces {
            let (text, score, ty) = gguf_vocab_entry(p);
            tokens.push(&text);
            scores.push(score);
            token_types.push(i64::from(ty));
        }
        // A negative id means "none": made out of range, as the GGUF reader does.
        let id = |v: i32| u64::try_from(v).unwrap_or(u64::MAX);
        let key = |name: &str| SPECIAL_ID_KEYS.iter().position(|(k, _)| *k == name);
        let special_ids = [
            ("tokenizer.ggml.bos_token_id", trainer.bos_id()),
            ("tokenizer.ggml.eos_token_id", trainer.eos_id()),
            ("tokenizer.ggml.unknown_token_id", trainer.unk_id()),
            ("tokenizer.ggml.padding_token_id", trainer.pad_id()),
        ]
        .into_iter()
        .filter_map(|(name, v)| key(name).map(|k| (k, id(v))))
        .collect();
        Tokenizer::from_source(TokenizerSource {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(token_types),
            special_ids,
            // SentencePiece models do not say; Gemma prompts start with BOS (gemma.cpp adds it too).
            add_bos: Some(true),
            add_eos: None,
            add_space_prefix: Some(normalizer.add_dummy_prefix()),
            general_name: None,
            general_architecture: None,
            tokenizer_pre: None,
            merges: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use gemma_io::sbs::sentencepiece_model::{PieceType, SentencePiece};

    use super::*;

    fn piece(text: &str, score: f32, ty: PieceType) -> SentencePiece {
        SentencePiece { piece: Some(text.into()), score: Some(score), r#type: Some(ty as i32) }
    }

    /// A tiny BPE model: specials, two byte pieces, and pieces whose scores decide the merges.
    fn tiny(model_type: ModelType, dummy_prefix: bool) -> ModelProto {
        let mut pieces = vec![
            piece("<pad>", 0.0, PieceType::Control),
            piece("<eos>", 0.0, PieceType::Control),
            piece("<bos>", 0.0, PieceType::Control),
            piece("<unk>", 0.0, PieceType::Unknown),
            piece("<0x21>", 0.0, PieceType::Byte),
            piece("<0x3F>", 0.0, PieceType::Byte),
        ];
        for (text, score) in [("a", -1.0), ("b", -2.0), ("ab", -0.5), ("▁", -3.0), ("▁ab", -0.1)] {
            pieces.push(piece(text, score, PieceType::Normal));
        }
        ModelProto {
            pieces,
            trainer_spec: Some(TrainerSpec {
                model_type: Some(model_type as i32),
                byte_fallback: Some(true),
                bos_id: Some(2),
                eos_id: Some(1),
                unk_id: Some(3),
                pad_id: Some(0),
                ..TrainerSpec::default()
            }),
            normalizer_spec: Some(NormalizerSpec { add_dummy_prefix: Some(dummy_prefix), ..NormalizerSpec::default() }),
            self_test_data: None,
            denormalizer_spec: None,
        }
    }

    #[test]
    fn ids_roles_and_byte_fallback_come_from_the_proto() {
        let tok = Tokenizer::from_sentencepiece(&tiny(ModelType::Bpe, false)).unwrap();
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.special_ids().unk, tok.special_ids().pad),
            (Some(2), Some(1), Some(3), Some(0))
        );
        assert!(tok.add_bos() && !tok.add_space_prefix());
        // "ab" merges (score -0.5); " ab" becomes "▁ab"; "!" has no piece but a byte piece.
        assert_eq!(tok.encode("ab ab!", true, false), vec![2, 8, 10, 4]);
        assert_eq!(tok.decode(&[8, 10, 4], false), "ab ab!");
        let prefixed = Tokenizer::from_sentencepiece(&tiny(ModelType::Bpe, true)).unwrap();
        assert_eq!(prefixed.encode("ab", false, false), vec![10]);
    }

    #[test]
    fn unigram_models_are_refused() {
        let err = Tokenizer::from_sentencepiece(&tiny(ModelType::Unigram, false)).unwrap_err().to_string();
        assert!(err.contains("Unigram"), "{err}");
    }
}
