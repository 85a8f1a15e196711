//! Names of things: relays, mailboxes, and the address a homeserver publishes so that others
//! can reach it through Spore.

use std::fmt;

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

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
/// relays, for availability) and the key fragments are sealed to.
#[derive(Clone, PartialEq, Eq)]
pub struct SporeAddress {
    pub mailbox_relays: Vec<RelayId>,
    pub mailbox_key: [u8; 32],
}

impl SporeAddress {
    pub const MAX_MAILBOX_RELAYS: usize = 2;
    const VERSION: u8 = 1;

    pub fn mailbox_id(&self) -> MailboxId {
        MailboxId::for_key_bytes(&self.mailbox_key)
    }

    pub fn mailbox_public_key(&self) -> PublicKey {
        PublicKey::from(self.mailbox_key)
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(Self::VERSION);
        w.u8(u8::try_from(self.mailbox_relays.len()).unwrap_or(u8::MAX));
        for r in &self.mailbox_relays {
            w.bytes(&r.0);
        }
        w.bytes(&self.mailbox_key);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let v = r.u8()?;
        if v != Self::VERSION {
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
        Ok(Self {
            mailbox_relays,
            mailbox_key: r.array()?,
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
            mailbox_relays: vec![RelayId([7; 32]), RelayId([9; 32])],
            mailbox_key: key.public().to_bytes(),
        };
        let back = SporeAddress::from_text(&a.to_text()).unwrap();
        assert_eq!(a, back);
        assert_eq!(back.mailbox_id(), key.mailbox_id());
    }

    proptest! {
        #[test]
        fn address_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = SporeAddress::from_bytes(&data);
        }

        #[test]
        fn extended_address_is_rejected(extra in 1usize..8) {
            let a = SporeAddress { mailbox_relays: vec![RelayId([1; 32])], mailbox_key: [2; 32] };
            let mut b = a.to_bytes();
            let full = b.len();
            b.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(SporeAddress::from_bytes(&b).is_err());
            prop_assert!(SporeAddress::from_bytes(&b[..full - 1]).is_err());
        }
    }
}
