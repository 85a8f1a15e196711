//! Fragments: a padded message cut into pieces that each fill one packet, and the
//! [`Reassembler`] that puts them back together on the receiving side.
//!
//! ```text
//! fragment = message_id (16) || index (u16 BE) || count (u16 BE) || data (data_size bytes)
//! ```
//!
//! A padded message is always a power-of-two number of `data_size` chunks (see
//! [`crate::bundle::pack`]), so `count` is a power of two and every fragment of a message
//! carries the same amount of data. Fragments arrive out of order, duplicated (retransmits
//! after a lost ack) and interleaved with other messages; some are forged. The reassembler
//! holds memory only for fragments actually received, never for the count a fragment claims,
//! and every table it keeps is bounded by [`ReassemblyLimits`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::codec::{Reader, Writer};
use crate::error::{ApiMisuse, Error, InvalidMessage, PeerMisbehaved, Result};
use crate::params::{FRAGMENT_HEADER_SIZE, MAX_FRAGMENTS};

/// Identifies one message among all fragments a mailbox receives. Chosen at random by the
/// sender, so it links the fragments of one message to each other and to nothing else.
pub type MessageId = [u8; 16];

/// One piece of a padded message.
#[derive(Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Random per message; shared by all its fragments.
    pub message_id: MessageId,
    /// Position of `data` in the message, `0..count`.
    pub index: u16,
    /// Number of fragments in the message: a power of two, at most [`MAX_FRAGMENTS`].
    pub count: u16,
    /// This fragment's share of the padded message.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Fragment {
    // Fragment data is (compressed) message content; debug output shows only its shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fragment")
            .field("index", &self.index)
            .field("count", &self.count)
            .field("data_len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl Fragment {
    /// The fragment's wire form: exactly `FRAGMENT_HEADER_SIZE + data.len()` bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(FRAGMENT_HEADER_SIZE + self.data.len());
        w.bytes(&self.message_id)
            .u16(self.index)
            .u16(self.count)
            .bytes(&self.data);
        w.into_vec()
    }

    /// Parses a fragment that must be exactly `FRAGMENT_HEADER_SIZE + data_size` bytes long.
    ///
    /// `data_size` is a property of the channel the fragment arrived on (forward packets or
    /// replies), never of the fragment itself, so a peer cannot choose it.
    pub fn decode(bytes: &[u8], data_size: usize) -> Result<Fragment> {
        let expected = FRAGMENT_HEADER_SIZE.saturating_add(data_size);
        if bytes.len() != expected {
            return Err(InvalidMessage::WrongLength {
                expected,
                got: bytes.len(),
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        let message_id = r.array()?;
        let index = r.u16()?;
        let count = r.u16()?;
        check_count(count)?;
        if index >= count {
            return Err(InvalidMessage::BadValue("fragment index").into());
        }
        let data = r.take(data_size)?.to_vec();
        r.finish()?;
        Ok(Fragment {
            message_id,
            index,
            count,
            data,
        })
    }
}

/// A fragment count is valid if it is a size class: a power of two up to [`MAX_FRAGMENTS`].
fn check_count(count: u16) -> Result<(), PeerMisbehaved> {
    if count.is_power_of_two() && count <= MAX_FRAGMENTS {
        Ok(())
    } else {
        Err(PeerMisbehaved::FragmentCount {
            got: count.into(),
            limit: MAX_FRAGMENTS.into(),
        })
    }
}

/// Cuts a padded message (the output of [`crate::bundle::pack`]) into fragments of
/// `data_size` bytes each.
///
/// Fails with [`ApiMisuse::InvalidArgument`] unless `padded` is a power-of-two number (at most
/// [`MAX_FRAGMENTS`]) of `data_size` chunks, which is exactly what `pack` produces.
///
/// ```
/// use spore_protocol::bundle::{self, Bundle, BundleBody};
/// use spore_protocol::fragment::{self, Fragment};
/// use spore_protocol::params::FRAGMENT_DATA_SIZE;
///
/// let bundle = Bundle {
///     origin: "a.example".into(),
///     sender: None,
///     server_keys: None,
///     body: BundleBody::Loop { nonce: [7; 16] },
/// };
/// let padded = bundle::pack(&bundle, FRAGMENT_DATA_SIZE).unwrap();
/// let fragments = fragment::split(rand::random(), &padded, FRAGMENT_DATA_SIZE).unwrap();
/// for f in &fragments {
///     let wire = f.encode(); // then sealed and sent, one per packet
///     assert_eq!(&Fragment::decode(&wire, FRAGMENT_DATA_SIZE).unwrap(), f);
/// }
/// ```
pub fn split(message_id: MessageId, padded: &[u8], data_size: usize) -> Result<Vec<Fragment>> {
    if data_size == 0 || padded.is_empty() || !padded.len().is_multiple_of(data_size) {
        return Err(
            ApiMisuse::InvalidArgument("padded length is not a multiple of data_size").into(),
        );
    }
    let count = u16::try_from(padded.len() / data_size)
        .ok()
        .filter(|c| check_count(*c).is_ok())
        .ok_or(ApiMisuse::InvalidArgument(
            "fragment count is not a size class",
        ))?;
    Ok(padded
        .chunks_exact(data_size)
        .zip(0..count)
        .map(|(chunk, index)| Fragment {
            message_id,
            index,
            count,
            data: chunk.to_vec(),
        })
        .collect())
}

/// What a receiver already holds of a fragment's message: the input of [`admit`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Held<'a> {
    /// The message was completed recently: its late duplicates are swallowed.
    pub completed: bool,
    /// The message is partially held: its fragment count and per-fragment data size.
    pub partial: Option<(u16, usize)>,
    /// The data held at this fragment's index, if any.
    pub at_index: Option<&'a [u8]>,
}

/// What [`admit`] decided for a fragment that is not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Already held, or its message was completed: drop it, it changes nothing.
    Duplicate,
    /// A one-fragment message: complete on arrival, never held.
    Complete,
    /// Hold it (after [`Capacity::check`]); `new_message` if it starts a partial message.
    Hold { new_message: bool },
}

