//! What a mailbox relay emits for each packet that ends here, so that its output does not say
//! whether the packet was a real delivery or drop cover (issue 15; docs/privacy.md).
//!
//! Before, a real message (or loop) made its SURB-ack leave right after the store and drop
//! cover made nothing: the relay's neighbours saw +1 packet per real delivery, within a few
//! milliseconds of the arrival that caused it. Now every final-hop packet makes exactly one
//! [`Emission`], and every emission leaves after a delay drawn like any hop's (exponential,
//! rate μ from the directory, capped at the relay's maximum delay):
//!
//! * a payload with a SURB-ack: the ack;
//! * drop cover, or a payload without an ack (a reply): a decoy, a loop of this relay's own
//!   (one mix per layer, back to this relay's drop mailbox), built like relay loop cover.
//!
//! Both are Sphinx packets of the one size to a layer-1 mix, so count, timing and first hop
//! have the same distribution whether the arrival was real or cover. The price: one extra
//! outgoing packet per drop-cover packet a relay receives (λ_D per client, about 2 packets/s)
//! and one Sphinx build (~4 X25519 operations) per decoy on a worker.

use std::time::Duration;

use spore_protocol::directory::NetworkParams;
use spore_protocol::packet;

use crate::cover;
use crate::forward::OutboundPacket;
use crate::mix::MixContext;

/// A packet of this relay's own, and how long after the commit it leaves.
#[derive(Debug)]
pub(crate) struct Emission {
    pub packet: OutboundPacket,
    pub delay: Duration,
}

/// The hop-delay rate μ: the directory's, or the default parameters' before one is known.
fn mu(ctx: &MixContext) -> f64 {
    ctx.directory
        .current()
        .map(|v| v.mu)
        .filter(|mu| mu.is_finite() && *mu > 0.0)
        .unwrap_or(NetworkParams::default().mu)
}

/// One hop delay: exponential with rate μ, at most the relay's maximum delay.
fn hop_delay(ctx: &MixContext) -> Duration {
    packet::sample_delays(&mut rand::rng(), mu(ctx), 1, ctx.limits.max_delay)
        .ok()
        .and_then(|d| d.first().copied())
        .unwrap_or(Duration::ZERO)
}

/// `packet` (a SURB-ack), leaving after a hop delay.
pub(crate) fn delayed(ctx: &MixContext, packet: OutboundPacket) -> Emission {
    Emission {
        packet,
        delay: hop_delay(ctx),
    }
}

/// A decoy loop leaving after a hop delay; `None` while the relay has no directory with a mix
/// in every layer (it could not route one).
pub(crate) fn decoy(ctx: &MixContext) -> Option<Emission> {
    let view = ctx.directory.current()?;
    let epoch = ctx.schedule.epoch_at(ctx.clock.now_unix());
    let (hop, packet, surb_id) = cover::build_loop(&view, &ctx.keys, epoch, ctx.limits.max_delay)?;
    ctx.loops.sent(surb_id, ctx.clock.monotonic_now());
    Some(Emission {
        packet: (hop, packet),
        delay: hop_delay(ctx),
    })
}
