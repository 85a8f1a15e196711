//! Errors, split by who is at fault (the rustls habit).
//!
//! * [`InvalidMessage`]: the bytes are malformed — wrong length, truncated, unknown tag.
//! * [`PeerMisbehaved`]: the bytes are well-formed but hostile or unacceptable — a replay,
//!   an oversized delay, a low-order point, a forged signature, a fragment bomb.
//! * [`ApiMisuse`]: our own caller asked for something impossible — a route that is too long,
//!   a message that does not fit.
//!
//! Relays count drops by [`Error::reason`], a short stable label suitable for a metric.

use thiserror::Error;

/// Malformed input: the bytes do not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    #[error("input is truncated")]
    Truncated,
    #[error("{0} unexpected trailing byte(s)")]
    TrailingBytes(usize),
    #[error("length exceeds the limit of {limit} bytes")]
    TooLong { limit: usize },
    #[error("wrong length: expected {expected} bytes, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("invalid value for {0}")]
    BadValue(&'static str),
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },
    #[error("sphinx: {0}")]
    Sphinx(String),
    #[error("decryption failed")]
    Decrypt,
    #[error("decompression failed")]
    Decompress,
}

/// Well-formed but hostile or unacceptable input from a peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    #[error("packet was already seen (replay)")]
    Replay,
    #[error("sphinx version {0} is not accepted (only 260)")]
    WrongSphinxVersion(u16),
    #[error("group element has low order")]
    LowOrderPoint,
    #[error("per-hop delay of {got_ms} ms exceeds the maximum of {max_ms} ms")]
    DelayTooLong { got_ms: u64, max_ms: u64 },
    #[error("header integrity check failed")]
    BadHeaderMac,
    #[error("fragment count {got} is not allowed (limit {limit})")]
    FragmentCount { got: u32, limit: u32 },
    #[error("fragment disagrees with earlier fragments of the same message")]
    InconsistentFragments,
    #[error("reassembly buffer is full")]
    ReassemblyFull,
    #[error("signature verification failed")]
    BadSignature,
    #[error("only {valid} valid authority signature(s), {needed} needed")]
    NotEnoughSignatures { valid: usize, needed: usize },
    #[error("document is not valid at this time")]
    Expired,
    #[error("link handshake failed: {0}")]
    Handshake(String),
    #[error("peer is not the expected key")]
    UnexpectedPeer,
    #[error("the same relay is listed twice")]
    DuplicateRelay,
    /// A sealed fragment of another version than [`crate::seal::SEAL_VERSION`]: anonymous v1
    /// seals included, which must not be taken as from anyone.
    #[error("seal version {0} is not accepted (only sender-authenticated version 2)")]
    SealVersion(u8),
}

/// Our caller's bug: the request cannot be satisfied by any input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    #[error("route must have between 1 and {max} hops, got {got}")]
    RouteLength { got: usize, max: usize },
    #[error("message of {got} bytes does not fit (limit {limit})")]
    MessageTooLarge { got: usize, limit: usize },
    #[error("{field} exceeds its limit of {limit}")]
    FieldTooLong { field: &'static str, limit: usize },
    #[error("{0}")]
    InvalidArgument(&'static str),
    #[error("sphinx: {0}")]
    Sphinx(String),
    #[error("no route: {0}")]
    NoRoute(&'static str),
}

/// Any error this crate returns.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid message: {0}")]
    InvalidMessage(#[from] InvalidMessage),
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(#[from] PeerMisbehaved),
    #[error("api misuse: {0}")]
    ApiMisuse(#[from] ApiMisuse),
}

impl Error {
    /// A short, stable label for metrics (`dropped_total{reason=...}`). Never contains data
    /// taken from the packet itself.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidMessage(e) => match e {
                InvalidMessage::WrongLength { .. } => "wrong_size",
                InvalidMessage::Sphinx(_) => "malformed_sphinx",
                InvalidMessage::Decrypt => "decrypt_failed",
                InvalidMessage::Decompress => "decompress_failed",
                _ => "malformed",
            },
            Error::PeerMisbehaved(e) => match e {
                PeerMisbehaved::Replay => "replay",
                PeerMisbehaved::WrongSphinxVersion(_) => "bad_version",
                PeerMisbehaved::LowOrderPoint => "low_order_point",
                PeerMisbehaved::DelayTooLong { .. } => "delay_too_long",
                PeerMisbehaved::BadHeaderMac => "bad_mac",
                PeerMisbehaved::FragmentCount { .. } => "fragment_count",
                PeerMisbehaved::InconsistentFragments => "inconsistent_fragments",
                PeerMisbehaved::ReassemblyFull => "reassembly_full",
                PeerMisbehaved::BadSignature => "bad_signature",
                PeerMisbehaved::NotEnoughSignatures { .. } => "not_enough_signatures",
                PeerMisbehaved::Expired => "expired",
                PeerMisbehaved::Handshake(_) => "handshake",
                PeerMisbehaved::UnexpectedPeer => "unexpected_peer",
                PeerMisbehaved::DuplicateRelay => "duplicate_relay",
                PeerMisbehaved::SealVersion(_) => "seal_version",
            },
            Error::ApiMisuse(_) => "api_misuse",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
