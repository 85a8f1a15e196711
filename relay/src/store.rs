//! Persistence in sled behind a small typed API: the [`Database`] (one sled instance per
//! relay, flushed by the group commit) and the [`MailboxStore`] that keeps sealed payloads for
//! offline recipients.
//!
//! Layout of the mailbox trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `mailbox/items` | mailbox id (32) ‖ handle (u64 BE) | stored-at (u64 BE, unix s) ‖ SURB id (16) ‖ payload |
//! | `mailbox/by-time` | stored-at (u64 BE) ‖ mailbox id (32) ‖ handle (u64 BE) | item bytes (u32 BE) |
//! | `mailbox/meta` | `"next-handle"` | handle reservation (u64 BE) |
//!
//! Handles grow monotonically over the whole store, so a prefix scan returns a mailbox's items
//! oldest first. The time index is written before the item and removed after it, so a crash can
//! leave an index entry without an item (harmless; the sweeper removes it) but never an item
//! that retention would miss. Nothing here is durable until [`Database::commit`] returns.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use spore_protocol::MailboxId;
use spore_protocol::params::{PAYLOAD_SIZE, SURB_ID_SIZE};

use crate::error::{RelayError, Result};

/// The relay's one sled database.
#[derive(Clone, Debug)]
pub struct Database {
    db: sled::Db,
}

impl Database {
    /// Opens (or creates) the database in `dir`, with `cache_bytes` of page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| RelayError::File {
            path: dir.to_owned(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir.join("relay.sled"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()?;
        Ok(Self { db })
    }

    /// Makes every write so far durable (fsync). One call covers any number of writes: this is
    /// the group commit.
    pub fn commit(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub(crate) fn sled(&self) -> &sled::Db {
        &self.db
    }
}

/// Per-mailbox and global limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    pub quota_items: u64,
    pub quota_bytes: u64,
    pub disk_budget_bytes: u64,
}

/// Why a store was refused. The stored items are untouched in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QuotaItems,
    QuotaBytes,
    DiskBudget,
}

impl Refusal {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::QuotaItems => "mailbox_quota_items",
            Refusal::QuotaBytes => "mailbox_quota_bytes",
            Refusal::DiskBudget => "disk_budget",
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

#[derive(Debug, Default)]
struct Usage {
    per_mailbox: HashMap<MailboxId, (u64, u64)>,
    items: u64,
    bytes: u64,
}

impl Usage {
    fn add(&mut self, m: MailboxId, bytes: u64) {
        let e = self.per_mailbox.entry(m).or_insert((0, 0));
        e.0 += 1;
        e.1 += bytes;
        self.items += 1;
        self.bytes += bytes;
    }

