//! Bundles: what one federation message is, and how it becomes a padded, size-classed blob.
//!
//! A [`Bundle`] carries one opaque, X-Matrix-signed federation request (or its response, or a
//! cover loop message) plus what an offline recipient needs to act on it: the sender's Spore
//! address to answer to, and the origin's self-signed server keys to verify the signature
//! without contacting the origin.
//!
//! The pipeline on the sending side is [`pack`]: encode → zstd → `u32 length || compressed ||
//! zeros` up to the smallest size class; the receiving side is [`unpack`]. zstd starts from
//! [`TRAINED_DICTIONARY`] (the top two bits of the length field say so; a message packed
//! with the earlier [`FEDERATION_DICTIONARY`], or with none, still unpacks): a small
//! transaction is mostly the same few hundred bytes of field names, and a forward fragment
//! carries under 500 bytes, so these decide whether a typing notification, a receipt or a
//! short message is one packet or two. Size classes are a
//! power-of-two number of fragments, so an observer of the fragment count (a mailbox relay, or
//! anyone counting packets) learns only the class, never the exact size.
//!
//! Encoding (version 1, all integers big-endian):
//!
//! ```text
//! bundle   = version:u8 origin:str16 [sender:SporeAddress]? [server_keys:bytes32]? body
//! [x]?     = 0 | 1 x
//! body     = 1 request
//!          | 4 sequence:u64 request
//!          | 5 sequence:u64 request-without-id
//!          | 2 request_id:16 status:u16 headers body:bytes32
//!          | 3 nonce:16
//! request  = request_id:16 request-without-id
//! request-without-id = method:str8 path:str16 headers body:bytes32 n:u8 n*(SURB_SIZE bytes)
//! headers  = n:u8 n*(name:str16 value:str16)
//! ```
//!
//! Tag 4 is a request with the origin's send-order number for this destination (see
//! [`BundleBody::Request::sequence`]); a request without one keeps tag 1, so bundles written
//! before sequence numbers existed (in a durable inbox or outbox) still decode. Tag 5 is a
//! sequenced request whose request id is [`sequenced_request_id`] of its number, so the id is
//! not written: 16 random bytes that nothing compresses, in every transaction (which the
//! recipient deduplicates by its Matrix `txnId`, not by the request id).

use std::fmt;

use crate::codec::{Reader, Writer};
use crate::error::{ApiMisuse, InvalidMessage, Result};
use crate::ids::SporeAddress;
use crate::params::{MAX_FRAGMENTS, REPLY_FRAGMENT_DATA_SIZE, SURB_SIZE};

/// Longest HTTP method accepted (`OPTIONS` is 7).
pub const MAX_METHOD_LEN: usize = 16;
/// Longest request path, query string included.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Most headers on one request or response.
pub const MAX_HEADERS: usize = 128;
/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header value (an `Authorization: X-Matrix …` value is a few hundred bytes).
pub const MAX_HEADER_VALUE_LEN: usize = 16 * 1024;
/// Largest request or response body. A transaction is at most 50 PDUs and 100 EDUs of at most
/// 64 KiB each, about 9.6 MiB.
pub const MAX_BODY: usize = 12 * 1024 * 1024;
/// Longest Matrix server name (the spec's limit for a DNS name is 255).
pub const MAX_ORIGIN_LEN: usize = 255;
/// Largest `/_matrix/key/v2/server` document carried along.
pub const MAX_SERVER_KEYS_LEN: usize = 64 * 1024;
/// Most SURBs a request carries for its response.
pub const MAX_REPLY_SURBS: usize = 64;
/// Decompression output cap: above the largest valid encoding (about 14.2 MiB), so every valid
/// bundle fits, and small enough that a zstd bomb costs at most this much memory.
pub const MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;
/// zstd level: level 3 is zstd's default, fast enough for a phone and within a few percent of
/// higher levels on JSON.
pub const COMPRESSION_LEVEL: i32 = 3;

/// Largest padded message: the largest size class on the widest channel (replies).
pub const MAX_PADDED_LEN: usize = MAX_FRAGMENTS as usize * REPLY_FRAGMENT_DATA_SIZE;

const VERSION: u8 = 1;
const TAG_REQUEST: u8 = 1;
const TAG_RESPONSE: u8 = 2;
const TAG_LOOP: u8 = 3;
const TAG_SEQUENCED_REQUEST: u8 = 4;
const TAG_SEQUENCED_REQUEST_IMPLICIT_ID: u8 = 5;

/// The request id a sequenced request may take instead of a random one: derived from its
/// send-order number, so that its bundle need not carry it (tag 5). Unique per sender and
/// destination as long as the numbering is (it is durable); a sender uses it only where the
/// recipient does not deduplicate by request id (transactions, deduplicated by `txnId`).
pub fn sequenced_request_id(sequence: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"sequence");
    id[8..].copy_from_slice(&sequence.to_be_bytes());
    id
}
/// The `u32` compressed-length field in front of a packed message.
const LENGTH_FIELD: usize = 4;
/// The top two bits of the length field say what zstd started from; every valid length is
/// far below them ([`MAX_PADDED_LEN`]). `00`: nothing (before dictionaries).
const DICTIONARY_BITS: u32 = 0b11 << 30;
/// `10`: [`FEDERATION_DICTIONARY`] (read, no longer written).
const DICTIONARY_FLAG: u32 = 0b10 << 30;
/// `11`: [`TRAINED_DICTIONARY`] (written since issue 17's address-once change). A reader
/// from before it masks only the top bit, reads a length beyond [`MAX_PADDED_LEN`] and
/// refuses the message cleanly.
const TRAINED_DICTIONARY_FLAG: u32 = 0b11 << 30;
const _: () = assert!(MAX_PADDED_LEN < (1 << 30));

/// What zstd starts from when it compresses a bundle: the strings that recur in federation
/// traffic (X-Matrix headers, transaction, event and EDU field names, a key response's), so
/// that a small message pays for its own content only. A raw-content dictionary: zstd matches
/// against it as if it preceded the message. The most common strings come last (nearest,
/// cheapest to reference). Changing a byte of it is a protocol change: a new flag value
/// must then name the new dictionary.
pub const FEDERATION_DICTIONARY: &[u8] = concat!(
    r#"{"old_verify_keys":{},"server_name":"","signatures":{"":{"ed25519:"#,
    r#""}},"valid_until_ts":,"verify_keys":{"ed25519:":{"key":""}}}"#,
    r#"{"type":"m.room.encrypted","content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":""#,
    r#"","device_id":"","sender_key":"","session_id":""}"#,
    r#"{"edu_type":"m.direct_to_device","content":{"message_id":"","messages":{"@"#,
    r#"{"edu_type":"m.device_list_update","content":{"device_id":"","prev_id":[],"stream_id":,"user_id":"@"#,
    r#"{"edu_type":"m.presence","content":{"push":[{"currently_active":true,"last_active_ago":,"presence":"online","user_id":"@"#,
    r#"{"content":{"m.relates_to":{"event_id":"$","key":"","rel_type":"m.annotation"}},"type":"m.reaction"#,
    r#"{"content":{"displayname":"","membership":"join"},"state_key":"@","type":"m.room.member","prev_state":[]"#,
    r#"{"edu_type":"m.receipt","content":{"!":{"m.read":{"@":{"data":{"ts":},"event_ids":["$"]}}}}}"#,
    r#"{"edu_type":"m.typing","content":{"room_id":"!","typing":true,"user_id":"@"}}"#,
    r#"{"auth_events":["$","$","$"],"content":{"body":"","msgtype":"m.text"},"depth":,"hashes":{"sha256":""},"#,
    r#""origin":"","origin_server_ts":,"prev_events":["$"],"room_id":"!","sender":"@","#,
    r#""signatures":{"":{"ed25519:a_"}},"type":"m.room.message","unsigned":{"age_ts":}}"#,
    r#"{"origin":"","origin_server_ts":,"pdus":[],"edus":[]}"#,
    "user-agentSynapse/1.content-typeapplication/json",
    r#"authorizationX-Matrix origin="",destination="",key="ed25519:a_",sig="""#,
    "PUT/_matrix/federation/v1/send/",
)
.as_bytes();

