//! What a [`crate::Transport`] is started with.

use std::path::PathBuf;
use std::time::Duration;

pub use spore_directory_fetch::DirectoryConfig;
use spore_protocol::directory::NetworkParams;
use spore_protocol::{Directory, MailboxKey, RelayId};

/// Where the signed directory comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DirectorySource {
    /// A file as published by the authorities, re-read every `refresh` (a new document is
    /// used once it verifies).
    File { path: PathBuf, refresh: Duration },
    /// An authority's URL, `http://host:port/directory` (`spore directory serve`), fetched
    /// again every `refresh`, as relays do.
    Http { url: String, refresh: Duration },
    /// Several authority or mirror URLs, tried in turn; a document older than the one in
    /// force is not taken.
    Mirrors {
        urls: Vec<String>,
        refresh: Duration,
    },
    /// A fixed document (tests, embedded testnets). Still verified against [`Trust`].
    Fixed(Directory),
}

impl DirectorySource {
    /// The source a `[directory]` config section names (`path`, else `url` and `urls`), if any.
    pub fn from_config(section: &DirectoryConfig) -> Option<Self> {
        let refresh = section.refresh();
        match section.source() {
            spore_directory_fetch::DirectorySource::File(path) => {
                Some(Self::File { path, refresh })
            }
            spore_directory_fetch::DirectorySource::Http(url) => Some(Self::Http { url, refresh }),
            spore_directory_fetch::DirectorySource::Mirrors(urls) => {
                Some(Self::Mirrors { urls, refresh })
            }
            _ => None,
        }
    }
}

/// Who must have signed the directory: the same type relays use.
pub use spore_protocol::directory::Trust;

/// Per-client overrides of the directory's rates. Every client of a network should use the
/// directory's values (so all clients look alike); overrides exist for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateOverrides {
    /// Poisson rate (per second) of the stream that carries real packets or drop cover.
    pub lambda_p: Option<f64>,
    /// Loop cover rate (per second).
    pub lambda_l: Option<f64>,
    /// Extra drop cover rate (per second).
    pub lambda_d: Option<f64>,
    /// Per-hop delay rate: mean delay per hop is `1 / mu` seconds.
    pub mu: Option<f64>,
    /// Mailbox pull interval.
    pub pull_interval: Option<Duration>,
}

/// The rates in force: the directory's parameters with any overrides applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub lambda_p: f64,
    pub lambda_l: f64,
    pub lambda_d: f64,
    pub mu: f64,
    pub pull_interval: Duration,
    pub max_delay: Duration,
}

impl Rates {
    pub fn resolve(params: &NetworkParams, o: &RateOverrides) -> Self {
        Self {
            lambda_p: o.lambda_p.unwrap_or(params.lambda_p),
            lambda_l: o.lambda_l.unwrap_or(params.lambda_l),
            lambda_d: o.lambda_d.unwrap_or(params.lambda_d),
            mu: o.mu.unwrap_or(params.mu),
            pull_interval: o
                .pull_interval
                .unwrap_or(Duration::from_millis(params.pull_interval_ms)),
            max_delay: Duration::from_millis(params.max_delay_ms),
        }
    }
}

/// Retransmission and expiry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Added to a packet's own sampled delays (forward + SURB-ack) before its ack is late.
    pub ack_margin: Duration,
    /// Longest randomized backoff before a retransmission.
    pub max_backoff: Duration,
    /// A message whose fragments are not all acknowledged after this long fails.
    pub message_lifetime: Duration,
    /// Partial inbound messages are dropped after this long.
    pub reassembly_ttl: Duration,
    /// `(origin, txnId)` pairs are remembered this long to drop duplicates.
    pub dedup_ttl: Duration,
    /// TCP connect + Noise handshake to the mailbox relay.
    pub connect: Duration,
    /// Sending to an address with two mailbox relays, each fragment is stored at both. Once
    /// one relay has acknowledged its copy, the other copy is retransmitted this long before
    /// the sender settles for one stored copy (that relay is down, full or gone). A fragment
    /// leaves the outbox only then: an acknowledgement from a relay that loses its disk
    /// before the recipient pulled must not be the only copy there ever was.
    pub single_copy_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ack_margin: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            message_lifetime: Duration::from_secs(24 * 3600),
            reassembly_ttl: Duration::from_secs(48 * 3600),
            dedup_ttl: Duration::from_secs(14 * 24 * 3600),
            connect: Duration::from_secs(10),
            single_copy_grace: Duration::from_secs(30 * 60),
        }
    }
}

