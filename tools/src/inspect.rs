//! `spore inspect`: decode what Spore puts on a wire or a disk, and say plainly what an outside
//! observer can and cannot learn from it.
//!
//! Recognised by length or structure: a Sphinx packet (exactly `PACKET_SIZE` bytes), a link
//! frame as it crosses the network (`WIRE_FRAME_LEN` bytes of Noise ciphertext), a plaintext
//! link frame (`FRAME_LEN`, as a debugging relay would see it), a directory document, a relay
//! descriptor, or a Spore address.

use std::fmt::Write;

use spore_protocol::SporeAddress;
use spore_protocol::directory::{Directory, RelayDescriptor};
use spore_protocol::link::{FRAME_LEN, Frame, WIRE_FRAME_LEN};
use spore_protocol::packet::{IncomingPacket, PacketLimits};
use spore_protocol::params::{HEADER_SIZE, PACKET_SIZE, PAYLOAD_SIZE};

/// What kind of thing the bytes were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SphinxPacket,
    WireFrame,
    PlainFrame,
    Directory,
    Descriptor,
    SporeAddress,
    Unknown,
}

/// The report `spore inspect` prints.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub kind: Kind,
    pub text: String,
}

/// Bytes from a file or `--hex`. A text file holding hex or a `spore:` address is decoded first.
pub fn decode_input(raw: &[u8]) -> Vec<u8> {
    if let Ok(text) = std::str::from_utf8(raw) {
        let t = text.trim();
        if t.starts_with("spore:") {
            return t.as_bytes().to_vec();
        }
        if let Ok(b) = hex::decode(t) {
            return b;
        }
    }
    raw.to_vec()
}

