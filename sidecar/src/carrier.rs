//! [`TransportCarrier`]: the proxy's [`Carrier`] in the sidecar, the Spore [`Transport`].

use std::sync::Arc;
use std::time::Duration;

use spore_client::{ClientError, Resolver, Transport};
use spore_protocol::{FederationRequest, FederationResponse, SporeAddress};

use crate::key_recipients::{KeyRecipients, KeysDigest, keys_digest};
use crate::proxy::{Carrier, CarryError, CarryFuture};
use crate::server_keys::unix_ms;

/// Carries the proxy's requests through Spore.
pub struct TransportCarrier {
    transport: Transport,
    /// The sidecar's [`crate::PeerBook`]: configured and learned peers.
    resolver: Arc<dyn Resolver>,
    /// When set, our key response rides only on bundles to peers that do not hold it yet;
    /// without, on every bundle.
    key_recipients: Option<Arc<KeyRecipients>>,
}

impl TransportCarrier {
    pub fn new(transport: Transport, resolver: impl Resolver) -> Self {
        Self {
            transport,
            resolver: Arc::new(resolver),
            key_recipients: None,
        }
    }

    /// Sends our key response to each peer until its mailbox relay acknowledged one bundle
    /// that carried it, and then only when it changed or the record is stale (see
    /// [`KeyRecipients`]); the caller feeds `recipients` the transport's delivery events.
    pub fn sending_keys_once(mut self, recipients: Arc<KeyRecipients>) -> Self {
        self.key_recipients = Some(recipients);
        self
    }

    /// The key response a bundle to `to` carries, and its fingerprint when it is to be
    /// recorded as held once acknowledged.
    fn keys_for(
        &self,
        to: &SporeAddress,
        server_keys: Option<Vec<u8>>,
    ) -> (Option<Vec<u8>>, Option<KeysDigest>) {
        let (Some(recipients), Some(keys)) = (&self.key_recipients, server_keys.as_ref()) else {
            return (server_keys, None);
        };
        let digest = keys_digest(keys);
        if recipients.must_carry(&to.mailbox_key, &digest, unix_ms()) {
            tracing::debug!("bundle carries our server keys (the peer does not hold them yet)");
            (server_keys, Some(digest))
        } else {
            tracing::debug!("bundle without our server keys (the peer holds them)");
            (None, None)
        }
    }

    fn address(&self, destination: &str) -> Result<SporeAddress, CarryError> {
        self.resolver
            .resolve(destination)
            .or_else(|| self.resolver.resolve(&destination.to_ascii_lowercase()))
            .ok_or_else(|| CarryError::UnknownDestination(destination.to_owned()))
    }
}

fn carry_error(e: ClientError) -> CarryError {
    match e {
        ClientError::Timeout => CarryError::Timeout,
        ClientError::UnknownDestination(d) => CarryError::UnknownDestination(d),
        other => CarryError::Failed(other.to_string()),
    }
}

impl Carrier for TransportCarrier {
    fn send(
        &self,
        destination: &str,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
    ) -> CarryFuture<'_, ()> {
        let address = self.address(destination);
        Box::pin(async move {
            let address =
                crate::capabilities::with_peer_capability(&self.transport, address?).await;
            let (server_keys, digest) = self.keys_for(&address, server_keys);
            let id = self
                .transport
                .send_with_keys(&address, request, server_keys)
                .await
                .map_err(carry_error)?;
            if let (Some(recipients), Some(digest)) = (&self.key_recipients, digest) {
                recipients.sent(id, address.mailbox_key, digest);
            }
            Ok(())
        })
    }

    fn request(
        &self,
        destination: &str,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
        timeout: Duration,
    ) -> CarryFuture<'_, FederationResponse> {
        let address = self.address(destination);
        Box::pin(async move {
            let address =
                crate::capabilities::with_peer_capability(&self.transport, address?).await;
            // A request's message id is not ours to see: only transactions record delivery.
            let (server_keys, _) = self.keys_for(&address, server_keys);
            self.transport
                .request_with_keys(&address, request, timeout, server_keys)
                .await
                .map_err(carry_error)
        })
    }
}
