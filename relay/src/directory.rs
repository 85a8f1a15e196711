//! Where the relay learns the network: the signed directory, re-read periodically from a
//! [`DirectorySource`] and verified against the configured authority keys before use.
//!
//! The relay needs the directory for two things: the address and link key of each next hop
//! (a Sphinx header names a hop by its [`RelayId`] only), and the mixes to route its own loop
//! cover through.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use spore_protocol::RelayId;
use spore_protocol::directory::Directory;
use x25519_dalek::PublicKey;

use crate::clock::Clock;
use crate::error::{RelayError, Result};

/// Where directory bytes come from. An HTTP fetch from the authorities is the next variant.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DirectorySource {
    /// No directory: the relay can store and serve mailboxes but forwards nothing.
    None,
    /// A file, re-read on every refresh (the authorities' tool writes it atomically).
    File(PathBuf),
    /// Bytes set in-process (tests, tools embedding a relay).
    Memory(MemoryDirectory),
    /// `GET http://host:port/path` from a directory authority (`spore authority serve`).
    /// Plain HTTP is enough: the document is signed and verified by threshold, so transport
    /// security would add only hiding that a relay fetched the (public) directory.
    Http(String),
}

/// Largest directory accepted over HTTP (4096 relays of under 500 bytes, plus signatures).
pub const MAX_DIRECTORY_BYTES: usize = 4 << 20;
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Splits `http://host:port/path` into (`host:port`, `/path`).
fn parse_http_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| RelayError::Directory(format!("{url}: only http:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(RelayError::Directory(format!("{url}: no host")));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

async fn http_get(url: &str) -> Result<Option<Vec<u8>>> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;

    let (authority, path) = parse_http_url(url)?;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| RelayError::Directory(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| RelayError::Directory(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| RelayError::Directory(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_DIRECTORY_BYTES)
            .collect()
            .await
            .map_err(|e| RelayError::Directory(format!("directory body: {e}")))?
            .to_bytes();
        conn.abort();
        if status == hyper::StatusCode::SERVICE_UNAVAILABLE
            || status == hyper::StatusCode::NOT_FOUND
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(RelayError::Directory(format!(
                "authority answered {status}"
            )));
        }
        Ok(Some(body.to_vec()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| RelayError::Timeout)?
}

impl DirectorySource {
    /// The current bytes, or `None` if the source has nothing yet.
    pub async fn fetch(&self) -> Result<Option<Vec<u8>>> {
        match self {
            DirectorySource::None => Ok(None),
            DirectorySource::File(path) => match tokio::fs::read(path).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(RelayError::File {
                    path: path.clone(),
                    source,
                }),
            },
            DirectorySource::Memory(m) => Ok(m.get()),
            DirectorySource::Http(url) => http_get(url).await,
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

    /// Replaces the directory; relays pick it up on their next refresh
    /// (or at once with `RunningRelay::refresh_directory`).
    pub fn set(&self, bytes: Vec<u8>) {
        *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
    }

    pub fn get(&self) -> Option<Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Authority keys and threshold. A threshold of 0 accepts unsigned directories (tests only;
/// the relay logs a warning at start).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub authorities: Vec<[u8; 32]>,
    pub threshold: usize,
}

impl Trust {
    pub fn from_hex(keys: &[String], threshold: usize) -> Result<Self> {
        let authorities = keys
            .iter()
            .map(|k| {
                hex::decode(k.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .ok_or_else(|| {
                        RelayError::Config(format!("authority key {k:?} is not 32 hex bytes"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            authorities,
            threshold,
        })
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
        let Some(bytes) = self.source.fetch().await? else {
            return Ok(false);
        };
        if self.current().is_some_and(|c| c.source_bytes == bytes) {
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

/// What the relay keeps from a verified directory.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub epoch: u64,
    /// Loopix μ: rate of the per-hop exponential delay (1/mean seconds).
    pub mu: f64,
    /// The network's key epoch length; relays must use the same.
    pub epoch_length_secs: u64,
    pub max_delay_ms: u64,
    /// Unix seconds: the document is valid in `[valid_after, valid_until]` (health, metrics).
    pub valid_after: u64,
    pub valid_until: u64,
    pub relays: HashMap<RelayId, RelayInfo>,
    source_bytes: Vec<u8>,
}

/// One relay as the directory lists it.
#[derive(Debug, Clone)]
pub struct RelayInfo {
    pub id: RelayId,
    pub address: String,
    pub link_key: [u8; 32],
    pub layer: u8,
    pub mix: bool,
    pub mailbox: bool,
    pub entry: bool,
    pub sphinx_keys: Vec<(u64, PublicKey)>,
    /// Unix seconds: the descriptor's validity window (health: is it about to run out?).
    pub published_at: u64,
    pub expires_at: u64,
}

impl RelayInfo {
    pub fn sphinx_key(&self, epoch: u64) -> Option<PublicKey> {
        self.sphinx_keys
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, k)| *k)
    }
}

impl NetworkView {
    /// Parses and verifies a directory.
    ///
    /// With a trust threshold of 0 nothing is verified (tests only).
    pub fn from_directory_bytes(bytes: Vec<u8>, trust: &Trust, now_unix: u64) -> Result<Self> {
        let dir = Directory::from_bytes(&bytes)?;
        if trust.threshold > 0 {
            dir.verify(&trust.authorities, trust.threshold, now_unix)?;
        }
        Ok(Self::from_directory(&dir, bytes))
    }

    fn from_directory(dir: &Directory, source_bytes: Vec<u8>) -> Self {
        let relays = dir
            .relays
            .iter()
            .map(|d| {
                (
                    d.id,
                    RelayInfo {
                        id: d.id,
                        address: d.address.clone(),
                        link_key: d.link_key,
                        layer: d.layer,
                        mix: d.roles.mix,
                        mailbox: d.roles.mailbox,
                        entry: d.roles.entry,
                        sphinx_keys: d
                            .sphinx_keys
                            .iter()
                            .map(|k| (k.epoch, PublicKey::from(k.public)))
                            .collect(),
                        published_at: d.published_at,
                        expires_at: d.expires_at,
                    },
                )
            })
            .collect();
        Self {
            epoch: dir.epoch,
            mu: dir.params.mu,
            epoch_length_secs: dir.params.epoch_length_secs,
            max_delay_ms: dir.params.max_delay_ms,
            valid_after: dir.valid_after,
            valid_until: dir.valid_until,
            relays,
            source_bytes,
        }
    }

    /// Mixes in `layer`.
    pub fn mixes_in_layer(&self, layer: u8) -> impl Iterator<Item = &RelayInfo> {
        self.relays
            .values()
            .filter(move |r| r.mix && r.layer == layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::NetworkParams;

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

    #[test]
    fn http_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/directory").expect("ok"),
            ("127.0.0.1:8080".into(), "/directory".into())
        );
        assert_eq!(
            parse_http_url("http://dir.example").expect("ok"),
            ("dir.example:80".into(), "/".into())
        );
        assert!(parse_http_url("https://dir.example/").is_err());
        assert!(parse_http_url("http:///x").is_err());
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
