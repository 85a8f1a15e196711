//! Two mailbox relays (issue 17): an address names two, senders store every fragment at both,
//! the owner pulls from both and gets each request once, and losing one relay, disk and all,
//! loses nothing.
//!
//! * Both relays alive: each holds a copy of everything sent while the owner was away; the
//!   owner pulls both copies, hands each request out once, and both mailboxes end empty.
//! * One relay is a real `spore-relay` process (the owner's first: its entry relay too),
//!   SIGKILLed with its data folder deleted after a first batch was stored there; a second
//!   batch is sent while it is dead (stored at the other relay, kept in the sender's outbox);
//!   the owner comes back while it is dead and gets every request exactly once from the other
//!   relay; the relay then restarts empty, the second batch's copies owed to it are stored
//!   there too, and the owner pulls them without handing any out again.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use spore_client::Transport;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_relay::RelayKeys;
use spore_testkit::relay_process::{self, KilledOnDrop};
use spore_testkit::{Testnet, TestnetConfig, binaries};

use crate::{fast, init_tracing, receive_distinct, start_client, transaction, wait_until};

/// Requests per batch.
const N: usize = 20;

/// Runs the relay set up in `dir` and waits until it accepts links.
async fn run_edge(bin: &Path, dir: &Path, listen: &str, keys: &RelayKeys) -> KilledOnDrop {
    let child = relay_process::run(bin, dir);
    drop(relay_process::connect(listen, keys, &rand::random()).await);
    child
}

fn assert_each_once(counts: &HashMap<String, usize>, what: &str) {
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: handed out more than once: {twice:?}"
    );
}

