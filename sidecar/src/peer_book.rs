//! [`PeerBook`]: where each peer server can be reached through Spore, so that only the first
//! contact of a brand-new pair needs configuration.
//!
//! A server name's Spore address comes from one of two places:
//! * the operator's `[peers]` table ([`PeerSource::Configured`]), which is how the side that
//!   starts a conversation finds the other (its operator copied the address the peer's
//!   operator published: `spore-sidecar address`, or `org.spore.address` in the peer's
//!   `/.well-known/matrix/server`, see docs/synapse.md "Peers without a table");
//! * an authenticated bundle ([`PeerSource::Learned`]): every bundle names its sender's address
//!   ([`spore_protocol::Bundle::sender`]), and the seal proves the sender holds that address's
//!   mailbox key. Once the inbox has bound the bundle's server name to that key and verified
//!   the name's server keys, [`PeerBook::update_from_bundle`] records the address, so the
//!   receiver can answer and later send to the initiator with no configuration at all.
//!
//! Pinning follows the sender-key pins of [`crate::ServerKeyCache`]: the first address learned
//! for a name pins its mailbox key, and a later address for that name is taken only from a
//! bundle sealed by the pinned key (a new mailbox relay, a new capability). A bundle sealed by
//! any other key cannot move the name: refused, counted ([`PeerBook::refused`]) and logged once
//! per (name, key). The `[peers]` table wins over a pin, as it does for the sender binding.
//!
//! The book lives in `data_dir/peers.json` (0600, fsynced, replaced whole; see
//! [`crate::private_file`]), so learned peers survive a restart.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use spore_client::Resolver;
use spore_protocol::SporeAddress;

/// The member of a server's `/.well-known/matrix/server` that publishes its Spore address
/// (beside `m.server`), where a peer's operator looks it up.
pub const WELL_KNOWN_ADDRESS_KEY: &str = "org.spore.address";

/// The file in the data dir that holds the peer book.
pub const PEER_BOOK_FILE: &str = "peers.json";

/// Peer names at most: a flood of first contacts stops being learned, never grows memory.
const MAX_PEERS: usize = 100_000;
/// (name, key) pairs logged for a refused address change at most.
const MAX_LOGGED: usize = 10_000;

/// Where a peer's address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerSource {
    /// The operator's `[peers]` table (possibly since updated by the peer's own bundles).
    Configured,
    /// The peer's own authenticated bundle, at first contact.
    Learned,
}

impl PeerSource {
    fn as_str(self) -> &'static str {
        match self {
            PeerSource::Configured => "configured",
            PeerSource::Learned => "learned",
        }
    }
}

/// One peer: the address we send to and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: SporeAddress,
    pub source: PeerSource,
    /// What the `[peers]` table said when this entry was configured: a restart with the same
    /// table keeps updates the peer made since; a changed table wins.
    configured: Option<SporeAddress>,
}

/// What [`PeerBook::update_from_bundle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUpdate {
    /// A name we had no address for: pinned to this address's key now.
    Learned,
    /// A known name, same key, new address (relays or capability): replaced.
    Updated,
    /// Nothing new.
    Unchanged,
}

/// Why an address from a bundle was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerBookError {
    /// The address names another key than the one that sealed the bundle.
    #[error("the address of {0:?} is not the sealing sender's")]
    NotTheSender(String),
    /// The name is pinned to another mailbox key.
    #[error("{0:?} is pinned to another Spore key")]
    PinnedToAnotherKey(String),
    /// The book is full.
    #[error("the peer book is full")]
    Full,
}

/// Server name -> Spore address, persisted; shared by the outbound paths (as their
/// [`Resolver`]) and the inbox (which teaches it). Cloning is cheap.
#[derive(Debug, Clone)]
pub struct PeerBook {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    state: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    peers: HashMap<String, Peer>,
    logged: HashSet<(String, [u8; 32])>,
    refused: u64,
}

