//! `gemma_chat_*` called as C calls them, on the default model: answers equal the library's fresh run of the
//! whole conversation, each turn prefills only its new tokens, the messages read back, a restored conversation
//! continues the same way, the callback's stop, and errors as codes.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, CStr};

use common::{c_string, collect, generator, greedy_params, last_error, take_text, Library, Streamed};
use gemma_capi::*;
use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::KvType;

mod common;

const OK: c_int = Status::Ok as c_int;

/// A chat owned by a test; freed on drop (the model handle lives for the whole test binary).
struct Chat(*mut GemmaChat);

impl Chat {
    fn new(system: Option<&str>, params: &GemmaParams, n_ctx: c_int) -> Chat {
        let system = system.map(c_string);
        let system_ptr = system.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: a live model handle that outlives the chat, NULL or a NUL-terminated system prompt, params.
        let chat = unsafe { gemma_chat_new(generator(), system_ptr, params, n_ctx) };
        assert!(!chat.is_null(), "gemma_chat_new failed: {}", last_error());
        Chat(chat)
    }

    fn messages(&self) -> Vec<ChatMessage> {
        // SAFETY: a live chat.
        let n = unsafe { gemma_chat_n_messages(self.0) };
        assert!(n >= 0, "{}", last_error());
        (0..n as usize)
            .map(|i| {
                let (mut role, mut content, mut len) = (std::ptr::null(), std::ptr::null(), 0usize);
                // SAFETY: a live chat, an index below the count, writable outputs.
                let code = unsafe { gemma_chat_message(self.0, i, &mut role, &mut content, &mut len) };
                assert_eq!(code, OK, "{}", last_error());
                // SAFETY: NUL-terminated strings owned by the chat, unchanged while they are copied here.
                let role = unsafe { CStr::from_ptr(role) }.to_str().unwrap();
                // SAFETY: `len` bytes and a NUL, owned by the chat.
                let bytes = unsafe { std::slice::from_raw_parts(content.cast::<u8>(), len + 1) };
                assert_eq!(bytes[len], 0);
                ChatMessage::new(role, std::str::from_utf8(&bytes[..len]).unwrap())
            })
            .collect()
    }

    fn context_used(&self) -> usize {
        // SAFETY: a live chat.
        let n = unsafe { gemma_chat_context_used(self.0) };
        assert!(n >= 0);
        n as usize
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        // SAFETY: a live chat, freed once, before the model.
        unsafe { gemma_chat_free(self.0) };
    }
}

struct Sent {
    code: c_int,
    text: Option<String>,
    info: GemmaChatInfo,
    streamed: Streamed,
}

fn send(chat: &Chat, message: &str, stop_after: usize) -> Sent {
    let message = c_string(message);
    let mut streamed = Streamed { stop_after, ..Default::default() };
    let mut out: *mut c_char = std::ptr::null_mut();
    let mut info = GemmaChatInfo::default();
    // SAFETY: a live chat, a NUL-terminated message, `collect` with a `Streamed`, writable outputs.
    let code = unsafe {
        gemma_chat_send(
            chat.0,
            message.as_ptr(),
            Some(collect),
            (&mut streamed as *mut Streamed).cast(),
            &mut out,
            &mut info,
        )
    };
    // SAFETY: NULL or a string from gemma_chat_send, not used after this.
    let text = unsafe { take_text(out) };
    Sent { code, text, info, streamed }
}

fn template() -> ChatTemplate {
    let library = Library::get();
    ChatTemplate::from_gguf(&library.model.file, &library.tokenizer).unwrap()
}

