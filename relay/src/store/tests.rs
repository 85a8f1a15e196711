//! The mailbox store on real files: every test writes, commits, drops and reopens.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use spore_protocol::MailboxId;
use spore_protocol::params::PAYLOAD_SIZE;

use super::format::RECORD_LEN;
use super::*;

fn limits() -> MailboxLimits {
    MailboxLimits {
        quota_items: 3,
        quota_bytes: 1 << 20,
        disk_budget_bytes: 1 << 30,
        first_contact_items: u64::MAX,
        first_contact_bytes: u64::MAX,
    }
}

fn unlimited() -> MailboxLimits {
    MailboxLimits {
        quota_items: u64::MAX,
        quota_bytes: u64::MAX,
        disk_budget_bytes: u64::MAX,
        first_contact_items: u64::MAX,
        first_contact_bytes: u64::MAX,
    }
}

fn mb(i: u8) -> MailboxId {
    MailboxId([i; 32])
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("mailbox"))
        .expect("mailbox dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn put(s: &MailboxStore, m: &MailboxId, tag: u8, at: u64) -> u64 {
    s.insert(m, &[tag; 16], &[tag; PAYLOAD_SIZE], at)
        .expect("io")
        .expect("stored")
}

#[test]
fn insert_pull_delete_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = mb(1);
    let b = mb(2);
    let handles: Vec<u64> = {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, limits()).expect("store");
        let hs: Vec<u64> = (0..3u8)
            .map(|i| put(&s, &a, i, 100 + u64::from(i)))
            .collect();
        assert_eq!(
            s.insert(&a, &[9; 16], &[9; PAYLOAD_SIZE], 200).expect("io"),
            Err(Refusal::QuotaItems)
        );
        put(&s, &b, 7, 100);
        db.commit().expect("commit");
        hs
    };
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, limits()).expect("store");
    assert_eq!(s.total_usage(), (4, 4 * ITEM_BYTES));
    assert_eq!(s.mailbox_usage(&a), (3, 3 * ITEM_BYTES));
    let items = s.pull(&a, 16).expect("pull");
    assert_eq!(items.iter().map(|i| i.handle).collect::<Vec<_>>(), handles);
    assert_eq!(items[0].surb_id, [0; 16]);
    assert_eq!(items[2].payload[..], [2; PAYLOAD_SIZE][..]);
    assert_eq!(items[1].stored_at, 101);
    // b cannot delete a's items.
    assert_eq!(s.delete(&b, &handles).expect("delete"), 0);
    assert_eq!(s.delete(&a, &handles[..2]).expect("delete"), 2);
    assert_eq!(s.delete(&a, &handles[..2]).expect("delete"), 0);
    assert_eq!(s.pull(&a, 16).expect("pull").len(), 1);
    // New handles never reuse old ones.
    let h = put(&s, &a, 5, 300);
    assert!(h > *handles.iter().max().expect("some"));
    // Retention.
    assert_eq!(s.sweep(150).expect("sweep"), 2);
    assert_eq!(s.pull(&a, 16).expect("pull").len(), 1);
    assert_eq!(s.total_usage().0, 1);
    assert_eq!(s.damaged_records(), 0);
}

#[test]
fn uncommitted_items_are_pulled_from_the_write_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    let h = put(&s, &mb(1), 4, 10);
    let items = s.pull(&mb(1), 16).expect("pull");
    assert_eq!(items.len(), 1);
    assert_eq!((items[0].handle, items[0].surb_id), (h, [4; 16]));
    assert!(s.pull(&mb(2), 16).expect("pull").is_empty());
}

#[test]
fn a_second_store_on_the_same_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, limits()).expect("store");
    assert!(MailboxStore::open(&db, limits()).is_err());
    drop(s);
    MailboxStore::open(&db, limits()).expect("reopens once the first is closed");
}

