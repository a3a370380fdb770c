//! `gemma_core::imatrix` on the default model against llama-imatrix's own file for the same run
//! (`testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf`: `-c 128` over `lighthouses.txt`, 5 chunks): the
//! same matrices by name, the same token counts, the same metadata, and sums within float rounding of the two
//! engines' activations. The perplexity it prints along the way is `gemma perplexity`'s.
mod common;

use common::default_model;
use gemma_core::imatrix::{self, Collector};
use gemma_core::perplexity::{self, ChunkPlan, NllStats, Scoring};
use gemma_io::imatrix::Imatrix;

const TEXT: &str = include_str!("../../../testdata/perplexity/lighthouses.txt");
const LLAMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf");
const DATASET: &str = "testdata/perplexity/lighthouses.txt";

/// Bounds on the difference from llama-imatrix's sums (measured values in `docs/quantize.md`). The inputs of
/// layer 0's Q/K/V products are the normalized embeddings, computed the same way by both engines: their
/// sums must agree to float rounding, which pins down the tokens, the BOS, the chunking and the accumulation.
/// Deeper in, the two forward passes round differently (kernels, attention, KV cache precision) and the
/// difference grows through the layers; llama-imatrix differs from itself by as much between its own settings
/// (flash attention on/off: per-matrix L1 1.6%, single columns 27%; F16/F32 KV cache: 2.3%, 52%), so the bounds
/// sit above that noise, not at a rounding level. Ours measured: layer 0 inputs 1.6e-6, per-matrix L1 2.4%,
/// median column 0.43%, single columns 28%.
const LAYER0_REL: f64 = 1e-5;
const MATRIX_L1: f64 = 0.05;
const MEDIAN_COLUMN: f64 = 0.01;
const ANY_COLUMN: f64 = 0.6;

#[test]
fn lighthouses_matrix_matches_llama_imatrix() {
    let m = default_model();
    let text = TEXT.strip_suffix('\n').unwrap_or(TEXT);
    let tokens = m.tokenizer.encode(text, m.tokenizer.add_bos(), false);
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.add_bos());
    // llama-imatrix's default batch of 2048 tokens runs 16 chunks of 128 side by side
    let plan = ChunkPlan::new(tokens.len(), 128, None, 2048 / 128).expect("plan");
    assert_eq!(plan.n_chunks, 5);

    let mut collector = Collector::new(false);
    let mut nll = NllStats::default();
    let mut seen = Vec::new();
    imatrix::run(
        &m.model,
        &m.pool,
        &tokens,
        bos,
        &plan,
        &mut collector,
        Some(&mut nll),
        &mut |chunk, c, _| seen.push((chunk, c.max_tokens())),
        None,
    )
    .expect("imatrix run");
    assert_eq!(seen, (0..5).map(|c| (c, 640)).collect::<Vec<_>>(), "one group of 5 chunks");
    let ours = collector.to_imatrix(vec![DATASET.to_string()], plan.n_ctx);
    let llama = Imatrix::open(LLAMA).expect("llama-imatrix's file");

    assert_eq!((ours.datasets.clone(), ours.chunk_count, ours.chunk_size), (llama.datasets.clone(), 5, 128));
    assert_eq!(ours.entries.keys().collect::<Vec<_>>(), llama.entries.keys().collect::<Vec<_>>());
    let (mut worst_l1, mut worst_col, mut medians) = ((0.0f64, String::new()), (0.0f64, String::new()), vec![]);
    for (name, e) in &ours.entries {
        let l = &llama.entries[name];
        assert_eq!(e.counts, l.counts, "{name}");
        assert_eq!(e.sums.len(), l.sums.len(), "{name}");
        let pairs = || e.sums.iter().zip(&l.sums).map(|(&a, &b)| (f64::from(a), f64::from(b)));
        let mut rel: Vec<f64> = pairs().map(|(a, b)| (a - b).abs() / b.abs().max(1e-6)).collect();
        rel.sort_by(f64::total_cmp);
        let l1 = pairs().map(|(a, b)| (a - b).abs()).sum::<f64>() / pairs().map(|(_, b)| b.abs()).sum::<f64>();
        let max = rel.last().copied().unwrap_or(0.0);
        if ["blk.0.attn_q.", "blk.0.attn_k.", "blk.0.attn_v."].iter().any(|p| name.starts_with(p)) {
            assert!(max < LAYER0_REL, "{name}: the same inputs, yet {max:.2e} apart");
        }
        medians.push(rel[rel.len() / 2]);
        if l1 > worst_l1.0 {
            worst_l1 = (l1, name.clone());
        }
        if max > worst_col.0 {
            worst_col = (max, name.clone());
        }
    }
    medians.sort_by(f64::total_cmp);
    let median = medians[medians.len() / 2];
    eprintln!(
        "difference from llama-imatrix: per-matrix L1 up to {:.2e} ({}), median column {median:.2e}, single \
         columns up to {:.2e} ({})",
        worst_l1.0, worst_l1.1, worst_col.0, worst_col.1
    );
    assert!(worst_l1.0 < MATRIX_L1, "{} differs from llama-imatrix by {:.3e} (L1)", worst_l1.1, worst_l1.0);
    assert!(median < MEDIAN_COLUMN, "median column difference {median:.3e}");
    assert!(worst_col.0 < ANY_COLUMN, "{}: a column {:.3e} apart", worst_col.1, worst_col.0);
    if let Ok(path) = std::env::var("IMATRIX_DUMP") {
        ours.write_file(&path, gemma_io::imatrix::ImatrixFormat::Gguf).expect("dump");
    }
    // the file itself has llama-imatrix's layout: same size, same metadata, and it reads back
    let bytes = ours.to_gguf().expect("writer").into_bytes();
    assert_eq!(bytes.len() as u64, std::fs::metadata(LLAMA).expect("size").len());
    let back = Imatrix::from_bytes(bytes, "ours.gguf").expect("reads back");
    assert!(back.has_metadata);
    assert_eq!(back, ours);

    // the perplexity printed along the way is gemma perplexity's
    let mut ppl = NllStats::default();
    perplexity::run(
        &m.model,
        &m.pool,
        &tokens,
        bos,
        &plan,
        Scoring::Perplexity { stats: &mut ppl, save: None },
        &mut |_, _| {},
        None,
    )
    .expect("perplexity");
    assert_eq!(nll.count, ppl.count);
    assert!((nll.perplexity() - ppl.perplexity()).abs() < 1e-6 * ppl.perplexity(), "{nll:?} vs {ppl:?}");
}
