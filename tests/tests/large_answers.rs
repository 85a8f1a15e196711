//! Issue 17, answers of any size: an answer larger than the request's reply SURBs comes back
//! as an ordinary store-and-forward message to the requester's mailbox (fragmented, acked,
//! retransmitted, reassembled), matched to the waiting request by its id. The requester's
//! deadline still bounds the wait; an answer that arrives after it is dropped and counted.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spore_client::{ClientError, Transport};
use spore_protocol::{FederationRequest, FederationResponse, MailboxKey, SporeAddress};
use spore_sidecar::{Sidecar, SidecarConfig};
use spore_testkit::{SidecarNode, StubHomeserver, Testnet, TestnetConfig};
use tokio::sync::oneshot;

use crate::{fast, init_tracing, wait_until, within};

/// Incompressible bytes (like a photo): compression cannot make them fit the SURBs.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    b
}

fn get(path: &str) -> FederationRequest {
    FederationRequest {
        method: "GET".into(),
        path: path.into(),
        headers: vec![],
        body: vec![],
    }
}

/// Transport level: a 128 KiB answer (the default 8 reply SURBs carry about 8 KB) arrives
/// intact by store-and-forward; one sent after the caller gave up is dropped and counted, not
/// handed to anyone; one over `max_reply_bytes` is refused at the responder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_reply_surbs_comes_back_through_the_mailbox() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let alice = Transport::start(fast(
        net.client_config("alice.example", mailboxes[0], data.path().join("a")),
        100.0,
    ))
    .await
    .unwrap();
    let mut bob_config = fast(
        net.client_config("bob.example", mailboxes[1], data.path().join("b")),
        100.0,
    );
    bob_config.max_reply_bytes = 512 * 1024;
    let bob = Transport::start(bob_config).await.unwrap();

    let big = random_bytes(128 * 1024);
    let (late_tx, late_rx) = oneshot::channel::<()>();
    let (refused_tx, refused_rx) = oneshot::channel::<Result<(), String>>();
    let responder = {
        let bob = bob.clone();
        let big = big.clone();
        tokio::spawn(async move {
            let mut late_rx = Some(late_rx);
            let mut refused_tx = Some(refused_tx);
            loop {
                let Ok(inbound) = bob.incoming().await else {
                    return;
                };
                let answer = |body: Vec<u8>| FederationResponse {
                    status: 200,
                    headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                    body,
                };
                match inbound.request.path.as_str() {
                    "/big" => bob.respond(inbound.id, answer(big.clone())).await.unwrap(),
                    "/late" => {
                        // Answer only once the caller has given up.
                        if let Some(rx) = late_rx.take() {
                            let _ = rx.await;
                        }
                        bob.respond(inbound.id, answer(big.clone())).await.unwrap();
                    }
                    "/huge" => {
                        let r = bob
                            .respond(inbound.id, answer(random_bytes(600 * 1024)))
                            .await;
                        if let Some(tx) = refused_tx.take() {
                            let _ = tx.send(match r {
                                Err(ClientError::CannotRespond(why)) => Err(why.to_owned()),
                                other => other.map_err(|e| e.to_string()),
                            });
                        }
                    }
                    _ => {}
                }
                bob.ack(inbound.id).await.unwrap();
            }
        })
    };

    let asked = Instant::now();
    let response = alice
        .request(&bob.address(), get("/big"), Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}: alice {:?} bob {:?}", alice.stats(), bob.stats()));
    eprintln!(
        "128 KiB answer by store-and-forward in {:?}",
        asked.elapsed()
    );
    assert_eq!(response.status, 200);
    assert!(response.body == big, "the answer arrived intact");
    assert_eq!(bob.stats().replies_by_mailbox, 1);
    assert_eq!(alice.stats().late_replies, 0);

    // The caller gives up after 1 s; Bob answers only then.
    let r = alice
        .request(&bob.address(), get("/late"), Duration::from_secs(1))
        .await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    late_tx.send(()).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || alice.stats().late_replies >= 1).await,
        "the late answer reached Alice and was dropped"
    );
    assert_eq!(bob.stats().replies_by_mailbox, 2);

    // Over Bob's max_reply_bytes: refused at Bob (the sidecar answers 413 in its place).
    let r = alice
        .request(&bob.address(), get("/huge"), Duration::from_secs(5))
        .await;
    assert!(r.is_err(), "nothing was sent back");
    let refused = within(Duration::from_secs(60), "Bob's respond()", refused_rx)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(why) if why.contains("max_reply_bytes")),
        "{refused:?}"
    );
    assert_eq!(bob.stats().replies_by_mailbox, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(alice.stats().late_replies, 1, "nothing else arrived");

    responder.abort();
    alice.shutdown().await;
    bob.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
fn sidecar_config(
    dir: &std::path::Path,
    net: &Testnet,
    name: &str,
    key: &MailboxKey,
    address: &SporeAddress,
    homeserver: &str,
    peers: &[(&str, &SporeAddress)],
    lambda_p: f64,
) -> SidecarConfig {
    let node = SidecarNode {
        peers,
        ..SidecarNode::new(name, address.mailbox_relays[0], key, homeserver)
    };
    let path = net.write_sidecar_config(dir, &node).unwrap();
    let mut config = SidecarConfig::load(&path).unwrap();
    // Enough packets a second for megabytes in a test's time, and pulls fast enough to take
    // them (and their acks) as fast as they come: 16 slots every 20 ms.
    config.rates.lambda_p = Some(lambda_p);
    config.rates.pull_interval_ms = Some(20);
    config.request_timeouts.insert("media".into(), 1200);
    config
}

/// Downloads `len` random bytes of media from Bob's homeserver through Alice's sidecar, the
/// way Alice's homeserver would, and checks that they arrive byte for byte as the HTTP
/// answer. Returns how long the download took.
async fn media_download_through_sidecars(len: usize) -> Duration {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let keys = [
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    ];
    let addresses = [0, 1].map(|i| SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[i]],
        mailbox_key: keys[i].public().to_bytes(),
    });
    let alice_hs = StubHomeserver::start().await.unwrap();
    let bob_hs = StubHomeserver::start().await.unwrap();
    let media = random_bytes(len);
    bob_hs.serve_body("/_matrix/federation/v1/media/download/", media.clone());
    // Alice mostly pulls; Bob sends the answer: its packet rate is what the download takes.
    let alice = Sidecar::start(sidecar_config(
        &data.path().join("alice"),
        &net,
        "alice.example",
        &keys[0],
        &addresses[0],
        &alice_hs.url(),
        &[("bob.example", &addresses[1])],
        50.0,
    ))
    .await
    .unwrap();
    let bob = Sidecar::start(sidecar_config(
        &data.path().join("bob"),
        &net,
        "bob.example",
        &keys[1],
        &addresses[1],
        &bob_hs.url(),
        &[("alice.example", &addresses[0])],
        300.0,
    ))
    .await
    .unwrap();

    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let download = http::Request::get(format!(
        "http://{}/_matrix/federation/v1/media/download/m{len}",
        alice.local_addr()
    ))
    .header("Host", "bob.example")
    .header("Authorization", "X-Matrix origin=\"alice.example\"")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let asked = Instant::now();
    let resp = within(
        Duration::from_secs(1200),
        "the download",
        http.request(download),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let took = asked.elapsed();
    eprintln!(
        "{} bytes of media through Spore in {took:?}; Bob sent {:?}",
        body.len(),
        bob.transport().stats()
    );
    assert_eq!(body.len(), media.len());
    assert!(
        body.as_ref() == media.as_slice(),
        "the media arrived intact"
    );
    assert_eq!(bob.transport().stats().replies_by_mailbox, 1);
    assert_eq!(alice.transport().stats().late_replies, 0);
    assert!(alice_hs.received().is_empty());

    alice.shutdown().await;
    bob.shutdown().await;
    took
}

/// Sidecar level: a 1 MiB media download (4,096 forward packets) comes back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_media_download_works_through_sidecars() {
    media_download_through_sidecars(1024 * 1024).await;
}

/// Sidecar level: a 5 MiB media download, 16,384 forward packets (the largest size class),
/// at least 55 s at Bob's 300 packets/s. Heavy, so run by hand on a quiet machine:
/// `cargo test -p spore-tests --test tests large_answers -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: 16,384 packets through the mixes"]
async fn a_five_mebibyte_media_download_works_through_sidecars() {
    media_download_through_sidecars(5 * 1024 * 1024).await;
}
