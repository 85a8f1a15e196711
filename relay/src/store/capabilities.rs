//! The capability table: which final-hop destinations are capabilities of which mailbox, with
//! what quota, and which are revoked. Part of the [`MailboxStore`](super::MailboxStore) (same
//! lock, same keyed on-disk ids) and persisted in `mailbox/capabilities.log`.
//!
//! The log is a sequence of fixed-size records, one per change, appended and `fdatasync`ed
//! before the pull request that carried the change is answered:
//!
//! ```text
//! kind u8 (1 active, 2 revoked) ‖ destination (on-disk id) 32 ‖ owner (on-disk id) 32 ‖
//! quota items u64 ‖ quota bytes u64 ‖ check u32 (first 4 bytes of SHA-256 of the rest)
//! ```
//!
//! The last record for a destination wins. A torn tail (a crash mid-append) is cut off at open,
//! a record whose check fails is skipped and counted. The log is rewritten (temporary file,
//! sync, rename, sync of the folder) when it holds many more records than live entries.
//!
//! Ids are the store's keyed on-disk ids, so a seized disk tells how many capabilities some
//! mailbox has, not whose mailbox or which capabilities.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use spore_protocol::MailboxId;

use crate::error::{RelayError, Result};

/// Capabilities (active and revoked) one mailbox may have: a revoked one is kept so that its
/// destination stays refused, so this also bounds how often one owner can revoke.
pub const MAX_CAPABILITIES_PER_MAILBOX: usize = 1024;
/// Capabilities over all mailboxes: bounds the table's memory (about 100 bytes an entry).
pub const MAX_CAPABILITIES: usize = 1 << 18;

const LOG: &str = "capabilities.log";
const RECORD_LEN: usize = 1 + 32 + 32 + 8 + 8 + 4;
const KIND_ACTIVE: u8 = 1;
const KIND_REVOKED: u8 = 2;
/// The log is rewritten when it holds this many more records than live entries.
const LOG_SLACK: u64 = 4096;

/// One destination's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Capability {
    /// On-disk id of the mailbox this destination belongs to.
    pub owner: MailboxId,
    pub quota_items: u64,
    pub quota_bytes: u64,
    pub revoked: bool,
}

/// What applying one op did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityChange {
    /// The table changed (durable once [`CapabilityTable::sync`] returns).
    Changed,
    /// Already so: nothing written.
    Unchanged,
    /// Refused: revoked capabilities stay revoked, and the table limits hold.
    Refused,
}

#[derive(Debug)]
pub(super) struct CapabilityTable {
    file: File,
    len: u64,
    records: u64,
    dirty: bool,
    /// On-disk destination id → entry.
    entries: HashMap<MailboxId, Capability>,
    /// On-disk owner id → its destinations (active and revoked).
    by_owner: HashMap<MailboxId, Vec<MailboxId>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RelayError + '_ {
    move |source| RelayError::File {
        path: path.to_owned(),
        source,
    }
}

fn check(body: &[u8]) -> [u8; 4] {
    let d = Sha256::digest(body);
    [d[0], d[1], d[2], d[3]]
}

fn encode(dest: &MailboxId, c: &Capability) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = if c.revoked { KIND_REVOKED } else { KIND_ACTIVE };
    r[1..33].copy_from_slice(dest.as_bytes());
    r[33..65].copy_from_slice(c.owner.as_bytes());
    r[65..73].copy_from_slice(&c.quota_items.to_be_bytes());
    r[73..81].copy_from_slice(&c.quota_bytes.to_be_bytes());
    let sum = check(&r[..81]);
    r[81..].copy_from_slice(&sum);
    r
}

fn decode(r: &[u8]) -> Option<(MailboxId, Capability)> {
    let body = r.get(..81)?;
    if r.get(81..RECORD_LEN)? != check(body) {
        return None;
    }
    let revoked = match *body.first()? {
        KIND_ACTIVE => false,
        KIND_REVOKED => true,
        _ => return None,
    };
    Some((
        MailboxId(body.get(1..33)?.try_into().ok()?),
        Capability {
            owner: MailboxId(body.get(33..65)?.try_into().ok()?),
            quota_items: u64::from_be_bytes(body.get(65..73)?.try_into().ok()?),
            quota_bytes: u64::from_be_bytes(body.get(73..81)?.try_into().ok()?),
            revoked,
        },
    ))
}

