//! Each origin's transactions in the order it sent them.
//!
//! The sending transport numbers its fire-and-forget requests (transactions) 0, 1, 2… per
//! destination, durably, and seals the number in the bundle. The mixnet's random per-hop
//! delays and retransmissions reorder them on the way; a homeserver that gets an event before
//! its predecessor asks the origin for the missing one (`get_missing_events`), a round trip
//! through the mixnet each time. [`SendOrder`] puts them back in order: a transaction that
//! arrives ahead of a missing one waits for it, up to a bound; then delivery goes on and the
//! gap is reported. [`NextExpected`] keeps, per origin, the number delivery expects next, in a
//! file, so that a restart neither waits for what was already delivered nor forgets the order.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What [`SendOrder::poll`] says to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NextInOrder<T> {
    /// Deliver this one now. `skipped` is how many numbers before it were given up on (a gap
    /// that was not filled within the bound), 0 in the ordinary case.
    Deliver {
        sequence: u64,
        item: T,
        skipped: u64,
    },
    /// Something waits behind a gap: poll again at this instant (or when a new item comes).
    WaitUntil(Instant),
    /// Nothing held.
    Idle,
}

/// One origin's reorder buffer: items by sequence number, released in order.
///
/// Sans-I/O: time is a parameter. Items below the number expected next (a late one whose gap
/// was given up on, or a redelivery after a crash) are not held: the caller delivers them at
/// once ([`SendOrder::insert`] hands them back).
#[derive(Debug)]
pub(crate) struct SendOrder<T> {
    expected: u64,
    held: BTreeMap<u64, T>,
    /// When the current gap was first seen (something held, the expected one missing).
    gap_since: Option<Instant>,
    gap_wait: Duration,
}

impl<T> SendOrder<T> {
    pub(crate) fn new(expected: u64, gap_wait: Duration) -> Self {
        Self {
            expected,
            held: BTreeMap::new(),
            gap_since: None,
            gap_wait,
        }
    }

    /// The number delivery expects next.
    #[cfg(test)]
    pub(crate) fn expected(&self) -> u64 {
        self.expected
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds `item` until its turn; hands it back if its turn has passed. A second item with
    /// a number already held replaces nothing and is handed back too (the transport delivers
    /// each message once, so that is a sender that reused a number).
    pub(crate) fn insert(&mut self, sequence: u64, item: T) -> Option<T> {
        if sequence < self.expected || self.held.contains_key(&sequence) {
            return Some(item);
        }
        self.held.insert(sequence, item);
        None
    }

    /// The next thing to do at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> NextInOrder<T> {
        let Some((&first, _)) = self.held.first_key_value() else {
            self.gap_since = None;
            return NextInOrder::Idle;
        };
        if first == self.expected {
            return self.release(first, 0);
        }
        let since = *self.gap_since.get_or_insert(now);
        let until = since + self.gap_wait;
        if now >= until {
            let skipped = first - self.expected;
            return self.release(first, skipped);
        }
        NextInOrder::WaitUntil(until)
    }

    /// Everything held, in order, without waiting for gaps (the queue is closing).
    pub(crate) fn drain(&mut self) -> Vec<(u64, T)> {
        self.gap_since = None;
        let held = std::mem::take(&mut self.held);
        if let Some((&last, _)) = held.last_key_value() {
            self.expected = last.saturating_add(1);
        }
        held.into_iter().collect()
    }

    fn release(&mut self, sequence: u64, skipped: u64) -> NextInOrder<T> {
        self.gap_since = None;
        self.expected = sequence.saturating_add(1);
        match self.held.remove(&sequence) {
            Some(item) => NextInOrder::Deliver {
                sequence,
                item,
                skipped,
            },
            None => NextInOrder::Idle,
        }
    }
}

/// Per origin, the sequence number delivery expects next, kept in a JSON file in the data
/// dir (rewritten whole, through a temporary file, fsynced, and renamed over the old one).
///
/// Written before the delivered transaction is acked: a crash in between redelivers it
/// (below the expected number, so at once; the homeserver drops a repeated transaction id),
/// whereas the other order would make the restarted sidecar wait for a number that never
/// comes again.
#[derive(Debug)]
pub(crate) struct NextExpected {
    path: PathBuf,
    next: Mutex<HashMap<String, u64>>,
}

