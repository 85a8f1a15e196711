//! The delay queue across a graceful stop: packets still waiting for their release time when
//! the relay stops are written to one file, and the next start releases each at its original
//! time (or at once, if that time passed while the relay was down).
//!
//! Their replay tags were durable before they entered the delay queue, so a held packet is
//! never released twice: the file is read once at start and removed. A crash (no graceful
//! stop) still loses what the queue held, as before: those packets were never acknowledged
//! by this relay, and senders retransmit.
//!
//! File `<data dir>/delayed.packets`, mode 0600, replaced atomically (temporary file, sync,
//! rename, folder sync):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `SPOREHLD` |
//! | 4 | record count n (u32 BE) |
//! | n × (8 + 8 + 32 + PACKET_SIZE) | release time (µs since the Unix epoch, u64 BE), the header's delay (µs, u64 BE; `u64::MAX` for a SURB-ack, which has none), next hop, packet |
//! | 4 | CRC-32 of everything before |

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spore_protocol::RelayId;
use spore_protocol::params::PACKET_SIZE;

use crate::error::{RelayError, Result};
use crate::private_files::file_error;

/// The file's name in the data folder.
pub(crate) const FILE_NAME: &str = "delayed.packets";
const MAGIC: &[u8; 8] = b"SPOREHLD";
const RECORD_LEN: usize = 8 + 8 + 32 + PACKET_SIZE;
const NO_DELAY: u64 = u64::MAX;

/// One packet held for later, with its release time in wall-clock terms (monotonic instants do
/// not survive a restart).
#[derive(Debug)]
pub(crate) struct HeldPacket {
    pub release_at: SystemTime,
    /// The header's delay (for the added-latency metric), `None` for a SURB-ack.
    pub delay: Option<Duration>,
    pub next_hop: RelayId,
    pub packet: Box<[u8; PACKET_SIZE]>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
}

/// Writes `held` to `path` atomically (an empty list removes the file).
pub(crate) fn save(path: &Path, held: &[HeldPacket]) -> Result<()> {
    if held.is_empty() {
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(file_error(path)(e)),
        };
    }
    let count = u32::try_from(held.len()).map_err(|_| RelayError::Corrupt("too many held"))?;
    let mut out = Vec::with_capacity(16 + held.len() * RECORD_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&count.to_be_bytes());
    for h in held {
        let at = h.release_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        out.extend_from_slice(&micros(at).to_be_bytes());
        out.extend_from_slice(&h.delay.map_or(NO_DELAY, micros).to_be_bytes());
        out.extend_from_slice(&h.next_hop.0);
        out.extend_from_slice(h.packet.as_slice());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    let tmp = path.with_extension("tmp");
    let mut f = crate::private_files::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(file_error(&tmp))?;
    crate::private_files::restrict(&f).map_err(file_error(&tmp))?;
    f.write_all(&out)
        .and_then(|()| f.sync_all())
        .map_err(file_error(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(file_error(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_error(dir))?;
    }
    Ok(())
}

/// Reads and removes the file at `path`; an absent file holds nothing.
pub(crate) fn take(path: &Path) -> Result<Vec<HeldPacket>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(path)(e)),
    };
    let held = decode(&bytes);
    std::fs::remove_file(path).map_err(file_error(path))?;
    held
}

fn decode(bytes: &[u8]) -> Result<Vec<HeldPacket>> {
    let bad = RelayError::Corrupt("held packets file");
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err(bad);
    };
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return Err(bad);
    }
    let (magic, rest) = body.split_at_checked(MAGIC.len()).ok_or(bad)?;
    if magic != MAGIC {
        return Err(RelayError::Corrupt("held packets file"));
    }
    let (count, records) = rest
        .split_first_chunk::<4>()
        .ok_or(RelayError::Corrupt("held packets file"))?;
    let count = usize::try_from(u32::from_be_bytes(*count)).unwrap_or(usize::MAX);
    if records.len() != count.saturating_mul(RECORD_LEN) {
        return Err(RelayError::Corrupt("held packets file"));
    }
    let mut out = Vec::with_capacity(count);
    for r in records.chunks_exact(RECORD_LEN) {
        let (at, r) = r
            .split_first_chunk::<8>()
            .ok_or(RelayError::Corrupt("held"))?;
        let (delay, r) = r
            .split_first_chunk::<8>()
            .ok_or(RelayError::Corrupt("held"))?;
        let (hop, packet) = r
            .split_first_chunk::<32>()
            .ok_or(RelayError::Corrupt("held"))?;
        let packet: Box<[u8; PACKET_SIZE]> = packet
            .to_vec()
            .into_boxed_slice()
            .try_into()
            .map_err(|_| RelayError::Corrupt("held packets file"))?;
        let delay = u64::from_be_bytes(*delay);
        out.push(HeldPacket {
            release_at: UNIX_EPOCH + Duration::from_micros(u64::from_be_bytes(*at)),
            delay: (delay != NO_DELAY).then(|| Duration::from_micros(delay)),
            next_hop: RelayId(*hop),
            packet,
        });
    }
    Ok(out)
}

/// Where the held packets of the relay whose data folder is `data_dir` are kept.
pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_packets_round_trip_once_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(dir.path());
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let held = vec![
            HeldPacket {
                release_at: at,
                delay: Some(Duration::from_millis(1500)),
                next_hop: RelayId([7; 32]),
                packet: Box::new([1; PACKET_SIZE]),
            },
            HeldPacket {
                release_at: at,
                delay: None,
                next_hop: RelayId([8; 32]),
                packet: Box::new([2; PACKET_SIZE]),
            },
        ];
        save(&path, &held).expect("save");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = take(&path).expect("take");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].release_at, at);
        assert_eq!(back[0].delay, Some(Duration::from_millis(1500)));
        assert_eq!(back[1].delay, None);
        assert_eq!(back[1].next_hop, RelayId([8; 32]));
        assert_eq!(back[1].packet[0], 2);
        assert!(take(&path).expect("take").is_empty(), "read once");

        save(&path, &held).expect("save");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(take(&path), Err(RelayError::Corrupt(_))));
    }
}
