//! Route choice from loop loss (issues 15 and 19): which mixes a client stops routing through.
//!
//! Every loop remembers the mixes on its route (one per layer). When it returns or is counted
//! lost, [`RouteQuarantine::record`] adds that to a sliding window of outcomes. A mix is
//! *implicated* when the loops through it were lost significantly more often than the loops
//! that avoided it, over the same window: a one-sided Fisher exact test.
//!
//! - `N`, `K`: loops in the window and how many were lost; `n`, `k`: loops through the mix
//!   and how many of those were lost.
//! - If loss does not depend on whether a loop crossed the mix, `k` given the margins is
//!   `Hypergeometric(N, K, n)`. The mix is implicated when `k >= MIN_LOSSES` and
//!   `P[Hypergeometric(N, K, n) >= k]` is below [`FALSE_ALARM`] (1e-6).
//!
//! (A binomial test against the loss rate of the other loops was tried first: with that rate
//! estimated from a few hundred loops it fired in an honest network with 10 % loss, as the
//! estimate's own noise is not in the binomial tail. The exact test conditions on it.)
//!
//! With three-hop mix routes a mix that drops everything loses all of its loops, while each
//! honest mix of the other layers shares the blame only for the loops that happened to cross
//! the dropper, as often as the loops avoiding it did, so the test does not fire for them.
//! For an honest mix, each test is a false alarm with probability at most 1e-6; a test runs
//! only for the mixes of a lost loop, i.e. about `3 * lambda_L * loss` tests a second (at
//! the default 2 loops/s and 1 % loss, ~5,000 a day: one false quarantine of one mix every
//! ~200 days per client; at 10 % loss, one every ~20 days, for [`QUARANTINE`]). In a
//! loss-free network a mix that drops everything is implicated after about
//! `ln(1e-6) / ln(share of loops it carries)` losses: 13 with 3 mixes a layer, 20 with 2.
//!
//! An implicated mix is quarantined for [`QUARANTINE`] and then comes back with its evidence
//! cleared (loops resolved before its release no longer count against it). At most half of a
//! layer's mixes (as seen in the window) are quarantined at once, so an attacker who makes
//! honest mixes look bad cannot empty a layer, or concentrate this client's routes onto the
//! few mixes it keeps (see docs/privacy.md); and route choice itself falls back to the whole
//! layer if every mix of it is excluded ([`spore_protocol::route::RouteSelector::excluding`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use spore_protocol::RelayId;

/// How long loop outcomes count as evidence.
pub(crate) const WINDOW: Duration = Duration::from_secs(600);
/// At most this many outcomes are kept (memory bound, and the cost of one test).
const MAX_OUTCOMES: usize = 4096;
/// How long an implicated mix is kept out of route choice.
pub(crate) const QUARANTINE: Duration = Duration::from_secs(600);
/// The test's false-alarm probability per evaluation (one mix after one lost loop).
pub(crate) const FALSE_ALARM: f64 = 1e-6;
/// Fewer lost loops than this never implicate a mix, whatever the baseline.
pub(crate) const MIN_LOSSES: u32 = 4;

/// One resolved loop: the mixes on its route (index = layer - 1) and whether it came back.
struct Outcome {
    at: Instant,
    mixes: Vec<RelayId>,
    lost: bool,
}

/// A mix kept out of route choice.
struct Quarantined {
    until: Instant,
    layer: usize,
}

/// The per-mix loss evidence and the quarantine: see the module documentation.
#[derive(Default)]
pub(crate) struct RouteQuarantine {
    window: VecDeque<Outcome>,
    quarantined: HashMap<RelayId, Quarantined>,
    /// Released mixes: outcomes resolved before this do not count against them.
    released_at: HashMap<RelayId, Instant>,
}

impl RouteQuarantine {
    /// A loop through `mixes` returned (`lost == false`) or was counted lost. Returns the mixes
    /// newly quarantined because of it.
    pub fn record(&mut self, mixes: &[RelayId], lost: bool, now: Instant) -> Vec<RelayId> {
        if mixes.is_empty() {
            return Vec::new();
        }
        self.window.push_back(Outcome {
            at: now,
            mixes: mixes.to_vec(),
            lost,
        });
        self.prune(now);
        if !lost {
            return Vec::new();
        }
        let mut newly = Vec::new();
        for (layer, mix) in mixes.iter().enumerate() {
            if self.quarantined.contains_key(mix) || !self.implicated(mix) {
                continue;
            }
            if self.quarantined_in(layer) + 1 > self.layer_size(layer) / 2 {
                tracing::debug!(
                    layer = layer + 1,
                    "a mix looks bad but half its layer is out"
                );
                continue;
            }
            self.quarantined.insert(
                *mix,
                Quarantined {
                    until: now + QUARANTINE,
                    layer,
                },
            );
            newly.push(*mix);
        }
        newly
    }

    /// Releases the mixes whose quarantine is over; `true` if any was.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.quarantined.len();
        let released: Vec<RelayId> = self
            .quarantined
            .iter()
            .filter(|(_, q)| q.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in released {
            self.quarantined.remove(&id);
            self.released_at.insert(id, now);
        }
        self.prune(now);
        self.quarantined.len() != before
    }

    /// The mixes route choice should avoid now.
    pub fn excluded(&self) -> HashSet<RelayId> {
        self.quarantined.keys().copied().collect()
    }

    /// How many mixes are quarantined now.
    pub fn len(&self) -> usize {
        self.quarantined.len()
    }

