//! `gemma`: generate text, inspect models and tokenizers, pull models.
//!
//! Two styles share the same flags: the user guide's (`gemma --weights W --prompt P --max-tokens N`,
//! `--encode`, `--decode`, `--print-config`, `--print-backend`) and subcommands in the style of ollama and
//! cargo (`gemma run`, `gemma tokenize`, `gemma info`, `gemma logits`, `gemma pull`, ...).

/// `println!` that returns the write's error instead of panicking: stdout may be a pipe whose reader has gone
/// (`gemma info | head -1`), and that ends the command quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` as [`outln!`], flushed (prompts).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*).and_then(|()| stdout.flush())
    }};
}

mod args;
mod bench;
mod chat;
mod commands;
mod convert;
mod embed;
mod export_lora;
mod gguf_split;
mod imatrix;
mod interrupt;
mod perplexity;
mod quantize;
mod serve;
mod sysinfo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse_from(llama_bench_spelling(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr with code 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`gemma run ... | head`): it wants no more, which is no failure,
        // as for ripgrep and other tools that exit quietly rather than die of SIGPIPE.
        Err(e) if reader_went_away(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(usage) = e.downcast_ref::<commands::UsageError>() {
                eprintln!("error: {usage}");
                return ExitCode::from(2);
            }
            eprintln!("error: {}", gemma_server::error_report(&*e));
            ExitCode::from(1)
        }
    }
}

/// The arguments with llama-bench's two-letter `-pg` read as `--pg` in `gemma bench` (clap's short flags are one
/// letter).
fn llama_bench_spelling(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut in_bench = false;
    args.map(|a| {
        in_bench |= a == "bench";
        if in_bench && a == "-pg" {
            "--pg".into()
        } else if a == "-ctk" {
            "--cache-type-k".into()
        } else if a == "-ctv" {
            "--cache-type-v".into()
        } else {
            a
        }
    })
    .collect()
}

/// Whether `e` comes from writing to a stdout whose reader has gone.
pub(crate) fn reader_went_away(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
