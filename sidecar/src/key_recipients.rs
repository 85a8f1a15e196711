//! Which peers already hold our homeserver's key response and our Spore address, so that
//! they travel once per peer.
//!
//! A bundle can carry the origin's self-signed `/_matrix/key/v2/server` response
//! ([`spore_protocol::Bundle::server_keys`]) so that the recipient verifies our X-Matrix
//! signatures while we are offline. It is several hundred bytes of signatures and keys that do
//! not compress, and a fragment carries under 500 bytes: sent with every bundle it is what
//! makes a small transaction two or more packets instead of one. The recipient's sidecar keeps
//! what it got on disk ([`crate::ServerKeyCache`]), so once it has our current response, later
//! bundles need not carry it.
//!
//! [`KeyRecipients`] records, per peer (its Spore mailbox key, so a peer that starts afresh
//! under a new key is a new peer), the SHA-256 of the response it holds, and since when. A
//! bundle carries the response unless that peer's record is of the same response and younger
//! than the resend interval. The record is written only once the recipient's mailbox relay
//! acknowledged every fragment of a bundle that carried it ([`TransportEvent::Delivered`]), and
//! then durably: after that, the bundle is in the recipient's mailbox and its sidecar will
//! store the keys before it delivers anything sent later (it hands each origin's transactions
//! over in send order). Until the acknowledgement every bundle carries the keys. Whatever goes
//! wrong here errs towards sending the keys again: a lost acknowledgement event, a record not
//! written, a full table.
//!
//! Our Spore address (with the capability we give that peer, [`spore_protocol::Bundle::sender`])
//! goes the same way, under the same record: about a hundred random bytes that cost some 130
//! compressed, which a peer needs only to learn where to answer us (it keeps what it learned
//! in its peer book, or has us in its configured table) and which capability to send
//! through. The recorded fingerprint covers both ([`held_digest`]), so a bundle carries both
//! until one that did was acknowledged, and both again when either changed (a renewed key
//! response, a new capability or mailbox relay). Request/response calls always carry the
//! address (see `spore_client::Transport::request`): a large answer is sent to it, also by a
//! peer that lost what it held.
//!
//! Three things get keys to a peer that lost them anyway (a wiped or restored data dir, a
//! bundle that expired in its mailbox): the response changes whenever our homeserver renews
//! its key validity, and a changed response is sent again; the record ages out after the
//! resend interval (a day by default), and the response rides along again; and while we are
//! online, the peer's homeserver asking for our keys goes to us through Spore as an ordinary
//! request (see [`crate::OutboundProxy`]).
//!
//! [`TransportEvent::Delivered`]: spore_client::TransportEvent::Delivered

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use spore_protocol::{MessageId, SporeAddress};

use crate::private_file;

/// File in the data dir that holds the records.
pub const KEY_RECIPIENTS_FILE: &str = "key_recipients.json";
/// By default a peer gets our key response again after this long even if it has not changed.
pub const DEFAULT_KEYS_RESEND_SECS: u64 = 24 * 3600;
/// Peers recorded at most; beyond, the oldest record is forgotten (that peer gets the keys
/// again, which costs a packet or two, never correctness).
const MAX_PEERS: usize = 100_000;
/// Key-carrying messages awaiting their acknowledgement at most; beyond, new ones are not
/// tracked (their peers get the keys again next time).
const MAX_IN_FLIGHT: usize = 10_000;

/// A key response's fingerprint: which version of it a peer holds.
pub type KeysDigest = [u8; 32];

/// The fingerprint of the key response `json`.
pub fn keys_digest(json: &[u8]) -> KeysDigest {
    Sha256::digest(json).into()
}

/// The fingerprint of what a peer holds of us: our key response (`None` while we have none)
/// and our address as we give it to that peer. Records written before the address was part
/// of it (a digest of the keys alone) match nothing: those peers get both once more.
pub fn held_digest(server_keys: Option<&[u8]>, address: &SporeAddress) -> KeysDigest {
    let mut h = Sha256::new();
    h.update(b"spore/held-by-peer/v1\0");
    match server_keys {
        Some(keys) => {
            h.update([1]);
            h.update(u64::try_from(keys.len()).unwrap_or(u64::MAX).to_be_bytes());
            h.update(keys);
        }
        None => h.update([0]),
    }
    h.update(address.to_bytes());
    h.finalize().into()
}

