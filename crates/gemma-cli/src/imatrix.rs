//! `gemma imatrix`: llama.cpp's `llama-imatrix`. Runs the model over a text in chunks and writes the importance
//! matrix (per weight matrix, the sums of squared input activations and the token count) that `gemma quantize
//! --imatrix` and `llama-quantize --imatrix` read; prints the perplexity along the way, as llama-imatrix does.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gemma_core::imatrix::statistics::statistics;
use gemma_core::imatrix::{self, Collector, ImatrixRunError};
use gemma_core::perplexity::{ChunkPlan, NllStats};
use gemma_io::imatrix::{Imatrix, ImatrixFormat};

use crate::commands::{usage, Common};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// GGUF: raw sums and counts (llama-imatrix's default).
    Gguf,
    /// The legacy .dat format: per-chunk averages.
    Dat,
}

#[derive(Args, Debug)]
#[command(after_help = "The matrices collected are llama-imatrix's: every product with a weight of the decoder \
    layers (blk.*), output.weight with --process-output (a head tied to the token embedding is never collected). \
    The chunks are llama-perplexity's: N tokens each, the first replaced by BOS, from an empty cache.")]
pub struct ImatrixArgs {
    /// The text to run (`-` reads standard input); one trailing newline is dropped, as llama.cpp does. Without
    /// it, the --in-file matrices are only combined (or shown, with --show-statistics).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Matrices to start from (GGUF or .dat; comma-separated or repeated): added together, and to what this
    /// run collects, as llama-imatrix combines them.
    #[arg(long = "in-file", value_name = "FILE", value_delimiter = ',')]
    pub in_files: Vec<PathBuf>,
    /// Print the statistics of the one --in-file matrix (per matrix and per layer) and exit.
    #[arg(long)]
    pub show_statistics: bool,
    /// Skip the first N chunks of the text.
    #[arg(long = "chunk", visible_alias = "from-chunk", default_value_t = 0, value_name = "N")]
    pub from_chunk: usize,
    /// Also save a copy every N chunks, to OUTPUT.at_N (0: never).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub save_frequency: usize,
    /// Recognise control tokens such as <start_of_turn> in the text.
    #[arg(long)]
    pub parse_special: bool,
    /// Where to write the matrix (through a temp file, renamed when complete).
    #[arg(long = "output-file", visible_alias = "output", short = 'o', default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// The file format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Gguf)]
    pub output_format: OutputFormat,
    /// Tokens per chunk (default: --ctx if given, else 512).
    #[arg(long = "ctx-size", short = 'c', value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Run only the first N chunks.
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Tokens per batch: chunks run side by side, `N / ctx-size` at a time.
    #[arg(long = "batch-size", short = 'b', default_value_t = 2048, value_name = "N")]
    pub batch_size: usize,
    /// Do not compute the perplexity (the logits are then not computed at all).
    #[arg(long)]
    pub no_ppl: bool,
    /// Collect output.weight too (for models with an untied output head).
    #[arg(long)]
    pub process_output: bool,
    /// Save the matrix every N chunks (to the output file, replaced each time), and at the end.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub output_frequency: usize,
    /// Threads (the same as --threads).
    #[arg(short = 't', value_name = "N")]
    pub nthreads: Option<usize>,
}

