//! [`MailboxStore`]: sealed payloads in append-only segment files, an in-memory index, and a
//! delete log of tombstones.
//!
//! Files, in `<data_dir>/mailbox/`:
//!
//! * `NNNNNNNNNN.seg`: segment files of fixed-size records (see `format`), appended in
//!   insertion order. Only the newest segment is ever written; a new one is started when it
//!   holds `records_per_segment` records and at every open, so a slot is never written twice
//!   and a record's handle (segment id ‖ slot) is never reused: the newest segment is never
//!   deleted, so segment ids only grow.
//! * `deleted.log`: one tombstone per deleted item, so a delete survives a restart.
//! * `id.key`: 32 random bytes, the key of the keyed hash under which mailbox ids are written
//!   (HKDF-SHA256 with this key as salt). A seized disk therefore does not say which records
//!   belong to an address an outsider knows; without this file the store cannot find anyone's
//!   items, so it refuses to open segments written under a key that is gone.
//!
//! Data at rest: a deleted or expired record is overwritten in place with a scrubbed record
//! (`format`) by the commit that makes its delete durable, and that overwrite is synced before
//! any segment file is unlinked, so neither the live files nor the blocks an unlink frees keep
//! the payload. (Chosen over per-segment encryption keys: a segment's key could die only with
//! the last of its up to 16,384 items, so a deleted item would stay readable for up to a whole
//! retention period; a key per item would need a key file overwritten in place, which is the
//! same operation on the payload itself, without a cipher.) What this cannot promise: a
//! copy-on-write filesystem (btrfs, ZFS) or a flash translation layer may keep the old blocks;
//! there, full-disk encryption is the defence (docs/privacy.md).
//!
//! The index (per mailbox, the set of its handles; per segment, who owns each slot and when it
//! was stored) lives in memory and is rebuilt at open by reading every segment and the delete
//! log. A segment whose records are all deleted is unlinked once those deletes are durable;
//! the delete log is rewritten when most of its tombstones point into unlinked segments.
//!
//! No compaction of partly-dead segments: items are appended in time order, so retention
//! deletes every item of a segment once its newest item is older than the retention, and
//! the segment goes with them. Dead records therefore cost at most the bytes appended during
//! one retention period, and the global disk budget counts dead records of full segments as
//! used, so the budget bounds the disk (up to one segment) whatever the pull pattern.
//!
//! Durability: nothing is durable until [`Database::commit`](super::Database::commit), which
//! writes the buffered records and tombstones, `fdatasync`s every file written since the last
//! commit (one sync per file per group, not per item) and the folder when a file was created.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hkdf::Hkdf;
use sha2::Sha256;
use spore_protocol::MailboxId;
use spore_protocol::params::{PAYLOAD_SIZE, SURB_ID_SIZE};
use zeroize::Zeroizing;

use super::capabilities::{CapabilityChange, CapabilityTable};
use super::format::{
    RECORD_LEN, RecordHeader, TOMBSTONE_LEN, decode_header, decode_item, decode_tombstone,
    encode_record, encode_tombstone, handle_of, is_scrubbed, location_of, scrubbed_record,
};
use super::{Database, ITEM_BYTES, MailboxLimits, Refusal, StoredItem};
use crate::error::{RelayError, Result};

/// Records per segment file: 16,384 × 1,100 B ≈ 18 MB, small enough that retention and
/// reclamation free space in useful steps, large enough that 10^6 items are 62 files.
pub const RECORDS_PER_SEGMENT: u32 = 16_384;
/// A segment file longer than this many records is damaged; the rest is not read.
const MAX_RECORDS_PER_SEGMENT: u32 = 1 << 20;
/// Buffered records are written to the file once they reach this size, so memory stays
/// bounded between commits.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Segment files are read in chunks of this many records at open.
const SCAN_CHUNK_RECORDS: usize = 256;
/// The delete log is rewritten when it holds this many more tombstones than can still matter.
const TOMBSTONE_SLACK: u64 = 1 << 16;
const DELETE_LOG: &str = "deleted.log";
const ID_KEY: &str = "id.key";
const ID_HASH_INFO: &[u8] = b"spore/relay/mailbox-id-on-disk/v1";
const SEGMENT_SUFFIX: &str = ".seg";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RelayError + '_ {
    move |source| RelayError::File {
        path: path.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The key of the keyed hash under which mailbox ids are written to disk.
struct IdKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(..)")
    }
}

