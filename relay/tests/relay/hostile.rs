//! Hostile peers: arbitrary bytes and arbitrary frames never panic the relay or cost it a
//! working link for others.

use std::net::Ipv4Addr;
use std::time::Duration;

use rand::RngExt;
use spore_protocol::link::WIRE_FRAME_LEN;
use spore_protocol::link::{Frame, LinkErrorCode, MailboxItem, PullSlot};
use spore_protocol::params::{PACKET_SIZE, PAYLOAD_SIZE};
use spore_relay::Link;
use spore_relay::connect_handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use spore_protocol::MailboxKey;
use spore_testkit::{TestRelay, plain_packet, pull, wait_until};

use super::lockout::{connect_from, honest_probe};

fn random_frame(rng: &mut impl rand::Rng) -> Frame {
    match rng.random_range(0..8u8) {
        0..=2 => {
            let mut p = Box::new([0u8; PACKET_SIZE]);
            rng.fill(&mut p[..]);
            if rng.random_bool(0.2) {
                p[..32].fill(0); // low-order point
            }
            Frame::Packet(p)
        }
        3 => Frame::PullRequest,
        4 => Frame::Delete {
            handles: (0..rng.random_range(0..=128))
                .map(|_| rng.random())
                .collect(),
        },
        5 => Frame::Padding,
        6 => Frame::PullSlot(PullSlot {
            index: 0,
            item: Some(MailboxItem {
                handle: 1,
                surb_id: [1; 16],
                payload: Box::new([0; PAYLOAD_SIZE]),
            }),
        }),
        _ => Frame::Error {
            code: LinkErrorCode::Protocol,
        },
    }
}

