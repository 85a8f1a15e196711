//! The replay cache: every Sphinx replay tag seen under a key epoch, in memory for the check
//! and in an append-only log per epoch so that a replay is refused after a restart too.
//!
//! On disk, in the cache's folder (`<data dir>/replay/`):
//!
//! | file | content |
//! |---|---|
//! | `<epoch>.log` | the epoch's tags, 16-byte records in the order they were made durable, then zeros |
//! | `floor` | the oldest epoch still accepted (u64 BE), replaced atomically |
//!
//! A log, not a database: tags are only ever added, never looked up on disk (the in-memory set
//! answers), and dropped a whole epoch at a time. So one `write` plus one `fdatasync` per group
//! commit is all the durability costs, with no index to maintain and no background flusher to
//! compete with the forwarding path.
//!
//! The log is zero-filled ahead of its records ([`PREALLOCATE`] bytes at a time) and records
//! overwrite the zeros in place. Appending would grow the file at every group, and then every
//! `fdatasync` must also commit the new size through the filesystem's journal, where it queues
//! behind everybody else's metadata (ext4: ~1.6x the flush time here, and multi-millisecond
//! stalls when another process syncs). Overwriting allocated blocks needs no metadata. The valid
//! records end at the first all-zero record: a tag is a keyed hash, all-zero with probability
//! 2^-128. A crash can tear the records of a group that was never acknowledged (its packets were
//! not forwarded yet): a torn record that is partly zero still reads as a tag (it only refuses
//! a packet nobody will send again), a record left wholly zero ends the log there.
//!
//! Tags are stored truncated to 16 bytes and held in memory as 8 (about 40 bytes per tag with the
//! set's overhead; a false "replay" needs two of the ~10^7 tags of an epoch to share 64 bits,
//! probability ~10^-5 per epoch, and costs one retransmission).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{RelayError, Result};
use crate::private_files::{file_error, sync_dir};

/// Stored form of a replay tag.
pub type ShortTag = [u8; 16];

/// Bytes of one record in an epoch's log.
const RECORD_LEN: usize = 16;
const FLOOR_FILE: &str = "floor";
const FLOOR_TMP: &str = "floor.tmp";
const LOG_EXTENSION: &str = "log";
/// Zeros written ahead of the records when a log runs out of them: 65,536 tags, so the extension
/// (and the one metadata-carrying flush it costs) comes once per 65,536 packets.
pub const PREALLOCATE: u64 = 1 << 20;

fn short(tag: &[u8]) -> ShortTag {
    let mut s = [0u8; 16];
    for (d, b) in s.iter_mut().zip(tag) {
        *d = *b;
    }
    s
}

fn memory_key(s: &ShortTag) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&s[..8]);
    u64::from_le_bytes(k)
}

/// Tags are outputs of a hash keyed by this relay's secret, so nobody can choose them to collide
/// in the set: their own bits are a good hash already, and SipHash per lookup would be wasted.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TagSet = HashSet<u64, BuildHasherDefault<TagHasher>>;

fn log_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.{LOG_EXTENSION}"))
}

