//! The relay's error type. Library code returns [`RelayError`]; only the binary uses `anyhow`.

use std::path::PathBuf;

use thiserror::Error;

/// Anything that stops a relay from starting or an operation from completing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listener could not bind: names the config field, so that an operator with two relays
    /// on one host knows which port to change.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    /// A config problem; the message names the file (when read from one), the field, what it
    /// holds and the form expected.
    #[error("{0}")]
    Config(String),
    #[error("key file: {0}")]
    Keys(String),
    #[error("directory: {0}")]
    Directory(String),
    #[error(transparent)]
    Protocol(#[from] spore_protocol::Error),
    #[error("link: {0}")]
    Link(String),
    #[error("timed out")]
    Timeout,
    #[error("the relay is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = RelayError> = std::result::Result<T, E>;

/// Unix seconds shown as a UTC date and time (`2026-12-05 04:12:02 UTC`), for validity errors
/// and `spore-relay status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime(pub u64);

impl std::fmt::Display for UtcTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days = self.0 / 86_400;
        let secs = self.0 % 86_400;
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_is_a_civil_date() {
        assert_eq!(UtcTime(0).to_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(UtcTime(951_782_400).to_string(), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            UtcTime(1_796_444_522).to_string(),
            "2026-12-05 04:22:02 UTC"
        );
    }
}
