//! The C API called from Rust as C calls it (the `extern "C"` functions, raw pointers), on the default model:
//! errors, tokenization against llama.cpp's ids, the buffer protocol, greedy generation against the library's
//! own and llama.cpp's, the callback's stop, the chat template, one handle on two threads.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, CStr};

use common::{
    c_string, collect, generator, goldens, greedy_params, last_error, take_text, Handle, Library, Streamed, MAX_TOKENS,
};
use gemma_capi::*;
use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::KvType;

mod common;

const OK: c_int = Status::Ok as c_int;

fn tokenize(text: &CStr, add_bos: bool) -> Vec<u32> {
    let mut n = 0usize;
    // SAFETY: live handle, NUL-terminated text, no buffer (cap 0), `n` writable.
    let code = unsafe { gemma_tokenize(generator(), text.as_ptr(), add_bos as c_int, std::ptr::null_mut(), 0, &mut n) };
    assert!(code == Status::BufferTooSmall as c_int || (code == OK && n == 0), "size query: {code}");
    let mut ids = vec![0u32; n];
    let mut written = 0usize;
    // SAFETY: `ids` holds `n` ids.
    let code =
        unsafe { gemma_tokenize(generator(), text.as_ptr(), add_bos as c_int, ids.as_mut_ptr(), n, &mut written) };
    assert_eq!((code, written), (OK, n), "{}", last_error());
    ids
}

fn detokenize(ids: &[u32], render_special: bool) -> String {
    let mut len = 0usize;
    // SAFETY: live handle, `ids` readable, no buffer (cap 0), `len` writable.
    let code = unsafe {
        gemma_detokenize(
            generator(),
            ids.as_ptr(),
            ids.len(),
            render_special as c_int,
            std::ptr::null_mut(),
            0,
            &mut len,
        )
    };
    assert_eq!(code, Status::BufferTooSmall as c_int, "a 0-byte buffer never holds the NUL");
    let mut buf = vec![0u8; len + 1];
    let mut written = 0usize;
    // SAFETY: `buf` holds len + 1 bytes.
    let code = unsafe {
        gemma_detokenize(
            generator(),
            ids.as_ptr(),
            ids.len(),
            render_special as c_int,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut written,
        )
    };
    assert_eq!((code, written), (OK, len), "{}", last_error());
    CStr::from_bytes_with_nul(&buf).unwrap().to_str().unwrap().to_string()
}

struct Generation {
    code: c_int,
    text: Option<String>,
    info: GemmaGenerationInfo,
    streamed: Streamed,
}

fn generate_on(model: *const GemmaModel, prompt: &CStr, params: &GemmaParams, stop_after: usize) -> Generation {
    let mut streamed = Streamed { stop_after, ..Default::default() };
    let mut out: *mut c_char = std::ptr::null_mut();
    let mut info = GemmaGenerationInfo::default();
    // SAFETY: live handle, NUL-terminated prompt, valid params, `collect` with a `Streamed`, writable outputs.
    let code = unsafe {
        gemma_generate(
            model,
            prompt.as_ptr(),
            params,
            Some(collect),
            (&mut streamed as *mut Streamed).cast(),
            &mut out,
            &mut info,
        )
    };
    // SAFETY: NULL or a string from gemma_generate, not used after this.
    let text = unsafe { take_text(out) };
    Generation { code, text, info, streamed }
}

#[test]
fn open_errors_name_the_problem() {
    let open = |path: &CStr| {
        // SAFETY: a NUL-terminated path.
        let model = unsafe { gemma_model_open(path.as_ptr(), 1) };
        assert!(model.is_null());
        last_error()
    };
    let missing = open(c"/nonexistent/dir/model.gguf");
    assert!(missing.contains("No such file") && missing.contains("/nonexistent/dir/model.gguf"), "{missing}");

    // SAFETY: NULL is allowed and reported.
    assert!(unsafe { gemma_model_open(std::ptr::null(), 1) }.is_null());
    assert_eq!(last_error(), "path is NULL");

    let bad_utf8 = open(c"/tmp/\xff\xfe.gguf");
    assert!(bad_utf8.contains("path is not valid UTF-8"), "{bad_utf8}");

    // The real model cut short, and a file that is no GGUF at all.
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(common::model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let message = open(&c_string(truncated.to_str().unwrap()));
    assert!(message.contains("truncated"), "{message}");
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "just some text, not a model").unwrap();
    let message = open(&c_string(text_file.to_str().unwrap()));
    assert!(message.contains("not a GGUF file"), "{message}");
}

