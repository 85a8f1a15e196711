//! The mix pipeline: a pool of Sphinx worker threads, then the group commit, then the delay
//! queue.
//!
//! ```text
//! links ──try_send──▶ unwrap queue ──▶ N worker threads ──▶ commit thread ──▶ delay task ──▶ link pool
//!        (bounded,     (std sync_channel)  parse, X25519,      one fsync per     (heap of
//!         drop+count)                      replay check,       batch, then       deadlines)
//!                                          unwrap, store       release
//! ```
//!
//! Workers are dedicated OS threads, never async tasks: a Sphinx unwrap is ~100 µs of pure CPU.
//! A worker marks a packet's replay tag in memory (and, for a final hop, stores its payload)
//! without flushing; the commit thread appends the group's tags to the replay log with one
//! `fdatasync` (and commits the database only if the group stored something in a mailbox),
//! and only then releases those packets. So a packet leaves this relay, and a SURB-ack
//! says "stored", only once its replay tag and payload are on disk. While one flush runs the
//! workers keep unwrapping into the next batch, so the fsync costs latency, not throughput.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use spore_protocol::packet::{self, IncomingPacket, PacketLimits, Unwrapped};
use spore_protocol::params::{PACKET_SIZE, PAYLOAD_SIZE};
use spore_protocol::{MailboxId, RelayId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use x25519_dalek::StaticSecret;

use crate::clock::Clock;
use crate::delay_queue::Scheduled;
use crate::keys::{KeySchedule, RelayKeys};
use crate::metrics::{Metrics, Queue};
use crate::replay::{ReplayCache, ShortTag};
use crate::store::{Database, MailboxStore};

/// A packet on its way to a next hop.
pub type OutboundPacket = (RelayId, Box<[u8; PACKET_SIZE]>);

/// Packets a worker takes from the queue at once (one lock, one hand-off to the committer).
const WORKER_BATCH: usize = 16;

/// The entry to the worker pool; cheap to clone, one per connection.
#[derive(Clone)]
pub struct PacketIngress {
    tx: SyncSender<Box<[u8; PACKET_SIZE]>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PacketIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketIngress").finish_non_exhaustive()
    }
}

impl PacketIngress {
    /// Queues a packet for unwrapping; drops (and counts) it if the queue is full. Never blocks.
    pub fn submit(&self, packet: Box<[u8; PACKET_SIZE]>) {
        match self.tx.try_send(packet) {
            Ok(()) => self.metrics.queue_add(Queue::Unwrap, 1),
            Err(TrySendError::Full(_)) => self.metrics.dropped("unwrap_queue_full"),
            Err(TrySendError::Disconnected(_)) => self.metrics.dropped("shutting_down"),
        }
    }
}

/// What a worker hands to the committer.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Forward after the delay. `at` is computed when the packet was unwrapped.
    Forward {
        at: Instant,
        next_hop: RelayId,
        packet: Box<[u8; PACKET_SIZE]>,
    },
    /// Stored in a mailbox; the SURB-ack (if the payload carried one) goes out after the commit.
    Stored { ack: Option<OutboundPacket> },
}

/// What one worker batch hands to the commit thread: replay tags to persist, and the packets
/// to release once they (and any stored payloads) are durable.
#[derive(Debug)]
pub(crate) struct CommitGroup {
    tags: Vec<(u64, ShortTag)>,
    outcomes: Vec<Outcome>,
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
}

/// Per-worker cache of derived Sphinx secrets (HKDF per epoch, not per packet).
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
            .map(|e| {
                let s = self
                    .secrets
                    .entry(e)
                    .or_insert_with(|| ctx.keys.sphinx_secret(e))
                    .clone();
                (e, s)
            })
            .collect()
    }
}

/// Why a packet was dropped: a fixed metric label.
type Reason = &'static str;

impl MixContext {
    /// Processes one packet: exact-size parse, one X25519 operation per key tried, replay check
    /// before unwrap, then unwrap and the final-hop store. The packet's replay tag is added to
    /// `tags` for the commit thread to persist.
    fn process(
        &self,
        bytes: &[u8; PACKET_SIZE],
        secrets: &[(u64, StaticSecret)],
        tags: &mut Vec<(u64, ShortTag)>,
    ) -> Result<Option<Outcome>, Reason> {
        let last = secrets.len().saturating_sub(1);
        for (i, (epoch, secret)) in secrets.iter().enumerate() {
            let incoming = IncomingPacket::parse(bytes, &self.limits).map_err(|e| e.reason())?;
            let prepared = incoming.prepare(secret).map_err(|e| e.reason())?;
            let tag = prepared.replay_tag();
            if self.replay.contains(*epoch, &tag) {
                return Err("replay");
            }
            let unwrapped = match prepared.unwrap(&self.limits) {
                Ok(u) => u,
                // The header does not name its key: a MAC failure may mean "another epoch".
                Err(e) if e.reason() == "bad_mac" && i < last => continue,
                Err(e) => return Err(e.reason()),
            };
            match self.replay.mark(*epoch, &tag) {
                Some(short) => tags.push((*epoch, short)),
                None => return Err("replay"),
            }
            return self.handle_unwrapped(unwrapped);
        }
        Err("no_key")
    }

