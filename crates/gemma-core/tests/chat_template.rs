//! Chat templates against llama.cpp: the text llama-server's `/apply-template` renders and the ids its
//! `/tokenize` gives for it (testdata/goldens/chat_templates.json, written by
//! scripts/llama_chat_template_goldens.py), on the real Gemma 3 270M and SmolLM2 135M files.

use std::path::PathBuf;

use gemma_core::chat::{common_prefix_len, ChatMessage, ChatTemplate, ChatTemplateError, TemplateSource};
use gemma_core::Tokenizer;
use gemma_io::GgufFile;
use serde::Deserialize;

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Deserialize)]
struct Goldens {
    llama_cpp: serde_json::Value,
    renders: Vec<Render>,
}

#[derive(Clone, Deserialize)]
struct Render {
    model: String,
    template: String,
    template_source: Option<String>,
    cases: Vec<Case>,
}

#[derive(Clone, Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    prompt: String,
    ids: Vec<u32>,
}

fn goldens() -> Goldens {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/chat_templates.json");
    let text = std::fs::read_to_string(path).expect("chat template goldens");
    let g: Goldens = serde_json::from_str(&text).expect("goldens parse");
    assert!(g.llama_cpp["commit"].as_str().is_some_and(|c| c.len() == 40), "goldens record the llama.cpp commit");
    g
}

fn render_of<'g>(g: &'g Goldens, model: &str, template: &str) -> &'g Render {
    let r = g.renders.iter().find(|r| r.model == model && r.template == template).expect("render in goldens");
    assert!(r.cases.len() >= 12, "every conversation with and without the generation prompt");
    r
}

fn model_path(name: &str) -> PathBuf {
    if name == GEMMA {
        gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model")
    } else {
        gemma_fetch::models_dir().join(name)
    }
}

fn open(name: &str) -> GgufFile {
    GgufFile::open(model_path(name)).expect("model file")
}

/// Renders every case and compares the text (and, given a tokenizer, the ids) with llama.cpp's.
fn check(t: &ChatTemplate, render: &Render, tokenizer: Option<&Tokenizer>) {
    for c in &render.cases {
        let what =
            format!("{} / {} / {} / gen prompt {}", render.model, render.template, c.name, c.add_generation_prompt);
        let text = t.render(&c.messages, c.add_generation_prompt).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(text, c.prompt, "{what}: rendered text");
        if let Some(tok) = tokenizer {
            let ids = t.encode(tok, &c.messages, c.add_generation_prompt).unwrap();
            assert_eq!(ids, c.ids, "{what}: token ids");
        }
    }
}

#[test]
fn gemma_file_without_template_gets_the_builtin_gemma_template_matching_googles() {
    let g = goldens();
    let file = open(GEMMA);
    let tok = Tokenizer::from_gguf(&file).unwrap();
    assert!(file.get("tokenizer.chat_template").is_none(), "this Gemma file carries no template");

    let t = ChatTemplate::from_gguf(&file, &tok).unwrap();
    assert_eq!(t.source(), TemplateSource::BuiltinGemma);
    assert!(t.template_text().contains("<start_of_turn>"), "the built-in text stands in for the file's");
    assert_eq!((t.bos_token(), t.eos_token()), ("<bos>", "<eos>"));
    let official = render_of(&g, GEMMA, "gemma3_official_jinja");
    check(&t, official, Some(&tok));
    // llama.cpp's own (non-Jinja) Gemma format agrees on the conversations of plain strings. Given text parts
    // it joins them with newlines first, where Google's template (and ours) trims each part and puts them
    // side by side, and drops a system message's parts after the first.
    let mut builtin = render_of(&g, GEMMA, "llama_builtin_gemma").clone();
    let parts = |c: &Case| c.messages.iter().any(|m| !m.parts.is_empty());
    assert!(builtin.cases.iter().any(parts), "the goldens have text parts");
    builtin.cases.retain(|c| !parts(c));
    check(&t, &builtin, Some(&tok));
    let c = official.cases.iter().find(|c| c.name == "text_parts").expect("text parts case");
    assert!(c.prompt.contains("Be brief.\n\nHello.Can you count?") && c.prompt.contains("Encoretrois"), "{}", c.prompt);
    // So do the stand-alone built-in and the metadata-only constructor.
    check(&ChatTemplate::builtin_gemma(), official, Some(&tok));
    let from_meta = ChatTemplate::from_gguf_metadata(&file).unwrap();
    assert_eq!(from_meta.source(), TemplateSource::BuiltinGemma);
    check(&from_meta, official, Some(&tok));
}

#[test]
fn googles_gemma3_jinja_renders_as_in_llama_cpp() {
    // The real Hugging Face template exercises `is string`, slicing, `trim`, `raise_exception` and
    // whitespace control; rendered here with Gemma's BOS rule.
    let g = goldens();
    let file = open(GEMMA);
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let official = render_of(&g, GEMMA, "gemma3_official_jinja");
    let src = official.template_source.as_deref().expect("template source recorded");
    let t = ChatTemplate::from_source(src, "<bos>", "<eos>").unwrap().strip_special(true, false);
    assert_eq!(t.source(), TemplateSource::Custom);
    assert_eq!(t.template_text(), src, "the text it was given (what llama-server's /props shows)");
    check(&t, official, Some(&tok));

    // Without the strip rule the template's own BOS stays: the text llama.cpp renders before stripping.
    let unstripped = ChatTemplate::from_source(src, "<bos>", "<eos>").unwrap();
    let c = &official.cases[0];
    assert_eq!(unstripped.render(&c.messages, c.add_generation_prompt).unwrap(), format!("<bos>{}", c.prompt));
}