    fn prune(&mut self, now: Instant) {
        while self
            .window
            .front()
            .is_some_and(|o| now.saturating_duration_since(o.at) > WINDOW)
            || self.window.len() > MAX_OUTCOMES
        {
            self.window.pop_front();
        }
        let oldest = self.window.front().map(|o| o.at);
        self.released_at
            .retain(|_, at| oldest.is_some_and(|oldest| oldest <= *at));
    }

    fn quarantined_in(&self, layer: usize) -> usize {
        self.quarantined
            .values()
            .filter(|q| q.layer == layer)
            .count()
    }

    /// Distinct mixes seen in `layer` over the window (quarantined ones included).
    fn layer_size(&self, layer: usize) -> usize {
        let mut seen: HashSet<&RelayId> = self
            .window
            .iter()
            .filter_map(|o| o.mixes.get(layer))
            .collect();
        seen.extend(
            self.quarantined
                .iter()
                .filter(|(_, q)| q.layer == layer)
                .map(|(id, _)| id),
        );
        seen.len()
    }

    /// The binomial test of the module documentation.
    fn implicated(&self, mix: &RelayId) -> bool {
        let since = self.released_at.get(mix).copied();
        let (mut total, mut total_lost, mut n, mut k) = (0u32, 0u32, 0u32, 0u32);
        for o in &self.window {
            let through = o.mixes.contains(mix);
            if through && since.is_some_and(|s| o.at < s) {
                continue; // before its release: not evidence about it, nor a baseline
            }
            total += 1;
            total_lost += u32::from(o.lost);
            if through {
                n += 1;
                k += u32::from(o.lost);
            }
        }
        k >= MIN_LOSSES && hypergeometric_tail(total, total_lost, n, k) < FALSE_ALARM
    }
}

/// `ln(x!)`.
fn ln_factorial(x: u32) -> f64 {
    (2..=x).map(|i| f64::from(i).ln()).sum()
}

/// `P[X >= k]` for `X ~ Hypergeometric(total, lost, drawn)`: of `total` loops, `lost` lost,
/// `drawn` went through the mix; the chance that `k` or more of those are among the lost.
/// Summed from the term at `k`, the largest when `k` is above the mean (otherwise the tail is
/// about one half or more, and 1 is returned).
pub(crate) fn hypergeometric_tail(total: u32, lost: u32, drawn: u32, k: u32) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lost > total || drawn > total || k > drawn.min(lost) {
        return 0.0;
    }
    if u64::from(k) * u64::from(total) <= u64::from(drawn) * u64::from(lost) {
        return 1.0;
    }
    // The lowest k the margins allow: drawn - (total - lost) loops through it must be lost.
    if k + (total - lost) <= drawn {
        return 1.0;
    }
    let ln_choose = |a: u32, b: u32| ln_factorial(a) - ln_factorial(b) - ln_factorial(a - b);
    let mut term =
        (ln_choose(lost, k) + ln_choose(total - lost, drawn - k) - ln_choose(total, drawn)).exp();
    let mut tail = 0.0;
    for i in k..=drawn.min(lost) {
        tail += term;
        // P(i + 1) / P(i) = (lost - i)(drawn - i) / ((i + 1)(total - lost - drawn + i + 1))
        let num = f64::from(lost - i) * f64::from(drawn - i);
        let den =
            f64::from(i + 1) * (f64::from(total - lost) - f64::from(drawn) + f64::from(i + 1));
        if num == 0.0 || den <= 0.0 {
            break;
        }
        term *= num / den;
        if term < tail * 1e-17 {
            break;
        }
    }
    tail.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypergeometric_tail_matches_exact_values() {
        // 10 loops, 4 lost, 5 through the mix: P[X >= 3] = (C(4,3) C(6,2) + C(4,4) C(6,1)) /
        // C(10,5) = (60 + 6) / 252.
        assert!((hypergeometric_tail(10, 4, 5, 3) - 66.0 / 252.0).abs() < 1e-12);
        // All 13 losses on the third of the loops through the mix: about (1/3)^13.
        let p = hypergeometric_tail(3000, 13, 1000, 13);
        assert!(p < 1e-6 && p > 1e-7, "{p}");
        assert_eq!(hypergeometric_tail(10, 4, 5, 2), 1.0);
        assert_eq!(hypergeometric_tail(10, 4, 5, 0), 1.0);
        assert_eq!(hypergeometric_tail(10, 4, 5, 5), 0.0);
        assert!(hypergeometric_tail(4000, 2000, 2000, 2000) < 1e-300);
    }

    fn ids(n: u8) -> Vec<RelayId> {
        (0..n).map(|i| RelayId([i; 32])).collect()
    }

    #[test]
    fn a_layer_never_loses_more_than_half_its_mixes() {
        let m = ids(7); // layer 1: m0, m1, m2; layer 2: m3, m4; layer 3: m5, m6
        let mut q = RouteQuarantine::default();
        let now = Instant::now();
        // m0 and m1 both lose every loop: only one of them may go (half of three is one).
        for i in 0..600 {
            let route = [m[i % 3], m[3 + (i / 3) % 2], m[5 + (i / 6) % 2]];
            q.record(&route, i % 3 != 2, now);
        }
        let out = q.excluded();
        assert_eq!(out.len(), 1, "one of the two droppers");
        assert!(out.contains(&m[0]) || out.contains(&m[1]));
    }
}