/// What zstd starts from when it compresses a bundle now: a dictionary trained (zstd's
/// trainer, 6 KiB) on synthetic transactions shaped like Synapse's (canonical JSON, room
/// version 10 events, receipts, typing, presence, device list updates, key responses, the
/// sidecar's headers; see `bundle_samples.rs`). Unlike [`FEDERATION_DICTIONARY`], which only
/// gives zstd strings to refer to, it also carries entropy tables fitted to such traffic: a
/// small bundle no longer pays for its own Huffman and sequence tables, and base64 digests
/// cost close to their six bits a character. On 300 held-out samples, 16% fewer fragments.
/// Changing a byte of it is a protocol change: a new flag value must then name the new one.
pub const TRAINED_DICTIONARY: &[u8] = include_bytes!("federation_trained.dict");

/// Upper bound on an encoding that passes every field limit.
const MAX_ENCODED_LEN: usize = 1
    + 2
    + MAX_ORIGIN_LEN
    + 1
    + (2 + 2 * 32 + 32)
    + 1
    + 4
    + MAX_SERVER_KEYS_LEN
    + 1
    + 8
    + 16
    + 1
    + MAX_METHOD_LEN
    + 2
    + MAX_PATH_LEN
    + 1
    + MAX_HEADERS * (2 + MAX_HEADER_NAME_LEN + 2 + MAX_HEADER_VALUE_LEN)
    + 4
    + MAX_BODY
    + 1
    + MAX_REPLY_SURBS * SURB_SIZE;
const _: () = assert!(MAX_ENCODED_LEN <= MAX_DECOMPRESSED);

/// A federation request exactly as the origin homeserver signed it. Spore never interprets or
/// re-signs it: the `Authorization: X-Matrix …` header travels in `headers` and the recipient
/// verifies it as if the request had come directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRequest {
    pub method: String,
    /// Path and query, e.g. `/_matrix/federation/v1/send/123`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer to a [`FederationRequest`], carried back on the request's reply SURBs, or, when
/// it does not fit them, as an ordinary forward message to the requester's mailbox (the
/// address in the request bundle's `sender`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationResponse {
    /// HTTP status, `100..=599`.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One federation message: the unit that is packed, fragmented and reassembled.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The sender's Matrix server name.
    pub origin: String,
    /// Where the recipient can answer. Only ever travels inside the seal, so relays never see
    /// who sent a message.
    pub sender: Option<SporeAddress>,
    /// The origin's self-signed `/_matrix/key/v2/server` JSON, so a recipient can verify the
    /// X-Matrix signature while the origin is offline.
    pub server_keys: Option<Vec<u8>>,
    pub body: BundleBody,
}

/// What a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleBody {
    /// A request; `reply_surbs` (each exactly [`SURB_SIZE`] bytes, at most
    /// [`MAX_REPLY_SURBS`]) let the recipient answer without learning where the sender is.
    Request {
        request_id: [u8; 16],
        /// The origin's send order for this destination: 0, 1, 2… per (origin, destination),
        /// assigned durably by the sender to fire-and-forget requests (transactions). The
        /// recipient hands them to its homeserver in this order although the mixnet's random
        /// delays reorder them. `None` for requests that wait for an answer, which need no
        /// order.
        sequence: Option<u64>,
        request: FederationRequest,
        reply_surbs: Vec<Vec<u8>>,
    },
    /// The response to the request with the same `request_id`.
    Response {
        request_id: [u8; 16],
        response: FederationResponse,
    },
    /// Cover traffic: a message the client sends to itself to test its routes and to look
    /// like real traffic.
    Loop { nonce: [u8; 16] },
}

