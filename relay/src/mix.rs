//! The mix pipeline: a pool of Sphinx worker threads, then the group commit, which hands each
//! packet to the forwarder (`forward`: now, or after its delay).
//!
//! ```text
//! links ──try_send──▶ unwrap queue ──▶ N worker threads ──▶ commit thread ──▶ Forwarder ──┬─(due)─────────────▶ Egress
//!        (bounded,     (std sync_channel)  parse, X25519,      one fdatasync                └─▶ delay thread ──▶ Egress
//!         drop+count)                      replay check,       per group                        (heap of deadlines)
//!                                          unwrap, store
//! ```
//!
//! Workers are dedicated OS threads, never async tasks: a Sphinx unwrap is ~100 µs of pure CPU.
//! A worker marks a packet's replay tag in memory (and, for a final hop, stores its payload)
//! without flushing, and hands the packet on at once; the commit thread appends the tags of
//! everything the workers produced since its last append to the replay log with one
//! `fdatasync` (and commits the database only if a mailbox store is among them), and only then
//! releases those packets. So a packet leaves this relay, and a SURB-ack says "stored", only
//! once its replay tag and payload are on disk. While one sync runs the workers keep
//! unwrapping into the next group, so the sync costs latency, not throughput.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spore_protocol::packet::{self, IncomingPacket, PacketLimits, Unwrapped};
use spore_protocol::params::{PACKET_SIZE, PAYLOAD_SIZE};
use spore_protocol::{MailboxId, PeerMisbehaved, RelayId};
use x25519_dalek::StaticSecret;

use crate::clock::Clock;
use crate::directory::DirectoryView;
use crate::final_hop_output::{self, Emission};
use crate::forward::{Forwarder, HopTiming};
use crate::ingress::Inbound;
use crate::keys::{KeySchedule, RelayKeys};
use crate::loop_monitor::LoopMonitor;
use crate::metrics::{Metrics, Queue, Stage};
use crate::replay::{ReplayCache, ShortTag};
use crate::store::{Database, MailboxStore};

/// Most packets one group commit takes: bounds the time the first of them waits for the last.
const MAX_GROUP: usize = 4096;

/// What a worker hands to the committer.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Forward at `timing.deadline()`: the moment the packet was read plus its header's delay.
    Forward {
        next_hop: RelayId,
        packet: Box<[u8; PACKET_SIZE]>,
        timing: HopTiming,
    },
    /// Stored in a mailbox. `emit` (the SURB-ack, or a decoy when the payload carried none)
    /// leaves a hop delay after the arrival, and not before the commit.
    Stored { ack: bool, emit: Option<Emission> },
    /// Drop cover ended here: `emit` (a decoy) leaves a hop delay after the arrival, as an ack
    /// would, so that output does not tell cover from real deliveries (`final_hop_output`).
    Cover { emit: Option<Emission> },
}

/// What a worker hands to the commit thread for one packet: the replay tag to persist, and
/// what to release once it (and any stored payload) is durable. Handed on as soon as no other
/// packet is waiting, so that at light load a packet never waits for a worker to finish others;
/// under load, for at most [`HOLD_MAX`].
#[derive(Debug)]
pub(crate) struct Processed {
    tag: Option<(u64, ShortTag)>,
    outcome: Option<Outcome>,
    /// When the worker finished with it.
    ready: Instant,
}

/// Everything a worker needs; shared by all workers.
pub(crate) struct MixContext {
    pub keys: RelayKeys,
    pub schedule: KeySchedule,
    pub limits: PacketLimits,
    pub replay: Arc<ReplayCache>,
    pub mailbox: Option<Arc<MailboxStore>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Where decoys for final-hop packets without an ack are routed, and the hop delay rate.
    pub directory: Arc<DirectoryView>,
    /// This relay's loops in flight, for the loop-loss alarm.
    pub loops: Arc<LoopMonitor>,
    /// Next hops whose link just failed, which decoys avoid.
    pub quarantine: Arc<crate::quarantine::HopQuarantine>,
}

/// Per-worker copy of the accepted epochs' Sphinx secrets, refreshed once a second. Only keys
/// the relay holds: an epoch whose key was erased (or never made) has none, and its packets
/// are refused. Copies are zeroized when dropped, and a worker drops them when it goes idle,
/// so an erased epoch's key does not outlive its erasure in an idle worker.
#[derive(Default)]
struct SecretCache {
    secrets: HashMap<u64, StaticSecret>,
}

