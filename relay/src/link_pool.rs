//! Outbound links to next hops: one task per [`RelayId`], created on first use, reconnecting
//! with exponential backoff, closed after a while without traffic. The pool is the relay's
//! [`LinkSender`]: it is only ever handed packets for other relays.
//!
//! Each link has a bounded queue; when it is full (the next hop is slow or down) packets are
//! dropped and counted. The initiator pins the next hop's link key from the directory, so a
//! packet is never handed to anyone but the relay the header named.
//!
//! While a next hop is down its link retries at most [`BACKOFF_MAX`] apart (plus jitter), so a
//! returning relay is used again within a few seconds (it was up to 45 s, plus the connect).
//! Packets held meanwhile are bounded (the channel's `link_queue` plus as many set aside while
//! down: at most `2 × link_queue` packets per next hop), and a packet more than the relay's
//! maximum hop delay past the moment it was due to leave is dropped (`expired_link_down`)
//! instead of sent: its sender has long since retransmitted it, and hundreds of old packets
//! leaving at once on the hop's return would be a burst that stands out to anyone watching
//! the link. Failed connects also mark the hop in the [`HopQuarantine`], which this relay's
//! own routes avoid.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spore_protocol::RelayId;
use spore_protocol::link::{Frame, LinkErrorCode};
use spore_protocol::params::PACKET_SIZE;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::connection::Link;
use crate::directory::DirectoryView;
use crate::forward::{HopTiming, LinkSender};
use crate::metrics::{Metrics, Queue, Stage};
use crate::quarantine::HopQuarantine;
use crate::shutdown::Shutdown;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two connects to a next hop that is down: a returning relay is
/// reconnected within this (times 1.5 for jitter) plus one connect. Bounded low because a
/// failed connect costs one SYN (or a refused one, nothing): cheap next to losing seconds of
/// traffic to a hop that is back.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// An outbound link with nothing to send for this long is closed (and reopened on demand).
/// Shorter than the default inbound idle timeout, so that the dialling side closes first.
const IDLE_CLOSE: Duration = Duration::from_secs(240);
/// Frames written before one flush.
const WRITE_BATCH: usize = 64;

/// A packet waiting for its link, with (for a forwarded packet) what the relay needs to
/// export how long it took here.
struct Queued {
    packet: Box<[u8; PACKET_SIZE]>,
    /// When it was handed to the link: the moment it was due to leave.
    due: Instant,
    timing: Option<HopTiming>,
}

type PacketTx = mpsc::Sender<Queued>;

/// Settings for outbound links.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub queue: usize,
    pub connect_timeout: Duration,
    /// A packet this late (past when it was due to leave) is dropped, not sent: the relay's
    /// maximum hop delay.
    pub max_late: Duration,
}

/// All outbound links of one relay.
pub(crate) struct LinkPool {
    local_secret: [u8; 32],
    directory: Arc<DirectoryView>,
    settings: PoolSettings,
    links: Mutex<HashMap<RelayId, PacketTx>>,
    quarantine: Arc<HopQuarantine>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl LinkPool {
    pub fn new(
        local_secret: [u8; 32],
        directory: Arc<DirectoryView>,
        settings: PoolSettings,
        quarantine: Arc<HopQuarantine>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Self {
            local_secret,
            directory,
            settings,
            links: Mutex::new(HashMap::new()),
            quarantine,
            clock,
            metrics,
            shutdown,
        })
    }

    /// Queues `packet` for `next_hop`. Never blocks; drops and counts on a full queue or an
    /// unknown hop. With `timing` (a forwarded packet), once it is flushed to the next hop its
    /// time in this relay goes into the added-latency and link-stage histograms.
    fn send_timed(
        self: &Arc<Self>,
        next_hop: RelayId,
        packet: Box<[u8; PACKET_SIZE]>,
        timing: Option<HopTiming>,
    ) {
        if self.shutdown.is_triggered() {
            self.metrics.dropped("shutting_down");
            return;
        }
        let queued = Queued {
            packet,
            due: self.clock.monotonic_now(),
            timing,
        };
        self.enqueue(next_hop, queued);
    }

