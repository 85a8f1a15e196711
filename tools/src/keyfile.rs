//! Key files: one hex-encoded 32-byte secret per file, written with mode 0600. The format is
//! deliberately dull so an operator can back it up, diff it, or read it with `cat`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads a 32-byte secret written by [`write_secret`].
pub fn read_secret(path: &Path) -> Result<[u8; 32]> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    parse_hex32(text.trim()).with_context(|| format!("{} is not a key file", path.display()))
}

/// Parses 64 hex digits.
pub fn parse_hex32(text: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).context("not hex")?;
    let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!("expected 32 bytes, got {}", bytes.len());
    };
    Ok(arr)
}

/// Writes a secret so only its owner can read it; refuses to overwrite an existing key.
pub fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create key file {} (does it exist?)", path.display()))?;
    writeln!(f, "{}", hex::encode(secret))?;
    f.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temp file + rename), so readers polling the file
/// (relays re-reading the directory) never see half a document.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_secret(&p, &[7; 32]).unwrap();
        assert_eq!(read_secret(&p).unwrap(), [7; 32]);
        assert!(
            write_secret(&p, &[8; 32]).is_err(),
            "never overwrites a key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        assert!(parse_hex32("zz").is_err());
        assert!(parse_hex32("abcd").is_err());
    }
}
