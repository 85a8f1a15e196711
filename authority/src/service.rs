//! The running authority: the HTTP server (uploads, votes, signatures, the directory) and the
//! per-epoch driver that votes, builds the consensus and collects signatures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use spore_protocol::RelayId;
use spore_protocol::directory::{MAX_RELAYS, NetworkParams, RelayDescriptor};
use thiserror::Error;
use tokio::sync::watch;

use crate::Directory;
use crate::config::{AuthorityConfig, ConfigError};
use crate::consensus::consensus;
use crate::schedule::{CONSENSUS_AT, Schedule, VOTE_AT, VOTES_UNTIL};

/// Largest descriptor upload accepted (an honest one is under 500 bytes).
pub const MAX_DESCRIPTOR_BYTES: usize = 4096;
/// How often the driver looks at the clock.
const TICK: Duration = Duration::from_millis(250);
/// A peer that has not answered within this is tried again next tick.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// A relay's link address must accept a TCP connection within this to be voted for (well
/// above a connect across the world, ~0.3 s; capped by [`probe_timeout`] in short epochs).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection must finish its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept (relays retry, readers use mirrors).
const MAX_CONNECTIONS: usize = 512;

/// Why the service could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What one epoch's round has reached.
#[derive(Debug, Default)]
struct Round {
    /// Our vote, signed, as served at `/vote/{epoch}`.
    vote: Option<Bytes>,
    /// The descriptors of each vote received (ours included), by authority key.
    votes: BTreeMap<[u8; 32], Vec<RelayDescriptor>>,
    /// Authorities whose vote was refused (logged once).
    refused_votes: HashSet<[u8; 32]>,
    /// The consensus with every signature collected so far (ours first).
    document: Option<Directory>,
    /// The consensus signed by us alone, as served at `/signature/{epoch}`.
    own_signature: Option<Bytes>,
}

#[derive(Debug, Default)]
struct State {
    descriptors: HashMap<RelayId, RelayDescriptor>,
    rounds: BTreeMap<u64, Round>,
    /// The document served at `/directory`, and its bytes.
    published: Option<(Directory, Bytes)>,
}

#[derive(Debug)]
struct Peer {
    key: [u8; 32],
    url: String,
}

#[derive(Debug)]
struct Shared {
    key: SigningKey,
    me: [u8; 32],
    peers: Vec<Peer>,
    threshold: usize,
    params: NetworkParams,
    schedule: Schedule,
    directory_file: Option<PathBuf>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn authorities(&self) -> usize {
        self.peers.len() + 1
    }

    fn all_keys(&self) -> Vec<[u8; 32]> {
        std::iter::once(self.me)
            .chain(self.peers.iter().map(|p| p.key))
            .collect()
    }
}

/// A started authority. Dropping it stops it; [`shutdown`](Self::shutdown) also waits.
#[derive(Debug)]
pub struct RunningAuthority {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningAuthority {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.shared.me
    }

    /// The document served at `/directory` now.
    pub fn published(&self) -> Option<Directory> {
        self.shared
            .state()
            .published
            .as_ref()
            .map(|(d, _)| d.clone())
    }

