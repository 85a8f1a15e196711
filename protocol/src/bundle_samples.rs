//! Synthetic federation traffic shaped like Synapse's (canonical JSON, room version 10
//! events, the sidecar's headers), from which [`super::TRAINED_DICTIONARY`] was trained and
//! on which its effect is measured. Every random part (digests, signatures, keys, SURB-less
//! request ids, room ids) is random; names, users, texts and numbers vary per sample, so the
//! dictionary learns the structure and the statistics of federation traffic, not any one
//! server's strings.

use super::{Bundle, BundleBody, FederationRequest};
use crate::capability::CapabilityId;
use crate::ids::{RelayId, SporeAddress};

/// Deterministic random bytes (splitmix64 from a mixed seed).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(mix(mix(seed ^ 0x5107_e5ee_d000_0001)))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| (self.next() >> 24) as u8)
    }

    /// Unpadded base64 of `len` characters (a SHA-256 digest is 43, an ed25519 signature 86).
    pub(crate) fn b64(&mut self, len: usize, url_safe: bool) -> String {
        let alphabet: &[u8; 64] = if url_safe {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        } else {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        };
        (0..len)
            .map(|_| alphabet[(self.next() >> 58) as usize] as char)
            .collect()
    }

    /// Between `min` and `min + extra - 1` letters.
    pub(crate) fn letters_n(&mut self, min: usize, extra: u64) -> String {
        let n = min + self.below(extra) as usize;
        self.letters(n)
    }

    pub(crate) fn letters(&mut self, len: usize) -> String {
        const L: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..len)
            .map(|_| L[self.below(52) as usize] as char)
            .collect()
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "you",
    "I",
    "it",
    "is",
    "that",
    "for",
    "on",
    "we",
    "are",
    "this",
    "with",
    "be",
    "have",
    "not",
    "at",
    "do",
    "can",
    "will",
    "just",
    "so",
    "what",
    "about",
    "if",
    "me",
    "my",
    "your",
    "all",
    "there",
    "out",
    "up",
    "time",
    "now",
    "get",
    "know",
    "think",
    "today",
    "tomorrow",
    "meeting",
    "call",
    "thanks!",
    "ok",
    "yes",
    "no",
    "sure",
    "lol",
    "haha",
    "great",
    "see",
    "later",
    "back",
    "home",
    "work",
    "new",
    "release",
    "build",
    "server",
    "room",
    "link",
    "here:",
    "https://example.org/x",
    "?",
    "soon",
    "morning",
    "night",
    "please",
    "sorry",
    "good",
    "nice",
    "done",
    "fixed",
    "bug",
    "test",
    "looks",
];

fn server(rng: &mut Rng) -> String {
    let label = match rng.below(4) {
        0 => rng.letters_n(3, 8).to_ascii_lowercase(),
        1 => format!("matrix.{}", rng.letters_n(4, 6).to_ascii_lowercase()),
        2 => format!(
            "{}{}",
            rng.pick(&["chat", "m", "im", "hs", "home"]),
            rng.below(100)
        ),
        _ => format!(
            "{}.{}",
            rng.pick(&["synapse", "mx", "talk"]),
            rng.letters(5).to_ascii_lowercase()
        ),
    };
    format!(
        "{label}.{}",
        rng.pick(&["org", "com", "net", "de", "fr", "io", "social", "uk"])
    )
}

fn user(rng: &mut Rng, server: &str) -> String {
    let name = match rng.below(3) {
        0 => rng
            .pick(&[
                "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
            ])
            .to_owned(),
        1 => rng.letters_n(4, 8).to_ascii_lowercase(),
        _ => format!(
            "{}_{}",
            rng.letters(5).to_ascii_lowercase(),
            rng.below(1000)
        ),
    };
    format!("@{name}:{server}")
}

