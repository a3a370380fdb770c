//! `gemma chat` (and the guide's `gemma --chat`): a multi-turn conversation over one KV cache.
//!
//! Each turn renders the whole conversation with the model's chat template and tokenizes it, keeps the
//! part of the cache that agrees with those ids and prefills only the rest, so a turn costs its own new
//! tokens, not the whole history. When stdin is not a terminal the output is just the answers, one per
//! turn, for scripts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use gemma_core::chat::{reusable_prefix_len, ChatMessage, ChatTemplate};
use gemma_core::generate::TokenEvent;
use gemma_core::{GenerationOptions, ModelError, Sampler, Session, StopReason};

use crate::args::ChatArgs;
use crate::commands::{fit_options_to_model, generation_options, Common, Loaded};

const HELP: &str = "\
commands:
  /clear          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (empty TEXT removes it)
  /save FILE      write the conversation to FILE as JSON
  /load FILE      read a conversation written by /save
  /stats          turns, context use and the speed of the last turn
  /help           this list
  /quit           leave (so does end of input, or Ctrl-C twice at the prompt)
Ctrl-C while the model answers stops the answer.";

/// What Ctrl-C does depends on whether an answer is being generated.
struct Interrupts {
    generating: AtomicBool,
    cancel: Arc<AtomicBool>,
    at_prompt: AtomicUsize,
}

/// Speeds and sizes of the last turn, for `/stats`.
#[derive(Default)]
struct TurnStats {
    prefilled: usize,
    reused: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    generated: usize,
}

struct Chat<'m> {
    m: &'m Loaded,
    template: ChatTemplate,
    session: Session<'m>,
    /// The conversation; a system message, when set, is first.
    messages: Vec<ChatMessage>,
    /// The ids whose keys and values are in the session's cache, in order.
    cached: Vec<u32>,
    opts: GenerationOptions,
    /// One sampler for the whole conversation, as llama.cpp's interactive mode keeps one: penalties and DRY
    /// see every turn, Mirostat's μ and the random draws go on from turn to turn.
    sampler: Sampler,
    last: TurnStats,
    interactive: bool,
}

pub fn chat(common: &Common, args: &ChatArgs) -> Result<()> {
    let mut opts = generation_options(&args.sampling)?;
    let m = common.load()?;
    fit_options_to_model(&mut opts, &args.sampling, &m.tokenizer)?;
    let template = ChatTemplate::from_gguf(&m.model.file, &m.tokenizer).context("cannot set up the chat template")?;
    let interactive = std::io::stdin().is_terminal();

    let interrupts = Arc::new(Interrupts {
        generating: AtomicBool::new(false),
        cancel: Arc::new(AtomicBool::new(false)),
        at_prompt: AtomicUsize::new(0),
    });
    opts.cancel = Some(interrupts.cancel.clone());
    let handler_state = interrupts.clone();
    ctrlc::set_handler(move || {
        if handler_state.generating.load(Ordering::SeqCst) {
            handler_state.cancel.store(true, Ordering::SeqCst);
        } else if handler_state.at_prompt.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!();
            std::process::exit(130);
        } else {
            eprintln!("\n(Ctrl-C again, /quit or end of input to leave)");
        }
    })
    .context("cannot install the Ctrl-C handler")?;

    let mut chat = Chat {
        m: &m,
        template,
        session: Session::new(&m.model, m.ctx),
        messages: Vec::new(),
        cached: Vec::new(),
        sampler: Sampler::for_model(opts.sampling.clone(), &m.tokenizer, m.ctx),
        opts,
        last: TurnStats::default(),
        interactive,
    };
    if let Some(system) = args.system.as_deref().filter(|s| !s.is_empty()) {
        chat.messages.push(ChatMessage::system(system));
    }
    if interactive {
        eprintln!(
            "chatting with {} (template: {}, context: {} tokens); /help lists the commands",
            m.model.config.arch.name(),
            chat.template.source().as_str(),
            m.ctx
        );
    }

    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut line = String::new();
    loop {
        if interactive {
            print!("\x1b[1m>>> \x1b[0m");
            std::io::stdout().flush()?;
        }
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            if interactive {
                println!();
            }
            return Ok(());
        }
        interrupts.at_prompt.store(0, Ordering::SeqCst);
        let input = line.trim_end_matches(['\n', '\r']);
        if input.trim().is_empty() {
            continue;
        }
        if let Some(command) = input.strip_prefix('/') {
            match chat.command(command) {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => {
                    eprintln!("error: {}", gemma_server::error_report(&*e));
                    continue;
                }
            }
        }
        interrupts.cancel.store(false, Ordering::SeqCst);
        interrupts.generating.store(true, Ordering::SeqCst);
        let result = chat.turn(input);
        interrupts.generating.store(false, Ordering::SeqCst);
        if let Err(e) = result {
            eprintln!("error: {}", gemma_server::error_report(&*e));
        }
    }
}

