//! LoRA adapters on the real Gemma 3 270M and SmolLM2 135M (llama architecture) against llama.cpp
//! (`testdata/goldens/{gemma3_270m,smollm2}_llama_lora.json`, from `scripts/llama_lora_goldens.py`: llama-server
//! `--lora` with the per-request `lora` field), and every kind of bad adapter file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::lora::synthetic::Spec;
use gemma_core::lora::LoraError;
use gemma_core::sampling::greedy;
use gemma_core::{Batch, BatchToken, Conversation, Model, SamplingParams, Scratch, Session};
use gemma_io::gguf::lora::LoraFileError;
use gemma_io::{GgmlType, GgufWriter, MetaValue};
use gemma_ops::ThreadPool;
use serde::Deserialize;
use sha2::{Digest, Sha256};

mod common;

/// A model, its adapter and llama.cpp's goldens with it.
struct Kind {
    model: &'static str,
    goldens: &'static str,
    spec: fn() -> Spec,
}

const GEMMA: Kind = Kind {
    model: gemma_fetch::DEFAULT_MODEL,
    goldens: concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_lora.json"),
    spec: Spec::gemma3_270m,
};

const SMOLLM2: Kind = Kind {
    model: "smollm2-135m-instruct",
    goldens: concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/smollm2_llama_lora.json"),
    spec: Spec::smollm2_135m,
};

/// Below this margin between llama.cpp's best two logits the engines may pick differently (llama.cpp itself
/// picks differently prefilling and decoding at margins up to 0.47 on these runs).
const NEAR_TIE: f32 = 0.5;

#[derive(Deserialize)]
struct Goldens {
    adapter: AdapterInfo,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct AdapterInfo {
    bytes: usize,
    sha256: String,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    scale: f32,
    gen_ids: Vec<u32>,
    top1_top2_margin: Vec<f32>,
}

fn read_goldens(kind: &Kind) -> Goldens {
    serde_json::from_str(&std::fs::read_to_string(kind.goldens).expect("goldens")).expect("parse")
}

fn goldens() -> &'static Goldens {
    static G: OnceLock<Goldens> = OnceLock::new();
    G.get_or_init(|| read_goldens(&GEMMA))
}

fn model_path() -> PathBuf {
    gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model available")
}

/// `kind`'s model with its adapter loaded (default scale 1), and the adapter file's folder.
fn load_adapted(kind: &Kind) -> (Model, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lora.gguf");
    (kind.spec)().writer().expect("adapter").write_file(&path).expect("written");
    let mut model = Model::open(gemma_fetch::resolve_model(kind.model).expect("model available")).expect("model");
    assert_eq!(model.load_lora(&path, 1.0).expect("adapter loads"), 0);
    (model, dir)
}

fn adapted() -> &'static (Model, tempfile::TempDir) {
    static M: OnceLock<(Model, tempfile::TempDir)> = OnceLock::new();
    M.get_or_init(|| load_adapted(&GEMMA))
}

fn pool() -> &'static ThreadPool {
    static P: OnceLock<ThreadPool> = OnceLock::new();
    P.get_or_init(|| ThreadPool::new(2))
}

/// Greedy tokens from `prompt` with adapter scales `scales`, one token per pass after the prompt.
fn greedy_run(model: &Model, prompt: &[u32], n: usize, scales: &[f32]) -> Vec<u32> {
    let pool = pool();
    let scales = vec![scales.to_vec()];
    let mut cache = model.new_cache(prompt.len() + n);
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut batch = Batch::sequence(prompt, 0, 0, false);
    while out.len() < n {
        let logits = model.forward_lora(&batch, std::slice::from_mut(&mut cache), pool, &mut scratch, &scales);
        let next = greedy(logits.expect("forward").row(0));
        batch = Batch::sequence(&[next], cache.len(), 0, false);
        out.push(next);
    }
    out
}

#[test]
fn the_synthetic_adapters_are_the_scripts_files_byte_for_byte() {
    for kind in [GEMMA, SMOLLM2] {
        let bytes = (kind.spec)().writer().expect("adapter").to_bytes();
        let want = read_goldens(&kind).adapter;
        assert_eq!(bytes.len(), want.bytes);
        assert_eq!(format!("{:x}", Sha256::digest(&bytes)), want.sha256, "{}", kind.goldens);
    }
}

