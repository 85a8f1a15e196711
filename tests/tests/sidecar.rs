//! The sidecar between two stub homeservers: outbound over local HTTP, inbound delivered until
//! the homeserver answers 2xx, exactly once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use spore_sidecar::{Sidecar, SidecarConfig};
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
    let alice_address = SporeAddress {
        mailbox_relays: vec![mailboxes[0]],
        mailbox_key: alice_key.public().to_bytes(),
    };
    let bob_address = SporeAddress {
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
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
