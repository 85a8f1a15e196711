//! Prometheus metrics and the loopback HTTP endpoint that serves them.
//!
//! Labels are fixed, short strings (drop reasons, queue names): no metric ever carries an
//! address, a mailbox id or anything else taken from a packet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::error::{RelayError, Result};
use crate::shutdown::Shutdown;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

/// Queues whose depth is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Packets waiting for a Sphinx worker.
    Unwrap,
    /// Unwrapped packets waiting for the group commit.
    Commit,
    /// Packets held for their delay.
    Delay,
    /// Packets waiting to be written to a next hop (all links together).
    Link,
}

/// The stages a forwarded packet passes through in this relay, each with its own latency
/// histogram, so that an operator (or `spore bench latency`) can tell which one a slow hop
/// spent its time in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Read from the link until a Sphinx worker took it.
    UnwrapQueue,
    /// Unwrapped until its replay tag was durable: the worker's hold, the wait for the
    /// commit thread and the `fdatasync` itself.
    Commit,
    /// How late the delay queue released it after its deadline (timer precision).
    DelayTimer,
    /// Handed to the link pool until written and flushed to the next hop's socket.
    Link,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

impl Stage {
    const ALL: [Stage; 4] = [
        Stage::UnwrapQueue,
        Stage::Commit,
        Stage::DelayTimer,
        Stage::Link,
    ];

    fn label(self) -> StageLabel {
        StageLabel {
            stage: match self {
                Stage::UnwrapQueue => "unwrap_queue",
                Stage::Commit => "commit",
                Stage::DelayTimer => "delay_timer",
                Stage::Link => "link",
            },
        }
    }
}

/// Buckets of the per-hop latency histograms: 10 µs to ~0.25 s in steps of 1.5x, fine enough
/// to read a p99 to within a step.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 1.5, 26))
}

impl Queue {
    fn label(self) -> QueueLabel {
        QueueLabel {
            queue: match self {
                Queue::Unwrap => "unwrap",
                Queue::Commit => "commit",
                Queue::Delay => "delay",
                Queue::Link => "link",
            },
        }
    }
}

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    packets_in: Counter,
    packets_forwarded: Counter,
    packets_stored: Counter,
    acks_sent: Counter,
    cover_received: Counter,
    loops_sent: Counter,
    loop_loss_alarms: Counter,
    dropped: Family<ReasonLabel, Counter>,
    /// Capability registrations and revocations from owners, by result.
    capability_ops: Family<ReasonLabel, Counter>,
    reasons_seen: Mutex<BTreeSet<&'static str>>,
    queue_depth: Family<QueueLabel, Gauge>,
    connections_open: Gauge,
    connections_total: Counter,
    link_connect_failures: Counter,
    mailbox_items: Gauge,
    mailbox_bytes: Gauge,
    mailbox_damaged_records: Gauge,
    replay_tags: Gauge,
    pulls: Counter,
    items_deleted: Counter,
    items_expired: Counter,
    unwrap_seconds: Histogram,
    commit_seconds: Histogram,
    stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// The family's members, looked up once: the hot path observes without the family's lock.
    stages: [Histogram; 4],
    added_latency_seconds: Histogram,
    build_info: Family<VersionLabel, Gauge>,
    start_time_seconds: Gauge,
    uptime_seconds: Gauge,
    directory_present: Gauge,
    directory_valid_until_seconds: Gauge,
    directory_age_seconds: Gauge,
    listed: Gauge,
    descriptor_age_seconds: Gauge,
    descriptor_expires_seconds: Gauge,
    links_open: Gauge,
    links_failing: Gauge,
    loop_alarm: Gauge,
    /// Monotonic start, for uptime.
    started: Instant,
    /// The relay's clock (wall time for ages and validity), set at start.
    clock: OnceLock<Arc<dyn Clock>>,
    /// What `/health` says about the relay besides counters: set once at start.
    description: OnceLock<RelayDescription>,
    /// The directory in force, as last seen by [`Metrics::set_directory`].
    directory: Mutex<DirectoryState>,
    /// `loops_sent` when the last cover packet came back (for the loop-loss alarm).
    loops_at_last_cover: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The directory in force, as far as health goes.
