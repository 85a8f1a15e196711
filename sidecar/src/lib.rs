//! # spore-sidecar
//!
//! The Spore transport beside a homeserver written in any language: the homeserver keeps its
//! own federation code and talks plain HTTP(S) on loopback; the sidecar carries it through the
//! mixnet with [`spore_client`] and uses only that crate's public API.
//!
//! Where it sits in the data path, outbound: an unmodified homeserver's `https_proxy` opens a
//! CONNECT tunnel to the [`OutboundProxy`], which ends the TLS with a certificate from the
//! sidecar's [`LocalCa`], answers well-known and key requests locally ([`ServerKeyCache`]), and
//! hands every other federation request to a [`Carrier`] — the Spore [`Transport`] through
//! [`TransportCarrier`] — with the homeserver's own key response attached ([`OwnKeys`]).
//! A plain HTTP endpoint ([`SidecarConfig::listen`]) does the same for homeservers that can
//! name a federation endpoint. Inbound: each request that comes out of our mailbox is checked
//! for the origin's keys, replayed byte for byte to the homeserver's federation listener
//! ([`LocalHomeserver`]) in one queue per origin until it answers, or moved to the
//! [`DeadLetters`] store when the homeserver refuses it for good, and only then acked, so it is
//! delivered exactly once across crashes and one origin never holds up another; request/response calls get the homeserver's answer back on their reply
//! SURBs. [`Sidecar`] runs all of it from a TOML [`SidecarConfig`]; the `spore-sidecar` binary
//! is its command line.
//!
//! [`Transport`]: spore_client::Transport
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod capabilities;
mod carrier;
mod config;
mod dead_letter;
mod deadline;
mod error;
mod homeserver;
mod inbox;
mod key_recipients;
mod peer_book;
mod private_file;
mod proxy;
mod send_order;
mod server_keys;
mod sidecar;
mod tls;

pub use carrier::TransportCarrier;
pub use config::{DirectorySection, RatesSection, SidecarConfig};
pub use dead_letter::{DEAD_LETTER_DIR, DeadLetter, DeadLetterError, DeadLetters};
pub use deadline::RequestTimeouts;
pub use error::{Result, SidecarError};
pub use homeserver::{
    DEADLINE_HEADER, Delivered, DeliveryError, GiveUp, LocalHomeserver, OwnKeys, RetryPolicy,
    deliver_inbound, request_expired, transient_status,
};
pub use inbox::InboundCounters;
pub use key_recipients::{
    DEFAULT_KEYS_RESEND_SECS, KEY_RECIPIENTS_FILE, KeyRecipients, KeysDigest, held_digest,
    keys_digest,
};
pub use peer_book::{
    PEER_BOOK_FILE, Peer, PeerBook, PeerBookError, PeerSource, PeerUpdate, WELL_KNOWN_ADDRESS_KEY,
    unknown_destination_help,
};
pub use proxy::{Carrier, CarryError, CarryFuture, FEDERATION_PORT, OutboundProxy, ProxySettings};
pub use server_keys::{
    KeyError, ServerKeyCache, ServerKeys, canonical_json, unix_ms, verify_key_response,
};
pub use sidecar::Sidecar;
pub use tls::{CA_CERT_FILE, LocalCa, TlsError};
