//! Float formats (F32, F16, BF16 weights with f32 activations) at EmbeddingGemma's shapes: a 64-row slab of
//! its 768-wide matrices against 1 token (decode-like) and 48 tokens (one token group of a long input).
//! Throughput: multiply-adds.
//!
//! `panels_*`: the rows repacked in panels of 16 ([`FloatPanels`]), as the model loads its matrices; the others:
//! the row-major `dot_rows`, what a float matrix kept in the file's layout (a tied output head) goes through.
//!
//! Run with `cargo bench -p gemma-compression --bench float`; `GEMMA_SIMD=avx2|scalar` lowers the SIMD level.
//! Single-threaded (matmul spreads slabs over threads).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gemma_compression::float_panels::FloatPanels;
use gemma_compression::{quant_format, simd_level, GgmlType};

mod common;
use common::Rng;

fn bench_float(c: &mut Criterion) {
    println!("simd level: {}", simd_level());
    let mut rng = Rng(5);
    let mut group = c.benchmark_group("float_dot_rows");
    group.sample_size(20);
    let (rows, n) = (64, 768);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let f = quant_format(ty).unwrap();
        let values: Vec<f32> = (0..rows * n).map(|_| rng.uniform() - 0.5).collect();
        let mut w = vec![0u8; rows * ty.row_bytes(n).unwrap()];
        for (src, dst) in values.chunks_exact(n).zip(w.chunks_exact_mut(ty.row_bytes(n).unwrap())) {
            f.quantize_row(src, dst).unwrap();
        }
        for tokens in [1, 48] {
            let acts: Vec<u8> = (0..n * tokens).flat_map(|_| (rng.uniform() - 0.5).to_le_bytes()).collect();
            let mut out = vec![0f32; rows * tokens];
            group.throughput(Throughput::Elements((rows * tokens * n) as u64));
            group.bench_function(format!("{ty}_{rows}x{n}_x{tokens}"), |b| {
                b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&acts), tokens, &mut out))
            });
            // The same rows repacked in panels (what the model loads float matrices as).
            let panels = FloatPanels::repack(ty, rows, n, &w, &mut |_| {}).unwrap();
            let x: Vec<f32> = acts.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            group.bench_function(format!("panels_{ty}_{rows}x{n}_x{tokens}"), |b| {
                b.iter(|| panels.dot_panels(0..panels.panels(), black_box(&x), tokens, &mut out))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_float);
criterion_main!(benches);
