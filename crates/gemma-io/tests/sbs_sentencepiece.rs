//! The SentencePiece `ModelProto` of the tokenizer blob: exact protobuf bytes for a small model, an encode/decode
//! round trip of a Gemma-like model, and (opt-in, needs the file) byte-identical re-encoding of Gemma 3's own
//! `tokenizer.model`.

use gemma_io::sbs::sentencepiece_model::{
    ModelProto, ModelType, NormalizerSpec, PieceType, SelfTestData, SelfTestSample, SentencePiece, TrainerSpec,
};

fn piece(p: &str, score: f32, t: PieceType) -> SentencePiece {
    SentencePiece { piece: Some(p.into()), score: Some(score), r#type: Some(t as i32) }
}

#[test]
fn exact_wire_bytes() {
    let m = ModelProto { pieces: vec![piece("a", 0.0, PieceType::Normal)], ..ModelProto::default() };
    // field 1 (pieces), length 10: { field 1 "a", field 2 fixed32 0.0, field 3 varint 1 }
    assert_eq!(m.encode_bytes(), [0x0A, 10, 0x0A, 1, b'a', 0x15, 0, 0, 0, 0, 0x18, 1]);

    let t = TrainerSpec {
        model_type: Some(ModelType::Bpe as i32),
        byte_fallback: Some(true),
        pad_id: Some(0),
        ..TrainerSpec::default()
    };
    let m = ModelProto { trainer_spec: Some(t), ..ModelProto::default() };
    // field 2, length 8: { 3: varint 2, 35: varint 1 (tag 35<<3 = 280 = 0x98 0x02), 43: varint 0 (0xD8 0x02) }
    assert_eq!(m.encode_bytes(), [0x12, 8, 0x18, 2, 0x98, 0x02, 1, 0xD8, 0x02, 0]);
    // Absent optional fields take the schema's defaults.
    let back = ModelProto::decode_bytes(&m.encode_bytes()).unwrap();
    let t = back.trainer_spec.unwrap();
    assert_eq!((t.vocab_size(), t.bos_id(), t.eos_id(), t.unk_id(), t.pad_id()), (8000, 1, 2, 0, 0));
    assert_eq!(t.model_type(), ModelType::Bpe);
    assert!(t.hard_vocab_limit() && t.split_by_whitespace() && t.byte_fallback());
    assert_eq!(SentencePiece::default().r#type(), PieceType::Normal);
}

/// A model shaped like Gemma's: control tokens, byte pieces, user-defined turn markers, normal pieces.
fn gemma_like() -> ModelProto {
    let mut pieces = vec![
        piece("<pad>", 0.0, PieceType::Control),
        piece("<eos>", 0.0, PieceType::Control),
        piece("<bos>", 0.0, PieceType::Control),
        piece("<unk>", 0.0, PieceType::Unknown),
        piece("<start_of_turn>", 0.0, PieceType::UserDefined),
        piece("<end_of_turn>", 0.0, PieceType::UserDefined),
    ];
    for b in 0..=255u8 {
        pieces.push(piece(&format!("<0x{b:02X}>"), 0.0, PieceType::Byte));
    }
    for (i, p) in ["▁", "▁the", "ing", "▁Gemma", "日本", "\u{1F600}"].iter().enumerate() {
        pieces.push(piece(p, -(i as f32) - 0.5, PieceType::Normal));
    }
    ModelProto {
        pieces,
        trainer_spec: Some(TrainerSpec {
            model_type: Some(ModelType::Bpe as i32),
            vocab_size: Some(262_144),
            byte_fallback: Some(true),
            split_digits: Some(true),
            unk_id: Some(3),
            bos_id: Some(2),
            eos_id: Some(1),
            pad_id: Some(0),
            user_defined_symbols: vec!["<start_of_turn>".into(), "<end_of_turn>".into()],
            character_coverage: Some(0.99995),
            input_sentence_size: Some(10_000_000_000),
            ..TrainerSpec::default()
        }),
        normalizer_spec: Some(NormalizerSpec {
            name: Some("identity".into()),
            precompiled_charsmap: Some(Vec::new()),
            add_dummy_prefix: Some(false),
            remove_extra_whitespaces: Some(false),
            escape_whitespaces: Some(true),
            normalization_rule_tsv: None,
        }),
        self_test_data: Some(SelfTestData {
            samples: vec![SelfTestSample { input: Some("Hello".into()), expected: Some("▁Hello".into()) }],
        }),
        denormalizer_spec: Some(NormalizerSpec { name: Some("identity".into()), ..NormalizerSpec::default() }),
    }
}

#[test]
fn encode_decode_round_trip() {
    let m = gemma_like();
    let bytes = m.encode_bytes();
    let back = ModelProto::decode_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.encode_bytes(), bytes, "re-encoding is byte-identical");
    assert_eq!(back.pieces[4].r#type(), PieceType::UserDefined);
    assert_eq!(back.pieces[6].piece(), "<0x00>");
    let n = back.normalizer_spec.unwrap();
    assert!(!n.add_dummy_prefix() && n.escape_whitespaces());

    // Truncated protos are decode errors, not panics.
    for len in 0..bytes.len().min(600) {
        let _ = ModelProto::decode_bytes(&bytes[..len]);
    }
    assert!(ModelProto::decode_bytes(&bytes[..bytes.len() - 1]).is_err());
}

// Gemma 3's real `tokenizer.model` (fetched with pip) is decoded, compared field by field and re-encoded in
// `gemma-core/tests/convert.rs`, which also checks our synthesized proto against it.
