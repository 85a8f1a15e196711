//! Relay descriptors and the signed directory document.
//!
//! A relay describes itself in a [`RelayDescriptor`] signed with its ed25519 identity key (the
//! key that is also its [`RelayId`]): where to reach it, which roles it plays, its Noise link
//! key and its Sphinx keys for the current and next epoch. Directory authorities collect the
//! descriptors into a [`Directory`] with the network-wide [`NetworkParams`] and each sign it;
//! clients and relays accept a document only if enough trusted authorities did
//! ([`Directory::verify`]).
//!
//! Encodings are versioned, have exactly one form (no trailing bytes, unknown bits or values
//! rejected) and are what the signatures cover, so a document that parses and verifies means
//! the same thing to everyone.

use std::collections::HashSet;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::codec::{Reader, Writer};
use crate::error::{ApiMisuse, InvalidMessage, PeerMisbehaved, Result};
use crate::ids::RelayId;
use crate::params::{MIX_LAYERS, PACKET_SIZE};

/// Longest `host:port` a descriptor may carry.
pub const MAX_ADDRESS_LEN: usize = 255;
/// A relay publishes its current Sphinx key and, ahead of rotation, the next one.
pub const MAX_SPHINX_KEYS: usize = 2;
/// Most relays one directory lists; bounds parsing memory (a descriptor is under 500 bytes).
pub const MAX_RELAYS: usize = 4096;
/// Most authority signatures one directory carries.
pub const MAX_AUTHORITY_SIGNATURES: usize = 16;

const DESCRIPTOR_DOMAIN: &[u8] = b"spore/descriptor/v1";
const DIRECTORY_DOMAIN: &[u8] = b"spore/directory/v1";
const DESCRIPTOR_VERSION: u8 = 1;
const DIRECTORY_VERSION: u8 = 1;

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
fn verify_signature(key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<()> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| PeerMisbehaved::BadSignature)?;
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| PeerMisbehaved::BadSignature)?;
    Ok(())
}

/// Network-wide parameters every client and relay uses, published in the directory so that
/// all senders look alike (a sender with its own rates would stand out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkParams {
    /// Per-hop delay rate (1/s): each hop's delay is exponential with mean `1/mu` seconds.
    pub mu: f64,
    /// Rate (1/s) of a client's payload stream, real or cover.
    pub lambda_p: f64,
    /// Rate (1/s) of a client's loop cover packets.
    pub lambda_l: f64,
    /// Rate (1/s) of a client's drop cover packets.
    pub lambda_d: f64,
    /// Rate (1/s) of a relay's own loop cover packets.
    pub lambda_m: f64,
    /// Must equal [`PACKET_SIZE`] in this protocol version.
    pub packet_size: u32,
    /// Sphinx keys rotate every epoch; epoch `n` covers `[n * len, (n + 1) * len)`.
    pub epoch_length_secs: u64,
    /// Relays drop headers asking for a longer per-hop delay.
    pub max_delay_ms: u64,
    /// How often a client pulls its mailbox.
    pub pull_interval_ms: u64,
}

impl Default for NetworkParams {
    fn default() -> Self {
        Self {
            mu: 20.0,
            lambda_p: 10.0,
            lambda_l: 2.0,
            lambda_d: 2.0,
            lambda_m: 2.0,
            packet_size: PACKET_SIZE as u32,
            epoch_length_secs: 3600,
            max_delay_ms: 60_000,
            pull_interval_ms: 500,
        }
    }
}

