//! Server settings: the command-line flags, the optional TOML file, and the merged [`ServerConfig`].
//! Flags override the file; the file overrides the defaults. Defaults are safe: loopback only, no keys needed
//! only because nothing but this machine can connect.

use std::path::{Path, PathBuf};

use gemma_core::{SpecError, SpecType, SpeculativeParams};
use serde::Deserialize;

/// The flags of `gemma-server` (and `gemma serve`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Model name (e.g. gemma-3-270m) or path to a model file (GGUF or gemma.cpp SBS).
    #[arg(long, short = 'm', visible_alias = "weights", value_name = "PATH|NAME")]
    pub model: Option<String>,
    /// Address to listen on.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (0: any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Sequences decoded together at most.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Context length of each sequence, in tokens.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Threads for the forward pass.
    #[arg(long)]
    pub threads: Option<usize>,
    /// An API key clients must send as `Authorization: Bearer <key>`.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// A file with one API key per line (blank lines and `#` comments ignored).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// A TOML file with the sections [server], [model], [inference] and [security].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Accept `POST /props` (llama-server's `--props`; refused by default, as there).
    #[arg(long)]
    pub props: bool,
    /// Turn `GET /slots` off (llama-server's `--no-slots`).
    #[arg(long)]
    pub no_slots: bool,
    /// Where `POST /slots/{id}?action=save|restore` keeps slot files (llama-server's `--slot-save-path`;
    /// without it those actions are refused).
    #[arg(long, value_name = "DIR")]
    pub slot_save_path: Option<PathBuf>,
    /// When a sequence's context is full, forget half of its tokens after the first `n_keep` and go on
    /// generating (llama-server's `--context-shift`; off by default, as there). ollama's API shifts unless a
    /// request says `shift: false`.
    #[arg(long)]
    pub context_shift: bool,
    /// The `n_keep` of requests that give none: prompt tokens after BOS a context shift never drops (-1: the
    /// whole prompt).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep: Option<i64>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub cache_types: CacheTypeArgs,
    /// Load the LoRA adapters at scale 0 (llama-server's `--lora-init-without-apply`): they act once
    /// `POST /lora-adapters` or a request's `lora` field gives them a scale.
    #[arg(long)]
    pub lora_init_without_apply: bool,
}

/// The `--help` section of the speculative decoding flags.
const SPEC: &str = "Speculative decoding (llama.cpp's flags, docs/speculative.md)";

/// Self-speculative decoding with n-grams, with llama.cpp's flag names and defaults; shared by the server and
/// the CLI's `run`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SpecArgs {
    /// Guess tokens from the context and check them in one pass: none, ngram-simple or ngram-mod (the
    /// output is the same, faster where the text repeats the context).
    #[arg(long, value_name = "TYPE", help_heading = SPEC)]
    pub spec_type: Option<String>,
    /// Most tokens per draft (llama.cpp reads it for draft models only; here it caps n-gram drafts too).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_draft_n_max: Option<usize>,
    /// ngram-simple: tokens that must match (default 12).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_ngram_simple_size_n: Option<usize>,
    /// ngram-simple: tokens drafted after a match (default 48).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_ngram_simple_size_m: Option<usize>,
    /// ngram-mod: tokens hashed per lookup (default 24).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_ngram_mod_n_match: Option<usize>,
    /// ngram-mod: a shorter draft is dropped (default 48).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_ngram_mod_n_min: Option<usize>,
    /// ngram-mod: most tokens per draft (default 64).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_ngram_mod_n_max: Option<usize>,
    /// A draft model (same vocabulary) that guesses the next tokens greedily; implies --spec-type
    /// draft-simple. `gemma run` and `gemma chat` only.
    #[arg(long, visible_alias = "model-draft", value_name = "FNAME", help_heading = SPEC)]
    pub spec_draft_model: Option<PathBuf>,
    /// draft-simple: a shorter draft is dropped (default 0).
    #[arg(long, value_name = "N", help_heading = SPEC)]
    pub spec_draft_n_min: Option<usize>,
    /// draft-simple: stop a draft before a token whose probability among the draft model's ten best is below
    /// P (default 0: never).
    #[arg(long, visible_alias = "draft-p-min", value_name = "P", help_heading = SPEC)]
    pub spec_draft_p_min: Option<f32>,
}

