//! The [`Sender`] driven on a fake clock against an in-memory mailbox relay (the relay half of
//! the pull session from `spore_protocol::pull`), as quinn-proto's `tests/util.rs` `Pair`
//! drives a client and a server: every frame the sender hands out is delivered at once, every
//! frame the relay answers is fed back at the same instant, and time only moves to the
//! sender's next timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use spore_protocol::params::{PAYLOAD_SIZE, PULL_SLOTS};
use spore_protocol::pull::RelayPull;
use spore_protocol::{Fragment, RelayId};

use super::*;
use crate::store::{InboundLimits, Store};

const PULL_INTERVAL: Duration = Duration::from_millis(100);

/// A fake packet: `[kind, surb id (16), message id (16), index (2), copy (1), 0...]`.
const KIND_FRAGMENT: u8 = 1;
const KIND_DROP: u8 = 2;
/// A forged ack payload: `[surb id (16), ACK_TAG, 0...]`.
const ACK_TAG: u8 = 0xAC;

/// Builds fake packets whose SURB-acks the relay below can forge.
struct FakeSource {
    next_surb: u64,
    /// What building one packet costs (on the fake clock): every build adds it to `spent`,
    /// which the harness adds to its clock after the call that built.
    cost: Duration,
    spent: Arc<AtomicU64>,
    /// If set, routes are chosen (with the real route selector) through this network, and
    /// loops are logged with their mixes.
    network: Option<FakeNetwork>,
}

/// A directory of 3 layers of [`LAYER_WIDTH`] mixes for route choice, the quarantine the
/// sender last handed over, and the loops built since the harness last looked.
struct FakeNetwork {
    directory: spore_protocol::Directory,
    excluded: HashSet<RelayId>,
    loops: Vec<([u8; 16], Vec<RelayId>)>,
}

impl FakeSource {
    fn new(next_surb: u64) -> Self {
        Self {
            next_surb,
            cost: Duration::ZERO,
            spent: Arc::default(),
            network: None,
        }
    }

    fn packet(&mut self, kind: u8, header: &[u8]) -> BuiltPacket<[u8; 16]> {
        self.next_surb += 1;
        let cost = u64::try_from(self.cost.as_nanos()).unwrap();
        self.spent
            .fetch_add(cost, std::sync::atomic::Ordering::Relaxed);
        let mut surb = [0u8; 16];
        surb[..8].copy_from_slice(&self.next_surb.to_be_bytes());
        let mut bytes = vec![0u8; PACKET_SIZE];
        bytes[0] = kind;
        bytes[1..17].copy_from_slice(&surb);
        let n = header.len().min(18);
        bytes[17..17 + n].copy_from_slice(&header[..n]);
        BuiltPacket {
            bytes,
            ack: (kind == KIND_FRAGMENT).then_some((surb, surb)),
            round_trip: Duration::ZERO,
            mixes: Vec::new(),
        }
    }
}

impl PacketSource for FakeSource {
    type Recovery = [u8; 16];

    fn fragment(
        &mut self,
        rng: &mut StdRng,
        _destination: &SporeAddress,
        copy: u8,
        fragment: &[u8],
    ) -> Result<BuiltPacket<[u8; 16]>> {
        let mut built = self.packet(KIND_FRAGMENT, fragment);
        built.bytes[35] = copy;
        if let Some(net) = self.network.as_mut() {
            let (entry, mailbox) = (net.directory.relays[0].id, net.directory.relays[0].id);
            let route = spore_protocol::route::RouteSelector::new(&net.directory, 7)
                .excluding(&net.excluded)
                .forward_route(rng, &entry, &mailbox)?;
            built.mixes = route[1..4].iter().map(|h| h.id).collect();
            let loop_nonce = Fragment::decode(fragment, FRAGMENT_DATA_SIZE)
                .ok()
                .and_then(|f| bundle::unpack(&f.data).ok())
                .and_then(|b| match b.body {
                    BundleBody::Loop { nonce } => Some(nonce),
                    _ => None,
                });
            if let Some(nonce) = loop_nonce {
                net.loops.push((nonce, built.mixes.clone()));
            }
        }
        Ok(built)
    }

    fn drop_cover(&mut self, _rng: &mut StdRng) -> Result<BuiltPacket<[u8; 16]>> {
        Ok(self.packet(KIND_DROP, &[]))
    }

    fn is_ack(&self, recovery: &[u8; 16], payload: &[u8]) -> bool {
        payload.get(..16) == Some(&recovery[..]) && payload.get(16) == Some(&ACK_TAG)
    }

    fn set_excluded(&mut self, excluded: HashSet<RelayId>) {
        if let Some(net) = self.network.as_mut() {
            net.excluded = excluded;
        }
    }
}

/// Our mailbox relay and, behind it, every recipient's: it stores the ack of each fragment
/// that arrives straight into our mailbox (unless told to lose it), and answers pulls with
/// the protocol's relay half.
#[derive(Default)]
struct Relay {
    session: Option<RelayPull>,
    mailbox: Vec<MailboxItem>,
    next_handle: u64,
    /// Every fragment that arrived, in order.
    arrivals: Vec<FragKey>,
    drops: usize,
    pulls: usize,
    /// Of `pulls`, the catch-up ones.
    bulk_pulls: usize,
    deletes: Vec<Vec<u64>>,
    /// The first arrival of these fragments gets no ack.
    lose_once: HashSet<FragKey>,
    /// No arrival of these fragments gets an ack.
    lose_always: HashSet<FragKey>,
    /// Every ack is stored twice (a duplicate in the network).
    duplicate_acks: bool,
    /// Every copy that arrived: which fragment, and for which of the destination's relays.
    copies: Vec<(FragKey, u8)>,
    /// The destination's mailbox relay for this copy is dead: no copy sent there is acked.
    dead_copy: Option<u8>,
    to_client: VecDeque<Frame>,
}