#[tokio::test]
async fn arbitrary_bytes_and_frames_from_a_socket_do_not_panic() {
    let relay = TestRelay::start_with(|c| c.limits.handshake_timeout_ms = 300).await;
    let mut rng = rand::rng();

    // Raw garbage before and instead of a handshake, including oversized length prefixes.
    for len in [0usize, 1, 2, 3, 50, 97, 5000] {
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk[..]);
        if len >= 2 && rng.random_bool(0.5) {
            junk[..2].copy_from_slice(&u16::MAX.to_be_bytes());
        }
        let _ = s.write_all(&junk).await;
        drop(s);
    }
    // A connection that says nothing: the handshake deadline closes it.
    let silent = TcpStream::connect(relay.addr()).await.unwrap();

    // Garbage after a good handshake: random records fail authentication.
    {
        let link = relay.link(&rand::random()).await;
        let mut raw = link.writer;
        let _ = raw.flush().await;
        drop(raw);
    }

    // Every frame type, in random order, from an authenticated peer.
    for _ in 0..20 {
        let mut link = relay.link(&rand::random()).await;
        for _ in 0..rng.random_range(1..40) {
            let f = random_frame(&mut rng);
            if link.writer.write_frame(&f).await.is_err() {
                break;
            }
        }
        let _ = link.writer.flush().await;
    }
    drop(silent);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The relay still works for an honest client.
    let owner = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"still here",
    );
    relay.send(&[p]).await;
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .r()
            .metrics()
            .packets_stored
            >= 1)
        .await,
        "{:?}",
        relay.r().metrics()
    );
    let mut link = relay.link(&owner.secret_bytes()).await;
    assert_eq!(pull(&mut link).await.len(), 1);
    let m = relay.r().metrics();
    assert!(m.dropped_total() > 0);
    assert_eq!(m.dropped("internal_panic"), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn random_records_after_the_handshake_close_the_link() {
    let relay = TestRelay::start().await;
    for len in [
        1usize,
        WIRE_FRAME_LEN - 1,
        WIRE_FRAME_LEN,
        3 * WIRE_FRAME_LEN,
    ] {
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        connect_handshake(
            &mut s,
            &rand::random(),
            Some(relay.keys.link_public()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut junk = vec![0u8; len];
        rand::rng().fill(&mut junk[..]);
        s.write_all(&junk).await.unwrap();
        s.shutdown().await.unwrap();
        // The relay closes the link: reading ends.
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .r()
            .metrics()
            .dropped("bad_frame")
            >= 3)
        .await,
        "{:?}",
        relay.r().metrics()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn connection_cap_holds_further_links_until_one_closes() {
    let relay = TestRelay::start_with(|c| c.limits.max_connections = 1).await;
    let first = relay.link(&rand::random()).await;
    let second = Link::connect_timeout(
        &relay.addr(),
        &rand::random(),
        Some(relay.keys.link_public()),
        Duration::from_millis(300),
    )
    .await;
    assert!(second.is_err(), "no handshake beyond the cap");
    drop(first);
    let third = Link::connect_timeout(
        &relay.addr(),
        &rand::random(),
        Some(relay.keys.link_public()),
        Duration::from_secs(5),
    )
    .await;
    assert!(third.is_ok());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_link_sending_too_fast_is_rate_limited() {
    let relay = TestRelay::start_with(|c| {
        c.limits.packets_per_sec = 1;
        c.limits.packet_burst = 5;
    })
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let packets: Vec<_> = (0..20u8)
        .map(|i| plain_packet(&[relay.hop()], owner.mailbox_id(), &[Duration::ZERO], &[i]))
        .collect();
    relay.send(&packets).await;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = relay.r().metrics();
            m.dropped("rate_limited") >= 14 && m.packets_stored >= 5
        })
        .await,
        "{:?}",
        relay.r().metrics()
    );
    assert!(relay.r().metrics().packets_stored <= 6);
    relay.shutdown().await;
}

#[tokio::test]
async fn mutated_and_random_packets_never_panic_the_workers() {
    let relay = TestRelay::start().await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let valid = plain_packet(
        &[relay.hop(), relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO; 2],
        b"seed",
    );
    let mut rng = rand::rng();
    let n = 3000u64;
    for i in 0..n {
        let mut p = Box::new([0u8; PACKET_SIZE]);
        if i % 2 == 0 {
            rng.fill(&mut p[..]);
        } else {
            p.copy_from_slice(&valid);
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..PACKET_SIZE);
                p[at] ^= 1 << rng.random_range(0..8);
            }
            if i % 7 == 1 {
                p[..32].fill(0);
                p[31] = rng.random_range(0..2);
            }
        }
        relay.r().inject_packet(p);
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"after",
    );
    relay.send(&[p]).await;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let m = relay.r().metrics();
            m.unwrap_queue == 0 && m.packets_stored >= 1 && m.dropped_total() >= n / 2
        })
        .await,
        "{:?}",
        relay.r().metrics()
    );
    assert_eq!(relay.r().metrics().dropped("internal_panic"), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let relay = TestRelay::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let _a = relay.link(&rand::random()).await;
    let _b = relay.link(&rand::random()).await;
    let third = Link::connect_timeout(
        &relay.addr(),
        &rand::random(),
        Some(relay.keys.link_public()),
        Duration::from_secs(2),
    )
    .await;
    assert!(third.is_err());
    assert_eq!(relay.r().metrics().dropped("per_ip_limit"), 1);
    drop(_a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        Link::connect_timeout(
            &relay.addr(),
            &rand::random(),
            Some(relay.keys.link_public()),
            Duration::from_secs(2),
        )
        .await
        .is_ok()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_held_open_without_frames_do_not_lock_out_an_honest_client() {
    let relay = TestRelay::start_with(|c| {
        c.limits.max_connections = 128;
        c.limits.max_connections_per_ip = 64; // per /24 prefix
    })
    .await;
    let addr = relay.addr();
    let key = relay.keys.link_public();

    // 16 attacker addresses in 4 /24 prefixes, 64 handshakes each, held without a frame.
    let mut attempts = Vec::new();
    for prefix in 10..14u8 {
        for host in 1..5u8 {
            for _ in 0..64 {
                let addr = addr.clone();
                attempts.push(tokio::spawn(async move {
                    let mut s =
                        connect_from(std::net::Ipv4Addr::new(127, 0, prefix, host), &addr).await?;
                    let t = connect_handshake(&mut s, &rand::random(), Some(key), WAIT_HS)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    Ok::<_, std::io::Error>((s, t))
                }));
            }
        }
    }
    let mut held = Vec::new();
    for a in attempts {
        if let Ok(Ok(link)) = a.await {
            held.push(link);
        }
    }
    let handshaken = held.len();
    // Let the held links go quiet.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Honest probes from another prefix: each connects, sends, and finds its packet stored.
    let probes = 20;
    let mut delivered = 0;
    for i in 0..probes {
        if honest_probe(&addr, key, relay.hop(), Ipv4Addr::new(127, 0, 1, 1), i).await {
            delivered += 1;
        }
    }
    let m = relay.r().metrics();
    eprintln!(
        "admission: 1024 attacker handshakes from 16 addresses in 4 /24s, {handshaken} \
         completed, {} refused by the prefix cap, {} refused for full slots, {} evicted; \
         honest probes delivered {delivered}/{probes}, {} links open",
        m.dropped("per_ip_limit"),
        m.dropped("link_slots_full"),
        m.dropped("link_evicted"),
        m.connections_open,
    );
    assert_eq!(delivered, probes, "every honest probe gets in and delivers");
    assert!(m.dropped("per_ip_limit") > 0, "the prefix cap refused some");
    assert!(
        m.connections_open <= 128,
        "open links stay within the client slots: {}",
        m.connections_open
    );
    drop(held);
}

const WAIT_HS: Duration = Duration::from_secs(5);
