//! [`Transport`]: the handle a homeserver (or the sidecar) holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spore_protocol::bundle::{self, Bundle, BundleBody, FederationRequest, FederationResponse};
use spore_protocol::fragment::{self, Reassembler, ReassemblyLimits};
use spore_protocol::packet::use_surb;
use spore_protocol::params::{FRAGMENT_DATA_SIZE, MAX_HOPS, REPLY_FRAGMENT_DATA_SIZE};
use spore_protocol::{MessageId, SporeAddress};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Rates, TransportConfig};
use crate::directory::{DirectoryView, now_ms};
use crate::driver;
use crate::error::{ClientError, Result, StorageErrorKind};
use crate::events::{Counters, bump};
pub use crate::events::{TransportEvent, TransportStats};
use crate::inbox_entry;
use crate::packets::random_id;
use crate::receiver;
use crate::shared::{Command, PendingResponse, ReplyTable, Shared, stopped};
use crate::store::{InboundLimits, OutgoingMessage, Store};

/// Identifies a request in the inbox until it is [`Transport::ack`]ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(pub u64);

/// A federation request that arrived through Spore, exactly as its origin signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRequest {
    pub id: InboundId,
    /// The mailbox public key (X25519) that sealed every fragment of this request: the one
    /// authenticated fact about who sent it, the key in the sender's Spore address. Bind
    /// `origin` to it before trusting `origin` (the sidecar pins server name <-> sender key).
    pub sender_key: [u8; 32],
    /// The sending homeserver's server name, as its bundle claims (the X-Matrix signature
    /// inside `request` is what proves it, once the signing keys are bound to `sender_key`).
    pub origin: String,
    /// Where the sender can be reached through Spore, if it said; its mailbox key is always
    /// `sender_key` (a bundle naming another key's address is dropped).
    pub sender: Option<SporeAddress>,
    pub request: FederationRequest,
    /// The sender is waiting for an answer: call [`Transport::respond`] before acking.
    pub wants_response: bool,
    /// The origin's send order for us ([`Transport::send`] numbers each destination's
    /// requests 0, 1, 2…): hand sequenced requests to the homeserver in this order. `None`
    /// for requests that wait for an answer, and from senders that predate numbering.
    pub sequence: Option<u64>,
    /// The origin's self-signed `/_matrix/key/v2/server` response, if the bundle carried one
    /// (unverified here: the sidecar's `ServerKeyCache` decides whether to trust it).
    pub server_keys: Option<Vec<u8>>,
}

/// What a bundle carries besides its request ([`Transport::send_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Our homeserver's key response, so that the peer verifies our signatures while we are
    /// offline; `None` for none.
    pub server_keys: Option<Vec<u8>>,
    /// Whether our Spore address (with the capability we give this peer) rides along: the
    /// peer learns from it where to answer and which capability to send through. A peer
    /// that holds it already (pinned or learned from an earlier bundle) does not need it.
    pub sender_address: bool,
}

