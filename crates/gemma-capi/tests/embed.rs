//! Embeddings through the C API (the `extern "C"` functions, raw pointers) on EmbeddingGemma 300M: the width,
//! the vectors of an independent float64 reference, batches, the two-call buffer protocol, a generative model
//! asked to embed and an embedding model asked to generate, too-long texts, NULL and invalid arguments.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use common::{c_string, embedder, embedding_goldens, generator, last_error, rel_l2, Handle};
use gemma_capi::*;

mod common;

const OK: c_int = Status::Ok as c_int;
/// EmbeddingGemma's width.
const WIDTH: usize = 768;
/// Our engine matches the float64 reference to about 1e-6.
const TOLERANCE: f64 = 1e-5;

/// `gemma_embed` with the two-call pattern: the size first, then the vector.
fn embed_on(model: *const GemmaModel, text: &CStr) -> Vec<f32> {
    let mut n = usize::MAX;
    // SAFETY: live handle, NUL-terminated text, no buffer (cap 0), `n` writable.
    let code = unsafe { gemma_embed(model, text.as_ptr(), std::ptr::null_mut(), 0, &mut n) };
    assert_eq!(code, Status::BufferTooSmall as c_int, "size query: {}", last_error());
    let mut v = vec![f32::NAN; n];
    let mut written = 0usize;
    // SAFETY: `v` holds `n` floats.
    let code = unsafe { gemma_embed(model, text.as_ptr(), v.as_mut_ptr(), n, &mut written) };
    assert_eq!((code, written), (OK, n), "{}", last_error());
    v
}

fn embed(text: &str) -> Vec<f32> {
    embed_on(embedder(), &c_string(text))
}