impl NextExpected {
    /// Opens `path`; a missing or unreadable file starts empty (every origin expects 0, the
    /// first number a sender uses), which at worst costs one gap wait per origin.
    pub(crate) fn open(path: PathBuf) -> Self {
        let next = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the delivery order file does not parse; starting afresh");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the delivery order file; starting afresh");
                HashMap::new()
            }
        };
        Self {
            path,
            next: Mutex::new(next),
        }
    }

    pub(crate) fn get(&self, origin: &str) -> u64 {
        self.lock().get(origin).copied().unwrap_or(0)
    }

    /// Records that `origin`'s next expected number is `next`, durably. A failure to write is
    /// logged and otherwise ignored: the memory copy stays right, and a restart would at worst
    /// wait once for a gap.
    pub(crate) fn set(&self, origin: &str, next: u64) {
        let mut map = self.lock();
        if map.get(origin) == Some(&next) {
            return;
        }
        map.insert(origin.to_owned(), next);
        if let Err(e) = self.write(&map) {
            tracing::warn!(error = %e, "cannot write the delivery order file");
        }
    }

    fn write(&self, map: &HashMap<String, u64>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(map).map_err(std::io::Error::other)?;
        crate::private_file::replace(&self.path, &bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn delivered<T>(next: NextInOrder<T>) -> (u64, T, u64) {
        match next {
            NextInOrder::Deliver {
                sequence,
                item,
                skipped,
            } => (sequence, item, skipped),
            _ => panic!("expected a delivery"),
        }
    }

    #[test]
    fn reordered_arrivals_are_released_in_send_order() {
        let t = Instant::now();
        let mut order = SendOrder::new(0, WAIT);
        for n in [2u64, 0, 3, 1] {
            assert!(order.insert(n, n * 10).is_none());
        }
        for n in 0..4 {
            assert_eq!(delivered(order.poll(t)), (n, n * 10, 0));
        }
        assert_eq!(order.poll(t), NextInOrder::Idle);
        assert_eq!(order.expected(), 4);
    }

    #[test]
    fn a_gap_is_waited_for_up_to_the_bound_then_skipped_and_counted() {
        let t = Instant::now();
        let mut order = SendOrder::new(5, WAIT);
        order.insert(8, "eight");
        order.insert(9, "nine");
        assert_eq!(order.poll(t), NextInOrder::WaitUntil(t + WAIT));
        // The wait is measured from when the gap was first seen, not from each poll.
        assert_eq!(
            order.poll(t + Duration::from_secs(4)),
            NextInOrder::WaitUntil(t + WAIT)
        );
        // 5 arrives in time; 6 and 7 do not.
        order.insert(5, "five");
        assert_eq!(
            delivered(order.poll(t + Duration::from_secs(5))),
            (5, "five", 0)
        );
        let later = t + Duration::from_secs(5);
        assert_eq!(order.poll(later), NextInOrder::WaitUntil(later + WAIT));
        assert_eq!(delivered(order.poll(later + WAIT)), (8, "eight", 2));
        assert_eq!(delivered(order.poll(later + WAIT)), (9, "nine", 0));
        // A straggler from the skipped gap is handed back for delivery at once.
        assert_eq!(order.insert(6, "six"), Some("six"));
        assert_eq!(order.poll(later + WAIT), NextInOrder::Idle);
    }

    #[test]
    fn drain_releases_everything_in_order() {
        let mut order = SendOrder::new(0, WAIT);
        order.insert(4, 'b');
        order.insert(2, 'a');
        assert_eq!(order.drain(), vec![(2, 'a'), (4, 'b')]);
        assert!(order.is_empty());
        assert_eq!(order.expected(), 5);
    }

    #[test]
    fn next_expected_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.json");
        let book = NextExpected::open(path.clone());
        assert_eq!(book.get("a.example"), 0);
        book.set("a.example", 7);
        book.set("b.example", 2);
        let book = NextExpected::open(path.clone());
        assert_eq!(book.get("a.example"), 7);
        assert_eq!(book.get("b.example"), 2);
        std::fs::write(&path, b"not json").unwrap();
        assert_eq!(NextExpected::open(path).get("a.example"), 0);
    }
}
