//! How long the caller of a request/response federation call waits, per endpoint.
//!
//! A homeserver gives up on a federation request after its own timeout (Synapse: 10 s for
//! `/query/*`, 20 s for `/make_join` and friends, 10 minutes for `/state`, 60 s for the rest).
//! The sending sidecar waits exactly as long, and stamps the request with the moment it stops
//! waiting ([`DEADLINE_HEADER`]), so the receiving sidecar does not execute a request whose
//! caller has gone (a late `/invite` would show an invite for a room the inviter never saw
//! accepted). When nothing answers in time, the caller gets a 502.

use std::collections::HashMap;
use std::time::Duration;

use spore_protocol::FederationRequest;

use crate::homeserver::DEADLINE_HEADER;
use crate::server_keys::unix_ms;

/// Synapse's own timeouts for the calls it makes with one (synapse/federation/transport/
/// client.py: `make_query` 10 000 ms, `make_membership_event` 20 000 ms, `get_room_state`
/// 600 000 ms); every other call uses its federation client's default, 60 s.
const SYNAPSE_TIMEOUTS: &[(&str, u64)] = &[
    ("query", 10),
    ("make_join", 20),
    ("make_leave", 20),
    ("make_knock", 20),
    ("state", 600),
];

/// Per-endpoint caller timeouts, by the path segment after the API version
/// (`/_matrix/federation/v1/query/profile` is `query`).
///
/// ```
/// use std::time::Duration;
/// use spore_sidecar::RequestTimeouts;
///
/// let t = RequestTimeouts::synapse(Duration::from_secs(60))
///     .with_endpoint("invite", Duration::from_secs(30));
/// assert_eq!(t.for_path("/_matrix/federation/v1/query/profile?user_id=@a:b"), Duration::from_secs(10));
/// assert_eq!(t.for_path("/_matrix/federation/v2/invite/!r/$e"), Duration::from_secs(30));
/// assert_eq!(t.for_path("/_matrix/federation/v1/backfill/!r"), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTimeouts {
    default: Duration,
    endpoints: HashMap<String, Duration>,
}

impl RequestTimeouts {
    /// `default` for every endpoint.
    pub fn uniform(default: Duration) -> Self {
        Self {
            default,
            endpoints: HashMap::new(),
        }
    }

    /// Synapse's per-endpoint timeouts, and `default` for the others.
    pub fn synapse(default: Duration) -> Self {
        SYNAPSE_TIMEOUTS
            .iter()
            .fold(Self::uniform(default), |t, (endpoint, secs)| {
                t.with_endpoint(endpoint, Duration::from_secs(*secs))
            })
    }

    /// Sets the timeout of one endpoint (`query`, `make_join`, `send_join`, `invite`…).
    pub fn with_endpoint(mut self, endpoint: &str, timeout: Duration) -> Self {
        self.endpoints.insert(endpoint.to_owned(), timeout);
        self
    }

    /// The timeout of the call to `path` (path and query).
    pub fn for_path(&self, path: &str) -> Duration {
        let bare = path.split('?').next().unwrap_or(path);
        self.endpoints
            .get(endpoint_name(bare))
            .copied()
            .unwrap_or(self.default)
    }
}

impl Default for RequestTimeouts {
    /// Synapse's, with its 60 s default.
    fn default() -> Self {
        Self::synapse(Duration::from_secs(60))
    }
}

/// The federation endpoint a path names: `/_matrix/federation/v1/make_join/…` is
/// `make_join`; anything else is `other`.
pub(crate) fn endpoint_name(path: &str) -> &str {
    let mut it = path.trim_start_matches('/').split('/');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("_matrix"), Some(_), Some(_), Some(endpoint)) => endpoint,
        _ => "other",
    }
}

/// Marks a request/response call with the moment its caller stops waiting, `timeout` from
/// now, so that the receiving sidecar does not deliver it after that
/// ([`crate::request_expired`]). Headers are outside the X-Matrix signature, and this one
/// travels sealed inside the bundle.
pub(crate) fn stamp_deadline(request: &mut FederationRequest, timeout: Duration) {
    let deadline = deadline_after(timeout);
    request
        .headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case(DEADLINE_HEADER));
    request
        .headers
        .push((DEADLINE_HEADER.to_owned(), deadline.to_string()));
}

/// The Unix time in ms `timeout` from now: the value of [`DEADLINE_HEADER`].
pub(crate) fn deadline_after(timeout: Duration) -> u64 {
    unix_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_defaults_and_overrides() {
        let t = RequestTimeouts::default();
        let secs = |p: &str| t.for_path(p).as_secs();
        assert_eq!(
            secs("/_matrix/federation/v1/query/directory?room_alias=%23a"),
            10
        );
        assert_eq!(secs("/_matrix/federation/v1/make_join/!r/@u"), 20);
        assert_eq!(secs("/_matrix/federation/v2/send_join/!r/$e"), 60);
        assert_eq!(secs("/_matrix/federation/v1/state/!r"), 600);
        assert_eq!(secs("/_matrix/key/v2/server"), 60);
        assert_eq!(secs("/elsewhere"), 60);
        let t = t.with_endpoint("query", Duration::from_secs(3));
        assert_eq!(
            t.for_path("/_matrix/federation/v1/query/profile").as_secs(),
            3
        );
    }

    #[test]
    fn stamp_replaces_a_deadline_the_caller_sent() {
        let mut r = FederationRequest {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![("X-Spore-Deadline-Ms".into(), "1".into())],
            body: Vec::new(),
        };
        stamp_deadline(&mut r, Duration::from_secs(10));
        assert_eq!(r.headers.len(), 1);
        let deadline: u64 = r.headers[0].1.parse().unwrap();
        assert!(deadline >= unix_ms() + 9_000);
    }
}
