//! Issue 17, "Peers without a table": only the side that starts a conversation needs the other
//! in its `[peers]` table. Alice's sidecar lists Bob; Bob's lists nobody. Before first contact,
//! Bob's homeserver sending to Alice gets a 502 that says how to add her; after Alice's first
//! authenticated bundle (her sender key bound to alice.example, her server keys verified),
//! Bob's sidecar has learned her Spore address and sends to her with no configuration, also
//! after it restarts. A peer with another Spore key claiming alice.example (and naming its
//! own address) does not move it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use spore_sidecar::{PeerSource, Sidecar, SidecarConfig, canonical_json, unix_ms};
use spore_testkit::relay_process::free_port;
use spore_testkit::{SidecarNode, StubHomeserver, Testnet, TestnetConfig};

use crate::{https_proxy, init_tracing, start_client, transaction, wait_until};

/// `server`'s self-signed key response, signed by a key made from `seed`.
fn key_response(server: &str, seed: u8) -> Vec<u8> {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let mut v = serde_json::json!({
        "server_name": server,
        "valid_until_ts": unix_ms() + 3_600_000,
        "old_verify_keys": {},
        "verify_keys": {"ed25519:a": {"key": STANDARD_NO_PAD.encode(sk.verifying_key().as_bytes())}},
    });
    let mut msg = String::new();
    canonical_json(&v, &mut msg);
    let sig = STANDARD_NO_PAD.encode(sk.sign(msg.as_bytes()).to_bytes());
    v["signatures"] = serde_json::json!({ server: {"ed25519:a": sig} });
    serde_json::to_vec(&v).unwrap()
}

/// A sidecar config, with the HTTPS proxy for the homeserver on `https_proxy`.
#[allow(clippy::too_many_arguments)] // one sidecar's settings, each needed
fn config(
    dir: &std::path::Path,
    net: &Testnet,
    name: &str,
    relay: RelayId,
    key: &MailboxKey,
    homeserver: &str,
    peers: &[(&str, &SporeAddress)],
    https_proxy: Option<&str>,
) -> SidecarConfig {
    let node = SidecarNode {
        peers,
        https_proxy_listen: https_proxy,
        ..SidecarNode::new(name, relay, key, homeserver)
    };
    SidecarConfig::load(&net.write_sidecar_config(dir, &node).unwrap()).unwrap()
}

/// Starts `config`'s sidecar with its homeserver's key response attached to what it sends
/// (what the HTTPS proxy does with the homeserver's own keys).
async fn start(config: SidecarConfig, keys: Vec<u8>) -> Sidecar {
    let sidecar = Sidecar::start(config).await.unwrap();
    sidecar.transport().set_server_keys(Some(keys));
    sidecar
}

