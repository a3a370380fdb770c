//! `gemma`: generate text, inspect models and tokenizers, pull models.
//!
//! Two styles share the same flags: the user guide's (`gemma --weights W --prompt P --max-tokens N`,
//! `--encode`, `--decode`, `--print-config`, `--print-backend`) and subcommands in the style of ollama and
//! cargo (`gemma run`, `gemma tokenize`, `gemma info`, `gemma logits`, `gemma pull`, ...).

mod args;
mod bench;
mod chat;
mod commands;
mod convert;
mod embed;
mod serve;
mod sysinfo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr with code 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