#[test]
fn chatml_fallback_matches_llama_cpp_on_the_gemma_file() {
    // llama.cpp itself falls back to ChatML for this file; our ChatML renders the same text and ids.
    let g = goldens();
    let file = open(GEMMA);
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let t = ChatTemplate::builtin_chatml("<bos>", "<eos>").strip_special(true, false);
    assert_eq!(t.source(), TemplateSource::BuiltinChatml);
    check(&t, render_of(&g, GEMMA, "file"), Some(&tok));
}

#[test]
fn smollm2_file_template_matches_llama_cpp() {
    let g = goldens();
    let file = open(SMOLLM2);
    let t = ChatTemplate::from_gguf_metadata(&file).unwrap();
    assert_eq!(t.source(), TemplateSource::Gguf);
    // SmolLM2's BOS is `<|im_start|>` and it adds none, so the leading `<|im_start|>` is kept.
    assert_eq!((t.bos_token(), t.eos_token()), ("<|im_start|>", "<|im_end|>"));
    let render = render_of(&g, SMOLLM2, "file");
    // A default system prompt is added when the conversation has none.
    assert!(render.cases[0].prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    check(&t, render, None);

    // With the BPE tokenizer: the same template and BOS/EOS text, and llama-server's token ids.
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let t = ChatTemplate::from_gguf(&file, &tok).unwrap();
    assert_eq!(t.source(), TemplateSource::Gguf);
    assert_eq!((t.bos_token(), t.eos_token()), ("<|im_start|>", "<|im_end|>"));
    check(&t, render, Some(&tok));
}

#[test]
fn broken_templates_are_typed_errors() {
    assert!(matches!(ChatTemplate::from_source("{% for m in messages %}", "", ""), Err(ChatTemplateError::Compile(_))));
    let raising = ChatTemplate::from_source("{{ raise_exception('no system role here') }}", "", "").unwrap();
    match raising.render(&[ChatMessage::user("hi")], true) {
        Err(ChatTemplateError::Raised(msg)) => assert_eq!(msg, "no system role here"),
        other => panic!("expected a raised exception, got {other:?}"),
    }
    let bad_call = ChatTemplate::from_source("{{ messages[0].content.no_such_method() }}", "", "").unwrap();
    assert!(matches!(bad_call.render(&[ChatMessage::user("hi")], true), Err(ChatTemplateError::Render(_))));
    // Gemma turns must alternate, as in Google's template.
    let err =
        ChatTemplate::builtin_gemma().render(&[ChatMessage::user("a"), ChatMessage::user("b")], true).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Raised(ref m) if m.contains("alternate")), "{err}");
}

#[test]
fn python_string_methods_and_helpers_work() {
    let src = "{{ messages[0].content.strip().title() }}|{{ messages[0].content.startswith('  he') }}|\
               {{ messages[0].content.split() | length }}|{{ messages | tojson }}|{{ strftime_now('%Y') | length }}";
    let t = ChatTemplate::from_source(src, "<s>", "</s>").unwrap();
    let out = t.render(&[ChatMessage::user("  hello big world ")], false).unwrap();
    assert_eq!(
        out,
        // Booleans print as Python's; map keys keep their order, as in Python.
        "Hello Big World|True|3|[{\"role\": \"user\", \"content\": \"  hello big world \"}]|4"
    );
    // `bos_token` / `eos_token` / `add_generation_prompt` are set; strip_special removes exactly one BOS.
    let t = ChatTemplate::from_source(
        "{{ bos_token }}{{ bos_token }}x{{ eos_token }}{{ add_generation_prompt }}",
        "<s>",
        "</s>",
    )
    .unwrap()
    .strip_special(true, false);
    assert_eq!(t.render(&[], true).unwrap(), "<s>x</s>True");
    let t =
        ChatTemplate::from_source("{{ bos_token }}x{{ eos_token }}", "<s>", "</s>").unwrap().strip_special(true, true);
    assert_eq!(t.render(&[], false).unwrap(), "x");
}

#[test]
fn a_new_turn_extends_the_previous_prompt_token_for_token() {
    // What incremental chat relies on: the ids of turn 1's prompt plus the answer are a prefix of the ids
    // of turn 2's prompt, so only the new turn is prefilled.
    let file = open(GEMMA);
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let t = ChatTemplate::from_gguf(&file, &tok).unwrap();
    let mut conv = vec![ChatMessage::system("Be brief."), ChatMessage::user("What is two plus two?")];
    let turn1 = t.encode(&tok, &conv, true).unwrap();
    let answer = "Two plus two is four.";
    let mut cached = turn1.clone();
    cached.extend(tok.encode(answer, false, false));
    conv.push(ChatMessage::assistant(answer));
    conv.push(ChatMessage::user("And times three?"));
    let turn2 = t.encode(&tok, &conv, true).unwrap();
    assert_eq!(common_prefix_len(&cached, &turn2), cached.len());
    let new_part = tok.decode(&turn2[cached.len()..], true);
    assert_eq!(new_part, "<end_of_turn>\n<start_of_turn>user\nAnd times three?<end_of_turn>\n<start_of_turn>model\n");
}
