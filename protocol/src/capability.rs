//! Per-contact capabilities: how a mailbox owner gives each peer its own way in, so that one
//! peer (or a stranger who learned the address) can fill only its own share of the mailbox.
//!
//! The owner derives one [`CapabilityId`] per peer from its mailbox secret, the peer's label
//! and a generation number, and hands it out inside its [`SporeAddress`](crate::SporeAddress).
//! A sender puts [`CapabilityId::destination`] of the owner's mailbox id (never the raw id) in
//! the Sphinx final hop. The owner registers the capability with its mailbox relay over its
//! authenticated link ([`CapabilityOp`], carried in the pull requests it sends on schedule);
//! the relay computes the destination itself from the link's mailbox and the capability, so a
//! registration can only ever name a destination of the registering mailbox: a peer that
//! learned a capability cannot register it for its own mailbox and redirect the owner's mail.
//!
//! Revoking a peer is bumping its generation: the old capability is revoked at the relay (its
//! destination refused from then on), a new one is derived, and the owner's address (relays
//! and key) stays what it was for everyone else.

use std::fmt;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer};
use crate::error::{InvalidMessage, Result};
use crate::ids::{MailboxId, MailboxKey};

/// Most capability operations one pull request carries; more take more pulls. 16 × 45 bytes
/// fit a frame with room to spare, and a client cycles through its table anyway.
pub const MAX_CAPABILITY_OPS: usize = 16;

/// One encoded [`CapabilityOp`]: kind, capability, item quota, byte quota.
pub const CAPABILITY_OP_LEN: usize = 1 + 32 + 4 + 8;

const DERIVE_SALT: &[u8] = b"spore/capability/v1";
const DESTINATION_PREFIX: &[u8] = b"spore/capability-destination/v1";

/// What a peer holds to reach an owner's mailbox through its own quota: 32 bytes the owner
/// derived for that peer. Not a secret from the peer, but unguessable by anyone else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapabilityId(pub [u8; 32]);

impl CapabilityId {
    /// The capability `owner` gives the peer it calls `peer_label`, in `generation` (bumped by
    /// each revocation). Deterministic: the owner can re-derive every capability from its
    /// secret, the labels and the generations alone.
    pub fn derive(owner: &MailboxKey, peer_label: &str, generation: u32) -> Self {
        let secret = zeroize::Zeroizing::new(owner.secret_bytes());
        let mut info = Vec::with_capacity(4 + peer_label.len());
        info.extend_from_slice(&generation.to_be_bytes());
        info.extend_from_slice(peer_label.as_bytes());
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF's output limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(DERIVE_SALT), &secret[..]).expand(&info, &mut out);
        CapabilityId(out)
    }

    /// The Sphinx final-hop destination of this capability for `mailbox`. Both the sender and
    /// the mailbox relay compute it; it never equals a raw mailbox id (domain separation), and
    /// the same capability gives different destinations for different mailboxes.
    pub fn destination(&self, mailbox: &MailboxId) -> MailboxId {
        let mut h = Sha256::new();
        h.update(DESTINATION_PREFIX);
        h.update(mailbox.as_bytes());
        h.update(self.0);
        MailboxId(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for CapabilityId {
    // Capabilities let their holder in: debug output shows a prefix only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapabilityId({}…)", hex::encode(&self.0[..3]))
    }
}

/// What an owner tells its mailbox relay about one capability of its own mailbox (the link's).
/// Both are idempotent, so a client can repeat its whole table after every reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapabilityOp {
    /// Accept packets for this capability's destination into the link owner's mailbox, at most
    /// `quota_items` items and `quota_bytes` bytes of them stored at a time.
    Register {
        capability: CapabilityId,
        quota_items: u32,
        quota_bytes: u64,
    },
    /// Refuse this capability's destination from now on (items already stored stay).
    Revoke { capability: CapabilityId },
}

mod op_kind {
    pub const REGISTER: u8 = 1;
    pub const REVOKE: u8 = 2;
}

impl CapabilityOp {
    pub fn capability(&self) -> &CapabilityId {
        match self {
            CapabilityOp::Register { capability, .. } | CapabilityOp::Revoke { capability } => {
                capability
            }
        }
    }

