//! Loop cover traffic from the relay itself (Loopix λ_M).
//!
//! At exponentially distributed intervals (a Poisson process of rate `mix.loop_rate` per
//! second) the relay builds a packet that travels one mix of every layer and comes back to
//! itself, addressed to the drop mailbox. Loops make the relay's outgoing traffic look busy when
//! it is not, and a loop that never returns tells the operator that part of the network is
//! dropping packets (`loops_sent` vs `cover_received`). Off by default.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use spore_protocol::packet::{self, RouteHop};
use spore_protocol::params::{MIX_LAYERS, PACKET_SIZE};
use spore_protocol::{MailboxId, RelayId};

use crate::clock::Clock;
use crate::directory::{DirectoryView, NetworkView};
use crate::forward::Egress;
use crate::keys::{KeySchedule, RelayKeys};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy)]
pub(crate) struct CoverSettings {
    /// Loops per second.
    pub rate: f64,
    pub schedule: KeySchedule,
    pub max_delay: Duration,
}

/// A loop route for `epoch`: one random mix per layer, then this relay. `None` if some layer
/// has no mix with a key for the epoch.
pub(crate) fn loop_route(
    view: &NetworkView,
    keys: &RelayKeys,
    epoch: u64,
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

/// Builds one loop packet (Sphinx work: call off the async threads).
fn build_loop(
    view: &NetworkView,
    keys: &RelayKeys,
    epoch: u64,
    max_delay: Duration,
) -> Option<(RelayId, Box<[u8; PACKET_SIZE]>)> {
    let mut rng = rand::rng();
    let route = loop_route(view, keys, epoch, &mut rng)?;
    let delays = packet::sample_delays(&mut rng, view.mu, route.len(), max_delay).ok()?;
    let mut message = vec![0u8; 32];
    rng.fill(&mut message[..]);
    let bytes = packet::build_packet(
        &route,
        MailboxId::DROP,
        packet::random_surb_id(&mut rng),
        &delays,
        &message,
    )
    .ok()?;
    let first = route.first()?.id;
    Some((first, bytes.into_boxed_slice().try_into().ok()?))
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
) {
    let task_shutdown = shutdown.clone();
    shutdown.spawn(async move {
        let rate = settings.rate.max(1e-6);
        loop {
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
            let built =
                tokio::task::spawn_blocking(move || build_loop(&view, &keys, epoch, max_delay))
                    .await;
            match built {
                Ok(Some((hop, packet))) => {
                    metrics.loop_sent();
                    egress.send(hop, packet, None);
                }
                _ => metrics.dropped("loop_no_route"),
            }
        }
    });
}
