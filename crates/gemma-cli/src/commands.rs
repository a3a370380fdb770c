//! What each command does.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gemma_core::generate::tokens_per_second;
use gemma_core::sampling::{parse_logit_bias, Mirostat, Sampler, SamplerStage, SamplingError, TokenLogprob};
use gemma_core::{ContextShift, GenerationOptions, LoadOptions, Model, SamplingParams, Session, Tokenizer};
use gemma_ops::ThreadPool;

use crate::args::{
    ChatArgs, Cli, Command, DetokenizeArgs, GenerateArgs, LogitsArgs, PullArgs, SamplingArgs, TokenizeArgs,
};

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The model and what runs it, loaded once per command.
pub(crate) struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub pool: ThreadPool,
    pub ctx: usize,
}

pub(crate) struct Common {
    pub model: Option<String>,
    pub threads: Option<usize>,
    pub ctx: Option<usize>,
    pub load_options: LoadOptions,
    /// LoRA adapters to load with the model, and their scales (`--lora`, `--lora-scaled`).
    pub loras: Vec<(PathBuf, f32)>,
    /// Types of the KV cache's keys and values (`--cache-type-k`, `--cache-type-v`).
    pub cache_types: (gemma_core::KvType, gemma_core::KvType),
}

impl Common {
    /// Opens the model at `path` with the configuration flags applied.
    pub(crate) fn open_model(&self, path: &std::path::Path) -> Result<Model> {
        let mut model = Model::open_with(path, &self.load_options)
            .with_context(|| format!("cannot load model {}", path.display()))?;
        model.set_cache_types(self.cache_types.0, self.cache_types.1)?;
        for (adapter, scale) in &self.loras {
            model
                .load_lora(adapter, *scale)
                .with_context(|| format!("cannot load LoRA adapter {}", adapter.display()))?;
        }
        Ok(model)
    }

    pub(crate) fn model_path(&self) -> Result<PathBuf> {
        let name = self.model.as_deref().unwrap_or(gemma_fetch::DEFAULT_MODEL);
        gemma_fetch::resolve_model(name).with_context(|| format!("cannot find model '{name}'"))
    }

