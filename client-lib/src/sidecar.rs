//! `spore-sidecar`: the transport beside a homeserver written in any language, over HTTP.
//!
//! * Outbound: a local HTTP endpoint ([`SidecarConfig::listen`]) takes the homeserver's
//!   federation requests (destination from the URI or `Host`) and hands them to
//!   [`SporeFederationClient`]. Plain HTTP for now; a TLS-terminating CONNECT proxy for
//!   Synapse's `https_proxy` is a later layer in front of the same service.
//! * Inbound: every request the transport receives is delivered to the homeserver's
//!   federation listener ([`SidecarConfig::homeserver_url`]), retried until it answers 2xx,
//!   and only then acked, so each is delivered exactly once across crashes. Requests that wait
//!   for an answer get the homeserver's response sent back on their reply SURBs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use spore_protocol::bundle::MAX_BODY;
use spore_protocol::{FederationResponse, MailboxKey, RelayId, SporeAddress};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

use crate::config::{DirectoryConfig, DirectorySource, RateOverrides, TransportConfig};
use crate::error::{ClientError, Result};
use crate::server_keys::{ServerKeyCache, unix_ms};
use crate::service::{SporeFederationClient, StaticResolver, transaction_id};
use crate::transport::{InboundRequest, Transport};

/// `[directory]` in the sidecar config: the relay's section, with the same keys (`path` or
/// `url`, `authorities`, `threshold`, `refresh_secs`).
pub type DirectorySection = DirectoryConfig;

fn sixty() -> u64 {
    60
}

/// `[rates]`: overrides of the directory's rates (tests and benchmarks only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesSection {
    pub lambda_p: Option<f64>,
    pub lambda_l: Option<f64>,
    pub lambda_d: Option<f64>,
    pub mu: Option<f64>,
    pub pull_interval_ms: Option<u64>,
}

/// The sidecar's TOML config. Relative paths are relative to the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// Our Matrix server name.
    pub server_name: String,
    /// Outbox, inbox, dedup tables.
    pub data_dir: PathBuf,
    /// File holding the mailbox secret key as 64 hex characters (mode 0600).
    pub mailbox_key_file: PathBuf,
    /// Hex id of our mailbox relay (also our entry relay).
    pub mailbox_relay: String,
    /// The homeserver's federation listener, e.g. `http://127.0.0.1:8008`.
    pub homeserver_url: String,
    /// Where the homeserver sends its outbound federation requests.
    pub listen: SocketAddr,
    /// Where an unmodified homeserver's `https_proxy` points: an HTTP CONNECT proxy that ends
    /// TLS with the sidecar's local CA (`data_dir/ca/ca.pem`). See `docs/synapse.md`.
    #[serde(default)]
    pub https_proxy_listen: Option<SocketAddr>,
    /// Reply SURBs per request/response call (default 8, at most 64): the largest answer is
    /// about this many KB. A Synapse `send_join` for a room with more than a few dozen state
    /// events needs more than the default.
    #[serde(default)]
    pub reply_surbs: Option<usize>,
    /// How long a request/response call waits.
    #[serde(default = "sixty")]
    pub request_timeout_secs: u64,
    pub directory: DirectorySection,
    /// Server name → Spore address text (`spore:…`).
    #[serde(default)]
    pub peers: HashMap<String, String>,
    #[serde(default)]
    pub rates: RatesSection,
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32]> {
    hex::decode(s.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ClientError::Config(format!("{what} is not 32 hex bytes")))
}

