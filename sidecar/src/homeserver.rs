//! The local homeserver's federation listener, as the sidecar sees it.
//!
//! Inbound: a request that came through Spore is replayed to the homeserver byte for byte
//! (same method, path, `Authorization: X-Matrix ...` and body), so it verifies exactly as if
//! it had come directly ([`deliver_inbound`], the one delivery path). A transaction is retried
//! until the homeserver answers 2xx; a request/response call until it answers at all, and its
//! answer (whatever the status) goes back on the reply SURBs. When to give up instead is the
//! caller's [`RetryPolicy`].
//!
//! Outbound: [`OwnKeys`] keeps the homeserver's own self-signed key response, which travels
//! with every bundle (see [`crate::server_keys`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use spore_protocol::bundle::{MAX_BODY, MAX_SERVER_KEYS_LEN};
use spore_protocol::{FederationRequest, FederationResponse};
use tokio::sync::Mutex;

use crate::server_keys::{KeyError, ServerKeyCache, ServerKeys, unix_ms, verify_key_response};

/// One delivery attempt may take this long (the homeserver may be fetching keys, or busy).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest pause between delivery attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Longest pause while the homeserver refuses connections (not up yet, restarting): a failed
/// connect costs nothing, and a homeserver coming back after an absence should get its
/// backlog within a fraction of a second of listening, not after a doubled 30 s pause.
const UNREACHABLE_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Under [`GiveUp::Early`], a transaction the homeserver keeps refusing with a 4xx (other than
/// 401/408/429: keys not there yet, overload) is dropped after this many attempts: it will
/// never be accepted and would hold up the inbox forever.
const MAX_REFUSALS: u32 = 20;

/// How inbound delivery retries: the first pause (doubling up to 30 s) and when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub give_up: GiveUp,
}

/// When inbound delivery stops trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// Never: every failed attempt is retried, whatever the failure.
    Never,
    /// At once for a request that cannot be sent, at the first failed attempt of a
    /// request/response call, and after `MAX_REFUSALS` refusals of a transaction.
    Early,
    /// Transient failures (5xx, 408, 429, the homeserver unreachable) are retried forever;
    /// a transaction refused with any other 4xx this many times, or a request that cannot be
    /// sent at all, is given up (for the caller to dead-letter).
    AfterRefusals(u32),
}

impl RetryPolicy {
    /// The `spore-sidecar` binary's: its durable inbox keeps a request until the homeserver
    /// takes it, however long that is.
    pub const NEVER_GIVE_UP: RetryPolicy = RetryPolicy {
        first_delay: Duration::from_millis(100),
        give_up: GiveUp::Never,
    };
    /// For a relay of requests with no inbox behind it (the loopback gateway): the sender is
    /// told of a failure instead of waiting forever.
    pub const GIVE_UP_EARLY: RetryPolicy = RetryPolicy {
        first_delay: Duration::from_millis(250),
        give_up: GiveUp::Early,
    };
    /// The `spore-sidecar` binary's: transient failures forever, permanent refusals of a
    /// transaction `refusals` times, then into the dead-letter store.
    pub const fn dead_letter_after(refusals: u32) -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_millis(100),
            give_up: GiveUp::AfterRefusals(if refusals == 0 { 1 } else { refusals }),
        }
    }
}

/// Whether a non-2xx answer may go away by itself (server error, timeout, rate limit), as
/// opposed to a refusal that retrying will not change.
pub fn transient_status(status: u16) -> bool {
    status >= 500 || matches!(status, 408 | 429)
}

/// What became of one inbound request. Exhaustive on purpose: each caller must answer every
/// outcome (respond, ack, tell the sender).
#[derive(Debug)]
pub enum Delivered {
    /// A request/response call's answer (whatever its status), to send back.
    Answered(FederationResponse),
    /// The homeserver accepted the transaction (answered 2xx).
    Accepted,
    /// A request/response call whose caller had stopped waiting: not delivered.
    Expired,
    /// The request claims an origin bound to another Spore sender (issue 16): not delivered,
    /// counted and logged by the [`ServerKeyCache`].
    WrongSender,
}
/// Refresh our own key response when it has less than this left.
const OWN_KEYS_MARGIN_MS: u64 = 3600 * 1000;

/// Header a sidecar adds to request/response calls: when (Unix ms) the caller stops waiting.
pub const DEADLINE_HEADER: &str = "x-spore-deadline-ms";

/// Whether a request/response call's caller has given up by `now_ms` (its answer would go
/// nowhere, and a late `/invite` would show an invite that never entered the room). Requests
/// without a deadline never expire here.
pub fn request_expired(request: &FederationRequest, now_ms: u64) -> bool {
    request_deadline(request).is_some_and(|deadline| now_ms > deadline)
}

/// When (Unix ms) the caller of a request/response call stops waiting, if it said.
pub fn request_deadline(request: &FederationRequest) -> Option<u64> {
    request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(DEADLINE_HEADER))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
}

