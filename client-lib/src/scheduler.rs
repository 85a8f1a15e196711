//! When to send: Loopix's independent Poisson streams, without a clock of its own.
//!
//! * [`Stream::Payload`] at `lambda_p`: the next queued real packet, or drop cover when the
//!   queue is empty. This is the stream that hides when real traffic happens.
//! * [`Stream::Loop`] at `lambda_l`: a loop packet through the network back to ourselves.
//! * [`Stream::Drop`] at `lambda_d`: drop cover.
//!
//! Each stream's next time is its previous *due* time plus an exponential gap, so a busy
//! sender catches up instead of drifting slower than its rate; a sender that fell more than
//! [`MAX_LAG`] behind (a suspended laptop) starts afresh from now instead of bursting.

use std::time::{Duration, Instant};

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Exp};

use crate::config::Rates;

/// How far behind schedule a stream may fall before it restarts from now.
pub const MAX_LAG: Duration = Duration::from_secs(1);

/// One of the sending streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Payload,
    Loop,
    Drop,
}

#[derive(Debug, Clone)]
struct StreamState {
    stream: Stream,
    gap: Option<Exp<f64>>,
    next: Option<Instant>,
}

impl StreamState {
    fn new<R: Rng + ?Sized>(stream: Stream, rate: f64, now: Instant, rng: &mut R) -> Self {
        let gap = (rate.is_finite() && rate > 0.0)
            .then(|| Exp::new(rate).ok())
            .flatten();
        let mut s = Self {
            stream,
            gap,
            next: None,
        };
        s.next = s.draw_after(now, rng);
        s
    }

    fn draw_after<R: Rng + ?Sized>(&self, from: Instant, rng: &mut R) -> Option<Instant> {
        let gap = self.gap.as_ref()?;
        let secs: f64 = gap.sample(rng);
        Some(from + Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(3600)))
    }
}

/// The three send streams. Sans-I/O: the caller sleeps until [`PoissonSchedule::next_due`]
/// and then calls [`PoissonSchedule::fire`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use spore_client::{PoissonSchedule, Rates, Stream};
///
/// let rates = Rates {
///     lambda_p: 10.0, lambda_l: 2.0, lambda_d: 2.0, mu: 20.0,
///     pull_interval: Duration::from_millis(500), max_delay: Duration::from_secs(60),
/// };
/// let mut rng = rand::rng();
/// let start = Instant::now();
/// let mut schedule = PoissonSchedule::new(&rates, start, &mut rng);
/// let (when, stream) = schedule.next_due().unwrap();
/// // ... sleep until `when`, send a packet of kind `stream`, then:
/// schedule.fire(stream, when, &mut rng);
/// assert!(schedule.next_due().unwrap().0 >= start);
/// ```
#[derive(Debug, Clone)]
pub struct PoissonSchedule {
    streams: Vec<StreamState>,
}

impl PoissonSchedule {
    pub fn new<R: Rng + ?Sized>(rates: &Rates, now: Instant, rng: &mut R) -> Self {
        Self {
            streams: vec![
                StreamState::new(Stream::Payload, rates.lambda_p, now, rng),
                StreamState::new(Stream::Loop, rates.lambda_l, now, rng),
                StreamState::new(Stream::Drop, rates.lambda_d, now, rng),
            ],
        }
    }

    /// The earliest due stream, or `None` if every rate is zero.
    pub fn next_due(&self) -> Option<(Instant, Stream)> {
        self.streams
            .iter()
            .filter_map(|s| s.next.map(|t| (t, s.stream)))
            .min_by_key(|(t, _)| *t)
    }

    /// Records that `stream` fired at `now` and schedules its next send.
    pub fn fire<R: Rng + ?Sized>(&mut self, stream: Stream, now: Instant, rng: &mut R) {
        for s in self.streams.iter_mut().filter(|s| s.stream == stream) {
            let due = s.next.unwrap_or(now);
            let from = if now.saturating_duration_since(due) > MAX_LAG {
                now
            } else {
                due
            };
            s.next = s.draw_after(from, rng);
        }
    }
}

/// Randomized exponential backoff for the `attempt`-th retransmission: uniformly within
/// `[base, 2 * base) * 2^attempt`, capped at `max`.
pub fn backoff<R: Rng + ?Sized>(
    rng: &mut R,
    base: Duration,
    attempt: u32,
    max: Duration,
) -> Duration {
    let factor = 2f64.powi(i32::try_from(attempt.min(20)).unwrap_or(20));
    let jitter: f64 = rng.random_range(1.0..2.0);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor * jitter)
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rates(p: f64, l: f64, d: f64) -> Rates {
        Rates {
            lambda_p: p,
            lambda_l: l,
            lambda_d: d,
            mu: 20.0,
            pull_interval: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }

    /// Runs the schedule on a fake clock that is always exactly on time.
    fn run(rates: &Rates, n: usize) -> Vec<(Instant, Stream)> {
        let mut rng = StdRng::seed_from_u64(7);
        let start = Instant::now();
        let mut s = PoissonSchedule::new(rates, start, &mut rng);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (t, stream) = s.next_due().unwrap();
            s.fire(stream, t, &mut rng);
            out.push((t, stream));
        }
        out
    }

    fn mean_cv(times: &[Instant]) -> (f64, f64) {
        let gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn merged_streams_are_poisson_at_the_total_rate() {
        let events = run(&rates(10.0, 2.0, 2.0), 20_000);
        let times: Vec<Instant> = events.iter().map(|(t, _)| *t).collect();
        let (mean, cv) = mean_cv(&times);
        assert!((mean - 1.0 / 14.0).abs() < 0.004, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "coefficient of variation {cv}");
        let loops = events.iter().filter(|(_, s)| *s == Stream::Loop).count() as f64;
        assert!((loops / 20_000.0 - 2.0 / 14.0).abs() < 0.01);
    }

    #[test]
    fn zero_rates_never_fire() {
        let mut rng = StdRng::seed_from_u64(1);
        let s = PoissonSchedule::new(&rates(0.0, 0.0, 0.0), Instant::now(), &mut rng);
        assert!(s.next_due().is_none());
        let events = run(&rates(5.0, 0.0, 0.0), 100);
        assert!(events.iter().all(|(_, s)| *s == Stream::Payload));
    }

    #[test]
    fn a_late_sender_catches_up_but_never_bursts_after_a_long_stall() {
        let mut rng = StdRng::seed_from_u64(3);
        let start = Instant::now();
        let mut s = PoissonSchedule::new(&rates(100.0, 0.0, 0.0), start, &mut rng);
        let (due, stream) = s.next_due().unwrap();
        // Fired 10 s late: the next send is scheduled from now, not from `due`.
        let late = due + Duration::from_secs(10);
        s.fire(stream, late, &mut rng);
        assert!(s.next_due().unwrap().0 >= late);
        // Fired slightly late: the next send keeps the schedule.
        let (due, stream) = s.next_due().unwrap();
        s.fire(stream, due + Duration::from_millis(1), &mut rng);
        let _ = s.next_due().unwrap();
    }

    #[test]
    fn backoff_grows_randomly_and_is_capped() {
        let mut rng = StdRng::seed_from_u64(5);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 0..4 {
            let b = backoff(&mut rng, base, attempt, max);
            let lo = base * 2u32.pow(attempt);
            assert!(
                b >= lo.min(max) && b <= (lo * 2).min(max),
                "{attempt}: {b:?}"
            );
        }
        assert_eq!(backoff(&mut rng, base, 30, max), max);
    }
}
