//! The task that owns the link: it sends on the Poisson schedule, pulls the mailbox at a
//! constant rate, matches SURB-acks and retransmits what was not acknowledged.
//!
//! Everything that leaves the client leaves here, one fixed-size frame at a time: packets at
//! the times [`PoissonSchedule`] draws (a real one if queued, else cover), a `PullRequest`
//! every pull interval, and exactly one `Delete` after every pull (empty or not), so the link
//! looks the same whether the client is busy or idle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use spore_protocol::bundle::{self, Bundle, BundleBody};
use spore_protocol::fragment::{self, Fragment};
use spore_protocol::link::{Frame, MailboxItem};
use spore_protocol::packet::SurbRecovery;
use spore_protocol::params::{
    FRAGMENT_DATA_SIZE, PACKET_SIZE, PULL_SLOTS, REPLY_FRAGMENT_DATA_SIZE,
};
use spore_protocol::{MessageId, SporeAddress};
use tokio::sync::mpsc;

use crate::directory::now_ms;
use crate::link::{self, FrameReader, FrameWriter, LinkError};
use crate::packets::{BuiltPacket, is_ack, random_id};
use crate::receiver;
use crate::scheduler::{PoissonSchedule, Stream, backoff};
use crate::store::OutgoingMessage;
use crate::transport::{Shared, TransportEvent, bump};

/// How often timers (ack deadlines, backoffs, lifetimes, lost loops) are checked.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(50);
/// First retransmission backoff; doubles per attempt (randomized), up to `max_backoff`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// A pull that has not completed after this long is abandoned and the link reopened.
const PULL_STALL: Duration = Duration::from_secs(30);

/// What the API side asks of the engine.
pub(crate) enum Command {
    /// A message is durably in the outbox: start sending its fragments.
    Enqueue {
        message: OutgoingMessage,
        fragments: Vec<(u16, Vec<u8>)>,
    },
    /// A ready-built reply packet (on somebody's reply SURB).
    Reply { packet: Vec<u8> },
}

type FragKey = (MessageId, u16);

#[derive(Debug, Clone, Copy)]
enum FragState {
    Queued,
    InFlight { deadline: Instant },
    Backoff { until: Instant },
}

struct OutFrag {
    bytes: Vec<u8>,
    attempts: u32,
    state: FragState,
}

struct OutMessage {
    destination: Arc<SporeAddress>,
    created_ms: u64,
    remaining: usize,
}

enum Ready {
    Fragment(FragKey),
    Reply(Vec<u8>),
}

/// What a SURB id we handed out stands for.
enum AckFor {
    Fragment {
        key: FragKey,
        recovery: SurbRecovery,
        forget_at: Instant,
        sent_at: Instant,
        round_trip: Duration,
    },
    /// The ack of a loop packet: recognised and discarded.
    Loop { forget_at: Instant },
}

impl AckFor {
    fn forget_at(&self) -> Instant {
        match self {
            AckFor::Fragment { forget_at, .. } | AckFor::Loop { forget_at } => *forget_at,
        }
    }
}

enum PullState {
    Idle,
    Collecting {
        items: Vec<MailboxItem>,
        slots: usize,
        since: Instant,
    },
    /// Forward items are being opened and persisted; `handles` waits for them.
    Processing {
        handles: Vec<u64>,
        since: Instant,
    },
    AwaitingDeleteDone {
        since: Instant,
    },
}

struct Link {
    reader: FrameReader,
    writer: FrameWriter,
}

struct Engine {
    shared: Arc<Shared>,
    rng: StdRng,
    schedule: PoissonSchedule,
    messages: HashMap<MessageId, OutMessage>,
    frags: HashMap<FragKey, OutFrag>,
    ready: VecDeque<Ready>,
    acks: HashMap<[u8; 16], AckFor>,
    link: Option<Link>,
    connect_at: Instant,
    connect_backoff: Duration,
    pull: PullState,
    processed_tx: mpsc::UnboundedSender<Vec<u64>>,
    /// Smoothed time acks take beyond their packets' own delays (pull backlog, queues): the
    /// retransmission timeout grows with it, so a slow mailbox does not cause a storm.
    ack_lag: Duration,
}

