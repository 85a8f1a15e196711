//! The network-wide parameters a directory publishes.

use crate::codec::{Reader, Writer};
use crate::error::InvalidMessage;
use crate::params::PACKET_SIZE;

/// Network-wide parameters every client and relay uses, published in the directory so that
/// all senders look alike (a sender with its own rates would stand out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkParams {
    /// Per-hop delay rate (1/s): each hop's delay is exponential with mean `1/mu` seconds.
    pub mu: f64,
    /// Rate (1/s) of a client's payload stream, real or cover.
    pub lambda_p: f64,
    /// Rate (1/s) of a client's loop cover packets.
    pub lambda_l: f64,
    /// Rate (1/s) of a client's drop cover packets.
    pub lambda_d: f64,
    /// Rate (1/s) of a relay's own loop cover packets.
    pub lambda_m: f64,
    /// Must equal [`PACKET_SIZE`] in this protocol version.
    pub packet_size: u32,
    /// Sphinx keys rotate every epoch; epoch `n` covers `[n * len, (n + 1) * len)`.
    pub epoch_length_secs: u64,
    /// Relays drop headers asking for a longer per-hop delay.
    pub max_delay_ms: u64,
    /// How often a client pulls its mailbox.
    pub pull_interval_ms: u64,
}

impl Default for NetworkParams {
    fn default() -> Self {
        Self {
            mu: 20.0,
            lambda_p: 10.0,
            lambda_l: 2.0,
            lambda_d: 2.0,
            lambda_m: 2.0,
            packet_size: PACKET_SIZE as u32,
            epoch_length_secs: 3600,
            max_delay_ms: 60_000,
            pull_interval_ms: 500,
        }
    }
}

impl NetworkParams {
    /// Rates finite and positive, intervals non-zero, packet size this version's.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        let rates = [
            ("mu", self.mu),
            ("lambda_p", self.lambda_p),
            ("lambda_l", self.lambda_l),
            ("lambda_d", self.lambda_d),
            ("lambda_m", self.lambda_m),
        ];
        for (name, rate) in rates {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(InvalidMessage::BadValue(name));
            }
        }
        if usize::try_from(self.packet_size).ok() != Some(PACKET_SIZE) {
            return Err(InvalidMessage::BadValue("packet_size"));
        }
        if self.epoch_length_secs == 0 {
            return Err(InvalidMessage::BadValue("epoch_length_secs"));
        }
        if self.max_delay_ms == 0 {
            return Err(InvalidMessage::BadValue("max_delay_ms"));
        }
        if self.pull_interval_ms == 0 {
            return Err(InvalidMessage::BadValue("pull_interval_ms"));
        }
        Ok(())
    }

    pub(super) fn encode(&self, w: &mut Writer) {
        w.f64(self.mu)
            .f64(self.lambda_p)
            .f64(self.lambda_l)
            .f64(self.lambda_d)
            .f64(self.lambda_m)
            .u32(self.packet_size)
            .u64(self.epoch_length_secs)
            .u64(self.max_delay_ms)
            .u64(self.pull_interval_ms);
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let p = Self {
            mu: r.f64()?,
            lambda_p: r.f64()?,
            lambda_l: r.f64()?,
            lambda_d: r.f64()?,
            lambda_m: r.f64()?,
            packet_size: r.u32()?,
            epoch_length_secs: r.u64()?,
            max_delay_ms: r.u64()?,
            pull_interval_ms: r.u64()?,
        };
        p.validate()?;
        Ok(p)
    }
}
