//! [`Sidecar`]: the running sidecar, its tasks and how they stop.
//!
//! * Outbound: a local HTTP endpoint ([`SidecarConfig::listen`]) takes the homeserver's
//!   federation requests (destination from the URI or `Host`) and hands them to
//!   [`SporeFederationClient`]. In front of the same transport, the TLS-terminating CONNECT
//!   proxy for Synapse's `https_proxy` ([`OutboundProxy`], on
//!   [`SidecarConfig::https_proxy_listen`]).
//! * Inbound: every request the transport receives is delivered to the homeserver's
//!   federation listener ([`LocalHomeserver`] at [`SidecarConfig::homeserver_url`]) by
//!   [`crate::inbox`], one queue per origin: retried while the failure is transient, moved
//!   to the dead-letter store after [`SidecarConfig::dead_letter_after`] permanent refusals,
//!   and only then acked, so each is delivered exactly once across crashes. Requests that
//!   wait for an answer get the homeserver's response sent back on their reply SURBs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use spore_client::{ClientError, SporeFederationClient, Transport, TransportEvent, transaction_id};
use spore_protocol::bundle::MAX_BODY;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tower::Service;

use crate::carrier::TransportCarrier;
use crate::config::SidecarConfig;
use crate::dead_letter::DeadLetters;
use crate::deadline::{RequestTimeouts, deadline_after};
use crate::error::{Result, SidecarError};
use crate::homeserver::{DEADLINE_HEADER, LocalHomeserver, OwnKeys, RetryPolicy};
use crate::inbox::{DELIVERY_ORDER_FILE, Delivery, InboundCounters, InboxOrder, deliver_inbox};
use crate::key_recipients::{KEY_RECIPIENTS_FILE, KeyRecipients};
use crate::peer_book::{PEER_BOOK_FILE, PeerBook, unknown_destination_help};
use crate::proxy::{OutboundProxy, ProxySettings, json_response};
use crate::send_order::NextExpected;
use crate::server_keys::{ServerKeyCache, unix_ms};
use crate::tls::{CA_CERT_FILE, LocalCa};

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    transport: Transport,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<InboundCounters>,
    keys: Arc<ServerKeyCache>,
    peers: PeerBook,
}

impl Sidecar {
    /// Starts the transport, the outbound endpoint and the inbound delivery loop.
    pub async fn start(config: SidecarConfig) -> Result<Sidecar> {
        let transport = Transport::start(config.transport_config()?).await?;
        // The `[peers]` table over what earlier runs learned from authenticated bundles.
        let peers = PeerBook::open(config.data_dir.join(PEER_BOOK_FILE), &config.peers()?);
        let client = SporeFederationClient::new(transport.clone(), peers.clone());
        let timeouts = config.request_timeouts();
        let (listener, local_addr) = bind(config.listen).await?;
        let (stop, _) = watch::channel(false);
        let homeserver =
            LocalHomeserver::new(config.homeserver_url.as_str(), config.server_name.as_str());
        let keys = Arc::new(ServerKeyCache::open(
            config.data_dir.join("server_keys.json"),
            unix_ms(),
        ));
        // The operator's `[peers]` table binds those names to their Spore keys (issue 16).
        for (name, address) in config.peers()? {
            keys.configure_sender(&name, address.mailbox_key);
        }
        let counters = Arc::new(InboundCounters::default());
        let mut tasks = vec![
            tokio::spawn(serve_outbound(
                listener,
                client,
                timeouts.clone(),
                stop.subscribe(),
            )),
            tokio::spawn(deliver_inbox(
                Delivery {
                    transport: transport.clone(),
                    homeserver: homeserver.clone(),
                    keys: keys.clone(),
                    peers: peers.clone(),
                    dead_letters: DeadLetters::in_data_dir(&config.data_dir),
                    policy: RetryPolicy::dead_letter_after(config.dead_letter_after),
                    order: InboxOrder {
                        next_expected: NextExpected::open(
                            config.data_dir.join(DELIVERY_ORDER_FILE),
                        ),
                        gap_wait: Duration::from_millis(config.order_gap_wait_ms),
                    },
                    counters: counters.clone(),
                },
                stop.subscribe(),
            )),
            tokio::spawn(log_outbox_drained(transport.clone(), stop.subscribe())),
        ];
        if let Some(listen) = config.https_proxy_listen {
            tasks.push(
                start_https_proxy(
                    &config,
                    listen,
                    transport.clone(),
                    homeserver,
                    keys.clone(),
                    peers.clone(),
                    stop.subscribe(),
                )
                .await?,
            );
        }
        tracing::info!("spore sidecar started");
        Ok(Sidecar {
            transport,
            local_addr,
            stop,
            tasks,
            counters,
            keys,
            peers,
        })
    }