/// What a peer holds: which response, acknowledged when (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    digest: KeysDigest,
    since_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Peer mailbox key -> the response its mailbox relay acknowledged.
    held: HashMap<[u8; 32], Held>,
    /// Messages that carry the response, not yet acknowledged: message -> (peer, digest).
    in_flight: HashMap<MessageId, ([u8; 32], KeysDigest)>,
}

/// Per peer, which version of our key response it has been sent and acknowledged (see the
/// module documentation). Shared by the outbound carrier (asks, records sends) and the task
/// that watches the transport's delivery events.
#[derive(Debug)]
pub struct KeyRecipients {
    path: Option<PathBuf>,
    resend_after_ms: u64,
    state: Mutex<State>,
}

impl KeyRecipients {
    /// Records kept in `path` (loaded now; an unreadable file means no peer holds our keys,
    /// so they are all sent again).
    pub fn open(path: impl Into<PathBuf>, resend_after: Duration) -> KeyRecipients {
        let path = path.into();
        let mut state = State::default();
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        {
            for (peer, record) in map {
                let peer = hex::decode(&peer).ok().and_then(|b| b.try_into().ok());
                let digest = record
                    .get("sha256")
                    .and_then(Value::as_str)
                    .and_then(|d| hex::decode(d).ok()?.try_into().ok());
                let since_ms = record.get("since_ms").and_then(Value::as_u64);
                if let (Some(peer), Some(digest), Some(since_ms)) = (peer, digest, since_ms)
                    && state.held.len() < MAX_PEERS
                {
                    state.held.insert(peer, Held { digest, since_ms });
                }
            }
        }
        KeyRecipients {
            path: Some(path),
            resend_after_ms: millis(resend_after),
            state: Mutex::new(state),
        }
    }

    /// Records in memory only (a restart sends the keys to every peer again).
    pub fn in_memory(resend_after: Duration) -> KeyRecipients {
        KeyRecipients {
            path: None,
            resend_after_ms: millis(resend_after),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a bundle to `peer` must carry the response with fingerprint `digest` at
    /// `now_ms`: unless the peer's mailbox relay acknowledged that very response less than
    /// the resend interval ago.
    pub fn must_carry(&self, peer: &[u8; 32], digest: &KeysDigest, now_ms: u64) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        !state.held.get(peer).is_some_and(|held| {
            held.digest == *digest && now_ms.saturating_sub(held.since_ms) < self.resend_after_ms
        })
    }

    /// Notes that message `id` to `peer` carries the response `digest`: once it is
    /// acknowledged ([`KeyRecipients::delivered`]), the peer holds it.
    pub fn sent(&self, id: MessageId, peer: [u8; 32], digest: KeysDigest) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.in_flight.len() < MAX_IN_FLIGHT {
            state.in_flight.insert(id, (peer, digest));
        }
    }

    /// Message `id` is stored whole at its recipient's mailbox relay: if it carried our keys,
    /// its peer holds them from now on, durably. Returns whether a record was written.
    pub fn delivered(&self, id: &MessageId, now_ms: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some((peer, digest)) = state.in_flight.remove(id) else {
            return false;
        };
        if state.held.len() >= MAX_PEERS
            && !state.held.contains_key(&peer)
            && let Some(oldest) = state
                .held
                .iter()
                .min_by_key(|(_, h)| h.since_ms)
                .map(|(p, _)| *p)
        {
            state.held.remove(&oldest);
        }
        state.held.insert(
            peer,
            Held {
                digest,
                since_ms: now_ms,
            },
        );
        self.persist(&state);
        true
    }