/// Nothing more comes in for `quiet`: no request is handed out twice.
async fn assert_quiet(bob: &Transport, quiet: Duration) {
    if let Ok(extra) = tokio::time::timeout(quiet, bob.incoming()).await {
        panic!("a request came again: {:?}", extra.map(|r| r.request.path));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_mailbox_relays_hold_a_copy_and_the_owner_gets_each_request_once() {
    init_tracing();
    let started = Instant::now();
    let net = Testnet::start(TestnetConfig {
        mailbox_relays: 3,
        ..TestnetConfig::default()
    })
    .await
    .unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let bob_key = MailboxKey::generate(&mut rand::rng());
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1], mailboxes[2]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice_key = MailboxKey::generate(&mut rand::rng());
    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 200.0).await;
    for i in 0..N {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    // Every copy acknowledged: the outbox keeps a fragment until both relays stored it.
    assert!(
        wait_until(Duration::from_secs(60), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    let stored = |i: usize| net.relay(i).unwrap().metrics().mailbox_items;
    assert!(
        stored(1) >= N as i64 && stored(2) >= N as i64,
        "each relay holds a copy of each: {} and {}",
        stored(1),
        stored(2)
    );

    let mut config = fast(
        net.client_config_with_key(
            "bob.example",
            mailboxes[1],
            data.path().join("bob"),
            bob_key,
        ),
        50.0,
    );
    config.second_mailbox_relay = Some(mailboxes[2]);
    let bob = Transport::start(config).await.unwrap();
    assert_eq!(bob.address(), bob_address);
    let counts = receive_distinct(&bob, N, Some("alice.example")).await;
    assert_each_once(&counts, "two copies of each");
    assert!(
        wait_until(Duration::from_secs(30), || stored(1) == 0 && stored(2) == 0).await,
        "what bob received is deleted at each relay: {} and {} left",
        stored(1),
        stored(2)
    );
    assert_quiet(&bob, Duration::from_secs(2)).await;
    let stats = bob.stats();
    assert!(
        stats.items_pulled >= 2 * N as u64,
        "bob pulled both copies: {stats:?}"
    );
    eprintln!(
        "two mailbox relays: {N} requests stored twice, pulled {} items, handed out {N} once \
         each, both mailboxes empty, in {:.1} s",
        stats.items_pulled,
        started.elapsed().as_secs_f64()
    );
    alice.shutdown().await;
    bob.shutdown().await;
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_relay_sigkilled_with_its_disk_deleted_loses_nothing() {
    init_tracing();
    let bin = binaries::require(binaries::RELAY);
    let started = Instant::now();
    let mut net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let edge_dir = tempfile::tempdir().unwrap();
    let (listen, keys, descriptor) = relay_process::init_for_testnet(&bin, edge_dir.path(), &net);
    net.publish_with_external(vec![descriptor]).await.unwrap();
    let edge = run_edge(&bin, edge_dir.path(), &listen, &keys).await;

    // Bob's first mailbox relay (his entry relay too) is the process; his second is in the
    // testnet. Alice sends while Bob is offline.
    let data = tempfile::tempdir().unwrap();
    let bob_key = MailboxKey::generate(&mut rand::rng());
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![keys.relay_id(), mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice_key = MailboxKey::generate(&mut rand::rng());
    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 200.0).await;
    // Batch one: stored at both relays before the crash (alice's outbox keeps a fragment
    // until both relays acknowledged it).
    for i in 0..N {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    // The crash: everything so far was stored at both relays; this one's copies are gone.
    edge.sigkill();
    std::fs::remove_dir_all(edge_dir.path().join("data")).unwrap();

    // Batch two, sent while the first relay is dead: stored at the second, delivered, and
    // kept in alice's outbox, because the first relay's copies are still owed.
    for i in N..2 * N {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || alice.stats().messages_delivered
            >= 2 * N as u64)
        .await,
        "batch two was not delivered through the second relay: {:?}",
        alice.stats()
    );
    assert_eq!(
        alice.outbox_len(),
        N,
        "batch two stays in the outbox until the first relay stores it too"
    );

    // Bob comes back while his first relay is dead: everything comes from the second.
    let mut config = fast(
        net.client_config_with_key(
            "bob.example",
            keys.relay_id(),
            data.path().join("bob"),
            bob_key,
        ),
        50.0,
    );
    config.second_mailbox_relay = Some(mailboxes[1]);
    let bob_started = Instant::now();
    let bob = Transport::start(config).await.unwrap();
    let counts = receive_distinct(&bob, 2 * N, Some("alice.example")).await;
    assert_each_once(&counts, "after the crash");
    let took = bob_started.elapsed();

    // The relay comes back with an empty disk (same keys and port). Batch two's copies for it
    // get there (held by the last mix for its dead next hop, or retransmitted by alice) and
    // her outbox drains; bob pulls those copies and hands none of them out again. New mail
    // still arrives once.
    let _edge = run_edge(&bin, edge_dir.path(), &listen, &keys).await;
    assert!(
        wait_until(Duration::from_secs(60), || alice.outbox_len() == 0).await,
        "the restarted relay did not store batch two: {:?}",
        alice.stats()
    );
    alice
        .send(&bob_address, transaction("alice.example", 2 * N))
        .await
        .unwrap();
    let after = receive_distinct(&bob, 1, Some("alice.example")).await;
    assert_eq!(after.get(&(2 * N).to_string()), Some(&1), "{after:?}");
    assert_quiet(&bob, Duration::from_secs(3)).await;
    let (alice_stats, bob_stats) = (alice.stats(), bob.stats());
    eprintln!(
        "mailbox relay SIGKILLed, disk deleted: {} requests sent, each handed out once; the \
         {} sent before bob came back received {:.1} s after he started with his first relay \
         dead; alice: {} copies acked, {} retransmissions; bob \
         pulled {} items; whole test {:.1} s",
        2 * N + 1,
        2 * N,
        took.as_secs_f64(),
        alice_stats.acks,
        alice_stats.retransmissions,
        bob_stats.items_pulled,
        started.elapsed().as_secs_f64()
    );
    alice.shutdown().await;
    bob.shutdown().await;
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_first_mailbox_relay_is_down_receives_through_the_second() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use spore_sidecar::{Sidecar, SidecarConfig};
    use spore_testkit::{SidecarNode, StubHomeserver};

    init_tracing();
    let mut net = Testnet::start(TestnetConfig {
        mailbox_relays: 3,
        ..TestnetConfig::default()
    })
    .await
    .unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let (alice_hs, bob_hs) = (
        StubHomeserver::start().await.unwrap(),
        StubHomeserver::start().await.unwrap(),
    );
    let (alice_url, bob_url) = (alice_hs.url(), bob_hs.url());
    // Bob's sidecar names two mailbox relays; the address it publishes names both.
    let bob_node = SidecarNode {
        second_mailbox_relay: Some(mailboxes[2]),
        ..SidecarNode::new("bob.example", mailboxes[1], &bob_key, &bob_url)
    };
    let bob_config = SidecarConfig::load(
        &net.write_sidecar_config(&data.path().join("bob"), &bob_node)
            .unwrap(),
    )
    .unwrap();
    let bob_address = bob_config.address().unwrap();
    assert_eq!(bob_address.mailbox_relays, [mailboxes[1], mailboxes[2]]);
    let alice_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[0]],
        mailbox_key: alice_key.public().to_bytes(),
    };
    let peers = [("bob.example", &bob_address)];
    let alice_node = SidecarNode {
        peers: &peers,
        ..SidecarNode::new("alice.example", mailboxes[0], &alice_key, &alice_url)
    };
    let alice = Sidecar::start(
        SidecarConfig::load(
            &net.write_sidecar_config(&data.path().join("alice"), &alice_node)
                .unwrap(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    // Bob's first relay goes away before anything is sent.
    net.stop_relay(1).await.unwrap();
    let bob_peers = [("alice.example", &alice_address)];
    let bob_node = SidecarNode {
        peers: &bob_peers,
        ..bob_node
    };
    let bob = Sidecar::start(
        SidecarConfig::load(
            &net.write_sidecar_config(&data.path().join("bob"), &bob_node)
                .unwrap(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(bob.transport().address(), bob_address);

    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for txn in 0..3 {
        let send = http::Request::put(format!(
            "http://{}/_matrix/federation/v1/send/txn-{txn}",
            alice.local_addr()
        ))
        .header("Host", "bob.example")
        .header("Authorization", "X-Matrix origin=\"alice.example\"")
        .body(Full::new(Bytes::from_static(br#"{"pdus":[],"edus":[]}"#)))
        .unwrap();
        assert_eq!(http.request(send).await.unwrap().status(), 200);
    }
    assert!(
        wait_until(Duration::from_secs(60), || bob_hs.received().len() >= 3).await,
        "bob's homeserver got {} of 3",
        bob_hs.received().len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut paths: Vec<String> = bob_hs.received().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        (0..3)
            .map(|t| format!("/_matrix/federation/v1/send/txn-{t}"))
            .collect::<Vec<_>>(),
        "each transaction once, through the second relay"
    );
    alice.shutdown().await;
    bob.shutdown().await;
}
