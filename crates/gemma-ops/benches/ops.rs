//! Micro-benchmarks of the ops layer, next to the machine's measured read bandwidth:
//! - `read_bandwidth`: summing a 512 MiB buffer with the pool (the ceiling for decode, which streams weights);
//! - `matmul`: quantize + dot_rows through the pool at decode (1 token) and prefill (256 tokens) shapes;
//! - `sbs_matmul`: SBS products (the BF16 output head and an SFP FFN matrix, gemma.cpp's formats) through
//!   `matmul_sbs`, which takes bf16 activations for them, next to the same rows dotted one at a time by the
//!   codecs' f32-activation kernels;
//! - `attention`: one decode step over 1,024 cached positions, a 256-token causal prefill, a 512-token one after
//!   4,096 cached positions, and EmbeddingGemma's 512-token bidirectional pass (3 heads on 1 KV head, windows
//!   of ±256 centred on each token);
//! - `pool_vs_rayon`: the same decode-shaped work (many small parallel regions, as a decode step runs about 250)
//!   and prefill-shaped work (few large regions) on our pool and on rayon, to keep the faster.
//!
//! `cargo bench -p gemma-ops --bench ops`; criterion prints GB/s (bytes) or G elements/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gemma_compression::{quant_format, GgmlType};
use std::sync::atomic::{AtomicU64, Ordering};

use gemma_compression::{sbs_codec, SbsCodecType};
use gemma_ops::matmul::{matmul_sbs, RowBlocks, SbsMatrix};
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

fn sbs_matmul(c: &mut Criterion) {
    let pool = ThreadPool::new(2);
    let mut g = c.benchmark_group("sbs_matmul_2threads");
    g.sample_size(10);
    for (ty, rows, cols) in [(SbsCodecType::Bf16, 262_144, 640), (SbsCodecType::Sfp, 2048, 640)] {
        let codec = sbs_codec(ty);
        // 64-byte aligned, as a blob of a mapped SBS file is
        let bytes = codec.packed_bytes(rows * cols);
        let mut backing = vec![0u8; bytes + 64];
        let skip = backing.as_ptr().align_offset(64);
        let stream = &mut backing[skip..skip + bytes];
        codec.encode(&pseudo_random(rows * cols, 5), stream, 0).unwrap();
        let stream = &*stream;
        let w = SbsMatrix::new(stream, ty, rows, rows, cols, RowBlocks::contiguous(0, rows), 1.0).unwrap();
        for n in [1usize, 256] {
            if rows * n > 4_000_000 {
                continue;
            }
            let x = pseudo_random(n * cols, 9);
            let mut out = vec![0f32; n * rows];
            if n == 1 {
                g.throughput(Throughput::Bytes(stream.len() as u64));
            } else {
                g.throughput(Throughput::Elements((rows * cols * n) as u64));
            }
            g.bench_function(format!("{ty}_{rows}x{cols}_n{n}"), |b| b.iter(|| matmul_sbs(&pool, &w, &x, &mut out)));
            if n == 1 {
                let shared = gemma_ops::SharedMut::new(&mut out);
                g.bench_function(format!("{ty}_{rows}x{cols}_n1_f32_dots"), |b| {
                    b.iter(|| {
                        pool.for_ranges(rows, 16, &|r| {
                            // SAFETY: tasks own disjoint row ranges of `out`.
                            let dst = unsafe { shared.slice(r.clone()) };
                            for (row, d) in r.zip(dst) {
                                *d = codec.dot(stream, row * cols, &x);
                            }
                        })
                    })
                });
            }
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
            let spans = [AttnSpan { kv: KvView::f32(&keys, &values, hd, 0), positions: 0..ctx }];
            grouped_query_attention(&pool, &q, &spans, n_heads, 1, hd, None, &mut out);
        })
    });
    let n = 256;
    let qp = pseudo_random(n * n_heads * hd, 4);
    let mut outp = vec![0f32; n * n_heads * hd];
    g.throughput(Throughput::Elements((n * (n + 1) / 2 * n_heads * hd * 2) as u64));
    g.bench_function("prefill_4heads_256_causal", |b| {
        b.iter(|| {
            let spans: Vec<AttnSpan> =
                (0..n).map(|i| AttnSpan { kv: KvView::f32(&keys, &values, hd, 0), positions: 0..i + 1 }).collect();
            grouped_query_attention(&pool, &qp, &spans, n_heads, 1, hd, None, &mut outp);
        })
    });
    // A 512-token causal prefill with 4,096 positions already cached (`gemma bench -p 512 -d 4096`'s global
    // layers): every key and value block is shared by all 512 tokens.
    let (depth, n) = (4096, 512);
    let kd = pseudo_random((depth + n) * hd, 8);
    let vd = pseudo_random((depth + n) * hd, 9);
    let qd = pseudo_random(n * n_heads * hd, 10);
    let mut outd = vec![0f32; n * n_heads * hd];
    g.throughput(Throughput::Elements(((depth * n + n * (n + 1) / 2) * n_heads * hd * 2) as u64));
    g.bench_function("prefill_4heads_512_at_depth4096", |b| {
        b.iter(|| {
            let spans: Vec<AttnSpan> =
                (0..n).map(|i| AttnSpan { kv: KvView::f32(&kd, &vd, hd, 0), positions: 0..depth + i + 1 }).collect();
            grouped_query_attention(&pool, &qd, &spans, n_heads, 1, hd, None, &mut outd);
        })
    });
    // EmbeddingGemma's bidirectional pass: 3 query heads on 1 KV head, each of 512 tokens sees a window
    // centred on it (±256, clipped to the sequence).
    let (n, heads3) = (512, 3);
    let ke = pseudo_random(n * hd, 5);
    let ve = pseudo_random(n * hd, 6);
    let qe = pseudo_random(n * heads3 * hd, 7);
    let mut oute = vec![0f32; n * heads3 * hd];
    let window = |i: usize| i.saturating_sub(256)..(i + 257).min(n);
    let pairs: usize = (0..n).map(|i| window(i).len()).sum();
    g.throughput(Throughput::Elements((pairs * heads3 * hd * 2) as u64));
    g.bench_function("embedding_3heads_512_window", |b| {
        b.iter(|| {
            let spans: Vec<AttnSpan> =
                (0..n).map(|i| AttnSpan { kv: KvView::f32(&ke, &ve, hd, 0), positions: window(i) }).collect();
            grouped_query_attention(&pool, &qe, &spans, heads3, 1, hd, None, &mut oute);
        })
    });
    g.finish();
}

