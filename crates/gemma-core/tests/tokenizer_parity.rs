//! The tokenizer against llama.cpp's own output on the real Gemma 3 270M vocabulary
//! (goldens in `testdata/goldens/`, produced by llama.cpp), plus round trips and streaming.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use gemma_core::tokenizer::{Tokenizer, TokenizerError};
use gemma_io::GgufFile;
use serde::Deserialize;

fn goldens_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens")
}

fn read_golden(name: &str) -> String {
    let path = goldens_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn load_tokenizer(model: &str) -> Result<(Tokenizer, f64), TokenizerError> {
    let path = gemma_fetch::resolve_model(model).unwrap_or_else(|e| panic!("model '{model}': {e}"));
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let started = Instant::now();
    let tokenizer = Tokenizer::from_gguf(&file)?;
    Ok((tokenizer, started.elapsed().as_secs_f64()))
}

/// The Gemma 3 tokenizer, loaded once for all tests, with the time `from_gguf` took.
fn gemma() -> &'static (Tokenizer, f64) {
    static GEMMA: OnceLock<(Tokenizer, f64)> = OnceLock::new();
    GEMMA.get_or_init(|| {
        load_tokenizer(gemma_fetch::DEFAULT_MODEL).unwrap_or_else(|e| panic!("loading the tokenizer: {e}"))
    })
}

fn tokenizer() -> &'static Tokenizer {
    &gemma().0
}

#[derive(Deserialize)]
struct Corpus {
    whole_special: Vec<u32>,
    lines_plain: Vec<Vec<u32>>,
    lines: Vec<String>,
}

fn corpus() -> (String, Corpus) {
    let text = read_golden("gemma3_tokenizer_corpus.txt");
    let corpus: Corpus = serde_json::from_str(&read_golden("gemma3_tokenizer_corpus.json"))
        .unwrap_or_else(|e| panic!("gemma3_tokenizer_corpus.json: {e}"));
    (text, corpus)
}

#[derive(Deserialize)]
struct PromptGolden {
    prompt: String,
    prompt_ids: Vec<u32>,
}

/// First index where two id lists differ, for readable failures.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn assert_ids(label: &str, got: &[u32], expected: &[u32]) {
    if let Some(at) = first_difference(got, expected) {
        let window = |ids: &[u32]| ids.iter().skip(at.saturating_sub(3)).take(8).copied().collect::<Vec<_>>();
        panic!(
            "{label}: ids differ at {at} (got {} ids, expected {}): got ..{:?}.. expected ..{:?}..",
            got.len(),
            expected.len(),
            window(got),
            window(expected)
        );
    }
}

#[test]
fn vocabulary_metadata_matches_gemma3() {
    let (t, load_seconds) = gemma();
    let load_seconds = *load_seconds;
    eprintln!("Tokenizer::from_gguf took {:.1} ms for {} tokens", load_seconds * 1e3, t.vocab_size());
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!(t.model_name(), "llama");
    assert_eq!(t.bos_id(), Some(2));
    assert_eq!(t.eos_id(), Some(1));
    assert_eq!(t.special_ids().unk, Some(3));
    assert_eq!(t.special_ids().pad, Some(0));
    assert!(t.add_bos());
    assert!(!t.add_space_prefix());
    assert_eq!(t.piece(2), Some("<bos>"));
    assert_eq!(t.token_id("<start_of_turn>"), Some(105));
    assert_eq!(t.token_id("<end_of_turn>"), Some(106));
    assert_eq!(t.token_id("<0x0A>"), Some(248));
    assert_eq!(t.piece(262_144), None);
    assert_eq!(t.special_ids().eot, Some(106));
    // llama.cpp's end-of-generation set for this vocabulary: <eos>, <end_of_turn> and </s>.
    assert_eq!(t.end_of_generation_ids().collect::<Vec<_>>(), vec![1, 106, 212]);
    assert!(t.is_end_of_generation(1) && t.is_end_of_generation(106));
    assert!(!t.is_end_of_generation(2) && !t.is_end_of_generation(105));
    assert!(load_seconds < 2.0, "loading the vocabulary took {load_seconds:.2} s");
}

#[test]
fn whole_corpus_with_bos_and_special_parsing_matches_llama_cpp() {
    let (text, corpus) = corpus();
    let t = tokenizer();
    assert_ids("whole corpus", &t.encode(&text, true, true), &corpus.whole_special);
}

#[test]
fn corpus_lines_without_bos_or_special_parsing_match_llama_cpp() {
    let (text, corpus) = corpus();
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    assert_eq!(lines.len(), corpus.lines.len());
    assert_eq!(lines.len(), corpus.lines_plain.len());
    let t = tokenizer();
    for ((line, expected_text), expected_ids) in lines.iter().zip(&corpus.lines).zip(&corpus.lines_plain) {
        assert_eq!(line, expected_text);
        assert_ids(&format!("line {line:?}"), &t.encode(line, false, false), expected_ids);
    }
}

