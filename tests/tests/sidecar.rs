//! The sidecar between two stub homeservers: outbound over local HTTP, inbound delivered until
//! the homeserver answers 2xx, exactly once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use spore_sidecar::{DeadLetters, LocalHomeserver, Sidecar, SidecarConfig};
use spore_testkit::{SidecarNode, StubHomeserver, Testnet, TestnetConfig};

use crate::{init_tracing, wait_until};

fn write_config(
    dir: &std::path::Path,
    net: &Testnet,
    name: &str,
    relay: RelayId,
    key: &MailboxKey,
    homeserver: &str,
    peers: &[(&str, &SporeAddress)],
) -> SidecarConfig {
    let node = SidecarNode {
        peers,
        ..SidecarNode::new(name, relay, key, homeserver)
    };
    let path = net.write_sidecar_config(dir, &node).unwrap();
    SidecarConfig::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_delivers_a_transaction_once_after_homeserver_errors_and_proxies_queries() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let alice_address = crate::address_at(mailboxes[0], &alice_key);
    let bob_address = crate::address_at(mailboxes[1], &bob_key);
    let alice_hs = StubHomeserver::start().await.unwrap();
    let bob_hs = StubHomeserver::start().await.unwrap();
    bob_hs.fail_next(2);
    let alice = Sidecar::start(write_config(
        &data.path().join("alice"),
        &net,
        "alice.example",
        mailboxes[0],
        &alice_key,
        &alice_hs.url(),
        &[("bob.example", &bob_address)],
    ))
    .await
    .unwrap();
    let bob = Sidecar::start(write_config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &bob_key,
        &bob_hs.url(),
        &[("alice.example", &alice_address)],
    ))
    .await
    .unwrap();

    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = http::Request::put(format!(
        "http://{}/_matrix/federation/v1/send/txn-1",
        alice.local_addr()
    ))
    .header("Host", "bob.example")
    .header("Authorization", "X-Matrix origin=\"alice.example\"")
    .body(Full::new(Bytes::from_static(br#"{"pdus":[],"edus":[]}"#)))
    .unwrap();
    let resp = http.request(send).await.unwrap();
    assert_eq!(resp.status(), 200);

    assert!(
        wait_until(Duration::from_secs(30), || bob.transport().inbox_len() == 0
            && bob_hs.received().len() >= 3)
        .await,
        "delivered after two failures: {:?}",
        bob_hs.received().len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = bob_hs.received();
    assert_eq!(
        got.len(),
        3,
        "two refused attempts and one success, nothing more"
    );
    assert!(
        got.iter()
            .all(|r| r.path == "/_matrix/federation/v1/send/txn-1")
    );
    assert!(
        got[2]
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("authorization") && v.contains("alice.example"))
    );

    // A query goes out with reply SURBs; Bob's homeserver answers; Alice's caller gets it.
    let query = http::Request::get(format!(
        "http://{}/_matrix/federation/v1/query/directory?room_alias=%23a",
        alice.local_addr()
    ))
    .header("Host", "bob.example")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(40), http.request(query))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("/_matrix/federation/v1/query/directory"));
    assert!(alice_hs.received().is_empty());

    alice.shutdown().await;
    bob.shutdown().await;
}

