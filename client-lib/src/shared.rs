//! The state the handle, the link driver, the build threads and the receiver share: one
//! `Arc<Shared>` with the configuration, the store, the directory view, the counters and the
//! channels between them. Nothing here decides anything; the sender (`sender.rs`) does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use spore_protocol::bundle::FederationResponse;
use spore_protocol::fragment::Reassembler;
use spore_protocol::packet::SurbRecovery;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::config::{Rates, TransportConfig};
use crate::directory::{DirectoryView, now_unix};
use crate::events::{Counters, TransportEvent};
use crate::packets::PacketFactory;
use crate::store::{OutgoingMessage, Store};

/// What the API side asks of the link driver.
pub(crate) enum Command {
    /// A message is durably in the outbox: start sending its fragments.
    Enqueue {
        message: OutgoingMessage,
        fragments: Vec<(u16, Vec<u8>)>,
    },
    /// A ready-built reply packet (on somebody's reply SURB).
    Reply { packet: Vec<u8> },
}

/// A `request()` waiting for its response.
pub(crate) struct PendingResponse {
    pub tx: Option<oneshot::Sender<FederationResponse>>,
    /// The mailbox key the request was sealed to: an answer too large for the reply SURBs
    /// comes back as a forward message, and only one sealed by this key is taken (anyone who
    /// knows our address can send us a `Response` bundle; only the responder holds this key).
    pub responder: [u8; 32],
    pub reassembler: Reassembler,
}

/// Reply SURBs we handed out and the requests waiting on them.
#[derive(Default)]
pub(crate) struct ReplyTable {
    pub surbs: HashMap<[u8; 16], ([u8; 16], SurbRecovery)>,
    pub pending: HashMap<[u8; 16], PendingResponse>,
}

/// State shared by the handle and the tasks.
pub(crate) struct Shared {
    pub config: TransportConfig,
    pub key: MailboxKey,
    pub address: SporeAddress,
    pub store: Store,
    pub directory: DirectoryView,
    pub rates: Rates,
    pub counters: Arc<Counters>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub inbox_notify: Notify,
    pub inbox_cursor: tokio::sync::Mutex<Option<u64>>,
    pub replies: Mutex<ReplyTable>,
    pub events: broadcast::Sender<TransportEvent>,
    /// Our homeserver's self-signed key response, attached to every request bundle we send.
    pub server_keys: Mutex<Option<Vec<u8>>>,
    pub shutdown: watch::Sender<bool>,
    /// Mixes the sender quarantined (route choice): the packet factory avoids them, on the
    /// driver's task and on the build threads alike.
    pub quarantined: Mutex<HashSet<RelayId>>,
    /// Capabilities we gave, for the pull requests to register (`capabilities.rs`).
    pub capabilities: crate::capabilities::CapabilityCycle,
    /// Where our own packets end (acks, replies, loops): our mailbox through our own
    /// capability, not the first-contact share strangers can fill.
    pub own_destination: spore_protocol::MailboxId,
}

impl Shared {
    pub fn factory<'a>(&'a self, directory: &'a spore_protocol::Directory) -> PacketFactory<'a> {
        PacketFactory {
            directory,
            epoch: directory.epoch_at(now_unix()),
            rates: &self.rates,
            own_relay: self.config.mailbox_relay,
            own_mailbox: self.own_destination,
            excluded: self
                .quarantined
                .lock()
                .map(|q| q.clone())
                .unwrap_or_default(),
            own_key: self.key.secret(),
        }
    }

    pub fn own_relay(&self) -> RelayId {
        self.config.mailbox_relay
    }
}

/// Resolves once shutdown has been requested — also if it was requested before this task
/// subscribed (a plain `changed()` would miss that and sleep until its next timer).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopped| *stopped).await;
}
