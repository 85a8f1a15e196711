//! Server signing keys for peers the homeserver cannot reach.
//!
//! A receiving homeserver verifies the X-Matrix signature of every request with the origin's
//! ed25519 key, which it normally fetches from `https://origin/_matrix/key/v2/server`. Through
//! Spore the origin may be offline (and is never directly reachable), so every bundle carries
//! the origin's self-signed key response ([`spore_protocol::Bundle::server_keys`]); the
//! receiving sidecar checks the self-signature, caches it, and answers its homeserver's key
//! request for that origin from the cache. The sidecar never signs anything itself: a forged
//! key response fails the origin's own signature check, here and again in the homeserver.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

/// Largest key response accepted (the protocol's limit on `Bundle::server_keys`).
pub const MAX_KEY_RESPONSE: usize = spore_protocol::bundle::MAX_SERVER_KEYS_LEN;
/// Cached origins at most.
const MAX_CACHED_SERVERS: usize = 10_000;

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
}

/// A verified `/_matrix/key/v2/server` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub server_name: String,
    pub valid_until_ts: u64,
    /// The response exactly as the origin served it (what the homeserver is given).
    pub json: Vec<u8>,
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
    let ok = signatures.iter().any(|(key_id, sig)| {
        let Some(key) = verify_keys
            .get(key_id)
            .and_then(|k| k.get("key"))
            .and_then(Value::as_str)
        else {
            return false;
        };
        let (Some(key), Some(sig)) = (
            decode_b64::<32>(key),
            sig.as_str().and_then(decode_b64::<64>),
        ) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&key) else {
            return false;
        };
        key.verify_strict(message.as_bytes(), &Signature::from_bytes(&sig))
            .is_ok()
    });
    if !ok {
        return Err(KeyError::BadSignature);
    }
    Ok(ServerKeys {
        server_name: found.to_ascii_lowercase(),
        valid_until_ts,
        json: json.to_vec(),
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
/// after a restart can be verified.
#[derive(Debug)]
pub struct ServerKeyCache {
    path: Option<PathBuf>,
    entries: Mutex<HashMap<String, ServerKeys>>,
}

impl ServerKeyCache {
    /// A cache persisted in `path` (loaded now; unreadable or expired entries are dropped).
    pub fn open(path: impl Into<PathBuf>, now_ms: u64) -> ServerKeyCache {
        let path = path.into();
        let mut entries = HashMap::new();
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        {
            for (name, json) in map {
                if let Some(json) = json.as_str()
                    && let Ok(keys) = verify_key_response(&name, json.as_bytes(), now_ms)
                {
                    entries.insert(keys.server_name.clone(), keys);
                }
            }
        }
        ServerKeyCache {
            path: Some(path),
            entries: Mutex::new(entries),
        }
    }

    /// A cache that lives in memory only.
    pub fn in_memory() -> ServerKeyCache {
        ServerKeyCache {
            path: None,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `json` as `server_name`'s keys and caches it unless a response valid for
    /// longer is cached already.
    pub fn insert(&self, server_name: &str, json: &[u8], now_ms: u64) -> Result<(), KeyError> {
        let keys = verify_key_response(server_name, json, now_ms)?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = entries.get(&keys.server_name)
            && old.valid_until_ts >= keys.valid_until_ts
        {
            return Ok(());
        }
        if entries.len() >= MAX_CACHED_SERVERS {
            entries.retain(|_, k| k.valid_until_ts > now_ms);
            if entries.len() >= MAX_CACHED_SERVERS {
                return Ok(());
            }
        }
        entries.insert(keys.server_name.clone(), keys);
        self.persist(&entries);
        Ok(())
    }

    /// The cached response for `server_name`, if still valid.
    pub fn get(&self, server_name: &str, now_ms: u64) -> Option<ServerKeys> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&server_name.to_ascii_lowercase())
            .filter(|k| k.valid_until_ts > now_ms)
            .cloned()
    }

    fn persist(&self, entries: &HashMap<String, ServerKeys>) {
        let Some(path) = &self.path else { return };
        let map: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(name, k)| {
                (
                    name.clone(),
                    Value::String(String::from_utf8_lossy(&k.json).into_owned()),
                )
            })
            .collect();
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&Value::Object(map))
            .ok()
            .map(|bytes| std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)));
        if let Some(Err(e)) = written {
            tracing::warn!(error = %e, "could not persist the server key cache");
        }
    }
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
}
