//! The byte-level BPE tokenizer against llama.cpp's own output on the real SmolLM2 135M vocabulary
//! (`tokenizer.ggml.model = gpt2`, `tokenizer.ggml.pre = smollm`). The references were produced by
//! llama.cpp's `llama-tokenize` (`scripts/llama_tokenize_bpe_goldens.py`), plus the shared goldens.

use std::path::PathBuf;
use std::sync::OnceLock;

use gemma_core::tokenizer::{PreTokenizerKind, Tokenizer, TokenizerModel};
use gemma_io::GgufFile;
use serde::Deserialize;

fn goldens_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens")
}

fn read_golden(name: &str) -> String {
    let path = goldens_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// SmolLM2's tokenizer, loaded once for all tests.
fn smollm2() -> &'static Tokenizer {
    static SMOLLM2: OnceLock<Tokenizer> = OnceLock::new();
    SMOLLM2.get_or_init(|| {
        let path = gemma_fetch::resolve_model("smollm2-135m-instruct")
            .unwrap_or_else(|e| panic!("smollm2-135m-instruct: {e}"));
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("loading the SmolLM2 tokenizer: {e}"))
    })
}

#[derive(Deserialize)]
struct LlamaCppBuild {
    version: Option<String>,
    commit: Option<String>,
}

#[derive(Deserialize)]
struct HardString {
    text: String,
    special: Vec<u32>,
    plain: Vec<u32>,
}

#[derive(Deserialize)]
struct Corpus {
    llama_cpp: LlamaCppBuild,
    whole_special: Vec<u32>,
    whole_plain: Vec<u32>,
    lines: Vec<String>,
    lines_special: Vec<Vec<u32>>,
    lines_plain: Vec<Vec<u32>>,
    hard: Vec<HardString>,
}

fn corpus() -> (String, Corpus) {
    let text = read_golden("gemma3_tokenizer_corpus.txt");
    let corpus: Corpus = serde_json::from_str(&read_golden("smollm2_tokenizer_corpus.json"))
        .unwrap_or_else(|e| panic!("smollm2_tokenizer_corpus.json: {e}"));
    (text, corpus)
}

/// The corpus file cut as the reference script cut it: `split("\n")`, a final empty element dropped.
fn corpus_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
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
fn vocabulary_metadata_matches_smollm2() {
    let t = smollm2();
    assert_eq!(t.model_name(), "gpt2");
    assert_eq!(t.vocab_size(), 49_152);
    assert!(t.warnings().is_empty(), "unexpected warnings: {:?}", t.warnings());
    // SmolLM2 asks for no BOS and no space prefix.
    assert!(!t.add_bos());
    assert!(!t.add_space_prefix());
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.token_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
    // In the byte alphabet a space is 'Ġ' and a newline 'Ċ'.
    assert_eq!(t.token_id("Ċ"), Some(198));
    assert_eq!(t.token_id("Ġ"), Some(216));
    match t.model() {
        TokenizerModel::Bpe(bpe) => {
            assert_eq!(bpe.pre_tokenizer().kind(), PreTokenizerKind::DigitsThenGpt2);
            assert!(!bpe.pre_tokenizer().ignore_merges());
            assert_eq!(bpe.merge_count(), 48_900);
        }
        TokenizerModel::Spm(_) => panic!("SmolLM2 must load as BPE"),
    }
    assert!(t.is_end_of_generation(2), "<|im_end|> ends generation");
}

#[test]
fn shared_golden_prompts_match_llama_cpp_and_decode_back() {
    let goldens: Vec<PromptGolden> = serde_json::from_str(&read_golden("smollm2_goldens_shared.json"))
        .unwrap_or_else(|e| panic!("smollm2_goldens_shared.json: {e}"));
    assert!(!goldens.is_empty());
    let t = smollm2();
    for golden in &goldens {
        let ids = t.encode(&golden.prompt, false, true);
        assert_ids(&format!("prompt {:?}", golden.prompt), &ids, &golden.prompt_ids);
        assert_eq!(t.decode(&ids, false), golden.prompt);
    }
}

#[test]
fn reference_records_its_llama_cpp_build() {
    let (_, corpus) = corpus();
    assert!(corpus.llama_cpp.version.as_deref().is_some_and(|v| v.contains("commit")));
    assert!(corpus.llama_cpp.commit.as_deref().is_some_and(|c| c.len() == 40));
}

#[test]
fn whole_corpus_matches_llama_cpp() {
    let (text, corpus) = corpus();
    let t = smollm2();
    assert_ids("whole corpus, special", &t.encode(&text, false, true), &corpus.whole_special);
    assert_ids("whole corpus, plain", &t.encode(&text, false, false), &corpus.whole_plain);
}

#[test]
fn corpus_lines_match_llama_cpp() {
    let (text, corpus) = corpus();
    let lines = corpus_lines(&text);
    assert_eq!(lines, corpus.lines);
    assert_eq!(lines.len(), corpus.lines_special.len());
    assert_eq!(lines.len(), corpus.lines_plain.len());
    let t = smollm2();
    for ((line, special), plain) in lines.iter().zip(&corpus.lines_special).zip(&corpus.lines_plain) {
        assert_ids(&format!("line {line:?}, special"), &t.encode(line, false, true), special);
        assert_ids(&format!("line {line:?}, plain"), &t.encode(line, false, false), plain);
    }
}

#[test]
fn hard_strings_match_llama_cpp() {
    let (_, corpus) = corpus();
    assert!(corpus.hard.len() >= 30);
    let t = smollm2();
    for hard in &corpus.hard {
        assert_ids(&format!("{:?}, special", hard.text), &t.encode(&hard.text, false, true), &hard.special);
        assert_ids(&format!("{:?}, plain", hard.text), &t.encode(&hard.text, false, false), &hard.plain);
    }
}

#[test]
fn decode_inverts_encode() {
    let (text, corpus) = corpus();
    let t = smollm2();
    let mut texts: Vec<&str> = corpus_lines(&text);
    texts.push(&text);
    texts.extend(corpus.hard.iter().map(|h| h.text.as_str()));
    for text in texts {
        assert_eq!(t.decode(&t.encode(text, false, false), false), text, "plain round trip");
        // Parsed specials come back when rendered.
        assert_eq!(t.decode(&t.encode(text, false, true), true), text, "special round trip");
    }
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let t = smollm2();
    let text = "Emoji 🤖🫨 and 中文, then ASCII.";
    let ids = t.encode(text, false, false);
    let mut stream = t.stream_decoder(false);
    let mut joined = String::new();
    let mut held_back = false;
    for &id in &ids {
        let chunk = stream.push(id);
        // Each emoji is several byte-level tokens: some pushes must return nothing.
        held_back |= chunk.is_empty();
        joined.push_str(&chunk);
    }
    joined.push_str(&stream.finish());
    assert!(held_back, "expected a character split across tokens in {ids:?}");
    assert_eq!(joined, text);
}

#[test]
fn long_text_encodes_without_blowing_up() {
    // 100 copies of the corpus (about 80 kB); the corpus ends in a newline, which is a word of its own
    // after the preceding text, so copies tokenize independently.
    let (text, corpus) = corpus();
    let t = smollm2();
    let copies = 100;
    let ids = t.encode(&text.repeat(copies), false, false);
    let expected: Vec<u32> = std::iter::repeat_n(corpus.whole_plain.iter().copied(), copies).flatten().collect();
    assert_ids("repeated corpus", &ids, &expected);
}
