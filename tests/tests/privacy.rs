//! Privacy regressions: what the logs and the packets give away.
//!
//! * A whole network (relays and two clients in one process) runs a demo-like exchange with
//!   info-level logging captured; the logs must name no client address, no mailbox id (whole,
//!   or the 3-byte prefix `Debug` prints), no per-packet timing, and must not grow per packet.
//!   The exchange runs in a child process (this test binary, re-run on one test) so that a
//!   process-wide subscriber sees every thread, including the relays' worker threads.
//! * Real fragments, drop cover and loop cover are the same size and `spore inspect` says the
//!   same about each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use spore_protocol::packet::{
    ForwardPayload, build_packet, build_surb, random_surb_id, sample_delays,
};
use spore_protocol::params::{
    FORWARD_HOPS, FRAGMENT_SIZE, PACKET_SIZE, SEALED_FRAGMENT_SIZE, SURB_HOPS, SURB_SIZE,
};
use spore_protocol::route::RouteSelector;
use spore_protocol::{MailboxId, MailboxKey, SporeAddress, seal};
use spore_testkit::{Testnet, TestnetConfig};

use crate::{start_client, transaction, txn_of, within};

const CHILD_ENV: &str = "SPORE_PRIVACY_CHILD";
const TEST_NAME: &str =
    "privacy::info_logs_of_a_whole_network_name_no_client_addresses_mailboxes_or_timings";

/// The exchange itself; prints the values that must not appear in the logs as `SECRET <s>`
/// lines and the relays' listen addresses as `RELAY <addr>` (those may appear: they are public).
async fn child_exchange() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    for i in 0.. {
        let Some(addr) = net.relay_address(i) else {
            break;
        };
        println!("RELAY {addr}");
    }
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    for key in [&alice_key, &bob_key] {
        let id = hex::encode(key.mailbox_id().0);
        println!("SECRET {id}");
        println!("SECRET {}", &id[..6]);
        println!("SECRET {}", hex::encode(key.public().to_bytes()));
    }
    let bob_address = SporeAddress {
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    println!("SECRET {}", bob_address.to_text());
    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 100.0).await;
    let bob = start_client(&net, data.path(), "bob", mailboxes[1], bob_key, 100.0).await;
    let n = 20;
    for i in 0..n {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    let mut got: HashMap<String, usize> = HashMap::new();
    while got.len() < n {
        let inbound = within(Duration::from_secs(60), "bob's next", bob.incoming())
            .await
            .unwrap();
        *got.entry(txn_of(&inbound.request.path)).or_default() += 1;
        bob.ack(inbound.id).await.unwrap();
    }
    // Let cover traffic, acks and pulls run a little longer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (alice.stats(), bob.stats());
    println!(
        "PACKETS {}",
        a.real_sent + a.drop_sent + a.loops_sent + b.real_sent + b.drop_sent + b.loops_sent
    );
    alice.shutdown().await;
    bob.shutdown().await;
    let _ = net.shutdown().await;
    println!("DONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_of_a_whole_network_name_no_client_addresses_mailboxes_or_timings() {
    if std::env::var(CHILD_ENV).is_ok() {
        child_exchange().await;
        return;
    }
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let logs = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && stdout.contains("DONE"),
        "child failed:\n{stdout}\n{logs}"
    );
    let field = |prefix: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .collect()
    };
    let relays: Vec<SocketAddr> = field("RELAY ").iter().map(|a| a.parse().unwrap()).collect();
    let secrets = field("SECRET ");
    let packets: u64 = field("PACKETS ")[0].parse().unwrap();
    assert!(
        secrets.len() >= 7 && relays.len() >= 3,
        "{} secrets, {} relays:\n{stdout}",
        secrets.len(),
        relays.len()
    );

    // Logs from the run (tracing lines only; the test harness's own lines are on stdout).
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(!lines.is_empty(), "nothing logged at info: {logs}");
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a mailbox id or key is logged: {s}\n{logs}"
        );
    }
    assert!(!logs.contains("MailboxId("), "{logs}");
    // Any 127.0.0.1:port that is not a relay's public listen address is a client's.
    for (i, _) in logs.match_indices("127.0.0.1:") {
        let port: String = logs[i + 10..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .unwrap_or_else(|_| panic!("an address without a port is logged\n{logs}"));
        assert!(
            relays.contains(&addr),
            "a client's address is logged: {addr}\n{logs}"
        );
    }
    for word in [
        "delay",
        "latency",
        "elapsed",
        "rtt",
        "round_trip",
        "surb_id",
    ] {
        assert!(
            !logs.to_lowercase().contains(word),
            "per-packet timing or id at info: {word}\n{logs}"
        );
    }
    // Logs do not grow with traffic: far fewer info lines than packets.
    assert!(packets >= 200, "too little traffic to judge: {packets}");
    assert!(
        (lines.len() as u64) * 4 < packets,
        "{} info lines for {packets} packets: something logs per packet\n{logs}",
        lines.len()
    );
    eprintln!(
        "privacy: {} info lines for {packets} packets, {} secrets checked",
        lines.len(),
        secrets.len()
    );
}