impl Relay {
    fn store_ack(&mut self, surb: [u8; 16]) {
        let mut payload = Box::new([0u8; PAYLOAD_SIZE]);
        payload[..16].copy_from_slice(&surb);
        payload[16] = ACK_TAG;
        self.next_handle += 1;
        self.mailbox.push(MailboxItem {
            handle: self.next_handle,
            surb_id: surb,
            payload,
        });
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Packet(p) => match p[0] {
                KIND_FRAGMENT => {
                    let surb: [u8; 16] = p[1..17].try_into().unwrap();
                    let id: MessageId = p[17..33].try_into().unwrap();
                    let key = (id, u16::from_be_bytes([p[33], p[34]]));
                    self.arrivals.push(key);
                    self.copies.push((key, p[35]));
                    if self.dead_copy == Some(p[35]) {
                        return;
                    }
                    if self.lose_once.remove(&key) || self.lose_always.contains(&key) {
                        return;
                    }
                    self.store_ack(surb);
                    if self.duplicate_acks {
                        self.store_ack(surb);
                    }
                }
                KIND_DROP => self.drops += 1,
                other => panic!("unknown fake packet kind {other}"),
            },
            Frame::PullRequest | Frame::BulkPullRequest => {
                self.pulls += 1;
                if frame == Frame::BulkPullRequest {
                    self.bulk_pulls += 1;
                }
                let slots = RelayPull::slots_for(&frame).unwrap();
                let items = self.mailbox.iter().take(slots).cloned().collect();
                let session = self.session.take().unwrap_or_default();
                let (session, slots) = session.answer(&frame, items).unwrap();
                self.session = Some(session);
                self.to_client.extend(slots);
            }
            Frame::Delete { .. } => {
                let session = self.session.take().unwrap_or_default();
                let (session, deletion) = session.handle_delete(&frame).unwrap();
                // The sender only ever ends its own pulls: never a Delete outside one.
                assert_eq!(deletion.irregular, None, "irregular delete");
                let handles = deletion.handles;
                self.session = Some(session);
                self.mailbox.retain(|i| !handles.contains(&i.handle));
                let count = handles.len() as u32;
                self.deletes.push(handles);
                self.to_client.push_back(Frame::DeleteDone { count });
            }
            other => panic!("the client sent {other:?}"),
        }
    }
}

/// A sender and the relay, on a fake clock.
struct Pair {
    sender: Sender<FakeSource>,
    relay: Relay,
    counters: Arc<Counters>,
    start: Instant,
    now: Instant,
    /// Acks are applied to this outbox, as the driver does.
    store: Option<Store>,
    acked: Vec<FragKey>,
    delivered: Vec<MessageId>,
    failed: Vec<MessageId>,
    /// Items the sender handed to the driver (not acks it was waiting for).
    handed_to_driver: usize,
    closed: Vec<&'static str>,
    /// The largest number of fragments in flight seen, and the window at that moment.
    peak_in_flight: usize,
    /// Plays the build threads when the sender has them: builds every job at once.
    builder: Option<FakeSource>,
    /// ... or, if set, each job takes the builder's cost on the first free of these threads
    /// (when each is free next), and is handed back when done.
    build_threads: Vec<Instant>,
    being_built: VecDeque<(Instant, Built<[u8; 16]>)>,
    /// How long the driver takes to persist a pull's items (handed back after this).
    processing_time: Duration,
    processing: VecDeque<(Instant, u64, Vec<u64>)>,
    /// Every frame the sender handed out: when, and what (the first byte of a packet, or
    /// `b'P'` / `b'D'` for a pull / a Delete).
    transmitted: Vec<(Instant, u8)>,
}

fn address() -> SporeAddress {
    SporeAddress {
        capability: None,
        mailbox_relays: vec![RelayId([1; 32])],
        mailbox_key: [2; 32],
    }
}

fn config(lambda_p: f64) -> SenderConfig {
    SenderConfig {
        rates: Rates {
            lambda_p,
            lambda_l: 0.0,
            lambda_d: 0.0,
            mu: 20.0,
            pull_interval: PULL_INTERVAL,
            max_delay: Duration::from_secs(60),
        },
        timeouts: Timeouts {
            ack_margin: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
            message_lifetime: Duration::from_secs(600),
            single_copy_grace: Duration::from_secs(60),
            ..Timeouts::default()
        },
        server_name: "a.example".into(),
        address: address(),
        build_capacity: None,
        catch_up: true,
    }
}

/// A message of `count` fragments, as the store hands them over.
fn message(id: u8, count: u16) -> (OutgoingMessage, Vec<Fragment>) {
    let fragments = (0..count)
        .map(|index| Fragment {
            message_id: [id; 16],
            index,
            count,
            data: vec![id; 8],
        })
        .collect();
    let message = OutgoingMessage {
        id: [id; 16],
        created_ms: 1_000,
        destination: address(),
        expires_ms: None,
    };
    (message, fragments)
}

fn encoded(fragments: &[Fragment]) -> Vec<(u16, Vec<u8>)> {
    fragments.iter().map(|f| (f.index, f.encode())).collect()
}

impl Pair {
    fn new(lambda_p: f64) -> Self {
        let start = Instant::now();
        let counters = Arc::new(Counters::default());
        let mut sender = Sender::new(
            config(lambda_p),
            FakeSource::new(0),
            StdRng::seed_from_u64(20),
            counters.clone(),
            start,
        );
        sender.handle_link_up(start);
        Self {
            sender,
            relay: Relay::default(),
            counters,
            start,
            now: start,
            store: None,
            acked: Vec::new(),
            delivered: Vec::new(),
            failed: Vec::new(),
            handed_to_driver: 0,
            closed: Vec::new(),
            peak_in_flight: 0,
            builder: None,
            build_threads: Vec::new(),
            being_built: VecDeque::new(),
            processing_time: Duration::ZERO,
            processing: VecDeque::new(),
            transmitted: Vec::new(),
        }
    }

    /// A sender with build threads (played by the harness, which builds every job at once).
    fn with_build_threads(lambda_p: f64) -> Self {
        let mut pair = Self::new(lambda_p);
        let mut config = config(lambda_p);
        config.build_capacity = Some(BUILD_CAPACITY);
        pair.sender = Sender::new(
            config,
            FakeSource::new(0),
            StdRng::seed_from_u64(20),
            pair.counters.clone(),
            pair.start,
        );
        pair.sender.handle_link_up(pair.start);
        pair.builder = Some(FakeSource::new(1 << 40));
        pair
    }

