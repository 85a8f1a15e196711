//! What a relay keeps from a verified directory: lookup tables by [`RelayId`].

use std::collections::HashMap;

use x25519_dalek::PublicKey;

use super::{Directory, Trust};
use crate::error::Result;
use crate::ids::RelayId;

/// A verified directory as a relay uses it: next hops by id, mixes by layer.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub epoch: u64,
    /// Unix seconds: the document's validity window (readers warn as it nears its end).
    pub valid_after: u64,
    pub valid_until: u64,
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
        let dir = trust.verify_bytes(&bytes, now_unix)?;
        Ok(Self::from_directory(&dir, bytes))
    }

    /// The view of a directory already verified (its `source_bytes` are what was verified).
    pub fn from_verified(dir: &Directory, source_bytes: Vec<u8>) -> Self {
        Self::from_directory(dir, source_bytes)
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
            valid_after: dir.valid_after,
            valid_until: dir.valid_until,
            mu: dir.params.mu,
            epoch_length_secs: dir.params.epoch_length_secs,
            max_delay_ms: dir.params.max_delay_ms,
            relays,
            source_bytes,
        }
    }

    /// The bytes this view was built from: a re-fetch of the same bytes needs no new view.
    pub fn source_bytes(&self) -> &[u8] {
        &self.source_bytes
    }

    /// Mixes in `layer`.
    pub fn mixes_in_layer(&self, layer: u8) -> impl Iterator<Item = &RelayInfo> {
        self.relays
            .values()
            .filter(move |r| r.mix && r.layer == layer)
    }
}
