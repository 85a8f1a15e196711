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
//! * drop cover, or a payload without an ack (a reply, an arriving ack): a decoy, a one-hop
//!   Sphinx packet to a random layer-1 mix, addressed to its drop mailbox.
//!
//! Both are Sphinx packets of the one size to a layer-1 mix, so count, timing and first hop
//! have the same distribution whether the arrival was real or cover. The layer-1 mix itself
//! can tell a decoy (it ends there) from an ack (it goes on): a full loop through every layer
//! would hide that too, but doubled the network's unwrap load at high cover rates (the
//! delivery tests at 200 cover packets/s per client stalled); see docs/privacy.md. Only relays
//! with the mailbox role send decoys (a mix that receives one just drops it, or decoys would
//! answer decoys). The price: one extra packet per ack-less final-hop arrival, one one-hop
//! Sphinx build (~2 X25519 operations) here and one unwrap at the layer-1 mix.
//!
//! A decoy avoids a layer-1 mix whose link from here just failed (`quarantine`), choosing
//! another: a decoy is this relay's own route, so nothing is lost by choosing again.

use std::time::{Duration, Instant};

use spore_protocol::directory::NetworkParams;
use spore_protocol::packet;

use rand::RngExt;
use spore_protocol::MailboxId;
use spore_protocol::packet::RouteHop;

use crate::forward::OutboundPacket;
use crate::mix::MixContext;

/// What a decoy carries: only the layer-1 mix that unwraps it sees this, and it knows a decoy
/// anyway (a drop-mailbox packet that ends at a mix). A relay with both roles must not answer
/// a decoy with another, or decoys would circulate for ever.
const DECOY_MESSAGE: &[u8] = b"spore/relay/decoy/v1";

/// Whether a final-hop payload for the drop mailbox is another relay's decoy.
pub(crate) fn is_decoy(payload: &[u8]) -> bool {
    packet::open_final_payload(payload).is_ok_and(|m| m == DECOY_MESSAGE)
}

/// A packet of this relay's own, and when it leaves: a hop delay after the arrival it answers
/// was received (never before the commit: `Forwarder::send_at`).
///
/// Timed from the arrival, not from the unwrap or the commit: a decoy costs a Sphinx build
/// in the worker and a stored message the database's fsync in the commit, so any later
/// starting point would differ by class, and a neighbour counting outputs per window could
/// tell real deliveries from cover (0.55-0.62 accuracy in the output test when timed from the
/// commit).
#[derive(Debug)]
pub(crate) struct Emission {
    pub packet: OutboundPacket,
    pub at: Instant,
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

/// `packet` (a SURB-ack), leaving a hop delay after `received`.
pub(crate) fn delayed(ctx: &MixContext, packet: OutboundPacket, received: Instant) -> Emission {
    Emission {
        packet,
        at: received + hop_delay(ctx),
    }
}

/// A decoy leaving a hop delay after `received`; `None` for a relay without the mailbox role,
/// and while the relay has no directory with a layer-1 mix (it could not route one).
pub(crate) fn decoy(ctx: &MixContext, received: Instant) -> Option<Emission> {
    ctx.mailbox.as_ref()?;
    let view = ctx.directory.current()?;
    let epoch = ctx.schedule.epoch_at(ctx.clock.now_unix());
    let mut rng = rand::rng();
    let candidates: Vec<RouteHop> = view
        .mixes_in_layer(1)
        .filter_map(|r| {
            Some(RouteHop {
                id: r.id,
                sphinx_key: r.sphinx_key(epoch)?,
            })
        })
        .collect();
    // Not to a mix whose link just failed, unless every layer-1 mix's did.
    let candidates = ctx
        .quarantine
        .filter(candidates, |h| h.id, ctx.clock.monotonic_now());
    if candidates.is_empty() {
        return None;
    }
    let hop = *candidates.get(rng.random_range(0..candidates.len()))?;
    let delays = packet::sample_delays(&mut rng, mu(ctx), 1, ctx.limits.max_delay).ok()?;
    let bytes = packet::build_packet(
        &[hop],
        MailboxId::DROP,
        packet::random_surb_id(&mut rng),
        &delays,
        DECOY_MESSAGE,
    )
    .ok()?;
    Some(Emission {
        packet: (hop.id, bytes.into_boxed_slice().try_into().ok()?),
        at: received + hop_delay(ctx),
    })
}
