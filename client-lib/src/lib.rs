//! # spore-client
//!
//! What a homeserver embeds (or runs beside itself as `spore-sidecar`): federation requests go
//! in, leave as padded, delayed, cover-traffic-hidden Sphinx packets, and come back out of the
//! recipient's mailbox exactly once.
//!
//! Where it sits in the data path: [`Transport::send`] packs a request into a bundle, cuts it
//! into fragments sealed to the recipient's mailbox key, and queues them durably in the outbox
//! (sled). The engine keeps one Noise link to our own mailbox relay (also our entry relay) and
//! emits a Poisson stream of identical packets on it — the next real fragment if one is queued,
//! else cover — plus loop and drop cover ([`PoissonSchedule`]). Every real fragment carries a
//! SURB-ack that the recipient's mailbox relay releases once it has stored the fragment; a
//! missing ack means retransmission on a fresh route, and after the message lifetime a
//! [`TransportEvent::Failed`]. The same link pulls our mailbox at a constant rate; pulled items
//! are persisted before they are deleted at the relay, reassembled, deduplicated by
//! `(origin, txnId)` and kept in a durable inbox until the consumer [`Transport::ack`]s them.
//!
//! [`SporeFederationClient`] is the `tower::Service` adapter a Rust homeserver swaps in for its
//! federation client; the `spore-sidecar` binary does the same for any homeserver over HTTP.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod builder;
mod config;
mod directory;
mod engine;
mod error;
mod link;
mod packets;
mod receiver;
mod scheduler;
mod service;
pub mod sidecar;
mod store;
mod transport;

pub use config::{
    DirectoryConfig, DirectorySource, RateOverrides, Rates, Timeouts, TransportConfig, Trust,
};
pub use error::{ClientError, Result};
pub use scheduler::{PoissonSchedule, Stream, backoff};
pub use service::{
    Resolver, SporeFederationClient, StaticResolver, destination_of, to_federation_request,
    to_http_response, transaction_id,
};
pub use store::{FragmentOutcome, InboundLimits, OutgoingMessage, Store};
pub use transport::{InboundId, InboundRequest, Transport, TransportEvent, TransportStats};

// Synapse interop (issue 7): the outbound proxy, its local CA, server keys, inbound delivery.
mod homeserver;
mod proxy;
mod server_keys;
mod sidecar_proxy;
mod tls;
pub use homeserver::{
    DEADLINE_HEADER, DeliveryError, LocalHomeserver, OwnKeys, deliver_inbound, request_expired,
};
pub use proxy::{Carrier, CarryError, CarryFuture, FEDERATION_PORT, OutboundProxy, ProxySettings};
pub use server_keys::{
    KeyError, ServerKeyCache, ServerKeys, canonical_json, unix_ms, verify_key_response,
};
pub use sidecar_proxy::TransportCarrier;
pub use tls::{CA_CERT_FILE, LocalCa, TlsError};