    /// Exactly [`CAPABILITY_OP_LEN`] bytes; a revocation's quota fields are zero.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            CapabilityOp::Register {
                capability,
                quota_items,
                quota_bytes,
            } => {
                w.u8(op_kind::REGISTER)
                    .bytes(&capability.0)
                    .u32(*quota_items)
                    .u64(*quota_bytes);
            }
            CapabilityOp::Revoke { capability } => {
                w.u8(op_kind::REVOKE).bytes(&capability.0).u32(0).u64(0);
            }
        }
    }

    /// Reads one op; rejects an unknown kind and a revocation with non-zero quota fields (one
    /// encoding per op).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let kind = r.u8()?;
        let capability = CapabilityId(r.array()?);
        let quota_items = r.u32()?;
        let quota_bytes = r.u64()?;
        match kind {
            op_kind::REGISTER => Ok(CapabilityOp::Register {
                capability,
                quota_items,
                quota_bytes,
            }),
            op_kind::REVOKE if quota_items == 0 && quota_bytes == 0 => {
                Ok(CapabilityOp::Revoke { capability })
            }
            op_kind::REVOKE => Err(InvalidMessage::BadValue("revocation quota").into()),
            other => Err(InvalidMessage::Unknown {
                what: "capability op",
                value: other.into(),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> MailboxKey {
        MailboxKey::from_secret_bytes([b; 32])
    }

    #[test]
    fn capabilities_differ_by_owner_peer_and_generation() {
        let a = CapabilityId::derive(&key(1), "bob", 0);
        assert_eq!(a, CapabilityId::derive(&key(1), "bob", 0), "deterministic");
        assert_ne!(a, CapabilityId::derive(&key(1), "bob", 1));
        assert_ne!(a, CapabilityId::derive(&key(1), "carol", 0));
        assert_ne!(a, CapabilityId::derive(&key(2), "bob", 0));
        // No ambiguity between generation bytes and label bytes.
        assert_ne!(
            CapabilityId::derive(&key(1), "\u{1}x", 0),
            CapabilityId::derive(&key(1), "x", 1)
        );
    }

    #[test]
    fn a_destination_is_bound_to_its_mailbox() {
        let cap = CapabilityId([5; 32]);
        let m1 = key(1).mailbox_id();
        let m2 = key(2).mailbox_id();
        assert_ne!(cap.destination(&m1), cap.destination(&m2));
        assert_ne!(cap.destination(&m1), m1);
    }

    #[test]
    fn ops_round_trip_at_their_fixed_length() {
        for op in [
            CapabilityOp::Register {
                capability: CapabilityId([3; 32]),
                quota_items: 7,
                quota_bytes: u64::MAX,
            },
            CapabilityOp::Revoke {
                capability: CapabilityId([4; 32]),
            },
        ] {
            let mut w = Writer::new();
            op.encode(&mut w);
            let bytes = w.into_vec();
            assert_eq!(bytes.len(), CAPABILITY_OP_LEN);
            let mut r = Reader::new(&bytes);
            assert_eq!(CapabilityOp::decode(&mut r).unwrap(), op);
            r.finish().unwrap();
        }
    }

    proptest! {
        #[test]
        fn op_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..60)) {
            let _ = CapabilityOp::decode(&mut Reader::new(&data));
        }

        #[test]
        fn a_revocation_with_a_quota_is_rejected(items in 1u32.., bytes in any::<u64>()) {
            let mut w = Writer::new();
            w.u8(op_kind::REVOKE).bytes(&[9; 32]).u32(items).u64(bytes);
            prop_assert!(CapabilityOp::decode(&mut Reader::new(&w.into_vec())).is_err());
        }
    }
}