impl CapabilityTable {
    /// Reads `dir/capabilities.log` (or starts one). Returns the table and how many records
    /// were damaged.
    pub fn open(dir: &Path) -> Result<(Self, u64)> {
        let path = dir.join(LOG);
        let file = crate::private_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let whole = size - size % RECORD_LEN as u64;
        if whole != size {
            // A crash in the middle of an append: the change was never answered for.
            file.set_len(whole).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        let mut bytes = vec![0u8; usize::try_from(whole).unwrap_or(usize::MAX)];
        match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => bytes.clear(),
            Err(e) => return Err(io_err(&path)(e)),
        }
        let mut table = Self {
            file,
            len: whole,
            records: whole / RECORD_LEN as u64,
            dirty: false,
            entries: HashMap::new(),
            by_owner: HashMap::new(),
        };
        let mut damaged = 0;
        for r in bytes.chunks_exact(RECORD_LEN) {
            match decode(r) {
                Some((dest, c)) => table.set(dest, c),
                None => damaged += 1,
            }
        }
        Ok((table, damaged))
    }

    fn set(&mut self, dest: MailboxId, c: Capability) {
        if self.entries.insert(dest, c).is_none() {
            self.by_owner.entry(c.owner).or_default().push(dest);
        }
    }

    pub fn get(&self, dest: &MailboxId) -> Option<&Capability> {
        self.entries.get(dest)
    }

    /// Every destination (active and revoked) of `owner`, on-disk ids.
    pub fn destinations_of(&self, owner: &MailboxId) -> &[MailboxId] {
        self.by_owner.get(owner).map_or(&[], Vec::as_slice)
    }

    fn append(&mut self, dir: &Path, dest: &MailboxId, c: &Capability) -> Result<()> {
        let path = dir.join(LOG);
        self.file
            .write_all_at(&encode(dest, c), self.len)
            .map_err(io_err(&path))?;
        self.len += RECORD_LEN as u64;
        self.records += 1;
        self.dirty = true;
        self.set(*dest, *c);
        Ok(())
    }

    /// Registers `dest` for `owner` with this quota (or updates its quota).
    pub fn register(
        &mut self,
        dir: &Path,
        owner: &MailboxId,
        dest: &MailboxId,
        quota_items: u64,
        quota_bytes: u64,
    ) -> Result<CapabilityChange> {
        let wanted = Capability {
            owner: *owner,
            quota_items,
            quota_bytes,
            revoked: false,
        };
        match self.entries.get(dest) {
            Some(c) if c.owner != *owner || c.revoked => return Ok(CapabilityChange::Refused),
            Some(c) if *c == wanted => return Ok(CapabilityChange::Unchanged),
            Some(_) => {}
            None if !self.has_room(owner) => return Ok(CapabilityChange::Refused),
            None => {}
        }
        self.append(dir, dest, &wanted)?;
        Ok(CapabilityChange::Changed)
    }

    /// Revokes `dest` of `owner`: refused from now on, even if it was never registered.
    pub fn revoke(
        &mut self,
        dir: &Path,
        owner: &MailboxId,
        dest: &MailboxId,
    ) -> Result<CapabilityChange> {
        let revoked = match self.entries.get(dest) {
            Some(c) if c.owner != *owner => return Ok(CapabilityChange::Refused),
            Some(c) if c.revoked => return Ok(CapabilityChange::Unchanged),
            Some(c) => Capability {
                revoked: true,
                ..*c
            },
            None if !self.has_room(owner) => return Ok(CapabilityChange::Refused),
            None => Capability {
                owner: *owner,
                quota_items: 0,
                quota_bytes: 0,
                revoked: true,
            },
        };
        self.append(dir, dest, &revoked)?;
        Ok(CapabilityChange::Changed)
    }

    fn has_room(&self, owner: &MailboxId) -> bool {
        self.entries.len() < MAX_CAPABILITIES
            && self.destinations_of(owner).len() < MAX_CAPABILITIES_PER_MAILBOX
    }

    /// Makes every change so far durable, and rewrites the log when it has grown well past the
    /// live entries.
    pub fn sync(&mut self, dir: &Path) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let path = dir.join(LOG);
        self.file.sync_data().map_err(io_err(&path))?;
        self.dirty = false;
        if self.records > 2 * self.entries.len() as u64 + LOG_SLACK {
            self.rewrite(dir)?;
        }
        Ok(())
    }

    fn rewrite(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(LOG);
        let tmp = dir.join("capabilities.log.new");
        let mut bytes = Vec::with_capacity(self.entries.len() * RECORD_LEN);
        for (dest, c) in &self.entries {
            bytes.extend_from_slice(&encode(dest, c));
        }
        crate::private_files::write_synced(&tmp, &bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        self.file = crate::private_files::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.len = bytes.len() as u64;
        self.records = self.entries.len() as u64;
        Ok(())
    }
}