fn read_floor(dir: &Path) -> Result<u64> {
    let path = dir.join(FLOOR_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| RelayError::Corrupt("replay floor file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(file_error(&path)(e)),
    }
}

/// Replaces the floor file atomically: a crash leaves either the old floor or the new one.
fn write_floor(dir: &Path, floor: u64) -> Result<()> {
    let tmp = dir.join(FLOOR_TMP);
    crate::private_files::write_synced(&tmp, &floor.to_be_bytes()).map_err(file_error(&tmp))?;
    let path = dir.join(FLOOR_FILE);
    std::fs::rename(&tmp, &path).map_err(file_error(&path))?;
    sync_dir(dir)
}

/// Reads an epoch's log into `seen` and returns where its records end: at the first all-zero
/// record (the preallocated tail), or at the last whole record of a file whose length is not a
/// whole number of records (an older, append-only log torn by a crash).
fn load_log(path: &Path, seen: &mut TagSet) -> Result<u64> {
    let mut f = File::open(path).map_err(file_error(path))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(file_error(path))?;
    let mut end = 0u64;
    for record in bytes.chunks_exact(RECORD_LEN) {
        let tag: ShortTag = record
            .try_into()
            .map_err(|_| RelayError::Corrupt("replay record"))?;
        if tag == [0u8; RECORD_LEN] {
            break;
        }
        seen.insert(memory_key(&tag));
        end += RECORD_LEN as u64;
    }
    Ok(end)
}

/// An epoch's log open for writing: records go at `end`, into zeros written up to `allocated`.
struct LogWriter {
    file: File,
    end: u64,
    allocated: u64,
}

impl LogWriter {
    /// Opens (creating it durably if needed) an epoch's log; writing resumes where its records
    /// end, over whatever a torn or failed write left there.
    /// `end`: where the records end, when the caller has just read the log (at start-up);
    /// otherwise the log is read to find it.
    fn open(path: &Path, end: Option<u64>) -> Result<Self> {
        let file = crate::private_files::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(file_error(path))?;
        crate::private_files::restrict(&file).map_err(file_error(path))?;
        let len = file.metadata().map_err(file_error(path))?.len();
        if len == 0 {
            // New (or empty) file: its name must survive a crash, not only its data.
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        let end = match end {
            Some(end) => end,
            None => load_log(path, &mut TagSet::default())?,
        };
        Ok(Self {
            file,
            end,
            allocated: len - len % RECORD_LEN as u64,
        })
    }

    /// Writes `records` after the last ones and makes them durable.
    fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        let needed = self.end + records.len() as u64;
        if needed > self.allocated {
            let new_len = needed.max(self.allocated + PREALLOCATE);
            let zeros = vec![0u8; usize::try_from(new_len - self.allocated).unwrap_or(0)];
            self.file.write_all_at(&zeros, self.allocated)?;
            self.allocated = new_len;
        }
        self.file.write_all_at(records, self.end)?;
        self.file.sync_data()?;
        self.end = needed;
        Ok(())
    }
}

/// Replay tags per key epoch.
pub struct ReplayCache {
    dir: PathBuf,
    /// What the workers check and mark; never held across disk I/O.
    epochs: Mutex<HashMap<u64, TagSet>>,
    /// Append handles of the epochs' logs; only the commit thread and expiry take this lock,
    /// so an fsync never blocks a worker.
    logs: Mutex<HashMap<u64, LogWriter>>,
    /// Epochs below this have had their tags dropped: their packets are refused outright,
    /// even if the wall clock steps back and the epoch looks acceptable again. Persisted.
    floor: AtomicU64,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ReplayCache {
    /// Opens the cache kept in `dir` (created if missing) and loads the tags of every epoch from
    /// `oldest_epoch` on (or from the persisted floor, if that is higher); older epochs' logs
    /// are deleted.
    pub fn open(dir: &Path, oldest_epoch: u64) -> Result<Self> {
        if !dir.exists()
            && dir
                .parent()
                .is_some_and(|data| data.join("relay.sled").exists())
        {
            // Data of a relay version that kept its tags in sled trees (`replay/<epoch>`).
            tracing::warn!(
                "no replay log yet beside an existing database: replay tags recorded by an \
                 earlier version are not carried over (they stay unused in relay.sled), so a \
                 packet first seen before this upgrade could be accepted once more until its \
                 key epoch expires"
            );
        }
        crate::private_files::create_dir_all(dir).map_err(file_error(dir))?;
        let stored_floor = read_floor(dir)?;
        let floor = oldest_epoch.max(stored_floor);
        if floor != stored_floor {
            write_floor(dir, floor)?;
        }
        let mut epochs = HashMap::new();
        let mut logs = HashMap::new();
        let mut removed = false;
        for entry in std::fs::read_dir(dir).map_err(file_error(dir))? {
            let path = entry.map_err(file_error(dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(LOG_EXTENSION) {
                continue;
            }
            let Some(epoch) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if epoch < floor {
                std::fs::remove_file(&path).map_err(file_error(&path))?;
                removed = true;
                continue;
            }
            let mut seen = TagSet::default();
            let end = load_log(&path, &mut seen)?;
            epochs.insert(epoch, seen);
            logs.insert(epoch, LogWriter::open(&path, Some(end))?);
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            epochs: Mutex::new(epochs),
            logs: Mutex::new(logs),
            floor: AtomicU64::new(floor),
        })
    }

    /// The oldest epoch whose packets can still be accepted.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TagSet>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tag` was already seen under `epoch`'s key. A cheap pre-check before unwrapping;
    /// [`ReplayCache::mark`] is the authority.
    pub fn contains(&self, epoch: u64, tag: &[u8]) -> bool {
        if epoch < self.floor() {
            return true;
        }
        self.lock()
            .get(&epoch)
            .is_some_and(|seen| seen.contains(&memory_key(&short(tag))))
    }

    /// Records `tag` under `epoch` and makes it durable. Returns `false` if it was already there
    /// (a replay). Two callers racing on the same packet get exactly one `true`.
    pub fn insert(&self, epoch: u64, tag: &[u8]) -> Result<bool> {
        let Some(s) = self.mark(epoch, tag) else {
            return Ok(false);
        };
        self.persist(&[(epoch, s)])?;
        Ok(true)
    }

    /// The in-memory half of [`ReplayCache::insert`]: records `tag` under `epoch` and returns
    /// its stored form, or `None` for a replay. The caller must [`ReplayCache::persist`] it
    /// before acting on the packet; the mix pipeline does that once per group in its commit
    /// thread, which keeps the disk off the Sphinx workers.
    pub fn mark(&self, epoch: u64, tag: &[u8]) -> Option<ShortTag> {
        if epoch < self.floor() {
            return None;
        }
        let s = short(tag);
        self.lock()
            .entry(epoch)
            .or_default()
            .insert(memory_key(&s))
            .then_some(s)
    }

    /// Appends marked tags to their epochs' logs, one `write` per epoch, and makes them durable
    /// (one `fdatasync` per epoch touched, so one per group in the steady state). Tags of epochs
    /// expired in the meantime are skipped: their packets can no longer be accepted.
    pub fn persist(&self, tags: &[(u64, ShortTag)]) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut by_epoch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(1);
        for (epoch, tag) in tags {
            match by_epoch.iter_mut().find(|(e, _)| e == epoch) {
                Some((_, buf)) => buf.extend_from_slice(tag),
                None => {
                    let mut buf = Vec::with_capacity(tags.len() * RECORD_LEN);
                    buf.extend_from_slice(tag);
                    by_epoch.push((*epoch, buf));
                }
            }
        }
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock: expiry raises the floor before it takes this lock to delete.
        let floor = self.floor();
        for (epoch, buf) in by_epoch {
            if epoch < floor {
                continue;
            }
            let path = log_path(&self.dir, epoch);
            let log = match logs.entry(epoch) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(LogWriter::open(&path, None)?)
                }
            };
            if let Err(e) = log.append(&buf) {
                // A failed write may have left part of a group: reopening finds where the
                // records really end before the next write.
                logs.remove(&epoch);
                return Err(file_error(&path)(e));
            }
        }
        Ok(())
    }

    /// Drops every epoch older than `oldest_epoch`, in memory and on disk. The raised floor is
    /// durable before any log is deleted, so a crash in between cannot re-admit an epoch whose
    /// tags are gone.
    pub fn expire_before(&self, oldest_epoch: u64) -> Result<usize> {
        if oldest_epoch > self.floor() {
            write_floor(&self.dir, oldest_epoch)?;
            self.floor.fetch_max(oldest_epoch, Ordering::AcqRel);
        }
        let mut old: Vec<u64> = {
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
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.retain(|e, _| *e >= oldest_epoch);
        // Logs of epochs never marked since the start (loaded, or left by an earlier run).
        for entry in std::fs::read_dir(&self.dir).map_err(file_error(&self.dir))? {
            let path = entry.map_err(file_error(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(LOG_EXTENSION) {
                continue;
            }
            if let Some(epoch) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|e| *e < oldest_epoch)
            {
                std::fs::remove_file(&path).map_err(file_error(&path))?;
                if !old.contains(&epoch) {
                    old.push(epoch);
                }
            }
        }
        Ok(old.len())
    }

    /// Tags held in memory, over all epochs.
    pub fn len(&self) -> usize {
        self.lock().values().map(|seen| seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn replay_survives_reopen_and_expires_with_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let r = ReplayCache::open(dir.path(), 0).expect("open");
            assert!(r.insert(5, &[1; 32]).expect("io"));
            assert!(!r.insert(5, &[1; 32]).expect("io"));
            assert!(r.insert(6, &[1; 32]).expect("io"), "other epoch, other key");
        }
        let r = ReplayCache::open(dir.path(), 5).expect("open");
        assert!(r.contains(5, &[1; 32]));
        assert!(!r.insert(5, &[1; 32]).expect("io"));
        assert_eq!(r.expire_before(6).expect("expire"), 1);
        assert!(!log_path(dir.path(), 5).exists(), "expired log deleted");
        assert!(r.contains(6, &[1; 32]));
        // An expired epoch stays refused, even if the clock steps back after a restart.
        assert!(!r.insert(5, &[2; 32]).expect("io"));
        drop(r);
        let r = ReplayCache::open(dir.path(), 3).expect("open");
        assert_eq!(r.floor(), 6);
        assert!(!r.insert(5, &[3; 32]).expect("io"));
        assert!(r.contains(6, &[1; 32]));
    }

    #[test]
    fn torn_writes_never_lose_a_durable_tag_nor_shift_later_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let r = ReplayCache::open(dir.path(), 0).expect("open");
            assert!(r.insert(7, &[1; 32]).expect("io"));
            assert!(r.insert(7, &[2; 32]).expect("io"));
        }
        let path = log_path(dir.path(), 7);
        assert_eq!(
            std::fs::metadata(&path).expect("log").len(),
            PREALLOCATE,
            "records overwrite zeros written ahead of them"
        );
        // A crash in the middle of the next group's write: half a record reached the disk.
        let f = OpenOptions::new().write(true).open(&path).expect("log");
        f.write_all_at(&[3; RECORD_LEN / 2], 2 * RECORD_LEN as u64)
            .expect("torn write");
        // ... and a later record of the same group without the one before it.
        f.write_all_at(&[5; RECORD_LEN], 9 * RECORD_LEN as u64)
            .expect("out-of-order write");
        drop(f);

        let r = ReplayCache::open(dir.path(), 0).expect("reopens despite the torn group");
        assert!(!r.insert(7, &[1; 32]).expect("io"), "replay refused");
        assert!(!r.insert(7, &[2; 32]).expect("io"), "replay refused");
        assert_eq!(
            r.len(),
            3,
            "the half record reads as a tag; the record after a gap does not"
        );
        // Writes resume after the last record and survive the next reopen.
        assert!(r.insert(7, &[4; 32]).expect("io"));
        drop(r);
        let r = ReplayCache::open(dir.path(), 0).expect("open");
        assert_eq!(r.len(), 4);
        assert!(!r.insert(7, &[4; 32]).expect("io"));
    }

    #[test]
    fn an_append_only_log_of_the_previous_format_is_read_and_continued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = log_path(dir.path(), 8);
        let mut old = [[1u8; RECORD_LEN], [2; RECORD_LEN]].concat();
        old.extend_from_slice(&[3; RECORD_LEN / 2]); // torn final record, no zeros after it
        std::fs::write(&path, &old).expect("write");
        let r = ReplayCache::open(dir.path(), 0).expect("open");
        assert_eq!(r.len(), 2, "the torn final record is not a tag");
        assert!(r.insert(8, &[4; 32]).expect("io"));
        drop(r);
        let r = ReplayCache::open(dir.path(), 0).expect("open");
        assert_eq!(r.len(), 3);
        assert!(!r.insert(8, &[1; 32]).expect("io"));
        assert!(!r.insert(8, &[4; 32]).expect("io"));
    }

    #[test]
    fn marked_but_unpersisted_tags_are_not_durable_and_persist_is_per_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let r = ReplayCache::open(dir.path(), 0).expect("open");
            let a = r.mark(1, &[1; 32]).expect("new");
            let b = r.mark(2, &[2; 32]).expect("new");
            assert_eq!(r.mark(1, &[1; 32]), None, "replay in memory at once");
            let _never_persisted = r.mark(1, &[9; 32]).expect("new");
            r.persist(&[(1, a), (2, b)]).expect("persist");
        }
        let r = ReplayCache::open(dir.path(), 0).expect("open");
        assert!(r.contains(1, &[1; 32]) && r.contains(2, &[2; 32]));
        assert!(!r.contains(1, &[9; 32]));
    }

    #[test]
    fn a_damaged_floor_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FLOOR_FILE), b"abc").expect("write");
        assert!(matches!(
            ReplayCache::open(dir.path(), 0),
            Err(RelayError::Corrupt(_))
        ));
    }
}