fn entropy_bits_per_byte(bytes: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for b in bytes {
        counts[usize::from(*b)] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

pub fn inspect(bytes: &[u8]) -> Inspection {
    let mut t = String::new();
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(addr) = SporeAddress::from_text(text)
    {
        let _ = writeln!(t, "Spore address (what a homeserver publishes)");
        let _ = writeln!(t, "  mailbox relays: {}", addr.mailbox_relays.len());
        for r in &addr.mailbox_relays {
            let _ = writeln!(t, "    {r}");
        }
        let _ = writeln!(t, "  mailbox key:    {}", hex::encode(addr.mailbox_key));
        let _ = writeln!(
            t,
            "  observer learns: which relays hold this mailbox; nothing about who writes to it."
        );
        return Inspection {
            kind: Kind::SporeAddress,
            text: t,
        };
    }
    match bytes.len() {
        PACKET_SIZE => {
            let _ = writeln!(
                t,
                "Sphinx packet, {PACKET_SIZE} bytes (version 260 framing)"
            );
            let _ = writeln!(
                t,
                "  header {HEADER_SIZE} B: group element {}…, MAC and routing info (encrypted)",
                hex::encode(&bytes[..8])
            );
            let _ = writeln!(t, "  payload {PAYLOAD_SIZE} B (layer-encrypted, Lioness)");
            let checks = match IncomingPacket::parse(bytes, &PacketLimits::default()) {
                Ok(_) => "passes the relay's pre-crypto checks (size, group element)".to_string(),
                Err(e) => format!("a relay would drop it before unwrapping: {e}"),
            };
            let _ = writeln!(t, "  {checks}");
            let _ = writeln!(
                t,
                "  payload byte entropy: {:.2} bits/byte (8.00 = uniform)",
                entropy_bits_per_byte(&bytes[HEADER_SIZE..])
            );
            let _ = writeln!(
                t,
                "  an observer CAN learn: that a packet of the fixed size passed, when, and on which link."
            );
            let _ = writeln!(
                t,
                "  an observer CANNOT learn: sender, recipient, route, hop position, per-hop delay,"
            );
            let _ = writeln!(
                t,
                "    whether it is real, loop cover, drop cover, an ack or a reply; the group element"
            );
            let _ = writeln!(
                t,
                "    is re-blinded at every hop, so the same packet looks unrelated on the next link."
            );
            Inspection {
                kind: Kind::SphinxPacket,
                text: t,
            }
        }
        WIRE_FRAME_LEN => {
            let _ = writeln!(
                t,
                "Link frame as seen on the network: {WIRE_FRAME_LEN} bytes of Noise ciphertext"
            );
            let _ = writeln!(
                t,
                "  byte entropy: {:.2} bits/byte",
                entropy_bits_per_byte(bytes)
            );
            let _ = writeln!(
                t,
                "  every frame type (packet, pull, pull slot, delete, padding) has this same length;"
            );
            let _ = writeln!(
                t,
                "  an observer CAN learn: that a frame passed, when, and its direction."
            );
            let _ = writeln!(
                t,
                "  an observer CANNOT learn: the frame type, whether a pull slot is real or a dummy,"
            );
            let _ = writeln!(t, "    or anything about the packet inside.");
            Inspection {
                kind: Kind::WireFrame,
                text: t,
            }
        }
        FRAME_LEN => match Frame::decode(bytes) {
            Ok(frame) => {
                let _ = writeln!(t, "Plaintext link frame ({FRAME_LEN} bytes): {frame:?}");
                let _ = writeln!(
                    t,
                    "  (only the two ends of a Noise link ever see this; on the wire it is {WIRE_FRAME_LEN} bytes of ciphertext)"
                );
                Inspection {
                    kind: Kind::PlainFrame,
                    text: t,
                }
            }
            Err(e) => unknown(
                bytes,
                &format!("{FRAME_LEN} bytes but not a valid frame: {e}"),
            ),
        },
        _ => {
            if let Ok(dir) = Directory::from_bytes(bytes) {
                let _ = writeln!(t, "Directory document ({} bytes)", bytes.len());
                t.push_str(&crate::authority::describe(&dir));
                let _ = writeln!(
                    t,
                    "  (public by design: every client and relay downloads the same document)"
                );
                return Inspection {
                    kind: Kind::Directory,
                    text: t,
                };
            }
            if let Ok(d) = RelayDescriptor::from_bytes(bytes) {
                let _ = writeln!(t, "Relay descriptor ({} bytes)", bytes.len());
                let _ = writeln!(t, "  id       {}", d.id);
                let _ = writeln!(t, "  address  {}", d.address);
                let _ = writeln!(
                    t,
                    "  roles    entry={} mix={} mailbox={}  layer {}",
                    d.roles.entry, d.roles.mix, d.roles.mailbox, d.layer
                );
                let _ = writeln!(t, "  link key {}", hex::encode(d.link_key));
                for k in &d.sphinx_keys {
                    let _ = writeln!(
                        t,
                        "  sphinx key epoch {}: {}",
                        k.epoch,
                        hex::encode(k.public)
                    );
                }
                let _ = writeln!(t, "  valid    {}..{}", d.published_at, d.expires_at);
                return Inspection {
                    kind: Kind::Descriptor,
                    text: t,
                };
            }
            unknown(
                bytes,
                "not a Spore packet, frame, directory, descriptor or address",
            )
        }
    }
}

fn unknown(bytes: &[u8], why: &str) -> Inspection {
    Inspection {
        kind: Kind::Unknown,
        text: format!("{} bytes: {why}\n", bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_protocol::link::PullSlot;
    use spore_protocol::packet::{RouteHop, build_packet};
    use spore_protocol::{MailboxId, RelayId};
    use std::time::Duration;

    #[test]
    fn recognises_packets_and_frames() {
        let key = x25519_dalek::StaticSecret::from([5; 32]);
        let hop = RouteHop {
            id: RelayId([1; 32]),
            sphinx_key: x25519_dalek::PublicKey::from(&key),
        };
        let p = build_packet(&[hop], MailboxId([2; 32]), [3; 16], &[Duration::ZERO], b"x").unwrap();
        let i = inspect(&p);
        assert_eq!(i.kind, Kind::SphinxPacket);
        assert!(i.text.contains("CANNOT learn"));

        let mut plain = [0u8; FRAME_LEN];
        Frame::PullSlot(PullSlot {
            index: 3,
            item: None,
        })
        .encode_into(&mut plain)
        .unwrap();
        assert_eq!(inspect(&plain).kind, Kind::PlainFrame);
        assert_eq!(inspect(&[0u8; WIRE_FRAME_LEN]).kind, Kind::WireFrame);
        assert_eq!(inspect(b"hello").kind, Kind::Unknown);
    }

    #[test]
    fn hex_input_is_decoded() {
        assert_eq!(decode_input(b"  0a0b\n"), vec![10, 11]);
        assert_eq!(decode_input(&[0xff, 0x00]), vec![0xff, 0x00]);
    }
}
