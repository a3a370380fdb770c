//! Benchmarks: `gemma bench` (llama-bench's pp/tg tests) and the user guide's `gemma --bench`.

use std::time::Instant;

use anyhow::{Context, Result};
use gemma_core::generate::PREFILL_CHUNK;
use gemma_core::{Batch, BatchToken, KvCache, Model, Scratch, Session};
use gemma_ops::ThreadPool;
use serde_json::{json, Value};

use crate::args::{BenchArgs, Cli};
use crate::commands::{read_prompt, usage, Common};

/// Summary of repeated measurements.
struct Stats {
    mean: f64,
    sd: f64,
    p50: f64,
    p90: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let n = samples.len().max(1) as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
        Stats { mean, sd: var.sqrt(), p50: pct(0.5), p90: pct(0.9) }
    }

    fn json(&self) -> Value {
        json!({ "mean": self.mean, "sd": self.sd, "p50": self.p50, "p90": self.p90 })
    }
}

/// CPU model, SIMD level and features, for every report.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => { $( if is_x86_feature_detected!($f) { features.push($f); } )* };
        }
        detect!("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni");
    }
    json!({
        "device": "cpu",
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "simd": gemma_compression::simd_level().to_string(),
        "features": features,
    })
}

/// Highest resident set size of this process so far, in bytes (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Deterministic stand-in tokens (llama-bench times random tokens too).
fn bench_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (1000 + s % (vocab as u64 - 1000)) as u32
        })
        .collect()
}

fn prefill(model: &Model, cache: &mut KvCache, ids: &[u32], pool: &ThreadPool) -> Result<()> {
    for chunk in ids.chunks(PREFILL_CHUNK) {
        let batch = Batch::sequence(chunk, cache.len(), 0, false);
        model.forward(&batch, std::slice::from_mut(cache), pool)?;
    }
    Ok(())
}

