//! The pull session: how a client empties its mailbox over its link, both halves.
//!
//! ```text
//! client                               mailbox relay
//!   PullRequest                 ──▶
//!                               ◀──    PULL_SLOTS × PullSlot (items, padded with dummies)
//!   Delete { handles }          ──▶    (exactly one per pull, empty or not)
//!                               ◀──    DeleteDone { count }
//! ```
//!
//! Every pull is answered with exactly [`PULL_SLOTS`] slots and followed by exactly one
//! `Delete`, so the link looks the same whether the mailbox is full or empty and whether the
//! client kept anything. A catch-up pull (`BulkPullRequest`, sent only after a pull came back
//! full) is the same conversation with [`BULK_PULL_SLOTS`] slots. The client may send its next `PullRequest` right after the previous
//! `Delete` without waiting for the `DeleteDone`: the relay handles a link's frames in order,
//! so that `DeleteDone` arrives before the next pull's slots.
//!
//! That is what an honest client sends; the relay accepts more (see [`RelayPull`]), because
//! reading deletes nothing and a `Delete` can only ever touch the link owner's own mailbox.
//!
//! Sans-I/O, no clock: [`ClientPull`] (the client's half) and [`RelayPull`] (the relay's) take
//! frames and hand frames out; the caller owns the link and the timers. Every frame that does
//! not fit the conversation is an error, never a panic.

use std::collections::VecDeque;

use thiserror::Error;

use crate::capability::CapabilityOp;
use crate::link::{Frame, MAX_DELETE_HANDLES, MailboxItem, PullSlot};
use crate::params::{BULK_PULL_SLOTS, PULL_SLOTS};

/// A pull session went wrong; split by who is at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PullError {
    /// The other side sent a frame the conversation does not allow here.
    #[error("the peer broke the pull session: {0}")]
    PeerMisbehaved(&'static str),
    /// Our own caller asked for a transition the conversation does not allow.
    #[error("pull session misuse: {0}")]
    ApiMisuse(&'static str),
}

impl PullError {
    /// A short stable label, suitable for a metric.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::PeerMisbehaved(why) | PullError::ApiMisuse(why) => why,
        }
    }
}

/// Where the client's half of a pull is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPhase {
    /// No pull in progress: a new one may start.
    Idle,
    /// A `PullRequest` is out; `received` of the [`PULL_SLOTS`] slots have arrived.
    Collecting { received: usize },
    /// Every slot arrived and the items were handed out; the one `Delete` is owed.
    Holding,
}

/// The client's half of the pull session.
///
/// ```
/// use spore_protocol::link::{Frame, PullSlot};
/// use spore_protocol::params::PULL_SLOTS;
/// use spore_protocol::pull::{ClientPull, RelayPull};
///
/// let mut client = ClientPull::new();
/// let relay = RelayPull::new();
/// let request = client.start().unwrap();
/// let (relay, slots) = relay.answer(&request, Vec::new()).unwrap();
/// let mut items = None;
/// for slot in slots {
///     items = client.handle_frame(slot).unwrap().or(items);
/// }
/// assert!(items.unwrap().is_empty()); // every slot was a dummy
/// let delete = client.delete(Vec::new()).unwrap(); // still exactly one Delete
/// let (_relay, deletion) = relay.handle_delete(&delete).unwrap();
/// assert!(deletion.handles.is_empty() && deletion.irregular.is_none());
/// client.handle_frame(Frame::DeleteDone { count: 0 }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ClientPull {
    phase: Phase,
    /// Handles sent in each `Delete` whose `DeleteDone` has not arrived, oldest first.
    deletes_unanswered: VecDeque<usize>,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Collecting {
        items: Vec<MailboxItem>,
        received: usize,
        /// Slots this pull's answer has: [`PULL_SLOTS`] or [`BULK_PULL_SLOTS`].
        slots: usize,
    },
    Holding {
        handles: Vec<u64>,
    },
}

