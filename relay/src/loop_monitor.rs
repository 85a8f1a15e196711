//! Loop loss as a signal (Loopix's active-attack detection): the relay counts which of its own
//! loops come back, and raises an alarm when a window's returns are
//! too few for an honest network.
//!
//! Every `CHECK_EVERY`, the loops sent more than `SETTLE` ago (long enough for any honest
//! loop: five hop delays of mean 1/μ = 50 ms each, capped by the relay's maximum delay) are
//! judged together, once at least `MIN_LOOPS` of them have matured. Under the null hypothesis
//! "each loop returns with probability at least `HONEST_RETURN`" the number returned is at
//! least Binomial(n, `HONEST_RETURN`); the alarm fires when the lower tail P(X ≤ returned) is
//! below `FALSE_ALARM`. So an honest network whose loss stays under 5 % raises a false alarm
//! in at most one window in 10^4 (with 2 loops/s and 10-second windows, about one every 1.2
//! days of a network that loses exactly 5 %, and far fewer at realistic loss), while a relay on
//! the loop routes that drops a third of them is found within one window at λ_M = 2/s.
//! When it fires: a WARN line and the `loop_loss_alarms` metric.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spore_protocol::params::SURB_ID_SIZE;

/// How often matured loops are judged.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(10);
/// A loop sent longer ago than this that has not returned is counted lost.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// Fewest matured loops worth a test (fewer wait for the next check).
const MIN_LOOPS: usize = 20;
/// The least return rate of an honest network.
const HONEST_RETURN: f64 = 0.95;
/// Per-window false-alarm probability when the network is honest.
pub(crate) const FALSE_ALARM: f64 = 1e-4;
/// Loops remembered at most (older ones are judged or forgotten first).
const MAX_OUTSTANDING: usize = 1 << 16;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub sent: usize,
    pub returned: usize,
    /// P(an honest network returns this few or fewer).
    pub p_value: f64,
    pub alarm: bool,
}

#[derive(Debug, Default)]
struct Inner {
    sent: VecDeque<(Instant, [u8; SURB_ID_SIZE])>,
    returned: HashSet<[u8; SURB_ID_SIZE]>,
}

/// This relay's loops in flight.
#[derive(Debug, Default)]
pub(crate) struct LoopMonitor {
    inner: Mutex<Inner>,
}

impl LoopMonitor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A loop with this SURB id left (or will leave) at about `now`.
    pub fn sent(&self, surb_id: [u8; SURB_ID_SIZE], now: Instant) {
        let mut i = self.lock();
        if i.sent.len() >= MAX_OUTSTANDING
            && let Some((_, old)) = i.sent.pop_front()
        {
            i.returned.remove(&old);
        }
        i.sent.push_back((now, surb_id));
    }

    /// One of this relay's loops came back.
    pub fn returned(&self, surb_id: [u8; SURB_ID_SIZE]) {
        let mut i = self.lock();
        if i.returned.len() < MAX_OUTSTANDING {
            i.returned.insert(surb_id);
        }
    }

    /// Judges the loops sent before `now - SETTLE`, if there are enough of them.
    pub fn check(&self, now: Instant) -> Option<Verdict> {
        let mut i = self.lock();
        let cutoff = now.checked_sub(SETTLE)?;
        let matured = i.sent.iter().take_while(|(t, _)| *t <= cutoff).count();
        if matured < MIN_LOOPS {
            return None;
        }
        let mut returned = 0;
        for _ in 0..matured {
            if let Some((_, id)) = i.sent.pop_front()
                && i.returned.remove(&id)
            {
                returned += 1;
            }
        }
        let p_value = binomial_lower_tail(matured, returned, HONEST_RETURN);
        Some(Verdict {
            sent: matured,
            returned,
            p_value,
            alarm: p_value < FALSE_ALARM,
        })
    }
}

/// P(X ≤ k) for X ~ Binomial(n, p), summed in log space (no underflow for large n).
pub(crate) fn binomial_lower_tail(n: usize, k: usize, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // log pmf(0) = n ln q; pmf(i+1) = pmf(i) · (n-i)/(i+1) · p/q.
    let mut log_pmf = n as f64 * lq;
    let mut total = f64::NEG_INFINITY;
    for i in 0..=k {
        let (hi, lo) = if total > log_pmf {
            (total, log_pmf)
        } else {
            (log_pmf, total)
        };
        total = hi + (lo - hi).exp().ln_1p();
        log_pmf += ((n - i) as f64 / (i + 1) as f64).ln() + lp - lq;
    }
    total.exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tail_matches_small_cases() {
        // n = 3, p = 0.5: P(X ≤ 0) = 1/8, P(X ≤ 1) = 1/2.
        assert!((binomial_lower_tail(3, 0, 0.5) - 0.125).abs() < 1e-12);
        assert!((binomial_lower_tail(3, 1, 0.5) - 0.5).abs() < 1e-12);
        assert_eq!(binomial_lower_tail(3, 3, 0.5), 1.0);
        assert!(binomial_lower_tail(1000, 0, 0.95) < 1e-300_f64.max(0.0) + 1e-300);
    }

    #[test]
    fn honest_returns_raise_no_alarm_and_a_third_lost_does() {
        let m = LoopMonitor::default();
        let t0 = Instant::now();
        for i in 0..40u8 {
            m.sent([i; 16], t0);
            if i != 7 {
                m.returned([i; 16]);
            }
        }
        assert_eq!(m.check(t0), None, "not matured yet");
        let v = m.check(t0 + SETTLE).expect("40 matured");
        assert_eq!((v.sent, v.returned, v.alarm), (40, 39, false));
        for i in 0..40u8 {
            m.sent([100 + i; 16], t0);
            if i % 3 != 0 {
                m.returned([100 + i; 16]);
            }
        }
        let v = m.check(t0 + SETTLE).expect("40 matured");
        assert_eq!((v.sent, v.returned), (40, 26));
        assert!(v.alarm, "{v:?}");
    }
}