/// The Spore transport: federation requests in, cover-hidden Sphinx packets out, inbound
/// requests delivered exactly once.
///
/// Cloning is cheap and every clone drives the same transport.
///
/// ```no_run
/// # async fn demo(config: spore_client::TransportConfig, bob: spore_protocol::SporeAddress)
/// # -> Result<(), spore_client::ClientError> {
/// use spore_client::Transport;
/// use spore_protocol::FederationRequest;
///
/// let transport = Transport::start(config).await?;
/// println!("publish this address: {}", transport.address().to_text());
///
/// // Outbound: returns once the request is durably queued.
/// let txn = FederationRequest {
///     method: "PUT".into(),
///     path: "/_matrix/federation/v1/send/1".into(),
///     headers: vec![("Authorization".into(), "X-Matrix origin=...".into())],
///     body: br#"{"pdus":[],"edus":[]}"#.to_vec(),
/// };
/// transport.send(&bob, txn).await?;
///
/// // Inbound: each request exactly once; ack after the homeserver took it.
/// let inbound = transport.incoming().await?;
/// // ... hand `inbound.request` to the homeserver ...
/// transport.ack(inbound.id).await?;
/// transport.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Transport {
    pub(crate) shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// Opens the data dir, loads and verifies the directory, re-queues whatever the outbox
    /// holds from before a crash, and starts sending (cover at once) and pulling.
    pub async fn start(config: TransportConfig) -> Result<Transport> {
        if config.server_name.is_empty() {
            return Err(ClientError::Config("server_name is empty".into()));
        }
        let directory = DirectoryView::load(
            config.directory.clone(),
            config.trust.clone(),
            Some(config.data_dir.join("directory.bin")),
        )
        .await?;
        let dir = directory.current();
        let own = dir.relay(&config.mailbox_relay).ok_or_else(|| {
            ClientError::Directory("our mailbox relay is not in the directory".into())
        })?;
        if !(own.roles.entry && own.roles.mailbox) {
            return Err(ClientError::Directory(
                "our mailbox relay must have the entry and mailbox roles".into(),
            ));
        }
        if let Some(second) = &config.second_mailbox_relay {
            if *second == config.mailbox_relay {
                return Err(ClientError::Config(
                    "the second mailbox relay must differ from the first".into(),
                ));
            }
            let relay = dir.relay(second).ok_or_else(|| {
                ClientError::Directory("our second mailbox relay is not in the directory".into())
            })?;
            if !relay.roles.mailbox {
                return Err(ClientError::Directory(
                    "our second mailbox relay must have the mailbox role".into(),
                ));
            }
        }
        let rates = Rates::resolve(&dir.params, &config.rates);
        for r in [rates.lambda_p, rates.lambda_l, rates.lambda_d] {
            if !(r.is_finite() && r >= 0.0) {
                return Err(ClientError::Config("rates must be non-negative".into()));
            }
        }
        if !(rates.mu.is_finite() && rates.mu > 0.0) || rates.pull_interval.is_zero() {
            return Err(ClientError::Config(
                "mu and the pull interval must be positive".into(),
            ));
        }
        let data_dir = config.data_dir.clone();
        let file_error = |source| ClientError::File {
            path: data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&data_dir).map_err(file_error)?;
        restrict_to_owner(&data_dir).map_err(file_error)?;
        let store = open_store(data_dir.clone()).await?;
        restrict_to_owner(&data_dir).map_err(file_error)?;

        let key = config.mailbox_key.clone();
        let own_destination =
            crate::capabilities::self_capability(&key).destination(&key.mailbox_id());
        // Senders store at every relay the address names, and we pull from each.
        let address = SporeAddress {
            capability: None,
            mailbox_relays: std::iter::once(config.mailbox_relay)
                .chain(config.second_mailbox_relay)
                .collect(),
            mailbox_key: key.public().to_bytes(),
        };
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            key,
            address,
            store,
            directory,
            rates,
            counters: Arc::new(Counters::default()),
            commands,
            inbox_notify: Notify::new(),
            inbox_cursor: tokio::sync::Mutex::new(None),
            replies: Mutex::new(ReplyTable::default()),
            events,
            server_keys: Mutex::new(None),
            shutdown,
            quarantined: Mutex::new(Default::default()),
            capabilities: Default::default(),
            own_destination,
        });
        shared.capabilities.load(&shared.key, &shared.store)?;

        // A crash between storing a message's last fragment and delivering it: finish now.
        receiver::finish_interrupted(&shared).await?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(driver::run(shared.clone(), command_rx)));
        tasks.push(tokio::spawn(receiver::run_sweeper(shared.clone())));
        if let Some(every) = shared.directory.refresh_interval() {
            let s = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut stop = s.shutdown.subscribe();
                loop {
                    tokio::select! {
                        () = stopped(&mut stop) => return,
                        _ = tokio::time::sleep(s.directory.next_refresh(every)) => {}
                    }
                    if let Err(e) = s.directory.refresh().await {
                        tracing::warn!(error = %e, "directory refresh failed; keeping the previous one");
                    }
                }
            }));
        }
        tracing::info!("spore transport started");
        Ok(Transport {
            shared,
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// The address to publish so that others can send to us.
    pub fn address(&self) -> SporeAddress {
        self.shared.address.clone()
    }

    /// The rates in force (directory parameters with overrides applied).
    pub fn rates(&self) -> Rates {
        self.shared.rates
    }

    /// Queues `request` for `destination` and returns once it is durable. It is then sent,
    /// acknowledged fragment by fragment and retransmitted as needed, across restarts; watch
    /// [`Transport::events`] for its fate.
    ///
    /// Each request sent this way carries the next number of this destination's send order
    /// (kept in the store, so a restart continues it): the recipient's sidecar hands them to
    /// its homeserver in the order of the `send` calls that returned.
    pub async fn send(
        &self,
        destination: &SporeAddress,
        request: FederationRequest,
    ) -> Result<MessageId> {
        let server_keys = self.default_server_keys();
        self.send_with_keys(destination, request, server_keys).await
    }

    /// [`Transport::send`] with exactly `server_keys` in the bundle (none for `None`), instead
    /// of what [`Transport::set_server_keys`] set: for a caller that knows which peers already
    /// hold our key response and sends it only to those that do not (the sidecar).
    pub async fn send_with_keys(
        &self,
        destination: &SporeAddress,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
    ) -> Result<MessageId> {
        self.send_with(
            destination,
            request,
            Attachments {
                server_keys,
                sender_address: true,
            },
        )
        .await
    }

    /// [`Transport::send`] with exactly `attachments` in the bundle: for a caller that knows
    /// which peers already hold our key response and our address and leaves them out of
    /// bundles to those that do (the sidecar). Each is a hundred or more bytes that do not
    /// compress, in a fragment that carries under 500.
    pub async fn send_with(
        &self,
        destination: &SporeAddress,
        request: FederationRequest,
        attachments: Attachments,
    ) -> Result<MessageId> {
        self.enqueue(
            destination,
            random_id(),
            request,
            Vec::new(),
            true,
            attachments,
        )
        .await
    }

    fn default_server_keys(&self) -> Option<Vec<u8>> {
        self.shared
            .server_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn enqueue(
        &self,
        destination: &SporeAddress,
        request_id: [u8; 16],
        request: FederationRequest,
        reply_surbs: Vec<Vec<u8>>,
        sequenced: bool,
        attachments: Attachments,
    ) -> Result<MessageId> {
        let origin = self.shared.config.server_name.clone();
        let sender = if attachments.sender_address {
            Some(self.sender_address_for(destination).await?)
        } else {
            None
        };
        let server_keys = attachments.server_keys;
        let to = destination.clone();
        // Built inside the store's transaction when sequenced: the number is sealed in the
        // bundle, and taken only if the message carrying it is queued.
        let build = move |sequence: Option<u64>| {
            // A transaction's id comes from its number, so its bundle need not carry it: the
            // recipient deduplicates transactions by their txnId.
            let request_id = match sequence {
                Some(n)
                    if crate::dedup::transaction_id(&request.method, &request.path).is_some() =>
                {
                    bundle::sequenced_request_id(n)
                }
                _ => request_id,
            };
            let bundle = Bundle {
                origin,
                sender,
                server_keys,
                body: BundleBody::Request {
                    request_id,
                    sequence,
                    request,
                    reply_surbs,
                },
            };
            let padded = bundle::pack(&bundle, FRAGMENT_DATA_SIZE)?;
            let id = random_id();
            let fragments = fragment::split(id, &padded, FRAGMENT_DATA_SIZE)?;
            let message = OutgoingMessage {
                id,
                created_ms: now_ms(),
                destination: to,
                expires_ms: None,
            };
            Ok::<_, ClientError>((message, fragments, ()))
        };
        let store = self.shared.store.clone();
        let mailbox_key = destination.mailbox_key;
        let (message, fragments) = tokio::task::spawn_blocking(move || {
            let (message, fragments, ()) = if sequenced {
                store.put_sequenced(&mailbox_key, |n| build(Some(n)))?
            } else {
                let built = build(None)?;
                store.put_outgoing(&built.0, &built.1)?;
                built
            };
            Ok::<_, ClientError>((message, fragments))
        })
        .await
        .map_err(|_| ClientError::Stopped)??;
        let id = message.id;
        self.shared.store.flush().await?;
        bump(&self.shared.counters.messages_queued);
        let fragments = fragments.iter().map(|f| (f.index, f.encode())).collect();
        self.shared
            .commands
            .send(Command::Enqueue { message, fragments })
            .map_err(|_| ClientError::Stopped)?;
        Ok(id)
    }

    /// Sends `request` with reply SURBs and waits up to `timeout` for the response. For
    /// request/response federation calls (make_join, key queries...) when the peer is online.
    pub async fn request(
        &self,
        destination: &SporeAddress,
        request: FederationRequest,
        timeout: Duration,
    ) -> Result<FederationResponse> {
        let server_keys = self.default_server_keys();
        self.request_with_keys(destination, request, timeout, server_keys)
            .await
    }

    /// [`Transport::request`] with exactly `server_keys` in the bundle, as
    /// [`Transport::send_with_keys`].
    pub async fn request_with_keys(
        &self,
        destination: &SporeAddress,
        request: FederationRequest,
        timeout: Duration,
        server_keys: Option<Vec<u8>>,
    ) -> Result<FederationResponse> {
        let request_id = random_id();
        let (tx, rx) = oneshot::channel();
        let mut surbs = Vec::new();
        let mut surb_ids = Vec::new();
        {
            let dir = self.shared.directory.current();
            let factory = self.shared.factory(&dir);
            let mut rng = rand::rng();
            let mut table = self
                .shared
                .replies
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for _ in 0..self
                .shared
                .config
                .reply_surbs
                .clamp(1, bundle::MAX_REPLY_SURBS)
            {
                let (surb, recovery, id) = factory.reply_surb(&mut rng, destination)?;
                table.surbs.insert(id, (request_id, recovery));
                surbs.push(surb);
                surb_ids.push(id);
            }
            table.pending.insert(
                request_id,
                PendingResponse {
                    tx: Some(tx),
                    responder: destination.mailbox_key,
                    reassembler: Reassembler::new(ReassemblyLimits {
                        max_messages: 4,
                        max_bytes: 4 << 20,
                        ttl: timeout,
                        max_completed: 4,
                    }),
                },
            );
        }
        let result = async {
            // Always with our address, wherever the peer holds it: a large answer comes back
            // as a message to the address the request names, also from a peer that lost (or
            // never had) what we sent it before.
            let attachments = Attachments {
                server_keys,
                sender_address: true,
            };
            self.enqueue(destination, request_id, request, surbs, false, attachments)
                .await?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(_)) => Err(ClientError::Stopped),
                Err(_) => Err(ClientError::Timeout),
            }
        }
        .await;
        let mut table = self
            .shared
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        table.pending.remove(&request_id);
        for id in surb_ids {
            table.surbs.remove(&id);
        }
        result
    }

    /// The next inbound request not yet handed out by this `Transport`. Requests stay in the
    /// durable inbox until [`Transport::ack`]: after a restart, unacked ones come again.
    pub async fn incoming(&self) -> Result<InboundRequest> {
        let mut stop = self.shared.shutdown.subscribe();
        loop {
            let notified = self.shared.inbox_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut cursor = self.shared.inbox_cursor.lock().await;
                let store = self.shared.store.clone();
                let after = *cursor;
                let next = tokio::task::spawn_blocking(move || store.inbox_after(after))
                    .await
                    .map_err(|_| ClientError::Stopped)??;
                if let Some((id, bytes)) = next {
                    *cursor = Some(id);
                    return decode_inbound(id, &bytes);
                }
            }
            if *stop.borrow_and_update() {
                return Err(ClientError::Stopped);
            }
            tokio::select! {
                _ = &mut notified => {}
                () = stopped(&mut stop) => return Err(ClientError::Stopped),
            }
        }
    }

    /// Removes a request from the inbox, durably: it will never be handed out again.
    pub async fn ack(&self, id: InboundId) -> Result<()> {
        match self.ack_many(&[id]).await? {
            0 => Err(ClientError::UnknownInbound),
            _ => Ok(()),
        }
    }

    /// [`Transport::ack`] for several requests, in one transaction and one flush: for an
    /// application that hands requests on in batches (a returning homeserver draining
    /// thousands). Returns how many were still in the inbox; unknown ids are skipped.
    pub async fn ack_many(&self, ids: &[InboundId]) -> Result<usize> {
        let store = self.shared.store.clone();
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let removed = tokio::task::spawn_blocking(move || store.inbox_remove_many(&ids))
            .await
            .map_err(|_| ClientError::Stopped)??;
        self.shared.store.flush().await?;
        Ok(removed)
    }

    /// Answers an inbound request. Call before [`Transport::ack`].
    ///
    /// An answer that fits the reply SURBs the request carried goes back on them (one trip
    /// through the mixes, no acks: the requester retries the whole request if one is lost).
    /// A larger one (a `send_join` with thousands of state events, `/state`, backfill, media)
    /// is queued durably as an ordinary store-and-forward message to the requester's mailbox,
    /// the address its authenticated bundle named: fragmented, acknowledged fragment by
    /// fragment, retransmitted and reassembled like a transaction, and matched to the waiting
    /// `request()` by its request id. Beyond [`TransportConfig::max_reply_bytes`] (or the
    /// largest message the protocol carries) it is refused with
    /// [`ClientError::CannotRespond`], and the caller may answer a short error instead.
    ///
    /// [`TransportConfig::max_reply_bytes`]: crate::TransportConfig::max_reply_bytes
    pub async fn respond(&self, id: InboundId, response: FederationResponse) -> Result<()> {
        self.respond_until(id, response, None).await
    }

    /// [`Transport::respond`] for a caller that stops waiting at `deadline_ms` (Unix ms): an
    /// answer by store-and-forward that is not stored at the requester's mailbox by then is
    /// dropped from the outbox instead of being retransmitted for the whole message
    /// lifetime (counted in `answers_abandoned`). Answers on reply SURBs leave at once and
    /// are not affected.
    pub async fn respond_until(
        &self,
        id: InboundId,
        response: FederationResponse,
        deadline_ms: Option<u64>,
    ) -> Result<()> {
        let store = self.shared.store.clone();
        let bytes = tokio::task::spawn_blocking(move || store.inbox_get(id.0))
            .await
            .map_err(|_| ClientError::Stopped)??
            .ok_or(ClientError::UnknownInbound)?;
        let (sender_key, request) = inbox_entry::decode(&bytes)?;
        let requester = request.sender.clone();
        let BundleBody::Request {
            request_id,
            reply_surbs,
            ..
        } = request.body
        else {
            return Err(ClientError::Corrupt("inbox bundle"));
        };
        if reply_surbs.is_empty() {
            return Err(ClientError::CannotRespond(
                "the request carries no reply SURBs",
            ));
        }
        let reply = Bundle {
            origin: self.shared.config.server_name.clone(),
            sender: None,
            server_keys: None,
            body: BundleBody::Response {
                request_id,
                response,
            },
        };
        // Compressing a large answer takes a while: off the runtime's threads.
        let (reply, fragments) = tokio::task::spawn_blocking(move || {
            let padded = pack_reply(&reply, REPLY_FRAGMENT_DATA_SIZE)?;
            let fragments = fragment::split(random_id(), &padded, REPLY_FRAGMENT_DATA_SIZE)?;
            Ok::<_, ClientError>((reply, fragments))
        })
        .await
        .map_err(|_| ClientError::Stopped)??;
        if fragments.len() > reply_surbs.len() {
            return self
                .respond_by_mailbox(sender_key, requester, reply, deadline_ms)
                .await;
        }
        let mut packets = Vec::with_capacity(fragments.len());
        for (f, surb) in fragments.iter().zip(&reply_surbs) {
            let (first_hop, packet) = use_surb(surb, &f.encode())?;
            if first_hop != self.shared.own_relay() {
                return Err(ClientError::CannotRespond(
                    "a reply SURB does not start at our relay",
                ));
            }
            packets.push(packet);
        }
        for packet in packets {
            self.shared
                .commands
                .send(Command::Reply { packet })
                .map_err(|_| ClientError::Stopped)?;
        }
        Ok(())
    }

    /// Queues `reply` (an answer too large for its request's reply SURBs) as a forward
    /// message to the requester's mailbox. The address is the one the request's bundle named
    /// as its sender, which the receiver checked against the key that sealed it
    /// (`sender_key`): an answer never goes to an address the requester did not prove.
    async fn respond_by_mailbox(
        &self,
        sender_key: [u8; 32],
        requester: Option<SporeAddress>,
        reply: Bundle,
        deadline_ms: Option<u64>,
    ) -> Result<()> {
        let BundleBody::Response { response, .. } = &reply.body else {
            return Err(ClientError::Corrupt("reply bundle"));
        };
        if response.body.len() > self.shared.config.max_reply_bytes {
            return Err(ClientError::CannotRespond(
                "the response is larger than max_reply_bytes",
            ));
        }
        let Some(requester) = requester.filter(|a| a.mailbox_key == sender_key) else {
            return Err(ClientError::CannotRespond(
                "the response is larger than the reply SURBs carry, and the request names no address to send it to",
            ));
        };
        let store = self.shared.store.clone();
        let to = requester.clone();
        let (message, fragments) = tokio::task::spawn_blocking(move || {
            let padded = pack_reply(&reply, FRAGMENT_DATA_SIZE)?;
            let id = random_id();
            let fragments = fragment::split(id, &padded, FRAGMENT_DATA_SIZE)?;
            let message = OutgoingMessage {
                id,
                created_ms: now_ms(),
                destination: to,
                expires_ms: deadline_ms,
            };
            store.put_outgoing(&message, &fragments)?;
            Ok::<_, ClientError>((message, fragments))
        })
        .await
        .map_err(|_| ClientError::Stopped)??;
        self.shared.store.flush().await?;
        bump(&self.shared.counters.messages_queued);
        bump(&self.shared.counters.replies_by_mailbox);
        tracing::debug!(
            fragments = fragments.len(),
            "answer too large for the reply SURBs; sent to the requester's mailbox"
        );
        let fragments = fragments.iter().map(|f| (f.index, f.encode())).collect();
        self.shared
            .commands
            .send(Command::Enqueue { message, fragments })
            .map_err(|_| ClientError::Stopped)?;
        Ok(())
    }

    /// Sets the key response (our homeserver's `/_matrix/key/v2/server`) that every request
    /// sent from now on carries, so that peers can verify us while we are offline.
    pub fn set_server_keys(&self, keys: Option<Vec<u8>>) {
        *self
            .shared
            .server_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Delivered / failed notifications for sent messages.
    pub fn events(&self) -> broadcast::Receiver<TransportEvent> {
        self.shared.events.subscribe()
    }

    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Messages still in the outbox (not every fragment acknowledged yet: by both mailbox
    /// relays when the destination names two, unless one stayed silent past
    /// [`crate::Timeouts::single_copy_grace`]).
    pub fn outbox_len(&self) -> usize {
        self.shared.store.outbox_len()
    }

    /// Requests in the inbox (received, not yet acked).
    pub fn inbox_len(&self) -> usize {
        self.shared.store.inbox_len()
    }

    /// Stops sending and pulling, flushes the store and waits for every task.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        let _ = self.shared.store.flush().await;
        tracing::info!("spore transport stopped");
    }

    /// Stops every task at once, without flushing anything: the closest an in-process test
    /// gets to a crash. Whatever `send`/`ack` had not yet returned for may be lost.
    pub async fn abort(&self) {
        self.shared.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // The last handle going away stops the tasks (they hold `shared`, not `tasks`).
        if Arc::strong_count(&self.tasks) == 1 {
            self.shared.shutdown.send_replace(true);
        }
    }
}

