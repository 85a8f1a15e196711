//! The verified directory in force, refreshed from its [`DirectorySource`] ahead of its
//! expiry. Fetching (sources in turn, threshold verification, the last good document kept on
//! disk) is `spore-directory-fetch`'s [`DirectoryFetcher`], as on relays.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spore_directory_fetch::{
    DirectoryFetcher, DirectorySource as Fetched, FetchError, VerifiedDirectory,
};
use spore_protocol::Directory;

use crate::config::{DirectorySource, Trust};
use crate::error::{ClientError, Result};

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The current verified directory.
#[derive(Debug)]
pub(crate) struct DirectoryView {
    source: DirectorySource,
    /// `None` for a fixed document.
    fetcher: Option<DirectoryFetcher>,
    current: RwLock<Arc<Directory>>,
    verified: RwLock<Option<Arc<VerifiedDirectory>>>,
}

impl DirectoryView {
    /// Loads and verifies the directory once; fails if there is no usable one. A directory
    /// fetched by URL is kept in `cache` and used from there when no authority answers.
    pub async fn load(
        source: DirectorySource,
        trust: Trust,
        cache: Option<PathBuf>,
    ) -> Result<Self> {
        if !trust.checks_signatures() {
            tracing::warn!("directory signatures are not checked (threshold 0): testing only");
        }
        let from = match &source {
            DirectorySource::File { path, .. } => Fetched::File(path.clone()),
            DirectorySource::Http { url, .. } => Fetched::Http(url.clone()),
            DirectorySource::Mirrors { urls, .. } => Fetched::Mirrors(urls.clone()),
            DirectorySource::Fixed(d) => {
                trust
                    .verify(d, now_unix())
                    .map_err(|e| ClientError::Directory(e.to_string()))?;
                return Ok(Self {
                    current: RwLock::new(Arc::new(d.clone())),
                    source,
                    fetcher: None,
                    verified: RwLock::new(None),
                });
            }
        };
        let by_url = !matches!(from, Fetched::File(_));
        let fetcher = DirectoryFetcher::new(from, trust).with_cache(cache.filter(|_| by_url));
        let now = now_unix();
        let fetched = match fetcher.fetch_newer(None, now).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(nothing_yet(fetcher.source())),
            Err(e) => Err(fetch_error(fetcher.source(), e)),
        };
        let v = match fetched {
            Ok(v) => v,
            Err(e) => match fetcher.load_cached(now).await {
                Some(v) => {
                    tracing::warn!(error = %e, "no directory from the authorities: using the one kept on disk");
                    v
                }
                None => return Err(e),
            },
        };
        Ok(Self {
            source,
            current: RwLock::new(Arc::new(v.directory.clone())),
            verified: RwLock::new(Some(Arc::new(v))),
            fetcher: Some(fetcher),
        })
    }

    pub fn current(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How often the source should be re-read, if it can change.
    pub fn refresh_interval(&self) -> Option<Duration> {
        match &self.source {
            DirectorySource::File { refresh, .. }
            | DirectorySource::Http { refresh, .. }
            | DirectorySource::Mirrors { refresh, .. } => {
                Some((*refresh).max(Duration::from_secs(1)))
            }
            DirectorySource::Fixed(_) => None,
        }
    }

    /// When to refresh next: about every `every`, jittered, and sooner as the document in
    /// force nears its expiry.
    pub fn next_refresh(&self, every: Duration) -> Duration {
        spore_directory_fetch::next_refresh(every, Some(self.current().valid_until), now_unix())
    }

    /// Re-reads the source; keeps the current document if the new one does not verify or is
    /// older. A refused document is an error the first time it is fetched only.
    pub async fn refresh(&self) -> Result<()> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        let verified = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match fetcher.fetch_newer(verified.as_deref(), now_unix()).await {
            Ok(Some(v)) => {
                tracing::info!(epoch = v.directory.epoch, "installed directory");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::new(v.directory.clone());
                *self.verified.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(v));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(fetch_error(fetcher.source(), e)),
        }
    }
}

/// A missing file stays the error it always was for a client (it cannot start without one).
fn nothing_yet(from: &Fetched) -> ClientError {
    match from {
        Fetched::File(path) => ClientError::File {
            path: path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        },
        _ => ClientError::Directory(format!("no directory at {from} yet")),
    }
}

