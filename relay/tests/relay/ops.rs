//! Operability: the Prometheus endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_endpoint_exports_counters_by_reason_and_latency() {
    let relay =
        TestRelay::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let owner = mailbox_key();
    let p = plain_packet(&[relay.hop()], owner.mailbox_id(), &[Duration::ZERO], b"m");
    send_packets(&relay, &[p.clone(), p]).await;
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .r()
            .metrics()
            .dropped("replay")
            == 1)
        .await
    );

    let addr = relay.r().metrics_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let text = http_get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "spore_relay_packets_in_total 2",
        "spore_relay_packets_dropped_total{reason=\"replay\"} 1",
        "spore_relay_unwrap_seconds_bucket",
        "spore_relay_queue_depth{queue=\"unwrap\"}",
        "spore_relay_mailbox_items",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Labels never carry personal data.
    assert!(!text.contains(&hex::encode(owner.mailbox_id().0)[..12]));
    assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    relay.shutdown().await;
}