/// Sends a transaction `txn` from `origin` through `sidecar`'s outbound endpoint to
/// bob.example.
async fn send_transaction(sidecar: &Sidecar, origin: &str, txn: &str) {
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = http::Request::put(format!(
        "http://{}/_matrix/federation/v1/send/{txn}",
        sidecar.local_addr()
    ))
    .header("Host", "bob.example")
    .header("Authorization", format!("X-Matrix origin=\"{origin}\""))
    .body(Full::new(Bytes::from_static(br#"{"pdus":[],"edus":[]}"#)))
    .unwrap();
    assert_eq!(http.request(send).await.unwrap().status(), 200);
}

fn received_path(hs: &StubHomeserver, path: &str) -> usize {
    hs.received().iter().filter(|r| r.path == path).count()
}

/// Issue 16: one origin's refused transaction neither wedges the inbox nor delays another
/// origin; it ends in the dead-letter store (acked from the inbox, counted) and `retry`
/// delivers it once the homeserver accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_origin_is_dead_lettered_without_delaying_other_origins() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let keys: Vec<MailboxKey> = (0..3)
        .map(|_| MailboxKey::generate(&mut rand::rng()))
        .collect();
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: keys[1].public().to_bytes(),
    };
    let bob_hs = StubHomeserver::start().await.unwrap();
    let other_hs = StubHomeserver::start().await.unwrap();
    // Carol's transactions: first refused as if overloaded (transient, retried), then for good.
    bob_hs.refuse_origin("carol.example", 503);
    let mut bob_config = write_config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &keys[1],
        &bob_hs.url(),
        &[],
    );
    bob_config.dead_letter_after = 2;
    let bob_data = bob_config.data_dir.clone();
    let bob = Sidecar::start(bob_config).await.unwrap();
    let mut senders = Vec::new();
    for (i, name) in [(0, "alice.example"), (2, "carol.example")] {
        senders.push(
            Sidecar::start(write_config(
                &data.path().join(name),
                &net,
                name,
                mailboxes[0],
                &keys[i],
                &other_hs.url(),
                &[("bob.example", &bob_address)],
            ))
            .await
            .unwrap(),
        );
    }
    let (alice, carol) = (&senders[0], &senders[1]);

    let carol_path = "/_matrix/federation/v1/send/carol-1";
    let alice_path = "/_matrix/federation/v1/send/alice-1";
    send_transaction(carol, "carol.example", "carol-1").await;
    assert!(
        wait_until(Duration::from_secs(60), || received_path(
            &bob_hs, carol_path
        ) >= 2)
        .await,
        "carol's transaction reached bob's homeserver and was retried"
    );
    // Carol's is still being retried; Alice's goes straight through.
    send_transaction(alice, "alice.example", "alice-1").await;
    assert!(
        wait_until(Duration::from_secs(60), || received_path(
            &bob_hs, alice_path
        ) == 1)
        .await,
        "alice's transaction is delivered while carol's is refused"
    );

    // Now refused for good: dead-lettered after 2 refusals, acked, counted.
    bob_hs.refuse_origin("carol.example", 401);
    let store = DeadLetters::in_data_dir(&bob_data);
    assert!(
        wait_until(Duration::from_secs(90), || store.list().unwrap().len() == 1
            && bob.transport().inbox_len() == 0)
        .await,
        "carol's transaction ends in the dead-letter store and leaves the inbox"
    );
    assert_eq!(bob.inbound_counters().dead_lettered(), 1);
    let letter = store.list().unwrap().remove(0);
    assert_eq!(
        (letter.origin.as_str(), letter.status, letter.path.as_str()),
        ("carol.example", 401, carol_path)
    );
    // The operator's view: `spore-sidecar dead-letters list` shows it.
    let bob_config_path = data.path().join("bob").join("sidecar.toml");
    let bin = spore_testkit::binaries::require(spore_testkit::binaries::SIDECAR);
    let listed = std::process::Command::new(&bin)
        .args(["dead-letters", "--config"])
        .arg(&bob_config_path)
        .arg("list")
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&letter.id) && listed.contains("carol.example 401"),
        "{listed}"
    );
    let before = received_path(&bob_hs, carol_path);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        received_path(&bob_hs, carol_path),
        before,
        "no more retries"
    );

    // Retry while still refused: kept. Once the homeserver accepts: delivered and removed.
    let homeserver = LocalHomeserver::new(bob_hs.url(), "bob.example");
    assert!(store.retry(&letter.id, &homeserver).await.is_err());
    assert_eq!(store.list().unwrap().len(), 1);
    bob_hs.accept_all();
    assert_eq!(store.retry(&letter.id, &homeserver).await.unwrap(), 200);
    assert!(store.list().unwrap().is_empty());
    let last = bob_hs.received().pop().unwrap();
    assert_eq!(last.path, carol_path);
    assert!(
        last.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("authorization") && v.contains("carol.example"))
    );

    for s in senders {
        s.shutdown().await;
    }
    bob.shutdown().await;
}

/// Alice's and Bob's keys and addresses, each on its own mailbox relay.
fn two_parties(net: &Testnet) -> ([MailboxKey; 2], [SporeAddress; 2]) {
    let mailboxes = net.mailbox_relays();
    let keys = [
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    ];
    let addresses = [0, 1].map(|i| SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[i]],
        mailbox_key: keys[i].public().to_bytes(),
    });
    (keys, addresses)
}

