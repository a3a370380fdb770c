//! `gemma_core::imatrix` on the default model against llama-imatrix's own files for the same runs (`-c 128` over
//! `lighthouses.txt`, 5 chunks): the same matrices by name, the same token counts, the same metadata, and sums
//! within the difference of the two engines' activations. The perplexity it prints along the way is
//! `gemma perplexity`'s.
mod common;

use std::path::Path;

use common::default_model;
use gemma_core::imatrix::{self, Collector};
use gemma_core::perplexity::{self, ChunkPlan, NllStats, Scoring};
use gemma_core::Model;
use gemma_io::imatrix::Imatrix;

const TEXT: &str = include_str!("../../../testdata/perplexity/lighthouses.txt");
const LLAMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf");
const LLAMA_F32: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/imatrix/gemma3-270m-f32-lighthouses.imatrix.gguf");
const DATASET: &str = "testdata/perplexity/lighthouses.txt";

/// How far our sums are from llama-imatrix's.
#[derive(Debug)]
struct Difference {
    /// Largest relative difference of a column of layer 0's Q/K/V products, whose inputs (the normalized
    /// embeddings) both engines compute the same way: it pins down the tokens, the BOS, the chunking and the
    /// accumulation.
    layer0_qkv: f64,
    /// Largest per-matrix Σ|ours − llama| / Σ llama, and its matrix.
    matrix_l1: (f64, String),
    /// The median over matrices of each matrix's median column difference.
    median_column: f64,
    /// Largest relative difference of a single column, and its matrix.
    any_column: (f64, String),
}

/// Runs the 5 chunks llama-imatrix ran (its default batch of 2048 tokens runs 16 chunks of 128 side by side),
/// checks what must be equal, and measures the sums' difference.
fn run_and_compare(model: &Model, llama: &str, ppl: bool) -> (Difference, Option<NllStats>) {
    let m = default_model();
    let text = TEXT.strip_suffix('\n').unwrap_or(TEXT);
    let tokens = m.tokenizer.encode(text, m.tokenizer.add_bos(), false);
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.add_bos());
    let plan = ChunkPlan::new(tokens.len(), 128, None, 2048 / 128).expect("plan");
    assert_eq!(plan.n_chunks, 5);
    let mut collector = Collector::new(false);
    let mut nll = NllStats::default();
    let mut seen = Vec::new();
    imatrix::run(
        model,
        &m.pool,
        &tokens,
        bos,
        &plan,
        &mut collector,
        ppl.then_some(&mut nll),
        &mut |chunk, c, _| seen.push((chunk, c.max_tokens())),
        None,
    )
    .expect("imatrix run");
    assert_eq!(seen, (0..5).map(|c| (c, 640)).collect::<Vec<_>>(), "one group of 5 chunks");
    let ours = collector.to_imatrix(vec![DATASET.to_string()], plan.n_ctx);
    let theirs = Imatrix::open(llama).expect("llama-imatrix's file");

    assert_eq!((ours.datasets.clone(), ours.chunk_count, ours.chunk_size), (theirs.datasets.clone(), 5, 128));
    assert_eq!(ours.entries.keys().collect::<Vec<_>>(), theirs.entries.keys().collect::<Vec<_>>());
    // the file itself has llama-imatrix's layout: same size, same metadata, and it reads back
    let bytes = ours.to_gguf().expect("writer").into_bytes();
    assert_eq!(bytes.len() as u64, std::fs::metadata(llama).expect("size").len());
    let back = Imatrix::from_bytes(bytes, "ours.gguf").expect("reads back");
    assert!(back.has_metadata);
    assert_eq!(back, ours);

    let mut d = Difference {
        layer0_qkv: 0.0,
        matrix_l1: (0.0, String::new()),
        median_column: 0.0,
        any_column: (0.0, String::new()),
    };
    let mut medians = vec![];
    for (name, e) in &ours.entries {
        let l = &theirs.entries[name];
        assert_eq!(e.counts, l.counts, "{name}");
        assert_eq!(e.sums.len(), l.sums.len(), "{name}");
        let pairs = || e.sums.iter().zip(&l.sums).map(|(&a, &b)| (f64::from(a), f64::from(b)));
        let mut rel: Vec<f64> = pairs().map(|(a, b)| (a - b).abs() / b.abs().max(1e-6)).collect();
        rel.sort_by(f64::total_cmp);
        let l1 = pairs().map(|(a, b)| (a - b).abs()).sum::<f64>() / pairs().map(|(_, b)| b.abs()).sum::<f64>();
        let max = rel.last().copied().unwrap_or(0.0);
        if ["blk.0.attn_q.", "blk.0.attn_k.", "blk.0.attn_v."].iter().any(|p| name.starts_with(p)) {
            d.layer0_qkv = d.layer0_qkv.max(max);
        }
        medians.push(rel[rel.len() / 2]);
        if l1 > d.matrix_l1.0 {
            d.matrix_l1 = (l1, name.clone());
        }
        if max > d.any_column.0 {
            d.any_column = (max, name.clone());
        }
    }
    medians.sort_by(f64::total_cmp);
    d.median_column = medians[medians.len() / 2];
    if let Ok(dir) = std::env::var("IMATRIX_DUMP") {
        let name = Path::new(llama).file_name().expect("name");
        ours.write_file(Path::new(&dir).join(name), gemma_io::imatrix::ImatrixFormat::Gguf).expect("dump");
    }
    (d, ppl.then_some(nll))
}