impl SecretCache {
    fn accepted(&mut self, ctx: &MixContext) -> Vec<(u64, StaticSecret)> {
        let mut epochs = ctx.schedule.accepted_epochs(ctx.clock.now_unix());
        // Never an epoch whose replay tags are gone (the clock stepped back).
        let floor = ctx.replay.floor();
        epochs.retain(|e| *e >= floor);
        self.secrets.retain(|e, _| epochs.contains(e));
        epochs
            .into_iter()
            .filter_map(|e| {
                if let Some(s) = self.secrets.get(&e) {
                    return Some((e, s.clone()));
                }
                match ctx.keys.epochs().secret(e) {
                    Ok(Some(s)) => {
                        self.secrets.insert(e, s.clone());
                        Some((e, s))
                    }
                    Ok(None) => None,
                    Err(err) => {
                        tracing::error!(error = %err, epoch = e, "could not read an epoch key");
                        None
                    }
                }
            })
            .collect()
    }

    fn clear(&mut self) {
        self.secrets.clear();
    }
}

/// Why a packet was dropped: a fixed metric label.
type Reason = &'static str;

impl MixContext {
    /// Processes one packet: exact-size parse, one X25519 operation per key tried, replay check
    /// before unwrap, then unwrap and the final-hop store. The packet's replay tag is put in
    /// `tag` for the commit thread to persist.
    fn process(
        &self,
        bytes: &[u8; PACKET_SIZE],
        received: Instant,
        link: Option<u64>,
        secrets: &[(u64, StaticSecret)],
        tag: &mut Option<(u64, ShortTag)>,
    ) -> Result<Option<Outcome>, Reason> {
        let last = secrets.len().saturating_sub(1);
        for (i, (epoch, secret)) in secrets.iter().enumerate() {
            let incoming = IncomingPacket::parse(bytes, &self.limits).map_err(|e| e.reason())?;
            let prepared = incoming.prepare(secret).map_err(|e| e.reason())?;
            let replay_tag = prepared.replay_tag();
            if self.replay.contains(*epoch, &replay_tag) {
                return Err("replay");
            }
            let unwrapped = match prepared.unwrap(&self.limits) {
                Ok(u) => u,
                // The header does not name its key: a MAC failure may mean "another epoch".
                Err(spore_protocol::Error::PeerMisbehaved(PeerMisbehaved::BadHeaderMac))
                    if i < last =>
                {
                    continue;
                }
                Err(e) => return Err(e.reason()),
            };
            match self.replay.mark(*epoch, &replay_tag) {
                Some(short) => *tag = Some((*epoch, short)),
                None => return Err("replay"),
            }
            return self.handle_unwrapped(unwrapped, received, link);
        }
        Err("no_key")
    }

    fn handle_unwrapped(
        &self,
        unwrapped: Unwrapped,
        received: Instant,
        link: Option<u64>,
    ) -> Result<Option<Outcome>, Reason> {
        match unwrapped {
            Unwrapped::Forward {
                next_hop,
                delay,
                packet,
            } => {
                let packet: Box<[u8; PACKET_SIZE]> = packet
                    .into_boxed_slice()
                    .try_into()
                    .map_err(|_| "malformed")?;
                Ok(Some(Outcome::Forward {
                    next_hop,
                    packet,
                    timing: HopTiming {
                        received,
                        delay,
                        link,
                    },
                }))
            }
            Unwrapped::Final {
                mailbox,
                surb_id,
                payload,
            } => {
                if mailbox == MailboxId::DROP {
                    self.metrics.cover_received();
                    if crate::cover::is_own_loop(&surb_id, &payload) {
                        self.loops.returned(surb_id);
                        return Ok(None);
                    }
                    if final_hop_output::is_decoy(&payload) {
                        return Ok(None);
                    }
                    return Ok(Some(Outcome::Cover {
                        emit: final_hop_output::decoy(self, received),
                    }));
                }
                let Some(store) = &self.mailbox else {
                    return Err("not_a_mailbox");
                };
                let payload: &[u8; PAYLOAD_SIZE] =
                    payload.as_slice().try_into().map_err(|_| "malformed")?;
                match store.insert(
                    &mailbox,
                    &surb_id,
                    payload,
                    crate::store::coarse_stored_at(self.clock.now_unix()),
                ) {
                    Ok(Ok(_handle)) => {}
                    Ok(Err(refusal)) => return Err(refusal.reason()),
                    Err(e) => {
                        tracing::error!(error = %e, "mailbox write failed");
                        return Err("storage_error");
                    }
                }
                let ack = packet::ack_surb_of(payload).and_then(|surb| {
                    match packet::use_surb(&surb, packet::ACK_MESSAGE) {
                        Ok((hop, p)) => match p.into_boxed_slice().try_into() {
                            Ok(p) => Some((hop, p)),
                            Err(_) => None,
                        },
                        Err(_) => {
                            self.metrics.dropped("bad_ack_surb");
                            None
                        }
                    }
                });
                let (ack, emit) = match ack {
                    Some(ack) => (true, Some(final_hop_output::delayed(self, ack, received))),
                    None => (false, final_hop_output::decoy(self, received)),
                };
                Ok(Some(Outcome::Stored { ack, emit }))
            }
        }
    }
}

