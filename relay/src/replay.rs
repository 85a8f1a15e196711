//! The replay cache: every Sphinx replay tag seen under a key epoch, in memory for the check
//! and in sled so that a replay is refused after a restart too.
//!
//! One set (and one sled tree, `replay/<epoch>`) per key epoch: when an epoch's key is no longer
//! accepted, packets for it cannot be processed at all, so its tags are dropped with it. Tags
//! are truncated to 16 bytes (a collision needs ~2^64 packets under one key).
//!
//! Insertions are not flushed here: the group commit in the mix pipeline flushes once for a
//! whole batch, and nothing is forwarded or stored before the tags of its batch are durable.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

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

struct EpochCache {
    seen: HashSet<ShortTag>,
    tree: sled::Tree,
}

/// Replay tags per key epoch.
pub struct ReplayCache {
    db: Database,
    epochs: Mutex<HashMap<u64, EpochCache>>,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").finish_non_exhaustive()
    }
}

impl ReplayCache {
    /// Loads the tags of every epoch from `oldest_epoch` on; older epochs' trees are dropped.
    pub fn open(db: &Database, oldest_epoch: u64) -> Result<Self> {
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
                    seen.insert(tag);
                }
            }
            epochs.insert(epoch, EpochCache { seen, tree });
        }
        Ok(Self {
            db: db.clone(),
            epochs: Mutex::new(epochs),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, EpochCache>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tag` was already seen under `epoch`'s key. A cheap pre-check before unwrapping;
    /// [`ReplayCache::insert`] is the authority.
    pub fn contains(&self, epoch: u64, tag: &[u8]) -> bool {
        self.lock()
            .get(&epoch)
            .is_some_and(|c| c.seen.contains(&short(tag)))
    }

    /// Records `tag` under `epoch`. Returns `false` if it was already there (a replay). Two
    /// workers racing on the same packet get exactly one `true`.
    pub fn insert(&self, epoch: u64, tag: &[u8]) -> Result<bool> {
        let s = short(tag);
        let tree = {
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
            if !cache.seen.insert(s) {
                return Ok(false);
            }
            cache.tree.clone()
        };
        if let Err(e) = tree.insert(s, &[]) {
            // Not recorded durably: forget it in memory too, the packet will be dropped.
            if let Some(c) = self.lock().get_mut(&epoch) {
                c.seen.remove(&s);
            }
            return Err(e.into());
        }
        Ok(true)
    }

    /// Drops every epoch older than `oldest_epoch`, in memory and on disk.
    pub fn expire_before(&self, oldest_epoch: u64) -> Result<usize> {
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
        assert!(!r.contains(5, &[1; 32]));
        assert!(r.contains(6, &[1; 32]));
    }
}
