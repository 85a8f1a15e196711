//! Issue 17, fewer packets per event: the origin's key response travels to a peer once, and
//! the peer keeps verifying keyless bundles from its on-disk cache, also after a restart.
//! Sidecars in this process (so their counters are readable), relays as processes, every
//! request through each sidecar's HTTPS proxy as Synapse sends it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use http_body_util::{BodyExt, Full};
use spore_protocol::{FederationRequest, MailboxKey, RelayId, SporeAddress};
use spore_sidecar::{
    CA_CERT_FILE, KEY_RECIPIENTS_FILE, Sidecar, SidecarConfig, canonical_json, unix_ms,
};
use spore_testkit::relay_process::free_port;
use spore_testkit::{SidecarNode, StubHomeserver, Testnet, TestnetConfig};

use crate::https_proxy::{Sender, tunnel};
use crate::{init_tracing, wait_until};

const KEY_ID: &str = "ed25519:a_Spo1";

/// `server`'s self-signed key response, valid for a day, listing `old_keys` retired keys (a
/// server that rotated keys a few times; their random bytes do not compress).
fn key_response(server: &str, key: &SigningKey, old_keys: usize) -> Vec<u8> {
    let old: serde_json::Map<String, serde_json::Value> = (0..old_keys)
        .map(|i| {
            let k: [u8; 32] = rand::random();
            (
                format!("ed25519:old{i}"),
                serde_json::json!({"key": STANDARD_NO_PAD.encode(k), "expired_ts": 1_700_000_000_000u64}),
            )
        })
        .collect();
    let mut v = serde_json::json!({
        "server_name": server,
        "valid_until_ts": unix_ms() + 24 * 3600 * 1000,
        "old_verify_keys": old,
        "verify_keys": {KEY_ID: {"key": STANDARD_NO_PAD.encode(key.verifying_key().as_bytes())}},
    });
    let mut msg = String::new();
    canonical_json(&v, &mut msg);
    let sig = STANDARD_NO_PAD.encode(key.sign(msg.as_bytes()).to_bytes());
    v["signatures"] = serde_json::json!({ server: {KEY_ID: sig} });
    serde_json::to_vec(&v).unwrap()
}

/// What an X-Matrix signature covers (Matrix spec, request authentication).
fn signed_part(method: &str, uri: &str, origin: &str, destination: &str, body: &[u8]) -> String {
    let mut v = serde_json::json!({
        "method": method, "uri": uri, "origin": origin, "destination": destination,
    });
    if !body.is_empty() {
        v["content"] = serde_json::from_slice(body).unwrap();
    }
    let mut msg = String::new();
    canonical_json(&v, &mut msg);
    msg
}

fn x_matrix(key: &SigningKey, origin: &str, destination: &str, uri: &str, body: &[u8]) -> String {
    let sig = key.sign(signed_part("PUT", uri, origin, destination, body).as_bytes());
    format!(
        r#"X-Matrix origin="{origin}",destination="{destination}",key="{KEY_ID}",sig="{}""#,
        STANDARD_NO_PAD.encode(sig.to_bytes())
    )
}

