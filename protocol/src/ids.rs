//! Names of things: relays, mailboxes, and the address a homeserver publishes so that others
//! can reach it through Spore.

use std::fmt;

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::capability::CapabilityId;
use crate::codec::{Reader, Writer};
use crate::error::{InvalidMessage, Result};

/// A relay is named by its ed25519 identity key. The same 32 bytes are the Sphinx node address,
/// so a relay learns the next hop's identity (never its network address) from a header and
/// looks the address up in the signed directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub [u8; 32]);

impl RelayId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Short form for operator-facing output (never for per-packet logs).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayId({})", self.short())
    }
}

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A mailbox is named by a hash of its owner's X25519 key. The mailbox relay only ever sees this
/// id in a Sphinx final hop, and serves a pull only to the link whose Noise static key hashes
/// to it — so owning the key is the only way to read the mailbox.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub [u8; 32]);

impl MailboxId {
    /// Cover packets that nobody will read end here; the mailbox relay discards them.
    pub const DROP: MailboxId = MailboxId([0xff; 32]);

    pub fn for_key(key: &PublicKey) -> Self {
        Self::for_key_bytes(key.as_bytes())
    }

    pub fn for_key_bytes(key: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"spore/mailbox-id/v1");
        h.update(key);
        let out = h.finalize();
        let mut id = [0u8; 32];
        id.copy_from_slice(&out);
        MailboxId(id)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MailboxId {
    // Mailbox ids are personal data: debug output shows a prefix only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxId({}…)", hex::encode(&self.0[..3]))
    }
}

/// The secret half of a mailbox: it authenticates pulls (as the Noise static key) and opens
/// sealed fragments.
#[derive(Clone)]
pub struct MailboxKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl MailboxKey {
    /// A new key from the caller's cryptographic `rng`.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub fn mailbox_id(&self) -> MailboxId {
        MailboxId::for_key(&self.public)
    }
}

impl fmt::Debug for MailboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxKey").finish_non_exhaustive()
    }
}

/// What a homeserver publishes so others can send to it: where its mailbox lives (one or two
/// relays, for availability) and the key fragments are sealed to; and, in the address it gives
/// one particular peer, that peer's capability (see [`crate::capability`]).
///
/// Encoding: version 1 is relays and key; version 2 adds the 32-byte capability. An address
/// without a capability is always written as version 1, so older readers still read it.
#[derive(Clone, PartialEq, Eq)]
pub struct SporeAddress {
    /// The capability this address's holder sends through, if the owner gave it one; `None`
    /// is the public "first contact" address, which the mailbox relay holds to a small quota.
    pub capability: Option<CapabilityId>,
    pub mailbox_relays: Vec<RelayId>,
    pub mailbox_key: [u8; 32],
}

impl SporeAddress {
    pub const MAX_MAILBOX_RELAYS: usize = 2;
    const VERSION: u8 = 1;
    const VERSION_WITH_CAPABILITY: u8 = 2;

    pub fn mailbox_id(&self) -> MailboxId {
        MailboxId::for_key_bytes(&self.mailbox_key)
    }

    /// Where a sender's packets for this address end: the capability's destination when the
    /// address carries one, else the raw mailbox id (first contact).
    pub fn final_destination(&self) -> MailboxId {
        let mailbox = self.mailbox_id();
        match &self.capability {
            Some(cap) => cap.destination(&mailbox),
            None => mailbox,
        }
    }

    /// The same address with `capability` (or none): what the owner hands one peer.
    pub fn with_capability(&self, capability: Option<CapabilityId>) -> Self {
        Self {
            capability,
            ..self.clone()
        }
    }

