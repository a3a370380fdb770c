//! `gemma perplexity`: llama.cpp's `llama-perplexity` (perplexity over a text, chunked or strided, saving
//! log-probabilities as a base, KL divergence from a base, its task scores), with the same chunking, the same
//! numbers and the same base files.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gemma_core::perplexity::{
    self, ChunkPlan, DivergenceStats, LogProbReader, LogProbWriter, NllStats, PerplexityError, Scoring,
};

use gemma_core::task_scoring::ScoringError;

use crate::commands::{usage, Common};

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// The text to score (`-` reads standard input); one trailing newline is dropped, as llama.cpp does.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// The text to score, given inline.
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Tokens per chunk; the second half of each chunk is scored (default: --ctx if given, else 512).
    #[arg(long = "ctx-size", short = 'c', value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Score only the first N chunks.
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Tokens per batch: chunks run side by side, `N / ctx-size` at a time. The results do not depend on it.
    #[arg(long = "batch-size", short = 'b', default_value_t = 2048, value_name = "N")]
    pub batch_size: usize,
    /// Save every scored position's log-probabilities to FILE (llama.cpp's format), as the base of a later
    /// `--kl-divergence` run; with `--kl-divergence`, the base to read.
    #[arg(long = "kl-divergence-base", visible_alias = "save-all-logits", value_name = "FILE")]
    pub kl_divergence_base: Option<PathBuf>,
    /// Compare this model with the base saved in --kl-divergence-base (its tokens are scored; the text and
    /// --ctx-size are not used).
    #[arg(long = "kl-divergence", requires = "kl_divergence_base")]
    pub kl_divergence: bool,
    /// Print one JSON object with the results instead of llama.cpp's text.
    #[arg(long)]
    pub json: bool,
    /// Score the HellaSwag tasks in --file (llama.cpp's six lines per task) instead of the perplexity.
    #[arg(long, conflicts_with_all = ["prompt", "kl_divergence", "kl_divergence_base", "chunks"])]
    pub hellaswag: bool,
    /// With --hellaswag: how many tasks to score, taken in llama-perplexity's random order.
    #[arg(long, default_value_t = gemma_core::hellaswag::DEFAULT_TASKS, value_name = "N")]
    pub hellaswag_tasks: usize,
    /// Score the Winogrande tasks in --file (llama.cpp's CSV: index,sentence with _,choice 1,choice 2,answer).
    #[arg(long, conflicts_with_all = ["prompt", "kl_divergence", "kl_divergence_base", "chunks", "hellaswag"])]
    pub winogrande: bool,
    /// With --winogrande: score N tasks taken in llama-perplexity's random order (0: all, in file order).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub winogrande_tasks: usize,
    /// Score the multiple-choice tasks in --file (llama.cpp's binary format: its ARC, MMLU, TruthfulQA files).
    #[arg(
        long,
        conflicts_with_all = ["prompt", "kl_divergence", "kl_divergence_base", "chunks", "hellaswag", "winogrande"]
    )]
    pub multiple_choice: bool,
    /// With --multiple-choice: score N tasks taken in llama-perplexity's random order (0: all, in file order).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub multiple_choice_tasks: usize,
    /// Strided perplexity (llama.cpp's): windows of --ctx-size + N/2 tokens rounded up to a multiple of 256,
    /// one every N tokens, the last N of each scored (0: the usual chunks).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        conflicts_with_all = ["kl_divergence", "kl_divergence_base", "hellaswag", "winogrande", "multiple_choice"]
    )]
    pub ppl_stride: usize,
    /// 0: the running perplexity as `[chunk]ppl,`; 1: a line per chunk (its first token's place in the text,
    /// the perplexity, and without --ppl-stride the mean and standard error of -ln p), as llama.cpp prints.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "0|1",
        value_parser = clap::value_parser!(u8).range(0..=1),
        conflicts_with_all = ["json", "kl_divergence", "hellaswag", "winogrande", "multiple_choice"]
    )]
    pub ppl_output_type: u8,

    #[command(flatten)]
    pub lora: gemma_server::LoraArgs,

    #[command(flatten)]
    pub cache_types: gemma_server::CacheTypeArgs,
}