    /// How many relays' descriptors are held.
    pub fn descriptors_held(&self) -> usize {
        self.shared.state().descriptors.len()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for RunningAuthority {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Starts the server and the driver. `config.key_file` is not read: the caller passes `key`.
pub async fn start(
    config: AuthorityConfig,
    key: SigningKey,
) -> Result<RunningAuthority, ServiceError> {
    config.validate()?;
    let peers = config
        .peer_keys()?
        .into_iter()
        .zip(&config.peers)
        .map(|(key, p)| Peer {
            key,
            url: p.url.trim_end_matches('/').to_owned(),
        })
        .collect();
    let params = config.params.params();
    let shared = Arc::new(Shared {
        me: key.verifying_key().to_bytes(),
        key,
        peers,
        threshold: config.threshold,
        params,
        schedule: Schedule {
            epoch_length_secs: params.epoch_length_secs,
        },
        directory_file: config.directory_file.clone(),
        state: Mutex::new(State::default()),
    });
    restore_published(&shared);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(serve(listener, shared.clone(), stopped.clone())),
        tokio::spawn(drive(shared.clone(), stopped)),
    ];
    tracing::info!(%local_addr, authorities = shared.authorities(), threshold = shared.threshold, "directory authority started");
    Ok(RunningAuthority {
        local_addr,
        shared,
        stop,
        tasks,
    })
}

/// Serves the last document written to `directory_file` until a new one, if it still verifies.
fn restore_published(shared: &Shared) {
    let Some(path) = &shared.directory_file else {
        return;
    };
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let now = now_ms() / 1000;
    match Directory::from_bytes(&bytes).and_then(|d| {
        d.verify(&shared.all_keys(), shared.threshold, now)
            .map(|()| d)
    }) {
        Ok(d) => {
            tracing::info!(epoch = d.epoch, "serving the last published directory");
            shared.state().published = Some((d, Bytes::from(bytes)));
        }
        Err(e) => tracing::info!(error = %e, "last published directory not usable"),
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&spore_directory_fetch::format_http_date(
        now_ms() / 1000,
    )) {
        r.headers_mut().insert(hyper::header::DATE, v);
    }
    r
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let epoch_of = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|e| e.parse::<u64>().ok())
    };
    match (req.method(), path.as_str()) {
        (&Method::POST, "/descriptor") => upload(shared, req).await,
        (&Method::GET, "/directory") => match &shared.state().published {
            Some((_, bytes)) => answer(StatusCode::OK, bytes.clone()),
            None => answer(StatusCode::SERVICE_UNAVAILABLE, "no directory yet"),
        },
        (&Method::GET, _) if epoch_of("/vote/").is_some() => {
            let round = epoch_of("/vote/").unwrap_or_default();
            match shared
                .state()
                .rounds
                .get(&round)
                .and_then(|r| r.vote.clone())
            {
                Some(b) => answer(StatusCode::OK, b),
                None => answer(StatusCode::NOT_FOUND, "no vote for this epoch"),
            }
        }
        (&Method::GET, _) if epoch_of("/signature/").is_some() => {
            let round = epoch_of("/signature/").unwrap_or_default();
            match shared
                .state()
                .rounds
                .get(&round)
                .and_then(|r| r.own_signature.clone())
            {
                Some(b) => answer(StatusCode::OK, b),
                None => answer(StatusCode::NOT_FOUND, "no document for this epoch yet"),
            }
        }
        (_, "/descriptor" | "/directory") => {
            answer(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => answer(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `POST /descriptor`: checked completely before anything changes.
async fn upload(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_DESCRIPTOR_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a descriptor is at most {MAX_DESCRIPTOR_BYTES} bytes"),
            );
        }
    };
    let d = match RelayDescriptor::from_bytes(&body) {
        Ok(d) => d,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("not a relay descriptor: {e}"),
            );
        }
    };
    let now = now_ms() / 1000;
    if let Err(e) = d.verify(now) {
        return answer(
            StatusCode::BAD_REQUEST,
            format!(
                "descriptor of relay {} does not verify at {now} (check its signature and the relay's clock): {e}",
                d.id.short()
            ),
        );
    }
    let mut state = shared.state();
    let held = state.descriptors.len();
    match state.descriptors.get(&d.id) {
        None if held >= MAX_RELAYS => {
            return answer(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this authority holds the most relays a directory lists ({MAX_RELAYS})"),
            );
        }
        Some(cur) if cur.published_at > d.published_at => {
            return answer(
                StatusCode::CONFLICT,
                "a more recently published descriptor of this relay is held",
            );
        }
        _ => {}
    }
    tracing::debug!(relay = %d.id.short(), "descriptor accepted");
    state.descriptors.insert(d.id, d);
    answer(StatusCode::OK, "accepted")
}

