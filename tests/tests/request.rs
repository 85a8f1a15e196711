//! Request/response over reply SURBs, and the tower adapter.

use std::time::Duration;

use bytes::Bytes;
use spore_client::{SporeFederationClient, StaticResolver, Transport};
use spore_protocol::{FederationRequest, FederationResponse};
use spore_testkit::{Testnet, TestnetConfig};
use tower::{Service, ServiceExt};

use crate::{fast, init_tracing, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_gets_its_response_on_reply_surbs_and_the_tower_adapter_queues_transactions() {
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
    let bob = Transport::start(fast(
        net.client_config("bob.example", mailboxes[1], data.path().join("b")),
        100.0,
    ))
    .await
    .unwrap();

    // Bob answers whatever asks for an answer.
    let responder = {
        let bob = bob.clone();
        tokio::spawn(async move {
            loop {
                let Ok(inbound) = bob.incoming().await else {
                    return;
                };
                if inbound.wants_response {
                    // A response that needs several reply fragments.
                    let body = vec![b'x'; 3000];
                    bob.respond(
                        inbound.id,
                        FederationResponse {
                            status: 200,
                            headers: vec![("Content-Type".into(), "application/json".into())],
                            body,
                        },
                    )
                    .await
                    .unwrap();
                }
                bob.ack(inbound.id).await.unwrap();
            }
        })
    };

    let response = alice
        .request(
            &bob.address(),
            FederationRequest {
                method: "GET".into(),
                path: "/_matrix/federation/v1/query/profile?user_id=@b:bob.example".into(),
                headers: vec![],
                body: vec![],
            },
            Duration::from_secs(90),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3000);

    // The tower adapter: a transaction is answered 200 {} once queued; a query waits.
    let resolver = StaticResolver::new([("bob.example".to_owned(), bob.address())]);
    let mut federation = SporeFederationClient::new(alice.clone(), resolver)
        .with_request_timeout(Duration::from_secs(90));
    let txn = http::Request::put("https://bob.example/_matrix/federation/v1/send/t1")
        .header("Authorization", "X-Matrix origin=\"alice.example\"")
        .body(Bytes::from_static(br#"{"pdus":[],"edus":[]}"#))
        .unwrap();
    let r = federation.ready().await.unwrap().call(txn).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), b"{}");
    let query = http::Request::get("https://bob.example/_matrix/federation/v1/version")
        .body(Bytes::new())
        .unwrap();
    let r = within(
        Duration::from_secs(120),
        "query through the adapter",
        federation.ready().await.unwrap().call(query),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().len(), 3000);
    let unknown = http::Request::get("https://nobody.example/x")
        .body(Bytes::new())
        .unwrap();
    assert!(
        federation
            .ready()
            .await
            .unwrap()
            .call(unknown)
            .await
            .is_err()
    );

    assert!(crate::wait_until(Duration::from_secs(30), || bob.stats().received >= 3).await);
    responder.abort();
    alice.shutdown().await;
    bob.shutdown().await;
}
