//! Fetching a directory the way every reader must: each source in turn, the authorities'
//! threshold checked, the last good document kept on disk for the next start, and the next
//! fetch scheduled ahead of the document's expiry with jitter.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use spore_protocol::directory::{Directory, Trust};

use crate::{DirectorySource, FetchError};

/// How many refused documents are remembered (so each is reported once).
const REFUSED_REMEMBERED: usize = 64;
/// Never refresh more often than this, however close the expiry.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A document that verified, with the exact bytes the signatures cover.
#[derive(Debug, Clone)]
pub struct VerifiedDirectory {
    pub directory: Directory,
    pub bytes: Vec<u8>,
}

/// Fetches and verifies directories from one [`DirectorySource`] (which may be several
/// mirrors) for one reader.
#[derive(Debug)]
pub struct DirectoryFetcher {
    source: DirectorySource,
    trust: Trust,
    cache: Option<PathBuf>,
    /// Digests of documents already refused: fetching one again is not news.
    refused: Mutex<VecDeque<u64>>,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Whether `new` may replace `current`: a reader never goes back to an older document (a
/// stale mirror), but takes a re-issue of the same epoch.
fn not_older(new: &Directory, current: Option<&Directory>) -> bool {
    current.is_none_or(|c| (new.epoch, new.valid_until) >= (c.epoch, c.valid_until))
}

impl DirectoryFetcher {
    pub fn new(source: DirectorySource, trust: Trust) -> Self {
        Self {
            source,
            trust,
            cache: None,
            refused: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps the last verified document in `path` (0600, replaced atomically) and offers it
    /// back through [`load_cached`](Self::load_cached).
    pub fn with_cache(mut self, path: Option<PathBuf>) -> Self {
        self.cache = path;
        self
    }

    pub fn source(&self) -> &DirectorySource {
        &self.source
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The cached document, if there is one and it still verifies at `now_unix`.
    pub async fn load_cached(&self, now_unix: u64) -> Option<VerifiedDirectory> {
        let path = self.cache.as_ref()?;
        let bytes = tokio::fs::read(path).await.ok()?;
        match verify(&self.trust, bytes, now_unix).await {
            Ok(v) => {
                tracing::info!(path = %path.display(), epoch = v.directory.epoch, "using the cached directory");
                Some(v)
            }
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e, "cached directory not usable");
                None
            }
        }
    }

    /// Tries each source in turn and returns the first document that verifies at `now_unix`
    /// and is not older than `current` (and not the same bytes); `None` if there is nothing
    /// new. A refused document is reported (as the error, or logged if another source gave a
    /// good one) the first time only.
    pub async fn fetch_newer(
        &self,
        current: Option<&VerifiedDirectory>,
        now_unix: u64,
    ) -> Result<Option<VerifiedDirectory>, FetchError> {
        let mut first_error = None;
        let mut newest_seen = false;
        for source in self.source.each() {
            let bytes = match source.fetch().await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            if current.is_some_and(|c| c.bytes == bytes) {
                newest_seen = true;
                continue;
            }
            let d = digest(&bytes);
            if self.lock_refused().contains(&d) {
                continue;
            }
            match verify(&self.trust, bytes, now_unix).await {
                Ok(v) if not_older(&v.directory, current.map(|c| &c.directory)) => {
                    if let Some(e) = first_error.take() {
                        tracing::warn!(error = %e, "another directory source failed");
                    }
                    self.save_cache(&v.bytes).await;
                    return Ok(Some(v));
                }
                Ok(_) => {}
                Err(source_error) => {
                    let mut refused = self.lock_refused();
                    refused.push_back(d);
                    if refused.len() > REFUSED_REMEMBERED {
                        refused.pop_front();
                    }
                    let e = FetchError::Refused {
                        from: source.to_string(),
                        source: source_error,
                    };
                    if first_error.is_some() {
                        tracing::warn!(error = %e, "directory refused");
                    } else {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            // A source still serving what we have means the failure elsewhere is not news
            // unless it is a refusal (those are reported once anyway).
            Some(e) if !newest_seen || matches!(e, FetchError::Refused { .. }) => Err(e),
            Some(e) => {
                tracing::debug!(error = %e, "a directory mirror failed");
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn save_cache(&self, bytes: &[u8]) {
        let Some(path) = self.cache.clone() else {
            return;
        };
        let bytes = bytes.to_vec();
        let result = tokio::task::spawn_blocking(move || write_private_atomic(&path, &bytes)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "cannot keep the directory on disk");
        }
    }
}

/// When to fetch again: every `every` with ±25% jitter (so readers do not fetch in step),
/// and at most half the time left before `valid_until`, so a reader retries more and more
/// often as its document nears expiry instead of finding out after.
pub fn next_refresh(every: Duration, valid_until: Option<u64>, now_unix: u64) -> Duration {
    let jitter = 0.75 + 0.5 * rand::random::<f64>();
    let mut wait = every.mul_f64(jitter);
    if let Some(until) = valid_until {
        let half_left = Duration::from_secs(until.saturating_sub(now_unix) / 2);
        wait = wait.min(half_left.mul_f64(jitter));
    }
    wait.max(MIN_REFRESH)
}

/// Parses and verifies off the async threads (signature checks cost ~50 us per descriptor).
async fn verify(
    trust: &Trust,
    bytes: Vec<u8>,
    now_unix: u64,
) -> Result<VerifiedDirectory, spore_protocol::Error> {
    let trust = trust.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let directory = trust.verify_bytes(&bytes, now_unix)?;
        Ok(VerifiedDirectory { directory, bytes })
    })
    .await;
    match checked {
        Ok(r) => r,
        Err(_) => Err(spore_protocol::error::ApiMisuse::InvalidArgument(
            "directory verification task failed",
        )
        .into()),
    }
}

/// Writes `bytes` to `path` through a 0600 temporary file and a rename, so a crash leaves
/// either the old document or the new one.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "directory".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDirectory;
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::NetworkParams;

    const NOW: u64 = 1_800_000_000;

    fn doc(epoch: u64, until: u64, key: &SigningKey) -> Vec<u8> {
        let mut d = Directory {
            epoch,
            valid_after: NOW - 10,
            valid_until: until,
            params: NetworkParams::default(),
            relays: vec![],
            signatures: vec![],
        };
        d.sign(key).unwrap();
        d.to_bytes()
    }

    fn trust(key: &SigningKey) -> Trust {
        Trust {
            authorities: vec![key.verifying_key().to_bytes()],
            threshold: 1,
        }
    }

    #[tokio::test]
    async fn refused_once_then_quiet_and_the_good_one_is_kept_on_disk() {
        let auth = SigningKey::from_bytes(&[1; 32]);
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("directory.bin");
        let m = MemoryDirectory::new();
        let f = DirectoryFetcher::new(DirectorySource::Memory(m.clone()), trust(&auth))
            .with_cache(Some(cache.clone()));
        assert!(f.fetch_newer(None, NOW).await.unwrap().is_none());

        m.set(doc(1, NOW + 100, &SigningKey::from_bytes(&[2; 32])));
        assert!(matches!(
            f.fetch_newer(None, NOW).await,
            Err(FetchError::Refused { .. })
        ));
        assert!(
            f.fetch_newer(None, NOW).await.unwrap().is_none(),
            "the same refused document is reported once"
        );

        m.set(doc(1, NOW + 100, &auth));
        let v = f.fetch_newer(None, NOW).await.unwrap().unwrap();
        assert!(f.fetch_newer(Some(&v), NOW).await.unwrap().is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let restarted = DirectoryFetcher::new(DirectorySource::None, trust(&auth))
            .with_cache(Some(cache.clone()));
        let cached = restarted.load_cached(NOW + 1).await.unwrap();
        assert_eq!(cached.bytes, v.bytes);
        assert!(restarted.load_cached(NOW + 101).await.is_none(), "expired");
    }

    #[tokio::test]
    async fn mirrors_are_tried_in_turn_and_an_older_document_is_not_taken() {
        let auth = SigningKey::from_bytes(&[1; 32]);
        let serve = |body: Vec<u8>| async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok((mut s, _)) = l.accept().await {
                    let mut buf = [0; 1024];
                    let _ = s.read(&mut buf).await;
                    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                }
            });
            format!("http://{addr}/directory")
        };
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/directory", l.local_addr().unwrap())
        };
        let old = serve(doc(1, NOW + 100, &auth)).await;
        let new = serve(doc(2, NOW + 200, &auth)).await;
        let f = DirectoryFetcher::new(
            DirectorySource::Mirrors(vec![dead.clone(), new.clone()]),
            trust(&auth),
        );
        let v = f.fetch_newer(None, NOW).await.unwrap().unwrap();
        assert_eq!(v.directory.epoch, 2, "the dead mirror is skipped");
        let f = DirectoryFetcher::new(DirectorySource::Mirrors(vec![old, dead]), trust(&auth));
        assert!(
            f.fetch_newer(Some(&v), NOW).await.is_err(),
            "a stale mirror and a dead one: nothing new, and the failure is reported"
        );
    }

    #[test]
    fn refresh_comes_sooner_as_expiry_nears() {
        let every = Duration::from_secs(60);
        for _ in 0..100 {
            let w = next_refresh(every, None, NOW);
            assert!(w >= Duration::from_secs(45) && w <= Duration::from_secs(75));
            let w = next_refresh(every, Some(NOW + 40), NOW);
            assert!(w <= Duration::from_secs(25), "{w:?}");
            assert_eq!(next_refresh(every, Some(NOW), NOW), MIN_REFRESH);
        }
    }
}
