//! The `tower::Service` face of the transport: a Rust homeserver swaps its federation HTTP
//! client for [`SporeFederationClient`] and its federation traffic goes through Spore.
//!
//! `PUT /_matrix/federation/v1/send/{txnId}` is answered `200 {}` as soon as the transaction is
//! durably queued (the recipient may be offline for days; Spore guarantees delivery, and the
//! recipient deduplicates by `(origin, txnId)`). Every other request goes out with reply SURBs
//! and waits for the response.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use spore_protocol::{FederationRequest, FederationResponse, SporeAddress};

use crate::error::{ClientError, Result};
use crate::transport::Transport;

/// Finds the Spore address of a Matrix server name.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, server_name: &str) -> Option<SporeAddress>;
}

/// A fixed map from server name to Spore address (config files, tests).
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    peers: HashMap<String, SporeAddress>,
}

impl StaticResolver {
    pub fn new(peers: impl IntoIterator<Item = (String, SporeAddress)>) -> Self {
        Self {
            peers: peers.into_iter().collect(),
        }
    }

    pub fn insert(&mut self, server_name: impl Into<String>, address: SporeAddress) {
        self.peers.insert(server_name.into(), address);
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, server_name: &str) -> Option<SporeAddress> {
        self.peers.get(server_name).cloned()
    }
}

pub use crate::dedup::transaction_id;

/// Headers that describe one HTTP hop, not the request: never carried through Spore, in either
/// direction (any case of `name`). The sidecar's proxy filters with the same list.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// The destination server name of a federation request: the URI's host (as a federation
/// client builds it, `https://server/...` or `matrix-federation://server/...`), else `Host`.
pub fn destination_of<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(host) = req.uri().host() {
        return Some(match req.uri().port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        });
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

/// An HTTP request as the opaque [`FederationRequest`] Spore carries.
pub fn to_federation_request(req: http::Request<Bytes>) -> FederationRequest {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str()))
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    FederationRequest {
        method: parts.method.as_str().to_owned(),
        path,
        headers,
        body: body.to_vec(),
    }
}

/// A [`FederationResponse`] as an HTTP response (invalid headers are skipped).
pub fn to_http_response(response: FederationResponse) -> http::Response<Bytes> {
    let mut builder = http::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Bytes::from(response.body))
        .unwrap_or_else(|_| json_response(502, r#"{"errcode":"M_UNKNOWN"}"#))
}

fn json_response(status: u16, body: &'static str) -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from_static(body.as_bytes()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A federation HTTP client that sends through Spore.
///
/// The swap in a tower-based homeserver (its federation client is any
/// `Service<http::Request<Bytes>, Response = http::Response<Bytes>>`):
///
/// ```no_run
/// # async fn demo(transport: spore_client::Transport, bob: spore_protocol::SporeAddress) {
/// use bytes::Bytes;
/// use spore_client::{SporeFederationClient, StaticResolver};
/// use tower::{Service, ServiceExt};
///
/// // Before: let mut federation = HttpsFederationClient::new(...);
/// let resolver = StaticResolver::new([("bob.example".to_owned(), bob)]);
/// let mut federation = SporeFederationClient::new(transport, resolver);
///
/// let txn = http::Request::put("https://bob.example/_matrix/federation/v1/send/17")
///     .header("Authorization", "X-Matrix origin=\"alice.example\",key=\"ed25519:1\",sig=\"...\"")
///     .body(Bytes::from_static(br#"{"origin":"alice.example","pdus":[],"edus":[]}"#))
///     .unwrap();
/// let response = federation.ready().await.unwrap().call(txn).await.unwrap();
/// assert_eq!(response.status(), 200); // durably queued; delivered when Bob comes online
/// # }
/// ```
pub struct SporeFederationClient<R> {
    transport: Transport,
    resolver: Arc<R>,
    request_timeout: Duration,
}

impl<R> Clone for SporeFederationClient<R> {
    fn clone(&self) -> Self {
        Self {
            transport: self.transport.clone(),
            resolver: self.resolver.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

impl<R> std::fmt::Debug for SporeFederationClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SporeFederationClient")
            .finish_non_exhaustive()
    }
}

impl<R: Resolver> SporeFederationClient<R> {
    pub fn new(transport: Transport, resolver: R) -> Self {
        Self {
            transport,
            resolver: Arc::new(resolver),
            request_timeout: Duration::from_secs(60),
        }
    }

    /// How long a request/response call waits for its answer (default 60 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    async fn handle(
        transport: Transport,
        resolver: Arc<R>,
        timeout: Duration,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>> {
        let server =
            destination_of(&req).ok_or_else(|| ClientError::UnknownDestination(String::new()))?;
        let address = resolver
            .resolve(&server)
            .ok_or(ClientError::UnknownDestination(server))?;
        let request = to_federation_request(req);
        if transaction_id(&request.method, &request.path).is_some() {
            transport.send(&address, request).await?;
            return Ok(json_response(200, "{}"));
        }
        let response = transport.request(&address, request, timeout).await?;
        Ok(to_http_response(response))
    }
}

impl<R: Resolver> tower::Service<http::Request<Bytes>> for SporeFederationClient<R> {
    type Response = http::Response<Bytes>;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Bytes>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        Box::pin(Self::handle(
            self.transport.clone(),
            self.resolver.clone(),
            self.request_timeout,
            req,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_put_send_is_a_transaction() {
        assert_eq!(
            transaction_id("PUT", "/_matrix/federation/v1/send/abc"),
            Some("abc")
        );
        assert_eq!(
            transaction_id("PUT", "/_matrix/federation/v1/send/abc?x=1"),
            Some("abc")
        );
        assert_eq!(
            transaction_id("GET", "/_matrix/federation/v1/send/abc"),
            None
        );
        assert_eq!(
            transaction_id("PUT", "/_matrix/federation/v1/send_join/!r/$e"),
            None
        );
    }

    #[test]
    fn hop_by_hop_headers_are_known_in_any_case() {
        assert!(is_hop_by_hop("Transfer-Encoding"));
        assert!(is_hop_by_hop("proxy-authorization"));
        assert!(!is_hop_by_hop("Authorization"));
        assert!(!is_hop_by_hop("content-type"));
    }

    #[test]
    fn destination_comes_from_the_uri_or_the_host_header() {
        let r = http::Request::get("https://bob.example:8448/x")
            .body(())
            .unwrap_or_default();
        assert_eq!(destination_of(&r).as_deref(), Some("bob.example:8448"));
        let r = http::Request::get("/x")
            .header("Host", "bob.example")
            .body(())
            .unwrap_or_default();
        assert_eq!(destination_of(&r).as_deref(), Some("bob.example"));
    }
}