impl SpecArgs {
    /// `--spec-type` and its settings (`None`: no speculation), checked as llama.cpp checks them. A draft
    /// model (`--spec-draft-model`, which implies draft-simple) is the caller's to load and attach
    /// ([`SpeculativeParams::draft_model`]).
    pub fn params(&self) -> Result<Option<SpeculativeParams>, SpecError> {
        let kind = match &self.spec_type {
            None if self.spec_draft_model.is_some() => SpecType::DraftSimple,
            None => return Ok(None),
            Some(name) => match SpecType::parse(name)? {
                Some(kind) => kind,
                None => return Ok(None),
            },
        };
        match (kind, self.spec_draft_model.is_some()) {
            (SpecType::DraftSimple, false) => {
                return Err(SpecError::Invalid("draft-simple needs a draft model: --spec-draft-model FNAME".into()))
            }
            (other, true) if other != SpecType::DraftSimple => {
                return Err(SpecError::Invalid(format!(
                    "--spec-draft-model drafts with the draft model (draft-simple), not {other}: leave --spec-type out"
                )))
            }
            _ => {}
        }
        let d = SpeculativeParams::new(kind);
        let p = SpeculativeParams {
            simple_size_n: self.spec_ngram_simple_size_n.unwrap_or(d.simple_size_n),
            simple_size_m: self.spec_ngram_simple_size_m.unwrap_or(d.simple_size_m),
            mod_n_match: self.spec_ngram_mod_n_match.unwrap_or(d.mod_n_match),
            mod_n_min: self.spec_ngram_mod_n_min.unwrap_or(d.mod_n_min),
            mod_n_max: self.spec_ngram_mod_n_max.unwrap_or(d.mod_n_max),
            draft_n_max: self.spec_draft_n_max,
            draft_n_min: self.spec_draft_n_min.unwrap_or(d.draft_n_min),
            draft_p_min: self.spec_draft_p_min.unwrap_or(d.draft_p_min),
            draft_model: None,
            kind,
        };
        p.validate()?;
        Ok(Some(p))
    }
}

/// llama.cpp's KV cache type flags (`-ctk`/`--cache-type-k`, `-ctv`/`--cache-type-v`), shared by the server and the
/// CLI's `run`, `chat`, `logits` and `perplexity` (`docs/kv-cache.md`).
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct CacheTypeArgs {
    /// Type of the KV cache's keys (llama.cpp's -ctk): f32 (default here), f16 (llama.cpp's default), bf16,
    /// q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1.
    #[arg(long = "cache-type-k", visible_alias = "ctk", value_name = "TYPE", default_value = "f32", value_parser = parse_cache_type)]
    pub cache_type_k: gemma_core::KvType,
    /// Type of the KV cache's values (llama.cpp's -ctv); the same names as --cache-type-k.
    #[arg(long = "cache-type-v", visible_alias = "ctv", value_name = "TYPE", default_value = "f32", value_parser = parse_cache_type)]
    pub cache_type_v: gemma_core::KvType,
}

impl CacheTypeArgs {
    /// The key and value types.
    pub fn types(&self) -> (gemma_core::KvType, gemma_core::KvType) {
        (self.cache_type_k, self.cache_type_v)
    }
}

/// A cache type by llama.cpp's name (`f16`, `q8_0`, ...); an unknown one names the allowed ones.
pub fn parse_cache_type(s: &str) -> Result<gemma_core::KvType, String> {
    s.parse().map_err(|e: gemma_core::KvTypeError| e.to_string())
}

/// The arguments with llama.cpp's multi-letter short flags (`-ctk`, `-ctv`) read as their long forms (clap's short
/// flags are one letter).
pub fn llama_short_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => a,
    })
    .collect()
}

