//! # spore-client
//!
//! What a homeserver embeds (or runs beside itself as `spore-sidecar`): federation requests go
//! in, leave as padded, delayed, cover-traffic-hidden Sphinx packets, and come back out of the
//! recipient's mailbox exactly once.
#![forbid(unsafe_code)]

// Synapse interop (issue 7): the outbound proxy, its local CA, server keys, inbound delivery.
mod homeserver;
mod proxy;
mod server_keys;
mod tls;
pub use homeserver::{DeliveryError, LocalHomeserver, OwnKeys, deliver_inbound};
pub use proxy::{CarryError, CarryFuture, Carrier, FEDERATION_PORT, OutboundProxy, ProxySettings};
pub use server_keys::{
    KeyError, ServerKeyCache, ServerKeys, canonical_json, unix_ms, verify_key_response,
};
pub use tls::{CA_CERT_FILE, LocalCa, TlsError};
