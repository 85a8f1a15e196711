//! The relay's error type. Library code returns [`RelayError`]; only the binary uses `anyhow`.

use std::path::PathBuf;

use thiserror::Error;

/// Anything that stops a relay from starting or an operation from completing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("config: {0}")]
    Config(String),
    #[error("key file: {0}")]
    Keys(String),
    #[error("directory: {0}")]
    Directory(String),
    #[error("protocol: {0}")]
    Protocol(#[from] spore_protocol::Error),
    #[error("link: {0}")]
    Link(String),
    #[error("timed out")]
    Timeout,
    #[error("the relay is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = RelayError> = std::result::Result<T, E>;
