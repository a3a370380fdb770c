//! The server library's errors. The binaries (`gemma-server`, `gemma serve`, `gemma client`) print them with
//! [`crate::error_report`].

use std::path::PathBuf;

use crate::config::ConfigError;

/// Why the engine could not load its model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot start {threads} threads (inference.threads)")]
    Threads {
        threads: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] gemma_fetch::FetchError),
    #[error("cannot load {}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: Box<gemma_core::ModelError>,
    },
    #[error("cannot load the tokenizer")]
    Tokenizer(#[source] Box<gemma_core::ModelError>),
    #[error("cannot load the chat template")]
    ChatTemplate(#[source] gemma_core::chat::ChatTemplateError),
    #[error("cannot load LoRA adapter {}", path.display())]
    Lora {
        path: PathBuf,
        #[source]
        source: Box<gemma_core::lora::LoraError>,
    },
}

/// Why the server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the engine thread")]
    EngineThread(#[source] std::io::Error),
    /// The engine's report of a [`LoadError`] (it also answers `/health` with it).
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("the engine stopped while loading")]
    EngineStopped,
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
    #[error("the server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Why `gemma client` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("cannot reach the server at {base}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server's model list is not JSON")]
    ModelListNotJson(#[source] reqwest::Error),
    #[error("the server lists no model")]
    NoModel,
    #[error("the server answered {status}: {message}")]
    Status { status: reqwest::StatusCode, message: String },
    #[error("the request failed")]
    Request(#[source] reqwest::Error),
    #[error("the stream broke off")]
    Stream(#[source] reqwest::Error),
    #[error("a stream event is not JSON: {data}")]
    EventNotJson {
        data: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the server failed: {0}")]
    ServerFailed(String),
    #[error("cannot read the input")]
    Input(#[source] std::io::Error),
    #[error("cannot write the answer")]
    Output(#[from] std::io::Error),
}
