//! The link driver: the thin tokio task around the [`Sender`]. It owns the Noise link to our
//! mailbox relay, the build threads, the clock and the durable store writes; the sender decides
//! everything else (what to send and when, acks, retransmissions, the pull conversation).
//! With a second mailbox relay it also owns a second link, driven by a second, pull-only
//! sender: links are opened off the driver's task, so a relay that does not answer never
//! delays the other link's frames.
//!
//! One loop: sleep until the sender's next timeout or until something arrives (a frame, an
//! API command, a built packet, a processed pull), hand it to the sender with `now`, then carry
//! out what the sender asks (store writes, events, replies, the receiver) and write the frames
//! it hands out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use spore_protocol::bundle::{self, BundleBody};
use spore_protocol::fragment::Fragment;
use spore_protocol::link::{Frame, MailboxItem};
use spore_protocol::packet::SurbRecovery;
use spore_protocol::params::REPLY_FRAGMENT_DATA_SIZE;
use spore_protocol::{RelayId, SporeAddress};
use tokio::sync::mpsc;

use crate::builder::BuildPool;
use crate::config::Rates;
use crate::directory::now_ms;
use crate::error::Result;
use crate::events::TransportEvent;
use crate::link::{self, FrameReader, FrameWriter, LinkError};
use crate::packets::{BuiltPacket, is_ack};
use crate::receiver::{self, Processed};
use crate::sender::{BUILD_CAPACITY, Built, PacketSource, Sender, SenderConfig, SenderEvent};
use crate::shared::{Command, Shared, stopped};

/// Packets built with the Sphinx factory against the current directory.
struct FactorySource {
    shared: Arc<Shared>,
    /// Which mailbox relay link this source's sender drives (0 first, 1 second): each link
    /// registers our capabilities with its own relay.
    link: usize,
}

impl PacketSource for FactorySource {
    type Recovery = SurbRecovery;

    fn fragment(
        &mut self,
        rng: &mut StdRng,
        destination: &SporeAddress,
        copy: u8,
        fragment: &[u8],
    ) -> Result<BuiltPacket> {
        let dir = self.shared.directory.current();
        self.shared
            .factory(&dir)
            .fragment(rng, destination, copy, fragment)
    }

    fn drop_cover(&mut self, rng: &mut StdRng) -> Result<BuiltPacket> {
        let dir = self.shared.directory.current();
        self.shared.factory(&dir).drop_cover(rng)
    }

    fn is_ack(&self, recovery: &SurbRecovery, payload: &[u8]) -> bool {
        is_ack(recovery, payload)
    }

    fn set_excluded(&mut self, excluded: HashSet<RelayId>) {
        if let Ok(mut q) = self.shared.quarantined.lock() {
            *q = excluded;
        }
    }

    fn capability_ops(&mut self) -> Vec<spore_protocol::CapabilityOp> {
        self.shared.capabilities.next_ops(self.link)
    }
}

struct Link {
    reader: FrameReader,
    writer: FrameWriter,
}

/// Which of our mailbox relays a link goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The first mailbox relay, also our entry relay: packets, pulls and deletes.
    First,
    /// The second mailbox relay: pulls and deletes only.
    Second,
}

/// One link to one of our mailbox relays and the sender that speaks on it. The second
/// link's sender has no send streams (all rates zero) and an empty outbox: it only pulls,
/// every pull interval, and deletes a fixed time after each pull, so its schedule, like the
/// first link's, is made of timers only.
struct RelayLink {
    side: Side,
    relay: RelayId,
    sender: Sender<FactorySource>,
    link: Option<Link>,
    /// A connection attempt is running (off the driver's task, so that a relay that does not
    /// answer never holds up the other link's frames).
    connecting: bool,
    connect_at: Instant,
    connect_backoff: Duration,
    /// Dial this instead of the directory's address.
    address_override: Option<String>,
}

struct Driver {
    shared: Arc<Shared>,
    first: RelayLink,
    second: Option<RelayLink>,
    pool: Option<BuildPool>,
    processed_tx: mpsc::UnboundedSender<(Side, u64, Processed)>,
    connected_tx: mpsc::UnboundedSender<(Side, std::result::Result<Link, LinkError>)>,
}