impl Default for ClientPull {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientPull {
    pub fn new() -> Self {
        Self {
            phase: Phase::Idle,
            deletes_unanswered: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> ClientPhase {
        match &self.phase {
            Phase::Idle => ClientPhase::Idle,
            Phase::Collecting { received, .. } => ClientPhase::Collecting {
                received: *received,
            },
            Phase::Holding { .. } => ClientPhase::Holding,
        }
    }

    /// `Delete`s sent whose `DeleteDone` has not arrived yet.
    pub fn deletes_unanswered(&self) -> usize {
        self.deletes_unanswered.len()
    }

    /// Starts a pull: the frame to send. Only from [`ClientPhase::Idle`] (a `DeleteDone` may
    /// still be on its way).
    pub fn start(&mut self) -> Result<Frame, PullError> {
        self.start_with(Vec::new())
    }

    /// Starts a catch-up pull of [`BULK_PULL_SLOTS`] slots; otherwise as [`ClientPull::start`].
    /// It carries no capability ops: those ride in the ordinary pulls of the fixed cadence.
    pub fn start_bulk(&mut self) -> Result<Frame, PullError> {
        self.begin(Frame::BulkPullRequest, BULK_PULL_SLOTS)
    }

    /// [`ClientPull::start`], carrying capability `ops` (at most
    /// [`MAX_CAPABILITY_OPS`](crate::capability::MAX_CAPABILITY_OPS)) in the pull request:
    /// a [`Frame::CapabilityPull`] when there are any, a plain `PullRequest` otherwise.
    pub fn start_with(&mut self, ops: Vec<CapabilityOp>) -> Result<Frame, PullError> {
        if ops.len() > crate::capability::MAX_CAPABILITY_OPS {
            return Err(PullError::ApiMisuse("too many capability ops for one pull"));
        }
        let request = if ops.is_empty() {
            Frame::PullRequest
        } else {
            Frame::CapabilityPull { ops }
        };
        self.begin(request, PULL_SLOTS)
    }

    fn begin(&mut self, request: Frame, slots: usize) -> Result<Frame, PullError> {
        if !matches!(self.phase, Phase::Idle) {
            return Err(PullError::ApiMisuse("a pull is already in progress"));
        }
        self.phase = Phase::Collecting {
            items: Vec::new(),
            received: 0,
            slots,
        };
        Ok(request)
    }

    /// Takes one frame of the session from the relay. Returns the pulled items (possibly
    /// none: dummies only) when the last slot arrives; the caller then owes one
    /// [`ClientPull::delete`].
    ///
    /// Errors: a slot outside a pull or out of order, a `DeleteDone` for no `Delete` or for
    /// more handles than it carried, or any frame that is not part of a pull session.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<Option<Vec<MailboxItem>>, PullError> {
        match frame {
            Frame::PullSlot(slot) => self.handle_slot(slot),
            Frame::DeleteDone { count } => {
                let Some(sent) = self.deletes_unanswered.pop_front() else {
                    return Err(PullError::PeerMisbehaved("delete done without a delete"));
                };
                if usize::try_from(count).map_or(true, |c| c > sent) {
                    return Err(PullError::PeerMisbehaved(
                        "deleted more items than were named",
                    ));
                }
                Ok(None)
            }
            _ => Err(PullError::PeerMisbehaved("not a pull session frame")),
        }
    }

    fn handle_slot(&mut self, slot: PullSlot) -> Result<Option<Vec<MailboxItem>>, PullError> {
        let Phase::Collecting {
            items,
            received,
            slots,
        } = &mut self.phase
        else {
            return Err(PullError::PeerMisbehaved("pull slot outside a pull"));
        };
        if usize::from(slot.index) != *received {
            return Err(PullError::PeerMisbehaved("pull slot out of order"));
        }
        *received += 1;
        if let Some(item) = slot.item {
            items.push(item);
        }
        if *received < *slots {
            return Ok(None);
        }
        let items = std::mem::take(items);
        self.phase = Phase::Holding {
            handles: items.iter().map(|i| i.handle).collect(),
        };
        Ok(Some(items))
    }

    /// Ends the pull with its one `Delete`, naming the pulled items that may go (empty when
    /// nothing may). Only after the last slot; every handle must come from this pull.
    pub fn delete(&mut self, handles: Vec<u64>) -> Result<Frame, PullError> {
        let Phase::Holding { handles: pulled } = &self.phase else {
            return Err(PullError::ApiMisuse("delete outside a finished pull"));
        };
        if handles.len() > MAX_DELETE_HANDLES || handles.iter().any(|h| !pulled.contains(h)) {
            return Err(PullError::ApiMisuse(
                "delete names an item this pull did not return",
            ));
        }
        self.phase = Phase::Idle;
        self.deletes_unanswered.push_back(handles.len());
        Ok(Frame::Delete { handles })
    }

    /// The link was lost: whatever was in progress is void (the relay keeps undeleted items).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

/// The relay's half of the pull session for one link, consumed by value: every pull is
/// answered with exactly [`PULL_SLOTS`] slots ([`BULK_PULL_SLOTS`] for a catch-up pull), every
/// `Delete` with the handles to delete.
///
/// The relay is stricter about what it sends than about what it accepts. Pulling deletes
/// nothing, so a pull while the previous one's `Delete` is still owed is answered again (the
/// same items come back). A `Delete` outside the plain conversation (a second one for a pull,
/// one on a fresh link from a client that pulled over an earlier link before a crash, or one
/// naming handles this link was not handed) is still carried out: the mailbox deletes only the
/// link owner's items, so such a `Delete` can do no harm, and refusing it would lose the
/// deletions of a client reconnecting after a crash. It is reported in
/// [`Deletion::irregular`] so the relay can count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPull {
    /// No pull is waiting for its `Delete`.
    Idle,
    /// A pull was answered with these handles; its `Delete` is owed.
    AwaitingDelete { handed: Vec<u64> },
}

/// What the relay does with one `Delete`: delete these handles in the link owner's mailbox
/// and answer with one `DeleteDone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub handles: Vec<u64>,
    /// Set when this `Delete` is not the one that ends the link's last pull.
    pub irregular: Option<IrregularDelete>,
}

/// A `Delete` the relay carries out although it is outside the plain conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IrregularDelete {
    /// No pull on this link was waiting for its `Delete`.
    WithoutPull,
    /// It names a handle this link's last pull did not hand out.
    UnhandedHandle,
}