/// Checks `request`'s X-Matrix signature as a receiving homeserver does, with the verify key
/// from the key response `keys_json` (what its sidecar answered for the origin).
fn verifies(request: &FederationRequest, destination: &str, keys_json: &[u8]) -> bool {
    let Some((_, auth)) = request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
    else {
        return false;
    };
    let field = |name: &str| {
        auth.trim_start_matches("X-Matrix ")
            .split(',')
            .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let (Some(origin), Some(key_id), Some(sig)) = (field("origin"), field("key"), field("sig"))
    else {
        return false;
    };
    let keys: serde_json::Value = serde_json::from_slice(keys_json).unwrap();
    let Some(key) = keys["verify_keys"][&key_id]["key"].as_str() else {
        return false;
    };
    let key: [u8; 32] = STANDARD_NO_PAD.decode(key).unwrap().try_into().unwrap();
    let sig: [u8; 64] = STANDARD_NO_PAD.decode(sig).unwrap().try_into().unwrap();
    let message = signed_part(
        &request.method,
        &request.path,
        &origin,
        destination,
        &request.body,
    );
    VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(message.as_bytes(), &Signature::from_bytes(&sig))
        .is_ok()
}

/// A sidecar's config with its HTTPS proxy on a free port; returns it and the proxy address.
#[allow(clippy::too_many_arguments)]
fn config(
    dir: &Path,
    net: &Testnet,
    name: &str,
    relay: RelayId,
    key: &MailboxKey,
    homeserver: &str,
    peers: &[(&str, &SporeAddress)],
    lambda_p: Option<f64>,
) -> (SidecarConfig, std::net::SocketAddr) {
    let proxy = format!("127.0.0.1:{}", free_port());
    let mut node = SidecarNode {
        peers,
        https_proxy_listen: Some(&proxy),
        ..SidecarNode::new(name, relay, key, homeserver)
    };
    if let Some(lambda_p) = lambda_p {
        node.rates.lambda_p = lambda_p;
    }
    let path = net.write_sidecar_config(dir, &node).unwrap();
    (SidecarConfig::load(&path).unwrap(), proxy.parse().unwrap())
}

fn ca_pem(config: &SidecarConfig) -> String {
    std::fs::read_to_string(config.data_dir.join("ca").join(CA_CERT_FILE)).unwrap()
}

/// Real fragments a sidecar sent for the first time (retransmissions left out).
fn first_sends(sidecar: &Sidecar) -> u64 {
    let s = sidecar.transport().stats();
    s.real_sent - s.retransmissions
}

/// `PUT /send/{txn}` to `destination` through a tunnel, signed by `origin`; expects 200.
async fn put_transaction(
    tunnel: &mut Sender,
    key: &SigningKey,
    origin: &str,
    destination: &str,
    txn: &str,
    body: &[u8],
) {
    let uri = format!("/_matrix/federation/v1/send/{txn}");
    let req = http::Request::put(&uri)
        .header(
            "Authorization",
            x_matrix(key, origin, destination, &uri, body),
        )
        .header("Content-Type", "application/json")
        .header("User-Agent", "Synapse/1.163.2")
        .body(Full::new(Bytes::from(body.to_vec())))
        .unwrap();
    let r = tunnel.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200, "transaction {txn} queued");
}

