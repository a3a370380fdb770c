//! `gemma serve` (the server of `gemma-server`) and `gemma client` (its terminal client).

use std::io::IsTerminal as _;

use anyhow::{Context as _, Result};
use gemma_server::client::ClientArgs;
use gemma_server::{ServeArgs, ServerConfig};

use crate::commands::Common;

/// Runs the server until SIGINT/SIGTERM. `gemma --model M serve` works as well as `gemma serve --model M`.
pub(crate) fn serve(common: &Common, mut args: ServeArgs) -> Result<()> {
    if common.load_options.rope_freq_base.is_some() {
        anyhow::bail!("--rope-freq-base is not supported by the server");
    }
    args.model = args.model.or_else(|| common.model.clone());
    args.threads = args.threads.or(common.threads);
    args.ctx = args.ctx.or(common.ctx);
    gemma_server::init_logging();
    let config = ServerConfig::from_args(&args)?;
    Ok(runtime()?.block_on(gemma_server::serve(config))?)
}

/// Chats with a running server: lines from stdin, answers streamed to stdout.
pub(crate) fn client(args: &ClientArgs) -> Result<()> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut out = std::io::stdout();
    Ok(runtime()?.block_on(gemma_server::client::run(args, stdin.lock(), &mut out, interactive))?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("cannot start the async runtime")
}