    /// The bound outbound endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Counters of inbound delivery (transactions dead-lettered, gaps in an origin's send
    /// order given up on, requests dropped because their caller had given up).
    pub fn inbound_counters(&self) -> &InboundCounters {
        &self.counters
    }

    /// The verified server keys and the name <-> Spore sender bindings; its
    /// [`ServerKeyCache::refused_senders`] counts requests refused as impersonations.
    pub fn server_keys(&self) -> &ServerKeyCache {
        &self.keys
    }

    /// Where each peer is reached: the `[peers]` table and the addresses learned from
    /// authenticated bundles.
    pub fn peers(&self) -> &PeerBook {
        &self.peers
    }

    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.transport.shutdown().await;
    }
}

/// Resolves once `stop` turns true — also if it did before this task subscribed (a plain
/// `changed()` would miss that and sleep until its next timer).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let bound = match TcpListener::bind(addr).await {
        Ok(listener) => listener.local_addr().map(|local| (listener, local)),
        Err(e) => Err(e),
    };
    bound.map_err(|source| SidecarError::Bind { addr, source })
}

/// Starts the CONNECT proxy on `listen`: local CA in `data_dir/ca` (the homeserver must trust
/// `data_dir/ca/ca.pem`), peers' keys from `keys`, our own keys from the homeserver.
async fn start_https_proxy(
    config: &SidecarConfig,
    listen: SocketAddr,
    transport: Transport,
    homeserver: LocalHomeserver,
    keys: Arc<ServerKeyCache>,
    peers: PeerBook,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    let timeouts = config.request_timeouts();
    let transport_events = transport.events();
    let ca_dir = config.data_dir.join("ca");
    let ca = LocalCa::load_or_create(&ca_dir)
        .map_err(|e| SidecarError::Config(format!("local CA in {}: {e}", ca_dir.display())))?;
    let own_keys = OwnKeys::new(homeserver);
    let mut carrier = TransportCarrier::new(transport, peers);
    let key_recipients = (!config.keys_in_every_bundle).then(|| {
        Arc::new(KeyRecipients::open(
            config.data_dir.join(KEY_RECIPIENTS_FILE),
            Duration::from_secs(config.keys_resend_after_secs),
        ))
    });
    if let Some(recipients) = &key_recipients {
        carrier = carrier.sending_keys_once(recipients.clone());
    }
    let proxy = OutboundProxy::new(
        Arc::new(ca),
        keys,
        own_keys,
        Arc::new(carrier),
        ProxySettings { timeouts },
    );
    let (listener, local) = bind(listen).await?;
    tokio::spawn(log_mailbox_acks(
        transport_events,
        key_recipients,
        stop.clone(),
    ));
    tracing::info!(%local, ca = %ca_dir.join(CA_CERT_FILE).display(), "https proxy for the homeserver listening");
    Ok(tokio::spawn(proxy.serve(listener, stop)))
}