/// The key response `proxy`'s sidecar gives its homeserver for `server`.
async fn keys_via_proxy(proxy: std::net::SocketAddr, ca: &str, server: &str) -> (u16, Vec<u8>) {
    let mut t = tunnel(proxy, ca, server, 8448).await;
    let req = http::Request::get("/_matrix/key/v2/server")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = t.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        r.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn received(hs: &StubHomeserver, txn: &str) -> Option<FederationRequest> {
    let path = format!("/_matrix/federation/v1/send/{txn}");
    hs.received().into_iter().find(|r| r.path == path)
}

/// Whether `data_dir`'s record says the peer with mailbox key `peer` holds our keys.
fn recorded(data_dir: &Path, peer: &[u8; 32]) -> bool {
    std::fs::read_to_string(data_dir.join(KEY_RECIPIENTS_FILE))
        .is_ok_and(|s| s.contains(&hex::encode(peer)))
}

/// Sends `txn` through `proxy` and returns how many packets it took once the sender's
/// outbox is empty.
#[allow(clippy::too_many_arguments)]
async fn send_and_count(
    sender: &Sidecar,
    proxy: std::net::SocketAddr,
    ca: &str,
    key: &SigningKey,
    txn: &str,
) -> u64 {
    let before = first_sends(sender);
    let mut t = tunnel(proxy, ca, "bob.example", 8448).await;
    // Small enough that one packet carries it with room to spare.
    let body = format!(
        r#"{{"origin":"alice.example","origin_server_ts":1,"pdus":[],"edus":[],"t":"{txn}"}}"#
    );
    put_transaction(
        &mut t,
        key,
        "alice.example",
        "bob.example",
        txn,
        body.as_bytes(),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(60), || sender.transport().outbox_len()
            == 0)
        .await,
        "{txn} acknowledged by the mailbox relay"
    );
    first_sends(sender) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_verifies_keyless_bundles_from_its_cache_also_after_a_restart() {
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
    let signing = SigningKey::from_bytes(&[42; 32]);
    let alice_hs = StubHomeserver::start().await.unwrap();
    // Ten retired keys: the key response alone takes more than a packet, so whether a bundle
    // carries it shows in the packet count whatever else a bundle holds.
    alice_hs.serve_key_response(key_response("alice.example", &signing, 10));
    let bob_hs = StubHomeserver::start().await.unwrap();
    let (alice_config, alice_proxy) = config(
        &data.path().join("alice"),
        &net,
        "alice.example",
        mailboxes[0],
        &alice_key,
        &alice_hs.url(),
        &[("bob.example", &bob_address)],
        None,
    );
    let (bob_config, bob_proxy) = config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &bob_key,
        &bob_hs.url(),
        &[("alice.example", &alice_address)],
        None,
    );
    let alice_data: PathBuf = alice_config.data_dir.clone();
    let alice = Sidecar::start(alice_config.clone()).await.unwrap();
    let bob = Sidecar::start(bob_config.clone()).await.unwrap();
    let (alice_ca, bob_ca) = (ca_pem(&alice_config), ca_pem(&bob_config));

    // First contact: the bundle carries Alice's keys; Bob verifies with what it cached.
    let with_keys = send_and_count(&alice, alice_proxy, &alice_ca, &signing, "t1").await;
    assert!(
        wait_until(Duration::from_secs(30), || received(&bob_hs, "t1")
            .is_some())
        .await
    );
    let (status, keys) = keys_via_proxy(bob_proxy, &bob_ca, "alice.example").await;
    assert_eq!(status, 200);
    assert!(verifies(
        &received(&bob_hs, "t1").unwrap(),
        "bob.example",
        &keys
    ));
    assert!(
        wait_until(Duration::from_secs(10), || recorded(
            &alice_data,
            &bob_address.mailbox_key
        ))
        .await,
        "Alice records that Bob holds her keys once the mailbox relay acked them"
    );

    // Later bundles carry no keys: fewer packets, and Bob still verifies.
    let without_keys = send_and_count(&alice, alice_proxy, &alice_ca, &signing, "t2").await;
    assert!(
        without_keys < with_keys,
        "keyless bundle: {without_keys} packets, first one {with_keys}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || received(&bob_hs, "t2")
            .is_some())
        .await
    );
    assert!(verifies(
        &received(&bob_hs, "t2").unwrap(),
        "bob.example",
        &keys
    ));

    // Bob goes down; a keyless transaction waits in his mailbox; Alice goes offline too, so
    // nothing can fetch her keys through Spore: Bob, restarted, verifies from his disk cache.
    bob.shutdown().await;
    let t3 = send_and_count(&alice, alice_proxy, &alice_ca, &signing, "t3").await;
    assert_eq!(t3, without_keys);
    alice.shutdown().await;
    let bob = Sidecar::start(bob_config.clone()).await.unwrap();
    assert!(
        bob.server_keys().get("alice.example", unix_ms()).is_some(),
        "Bob's key cache is on disk"
    );
    assert!(
        wait_until(Duration::from_secs(30), || received(&bob_hs, "t3")
            .is_some())
        .await
    );
    let (status, keys) = keys_via_proxy(bob_proxy, &bob_ca, "alice.example").await;
    assert_eq!(
        status, 200,
        "answered from the cache while Alice is offline"
    );
    assert!(verifies(
        &received(&bob_hs, "t3").unwrap(),
        "bob.example",
        &keys
    ));

    // Alice's record is durable: after her restart, still no keys for Bob.
    let alice = Sidecar::start(alice_config.clone()).await.unwrap();
    let t4 = send_and_count(&alice, alice_proxy, &alice_ca, &signing, "t4").await;
    assert_eq!(t4, without_keys);
    assert!(
        wait_until(Duration::from_secs(30), || received(&bob_hs, "t4")
            .is_some())
        .await
    );
    assert!(verifies(
        &received(&bob_hs, "t4").unwrap(),
        "bob.example",
        &keys
    ));
    assert_eq!(bob.server_keys().refused_senders(), 0);

    alice.shutdown().await;
    bob.shutdown().await;
}