impl NetworkParams {
    /// Rates finite and positive, intervals non-zero, packet size this version's.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        let rates = [
            ("mu", self.mu),
            ("lambda_p", self.lambda_p),
            ("lambda_l", self.lambda_l),
            ("lambda_d", self.lambda_d),
            ("lambda_m", self.lambda_m),
        ];
        for (name, rate) in rates {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(InvalidMessage::BadValue(name));
            }
        }
        if usize::try_from(self.packet_size).ok() != Some(PACKET_SIZE) {
            return Err(InvalidMessage::BadValue("packet_size"));
        }
        if self.epoch_length_secs == 0 {
            return Err(InvalidMessage::BadValue("epoch_length_secs"));
        }
        if self.max_delay_ms == 0 {
            return Err(InvalidMessage::BadValue("max_delay_ms"));
        }
        if self.pull_interval_ms == 0 {
            return Err(InvalidMessage::BadValue("pull_interval_ms"));
        }
        Ok(())
    }

    fn encode(&self, w: &mut Writer) {
        w.f64(self.mu)
            .f64(self.lambda_p)
            .f64(self.lambda_l)
            .f64(self.lambda_d)
            .f64(self.lambda_m)
            .u32(self.packet_size)
            .u64(self.epoch_length_secs)
            .u64(self.max_delay_ms)
            .u64(self.pull_interval_ms);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let p = Self {
            mu: r.f64()?,
            lambda_p: r.f64()?,
            lambda_l: r.f64()?,
            lambda_d: r.f64()?,
            lambda_m: r.f64()?,
            packet_size: r.u32()?,
            epoch_length_secs: r.u64()?,
            max_delay_ms: r.u64()?,
            pull_interval_ms: r.u64()?,
        };
        p.validate()?;
        Ok(p)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use proptest::prelude::*;

    const NOW: u64 = 1_728_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn fields(roles: Roles, layer: u8) -> DescriptorFields {
        DescriptorFields {
            address: "relay.example.org:4430".into(),
            roles,
            layer,
            link_key: [0x11; 32],
            sphinx_keys: vec![
                SphinxKey {
                    epoch: 480_000,
                    public: [0x22; 32],
                },
                SphinxKey {
                    epoch: 480_001,
                    public: [0x33; 32],
                },
            ],
            published_at: NOW - 100,
            expires_at: NOW + 7200,
        }
    }

    fn descriptor(seed: u8, roles: Roles, layer: u8) -> RelayDescriptor {
        RelayDescriptor::sign(fields(roles, layer), &key(seed)).unwrap()
    }

    fn mix() -> Roles {
        Roles {
            mix: true,
            ..Roles::default()
        }
    }

    fn network() -> Directory {
        let entry = Roles {
            entry: true,
            ..Roles::default()
        };
        let mailbox = Roles {
            mailbox: true,
            ..Roles::default()
        };
        Directory {
            epoch: 480_000,
            valid_after: NOW - 10,
            valid_until: NOW + 3600,
            params: NetworkParams::default(),
            relays: vec![
                descriptor(10, entry, 0),
                descriptor(11, mix(), 1),
                descriptor(12, mix(), 2),
                descriptor(13, mix(), 3),
                descriptor(14, mailbox, 0),
            ],
            signatures: vec![],
        }
    }

    fn authorities() -> (Vec<SigningKey>, Vec<[u8; 32]>) {
        let keys: Vec<SigningKey> = (1..=3).map(key).collect();
        let trusted = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
        (keys, trusted)
    }

    fn signed(n: usize) -> (Directory, Vec<[u8; 32]>) {
        let (keys, trusted) = authorities();
        let mut doc = network();
        for k in keys.iter().take(n) {
            doc.sign(k).unwrap();
        }
        (doc, trusted)
    }

    #[test]
    fn descriptor_sign_verify_round_trip() {
        let d = descriptor(7, mix(), 2);
        assert_eq!(d.id, RelayId(key(7).verifying_key().to_bytes()));
        d.verify(NOW).unwrap();
        let back = RelayDescriptor::from_bytes(&d.to_bytes()).unwrap();
        assert_eq!(back, d);
        back.verify(NOW).unwrap();
        assert_eq!(d.sphinx_key(480_001), Some([0x33; 32]));
        assert_eq!(d.sphinx_key(479_999), None);
    }

    #[test]
    fn directory_sign_verify_round_trip() {
        let (doc, trusted) = signed(3);
        let back = Directory::from_bytes(&doc.to_bytes()).unwrap();
        assert_eq!(back, doc);
        back.verify(&trusted, 3, NOW).unwrap();
    }

    #[test]
    fn two_of_three_passes_with_two_signatures_and_fails_with_one() {
        let (doc, trusted) = signed(2);
        doc.verify(&trusted, 2, NOW).unwrap();
        let (doc, trusted) = signed(1);
        assert_eq!(
            doc.verify(&trusted, 2, NOW),
            Err(PeerMisbehaved::NotEnoughSignatures {
                valid: 1,
                needed: 2
            }
            .into())
        );
    }

    #[test]
    fn untrusted_signature_does_not_count() {
        let (mut doc, trusted) = signed(1);
        doc.sign(&key(99)).unwrap();
        assert_eq!(doc.signatures.len(), 2);
        assert!(matches!(
            doc.verify(&trusted, 2, NOW),
            Err(Error::PeerMisbehaved(PeerMisbehaved::NotEnoughSignatures {
                valid: 1,
                ..
            }))
        ));
    }

    #[test]
    fn repeated_signature_by_one_authority_counts_once() {
        let (mut doc, trusted) = signed(1);
        let again = doc.signatures[0];
        doc.signatures.push(again);
        let doc = Directory::from_bytes(&doc.to_bytes()).unwrap();
        assert!(matches!(
            doc.verify(&trusted, 2, NOW),
            Err(Error::PeerMisbehaved(PeerMisbehaved::NotEnoughSignatures {
                valid: 1,
                ..
            }))
        ));
        // The same key listed twice by the caller counts once too.
        let doubled = [trusted[0], trusted[0]];
        assert!(doc.verify(&doubled, 2, NOW).is_err());
    }

    #[test]
    fn signing_twice_replaces_the_signature() {
        let (mut doc, _) = signed(1);
        doc.sign(&key(1)).unwrap();
        assert_eq!(doc.signatures.len(), 1);
    }

    #[test]
    fn forged_signature_does_not_count() {
        let (mut doc, trusted) = signed(2);
        doc.signatures[1].signature[5] ^= 1;
        assert!(doc.verify(&trusted, 2, NOW).is_err());
        doc.verify(&trusted, 1, NOW).unwrap();
    }

    #[test]
    fn any_flipped_byte_fails_verification() {
        let (doc, trusted) = signed(1);
        let bytes = doc.to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Ok(parsed) = Directory::from_bytes(&bad) {
                assert!(
                    parsed.verify(&trusted, 1, NOW).is_err(),
                    "flipping byte {i} still verified"
                );
            }
        }
    }

    #[test]
    fn expired_document_is_rejected() {
        let (doc, trusted) = signed(2);
        let expired: Result<()> = Err(PeerMisbehaved::Expired.into());
        assert_eq!(doc.verify(&trusted, 2, doc.valid_until + 1), expired);
        assert_eq!(doc.verify(&trusted, 2, doc.valid_after - 1), expired);
        doc.verify(&trusted, 2, doc.valid_until).unwrap();
    }

    #[test]
    fn expired_descriptor_is_rejected() {
        let d = descriptor(7, mix(), 1);
        assert_eq!(
            d.verify(d.expires_at + 1),
            Err(PeerMisbehaved::Expired.into())
        );
        assert_eq!(
            d.verify(d.published_at - 1),
            Err(PeerMisbehaved::Expired.into())
        );

        let mut f = fields(mix(), 1);
        f.expires_at = NOW + 5;
        let (keys, trusted) = authorities();
        let mut doc = network();
        doc.relays.push(RelayDescriptor::sign(f, &key(20)).unwrap());
        doc.sign(&keys[0]).unwrap();
        doc.verify(&trusted, 1, NOW).unwrap();
        assert_eq!(
            doc.verify(&trusted, 1, NOW + 6),
            Err(PeerMisbehaved::Expired.into())
        );
    }

    #[test]
    fn document_carrying_a_forged_descriptor_is_rejected() {
        let (keys, trusted) = authorities();
        let mut doc = network();
        doc.relays[2].address = "evil.example.org:4430".into();
        doc.sign(&keys[0]).unwrap();
        assert_eq!(
            doc.verify(&trusted, 1, NOW),
            Err(PeerMisbehaved::BadSignature.into())
        );
    }

    #[test]
    fn duplicate_relay_is_rejected() {
        let (keys, trusted) = authorities();
        let mut doc = network();
        let again = doc.relays[1].clone();
        doc.relays.push(again);
        doc.sign(&keys[0]).unwrap();
        assert_eq!(
            doc.verify(&trusted, 1, NOW),
            Err(PeerMisbehaved::DuplicateRelay.into())
        );
    }

    #[test]
    fn zero_threshold_is_api_misuse() {
        let (doc, trusted) = signed(1);
        assert!(matches!(
            doc.verify(&trusted, 0, NOW),
            Err(Error::ApiMisuse(_))
        ));
    }

    #[test]
    fn bad_descriptor_fields_are_refused() {
        let k = key(1);
        assert!(RelayDescriptor::sign(fields(mix(), 0), &k).is_err());
        assert!(RelayDescriptor::sign(fields(mix(), 4), &k).is_err());
        assert!(
            RelayDescriptor::sign(
                fields(
                    Roles {
                        entry: true,
                        ..Roles::default()
                    },
                    1
                ),
                &k
            )
            .is_err()
        );
        for address in ["", "no-port", "host:0", ":80", "host:99999", "a b:1"] {
            let mut f = fields(mix(), 1);
            f.address = address.into();
            assert!(RelayDescriptor::sign(f, &k).is_err(), "{address}");
        }
        let mut f = fields(mix(), 1);
        f.sphinx_keys.reverse();
        assert!(RelayDescriptor::sign(f, &k).is_err());
        let mut f = fields(mix(), 1);
        f.sphinx_keys.clear();
        assert!(RelayDescriptor::sign(f, &k).is_err());
    }

    #[test]
    fn unknown_role_bits_are_rejected() {
        assert!(Roles::from_bits(0b1000).is_err());
        let all = Roles {
            entry: true,
            mix: true,
            mailbox: true,
        };
        assert_eq!(Roles::from_bits(all.to_bits()).unwrap(), all);
    }

    #[test]
    fn network_params_are_validated() {
        NetworkParams::default().validate().unwrap();
        let bad = [
            NetworkParams {
                mu: 0.0,
                ..NetworkParams::default()
            },
            NetworkParams {
                lambda_p: -1.0,
                ..NetworkParams::default()
            },
            NetworkParams {
                lambda_d: f64::NAN,
                ..NetworkParams::default()
            },
            NetworkParams {
                lambda_m: f64::INFINITY,
                ..NetworkParams::default()
            },
            NetworkParams {
                packet_size: 1024,
                ..NetworkParams::default()
            },
            NetworkParams {
                epoch_length_secs: 0,
                ..NetworkParams::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn lookups_find_relays_by_role() {
        let doc = network();
        assert_eq!(doc.entries().count(), 1);
        assert_eq!(doc.mailboxes().count(), 1);
        for layer in 1..=3 {
            assert_eq!(doc.mixes_in_layer(layer).count(), 1);
        }
        assert_eq!(doc.mixes_in_layer(0).count(), 0);
        let id = doc.relays[3].id;
        assert_eq!(doc.relay(&id).map(|r| r.layer), Some(3));
        assert!(doc.relay(&RelayId([0; 32])).is_none());
        assert_eq!(doc.epoch_at(7200), 2);
        assert_eq!(doc.epoch_at(7199), 1);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_parsers(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Directory::from_bytes(&data);
            let _ = RelayDescriptor::from_bytes(&data);
        }

        #[test]
        fn mutated_documents_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
            let (doc, _) = signed(1);
            let mut bytes = doc.to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = val;
            let _ = Directory::from_bytes(&bytes);
        }

        #[test]
        fn truncated_or_extended_documents_are_rejected(cut in 1usize..64, extra in proptest::collection::vec(any::<u8>(), 1..8)) {
            let (doc, _) = signed(1);
            let bytes = doc.to_bytes();
            let cut = cut.min(bytes.len());
            prop_assert!(Directory::from_bytes(&bytes[..bytes.len() - cut]).is_err());
            let mut longer = bytes.clone();
            longer.extend(&extra);
            prop_assert!(Directory::from_bytes(&longer).is_err());

            let d = doc.relays[0].to_bytes();
            let cut = cut.min(d.len());
            prop_assert!(RelayDescriptor::from_bytes(&d[..d.len() - cut]).is_err());
            let mut longer = d.clone();
            longer.extend(&extra);
            prop_assert!(RelayDescriptor::from_bytes(&longer).is_err());
        }

        #[test]
        fn descriptors_round_trip(
            layer in 1u8..=3,
            link_key in any::<[u8; 32]>(),
            epoch in 0u64..u64::MAX - 1,
            published_at in 0u64..1 << 40,
            lifetime in 0u64..1 << 20,
            port in 1u16..,
            host in "[a-z0-9.-]{1,60}",
        ) {
            let f = DescriptorFields {
                address: format!("{host}:{port}"),
                roles: Roles { entry: false, mix: true, mailbox: layer == 3 },
                layer,
                link_key,
                sphinx_keys: vec![SphinxKey { epoch, public: [1; 32] }, SphinxKey { epoch: epoch + 1, public: [2; 32] }],
                published_at,
                expires_at: published_at + lifetime,
            };
            let d = RelayDescriptor::sign(f, &key(5)).unwrap();
            let back = RelayDescriptor::from_bytes(&d.to_bytes()).unwrap();
            prop_assert!(back.verify(published_at).is_ok());
            prop_assert_eq!(back, d);
        }
    }
}