impl fmt::Debug for Bundle {
    // Origins, addresses and keys are metadata: debug output shows only the body's shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.body {
            BundleBody::Request { .. } => "Request",
            BundleBody::Response { .. } => "Response",
            BundleBody::Loop { .. } => "Loop",
        };
        f.debug_struct("Bundle")
            .field("body", &kind)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// The version-1 encoding. Only a bundle that passes [`Bundle::check_limits`] (as [`pack`]
    /// checks) is guaranteed to decode back to itself; an over-long field or a SURB of the
    /// wrong size gives bytes that [`Bundle::decode`] rejects or reads differently.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        // A u16 prefix (not u8) so that an over-long origin cannot be silently truncated.
        w.u8(VERSION).string_u16(&self.origin);
        match &self.sender {
            Some(address) => {
                w.bool(true);
                address.encode(&mut w);
            }
            None => {
                w.bool(false);
            }
        }
        match &self.server_keys {
            Some(keys) => w.bool(true).bytes_u32(keys),
            None => w.bool(false),
        };
        match &self.body {
            BundleBody::Request {
                request_id,
                sequence,
                request,
                reply_surbs,
            } => {
                match sequence {
                    Some(n) if *request_id == sequenced_request_id(*n) => {
                        w.u8(TAG_SEQUENCED_REQUEST_IMPLICIT_ID).u64(*n)
                    }
                    Some(n) => w.u8(TAG_SEQUENCED_REQUEST).u64(*n).bytes(request_id),
                    None => w.u8(TAG_REQUEST).bytes(request_id),
                };
                w.bytes_u8(request.method.as_bytes())
                    .string_u16(&request.path);
                encode_headers(&mut w, &request.headers);
                w.bytes_u32(&request.body);
                w.u8(u8::try_from(reply_surbs.len()).unwrap_or(u8::MAX));
                for surb in reply_surbs.iter().take(usize::from(u8::MAX)) {
                    w.bytes(surb);
                }
            }
            BundleBody::Response {
                request_id,
                response,
            } => {
                w.u8(TAG_RESPONSE).bytes(request_id).u16(response.status);
                encode_headers(&mut w, &response.headers);
                w.bytes_u32(&response.body);
            }
            BundleBody::Loop { nonce } => {
                w.u8(TAG_LOOP).bytes(nonce);
            }
        }
        w.into_vec()
    }

    /// Parses a version-1 encoding, enforcing every limit and rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Bundle> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(InvalidMessage::Unknown {
                what: "bundle version",
                value: version.into(),
            }
            .into());
        }
        let origin = r.string_u16(MAX_ORIGIN_LEN)?;
        let sender = if r.bool()? {
            Some(SporeAddress::decode(&mut r)?)
        } else {
            None
        };
        let server_keys = if r.bool()? {
            Some(r.bytes_u32(MAX_SERVER_KEYS_LEN)?.to_vec())
        } else {
            None
        };
        let body = match r.u8()? {
            tag @ (TAG_REQUEST | TAG_SEQUENCED_REQUEST | TAG_SEQUENCED_REQUEST_IMPLICIT_ID) => {
                let sequence = if tag == TAG_REQUEST {
                    None
                } else {
                    Some(r.u64()?)
                };
                let request_id = match sequence {
                    Some(n) if tag == TAG_SEQUENCED_REQUEST_IMPLICIT_ID => sequenced_request_id(n),
                    _ => r.array()?,
                };
                let method = utf8(r.bytes_u8(MAX_METHOD_LEN)?, "method")?;
                let path = r.string_u16(MAX_PATH_LEN)?;
                let headers = decode_headers(&mut r)?;
                let body = r.bytes_u32(MAX_BODY)?.to_vec();
                let n = usize::from(r.u8()?);
                if n > MAX_REPLY_SURBS {
                    return Err(InvalidMessage::BadValue("reply SURB count").into());
                }
                let mut reply_surbs = Vec::with_capacity(n);
                for _ in 0..n {
                    reply_surbs.push(r.take(SURB_SIZE)?.to_vec());
                }
                BundleBody::Request {
                    request_id,
                    sequence,
                    request: FederationRequest {
                        method,
                        path,
                        headers,
                        body,
                    },
                    reply_surbs,
                }
            }
            TAG_RESPONSE => {
                let request_id = r.array()?;
                let status = r.u16()?;
                if !(100..=599).contains(&status) {
                    return Err(InvalidMessage::BadValue("http status").into());
                }
                let headers = decode_headers(&mut r)?;
                let body = r.bytes_u32(MAX_BODY)?.to_vec();
                BundleBody::Response {
                    request_id,
                    response: FederationResponse {
                        status,
                        headers,
                        body,
                    },
                }
            }
            TAG_LOOP => BundleBody::Loop { nonce: r.array()? },
            other => {
                return Err(InvalidMessage::Unknown {
                    what: "bundle body",
                    value: other.into(),
                }
                .into());
            }
        };
        r.finish()?;
        Ok(Bundle {
            origin,
            sender,
            server_keys,
            body,
        })
    }

    /// Checks every field against the limits [`Bundle::decode`] enforces, so that the sender
    /// learns about an unsendable bundle instead of the recipient silently dropping it.
    pub fn check_limits(&self) -> Result<()> {
        fn limit(field: &'static str, len: usize, max: usize) -> Result<()> {
            if len > max {
                Err(ApiMisuse::FieldTooLong { field, limit: max }.into())
            } else {
                Ok(())
            }
        }
        fn headers(h: &[(String, String)]) -> Result<()> {
            limit("header count", h.len(), MAX_HEADERS)?;
            for (name, value) in h {
                limit("header name", name.len(), MAX_HEADER_NAME_LEN)?;
                limit("header value", value.len(), MAX_HEADER_VALUE_LEN)?;
            }
            Ok(())
        }
        limit("origin", self.origin.len(), MAX_ORIGIN_LEN)?;
        if let Some(address) = &self.sender {
            let n = address.mailbox_relays.len();
            if n == 0 || n > SporeAddress::MAX_MAILBOX_RELAYS {
                return Err(ApiMisuse::InvalidArgument("sender mailbox relay count").into());
            }
        }
        if let Some(keys) = &self.server_keys {
            limit("server keys", keys.len(), MAX_SERVER_KEYS_LEN)?;
        }
        match &self.body {
            BundleBody::Request {
                request,
                reply_surbs,
                ..
            } => {
                limit("method", request.method.len(), MAX_METHOD_LEN)?;
                limit("path", request.path.len(), MAX_PATH_LEN)?;
                headers(&request.headers)?;
                limit("body", request.body.len(), MAX_BODY)?;
                limit("reply SURB count", reply_surbs.len(), MAX_REPLY_SURBS)?;
                if reply_surbs.iter().any(|s| s.len() != SURB_SIZE) {
                    return Err(ApiMisuse::InvalidArgument("reply SURB has the wrong size").into());
                }
            }
            BundleBody::Response { response, .. } => {
                if !(100..=599).contains(&response.status) {
                    return Err(ApiMisuse::InvalidArgument("http status").into());
                }
                headers(&response.headers)?;
                limit("body", response.body.len(), MAX_BODY)?;
            }
            BundleBody::Loop { .. } => {}
        }
        Ok(())
    }
}

fn encode_headers(w: &mut Writer, headers: &[(String, String)]) {
    w.u8(u8::try_from(headers.len()).unwrap_or(u8::MAX));
    for (name, value) in headers.iter().take(usize::from(u8::MAX)) {
        w.string_u16(name).string_u16(value);
    }
}

fn decode_headers(r: &mut Reader<'_>) -> Result<Vec<(String, String)>> {
    let n = usize::from(r.u8()?);
    if n > MAX_HEADERS {
        return Err(InvalidMessage::BadValue("header count").into());
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string_u16(MAX_HEADER_NAME_LEN)?;
        let value = r.string_u16(MAX_HEADER_VALUE_LEN)?;
        headers.push((name, value));
    }
    Ok(headers)
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, InvalidMessage> {
    String::from_utf8(bytes.to_vec()).map_err(|_| InvalidMessage::BadValue(what))
}

/// The smallest size class (a power-of-two number of `data_size` fragments, at most
/// [`MAX_FRAGMENTS`]) that holds `len` bytes.
fn size_class(len: usize, data_size: usize) -> Option<usize> {
    std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|n| *n <= usize::from(MAX_FRAGMENTS))
        .filter_map(|n| n.checked_mul(data_size))
        .find(|capacity| len <= *capacity)
}