/// Why a fragment is refused. Every one is a peer's doing (or a forgery), never ours.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Not a fragment [`Fragment::decode`] could have produced.
    Invalid(Error),
    /// Its count or data size disagrees with earlier fragments of the message, or its index
    /// is held with different data.
    Inconsistent,
    /// Starting another partial message would exceed the message limit.
    TooManyMessages,
    /// Holding it would exceed the held-data limit.
    TooMuchHeld,
    /// Its whole message could never fit the held-data limit.
    NeverFits,
}

impl Refusal {
    /// A short stable label, suitable for a log line or a metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Invalid(e) => e.reason(),
            Refusal::Inconsistent => "inconsistent fragments",
            Refusal::TooManyMessages => "too many partial messages",
            Refusal::TooMuchHeld | Refusal::NeverFits => "too many partial fragments",
        }
    }

    /// Refused only for lack of room: expiring stale partial messages may make room.
    pub fn is_full(&self) -> bool {
        matches!(self, Refusal::TooManyMessages | Refusal::TooMuchHeld)
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(e) => e,
            Refusal::Inconsistent => PeerMisbehaved::InconsistentFragments.into(),
            Refusal::TooManyMessages | Refusal::TooMuchHeld | Refusal::NeverFits => {
                PeerMisbehaved::ReassemblyFull.into()
            }
        }
    }
}

/// The unit a receiver bounds what it holds in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldUnit {
    /// Fragment data bytes (the in-memory [`Reassembler`]).
    Bytes,
    /// Fragments (the client's durable store).
    Fragments,
}

/// How full a receiver is, and its bounds: the second half of the admission rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Partial messages held (only consulted for a fragment that starts a new one).
    pub messages: usize,
    pub max_messages: usize,
    /// Held data, in `unit`s.
    pub held: usize,
    pub max_held: usize,
    pub unit: HoldUnit,
}

impl Capacity {
    /// Whether `fragment` (which [`admit`] said to hold) fits.
    pub fn check(&self, fragment: &Fragment, new_message: bool) -> Result<(), Refusal> {
        let (cost, whole) = match self.unit {
            HoldUnit::Bytes => (
                fragment.data.len(),
                usize::from(fragment.count).saturating_mul(fragment.data.len()),
            ),
            HoldUnit::Fragments => (1, usize::from(fragment.count)),
        };
        if new_message && whole > self.max_held {
            // Could never complete: refuse now rather than hold it until it expires.
            return Err(Refusal::NeverFits);
        }
        if new_message && self.messages >= self.max_messages {
            return Err(Refusal::TooManyMessages);
        }
        if self.held.saturating_add(cost) > self.max_held {
            return Err(Refusal::TooMuchHeld);
        }
        Ok(())
    }
}

