//! [`TransportCarrier`]: the proxy's [`Carrier`] in the sidecar, the Spore [`Transport`].

use std::time::Duration;

use spore_client::{ClientError, Resolver, StaticResolver, Transport};
use spore_protocol::{FederationRequest, FederationResponse, SporeAddress};

use crate::proxy::{Carrier, CarryError, CarryFuture};

/// Carries the proxy's requests through Spore.
pub struct TransportCarrier {
    transport: Transport,
    resolver: StaticResolver,
}

impl TransportCarrier {
    pub fn new(transport: Transport, resolver: StaticResolver) -> Self {
        Self {
            transport,
            resolver,
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
            if server_keys.is_some() {
                self.transport.set_server_keys(server_keys);
            }
            self.transport
                .send(&address, request)
                .await
                .map(|_| ())
                .map_err(carry_error)
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
            if server_keys.is_some() {
                self.transport.set_server_keys(server_keys);
            }
            self.transport
                .request(&address, request, timeout)
                .await
                .map_err(carry_error)
        })
    }
}