#[test]
fn a_torn_tail_record_is_skipped_and_the_rest_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept: Vec<u64> = {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, unlimited()).expect("store");
        let hs = (0..5u8).map(|i| put(&s, &mb(1), i, 10)).collect();
        db.commit().expect("commit");
        hs
    };
    // A crash in the middle of the next record: half of it reached the file.
    let seg = segments(dir.path()).pop().expect("a segment");
    let whole = std::fs::read(&seg).expect("read");
    let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
    f.write_all(&whole[..RECORD_LEN / 2]).expect("write");
    // And a record the filesystem left as zeros.
    drop(f);
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    assert_eq!(s.damaged_records(), 1);
    let items = s.pull(&mb(1), 16).expect("pull");
    assert_eq!(items.iter().map(|i| i.handle).collect::<Vec<_>>(), kept);
    // New items go to a fresh segment: the torn slot is never reused.
    let h = put(&s, &mb(1), 9, 11);
    assert!(h > *kept.iter().max().expect("some"));
    db.commit().expect("commit");
}

#[test]
fn zeroed_and_corrupt_records_are_skipped_at_open_and_at_pull() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, unlimited()).expect("store");
        for i in 0..4u8 {
            put(&s, &mb(1), i, 10);
        }
        db.commit().expect("commit");
    }
    let seg = segments(dir.path()).pop().expect("a segment");
    let f = OpenOptions::new().write(true).open(&seg).expect("open");
    use std::os::unix::fs::FileExt;
    // Record 1 zeroed, record 2 with one flipped payload byte, then a whole zero record at
    // the end (what some filesystems leave after a crash).
    f.write_all_at(&[0u8; RECORD_LEN], RECORD_LEN as u64)
        .expect("zero");
    f.write_all_at(&[0xff], 2 * RECORD_LEN as u64 + 500)
        .expect("flip");
    f.write_all_at(&[0u8; RECORD_LEN], 4 * RECORD_LEN as u64)
        .expect("zero tail");
    drop(f);
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    assert_eq!(s.damaged_records(), 3);
    let items = s.pull(&mb(1), 16).expect("pull");
    assert_eq!(
        items.iter().map(|i| i.surb_id[0]).collect::<Vec<_>>(),
        [0, 3]
    );
    assert_eq!(s.total_usage().0, 2);
    // Damage after open is caught by the pull's checksum.
    let h3 = items[1].handle;
    let seg_file = OpenOptions::new().write(true).open(&seg).expect("open");
    seg_file
        .write_all_at(&[0xee], 3 * RECORD_LEN as u64 + 700)
        .expect("flip");
    let items = s.pull(&mb(1), 16).expect("pull");
    assert_eq!(items.len(), 1);
    assert!(items.iter().all(|i| i.handle != h3));
    assert_eq!(s.damaged_records(), 4);
}

#[test]
fn reopen_after_many_inserts_and_deletes_loses_nothing_and_resurrects_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected: std::collections::BTreeMap<u8, Vec<u64>> = Default::default();
    for round in 0..4u64 {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open_with(&db, unlimited(), 16).expect("store");
        // What was committed before is all there, and nothing deleted came back.
        for (m, hs) in &expected {
            let got: Vec<u64> = s
                .pull(&mb(*m), usize::MAX)
                .expect("pull")
                .iter()
                .map(|i| i.handle)
                .collect();
            assert_eq!(&got, hs, "round {round}, mailbox {m}");
        }
        for i in 0..100u64 {
            let m = (i % 5) as u8;
            let h = put(&s, &mb(m), m, round * 100 + i);
            expected.entry(m).or_default().push(h);
            if i % 7 == 3 {
                // Delete the oldest of a mailbox now and then, and one from the middle.
                let victim = expected.get_mut(&m).expect("some").remove(0);
                assert_eq!(s.delete(&mb(m), &[victim]).expect("delete"), 1);
            }
            if i % 23 == 0 {
                db.commit().expect("commit");
            }
        }
        let mid = expected.get_mut(&2).expect("some");
        let victim = mid.remove(mid.len() / 2);
        assert_eq!(s.delete(&mb(2), &[victim]).expect("delete"), 1);
        db.commit().expect("commit");
        // Written after the last commit: kept by the clean close below, then deleted again.
        put(&s, &mb(9), 9, 0);
        let n: u64 = expected.values().map(|v| v.len() as u64).sum();
        assert_eq!(s.total_usage().0, n + 1);
        drop(s);
        let s = MailboxStore::open_with(&db, unlimited(), 16).expect("store");
        let left: Vec<u64> = s
            .pull(&mb(9), 16)
            .expect("pull")
            .iter()
            .map(|i| i.handle)
            .collect();
        assert_eq!(left.len(), 1);
        s.delete(&mb(9), &left).expect("delete");
        db.commit().expect("commit");
        assert_eq!(s.damaged_records(), 0);
    }
}

