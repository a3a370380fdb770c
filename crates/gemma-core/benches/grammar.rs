//! Grammar matching on the default model's 262,144-token vocabulary:
//! - `vocab`: building the token texts grammars match (once per tokenizer);
//! - `mask`: which tokens a JSON-schema grammar allows, at the start (only `{` and spaces fit, most tokens die
//!   at their first byte) and inside a string value (almost every token fits): the cost of a step whose first
//!   pick the grammar refused;
//! - `check`: whether one token is allowed (every step pays this once).
//!
//! `cargo bench -p gemma-core --bench grammar` (needs the default model: `gemma pull`).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use gemma_core::grammar::{json_schema_to_grammar, Grammar, GrammarMatcher, GrammarVocab};
use gemma_core::{Model, Tokenizer};

fn bench(c: &mut Criterion) {
    let path = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model (gemma pull)");
    let model = Model::open(&path).expect("model loads");
    let tokenizer = Tokenizer::from_gguf(&model.file).expect("tokenizer");
    c.bench_function("grammar/vocab", |b| b.iter(|| GrammarVocab::new(&tokenizer)));

    let schema = serde_json::json!({"type": "object", "properties": {"name": {"type": "string"},
        "age": {"type": "integer"}}, "required": ["name", "age"]});
    let grammar = Arc::new(Grammar::parse(&json_schema_to_grammar(&schema).expect("schema")).expect("grammar"));
    let vocab = tokenizer.grammar_vocab();
    let start = GrammarMatcher::new(grammar, vocab);
    let mut in_string = start.clone();
    assert!(in_string.accept_text(b"{\"name\": \"Ma"));
    let mut mask = Vec::new();
    for (name, m) in [("start", &start), ("in_string", &in_string)] {
        m.allowed_tokens(&mut mask);
        eprintln!("grammar/mask/{name}: {} of {} tokens allowed", mask.iter().filter(|&&a| a).count(), mask.len());
        c.bench_function(&format!("grammar/mask/{name}"), |b| b.iter(|| m.allowed_tokens(&mut mask)));
    }
    let word = tokenizer.encode(" Mary", false, false)[0];
    c.bench_function("grammar/check/in_string", |b| b.iter(|| in_string.allows(word)));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
