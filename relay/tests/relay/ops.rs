//! Operability: the Prometheus endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use spore_protocol::MailboxKey;
use spore_testkit::{TestRelay, delete, plain_packet, pull, wait_until};

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
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(&[relay.hop()], owner.mailbox_id(), &[Duration::ZERO], b"m");
    relay.send(&[p.clone(), p]).await;
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

#[tokio::test]
async fn a_failed_start_releases_the_port_and_the_database() {
    let busy = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = spore_relay::RelayKeys::generate();

    // Listen port taken: fails before opening anything.
    let mut config = spore_relay::RelayConfig::for_test(dir.path());
    config.listen = busy.r().local_addr();
    let err = spore_relay::Relay::start(
        config.clone(),
        keys.clone(),
        spore_relay::DirectorySource::None,
    )
    .await;
    assert!(err.is_err());

    // Metrics port taken: fails after the database is open and tasks run; they must stop.
    config.listen = "127.0.0.1:0".parse().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.metrics_listen = Some(taken.local_addr().unwrap());
    let err = spore_relay::Relay::start(
        config.clone(),
        keys.clone(),
        spore_relay::DirectorySource::None,
    )
    .await;
    assert!(err.is_err());

    config.metrics_listen = None;
    let mut started = None;
    for _ in 0..40 {
        if let Ok(r) = spore_relay::Relay::start(
            config.clone(),
            keys.clone(),
            spore_relay::DirectorySource::None,
        )
        .await
        {
            started = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started
        .expect("the database was released")
        .shutdown()
        .await
        .unwrap();
    busy.shutdown().await;
}

#[tokio::test]
async fn running_relay_keeps_a_fresh_descriptor_file() {
    let relay = TestRelay::start_with(|c| {
        c.descriptor_file = Some(c.data_dir.with_file_name("relay.desc"))
    })
    .await;
    let path = relay.config.descriptor_file.clone().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let d = spore_protocol::directory::RelayDescriptor::from_bytes(&bytes).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    d.verify(now).unwrap();
    assert_eq!(d.id, relay.keys.relay_id());
    assert_eq!(d.address, relay.addr());
    relay.shutdown().await;
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn info_logs_name_no_addresses_mailboxes_or_timings() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // With a single registered dispatcher, tracing-core computes the interest of a callsite
    // first hit on another test's thread from that thread's (empty) default and caches "never":
    // a second live dispatcher makes it ask every registered one, this capture included.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop(), relay.hop()],
        owner.mailbox_id(),
        &[Duration::from_millis(5), Duration::ZERO],
        b"log",
    );
    relay.send(&[p.clone(), p]).await;
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .r()
            .metrics()
            .packets_stored
            == 1)
        .await
    );
    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    delete(&mut link, items.iter().map(|i| i.handle).collect()).await;
    let mut junk = TcpStream::connect(relay.addr()).await.unwrap();
    junk.write_all(&[0xff; 64]).await.unwrap();
    drop(junk);
    drop(link);
    relay.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("relay started"), "{logs}");
    // The start-up line names the relay's own listen address (issue 18: what an operator
    // needs); no other line may name an address (clients and peers are all 127.0.0.1 here).
    let others: String = logs
        .lines()
        .filter(|l| !l.contains("relay started"))
        .collect();
    assert!(!others.contains("127.0.0.1"), "{logs}");
    assert!(!logs.contains("MailboxId"), "{logs}");
    assert!(
        !logs.contains(&hex::encode(&owner.mailbox_id().0[..3])),
        "{logs}"
    );
    assert!(!logs.contains("delay"), "{logs}");
}
