//! Forwarding: everything between a packet's group commit and its outbound link.
//!
//! ```text
//! commit thread ─▶ Forwarder ─┬─(deadline passed)──────────────────▶ Egress ─┬─▶ own workers (next hop is us)
//!                             └─▶ delay thread (DelayQueue) ─(due)─▶ Egress  └─▶ LinkSender (the link pool)
//! SURB-acks, decoys ─▶ Forwarder ─▶ delay thread (a hop delay) ─────▶ Egress
//! loop cover ────────────────────────────────────────────────────────▶ Egress
//! ```
//!
//! [`HopTiming`] travels with a forwarded packet all the way to its link, so the link can
//! export how much latency this relay added beyond the delay the header asked for. Links sit
//! behind the [`LinkSender`] trait (nym-node's `PacketForwarder` habit): forwarding knows
//! nothing of sockets, and the link pool nothing of the mix. Time is read through the relay's
//! [`Clock`], so where it comes from is decided by whoever starts the relay.
//!
//! A graceful stop loses nothing held here: [`ReleaseGate::close`] (first thing on shutdown,
//! before any link closes) stops every release, packets committed after it join the delay
//! queue even if due, and when the commit thread ends the delay thread writes what it holds
//! to `held_packets`' file with each packet's original release time. The next start puts them
//! back in the queue: each leaves at its time, or at once if that passed while the relay was
//! down.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use spore_protocol::RelayId;
use spore_protocol::params::PACKET_SIZE;

use crate::clock::Clock;
use crate::delay_queue::{DelayQueue, precise_timers};
use crate::held_packets::{self, HeldPacket};
use crate::ingress::PacketIngress;
use crate::metrics::{Metrics, Queue, Stage};

/// A packet on its way to a next hop.
pub(crate) type OutboundPacket = (RelayId, Box<[u8; PACKET_SIZE]>);

/// A packet waiting in the delay queue: a forwarded packet with its timing, or a packet of this
/// relay's own (a SURB-ack or a decoy, `final_hop_output`), which has none.
type Delayed = (OutboundPacket, Option<HopTiming>);

/// Whether packets may leave: open while the relay runs, closed for good when it stops.
/// Every release holds the read side while it hands a packet to its link, so once
/// [`ReleaseGate::close`] returns no packet is on its way out, and the links can flush what
/// they were given and close.
#[derive(Debug)]
pub(crate) struct ReleaseGate {
    open: RwLock<bool>,
}

impl ReleaseGate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            open: RwLock::new(true),
        })
    }

    /// Stops every release, waiting for one in progress to finish.
    pub fn close(&self) {
        *self.open.write().unwrap_or_else(|e| e.into_inner()) = false;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, bool> {
        self.open.read().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        *self.read()
    }
}

/// One client link may hold at most this fraction (1/n) of the delay queue, so that one link
/// sending maximum-delay packets cannot fill it for everyone. Links of listed relays carry
/// many clients' packets and have no share limit.
const LINK_SHARE: usize = 8;

/// What the delay thread needs to know of an item to keep each link to its share.
pub(crate) trait FromLink {
    /// The client link the item came on, if its share is limited.
    fn link(&self) -> Option<u64>;
}

impl FromLink for Delayed {
    fn link(&self) -> Option<u64> {
        self.1.and_then(|t| t.link)
    }
}

/// Items each client link has in the delay queue.
struct LinkShares {
    share: usize,
    held: std::collections::HashMap<u64, usize>,
}

impl LinkShares {
    fn new(capacity: usize) -> Self {
        Self {
            share: (capacity / LINK_SHARE).max(1),
            held: std::collections::HashMap::new(),
        }
    }