/// One parallel region: `rows` weight rows of a Q8_0 matrix against `n` quantized tokens, split in `chunks` tasks,
/// on either scheduler.
fn pool_vs_rayon(c: &mut Criterion) {
    use rayon::prelude::*;
    let threads = 2;
    let pool = ThreadPool::new(threads);
    let rayon_pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let ty = GgmlType::Q8_0;
    let f = quant_format(ty).unwrap();
    let mut g = c.benchmark_group("pool_vs_rayon");
    g.sample_size(20);
    // Decode: 250 regions of a 640-row matrix (1 token) per step. Prefill: 4 regions of 2048 rows x 64 tokens.
    for (name, regions, rows, n) in [("decode_250x640", 250usize, 640usize, 1usize), ("prefill_4x2048x64", 4, 2048, 64)]
    {
        let cols = 640;
        let data = quantized(ty, rows, cols);
        let ab = f.vec_dot_type().row_bytes(cols).unwrap();
        let mut acts = QuantizedActs::default();
        acts.quantize(f.vec_dot_type(), &pseudo_random(n * cols, 5), cols).unwrap();
        let rb = ty.row_bytes(cols).unwrap();
        let chunk = rows.div_ceil(4 * threads).max(16);
        let task = |r: std::ops::Range<usize>, out: &mut [f32]| {
            f.dot_rows(cols, &data[r.start * rb..r.end * rb], r.len(), &acts.data[..n * ab], n, out);
        };
        g.throughput(Throughput::Elements((regions * rows * cols * n) as u64));
        g.bench_function(format!("pool_{name}"), |b| {
            b.iter(|| {
                for _ in 0..regions {
                    pool.for_ranges(rows, chunk, &|r| {
                        let mut out = [0f32; 64 * 512];
                        let len = r.len() * n;
                        task(r, &mut out[..len]);
                        std::hint::black_box(&out[0]);
                    });
                }
            })
        });
        g.bench_function(format!("rayon_{name}"), |b| {
            b.iter(|| {
                rayon_pool.install(|| {
                    for _ in 0..regions {
                        (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
                            let r = c * chunk..((c + 1) * chunk).min(rows);
                            let mut out = [0f32; 64 * 512];
                            let len = r.len() * n;
                            task(r, &mut out[..len]);
                            std::hint::black_box(&out[0]);
                        });
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, read_bandwidth, matmul_shapes, sbs_matmul, attention, pool_vs_rayon);
criterion_main!(benches);
