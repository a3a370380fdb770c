//! Dot products of gemma.cpp's SBS formats (F32, BF16, SFP, NUQ, I8) with f32 activations, through
//! `SbsCodec::dot_rows`, at Gemma 3 270M's shapes. Throughput is weight bytes (GB/s of the stream read).
//!
//! - decode: one token against a 2048 x 640 matrix (cache-resident: compute speed).
//! - output: one token against a 262,144 x 640 matrix (the tied embedding; does not fit any cache).
//! - prefill: 64 rows against 32 tokens (rows are decoded once, then dotted with the tokens two rows at a time).
//! - encode: NUQ's clustering and SFP/I8 encoding of one 2048 x 640 matrix (elements per second).
//!
//! Run with `cargo bench -p gemma-compression --bench sbs_codecs`; `GEMMA_SIMD=scalar` runs the scalar twins.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gemma_compression::{sbs_codec, scale_weights, simd_level, SbsCodecType};

mod common;
use common::Rng;

/// Weight-shaped values (sums of uniforms, a few large ones) scaled into SFP's range as gemma.cpp scales them.
fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n)
        .map(|i| {
            let v = (rng.uniform() + rng.uniform() + rng.uniform()) * 0.05;
            if i % 997 == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect();
    scale_weights(&mut x);
    x
}

fn encoded(ty: SbsCodecType, x: &[f32]) -> Vec<u8> {
    let codec = sbs_codec(ty);
    let mut packed = vec![0u8; codec.packed_bytes(x.len())];
    codec.encode(x, &mut packed, 0).unwrap();
    packed
}

fn bench_dots(c: &mut Criterion) {
    println!("simd level: {}", simd_level());
    let mut rng = Rng(42);
    let n = 640;
    let rows = 2048;
    let x = weights(&mut rng, rows * n);
    let act: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let mut group = c.benchmark_group("sbs_decode");
    group.sample_size(20);
    for ty in SbsCodecType::ALL {
        let codec = sbs_codec(ty);
        let packed = encoded(ty, &x);
        let mut out = vec![0f32; rows];
        group.throughput(Throughput::Bytes(packed.len() as u64));
        group.bench_function(format!("{ty}_{rows}x{n}"), |b| {
            b.iter(|| codec.dot_rows(n, black_box(&packed), 0, rows, black_box(&act), 1, &mut out))
        });
    }
    group.finish();

    // The big matrix: encoding 168M values with NUQ's clustering would take minutes, so it is built by
    // repeating one encoded 2048-row slab (row starts stay group-aligned as 2048 * 640 is a multiple of 256).
    let mut group = c.benchmark_group("sbs_output");
    group.sample_size(10);
    let big_rows = 262_144;
    for ty in [SbsCodecType::Bf16, SbsCodecType::Sfp, SbsCodecType::Nuq, SbsCodecType::I8] {
        let codec = sbs_codec(ty);
        let slab = encoded(ty, &x);
        let packed: Vec<u8> = slab.iter().copied().cycle().take(slab.len() * (big_rows / rows)).collect();
        let mut out = vec![0f32; big_rows];
        group.throughput(Throughput::Bytes(packed.len() as u64));
        group.bench_function(format!("{ty}_{big_rows}x{n}"), |b| {
            b.iter(|| codec.dot_rows(n, black_box(&packed), 0, big_rows, black_box(&act), 1, &mut out))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("sbs_prefill");
    group.sample_size(20);
    let (slab_rows, tokens) = (64, 32);
    let acts: Vec<f32> = (0..n * tokens).map(|_| rng.uniform()).collect();
    for ty in SbsCodecType::ALL {
        let codec = sbs_codec(ty);
        let packed = encoded(ty, &x[..slab_rows * n]);
        let mut out = vec![0f32; slab_rows * tokens];
        group.throughput(Throughput::Elements((slab_rows * tokens * n) as u64));
        group.bench_function(format!("{ty}_{slab_rows}x{n}_x{tokens}"), |b| {
            b.iter(|| codec.dot_rows(n, black_box(&packed), 0, slab_rows, black_box(&acts), tokens, &mut out))
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut rng = Rng(7);
    let x = weights(&mut rng, 64 * 640);
    let mut group = c.benchmark_group("sbs_encode");
    group.sample_size(10);
    group.throughput(Throughput::Elements(x.len() as u64));
    for ty in [SbsCodecType::Sfp, SbsCodecType::Nuq, SbsCodecType::I8] {
        let codec = sbs_codec(ty);
        let mut packed = vec![0u8; codec.packed_bytes(x.len())];
        group.bench_function(format!("{ty}_64x640"), |b| {
            b.iter(|| codec.encode(black_box(&x), &mut packed, 0).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_dots, bench_encode);
criterion_main!(benches);
