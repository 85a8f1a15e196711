//! # spore-client
//!
//! What a homeserver embeds (or runs beside itself as `spore-sidecar`, the `sidecar/` crate,
//! which uses only this crate's public API): federation requests go in, leave as padded,
//! delayed, cover-traffic-hidden Sphinx packets, and come back out of the recipient's mailbox
//! exactly once.
//!
//! Where it sits in the data path: [`Transport::send`] packs a request into a bundle, cuts it into
//! fragments sealed to the recipient's mailbox key, and queues them durably in the outbox (SQLite,
//! which erases what it deletes). A sans-I/O state machine (`sender.rs`, unit-tested on a fake
//! clock) decides what to send and when; a thin tokio driver (`driver.rs`) does the I/O: it keeps
//! one Noise link to our own mailbox relay (also our entry relay), on which the sender emits a
//! Poisson stream of identical packets — the next real fragment if one is queued, else cover — plus
//! loop and drop cover ([`PoissonSchedule`]). Every real fragment carries a SURB-ack that the
//! recipient's mailbox relay releases once it has stored the fragment; a missing ack means
//! retransmission on a fresh route, and after the message lifetime a [`TransportEvent::Failed`].
//! The same link pulls our mailbox at a constant rate; pulled items are persisted before they are
//! deleted at the relay, reassembled, deduplicated by `(sender key, origin, txnId)` (the sender key
//! is the one each fragment's seal authenticates) and kept in a durable inbox until the
//! consumer [`Transport::ack`]s them.
//!
//! An address may name two mailbox relays ([`TransportConfig::second_mailbox_relay`]): senders
//! then store every fragment at both (one SURB-ack per copy; a fragment leaves the outbox once
//! both acknowledged it, or one did and the other stayed silent for
//! [`Timeouts::single_copy_grace`]), and the owner keeps a second link that only pulls and
//! deletes, on the same fixed schedule, so that losing one relay, or its disk, loses nothing.
//!
//! [`SporeFederationClient`] is the `tower::Service` adapter a Rust homeserver swaps in for its
//! federation client; the `spore-sidecar` binary (crate `spore-sidecar`) does the same for any
//! homeserver over HTTP. This crate has no HTTP server, TLS or command line of its own.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod builder;
mod capabilities;
mod config;
mod dedup;
mod directory;
mod driver;
mod error;
mod events;
mod inbox_entry;
mod link;
mod packets;
mod quarantine;
mod receiver;
mod scheduler;
mod sender;
mod service;
mod shared;
mod store;
mod transport;

pub use capabilities::{CAPABILITY_QUOTA_BYTES, CAPABILITY_QUOTA_ITEMS, peer_label};
pub use config::{
    DirectoryConfig, DirectorySource, RateOverrides, Rates, Timeouts, TransportConfig, Trust,
};
pub use error::{ClientError, Result, StorageError, StorageErrorKind};
pub use scheduler::{PoissonSchedule, Stream, backoff};
pub use service::{
    Resolver, SporeFederationClient, StaticResolver, destination_of, is_hop_by_hop,
    to_federation_request, to_http_response, transaction_id,
};
pub use store::{FragmentOutcome, InboundLimits, OutgoingMessage, Store};
pub use transport::{
    Attachments, InboundId, InboundRequest, Transport, TransportEvent, TransportStats,
};
