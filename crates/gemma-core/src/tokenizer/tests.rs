//! Behaviour on small hand-built vocabularies, where every expected id can be worked out by hand.

use super::*;

const PAD: u32 = 0;
const EOS: u32 = 1;
const BOS: u32 = 2;
const UNK: u32 = 3;
/// Byte tokens `<0x00>`..`<0xFF>` occupy ids 4..260.
const FIRST_BYTE: u32 = 4;

fn byte_id(byte: u8) -> u32 {
    FIRST_BYTE + byte as u32
}

/// Index of a key in `SPECIAL_ID_KEYS`.
fn key_index(key: &str) -> usize {
    SPECIAL_ID_KEYS.iter().position(|(k, _)| *k == key).unwrap_or(usize::MAX)
}

/// `<pad> <eos> <bos> <unk>`, the 256 byte tokens, then `specials` (text, GGUF token type), then
/// `normal` (text, score). Ids follow that order.
fn source(specials: &[(&str, i64)], normal: &[(&str, f32)]) -> TokenizerSource {
    let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"].map(String::from).to_vec();
    let mut scores = vec![0.0f32; 4];
    let mut types = vec![3i64, 3, 3, 2];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for &(text, token_type) in specials {
        tokens.push(text.to_owned());
        scores.push(-1000.0);
        types.push(token_type);
    }
    for &(text, score) in normal {
        tokens.push(text.to_owned());
        scores.push(score);
        types.push(1);
    }
    TokenizerSource {
        model: "llama".to_owned(),
        tokens: tokens.iter().collect(),
        scores: Some(scores),
        token_types: Some(types),
        special_ids: vec![
            (key_index("tokenizer.ggml.bos_token_id"), BOS as u64),
            (key_index("tokenizer.ggml.eos_token_id"), EOS as u64),
            (key_index("tokenizer.ggml.unknown_token_id"), UNK as u64),
            (key_index("tokenizer.ggml.padding_token_id"), PAD as u64),
        ],
        add_bos: Some(true),
        add_eos: None,
        add_space_prefix: Some(false),
        ..TokenizerSource::default()
    }
}

fn build(specials: &[(&str, i64)], normal: &[(&str, f32)]) -> Tokenizer {
    match Tokenizer::from_source(source(specials, normal)) {
        Ok(t) => t,
        Err(e) => panic!("tiny vocabulary failed to load: {e}"),
    }
}

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text).unwrap_or_else(|| panic!("'{text}' is not in the test vocabulary"))
}

fn ids(t: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts.iter().map(|s| id(t, s)).collect()
}

#[test]
fn highest_scoring_pair_merges_first() {
    let t = build(&[], &[("a", -1.0), ("b", -1.0), ("c", -1.0), ("ab", -2.0), ("bc", -1.5)]);
    assert_eq!(t.encode("abc", false, false), ids(&t, &["a", "bc"]));

    let t = build(&[], &[("a", -1.0), ("b", -1.0), ("c", -1.0), ("ab", -1.5), ("bc", -2.0)]);
    assert_eq!(t.encode("abc", false, false), ids(&t, &["ab", "c"]));
}

#[test]
fn equal_scores_merge_leftmost_first() {
    let t = build(&[], &[("a", -1.0), ("b", -1.0), ("c", -1.0), ("ab", -2.0), ("bc", -2.0)]);
    assert_eq!(t.encode("abc", false, false), ids(&t, &["ab", "c"]));
}

