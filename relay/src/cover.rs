//! Loop cover traffic from the relay itself (Loopix λ_M).
//!
//! At exponentially distributed intervals (a Poisson process of rate λ_M per second: the
//! directory's `lambda_m`, or `mix.loop_rate` where that is higher — configuration can only
//! raise it) the relay builds a packet that travels one mix of every layer and comes back to
//! itself, addressed to the drop mailbox. Loops make the relay's outgoing traffic look busy when
//! it is not, and loops that do not return raise the loop-loss alarm (`loop_monitor`). On by
//! default, from the first directory on.
//!
//! A loop carries a keyed hash of its SURB id (key random per process), so the relay knows
//! its own loops when they return and answers them with nothing, while every other final-hop
//! packet is answered with one emission (`final_hop_output`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use sha2::Sha256;

use rand::RngExt;
use spore_protocol::packet::{self, RouteHop};
use spore_protocol::params::{MIX_LAYERS, PACKET_SIZE, SURB_ID_SIZE};
use spore_protocol::{MailboxId, RelayId};

use crate::clock::Clock;
use crate::directory::{DirectoryView, NetworkView};
use crate::forward::Egress;
use crate::keys::{KeySchedule, RelayKeys};
use crate::loop_monitor::{self, LoopMonitor};
use crate::metrics::Metrics;
use crate::quarantine::HopQuarantine;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy)]
pub(crate) struct CoverSettings {
    /// Loops per second at least (the directory's λ_M is used where it is higher).
    pub rate: f64,
    pub schedule: KeySchedule,
    pub max_delay: Duration,
}

/// A loop route for `epoch`: one random mix per layer, then this relay. `None` if some layer
/// has no mix with a key for the epoch. A mix `quarantine` avoids at `now` (its link just
/// failed) is chosen only if its whole layer is.
pub(crate) fn loop_route(
    view: &NetworkView,
    keys: &RelayKeys,
    epoch: u64,
    quarantine: &HopQuarantine,
    now: Instant,
    rng: &mut impl rand::Rng,
) -> Option<Vec<RouteHop>> {
    let mut route = Vec::with_capacity(MIX_LAYERS + 1);
    for layer in 1..=MIX_LAYERS as u8 {
        let candidates: Vec<RouteHop> = view
            .mixes_in_layer(layer)
            .filter_map(|r| {
                Some(RouteHop {
                    id: r.id,
                    sphinx_key: r.sphinx_key(epoch)?,
                })
            })
            .collect();
        let candidates = quarantine.filter(candidates, |h| h.id, now);
        if candidates.is_empty() {
            return None;
        }
        let i = rng.random_range(0..candidates.len());
        route.push(*candidates.get(i)?);
    }
    route.push(RouteHop {
        id: keys.relay_id(),
        sphinx_key: keys.sphinx_public(epoch),
    });
    Some(route)
}

/// The key that marks this process's loops: random per process (a loop sent before a restart
/// returns as ordinary drop cover, which costs one decoy).
fn loop_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

/// The message a loop with this SURB id carries: a keyed hash of the id, so that the relay
/// knows its own loops when they come back without keeping any state per loop.
fn loop_message(surb_id: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF's output limit: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(loop_key()), surb_id).expand(b"spore/relay/loop/v1", &mut out);
    out
}

/// Whether a final-hop packet for the drop mailbox is one of this relay's own loops: it ends
/// here (it is this relay's own cover, not an arrival to answer) and counts as returned.
pub(crate) fn is_own_loop(surb_id: &[u8], payload: &[u8]) -> bool {
    packet::open_final_payload(payload).is_ok_and(|m| m == loop_message(surb_id))
}

/// Builds one loop packet (Sphinx work: call off the async threads).
pub(crate) fn build_loop(
    view: &NetworkView,
    keys: &RelayKeys,
    epoch: u64,
    max_delay: Duration,
    quarantine: &HopQuarantine,
    now: Instant,
) -> Option<(RelayId, Box<[u8; PACKET_SIZE]>, [u8; SURB_ID_SIZE])> {
    let mut rng = rand::rng();
    let route = loop_route(view, keys, epoch, quarantine, now, &mut rng)?;
    let delays = packet::sample_delays(&mut rng, view.mu, route.len(), max_delay).ok()?;
    let surb_id = packet::random_surb_id(&mut rng);
    let bytes = packet::build_packet(
        &route,
        MailboxId::DROP,
        surb_id,
        &delays,
        &loop_message(&surb_id),
    )
    .ok()?;
    let first = route.first()?.id;
    Some((first, bytes.into_boxed_slice().try_into().ok()?, surb_id))
}

/// The loop rate: the directory's λ_M, or the configured rate where that is higher.
fn loop_rate(view: &NetworkView, configured: f64) -> f64 {
    let published = spore_protocol::Directory::from_bytes(view.source_bytes())
        .map(|d| d.params.lambda_m)
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .unwrap_or(0.0);
    published.max(configured)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    settings: CoverSettings,
    keys: RelayKeys,
    directory: Arc<DirectoryView>,
    egress: Arc<Egress>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    loops: Arc<LoopMonitor>,
    quarantine: Arc<HopQuarantine>,
) {
    let task_shutdown = shutdown.clone();
    let check_shutdown = shutdown.clone();
    let check_loops = loops.clone();
    let check_metrics = metrics.clone();
    let check_clock = clock.clone();
    shutdown.spawn(async move {
        let mut tick = tokio::time::interval(loop_monitor::CHECK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = check_shutdown.signalled() => break,
                _ = tick.tick() => {}
            }
            let Some(v) = check_loops.check(check_clock.monotonic_now()) else {
                continue;
            };
            if v.alarm {
                check_metrics.loop_loss_alarm();
                tracing::warn!(
                    sent = v.sent,
                    returned = v.returned,
                    p_value = v.p_value,
                    false_alarm_rate = loop_monitor::FALSE_ALARM,
                    "loop loss: fewer of this relay's loops came back than an honest network \
                     loses; a relay on the loop routes may be dropping packets"
                );
            }
        }
    });
    shutdown.spawn(async move {
        loop {
            let Some(view) = directory.current() else {
                tokio::select! {
                    _ = task_shutdown.signalled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let rate = loop_rate(&view, settings.rate);
            if rate <= 0.0 {
                tokio::select! {
                    _ = task_shutdown.signalled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
            let wait = Duration::from_secs_f64((-u.ln() / rate).min(3600.0));
            tokio::select! {
                _ = task_shutdown.signalled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(view) = directory.current() else {
                continue;
            };
            let epoch = settings.schedule.epoch_at(clock.now_unix());
            let keys = keys.clone();
            let max_delay = settings.max_delay;
            let quarantine = quarantine.clone();
            let now = clock.monotonic_now();
            let built = tokio::task::spawn_blocking(move || {
                build_loop(&view, &keys, epoch, max_delay, &quarantine, now)
            })
            .await;
            match built {
                Ok(Some((hop, packet, surb_id))) => {
                    metrics.loop_sent();
                    loops.sent(surb_id, clock.monotonic_now());
                    egress.send(hop, packet, None);
                }
                _ => metrics.dropped("loop_no_route"),
            }
        }
    });
}