#[test]
fn turns_keep_the_cache_and_answer_as_the_library_does_on_the_whole_conversation() {
    let library = Library::get();
    let template = template();
    let chat = Chat::new(Some("Answer in one short sentence."), &greedy_params(12), 0);
    assert_eq!(chat.messages(), [ChatMessage::system("Answer in one short sentence.")]);
    let mut context_before = 0;
    for (i, question) in ["What is the capital of France?", "And of Italy?"].into_iter().enumerate() {
        let sent = send(&chat, question, 0);
        assert_eq!(sent.code, OK, "{}", last_error());
        let text = sent.text.unwrap();
        assert_eq!(sent.streamed.text, text);
        let messages = chat.messages();
        assert_eq!(messages.len(), 2 * i + 3);
        assert_eq!(messages[messages.len() - 1], ChatMessage::assistant(text.clone()));
        let ids = template.encode(&library.tokenizer, &messages[..messages.len() - 1], true).unwrap();
        assert_eq!(text, library.greedy(&ids, 12).text, "turn {i}: a fresh run of the whole conversation");
        let info = sent.info;
        assert_eq!(info.n_reused_tokens as usize, context_before, "turn {i}");
        assert_eq!((info.n_reused_tokens + info.generation.n_prompt_tokens) as usize, ids.len(), "turn {i}");
        assert_eq!(info.n_dropped_messages, 0);
        assert_eq!(info.n_context_tokens as usize, chat.context_used());
        assert_eq!(info.generation.n_generated_tokens as usize, sent.streamed.tokens.len());
        context_before = chat.context_used();
    }

    // The same conversation restored message by message in a new chat continues the same way.
    let restored = Chat::new(None, &greedy_params(12), 0);
    for m in chat.messages() {
        let (role, content) = (c_string(&m.role), c_string(&m.content));
        // SAFETY: a live chat and NUL-terminated strings.
        assert_eq!(unsafe { gemma_chat_add_message(restored.0, role.as_ptr(), content.as_ptr()) }, OK);
    }
    assert_eq!(restored.messages(), chat.messages());
    assert_eq!(restored.context_used(), 0);
    let (a, b) = (send(&chat, "Thanks!", 0), send(&restored, "Thanks!", 0));
    assert_eq!((a.code, b.code), (OK, OK));
    assert_eq!(a.text, b.text);
    assert_eq!(b.info.n_reused_tokens, 0, "nothing was cached in the restored chat");

    // A callback's stop ends the answer after that token; the cut answer stays in the conversation.
    let cut = send(&chat, "Tell me a long story about the sea.", 3);
    assert_eq!(cut.code, OK);
    assert_eq!(cut.info.generation.stop_reason, GemmaStopReason::Callback as i32);
    assert_eq!(cut.streamed.tokens.len(), 3);
    assert_eq!(chat.messages().last().unwrap().content, cut.text.unwrap());

    // Clearing keeps the system prompt; setting it to NULL removes it.
    // SAFETY: a live chat.
    assert_eq!(unsafe { gemma_chat_clear(chat.0) }, OK);
    assert_eq!(chat.messages(), [ChatMessage::system("Answer in one short sentence.")]);
    assert_eq!(chat.context_used(), 0);
    // SAFETY: a live chat; NULL removes the system prompt.
    assert_eq!(unsafe { gemma_chat_set_system(chat.0, std::ptr::null()) }, OK);
    assert!(chat.messages().is_empty());
}

#[test]
fn a_chat_keeps_its_kv_cache_types_for_every_turn() {
    let library = Library::get();
    let template = template();
    let types = (KvType::Q8_0, KvType::F16);
    let id = |t: KvType| t.ggml_type().id() as i32;
    let params = GemmaParams { type_k: id(types.0), type_v: id(types.1), ..greedy_params(12) };
    let chat = Chat::new(Some("Answer in one short sentence."), &params, 0);
    for (i, question) in ["What is the capital of France?", "And of Italy?"].into_iter().enumerate() {
        let sent = send(&chat, question, 0);
        assert_eq!(sent.code, OK, "{}", last_error());
        let messages = chat.messages();
        let ids = template.encode(&library.tokenizer, &messages[..messages.len() - 1], true).unwrap();
        let fresh = library.greedy_with_cache_types(&ids, 12, types);
        assert_eq!(sent.text.unwrap(), fresh.text, "turn {i}: a fresh run of the conversation with a q8_0/f16 cache");
    }
    // A type the cache cannot hold is refused when the chat is made.
    let bad = GemmaParams { type_k: 99, ..greedy_params(12) };
    // SAFETY: a live model handle, no system prompt, valid params.
    let chat = unsafe { gemma_chat_new(generator(), std::ptr::null(), &bad, 0) };
    assert!(chat.is_null());
    assert!(last_error().contains("type_k 99 is not a KV cache type"), "{}", last_error());
}