/// Our argmax at each step of llama.cpp's greedy text (the whole text in one pass, adapter scales `scales`).
fn teacher_forced_argmax(model: &Model, prompt: &[u32], gen: &[u32], scales: &[f32]) -> Vec<u32> {
    let pool = pool();
    let ids: Vec<u32> = prompt.iter().chain(&gen[..gen.len() - 1]).copied().collect();
    let batch = Batch {
        tokens: ids
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: pos + 1 >= prompt.len() })
            .collect(),
    };
    let mut cache = model.new_cache(ids.len());
    let mut scratch = Scratch::default();
    let scales = [scales.to_vec()];
    let logits = model.forward_lora(&batch, std::slice::from_mut(&mut cache), pool, &mut scratch, &scales);
    let logits = logits.expect("forward");
    (0..logits.len()).map(|i| greedy(logits.row(i))).collect()
}

#[test]
fn gemma3_greedy_tokens_follow_llama_cpp_at_every_scale() {
    follows_llama_cpp(&adapted().0, goldens(), 150);
}

#[test]
fn llama_architecture_greedy_tokens_follow_llama_cpp_at_every_scale() {
    let (model, _dir) = load_adapted(&SMOLLM2);
    follows_llama_cpp(&model, &read_goldens(&SMOLLM2), 150);
}

