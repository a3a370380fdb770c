//! `gemma imatrix`: llama.cpp's `llama-imatrix`. Runs the model over a text in chunks and writes the importance
//! matrix (per weight matrix, the sums of squared input activations and the token count) that `gemma quantize
//! --imatrix` and `llama-quantize --imatrix` read; prints the perplexity along the way, as llama-imatrix does.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gemma_core::imatrix::{self, Collector, ImatrixRunError};
use gemma_core::perplexity::{ChunkPlan, NllStats};
use gemma_io::imatrix::ImatrixFormat;

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
    /// The text to run (`-` reads standard input); one trailing newline is dropped, as llama.cpp does.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
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
    check_output_folder(&args.output)?;
    let text = crate::perplexity::read_text_file(&args.file)?;
    let common =
        Common { model: common.model.clone(), threads, ctx: common.ctx, load_options: common.load_options.clone() };
    let m = common.load()?;
    let tokens = m.tokenizer.encode(&text, m.tokenizer.add_bos(), false);
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
    let dataset = args.file.display().to_string();
    let save = |c: &Collector| -> Result<()> {
        c.to_imatrix(vec![dataset.clone()], plan.n_ctx)
            .write_file(&args.output, format)
            .with_context(|| format!("cannot write the importance matrix to {}", args.output.display()))
    };
    let mut collector = Collector::new(args.process_output);
    let mut nll = NllStats::default();
    let mut saved_chunks = 0;
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
            let done = chunk + 1;
            if done % args.output_frequency == 0 && done < plan.n_chunks {
                callback_err = save(c).err();
                saved_chunks = done;
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
    save(&collector)?;
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