    pub fn mailbox_public_key(&self) -> PublicKey {
        PublicKey::from(self.mailbox_key)
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(match self.capability {
            None => Self::VERSION,
            Some(_) => Self::VERSION_WITH_CAPABILITY,
        });
        w.u8(u8::try_from(self.mailbox_relays.len()).unwrap_or(u8::MAX));
        for r in &self.mailbox_relays {
            w.bytes(&r.0);
        }
        w.bytes(&self.mailbox_key);
        if let Some(cap) = &self.capability {
            w.bytes(&cap.0);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let v = r.u8()?;
        if v != Self::VERSION && v != Self::VERSION_WITH_CAPABILITY {
            return Err(InvalidMessage::Unknown {
                what: "spore address version",
                value: v.into(),
            }
            .into());
        }
        let n = usize::from(r.u8()?);
        if n == 0 || n > Self::MAX_MAILBOX_RELAYS {
            return Err(InvalidMessage::BadValue("mailbox relay count").into());
        }
        let mut mailbox_relays = Vec::with_capacity(n);
        for _ in 0..n {
            mailbox_relays.push(RelayId(r.array()?));
        }
        let mailbox_key = r.array()?;
        let capability = match v {
            Self::VERSION_WITH_CAPABILITY => Some(CapabilityId(r.array()?)),
            _ => None,
        };
        Ok(Self {
            capability,
            mailbox_relays,
            mailbox_key,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let a = Self::decode(&mut r)?;
        r.finish()?;
        Ok(a)
    }

    /// Text form for config files and the CLI: `spore:` + hex.
    pub fn to_text(&self) -> String {
        format!("spore:{}", hex::encode(self.to_bytes()))
    }

    pub fn from_text(s: &str) -> Result<Self> {
        let hex_part = s
            .trim()
            .strip_prefix("spore:")
            .ok_or(InvalidMessage::BadValue("spore address prefix"))?;
        let bytes = hex::decode(hex_part).map_err(|_| InvalidMessage::BadValue("hex"))?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Debug for SporeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SporeAddress")
            .field("mailbox_relays", &self.mailbox_relays)
            .field("mailbox_id", &self.mailbox_id())
            .field("capability", &self.capability)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn address_text_round_trips() {
        let key = MailboxKey::generate(&mut rand::rng());
        let a = SporeAddress {
            capability: None,
            mailbox_relays: vec![RelayId([7; 32]), RelayId([9; 32])],
            mailbox_key: key.public().to_bytes(),
        };
        let back = SporeAddress::from_text(&a.to_text()).unwrap();
        assert_eq!(a, back);
        assert_eq!(back.mailbox_id(), key.mailbox_id());
    }

    #[test]
    fn an_address_with_a_capability_round_trips_and_one_without_stays_version_1() {
        let key = MailboxKey::generate(&mut rand::rng());
        let plain = SporeAddress {
            capability: None,
            mailbox_relays: vec![RelayId([7; 32])],
            mailbox_key: key.public().to_bytes(),
        };
        assert_eq!(plain.to_bytes()[0], 1, "readers of version 1 still read it");
        assert_eq!(plain.final_destination(), key.mailbox_id());
        let cap = CapabilityId::derive(&key, "bob", 3);
        let with = plain.with_capability(Some(cap));
        assert_eq!(with.to_bytes()[0], 2);
        assert_eq!(with.to_bytes().len(), plain.to_bytes().len() + 32);
        let back = SporeAddress::from_text(&with.to_text()).unwrap();
        assert_eq!(back, with);
        assert_eq!(back.mailbox_id(), key.mailbox_id());
        assert_eq!(back.final_destination(), cap.destination(&key.mailbox_id()));
        assert_ne!(back.final_destination(), key.mailbox_id());
    }

    #[test]
    fn a_version_1_address_from_before_capabilities_decodes() {
        // Bytes as the version-1 encoder wrote them: version, count, relay, key.
        let mut bytes = vec![1u8, 1];
        bytes.extend([7u8; 32]);
        bytes.extend([9u8; 32]);
        let a = SporeAddress::from_bytes(&bytes).unwrap();
        assert_eq!(a.capability, None);
        assert_eq!(a.mailbox_key, [9; 32]);
    }

    proptest! {
        #[test]
        fn extended_address_with_capability_is_rejected(extra in 1usize..8, cap in any::<[u8; 32]>()) {
            let a = SporeAddress {
                capability: Some(CapabilityId(cap)),
                mailbox_relays: vec![RelayId([1; 32]), RelayId([3; 32])],
                mailbox_key: [2; 32],
            };
            let mut b = a.to_bytes();
            prop_assert_eq!(SporeAddress::from_bytes(&b).unwrap(), a);
            let full = b.len();
            b.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(SporeAddress::from_bytes(&b).is_err());
            prop_assert!(SporeAddress::from_bytes(&b[..full - 1]).is_err());
            // The same bytes read as version 1 leave the capability over: rejected.
            let mut v1 = b[..full].to_vec();
            v1[0] = 1;
            prop_assert!(SporeAddress::from_bytes(&v1).is_err());
        }

        #[test]
        fn address_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = SporeAddress::from_bytes(&data);
        }

        #[test]
        fn extended_address_is_rejected(extra in 1usize..8) {
            let a = SporeAddress { capability: None, mailbox_relays: vec![RelayId([1; 32])], mailbox_key: [2; 32] };
            let mut b = a.to_bytes();
            let full = b.len();
            b.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(SporeAddress::from_bytes(&b).is_err());
            prop_assert!(SporeAddress::from_bytes(&b[..full - 1]).is_err());
        }
    }
}
