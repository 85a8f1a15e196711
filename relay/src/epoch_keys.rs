//! Forward-secret Sphinx keys: a fresh random X25519 secret per key epoch, made ahead of its
//! epoch so its public half can be published, and erased once the epoch's grace window is over.
//!
//! After erasure nothing the relay keeps can unwrap a packet of that epoch: the secret is not
//! derived from anything that stays (unlike the HKDF-from-a-master-secret schedule of earlier
//! versions), its file is overwritten with zeros, synced and unlinked, and its in-memory copies
//! are zeroized when dropped. A neighbour that recorded packets learns nothing from seizing the
//! relay's files later. (How well "overwritten" erases depends on the filesystem and device:
//! journals and flash remapping may keep old blocks. Encrypted storage closes that gap.)
//!
//! On disk, in a folder beside the key file (`<key file>.epochs/`, mode 0700):
//!
//! | file | content |
//! |---|---|
//! | `<epoch>.key` | the epoch's X25519 secret, 32 raw bytes, mode 0600 |
//! | `.<epoch>.<random>.tmp` | a key being written; linked to `<epoch>.key` once synced |
//!
//! A key file appears whole or not at all (written, synced, then hard-linked into place), and
//! the first writer wins: two processes sharing the folder (a relay and a test reading its
//! keys) agree on each epoch's key.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{RelayError, Result};
use crate::keys::{KeySchedule, RelayKeys};
use crate::private_files;
use crate::private_files::{file_error, sync_dir};
use crate::replay::ReplayCache;

const KEY_EXTENSION: &str = "key";
const TMP_EXTENSION: &str = "tmp";
const SECRET_LEN: usize = 32;

/// The Sphinx secrets of the key epochs a relay holds.
pub struct EpochKeys {
    /// Where the keys are kept; `None` keeps them in memory only (tests, tools).
    dir: Option<PathBuf>,
    secrets: RwLock<BTreeMap<u64, Zeroizing<[u8; SECRET_LEN]>>>,
    /// Epochs below this were erased by this process: never made again.
    floor: AtomicU64,
}

impl std::fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKeys")
            .field("dir", &self.dir)
            .field("epochs", &self.held())
            .finish_non_exhaustive()
    }
}

/// The epoch a file of the folder belongs to: `<epoch>.key` or `.<epoch>.<random>.tmp`.
fn epoch_of(name: &str) -> Option<(u64, bool)> {
    if let Some(stem) = name.strip_suffix(&format!(".{KEY_EXTENSION}")) {
        return stem.parse().ok().map(|e| (e, false));
    }
    let rest = name
        .strip_prefix('.')?
        .strip_suffix(&format!(".{TMP_EXTENSION}"))?;
    rest.split('.').next()?.parse().ok().map(|e| (e, true))
}

/// Overwrites a file with zeros, syncs it and unlinks it.
fn scrub(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path).map_err(file_error(path))?.len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(file_error(path))?;
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(SECRET_LEN).max(SECRET_LEN)];
    f.write_all(&zeros)
        .and_then(|()| f.sync_all())
        .map_err(file_error(path))?;
    drop(f);
    std::fs::remove_file(path).map_err(file_error(path))
}

