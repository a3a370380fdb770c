//! `gemma chat` (and the guide's `gemma --chat`): a multi-turn conversation over one KV cache.
//!
//! The conversation itself (cache reuse between turns, dropping old turns when the context is full) is
//! `gemma_core::Conversation`; this is the terminal around it. When stdin is not a terminal the output is just
//! the answers, one per turn, for scripts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::generate::TokenEvent;
use gemma_core::{Conversation, ConversationError, ModelError, SpecStats, StopReason};
use gemma_ops::ThreadPool;

use crate::args::ChatArgs;
use crate::commands::{fit_options_to_model, generation_options, usage, Common};

const HELP: &str = "\
commands:
  /clear          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (empty TEXT removes it)
  /save FILE      write the conversation to FILE as JSON
  /load FILE      read a conversation written by /save
  /stats          turns, context use and the speed of the last turn
  /help           this list
  /quit           leave (so does end of input, or Ctrl-C twice at the prompt)
A message goes on to the next line after a line that ends in \\, or between \"\"\" and \"\"\".
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
    /// Speculative decoding's counts (`--spec-type`).
    speculative: Option<SpecStats>,
}

struct Chat<'m> {
    conversation: Conversation<'m>,
    pool: &'m ThreadPool,
    last: TurnStats,
    interactive: bool,
    /// `--spec-type` is on: `/stats` shows the drafts.
    speculating: bool,
}

