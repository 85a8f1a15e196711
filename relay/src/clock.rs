//! Time, injectable: the relay reads every clock through a [`Clock`] its caller chose.
//!
//! Wall-clock time ([`Clock::now`]) sets epochs, retention and descriptor validity, so that
//! tests can move it forward without sleeping. Monotonic time ([`Clock::monotonic_now`]) times
//! per-hop delays and the latency metrics: they are short and never persisted, and by default
//! come from the operating system's monotonic clock even when the wall clock is manual, so that
//! moving wall time never releases a delayed packet early.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;

    /// Monotonic time, for delays and how long things took.
    fn monotonic_now(&self) -> Instant {
        Instant::now()
    }

    /// Seconds since the Unix epoch (0 if the clock is before 1970).
    fn now_unix(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A manual clock starting at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}
