//! The client's sending logic as a sans-I/O state machine: what to send on the link and when.
//!
//! [`Sender`] owns the outbox's fragment states, the congestion window, retransmission with
//! backoff, SURB-ack matching, loop cover and the pull/delete conversation. It never reads a
//! clock, draws from the thread RNG, touches the store or writes to the link: the driver
//! (`driver.rs`) feeds it with `handle_*(.., now)` and drains it with
//! [`Sender::poll_transmit`] (frames to write, each followed by [`Sender::handle_sent`]),
//! [`Sender::poll_event`] (store writes and API notifications the driver carries out) and
//! [`Sender::poll_timeout`] (when to call [`Sender::handle_timeout`] next), in the manner of
//! quinn-proto's `Connection`. Randomness comes from the `StdRng` it is given; packets come
//! from a [`PacketSource`] (the real Sphinx factory, or a fake in tests).
//!
//! What leaves the client, one fixed-size frame at a time: packets at the times the
//! [`PoissonSchedule`] draws (on the payload stream the next real packet if one is ready,
//! else drop cover; loop and drop cover on their own streams), a `PullRequest` every pull
//! interval, and exactly one `Delete` after every pull, empty or not.
//!
//! The link's schedule is a function of the sender's timers and random draws only, never of
//! what it receives, stores or acks (issue 15: a link observer told a receiving client from an
//! idle one by the gap between the pull's answer and the Delete, which waited for the items to
//! be stored). The send streams draw from an RNG of their own, so building a real packet
//! instead of cover does not shift them; the Delete leaves a fixed [`delete_delay`] after the
//! pull's last slot and names what is deletable by then: acks, and items the driver has
//! persisted. An item still being processed is left in the mailbox; the next pull returns it
//! again (same handle) and it is deleted then, without being handed out twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use spore_protocol::bundle::{self, Bundle, BundleBody};
use spore_protocol::fragment;
use spore_protocol::link::{Frame, MailboxItem};
use spore_protocol::params::{BULK_PULL_SLOTS, FRAGMENT_DATA_SIZE, PACKET_SIZE, PULL_SLOTS};
use spore_protocol::pull::{ClientPhase, ClientPull};
use spore_protocol::{MessageId, RelayId, SporeAddress};

use crate::config::{Rates, Timeouts};
use crate::error::Result;
use crate::events::{Counters, bump};
use crate::packets::BuiltPacket;
use crate::quarantine::RouteQuarantine;
use crate::scheduler::{PoissonSchedule, Stream, backoff};
use crate::store::OutgoingMessage;

/// How often timers (ack deadlines, backoffs, lifetimes, lost loops) are checked.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(50);
/// First retransmission backoff; doubles per attempt (randomized), up to `max_backoff`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// A pull that has not completed after this long is abandoned and the link reopened.
const PULL_STALL: Duration = Duration::from_secs(30);
/// How long a catch-up pull's Delete (and the next bulk pull) waits for its items to be
/// stored; well below [`PULL_STALL`].
const CATCH_UP_STORE_WAIT: Duration = Duration::from_secs(5);
/// Real fragments built ahead of their send (being built or ready): enough to keep the build
/// threads busy between two sends at any rate, few enough that a packet is fresh when sent.
const BUILD_AHEAD: usize = 32;
/// Drop cover packets kept ready, so a payload tick with nothing real to send only pops one.
const COVER_STOCK: usize = 4;
/// Jobs the build threads may hold at once.
pub(crate) const BUILD_CAPACITY: usize = BUILD_AHEAD + COVER_STOCK;
/// A packet built longer ago than this is rebuilt (fragments) or discarded (cover) rather
/// than sent: it may use keys of an epoch that is ending.
const BUILT_MAX_AGE: Duration = Duration::from_secs(60);
/// The congestion window never shrinks below this many fragments in flight.
const MIN_WINDOW: f64 = 4.0;
/// ... and starts here (then doubles per round trip until the first late ack).
const INITIAL_WINDOW: f64 = 16.0;
/// Bounds the sender's memory of outstanding SURB-acks.
const MAX_WINDOW: f64 = 8192.0;
/// A timer observed this much after its deadline was missed: the next one is counted from
/// now (tokio's `MissedTickBehavior::Delay`, which the pull and maintenance cadences had).
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// A fragment of a queued message: `(message, index)`: what the durable outbox acks.
pub(crate) type FragKey = (MessageId, u16);

/// One copy of a fragment: `(message, index, copy)`. Copy `c` is stored at the destination's
/// `c`-th mailbox relay: an address may name two, so that losing one relay (or its disk)
/// loses nothing. Each copy is its own packet with its own SURB-ack and retransmissions.
pub(crate) type CopyKey = (MessageId, u16, u8);

/// Copies per fragment at most: one per mailbox relay of the destination's address.
const MAX_COPIES: u8 = 2;

fn frag_of(key: CopyKey) -> FragKey {
    (key.0, key.1)
}

/// Where packets come from. The real one builds Sphinx packets against the current
/// directory; tests use a fake whose acks they can forge.
pub(crate) trait PacketSource {
    /// What recognises a packet's SURB-ack.
    type Recovery;
    /// One encoded fragment for `destination`'s `copy`-th mailbox relay, with a SURB-ack.
    fn fragment(
        &mut self,
        rng: &mut StdRng,
        destination: &SporeAddress,
        copy: u8,
        fragment: &[u8],
    ) -> Result<BuiltPacket<Self::Recovery>>;
    /// One drop cover packet.
    fn drop_cover(&mut self, rng: &mut StdRng) -> Result<BuiltPacket<Self::Recovery>>;
    /// Whether a pulled payload is the ack `recovery` expects.
    fn is_ack(&self, recovery: &Self::Recovery, payload: &[u8]) -> bool;
    /// From now on, build routes avoiding these mixes (quarantined: see `quarantine.rs`).
    fn set_excluded(&mut self, excluded: HashSet<RelayId>);
    /// Capability ops for the next pull request (`capabilities.rs`); none by default.
    fn capability_ops(&mut self) -> Vec<spore_protocol::CapabilityOp> {
        Vec::new()
    }
}

