//! `Conversation` on the real Gemma 3 270M model: the cache carried between turns changes no answer, a turn
//! prefills only its new tokens, a full context drops the oldest exchanges, failures leave the
//! conversation as it was, and speculative decoding (n-grams from the whole conversation) changes no answer.

use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::generate::TokenEvent;
use gemma_core::sampling::Mirostat;
use gemma_core::{
    ContextShift, Conversation, ConversationError, GenerationOptions, Sampler, SamplingParams, Session, SpecStats,
    SpecType, SpeculativeParams,
};

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

/// What one turn of a conversation gave: enough to tell two runs apart.
#[derive(Debug, PartialEq)]
struct TurnResult {
    gen_ids: Vec<u32>,
    text: String,
    stop_reason: gemma_core::StopReason,
    context_shifts: Vec<(usize, usize)>,
    reused: usize,
    prefilled: usize,
    dropped_messages: usize,
    /// Tokens in the cache after the turn.
    context_used: usize,
}

/// Runs `turns` through a new conversation; returns each turn's result and speculation counts.
fn converse(
    opts: &GenerationOptions,
    ctx: usize,
    system: Option<&str>,
    turns: &[&str],
) -> Vec<(TurnResult, SpecStats)> {
    let f = common::default_model();
    let template = template();
    let mut conv = Conversation::new(&f.model, &f.tokenizer, &template, ctx, opts.clone()).unwrap();
    conv.set_system(system);
    turns
        .iter()
        .map(|text| {
            let mut streamed = String::new();
            let turn = conv.send(text, &f.pool, &mut |e: &TokenEvent<'_>| streamed.push_str(e.text)).unwrap();
            assert_eq!(streamed, turn.output.text, "the streamed pieces make the answer");
            let result = TurnResult {
                gen_ids: turn.output.gen_ids.clone(),
                text: turn.output.text.clone(),
                stop_reason: turn.output.stop_reason,
                context_shifts: turn.output.context_shifts.clone(),
                reused: turn.reused,
                prefilled: turn.output.prompt_ids.len(),
                dropped_messages: turn.dropped_messages,
                context_used: conv.context_used(),
            };
            (result, turn.output.speculative)
        })
        .collect()
}

const KINDS: [SpecType; 2] = [SpecType::NgramSimple, SpecType::NgramMod];

/// The same turns with each speculation type give plain decoding's turns exactly (tokens, text, stops, shifts,
/// the cache reused and left behind); returns each type's per-turn counts.
fn assert_speculation_changes_nothing(
    what: &str,
    opts: &GenerationOptions,
    ctx: usize,
    system: Option<&str>,
    turns: &[&str],
) -> Vec<(SpecType, Vec<SpecStats>)> {
    let plain = converse(opts, ctx, system, turns);
    KINDS
        .iter()
        .map(|&kind| {
            let sp_opts = GenerationOptions { speculative: Some(SpeculativeParams::new(kind)), ..opts.clone() };
            let sp = converse(&sp_opts, ctx, system, turns);
            let mut stats = Vec::new();
            for (i, ((p, p_st), (s, s_st))) in plain.iter().zip(&sp).enumerate() {
                assert_eq!(p_st.draft_n, 0);
                assert_eq!(s, p, "{what}, {kind}, turn {i}");
                assert!(s_st.draft_n_accepted <= s_st.draft_n, "{s_st:?}");
                eprintln!(
                    "{what}, {kind}, turn {i}: {} tokens, {} drafts, {}/{} drafted tokens accepted",
                    s.gen_ids.len(),
                    s_st.drafts,
                    s_st.draft_n_accepted,
                    s_st.draft_n
                );
                stats.push(*s_st);
            }
            (kind, stats)
        })
        .collect()
}

const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. Rust is a systems programming language that \
runs blazingly fast, prevents segfaults, and guarantees thread safety. It accomplishes these goals by being memory \
safe without using garbage collection.";

/// Turns whose answers repeat what an earlier turn said: drafts come from the earlier turns' tokens.
fn repetitive_turns() -> Vec<String> {
    vec![
        format!("Repeat the following text exactly, word for word:\n\n{PARAGRAPH}"),
        "Repeat that same text once more, exactly, word for word.".to_string(),
        "Thank you! Now write it one last time, exactly as before.".to_string(),
    ]
}

#[test]
fn greedy_answers_with_speculation_are_plain_decodings_and_drafts_come_from_earlier_turns() {
    let turns = repetitive_turns();
    let turns: Vec<&str> = turns.iter().map(String::as_str).collect();
    let system = Some("You repeat texts exactly when asked.");
    for (kind, stats) in assert_speculation_changes_nothing("greedy", &greedy(80), 4096, system, &turns) {
        // The later turns copy text from earlier turns: drafts are made and accepted there.
        let later: usize = stats[1..].iter().map(|s| s.draft_n_accepted).sum();
        assert!(stats[1..].iter().all(|s| s.drafts > 0), "{kind}: {stats:?}");
        assert!(later >= 20, "{kind}: {stats:?}");
    }
}

/// The n-grams of a turn come from the whole conversation in the cache, not only from the turn's own tokens:
/// the second turn's answer (a copy of the first's) gets more of its tokens drafted than a drafter that sees
/// only that turn would give it.
#[test]
fn the_drafts_of_a_turn_come_from_the_whole_conversation() {
    let f = common::default_model();
    let template = template();
    let turns = repetitive_turns();
    let opts = GenerationOptions { speculative: Some(SpeculativeParams::new(SpecType::NgramSimple)), ..greedy(80) };
    let mut conv = Conversation::new(&f.model, &f.tokenizer, &template, 4096, opts.clone()).unwrap();
    conv.send(&turns[0], &f.pool, &mut |_| {}).unwrap();
    let earlier = conv.messages().to_vec();
    let second = conv.send(&turns[1], &f.pool, &mut |_| {}).unwrap();

    // The same second turn with the drafter given only that turn's tokens.
    let mut messages = earlier.clone();
    messages.push(ChatMessage::user(turns[1].as_str()));
    let ids = template.encode(&f.tokenizer, &messages, true).unwrap();
    let reused = second.reused;
    let mut session = Session::new(&f.model, 4096);
    session.prefill(&ids[..reused], &f.pool).unwrap();
    let mut sampler = Sampler::for_model(SamplingParams::greedy(), &f.tokenizer, 4096);
    sampler.accept_all(&ids[..reused]);
    let turn_only = session
        .generate_streaming_with(&mut sampler, &f.tokenizer, &ids[reused..], &opts, &f.pool, &mut |_| {})
        .unwrap();
    assert_eq!(turn_only.gen_ids, second.output.gen_ids);
    let (whole, own) = (second.output.speculative, turn_only.speculative);
    eprintln!("second turn: whole conversation {whole:?}, the turn's own tokens {own:?}");
    assert!(whole.draft_n_accepted > own.draft_n_accepted, "whole {whole:?}, own {own:?}");
}

/// Seeded sampling with penalties and DRY, and Mirostat 2: one sampler goes on across turns and advances over
/// the kept tokens only, so every turn's answer is plain decoding's.
#[test]
fn seeded_sampling_across_turns_is_unchanged_by_speculation() {
    let turns = repetitive_turns();
    let turns: Vec<&str> = turns.iter().map(String::as_str).collect();
    let chain = SamplingParams {
        temperature: 0.7,
        top_k: 20,
        top_p: 0.95,
        seed: Some(7),
        repeat_penalty: 1.1,
        dry_multiplier: 0.8,
        ..Default::default()
    };
    let mirostat = SamplingParams { temperature: 0.8, mirostat: Mirostat::V2, seed: Some(3), ..Default::default() };
    let mut accepted = 0;
    for (what, sampling) in [("chain", chain), ("mirostat", mirostat)] {
        let opts = GenerationOptions { max_tokens: 80, sampling, ..Default::default() };
        for (_, stats) in assert_speculation_changes_nothing(what, &opts, 4096, None, &turns) {
            accepted += stats.iter().map(|s| s.draft_n_accepted).sum::<usize>();
        }
    }
    assert!(accepted > 0, "the sampled conversations never accepted a draft");
}

/// Dropping the oldest exchanges (a small context) and context shifts inside an answer: the turns are still
/// plain decoding's, and the next turn reuses the same part of the cache.
#[test]
fn dropped_turns_and_context_shifts_are_unchanged_by_speculation() {
    let f = common::default_model();
    let turns = ["Hello there.", "What is two plus two?", "Name a fruit.", "And a vegetable?"];
    let dropped = assert_speculation_changes_nothing("drop", &greedy(16), 100, Some("Be brief."), &turns);
    assert!(dropped.iter().all(|(_, s)| s.len() == 4));

    let mut opts = greedy(200);
    opts.sampling.logit_bias = f.tokenizer.end_of_generation_ids().map(|id| (id, f32::NEG_INFINITY)).collect();
    opts.context_shift = Some(ContextShift { keep: 4, discard: None });
    let turns = [
        "Repeat this forever: one two three four, one two three four, one two three four.",
        "Thanks. Now a short poem.",
    ];
    let plain = converse(&opts, 128, None, &turns);
    assert!(plain[0].0.context_shifts.len() >= 2, "{:?}", plain[0].0.context_shifts);
    assert!(plain[1].0.dropped_messages >= 2, "the long exchange no longer fits");
    let shifted = assert_speculation_changes_nothing("shift", &opts, 128, None, &turns);
    assert!(shifted.iter().any(|(_, s)| s[0].draft_n_accepted > 0), "{shifted:?}");
}
