//! Command-line flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "gemma", version, about = "Run Gemma models on the CPU", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Model file (GGUF) or known model name; the default model is used (and pulled) when absent.
    #[arg(long = "weights", visible_alias = "model", short = 'm', global = true, value_name = "PATH|NAME")]
    pub model: Option<String>,

    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// Context length in tokens (default: the model's own).
    #[arg(long, global = true, value_name = "N")]
    pub ctx: Option<usize>,

    #[command(flatten)]
    pub generate: GenerateArgs,

    /// Print the token ids of TEXT (space separated) and exit.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["decode", "prompt", "prompt_file"])]
    pub encode: Option<String>,

    /// Print the text of the token ids (space or comma separated) and exit.
    #[arg(long, value_name = "IDS", conflicts_with_all = ["prompt", "prompt_file"])]
    pub decode: Option<String>,

    /// Print the model's configuration and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Print the compute backend in use (SIMD level, threads) and exit.
    #[arg(long)]
    pub print_backend: bool,

    /// Benchmark generation of --prompt (--max-tokens tokens) instead of printing it.
    #[arg(long)]
    pub bench: bool,

    /// Untimed runs before measuring (with --bench).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub bench_warmup: usize,

    /// Timed runs (with --bench).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub bench_iters: usize,

    /// Also write the --bench report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub bench_json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt, streaming it as it is produced.
    Run(GenerateArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Print the text of token ids (a JSON array, or ids separated by spaces or commas).
    Detokenize(DetokenizeArgs),
    /// Show the architecture, the metadata and the tensor table of a model.
    Info,
    /// Download a known model into the model cache.
    Pull(PullArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, in llama-bench's terms.
    Bench(BenchArgs),
    /// Run one teacher-forced pass and print the best logits after every input position, one JSON line each.
    Logits(LogitsArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct GenerateArgs {
    /// The prompt.
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Option<String>,

    /// Read the prompt from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,

    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 256, value_name = "N")]
    pub max_tokens: usize,

    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    pub temperature: f32,

    /// Keep the K most likely tokens (1 = greedy, 0 = all).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub top_k: usize,

    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,

    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub min_p: f32,

    /// Random seed (same seed, same text).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Print the text only when generation is done.
    #[arg(long)]
    pub no_stream: bool,

    /// Print one JSON object (ids, text, speeds) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The text to tokenize.
    #[arg(value_name = "TEXT", required_unless_present = "file", conflicts_with = "file")]
    pub text: Option<String>,
    /// Read the text from a file.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Do not add the BOS token.
    #[arg(long)]
    pub no_bos: bool,
    /// Treat special-token text (`<start_of_turn>`, ...) as plain text.
    #[arg(long)]
    pub no_special: bool,
}

#[derive(Args, Debug)]
pub struct DetokenizeArgs {
    /// Token ids: a JSON array, or ids separated by spaces or commas.
    #[arg(value_name = "IDS", num_args = 1.., required = true)]
    pub ids: Vec<String>,
    /// Render control tokens (`<bos>`, `<end_of_turn>`, ...) as text.
    #[arg(long)]
    pub special: bool,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Known model name (default: gemma-3-270m).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Re-hash a cached file even if its size is right.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Input token ids, comma separated (e.g. 2,651,...).
    #[arg(long, value_name = "IDS", required_unless_present = "prompt", conflicts_with = "prompt")]
    pub ids: Option<String>,
    /// Input text (tokenized with BOS and special tokens).
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Logits to print per position.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub top_k: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Prompt lengths to time (prompt processing, "pp").
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_values_t = [256usize], value_name = "N,..")]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to time (one token per step, "tg").
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_values_t = [64usize], value_name = "N,..")]
    pub n_gen: Vec<usize>,
    /// Thread counts to run each test with (default: --threads, or all cores).
    #[arg(short = 't', long = "bench-threads", value_delimiter = ',', value_name = "N,..")]
    pub thread_counts: Vec<usize>,
    /// Timed repetitions of each test (after one untimed warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_name = "N")]
    pub repetitions: usize,
    /// Tokens already in the context before each test starts.
    #[arg(short = 'd', long, default_value_t = 0, value_name = "D")]
    pub depth: usize,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}