    fn build(&mut self) {
        while self
            .being_built
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            if let Some((_, built)) = self.being_built.pop_front() {
                self.sender.handle_built(built);
            }
        }
        let Some(builder) = self.builder.as_mut() else {
            return;
        };
        let mut rng = StdRng::seed_from_u64(0);
        while let Some(job) = self.sender.poll_build() {
            if let Some(free) = self.build_threads.iter_mut().min() {
                let done = (*free).max(self.now) + builder.cost;
                *free = done;
                let built = match job {
                    Job::Fragment(f) => Built::Fragment {
                        key: f.key,
                        packet: builder.fragment(&mut rng, &f.destination, f.key.2, &f.bytes),
                        at: done,
                    },
                    Job::DropCover => Built::DropCover {
                        packet: builder.drop_cover(&mut rng),
                        at: done,
                    },
                };
                self.being_built.push_back((done, built));
                self.being_built
                    .make_contiguous()
                    .sort_by_key(|(at, _)| *at);
                continue;
            }
            let built = match job {
                Job::Fragment(f) => Built::Fragment {
                    key: f.key,
                    packet: builder.fragment(&mut rng, &f.destination, f.key.2, &f.bytes),
                    at: self.now,
                },
                Job::DropCover => Built::DropCover {
                    packet: builder.drop_cover(&mut rng),
                    at: self.now,
                },
            };
            self.sender.handle_built(built);
        }
    }

    fn enqueue(&mut self, message: OutgoingMessage, fragments: Vec<(u16, Vec<u8>)>) {
        self.sender
            .handle_enqueue(message, fragments, self.now, 1_000);
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Moves to the sender's next timeout and lets both sides talk until they are quiet.
    fn step(&mut self) {
        self.build();
        let mut next = self.sender.poll_timeout();
        if let Some((done, _)) = self.being_built.front() {
            next = next.min(*done);
        }
        if let Some((done, _, _)) = self.processing.front() {
            next = next.min(*done);
        }
        self.now = self.now.max(next);
        self.build();
        while self
            .processing
            .front()
            .is_some_and(|(at, _, _)| *at <= self.now)
        {
            if let Some((_, pull, handles)) = self.processing.pop_front() {
                self.sender.handle_processed(pull, handles, self.now);
            }
        }
        self.sender.handle_timeout(self.now);
        self.exchange();
        // The time the sender spent building packets itself passes before its next call.
        let spent = self
            .sender
            .source
            .spent
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        self.now += Duration::from_nanos(spent);
    }

    fn exchange(&mut self) {
        loop {
            let mut busy = false;
            while let Some(event) = self.sender.poll_event() {
                busy = true;
                match event {
                    SenderEvent::Acked((id, index)) => {
                        if let Some(store) = &self.store {
                            store.ack_fragment(&id, index).unwrap();
                        }
                        self.acked.push((id, index));
                    }
                    SenderEvent::Delivered(id) => self.delivered.push(id),
                    SenderEvent::Failed(id) => self.failed.push(id),
                    SenderEvent::Pulled { pull, items } => {
                        // The driver's part: nothing here is a reply or readable; all of it
                        // may go.
                        self.handed_to_driver += items.len();
                        let handles = items.iter().map(|i| i.handle).collect();
                        if self.processing_time.is_zero() {
                            self.sender.handle_processed(pull, handles, self.now);
                        } else {
                            let done = self.now + self.processing_time;
                            self.processing.push_back((done, pull, handles));
                        }
                    }
                    SenderEvent::CloseLink(why) => self.closed.push(why),
                }
            }
            while let Some(frame) = self.sender.poll_transmit() {
                busy = true;
                let kind = match &frame {
                    Frame::Packet(p) => p[0],
                    Frame::PullRequest => b'P',
                    Frame::BulkPullRequest => b'B',
                    Frame::Delete { .. } => b'D',
                    _ => 0,
                };
                self.transmitted.push((self.now, kind));
                self.sender.handle_sent(true);
                self.relay.on_frame(frame);
            }
            if self.sender.in_flight() > self.peak_in_flight {
                self.peak_in_flight = self.sender.in_flight();
                assert!(
                    self.sender.in_flight() <= self.sender.window().floor() as usize,
                    "more in flight than the window allows"
                );
            }
            while let Some(frame) = self.relay.to_client.pop_front() {
                busy = true;
                self.sender.handle_frame(frame, self.now);
            }
            if !busy {
                return;
            }
        }
    }

    /// Runs every timeout up to and including `until`.
    fn run_until(&mut self, until: Instant) {
        while self.sender.poll_timeout() <= until
            || self
                .processing
                .front()
                .is_some_and(|(at, _, _)| *at <= until)
        {
            self.step();
        }
        self.now = until;
    }

    /// Runs until `done` holds, at most 60 simulated seconds.
    fn run_while(&mut self, mut busy: impl FnMut(&Pair) -> bool) {
        let limit = self.now + Duration::from_secs(60);
        while busy(self) {
            assert!(self.now < limit, "did not finish within 60 s");
            self.step();
        }
    }

    fn arrivals_of(&self, key: FragKey) -> usize {
        self.relay.arrivals.iter().filter(|k| **k == key).count()
    }

    fn stat(&self, c: &std::sync::atomic::AtomicU64) -> u64 {
        let _ = self;
        c.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn window_grows_by_one_per_ack_and_caps_what_is_in_flight() {
    let mut pair = Pair::new(1000.0);
    let (m, fragments) = message(1, 64);
    pair.enqueue(m, encoded(&fragments));
    assert_eq!(pair.sender.window(), 16.0);
    // Before the first pull returns any ack, exactly the initial window is in flight.
    pair.run_until(pair.at(99));
    assert_eq!(pair.sender.in_flight(), 16);
    assert_eq!(pair.stat(&pair.counters.real_sent), 16);
    pair.run_while(|p| p.delivered.is_empty());
    assert_eq!(pair.delivered, [[1; 16]]);
    assert_eq!(pair.acked.len(), 64);
    // Slow start: one more per ack, no ack was late.
    assert_eq!(pair.sender.window(), 16.0 + 64.0);
    assert_eq!(pair.stat(&pair.counters.retransmissions), 0);
    assert_eq!(pair.stat(&pair.counters.real_sent), 64);
    assert_eq!(pair.sender.unacknowledged(), 0);
    assert!(pair.peak_in_flight >= 16);
}

#[test]
fn window_halves_once_per_round_trip_of_late_acks_and_never_below_the_minimum() {
    let mut pair = Pair::new(1000.0);
    let (m, fragments) = message(2, 8);
    for f in &fragments {
        pair.relay.lose_always.insert(([2; 16], f.index));
    }
    pair.enqueue(m, encoded(&fragments));
    // All eight leave within a few ms; their acks are due 2 pulls + 1 s margin later.
    pair.run_until(pair.at(1_150));
    assert_eq!(pair.stat(&pair.counters.real_sent), 8);
    assert_eq!(pair.sender.window(), 16.0, "nothing is late yet");
    pair.run_until(pair.at(1_350));
    // Eight late acks in one round trip are one congestion event.
    assert_eq!(pair.sender.window(), 8.0);
    assert_eq!(
        pair.sender.in_flight(),
        0,
        "every late fragment is backing off"
    );
    assert_eq!(pair.stat(&pair.counters.retransmissions), 0);
    // The retransmissions are late again, a round trip later: halved again, to the floor.
    pair.run_until(pair.at(10_000));
    assert!(pair.stat(&pair.counters.retransmissions) >= 8);
    assert_eq!(pair.sender.window(), MIN_WINDOW);
    pair.run_until(pair.at(30_000));
    assert_eq!(pair.sender.window(), MIN_WINDOW);
    assert!(pair.delivered.is_empty());
}

#[test]
fn a_lost_ack_means_one_retransmission_then_delivery() {
    let mut pair = Pair::new(50.0);
    let (m, fragments) = message(3, 2);
    pair.relay.lose_once.insert(([3; 16], 0));
    pair.enqueue(m, encoded(&fragments));
    pair.run_while(|p| p.delivered.is_empty());
    assert_eq!(pair.delivered, [[3; 16]]);
    assert_eq!(
        pair.arrivals_of(([3; 16], 0)),
        2,
        "fragment 0 was sent twice"
    );
    assert_eq!(pair.arrivals_of(([3; 16], 1)), 1);
    assert_eq!(pair.stat(&pair.counters.retransmissions), 1);
    assert_eq!(pair.stat(&pair.counters.real_sent), 3);
    assert_eq!(pair.stat(&pair.counters.acks), 2);
    assert_eq!(pair.acked.len(), 2);
    // The late ack cut the window from 17 (16, +1 for fragment 1's ack) to half; that is
    // also the new slow-start threshold, so the retransmission's ack adds 1 / window.
    assert_eq!(pair.sender.window(), 17.0 / 2.0 + 1.0 / 8.5);
}

#[test]
fn a_duplicate_ack_counts_once_and_is_deleted_too() {
    let mut pair = Pair::new(50.0);
    pair.relay.duplicate_acks = true;
    let (m, fragments) = message(4, 1);
    pair.enqueue(m, encoded(&fragments));
    pair.run_while(|p| p.delivered.is_empty());
    let t = pair.now + PULL_INTERVAL * 3;
    pair.run_until(t);
    assert_eq!(pair.delivered, [[4; 16]]);
    assert_eq!(pair.acked, [([4; 16], 0)]);
    assert_eq!(pair.stat(&pair.counters.acks), 1);
    assert_eq!(pair.stat(&pair.counters.messages_delivered), 1);
    assert_eq!(pair.sender.window(), 17.0);
    // The copy no longer matches an outstanding SURB id: it goes to the receiver (which
    // finds nothing readable) and is deleted like everything else.
    assert_eq!(pair.handed_to_driver, 1);
    assert!(pair.relay.mailbox.is_empty());
    assert_eq!(pair.stat(&pair.counters.items_pulled), 2);
}

#[test]
fn a_pull_of_dummies_only_ends_with_exactly_one_empty_delete() {
    let mut pair = Pair::new(50.0);
    pair.run_until(pair.at(0));
    assert_eq!(pair.relay.pulls, 1, "the first pull goes out at once");
    assert!(
        pair.relay.deletes.is_empty(),
        "the Delete waits for its slot"
    );
    pair.run_until(pair.at(25));
    assert_eq!(pair.relay.deletes, [Vec::<u64>::new()]);
    // Pulls at 0, 100, ..., 900 ms: ten, each followed by exactly one (empty) Delete.
    pair.run_until(pair.at(950));
    assert_eq!(pair.relay.pulls, 10);
    assert_eq!(pair.relay.deletes.len(), 10);
    assert!(pair.relay.deletes.iter().all(Vec::is_empty));
    assert_eq!(pair.stat(&pair.counters.pulls), 10);
    assert_eq!(pair.stat(&pair.counters.items_pulled), 0);
    assert_eq!(pair.handed_to_driver, 0);
    assert!(pair.closed.is_empty());
    // The payload stream still ran: cover only.
    assert!(pair.relay.drops > 20);
    assert!(pair.relay.arrivals.is_empty());
    assert_eq!(pair.stat(&pair.counters.drop_sent), pair.relay.drops as u64);
}

#[test]
fn a_restart_with_a_half_acked_message_sends_only_the_unacked_fragments() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
    let (m, fragments) = message(5, 4);
    store.put_outgoing(&m, &fragments).unwrap();

    // First life: fragments 2 and 3 are never acknowledged.
    let mut first = Pair::new(50.0);
    first.store = Some(store.clone());
    first.relay.lose_always = HashSet::from([([5; 16], 2), ([5; 16], 3)]);
    first.enqueue(m.clone(), encoded(&fragments));
    first.run_while(|p| p.acked.len() < 2);
    first.run_until(first.now + Duration::from_secs(2));
    assert_eq!(first.acked.len(), 2);
    assert!(first.delivered.is_empty());
    drop(first); // the crash

    // Second life: the outbox holds the message with its two unacked fragments.
    let loaded = store.load_outbox().unwrap();
    assert_eq!(loaded.len(), 1);
    let (m2, queued) = loaded.into_iter().next().unwrap();
    assert_eq!(m2, m);
    let indices: Vec<u16> = queued.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [2, 3]);
    let mut second = Pair::new(50.0);
    second.store = Some(store.clone());
    second.enqueue(m2, queued);
    second.run_while(|p| p.delivered.is_empty());
    let arrived: HashMap<FragKey, usize> =
        second
            .relay
            .arrivals
            .iter()
            .fold(HashMap::new(), |mut seen, k| {
                *seen.entry(*k).or_default() += 1;
                seen
            });
    assert_eq!(
        arrived,
        HashMap::from([(([5; 16], 2), 1), (([5; 16], 3), 1)])
    );
    assert_eq!(second.delivered, [[5; 16]]);
    assert_eq!(store.outbox_len(), 0);
}