/// Default [`TransportConfig::max_reply_bytes`]: every body a bundle can carry (12 MiB), so a
/// 5 MiB media download or a `send_join` with thousands of state events passes.
pub const DEFAULT_MAX_REPLY_BYTES: usize = spore_protocol::bundle::MAX_BODY;

/// Everything [`crate::Transport::start`] needs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Where the outbox, inbox and dedup tables live (one SQLite file, `store.sqlite3`).
    pub data_dir: PathBuf,
    /// This node's mailbox key: authenticates pulls and opens inbound fragments.
    pub mailbox_key: MailboxKey,
    /// This homeserver's Matrix server name (the `origin` of what it sends).
    pub server_name: String,
    /// The relay holding our mailbox; also our entry relay, where all our packets enter.
    pub mailbox_relay: RelayId,
    /// A second relay holding our mailbox, named in our address after the first: senders
    /// store every fragment at both, and we pull from both over a second link (pulls and
    /// deletes only, on the same fixed schedule as the first), so losing one mailbox relay,
    /// or its disk, loses nothing.
    pub second_mailbox_relay: Option<RelayId>,
    pub directory: DirectorySource,
    pub trust: Trust,
    pub rates: RateOverrides,
    pub timeouts: Timeouts,
    /// Reply SURBs attached to a `request()`: the largest response it can receive is this many
    /// reply fragments (about 1 KB each). Larger answers come back as an ordinary
    /// store-and-forward message to our mailbox instead (see [`crate::Transport::respond`]).
    pub reply_surbs: usize,
    /// Largest answer body, in bytes, this transport sends back or accepts as a
    /// store-and-forward message; [`crate::Transport::respond`] refuses a larger one with
    /// [`crate::ClientError::CannotRespond`] (the sidecar then answers 413), and a larger one
    /// that arrives is dropped. Also bounded by the protocol: a bundle's body is at most
    /// [`spore_protocol::bundle::MAX_BODY`], and a forward message at most the largest size
    /// class (16,384 fragments, about 8 MB after compression).
    pub max_reply_bytes: usize,
    /// Dial this address instead of the one in the directory (tests put an observer here).
    /// Applies to the first mailbox relay's link only.
    pub relay_address_override: Option<String>,
    /// Threads that build packets ahead of their send time. 0 builds on the engine's task
    /// (each send then waits for its build); more than the machine's cores gains nothing.
    pub build_threads: usize,
    /// Drain a backlog with bulk pulls back to back once a pull comes back full (on by
    /// default). Off keeps the link on its fixed pull cadence whatever is waiting, at 32
    /// items/s with the default 500 ms interval (docs/privacy.md, "Catch-up").
    pub catch_up: bool,
}

impl TransportConfig {
    /// A config with default rates and timeouts.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        mailbox_key: MailboxKey,
        server_name: impl Into<String>,
        mailbox_relay: RelayId,
        directory: DirectorySource,
        trust: Trust,
    ) -> Self {
        Self {
            data_dir: data_dir.into(),
            mailbox_key,
            server_name: server_name.into(),
            mailbox_relay,
            second_mailbox_relay: None,
            directory,
            trust,
            rates: RateOverrides::default(),
            timeouts: Timeouts::default(),
            reply_surbs: 8,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            relay_address_override: None,
            build_threads: 2,
            catch_up: true,
        }
    }
}
