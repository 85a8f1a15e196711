//! Protocol facts, named once. Every other crate imports these instead of repeating numbers.

use std::time::Duration;

/// The only Sphinx version Spore accepts: single-seed SURBs (259 leaks hop keys to SURB users).
pub const SPHINX_VERSION: u16 = 260;
/// Sphinx header length for up to [`MAX_HOPS`] hops.
pub const HEADER_SIZE: usize = sphinx_packet::header::HEADER_SIZE;
/// Sphinx payload length (default packet format).
pub const PAYLOAD_SIZE: usize = 1024;
/// Length of every packet on the wire: header + payload = 1372 bytes.
pub const PACKET_SIZE: usize = HEADER_SIZE + PAYLOAD_SIZE;
/// Bytes the Sphinx payload encoding itself consumes (zero prefix + padding marker).
pub const PAYLOAD_OVERHEAD: usize = sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE;
/// Plaintext bytes one packet carries end to end.
pub const PAYLOAD_CAPACITY: usize = PAYLOAD_SIZE - PAYLOAD_OVERHEAD;
/// Sphinx's maximum route length; Spore routes use all of them.
pub const MAX_HOPS: usize = sphinx_packet::constants::MAX_PATH_LENGTH;
/// Mix layers between the entry relay and the mailbox relay.
pub const MIX_LAYERS: usize = 3;
/// Forward route: entry, [`MIX_LAYERS`] mixes, mailbox relay.
pub const FORWARD_HOPS: usize = MIX_LAYERS + 2;
/// SURB route (acks and replies): [`MIX_LAYERS`] mixes, then the SURB owner's mailbox relay.
pub const SURB_HOPS: usize = MIX_LAYERS + 1;
/// Default cap on a single hop's delay; relays reject headers asking for more.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);
/// Length of the identifier a final hop reads in the clear (SURB id or random).
pub const SURB_ID_SIZE: usize = sphinx_packet::constants::IDENTIFIER_LENGTH;
/// A serialized single-seed SURB: header, first-hop address, one payload key seed.
pub const SURB_SIZE: usize = HEADER_SIZE + 32 + 16;
/// What a forward packet's payload holds after its SURB-ack: one sealed fragment.
pub const SEALED_FRAGMENT_SIZE: usize = PAYLOAD_CAPACITY - SURB_SIZE;
/// What end-to-end sealing adds (see [`crate::seal`]): version byte, ephemeral public key,
/// the sender's public key encrypted (+ tag), and the payload's AEAD tag. It comes out of the
/// fragment, so [`SEALED_FRAGMENT_SIZE`] and the packet size stay fixed.
pub const SEAL_OVERHEAD: usize = 1 + 32 + (32 + 16) + 16;
/// A fragment's plaintext (header + data) inside the seal.
pub const FRAGMENT_SIZE: usize = SEALED_FRAGMENT_SIZE - SEAL_OVERHEAD;
/// Message id (16) + index (2) + count (2).
pub const FRAGMENT_HEADER_SIZE: usize = 16 + 2 + 2;
/// Bundle bytes carried per forward fragment.
pub const FRAGMENT_DATA_SIZE: usize = FRAGMENT_SIZE - FRAGMENT_HEADER_SIZE;
/// A reply travels on a SURB: no ack, no seal (only the SURB's creator can read it).
pub const REPLY_FRAGMENT_SIZE: usize = PAYLOAD_CAPACITY;
/// Bundle bytes carried per reply fragment.
pub const REPLY_FRAGMENT_DATA_SIZE: usize = REPLY_FRAGMENT_SIZE - FRAGMENT_HEADER_SIZE;
/// Largest message in fragments (the largest size class). Bounds reassembly memory per message.
pub const MAX_FRAGMENTS: u16 = 16384;
/// Slots in every mailbox pull response, real or dummy.
pub const PULL_SLOTS: usize = 16;
/// Slots in the answer to a catch-up pull ([`crate::link::Frame::BulkPullRequest`]): a client
/// whose last pull came back full asks for this many at once, so a returning client drains a
/// long backlog in a fraction of the round trips. Still a fixed size: the answer says nothing
/// about how much more is waiting.
pub const BULK_PULL_SLOTS: usize = 64;