/// A fragment for the build threads: its key, destination and encoded bytes.
pub(crate) struct FragmentJob {
    /// Which copy: `key.2` says which of the destination's mailbox relays it goes to.
    pub key: CopyKey,
    pub destination: Arc<SporeAddress>,
    pub bytes: Arc<[u8]>,
}

/// Work for the build threads.
pub(crate) enum Job {
    Fragment(FragmentJob),
    DropCover,
}

/// What a build thread hands back, with when it was built.
pub(crate) enum Built<R> {
    Fragment {
        key: CopyKey,
        packet: Result<BuiltPacket<R>>,
        at: Instant,
    },
    DropCover {
        packet: Result<BuiltPacket<R>>,
        at: Instant,
    },
}

/// What the driver must carry out for the sender.
#[derive(Debug)]
pub(crate) enum SenderEvent {
    /// A fragment is settled: drop it from the durable outbox. With two mailbox relays that
    /// is when both copies are acknowledged, or one is and the other relay has not
    /// acknowledged its copy within [`Timeouts::single_copy_grace`].
    Acked(FragKey),
    /// Every fragment of a message is acknowledged by at least one mailbox relay.
    Delivered(MessageId),
    /// A message outlived its lifetime: drop it from the outbox and report it.
    Failed(MessageId),
    /// A pull returned these items, which are not our SURB-acks: replies and forward
    /// messages. Once they are handled (persisted), call [`Sender::handle_processed`] with
    /// `pull` and the handles that may be deleted.
    Pulled { pull: u64, items: Vec<MailboxItem> },
    /// The link must be closed and reopened (the relay broke the conversation, or a pull
    /// stalled). The sender already considers it down.
    CloseLink(&'static str),
}

/// What the sender needs to know, fixed for its life.
#[derive(Debug, Clone)]
pub(crate) struct SenderConfig {
    pub rates: Rates,
    pub timeouts: Timeouts,
    /// The `origin` of our loop bundles.
    pub server_name: String,
    /// Our own address: loops go there.
    pub address: SporeAddress,
    /// `Some(jobs)` if build threads run: fragments and cover are then built ahead via
    /// [`Sender::poll_build`]; `None` builds at the payload tick.
    pub build_capacity: Option<usize>,
    /// Catch-up pulls: after a pull comes back full, pull again at once with a bulk pull
    /// instead of waiting for the next pull tick (see [`Sender::handle_timeout`]).
    pub catch_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// When the message fails if it is not yet delivered.
    expires: Instant,
    /// An answer whose caller gave up at `expires`: dropped then without a failure report.
    answer: bool,
    /// Fragments no copy of which is acknowledged yet: at 0 the message is delivered.
    remaining: usize,
    /// Fragments still in the durable outbox: at 0 the message is forgotten.
    unsettled: usize,
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
enum AckFor<R> {
    Fragment {
        key: CopyKey,
        recovery: R,
        forget_at: Instant,
        sent_at: Instant,
        round_trip: Duration,
    },
    /// The ack of a loop packet: recognised and discarded.
    Loop { forget_at: Instant },
}

impl<R> AckFor<R> {
    fn forget_at(&self) -> Instant {
        match self {
            AckFor::Fragment { forget_at, .. } | AckFor::Loop { forget_at } => *forget_at,
        }
    }
}

/// What a frame handed to the driver was, so that [`Sender::handle_sent`] can finish it.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Fragment { key: CopyKey, deadline: Instant },
    Reply,
    Drop,
    Loop { nonce: [u8; 16] },
    Pull,
    Delete,
}

/// Bounds [`Sender`]'s memory of persisted items whose Delete is still owed: past it, the
/// set is forgotten and such items, when pulled again, are handed out again (the receiver's
/// store is exactly-once).
const MAX_DELETABLE: usize = 4096;

/// How long after a pull's last slot its Delete leaves: long enough for the driver to
/// persist a pull's items on a normal day, and a fixed time so that the gap does not tell
/// whether there were any. A quarter of the pull interval, at least 2 ms.
pub(crate) fn delete_delay(pull_interval: Duration) -> Duration {
    (pull_interval / 4).max(Duration::from_millis(2))
}

/// The current pull, answered and waiting for its Delete slot.
struct OpenPull {
    /// When its Delete leaves.
    delete_at: Instant,
    /// Every handle it returned.
    returned: Vec<u64>,
    /// What its Delete names so far (acks, items persisted in time).
    deletable: Vec<u64>,
    /// The id its items were handed to the driver under, if any were.
    handed_as: Option<u64>,
}

/// The sending half of a client: see the module documentation.
pub(crate) struct Sender<S: PacketSource> {
    config: SenderConfig,
    source: S,
    rng: StdRng,
    /// The send streams' own draws: what is sent never shifts when it is sent.
    schedule_rng: StdRng,
    counters: Arc<Counters>,
    schedule: PoissonSchedule,
    next_pull: Instant,
    next_maintenance: Instant,
    messages: HashMap<MessageId, OutMessage>,
    /// Fragment copies not yet acknowledged.
    frags: HashMap<CopyKey, OutFrag>,
    /// Fragments one copy of which is acknowledged while another is still being sent, and
    /// when the sender stops waiting for the other (see [`SenderEvent::Acked`]).
    trailing: HashMap<FragKey, Instant>,
    /// Fragment copies waiting to be built (or, without build threads, sent), in order.
    ready: VecDeque<CopyKey>,
    /// Reply packets (built by `respond` on somebody's SURB), sent before anything else.
    replies: VecDeque<Vec<u8>>,
    /// Build jobs handed out and not yet returned.
    build_pending: usize,
    /// Why packets cannot be built, while they cannot: logged once when it starts (or the
    /// reason changes) and once when it ends, not per fragment per retry (a mailbox relay
    /// missing from the directory made 11,494 identical warnings in three minutes).
    build_failure: Option<String>,
    /// Fragments built by the pool, oldest first, with when they were built.
    built: VecDeque<(CopyKey, BuiltPacket<S::Recovery>, Instant)>,
    /// Drop cover built by the pool.
    cover: VecDeque<(BuiltPacket<S::Recovery>, Instant)>,
    cover_building: usize,
    /// Fragments in `FragState::InFlight` and `FragState::Building`.
    in_flight: usize,
    building: usize,
    window: CongestionWindow,
    /// Smoothed time from sending a fragment to its ack being pulled.
    ack_round_trip: Option<Duration>,
    /// Smoothed time acks take beyond their packets' own delays (pull backlog, queues): the
    /// retransmission timeout grows with it, so a slow mailbox does not cause a storm.
    ack_lag: Duration,
    acks: HashMap<[u8; 16], AckFor<S::Recovery>>,
    /// Loop nonces in flight: when each counts as lost, and the mixes on its route.
    loops: HashMap<[u8; 16], (Instant, Vec<RelayId>)>,
    /// Loop outcomes per mix, and the mixes kept out of route choice.
    quarantine: RouteQuarantine,
    link_up: bool,
    pull: ClientPull,
    /// When the pull conversation last moved (for the stall check).
    pull_since: Instant,
    /// The pull whose Delete is owed.
    open_pull: Option<OpenPull>,
    /// Slots the pull in progress asked for.
    pull_slots: usize,
    /// The last pull came back full: the next one is a bulk pull, right after its Delete.
    catching_up: bool,
    /// Items handed to the driver per pull id, until it says they are processed.
    handed: HashMap<u64, Vec<u64>>,
    /// Items persisted after their pull's Delete left: deleted when pulled again.
    deletable: std::collections::HashSet<u64>,
    pulls_started: u64,
    transmits: VecDeque<(Frame, Sent)>,
    /// The last frame handed out, until the driver says whether it was written.
    unconfirmed: Option<Sent>,
    events: VecDeque<SenderEvent>,
}

impl<S: PacketSource> Sender<S> {
    pub fn new(
        config: SenderConfig,
        source: S,
        mut rng: StdRng,
        counters: Arc<Counters>,
        now: Instant,
    ) -> Self {
        let mut schedule_rng = StdRng::from_rng(&mut rng);
        let schedule = PoissonSchedule::new(&config.rates, now, &mut schedule_rng);
        Self {
            config,
            source,
            rng,
            schedule_rng,
            counters,
            schedule,
            next_pull: now,
            next_maintenance: now,
            messages: HashMap::new(),
            frags: HashMap::new(),
            trailing: HashMap::new(),
            ready: VecDeque::new(),
            replies: VecDeque::new(),
            build_pending: 0,
            build_failure: None,
            built: VecDeque::new(),
            cover: VecDeque::new(),
            cover_building: 0,
            in_flight: 0,
            building: 0,
            window: CongestionWindow::new(),
            ack_round_trip: None,
            ack_lag: Duration::ZERO,
            acks: HashMap::new(),
            loops: HashMap::new(),
            quarantine: RouteQuarantine::default(),
            link_up: false,
            pull: ClientPull::new(),
            pull_since: now,
            open_pull: None,
            pull_slots: PULL_SLOTS,
            catching_up: false,
            handed: HashMap::new(),
            deletable: std::collections::HashSet::new(),
            pulls_started: 0,
            transmits: VecDeque::new(),
            unconfirmed: None,
            events: VecDeque::new(),
        }
    }

