//! A stub homeserver federation listener that records what it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use spore_protocol::FederationRequest;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct State {
    received: Mutex<Vec<FederationRequest>>,
    /// Answer this many requests with 500 first (to exercise retries).
    fail_next: AtomicUsize,
    /// Transactions from these origins (per their X-Matrix `origin=`) get this status.
    refused: Mutex<Vec<(String, u16)>>,
    /// What `GET /_matrix/key/v2/server` answers, if set (a sidecar fetches its homeserver's
    /// key response there to attach it to bundles).
    key_response: Mutex<Option<Vec<u8>>>,
    /// Requests whose path starts with the prefix get `200` and these bytes.
    bodies: Mutex<Vec<(String, Bytes)>>,
}

/// Records every request; answers `200 {}` to transactions and `200 {"echo": path}` to others.
#[derive(Debug, Clone)]
pub struct StubHomeserver {
    local_addr: SocketAddr,
    state: Arc<State>,
}

impl StubHomeserver {
    pub async fn start() -> std::io::Result<StubHomeserver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: http::Request<Incoming>| {
                            let s = s.clone();
                            async move { Ok::<_, Infallible>(handle(&s, req).await) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(StubHomeserver { local_addr, state })
    }

    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Everything received so far (including requests answered with 500).
    pub fn received(&self) -> Vec<FederationRequest> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the next `n` requests fail with 500.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answers every transaction whose X-Matrix header names `origin` with `status` (e.g. 401),
    /// until [`StubHomeserver::accept_all`].
    pub fn refuse_origin(&self, origin: &str, status: u16) {
        let mut refused = self.state.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.retain(|(o, _)| o != origin);
        refused.push((origin.to_owned(), status));
    }

    /// Answers `GET /_matrix/key/v2/server` with `json` (a signed key response) from now on.
    pub fn serve_key_response(&self, json: Vec<u8>) {
        *self
            .state
            .key_response
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(json);
    }

    /// Answers every request whose path starts with `path_prefix` with `200` and `body`
    /// (`application/octet-stream`): a large answer such as a media download or a room's
    /// state.
    pub fn serve_body(&self, path_prefix: &str, body: Vec<u8>) {
        let mut bodies = self.state.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|(p, _)| p != path_prefix);
        bodies.push((path_prefix.to_owned(), Bytes::from(body)));
    }

    /// Stops refusing any origin.
    pub fn accept_all(&self) {
        self.state
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The `origin="..."` of an `Authorization: X-Matrix ...` header.
fn x_matrix_origin(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.strip_prefix("X-Matrix")?;
    rest.split(',').find_map(|part| {
        let part = part.trim();
        let v = part.strip_prefix("origin=")?;
        Some(v.trim_matches('"').to_owned())
    })
}

async fn handle(state: &State, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    state
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(FederationRequest {
            method: parts.method.as_str().to_owned(),
            path: path.clone(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (n.as_str().to_owned(), v.to_owned()))
                })
                .collect(),
            body: body.to_vec(),
        });
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let refused = x_matrix_origin(&parts.headers).and_then(|origin| {
        state
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(o, _)| *o == origin)
            .map(|(_, status)| *status)
    });
    let key_response = state
        .key_response
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|_| path.starts_with("/_matrix/key/v2/server"));
    if let Some(json) = key_response {
        return http::Response::new(Full::new(Bytes::from(json)));
    }
    let served = state
        .bodies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, body)| body.clone());
    if let (false, Some(body)) = (failing, served) {
        let mut r = http::Response::new(Full::new(body));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return r;
    }
    let (status, body) = if failing {
        (500, r#"{"errcode":"M_UNKNOWN"}"#.to_owned())
    } else if let Some(status) =
        refused.filter(|_| path.starts_with("/_matrix/federation/v1/send/"))
    {
        (status, r#"{"errcode":"M_UNAUTHORIZED"}"#.to_owned())
    } else if path.starts_with("/_matrix/federation/v1/send/") {
        (200, "{}".to_owned())
    } else {
        (200, format!(r#"{{"echo":"{path}"}}"#))
    };
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r
}