#[test]
fn segments_are_unlinked_once_everything_in_them_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open_with(&db, unlimited(), 4).expect("store");
    let hs: Vec<u64> = (0..10u8).map(|i| put(&s, &mb(i % 2), i, 10)).collect();
    db.commit().expect("commit");
    // 4 + 4 + 2 records.
    assert_eq!(segments(dir.path()).len(), 3);
    // Deleting most of the first full segment keeps it; deleting all of it removes it.
    let first: Vec<u64> = hs[..4].to_vec();
    s.delete(&mb(0), &first).expect("delete");
    db.commit().expect("commit");
    assert_eq!(segments(dir.path()).len(), 3, "one live item still in it");
    s.delete(&mb(1), &first).expect("delete");
    db.commit().expect("commit");
    assert_eq!(segments(dir.path()).len(), 2);
    assert_eq!(s.segment_count(), 2);
    // The active segment stays even when empty, so segment ids (and handles) only grow.
    s.delete(&mb(0), &hs).expect("delete");
    s.delete(&mb(1), &hs).expect("delete");
    db.commit().expect("commit");
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(s.total_usage().0, 0);
    drop(s);
    let s = MailboxStore::open_with(&db, unlimited(), 4).expect("store");
    assert_eq!(s.total_usage().0, 0);
    let h = put(&s, &mb(0), 1, 10);
    assert!(h > *hs.iter().max().expect("some"));
    db.commit().expect("commit");
    // The previous, empty active segment goes at the next open.
    drop(s);
    let s = MailboxStore::open_with(&db, unlimited(), 4).expect("store");
    assert_eq!(s.total_usage().0, 1);
    assert_eq!(segments(dir.path()).len(), 2);
}

#[test]
fn the_delete_log_is_rewritten_when_its_tombstones_no_longer_matter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open_with(&db, unlimited(), 1024).expect("store");
    let log = dir.path().join("mailbox").join("deleted.log");
    let mut max_len = 0;
    for round in 0..(2 * 65_536 / 1024 + 8) {
        let hs: Vec<u64> = (0..1024).map(|_| put(&s, &mb(1), 1, round)).collect();
        s.delete(&mb(1), &hs).expect("delete");
        db.commit().expect("commit");
        max_len = max_len.max(std::fs::metadata(&log).expect("log").len());
    }
    // Bounded by the slack, not by the deletes ever made.
    assert!(max_len <= (3 * 65_536 + 2 * 1024) * 12, "{max_len}");
    assert!(std::fs::metadata(&log).expect("log").len() < max_len);
    drop(s);
    let s = MailboxStore::open_with(&db, unlimited(), 1024).expect("store");
    assert_eq!(s.total_usage().0, 0);
}

