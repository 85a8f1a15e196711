//! Mailbox role: durable store, owner-only pulls, deletes, quotas, retention.

use std::sync::Arc;
use std::time::Duration;

use spore_protocol::MailboxId;
use spore_relay::{DirectorySource, ManualClock};

use spore_protocol::MailboxKey;
use spore_testkit::{TestRelay, acked_packet, delete, plain_packet, pull, wait_until};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn stored_packet_is_pulled_by_its_owner_and_deleted_on_ack() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"hello",
    );
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);

    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    assert_eq!(items.len(), 1);
    let plain = spore_protocol::packet::open_final_payload(&items[0].payload[..]).unwrap();
    assert_eq!(plain, b"hello");
    // Pulling again without a delete returns the same item: nothing is lost by reading.
    let again = pull(&mut link).await;
    assert_eq!(again, items);
    assert_eq!(delete(&mut link, vec![items[0].handle]).await, 1);
    assert!(pull(&mut link).await.is_empty());
    assert_eq!(relay.r().metrics().items_deleted, 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn pull_by_a_key_that_does_not_own_the_mailbox_gets_nothing() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"secret",
    );
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);

    let intruder = MailboxKey::generate(&mut rand::rng());
    let mut link = relay.link(&intruder.secret_bytes()).await;
    assert!(
        pull(&mut link).await.is_empty(),
        "intruder sees dummies only"
    );
    // Guessing handles does not delete anyone else's items.
    assert_eq!(delete(&mut link, (0..128).collect()).await, 0);

    let mut owner_link = relay.link(&owner.secret_bytes()).await;
    assert_eq!(pull(&mut owner_link).await.len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn interrupted_pull_loses_nothing() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let packets: Vec<_> = (0..20u8)
        .map(|i| {
            plain_packet(
                &[relay.hop()],
                owner.mailbox_id(),
                &[Duration::ZERO],
                &[i; 8],
            )
        })
        .collect();
    relay.send(&packets).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 20).await);

    // Ask for a pull and hang up before reading the answer.
    {
        let mut link = relay.link(&owner.secret_bytes()).await;
        link.send(&spore_protocol::link::Frame::PullRequest)
            .await
            .unwrap();
    }
    let mut link = relay.link(&owner.secret_bytes()).await;
    let mut seen = Vec::new();
    loop {
        let items = pull(&mut link).await;
        if items.is_empty() {
            break;
        }
        // Oldest first.
        assert!(items.windows(2).all(|w| w[0].handle < w[1].handle));
        let handles: Vec<u64> = items.iter().map(|i| i.handle).collect();
        seen.extend(
            items
                .iter()
                .map(|i| spore_protocol::packet::open_final_payload(&i.payload[..]).unwrap()),
        );
        assert_eq!(
            delete(&mut link, handles.clone()).await as usize,
            handles.len()
        );
    }
    seen.sort();
    let expected: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 8]).collect();
    assert_eq!(seen, expected);
    relay.shutdown().await;
}