/// The default (Q4_K_M) model. Both engines round the activations of quantized products (Q8_K, Q8_0) and the
/// two forward passes round differently (kernels, attention, llama.cpp's F16 KV cache), a difference that grows
/// through the 18 layers. llama-imatrix differs from itself by as much between its own settings (flash
/// attention on/off: per-matrix L1 1.6%, single columns 27%; F16/F32 KV cache: 2.3%, 52%), so the bounds sit
/// above that noise, not at a rounding level. Measured (`docs/quantize.md`): layer 0 1.6e-6, per-matrix L1
/// 2.4%, median column 0.43%, single columns 28%.
#[test]
fn lighthouses_matrix_matches_llama_imatrix() {
    let m = default_model();
    let (d, nll) = run_and_compare(&m.model, LLAMA, true);
    eprintln!("Q4_K_M model, difference from llama-imatrix: {d:?}");
    assert!(d.layer0_qkv < 1e-5, "{d:?}");
    assert!(d.matrix_l1.0 < 0.05, "{d:?}");
    assert!(d.median_column < 0.01, "{d:?}");
    assert!(d.any_column.0 < 0.6, "{d:?}");

    // the perplexity printed along the way is gemma perplexity's
    let nll = nll.expect("scored");
    let text = TEXT.strip_suffix('\n').unwrap_or(TEXT);
    let tokens = m.tokenizer.encode(text, m.tokenizer.add_bos(), false);
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.add_bos());
    let plan = ChunkPlan::new(tokens.len(), 128, None, 16).expect("plan");
    let mut ppl = NllStats::default();
    let scoring = Scoring::Perplexity { stats: &mut ppl, save: None };
    perplexity::run(&m.model, &m.pool, &tokens, bos, &plan, scoring, &mut |_, _| {}, None).expect("perplexity");
    assert_eq!(nll.count, ppl.count);
    assert!((nll.perplexity() - ppl.perplexity()).abs() < 1e-6 * ppl.perplexity(), "{nll:?} vs {ppl:?}");
}

/// The same run on the F32 file made from the default model (byte-identical to llama-quantize's, which
/// llama-imatrix ran with `--no-ppl`): F32 weights multiply unrounded activations in both engines, so the
/// activations, and the sums, agree far more closely. Measured: per-matrix L1 0.09%, median column 7e-5,
/// single columns 0.44%.
#[test]
fn f32_model_matrix_matches_llama_imatrix_closely() {
    let (_dir, model) = common::f32_default_model();
    let (d, _) = run_and_compare(&model, LLAMA_F32, false);
    eprintln!("F32 model, difference from llama-imatrix: {d:?}");
    assert!(d.layer0_qkv < 1e-5, "{d:?}");
    assert!(d.matrix_l1.0 < 0.005, "{d:?}");
    assert!(d.median_column < 1e-3, "{d:?}");
    assert!(d.any_column.0 < 0.02, "{d:?}");
}
