//! Holding packets for their per-hop delay: a binary heap of deadlines driven by one thread.
//!
//! One heap and one timer for all pending packets: insertion and removal are O(log n), memory is
//! the packets themselves plus ~24 bytes each, and only the earliest deadline is ever armed as a
//! timer, so 10^6 pending packets cost a few hundred MB of packet data and nothing else. The heap
//! is bounded: when it is full, new packets are dropped (and counted) instead of growing memory.
//! The thread that drives it is `forward`'s.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use std::time::Instant;

struct Entry<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top; equal
    // deadlines leave in insertion order.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A bounded min-heap of items by deadline.
pub struct DelayQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
    capacity: usize,
}

impl<T> std::fmt::Debug for DelayQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayQueue")
            .field("len", &self.heap.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T> DelayQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(capacity.min(1 << 16)),
            seq: 0,
            capacity,
        }
    }

    /// Schedules `item` for `at`; gives it back if the queue is full.
    pub fn push(&mut self, at: Instant, item: T) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            return Err(item);
        }
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Entry {
            at,
            seq: self.seq,
            item,
        });
        Ok(())
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The earliest item whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        self.pop_due_at(now).map(|(_, item)| item)
    }

    /// The earliest item whose deadline is at or before `now`, with that deadline.
    pub fn pop_due_at(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.heap.peek()?.at <= now {
            self.heap.pop().map(|e| (e.at, e.item))
        } else {
            None
        }
    }

    /// Takes every item out, with its deadline, in no particular order.
    pub fn drain(&mut self) -> Vec<(Instant, T)> {
        self.heap.drain().map(|e| (e.at, e.item)).collect()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Asks the kernel to fire the calling thread's timers on time: by default Linux may fire a
/// sleeping thread's timer up to 50 µs late, to batch wake-ups, and every delayed packet would
/// pay that (`spore bench latency`: the delay timer's p50 lateness fell from 117–127 µs to
/// 67–74 µs). Best effort: where it cannot be set, the default slack stays.
pub fn precise_timers() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_is_bounded() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(3);
        q.push(t0 + Duration::from_millis(30), 'c').expect("room");
        q.push(t0 + Duration::from_millis(10), 'a').expect("room");
        q.push(t0 + Duration::from_millis(10), 'b').expect("room");
        assert_eq!(q.push(t0, 'x'), Err('x'));
        assert_eq!(q.pop_due(t0), None);
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(q.pop_due(t1), Some('a'));
        assert_eq!(q.pop_due(t1), Some('b'));
        assert_eq!(q.pop_due(t1), None);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(30)));
    }

    #[test]
    fn a_million_pending_items() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(1_000_000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..1_000_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            q.push(t0 + Duration::from_micros(x % 60_000_000), i)
                .expect("room");
        }
        let end = t0 + Duration::from_secs(61);
        let mut last = t0;
        let mut n = 0;
        while let Some(deadline) = q.next_deadline() {
            assert!(deadline >= last);
            last = deadline;
            q.pop_due(end).expect("due");
            n += 1;
        }
        assert_eq!(n, 1_000_000);
    }
}
