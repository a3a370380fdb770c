//! JSON Schema to GBNF on arbitrary text; every grammar the converter produces must parse. A schema that refers
//! to itself without consuming anything (`"a": {"anyOf": [{"$ref": "#/$defs/a"}, ...]}`) converts to a
//! left-recursive grammar, which the grammar parser refuses with a typed error, as llama.cpp's does: allowed.
//! So is the parser's limit on nested groups, which a property name of more than about 250 characters in an
//! object with `additionalProperties` exceeds (the converter deliberately takes such names).
#![no_main]

use gemma_core::grammar::{json_schema_text_to_grammar, Grammar, GrammarError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(gbnf) = json_schema_text_to_grammar(text) else { return };
    match Grammar::parse(&gbnf) {
        Ok(_) | Err(GrammarError::LeftRecursive(_)) => {}
        Err(GrammarError::Syntax { message, .. }) if message.starts_with("groups nested more than") => {}
        Err(e) => panic!("the converter produced a grammar that does not parse: {e}\n{gbnf}"),
    }
});