    pub(crate) fn threads(&self) -> Result<usize> {
        match self.threads {
            Some(0) => Err(usage("--threads must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }

    /// Loads a generative model (an embedding model is refused: it makes vectors, not text).
    pub(crate) fn load(&self) -> Result<Loaded> {
        let loaded = self.load_any()?;
        if loaded.model.is_embedding_model() {
            return Err(gemma_core::ModelError::EmbeddingModel(loaded.model.config.name.clone()).into());
        }
        Ok(loaded)
    }

    /// Loads whatever model the flags name.
    pub(crate) fn load_any(&self) -> Result<Loaded> {
        let path = self.model_path()?;
        let model = self.open_model(&path)?;
        let tokenizer =
            model.tokenizer().with_context(|| format!("cannot load the tokenizer of {}", path.display()))?;
        let ctx = match self.ctx {
            Some(0) => return Err(usage("--ctx must be at least 1")),
            Some(c) => c.min(model.config.context_length),
            None => model.config.context_length,
        };
        Ok(Loaded { model, tokenizer, pool: thread_pool(self.threads()?)?, ctx })
    }

    fn load_tokenizer(&self) -> Result<Tokenizer> {
        let path = self.model_path()?;
        if gemma_core::model::is_sbs_file(&path) || gemma_core::convert::is_model_folder(&path) {
            // gemma.cpp checkpoints carry their tokenizer as a SentencePiece blob; model folders hold a
            // tokenizer.model and settings the loader reads.
            let model = Model::open(&path).with_context(|| format!("cannot load model {}", path.display()))?;
            return model.tokenizer().with_context(|| format!("cannot load the tokenizer of {}", path.display()));
        }
        let file = gemma_io::GgufFile::open(&path).with_context(|| format!("cannot read model {}", path.display()))?;
        Tokenizer::from_gguf(&file).with_context(|| format!("cannot load the tokenizer of {}", path.display()))
    }
}

pub fn dispatch(cli: Cli) -> Result<()> {
    if let Some(crate::args::Device::Cuda { ordinal }) = cli.device {
        return Err(usage(format!(
            "--device cuda:{ordinal}: this gemma has no GPU backend (the CUDA backend is not built yet, see \
             docs/STATUS.md); leave --device out or give --device cpu"
        )));
    }
    let lora = match &cli.command {
        Some(Command::Run(a)) => Some(&a.lora),
        Some(Command::Chat(a)) => Some(&a.lora),
        Some(Command::Logits(a)) => Some(&a.lora),
        Some(Command::Bench(a)) => Some(&a.lora),
        Some(Command::Perplexity(a)) => Some(&a.lora),
        None => Some(&cli.generate.lora),
        _ => None,
    };
    let loras = lora.map(|l| l.adapters()).transpose().map_err(usage)?.unwrap_or_default();
    let cache_types = match &cli.command {
        Some(Command::Run(a)) => a.cache_types.types(),
        Some(Command::Chat(a)) => a.cache_types.types(),
        Some(Command::Logits(a)) => a.cache_types.types(),
        Some(Command::Perplexity(a)) => a.cache_types.types(),
        None => cli.generate.cache_types.types(),
        _ => Default::default(),
    };
    let common = Common {
        model: cli.model.clone(),
        threads: cli.threads,
        ctx: cli.ctx,
        load_options: LoadOptions { rope_freq_base: cli.rope_freq_base },
        loras,
        cache_types,
    };
    match cli.command {
        Some(Command::Run(args)) => generate(&common, &args),
        Some(Command::Tokenize(args)) => tokenize(&common, &args),
        Some(Command::Detokenize(args)) => detokenize(&common, &args),
        Some(Command::Info) => info(&common),
        Some(Command::Pull(args)) => pull(&args),
        Some(Command::Embed(args)) => crate::embed::embed(&common, &args),
        Some(Command::Logits(args)) => logits(&common, &args),
        Some(Command::Bench(args)) => crate::bench::bench(&common, &args),
        Some(Command::Chat(args)) => crate::chat::chat(&common, &args),
        Some(Command::Perplexity(args)) => crate::perplexity::perplexity(&common, &args),
        Some(Command::Sysinfo(args)) => crate::sysinfo::sysinfo(&args),
        Some(Command::Serve(args)) => crate::serve::serve(&common, args),
        Some(Command::Client(args)) => crate::serve::client(&args),
        Some(Command::Convert(args)) => crate::convert::convert(&args),
        Some(Command::Migrate(args)) => crate::convert::migrate_command(&args),
        Some(Command::BlobCompare(args)) => crate::convert::blob_compare_command(&args),
        Some(Command::Quantize(args)) => crate::quantize::quantize(&common, &args),
        Some(Command::Imatrix(args)) => crate::imatrix::imatrix(&common, &args),
        Some(Command::GgufSplit(args)) => crate::gguf_split::gguf_split(&args),
        Some(Command::ExportLora(args)) => crate::export_lora::export_lora(&common, &args),
        None => {
            if cli.chat {
                let args = ChatArgs {
                    lora: cli.generate.lora.clone(),
                    cache_types: cli.generate.cache_types,
                    system: cli.system.clone(),
                    sampling: cli.generate.sampling.clone(),
                    context_shift: cli.generate.context_shift,
                    // A chat keeps no whole prompt: -1 keeps BOS only.
                    keep: usize::try_from(cli.generate.keep).unwrap_or(0),
                    spec: cli.generate.spec.clone(),
                };
                crate::chat::chat(&common, &args)
            } else if let Some(text) = &cli.encode {
                let tok = common.load_tokenizer()?;
                let ids = tok.encode_input(text, true);
                outln!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "))?;
                Ok(())
            } else if let Some(ids) = &cli.decode {
                let tok = common.load_tokenizer()?;
                outln!("{}", tok.decode(&parse_ids(std::slice::from_ref(ids))?, false))?;
                Ok(())
            } else if cli.print_config {
                let model = common.open_model(&common.model_path()?)?;
                outln!("{}", model.config.summary())?;
                Ok(())
            } else if cli.bench {
                crate::bench::guide_bench(&common, &cli)
            } else if cli.print_backend {
                print_backend(&common)
            } else if cli.generate.prompt.is_some() || cli.generate.prompt_file.is_some() {
                generate(&common, &cli.generate)
            } else {
                Err(usage("nothing to do: give --prompt (or a subcommand such as `gemma run`); see `gemma --help`"))
            }
        }
    }
}

fn print_backend(common: &Common) -> Result<()> {
    outln!("device: cpu")?;
    outln!("simd: {}", gemma_compression::simd_level())?;
    outln!("threads: {}", common.threads()?)?;
    Ok(())
}

pub(crate) fn read_prompt(args: &GenerateArgs) -> Result<String> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read prompt file {}", f.display()))
        }
        (None, None) => Err(usage("give a prompt with --prompt TEXT or --prompt-file FILE")),
    }
}

/// Checks the sampling flags and turns them into generation options. `--ignore-eos` needs the
/// tokenizer, so it is applied later by [`fit_options_to_model`].
pub(crate) fn generation_options(args: &SamplingArgs) -> Result<GenerationOptions> {
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return Err(usage("--top-p must be in (0, 1]"));
    }
    let penalty_last_n = match args.repeat_last_n {
        // The window never holds more than the sequence, which never outgrows the context.
        -1 => usize::MAX,
        n => usize::try_from(n).map_err(|_| usage(format!("--repeat-last-n must be -1 or more, got {n}")))?,
    };
    let mirostat = Mirostat::try_from(args.mirostat).map_err(|e| usage(format!("--mirostat: {e}")))?;
    let samplers = match (&args.samplers, &args.sampling_seq) {
        (Some(names), _) => SamplerStage::parse_names(names).map_err(|e| usage(format!("--samplers: {e}")))?,
        (None, Some(letters)) => {
            SamplerStage::parse_letters(letters).map_err(|e| usage(format!("--sampling-seq: {e}")))?
        }
        (None, None) => SamplerStage::DEFAULT_CHAIN.to_vec(),
    };
    let logit_bias = args
        .logit_bias
        .iter()
        .map(|b| parse_logit_bias(b).map_err(|e| usage(format!("--logit-bias: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        seed: args.seed,
        penalty_last_n,
        repeat_penalty: args.repeat_penalty,
        frequency_penalty: args.frequency_penalty,
        presence_penalty: args.presence_penalty,
        logit_bias,
        typical_p: args.typical_p,
        top_n_sigma: args.top_n_sigma,
        xtc_probability: args.xtc_probability,
        xtc_threshold: args.xtc_threshold,
        dynatemp_range: args.dynatemp_range,
        dynatemp_exponent: args.dynatemp_exponent,
        mirostat,
        mirostat_tau: args.mirostat_ent,
        mirostat_eta: args.mirostat_lr,
        dry_multiplier: args.dry_multiplier,
        // llama.cpp ignores a base below 1 (the sampler would be off).
        dry_base: if args.dry_base >= 1.0 { args.dry_base } else { SamplingParams::default().dry_base },
        dry_allowed_length: args.dry_allowed_length,
        dry_penalty_last_n: args.dry_penalty_last_n,
        dry_sequence_breakers: dry_sequence_breakers(&args.dry_sequence_breakers),
        samplers,
        grammar: grammar(args)?,
        ..Default::default()
    };
    sampling.validate().map_err(|e| usage(flag_error(&e)))?;
    if let Some(empty) = args.stop.iter().position(String::is_empty) {
        return Err(usage(format!("--reverse-prompt/--stop: stop string {} is empty", empty + 1)));
    }
    let stop = args.stop.iter().map(|s| process_escapes(s)).collect();
    Ok(GenerationOptions { max_tokens: args.max_tokens, sampling, stop, ..Default::default() })
}

/// The grammar of `--grammar`, `--grammar-file`, `--json-schema` or `--json-schema-file` (clap lets only one
/// through).
fn grammar(args: &SamplingArgs) -> Result<Option<String>> {
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    let schema = match (&args.grammar, &args.grammar_file, &args.json_schema, &args.json_schema_file) {
        (Some(g), ..) => return Ok(Some(g.clone())),
        (_, Some(path), ..) => return read(path, "--grammar-file").map(Some),
        (_, _, Some(text), _) => (text.clone(), "--json-schema"),
        (_, _, _, Some(path)) => (read(path, "--json-schema-file")?, "--json-schema-file"),
        _ => return Ok(None),
    };
    let (text, flag) = schema;
    let converted = gemma_core::grammar::convert_json_schema_text(&text).map_err(|e| usage(format!("{flag}: {e}")))?;
    // What the grammar could not express (llama.cpp prints the same warnings): e.g. a `pattern` it accepts
    // any string for.
    for warning in &converted.warnings {
        eprintln!("warning: {flag}: {warning}");
    }
    Ok(Some(converted.grammar))
}

/// `--dry-sequence-breaker` as llama.cpp reads it: none given keeps the defaults; the first one given
/// replaces them; "none" clears every breaker before it; escapes (`\n`) are processed.
fn dry_sequence_breakers(args: &[String]) -> Vec<String> {
    if args.is_empty() {
        return SamplingParams::default().dry_sequence_breakers;
    }
    let mut breakers = Vec::new();
    for arg in args {
        if arg == "none" {
            breakers.clear();
        } else {
            breakers.push(process_escapes(arg));
        }
    }
    breakers
}

/// llama.cpp's `--escape` treatment of reverse prompts, so that `--stop '\n'` typed in a shell means a
/// newline: `\n`, `\r`, `\t`, `\'`, `\"`, `\\` and `\xHH` (ASCII only: a lone byte above 0x7F is not
/// text); any other backslash is kept as it is.
fn process_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let rest = chars.as_str();
        let hex = rest
            .strip_prefix('x')
            .and_then(|h| h.get(..2))
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match rest.chars().next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(q @ ('\'' | '"' | '\\')) => out.push(q),
            Some('x') if hex.is_some_and(|b| b.is_ascii()) => {
                out.push(char::from(hex.unwrap_or_default()));
                chars.nth(2);
                continue;
            }
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars.next();
    }
    out
}

/// Words a [`SamplingParams::validate`] error in terms of the flag the user typed.
fn flag_error(e: &SamplingError) -> String {
    if let SamplingError::Grammar(e) = e {
        return format!("--grammar: {e}");
    }
    let SamplingError::BadValue { name, requirement, value } = e else {
        return e.to_string();
    };
    let flag = match *name {
        "temperature" => "--temperature",
        "top_p" => "--top-p",
        "min_p" => "--min-p",
        "repeat_penalty" => "--repeat-penalty",
        "frequency_penalty" => "--frequency-penalty",
        "presence_penalty" => "--presence-penalty",
        "typical_p" => "--typical",
        "top_n_sigma" => "--top-nsigma",
        "xtc_probability" => "--xtc-probability",
        "xtc_threshold" => "--xtc-threshold",
        "dynatemp_range" => "--dynatemp-range",
        "dynatemp_exponent" => "--dynatemp-exp",
        "mirostat_tau" => "--mirostat-ent",
        "mirostat_eta" => "--mirostat-lr",
        "logit_bias" => "--logit-bias",
        "dry_multiplier" => "--dry-multiplier",
        "dry_base" => "--dry-base",
        "dry_penalty_last_n" => "--dry-penalty-last-n",
        other => other,
    };
    format!("{flag} must be {requirement}, got {value}")
}

/// The part of the sampling flags that needs the model's tokenizer: `--logit-bias` ids must be in the
/// vocabulary (an id outside it is a typo, not something to ignore), and `--ignore-eos` bans every
/// end-of-generation token (llama.cpp's −inf logit bias).
pub(crate) fn fit_options_to_model(
    opts: &mut GenerationOptions,
    args: &SamplingArgs,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let vocab = tokenizer.vocab_size();
    if let Some((id, _)) = opts.sampling.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
        return Err(usage(format!("--logit-bias: token id {id} is outside the vocabulary of {vocab} tokens")));
    }
    if args.ignore_eos {
        opts.sampling.logit_bias.extend(tokenizer.end_of_generation_ids().map(|id| (id, f32::NEG_INFINITY)));
    }
    Ok(())
}