/// llama.cpp's LoRA flags, shared by the server and the CLI's `run`, `chat`, `logits`, `bench`, `perplexity`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LoraArgs {
    /// LoRA adapter (GGUF) applied at scale 1; repeat the flag or separate files with commas for several.
    #[arg(long = "lora", value_name = "FNAME", action = clap::ArgAction::Append)]
    pub lora: Vec<String>,
    /// LoRA adapter at a scale: `FNAME:SCALE[,FNAME:SCALE...]` (llama.cpp's form) or `FNAME SCALE`; repeatable.
    #[arg(long = "lora-scaled", value_name = "FNAME:SCALE", num_args = 1..=2, action = clap::ArgAction::Append, allow_negative_numbers = true)]
    pub lora_scaled: Vec<String>,
}

impl LoraArgs {
    /// The adapters with their scales, in id order: the `--lora` files, then the `--lora-scaled` ones, each in
    /// command-line order.
    pub fn adapters(&self) -> Result<Vec<(PathBuf, f32)>, String> {
        let mut out: Vec<(PathBuf, f32)> = Vec::new();
        for item in self.lora.iter().flat_map(|v| v.split(',')) {
            if item.is_empty() {
                return Err("--lora: empty file name".into());
            }
            out.push((PathBuf::from(item), 1.0));
        }
        let scale = |s: &str, file: &str| -> Result<f32, String> {
            s.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("--lora-scaled: scale '{s}' of {file} is not a number"))
        };
        let mut items = self.lora_scaled.iter();
        while let Some(item) = items.next() {
            if item.contains(':') {
                for pair in item.split(',') {
                    let parts: Vec<&str> = pair.split(':').collect();
                    let [file, s] = parts[..] else {
                        return Err(format!("--lora-scaled format: FNAME:SCALE (got '{pair}')"));
                    };
                    if file.is_empty() {
                        return Err("--lora-scaled: empty file name".into());
                    }
                    out.push((PathBuf::from(file), scale(s, file)?));
                }
            } else {
                let s = items.next().ok_or_else(|| format!("--lora-scaled: '{item}' needs a scale (FNAME:SCALE)"))?;
                out.push((PathBuf::from(item), scale(s, item)?));
            }
        }
        Ok(out)
    }
}