pub(crate) async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let now = Instant::now();
    let (processed_tx, mut processed_rx) = mpsc::unbounded_channel();
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let threads = shared.config.build_threads;
    let pool = (threads > 0)
        .then(|| BuildPool::start(&shared, threads, BUILD_CAPACITY))
        .flatten();
    let config = SenderConfig {
        rates: shared.rates,
        timeouts: shared.config.timeouts,
        server_name: shared.config.server_name.clone(),
        // Loops come back through our own capability, like acks.
        address: shared
            .address
            .with_capability(Some(crate::capabilities::self_capability(&shared.key))),
        build_capacity: pool.as_ref().map(|_| BUILD_CAPACITY),
        catch_up: shared.config.catch_up,
    };
    let second = shared.config.second_mailbox_relay.map(|relay| {
        let pull_only = SenderConfig {
            rates: Rates {
                lambda_p: 0.0,
                lambda_l: 0.0,
                lambda_d: 0.0,
                ..shared.rates
            },
            build_capacity: None,
            ..config.clone()
        };
        let source = FactorySource {
            shared: shared.clone(),
            link: 1,
        };
        let sender_rng = StdRng::from_rng(&mut rng);
        RelayLink::new(
            Side::Second,
            relay,
            None,
            Sender::new(pull_only, source, sender_rng, shared.counters.clone(), now),
            now,
        )
    });
    let source = FactorySource {
        shared: shared.clone(),
        link: 0,
    };
    let sender = Sender::new(config, source, rng, shared.counters.clone(), now);
    let mut driver = Driver {
        shared: shared.clone(),
        first: RelayLink::new(
            Side::First,
            shared.own_relay(),
            shared.config.relay_address_override.clone(),
            sender,
            now,
        ),
        second,
        pool,
        processed_tx,
        connected_tx,
    };
    driver.load_outbox().await;

    let mut stop = shared.shutdown.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        driver.start_connects();
        driver.feed_pool();
        let mut timeout = driver.first.sender.poll_timeout();
        let mut reconnect_at = driver.first.reconnect_at();
        if let Some(second) = &driver.second {
            timeout = timeout.min(second.sender.poll_timeout());
            reconnect_at = [reconnect_at, second.reconnect_at()]
                .into_iter()
                .flatten()
                .min();
        }
        let timeout = tokio::time::Instant::from_std(timeout);
        let reconnect_at = reconnect_at.map(tokio::time::Instant::from_std);
        let (first_link, second_link) = match &mut driver.second {
            Some(second) => (&mut driver.first.link, Some(&mut second.link)),
            None => (&mut driver.first.link, None),
        };
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(timeout) => {
                let now = Instant::now();
                driver.first.sender.handle_timeout(now);
                if let Some(second) = driver.second.as_mut() {
                    second.sender.handle_timeout(now);
                }
            }
            _ = sleep_until_some(reconnect_at) => {}
            frame = read_next(first_link) => driver.on_frame(Side::First, frame),
            frame = read_next_of(second_link) => driver.on_frame(Side::Second, frame),
            Some((side, result)) = connected_rx.recv() => driver.on_connected(side, result),
            Some(cmd) = commands.recv() => match cmd {
                Command::Enqueue { message, fragments } => {
                    driver.first.sender.handle_enqueue(message, fragments, Instant::now(), now_ms());
                }
                Command::Reply { packet } => driver.first.sender.handle_reply(packet),
            },
            Some((side, pull, processed)) = processed_rx.recv() => {
                // Loops come back to either mailbox; only the first link's sender sends them.
                for nonce in &processed.loops {
                    driver.first.sender.handle_loop_returned(nonce, Instant::now());
                }
                if let Some(link) = driver.side(side) {
                    link.sender.handle_processed(pull, processed.handles, Instant::now());
                }
            }
            Some(built) = next_built(&mut driver.pool) => driver.first.sender.handle_built(built),
        }
        driver.carry_out(Side::First).await;
        if driver.second.is_some() {
            driver.carry_out(Side::Second).await;
        }
    }
    // Nothing to flush here: acks are advisory, everything else is flushed where it matters.
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_built(pool: &mut Option<BuildPool>) -> Option<Built<SurbRecovery>> {
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

async fn read_next_of(link: Option<&mut Option<Link>>) -> Result<Frame, LinkError> {
    match link {
        Some(l) => read_next(l).await,
        None => std::future::pending().await,
    }
}

impl RelayLink {
    fn new(
        side: Side,
        relay: RelayId,
        address_override: Option<String>,
        sender: Sender<FactorySource>,
        now: Instant,
    ) -> Self {
        Self {
            side,
            relay,
            sender,
            link: None,
            connecting: false,
            connect_at: now,
            connect_backoff: Duration::from_millis(100),
            address_override,
        }
    }

    /// When a reconnection is due, while the link is down and no attempt is running.
    fn reconnect_at(&self) -> Option<Instant> {
        (self.link.is_none() && !self.connecting).then_some(self.connect_at)
    }

    fn connect_later(&mut self) {
        self.connect_at = Instant::now() + self.connect_backoff;
        self.connect_backoff = (self.connect_backoff * 2).min(Duration::from_secs(5));
    }

    fn drop_link(&mut self, why: &dyn std::fmt::Display) {
        if self.link.take().is_some() {
            tracing::info!(relay = self.side.name(), error = %why, "link to a mailbox relay lost; reconnecting");
        }
        self.sender.handle_link_down();
        self.connect_later();
    }
}

impl Side {
    /// For logs: which of our relays, never its address or id.
    fn name(self) -> &'static str {
        match self {
            Side::First => "first",
            Side::Second => "second",
        }
    }
}