    fn handle_unwrapped(&self, unwrapped: Unwrapped) -> Result<Option<Outcome>, Reason> {
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
                    at: Instant::now() + delay,
                    next_hop,
                    packet,
                }))
            }
            Unwrapped::Final {
                mailbox,
                surb_id,
                payload,
            } => {
                if mailbox == MailboxId::DROP {
                    self.metrics.cover_received();
                    return Ok(None);
                }
                let Some(store) = &self.mailbox else {
                    return Err("not_a_mailbox");
                };
                let payload: &[u8; PAYLOAD_SIZE] =
                    payload.as_slice().try_into().map_err(|_| "malformed")?;
                match store.insert(&mailbox, &surb_id, payload, self.clock.now_unix()) {
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
                Ok(Some(Outcome::Stored { ack }))
            }
        }
    }
}

/// Creates the unwrap queue.
pub(crate) fn unwrap_queue(
    capacity: usize,
    metrics: Arc<Metrics>,
) -> (PacketIngress, Receiver<Box<[u8; PACKET_SIZE]>>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    (PacketIngress { tx, metrics }, rx)
}

/// Starts `n` worker threads. They exit once `stop` is set and the queue is empty (or when
/// every ingress is gone).
pub(crate) fn spawn_workers(
    n: usize,
    ctx: Arc<MixContext>,
    rx: Receiver<Box<[u8; PACKET_SIZE]>>,
    commit_tx: SyncSender<CommitGroup>,
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

// Boxed packets move between threads without copying 1.4 kB each.
#[allow(clippy::vec_box)]
fn next_batch(
    rx: &Mutex<Receiver<Box<[u8; PACKET_SIZE]>>>,
    stop: &AtomicBool,
) -> Option<Vec<Box<[u8; PACKET_SIZE]>>> {
    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(first) => {
                let mut batch = Vec::with_capacity(WORKER_BATCH);
                batch.push(first);
                while batch.len() < WORKER_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                return Some(batch);
            }
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Acquire) => return None,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn worker_loop(
    ctx: &MixContext,
    rx: &Mutex<Receiver<Box<[u8; PACKET_SIZE]>>>,
    commit_tx: &SyncSender<CommitGroup>,
    stop: &AtomicBool,
) {
    let mut cache = SecretCache::default();
    while let Some(batch) = next_batch(rx, stop) {
        ctx.metrics.queue_sub(Queue::Unwrap, batch.len() as i64);
        let secrets = cache.accepted(ctx);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut tags = Vec::with_capacity(batch.len());
        for packet in batch {
            let t0 = StdInstant::now();
            // A bug in the Sphinx code on some hostile input must cost one packet, not a
            // worker: contain it, count it, keep going.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.process(&packet, &secrets, &mut tags)
            }))
            .unwrap_or_else(|_| {
                tracing::error!("panic while processing a packet; packet dropped");
                Err("internal_panic")
            });
            ctx.metrics.observe_unwrap(t0.elapsed());
            match result {
                Ok(Some(o)) => outcomes.push(o),
                Ok(None) => {}
                Err(reason) => ctx.metrics.dropped(reason),
            }
        }
        if !outcomes.is_empty() || !tags.is_empty() {
            let n = outcomes.len() as i64;
            ctx.metrics.queue_add(Queue::Commit, n);
            if commit_tx.send(CommitGroup { tags, outcomes }).is_err() {
                ctx.metrics.queue_sub(Queue::Commit, n);
                return;
            }
        }
    }
}

/// Starts the commit thread: one durable append of the group's replay tags (plus a database
/// commit only if the group stored something in a mailbox), then release the group's packets
/// to the delay queue. Exits when every worker is gone.
pub(crate) fn spawn_committer(
    db: Database,
    replay: Arc<ReplayCache>,
    rx: Receiver<CommitGroup>,
    delay_tx: mpsc::Sender<Scheduled<OutboundPacket>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("group-commit".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while let Ok(more) = rx.try_recv() {
                    group.push(more);
                }
                let n: usize = group.iter().map(|g| g.outcomes.len()).sum();
                metrics.queue_sub(Queue::Commit, n as i64);
                let t0 = StdInstant::now();
                let tags: Vec<(u64, ShortTag)> =
                    group.iter().flat_map(|g| g.tags.iter().copied()).collect();
                let stores = group
                    .iter()
                    .flat_map(|g| &g.outcomes)
                    .any(|o| matches!(o, Outcome::Stored { .. }));
                // Forwarded packets need only their tags durable; the database's fsync is paid
                // only by groups that put something in a mailbox.
                let committed = replay.persist(&tags).and_then(|()| {
                    if stores { db.commit() } else { Ok(()) }
                });
                metrics.observe_commit(t0.elapsed());
                if let Err(e) = committed {
                    tracing::error!(error = %e, "group commit failed; dropping the group");
                    for _ in 0..n {
                        metrics.dropped("commit_failed");
                    }
                    continue;
                }
                for outcome in group.into_iter().flat_map(|g| g.outcomes) {
                    let scheduled = match outcome {
                        Outcome::Forward {
                            at,
                            next_hop,
                            packet,
                        } => Scheduled {
                            at,
                            item: (next_hop, packet),
                        },
                        Outcome::Stored { ack } => {
                            metrics.stored();
                            let Some(ack) = ack else { continue };
                            metrics.ack_sent();
                            Scheduled {
                                at: Instant::now(),
                                item: ack,
                            }
                        }
                    };
                    // Blocking here pushes back on the workers, and through the bounded unwrap
                    // queue on the links, instead of growing memory.
                    if delay_tx.blocking_send(scheduled).is_err() {
                        metrics.dropped("shutting_down");
                    }
                }
            }
        })
}
