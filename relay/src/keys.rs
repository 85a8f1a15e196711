//! The relay's secret keys and the Sphinx key schedule.
//!
//! A key file holds three secrets: the ed25519 identity (its public half is the [`RelayId`],
//! which is also the Sphinx node address), the X25519 Noise static key for links, and a Sphinx
//! master secret. Each key epoch's Sphinx key is derived from the master secret with HKDF, so
//! the relay can publish the next epoch's public key in advance and needs no key state besides
//! the file.
//!
//! Trade-off: derivation from one master secret means that a stolen key file exposes every
//! epoch's key, past ones included. A hash ratchet (`k[e+1] = H(k[e])`, old keys erased) would
//! give forward secrecy at the cost of state that must never roll back; see the crate docs.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spore_protocol::RelayId;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{RelayError, Result};

/// A relay's long-term secrets.
#[derive(Clone)]
pub struct RelayKeys {
    identity: SigningKey,
    link_secret: [u8; 32],
    sphinx_master: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    identity: String,
    link: String,
    sphinx_master: String,
}

impl std::fmt::Debug for RelayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayKeys")
            .field("id", &self.relay_id())
            .finish_non_exhaustive()
    }
}

impl RelayKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        Self::from_secrets(rand::random(), rand::random(), rand::random())
    }

    /// Keys from known secrets (tests, or keys managed elsewhere).
    pub fn from_secrets(
        identity: [u8; 32],
        link_secret: [u8; 32],
        sphinx_master: [u8; 32],
    ) -> Self {
        Self {
            identity: SigningKey::from_bytes(&identity),
            link_secret,
            sphinx_master,
        }
    }

    /// Reads a key file written by [`RelayKeys::save`].
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
        Ok(Self::from_secrets(
            field("identity", &file.identity)?,
            field("link", &file.link)?,
            field("sphinx_master", &file.sphinx_master)?,
        ))
    }

    /// Loads the key file, or generates keys and writes it if it does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        if path.exists() {
            Self::load(path)
        } else {
            let keys = Self::generate();
            keys.save(path)?;
            Ok(keys)
        }
    }

    /// Writes the key file with mode 0600, refusing to overwrite an existing one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = Zeroizing::new(format!(
            "# Spore relay secret keys. Never share this file.\n\
             identity = \"{}\"\nlink = \"{}\"\nsphinx_master = \"{}\"\n",
            hex::encode(self.identity.to_bytes()),
            hex::encode(self.link_secret),
            hex::encode(self.sphinx_master),
        ));
        let err = |source| RelayError::File {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(path).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(())
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

    /// The Sphinx secret for key epoch `epoch`.
    pub fn sphinx_secret(&self, epoch: u64) -> StaticSecret {
        let hk = Hkdf::<Sha256>::new(
            Some(b"spore/relay/sphinx-epoch-key/v1"),
            &self.sphinx_master,
        );
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        if hk.expand(&epoch.to_be_bytes(), okm.as_mut()).is_err() {
            unreachable!("HKDF-SHA256 can expand 32 bytes");
        }
        StaticSecret::from(*okm)
    }

    pub fn sphinx_public(&self, epoch: u64) -> PublicKey {
        PublicKey::from(&self.sphinx_secret(epoch))
    }
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
        let keys = RelayKeys::generate();
        keys.save(&path).expect("save");
        let back = RelayKeys::load(&path).expect("load");
        assert_eq!(back.relay_id(), keys.relay_id());
        assert_eq!(back.link_public(), keys.link_public());
        assert_eq!(back.sphinx_public(7), keys.sphinx_public(7));
        assert_ne!(keys.sphinx_public(7), keys.sphinx_public(8));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keys.save(&path).is_err(), "never overwrites a key file");
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