pub(crate) fn perplexity(common: &Common, args: &PerplexityArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    if args.chunks == Some(0) {
        return Err(usage("--chunks must be at least 1"));
    }
    if args.hellaswag {
        return hellaswag(common, args);
    }
    if args.winogrande {
        return winogrande(common, args);
    }
    if args.multiple_choice {
        return multiple_choice(common, args);
    }
    if args.kl_divergence {
        if args.file.is_some() || args.prompt.is_some() || args.ctx_size.is_some() {
            return Err(usage(
                "--kl-divergence scores the tokens saved in the --kl-divergence-base file: drop --file, --prompt \
                 and --ctx-size",
            ));
        }
        return divergence(common, args);
    }
    let text = read_text(args)?;
    let n_ctx = args.ctx_size.or(common.ctx).unwrap_or(512);
    if n_ctx < 4 {
        return Err(usage(format!("--ctx-size {n_ctx} scores nothing: use at least 4")));
    }
    let stride = (args.ppl_stride > 0).then_some(args.ppl_stride);
    if let Some(stride) = stride {
        // a stride the window cannot hold is known before the model loads
        perplexity::strided_window(n_ctx, stride).map_err(|e| usage(format!("--ppl-stride {stride}: {e}")))?;
    }
    let m = common.load()?;
    let tokens = m.tokenizer.encode(&text, m.tokenizer.add_bos(), false);
    let plan = match stride {
        Some(stride) => ChunkPlan::strided(tokens.len(), n_ctx, stride, args.chunks, args.batch_size / n_ctx)?,
        None => ChunkPlan::new(tokens.len(), n_ctx, args.chunks, args.batch_size / n_ctx)?,
    };
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.add_bos());
    let layout = match stride {
        Some(stride) => format!(
            "{} windows of {} (--ctx-size {n_ctx} + {stride}/2, rounded up to 256 as llama.cpp does) {stride} \
             apart, the last {stride} of each scored",
            plan.n_chunks, plan.n_ctx
        ),
        None => format!("{} chunks of {}", plan.n_chunks, plan.n_ctx),
    };
    eprintln!(
        "perplexity: {} tokens, {layout}, {} at a time, {} threads",
        tokens.len(),
        plan.n_seq,
        m.pool.n_threads()
    );
    let mut writer = match &args.kl_divergence_base {
        Some(path) => Some(
            LogProbWriter::create(path, &plan, m.model.config.vocab_size, &tokens)
                .with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => None,
    };
    let mut stats = NllStats::default();
    let mut running = Vec::with_capacity(plan.n_chunks);
    let mut out_err = None;
    let start = Instant::now();
    let json = args.json;
    let cancel = crate::interrupt::cancel_flag_on_ctrl_c()?;
    let result = perplexity::run(
        &m.model,
        &m.pool,
        &tokens,
        bos,
        &plan,
        Scoring::Perplexity { stats: &mut stats, save: writer.as_mut() },
        &mut |chunk, scoring| {
            let Scoring::Perplexity { stats, .. } = scoring else { return };
            if chunk + 1 == plan.n_seq.min(plan.n_chunks) {
                report_eta("perplexity", &start, &plan);
            }
            running.push(stats.perplexity());
            if !json && out_err.is_none() {
                out_err = print_running(&plan, args.ppl_output_type, chunk, stats).err();
            }
        },
        Some(&*cancel),
    );
    if let Err(PerplexityError::Cancelled) = result {
        drop(writer);
        interrupted();
    }
    result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    if let Some(w) = writer {
        w.finish().context("cannot save the log-probabilities")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    if json {
        let mut report = serde_json::json!({
            "n_ctx": plan.n_ctx,
            "chunks": plan.n_chunks,
            "tokens": tokens.len(),
            "scored": stats.count,
            "ppl": stats.perplexity(),
            "ppl_error": stats.perplexity_error(),
            "running_ppl": running,
            "seconds": seconds,
        });
        if let Some(stride) = stride {
            report["stride"] = stride.into();
        }
        outln!("{report}")?;
    } else {
        // llama.cpp ends the running values with an empty line (a line break after `[n]ppl,`)
        outln!()?;
        match (stride, stats.perplexity_error()) {
            // its strided mode prints no final estimate (the last running value is the perplexity), then the
            // empty line its `main` prints before the timings
            (Some(_), _) => outln!()?,
            (None, Some(e)) => outln!("Final estimate: PPL = {:.4} +/- {:.5}", stats.perplexity(), e)?,
            (None, None) => outln!("Final estimate: PPL = {:.4}", stats.perplexity())?,
        }
    }
    eprintln!(
        "perplexity: PPL = {:.4}, {} positions scored in {:.2} s ({:.1} tokens/s)",
        stats.perplexity(),
        stats.count,
        seconds,
        (plan.n_chunks * plan.n_ctx) as f64 / seconds
    );
    if let Some(path) = &args.kl_divergence_base {
        eprintln!("perplexity: log-probabilities saved to {}", path.display());
    }
    Ok(())
}

/// llama-perplexity's line after each chunk: `[chunk]ppl,` (output type 0), or for output type 1 a line with the
/// chunk's first token's place in the text and the running perplexity, plus the mean and standard error of
/// -ln p without a stride. llama.cpp gives every chunk of a group run side by side the group's place.
fn print_running(plan: &ChunkPlan, output_type: u8, chunk: usize, stats: &NllStats) -> std::io::Result<()> {
    let ppl = stats.perplexity();
    match (output_type, plan.stride) {
        (0, _) => out!("[{}]{ppl:.4},", chunk + 1),
        (_, Some(stride)) => outln!("{:8}  {ppl:.4}", chunk * stride),
        (_, None) => {
            let (mean, error) = stats.mean_nll_and_error();
            outln!("{:8}  {ppl:.4}  {mean:.6}  {error:.6}", chunk / plan.n_seq * plan.n_seq * plan.n_ctx)
        }
    }
}

fn divergence(common: &Common, args: &PerplexityArgs) -> Result<()> {
    let path = args.kl_divergence_base.as_deref().context("--kl-divergence needs --kl-divergence-base")?;
    let mut base = LogProbReader::open(path).context("cannot read the base log-probabilities")?;
    let m = common.load()?;
    let n_vocab = m.model.config.vocab_size;
    if base.n_vocab != n_vocab {
        anyhow::bail!(
            "{} was saved with a vocabulary of {} tokens; this model has {n_vocab}: the two models do not share a \
             tokenizer",
            path.display(),
            base.n_vocab
        );
    }
    let n_chunks = args.chunks.map_or(base.n_chunks, |c| c.min(base.n_chunks));
    let plan = ChunkPlan { n_ctx: base.n_ctx, n_chunks, n_seq: (args.batch_size / base.n_ctx).max(1), stride: None };
    let tokens = base.tokens.clone();
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.add_bos());
    eprintln!(
        "kl-divergence: {} chunks of {} from {}, {} at a time, {} threads",
        plan.n_chunks,
        plan.n_ctx,
        path.display(),
        plan.n_seq,
        m.pool.n_threads()
    );
    let mut stats = DivergenceStats::default();
    let mut out_err = None;
    let start = Instant::now();
    let json = args.json;
    if !json {
        outln!(
            "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p"
        )?;
    }
    let cancel = crate::interrupt::cancel_flag_on_ctrl_c()?;
    let result = perplexity::run(
        &m.model,
        &m.pool,
        &tokens,
        bos,
        &plan,
        Scoring::Divergence { stats: &mut stats, base: &mut base },
        &mut |chunk, scoring| {
            let Scoring::Divergence { stats, .. } = scoring else { return };
            if chunk + 1 == plan.n_seq.min(plan.n_chunks) {
                report_eta("perplexity", &start, &plan);
            }
            if json || out_err.is_some() {
                return;
            }
            let (ppl, ratio, kld, rms, top) =
                (stats.ppl(), stats.ln_ppl_ratio(), stats.kld_mean(), stats.p_diff_rms(), stats.same_top());
            out_err = outln!(
                "{:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
                chunk + 1,
                ppl.value,
                ppl.error,
                ratio.value,
                ratio.error,
                kld.value,
                kld.error,
                100.0 * rms.value,
                100.0 * rms.error,
                100.0 * top.value,
                100.0 * top.error
            )
            .err();
        },
        Some(&*cancel),
    );
    if let Err(PerplexityError::Cancelled) = result {
        interrupted();
    }
    result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    let s = stats.summary();
    if json {
        let mut report = serde_json::to_value(&s)?;
        report["n_ctx"] = plan.n_ctx.into();
        report["chunks"] = plan.n_chunks.into();
        report["seconds"] = start.elapsed().as_secs_f64().into();
        outln!("{report}")?;
        return Ok(());
    }
    print_summary(&s)?;
    Ok(())
}

