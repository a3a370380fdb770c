//! Running gemma.cpp SBS checkpoints: the default model converted to SBS (by `gemma_core::convert`) against
//! the GGUF path on the shared goldens, the SBS tokenizer on the Gemma corpus, and damaged files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gemma_compression::{sbs_codec, SbsCodecType};
use gemma_core::convert::{gguf_to_sbs, no_progress, GgufToSbsOptions};
use gemma_core::{Batch, BatchToken, Model};
use gemma_io::sbs::config::Model as SbsModel;
use gemma_io::sbs::tensor_info::exported_tensors;
use gemma_io::sbs::{ModelConfig as SbsConfig, PromptWrapping, SbsFile, SbsType, SbsWriter, TensorRecord};
use gemma_ops::ThreadPool;
use serde::Deserialize;

mod common;
use common::{teacher_forced, top_k};

#[derive(Deserialize)]
struct Golden {
    prompt_ids: Vec<u32>,
    gen_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Corpus {
    whole_special: Vec<u32>,
    lines_plain: Vec<Vec<u32>>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens")
}

fn goldens() -> Vec<Golden> {
    let text = std::fs::read_to_string(golden_dir().join("gemma3_270m_goldens_shared.json")).expect("goldens");
    serde_json::from_str(&text).expect("golden json")
}

fn pool() -> &'static ThreadPool {
    static P: OnceLock<ThreadPool> = OnceLock::new();
    P.get_or_init(|| ThreadPool::new(2))
}

fn gguf_path() -> PathBuf {
    gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model available")
}

fn gguf_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::open(gguf_path()).expect("GGUF model loads"))
}

/// The default model converted to SBS with `ty` weights, opened through `Model::open`. The file is deleted
/// once open (the memory map keeps it alive).
fn converted(ty: SbsCodecType) -> Model {
    let out = std::env::temp_dir().join(format!("gemma-sbs-model-{}-{ty}.sbs", std::process::id()));
    let options = GgufToSbsOptions { weight_type: ty, wrapping: None, threads: 2 };
    gguf_to_sbs(&gguf_path(), &out, &options, &mut no_progress).expect("conversion to SBS");
    let model = Model::open(&out).expect("SBS model loads");
    std::fs::remove_file(&out).expect("remove the temporary SBS file");
    model
}

fn f32_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| converted(SbsCodecType::F32))
}

fn sfp_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| converted(SbsCodecType::Sfp))
}

fn i8_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| converted(SbsCodecType::I8))
}

/// The best id and its margin over the second best.
fn top2(row: &[f32]) -> (u32, f32) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.select_nth_unstable_by(1, |&a, &b| row[b].total_cmp(&row[a]));
    let (a, b) = if row[order[0]] >= row[order[1]] { (order[0], order[1]) } else { (order[1], order[0]) };
    (a as u32, row[a] - row[b])
}

/// Compares `model`'s teacher-forced argmax with the GGUF path's at every step where the GGUF margin is at
/// least `min_margin`; returns (steps compared, steps in all, the disagreements as (golden, step, margin)).
fn argmax_agreement(model: &Model, min_margin: f32) -> (usize, usize, Vec<(usize, usize, f32)>) {
    let (mut compared, mut total, mut disagreements) = (0, 0, Vec::new());
    for (gi, g) in goldens().iter().enumerate() {
        let want = teacher_forced(gguf_model(), pool(), &g.prompt_ids, &g.gen_ids);
        let got = teacher_forced(model, pool(), &g.prompt_ids, &g.gen_ids);
        for (step, (w, s)) in want.iter().zip(&got).enumerate() {
            total += 1;
            let (w_id, margin) = top2(w);
            if margin < min_margin {
                continue;
            }
            compared += 1;
            if top2(s).0 != w_id {
                disagreements.push((gi, step, margin));
            }
        }
    }
    (compared, total, disagreements)
}