#[test]
fn model_info_is_the_librarys() {
    let library = Library::get();
    // SAFETY: a live handle.
    unsafe {
        assert_eq!(gemma_model_vocab_size(generator()) as usize, library.tokenizer.vocab_size());
        assert_eq!(gemma_model_context_length(generator()) as usize, library.model.config.context_length);
        let name = CStr::from_ptr(gemma_model_name(generator())).to_str().unwrap();
        assert_eq!(name, library.model.config.name);
    }
    // SAFETY: static strings.
    let version = unsafe { CStr::from_ptr(gemma_version_string()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let [major, minor, patch] = [0, 1, 2].map(|i| version.split('.').nth(i).unwrap().parse::<c_int>().unwrap());
    assert_eq!(gemma_version(), major * 10_000 + minor * 100 + patch);
}

#[test]
fn tokenize_gives_llama_cpp_ids_and_detokenize_gives_the_text_back() {
    for golden in goldens() {
        let prompt = c_string(&golden.prompt);
        assert_eq!(tokenize(&prompt, true), golden.prompt_ids, "{:?}", golden.prompt);
        // Special tokens written in a prompt (`<start_of_turn>`) come back only when rendered.
        assert_eq!(detokenize(&golden.prompt_ids, true), format!("<bos>{}", golden.prompt), "round trip");
    }
    // Without BOS, and with special tokens rendered.
    let ids = tokenize(c"The capital of France is", false);
    assert_eq!(ids, goldens()[0].prompt_ids[1..]);
    assert_eq!(detokenize(&goldens()[0].prompt_ids, true), "<bos>The capital of France is");
    assert!(tokenize(c"", false).is_empty());
    assert_eq!(detokenize(&[], false), "");
}

#[test]
fn small_buffers_get_the_size_needed_and_are_left_alone() {
    let (text, want) = (c"The capital of France is", &goldens()[0].prompt_ids);
    let mut ids = [u32::MAX; 3];
    let mut n = 0usize;
    // SAFETY: `ids` holds 3 ids.
    let code = unsafe { gemma_tokenize(generator(), text.as_ptr(), 1, ids.as_mut_ptr(), ids.len(), &mut n) };
    assert_eq!((code, n), (Status::BufferTooSmall as c_int, want.len()));
    assert_eq!(ids, [u32::MAX; 3], "nothing written");
    assert!(last_error().contains("holds 3 token ids but 6 are needed"), "{}", last_error());

    let mut exact = vec![0u32; n];
    // SAFETY: `exact` holds n ids.
    let code = unsafe { gemma_tokenize(generator(), text.as_ptr(), 1, exact.as_mut_ptr(), n, &mut n) };
    assert_eq!(code, OK);
    assert_eq!(&exact, want);

    // Text: the length comes back without the NUL; a buffer of exactly that length is one byte short.
    let mut buf = [b'#'; 64];
    let mut len = 0usize;
    // SAFETY: `buf` holds 64 bytes; 24 of them are offered.
    let code =
        unsafe { gemma_detokenize(generator(), want.as_ptr(), want.len(), 0, buf.as_mut_ptr().cast(), 24, &mut len) };
    assert_eq!((code, len), (Status::BufferTooSmall as c_int, 24));
    assert_eq!(buf, [b'#'; 64], "nothing written");
    // SAFETY: as above, 25 bytes offered.
    let code =
        unsafe { gemma_detokenize(generator(), want.as_ptr(), want.len(), 0, buf.as_mut_ptr().cast(), 25, &mut len) };
    assert_eq!(code, OK);
    assert_eq!(&buf[..26], b"The capital of France is\0#");
}

#[test]
fn greedy_generation_is_the_librarys_and_llama_cpps() {
    let library = Library::get();
    // Prompts whose first steps are certain (margin >= 0.75): code, a fact, a translation.
    for p in [2, 3, 5] {
        let golden = &goldens()[p];
        let run = generate_on(generator(), &c_string(&golden.prompt), &greedy_params(MAX_TOKENS), 0);
        assert_eq!(run.code, OK, "{}", last_error());
        let expected = library.greedy(&golden.prompt_ids, MAX_TOKENS);
        let ids: Vec<u32> = run.streamed.tokens.iter().map(|&t| t as u32).collect();
        assert_eq!(ids, expected.gen_ids, "prompt {p}: the library's greedy tokens");
        assert_eq!(run.text.as_deref(), Some(expected.text.as_str()), "prompt {p}: the library's text");
        assert_eq!(run.streamed.text, expected.text, "prompt {p}: the pieces make the text");
        let certain = golden.certain_steps();
        assert!(certain >= 3, "prompt {p}");
        assert_eq!(ids[..certain], golden.gen_ids[..certain], "prompt {p}: llama.cpp's certain steps");
        assert_eq!(run.info.n_prompt_tokens as usize, golden.prompt_ids.len());
        assert_eq!(run.info.n_generated_tokens as usize, MAX_TOKENS);
        assert_eq!(run.info.stop_reason, GemmaStopReason::MaxTokens as i32);
        assert!(run.info.decode_tokens_per_second > 0.0);
    }
}

#[test]
fn kv_cache_types_are_the_librarys() {
    let library = Library::get();
    let golden = &goldens()[3];
    let types = |k: KvType, v: KvType| (k, v);
    let mut texts = Vec::new();
    for (keys, values) in
        [types(KvType::F32, KvType::F32), types(KvType::F16, KvType::Q8_0), types(KvType::Q4_0, KvType::Q4_0)]
    {
        let id = |t: KvType| t.ggml_type().id() as i32;
        let params = GemmaParams { type_k: id(keys), type_v: id(values), ..greedy_params(MAX_TOKENS) };
        let run = generate_on(generator(), &c_string(&golden.prompt), &params, 0);
        assert_eq!(run.code, OK, "{keys}/{values}: {}", last_error());
        let expected = library.greedy_with_cache_types(&golden.prompt_ids, MAX_TOKENS, (keys, values));
        let ids: Vec<u32> = run.streamed.tokens.iter().map(|&t| t as u32).collect();
        assert_eq!(ids, expected.gen_ids, "{keys}/{values}: the library's greedy tokens with these cache types");
        assert_eq!(run.text.as_deref(), Some(expected.text.as_str()), "{keys}/{values}");
        texts.push(expected.text);
    }
    assert_eq!(texts[0], library.greedy(&golden.prompt_ids, MAX_TOKENS).text, "f32 is the default");
    // The types take effect: this prompt's greedy answer changes with a 4-bit cache (q4_0 moves this model's
    // logits far, docs/kv-cache.md).
    assert_ne!(texts[2], texts[0], "a q4_0 cache gives another answer on this prompt");
}

#[test]
fn the_callback_stops_generation_after_the_token_it_returns_non_zero_for() {
    let golden = &goldens()[3];
    let run = generate_on(generator(), &c_string(&golden.prompt), &greedy_params(MAX_TOKENS), 3);
    assert_eq!(run.code, OK, "{}", last_error());
    assert_eq!(run.streamed.tokens.len(), 3);
    assert_eq!(run.info.n_generated_tokens, 3);
    assert_eq!(run.info.stop_reason, GemmaStopReason::Callback as i32);
    assert_eq!(run.streamed.tokens.iter().map(|&t| t as u32).collect::<Vec<_>>(), golden.gen_ids[..3]);
    assert_eq!(run.text.as_deref(), Some(run.streamed.text.as_str()));
    assert_eq!(run.streamed.text, " 10", "' 1', '0' ... of ' 100 degrees'");
}

#[test]
fn chat_prompts_use_the_models_template() {
    let library = Library::get();
    let question = "What is the capital of France?";
    let params = GemmaParams { chat: 1, ..greedy_params(MAX_TOKENS) };
    let run = generate_on(generator(), &c_string(question), &params, 0);
    assert_eq!(run.code, OK, "{}", last_error());

    let template = ChatTemplate::from_gguf(&library.model.file, &library.tokenizer).unwrap();
    let ids = template.encode(&library.tokenizer, &[ChatMessage::user(question)], true).unwrap();
    let rendered = detokenize(&ids, true);
    assert_eq!(rendered, format!("<bos><start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"));
    let expected = library.greedy(&ids, MAX_TOKENS);
    assert_eq!(run.info.n_prompt_tokens as usize, ids.len());
    assert_eq!(run.text.as_deref(), Some(expected.text.as_str()));
}

#[test]
fn an_instruct_models_answer_ends_at_its_end_of_turn_token() {
    // The default model is a base model that rarely ends a turn; SmolLM2 Instruct (ChatML) answers and stops.
    let path = gemma_fetch::resolve_model("smollm2-135m-instruct").expect("SmolLM2 available");
    let path = c_string(path.to_str().unwrap());
    // SAFETY: a NUL-terminated path; the handle is freed below, once.
    let model = unsafe { gemma_model_open(path.as_ptr(), 2) };
    assert!(!model.is_null(), "{}", last_error());
    let params = GemmaParams { chat: 1, ..greedy_params(64) };
    let question = "What is the capital of Germany?";
    let run = generate_on(model, &c_string(question), &params, 0);
    // SAFETY: opened above, not used after this.
    unsafe { gemma_model_free(model) };
    assert_eq!(run.code, OK, "{}", last_error());
    let text = run.text.unwrap();
    assert_eq!(run.info.stop_reason, GemmaStopReason::EndOfGeneration as i32, "{text:?}");
    // Greedy, it answers "The capital of Germany is Berlin." and ends its turn.
    assert!((run.info.n_generated_tokens as usize) < 64);
    assert_eq!(run.streamed.tokens.len(), run.info.n_generated_tokens as usize, "the end token is not shown");

    let library_model = gemma_core::Model::open(path.to_str().unwrap()).unwrap();
    let tokenizer = library_model.tokenizer().unwrap();
    let template = ChatTemplate::from_gguf(&library_model.file, &tokenizer).unwrap();
    let ids = template.encode(&tokenizer, &[ChatMessage::user(question)], true).unwrap();
    let mut session = gemma_core::Session::new(&library_model, library_model.config.context_length);
    let opts = gemma_core::GenerationOptions {
        max_tokens: 64,
        sampling: gemma_core::SamplingParams::greedy(),
        ..Default::default()
    };
    let pool = gemma_ops::ThreadPool::new(2);
    let expected = session.generate(&tokenizer, &ids, &opts, &pool, &mut |_| {}).unwrap();
    assert_eq!(text, expected.text);
}

#[test]
fn one_handle_serves_two_threads_at_once() {
    let golden = &goldens()[5];
    let prompt = c_string(&golden.prompt);
    let alone = generate_on(generator(), &prompt, &greedy_params(8), 0).text.unwrap();
    let handle = Handle(generator().cast_mut());
    let texts: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| generate_on(handle.get(), &prompt, &greedy_params(8), 0).text.unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(texts, [alone.clone(), alone]);
}

#[test]
fn null_pointers_bad_strings_and_bad_values_are_error_codes() {
    let invalid = Status::InvalidArgument as c_int;
    let mut n = 0usize;
    let mut ids = [0u32; 4];
    let mut buf = [0u8; 16];
    let mut out: *mut c_char = std::ptr::NonNull::dangling().as_ptr();
    let params = gemma_params_default();
    // SAFETY: every pointer is NULL, or valid for what the function does with it.
    unsafe {
        assert_eq!(gemma_tokenize(std::ptr::null(), c"x".as_ptr(), 1, ids.as_mut_ptr(), 4, &mut n), invalid);
        assert_eq!(last_error(), "model is NULL");
        assert_eq!(gemma_tokenize(generator(), std::ptr::null(), 1, ids.as_mut_ptr(), 4, &mut n), invalid);
        assert_eq!(last_error(), "text is NULL");
        assert_eq!(gemma_tokenize(generator(), c"x".as_ptr(), 1, ids.as_mut_ptr(), 4, std::ptr::null_mut()), invalid);
        assert_eq!(gemma_tokenize(generator(), c"x".as_ptr(), 1, std::ptr::null_mut(), 4, &mut n), invalid);
        let code = gemma_tokenize(generator(), c"ok \xc3".as_ptr(), 1, ids.as_mut_ptr(), 4, &mut n);
        assert_eq!(code, Status::InvalidUtf8 as c_int);
        assert_eq!(last_error(), "text is not valid UTF-8 (invalid byte at offset 3)");

        let bad_id = [2u32, 999_999];
        let code = gemma_detokenize(generator(), bad_id.as_ptr(), 2, 0, buf.as_mut_ptr().cast(), 16, &mut n);
        assert_eq!(code, Status::InvalidToken as c_int);
        assert!(last_error().contains("999999 is outside the vocabulary"), "{}", last_error());
        let code = gemma_detokenize(generator(), std::ptr::null(), 2, 0, buf.as_mut_ptr().cast(), 16, &mut n);
        assert_eq!(code, invalid);
        let code = gemma_detokenize(std::ptr::null(), bad_id.as_ptr(), 1, 0, buf.as_mut_ptr().cast(), 16, &mut n);
        assert_eq!(code, invalid);

        assert_eq!(gemma_model_vocab_size(std::ptr::null()), invalid);
        assert_eq!(gemma_model_context_length(std::ptr::null()), invalid);
        assert!(gemma_model_name(std::ptr::null()).is_null());
        gemma_model_free(std::ptr::null_mut());
        gemma_string_free(std::ptr::null_mut());

        let generate = |model, prompt, params: *const GemmaParams, out: &mut *mut c_char| {
            gemma_generate(model, prompt, params, None, std::ptr::null_mut(), out, std::ptr::null_mut())
        };
        assert_eq!(generate(std::ptr::null(), c"x".as_ptr(), &params, &mut out), invalid);
        assert!(out.is_null(), "out_text is NULL after a failure");
        assert_eq!(generate(generator(), std::ptr::null(), &params, &mut out), invalid);
        assert_eq!(last_error(), "prompt is NULL");
        assert_eq!(generate(generator(), c"\xff".as_ptr(), &params, &mut out), Status::InvalidUtf8 as c_int);
        for (bad, field) in [
            (GemmaParams { max_tokens: -1, ..params }, "max_tokens"),
            (GemmaParams { top_k: -1, ..params }, "top_k"),
            (GemmaParams { top_p: 2.0, ..params }, "top_p"),
            (GemmaParams { repeat_penalty: -1.0, ..params }, "repeat_penalty"),
            (GemmaParams { repeat_last_n: -5, ..params }, "repeat_last_n"),
            (GemmaParams { temperature: f32::INFINITY, ..params }, "temperature"),
            // GGML type 4 (the old Q4_2) and F64 (28) are no KV cache types.
            (GemmaParams { type_k: 4, ..params }, "type_k 4 is not a KV cache type"),
            (GemmaParams { type_v: 28, ..params }, "type_v 28 is not a KV cache type"),
            (GemmaParams { type_v: -1, ..params }, "type_v -1"),
        ] {
            assert_eq!(generate(generator(), c"x".as_ptr(), &bad, &mut out), invalid, "{field}");
            assert!(last_error().contains(field), "{field}: {}", last_error());
        }
    }
}

#[test]
fn defaults_null_params_and_no_outputs_work() {
    // NULL params are the defaults (greedy), and the outputs may be left out; the callback ends it early.
    let prompt = c_string(&goldens()[3].prompt);
    let with_defaults = generate_on(generator(), &prompt, &GemmaParams { max_tokens: 4, ..gemma_params_default() }, 0);
    assert_eq!(with_defaults.text.as_deref(), Some(" 100"));
    let mut streamed = Streamed { stop_after: 4, ..Default::default() };
    // SAFETY: live handle, NUL-terminated prompt, NULL params and outputs, `collect` with a `Streamed`.
    let code = unsafe {
        gemma_generate(
            generator(),
            prompt.as_ptr(),
            std::ptr::null(),
            Some(collect),
            (&mut streamed as *mut Streamed).cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(code, OK, "{}", last_error());
    assert_eq!(streamed.text, " 100");
    // max_tokens 0 runs the prompt only.
    let none = generate_on(generator(), &prompt, &greedy_params(0), 0);
    assert_eq!((none.code, none.text.as_deref(), none.info.n_generated_tokens), (OK, Some(""), 0));
}

#[test]
fn a_prompt_longer_than_the_context_is_context_full() {
    // SAFETY: a live handle.
    let context = unsafe { gemma_model_context_length(generator()) } as usize;
    let long = c_string(&" a".repeat(context + 10));
    assert!(tokenize(&long, true).len() > context);
    let run = generate_on(generator(), &long, &greedy_params(1), 0);
    assert_eq!(run.code, Status::ContextFull as c_int);
    assert!(last_error().contains("context holds"), "{}", last_error());
    assert!(run.text.is_none() && run.streamed.tokens.is_empty());
}

/// `context_shift` (llama.cpp's `--context-shift`): with a context of 256, generation goes on past it with
/// llama.cpp's tokens (`testdata/goldens/gemma3_270m_llama_context_shift.json`, up to its first near-tie), as
/// `gemma run --context-shift` does; without it, it stops when the context is full.
#[test]
fn a_context_shift_generates_past_the_context_as_llama_cpp_does() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_context_shift.json");
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &golden["cases"][0];
    let prompt = c_string(case["prompt"].as_str().unwrap());
    let params = GemmaParams { n_ctx: 256, context_shift: 1, ..greedy_params(640) };
    let run = generate_on(generator(), &prompt, &params, 0);
    assert_eq!(run.code, OK, "{}", last_error());
    assert_eq!((run.info.n_context_shifts, run.info.stop_reason), (4, GemmaStopReason::MaxTokens as i32));
    let ours: Vec<u64> = run.streamed.tokens.iter().map(|&t| t as u64).collect();
    let llama: Vec<u64> = serde_json::from_value(case["gen_ids"].clone()).unwrap();
    let margins: Vec<f64> = serde_json::from_value(case["gen_top1_top2_margin"].clone()).unwrap();
    let first_tie = margins.iter().position(|&x| x < 0.1).unwrap_or(margins.len());
    assert_eq!(ours.len(), 640);
    assert_eq!(ours[..first_tie], llama[..first_tie]);

    // Without a shift the 256 positions fill up, and one more token is sampled from the last.
    let plain = generate_on(generator(), &prompt, &GemmaParams { context_shift: 0, ..params }, 0);
    assert_eq!((plain.code, plain.info.stop_reason), (OK, GemmaStopReason::ContextFull as i32));
    assert_eq!(plain.info.n_generated_tokens as usize, 256 + 1 - case["prompt_ids"].as_array().unwrap().len());
    assert_eq!(plain.info.n_context_shifts, 0);

    // The whole prompt kept (-1): one shift in 300 tokens, the prompt's tokens never forgotten.
    let kept = generate_on(generator(), &prompt, &GemmaParams { n_keep: -1, max_tokens: 300, ..params }, 0);
    assert_eq!((kept.code, kept.info.n_context_shifts), (OK, 1), "{}", last_error());

    // A context below the prompt is the prompt too long; bad counts are invalid arguments.
    let small = generate_on(generator(), &prompt, &GemmaParams { n_ctx: 8, ..params }, 0);
    assert_eq!(small.code, Status::ContextFull as c_int);
    for (bad, field) in
        [(GemmaParams { n_keep: -2, ..params }, "n_keep"), (GemmaParams { n_ctx: -1, ..params }, "n_ctx")]
    {
        assert_eq!(generate_on(generator(), &prompt, &bad, 0).code, Status::InvalidArgument as c_int);
        assert!(last_error().contains(field), "{field}: {}", last_error());
    }
}
