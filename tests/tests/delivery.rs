//! The core promise: everything sent to an offline recipient arrives exactly once, through
//! sender crashes and relay restarts.

use std::time::{Duration, Instant};

use spore_client::Transport;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_testkit::{Testnet, TestnetConfig};

use crate::{fast, init_tracing, receive_distinct, start_client, transaction, wait_until, within};

async fn offline_delivery(n: usize) {
    init_tracing();
    let started = Instant::now();
    let mut net = Testnet::start(TestnetConfig {
        mixes_per_layer: 2,
        ..TestnetConfig::default()
    })
    .await
    .unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let alice_key = MailboxKey::generate(&mut rand::rng());
    let bob_key = MailboxKey::generate(&mut rand::rng());
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice_config = fast(
        net.client_config_with_key(
            "alice.example",
            mailboxes[0],
            data.path().join("alice"),
            alice_key,
        ),
        200.0,
    );

    // First half, then a crash once some (not all) fragments are acknowledged.
    let alice = Transport::start(alice_config.clone()).await.unwrap();
    for i in 0..n / 2 {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(30), || alice.stats().acks
            >= (n / 8) as u64)
        .await
    );
    let before_crash = alice.stats();
    alice.abort().await;
    drop(alice);
    assert!(
        before_crash.acks < (n / 2) as u64,
        "the crash should come before everything was acknowledged ({before_crash:?})"
    );

    // Restart from the same data dir; re-queued fragments go out again.
    let alice = Transport::start(alice_config).await.unwrap();
    for i in n / 2..3 * n / 4 {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    // One mix relay restarts while traffic flows.
    let mix = net.mix_indexes()[0];
    net.restart_relay(mix).await.unwrap();
    for i in 3 * n / 4..n {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(120), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    let sent = alice.stats();

    // Bob comes online only now.
    let bob = start_client(&net, data.path(), "bob", mailboxes[1], bob_key, 50.0).await;
    let counts = receive_distinct(&bob, n, Some("alice.example")).await;
    // Nothing more arrives: every duplicate was dropped before the inbox.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), bob.incoming())
            .await
            .is_err(),
        "an extra request arrived"
    );
    for i in 0..n {
        assert_eq!(counts.get(&i.to_string()), Some(&1), "txn {i}");
    }
    let received = bob.stats();
    eprintln!(
        "{n} transactions in {:.1} s; alice before crash {before_crash:?}; alice after restart {sent:?}; bob {received:?}",
        started.elapsed().as_secs_f64()
    );
    bob.shutdown().await;
    alice.shutdown().await;
    let _ = net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_200_transactions_exactly_once_across_sender_crash_and_mix_restart()
{
    offline_delivery(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 1,000 transactions; run with --ignored"]
async fn offline_recipient_gets_1000_transactions_exactly_once_across_sender_crash_and_mix_restart()
{
    offline_delivery(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_inbound_requests_are_handed_out_again_after_a_restart() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let bob_key = MailboxKey::generate(&mut rand::rng());
    let bob_config = fast(
        net.client_config_with_key(
            "bob.example",
            mailboxes[1],
            data.path().join("bob"),
            bob_key,
        ),
        50.0,
    );
    let bob = Transport::start(bob_config.clone()).await.unwrap();
    let alice = Transport::start(fast(
        net.client_config("alice.example", mailboxes[0], data.path().join("alice")),
        100.0,
    ))
    .await
    .unwrap();
    for i in 0..3 {
        alice
            .send(&bob.address(), transaction("alice.example", i))
            .await
            .unwrap();
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(
            within(Duration::from_secs(30), "inbound", bob.incoming())
                .await
                .unwrap(),
        );
    }
    bob.ack(first[0].id).await.unwrap();
    bob.abort().await;
    drop(bob);
    let bob = Transport::start(bob_config).await.unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(
            within(Duration::from_secs(10), "redelivery", bob.incoming())
                .await
                .unwrap(),
        );
    }
    let mut paths: Vec<String> = again.iter().map(|r| r.request.path.clone()).collect();
    paths.sort();
    let mut expected: Vec<String> = first[1..].iter().map(|r| r.request.path.clone()).collect();
    expected.sort();
    assert_eq!(paths, expected, "exactly the unacked requests come again");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), bob.incoming())
            .await
            .is_err()
    );
    bob.shutdown().await;
    alice.shutdown().await;
}
