//! When, within an epoch, an authority votes, builds the consensus and stops waiting for votes.

/// Fractions of the epoch, fixed so that every authority acts at the same wall-clock times.
pub const VOTE_AT: f64 = 0.35;
pub const CONSENSUS_AT: f64 = 0.45;
pub const VOTES_UNTIL: f64 = 0.55;

/// The epoch arithmetic for one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub epoch_length_secs: u64,
}

impl Schedule {
    pub fn epoch_at(&self, now_unix: u64) -> u64 {
        now_unix / self.epoch_length_secs.max(1)
    }

    /// How far into its epoch `now_ms` (Unix milliseconds) is, in `[0, 1)`.
    pub fn phase(&self, now_ms: u64) -> f64 {
        let len_ms = self.epoch_length_secs.max(1) * 1000;
        (now_ms % len_ms) as f64 / len_ms as f64
    }

    /// The instant (Unix seconds) at which votes for `round` are taken: the descriptors voted
    /// on, and the votes and signatures received, are checked as of then, so every authority
    /// checks them at the same time however late it runs.
    pub fn vote_time(&self, round: u64) -> u64 {
        let len = self.epoch_length_secs;
        self.start_of(round.saturating_sub(1)) + (len * 35).div_ceil(100)
    }

    pub fn start_of(&self, epoch: u64) -> u64 {
        epoch.saturating_mul(self.epoch_length_secs)
    }

    /// The document for `epoch` is valid from a quarter into the epoch before it (before the
    /// vote, so every descriptor voted on was published by then, and early enough that a
    /// reader whose clock is somewhat behind accepts it when it is published at about
    /// `CONSENSUS_AT`) to the end of `epoch`.
    pub fn validity(&self, epoch: u64) -> (u64, u64) {
        let start = self.start_of(epoch);
        (
            start.saturating_sub(self.epoch_length_secs - self.epoch_length_secs / 4),
            self.start_of(epoch + 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_starts_before_the_vote_in_the_previous_epoch() {
        let s = Schedule {
            epoch_length_secs: 20,
        };
        assert_eq!(s.validity(10), (185, 220));
        assert_eq!(s.epoch_at(219), 10);
        assert_eq!(s.vote_time(10), 187);
        assert!((s.phase(207_000) - 0.35).abs() < 1e-9);
    }
}