/// What a request/response caller gets when the answer is larger than Spore carries back
/// (`max_reply_bytes`, or the largest message): a 4xx, so that its homeserver reports the
/// failure without marking us as down. Small enough for any request's reply SURBs.
pub fn too_large_response() -> FederationResponse {
    FederationResponse {
        status: 413,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"errcode":"M_TOO_LARGE","error":"the answer is larger than Spore carries back (max_reply_bytes)"}"#.to_vec(),
    }
}

/// The homeserver's federation listener (plain HTTP on loopback).
#[derive(Clone)]
pub struct LocalHomeserver {
    base: String,
    server_name: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for LocalHomeserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHomeserver")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    #[error("homeserver unreachable: {0}")]
    Unreachable(String),
    #[error("homeserver timed out")]
    Timeout,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("homeserver refused the transaction {attempts} times (last status {status})")]
    Refused { status: u16, attempts: u32 },
}

impl LocalHomeserver {
    /// `base` is the federation listener, e.g. `http://127.0.0.1:8008`.
    pub fn new(base: impl Into<String>, server_name: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            server_name: server_name.into(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// One attempt: the request as the origin signed it, and the homeserver's answer.
    pub async fn deliver_once(
        &self,
        request: &FederationRequest,
    ) -> Result<FederationResponse, DeliveryError> {
        if !request.path.starts_with('/') {
            return Err(DeliveryError::BadRequest("path".into()));
        }
        let mut builder = http::Request::builder()
            .method(request.method.as_str())
            .uri(format!("{}{}", self.base, request.path))
            .header(http::header::HOST, self.server_name.as_str());
        for (name, value) in &request.headers {
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        let req = builder
            .body(Full::new(Bytes::from(request.body.clone())))
            .map_err(|e| DeliveryError::BadRequest(e.to_string()))?;
        let response = tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| DeliveryError::Timeout)?
            .map_err(|e| DeliveryError::Unreachable(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(ATTEMPT_TIMEOUT, Limited::new(body, MAX_BODY).collect())
            .await
            .map_err(|_| DeliveryError::Timeout)?
            .map_err(|e| DeliveryError::Unreachable(e.to_string()))?
            .to_bytes();
        let headers = parts
            .headers
            .iter()
            .filter(|(n, _)| matches!(n.as_str(), "content-type" | "cache-control" | "retry-after"))
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_owned(), v.to_owned()))
            })
            .collect();
        Ok(FederationResponse {
            status: parts.status.as_u16(),
            headers,
            body: body.to_vec(),
        })
    }

