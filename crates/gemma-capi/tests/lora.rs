//! `gemma_lora_*` and `gemma_chat_*_lora_scale` called as C calls them, on the default model with the
//! deterministic adapter of `scripts/llama_lora_goldens.py` (`gemma_core::lora::synthetic`): generation at a
//! scale equals the library's at that scale, scale 0 the base model's, a chat whose scale changes answers as a
//! new chat at the new scale, and every error is a code with a message.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

use common::{c_string, collect, greedy_params, last_error, model_path, take_text, Library, Streamed, MAX_TOKENS};
use gemma_capi::*;
use gemma_core::lora::synthetic::Spec;
use gemma_core::{GenerationOptions, Model, SamplingParams, Session};

mod common;

const OK: c_int = Status::Ok as c_int;
const INVALID: c_int = Status::InvalidArgument as c_int;
const LORA: c_int = Status::Lora as c_int;
const PROMPT: &str = "The capital of France is";

/// A model handle of the test's own (its adapters and default scales are the test's), freed on drop.
struct Handle(*mut GemmaModel);

impl Handle {
    fn open() -> Handle {
        let path = c_string(model_path().to_str().unwrap());
        // SAFETY: a NUL-terminated path.
        let model = unsafe { gemma_model_open(path.as_ptr(), 2) };
        assert!(!model.is_null(), "open failed: {}", last_error());
        Handle(model)
    }

    fn load(&self, path: &Path, scale: f32) -> c_int {
        let path = c_string(path.to_str().unwrap());
        // SAFETY: a live handle, a NUL-terminated path.
        unsafe { gemma_lora_load(self.0, path.as_ptr(), scale) }
    }

    fn count(&self) -> c_int {
        // SAFETY: a live handle.
        unsafe { gemma_lora_count(self.0) }
    }

    fn set_scale(&self, index: c_int, scale: f32) -> c_int {
        // SAFETY: a live handle.
        unsafe { gemma_lora_set_scale(self.0, index, scale) }
    }

    fn scale(&self, index: c_int) -> Result<f32, c_int> {
        let mut scale = f32::NAN;
        // SAFETY: a live handle, a writable float.
        let code = unsafe { gemma_lora_get_scale(self.0, index, &mut scale) };
        if code == OK {
            Ok(scale)
        } else {
            Err(code)
        }
    }

