//! Sphinx packets built with the protocol crate the way a client would, for tests that talk to
//! relays directly, and a sender that writes them on a fresh link.

use std::time::Duration;

use spore_protocol::MailboxId;
use spore_protocol::link::Frame;
use spore_protocol::packet::{self, ForwardPayload, RouteHop};
use spore_protocol::params::{PACKET_SIZE, SEALED_FRAGMENT_SIZE};
use spore_relay::Link;

/// A forward packet on `route` for `mailbox` with a plain message (no SURB-ack).
pub fn plain_packet(
    route: &[RouteHop],
    mailbox: MailboxId,
    delays: &[Duration],
    msg: &[u8],
) -> Vec<u8> {
    packet::build_packet(
        route,
        mailbox,
        packet::random_surb_id(&mut rand::rng()),
        delays,
        msg,
    )
    .expect("a valid route builds a packet")
}

/// A one-hop packet to `mailbox` at `hop`, no delay.
pub fn packet_to(hop: RouteHop, mailbox: MailboxId, msg: &[u8]) -> Vec<u8> {
    plain_packet(&[hop], mailbox, &[Duration::ZERO], msg)
}

/// A forward packet with surb id `surb_id`, carrying a SURB-ack that comes back over
/// `ack_route` to `ack_mailbox` with id `ack_id`. No delays.
pub fn acked_packet_with_ids(
    route: &[RouteHop],
    mailbox: MailboxId,
    surb_id: [u8; 16],
    ack_route: &[RouteHop],
    ack_mailbox: MailboxId,
    ack_id: [u8; 16],
) -> Vec<u8> {
    let (surb, _recovery) = packet::build_surb(
        ack_route,
        ack_mailbox,
        ack_id,
        &vec![Duration::ZERO; ack_route.len()],
    )
    .expect("a valid route builds a SURB");
    let payload = ForwardPayload {
        ack_surb: surb,
        sealed_fragment: vec![0x5a; SEALED_FRAGMENT_SIZE],
    }
    .encode()
    .expect("a SURB and a sealed fragment fit a payload");
    packet::build_packet(
        route,
        mailbox,
        surb_id,
        &vec![Duration::ZERO; route.len()],
        &payload,
    )
    .expect("a valid route builds a packet")
}

/// A forward packet carrying a SURB-ack that comes back over `ack_route` to `ack_mailbox`.
/// Returns the packet and the ack's SURB id.
pub fn acked_packet(
    route: &[RouteHop],
    mailbox: MailboxId,
    ack_route: &[RouteHop],
    ack_mailbox: MailboxId,
) -> (Vec<u8>, [u8; 16]) {
    let ack_id = packet::random_surb_id(&mut rand::rng());
    let p = acked_packet_with_ids(
        route,
        mailbox,
        packet::random_surb_id(&mut rand::rng()),
        ack_route,
        ack_mailbox,
        ack_id,
    );
    (p, ack_id)
}

/// A packet as a link frame.
pub fn packet_frame(p: &[u8]) -> Frame {
    let p: Box<[u8; PACKET_SIZE]> = p
        .to_vec()
        .into_boxed_slice()
        .try_into()
        .expect("a packet is PACKET_SIZE bytes");
    Frame::Packet(p)
}

/// Writes `packets` on `link` and flushes.
pub async fn write_packets(link: &mut Link, packets: &[Vec<u8>]) {
    for p in packets {
        link.writer
            .write_frame(&packet_frame(p))
            .await
            .expect("link write");
    }
    link.writer.flush().await.expect("link flush");
}

/// Sends `packets` on `link`, then closes it cleanly and waits (up to 2 s) for the relay to
/// close its side, so the relay has seen every frame.
pub async fn send_and_close(mut link: Link, packets: &[Vec<u8>]) {
    write_packets(&mut link, packets).await;
    link.writer.shutdown().await.expect("link shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), link.reader.read_frame()).await;
}
