//! Benchmarks: `gemma bench` (llama-bench's pp/tg tests) and the user guide's `gemma --bench`.

use std::time::Instant;

use anyhow::{Context, Result};
use gemma_core::generate::PREFILL_CHUNK;
use gemma_core::kv_cache::MAX_UBATCH;
use gemma_core::quantize::FileType;
use gemma_core::{Batch, BatchToken, KvCache, KvType, Model, Scratch, Session};
use gemma_io::MetaValue;
use gemma_ops::ThreadPool;
use serde_json::{json, Value};

use crate::args::{BenchArgs, BenchOutput, Cli};
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

/// One of llama-bench's tests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    /// A prompt of n tokens in one go.
    Prompt(usize),
    /// n steps of one token for each of `seqs` sequences decoded together, as a server batches its streams.
    Gen { n: usize, seqs: usize },
    /// A prompt of `pp` tokens, then `tg` steps of one token, timed together (`-pg`).
    PromptGen { pp: usize, tg: usize },
    /// Embeddings of `seqs` inputs of n tokens, run together (an embedding model's only test).
    Embed { n: usize, seqs: usize },
}

impl Test {
    /// (prompt tokens, generated tokens), as llama-bench's `n_prompt` and `n_gen`.
    fn counts(self) -> (usize, usize) {
        match self {
            Test::Prompt(n) | Test::Embed { n, .. } => (n, 0),
            Test::Gen { n, .. } => (0, n),
            Test::PromptGen { pp, tg } => (pp, tg),
        }
    }

    fn sequences(self) -> usize {
        match self {
            Test::Gen { seqs, .. } | Test::Embed { seqs, .. } => seqs,
            _ => 1,
        }
    }

    /// Tokens the timed run processes, over all sequences.
    fn tokens(self) -> usize {
        match self {
            Test::Prompt(n) => n,
            Test::Gen { n, seqs } | Test::Embed { n, seqs } => n * seqs,
            Test::PromptGen { pp, tg } => pp + tg,
        }
    }

    /// llama-bench's name for it (`pp512`, `tg128`, `pp512+tg128`, `... @ d4096`), and ` xN` for N sequences.
    fn name(self, depth: usize) -> String {
        let mut name = match self {
            Test::Prompt(n) => format!("pp{n}"),
            Test::Gen { n, .. } => format!("tg{n}"),
            Test::PromptGen { pp, tg } => format!("pp{pp}+tg{tg}"),
            Test::Embed { n, .. } => format!("embd{n}"),
        };
        if depth > 0 {
            name = format!("{name} @ d{depth}");
        }
        if self.sequences() > 1 {
            name = format!("{name} x{}", self.sequences());
        }
        name
    }

    fn kind(self) -> &'static str {
        match self {
            Test::Prompt(_) => "pp",
            Test::Gen { .. } => "tg",
            Test::PromptGen { .. } => "pg",
            Test::Embed { .. } => "embd",
        }
    }
}

