//! Holding packets for their per-hop delay: a binary heap of deadlines driven by one thread.
//!
//! One heap and one timer for all pending packets: insertion and removal are O(log n), memory is
//! the packets themselves plus ~24 bytes each, and only the earliest deadline is ever armed as a
//! timer, so 10^6 pending packets cost a few hundred MB of packet data and nothing else. The heap
//! is bounded: when it is full, new packets are dropped (and counted) instead of growing memory.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, Queue};

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

/// Something scheduled for later.
#[derive(Debug)]
pub struct Scheduled<T> {
    pub at: Instant,
    pub item: T,
}

/// Most items taken from the channel before the queue looks at its deadlines again.
const INTAKE_BATCH: usize = 1024;

/// Starts the thread that holds items for their delay: items arrive on `rx` and leave through
/// `release` at their deadline, with how late they left. It exits once every sender is gone;
/// items still pending then are dropped (none of them was acknowledged by this relay).
/// `release` runs inside the tokio runtime current at the call, if there is one (releasing a
/// packet may start a link task).
///
/// A dedicated thread, not a tokio task: tokio's timer wheel has a 1 ms tick, so every delayed
/// packet would leave up to a millisecond after its deadline (half a millisecond on average,
/// added to every hop). Waiting on the channel with a timeout uses the kernel's
/// high-resolution timers instead (~50 µs slack), and an item that arrives already due (a
/// deadline spent waiting for the group commit) leaves at once.
pub fn spawn<T, F>(
    rx: Receiver<Scheduled<T>>,
    capacity: usize,
    mut release: F,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    T: Send + 'static,
    F: FnMut(T, Duration) + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("delay-queue".into())
        .spawn(move || {
            let _runtime = runtime.as_ref().map(|r| r.enter());
            precise_timers();
            let mut queue = DelayQueue::new(capacity);
            loop {
                let now = Instant::now();
                let mut released = 0i64;
                while let Some((at, item)) = queue.pop_due_at(now) {
                    released += 1;
                    release(item, now.saturating_duration_since(at));
                }
                metrics.queue_sub(Queue::Delay, released);
                let first = match queue.next_deadline() {
                    Some(at) => match rx.recv_timeout(at.saturating_duration_since(now)) {
                        Ok(s) => s,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match rx.recv() {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let mut next = Some(first);
                let mut n = 0usize;
                let mut added = 0i64;
                // Take what is already waiting before looking at the deadlines again.
                while let Some(s) = next {
                    n += 1;
                    match queue.push(s.at, s.item) {
                        Ok(()) => added += 1,
                        Err(_) => metrics.dropped("delay_queue_full"),
                    }
                    next = if n < INTAKE_BATCH {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                metrics.queue_add(Queue::Delay, added);
            }
            metrics.queue_sub(Queue::Delay, queue.len() as i64);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_thread_releases_in_deadline_order_never_early_and_stops_with_its_senders() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let thread = spawn(
            rx,
            16,
            move |item: u32, late| {
                let _ = out_tx.send((item, Instant::now(), late));
            },
            metrics.clone(),
        )
        .expect("thread");
        let t0 = Instant::now();
        // Sent out of order; one already due; one far away that must never come out.
        for (ms, item) in [(30u64, 3u32), (10, 1), (0, 0), (20, 2), (60_000, 9)] {
            let at = t0 + Duration::from_millis(ms);
            tx.send(Scheduled { at, item }).expect("send");
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            let (item, left, late) = out_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("released");
            let due = t0 + Duration::from_millis(u64::from(item) * 10);
            assert!(left >= due, "item {item} left before its deadline");
            assert!(late <= left.saturating_duration_since(due));
            got.push(item);
        }
        assert_eq!(got, [0, 1, 2, 3]);
        // The last sender gone: the thread ends at once, dropping what is still pending.
        drop(tx);
        thread.join().expect("joined");
        assert!(out_rx.try_recv().is_err());
        assert_eq!(metrics.snapshot().delay_queue, 0);
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