/// Loads the draft model of `--spec-draft-model` into the speculative settings, checked against `target`.
pub(crate) fn attach_draft_model(
    opts: &mut GenerationOptions,
    spec: &gemma_server::SpecArgs,
    target: &Model,
) -> Result<()> {
    let (Some(params), Some(name)) = (opts.speculative.as_mut(), spec.spec_draft_model.as_ref()) else { return Ok(()) };
    let path = gemma_fetch::resolve_model(&name.to_string_lossy())
        .with_context(|| format!("cannot find draft model '{}'", name.display()))?;
    let draft = Model::open(&path).with_context(|| format!("cannot load draft model {}", path.display()))?;
    let draft = gemma_core::speculative::DraftModel::new(target, std::sync::Arc::new(draft))
        .with_context(|| format!("--spec-draft-model {}", path.display()))?;
    params.draft_model = Some(draft);
    Ok(())
}

fn generate(common: &Common, args: &GenerateArgs) -> Result<()> {
    let prompt = read_prompt(args)?;
    let mut opts = generation_options(&args.sampling)?;
    opts.logprobs = args.logprobs;
    opts.speculative = args.spec.params().map_err(|e| usage(format!("--spec-type: {e}")))?;
    let m = common.load()?;
    attach_draft_model(&mut opts, &args.spec, &m.model)?;
    fit_options_to_model(&mut opts, &args.sampling, &m.tokenizer)?;
    let prompt_ids = m.tokenizer.encode(&prompt, m.tokenizer.add_bos(), true);
    if prompt_ids.is_empty() {
        bail!("the prompt is empty and the model adds no BOS token: nothing to continue from");
    }
    if args.context_shift {
        // llama-completion's --keep: -1 or more than the prompt keeps the prompt; BOS is always kept.
        let bos = usize::from(m.tokenizer.add_bos());
        let keep = usize::try_from(args.keep).map_or(prompt_ids.len(), |k| (k + bos).min(prompt_ids.len()));
        opts.context_shift = Some(ContextShift { keep, discard: None });
    }
    if prompt_ids.len() >= m.ctx {
        bail!(
            "the prompt is {} tokens long but the context holds {} (raise --ctx, up to the model's {})",
            prompt_ids.len(),
            m.ctx,
            m.model.config.context_length
        );
    }
    let stream = !args.no_stream && !args.json;
    let mut session = Session::new(&m.model, m.ctx);
    let mut stdout = std::io::stdout().lock();
    // A reader that goes away (`gemma run ... | head -c 100`) ends generation at the next token.
    let reader_gone = Arc::new(AtomicBool::new(false));
    opts.cancel = Some(reader_gone.clone());
    let mut write_error = None;
    let mut on_text = |piece: &str| {
        if stream && write_error.is_none() {
            if let Err(e) = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush()) {
                write_error = Some(e);
                reader_gone.store(true, Ordering::Relaxed);
            }
        }
    };
    let cache =
        args.prompt_cache.as_deref().map(|path| PromptCache::open(path, &mut session, &prompt_ids)).transpose()?;
    let out = match &cache {
        None => session.generate(&m.tokenizer, &prompt_ids, &opts, &m.pool, &mut on_text)?,
        Some(cache) => {
            // The prompt but its last token is evaluated and saved first (the last one is always run again:
            // its logits choose the first token), as llama.cpp saves its session once the prompt is in.
            let last = prompt_ids.len() - 1;
            let t0 = Instant::now();
            if cache.reused < last {
                session.prefill(&prompt_ids[cache.reused..last], &m.pool)?;
            }
            let pre_secs = t0.elapsed().as_secs_f64();
            if !args.prompt_cache_ro && !args.prompt_cache_all && cache.reused < last {
                cache.save(&session, &prompt_ids[..last])?;
            }
            let mut sampler = Sampler::for_model(opts.sampling.clone(), &m.tokenizer, session.context_len());
            sampler.accept_all(&prompt_ids[..last]);
            let mut out = session.generate_streaming_after(
                &mut sampler,
                &m.tokenizer,
                &prompt_ids[..last],
                &prompt_ids[last..],
                &opts,
                &m.pool,
                &mut |event| {
                    if !event.text.is_empty() {
                        on_text(event.text)
                    }
                },
            )?;
            out.prompt_ids = prompt_ids.clone();
            out.prefill_secs += pre_secs;
            if args.prompt_cache_all {
                let mut tokens: Vec<u32> = prompt_ids.iter().chain(&out.gen_ids).copied().collect();
                for &(keep, discard) in &out.context_shifts {
                    tokens.drain(keep..keep + discard);
                }
                tokens.truncate(session.len());
                cache.save(&session, &tokens)?;
            }
            out
        }
    };
    if let Some(e) = write_error {
        return Err(e.into());
    }
    // Prompt tokens evaluated in this run (the rest came from the prompt cache).
    let evaluated = out.prompt_ids.len() - cache.as_ref().map_or(0, |c| c.reused);
    if args.json {
        let mut obj = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "gen_ids": out.gen_ids,
            "text": out.text,
            "stop_reason": out.stop_reason.as_str(),
            "stop_string": out.stop_string,
            "prefill_tok_s": tokens_per_second(evaluated, out.prefill_secs),
            "decode_tok_s": out.decode_tok_s(),
        });
        if let Some(cache) = &cache {
            obj["prompt_cached"] = cache.reused.into();
        }
        if args.context_shift {
            obj["context_shifts"] = out.context_shifts.len().into();
        }
        if opts.speculative.is_some() {
            // llama-server's timings names.
            obj["draft_n"] = out.speculative.draft_n.into();
            obj["draft_n_accepted"] = out.speculative.draft_n_accepted.into();
        }
        if opts.logprobs.is_some() {
            let entry = |lp: &TokenLogprob| {
                let piece = m.tokenizer.token_piece_bytes(lp.id, true).unwrap_or_default();
                // −inf (a banned token) has no JSON number; null says "impossible".
                serde_json::json!({
                    "id": lp.id,
                    "token": String::from_utf8_lossy(piece),
                    "logprob": lp.logprob.is_finite().then_some(lp.logprob),
                })
            };
            let per_token: Vec<serde_json::Value> = out
                .logprobs
                .iter()
                .map(|t| {
                    let mut chosen = entry(&t.chosen);
                    chosen["top_logprobs"] = t.top.iter().map(entry).collect();
                    chosen
                })
                .collect();
            obj["logprobs"] = per_token.into();
        }
        writeln!(stdout, "{obj}")?;
    } else {
        if !stream {
            stdout.write_all(out.text.as_bytes())?;
        }
        writeln!(stdout)?;
        let cached = cache.as_ref().map_or(String::new(), |c| format!(" ({} from the prompt cache)", c.reused));
        let shifts = match out.context_shifts.len() {
            0 => String::new(),
            n => format!(" | context shifts: {n}"),
        };
        let spec = match (&opts.speculative, out.speculative) {
            (Some(p), st) => format!(
                " | {}: {} drafts, {}/{} drafted tokens accepted ({:.1}%)",
                p.kind,
                st.drafts,
                st.draft_n_accepted,
                st.draft_n,
                100.0 * st.acceptance()
            ),
            (None, _) => String::new(),
        };
        eprintln!(
            "[prompt: {} tokens{cached}, {:.1} tok/s | generated: {} tokens, {:.1} tok/s{shifts}{spec} | stop: {}]",
            out.prompt_ids.len(),
            tokens_per_second(evaluated, out.prefill_secs),
            out.gen_ids.len(),
            out.decode_tok_s(),
            out.stop_reason.as_str()
        );
    }
    Ok(())
}