/// The one fragment admission rule, shared by every receiver (the in-memory [`Reassembler`]
/// and the client's durable store): what to do with an inbound fragment given what is held of
/// its message. Pure; the caller reads its own tables into [`Held`] and then, for
/// [`Admission::Hold`], checks its [`Capacity`].
///
/// ```
/// use spore_protocol::fragment::{Admission, Fragment, Held, Refusal, admit};
///
/// let f = Fragment { message_id: [1; 16], index: 1, count: 4, data: vec![7; 8] };
/// assert_eq!(admit(&f, &Held::default()), Ok(Admission::Hold { new_message: true }));
/// let held = Held { partial: Some((8, 8)), ..Held::default() };
/// assert_eq!(admit(&f, &held), Err(Refusal::Inconsistent));
/// ```
pub fn admit(fragment: &Fragment, held: &Held<'_>) -> Result<Admission, Refusal> {
    check_count(fragment.count).map_err(|e| Refusal::Invalid(e.into()))?;
    if fragment.index >= fragment.count {
        return Err(Refusal::Invalid(
            InvalidMessage::BadValue("fragment index").into(),
        ));
    }
    if fragment.data.is_empty() {
        // Empty fragments would cost table entries while counting as zero bytes.
        return Err(Refusal::Invalid(
            InvalidMessage::BadValue("empty fragment").into(),
        ));
    }
    if held.completed {
        return Ok(Admission::Duplicate);
    }
    match held.partial {
        Some((count, data_size)) => {
            if count != fragment.count || data_size != fragment.data.len() {
                return Err(Refusal::Inconsistent);
            }
            match held.at_index {
                Some(data) if data == fragment.data.as_slice() => Ok(Admission::Duplicate),
                Some(_) => Err(Refusal::Inconsistent),
                None => Ok(Admission::Hold { new_message: false }),
            }
        }
        None if fragment.count == 1 => Ok(Admission::Complete),
        None => Ok(Admission::Hold { new_message: true }),
    }
}

/// Bounds on what a [`Reassembler`] holds. Every one of them is reachable by a hostile sender,
/// so none is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Partial messages held at once.
    pub max_messages: usize,
    /// Fragment data bytes held at once, over all partial messages.
    pub max_bytes: usize,
    /// How long a partial message may wait for its missing fragments (counted from its first
    /// fragment, so trickling fragments cannot keep it alive), and how long a completed
    /// message id is remembered to swallow late duplicates.
    pub ttl: Duration,
    /// Completed message ids remembered at once (oldest forgotten first).
    pub max_completed: usize,
}

impl Default for ReassemblyLimits {
    /// 1024 messages and 64 MiB: four of the largest reply messages (16384 × 987 bytes) fit
    /// with room to spare; ten minutes covers mix delays and a pull cycle.
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(600),
            max_completed: 4096,
        }
    }
}

/// A message whose fragments have all arrived: feed `padded` to [`crate::bundle::unpack`].
#[derive(Clone, PartialEq, Eq)]
pub struct Reassembled {
    pub message_id: MessageId,
    pub padded: Vec<u8>,
}

impl std::fmt::Debug for Reassembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembled")
            .field("len", &self.padded.len())
            .finish_non_exhaustive()
    }
}

/// Fragments received so far for one message.
#[derive(Debug)]
struct Partial {
    count: u16,
    data_size: usize,
    first_seen: Instant,
    /// Only the fragments that arrived: a forged `count = 16384` costs one entry, not 16384.
    received: BTreeMap<u16, Vec<u8>>,
}

