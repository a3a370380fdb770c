//! Micro-benchmarks of the ops layer, next to the machine's measured read bandwidth:
//! - `read_bandwidth`: summing a 512 MiB buffer with the pool (the ceiling for decode, which streams weights);
//! - `matmul`: quantize + dot_rows through the pool at decode (1 token) and prefill (256 tokens) shapes;
//! - `attention`: one decode step over 1,024 cached positions.
//!
//! `cargo bench -p gemma-ops --bench ops`; criterion prints GB/s (bytes) or G elements/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gemma_compression::{quant_format, GgmlType};
use std::sync::atomic::{AtomicU64, Ordering};

use gemma_ops::{grouped_query_attention, matmul, AttnSpan, KvView, QMatrix, QuantizedActs, ThreadPool};

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn read_bandwidth(c: &mut Criterion) {
    let words = (512 << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut g = c.benchmark_group("read_bandwidth");
    g.throughput(Throughput::Bytes((words * 8) as u64));
    g.sample_size(10);
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads);
        g.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter(|| {
                let total = AtomicU64::new(0);
                pool.for_ranges(words, 1 << 16, &|r| {
                    let s: u64 = buf[r].iter().fold(0u64, |a, &x| a.wrapping_add(x));
                    total.fetch_add(s, Ordering::Relaxed);
                });
                std::hint::black_box(total.load(Ordering::Relaxed))
            })
        });
    }
    g.finish();
}

fn quantized(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let f = quant_format(ty).unwrap();
    let rb = ty.row_bytes(cols).unwrap();
    let w = pseudo_random(rows * cols, 3);
    let mut q = vec![0u8; rb * rows];
    for (src, dst) in w.chunks(cols).zip(q.chunks_mut(rb)) {
        f.quantize_row(src, dst).unwrap();
    }
    q
}

fn matmul_shapes(c: &mut Criterion) {
    let pool = ThreadPool::new(2);
    let mut g = c.benchmark_group("matmul_2threads");
    g.sample_size(10);
    // (type, rows, cols): the Gemma 3 270M output matrix and FFN matrices.
    for (ty, rows, cols) in [
        (GgmlType::Q8_0, 262_144, 640),
        (GgmlType::Q5_0, 2048, 640),
        (GgmlType::Q6K, 640, 2048),
        (GgmlType::Q4K, 640, 1024),
    ] {
        let data = quantized(ty, rows, cols);
        let w = QMatrix::new(&data, rows, cols, ty).unwrap();
        for n in [1usize, 256] {
            if rows * n > 4_000_000 {
                continue;
            }
            let x = pseudo_random(n * cols, 9);
            let mut out = vec![0f32; n * rows];
            let mut acts = QuantizedActs::default();
            if n == 1 {
                g.throughput(Throughput::Bytes(data.len() as u64));
            } else {
                g.throughput(Throughput::Elements((rows * cols * n) as u64));
            }
            g.bench_function(format!("{ty}_{rows}x{cols}_n{n}"), |b| {
                b.iter(|| matmul(&pool, &w, &x, &mut out, &mut acts).unwrap())
            });
        }
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let pool = ThreadPool::new(2);
    let (n_heads, hd, ctx) = (4, 256, 1024);
    let keys = pseudo_random(ctx * hd, 1);
    let values = pseudo_random(ctx * hd, 2);
    let q = pseudo_random(n_heads * hd, 3);
    let mut out = vec![0f32; n_heads * hd];
    let mut g = c.benchmark_group("attention");
    g.throughput(Throughput::Bytes((2 * ctx * hd * 4) as u64));
    g.bench_function("decode_4heads_ctx1024", |b| {
        b.iter(|| {
            let spans =
                [AttnSpan { kv: KvView { keys: &keys, values: &values, row_len: hd, ring: 0 }, positions: 0..ctx }];
            grouped_query_attention(&pool, &q, &spans, n_heads, 1, hd, &mut out);
        })
    });
    g.finish();
}

criterion_group!(benches, read_bandwidth, matmul_shapes, attention);
criterion_main!(benches);
