//! A realistic Matrix federation workload: `PUT /_matrix/federation/v1/send/{txnId}`
//! transactions carrying room messages, read receipts and typing notifications, each signed
//! with X-Matrix exactly as a homeserver would sign it — so the receiving side can verify it
//! after it crossed the mixnet, proving Spore carried the request opaquely.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::{Rng, RngExt};
use serde_json::{Value, json};
use spore_protocol::FederationRequest;

/// Canonical JSON (Matrix spec): sorted keys, no insignificant whitespace.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // Keys are inserted in sorted order, so the map serialises sorted whether or not
    // serde_json keeps insertion order.
    sort(v).to_string()
}

fn signing_json(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: &Value,
) -> String {
    canonical_json(&json!({
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
        "content": content,
    }))
}

/// A homeserver's federation signing identity.
pub struct ServerIdentity {
    pub name: String,
    pub key_id: String,
    pub key: SigningKey,
}

impl ServerIdentity {
    pub fn generate(name: &str) -> Self {
        Self {
            name: name.to_string(),
            key_id: "ed25519:spore".to_string(),
            key: SigningKey::from_bytes(&rand::random()),
        }
    }

    /// Builds the request with its X-Matrix Authorization header.
    pub fn signed_request(
        &self,
        destination: &str,
        method: &str,
        uri: &str,
        content: &Value,
    ) -> FederationRequest {
        let sig = self
            .key
            .sign(signing_json(method, uri, &self.name, destination, content).as_bytes());
        let auth = format!(
            "X-Matrix origin=\"{}\",destination=\"{}\",key=\"{}\",sig=\"{}\"",
            self.name,
            destination,
            self.key_id,
            STANDARD_NO_PAD.encode(sig.to_bytes())
        );
        FederationRequest {
            method: method.to_string(),
            path: uri.to_string(),
            headers: vec![
                ("Authorization".into(), auth),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: content.to_string().into_bytes(),
        }
    }
}

fn auth_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let rest = header.strip_prefix("X-Matrix ")?;
    rest.split(',').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

/// Checks a received request's X-Matrix signature as the destination homeserver would.
pub fn verify_request(
    req: &FederationRequest,
    destination: &str,
    origin_key: &VerifyingKey,
) -> Result<()> {
    let auth = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_str())
        .context("no Authorization header")?;
    let origin = auth_param(auth, "origin").context("no origin")?;
    if auth_param(auth, "destination") != Some(destination) {
        bail!("request was signed for another destination");
    }
    let sig = STANDARD_NO_PAD
        .decode(auth_param(auth, "sig").context("no sig")?)
        .context("sig is not base64")?;
    let sig = Signature::from_slice(&sig).context("bad signature length")?;
    let content: Value = serde_json::from_slice(&req.body).context("body is not JSON")?;
    let msg = signing_json(&req.method, &req.path, origin, destination, &content);
    origin_key
        .verify_strict(msg.as_bytes(), &sig)
        .context("X-Matrix signature does not verify")
}

/// Transaction id from `/_matrix/federation/v1/send/{txnId}`.
pub fn txn_id(req: &FederationRequest) -> Option<&str> {
    req.path.strip_prefix("/_matrix/federation/v1/send/")
}

/// Generates `count` transactions from `origin` to `destination` across a few rooms: mostly
/// messages, with receipts and typing notifications mixed in as Matrix traffic really is.
pub fn transactions<R: Rng + ?Sized>(
    rng: &mut R,
    origin: &ServerIdentity,
    destination: &str,
    count: usize,
    start_ts: u64,
) -> Vec<FederationRequest> {
    const WORDS: &[&str] = &[
        "hello", "are", "you", "around", "later", "the", "meeting", "moved", "to", "three",
        "sounds", "good", "see", "you", "there", "thanks", "for", "the", "notes", "offline",
        "again", "will", "read", "when", "back",
    ];
    let rooms: Vec<String> = (0..3)
        .map(|i| format!("!room{i}{}:{}", rng.random_range(1000..9999), origin.name))
        .collect();
    let mut depth = 10u64;
    (0..count)
        .map(|i| {
            let ts = start_ts + i as u64 * 1000;
            let room = &rooms[rng.random_range(0..rooms.len())];
            let n_pdus = rng.random_range(1..=3);
            let pdus: Vec<Value> = (0..n_pdus)
                .map(|_| {
                    depth += 1;
                    let words = rng.random_range(3..30);
                    let body: Vec<&str> = (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
                    json!({
                        "room_id": room,
                        "sender": format!("@alice:{}", origin.name),
                        "origin": origin.name,
                        "origin_server_ts": ts,
                        "type": "m.room.message",
                        "content": {"msgtype": "m.text", "body": body.join(" ")},
                        "depth": depth,
                        "prev_events": [format!("${:032x}", rng.random::<u128>())],
                        "auth_events": [format!("${:032x}", rng.random::<u128>())],
                        "hashes": {"sha256": STANDARD_NO_PAD.encode(rng.random::<[u8; 32]>())},
                        "signatures": {origin.name.clone(): {"ed25519:spore": STANDARD_NO_PAD.encode(rng.random::<[u8; 32]>()).repeat(2)}},
                    })
                })
                .collect();
            let mut edus = Vec::new();
            if rng.random_bool(0.4) {
                edus.push(json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": format!("@alice:{}", origin.name), "typing": true}}));
            }
            if rng.random_bool(0.3) {
                edus.push(json!({"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {format!("@alice:{}", origin.name): {"event_ids": [format!("${:032x}", rng.random::<u128>())], "data": {"ts": ts}}}}}}));
            }
            let content = json!({
                "origin": origin.name,
                "origin_server_ts": ts,
                "pdus": pdus,
                "edus": edus,
            });
            let uri = format!("/_matrix/federation/v1/send/{}{:06}", ts, i);
            origin.signed_request(destination, "PUT", &uri, &content)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_transactions_verify_and_tampering_is_caught() {
        let a = ServerIdentity::generate("a.spore.test");
        let txns = transactions(&mut rand::rng(), &a, "b.spore.test", 20, 1_700_000_000_000);
        assert_eq!(txns.len(), 20);
        for t in &txns {
            verify_request(t, "b.spore.test", &a.key.verifying_key()).unwrap();
            assert!(txn_id(t).is_some());
        }
        let mut bad = txns[0].clone();
        bad.body = bad
            .body
            .iter()
            .map(|b| if *b == b'a' { b'b' } else { *b })
            .collect();
        assert!(verify_request(&bad, "b.spore.test", &a.key.verifying_key()).is_err());
        assert!(verify_request(&txns[0], "c.spore.test", &a.key.verifying_key()).is_err());
    }

    #[test]
    fn canonical_json_sorts_nested_keys() {
        let v = json!({"b": {"z": 1, "a": [ {"y": 2, "x": 1} ]}, "a": "s"});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"s","b":{"a":[{"x":1,"y":2}],"z":1}}"#
        );
    }
}
