//! `gemma export-lora -m BASE.gguf --lora ADAPTER.gguf -o MERGED.gguf`: llama.cpp's `llama-export-lora`, the
//! adapters merged into the base model's weights (`gemma_core::convert::merge_lora`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gemma_core::convert::{merge_lora, ConvertError, MergeAdapter};
use gemma_io::gguf::lora::LoraFile;
use gemma_io::GgufFile;

use crate::commands::{usage, Common};

#[derive(Args, Debug)]
#[command(after_help = "The merged matrices are written as F16 (F32 where the base matrix is F32); every other \
    tensor is copied as it is. Quantize the result with `gemma quantize` if you want it smaller. Several \
    adapters must adapt the same tensors, as llama-export-lora requires.")]
pub struct ExportLoraArgs {
    /// Where to write the merged model (through a temp file, renamed when complete).
    #[arg(
        short = 'o',
        long = "output",
        visible_alias = "output-file",
        value_name = "FNAME",
        default_value = "ggml-lora-merged-f16.gguf"
    )]
    pub output: PathBuf,

    #[command(flatten)]
    pub lora: gemma_server::LoraArgs,
}

pub fn export_lora(common: &Common, args: &ExportLoraArgs) -> Result<()> {
    let adapters = args.lora.adapters().map_err(usage)?;
    if adapters.is_empty() {
        return Err(usage("nothing to merge: give the adapters with --lora FNAME or --lora-scaled FNAME:SCALE"));
    }
    let base_path = common.model_path()?;
    let base = GgufFile::open(&base_path).with_context(|| format!("cannot read base model {}", base_path.display()))?;
    let adapters = adapters
        .into_iter()
        .map(|(path, scale)| {
            let lora = LoraFile::open(&path).with_context(|| format!("cannot read LoRA adapter {}", path.display()))?;
            Ok(MergeAdapter { lora, scale })
        })
        .collect::<Result<Vec<_>>>()?;
    let pool = crate::commands::thread_pool(common.threads()?)?;
    let (bar, mut progress) = crate::convert::progress_bar("merging");
    crate::interrupt::remove_partial_output_on_ctrl_c(&args.output)?;
    let merged = merge_lora(&base, &adapters, &pool, &mut progress);
    let result = merged.and_then(|(writer, summary)| {
        writer.write_file(&args.output)?;
        Ok::<_, ConvertError>(summary)
    });
    bar.finish_and_clear();
    let summary = result.with_context(|| format!("merging LoRA adapters into {}", base_path.display()))?;
    outln!("merged {} tensors with lora adapters", summary.merged)?;
    outln!("wrote {} tensors to output file {}", summary.merged + summary.copied, args.output.display())?;
    Ok(())
}
