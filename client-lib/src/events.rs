//! What the transport reports: message fates ([`TransportEvent`]) and counters
//! ([`TransportStats`]), and the atomic [`Counters`] every part of the client bumps.

use std::sync::atomic::{AtomicU64, Ordering};

use spore_protocol::MessageId;

/// What happened to a message [`Transport::send`] queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// Every fragment is durably stored at the recipient's mailbox relay (at one of them at
    /// least when the address names two; the outbox keeps a fragment until both stored it,
    /// see [`crate::Timeouts::single_copy_grace`]).
    Delivered(MessageId),
    /// Not every fragment was acknowledged within the message lifetime; the message is dropped.
    Failed(MessageId),
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Real fragment packets sent (first sends and retransmissions).
    pub real_sent: u64,
    /// Reply packets sent on somebody's reply SURBs.
    pub replies_sent: u64,
    /// Answers too large for their request's reply SURBs, queued as store-and-forward
    /// messages to the requester's mailbox.
    pub replies_by_mailbox: u64,
    /// Store-and-forward answers that found no request waiting for them (its caller had
    /// given up, the answer came twice, or from another key than the one asked), or were over
    /// `max_reply_bytes`: dropped.
    pub late_replies: u64,
    /// Drop cover packets sent (on the payload stream and the drop stream).
    pub drop_sent: u64,
    pub loops_sent: u64,
    pub loops_returned: u64,
    /// Loops not back within their expected round trip (loss, or an active attack).
    pub loops_lost: u64,
    /// Times a mix was quarantined (kept out of route choice) because loops through it were
    /// lost significantly more often than the others (route choice, issue 15).
    pub relays_quarantined: u64,
    /// Mixes quarantined now.
    pub relays_in_quarantine: u64,
    /// Fragments acknowledged by the recipient's mailbox relay.
    pub acks: u64,
    pub retransmissions: u64,
    pub messages_queued: u64,
    pub messages_delivered: u64,
    pub messages_failed: u64,
    /// Answers by store-and-forward dropped from the outbox unsent or unacknowledged because
    /// their caller's deadline passed (not counted in `messages_failed`).
    pub answers_abandoned: u64,
    /// Inbound requests put in the inbox.
    pub received: u64,
    /// Inbound requests dropped as duplicates.
    pub duplicates: u64,
    pub pulls: u64,
    /// Mailbox items pulled (real ones, not dummy slots).
    pub items_pulled: u64,
    /// Pulls that came back full, so that a bulk catch-up pull followed at once.
    pub catch_up_pulls: u64,
    /// Inbound items and messages dropped as hostile or unreadable: items that do not open
    /// with our key, fragments refused by reassembly (bad counts, over the limits), messages
    /// that do not decode. The reason of each is logged at debug.
    pub inbound_dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub real_sent: AtomicU64,
    pub replies_sent: AtomicU64,
    pub replies_by_mailbox: AtomicU64,
    pub late_replies: AtomicU64,
    pub drop_sent: AtomicU64,
    pub loops_sent: AtomicU64,
    pub loops_returned: AtomicU64,
    pub loops_lost: AtomicU64,
    pub relays_quarantined: AtomicU64,
    pub relays_in_quarantine: AtomicU64,
    pub acks: AtomicU64,
    pub retransmissions: AtomicU64,
    pub messages_queued: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub messages_failed: AtomicU64,
    pub answers_abandoned: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub pulls: AtomicU64,
    pub items_pulled: AtomicU64,
    pub catch_up_pulls: AtomicU64,
    pub inbound_dropped: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> TransportStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            real_sent: g(&self.real_sent),
            replies_sent: g(&self.replies_sent),
            replies_by_mailbox: g(&self.replies_by_mailbox),
            late_replies: g(&self.late_replies),
            drop_sent: g(&self.drop_sent),
            loops_sent: g(&self.loops_sent),
            loops_returned: g(&self.loops_returned),
            loops_lost: g(&self.loops_lost),
            relays_quarantined: g(&self.relays_quarantined),
            relays_in_quarantine: g(&self.relays_in_quarantine),
            acks: g(&self.acks),
            retransmissions: g(&self.retransmissions),
            messages_queued: g(&self.messages_queued),
            messages_delivered: g(&self.messages_delivered),
            messages_failed: g(&self.messages_failed),
            answers_abandoned: g(&self.answers_abandoned),
            received: g(&self.received),
            duplicates: g(&self.duplicates),
            pulls: g(&self.pulls),
            items_pulled: g(&self.items_pulled),
            catch_up_pulls: g(&self.catch_up_pulls),
            inbound_dropped: g(&self.inbound_dropped),
        }
    }
}
