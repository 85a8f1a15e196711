//! Whole-network tests: real relays on loopback, real clients, real links. One binary.
//!
//! They sit on top of the whole data path: a network from `spore-testkit` (relays in-process or
//! as `spore-relay` processes), `spore-client` transports and `spore-sidecar`s carrying
//! requests through it end to end, and raw links for what a hostile peer would send.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod authorities;
mod bench;
mod capabilities;
mod crash;
mod delivery;
mod faults;
mod hostile;
mod https_proxy;
mod keys_once;
mod large_answers;
mod multihost;
mod observer;
mod origin;
mod peers;
mod privacy;
mod request;
mod route_choice;
mod sidecar;
mod two_relays;

use std::collections::HashMap;
use std::time::Duration;

use spore_client::{RateOverrides, TransportConfig};
use spore_protocol::FederationRequest;
pub use spore_testkit::{wait_until, within};

/// Logs to the test output when `RUST_LOG` is set.
/// The address of `key`'s mailbox at `relay`, as its owner publishes it (no capability).
pub fn address_at(
    relay: spore_protocol::RelayId,
    key: &spore_protocol::MailboxKey,
) -> spore_protocol::SporeAddress {
    spore_protocol::SporeAddress {
        capability: None,
        mailbox_relays: vec![relay],
        mailbox_key: key.public().to_bytes(),
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A small signed-looking transaction with id `txn`.
pub fn transaction(origin: &str, txn: usize) -> FederationRequest {
    FederationRequest {
        method: "PUT".into(),
        path: format!("/_matrix/federation/v1/send/{txn}"),
        headers: vec![
            (
                "Authorization".into(),
                format!(
                    r#"X-Matrix origin="{origin}",destination="bob.example",key="ed25519:a",sig="c2ln""#
                ),
            ),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: format!(r#"{{"origin":"{origin}","origin_server_ts":{txn},"pdus":[],"edus":[]}}"#)
            .into_bytes(),
    }
}

/// The txn id of a transaction path.
pub fn txn_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Fast rates for tests: the real-packet stream at `lambda_p`, a little cover, 1 ms mean
/// per-hop delay, 50 ms pulls.
pub fn fast(mut c: TransportConfig, lambda_p: f64) -> TransportConfig {
    c.rates = RateOverrides {
        lambda_p: Some(lambda_p),
        lambda_l: Some(5.0),
        lambda_d: Some(5.0),
        mu: Some(1000.0),
        pull_interval: Some(Duration::from_millis(50)),
    };
    c
}

/// Starts `<name>.example`'s transport on `net` with `key` and data in `data/<name>`, at
/// [`fast`] rates with `lambda_p` packets a second.
pub async fn start_client(
    net: &spore_testkit::Testnet,
    data: &std::path::Path,
    name: &str,
    mailbox_relay: spore_protocol::RelayId,
    key: spore_protocol::MailboxKey,
    lambda_p: f64,
) -> spore_client::Transport {
    let server_name = format!("{name}.example");
    let config = net.client_config_with_key(&server_name, mailbox_relay, data.join(name), key);
    spore_client::Transport::start(fast(config, lambda_p))
        .await
        .unwrap()
}

/// Takes inbound requests from `receiver`, acking each, until `n` distinct transaction ids
/// have arrived (each within 60 s); returns how often each id was handed out. With
/// `origin`, every request must come from that server.
pub async fn receive_distinct(
    receiver: &spore_client::Transport,
    n: usize,
    origin: Option<&str>,
) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    while counts.len() < n {
        let inbound = within(
            Duration::from_secs(60),
            "the next transaction",
            receiver.incoming(),
        )
        .await
        .unwrap();
        if let Some(origin) = origin {
            assert_eq!(inbound.origin, origin);
        }
        *counts.entry(txn_of(&inbound.request.path)).or_default() += 1;
        receiver.ack(inbound.id).await.unwrap();
    }
    counts
}