#[test]
fn byte_quota_and_disk_budget_refuse_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open_with(
        &db,
        MailboxLimits {
            quota_items: 100,
            quota_bytes: 2 * ITEM_BYTES,
            disk_budget_bytes: 3 * ITEM_BYTES,
            first_contact_items: u64::MAX,
            first_contact_bytes: u64::MAX,
        },
        2,
    )
    .expect("store");
    put(&s, &mb(1), 1, 10);
    put(&s, &mb(1), 1, 10);
    assert_eq!(
        s.insert(&mb(1), &[1; 16], &[1; PAYLOAD_SIZE], 10)
            .expect("io"),
        Err(Refusal::QuotaBytes)
    );
    let h = put(&s, &mb(2), 2, 10);
    assert_eq!(
        s.insert(&mb(3), &[1; 16], &[1; PAYLOAD_SIZE], 10)
            .expect("io"),
        Err(Refusal::DiskBudget)
    );
    // A deleted item in the segment being written frees its budget at once...
    s.delete(&mb(2), &[h]).expect("delete");
    let h = put(&s, &mb(3), 3, 10);
    // ...one in a full segment still holds its disk until the whole segment goes.
    let (_, h_first) = (0, s.pull(&mb(1), 1).expect("pull")[0].handle);
    s.delete(&mb(1), &[h_first]).expect("delete");
    db.commit().expect("commit");
    assert_eq!(
        s.insert(&mb(4), &[1; 16], &[1; PAYLOAD_SIZE], 10)
            .expect("io"),
        Err(Refusal::DiskBudget)
    );
    let rest: Vec<u64> = s
        .pull(&mb(1), 16)
        .expect("pull")
        .iter()
        .map(|i| i.handle)
        .collect();
    s.delete(&mb(1), &rest).expect("delete");
    db.commit().expect("commit");
    put(&s, &mb(4), 4, 10);
    let _ = h;
}

#[test]
fn retention_removes_old_items_and_their_segments_and_keeps_young_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open_with(&db, unlimited(), 8).expect("store");
    for t in 0..40u64 {
        put(&s, &mb((t % 3) as u8), 1, 1000 + t);
    }
    db.commit().expect("commit");
    let before = segments(dir.path()).len();
    assert_eq!(s.sweep(1020).expect("sweep"), 20);
    assert_eq!(s.sweep(1020).expect("sweep"), 0);
    db.commit().expect("commit");
    assert!(segments(dir.path()).len() < before);
    assert_eq!(s.total_usage().0, 20);
    assert!(
        (0..3)
            .flat_map(|m| s.pull(&mb(m), 100).expect("pull"))
            .all(|i| i.stored_at >= 1020)
    );
    drop(s);
    let s = MailboxStore::open_with(&db, unlimited(), 8).expect("store");
    assert_eq!(s.total_usage().0, 20);
}

#[test]
fn a_torn_tombstone_is_cut_off_and_later_deletes_still_stick() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hs: Vec<u64> = {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, unlimited()).expect("store");
        let hs: Vec<u64> = (0..4u8).map(|i| put(&s, &mb(1), i, 10)).collect();
        s.delete(&mb(1), &hs[..1]).expect("delete");
        db.commit().expect("commit");
        hs
    };
    let log = dir.path().join("mailbox").join("deleted.log");
    let mut f = OpenOptions::new().append(true).open(&log).expect("open");
    f.write_all(&[0xab; 7]).expect("torn tombstone");
    drop(f);
    // A stray file that looks like a segment name is not read as one.
    std::fs::write(dir.path().join("mailbox").join("+1.seg"), b"junk").expect("write");
    {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, unlimited()).expect("store");
        assert_eq!(s.damaged_records(), 1);
        assert_eq!(s.total_usage().0, 3);
        s.delete(&mb(1), &hs[1..2]).expect("delete");
        db.commit().expect("commit");
    }
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    assert_eq!(s.damaged_records(), 0);
    let left: Vec<u64> = s
        .pull(&mb(1), 16)
        .expect("pull")
        .iter()
        .map(|i| i.handle)
        .collect();
    assert_eq!(left, hs[2..]);
}