/// Debug-logs each message once its recipient's mailbox relay holds all of it (what tests
/// and operators use to see store-and-forward at work; no metadata in the line), and tells
/// `key_recipients` which peers now hold our key response.
async fn log_mailbox_acks(
    mut events: broadcast::Receiver<TransportEvent>,
    key_recipients: Option<Arc<KeyRecipients>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(TransportEvent::Delivered(id)) => {
                tracing::debug!("a sent message is stored at its recipient's mailbox relay");
                if let Some(recipients) = &key_recipients
                    && recipients.delivered(&id, unix_ms())
                {
                    tracing::debug!("a peer holds our server keys now");
                }
            }
            Ok(TransportEvent::Failed(id)) => {
                tracing::info!("a sent message was not acknowledged in its lifetime");
                if let Some(recipients) = &key_recipients {
                    recipients.failed(&id);
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How often [`log_outbox_drained`] looks at the outbox.
const OUTBOX_CHECK: Duration = Duration::from_millis(500);

/// Debug-logs each time the outbox empties: every fragment sent so far is stored at each of
/// its recipient's mailbox relays (both, for an address that names two), so losing one of
/// those relays now loses nothing (tests and operators wait for this line before taking a
/// relay down). A message queued and fully stored between two looks counts as well (the
/// queued count moved). No metadata in the line.
async fn log_outbox_drained(transport: Transport, mut stop: watch::Receiver<bool>) {
    let mut was_empty = transport.outbox_len() == 0;
    let mut queued = transport.stats().messages_queued;
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(OUTBOX_CHECK) => {}
        }
        // Read the count first: a message queued after it is in the outbox when we look.
        let now_queued = transport.stats().messages_queued;
        let empty = transport.outbox_len() == 0;
        if empty && (!was_empty || now_queued != queued) {
            tracing::debug!(
                "outbox empty: every sent fragment is stored at each of its recipient's mailbox relays"
            );
            queued = now_queued;
        }
        was_empty = empty;
    }
}

/// The answer for a destination with no known Spore address: 502 (no route, as for a peer that
/// does not answer) with a body that says how to add it, also logged once per name.
pub(crate) fn unknown_destination(name: &str) -> http::Response<Full<Bytes>> {
    let help = unknown_destination_help(name);
    log_unknown_destination(name, &help);
    json_response(
        502,
        serde_json::json!({"errcode": "M_UNKNOWN", "error": help}).to_string(),
    )
}

/// Warns about `name` once (the homeserver retries; the log must not fill with one line).
pub(crate) fn log_unknown_destination(name: &str, help: &str) {
    static LOGGED: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    let logged = logged.get_or_insert_with(Default::default);
    if logged.len() < 10_000 && logged.insert(name.to_ascii_lowercase()) {
        tracing::warn!("{help} (logged once per destination)");
    }
}

/// A Matrix error answer to the homeserver's request.
fn error(status: u16, errcode: &str, error: &str) -> http::Response<Full<Bytes>> {
    json_response(
        status,
        format!(r#"{{"errcode":"{errcode}","error":"{error}"}}"#),
    )
}

async fn serve_outbound(
    listener: TcpListener,
    client: SporeFederationClient<PeerBook>,
    timeouts: RequestTimeouts,
    mut stop: watch::Receiver<bool>,
) {
    let timeouts = Arc::new(timeouts);
    loop {
        let (socket, _) = tokio::select! {
            () = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let client = client.clone();
        let timeouts = timeouts.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let client = client.clone();
                let timeouts = timeouts.clone();
                async move { Ok::<_, Infallible>(outbound(client, &timeouts, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

/// One request from the homeserver: a transaction is queued; any other call waits for its
/// endpoint's timeout and carries that deadline (`x-spore-deadline-ms`).
async fn outbound(
    client: SporeFederationClient<PeerBook>,
    timeouts: &RequestTimeouts,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(413, "M_TOO_LARGE", "request body too large"),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let timeout = timeouts.for_path(&path);
    if transaction_id(parts.method.as_str(), &path).is_none() {
        parts.headers.insert(
            http::HeaderName::from_static(DEADLINE_HEADER),
            http::HeaderValue::from(deadline_after(timeout)),
        );
    }
    let req = http::Request::from_parts(parts, body);
    let mut client = client.with_request_timeout(timeout);
    match client.call(req).await {
        Ok(resp) => resp.map(Full::new),
        Err(ClientError::UnknownDestination(name)) => unknown_destination(&name),
        // 502, as the HTTPS proxy answers: the peer did not answer in the caller's time.
        Err(ClientError::Timeout) => error(502, "M_UNKNOWN", "no response through spore in time"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot send a federation request");
            error(502, "M_UNKNOWN", "spore transport error")
        }
    }
}