/// One timed run of `test` after `depth` untimed tokens. Returns (tokens/s over all sequences, seconds, bytes
/// the KV caches hold at the end).
fn run_test(model: &Model, pool: &ThreadPool, test: Test, depth: usize, rep: u64) -> Result<(f64, f64, usize)> {
    let vocab = model.config.vocab_size;
    let seqs = test.sequences();
    let (n_prompt, n_gen) = test.counts();
    let mut caches: Vec<KvCache> = (0..seqs).map(|_| model.new_cache(depth + n_prompt + n_gen + 1)).collect();
    if depth > 0 {
        for (s, cache) in caches.iter_mut().enumerate() {
            prefill(model, cache, &bench_tokens(depth, vocab, 7 + rep + 100 * s as u64), pool)?;
        }
    }
    let ids: Vec<Vec<u32>> =
        (0..seqs).map(|s| bench_tokens(n_prompt + n_gen, vocab, 1000 + rep + 100 * s as u64)).collect();
    let mut scratch = Scratch::default();
    let t0 = Instant::now();
    if let Test::Embed { .. } = test {
        let inputs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        model.embed(&inputs, pool)?;
    } else {
        prefill(model, &mut caches[0], &ids[0][..n_prompt], pool)?;
        for step in n_prompt..n_prompt + n_gen {
            let mut batch = Batch::default();
            for (s, (cache, seq_ids)) in caches.iter().zip(&ids).enumerate() {
                batch.push(BatchToken { token: seq_ids[step], pos: cache.len(), seq: s, logits: true });
            }
            model.forward_with(&batch, &mut caches, pool, &mut scratch)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((test.tokens() as f64 / secs, secs, caches.iter().map(KvCache::bytes).sum()))
}

/// What llama-bench's outputs say about the machine and the model: the CPU, the file name as given, its type,
/// size in bytes and parameters.
struct ModelFacts {
    cpu_info: Value,
    filename: String,
    kind: String,
    size: u64,
    params: u64,
}

impl ModelFacts {
    fn of(model: &Model, path: &std::path::Path) -> ModelFacts {
        let file = &model.file;
        let arch = file.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("unknown");
        let file_type = file
            .get("general.file_type")
            .and_then(MetaValue::as_u64)
            .and_then(|id| FileType::ALL.iter().find(|t| u64::from(t.id()) == id))
            .map_or("", |t| t.name());
        let tensors = file.tensors();
        ModelFacts {
            cpu_info: machine()["cpu_model"].clone(),
            filename: path.display().to_string(),
            kind: format!("{arch} {file_type}").trim_end().to_string(),
            size: if tensors.is_empty() { file.file_size() } else { tensors.iter().map(|t| t.n_bytes).sum() },
            params: tensors.iter().map(|t| t.n_elements).sum(),
        }
    }
}

/// One test's samples, for llama-bench's formats.
struct Record {
    threads: usize,
    types: (KvType, KvType),
    kv_bytes: usize,
    test: Test,
    depth: usize,
    time: String,
    samples_ns: Vec<u64>,
    samples_ts: Vec<f64>,
}

impl Record {
    /// llama-bench's fields that mean something here, in its order, as (name, JSON value); `samples_*` only
    /// in JSON.
    fn fields(&self, facts: &ModelFacts) -> Vec<(&'static str, Value)> {
        let ns = Stats::of(&self.samples_ns.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let ts = Stats::of(&self.samples_ts);
        let (n_prompt, n_gen) = self.test.counts();
        vec![
            ("build_commit", json!(env!("GEMMA_COMMIT"))),
            ("cpu_info", facts.cpu_info.clone()),
            ("backends", json!("CPU")),
            ("model_filename", json!(facts.filename)),
            ("model_type", json!(facts.kind)),
            ("model_size", json!(facts.size)),
            ("model_n_params", json!(facts.params)),
            ("n_batch", json!(PREFILL_CHUNK)),
            ("n_ubatch", json!(MAX_UBATCH)),
            ("n_threads", json!(self.threads)),
            ("type_k", json!(self.types.0.name())),
            ("type_v", json!(self.types.1.name())),
            ("kv_bytes", json!(self.kv_bytes)),
            ("n_sequences", json!(self.test.sequences())),
            ("n_prompt", json!(n_prompt)),
            ("n_gen", json!(n_gen)),
            ("n_depth", json!(self.depth)),
            ("test_time", json!(self.time)),
            ("avg_ns", json!(ns.mean.round() as u64)),
            ("stddev_ns", json!(ns.sd.round() as u64)),
            ("avg_ts", json!(ts.mean)),
            ("stddev_ts", json!(ts.sd)),
        ]
    }

    fn json(&self, facts: &ModelFacts) -> Value {
        let mut map: serde_json::Map<String, Value> =
            self.fields(facts).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        map.insert("samples_ns".into(), json!(self.samples_ns));
        map.insert("samples_ts".into(), json!(self.samples_ts));
        Value::Object(map)
    }
}

/// Formats a value for llama-bench's CSV and markdown: strings bare, numbers as C's `%f` for floats.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

/// The table header of `-o md`, llama-bench's columns.
const MD_HEADER: &str =
    "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |";
/// The same with llama-bench's cache type columns, shown (as llama-bench shows them) when a type is not the default.
const MD_HEADER_TYPES: &str = "| model | size | params | backend | threads | type_k | type_v | test | t/s |\n\
     | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |";

fn print_record(format: BenchOutput, record: &Record, facts: &ModelFacts, first: bool, typed: bool) -> Result<()> {
    match format {
        BenchOutput::Md => {
            let ts = Stats::of(&record.samples_ts);
            let types =
                if typed { format!("{} | {} | ", record.types.0.name(), record.types.1.name()) } else { String::new() };
            outln!(
                "| {} | {:.2} MiB | {:.2} M | CPU | {} | {types}{} | {:.2} ± {:.2} |",
                facts.kind,
                facts.size as f64 / (1u64 << 20) as f64,
                facts.params as f64 / 1e6,
                record.threads,
                record.test.name(record.depth),
                ts.mean,
                ts.sd
            )?;
        }
        BenchOutput::Csv => {
            let fields = record.fields(facts);
            if first {
                outln!("{}", fields.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(","))?;
            }
            let quoted: Vec<String> =
                fields.iter().map(|(_, v)| format!("\"{}\"", plain(v).replace('"', "\"\""))).collect();
            outln!("{}", quoted.join(","))?;
        }
        // The array is printed whole at the end.
        BenchOutput::Json => {}
        BenchOutput::Jsonl => outln!("{}", record.json(facts))?,
    }
    Ok(())
}

/// The current time as RFC 3339 (UTC, seconds), as llama-bench stamps each test.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{}Z", gemma_core::chat::format_utc("%FT%T", secs).unwrap_or_default())
}

pub fn bench(common: &Common, args: &BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        return Err(usage("-r must be at least 1"));
    }
    let path = common.model_path()?;
    let t0 = Instant::now();
    let mut model = common.open_model(&path)?;
    let load_secs = t0.elapsed().as_secs_f64();
    let threads = if args.thread_counts.is_empty() { vec![common.threads()?] } else { args.thread_counts.clone() };
    if threads.contains(&0) {
        return Err(usage("thread counts must be at least 1"));
    }
    if args.sequences.contains(&0) {
        return Err(usage("sequence counts must be at least 1"));
    }
    let ctx = model.config.context_length;
    let deepest = args.depths.iter().max().copied().unwrap_or(0);
    if model.is_embedding_model() && (deepest > 0 || !args.prompt_gen.is_empty()) {
        return Err(usage("an embedding model reads whole inputs: -d (depth) and -pg do not apply"));
    }
    let longest = args
        .n_prompt
        .iter()
        .chain(&args.n_gen)
        .copied()
        .chain(args.prompt_gen.iter().map(|&(pp, tg)| pp + tg))
        .max()
        .unwrap_or(0);
    if deepest + longest + 1 > ctx {
        return Err(usage(format!("depth {deepest} + {longest} tokens exceed the model's context of {ctx}")));
    }
    // An embedding model only reads: `embd{n}` embeds inputs of n tokens (`-s`: that many at once).
    let tests: Vec<Test> = if model.is_embedding_model() {
        args.n_prompt.iter().flat_map(|&n| args.sequences.iter().map(move |&seqs| Test::Embed { n, seqs })).collect()
    } else {
        let gens = args.n_gen.iter().flat_map(|&n| args.sequences.iter().map(move |&seqs| Test::Gen { n, seqs }));
        let pgs = args.prompt_gen.iter().map(|&(pp, tg)| Test::PromptGen { pp, tg });
        args.n_prompt.iter().map(|&n| Test::Prompt(n)).chain(gens).chain(pgs).collect()
    };
    let tests: Vec<Test> = tests.into_iter().filter(|t| t.tokens() > 0).collect();
    // Every key type with every value type, as llama-bench combines its -ctk and -ctv lists.
    let type_pairs: Vec<(KvType, KvType)> =
        args.cache_type_k.iter().flat_map(|&k| args.cache_type_v.iter().map(move |&v| (k, v))).collect();
    let typed = type_pairs.iter().any(|&p| p != (KvType::F32, KvType::F32));
    let facts = ModelFacts::of(&model, &path);
    let name = path.file_name().map_or("model".into(), |n| n.to_string_lossy().to_string());
    let header = format!("model: {name} (loaded in {:.0} ms)   commit: {}", load_secs * 1e3, env!("GEMMA_COMMIT"));
    match args.output {
        // llama-bench's formats own stdout; this command's own lines go to stderr.
        Some(format) => {
            eprintln!("{header}");
            if format == BenchOutput::Md {
                outln!("{}", if typed { MD_HEADER_TYPES } else { MD_HEADER })?;
            }
        }
        None => {
            outln!("{header}")?;
            // The cache types get a column only when one is not the default, as llama-bench shows `type_k`.
            let types_column = if typed { " cache k/v |" } else { "" };
            outln!("| threads |{types_column} test | t/s (mean ± sd) | p50 | p90 | ttft ms | KV MiB |")?;
            outln!("|---|{}---|---|---|---|---|---|", if typed { "---|" } else { "" })?;
        }
    }
    let mut results = Vec::new();
    let mut records = Vec::new();
    for &types in &type_pairs {
        model.set_cache_types(types.0, types.1)?;
        for &t in &threads {
            let pool = crate::commands::thread_pool(t)?;
            for &depth in &args.depths {
                for &test in &tests {
                    let time = now_rfc3339();
                    run_test(&model, &pool, test, depth, 0)?; // warm-up
                    let mut rates = Vec::new();
                    let mut secs = Vec::new();
                    let mut kv_bytes = 0;
                    for rep in 0..args.repetitions {
                        let (r, s, b) = run_test(&model, &pool, test, depth, rep as u64 + 1)?;
                        rates.push(r);
                        secs.push(s);
                        kv_bytes = b;
                    }
                    let st = Stats::of(&rates);
                    let ttft =
                        matches!(test, Test::Prompt(_) | Test::Embed { .. }).then(|| Stats::of(&secs).mean * 1e3);
                    let name = test.name(depth);
                    let record = Record {
                        threads: t,
                        types,
                        kv_bytes,
                        test,
                        depth,
                        time,
                        samples_ns: secs.iter().map(|s| (s * 1e9).round() as u64).collect(),
                        samples_ts: rates.clone(),
                    };
                    match args.output {
                        Some(format) => print_record(format, &record, &facts, records.is_empty(), typed)?,
                        None => outln!(
                            "| {t} |{} {name} | {:.2} ± {:.2} | {:.2} | {:.2} | {} | {:.2} |",
                            if typed { format!(" {}/{} |", types.0, types.1) } else { String::new() },
                            st.mean,
                            st.sd,
                            st.p50,
                            st.p90,
                            ttft.map_or("-".into(), |v| format!("{v:.1}")),
                            kv_bytes as f64 / (1u64 << 20) as f64
                        )?,
                    }
                    let (n_prompt, n_gen) = test.counts();
                    results.push(json!({
                        "threads": t, "test": name, "kind": test.kind(), "n": n_prompt.max(n_gen),
                        "n_prompt": n_prompt, "n_gen": n_gen, "depth": depth, "sequences": test.sequences(),
                        "tokens_per_second": st.json(), "samples": rates, "ttft_ms": ttft,
                        "type_k": types.0.name(), "type_v": types.1.name(), "kv_bytes": kv_bytes,
                    }));
                    records.push(record);
                }
            }
        }
    }
    if args.output == Some(BenchOutput::Json) {
        outln!("{}", serde_json::to_string_pretty(&records.iter().map(|r| r.json(&facts)).collect::<Vec<_>>())?)?;
    }
    let rss = peak_rss_bytes();
    let rss_line =
        format!("peak RSS: {}", rss.map_or("unknown".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)));
    if args.output.is_some() {
        eprintln!("{rss_line}");
    } else {
        outln!("{rss_line}")?;
    }
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