/// Looks at the clock every tick and moves the rounds of the current and next epoch along.
async fn drive(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let now_ms = now_ms();
        let now = now_ms / 1000;
        let epoch = shared.schedule.epoch_at(now);
        let next = epoch + 1;
        let phase = shared.schedule.phase(now_ms);
        {
            let mut state = shared.state();
            state.descriptors.retain(|_, d| d.expires_at >= now);
            state.rounds.retain(|e, _| *e >= epoch);
        }
        if phase >= VOTE_AT {
            vote(&shared, next).await;
        }
        if phase >= CONSENSUS_AT {
            build_consensus(&shared, next, phase >= VOTES_UNTIL).await;
        }
        for round in [epoch, next] {
            collect_signatures(&shared, round).await;
        }
    }
}

/// Votes for `round`: the descriptors held that are valid for it and whose relay answered a
/// probe of its link address just now.
async fn vote(shared: &Shared, round: u64) {
    let (valid_after, valid_until) = shared.schedule.validity(round);
    let vote_time = shared.schedule.vote_time(round);
    let mut candidates: Vec<RelayDescriptor> = {
        let state = shared.state();
        if state.rounds.get(&round).is_some_and(|r| r.vote.is_some()) {
            return;
        }
        state
            .descriptors
            .values()
            .filter(|d| {
                d.verify(vote_time).is_ok()
                    && d.expires_at >= valid_until
                    && d.sphinx_key(round).is_some()
            })
            .cloned()
            .collect()
    };
    candidates.sort_by_key(|d| d.id);
    candidates.truncate(MAX_RELAYS);
    let timeout = probe_timeout(shared.schedule.epoch_length_secs);
    let reachable = probe_all(&candidates, timeout).await;
    let probed = candidates.len();
    let relays: Vec<RelayDescriptor> = candidates
        .into_iter()
        .zip(reachable)
        .filter_map(|(d, ok)| {
            if !ok {
                tracing::debug!(relay = %d.id.short(), epoch = round, "relay unreachable: left out of the vote");
            }
            ok.then_some(d)
        })
        .collect();
    let mut doc = Directory {
        epoch: round,
        valid_after,
        valid_until,
        params: shared.params,
        relays: relays.clone(),
        signatures: Vec::new(),
    };
    if let Err(e) = doc.sign(&shared.key) {
        tracing::error!(error = %e, "cannot sign a vote");
        return;
    }
    let mut state = shared.state();
    let r = state.rounds.entry(round).or_default();
    if r.vote.is_some() {
        return;
    }
    tracing::info!(
        epoch = round,
        relays = relays.len(),
        unreachable = probed - relays.len(),
        "voted"
    );
    r.vote = Some(Bytes::from(doc.to_bytes()));
    r.votes.insert(shared.me, relays);
}

/// How long a relay's link address has to accept a TCP connection: [`PROBE_TIMEOUT`], but at
/// most a twentieth of the epoch, so that the probes end between the vote (0.35) and the
/// consensus (0.45) even in the short epochs of tests.
fn probe_timeout(epoch_length_secs: u64) -> Duration {
    PROBE_TIMEOUT.min(Duration::from_millis(epoch_length_secs.saturating_mul(50)))
}

/// Whether each relay's published link address accepts a TCP connection within `timeout`, all
/// probed at once. A TCP connect only, not a link handshake: a mix refuses handshakes from
/// keys not in the directory, and the authority has none there.
async fn probe_all(relays: &[RelayDescriptor], timeout: Duration) -> Vec<bool> {
    let mut probes = tokio::task::JoinSet::new();
    for (i, d) in relays.iter().enumerate() {
        let address = d.address.clone();
        probes.spawn(async move {
            let connected =
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str()))
                    .await;
            (i, matches!(connected, Ok(Ok(_))))
        });
    }
    let mut reachable = vec![false; relays.len()];
    while let Some(done) = probes.join_next().await {
        if let Ok((i, ok)) = done
            && let Some(slot) = reachable.get_mut(i)
        {
            *slot = ok;
        }
    }
    reachable
}

