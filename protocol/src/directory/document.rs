//! The directory document: relays and parameters for one epoch, signed by authorities.

use std::collections::HashSet;

use ed25519_dalek::{Signer, SigningKey};

use super::descriptor::verify_signature;
use super::{
    DIRECTORY_DOMAIN, DIRECTORY_VERSION, MAX_AUTHORITY_SIGNATURES, MAX_RELAYS, NetworkParams,
    RelayDescriptor,
};
use crate::codec::{Reader, Writer};
use crate::error::{ApiMisuse, InvalidMessage, PeerMisbehaved, Result};
use crate::ids::RelayId;

/// One authority's signature over a [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthoritySignature {
    /// The authority's ed25519 verifying key.
    pub authority: [u8; 32],
    pub signature: [u8; 64],
}

/// The signed list of relays and network parameters for one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Directory {
    pub epoch: u64,
    /// Unix seconds; the document is valid in `[valid_after, valid_until]`.
    pub valid_after: u64,
    pub valid_until: u64,
    pub params: NetworkParams,
    /// At most [`MAX_RELAYS`].
    pub relays: Vec<RelayDescriptor>,
    /// At most [`MAX_AUTHORITY_SIGNATURES`]; not covered by the signatures themselves, so
    /// authorities can sign independently and in any order.
    pub signatures: Vec<AuthoritySignature>,
}

impl Directory {
    /// Adds (or replaces) `key`'s signature over the document minus its signatures.
    pub fn sign(&mut self, key: &SigningKey) -> Result<()> {
        let authority = key.verifying_key().to_bytes();
        let signature = key.sign(&self.signed_message()).to_bytes();
        self.signatures.retain(|s| s.authority != authority);
        if self.signatures.len() >= MAX_AUTHORITY_SIGNATURES {
            return Err(ApiMisuse::InvalidArgument("too many authority signatures").into());
        }
        self.signatures.push(AuthoritySignature {
            authority,
            signature,
        });
        Ok(())
    }

    /// Accepts the document only if all of these hold:
    ///
    /// * at least `threshold` distinct authorities from `trusted_authorities` signed it
    ///   (untrusted signers and repeated signatures count nothing),
    /// * `now_unix` is inside `[valid_after, valid_until]`,
    /// * every descriptor is well-formed, validly self-signed and valid now,
    /// * no relay is listed twice.
    ///
    /// A `threshold` of 0 is refused: it would accept an unsigned document.
    ///
    /// ```
    /// use ed25519_dalek::SigningKey;
    /// use spore_protocol::directory::{Directory, NetworkParams};
    ///
    /// let authorities: Vec<SigningKey> =
    ///     (1u8..=3).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
    /// let trusted: Vec<[u8; 32]> =
    ///     authorities.iter().map(|a| a.verifying_key().to_bytes()).collect();
    ///
    /// let mut doc = Directory {
    ///     epoch: 480_000,
    ///     valid_after: 1_728_000_000,
    ///     valid_until: 1_728_003_600,
    ///     params: NetworkParams::default(),
    ///     relays: vec![],
    ///     signatures: vec![],
    /// };
    /// doc.sign(&authorities[0])?;
    /// doc.sign(&authorities[2])?;
    ///
    /// // What a client does with bytes it downloaded:
    /// let received = Directory::from_bytes(&doc.to_bytes())?;
    /// received.verify(&trusted, 2, 1_728_000_100)?;
    /// assert!(received.verify(&trusted, 3, 1_728_000_100).is_err());
    /// # Ok::<(), spore_protocol::Error>(())
    /// ```
    pub fn verify(
        &self,
        trusted_authorities: &[[u8; 32]],
        threshold: usize,
        now_unix: u64,
    ) -> Result<()> {
        if threshold == 0 {
            return Err(
                ApiMisuse::InvalidArgument("signature threshold must be at least 1").into(),
            );
        }
        self.check_fields()?;

        let message = self.signed_message();
        let mut counted: HashSet<[u8; 32]> = HashSet::new();
        for s in &self.signatures {
            if counted.contains(&s.authority) || !trusted_authorities.contains(&s.authority) {
                continue;
            }
            if verify_signature(&s.authority, &message, &s.signature).is_ok() {
                counted.insert(s.authority);
            }
        }
        if counted.len() < threshold {
            return Err(PeerMisbehaved::NotEnoughSignatures {
                valid: counted.len(),
                needed: threshold,
            }
            .into());
        }

        if now_unix < self.valid_after || now_unix > self.valid_until {
            return Err(PeerMisbehaved::Expired.into());
        }

        let mut ids = HashSet::with_capacity(self.relays.len());
        for relay in &self.relays {
            if !ids.insert(relay.id) {
                return Err(PeerMisbehaved::DuplicateRelay.into());
            }
            relay.verify(now_unix)?;
        }
        Ok(())
    }

