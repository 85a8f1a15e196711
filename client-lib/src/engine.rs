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

use crate::builder::{BuildPool, Built, FragmentJob, Job};
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
/// Real fragments built ahead of their send (being built or ready): enough to keep the build
/// threads busy between two sends at any rate, few enough that a packet is fresh when sent.
const BUILD_AHEAD: usize = 32;
/// Drop cover packets kept ready, so a payload tick with nothing real to send only pops one.
const COVER_STOCK: usize = 4;
/// A packet built longer ago than this is rebuilt (fragments) or discarded (cover) rather
/// than sent: it may use keys of an epoch that is ending.
const BUILT_MAX_AGE: Duration = Duration::from_secs(60);
/// The congestion window never shrinks below this many fragments in flight.
const MIN_WINDOW: f64 = 4.0;
/// ... and starts here (then doubles per round trip until the first late ack).
const INITIAL_WINDOW: f64 = 16.0;
/// Bounds the sender's memory of outstanding SURB-acks.
const MAX_WINDOW: f64 = 8192.0;

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
    /// Handed to the build threads, or built and waiting for a payload tick.
    Building,
    InFlight {
        deadline: Instant,
    },
    Backoff {
        until: Instant,
    },
}

struct OutFrag {
    bytes: Arc<[u8]>,
    attempts: u32,
    state: FragState,
}

struct OutMessage {
    destination: Arc<SporeAddress>,
    created_ms: u64,
    remaining: usize,
}

/// How many fragments may be in flight (sent, not yet acknowledged): TCP-style AIMD. Acks
/// come back only as fast as our pulls return them (at most `PULL_SLOTS` per pull), so when
/// our own mailbox backs up, acks are late; without a window every late ack would trigger a
/// retransmission whose own ack joins the backlog, a storm. The window grows by one per ack
/// (slow start, until the first late ack) or by one per window of acks, and halves at most
/// once per ack round trip when an ack is late, so retransmissions per round trip never
/// exceed what the ack path returned in the last one.
#[derive(Debug, Clone)]
struct CongestionWindow {
    cwnd: f64,
    ssthresh: f64,
    last_cut: Option<Instant>,
}

impl CongestionWindow {
    fn new() -> Self {
        Self {
            cwnd: INITIAL_WINDOW,
            ssthresh: MAX_WINDOW,
            last_cut: None,
        }
    }

    fn allows(&self, outstanding: usize) -> bool {
        (outstanding as f64) < self.cwnd.floor()
    }

    fn on_ack(&mut self) {
        let grow = if self.cwnd < self.ssthresh {
            1.0
        } else {
            1.0 / self.cwnd
        };
        self.cwnd = (self.cwnd + grow).min(MAX_WINDOW);
    }

    /// An ack is late. Several late acks of one round trip are one congestion event.
    fn on_late(&mut self, now: Instant, round_trip: Duration) {
        if self
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < round_trip)
        {
            return;
        }
        self.ssthresh = (self.cwnd / 2.0).max(MIN_WINDOW);
        self.cwnd = self.ssthresh;
        self.last_cut = Some(now);
    }
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
    /// Fragments waiting to be built (or, without build threads, sent), in order.
    ready: VecDeque<FragKey>,
    /// Reply packets (built by `respond` on somebody's SURB), sent before anything else.
    replies: VecDeque<Vec<u8>>,
    pool: Option<BuildPool>,
    /// Fragments built by the pool, oldest first, with when they were built.
    built: VecDeque<(FragKey, BuiltPacket, Instant)>,
    /// Drop cover built by the pool.
    cover: VecDeque<(BuiltPacket, Instant)>,
    cover_building: usize,
    /// Fragments in `FragState::InFlight` and `FragState::Building`.
    in_flight: usize,
    building: usize,
    window: CongestionWindow,
    /// Smoothed time from sending a fragment to its ack being pulled.
    ack_round_trip: Option<Duration>,
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
    let threads = shared.config.build_threads;
    let pool = (threads > 0)
        .then(|| BuildPool::start(&shared, threads, BUILD_AHEAD + COVER_STOCK))
        .flatten();
    let mut engine = Engine {
        shared: shared.clone(),
        rng,
        schedule,
        messages: HashMap::new(),
        frags: HashMap::new(),
        ready: VecDeque::new(),
        replies: VecDeque::new(),
        pool,
        built: VecDeque::new(),
        cover: VecDeque::new(),
        cover_building: 0,
        in_flight: 0,
        building: 0,
        window: CongestionWindow::new(),
        ack_round_trip: None,
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
        engine.feed_pool();
        let next_send = engine.schedule.next_due();
        let send_at = next_send
            .map(|(t, _)| tokio::time::Instant::from_std(t))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let reconnect_at = tokio::time::Instant::from_std(engine.connect_at);
        let connected = engine.link.is_some();
        tokio::select! {
            () = crate::transport::stopped(&mut stop) => break,
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
            Some(built) = next_built(&mut engine.pool) => engine.on_built(built),
            _ = pull_tick.tick() => engine.on_pull_tick().await,
            _ = maintenance.tick() => engine.maintain(),
        }
    }
    // Nothing to flush here: acks are advisory, everything else is flushed where it matters.
}