/// Blanks what differs between any two random-looking packets: the group element's first bytes
/// and the entropy figure.
fn normalised(report: &str) -> String {
    report
        .lines()
        .map(|l| {
            if l.contains("group element") {
                "  header: group element …".to_owned()
            } else if l.contains("entropy") {
                "  entropy …".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn entropy(report: &str) -> f64 {
    report
        .lines()
        .find(|l| l.contains("entropy"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn real_and_cover_packets_are_the_same_size_and_inspect_alike() {
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let directory = net.directory().clone();
    let mailboxes = net.mailbox_relays();
    let (own, other) = (mailboxes[0], mailboxes[1]);
    let me = MailboxKey::generate(&mut rand::rng());
    let peer = SporeAddress {
        mailbox_relays: vec![other],
        mailbox_key: MailboxKey::generate(&mut rand::rng()).public().to_bytes(),
    };
    let mut rng = rand::rng();
    let routes = RouteSelector::new(&directory, directory.epoch);
    let mu = 1000.0;
    let max_delay = Duration::from_secs(10);

    // Built the way the client's PacketFactory builds them (real fragment with a SURB-ack,
    // loop cover = a fragment to ourselves, drop cover = random payload to the drop mailbox).
    let fragment_to = |dest: &SporeAddress, rng: &mut rand::rngs::ThreadRng| {
        let sealed = seal::seal(
            &mut rand::rng(),
            &dest.mailbox_public_key(),
            &vec![7u8; FRAGMENT_SIZE],
        )
        .unwrap();
        assert_eq!(sealed.len(), SEALED_FRAGMENT_SIZE);
        let surb_route = routes.surb_route(rng, &own).unwrap();
        let d = sample_delays(rng, mu, SURB_HOPS, max_delay).unwrap();
        let (surb, _) = build_surb(
            &surb_route,
            me.mailbox_id(),
            random_surb_id(&mut rand::rng()),
            &d,
        )
        .unwrap();
        let payload = ForwardPayload {
            ack_surb: surb,
            sealed_fragment: sealed,
        }
        .encode()
        .unwrap();
        let route = routes
            .forward_route(rng, &own, &dest.mailbox_relays[0])
            .unwrap();
        let d = sample_delays(rng, mu, FORWARD_HOPS, max_delay).unwrap();
        build_packet(
            &route,
            dest.mailbox_id(),
            random_surb_id(&mut rand::rng()),
            &d,
            &payload,
        )
        .unwrap()
    };
    let real = fragment_to(&peer, &mut rng);
    let me_address = SporeAddress {
        mailbox_relays: vec![own],
        mailbox_key: me.public().to_bytes(),
    };
    let loop_cover = fragment_to(&me_address, &mut rng);
    let drop_cover = {
        use rand::Rng;
        let mut ack_surb = vec![0u8; SURB_SIZE];
        rng.fill_bytes(&mut ack_surb);
        let mut sealed_fragment = vec![0u8; SEALED_FRAGMENT_SIZE];
        rng.fill_bytes(&mut sealed_fragment);
        let payload = ForwardPayload {
            ack_surb,
            sealed_fragment,
        }
        .encode()
        .unwrap();
        let relay = routes.random_mailbox_relay(&mut rng).unwrap();
        let route = routes.forward_route(&mut rng, &own, &relay).unwrap();
        let d = sample_delays(&mut rng, mu, FORWARD_HOPS, max_delay).unwrap();
        build_packet(
            &route,
            MailboxId::DROP,
            random_surb_id(&mut rand::rng()),
            &d,
            &payload,
        )
        .unwrap()
    };

    let reports: Vec<_> = [&real, &loop_cover, &drop_cover]
        .iter()
        .map(|p| {
            assert_eq!(p.len(), PACKET_SIZE);
            spore_tools::inspect::inspect(p)
        })
        .collect();
    for r in &reports {
        assert_eq!(r.kind, spore_tools::inspect::Kind::SphinxPacket);
        assert!(
            r.text.contains("passes the relay's pre-crypto checks"),
            "{}",
            r.text
        );
        assert!(entropy(&r.text) > 7.6, "{}", r.text);
    }
    assert_eq!(normalised(&reports[0].text), normalised(&reports[1].text));
    assert_eq!(normalised(&reports[0].text), normalised(&reports[2].text));
    let _ = net.shutdown().await;
}