#[tokio::test]
async fn full_mailbox_refuses_new_packets_and_keeps_stored_ones() {
    let relay = TestRelay::start_with(|c| c.mailbox.quota_items = 3).await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let other = MailboxKey::generate(&mut rand::rng());
    let packets: Vec<_> = (0..5u8)
        .map(|i| {
            plain_packet(
                &[relay.hop()],
                owner.mailbox_id(),
                &[Duration::ZERO],
                &[i; 4],
            )
        })
        .collect();
    relay.send(&packets).await;
    assert!(
        wait_until(WAIT, || {
            let m = relay.r().metrics();
            m.packets_stored == 3 && m.dropped("mailbox_quota_items") == 2
        })
        .await,
        "{:?}",
        relay.r().metrics()
    );
    // Another mailbox still has room.
    let p = plain_packet(&[relay.hop()], other.mailbox_id(), &[Duration::ZERO], b"x");
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 4).await);

    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    assert_eq!(items.len(), 3);
    for item in &items {
        let plain = spore_protocol::packet::open_final_payload(&item.payload[..]).unwrap();
        assert_eq!(plain.len(), 4, "stored items are intact");
    }
    // Room again after a delete.
    assert_eq!(delete(&mut link, vec![items[0].handle]).await, 1);
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"late",
    );
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 5).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn byte_quota_and_disk_budget_refuse_with_their_reason() {
    let relay = TestRelay::start_with(|c| {
        c.mailbox.quota_bytes = 2 * 1040;
        c.mailbox.disk_budget_bytes = 3 * 1040;
    })
    .await;
    let a = MailboxKey::generate(&mut rand::rng());
    let b = MailboxKey::generate(&mut rand::rng());
    let mut packets: Vec<_> = (0..3u8)
        .map(|i| plain_packet(&[relay.hop()], a.mailbox_id(), &[Duration::ZERO], &[i]))
        .collect();
    relay.send(&packets).await;
    assert!(
        wait_until(WAIT, || relay.r().metrics().dropped("mailbox_quota_bytes")
            == 1)
        .await
    );
    packets = (0..2u8)
        .map(|i| plain_packet(&[relay.hop()], b.mailbox_id(), &[Duration::ZERO], &[i]))
        .collect();
    relay.send(&packets).await;
    assert!(
        wait_until(WAIT, || {
            let m = relay.r().metrics();
            m.dropped("disk_budget") == 1 && m.packets_stored == 3
        })
        .await
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn retention_deletes_items_older_than_the_limit() {
    let clock = ManualClock::starting_now();
    let relay = TestRelay::start_full(
        |c| c.mailbox.retention_secs = 7 * 24 * 3600,
        DirectorySource::None,
        Arc::new(clock.clone()),
    )
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let old = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"old",
    );
    relay.send(&[old]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);

    clock.advance(Duration::from_secs(6 * 24 * 3600));
    let young = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"young",
    );
    relay.send(&[young]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 2).await);

    assert_eq!(
        relay.r().sweep_now().await.unwrap(),
        0,
        "nothing is 7 days old yet"
    );
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    assert_eq!(relay.r().sweep_now().await.unwrap(), 1);
    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        spore_protocol::packet::open_final_payload(&items[0].payload[..]).unwrap(),
        b"young"
    );
    assert_eq!(relay.r().mailbox_usage(&owner.mailbox_id()).0, 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn cover_for_the_drop_mailbox_is_discarded() {
    let relay = TestRelay::start().await;
    let p = plain_packet(&[relay.hop()], MailboxId::DROP, &[Duration::ZERO], b"cover");
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().cover_received == 1).await);
    assert_eq!(relay.r().metrics().packets_stored, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn surb_ack_is_released_after_the_store() {
    let relay = TestRelay::start().await;
    let recipient = MailboxKey::generate(&mut rand::rng());
    let sender = MailboxKey::generate(&mut rand::rng());
    let (p, ack_id) = acked_packet(
        &[relay.hop(), relay.hop()],
        recipient.mailbox_id(),
        &[relay.hop()],
        sender.mailbox_id(),
    );
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 2).await);
    assert_eq!(relay.r().metrics().acks_sent, 1);
    let mut link = relay.link(&sender.secret_bytes()).await;
    let acks = pull(&mut link).await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].surb_id, ack_id);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_damaged_record_is_skipped_counted_and_shown_in_the_metrics() {
    let mut relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let packets: Vec<_> = [b"first", b"other"]
        .iter()
        .map(|body| plain_packet(&[relay.hop()], owner.mailbox_id(), &[Duration::ZERO], *body))
        .collect();
    relay.send(&packets).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 2).await);
    assert_eq!(relay.r().metrics().mailbox_damaged_records, 0);

    // Flip one payload byte of the first record on disk while the relay is down.
    relay
        .restart_with(|data| {
            let mut segments: Vec<_> = std::fs::read_dir(data.join("mailbox"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect();
            segments.sort();
            let first = segments.first().expect("a segment file");
            let mut bytes = std::fs::read(first).unwrap();
            bytes[500] ^= 0xff;
            std::fs::write(first, bytes).unwrap();
        })
        .await;

    assert!(
        wait_until(WAIT, || relay.r().metrics().mailbox_damaged_records == 1).await,
        "the gauge shows the damaged record"
    );
    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    // Which of the two was written first depends on the workers; the other one is intact.
    assert_eq!(
        items.len(),
        1,
        "the damaged record is skipped, the other kept"
    );
    let kept = spore_protocol::packet::open_final_payload(&items[0].payload[..]).unwrap();
    assert!(kept == b"first" || kept == b"other");
    relay.shutdown().await;
}

/// Every file under `dir` (recursively), with its bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_deleted_payload_leaves_no_trace_on_disk_and_mailbox_ids_are_keyed() {
    let mut relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let keep = MailboxKey::generate(&mut rand::rng());
    // A sealed payload looks random: so does this one.
    let sealed_message: Vec<u8> = (0..512).map(|_| rand::random::<u8>()).collect();
    let gone = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        &sealed_message,
    );
    let other = plain_packet(&[relay.hop()], keep.mailbox_id(), &[Duration::ZERO], b"k");
    relay.send(&[gone, other]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 2).await);
    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    assert_eq!(items.len(), 1);
    let sealed = items[0].payload.clone();
    assert_eq!(delete(&mut link, vec![items[0].handle]).await, 1);
    drop(link);
    // A graceful stop: every file is closed and synced, as a seized disk would be read.
    relay
        .relay
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("graceful shutdown");

    // Every 32-byte window of the stored payload that is its own: the Sphinx payload encoding's
    // zero prefix and its padding (0x01, then zeros) are the same in every payload, and
    // preallocated files are zeros, so windows of fewer than 8 distinct bytes say nothing.
    let windows: std::collections::HashSet<&[u8]> = sealed
        .windows(32)
        .filter(|w| w.iter().collect::<std::collections::HashSet<_>>().len() >= 8)
        .collect();
    assert!(windows.len() > 400);
    let ids = [owner.mailbox_id(), keep.mailbox_id()];
    let files = files_under(&relay.config.data_dir);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        if let Some(at) = bytes.windows(32).position(|w| windows.contains(w)) {
            panic!("{} holds payload bytes at offset {at}", path.display());
        }
        for id in &ids {
            assert!(
                !bytes.windows(32).any(|w| w == id.as_bytes()),
                "{} holds a mailbox id in the clear",
                path.display()
            );
        }
    }
    // The item that was not deleted is still there after a restart.
    relay.restart().await;
    let mut link = relay.link(&keep.secret_bytes()).await;
    assert_eq!(pull(&mut link).await.len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn every_file_the_relay_writes_is_0600_and_every_folder_0700() {
    use std::os::unix::fs::PermissionsExt;
    let mut relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(&[relay.hop()], owner.mailbox_id(), &[Duration::ZERO], b"x");
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);
    relay.restart().await;
    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    assert_eq!(delete(&mut link, vec![items[0].handle]).await, 1);
    drop(link);
    relay
        .relay
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("graceful shutdown");
    let mut todo = vec![relay.config.data_dir.clone()];
    let mut files = 0;
    while let Some(d) = todo.pop() {
        let mode = std::fs::metadata(&d).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files += 1;
                let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
    }
    assert!(
        files > 2,
        "the mailbox store, its id key and more were written"
    );
}
