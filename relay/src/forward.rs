//! Forwarding: everything between a packet's group commit and its outbound link.
//!
//! ```text
//! commit thread ─▶ Forwarder ─┬─(deadline passed)──────────────────▶ Egress ─┬─▶ own workers (next hop is us)
//!                             └─▶ delay thread (DelayQueue) ─(due)─▶ Egress  └─▶ LinkSender (the link pool)
//! SURB-acks, loop cover ─────────────────────────────────────────────▶ Egress
//! ```
//!
//! [`HopTiming`] travels with a forwarded packet all the way to its link, so the link can
//! export how much latency this relay added beyond the delay the header asked for. Links sit
//! behind the [`LinkSender`] trait (nym-node's `PacketForwarder` habit): forwarding knows
//! nothing of sockets, and the link pool nothing of the mix. Time is read through the relay's
//! [`Clock`], so where it comes from is decided by whoever starts the relay.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use spore_protocol::RelayId;
use spore_protocol::params::PACKET_SIZE;

use crate::clock::Clock;
use crate::delay_queue::{DelayQueue, precise_timers};
use crate::ingress::PacketIngress;
use crate::metrics::{Metrics, Queue, Stage};

/// A packet on its way to a next hop.
pub(crate) type OutboundPacket = (RelayId, Box<[u8; PACKET_SIZE]>);

/// A forwarded packet waiting in the delay queue.
type Delayed = (OutboundPacket, HopTiming);

/// Room in the channel from the commit thread to the delay thread. When it is full the commit
/// thread blocks, which pushes back on the workers and, through the bounded unwrap queue, on
/// the links, instead of growing memory.
const DELAY_CHANNEL: usize = 4096;

/// Most items taken from the channel before the delay thread looks at its deadlines again.
const INTAKE_BATCH: usize = 1024;

/// When a forwarded packet reached this relay and how long its header told it to wait: all
/// the relay needs to export its own added latency per hop. Durations only, never identities.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HopTiming {
    pub received: Instant,
    pub delay: Duration,
}

impl HopTiming {
    /// When the packet is due to leave. The delay runs from the packet's arrival, as an
    /// observer of the links sees it: queueing, unwrapping and the durable commit of its replay
    /// tag happen inside the delay instead of being added to it.
    pub fn deadline(&self) -> Instant {
        self.received + self.delay
    }
}

/// Where packets for other relays go: the link pool in a running relay.
pub(crate) trait LinkSender: Send + Sync + 'static {
    /// Queues `packet` for `next_hop`, which is never this relay. Never blocks; drops (and
    /// counts) what it cannot take. With `timing`, the packet's time here is exported once it
    /// is on the wire.
    fn send(&self, next_hop: RelayId, packet: Box<[u8; PACKET_SIZE]>, timing: Option<HopTiming>);
}

/// Where a packet leaves this relay: back into its own workers when the next hop is this relay
/// itself (a loop through a single relay, or a route that names it twice), else onto a link.
pub(crate) struct Egress {
    self_id: RelayId,
    local: PacketIngress,
    links: Box<dyn LinkSender>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").finish_non_exhaustive()
    }
}

impl Egress {
    pub fn new(
        self_id: RelayId,
        local: PacketIngress,
        links: Box<dyn LinkSender>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            self_id,
            local,
            links,
            metrics,
        })
    }

    /// Sends `packet` to `next_hop` now. Never blocks.
    pub fn send(
        &self,
        next_hop: RelayId,
        packet: Box<[u8; PACKET_SIZE]>,
        timing: Option<HopTiming>,
    ) {
        if next_hop == self.self_id {
            self.metrics.forwarded();
            self.local.submit(packet);
            return;
        }
        self.links.send(next_hop, packet, timing);
    }
}

/// Puts each committed packet on its way: at once when its deadline has already passed (a
/// delay of 0, or one that ran out during the commit), else through the delay thread.
///
/// The commit thread owns the only `Forwarder`; when it ends, the delay thread's channel
/// closes and the delay thread ends too, dropping what it still holds (none of it was
/// acknowledged by this relay).
pub(crate) struct Forwarder {
    egress: Arc<Egress>,
    delay_tx: SyncSender<Scheduled<Delayed>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Starts the delay thread, holding at most `capacity` packets; releases go to `egress`.
    pub fn start(
        egress: Arc<Egress>,
        capacity: usize,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (delay_tx, delay_rx) = std::sync::mpsc::sync_channel(DELAY_CHANNEL);
        let thread = {
            let egress = egress.clone();
            let timer_metrics = metrics.clone();
            spawn_delay_thread(
                delay_rx,
                capacity,
                move |((hop, packet), timing): Delayed, late| {
                    timer_metrics.observe_stage(Stage::DelayTimer, late);
                    egress.send(hop, packet, Some(timing));
                },
                clock,
                metrics.clone(),
            )?
        };
        Ok((
            Self {
                egress,
                delay_tx,
                metrics,
            },
            thread,
        ))
    }

