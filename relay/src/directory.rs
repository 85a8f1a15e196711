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
            current: RwLock::new(None),
        }
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
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.source_bytes == bytes) {
            return Ok(false);
        }
        let view = NetworkView::from_directory_bytes(bytes, &self.trust, self.clock.now_unix())?;
        tracing::info!(
            epoch = view.epoch,
            relays = view.relays.len(),
            "installed directory"
        );
        *current = Some(Arc::new(view));
        Ok(true)
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
                    },
                )
            })
            .collect();
        Self {
            epoch: dir.epoch,
            mu: dir.params.mu,
            epoch_length_secs: dir.params.epoch_length_secs,
            max_delay_ms: dir.params.max_delay_ms,
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
