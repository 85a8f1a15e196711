//! The sidecar's outbound face: an HTTPS proxy the homeserver sends all federation through.
//!
//! An unmodified homeserver with `https_proxy=http://127.0.0.1:PORT` opens
//! `CONNECT hs-b.example:8448` here and starts TLS to `hs-b.example` inside the tunnel. The
//! proxy answers the CONNECT itself, ends the TLS with a certificate for `hs-b.example` from
//! the sidecar's [`LocalCa`], and reads the plain HTTP/1.1 requests:
//!
//! - `GET /.well-known/matrix/server` is answered locally with `{"m.server": "NAME:8448"}`:
//!   an explicit port makes the homeserver skip SRV lookups (there is no DNS to do them with),
//!   and its next connection comes back here.
//! - `GET /_matrix/key/v2/server` is answered from the verified [`ServerKeyCache`], which
//!   bundles from that server filled; on a miss it is asked of the server through Spore.
//! - `PUT /_matrix/federation/v1/send/{txnId}` is handed to the [`Carrier`] and answered
//!   `200 {"pdus":{}}` once durably queued: the peer may be offline for days.
//! - Everything else (make_join, send_join, invite, state, backfill, event, query...) goes as
//!   request/response and waits for the answer, or gets `502 M_UNKNOWN` when the peer does not
//!   answer in time.
//!
//! Our own homeserver's key response ([`OwnKeys`]) is handed to the carrier with every
//! request so the peer can verify us while we are offline; the sidecar's carrier attaches it
//! only until the peer holds the current one ([`crate::KeyRecipients`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use spore_client::{is_hop_by_hop, transaction_id};
use spore_protocol::bundle::MAX_BODY;
use spore_protocol::{FederationRequest, FederationResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::deadline::{RequestTimeouts, endpoint_name, stamp_deadline};
use crate::homeserver::OwnKeys;
use crate::server_keys::{ServerKeyCache, unix_ms};
use crate::tls::LocalCa;

/// Longest CONNECT request head read.
const MAX_CONNECT_HEAD: usize = 8 * 1024;
/// Tunnels open at once.
const MAX_TUNNELS: usize = 256;
/// A client that sends no CONNECT head (or no TLS hello) in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The port the well-known answer points at (any port works: it all comes back here).
pub const FEDERATION_PORT: u16 = 8448;

/// Why the carrier could not take or answer a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarryError {
    /// No Spore address is known for this server name.
    #[error("no spore address for {0}")]
    UnknownDestination(String),
    /// The peer did not answer in time (offline, or replies lost).
    #[error("no answer in time")]
    Timeout,
    /// Anything else (storage, transport stopped...).
    #[error("{0}")]
    Failed(String),
}

/// A boxed future returned by [`Carrier`] methods.
pub type CarryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CarryError>> + Send + 'a>>;

/// What moves federation requests to their destination: the Spore transport in the sidecar,
/// something simpler in tests.
pub trait Carrier: Send + Sync + 'static {
    /// Durably queues a one-way request (a transaction); returns once it is durable.
    fn send(
        &self,
        destination: &str,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
    ) -> CarryFuture<'_, ()>;

    /// Sends a request and waits up to `timeout` for its response.
    fn request(
        &self,
        destination: &str,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
        timeout: Duration,
    ) -> CarryFuture<'_, FederationResponse>;
}

/// The outbound proxy's settings.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    /// How long a request/response call waits for its answer, per endpoint (by default
    /// Synapse's own timeouts, so the caller's deadline is the one the request carries).
    pub timeouts: RequestTimeouts,
}

/// The proxy's shared state.
pub struct OutboundProxy {
    ca: Arc<LocalCa>,
    keys: Arc<ServerKeyCache>,
    own_keys: Arc<OwnKeys>,
    carrier: Arc<dyn Carrier>,
    settings: ProxySettings,
}

impl std::fmt::Debug for OutboundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundProxy").finish_non_exhaustive()
    }
}