pub(crate) async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let now = Instant::now();
    let schedule = PoissonSchedule::new(&shared.rates, now, &mut rng);
    let (processed_tx, mut processed_rx) = mpsc::unbounded_channel();
    let mut engine = Engine {
        shared: shared.clone(),
        rng,
        schedule,
        messages: HashMap::new(),
        frags: HashMap::new(),
        ready: VecDeque::new(),
        acks: HashMap::new(),
        link: None,
        connect_at: now,
        connect_backoff: Duration::from_millis(100),
        pull: PullState::Idle,
        processed_tx,
        ack_lag: Duration::ZERO,
    };
    engine.load_outbox().await;

    let mut stop = shared.shutdown.subscribe();
    let mut pull_tick = tokio::time::interval(shared.rates.pull_interval);
    pull_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if *stop.borrow() {
            break;
        }
        if engine.link.is_none() && Instant::now() >= engine.connect_at {
            engine.connect().await;
        }
        let next_send = engine.schedule.next_due();
        let send_at = next_send
            .map(|(t, _)| tokio::time::Instant::from_std(t))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let reconnect_at = tokio::time::Instant::from_std(engine.connect_at);
        let connected = engine.link.is_some();
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(send_at), if next_send.is_some() => {
                if let Some((_, stream)) = next_send {
                    engine.schedule.fire(stream, Instant::now(), &mut engine.rng);
                    engine.on_send_tick(stream).await;
                }
            }
            _ = tokio::time::sleep_until(reconnect_at), if !connected => {}
            frame = read_next(&mut engine.link) => match frame {
                Ok(frame) => engine.on_frame(frame).await,
                Err(e) => engine.drop_link(&e),
            },
            Some(cmd) = commands.recv() => engine.on_command(cmd),
            Some(handles) = processed_rx.recv() => engine.on_processed(handles).await,
            _ = pull_tick.tick() => engine.on_pull_tick().await,
            _ = maintenance.tick() => engine.maintain(),
        }
    }
    // Nothing to flush here: acks are advisory, everything else is flushed where it matters.
}

