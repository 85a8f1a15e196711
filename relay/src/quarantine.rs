//! Next hops this relay's own routing avoids for a while: those whose outbound link just failed
//! to connect. The link pool marks and clears them; loop cover (`cover`) and decoys
//! (`final_hop_output`) pick another relay of the same layer while one is marked.
//!
//! Forwarded packets are not rerouted (their route is in their Sphinx header); only routes this
//! relay chooses itself are. Without it a dead layer-1 mix kept receiving a share of the
//! relay's loops and decoys until the authorities dropped it an epoch later: those loops were
//! counted as lost (a false loop-loss alarm) and the packets held for the dead hop piled up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spore_protocol::RelayId;

/// How long after its last failed connect a next hop is avoided. The link to a failing hop is
/// retried at least every `link_pool::BACKOFF_MAX` (plus jitter), each failure renewing the
/// mark, so a hop that stays down stays avoided; a successful connect clears the mark at once.
/// Short, so that a mark left by a link task that ended (the hop left the directory, the relay
/// stops) or a transient failure costs the hop only a few seconds of this relay's cover.
pub(crate) const QUARANTINE: Duration = Duration::from_secs(10);

/// The marked hops, with when each last failed.
#[derive(Debug, Default)]
pub(crate) struct HopQuarantine {
    failed_at: Mutex<HashMap<RelayId, Instant>>,
}

impl HopQuarantine {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RelayId, Instant>> {
        self.failed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connect to `hop` failed at `now`.
    pub fn failed(&self, hop: RelayId, now: Instant) {
        let mut map = self.map();
        map.retain(|_, at| now.saturating_duration_since(*at) < QUARANTINE);
        map.insert(hop, now);
    }

    /// `hop` answered: use it again.
    pub fn reachable(&self, hop: &RelayId) {
        self.map().remove(hop);
    }

    /// Whether `hop` is to be avoided at `now`.
    #[cfg(test)]
    pub fn avoids(&self, hop: &RelayId, now: Instant) -> bool {
        self.map()
            .get(hop)
            .is_some_and(|at| now.saturating_duration_since(*at) < QUARANTINE)
    }

    /// The candidates not avoided at `now`; all of them if every one is (a route through a
    /// failing hop may still arrive once it returns, no route surely does not).
    pub fn filter<T>(
        &self,
        candidates: Vec<T>,
        id: impl Fn(&T) -> RelayId,
        now: Instant,
    ) -> Vec<T> {
        let map = self.map();
        if map.is_empty() {
            return candidates;
        }
        let bad = |c: &T| {
            map.get(&id(c))
                .is_some_and(|at| now.saturating_duration_since(*at) < QUARANTINE)
        };
        if candidates.iter().all(bad) {
            return candidates;
        }
        candidates.into_iter().filter(|c| !bad(c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_hop_is_avoided_until_it_answers_or_the_quarantine_ends() {
        let q = HopQuarantine::default();
        let (a, b) = (RelayId([1; 32]), RelayId([2; 32]));
        let t0 = Instant::now();
        q.failed(a, t0);
        assert!(q.avoids(&a, t0 + Duration::from_secs(1)));
        assert_eq!(q.filter(vec![a, b], |r| *r, t0), vec![b]);
        assert_eq!(q.filter(vec![a], |r| *r, t0), vec![a], "never no route");
        assert!(!q.avoids(&a, t0 + QUARANTINE));
        q.reachable(&a);
        assert!(!q.avoids(&a, t0));
    }
}
