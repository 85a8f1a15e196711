//! Server signing keys for peers the homeserver cannot reach.
//!
//! A receiving homeserver verifies the X-Matrix signature of every request with the origin's
//! ed25519 key, which it normally fetches from `https://origin/_matrix/key/v2/server`. Through
//! Spore the origin may be offline (and is never directly reachable), so bundles carry the
//! origin's self-signed key response ([`spore_protocol::Bundle::server_keys`]) until the
//! recipient holds it (the sender's [`crate::KeyRecipients`]; later bundles carry none); the
//! receiving sidecar checks the self-signature, caches it, and answers its homeserver's key
//! request for that origin from the cache. The sidecar never signs anything itself: a forged
//! key response fails the origin's own signature check, here and again in the homeserver.
//!
//! A self-signature alone proves nothing about who runs a name: anyone can sign a response for
//! `X` with a key of their own. So the first accepted response pins `X`'s signing keys (kept on
//! disk beside the cache, next to it with `.pins.json`), and a later response for `X` is taken
//! only if one of the pinned keys signed it; a rotation is then a response signed by both the
//! old and the new key. Anything else is refused, counted and logged once per name.
//!
//! Signing keys alone still let any Spore peer pin a name nobody has contacted us from yet,
//! or send requests in a name it does not hold (issue 16). So the name is bound to the Spore
//! sender too: every inbound bundle's seal authenticates its sender's mailbox key
//! ([`spore_client::InboundRequest::sender_key`]), and the first request for a name pins
//! name -> sender key (kept in `.senders.json`), unless the sidecar's `[peers]` table lists
//! the name, whose address's key then wins. A request, or the key response it carries, that
//! claims a name from any other sender key is refused before anything else, counted
//! ([`ServerKeyCache::refused_senders`]) and logged once per (name, key). The chain is then
//! server name <-> Spore key <-> signing keys, each link pinned at first contact.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

/// Largest key response accepted (the protocol's limit on `Bundle::server_keys`).
pub const MAX_KEY_RESPONSE: usize = spore_protocol::bundle::MAX_SERVER_KEYS_LEN;
/// Cached origins at most.
const MAX_CACHED_SERVERS: usize = 10_000;
/// Pinned server names at most (pins outlive their responses).
const MAX_PINNED_SERVERS: usize = 100_000;

/// Why a key response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key response is not a JSON object")]
    NotJson,
    #[error("key response is larger than {MAX_KEY_RESPONSE} bytes")]
    TooLarge,
    #[error("key response is for {found:?}, expected {expected:?}")]
    WrongServer { expected: String, found: String },
    #[error("key response expired")]
    Expired,
    #[error("key response has no valid self-signature")]
    BadSignature,
    #[error("key response for {0:?} is not signed by its pinned key")]
    NotPinnedKey(String),
    #[error("{0:?} is bound to another Spore sender")]
    WrongSender(String),
}

/// A verified `/_matrix/key/v2/server` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub server_name: String,
    pub valid_until_ts: u64,
    /// The response exactly as the origin served it (what the homeserver is given).
    pub json: Vec<u8>,
    /// The ed25519 keys (among those it lists) whose self-signature on it verifies.
    pub signed_by: Vec<[u8; 32]>,
}