/// GETs `path` from every peer `wanted` says, concurrently; the 200 bodies by peer key.
async fn from_peers(
    shared: &Shared,
    path: &str,
    wanted: impl Fn(&[u8; 32]) -> bool,
) -> Vec<([u8; 32], Vec<u8>)> {
    let fetches: Vec<_> = shared
        .peers
        .iter()
        .filter(|p| wanted(&p.key))
        .map(|p| {
            let url = format!("{}{path}", p.url);
            let key = p.key;
            tokio::spawn(async move {
                match tokio::time::timeout(PEER_TIMEOUT, spore_directory_fetch::get_answer(&url))
                    .await
                {
                    Ok(Ok(a)) if a.status == 200 => Some((key, a.body)),
                    _ => None,
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for f in fetches {
        if let Ok(Some(got)) = f.await {
            out.push(got);
        }
    }
    out
}

async fn build_consensus(shared: &Shared, round: u64, stop_waiting: bool) {
    let have: HashSet<[u8; 32]> = {
        let state = shared.state();
        match state.rounds.get(&round) {
            Some(r) if r.vote.is_some() && r.document.is_none() => {
                r.votes.keys().chain(&r.refused_votes).copied().collect()
            }
            _ => return,
        }
    };
    let got = from_peers(shared, &format!("/vote/{round}"), |k| !have.contains(k)).await;
    let mut state = shared.state();
    let Some(r) = state.rounds.get_mut(&round) else {
        return;
    };
    if r.document.is_some() {
        return;
    }
    for (key, body) in got {
        match check_vote(shared, &key, round, &body) {
            Ok(relays) => {
                r.votes.insert(key, relays);
            }
            Err(why) => {
                if r.refused_votes.insert(key) {
                    tracing::warn!(authority = %hex::encode(&key[..6]), epoch = round, %why, "vote refused");
                }
            }
        }
    }
    if r.votes.len() < shared.authorities() && !stop_waiting {
        return;
    }
    let votes: Vec<Vec<RelayDescriptor>> = r.votes.values().cloned().collect();
    let mut doc = consensus(
        &votes,
        round,
        shared.schedule.validity(round),
        shared.params,
    );
    if let Err(e) = doc.sign(&shared.key) {
        tracing::error!(error = %e, "cannot sign the consensus");
        return;
    }
    tracing::info!(
        epoch = round,
        votes = votes.len(),
        relays = doc.relays.len(),
        "consensus built and signed"
    );
    r.own_signature = Some(Bytes::from(doc.to_bytes()));
    r.document = Some(doc);
}

/// A peer's vote: its document for `round`, with our parameters, signed by it.
fn check_vote(
    shared: &Shared,
    key: &[u8; 32],
    round: u64,
    body: &[u8],
) -> Result<Vec<RelayDescriptor>, String> {
    let vote = Directory::from_bytes(body).map_err(|e| e.to_string())?;
    if vote.epoch != round || vote.params != shared.params {
        return Err("for another epoch, or different network parameters".into());
    }
    vote.verify(&[*key], 1, shared.schedule.vote_time(round))
        .map_err(|e| e.to_string())?;
    Ok(vote.relays)
}

async fn collect_signatures(shared: &Shared, round: u64) {
    let signed: HashSet<[u8; 32]> = {
        let state = shared.state();
        match state.rounds.get(&round).and_then(|r| r.document.as_ref()) {
            Some(d) => d.signatures.iter().map(|s| s.authority).collect(),
            None => return,
        }
    };
    // Fully signed (always so for a lone authority): nothing to fetch, but it may still have
    // to be published.
    let got = if signed.len() < shared.authorities() {
        from_peers(shared, &format!("/signature/{round}"), |k| {
            !signed.contains(k)
        })
        .await
    } else {
        Vec::new()
    };
    let Some(bytes) = add_signatures(shared, round, got) else {
        return;
    };
    if let Some(path) = shared.directory_file.clone() {
        let written = tokio::task::spawn_blocking(move || {
            spore_directory_fetch::write_private_atomic(&path, &bytes).map_err(|e| (path, e))
        })
        .await;
        if let Ok(Err((path, e))) = written {
            tracing::warn!(error = %e, path = %path.display(), "cannot write the published directory");
        }
    }
}

/// Adds the peers' signatures that verify over our document for `round`; publishes it if it
/// has reached the threshold and is newer or better signed than the one served. Returns the
/// bytes published, if any.
fn add_signatures(shared: &Shared, round: u64, got: Vec<([u8; 32], Vec<u8>)>) -> Option<Bytes> {
    let mut state = shared.state();
    let doc = state
        .rounds
        .get_mut(&round)
        .and_then(|r| r.document.as_mut())?;
    for (key, body) in got {
        let Ok(theirs) = Directory::from_bytes(&body) else {
            continue;
        };
        let Some(sig) = theirs.signatures.iter().find(|s| s.authority == key) else {
            continue;
        };
        let mut check = doc.clone();
        check.signatures = vec![*sig];
        // Same bytes signed: their signature verifies over our document.
        if check
            .verify(&[key], 1, shared.schedule.vote_time(round))
            .is_ok()
        {
            doc.signatures.push(*sig);
        } else {
            tracing::debug!(authority = %hex::encode(&key[..6]), epoch = round, "a different document: the authorities saw different votes");
        }
    }
    // Sorted, so every authority holding the same signatures serves the same bytes.
    doc.signatures.sort_by_key(|s| s.authority);
    let doc = doc.clone();
    let newer = match &state.published {
        None => true,
        Some((p, _)) => (doc.epoch, doc.signatures.len()) > (p.epoch, p.signatures.len()),
    };
    if doc.signatures.len() < shared.threshold || !newer {
        return None;
    }
    tracing::info!(
        epoch = round,
        signatures = doc.signatures.len(),
        relays = doc.relays.len(),
        "directory published"
    );
    let bytes = Bytes::from(doc.to_bytes());
    state.published = Some((doc, bytes.clone()));
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ParamsSection, PeerConfig};
    use spore_protocol::directory::{DescriptorFields, Roles, SphinxKey};

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn config(
        listen: SocketAddr,
        peers: Vec<PeerConfig>,
        threshold: usize,
        epoch: u64,
    ) -> AuthorityConfig {
        AuthorityConfig {
            listen,
            key_file: "unused".into(),
            peers,
            threshold,
            directory_file: None,
            params: ParamsSection {
                epoch_length_secs: Some(epoch),
                ..ParamsSection::default()
            },
        }
    }

    fn descriptor(seed: u8, first_epoch: u64, now: u64, expires_at: u64) -> RelayDescriptor {
        descriptor_at(
            &format!("127.0.0.1:{}", 5000 + u16::from(seed)),
            seed,
            first_epoch,
            now,
            expires_at,
        )
    }

    fn descriptor_at(
        address: &str,
        seed: u8,
        first_epoch: u64,
        now: u64,
        expires_at: u64,
    ) -> RelayDescriptor {
        RelayDescriptor::sign(
            DescriptorFields {
                address: address.to_owned(),
                roles: Roles {
                    entry: false,
                    mix: true,
                    mailbox: false,
                },
                layer: 1 + seed % 3,
                link_key: [seed; 32],
                sphinx_keys: vec![
                    SphinxKey {
                        epoch: first_epoch,
                        public: [seed; 32],
                    },
                    SphinxKey {
                        epoch: first_epoch + 1,
                        public: [seed; 32],
                    },
                ],
                published_at: now,
                expires_at,
            },
            &SigningKey::from_bytes(&[seed; 32]),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn uploads_are_checked_before_anything_changes() {
        let a = start(
            config(free_port(), vec![], 1, 3600),
            SigningKey::from_bytes(&[1; 32]),
        )
        .await
        .unwrap();
        let url = format!("http://{}/descriptor", a.local_addr());
        let now = now_ms() / 1000;
        let garbage = spore_directory_fetch::post(&url, b"hello").await.unwrap();
        assert_eq!(garbage.status, 400);
        assert!(String::from_utf8_lossy(&garbage.body).contains("not a relay descriptor"));
        let big = spore_directory_fetch::post(&url, &vec![1; MAX_DESCRIPTOR_BYTES + 1])
            .await
            .unwrap();
        assert_eq!(big.status, 413);
        let expired = descriptor(7, now / 3600, now - 100, now - 10);
        let refused = spore_directory_fetch::post(&url, &expired.to_bytes())
            .await
            .unwrap();
        assert_eq!(refused.status, 400);
        let mut forged = descriptor(7, now / 3600, now, now + 100).to_bytes();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            spore_directory_fetch::post(&url, &forged)
                .await
                .unwrap()
                .status,
            400
        );
        assert_eq!(a.descriptors_held(), 0, "nothing changed");

        let good = descriptor(7, now / 3600, now, now + 100);
        let ok = spore_directory_fetch::post(&url, &good.to_bytes())
            .await
            .unwrap();
        assert_eq!(ok.status, 200);
        let date = ok.date_unix.expect("a Date header");
        assert!(date.abs_diff(now) <= 2);
        assert_eq!(a.descriptors_held(), 1);
        let older = descriptor(7, now / 3600, now - 1, now + 100);
        assert_eq!(
            spore_directory_fetch::post(&url, &older.to_bytes())
                .await
                .unwrap()
                .status,
            409
        );
        let dir =
            spore_directory_fetch::get_answer(&format!("http://{}/directory", a.local_addr()))
                .await
                .unwrap();
        assert_eq!(dir.status, 503, "no document before the first round");
        let get_upload = spore_directory_fetch::get_answer(&url).await.unwrap();
        assert_eq!(get_upload.status, 405);
        a.shutdown().await;
    }

    /// Three authorities configured, one never started: the two others still agree on the
    /// document and publish it with 2 of 3 signatures.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_of_three_authorities_publish_a_threshold_signed_document() {
        const EPOCH: u64 = 4;
        let keys: Vec<SigningKey> = (1..=3).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
        let peers_of = |i: usize| -> Vec<PeerConfig> {
            (0..3)
                .filter(|j| *j != i)
                .map(|j| PeerConfig {
                    key: hex::encode(keys[j].verifying_key().to_bytes()),
                    url: format!("http://{}", addrs[j]),
                })
                .collect()
        };
        let mut running = Vec::new();
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("published.bin");
        let config_of = |i: usize| {
            let mut c = config(addrs[i], peers_of(i), 2, EPOCH);
            if i == 0 {
                c.directory_file = Some(kept.clone());
            }
            c
        };
        for (i, key) in keys.iter().enumerate().take(2) {
            running.push(start(config_of(i), key.clone()).await.unwrap());
        }
        let now = now_ms() / 1000;
        let first = now / EPOCH + 1;
        // Each relay's link port answers the authorities' probes.
        let ports: Vec<std::net::TcpListener> = (0..4)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let port_of = |i: usize| ports[i].local_addr().unwrap().to_string();
        for seed in 10..13 {
            let d = descriptor_at(
                &port_of(usize::from(seed - 10)),
                seed,
                first,
                now,
                now + 100,
            );
            for a in &running {
                let url = format!("http://{}/descriptor", a.local_addr());
                assert_eq!(
                    spore_directory_fetch::post(&url, &d.to_bytes())
                        .await
                        .unwrap()
                        .status,
                    200
                );
            }
        }
        // A relay only one authority saw is not listed.
        let lonely = descriptor_at(&port_of(3), 20, first, now, now + 100);
        let url = format!("http://{}/descriptor", running[0].local_addr());
        spore_directory_fetch::post(&url, &lonely.to_bytes())
            .await
            .unwrap();

        let trusted: Vec<[u8; 32]> = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(3 * EPOCH);
        let doc = loop {
            let answer = spore_directory_fetch::get_answer(&format!(
                "http://{}/directory",
                running[1].local_addr()
            ))
            .await
            .unwrap();
            // A round voted before the uploads (the test may start late in an epoch) lists
            // nobody; the next one lists them.
            if answer.status == 200 {
                let doc = Directory::from_bytes(&answer.body).unwrap();
                if !doc.relays.is_empty() {
                    break doc;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no document published"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        doc.verify(&trusted, 2, now_ms() / 1000).unwrap();
        assert_eq!(doc.relays.len(), 3, "listed by a majority only");
        assert!(doc.relay(&lonely.id).is_none());
        let same_soon = async {
            while running[0].published().map(|d| d.to_bytes()) != Some(doc.to_bytes()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(2), same_soon)
                .await
                .is_ok(),
            "both authorities publish the same bytes"
        );
        // Restarted, an authority serves what it last published until its next round.
        let mut running = running.into_iter();
        running.next().unwrap().shutdown().await;
        let restarted = start(config_of(0), keys[0].clone()).await.unwrap();
        assert_eq!(
            restarted.published().map(|d| d.epoch),
            Some(doc.epoch),
            "the kept document is served after a restart"
        );
        restarted.shutdown().await;
        for a in running {
            a.shutdown().await;
        }
    }

    /// The next document listing `id` or not, after `after` (an epoch): waits for it.
    async fn next_listing(
        a: &RunningAuthority,
        after: u64,
        id: &RelayId,
        epoch: u64,
    ) -> (u64, bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(4 * epoch);
        loop {
            if let Some(d) = a.published()
                && d.epoch > after
            {
                return (d.epoch, d.relay(id).is_some());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no document after epoch {after}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A relay whose link port stops answering is left out of the next document, and listed
    /// again once it answers; a relay that always answers stays listed throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_whose_port_does_not_answer_is_dropped_and_listed_again_once_it_answers() {
        const EPOCH: u64 = 4;
        let a = start(
            config(free_port(), vec![], 1, EPOCH),
            SigningKey::from_bytes(&[1; 32]),
        )
        .await
        .unwrap();
        let url = format!("http://{}/descriptor", a.local_addr());
        let flaky_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let flaky_addr = flaky_port.local_addr().unwrap();
        let steady_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let flaky = descriptor_at(&flaky_addr.to_string(), 30, 0, 0, 1).id;
        let steady = descriptor_at(&steady_port.local_addr().unwrap().to_string(), 31, 0, 0, 1).id;
        // Like a relay: a fresh descriptor with keys for the next two epochs, uploaded often.
        let uploader = {
            let addrs = [
                (30, flaky_addr.to_string()),
                (31, steady_port.local_addr().unwrap().to_string()),
            ];
            tokio::spawn(async move {
                loop {
                    let now = now_ms() / 1000;
                    for (seed, address) in &addrs {
                        let d = descriptor_at(address, *seed, now / EPOCH + 1, now, now + 100);
                        let _ = spore_directory_fetch::post(&url, &d.to_bytes()).await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let epoch_now = || now_ms() / 1000 / EPOCH;

        // Listed while its port answers (a round voted before the upload lists nobody).
        let mut epoch = 0;
        let mut listed = false;
        for _ in 0..3 {
            (epoch, listed) = next_listing(&a, epoch, &flaky, EPOCH).await;
            if listed {
                break;
            }
        }
        assert!(listed, "listed while its port answers");

        // Its port closes: the next document voted after that leaves it out.
        drop(flaky_port);
        let closed_in = epoch_now();
        let mut dropped = false;
        for _ in 0..3 {
            (epoch, listed) = next_listing(&a, epoch.max(closed_in + 1), &flaky, EPOCH).await;
            if !listed {
                dropped = true;
                break;
            }
        }
        eprintln!("port closed in epoch {closed_in}: left out of the document for epoch {epoch}");
        assert!(
            dropped,
            "an unreachable relay is left out of the next document"
        );
        assert!(
            a.published().unwrap().relay(&steady).is_some(),
            "the reachable one stays"
        );

        // Its port answers again: listed again.
        let _back = std::net::TcpListener::bind(flaky_addr).unwrap();
        let back_in = epoch_now();
        let mut relisted = false;
        for _ in 0..3 {
            (epoch, listed) = next_listing(&a, epoch.max(back_in + 1), &flaky, EPOCH).await;
            if listed {
                relisted = true;
                break;
            }
        }
        eprintln!(
            "port answers again in epoch {back_in}: listed in the document for epoch {epoch}"
        );
        assert!(relisted, "listed again once its port answers");
        uploader.abort();
        a.shutdown().await;
    }
}