impl IrregularDelete {
    /// A short stable label, suitable for a metric.
    pub fn reason(self) -> &'static str {
        match self {
            IrregularDelete::WithoutPull => "delete_without_pull",
            IrregularDelete::UnhandedHandle => "delete_unhanded_handle",
        }
    }
}

impl Default for RelayPull {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayPull {
    pub fn new() -> Self {
        RelayPull::Idle
    }

    /// Answers `request` (a `PullRequest`, `CapabilityPull` (whose ops the caller has applied)
    /// or `BulkPullRequest`) with `items` (at most [`RelayPull::slots_for`] the request, as read
    /// from the mailbox), padded with dummy slots to exactly that many frames. A pull while the
    /// previous one's `Delete` is owed replaces it.
    pub fn answer(
        self,
        request: &Frame,
        items: Vec<MailboxItem>,
    ) -> Result<(RelayPull, Vec<Frame>), PullError> {
        let slots =
            Self::slots_for(request).ok_or(PullError::PeerMisbehaved("not a pull request"))?;
        if items.len() > slots {
            return Err(PullError::ApiMisuse("more items than pull slots"));
        }
        let handed: Vec<u64> = items.iter().map(|i| i.handle).collect();
        let mut items = items.into_iter();
        let frames = (0..slots)
            .map(|index| {
                Frame::PullSlot(PullSlot {
                    index: u8::try_from(index).unwrap_or(u8::MAX),
                    item: items.next(),
                })
            })
            .collect();
        Ok((RelayPull::AwaitingDelete { handed }, frames))
    }

