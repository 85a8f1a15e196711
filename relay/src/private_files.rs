//! Files and folders only the relay's own user can read.
//!
//! Everything the relay writes under its data folder is either a secret (epoch keys) or says
//! something about traffic (replay tags, mailbox payloads, held packets): files are created
//! with mode 0600 and folders with 0700 whatever the process umask, and files left by an
//! earlier version with wider modes are narrowed when opened.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{RelayError, Result};

/// Mode of every file the relay creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every folder the relay creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// `OpenOptions` whose `create` makes a 0600 file.
pub(crate) fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates `dir` and its missing parents with mode 0700, and narrows `dir` itself to 0700 if it
/// existed with a wider mode.
pub(crate) fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Narrows an open file to 0600 if it has a wider mode (a file of an earlier version).
pub(crate) fn restrict(file: &File) -> std::io::Result<()> {
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Writes `bytes` to a new 0600 file at `path` (replacing one left there) and syncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    restrict(&f)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The relay's error for an I/O failure on `path`, naming the file.
pub(crate) fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> RelayError + '_ {
    move |source| RelayError::File {
        path: path.to_owned(),
        source,
    }
}

/// Makes the folder's entries (a created, renamed or removed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_error(dir))
}
