//! The sidecar's errors: its own config and sockets, or the transport underneath.

use std::net::SocketAddr;
use std::path::PathBuf;

use spore_client::ClientError;

/// Why the sidecar cannot start (or a config cannot be read).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// A file named in the config (the config itself, the mailbox key) could not be read.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listen address could not be bound.
    #[error("{addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The config cannot work (bad TOML, a key that is not hex, an unusable local CA...).
    #[error("config: {0}")]
    Config(String),
    /// The transport refused to start.
    #[error(transparent)]
    Transport(#[from] ClientError),
}

pub type Result<T, E = SidecarError> = std::result::Result<T, E>;
