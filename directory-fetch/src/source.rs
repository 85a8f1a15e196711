//! Where directory bytes come from, and fetching them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Where directory bytes come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DirectorySource {
    /// No directory: a relay can store and serve mailboxes but forwards nothing.
    None,
    /// A file, re-read on every refresh (the authorities' tool writes it atomically).
    File(PathBuf),
    /// Bytes set in-process (tests, tools embedding a relay).
    Memory(MemoryDirectory),
    /// `GET http://host:port/path` from a directory authority (`spore authority run`) or a mirror.
    /// Plain HTTP is enough: the document is signed and verified by threshold, so transport
    /// security would add only hiding that a reader fetched the (public) directory.
    Http(String),
    /// Several authority or mirror URLs, tried in turn ([`crate::DirectoryFetcher`] takes the
    /// first that verifies and is not older than what the reader has).
    Mirrors(Vec<String>),
}

/// Why directory bytes could not be fetched.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The URL, the connection or the authority's answer.
    #[error("{0}")]
    Http(String),
    #[error("timed out")]
    Timeout,
    /// A document was fetched but does not verify (forged, expired, malformed). Reported once
    /// per document: fetching the same bytes again is "nothing new".
    #[error("directory from {from} refused: {source}")]
    Refused {
        from: String,
        source: spore_protocol::Error,
    },
}

impl DirectorySource {
    /// The single sources this one tries, in turn (a list of mirrors is one per URL).
    pub fn each(&self) -> Vec<DirectorySource> {
        match self {
            DirectorySource::Mirrors(urls) => {
                urls.iter().cloned().map(DirectorySource::Http).collect()
            }
            other => vec![other.clone()],
        }
    }

    /// The current bytes, or `None` if the source has nothing yet (no source, a missing
    /// file, an authority answering 404 or 503).
    pub async fn fetch(&self) -> Result<Option<Vec<u8>>, FetchError> {
        match self {
            DirectorySource::None => Ok(None),
            DirectorySource::File(path) => match tokio::fs::read(path).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(FetchError::File {
                    path: path.clone(),
                    source,
                }),
            },
            DirectorySource::Memory(m) => Ok(m.get()),
            DirectorySource::Http(url) => crate::http::get(url).await,
            DirectorySource::Mirrors(urls) => {
                let mut last = Ok(None);
                for url in urls {
                    last = crate::http::get(url).await;
                    if let Ok(Some(_)) = last {
                        break;
                    }
                }
                last
            }
        }
    }
}

impl std::fmt::Display for DirectorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectorySource::None => f.write_str("no directory source"),
            DirectorySource::File(p) => write!(f, "{}", p.display()),
            DirectorySource::Memory(_) => f.write_str("in-memory directory"),
            DirectorySource::Http(url) => f.write_str(url),
            DirectorySource::Mirrors(urls) => f.write_str(&urls.join(", ")),
        }
    }
}

/// A directory held in memory and shared with whoever sets it.
#[derive(Debug, Clone, Default)]
pub struct MemoryDirectory {
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

impl MemoryDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the directory; readers pick it up on their next refresh.
    pub fn set(&self, bytes: Vec<u8>) {
        *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
    }

    pub fn get(&self) -> Option<Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_file_is_no_directory_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.bin");
        let source = DirectorySource::File(path.clone());
        assert_eq!(source.fetch().await.unwrap(), None);
        std::fs::write(&path, b"doc").unwrap();
        assert_eq!(source.fetch().await.unwrap(), Some(b"doc".to_vec()));
        assert!(
            DirectorySource::File(dir.path().to_owned())
                .fetch()
                .await
                .is_err(),
            "a directory is not a file"
        );
    }

    #[tokio::test]
    async fn memory_source_returns_what_was_set() {
        let m = MemoryDirectory::new();
        let source = DirectorySource::Memory(m.clone());
        assert_eq!(source.fetch().await.unwrap(), None);
        m.set(b"doc".to_vec());
        assert_eq!(source.fetch().await.unwrap(), Some(b"doc".to_vec()));
    }
}