fn fetch_error(from: &Fetched, e: FetchError) -> ClientError {
    match e {
        FetchError::File { path, source } => ClientError::File { path, source },
        FetchError::Refused { source, .. } => ClientError::Directory(source.to_string()),
        e => ClientError::Directory(format!("{from}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DirectoryConfig;
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::NetworkParams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn signed(auth: &SigningKey, epoch_offset: u64) -> Vec<u8> {
        let now = now_unix();
        let mut d = Directory {
            epoch: now / 3600 + epoch_offset,
            valid_after: now - 10,
            valid_until: now + 3600,
            params: NetworkParams::default(),
            relays: vec![],
            signatures: vec![],
        };
        d.sign(auth).expect("sign");
        d.to_bytes()
    }

    /// An authority answering every request with `answer`'s current bytes.
    async fn authority(answer: Arc<RwLock<Vec<u8>>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0; 1024];
                let _ = s.read(&mut buf).await;
                let body = answer.read().expect("lock").clone();
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            }
        });
        format!("http://{addr}/directory")
    }

    #[tokio::test]
    async fn a_client_reads_the_directory_from_an_authority_url() {
        let auth = SigningKey::from_bytes(&[5; 32]);
        let answer = Arc::new(RwLock::new(signed(&auth, 0)));
        let url = authority(answer.clone()).await;
        let trust = Trust {
            authorities: vec![auth.verifying_key().to_bytes()],
            threshold: 1,
        };
        let source = DirectorySource::Http {
            url,
            refresh: Duration::from_secs(30),
        };
        let view = DirectoryView::load(source, trust, None)
            .await
            .expect("verified");
        assert_eq!(view.refresh_interval(), Some(Duration::from_secs(30)));
        let first = view.current().epoch;

        *answer.write().expect("lock") = signed(&auth, 1);
        view.refresh().await.expect("newer document");
        assert_eq!(view.current().epoch, first + 1);

        *answer.write().expect("lock") = signed(&SigningKey::from_bytes(&[6; 32]), 2);
        assert!(view.refresh().await.is_err(), "untrusted signer");
        assert_eq!(view.current().epoch, first + 1, "previous one kept");
    }

    #[tokio::test]
    async fn a_client_starts_from_its_kept_document_when_no_authority_answers() {
        let auth = SigningKey::from_bytes(&[5; 32]);
        let answer = Arc::new(RwLock::new(signed(&auth, 0)));
        let url = authority(answer.clone()).await;
        let trust = Trust {
            authorities: vec![auth.verifying_key().to_bytes()],
            threshold: 1,
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = tmp.path().join("directory.bin");
        let source = DirectorySource::Mirrors {
            urls: vec![url],
            refresh: Duration::from_secs(30),
        };
        let first = DirectoryView::load(source, trust.clone(), Some(cache.clone()))
            .await
            .expect("fetched");
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_url = format!("http://{}/directory", dead.local_addr().expect("addr"));
        drop(dead);
        let source = DirectorySource::Http {
            url: dead_url,
            refresh: Duration::from_secs(30),
        };
        let restarted = DirectoryView::load(source.clone(), trust.clone(), Some(cache))
            .await
            .expect("from the kept document");
        assert_eq!(restarted.current().epoch, first.current().epoch);
        assert!(
            DirectoryView::load(source, trust, None).await.is_err(),
            "nothing kept, nothing answers"
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_a_file_error() {
        let source = DirectorySource::File {
            path: "/nonexistent/spore/directory.bin".into(),
            refresh: Duration::from_secs(60),
        };
        assert!(matches!(
            DirectoryView::load(source, Trust::default(), None).await,
            Err(ClientError::File { .. })
        ));
    }

    #[test]
    fn a_config_section_names_a_file_or_a_url() {
        let section: DirectoryConfig =
            toml::from_str("url = \"http://a.example:8080/directory\"\nrefresh_secs = 5")
                .expect("parses");
        assert!(matches!(
            DirectorySource::from_config(&section),
            Some(DirectorySource::Http { url, refresh })
                if url == "http://a.example:8080/directory" && refresh == Duration::from_secs(5)
        ));
        let section: DirectoryConfig = toml::from_str("path = \"d.bin\"").expect("parses");
        assert!(matches!(
            DirectorySource::from_config(&section),
            Some(DirectorySource::File { .. })
        ));
        assert!(DirectorySource::from_config(&DirectoryConfig::default()).is_none());
    }
}