/// Checks that `json` is `server_name`'s key response, unexpired at `now_ms`, and signed by
/// one of the keys it lists.
pub fn verify_key_response(
    server_name: &str,
    json: &[u8],
    now_ms: u64,
) -> Result<ServerKeys, KeyError> {
    if json.len() > MAX_KEY_RESPONSE {
        return Err(KeyError::TooLarge);
    }
    let value: Value = serde_json::from_slice(json).map_err(|_| KeyError::NotJson)?;
    let obj = value.as_object().ok_or(KeyError::NotJson)?;
    let found = obj
        .get("server_name")
        .and_then(Value::as_str)
        .ok_or(KeyError::NotJson)?;
    if !found.eq_ignore_ascii_case(server_name) {
        return Err(KeyError::WrongServer {
            expected: server_name.to_owned(),
            found: found.to_owned(),
        });
    }
    let valid_until_ts = obj
        .get("valid_until_ts")
        .and_then(Value::as_u64)
        .ok_or(KeyError::NotJson)?;
    if valid_until_ts <= now_ms {
        return Err(KeyError::Expired);
    }
    let verify_keys = obj
        .get("verify_keys")
        .and_then(Value::as_object)
        .ok_or(KeyError::NotJson)?;
    let signatures = obj
        .get("signatures")
        .and_then(|s| s.get(found))
        .and_then(Value::as_object)
        .ok_or(KeyError::BadSignature)?;
    let mut unsigned = obj.clone();
    unsigned.remove("signatures");
    unsigned.remove("unsigned");
    let mut message = String::new();
    canonical_json(&Value::Object(unsigned), &mut message);
    let signed_by: Vec<[u8; 32]> = signatures
        .iter()
        .filter_map(|(key_id, sig)| {
            let key = verify_keys
                .get(key_id)
                .and_then(|k| k.get("key"))
                .and_then(Value::as_str)
                .and_then(decode_b64::<32>)?;
            let sig = sig.as_str().and_then(decode_b64::<64>)?;
            let verifying = VerifyingKey::from_bytes(&key).ok()?;
            verifying
                .verify_strict(message.as_bytes(), &Signature::from_bytes(&sig))
                .is_ok()
                .then_some(key)
        })
        .collect();
    if signed_by.is_empty() {
        return Err(KeyError::BadSignature);
    }
    Ok(ServerKeys {
        server_name: found.to_ascii_lowercase(),
        valid_until_ts,
        json: json.to_vec(),
        signed_by,
    })
}

fn decode_b64<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim_end_matches('=');
    STANDARD_NO_PAD.decode(s).ok()?.try_into().ok()
}

/// Matrix canonical JSON: no whitespace, object keys sorted by code point, shortest escapes.
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*k) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Verified key responses by server name, kept on disk so that requests still in the inbox
/// after a restart can be verified; and the signing keys each name is pinned to.
#[derive(Debug)]
pub struct ServerKeyCache {
    path: Option<PathBuf>,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<String, ServerKeys>,
    /// Server name -> the keys whose signature a response for it needs (first contact).
    pins: HashMap<String, Vec<[u8; 32]>>,
    /// Names already logged for a refused response (logged once each).
    logged: HashSet<String>,
    /// Responses refused for not being signed by the pinned key.
    refused: u64,
    /// Server name -> the Spore mailbox key its requests come from (first contact).
    senders: HashMap<String, [u8; 32]>,
    /// Server name -> mailbox key from the `[peers]` configuration; wins over `senders`.
    configured: HashMap<String, [u8; 32]>,
    /// (name, sender key) pairs already logged for claiming a name bound to another key.
    logged_senders: HashSet<(String, [u8; 32])>,
    /// Requests refused for claiming a name bound to another sender key.
    refused_senders: u64,
}