fn follows_llama_cpp(model: &Model, goldens: &Goldens, min_confident: usize) {
    let (mut free, mut whole, mut confident, mut changed, mut failures) = (0, 0, 0, 0, Vec::new());
    for case in &goldens.cases {
        let mut ours_by_scale = Vec::new();
        for run in &case.runs {
            let what = format!("{:?} at scale {}", case.prompt, run.scale);
            // Teacher-forced: wherever llama.cpp's best two logits are apart, ours picks its token.
            let tf = teacher_forced_argmax(model, &case.prompt_ids, &run.gen_ids, &[run.scale]);
            for (i, (&m, (&o, &l))) in run.top1_top2_margin.iter().zip(tf.iter().zip(&run.gen_ids)).enumerate() {
                if m >= NEAR_TIE {
                    confident += 1;
                    if o != l {
                        failures.push(format!("{what} step {i}: ours {o}, llama.cpp {l} (margin {m})"));
                    }
                }
            }
            // Free-running: the same tokens until the texts part, and they part at a near-tie of llama.cpp's.
            let ours = greedy_run(model, &case.prompt_ids, run.gen_ids.len(), &[run.scale]);
            let first_diff = ours.iter().zip(&run.gen_ids).position(|(a, b)| a != b).unwrap_or(ours.len());
            if first_diff < ours.len() {
                let m = run.top1_top2_margin[first_diff];
                assert!(m < NEAR_TIE, "{what}: the texts part at step {first_diff}, margin {m}: {ours:?}");
            }
            eprintln!("{what}: {first_diff} equal");
            free += first_diff;
            whole += usize::from(ours == run.gen_ids);
            ours_by_scale.push((run.scale, ours));
        }
        // Where the adapter changes llama.cpp's text, it changes ours.
        let at = |scale: f32| case.runs.iter().position(|r| r.scale == scale).expect("scale in goldens");
        let (base, full) = (at(0.0), at(1.0));
        if case.runs[base].gen_ids != case.runs[full].gen_ids {
            changed += 1;
            assert_ne!(ours_by_scale[base].1, ours_by_scale[full].1, "{:?}: the adapter changes nothing", case.prompt);
        }
    }
    let runs: usize = goldens.cases.iter().map(|c| c.runs.len()).sum();
    eprintln!("teacher-forced: {confident} steps with a margin >= {NEAR_TIE}, {} differ; free-running: {free} tokens equal before the texts part, {whole} of {runs} runs equal whole", failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(confident >= min_confident, "only {confident} steps with a clear choice");
    assert!(changed >= 2, "the adapter changes llama.cpp's text in only {changed} cases");
}

#[test]
fn scale_zero_is_the_base_model_bit_for_bit() {
    let (model, _) = adapted();
    let base = common::default_model();
    let ids = &goldens().cases[1].prompt_ids;
    let batch = Batch::sequence(ids, 0, 0, true);
    let logits = |m: &Model, scales: Option<&[Vec<f32>]>| {
        let mut cache = m.new_cache(ids.len());
        let mut scratch = Scratch::default();
        let caches = std::slice::from_mut(&mut cache);
        match scales {
            Some(s) => m.forward_lora(&batch, caches, &base.pool, &mut scratch, s).expect("forward").data.clone(),
            None => m.forward_with(&batch, caches, &base.pool, &mut scratch).expect("forward").data.clone(),
        }
    };
    let plain = logits(&base.model, None);
    assert_eq!(logits(model, Some(&[vec![0.0]])), plain);
    assert_eq!(logits(model, Some(&[])), plain, "a sequence without scales runs at 0");
    let on = logits(model, None);
    assert_ne!(on, plain, "the default scale 1 applies the adapter");
    assert_eq!(logits(model, Some(&[vec![1.0]])), on);
}

#[test]
fn sequences_of_one_batch_take_their_own_scales() {
    let (model, _) = adapted();
    let pool = pool();
    let (a, b) = (&goldens().cases[0].prompt_ids, &goldens().cases[2].prompt_ids);
    let scales = [vec![1.0], vec![0.0], vec![0.5]];
    let alone = |ids: &[u32], s: &Vec<f32>| {
        let mut cache = model.new_cache(ids.len());
        let mut scratch = Scratch::default();
        let batch = Batch::sequence(ids, 0, 0, true);
        let l =
            model.forward_lora(&batch, std::slice::from_mut(&mut cache), pool, &mut scratch, std::slice::from_ref(s));
        l.expect("forward").data.clone()
    };
    let mut batch = Batch::default();
    for (seq, ids) in [a, b, a].iter().enumerate() {
        for (pos, &token) in ids.iter().enumerate() {
            batch.push(BatchToken { token, pos, seq, logits: true });
        }
    }
    let mut caches: Vec<_> = [a, b, a].iter().map(|ids| model.new_cache(ids.len())).collect();
    let mut scratch = Scratch::default();
    let together = model.forward_lora(&batch, &mut caches, pool, &mut scratch, &scales).expect("forward");
    let vocab = together.vocab_size;
    let mut row = 0;
    for (seq, ids) in [a, b, a].iter().enumerate() {
        let own = alone(ids, &scales[seq]);
        let rows = &together.data[row * vocab..(row + ids.len()) * vocab];
        let diff = rows.iter().zip(&own).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "sequence {seq}: batched logits differ from its own pass by {diff}");
        for (r, o) in rows.chunks_exact(vocab).zip(own.chunks_exact(vocab)) {
            assert_eq!(greedy(r), greedy(o), "sequence {seq}");
        }
        row += ids.len();
    }
    // Sequences 0 and 2 share a prompt but not a scale: their logits differ.
    let first = &together.data[..a.len() * vocab];
    let third = &together.data[(a.len() + b.len()) * vocab..];
    assert!(first.iter().zip(third).any(|(x, y)| x != y));
}

/// Writes `w` into `dir` as `name` and loads it on the default model, expecting an error.
fn load_error(dir: &Path, name: &str, w: &GgufWriter) -> LoraError {
    let path = dir.join(name);
    w.write_file(&path).expect("written");
    load_bytes_error(&path)
}

fn load_bytes_error(path: &Path) -> LoraError {
    let mut model = Model::open(model_path()).expect("model");
    match model.load_lora(path, 1.0) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => {
            assert!(model.loras().is_empty(), "a refused adapter is not kept");
            e
        }
    }
}

/// A small adapter for the default model: rank 4 on `blk.0.attn_q` (or whatever `tensors` says).
fn small_adapter(meta: &[(&str, MetaValue)], tensors: &[(&str, [u64; 2])]) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(*k, v.clone()).expect("metadata");
    }
    for (name, dims) in tensors {
        let n = (dims[0] * dims[1]) as usize;
        w.add_tensor(*name, dims, GgmlType::F32, vec![0u8; n * 4]).expect("tensor");
    }
    w
}

