//! The unwrap queue's entry: how a packet read from a link (by a [`crate::handler`], or a
//! packet this relay addressed to itself, by the [`crate::forward`]er) reaches the mix
//! workers. On its own so that both the forwarder and the mix pipeline that feeds it can use
//! it without depending on each other.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use spore_protocol::params::PACKET_SIZE;

use crate::clock::Clock;
use crate::metrics::{Metrics, Queue};

/// A packet read from a link, with the moment it was read.
pub(crate) struct Inbound {
    pub(crate) packet: Box<[u8; PACKET_SIZE]>,
    pub(crate) received: Instant,
    /// The client link it came on, whose share of the delay queue it counts against; `None`
    /// for a relay's link and for packets of this relay itself.
    pub(crate) link: Option<u64>,
}

/// The entry to the worker pool; cheap to clone, one per connection.
#[derive(Clone)]
pub struct PacketIngress {
    tx: SyncSender<Inbound>,
    clock: Arc<dyn Clock>,
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
        self.submit_from(None, packet);
    }

    /// [`PacketIngress::submit`] for a packet from client link `link` (see `forward`'s
    /// per-link share of the delay queue).
    pub fn submit_from(&self, link: Option<u64>, packet: Box<[u8; PACKET_SIZE]>) {
        let inbound = Inbound {
            packet,
            received: self.clock.monotonic_now(),
            link,
        };
        match self.tx.try_send(inbound) {
            Ok(()) => self.metrics.queue_add(Queue::Unwrap, 1),
            Err(TrySendError::Full(_)) => self.metrics.dropped("unwrap_queue_full"),
            Err(TrySendError::Disconnected(_)) => self.metrics.dropped("shutting_down"),
        }
    }
}

/// Creates the unwrap queue: its entry, and the receiver the mix workers share.
pub(crate) fn unwrap_queue(
    capacity: usize,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> (PacketIngress, Receiver<Inbound>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    (PacketIngress { tx, clock, metrics }, rx)
}
