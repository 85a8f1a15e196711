//! The replay cache: every Sphinx replay tag seen under a key epoch, in memory for the check
//! and in sled so that a replay is refused after a restart too.
//!
//! One set (and one sled tree, `replay/<epoch>`) per key epoch: when an epoch's key is no longer
//! accepted, packets for it cannot be processed at all, so its tags are dropped with it. Tags
//! are stored truncated to 16 bytes and held in memory as 8 (about 40 bytes per tag with the
//! set's overhead; a false "replay" needs two of the ~10^7 tags of an epoch to share 64 bits,
//! probability ~10^-5 per epoch, and costs one retransmission).
//!
//! Insertions are not flushed here: the group commit in the mix pipeline flushes once for a
//! whole batch, and nothing is forwarded or stored before the tags of its batch are durable.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::store::Database;

/// Stored form of a replay tag.
pub type ShortTag = [u8; 16];

fn short(tag: &[u8]) -> ShortTag {
    let mut s = [0u8; 16];
    for (d, b) in s.iter_mut().zip(tag) {
        *d = *b;
    }
    s
}

const TREE_PREFIX: &str = "replay/";

fn memory_key(s: &ShortTag) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&s[..8]);
    u64::from_le_bytes(k)
}

struct EpochCache {
    seen: HashSet<u64>,
    tree: sled::Tree,
}

/// Replay tags per key epoch.
pub struct ReplayCache {
    db: Database,
    epochs: Mutex<HashMap<u64, EpochCache>>,
    /// Epochs below this have had their tags dropped: their packets are refused outright,
    /// even if the wall clock steps back and the epoch looks acceptable again. Persisted.
    floor: AtomicU64,
    meta: sled::Tree,
}

const FLOOR_KEY: &[u8] = b"replay-floor";

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").finish_non_exhaustive()
    }
}

impl ReplayCache {
    /// Loads the tags of every epoch from `oldest_epoch` on; older epochs' trees are dropped.
    pub fn open(db: &Database, oldest_epoch: u64) -> Result<Self> {
        let meta = db.sled().open_tree("relay/meta")?;
        let stored_floor = meta
            .get(FLOOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let oldest_epoch = oldest_epoch.max(stored_floor);
        let mut epochs = HashMap::new();
        for name in db.sled().tree_names() {
            let Some(epoch) = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| n.strip_prefix(TREE_PREFIX))
                .and_then(|e| e.parse::<u64>().ok())
            else {
                continue;
            };
            if epoch < oldest_epoch {
                db.sled().drop_tree(&name)?;
                continue;
            }
            let tree = db.sled().open_tree(&name)?;
            let mut seen = HashSet::with_capacity(tree.len());
            for key in tree.iter().keys() {
                let key = key?;
                if let Ok(tag) = <ShortTag>::try_from(key.as_ref()) {
                    seen.insert(memory_key(&tag));
                }
            }
            epochs.insert(epoch, EpochCache { seen, tree });
        }
        meta.insert(FLOOR_KEY, &oldest_epoch.to_be_bytes())?;
        Ok(Self {
            db: db.clone(),
            epochs: Mutex::new(epochs),
            floor: AtomicU64::new(oldest_epoch),
            meta,
        })
    }

    /// The oldest epoch whose packets can still be accepted.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, EpochCache>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tag` was already seen under `epoch`'s key. A cheap pre-check before unwrapping;
    /// [`ReplayCache::insert`] is the authority.
    pub fn contains(&self, epoch: u64, tag: &[u8]) -> bool {
        if epoch < self.floor() {
            return true;
        }
        self.lock()
            .get(&epoch)
            .is_some_and(|c| c.seen.contains(&memory_key(&short(tag))))
    }

    /// Records `tag` under `epoch`. Returns `false` if it was already there (a replay). Two
    /// workers racing on the same packet get exactly one `true`.
    pub fn insert(&self, epoch: u64, tag: &[u8]) -> Result<bool> {
        let Some(s) = self.mark(epoch, tag)? else {
            return Ok(false);
        };
        self.persist(&[(epoch, s)])?;
        Ok(true)
    }