#[test]
fn f32_sbs_gives_the_gguf_argmax_wherever_the_margin_is_at_least_half_a_logit() {
    let (compared, total, disagreements) = argmax_agreement(f32_model(), 0.5);
    eprintln!("F32 SBS: {compared} of {total} steps have a GGUF margin >= 0.5; argmax differs at {disagreements:?}");
    assert!(disagreements.is_empty(), "(golden, step, margin) where the argmax differs: {disagreements:?}");
    assert!(compared * 10 >= total * 8, "only {compared} of {total} steps had a margin of 0.5");
}

/// SFP (8 bits: 3 mantissa bits above 2^-7, 2 below) on top of the GGUF file's own 4-6 bit quantization is
/// lossy. With the embedding (the tied output head) in BF16 as gemma.cpp stores it, no step with a GGUF margin
/// of at least 1.5 changes its argmax, but the first-step top-10 logits still differ from the F32 SBS run by
/// 0.28 to 1.76 per golden (median 0.61): the bound of 0.5 holds for 4 of 13 goldens only. Much of it
/// is one shift of every logit (on the worst golden all ten move by 1.03 to 1.80), which changes no
/// probability; as log-probabilities the top 10 differ by 0.24 to 0.74. The shift is the final norm's divisor
/// moving with the residual stream's one massive channel (163), which every layer's rounding nudges. Each of
/// the four matrix kinds in SFP alone moves them by about 0.3, so the loss is the format's rounding spread over
/// every matrix, not one weak tensor. The assertion pins what is measured; that the kernels add nothing to the loss is checked exactly by
/// `sfp_kernels_equal_bf16_kernels_on_the_decoded_weights`.
#[test]
fn sfp_sbs_keeps_the_gguf_argmax_at_clear_steps_and_first_logits_near_f32() {
    let (compared, total, disagreements) = argmax_agreement(sfp_model(), 1.5);
    eprintln!("SFP SBS: {compared} of {total} steps have a GGUF margin >= 1.5; argmax differs at {disagreements:?}");
    assert!(compared * 2 >= total, "only {compared} of {total} steps had a margin of 1.5");
    assert!(disagreements.is_empty(), "(golden, step, margin) where the argmax differs: {disagreements:?}");
    let per_golden = first_step_distances(sfp_model());
    eprintln!("SFP vs F32 SBS: largest first-step top-10 logit difference per golden {per_golden:.3?}");
    let median = {
        let mut v = per_golden.clone();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    assert!(median <= 0.75 && per_golden.iter().all(|&d| d <= 2.0), "{per_golden:?}");
}

/// Per golden, the largest difference between `model`'s first-step logits and the F32 SBS run's, over the F32
/// run's ten best tokens.
fn first_step_distances(model: &Model) -> Vec<f32> {
    goldens()
        .iter()
        .map(|g| {
            let f32_first = &teacher_forced(f32_model(), pool(), &g.prompt_ids, &g.gen_ids)[0];
            let first = &teacher_forced(model, pool(), &g.prompt_ids, &g.gen_ids)[0];
            top_k(f32_first, 10)
                .iter()
                .map(|&(id, _)| (f32_first[id as usize] - first[id as usize]).abs())
                .fold(0.0f32, f32::max)
        })
        .collect()
}

/// gemma.cpp's other 8-bit format, I8 (groups of 128 with a bf16 scale and zero point), does meet the issue's
/// bound: its first-step top-10 logits are within 0.5 of the F32 SBS run on every golden (0.08 to 0.34 with
/// f32 activations, 0.06 to 0.44 where the CPU has AVX-512 BF16 and I8 weights and activations are rounded to
/// bf16, as gemma.cpp's MatMul does). So the bound is attainable at 8 bits on this model, and SFP misses it through its 3-bit mantissa
/// (its mean rounding error on this model's matrices is about 3.5 times I8's, by `gemma blob-compare` against
/// the F32 file), not through the conversion or the kernels.
#[test]
fn i8_sbs_first_logits_are_within_half_a_logit_of_f32() {
    let per_golden = first_step_distances(i8_model());
    eprintln!("I8 vs F32 SBS: largest first-step top-10 logit difference per golden {per_golden:.3?}");
    assert!(per_golden.iter().all(|&d| d <= 0.5), "{per_golden:?}");
}

/// The SFP file's matrices decoded to BF16 (exact: every SFP value is a bf16), each keeping its tensor's
/// scale, and every other tensor copied as it is: the SFP model must give bitwise the logits of that BF16
/// model, since both take the same activations (bf16 on CPUs with AVX-512 BF16, f32 elsewhere) and the same
/// dot pattern. So the SFP path (decoding in registers for one token, decoded rows for several) loses nothing
/// beyond the format itself.
#[test]
fn sfp_kernels_equal_bf16_kernels_on_the_decoded_weights() {
    let sfp = sfp_model().sbs().expect("an SBS model");
    let out = std::env::temp_dir().join(format!("gemma-sbs-model-{}-sfp-decoded.sbs", std::process::id()));
    let mut writer = SbsWriter::create(&out).expect("writer");
    let mut converted = 0;
    for t in sfp.tensors() {
        let r = &t.record;
        if r.ty != SbsType::SFP {
            writer.add_tensor(r, sfp.tensor_data(t)).expect("add");
            continue;
        }
        let n = r.rows as usize * r.cols as usize;
        let mut words = vec![0u16; n];
        sbs_codec(SbsCodecType::Sfp).decode_bf16(sfp.tensor_data(t), 0, &mut words).expect("decode");
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut record = TensorRecord::new(&r.name, SbsType::BF16, r.rows.into(), r.cols.into()).expect("record");
        record.scale = r.scale;
        writer.add_tensor(&record, &bytes).expect("add");
        converted += 1;
    }
    assert!(converted >= 4 * 18, "only {converted} SFP tensors");
    let mut config = sfp.config().clone();
    config.weight = SbsType::BF16;
    writer.finish(&config, None).expect("finish");
    let decoded = Model::open(&out).expect("decoded model loads");
    std::fs::remove_file(&out).expect("remove the temporary file");
    let mut compared = 0;
    for g in goldens().iter().take(4) {
        let (a, b) = (
            teacher_forced(sfp_model(), pool(), &g.prompt_ids, &g.gen_ids),
            teacher_forced(&decoded, pool(), &g.prompt_ids, &g.gen_ids),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "logits differ");
            compared += 1;
        }
        // and one token at a time (the fused one-token kernel) gives the batched logits bit for bit
        let mut cache = sfp_model().new_cache(g.prompt_ids.len() + 1);
        let mut last = Vec::new();
        for (pos, &token) in g.prompt_ids.iter().enumerate() {
            let batch = Batch { tokens: vec![BatchToken { token, pos, seq: 0, logits: true }] };
            last =
                sfp_model().forward(&batch, std::slice::from_mut(&mut cache), pool()).expect("forward").row(0).to_vec();
        }
        assert!(last.iter().zip(&a[0]).all(|(p, q)| p.to_bits() == q.to_bits()), "token by token differs");
    }
    eprintln!("SFP and its BF16 decoding: {compared} teacher-forced steps with identical logits");
}

