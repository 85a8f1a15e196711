//! The client's errors, split by who is at fault (the house habit).

use thiserror::Error;

/// Any error the transport returns.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The protocol layer refused something (a malformed packet, an oversized request...).
    #[error(transparent)]
    Protocol(#[from] spore_protocol::Error),
    /// The durable store failed; nothing was acknowledged.
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// A file (directory, key) could not be read.
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// No usable signed directory (missing, badly signed, expired, or without a route).
    #[error("directory: {0}")]
    Directory(String),
    /// The configuration cannot work.
    #[error("config: {0}")]
    Config(String),
    /// A stored record does not parse: the data dir is damaged or from another version.
    #[error("corrupt store record: {0}")]
    Corrupt(&'static str),
    /// `request()` got no response in time.
    #[error("request timed out")]
    Timeout,
    /// The peer cannot be reached through Spore (unknown server name, no mailbox relay).
    #[error("no spore address for {0}")]
    UnknownDestination(String),
    /// The inbound id is not (or no longer) in the inbox.
    #[error("no such inbound request")]
    UnknownInbound,
    /// The request carries no reply SURBs, or none that starts at our relay.
    #[error("cannot respond: {0}")]
    CannotRespond(&'static str),
    /// The transport is shutting down or has stopped.
    #[error("transport stopped")]
    Stopped,
}

impl From<sled::transaction::TransactionError<ClientError>> for ClientError {
    fn from(e: sled::transaction::TransactionError<ClientError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => ClientError::Storage(e),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