#[test]
fn a_message_older_than_its_lifetime_fails_and_frees_its_fragments() {
    let mut pair = Pair::new(50.0);
    let (m, fragments) = message(6, 2);
    pair.relay.lose_always = HashSet::from([([6; 16], 0), ([6; 16], 1)]);
    // Created 590 s ago (wall clock): 10 s of its 600 s lifetime remain.
    pair.sender
        .handle_enqueue(m, encoded(&fragments), pair.now, 1_000 + 590_000);
    pair.run_until(pair.at(9_900));
    assert!(pair.failed.is_empty());
    pair.run_until(pair.at(10_100));
    assert_eq!(pair.failed, [[6; 16]]);
    assert_eq!(pair.sender.unacknowledged(), 0);
    assert_eq!(pair.sender.in_flight(), 0);
}

#[test]
fn an_answer_is_dropped_when_its_caller_gives_up_not_at_the_message_lifetime() {
    let mut pair = Pair::new(50.0);
    let (mut m, fragments) = message(8, 3);
    // The caller waits 20 s more (its deadline, Unix ms); the message lifetime is 600 s.
    let unix_now = 1_000;
    m.expires_ms = Some(unix_now + 20_000);
    pair.relay.lose_always = HashSet::from([([8; 16], 0), ([8; 16], 1), ([8; 16], 2)]);
    pair.sender
        .handle_enqueue(m, encoded(&fragments), pair.now, unix_now);
    pair.run_until(pair.at(19_900));
    assert_eq!(pair.sender.unacknowledged(), 3, "still wanted: still sent");
    pair.run_until(pair.at(20_100));
    assert_eq!(pair.sender.unacknowledged(), 0);
    assert_eq!(pair.sender.in_flight(), 0);
    // Dropped from the outbox (the driver removes it on this event), but it is not a failure
    // of ours to report: the caller had already gone.
    assert_eq!(pair.failed, [[8; 16]]);
    assert_eq!(pair.stat(&pair.counters.answers_abandoned), 1);
    assert_eq!(pair.stat(&pair.counters.messages_failed), 0);
    let sent_then = pair.stat(&pair.counters.real_sent);
    pair.run_until(pair.at(60_000));
    assert_eq!(
        pair.stat(&pair.counters.real_sent),
        sent_then,
        "no retransmission after the deadline"
    );
}