    // ----- inputs -----

    /// A message is durably in the outbox (queued now, or found there at start): send the
    /// fragments listed (the unacknowledged ones). `unix_ms` is the wall clock now, against
    /// which the message's creation time counts toward its lifetime.
    pub fn handle_enqueue(
        &mut self,
        message: OutgoingMessage,
        fragments: Vec<(u16, Vec<u8>)>,
        now: Instant,
        unix_ms: u64,
    ) {
        // A message queued while the driver was reading the outbox at start arrives twice
        // (from the outbox and as a command). Re-adding it would reset fragments already being
        // built or in flight, and lose them from the congestion window's count.
        if fragments.is_empty() || self.messages.contains_key(&message.id) {
            return;
        }
        let age = Duration::from_millis(unix_ms.saturating_sub(message.created_ms));
        let mut expires = now + self.config.timeouts.message_lifetime.saturating_sub(age);
        if let Some(at) = message.expires_ms {
            expires = expires.min(now + Duration::from_millis(at.saturating_sub(unix_ms)));
        }
        // One copy per mailbox relay the address names (an address naming none still gets
        // one, whose build fails and says why).
        let copies = u8::try_from(message.destination.mailbox_relays.len())
            .unwrap_or(MAX_COPIES)
            .clamp(1, MAX_COPIES);
        self.messages.insert(
            message.id,
            OutMessage {
                destination: Arc::new(message.destination),
                expires,
                answer: message.expires_ms.is_some(),
                remaining: fragments.len(),
                unsettled: fragments.len(),
            },
        );
        for (index, bytes) in fragments {
            let bytes: Arc<[u8]> = bytes.into();
            for copy in 0..copies {
                let key = (message.id, index, copy);
                self.frags.insert(
                    key,
                    OutFrag {
                        bytes: bytes.clone(),
                        attempts: 0,
                        state: FragState::Queued,
                    },
                );
                self.ready.push_back(key);
            }
        }
    }