pub(crate) fn imatrix(common: &Common, args: &ImatrixArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    if args.chunks == Some(0) {
        return Err(usage("--chunks must be at least 1"));
    }
    if args.output_frequency == 0 {
        return Err(usage("--output-frequency must be at least 1"));
    }
    let n_ctx = args.ctx_size.or(common.ctx).unwrap_or(512);
    if n_ctx < 4 {
        return Err(usage(format!("--ctx-size {n_ctx} is too small: use at least 4")));
    }
    let chunk_size = u32::try_from(n_ctx).map_err(|_| usage(format!("--ctx-size {n_ctx} is too large")))?;
    if args.show_statistics {
        return show_statistics(args, chunk_size);
    }
    let threads = match (common.threads, args.nthreads) {
        (Some(_), Some(_)) => return Err(usage("give the thread count once: --threads N or -t N")),
        (None, Some(0)) => return Err(usage("-t must be at least 1")),
        (None, Some(n)) => Some(n),
        (t, None) => t,
    };
    let format = match args.output_format {
        OutputFormat::Gguf => ImatrixFormat::Gguf,
        OutputFormat::Dat => ImatrixFormat::Legacy,
    };
    if args.file.is_none() && args.in_files.is_empty() {
        return Err(usage("give a text to run (-f FILE), or matrices to combine (--in-file FILE,...)"));
    }
    check_output_folder(&args.output)?;
    // llama-imatrix's `--in-file`: the files' sums, in chunks of this run's size, are where the run starts.
    let mut prior = Imatrix::raw(chunk_size);
    for path in &args.in_files {
        let m = Imatrix::open(path).with_context(|| format!("cannot read the importance matrix {}", path.display()))?;
        prior.add(&m).with_context(|| format!("cannot combine {} with the matrices before it", path.display()))?;
        eprintln!("imatrix: loaded {} ({} matrices)", path.display(), m.entries.len());
    }
    let Some(file) = &args.file else {
        prior.write_file(&args.output, format).with_context(|| format!("cannot write {}", args.output.display()))?;
        eprintln!(
            "imatrix: {} matrices combined from {} files ({} chunks of {}) saved to {}",
            prior.entries.len(),
            args.in_files.len(),
            prior.chunk_count,
            chunk_size,
            args.output.display()
        );
        return Ok(());
    };
    let text = crate::perplexity::read_text_file(file)?;
    let common = Common {
        model: common.model.clone(),
        threads,
        ctx: common.ctx,
        load_options: common.load_options.clone(),
        loras: common.loras.clone(),
        cache_types: common.cache_types,
    };
    let m = common.load()?;
    let mut tokens = m.tokenizer.encode(&text, m.tokenizer.add_bos(), args.parse_special);
    if args.from_chunk > 0 {
        let skip = args.from_chunk.saturating_mul(n_ctx);
        if args.from_chunk.saturating_add(2).saturating_mul(n_ctx) >= tokens.len() {
            anyhow::bail!(
                "--chunk {}: the text has {} tokens, not enough left after skipping {skip} (at least two chunks \
                 of {n_ctx} must remain)",
                args.from_chunk,
                tokens.len()
            );
        }
        tokens.drain(..skip);
    }
    let plan = ChunkPlan::new(tokens.len(), n_ctx, args.chunks, args.batch_size / n_ctx)?;
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.add_bos());
    eprintln!(
        "imatrix: {} tokens, {} chunks of {}, {} at a time, {} threads",
        tokens.len(),
        plan.n_chunks,
        plan.n_ctx,
        plan.n_seq,
        m.pool.n_threads()
    );
    let dataset = file.display().to_string();
    let save = |c: &Collector, path: &Path| -> Result<()> {
        let mut matrix = prior.clone();
        matrix.add(&c.to_imatrix(vec![dataset.clone()], plan.n_ctx))?;
        matrix
            .write_file(path, format)
            .with_context(|| format!("cannot write the importance matrix to {}", path.display()))
    };
    // Chunk numbers count the --in-file chunks too, as llama-imatrix's do.
    let prior_chunks = prior.chunk_count as usize;
    let mut collector = Collector::new(args.process_output);
    let mut nll = NllStats::default();
    let mut saved_chunks = 0;
    let (mut last_output, mut last_copy) = (prior_chunks, prior_chunks);
    let mut callback_err: Option<anyhow::Error> = None;
    let start = Instant::now();
    let cancel = crate::interrupt::cancel_flag_on_ctrl_c()?;
    let result = imatrix::run(
        &m.model,
        &m.pool,
        &tokens,
        bos,
        &plan,
        &mut collector,
        (!args.no_ppl).then_some(&mut nll),
        &mut |chunk, c, nll| {
            if callback_err.is_some() {
                return;
            }
            if chunk + 1 == plan.n_seq.min(plan.n_chunks) {
                crate::perplexity::report_eta("imatrix", &start, &plan);
            }
            let shown = match nll {
                Some(s) => out!("[{}]{:.4},", chunk + 1, s.perplexity()),
                None => out!("[{}]", chunk + 1),
            };
            callback_err = shown.err().map(Into::into);
            // Chunks that run side by side are all in the matrix by the first one's call: saves go by the
            // chunks the matrix holds, when a multiple of the frequency has been passed.
            let run_chunks = (c.max_tokens() / plan.n_ctx as u64) as usize;
            let have = prior_chunks + run_chunks;
            if have / args.output_frequency > last_output / args.output_frequency && run_chunks < plan.n_chunks {
                callback_err = save(c, &args.output).err();
                (last_output, saved_chunks) = (have, run_chunks);
            }
            let copies = args.save_frequency;
            if callback_err.is_none() && copies > 0 && have / copies > last_copy / copies {
                callback_err = save(c, &copy_path(&args.output, have)).err();
                last_copy = have;
            }
        },
        Some(&*cancel),
    );
    if let Err(ImatrixRunError::Cancelled) = result {
        match saved_chunks {
            0 => eprintln!("\nimatrix: interrupted, nothing written"),
            n => {
                eprintln!("\nimatrix: interrupted; {} holds the matrix of the first {n} chunks", args.output.display())
            }
        }
        std::process::exit(130);
    }
    result?;
    if let Some(e) = callback_err {
        return Err(e);
    }
    outln!()?;
    if !args.no_ppl {
        match nll.perplexity_error() {
            Some(e) => outln!("Final estimate: PPL = {:.4} +/- {:.5}", nll.perplexity(), e)?,
            None => outln!("Final estimate: PPL = {:.4}", nll.perplexity())?,
        }
    }
    save(&collector, &args.output)?;
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "imatrix: {} matrices from {} chunks of {} tokens ({:.2} s, {:.1} tokens/s) saved to {}",
        collector.len(),
        plan.n_chunks,
        plan.n_ctx,
        seconds,
        (plan.n_chunks * plan.n_ctx) as f64 / seconds,
        args.output.display()
    );
    Ok(())
}