/// `--prompt-cache FILE`: a session's KV cache and token ids kept between runs.
struct PromptCache {
    path: std::path::PathBuf,
    /// Positions of the prompt taken from the file.
    reused: usize,
}

impl PromptCache {
    /// Loads FILE into `session` when it exists and keeps the part that begins the prompt (never the prompt's
    /// last token). A missing file is no error: it is written later.
    fn open(path: &std::path::Path, session: &mut Session, prompt_ids: &[u32]) -> Result<PromptCache> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("prompt cache {} does not exist yet", path.display());
                return Ok(PromptCache { path: path.to_path_buf(), reused: 0 });
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read the prompt cache {}", path.display())),
        };
        let saved = session.load_state(&bytes).with_context(|| {
            format!("cannot use the prompt cache {} (another model's or a damaged file?)", path.display())
        })?;
        let common = saved.iter().zip(prompt_ids).take_while(|(a, b)| a == b).count();
        let reused = session.truncate(common.min(prompt_ids.len() - 1));
        eprintln!(
            "prompt cache {}: {} saved tokens, {reused} of the prompt's {} reused",
            path.display(),
            saved.len(),
            prompt_ids.len()
        );
        Ok(PromptCache { path: path.to_path_buf(), reused })
    }

    /// Writes the session's cache, whose positions hold `tokens`, aside and renames it into place.
    fn save(&self, session: &Session, tokens: &[u32]) -> Result<()> {
        let bytes = session.save_state(tokens)?;
        let mut partial = self.path.clone().into_os_string();
        partial.push(".partial");
        std::fs::write(&partial, &bytes)
            .and_then(|()| std::fs::rename(&partial, &self.path))
            .with_context(|| format!("cannot write the prompt cache {}", self.path.display()))
    }
}