    fn remove(&mut self, m: MailboxId, bytes: u64) {
        if let Some(e) = self.per_mailbox.get_mut(&m) {
            e.0 = e.0.saturating_sub(1);
            e.1 = e.1.saturating_sub(bytes);
            if e.0 == 0 {
                self.per_mailbox.remove(&m);
            }
        }
        self.items = self.items.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

const HANDLE_BLOCK: u64 = 4096;
const NEXT_HANDLE_KEY: &[u8] = b"next-handle";
const ITEM_KEY_LEN: usize = 32 + 8;
const INDEX_KEY_LEN: usize = 8 + ITEM_KEY_LEN;
const VALUE_LEN: usize = 8 + SURB_ID_SIZE + PAYLOAD_SIZE;
/// Bytes one item counts against quotas (SURB id + payload).
pub const ITEM_BYTES: u64 = (SURB_ID_SIZE + PAYLOAD_SIZE) as u64;

struct Handles {
    next: u64,
    reserved: u64,
}

/// Sealed payloads waiting for their recipients.
pub struct MailboxStore {
    items: sled::Tree,
    index: sled::Tree,
    meta: sled::Tree,
    limits: MailboxLimits,
    usage: Mutex<Usage>,
    handles: Mutex<Handles>,
}

impl std::fmt::Debug for MailboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxStore")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn item_key(m: &MailboxId, handle: u64) -> [u8; ITEM_KEY_LEN] {
    let mut k = [0u8; ITEM_KEY_LEN];
    k[..32].copy_from_slice(m.as_bytes());
    k[32..].copy_from_slice(&handle.to_be_bytes());
    k
}

fn index_key(stored_at: u64, m: &MailboxId, handle: u64) -> [u8; INDEX_KEY_LEN] {
    let mut k = [0u8; INDEX_KEY_LEN];
    k[..8].copy_from_slice(&stored_at.to_be_bytes());
    k[8..].copy_from_slice(&item_key(m, handle));
    k
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(s))
}

fn parse_index_key(k: &[u8]) -> Option<(u64, MailboxId, u64)> {
    if k.len() != INDEX_KEY_LEN {
        return None;
    }
    let stored_at = u64_at(k, 0)?;
    let m: [u8; 32] = k.get(8..40)?.try_into().ok()?;
    let handle = u64_at(k, 40)?;
    Some((stored_at, MailboxId(m), handle))
}

fn parse_value(handle: u64, v: &[u8]) -> Option<StoredItem> {
    if v.len() != VALUE_LEN {
        return None;
    }
    let stored_at = u64_at(v, 0)?;
    let surb_id: [u8; SURB_ID_SIZE] = v.get(8..8 + SURB_ID_SIZE)?.try_into().ok()?;
    let payload: [u8; PAYLOAD_SIZE] = v.get(8 + SURB_ID_SIZE..)?.try_into().ok()?;
    Some(StoredItem {
        handle,
        surb_id,
        payload: Box::new(payload),
        stored_at,
    })
}

impl MailboxStore {
    /// Opens the mailbox trees and rebuilds the usage counters from the time index.
    pub fn open(db: &Database, limits: MailboxLimits) -> Result<Self> {
        let items = db.sled().open_tree("mailbox/items")?;
        let index = db.sled().open_tree("mailbox/by-time")?;
        let meta = db.sled().open_tree("mailbox/meta")?;
        let mut usage = Usage::default();
        let mut max_handle = 0u64;
        for entry in index.iter() {
            let (k, v) = entry?;
            let Some((_, m, handle)) = parse_index_key(&k) else {
                return Err(RelayError::Corrupt("mailbox index key"));
            };
            let bytes = v
                .as_ref()
                .try_into()
                .map(|b: [u8; 4]| u64::from(u32::from_be_bytes(b)))
                .map_err(|_| RelayError::Corrupt("mailbox index value"))?;
            usage.add(m, bytes);
            max_handle = max_handle.max(handle);
        }
        let reserved = match meta.get(NEXT_HANDLE_KEY)? {
            Some(v) => u64_at(&v, 0).ok_or(RelayError::Corrupt("handle reservation"))?,
            None => 0,
        };
        let next = reserved.max(max_handle.saturating_add(1)).max(1);
        Ok(Self {
            items,
            index,
            meta,
            limits,
            usage: Mutex::new(usage),
            handles: Mutex::new(Handles {
                next,
                reserved: next,
            }),
        })
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_handle(&self) -> Result<u64> {
        let mut h = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if h.next >= h.reserved {
            let reserved = h.next.saturating_add(HANDLE_BLOCK);
            // Durable with the same group commit as the items that use these handles.
            self.meta.insert(NEXT_HANDLE_KEY, &reserved.to_be_bytes())?;
            h.reserved = reserved;
        }
        let handle = h.next;
        h.next += 1;
        Ok(handle)
    }

    /// Stores one item. Returns its handle, or why it was refused. Durable only after the next
    /// [`Database::commit`].
    pub fn insert(
        &self,
        mailbox: &MailboxId,
        surb_id: &[u8; SURB_ID_SIZE],
        payload: &[u8; PAYLOAD_SIZE],
        now_unix: u64,
    ) -> Result<Result<u64, Refusal>> {
        {
            let mut usage = self.usage();
            let (n, b) = usage.per_mailbox.get(mailbox).copied().unwrap_or((0, 0));
            if n + 1 > self.limits.quota_items {
                return Ok(Err(Refusal::QuotaItems));
            }
            if b + ITEM_BYTES > self.limits.quota_bytes {
                return Ok(Err(Refusal::QuotaBytes));
            }
            if usage.bytes + ITEM_BYTES > self.limits.disk_budget_bytes {
                return Ok(Err(Refusal::DiskBudget));
            }
            // Reserve before writing so concurrent workers cannot overshoot the quota.
            usage.add(*mailbox, ITEM_BYTES);
        }
        let written = (|| -> Result<u64> {
            let handle = self.next_handle()?;
            let mut value = Vec::with_capacity(VALUE_LEN);
            value.extend_from_slice(&now_unix.to_be_bytes());
            value.extend_from_slice(surb_id);
            value.extend_from_slice(payload);
            self.index.insert(
                index_key(now_unix, mailbox, handle),
                &(ITEM_BYTES as u32).to_be_bytes(),
            )?;
            self.items.insert(item_key(mailbox, handle), value)?;
            Ok(handle)
        })();
        match written {
            Ok(handle) => Ok(Ok(handle)),
            Err(e) => {
                self.usage().remove(*mailbox, ITEM_BYTES);
                Err(e)
            }
        }
    }

    /// Up to `max` of a mailbox's items, oldest first. Reading deletes nothing.
    pub fn pull(&self, mailbox: &MailboxId, max: usize) -> Result<Vec<StoredItem>> {
        let mut out = Vec::with_capacity(max);
        for entry in self.items.scan_prefix(mailbox.as_bytes()) {
            if out.len() >= max {
                break;
            }
            let (k, v) = entry?;
            let Some(handle) = u64_at(&k, 32) else {
                return Err(RelayError::Corrupt("mailbox item key"));
            };
            match parse_value(handle, &v) {
                Some(item) => out.push(item),
                None => return Err(RelayError::Corrupt("mailbox item value")),
            }
        }
        Ok(out)
    }

    /// Deletes the listed items of `mailbox` (and only of that mailbox). Unknown handles are
    /// ignored. Returns how many were deleted. Durable after the next commit.
    pub fn delete(&self, mailbox: &MailboxId, handles: &[u64]) -> Result<u32> {
        let mut count = 0u32;
        for &handle in handles {
            if self.remove_item(mailbox, handle)? {
                count += 1;
            }
        }
        Ok(count)
    }

    fn remove_item(&self, mailbox: &MailboxId, handle: u64) -> Result<bool> {
        let Some(old) = self.items.remove(item_key(mailbox, handle))? else {
            return Ok(false);
        };
        self.usage().remove(*mailbox, ITEM_BYTES);
        if let Some(stored_at) = u64_at(&old, 0) {
            self.index.remove(index_key(stored_at, mailbox, handle))?;
        }
        Ok(true)
    }

    /// Deletes every item stored before `cutoff_unix`. Returns how many were deleted.
    pub fn sweep(&self, cutoff_unix: u64) -> Result<u64> {
        let mut deleted = 0;
        let end = cutoff_unix.to_be_bytes();
        for entry in self.index.range(..&end[..]) {
            let (k, _) = entry?;
            if let Some((_, m, handle)) = parse_index_key(&k)
                && self.items.remove(item_key(&m, handle))?.is_some()
            {
                self.usage().remove(m, ITEM_BYTES);
                deleted += 1;
            }
            self.index.remove(k)?;
        }
        Ok(deleted)
    }

    /// (items, payload bytes) over all mailboxes.
    pub fn total_usage(&self) -> (u64, u64) {
        let u = self.usage();
        (u.items, u.bytes)
    }

    /// (items, payload bytes) of one mailbox.
    pub fn mailbox_usage(&self, mailbox: &MailboxId) -> (u64, u64) {
        self.usage()
            .per_mailbox
            .get(mailbox)
            .copied()
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MailboxLimits {
        MailboxLimits {
            quota_items: 3,
            quota_bytes: 1 << 20,
            disk_budget_bytes: 1 << 30,
        }
    }

    #[test]
    fn insert_pull_delete_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = MailboxId([1; 32]);
        let b = MailboxId([2; 32]);
        let handles: Vec<u64> = {
            let db = Database::open(dir.path(), 1 << 20).expect("db");
            let s = MailboxStore::open(&db, limits()).expect("store");
            let mut hs = Vec::new();
            for i in 0..3u8 {
                let h = s
                    .insert(&a, &[i; 16], &[i; PAYLOAD_SIZE], 100 + u64::from(i))
                    .expect("io")
                    .expect("stored");
                hs.push(h);
            }
            assert_eq!(
                s.insert(&a, &[9; 16], &[9; PAYLOAD_SIZE], 200).expect("io"),
                Err(Refusal::QuotaItems)
            );
            s.insert(&b, &[7; 16], &[7; PAYLOAD_SIZE], 100)
                .expect("io")
                .expect("other mailbox has room");
            db.commit().expect("commit");
            hs
        };
        let db = Database::open(dir.path(), 1 << 20).expect("db");
        let s = MailboxStore::open(&db, limits()).expect("store");
        assert_eq!(s.total_usage().0, 4);
        let items = s.pull(&a, 16).expect("pull");
        assert_eq!(items.iter().map(|i| i.handle).collect::<Vec<_>>(), handles);
        assert_eq!(items[0].surb_id, [0; 16]);
        // b cannot delete a's items.
        assert_eq!(s.delete(&b, &handles).expect("delete"), 0);
        assert_eq!(s.delete(&a, &handles[..2]).expect("delete"), 1 + 1);
        assert_eq!(s.pull(&a, 16).expect("pull").len(), 1);
        // New handles never reuse old ones.
        let h = s
            .insert(&a, &[5; 16], &[5; PAYLOAD_SIZE], 300)
            .expect("io")
            .expect("stored");
        assert!(h > *handles.iter().max().expect("some"));
        // Retention.
        assert_eq!(s.sweep(150).expect("sweep"), 2);
        assert_eq!(s.pull(&a, 16).expect("pull").len(), 1);
        assert_eq!(s.total_usage().0, 1);
    }
}
