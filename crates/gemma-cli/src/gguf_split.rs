//! `gemma gguf-split [--split|--merge] [options] GGUF_IN GGUF_OUT`: llama.cpp's `llama-gguf-split`, same files out.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gemma_io::gguf::split::{merge, SplitLimit, SplitPlan};
use gemma_io::GgufFile;

use crate::commands::usage;

#[derive(Args, Debug)]
#[command(after_help = "Split: GGUF_OUT is a prefix; the parts are GGUF_OUT-00001-of-0000N.gguf, ... (llama.cpp's \
    names), the first with all the metadata, every part with split.no, split.count and split.tensors.count. \
    The bytes are llama-gguf-split's. A split model is used by giving its first part to any command.\n\
    Merge: GGUF_IN is the first part, GGUF_OUT the file to make (it must not exist).\n\
    Parts are written to temporary files and renamed only when all are complete.")]
pub struct GgufSplitArgs {
    /// Split GGUF_IN into parts (the default).
    #[arg(long, conflicts_with = "merge")]
    pub split: bool,
    /// Merge the split model whose first part is GGUF_IN into the single file GGUF_OUT.
    #[arg(long)]
    pub merge: bool,
    /// At most N tensors per part (default: 128).
    #[arg(long, alias = "split_max_tensors", value_name = "N", conflicts_with = "split_max_size")]
    pub split_max_tensors: Option<i64>,
    /// At most this much tensor data per part, in decimal megabytes or gigabytes: e.g. 500M, 2G.
    #[arg(long, alias = "split_max_size", value_name = "N(M|G)")]
    pub split_max_size: Option<String>,
    /// Put no tensors in the first part (the metadata only).
    #[arg(long, alias = "no_tensor_first_split")]
    pub no_tensor_first_split: bool,
    /// Only print the plan (the parts, their tensor counts and sizes); write nothing.
    #[arg(long, alias = "dry_run")]
    pub dry_run: bool,
    /// The model to split, or the first part of the model to merge.
    #[arg(value_name = "GGUF_IN")]
    pub input: PathBuf,
    /// The prefix of the parts (split), or the merged file (merge).
    #[arg(value_name = "GGUF_OUT")]
    pub output: PathBuf,
}

/// llama-gguf-split's `split_str_to_n_bytes`: a positive integer and M or G, in powers of 1000.
fn parse_size(text: &str) -> Result<u64> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c @ ('M' | 'G'))) => (&text[..i], c),
        Some((_, c)) => {
            return Err(usage(format!(
                "--split-max-size: supported units are M (megabytes) or G (gigabytes), but got: {c}"
            )))
        }
        None => return Err(usage("--split-max-size: give a size such as 500M or 2G")),
    };
    let n: u64 = digits
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| usage(format!("--split-max-size: '{text}' is not a positive whole number of M or G")))?;
    let scale = if unit == 'M' { 1_000_000 } else { 1_000_000_000 };
    n.checked_mul(scale).ok_or_else(|| usage(format!("--split-max-size: '{text}' is too large")))
}

pub fn gguf_split(args: &GgufSplitArgs) -> Result<()> {
    if args.merge {
        if args.split_max_tensors.is_some() || args.split_max_size.is_some() || args.no_tensor_first_split {
            return Err(usage("--split-max-tensors, --split-max-size and --no-tensor-first-split are for --split"));
        }
        if !args.dry_run {
            crate::interrupt::remove_partial_outputs_on_ctrl_c(std::slice::from_ref(&args.output))?;
        }
        eprintln!("gguf_merge: {} -> {}", args.input.display(), args.output.display());
        let done = merge(&args.input, &args.output, args.dry_run)
            .with_context(|| format!("cannot merge {}", args.input.display()))?;
        eprintln!(
            "gguf_merge: {} merged from {} split with {} tensors.",
            args.output.display(),
            done.parts.len(),
            done.n_tensors
        );
        return Ok(());
    }
    let limit = match (args.split_max_tensors, &args.split_max_size) {
        (Some(n), _) => match usize::try_from(n) {
            Ok(n) if n > 0 => SplitLimit::Tensors(n),
            _ => return Err(usage(format!("--split-max-tensors must be at least 1, not {n}"))),
        },
        (None, Some(size)) => SplitLimit::Bytes(parse_size(size)?),
        (None, None) => SplitLimit::Tensors(128),
    };
    let file = GgufFile::open(&args.input).with_context(|| format!("cannot read model {}", args.input.display()))?;
    let plan = SplitPlan::new(&file, limit, args.no_tensor_first_split)
        .with_context(|| format!("cannot split {}", args.input.display()))?;
    outln!("n_split: {}", plan.parts().len())?;
    for (no, part) in plan.parts().iter().enumerate() {
        let size = plan.part_size(&file, no)?;
        outln!("split {:05}: n_tensors = {}, total_size = {}M", no + 1, part.tensors.len(), size / 1000 / 1000)?;
    }
    if !args.dry_run {
        let paths = plan.paths(&args.output);
        crate::interrupt::remove_partial_outputs_on_ctrl_c(&paths)?;
        plan.write(&file, &args.output, |path| eprintln!("writing {} ...", path.display()))
            .with_context(|| format!("cannot write the parts of {}", args.input.display()))?;
        eprintln!(
            "gguf_split: {} gguf split written with a total of {} tensors.",
            plan.parts().len(),
            file.tensors().len()
        );
    }
    Ok(())
}
