//! Persistence behind a small typed API: the [`Database`] (the relay's data folder; its
//! [`Database::commit`] is the group commit) and the [`MailboxStore`] that keeps sealed payloads
//! for offline recipients in append-only segment files (`mailbox_store`, formats in `format`).
//!
//! The relay keeps no general-purpose database: the replay cache has its own append-only logs
//! (`replay`), and mailbox payloads go to segment files here. (Earlier versions kept both in
//! sled, whose log-structured pages cost 2.8-3.6x the item bytes on disk and most of the store
//! time, and whose flush used `sync_file_range`, which does not flush the device's cache.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use spore_protocol::params::{PAYLOAD_SIZE, SURB_ID_SIZE};

use crate::error::{RelayError, Result};

mod capabilities;
mod format;
mod mailbox_store;

pub use mailbox_store::MailboxStore;

/// The relay's data folder, and the mailbox store once opened.
#[derive(Clone, Debug)]
pub struct Database {
    dir: PathBuf,
    /// The open mailbox store, synced by [`Database::commit`]. Weak: dropping the store closes
    /// its files.
    mailbox: Arc<Mutex<Weak<mailbox_store::Shared>>>,
}

impl Database {
    /// Opens (or creates) the data folder `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        crate::private_files::create_dir_all(dir).map_err(|source| RelayError::File {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            mailbox: Arc::new(Mutex::new(Weak::new())),
        })
    }

    /// Makes every mailbox insert and delete made before this call durable (`fdatasync`). One
    /// call covers any number of writes: this is the group commit.
    pub fn commit(&self) -> Result<()> {
        let mailbox = self
            .mailbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        if let Some(m) = mailbox {
            m.commit()?;
        }
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The open mailbox store's slot, locked for the whole of an open: two stores appending to
    /// the same segment files would corrupt each other.
    fn mailbox_slot(&self) -> std::sync::MutexGuard<'_, Weak<mailbox_store::Shared>> {
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-mailbox and global limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Items of one mailbox, over all its shares.
    pub quota_items: u64,
    pub quota_bytes: u64,
    pub disk_budget_bytes: u64,
    /// Items stored through the raw mailbox id ("first contact", no capability): small, so a
    /// stranger who knows the address cannot fill the mailbox.
    pub first_contact_items: u64,
    pub first_contact_bytes: u64,
}

/// Why a store was refused. The stored items are untouched in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QuotaItems,
    QuotaBytes,
    DiskBudget,
    /// The destination is a revoked capability.
    CapabilityRevoked,
    /// The capability's own share is full.
    CapabilityQuotaItems,
    CapabilityQuotaBytes,
    /// The first-contact share (raw mailbox id, or an unknown capability) is full.
    FirstContactQuotaItems,
    FirstContactQuotaBytes,
}

impl Refusal {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::QuotaItems => "mailbox_quota_items",
            Refusal::QuotaBytes => "mailbox_quota_bytes",
            Refusal::DiskBudget => "disk_budget",
            Refusal::CapabilityRevoked => "capability_revoked",
            Refusal::CapabilityQuotaItems => "capability_quota_items",
            Refusal::CapabilityQuotaBytes => "capability_quota_bytes",
            Refusal::FirstContactQuotaItems => "first_contact_quota_items",
            Refusal::FirstContactQuotaBytes => "first_contact_quota_bytes",
        }
    }
}

/// One stored item as a pull returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub handle: u64,
    pub surb_id: [u8; SURB_ID_SIZE],
    pub payload: Box<[u8; PAYLOAD_SIZE]>,
    pub stored_at: u64,
}

/// Stored times are written no finer than this: retention needs the hour, not the second, and a
/// seized disk should not give each mailbox's arrival history.
pub const STORED_AT_GRANULARITY_SECS: u64 = 3600;

/// `now_unix` rounded up to [`STORED_AT_GRANULARITY_SECS`]: the time the relay stores with an
/// item. Up, so that no item expires before its retention (it may stay up to an hour longer).
pub fn coarse_stored_at(now_unix: u64) -> u64 {
    now_unix
        .div_ceil(STORED_AT_GRANULARITY_SECS)
        .saturating_mul(STORED_AT_GRANULARITY_SECS)
}

/// Bytes one item counts against quotas (SURB id + payload).
pub const ITEM_BYTES: u64 = (SURB_ID_SIZE + PAYLOAD_SIZE) as u64;

#[cfg(test)]
mod tests;
