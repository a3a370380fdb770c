//! `dot_rows` of the k-quant weight formats with Q8_K activations, at the shapes Gemma 3 270M runs them, and the
//! Q8_K activation quantizer.
//!
//! - decode: one token against a matrix. `model` shapes (attn_output Q4_K 640 x 1024, ffn_down Q6_K 640 x 2048;
//!   Q2_K, Q3_K and Q5_K, which other quantizations of the model use, at 640 x 1024) stay in cache between
//!   iterations, so they show compute speed; `stream` shapes (about 20-60 MB) do not fit the L3, so they show
//!   how close the kernel gets to memory bandwidth. Throughput: weight bytes.
//! - prefill: a 64-row slab against 256 tokens (what one matmul task sees), every format. Throughput:
//!   multiply-adds (criterion's elem/s are MAC/s).
//! - interleaved: Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K and Q3_K (ffn_down's shape, as `llama-quantize ... IQ4_XS` makes it) with 16
//!   rows repacked together (`interleaved_k`, what the model loads them as), at 1, 8 and 256 tokens, beside the
//!   GGML layout's `dot_rows`. Throughput: multiply-adds.
//!
//! Run with `cargo bench -p gemma-compression --bench k_quants`; `GEMMA_SIMD=avx2|scalar` lowers the SIMD level.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gemma_compression::interleaved_k::InterleavedKRows;
use gemma_compression::{quant_format, simd_level, GgmlType};

mod common;
use common::Rng;

/// Random weight rows: random quant bytes, with the f16 super-scales set to small finite values (the kernels'
/// speed does not depend on the values, and quantizing tens of MB with the reference encoder takes too long).
fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, n: usize) -> Vec<u8> {
    let bs = ty.type_size();
    let mut w: Vec<u8> = (0..rows * ty.row_bytes(n).unwrap()).map(|_| rng.next() as u8).collect();
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::IQ4_XS => &[0],
        GgmlType::Q6K => &[208],
        GgmlType::Q3K => &[108],
        GgmlType::Q2K => &[80, 82],
        _ => &[],
    };
    for b in w.chunks_exact_mut(bs) {
        for &o in scale_offsets {
            let d = half::f16::from_f32(rng.uniform().abs() * 0.01);
            b[o..o + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        }
    }
    w
}

fn activations(rng: &mut Rng, n: usize, tokens: usize) -> Vec<u8> {
    let x: Vec<f32> = (0..n * tokens).map(|_| rng.uniform()).collect();
    let q8k = quant_format(GgmlType::Q8K).unwrap();
    let rb = GgmlType::Q8K.row_bytes(n).unwrap();
    let mut a = vec![0u8; rb * tokens];
    for (src, dst) in x.chunks_exact(n).zip(a.chunks_exact_mut(rb)) {
        q8k.quantize_row(src, dst).unwrap();
    }
    a
}

fn bench_dot_rows(c: &mut Criterion) {
    println!("simd level: {}", simd_level());
    let mut rng = Rng(42);
    let mut group = c.benchmark_group("k_quants");
    group.sample_size(20);
    let decode = [
        ("model", GgmlType::Q4K, 640, 1024),
        ("model", GgmlType::Q6K, 640, 2048),
        ("model", GgmlType::Q5K, 640, 1024),
        ("model", GgmlType::Q3K, 640, 1024),
        ("model", GgmlType::Q2K, 640, 1024),
        ("stream", GgmlType::Q4K, 65536, 1024),
        ("stream", GgmlType::Q6K, 65536, 1024),
        ("stream", GgmlType::Q5K, 65536, 1024),
        ("stream", GgmlType::Q3K, 65536, 1024),
        ("stream", GgmlType::Q2K, 65536, 1024),
    ];
    for (name, ty, rows, n) in decode {
        let f = quant_format(ty).unwrap();
        let w = weights(&mut rng, ty, rows, n);
        let a = activations(&mut rng, n, 1);
        let mut out = vec![0f32; rows];
        group.throughput(Throughput::Bytes(w.len() as u64));
        group.bench_function(format!("decode_{name}_{ty}_{rows}x{n}"), |b| {
            b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), 1, &mut out))
        });
    }
    let prefill = [
        (GgmlType::Q4K, 1024),
        (GgmlType::Q6K, 2048),
        (GgmlType::Q5K, 1024),
        (GgmlType::Q3K, 1024),
        (GgmlType::Q2K, 1024),
    ];
    for (ty, n) in prefill {
        let (rows, tokens) = (64, 256);
        let f = quant_format(ty).unwrap();
        let w = weights(&mut rng, ty, rows, n);
        let a = activations(&mut rng, n, tokens);
        let mut out = vec![0f32; rows * tokens];
        group.throughput(Throughput::Elements((rows * tokens * n) as u64));
        group.bench_function(format!("prefill_{ty}_{rows}x{n}x{tokens}t"), |b| {
            b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), tokens, &mut out))
        });
    }
    // the activation quantizer: ffn_down's input for 64 tokens
    let (n, tokens) = (2048, 64);
    let x: Vec<f32> = (0..n * tokens).map(|_| rng.uniform()).collect();
    let rb = GgmlType::Q8K.row_bytes(n).unwrap();
    let mut a = vec![0u8; rb * tokens];
    let q8k = quant_format(GgmlType::Q8K).unwrap();
    group.throughput(Throughput::Elements((n * tokens) as u64));
    group.bench_function(format!("quantize_q8_k_{n}x{tokens}t"), |b| {
        b.iter(|| {
            for (src, dst) in black_box(&x).chunks_exact(n).zip(a.chunks_exact_mut(rb)) {
                q8k.quantize_row(src, dst).unwrap();
            }
        })
    });
    group.finish();
}

/// The model's Q4_K, Q5_K, Q6_K, IQ4_XS, Q2_K and Q3_K shapes repacked 16 rows at a time, against the GGML layout: one token (decode), 8
/// (a server's batched step) and 256 (prefill).
fn bench_interleaved(c: &mut Criterion) {
    let mut rng = Rng(13);
    let mut group = c.benchmark_group("interleaved_k");
    group.sample_size(20);
    for (ty, rows, n) in [
        (GgmlType::Q4K, 640, 1024),
        (GgmlType::Q6K, 640, 2048),
        (GgmlType::IQ4_XS, 640, 2048),
        (GgmlType::Q2K, 640, 2048),
        (GgmlType::Q3K, 640, 2048),
        (GgmlType::Q5K, 640, 2048),
    ] {
        let f = quant_format(ty).unwrap();
        let w = weights(&mut rng, ty, rows, n);
        let repacked = InterleavedKRows::repack(ty, rows, n, &w, &mut |_| {}).unwrap();
        for tokens in [1, 8, 256] {
            let a = activations(&mut rng, n, tokens);
            let mut out = vec![0f32; rows * tokens];
            group.throughput(Throughput::Elements((rows * tokens * n) as u64));
            group.bench_function(format!("ggml_{ty}_{rows}x{n}_x{tokens}"), |b| {
                b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), tokens, &mut out))
            });
            group.bench_function(format!("interleaved_{ty}_{rows}x{n}_x{tokens}"), |b| {
                b.iter(|| repacked.dot_groups(0..repacked.groups(), black_box(&a), &mut out))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_dot_rows, bench_interleaved);
criterion_main!(benches);