    /// Hands `queued` to `next_hop`'s link task, starting one if there is none.
    fn enqueue(self: &Arc<Self>, next_hop: RelayId, mut queued: Queued) {
        for _ in 0..2 {
            let tx = {
                let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
                match links.get(&next_hop) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        if self.directory.peer(&next_hop).is_none() {
                            drop(links);
                            self.metrics.dropped("unknown_next_hop");
                            return;
                        }
                        let (tx, rx) = mpsc::channel(self.settings.queue);
                        links.insert(next_hop, tx.clone());
                        let pool = self.clone();
                        self.shutdown
                            .spawn(async move { pool.run_link(next_hop, rx).await });
                        tx
                    }
                }
            };
            match tx.try_send(queued) {
                Ok(()) => {
                    self.metrics.queue_add(Queue::Link, 1);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.dropped("link_queue_full");
                    return;
                }
                // The link task just closed (idle); start a new one.
                Err(mpsc::error::TrySendError::Closed(q)) => queued = q,
            }
        }
        self.metrics.dropped("link_closed");
    }

    async fn run_link(self: Arc<Self>, hop: RelayId, mut rx: mpsc::Receiver<Queued>) {
        let mut backoff = BACKOFF_MIN;
        let mut reach = HopReachability {
            hop,
            failing: false,
            metrics: self.metrics.clone(),
        };
        // Packets taken off the channel while the hop is down, oldest first: at most
        // `settings.queue`, so that expired ones can be dropped as they expire.
        let mut waiting: VecDeque<Queued> = VecDeque::new();
        let mut flushed: Vec<(HopTiming, Instant)> = Vec::with_capacity(WRITE_BATCH);
        'outer: loop {
            if self.shutdown.is_triggered() {
                break;
            }
            let Some(peer) = self.directory.peer(&hop) else {
                tracing::debug!(hop = ?hop, "next hop left the directory");
                break;
            };
            let connected = tokio::select! {
                _ = self.shutdown.signalled() => break,
                r = Link::connect_timeout(
                    &peer.address,
                    &self.local_secret,
                    Some(peer.link_key),
                    self.settings.connect_timeout,
                ) => r,
            };
            let mut link = match connected {
                Ok(link) => {
                    backoff = BACKOFF_MIN;
                    reach.reachable();
                    self.quarantine.reachable(&hop);
                    link
                }
                Err(e) => {
                    tracing::debug!(hop = ?hop, error = %e, "link connect failed");
                    reach.unreachable(&e);
                    self.quarantine.failed(hop, self.clock.monotonic_now());
                    self.metrics.link_connect_failed();
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    self.set_aside(&mut rx, &mut waiting);
                    tokio::select! {
                        _ = self.shutdown.signalled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let _open = OpenLink::new(&self.metrics);
            // What waited while the hop was down goes first, but not what expired meanwhile.
            while !waiting.is_empty() {
                flushed.clear();
                let mut failed = false;
                for _ in 0..WRITE_BATCH {
                    let Some(q) = waiting.pop_front() else { break };
                    if self.write_queued(&mut link, q, &mut flushed).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || link.writer.flush().await.is_err() {
                    continue 'outer;
                }
                self.observe_flushed(&mut flushed);
            }
            loop {
                tokio::select! {
                    _ = self.shutdown.signalled() => {
                        // Releases stopped before the signal: what is queued is all there is
                        // for this link. It goes out before the link closes.
                        let mut n = 0i64;
                        while let Ok(q) = rx.try_recv() {
                            n += 1;
                            if link.writer.write_frame(&Frame::Packet(q.packet)).await.is_err() {
                                self.metrics.dropped("link_write_failed");
                                continue;
                            }
                            self.metrics.forwarded();
                        }
                        self.metrics.queue_sub(Queue::Link, n);
                        let _ = link.writer.flush().await;
                        let _ = link.send(&Frame::Error { code: LinkErrorCode::ShuttingDown }).await;
                        break 'outer;
                    }
                    incoming = link.reader.read_frame() => {
                        // Outbound links carry packets one way; the peer only ever closes them.
                        match incoming {
                            Ok(Some(_)) => continue,
                            // Closed by the peer: reconnect if packets wait, else end (the
                            // next packet for this hop starts a new link).
                            _ if rx.is_empty() => break 'outer,
                            _ => continue 'outer,
                        }
                    }
                    next = tokio::time::timeout(IDLE_CLOSE, rx.recv()) => {
                        let Ok(next) = next else { break 'outer };
                        let Some(first) = next else { break 'outer };
                        let mut n = 0usize;
                        let mut pending = Some(first);
                        let mut failed = false;
                        flushed.clear();
                        while let Some(q) = pending.take() {
                            n += 1;
                            if self.write_queued(&mut link, q, &mut flushed).await.is_err() {
                                failed = true;
                                break;
                            }
                            if n < WRITE_BATCH {
                                pending = rx.try_recv().ok();
                            }
                        }
                        if failed || link.writer.flush().await.is_err() {
                            continue 'outer;
                        }
                        self.observe_flushed(&mut flushed);
                    }
                }
            }
        }
        rx.close();
        // Packets that raced with the close: hand them to a fresh link (or drop them when
        // the relay is stopping or the hop left the directory).
        let mut left: Vec<Queued> = waiting.drain(..).collect();
        while let Ok(q) = rx.try_recv() {
            left.push(q);
        }
        self.metrics.queue_sub(Queue::Link, left.len() as i64);
        let resubmit = !self.shutdown.is_triggered() && self.directory.peer(&hop).is_some();
        for q in left {
            if resubmit {
                self.enqueue(hop, q);
            } else {
                self.metrics.dropped("link_closed");
            }
        }
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(&hop).is_some_and(|tx| tx.is_closed()) {
            links.remove(&hop);
        }
    }

    /// Whether `q` is too late to send: more than the maximum hop delay past when it was due.
    fn expired(&self, q: &Queued, now: Instant) -> bool {
        now.saturating_duration_since(q.due) > self.settings.max_late
    }

    /// While the hop is down: drops what expired in `waiting` and moves what the channel holds
    /// into it, up to `settings.queue` (the rest stays in the channel, which refuses new
    /// packets once full). The oldest are at the front, so expired ones leave from there.
    fn set_aside(&self, rx: &mut mpsc::Receiver<Queued>, waiting: &mut VecDeque<Queued>) {
        let now = self.clock.monotonic_now();
        let mut expired = 0i64;
        let mut drop_expired = |waiting: &mut VecDeque<Queued>| {
            while waiting.front().is_some_and(|q| self.expired(q, now)) {
                waiting.pop_front();
                expired += 1;
                self.metrics.dropped("expired_link_down");
            }
        };
        drop_expired(waiting);
        while waiting.len() < self.settings.queue {
            let Ok(q) = rx.try_recv() else { break };
            waiting.push_back(q);
        }
        drop_expired(waiting);
        self.metrics.queue_sub(Queue::Link, expired);
    }

    /// Writes one queued packet (unflushed), or drops it if it expired. An error means the
    /// link failed (the packet is dropped and counted).
    async fn write_queued(
        &self,
        link: &mut Link,
        q: Queued,
        flushed: &mut Vec<(HopTiming, Instant)>,
    ) -> Result<(), ()> {
        self.metrics.queue_sub(Queue::Link, 1);
        if self.expired(&q, self.clock.monotonic_now()) {
            self.metrics.dropped("expired_link_down");
            return Ok(());
        }
        if let Err(e) = link.writer.write_frame(&Frame::Packet(q.packet)).await {
            tracing::debug!(error = %e, "link write failed");
            self.metrics.dropped("link_write_failed");
            return Err(());
        }
        self.metrics.forwarded();
        flushed.extend(q.timing.map(|t| (t, q.due)));
        Ok(())
    }

    /// Exports the time spent here by the forwarded packets just flushed.
    fn observe_flushed(&self, flushed: &mut Vec<(HopTiming, Instant)>) {
        let now = self.clock.monotonic_now();
        for (timing, queued_at) in flushed.drain(..) {
            self.metrics
                .observe_stage(Stage::Link, now.saturating_duration_since(queued_at));
            self.metrics.observe_added_latency(
                now.saturating_duration_since(timing.received)
                    .saturating_sub(timing.delay),
            );
        }
    }
}

/// Whether a next hop can be reached, logged once per change (not at every retry): the first
/// failed connect at warn, the recovery at info. Names the hop by its short relay id only.
struct HopReachability {
    hop: RelayId,
    failing: bool,
    metrics: Arc<Metrics>,
}

impl HopReachability {
    fn unreachable(&mut self, e: &dyn std::fmt::Display) {
        if !self.failing {
            self.failing = true;
            self.metrics.hop_failing();
            tracing::warn!(
                hop = %self.hop.short(),
                error = %e,
                "next hop unreachable; retried every few seconds, packets for it held until they are too late"
            );
        }
    }

    fn reachable(&mut self) {
        if self.failing {
            self.failing = false;
            self.metrics.hop_recovered();
            tracing::info!(hop = %self.hop.short(), "next hop reachable again");
        }
    }
}

impl Drop for HopReachability {
    fn drop(&mut self) {
        // The link task ends (idle, hop left the directory, shutdown): no longer a failing hop.
        if self.failing {
            self.metrics.hop_recovered();
        }
    }
}

/// Counts an outbound link as open while it lives.
struct OpenLink(Arc<Metrics>);

impl OpenLink {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.link_up();
        Self(metrics.clone())
    }
}

impl Drop for OpenLink {
    fn drop(&mut self) {
        self.0.link_down();
    }
}

impl LinkSender for Arc<LinkPool> {
    fn send(&self, next_hop: RelayId, packet: Box<[u8; PACKET_SIZE]>, timing: Option<HopTiming>) {
        self.send_timed(next_hop, packet, timing);
    }
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.5 + rand::random::<f64>();
    d.mul_f64(f)
}
