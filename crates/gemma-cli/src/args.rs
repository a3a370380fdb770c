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

    /// Where the model runs: `cpu` (the default and, in this build, the only backend). `cuda[:ORDINAL]`, the user
    /// guide's GPU device, is recognised and refused with a clear error: the CUDA backend is not built yet.
    #[arg(long, global = true, value_name = "cpu|cuda[:N]", value_parser = parse_device)]
    pub device: Option<Device>,

    /// RoPE base of the global-attention layers (default: the model's own). `10000` reproduces gemma.cpp on a
    /// Gemma 3 SBS file whose config predates its `use_global_timescale` flag.
    #[arg(long, global = true, value_name = "F")]
    pub rope_freq_base: Option<f32>,

    #[command(flatten)]
    pub generate: GenerateArgs,

    /// Print the token ids of TEXT (space separated) and exit.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["decode", "prompt", "prompt_file"])]
    pub encode: Option<String>,

    /// Print the text of the token ids (space or comma separated) and exit.
    #[arg(long, value_name = "IDS", conflicts_with_all = ["prompt", "prompt_file"])]
    pub decode: Option<String>,

    /// Chat with the model (same as `gemma chat`).
    #[arg(long, conflicts_with_all = ["prompt", "prompt_file", "encode", "decode", "bench"])]
    pub chat: bool,

    /// Stream answers as they are generated (with --chat; the default, accepted for the user guide).
    #[arg(long, requires = "chat")]
    pub stream: bool,

    /// System prompt (with --chat).
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,

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

/// A compute device as the user guide names it (`--device cpu`, `--device cuda`, `--device cuda:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda { ordinal: u32 },
}