impl PeerBook {
    /// The book in `path` (loaded now; unreadable entries are dropped) with the `[peers]`
    /// table `configured` over it: a configured name takes the table's address, unless the
    /// table is unchanged since and the same key's bundles updated it; a name configured
    /// before but no longer in the table is forgotten (the operator took it out).
    pub fn open(path: impl Into<PathBuf>, configured: &[(String, SporeAddress)]) -> PeerBook {
        let path = path.into();
        let book = PeerBook {
            inner: Arc::new(Inner {
                state: Mutex::new(Self::load(&path)),
                path: Some(path),
            }),
        };
        book.configure(configured);
        book
    }

    /// What [`PeerBook::open`] would give, without ever writing `path` (for the command line
    /// while the sidecar runs and owns the file).
    pub fn read_only(path: &Path, configured: &[(String, SporeAddress)]) -> PeerBook {
        let book = PeerBook {
            inner: Arc::new(Inner {
                path: None,
                state: Mutex::new(Self::load(path)),
            }),
        };
        book.configure(configured);
        book
    }

    fn load(path: &Path) -> BookState {
        let mut state = BookState::default();
        if let Ok(bytes) = std::fs::read(path)
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        {
            for (name, entry) in map.into_iter().take(MAX_PEERS) {
                if let Some(peer) = peer_from_json(&entry) {
                    state.peers.insert(name.to_ascii_lowercase(), peer);
                }
            }
        }
        state
    }

    /// A book that lives in memory only, with `configured` in it.
    pub fn in_memory(configured: &[(String, SporeAddress)]) -> PeerBook {
        let book = PeerBook {
            inner: Arc::new(Inner {
                path: None,
                state: Mutex::new(BookState::default()),
            }),
        };
        book.configure(configured);
        book
    }

    fn configure(&self, configured: &[(String, SporeAddress)]) {
        let mut state = self.lock();
        let names: HashSet<String> = configured
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        state
            .peers
            .retain(|name, p| p.configured.is_none() || names.contains(name));
        for (name, address) in configured {
            let name = name.to_ascii_lowercase();
            let kept = state.peers.get(&name).is_some_and(|p| {
                p.configured.as_ref() == Some(address)
                    && p.address.mailbox_key == address.mailbox_key
            });
            if !kept {
                state.peers.insert(
                    name,
                    Peer {
                        address: address.clone(),
                        source: PeerSource::Configured,
                        configured: Some(address.clone()),
                    },
                );
            }
        }
        self.persist(&state);
    }

    /// The address to send to `server_name`, if known (names compare case-insensitively).
    pub fn get(&self, server_name: &str) -> Option<Peer> {
        self.lock()
            .peers
            .get(&server_name.to_ascii_lowercase())
            .cloned()
    }

    /// Every known peer, sorted by name (what `spore-sidecar peers` prints).
    pub fn list(&self) -> Vec<(String, Peer)> {
        let mut all: Vec<(String, Peer)> = self
            .lock()
            .peers
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records `address` for `server_name` from a bundle sealed by `sender_key`, whose origin
    /// the caller has authenticated (name bound to `sender_key`, server keys verified). The
    /// one way anything but the operator changes the book: first contact pins the name; a
    /// known name takes a new address (new relays, a new capability) only if it keeps the
    /// pinned key, which the seal proves its sender holds. Anything else is refused,
    /// counted and logged once per (name, key).
    pub fn update_from_bundle(
        &self,
        server_name: &str,
        sender_key: &[u8; 32],
        address: &SporeAddress,
    ) -> Result<PeerUpdate, PeerBookError> {
        let name = server_name.to_ascii_lowercase();
        if address.mailbox_key != *sender_key {
            return Err(PeerBookError::NotTheSender(name));
        }
        let mut state = self.lock();
        let pinned = state.peers.get(&name).map(|p| p.address.mailbox_key);
        let update = match pinned {
            Some(pinned) if pinned != *sender_key => {
                state.refused += 1;
                if state.logged.len() < MAX_LOGGED
                    && state.logged.insert((name.clone(), *sender_key))
                {
                    // The name is what the operator acts on; the key prefix is no mailbox id.
                    tracing::warn!(server = %name, sender = %hex::encode(&sender_key[..8]), "refused a Spore address for a peer pinned to another key (logged once per name and sender)");
                }
                return Err(PeerBookError::PinnedToAnotherKey(name));
            }
            Some(_) => match state.peers.get_mut(&name) {
                Some(peer) if peer.address != *address => {
                    peer.address = address.clone();
                    PeerUpdate::Updated
                }
                _ => PeerUpdate::Unchanged,
            },
            None if state.peers.len() >= MAX_PEERS => return Err(PeerBookError::Full),
            None => {
                state.peers.insert(
                    name.clone(),
                    Peer {
                        address: address.clone(),
                        source: PeerSource::Learned,
                        configured: None,
                    },
                );
                // Debug only: which servers talk to us is not for an info-level log.
                tracing::debug!(server = %name, "learned a peer's Spore address from its first authenticated bundle");
                PeerUpdate::Learned
            }
        };
        if update != PeerUpdate::Unchanged {
            self.persist(&state);
        }
        Ok(update)
    }

    /// Addresses refused since start because their name is pinned to another key.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BookState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, state: &BookState) {
        let Some(path) = &self.inner.path else { return };
        let map: serde_json::Map<String, Value> = state
            .peers
            .iter()
            .map(|(name, p)| (name.clone(), peer_to_json(p)))
            .collect();
        let written = serde_json::to_vec(&Value::Object(map))
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::private_file::replace(path, &bytes));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not persist the peer book");
        }
    }
}