/// llama.cpp's closing tables.
fn print_summary(s: &perplexity::DivergenceSummary) -> std::io::Result<()> {
    let pct = |f: f64| match f {
        0.0 => "Minimum".to_string(),
        1.0 => "Maximum".to_string(),
        0.5 => "Median ".to_string(),
        _ => format!("{:4.1}%  ", 100.0 * f),
    };
    outln!()?;
    outln!("====== Perplexity statistics ======")?;
    outln!("Mean PPL(Q)                   : {:10.6} ± {:10.6}", s.ppl.value, s.ppl.error)?;
    outln!("Mean PPL(base)                : {:10.6} ± {:10.6}", s.ppl_base.value, s.ppl_base.error)?;
    outln!("Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * s.ln_ppl_correlation)?;
    outln!("Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}", s.ln_ppl_ratio.value, s.ln_ppl_ratio.error)?;
    outln!("Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}", s.ppl_ratio.value, s.ppl_ratio.error)?;
    outln!("Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}", s.ppl_diff.value, s.ppl_diff.error)?;
    outln!()?;
    outln!("====== KL divergence statistics ======")?;
    outln!("Mean    KLD: {:10.6} ± {:10.6}", s.kld_mean.value, s.kld_mean.error)?;
    for &(f, v) in s.kld_percentiles.iter().rev() {
        outln!("{} KLD: {:10.6}", pct(f), v)?;
    }
    outln!()?;
    outln!("====== Token probability statistics ======")?;
    outln!("Mean    Δp: {:6.3} ± {:5.3} %", 100.0 * s.p_diff_mean.value, 100.0 * s.p_diff_mean.error)?;
    for &(f, v) in s.p_diff_percentiles.iter().rev() {
        outln!("{} Δp: {:6.3}%", pct(f), 100.0 * v)?;
    }
    outln!("RMS Δp    : {:6.3} ± {:5.3} %", 100.0 * s.p_diff_rms.value, 100.0 * s.p_diff_rms.error)?;
    outln!("Same top p: {:6.3} ± {:5.3} %", 100.0 * s.same_top.value, 100.0 * s.same_top.error)?;
    Ok(())
}

/// A cancelled run exits as an interrupted command does (130).
fn interrupted() -> ! {
    eprintln!("\nperplexity: interrupted");
    std::process::exit(130)
}

/// After the first group of chunks: seconds per group and the time left, on stderr (`tool` names the command).
pub(crate) fn report_eta(tool: &str, start: &Instant, plan: &ChunkPlan) {
    let per_group = start.elapsed().as_secs_f64();
    let groups = plan.n_chunks.div_ceil(plan.n_seq);
    eprintln!(
        "{tool}: {:.2} seconds per pass of {} chunks - ETA {:.2} minutes",
        per_group,
        plan.n_seq.min(plan.n_chunks),
        per_group * groups.saturating_sub(1) as f64 / 60.0
    );
}

fn read_text(args: &PerplexityArgs) -> Result<String> {
    match (&args.file, &args.prompt) {
        (Some(path), _) => read_text_file(path),
        (None, Some(p)) => Ok(p.strip_suffix('\n').unwrap_or(p).to_string()),
        (None, None) => Err(usage("give the text to score: --file FILE (or - for standard input) or --prompt")),
    }
}

/// A text file (`-`: standard input) without its final newline, as llama.cpp's tools read one.
pub(crate) fn read_text_file(path: &Path) -> Result<String> {
    let mut text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// `--hellaswag`: llama-perplexity's HellaSwag score, its running accuracy line after every task.
fn hellaswag(common: &Common, args: &PerplexityArgs) -> Result<()> {
    use gemma_core::hellaswag;
    if args.hellaswag_tasks == 0 {
        return Err(usage("--hellaswag-tasks must be at least 1"));
    }
    let path = task_file(args, "--hellaswag")?;
    let text = read_text_file(path)?;
    let tasks = hellaswag::parse(&text).with_context(|| format!("cannot read the tasks in {}", path.display()))?;
    let (m, n_ctx) = load_for_tasks(common, args)?;
    let available = tasks.len();
    let tasks = hellaswag::select(tasks, args.hellaswag_tasks);
    eprintln!(
        "hellaswag: {} of {available} tasks, in llama-perplexity's random order, {} threads",
        tasks.len(),
        m.pool.n_threads()
    );
    let json = args.json;
    if !json {
        outln!("\ntask\tacc_norm\t95% confidence interval")?;
    }
    let mut correct = 0;
    let mut out_err = None;
    let cancel = crate::interrupt::cancel_flag_on_ctrl_c()?;
    let result = hellaswag::score(
        &m.model,
        &m.pool,
        &m.tokenizer,
        &tasks,
        n_ctx,
        &mut |i, score| {
            correct += usize::from(score.correct());
            let (a, b) = hellaswag::wilson_interval(correct, i + 1);
            let freq = correct as f64 / (i + 1) as f64;
            if !json && out_err.is_none() {
                out_err = outln!("{}\t{:.8}%\t[{:.4}%, {:.4}%]", i + 1, freq * 100.0, a * 100.0, b * 100.0).err();
            }
        },
        Some(&*cancel),
    );
    if let Err(ScoringError::Cancelled) = result {
        interrupted();
    }
    let scores = result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    let (a, b) = hellaswag::wilson_interval(correct, scores.len());
    let acc = 100.0 * correct as f64 / scores.len() as f64;
    if json {
        let per_task: Vec<serde_json::Value> = scores
            .iter()
            .zip(&tasks)
            .map(|(s, t)| {
                serde_json::json!({"context": t.context, "gold": s.gold, "chosen": s.chosen, "logprobs": s.logprobs})
            })
            .collect();
        let report = serde_json::json!({
            "tasks": scores.len(),
            "correct": correct,
            "acc_norm": acc,
            "interval_95": [100.0 * a, 100.0 * b],
            "per_task": per_task,
        });
        outln!("{report}")?;
    } else {
        // llama-perplexity ends the table with an empty line, then one more before its timings
        outln!("\n")?;
    }
    eprintln!("hellaswag: acc_norm {acc:.4}% [{:.4}%, {:.4}%] over {} tasks", 100.0 * a, 100.0 * b, scores.len());
    Ok(())
}

/// `--winogrande`: llama-perplexity's Winogrande score, a line per task (running accuracy, both candidates'
/// scores, the choice and the answer), the final score from 100 tasks on.
fn winogrande(common: &Common, args: &PerplexityArgs) -> Result<()> {
    use gemma_core::winogrande;
    let path = task_file(args, "--winogrande")?;
    let text = read_text_file(path)?;
    let (tasks, skipped) =
        winogrande::parse(&text).with_context(|| format!("cannot read the tasks in {}", path.display()))?;
    for s in &skipped {
        eprintln!("winogrande: {}:{} skipped: {}", path.display(), s.line, s.why);
    }
    let (m, n_ctx) = load_for_tasks(common, args)?;
    let available = tasks.len();
    let tasks = winogrande::select(tasks, args.winogrande_tasks);
    eprintln!("winogrande: {} of {available} tasks, {} threads", tasks.len(), m.pool.n_threads());
    let json = args.json;
    let mut correct = 0;
    let mut out_err = None;
    let cancel = crate::interrupt::cancel_flag_on_ctrl_c()?;
    let result = winogrande::score(
        &m.model,
        &m.pool,
        &m.tokenizer,
        &tasks,
        n_ctx,
        &mut |i, score| {
            correct += usize::from(score.correct());
            if !json && out_err.is_none() {
                let acc = 100.0 * correct as f64 / (i + 1) as f64;
                let [a, b] = score.scores;
                out_err = outln!("{}\t{acc:.4}\t{a:>10.6}  {b:>10.6}  {}  {}", i + 1, score.chosen, score.answer).err();
            }
        },
        Some(&*cancel),
    );
    if let Err(ScoringError::Cancelled) = result {
        interrupted();
    }
    let scores = result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    let done = scores.len();
    // llama-perplexity gives its final score from 100 tasks on
    let last = (done >= 100).then(|| winogrande::final_score(correct, done));
    if json {
        let per_task: Vec<serde_json::Value> = scores
            .iter()
            .map(|s| serde_json::json!({"scores": s.scores, "chosen": s.chosen, "answer": s.answer}))
            .collect();
        let report = serde_json::json!({
            "tasks": done,
            "correct": correct,
            "accuracy": 100.0 * correct as f64 / done as f64,
            "standard_error": last.map(|(_, sigma)| sigma),
            "skipped_lines": skipped.len(),
            "per_task": per_task,
        });
        outln!("{report}")?;
    } else {
        outln!("\n")?;
    }
    match last {
        Some((score, sigma)) => eprintln!("Final Winogrande score({done} tasks): {score:.4} +/- {sigma:.4}"),
        None => eprintln!(
            "winogrande: {correct} of {done} right ({:.4}%); llama-perplexity gives a final score from 100 tasks on",
            100.0 * correct as f64 / done as f64
        ),
    }
    Ok(())
}

/// `--multiple-choice`: llama-perplexity's multiple-choice score, the running accuracy after every task, and
/// its final result and chance level (from 100 tasks on, or whenever every task of the file was scored).
fn multiple_choice(common: &Common, args: &PerplexityArgs) -> Result<()> {
    use gemma_core::multiple_choice::{self, MultipleChoiceError};
    let path = task_file(args, "--multiple-choice")?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let tasks =
        multiple_choice::parse(&bytes).with_context(|| format!("cannot read the tasks in {}", path.display()))?;
    let (m, n_ctx) = load_for_tasks(common, args)?;
    let available = tasks.len();
    let tasks = multiple_choice::select(tasks, args.multiple_choice_tasks);
    let subset = tasks.len() < available;
    eprintln!("multiple-choice: {} of {available} tasks, {} threads", tasks.len(), m.pool.n_threads());
    let json = args.json;
    if !json {
        outln!("\ntask\tacc_norm")?;
    }
    let mut correct = 0;
    let mut out_err = None;
    let cancel = crate::interrupt::cancel_flag_on_ctrl_c()?;
    let result = multiple_choice::score(
        &m.model,
        &m.pool,
        &m.tokenizer,
        &tasks,
        n_ctx,
        &mut |i, score| {
            correct += usize::from(score.correct);
            if !json && out_err.is_none() {
                out_err = outln!("{}\t{:.8}", i + 1, 100.0 * correct as f64 / (i + 1) as f64).err();
            }
        },
        Some(&*cancel),
    );
    if let Err(MultipleChoiceError::Scoring(ScoringError::Cancelled)) = result {
        interrupted();
    }
    let scores = result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    let done = scores.len();
    let answers: usize = tasks.iter().map(|t| t.mc1.answers.len()).sum();
    // llama-perplexity leaves the final result out for a random subset of fewer than 100 tasks
    let last = (done >= 100 || !subset).then(|| multiple_choice::final_result(correct, done, answers));
    if json {
        let per_task: Vec<serde_json::Value> = scores
            .iter()
            .map(|s| serde_json::json!({"logprobs": s.logprobs, "chosen": s.chosen, "correct": s.correct}))
            .collect();
        let report = serde_json::json!({
            "tasks": done,
            "correct": correct,
            "accuracy": 100.0 * correct as f64 / done as f64,
            "random_chance": 100.0 * done as f64 / answers as f64,
            "per_task": per_task,
        });
        outln!("{report}")?;
    } else {
        outln!("{}", if last.is_some() { "\n" } else { "" })?;
    }
    if let Some([(acc, e), (chance, ce)]) = last {
        eprintln!("Final result: {acc:.4} +/- {e:.4}");
        eprintln!("Random chance: {chance:.4} +/- {ce:.4}");
    }
    Ok(())
}

/// A task benchmark's file: `-f`, required.
fn task_file<'a>(args: &'a PerplexityArgs, flag: &str) -> Result<&'a Path> {
    args.file.as_deref().ok_or_else(|| usage(format!("{flag} reads its tasks from a file: give -f FILE")))
}

/// The model, and the tokens one candidate may take (`-c`, else the model's context).
fn load_for_tasks(common: &Common, args: &PerplexityArgs) -> Result<(crate::commands::Loaded, usize)> {
    let m = common.load()?;
    let n_ctx = args.ctx_size.or(common.ctx).unwrap_or(m.model.config.context_length);
    Ok((m, n_ctx))
}