#[test]
fn sbs_models_are_gemma3_270m_with_gemma_cpp_constants() {
    let (sbs, gguf) = (&f32_model().config, &gguf_model().config);
    assert_eq!((sbs.n_layers, sbs.d_model, sbs.ffn_dim), (gguf.n_layers, gguf.d_model, gguf.ffn_dim));
    assert_eq!((sbs.n_heads, sbs.n_kv_heads, sbs.head_dim), (gguf.n_heads, gguf.n_kv_heads, gguf.head_dim));
    assert_eq!(
        (sbs.vocab_size, sbs.sliding_window, &sbs.layer_is_local),
        (gguf.vocab_size, gguf.sliding_window, &gguf.layer_is_local)
    );
    assert_eq!(
        (sbs.rope_base, sbs.rope_base_local, sbs.query_scale),
        (gguf.rope_base, gguf.rope_base_local, gguf.query_scale)
    );
    // gemma.cpp rounds sqrt(640) = 25.298 to bf16.
    assert_eq!(sbs.embedding_scale, 25.25);
    assert!(f32_model().sbs().is_some() && gguf_model().sbs().is_none());
}

#[test]
fn the_sbs_tokenizer_encodes_the_gemma_corpus_to_the_golden_ids() {
    let tok = sfp_model().tokenizer().expect("tokenizer from the SBS blob");
    let text = std::fs::read_to_string(golden_dir().join("gemma3_tokenizer_corpus.txt")).expect("corpus");
    let corpus: Corpus =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("gemma3_tokenizer_corpus.json")).unwrap())
            .expect("corpus json");
    assert_eq!(tok.encode(&text, true, true), corpus.whole_special);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    assert_eq!(lines.len(), corpus.lines_plain.len());
    for (line, want) in lines.iter().zip(&corpus.lines_plain) {
        assert_eq!(&tok.encode(line, false, false), want, "line {line:?}");
    }
    let gguf_tok = gguf_model().tokenizer().expect("GGUF tokenizer");
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (gguf_tok.bos_id(), gguf_tok.eos_id(), gguf_tok.add_bos()));
    for g in goldens() {
        assert_eq!(tok.decode(&g.gen_ids, false), gguf_tok.decode(&g.gen_ids, false));
    }
    // The whole vocabulary reads as llama.cpp's converter wrote it into the GGUF file.
    assert_eq!(tok.vocab_size(), gguf_tok.vocab_size());
    for id in 0..tok.vocab_size() as u32 {
        assert_eq!(tok.piece(id), gguf_tok.piece(id), "token {id}");
        assert_eq!(tok.token_attrs(id), gguf_tok.token_attrs(id), "token {id} ({:?})", tok.piece(id));
    }
}