#[test]
fn a_clean_close_keeps_what_was_not_yet_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    let h = put(&s, &mb(1), 1, 10);
    drop(s);
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    assert_eq!(s.pull(&mb(1), 16).expect("pull")[0].handle, h);
}

#[test]
fn a_deleted_record_is_scrubbed_in_its_file_and_ids_are_written_keyed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    let h = put(&s, &mb(1), 0xa5, 10);
    put(&s, &mb(2), 0x5a, 10);
    db.commit().expect("commit");
    let seg = segments(dir.path()).pop().expect("a segment");
    let bytes = std::fs::read(&seg).expect("read");
    assert!(!bytes.windows(32).any(|w| w == [1; 32] || w == [2; 32]));
    assert!(bytes.windows(64).any(|w| w == [0xa5; 64]));
    assert_eq!(s.delete(&mb(1), &[h]).expect("delete"), 1);
    db.commit().expect("commit");
    let bytes = std::fs::read(&seg).expect("read");
    assert!(!bytes.windows(64).any(|w| w == [0xa5; 64]));
    assert!(bytes.windows(64).any(|w| w == [0x5a; 64]));
    drop(s);
    // A scrubbed slot is a dead slot, not damage.
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    assert_eq!(s.damaged_records(), 0);
    assert_eq!(s.total_usage().0, 1);
}

#[test]
fn records_of_the_earlier_format_open_and_their_deletes_are_scrubbed() {
    use super::format::{RecordHeader, encode_record, handle_of};
    let dir = tempfile::tempdir().expect("tempdir");
    let mailbox_dir = dir.path().join("mailbox");
    std::fs::create_dir_all(&mailbox_dir).expect("mkdir");
    // Version 1: the mailbox id in the clear; one record of it already deleted by a tombstone
    // (which version 1 left on disk).
    let mut seg = Vec::new();
    for slot in 0..2u32 {
        let header = RecordHeader {
            mailbox: mb(7),
            handle: handle_of(1, slot),
            stored_at: 100 + u64::from(slot),
            legacy: false,
        };
        let start = seg.len();
        encode_record(
            &mut seg,
            &header,
            &[slot as u8; 16],
            &[0xc0 + slot as u8; PAYLOAD_SIZE],
        );
        seg[start + 4] = 1;
        let crc = crc32fast::hash(&seg[start..start + RECORD_LEN - 4]);
        seg[start + RECORD_LEN - 4..start + RECORD_LEN].copy_from_slice(&crc.to_be_bytes());
    }
    std::fs::write(mailbox_dir.join("0000000001.seg"), &seg).expect("write");
    let mut log = Vec::new();
    super::format::encode_tombstone(&mut log, handle_of(1, 0));
    std::fs::write(mailbox_dir.join("deleted.log"), &log).expect("write");

    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, unlimited()).expect("store");
    assert_eq!(s.damaged_records(), 0);
    let items = s.pull(&mb(7), 16).expect("pull");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].payload[..], [0xc1; PAYLOAD_SIZE][..]);
    let bytes = std::fs::read(mailbox_dir.join("0000000001.seg")).expect("read");
    assert!(
        !bytes.windows(64).any(|w| w == [0xc0; 64]),
        "scrubbed at open"
    );
    assert_eq!(s.delete(&mb(7), &[items[0].handle]).expect("delete"), 1);
    db.commit().expect("commit");
    assert_eq!(s.total_usage().0, 0);
}

#[test]
fn segments_without_their_id_key_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, unlimited()).expect("store");
        put(&s, &mb(1), 1, 10);
        db.commit().expect("commit");
    }
    std::fs::remove_file(dir.path().join("mailbox").join("id.key")).expect("rm");
    let db = Database::open(dir.path()).expect("db");
    let err = MailboxStore::open(&db, unlimited()).expect_err("refused");
    assert!(err.to_string().contains("id.key"), "{err}");
    assert!(MailboxStore::open(&db, unlimited()).is_err(), "and again");
}

// ----- per-contact capabilities (issue 16, attack 3) -----

