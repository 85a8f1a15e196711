//! A relay's signed self-description: where to reach it, its roles, its link and Sphinx keys.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{DESCRIPTOR_DOMAIN, DESCRIPTOR_VERSION, MAX_ADDRESS_LEN, MAX_SPHINX_KEYS};
use crate::codec::{Reader, Writer};
use crate::error::{ApiMisuse, InvalidMessage, PeerMisbehaved, Result};
use crate::ids::RelayId;
use crate::params::MIX_LAYERS;

/// What a relay does. Encoded as a bit set; unknown bits are rejected so that a newer role
/// cannot be silently ignored by an older reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles {
    /// Accepts packets from clients (first hop).
    pub entry: bool,
    /// Mixes in one of the [`MIX_LAYERS`] layers.
    pub mix: bool,
    /// Stores packets for offline recipients and serves pulls.
    pub mailbox: bool,
}

impl Roles {
    const ENTRY: u8 = 1 << 0;
    const MIX: u8 = 1 << 1;
    const MAILBOX: u8 = 1 << 2;

    /// The bit-set form.
    pub fn to_bits(self) -> u8 {
        (if self.entry { Self::ENTRY } else { 0 })
            | (if self.mix { Self::MIX } else { 0 })
            | (if self.mailbox { Self::MAILBOX } else { 0 })
    }

    /// Parses the bit-set form, rejecting unknown bits.
    pub fn from_bits(bits: u8) -> Result<Self, InvalidMessage> {
        if bits & !(Self::ENTRY | Self::MIX | Self::MAILBOX) != 0 {
            return Err(InvalidMessage::Unknown {
                what: "relay role bits",
                value: bits.into(),
            });
        }
        Ok(Self {
            entry: bits & Self::ENTRY != 0,
            mix: bits & Self::MIX != 0,
            mailbox: bits & Self::MAILBOX != 0,
        })
    }
}

/// A relay's Sphinx public key for one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SphinxKey {
    pub epoch: u64,
    pub public: [u8; 32],
}

/// Everything a relay says about itself, before signing. See [`RelayDescriptor::sign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorFields {
    pub address: String,
    pub roles: Roles,
    pub layer: u8,
    pub link_key: [u8; 32],
    pub sphinx_keys: Vec<SphinxKey>,
    pub published_at: u64,
    pub expires_at: u64,
}

/// A relay's signed self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDescriptor {
    /// The relay's ed25519 verifying key, which signed this descriptor.
    pub id: RelayId,
    /// `host:port` of its link listener, at most [`MAX_ADDRESS_LEN`] bytes.
    pub address: String,
    pub roles: Roles,
    /// `1..=MIX_LAYERS` for a mix, 0 otherwise: routes take one mix from each layer.
    pub layer: u8,
    /// Noise static public key; initiators pin it in [`crate::link::LinkHandshake`].
    pub link_key: [u8; 32],
    /// One or two keys with strictly increasing epochs: current, and the next one published
    /// early so senders can build packets that cross the epoch boundary.
    pub sphinx_keys: Vec<SphinxKey>,
    /// Unix seconds.
    pub published_at: u64,
    /// Unix seconds; the descriptor is valid in `[published_at, expires_at]`.
    pub expires_at: u64,
    /// ed25519 over `b"spore/descriptor/v1"` and every field above.
    pub signature: [u8; 64],
}

impl RelayDescriptor {
    /// Validates and signs `fields`; the signing key's verifying key becomes the relay id.
    pub fn sign(fields: DescriptorFields, key: &SigningKey) -> Result<Self> {
        let mut d = RelayDescriptor {
            id: RelayId(key.verifying_key().to_bytes()),
            address: fields.address,
            roles: fields.roles,
            layer: fields.layer,
            link_key: fields.link_key,
            sphinx_keys: fields.sphinx_keys,
            published_at: fields.published_at,
            expires_at: fields.expires_at,
            signature: [0; 64],
        };
        d.check_fields()
            .map_err(|_| ApiMisuse::InvalidArgument("invalid descriptor fields"))?;
        d.signature = key.sign(&d.signed_message()).to_bytes();
        Ok(d)
    }

    /// Checks the structure, the signature and that `now_unix` is inside the validity window.
    pub fn verify(&self, now_unix: u64) -> Result<()> {
        self.check_fields()?;
        verify_signature(&self.id.0, &self.signed_message(), &self.signature)?;
        if now_unix < self.published_at || now_unix > self.expires_at {
            return Err(PeerMisbehaved::Expired.into());
        }
        Ok(())
    }