impl Chat<'_> {
    /// Runs a `/command`; `Ok(false)` means quit.
    fn command(&mut self, command: &str) -> Result<bool> {
        let (name, arg) = match command.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (command, ""),
        };
        let mut out = std::io::stdout().lock();
        match name {
            "quit" | "exit" | "bye" => return Ok(false),
            "help" | "?" => writeln!(out, "{HELP}")?,
            "clear" => {
                self.messages.retain(|m| m.role == "system");
                self.session.reset();
                self.cached.clear();
                self.sampler.reset();
                self.last = TurnStats::default();
                self.notice("conversation cleared");
            }
            "system" => {
                self.messages.retain(|m| m.role != "system");
                if !arg.is_empty() {
                    self.messages.insert(0, ChatMessage::system(arg));
                    self.notice("system prompt set");
                } else {
                    self.notice("system prompt removed");
                }
            }
            "save" => {
                if arg.is_empty() {
                    anyhow::bail!("/save needs a file name");
                }
                let json = serde_json::to_string_pretty(&self.messages)?;
                std::fs::write(arg, json + "\n").with_context(|| format!("cannot write {arg}"))?;
                self.notice(&format!("saved {} messages to {arg}", self.messages.len()));
            }
            "load" => {
                if arg.is_empty() {
                    anyhow::bail!("/load needs a file name");
                }
                self.messages = read_conversation(Path::new(arg))?;
                // The cache is kept: the next turn reuses whatever prefix the loaded conversation shares.
                self.notice(&format!("loaded {} messages from {arg}", self.messages.len()));
            }
            "stats" => {
                let turns = self.messages.iter().filter(|m| m.role == "user").count();
                writeln!(out, "turns: {turns}")?;
                writeln!(out, "context_tokens: {}", self.session.len())?;
                writeln!(out, "context_size: {}", self.session.context_len())?;
                writeln!(out, "prefilled_last_turn: {}", self.last.prefilled)?;
                writeln!(out, "reused_last_turn: {}", self.last.reused)?;
                writeln!(out, "generated_last_turn: {}", self.last.generated)?;
                writeln!(out, "prefill_tok_s: {:.1}", self.last.prefill_tok_s)?;
                writeln!(out, "decode_tok_s: {:.1}", self.last.decode_tok_s)?;
            }
            other => anyhow::bail!("unknown command /{other}; /help lists them"),
        }
        out.flush()?;
        Ok(true)
    }

    /// Acknowledgements go to stderr so that stdout carries only answers and requested output.
    fn notice(&self, text: &str) {
        if self.interactive {
            eprintln!("\x1b[2m[{text}]\x1b[0m");
        } else {
            eprintln!("[{text}]");
        }
    }

    /// The system message, if any, and the index of the first message after it.
    fn history_start(&self) -> usize {
        usize::from(self.messages.first().is_some_and(|m| m.role == "system"))
    }

    /// One user message and the streamed answer.
    fn turn(&mut self, input: &str) -> Result<()> {
        self.messages.push(ChatMessage::user(input));
        let ctx = self.session.context_len();
        // Room left for the answer before old turns are dropped.
        let reserve = self.opts.max_tokens.min(ctx / 2).max(1);
        let ids = loop {
            let ids = match self.template.encode(&self.m.tokenizer, &self.messages, true) {
                Ok(ids) => ids,
                Err(e) => {
                    self.messages.pop();
                    return Err(e).context("the chat template cannot render this conversation");
                }
            };
            if ids.len() + reserve <= ctx {
                break ids;
            }
            // Drop the oldest user/assistant exchange, keeping the system prompt and the new message.
            let start = self.history_start();
            let dropped = self.messages.len() - start - 1;
            if dropped == 0 {
                self.messages.pop();
                anyhow::bail!(
                    "the message is {} tokens long and does not fit in the context of {ctx} with room for an answer",
                    ids.len()
                );
            }
            let n = if dropped >= 2 && self.messages[start + 1].role == "assistant" { 2 } else { 1 };
            self.messages.drain(start..start + n);
            self.notice("context full: dropped the oldest turn");
        };

        let keep = reusable_prefix_len(&self.cached, &ids);
        let kept = self.session.truncate(keep);
        let new_ids = &ids[kept..];
        // The sampler sees the conversation as the cache holds it, then the new tokens (generation accepts
        // those): exact even when the cache was cut back to a shorter shared prefix.
        self.sampler.forget_tokens();
        self.sampler.accept_all(&ids[..kept]);
        let stream = std::io::stdout();
        let mut on_token = |event: &TokenEvent<'_>| {
            let mut out = stream.lock();
            let _ = out.write_all(event.text.as_bytes());
            let _ = out.flush();
        };
        let result = self.session.generate_streaming_with(
            &mut self.sampler,
            &self.m.tokenizer,
            new_ids,
            &self.opts,
            &self.m.pool,
            &mut on_token,
        );
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                // The cache may hold part of the prompt; start the next turn from a known state.
                self.session.reset();
                self.cached.clear();
                self.messages.pop();
                if matches!(e, ModelError::ContextFull { .. }) {
                    return Err(e).context("the context is full (try /clear)");
                }
                return Err(e.into());
            }
        };
        println!();
        // The cache holds the prompt and the generated tokens that were fed back (not the last one).
        self.cached = ids;
        self.cached.extend_from_slice(&out.gen_ids);
        self.cached.truncate(self.session.len());
        self.last = TurnStats {
            prefilled: out.prompt_ids.len(),
            reused: kept,
            prefill_tok_s: out.prefill_tok_s(),
            decode_tok_s: out.decode_tok_s(),
            generated: out.gen_ids.len(),
        };
        self.messages.push(ChatMessage::assistant(out.text.clone()));
        match out.stop_reason {
            StopReason::Cancelled => self.notice("answer stopped"),
            StopReason::ContextFull => {
                self.notice("context full: the answer was cut; older turns are dropped from the next turn on")
            }
            StopReason::MaxTokens if self.interactive => self.notice("answer cut at --max-tokens"),
            _ => {}
        }
        Ok(())
    }
}

fn read_conversation(path: &Path) -> Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let messages: Vec<ChatMessage> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a conversation (a JSON list of {{role, content}})", path.display()))?;
    if let Some(bad) = messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
        anyhow::bail!("{}: unknown role '{}'", path.display(), bad.role);
    }
    Ok(messages)
}