fn caps_limits() -> MailboxLimits {
    MailboxLimits {
        quota_items: 10,
        quota_bytes: u64::MAX,
        disk_budget_bytes: u64::MAX,
        first_contact_items: 2,
        first_contact_bytes: u64::MAX,
    }
}

fn register(cap: u8, quota_items: u32) -> spore_protocol::CapabilityOp {
    spore_protocol::CapabilityOp::Register {
        capability: spore_protocol::CapabilityId([cap; 32]),
        quota_items,
        quota_bytes: u64::MAX,
    }
}

fn revoke(cap: u8) -> spore_protocol::CapabilityOp {
    spore_protocol::CapabilityOp::Revoke {
        capability: spore_protocol::CapabilityId([cap; 32]),
    }
}

fn dest(cap: u8, owner: &MailboxId) -> MailboxId {
    spore_protocol::CapabilityId([cap; 32]).destination(owner)
}

fn try_put(s: &MailboxStore, m: &MailboxId, tag: u8) -> Result<u64, Refusal> {
    s.insert(m, &[tag; 16], &[tag; PAYLOAD_SIZE], 100)
        .expect("io")
}

#[test]
fn each_capability_and_first_contact_fill_only_their_own_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, caps_limits()).expect("store");
    let owner = mb(1);
    assert_eq!(
        s.apply_capability_ops(&owner, &[register(10, 3), register(11, 3)])
            .expect("ops"),
        (2, 0)
    );
    // Idempotent: the same ops again change nothing.
    assert_eq!(
        s.apply_capability_ops(&owner, &[register(10, 3), register(11, 3)])
            .expect("ops"),
        (0, 0)
    );
    let (flooder, friend) = (dest(10, &owner), dest(11, &owner));
    for i in 0..3 {
        try_put(&s, &flooder, i).expect("within the capability's quota");
    }
    assert_eq!(try_put(&s, &flooder, 9), Err(Refusal::CapabilityQuotaItems));
    // A stranger through the raw id: only the first-contact share.
    try_put(&s, &owner, 20).expect("first contact");
    try_put(&s, &owner, 21).expect("first contact");
    assert_eq!(
        try_put(&s, &owner, 22),
        Err(Refusal::FirstContactQuotaItems)
    );
    // The friend still gets in.
    for i in 0..3 {
        try_put(&s, &friend, 30 + i).expect("friend's own share");
    }
    assert_eq!(s.mailbox_usage(&owner), (8, 8 * ITEM_BYTES));
    assert_eq!(s.destination_usage(&flooder), (3, 3 * ITEM_BYTES));
    assert_eq!(s.destination_usage(&owner), (2, 2 * ITEM_BYTES));
    // The owner pulls every share, oldest first, and deletes across them.
    let items = s.pull(&owner, 16).expect("pull");
    assert_eq!(items.len(), 8);
    assert!(items.windows(2).all(|w| w[0].handle < w[1].handle));
    let handles: Vec<u64> = items.iter().map(|i| i.handle).collect();
    // Nobody else can pull or delete them: not even through a capability's destination.
    assert!(s.pull(&flooder, 16).expect("pull").is_empty());
    assert_eq!(s.delete(&mb(2), &handles).expect("delete"), 0);
    assert_eq!(s.delete(&owner, &handles).expect("delete"), 8);
    assert_eq!(s.mailbox_usage(&owner), (0, 0));
}

#[test]
fn the_mailbox_total_bounds_all_shares_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, caps_limits()).expect("store");
    let owner = mb(1);
    s.apply_capability_ops(&owner, &[register(10, 8), register(11, 8)])
        .expect("ops");
    for i in 0..8 {
        try_put(&s, &dest(10, &owner), i).expect("stored");
    }
    try_put(&s, &dest(11, &owner), 8).expect("stored");
    try_put(&s, &owner, 9).expect("stored");
    assert_eq!(try_put(&s, &dest(11, &owner), 10), Err(Refusal::QuotaItems));
}