fn tokenize(common: &Common, args: &TokenizeArgs) -> Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        (None, None) => return Err(usage("give TEXT or --file FILE")),
    };
    let tok = common.load_tokenizer()?;
    let mut ids = tok.encode(&text, !args.no_bos && tok.add_bos(), !args.no_special);
    // Embedding models end their inputs with EOS (llama-tokenize adds it too).
    if tok.add_eos() {
        ids.extend(tok.eos_id());
    }
    outln!("{}", serde_json::to_string(&ids)?)?;
    Ok(())
}

/// Accepts `[1, 2, 3]`, `1 2 3`, `1,2,3`, or the ids as separate arguments.
fn parse_ids(parts: &[String]) -> Result<Vec<u32>> {
    let joined = parts.join(" ");
    let trimmed = joined.trim().trim_start_matches('[').trim_end_matches(']');
    trimmed
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| usage(format!("'{s}' is not a token id"))))
        .collect()
}

fn detokenize(common: &Common, args: &DetokenizeArgs) -> Result<()> {
    let ids = parse_ids(&args.ids)?;
    let tok = common.load_tokenizer()?;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
        return Err(usage(format!("token id {bad} is outside the vocabulary of {} tokens", tok.vocab_size())));
    }
    outln!("{}", tok.decode(&ids, args.special))?;
    Ok(())
}

