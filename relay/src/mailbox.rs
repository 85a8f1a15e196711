//! The mailbox role's link side: owner-authenticated pulls and deletes, and retention.
//!
//! A link's mailbox is `MailboxId::for_key_bytes(remote static key)`, fixed at the handshake.
//! Requests name no mailbox, so a peer can only ever read or delete the mailbox of the key it
//! proved it holds; any other key simply owns an (empty) mailbox of its own.
//!
//! A pull answers with exactly `PULL_SLOTS` slots, real items oldest first and dummies after,
//! so the response size says nothing about how much is waiting. Pulling deletes nothing: an
//! item goes away only when its owner sends `Delete` for its handle (after storing it durably
//! on its side), so a pull interrupted at any point loses nothing.

use std::sync::Arc;
use std::time::Duration;

use spore_protocol::MailboxId;
use spore_protocol::link::MailboxItem;
use spore_protocol::params::BULK_PULL_SLOTS;

use crate::clock::Clock;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Database, MailboxStore};

/// Pulls, deletes and retention over a [`MailboxStore`].
#[derive(Debug, Clone)]
pub struct MailboxService {
    store: Arc<MailboxStore>,
    db: Database,
    metrics: Arc<Metrics>,
}

impl MailboxService {
    pub(crate) fn new(store: Arc<MailboxStore>, db: Database, metrics: Arc<Metrics>) -> Self {
        let s = Self { store, db, metrics };
        s.update_gauges();
        s
    }

    fn update_gauges(&self) {
        let (items, bytes) = self.store.total_usage();
        self.metrics.set_mailbox_usage(items, bytes);
        self.metrics
            .set_mailbox_damaged_records(self.store.damaged_records());
    }

    /// The oldest (at most `slots`, which is [`PULL_SLOTS`](spore_protocol::params::PULL_SLOTS) or `BULK_PULL_SLOTS`) items of
    /// `owner`'s mailbox, for a pull; the link's [`spore_protocol::pull::RelayPull`] pads them
    /// into slots. Blocking (file reads).
    pub fn pull(&self, owner: &MailboxId, slots: usize) -> Result<Vec<MailboxItem>> {
        self.metrics.pull();
        let items = self.store.pull(owner, slots.min(BULK_PULL_SLOTS))?;
        Ok(items
            .into_iter()
            .map(|it| MailboxItem {
                handle: it.handle,
                surb_id: it.surb_id,
                payload: it.payload,
            })
            .collect())
    }

    /// Registers and revokes capabilities of `owner`'s mailbox, durably. Blocking (one
    /// `fdatasync` when anything changed).
    pub fn apply_capability_ops(
        &self,
        owner: &MailboxId,
        ops: &[spore_protocol::CapabilityOp],
    ) -> Result<()> {
        let (changed, refused) = self.store.apply_capability_ops(owner, ops)?;
        self.metrics.capability_ops(changed, refused);
        Ok(())
    }

    /// Deletes `owner`'s items with these handles, durably; returns how many there were.
    /// Blocking (one tombstone per item, then a [`Database::commit`]).
    pub fn delete(&self, owner: &MailboxId, handles: &[u64]) -> Result<u32> {
        let n = self.store.delete(owner, handles)?;
        if n > 0 {
            self.db.commit()?;
            self.metrics.deleted(u64::from(n));
            self.update_gauges();
        }
        Ok(n)
    }

    /// Deletes items older than `retention`; returns how many.
    pub fn sweep(&self, now_unix: u64, retention: Duration) -> Result<u64> {
        let cutoff = now_unix.saturating_sub(retention.as_secs());
        let n = self.store.sweep(cutoff)?;
        if n > 0 {
            self.db.commit()?;
            self.metrics.expired(n);
        }
        self.update_gauges();
        Ok(n)
    }

    /// Refreshes the occupancy gauges (after stores by the workers).
    pub fn refresh_gauges(&self) {
        self.update_gauges();
    }

    pub fn store(&self) -> &MailboxStore {
        &self.store
    }
}

/// Runs the retention sweeper every `interval` until shutdown; also refreshes occupancy
/// gauges once a second.
pub(crate) async fn run_sweeper(
    service: MailboxService,
    clock: Arc<dyn Clock>,
    retention: Duration,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut sweep = tokio::time::interval(interval.max(Duration::from_millis(100)));
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.signalled() => break,
            _ = gauges.tick() => service.refresh_gauges(),
            _ = sweep.tick() => {
                let s = service.clone();
                let now = clock.now_unix();
                match tokio::task::spawn_blocking(move || s.sweep(now, retention)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(expired = n, "retention sweep"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
                    Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
                }
            }
        }
    }
}