#[test]
fn a_broken_write_puts_the_fragment_back_in_front() {
    let mut pair = Pair::new(50.0);
    let (m, fragments) = message(7, 1);
    pair.enqueue(m, encoded(&fragments));
    // Drive by hand until the fragment is handed out, then fail its write.
    loop {
        pair.now = pair.sender.poll_timeout();
        pair.sender.handle_timeout(pair.now);
        let mut failed = false;
        while let Some(frame) = pair.sender.poll_transmit() {
            if matches!(&frame, Frame::Packet(p) if p[0] == KIND_FRAGMENT) {
                pair.sender.handle_sent(false);
                failed = true;
                break;
            }
            pair.sender.handle_sent(true);
            pair.relay.on_frame(frame);
        }
        if failed {
            break;
        }
        pair.relay.to_client.clear();
        pair.relay.session = None;
    }
    assert_eq!(pair.stat(&pair.counters.real_sent), 0);
    assert_eq!(pair.sender.in_flight(), 0);
    // The link comes back: the fragment is sent again, and delivered.
    pair.relay = Relay::default();
    pair.sender.handle_link_up(pair.now);
    pair.run_while(|p| p.delivered.is_empty());
    assert_eq!(pair.stat(&pair.counters.real_sent), 1);
    assert_eq!(pair.stat(&pair.counters.retransmissions), 0);
}

#[test]
fn with_build_threads_fragments_are_built_ahead_within_the_window() {
    let mut pair = Pair::with_build_threads(1000.0);
    let (m, fragments) = message(8, 40);
    pair.enqueue(m, encoded(&fragments));
    pair.build();
    // The cover stock and one window of fragments are built before anything is sent.
    assert_eq!(pair.sender.in_flight(), 0);
    pair.run_until(pair.at(99));
    assert_eq!(
        pair.sender.in_flight(),
        16,
        "the window caps what is built and sent"
    );
    pair.run_while(|p| p.delivered.is_empty());
    assert_eq!(pair.delivered, [[8; 16]]);
    assert_eq!(pair.stat(&pair.counters.real_sent), 40);
    assert_eq!(pair.stat(&pair.counters.retransmissions), 0);
    assert_eq!(pair.sender.window(), 16.0 + 40.0);
    let mut arrived = pair.relay.arrivals.clone();
    arrived.sort_unstable();
    arrived.dedup();
    assert_eq!(arrived.len(), 40, "every fragment arrived exactly once");
    assert_eq!(pair.relay.arrivals.len(), 40);
    assert!(
        pair.relay.drops > 0,
        "idle payload ticks send cover from the stock"
    );
}

/// Bulk rates on a slow machine: packets take 5 ms to build, the payload stream asks for one
/// every 1.7 ms, two build threads make 400 a second. The sender falls behind; it must still
/// take in pre-built fragments and pull at its cadence between the cover it builds itself,
/// rather than spend seconds catching up on overdue cover (the regression of the bench's
/// `client_throughput`: 0 fragments sent, 0 pulls).
#[test]
fn a_sender_behind_its_schedule_still_sends_fragments_and_pulls() {
    let mut pair = Pair::with_build_threads(600.0);
    let mut config = config(600.0);
    config.build_capacity = Some(BUILD_CAPACITY);
    config.rates.pull_interval = Duration::from_millis(20);
    let mut source = FakeSource::new(0);
    source.cost = Duration::from_millis(5);
    pair.sender = Sender::new(
        config,
        source,
        StdRng::seed_from_u64(20),
        pair.counters.clone(),
        pair.start,
    );
    pair.sender.handle_link_up(pair.start);
    let mut builder = FakeSource::new(1 << 40);
    builder.cost = Duration::from_millis(5);
    pair.builder = Some(builder);
    pair.build_threads = vec![pair.start; 2];
    for id in 1..=150 {
        let (m, fragments) = message(id, 8);
        pair.enqueue(m, encoded(&fragments));
    }
    pair.run_until(pair.at(5_000));
    let (real, acks, pulls) = (
        pair.stat(&pair.counters.real_sent),
        pair.stat(&pair.counters.acks),
        pair.stat(&pair.counters.pulls),
    );
    // 5 s of 20 ms pulls is 250 (without the fix: about 50). The 1,200 fragments need 3 s of
    // both build threads, and all of them are acked (without the fix: about 500).
    assert!(pulls >= 200, "{pulls} pulls in 5 s");
    assert!(acks >= 1_000, "{acks} acks, {real} fragments sent");
}

