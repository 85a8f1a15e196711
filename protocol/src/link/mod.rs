//! What travels on every relay↔relay and client↔relay TCP connection.
//!
//! A link is a Noise `XX` session ([`LinkHandshake`]) followed by a stream of fixed-size
//! encrypted [`Frame`]s ([`LinkSealer`] / [`LinkOpener`]). Every frame, whatever its command,
//! is [`FRAME_LEN`] bytes of plaintext and [`WIRE_FRAME_LEN`] bytes on the wire, so an observer
//! of the TCP stream (or of its timing and sizes) cannot tell a forwarded Sphinx packet from a
//! mailbox pull, a delete or link-level cover.
//!
//! # Wire format
//!
//! 1. Handshake: three Noise messages (`-> e`, `<- e, ee, s, es`, `-> s, se`), each sent as a
//!    big-endian `u16` length followed by the message. No message is longer than
//!    [`HANDSHAKE_MAX_LEN`]; a reader rejects a longer length prefix before reading the body.
//! 2. Transport: a sequence of exactly [`WIRE_FRAME_LEN`]-byte records, no length prefix. Each
//!    record is one [`Frame`] encrypted with ChaCha20-Poly1305 under the next nonce.
//!
//! This module does no I/O: the connection task moves the bytes. It is split by layer:
//!
//! * `frame`: the plaintext [`Frame`] commands and their one fixed-size encoding;
//! * `handshake`: the Noise `XX` state machine, [`LinkHandshake`];
//! * `transport`: the keys after it, [`LinkSealer`] and [`LinkOpener`];
//! * `codec`: [`LinkDecoder`], which cuts the incoming byte stream into handshake messages and
//!   records, so that every reader (relay, client, tools) shares one set of length checks and
//!   the same cancel-safe buffering.

use crate::params::{BULK_PULL_SLOTS, PACKET_SIZE, PAYLOAD_SIZE, PULL_SLOTS, SURB_ID_SIZE};

mod codec;
mod frame;
mod handshake;
mod transport;

pub use codec::{LinkDecoder, handshake_record};
pub use frame::{Frame, LinkErrorCode, MailboxItem, PullSlot};
pub use handshake::{LinkHandshake, static_public_key};
pub use transport::{LinkOpener, LinkSealer, LinkTransport};

/// The Noise protocol every link speaks.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a peer speaking another protocol or version fails the
/// handshake instead of misreading our frames.
pub const PROLOGUE: &[u8] = b"spore-link/v1";

/// Noise ephemeral or static public key length.
pub(crate) const DH_LEN: usize = 32;
/// AEAD tag length.
pub(crate) const TAG_LEN: usize = 16;

/// The longest handshake message, which is the responder's `e, ee, s, es` with an empty
/// payload: 32 (ephemeral) + 32 + 16 (encrypted static) + 16 (payload tag) = 96 bytes.
///
/// Handshake messages travel as a big-endian `u16` length and then the message; a reader must
/// reject a length above this before buffering anything, so a peer cannot make us allocate.
pub const HANDSHAKE_MAX_LEN: usize = DH_LEN + DH_LEN + TAG_LEN + TAG_LEN;

/// Most handles one [`Frame::Delete`] can carry (more acknowledgements take more frames).
pub const MAX_DELETE_HANDLES: usize = 128;

/// Type byte + the largest body (a Sphinx packet). Every frame is padded with zeros to this.
pub const FRAME_LEN: usize = 1 + FRAME_BODY_LEN;
/// What one frame occupies on the wire: the encrypted frame and its AEAD tag.
pub const WIRE_FRAME_LEN: usize = FRAME_LEN + TAG_LEN;

/// Room for a frame's body; the Sphinx packet is the largest body and fills it exactly.
pub(crate) const FRAME_BODY_LEN: usize = PACKET_SIZE;
/// index + present flag + handle + SURB id + payload.
const PULL_SLOT_BODY_LEN: usize = 1 + 1 + 8 + SURB_ID_SIZE + PAYLOAD_SIZE;
/// count + handles.
const DELETE_BODY_LEN: usize = 2 + 8 * MAX_DELETE_HANDLES;
/// count + capability ops.
const CAPABILITY_PULL_BODY_LEN: usize =
    1 + crate::capability::CAPABILITY_OP_LEN * crate::capability::MAX_CAPABILITY_OPS;

// Every body fits in the frame: the size of a frame never depends on its command.
const _: () = assert!(PULL_SLOT_BODY_LEN <= FRAME_BODY_LEN);
const _: () = assert!(DELETE_BODY_LEN <= FRAME_BODY_LEN);
const _: () = assert!(CAPABILITY_PULL_BODY_LEN <= FRAME_BODY_LEN);
const _: () = assert!(PULL_SLOTS <= BULK_PULL_SLOTS);
const _: () = assert!(BULK_PULL_SLOTS <= u8::MAX as usize);
// A catch-up pull's items can all be named in its one Delete.
const _: () = assert!(BULK_PULL_SLOTS <= MAX_DELETE_HANDLES);
// Noise caps a transport message at 65535 bytes.
const _: () = assert!(WIRE_FRAME_LEN <= 65535);

#[cfg(test)]
mod tests;
