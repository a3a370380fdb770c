//! GBNF grammar parsing on arbitrary text, then matching: the input is a grammar, a NUL, then text to feed to
//! the matcher.
#![no_main]

use std::sync::Arc;

use gemma_core::grammar::{Grammar, GrammarMatcher, GrammarVocab};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (src, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(src) = std::str::from_utf8(src) else { return };
    let Ok(grammar) = Grammar::parse(src) else { return };
    let pieces: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        b"{".to_vec(),
        b"\"".to_vec(),
        b" ".to_vec(),
        b"12".to_vec(),
        vec![0xC3],
        vec![0xA9],
        b"".to_vec(),
        b"</s>".to_vec(),
    ];
    let eog = vec![false, false, false, false, false, false, false, false, true];
    let vocab = Arc::new(GrammarVocab::from_pieces(pieces, eog));
    let mut m = GrammarMatcher::new(Arc::new(grammar), vocab);
    let mut allowed = Vec::new();
    m.allowed_tokens(&mut allowed);
    let _ = m.is_complete();
    for chunk in text.chunks(3).take(64) {
        if !m.accept_text(chunk) {
            break;
        }
        m.allowed_tokens(&mut allowed);
    }
    let _ = m.is_complete();
});