#[test]
fn errors_are_codes_with_messages_and_change_nothing() {
    let params = greedy_params(8);
    // SAFETY: NULL model, NULL system prompt, valid params.
    let none = unsafe { gemma_chat_new(std::ptr::null(), std::ptr::null(), &params, 0) };
    assert!(none.is_null());
    assert_eq!(last_error(), "model is NULL");
    let bad = GemmaParams { top_p: 2.0, ..params };
    // SAFETY: a live model handle, NULL system prompt, valid params struct.
    assert!(unsafe { gemma_chat_new(generator(), std::ptr::null(), &bad, 0) }.is_null());
    assert!(last_error().contains("top_p"), "{}", last_error());

    let chat = Chat::new(None, &params, 64);
    assert_eq!(send(&chat, "Hi.", 0).code, OK);
    let before = chat.messages();
    let used = chat.context_used();

    let long = send(&chat, &"word ".repeat(200), 0);
    assert_eq!(long.code, Status::ContextFull as c_int);
    assert!(long.text.is_none() && long.info == GemmaChatInfo::default());
    assert!(last_error().contains("context holds 64"), "{}", last_error());
    assert_eq!(chat.messages(), before);
    assert_eq!(chat.context_used(), used, "the cache is untouched");

    let (narrator, text) = (c_string("narrator"), c_string("x"));
    // SAFETY: a live chat and NUL-terminated strings.
    let code = unsafe { gemma_chat_add_message(chat.0, narrator.as_ptr(), text.as_ptr()) };
    assert_eq!(code, Status::InvalidArgument as c_int);
    assert!(last_error().contains("unknown role 'narrator'"), "{}", last_error());

    // Two user messages in a row: the template refuses, and the conversation stays as it was.
    let user = c_string("user");
    // SAFETY: a live chat and NUL-terminated strings.
    assert_eq!(unsafe { gemma_chat_add_message(chat.0, user.as_ptr(), text.as_ptr()) }, OK);
    let with_user = chat.messages();
    assert_eq!(send(&chat, "Again.", 0).code, Status::ChatTemplate as c_int);
    assert!(last_error().contains("alternate user and assistant"), "{}", last_error());
    assert_eq!(chat.messages(), with_user);

    let mut role = std::ptr::null();
    // SAFETY: a live chat; the other outputs may be NULL.
    let code = unsafe { gemma_chat_message(chat.0, 99, &mut role, std::ptr::null_mut(), std::ptr::null_mut()) };
    assert_eq!(code, Status::InvalidArgument as c_int);
    assert!(role.is_null());
    assert!(last_error().contains("index 99 is out of range"), "{}", last_error());

    // SAFETY: NULL chats and messages are checked before use.
    unsafe {
        let code = gemma_chat_send(
            std::ptr::null_mut(),
            text.as_ptr(),
            None,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(code, Status::InvalidArgument as c_int);
        assert_eq!(last_error(), "chat is NULL");
        let code = gemma_chat_send(
            chat.0,
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(code, Status::InvalidArgument as c_int);
        assert_eq!(last_error(), "message is NULL");
        assert_eq!(gemma_chat_n_messages(std::ptr::null()), Status::InvalidArgument as c_int);
        assert_eq!(gemma_chat_context_used(std::ptr::null()), Status::InvalidArgument as c_int);
        assert_eq!(gemma_chat_clear(std::ptr::null_mut()), Status::InvalidArgument as c_int);
        gemma_chat_free(std::ptr::null_mut());
    }
    let bad_utf8 = b"\xff\0";
    // SAFETY: a live chat and a NUL-terminated (non-UTF-8) string.
    let code = unsafe { gemma_chat_set_system(chat.0, bad_utf8.as_ptr().cast()) };
    assert_eq!(code, Status::InvalidUtf8 as c_int);
}

#[test]
fn an_embedding_model_holds_no_chat() {
    // SAFETY: a live handle; NULL system prompt and params.
    let chat = unsafe { gemma_chat_new(common::embedder(), std::ptr::null(), std::ptr::null(), 0) };
    assert!(chat.is_null());
    assert!(last_error().contains("is an embedding model"), "{}", last_error());
}

/// `params.context_shift` in a chat (`gemma chat --context-shift`): an answer goes on past a small context, as
/// the library's conversation with the same context shift (BOS and `n_keep` tokens kept) answers; the next
/// turn still works. `n_keep` -1 (the whole prompt) is refused in a chat.
#[test]
fn an_answer_goes_on_past_the_context_with_a_context_shift() {
    let library = Library::get();
    let params = GemmaParams { context_shift: 1, n_keep: 4, ..greedy_params(120) };
    let chat = Chat::new(None, &params, 64);
    let question = "Count from one to one hundred in words, one number per line.";
    let sent = send(&chat, question, 0);
    assert_eq!(sent.code, OK, "{}", last_error());
    let info = sent.info.generation;
    eprintln!("{} tokens, {} shifts: {:?}", info.n_generated_tokens, info.n_context_shifts, sent.text);
    assert!(info.n_context_shifts >= 1, "{info:?}");
    assert!(sent.info.n_context_tokens < 64);

    let template = template();
    let mut conversation = gemma_core::Conversation::new(
        &library.model,
        &library.tokenizer,
        &template,
        64,
        gemma_core::GenerationOptions {
            max_tokens: 120,
            sampling: gemma_core::SamplingParams::greedy(),
            context_shift: Some(gemma_core::ContextShift { keep: 4 + 1, discard: None }),
            ..Default::default()
        },
    )
    .unwrap();
    let turn = conversation.send(question, &library.pool, &mut |_| {}).unwrap();
    assert_eq!(sent.text.as_deref(), Some(turn.output.text.as_str()));
    assert_eq!(info.n_context_shifts as usize, turn.output.context_shifts.len());
    let next = send(&chat, "Thanks.", 0);
    assert_eq!(next.code, OK, "{}", last_error());

    let bad = GemmaParams { n_keep: -1, ..params };
    // SAFETY: a live model handle, no system prompt, valid params.
    let refused = unsafe { gemma_chat_new(generator(), std::ptr::null(), &bad, 64) };
    assert!(refused.is_null());
    assert!(last_error().contains("n_keep"), "{}", last_error());
}

/// `gemma_chat_set_speculative` (`gemma chat --spec-type`): a repeat-after-me chat answers as a plain chat, and
/// the turns that repeat the first have drafted tokens kept; an unknown type is refused and changes nothing.
#[test]
fn speculative_decoding_in_a_chat_changes_no_answer() {
    let turns = [
        "Repeat the following text exactly, word for word:\n\nThe quick brown fox jumps over the lazy dog. Rust is \
         a systems programming language that runs blazingly fast, prevents segfaults, and guarantees thread safety.",
        "Repeat that same text once more, exactly.",
    ];
    let params = greedy_params(60);
    let plain = Chat::new(None, &params, 0);
    let answers: Vec<Sent> = turns.iter().map(|t| send(&plain, t, 0)).collect();
    for kind in ["ngram-simple", "ngram-mod"] {
        let chat = Chat::new(None, &params, 0);
        let name = c_string(kind);
        // SAFETY: a live chat and a NUL-terminated name.
        assert_eq!(unsafe { gemma_chat_set_speculative(chat.0, name.as_ptr()) }, OK, "{}", last_error());
        let mut accepted = Vec::new();
        for (turn, plain) in turns.iter().zip(&answers) {
            let sent = send(&chat, turn, 0);
            assert_eq!(sent.code, OK, "{}", last_error());
            assert_eq!(sent.text, plain.text, "{kind}");
            assert_eq!(sent.streamed.tokens, plain.streamed.tokens, "{kind}");
            assert_eq!(counts(&sent.info), counts(&plain.info), "{kind}");
            let (mut drafted, mut kept) = (-1, -1);
            // SAFETY: a live chat and two writable counts.
            assert_eq!(unsafe { gemma_chat_speculative_stats(chat.0, &mut drafted, &mut kept) }, OK);
            assert!(0 <= kept && kept <= drafted, "{kind}: {kept}/{drafted}");
            accepted.push((kept, drafted));
        }
        eprintln!("{kind}: accepted/drafted per turn {accepted:?}");
        assert!(accepted[1].0 > 0, "{kind}: the second turn kept no drafted token");
    }

    let bogus = c_string("ngram-cache");
    // SAFETY: a live chat and a NUL-terminated name.
    assert_eq!(unsafe { gemma_chat_set_speculative(plain.0, bogus.as_ptr()) }, Status::InvalidArgument as c_int);
    assert!(last_error().contains("ngram-cache"), "{}", last_error());
    // A draft model cannot be given through the C API: draft-simple is refused rather than silently off.
    let draft = c_string("draft-simple");
    // SAFETY: a live chat and a NUL-terminated name.
    assert_eq!(unsafe { gemma_chat_set_speculative(plain.0, draft.as_ptr()) }, Status::InvalidArgument as c_int);
    assert!(last_error().contains("draft model"), "{}", last_error());
    // SAFETY: a live chat; NULL turns speculation off. NULL chats are checked.
    unsafe {
        assert_eq!(gemma_chat_set_speculative(plain.0, std::ptr::null()), OK);
        assert_eq!(
            gemma_chat_set_speculative(std::ptr::null_mut(), std::ptr::null()),
            Status::InvalidArgument as c_int
        );
        let (mut drafted, mut kept) = (-1, -1);
        assert_eq!(gemma_chat_speculative_stats(plain.0, &mut drafted, &mut kept), OK);
        assert_eq!((drafted, kept), (0, 0), "a plain chat drafts nothing");
    }
}

/// A turn's figures but its speeds.
fn counts(info: &GemmaChatInfo) -> [i32; 7] {
    let g = &info.generation;
    [
        g.n_prompt_tokens,
        g.n_generated_tokens,
        g.stop_reason,
        g.n_context_shifts,
        info.n_reused_tokens,
        info.n_dropped_messages,
        info.n_context_tokens,
    ]
}