impl ServerKeyCache {
    /// A cache persisted in `path` (loaded now; unreadable or expired entries are dropped),
    /// its pins in `path` with the extension `pins.json` (kept however old).
    pub fn open(path: impl Into<PathBuf>, now_ms: u64) -> ServerKeyCache {
        let path = path.into();
        let mut state = CacheState::default();
        if let Ok(bytes) = std::fs::read(pins_path(&path))
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        {
            for (name, keys) in map {
                let keys: Vec<[u8; 32]> = keys
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|k| hex::decode(k).ok()?.try_into().ok())
                    .collect();
                if !keys.is_empty() {
                    state.pins.insert(name, keys);
                }
            }
        }
        if let Ok(bytes) = std::fs::read(senders_path(&path))
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        {
            for (name, key) in map {
                if let Some(key) = key
                    .as_str()
                    .and_then(|k| hex::decode(k).ok()?.try_into().ok())
                {
                    state.senders.insert(name.to_ascii_lowercase(), key);
                }
            }
        }
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        {
            for (name, json) in map {
                if let Some(json) = json.as_str()
                    && let Ok(keys) = verify_key_response(&name, json.as_bytes(), now_ms)
                {
                    // A cache from before pinning pins what it holds.
                    let pinned = state
                        .pins
                        .entry(keys.server_name.clone())
                        .or_insert_with(|| keys.signed_by.clone());
                    if keys.signed_by.iter().any(|k| pinned.contains(k)) {
                        state.entries.insert(keys.server_name.clone(), keys);
                    }
                }
            }
        }
        ServerKeyCache {
            path: Some(path),
            state: Mutex::new(state),
        }
    }

    /// A cache that lives in memory only.
    pub fn in_memory() -> ServerKeyCache {
        ServerKeyCache {
            path: None,
            state: Mutex::new(CacheState::default()),
        }
    }

    /// Verifies `json` as `server_name`'s keys and caches it unless a response valid for
    /// longer is cached already. A name seen before takes only a response signed by one of
    /// its pinned keys ([`KeyError::NotPinnedKey`]); the first one pins it.
    pub fn insert(&self, server_name: &str, json: &[u8], now_ms: u64) -> Result<(), KeyError> {
        let keys = verify_key_response(server_name, json, now_ms)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let name = keys.server_name.clone();
        if let Some(pinned) = state.pins.get(&name)
            && !keys.signed_by.iter().any(|k| pinned.contains(k))
        {
            state.refused += 1;
            if state.logged.len() < MAX_CACHED_SERVERS && state.logged.insert(name.clone()) {
                tracing::warn!(server = %name, "refused a key response not signed by the server's pinned key (logged once per server)");
            }
            return Err(KeyError::NotPinnedKey(name));
        }
        if let Some(old) = state.entries.get(&name)
            && old.valid_until_ts >= keys.valid_until_ts
        {
            return Ok(());
        }
        if state.entries.len() >= MAX_CACHED_SERVERS {
            state.entries.retain(|_, k| k.valid_until_ts > now_ms);
            if state.entries.len() >= MAX_CACHED_SERVERS {
                return Ok(());
            }
        }
        if !state.pins.contains_key(&name) && state.pins.len() >= MAX_PINNED_SERVERS {
            return Ok(());
        }
        // Signed by a pinned key (or first contact): its signers are the pin from now on, so
        // a response signed by the old and a new key rotates to the new one.
        state.pins.insert(name.clone(), keys.signed_by.clone());
        state.entries.insert(name, keys);
        self.persist(&state);
        Ok(())
    }

    /// The cached response for `server_name`, if still valid.
    pub fn get(&self, server_name: &str, now_ms: u64) -> Option<ServerKeys> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .entries
            .get(&server_name.to_ascii_lowercase())
            .filter(|k| k.valid_until_ts > now_ms)
            .cloned()
    }

    /// Binds `server_name` to the Spore mailbox key `sender` from the operator's `[peers]`
    /// table: from now on only that key may send in this name, whatever was pinned before.
    pub fn configure_sender(&self, server_name: &str, sender: [u8; 32]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .configured
            .insert(server_name.to_ascii_lowercase(), sender);
    }

    /// Checks that requests in `server_name`'s name may come from the Spore mailbox key
    /// `sender`: the configured key if `[peers]` lists the name, else the key pinned at first
    /// contact; an unknown name is pinned to `sender` now. Anything else is refused with
    /// [`KeyError::WrongSender`], counted, and logged once per (name, key).
    pub fn bind_sender(&self, server_name: &str, sender: &[u8; 32]) -> Result<(), KeyError> {
        let name = server_name.to_ascii_lowercase();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bound = match state.configured.get(&name).or(state.senders.get(&name)) {
            Some(bound) => *bound,
            None if state.senders.len() >= MAX_PINNED_SERVERS => {
                // Full: refuse rather than serve a name no pin protects.
                return Err(KeyError::WrongSender(name));
            }
            None => {
                state.senders.insert(name, *sender);
                self.persist_senders(&state);
                return Ok(());
            }
        };
        if bound == *sender {
            return Ok(());
        }
        state.refused_senders += 1;
        if state.logged_senders.len() < MAX_CACHED_SERVERS
            && state.logged_senders.insert((name.clone(), *sender))
        {
            // The name is what an operator needs to act on; the sender key is no mailbox id
            // (it is hashed into one), and this goes out at most once per (name, key).
            tracing::warn!(server = %name, sender = %hex::encode(&sender[..8]), "refused a request claiming a server name bound to another Spore sender (logged once per name and sender)");
        }
        Err(KeyError::WrongSender(name))
    }

    /// Caches `json` as `server_name`'s keys when its bundle arrives, ahead of the request's
    /// turn in its origin's send order, but only if the name is already bound to `sender` and
    /// [`ServerKeyCache::insert`] would take the response; anything else is left to delivery
    /// ([`crate::deliver_inbound`]), which checks, counts and logs. Senders attach their keys
    /// to a peer's bundles only until one was acknowledged ([`crate::KeyRecipients`]): if
    /// that one arrives late (after its origin's order gap was given up on), its keys must
    /// not wait behind the keyless transactions that need them.
    pub fn insert_on_arrival(
        &self,
        server_name: &str,
        sender: &[u8; 32],
        json: &[u8],
        now_ms: u64,
    ) {
        let Ok(keys) = verify_key_response(server_name, json, now_ms) else {
            return;
        };
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let name = server_name.to_ascii_lowercase();
            let bound = state.configured.get(&name).or(state.senders.get(&name));
            if bound != Some(sender) {
                return;
            }
            if let Some(pinned) = state.pins.get(&keys.server_name)
                && !keys.signed_by.iter().any(|k| pinned.contains(k))
            {
                return;
            }
        }
        let _ = self.insert(server_name, json, now_ms);
    }

    /// Requests refused since start for claiming a server name bound to another Spore sender.
    pub fn refused_senders(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused_senders
    }

    /// Key responses refused since start for not being signed by their name's pinned key.
    pub fn refused_unpinned(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).refused
    }

    fn persist_senders(&self, state: &CacheState) {
        let Some(path) = &self.path else { return };
        let map: serde_json::Map<String, Value> = state
            .senders
            .iter()
            .map(|(name, key)| (name.clone(), Value::String(hex::encode(key))))
            .collect();
        let path = senders_path(path);
        let written = serde_json::to_vec(&Value::Object(map))
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::private_file::replace(&path, &bytes));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not persist the server sender pins");
        }
    }

    fn persist(&self, state: &CacheState) {
        let Some(path) = &self.path else { return };
        let map: serde_json::Map<String, Value> = state
            .entries
            .iter()
            .map(|(name, k)| {
                (
                    name.clone(),
                    Value::String(String::from_utf8_lossy(&k.json).into_owned()),
                )
            })
            .collect();
        let pins: serde_json::Map<String, Value> = state
            .pins
            .iter()
            .map(|(name, keys)| {
                (
                    name.clone(),
                    Value::Array(keys.iter().map(|k| Value::String(hex::encode(k))).collect()),
                )
            })
            .collect();
        // Pins first: a crash between the two leaves a pin without its response, never the
        // other way round.
        for (path, value) in [(pins_path(path), pins), (path.clone(), map)] {
            let written = serde_json::to_vec(&Value::Object(value))
                .ok()
                .map(|bytes| crate::private_file::replace(&path, &bytes));
            if let Some(Err(e)) = written {
                tracing::warn!(error = %e, "could not persist the server key cache");
            }
        }
    }
}

