//! The link driver: the thin tokio task around the [`Sender`]. It owns the Noise link to our
//! mailbox relay, the build threads, the clock and the durable store writes; the sender decides
//! everything else (what to send and when, acks, retransmissions, the pull conversation).
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
}

impl PacketSource for FactorySource {
    type Recovery = SurbRecovery;

    fn fragment(
        &mut self,
        rng: &mut StdRng,
        destination: &SporeAddress,
        fragment: &[u8],
    ) -> Result<BuiltPacket> {
        let dir = self.shared.directory.current();
        self.shared
            .factory(&dir)
            .fragment(rng, destination, fragment)
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
        self.shared.capabilities.next_ops()
    }
}

struct Link {
    reader: FrameReader,
    writer: FrameWriter,
}

struct Driver {
    shared: Arc<Shared>,
    sender: Sender<FactorySource>,
    pool: Option<BuildPool>,
    link: Option<Link>,
    connect_at: Instant,
    connect_backoff: Duration,
    processed_tx: mpsc::UnboundedSender<(u64, Processed)>,
}

pub(crate) async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let rng = StdRng::from_rng(&mut rand::rng());
    let now = Instant::now();
    let (processed_tx, mut processed_rx) = mpsc::unbounded_channel();
    let threads = shared.config.build_threads;
    let pool = (threads > 0)
        .then(|| BuildPool::start(&shared, threads, BUILD_CAPACITY))
        .flatten();
    let config = SenderConfig {
        rates: shared.rates,
        timeouts: shared.config.timeouts,
        server_name: shared.config.server_name.clone(),
        address: shared.address.clone(),
        build_capacity: pool.as_ref().map(|_| BUILD_CAPACITY),
    };
    let source = FactorySource {
        shared: shared.clone(),
    };
    let sender = Sender::new(config, source, rng, shared.counters.clone(), now);
    let mut driver = Driver {
        shared: shared.clone(),
        sender,
        pool,
        link: None,
        connect_at: now,
        connect_backoff: Duration::from_millis(100),
        processed_tx,
    };
    driver.load_outbox().await;

    let mut stop = shared.shutdown.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        if driver.link.is_none() && Instant::now() >= driver.connect_at {
            driver.connect().await;
        }
        driver.feed_pool();
        let timeout = tokio::time::Instant::from_std(driver.sender.poll_timeout());
        let reconnect_at = tokio::time::Instant::from_std(driver.connect_at);
        let connected = driver.link.is_some();
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(timeout) => driver.sender.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(reconnect_at), if !connected => {}
            frame = read_next(&mut driver.link) => match frame {
                Ok(frame) => driver.sender.handle_frame(frame, Instant::now()),
                Err(e) => driver.drop_link(&e),
            },
            Some(cmd) = commands.recv() => match cmd {
                Command::Enqueue { message, fragments } => {
                    driver.sender.handle_enqueue(message, fragments, Instant::now(), now_ms());
                }
                Command::Reply { packet } => driver.sender.handle_reply(packet),
            },
            Some((pull, processed)) = processed_rx.recv() => {
                for nonce in &processed.loops {
                    driver.sender.handle_loop_returned(nonce, Instant::now());
                }
                driver.sender.handle_processed(pull, processed.handles, Instant::now());
            }
            Some(built) = next_built(&mut driver.pool) => driver.sender.handle_built(built),
        }
        driver.carry_out().await;
    }
    // Nothing to flush here: acks are advisory, everything else is flushed where it matters.
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

impl Driver {
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
            self.sender
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
        while let Some(job) = self.sender.poll_build() {
            if let Err(job) = pool.submit(job) {
                self.sender.handle_build_refused(job);
                break;
            }
        }
    }

    /// Does what the sender asked (events), then writes the frames it hands out, until it has
    /// nothing more.
    async fn carry_out(&mut self) {
        loop {
            while let Some(event) = self.sender.poll_event() {
                self.on_event(event);
            }
            let Some(frame) = self.sender.poll_transmit() else {
                return;
            };
            let ok = self.write(&frame).await;
            self.sender.handle_sent(ok);
        }
    }

    fn on_event(&mut self, event: SenderEvent) {
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
            SenderEvent::Pulled { pull, items } => self.on_pulled(pull, items),
            SenderEvent::CloseLink(why) => {
                if self.link.take().is_some() {
                    tracing::info!(why, "closing the link to the mailbox relay; reconnecting");
                }
                self.connect_later();
            }
        }
    }

    /// Replies are matched here; forward items go to the receiver, which persists them
    /// before the sender deletes anything.
    fn on_pulled(&mut self, pull: u64, items: Vec<MailboxItem>) {
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
            self.sender.handle_processed(pull, handles, Instant::now());
            return;
        }
        let shared = self.shared.clone();
        let done = self.processed_tx.clone();
        tokio::spawn(async move {
            let mut processed = receiver::process_forward(&shared, forward).await;
            processed.handles.extend(handles);
            let _ = done.send((pull, processed));
        });
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
                self.sender.handle_link_up(Instant::now());
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
        self.sender.handle_link_down();
        self.connect_later();
    }

    /// Writes one frame; on failure the link is dropped (the caller tells the sender).
    async fn write(&mut self, frame: &Frame) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        match link.writer.write_frame(frame).await {
            Ok(()) => true,
            Err(e) => {
                if self.link.take().is_some() {
                    tracing::info!(error = %e, "link to the mailbox relay lost; reconnecting");
                }
                self.connect_later();
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
