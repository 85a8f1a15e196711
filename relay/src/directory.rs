//! Where the relay learns the network: the signed directory, re-read periodically from a
//! [`DirectorySource`] and verified against the configured authority keys before use.
//! Fetching is `spore-directory-fetch`'s and verifying is `spore-protocol`'s (shared with
//! clients); this module keeps the view in force and the relay's lookups on it.
//!
//! The relay needs the directory for two things: the address and link key of each next hop
//! (a Sphinx header names a hop by its [`RelayId`] only), and the mixes to route its own loop
//! cover through.

use std::sync::{Arc, RwLock};

use spore_directory_fetch::FetchError;
pub use spore_directory_fetch::{DirectorySource, MemoryDirectory};
use spore_protocol::RelayId;
use spore_protocol::directory::BadAuthorityKey;
pub use spore_protocol::directory::{NetworkView, RelayInfo, Trust};

use crate::clock::Clock;
use crate::error::{RelayError, Result};

/// Authority keys that are not hex are a config error.
impl From<BadAuthorityKey> for RelayError {
    fn from(e: BadAuthorityKey) -> Self {
        RelayError::Config(e.to_string())
    }
}

fn fetch_error(e: FetchError) -> RelayError {
    match e {
        FetchError::File { path, source } => RelayError::File { path, source },
        FetchError::Timeout => RelayError::Timeout,
        other => RelayError::Directory(other.to_string()),
    }
}

/// A next hop's contact details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: String,
    pub link_key: [u8; 32],
}

/// The verified directory currently in force.
pub struct DirectoryView {
    source: DirectorySource,
    trust: Trust,
    clock: Arc<dyn Clock>,
    expected_epoch_length: Option<u64>,
    current: RwLock<Option<Arc<NetworkView>>>,
}

impl std::fmt::Debug for DirectoryView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryView")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl DirectoryView {
    pub fn new(source: DirectorySource, trust: Trust, clock: Arc<dyn Clock>) -> Self {
        Self {
            source,
            trust,
            clock,
            expected_epoch_length: None,
            current: RwLock::new(None),
        }
    }

    /// Warn when a directory's epoch length differs from this relay's.
    pub fn expect_epoch_length(mut self, secs: u64) -> Self {
        self.expected_epoch_length = Some(secs);
        self
    }

    pub fn current(&self) -> Option<Arc<NetworkView>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the source; keeps the old directory if the new one is missing or invalid.
    /// Returns whether a new directory was installed.
    pub async fn refresh(&self) -> Result<bool> {
        let Some(bytes) = self.source.fetch().await.map_err(fetch_error)? else {
            return Ok(false);
        };
        if self
            .current()
            .is_some_and(|c| c.source_bytes() == bytes.as_slice())
        {
            return Ok(false);
        }
        // Signature checks cost ~50 us per descriptor: off the async threads.
        let trust = self.trust.clone();
        let now = self.clock.now_unix();
        let view = tokio::task::spawn_blocking(move || {
            NetworkView::from_directory_bytes(bytes, &trust, now)
        })
        .await
        .map_err(|_| RelayError::Directory("verification task failed".into()))??;
        if let Some(expected) = self.expected_epoch_length
            && view.epoch_length_secs != expected
        {
            tracing::warn!(
                network = view.epoch_length_secs,
                configured = expected,
                "directory epoch length differs from mix.epoch_length_secs: senders will use keys this relay does not expect"
            );
        }
        tracing::info!(
            epoch = view.epoch,
            relays = view.relays.len(),
            "installed directory"
        );
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(view));
        Ok(true)
    }

    /// Whether `key` is the link key of a relay in the directory.
    pub fn is_relay_link_key(&self, key: &[u8; 32]) -> bool {
        self.current()
            .is_some_and(|v| v.relays.values().any(|r| r.link_key == *key))
    }

    /// Address and link key of `id`, if the directory lists it.
    pub fn peer(&self, id: &RelayId) -> Option<Peer> {
        let view = self.current()?;
        let r = view.relays.get(id)?;
        Some(Peer {
            address: r.address.clone(),
            link_key: r.link_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::{Directory, NetworkParams};

    fn doc(now: u64) -> Directory {
        Directory {
            epoch: now / 3600,
            valid_after: now - 10,
            valid_until: now + 3600,
            params: NetworkParams::default(),
            relays: vec![],
            signatures: vec![],
        }
    }

    #[tokio::test]
    async fn file_source_is_verified_and_reread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("directory.bin");
        let auth = SigningKey::from_bytes(&[3; 32]);
        let clock = Arc::new(SystemClock);
        let now = clock.now_unix();
        let view = DirectoryView::new(
            DirectorySource::File(path.clone()),
            Trust {
                authorities: vec![auth.verifying_key().to_bytes()],
                threshold: 1,
            },
            clock,
        );
        assert!(!view.refresh().await.expect("missing file is not an error"));

        std::fs::write(&path, doc(now).to_bytes()).expect("write");
        assert!(
            view.refresh().await.is_err(),
            "unsigned directory is refused"
        );
        assert!(view.current().is_none());

        let mut signed = doc(now);
        signed.sign(&auth).expect("sign");
        std::fs::write(&path, signed.to_bytes()).expect("write");
        assert!(view.refresh().await.expect("valid"));
        assert!(
            !view.refresh().await.expect("same bytes"),
            "unchanged file is not reinstalled"
        );

        let mut forged = doc(now);
        forged.epoch += 1;
        forged
            .sign(&SigningKey::from_bytes(&[4; 32]))
            .expect("sign");
        std::fs::write(&path, forged.to_bytes()).expect("write");
        assert!(view.refresh().await.is_err());
        assert_eq!(
            view.current().expect("kept").epoch,
            now / 3600,
            "previous one kept"
        );
    }

    #[tokio::test]
    async fn http_source_fetches_a_directory() {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let auth = SigningKey::from_bytes(&[5; 32]);
        let now = SystemClock.now_unix();
        let mut d = doc(now);
        d.sign(&auth).expect("sign");
        let bytes = Bytes::from(d.to_bytes());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let bytes = bytes.clone();
                            async move {
                                let mut r = hyper::Response::new(Full::new(bytes));
                                if req.uri().path() != "/directory" {
                                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                }
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let view = DirectoryView::new(
            DirectorySource::Http(format!("http://{addr}/directory")),
            Trust {
                authorities: vec![auth.verifying_key().to_bytes()],
                threshold: 1,
            },
            Arc::new(SystemClock),
        );
        assert!(view.refresh().await.expect("fetched and verified"));
        let missing = DirectorySource::Http(format!("http://{addr}/nothing"));
        assert_eq!(
            missing.fetch().await.expect("404 is no directory yet"),
            None
        );
    }
}