    /// A forwarded packet whose replay tag is durable: leaves now if its deadline is at or
    /// before `now`, else at its deadline. Blocks while the delay thread's channel is full.
    pub fn forward(
        &self,
        next_hop: RelayId,
        packet: Box<[u8; PACKET_SIZE]>,
        timing: HopTiming,
        now: Instant,
    ) {
        let at = timing.deadline();
        if at <= now {
            self.egress.send(next_hop, packet, Some(timing));
            return;
        }
        let scheduled = Scheduled {
            at,
            item: ((next_hop, packet), timing),
        };
        if self.delay_tx.send(scheduled).is_err() {
            self.metrics.dropped("shutting_down");
        }
    }

    /// A packet with no delay to keep (a SURB-ack): leaves at once.
    pub fn send_now(&self, (next_hop, packet): OutboundPacket) {
        self.egress.send(next_hop, packet, None);
    }
}

/// Something scheduled for later.
#[derive(Debug)]
pub(crate) struct Scheduled<T> {
    pub at: Instant,
    pub item: T,
}

/// Starts the thread that holds items for their delay: items arrive on `rx` and leave through
/// `release` at their deadline, with how late they left. It exits once every sender is gone;
/// items still pending then are dropped. `release` runs inside the tokio runtime current at
/// the call, if there is one (releasing a packet may start a link task).
///
/// A dedicated thread, not a tokio task: tokio's timer wheel has a 1 ms tick, so every delayed
/// packet would leave up to a millisecond after its deadline (half a millisecond on average,
/// added to every hop). Waiting on the channel with a timeout uses the kernel's
/// high-resolution timers instead (~50 µs slack), and an item that arrives already due (a
/// deadline spent waiting for the group commit) leaves at once.
fn spawn_delay_thread<T, F>(
    rx: Receiver<Scheduled<T>>,
    capacity: usize,
    mut release: F,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    T: Send + 'static,
    F: FnMut(T, Duration) + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("delay-queue".into())
        .spawn(move || {
            let _runtime = runtime.as_ref().map(|r| r.enter());
            precise_timers();
            let mut queue = DelayQueue::new(capacity);
            loop {
                let now = clock.monotonic_now();
                let mut released = 0i64;
                while let Some((at, item)) = queue.pop_due_at(now) {
                    released += 1;
                    release(item, now.saturating_duration_since(at));
                }
                metrics.queue_sub(Queue::Delay, released);
                let first = match queue.next_deadline() {
                    Some(at) => match rx.recv_timeout(at.saturating_duration_since(now)) {
                        Ok(s) => s,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match rx.recv() {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let mut next = Some(first);
                let mut n = 0usize;
                let mut added = 0i64;
                // Take what is already waiting before looking at the deadlines again.
                while let Some(s) = next {
                    n += 1;
                    match queue.push(s.at, s.item) {
                        Ok(()) => added += 1,
                        Err(_) => metrics.dropped("delay_queue_full"),
                    }
                    next = if n < INTAKE_BATCH {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                metrics.queue_add(Queue::Delay, added);
            }
            metrics.queue_sub(Queue::Delay, queue.len() as i64);
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn the_thread_releases_in_deadline_order_never_early_and_stops_with_its_senders() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let thread = spawn_delay_thread(
            rx,
            16,
            move |item: u32, late| {
                let _ = out_tx.send((item, Instant::now(), late));
            },
            Arc::new(SystemClock),
            metrics.clone(),
        )
        .expect("thread");
        let t0 = Instant::now();
        // Sent out of order; one already due; one far away that must never come out.
        for (ms, item) in [(30u64, 3u32), (10, 1), (0, 0), (20, 2), (60_000, 9)] {
            let at = t0 + Duration::from_millis(ms);
            tx.send(Scheduled { at, item }).expect("send");
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            let (item, left, late) = out_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("released");
            let due = t0 + Duration::from_millis(u64::from(item) * 10);
            assert!(left >= due, "item {item} left before its deadline");
            assert!(late <= left.saturating_duration_since(due));
            got.push(item);
        }
        assert_eq!(got, [0, 1, 2, 3]);
        // The last sender gone: the thread ends at once, dropping what is still pending.
        drop(tx);
        thread.join().expect("joined");
        assert!(out_rx.try_recv().is_err());
        assert_eq!(metrics.snapshot().delay_queue, 0);
    }
}