/// One timed run of test `pp` (prompt processing of `n` tokens), `tg` (`n` steps of one token for each of
/// `seqs` sequences decoded together, as a server batches its streams), after `depth` untimed tokens, or `embd`
/// (embeddings of `seqs` inputs of `n` tokens, run together).
/// Returns (tokens/s over all sequences, seconds).
fn run_test(
    model: &Model,
    pool: &ThreadPool,
    kind: &str,
    n: usize,
    depth: usize,
    seqs: usize,
    rep: u64,
) -> Result<(f64, f64)> {
    let vocab = model.config.vocab_size;
    let mut caches: Vec<KvCache> = (0..seqs).map(|_| model.new_cache(depth + n + 1)).collect();
    if depth > 0 {
        for (s, cache) in caches.iter_mut().enumerate() {
            prefill(model, cache, &bench_tokens(depth, vocab, 7 + rep + 100 * s as u64), pool)?;
        }
    }
    let ids: Vec<Vec<u32>> = (0..seqs).map(|s| bench_tokens(n, vocab, 1000 + rep + 100 * s as u64)).collect();
    let mut scratch = Scratch::default();
    let t0 = Instant::now();
    if kind == "embd" {
        let inputs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        model.embed(&inputs, pool)?;
    } else if kind == "pp" {
        prefill(model, &mut caches[0], &ids[0], pool)?;
    } else {
        for step in 0..n {
            let mut batch = Batch::default();
            for (s, (cache, seq_ids)) in caches.iter().zip(&ids).enumerate() {
                batch.push(BatchToken { token: seq_ids[step], pos: cache.len(), seq: s, logits: true });
            }
            model.forward_with(&batch, &mut caches, pool, &mut scratch)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(((n * if kind == "pp" { 1 } else { seqs }) as f64 / secs, secs))
}

pub fn bench(common: &Common, args: &BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        return Err(usage("-r must be at least 1"));
    }
    let path = common.model_path()?;
    let t0 = Instant::now();
    let model = common.open_model(&path)?;
    let load_secs = t0.elapsed().as_secs_f64();
    let threads = if args.thread_counts.is_empty() { vec![common.threads()?] } else { args.thread_counts.clone() };
    if threads.contains(&0) {
        return Err(usage("thread counts must be at least 1"));
    }
    if args.sequences.contains(&0) {
        return Err(usage("sequence counts must be at least 1"));
    }
    let ctx = model.config.context_length;
    if model.is_embedding_model() && args.depth > 0 {
        return Err(usage("an embedding model reads whole inputs: -d (depth) does not apply"));
    }
    let longest = args.n_prompt.iter().chain(&args.n_gen).max().copied().unwrap_or(0);
    if args.depth + longest + 1 > ctx {
        return Err(usage(format!("depth {} + {longest} tokens exceed the model's context of {ctx}", args.depth)));
    }
    let name = path.file_name().map_or("model".into(), |n| n.to_string_lossy().to_string());
    outln!("model: {name} (loaded in {:.0} ms)   commit: {}", load_secs * 1e3, env!("GEMMA_COMMIT"))?;
    outln!("| threads | test | t/s (mean ± sd) | p50 | p90 | ttft ms |")?;
    outln!("|---|---|---|---|---|---|")?;
    let mut results = Vec::new();
    for &t in &threads {
        let pool = crate::commands::thread_pool(t)?;
        // An embedding model only reads: `embd{n}` embeds inputs of n tokens (`-s`: that many at once).
        let tests: Vec<(&str, usize, usize)> = if model.is_embedding_model() {
            args.n_prompt.iter().flat_map(|&n| args.sequences.iter().map(move |&seqs| ("embd", n, seqs))).collect()
        } else {
            args.n_prompt
                .iter()
                .map(|&n| ("pp", n, 1))
                .chain(args.n_gen.iter().flat_map(|&n| args.sequences.iter().map(move |&seqs| ("tg", n, seqs))))
                .collect()
        };
        for (kind, n, seqs) in tests.into_iter().filter(|&(_, n, _)| n > 0) {
            run_test(&model, &pool, kind, n, args.depth, seqs, 0)?; // warm-up
            let mut rates = Vec::new();
            let mut secs = Vec::new();
            for rep in 0..args.repetitions {
                let (r, s) = run_test(&model, &pool, kind, n, args.depth, seqs, rep as u64 + 1)?;
                rates.push(r);
                secs.push(s);
            }
            let st = Stats::of(&rates);
            let ttft = (kind != "tg").then(|| Stats::of(&secs).mean * 1e3);
            let mut test = if args.depth > 0 { format!("{kind}{n} @ d{}", args.depth) } else { format!("{kind}{n}") };
            if seqs > 1 {
                test = format!("{test} x{seqs}");
            }
            outln!(
                "| {t} | {test} | {:.2} ± {:.2} | {:.2} | {:.2} | {} |",
                st.mean,
                st.sd,
                st.p50,
                st.p90,
                ttft.map_or("-".into(), |v| format!("{v:.1}"))
            )?;
            results.push(json!({
                "threads": t, "test": test, "kind": kind, "n": n, "depth": args.depth, "sequences": seqs,
                "tokens_per_second": st.json(), "samples": rates, "ttft_ms": ttft,
            }));
        }
    }
    let rss = peak_rss_bytes();
    outln!("peak RSS: {}", rss.map_or("unknown".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)))?;
    if let Some(file) = &args.json {
        let report = json!({
            "model": path.display().to_string(), "commit": env!("GEMMA_COMMIT"), "machine": machine(),
            "load_ms": load_secs * 1e3, "peak_rss_bytes": rss, "repetitions": args.repetitions, "results": results,
        });
        std::fs::write(file, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

/// The user guide's `gemma --bench --prompt P --max-tokens N [--bench-warmup W] [--bench-iters I] [--bench-json F]`.
pub fn guide_bench(common: &Common, cli: &Cli) -> Result<()> {
    let args = &cli.generate;
    let prompt = read_prompt(args)?;
    if cli.bench_iters == 0 {
        return Err(usage("--bench-iters must be at least 1"));
    }
    let path = common.model_path()?;
    let t0 = Instant::now();
    let model = common.open_model(&path)?;
    let tokenizer = model.tokenizer()?;
    let load_secs = t0.elapsed().as_secs_f64();
    let threads = common.threads()?;
    let pool = crate::commands::thread_pool(threads)?;
    let ids = tokenizer.encode(&prompt, tokenizer.add_bos(), true);
    let mut opts = crate::commands::generation_options(&args.sampling)?;
    crate::commands::fit_options_to_model(&mut opts, &args.sampling, &tokenizer)?;
    // Timed runs must all generate the same text.
    opts.sampling.seed = opts.sampling.seed.or(Some(0));
    let (mut decode, mut prefill, mut generated) = (Vec::new(), Vec::new(), 0);
    for i in 0..cli.bench_warmup + cli.bench_iters {
        let mut session = Session::new(&model, common.ctx.unwrap_or(model.config.context_length));
        let out = session.generate(&tokenizer, &ids, &opts, &pool, &mut |_| {})?;
        if i >= cli.bench_warmup {
            decode.push(out.decode_tok_s());
            prefill.push(out.prefill_tok_s());
            generated = out.gen_ids.len();
        }
    }
    let (d, p) = (Stats::of(&decode), Stats::of(&prefill));
    outln!(
        "device: cpu ({}), simd: {}, threads: {threads}",
        machine()["cpu_model"].as_str().unwrap_or("?"),
        gemma_compression::simd_level()
    )?;
    outln!("prompt: {} tokens, generated: {generated} tokens, iterations: {}", ids.len(), cli.bench_iters)?;
    outln!("decode:  mean {:.2} tok/s  p50 {:.2}  p90 {:.2}", d.mean, d.p50, d.p90)?;
    outln!("prefill: mean {:.2} tok/s  p50 {:.2}  p90 {:.2}", p.mean, p.p50, p.p90)?;
    if let Some(file) = &cli.bench_json {
        let report = json!({
            "device": machine(), "threads": threads, "model": path.display().to_string(), "commit": env!("GEMMA_COMMIT"),
            "prompt_tokens": ids.len(), "generated_tokens": generated, "warmup": cli.bench_warmup, "iters": cli.bench_iters,
            "load_ms": load_secs * 1e3, "decode_tok_s": d.json(), "prefill_tok_s": p.json(),
            "tok_s": d.json(), "peak_rss_bytes": peak_rss_bytes(),
        });
        std::fs::write(file, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}
