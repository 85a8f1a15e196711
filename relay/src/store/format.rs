//! The mailbox log's on-disk formats: fixed-size records in segment files, fixed-size
//! tombstones in the delete log.
//!
//! Both are read back as hostile input: a record or tombstone is used only if its length,
//! magic, version and CRC32 all check out, so a write torn by a crash (a short tail, or a tail
//! the filesystem filled with zeros) is recognised and skipped, never trusted.
//!
//! Record (`RECORD_LEN` = 1,100 bytes, every field big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SPMB` |
//! | 4 | version (2; 1 is still read) |
//! | 5..8 | zero |
//! | 8..40 | mailbox id: version 2 the relay's keyed hash of it, version 1 the id itself |
//! | 40..48 | handle (segment id ‖ slot: the record's own location) |
//! | 48..56 | stored at (unix s; the relay writes it rounded to the hour) |
//! | 56..72 | SURB id |
//! | 72..1096 | payload |
//! | 1096..1100 | CRC32 of bytes 0..1096 |
//!
//! Tombstone (12 bytes): handle ‖ CRC32(`SPDL` ‖ handle).
//!
//! Scrubbed record (`RECORD_LEN` bytes): magic `SPSC` and zeros. A deleted or expired record
//! is overwritten with this in place, so its payload is gone from the file; it reads as a dead
//! slot, not as damage.

use spore_protocol::MailboxId;
use spore_protocol::params::{PAYLOAD_SIZE, SURB_ID_SIZE};

use super::StoredItem;

const RECORD_MAGIC: [u8; 4] = *b"SPMB";
const RECORD_VERSION: u8 = 2;
/// Records written before issue 15 (mailbox id in the clear, times to the second): still read,
/// their ids mapped through the keyed hash at open; they age out with retention.
const LEGACY_RECORD_VERSION: u8 = 1;
const SCRUBBED_MAGIC: [u8; 4] = *b"SPSC";
const MAILBOX_AT: usize = 8;
const HANDLE_AT: usize = MAILBOX_AT + 32;
const STORED_AT_AT: usize = HANDLE_AT + 8;
const SURB_AT: usize = STORED_AT_AT + 8;
const PAYLOAD_AT: usize = SURB_AT + SURB_ID_SIZE;
const CRC_AT: usize = PAYLOAD_AT + PAYLOAD_SIZE;
/// Bytes of one record on disk.
pub(crate) const RECORD_LEN: usize = CRC_AT + 4;

const TOMBSTONE_MAGIC: [u8; 4] = *b"SPDL";
/// Bytes of one tombstone on disk.
pub(crate) const TOMBSTONE_LEN: usize = 12;

/// A handle is where its record lives: segment id in the high half, slot in the low half.
/// Handles therefore grow with insertion order (a mailbox's items sort oldest first) and are
/// never reused as long as segment ids are not.
pub(crate) fn handle_of(segment: u32, slot: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(slot)
}

pub(crate) fn location_of(handle: u64) -> (u32, u32) {
    ((handle >> 32) as u32, handle as u32)
}

/// What a record says about itself, once its checksum holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub mailbox: MailboxId,
    pub handle: u64,
    pub stored_at: u64,
    /// Written by an earlier version: `mailbox` is the id itself, not its keyed hash.
    pub legacy: bool,
}

pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    header: &RecordHeader,
    surb_id: &[u8; SURB_ID_SIZE],
    payload: &[u8; PAYLOAD_SIZE],
) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[RECORD_VERSION, 0, 0, 0]);
    out.extend_from_slice(header.mailbox.as_bytes());
    out.extend_from_slice(&header.handle.to_be_bytes());
    out.extend_from_slice(&header.stored_at.to_be_bytes());
    out.extend_from_slice(surb_id);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The header of a whole, intact record; `None` for anything else.
pub(crate) fn decode_header(rec: &[u8]) -> Option<RecordHeader> {
    if rec.len() != RECORD_LEN || rec.get(..4)? != RECORD_MAGIC {
        return None;
    }
    let legacy = match rec.get(4..8)? {
        [RECORD_VERSION, 0, 0, 0] => false,
        [LEGACY_RECORD_VERSION, 0, 0, 0] => true,
        _ => return None,
    };
    let crc = u32::from_be_bytes(rec.get(CRC_AT..)?.try_into().ok()?);
    if crc32fast::hash(rec.get(..CRC_AT)?) != crc {
        return None;
    }
    Some(RecordHeader {
        mailbox: MailboxId(rec.get(MAILBOX_AT..HANDLE_AT)?.try_into().ok()?),
        handle: u64_at(rec, HANDLE_AT)?,
        stored_at: u64_at(rec, STORED_AT_AT)?,
        legacy,
    })
}

