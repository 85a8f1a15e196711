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
    #[error(transparent)]
    Storage(#[from] StorageError),
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

/// The durable store (outbox, inbox, dedup tables in the data dir) failed.
///
/// The database behind it is an implementation detail (`store.rs` maps its errors here and
/// nowhere else): callers decide on [`Self::kind`], and the message names the database's own
/// error for operators.
#[derive(Debug, Error)]
#[error("storage: {database}")]
pub struct StorageError {
    kind: StorageErrorKind,
    /// The database's own error, as text: its type stays out of the API.
    database: String,
}

/// What kind of failure a [`StorageError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The data dir could not be read or written, or another process (or a transport in this
    /// one that has not finished stopping) holds its lock.
    Io,
    /// The database files are damaged.
    Corrupt,
    /// Anything else the database reports (unsupported operation, a bug of its own).
    Other,
}

impl StorageError {
    pub(crate) fn new(kind: StorageErrorKind, database: &dyn std::fmt::Display) -> Self {
        Self {
            kind,
            database: database.to_string(),
        }
    }

    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