/// Makes `path` and everything under it readable by its owner only (directories 0700, files
/// 0600): the store holds queued and received messages and the dedup history. The store
/// creates files later too (snapshots); they are inside the 0700 directory.
#[cfg(unix)]
fn restrict_to_owner(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            restrict_to_owner(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

/// Opens the store, waiting a little if a previous instance in this process still holds the
/// lock (a transport that was just aborted releases it once its last task is dropped).
async fn open_store(data_dir: std::path::PathBuf) -> Result<Store> {
    let mut attempt = 0;
    loop {
        let dir = data_dir.clone();
        let result =
            tokio::task::spawn_blocking(move || Store::open(&dir, InboundLimits::default()))
                .await
                .map_err(|_| ClientError::Stopped)?;
        match result {
            Ok(store) => return Ok(store),
            Err(ClientError::Storage(e)) if e.kind() == StorageErrorKind::Io && attempt < 50 => {
                tracing::debug!(error = %e, "store is locked; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`bundle::pack`] for an answer: one over the largest size class is an answer we cannot
/// give (the caller sends a short error instead), not a bug.
fn pack_reply(reply: &Bundle, data_size: usize) -> Result<Vec<u8>> {
    bundle::pack(reply, data_size).map_err(|e| match e {
        spore_protocol::Error::ApiMisuse(spore_protocol::ApiMisuse::MessageTooLarge { .. }) => {
            ClientError::CannotRespond("the response is larger than the largest Spore message")
        }
        e => e.into(),
    })
}

fn decode_inbound(id: u64, bytes: &[u8]) -> Result<InboundRequest> {
    let (sender_key, bundle) = inbox_entry::decode(bytes)?;
    match bundle.body {
        BundleBody::Request {
            request,
            reply_surbs,
            sequence,
            ..
        } => Ok(InboundRequest {
            id: InboundId(id),
            sender_key,
            origin: bundle.origin,
            sender: bundle.sender,
            request,
            wants_response: !reply_surbs.is_empty(),
            sequence,
            server_keys: bundle.server_keys,
        }),
        _ => Err(ClientError::Corrupt("inbox bundle")),
    }
}

// A forward route is entry + mixes + mailbox; reply SURBs reuse it, so it must fit a SURB.
const _: () = assert!(spore_protocol::params::FORWARD_HOPS <= MAX_HOPS);
