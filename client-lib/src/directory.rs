//! The verified directory in force, refreshed from its [`DirectorySource`]. Bytes come from
//! `spore-directory-fetch` and are verified by `spore-protocol`'s [`Trust`], as on relays.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spore_directory_fetch::{DirectorySource as Fetched, FetchError};
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
    trust: Trust,
    current: RwLock<Arc<Directory>>,
}

impl DirectoryView {
    /// Loads and verifies the directory once; fails if there is no usable one.
    pub async fn load(source: DirectorySource, trust: Trust) -> Result<Self> {
        let dir = fetch(&source, &trust).await?;
        Ok(Self {
            source,
            trust,
            current: RwLock::new(Arc::new(dir)),
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
            DirectorySource::File { refresh, .. } | DirectorySource::Http { refresh, .. } => {
                Some((*refresh).max(Duration::from_secs(1)))
            }
            DirectorySource::Fixed(_) => None,
        }
    }

    /// Re-reads the source; keeps the current document if the new one does not verify.
    pub async fn refresh(&self) -> Result<()> {
        let dir = fetch(&self.source, &self.trust).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dir);
        Ok(())
    }
}

async fn fetch(source: &DirectorySource, trust: &Trust) -> Result<Directory> {
    let from = match source {
        DirectorySource::File { path, .. } => Fetched::File(path.clone()),
        DirectorySource::Http { url, .. } => Fetched::Http(url.clone()),
        DirectorySource::Fixed(d) => {
            return verify(d.clone(), trust);
        }
    };
    let bytes = match from.fetch().await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(ClientError::Directory(format!(
                "no directory at {from} yet"
            )));
        }
        Err(FetchError::File { path, source }) => return Err(ClientError::File { path, source }),
        Err(e) => return Err(ClientError::Directory(format!("{from}: {e}"))),
    };
    verify(Directory::from_bytes(&bytes)?, trust)
}

fn verify(dir: Directory, trust: &Trust) -> Result<Directory> {
    if !trust.checks_signatures() {
        tracing::warn!("directory signatures are not checked (threshold 0): testing only");
    }
    trust
        .verify(&dir, now_unix())
        .map_err(|e| ClientError::Directory(e.to_string()))?;
    Ok(dir)
}