/// Encodes, compresses and pads `bundle` to the smallest size class for fragments carrying
/// `data_size` bytes each ([`crate::params::FRAGMENT_DATA_SIZE`] for forward messages,
/// [`crate::params::REPLY_FRAGMENT_DATA_SIZE`] for replies). The result's length is always
/// `2^k * data_size`, ready for [`crate::fragment::split`].
///
/// Fails with [`ApiMisuse::MessageTooLarge`] if even [`MAX_FRAGMENTS`] fragments cannot hold
/// it, and with [`ApiMisuse::FieldTooLong`] if a field exceeds its limit.
///
/// ```
/// use spore_protocol::bundle::{self, Bundle, BundleBody, FederationRequest};
/// use spore_protocol::params::FRAGMENT_DATA_SIZE;
///
/// let bundle = Bundle {
///     origin: "a.example".into(),
///     sender: None,
///     server_keys: None,
///     body: BundleBody::Request {
///         request_id: [1; 16],
///         sequence: None,
///         request: FederationRequest {
///             method: "PUT".into(),
///             path: "/_matrix/federation/v1/send/1".into(),
///             headers: vec![("Authorization".into(), "X-Matrix origin=...".into())],
///             body: br#"{"pdus":[],"edus":[]}"#.to_vec(),
///         },
///         reply_surbs: vec![],
///     },
/// };
/// let padded = bundle::pack(&bundle, FRAGMENT_DATA_SIZE).unwrap();
/// assert_eq!(padded.len(), FRAGMENT_DATA_SIZE); // one fragment
/// assert_eq!(bundle::unpack(&padded).unwrap(), bundle);
/// ```
pub fn pack(bundle: &Bundle, data_size: usize) -> Result<Vec<u8>> {
    if data_size == 0 {
        return Err(ApiMisuse::InvalidArgument("data_size must not be zero").into());
    }
    bundle.check_limits()?;
    let encoded = bundle.encode();
    let compressed = compress_with_trained_dictionary(&encoded)
        .map_err(|_| ApiMisuse::InvalidArgument("zstd compression failed"))?;
    let framed_len = compressed.len().saturating_add(LENGTH_FIELD);
    let too_large = ApiMisuse::MessageTooLarge {
        got: framed_len,
        limit: usize::from(MAX_FRAGMENTS).saturating_mul(data_size),
    };
    let padded_len = size_class(framed_len, data_size).ok_or(too_large.clone())?;
    let length = u32::try_from(compressed.len()).map_err(|_| too_large)?;

    let mut w = Writer::with_capacity(padded_len);
    w.u32(length | TRAINED_DICTIONARY_FLAG).bytes(&compressed);
    let mut padded = w.into_vec();
    padded.resize(padded_len, 0);
    Ok(padded)
}

/// Reverses [`pack`]: checks the length field and that the padding is all zero, decompresses
/// with a hard cap of [`MAX_DECOMPRESSED`] bytes, and decodes.
///
/// The compressed part must be exactly one zstd frame that declares its content size (as
/// [`pack`] writes it): the declared size is checked against the cap before anything is
/// allocated, so a zstd bomb fails cleanly.
pub fn unpack(padded: &[u8]) -> Result<Bundle> {
    if padded.len() > MAX_PADDED_LEN {
        return Err(InvalidMessage::TooLong {
            limit: MAX_PADDED_LEN,
        }
        .into());
    }
    let mut r = Reader::new(padded);
    let length = r.u32()?;
    let dictionary = match length & DICTIONARY_BITS {
        0 => None,
        DICTIONARY_FLAG => Some(FEDERATION_DICTIONARY),
        TRAINED_DICTIONARY_FLAG => Some(TRAINED_DICTIONARY),
        _ => return Err(InvalidMessage::BadValue("dictionary flag").into()),
    };
    let length = usize::try_from(length & !DICTIONARY_BITS).unwrap_or(usize::MAX);
    if length > MAX_PADDED_LEN {
        return Err(InvalidMessage::TooLong {
            limit: MAX_PADDED_LEN,
        }
        .into());
    }
    let compressed = r.take(length)?;
    let padding = r.take(r.remaining())?;
    if padding.iter().any(|b| *b != 0) {
        return Err(InvalidMessage::BadValue("padding").into());
    }
    let encoded = decompress(compressed, dictionary)?;
    Bundle::decode(&encoded)
}

/// zstd with [`TRAINED_DICTIONARY`], without the dictionary id in the frame header (four
/// bytes; the length field's flag names the dictionary).
fn compress_with_trained_dictionary(encoded: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::with_dictionary(COMPRESSION_LEVEL, TRAINED_DICTIONARY)?;
    c.set_parameter(zstd::zstd_safe::CParameter::DictIdFlag(false))?;
    c.compress(encoded)
}

