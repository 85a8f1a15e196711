//! [`TransportCarrier`]: the proxy's [`Carrier`] in the sidecar, the Spore [`Transport`].

use std::sync::Arc;
use std::time::Duration;

use spore_client::{Attachments, ClientError, Resolver, Transport};
use spore_protocol::{FederationRequest, FederationResponse, SporeAddress};

use crate::key_recipients::{KeyRecipients, KeysDigest, held_digest};
use crate::proxy::{Carrier, CarryError, CarryFuture};
use crate::server_keys::unix_ms;

/// Carries the proxy's requests through Spore.
pub struct TransportCarrier {
    transport: Transport,
    /// The sidecar's [`crate::PeerBook`]: configured and learned peers.
    resolver: Arc<dyn Resolver>,
    /// When set, our key response and our address ride only on bundles to peers that do not
    /// hold them yet; without, on every bundle.
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

    /// Sends our key response and our address to each peer until its mailbox relay
    /// acknowledged one bundle that carried them, and then only when either changed or the
    /// record is stale (see
    /// [`KeyRecipients`]); the caller feeds `recipients` the transport's delivery events.
    pub fn sending_keys_once(mut self, recipients: Arc<KeyRecipients>) -> Self {
        self.key_recipients = Some(recipients);
        self
    }

    /// What a bundle to `to` carries besides its request, and the fingerprint to record as
    /// held by `to` once it is acknowledged (`None`: nothing to record). `ours` is our address
    /// as we give it to `to`. Without a [`KeyRecipients`], everything, every time.
    async fn attachments_for(
        &self,
        to: &SporeAddress,
        server_keys: Option<Vec<u8>>,
    ) -> Result<(Attachments, Option<KeysDigest>), CarryError> {
        let Some(recipients) = &self.key_recipients else {
            return Ok((
                Attachments {
                    server_keys,
                    sender_address: true,
                },
                None,
            ));
        };
        let ours = self
            .transport
            .sender_address_for(to)
            .await
            .map_err(carry_error)?;
        let digest = held_digest(server_keys.as_deref(), &ours);
        Ok(
            if recipients.must_carry(&to.mailbox_key, &digest, unix_ms()) {
                tracing::debug!(
                    "bundle carries our server keys and address (the peer does not hold them yet)"
                );
                (
                    Attachments {
                        server_keys,
                        sender_address: true,
                    },
                    Some(digest),
                )
            } else {
                tracing::debug!("bundle without our server keys and address (the peer holds them)");
                (Attachments::default(), None)
            },
        )
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
            let (attachments, digest) = self.attachments_for(&address, server_keys).await?;
            let id = self
                .transport
                .send_with(&address, request, attachments)
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
            // It carries our address whatever the peer holds (the transport adds it).
            let (attachments, _) = self.attachments_for(&address, server_keys).await?;
            let server_keys = attachments.server_keys;
            self.transport
                .request_with_keys(&address, request, timeout, server_keys)
                .await
                .map_err(carry_error)
        })
    }
}