impl IdKey {
    /// Reads `dir/id.key`, or makes one. Returns whether it was made now.
    fn load_or_create(dir: &Path) -> Result<(Self, bool)> {
        let path = dir.join(ID_KEY);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| RelayError::Corrupt("mailbox/id.key is not 32 bytes"))?;
                if let Ok(f) = File::open(&path) {
                    crate::private_files::restrict(&f).map_err(io_err(&path))?;
                }
                Ok((Self(Zeroizing::new(key)), false))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let key = Zeroizing::new(rand::random::<[u8; 32]>());
                let tmp = dir.join("id.key.new");
                crate::private_files::write_synced(&tmp, &key[..]).map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
                sync_dir(dir)?;
                Ok((Self(key), true))
            }
            Err(source) => Err(RelayError::File { path, source }),
        }
    }

    /// The id written to disk for `mailbox`.
    fn disk_id(&self, mailbox: &MailboxId) -> MailboxId {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF's limit of 255 blocks: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(&self.0[..]), mailbox.as_bytes())
            .expand(ID_HASH_INFO, &mut out);
        MailboxId(out)
    }

    /// The on-disk id of a record's owner, whichever version wrote it.
    fn of_record(&self, h: &RecordHeader) -> MailboxId {
        if h.legacy {
            self.disk_id(&h.mailbox)
        } else {
            h.mailbox
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    mailbox: MailboxId,
    stored_at: u64,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Who owns each slot; `None` once deleted (or if the record was damaged).
    slots: Vec<Option<Slot>>,
    live: u32,
    /// No live slot was stored before this (a lower bound: retention skips younger segments).
    min_stored_at: u64,
    /// Sequence number of the last tombstone written for this segment.
    last_tombstone: u64,
}

impl Segment {
    fn new(file: File) -> Self {
        Self {
            file: Arc::new(file),
            slots: Vec::new(),
            live: 0,
            min_stored_at: u64::MAX,
            last_tombstone: 0,
        }
    }

    fn dead(&self) -> u64 {
        self.slots.len() as u64 - u64::from(self.live)
    }
}

#[derive(Debug)]
struct DeleteLog {
    file: Arc<File>,
    len: u64,
    buffer: Vec<u8>,
    /// Tombstones in the file and the buffer.
    entries: u64,
    /// Tombstones appended since open (sequence numbers).
    appended: u64,
    /// Every tombstone up to this sequence number is durable.
    durable: u64,
}

#[derive(Debug)]
struct State {
    segments: BTreeMap<u32, Segment>,
    active: u32,
    /// Bytes of the active segment already written to its file; the rest is `buffer`.
    active_written: u64,
    buffer: Vec<u8>,
    active_dirty: bool,
    /// Full segments written since the last commit, to be synced by it.
    unsynced: Vec<Arc<File>>,
    dir_dirty: bool,
    mailboxes: HashMap<MailboxId, BTreeSet<u64>>,
    items: u64,
    /// Dead slots in segments other than the active one: disk held until reclaimed.
    sealed_dead: u64,
    deletes: DeleteLog,
    /// Handles killed since the last commit whose records are still on disk, to be scrubbed.
    scrub: Vec<u64>,
    /// Capability destinations and the mailboxes they belong to (on-disk ids).
    capabilities: CapabilityTable,
}

/// Where one arriving item goes, and the quota of that share of the mailbox.
struct Route {
    /// The on-disk id the item is stored under: the capability's destination, or the raw
    /// mailbox for first contact.
    share: MailboxId,
    /// The on-disk id of the mailbox it belongs to.
    owner: MailboxId,
    quota_items: u64,
    quota_bytes: u64,
    /// Which refusals name this share.
    capability: bool,
}

impl State {
    /// The stored items of one share (a capability's, or the raw mailbox's).
    fn share_len(&self, share: &MailboxId) -> u64 {
        self.mailboxes.get(share).map_or(0, |s| s.len() as u64)
    }

    /// Every share of `owner`'s mailbox: its raw id (first contact) and its capabilities.
    /// (An id that is itself a capability's destination owns nothing: no key hashes to it,
    /// and no caller may treat a capability's share as a mailbox of its own.)
    fn shares_of(&self, owner: &MailboxId) -> Vec<MailboxId> {
        if self.capabilities.get(owner).is_some() {
            return Vec::new();
        }
        let mut shares = vec![*owner];
        shares.extend_from_slice(self.capabilities.destinations_of(owner));
        shares
    }

    fn owner_len(&self, owner: &MailboxId) -> u64 {
        self.shares_of(owner)
            .iter()
            .map(|s| self.share_len(s))
            .sum()
    }
}

#[derive(Debug)]
pub(super) struct Shared {
    dir: PathBuf,
    limits: MailboxLimits,
    records_per_segment: u32,
    id_key: IdKey,
    state: Mutex<State>,
    /// Serialises commits: a commit returns only after everything written before it started is
    /// synced, even when another commit is syncing at the same time.
    commit_lock: Mutex<()>,
    damaged: AtomicU64,
}

/// Sealed payloads waiting for their recipients.
pub struct MailboxStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MailboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxStore")
            .field("dir", &self.shared.dir)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Writes the buffered records to the active segment's file (not synced).
    fn write_buffer(&mut self, dir: &Path) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .get(&self.active)
            .ok_or(RelayError::Corrupt("active segment missing"))?;
        seg.file
            .write_all_at(&self.buffer, self.active_written)
            .map_err(io_err(&segment_path(dir, self.active)))?;
        self.active_written += self.buffer.len() as u64;
        self.buffer.clear();
        self.active_dirty = true;
        Ok(())
    }

    fn write_deletes(&mut self, dir: &Path) -> Result<bool> {
        let d = &mut self.deletes;
        if d.buffer.is_empty() {
            return Ok(false);
        }
        d.file
            .write_all_at(&d.buffer, d.len)
            .map_err(io_err(&dir.join(DELETE_LOG)))?;
        d.len += d.buffer.len() as u64;
        d.buffer.clear();
        Ok(true)
    }

    /// Starts segment `active + 1`; the full one is synced by the next commit.
    fn roll(&mut self, dir: &Path) -> Result<()> {
        self.write_buffer(dir)?;
        let next = self
            .active
            .checked_add(1)
            .ok_or(RelayError::Corrupt("segment ids exhausted"))?;
        let path = segment_path(dir, next);
        let file = crate::private_files::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Some(old) = self.segments.get(&self.active) {
            if self.active_dirty {
                self.unsynced.push(old.file.clone());
            }
            self.sealed_dead += old.dead();
        }
        self.segments.insert(next, Segment::new(file));
        self.active = next;
        self.active_written = 0;
        self.active_dirty = false;
        self.dir_dirty = true;
        Ok(())
    }

    /// Overwrites the records of every handle killed since the last call with a scrubbed
    /// record. Returns the files written, to be synced before any segment is unlinked.
    fn scrub_pending(&mut self, dir: &Path) -> Result<Vec<Arc<File>>> {
        if self.scrub.is_empty() {
            return Ok(Vec::new());
        }
        self.write_buffer(dir)?;
        let blank = scrubbed_record();
        let mut files: Vec<(u32, Arc<File>)> = Vec::new();
        for handle in std::mem::take(&mut self.scrub) {
            let (id, slot) = location_of(handle);
            let Some(seg) = self.segments.get(&id) else {
                continue;
            };
            let at = u64::from(slot) * RECORD_LEN as u64;
            seg.file
                .write_all_at(&blank, at)
                .map_err(io_err(&segment_path(dir, id)))?;
            if !files.iter().any(|(f, _)| *f == id) {
                files.push((id, seg.file.clone()));
            }
        }
        Ok(files.into_iter().map(|(_, f)| f).collect())
    }

    /// Marks `handle` dead in memory and, with `log`, appends its tombstone. Its record is
    /// scrubbed by the next commit.
    fn kill(&mut self, handle: u64, log: bool) -> Option<Slot> {
        let (id, slot) = location_of(handle);
        let active = self.active;
        let seg = self.segments.get_mut(&id)?;
        let s = seg.slots.get_mut(slot as usize)?.take()?;
        self.scrub.push(handle);
        seg.live -= 1;
        if id != active {
            self.sealed_dead += 1;
        }
        if log {
            self.deletes.appended += 1;
            self.deletes.entries += 1;
            seg.last_tombstone = self.deletes.appended;
            encode_tombstone(&mut self.deletes.buffer, handle);
        }
        self.items -= 1;
        if let Some(set) = self.mailboxes.get_mut(&s.mailbox) {
            set.remove(&handle);
            if set.is_empty() {
                self.mailboxes.remove(&s.mailbox);
            }
        }
        Some(s)
    }

    /// Unlinks every segment (but the active one) whose records are all dead and whose
    /// tombstones are durable. Returns whether any file went.
    fn reclaim(&mut self, dir: &Path) -> Result<bool> {
        let durable = self.deletes.durable;
        let dead: Vec<u32> = self
            .segments
            .iter()
            .filter(|(id, s)| **id != self.active && s.live == 0 && s.last_tombstone <= durable)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            let path = segment_path(dir, *id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                // Keep it (and its tombstones): a later commit tries again.
                Err(source) => return Err(RelayError::File { path, source }),
            }
            if let Some(s) = self.segments.remove(id) {
                self.sealed_dead -= s.dead();
            }
        }
        Ok(!dead.is_empty())
    }

    /// Rewrites the delete log with only the tombstones that still point into a segment, once
    /// the rest dominates it.
    fn compact_deletes(&mut self, dir: &Path) -> Result<()> {
        let needed: u64 = self.segments.values().map(Segment::dead).sum();
        if self.deletes.entries <= 2 * needed + TOMBSTONE_SLACK {
            return Ok(());
        }
        let mut out = Vec::with_capacity(needed as usize * TOMBSTONE_LEN);
        for (id, seg) in &self.segments {
            for (slot, s) in seg.slots.iter().enumerate() {
                if s.is_none() {
                    encode_tombstone(&mut out, handle_of(*id, slot as u32));
                }
            }
        }
        let tmp = dir.join("deleted.log.new");
        let path = dir.join(DELETE_LOG);
        let file = crate::private_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all_at(&out, 0).map_err(io_err(&tmp))?;
        file.sync_data().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(dir)?;
        let d = &mut self.deletes;
        d.file = Arc::new(file);
        d.len = out.len() as u64;
        d.entries = needed;
        d.buffer.clear();
        d.durable = d.appended;
        Ok(())
    }
}

