//! Hostile peers: arbitrary bytes and arbitrary frames never panic the relay or cost it a
//! working link for others.

use std::time::Duration;

use rand::RngExt;
use spore_protocol::link::{Frame, LinkErrorCode, MailboxItem, PullSlot};
use spore_protocol::params::{PACKET_SIZE, PAYLOAD_SIZE};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::util::*;

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
    let owner = mailbox_key();
    let p = plain_packet(
        &[relay.hop()],
        owner.mailbox_id(),
        &[Duration::ZERO],
        b"still here",
    );
    send_packets(&relay, &[p]).await;
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
    relay.shutdown().await;
}

#[tokio::test]
async fn random_records_after_the_handshake_close_the_link() {
    let relay = TestRelay::start().await;
    let link = relay.link(&rand::random()).await;
    let mut s = link.writer;
    // Not a sealed frame: the relay must drop the link, not panic.
    s.flush().await.unwrap();
    drop(s);
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    let mut junk = vec![0u8; 4096];
    rand::rng().fill(&mut junk[..]);
    let _ = stream.write_all(&junk).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(relay.r().metrics().dropped("handshake_failed") >= 1);
    relay.shutdown().await;
}