/// Where `--save-frequency` puts the copy after `chunks` chunks: llama-imatrix's `OUTPUT.at_N`.
fn copy_path(output: &Path, chunks: usize) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(format!(".at_{chunks}"));
    PathBuf::from(name)
}

/// `--show-statistics`: llama-imatrix's tables, figure for figure.
fn show_statistics(args: &ImatrixArgs, chunk_size: u32) -> Result<()> {
    let [path] = args.in_files.as_slice() else {
        return Err(usage("--show-statistics needs exactly one matrix: --in-file FILE"));
    };
    if args.file.is_some() {
        return Err(usage("--show-statistics reads a matrix and runs no text: drop -f"));
    }
    let file = Imatrix::open(path).with_context(|| format!("cannot read the importance matrix {}", path.display()))?;
    let mut matrix = Imatrix::raw(chunk_size);
    matrix.add(&file)?;
    let s = statistics(&matrix);
    for (name, why) in &s.skipped {
        eprintln!("imatrix: {name} left out of the statistics: {why}");
    }
    if s.tensors.is_empty() {
        anyhow::bail!("cannot compute statistics for {}: no matrix has data", path.display());
    }
    outln!("\nComputing statistics for {} ({} tensors)", path.display(), s.tensors.len())?;
    outln!(
        "\n Layer\t       Tensor\t          Σ(Act²)\t  Min\t            Max\t           μ\t   σ\t % Active\tN\t   \
         Entropy\tE (norm)\tZD\t  CosSim"
    )?;
    outln!("{}", "=".repeat(169))?;
    for t in &s.tensors {
        outln!(
            "{:>5}\t{:<20}\t{:>10}\t{:>8}\t{:>11}\t{:>6}\t{:>6}\t{:>8}%\t{:>6}\t{:>10}\t{:>6}%\t{:>10}%\t{:>8}",
            t.layer,
            t.short_name,
            c_float(t.total, 2),
            c_float(t.min, 4),
            c_float(t.max, 4),
            c_float(t.mean, 2),
            c_float(t.stddev, 2),
            c_float(t.active * 100.0, 2),
            t.elements,
            c_float(t.entropy, 4),
            c_float(t.entropy_norm(), 2),
            c_float(100.0 * t.zd, 2),
            c_float(t.cossim, 4),
        )?;
    }
    outln!("\nComputing weighted average statistics per layer ({} layers)", s.layers.len())?;
    outln!("\n  Layer\t     μΣ(Act²)\t      μZD\tμCosSim")?;
    outln!("{}", "=".repeat(48))?;
    for l in &s.layers {
        outln!(
            "{:>5}\t{:>14}\t{:>10}%\t{:>6}",
            l.layer,
            c_float(l.mean_total, 2),
            c_float(100.0 * l.zd, 4),
            c_float(l.cossim, 4)
        )?;
    }
    outln!()?;
    Ok(())
}

/// `printf("%.Nf")` of a float: C spells the non-numbers `nan`, `-nan` and `inf`.
fn c_float(v: f32, decimals: usize) -> String {
    if v.is_nan() {
        return if v.is_sign_negative() { "-nan" } else { "nan" }.to_string();
    }
    if v.is_infinite() {
        return if v < 0.0 { "-inf" } else { "inf" }.to_string();
    }
    format!("{v:.decimals$}")
}

/// A run can take hours: a folder that cannot take the output is an error before it starts, not after.
fn check_output_folder(output: &Path) -> Result<()> {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!("cannot write {}: the folder {} does not exist", output.display(), dir.display());
    }
    if output.is_dir() {
        anyhow::bail!("cannot write {}: it is a folder", output.display());
    }
    Ok(())
}