impl Relay {
    /// A forward message (not one of our acks) lands in our mailbox.
    fn deliver_forward(&mut self, tag: u8) {
        self.next_handle += 1;
        self.mailbox.push(MailboxItem {
            handle: self.next_handle,
            surb_id: [tag; 16],
            payload: Box::new([tag; PAYLOAD_SIZE]),
        });
    }
}

/// One client over 3 s, receiving `items` forward messages every 150 ms (persisting each
/// pull's takes 30 ms, longer than the Delete's slot 25 ms after the pull) and sending
/// `messages` 4-fragment messages: when each frame left.
fn link_schedule(items: usize, messages: u8) -> (Vec<Duration>, Pair) {
    let mut pair = Pair::new(50.0);
    pair.processing_time = Duration::from_millis(30);
    for id in 1..=messages {
        let (m, fragments) = message(id, 4);
        pair.enqueue(m, encoded(&fragments));
    }
    for tick in 0..20u8 {
        for _ in 0..items {
            pair.relay.deliver_forward(tick);
        }
        let t = pair.now + Duration::from_millis(150);
        pair.run_until(t);
    }
    let times = pair
        .transmitted
        .iter()
        .map(|(t, _)| t.duration_since(pair.start))
        .collect();
    (times, pair)
}

/// Issue 15: the link's schedule is a function of the sender's timers and random draws, not
/// of what it receives, stores or acks. Same seed, same clock: a client that receives and
/// sends real messages writes its frames at exactly the times an idle one does.
#[test]
fn the_link_schedule_does_not_depend_on_what_is_received_or_sent() {
    let (idle, idle_pair) = link_schedule(0, 0);
    let (receiving, mut rx) = link_schedule(5, 0);
    let (sending, tx) = link_schedule(0, 6);
    assert!(idle.len() > 150, "{} frames", idle.len());
    assert_eq!(receiving, idle, "receiving moved the link's frames");
    assert_eq!(sending, idle, "sending moved the link's frames");
    assert_eq!(idle_pair.relay.pulls, rx.relay.pulls);
    assert_eq!(rx.relay.deletes.len(), idle_pair.relay.deletes.len());
    // What differs is only inside the frames: deletes named items, fragments were sent.
    assert!(rx.relay.deletes.iter().any(|d| !d.is_empty()));
    assert_eq!(tx.delivered.len(), 6);
    // Every item was handed to the driver once, though some were pulled again because their
    // Delete had left before they were persisted; all of them are gone from the mailbox.
    rx.run_until(rx.now + Duration::from_secs(1));
    assert_eq!(rx.handed_to_driver, 100);
    assert!(
        rx.relay.mailbox.is_empty(),
        "{} left",
        rx.relay.mailbox.len()
    );
    assert!(rx.closed.is_empty());
}

/// A returning client with 1,000 items waiting (persisting each pull's items takes 5 ms):
/// how long until its mailbox is empty, how many bulk pulls that took, and the pair.
fn drain_backlog(catch_up: bool) -> (Duration, Pair) {
    drain_backlog_storing_in(catch_up, Duration::from_millis(5))
}

fn drain_backlog_storing_in(catch_up: bool, processing: Duration) -> (Duration, Pair) {
    let mut pair = Pair::new(50.0);
    pair.sender = Sender::new(
        SenderConfig {
            catch_up,
            ..config(50.0)
        },
        FakeSource::new(0),
        StdRng::seed_from_u64(7),
        pair.counters.clone(),
        pair.start,
    );
    pair.sender.handle_link_up(pair.start);
    pair.processing_time = processing;
    for n in 0..1000u32 {
        pair.relay.deliver_forward((n % 251) as u8);
    }
    let limit = pair.start + Duration::from_secs(30);
    while !pair.relay.mailbox.is_empty() && pair.now < limit {
        let t = pair.now + Duration::from_millis(10);
        pair.run_until(t);
    }
    (pair.now.duration_since(pair.start), pair)
}

/// Issue 17: a returning client drains its backlog with bulk pulls back to back, each Delete
/// leaving as soon as its items are stored, then falls back to its fixed pull cadence. Off,
/// the cadence never changes: 16 items per 100 ms interval.
#[test]
fn a_full_pull_starts_catch_up_and_an_empty_mailbox_ends_it() {
    let (took, mut fast) = drain_backlog(true);
    assert!(fast.relay.mailbox.is_empty());
    assert_eq!(fast.handed_to_driver, 1000, "every item handed out once");
    // 1 ordinary pull of 16, then 984 items in 64-slot bulk pulls: 16 of them, each a pull,
    // the relay's answer and a Delete after 5 ms of processing, with no interval between.
    assert!(
        (16..=17).contains(&fast.relay.bulk_pulls),
        "{} bulk pulls",
        fast.relay.bulk_pulls
    );
    assert!(took < Duration::from_millis(400), "drained in {took:?}");
    assert_eq!(
        fast.stat(&fast.counters.catch_up_pulls),
        fast.relay.bulk_pulls as u64
    );
    // Back on the cadence: one ordinary pull per 100 ms interval from here on.
    let (pulls, bulk) = (fast.relay.pulls, fast.relay.bulk_pulls);
    let t = fast.now + Duration::from_secs(1);
    fast.run_until(t);
    assert_eq!(fast.relay.bulk_pulls, bulk);
    assert!((9..=11).contains(&(fast.relay.pulls - pulls)));
    assert!(fast.closed.is_empty());

    let (took, slow) = drain_backlog(false);
    assert!(slow.relay.mailbox.is_empty());
    assert_eq!(slow.relay.bulk_pulls, 0);
    assert_eq!(slow.handed_to_driver, 1000);
    // 1000 / 16 = 63 pulls at 100 ms.
    assert!(took >= Duration::from_millis(6200), "drained in {took:?}");
    assert!(
        slow.transmitted.iter().all(|(_, k)| *k != b'B'),
        "no bulk pull when catch-up is off"
    );
}

