//! Route choice (issues 15 and 19): a client whose loops through one mix never come back stops
//! routing through it, so a dead or dropping mix costs a few retransmissions, not half the
//! traffic.

use std::time::Duration;

use spore_client::TransportStats;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_testkit::{Testnet, TestnetConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::{init_tracing, receive_distinct, start_client, transaction, wait_until};

/// Loops lost per loop sent, and retransmissions per real packet sent, between two snapshots.
fn losses(from: &TransportStats, to: &TransportStats) -> (f64, f64) {
    let ratio = |a: u64, b: u64| a as f64 / (b as f64).max(1.0);
    (
        ratio(
            to.loops_lost - from.loops_lost,
            to.loops_sent - from.loops_sent,
        ),
        ratio(
            to.retransmissions - from.retransmissions,
            to.real_sent - from.real_sent,
        ),
    )
}

/// A listener that accepts links and reads and discards everything sent on them.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_routes_around_a_layer_1_mix_that_drops_everything() {
    init_tracing();
    let mut net = Testnet::start(TestnetConfig {
        mixes_per_layer: 2,
        ..TestnetConfig::default()
    })
    .await
    .unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let bob_key = MailboxKey::generate(&mut rand::rng());
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice_key = MailboxKey::generate(&mut rand::rng());
    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 20.0).await;
    let bob = start_client(&net, data.path(), "bob", mailboxes[1], bob_key, 20.0).await;

    // One of the two layer-1 mixes drops everything: it is published at a listener that
    // reads and discards (an n-1 style dropper whose links come up), and stopped, so its
    // neighbours' links to it break and reconnect there.
    let dropper = net.mixes_in_layer(1)[0];
    net.publish_relay_at(dropper, &black_hole().await)
        .await
        .unwrap();
    net.stop_relay(dropper).await.unwrap();
    let start = alice.stats();
    let stopped_at = std::time::Instant::now();

    // Alice's loops (5/s, half of them through the dropping mix) implicate it.
    assert!(
        wait_until(Duration::from_secs(120), || alice
            .stats()
            .relays_quarantined
            >= 1)
        .await,
        "the dropping mix was not quarantined: {:?}",
        alice.stats()
    );
    let noticed = alice.stats();
    let took = stopped_at.elapsed();
    assert_eq!(
        noticed.relays_quarantined, 1,
        "only the dropping mix: {noticed:?}"
    );
    assert_eq!(noticed.relays_in_quarantine, 1);
    let (loop_loss_before, _) = losses(&start, &noticed);
    // Packets built before the quarantine (the build threads' stock) drain first.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // From now on messages go through and new routes avoid the dropping mix: a few loops and
    // retransmissions at most (late ones on a loaded machine), where routes chosen blindly
    // would lose half.
    let before = alice.stats();
    let n = 60;
    for i in 0..n {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    let counts = receive_distinct(&bob, n, Some("alice.example")).await;
    assert_eq!(counts.len(), n);
    assert!(
        wait_until(Duration::from_secs(60), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    tokio::time::sleep(Duration::from_secs(10)).await; // the last loops resolve
    let after = alice.stats();
    let (loop_loss, retransmitted) = losses(&before, &after);
    eprintln!(
        "quarantined after {took:.1?}; loop loss before the quarantine {loop_loss_before:.2}, \
         after {loop_loss:.3}; \
         retransmissions per real packet after {retransmitted:.3}; {after:?}"
    );
    assert!(
        loop_loss_before > 0.2,
        "the dropping mix did drop: {loop_loss_before}"
    );
    assert!(after.loops_sent - before.loops_sent > 50, "{after:?}");
    assert!(
        loop_loss < 0.25,
        "loops still cross the dropping mix: {loop_loss}"
    );
    assert!(
        retransmitted < 0.25,
        "real packets still cross the dropping mix: {retransmitted}"
    );
    assert_eq!(after.messages_failed, 0);

    alice.shutdown().await;
    bob.shutdown().await;
    net.shutdown().await.unwrap();
}