impl Driver {
    fn side(&mut self, side: Side) -> Option<&mut RelayLink> {
        match side {
            Side::First => Some(&mut self.first),
            Side::Second => self.second.as_mut(),
        }
    }

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
            self.first
                .sender
                .handle_enqueue(message, fragments, Instant::now(), now_ms());
        }
        if n > 0 {
            tracing::info!(messages = n, "re-queued messages from the outbox");
        }
    }

    /// Hands the sender's build jobs to the build threads while they take them.
    fn feed_pool(&mut self) {
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        while let Some(job) = self.first.sender.poll_build() {
            if let Err(job) = pool.submit(job) {
                self.first.sender.handle_build_refused(job);
                break;
            }
        }
    }

    fn on_frame(&mut self, side: Side, frame: Result<Frame, LinkError>) {
        let Some(link) = self.side(side) else {
            return;
        };
        match frame {
            Ok(frame) => link.sender.handle_frame(frame, Instant::now()),
            Err(e) => link.drop_link(&e),
        }
    }

    /// Does what a link's sender asked (events), then writes the frames it hands out, until
    /// it has nothing more.
    async fn carry_out(&mut self, side: Side) {
        loop {
            let Some(link) = self.side(side) else {
                return;
            };
            let mut events = Vec::new();
            while let Some(event) = link.sender.poll_event() {
                events.push(event);
            }
            let frame = if events.is_empty() {
                link.sender.poll_transmit()
            } else {
                None
            };
            if !events.is_empty() {
                for event in events {
                    self.on_event(side, event);
                }
                continue;
            }
            let Some(frame) = frame else {
                return;
            };
            let ok = Self::write(link, &frame).await;
            link.sender.handle_sent(ok);
        }
    }

    fn on_event(&mut self, side: Side, event: SenderEvent) {
        match event {
            // Store writes run off the link's task: the link's schedule must not wait for
            // the disk (a link observer would see when acks come in).
            SenderEvent::Acked((id, index)) => {
                let store = self.shared.store.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.ack_fragment(&id, index) {
                        tracing::warn!(error = %e, "cannot record an ack; the fragment may be re-sent");
                    }
                });
            }
            SenderEvent::Delivered(id) => {
                let _ = self.shared.events.send(TransportEvent::Delivered(id));
            }
            SenderEvent::Failed(id) => {
                if let Err(e) = self.shared.store.remove_outgoing(&id) {
                    tracing::warn!(error = %e, "cannot drop a failed message from the outbox");
                }
                let _ = self.shared.events.send(TransportEvent::Failed(id));
            }
            SenderEvent::Pulled { pull, items } => self.on_pulled(side, pull, items),
            SenderEvent::CloseLink(why) => {
                if let Some(link) = self.side(side) {
                    if link.link.take().is_some() {
                        tracing::info!(
                            relay = side.name(),
                            why,
                            "closing the link to a mailbox relay; reconnecting"
                        );
                    }
                    link.connect_later();
                }
            }
        }
    }

    /// Replies are matched here; forward items go to the receiver, which persists them
    /// before the sender deletes anything. Items from both mailbox relays meet in the same
    /// store, which keeps each fragment and each request once.
    fn on_pulled(&mut self, side: Side, pull: u64, items: Vec<MailboxItem>) {
        let mut handles = Vec::with_capacity(items.len());
        let mut forward = Vec::new();
        for item in items {
            if on_reply(&self.shared, &item) {
                handles.push(item.handle);
            } else {
                forward.push(item);
            }
        }
        if forward.is_empty() {
            if let Some(link) = self.side(side) {
                link.sender.handle_processed(pull, handles, Instant::now());
            }
            return;
        }
        let shared = self.shared.clone();
        let done = self.processed_tx.clone();
        tokio::spawn(async move {
            let mut processed = receiver::process_forward(&shared, forward).await;
            processed.handles.extend(handles);
            let _ = done.send((side, pull, processed));
        });
    }

    /// Starts a connection attempt on every link that is down and due.
    fn start_connects(&mut self) {
        let now = Instant::now();
        let shared = self.shared.clone();
        let tx = self.connected_tx.clone();
        for link in std::iter::once(&mut self.first).chain(self.second.as_mut()) {
            if link.link.is_some() || link.connecting || now < link.connect_at {
                continue;
            }
            let dir = shared.directory.current();
            let Some(relay) = dir.relay(&link.relay) else {
                tracing::warn!(
                    relay = link.side.name(),
                    "our mailbox relay is not in the current directory"
                );
                link.connect_later();
                continue;
            };
            let address = link
                .address_override
                .clone()
                .unwrap_or_else(|| relay.address.clone());
            let link_key = relay.link_key;
            let secret = shared.key.secret_bytes();
            let timeout = shared.config.timeouts.connect;
            let side = link.side;
            let tx = tx.clone();
            link.connecting = true;
            tokio::spawn(async move {
                let result = link::connect(&address, &secret, link_key, timeout)
                    .await
                    .map(|(reader, writer)| Link { reader, writer });
                let _ = tx.send((side, result));
            });
        }
    }

    fn on_connected(&mut self, side: Side, result: std::result::Result<Link, LinkError>) {
        let Some(link) = self.side(side) else {
            return;
        };
        link.connecting = false;
        match result {
            Ok(l) => {
                tracing::info!(relay = side.name(), "link to a mailbox relay is up");
                link.link = Some(l);
                link.connect_backoff = Duration::from_millis(100);
                link.sender.handle_link_up(Instant::now());
            }
            Err(e) => {
                tracing::debug!(relay = side.name(), error = %e, "cannot reach a mailbox relay");
                link.connect_later();
            }
        }
    }

    /// Writes one frame; on failure the link is dropped (the caller tells the sender).
    async fn write(link: &mut RelayLink, frame: &Frame) -> bool {
        let Some(l) = link.link.as_mut() else {
            return false;
        };
        match l.writer.write_frame(frame).await {
            Ok(()) => true,
            Err(e) => {
                if link.link.take().is_some() {
                    tracing::info!(relay = link.side.name(), error = %e, "link to a mailbox relay lost; reconnecting");
                }
                link.connect_later();
                false
            }
        }
    }
}

/// A fragment of a response to one of our `request()`s: fed to its request's reassembler.
/// Returns whether the item was one (then it may be deleted).
fn on_reply(shared: &Shared, item: &MailboxItem) -> bool {
    let mut table = shared.replies.lock().unwrap_or_else(|e| e.into_inner());
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