/// Under load, storing a bulk pull's items may take longer than an ordinary pull's Delete
/// slot (here 200 ms against 25 ms): the next bulk pull still waits for them, so each pull
/// brings 64 new items instead of the same ones again while they are being stored.
#[test]
fn a_slow_store_does_not_make_catch_up_pull_the_same_items_again() {
    let (took, fast) = drain_backlog_storing_in(true, Duration::from_millis(200));
    assert!(fast.relay.mailbox.is_empty());
    assert_eq!(fast.handed_to_driver, 1000);
    assert!(
        (16..=18).contains(&fast.relay.bulk_pulls),
        "{} bulk pulls for 984 items",
        fast.relay.bulk_pulls
    );
    // 17 pulls, each waiting 200 ms for its items to be stored.
    assert!(took < Duration::from_millis(4000), "drained in {took:?}");
    assert!(fast.closed.is_empty());
}

/// On the wire, an empty Delete and a full one are the same size: every link frame is encoded
/// into one fixed-length record (then sealed to `WIRE_FRAME_LEN`), as are a pull request and a
/// packet.
#[test]
fn empty_and_full_deletes_are_the_same_size_on_the_wire() {
    use spore_protocol::link::FRAME_LEN;
    let mut empty = [0u8; FRAME_LEN];
    Frame::Delete {
        handles: Vec::new(),
    }
    .encode_into(&mut empty)
    .unwrap();
    let mut full = [0u8; FRAME_LEN];
    Frame::Delete {
        handles: (0..PULL_SLOTS as u64).map(|h| h << 40).collect(),
    }
    .encode_into(&mut full)
    .unwrap();
    assert_ne!(empty, full);
    assert_eq!(
        Frame::decode(&full).unwrap(),
        Frame::Delete {
            handles: (0..PULL_SLOTS as u64).map(|h| h << 40).collect()
        }
    );
}

// ----- route choice (issues 15 and 19): mixes that drop loops are routed around -----

/// Mixes per layer of the fake network.
const LAYER_WIDTH: u8 = 3;

/// An edge relay (index 0) and 3 layers of [`LAYER_WIDTH`] mixes, all with keys for epoch 7.
fn fake_directory() -> spore_protocol::Directory {
    use spore_protocol::directory::{DescriptorFields, NetworkParams, RelayDescriptor, Roles};
    let relay = |roles: Roles, layer: u8, n: u8| {
        RelayDescriptor::sign(
            DescriptorFields {
                address: format!("127.0.0.1:{}", 1000 + u16::from(n)),
                roles,
                layer,
                link_key: [n; 32],
                sphinx_keys: vec![spore_protocol::directory::SphinxKey {
                    epoch: 7,
                    public: [n; 32],
                }],
                published_at: 0,
                expires_at: 100,
            },
            &ed25519_dalek::SigningKey::from_bytes(&[n; 32]),
        )
        .unwrap()
    };
    let edge = Roles {
        entry: true,
        mix: false,
        mailbox: true,
    };
    let mix = Roles {
        entry: false,
        mix: true,
        mailbox: false,
    };
    let mut relays = vec![relay(edge, 0, 1)];
    for layer in 1..=3u8 {
        for i in 0..LAYER_WIDTH {
            relays.push(relay(mix, layer, 10 * layer + i));
        }
    }
    spore_protocol::Directory {
        epoch: 7,
        valid_after: 0,
        valid_until: 100,
        params: NetworkParams::default(),
        relays,
        signatures: vec![],
    }
}

/// A sender sending only loops (10/s) through the fake network, whose loops come back at once
/// unless `dropped` says otherwise.
struct LoopNet {
    pair: Pair,
    directory: spore_protocol::Directory,
    rng: StdRng,
}

impl LoopNet {
    fn new(seed: u64) -> Self {
        let mut pair = Pair::new(0.0);
        let mut config = config(0.0);
        config.rates.lambda_l = 10.0;
        let mut source = FakeSource::new(0);
        source.network = Some(FakeNetwork {
            directory: fake_directory(),
            excluded: HashSet::new(),
            loops: Vec::new(),
        });
        pair.sender = Sender::new(
            config,
            source,
            StdRng::seed_from_u64(seed),
            pair.counters.clone(),
            pair.start,
        );
        pair.sender.handle_link_up(pair.start);
        Self {
            pair,
            directory: fake_directory(),
            rng: StdRng::seed_from_u64(seed + 1),
        }
    }

    fn layer1(&self) -> Vec<RelayId> {
        self.directory.mixes_in_layer(1).map(|d| d.id).collect()
    }

    /// Runs `seconds` of simulated time; a loop is lost if `dropped(mixes, rng)`. Returns the
    /// mixes of every loop built meanwhile.
    fn run(
        &mut self,
        seconds: u64,
        mut dropped: impl FnMut(&[RelayId], &mut StdRng) -> bool,
    ) -> Vec<Vec<RelayId>> {
        let until = self.pair.now + Duration::from_secs(seconds);
        let mut routes = Vec::new();
        while self.pair.now < until {
            self.pair.step();
            let built =
                std::mem::take(&mut self.pair.sender.source.network.as_mut().unwrap().loops);
            for (nonce, mixes) in built {
                if !dropped(&mixes, &mut self.rng) {
                    self.pair.sender.handle_loop_returned(&nonce, self.pair.now);
                }
                routes.push(mixes);
            }
        }
        routes
    }

    fn excluded(&self) -> HashSet<RelayId> {
        self.pair
            .sender
            .source
            .network
            .as_ref()
            .unwrap()
            .excluded
            .clone()
    }
}

#[test]
fn a_mix_that_drops_every_loop_is_quarantined_and_routes_avoid_it() {
    let mut net = LoopNet::new(1);
    let bad = net.layer1()[0];
    // 1 % honest loss everywhere, and the bad mix drops everything.
    let before = net.run(30, |mixes, rng| {
        mixes.contains(&bad) || rng.random_bool(0.01)
    });
    assert!(before.len() > 200, "{} loops", before.len());
    assert_eq!(
        net.excluded(),
        HashSet::from([bad]),
        "the dropper, and only it"
    );
    assert_eq!(net.pair.stat(&net.pair.counters.relays_quarantined), 1);
    assert_eq!(net.pair.stat(&net.pair.counters.relays_in_quarantine), 1);
    // From now on no route crosses it, and loops come back again.
    let lost_before = net.pair.stat(&net.pair.counters.loops_lost);
    let after = net.run(60, |mixes, rng| {
        mixes.contains(&bad) || rng.random_bool(0.01)
    });
    assert!(after.len() > 400);
    assert!(after.iter().all(|m| !m.contains(&bad)));
    let lost = net.pair.stat(&net.pair.counters.loops_lost) - lost_before;
    assert!(
        lost < after.len() as u64 / 20,
        "{lost} of {} lost",
        after.len()
    );
    // Every layer-1 mix still carries some of the first 30 s: the choice was random before.
    assert!(before.iter().any(|m| m[0] == bad));
}

