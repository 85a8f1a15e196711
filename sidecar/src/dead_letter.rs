//! [`DeadLetters`]: inbound transactions the homeserver refused for good, kept on disk.
//!
//! A transaction the homeserver keeps refusing with a permanent 4xx (anything but 408/429)
//! would otherwise be retried forever and hold up every request queued behind it. After a
//! bounded number of refusals the sidecar writes it here (one file per request, mode 0600, in
//! `data_dir/dead-letters`) and only then acks it from the transport's inbox, so nothing is
//! lost across a crash. An operator lists, retries or drops them with
//! `spore-sidecar dead-letters`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spore_protocol::FederationRequest;

use crate::homeserver::{DeliveryError, LocalHomeserver};
use crate::server_keys::unix_ms;

/// Folder under the sidecar's data dir.
pub const DEAD_LETTER_DIR: &str = "dead-letters";

/// Why the dead-letter store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    #[error("dead-letter store: {0}")]
    Io(#[from] std::io::Error),
    #[error("dead letter {0}: not found")]
    NotFound(String),
    #[error("dead letter {0}: unreadable: {1}")]
    Corrupt(String, String),
    #[error("dead letter {id}: the homeserver still refuses it (status {status})")]
    StillRefused { id: String, status: u16 },
    #[error("dead letter {id}: {source}")]
    Delivery { id: String, source: DeliveryError },
}

/// One refused inbound transaction, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Local identifier (hex), what `retry` and `drop` take.
    pub id: String,
    /// The origin server name the bundle claimed.
    pub origin: String,
    /// When it was dead-lettered (Unix ms).
    pub at_ms: u64,
    /// The homeserver's last answer (0 if the request could not be sent at all).
    pub status: u16,
    /// How many times the homeserver refused it.
    pub attempts: u32,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Body, hex.
    pub body: String,
}

impl DeadLetter {
    pub fn request(&self) -> Result<FederationRequest, DeadLetterError> {
        Ok(FederationRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            body: hex::decode(&self.body)
                .map_err(|e| DeadLetterError::Corrupt(self.id.clone(), e.to_string()))?,
        })
    }
}

/// The on-disk store of refused transactions.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
}

/// Only ids the store made (hex) name a file: no path traversal from the command line.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl DeadLetters {
    /// The store in `data_dir/dead-letters` (created, mode 0700, on first write).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DEAD_LETTER_DIR),
        }
    }

    fn file(&self, id: &str) -> Result<PathBuf, DeadLetterError> {
        if !valid_id(id) {
            return Err(DeadLetterError::NotFound(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Writes a refused request durably (temp file, fsync, rename, fsync of the folder) and
    /// returns its id. Only after this returns may the request be acked.
    pub fn put(
        &self,
        origin: &str,
        request: &FederationRequest,
        status: u16,
        attempts: u32,
    ) -> Result<String, DeadLetterError> {
        create_private_dir(&self.dir)?;
        let id = format!(
            "{:012x}{}",
            unix_ms(),
            hex::encode(rand::random::<[u8; 4]>())
        );
        let letter = DeadLetter {
            id: id.clone(),
            origin: origin.to_owned(),
            at_ms: unix_ms(),
            status,
            attempts,
            method: request.method.clone(),
            path: request.path.clone(),
            headers: request.headers.clone(),
            body: hex::encode(&request.body),
        };
        let json = serde_json::to_vec(&letter)
            .map_err(|e| DeadLetterError::Corrupt(id.clone(), e.to_string()))?;
        let tmp = self.dir.join(format!("{id}.tmp"));
        {
            let mut f = open_private(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.file(&id)?)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(id)
    }

    /// Every dead letter, oldest first.
    pub fn list(&self) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut letters = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            letters.push(self.get(id)?);
        }
        letters.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(letters)
    }

    pub fn get(&self, id: &str) -> Result<DeadLetter, DeadLetterError> {
        let bytes = match std::fs::read(self.file(id)?) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeadLetterError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| DeadLetterError::Corrupt(id.into(), e.to_string()))
    }

    /// Forgets a dead letter.
    pub fn remove(&self, id: &str) -> Result<(), DeadLetterError> {
        match std::fs::remove_file(self.file(id)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(DeadLetterError::NotFound(id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Delivers a dead letter to the homeserver once more; removes it if the homeserver
    /// accepts it (2xx) and keeps it otherwise. Returns the accepting status.
    pub async fn retry(
        &self,
        id: &str,
        homeserver: &LocalHomeserver,
    ) -> Result<u16, DeadLetterError> {
        let letter = self.get(id)?;
        let response = homeserver
            .deliver_once(&letter.request()?)
            .await
            .map_err(|source| DeadLetterError::Delivery {
                id: id.to_owned(),
                source,
            })?;
        if !(200..300).contains(&response.status) {
            return Err(DeadLetterError::StillRefused {
                id: id.to_owned(),
                status: response.status,
            });
        }
        self.remove(id)?;
        Ok(response.status)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> FederationRequest {
        FederationRequest {
            method: "PUT".into(),
            path: "/_matrix/federation/v1/send/t1".into(),
            headers: vec![("Authorization".into(), "X-Matrix origin=\"a\"".into())],
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn put_list_get_remove_round_trip_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::in_data_dir(dir.path());
        assert!(store.list().unwrap().is_empty());
        let id = store.put("a.example", &request(), 401, 3).unwrap();
        let letters = store.list().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].id, id);
        assert_eq!(letters[0].origin, "a.example");
        assert_eq!(letters[0].status, 401);
        assert_eq!(letters[0].request().unwrap(), request());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.file(&id).unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.remove(&id).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.remove(&id),
            Err(DeadLetterError::NotFound(_))
        ));
    }

    #[test]
    fn ids_that_are_not_hex_name_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::in_data_dir(dir.path());
        for bad in ["../x", "", "a/b", "zz"] {
            assert!(matches!(store.get(bad), Err(DeadLetterError::NotFound(_))));
        }
    }
}