/// Our address travels once per peer too, so a peer may lose it (a data dir restored from
/// an old backup: peer book and key cache gone, Spore key kept) while we still record that it
/// holds it. Such a peer still gets our transactions (without keys or address, as recorded),
/// and still answers our requests, also with an answer too large for the reply SURBs, which
/// goes by store-and-forward to the address every request bundle carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_lost_our_address_still_answers_a_large_request() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let bob_address = crate::address_at(mailboxes[1], &bob_key);
    let signing = SigningKey::from_bytes(&[42; 32]);
    let alice_hs = StubHomeserver::start().await.unwrap();
    alice_hs.serve_key_response(key_response("alice.example", &signing, 0));
    let bob_hs = StubHomeserver::start().await.unwrap();
    // Incompressible: far more than the 8 reply SURBs (about 8 KB) carry.
    let media: Vec<u8> = (0..48 * 1024).map(|_| rand::random::<u8>()).collect();
    bob_hs.serve_body("/_matrix/federation/v1/media/download/", media.clone());
    let (alice_config, alice_proxy) = config(
        &data.path().join("alice"),
        &net,
        "alice.example",
        mailboxes[0],
        &alice_key,
        &alice_hs.url(),
        &[("bob.example", &bob_address)],
        Some(50.0),
    );
    // Bob has no table entry for Alice: he knows her only from her bundles.
    let (bob_config, _) = config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        mailboxes[1],
        &bob_key,
        &bob_hs.url(),
        &[],
        Some(50.0),
    );
    // A loaded machine (CI, other builds) must not turn a slow download into a 504.
    let mut alice_config = alice_config;
    alice_config.request_timeouts.insert("media".into(), 600);
    let alice = Sidecar::start(alice_config.clone()).await.unwrap();
    let bob = Sidecar::start(bob_config.clone()).await.unwrap();
    let alice_ca = ca_pem(&alice_config);

    // First contact carries Alice's keys and address: Bob learns where she is.
    send_and_count(&alice, alice_proxy, &alice_ca, &signing, "t1").await;
    assert!(
        wait_until(Duration::from_secs(30), || bob
            .peers()
            .get("alice.example")
            .is_some())
        .await,
        "Bob learned Alice's address from her bundle"
    );
    assert!(
        wait_until(Duration::from_secs(10), || recorded(
            &alice_config.data_dir,
            &bob_address.mailbox_key
        ))
        .await
    );

    // Taken and acked: a restart must not hand t1 (and its address) over again.
    assert!(
        wait_until(Duration::from_secs(30), || received(&bob_hs, "t1")
            .is_some()
            && bob.transport().inbox_len() == 0)
        .await
    );

    // Bob loses his peer book and key cache; Alice's record still says he holds both.
    bob.shutdown().await;
    for entry in std::fs::read_dir(&bob_config.data_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == spore_sidecar::PEER_BOOK_FILE || name.starts_with("server_keys") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let bob = Sidecar::start(bob_config.clone()).await.unwrap();
    assert!(
        bob.peers().get("alice.example").is_none(),
        "Bob forgot Alice"
    );

    // A transaction without keys or address still reaches Bob's homeserver.
    send_and_count(&alice, alice_proxy, &alice_ca, &signing, "t2").await;
    assert!(
        wait_until(Duration::from_secs(30), || received(&bob_hs, "t2")
            .is_some())
        .await
    );
    assert!(
        bob.peers().get("alice.example").is_none(),
        "the transaction carried neither keys nor address"
    );

    // Alice's homeserver downloads media from Bob: the answer comes back whole, through
    // Alice's mailbox, to the address her request bundle carried.
    let http: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let download = http::Request::get(format!(
        "http://{}/_matrix/federation/v1/media/download/m1",
        alice.local_addr()
    ))
    .header("Host", "bob.example")
    .header("Authorization", r#"X-Matrix origin="alice.example""#)
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(700), http.request(download))
        .await
        .expect("the download finished in time")
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        200,
        "{}; Alice {:?}; Bob {:?}",
        String::from_utf8_lossy(&body[..body.len().min(300)]),
        alice.transport().stats(),
        bob.transport().stats()
    );
    assert!(
        body.as_ref() == media.as_slice(),
        "the answer arrived intact"
    );
    assert_eq!(bob.transport().stats().replies_by_mailbox, 1);

    alice.shutdown().await;
    bob.shutdown().await;
}

/// A transaction as Synapse sends it when a user posts a short message: one PDU with its
/// hashes, signature, auth and prev events (random base64 where Synapse has digests).
fn message_event(origin: &str, n: usize) -> Vec<u8> {
    let b64 = |len: usize| {
        let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        STANDARD_NO_PAD.encode(bytes)
    };
    let ts = unix_ms();
    serde_json::to_vec(&serde_json::json!({
        "origin": origin,
        "origin_server_ts": ts,
        "pdus": [{
            "auth_events": [format!("${}", b64(32)), format!("${}", b64(32)), format!("${}", b64(32))],
            "content": {"body": format!("hello {n}"), "msgtype": "m.text"},
            "depth": 40 + n,
            "hashes": {"sha256": b64(32)},
            "origin": origin,
            "origin_server_ts": ts,
            "prev_events": [format!("${}", b64(32))],
            "room_id": format!("!{}:{origin}", &b64(14)[..18]),
            "sender": format!("@alice:{origin}"),
            "signatures": {origin: {KEY_ID: b64(64)}},
            "type": "m.room.message",
            "unsigned": {"age_ts": ts},
        }],
        "edus": [],
    }))
    .unwrap()
}