fn decompress(compressed: &[u8], dictionary: Option<&[u8]>) -> Result<Vec<u8>, InvalidMessage> {
    use zstd::zstd_safe;

    let frame_len = zstd_safe::find_frame_compressed_size(compressed)
        .map_err(|_| InvalidMessage::Decompress)?;
    if frame_len != compressed.len() {
        // A second frame (or garbage) after the first: not something `pack` produces.
        return Err(InvalidMessage::Decompress);
    }
    let declared = match zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
        _ => return Err(InvalidMessage::Decompress),
    };
    if declared > MAX_DECOMPRESSED {
        return Err(InvalidMessage::TooLong {
            limit: MAX_DECOMPRESSED,
        });
    }
    // The output buffer is `declared` bytes and zstd never writes past it.
    let out = match dictionary {
        Some(dictionary) => zstd::bulk::Decompressor::with_dictionary(dictionary),
        None => zstd::bulk::Decompressor::new(),
    }
    .and_then(|mut d| d.decompress(compressed, declared))
    .map_err(|_| InvalidMessage::Decompress)?;
    if out.len() != declared {
        return Err(InvalidMessage::Decompress);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::fragment::{self, Fragment, Reassembler};
    use crate::ids::RelayId;
    use crate::params::FRAGMENT_DATA_SIZE;
    use proptest::prelude::*;
    use rand::seq::SliceRandom;
    use std::time::Instant;

    /// A typing notification as Synapse sends it through a sidecar: random keys, ids and
    /// signature (as incompressible as the real ones), and `keys` as the key response.
    fn typing_bundle(keys: Option<Vec<u8>>) -> Bundle {
        let bytes = |n: usize, seed: u64| -> Vec<u8> { noise(n, seed).into_bytes() };
        let key = |seed: u64| -> [u8; 32] { bytes(32, seed).try_into().unwrap() };
        let body = format!(
            r#"{{"origin":"hs-a.example","origin_server_ts":1764930000000,"pdus":[],"edus":[{{"edu_type":"m.typing","content":{{"room_id":"!{}:hs-a.example","user_id":"@alice:hs-a.example","typing":true}}}}]}}"#,
            noise(18, 11)
        );
        Bundle {
            origin: "hs-a.example".into(),
            sender: Some(SporeAddress {
                capability: None,
                mailbox_relays: vec![RelayId(key(12))],
                mailbox_key: key(13),
            }),
            server_keys: keys,
            body: BundleBody::Request {
                request_id: sequenced_request_id(41),
                sequence: Some(41),
                request: FederationRequest {
                    method: "PUT".into(),
                    path: "/_matrix/federation/v1/send/1764930000123".into(),
                    headers: vec![
                        (
                            "authorization".into(),
                            format!(
                                r#"X-Matrix origin="hs-a.example",destination="hs-b.example",key="ed25519:a_Xy1z",sig="{}""#,
                                noise(86, 15)
                            ),
                        ),
                        ("content-type".into(), "application/json".into()),
                        ("user-agent".into(), "Synapse/1.163.2".into()),
                    ],
                    body: body.into_bytes(),
                },
                reply_surbs: vec![],
            },
        }
    }

    fn key_response() -> Vec<u8> {
        format!(
            r#"{{"old_verify_keys":{{}},"server_name":"hs-a.example","signatures":{{"hs-a.example":{{"ed25519:a_Xy1z":"{}"}}}},"valid_until_ts":1765016400000,"verify_keys":{{"ed25519:a_Xy1z":{{"key":"{}"}}}}}}"#,
            noise(86, 16),
            noise(43, 17)
        )
        .into_bytes()
    }

    /// Issue 17: without our key response and with the dictionary, a typing notification is
    /// one packet; without the dictionary it was two (the figures in docs/benchmarks.md).
    #[test]
    fn the_dictionary_makes_a_typing_notification_one_packet() {
        let plain = |b: &Bundle| zstd::bulk::compress(&b.encode(), COMPRESSION_LEVEL).unwrap();
        for keys in [None, Some(key_response())] {
            let b = typing_bundle(keys.clone());
            let packed = pack(&b, FRAGMENT_DATA_SIZE).unwrap();
            assert_eq!(unpack(&packed).unwrap(), b);
            let with_dictionary =
                u32::from_be_bytes(packed[..4].try_into().unwrap()) & !DICTIONARY_BITS;
            let without = plain(&b).len();
            eprintln!(
                "typing EDU bundle, key response {}: encoded {} B, zstd {without} B, with the dictionary {with_dictionary} B; {} fragment(s) of {FRAGMENT_DATA_SIZE} B",
                if keys.is_some() {
                    "attached"
                } else {
                    "left out"
                },
                b.encode().len(),
                packed.len() / FRAGMENT_DATA_SIZE
            );
            assert!((with_dictionary as usize) < without);
        }
        let keyless = pack(&typing_bundle(None), FRAGMENT_DATA_SIZE).unwrap();
        assert_eq!(keyless.len(), FRAGMENT_DATA_SIZE, "one packet");
    }

    /// A transaction carrying one `m.room.message` event exactly as Synapse 1.163 sends it
    /// (room version 10): canonical JSON, no `origin` in the event, three auth events and one
    /// prev event (43-character unpadded base64 SHA-256 digests), the content hash, the
    /// event's ed25519 signature, `unsigned.age`, an 18-letter room id, and the X-Matrix
    /// header, content type and user agent the sidecar carries. Digests and signatures are
    /// random base64, which is what they are. `text` is the message the user typed.
    fn message_event_bundle(text: &str, sender: Option<SporeAddress>) -> Bundle {
        // Event ids are URL-safe base64 (room versions 4 and later).
        let event_id = |seed: u64| digest_b64(43, seed).replace('+', "-").replace('/', "_");
        let room: String = digest_b64(64, 26)
            .chars()
            .filter(char::is_ascii_alphabetic)
            .take(18)
            .collect();
        let body = format!(
            r#"{{"origin":"hs-a.example","origin_server_ts":1764930000123,"pdus":[{{"auth_events":["${}","${}","${}"],"content":{{"body":"{text}","m.mentions":{{}},"msgtype":"m.text"}},"depth":1042,"hashes":{{"sha256":"{}"}},"origin_server_ts":1764930000098,"prev_events":["${}"],"room_id":"!{room}:hs-a.example","sender":"@alice:hs-a.example","signatures":{{"hs-a.example":{{"ed25519:a_Xy1z":"{}"}}}},"type":"m.room.message","unsigned":{{"age":25}}}}]}}"#,
            event_id(21),
            event_id(22),
            event_id(23),
            digest_b64(43, 24),
            event_id(25),
            digest_b64(86, 27)
        );
        let mut b = typing_bundle(None);
        b.sender = sender;
        if let BundleBody::Request {
            request,
            request_id,
            ..
        } = &mut b.body
        {
            // What the transport gives a transaction (see `sequenced_request_id`).
            *request_id = sequenced_request_id(41);
            request.path = "/_matrix/federation/v1/send/1764929990001".into();
            request.headers[0].1 = format!(
                r#"X-Matrix origin="hs-a.example",destination="hs-b.example",key="ed25519:a_Xy1z",sig="{}""#,
                digest_b64(86, 29)
            );
            request.body = body.into_bytes();
        }
        b
    }

    /// The address a sidecar hands one peer: its mailbox relay, its mailbox key and that
    /// peer's capability (version 2), as random as the real ones.
    fn address_with_capability() -> SporeAddress {
        let key = |seed: u64| -> [u8; 32] { random_bytes(32, seed).try_into().unwrap() };
        SporeAddress {
            capability: Some(crate::capability::CapabilityId(key(31))),
            mailbox_relays: vec![RelayId(key(32))],
            mailbox_key: key(33),
        }
    }

    fn compressed_len(packed: &[u8]) -> usize {
        (u32::from_be_bytes(packed[..4].try_into().unwrap()) & !DICTIONARY_BITS) as usize
    }

    /// Issue 17: what a message event's bundle costs once the peer holds our key response,
    /// with and without our address (version 2, with the peer's capability). The address is
    /// about a hundred random bytes, and random bytes in zstd's literals also cost the base64
    /// around them: leaving it out saves more than its size. Without it a short message is
    /// one packet; a sentence or two is still two: the event's four event ids, content hash
    /// and signature and the X-Matrix signature are 387 characters of base64, some 290 bytes
    /// that nothing compresses, and a forward fragment carries 494 (docs/synapse.md).
    #[test]
    fn without_the_address_a_short_message_event_is_one_packet() {
        let text = "Are we still on for the meeting at 3? I'll bring the slides.";
        let mut sizes = Vec::new();
        for (label, sender) in [
            ("address attached", Some(address_with_capability())),
            ("address left out", None),
        ] {
            let b = message_event_bundle(text, sender);
            let packed = pack(&b, FRAGMENT_DATA_SIZE).unwrap();
            assert_eq!(unpack(&packed).unwrap(), b);
            eprintln!(
                "message event bundle ({} B of text), key response left out, {label}: encoded {} B, with the dictionary {} B; {} fragment(s) of {FRAGMENT_DATA_SIZE} B",
                text.len(),
                b.encode().len(),
                compressed_len(&packed),
                packed.len() / FRAGMENT_DATA_SIZE
            );
            sizes.push(compressed_len(&packed));
        }
        // Without the address, a short message is one packet; how long one can be depends
        // on how well the text compresses.
        let long = "Are we still on for the meeting at 3? I'll bring the slides, and could you book the room on the second floor?";
        let fits = (0..=long.len())
            .rev()
            .find(|n| {
                pack(&message_event_bundle(&long[..*n], None), FRAGMENT_DATA_SIZE)
                    .unwrap()
                    .len()
                    == FRAGMENT_DATA_SIZE
            })
            .unwrap();
        eprintln!(
            "without the address, one packet holds a message event with up to {fits} B of this text: {:?}",
            &long[..fits]
        );
        assert!(fits >= "See you at 3!".len());
        let short = message_event_bundle("See you at 3!", None);
        assert_eq!(
            pack(&short, FRAGMENT_DATA_SIZE).unwrap().len(),
            FRAGMENT_DATA_SIZE,
            "one packet"
        );
        let address_len = address_with_capability().to_bytes().len();
        assert_eq!(address_len, 98);
        assert!(
            sizes[0] - sizes[1] > address_len,
            "the address cost {} B compressed",
            sizes[0] - sizes[1]
        );
    }

    #[test]
    fn bundles_packed_before_the_dictionary_still_unpack() {
        let b = typing_bundle(Some(key_response()));
        let compressed = zstd::bulk::compress(&b.encode(), COMPRESSION_LEVEL).unwrap();
        let mut old = framed(&compressed, 0);
        old.resize(size_class(old.len(), FRAGMENT_DATA_SIZE).unwrap(), 0);
        assert_eq!(unpack(&old).unwrap(), b);
        // Packed with the first (raw) dictionary, as the build before the trained one did.
        let compressed =
            zstd::bulk::Compressor::with_dictionary(COMPRESSION_LEVEL, FEDERATION_DICTIONARY)
                .unwrap()
                .compress(&b.encode())
                .unwrap();
        let mut v1 = framed(&compressed, 0);
        v1[0] |= 0x80;
        v1.resize(size_class(v1.len(), FRAGMENT_DATA_SIZE).unwrap(), 0);
        assert_eq!(unpack(&v1).unwrap(), b);
        // A frame read with the wrong dictionary, or none, is refused, not misread.
        let packed = pack(&b, FRAGMENT_DATA_SIZE).unwrap();
        assert_eq!(packed[0] >> 6, 0b11, "written with the trained dictionary");
        for top in [0x00, 0x40, 0x80] {
            let mut wrong = packed.clone();
            wrong[0] = (wrong[0] & 0x3f) | top;
            assert!(unpack(&wrong).is_err());
        }
    }

    /// The trained dictionary is a protocol constant: these bytes, or a new flag value.
    #[test]
    fn the_trained_dictionary_is_pinned() {
        use sha2::{Digest, Sha256};
        assert_eq!(TRAINED_DICTIONARY.len(), 6144);
        assert_eq!(
            hex::encode(Sha256::digest(TRAINED_DICTIONARY)),
            "07bf398f1e6cc3b455ea5cf9616abc22444b712ea17d24c135d622b7a4b27eb1"
        );
    }

    /// Issue 17: on traffic it was not trained on, the trained dictionary takes fewer
    /// fragments than the raw one (and never more for a single bundle's size class).
    #[test]
    fn the_trained_dictionary_saves_fragments_on_held_out_traffic() {
        let raw = |b: &Bundle| {
            zstd::bulk::Compressor::with_dictionary(COMPRESSION_LEVEL, FEDERATION_DICTIONARY)
                .unwrap()
                .compress(&b.encode())
                .unwrap()
                .len()
        };
        let fragments = |len: usize| {
            size_class(len + LENGTH_FIELD, FRAGMENT_DATA_SIZE).unwrap() / FRAGMENT_DATA_SIZE
        };
        let (mut bytes_raw, mut bytes_trained, mut frag_raw, mut frag_trained) = (0, 0, 0, 0);
        for b in super::training::held_out() {
            let packed = pack(&b, FRAGMENT_DATA_SIZE).unwrap();
            assert_eq!(unpack(&packed).unwrap(), b);
            bytes_raw += raw(&b);
            bytes_trained += compressed_len(&packed);
            frag_raw += fragments(raw(&b));
            frag_trained += packed.len() / FRAGMENT_DATA_SIZE;
        }
        eprintln!(
            "300 held-out transactions: raw dictionary {bytes_raw} B, {frag_raw} fragments; trained {bytes_trained} B, {frag_trained} fragments"
        );
        assert!(
            frag_trained * 10 < frag_raw * 9,
            "at least 10% fewer fragments"
        );
    }

    fn loop_bundle() -> Bundle {
        Bundle {
            origin: "a.example".into(),
            sender: None,
            server_keys: None,
            body: BundleBody::Loop { nonce: [9; 16] },
        }
    }

    fn request_bundle(body: Vec<u8>, reply_surbs: Vec<Vec<u8>>) -> Bundle {
        Bundle {
            origin: "a.example".into(),
            sender: Some(SporeAddress {
                capability: None,
                mailbox_relays: vec![RelayId([1; 32]), RelayId([2; 32])],
                mailbox_key: [3; 32],
            }),
            server_keys: Some(br#"{"server_name":"a.example"}"#.to_vec()),
            body: BundleBody::Request {
                request_id: [4; 16],
                sequence: None,
                request: FederationRequest {
                    method: "PUT".into(),
                    path: "/_matrix/federation/v1/send/1".into(),
                    headers: vec![(
                        "Authorization".into(),
                        "X-Matrix origin=\"a.example\",key=\"ed25519:1\",sig=\"abc\"".into(),
                    )],
                    body,
                },
                reply_surbs,
            },
        }
    }

    /// Frames `compressed` the way `pack` does, with `pad` zero bytes after it.
    fn framed(compressed: &[u8], pad: usize) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes_u32(compressed);
        let mut v = w.into_vec();
        v.resize(v.len() + pad, 0);
        v
    }

    /// splitmix64 from `seed`: independent streams for different seeds (unlike [`noise`],
    /// whose neighbouring seeds give the same or similar text).
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        fn mix(mut z: u64) -> u64 {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        // Started from a mixed seed: every splitmix stream is a shift of one sequence, and
        // neighbouring plain seeds would be neighbouring shifts (the same bytes, offset).
        let mut x = mix(mix(seed));
        (0..len)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                (mix(x) >> 32) as u8
            })
            .collect()
    }

    /// `len` characters of unpadded base64 of random bytes: a SHA-256 digest (43) or an
    /// ed25519 signature (86) as Matrix writes them.
    fn digest_b64(len: usize, seed: u64) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        random_bytes(len, seed)
            .into_iter()
            .map(|b| ALPHABET[usize::from(b & 63)] as char)
            .collect()
    }

    /// Pseudo-random, nearly incompressible printable text (6 bits of entropy per byte).
    fn noise(len: usize, seed: u64) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x >> 58) as usize] as char
            })
            .collect()
    }

    #[test]
    fn request_round_trips_through_encoding() {
        let b = request_bundle(b"{}".to_vec(), vec![vec![5; SURB_SIZE]; 3]);
        assert_eq!(Bundle::decode(&b.encode()).unwrap(), b);
    }

    #[test]
    fn sequence_number_round_trips_and_unsequenced_requests_keep_their_encoding() {
        let plain = request_bundle(b"{}".to_vec(), vec![]);
        let mut sequenced = plain.clone();
        if let BundleBody::Request { sequence, .. } = &mut sequenced.body {
            *sequence = Some(u64::MAX - 1);
        }
        let bytes = sequenced.encode();
        assert_eq!(bytes.len(), plain.encode().len() + 8);
        assert_eq!(Bundle::decode(&bytes).unwrap(), sequenced);
        assert_eq!(
            unpack(&pack(&sequenced, FRAGMENT_DATA_SIZE).unwrap()).unwrap(),
            sequenced
        );
        // A bundle written before sequence numbers existed still reads, as unsequenced.
        assert_eq!(Bundle::decode(&plain.encode()).unwrap(), plain);
    }

    #[test]
    fn a_sequenced_request_id_is_not_written() {
        let mut b = request_bundle(b"{}".to_vec(), vec![]);
        if let BundleBody::Request {
            sequence,
            request_id,
            ..
        } = &mut b.body
        {
            *sequence = Some(7);
            *request_id = sequenced_request_id(7);
        }
        let implicit = b.encode();
        assert_eq!(Bundle::decode(&implicit).unwrap(), b);
        if let BundleBody::Request { request_id, .. } = &mut b.body {
            *request_id = sequenced_request_id(8);
        }
        let explicit = b.encode();
        assert_eq!(Bundle::decode(&explicit).unwrap(), b, "another id: written");
        assert_eq!(explicit.len(), implicit.len() + 16);
    }

    #[test]
    fn unknown_version_and_body_tag_are_rejected() {
        let mut bytes = loop_bundle().encode();
        bytes[0] = 2;
        assert!(matches!(
            Bundle::decode(&bytes),
            Err(Error::InvalidMessage(InvalidMessage::Unknown { .. }))
        ));
        let mut bytes = loop_bundle().encode();
        let tag = bytes.len() - 17;
        bytes[tag] = 6;
        assert!(Bundle::decode(&bytes).is_err());
    }

    #[test]
    fn too_many_reply_surbs_are_rejected() {
        let b = request_bundle(vec![], vec![vec![0; SURB_SIZE]; MAX_REPLY_SURBS + 1]);
        assert!(Bundle::decode(&b.encode()).is_err());
        assert!(matches!(
            pack(&b, FRAGMENT_DATA_SIZE),
            Err(Error::ApiMisuse(ApiMisuse::FieldTooLong { .. }))
        ));
        let b = request_bundle(vec![], vec![vec![0; SURB_SIZE]; MAX_REPLY_SURBS]);
        assert_eq!(unpack(&pack(&b, FRAGMENT_DATA_SIZE).unwrap()).unwrap(), b);
    }

    #[test]
    fn reply_surb_of_the_wrong_size_is_refused() {
        let b = request_bundle(vec![], vec![vec![0; SURB_SIZE - 1]]);
        assert!(pack(&b, FRAGMENT_DATA_SIZE).is_err());
    }

    #[test]
    fn oversized_fields_are_refused_by_pack_and_decode() {
        let mut b = request_bundle(vec![], vec![]);
        if let BundleBody::Request { request, .. } = &mut b.body {
            request.path = "/".repeat(MAX_PATH_LEN + 1);
        }
        assert_eq!(
            pack(&b, FRAGMENT_DATA_SIZE),
            Err(ApiMisuse::FieldTooLong {
                field: "path",
                limit: MAX_PATH_LEN
            }
            .into())
        );
        assert!(Bundle::decode(&b.encode()).is_err());

        let mut b = loop_bundle();
        b.server_keys = Some(vec![0; MAX_SERVER_KEYS_LEN + 1]);
        assert!(pack(&b, FRAGMENT_DATA_SIZE).is_err());
        assert!(Bundle::decode(&b.encode()).is_err());
    }

    #[test]
    fn over_long_origin_is_never_silently_truncated() {
        let b = Bundle {
            origin: "a".repeat(MAX_ORIGIN_LEN + 45),
            ..loop_bundle()
        };
        assert!(pack(&b, FRAGMENT_DATA_SIZE).is_err());
        assert!(Bundle::decode(&b.encode()).is_err());
    }

    #[test]
    fn invalid_http_status_is_rejected() {
        let b = Bundle {
            body: BundleBody::Response {
                request_id: [0; 16],
                response: FederationResponse {
                    status: 99,
                    headers: vec![],
                    body: vec![],
                },
            },
            ..loop_bundle()
        };
        assert!(pack(&b, FRAGMENT_DATA_SIZE).is_err());
        assert!(Bundle::decode(&b.encode()).is_err());
    }

    #[test]
    fn small_bundle_packs_into_one_fragment() {
        let padded = pack(&loop_bundle(), FRAGMENT_DATA_SIZE).unwrap();
        assert_eq!(padded.len(), FRAGMENT_DATA_SIZE);
        assert_eq!(unpack(&padded).unwrap(), loop_bundle());
    }

    #[test]
    fn padded_length_is_the_smallest_size_class() {
        for (len, data_size) in [
            (1_000, FRAGMENT_DATA_SIZE),
            (5_000, FRAGMENT_DATA_SIZE),
            (40_000, REPLY_FRAGMENT_DATA_SIZE),
        ] {
            let b = request_bundle(noise(len, len as u64).into_bytes(), vec![]);
            let padded = pack(&b, data_size).unwrap();
            let fragments = padded.len() / data_size;
            assert_eq!(padded.len() % data_size, 0);
            assert!(fragments.is_power_of_two());
            // Half as many fragments would not have held it.
            let length = u32::from_be_bytes(padded[..4].try_into().unwrap()) & !DICTIONARY_BITS;
            let framed_len = 4 + length as usize;
            assert!(framed_len <= padded.len());
            assert!(fragments == 1 || framed_len > padded.len() / 2);
            assert_eq!(unpack(&padded).unwrap(), b);
        }
    }

    #[test]
    fn message_beyond_the_largest_class_is_refused() {
        let b = request_bundle(noise(MAX_BODY, 7).into_bytes(), vec![]);
        assert!(matches!(
            pack(&b, FRAGMENT_DATA_SIZE),
            Err(Error::ApiMisuse(ApiMisuse::MessageTooLarge { .. }))
        ));
        assert!(pack(&loop_bundle(), 0).is_err());
    }

    #[test]
    fn nonzero_padding_is_rejected() {
        let mut padded = pack(&loop_bundle(), FRAGMENT_DATA_SIZE).unwrap();
        *padded.last_mut().unwrap() = 1;
        assert_eq!(
            unpack(&padded),
            Err(InvalidMessage::BadValue("padding").into())
        );
    }

    #[test]
    fn length_field_beyond_the_buffer_is_rejected() {
        let mut padded = pack(&loop_bundle(), FRAGMENT_DATA_SIZE).unwrap();
        padded[..4].copy_from_slice(&(FRAGMENT_DATA_SIZE as u32).to_be_bytes());
        assert!(unpack(&padded).is_err());
        padded[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(unpack(&padded).is_err());
    }

    #[test]
    fn zstd_bomb_is_rejected_before_decompressing() {
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_DECOMPRESSED + 1], 19).unwrap();
        assert!(bomb.len() < 4096, "bomb is {} bytes", bomb.len());
        assert_eq!(
            unpack(&framed(&bomb, 0)),
            Err(InvalidMessage::TooLong {
                limit: MAX_DECOMPRESSED
            }
            .into())
        );
    }

    #[test]
    fn frame_without_declared_size_is_rejected() {
        let encoded = loop_bundle().encode();
        let mut streamed = Vec::new();
        {
            let mut encoder = zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
            encoder.include_contentsize(false).unwrap();
            std::io::Write::write_all(&mut encoder, &encoded).unwrap();
            encoder.finish().unwrap();
        }
        assert_eq!(
            unpack(&framed(&streamed, 10)),
            Err(InvalidMessage::Decompress.into())
        );
    }

    #[test]
    fn corrupted_frame_is_rejected() {
        let encoded = loop_bundle().encode();
        let mut compressed = zstd::bulk::compress(&encoded, 3).unwrap();
        // Flip bits in the body of the frame.
        let mid = compressed.len() / 2;
        compressed[mid] ^= 0xff;
        assert!(unpack(&framed(&compressed, 0)).is_err());
    }

    #[test]
    fn second_zstd_frame_is_rejected() {
        let encoded = loop_bundle().encode();
        let mut two = zstd::bulk::compress(&encoded, 3).unwrap();
        two.extend(zstd::bulk::compress(&encoded, 3).unwrap());
        assert_eq!(
            unpack(&framed(&two, 0)),
            Err(InvalidMessage::Decompress.into())
        );
    }

    #[test]
    fn empty_and_garbage_payloads_are_rejected() {
        assert!(unpack(&[]).is_err());
        assert!(unpack(&framed(&[], 16)).is_err());
        assert!(unpack(&framed(b"not zstd at all", 0)).is_err());
        assert!(unpack(&vec![0u8; MAX_PADDED_LEN + 1]).is_err());
    }

    /// The motivating case: a full transaction of 50 maximum-size PDUs, carried through the
    /// whole pipeline with fragments arriving shuffled and duplicated.
    #[test]
    fn matrix_transaction_survives_fragmentation_shuffle_and_duplicates() {
        let pdus: Vec<String> = (0..50)
            .map(|i| {
                let head = format!(
                    r#"{{"type":"m.room.message","room_id":"!r:a.example","sender":"@u:a.example","origin_server_ts":{},"content":{{"body":""#,
                    1_700_000_000_000u64 + i
                );
                let tail = r#""}}"#;
                let fill = 65_536 - head.len() - tail.len();
                format!("{head}{}{tail}", noise(fill, i + 1))
            })
            .collect();
        assert!(pdus.iter().all(|p| p.len() == 65_536));
        let body = format!(
            r#"{{"origin":"a.example","origin_server_ts":1700000000000,"pdus":[{}],"edus":[]}}"#,
            pdus.join(",")
        )
        .into_bytes();
        let bundle = request_bundle(body, vec![vec![6; SURB_SIZE]; 8]);

        let padded = pack(&bundle, FRAGMENT_DATA_SIZE).unwrap();
        let message_id = [0x5a; 16];
        let fragments = fragment::split(message_id, &padded, FRAGMENT_DATA_SIZE).unwrap();
        assert!(fragments.len().is_power_of_two());
        assert!(fragments.len() > 1024);

        let mut wire: Vec<Vec<u8>> = fragments.iter().map(Fragment::encode).collect();
        let duplicates: Vec<Vec<u8>> = wire.iter().step_by(7).cloned().collect();
        wire.extend(duplicates);
        wire.shuffle(&mut rand::rng());

        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        let mut done = Vec::new();
        for bytes in &wire {
            let f = Fragment::decode(bytes, FRAGMENT_DATA_SIZE).unwrap();
            if let Some(message) = reassembler.insert(f, now).unwrap() {
                done.push(message);
            }
        }
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].message_id, message_id);
        assert_eq!(unpack(&done[0].padded).unwrap(), bundle);
        assert_eq!(reassembler.pending_messages(), 0);
        assert_eq!(reassembler.pending_bytes(), 0);
    }

    fn arb_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..max).prop_map(move |chars| {
            let mut s = String::new();
            for c in chars {
                if s.len() + c.len_utf8() <= max {
                    s.push(c);
                }
            }
            s
        })
    }

    fn arb_headers() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((arb_text(24), arb_text(64)), 0..6)
    }

    fn arb_body() -> impl Strategy<Value = BundleBody> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..256);
        prop_oneof![
            (
                (any::<[u8; 16]>(), any::<Option<u64>>()),
                arb_text(MAX_METHOD_LEN),
                arb_text(64),
                arb_headers(),
                bytes(),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), SURB_SIZE), 0..3),
            )
                .prop_map(
                    |((request_id, sequence), method, path, headers, body, reply_surbs)| {
                        BundleBody::Request {
                            request_id,
                            sequence,
                            request: FederationRequest {
                                method,
                                path,
                                headers,
                                body,
                            },
                            reply_surbs,
                        }
                    }
                ),
            (any::<[u8; 16]>(), 100u16..600, arb_headers(), bytes()).prop_map(
                |(request_id, status, headers, body)| BundleBody::Response {
                    request_id,
                    response: FederationResponse {
                        status,
                        headers,
                        body,
                    },
                }
            ),
            any::<[u8; 16]>().prop_map(|nonce| BundleBody::Loop { nonce }),
        ]
    }

    fn arb_bundle() -> impl Strategy<Value = Bundle> {
        let sender = proptest::option::of(
            (
                proptest::collection::vec(any::<[u8; 32]>(), 1..=2),
                any::<[u8; 32]>(),
            )
                .prop_map(|(relays, mailbox_key)| SporeAddress {
                    capability: None,
                    mailbox_relays: relays.into_iter().map(RelayId).collect(),
                    mailbox_key,
                }),
        );
        (
            arb_text(MAX_ORIGIN_LEN),
            sender,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..128)),
            arb_body(),
        )
            .prop_map(|(origin, sender, server_keys, body)| Bundle {
                origin,
                sender,
                server_keys,
                body,
            })
    }

    proptest! {
        #[test]
        fn encoding_round_trips(b in arb_bundle()) {
            prop_assert!(b.check_limits().is_ok());
            prop_assert_eq!(Bundle::decode(&b.encode()).unwrap(), b.clone());
            let padded = pack(&b, REPLY_FRAGMENT_DATA_SIZE).unwrap();
            prop_assert_eq!(unpack(&padded).unwrap(), b);
        }

        #[test]
        fn truncated_encoding_is_rejected(b in arb_bundle(), cut in any::<proptest::sample::Index>()) {
            let bytes = b.encode();
            let at = cut.index(bytes.len());
            prop_assert!(Bundle::decode(&bytes[..at]).is_err());
        }

        #[test]
        fn extended_encoding_is_rejected(
            b in arb_bundle(),
            extra in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            let mut bytes = b.encode();
            bytes.extend(extra);
            prop_assert!(Bundle::decode(&bytes).is_err());
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Bundle::decode(&data);
        }

        #[test]
        fn unpack_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = unpack(&data);
        }

        #[test]
        fn unpack_never_panics_on_a_valid_frame_of_garbage(
            data in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let compressed = zstd::bulk::compress(&data, 1).unwrap();
            let _ = unpack(&framed(&compressed, 3));
        }
    }
}
#[cfg(test)]
#[path = "bundle_samples.rs"]
mod samples;

#[cfg(test)]
mod training {
    use super::*;

    /// Held-out samples: numbers the training never saw.
    pub(super) fn held_out() -> impl Iterator<Item = Bundle> {
        (1_000_000..1_000_300).map(samples::sample)
    }

    /// Writes `federation_trained.dict`: zstd's trainer on 20,000 synthetic transactions
    /// ([`samples`]). Run by hand (`cargo test -p spore-protocol --lib train_ -- --ignored`);
    /// the result is a protocol constant, so changing it needs a new flag value.
    #[test]
    #[ignore = "regenerates a protocol constant"]
    fn train_the_federation_dictionary() {
        let samples: Vec<Vec<u8>> = (0..20_000).map(|n| samples::sample(n).encode()).collect();
        let dict = zstd::dict::from_samples(&samples, 6144).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/federation_trained.dict");
        std::fs::write(path, &dict).unwrap();
        eprintln!("wrote {} bytes to {path}", dict.len());
    }
}
