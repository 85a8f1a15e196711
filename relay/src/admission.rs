//! Which handshaken links a relay keeps, so that nobody can lock others out by holding links.
//!
//! Limits before and after the handshake:
//!
//! * Before: the accept loop's semaphore bounds handshakes in progress (each with its
//!   deadline), and [`PerPrefix`] bounds the links open from one address prefix (/24 for IPv4,
//!   /64 for IPv6: one host owns a whole prefix more often than one address).
//! * After: a link whose peer is a relay listed in the directory takes one of the slots
//!   reserved for relays ([`RELAY_SLOTS`]) and gives its link permit back; any other link
//!   keeps its permit for as long as it is open. When every permit is taken and a connection
//!   waits, the client link that has been quiet longest (no frame but `Padding` for at least
//!   [`EVICT_MIN_QUIET`]) is closed to make room; if every one of them is busy, the new
//!   connection waits (at most the handshake timeout). So links held open without traffic
//!   cost their holder the links, not honest peers the service.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Links kept for relays listed in the directory, beyond the client slots.
pub(crate) const RELAY_SLOTS: usize = 256;

/// A client link quiet for less than this is never closed to admit another one.
pub(crate) const EVICT_MIN_QUIET: Duration = Duration::from_secs(1);

/// The prefix an address is counted under: its /24 (IPv4) or /64 (IPv6).
pub(crate) fn prefix_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => prefix_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

/// Open links per address prefix.
#[derive(Debug, Default)]
pub(crate) struct PerPrefix {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one link of a prefix's allowance; gives it back on drop.
pub(crate) struct PrefixSlot {
    per_prefix: Arc<PerPrefix>,
    prefix: IpAddr,
}

impl PerPrefix {
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PrefixSlot> {
        let prefix = prefix_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(prefix).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PrefixSlot {
            per_prefix: self.clone(),
            prefix,
        })
    }
}

impl Drop for PrefixSlot {
    fn drop(&mut self) {
        let mut open = self
            .per_prefix
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.prefix) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.prefix);
            }
        }
    }
}

struct ClientEntry {
    last_active: Arc<AtomicU64>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Slots {
    clients: HashMap<u64, ClientEntry>,
    relays: usize,
    next_id: u64,
}

/// The slots of handshaken links.
pub(crate) struct Admission {
    client_slots: usize,
    relay_slots: usize,
    slots: Mutex<Slots>,
    start: Instant,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("client_slots", &self.client_slots)
            .field("relay_slots", &self.relay_slots)
            .finish_non_exhaustive()
    }
}

/// Why a link was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every client slot is held by a link that was active recently.
    Full,
}

/// A link's slot; frees it on drop.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    /// `None` for a relay slot.
    client_id: Option<u64>,
    last_active: Arc<AtomicU64>,
    /// Cancelled when the link is closed to make room for another.
    pub evicted: CancellationToken,
}

impl Admitted {
    /// Whether the link holds one of the slots reserved for relays.
    pub fn is_relay_slot(&self) -> bool {
        self.client_id.is_none()
    }

    /// The link carried a frame that does work (anything but `Padding`).
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, at: Instant) {
        self.last_active
            .store(self.admission.millis(at), Ordering::Relaxed);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut slots = self.admission.lock();
        match self.client_id {
            Some(id) => {
                slots.clients.remove(&id);
            }
            None => slots.relays = slots.relays.saturating_sub(1),
        }
    }
}

impl Admission {
    pub fn new(client_slots: usize, relay_slots: usize) -> Arc<Self> {
        Arc::new(Self {
            client_slots: client_slots.max(1),
            relay_slots,
            slots: Mutex::default(),
            start: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes the client link that has been quiet longest, if it has been quiet for at least
    /// [`EVICT_MIN_QUIET`]; returns whether one was closed. For the accept loop, when every
    /// link permit is taken and a connection waits.
    pub fn evict_quietest(&self, now: Instant) -> bool {
        let now_ms = self.millis(now);
        let quiet_for = u64::try_from(EVICT_MIN_QUIET.as_millis()).unwrap_or(u64::MAX);
        let mut slots = self.lock();
        let oldest = slots
            .clients
            .iter()
            .filter(|(_, e)| !e.evict.is_cancelled())
            .map(|(id, e)| (*id, e.last_active.load(Ordering::Relaxed)))
            .min_by_key(|(_, at)| *at)
            .filter(|(_, at)| now_ms.saturating_sub(*at) >= quiet_for);
        match oldest.and_then(|(id, _)| slots.clients.remove(&id)) {
            Some(e) => {
                e.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// A slot for a link just handshaken, `is_relay` if its key is a listed relay's. A new link
    /// counts as active now.
    pub fn admit(self: &Arc<Self>, is_relay: bool, now: Instant) -> Result<Admitted, Refused> {
        let now_ms = self.millis(now);
        let last_active = Arc::new(AtomicU64::new(now_ms));
        let evicted = CancellationToken::new();
        let mut slots = self.lock();
        if is_relay && slots.relays < self.relay_slots {
            slots.relays += 1;
            return Ok(Admitted {
                admission: self.clone(),
                client_id: None,
                last_active,
                evicted,
            });
        }
        if slots.clients.len() >= self.client_slots {
            let quiet_for = u64::try_from(EVICT_MIN_QUIET.as_millis()).unwrap_or(u64::MAX);
            let oldest = slots
                .clients
                .iter()
                .map(|(id, e)| (*id, e.last_active.load(Ordering::Relaxed)))
                .min_by_key(|(_, at)| *at)
                .filter(|(_, at)| now_ms.saturating_sub(*at) >= quiet_for);
            let Some((id, _)) = oldest else {
                return Err(Refused::Full);
            };
            if let Some(e) = slots.clients.remove(&id) {
                e.evict.cancel();
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        slots.clients.insert(
            id,
            ClientEntry {
                last_active: last_active.clone(),
                evict: evicted.clone(),
            },
        );
        Ok(Admitted {
            admission: self.clone(),
            client_id: Some(id),
            last_active,
            evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_24_and_64_bits() {
        let p = |s: &str| prefix_of(s.parse().expect("ip"));
        assert_eq!(p("10.1.2.3"), p("10.1.2.200"));
        assert_ne!(p("10.1.2.3"), p("10.1.3.3"));
        assert_eq!(p("2001:db8:1:2:aaaa::1"), p("2001:db8:1:2:bbbb::2"));
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:3::1"));
        assert_eq!(p("::ffff:10.1.2.3"), p("10.1.2.9"));
    }

    #[test]
    fn quiet_clients_make_room_busy_ones_do_not_and_relays_have_their_own_slots() {
        let a = Admission::new(2, 1);
        let t0 = Instant::now();
        let first = a.admit(false, t0).expect("room");
        let second = a.admit(false, t0).expect("room");
        // Both just became active: nobody is evicted.
        assert_eq!(
            a.admit(false, t0 + Duration::from_millis(500)).err(),
            Some(Refused::Full)
        );
        // A listed relay gets in anyway.
        let relay = a.admit(true, t0).expect("reserved");
        second.touch_at(t0 + Duration::from_millis(500));
        let later = t0 + Duration::from_millis(500) + EVICT_MIN_QUIET + Duration::from_millis(100);
        let third = a.admit(false, later).expect("the quiet one makes room");
        assert!(first.evicted.is_cancelled(), "the quietest link is closed");
        assert!(!second.evicted.is_cancelled());
        drop((first, relay, third));
        assert_eq!(a.lock().clients.len(), 1);
        assert_eq!(a.lock().relays, 0);
    }
}