/// What reading one segment file found.
struct Scanned {
    segment: Segment,
    /// Slots holding damaged records, to be scrubbed (they may hold most of a payload).
    damaged_slots: Vec<u32>,
    /// Intact records written under the current id key (version 2).
    keyed: u64,
}

/// Reads one segment file into slots. Damaged, torn and scrubbed records become dead slots.
fn scan_segment(
    path: &Path,
    id: u32,
    file: File,
    damaged: &AtomicU64,
    id_key: &IdKey,
) -> Result<Scanned> {
    let len = file.metadata().map_err(io_err(path))?.len();
    let whole = (len / RECORD_LEN as u64).min(u64::from(MAX_RECORDS_PER_SEGMENT)) as usize;
    if whole as u64 * (RECORD_LEN as u64) < len {
        // A record torn by a crash (never acknowledged), or a file that was tampered with.
        damaged.fetch_add(1, Ordering::Relaxed);
    }
    let mut seg = Segment::new(file);
    let file = seg.file.clone();
    seg.slots.reserve_exact(whole);
    let mut buf = vec![0u8; SCAN_CHUNK_RECORDS * RECORD_LEN];
    let mut slot = 0usize;
    let mut keyed = 0u64;
    let mut damaged_slots = Vec::new();
    while slot < whole {
        let n = (whole - slot).min(SCAN_CHUNK_RECORDS);
        let chunk = &mut buf[..n * RECORD_LEN];
        file.read_exact_at(chunk, (slot * RECORD_LEN) as u64)
            .map_err(io_err(path))?;
        for rec in chunk.chunks_exact(RECORD_LEN) {
            let header = decode_header(rec).filter(|h| h.handle == handle_of(id, slot as u32));
            keyed += u64::from(header.is_some_and(|h| !h.legacy));
            let s = header.map(|h| Slot {
                mailbox: id_key.of_record(&h),
                stored_at: h.stored_at,
            });
            if s.is_some() {
                seg.live += 1;
            } else if !is_scrubbed(rec) {
                damaged.fetch_add(1, Ordering::Relaxed);
                damaged_slots.push(slot as u32);
            }
            seg.slots.push(s);
            slot += 1;
        }
    }
    seg.min_stored_at = seg
        .slots
        .iter()
        .flatten()
        .map(|s| s.stored_at)
        .min()
        .unwrap_or(u64::MAX);
    Ok(Scanned {
        segment: seg,
        damaged_slots,
        keyed,
    })
}