fn text(s: &str) -> MetaValue {
    MetaValue::String(s.into())
}

#[test]
fn bad_adapter_files_are_typed_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good_meta = || {
        vec![
            ("general.architecture", text("gemma3")),
            ("general.type", text("adapter")),
            ("adapter.type", text("lora")),
            ("adapter.lora.alpha", MetaValue::F32(8.0)),
        ]
    };
    let q = [("blk.0.attn_q.weight.lora_a", [640, 4]), ("blk.0.attn_q.weight.lora_b", [4, 1024])];

    // The well-formed small adapter loads (so each error below comes from its one change).
    let path = dir.path().join("good.gguf");
    small_adapter(&good_meta(), &q).write_file(&path).expect("written");
    let mut model = Model::open(model_path()).expect("model");
    assert_eq!(model.load_lora(&path, 0.5).expect("loads"), 0);
    assert_eq!((model.loras()[0].n_adapted(), model.loras()[0].alpha(), model.lora_scales()), (1, 8.0, &[0.5][..]));
    assert!(matches!(model.set_lora_scale(1, 1.0), Err(LoraError::NoAdapter { id: 1, count: 1 })));
    assert!(matches!(model.set_lora_scale(0, f32::NAN), Err(LoraError::BadScale(_))));

    let mut meta = good_meta();
    meta[1].1 = text("model");
    let e = load_error(dir.path(), "model.gguf", &small_adapter(&meta, &q));
    assert!(matches!(e, LoraError::File(LoraFileError::NotAdapter { ref found, .. }) if found == "model"), "{e}");

    let e = load_error(dir.path(), "no-type.gguf", &small_adapter(&good_meta()[..1], &q));
    assert!(matches!(e, LoraError::File(LoraFileError::NotAdapter { .. })), "{e}");

    let mut meta = good_meta();
    meta[2].1 = text("ia3");
    let e = load_error(dir.path(), "ia3.gguf", &small_adapter(&meta, &q));
    assert!(matches!(e, LoraError::File(LoraFileError::NotLora { .. })), "{e}");

    let mut meta = good_meta();
    meta[0].1 = text("llama");
    let e = load_error(dir.path(), "llama.gguf", &small_adapter(&meta, &q));
    assert!(matches!(e, LoraError::Architecture { ref adapter, .. } if adapter == "llama"), "{e}");
    assert!(e.to_string().contains("mismatch"), "{e}");

    let mut meta = good_meta();
    meta[3].1 = text("sixteen");
    let e = load_error(dir.path(), "alpha.gguf", &small_adapter(&meta, &q));
    assert!(matches!(e, LoraError::File(LoraFileError::BadMetadata { key: "adapter.lora.alpha", .. })), "{e}");

    let e = load_error(dir.path(), "half.gguf", &small_adapter(&good_meta(), &q[..1]));
    assert!(matches!(e, LoraError::File(LoraFileError::MissingHalf { missing: "lora_b", .. })), "{e}");
    let e = load_error(dir.path(), "half-a.gguf", &small_adapter(&good_meta(), &q[1..]));
    assert!(matches!(e, LoraError::File(LoraFileError::MissingHalf { missing: "lora_a", .. })), "{e}");

    // Shapes: the wrong input width, the wrong output height, ranks that disagree, and A not transposed.
    for (i, bad) in [
        [("blk.0.attn_q.weight.lora_a", [2048, 4]), ("blk.0.attn_q.weight.lora_b", [4, 1024])],
        [("blk.0.attn_q.weight.lora_a", [640, 4]), ("blk.0.attn_q.weight.lora_b", [4, 640])],
        [("blk.0.attn_q.weight.lora_a", [640, 4]), ("blk.0.attn_q.weight.lora_b", [8, 1024])],
        [("blk.0.attn_q.weight.lora_a", [4, 640]), ("blk.0.attn_q.weight.lora_b", [4, 1024])],
    ]
    .iter()
    .enumerate()
    {
        let e = load_error(dir.path(), &format!("shape{i}.gguf"), &small_adapter(&good_meta(), bad));
        assert!(matches!(e, LoraError::Shape { ref name, .. } if name == "blk.0.attn_q.weight"), "{i}: {e}");
    }

    let unknown = [("blk.18.attn_q.weight.lora_a", [640, 4]), ("blk.18.attn_q.weight.lora_b", [4, 1024])];
    let e = load_error(dir.path(), "unknown.gguf", &small_adapter(&good_meta(), &unknown));
    assert!(matches!(e, LoraError::UnknownTensor { ref name, .. } if name == "blk.18.attn_q.weight"), "{e}");
    // A norm vector is not a matrix to adapt.
    let norm = [("blk.0.attn_norm.weight.lora_a", [640, 4]), ("blk.0.attn_norm.weight.lora_b", [4, 1])];
    let e = load_error(dir.path(), "norm.gguf", &small_adapter(&good_meta(), &norm));
    assert!(matches!(e, LoraError::UnknownTensor { .. }), "{e}");

    let stray = [q[0], q[1], ("blk.0.attn_q.weight", [640, 1024])];
    let e = load_error(dir.path(), "stray.gguf", &small_adapter(&good_meta(), &stray));
    assert!(matches!(e, LoraError::File(LoraFileError::UnexpectedTensor { .. })), "{e}");

    // Norm weights in an adapter are skipped, as llama.cpp skips them.
    let path = dir.path().join("with-norm.gguf");
    let mut w = small_adapter(&good_meta(), &q);
    w.add_tensor("blk.0.attn_norm.weight", &[640], GgmlType::F32, vec![0u8; 640 * 4]).expect("tensor");
    w.write_file(&path).expect("written");
    Model::open(model_path()).expect("model").load_lora(&path, 1.0).expect("norm weights are skipped");

    // Not a GGUF, a missing file, and every cut of the good file: errors, never a panic.
    std::fs::write(dir.path().join("text.gguf"), "not a gguf file").expect("written");
    assert!(matches!(load_bytes_error(&dir.path().join("text.gguf")), LoraError::File(LoraFileError::Gguf(_))));
    assert!(matches!(load_bytes_error(&dir.path().join("missing.gguf")), LoraError::File(LoraFileError::Gguf(_))));
    let bytes = std::fs::read(dir.path().join("good.gguf")).expect("read");
    let mut model = Model::open(model_path()).expect("model");
    let cut = dir.path().join("cut.gguf");
    for len in (0..bytes.len()).step_by(97) {
        std::fs::write(&cut, &bytes[..len]).expect("written");
        assert!(model.load_lora(&cut, 1.0).is_err(), "a file cut at {len} of {} bytes loaded", bytes.len());
    }
}

