//! The relay's secret keys and the Sphinx key schedule.
//!
//! The key file holds two long-term secrets: the ed25519 identity (its public half is the
//! [`RelayId`], which is also the Sphinx node address) and the X25519 Noise static key for
//! links. Sphinx keys are not in it: each key epoch has its own random secret
//! ([`EpochKeys`]), kept in a folder beside the key file, made ahead so the next epoch's public
//! key can be published, and erased after the epoch's grace window. So a stolen key file and
//! data folder expose no key of an epoch that is over (forward secrecy).
//!
//! Migration: key files of earlier versions also hold a `sphinx_master` from which every
//! epoch's key was derived with HKDF. Such a file still loads; the relay then derives only the
//! keys it may already have published (previous, current and next epoch), stores them as epoch
//! keys, and rewrites the key file without the master ([`RelayKeys::retire_legacy_master`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spore_protocol::RelayId;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::epoch_keys::{EpochKeys, public_of};
use crate::error::{RelayError, Result};

/// A relay's secrets: the identity and link keys, and a handle on its epoch keys (shared by
/// every clone).
#[derive(Clone)]
pub struct RelayKeys {
    identity: SigningKey,
    link_secret: [u8; 32],
    epochs: Arc<EpochKeys>,
    /// The file these keys were read from, and the Sphinx master secret it still held (an
    /// earlier version's file) until [`RelayKeys::retire_legacy_master`] removes it.
    source: Option<PathBuf>,
    legacy_master: Arc<Mutex<Option<Zeroizing<[u8; 32]>>>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    identity: String,
    link: String,
    /// Only in key files of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sphinx_master: Option<String>,
}

impl std::fmt::Debug for RelayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayKeys")
            .field("id", &self.relay_id())
            .finish_non_exhaustive()
    }
}

impl RelayKeys {
    /// Fresh random keys; their epoch keys are kept in memory only.
    pub fn generate() -> Self {
        Self::from_secrets(rand::random(), rand::random())
    }

    /// Keys from known secrets (tests, or keys managed elsewhere), epoch keys in memory only.
    pub fn from_secrets(identity: [u8; 32], link_secret: [u8; 32]) -> Self {
        Self {
            identity: SigningKey::from_bytes(&identity),
            link_secret,
            epochs: Arc::new(EpochKeys::in_memory()),
            source: None,
            legacy_master: Arc::default(),
        }
    }

    /// Reads a key file written by [`RelayKeys::save`] (or by an earlier version), and opens
    /// its epoch-key folder (`<key file>.epochs/`).
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| RelayError::File {
                    path: path.to_owned(),
                    source,
                })?,
            );
        let file: KeyFile = toml::from_str(&text).map_err(|e| RelayError::Keys(e.to_string()))?;
        let field = |name: &'static str, hex_str: &str| -> Result<[u8; 32]> {
            let bytes = Zeroizing::new(
                hex::decode(hex_str.trim())
                    .map_err(|_| RelayError::Keys(format!("{name}: not hex")))?,
            );
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| RelayError::Keys(format!("{name}: expected 32 bytes")))
        };
        let legacy_master = match &file.sphinx_master {
            Some(m) => Some(Zeroizing::new(field("sphinx_master", m)?)),
            None => None,
        };
        Ok(Self {
            identity: SigningKey::from_bytes(&field("identity", &file.identity)?),
            link_secret: field("link", &file.link)?,
            epochs: Arc::new(EpochKeys::open(&EpochKeys::dir_for(path))?),
            source: Some(path.to_owned()),
            legacy_master: Arc::new(Mutex::new(legacy_master)),
        })
    }

    /// Loads the key file, or generates keys and writes it if it does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        if !path.exists() {
            Self::generate().save(path)?;
        }
        Self::load(path)
    }

    fn file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# Spore relay secret keys. Never share this file.\n\
             # Sphinx keys are per epoch, in the folder beside it named like it plus \".epochs\".\n\
             identity = \"{}\"\nlink = \"{}\"\n",
            hex::encode(self.identity.to_bytes()),
            hex::encode(self.link_secret),
        ))
    }

    /// Writes the key file with mode 0600, refusing to overwrite an existing one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.file_text();
        let err = |source| RelayError::File {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let mut f = crate::private_files::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(())
    }

    /// If these keys came from a key file of an earlier version: stores the keys of `epochs`
    /// (those the relay may have published already) derived from its Sphinx master secret as
    /// epoch keys, rewrites the key file without the master (atomically, mode 0600) and forgets
    /// it. Returns whether there was a master to retire.
    pub fn retire_legacy_master(&self, epochs: std::ops::RangeInclusive<u64>) -> Result<bool> {
        let mut guard = self.legacy_master.lock().unwrap_or_else(|e| e.into_inner());
        let Some(master) = guard.as_ref() else {
            return Ok(false);
        };
        for epoch in epochs {
            if epoch >= self.epochs.floor() {
                self.epochs
                    .install(epoch, legacy_epoch_secret(master, epoch))?;
            }
        }
        if let Some(path) = &self.source {
            let tmp = path.with_extension("key.new");
            let err = |p: &Path| {
                let p = p.to_owned();
                move |source| RelayError::File { path: p, source }
            };
            crate::private_files::write_synced(&tmp, self.file_text().as_bytes())
                .map_err(err(&tmp))?;
            std::fs::rename(&tmp, path).map_err(err(path))?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(err(dir))?;
            }
        }
        *guard = None;
        Ok(true)
    }

    /// The relay's name: its ed25519 public key.
    pub fn relay_id(&self) -> RelayId {
        RelayId(self.identity.verifying_key().to_bytes())
    }

    pub fn identity(&self) -> &SigningKey {
        &self.identity
    }

    /// Noise static secret for links.
    pub fn link_secret(&self) -> &[u8; 32] {
        &self.link_secret
    }

    /// Noise static public key (published in the descriptor as `link_key`).
    pub fn link_public(&self) -> [u8; 32] {
        PublicKey::from(&StaticSecret::from(self.link_secret)).to_bytes()
    }

    /// The key file these keys were loaded from, if any: a process that is to use the same
    /// epoch keys (a relay a benchmark starts) must open this file, not a copy of it.
    pub fn key_file(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The relay's per-epoch Sphinx keys.
    pub fn epochs(&self) -> &EpochKeys {
        &self.epochs
    }

    /// The Sphinx secret for key epoch `epoch`, made now if the epoch has none yet. For an
    /// epoch already erased (or if the key folder cannot be written) this is a throwaway random
    /// secret that nothing sent to this relay will match; the mix reads held keys only
    /// ([`EpochKeys::secret`]).
    pub fn sphinx_secret(&self, epoch: u64) -> StaticSecret {
        match self.epochs.get_or_make(epoch) {
            Ok(Some(s)) => s,
            Ok(None) => StaticSecret::from(rand::random::<[u8; 32]>()),
            Err(e) => {
                tracing::error!(error = %e, epoch, "could not make an epoch key");
                StaticSecret::from(rand::random::<[u8; 32]>())
            }
        }
    }

    /// The Sphinx public key for key epoch `epoch` (see [`RelayKeys::sphinx_secret`]).
    pub fn sphinx_public(&self, epoch: u64) -> PublicKey {
        public_of(&self.sphinx_secret(epoch))
    }
}

