//! What a network observer sees on a client's link must not depend on whether it is sending.

use std::time::{Duration, Instant};

use spore_client::{RateOverrides, Transport};
use spore_protocol::link::WIRE_FRAME_LEN;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_testkit::{Observer, Testnet, TestnetConfig};

use crate::{init_tracing, transaction};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_has_the_same_frame_sizes_and_poisson_timing_busy_or_idle() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let relay = net.index_of(&mailboxes[0]).unwrap();
    let observer = Observer::start(net.relay_address(relay).unwrap())
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = net.client_config("alice.example", mailboxes[0], data.path().join("a"));
    config.relay_address_override = Some(observer.local_addr().to_string());
    config.rates = RateOverrides {
        lambda_p: Some(40.0),
        lambda_l: Some(10.0),
        lambda_d: Some(10.0),
        mu: Some(1000.0),
        pull_interval: Some(Duration::from_millis(250)),
    };
    let alice = Transport::start(config).await.unwrap();
    // Bob is offline: his mailbox relay stores, acks flow back, nothing else changes.
    let bob = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: MailboxKey::generate(&mut rand::rng()).public().to_bytes(),
    };

    let window = Duration::from_secs(8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_from = Instant::now();
    tokio::time::sleep(window).await;
    let idle = observer.stats_between(idle_from, Instant::now());
    let idle_stats = alice.stats();
    assert_eq!(idle_stats.real_sent, 0);

    // Enough real traffic to keep the payload stream busy for the whole window.
    for i in 0..500 {
        alice
            .send(&bob, transaction("alice.example", i))
            .await
            .unwrap();
    }
    let busy_from = Instant::now();
    tokio::time::sleep(window).await;
    let busy = observer.stats_between(busy_from, Instant::now());
    let busy_stats = alice.stats();
    assert!(
        alice.outbox_len() > 0,
        "the queue ran dry during the window"
    );
    let real = busy_stats.real_sent - idle_stats.real_sent;
    let drops = busy_stats.drop_sent - idle_stats.drop_sent;
    eprintln!(
        "idle {idle:?}\nbusy {busy:?}\nreal packets in busy window {real}, drop cover {drops}"
    );

    assert!(real > 200, "real traffic was sent ({real})");
    assert!(
        observer.records().iter().all(|r| r.len == WIRE_FRAME_LEN),
        "every record has the same size"
    );
    // Expected: 60 packets/s (40 + 10 + 10) plus one pull request and one delete per 250 ms.
    for s in [idle, busy] {
        assert!((s.rate - 68.0).abs() < 12.0, "rate {}", s.rate);
        assert!(
            (s.cv - 1.0).abs() < 0.3,
            "coefficient of variation {}",
            s.cv
        );
    }
    assert!(
        (idle.rate - busy.rate).abs() / idle.rate < 0.2,
        "rates differ: idle {} busy {}",
        idle.rate,
        busy.rate
    );
    assert!(
        (idle.cv - busy.cv).abs() < 0.15,
        "cv differs: idle {} busy {}",
        idle.cv,
        busy.cv
    );
    alice.shutdown().await;
}
