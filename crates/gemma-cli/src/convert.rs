//! `gemma convert`, `gemma migrate` and `gemma blob-compare`: gemma.cpp's SBS checkpoints and llama.cpp's GGUF
//! files, both ways.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use gemma_compression::SbsCodecType;
use gemma_core::convert::{
    blob_compare, gguf_to_sbs, migrate, sbs_to_gguf, BlobDifference, ConvertProgress, GgufOutputType, GgufToSbsOptions,
    SbsToGgufOptions,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The file to convert: a GGUF file (to SBS), an SBS checkpoint (to GGUF), or a sentence-transformers
    /// folder of EmbeddingGemma (to GGUF, llama.cpp's `gemma-embedding`).
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// Where to write the result (through a temp file, renamed when complete).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Weight type: to SBS sfp (default), bf16, f32, nuq or i8; to GGUF f32 (default, exact), f16, bf16 or q8_0.
    #[arg(long = "type", short = 't')]
    pub weight_type: Option<String>,
    /// To SBS: record the model as instruction-tuned (`it`) or pretrained (`pt`); default: `it` when the GGUF file
    /// has a chat template.
    #[arg(long)]
    pub wrapping: Option<String>,
    /// To GGUF: a `tokenizer.model` for SBS files without a tokenizer blob.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// A gemma.cpp checkpoint in the pre-2025 layout (or any SBS file).
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// The single-file checkpoint to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// The separate `tokenizer.spm` / `tokenizer.model` of pre-2025 checkpoints.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// For files without a config: the model is pretrained, not instruction-tuned.
    #[arg(long)]
    pub pretrained: bool,
}

#[derive(Args, Debug)]
pub struct BlobCompareArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// List every blob, not only those that differ.
    #[arg(long)]
    pub all: bool,
}

/// A progress bar driven by a file-writing command's per-tensor callback (`convert`, `quantize`,
/// `export-lora`); it says "writing" once every tensor is done.
pub(crate) fn progress_bar(what: &str) -> (ProgressBar, impl FnMut(ConvertProgress<'_>)) {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {wide_msg:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    let b = bar.clone();
    let callback = move |p: ConvertProgress<'_>| {
        b.set_length(p.total as u64);
        b.set_position(p.done as u64);
        if p.done == p.total {
            b.set_message("writing");
        }
    };
    (bar, callback)
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(&magic == b"GGUF")
}

fn sbs_type(name: &str) -> Result<SbsCodecType> {
    SbsCodecType::ALL
        .into_iter()
        .find(|t| t.name() == name.to_ascii_lowercase())
        .with_context(|| format!("unknown SBS type '{name}' (sfp, bf16, f32, nuq, i8)"))
}

pub fn convert(args: &ConvertArgs) -> Result<()> {
    if args.input == args.output {
        bail!("input and output are the same file");
    }
    crate::interrupt::remove_partial_output_on_ctrl_c(&args.output)?;
    if gemma_core::convert::is_model_folder(&args.input) {
        let name = args.weight_type.as_deref().unwrap_or("f32");
        let out_type = GgufOutputType::parse(name)
            .with_context(|| format!("unknown GGUF output type '{name}' (f32, f16, bf16, q8_0)"))?;
        let (bar, mut progress) = progress_bar(&format!("safetensors -> GGUF ({name})"));
        let writer = gemma_core::convert::sentence_transformers_gguf(&args.input, out_type, &mut progress)
            .with_context(|| format!("converting {}", args.input.display()))?;
        bar.set_message("writing");
        writer.write_file(&args.output).with_context(|| format!("writing {}", args.output.display()))?;
        bar.finish_and_clear();
        outln!("wrote {}", args.output.display())?;
        return Ok(());
    }
    if args.input.is_dir() {
        bail!(
            "{} is a folder without config.json and model.safetensors: give a model file, or an EmbeddingGemma \
             sentence-transformers folder",
            args.input.display()
        );
    }
    if is_gguf(&args.input)? {
        let weight_type = sbs_type(args.weight_type.as_deref().unwrap_or("sfp"))?;
        let wrapping = match args.wrapping.as_deref() {
            None => None,
            Some("it") => Some(gemma_io::sbs::PromptWrapping::GemmaIt),
            Some("pt") => Some(gemma_io::sbs::PromptWrapping::GemmaPt),
            Some(other) => bail!("--wrapping must be 'it' or 'pt', not '{other}'"),
        };
        let options = GgufToSbsOptions { weight_type, wrapping, ..GgufToSbsOptions::default() };
        let (bar, mut progress) = progress_bar(&format!("GGUF -> SBS ({weight_type})"));
        let config = gguf_to_sbs(&args.input, &args.output, &options, &mut progress)
            .with_context(|| format!("converting {}", args.input.display()))?;
        bar.finish_and_clear();
        let spec = config.specifier().unwrap_or_default();
        outln!("wrote {} ({spec})", args.output.display())?;
    } else {
        let name = args.weight_type.as_deref().unwrap_or("f32");
        let out_type = GgufOutputType::parse(name)
            .with_context(|| format!("unknown GGUF output type '{name}' (f32, f16, bf16, q8_0)"))?;
        let options = SbsToGgufOptions { out_type, tokenizer_path: args.tokenizer.clone() };
        let (bar, mut progress) = progress_bar(&format!("SBS -> GGUF ({name})"));
        sbs_to_gguf(&args.input, &args.output, &options, &mut progress)
            .with_context(|| format!("converting {}", args.input.display()))?;
        bar.finish_and_clear();
        outln!("wrote {}", args.output.display())?;
    }
    Ok(())
}

pub fn migrate_command(args: &MigrateArgs) -> Result<()> {
    crate::interrupt::remove_partial_output_on_ctrl_c(&args.output)?;
    let (bar, mut progress) = progress_bar("migrate");
    let pretrained = args.pretrained.then_some(true);
    let config = migrate(&args.input, &args.output, args.tokenizer.as_deref(), pretrained, &mut progress)
        .with_context(|| format!("migrating {}", args.input.display()))?;
    bar.finish_and_clear();
    outln!("wrote {} ({})", args.output.display(), config.specifier().unwrap_or_default())?;
    Ok(())
}

/// Prints the comparison; fails (exit status 1) when the files differ, as gemma.cpp's tool does.
pub fn blob_compare_command(args: &BlobCompareArgs) -> Result<()> {
    let cmp = blob_compare(&args.a, &args.b)?;
    for k in &cmp.only_in_a {
        outln!("{k}: only in {}", args.a.display())?;
    }
    for k in &cmp.only_in_b {
        outln!("{k}: only in {}", args.b.display())?;
    }
    let mut equal = 0;
    for (key, d) in &cmp.blobs {
        match d {
            BlobDifference::Equal => {
                equal += 1;
                if args.all {
                    outln!("{key}: equal")?;
                }
            }
            BlobDifference::Size { a, b } => outln!("{key}: size {a} vs {b} bytes")?,
            BlobDifference::Bytes { differing, bytes } => outln!("{key}: {differing} of {bytes} bytes differ")?,
            BlobDifference::Tensor(t) => outln!(
                "{key}: {} of {} values differ, max abs diff {:e}, mean abs diff {:e}",
                t.differing,
                t.elements,
                t.max_abs,
                t.mean_abs
            )?,
        }
    }
    outln!("{equal} of {} common blobs equal", cmp.blobs.len())?;
    if !cmp.identical() {
        bail!("the files differ");
    }
    Ok(())
}