    fn take(&mut self, link: Option<u64>) -> bool {
        let Some(link) = link else { return true };
        let n = self.held.entry(link).or_insert(0);
        if *n >= self.share {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&mut self, link: Option<u64>) {
        let Some(link) = link else { return };
        if let Some(n) = self.held.get_mut(&link) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(&link);
            }
        }
    }
}

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
    /// The client link the packet came on (its share of the delay queue), if any.
    pub link: Option<u64>,
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
/// closes and the delay thread ends too, keeping what it still holds for the next start if
/// the stop was graceful (the gate closed).
pub(crate) struct Forwarder {
    egress: Arc<Egress>,
    delay_tx: SyncSender<Scheduled<Delayed>>,
    gate: Arc<ReleaseGate>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Starts the delay thread, holding at most `capacity` packets; releases go to `egress`.
    /// With `held_file`, packets held at the last graceful stop are read from it (and the file
    /// removed) and scheduled first, and packets still held at this run's stop are written to
    /// it. Returns the gate that stops releases.
    pub fn start(
        egress: Arc<Egress>,
        capacity: usize,
        held_file: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>, Arc<ReleaseGate>)> {
        let (delay_tx, delay_rx) = std::sync::mpsc::sync_channel(DELAY_CHANNEL);
        let gate = ReleaseGate::new();
        let restored = match &held_file {
            Some(path) => restore(path, clock.as_ref()),
            None => Vec::new(),
        };
        let thread = {
            let egress = egress.clone();
            let timer_metrics = metrics.clone();
            let exit_clock = clock.clone();
            let exit_gate = gate.clone();
            spawn_delay_thread(
                delay_rx,
                capacity,
                restored,
                Some(gate.clone()),
                move |((hop, packet), timing): Delayed, late| {
                    timer_metrics.observe_stage(Stage::DelayTimer, late);
                    egress.send(hop, packet, timing);
                },
                move |left: Vec<(Instant, Delayed)>| {
                    keep_for_next_start(held_file, &exit_gate, left, exit_clock.as_ref())
                },
                clock.clone(),
                metrics.clone(),
            )?
        };
        Ok((
            Self {
                egress,
                delay_tx,
                gate: gate.clone(),
                metrics,
            },
            thread,
            gate,
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
            let open = self.gate.read();
            if *open {
                self.egress.send(next_hop, packet, Some(timing));
                return;
            }
        }
        self.schedule(at, ((next_hop, packet), Some(timing)));
    }

    /// A packet of this relay's own (a SURB-ack or a decoy) that leaves at `at` (a hop delay
    /// after the arrival it answers, `final_hop_output`), like a forwarded packet, and never
    /// before `committed`: an ack only once the message is durable.
    pub fn send_at(&self, (next_hop, packet): OutboundPacket, at: Instant, committed: Instant) {
        self.schedule(at.max(committed), ((next_hop, packet), None));
    }

    fn schedule(&self, at: Instant, item: Delayed) {
        if self.delay_tx.send(Scheduled { at, item }).is_err() {
            self.metrics.dropped("shutting_down");
        }
    }
}

/// Reads the packets held at the last stop and schedules each at its original time, on this
/// run's monotonic clock (at once if that time has passed). Logs how many.
fn restore(path: &std::path::Path, clock: &dyn Clock) -> Vec<Scheduled<Delayed>> {
    let held = match held_packets::take(path) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "could not read the packets held at the last stop");
            return Vec::new();
        }
    };
    if held.is_empty() {
        return Vec::new();
    }
    let (wall, mono) = (clock.now(), clock.monotonic_now());
    let mut late = 0usize;
    let out: Vec<Scheduled<Delayed>> = held
        .into_iter()
        .map(|h| {
            let at = match h.release_at.duration_since(wall) {
                Ok(ahead) => mono + ahead,
                Err(_) => {
                    late += 1;
                    mono
                }
            };
            let timing = h.delay.map(|delay| HopTiming {
                received: at.checked_sub(delay).unwrap_or(at),
                delay,
                link: None,
            });
            Scheduled {
                at,
                item: ((h.next_hop, h.packet), timing),
            }
        })
        .collect();
    tracing::info!(
        packets = out.len(),
        past_their_time = late,
        "restored the packets held at the last stop; each leaves at its original time, those \
         past it at once"
    );
    out
}

/// At the end of the delay thread: after a graceful stop (gate closed) writes what is left to
/// the held-packets file with wall-clock release times; otherwise (the relay was dropped, or
/// no file is configured) what is left is lost, and counted in the log.
fn keep_for_next_start(
    file: Option<PathBuf>,
    gate: &ReleaseGate,
    left: Vec<(Instant, Delayed)>,
    clock: &dyn Clock,
) {
    let n = left.len();
    let Some(path) = file.filter(|_| !gate.is_open()) else {
        if n > 0 {
            tracing::warn!(
                packets = n,
                "delayed packets dropped at stop (not a graceful stop)"
            );
        }
        return;
    };
    let (wall, mono) = (clock.now(), clock.monotonic_now());
    let held: Vec<HeldPacket> = left
        .into_iter()
        .map(|(at, ((next_hop, packet), timing))| HeldPacket {
            release_at: if at >= mono {
                wall + (at - mono)
            } else {
                wall.checked_sub(mono - at)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            },
            delay: timing.map(|t| t.delay),
            next_hop,
            packet,
        })
        .collect();
    match held_packets::save(&path, &held) {
        Ok(()) => tracing::info!(packets = n, "kept the held packets for the next start"),
        Err(e) => tracing::error!(error = %e, packets = n, "could not keep the held packets"),
    }
}

/// Something scheduled for later.
#[derive(Debug)]
pub(crate) struct Scheduled<T> {
    pub at: Instant,
    pub item: T,
}