    /// The Sphinx public key for `epoch`, if the relay published one.
    pub fn sphinx_key(&self, epoch: u64) -> Option<[u8; 32]> {
        self.sphinx_keys
            .iter()
            .find(|k| k.epoch == epoch)
            .map(|k| k.public)
    }

    /// Rules any honest descriptor follows; checked when parsing and again when verifying,
    /// since the fields are public and may have been built by hand.
    fn check_fields(&self) -> Result<(), InvalidMessage> {
        check_address(&self.address)?;
        let layer_ok = if self.roles.mix {
            (1..=MIX_LAYERS).contains(&usize::from(self.layer))
        } else {
            self.layer == 0
        };
        if !layer_ok {
            return Err(InvalidMessage::BadValue("relay layer"));
        }
        if self.sphinx_keys.is_empty() || self.sphinx_keys.len() > MAX_SPHINX_KEYS {
            return Err(InvalidMessage::BadValue("sphinx key count"));
        }
        if self.sphinx_keys.windows(2).any(|w| match w {
            [a, b] => a.epoch >= b.epoch,
            _ => false,
        }) {
            return Err(InvalidMessage::BadValue("sphinx key epochs"));
        }
        if self.published_at > self.expires_at {
            return Err(InvalidMessage::BadValue("descriptor validity window"));
        }
        Ok(())
    }

    fn encode_fields(&self, w: &mut Writer) {
        w.u8(DESCRIPTOR_VERSION)
            .bytes(&self.id.0)
            .bytes_u8(self.address.as_bytes())
            .u8(self.roles.to_bits())
            .u8(self.layer)
            .bytes(&self.link_key)
            .u8(u8::try_from(self.sphinx_keys.len()).unwrap_or(u8::MAX));
        for k in &self.sphinx_keys {
            w.u64(k.epoch).bytes(&k.public);
        }
        w.u64(self.published_at).u64(self.expires_at);
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512);
        w.bytes(DESCRIPTOR_DOMAIN);
        self.encode_fields(&mut w);
        w.into_vec()
    }

    /// Appends the descriptor's encoding (fields then signature).
    pub fn encode(&self, w: &mut Writer) {
        self.encode_fields(w);
        w.bytes(&self.signature);
    }

    /// Parses one descriptor from `r`; structure is checked, the signature is not (see
    /// [`verify`](Self::verify)).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let version = r.u8()?;
        if version != DESCRIPTOR_VERSION {
            return Err(InvalidMessage::Unknown {
                what: "descriptor version",
                value: version.into(),
            }
            .into());
        }
        let id = RelayId(r.array()?);
        let address = std::str::from_utf8(r.bytes_u8(MAX_ADDRESS_LEN)?)
            .map_err(|_| InvalidMessage::BadValue("relay address"))?
            .to_owned();
        let roles = Roles::from_bits(r.u8()?)?;
        let layer = r.u8()?;
        let link_key = r.array()?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_SPHINX_KEYS {
            return Err(InvalidMessage::BadValue("sphinx key count").into());
        }
        let mut sphinx_keys = Vec::with_capacity(n);
        for _ in 0..n {
            sphinx_keys.push(SphinxKey {
                epoch: r.u64()?,
                public: r.array()?,
            });
        }
        let d = RelayDescriptor {
            id,
            address,
            roles,
            layer,
            link_key,
            sphinx_keys,
            published_at: r.u64()?,
            expires_at: r.u64()?,
            signature: r.array()?,
        };
        d.check_fields()?;
        Ok(d)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512);
        self.encode(&mut w);
        w.into_vec()
    }

    /// Parses exactly one descriptor; trailing bytes are rejected.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let d = Self::decode(&mut r)?;
        r.finish()?;
        Ok(d)
    }
}

/// `host:port` with a non-empty host and a non-zero port.
fn check_address(address: &str) -> Result<(), InvalidMessage> {
    let bad = InvalidMessage::BadValue("relay address");
    if address.len() > MAX_ADDRESS_LEN
        || address.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad);
    }
    let (host, port) = address.rsplit_once(':').ok_or(bad.clone())?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !host.is_empty() => Ok(()),
        _ => Err(bad),
    }
}

/// Strict ed25519 verification: rejects weak keys and malleable signatures, so one signed
/// document has one valid signature encoding per signer.
pub(super) fn verify_signature(key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<()> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| PeerMisbehaved::BadSignature)?;
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| PeerMisbehaved::BadSignature)?;
    Ok(())
}