fn text(rng: &mut Rng) -> String {
    let long = rng.below(4) == 0;
    let n = 1 + rng.below(if long { 40 } else { 12 }) as usize;
    (0..n)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Milliseconds around December 2026.
fn ts(rng: &mut Rng) -> u64 {
    1_760_000_000_000 + rng.below(30_000_000_000)
}

struct Ctx {
    origin: String,
    destination: String,
    key_id: String,
    room: String,
    sender: String,
}

fn event_id(rng: &mut Rng) -> String {
    format!("${}", rng.b64(43, true))
}

/// One PDU in canonical JSON: a message (most), a reaction, an edit or a membership.
fn pdu(rng: &mut Rng, c: &Ctx) -> String {
    let (content, ty, state_key) = match rng.below(10) {
        0 => (
            format!(
                r#"{{"m.relates_to":{{"event_id":"{}","key":"{}","rel_type":"m.annotation"}}}}"#,
                event_id(rng),
                rng.pick(&["👍", "❤️", "😂", "🎉", "+1"])
            ),
            "m.reaction",
            None,
        ),
        1 => (
            format!(
                r#"{{"avatar_url":"mxc://{}/{}","displayname":"{}","membership":"join"}}"#,
                c.origin,
                rng.letters(24),
                rng.letters_n(3, 8)
            ),
            "m.room.member",
            Some(c.sender.clone()),
        ),
        2 => {
            let t = text(rng);
            (
                format!(
                    r#"{{"body":" * {t}","m.new_content":{{"body":"{t}","msgtype":"m.text"}},"m.relates_to":{{"event_id":"{}","rel_type":"m.replace"}},"msgtype":"m.text"}}"#,
                    event_id(rng)
                ),
                "m.room.message",
                None,
            )
        }
        _ => {
            let mentions = if rng.below(3) == 0 {
                String::new()
            } else {
                r#""m.mentions":{},"#.to_owned()
            };
            (
                format!(r#"{{"body":"{}",{mentions}"msgtype":"m.text"}}"#, text(rng)),
                "m.room.message",
                None,
            )
        }
    };
    let auth: Vec<String> = (0..3 + rng.below(2)).map(|_| event_id(rng)).collect();
    let prev: Vec<String> = (0..1 + rng.below(2)).map(|_| event_id(rng)).collect();
    let quote = |v: &[String]| {
        v.iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ts = ts(rng);
    let state = state_key
        .map(|k| format!(r#","state_key":"{k}""#))
        .unwrap_or_default();
    format!(
        r#"{{"auth_events":[{}],"content":{content},"depth":{},"hashes":{{"sha256":"{}"}},"origin_server_ts":{ts},"prev_events":[{}],"room_id":"{}","sender":"{}","signatures":{{"{}":{{"{}":"{}"}}}}{state},"type":"{ty}","unsigned":{{"age":{}}}}}"#,
        quote(&auth),
        rng.below(100_000),
        rng.b64(43, false),
        quote(&prev),
        c.room,
        c.sender,
        c.origin,
        c.key_id,
        rng.b64(86, false),
        rng.below(3000),
    )
}

/// One EDU: typing, a read receipt, presence or a device list update.
fn edu(rng: &mut Rng, c: &Ctx) -> String {
    match rng.below(4) {
        0 => format!(
            r#"{{"content":{{"room_id":"{}","typing":{},"user_id":"{}"}},"edu_type":"m.typing"}}"#,
            c.room,
            rng.below(2) == 0,
            c.sender
        ),
        1 => format!(
            r#"{{"content":{{"{}":{{"m.read":{{"{}":{{"data":{{"ts":{}}},"event_ids":["{}"]}}}}}}}},"edu_type":"m.receipt"}}"#,
            c.room,
            c.sender,
            ts(rng),
            event_id(rng)
        ),
        2 => format!(
            r#"{{"content":{{"push":[{{"currently_active":{},"last_active_ago":{},"presence":"{}","user_id":"{}"}}]}},"edu_type":"m.presence"}}"#,
            rng.below(2) == 0,
            rng.below(100_000),
            rng.pick(&["online", "unavailable", "offline"]),
            c.sender
        ),
        _ => format!(
            r#"{{"content":{{"device_display_name":"{}","device_id":"{}","keys":{{"algorithms":["m.olm.v1.curve25519-aes-sha2","m.megolm.v1.aes-sha2"],"device_id":"{}","keys":{{"curve25519:{}":"{}","ed25519:{}":"{}"}},"signatures":{{"{}":{{"ed25519:{}":"{}"}}}},"user_id":"{}"}},"prev_id":[{}],"stream_id":{},"user_id":"{}"}},"edu_type":"m.device_list_update"}}"#,
            rng.pick(&["Element Desktop", "Element X iOS", "Firefox on Linux"]),
            rng.letters(10).to_ascii_uppercase(),
            rng.letters(10).to_ascii_uppercase(),
            rng.letters(10).to_ascii_uppercase(),
            rng.b64(43, false),
            rng.letters(10).to_ascii_uppercase(),
            rng.b64(43, false),
            c.sender,
            rng.letters(10).to_ascii_uppercase(),
            rng.b64(86, false),
            c.sender,
            rng.below(1000),
            rng.below(100_000),
            c.sender
        ),
    }
}

/// A key response as Synapse serves it (sometimes with retired keys).
pub(crate) fn key_response(rng: &mut Rng, server: &str, key_id: &str) -> String {
    let old: Vec<String> = (0..rng.below(3))
        .map(|_| {
            format!(
                r#""ed25519:a_{}":{{"expired_ts":{},"key":"{}"}}"#,
                rng.letters(4),
                ts(rng),
                rng.b64(43, false)
            )
        })
        .collect();
    format!(
        r#"{{"old_verify_keys":{{{}}},"server_name":"{server}","signatures":{{"{server}":{{"{key_id}":"{}"}}}},"valid_until_ts":{},"verify_keys":{{"{key_id}":{{"key":"{}"}}}}}}"#,
        old.join(","),
        rng.b64(86, false),
        ts(rng),
        rng.b64(43, false)
    )
}

/// The `n`th sample: a transaction bundle as the sidecar builds it.
pub(crate) fn sample(n: u64) -> Bundle {
    let mut rng = Rng::new(n);
    let origin = server(&mut rng);
    let destination = server(&mut rng);
    let c = Ctx {
        key_id: format!("ed25519:a_{}", rng.letters(4)),
        room: format!(
            "!{}:{}",
            rng.letters(18),
            if rng.below(2) == 0 {
                &origin
            } else {
                &destination
            }
        ),
        sender: user(&mut rng, &origin),
        origin,
        destination,
    };
    let pdus: Vec<String> = match rng.below(3) {
        0 => vec![],
        _ => (0..1 + rng.below(2)).map(|_| pdu(&mut rng, &c)).collect(),
    };
    let edus: Vec<String> = match (pdus.is_empty(), rng.below(3)) {
        (true, _) => (0..1 + rng.below(2)).map(|_| edu(&mut rng, &c)).collect(),
        (false, 0) => vec![edu(&mut rng, &c)],
        _ => vec![],
    };
    let ts = ts(&mut rng);
    let edus = if edus.is_empty() {
        String::new()
    } else {
        format!(r#""edus":[{}],"#, edus.join(","))
    };
    let body = format!(
        r#"{{{edus}"origin":"{}","origin_server_ts":{ts},"pdus":[{}]}}"#,
        c.origin,
        pdus.join(",")
    );
    let sender = (rng.below(3) == 0).then(|| SporeAddress {
        capability: (rng.below(4) != 0).then(|| CapabilityId(rng.bytes())),
        mailbox_relays: (0..1 + rng.below(4) / 3)
            .map(|_| RelayId(rng.bytes()))
            .collect(),
        mailbox_key: rng.bytes(),
    });
    let young = rng.below(2) == 0;
    let sequence = rng.below(if young { 300 } else { 100_000 });
    let server_keys =
        (rng.below(5) == 0).then(|| key_response(&mut rng, &c.origin, &c.key_id).into_bytes());
    Bundle {
        origin: c.origin.clone(),
        sender,
        server_keys,
        body: BundleBody::Request {
            request_id: rng.bytes(),
            sequence: Some(sequence),
            request: FederationRequest {
                method: "PUT".into(),
                path: format!(
                    "/_matrix/federation/v1/send/{}",
                    ts - rng.below(100_000_000)
                ),
                headers: vec![
                    (
                        "authorization".into(),
                        format!(
                            r#"X-Matrix origin="{}",destination="{}",key="{}",sig="{}""#,
                            c.origin,
                            c.destination,
                            c.key_id,
                            rng.b64(86, false)
                        ),
                    ),
                    ("content-type".into(), "application/json".into()),
                    (
                        "user-agent".into(),
                        format!("Synapse/1.{}.{}", 140 + rng.below(30), rng.below(4)),
                    ),
                ],
                body: body.into_bytes(),
            },
            reply_surbs: vec![],
        },
    }
}