/// A typing notification, the smallest transaction Synapse sends often.
fn typing_edu(origin: &str) -> Vec<u8> {
    format!(r#"{{"origin":"{origin}","origin_server_ts":{},"pdus":[],"edus":[{{"edu_type":"m.typing","content":{{"room_id":"!AbCdEfGhIjKlMnOpQr:{origin}","user_id":"@alice:{origin}","typing":true}}}}]}}"#, unix_ms()).into_bytes()
}

/// Sends `body(i)` to each destination at once (one tunnel each, as Synapse's per-destination
/// queues do); returns (seconds until the last real packet left, first sends per transaction).
async fn fan_out(
    sidecar: &Sidecar,
    proxy: std::net::SocketAddr,
    ca: &str,
    key: &SigningKey,
    destinations: &[String],
    round: &str,
    body: impl Fn(usize) -> Vec<u8>,
) -> (f64, f64) {
    let before = first_sends(sidecar);
    let t0 = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for (i, d) in destinations.iter().enumerate() {
        let (body, ca, key, d) = (body(i), ca.to_owned(), key.clone(), d.clone());
        let txn = format!("{round}-{i}");
        sends.spawn(async move {
            let mut t = tunnel(proxy, &ca, &d, 8448).await;
            put_transaction(&mut t, &key, "alice.example", &d, &txn, &body).await;
        });
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    // The last real packet left when the count last rose before the outbox emptied.
    let mut last = (first_sends(sidecar), t0.elapsed());
    let deadline = Instant::now() + Duration::from_secs(300);
    while sidecar.transport().outbox_len() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent = first_sends(sidecar);
        if sent != last.0 {
            last = (sent, t0.elapsed());
        }
    }
    assert_eq!(sidecar.transport().outbox_len(), 0, "all acked");
    let packets = (first_sends(sidecar) - before) as f64 / destinations.len() as f64;
    (last.1.as_secs_f64(), packets)
}

/// Issue 17's target, measured against the old behaviour in the same run: packets per small
/// transaction and the time one event to 50 destinations takes to leave at lambda_P = 10/s
/// (the directory default). Prints the figures (docs/benchmarks.md, docs/synapse.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn packets_per_transaction_and_fan_out_time_keys_once_vs_every_bundle() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("hs{i}.example")).collect();
    let addresses: Vec<SporeAddress> = names
        .iter()
        .map(|_| SporeAddress {
            capability: None,
            mailbox_relays: vec![mailboxes[1]],
            mailbox_key: MailboxKey::generate(&mut rand::rng()).public().to_bytes(),
        })
        .collect();
    let peers: Vec<(&str, &SporeAddress)> = names
        .iter()
        .map(String::as_str)
        .zip(addresses.iter())
        .collect();
    let signing = SigningKey::from_bytes(&[42; 32]);
    let hs = StubHomeserver::start().await.unwrap();
    hs.serve_key_response(key_response("alice.example", &signing, 0));
    for (label, every_bundle) in [
        ("keys in every bundle (before)", true),
        ("keys once per peer", false),
    ] {
        let key = MailboxKey::generate(&mut rand::rng());
        let (mut config, proxy) = config(
            &data.path().join(label.replace(' ', "_")),
            &net,
            "alice.example",
            mailboxes[0],
            &key,
            &hs.url(),
            &peers,
            Some(10.0),
        );
        config.keys_in_every_bundle = every_bundle;
        let sidecar = Sidecar::start(config.clone()).await.unwrap();
        let ca = ca_pem(&config);
        // One event goes to every server in the room: the same transaction body to each.
        let event = message_event("alice.example", 1);
        let first = fan_out(&sidecar, proxy, &ca, &signing, &names, "first", |_| {
            event.clone()
        })
        .await;
        // Give the acks' events a moment to be recorded.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let event = message_event("alice.example", 2);
        let event = fan_out(&sidecar, proxy, &ca, &signing, &names, "event", |_| {
            event.clone()
        })
        .await;
        let typing = fan_out(&sidecar, proxy, &ca, &signing, &names, "typing", |_| {
            typing_edu("alice.example")
        })
        .await;
        eprintln!(
            "{label}: first contact, one message event to 50 peers: {:.2} packets/txn, left in {:.1} s; \
             later message event: {:.2} packets/txn, left in {:.1} s; typing EDU: {:.2} packets/txn, left in {:.1} s",
            first.1, first.0, event.1, event.0, typing.1, typing.0
        );
        sidecar.shutdown().await;
    }
}