/// A tiny Gemma 3 shaped checkpoint (2 layers, 2 KV heads) with deterministic weights, written in memory.
fn tiny_sbs(ty: SbsType) -> Vec<u8> {
    tiny_sbs_with(ty, false)
}

/// [`tiny_sbs`]; with `nuq_values`, the matrices hold the values a NUQ encoding of them decodes to.
fn tiny_sbs_with(ty: SbsType, nuq_values: bool) -> Vec<u8> {
    let mut config = SbsConfig::new(SbsModel::Gemma3_270M, ty, PromptWrapping::GemmaIt);
    config.num_layers = 2;
    config.model_dim = 32;
    config.vocab_size = 48;
    config.max_seq_len = 64;
    config.attention_window_sizes = vec![4, 64];
    let layer = config.layer_configs[0].clone();
    config.layer_configs = vec![
        gemma_io::sbs::LayerConfig {
            model_dim: 32,
            ff_hidden_dim: 64,
            heads: 4,
            kv_heads: 2,
            qkv_dim: 16,
            ..layer
        };
        2
    ];
    let mut writer = SbsWriter::in_memory().expect("writer");
    let mut seed = 5u64;
    for (name, rows, cols) in exported_tensors(&config) {
        let n = (rows * cols) as usize;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
            })
            .collect();
        // Norms (one row) stay F32, as the smallest type must be the config's weight type.
        let stored = if rows == 1 { SbsType::F32 } else { ty };
        let values = if nuq_values && rows > 1 {
            let nuq = sbs_codec(SbsCodecType::Nuq);
            let mut packed = vec![0u8; nuq.packed_bytes(n)];
            nuq.encode(&values, &mut packed, 0).expect("encode");
            let mut decoded = vec![0f32; n];
            nuq.decode(&packed, 0, &mut decoded).expect("decode");
            decoded
        } else {
            values
        };
        let codec = sbs_codec(match stored {
            SbsType::SFP => SbsCodecType::Sfp,
            SbsType::NUQ => SbsCodecType::Nuq,
            _ => SbsCodecType::F32,
        });
        let mut packed = vec![0u8; codec.packed_bytes(n)];
        codec.encode(&values, &mut packed, 0).expect("encode");
        writer.add_tensor(&TensorRecord::new(&name, stored, rows, cols).expect("record"), &packed).expect("add");
    }
    writer.finish(&config, None).expect("finish")
}