/// Starts `n` worker threads. They exit once `stop` is set and the queue is empty (or when
/// every ingress is gone).
pub(crate) fn spawn_workers(
    n: usize,
    ctx: Arc<MixContext>,
    rx: Receiver<Inbound>,
    commit_tx: SyncSender<Vec<Processed>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..n.max(1))
        .map(|i| {
            let ctx = ctx.clone();
            let rx = rx.clone();
            let commit_tx = commit_tx.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("sphinx-{i}"))
                .spawn(move || worker_loop(&ctx, &rx, &commit_tx, &stop))
        })
        .collect()
}

/// The next packet, one at a time, so that with several workers a short burst is spread over
/// all of them instead of queueing behind the one that took it. With `wait` false, returns
/// `Next::Empty` at once if no packet is waiting (or another worker is waiting for one).
fn next_packet(rx: &Mutex<Receiver<Inbound>>, stop: &AtomicBool, wait: bool) -> Next {
    if !wait {
        let rx = match rx.try_lock() {
            Ok(rx) => rx,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Next::Empty,
        };
        return match rx.try_recv() {
            Ok(packet) => Next::Packet(packet),
            Err(std::sync::mpsc::TryRecvError::Empty) => Next::Empty,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Next::Stop,
        };
    }
    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(packet) => return Next::Packet(packet),
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Acquire) => return Next::Stop,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Next::Stop,
        }
    }
}

enum Next {
    Packet(Inbound),
    Empty,
    Stop,
}

/// How long a worker may hold unwrapped packets while more keep arriving, so that under load
/// the committer syncs groups instead of single packets: each `fdatasync` costs the relay CPU
/// (a device flush, a VM exit on a virtual disk), and at 500 µs the commit thread took 8–9% of
/// the relay's CPU against 3–5% at 2 ms (`spore bench relay`, docs/benchmarks.md). When no
/// packet is waiting a packet goes on at once, so at light load nothing is held; at 50% load
/// the p99 of the relay's own path stayed under 1.1 ms either way (data dir on tmpfs).
const HOLD_MAX: Duration = Duration::from_micros(2000);

/// A held group goes on once one of its packets is due within this: time for the committer to
/// finish a sync in progress and make one more. Holding is free for a packet whose delay still
/// has more than this to run, and that is nearly every packet of a real network (delays are
/// exponential with a mean of tens of ms); a packet that is due already when unwrapped (delay
/// 0, as in throughput benchmarks) gains nothing from an early hand-off and is grouped.
const COMMIT_MARGIN: Duration = Duration::from_micros(1000);

fn worker_loop(
    ctx: &MixContext,
    rx: &Mutex<Receiver<Inbound>>,
    commit_tx: &SyncSender<Vec<Processed>>,
    stop: &AtomicBool,
) {
    let mut cache = SecretCache::default();
    let mut secrets = Vec::new();
    let mut secrets_at = 0u64;
    let mut held: Vec<Processed> = Vec::new();
    let mut held_since = ctx.clock.monotonic_now();
    // The earliest deadline still ahead among the held packets.
    let mut held_deadline: Option<Instant> = None;
    loop {
        if held.is_empty() {
            // About to wait for a packet, maybe long: hold no key copies meanwhile.
            cache.clear();
            secrets.clear();
        }
        let packet = match next_packet(rx, stop, held.is_empty()) {
            Next::Packet(p) => Some(p),
            Next::Empty => None,
            Next::Stop => {
                let _ = hand_off(ctx, commit_tx, &mut held);
                return;
            }
        };
        let Some(Inbound {
            packet,
            received,
            link,
        }) = packet
        else {
            if !hand_off(ctx, commit_tx, &mut held) {
                return;
            }
            continue;
        };
        ctx.metrics.queue_sub(Queue::Unwrap, 1);
        let t0 = ctx.clock.monotonic_now();
        ctx.metrics
            .observe_stage(Stage::UnwrapQueue, t0.saturating_duration_since(received));
        // The accepted epochs depend only on the (injected) clock's second and the replay
        // floor (which `mark` checks anyway): look them up once per second, not per packet.
        let now_unix = ctx.clock.now_unix();
        if secrets.is_empty() || now_unix != secrets_at {
            secrets = cache.accepted(ctx);
            secrets_at = now_unix;
        }
        let mut tag = None;
        // A bug in the Sphinx code on some hostile input must cost one packet, not a
        // worker: contain it, count it, keep going.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.process(&packet, received, link, &secrets, &mut tag)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("panic while processing a packet; packet dropped");
            Err("internal_panic")
        });
        let ready = ctx.clock.monotonic_now();
        ctx.metrics
            .observe_unwrap(ready.saturating_duration_since(t0));
        let outcome = match result {
            Ok(o) => o,
            Err(reason) => {
                ctx.metrics.dropped(reason);
                None
            }
        };
        if outcome.is_none() && tag.is_none() {
            continue;
        }
        if held.is_empty() {
            held_since = t0;
            held_deadline = None;
        }
        if let Some(Outcome::Forward { timing, .. }) = &outcome
            && timing.deadline() > ready
        {
            let at = timing.deadline();
            held_deadline = Some(held_deadline.map_or(at, |d| d.min(at)));
        }
        ctx.metrics
            .queue_add(Queue::Commit, i64::from(outcome.is_some()));
        held.push(Processed {
            tag,
            outcome,
            ready,
        });
        let now = ctx.clock.monotonic_now();
        let due = held_deadline.is_some_and(|d| d <= now + COMMIT_MARGIN);
        if (due || now.saturating_duration_since(held_since) >= HOLD_MAX)
            && !hand_off(ctx, commit_tx, &mut held)
        {
            return;
        }
    }
}

