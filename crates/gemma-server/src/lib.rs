//! `gemma-server`: an OpenAI-, Gemini- and ollama-compatible HTTP server over gemma-rs with continuous batching, a prefix cache,
//! SSE streaming, API keys / JWTs, rate limits and Prometheus metrics.
//!
//! [`serve`] runs until SIGINT/SIGTERM; [`start`] is the same server as a handle (tests, embedding).

pub mod anthropic;
pub mod api_error;
pub mod auth;
pub mod client;
pub mod config;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod fields;
#[doc(hidden)]
pub mod fuzzing;
pub mod gemini;
pub mod generate;
pub mod llama_native;
pub mod llama_server;
pub mod metrics;
pub mod model_info;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod server;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

pub use config::{llama_short_flags, parse_cache_type, CacheTypeArgs, LoraArgs, ServeArgs, ServerConfig, SpecArgs};
pub use error::{ClientError, LoadError, ServerError};

/// An error and its causes on one line (the front ends' shared report; re-exported for the `gemma` binary).
pub use gemma_core::error::error_report;

/// Logs to stderr at the level of `RUST_LOG` (default `info`). Keys never reach the logs.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A running server.
pub struct RunningServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    loaded: Option<oneshot::Receiver<Result<(), String>>>,
}

impl RunningServer {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections; requests in flight get the grace period to finish.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the model is loaded; `Err` with the reason when it could not be.
    pub async fn wait_loaded(&mut self) -> Result<(), ServerError> {
        match self.loaded.take() {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(report)) => Err(ServerError::Load(report)),
                Err(_) => Err(ServerError::EngineStopped),
            },
        }
    }

    /// Waits for the server to finish (after [`RunningServer::shutdown`]).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(ServerError::Task)?
    }
}

/// Binds the listener, starts loading the model in the background (`/health` answers 503 meanwhile) and
/// serves.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let listen_error = |source| ServerError::Listen { addr: format!("{}:{}", config.host, config.port), source };
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await.map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let engine = engine::spawn(
        engine::EngineConfig {
            model: config.model.clone(),
            parallel: config.parallel,
            ctx: config.ctx,
            threads: config.threads,
            queue_size: config.queue_size,
            prefix_cache_tokens: config.prefix_cache_tokens,
            prefill_chunk: config.prefill_chunk,
            request_timeout: Duration::from_secs(config.timeout_seconds),
            max_sessions: config.max_sessions,
            speculative: config.speculative.clone(),
            loras: config.loras.clone(),
            cache_types: config.cache_types,
        },
        metrics.clone(),
    )
    .map_err(ServerError::EngineThread)?;
    let app = server::router(server::AppState::new(&config, engine.handle, metrics));
    let (stop, mut stopped) = watch::channel(false);
    let mut deadline_rx = stop.subscribe();
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        let deadline = async move {
            let _ = deadline_rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = std::future::IntoFuture::into_future(server) => r.map_err(ServerError::Http),
            _ = deadline => {
                tracing::warn!("in-flight requests did not finish within {grace:?}; exiting anyway");
                Ok(())
            }
        }
    });
    tracing::info!("listening on http://{addr}");
    Ok(RunningServer { addr, stop, task, loaded: Some(engine.loaded) })
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully. Fails when the model cannot be
/// loaded.
pub async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let mut server = start(config).await?;
    let loaded = server.loaded.take();
    let load_failure = async move {
        match loaded {
            Some(rx) => match rx.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) | Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: no new connections; waiting for requests in flight");
            server.shutdown();
            server.wait().await
        }
        e = load_failure => {
            server.shutdown();
            let _ = server.wait().await;
            Err(ServerError::Load(e))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::error_report;

    #[derive(Debug, thiserror::Error)]
    #[error("x.sbs: cannot write file: {source}")]
    struct QuotesItsSource {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
        let e = anyhow::Error::new(QuotesItsSource { source: io }).context("converting model.gguf");
        assert_eq!(error_report(&*e), "converting model.gguf: x.sbs: cannot write file: no such directory");
        assert_eq!(format!("{e:#}").matches("no such directory").count(), 2, "what `{{:#}}` prints");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_report(&*plain), "outer: inner");
    }
}