#[test]
fn a_revoked_capability_is_refused_and_stays_revoked_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = mb(1);
    let (old, kept) = (dest(10, &owner), dest(11, &owner));
    {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, caps_limits()).expect("store");
        s.apply_capability_ops(&owner, &[register(10, 3), register(11, 4)])
            .expect("ops");
        try_put(&s, &old, 1).expect("before revocation");
        db.commit().expect("commit");
        assert_eq!(
            s.apply_capability_ops(&owner, &[revoke(10)]).expect("ops"),
            (1, 0)
        );
        assert_eq!(try_put(&s, &old, 2), Err(Refusal::CapabilityRevoked));
        // Revoked stays revoked: registering it again is refused.
        assert_eq!(
            s.apply_capability_ops(&owner, &[register(10, 3)])
                .expect("ops"),
            (0, 1)
        );
        // A never-registered capability can be revoked ahead of time.
        s.apply_capability_ops(&owner, &[revoke(12)]).expect("ops");
        // The store is dropped without a commit: the table was synced by the ops themselves.
        std::mem::forget(s);
    }
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, caps_limits()).expect("store");
    assert_eq!(try_put(&s, &old, 3), Err(Refusal::CapabilityRevoked));
    assert_eq!(
        try_put(&s, &dest(12, &owner), 3),
        Err(Refusal::CapabilityRevoked)
    );
    for i in 0..4 {
        try_put(&s, &kept, 10 + i).expect("the others keep working, quota kept");
    }
    assert_eq!(try_put(&s, &kept, 20), Err(Refusal::CapabilityQuotaItems));
    // The item stored before the revocation is still the owner's.
    assert_eq!(s.pull(&owner, 16).expect("pull").len(), 5);
}

#[test]
fn an_op_only_ever_names_a_share_of_the_registering_mailbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, caps_limits()).expect("store");
    let (owner, thief) = (mb(1), mb(2));
    s.apply_capability_ops(&owner, &[register(10, 3)])
        .expect("ops");
    // The thief learned capability 10 and registers (and revokes) it for itself: that names
    // the thief's own share, never the owner's.
    s.apply_capability_ops(&thief, &[register(10, 3)])
        .expect("ops");
    s.apply_capability_ops(&thief, &[revoke(10)]).expect("ops");
    try_put(&s, &dest(10, &owner), 1).expect("the owner's share is untouched");
    assert_eq!(s.pull(&owner, 16).expect("pull").len(), 1);
    assert!(s.pull(&thief, 16).expect("pull").is_empty());
}

#[test]
fn a_torn_capability_record_is_cut_off_and_the_table_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = mb(1);
    {
        let db = Database::open(dir.path()).expect("db");
        let s = MailboxStore::open(&db, caps_limits()).expect("store");
        s.apply_capability_ops(&owner, &[register(10, 3)])
            .expect("ops");
    }
    let log = dir.path().join("mailbox").join("capabilities.log");
    let mut f = OpenOptions::new().append(true).open(&log).expect("log");
    f.write_all(&[1, 2, 3]).expect("torn append");
    drop(f);
    let db = Database::open(dir.path()).expect("db");
    let s = MailboxStore::open(&db, caps_limits()).expect("store");
    for i in 0..3 {
        try_put(&s, &dest(10, &owner), i).expect("still registered");
    }
    assert_eq!(
        try_put(&s, &dest(10, &owner), 4),
        Err(Refusal::CapabilityQuotaItems)
    );
    s.apply_capability_ops(&owner, &[register(11, 1)])
        .expect("ops after the cut");
    drop(s);
    let db2 = Database::open(dir.path()).expect("db");
    drop(db);
    let s = MailboxStore::open(&db2, caps_limits()).expect("store");
    try_put(&s, &dest(11, &owner), 1).expect("registered after the cut");
    assert_eq!(s.damaged_records(), 0);
}