#[test]
fn greedy_merge_order_decides_the_segmentation() {
    // "abcd" is a token, but only reachable as "ab" + "cd". When "bc" scores best it is merged first,
    // and neither "abc" nor "bcd" exists, so the whole-word token is never formed.
    let normal = |bc: f32| {
        vec![("a", -1.0), ("b", -1.0), ("c", -1.0), ("d", -1.0), ("ab", -1.0), ("cd", -1.0), ("bc", bc), ("abcd", -0.1)]
    };
    let t = build(&[], &normal(-0.5));
    assert_eq!(t.encode("abcd", false, false), ids(&t, &["a", "bc", "d"]));
    let t = build(&[], &normal(-2.0));
    assert_eq!(t.encode("abcd", false, false), ids(&t, &["abcd"]));
    // Merges continue through newly formed symbols: "ab" + "c" → "abc" after "ab" formed.
    let t = build(&[], &[("a", -1.0), ("b", -1.0), ("c", -1.0), ("ab", -1.0), ("abc", -9.0)]);
    assert_eq!(t.encode("abcabc", false, false), ids(&t, &["abc", "abc"]));
}

#[test]
fn spaces_are_escaped_and_optionally_prefixed() {
    let normal = [("a", -1.0), ("▁", -2.0), ("▁a", -1.5)];
    let t = build(&[], &normal);
    assert_eq!(t.encode("a a", false, false), ids(&t, &["a", "▁a"]));
    assert_eq!(t.encode("  a", false, false), ids(&t, &["▁", "▁a"]));
    assert_eq!(t.decode(&t.encode("  a", false, false), false), "  a");

    let mut with_prefix = source(&[], &normal);
    with_prefix.add_space_prefix = Some(true);
    let t = Tokenizer::from_source(with_prefix).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.encode("a", false, false), ids(&t, &["▁a"]));
    // The prefix space is dropped again when decoding the first token.
    assert_eq!(t.decode(&t.encode("a a", false, false), false), "a a");
}

#[test]
fn characters_outside_the_vocabulary_fall_back_to_bytes() {
    let t = build(&[], &[("a", -1.0), ("é", -1.0)]);
    assert_eq!(t.encode("aé", false, false), ids(&t, &["a", "é"]));
    assert_eq!(t.encode("aè", false, false), vec![id(&t, "a"), byte_id(0xC3), byte_id(0xA8)]);
    let robot = "\u{1F916}";
    let expected: Vec<u32> = robot.bytes().map(byte_id).collect();
    assert_eq!(t.encode(robot, false, false), expected);
    assert_eq!(t.decode(&expected, false), robot);
    // Control characters too.
    assert_eq!(t.encode("\u{7}", false, false), vec![byte_id(7)]);
}

#[test]
fn bos_is_added_only_when_asked() {
    let t = build(&[], &[("a", -1.0)]);
    assert_eq!(t.encode("a", true, false), vec![BOS, id(&t, "a")]);
    assert_eq!(t.encode("", true, false), vec![BOS]);
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
}

#[test]
fn special_tokens_are_tried_longest_first_not_leftmost() {
    let t = build(&[("ab", 4), ("bcd", 4)], &[("a", -1.0), ("cd", -1.0)]);
    // "bcd" (longer) claims its match before "ab" is looked for, even though "ab" starts earlier.
    assert_eq!(t.encode("abcd", false, false), ids(&t, &["a", "bcd"]));
    assert_eq!(t.encode("abab", false, false), ids(&t, &["ab", "ab"]));

    let t = build(&[("\n", 4), ("\n\n", 4)], &[("a", -1.0)]);
    assert_eq!(t.encode("\n\n\na\n", false, false), ids(&t, &["\n\n", "\n", "a", "\n"]));
}

#[test]
fn control_tokens_need_special_parsing_but_user_defined_do_not() {
    let t = build(&[("<ctl>", 3), ("<ud>", 4)], &[("x", -1.0)]);
    let ctl = id(&t, "<ctl>");
    let ud = id(&t, "<ud>");
    assert_eq!(t.encode("x<ctl>x<ud>", false, true), vec![id(&t, "x"), ctl, id(&t, "x"), ud]);
    let plain = t.encode("x<ctl>x<ud>", false, false);
    let mut expected = vec![id(&t, "x")];
    expected.extend(b"<ctl>".iter().map(|&b| byte_id(b)));
    expected.extend([id(&t, "x"), ud]);
    assert_eq!(plain, expected);
    // Round trip: control text typed by a user comes back as typed.
    assert_eq!(t.decode(&plain, false), "x<ctl>x<ud>");
}