/// Where the name -> Spore sender pins of the cache in `path` live.
fn senders_path(path: &Path) -> PathBuf {
    path.with_extension("senders.json")
}

/// Where the pins of the cache in `path` live.
fn pins_path(path: &Path) -> PathBuf {
    path.with_extension("pins.json")
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(server: &str, valid_until: u64, seed: u8) -> Vec<u8> {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let pk = STANDARD_NO_PAD.encode(sk.verifying_key().as_bytes());
        let mut v = serde_json::json!({
            "server_name": server,
            "valid_until_ts": valid_until,
            "old_verify_keys": {},
            "verify_keys": {"ed25519:a": {"key": pk}},
        });
        let mut msg = String::new();
        canonical_json(&v, &mut msg);
        let sig = STANDARD_NO_PAD.encode(sk.sign(msg.as_bytes()).to_bytes());
        v["signatures"] = serde_json::json!({ server: {"ed25519:a": sig} });
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn self_signed_response_is_accepted() {
        let json = signed("hs-a.spore.test", 2_000, 1);
        let keys = verify_key_response("hs-a.spore.test", &json, 1_000).unwrap();
        assert_eq!(keys.valid_until_ts, 2_000);
    }

    #[test]
    fn tampered_expired_or_foreign_responses_are_refused() {
        let json = signed("hs-a.spore.test", 2_000, 1);
        assert_eq!(
            verify_key_response("hs-a.spore.test", &json, 3_000),
            Err(KeyError::Expired)
        );
        assert!(matches!(
            verify_key_response("hs-b.spore.test", &json, 1_000),
            Err(KeyError::WrongServer { .. })
        ));
        let tampered = String::from_utf8(json)
            .unwrap()
            .replace("2000", "9000")
            .into_bytes();
        assert_eq!(
            verify_key_response("hs-a.spore.test", &tampered, 1_000),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn cache_persists_and_keeps_the_longest_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let cache = ServerKeyCache::open(&path, 1_000);
        cache
            .insert(
                "hs-a.spore.test",
                &signed("hs-a.spore.test", 5_000, 1),
                1_000,
            )
            .unwrap();
        cache
            .insert(
                "hs-a.spore.test",
                &signed("hs-a.spore.test", 4_000, 1),
                1_000,
            )
            .unwrap();
        let reopened = ServerKeyCache::open(&path, 1_000);
        assert_eq!(
            reopened
                .get("HS-A.spore.test", 1_000)
                .unwrap()
                .valid_until_ts,
            5_000
        );
        assert!(reopened.get("hs-a.spore.test", 6_000).is_none());
    }

    /// Issue 16: anyone can self-sign a response for a name; once a name is pinned, only its
    /// pinned key (or a response it co-signs) replaces the cached one, across restarts.
    #[test]
    fn a_pinned_name_refuses_a_response_from_another_key_and_rotates_when_cosigned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let name = "hs-a.spore.test";
        let cache = ServerKeyCache::open(&path, 1_000);
        cache.insert(name, &signed(name, 5_000, 1), 1_000).unwrap();
        // An impersonator's response, even one valid for longer, is refused and counted.
        assert_eq!(
            cache.insert(name, &signed(name, 9_000, 2), 1_000),
            Err(KeyError::NotPinnedKey(name.into()))
        );
        assert_eq!(cache.refused_unpinned(), 1);
        assert_eq!(cache.get(name, 1_000).unwrap().valid_until_ts, 5_000);
        // The pin survives a restart, and outlives the cached response.
        let reopened = ServerKeyCache::open(&path, 6_000);
        assert!(reopened.get(name, 6_000).is_none());
        assert!(matches!(
            reopened.insert(name, &signed(name, 9_000, 2), 6_000),
            Err(KeyError::NotPinnedKey(_))
        ));
        // The real server rotates: a response signed by the old and the new key, then the
        // new key alone.
        reopened
            .insert(name, &cosigned(name, 7_000, 1, 3), 6_000)
            .unwrap();
        reopened
            .insert(name, &signed(name, 8_000, 3), 6_000)
            .unwrap();
        assert_eq!(reopened.get(name, 6_000).unwrap().valid_until_ts, 8_000);
        // Other names are unaffected.
        reopened
            .insert(
                "hs-b.spore.test",
                &signed("hs-b.spore.test", 9_000, 2),
                6_000,
            )
            .unwrap();
    }

    /// Keys that arrive ahead of their request's turn are cached at once, but only from the
    /// sender the name is bound to and only if signed by the pinned key; nothing else is
    /// pinned, counted or cached on arrival.
    #[test]
    fn keys_are_cached_on_arrival_only_from_the_bound_sender() {
        let cache = ServerKeyCache::in_memory();
        let name = "hs-a.spore.test";
        let (real, forger) = ([1u8; 32], [2u8; 32]);
        cache.insert_on_arrival(name, &real, &signed(name, 5_000, 1), 1_000);
        assert!(
            cache.get(name, 1_000).is_none(),
            "an unbound name is left to delivery"
        );
        assert_eq!(cache.refused_senders(), 0);
        cache.bind_sender(name, &real).unwrap();
        cache.insert_on_arrival(name, &forger, &signed(name, 5_000, 1), 1_000);
        assert!(cache.get(name, 1_000).is_none(), "another sender");
        assert_eq!(
            cache.refused_senders(),
            0,
            "not counted here: delivery counts it"
        );
        cache.insert_on_arrival(name, &real, &signed(name, 5_000, 1), 1_000);
        assert_eq!(cache.get(name, 1_000).unwrap().valid_until_ts, 5_000);
        cache.insert_on_arrival(name, &real, &signed(name, 9_000, 2), 1_000);
        assert_eq!(
            cache.get(name, 1_000).unwrap().valid_until_ts,
            5_000,
            "unpinned key"
        );
        assert_eq!(cache.refused_unpinned(), 0);
    }

    /// Issue 16: the first Spore sender of a name pins it (across restarts); another sender
    /// claiming it is refused and counted; a `[peers]` entry wins over a pin.
    #[test]
    fn a_name_is_bound_to_its_first_spore_sender_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let cache = ServerKeyCache::open(&path, 1_000);
        let (real, forger) = ([1u8; 32], [2u8; 32]);
        cache.bind_sender("hs-a.spore.test", &real).unwrap();
        cache.bind_sender("HS-A.spore.test", &real).unwrap();
        for _ in 0..3 {
            assert_eq!(
                cache.bind_sender("hs-a.spore.test", &forger),
                Err(KeyError::WrongSender("hs-a.spore.test".into()))
            );
        }
        assert_eq!(cache.refused_senders(), 3);
        let reopened = ServerKeyCache::open(&path, 1_000);
        assert!(reopened.bind_sender("hs-a.spore.test", &forger).is_err());
        reopened.bind_sender("hs-a.spore.test", &real).unwrap();
        // Configuration wins: the operator names another key for the name.
        reopened.configure_sender("hs-a.spore.test", forger);
        reopened.bind_sender("hs-a.spore.test", &forger).unwrap();
        assert!(reopened.bind_sender("hs-a.spore.test", &real).is_err());
        // A configured name is never pinned to a first sender.
        reopened.configure_sender("hs-b.spore.test", real);
        assert!(reopened.bind_sender("hs-b.spore.test", &forger).is_err());
    }

    /// A response listing keys `a` and `b`, signed by both.
    fn cosigned(server: &str, valid_until: u64, a: u8, b: u8) -> Vec<u8> {
        let (ka, kb) = (
            SigningKey::from_bytes(&[a; 32]),
            SigningKey::from_bytes(&[b; 32]),
        );
        let mut v = serde_json::json!({
            "server_name": server,
            "valid_until_ts": valid_until,
            "old_verify_keys": {},
            "verify_keys": {
                "ed25519:a": {"key": STANDARD_NO_PAD.encode(ka.verifying_key().as_bytes())},
                "ed25519:b": {"key": STANDARD_NO_PAD.encode(kb.verifying_key().as_bytes())},
            },
        });
        let mut msg = String::new();
        canonical_json(&v, &mut msg);
        let sa = STANDARD_NO_PAD.encode(ka.sign(msg.as_bytes()).to_bytes());
        let sb = STANDARD_NO_PAD.encode(kb.sign(msg.as_bytes()).to_bytes());
        v["signatures"] = serde_json::json!({ server: {"ed25519:a": sa, "ed25519:b": sb} });
        serde_json::to_vec(&v).unwrap()
    }
}