fn info(common: &Common) -> Result<()> {
    let path = common.model_path()?;
    if gemma_core::model::is_sbs_file(&path) {
        return info_sbs(&path);
    }
    let folder = gemma_core::convert::is_model_folder(&path);
    let file = if folder {
        // A sentence-transformers folder shows as the GGUF it loads as.
        gemma_core::convert::sentence_transformers_file(&path)
            .with_context(|| format!("cannot read model folder {}", path.display()))?
    } else {
        gemma_io::GgufFile::open(&path).with_context(|| format!("cannot read model {}", path.display()))?
    };
    let mut out = std::io::stdout().lock();
    if folder {
        writeln!(
            out,
            "folder: {} (sentence-transformers, loaded as this GGUF of {} bytes)",
            path.display(),
            file.file_size()
        )?;
    } else if file.parts().len() > 1 {
        let n = file.parts().len();
        writeln!(
            out,
            "file: {} (GGUF v{}, split model: {n} files, {} bytes)",
            path.display(),
            file.version(),
            file.file_size()
        )?;
        for (no, part) in file.parts().iter().enumerate() {
            let (p, bytes, tensors) = (part.path.display(), part.file_size, part.n_tensors);
            writeln!(out, "  part {}/{n}: {p} ({bytes} bytes, {tensors} tensors)", no + 1)?;
        }
    } else {
        writeln!(out, "file: {} (GGUF v{}, {} bytes)", path.display(), file.version(), file.file_size())?;
    }
    match gemma_core::ModelConfig::from_gguf(&file) {
        Ok(cfg) => writeln!(out, "\n{}", cfg.summary())?,
        Err(e) => writeln!(out, "\narchitecture not supported for running: {e}")?,
    }
    writeln!(out, "\nmetadata ({} keys):", file.metadata().len())?;
    for (k, v) in file.metadata() {
        writeln!(out, "  {k} = {v}")?;
    }
    writeln!(out, "\ntensors ({}):", file.tensors().len())?;
    writeln!(out, "  {:<40} {:<6} {:<20} {:>12}", "name", "type", "shape", "bytes")?;
    let mut total = 0u64;
    for t in file.tensors() {
        let shape = format!("{:?}", t.dims);
        writeln!(out, "  {:<40} {:<6} {:<20} {:>12}", t.name, t.ggml_type.name(), shape, t.n_bytes)?;
        total += t.n_bytes;
    }
    writeln!(out, "  total tensor bytes: {total}")?;
    Ok(())
}

