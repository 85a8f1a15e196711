//! Per-contact capabilities in the sidecar (issue 16): the two places the sidecar touches
//! them, kept here so the rest of the sidecar stays as it was.
//!
//! * Sending: the address we send a peer's requests to is the one we resolved for its server
//!   name, with the capability that peer gave us (if it gave one), so our packets use its
//!   quota for us and not its small first-contact share. (Our own capability for the peer
//!   rides in every bundle the transport sends it: see `spore_client::Transport::send`.)
//! * Receiving: a request whose origin is bound to the key that sealed it (the sidecar's
//!   name <-> sender binding) updates the capability we use for that peer from the sender
//!   address in its bundle, but only if that address is the sealing key's own.

use spore_client::{InboundRequest, Transport};
use spore_protocol::SporeAddress;

/// `address` (resolved for a destination) with the capability its owner gave us, if any.
/// A store error sends as first contact rather than not at all.
pub(crate) async fn with_peer_capability(
    transport: &Transport,
    address: SporeAddress,
) -> SporeAddress {
    match transport.with_learned_capability(&address).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "peer capability unavailable; sending as first contact");
            address
        }
    }
}

/// Takes the capability in an authenticated request's sender address. Call only once the
/// request's origin is known to be bound to `inbound.sender_key`.
pub(crate) async fn learn_sender_capability(transport: &Transport, inbound: &InboundRequest) {
    let Some(sender) = &inbound.sender else {
        return;
    };
    if let Err(e) = transport
        .learn_capability(&inbound.sender_key, sender)
        .await
    {
        tracing::warn!(error = %e, "could not store a peer's capability");
    }
}