#[test]
fn a_tiny_sbs_model_runs_and_is_batch_shape_invariant() {
    // NUQ with 16-wide heads: `att_ein`'s head rows are not whole groups, so it is decoded to BF16 at load
    for ty in [SbsType::SFP, SbsType::NUQ] {
        let path = std::env::temp_dir().join(format!("gemma-sbs-tiny-{}-{}.sbs", std::process::id(), ty.name()));
        std::fs::write(&path, tiny_sbs(ty)).unwrap();
        let model = Model::open(&path).expect("tiny SBS model loads");
        std::fs::remove_file(&path).unwrap();
        assert_eq!((model.config.n_kv_heads, model.config.layer_is_local.clone()), (2, vec![true, false]));
        let ids = [3u32, 17, 5, 40, 8, 8, 21];
        let (one_pass, token_by_token) = (logits_in_passes(&model, &ids, ids.len()), logits_in_passes(&model, &ids, 1));
        assert_eq!(one_pass, token_by_token, "{ty:?}: prefill and decode disagree");
        assert!(one_pass.iter().flatten().all(|v| v.is_finite()));
        assert!(model.tokenizer().is_err(), "the tiny file has no tokenizer blob");
    }
    // The NUQ model's `att_ein`, rebuilt at load, holds the file's values: it computes what an F32 file of the
    // same values computes, up to the bf16 activations compressed weights take on AVX-512 BF16 CPUs.
    let open = |bytes: Vec<u8>, tag: &str| {
        let path = std::env::temp_dir().join(format!("gemma-sbs-tiny-{}-{tag}.sbs", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let model = Model::open(&path).expect("tiny SBS model loads");
        std::fs::remove_file(&path).unwrap();
        model
    };
    let ids = [3u32, 17, 5, 40, 8, 8, 21];
    let nuq = logits_in_passes(&open(tiny_sbs(SbsType::NUQ), "nuq"), &ids, ids.len());
    let f32 = logits_in_passes(&open(tiny_sbs_with(SbsType::F32, true), "nuq-values"), &ids, ids.len());
    let worst = nuq.iter().flatten().zip(f32.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let spread = f32.iter().flatten().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(worst <= 0.02 * spread.max(1.0), "NUQ vs F32 of its values: {worst} (logits up to {spread})");
}

/// The logits of every position of `ids`, run through a fresh cache in passes of `n_per_pass` tokens.
fn logits_in_passes(model: &Model, ids: &[u32], n_per_pass: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(ids.len());
    let mut rows = Vec::new();
    for (start, chunk) in ids.chunks(n_per_pass).enumerate().map(|(i, c)| (i * n_per_pass, c)) {
        let batch = Batch {
            tokens: chunk
                .iter()
                .enumerate()
                .map(|(i, &token)| BatchToken { token, pos: start + i, seq: 0, logits: true })
                .collect(),
        };
        let logits = model.forward(&batch, std::slice::from_mut(&mut cache), pool()).expect("forward");
        rows.extend((0..logits.len()).map(|i| logits.row(i).to_vec()));
    }
    rows
}

/// I8 and NUQ files decode one token with kernels of their own (groups decoded in registers where the CPU
/// has AVX-512 BF16) and several tokens from decoded rows: a prompt's logits must be bitwise the same run in
/// one pass, token by token, or in passes of 3.
#[test]
fn i8_and_nuq_logits_do_not_depend_on_the_batch() {
    let ids: Vec<u32> = goldens()[0].prompt_ids.iter().copied().take(10).collect();
    for (ty, model) in [(SbsCodecType::I8, i8_model()), (SbsCodecType::Nuq, &converted(SbsCodecType::Nuq))] {
        let one_pass = logits_in_passes(model, &ids, ids.len());
        assert_eq!(one_pass, logits_in_passes(model, &ids, 1), "{ty}: prefill and decode disagree");
        assert_eq!(one_pass, logits_in_passes(model, &ids, 3), "{ty}: passes of 3 disagree");
    }
}

#[test]
fn damaged_sbs_files_are_errors_not_panics() {
    let bytes = tiny_sbs(SbsType::F32);
    let file = SbsFile::from_bytes(bytes.clone(), "tiny.sbs", &Default::default()).expect("the intact file parses");
    let toc = file.blobs().range("toc").expect("toc blob");
    let path = std::env::temp_dir().join(format!("gemma-sbs-damaged-{}.sbs", std::process::id()));
    let open = |data: &[u8]| {
        std::fs::write(&path, data).unwrap();
        Model::open(&path).map(|_| ())
    };
    assert!(open(&bytes).is_ok());
    let mut cuts: Vec<usize> = (0..16).map(|i| bytes.len() * i / 16).collect();
    cuts.extend([4, 16, 255, bytes.len() - 1, bytes.len() - 16, bytes.len() - 4096]);
    for cut in cuts {
        let err = open(&bytes[..cut]).expect_err("a truncated file must not load");
        assert!(!err.to_string().is_empty());
    }
    // Every byte of the toc and of the directory (keys, ranges, header: the file's last bytes), flipped in turn.
    let toc_bytes = toc.offset as usize..(toc.offset + toc.bytes) as usize;
    let dir_bytes = bytes.len() - (32 * file.blobs().keys().len() + 16)..bytes.len();
    let (mut errors, mut tried) = (0, 0);
    for at in toc_bytes.chain(dir_bytes) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        tried += 1;
        if open(&damaged).is_err() {
            errors += 1;
        }
    }
    std::fs::remove_file(&path).ok();
    eprintln!("flipped bytes: {errors} of {tried} damaged files refused, the rest loaded without a panic");
    assert!(errors > tried / 4, "only {errors} of {tried} damaged files were refused");
}

/// The loss of the compressed files as llama-perplexity measures quantization: the KL divergence of their
/// next-token distributions from the F32 file's over a text (`gemma perplexity --kl-divergence`). On 1,008
/// positions of a longer text (docs/perplexity.md) SFP is at 0.015 and I8 at 0.0017, where the GGUF file itself
/// (Q8_K activations) is at 0.006 in both engines; this pins the order and a ceiling on 62 positions.
#[test]
fn compressed_files_diverge_from_f32_as_measured() {
    use gemma_core::perplexity::{self, ChunkPlan, DivergenceStats, LogProbReader, LogProbWriter, NllStats, Scoring};
    let text = include_str!("../../../testdata/perplexity/lighthouses.txt");
    let tokenizer = gemma_core::Tokenizer::from_gguf(&gguf_model().file).unwrap();
    let tokens = tokenizer.encode(text.trim_end_matches('\n'), true, false);
    let bos = tokenizer.bos_id();
    let plan = ChunkPlan::new(tokens.len(), 64, Some(2), 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f32.kld");
    let mut writer = LogProbWriter::create(&path, &plan, f32_model().config.vocab_size, &tokens).unwrap();
    let mut base_stats = NllStats::default();
    let save = Scoring::Perplexity { stats: &mut base_stats, save: Some(&mut writer) };
    perplexity::run(f32_model(), pool(), &tokens, bos, &plan, save, &mut |_, _| {}, None).unwrap();
    writer.finish().unwrap();
    let divergence = |model: &Model| {
        let mut base = LogProbReader::open(&path).unwrap();
        let mut stats = DivergenceStats::default();
        let scoring = Scoring::Divergence { stats: &mut stats, base: &mut base };
        perplexity::run(model, pool(), &tokens, bos, &plan, scoring, &mut |_, _| {}, None).unwrap();
        stats.summary()
    };
    let (sfp, i8) = (divergence(sfp_model()), divergence(i8_model()));
    eprintln!(
        "vs F32 SBS: SFP KLD {:.5} (PPL x{:.4}), I8 KLD {:.5} (PPL x{:.4})",
        sfp.kld_mean.value, sfp.ppl_ratio.value, i8.kld_mean.value, i8.ppl_ratio.value
    );
    assert_eq!(sfp.count, 62);
    assert!(i8.kld_mean.value < sfp.kld_mean.value, "I8 is the finer format");
    assert!(sfp.kld_mean.value > 0.0 && sfp.kld_mean.value < 0.05, "{:?}", sfp.kld_mean);
    assert!(i8.kld_mean.value < 0.01, "{:?}", i8.kld_mean);
    assert!(sfp.ppl_ratio.value < 1.06 && sfp.same_top.value > 0.8, "{sfp:?}");
}

/// gemma.cpp accepts each fused matrix in another form too (its `weights.cc`): Q in `qkv1_w` and K/V in
/// `qkv2_w` instead of `qkv_ein`, the output projection as `att_w` (`[d_model, heads * head_dim]`) instead of
/// `att_ein`, gate and up as `gating1_w` / `gating2_w` instead of `gating_ein`. The SFP file rewritten in those
/// forms (the same encoded bytes moved, SFP being one byte a value) gives bitwise the same logits.
#[test]
fn split_tensor_forms_give_the_same_logits() {
    let sfp = sfp_model().sbs().expect("an SBS model");
    let c = &sfp_model().config;
    let (d, hd, heads, ff) = (c.d_model, c.head_dim, c.n_heads, c.ffn_dim);
    let out = std::env::temp_dir().join(format!("gemma-sbs-model-{}-sfp-split.sbs", std::process::id()));
    let mut writer = SbsWriter::create(&out).expect("writer");
    let mut add = |name: String, r: &TensorRecord, rows: usize, cols: usize, bytes: &[u8]| {
        let mut record = TensorRecord::new(&name, r.ty, rows as u64, cols as u64).expect("record");
        record.scale = r.scale;
        writer.add_tensor(&record, bytes).expect("add");
    };
    let mut rewritten = 0;
    for t in sfp.tensors() {
        let (r, data) = (&t.record, sfp.tensor_data(t));
        let (base, layer) = r.name.rsplit_once('_').expect("name");
        match base {
            "qkv_ein" | "gating_ein" | "att_ein" => assert_eq!(r.ty, SbsType::SFP, "{}", r.name),
            _ => {
                add(r.name.clone(), r, r.rows as usize, r.cols as usize, data);
                continue;
            }
        }
        rewritten += 1;
        match base {
            "qkv_ein" => {
                let q = heads * hd * d;
                add(format!("qkv1_w_{layer}"), r, heads * hd, d, &data[..q]);
                add(format!("qkv2_w_{layer}"), r, r.rows as usize - heads * hd, d, &data[q..]);
            }
            "gating_ein" => {
                add(format!("gating1_w_{layer}"), r, ff, d, &data[..ff * d]);
                add(format!("gating2_w_{layer}"), r, ff, d, &data[ff * d..]);
            }
            _ => {
                // att_ein[h][m][j] -> att_w[m][h * head_dim + j]
                let mut att_w = vec![0u8; data.len()];
                for h in 0..heads {
                    for m in 0..d {
                        let (from, to) = ((h * d + m) * hd, m * heads * hd + h * hd);
                        att_w[to..to + hd].copy_from_slice(&data[from..from + hd]);
                    }
                }
                add(format!("att_w_{layer}"), r, d, heads * hd, &att_w);
            }
        }
    }
    assert_eq!(rewritten, 3 * c.n_layers);
    writer.finish(sfp.config(), sfp.tokenizer_bytes()).expect("finish");
    let split = Model::open(&out).expect("the split model loads");
    std::fs::remove_file(&out).expect("remove the temporary file");
    let split_file = split.sbs().expect("SBS");
    assert!(split_file.tensor("qkv_ein_0").is_none() && split_file.tensor("att_w_17").is_some());
    for g in goldens().iter().take(3) {
        let (a, b) = (
            teacher_forced(sfp_model(), pool(), &g.prompt_ids, &g.gen_ids),
            teacher_forced(&split, pool(), &g.prompt_ids, &g.gen_ids),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "logits differ");
        }
    }
}