/// `info` for a gemma.cpp checkpoint: its config (as run, then as gemma.cpp stores it), tokenizer and toc.
fn info_sbs(path: &std::path::Path) -> Result<()> {
    let file = gemma_io::sbs::SbsFile::open(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let c = file.config();
    let mut out = std::io::stdout().lock();
    let size = file.blobs().file_bytes();
    writeln!(out, "file: {} (gemma.cpp SBS, {:?} layout, {size} bytes)", path.display(), file.format())?;
    match gemma_core::ModelConfig::from_sbs(c) {
        Ok(cfg) => writeln!(out, "\n{}", cfg.summary())?,
        Err(e) => writeln!(out, "\nmodel not supported for running: {e}")?,
    }
    writeln!(out, "\ngemma.cpp config:")?;
    writeln!(out, "  display_name = {}", c.display_name)?;
    writeln!(out, "  model = {} ({:?})", c.model.prefix(), c.model)?;
    writeln!(out, "  wrapping = {:?}", c.wrapping)?;
    writeln!(out, "  weight = {}", c.weight.name())?;
    writeln!(out, "  num_layers = {}, model_dim = {}, vocab_size = {}", c.num_layers, c.model_dim, c.vocab_size)?;
    writeln!(out, "  max_seq_len = {}, query_scale = {:?}", c.max_seq_len, c.query_scale)?;
    writeln!(out, "  att_cap = {}, final_cap = {}", c.att_cap, c.final_cap)?;
    let timescale = match c.use_global_timescale {
        Some(flag) => flag.to_string(),
        None => "absent (written before gemma.cpp had the field)".into(),
    };
    writeln!(out, "  use_global_timescale = {timescale}")?;
    writeln!(out, "  attention_window_sizes = {:?}", c.attention_window_sizes)?;
    if let Some(first) = c.layer_configs.first() {
        let alike = c.layer_configs.iter().all(|l| l == first);
        let which = if alike { format!("all {} layers", c.layer_configs.len()) } else { "layer 0".into() };
        writeln!(out, "  {which}: {first:?}")?;
    }
    match file.tokenizer() {
        Ok(Some(proto)) => writeln!(out, "\ntokenizer: SentencePiece model, {} pieces", proto.pieces.len())?,
        Ok(None) => writeln!(out, "\ntokenizer: none in the file")?,
        Err(e) => writeln!(out, "\ntokenizer: unreadable: {e}")?,
    }
    writeln!(out, "\ntensors ({}):", file.tensors().len())?;
    writeln!(out, "  {:<16} {:<5} {:<16} {:>12} {:>12}", "name", "type", "rows x cols", "scale", "bytes")?;
    let mut total = 0u64;
    for t in file.tensors() {
        let r = &t.record;
        let shape = format!("{} x {}", r.rows, r.cols);
        writeln!(out, "  {:<16} {:<5} {:<16} {:>12} {:>12}", r.name, r.ty.name(), shape, r.scale, r.packed_bytes())?;
        total += r.packed_bytes();
    }
    writeln!(out, "  total tensor bytes: {total}")?;
    Ok(())
}

fn pull(args: &PullArgs) -> Result<()> {
    let name = args.name.as_deref().unwrap_or(gemma_fetch::DEFAULT_MODEL);
    let opts = gemma_fetch::PullOptions { verify: args.verify, ..Default::default() };
    let path = gemma_fetch::pull(name, &opts).with_context(|| format!("cannot pull '{name}'"))?;
    outln!("{}", path.display())?;
    Ok(())
}

fn logits(common: &Common, args: &LogitsArgs) -> Result<()> {
    let m = common.load()?;
    let ids = match (&args.ids, &args.prompt) {
        (Some(ids), _) => parse_ids(std::slice::from_ref(ids))?,
        (None, Some(p)) => m.tokenizer.encode(p, m.tokenizer.add_bos(), true),
        (None, None) => return Err(usage("give --ids or --prompt")),
    };
    if ids.is_empty() {
        return Err(usage("no input tokens"));
    }
    if ids.len() > m.ctx {
        bail!("{} input tokens do not fit in the context of {} (raise --ctx)", ids.len(), m.ctx);
    }
    let mut cache = m.model.new_cache(m.ctx);
    let mut out = std::io::stdout().lock();
    let mut start = 0;
    for chunk in ids.chunks(gemma_core::generate::PREFILL_CHUNK) {
        let batch = gemma_core::Batch::sequence(chunk, start, 0, true);
        let logits = m.model.forward(&batch, std::slice::from_mut(&mut cache), &m.pool)?;
        for i in 0..logits.len() {
            let top = top_k(logits.row(i), args.top_k);
            writeln!(out, "{}", serde_json::json!({ "pos": start + i, "top": top }))?;
        }
        start += chunk.len();
    }
    Ok(())
}

/// The `k` best `(id, logit)` pairs, best first.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let k = k.min(v.len());
    if k == 0 {
        return Vec::new();
    }
    v.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// A pool of `threads` threads, or an error saying the system refused them.
pub(crate) fn thread_pool(threads: usize) -> Result<ThreadPool> {
    ThreadPool::try_new(threads).with_context(|| format!("cannot start {threads} threads"))
}

#[cfg(test)]
mod tests {
    use super::{dry_sequence_breakers, process_escapes};

    #[test]
    fn dry_sequence_breakers_replace_the_defaults_like_llama_cpp() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(dry_sequence_breakers(&[]), ["\n", ":", "\"", "*"]);
        assert_eq!(dry_sequence_breakers(&args(&[r"\n", "end"])), ["\n", "end"]);
        assert!(dry_sequence_breakers(&args(&["a", "none"])).is_empty());
        assert_eq!(dry_sequence_breakers(&args(&["a", "none", "b"])), ["b"]);
    }

    #[test]
    fn stop_strings_take_llama_cpp_escapes() {
        assert_eq!(process_escapes(r"\n"), "\n");
        assert_eq!(process_escapes(r"a\tb\r\n"), "a\tb\r\n");
        assert_eq!(process_escapes(r#"\'\"\\"#), r#"'"\"#);
        assert_eq!(process_escapes(r"\x41\x7e!"), "A~!");
        // Not an escape: kept as typed (unknown letter, bad or non-ASCII hex, a trailing backslash).
        assert_eq!(process_escapes(r"\q \x4 \xzz \x+1 \xff \"), r"\q \x4 \xzz \x+1 \xff \");
        assert_eq!(process_escapes("héllo\\nö"), "héllo\nö");
    }
}