#[derive(Debug, Clone, Copy, Default)]
struct DirectoryState {
    /// `(valid_after, valid_until)` of the installed directory, if any.
    validity: Option<(u64, u64)>,
    /// `(published_at, expires_at)` of this relay's descriptor in it, if listed.
    descriptor: Option<(u64, u64)>,
}

/// The fixed facts about a relay that `/health` reports: set once at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayDescription {
    /// `entry`, `mix` (with layer), `mailbox`.
    pub roles: Vec<String>,
    pub listen: String,
    /// What the descriptor publishes (`public_address`, or the bound listen address).
    pub public_address: String,
    /// `file PATH`, `url URL`, or `none`.
    pub directory_source: String,
    pub directory_configured: bool,
    pub unwrap_queue_limit: usize,
    pub delay_queue_limit: usize,
    pub link_queue_limit: usize,
    pub mailbox: bool,
    pub disk_budget_bytes: u64,
    /// `mix.loop_rate`: loops per second, 0 = no loop cover (and no loop-loss alarm).
    pub loop_rate: f64,
}

/// The relay's health: what `GET /health` returns (200 when `healthy`, else 503) and what
/// `spore-relay status` prints. Times are Unix seconds (UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    /// Why the relay is not healthy (empty when it is).
    pub problems: Vec<String>,
    /// Worth a look, but the relay still serves.
    pub warnings: Vec<String>,
    pub version: String,
    pub uptime_secs: u64,
    pub now: u64,
    #[serde(flatten)]
    pub relay: RelayDescription,
    pub directory_valid_after: Option<u64>,
    pub directory_valid_until: Option<u64>,
    pub listed: bool,
    pub descriptor_published_at: Option<u64>,
    pub descriptor_expires_at: Option<u64>,
    pub links_open: i64,
    pub links_failing: i64,
    pub link_connect_failures: u64,
    pub connections_open: i64,
    pub unwrap_queue: i64,
    pub delay_queue: i64,
    pub link_queue: i64,
    pub mailbox_items: i64,
    pub mailbox_bytes: i64,
    pub loops_sent: u64,
    pub cover_received: u64,
    pub loop_alarm: bool,
    pub packets_in: u64,
    pub packets_dropped: u64,
}

/// Loops sent without a single cover packet back before the loop-loss alarm is raised: at
/// the loop rate, this many Poisson arrivals with none returning is far outside chance when
/// the network works (a loop comes back as cover to this relay's drop mailbox).
const LOOP_ALARM_AFTER: u64 = 20;

/// Fill level (percent) of a queue or of the disk budget that is reported as a warning.
const HIGH_WATER_PERCENT: i64 = 90;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A point-in-time copy of the counters, for tests and tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub packets_stored: u64,
    pub acks_sent: u64,
    pub cover_received: u64,
    pub loops_sent: u64,
    pub loop_loss_alarms: u64,
    /// Dropped packets (and refused frames) by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    pub unwrap_queue: i64,
    pub delay_queue: i64,
    pub link_queue: i64,
    pub connections_open: i64,
    pub mailbox_items: i64,
    pub mailbox_bytes: i64,
    /// Records or tombstones of the mailbox files that failed their checksum (skipped).
    pub mailbox_damaged_records: i64,
    pub replay_tags: i64,
    pub pulls: u64,
    pub items_deleted: u64,
    pub items_expired: u64,
}