fn parse_device(s: &str) -> Result<Device, String> {
    match s.split_once(':') {
        None if s == "cpu" => Ok(Device::Cpu),
        None if s == "cuda" => Ok(Device::Cuda { ordinal: 0 }),
        Some(("cuda", n)) => n
            .parse()
            .map(|ordinal| Device::Cuda { ordinal })
            .map_err(|_| format!("'{n}' is not a device ordinal (cuda:0, cuda:1, ...)")),
        _ => Err("expected cpu, cuda or cuda:N".to_string()),
    }
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
    /// Turn texts into embedding vectors with an embedding model (EmbeddingGemma), one per input.
    Embed(EmbedArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, in llama-bench's terms.
    Bench(BenchArgs),
    /// Run one teacher-forced pass and print the best logits after every input position, one JSON line each.
    Logits(LogitsArgs),
    /// Chat with the model, turn by turn, keeping the context between turns (`/help` lists the commands).
    Chat(ChatArgs),
    /// Measure the model's perplexity over a text, or its KL divergence from a base model's saved
    /// log-probabilities, as llama.cpp's `llama-perplexity`.
    Perplexity(crate::perplexity::PerplexityArgs),
    /// Show the CPU, the SIMD kernels chosen, the quantization types supported, the build features and the
    /// cached models.
    Sysinfo(SysinfoArgs),
    /// Run the OpenAI- and Gemini-compatible HTTP server (the same as the `gemma-server` binary).
    Serve(gemma_server::ServeArgs),
    /// Chat with a running server from the terminal (or from piped lines), streaming each answer.
    Client(gemma_server::client::ClientArgs),
    /// Convert a GGUF file to a gemma.cpp SBS checkpoint or back (the direction follows the input file).
    Convert(crate::convert::ConvertArgs),
    /// Rewrite an old multi-file gemma.cpp checkpoint as one single-file SBS checkpoint.
    Migrate(crate::convert::MigrateArgs),
    /// Compare two SBS files blob by blob (tensors: max/mean abs difference and number of differing values).
    BlobCompare(crate::convert::BlobCompareArgs),
    /// Quantize a GGUF file as llama.cpp's llama-quantize does, to the same bytes (with or without an
    /// importance matrix).
    Quantize(crate::quantize::QuantizeArgs),
    /// Compute an importance matrix over a text, as llama.cpp's llama-imatrix does, for `quantize --imatrix`.
    Imatrix(crate::imatrix::ImatrixArgs),
    /// Split a GGUF model into parts, or merge the parts back, as llama.cpp's llama-gguf-split does, to the same
    /// bytes.
    GgufSplit(crate::gguf_split::GgufSplitArgs),
    /// Merge LoRA adapters into the model's weights and write the result as a new GGUF, as llama.cpp's
    /// llama-export-lora does (-m BASE --lora ADAPTER -o OUT).
    ExportLora(crate::export_lora::ExportLoraArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct GenerateArgs {
    /// The prompt.
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Option<String>,

    /// Read the prompt from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Print the text only when generation is done.
    #[arg(long)]
    pub no_stream: bool,

    /// Print one JSON object (ids, text, speeds) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,

    /// With --json: the log-probability of each generated token and the N most likely alternatives.
    #[arg(long, value_name = "N", requires = "json")]
    pub logprobs: Option<usize>,

    /// Keep the prompt's evaluated state (its KV cache) in FILE and start from it next time: the part of a
    /// new prompt that begins as the saved one did is not evaluated again (llama.cpp's --prompt-cache).
    #[arg(long, value_name = "FILE")]
    pub prompt_cache: Option<PathBuf>,

    /// With --prompt-cache: save the generated tokens too, not only the prompt.
    #[arg(long, requires = "prompt_cache")]
    pub prompt_cache_all: bool,

    /// With --prompt-cache: use the file but never write it.
    #[arg(long, requires = "prompt_cache", conflicts_with = "prompt_cache_all")]
    pub prompt_cache_ro: bool,

    /// When the context is full, forget half of the tokens after the first --keep and go on generating
    /// (llama.cpp's --context-shift) instead of stopping.
    #[arg(long)]
    pub context_shift: bool,

    /// With --context-shift: how many prompt tokens after BOS are never forgotten; -1 keeps the whole prompt.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true, requires = "context_shift")]
    pub keep: i64,

    #[command(flatten)]
    pub spec: gemma_server::SpecArgs,

    #[command(flatten)]
    pub lora: gemma_server::LoraArgs,

    #[command(flatten)]
    pub cache_types: gemma_server::CacheTypeArgs,
}

/// The `--help` section of llama.cpp's sampling flags.
const EXTRAS: &str = "Sampling extras (llama.cpp's flags)";

/// How tokens are chosen (shared by `run`, `chat` and the guide's flags).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Tokens to generate at most; -1: no limit (until an end-of-generation token or the context's end, or
    /// for ever with --context-shift).
    #[arg(long, short = 'n', default_value_t = 256, value_name = "N", allow_negative_numbers = true, value_parser = parse_max_tokens)]
    pub max_tokens: usize,

    /// Sampling temperature; 0 is greedy.
    #[arg(long, visible_alias = "temp", default_value_t = 1.0, value_name = "T")]
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

    /// Random seed: the same seed gives the same text, and llama.cpp's text where the two engines'
    /// probabilities agree (its random draws); -1 is a random seed, as in llama.cpp.
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<u64>,

    /// Penalize repeated tokens: divide their positive logits (multiply negative ones) by P; 1 is off.
    #[arg(long, default_value_t = 1.0, value_name = "P", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub repeat_penalty: f32,

    /// How many of the latest tokens the penalties look at (0 off, -1 the whole context).
    #[arg(long, default_value_t = 64, value_name = "N", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub repeat_last_n: i64,

    /// Subtract P once from the logit of every token seen in the window; 0 is off.
    #[arg(long, default_value_t = 0.0, value_name = "P", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub presence_penalty: f32,

    /// Subtract P per occurrence from the logit of every token seen in the window; 0 is off.
    #[arg(long, default_value_t = 0.0, value_name = "P", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub frequency_penalty: f32,

    /// Mirostat sampling: 0 off, 1 Mirostat, 2 Mirostat 2.0 (replaces the sampler chain).
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = EXTRAS)]
    pub mirostat: u8,

    /// Mirostat learning rate (eta).
    #[arg(long, default_value_t = 0.1, value_name = "ETA", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub mirostat_lr: f32,

    /// Mirostat target entropy (tau).
    #[arg(long, default_value_t = 5.0, value_name = "TAU", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub mirostat_ent: f32,

    /// Sampler chain, names in order separated by ';'
    /// (default "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature").
    #[arg(long, value_name = "LIST", conflicts_with = "sampling_seq", help_heading = EXTRAS)]
    pub samplers: Option<String>,

    /// Sampler chain as letters (default "edskypmxt"): e=penalties d=dry s=top_n_sigma k=top_k y=typ_p
    /// p=top_p m=min_p x=xtc t=temperature.
    #[arg(long, visible_alias = "sampler-seq", value_name = "LETTERS", help_heading = EXTRAS)]
    pub sampling_seq: Option<String>,

    /// Add BIAS to a token's logit, as ID+BIAS or ID-BIAS (ID-inf bans it); repeatable.
    #[arg(long, short = 'l', value_name = "ID(+|-)BIAS", help_heading = EXTRAS)]
    pub logit_bias: Vec<String>,

    /// Locally typical sampling with parameter P; 1 is off.
    #[arg(
        long = "typical",
        default_value_t = 1.0,
        value_name = "P",
        allow_negative_numbers = true,
        help_heading = EXTRAS
    )]
    pub typical_p: f32,

    /// Keep tokens within N standard deviations of the best logit; -1 is off.
    #[arg(
        long = "top-nsigma",
        default_value_t = -1.0,
        value_name = "N",
        allow_negative_numbers = true,
        help_heading = EXTRAS
    )]
    pub top_n_sigma: f32,

    /// XTC: chance of removing the most likely tokens at a step; 0 is off.
    #[arg(long, default_value_t = 0.0, value_name = "P", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub xtc_probability: f32,

    /// XTC: tokens at least this likely are removed (all but the least likely of them); above 0.5 is off.
    #[arg(long, default_value_t = 0.1, value_name = "P", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub xtc_threshold: f32,

    /// Dynamic temperature: a temperature within T ± N, higher where the candidates are flatter; 0 is off.
    #[arg(long, default_value_t = 0.0, value_name = "N", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub dynatemp_range: f32,

    /// Dynamic temperature: the exponent applied to the normalised entropy.
    #[arg(long = "dynatemp-exp", default_value_t = 1.0, value_name = "N", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub dynatemp_exponent: f32,

    /// DRY ("don't repeat yourself"): penalty of a token that would extend a repeat past the allowed
    /// length, multiplied by the base per further token; 0 is off.
    #[arg(long, default_value_t = 0.0, value_name = "N", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub dry_multiplier: f32,

    /// DRY: the penalty's growth per token of repeat; values below 1 are ignored, as in llama.cpp.
    #[arg(long, default_value_t = 1.75, value_name = "N", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub dry_base: f32,

    /// DRY: repeats of up to N tokens are not penalized.
    #[arg(long, default_value_t = 2, value_name = "N", help_heading = EXTRAS)]
    pub dry_allowed_length: u32,

    /// DRY: how many of the latest tokens are scanned for repeats (0 off, -1 the whole context).
    #[arg(long, default_value_t = 64, value_name = "N", allow_negative_numbers = true, help_heading = EXTRAS)]
    pub dry_penalty_last_n: i32,

    /// DRY: a text that ends a repeat; the first use replaces the defaults ('\n', ':', '"', '*'), "none"
    /// clears them all; `\n`-style escapes as in llama.cpp; repeatable.
    #[arg(long = "dry-sequence-breaker", value_name = "STRING", help_heading = EXTRAS)]
    pub dry_sequence_breakers: Vec<String>,

    /// A GBNF grammar (llama.cpp's notation, start rule `root`) the output must follow.
    #[arg(long, value_name = "GRAMMAR", conflicts_with_all = ["grammar_file", "json_schema", "json_schema_file"], help_heading = EXTRAS)]
    pub grammar: Option<String>,

    /// --grammar, read from a file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json_schema", "json_schema_file"], help_heading = EXTRAS)]
    pub grammar_file: Option<std::path::PathBuf>,

    /// A JSON Schema the output must follow (turned into a grammar as llama.cpp does), e.g. '{}' for any
    /// JSON value.
    #[arg(long, short = 'j', value_name = "SCHEMA", conflicts_with = "json_schema_file", help_heading = EXTRAS)]
    pub json_schema: Option<String>,

    /// --json-schema, read from a file.
    #[arg(long, visible_alias = "jf", value_name = "FILE", help_heading = EXTRAS)]
    pub json_schema_file: Option<std::path::PathBuf>,

    /// Never end at an end-of-generation token (EOS, <end_of_turn>, ...): generate until another limit.
    #[arg(long, help_heading = EXTRAS)]
    pub ignore_eos: bool,

    /// Stop where TEXT appears in the output (not shown); `\n`, `\t`, `\xHH` escapes as in llama.cpp; repeatable.
    #[arg(long = "reverse-prompt", short = 'r', visible_alias = "stop", value_name = "TEXT", help_heading = EXTRAS)]
    pub stop: Vec<String>,
}