async fn next_built(pool: &mut Option<BuildPool>) -> Option<Built> {
    match pool {
        Some(p) => p.results.recv().await,
        None => std::future::pending().await,
    }
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
        // A message queued while the engine was reading the outbox at start arrives twice
        // (from the outbox and as a command). Re-adding it would reset fragments already being
        // built or in flight, and lose them from the congestion window's count.
        if fragments.is_empty() || self.messages.contains_key(&message.id) {
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
                    bytes: bytes.into(),
                    attempts: 0,
                    state: FragState::Queued,
                },
            );
            self.ready.push_back(key);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue { message, fragments } => self.add_message(message, fragments),
            Command::Reply { packet } => self.replies.push_back(packet),
        }
    }

    /// Moves fragment `key` to `state`, keeping the in-flight and building counts.
    fn set_state(&mut self, key: FragKey, state: FragState) {
        if let Some(f) = self.frags.get_mut(&key) {
            let old = std::mem::replace(&mut f.state, state);
            count(&mut self.in_flight, &mut self.building, old, -1);
            count(&mut self.in_flight, &mut self.building, state, 1);
        }
    }

    fn remove_frag(&mut self, key: &FragKey) -> bool {
        match self.frags.remove(key) {
            Some(f) => {
                count(&mut self.in_flight, &mut self.building, f.state, -1);
                true
            }
            None => false,
        }
    }

    /// The next fragment of the ready queue that still waits to be sent (entries acked, failed or
    /// already being built meanwhile are skipped), with its destination and bytes.
    fn next_queued(&mut self) -> Option<(FragKey, Arc<SporeAddress>, Arc<[u8]>)> {
        while let Some(key) = self.ready.pop_front() {
            let Some(f) = self.frags.get(&key) else {
                continue;
            };
            if !matches!(f.state, FragState::Queued) {
                continue;
            }
            if let Some(m) = self.messages.get(&key.0) {
                return Some((key, m.destination.clone(), f.bytes.clone()));
            }
        }
        None
    }

    /// Hands queued fragments to the build threads while the congestion window has room, and
    /// keeps the drop cover stock full.
    fn feed_pool(&mut self) {
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        while self.cover.len() + self.cover_building < COVER_STOCK && pool.has_room() {
            if !pool.submit(Job::DropCover) {
                break;
            }
            self.cover_building += 1;
        }
        while self.building < BUILD_AHEAD
            && self.window.allows(self.in_flight + self.building)
            && self.pool.as_ref().is_some_and(BuildPool::has_room)
        {
            let Some((key, destination, bytes)) = self.next_queued() else {
                break;
            };
            let job = Job::Fragment(FragmentJob {
                key,
                destination,
                bytes,
            });
            if !self.pool.as_mut().is_some_and(|p| p.submit(job)) {
                self.ready.push_front(key);
                break;
            }
            self.set_state(key, FragState::Building);
        }
    }

    fn on_built(&mut self, built: Built) {
        if let Some(pool) = self.pool.as_mut() {
            pool.pending = pool.pending.saturating_sub(1);
        }
        match built {
            Built::Fragment { key, packet, at } => {
                if !self
                    .frags
                    .get(&key)
                    .is_some_and(|f| matches!(f.state, FragState::Building))
                {
                    return; // acked or failed while it was being built
                }
                match packet {
                    Ok(p) => self.built.push_back((key, p, at)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build a packet; will retry");
                        self.back_off(key);
                    }
                }
            }
            Built::DropCover { packet, at } => {
                self.cover_building = self.cover_building.saturating_sub(1);
                match packet {
                    Ok(p) => self.cover.push_back((p, at)),
                    Err(e) => tracing::warn!(error = %e, "cannot build drop cover"),
                }
            }
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

    /// Sends the next real packet (a reply, a pre-built fragment, or without build threads a
    /// fragment built here); `false` if there was none.
    async fn send_next_real(&mut self) -> bool {
        if let Some(packet) = self.replies.pop_front() {
            if self.send_packet(packet).await {
                bump(&self.shared.counters.replies_sent);
            }
            return true;
        }
        if self.pool.is_some() {
            while let Some((key, built, at)) = self.built.pop_front() {
                if !self
                    .frags
                    .get(&key)
                    .is_some_and(|f| matches!(f.state, FragState::Building))
                {
                    continue; // acked or failed meanwhile
                }
                if at.elapsed() > BUILT_MAX_AGE {
                    self.set_state(key, FragState::Queued);
                    self.ready.push_front(key);
                    continue;
                }
                self.send_fragment(key, built).await;
                return true;
            }
            return false;
        }
        if !self.window.allows(self.in_flight) {
            return false;
        }
        let Some((key, destination, bytes)) = self.next_queued() else {
            return false;
        };
        let dir = self.shared.directory.current();
        let built = self
            .shared
            .factory(&dir)
            .fragment(&mut self.rng, &destination, &bytes);
        match built {
            Ok(b) => {
                self.send_fragment(key, b).await;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a packet; will retry");
                self.back_off(key);
                false
            }
        }
    }

    /// Sends a built fragment and starts waiting for its ack.
    async fn send_fragment(&mut self, key: FragKey, built: BuiltPacket) {
        let attempts = self.frags.get(&key).map_or(0, |f| f.attempts);
        let deadline = self.deadline(&built, attempts);
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
            // The link broke: build and send again after reconnecting.
            self.set_state(key, FragState::Queued);
            self.ready.push_front(key);
            return;
        }
        if attempts > 0 {
            bump(&self.shared.counters.retransmissions);
        }
        if let Some(f) = self.frags.get_mut(&key) {
            f.attempts = f.attempts.saturating_add(1);
        }
        self.set_state(key, FragState::InFlight { deadline });
        bump(&self.shared.counters.real_sent);
    }

    fn back_off(&mut self, key: FragKey) {
        let max = self.shared.config.timeouts.max_backoff;
        if let Some(f) = self.frags.get(&key) {
            let wait = backoff(&mut self.rng, BACKOFF_BASE, f.attempts, max);
            self.set_state(
                key,
                FragState::Backoff {
                    until: Instant::now() + wait,
                },
            );
        }
    }

    async fn send_drop(&mut self) {
        while let Some((built, at)) = self.cover.pop_front() {
            if at.elapsed() > BUILT_MAX_AGE {
                continue;
            }
            if self.send_packet(built.bytes).await {
                bump(&self.shared.counters.drop_sent);
            }
            return;
        }
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
        // Once the previous pull's Delete is written, the next pull may follow it: the relay
        // handles a link's frames in order, so the deletion is done before this pull is read,
        // and its DeleteDone arrives (and is ignored) before this pull's slots. Waiting for the
        // DeleteDone would add a disk commit and a round trip to every pull cycle, and then
        // ticks would be skipped whenever the relay's disk is slow.
        if !matches!(
            self.pull,
            PullState::Idle | PullState::AwaitingDeleteDone { .. }
        ) {
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
                            let took = sent_at.elapsed();
                            let lag = took.saturating_sub(round_trip);
                            self.ack_lag = (self.ack_lag * 7 + lag) / 8;
                            self.ack_round_trip = Some(match self.ack_round_trip {
                                Some(rtt) => (rtt * 7 + took) / 8,
                                None => took,
                            });
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
        if !self.remove_frag(&key) {
            return; // a late ack for a fragment already acknowledged
        }
        self.window.on_ack();
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
        if !late.is_empty() {
            let round_trip = self
                .ack_round_trip
                .unwrap_or(self.shared.rates.pull_interval * 2);
            self.window.on_late(now, round_trip);
        }
        for key in late {
            self.back_off(key);
        }
        for key in requeue {
            if self.frags.contains_key(&key) {
                self.set_state(key, FragState::Queued);
                self.ready.push_back(key);
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
            let keys: Vec<FragKey> = self
                .frags
                .keys()
                .filter(|(m, _)| *m == id)
                .copied()
                .collect();
            for key in keys {
                self.remove_frag(&key);
            }
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

/// Adds `delta` to the counter `state` belongs to, if any.
fn count(in_flight: &mut usize, building: &mut usize, state: FragState, delta: isize) {
    let counter = match state {
        FragState::InFlight { .. } => in_flight,
        FragState::Building => building,
        FragState::Queued | FragState::Backoff { .. } => return,
    };
    *counter = counter.saturating_add_signed(delta);
}