#[test]
fn end_of_generation_tokens_are_found_by_text_and_become_control() {
    // As in Gemma 3: <end_of_turn> is control already, </s> is user-defined, and llama.cpp promotes
    // both end-of-generation texts to control tokens.
    let t = build(&[("<end_of_turn>", 3), ("</s>", 4), ("<s>", 4)], &[("x", -1.0)]);
    let eot = id(&t, "<end_of_turn>");
    let close_s = id(&t, "</s>");
    let open_s = id(&t, "<s>");
    assert!(t.is_end_of_generation(EOS));
    assert!(t.is_end_of_generation(eot));
    assert!(t.is_end_of_generation(close_s));
    assert!(!t.is_end_of_generation(open_s));
    assert!(!t.is_end_of_generation(BOS));
    assert_eq!(t.special_ids().eot, Some(eot));
    // Being control now, </s> is not split out without special parsing; <s> still is.
    assert!(!t.encode("</s>", false, false).contains(&close_s));
    assert_eq!(t.encode("</s>", false, true), vec![close_s]);
    assert_eq!(t.encode("<s>", false, false), vec![open_s]);
    // And it decodes to nothing unless specials are rendered.
    assert_eq!(t.decode(&[close_s, open_s], false), "<s>");
    assert_eq!(t.decode(&[close_s, open_s], true), "</s><s>");
}

#[test]
fn decoding_renders_pieces_by_kind() {
    let t = build(&[("<ctl>", 3), ("\t", 4)], &[("▁hi", -1.0)]);
    let hi = id(&t, "▁hi");
    let tab = id(&t, "\t");
    let ctl = id(&t, "<ctl>");
    assert_eq!(t.token_piece_bytes(hi, false), Some(&b" hi"[..]));
    assert_eq!(t.token_piece_bytes(byte_id(0x0A), false), Some(&b"\n"[..]));
    assert_eq!(t.token_piece_bytes(ctl, false), Some(&b""[..]));
    assert_eq!(t.token_piece_bytes(ctl, true), Some(&b"<ctl>"[..]));
    assert_eq!(t.token_piece_bytes(BOS, true), Some(&b"<bos>"[..]));
    assert_eq!(t.token_piece_bytes(u32::MAX, true), None);
    assert_eq!(t.decode(&[BOS, hi, tab, ctl, hi], false), " hi\t hi");
    assert_eq!(t.decode(&[BOS, hi, tab, ctl, hi], true), "<bos> hi\t<ctl> hi");
    // A dangling partial character and an unknown id become U+FFFD.
    assert_eq!(t.decode(&[hi, byte_id(0xE2)], false), " hi\u{FFFD}");
    assert_eq!(t.decode(&[u32::MAX], false), "\u{FFFD}");
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let t = build(&[], &[("▁hi", -1.0)]);
    let robot: Vec<u32> = "\u{1F916}".bytes().map(byte_id).collect();
    let mut stream = t.stream_decoder(false);
    assert_eq!(stream.push(id(&t, "▁hi")), " hi");
    assert_eq!(stream.push(robot[0]), "");
    assert_eq!(stream.push(robot[1]), "");
    assert_eq!(stream.push(robot[2]), "");
    assert!(stream.has_pending());
    assert_eq!(stream.push(robot[3]), "\u{1F916}");
    assert!(!stream.has_pending());
    // An invalid byte is replaced at once; a dangling lead byte is flushed lossily by finish().
    assert_eq!(stream.push(byte_id(0xFF)), "\u{FFFD}");
    assert_eq!(stream.push(robot[0]), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}

#[test]
fn rstrip_tokens_swallow_following_whitespace() {
    // Phi-3 models get rstrip on every special token.
    let mut phi = source(&[("<|user|>", 3)], &[("x", -1.0), ("▁x", -1.0)]);
    phi.general_name = Some("Phi-3 mini".to_owned());
    let t = Tokenizer::from_source(phi).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.encode("<|user|>  \n x", false, true), ids(&t, &["<|user|>", "x"]));
    let t = build(&[("<|user|>", 3)], &[("x", -1.0), ("▁x", -1.0), ("▁", -1.0)]);
    assert_eq!(
        t.encode("<|user|> x", false, true),
        ids(&t, &["<|user|>", "▁x"]),
        "without the phi-3 flag nothing is stripped"
    );
}

