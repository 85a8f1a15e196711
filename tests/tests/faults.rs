//! Faults and load: links cut mid-handshake and mid-frame, a mailbox relay offline for a while,
//! and an overload at five times a relay's capacity. Nothing acknowledged may be lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use spore_client::Transport;
use spore_protocol::link::Frame;
use spore_protocol::link::WIRE_FRAME_LEN;
use spore_protocol::packet;
use spore_protocol::params::PACKET_SIZE;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_relay::connect_handshake;
use spore_testkit::{
    TestRelay, Testnet, TestnetConfig, acked_packet_with_ids, delete, packet_frame, packet_to, pull,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{init_tracing, receive_distinct, start_client, transaction, wait_until, within};

const WAIT: Duration = Duration::from_secs(15);

fn system_clock() -> Arc<dyn spore_relay::Clock> {
    Arc::new(spore_relay::SystemClock)
}

/// A random packet with a usable group element: costs the relay a full X25519 and MAC check
/// before it is dropped (`bad_mac`), the most expensive garbage an attacker can send.
fn garbage_packet() -> Box<[u8; PACKET_SIZE]> {
    let mut p = Box::new([0u8; PACKET_SIZE]);
    rand::rng().fill_bytes(&mut p[..]);
    p
}

/// Cheap garbage for a flood: `base` with a counter in its group element (a fresh point for
/// every packet, so the relay pays a full X25519 and MAC check for each).
fn garbage_from(base: &[u8; PACKET_SIZE], n: u64) -> Box<[u8; PACKET_SIZE]> {
    let mut p = Box::new(*base);
    p[..8].copy_from_slice(&n.to_le_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_cut_mid_handshake_or_mid_frame_lose_only_the_partial_frame() {
    let relay =
        TestRelay::start_full(|_| {}, spore_relay::DirectorySource::None, system_clock()).await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let hop = relay.hop_for(relay.r().current_epoch());
    let addr = relay.r().local_addr();
    let mut complete = 0u64;
    for round in 0..12u32 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        match round % 3 {
            // Cut inside the handshake: a length prefix and half a message.
            0 => {
                s.write_all(&[0, 48]).await.unwrap();
                s.write_all(&[1; 20]).await.unwrap();
            }
            // Whole frames, then half of one.
            _ => {
                let (transport, _) = connect_handshake(
                    &mut s,
                    &rand::random(),
                    Some(relay.keys.link_public()),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
                let (mut sealer, _) = transport.split();
                let whole = round % 4;
                for i in 0..=whole {
                    let p = packet_to(hop, owner.mailbox_id(), &round.to_be_bytes());
                    let frame = packet_frame(&p);
                    let mut wire = Box::new([0u8; WIRE_FRAME_LEN]);
                    sealer.seal(&frame, &mut wire).unwrap();
                    if i < whole {
                        s.write_all(&wire[..]).await.unwrap();
                        complete += 1;
                    } else {
                        let cut = 1 + (round as usize * 97) % (WIRE_FRAME_LEN - 1);
                        s.write_all(&wire[..cut]).await.unwrap();
                    }
                }
            }
        }
        s.flush().await.unwrap();
        drop(s);
    }
    assert!(
        wait_until(WAIT, || relay.r().metrics().packets_stored == complete).await,
        "{complete} whole frames: {:?}",
        relay.r().metrics()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = relay.r().metrics();
    assert_eq!(m.packets_stored, complete, "a partial frame was stored");
    assert_eq!(m.dropped("internal_panic"), 0);
    assert!(m.dropped("handshake_failed") >= 4, "{m:?}");
    // Still serving.
    let mut link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut link).await;
    assert_eq!(items.len() as u64, complete.min(16));
    relay.shutdown().await;
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_at_five_times_capacity_keeps_pulls_answered_and_acked_packets() {
    let relay = TestRelay::start_full(
        |c| {
            c.mix.workers = 1;
            c.limits.unwrap_queue = 1024;
        },
        spore_relay::DirectorySource::None,
        system_clock(),
    )
    .await;
    let relay = Arc::new(relay);
    let (owner, sender) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let hop = relay.hop_for(relay.r().current_epoch());

    // Capacity: how fast the worker disposes of garbage with nothing else going on (fewer
    // packets than the queue holds, so none is dropped for lack of room).
    let probe = 1000u64;
    let mut link = relay.link(&rand::random()).await;
    let t0 = Instant::now();
    for _ in 0..probe {
        link.writer
            .write_frame(&Frame::Packet(garbage_packet()))
            .await
            .unwrap();
    }
    link.writer.flush().await.unwrap();
    assert!(wait_until(WAIT, || relay.r().metrics().dropped_total() >= probe).await);
    let capacity = probe as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(relay.r().metrics().dropped("unwrap_queue_full"), 0);
    drop(link);

    // Real acked packets, built before the storm (building is the client's cost, not ours).
    let n_real = 150;
    let mut ack_ids = HashMap::new();
    let mut real = Vec::new();
    for i in 0..n_real {
        let ack_id = packet::random_surb_id(&mut rand::rng());
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&(i as u32).to_be_bytes());
        let p = acked_packet_with_ids(
            &[hop],
            owner.mailbox_id(),
            id,
            &[hop],
            sender.mailbox_id(),
            ack_id,
        );
        ack_ids.insert(ack_id, i as u32);
        real.push(p);
    }

    let base_rss = resident_kib();
    let before = relay.r().metrics();
    let storm = Duration::from_secs(4);
    let offered_per_sec = capacity * 5.0;
    let deadline = Instant::now() + storm;
    let mut floods = Vec::new();
    for _ in 0..4 {
        let relay = relay.clone();
        floods.push(tokio::spawn(async move {
            let base = garbage_packet();
            let mut link = relay.link(&rand::random()).await;
            let per_link = offered_per_sec / 4.0;
            let started = Instant::now();
            let mut sent = 0u64;
            while Instant::now() < deadline {
                // Pace to the offered rate in bursts of 64.
                for _ in 0..64 {
                    if link
                        .writer
                        .write_frame(&Frame::Packet(garbage_from(&base, sent)))
                        .await
                        .is_err()
                    {
                        return sent;
                    }
                    sent += 1;
                }
                let _ = link.writer.flush().await;
                let due = started + Duration::from_secs_f64(sent as f64 / per_link);
                tokio::time::sleep_until(due.into()).await;
            }
            sent
        }));
    }
    // Real traffic through the storm, paced evenly.
    let relay2 = relay.clone();
    let realtask = tokio::spawn(async move {
        let mut link = relay2.link(&rand::random()).await;
        let gap = storm / (n_real as u32);
        for p in real {
            link.send(&packet_frame(&p)).await.unwrap();
            tokio::time::sleep(gap).await;
        }
    });
    // The owner keeps pulling (and must keep getting answers); the sender collects acks.
    let mut owner_link = relay.link(&owner.secret_bytes()).await;
    let mut ack_link = relay.link(&sender.secret_bytes()).await;
    let mut received = HashSet::new();
    let mut acked = HashSet::new();
    let mut worst_pull = Duration::ZERO;
    let mut peak_rss = base_rss;
    let mut pulls = 0;
    let end = deadline + Duration::from_secs(3);
    while Instant::now() < end {
        let t = Instant::now();
        let items = within(
            Duration::from_secs(10),
            "a pull under overload",
            pull(&mut owner_link),
        )
        .await;
        worst_pull = worst_pull.max(t.elapsed());
        pulls += 1;
        for i in &items {
            received.insert(u32::from_be_bytes(i.surb_id[..4].try_into().unwrap()));
        }
        if !items.is_empty() {
            delete(&mut owner_link, items.iter().map(|i| i.handle).collect()).await;
        }
        let acks = pull(&mut ack_link).await;
        for a in &acks {
            if let Some(i) = ack_ids.get(&a.surb_id) {
                acked.insert(*i);
            }
        }
        if !acks.is_empty() {
            delete(&mut ack_link, acks.iter().map(|i| i.handle).collect()).await;
        }
        peak_rss = peak_rss.max(resident_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut offered = 0;
    for f in floods {
        offered += f.await.unwrap();
    }
    realtask.await.unwrap();
    // Drain what is left.
    for _ in 0..20 {
        let items = pull(&mut owner_link).await;
        for i in &items {
            received.insert(u32::from_be_bytes(i.surb_id[..4].try_into().unwrap()));
        }
        if items.is_empty() {
            break;
        }
        delete(&mut owner_link, items.iter().map(|i| i.handle).collect()).await;
    }
    let after = relay.r().metrics();
    let dropped = after.dropped_total() - before.dropped_total();
    let queue_full = after.dropped("unwrap_queue_full") - before.dropped("unwrap_queue_full");
    let lost: Vec<_> = acked.difference(&received).collect();
    let report = format!(
        "overload: capacity {capacity:.0} pkt/s, offered {offered} garbage packets in {}s \
         ({:.1}x quiet capacity, {:.1}x what was processed), {dropped} dropped ({queue_full} at the full unwrap queue), {pulls} pulls, \
         worst pull {worst_pull:?}, RSS {} -> {} MiB, {} of {n_real} real packets acked, \
         {} received, {} acked-but-lost",
        storm.as_secs(),
        offered as f64 / storm.as_secs_f64() / capacity,
        offered as f64 / (dropped - queue_full).max(1) as f64,
        base_rss / 1024,
        peak_rss / 1024,
        acked.len(),
        received.len(),
        lost.len()
    );
    eprintln!("{report}");
    assert!(lost.is_empty(), "{report}");
    assert!(queue_full > 0, "the storm never filled the queue: {report}");
    // The flood is paced at 5x the quiet capacity; two shared cores may not always reach it
    // (the generator competes with the relay for CPU), so 3x is the floor.
    assert!(
        offered as f64 / storm.as_secs_f64() >= 3.0 * capacity,
        "the storm was too weak to judge: {report}"
    );
    assert!(worst_pull < Duration::from_secs(5), "{report}");
    assert!(
        peak_rss.saturating_sub(base_rss) < 256 * 1024,
        "memory grew under overload: {report}"
    );
    assert!(!acked.is_empty(), "{report}");
    assert_eq!(after.dropped("internal_panic"), 0);
    Arc::try_unwrap(relay)
        .ok()
        .expect("no other owner")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_relay_offline_for_a_while_then_back_loses_nothing() {
    relay_offline_then_back("bob's mailbox relay", |net, mailboxes| {
        net.index_of(&mailboxes[1]).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_mix_layer_offline_for_a_while_then_back_loses_nothing() {
    // One mix per layer in the default testnet: stopping layer 2's mix takes the layer down.
    relay_offline_then_back("mix layer 2", |net, _| {
        net.mix_indexes()
            .into_iter()
            .find(|i| net.role(*i) == Some(spore_testkit::RelayRole::Mix { layer: 2 }))
            .unwrap()
    })
    .await;
}

/// Alice sends 20 transactions to offline Bob; the relay `pick` chooses is stopped while the
/// second half is sent and comes back 4 s later. Bob then gets each transaction exactly once.
async fn relay_offline_then_back(
    label: &str,
    pick: impl Fn(&Testnet, &[spore_protocol::RelayId]) -> usize,
) {
    init_tracing();
    let mut net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 100.0).await;
    let n = 20;
    for i in 0..n / 2 {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    // The relay goes away while the rest is sent, for a few seconds.
    let index = pick(&net, &mailboxes);
    net.stop_relay(index).await.unwrap();
    for i in n / 2..n {
        alice
            .send(&bob_address, transaction("alice.example", i))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    net.restart_relay(index).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    let stats = alice.stats();

    let bob = start_client(&net, data.path(), "bob", mailboxes[1], bob_key, 50.0).await;
    let counts = receive_distinct(&bob, n, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bob.inbox_len(), 0, "a duplicate reached the inbox");
    assert!(counts.values().all(|c| *c == 1), "{counts:?}");
    assert_eq!(stats.messages_failed, 0, "{stats:?}");
    eprintln!(
        "{label} offline 4 s: {n} transactions delivered once, {} retransmissions",
        stats.retransmissions
    );
    alice.shutdown().await;
    bob.shutdown().await;
    let _ = net.shutdown().await;
}

#[tokio::test]
async fn clock_skew_across_an_epoch_boundary_is_tolerated_within_grace_and_counted_beyond() {
    use spore_relay::{DirectorySource, ManualClock};
    // Epochs of 100 s, 10 s grace. The relay's clock starts 25 s before the boundary of
    // epoch 10^7; senders with skewed clocks pick the key of the epoch *they* think it is.
    let boundary = 100 * 10_000_000 + 100;
    let clock = ManualClock::new(std::time::UNIX_EPOCH + Duration::from_secs(boundary - 25));
    let relay = TestRelay::start_full(
        |c| {
            c.mix.epoch_length_secs = 100;
            c.mix.grace_secs = 10;
        },
        DirectorySource::None,
        Arc::new(clock.clone()),
    )
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let epoch = relay.r().current_epoch();
    let old_key = relay.hop_for(epoch);
    let new_key = relay.hop_for(epoch + 1);
    let stored = || relay.r().metrics().packets_stored;
    let bad_mac = || relay.r().metrics().dropped("bad_mac");

    // 25 s before the boundary, a sender 30 s fast already uses the next key: too early.
    relay
        .send(&[packet_to(new_key, owner.mailbox_id(), b"30 s fast")])
        .await;
    assert!(wait_until(WAIT, || bad_mac() == 1).await);
    // 5 s before the boundary, a sender 8 s fast: the next key is accepted within grace.
    clock.advance(Duration::from_secs(20));
    relay
        .send(&[packet_to(new_key, owner.mailbox_id(), b"8 s fast")])
        .await;
    assert!(wait_until(WAIT, || stored() == 1).await);
    // 3 s after the boundary, a sender 8 s slow still uses the old key: accepted within grace.
    clock.advance(Duration::from_secs(8));
    assert_eq!(relay.r().current_epoch(), epoch + 1);
    relay
        .send(&[packet_to(old_key, owner.mailbox_id(), b"8 s slow")])
        .await;
    assert!(wait_until(WAIT, || stored() == 2).await);
    // 20 s after the boundary, a sender 30 s slow: the old key is gone.
    clock.advance(Duration::from_secs(17));
    relay
        .send(&[packet_to(old_key, owner.mailbox_id(), b"30 s slow")])
        .await;
    assert!(
        wait_until(WAIT, || bad_mac() == 2).await,
        "{:?}",
        relay.r().metrics()
    );
    assert_eq!(stored(), 2);
    relay.shutdown().await;
}

/// A sender whose acks come back slowly (it pulls its own mailbox once a second, 16 items a
/// pull, while its ack timeout is a fraction of that) sends a burst of 96 fragments. Without a
/// congestion window every late ack would trigger a retransmission whose own ack joins the
/// backlog; with it, retransmissions stay a small fraction of the fragments and all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_acks_are_slow_does_not_storm() {
    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let bob = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: MailboxKey::generate(&mut rand::rng()).public().to_bytes(),
    };
    let mut config = net.client_config("alice.example", mailboxes[0], data.path().join("alice"));
    config.rates = spore_client::RateOverrides {
        lambda_p: Some(200.0),
        lambda_l: Some(0.0),
        lambda_d: Some(1.0),
        mu: Some(1000.0),
        pull_interval: Some(Duration::from_secs(1)),
    };
    config.timeouts.ack_margin = Duration::from_millis(100);
    config.timeouts.max_backoff = Duration::from_millis(500);
    let alice = Transport::start(config).await.unwrap();
    let n = 96;
    for i in 0..n {
        alice
            .send(&bob, transaction("alice.example", i))
            .await
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    let stats = alice.stats();
    eprintln!("slow acks: {stats:?}");
    assert_eq!(stats.acks, n as u64, "{stats:?}");
    // Without the window this run retransmits about two thirds of the fragments (64 of 96
    // when measured), and more the longer the backlog lasts; with it, next to none.
    assert!(
        stats.retransmissions <= n as u64 / 3,
        "{} retransmissions for {n} fragments: {stats:?}",
        stats.retransmissions
    );
    alice.shutdown().await;
    let _ = net.shutdown().await;
}