async fn read_next(link: &mut Option<Link>) -> Result<Frame, LinkError> {
    match link {
        Some(l) => l.reader.read_frame().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    async fn load_outbox(&mut self) {
        let store = self.shared.store.clone();
        let loaded = match tokio::task::spawn_blocking(move || store.load_outbox()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
            Err(_) => return,
        };
        let n: usize = loaded.len();
        for (message, fragments) in loaded {
            self.add_message(message, fragments);
        }
        if n > 0 {
            tracing::info!(messages = n, "re-queued messages from the outbox");
        }
    }

    fn add_message(&mut self, message: OutgoingMessage, fragments: Vec<(u16, Vec<u8>)>) {
        if fragments.is_empty() {
            return;
        }
        self.messages.insert(
            message.id,
            OutMessage {
                destination: Arc::new(message.destination),
                created_ms: message.created_ms,
                remaining: fragments.len(),
            },
        );
        for (index, bytes) in fragments {
            let key = (message.id, index);
            self.frags.insert(
                key,
                OutFrag {
                    bytes,
                    attempts: 0,
                    state: FragState::Queued,
                },
            );
            self.ready.push_back(Ready::Fragment(key));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue { message, fragments } => self.add_message(message, fragments),
            Command::Reply { packet } => self.ready.push_back(Ready::Reply(packet)),
        }
    }

    async fn connect(&mut self) {
        let dir = self.shared.directory.current();
        let Some(relay) = dir.relay(&self.shared.own_relay()) else {
            tracing::warn!("our mailbox relay is not in the current directory");
            self.connect_later();
            return;
        };
        let address = self
            .shared
            .config
            .relay_address_override
            .clone()
            .unwrap_or_else(|| relay.address.clone());
        let secret = self.shared.key.secret_bytes();
        match link::connect(
            &address,
            &secret,
            relay.link_key,
            self.shared.config.timeouts.connect,
        )
        .await
        {
            Ok((reader, writer)) => {
                tracing::info!("link to the mailbox relay is up");
                self.link = Some(Link { reader, writer });
                self.connect_backoff = Duration::from_millis(100);
                self.pull = PullState::Idle;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot reach the mailbox relay");
                self.connect_later();
            }
        }
    }

    fn connect_later(&mut self) {
        self.connect_at = Instant::now() + self.connect_backoff;
        self.connect_backoff = (self.connect_backoff * 2).min(Duration::from_secs(5));
    }

    fn drop_link(&mut self, e: &LinkError) {
        if self.link.take().is_some() {
            tracing::info!(error = %e, "link to the mailbox relay lost; reconnecting");
        }
        self.pull = PullState::Idle;
        self.connect_later();
    }

    async fn write(&mut self, frame: &Frame) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        match link.writer.write_frame(frame).await {
            Ok(()) => true,
            Err(e) => {
                self.drop_link(&e);
                false
            }
        }
    }

    async fn send_packet(&mut self, bytes: Vec<u8>) -> bool {
        let Ok(packet) = <Box<[u8; PACKET_SIZE]>>::try_from(bytes.into_boxed_slice()) else {
            tracing::error!("built a packet of the wrong size");
            return false;
        };
        self.write(&Frame::Packet(packet)).await
    }

    /// The expected time for an ack or a loop: its own delays, two pull intervals, and a
    /// margin that grows with the observed ack lag and doubles with every retransmission.
    fn deadline(&self, built: &BuiltPacket, attempts: u32) -> Instant {
        let slack = self.shared.config.timeouts.ack_margin + self.ack_lag * 2;
        let doublings = 1u32 << attempts.min(4);
        Instant::now() + built.round_trip + self.shared.rates.pull_interval * 2 + slack * doublings
    }

    async fn on_send_tick(&mut self, stream: Stream) {
        if self.link.is_none() {
            return;
        }
        match stream {
            Stream::Payload => {
                if !self.send_next_real().await {
                    self.send_drop().await;
                }
            }
            Stream::Loop => self.send_loop().await,
            Stream::Drop => self.send_drop().await,
        }
    }

    /// Sends the next queued real packet; `false` if there was none.
    async fn send_next_real(&mut self) -> bool {
        while let Some(next) = self.ready.pop_front() {
            match next {
                Ready::Reply(packet) => {
                    if self.send_packet(packet).await {
                        bump(&self.shared.counters.replies_sent);
                    }
                    return true;
                }
                Ready::Fragment(key) => {
                    let Some(f) = self.frags.get(&key) else {
                        continue; // acked or failed meanwhile
                    };
                    if !matches!(f.state, FragState::Queued) {
                        continue;
                    }
                    let Some(destination) =
                        self.messages.get(&key.0).map(|m| m.destination.clone())
                    else {
                        continue;
                    };
                    let dir = self.shared.directory.current();
                    let built =
                        self.shared
                            .factory(&dir)
                            .fragment(&mut self.rng, &destination, &f.bytes);
                    let built = match built {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot build a packet; will retry");
                            self.back_off(key);
                            return false;
                        }
                    };
                    let deadline = self.deadline(&built, f.attempts);
                    if let Some((surb_id, recovery)) = built.ack {
                        self.acks.insert(
                            surb_id,
                            AckFor::Fragment {
                                key,
                                recovery,
                                forget_at: deadline
                                    + self.shared.config.timeouts.max_backoff
                                    + self.shared.config.timeouts.ack_margin,
                                sent_at: Instant::now(),
                                round_trip: built.round_trip,
                            },
                        );
                    }
                    if !self.send_packet(built.bytes).await {
                        // The link broke: try again after reconnecting.
                        self.ready.push_front(Ready::Fragment(key));
                        return true;
                    }
                    let Some(f) = self.frags.get_mut(&key) else {
                        return true;
                    };
                    if f.attempts > 0 {
                        bump(&self.shared.counters.retransmissions);
                    }
                    f.attempts = f.attempts.saturating_add(1);
                    f.state = FragState::InFlight { deadline };
                    bump(&self.shared.counters.real_sent);
                    return true;
                }
            }
        }
        false
    }

    fn back_off(&mut self, key: FragKey) {
        let max = self.shared.config.timeouts.max_backoff;
        if let Some(f) = self.frags.get_mut(&key) {
            let wait = backoff(&mut self.rng, BACKOFF_BASE, f.attempts, max);
            f.state = FragState::Backoff {
                until: Instant::now() + wait,
            };
        }
    }

    async fn send_drop(&mut self) {
        let dir = self.shared.directory.current();
        let built = self.shared.factory(&dir).drop_cover(&mut self.rng);
        match built {
            Ok(b) => {
                if self.send_packet(b.bytes).await {
                    bump(&self.shared.counters.drop_sent);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot build drop cover"),
        }
    }

    async fn send_loop(&mut self) {
        let nonce = random_id();
        let bundle = Bundle {
            origin: self.shared.config.server_name.clone(),
            sender: None,
            server_keys: None,
            body: BundleBody::Loop { nonce },
        };
        let fragment = bundle::pack(&bundle, FRAGMENT_DATA_SIZE)
            .and_then(|padded| fragment::split(random_id(), &padded, FRAGMENT_DATA_SIZE));
        let fragment = match fragment.as_deref() {
            Ok([f]) => f.encode(),
            _ => {
                tracing::error!("a loop bundle does not fit one fragment");
                return;
            }
        };
        let dir = self.shared.directory.current();
        let address = self.shared.address.clone();
        let built = self
            .shared
            .factory(&dir)
            .fragment(&mut self.rng, &address, &fragment);
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build loop cover");
                return;
            }
        };
        let deadline = self.deadline(&built, 0);
        if let Some((surb_id, _)) = &built.ack {
            self.acks.insert(
                *surb_id,
                AckFor::Loop {
                    forget_at: deadline + self.shared.config.timeouts.ack_margin,
                },
            );
        }
        self.shared
            .loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(nonce, deadline);
        if self.send_packet(built.bytes).await {
            bump(&self.shared.counters.loops_sent);
        } else {
            self.shared
                .loops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&nonce);
        }
    }

    async fn on_pull_tick(&mut self) {
        if self.link.is_none() {
            return;
        }
        let stalled = match &self.pull {
            PullState::Idle => false,
            PullState::Collecting { since, .. }
            | PullState::Processing { since, .. }
            | PullState::AwaitingDeleteDone { since } => since.elapsed() > PULL_STALL,
        };
        if stalled {
            self.drop_link(&LinkError::Timeout);
            return;
        }
        if !matches!(self.pull, PullState::Idle) {
            return; // the previous pull is still in progress
        }
        if self.write(&Frame::PullRequest).await {
            bump(&self.shared.counters.pulls);
            self.pull = PullState::Collecting {
                items: Vec::new(),
                slots: 0,
                since: Instant::now(),
            };
        }
    }

    async fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::PullSlot(slot) => {
                let PullState::Collecting { items, slots, .. } = &mut self.pull else {
                    tracing::debug!("pull slot outside a pull; reconnecting");
                    self.drop_link(&LinkError::Closed);
                    return;
                };
                *slots += 1;
                if let Some(item) = slot.item {
                    items.push(item);
                }
                if *slots >= PULL_SLOTS {
                    let PullState::Collecting { items, .. } =
                        std::mem::replace(&mut self.pull, PullState::Idle)
                    else {
                        return;
                    };
                    self.on_pulled(items).await;
                }
            }
            Frame::DeleteDone { .. } => {
                if matches!(self.pull, PullState::AwaitingDeleteDone { .. }) {
                    self.pull = PullState::Idle;
                }
            }
            Frame::Error { code } => {
                tracing::warn!(?code, "the mailbox relay closed the link");
                self.drop_link(&LinkError::Closed);
            }
            Frame::Padding => {}
            Frame::Packet(_) | Frame::PullRequest | Frame::Delete { .. } => {
                tracing::debug!("unexpected frame from the relay; reconnecting");
                self.drop_link(&LinkError::Closed);
            }
        }
    }

    /// Sorts one pull: acks and replies are handled here, forward items go to the receiver,
    /// which persists them before we delete anything.
    async fn on_pulled(&mut self, items: Vec<MailboxItem>) {
        self.shared
            .counters
            .items_pulled
            .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut handles = Vec::with_capacity(items.len());
        let mut forward = Vec::new();
        for item in items {
            if let Some(ack) = self.acks.remove(&item.surb_id) {
                match ack {
                    AckFor::Fragment {
                        key,
                        recovery,
                        sent_at,
                        round_trip,
                        ..
                    } => {
                        if is_ack(&recovery, &item.payload[..]) {
                            let lag = sent_at.elapsed().saturating_sub(round_trip);
                            self.ack_lag = (self.ack_lag * 7 + lag) / 8;
                            self.on_ack(key);
                        }
                    }
                    AckFor::Loop { .. } => {}
                }
                handles.push(item.handle);
            } else if self.on_reply(&item) {
                handles.push(item.handle);
            } else {
                forward.push(item);
            }
        }
        if forward.is_empty() {
            self.send_delete(handles).await;
        } else {
            self.pull = PullState::Processing {
                handles,
                since: Instant::now(),
            };
            let shared = self.shared.clone();
            let done = self.processed_tx.clone();
            tokio::spawn(async move {
                let handles = receiver::process_forward(&shared, forward).await;
                let _ = done.send(handles);
            });
        }
    }

    async fn on_processed(&mut self, mut persisted: Vec<u64>) {
        let PullState::Processing { handles, .. } =
            std::mem::replace(&mut self.pull, PullState::Idle)
        else {
            return;
        };
        persisted.extend(handles);
        self.send_delete(persisted).await;
    }

    async fn send_delete(&mut self, handles: Vec<u64>) {
        // Always exactly one Delete per pull, empty or not: the link looks the same either way.
        if self.write(&Frame::Delete { handles }).await {
            self.pull = PullState::AwaitingDeleteDone {
                since: Instant::now(),
            };
        } else {
            self.pull = PullState::Idle;
        }
    }

    fn on_ack(&mut self, key: FragKey) {
        if self.frags.remove(&key).is_none() {
            return; // a late ack for a fragment already acknowledged
        }
        bump(&self.shared.counters.acks);
        if let Err(e) = self.shared.store.ack_fragment(&key.0, key.1) {
            tracing::warn!(error = %e, "cannot record an ack; the fragment may be re-sent");
        }
        let done = match self.messages.get_mut(&key.0) {
            Some(m) => {
                m.remaining = m.remaining.saturating_sub(1);
                m.remaining == 0
            }
            None => false,
        };
        if done {
            self.messages.remove(&key.0);
            bump(&self.shared.counters.messages_delivered);
            let _ = self.shared.events.send(TransportEvent::Delivered(key.0));
        }
    }

    /// A fragment of a response to one of our `request()`s.
    fn on_reply(&mut self, item: &MailboxItem) -> bool {
        let mut table = self
            .shared
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some((request_id, recovery)) = table.surbs.remove(&item.surb_id) else {
            return false;
        };
        let Ok(plain) = recovery.open(&item.payload[..]) else {
            return true;
        };
        let Ok(fragment) = Fragment::decode(&plain, REPLY_FRAGMENT_DATA_SIZE) else {
            return true;
        };
        let Some(pending) = table.pending.get_mut(&request_id) else {
            return true;
        };
        if let Ok(Some(done)) = pending.reassembler.insert(fragment, Instant::now())
            && let Ok(bundle) = bundle::unpack(&done.padded)
            && let BundleBody::Response {
                request_id: answered,
                response,
            } = bundle.body
            && answered == request_id
            && let Some(tx) = pending.tx.take()
        {
            let _ = tx.send(response);
        }
        true
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        // Ack deadlines and backoffs.
        let mut requeue = Vec::new();
        let mut late = Vec::new();
        for (key, f) in &self.frags {
            match f.state {
                FragState::InFlight { deadline } if deadline <= now => late.push(*key),
                FragState::Backoff { until } if until <= now => requeue.push(*key),
                _ => {}
            }
        }
        for key in late {
            self.back_off(key);
        }
        for key in requeue {
            if let Some(f) = self.frags.get_mut(&key) {
                f.state = FragState::Queued;
                self.ready.push_back(Ready::Fragment(key));
            }
        }
        // Message lifetime.
        let lifetime_ms = u64::try_from(self.shared.config.timeouts.message_lifetime.as_millis())
            .unwrap_or(u64::MAX);
        let now_ms = now_ms();
        let expired: Vec<MessageId> = self
            .messages
            .iter()
            .filter(|(_, m)| now_ms.saturating_sub(m.created_ms) > lifetime_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.messages.remove(&id);
            self.frags.retain(|(m, _), _| *m != id);
            if let Err(e) = self.shared.store.remove_outgoing(&id) {
                tracing::warn!(error = %e, "cannot drop a failed message from the outbox");
            }
            bump(&self.shared.counters.messages_failed);
            tracing::info!("a message was not acknowledged within its lifetime and failed");
            let _ = self.shared.events.send(TransportEvent::Failed(id));
        }
        // Forget SURB ids nobody will use any more.
        self.acks.retain(|_, a| a.forget_at() > now);
        // Lost loops.
        let lost = {
            let mut loops = self.shared.loops.lock().unwrap_or_else(|e| e.into_inner());
            let before = loops.len();
            loops.retain(|_, deadline| *deadline > now);
            before - loops.len()
        };
        if lost > 0 {
            self.shared
                .counters
                .loops_lost
                .fetch_add(lost as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