impl MailboxStore {
    /// Opens (or creates) the store in the database's folder and rebuilds the index.
    /// Damaged records are skipped and counted ([`MailboxStore::damaged_records`]).
    pub fn open(db: &Database, limits: MailboxLimits) -> Result<Self> {
        Self::open_with(db, limits, RECORDS_PER_SEGMENT)
    }

    /// [`MailboxStore::open`] with a chosen segment size (tests use tiny segments).
    pub fn open_with(
        db: &Database,
        limits: MailboxLimits,
        records_per_segment: u32,
    ) -> Result<Self> {
        let mut registered = db.mailbox_slot();
        if registered.upgrade().is_some() {
            return Err(RelayError::Corrupt("the mailbox store is already open"));
        }
        let dir = db.dir().join("mailbox");
        crate::private_files::create_dir_all(&dir).map_err(io_err(&dir))?;
        let damaged = AtomicU64::new(0);
        let (id_key, key_is_new) = IdKey::load_or_create(&dir)?;
        let (capabilities, damaged_capabilities) = CapabilityTable::open(&dir)?;
        damaged.fetch_add(damaged_capabilities, Ordering::Relaxed);

        let mut segments = BTreeMap::new();
        let mut scrub = Vec::new();
        let mut keyed = 0u64;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            // Only names this store writes: a stray `+1.seg` must not alias segment 1.
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|id| segment_path(&dir, *id).file_name() == Some(name.as_os_str()))
            else {
                continue;
            };
            let path = entry.path();
            let file = crate::private_files::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            crate::private_files::restrict(&file).map_err(io_err(&path))?;
            let scanned = scan_segment(&path, id, file, &damaged, &id_key)?;
            keyed += scanned.keyed;
            scrub.extend(scanned.damaged_slots.iter().map(|s| handle_of(id, *s)));
            segments.insert(id, scanned.segment);
        }
        if key_is_new && keyed > 0 {
            // Not kept: a later open must refuse too, not read the records under a wrong key.
            let _ = std::fs::remove_file(dir.join(ID_KEY));
            return Err(RelayError::Corrupt(
                "mailbox/id.key is missing but the segments hold records keyed by it: \
                 restore the file from the backup of this data folder",
            ));
        }

        // Tombstones: a torn tail (never acknowledged) is cut off so appends stay aligned.
        let log_path = dir.join(DELETE_LOG);
        let log = crate::private_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        crate::private_files::restrict(&log).map_err(io_err(&log_path))?;
        let log_len = log.metadata().map_err(io_err(&log_path))?.len();
        let whole = log_len - log_len % TOMBSTONE_LEN as u64;
        if whole != log_len {
            damaged.fetch_add(1, Ordering::Relaxed);
            log.set_len(whole).map_err(io_err(&log_path))?;
            log.sync_data().map_err(io_err(&log_path))?;
        }

        let active = segments
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(RelayError::Corrupt("segment ids exhausted"))?;
        let mut state = State {
            segments,
            active,
            active_written: 0,
            buffer: Vec::new(),
            active_dirty: false,
            unsynced: Vec::new(),
            dir_dirty: false,
            mailboxes: HashMap::new(),
            items: 0,
            sealed_dead: 0,
            deletes: DeleteLog {
                file: Arc::new(log),
                len: whole,
                buffer: Vec::new(),
                entries: whole / TOMBSTONE_LEN as u64,
                appended: 0,
                durable: 0,
            },
            scrub,
            capabilities,
        };
        for (id, seg) in &state.segments {
            state.sealed_dead += seg.dead();
            state.items += u64::from(seg.live);
            for (slot, s) in seg.slots.iter().enumerate() {
                if let Some(s) = s {
                    state
                        .mailboxes
                        .entry(s.mailbox)
                        .or_default()
                        .insert(handle_of(*id, slot as u32));
                }
            }
        }
        let mut chunk = vec![0u8; 4096 * TOMBSTONE_LEN];
        let mut at = 0u64;
        while at < whole {
            let n = ((whole - at) as usize).min(chunk.len());
            let part = &mut chunk[..n];
            state
                .deletes
                .file
                .read_exact_at(part, at)
                .map_err(io_err(&log_path))?;
            for t in part.chunks_exact(TOMBSTONE_LEN) {
                match decode_tombstone(t) {
                    Some(handle) => {
                        state.kill(handle, false);
                    }
                    None => {
                        damaged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            at += n as u64;
        }

        // A fresh segment at every open: slots of the last one, even torn, are never rewritten.
        let path = segment_path(&dir, active);
        let file = crate::private_files::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        state.segments.insert(active, Segment::new(file));
        sync_dir(&dir)?;
        // Deleted records a crash left unscrubbed (and records of an earlier version, which
        // kept deleted payloads), before any of their segments is unlinked.
        for f in state.scrub_pending(&dir)? {
            f.sync_data().map_err(io_err(&dir))?;
        }
        if state.reclaim(&dir)? {
            sync_dir(&dir)?;
        }
        state.compact_deletes(&dir)?;

        let damaged_n = damaged.load(Ordering::Relaxed);
        if damaged_n > 0 {
            tracing::warn!(
                damaged = damaged_n,
                "mailbox store: skipped damaged or torn records"
            );
        }
        let shared = Arc::new(Shared {
            dir,
            limits,
            records_per_segment: records_per_segment.clamp(1, MAX_RECORDS_PER_SEGMENT),
            id_key,
            state: Mutex::new(state),
            commit_lock: Mutex::new(()),
            damaged,
        });
        *registered = Arc::downgrade(&shared);
        Ok(Self { shared })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Stores one item that arrived for the final-hop `destination`: a registered capability
    /// of some mailbox (stored in that mailbox, within the capability's own quota), a revoked
    /// one (refused), or else a raw mailbox id, "first contact" (within the small first-contact
    /// quota of [`MailboxLimits`]). Every share also counts against its mailbox's total quota.
    /// Returns the item's handle, or why it was refused. Durable only after the next
    /// [`Database::commit`].
    ///
    /// The relay cannot tell an unknown capability from the raw id of a mailbox it has not
    /// heard of: both get the first-contact quota, in a share nobody can pull (the destination
    /// of an unknown capability is no key's mailbox), and retention removes them.
    pub fn insert(
        &self,
        destination: &MailboxId,
        surb_id: &[u8; SURB_ID_SIZE],
        payload: &[u8; PAYLOAD_SIZE],
        now_unix: u64,
    ) -> Result<Result<u64, Refusal>> {
        let limits = self.shared.limits;
        let dir = &self.shared.dir;
        let destination = self.shared.id_key.disk_id(destination);
        let mut st = self.state();
        let route = match st.capabilities.get(&destination) {
            Some(c) if c.revoked => return Ok(Err(Refusal::CapabilityRevoked)),
            Some(c) => Route {
                share: destination,
                owner: c.owner,
                quota_items: c.quota_items,
                quota_bytes: c.quota_bytes,
                capability: true,
            },
            None => Route {
                share: destination,
                owner: destination,
                quota_items: limits.first_contact_items,
                quota_bytes: limits.first_contact_bytes,
                capability: false,
            },
        };
        let n = st.owner_len(&route.owner);
        if n + 1 > limits.quota_items {
            return Ok(Err(Refusal::QuotaItems));
        }
        if (n + 1).saturating_mul(ITEM_BYTES) > limits.quota_bytes {
            return Ok(Err(Refusal::QuotaBytes));
        }
        let n = st.share_len(&route.share);
        if n + 1 > route.quota_items {
            return Ok(Err(match route.capability {
                true => Refusal::CapabilityQuotaItems,
                false => Refusal::FirstContactQuotaItems,
            }));
        }
        if (n + 1).saturating_mul(ITEM_BYTES) > route.quota_bytes {
            return Ok(Err(match route.capability {
                true => Refusal::CapabilityQuotaBytes,
                false => Refusal::FirstContactQuotaBytes,
            }));
        }
        let mailbox = &route.share;
        let held = (st.items + st.sealed_dead + 1).saturating_mul(ITEM_BYTES);
        if held > limits.disk_budget_bytes {
            return Ok(Err(Refusal::DiskBudget));
        }
        if st.buffer.len() >= WRITE_BUFFER_BYTES {
            st.write_buffer(dir)?;
        }
        let full = st
            .segments
            .get(&st.active)
            .is_none_or(|s| s.slots.len() >= self.shared.records_per_segment as usize);
        if full {
            st.roll(dir)?;
        }
        let active = st.active;
        let st = &mut *st;
        let seg = st
            .segments
            .get_mut(&active)
            .ok_or(RelayError::Corrupt("active segment missing"))?;
        let handle = handle_of(active, seg.slots.len() as u32);
        let header = RecordHeader {
            mailbox: *mailbox,
            handle,
            stored_at: now_unix,
            legacy: false,
        };
        encode_record(&mut st.buffer, &header, surb_id, payload);
        seg.slots.push(Some(Slot {
            mailbox: *mailbox,
            stored_at: now_unix,
        }));
        seg.live += 1;
        seg.min_stored_at = seg.min_stored_at.min(now_unix);
        st.mailboxes.entry(*mailbox).or_default().insert(handle);
        st.items += 1;
        Ok(Ok(handle))
    }

    /// Up to `max` of a mailbox's items, oldest first. Reading deletes nothing.
    pub fn pull(&self, mailbox: &MailboxId, max: usize) -> Result<Vec<StoredItem>> {
        enum Source {
            File(Arc<File>, u64),
            Buffered(Vec<u8>),
        }
        let id_key = &self.shared.id_key;
        let mailbox = &id_key.disk_id(mailbox);
        let (shares, sources): (Vec<MailboxId>, Vec<(u64, Source)>) = {
            let st = self.state();
            // Oldest first over every share of the mailbox (handles grow with insertion).
            let shares = st.shares_of(mailbox);
            let mut handles: Vec<u64> = shares
                .iter()
                .filter_map(|s| st.mailboxes.get(s))
                .flat_map(|set| set.iter().take(max).copied())
                .collect();
            handles.sort_unstable();
            handles.truncate(max);
            let sources = handles
                .into_iter()
                .filter_map(|h| {
                    let (id, slot) = location_of(h);
                    let seg = st.segments.get(&id)?;
                    let at = u64::from(slot) * RECORD_LEN as u64;
                    if id == st.active && at >= st.active_written {
                        let from = (at - st.active_written) as usize;
                        let rec = st.buffer.get(from..from + RECORD_LEN)?;
                        Some((h, Source::Buffered(rec.to_vec())))
                    } else {
                        Some((h, Source::File(seg.file.clone(), at)))
                    }
                })
                .collect();
            (shares, sources)
        };
        let mut out = Vec::with_capacity(sources.len());
        let mut buf = vec![0u8; RECORD_LEN];
        for (handle, source) in sources {
            let rec = match source {
                Source::Buffered(rec) => rec,
                Source::File(file, at) => match file.read_exact_at(&mut buf, at) {
                    Ok(()) => buf.clone(),
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => Vec::new(),
                    Err(e) => return Err(RelayError::Io(e)),
                },
            };
            // A record damaged since it was indexed must not make the rest of the mailbox
            // unreadable: skip it (it stays on disk; its owner's delete or retention removes it).
            match decode_item(&rec) {
                Some((h, item)) if h.handle == handle && shares.contains(&id_key.of_record(&h)) => {
                    out.push(item)
                }
                // Deleted by a concurrent delete and scrubbed since this pull looked it up.
                None if is_scrubbed(&rec) => {}
                _ => {
                    self.shared.damaged.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("skipping a damaged mailbox record");
                }
            }
        }
        Ok(out)
    }

    /// Deletes the listed items of `mailbox` (and only of that mailbox). Unknown handles are
    /// ignored. Returns how many were deleted. Durable after the next commit.
    pub fn delete(&self, mailbox: &MailboxId, handles: &[u64]) -> Result<u32> {
        let mailbox = &self.shared.id_key.disk_id(mailbox);
        let mut st = self.state();
        let shares = st.shares_of(mailbox);
        let mut count = 0u32;
        for &handle in handles {
            let owned = shares
                .iter()
                .any(|s| st.mailboxes.get(s).is_some_and(|set| set.contains(&handle)));
            if owned && st.kill(handle, true).is_some() {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Deletes every item stored before `cutoff_unix`. Returns how many were deleted.
    pub fn sweep(&self, cutoff_unix: u64) -> Result<u64> {
        let mut st = self.state();
        let ids: Vec<u32> = st
            .segments
            .iter()
            .filter(|(_, s)| s.min_stored_at < cutoff_unix)
            .map(|(id, _)| *id)
            .collect();
        let mut deleted = 0;
        for id in ids {
            let len = st.segments.get(&id).map_or(0, |s| s.slots.len());
            let mut min = u64::MAX;
            for slot in 0..len {
                let stored_at = st
                    .segments
                    .get(&id)
                    .and_then(|s| s.slots.get(slot).copied().flatten())
                    .map(|s| s.stored_at);
                match stored_at {
                    Some(t) if t < cutoff_unix => {
                        deleted += u64::from(st.kill(handle_of(id, slot as u32), true).is_some());
                    }
                    Some(t) => min = min.min(t),
                    None => {}
                }
            }
            if let Some(s) = st.segments.get_mut(&id) {
                s.min_stored_at = min;
            }
        }
        Ok(deleted)
    }

    /// (items, payload bytes) over all mailboxes.
    pub fn total_usage(&self) -> (u64, u64) {
        let items = self.state().items;
        (items, items * ITEM_BYTES)
    }

    /// (items, payload bytes) of one mailbox, over all its shares.
    pub fn mailbox_usage(&self, mailbox: &MailboxId) -> (u64, u64) {
        let mailbox = &self.shared.id_key.disk_id(mailbox);
        let n = self.state().owner_len(mailbox);
        (n, n * ITEM_BYTES)
    }

    /// (items, payload bytes) stored through one final-hop destination: a capability's share,
    /// or for a raw mailbox id its first-contact share.
    pub fn destination_usage(&self, destination: &MailboxId) -> (u64, u64) {
        let destination = &self.shared.id_key.disk_id(destination);
        let n = self.state().share_len(destination);
        (n, n * ITEM_BYTES)
    }

    /// Applies capability ops from `owner`'s authenticated link, durably (one `fdatasync` for
    /// the batch, before this returns). The destination of each op is computed here from the
    /// owner and the capability, so an op can only ever name a share of the owner's mailbox.
    /// Returns (changed, refused) counts.
    pub fn apply_capability_ops(
        &self,
        owner: &MailboxId,
        ops: &[spore_protocol::CapabilityOp],
    ) -> Result<(u32, u32)> {
        use spore_protocol::CapabilityOp;
        let id_key = &self.shared.id_key;
        let dir = &self.shared.dir;
        let disk_owner = id_key.disk_id(owner);
        let mut st = self.state();
        let (mut changed, mut refused) = (0u32, 0u32);
        for op in ops {
            let dest = id_key.disk_id(&op.capability().destination(owner));
            let change = match op {
                CapabilityOp::Register {
                    quota_items,
                    quota_bytes,
                    ..
                } => st.capabilities.register(
                    dir,
                    &disk_owner,
                    &dest,
                    u64::from(*quota_items),
                    *quota_bytes,
                )?,
                CapabilityOp::Revoke { .. } => st.capabilities.revoke(dir, &disk_owner, &dest)?,
            };
            match change {
                CapabilityChange::Changed => changed += 1,
                CapabilityChange::Unchanged => {}
                CapabilityChange::Refused => refused += 1,
            }
        }
        st.capabilities.sync(dir)?;
        Ok((changed, refused))
    }

    /// Records found damaged or torn (at open, and by pulls since); they were skipped.
    pub fn damaged_records(&self) -> u64 {
        self.shared.damaged.load(Ordering::Relaxed)
    }

    /// Segment files on disk (including the one being written).
    pub fn segment_count(&self) -> usize {
        self.state().segments.len()
    }
}

impl Drop for MailboxStore {
    /// A clean close keeps what was written since the last commit too (nothing of it was
    /// acknowledged, but a stopping relay should not throw it away).
    fn drop(&mut self) {
        if let Err(e) = self.shared.commit() {
            tracing::error!(error = %e, "mailbox store: final commit failed");
        }
    }
}

impl Shared {
    /// Makes every insert and delete made before this call durable, then unlinks segments
    /// that hold nothing live.
    pub(super) fn commit(&self) -> Result<()> {
        let _one_at_a_time = lock(&self.commit_lock);
        let dir = &self.dir;
        let (files, upto, dir_dirty) = {
            let mut st = lock(&self.state);
            st.write_buffer(dir)?;
            let mut files = std::mem::take(&mut st.unsynced);
            if st.active_dirty
                && let Some(seg) = st.segments.get(&st.active)
            {
                files.push(seg.file.clone());
                st.active_dirty = false;
            }
            for f in st.scrub_pending(dir)? {
                if !files.iter().any(|g| Arc::ptr_eq(g, &f)) {
                    files.push(f);
                }
            }
            if st.write_deletes(dir)? {
                files.push(st.deletes.file.clone());
            }
            (
                files,
                st.deletes.appended,
                std::mem::take(&mut st.dir_dirty),
            )
        };
        let synced = files
            .iter()
            .try_for_each(|f| f.sync_data().map_err(io_err(dir)))
            .and_then(|()| if dir_dirty { sync_dir(dir) } else { Ok(()) });
        let mut st = lock(&self.state);
        if let Err(e) = synced {
            // Keep everything pending so the next commit tries again.
            st.unsynced.extend(files);
            st.active_dirty = true;
            st.dir_dirty |= dir_dirty;
            return Err(e);
        }
        st.deletes.durable = st.deletes.durable.max(upto);
        if st.reclaim(dir)? {
            sync_dir(dir)?;
            st.compact_deletes(dir)?;
        }
        Ok(())
    }
}