    /// How many slots answer `request`; `None` if it is not a pull request. The relay reads
    /// this many items (at most) from the mailbox before [`RelayPull::answer`].
    pub fn slots_for(request: &Frame) -> Option<usize> {
        match request {
            Frame::PullRequest | Frame::CapabilityPull { .. } => Some(PULL_SLOTS),
            Frame::BulkPullRequest => Some(BULK_PULL_SLOTS),
            _ => None,
        }
    }

    /// Takes a `Delete`: the handles the relay should now delete, and whether the `Delete`
    /// was the one ending the last pull. Errors only for a frame that is not a `Delete`.
    pub fn handle_delete(self, frame: &Frame) -> Result<(RelayPull, Deletion), PullError> {
        let Frame::Delete { handles } = frame else {
            return Err(PullError::PeerMisbehaved("not a delete"));
        };
        let irregular = match &self {
            RelayPull::Idle => Some(IrregularDelete::WithoutPull),
            RelayPull::AwaitingDelete { handed } if handles.iter().any(|h| !handed.contains(h)) => {
                Some(IrregularDelete::UnhandedHandle)
            }
            RelayPull::AwaitingDelete { .. } => None,
        };
        let deletion = Deletion {
            handles: handles.clone(),
            irregular,
        };
        Ok((RelayPull::Idle, deletion))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::PAYLOAD_SIZE;

    fn item(handle: u64) -> MailboxItem {
        MailboxItem {
            handle,
            surb_id: [handle as u8; 16],
            payload: Box::new([0; PAYLOAD_SIZE]),
        }
    }

    /// One whole pull through both halves; returns what the client got and what the relay
    /// was told to delete.
    fn round(
        client: &mut ClientPull,
        relay: RelayPull,
        stored: Vec<MailboxItem>,
        keep: impl Fn(&MailboxItem) -> bool,
    ) -> (Vec<MailboxItem>, RelayPull, Vec<u64>) {
        let request = client.start().unwrap();
        let (relay, slots) = relay.answer(&request, stored).unwrap();
        assert_eq!(slots.len(), PULL_SLOTS);
        let mut got = None;
        for slot in slots {
            if let Some(items) = client.handle_frame(slot).unwrap() {
                assert!(got.is_none(), "items handed out twice");
                got = Some(items);
            }
        }
        let got = got.unwrap();
        let handles = got.iter().filter(|i| !keep(i)).map(|i| i.handle).collect();
        let delete = client.delete(handles).unwrap();
        let (relay, deletion) = relay.handle_delete(&delete).unwrap();
        assert_eq!(deletion.irregular, None, "an honest pull ends regularly");
        (got, relay, deletion.handles)
    }

    #[test]
    fn a_pull_of_dummies_only_still_ends_with_one_empty_delete() {
        let mut client = ClientPull::new();
        let (got, relay, deleted) = round(&mut client, RelayPull::new(), Vec::new(), |_| false);
        assert!(got.is_empty());
        assert!(deleted.is_empty());
        assert_eq!(relay, RelayPull::Idle);
        assert_eq!(client.deletes_unanswered(), 1);
        client.handle_frame(Frame::DeleteDone { count: 0 }).unwrap();
        assert_eq!(client.deletes_unanswered(), 0);
        assert_eq!(client.phase(), ClientPhase::Idle);
    }

    #[test]
    fn items_come_out_once_and_only_released_ones_are_deleted() {
        let mut client = ClientPull::new();
        let stored = vec![item(1), item(2), item(3)];
        let (got, _relay, deleted) =
            round(&mut client, RelayPull::new(), stored, |i| i.handle == 2);
        assert_eq!(got.iter().map(|i| i.handle).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(deleted, [1, 3]);
    }

    #[test]
    fn the_next_pull_may_start_before_the_delete_done() {
        let mut client = ClientPull::new();
        let (_, relay, _) = round(&mut client, RelayPull::new(), vec![item(1)], |_| false);
        let (_, _, _) = round(&mut client, relay, vec![item(2)], |_| false);
        assert_eq!(client.deletes_unanswered(), 2);
        client.handle_frame(Frame::DeleteDone { count: 1 }).unwrap();
        client.handle_frame(Frame::DeleteDone { count: 1 }).unwrap();
        assert!(client.handle_frame(Frame::DeleteDone { count: 0 }).is_err());
    }

    #[test]
    fn client_refuses_frames_outside_the_conversation() {
        let mut client = ClientPull::new();
        let slot = Frame::PullSlot(PullSlot {
            index: 0,
            item: None,
        });
        assert!(
            client.handle_frame(slot.clone()).is_err(),
            "slot before pull"
        );
        assert!(client.delete(Vec::new()).is_err(), "delete before pull");
        client.start().unwrap();
        assert!(client.start().is_err(), "two pulls at once");
        let late = Frame::PullSlot(PullSlot {
            index: 3,
            item: None,
        });
        assert_eq!(
            client.handle_frame(late),
            Err(PullError::PeerMisbehaved("pull slot out of order"))
        );
        assert!(client.handle_frame(Frame::Padding).is_err());
        assert!(client.handle_frame(Frame::PullRequest).is_err());
        // A slot more than PULL_SLOTS: the pull is over, so it is outside a pull.
        let mut client = ClientPull::new();
        let request = client.start().unwrap();
        let (_, slots) = RelayPull::new().answer(&request, vec![item(5)]).unwrap();
        for s in slots {
            client.handle_frame(s).unwrap();
        }
        assert!(client.handle_frame(slot).is_err());
        assert!(
            client.delete(vec![6]).is_err(),
            "a handle this pull did not return"
        );
        client.delete(vec![5]).unwrap();
        assert!(
            client.handle_frame(Frame::DeleteDone { count: 2 }).is_err(),
            "more deleted than named"
        );
    }

    #[test]
    fn relay_answers_a_pull_again_before_its_delete() {
        // Pulling deletes nothing: a second pull (a test harness draining, a client that
        // gave up waiting) gets the same items, and its Delete ends it regularly.
        let (relay, _) = RelayPull::new()
            .answer(&Frame::PullRequest, vec![item(1)])
            .unwrap();
        let (relay, slots) = relay.answer(&Frame::PullRequest, vec![item(1)]).unwrap();
        assert_eq!(slots.len(), PULL_SLOTS);
        let (relay, deletion) = relay
            .handle_delete(&Frame::Delete { handles: vec![1] })
            .unwrap();
        assert_eq!(deletion.handles, [1]);
        assert_eq!(deletion.irregular, None);
        assert_eq!(relay, RelayPull::Idle);
    }

    #[test]
    fn relay_carries_out_deletes_outside_the_conversation_and_says_so() {
        // A client reconnecting after a crash deletes what it pulled over its earlier link:
        // a Delete on a fresh link, naming handles this link never handed out.
        let (relay, deletion) = RelayPull::new()
            .handle_delete(&Frame::Delete {
                handles: vec![7, 8],
            })
            .unwrap();
        assert_eq!(
            deletion.handles,
            [7, 8],
            "still deleted: the mailbox checks the owner"
        );
        assert_eq!(deletion.irregular, Some(IrregularDelete::WithoutPull));
        let (relay, _) = relay.answer(&Frame::PullRequest, vec![item(1)]).unwrap();
        let (relay, deletion) = relay
            .handle_delete(&Frame::Delete {
                handles: vec![1, 9],
            })
            .unwrap();
        assert_eq!(deletion.handles, [1, 9]);
        assert_eq!(deletion.irregular, Some(IrregularDelete::UnhandedHandle));
        // Exactly one Delete ends a pull; a second one is outside it.
        let (_, deletion) = relay
            .handle_delete(&Frame::Delete { handles: vec![] })
            .unwrap();
        assert_eq!(deletion.irregular, Some(IrregularDelete::WithoutPull));
        assert_eq!(
            deletion.irregular.map(IrregularDelete::reason),
            Some("delete_without_pull")
        );
    }

    #[test]
    fn a_catch_up_pull_has_bulk_slots_and_ends_like_any_pull() {
        let mut client = ClientPull::new();
        let request = client.start_bulk().unwrap();
        assert_eq!(request, Frame::BulkPullRequest);
        let stored: Vec<_> = (0..BULK_PULL_SLOTS as u64).map(item).collect();
        let (relay, slots) = RelayPull::new().answer(&request, stored).unwrap();
        assert_eq!(slots.len(), BULK_PULL_SLOTS);
        let mut got = None;
        for (n, slot) in slots.into_iter().enumerate() {
            let out = client.handle_frame(slot).unwrap();
            assert_eq!(
                out.is_some(),
                n == BULK_PULL_SLOTS - 1,
                "items only at the last slot"
            );
            got = out.or(got);
        }
        let got = got.unwrap();
        assert_eq!(got.len(), BULK_PULL_SLOTS);
        let delete = client
            .delete(got.iter().map(|i| i.handle).collect())
            .unwrap();
        let (relay, deletion) = relay.handle_delete(&delete).unwrap();
        assert_eq!(deletion.handles.len(), BULK_PULL_SLOTS);
        assert_eq!(deletion.irregular, None);
        assert_eq!(relay, RelayPull::Idle);
        // Back to ordinary pulls: 16 slots again, and a 17th is outside the pull.
        let request = client.start().unwrap();
        let (_, slots) = RelayPull::new().answer(&request, Vec::new()).unwrap();
        assert_eq!(slots.len(), PULL_SLOTS);
        for slot in slots {
            client.handle_frame(slot).unwrap();
        }
        let extra = Frame::PullSlot(PullSlot {
            index: PULL_SLOTS as u8,
            item: None,
        });
        assert!(client.handle_frame(extra).is_err());
        // An ordinary pull cannot be answered with a bulk pull's worth of items.
        let too_many = (0..=PULL_SLOTS as u64).map(item).collect();
        assert!(
            RelayPull::new()
                .answer(&Frame::PullRequest, too_many)
                .is_err()
        );
    }

    #[test]
    fn capability_ops_ride_in_the_pull_request_and_the_answer_is_the_same() {
        use crate::capability::{CapabilityId, MAX_CAPABILITY_OPS};
        let op = CapabilityOp::Revoke {
            capability: CapabilityId([1; 32]),
        };
        let mut client = ClientPull::new();
        assert!(
            client.start_with(vec![op; MAX_CAPABILITY_OPS + 1]).is_err(),
            "more ops than a frame holds"
        );
        let request = client.start_with(vec![op]).unwrap();
        assert_eq!(request, Frame::CapabilityPull { ops: vec![op] });
        let (_, slots) = RelayPull::new().answer(&request, vec![item(1)]).unwrap();
        assert_eq!(slots.len(), PULL_SLOTS);
        let mut got = None;
        for slot in slots {
            got = client.handle_frame(slot).unwrap().or(got);
        }
        assert_eq!(got.unwrap().len(), 1);
        assert_eq!(
            ClientPull::new().start_with(Vec::new()),
            Ok(Frame::PullRequest)
        );
    }

    #[test]
    fn relay_refuses_frames_that_are_not_its_to_answer() {
        let relay = RelayPull::new();
        assert!(relay.clone().answer(&Frame::Padding, Vec::new()).is_err());
        assert!(relay.clone().handle_delete(&Frame::PullRequest).is_err());
        let too_many = (0..=PULL_SLOTS as u64).map(item).collect();
        assert!(relay.answer(&Frame::PullRequest, too_many).is_err());
    }
}