pub fn chat(common: &Common, args: &ChatArgs) -> Result<()> {
    let mut opts = generation_options(&args.sampling)?;
    opts.speculative = args.spec.params().map_err(|e| usage(format!("--spec-type: {e}")))?;
    let m = common.load()?;
    crate::commands::attach_draft_model(&mut opts, &args.spec, &m.model)?;
    fit_options_to_model(&mut opts, &args.sampling, &m.tokenizer)?;
    if args.context_shift {
        // llama-server's rule (llama-cli runs on it): BOS is kept on top of --keep.
        let keep = args.keep.saturating_add(usize::from(m.tokenizer.add_bos()));
        opts.context_shift = Some(gemma_core::ContextShift { keep, discard: None });
    }
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

    let speculating = opts.speculative.is_some();
    let mut conversation = Conversation::new(&m.model, &m.tokenizer, &template, m.ctx, opts)?;
    conversation.set_system(args.system.as_deref());
    let mut chat = Chat { conversation, pool: &m.pool, last: TurnStats::default(), interactive, speculating };
    if interactive {
        eprintln!(
            "chatting with {} (template: {}, context: {} tokens); /help lists the commands",
            m.model.config.arch.name(),
            template.source().as_str(),
            m.ctx
        );
    }

    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    loop {
        if interactive {
            out!("\x1b[1m>>> \x1b[0m")?;
        }
        let Some(message) = read_message(&mut lines, interactive)? else {
            if interactive {
                outln!()?;
            }
            return Ok(());
        };
        interrupts.at_prompt.store(0, Ordering::SeqCst);
        let input = message.as_str();
        if input.trim().is_empty() {
            continue;
        }
        if let Some(command) = input.strip_prefix('/') {
            match chat.command(command) {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) if crate::reader_went_away(&e) => return Err(e),
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
        match result {
            // Nobody reads the answers any more: the conversation is over.
            Err(e) if crate::reader_went_away(&e) => return Err(e),
            Err(e) => eprintln!("error: {}", gemma_server::error_report(&*e)),
            Ok(()) => {}
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
                self.conversation.clear();
                self.last = TurnStats::default();
                self.notice("conversation cleared");
            }
            "system" => {
                self.conversation.set_system(Some(arg));
                self.notice(if arg.is_empty() { "system prompt removed" } else { "system prompt set" });
            }
            "save" => {
                if arg.is_empty() {
                    anyhow::bail!("/save needs a file name");
                }
                let messages = self.conversation.messages();
                let json = serde_json::to_string_pretty(messages)?;
                std::fs::write(arg, json + "\n").with_context(|| format!("cannot write {arg}"))?;
                self.notice(&format!("saved {} messages to {arg}", messages.len()));
            }
            "load" => {
                if arg.is_empty() {
                    anyhow::bail!("/load needs a file name");
                }
                let messages = read_conversation(Path::new(arg))?;
                let n = messages.len();
                self.conversation.set_messages(messages).with_context(|| arg.to_string())?;
                self.notice(&format!("loaded {n} messages from {arg}"));
            }
            "stats" => {
                let turns = self.conversation.messages().iter().filter(|m| m.role == "user").count();
                writeln!(out, "turns: {turns}")?;
                writeln!(out, "context_tokens: {}", self.conversation.context_used())?;
                writeln!(out, "context_size: {}", self.conversation.context_len())?;
                writeln!(out, "prefilled_last_turn: {}", self.last.prefilled)?;
                writeln!(out, "reused_last_turn: {}", self.last.reused)?;
                writeln!(out, "generated_last_turn: {}", self.last.generated)?;
                writeln!(out, "prefill_tok_s: {:.1}", self.last.prefill_tok_s)?;
                writeln!(out, "decode_tok_s: {:.1}", self.last.decode_tok_s)?;
                if let Some(st) = self.last.speculative {
                    writeln!(out, "drafts_last_turn: {}", st.drafts)?;
                    writeln!(out, "draft_n_last_turn: {}", st.draft_n)?;
                    writeln!(out, "draft_n_accepted_last_turn: {}", st.draft_n_accepted)?;
                }
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

    /// One user message and the streamed answer.
    fn turn(&mut self, input: &str) -> Result<()> {
        let stream = std::io::stdout();
        let mut on_token = |event: &TokenEvent<'_>| {
            let mut out = stream.lock();
            let _ = out.write_all(event.text.as_bytes());
            let _ = out.flush();
        };
        let turn = match self.conversation.send(input, self.pool, &mut on_token) {
            Ok(turn) => turn,
            Err(ConversationError::Model(e @ ModelError::ContextFull { .. })) => {
                return Err(e).context("the context is full (try /clear)")
            }
            Err(e) => return Err(e.into()),
        };
        outln!()?;
        if turn.dropped_messages > 0 {
            let what = if turn.dropped_messages > 2 { "turns" } else { "turn" };
            self.notice(&format!("context full: dropped the oldest {what} ({} messages)", turn.dropped_messages));
        }
        let out = &turn.output;
        self.last = TurnStats {
            prefilled: out.prompt_ids.len(),
            reused: turn.reused,
            prefill_tok_s: out.prefill_tok_s(),
            decode_tok_s: out.decode_tok_s(),
            generated: out.gen_ids.len(),
            speculative: self.speculating.then_some(out.speculative),
        };
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

/// Reads one message from `lines`: a line, or several joined by newlines when they continue, as in
/// llama.cpp's interactive mode (a line ending in `\`) and ollama's (`"""` to `"""`). `None` at the end of the
/// input; a block that the input ends inside is what it has so far.
fn read_message(lines: &mut impl BufRead, interactive: bool) -> Result<Option<String>> {
    const FENCE: &str = "\"\"\"";
    let mut line = String::new();
    if lines.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let first = line.trim_end_matches(['\n', '\r']);
    let mut message = String::new();
    if let Some(rest) = first.trim_start().strip_prefix(FENCE) {
        let mut current = rest.to_string();
        loop {
            if let Some(end) = current.find(FENCE) {
                message.push_str(&current[..end]);
                break;
            }
            message.push_str(&current);
            if interactive {
                out!("... ")?;
            }
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                break;
            }
            // The newline after the opening fence is not part of the message.
            if !(message.is_empty() && current.is_empty()) {
                message.push('\n');
            }
            current = line.trim_end_matches(['\n', '\r']).to_string();
        }
        return Ok(Some(message));
    }
    let mut current = first.to_string();
    while let Some(kept) = current.strip_suffix('\\') {
        message.push_str(kept);
        message.push('\n');
        if interactive {
            out!("... ")?;
        }
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            current.clear();
            break;
        }
        current = line.trim_end_matches(['\n', '\r']).to_string();
    }
    message.push_str(&current);
    Ok(Some(message))
}

fn read_conversation(path: &Path) -> Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let messages: Vec<ChatMessage> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a conversation (a JSON list of {{role, content}})", path.display()))?;
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::read_message;

    fn messages(input: &str) -> Vec<String> {
        let mut lines = input.as_bytes();
        std::iter::from_fn(|| read_message(&mut lines, false).unwrap()).collect()
    }

    #[test]
    fn messages_continue_after_a_backslash_and_inside_triple_quotes() {
        assert_eq!(messages("one\ntwo\r\n"), ["one", "two"]);
        assert_eq!(messages("first \\\nsecond\\\nthird\nnext\n"), ["first \nsecond\nthird", "next"]);
        assert_eq!(messages("\"\"\"\nline 1\n\nline 3\n\"\"\"\nafter\n"), ["line 1\n\nline 3\n", "after"]);
        assert_eq!(messages("\"\"\"Name\na color.\"\"\"\n"), ["Name\na color."]);
        assert_eq!(messages("  \"\"\"one line\"\"\" ignored\n"), ["one line"]);
        // The input ends inside a block or after a backslash: what came so far.
        assert_eq!(messages("\"\"\"unfinished\nblock"), ["unfinished\nblock"]);
        assert_eq!(messages("dangling\\"), ["dangling\n"]);
        assert_eq!(messages("/stats\n"), ["/stats"]);
    }
}
