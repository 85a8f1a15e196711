//! What the durable inbox holds for one inbound request: the bundle, and the mailbox key that
//! sealed it (the only authenticated thing about who sent it; the bundle's `origin` is the
//! sender's claim).
//!
//! ```text
//! entry = TAG (1) || sender mailbox public key (32) || encoded bundle
//! ```
//!
//! The tag keeps entries from before sealing authenticated senders (a bare bundle, whose
//! first byte is the bundle version) from being read as if they had a sender.

use spore_protocol::bundle::Bundle;

use crate::error::{ClientError, Result};

/// First byte of an inbox entry with an authenticated sender (no bundle version uses it).
const TAG: u8 = 0xa5;
/// Length of the sender's X25519 mailbox public key.
const KEY_SIZE: usize = 32;

/// Encodes an inbox entry for `bundle`, sealed by `sender_key`.
pub(crate) fn encode(sender_key: &[u8; KEY_SIZE], bundle: &Bundle) -> Vec<u8> {
    let bundle = bundle.encode();
    let mut entry = Vec::with_capacity(1 + KEY_SIZE + bundle.len());
    entry.push(TAG);
    entry.extend_from_slice(sender_key);
    entry.extend_from_slice(&bundle);
    entry
}

/// Whether the Spore address a bundle names as its sender (where answers go) has the
/// mailbox key that sealed it: a peer may not name someone else's address as its own.
pub(crate) fn sender_matches(sender_key: &[u8; KEY_SIZE], bundle: &Bundle) -> bool {
    bundle
        .sender
        .as_ref()
        .is_none_or(|address| address.mailbox_key == *sender_key)
}

/// The sender key and bundle of an inbox entry written by [`encode`].
pub(crate) fn decode(entry: &[u8]) -> Result<([u8; KEY_SIZE], Bundle)> {
    let rest = match entry.split_first() {
        Some((&TAG, rest)) => rest,
        _ => {
            return Err(ClientError::Corrupt(
                "inbox entry without an authenticated sender (stored before seal v2)",
            ));
        }
    };
    let (sender, bundle) = rest
        .split_first_chunk::<KEY_SIZE>()
        .ok_or(ClientError::Corrupt("inbox entry"))?;
    let bundle = Bundle::decode(bundle).map_err(|_| ClientError::Corrupt("inbox bundle"))?;
    Ok((*sender, bundle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use spore_protocol::bundle::BundleBody;

    use super::*;

    #[test]
    fn an_entry_round_trips_and_a_bare_bundle_has_no_sender() {
        let bundle = Bundle {
            origin: "a.example".into(),
            sender: None,
            server_keys: None,
            body: BundleBody::Loop { nonce: [1; 16] },
        };
        let entry = encode(&[9; 32], &bundle);
        assert_eq!(decode(&entry).unwrap(), ([9; 32], bundle.clone()));
        assert!(matches!(
            decode(&bundle.encode()),
            Err(ClientError::Corrupt(_))
        ));
        assert!(matches!(decode(&entry[..20]), Err(ClientError::Corrupt(_))));
    }

    #[test]
    fn a_bundle_may_name_only_its_sealers_address_as_its_sender() {
        let mut bundle = Bundle {
            origin: "a.example".into(),
            sender: None,
            server_keys: None,
            body: BundleBody::Loop { nonce: [1; 16] },
        };
        assert!(sender_matches(&[9; 32], &bundle), "no address named");
        bundle.sender = Some(spore_protocol::SporeAddress {
            capability: None,
            mailbox_relays: vec![spore_protocol::RelayId([1; 32])],
            mailbox_key: [9; 32],
        });
        assert!(sender_matches(&[9; 32], &bundle));
        assert!(!sender_matches(&[8; 32], &bundle));
    }
}