impl OutboundProxy {
    pub fn new(
        ca: Arc<LocalCa>,
        keys: Arc<ServerKeyCache>,
        own_keys: Arc<OwnKeys>,
        carrier: Arc<dyn Carrier>,
        settings: ProxySettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            ca,
            keys,
            own_keys,
            carrier,
            settings,
        })
    }

    /// Accepts tunnels on `listener` until `shutdown` turns true, then closes the open ones:
    /// a tunnel is a homeserver's keep-alive connection and would otherwise outlive the
    /// sidecar's transport, answering every request with an error until the homeserver drops
    /// it. A request cut off this way was not answered, so the homeserver retries it (a
    /// transaction already queued is delivered once: the receiver deduplicates by txnId).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_TUNNELS));
        let mut tunnels = tokio::task::JoinSet::new();
        loop {
            // Finished tunnels' results, so the set holds only open ones.
            while tunnels.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.changed() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.changed() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let proxy = self.clone();
            tunnels.spawn(async move {
                if let Err(e) = proxy.tunnel(stream, peer).await {
                    tracing::debug!(error = %e, "proxy tunnel closed");
                }
                drop(permit);
            });
        }
        drop(listener);
        tunnels.shutdown().await;
    }

    async fn tunnel(
        self: Arc<Self>,
        mut stream: TcpStream,
        _peer: SocketAddr,
    ) -> std::io::Result<()> {
        let head = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut stream))
            .await
            .map_err(|_| std::io::Error::other("CONNECT head timed out"))??;
        let Some(target) = parse_connect(&head) else {
            stream
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await?;
            return Ok(());
        };
        let config = match self.ca.server_config(&target.host) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "refusing tunnel");
                stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await?;
                return Ok(());
            }
        };
        stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let destination = target.server_name();
        tracing::debug!("tunnel open");
        let proxy = self.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let destination = destination.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(&destination, req).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await
            .map_err(std::io::Error::other)
    }

    async fn handle(
        &self,
        destination: &str,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json_response(
                    413,
                    r#"{"errcode":"M_TOO_LARGE","error":"request body too large for Spore"}"#
                        .into(),
                );
            }
        };
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let bare = path.split('?').next().unwrap_or("/").to_owned();
        let bare = bare.as_str();
        let method = parts.method.as_str().to_owned();

        if method == "GET" && bare == "/.well-known/matrix/server" {
            let host = destination.split(':').next().unwrap_or(destination);
            return json_response(200, format!(r#"{{"m.server":"{host}:{FEDERATION_PORT}"}}"#));
        }
        if method == "GET" && bare.starts_with("/_matrix/key/v2/server") {
            return self.server_keys(destination, parts, body).await;
        }
        let request = FederationRequest {
            method,
            path,
            headers: carried_headers(&parts.headers),
            body: body.to_vec(),
        };
        let own = self.own_keys.get().await;
        if transaction_id(&request.method, bare).is_some() {
            return match self.carrier.send(destination, request, own).await {
                Ok(()) => {
                    tracing::debug!("transaction queued through spore");
                    json_response(200, r#"{"pdus":{}}"#.into())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "transaction not queued");
                    unavailable(&e)
                }
            };
        }
        let what = endpoint_name(bare);
        let mut request = request;
        let timeout = self.settings.timeouts.for_path(bare);
        stamp_deadline(&mut request, timeout);
        match self
            .carrier
            .request(destination, request, own, timeout)
            .await
        {
            Ok(response) => {
                tracing::debug!(
                    endpoint = what,
                    status = response.status,
                    "request answered through spore"
                );
                to_response(response)
            }
            Err(e) => {
                tracing::debug!(endpoint = what, error = %e, "request not answered");
                unavailable(&e)
            }
        }
    }

    /// `GET /_matrix/key/v2/server[/keyId]` for `destination`.
    async fn server_keys(
        &self,
        destination: &str,
        parts: http::request::Parts,
        body: Bytes,
    ) -> hyper::Response<Full<Bytes>> {
        let now = unix_ms();
        if let Some(keys) = self.keys.get(destination, now) {
            tracing::debug!("server keys answered from the verified cache");
            return json_bytes(200, keys.json.into());
        }
        // Not cached: ask the server itself through Spore (it must be online).
        let request = FederationRequest {
            method: "GET".into(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            headers: carried_headers(&parts.headers),
            body: body.to_vec(),
        };
        let mut request = request;
        let timeout = self.settings.timeouts.for_path(&request.path);
        stamp_deadline(&mut request, timeout);
        let own = self.own_keys.get().await;
        match self
            .carrier
            .request(destination, request, own, timeout)
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => {
                match self.keys.insert(destination, &r.body, now) {
                    Ok(()) => {
                        tracing::debug!("server keys fetched through spore and verified");
                        json_bytes(200, r.body.into())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "server keys from the peer do not verify");
                        json_response(
                            502,
                            r#"{"errcode":"M_UNKNOWN","error":"server keys did not verify"}"#
                                .into(),
                        )
                    }
                }
            }
            Ok(r) => to_response(r),
            Err(e) => unavailable(&e),
        }
    }
}

