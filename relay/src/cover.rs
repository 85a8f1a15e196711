//! Loop cover traffic from the relay itself (Loopix lambda_M).

use std::sync::Arc;

use spore_protocol::RelayId;

use crate::clock::Clock;
use crate::directory::DirectoryView;
use crate::keys::KeySchedule;
use crate::link_pool::LinkPool;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy)]
pub(crate) struct CoverSettings {
    pub rate: f64,
    pub schedule: KeySchedule,
}

pub(crate) fn spawn(
    settings: CoverSettings,
    self_id: RelayId,
    directory: Arc<DirectoryView>,
    pool: Arc<LinkPool>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let _ = (settings, self_id, directory, pool, clock, metrics, shutdown);
}
