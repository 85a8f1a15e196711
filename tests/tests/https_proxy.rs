//! The sidecar's HTTPS proxy as an unmodified homeserver sees it: CONNECT, TLS to the
//! destination's name under the sidecar's local CA, then plain federation requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use spore_protocol::{FederationRequest, FederationResponse};
use spore_sidecar::{
    Carrier, CarryError, CarryFuture, LocalCa, LocalHomeserver, OutboundProxy, OwnKeys,
    ProxySettings, ServerKeyCache, canonical_json, unix_ms,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Records what the proxy hands over; answers requests with 200, or times out for "offline".
#[derive(Default)]
struct FakeCarrier {
    sent: Mutex<Vec<(String, FederationRequest)>>,
}

impl Carrier for FakeCarrier {
    fn send(
        &self,
        destination: &str,
        request: FederationRequest,
        _keys: Option<Vec<u8>>,
    ) -> CarryFuture<'_, ()> {
        self.sent
            .lock()
            .unwrap()
            .push((destination.to_owned(), request));
        Box::pin(async { Ok(()) })
    }

    fn request(
        &self,
        destination: &str,
        request: FederationRequest,
        _keys: Option<Vec<u8>>,
        _timeout: Duration,
    ) -> CarryFuture<'_, FederationResponse> {
        let offline = destination == "offline.test";
        let key_request = request.path.starts_with("/_matrix/key/v2/server");
        self.sent
            .lock()
            .unwrap()
            .push((destination.to_owned(), request));
        let destination = destination.to_owned();
        Box::pin(async move {
            if offline {
                return Err(CarryError::Timeout);
            }
            if key_request {
                let body = if destination == "forger.test" {
                    key_response("someone-else.test")
                } else {
                    key_response(&destination)
                };
                return Ok(FederationResponse {
                    status: 200,
                    headers: Vec::new(),
                    body,
                });
            }
            Ok(FederationResponse {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: br#"{"room_version":"10"}"#.to_vec(),
            })
        })
    }
}