impl EpochKeys {
    /// Keys kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            secrets: RwLock::default(),
            floor: AtomicU64::new(0),
        }
    }

    /// The key folder that belongs to the key file at `key_file`.
    pub fn dir_for(key_file: &Path) -> PathBuf {
        let mut name = key_file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".epochs");
        key_file.with_file_name(name)
    }

    /// Opens (creating it, mode 0700) the key folder `dir` and reads the keys in it.
    pub fn open(dir: &Path) -> Result<Self> {
        private_files::create_dir_all(dir).map_err(file_error(dir))?;
        let keys = Self {
            dir: Some(dir.to_owned()),
            secrets: RwLock::default(),
            floor: AtomicU64::new(0),
        };
        for entry in std::fs::read_dir(dir).map_err(file_error(dir))? {
            let path = entry.map_err(file_error(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some((epoch, false)) = epoch_of(name) {
                let secret = read_secret(&path)?;
                keys.write_lock().insert(epoch, secret);
            }
        }
        Ok(keys)
    }

    fn write_lock(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Zeroizing<[u8; SECRET_LEN]>>> {
        self.secrets.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_lock(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Zeroizing<[u8; SECRET_LEN]>>> {
        self.secrets.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The epochs whose keys are held, oldest first.
    pub fn held(&self) -> Vec<u64> {
        self.read_lock().keys().copied().collect()
    }

    /// Epochs below this have been erased here.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// The secret of `epoch` if it is held (in memory, or written by another process sharing
    /// the folder); never makes one.
    pub fn secret(&self, epoch: u64) -> Result<Option<StaticSecret>> {
        if epoch < self.floor() {
            return Ok(None);
        }
        if let Some(s) = self.read_lock().get(&epoch) {
            return Ok(Some(StaticSecret::from(**s)));
        }
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = key_path(dir, epoch);
        if !path.exists() {
            return Ok(None);
        }
        let s = read_secret(&path)?;
        let secret = StaticSecret::from(*s);
        self.write_lock().entry(epoch).or_insert(s);
        Ok(Some(secret))
    }

    /// The secret of `epoch`, made (random, and written down before it is used) if it is not
    /// held yet. `None` for an epoch already erased.
    pub fn get_or_make(&self, epoch: u64) -> Result<Option<StaticSecret>> {
        if let Some(s) = self.secret(epoch)? {
            return Ok(Some(s));
        }
        if epoch < self.floor() {
            return Ok(None);
        }
        self.install(epoch, Zeroizing::new(rand::random()))
            .map(Some)
    }

    /// Holds `secret` as `epoch`'s key unless one is held already (the first one wins, also
    /// against another process); returns the key held.
    pub(crate) fn install(
        &self,
        epoch: u64,
        secret: Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<StaticSecret> {
        let mut secrets = self.write_lock();
        if let Some(s) = secrets.get(&epoch) {
            return Ok(StaticSecret::from(**s));
        }
        let held = match &self.dir {
            None => secret,
            Some(dir) => write_new(dir, epoch, secret)?,
        };
        let out = StaticSecret::from(*held);
        secrets.insert(epoch, held);
        Ok(out)
    }

    /// Makes the keys of `epochs` that are not held yet; returns how many were made.
    pub fn make_ahead(&self, epochs: std::ops::RangeInclusive<u64>) -> Result<usize> {
        let mut made = 0;
        for epoch in epochs {
            if self.secret(epoch)?.is_none() && epoch >= self.floor() {
                self.get_or_make(epoch)?;
                made += 1;
            }
        }
        Ok(made)
    }

    /// Erases every key of an epoch below `oldest_kept`: zeroized in memory, and its file (and
    /// any half-written one) overwritten, synced and unlinked. Returns how many epochs' keys
    /// were erased.
    pub fn erase_before(&self, oldest_kept: u64) -> Result<usize> {
        self.floor.fetch_max(oldest_kept, Ordering::AcqRel);
        let mut erased: Vec<u64> = {
            let mut secrets = self.write_lock();
            let keep = secrets.split_off(&oldest_kept);
            // Dropping a `Zeroizing` clears it.
            let old = std::mem::replace(&mut *secrets, keep);
            old.keys().copied().collect()
        };
        if let Some(dir) = &self.dir {
            let mut removed = false;
            for entry in std::fs::read_dir(dir).map_err(file_error(dir))? {
                let path = entry.map_err(file_error(dir))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let Some((epoch, tmp)) = epoch_of(name) else {
                    continue;
                };
                if epoch < oldest_kept {
                    scrub(&path)?;
                    removed = true;
                    if !tmp && !erased.contains(&epoch) {
                        erased.push(epoch);
                    }
                }
            }
            if removed {
                sync_dir(dir)?;
            }
        }
        Ok(erased.len())
    }
}

fn key_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.{KEY_EXTENSION}"))
}

fn read_secret(path: &Path) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
    let mut f = File::open(path).map_err(file_error(path))?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(SECRET_LEN + 1));
    f.read_to_end(&mut bytes).map_err(file_error(path))?;
    let arr = <[u8; SECRET_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| RelayError::Corrupt("epoch key file is not 32 bytes"))?;
    Ok(Zeroizing::new(arr))
}

/// Writes `secret` as `epoch`'s key file unless there is one; returns the key in the file.
fn write_new(
    dir: &Path,
    epoch: u64,
    secret: Zeroizing<[u8; SECRET_LEN]>,
) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
    let path = key_path(dir, epoch);
    let tmp = dir.join(format!(
        ".{epoch}.{:016x}.{TMP_EXTENSION}",
        rand::random::<u64>()
    ));
    let mut f = private_files::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(file_error(&tmp))?;
    f.write_all(secret.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(file_error(&tmp))?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, &path);
    // The temporary name goes either way; the secret stays only under the final name.
    std::fs::remove_file(&tmp).map_err(file_error(&tmp))?;
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret(&path),
        Err(e) => Err(file_error(&path)(e)),
    }
}

/// How many epochs after the current one have their keys made in advance: the descriptor
/// publishes the next one, and one more is ready before a rotation publishes it.
pub(crate) const EPOCHS_AHEAD: u64 = 2;

/// One key rotation step, run at start and with every maintenance tick: retires an earlier
/// version's master secret, makes the keys of the current and next epochs, and erases those of
/// epochs below the replay cache's floor (the replay tags of those epochs are dropped by
/// [`ReplayCache::expire_before`] just before, so key and tags go together). Returns how many
/// keys were made and erased.
pub(crate) fn rotate(
    keys: &RelayKeys,
    schedule: &KeySchedule,
    replay: &ReplayCache,
    now_unix: u64,
) -> Result<(usize, usize)> {
    let current = schedule.epoch_at(now_unix);
    if keys.retire_legacy_master(current.saturating_sub(1)..=current + 1)? {
        tracing::warn!(
            "the key file held a Sphinx master secret (earlier version): the keys it may have \
             published were kept as epoch keys and the master was removed from the file"
        );
    }
    let made = keys.epochs().make_ahead(current..=current + EPOCHS_AHEAD)?;
    let erased = keys.epochs().erase_before(replay.floor().min(current))?;
    if made > 0 || erased > 0 {
        tracing::info!(made, erased, "Sphinx epoch keys rotated");
    }
    Ok((made, erased))
}

/// The public half of a secret.
pub(crate) fn public_of(secret: &StaticSecret) -> PublicKey {
    PublicKey::from(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_random_private_shared_and_erased() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kdir = dir.path().join("relay.key.epochs");
        let a = EpochKeys::open(&kdir).expect("open");
        assert_eq!(a.make_ahead(5..=7).expect("make"), 3);
        let pub5 = public_of(&a.secret(5).expect("io").expect("held"));
        assert_ne!(
            pub5,
            public_of(&a.secret(6).expect("io").expect("held")),
            "one key per epoch"
        );
        let mode = std::fs::metadata(&kdir).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = std::fs::metadata(key_path(&kdir, 5))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Another process sharing the folder reads the same key, and a key it makes first is
        // the one the first process uses.
        let b = EpochKeys::open(&kdir).expect("open");
        assert_eq!(public_of(&b.secret(5).expect("io").expect("held")), pub5);
        let pub9 = public_of(&b.get_or_make(9).expect("io").expect("made"));
        assert_eq!(
            public_of(&a.get_or_make(9).expect("io").expect("held")),
            pub9
        );

        assert_eq!(a.erase_before(7).expect("erase"), 2);
        assert!(!key_path(&kdir, 5).exists() && !key_path(&kdir, 6).exists());
        assert!(a.secret(5).expect("io").is_none());
        assert!(a.get_or_make(5).expect("io").is_none(), "never made again");
        assert_eq!(a.held(), vec![7, 9]);
        let c = EpochKeys::open(&kdir).expect("open");
        assert_eq!(c.held(), vec![7, 9]);
    }
}
