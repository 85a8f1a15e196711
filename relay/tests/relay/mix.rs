//! Mix role: unwrap, replay protection (also across restarts), delays, key rotation, and the
//! 3-layer network end to end.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use spore_protocol::packet::RouteHop;
use spore_relay::{DirectorySource, ManualClock};

use spore_protocol::MailboxKey;
use spore_testkit::{TestRelay, plain_packet, pull, wait_until};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn replayed_packet_is_dropped() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"once",
    );
    relay.send(&[p.clone(), p.clone()]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().dropped("replay") == 1).await);
    relay.send(&[p]).await;
    assert!(
        wait_until(WAIT, || {
            let m = relay.r().metrics();
            m.dropped("replay") == 2 && m.packets_stored == 1
        })
        .await
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn replayed_packet_is_dropped_after_restart() {
    let mut relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    // A forwarding hop and a final hop: both must remember.
    let p = plain_packet(
        &[relay.hop(), relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO, Duration::ZERO],
        b"once",
    );
    relay.send(std::slice::from_ref(&p)).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);
    relay.restart().await;
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().dropped("replay") == 1).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.r().metrics().packets_stored, 0);
    let mut link = relay.link(&owner.secret_bytes()).await;
    assert_eq!(
        pull(&mut link).await.len(),
        1,
        "the original is still stored"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn packets_are_held_for_their_header_delay() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop(), relay.hop(), relay.hop()],
        owner.mailbox_id(),
        &[
            Duration::from_millis(300),
            Duration::from_millis(300),
            Duration::ZERO,
        ],
        b"slow",
    );
    let t0 = Instant::now();
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn delay_above_the_maximum_is_refused() {
    let relay = TestRelay::start_with(|c| c.mix.max_delay_ms = 1_000).await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop(), relay.hop()],
        owner.mailbox_id(),
        &[Duration::from_secs(5), Duration::ZERO],
        b"x",
    );
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().dropped("delay_too_long") == 1).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn previous_epoch_key_is_accepted_only_during_the_grace_window() {
    // Epochs of 100 s, 10 s grace; start 50 s into epoch 10^7.
    let start = UNIX_EPOCH + Duration::from_secs(100 * 10_000_000 + 50);
    let clock = ManualClock::new(start);
    let relay = TestRelay::start_full(
        |c| {
            c.mix.epoch_length_secs = 100;
            c.mix.grace_secs = 10;
        },
        DirectorySource::None,
        Arc::new(clock.clone()),
    )
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let old_hop = relay.hop();
    let early = plain_packet(&[old_hop], owner.mailbox_id(), &[Duration::ZERO], b"early");
    let late = plain_packet(&[old_hop], owner.mailbox_id(), &[Duration::ZERO], b"late");
    let next_hop = RouteHop {
        id: relay.keys.relay_id(),
        sphinx_key: relay.keys.sphinx_public(relay.epoch() + 1),
    };
    let ahead = plain_packet(&[next_hop], owner.mailbox_id(), &[Duration::ZERO], b"ahead");

    // 55 s later: 5 s into the next epoch, inside the grace window.
    clock.advance(Duration::from_secs(55));
    relay.send(&[early, ahead]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 2).await);
    // 20 s into the epoch: the old key is gone.
    clock.advance(Duration::from_secs(15));
    relay.send(&[late]).await;
    assert!(
        wait_until(WAIT, || relay.r().metrics().dropped("bad_mac") == 1).await,
        "{:?}",
        relay.r().metrics()
    );
    assert_eq!(relay.r().metrics().packets_stored, 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn many_packets_through_one_relay() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let n = 300;
    let packets: Vec<_> = (0..n)
        .map(|i: u32| {
            plain_packet(
                &[relay.hop(), relay.hop(), relay.hop()],
                owner.mailbox_id(),
                &[Duration::ZERO; 3],
                &i.to_be_bytes(),
            )
        })
        .collect();
    relay.send(&packets).await;
    assert!(
        wait_until(Duration::from_secs(30), || relay
            .r()
            .metrics()
            .packets_stored
            == u64::from(n))
        .await,
        "{:?}",
        relay.r().metrics()
    );
    assert_eq!(relay.r().metrics().dropped_total(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn replay_tags_are_dropped_with_their_expired_key_epoch() {
    let start = UNIX_EPOCH + Duration::from_secs(100 * 10_000_000 + 50);
    let clock = ManualClock::new(start);
    let relay = TestRelay::start_full(
        |c| {
            c.mix.epoch_length_secs = 100;
            c.mix.grace_secs = 10;
            c.directory.refresh_secs = 1;
        },
        DirectorySource::None,
        Arc::new(clock.clone()),
    )
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(&[relay.hop()], owner.mailbox_id(), &[Duration::ZERO], b"x");
    relay.send(&[p]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().replay_tags == 1).await);
    // Into the next epoch, past the grace window: the old key and its tags are gone.
    clock.advance(Duration::from_secs(75));
    assert!(
        wait_until(WAIT, || relay.r().metrics().replay_tags == 0).await,
        "{:?}",
        relay.r().metrics()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn overload_drops_at_the_bounded_queue_instead_of_growing() {
    let relay = TestRelay::start_with(|c| {
        c.limits.unwrap_queue = 8;
        c.mix.workers = 1;
    })
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let n = 400u64;
    let packets: Vec<_> = (0..n)
        .map(|i| {
            plain_packet(
                &[relay.hop()],
                owner.mailbox_id(),
                &[Duration::ZERO],
                &i.to_be_bytes(),
            )
        })
        .collect();
    relay.send(&packets).await;
    assert!(
        wait_until(WAIT, || {
            let m = relay.r().metrics();
            m.packets_stored + m.dropped("unwrap_queue_full") == n
        })
        .await,
        "{:?}",
        relay.r().metrics()
    );
    let m = relay.r().metrics();
    assert!(m.dropped("unwrap_queue_full") > 0, "{m:?}");
    assert!(m.unwrap_queue <= 8);
    relay.shutdown().await;
}