    /// Greedy ids and text of `PROMPT` (with `chat`: as a user turn) through `gemma_generate`.
    fn generate(&self, chat: bool) -> (Vec<u32>, String) {
        let params = GemmaParams { chat: c_int::from(chat), ..greedy_params(MAX_TOKENS) };
        let prompt = c_string(PROMPT);
        let mut streamed = Streamed::default();
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live handle, a NUL-terminated prompt, params, `collect` with a `Streamed`, a writable output.
        let code = unsafe {
            gemma_generate(
                self.0,
                prompt.as_ptr(),
                &params,
                Some(collect),
                (&mut streamed as *mut Streamed).cast(),
                &mut out,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(code, OK, "{}", last_error());
        // SAFETY: the string the call handed out.
        let text = unsafe { take_text(out) }.unwrap();
        assert_eq!(text, streamed.text);
        let ids = streamed.tokens.iter().filter(|&&t| t >= 0).map(|&t| t as u32).collect();
        (ids, text)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a live handle, freed once, its chats freed before.
        unsafe { gemma_model_free(self.0) };
    }
}

fn adapter(dir: &Path) -> PathBuf {
    let path = dir.join("lora.gguf");
    Spec::gemma3_270m().writer().expect("adapter").write_file(&path).expect("written");
    path
}

/// The library's greedy ids and text of `PROMPT` with the adapter loaded at `scale` (its default, so the
/// library's own `forward_with` applies it).
fn library(path: &Path, scale: f32) -> (Vec<u32>, String) {
    let mut model = Model::open(model_path()).expect("loads");
    model.load_lora(path, scale).expect("adapter");
    let tokenizer = model.tokenizer().expect("tokenizer");
    let ids = tokenizer.encode(PROMPT, tokenizer.add_bos(), true);
    let opts = GenerationOptions { max_tokens: MAX_TOKENS, sampling: SamplingParams::greedy(), ..Default::default() };
    let mut session = Session::new(&model, model.config.context_length);
    let out =
        session.generate(&tokenizer, &ids, &opts, &gemma_ops::ThreadPool::new(2), &mut |_| {}).expect("generates");
    (out.gen_ids, out.text)
}

fn text_of(ptr: *const c_char) -> Option<String> {
    // SAFETY: NULL or a NUL-terminated string owned by the handle, alive during the test.
    (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_str().unwrap().to_string())
}

#[test]
fn generation_with_an_adapter_is_the_librarys_at_each_scale() {
    let dir = tempfile::tempdir().unwrap();
    let path = adapter(dir.path());
    let h = Handle::open();
    assert_eq!(h.count(), 0);
    let base = h.generate(false);
    let library_base = Library::get();
    let prompt_ids = library_base.tokenizer.encode(PROMPT, true, true);
    assert_eq!(base.1, library_base.greedy(&prompt_ids, MAX_TOKENS).text, "no adapter: the base model");

    assert_eq!(h.load(&path, 1.0), 0, "{}", last_error());
    assert_eq!(h.count(), 1);
    // SAFETY: a live handle; the strings are the handle's.
    let (p, task, prefix) =
        unsafe { (gemma_lora_path(h.0, 0), gemma_lora_task_name(h.0, 0), gemma_lora_prompt_prefix(h.0, 0)) };
    assert_eq!(text_of(p).as_deref(), path.to_str());
    assert_eq!((text_of(task).unwrap(), text_of(prefix).unwrap()), (String::new(), String::new()));
    assert_eq!(h.scale(0), Ok(1.0));

    let full = h.generate(false);
    assert_eq!(full, library(&path, 1.0), "scale 1: the library's tokens");
    assert_ne!(full.1, base.1, "the adapter changes the text");
    assert_eq!(h.set_scale(0, 0.5), OK, "{}", last_error());
    assert_eq!(h.scale(0), Ok(0.5));
    let half = h.generate(false);
    assert_eq!(half, library(&path, 0.5), "scale 0.5: the library's tokens");
    assert_ne!(half.1, full.1);
    assert_eq!(h.set_scale(0, 0.0), OK);
    assert_eq!(h.generate(false), base, "scale 0: the base model");
    // A second adapter gets the next index and its own scale: off, it changes nothing.
    assert_eq!(h.load(&path, 0.0), 1, "{}", last_error());
    assert_eq!(h.count(), 2);
    assert_eq!(h.set_scale(0, 1.0), OK);
    assert_eq!((h.scale(0), h.scale(1)), (Ok(1.0), Ok(0.0)));
    assert_eq!(h.generate(false), full, "adapter 0 at 1, adapter 1 at 0");
}

struct Chat(*mut GemmaChat);

impl Chat {
    fn new(h: &Handle) -> Chat {
        let params = greedy_params(MAX_TOKENS);
        // SAFETY: a live handle that outlives the chat, no system prompt, params.
        let chat = unsafe { gemma_chat_new(h.0, std::ptr::null(), &params, 0) };
        assert!(!chat.is_null(), "{}", last_error());
        Chat(chat)
    }

    fn send(&self, message: &str) -> (String, GemmaChatInfo) {
        let message = c_string(message);
        let mut out: *mut c_char = std::ptr::null_mut();
        let mut info = GemmaChatInfo::default();
        // SAFETY: a live chat, a NUL-terminated message, writable outputs.
        let code =
            unsafe { gemma_chat_send(self.0, message.as_ptr(), None, std::ptr::null_mut(), &mut out, &mut info) };
        assert_eq!(code, OK, "{}", last_error());
        // SAFETY: the string the call handed out.
        (unsafe { take_text(out) }.unwrap(), info)
    }

    fn add(&self, role: &str, content: &str) {
        let (role, content) = (c_string(role), c_string(content));
        // SAFETY: a live chat, NUL-terminated strings.
        assert_eq!(unsafe { gemma_chat_add_message(self.0, role.as_ptr(), content.as_ptr()) }, OK);
    }

    fn set_scale(&self, index: c_int, scale: f32) -> c_int {
        // SAFETY: a live chat.
        unsafe { gemma_chat_set_lora_scale(self.0, index, scale) }
    }

    fn scale(&self, index: c_int) -> Result<f32, c_int> {
        let mut scale = f32::NAN;
        // SAFETY: a live chat, a writable float.
        let code = unsafe { gemma_chat_get_lora_scale(self.0, index, &mut scale) };
        if code == OK {
            Ok(scale)
        } else {
            Err(code)
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        // SAFETY: a live chat, freed once, before its model.
        unsafe { gemma_chat_free(self.0) };
    }
}

#[test]
fn a_chat_after_a_scale_change_answers_as_a_new_chat_at_the_new_scale() {
    let dir = tempfile::tempdir().unwrap();
    let path = adapter(dir.path());
    let h = Handle::open();
    assert_eq!(h.load(&path, 1.0), 0, "{}", last_error());
    let chat = Chat::new(&h);
    assert_eq!(chat.scale(0), Ok(1.0), "a chat starts at the model's default scales");
    let (first, _) = chat.send(PROMPT);
    assert_eq!(first, h.generate(true).1, "the first turn is gemma_generate's chat answer at the same scale");

    // The model's default changes later calls and later chats, not this chat.
    assert_eq!(h.set_scale(0, 0.0), OK);
    assert_eq!(chat.scale(0), Ok(1.0));
    let (second, info) = chat.send("And of Italy?");
    assert!(info.n_reused_tokens > 0, "same scales: the cache is reused");

    // The chat's own scale changes: nothing of the cache is reused, and the answer is a new chat's at 0.5.
    assert_eq!(chat.set_scale(0, 0.5), OK, "{}", last_error());
    assert_eq!(chat.scale(0), Ok(0.5));
    let (third, info) = chat.send("And of Spain?");
    assert_eq!(info.n_reused_tokens, 0, "a scale change prefills the whole conversation");
    let fresh = Chat::new(&h);
    assert_eq!(fresh.scale(0), Ok(0.0), "a new chat takes the new default");
    assert_eq!(fresh.set_scale(0, 0.5), OK);
    for (role, content) in [("user", PROMPT), ("assistant", &first), ("user", "And of Italy?"), ("assistant", &second)]
    {
        fresh.add(role, content);
    }
    let (fresh_third, _) = fresh.send("And of Spain?");
    assert_eq!(third, fresh_third, "after a scale change: a new chat's answer at the new scale");

    // The same scale again changes nothing: the cache stays.
    assert_eq!(chat.set_scale(0, 0.5), OK);
    let (_, info) = chat.send("And of Portugal?");
    assert!(info.n_reused_tokens > 0, "an unchanged scale keeps the cache");
    // Scale 0 in a chat is the base model: the first answer equals the adapter-less model's.
    let base_chat = Chat::new(&h);
    assert_eq!(base_chat.send(PROMPT).0, Handle::open().generate(true).1, "scale 0: the base model's answer");
}

#[test]
fn lora_errors_are_codes_with_messages_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = adapter(dir.path());
    let h = Handle::open();
    // SAFETY: NULL handles and paths are checked.
    unsafe {
        assert_eq!(gemma_lora_load(std::ptr::null_mut(), c"x.gguf".as_ptr(), 1.0), INVALID);
        assert_eq!(last_error(), "model is NULL");
        assert_eq!(gemma_lora_load(h.0, std::ptr::null(), 1.0), INVALID);
        assert_eq!(last_error(), "path is NULL");
        let bad_utf8 = [0x61u8, 0xff, 0];
        assert_eq!(gemma_lora_load(h.0, bad_utf8.as_ptr().cast(), 1.0), Status::InvalidUtf8 as c_int);
        assert_eq!(gemma_lora_count(std::ptr::null()), INVALID);
    }
    let missing = dir.path().join("missing.gguf");
    assert_eq!(h.load(&missing, 1.0), LORA);
    assert!(last_error().starts_with("cannot load the LoRA adapter: ") && last_error().contains("missing.gguf"));
    // The base model is a GGUF file, but not an adapter.
    assert_eq!(h.load(&model_path(), 1.0), LORA);
    assert!(last_error().contains("expect general.type to be 'adapter'"), "{}", last_error());
    // An adapter for another architecture (SmolLM2's, llama).
    let llama = dir.path().join("llama.gguf");
    Spec::smollm2_135m().writer().unwrap().write_file(&llama).unwrap();
    assert_eq!(h.load(&llama, 1.0), LORA);
    assert!(last_error().contains("model arch and LoRA arch mismatch"), "{}", last_error());
    // An adapter for a tensor the model lacks (a 19th layer).
    let deep = dir.path().join("deep.gguf");
    Spec { n_layers: 19, ..Spec::gemma3_270m() }.writer().unwrap().write_file(&deep).unwrap();
    assert_eq!(h.load(&deep, 1.0), LORA);
    assert!(last_error().contains("does not exist in base model"), "{}", last_error());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert_eq!(h.load(&path, bad), INVALID);
        assert!(last_error().contains("is not a finite number"), "{}", last_error());
    }
    assert_eq!(h.count(), 0, "failed loads add nothing");

    assert_eq!(h.load(&path, 1.0), 0);
    for index in [-1, 1, c_int::MAX] {
        assert_eq!(h.set_scale(index, 1.0), INVALID);
        assert_eq!(last_error(), format!("there is no LoRA adapter {index} (1 loaded)"));
        assert_eq!(h.scale(index), Err(INVALID));
        // SAFETY: a live handle.
        assert!(unsafe { gemma_lora_path(h.0, index) }.is_null());
    }
    assert_eq!(h.set_scale(0, f32::NAN), INVALID);
    assert_eq!(h.scale(0), Ok(1.0), "a refused scale changes nothing");
    // SAFETY: NULL outputs and handles are checked.
    unsafe {
        assert_eq!(gemma_lora_get_scale(h.0, 0, std::ptr::null_mut()), INVALID);
        assert_eq!(gemma_lora_set_scale(std::ptr::null_mut(), 0, 1.0), INVALID);
        assert_eq!(gemma_chat_set_lora_scale(std::ptr::null_mut(), 0, 1.0), INVALID);
        assert_eq!(last_error(), "chat is NULL");
        assert!(gemma_lora_task_name(std::ptr::null(), 0).is_null());
    }

    // A chat borrows the model: no adapter can be loaded while one is open.
    let chat = Chat::new(&h);
    assert_eq!(chat.set_scale(1, 1.0), INVALID);
    assert_eq!(chat.set_scale(0, f32::INFINITY), INVALID);
    assert_eq!(chat.scale(0), Ok(1.0));
    // SAFETY: a live chat; a NULL output is checked.
    assert_eq!(unsafe { gemma_chat_get_lora_scale(chat.0, 0, std::ptr::null_mut()) }, INVALID);
    assert_eq!(h.load(&path, 1.0), INVALID);
    assert!(last_error().contains("while 1 chat(s) are open"), "{}", last_error());
    drop(chat);
    assert_eq!(h.load(&path, 1.0), 1, "{}", last_error());

    // From a token callback the generation's own read of the model would make a load wait forever: refused.
    struct Reentry {
        model: *mut GemmaModel,
        path: std::ffi::CString,
        code: c_int,
        message: String,
    }
    unsafe extern "C" fn load_inside(_: i32, _: *const c_char, _: usize, user_data: *mut c_void) -> c_int {
        // SAFETY: the `Reentry` the test passed, alive and not otherwise borrowed during the call.
        let r = unsafe { &mut *user_data.cast::<Reentry>() };
        // SAFETY: a live handle, a NUL-terminated path.
        r.code = unsafe { gemma_lora_load(r.model, r.path.as_ptr(), 1.0) };
        r.message = last_error();
        1
    }
    let mut reentry = Reentry { model: h.0, path: c_string(path.to_str().unwrap()), code: OK, message: String::new() };
    let params = greedy_params(4);
    // SAFETY: a live handle, a NUL-terminated prompt, the callback with its `Reentry`, no outputs.
    let code = unsafe {
        gemma_generate(
            h.0,
            c"Hello".as_ptr(),
            &params,
            Some(load_inside),
            (&mut reentry as *mut Reentry).cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(code, OK, "{}", last_error());
    assert_eq!(reentry.code, INVALID);
    assert!(reentry.message.contains("inside a token callback"), "{}", reentry.message);
    assert_eq!(h.count(), 2);
}

#[test]
fn an_adapter_loads_while_another_thread_generates() {
    let dir = tempfile::tempdir().unwrap();
    let path = adapter(dir.path());
    let h = Handle::open();
    let base = h.generate(false);
    struct Shared(*mut GemmaModel);
    // SAFETY: gemma.h lets a handle be used from several threads; it outlives the scope.
    unsafe impl Sync for Shared {}
    impl Shared {
        fn get(&self) -> *mut GemmaModel {
            self.0
        }
    }
    let shared = Shared(h.0);
    std::thread::scope(|s| {
        let generating = s.spawn(|| {
            let handle = Handle(shared.get());
            let ids = handle.generate(false);
            std::mem::forget(handle);
            ids
        });
        assert_eq!(h.load(&path, 0.0), 0, "{}", last_error());
        // Loaded at scale 0 (or before the generation started, or after it ended): the base model either way.
        assert_eq!(generating.join().unwrap(), base);
    });
    assert_eq!(h.generate(false), base, "scale 0: still the base model");
}
