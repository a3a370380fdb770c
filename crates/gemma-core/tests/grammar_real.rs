//! Grammar-constrained generation on the real model against llama-server's
//! (`testdata/goldens/gemma3_270m_llama_grammar.json`, from `scripts/llama_grammar_goldens.py`): GBNF grammars
//! and JSON schemas (turned into grammars by each engine's own converter), greedy.

use std::path::Path;
use std::sync::Arc;

use gemma_core::grammar::{json_schema_to_grammar, Grammar, GrammarMatcher};
use gemma_core::{GenerationOptions, SamplingParams, Session, StopReason};
use serde::Deserialize;

mod common;
use common::{teacher_forced, DefaultModel};

#[derive(Deserialize)]
struct Golden {
    name: String,
    grammar: Option<String>,
    json_schema: Option<serde_json::Value>,
    prompt_ids: Vec<u32>,
    gen_ids: Vec<u32>,
    gen_text: String,
}

fn fixture() -> &'static DefaultModel {
    common::default_model()
}

fn goldens() -> Vec<Golden> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens/gemma3_270m_llama_grammar.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("goldens json")
}

fn grammar_of(g: &Golden) -> String {
    match (&g.grammar, &g.json_schema) {
        (Some(text), _) => text.clone(),
        (None, Some(schema)) => {
            // llama-server reads an empty schema as "any object".
            let schema = if schema.as_object().is_some_and(|o| o.is_empty()) {
                serde_json::json!({"type": "object"})
            } else {
                schema.clone()
            };
            json_schema_to_grammar(&schema).unwrap_or_else(|e| panic!("{}: {e}", g.name))
        }
        _ => panic!("{}: neither grammar nor schema", g.name),
    }
}

/// Our greedy output under the golden's grammar, with the end-of-generation token appended when generation
/// ended there (llama-server lists it).
fn generate(g: &Golden, grammar: &str) -> (Vec<u32>, String) {
    let f = fixture();
    let sampling = SamplingParams { grammar: Some(grammar.to_owned()), ..SamplingParams::greedy() };
    sampling.validate().expect("the grammar parses");
    let opts = GenerationOptions { max_tokens: 48, sampling, ..Default::default() };
    let mut session = Session::new(&f.model, 1024);
    let out = session.generate(&f.tokenizer, &g.prompt_ids, &opts, &f.pool, &mut |_| {}).expect("generation");
    let mut ids = out.gen_ids.clone();
    if out.stop_reason == StopReason::EndOfGeneration {
        ids.extend(out.end_token);
    }
    (ids, out.text)
}

#[test]
fn greedy_output_under_a_grammar_is_llama_servers_up_to_a_near_tie() {
    let f = fixture();
    let mut whole = 0;
    for g in goldens() {
        let grammar = grammar_of(&g);
        let (ours, text) = generate(&g, &grammar);
        let Some(step) = ours.iter().zip(&g.gen_ids).position(|(a, b)| a != b) else {
            assert_eq!(ours.len(), g.gen_ids.len(), "{}: {text:?} vs {:?}", g.name, g.gen_text);
            assert_eq!(text, g.gen_text.trim_end_matches('\u{0}'), "{}", g.name);
            whole += 1;
            continue;
        };
        // Where they part, llama.cpp's pick must be within half a logit of ours among the tokens the grammar
        // allows there (a near tie that the engines' small logit differences may tip either way).
        let rows = teacher_forced(&f.model, &f.pool, &g.prompt_ids, &g.gen_ids[..=step]);
        let row = &rows[step];
        let mut m =
            GrammarMatcher::new(Arc::new(Grammar::parse(&grammar).expect("parses")), f.tokenizer.grammar_vocab());
        for &id in &g.gen_ids[..step] {
            assert!(m.accept(id), "{}: llama.cpp's token {id} refused by our grammar", g.name);
        }
        let (theirs, mine) = (g.gen_ids[step], ours[step]);
        assert!(m.allows(theirs), "{}: step {step}: llama.cpp's token {theirs} is refused by our grammar", g.name);
        let gap = row[mine as usize] - row[theirs as usize];
        eprintln!("{}: parts at step {step} ({mine} vs {theirs}, gap {gap:.3}): {text:?} vs {:?}", g.name, g.gen_text);
        assert!(gap < 0.5, "{}: step {step}: ours {mine}, llama.cpp's {theirs}, gap {gap}", g.name);
    }
    eprintln!("{whole} of the goldens generated exactly as llama-server did");
    assert!(whole >= 7, "only {whole} whole matches");
}

#[test]
fn what_a_grammar_generates_is_in_its_language() {
    for g in goldens() {
        let grammar = grammar_of(&g);
        let (ids, text) = generate(&g, &grammar);
        let mut m = GrammarMatcher::new(
            Arc::new(Grammar::parse(&grammar).expect("parses")),
            fixture().tokenizer.grammar_vocab(),
        );
        for &id in &ids {
            assert!(m.accept(id), "{}: token {id} of our own output refused", g.name);
        }
        if ids.last().is_some_and(|&id| fixture().tokenizer.is_end_of_generation(id)) {
            assert!(m.is_complete(), "{}: ended before the grammar was complete: {text:?}", g.name);
        }
        if g.json_schema.is_some() && ids.len() < 48 {
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{}: {text:?}: {e}", g.name));
        }
    }
}