impl MetricsSnapshot {
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped.get(reason).copied().unwrap_or(0)
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spore_relay");
        let m = Self {
            packets_in: Counter::default(),
            packets_forwarded: Counter::default(),
            packets_stored: Counter::default(),
            acks_sent: Counter::default(),
            cover_received: Counter::default(),
            loops_sent: Counter::default(),
            loop_loss_alarms: Counter::default(),
            dropped: Family::default(),
            capability_ops: Family::default(),
            reasons_seen: Mutex::new(BTreeSet::new()),
            queue_depth: Family::default(),
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            link_connect_failures: Counter::default(),
            mailbox_items: Gauge::default(),
            mailbox_bytes: Gauge::default(),
            mailbox_damaged_records: Gauge::default(),
            replay_tags: Gauge::default(),
            pulls: Counter::default(),
            items_deleted: Counter::default(),
            items_expired: Counter::default(),
            // 10 us .. ~330 ms
            unwrap_seconds: Histogram::new(exponential_buckets(1e-5, 2.0, 16)),
            // 100 us .. ~3 s
            commit_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            stages: std::array::from_fn(|_| latency_histogram()),
            added_latency_seconds: latency_histogram(),
            build_info: Family::default(),
            start_time_seconds: Gauge::default(),
            uptime_seconds: Gauge::default(),
            directory_present: Gauge::default(),
            directory_valid_until_seconds: Gauge::default(),
            directory_age_seconds: Gauge::default(),
            listed: Gauge::default(),
            descriptor_age_seconds: Gauge::default(),
            descriptor_expires_seconds: Gauge::default(),
            links_open: Gauge::default(),
            links_failing: Gauge::default(),
            loop_alarm: Gauge::default(),
            started: Instant::now(),
            clock: OnceLock::new(),
            description: OnceLock::new(),
            directory: Mutex::new(DirectoryState::default()),
            loops_at_last_cover: AtomicU64::new(0),
            registry: Registry::default(),
        };
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let r = &mut registry;
        r.register(
            "packets_in",
            "Packets received on links",
            m.packets_in.clone(),
        );
        r.register(
            "packets_forwarded",
            "Packets written to a next hop",
            m.packets_forwarded.clone(),
        );
        r.register(
            "packets_stored",
            "Final-hop packets durably stored in a mailbox",
            m.packets_stored.clone(),
        );
        r.register(
            "acks_sent",
            "SURB-acks released after storing",
            m.acks_sent.clone(),
        );
        r.register(
            "cover_received",
            "Final-hop packets for the drop mailbox (cover), discarded",
            m.cover_received.clone(),
        );
        r.register(
            "loops_sent",
            "Loop cover packets sent by this relay",
            m.loops_sent.clone(),
        );
        r.register(
            "loop_loss_alarms",
            "Windows in which fewer of this relay's loops returned than an honest network loses",
            m.loop_loss_alarms.clone(),
        );
        r.register(
            "capability_ops",
            "Capability ops from mailbox owners: changed (registered, quota changed, revoked) or refused (revoked stays revoked, table full)",
            m.capability_ops.clone(),
        );
        r.register(
            "packets_dropped",
            "Packets or frames dropped, by reason",
            m.dropped.clone(),
        );
        r.register(
            "queue_depth",
            "Items waiting in a queue",
            m.queue_depth.clone(),
        );
        r.register(
            "connections_open",
            "Open inbound links",
            m.connections_open.clone(),
        );
        r.register(
            "connections",
            "Inbound links accepted",
            m.connections_total.clone(),
        );
        r.register(
            "link_connect_failures",
            "Failed attempts to open an outbound link",
            m.link_connect_failures.clone(),
        );
        r.register(
            "mailbox_items",
            "Items stored in all mailboxes",
            m.mailbox_items.clone(),
        );
        r.register(
            "mailbox_bytes",
            "Payload bytes stored in all mailboxes",
            m.mailbox_bytes.clone(),
        );
        r.register(
            "mailbox_damaged_records",
            "Mailbox records or tombstones skipped because their checksum failed (torn writes, disk damage)",
            m.mailbox_damaged_records.clone(),
        );
        r.register(
            "replay_tags",
            "Replay tags held for the accepted key epochs",
            m.replay_tags.clone(),
        );
        r.register("pulls", "Mailbox pull requests served", m.pulls.clone());
        r.register(
            "items_deleted",
            "Mailbox items deleted by their owner",
            m.items_deleted.clone(),
        );
        r.register(
            "items_expired",
            "Mailbox items deleted by retention",
            m.items_expired.clone(),
        );
        r.register(
            "unwrap_seconds",
            "Sphinx processing time per packet (parse, key derivation, replay check, unwrap)",
            m.unwrap_seconds.clone(),
        );
        r.register(
            "commit_seconds",
            "Group commit (database flush) latency",
            m.commit_seconds.clone(),
        );
        r.register(
            "stage_seconds",
            "Time forwarded packets spent in each stage of this relay",
            m.stage_seconds.clone(),
        );
        r.register(
            "added_latency_seconds",
            "Time from reading a forwarded packet to flushing it to the next hop, minus the delay its header asked for",
            m.added_latency_seconds.clone(),
        );
        r.register(
            "build_info",
            "Always 1; the label says which spore-relay version runs",
            m.build_info.clone(),
        );
        r.register(
            "start_time_seconds",
            "When this relay process started (Unix seconds)",
            m.start_time_seconds.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since this relay process started",
            m.uptime_seconds.clone(),
        );
        r.register(
            "directory_present",
            "1 when a verified directory is installed",
            m.directory_present.clone(),
        );
        r.register(
            "directory_valid_until_seconds",
            "End of the installed directory's validity (Unix seconds; 0 without one)",
            m.directory_valid_until_seconds.clone(),
        );
        r.register(
            "directory_age_seconds",
            "Seconds since the installed directory became valid (0 without one)",
            m.directory_age_seconds.clone(),
        );
        r.register(
            "listed",
            "1 when the installed directory lists this relay",
            m.listed.clone(),
        );
        r.register(
            "descriptor_age_seconds",
            "Seconds since this relay's descriptor in the directory was signed (0 when not listed)",
            m.descriptor_age_seconds.clone(),
        );
        r.register(
            "descriptor_expires_seconds",
            "When this relay's descriptor in the directory expires (Unix seconds; 0 when not listed)",
            m.descriptor_expires_seconds.clone(),
        );
        r.register(
            "links_open",
            "Outbound links to next hops that are connected",
            m.links_open.clone(),
        );
        r.register(
            "links_failing",
            "Next hops whose last connection attempt failed",
            m.links_failing.clone(),
        );
        r.register(
            "loop_alarm",
            "1 when loop cover is on and none of the recent loops came back",
            m.loop_alarm.clone(),
        );
        // Every stage is exported from the start, so a scrape before the first packet has them.
        let stages = Stage::ALL.map(|stage| m.stage_seconds.get_or_create_owned(&stage.label()));
        for q in [Queue::Unwrap, Queue::Commit, Queue::Delay, Queue::Link] {
            m.queue_depth.get_or_create(&q.label()).set(0);
        }
        Self {
            registry,
            stages,
            ..m
        }
    }

    pub fn packet_in(&self) {
        self.packets_in.inc();
    }
    pub fn forwarded(&self) {
        self.packets_forwarded.inc();
    }
    pub fn stored(&self) {
        self.packets_stored.inc();
    }
    pub fn ack_sent(&self) {
        self.acks_sent.inc();
    }
    pub fn cover_received(&self) {
        self.cover_received.inc();
        self.loops_at_last_cover
            .store(self.loops_sent.get(), AtomicOrdering::Relaxed);
    }
    pub fn loop_loss_alarm(&self) {
        self.loop_loss_alarms.inc();
    }
    pub fn loop_sent(&self) {
        self.loops_sent.inc();
    }

    /// Counts capability ops that changed the table, and ops that were refused.
    pub fn capability_ops(&self, changed: u32, refused: u32) {
        for (reason, n) in [("changed", changed), ("refused", refused)] {
            if n > 0 {
                self.capability_ops
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(u64::from(n));
            }
        }
    }

    /// Counts one dropped packet (or refused frame) under a fixed reason label.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
        if let Ok(mut seen) = self.reasons_seen.lock()
            && !seen.contains(reason)
        {
            seen.insert(reason);
        }
    }

    pub fn queue_add(&self, q: Queue, n: i64) {
        self.queue_depth.get_or_create(&q.label()).inc_by(n);
    }
    pub fn queue_sub(&self, q: Queue, n: i64) {
        self.queue_depth.get_or_create(&q.label()).dec_by(n);
    }
    fn queue_get(&self, q: Queue) -> i64 {
        self.queue_depth.get_or_create(&q.label()).get()
    }

    pub fn connection_opened(&self) {
        self.connections_total.inc();
        self.connections_open.inc();
    }
    pub fn link_connect_failed(&self) {
        self.link_connect_failures.inc();
    }
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn set_mailbox_usage(&self, items: u64, bytes: u64) {
        self.mailbox_items
            .set(i64::try_from(items).unwrap_or(i64::MAX));
        self.mailbox_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    pub fn set_mailbox_damaged_records(&self, n: u64) {
        self.mailbox_damaged_records
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn set_replay_tags(&self, n: usize) {
        self.replay_tags.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn pull(&self) {
        self.pulls.inc();
    }
    pub fn deleted(&self, n: u64) {
        self.items_deleted.inc_by(n);
    }
    pub fn expired(&self, n: u64) {
        self.items_expired.inc_by(n);
    }
    pub fn observe_unwrap(&self, d: Duration) {
        self.unwrap_seconds.observe(d.as_secs_f64());
    }
    pub fn observe_commit(&self, d: Duration) {
        self.commit_seconds.observe(d.as_secs_f64());
    }
    pub fn observe_stage(&self, stage: Stage, d: Duration) {
        self.stages[stage as usize].observe(d.as_secs_f64());
    }
    pub fn observe_added_latency(&self, d: Duration) {
        self.added_latency_seconds.observe(d.as_secs_f64());
    }

    /// The clock ages and validity are measured with (the relay's; the system clock if unset).
    pub fn use_clock(&self, clock: Arc<dyn Clock>) {
        let _ = self.clock.set(clock);
    }

    fn now_unix(&self) -> u64 {
        match self.clock.get() {
            Some(c) => c.now_unix(),
            None => crate::clock::SystemClock.now_unix(),
        }
    }

    /// Records the relay's fixed facts for `/health` (once, at start).
    pub fn describe(&self, description: RelayDescription) {
        let now = self.now_unix();
        self.start_time_seconds
            .set(i64::try_from(now).unwrap_or(i64::MAX));
        let _ = self.description.set(description);
    }

    /// Records the directory now in force: its validity, and this relay's descriptor in it
    /// (`None` when not listed).
    pub fn set_directory(&self, validity: Option<(u64, u64)>, descriptor: Option<(u64, u64)>) {
        if let Ok(mut d) = self.directory.lock() {
            *d = DirectoryState {
                validity,
                descriptor,
            };
        }
        self.refresh_time_gauges();
    }

    /// An outbound link to a next hop connected / closed.
    pub fn link_up(&self) {
        self.links_open.inc();
    }
    pub fn link_down(&self) {
        self.links_open.dec();
    }
    /// A next hop became unreachable / reachable again (or its link task ended).
    pub fn hop_failing(&self) {
        self.links_failing.inc();
    }
    pub fn hop_recovered(&self) {
        self.links_failing.dec();
    }

    /// Whether loop cover is on and the last [`LOOP_ALARM_AFTER`] loops all failed to return.
    fn loop_alarm_raised(&self) -> bool {
        let rate = self.description.get().map_or(0.0, |d| d.loop_rate);
        let since = self
            .loops_sent
            .get()
            .saturating_sub(self.loops_at_last_cover.load(AtomicOrdering::Relaxed));
        rate > 0.0 && since >= LOOP_ALARM_AFTER
    }

    /// Gauges that move with time alone: uptime, ages, the loop alarm.
    fn refresh_time_gauges(&self) {
        let now = self.now_unix();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.uptime_seconds
            .set(as_i64(self.started.elapsed().as_secs()));
        let state = self.directory.lock().map(|d| *d).unwrap_or_default();
        let (present, until, age) = match state.validity {
            Some((after, until)) => (1, as_i64(until), as_i64(now.saturating_sub(after))),
            None => (0, 0, 0),
        };
        self.directory_present.set(present);
        self.directory_valid_until_seconds.set(until);
        self.directory_age_seconds.set(age);
        let (listed, desc_age, desc_expires) = match state.descriptor {
            Some((published, expires)) => {
                (1, as_i64(now.saturating_sub(published)), as_i64(expires))
            }
            None => (0, 0, 0),
        };
        self.listed.set(listed);
        self.descriptor_age_seconds.set(desc_age);
        self.descriptor_expires_seconds.set(desc_expires);
        self.loop_alarm.set(i64::from(self.loop_alarm_raised()));
    }

    /// The relay's health now: what `/health` serves.
    pub fn health(&self) -> Health {
        self.refresh_time_gauges();
        let now = self.now_unix();
        let d = self.description.get().cloned().unwrap_or_default();
        let state = self.directory.lock().map(|d| *d).unwrap_or_default();
        let snap = self.snapshot();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        match state.validity {
            None if d.directory_configured => problems.push(format!(
                "no verified directory from {} (see the relay's log for why)",
                d.directory_source
            )),
            None => warnings.push(
                "no directory source configured: the relay cannot forward to other relays"
                    .to_owned(),
            ),
            Some((_, until)) if until < now => problems.push(format!(
                "the directory expired at {} (now {}): the source is not being updated",
                crate::error::UtcTime(until),
                crate::error::UtcTime(now)
            )),
            Some(_) if state.descriptor.is_none() => problems.push(
                "this relay is not listed in the directory: submit its descriptor \
                 (spore-relay descriptor --out FILE) to the authorities"
                    .to_owned(),
            ),
            Some(_) => {}
        }
        if let Some((_, expires)) = state.descriptor
            && expires < now.saturating_add(24 * 3600)
        {
            warnings.push(format!(
                "this relay's listed descriptor expires at {}: submit a fresh one",
                crate::error::UtcTime(expires)
            ));
        }
        let links_failing = self.links_failing.get();
        if links_failing > 0 {
            warnings.push(format!(
                "{links_failing} next hop(s) unreachable (packets to them are dropped)"
            ));
        }
        let over = |depth: i64, limit: usize| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX).max(1);
            depth.saturating_mul(100) / limit >= HIGH_WATER_PERCENT
        };
        for (name, depth, limit) in [
            ("unwrap", snap.unwrap_queue, d.unwrap_queue_limit),
            ("delay", snap.delay_queue, d.delay_queue_limit),
        ] {
            if limit > 0 && over(depth, limit) {
                warnings.push(format!("{name} queue at {depth} of {limit}"));
            }
        }
        if d.mailbox
            && d.disk_budget_bytes > 0
            && over(
                snap.mailbox_bytes,
                usize::try_from(d.disk_budget_bytes).unwrap_or(usize::MAX),
            )
        {
            warnings.push(format!(
                "mailboxes hold {} of the {} byte disk budget",
                snap.mailbox_bytes, d.disk_budget_bytes
            ));
        }
        let loop_alarm = self.loop_alarm_raised();
        if loop_alarm {
            problems.push(format!(
                "loop-loss alarm: none of the last {LOOP_ALARM_AFTER} loop cover packets came back \
                 (part of the network drops this relay's packets)"
            ));
        }
        Health {
            healthy: problems.is_empty(),
            problems,
            warnings,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            now,
            relay: d,
            directory_valid_after: state.validity.map(|v| v.0),
            directory_valid_until: state.validity.map(|v| v.1),
            listed: state.descriptor.is_some(),
            descriptor_published_at: state.descriptor.map(|v| v.0),
            descriptor_expires_at: state.descriptor.map(|v| v.1),
            links_open: self.links_open.get(),
            links_failing,
            link_connect_failures: self.link_connect_failures.get(),
            connections_open: snap.connections_open,
            unwrap_queue: snap.unwrap_queue,
            delay_queue: snap.delay_queue,
            link_queue: snap.link_queue,
            mailbox_items: snap.mailbox_items,
            mailbox_bytes: snap.mailbox_bytes,
            loops_sent: snap.loops_sent,
            cover_received: snap.cover_received,
            loop_alarm,
            packets_in: snap.packets_in,
            packets_dropped: snap.dropped_total(),
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let reasons: Vec<&'static str> = self
            .reasons_seen
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        MetricsSnapshot {
            packets_in: self.packets_in.get(),
            packets_forwarded: self.packets_forwarded.get(),
            packets_stored: self.packets_stored.get(),
            acks_sent: self.acks_sent.get(),
            cover_received: self.cover_received.get(),
            loops_sent: self.loops_sent.get(),
            loop_loss_alarms: self.loop_loss_alarms.get(),
            dropped: reasons
                .into_iter()
                .map(|reason| {
                    (
                        reason,
                        self.dropped.get_or_create(&ReasonLabel { reason }).get(),
                    )
                })
                .collect(),
            unwrap_queue: self.queue_get(Queue::Unwrap),
            delay_queue: self.queue_get(Queue::Delay),
            link_queue: self.queue_get(Queue::Link),
            connections_open: self.connections_open.get(),
            mailbox_items: self.mailbox_items.get(),
            mailbox_bytes: self.mailbox_bytes.get(),
            mailbox_damaged_records: self.mailbox_damaged_records.get(),
            replay_tags: self.replay_tags.get(),
            pulls: self.pulls.get(),
            items_deleted: self.items_deleted.get(),
            items_expired: self.items_expired.get(),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.refresh_time_gauges();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` and `GET /health` on `addr` (loopback) until shutdown; returns the
/// bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RelayError::Bind {
            what: "metrics_listen",
            addr,
            source,
        })?;
    let bound = listener.local_addr()?;
    let task_shutdown = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = task_shutdown.signalled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move {
                            if req.uri().path() == "/metrics" {
                                hyper::Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(metrics.encode())))
                            } else if req.uri().path() == "/health" {
                                let health = metrics.health();
                                let body = serde_json::to_vec_pretty(&health).unwrap_or_default();
                                hyper::Response::builder()
                                    .status(if health.healthy { 200 } else { 503 })
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                            } else {
                                hyper::Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::from_static(b"not found\n")))
                            }
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample names the registry exports: a counter `x` as `x_total`, a histogram as
    /// `x_bucket`/`x_sum`/`x_count`, a gauge as `x` (read from the `# TYPE` lines, so families
    /// with no member yet count too).
    fn exported_names() -> BTreeSet<String> {
        let m = Metrics::new();
        // A family appears once it has a member: the drop counter gets its first at run time.
        m.dropped("replay");
        let text = m.encode();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
                continue;
            }
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
            // The family's own name, as descriptions mention it.
            names.insert(name.to_owned());
        }
        names
    }

    /// Every `spore_relay_*` name in `text`.
    fn names_used(text: &str) -> BTreeSet<String> {
        let mut used = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("spore_relay_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if end > "spore_relay_".len() {
                used.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
        used
    }

    #[test]
    fn health_metrics_are_exported() {
        let names = exported_names();
        for name in [
            "spore_relay_uptime_seconds",
            "spore_relay_start_time_seconds",
            "spore_relay_directory_valid_until_seconds",
            "spore_relay_directory_age_seconds",
            "spore_relay_listed",
            "spore_relay_descriptor_age_seconds",
            "spore_relay_loop_alarm",
        ] {
            assert!(names.contains(name), "{name} not exported");
        }
        let text = Metrics::new().encode();
        assert!(
            text.contains(&format!(
                "spore_relay_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    /// The alert rules and the dashboard in `relay/deploy/` use only names the relay exports,
    /// so a renamed metric cannot leave a silent alert behind.
    #[test]
    fn deploy_files_use_only_exported_metrics() {
        let exported = exported_names();
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        for file in ["alerts.yml", "dashboard.json"] {
            let text = std::fs::read_to_string(deploy.join(file)).expect("deploy file");
            let used = names_used(&text);
            assert!(used.len() >= 8, "{file} uses only {used:?}");
            let unknown: Vec<_> = used.difference(&exported).collect();
            assert!(
                unknown.is_empty(),
                "{file} uses metrics the relay does not export: {unknown:?}"
            );
        }
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(deploy.join("dashboard.json")).expect("dashboard"),
        )
        .expect("dashboard.json is JSON");
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        );
    }

    #[test]
    fn health_without_a_directory_source_is_healthy_and_with_one_is_not() {
        let m = Metrics::new();
        m.describe(RelayDescription::default());
        assert!(m.health().healthy);
        let m = Metrics::new();
        m.describe(RelayDescription {
            directory_configured: true,
            directory_source: "file /x".into(),
            ..RelayDescription::default()
        });
        let h = m.health();
        assert!(!h.healthy);
        assert!(
            h.problems[0].contains("no verified directory from file /x"),
            "{h:?}"
        );
        let now = m.now_unix();
        m.set_directory(Some((now - 10, now + 3600)), None);
        assert!(m.health().problems[0].contains("not listed"));
        m.set_directory(
            Some((now - 10, now + 3600)),
            Some((now - 5, now + 7 * 86_400)),
        );
        assert!(m.health().healthy);
        m.set_directory(
            Some((now - 7200, now - 3600)),
            Some((now - 5, now + 7 * 86_400)),
        );
        assert!(m.health().problems[0].contains("expired at"));
    }
}