    /// A ready-built reply packet (on somebody's reply SURB): sent before anything else.
    pub fn handle_reply(&mut self, packet: Vec<u8>) {
        self.replies.push_back(packet);
    }

    /// The link to our mailbox relay is (re)established.
    pub fn handle_link_up(&mut self, now: Instant) {
        self.link_up = true;
        self.pull.reset();
        self.open_pull = None;
        self.catching_up = false;
        self.pull_since = now;
    }

    /// The link is gone: frames not yet written are dropped (fragments go back to the queue),
    /// the pull in progress is void.
    pub fn handle_link_down(&mut self) {
        self.link_up = false;
        self.pull.reset();
        // Items being processed stay in `handed`: once persisted they are deleted when the
        // next link's pulls return them.
        self.open_pull = None;
        if let Some(sent) = self.unconfirmed.take() {
            self.finish(sent, false);
        }
        while let Some((_, sent)) = self.transmits.pop_back() {
            self.finish(sent, false);
        }
    }

    /// Whether the last frame from [`Sender::poll_transmit`] was written. `false` means the
    /// link broke: the sender considers it down.
    pub fn handle_sent(&mut self, ok: bool) {
        if let Some(sent) = self.unconfirmed.take() {
            self.finish(sent, ok);
        }
        if !ok {
            self.handle_link_down();
        }
    }