/// The target of a CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnectTarget {
    host: String,
    port: u16,
}

impl ConnectTarget {
    /// The Matrix server name this tunnel talks to: the host, with the port only when it is
    /// not one the well-known/default discovery leads to.
    fn server_name(&self) -> String {
        if self.port == FEDERATION_PORT || self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the head may be consumed (the TLS hello follows it).
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_HEAD {
            return Err(std::io::Error::other("CONNECT head too long"));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

fn parse_connect(head: &[u8]) -> Option<ConnectTarget> {
    let head = std::str::from_utf8(head).ok()?;
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    if parts.next()? != "CONNECT" {
        return None;
    }
    let authority = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some(ConnectTarget {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Headers that describe the request (not one HTTP hop, not this connection's framing):
/// `Authorization` (X-Matrix), `Content-Type`, `User-Agent`...
fn carried_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            !is_hop_by_hop(name.as_str()) && !matches!(name.as_str(), "host" | "content-length")
        })
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

fn to_response(r: FederationResponse) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder().status(r.status);
    for (name, value) in &r.headers {
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| {
            json_response(
                502,
                r#"{"errcode":"M_UNKNOWN","error":"bad response through spore"}"#.into(),
            )
        })
}

fn unavailable(e: &CarryError) -> hyper::Response<Full<Bytes>> {
    let body = match e {
        // How to add it, in the body and (once) in the log.
        CarryError::UnknownDestination(name) => return crate::sidecar::unknown_destination(name),
        CarryError::Timeout => {
            r#"{"errcode":"M_UNKNOWN","error":"peer did not answer through Spore in time"}"#
        }
        CarryError::Failed(_) => {
            r#"{"errcode":"M_UNKNOWN","error":"Spore could not carry the request"}"#
        }
    };
    json_response(502, body.into())
}

pub(crate) fn json_response(status: u16, body: String) -> hyper::Response<Full<Bytes>> {
    json_bytes(status, Bytes::from(body))
}

fn json_bytes(status: u16, body: Bytes) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_heads_parse() {
        let t = parse_connect(b"CONNECT HS-B.spore.test:8448 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(t.host, "hs-b.spore.test");
        assert_eq!(t.server_name(), "hs-b.spore.test");
        let t = parse_connect(b"CONNECT hs-b.spore.test:9000 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(t.server_name(), "hs-b.spore.test:9000");
        assert!(parse_connect(b"GET / HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_connect(b"CONNECT :1 HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_connect(b"CONNECT host HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn only_put_send_is_a_transaction() {
        assert!(transaction_id("PUT", "/_matrix/federation/v1/send/abc").is_some());
        assert!(transaction_id("GET", "/_matrix/federation/v1/send/abc").is_none());
        assert!(transaction_id("PUT", "/_matrix/federation/v2/send_join/!r/$e").is_none());
        assert_eq!(
            endpoint_name("/_matrix/federation/v1/make_join/!r/@u"),
            "make_join"
        );
    }
}
