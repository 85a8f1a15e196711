//! Where the relay learns the network: the signed directory, re-read from a [`DirectorySource`]
//! (a file, or one or more authority URLs) ahead of its expiry with jitter ([`refresh_loop`])
//! and verified against the configured authority keys before use. A relay fetching by URL
//! keeps the last good document on disk and starts from it after a restart. Fetching and
//! verifying is `spore-directory-fetch`'s [`DirectoryFetcher`] (shared with clients); this
//! module keeps the view in force and the relay's lookups on it.
//!
//! The relay needs the directory for two things: the address and link key of each next hop
//! (a Sphinx header names a hop by its [`RelayId`] only), and the mixes to route its own loop
//! cover through.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use spore_directory_fetch::{DirectoryFetcher, FetchError, VerifiedDirectory};
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
        // Counted under `directory_<reason>` by the caller.
        FetchError::Refused { source, .. } => RelayError::Protocol(source),
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
    fetcher: DirectoryFetcher,
    clock: Arc<dyn Clock>,
    expected_epoch_length: Option<u64>,
    current: RwLock<Option<Arc<NetworkView>>>,
    /// The verified document behind `current` (a newer one must not be older than it).
    verified: RwLock<Option<Arc<VerifiedDirectory>>>,
    /// Whether the on-disk copy was tried (once, at the first refresh).
    cache_tried: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DirectoryView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryView")
            .field("source", self.fetcher.source())
            .finish_non_exhaustive()
    }
}

impl DirectoryView {
    pub fn new(source: DirectorySource, trust: Trust, clock: Arc<dyn Clock>) -> Self {
        Self {
            fetcher: DirectoryFetcher::new(source, trust),
            clock,
            expected_epoch_length: None,
            current: RwLock::new(None),
            verified: RwLock::new(None),
            cache_tried: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Keeps the last good document fetched by URL in `path` and starts from it after a
    /// restart, so a relay does not depend on an authority being up when it starts. (File and
    /// in-memory sources are their own copy and are not cached.)
    pub fn cache_in(mut self, path: PathBuf) -> Self {
        if matches!(
            self.fetcher.source(),
            DirectorySource::Http(_) | DirectorySource::Mirrors(_)
        ) {
            let fetcher = std::mem::replace(
                &mut self.fetcher,
                DirectoryFetcher::new(DirectorySource::None, Trust::default()),
            );
            self.fetcher = fetcher.with_cache(Some(path));
        }
        self
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

    /// Re-reads the source; keeps the old directory if the new one is missing, invalid or
    /// older. Returns whether a new directory was installed. A refused document is an error
    /// the first time it is fetched only (it is logged and counted once, not every refresh).
    pub async fn refresh(&self) -> Result<bool> {
        let now = self.clock.now_unix();
        if !self
            .cache_tried
            .swap(true, std::sync::atomic::Ordering::Relaxed)
            && let Some(cached) = self.fetcher.load_cached(now).await
        {
            self.install(cached);
        }
        let verified = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match self.fetcher.fetch_newer(verified.as_deref(), now).await {
            Ok(Some(v)) => {
                self.install(v);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(fetch_error(e)),
        }
    }

    fn install(&self, v: VerifiedDirectory) {
        let view = NetworkView::from_verified(&v.directory, v.bytes.clone());
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
            valid_until = view.valid_until,
            "installed directory"
        );
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(view));
        *self.verified.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(v));
    }

    /// Unix seconds now, by the relay's clock.
    pub fn now_unix(&self) -> u64 {
        self.clock.now_unix()
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
    async fn a_relay_fetching_by_url_restarts_from_the_document_kept_on_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = tmp.path().join("data").join("directory.bin");
        let auth = SigningKey::from_bytes(&[8; 32]);
        let trust = Trust {
            authorities: vec![auth.verifying_key().to_bytes()],
            threshold: 1,
        };
        let now = SystemClock.now_unix();
        let mut d = doc(now);
        d.sign(&auth).expect("sign");
        spore_directory_fetch::write_private_atomic(&cache, &d.to_bytes()).expect("write");
        // No authority answers (nothing listens on a port just released).
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/directory", dead.local_addr().expect("addr"));
        drop(dead);
        let view = DirectoryView::new(
            DirectorySource::Mirrors(vec![url.clone(), url]),
            trust,
            Arc::new(SystemClock),
        )
        .cache_in(cache);
        assert!(view.refresh().await.is_err(), "the authorities are down");
        assert_eq!(view.current().expect("the cached document").epoch, d.epoch);
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
