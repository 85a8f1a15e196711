//! Outbound links to next hops: one task per [`RelayId`], created on first use, reconnecting
//! with exponential backoff, closed after a while without traffic. The pool is the relay's
//! [`LinkSender`]: it is only ever handed packets for other relays.
//!
//! Each link has a bounded queue; when it is full (the next hop is slow or down) packets are
//! dropped and counted. The initiator pins the next hop's link key from the directory, so a
//! packet is never handed to anyone but the relay the header named.

use std::collections::HashMap;
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
use crate::shutdown::Shutdown;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An outbound link with nothing to send for this long is closed (and reopened on demand).
/// Shorter than the default inbound idle timeout, so that the dialling side closes first.
const IDLE_CLOSE: Duration = Duration::from_secs(240);
/// Frames written before one flush.
const WRITE_BATCH: usize = 64;

/// A packet waiting for its link, with (for a forwarded packet) what the relay needs to
/// export how long it took here.
struct Queued {
    packet: Box<[u8; PACKET_SIZE]>,
    timing: Option<(HopTiming, Instant)>,
}

type PacketTx = mpsc::Sender<Queued>;

/// Settings for outbound links.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub queue: usize,
    pub connect_timeout: Duration,
}

/// All outbound links of one relay.
pub(crate) struct LinkPool {
    local_secret: [u8; 32],
    directory: Arc<DirectoryView>,
    settings: PoolSettings,
    links: Mutex<HashMap<RelayId, PacketTx>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl LinkPool {
    pub fn new(
        local_secret: [u8; 32],
        directory: Arc<DirectoryView>,
        settings: PoolSettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Self {
            local_secret,
            directory,
            settings,
            links: Mutex::new(HashMap::new()),
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
        let mut queued = Queued {
            packet,
            timing: timing.map(|t| (t, self.clock.monotonic_now())),
        };
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
                    link
                }
                Err(e) => {
                    tracing::debug!(hop = ?hop, error = %e, "link connect failed");
                    reach.unreachable(&e);
                    self.metrics.link_connect_failed();
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    tokio::select! {
                        _ = self.shutdown.signalled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let _open = OpenLink::new(&self.metrics);
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
                        let mut n = 0i64;
                        let mut pending = Some(first);
                        let mut failed = false;
                        flushed.clear();
                        while let Some(q) = pending.take() {
                            n += 1;
                            flushed.extend(q.timing);
                            if let Err(e) = link.writer.write_frame(&Frame::Packet(q.packet)).await {
                                tracing::debug!(hop = ?hop, error = %e, "link write failed");
                                self.metrics.dropped("link_write_failed");
                                failed = true;
                                break;
                            }
                            self.metrics.forwarded();
                            if n < WRITE_BATCH as i64 {
                                pending = rx.try_recv().ok();
                            }
                        }
                        self.metrics.queue_sub(Queue::Link, n);
                        if failed || link.writer.flush().await.is_err() {
                            continue 'outer;
                        }
                        let now = self.clock.monotonic_now();
                        for (timing, queued_at) in flushed.drain(..) {
                            self.metrics.observe_stage(Stage::Link, now.saturating_duration_since(queued_at));
                            self.metrics.observe_added_latency(
                                now.saturating_duration_since(timing.received).saturating_sub(timing.delay),
                            );
                        }
                    }
                }
            }
        }
        rx.close();
        // Packets that raced with the close: hand them to a fresh link (or drop them when
        // the relay is stopping or the hop left the directory).
        let mut left = Vec::new();
        while let Ok(q) = rx.try_recv() {
            left.push(q);
        }
        self.metrics.queue_sub(Queue::Link, left.len() as i64);
        let resubmit = !self.shutdown.is_triggered() && self.directory.peer(&hop).is_some();
        for q in left {
            if resubmit {
                self.send_timed(hop, q.packet, q.timing.map(|(t, _)| t));
            } else {
                self.metrics.dropped("link_closed");
            }
        }
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(&hop).is_some_and(|tx| tx.is_closed()) {
            links.remove(&hop);
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
                "next hop unreachable; packets to it are dropped while it is retried"
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