/// Issue 17, ordered hand-over: 30 transactions sent quickly while Bob's sidecar is down,
/// through mixes that delay each packet by a random 0.5 s on average per hop (so they reach
/// Bob's mailbox thoroughly reordered), reach Bob's homeserver in Alice's send order, with no
/// gap given up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_queued_while_the_receiver_was_down_are_handed_over_in_send_order() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (keys, [_, bob_address]) = two_parties(&net);
    let alice_hs = StubHomeserver::start().await.unwrap();
    let bob_hs = StubHomeserver::start().await.unwrap();
    let mut alice_config = write_config(
        &data.path().join("alice"),
        &net,
        "alice.example",
        mailboxes[0],
        &keys[0],
        &alice_hs.url(),
        &[("bob.example", &bob_address)],
    );
    alice_config.rates.mu = Some(2.0);
    let alice = Sidecar::start(alice_config).await.unwrap();

    const N: usize = 30;
    for i in 0..N {
        send_transaction(&alice, "alice.example", &format!("t{i:02}")).await;
    }
    assert!(
        wait_until(Duration::from_secs(120), || alice.transport().outbox_len()
            == 0)
        .await,
        "all {N} stored at Bob's mailbox relay"
    );

    let bob = Sidecar::start(write_config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &keys[1],
        &bob_hs.url(),
        &[],
    ))
    .await
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || bob_hs.received().len() >= N
            && bob.transport().inbox_len() == 0)
        .await,
        "all delivered: {}",
        bob_hs.received().len()
    );
    let order: Vec<String> = bob_hs
        .received()
        .iter()
        .map(|r| {
            r.path
                .trim_start_matches("/_matrix/federation/v1/send/")
                .to_owned()
        })
        .collect();
    let sent: Vec<String> = (0..N).map(|i| format!("t{i:02}")).collect();
    assert_eq!(order, sent, "handed over in send order");
    assert_eq!(bob.inbound_counters().order_gaps(), 0);

    alice.shutdown().await;
    bob.shutdown().await;
}

/// Issue 17, honest deadlines: a profile query whose caller waits 2 s (the sidecar's
/// `request_timeouts`) gets a 502 when Bob is offline, and is not executed at Bob's
/// homeserver when Bob comes back: its deadline travelled with it, and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_gave_up_is_not_executed_at_the_receiver() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (keys, [_, bob_address]) = two_parties(&net);
    let alice_hs = StubHomeserver::start().await.unwrap();
    let bob_hs = StubHomeserver::start().await.unwrap();
    let mut alice_config = write_config(
        &data.path().join("alice"),
        &net,
        "alice.example",
        mailboxes[0],
        &keys[0],
        &alice_hs.url(),
        &[("bob.example", &bob_address)],
    );
    alice_config.request_timeouts.insert("query".into(), 2);
    let alice = Sidecar::start(alice_config).await.unwrap();

    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let path = "/_matrix/federation/v1/query/profile?user_id=%40b%3Abob.example";
    let query = http::Request::get(format!("http://{}{path}", alice.local_addr()))
        .header("Host", "bob.example")
        .header("Authorization", "X-Matrix origin=\"alice.example\"")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let asked = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), http.request(query))
        .await
        .unwrap()
        .unwrap();
    let waited = asked.elapsed();
    assert_eq!(resp.status(), 502, "nothing answered in the caller's time");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(15),
        "the caller waited its own timeout, {waited:?}"
    );
    assert!(
        wait_until(Duration::from_secs(60), || alice.transport().outbox_len()
            == 0)
        .await,
        "the query is stored at Bob's mailbox relay"
    );

    // Bob returns well within the sidecar-wide 30 s timeout the query would have carried
    // before; a transaction sent after the query shows that Bob's inbox is being read.
    let bob = Sidecar::start(write_config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &keys[1],
        &bob_hs.url(),
        &[],
    ))
    .await
    .unwrap();
    send_transaction(&alice, "alice.example", "after").await;
    let query_path = "/_matrix/federation/v1/query/profile";
    assert!(
        wait_until(Duration::from_secs(60), || {
            bob.inbound_counters().expired_requests() >= 1
                || bob_hs
                    .received()
                    .iter()
                    .any(|r| r.path.starts_with(query_path))
        })
        .await,
        "the query reached Bob's sidecar"
    );
    assert!(
        wait_until(Duration::from_secs(60), || received_path(
            &bob_hs,
            "/_matrix/federation/v1/send/after"
        ) == 1
            && bob.transport().inbox_len() == 0)
        .await
    );
    assert!(
        !bob_hs
            .received()
            .iter()
            .any(|r| r.path.starts_with(query_path)),
        "the expired query was executed at Bob's homeserver"
    );
    assert_eq!(bob.inbound_counters().expired_requests(), 1);

    alice.shutdown().await;
    bob.shutdown().await;
}