#[test]
fn honest_losses_spread_across_mixes_quarantine_nothing() {
    // 10 % loss on every loop whatever its route, 20 minutes at 10 loops/s: ~12,000 loops,
    // ~1,200 losses, ~3,600 tests at a 1e-6 false-alarm rate each.
    for seed in 0..3 {
        let mut net = LoopNet::new(100 + seed);
        let routes = net.run(1200, |_, rng| rng.random_bool(0.1));
        assert!(routes.len() > 10_000);
        assert!(net.pair.stat(&net.pair.counters.loops_lost) > 800);
        assert_eq!(net.pair.stat(&net.pair.counters.relays_quarantined), 0);
    }
    // A layer-1 mix that drops everything makes the loops through the other layers' mixes
    // lossy too (a third of each one's loops crossed it); none of them is blamed.
    let mut net = LoopNet::new(7);
    let bad = net.layer1()[0];
    net.run(600, |mixes, _| mixes.contains(&bad));
    assert_eq!(net.excluded(), HashSet::from([bad]));
    assert_eq!(net.pair.stat(&net.pair.counters.relays_quarantined), 1);
}

#[test]
fn a_quarantine_ends_and_the_mix_is_used_again() {
    let mut net = LoopNet::new(3);
    let bad = net.layer1()[1];
    net.run(30, |mixes, _| mixes.contains(&bad));
    assert_eq!(net.excluded(), HashSet::from([bad]));
    // The mix behaves from now on; it stays out until the quarantine ends...
    let during = net.run(crate::quarantine::QUARANTINE.as_secs() - 40, |_, _| false);
    assert!(during.iter().all(|m| !m.contains(&bad)));
    assert_eq!(net.pair.stat(&net.pair.counters.relays_in_quarantine), 1);
    // ... and is chosen again afterwards, with a clean slate: nothing quarantined again.
    let after = net.run(120, |_, _| false);
    assert!(net.excluded().is_empty());
    assert_eq!(net.pair.stat(&net.pair.counters.relays_in_quarantine), 0);
    let through = after.iter().filter(|m| m[0] == bad).count();
    assert!(through > after.len() / 6, "{through} of {}", after.len());
    assert_eq!(net.pair.stat(&net.pair.counters.relays_quarantined), 1);
}

fn two_relay_message(id: u8, count: u16) -> (OutgoingMessage, Vec<Fragment>) {
    let (mut m, fragments) = message(id, count);
    m.destination.mailbox_relays.push(RelayId([3; 32]));
    (m, fragments)
}

#[test]
fn each_fragment_is_stored_at_both_mailbox_relays_and_leaves_the_outbox_once() {
    let mut pair = Pair::new(200.0);
    let (m, fragments) = two_relay_message(40, 3);
    pair.enqueue(m, encoded(&fragments));
    pair.run_while(|p| p.acked.len() < 3);
    assert_eq!(pair.delivered, [[40; 16]]);
    for index in 0..3 {
        for copy in 0..2 {
            let n = pair
                .relay
                .copies
                .iter()
                .filter(|c| **c == (([40; 16], index), copy))
                .count();
            assert_eq!(n, 1, "fragment {index} copy {copy}");
        }
    }
    let mut acked = pair.acked.clone();
    acked.sort_unstable();
    assert_eq!(acked, [([40; 16], 0), ([40; 16], 1), ([40; 16], 2)]);
    assert_eq!(pair.stat(&pair.counters.acks), 6);
    assert_eq!(pair.sender.unacknowledged(), 0);
}

#[test]
fn with_one_mailbox_relay_dead_a_message_is_delivered_at_once_and_kept_until_the_grace() {
    let mut pair = Pair::new(200.0);
    pair.relay.dead_copy = Some(0);
    let grace = pair.sender.config.timeouts.single_copy_grace;
    let (m, fragments) = two_relay_message(41, 2);
    pair.enqueue(m, encoded(&fragments));
    pair.run_while(|p| p.delivered.is_empty());
    let delivered_at = pair.now;
    assert!(
        delivered_at < pair.at(2_000),
        "delivered through the live relay within a few pulls"
    );
    // The dead relay's copies stay in the outbox and are sent again and again: an ack from
    // the live relay alone is not yet enough to forget the message.
    pair.run_until(delivered_at + grace - Duration::from_secs(1));
    assert!(pair.acked.is_empty(), "settled before the grace");
    assert_eq!(pair.sender.unacknowledged(), 2, "the dead relay's copies");
    let resent = pair.relay.copies.iter().filter(|(_, c)| *c == 0).count();
    assert!(
        resent >= 4,
        "the dead relay's copies were retransmitted ({resent})"
    );
    // The late copies of a dead relay do not shrink the window as congestion would.
    assert!(
        pair.sender.window() >= 16.0,
        "window {}",
        pair.sender.window()
    );
    pair.run_until(delivered_at + grace + Duration::from_secs(1));
    let mut acked = pair.acked.clone();
    acked.sort_unstable();
    assert_eq!(acked, [([41; 16], 0), ([41; 16], 1)]);
    assert_eq!(pair.sender.unacknowledged(), 0);
    assert_eq!(pair.delivered, [[41; 16]], "delivered once");
    assert!(pair.failed.is_empty());
}

#[test]
fn a_message_stored_at_no_mailbox_relay_still_fails_at_its_lifetime() {
    let mut pair = Pair::new(20.0);
    let (m, fragments) = two_relay_message(42, 1);
    pair.relay.lose_always.insert(([42; 16], 0));
    pair.enqueue(m, encoded(&fragments));
    pair.run_until(pair.at(601_000));
    assert_eq!(pair.failed, [[42; 16]]);
    assert!(pair.delivered.is_empty());
    assert!(pair.acked.is_empty());
    assert_eq!(pair.sender.unacknowledged(), 0);
}