/// The TOML file. Every table rejects unknown keys so that a typo is a startup error, not a silent default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub model: FileModel,
    #[serde(default)]
    pub inference: FileInference,
    #[serde(default)]
    pub security: FileSecurity,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub timeout_seconds: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub shutdown_grace_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    pub path: Option<String>,
    pub format: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInference {
    pub max_batch_size: Option<usize>,
    pub max_sequence_length: Option<usize>,
    pub threads: Option<usize>,
    pub queue_size: Option<usize>,
    pub prefix_cache_tokens: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub max_sessions: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSecurity {
    pub rate_limit_enabled: Option<bool>,
    pub max_requests_per_minute: Option<u32>,
    pub keys: Option<Vec<String>>,
    pub jwt_secret: Option<String>,
}

/// Everything the server needs, merged and checked.
#[derive(Clone)]
pub struct ServerConfig {
    /// What was asked for: a known model name or a path; resolved when the server starts loading.
    pub model: String,
    pub host: String,
    pub port: u16,
    pub parallel: usize,
    pub ctx: usize,
    pub threads: usize,
    /// Requests waiting for a free sequence slot at most; beyond that, 503.
    pub queue_size: usize,
    /// Tokens of finished sequences' KV caches kept for prefix reuse.
    pub prefix_cache_tokens: usize,
    /// Prompt tokens prefilled per step next to the decoding sequences.
    pub prefill_chunk: usize,
    /// `POST /generate` sessions kept at most (least recently used evicted; 0: no sessions).
    pub max_sessions: usize,
    /// Longest a request may generate, and how long in-flight streams get at shutdown.
    pub timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
    /// Requests handled at once at most (beyond: 503).
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub api_keys: Vec<String>,
    pub jwt_secret: Option<String>,
    pub rate_limit_enabled: bool,
    pub max_requests_per_minute: u32,
    /// `POST /props` is accepted (llama-server's `--props`).
    pub endpoint_props: bool,
    /// `GET /slots` answers (llama-server's default; `--no-slots` turns it off).
    pub endpoint_slots: bool,
    /// The directory of slot files (`--slot-save-path`); `None`: slot actions are refused.
    pub slot_save_path: Option<PathBuf>,
    /// Requests' contexts are shifted when full (`--context-shift`).
    pub context_shift: bool,
    /// The default `n_keep` of a context shift (`--keep`).
    pub n_keep: i64,
    /// Self-speculative decoding (`--spec-type`); `None`: off.
    pub speculative: Option<SpeculativeParams>,
    /// LoRA adapters and their scales at start (`--lora`, `--lora-scaled`; 0 with `--lora-init-without-apply`).
    pub loras: Vec<(PathBuf, f32)>,
    /// Types of the KV cache's keys and values (`--cache-type-k`, `--cache-type-v`).
    pub cache_types: (gemma_core::KvType, gemma_core::KvType),
}

impl std::fmt::Debug for ServerConfig {
    // Keys and the JWT secret never appear in logs or error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("model", &self.model)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("parallel", &self.parallel)
            .field("ctx", &self.ctx)
            .field("threads", &self.threads)
            .field("queue_size", &self.queue_size)
            .field("prefix_cache_tokens", &self.prefix_cache_tokens)
            .field("prefill_chunk", &self.prefill_chunk)
            .field("max_sessions", &self.max_sessions)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_connections", &self.max_connections)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("api_keys", &format_args!("[{} redacted]", self.api_keys.len()))
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "redacted"))
            .field("rate_limit_enabled", &self.rate_limit_enabled)
            .field("max_requests_per_minute", &self.max_requests_per_minute)
            .field("endpoint_props", &self.endpoint_props)
            .field("endpoint_slots", &self.endpoint_slots)
            .field("slot_save_path", &self.slot_save_path)
            .field("context_shift", &self.context_shift)
            .field("n_keep", &self.n_keep)
            .field("speculative", &self.speculative)
            .field("loras", &self.loras)
            .field("cache_types", &self.cache_types)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: gemma_fetch::DEFAULT_MODEL.to_string(),
            host: "127.0.0.1".to_string(),
            port: 8080,
            parallel: 8,
            ctx: 4096,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue_size: 64,
            prefix_cache_tokens: 16_384,
            prefill_chunk: 256,
            max_sessions: 64,
            timeout_seconds: 600,
            shutdown_grace_seconds: 10,
            max_connections: 256,
            max_body_bytes: 2 * 1024 * 1024,
            api_keys: Vec::new(),
            jwt_secret: None,
            rate_limit_enabled: false,
            max_requests_per_minute: 600,
            endpoint_props: false,
            endpoint_slots: true,
            slot_save_path: None,
            context_shift: false,
            n_keep: 0,
            speculative: None,
            loras: Vec::new(),
            cache_types: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid server configuration: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

