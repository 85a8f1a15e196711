//! Measurements (ignored by default; run with `--ignored --nocapture`): client CPU at
//! 10 packets/s with cover, and sustained real fragment throughput.

use std::time::{Duration, Instant};

use spore_bench::thread_cpu_secs;
use spore_client::{RateOverrides, Transport};
use spore_protocol::{MailboxKey, SporeAddress};
use spore_testkit::{Testnet, TestnetConfig};

use crate::{init_tracing, transaction, wait_until};

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn client_cpu_at_ten_packets_per_second_with_cover() {
    init_tracing();
    // Relays on their own runtime; the client alone on a current-thread runtime, so this
    // thread's CPU time is the client's (the store runs on the calling threads; no background flusher).
    let relays = tokio::runtime::Runtime::new().unwrap();
    let net = relays
        .block_on(Testnet::start(TestnetConfig::default()))
        .unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let mut config = net.client_config("alice.example", mailboxes[0], data.path().join("a"));
    config.rates = RateOverrides {
        lambda_p: Some(6.0),
        lambda_l: Some(2.0),
        lambda_d: Some(2.0),
        mu: Some(20.0),
        pull_interval: Some(Duration::from_millis(500)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let alice = Transport::start(config).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu0, t0, s0) = (thread_cpu_secs(), Instant::now(), alice.stats());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (cpu1, t1, s1) = (thread_cpu_secs(), Instant::now(), alice.stats());
        let wall = (t1 - t0).as_secs_f64();
        let packets = (s1.drop_sent + s1.loops_sent + s1.real_sent)
            - (s0.drop_sent + s0.loops_sent + s0.real_sent);
        eprintln!(
            "client CPU at lambda=10/s: {:.2}% of a core over {wall:.0} s ({} packets, {:.1}/s; loops returned {} lost {})",
            100.0 * (cpu1 - cpu0) / wall,
            packets,
            packets as f64 / wall,
            s1.loops_returned,
            s1.loops_lost
        );
        alice.shutdown().await;
    });
    drop(net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn sustained_real_fragment_throughput() {
    init_tracing();
    let net = Testnet::start(TestnetConfig {
        relay_workers: 1,
        ..TestnetConfig::default()
    })
    .await
    .unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let mut config = net.client_config("alice.example", mailboxes[0], data.path().join("a"));
    config.rates = RateOverrides {
        lambda_p: Some(2000.0),
        lambda_l: Some(1.0),
        lambda_d: Some(1.0),
        mu: Some(1000.0),
        pull_interval: Some(Duration::from_millis(20)),
    };
    let alice = Transport::start(config).await.unwrap();
    let bob = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: MailboxKey::generate(&mut rand::rng()).public().to_bytes(),
    };
    let n = 3000;
    let t0 = Instant::now();
    for i in 0..n {
        alice
            .send(&bob, transaction("alice.example", i))
            .await
            .unwrap();
    }
    let queued = t0.elapsed().as_secs_f64();
    wait_until(Duration::from_secs(120), || alice.outbox_len() == 0).await;
    let total = t0.elapsed().as_secs_f64();
    let s = alice.stats();
    eprintln!(
        "{n} single-fragment messages: queued in {queued:.2} s ({:.0}/s durable sends), all acked in {total:.2} s; \
         real packets sent {} ({:.0}/s), acks {} ({:.0}/s), retransmissions {}",
        n as f64 / queued,
        s.real_sent,
        s.real_sent as f64 / total,
        s.acks,
        s.acks as f64 / total,
        s.retransmissions
    );
    alice.shutdown().await;
}
