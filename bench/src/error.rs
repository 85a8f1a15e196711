//! Why a benchmark could not run or finish: the crate's own error type, so that `spore-bench`
//! stays a library with typed errors and `anyhow` stays in the `spore` binary.

use std::fmt::Display;

use thiserror::Error;

/// Any error a benchmark returns.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A file, socket or child process failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Relay(#[from] spore_relay::RelayError),
    #[error(transparent)]
    Client(#[from] spore_client::ClientError),
    #[error(transparent)]
    Protocol(#[from] spore_protocol::Error),
    #[error(transparent)]
    Testnet(#[from] spore_testkit::TestnetError),
    /// A bench task panicked or was cancelled.
    #[error("bench task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The config written for a relay process does not serialize.
    #[error("relay config: {0}")]
    Config(#[from] toml::ser::Error),
    /// A number in what a relay reported does not parse.
    #[error(transparent)]
    Number(#[from] std::num::ParseFloatError),
    /// The bench cannot do what it was asked, or what it saw makes no sense (a relay that
    /// exited, a malformed metrics page).
    #[error("{0}")]
    Failed(String),
    /// What the bench was doing when `source` happened.
    #[error("{what}: {source}")]
    During {
        what: String,
        #[source]
        source: Box<BenchError>,
    },
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Says what the bench was doing when an error happened (the message an operator reads).
pub(crate) trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<BenchError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| BenchError::During {
            what: what.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| BenchError::During {
            what: what().to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.ok_or_else(|| BenchError::Failed(what.to_string()))
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| BenchError::Failed(what().to_string()))
    }
}

/// Returns a [`BenchError::Failed`] with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::BenchError::Failed(format!($($arg)*)))
    };
}
pub(crate) use bail;
