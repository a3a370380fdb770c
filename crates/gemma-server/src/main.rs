//! `gemma-server`: the OpenAI-compatible server as its own binary (`gemma serve` runs the same thing).

use clap::Parser;
use gemma_server::{ServeArgs, ServerConfig};

#[derive(Parser)]
#[command(name = "gemma-server", version, about = "OpenAI-, Gemini- and ollama-compatible server for Gemma models")]
struct Cli {
    #[command(flatten)]
    args: ServeArgs,
}

fn main() -> std::process::ExitCode {
    gemma_server::init_logging();
    let cli = Cli::parse_from(gemma_server::llama_short_flags(std::env::args_os()));
    let config = match ServerConfig::from_args(&cli.args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gemma-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gemma-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gemma_server::serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemma-server: {}", gemma_server::error_report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
