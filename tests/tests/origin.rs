//! Issue 16, attack 1: a Spore peer claiming another server's name. Every fragment's seal
//! authenticates its sender's mailbox key, the client dedups on it, and the receiving sidecar
//! binds each server name to one sender key; so an impostor (a real client transport with its
//! own mailbox, its bundles saying `origin = alice.example`) is refused and counted, and its
//! forged `(origin, txnId)`, sent first, does not suppress Alice's real one.

use std::time::{Duration, Instant};

use spore_protocol::{FederationRequest, MailboxKey, SporeAddress};
use spore_sidecar::{Sidecar, SidecarConfig};
use spore_testkit::{SidecarNode, StubHomeserver, Testnet, TestnetConfig};

use crate::{init_tracing, start_client, transaction, wait_until, within};

/// Alice's transaction `txn`, with a body that says who really wrote it.
fn marked(txn: usize, by: &str) -> FederationRequest {
    let mut t = transaction("alice.example", txn);
    t.body = format!(r#"{{"origin":"alice.example","written_by":"{by}","pdus":[]}}"#).into_bytes();
    t
}

fn address(relay: spore_protocol::RelayId, key: &MailboxKey) -> SporeAddress {
    SporeAddress {
        capability: None,
        mailbox_relays: vec![relay],
        mailbox_key: key.public().to_bytes(),
    }
}

/// The client alone: two transactions with the same `(origin, txnId)` from two sender keys
/// are two requests, each handed out with the key that sealed it; the impostor's, arriving
/// first, does not swallow Alice's as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_origin_and_txn_id_sent_first_does_not_suppress_the_real_one() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key, mallory_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let (alice_pk, mallory_pk) = (
        alice_key.public().to_bytes(),
        mallory_key.public().to_bytes(),
    );
    let bob_address = address(mailboxes[1], &bob_key);
    let bob = start_client(&net, data.path(), "bob", mailboxes[1], bob_key, 20.0).await;
    // Mallory runs her own mailbox but calls herself alice.example.
    let mallory = start_client(
        &net,
        &data.path().join("mallory"),
        "alice",
        mailboxes[0],
        mallory_key,
        20.0,
    )
    .await;
    mallory
        .send(&bob_address, marked(7, "mallory"))
        .await
        .unwrap();
    let first = within(Duration::from_secs(60), "mallory's request", bob.incoming())
        .await
        .unwrap();
    assert_eq!(
        first.origin, "alice.example",
        "the claim is carried as made"
    );
    assert_eq!(
        first.sender_key, mallory_pk,
        "but the seal says who sent it"
    );
    bob.ack(first.id).await.unwrap();

    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 20.0).await;
    alice.send(&bob_address, marked(7, "alice")).await.unwrap();
    let second = within(Duration::from_secs(60), "alice's request", bob.incoming())
        .await
        .unwrap();
    assert_eq!(second.sender_key, alice_pk);
    assert!(String::from_utf8_lossy(&second.request.body).contains("written_by\":\"alice"));
    bob.ack(second.id).await.unwrap();

    for t in [mallory, alice, bob] {
        t.shutdown().await;
    }
}

/// The whole path: Bob's sidecar pins alice.example to Alice's Spore key at first contact;
/// Mallory's transport then sends a transaction in Alice's name (with a txn id Alice has not
/// used yet): it never reaches Bob's homeserver, leaves the inbox, is counted once, and
/// Alice's own transaction with that txn id is still delivered. A name from the `[peers]`
/// table is bound the same way without any first contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_servers_name_is_refused_and_counted() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let keys: Vec<MailboxKey> = (0..4)
        .map(|_| MailboxKey::generate(&mut rand::rng()))
        .collect();
    let (alice_key, bob_key, mallory_key, carol_key) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    let bob_address = address(mailboxes[1], bob_key);
    let carol_address = address(mailboxes[0], carol_key);
    let bob_hs = StubHomeserver::start().await.unwrap();
    let bob_hs_url = bob_hs.url();
    let node = SidecarNode {
        peers: &[("carol.example", &carol_address)],
        ..SidecarNode::new("bob.example", mailboxes[1], bob_key, &bob_hs_url)
    };
    let config_path = net
        .write_sidecar_config(&data.path().join("bob-sidecar"), &node)
        .unwrap();
    let bob = Sidecar::start(SidecarConfig::load(&config_path).unwrap())
        .await
        .unwrap();
    let delivered = |txn: usize| {
        let path = format!("/_matrix/federation/v1/send/{txn}");
        bob_hs
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<Vec<_>>()
    };

    let alice = start_client(
        &net,
        data.path(),
        "alice",
        mailboxes[0],
        alice_key.clone(),
        20.0,
    )
    .await;
    alice.send(&bob_address, marked(1, "alice")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || delivered(1).len() == 1).await,
        "alice's first transaction is delivered (and pins alice.example to her key)"
    );

    let mallory = start_client(
        &net,
        &data.path().join("mallory"),
        "alice",
        mailboxes[0],
        mallory_key.clone(),
        20.0,
    )
    .await;
    let start = Instant::now();
    mallory
        .send(&bob_address, marked(2, "mallory"))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || bob
            .server_keys()
            .refused_senders()
            == 1
            && bob.transport().inbox_len() == 0)
        .await,
        "mallory's request is refused and leaves the inbox (refused {})",
        bob.server_keys().refused_senders()
    );
    let refused_after = start.elapsed();

    alice.send(&bob_address, marked(2, "alice")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || delivered(2).len() == 1).await,
        "alice's transaction 2 is delivered although mallory's came first"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let two = delivered(2);
    assert_eq!(two.len(), 1, "{two:?}");
    assert!(two[0].contains("written_by\":\"alice"), "{two:?}");

    // A configured name: refused from Mallory with no first contact at all.
    let mallory_as_carol = start_client(
        &net,
        &data.path().join("mallory2"),
        "carol",
        mailboxes[0],
        mallory_key.clone(),
        20.0,
    )
    .await;
    mallory_as_carol
        .send(&bob_address, transaction("carol.example", 3))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || bob
            .server_keys()
            .refused_senders()
            == 2
            && bob.transport().inbox_len() == 0)
        .await,
        "a request claiming a configured name from another key is refused"
    );
    assert!(delivered(3).is_empty());
    println!(
        "attack 1: impostor refused {:.1} s after sending; real txn delivered; refused {} of 2 forged",
        refused_after.as_secs_f64(),
        bob.server_keys().refused_senders()
    );

    for t in [mallory, mallory_as_carol, alice] {
        t.shutdown().await;
    }
    bob.shutdown().await;
}