impl Default for SamplingArgs {
    /// The same defaults as the flags.
    fn default() -> Self {
        SamplingArgs {
            max_tokens: 256,
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            mirostat: 0,
            mirostat_lr: 0.1,
            mirostat_ent: 5.0,
            samplers: None,
            sampling_seq: None,
            logit_bias: Vec::new(),
            typical_p: 1.0,
            top_n_sigma: -1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 64,
            dry_sequence_breakers: Vec::new(),
            grammar: None,
            grammar_file: None,
            json_schema: None,
            json_schema_file: None,
            ignore_eos: false,
            stop: Vec::new(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// System prompt (for Gemma it is put before the first user message).
    #[arg(long, short = 's', value_name = "TEXT")]
    pub system: Option<String>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// When an answer fills the context, forget half of the tokens after the first --keep and go on
    /// (llama.cpp's --context-shift) instead of stopping.
    #[arg(long)]
    pub context_shift: bool,

    /// With --context-shift: how many tokens after BOS are never forgotten (the system prompt's, say).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "context_shift")]
    pub keep: usize,

    #[command(flatten)]
    pub spec: gemma_server::SpecArgs,

    #[command(flatten)]
    pub lora: gemma_server::LoraArgs,

    #[command(flatten)]
    pub cache_types: gemma_server::CacheTypeArgs,
}

#[derive(Args, Debug)]
pub struct SysinfoArgs {
    /// Print one JSON object instead of text.
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
pub struct EmbedArgs {
    /// The texts to embed, one input each (EmbeddingGemma's task prompts are part of the text, e.g.
    /// "task: search result | query: ..." or "title: none | text: ...").
    #[arg(value_name = "TEXT", required_unless_present = "file")]
    pub texts: Vec<String>,
    /// Read the inputs from a file, one per line (empty lines skipped); `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print one JSON object in the OpenAI embeddings response format instead of one line of numbers per
    /// input.
    #[arg(long)]
    pub json: bool,
    /// Keep the first N values of each vector, normalised again (Matryoshka: 512, 256 or 128 for
    /// EmbeddingGemma).
    #[arg(long, value_name = "N")]
    pub dimensions: Option<usize>,
    /// Print the cosine similarity of every pair of inputs (a matrix) instead of the vectors.
    #[arg(long, conflicts_with = "json")]
    pub similarity: bool,
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

    #[command(flatten)]
    pub lora: gemma_server::LoraArgs,

    #[command(flatten)]
    pub cache_types: gemma_server::CacheTypeArgs,
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
    /// Tokens already in the context before each test starts; each test runs at each depth.
    #[arg(short = 'd', long = "n-depth", visible_alias = "depth", value_delimiter = ',', default_values_t = [0usize], value_name = "D,..")]
    pub depths: Vec<usize>,
    /// A prompt of PP tokens then TG generated ones, timed together (llama-bench's `-pg`; repeatable).
    #[arg(long = "pg", value_name = "PP,TG", value_parser = parse_pp_tg)]
    pub prompt_gen: Vec<(usize, usize)>,
    /// Sequences decoded together in the generation tests (one token each per step, as the server batches
    /// its streams); tokens/s counts all of them.
    #[arg(short = 's', long = "sequences", value_delimiter = ',', default_values_t = [1usize], value_name = "N,..")]
    pub sequences: Vec<usize>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print the results in llama-bench's format instead of this command's table: its markdown table
    /// (`md`), `csv`, `json` or `jsonl`, with its field names.
    #[arg(short = 'o', long = "output", value_name = "md|csv|json|jsonl")]
    pub output: Option<BenchOutput>,

    #[command(flatten)]
    pub lora: gemma_server::LoraArgs,

    /// Types of the KV cache's keys to bench (llama-bench's -ctk; several run one after another).
    #[arg(long = "cache-type-k", visible_alias = "ctk", value_delimiter = ',', default_values = ["f32"], value_name = "TYPE,..", value_parser = gemma_server::parse_cache_type)]
    pub cache_type_k: Vec<gemma_core::KvType>,
    /// Types of the KV cache's values to bench (llama-bench's -ctv).
    #[arg(long = "cache-type-v", visible_alias = "ctv", value_delimiter = ',', default_values = ["f32"], value_name = "TYPE,..", value_parser = gemma_server::parse_cache_type)]
    pub cache_type_v: Vec<gemma_core::KvType>,
}

/// llama-bench's output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOutput {
    Md,
    Csv,
    Json,
    Jsonl,
}

/// `PP,TG`: two token counts.
fn parse_pp_tg(s: &str) -> Result<(usize, usize), String> {
    let (pp, tg) = s.split_once(',').ok_or_else(|| format!("'{s}' is not PP,TG (two numbers with a comma)"))?;
    let number = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("'{v}' in '{s}' is not a token count"));
    Ok((number(pp)?, number(tg)?))
}

/// A seed as llama.cpp reads one: any 64-bit integer, negative ones wrapping (so -1 is `0xFFFF...`, which
/// the sampler takes as "random", like llama.cpp's `LLAMA_DEFAULT_SEED`).
fn parse_max_tokens(s: &str) -> Result<usize, String> {
    match s.parse::<i64>() {
        Ok(-1) => Ok(usize::MAX),
        Ok(n) => usize::try_from(n).map_err(|_| format!("'{s}' must be -1 (no limit) or a count of tokens")),
        Err(_) => Err(format!("'{s}' is not an integer")),
    }
}

fn parse_seed(s: &str) -> Result<u64, String> {
    s.parse::<u64>().or_else(|_| s.parse::<i64>().map(|v| v as u64)).map_err(|_| format!("'{s}' is not an integer"))
}