#[test]
fn a_scale_that_is_not_a_number_is_refused() {
    // The scale is checked before the file is read.
    let dir = tempfile::tempdir().expect("temp dir");
    let e = Model::open(model_path()).map(|mut m| m.load_lora(dir.path().join("x.gguf"), f32::INFINITY));
    assert!(matches!(e, Ok(Err(LoraError::BadScale(_)))));
}

#[test]
fn a_token_embedding_pair_adapts_the_lookup_of_each_token() {
    // llama.cpp aborts on this file with a tied Gemma 3 (it also multiplies the pair as the tied output head's,
    // GGML_ASSERT(ggml_can_mul_mat)); here the pair adapts the lookup only (docs/lora.md).
    let dir = tempfile::tempdir().expect("temp dir");
    let (rank, vocab, d) = (4usize, 262_144usize, 640usize);
    let bos = 2usize;
    let mut a = gemma_core::lora::synthetic::values(7, 0, vocab * rank, 0);
    a[bos * rank..(bos + 1) * rank].fill(0.0); // BOS's row adds nothing
    let b = gemma_core::lora::synthetic::values(7, 1, d * rank, 2);
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", text("gemma3")).expect("meta");
    w.add_metadata("general.type", text("adapter")).expect("meta");
    w.add_metadata("adapter.type", text("lora")).expect("meta");
    w.add_tensor("token_embd.weight.lora_a", &[rank as u64, vocab as u64], GgmlType::F32, f32_bytes(&a)).expect("a");
    w.add_tensor("token_embd.weight.lora_b", &[rank as u64, d as u64], GgmlType::F32, f32_bytes(&b)).expect("b");
    let path = dir.path().join("embd.gguf");
    w.write_file(&path).expect("written");
    let mut model = Model::open(model_path()).expect("model");
    model.load_lora(&path, 1.0).expect("an embedding pair loads");
    assert_eq!(model.loras()[0].n_adapted(), 1);

    let base = common::default_model();
    let ids = &goldens().cases[0].prompt_ids;
    assert_eq!(ids[0] as usize, bos);
    let batch = Batch::sequence(ids, 0, 0, true);
    let logits = |m: &Model| {
        let mut cache = m.new_cache(ids.len());
        m.forward(&batch, std::slice::from_mut(&mut cache), pool()).expect("forward")
    };
    let (plain, adapted) = (logits(&base.model), logits(&model));
    // The first position sees BOS alone, whose row is zero: the base model's logits exactly. Later ones differ.
    assert_eq!(adapted.row(0), plain.row(0));
    for i in 1..ids.len() {
        assert_ne!(adapted.row(i), plain.row(i), "position {i}");
    }
}