    /// A frame from the relay.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        match frame {
            Frame::PullSlot(_) | Frame::DeleteDone { .. } => {
                let is_slot = matches!(frame, Frame::PullSlot(_));
                match self.pull.handle_frame(frame) {
                    Ok(Some(items)) => self.on_pulled(items, now),
                    Ok(None) => {}
                    // A stray DeleteDone harms nothing; it never closed the link.
                    Err(e) if !is_slot => tracing::debug!(error = %e, "ignoring a delete done"),
                    Err(e) => {
                        tracing::debug!(error = %e, "bad pull slot; reconnecting");
                        self.close_link(e.reason());
                    }
                }
            }
            Frame::Error { code } => {
                tracing::warn!(?code, "the mailbox relay closed the link");
                self.close_link("the relay closed the link");
            }
            Frame::Padding => {}
            Frame::Packet(_)
            | Frame::PullRequest
            | Frame::BulkPullRequest
            | Frame::CapabilityPull { .. }
            | Frame::Delete { .. } => {
                tracing::debug!("unexpected frame from the relay; reconnecting");
                self.close_link("unexpected frame");
            }
        }
    }

    /// The driver handled a pull's non-ack items (see [`SenderEvent::Pulled`]); `handles`
    /// may be deleted at the relay: by this pull's Delete if it has not left yet, else when a
    /// later pull returns them. Sends nothing itself: the Delete leaves at its slot.
    pub fn handle_processed(&mut self, pull: u64, handles: Vec<u64>, now: Instant) {
        let Some(handed) = self.handed.remove(&pull) else {
            return;
        };
        for handle in handles {
            if !handed.contains(&handle) {
                continue;
            }
            match self.open_pull.as_mut() {
                Some(open) if open.returned.contains(&handle) => {
                    open.deletable.push(handle);
                    if self.catching_up && open.handed_as == Some(pull) {
                        // A catch-up pull's Delete leaves as soon as its items are stored:
                        // the next bulk pull follows it at once.
                        open.delete_at = open.delete_at.min(now);
                    }
                }
                _ => {
                    if self.deletable.len() >= MAX_DELETABLE {
                        self.deletable.clear();
                    }
                    self.deletable.insert(handle);
                }
            }
        }
    }

    /// A loop message came back: evidence for the mixes on its route.
    pub fn handle_loop_returned(&mut self, nonce: &[u8; 16], now: Instant) {
        if let Some((_, mixes)) = self.loops.remove(nonce) {
            bump(&self.counters.loops_returned);
            self.record_loop(&mixes, false, now);
        }
    }

    /// A fragment could not be built: warn when this starts or its reason changes, then
    /// only at debug until a build succeeds again.
    fn build_failed(&mut self, e: &dyn std::fmt::Display) {
        let reason = e.to_string();
        if self.build_failure.as_deref() == Some(reason.as_str()) {
            tracing::debug!(error = %reason, "cannot build a packet; will retry");
        } else {
            tracing::warn!(error = %reason, "cannot build packets; retrying (logged again when it changes)");
            self.build_failure = Some(reason);
        }
    }

    /// A fragment was built: if builds were failing, say that they work again.
    fn build_succeeded(&mut self) {
        if self.build_failure.take().is_some() {
            tracing::info!("packets can be built again");
        }
    }

    /// A build thread finished a job from [`Sender::poll_build`].
    pub fn handle_built(&mut self, built: Built<S::Recovery>) {
        self.build_pending = self.build_pending.saturating_sub(1);
        match built {
            Built::Fragment { key, packet, at } => {
                if !self.is_building(&key) {
                    return; // acked or failed while it was being built
                }
                match packet {
                    Ok(p) => {
                        self.build_succeeded();
                        self.built.push_back((key, p, at));
                    }
                    Err(e) => {
                        self.build_failed(&e);
                        // Without a clock here, the backoff counts from when it was built.
                        self.back_off(key, at);
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

    /// A job from [`Sender::poll_build`] could not be handed to the build threads.
    pub fn handle_build_refused(&mut self, job: Job) {
        self.build_pending = self.build_pending.saturating_sub(1);
        match job {
            Job::DropCover => self.cover_building = self.cover_building.saturating_sub(1),
            Job::Fragment(f) => {
                self.set_state(f.key, FragState::Queued);
                self.ready.push_front(f.key);
            }
        }
    }

    /// Timers: the send streams, the pull cadence and maintenance (ack deadlines, backoffs,
    /// lifetimes, lost loops). Call at (or after) [`Sender::poll_timeout`].
    ///
    /// At most one send is due per call, even when the schedule is further behind: a packet
    /// built here (no pre-built one at hand) costs real time, and a sender that caught up on
    /// every overdue send in one call would build hundreds of cover packets while nothing
    /// else runs: no pull, no pre-built fragment taken in, the link's input unread, and the
    /// next call further behind still. [`Sender::poll_timeout`] is then already past, so the
    /// driver calls again at once, after it has served whatever else is ready.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((due, stream)) = self.schedule.next_due()
            && due <= now
        {
            self.schedule.fire(stream, now, &mut self.schedule_rng);
            self.on_send_tick(stream, now);
        }
        if let Some(open) = self.open_pull.take_if(|o| o.delete_at <= now) {
            self.send_delete(open.deletable, now);
            if self.catching_up {
                self.on_pull_tick(now);
            }
        }
        if now >= self.next_pull {
            self.next_pull = next_tick(self.next_pull, now, self.config.rates.pull_interval);
            self.on_pull_tick(now);
        }
        if now >= self.next_maintenance {
            self.next_maintenance = next_tick(self.next_maintenance, now, MAINTENANCE_EVERY);
            self.maintain(now);
        }
    }

    // ----- outputs -----

    /// The next frame to write on the link. After writing it, call [`Sender::handle_sent`].
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(sent) = self.unconfirmed.take() {
            self.finish(sent, true); // the driver did not say: it was written
        }
        let (frame, sent) = self.transmits.pop_front()?;
        self.unconfirmed = Some(sent);
        Some(frame)
    }

    /// The next thing the driver must do for the sender.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// When [`Sender::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_pull.min(self.next_maintenance);
        if let Some(open) = &self.open_pull {
            at = at.min(open.delete_at);
        }
        if let Some((due, _)) = self.schedule.next_due() {
            at = at.min(due);
        }
        at
    }

    /// The next job for the build threads, while they have room: drop cover until the stock
    /// is full, then queued fragments while the congestion window allows.
    pub fn poll_build(&mut self) -> Option<Job> {
        let capacity = self.config.build_capacity?;
        if self.build_pending >= capacity {
            return None;
        }
        if self.cover.len() + self.cover_building < COVER_STOCK {
            self.cover_building += 1;
            self.build_pending += 1;
            return Some(Job::DropCover);
        }
        if self.building >= BUILD_AHEAD || !self.window.allows(self.in_flight + self.building) {
            return None;
        }
        let (key, destination, bytes) = self.next_queued()?;
        self.set_state(key, FragState::Building);
        self.build_pending += 1;
        Some(Job::Fragment(FragmentJob {
            key,
            destination,
            bytes,
        }))
    }

    // ----- state, for tests and logs -----

    /// The congestion window (fragments that may be in flight).
    #[cfg(test)]
    pub fn window(&self) -> f64 {
        self.window.cwnd
    }

    /// Fragments sent and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Fragments of queued messages not yet acknowledged.
    #[cfg(test)]
    pub fn unacknowledged(&self) -> usize {
        self.frags.len()
    }

    // ----- internals -----

    fn queue(&mut self, frame: Frame, sent: Sent) {
        self.transmits.push_back((frame, sent));
    }

    /// Completes a frame's effects once the driver wrote it (`ok`), or undoes them.
    fn finish(&mut self, sent: Sent, ok: bool) {
        match (sent, ok) {
            (Sent::Fragment { key, deadline }, true) => {
                let Some(f) = self.frags.get_mut(&key) else {
                    return;
                };
                if f.attempts > 0 {
                    bump(&self.counters.retransmissions);
                }
                f.attempts = f.attempts.saturating_add(1);
                self.set_state(key, FragState::InFlight { deadline });
                bump(&self.counters.real_sent);
            }
            (Sent::Fragment { key, .. }, false) => {
                // The link broke: build and send again after reconnecting.
                if self.frags.contains_key(&key) {
                    self.set_state(key, FragState::Queued);
                    self.ready.push_front(key);
                }
            }
            (Sent::Reply, true) => bump(&self.counters.replies_sent),
            (Sent::Drop, true) => bump(&self.counters.drop_sent),
            (Sent::Loop { .. }, true) => bump(&self.counters.loops_sent),
            (Sent::Loop { nonce }, false) => {
                self.loops.remove(&nonce);
            }
            (Sent::Pull, true) => bump(&self.counters.pulls),
            (Sent::Reply | Sent::Drop | Sent::Pull | Sent::Delete, false)
            | (Sent::Delete, true) => {}
        }
    }

    fn close_link(&mut self, why: &'static str) {
        self.handle_link_down();
        self.events.push_back(SenderEvent::CloseLink(why));
    }

    fn is_building(&self, key: &CopyKey) -> bool {
        self.frags
            .get(key)
            .is_some_and(|f| matches!(f.state, FragState::Building))
    }

    /// Moves fragment `key` to `state`, keeping the in-flight and building counts.
    fn set_state(&mut self, key: CopyKey, state: FragState) {
        if let Some(f) = self.frags.get_mut(&key) {
            let old = std::mem::replace(&mut f.state, state);
            count(&mut self.in_flight, &mut self.building, old, -1);
            count(&mut self.in_flight, &mut self.building, state, 1);
        }
    }

    fn remove_frag(&mut self, key: &CopyKey) -> bool {
        match self.frags.remove(key) {
            Some(f) => {
                count(&mut self.in_flight, &mut self.building, f.state, -1);
                true
            }
            None => false,
        }
    }

    /// The next fragment of the ready queue that still waits to be sent (entries acked,
    /// failed or already being built meanwhile are skipped), with its destination and bytes.
    fn next_queued(&mut self) -> Option<(CopyKey, Arc<SporeAddress>, Arc<[u8]>)> {
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

    /// The expected time for an ack or a loop: its own delays, two pull intervals, and a
    /// margin that grows with the observed ack lag and doubles with every retransmission.
    fn deadline(&self, round_trip: Duration, attempts: u32, now: Instant) -> Instant {
        let slack = self.config.timeouts.ack_margin + self.ack_lag * 2;
        let doublings = 1u32 << attempts.min(4);
        now + round_trip + self.config.rates.pull_interval * 2 + slack * doublings
    }

    fn on_send_tick(&mut self, stream: Stream, now: Instant) {
        if !self.link_up {
            return;
        }
        match stream {
            Stream::Payload => {
                if !self.send_next_real(now) {
                    self.send_drop(now);
                }
            }
            Stream::Loop => self.send_loop(now),
            Stream::Drop => self.send_drop(now),
        }
    }

    /// Sends the next real packet (a reply, a pre-built fragment, or without build threads a
    /// fragment built here); `false` if there was none.
    fn send_next_real(&mut self, now: Instant) -> bool {
        if let Some(packet) = self.replies.pop_front() {
            if let Some(frame) = packet_frame(packet) {
                self.queue(frame, Sent::Reply);
            }
            return true;
        }
        if self.config.build_capacity.is_some() {
            while let Some((key, built, at)) = self.built.pop_front() {
                if !self.is_building(&key) {
                    continue; // acked or failed meanwhile
                }
                if now.saturating_duration_since(at) > BUILT_MAX_AGE {
                    self.set_state(key, FragState::Queued);
                    self.ready.push_front(key);
                    continue;
                }
                self.send_fragment(key, built, now);
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
        match self
            .source
            .fragment(&mut self.rng, &destination, key.2, &bytes)
        {
            Ok(b) => {
                self.build_succeeded();
                self.send_fragment(key, b, now);
                true
            }
            Err(e) => {
                self.build_failed(&e);
                self.back_off(key, now);
                false
            }
        }
    }

    /// Queues a built fragment and starts waiting for its ack.
    fn send_fragment(&mut self, key: CopyKey, built: BuiltPacket<S::Recovery>, now: Instant) {
        let attempts = self.frags.get(&key).map_or(0, |f| f.attempts);
        let deadline = self.deadline(built.round_trip, attempts, now);
        if let Some((surb_id, recovery)) = built.ack {
            self.acks.insert(
                surb_id,
                AckFor::Fragment {
                    key,
                    recovery,
                    forget_at: deadline
                        + self.config.timeouts.max_backoff
                        + self.config.timeouts.ack_margin,
                    sent_at: now,
                    round_trip: built.round_trip,
                },
            );
        }
        match packet_frame(built.bytes) {
            Some(frame) => self.queue(frame, Sent::Fragment { key, deadline }),
            None => self.finish(Sent::Fragment { key, deadline }, false),
        }
    }

    fn back_off(&mut self, key: CopyKey, now: Instant) {
        let max = self.config.timeouts.max_backoff;
        if let Some(f) = self.frags.get(&key) {
            let wait = backoff(&mut self.rng, BACKOFF_BASE, f.attempts, max);
            self.set_state(key, FragState::Backoff { until: now + wait });
        }
    }

    fn send_drop(&mut self, now: Instant) {
        while let Some((built, at)) = self.cover.pop_front() {
            if now.saturating_duration_since(at) > BUILT_MAX_AGE {
                continue;
            }
            if let Some(frame) = packet_frame(built.bytes) {
                self.queue(frame, Sent::Drop);
            }
            return;
        }
        match self.source.drop_cover(&mut self.rng) {
            Ok(b) => {
                if let Some(frame) = packet_frame(b.bytes) {
                    self.queue(frame, Sent::Drop);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot build drop cover"),
        }
    }

    fn send_loop(&mut self, now: Instant) {
        let nonce: [u8; 16] = self.rng.random();
        let bundle = Bundle {
            origin: self.config.server_name.clone(),
            sender: None,
            server_keys: None,
            body: BundleBody::Loop { nonce },
        };
        let id: [u8; 16] = self.rng.random();
        let fragment = bundle::pack(&bundle, FRAGMENT_DATA_SIZE)
            .and_then(|padded| fragment::split(id, &padded, FRAGMENT_DATA_SIZE));
        let fragment = match fragment.as_deref() {
            Ok([f]) => f.encode(),
            _ => {
                tracing::error!("a loop bundle does not fit one fragment");
                return;
            }
        };
        let address = self.config.address.clone();
        let built = match self.source.fragment(&mut self.rng, &address, 0, &fragment) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build loop cover");
                return;
            }
        };
        let deadline = self.deadline(built.round_trip, 0, now);
        if let Some((surb_id, _)) = built.ack {
            self.acks.insert(
                surb_id,
                AckFor::Loop {
                    forget_at: deadline + self.config.timeouts.ack_margin,
                },
            );
        }
        if let Some(frame) = packet_frame(built.bytes) {
            self.loops.insert(nonce, (deadline, built.mixes));
            self.queue(frame, Sent::Loop { nonce });
        }
    }

    fn on_pull_tick(&mut self, now: Instant) {
        if !self.link_up {
            return;
        }
        let busy = self.pull.phase() != ClientPhase::Idle || self.pull.deletes_unanswered() > 0;
        if busy && now.saturating_duration_since(self.pull_since) > PULL_STALL {
            self.close_link("pull stalled");
            return;
        }
        // Once the previous pull's Delete is written, the next pull may follow it: the relay
        // handles a link's frames in order, so the deletion is done before this pull is read,
        // and its DeleteDone arrives (and is ignored) before this pull's slots. Waiting for the
        // DeleteDone would add a disk commit and a round trip to every pull cycle, and then
        // ticks would be skipped whenever the relay's disk is slow.
        let (started, slots) = if self.catching_up {
            (self.pull.start_bulk(), BULK_PULL_SLOTS)
        } else if self.pull.phase() != ClientPhase::Idle {
            return;
        } else {
            // Capability registrations ride in the pull requests of the fixed cadence.
            (
                self.pull.start_with(self.source.capability_ops()),
                PULL_SLOTS,
            )
        };
        if let Ok(frame) = started {
            self.pull_since = now;
            self.pull_slots = slots;
            self.queue(frame, Sent::Pull);
        }
    }

    /// Sorts one pull: acks are handled here, everything else goes to the driver (replies,
    /// and forward items the receiver persists before we delete anything).
    fn on_pulled(&mut self, items: Vec<MailboxItem>, now: Instant) {
        self.counters
            .items_pulled
            .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let returned: Vec<u64> = items.iter().map(|i| i.handle).collect();
        // Full: more may be waiting. Only then does the link leave its fixed cadence (the
        // price is documented in docs/privacy.md, "Catch-up").
        self.catching_up = self.config.catch_up && items.len() >= self.pull_slots;
        if self.catching_up {
            bump(&self.counters.catch_up_pulls);
        }
        let mut deletable = Vec::with_capacity(items.len());
        let mut rest = Vec::new();
        for item in items {
            if self.deletable.remove(&item.handle) {
                deletable.push(item.handle); // persisted after an earlier pull's Delete left
                continue;
            }
            if self.handed.values().any(|h| h.contains(&item.handle)) {
                continue; // still being processed: deleted by a later pull
            }
            let Some(ack) = self.acks.remove(&item.surb_id) else {
                rest.push(item);
                continue;
            };
            if let AckFor::Fragment {
                key,
                recovery,
                sent_at,
                round_trip,
                ..
            } = ack
                && self.source.is_ack(&recovery, &item.payload[..])
            {
                let took = now.saturating_duration_since(sent_at);
                let lag = took.saturating_sub(round_trip);
                self.ack_lag = (self.ack_lag * 7 + lag) / 8;
                self.ack_round_trip = Some(match self.ack_round_trip {
                    Some(rtt) => (rtt * 7 + took) / 8,
                    None => took,
                });
                self.on_ack(key, now);
            }
            deletable.push(item.handle);
        }
        self.pull_since = now;
        let handed_as = (!rest.is_empty()).then(|| {
            self.pulls_started += 1;
            self.pulls_started
        });
        // A catch-up pull with nothing to store may end at once. One with items waits for
        // them to be stored (handle_processed), however long that takes under load, up to
        // CATCH_UP_STORE_WAIT: a bulk pull that left sooner would return the same items,
        // still being processed, and carry nothing new. An ordinary pull's Delete keeps its
        // slot in the fixed cadence.
        let delete_at = match (self.catching_up, handed_as) {
            (true, None) => now,
            (true, Some(_)) => now + CATCH_UP_STORE_WAIT,
            _ => now + delete_delay(self.config.rates.pull_interval),
        };
        self.open_pull = Some(OpenPull {
            delete_at,
            returned,
            deletable,
            handed_as,
        });
        let Some(id) = handed_as else {
            return;
        };
        self.handed
            .insert(id, rest.iter().map(|i| i.handle).collect());
        self.events.push_back(SenderEvent::Pulled {
            pull: id,
            items: rest,
        });
    }

    fn send_delete(&mut self, handles: Vec<u64>, now: Instant) {
        // Always exactly one Delete per pull, empty or not: the link looks the same either way.
        match self.pull.delete(handles) {
            Ok(frame) => {
                self.pull_since = now;
                self.queue(frame, Sent::Delete);
            }
            Err(e) => tracing::error!(error = %e, "cannot end a pull"),
        }
    }

    fn on_ack(&mut self, key: CopyKey, now: Instant) {
        if !self.remove_frag(&key) {
            return; // a late ack for a copy already acknowledged (or given up on)
        }
        self.window.on_ack();
        bump(&self.counters.acks);
        let frag = frag_of(key);
        // The first copy acknowledged makes the fragment delivered (stored at a mailbox
        // relay); it stays in the outbox until it is settled.
        let first = !self.trailing.contains_key(&frag);
        let delivered = first
            && self.messages.get_mut(&key.0).is_some_and(|m| {
                m.remaining = m.remaining.saturating_sub(1);
                m.remaining == 0
            });
        if self.copies_left(frag) {
            if first {
                let grace = self.config.timeouts.single_copy_grace;
                self.trailing.insert(frag, now + grace);
            }
        } else {
            self.settle(frag);
        }
        if delivered {
            bump(&self.counters.messages_delivered);
            self.events.push_back(SenderEvent::Delivered(key.0));
        }
    }

    /// Whether a copy of `frag` is still being sent.
    fn copies_left(&self, frag: FragKey) -> bool {
        (0..MAX_COPIES).any(|c| self.frags.contains_key(&(frag.0, frag.1, c)))
    }

    /// Drops `frag` (every copy still being sent) from the sender and the durable outbox.
    fn settle(&mut self, frag: FragKey) {
        self.trailing.remove(&frag);
        for c in 0..MAX_COPIES {
            self.remove_frag(&(frag.0, frag.1, c));
        }
        self.events.push_back(SenderEvent::Acked(frag));
        let done = self.messages.get_mut(&frag.0).is_some_and(|m| {
            m.unsettled = m.unsettled.saturating_sub(1);
            m.unsettled == 0
        });
        if done {
            self.messages.remove(&frag.0);
        }
    }

    fn maintain(&mut self, now: Instant) {
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
        // Deterministic order (the map's is random): oldest message first, then by index.
        late.sort_unstable();
        requeue.sort_unstable();
        // A copy whose sibling is acknowledged says that its mailbox relay is slow or gone,
        // not that the network is congested: it does not shrink the window (with one relay
        // dead, half of all copies are late and would pin the window at its minimum).
        if late
            .iter()
            .any(|k| !self.trailing.contains_key(&frag_of(*k)))
        {
            let round_trip = self
                .ack_round_trip
                .unwrap_or(self.config.rates.pull_interval * 2);
            self.window.on_late(now, round_trip);
        }
        for key in late {
            self.back_off(key, now);
        }
        for key in requeue {
            if self.frags.contains_key(&key) {
                self.set_state(key, FragState::Queued);
                self.ready.push_back(key);
            }
        }
        // Fragments acknowledged by one mailbox relay whose other relay did not acknowledge
        // its copy in time: one stored copy is what the sender settles for.
        let mut given_up: Vec<FragKey> = self
            .trailing
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| *k)
            .collect();
        given_up.sort_unstable();
        if !given_up.is_empty() {
            tracing::info!(
                fragments = given_up.len(),
                "a mailbox relay did not store its copies in time; one stored copy must do"
            );
        }
        for frag in given_up {
            self.settle(frag);
        }
        // Message lifetime.
        let mut expired: Vec<(MessageId, bool, bool)> = self
            .messages
            .iter()
            .filter(|(_, m)| now > m.expires)
            .map(|(id, m)| (*id, m.remaining == 0, m.answer))
            .collect();
        expired.sort_unstable();
        for (id, delivered, answer) in expired {
            let mut keys: Vec<CopyKey> = self
                .frags
                .keys()
                .filter(|(m, _, _)| *m == id)
                .copied()
                .collect();
            keys.sort_unstable();
            if delivered {
                // Every fragment is stored at one relay at least: settle for that.
                for key in keys {
                    if self.copies_left(frag_of(key)) {
                        self.settle(frag_of(key));
                    }
                }
                self.messages.remove(&id);
                continue;
            }
            self.messages.remove(&id);
            self.trailing.retain(|(m, _), _| *m != id);
            for key in keys {
                self.remove_frag(&key);
            }
            if answer {
                bump(&self.counters.answers_abandoned);
                tracing::debug!("an answer's caller stopped waiting before it was stored; dropped");
            } else {
                bump(&self.counters.messages_failed);
                tracing::info!("a message was not acknowledged within its lifetime and failed");
            }
            self.events.push_back(SenderEvent::Failed(id));
        }
        // Forget SURB ids nobody will use any more.
        self.acks.retain(|_, a| a.forget_at() > now);
        // Lost loops, oldest first (the map's order is random, the evidence's is not).
        let mut lost: Vec<(Instant, [u8; 16])> = self
            .loops
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(nonce, (deadline, _))| (*deadline, *nonce))
            .collect();
        lost.sort_unstable();
        for (_, nonce) in lost {
            if let Some((_, mixes)) = self.loops.remove(&nonce) {
                bump(&self.counters.loops_lost);
                self.record_loop(&mixes, true, now);
            }
        }
        if self.quarantine.expire(now) {
            tracing::info!(
                quarantined = self.quarantine.len(),
                "a mix's quarantine ended; routes may use it again"
            );
            self.publish_quarantine();
        }
    }

    /// Adds a loop's outcome to the evidence, and quarantines the mixes it implicates.
    fn record_loop(&mut self, mixes: &[RelayId], lost: bool, now: Instant) {
        let newly = self.quarantine.record(mixes, lost, now);
        if newly.is_empty() {
            return;
        }
        for _ in &newly {
            bump(&self.counters.relays_quarantined);
        }
        tracing::warn!(
            newly = newly.len(),
            quarantined = self.quarantine.len(),
            "loops through a mix were lost far more often than through the others: \
             routing around it for a while"
        );
        self.publish_quarantine();
    }

    /// Hands the quarantine to route choice and the stats.
    fn publish_quarantine(&mut self) {
        self.counters.relays_in_quarantine.store(
            self.quarantine.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.source.set_excluded(self.quarantine.excluded());
    }
}

/// The next deadline of a fixed cadence that fired at `now` for `deadline`: one period on,
/// or one period from now if the tick was missed.
fn next_tick(deadline: Instant, now: Instant, period: Duration) -> Instant {
    if now > deadline + TIMER_SLACK {
        now + period
    } else {
        deadline + period
    }
}

/// A built packet as a link frame; `None` (logged) if it is not exactly one packet long.
fn packet_frame(bytes: Vec<u8>) -> Option<Frame> {
    match <Box<[u8; PACKET_SIZE]>>::try_from(bytes.into_boxed_slice()) {
        Ok(packet) => Some(Frame::Packet(packet)),
        Err(_) => {
            tracing::error!("built a packet of the wrong size");
            None
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

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;