/// The bytes a deleted record is overwritten with.
pub(crate) fn scrubbed_record() -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[..4].copy_from_slice(&SCRUBBED_MAGIC);
    out
}

/// Whether `rec` is a record this store scrubbed (a dead slot, not damage).
pub(crate) fn is_scrubbed(rec: &[u8]) -> bool {
    rec.len() == RECORD_LEN
        && rec.get(..4) == Some(&SCRUBBED_MAGIC[..])
        && rec.get(4..).is_some_and(|r| r.iter().all(|b| *b == 0))
}

/// A whole, intact record as a pull returns it.
pub(crate) fn decode_item(rec: &[u8]) -> Option<(RecordHeader, StoredItem)> {
    let header = decode_header(rec)?;
    let surb_id: [u8; SURB_ID_SIZE] = rec.get(SURB_AT..PAYLOAD_AT)?.try_into().ok()?;
    let payload: [u8; PAYLOAD_SIZE] = rec.get(PAYLOAD_AT..CRC_AT)?.try_into().ok()?;
    Some((
        header,
        StoredItem {
            handle: header.handle,
            surb_id,
            payload: Box::new(payload),
            stored_at: header.stored_at,
        },
    ))
}

fn tombstone_crc(handle: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&TOMBSTONE_MAGIC);
    h.update(&handle.to_be_bytes());
    h.finalize()
}

pub(crate) fn encode_tombstone(out: &mut Vec<u8>, handle: u64) {
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&tombstone_crc(handle).to_be_bytes());
}

/// The handle an intact tombstone deletes; `None` for anything else.
pub(crate) fn decode_tombstone(t: &[u8]) -> Option<u64> {
    if t.len() != TOMBSTONE_LEN {
        return None;
    }
    let handle = u64_at(t, 0)?;
    let crc = u32::from_be_bytes(t.get(8..12)?.try_into().ok()?);
    (crc == tombstone_crc(handle)).then_some(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<u8> {
        let mut out = Vec::new();
        let header = RecordHeader {
            mailbox: MailboxId([3; 32]),
            handle: handle_of(7, 9),
            stored_at: 1234,
            legacy: false,
        };
        encode_record(&mut out, &header, &[4; SURB_ID_SIZE], &[5; PAYLOAD_SIZE]);
        out
    }

    #[test]
    fn record_round_trips_and_any_flipped_byte_is_refused() {
        let rec = record();
        assert_eq!(rec.len(), RECORD_LEN);
        let (h, item) = decode_item(&rec).expect("intact");
        assert_eq!(location_of(h.handle), (7, 9));
        assert_eq!(item.payload[..], [5; PAYLOAD_SIZE][..]);
        for at in [0, 4, 5, 8, 45, 50, 60, 500, RECORD_LEN - 1] {
            let mut bad = rec.clone();
            bad[at] ^= 1;
            assert_eq!(decode_header(&bad), None, "byte {at}");
        }
        assert_eq!(decode_header(&rec[..RECORD_LEN - 1]), None);
        assert_eq!(decode_header(&vec![0; RECORD_LEN]), None);
    }

    #[test]
    fn legacy_records_are_read_and_scrubbed_ones_are_not_records() {
        let mut rec = record();
        rec[4] = LEGACY_RECORD_VERSION;
        let crc = crc32fast::hash(&rec[..CRC_AT]);
        rec[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        assert!(decode_header(&rec).expect("a version 1 record").legacy);
        assert!(!decode_header(&record()).expect("intact").legacy);
        let scrubbed = scrubbed_record();
        assert!(is_scrubbed(&scrubbed));
        assert_eq!(decode_header(&scrubbed), None);
        assert!(!is_scrubbed(&[0; RECORD_LEN]));
        assert!(!is_scrubbed(&record()));
    }

    #[test]
    fn tombstone_round_trips_and_zeros_are_refused() {
        let mut t = Vec::new();
        encode_tombstone(&mut t, 42);
        assert_eq!(decode_tombstone(&t), Some(42));
        assert_eq!(decode_tombstone(&[0; TOMBSTONE_LEN]), None);
        t[3] ^= 1;
        assert_eq!(decode_tombstone(&t), None);
    }
}
