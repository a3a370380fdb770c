//! `Conversation` on the real Gemma 3 270M model: the cache carried between turns changes no answer, a turn
//! prefills only its new tokens, a full context drops the oldest exchanges, and failures leave the
//! conversation as it was.

use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::generate::TokenEvent;
use gemma_core::{ContextShift, Conversation, ConversationError, GenerationOptions, SamplingParams, Session};

mod common;

fn template() -> ChatTemplate {
    let f = common::default_model();
    ChatTemplate::from_gguf(&f.model.file, &f.tokenizer).expect("the model's template")
}

fn greedy(max_tokens: usize) -> GenerationOptions {
    GenerationOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() }
}

/// What a fresh session answers to the whole rendered conversation.
fn fresh_answer(template: &ChatTemplate, messages: &[ChatMessage], max_tokens: usize) -> String {
    let f = common::default_model();
    let ids = template.encode(&f.tokenizer, messages, true).unwrap();
    let mut session = Session::new(&f.model, 4096);
    session.generate(&f.tokenizer, &ids, &greedy(max_tokens), &f.pool, &mut |_| {}).unwrap().text
}

#[test]
fn turns_reuse_the_cache_and_answer_as_a_fresh_run_of_the_whole_conversation() {
    let f = common::default_model();
    let template = template();
    let mut conv = Conversation::new(&f.model, &f.tokenizer, &template, 4096, greedy(12)).unwrap();
    conv.set_system(Some("Answer in one short sentence."));
    let mut context_before = 0;
    for (i, question) in ["What is the capital of France?", "And of Italy?", "Thanks!"].into_iter().enumerate() {
        let mut streamed = String::new();
        let turn = conv.send(question, &f.pool, &mut |e: &TokenEvent<'_>| streamed.push_str(e.text)).unwrap();
        assert_eq!(streamed, turn.output.text, "the streamed pieces make the answer");
        let messages = conv.messages();
        assert_eq!(messages.len(), 2 * i + 3, "system, then a user and an assistant message per turn");
        assert_eq!(messages[messages.len() - 2], ChatMessage::user(question));
        assert_eq!(messages[messages.len() - 1], ChatMessage::assistant(turn.output.text.clone()));
        // The answer is what a fresh session gives for the whole conversation up to the question.
        assert_eq!(turn.output.text, fresh_answer(&template, &messages[..messages.len() - 1], 12), "turn {i}");
        // Everything cached before is reused; only the new tokens are prefilled.
        let rendered = template.encode(&f.tokenizer, &messages[..messages.len() - 1], true).unwrap();
        assert_eq!(turn.reused, context_before, "turn {i}");
        assert_eq!(turn.reused + turn.output.prompt_ids.len(), rendered.len(), "turn {i}");
        assert_eq!(turn.dropped_messages, 0);
        if i > 0 {
            assert!(turn.output.prompt_ids.len() * 2 < rendered.len(), "turn {i} prefilled only its own tokens");
        }
        context_before = conv.context_used();
        assert!(context_before > rendered.len());
    }

    conv.clear();
    assert_eq!(conv.messages(), [ChatMessage::system("Answer in one short sentence.")]);
    assert_eq!(conv.context_used(), 0);
    let turn = conv.send("What is the capital of France?", &f.pool, &mut |_| {}).unwrap();
    assert_eq!(turn.reused, 0);
    assert_eq!(turn.output.text, fresh_answer(&template, &conv.messages()[..2], 12));
}

#[test]
fn a_full_context_drops_the_oldest_exchanges_and_keeps_the_system_prompt() {
    let f = common::default_model();
    let template = template();
    // About 30 tokens an exchange: the fourth question no longer fits with room for its 16-token answer.
    let mut conv = Conversation::new(&f.model, &f.tokenizer, &template, 100, greedy(16)).unwrap();
    conv.set_system(Some("Be brief."));
    let mut dropped = 0;
    for question in ["Hello there.", "What is two plus two?", "Name a fruit.", "And a vegetable?"] {
        let turn = conv.send(question, &f.pool, &mut |_| {}).unwrap();
        dropped += turn.dropped_messages;
        assert!(conv.context_used() <= 100);
        assert_eq!(turn.dropped_messages % 2, 0, "whole exchanges are dropped");
    }
    assert!(dropped >= 2, "some exchange was dropped");
    let messages = conv.messages();
    assert_eq!(messages[0], ChatMessage::system("Be brief."));
    assert!(!messages.iter().any(|m| m.content == "Hello there."), "{messages:?}");
    assert_eq!(messages[messages.len() - 2], ChatMessage::user("And a vegetable?"));
    assert_eq!(messages.len(), 1 + 2 * 4 - dropped);
}

/// With a context shift an answer goes on past the context; the conversation then knows which tokens its
/// shifted cache holds, so the next turn reuses only what is really there and answers as a fresh session
/// given the same messages.
#[test]
fn a_shifted_answer_goes_past_the_context_and_the_next_turn_reuses_only_what_is_there() {
    let f = common::default_model();
    let template = template();
    let mut opts = greedy(200);
    // Never end the turn, so the answer reaches the context's end.
    opts.sampling.logit_bias = f.tokenizer.end_of_generation_ids().map(|id| (id, f32::NEG_INFINITY)).collect();
    opts.context_shift = Some(ContextShift { keep: 4, discard: None });
    let mut conv = Conversation::new(&f.model, &f.tokenizer, &template, 128, opts.clone()).unwrap();
    let turn = conv.send("Tell me a long story about a dragon.", &f.pool, &mut |_| {}).unwrap();
    assert_eq!(turn.output.gen_ids.len(), 200);
    assert!(turn.output.context_shifts.len() >= 2, "{:?}", turn.output.context_shifts);
    assert!(conv.context_used() < 128);

    let turn = conv.send("Thanks. Now a short poem.", &f.pool, &mut |_| {}).unwrap();
    assert!(turn.dropped_messages >= 2, "the long exchange no longer fits");
    assert!(turn.reused <= 4, "only the kept start is shared: {}", turn.reused);
    let messages = conv.messages();
    let ids = template.encode(&f.tokenizer, &messages[..messages.len() - 1], true).unwrap();
    let mut session = Session::new(&f.model, 128);
    let fresh = session.generate(&f.tokenizer, &ids, &opts, &f.pool, &mut |_| {}).unwrap();
    assert_eq!(turn.output.gen_ids, fresh.gen_ids);
    assert_eq!(turn.output.context_shifts, fresh.context_shifts);
}

#[test]
fn failures_leave_the_conversation_as_it_was() {
    let f = common::default_model();
    let template = template();
    let mut conv = Conversation::new(&f.model, &f.tokenizer, &template, 64, greedy(8)).unwrap();
    conv.send("Hi.", &f.pool, &mut |_| {}).unwrap();
    let before = conv.messages().to_vec();

    let long = "word ".repeat(200);
    match conv.send(&long, &f.pool, &mut |_| {}) {
        Err(ConversationError::MessageTooLong { tokens, context: 64 }) => assert!(tokens > 64),
        other => panic!("expected MessageTooLong, got {other:?}"),
    }
    assert_eq!(conv.messages(), before);

    let bad = vec![ChatMessage::user("a"), ChatMessage::new("narrator", "b")];
    let e = conv.set_messages(bad).unwrap_err();
    assert!(matches!(&e, ConversationError::UnknownRole(r) if r == "narrator"), "{e}");
    assert_eq!(conv.messages(), before);

    // Two user messages in a row: Gemma's template refuses them, and the conversation stays as it was.
    let mut twice = before.clone();
    twice.push(ChatMessage::user("One."));
    conv.set_messages(twice.clone()).unwrap();
    let e = conv.send("Two.", &f.pool, &mut |_| {}).unwrap_err();
    assert!(matches!(e, ConversationError::Template(_)), "{e}");
    assert!(e.to_string().contains("alternate user and assistant"), "{e}");
    assert_eq!(conv.messages(), twice);
}