    /// The descriptor of relay `id`. A linear scan: directories are small and looked up
    /// rarely; callers on a hot path build their own index.
    pub fn relay(&self, id: &RelayId) -> Option<&RelayDescriptor> {
        self.relays.iter().find(|r| r.id == *id)
    }

    /// Mixes in `layer` (1..=MIX_LAYERS).
    pub fn mixes_in_layer(&self, layer: u8) -> impl Iterator<Item = &RelayDescriptor> + '_ {
        self.relays
            .iter()
            .filter(move |r| r.roles.mix && r.layer == layer)
    }

    /// Relays accepting packets from clients.
    pub fn entries(&self) -> impl Iterator<Item = &RelayDescriptor> + '_ {
        self.relays.iter().filter(|r| r.roles.entry)
    }

    /// Relays that hold mailboxes.
    pub fn mailboxes(&self) -> impl Iterator<Item = &RelayDescriptor> + '_ {
        self.relays.iter().filter(|r| r.roles.mailbox)
    }

    /// The Sphinx key epoch at `now_unix`.
    pub fn epoch_at(&self, now_unix: u64) -> u64 {
        now_unix
            .checked_div(self.params.epoch_length_secs)
            .unwrap_or(0)
    }

    fn check_fields(&self) -> Result<(), InvalidMessage> {
        self.params.validate()?;
        if self.valid_after > self.valid_until {
            return Err(InvalidMessage::BadValue("directory validity window"));
        }
        if self.relays.len() > MAX_RELAYS {
            return Err(InvalidMessage::TooLong { limit: MAX_RELAYS });
        }
        if self.signatures.len() > MAX_AUTHORITY_SIGNATURES {
            return Err(InvalidMessage::TooLong {
                limit: MAX_AUTHORITY_SIGNATURES,
            });
        }
        Ok(())
    }

    fn encode_unsigned(&self, w: &mut Writer) {
        w.u8(DIRECTORY_VERSION)
            .u64(self.epoch)
            .u64(self.valid_after)
            .u64(self.valid_until);
        self.params.encode(w);
        w.u16(u16::try_from(self.relays.len()).unwrap_or(u16::MAX));
        for relay in &self.relays {
            relay.encode(w);
        }
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + 512 * self.relays.len());
        w.bytes(DIRECTORY_DOMAIN);
        self.encode_unsigned(&mut w);
        w.into_vec()
    }

    /// The stable binary form. A document with more than [`MAX_RELAYS`] relays or
    /// [`MAX_AUTHORITY_SIGNATURES`] signatures encodes to bytes [`from_bytes`](Self::from_bytes)
    /// rejects.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + 512 * self.relays.len());
        self.encode_unsigned(&mut w);
        w.u8(u8::try_from(self.signatures.len()).unwrap_or(u8::MAX));
        for s in &self.signatures {
            w.bytes(&s.authority).bytes(&s.signature);
        }
        w.into_vec()
    }

    /// Parses a document; counts are bounded before allocation and trailing bytes rejected.
    /// Nothing is trusted until [`verify`](Self::verify) succeeds.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != DIRECTORY_VERSION {
            return Err(InvalidMessage::Unknown {
                what: "directory version",
                value: version.into(),
            }
            .into());
        }
        let epoch = r.u64()?;
        let valid_after = r.u64()?;
        let valid_until = r.u64()?;
        let params = NetworkParams::decode(&mut r)?;
        let n = usize::from(r.u16()?);
        if n > MAX_RELAYS {
            return Err(InvalidMessage::TooLong { limit: MAX_RELAYS }.into());
        }
        let mut relays = Vec::with_capacity(n);
        for _ in 0..n {
            relays.push(RelayDescriptor::decode(&mut r)?);
        }
        let n = usize::from(r.u8()?);
        if n > MAX_AUTHORITY_SIGNATURES {
            return Err(InvalidMessage::TooLong {
                limit: MAX_AUTHORITY_SIGNATURES,
            }
            .into());
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            signatures.push(AuthoritySignature {
                authority: r.array()?,
                signature: r.array()?,
            });
        }
        r.finish()?;
        let doc = Directory {
            epoch,
            valid_after,
            valid_until,
            params,
            relays,
            signatures,
        };
        doc.check_fields()?;
        Ok(doc)
    }
}
