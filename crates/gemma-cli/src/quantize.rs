//! `gemma quantize IN.gguf OUT.gguf TYPE`: llama.cpp's `llama-quantize` for GGUF files, same bytes out.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gemma_core::quantize::{
    parse_tensor_type, quantize_file, FileType, ImatrixInput, QuantizeError, QuantizeOptions, TENSOR_TYPES,
};
use gemma_io::GgmlType;

use crate::commands::{usage, Common};

#[derive(Args, Debug)]
#[command(after_help = "Types: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q2_K_S Q3_K_S Q3_K_M Q3_K_L Q4_K_S \
    Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS (any case; Q3_K, Q4_K, Q5_K mean the _M mixtures; llama.cpp's \
    ftype numbers work too; Q2_K_S needs --imatrix).\n\
    The tensor types, the mixture rules (more bits for some attention-V and FFN-down layers) and the bytes \
    written are llama-quantize's, with or without an importance matrix. The other i-quants are not made.")]
pub struct QuantizeArgs {
    /// The GGUF file to quantize.
    pub input: PathBuf,
    /// Where to write the result (through a temp file, renamed when complete).
    pub output: PathBuf,
    /// The file type to make, as llama-quantize names it (e.g. Q4_K_M, Q8_0).
    #[arg(value_name = "TYPE")]
    pub file_type: String,
    /// Threads, as llama-quantize's last argument (the same as --threads).
    #[arg(value_name = "NTHREADS")]
    pub nthreads: Option<usize>,
    /// Quantize tensors that are already quantized (quality suffers against quantizing the 16/32-bit original).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Keep output.weight as it is.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// No k-quant mixture: every quantizable tensor gets TYPE's base type (row-width fallbacks still apply).
    #[arg(long)]
    pub pure: bool,
    /// The GGML type of output.weight (of the token embedding too when the model ties them), e.g. q8_0.
    #[arg(long, value_name = "GGML_TYPE")]
    pub output_tensor_type: Option<String>,
    /// The GGML type of token_embd.weight, e.g. q6_k.
    #[arg(long, value_name = "GGML_TYPE")]
    pub token_embedding_type: Option<String>,
    /// An importance matrix from llama-imatrix (GGUF, or the legacy .dat format): encode with its weights.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Use the importance matrix only for tensors whose names contain this (repeatable).
    #[arg(long, value_name = "NAME", conflicts_with = "exclude_weights")]
    pub include_weights: Vec<String>,
    /// Do not use the importance matrix for tensors whose names contain this (repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude_weights: Vec<String>,
}

fn tensor_type(flag: &str, text: &Option<String>) -> Result<Option<GgmlType>> {
    let Some(text) = text else { return Ok(None) };
    match parse_tensor_type(text) {
        Some(t) => Ok(Some(t)),
        None => {
            let names: Vec<&str> = TENSOR_TYPES.iter().map(|t| t.name()).collect();
            Err(usage(format!("{flag}: unknown or unsupported GGML type '{text}' (supported: {})", names.join(", "))))
        }
    }
}

pub fn quantize(common: &Common, args: &QuantizeArgs) -> Result<()> {
    let file_type = FileType::parse(&args.file_type).map_err(|e| usage(e.to_string()))?;
    let threads = match (common.threads, args.nthreads) {
        (Some(_), Some(_)) => return Err(usage("give the thread count once: --threads N or NTHREADS")),
        (None, Some(0)) => return Err(usage("NTHREADS must be at least 1")),
        (None, Some(n)) => n,
        _ => common.threads()?,
    };
    let options = QuantizeOptions {
        file_type,
        allow_requantize: args.allow_requantize,
        pure: args.pure,
        leave_output_tensor: args.leave_output_tensor,
        output_tensor_type: tensor_type("--output-tensor-type", &args.output_tensor_type)?,
        token_embedding_type: tensor_type("--token-embedding-type", &args.token_embedding_type)?,
        threads,
        imatrix: match &args.imatrix {
            Some(path) => Some(ImatrixInput::load(path, &args.include_weights, &args.exclude_weights)?),
            None if !args.include_weights.is_empty() || !args.exclude_weights.is_empty() => {
                return Err(usage("--include-weights / --exclude-weights need --imatrix FILE"))
            }
            None => None,
        },
    };
    let (bar, mut progress) = crate::convert::progress_bar(&format!("quantizing to {file_type}"));
    crate::interrupt::remove_partial_output_on_ctrl_c(&args.output)?;
    let result = quantize_file(&args.input, &args.output, &options, &mut progress);
    bar.finish_and_clear();
    let summary = match result {
        Ok(summary) => summary,
        // the user's choice, not a fault of the file: exit 2 like the other usage errors
        Err(
            e @ (QuantizeError::Requantize { .. }
            | QuantizeError::SameFile(_)
            | QuantizeError::RowWidth { .. }
            | QuantizeError::NeedsImatrix { .. }),
        ) => return Err(usage(e.to_string())),
        Err(e) => {
            return Err(e).with_context(|| format!("quantizing {} to {}", args.input.display(), args.output.display()))
        }
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let bpw = |b: u64| b as f64 * 8.0 / summary.n_elements.max(1) as f64;
    for t in summary.tensors.iter().filter(|t| t.fell_back_from.is_some()) {
        if let Some(wanted) = t.fell_back_from {
            eprintln!("{}: rows of {} do not fit {wanted} blocks, {} used", t.name, t.dims[0], t.to);
        }
    }
    outln!("quantized {} to {} as {file_type} with {threads} threads", args.input.display(), args.output.display())?;
    outln!("model size = {:8.2} MiB ({:.2} BPW)", mib(summary.bytes_in), bpw(summary.bytes_in))?;
    outln!("quant size = {:8.2} MiB ({:.2} BPW)", mib(summary.bytes_out), bpw(summary.bytes_out))?;
    if summary.n_fallbacks() > 0 {
        outln!("{} of {} tensors required fallback quantization", summary.n_fallbacks(), summary.tensors.len())?;
    }
    outln!("quantize time = {:8.2} ms", summary.elapsed.as_secs_f64() * 1000.0)?;
    Ok(())
}