    /// The in-memory half of [`ReplayCache::insert`]: records `tag` under `epoch` and returns
    /// its stored form, or `None` for a replay. The caller must [`ReplayCache::persist`] it
    /// (and commit the database) before acting on the packet; the mix pipeline does that once
    /// per group in its commit thread, which keeps the sled write off the Sphinx workers.
    pub fn mark(&self, epoch: u64, tag: &[u8]) -> Result<Option<ShortTag>> {
        if epoch < self.floor() {
            return Ok(None);
        }
        let s = short(tag);
        let mut epochs = self.lock();
        let cache = match epochs.entry(epoch) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let tree = self.db.sled().open_tree(format!("{TREE_PREFIX}{epoch}"))?;
                v.insert(EpochCache {
                    seen: HashSet::new(),
                    tree,
                })
            }
        };
        Ok(cache.seen.insert(memory_key(&s)).then_some(s))
    }

    /// Writes marked tags to their epochs' trees (not flushed). Tags of epochs expired in the
    /// meantime are skipped: their packets can no longer be accepted.
    pub fn persist(&self, tags: &[(u64, ShortTag)]) -> Result<()> {
        let mut current: Option<(u64, Option<sled::Tree>)> = None;
        for (epoch, tag) in tags {
            if current.as_ref().is_none_or(|(e, _)| e != epoch) {
                let tree = self.lock().get(epoch).map(|c| c.tree.clone());
                current = Some((*epoch, tree));
            }
            if let Some((_, Some(tree))) = &current {
                tree.insert(&tag[..], &[][..])?;
            }
        }
        Ok(())
    }

    /// Drops every epoch older than `oldest_epoch`, in memory and on disk.
    pub fn expire_before(&self, oldest_epoch: u64) -> Result<usize> {
        if oldest_epoch > self.floor.fetch_max(oldest_epoch, Ordering::AcqRel) {
            self.meta.insert(FLOOR_KEY, &oldest_epoch.to_be_bytes())?;
        }
        let old: Vec<u64> = {
            let mut epochs = self.lock();
            let old: Vec<u64> = epochs
                .keys()
                .copied()
                .filter(|e| *e < oldest_epoch)
                .collect();
            for e in &old {
                epochs.remove(e);
            }
            old
        };
        for e in &old {
            self.db.sled().drop_tree(format!("{TREE_PREFIX}{e}"))?;
        }
        Ok(old.len())
    }

    /// Tags held in memory, over all epochs.
    pub fn len(&self) -> usize {
        self.lock().values().map(|c| c.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_survives_reopen_and_expires_with_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::open(dir.path(), 1 << 20).expect("db");
            let r = ReplayCache::open(&db, 0).expect("open");
            assert!(r.insert(5, &[1; 32]).expect("io"));
            assert!(!r.insert(5, &[1; 32]).expect("io"));
            assert!(r.insert(6, &[1; 32]).expect("io"), "other epoch, other key");
            db.commit().expect("commit");
        }
        let db = Database::open(dir.path(), 1 << 20).expect("db");
        let r = ReplayCache::open(&db, 5).expect("open");
        assert!(r.contains(5, &[1; 32]));
        assert!(!r.insert(5, &[1; 32]).expect("io"));
        assert_eq!(r.expire_before(6).expect("expire"), 1);
        assert!(r.contains(6, &[1; 32]));
        // An expired epoch stays refused, even if the clock steps back after a restart.
        assert!(!r.insert(5, &[2; 32]).expect("io"));
        db.commit().expect("commit");
        drop(r);
        let r = ReplayCache::open(&db, 3).expect("open");
        assert_eq!(r.floor(), 6);
        assert!(!r.insert(5, &[3; 32]).expect("io"));
    }
}
