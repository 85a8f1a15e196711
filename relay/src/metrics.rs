//! Prometheus metrics and the loopback HTTP endpoint that serves them.
//!
//! Labels are fixed, short strings (drop reasons, queue names): no metric ever carries an
//! address, a mailbox id or anything else taken from a packet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::error::Result;
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
}

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
            registry: Registry::default(),
        };
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
        // Every stage is exported from the start, so a scrape before the first packet has them.
        let stages = Stage::ALL.map(|stage| m.stage_seconds.get_or_create_owned(&stage.label()));
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
    }
    pub fn loop_loss_alarm(&self) {
        self.loop_loss_alarms.inc();
    }
    pub fn loop_sent(&self) {
        self.loops_sent.inc();
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
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` (loopback) until shutdown; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
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