    /// Message `id` was given up on: whatever it carried, its peer did not get it from it.
    pub fn failed(&self, id: &MessageId) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight.remove(id);
    }

    fn persist(&self, state: &State) {
        let Some(path) = &self.path else { return };
        let map: serde_json::Map<String, Value> = state
            .held
            .iter()
            .map(|(peer, held)| {
                (
                    hex::encode(peer),
                    serde_json::json!({"sha256": hex::encode(held.digest), "since_ms": held.since_ms}),
                )
            })
            .collect();
        let bytes = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
        if let Err(e) = private_file::replace(path, &bytes) {
            // Not fatal: without the record the peer only gets the keys again.
            tracing::warn!(error = %e, "could not save which peers hold our server keys");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn keys_travel_until_acknowledged_then_only_when_changed_or_stale() {
        let r = KeyRecipients::in_memory(DAY);
        let (peer, other) = ([1; 32], [2; 32]);
        let v1 = keys_digest(b"{\"v\":1}");
        let v2 = keys_digest(b"{\"v\":2}");
        assert!(r.must_carry(&peer, &v1, 1000), "first contact");
        r.sent([9; 16], peer, v1);
        assert!(r.must_carry(&peer, &v1, 1001), "in flight is not held");
        r.failed(&[9; 16]);
        assert!(
            !r.delivered(&[9; 16], 1002),
            "a failed message records nothing"
        );
        assert!(r.must_carry(&peer, &v1, 1003));
        r.sent([10; 16], peer, v1);
        assert!(r.delivered(&[10; 16], 2000));
        assert!(
            !r.must_carry(&peer, &v1, 2001),
            "acknowledged: no more keys"
        );
        assert!(r.must_carry(&peer, &v2, 2001), "changed keys travel again");
        assert!(r.must_carry(&other, &v1, 2001), "per peer");
        let day_ms = 24 * 3600 * 1000;
        assert!(!r.must_carry(&peer, &v1, 2000 + day_ms - 1));
        assert!(r.must_carry(&peer, &v1, 2000 + day_ms), "stale: resent");
        assert!(
            !r.delivered(&[11; 16], 3000),
            "unknown messages are ignored"
        );
    }

    #[test]
    fn the_record_covers_keys_and_address_so_a_change_in_either_resends_both() {
        let address = SporeAddress {
            capability: None,
            mailbox_relays: vec![spore_protocol::RelayId([1; 32])],
            mailbox_key: [2; 32],
        };
        let with_capability = address.with_capability(Some(spore_protocol::CapabilityId([3; 32])));
        let held = held_digest(Some(b"keys"), &address);
        assert_eq!(held, held_digest(Some(b"keys"), &address));
        assert_ne!(held, held_digest(Some(b"keyz"), &address), "new keys");
        assert_ne!(
            held,
            held_digest(Some(b"keys"), &with_capability),
            "new capability"
        );
        assert_ne!(held, held_digest(None, &address), "no keys yet");
        assert_ne!(
            held,
            keys_digest(b"keys"),
            "records from before the address"
        );
        let r = KeyRecipients::in_memory(DAY);
        r.sent([1; 16], [7; 32], held);
        assert!(r.delivered(&[1; 16], 1000));
        assert!(!r.must_carry(&[7; 32], &held, 1001));
        assert!(r.must_carry(
            &[7; 32],
            &held_digest(Some(b"keys"), &with_capability),
            1001
        ));
    }

    #[test]
    fn records_survive_a_restart_and_a_bad_file_means_resend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_RECIPIENTS_FILE);
        let v1 = keys_digest(b"keys");
        {
            let r = KeyRecipients::open(&path, DAY);
            r.sent([1; 16], [7; 32], v1);
            assert!(r.delivered(&[1; 16], 5000));
        }
        let r = KeyRecipients::open(&path, DAY);
        assert!(!r.must_carry(&[7; 32], &v1, 6000));
        std::fs::write(&path, b"not json").unwrap();
        let r = KeyRecipients::open(&path, DAY);
        assert!(r.must_carry(&[7; 32], &v1, 6000));
    }
}