/// Starts the thread that holds items for their delay: `initial` and the items that arrive
/// on `rx` leave through `release` at their deadline, with how late they left, while `gate`
/// (if any) is open; once it is closed nothing leaves and arrivals only join the queue. The
/// thread exits once every sender is gone and hands what is still pending to `at_exit`.
/// `release` runs inside the tokio runtime current at the call, if there is one (releasing a
/// packet may start a link task).
///
/// A dedicated thread, not a tokio task: tokio's timer wheel has a 1 ms tick, so every delayed
/// packet would leave up to a millisecond after its deadline (half a millisecond on average,
/// added to every hop). Waiting on the channel with a timeout uses the kernel's
/// high-resolution timers instead (~50 µs slack), and an item that arrives already due (a
/// deadline spent waiting for the group commit) leaves at once.
#[allow(clippy::too_many_arguments)]
fn spawn_delay_thread<T, F, E>(
    rx: Receiver<Scheduled<T>>,
    capacity: usize,
    initial: Vec<Scheduled<T>>,
    gate: Option<Arc<ReleaseGate>>,
    mut release: F,
    at_exit: E,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    T: FromLink + Send + 'static,
    F: FnMut(T, Duration) + Send + 'static,
    E: FnOnce(Vec<(Instant, T)>) + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("delay-queue".into())
        .spawn(move || {
            let _runtime = runtime.as_ref().map(|r| r.enter());
            precise_timers();
            let mut queue = DelayQueue::new(capacity);
            let mut shares = LinkShares::new(capacity);
            let mut added = 0i64;
            for s in initial {
                added += i64::from(push_in_share(&mut queue, &mut shares, &metrics, s));
            }
            metrics.queue_add(Queue::Delay, added);
            loop {
                let now = clock.monotonic_now();
                let open = {
                    let open = gate.as_ref().map(|g| g.read());
                    if open.as_ref().is_none_or(|o| **o) {
                        let mut released = 0i64;
                        while let Some((at, item)) = queue.pop_due_at(now) {
                            released += 1;
                            release(item, now.saturating_duration_since(at));
                        }
                        metrics.queue_sub(Queue::Delay, released);
                        true
                    } else {
                        false
                    }
                };
                let first = match queue.next_deadline().filter(|_| open) {
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
                    added += i64::from(push_in_share(&mut queue, &mut shares, &metrics, s));
                    next = if n < INTAKE_BATCH {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                metrics.queue_add(Queue::Delay, added);
            }
            metrics.queue_sub(Queue::Delay, queue.len() as i64);
            at_exit(queue.drain());
        })
}

/// Queues `s` if its link is within its share and the queue has room; else drops and counts it.
fn push_in_share<T: FromLink>(
    queue: &mut DelayQueue<T>,
    shares: &mut LinkShares,
    metrics: &Metrics,
    s: Scheduled<T>,
) -> bool {
    let link = s.item.link();
    if !shares.take(link) {
        metrics.dropped("delay_share_full");
        return false;
    }
    match queue.push(s.at, s.item) {
        Ok(()) => true,
        Err(_) => {
            shares.give_back(link);
            metrics.dropped("delay_queue_full");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    impl FromLink for u32 {
        fn link(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn the_thread_releases_in_deadline_order_never_early_and_stops_with_its_senders() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let (left_tx, left_rx) = std::sync::mpsc::channel();
        let thread = spawn_delay_thread(
            rx,
            16,
            Vec::new(),
            None,
            move |item: u32, late| {
                let _ = out_tx.send((item, Instant::now(), late));
            },
            move |left: Vec<(Instant, u32)>| {
                let _ = left_tx.send(left.into_iter().map(|(_, i)| i).collect::<Vec<_>>());
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
        // The last sender gone: the thread ends at once, handing over what is still pending.
        drop(tx);
        thread.join().expect("joined");
        assert!(out_rx.try_recv().is_err());
        assert_eq!(left_rx.try_recv().expect("handed over"), [9]);
        assert_eq!(metrics.snapshot().delay_queue, 0);
    }

    #[test]
    fn one_client_link_holds_at_most_its_share_of_the_delay_queue() {
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let (left_tx, left_rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let thread = spawn_delay_thread(
            rx,
            16, // a share of 16 / LINK_SHARE = 2
            Vec::new(),
            None,
            |_: Delayed, _| {},
            move |left: Vec<(Instant, Delayed)>| {
                let _ = left_tx.send(left.iter().map(|(_, d)| d.link()).collect::<Vec<_>>());
            },
            Arc::new(SystemClock),
            metrics.clone(),
        )
        .expect("thread");
        let at = Instant::now() + Duration::from_secs(600);
        for link in [
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(2),
            None,
            None,
            None,
        ] {
            let timing = HopTiming {
                received: at,
                delay: Duration::ZERO,
                link,
            };
            let item = (
                (RelayId([0; 32]), Box::new([0u8; PACKET_SIZE])),
                Some(timing),
            );
            tx.send(Scheduled { at, item }).expect("send");
        }
        drop(tx);
        thread.join().expect("joined");
        let mut left = left_rx.try_recv().expect("handed over");
        left.sort();
        assert_eq!(left, [None, None, None, Some(1), Some(1), Some(2)]);
        assert_eq!(metrics.snapshot().dropped("delay_share_full"), 2);
    }
}