#[test]
fn shared_golden_prompts_match_llama_cpp() {
    let goldens: Vec<PromptGolden> = serde_json::from_str(&read_golden("gemma3_270m_goldens_shared.json"))
        .unwrap_or_else(|e| panic!("gemma3_270m_goldens_shared.json: {e}"));
    assert!(!goldens.is_empty());
    let t = tokenizer();
    for golden in &goldens {
        assert_ids(&format!("prompt {:?}", golden.prompt), &t.encode(&golden.prompt, true, true), &golden.prompt_ids);
    }
}

#[test]
fn long_text_encodes_in_linear_time() {
    // The corpus ends in "\n" (a user-defined token that always splits), so repeating it repeats its ids.
    let (text, corpus) = corpus();
    let copies = 200;
    let long = text.repeat(copies);
    let t = tokenizer();
    let started = Instant::now();
    let ids = t.encode(&long, true, true);
    let seconds = started.elapsed().as_secs_f64();
    let per_copy = corpus.whole_special.get(1..).unwrap_or_default();
    let mut expected = vec![2];
    for _ in 0..copies {
        expected.extend_from_slice(per_copy);
    }
    assert_ids("repeated corpus", &ids, &expected);
    eprintln!("encoded {} bytes into {} ids in {:.1} ms", long.len(), ids.len(), seconds * 1e3);
    assert!(seconds < 5.0, "encoding {} bytes took {seconds:.2} s", long.len());
}

/// Strings that stress the byte fallback, normalisation-free handling, markers and whitespace.
const TRICKY: &[&str] = &[
    "",
    " ",
    "      ",
    "\n",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "a  b   c    d\t\te\n \n  \n",
    "\t\t\tindented\r\nwindows line\r\n",
    "🤖🫨🪿👩‍👩‍👧‍👦🏳️‍🌈",
    "中文分词测试，日本語のテキスト，한국어",
    "e\u{301} a\u{308}\u{332} Z\u{351}\u{35b}\u{36a}\u{363}",
    "\u{0}\u{1}\u{7}\u{1b}[31mred\u{1b}[0m\u{7f}",
    "\u{feff}\u{200b}zero\u{200d}width\u{2028}",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn<end_of_turn>>",
    "<bos>text<eos></s><s><pad><unk><mask>[multimodal]<unused0><0x41>",
    "<table><tr><td>1</td></tr></table>",
    "𓀀𓀁 ﷽ ꙮ",
];

/// Strings where decode(encode(x)) must give x back: the corpus lines and the tricky strings.
fn round_trip_texts() -> Vec<String> {
    let (text, corpus) = corpus();
    let mut texts = corpus.lines.clone();
    texts.push(text);
    texts.extend(TRICKY.iter().map(|s| s.to_string()));
    texts
}

#[test]
fn decode_inverts_encode() {
    let t = tokenizer();
    for text in round_trip_texts() {
        // Plain text: nothing is a control token, so nothing needs rendering.
        assert_eq!(t.decode(&t.encode(&text, false, false), false), text, "plain round trip");
        // Parsed specials come back only when rendered; BOS renders as "<bos>".
        let parsed = t.encode(&text, true, true);
        assert_eq!(t.decode(&parsed, true), format!("<bos>{text}"), "special round trip");
    }
    // Without rendering, control tokens vanish from the text.
    let ids = t.encode("<start_of_turn>user\nHi<end_of_turn>\n", true, true);
    for marker in ["<start_of_turn>", "<end_of_turn>"] {
        let id = t.token_id(marker).unwrap_or(u32::MAX);
        assert_eq!(ids.iter().filter(|&&i| i == id).count(), 1, "{marker} should be one token in {ids:?}");
    }
    assert_eq!(t.decode(&ids, false), "user\nHi\n");
}

#[test]
fn stream_decoder_matches_decode_and_never_splits_a_character() {
    let t = tokenizer();
    for text in round_trip_texts() {
        for render_special in [false, true] {
            let ids = t.encode(&text, true, true);
            let mut stream = t.stream_decoder(render_special);
            let mut streamed = String::new();
            for &id in &ids {
                // Each chunk is a String, hence valid UTF-8; what matters is that joining them loses nothing.
                streamed.push_str(&stream.push(id));
            }
            streamed.push_str(&stream.finish());
            assert_eq!(streamed, t.decode(&ids, render_special), "streaming {text:?}");
        }
    }
}

#[test]
fn emoji_made_of_byte_tokens_appears_only_when_complete() {
    let t = tokenizer();
    // U+1FAE8 has no token in this vocabulary, so it is spelled with its four UTF-8 byte tokens.
    let ids = t.encode("a🫨b", false, false);
    let bytes: Vec<u32> = "🫨".bytes().map(|b| t.token_id(&format!("<0x{b:02X}>")).unwrap_or(u32::MAX)).collect();
    assert_eq!(ids.get(1..5), Some(&bytes[..]), "the emoji should be byte tokens: {ids:?}");
    let mut stream = t.stream_decoder(false);
    let chunks: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(chunks, vec!["a", "", "", "", "🫨", "b"]);
    assert_eq!(stream.finish(), "");
}
