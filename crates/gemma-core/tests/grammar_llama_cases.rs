//! llama.cpp's own grammar cases (`tests/test-grammar-integration.cpp`, turned into
//! `testdata/grammar/llama_integration_cases.json`): each grammar must accept its passing strings whole and
//! refuse its failing ones, matched one character at a time as llama.cpp's test does.

use std::path::Path;
use std::sync::Arc;

use gemma_core::grammar::{json_schema_text_to_grammar, Grammar, GrammarError, GrammarMatcher, GrammarVocab};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    kind: String,
    name: String,
    text: String,
    pass: Vec<String>,
    fail: Vec<String>,
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/grammar/llama_integration_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("cases file")).expect("cases json")
}

/// True when `grammar` accepts the whole of `text`, fed one character at a time.
fn matches(grammar: &Arc<Grammar>, text: &str) -> bool {
    let mut m = GrammarMatcher::new(grammar.clone(), Arc::new(GrammarVocab::from_pieces(Vec::new(), Vec::new())));
    let mut buf = [0u8; 4];
    text.chars().all(|c| m.accept_text(c.encode_utf8(&mut buf).as_bytes())) && m.is_complete()
}

fn check(kind: &str, grammar_of: impl Fn(&str) -> Grammar) -> usize {
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| c.kind == kind) {
        let g = Arc::new(grammar_of(&case.text));
        for s in &case.pass {
            assert!(matches(&g, s), "{}: should accept {s:?}\n{}", case.name, case.text);
        }
        for s in &case.fail {
            assert!(!matches(&g, s), "{}: should refuse {s:?}\n{}", case.name, case.text);
        }
        checked += 1;
    }
    checked
}

#[test]
fn llama_cpp_grammar_cases_accept_and_refuse_the_same_strings() {
    let n = check("grammar", |text| Grammar::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}")));
    assert_eq!(n, 12);
}

/// The same file's JSON Schema cases: our converter's grammar, run by our matcher.
#[test]
fn llama_cpp_json_schema_cases_accept_and_refuse_the_same_strings() {
    let n = check("schema", |text| {
        let gbnf = json_schema_text_to_grammar(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Grammar::parse(&gbnf).unwrap_or_else(|e| panic!("{e}\n{gbnf}"))
    });
    assert_eq!(n, 33);
}

#[test]
fn broken_grammars_are_refused_with_a_reason() {
    let err = |text: &str| Grammar::parse(text).expect_err(text);
    assert_eq!(err("rot ::= \"a\""), GrammarError::NoRoot);
    assert_eq!(err("root ::= a b\na ::= \"x\""), GrammarError::UndefinedRule("b".into()));
    assert!(matches!(err("root ::= root \"a\" | \"b\""), GrammarError::LeftRecursive(_)));
    assert!(matches!(err("root ::= a\na ::= b? a \"x\" | \"y\"\nb ::= \"z\""), GrammarError::LeftRecursive(_)));
    assert!(matches!(err("root ::= x\nx ::= y \"a\"\ny ::= \"\" | x"), GrammarError::LeftRecursive(_)));
    for bad in [
        "root ::= \"abc",
        "root ::= [a-",
        "root ::= (\"a\"",
        "root := \"a\"",
        "root ::= \"\\q\"",
        "root ::= *",
        "root ::= \"a\"{3,1}",
        "root ::= \"a\"{2001}",
        "root ::= <[99999999999]>",
        "root ::= \"a\" )",
        "::= \"a\"",
    ] {
        assert!(matches!(err(bad), GrammarError::Syntax { .. }), "{bad}: {:?}", Grammar::parse(bad));
    }
    assert!(matches!(err("root ::= ((\"a\"{0,1000}){0,1000})"), GrammarError::TooLarge(_)));
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(1000), ")".repeat(1000));
    assert!(matches!(err(&deep), GrammarError::Syntax { .. }));
    let msg = err("root ::= \"a\"\nfoo ::= [b").to_string();
    assert!(msg.contains("line 2"), "{msg}");
}

/// One case of `testdata/grammar/gbnf_differential_cases.json`: a grammar and what llama.cpp's own parser and
/// matcher (fed one code point at a time, as its `test-grammar-integration.cpp` does) made of it.
#[derive(Deserialize)]
struct DifferentialCase {
    grammar: String,
    /// `ok`, `parse_error`, or `crash` / `hang` where llama.cpp aborts or never finishes.
    llama: String,
    #[serde(default)]
    accept: Vec<String>,
    #[serde(default)]
    reject: Vec<String>,
}

/// Random and hand-written GBNF grammars, with strings drawn from them and mutated, run through llama.cpp: we
/// must parse (or refuse) the same grammars and accept the same strings. Where llama.cpp crashes or hangs we
/// only need to finish.
#[test]
fn gbnf_differential_cases_agree_with_llama_cpp() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/grammar/gbnf_differential_cases.json");
    let cases: Vec<DifferentialCase> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("cases file")).expect("cases json");
    let mut wrong = Vec::new();
    for case in &cases {
        let parsed = Grammar::parse(&case.grammar);
        match (case.llama.as_str(), parsed) {
            ("ok", Ok(g)) => {
                let g = Arc::new(g);
                for s in case.accept.iter().filter(|s| !matches(&g, s)) {
                    wrong.push(format!("should accept {s:?}\n{}", case.grammar));
                }
                for s in case.reject.iter().filter(|s| matches(&g, s)) {
                    wrong.push(format!("should refuse {s:?}\n{}", case.grammar));
                }
            }
            ("ok", Err(e)) => wrong.push(format!("llama.cpp parses it, we refuse it: {e}\n{}", case.grammar)),
            ("parse_error", Ok(_)) => wrong.push(format!("llama.cpp refuses it, we parse it\n{}", case.grammar)),
            ("parse_error", Err(_)) => {}
            // llama.cpp crashes or hangs: finishing, either way, is all we ask.
            (_, Ok(g)) => {
                let g = Arc::new(g);
                for s in case.accept.iter().chain(&case.reject) {
                    matches(&g, s);
                }
            }
            (_, Err(_)) => {}
        }
    }
    assert!(wrong.is_empty(), "{} disagreements with llama.cpp:\n{}", wrong.len(), wrong.join("\n\n"));
    assert!(cases.len() >= 300, "{} cases", cases.len());
}
