//! A relay's whole per-packet path on arbitrary bytes: parse, prepare, unwrap; and the mailbox
//! relay's look at a final payload.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spore_protocol::packet::{IncomingPacket, PacketLimits, ack_surb_of, use_surb, ACK_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let key = x25519_dalek::StaticSecret::from([7u8; 32]);
    let limits = PacketLimits::default();
    if let Ok(p) = IncomingPacket::parse(data, &limits)
        && let Ok(p) = p.prepare(&key)
    {
        let _ = p.replay_tag();
        let _ = p.unwrap(&limits);
    }
    if let Some(surb) = ack_surb_of(data) {
        let _ = use_surb(&surb, ACK_MESSAGE);
    }
    let _ = use_surb(data, ACK_MESSAGE);
});
