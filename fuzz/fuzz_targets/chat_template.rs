//! Chat template compile and render from arbitrary template source.
#![no_main]

use gemma_core::chat::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(t) = ChatTemplate::from_source(src, "<bos>", "<eos>") else { return };
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hello"),
        ChatMessage::assistant("Hi!"),
        ChatMessage::user("Again"),
    ];
    let _ = t.render(&messages, true);
    let _ = t.render(&messages[1..2], false);
});