impl SidecarConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::File {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self =
            toml::from_str(&text).map_err(|e| ClientError::Config(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.data_dir, &mut config.mailbox_key_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.directory.resolve_path(base);
        Ok(config)
    }

    pub fn mailbox_key(&self) -> Result<MailboxKey> {
        let text = std::fs::read_to_string(&self.mailbox_key_file).map_err(|source| {
            ClientError::File {
                path: self.mailbox_key_file.clone(),
                source,
            }
        })?;
        Ok(MailboxKey::from_secret_bytes(hex32("mailbox key", &text)?))
    }

    /// The transport config this sidecar runs with.
    pub fn transport_config(&self) -> Result<TransportConfig> {
        let trust = (self.directory.trust()).map_err(|e| ClientError::Config(e.to_string()))?;
        let source = DirectorySource::from_config(&self.directory).ok_or_else(|| {
            ClientError::Config("directory.path or directory.url is required".into())
        })?;
        let mut config = TransportConfig::new(
            &self.data_dir,
            self.mailbox_key()?,
            &self.server_name,
            RelayId(hex32("mailbox_relay", &self.mailbox_relay)?),
            source,
            trust,
        );
        if let Some(n) = self.reply_surbs {
            config.reply_surbs = n;
        }
        config.rates = RateOverrides {
            lambda_p: self.rates.lambda_p,
            lambda_l: self.rates.lambda_l,
            lambda_d: self.rates.lambda_d,
            mu: self.rates.mu,
            pull_interval: self.rates.pull_interval_ms.map(Duration::from_millis),
        };
        Ok(config)
    }

    pub fn resolver(&self) -> Result<StaticResolver> {
        let mut r = StaticResolver::default();
        for (name, text) in &self.peers {
            let address = SporeAddress::from_text(text)
                .map_err(|e| ClientError::Config(format!("peer {name}: {e}")))?;
            r.insert(name.clone(), address);
        }
        Ok(r)
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    transport: Transport,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sidecar {
    /// Starts the transport, the outbound endpoint and the inbound delivery loop.
    pub async fn start(config: SidecarConfig) -> Result<Sidecar> {
        let transport = Transport::start(config.transport_config()?).await?;
        let client = SporeFederationClient::new(transport.clone(), config.resolver()?)
            .with_request_timeout(Duration::from_secs(config.request_timeout_secs));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ClientError::File {
                    path: PathBuf::from(config.listen.to_string()),
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ClientError::File {
            path: PathBuf::from(config.listen.to_string()),
            source,
        })?;
        let (stop, _) = watch::channel(false);
        let keys = Arc::new(ServerKeyCache::open(
            config.data_dir.join("server_keys.json"),
            unix_ms(),
        ));
        let mut tasks = vec![
            tokio::spawn(serve_outbound(listener, client, stop.subscribe())),
            tokio::spawn(deliver_inbound(
                transport.clone(),
                config.homeserver_url.trim_end_matches('/').to_owned(),
                keys.clone(),
                stop.subscribe(),
            )),
        ];
        if let Some(listen) = config.https_proxy_listen {
            let (_, task) = crate::sidecar_proxy::start(
                &config,
                listen,
                transport.clone(),
                keys,
                stop.subscribe(),
            )
            .await?;
            tasks.push(task);
        }
        tracing::info!("spore sidecar started");
        Ok(Sidecar {
            transport,
            local_addr,
            stop,
            tasks,
        })
    }

    /// The bound outbound endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.transport.shutdown().await;
    }
}

async fn serve_outbound(
    listener: TcpListener,
    client: SporeFederationClient<StaticResolver>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (socket, _) = tokio::select! {
            () = crate::transport::stopped(&mut stop) => return,
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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut client = client.clone();
                async move { Ok::<_, Infallible>(outbound(&mut client, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

fn error_response(status: u16, errcode: &str, error: &str) -> http::Response<Full<Bytes>> {
    let body = format!(r#"{{"errcode":"{errcode}","error":"{error}"}}"#);
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn outbound(
    client: &mut SporeFederationClient<StaticResolver>,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(413, "M_TOO_LARGE", "request body too large"),
    };
    let req = http::Request::from_parts(parts, body);
    match client.call(req).await {
        Ok(resp) => resp.map(Full::new),
        Err(ClientError::UnknownDestination(_)) => {
            error_response(502, "M_UNKNOWN", "destination has no spore address")
        }
        Err(ClientError::Timeout) => error_response(504, "M_UNKNOWN", "no response through spore"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot send a federation request");
            error_response(502, "M_UNKNOWN", "spore transport error")
        }
    }
}

/// Delivers each inbound request to the homeserver until it answers 2xx, then acks it.
async fn deliver_inbound(
    transport: Transport,
    homeserver: String,
    keys: Arc<ServerKeyCache>,
    mut stop: watch::Receiver<bool>,
) {
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let inbound = tokio::select! {
            () = crate::transport::stopped(&mut stop) => return,
            r = transport.incoming() => match r {
                Ok(i) => i,
                Err(ClientError::Stopped) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        if let Some(json) = &inbound.server_keys
            && let Err(e) = keys.insert(&inbound.origin, json, unix_ms())
        {
            tracing::warn!(error = %e, "inbound server keys do not verify; ignored");
        }
        if inbound.wants_response && crate::homeserver::request_expired(&inbound.request, unix_ms())
        {
            tracing::debug!("dropping a request whose caller has stopped waiting");
            if let Err(e) = transport.ack(inbound.id).await {
                tracing::warn!(error = %e, "cannot ack an inbound request");
            }
            continue;
        }
        let mut wait = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                () = crate::transport::stopped(&mut stop) => return,
                r = deliver_once(&http, &homeserver, &inbound) => r,
            };
            match result {
                Some(response) if inbound.wants_response => {
                    if let Err(e) = transport.respond(inbound.id, response).await {
                        tracing::warn!(error = %e, "cannot send a response back");
                        // Too large for the reply SURBs: a short error (4xx, so the caller's
                        // homeserver does not back off from us) instead of a silent timeout.
                        if let ClientError::CannotRespond(_) = e {
                            let _ = transport
                                .respond(inbound.id, crate::homeserver::too_large_response())
                                .await;
                        }
                    }
                    break;
                }
                Some(response) if (200..300).contains(&response.status) => break,
                Some(response) => {
                    tracing::info!(
                        status = response.status,
                        "homeserver refused an inbound request; retrying"
                    );
                }
                None => tracing::info!("homeserver unreachable; retrying"),
            }
            tokio::select! {
                () = crate::transport::stopped(&mut stop) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        tracing::debug!(
            wants_response = inbound.wants_response,
            "inbound request delivered to the homeserver"
        );
        if let Err(e) = transport.ack(inbound.id).await {
            tracing::warn!(error = %e, "cannot ack an inbound request");
        }
    }
}

async fn deliver_once(
    http: &Client<HttpConnector, Full<Bytes>>,
    homeserver: &str,
    inbound: &InboundRequest,
) -> Option<FederationResponse> {
    let r = &inbound.request;
    let mut builder = http::Request::builder()
        .method(r.method.as_str())
        .uri(format!("{homeserver}{}", r.path));
    for (name, value) in &r.headers {
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    let req = builder.body(Full::new(Bytes::from(r.body.clone()))).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(60), http.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(n, v)| {
            v.to_str()
                .ok()
                .map(|v| (n.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()?
        .to_bytes()
        .to_vec();
    Some(FederationResponse {
        status,
        headers,
        body,
    })
}

/// A transaction needs a 2xx before it counts as delivered; used by tests and tools.
pub fn is_transaction(inbound: &InboundRequest) -> bool {
    transaction_id(&inbound.request.method, &inbound.request.path).is_some()
}
