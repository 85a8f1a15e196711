//! The sidecar's HTTPS proxy for unmodified homeservers (Synapse's `https_proxy`, Dendrite's
//! proxy environment, Continuwuity's `proxy`): [`OutboundProxy`] carried by the [`Transport`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spore_protocol::{FederationRequest, FederationResponse};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ClientError, Result};
use crate::homeserver::{LocalHomeserver, OwnKeys};
use crate::proxy::{Carrier, CarryError, CarryFuture, OutboundProxy, ProxySettings};
use crate::server_keys::ServerKeyCache;
use crate::service::{Resolver, StaticResolver};
use crate::sidecar::SidecarConfig;
use crate::tls::LocalCa;
use crate::transport::{Transport, TransportEvent};

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

    fn address(&self, destination: &str) -> Result<spore_protocol::SporeAddress, CarryError> {
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
            let address = address?;
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
            let address = address?;
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

/// Starts the CONNECT proxy on `listen`: local CA in `data_dir/ca` (the homeserver must trust
/// `data_dir/ca/ca.pem`), peers' keys from `keys`, our own keys from the homeserver.
pub(crate) async fn start(
    config: &SidecarConfig,
    listen: SocketAddr,
    transport: Transport,
    keys: Arc<ServerKeyCache>,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    let transport_events = transport.events();
    let ca_dir = config.data_dir.join("ca");
    let ca = LocalCa::load_or_create(&ca_dir)
        .map_err(|e| ClientError::Config(format!("local CA in {}: {e}", ca_dir.display())))?;
    let own_keys = OwnKeys::new(LocalHomeserver::new(
        config.homeserver_url.as_str(),
        config.server_name.as_str(),
    ));
    let proxy = OutboundProxy::new(
        Arc::new(ca),
        keys,
        own_keys,
        Arc::new(TransportCarrier::new(transport, config.resolver()?)),
        ProxySettings { request_timeout },
    );
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ClientError::File {
            path: PathBuf::from(listen.to_string()),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ClientError::File {
        path: PathBuf::from(listen.to_string()),
        source,
    })?;
    tokio::spawn(log_mailbox_acks(transport_events, stop.clone()));
    tracing::info!(%local, ca = %ca_dir.join(crate::tls::CA_CERT_FILE).display(), "https proxy for the homeserver listening");
    Ok((local, tokio::spawn(proxy.serve(listener, stop))))
}

/// Debug-logs each message once its recipient's mailbox relay holds all of it (what tests
/// and operators use to see store-and-forward at work; no metadata in the line).
async fn log_mailbox_acks(
    mut events: tokio::sync::broadcast::Receiver<TransportEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(TransportEvent::Delivered(_)) => {
                tracing::debug!("a sent message is stored at its recipient's mailbox relay")
            }
            Ok(TransportEvent::Failed(_)) => {
                tracing::info!("a sent message was not acknowledged in its lifetime")
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