fn key_response(server: &str) -> Vec<u8> {
    let sk = SigningKey::from_bytes(&[7; 32]);
    let mut v = serde_json::json!({
        "server_name": server,
        "valid_until_ts": unix_ms() + 3_600_000,
        "old_verify_keys": {},
        "verify_keys": {"ed25519:a": {"key": STANDARD_NO_PAD.encode(sk.verifying_key().as_bytes())}},
    });
    let mut msg = String::new();
    canonical_json(&v, &mut msg);
    let sig = STANDARD_NO_PAD.encode(sk.sign(msg.as_bytes()).to_bytes());
    v["signatures"] = serde_json::json!({ server: {"ed25519:a": sig} });
    serde_json::to_vec(&v).unwrap()
}

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// CONNECT + TLS (trusting only the CA) + an HTTP/1.1 connection, as Synapse opens it.
pub(crate) async fn tunnel(
    proxy: std::net::SocketAddr,
    ca_pem: &str,
    host: &str,
    port: u16,
) -> Sender {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_owned()).unwrap(), tcp)
        .await
        .expect("certificate for the requested name, signed by the local CA");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn call(sender: &mut Sender, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(
            "Authorization",
            r#"X-Matrix origin="hs-a.test",key="ed25519:a",sig="x""#,
        )
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let r = sender.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn proxy_terminates_tls_queues_transactions_and_answers_keys_locally() {
    crate::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(LocalCa::load_or_create(&dir.path().join("ca")).unwrap());
    let ca_pem = ca.cert_pem().to_owned();
    let keys = Arc::new(ServerKeyCache::in_memory());
    let hs_b_keys = key_response("hs-b.test");
    keys.insert("hs-b.test", &hs_b_keys, unix_ms()).unwrap();
    let carrier = Arc::new(FakeCarrier::default());
    let proxy = OutboundProxy::new(
        ca,
        keys,
        OwnKeys::new(LocalHomeserver::new("http://127.0.0.1:1", "hs-a.test")),
        carrier.clone(),
        ProxySettings::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(proxy.serve(listener, stop_rx));

    // Discovery: well-known through CONNECT :443 points at an explicit port (no SRV).
    let mut s = tunnel(addr, &ca_pem, "hs-b.test", 443).await;
    let (status, body) = call(&mut s, "GET", "/.well-known/matrix/server", "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"m.server":"hs-b.test:8448"}"#)
    );

    let mut s = tunnel(addr, &ca_pem, "hs-b.test", 8448).await;
    // Keys come from the verified cache, exactly as the origin signed them.
    let (status, body) = call(&mut s, "GET", "/_matrix/key/v2/server", "").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), &hs_b_keys[..]);
    // A transaction is answered at once and handed over, signature header intact.
    let (status, body) = call(
        &mut s,
        "PUT",
        "/_matrix/federation/v1/send/t1",
        r#"{"pdus":[]}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"pdus":{}}"#));
    // A query waits for the peer's answer.
    let (status, body) = call(
        &mut s,
        "GET",
        "/_matrix/federation/v1/make_join/!r:hs-b.test/@u:hs-a.test",
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"room_version":"10"}"#));
    {
        let sent = carrier.sent.lock().unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, "hs-b.test");
        assert_eq!(sent[0].1.body, br#"{"pdus":[]}"#);
        assert!(
            sent[0]
                .1
                .headers
                .iter()
                .any(|(n, v)| n == "authorization" && v.starts_with("X-Matrix "))
        );
    }

    // A peer that does not answer: a Matrix error, not a hang.
    let mut s = tunnel(addr, &ca_pem, "offline.test", 8448).await;
    let (status, body) = call(&mut s, "GET", "/_matrix/federation/v1/query/profile", "").await;
    assert_eq!(status, 502);
    assert!(body.contains("M_UNKNOWN"), "{body}");
}

#[tokio::test]
async fn proxy_refuses_anything_but_connect() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = OutboundProxy::new(
        Arc::new(LocalCa::load_or_create(dir.path()).unwrap()),
        Arc::new(ServerKeyCache::in_memory()),
        OwnKeys::new(LocalHomeserver::new("http://127.0.0.1:1", "hs-a.test")),
        Arc::new(FakeCarrier::default()),
        ProxySettings::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(proxy.serve(listener, stop_rx));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET http://hs-b.test/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 405"));
}

#[tokio::test]
async fn missing_keys_are_fetched_through_spore_verified_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(LocalCa::load_or_create(dir.path()).unwrap());
    let ca_pem = ca.cert_pem().to_owned();
    let keys = Arc::new(ServerKeyCache::in_memory());
    let carrier = Arc::new(FakeCarrier::default());
    let proxy = OutboundProxy::new(
        ca,
        keys.clone(),
        OwnKeys::new(LocalHomeserver::new("http://127.0.0.1:1", "hs-a.test")),
        carrier.clone(),
        ProxySettings::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(proxy.serve(listener, stop_rx));

    let mut s = tunnel(addr, &ca_pem, "hs-c.test", 8448).await;
    let (status, _) = call(&mut s, "GET", "/_matrix/key/v2/server", "").await;
    assert_eq!(status, 200);
    assert!(
        keys.get("hs-c.test", unix_ms()).is_some(),
        "verified and cached"
    );
    let (status, _) = call(&mut s, "GET", "/_matrix/key/v2/server", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        carrier.sent.lock().unwrap().len(),
        1,
        "second answer from the cache"
    );

    // A peer answering with somebody else's keys is refused, and nothing is cached.
    let mut s = tunnel(addr, &ca_pem, "forger.test", 8448).await;
    let (status, body) = call(&mut s, "GET", "/_matrix/key/v2/server", "").await;
    assert_eq!(status, 502, "{body}");
    assert!(keys.get("forger.test", unix_ms()).is_none());
}