#[test]
fn unsupported_or_malformed_vocabularies_are_typed_errors() {
    let mut unigram = source(&[], &[]);
    unigram.model = "t5".to_owned();
    assert!(matches!(Tokenizer::from_source(unigram), Err(TokenizerError::UnsupportedModel(m)) if m == "t5"));

    let mut short = source(&[], &[("a", -1.0)]);
    if let Some(scores) = short.scores.as_mut() {
        scores.pop();
    }
    assert!(matches!(Tokenizer::from_source(short), Err(TokenizerError::TooFewEntries { .. })));

    let mut bad_byte = source(&[], &[]);
    bad_byte.tokens = (bad_byte.tokens.iter().enumerate())
        .map(|(id, t)| if id == FIRST_BYTE as usize { "<0xZZ>" } else { t })
        .collect();
    assert!(matches!(Tokenizer::from_source(bad_byte), Err(TokenizerError::BadByteToken { .. })));

    let empty = TokenizerSource { model: "llama".to_owned(), ..TokenizerSource::default() };
    assert!(matches!(Tokenizer::from_source(empty), Err(TokenizerError::EmptyVocab)));
}

#[test]
fn long_input_is_not_quadratic() {
    // 200k characters of a text that merges heavily; a quadratic merge loop would take minutes.
    let t = build(&[], &[("a", -1.0), ("b", -1.0), ("ab", -1.0), ("abab", -1.0), ("abababab", -1.0)]);
    let text = "ab".repeat(100_000);
    let started = std::time::Instant::now();
    let encoded = t.encode(&text, false, false);
    assert_eq!(encoded.len(), 25_000);
    assert!(encoded.iter().all(|&i| i == id(&t, "abababab")));
    assert!(started.elapsed().as_secs_f64() < 5.0, "took {:?}", started.elapsed());
}

/// A byte-level BPE vocabulary: `<|endoftext|>` (control), `<|im_start|>` (control), then `normal`
/// texts (in the byte alphabet: `Ġ` is a space), merged by `merges` in rank order.
fn bpe_source(normal: &[&str], merges: &[&str], pre: Option<&str>) -> TokenizerSource {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".to_owned(), "<|im_start|>".to_owned()];
    let mut types = vec![3i64, 3];
    for text in normal {
        tokens.push((*text).to_owned());
        types.push(1);
    }
    TokenizerSource {
        model: "gpt2".to_owned(),
        tokens: tokens.iter().collect(),
        token_types: Some(types),
        special_ids: vec![(key_index("tokenizer.ggml.bos_token_id"), 0), (key_index("tokenizer.ggml.eos_token_id"), 0)],
        tokenizer_pre: pre.map(str::to_owned),
        merges: Some(merges.iter().map(|m| (*m).to_owned()).collect()),
        ..TokenizerSource::default()
    }
}

fn build_bpe(normal: &[&str], merges: &[&str]) -> Tokenizer {
    match Tokenizer::from_source(bpe_source(normal, merges, Some("gpt-2"))) {
        Ok(t) => t,
        Err(e) => panic!("tiny BPE vocabulary failed to load: {e}"),
    }
}

