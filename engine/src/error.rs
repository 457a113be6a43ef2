//! Why the engine could not start, or stopped with an error.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::store::StoreError;

/// Why the engine could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for the admin API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] connectors::kafka::SourceError),
    #[error(transparent)]
    Sink(#[from] connectors::kafka::sink::SinkError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Changelog(#[from] connectors::kafka::changelog::ChangelogError),
    /// Cluster mode needs the group's changelog topic, made by the operator.
    #[error("cluster mode: {0}")]
    Cluster(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A task of the engine panicked or failed outside the cases above.
    #[error("{task} failed: {reason}")]
    Task { task: &'static str, reason: String },
}

impl EngineError {
    pub(crate) fn task(task: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Task {
            task,
            reason: reason.to_string(),
        }
    }
}