impl ServerConfig {
    /// Merges defaults, the file named by `--config` (if any) and the flags, then checks the result.
    pub fn from_args(args: &ServeArgs) -> Result<ServerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut keys_from_file = None;
        if let Some(path) = &args.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            keys_from_file = Some(parse_key_lines(&text));
        }
        ServerConfig::merge(&file, args, keys_from_file)
    }

    fn merge(file: &FileConfig, args: &ServeArgs, keys_from_file: Option<Vec<String>>) -> Result<Self, ConfigError> {
        let d = ServerConfig::default();
        if let Some(format) = &file.model.format {
            if !format.eq_ignore_ascii_case("gguf") {
                return Err(ConfigError::Invalid {
                    key: "model.format",
                    why: format!("'{format}' is not supported (supported: gguf)"),
                });
            }
        }
        let mut api_keys = file.security.keys.clone().unwrap_or_default();
        if let Some(k) = &args.api_key {
            api_keys = vec![k.clone()];
        }
        if let Some(k) = keys_from_file {
            api_keys = k;
        }
        let c = ServerConfig {
            model: args.model.clone().or_else(|| file.model.path.clone()).unwrap_or(d.model),
            host: args.host.clone().or_else(|| file.server.host.clone()).unwrap_or(d.host),
            port: args.port.or(file.server.port).unwrap_or(d.port),
            parallel: args.parallel.or(file.inference.max_batch_size).unwrap_or(d.parallel),
            ctx: args.ctx.or(file.inference.max_sequence_length).unwrap_or(d.ctx),
            threads: args.threads.or(file.inference.threads).unwrap_or(d.threads),
            queue_size: file.inference.queue_size.unwrap_or(d.queue_size),
            prefix_cache_tokens: file.inference.prefix_cache_tokens.unwrap_or(d.prefix_cache_tokens),
            prefill_chunk: file.inference.prefill_chunk.unwrap_or(d.prefill_chunk),
            max_sessions: file.inference.max_sessions.unwrap_or(d.max_sessions),
            timeout_seconds: file.server.timeout_seconds.unwrap_or(d.timeout_seconds),
            shutdown_grace_seconds: file.server.shutdown_grace_seconds.unwrap_or(d.shutdown_grace_seconds),
            max_connections: file.server.max_connections.unwrap_or(d.max_connections),
            max_body_bytes: file.server.max_body_bytes.unwrap_or(d.max_body_bytes),
            api_keys,
            jwt_secret: file.security.jwt_secret.clone(),
            rate_limit_enabled: file.security.rate_limit_enabled.unwrap_or(d.rate_limit_enabled),
            max_requests_per_minute: file.security.max_requests_per_minute.unwrap_or(d.max_requests_per_minute),
            endpoint_props: args.props || d.endpoint_props,
            endpoint_slots: d.endpoint_slots && !args.no_slots,
            slot_save_path: args.slot_save_path.clone(),
            context_shift: args.context_shift,
            n_keep: args.keep.unwrap_or(d.n_keep),
            speculative: match args.spec.params() {
                Ok(Some(p)) if p.kind == SpecType::DraftSimple => {
                    return Err(ConfigError::Invalid {
                        key: "--spec-draft-model",
                        why: "the server drafts with n-grams only (ngram-simple, ngram-mod); draft models run in \
                              `gemma run` and `gemma chat`"
                            .into(),
                    })
                }
                other => other.map_err(|e| ConfigError::Invalid { key: "--spec-type", why: e.to_string() })?,
            },
            loras: args
                .lora
                .adapters()
                .map_err(|why| ConfigError::Invalid { key: "lora", why })?
                .into_iter()
                .map(|(path, scale)| (path, if args.lora_init_without_apply { 0.0 } else { scale }))
                .collect(),
            cache_types: args.cache_types.types(),
        };
        c.validate()?;
        Ok(c)
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid { key, why: "must be at least 1".into() })
            } else {
                Ok(())
            }
        };
        positive("parallel (inference.max_batch_size)", self.parallel)?;
        positive("threads (inference.threads)", self.threads)?;
        if self.threads > gemma_ops::pool::MAX_THREADS {
            return Err(ConfigError::Invalid {
                key: "threads (inference.threads)",
                why: format!("{} is more than the {} a pool may have", self.threads, gemma_ops::pool::MAX_THREADS),
            });
        }
        positive("inference.queue_size", self.queue_size)?;
        positive("inference.prefill_chunk", self.prefill_chunk)?;
        positive("server.max_connections", self.max_connections)?;
        positive("server.max_body_bytes", self.max_body_bytes)?;
        if self.ctx < 2 {
            return Err(ConfigError::Invalid {
                key: "ctx (inference.max_sequence_length)",
                why: "must be at least 2".into(),
            });
        }
        if self.parallel > 256 {
            return Err(ConfigError::Invalid { key: "parallel", why: "at most 256 sequences".into() });
        }
        if self.timeout_seconds == 0 {
            return Err(ConfigError::Invalid { key: "server.timeout_seconds", why: "must be at least 1".into() });
        }
        if self.host.parse::<std::net::IpAddr>().is_err() && self.host != "localhost" {
            return Err(ConfigError::Invalid { key: "host", why: format!("'{}' is not an IP address", self.host) });
        }
        if self.rate_limit_enabled && self.max_requests_per_minute == 0 {
            return Err(ConfigError::Invalid {
                key: "security.max_requests_per_minute",
                why: "must be at least 1 when the rate limit is enabled".into(),
            });
        }
        if self.api_keys.iter().any(|k| k.is_empty() || k.chars().any(char::is_whitespace)) {
            return Err(ConfigError::Invalid { key: "api keys", why: "a key is empty or contains whitespace".into() });
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(ConfigError::Invalid { key: "security.jwt_secret", why: "use at least 16 bytes".into() });
        }
        Ok(())
    }

    /// Whether requests must authenticate.
    pub fn auth_required(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt_secret.is_some()
    }
}