#[test]
fn bpe_merges_go_in_rank_order() {
    let normal = ["a", "b", "c", "ab", "bc"];
    let t = build_bpe(&normal, &["b c", "a b"]);
    assert_eq!(t.encode("abc", false, false), ids(&t, &["a", "bc"]));
    let t = build_bpe(&normal, &["a b", "b c"]);
    assert_eq!(t.encode("abc", false, false), ids(&t, &["ab", "c"]));
    // Equal ranks cannot happen between different pairs; repeated pairs merge leftmost first.
    let t = build_bpe(&["a", "aa"], &["a a"]);
    assert_eq!(t.encode("aaa", false, false), ids(&t, &["aa", "a"]));
}

#[test]
fn bpe_words_never_merge_across_the_pre_tokenizer_split() {
    let t = build_bpe(&["a", "b", "Ġ", "Ġb", "aĠ", "ab"], &["a Ġ", "Ġ b", "a b"]);
    // GPT-2's rule cuts "a b" into "a" and " b"; "aĠ" is never formed although it ranks first.
    assert_eq!(t.encode("a b", false, false), ids(&t, &["a", "Ġb"]));
    assert_eq!(t.decode(&t.encode("a b", false, false), false), "a b");
}

#[test]
fn bpe_symbols_outside_the_vocabulary_fall_back_to_single_characters() {
    // "ab" is a merge but not a token: it is spelled "a" "b". "é" (bytes C3 A9, alphabet "Ã©") has no
    // token and no ASCII byte, so llama.cpp drops it.
    let t = build_bpe(&["a", "b"], &["a b"]);
    assert_eq!(t.encode("ab", false, false), ids(&t, &["a", "b"]));
    assert_eq!(t.encode("aéb", false, false), ids(&t, &["a", "b"]));
}

#[test]
fn bpe_special_tokens_and_bos_follow_the_metadata() {
    let t = build_bpe(&["h", "i", "hi", "Ċ"], &["h i"]);
    assert_eq!(t.model_name(), "gpt2");
    assert!(!t.add_bos() && !t.add_space_prefix());
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
    let parsed = t.encode("<|im_start|>hi\n", true, true);
    assert_eq!(parsed, vec![0, 1, id(&t, "hi"), id(&t, "Ċ")]);
    assert_eq!(t.decode(&parsed, true), "<|endoftext|><|im_start|>hi\n");
    assert_eq!(t.decode(&parsed, false), "hi\n");
    // Without special parsing the marker is plain text, cut into "<|", "im", "_", "start", "|>" and
    // "hi"; of its characters only "i" has a token here, the others are dropped.
    assert_eq!(t.encode("<|im_start|>hi", false, false), ids(&t, &["i", "hi"]));
}

#[test]
fn bpe_unknown_pre_tokenizer_warns_and_uses_gpt2() {
    let t = match Tokenizer::from_source(bpe_source(&["a"], &[], Some("no-such-pre"))) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    match t.model() {
        TokenizerModel::Bpe(bpe) => assert_eq!(bpe.pre_tokenizer().kind(), PreTokenizerKind::Gpt2),
        TokenizerModel::Spm(_) => panic!("a gpt2 vocabulary must load as BPE"),
    }
    assert!(t.warnings().iter().any(|w| w.contains("no-such-pre")), "{:?}", t.warnings());
    // Llama 3's pre-tokenizer also turns BOS on when the metadata is silent.
    let t = match Tokenizer::from_source(bpe_source(&["a"], &["a a"], Some("llama-bpe"))) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert!(t.add_bos() && t.warnings().is_empty());
}

#[test]
fn bpe_long_input_is_not_quadratic() {
    let t = build_bpe(&["a", "b", "ab", "abab", "abababab"], &["a b", "ab ab", "abab abab"]);
    // One 200k-character word: the merge loop must stay near-linear.
    let text = "ab".repeat(100_000);
    let encoded = t.encode(&text, false, false);
    assert_eq!(encoded.len(), 25_000);
    assert!(encoded.iter().all(|&i| i == id(&t, "abababab")));
}
