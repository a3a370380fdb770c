//! Grammar-constrained generation: GBNF grammars (llama.cpp's notation) and a matcher that tells which
//! tokens may come next.

pub mod gbnf;
pub mod json_schema;
pub mod matcher;

pub use gbnf::{Grammar, GrammarError};
pub use json_schema::{
    convert_json_schema, convert_json_schema_text, json_schema_text_to_grammar, json_schema_to_grammar, JsonSchemaError,
};
pub use matcher::{GrammarMatcher, GrammarVocab};