/// Puts fragments back together, tolerating reordering, duplicates and interleaving, within
/// fixed memory bounds.
///
/// Sans-I/O: the caller passes `now` and calls [`Reassembler::expire`] periodically.
///
/// ```
/// use std::time::Instant;
/// use spore_protocol::bundle::{self, Bundle, BundleBody};
/// use spore_protocol::fragment::{self, Fragment, Reassembler};
/// use spore_protocol::params::FRAGMENT_DATA_SIZE;
///
/// let bundle = Bundle {
///     origin: "a.example".into(),
///     sender: None,
///     server_keys: None,
///     body: BundleBody::Loop { nonce: [7; 16] },
/// };
/// let padded = bundle::pack(&bundle, FRAGMENT_DATA_SIZE).unwrap();
/// let wire: Vec<Vec<u8>> = fragment::split([1; 16], &padded, FRAGMENT_DATA_SIZE)
///     .unwrap()
///     .iter()
///     .map(Fragment::encode)
///     .collect();
///
/// // Receiving side: decode each fragment and feed it in, in any order.
/// let mut reassembler = Reassembler::default();
/// let mut done = None;
/// for bytes in wire.iter().rev() {
///     let f = Fragment::decode(bytes, FRAGMENT_DATA_SIZE).unwrap();
///     if let Some(message) = reassembler.insert(f, Instant::now()).unwrap() {
///         done = Some(message);
///     }
/// }
/// assert_eq!(bundle::unpack(&done.unwrap().padded).unwrap(), bundle);
/// ```
#[derive(Debug, Default)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    pending: HashMap<MessageId, Partial>,
    /// Sum of `data.len()` over every fragment held in `pending`.
    pending_bytes: usize,
    /// Completed ids in completion order (so also time order), for eviction.
    completed_order: VecDeque<(MessageId, Instant)>,
    completed: HashSet<MessageId>,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// Adds one fragment. Returns the whole padded message when this fragment completes it,
    /// and `Ok(None)` while fragments are missing or when the fragment is a duplicate
    /// (including a late duplicate of a message completed within `ttl`).
    ///
    /// Errors: [`PeerMisbehaved::InconsistentFragments`] if the fragment's count or data size
    /// disagrees with earlier fragments of the same message (or a duplicate index carries
    /// different data); [`PeerMisbehaved::ReassemblyFull`] if holding it would exceed the
    /// limits even after expiring stale messages; [`PeerMisbehaved::FragmentCount`] for a
    /// count that is not a size class; [`InvalidMessage`] for an index beyond the count or
    /// empty data (neither can come out of [`Fragment::decode`]).
    pub fn insert(&mut self, fragment: Fragment, now: Instant) -> Result<Option<Reassembled>> {
        self.forget_completed(now);
        let admission = match self.admit(&fragment) {
            // Expiry may drop this very message; then it starts over as a new one.
            Err(r) if r.is_full() => {
                self.expire(now);
                self.admit(&fragment)?
            }
            other => other?,
        };
        let new_message = match admission {
            Admission::Duplicate => return Ok(None),
            Admission::Complete => {
                // Complete on arrival: it never occupies the buffer.
                self.remember_completed(fragment.message_id, now);
                return Ok(Some(Reassembled {
                    message_id: fragment.message_id,
                    padded: fragment.data,
                }));
            }
            Admission::Hold { new_message } => new_message,
        };
        debug_assert_eq!(
            new_message,
            !self.pending.contains_key(&fragment.message_id)
        );

        let id = fragment.message_id;
        let partial = self.pending.entry(id).or_insert_with(|| Partial {
            count: fragment.count,
            data_size: fragment.data.len(),
            first_seen: now,
            received: BTreeMap::new(),
        });
        self.pending_bytes = self.pending_bytes.saturating_add(fragment.data.len());
        partial.received.insert(fragment.index, fragment.data);

        if partial.received.len() < usize::from(partial.count) {
            return Ok(None);
        }
        let Some(partial) = self.pending.remove(&id) else {
            return Ok(None);
        };
        let size = partial.data_size.saturating_mul(usize::from(partial.count));
        self.pending_bytes = self.pending_bytes.saturating_sub(size);
        let mut padded = Vec::with_capacity(size);
        for data in partial.received.into_values() {
            padded.extend_from_slice(&data);
        }
        self.remember_completed(id, now);
        Ok(Some(Reassembled {
            message_id: id,
            padded,
        }))
    }

    /// The admission rule applied to this reassembler's tables.
    fn admit(&self, fragment: &Fragment) -> Result<Admission, Refusal> {
        let partial = self.pending.get(&fragment.message_id);
        let held = Held {
            completed: self.completed.contains(&fragment.message_id),
            partial: partial.map(|p| (p.count, p.data_size)),
            at_index: partial
                .and_then(|p| p.received.get(&fragment.index))
                .map(Vec::as_slice),
        };
        let admission = admit(fragment, &held)?;
        if let Admission::Hold { new_message } = admission {
            Capacity {
                messages: self.pending.len(),
                max_messages: self.limits.max_messages,
                held: self.pending_bytes,
                max_held: self.limits.max_bytes,
                unit: HoldUnit::Bytes,
            }
            .check(fragment, new_message)?;
        }
        Ok(admission)
    }

    /// Drops partial messages whose first fragment arrived `ttl` or more ago, and forgets
    /// completed ids just as old. Returns the number of partial messages dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.limits.ttl;
        let before = self.pending.len();
        let mut freed = 0usize;
        self.pending.retain(|_, partial| {
            let keep = now.saturating_duration_since(partial.first_seen) < ttl;
            if !keep {
                freed =
                    freed.saturating_add(partial.data_size.saturating_mul(partial.received.len()));
            }
            keep
        });
        self.pending_bytes = self.pending_bytes.saturating_sub(freed);
        self.forget_completed(now);
        before.saturating_sub(self.pending.len())
    }

    /// Partial messages currently held.
    pub fn pending_messages(&self) -> usize {
        self.pending.len()
    }

    /// Fragment data bytes currently held by partial messages.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn remember_completed(&mut self, id: MessageId, now: Instant) {
        if self.limits.max_completed == 0 {
            return;
        }
        while self.completed_order.len() >= self.limits.max_completed {
            if let Some((old, _)) = self.completed_order.pop_front() {
                self.completed.remove(&old);
            }
        }
        if self.completed.insert(id) {
            self.completed_order.push_back((id, now));
        }
    }

    fn forget_completed(&mut self, now: Instant) {
        while let Some((id, at)) = self.completed_order.front() {
            if now.saturating_duration_since(*at) < self.limits.ttl {
                break;
            }
            self.completed.remove(id);
            self.completed_order.pop_front();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::error::Error;
    use proptest::prelude::*;

    const DATA: usize = 8;

    fn t0() -> Instant {
        Instant::now()
    }

    /// A message of `count` fragments whose data encodes its index.
    fn message(id: u8, count: u16) -> (Vec<u8>, Vec<Fragment>) {
        let padded: Vec<u8> = (0..usize::from(count) * DATA)
            .map(|i| (i / DATA) as u8 ^ id)
            .collect();
        let fragments = split([id; 16], &padded, DATA).unwrap();
        (padded, fragments)
    }

    fn fragment(id: u8, index: u16, count: u16, len: usize) -> Fragment {
        Fragment {
            message_id: [id; 16],
            index,
            count,
            data: vec![index as u8; len],
        }
    }

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits {
            max_messages: 4,
            max_bytes: 1024,
            ttl: Duration::from_secs(60),
            max_completed: 8,
        }
    }

    #[test]
    fn the_admission_rule_decides_from_what_is_held() {
        let f = fragment(1, 2, 4, DATA);
        let fresh = Held::default();
        assert_eq!(admit(&f, &fresh), Ok(Admission::Hold { new_message: true }));
        let done = Held {
            completed: true,
            ..Held::default()
        };
        assert_eq!(admit(&f, &done), Ok(Admission::Duplicate));
        let partial = Held {
            partial: Some((4, DATA)),
            ..Held::default()
        };
        assert_eq!(
            admit(&f, &partial),
            Ok(Admission::Hold { new_message: false })
        );
        let same = Held {
            at_index: Some(&f.data),
            ..partial
        };
        assert_eq!(admit(&f, &same), Ok(Admission::Duplicate));
        let other = [9u8; DATA];
        let differs = Held {
            at_index: Some(&other),
            ..partial
        };
        assert_eq!(admit(&f, &differs), Err(Refusal::Inconsistent));
        let other_count = Held {
            partial: Some((8, DATA)),
            ..Held::default()
        };
        assert_eq!(admit(&f, &other_count), Err(Refusal::Inconsistent));
        assert_eq!(
            admit(&fragment(1, 0, 1, DATA), &fresh),
            Ok(Admission::Complete)
        );
        assert!(matches!(
            admit(&fragment(1, 0, 3, DATA), &fresh),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            admit(&fragment(1, 0, 4, 0), &fresh),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn capacity_counts_in_the_receivers_unit() {
        let f = fragment(1, 0, 4, DATA);
        let bytes = Capacity {
            messages: 0,
            max_messages: 1,
            held: 0,
            max_held: 4 * DATA,
            unit: HoldUnit::Bytes,
        };
        assert_eq!(bytes.check(&f, true), Ok(()));
        let too_small = Capacity {
            max_held: 4 * DATA - 1,
            ..bytes
        };
        assert_eq!(too_small.check(&f, true), Err(Refusal::NeverFits));
        let fragments = Capacity {
            messages: 1,
            max_messages: 1,
            held: 3,
            max_held: 4,
            unit: HoldUnit::Fragments,
        };
        assert_eq!(fragments.check(&f, true), Err(Refusal::TooManyMessages));
        assert_eq!(fragments.check(&f, false), Ok(()));
        let full = Capacity {
            held: 4,
            ..fragments
        };
        assert_eq!(full.check(&f, false), Err(Refusal::TooMuchHeld));
        assert!(full.check(&f, false).unwrap_err().is_full());
        assert_eq!(Refusal::TooMuchHeld.reason(), "too many partial fragments");
    }

    #[test]
    fn encoding_is_header_plus_data_and_round_trips() {
        let f = fragment(3, 5, 8, DATA);
        let bytes = f.encode();
        assert_eq!(bytes.len(), FRAGMENT_HEADER_SIZE + DATA);
        assert_eq!(Fragment::decode(&bytes, DATA).unwrap(), f);
    }

    #[test]
    fn decode_requires_exact_size() {
        let bytes = fragment(3, 0, 1, DATA).encode();
        assert!(matches!(
            Fragment::decode(&bytes[..bytes.len() - 1], DATA),
            Err(Error::InvalidMessage(InvalidMessage::WrongLength { .. }))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Fragment::decode(&longer, DATA).is_err());
        assert!(Fragment::decode(&bytes, DATA + 1).is_err());
    }

    #[test]
    fn decode_rejects_counts_that_are_not_size_classes() {
        for count in [0u16, 3, 12, MAX_FRAGMENTS * 2, u16::MAX] {
            let bytes = fragment(1, 0, count, DATA).encode();
            assert!(
                matches!(
                    Fragment::decode(&bytes, DATA),
                    Err(Error::PeerMisbehaved(PeerMisbehaved::FragmentCount { .. }))
                ),
                "count {count}"
            );
        }
        let bytes = fragment(1, 0, MAX_FRAGMENTS, DATA).encode();
        assert!(Fragment::decode(&bytes, DATA).is_ok());
    }

    #[test]
    fn decode_rejects_index_beyond_count() {
        let bytes = fragment(1, 4, 4, DATA).encode();
        assert!(Fragment::decode(&bytes, DATA).is_err());
    }

    #[test]
    fn split_accepts_only_size_classes() {
        assert_eq!(split([0; 16], &[0; 4 * DATA], DATA).unwrap().len(), 4);
        assert!(split([0; 16], &[0; 3 * DATA], DATA).is_err());
        assert!(split([0; 16], &[0; 4 * DATA + 1], DATA).is_err());
        assert!(split([0; 16], &[], DATA).is_err());
        assert!(split([0; 16], &[0; 8], 0).is_err());
        let too_many = vec![0u8; usize::from(MAX_FRAGMENTS) * 2];
        assert!(split([0; 16], &too_many, 1).is_err());
    }

    #[test]
    fn reassembles_out_of_order() {
        let (padded, mut fragments) = message(1, 8);
        fragments.reverse();
        fragments.swap(2, 5);
        let mut r = Reassembler::new(limits());
        let last = fragments.pop().unwrap();
        for f in fragments {
            assert_eq!(r.insert(f, t0()).unwrap(), None);
        }
        assert_eq!(r.pending_messages(), 1);
        assert_eq!(r.pending_bytes(), 7 * DATA);
        let done = r.insert(last, t0()).unwrap().unwrap();
        assert_eq!(done.message_id, [1; 16]);
        assert_eq!(done.padded, padded);
        assert_eq!(r.pending_messages(), 0);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn single_fragment_message_completes_immediately() {
        let (padded, fragments) = message(2, 1);
        let mut r = Reassembler::new(limits());
        let done = r.insert(fragments[0].clone(), t0()).unwrap().unwrap();
        assert_eq!(done.padded, padded);
        assert_eq!(r.pending_messages(), 0);
    }

    #[test]
    fn duplicate_fragment_is_ignored() {
        let (_, fragments) = message(1, 4);
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(fragments[0].clone(), t0()).unwrap(), None);
        assert_eq!(r.insert(fragments[0].clone(), t0()).unwrap(), None);
        assert_eq!(r.pending_bytes(), DATA);
    }

    #[test]
    fn duplicate_index_with_different_data_is_inconsistent() {
        let (_, fragments) = message(1, 4);
        let mut r = Reassembler::new(limits());
        r.insert(fragments[0].clone(), t0()).unwrap();
        let mut forged = fragments[0].clone();
        forged.data[0] ^= 1;
        assert_eq!(
            r.insert(forged, t0()),
            Err(PeerMisbehaved::InconsistentFragments.into())
        );
    }

    #[test]
    fn inconsistent_count_is_rejected() {
        let mut r = Reassembler::new(limits());
        r.insert(fragment(1, 0, 4, DATA), t0()).unwrap();
        assert_eq!(
            r.insert(fragment(1, 1, 8, DATA), t0()),
            Err(PeerMisbehaved::InconsistentFragments.into())
        );
    }

    #[test]
    fn inconsistent_data_size_is_rejected() {
        let mut r = Reassembler::new(limits());
        r.insert(fragment(1, 0, 4, DATA), t0()).unwrap();
        assert_eq!(
            r.insert(fragment(1, 1, 4, DATA + 1), t0()),
            Err(PeerMisbehaved::InconsistentFragments.into())
        );
        assert_eq!(r.pending_bytes(), DATA);
    }

    #[test]
    fn new_messages_are_refused_at_the_message_limit() {
        let mut r = Reassembler::new(limits());
        for id in 0..4 {
            r.insert(fragment(id, 0, 2, DATA), t0()).unwrap();
        }
        assert_eq!(
            r.insert(fragment(9, 0, 2, DATA), t0()),
            Err(PeerMisbehaved::ReassemblyFull.into())
        );
        // Messages already in progress can still complete.
        assert!(r.insert(fragment(0, 1, 2, DATA), t0()).unwrap().is_some());
        assert_eq!(r.insert(fragment(9, 0, 2, DATA), t0()).unwrap(), None);
    }

    #[test]
    fn fragments_are_refused_at_the_byte_limit() {
        let mut r = Reassembler::new(ReassemblyLimits {
            max_bytes: 4 * DATA,
            ..limits()
        });
        r.insert(fragment(1, 0, 4, DATA), t0()).unwrap();
        r.insert(fragment(2, 0, 2, DATA), t0()).unwrap();
        r.insert(fragment(1, 1, 4, DATA), t0()).unwrap();
        r.insert(fragment(1, 2, 4, DATA), t0()).unwrap();
        assert_eq!(
            r.insert(fragment(1, 3, 4, DATA), t0()),
            Err(PeerMisbehaved::ReassemblyFull.into())
        );
        assert_eq!(r.pending_bytes(), 4 * DATA);
    }

    #[test]
    fn message_larger_than_the_byte_limit_is_refused_up_front() {
        let mut r = Reassembler::new(ReassemblyLimits {
            max_bytes: 3 * DATA,
            ..limits()
        });
        assert_eq!(
            r.insert(fragment(1, 0, 4, DATA), t0()),
            Err(PeerMisbehaved::ReassemblyFull.into())
        );
        assert_eq!(r.pending_messages(), 0);
    }

    #[test]
    fn fragment_bomb_holds_only_received_fragments() {
        let mut r = Reassembler::new(ReassemblyLimits {
            max_messages: 1024,
            max_bytes: 64 * 1024 * 1024,
            ..limits()
        });
        for id in 0..=255u8 {
            for index in [0u16, 16383] {
                r.insert(fragment(id, index, MAX_FRAGMENTS, DATA), t0())
                    .unwrap();
            }
        }
        assert_eq!(r.pending_messages(), 256);
        assert_eq!(r.pending_bytes(), 256 * 2 * DATA);
        assert!(
            r.pending
                .values()
                .all(|p| p.received.len() == 2 && p.count == MAX_FRAGMENTS)
        );
    }

    #[test]
    fn late_duplicate_after_completion_is_ignored() {
        let (_, fragments) = message(1, 2);
        let mut r = Reassembler::new(limits());
        r.insert(fragments[0].clone(), t0()).unwrap();
        assert!(r.insert(fragments[1].clone(), t0()).unwrap().is_some());
        assert_eq!(r.insert(fragments[0].clone(), t0()).unwrap(), None);
        assert_eq!(r.pending_messages(), 0);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn completed_ids_are_bounded() {
        let mut r = Reassembler::new(limits());
        let start = t0();
        for id in 0..9u8 {
            let (_, fragments) = message(id, 1);
            assert!(r.insert(fragments[0].clone(), start).unwrap().is_some());
        }
        assert_eq!(r.completed.len(), 8);
        assert_eq!(r.completed_order.len(), 8);
        // The oldest was forgotten: its duplicate restarts a (single-fragment) message.
        let (_, fragments) = message(0, 1);
        assert!(r.insert(fragments[0].clone(), start).unwrap().is_some());
        // A recent one is still remembered.
        let (_, fragments) = message(8, 1);
        assert!(r.insert(fragments[0].clone(), start).unwrap().is_none());
    }

    #[test]
    fn completed_ids_are_forgotten_after_ttl() {
        let mut r = Reassembler::new(limits());
        let start = t0();
        let (_, fragments) = message(1, 1);
        assert!(r.insert(fragments[0].clone(), start).unwrap().is_some());
        let soon = start + Duration::from_secs(59);
        assert!(r.insert(fragments[0].clone(), soon).unwrap().is_none());
        let later = start + Duration::from_secs(60);
        r.expire(later);
        assert!(r.completed.is_empty());
        assert!(r.insert(fragments[0].clone(), later).unwrap().is_some());
    }

    #[test]
    fn expire_drops_only_stale_partial_messages() {
        let mut r = Reassembler::new(limits());
        let start = t0();
        r.insert(fragment(1, 0, 2, DATA), start).unwrap();
        r.insert(fragment(2, 0, 4, DATA), start + Duration::from_secs(30))
            .unwrap();
        r.insert(fragment(2, 1, 4, DATA), start + Duration::from_secs(30))
            .unwrap();
        assert_eq!(r.expire(start + Duration::from_secs(59)), 0);
        assert_eq!(r.expire(start + Duration::from_secs(60)), 1);
        assert_eq!(r.pending_messages(), 1);
        assert_eq!(r.pending_bytes(), 2 * DATA);
        assert_eq!(r.expire(start + Duration::from_secs(90)), 1);
        assert_eq!(r.pending_bytes(), 0);
        // A fragment of an expired message starts it over rather than completing it.
        assert_eq!(
            r.insert(fragment(1, 1, 2, DATA), start + Duration::from_secs(91))
                .unwrap(),
            None
        );
    }

    #[test]
    fn full_buffer_expires_stale_messages_before_refusing() {
        let mut r = Reassembler::new(limits());
        let start = t0();
        for id in 0..4 {
            r.insert(fragment(id, 0, 2, DATA), start).unwrap();
        }
        let later = start + Duration::from_secs(61);
        assert_eq!(r.insert(fragment(9, 0, 2, DATA), later).unwrap(), None);
        assert_eq!(r.pending_messages(), 1);
        assert_eq!(r.pending_bytes(), DATA);
    }

    #[test]
    fn insert_rejects_fragments_decode_would_reject() {
        let mut r = Reassembler::new(limits());
        for bad in [
            fragment(1, 0, 3, DATA),
            fragment(1, 2, 2, DATA),
            fragment(1, 0, 2, 0),
        ] {
            assert!(r.insert(bad, t0()).is_err());
        }
        assert_eq!(r.pending_messages(), 0);
    }

    proptest! {
        #[test]
        fn decode_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            data_size in 0usize..48,
        ) {
            if let Ok(f) = Fragment::decode(&data, data_size) {
                prop_assert_eq!(f.encode(), data);
            }
        }

        #[test]
        fn any_order_with_duplicates_reassembles(
            log_count in 0u32..7,
            data_size in 1usize..40,
            seed in any::<u64>(),
            extra in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
            shuffle_keys in proptest::collection::vec(any::<u64>(), 64 + 20),
        ) {
            let count = 1u16 << log_count;
            let padded: Vec<u8> = (0..usize::from(count) * data_size)
                .map(|i| (seed.rotate_left(i as u32 % 64) as u8) ^ (i as u8))
                .collect();
            let fragments = split(seed.to_be_bytes().repeat(2).try_into().unwrap(), &padded, data_size).unwrap();
            let mut deliveries: Vec<Fragment> = fragments.clone();
            deliveries.extend(extra.iter().map(|i| i.get(&fragments).clone()));
            // Shuffle by sorting on random keys.
            let mut keyed: Vec<(u64, Fragment)> = deliveries
                .into_iter()
                .zip(shuffle_keys.iter().copied())
                .map(|(f, k)| (k, f))
                .collect();
            keyed.sort_by_key(|(k, _)| *k);

            let mut r = Reassembler::default();
            let mut completed = Vec::new();
            for (_, f) in keyed {
                if let Some(done) = r.insert(f, t0()).unwrap() {
                    completed.push(done);
                }
            }
            prop_assert_eq!(completed.len(), 1);
            prop_assert_eq!(&completed[0].padded, &padded);
            prop_assert_eq!(r.pending_messages(), 0);
            prop_assert_eq!(r.pending_bytes(), 0);
        }
    }
}