/// `gemma_embed_batch` into a buffer of exactly the size it asks for.
fn embed_batch(texts: &[&str]) -> Vec<Vec<f32>> {
    let owned: Vec<CString> = texts.iter().map(|t| c_string(t)).collect();
    let pointers: Vec<*const c_char> = owned.iter().map(|t| t.as_ptr()).collect();
    let mut n = usize::MAX;
    // SAFETY: live handle, `pointers` holds texts.len() NUL-terminated strings, no buffer, `n` writable.
    let code =
        unsafe { gemma_embed_batch(embedder(), pointers.as_ptr(), texts.len(), std::ptr::null_mut(), 0, &mut n) };
    assert_eq!(code, Status::BufferTooSmall as c_int, "size query: {}", last_error());
    assert_eq!(n, texts.len() * WIDTH);
    let mut out = vec![f32::NAN; n];
    let mut written = 0usize;
    // SAFETY: as above, and `out` holds `n` floats.
    let code =
        unsafe { gemma_embed_batch(embedder(), pointers.as_ptr(), texts.len(), out.as_mut_ptr(), n, &mut written) };
    assert_eq!((code, written), (OK, n), "{}", last_error());
    out.chunks_exact(WIDTH).map(<[f32]>::to_vec).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn the_embedding_width_is_768_for_embeddinggemma_and_0_for_a_generative_model() {
    // SAFETY: live handles, and NULL, which is reported.
    unsafe {
        assert_eq!(gemma_model_embedding_dim(embedder()), WIDTH as c_int);
        assert_eq!(gemma_model_embedding_dim(generator()), 0);
        assert_eq!(gemma_model_embedding_dim(std::ptr::null()), Status::InvalidArgument as c_int);
        assert_eq!(last_error(), "model is NULL");
        // The other facts work on an embedding model too.
        assert!(gemma_model_context_length(embedder()) >= 2048);
        assert_eq!(gemma_model_vocab_size(embedder()), 262_144);
        assert!(!gemma_model_name(embedder()).is_null());
    }
}

#[test]
fn embed_gives_the_float64_references_vectors() {
    for golden in embedding_goldens() {
        let v = embed(&golden.text);
        assert_eq!(v.len(), WIDTH);
        let err = rel_l2(&v, &golden.embedding);
        assert!(err < TOLERANCE, "{:.40?}: relative L2 error {err:e}", golden.text);
        assert!((norm(&v) - 1.0).abs() < 1e-5, "unit length");
    }
}

#[test]
fn embed_encodes_bos_text_and_eos_as_the_reference_did() {
    // gemma_tokenize with BOS gives the reference's ids but the EOS (id 1) that embedding inputs end with.
    for golden in embedding_goldens() {
        let text = c_string(&golden.text);
        let mut ids = vec![0u32; golden.ids.len() + 8];
        let mut n = 0usize;
        // SAFETY: live handle, NUL-terminated text, `ids` holds ids.len() ids.
        let code = unsafe { gemma_tokenize(embedder(), text.as_ptr(), 1, ids.as_mut_ptr(), ids.len(), &mut n) };
        assert_eq!(code, OK, "{}", last_error());
        let (last, rest) = golden.ids.split_last().unwrap();
        assert_eq!((*last, &ids[..n]), (1, rest), "{:.40?}", golden.text);
    }
}

#[test]
fn a_batch_gives_each_texts_vector_in_order() {
    let texts: Vec<&str> = embedding_goldens().iter().map(|g| g.text.as_str()).collect();
    let vectors = embed_batch(&texts);
    assert_eq!(vectors.len(), texts.len());
    for (v, golden) in vectors.iter().zip(embedding_goldens()) {
        let err = rel_l2(v, &golden.embedding);
        assert!(err < TOLERANCE, "{:.40?}: relative L2 error {err:e}", golden.text);
    }
    // One text alone is gemma_embed's vector; the same text twice gives it twice.
    let single = embed("hello world");
    let twice = embed_batch(&["hello world", "hello world"]);
    for v in &twice {
        assert!(rel_l2(v, &single) < 1e-6);
    }
    // No texts: nothing to compute, `texts` may be NULL.
    let mut n = usize::MAX;
    // SAFETY: live handle; NULL texts and buffer with n_texts and cap 0; `n` writable.
    let code = unsafe { gemma_embed_batch(embedder(), std::ptr::null(), 0, std::ptr::null_mut(), 0, &mut n) };
    assert_eq!((code, n), (OK, 0));
}

#[test]
fn small_buffers_get_the_size_needed_and_are_left_alone() {
    let text = c"hello world";
    let mut buf = vec![-7.0f32; WIDTH + 1];
    let mut n = 0usize;
    // SAFETY: `buf` holds WIDTH + 1 floats; WIDTH - 1 are offered.
    let code = unsafe { gemma_embed(embedder(), text.as_ptr(), buf.as_mut_ptr(), WIDTH - 1, &mut n) };
    assert_eq!((code, n), (Status::BufferTooSmall as c_int, WIDTH));
    assert!(buf.iter().all(|&x| x == -7.0), "nothing written");
    assert_eq!(last_error(), "the buffer holds 767 floats but 768 are needed");

    // A buffer of exactly the width is filled, and not a float past it.
    // SAFETY: as above, WIDTH offered.
    let code = unsafe { gemma_embed(embedder(), text.as_ptr(), buf.as_mut_ptr(), WIDTH, &mut n) };
    assert_eq!((code, n), (OK, WIDTH), "{}", last_error());
    assert_eq!(buf[WIDTH], -7.0);
    assert!(rel_l2(&buf[..WIDTH], &embedding_goldens()[0].embedding) < TOLERANCE, "golden 0 is 'hello world'");

    // A batch needs n_texts * width.
    let texts = [c"a".as_ptr(), c"b".as_ptr()];
    let mut one = vec![-7.0f32; WIDTH];
    // SAFETY: `texts` holds 2 strings, `one` WIDTH floats.
    let code = unsafe { gemma_embed_batch(embedder(), texts.as_ptr(), 2, one.as_mut_ptr(), WIDTH, &mut n) };
    assert_eq!((code, n), (Status::BufferTooSmall as c_int, 2 * WIDTH));
    assert!(one.iter().all(|&x| x == -7.0), "nothing written");
}

#[test]
fn a_generative_model_cannot_embed() {
    let mut buf = vec![0f32; WIDTH];
    let mut n = usize::MAX;
    let wrong = Status::WrongModelKind as c_int;
    // SAFETY: live handle, NUL-terminated texts, `buf` holds WIDTH floats, `n` writable.
    unsafe {
        let code = gemma_embed(generator(), c"hello".as_ptr(), buf.as_mut_ptr(), WIDTH, &mut n);
        assert_eq!((code, n), (wrong, 0));
        let message = last_error();
        assert!(message.contains("is not an embedding model"), "{message}");
        assert!(message.contains("EmbeddingGemma"), "{message}");
        // The size query says so too, and so does an empty batch.
        assert_eq!(gemma_embed(generator(), c"hello".as_ptr(), std::ptr::null_mut(), 0, &mut n), wrong);
        assert_eq!(gemma_embed_batch(generator(), std::ptr::null(), 0, std::ptr::null_mut(), 0, &mut n), wrong);
        assert!(last_error().contains("is not an embedding model"));
        assert_eq!(CStr::from_ptr(gemma_error_string(wrong)), Status::WrongModelKind.description());
    }
}

unsafe extern "C" fn count_tokens(_token: i32, _piece: *const c_char, _len: usize, user_data: *mut c_void) -> c_int {
    // SAFETY: `user_data` is the test's counter, alive during the call.
    unsafe { *user_data.cast::<usize>() += 1 };
    0
}

#[test]
fn an_embedding_model_cannot_generate() {
    let mut calls = 0usize;
    let mut out: *mut c_char = std::ptr::NonNull::dangling().as_ptr();
    let mut info = GemmaGenerationInfo { n_prompt_tokens: 99, ..Default::default() };
    for chat in [0, 1] {
        let params = GemmaParams { chat, max_tokens: 4, ..gemma_params_default() };
        // SAFETY: live handle, NUL-terminated prompt, valid params, a counting callback, writable outputs.
        let code = unsafe {
            gemma_generate(
                embedder(),
                c"The capital of France is".as_ptr(),
                &params,
                Some(count_tokens),
                (&mut calls as *mut usize).cast(),
                &mut out,
                &mut info,
            )
        };
        assert_eq!(code, Status::WrongModelKind as c_int);
        let message = last_error();
        assert!(message.contains("is an embedding model: it turns text into vectors"), "{message}");
        assert!(message.contains("gemma_embed"), "{message}");
        assert!(out.is_null(), "out_text is NULL after a failure");
        assert_eq!((calls, info), (0, GemmaGenerationInfo::default()));
    }
}

#[test]
fn a_text_longer_than_the_context_is_context_full() {
    // SAFETY: a live handle.
    let context = unsafe { gemma_model_context_length(embedder()) } as usize;
    let long = c_string(&" a".repeat(context));
    let mut n = usize::MAX;
    let mut buf = vec![0f32; WIDTH * 2];
    let full = Status::ContextFull as c_int;
    // SAFETY: live handle, NUL-terminated texts, `buf` holds 2 * WIDTH floats, `n` writable.
    unsafe {
        let code = gemma_embed(embedder(), long.as_ptr(), buf.as_mut_ptr(), WIDTH, &mut n);
        assert_eq!((code, n), (full, 0));
        let message = last_error();
        assert!(
            message.starts_with("the text is ") && message.contains(&format!("context holds {context}")),
            "{message}"
        );
        // The size query finds it too, and a batch names the text.
        assert_eq!(gemma_embed(embedder(), long.as_ptr(), std::ptr::null_mut(), 0, &mut n), full);
        let texts = [c"short".as_ptr(), long.as_ptr()];
        assert_eq!(gemma_embed_batch(embedder(), texts.as_ptr(), 2, buf.as_mut_ptr(), 2 * WIDTH, &mut n), full);
        assert!(last_error().starts_with("texts[1] is "), "{}", last_error());
    }
}

#[test]
fn null_pointers_and_bad_strings_are_error_codes() {
    let invalid = Status::InvalidArgument as c_int;
    let bad_utf8 = Status::InvalidUtf8 as c_int;
    let mut buf = vec![0f32; WIDTH];
    let out = buf.as_mut_ptr();
    let mut n = 0usize;
    let null_text: *const c_char = std::ptr::null();
    // SAFETY: every pointer is NULL, or valid for what the function does with it.
    unsafe {
        assert_eq!(gemma_embed(std::ptr::null(), c"x".as_ptr(), out, WIDTH, &mut n), invalid);
        assert_eq!(last_error(), "model is NULL");
        assert_eq!(gemma_embed(embedder(), null_text, out, WIDTH, &mut n), invalid);
        assert_eq!(last_error(), "text is NULL");
        assert_eq!(gemma_embed(embedder(), c"x".as_ptr(), out, WIDTH, std::ptr::null_mut()), invalid);
        assert_eq!(last_error(), "n_out is NULL");
        assert_eq!(gemma_embed(embedder(), c"x".as_ptr(), std::ptr::null_mut(), WIDTH, &mut n), invalid);
        assert_eq!(last_error(), "out (with cap above 0) is NULL");
        assert_eq!(gemma_embed(embedder(), c"ok \xc3".as_ptr(), out, WIDTH, &mut n), bad_utf8);
        assert_eq!(last_error(), "text is not valid UTF-8 (invalid byte at offset 3)");

        let batch = |texts: &[*const c_char], n: &mut usize| {
            gemma_embed_batch(embedder(), texts.as_ptr(), texts.len(), out, WIDTH, n)
        };
        assert_eq!(batch(&[c"a".as_ptr(), null_text], &mut n), invalid);
        assert_eq!(last_error(), "texts[1] is NULL");
        assert_eq!(batch(&[c"\xff".as_ptr()], &mut n), bad_utf8);
        assert_eq!(last_error(), "texts[0] is not valid UTF-8 (invalid byte at offset 0)");
        let code = gemma_embed_batch(embedder(), std::ptr::null(), 2, out, WIDTH, &mut n);
        assert_eq!((code, last_error().as_str()), (invalid, "texts (with n_texts above 0) is NULL"));
        let texts = [c"a".as_ptr()];
        let code = gemma_embed_batch(std::ptr::null(), texts.as_ptr(), 1, out, WIDTH, &mut n);
        assert_eq!(code, invalid);
        let code = gemma_embed_batch(embedder(), texts.as_ptr(), 1, out, WIDTH, std::ptr::null_mut());
        assert_eq!(code, invalid);
    }
}

#[test]
fn one_embedding_handle_serves_two_threads_at_once() {
    let alone = embed("task: sentence similarity | query: A man is playing a guitar");
    let handle = Handle(embedder().cast_mut());
    let vectors: Vec<Vec<f32>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let handle = &handle;
                s.spawn(move || embed_on(handle.0, c"task: sentence similarity | query: A man is playing a guitar"))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for v in &vectors {
        assert!(rel_l2(v, &alone) < 1e-6);
    }
}