impl Resolver for PeerBook {
    fn resolve(&self, server_name: &str) -> Option<SporeAddress> {
        self.get(server_name).map(|p| p.address)
    }
}

fn peer_to_json(p: &Peer) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("address".into(), Value::String(p.address.to_text()));
    obj.insert("source".into(), Value::String(p.source.as_str().into()));
    if let Some(c) = &p.configured {
        obj.insert("configured".into(), Value::String(c.to_text()));
    }
    Value::Object(obj)
}

fn peer_from_json(v: &Value) -> Option<Peer> {
    let address = SporeAddress::from_text(v.get("address")?.as_str()?).ok()?;
    let configured = match v.get("configured") {
        Some(c) => Some(SporeAddress::from_text(c.as_str()?).ok()?),
        None => None,
    };
    let source = match v.get("source")?.as_str()? {
        "configured" if configured.is_some() => PeerSource::Configured,
        "learned" => PeerSource::Learned,
        _ => return None,
    };
    Some(Peer {
        address,
        source,
        configured,
    })
}

/// What the operator is told when the homeserver sends to a name with no known address: the
/// config key to set, where the peer's address comes from, and that a first contact from the
/// peer would teach it too.
pub fn unknown_destination_help(server_name: &str) -> String {
    format!(
        "no Spore address known for {server_name}: add `\"{server_name}\" = \"spore:...\"` \
         under [peers] in the sidecar config and restart the sidecar (its operator prints the \
         address with `spore-sidecar address`, and may publish it as \"{WELL_KNOWN_ADDRESS_KEY}\" \
         in https://{server_name}/.well-known/matrix/server); it is also learned automatically \
         once {server_name} contacts this server through Spore"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_protocol::RelayId;

    fn address(relay: u8, key: u8) -> SporeAddress {
        SporeAddress {
            capability: None,
            mailbox_relays: vec![RelayId([relay; 32])],
            mailbox_key: [key; 32],
        }
    }

    fn configured(name: &str, a: &SporeAddress) -> Vec<(String, SporeAddress)> {
        vec![(name.to_owned(), a.clone())]
    }

    #[test]
    fn a_learned_peer_survives_a_restart_and_the_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEER_BOOK_FILE);
        let book = PeerBook::open(&path, &[]);
        assert!(book.resolve("hs-a.spore.test").is_none());
        let a = address(1, 10);
        assert_eq!(
            book.update_from_bundle("HS-A.spore.test", &[10; 32], &a),
            Ok(PeerUpdate::Learned)
        );
        assert_eq!(
            book.update_from_bundle("hs-a.spore.test", &[10; 32], &a),
            Ok(PeerUpdate::Unchanged)
        );
        drop(book);
        let reopened = PeerBook::open(&path, &[]);
        let peer = reopened.get("hs-a.spore.test").unwrap();
        assert_eq!(peer.address, a);
        assert_eq!(peer.source, PeerSource::Learned);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_pinned_key_may_move_its_address_and_another_key_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEER_BOOK_FILE);
        let book = PeerBook::open(&path, &[]);
        let (first, moved, forged) = (address(1, 10), address(2, 10), address(3, 66));
        book.update_from_bundle("hs-a", &[10; 32], &first).unwrap();
        // Same key, new mailbox relay: the seal proves the pinned key sent it.
        assert_eq!(
            book.update_from_bundle("hs-a", &[10; 32], &moved),
            Ok(PeerUpdate::Updated)
        );
        // Another key claiming the name: refused every time, counted, the pin unchanged.
        for _ in 0..3 {
            assert_eq!(
                book.update_from_bundle("hs-a", &[66; 32], &forged),
                Err(PeerBookError::PinnedToAnotherKey("hs-a".into()))
            );
        }
        assert_eq!(book.refused(), 3);
        // An address that is not the sealing sender's is never taken, even for a new name.
        assert_eq!(
            book.update_from_bundle("hs-b", &[10; 32], &forged),
            Err(PeerBookError::NotTheSender("hs-b".into()))
        );
        assert!(book.get("hs-b").is_none());
        let reopened = PeerBook::open(&path, &[]);
        assert_eq!(reopened.resolve("hs-a"), Some(moved));
        assert!(
            reopened
                .update_from_bundle("hs-a", &[66; 32], &forged)
                .is_err()
        );
    }

    #[test]
    fn the_peers_table_wins_and_keeps_the_peers_own_updates_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEER_BOOK_FILE);
        let (table, learned_other_key) = (address(1, 10), address(1, 77));
        // Learned first from key 77, then the operator configures key 10: the table wins.
        let book = PeerBook::open(&path, &[]);
        book.update_from_bundle("hs-a", &[77; 32], &learned_other_key)
            .unwrap();
        drop(book);
        let book = PeerBook::open(&path, &configured("HS-A", &table));
        let peer = book.get("hs-a").unwrap();
        assert_eq!(
            (peer.address, peer.source),
            (table.clone(), PeerSource::Configured)
        );
        assert!(
            book.update_from_bundle("hs-a", &[77; 32], &learned_other_key)
                .is_err()
        );
        // The configured peer moves its relay: kept across a restart with the same table.
        let moved = address(2, 10);
        assert_eq!(
            book.update_from_bundle("hs-a", &[10; 32], &moved),
            Ok(PeerUpdate::Updated)
        );
        drop(book);
        let book = PeerBook::open(&path, &configured("hs-a", &table));
        assert_eq!(book.resolve("hs-a"), Some(moved));
        // A changed table wins over what was learned.
        let new_table = address(3, 11);
        drop(book);
        let book = PeerBook::open(&path, &configured("hs-a", &new_table));
        assert_eq!(book.resolve("hs-a"), Some(new_table));
        // Taken out of the table: forgotten.
        drop(book);
        let book = PeerBook::open(&path, &[]);
        assert!(book.resolve("hs-a").is_none());
    }

    #[test]
    fn a_corrupt_book_starts_empty_with_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEER_BOOK_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        let table = address(1, 10);
        let book = PeerBook::open(&path, &configured("hs-a", &table));
        assert_eq!(book.resolve("hs-a"), Some(table));
        std::fs::write(
            &path,
            br#"{"hs-b":{"address":"garbage","source":"learned"},"hs-c":{"source":"x"}}"#,
        )
        .unwrap();
        let book = PeerBook::open(&path, &[]);
        assert!(book.list().is_empty());
    }

    #[test]
    fn the_unknown_destination_help_names_the_config_key_and_the_command() {
        let help = unknown_destination_help("hs-b.spore.test");
        assert!(help.contains("[peers]"), "{help}");
        assert!(help.contains("\"hs-b.spore.test\" = \"spore:"), "{help}");
        assert!(help.contains("spore-sidecar address"), "{help}");
    }
}
