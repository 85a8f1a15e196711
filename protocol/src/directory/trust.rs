//! Who must have signed a directory, and the one step every reader takes with fetched bytes:
//! bytes + [`Trust`] + now → a verified [`Directory`] (or [`super::NetworkView`]).

use thiserror::Error;

use super::Directory;
use crate::error::Result;

/// Authority keys and how many of them must have signed. A threshold of 0 accepts unsigned
/// directories (tests and private test networks only; readers log a warning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// ed25519 public keys of the directory authorities.
    pub authorities: Vec<[u8; 32]>,
    /// Valid signatures required.
    pub threshold: usize,
}

/// An authority key in a config that is not 32 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("authority key {0:?} is not 32 hex bytes")]
pub struct BadAuthorityKey(pub String);

impl Trust {
    /// Parses authority keys as configs write them (hex, surrounding space ignored).
    pub fn from_hex(keys: &[String], threshold: usize) -> Result<Self, BadAuthorityKey> {
        let authorities = keys
            .iter()
            .map(|k| {
                hex::decode(k.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .ok_or_else(|| BadAuthorityKey(k.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            authorities,
            threshold,
        })
    }

    /// Whether signatures are checked at all (threshold above 0).
    pub fn checks_signatures(&self) -> bool {
        self.threshold > 0
    }

    /// Checks `dir` against these authorities at `now_unix` (nothing with a threshold of 0).
    pub fn verify(&self, dir: &Directory, now_unix: u64) -> Result<()> {
        if self.checks_signatures() {
            dir.verify(&self.authorities, self.threshold, now_unix)?;
        }
        Ok(())
    }

    /// Parses and verifies fetched directory bytes.
    pub fn verify_bytes(&self, bytes: &[u8], now_unix: u64) -> Result<Directory> {
        let dir = Directory::from_bytes(bytes)?;
        self.verify(&dir, now_unix)?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_parse_and_bad_ones_are_named() {
        let t = Trust::from_hex(&[format!(" {} ", "ab".repeat(32))], 1).unwrap();
        assert_eq!(t.authorities, vec![[0xab; 32]]);
        let err = Trust::from_hex(&["abcd".into()], 1).unwrap_err();
        assert!(err.to_string().contains("\"abcd\""));
    }
}