fn parse_key_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sections_parse_and_flags_override() {
        let file = FileConfig::parse(
            r#"
            [server]
            host = "127.0.0.1"
            port = 9000
            timeout_seconds = 30
            max_connections = 10
            [model]
            path = "/models/x.gguf"
            format = "gguf"
            [inference]
            max_batch_size = 4
            max_sequence_length = 1024
            [security]
            rate_limit_enabled = true
            max_requests_per_minute = 60
            keys = ["alpha", "beta"]
            jwt_secret = "0123456789abcdef0123"
            "#,
        )
        .unwrap();
        let args = ServeArgs { port: Some(0), parallel: Some(2), ..Default::default() };
        let c = ServerConfig::merge(&file, &args, None).unwrap();
        assert_eq!((c.port, c.parallel, c.ctx, c.max_connections), (0, 2, 1024, 10));
        assert!(!c.endpoint_props && c.endpoint_slots, "llama-server's defaults");
        let args = ServeArgs { props: true, no_slots: true, ..Default::default() };
        let c = ServerConfig::merge(&file, &args, None).unwrap();
        assert!(c.endpoint_props && !c.endpoint_slots);
        assert_eq!(c.model, "/models/x.gguf");
        assert_eq!(c.api_keys, ["alpha", "beta"]);
        assert!(c.rate_limit_enabled && c.auth_required());
        let debug = format!("{c:?}");
        assert!(!debug.contains("alpha") && !debug.contains("0123456789abcdef"), "{debug}");
        let c =
            ServerConfig::merge(&file, &ServeArgs { api_key: Some("k".into()), ..Default::default() }, None).unwrap();
        assert_eq!(c.api_keys, ["k"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = FileConfig::parse("[server]\nhots = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `hots`"), "{e}");
        let e = FileConfig::parse("[inference]\nmax_batch_size = \"eight\"\n").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        assert!(FileConfig::parse("[gpu]\nx = 1\n").unwrap_err().contains("unknown field `gpu`"));
        let bad = FileConfig::parse("[inference]\nmax_batch_size = 0\n").unwrap();
        assert!(ServerConfig::merge(&bad, &ServeArgs::default(), None).is_err());
        let bad = FileConfig::parse("[model]\nformat = \"sbs\"\n").unwrap();
        let e = ServerConfig::merge(&bad, &ServeArgs::default(), None).unwrap_err().to_string();
        assert!(e.contains("model.format"), "{e}");
        let bad = FileConfig::parse("[inference]\nthreads = 100000\n").unwrap();
        let e = ServerConfig::merge(&bad, &ServeArgs::default(), None).unwrap_err().to_string();
        assert!(e.contains("inference.threads") && e.contains("more than the 512"), "{e}");
        let bad_host = ServeArgs { host: Some("not a host".into()), ..Default::default() };
        assert!(ServerConfig::merge(&FileConfig::default(), &bad_host, None).is_err());
    }

    #[test]
    fn key_files_skip_comments_and_blank_lines() {
        assert_eq!(parse_key_lines("# keys\n\n  one \ntwo\n"), ["one", "two"]);
    }
}
