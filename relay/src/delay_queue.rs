//! Holding packets for their per-hop delay: a binary heap of deadlines driven by one task.
//!
//! One heap and one timer for all pending packets: insertion and removal are O(log n), memory is
//! the packets themselves plus ~24 bytes each, and only the earliest deadline is ever armed as a
//! timer, so 10^6 pending packets cost a few hundred MB of packet data and nothing else. The heap
//! is bounded: when it is full, new packets are dropped (and counted) instead of growing memory.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::{Metrics, Queue};
use crate::shutdown::Shutdown;

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
        if self.heap.peek()?.at <= now {
            self.heap.pop().map(|e| e.item)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Something scheduled for later.
#[derive(Debug)]
pub struct Scheduled<T> {
    pub at: Instant,
    pub item: T,
}

/// Runs the delay queue until shutdown (or until every sender is gone): items arrive on `rx`,
/// leave through `release` at their deadline. Pending items are dropped at shutdown: none of
/// them was acknowledged by this relay.
pub async fn run<T, F>(
    mut rx: mpsc::Receiver<Scheduled<T>>,
    capacity: usize,
    mut release: F,
    metrics: std::sync::Arc<Metrics>,
    shutdown: Shutdown,
) where
    F: FnMut(T),
{
    let mut queue = DelayQueue::new(capacity);
    loop {
        let deadline = queue.next_deadline();
        tokio::select! {
            biased;
            _ = shutdown.signalled() => break,
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let mut n = 0i64;
                while let Some(item) = queue.pop_due(now) {
                    n += 1;
                    release(item);
                }
                metrics.queue_sub(Queue::Delay, n);
            }
            msg = rx.recv() => {
                let Some(first) = msg else { break };
                let mut next = Some(first);
                let mut n = 0i64;
                // Take what is already waiting without going back through select.
                while let Some(s) = next {
                    match queue.push(s.at, s.item) {
                        Ok(()) => n += 1,
                        Err(_) => metrics.dropped("delay_queue_full"),
                    }
                    next = if n < 1024 { rx.try_recv().ok() } else { None };
                }
                metrics.queue_add(Queue::Delay, n);
                // Items already due (delay 0, or a deadline that passed while the packet waited
                // for its group commit) leave now: a timer for a past deadline would only fire
                // at the runtime's next 1 ms tick, adding up to a millisecond per hop.
                let now = Instant::now();
                let mut released = 0i64;
                while let Some(item) = queue.pop_due(now) {
                    released += 1;
                    release(item);
                }
                metrics.queue_sub(Queue::Delay, released);
            }
        }
    }
    metrics.queue_sub(Queue::Delay, queue.len() as i64);
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