/// PUTs transaction `txn` from `origin` to `destination` through `sidecar`'s outbound
/// endpoint; the status and body of its answer.
async fn send(sidecar: &Sidecar, origin: &str, destination: &str, txn: &str) -> (u16, String) {
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::put(format!(
        "http://{}/_matrix/federation/v1/send/{txn}",
        sidecar.local_addr()
    ))
    .header("Host", destination)
    .header("Authorization", format!("X-Matrix origin=\"{origin}\""))
    .body(Full::new(Bytes::from(format!(
        r#"{{"origin":"{origin}","pdus":[],"edus":[]}}"#
    ))))
    .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn received(hs: &StubHomeserver, txn: &str) -> usize {
    let path = format!("/_matrix/federation/v1/send/{txn}");
    hs.received().iter().filter(|r| r.path == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_learns_the_initiators_address_and_sends_back_without_a_table_entry() {
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
    let (alice_hs, bob_hs) = (
        StubHomeserver::start().await.unwrap(),
        StubHomeserver::start().await.unwrap(),
    );
    let alice = start(
        config(
            &data.path().join("alice"),
            &net,
            "alice.example",
            mailboxes[0],
            &alice_key,
            &alice_hs.url(),
            &[("bob.example", &bob_address)],
            None,
        ),
        key_response("alice.example", 1),
    )
    .await;
    let bob_proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let bob_config = config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &bob_key,
        &bob_hs.url(),
        &[],
        Some(&bob_proxy.to_string()),
    );
    let bob_ca_file = bob_config.data_dir.join("ca").join("ca.pem");
    let bob_ca = || std::fs::read_to_string(&bob_ca_file).unwrap();
    let bob = start(bob_config.clone(), key_response("bob.example", 2)).await;

    // Before first contact: a clear error that says how to add the destination.
    let (status, body) = send(&bob, "bob.example", "alice.example", "b-0").await;
    assert_eq!(status, 502, "{body}");
    for hint in ["alice.example", "[peers]", "spore-sidecar address"] {
        assert!(body.contains(hint), "{hint} missing from {body}");
    }
    assert!(bob.peers().get("alice.example").is_none());
    // The same through the HTTPS proxy, as Synapse sends.
    {
        let mut tunnel = https_proxy::tunnel(bob_proxy, &bob_ca(), "alice.example", 8448).await;
        let (status, body) = https_proxy::call(
            &mut tunnel,
            "PUT",
            "/_matrix/federation/v1/send/b-0",
            r#"{"pdus":[]}"#,
        )
        .await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("under [peers]"), "{body}");
    }

    // Alice starts the conversation: configured on her side only.
    let first_contact = Instant::now();
    assert_eq!(
        send(&alice, "alice.example", "bob.example", "a-1").await.0,
        200
    );
    assert!(
        wait_until(Duration::from_secs(60), || received(&bob_hs, "a-1") == 1).await,
        "alice's first transaction reaches bob's homeserver"
    );
    let learned = bob.peers().get("alice.example").unwrap();
    // Alice's address as she hands it to bob: with the capability she gave bob (issue 16).
    assert!(
        learned.address.capability.is_some(),
        "{:?}",
        learned.address
    );
    assert_eq!(
        SporeAddress {
            capability: None,
            ..learned.address.clone()
        },
        alice_address
    );
    let alice_address = learned.address.clone();
    assert_eq!(learned.source, PeerSource::Learned);

    let learned_after = first_contact.elapsed();

    // Bob answers with no table entry for alice.
    let answer = Instant::now();
    assert_eq!(
        send(&bob, "bob.example", "alice.example", "b-1").await.0,
        200
    );
    assert!(
        wait_until(Duration::from_secs(60), || received(&alice_hs, "b-1") == 1).await,
        "bob's transaction reaches alice's homeserver through the learned address"
    );

    let answered_after = answer.elapsed();

    // Mallory, with her own Spore key and her own signing key, says she is alice.example and
    // names her own address: refused before delivery, and Bob's book keeps Alice's address.
    let mallory = start_client(
        &net,
        &data.path().join("mallory"),
        "alice",
        mailboxes[0],
        MailboxKey::generate(&mut rand::rng()),
        20.0,
    )
    .await;
    mallory.set_server_keys(Some(key_response("alice.example", 3)));
    mallory
        .send(&bob_address, transaction("alice.example", 99))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || bob
            .server_keys()
            .refused_senders()
            == 1
            && bob.transport().inbox_len() == 0)
        .await,
        "mallory's bundle is refused and leaves bob's inbox"
    );
    assert_eq!(received(&bob_hs, "99"), 0);
    assert_eq!(
        bob.peers().get("alice.example").map(|p| p.address),
        Some(alice_address.clone())
    );
    mallory.shutdown().await;

    // And again after bob's sidecar restarts: the learned address was durable. A homeserver's
    // keep-alive tunnel open across the shutdown is closed by it: otherwise it would keep the
    // old transport, and the store the restart opens, alive.
    let mut held = https_proxy::tunnel(bob_proxy, &bob_ca(), "alice.example", 8448).await;
    let (status, _) = https_proxy::call(&mut held, "GET", "/.well-known/matrix/server", "").await;
    assert_eq!(status, 200);
    bob.shutdown().await;
    assert!(
        wait_until(Duration::from_secs(10), || held.is_closed()).await,
        "the sidecar's shutdown closes the homeserver's open tunnels"
    );
    let bob = start(bob_config, key_response("bob.example", 2)).await;
    assert_eq!(
        bob.peers().get("alice.example").map(|p| p.address),
        Some(alice_address)
    );
    let mut tunnel = https_proxy::tunnel(bob_proxy, &bob_ca(), "alice.example", 8448).await;
    let (status, body) = https_proxy::call(
        &mut tunnel,
        "PUT",
        "/_matrix/federation/v1/send/b-2",
        r#"{"pdus":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(60), || received(&alice_hs, "b-2") == 1).await,
        "after a restart, bob's homeserver still sends to alice (through the HTTPS proxy) with no table entry"
    );
    assert_eq!(bob.peers().refused(), 0);
    println!(
        "peers without a table: bob learned alice {:.1} s after her first send; bob's first transaction to her delivered in {:.1} s",
        learned_after.as_secs_f64(),
        answered_after.as_secs_f64()
    );

    alice.shutdown().await;
    bob.shutdown().await;
}