/// How earlier versions derived an epoch's key from the master secret.
fn legacy_epoch_secret(master: &[u8; 32], epoch: u64) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(b"spore/relay/sphinx-epoch-key/v1"), master);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    if hk.expand(&epoch.to_be_bytes(), okm.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 can expand 32 bytes");
    }
    okm
}

/// Which Sphinx keys are accepted at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchedule {
    pub epoch_length_secs: u64,
    pub grace_secs: u64,
}

impl KeySchedule {
    pub fn epoch_at(&self, now_unix: u64) -> u64 {
        now_unix / self.epoch_length_secs.max(1)
    }

    /// Epochs whose keys are accepted at `now_unix`, most likely first: the current epoch, then
    /// the previous one during the grace window after a rotation, then the next one during the
    /// grace window before a rotation (a sender whose clock runs ahead).
    ///
    /// The header does not say which key it was built for, so a packet for a fallback epoch
    /// costs one extra X25519 operation per key tried before it (and an invalid packet costs
    /// one per accepted epoch: at most three, only near a rotation).
    pub fn accepted_epochs(&self, now_unix: u64) -> Vec<u64> {
        let len = self.epoch_length_secs.max(1);
        let current = now_unix / len;
        let into = now_unix % len;
        let mut out = vec![current];
        if current > 0 && into < self.grace_secs {
            out.push(current - 1);
        }
        if len - into <= self.grace_secs {
            out.push(current + 1);
        }
        out
    }

    /// Oldest epoch whose replay cache must still be kept.
    pub fn oldest_kept_epoch(&self, now_unix: u64) -> u64 {
        self.accepted_epochs(now_unix)
            .into_iter()
            .min()
            .unwrap_or_else(|| self.epoch_at(now_unix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let keys = RelayKeys::load_or_generate(&path).expect("generate");
        let back = RelayKeys::load(&path).expect("load");
        assert_eq!(back.relay_id(), keys.relay_id());
        assert_eq!(back.link_public(), keys.link_public());
        assert_eq!(
            back.sphinx_public(7),
            keys.sphinx_public(7),
            "epoch keys on disk"
        );
        assert_ne!(keys.sphinx_public(7), keys.sphinx_public(8));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("sphinx_master"), "no master secret any more");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keys.save(&path).is_err(), "never overwrites a key file");
    }

    #[test]
    fn a_key_file_with_a_master_secret_loads_keeps_published_keys_and_loses_the_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.key");
        let (identity, link, master) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        std::fs::write(
            &path,
            format!(
                "identity = \"{}\"\nlink = \"{}\"\nsphinx_master = \"{}\"\n",
                hex::encode(identity),
                hex::encode(link),
                hex::encode(master)
            ),
        )
        .expect("write");
        let keys = RelayKeys::load(&path).expect("old format loads");
        assert_eq!(
            keys.relay_id(),
            RelayKeys::from_secrets(identity, link).relay_id()
        );
        assert!(keys.retire_legacy_master(9..=11).expect("retire"));
        assert!(!keys.retire_legacy_master(9..=11).expect("retire"), "once");
        for epoch in 9..=11 {
            let derived = StaticSecret::from(*legacy_epoch_secret(&master, epoch));
            assert_eq!(
                keys.sphinx_public(epoch),
                PublicKey::from(&derived),
                "keys published before the upgrade still work"
            );
        }
        let derived12 = PublicKey::from(&StaticSecret::from(*legacy_epoch_secret(&master, 12)));
        assert_ne!(keys.sphinx_public(12), derived12, "later epochs are random");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("sphinx_master"));
        let again = RelayKeys::load(&path).expect("new format loads");
        assert_eq!(again.relay_id(), keys.relay_id());
        assert_eq!(again.sphinx_public(10), keys.sphinx_public(10));
    }

    #[test]
    fn grace_windows() {
        let s = KeySchedule {
            epoch_length_secs: 100,
            grace_secs: 10,
        };
        assert_eq!(s.accepted_epochs(505), vec![5, 4]);
        assert_eq!(s.accepted_epochs(550), vec![5]);
        assert_eq!(s.accepted_epochs(595), vec![5, 6]);
        assert_eq!(s.oldest_kept_epoch(505), 4);
    }
}
