//! `dot_rows` of the 32-element block formats (Q8_0, Q5_0, Q4_0 with Q8_0 activations; Q4_1, Q5_1 with Q8_1),
//! at the shapes Gemma 3 270M runs them, the Q8_0 activation quantizer, and the machine's read bandwidth.
//!
//! - decode: one token against a matrix. `model` shapes (2048 x 640, about 0.9-1.4 MB) stay in cache between
//!   iterations, so they show compute speed; `output` is the tied Q8_0 output matrix (262,144 x 640, 178 MB),
//!   which does not fit any cache, so it shows how close the kernel gets to memory bandwidth. Throughput: weight
//!   bytes.
//! - prefill: a 64-row slab against 256 tokens (what one matmul task sees). Throughput: multiply-adds.
//! - interleaved: the same products with 16 rows repacked together, at 1, 8, 48 and 256 tokens, beside the GGML
//!   layout.
//! - `read_bandwidth`: summing the 178 MB buffer as u64 words, one thread: the ceiling the `output` figure is
//!   measured against.
//!
//! Run with `cargo bench -p gemma-compression --bench legacy`; `GEMMA_SIMD=avx2|scalar` lowers the SIMD level.
//! Single-threaded throughout (the kernels are; matmul spreads slabs over threads).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gemma_compression::interleaved::{InterleavedActs, InterleavedRows};
use gemma_compression::{quant_format, simd_level, GgmlType};

mod common;
use common::Rng;

/// Random weight rows: random quant bytes with small finite f16 scales (and offsets for Q4_1/Q5_1). Speed does
/// not depend on the values, and encoding 178 MB with the reference quantizer would take too long.
fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, n: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..rows * ty.row_bytes(n).unwrap()).map(|_| rng.next() as u8).collect();
    let halves = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => 2,
        _ => 1,
    };
    for b in w.chunks_exact_mut(ty.type_size()) {
        for h in 0..halves {
            let d = half::f16::from_f32(rng.uniform() * 0.01);
            b[2 * h..2 * h + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        }
    }
    w
}

fn activations(rng: &mut Rng, ty: GgmlType, n: usize, tokens: usize) -> Vec<u8> {
    let x: Vec<f32> = (0..n * tokens).map(|_| rng.uniform()).collect();
    let f = quant_format(ty).unwrap();
    let rb = ty.row_bytes(n).unwrap();
    let mut a = vec![0u8; rb * tokens];
    for (src, dst) in x.chunks_exact(n).zip(a.chunks_exact_mut(rb)) {
        f.quantize_row(src, dst).unwrap();
    }
    a
}

const TYPES: [GgmlType; 5] = [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_1];

fn bench_decode(c: &mut Criterion) {
    println!("simd level: {}", simd_level());
    let mut rng = Rng(42);
    let mut group = c.benchmark_group("legacy_decode");
    group.sample_size(20);
    let n = 640;
    for ty in TYPES {
        let rows = 2048;
        let f = quant_format(ty).unwrap();
        let w = weights(&mut rng, ty, rows, n);
        let a = activations(&mut rng, f.vec_dot_type(), n, 1);
        let mut out = vec![0f32; rows];
        group.throughput(Throughput::Bytes(w.len() as u64));
        group.bench_function(format!("model_{ty}_{rows}x{n}"), |b| {
            b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), 1, &mut out))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("legacy_output");
    group.sample_size(10);
    let rows = 262_144;
    let ty = GgmlType::Q8_0;
    let f = quant_format(ty).unwrap();
    let w = weights(&mut rng, ty, rows, n);
    let a = activations(&mut rng, ty, n, 1);
    let mut out = vec![0f32; rows];
    group.throughput(Throughput::Bytes(w.len() as u64));
    group.bench_function(format!("output_{ty}_{rows}x{n}"), |b| {
        b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), 1, &mut out))
    });
    group.bench_function("read_bandwidth", |b| {
        b.iter(|| {
            w.chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .fold(0u64, |s, v| s.wrapping_add(v))
        })
    });
    group.finish();
}

fn bench_prefill(c: &mut Criterion) {
    let mut rng = Rng(7);
    let mut group = c.benchmark_group("legacy_prefill");
    group.sample_size(20);
    let (rows, tokens, n) = (64, 256, 640);
    for ty in TYPES {
        let f = quant_format(ty).unwrap();
        let w = weights(&mut rng, ty, rows, n);
        let a = activations(&mut rng, f.vec_dot_type(), n, tokens);
        let mut out = vec![0f32; rows * tokens];
        group.throughput(Throughput::Elements((rows * tokens * n) as u64));
        group.bench_function(format!("{ty}_{rows}x{n}_x{tokens}"), |b| {
            b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), tokens, &mut out))
        });
    }
    group.finish();
}

/// The same products with the rows repacked 16 at a time (`interleaved`), against the GGML layout: one token
/// (decode), 8 (a server's batched step), 48 (a short prompt) and 256 (a longer prefill), 256 rows of
/// 640 (Gemma 3 270M's width), every format that is repacked. Throughput: multiply-adds.
fn bench_interleaved(c: &mut Criterion) {
    let mut rng = Rng(11);
    let mut group = c.benchmark_group("interleaved");
    group.sample_size(20);
    let (rows, n) = (256, 640);
    for ty in TYPES {
        let f = quant_format(ty).unwrap();
        let w = weights(&mut rng, ty, rows, n);
        let repacked = InterleavedRows::repack(ty, rows, n, &w, &mut |_| {}).unwrap();
        for tokens in [1, 8, 48, 256] {
            let x: Vec<f32> = (0..n * tokens).map(|_| rng.uniform()).collect();
            let a = activations(&mut rng, f.vec_dot_type(), n, tokens);
            let mut out = vec![0f32; rows * tokens];
            group.throughput(Throughput::Elements((rows * tokens * n) as u64));
            group.bench_function(format!("ggml_{ty}_{rows}x{n}_x{tokens}"), |b| {
                b.iter(|| f.dot_rows(n, black_box(&w), rows, black_box(&a), tokens, &mut out))
            });
            let mut acts = InterleavedActs::default();
            acts.quantize(&x, n).unwrap();
            group.bench_function(format!("interleaved_{ty}_{rows}x{n}_x{tokens}"), |b| {
                b.iter(|| repacked.dot_groups(0..repacked.groups(), black_box(&acts), &mut out))
            });
        }
    }
    group.finish();
}

fn bench_quantize(c: &mut Criterion) {
    let mut rng = Rng(9);
    let mut group = c.benchmark_group("legacy_quantize");
    group.sample_size(20);
    for (n, tokens) in [(640, 1), (640, 256), (2048, 256)] {
        let x: Vec<f32> = (0..n * tokens).map(|_| rng.uniform()).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
            let f = quant_format(ty).unwrap();
            let rb = ty.row_bytes(n).unwrap();
            let mut a = vec![0u8; rb * tokens];
            group.throughput(Throughput::Elements((n * tokens) as u64));
            group.bench_function(format!("{ty}_{n}_x{tokens}"), |b| {
                b.iter(|| {
                    for (src, dst) in x.chunks_exact(n).zip(a.chunks_exact_mut(rb)) {
                        f.quantize_row(black_box(src), dst).unwrap();
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_prefill, bench_interleaved, bench_quantize);
criterion_main!(benches);