#[test]
fn a_session_runs_at_its_own_scales_and_a_conversation_recomputes_on_a_change() {
    let (model, _) = adapted();
    let tokenizer = model.tokenizer().expect("tokenizer");
    let prompt = tokenizer.encode("Once upon a time, in a small village by the sea,", true, true);
    let options =
        gemma_core::GenerationOptions { max_tokens: 12, sampling: SamplingParams::greedy(), ..Default::default() };
    let run = |scales: Option<Vec<f32>>| {
        let mut session = Session::new(model, 256);
        session.set_lora_scales(scales).expect("finite scales");
        session.generate(&tokenizer, &prompt, &options, pool(), &mut |_| {}).expect("generates").gen_ids
    };
    // A session's own scales are forward_lora's with the same scales; none: the model's default (1).
    assert_eq!(run(Some(vec![0.5])), greedy_run(model, &prompt, 12, &[0.5]));
    assert_eq!(run(None), greedy_run(model, &prompt, 12, &[1.0]));
    assert_eq!(run(Some(vec![])), greedy_run(model, &prompt, 12, &[0.0]), "a missing scale is 0");
    let mut session = Session::new(model, 64);
    assert!(matches!(session.set_lora_scales(Some(vec![f32::NAN])), Err(LoraError::BadScale(_))));
    assert_eq!(session.set_lora_scales(Some(vec![1.0])).ok(), Some(false), "the default already");
    assert_eq!(session.set_lora_scales(Some(vec![1.0, -0.0])).ok(), Some(false), "a trailing 0 is no change");
    assert_eq!(session.set_lora_scales(Some(vec![0.25])).ok(), Some(true));

    // A conversation whose scales change answers as a new one at the new scales, prefilling everything.
    let template = ChatTemplate::from_gguf(&model.file, &tokenizer).expect("template");
    let new_conversation = || Conversation::new(model, &tokenizer, &template, 512, options.clone()).expect("chat");
    let mut chat = new_conversation();
    let first = chat.send("Tell me about the sea.", pool(), &mut |_| {}).expect("turn");
    chat.set_lora_scales(Some(vec![1.0])).expect("scales");
    let same = chat.send("And the sky?", pool(), &mut |_| {}).expect("turn");
    assert!(same.reused > 0, "unchanged scales keep the cache");
    chat.set_lora_scales(Some(vec![0.5])).expect("scales");
    assert_eq!(chat.context_used(), 0, "a change empties the cache");
    let changed = chat.send("And the stars?", pool(), &mut |_| {}).expect("turn");
    assert_eq!(changed.reused, 0);
    let mut fresh = new_conversation();
    fresh.set_lora_scales(Some(vec![0.5])).expect("scales");
    let history = vec![
        ChatMessage::user("Tell me about the sea."),
        ChatMessage::assistant(first.output.text.clone()),
        ChatMessage::user("And the sky?"),
        ChatMessage::assistant(same.output.text.clone()),
    ];
    fresh.set_messages(history).expect("messages");
    let expected = fresh.send("And the stars?", pool(), &mut |_| {}).expect("turn");
    assert_eq!(changed.output.gen_ids, expected.output.gen_ids);
    assert_eq!(chat.lora_scales(), [0.5]);
}