    /// Delivers a request, retrying with backoff until the homeserver answers 2xx (or, for a
    /// request/response call, answers at all) or `policy` gives up. Returns that answer.
    pub async fn deliver(
        &self,
        request: &FederationRequest,
        wants_response: bool,
        policy: RetryPolicy,
    ) -> Result<FederationResponse, DeliveryError> {
        let early = policy.give_up == GiveUp::Early;
        let max_refusals = match policy.give_up {
            GiveUp::Early => Some(MAX_REFUSALS),
            GiveUp::AfterRefusals(n) => Some(n),
            GiveUp::Never => None,
        };
        let mut delay = policy.first_delay;
        let mut refusals = 0;
        let mut said_unreachable = false;
        loop {
            let mut pause = delay;
            match self.deliver_once(request).await {
                Ok(r) if wants_response || (200..300).contains(&r.status) => return Ok(r),
                Ok(r) => {
                    // Under `Early`, 401 stays transient (the homeserver may not have fetched
                    // the origin's keys yet), as it always was for that policy.
                    let transient = transient_status(r.status) || (early && r.status == 401);
                    if !transient {
                        refusals += 1;
                        if max_refusals.is_some_and(|max| refusals >= max) {
                            return Err(DeliveryError::Refused {
                                status: r.status,
                                attempts: refusals,
                            });
                        }
                    }
                    tracing::info!(status = r.status, "homeserver did not accept yet; retrying");
                }
                Err(e @ DeliveryError::BadRequest(_))
                    if matches!(policy.give_up, GiveUp::AfterRefusals(_)) =>
                {
                    return Err(e);
                }
                Err(e)
                    if early && (wants_response || matches!(e, DeliveryError::BadRequest(_))) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    if matches!(e, DeliveryError::Unreachable(_)) {
                        pause = delay.min(UNREACHABLE_RETRY_DELAY);
                    }
                    if said_unreachable {
                        tracing::debug!(error = %e, "homeserver not reachable yet; retrying");
                    } else {
                        tracing::info!(error = %e, "homeserver not reachable yet; retrying");
                        said_unreachable = true;
                    }
                }
            }
            tokio::time::sleep(pause).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Fetches the homeserver's own `/_matrix/key/v2/server` response and checks it.
    pub async fn fetch_own_keys(&self) -> Result<ServerKeys, DeliveryError> {
        let request = FederationRequest {
            method: "GET".into(),
            path: "/_matrix/key/v2/server".into(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let r = self.deliver_once(&request).await?;
        if r.status != 200 || r.body.len() > MAX_SERVER_KEYS_LEN {
            return Err(DeliveryError::Unreachable(format!(
                "key request: status {}",
                r.status
            )));
        }
        verify_key_response(&self.server_name, &r.body, unix_ms())
            .map_err(|e| DeliveryError::BadRequest(format!("own keys: {e}")))
    }
}

/// Our homeserver's key response, fetched once and refreshed before it expires.
#[derive(Debug)]
pub struct OwnKeys {
    homeserver: LocalHomeserver,
    current: Mutex<Option<ServerKeys>>,
}

impl OwnKeys {
    pub fn new(homeserver: LocalHomeserver) -> Arc<Self> {
        Arc::new(Self {
            homeserver,
            current: Mutex::new(None),
        })
    }

    /// The key response to attach to a bundle (None if the homeserver cannot give one now:
    /// the bundle still goes, and the peer may have our keys cached already).
    pub async fn get(&self) -> Option<Vec<u8>> {
        let mut current = self.current.lock().await;
        let now = unix_ms();
        let fresh = current
            .as_ref()
            .is_some_and(|k| k.valid_until_ts > now + OWN_KEYS_MARGIN_MS);
        if !fresh {
            match self.homeserver.fetch_own_keys().await {
                Ok(k) => *current = Some(k),
                Err(e) => tracing::warn!(error = %e, "could not fetch our homeserver's keys"),
            }
        }
        current
            .as_ref()
            .filter(|k| k.valid_until_ts > now)
            .map(|k| k.json.clone())
    }
}

/// Binds `origin` to the Spore key `sender_key` that sealed its bundle (false: another key
/// holds the name; counted and logged by `keys`), then caches the key response the bundle
/// carries if it verifies and fits the name's pin. Once per request: a second call for a
/// refused request would count it twice.
pub(crate) fn authenticate_origin(
    keys: &ServerKeyCache,
    sender_key: &[u8; 32],
    origin: &str,
    server_keys: Option<&[u8]>,
) -> bool {
    // Before the key response is looked at: an impostor must not pin or rotate a name's
    // signing keys either.
    if keys.bind_sender(origin, sender_key).is_err() {
        return false;
    }
    match server_keys.map(|json| keys.insert(origin, json, unix_ms())) {
        // Logged once per server name by the cache: an impersonator must not flood the log.
        None | Some(Ok(())) | Some(Err(KeyError::NotPinnedKey(_))) => {}
        Some(Err(e)) => tracing::warn!(error = %e, "inbound server keys do not verify; ignored"),
    }
    true
}

/// Hands one inbound request to the homeserver: refuses it unless `origin` is bound to the
/// Spore key `sender_key` that sealed it, caches the origin's keys it carries (after checking
/// them) so the homeserver can verify the request, skips a request/response call whose caller
/// has stopped waiting, then delivers it under `policy` (a request/response call only until
/// its caller's deadline).
#[allow(clippy::too_many_arguments)] // one request's parts, each needed
pub async fn deliver_inbound(
    homeserver: &LocalHomeserver,
    keys: &ServerKeyCache,
    sender_key: &[u8; 32],
    origin: &str,
    server_keys: Option<&[u8]>,
    request: &FederationRequest,
    wants_response: bool,
    policy: RetryPolicy,
) -> Result<Delivered, DeliveryError> {
    if !authenticate_origin(keys, sender_key, origin, server_keys) {
        return Ok(Delivered::WrongSender);
    }
    let deadline = request_deadline(request).filter(|_| wants_response);
    let now = unix_ms();
    if deadline.is_some_and(|deadline| now > deadline) {
        return Ok(Delivered::Expired);
    }
    let delivery = homeserver.deliver(request, wants_response, policy);
    let response = match deadline {
        // Retries stop when the caller stops waiting: its answer would go nowhere.
        Some(deadline) => {
            let left = Duration::from_millis(deadline.saturating_sub(now));
            match tokio::time::timeout(left, delivery).await {
                Ok(r) => r?,
                Err(_) => return Ok(Delivered::Expired),
            }
        }
        None => delivery.await?,
    };
    Ok(if wants_response {
        Delivered::Answered(response)
    } else {
        Delivered::Accepted
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(headers: Vec<(String, String)>) -> FederationRequest {
        FederationRequest {
            method: "GET".into(),
            path: "/".into(),
            headers,
            body: Vec::new(),
        }
    }

    #[test]
    fn only_requests_past_their_deadline_expire() {
        let r = with(vec![("X-Spore-Deadline-Ms".into(), "1000".into())]);
        assert!(!request_expired(&r, 1000));
        assert!(request_expired(&r, 1001));
        assert!(!request_expired(&with(Vec::new()), u64::MAX));
        assert!(!request_expired(
            &with(vec![(DEADLINE_HEADER.into(), "soon".into())]),
            5
        ));
    }
}