/// Sends the held packets to the committer as one group; false once the committer is gone.
fn hand_off(
    ctx: &MixContext,
    commit_tx: &SyncSender<Vec<Processed>>,
    held: &mut Vec<Processed>,
) -> bool {
    if held.is_empty() {
        return true;
    }
    let group = std::mem::take(held);
    let n = group.iter().filter(|p| p.outcome.is_some()).count() as i64;
    if commit_tx.send(group).is_err() {
        ctx.metrics.queue_sub(Queue::Commit, n);
        return false;
    }
    true
}

/// Starts the commit thread: one durable append of the group's replay tags, plus a database
/// commit only if the group stored something in a mailbox, then the group's packets go to the
/// [`Forwarder`], which sends each at once or holds it for its delay. Exits when every worker
/// is gone, and with it the forwarder.
pub(crate) fn spawn_committer(
    db: Database,
    replay: Arc<ReplayCache>,
    rx: Receiver<Vec<Processed>>,
    forwarder: Forwarder,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Sending may start a link task, which needs the runtime this relay runs on.
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("group-commit".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            let mut tags: Vec<(u64, ShortTag)> = Vec::new();
            let mut outcomes: Vec<(Outcome, Instant)> = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                let mut taken = 0usize;
                while let Some(group) = next {
                    for p in group {
                        tags.extend(p.tag);
                        outcomes.extend(p.outcome.map(|o| (o, p.ready)));
                        taken += 1;
                    }
                    next = if taken < MAX_GROUP {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                let n = outcomes.len();
                metrics.queue_sub(Queue::Commit, n as i64);
                let t0 = clock.monotonic_now();
                let stores = outcomes
                    .iter()
                    .any(|(o, _)| matches!(o, Outcome::Stored { .. }));
                // Forwarded packets need only their tags durable; the database's fsync is paid
                // only by groups that put something in a mailbox.
                let committed = replay
                    .persist(&tags)
                    .and_then(|()| if stores { db.commit() } else { Ok(()) });
                tags.clear();
                let now = clock.monotonic_now();
                metrics.observe_commit(now.saturating_duration_since(t0));
                if let Err(e) = committed {
                    tracing::error!(error = %e, "group commit failed; dropping the group");
                    for _ in 0..n {
                        metrics.dropped("commit_failed");
                    }
                    outcomes.clear();
                    continue;
                }
                for (outcome, ready) in outcomes.drain(..) {
                    match outcome {
                        Outcome::Forward {
                            next_hop,
                            packet,
                            timing,
                        } => {
                            metrics
                                .observe_stage(Stage::Commit, now.saturating_duration_since(ready));
                            forwarder.forward(next_hop, packet, timing, now);
                        }
                        Outcome::Stored { ack, emit } => {
                            metrics.stored();
                            if ack {
                                metrics.ack_sent();
                            }
                            if let Some(Emission { packet, at }) = emit {
                                forwarder.send_at(packet, at, now);
                            }
                        }
                        Outcome::Cover { emit } => {
                            if let Some(Emission { packet, at }) = emit {
                                forwarder.send_at(packet, at, now);
                            }
                        }
                    }
                }
            }
        })
}
