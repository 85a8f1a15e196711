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
//! This module does no I/O: the connection task moves the bytes.

use std::sync::Arc;

use snow::{HandshakeState, StatelessTransportState};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::{ApiMisuse, Error, InvalidMessage, PeerMisbehaved, Result};
use crate::params::{PACKET_SIZE, PAYLOAD_SIZE, PULL_SLOTS, SURB_ID_SIZE};

/// The Noise protocol every link speaks.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a peer speaking another protocol or version fails the
/// handshake instead of misreading our frames.
pub const PROLOGUE: &[u8] = b"spore-link/v1";

/// Noise ephemeral or static public key length.
const DH_LEN: usize = 32;
/// AEAD tag length.
const TAG_LEN: usize = 16;

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
const FRAME_BODY_LEN: usize = PACKET_SIZE;
/// index + present flag + handle + SURB id + payload.
const PULL_SLOT_BODY_LEN: usize = 1 + 1 + 8 + SURB_ID_SIZE + PAYLOAD_SIZE;
/// count + handles.
const DELETE_BODY_LEN: usize = 2 + 8 * MAX_DELETE_HANDLES;

// Every body fits in the frame: the size of a frame never depends on its command.
const _: () = assert!(PULL_SLOT_BODY_LEN <= FRAME_BODY_LEN);
const _: () = assert!(DELETE_BODY_LEN <= FRAME_BODY_LEN);
const _: () = assert!(PULL_SLOTS <= u8::MAX as usize);
// Noise caps a transport message at 65535 bytes.
const _: () = assert!(WIRE_FRAME_LEN <= 65535);

mod frame_type {
    pub const PACKET: u8 = 1;
    pub const PULL_REQUEST: u8 = 2;
    pub const PULL_SLOT: u8 = 3;
    pub const DELETE: u8 = 4;
    pub const DELETE_DONE: u8 = 5;
    pub const ERROR: u8 = 6;
    pub const PADDING: u8 = 7;
}

/// One command on a link. All variants encode to exactly [`FRAME_LEN`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// A Sphinx packet for the receiving relay to process (forward, or store if it is the
    /// packet's mailbox relay).
    Packet(Box<[u8; PACKET_SIZE]>),
    /// A client asks its mailbox relay for the next batch. The mailbox served is the one whose
    /// id hashes the link's remote static key, so the request names nothing.
    PullRequest,
    /// One of the [`PULL_SLOTS`] frames answering a [`Frame::PullRequest`].
    PullSlot(PullSlot),
    /// A client acknowledges items it has durably received; the relay may now delete them.
    Delete {
        /// At most [`MAX_DELETE_HANDLES`].
        handles: Vec<u64>,
    },
    /// The relay deleted `count` of the handles in the preceding [`Frame::Delete`].
    DeleteDone { count: u32 },
    /// The sender is about to close the link, and says why.
    Error { code: LinkErrorCode },
    /// Link-level cover: sent when there is nothing else to send, discarded on receipt.
    Padding,
}

impl std::fmt::Debug for Frame {
    // Contents are ciphertext or personal data; debug output shows shapes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Packet(_) => f.write_str("Packet(..)"),
            Frame::PullRequest => f.write_str("PullRequest"),
            Frame::PullSlot(s) => write!(
                f,
                "PullSlot {{ index: {}, full: {} }}",
                s.index,
                s.item.is_some()
            ),
            Frame::Delete { handles } => write!(f, "Delete {{ handles: {} }}", handles.len()),
            Frame::DeleteDone { count } => write!(f, "DeleteDone {{ count: {count} }}"),
            Frame::Error { code } => write!(f, "Error {{ code: {code:?} }}"),
            Frame::Padding => f.write_str("Padding"),
        }
    }
}

/// One slot of a pull response. A response is always exactly [`PULL_SLOTS`] of these, with
/// `item: None` for the empty ones, so its size says nothing about how much mail is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSlot {
    /// Position in the response, `0..PULL_SLOTS`.
    pub index: u8,
    /// The stored item, or `None` for a dummy slot.
    pub item: Option<MailboxItem>,
}

/// A stored, still end-to-end-sealed payload as the mailbox relay hands it out.
#[derive(Clone, PartialEq, Eq)]
pub struct MailboxItem {
    /// Relay-chosen handle the client quotes in [`Frame::Delete`]; meaningless elsewhere.
    pub handle: u64,
    /// The identifier the packet's final hop carried (a SURB id, or random).
    pub surb_id: [u8; SURB_ID_SIZE],
    /// The Sphinx payload as delivered to the mailbox relay.
    pub payload: Box<[u8; PAYLOAD_SIZE]>,
}

impl std::fmt::Debug for MailboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxItem")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// Why a peer is closing the link. Unknown codes are rejected, like unknown frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkErrorCode {
    /// A frame could not be parsed or was not allowed in this state.
    Protocol,
    /// The link's static key is not allowed to do this (e.g. pull a mailbox it does not own,
    /// or forward packets without being a listed relay).
    NotAuthorized,
    /// The peer sends faster than the receiver accepts.
    RateLimited,
    /// The receiver has no capacity left (mailbox quota, connection cap).
    Overloaded,
    /// The receiver is shutting down.
    ShuttingDown,
    /// Anything else; the receiver's logs say more.
    Internal,
}

impl LinkErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            LinkErrorCode::Protocol => 1,
            LinkErrorCode::NotAuthorized => 2,
            LinkErrorCode::RateLimited => 3,
            LinkErrorCode::Overloaded => 4,
            LinkErrorCode::ShuttingDown => 5,
            LinkErrorCode::Internal => 6,
        }
    }

    fn from_u16(v: u16) -> Result<Self, InvalidMessage> {
        Ok(match v {
            1 => LinkErrorCode::Protocol,
            2 => LinkErrorCode::NotAuthorized,
            3 => LinkErrorCode::RateLimited,
            4 => LinkErrorCode::Overloaded,
            5 => LinkErrorCode::ShuttingDown,
            6 => LinkErrorCode::Internal,
            _ => {
                return Err(InvalidMessage::Unknown {
                    what: "link error code",
                    value: v.into(),
                });
            }
        })
    }
}

/// Writes into a fixed buffer without indexing; the mirror of [`crate::codec::Reader`] for
/// callers that must not allocate.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    offset: usize,
}

impl<'a> SliceWriter<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, offset: 0 }
    }

    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        let end = self
            .offset
            .checked_add(b.len())
            .ok_or(ApiMisuse::InvalidArgument("frame body overflow"))?;
        self.buf
            .get_mut(self.offset..end)
            .ok_or(ApiMisuse::InvalidArgument("frame body overflow"))?
            .copy_from_slice(b);
        self.offset = end;
        Ok(())
    }

    fn u8(&mut self, v: u8) -> Result<()> {
        self.bytes(&[v])
    }
}

impl Frame {
    /// Encodes into `out`, zero-padding to [`FRAME_LEN`].
    ///
    /// Fails only on values no peer could have sent: more than [`MAX_DELETE_HANDLES`] handles,
    /// or a pull slot index outside `0..PULL_SLOTS`.
    pub fn encode_into(&self, out: &mut [u8; FRAME_LEN]) -> Result<()> {
        out.fill(0);
        let mut w = SliceWriter::new(out);
        match self {
            Frame::Packet(packet) => {
                w.u8(frame_type::PACKET)?;
                w.bytes(&packet[..])?;
            }
            Frame::PullRequest => w.u8(frame_type::PULL_REQUEST)?,
            Frame::PullSlot(slot) => {
                if usize::from(slot.index) >= PULL_SLOTS {
                    return Err(ApiMisuse::InvalidArgument("pull slot index out of range").into());
                }
                w.u8(frame_type::PULL_SLOT)?;
                w.u8(slot.index)?;
                match &slot.item {
                    None => w.u8(0)?,
                    Some(item) => {
                        w.u8(1)?;
                        w.bytes(&item.handle.to_be_bytes())?;
                        w.bytes(&item.surb_id)?;
                        w.bytes(&item.payload[..])?;
                    }
                }
            }
            Frame::Delete { handles } => {
                if handles.len() > MAX_DELETE_HANDLES {
                    return Err(ApiMisuse::MessageTooLarge {
                        got: handles.len(),
                        limit: MAX_DELETE_HANDLES,
                    }
                    .into());
                }
                w.u8(frame_type::DELETE)?;
                // Bounded by MAX_DELETE_HANDLES above, so the conversion cannot saturate.
                let count = u16::try_from(handles.len()).unwrap_or(u16::MAX);
                w.bytes(&count.to_be_bytes())?;
                for handle in handles {
                    w.bytes(&handle.to_be_bytes())?;
                }
            }
            Frame::DeleteDone { count } => {
                w.u8(frame_type::DELETE_DONE)?;
                w.bytes(&count.to_be_bytes())?;
            }
            Frame::Error { code } => {
                w.u8(frame_type::ERROR)?;
                w.bytes(&code.to_u16().to_be_bytes())?;
            }
            Frame::Padding => w.u8(frame_type::PADDING)?,
        }
        Ok(())
    }

    /// Parses exactly one [`FRAME_LEN`]-byte frame.
    ///
    /// Rejects a wrong length, an unknown type, out-of-range counts and indices, and any
    /// non-zero padding byte: a frame has exactly one encoding, so nothing can be smuggled in
    /// its padding.
    pub fn decode(bytes: &[u8]) -> Result<Frame> {
        use crate::codec::Reader;

        if bytes.len() != FRAME_LEN {
            return Err(InvalidMessage::WrongLength {
                expected: FRAME_LEN,
                got: bytes.len(),
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        let frame = match r.u8()? {
            frame_type::PACKET => Frame::Packet(boxed_array(&mut r)?),
            frame_type::PULL_REQUEST => Frame::PullRequest,
            frame_type::PULL_SLOT => {
                let index = r.u8()?;
                if usize::from(index) >= PULL_SLOTS {
                    return Err(InvalidMessage::BadValue("pull slot index").into());
                }
                let item = match r.bool()? {
                    false => None,
                    true => Some(MailboxItem {
                        handle: r.u64()?,
                        surb_id: r.array()?,
                        payload: boxed_array(&mut r)?,
                    }),
                };
                Frame::PullSlot(PullSlot { index, item })
            }
            frame_type::DELETE => {
                let count = usize::from(r.u16()?);
                if count > MAX_DELETE_HANDLES {
                    return Err(InvalidMessage::TooLong {
                        limit: MAX_DELETE_HANDLES,
                    }
                    .into());
                }
                let mut handles = Vec::with_capacity(count);
                for _ in 0..count {
                    handles.push(r.u64()?);
                }
                Frame::Delete { handles }
            }
            frame_type::DELETE_DONE => Frame::DeleteDone { count: r.u32()? },
            frame_type::ERROR => Frame::Error {
                code: LinkErrorCode::from_u16(r.u16()?)?,
            },
            frame_type::PADDING => Frame::Padding,
            other => {
                return Err(InvalidMessage::Unknown {
                    what: "link frame type",
                    value: other.into(),
                }
                .into());
            }
        };
        let padding = r.take(r.remaining())?;
        if padding.iter().any(|&b| b != 0) {
            return Err(InvalidMessage::BadValue("frame padding").into());
        }
        Ok(frame)
    }
}

/// Reads `N` bytes straight into a heap array: one allocation, no large stack copy.
fn boxed_array<const N: usize>(r: &mut crate::codec::Reader<'_>) -> Result<Box<[u8; N]>> {
    let boxed: Box<[u8]> = r.take(N)?.into();
    boxed.try_into().map_err(|_| {
        InvalidMessage::WrongLength {
            expected: N,
            got: 0,
        }
        .into()
    })
}

/// The X25519 public key for a link static secret, as the peer will see it in the handshake
/// (clamped base-point multiplication, exactly what `snow` computes).
pub fn static_public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

fn handshake_error(e: snow::Error) -> Error {
    PeerMisbehaved::Handshake(e.to_string()).into()
}

/// The Noise `XX` handshake of a link, without I/O.
///
/// Both sides authenticate a static X25519 key: a relay's is the `link_key` in its directory
/// descriptor, a client's is its mailbox key (so the mailbox relay learns which mailbox the
/// link may pull). The initiator can pin the key it expects from the directory.
///
/// Drive it by alternating [`write_message`](Self::write_message) and
/// [`read_message`](Self::read_message) as [`is_my_turn`](Self::is_my_turn) says, sending each
/// message with a big-endian `u16` length prefix (at most [`HANDSHAKE_MAX_LEN`]), until
/// [`is_finished`](Self::is_finished); then call [`into_transport`](Self::into_transport).
/// After any error the handshake is dead: close the connection.
///
/// ```
/// use spore_protocol::link::{static_public_key, Frame, LinkHandshake, WIRE_FRAME_LEN};
///
/// let relay_secret = [7u8; 32];
/// let client_secret = [9u8; 32];
/// let mut client =
///     LinkHandshake::initiator(&client_secret, Some(static_public_key(&relay_secret)))?;
/// let mut relay = LinkHandshake::responder(&relay_secret)?;
///
/// // Three messages; on a socket each goes out as u16-BE length + bytes.
/// relay.read_message(&client.write_message()?)?;
/// client.read_message(&relay.write_message()?)?;
/// relay.read_message(&client.write_message()?)?;
/// assert!(client.is_finished() && relay.is_finished());
///
/// let (client_link, relay_key) = client.into_transport()?;
/// let (relay_link, client_key) = relay.into_transport()?;
/// assert_eq!(relay_key, static_public_key(&relay_secret));
/// assert_eq!(client_key, static_public_key(&client_secret));
///
/// let (mut client_tx, _client_rx) = client_link.split();
/// let (_relay_tx, mut relay_rx) = relay_link.split();
/// let mut wire = [0u8; WIRE_FRAME_LEN];
/// client_tx.seal(&Frame::PullRequest, &mut wire)?;
/// assert_eq!(relay_rx.open(&wire)?, Frame::PullRequest);
/// # Ok::<(), spore_protocol::Error>(())
/// ```
pub struct LinkHandshake {
    state: HandshakeState,
    local_secret: StaticSecret,
    expected_remote: Option<[u8; 32]>,
    failed: bool,
}

impl std::fmt::Debug for LinkHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandshake")
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl LinkHandshake {
    /// Starts the side that opens the TCP connection. With `expected_remote`, the handshake
    /// fails unless the responder proves it holds that static key (taken from the directory).
    pub fn initiator(
        local_static_secret: &[u8; 32],
        expected_remote: Option<[u8; 32]>,
    ) -> Result<Self> {
        Self::new(local_static_secret, expected_remote, true)
    }

    /// Starts the side that accepted the TCP connection. It accepts any initiator key; the
    /// caller decides what that key may do from [`into_transport`](Self::into_transport).
    pub fn responder(local_static_secret: &[u8; 32]) -> Result<Self> {
        Self::new(local_static_secret, None, false)
    }

    fn new(secret: &[u8; 32], expected_remote: Option<[u8; 32]>, initiator: bool) -> Result<Self> {
        let params: snow::params::NoiseParams = NOISE_PARAMS
            .parse()
            .map_err(|_| ApiMisuse::InvalidArgument("noise parameters"))?;
        let builder = snow::Builder::new(params)
            .local_private_key(secret)
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(|_| ApiMisuse::InvalidArgument("noise builder"))?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(|_| ApiMisuse::InvalidArgument("noise builder"))?;
        Ok(Self {
            state,
            local_secret: StaticSecret::from(*secret),
            expected_remote,
            failed: false,
        })
    }

    /// Produces the next handshake message to send (at most [`HANDSHAKE_MAX_LEN`] bytes).
    pub fn write_message(&mut self) -> Result<Vec<u8>> {
        self.check_usable()?;
        if !self.is_my_turn() {
            return Err(
                ApiMisuse::InvalidArgument("not our turn to write a handshake message").into(),
            );
        }
        let mut buf = vec![0u8; HANDSHAKE_MAX_LEN];
        let n = self.state.write_message(&[], &mut buf).map_err(|e| {
            self.failed = true;
            handshake_error(e)
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Processes the peer's next handshake message (without its length prefix).
    ///
    /// Fails with [`PeerMisbehaved::UnexpectedPeer`] if the initiator pinned a key and the
    /// responder proved a different one, and with [`PeerMisbehaved::LowOrderPoint`] if the
    /// peer's static key is a low-order point (which anyone could "prove" to own).
    pub fn read_message(&mut self, msg: &[u8]) -> Result<()> {
        self.check_usable()?;
        if self.is_my_turn() {
            return Err(
                ApiMisuse::InvalidArgument("not our turn to read a handshake message").into(),
            );
        }
        let result = self.read_inner(msg);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn read_inner(&mut self, msg: &[u8]) -> Result<()> {
        if msg.len() > HANDSHAKE_MAX_LEN {
            return Err(InvalidMessage::TooLong {
                limit: HANDSHAKE_MAX_LEN,
            }
            .into());
        }
        let mut payload = [0u8; HANDSHAKE_MAX_LEN];
        let n = self
            .state
            .read_message(msg, &mut payload)
            .map_err(handshake_error)?;
        if n != 0 {
            return Err(PeerMisbehaved::Handshake("unexpected handshake payload".into()).into());
        }
        if let Some(remote) = self.remote_static() {
            let shared = self.local_secret.diffie_hellman(&PublicKey::from(remote));
            if !shared.was_contributory() {
                return Err(PeerMisbehaved::LowOrderPoint.into());
            }
            if let Some(expected) = self.expected_remote
                && expected != remote
            {
                return Err(PeerMisbehaved::UnexpectedPeer.into());
            }
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(ApiMisuse::InvalidArgument("handshake already failed").into());
        }
        if self.state.is_handshake_finished() {
            return Err(ApiMisuse::InvalidArgument("handshake already finished").into());
        }
        Ok(())
    }

    fn remote_static(&self) -> Option<[u8; 32]> {
        self.state
            .get_remote_static()
            .and_then(|rs| <[u8; 32]>::try_from(rs).ok())
    }

    /// All three messages have been written or read.
    pub fn is_finished(&self) -> bool {
        !self.failed && self.state.is_handshake_finished()
    }

    /// Whether the next step is [`write_message`](Self::write_message) (otherwise
    /// [`read_message`](Self::read_message)).
    pub fn is_my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// Finishes the handshake: the transport keys and the peer's authenticated static key.
    pub fn into_transport(self) -> Result<(LinkTransport, [u8; 32])> {
        if !self.is_finished() {
            return Err(ApiMisuse::InvalidArgument("handshake is not finished").into());
        }
        let remote = self
            .remote_static()
            .ok_or(ApiMisuse::InvalidArgument("handshake is not finished"))?;
        let state = self
            .state
            .into_stateless_transport_mode()
            .map_err(handshake_error)?;
        Ok((LinkTransport { state }, remote))
    }
}

/// An established link's keys. Split it so a reader task and a writer task each own their
/// direction.
pub struct LinkTransport {
    state: StatelessTransportState,
}

impl std::fmt::Debug for LinkTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTransport").finish_non_exhaustive()
    }
}

impl LinkTransport {
    /// Separates the sending and receiving halves. Each keeps its own nonce counter; they share
    /// the (immutable) key schedule.
    pub fn split(self) -> (LinkSealer, LinkOpener) {
        let state = Arc::new(self.state);
        (
            LinkSealer {
                state: Arc::clone(&state),
                nonce: 0,
                scratch: Box::new([0u8; FRAME_LEN]),
            },
            LinkOpener {
                state,
                nonce: 0,
                scratch: Box::new([0u8; FRAME_LEN]),
            },
        )
    }
}

/// The sending half of a link.
pub struct LinkSealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    scratch: Box<[u8; FRAME_LEN]>,
}

impl std::fmt::Debug for LinkSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSealer")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl LinkSealer {
    /// Encodes and encrypts `frame` into exactly [`WIRE_FRAME_LEN`] bytes, ready to write.
    pub fn seal(&mut self, frame: &Frame, out: &mut [u8; WIRE_FRAME_LEN]) -> Result<()> {
        // Noise reserves the maximum nonce; a link that sent 2^64-1 frames must be replaced.
        if self.nonce == u64::MAX {
            return Err(ApiMisuse::InvalidArgument("link nonce exhausted").into());
        }
        frame.encode_into(&mut self.scratch)?;
        let n = self
            .state
            .write_message(self.nonce, &self.scratch[..], out)
            .map_err(|_| ApiMisuse::InvalidArgument("link encryption failed"))?;
        if n != WIRE_FRAME_LEN {
            return Err(ApiMisuse::InvalidArgument("link encryption length").into());
        }
        self.nonce += 1;
        Ok(())
    }
}

/// The receiving half of a link.
pub struct LinkOpener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    scratch: Box<[u8; FRAME_LEN]>,
}

impl std::fmt::Debug for LinkOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOpener")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl LinkOpener {
    /// Authenticates, decrypts and parses the next [`WIRE_FRAME_LEN`]-byte record.
    ///
    /// Any error is fatal for the link: a record that fails authentication
    /// ([`InvalidMessage::Decrypt`]) does not advance the nonce, so every later record fails
    /// too. Close the connection.
    pub fn open(&mut self, wire: &[u8]) -> Result<Frame> {
        if wire.len() != WIRE_FRAME_LEN {
            return Err(InvalidMessage::WrongLength {
                expected: WIRE_FRAME_LEN,
                got: wire.len(),
            }
            .into());
        }
        if self.nonce == u64::MAX {
            return Err(InvalidMessage::Decrypt.into());
        }
        let n = self
            .state
            .read_message(self.nonce, wire, &mut self.scratch[..])
            .map_err(|_| InvalidMessage::Decrypt)?;
        self.nonce += 1;
        let plain = self.scratch.get(..n).ok_or(InvalidMessage::Decrypt)?;
        Frame::decode(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A one-direction in-memory byte stream with the handshake's length-prefix framing.
    #[derive(Default)]
    struct Pipe(VecDeque<u8>);

    impl Pipe {
        fn send(&mut self, msg: &[u8]) {
            assert!(msg.len() <= HANDSHAKE_MAX_LEN);
            self.0.extend((msg.len() as u16).to_be_bytes());
            self.0.extend(msg);
        }

        fn recv(&mut self) -> Vec<u8> {
            let hi = self.0.pop_front().unwrap();
            let lo = self.0.pop_front().unwrap();
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            assert!(len <= HANDSHAKE_MAX_LEN);
            self.0.drain(..len).collect()
        }
    }

    fn run(a: &mut LinkHandshake, b: &mut LinkHandshake) -> Result<()> {
        let (mut a_to_b, mut b_to_a) = (Pipe::default(), Pipe::default());
        while !(a.is_finished() && b.is_finished()) {
            if a.is_my_turn() && !a.is_finished() {
                a_to_b.send(&a.write_message()?);
                b.read_message(&a_to_b.recv())?;
            } else {
                b_to_a.send(&b.write_message()?);
                a.read_message(&b_to_a.recv())?;
            }
        }
        Ok(())
    }

    struct Ends {
        client_tx: LinkSealer,
        client_rx: LinkOpener,
        relay_tx: LinkSealer,
        relay_rx: LinkOpener,
    }

    fn connect() -> Ends {
        let relay_secret: [u8; 32] = rand::random();
        let client_secret: [u8; 32] = rand::random();
        let mut c =
            LinkHandshake::initiator(&client_secret, Some(static_public_key(&relay_secret)))
                .unwrap();
        let mut r = LinkHandshake::responder(&relay_secret).unwrap();
        run(&mut c, &mut r).unwrap();
        let (ct, relay_key) = c.into_transport().unwrap();
        let (rt, client_key) = r.into_transport().unwrap();
        assert_eq!(relay_key, static_public_key(&relay_secret));
        assert_eq!(client_key, static_public_key(&client_secret));
        let (client_tx, client_rx) = ct.split();
        let (relay_tx, relay_rx) = rt.split();
        Ends {
            client_tx,
            client_rx,
            relay_tx,
            relay_rx,
        }
    }

    fn sample_frames() -> Vec<Frame> {
        let mut packet = Box::new([0u8; PACKET_SIZE]);
        packet
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        vec![
            Frame::Packet(packet),
            Frame::PullRequest,
            Frame::PullSlot(PullSlot {
                index: 0,
                item: None,
            }),
            Frame::PullSlot(PullSlot {
                index: (PULL_SLOTS - 1) as u8,
                item: Some(MailboxItem {
                    handle: u64::MAX,
                    surb_id: [0xab; SURB_ID_SIZE],
                    payload: Box::new([0xcd; PAYLOAD_SIZE]),
                }),
            }),
            Frame::Delete { handles: vec![] },
            Frame::Delete {
                handles: (0..MAX_DELETE_HANDLES as u64).collect(),
            },
            Frame::DeleteDone { count: 17 },
            Frame::Error {
                code: LinkErrorCode::NotAuthorized,
            },
            Frame::Padding,
        ]
    }

    fn encode(frame: &Frame) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        frame.encode_into(&mut out).unwrap();
        out
    }

    #[test]
    fn handshake_over_byte_queues_then_frames_both_ways() {
        let mut ends = connect();
        let mut wire = [0u8; WIRE_FRAME_LEN];
        for frame in sample_frames() {
            ends.client_tx.seal(&frame, &mut wire).unwrap();
            assert_eq!(ends.relay_rx.open(&wire).unwrap(), frame);
            ends.relay_tx.seal(&frame, &mut wire).unwrap();
            assert_eq!(ends.client_rx.open(&wire).unwrap(), frame);
        }
    }

    #[test]
    fn handshake_without_pinned_key_learns_the_responder_key() {
        let relay_secret = [3u8; 32];
        let mut c = LinkHandshake::initiator(&[4u8; 32], None).unwrap();
        let mut r = LinkHandshake::responder(&relay_secret).unwrap();
        run(&mut c, &mut r).unwrap();
        let (_, relay_key) = c.into_transport().unwrap();
        assert_eq!(relay_key, static_public_key(&relay_secret));
    }

    #[test]
    fn wrong_expected_key_is_rejected() {
        let mut c =
            LinkHandshake::initiator(&[1u8; 32], Some(static_public_key(&[9u8; 32]))).unwrap();
        let mut r = LinkHandshake::responder(&[2u8; 32]).unwrap();
        assert_eq!(
            run(&mut c, &mut r),
            Err(PeerMisbehaved::UnexpectedPeer.into())
        );
        // The initiator never sends its third message to the impostor, and stays dead.
        assert!(!c.is_finished());
        assert!(c.write_message().is_err());
        assert!(c.into_transport().is_err());
    }

    #[test]
    fn tampered_handshake_message_is_rejected() {
        let mut c = LinkHandshake::initiator(&[1u8; 32], None).unwrap();
        let mut r = LinkHandshake::responder(&[2u8; 32]).unwrap();
        r.read_message(&c.write_message().unwrap()).unwrap();
        let mut msg = r.write_message().unwrap();
        assert_eq!(msg.len(), HANDSHAKE_MAX_LEN);
        msg[40] ^= 1;
        assert!(matches!(
            c.read_message(&msg),
            Err(Error::PeerMisbehaved(PeerMisbehaved::Handshake(_)))
        ));
    }

    #[test]
    fn handshake_payload_is_rejected() {
        // A peer that smuggles data into the handshake is not speaking spore-link/v1.
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
        let mut raw = snow::Builder::new(params)
            .local_private_key(&[1u8; 32])
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut msg = [0u8; 64];
        let n = raw.write_message(b"hi", &mut msg).unwrap();
        let mut r = LinkHandshake::responder(&[2u8; 32]).unwrap();
        assert!(matches!(
            r.read_message(&msg[..n]),
            Err(Error::PeerMisbehaved(PeerMisbehaved::Handshake(_)))
        ));
    }

    #[test]
    fn oversized_handshake_message_is_rejected() {
        let mut r = LinkHandshake::responder(&[2u8; 32]).unwrap();
        assert!(r.read_message(&[0u8; HANDSHAKE_MAX_LEN + 1]).is_err());
    }

    #[test]
    fn out_of_turn_calls_are_api_misuse() {
        let mut c = LinkHandshake::initiator(&[1u8; 32], None).unwrap();
        let mut r = LinkHandshake::responder(&[2u8; 32]).unwrap();
        assert!(matches!(c.read_message(&[]), Err(Error::ApiMisuse(_))));
        assert!(matches!(r.write_message(), Err(Error::ApiMisuse(_))));
    }

    #[test]
    fn tampered_wire_byte_is_rejected() {
        let mut ends = connect();
        let mut wire = [0u8; WIRE_FRAME_LEN];
        ends.client_tx.seal(&Frame::Padding, &mut wire).unwrap();
        for i in [0, 1, FRAME_LEN / 2, WIRE_FRAME_LEN - 1] {
            let mut bad = wire;
            bad[i] ^= 0x01;
            assert_eq!(
                ends.relay_rx.open(&bad),
                Err(InvalidMessage::Decrypt.into())
            );
        }
        // The untampered record still opens: failures do not advance the nonce.
        assert_eq!(ends.relay_rx.open(&wire).unwrap(), Frame::Padding);
    }

    #[test]
    fn replayed_or_reordered_wire_frame_is_rejected() {
        let mut ends = connect();
        let (mut first, mut second) = ([0u8; WIRE_FRAME_LEN], [0u8; WIRE_FRAME_LEN]);
        ends.client_tx.seal(&Frame::Padding, &mut first).unwrap();
        ends.client_tx
            .seal(&Frame::PullRequest, &mut second)
            .unwrap();
        assert!(ends.relay_rx.open(&second).is_err());
        assert_eq!(ends.relay_rx.open(&first).unwrap(), Frame::Padding);
        assert!(ends.relay_rx.open(&first).is_err());
    }

    #[test]
    fn wrong_wire_length_is_rejected() {
        let mut ends = connect();
        assert!(matches!(
            ends.relay_rx.open(&[0u8; WIRE_FRAME_LEN - 1]),
            Err(Error::InvalidMessage(InvalidMessage::WrongLength { .. }))
        ));
    }

    #[test]
    fn every_frame_type_has_identical_wire_length() {
        let mut ends = connect();
        for frame in sample_frames() {
            let mut wire = [0u8; WIRE_FRAME_LEN];
            ends.client_tx.seal(&frame, &mut wire).unwrap();
            assert_eq!(wire.len(), WIRE_FRAME_LEN);
            assert_eq!(encode(&frame).len(), FRAME_LEN);
        }
        assert_eq!(FRAME_LEN, 1 + PACKET_SIZE);
        assert_eq!(WIRE_FRAME_LEN, FRAME_LEN + 16);
    }

    #[test]
    fn frames_round_trip() {
        for frame in sample_frames() {
            assert_eq!(Frame::decode(&encode(&frame)).unwrap(), frame);
        }
    }

    #[test]
    fn unknown_type_is_rejected() {
        let mut bytes = encode(&Frame::Padding);
        for ty in [0u8, 8, 0xff] {
            bytes[0] = ty;
            assert_eq!(
                Frame::decode(&bytes),
                Err(InvalidMessage::Unknown {
                    what: "link frame type",
                    value: ty.into()
                }
                .into())
            );
        }
    }

    #[test]
    fn nonzero_padding_is_rejected() {
        let mut bytes = encode(&Frame::DeleteDone { count: 1 });
        bytes[FRAME_LEN - 1] = 1;
        assert!(Frame::decode(&bytes).is_err());
        let mut dummy = encode(&Frame::PullSlot(PullSlot {
            index: 1,
            item: None,
        }));
        dummy[3] = 1; // a "dummy" slot carrying data
        assert!(Frame::decode(&dummy).is_err());
    }

    #[test]
    fn out_of_range_counts_are_rejected() {
        let too_many = Frame::Delete {
            handles: vec![0; MAX_DELETE_HANDLES + 1],
        };
        assert!(matches!(
            too_many.encode_into(&mut [0u8; FRAME_LEN]),
            Err(Error::ApiMisuse(_))
        ));
        let mut bytes = encode(&Frame::Delete { handles: vec![] });
        bytes[1..3].copy_from_slice(&(MAX_DELETE_HANDLES as u16 + 1).to_be_bytes());
        assert!(Frame::decode(&bytes).is_err());

        let mut slot = encode(&Frame::PullSlot(PullSlot {
            index: 0,
            item: None,
        }));
        slot[1] = PULL_SLOTS as u8;
        assert!(Frame::decode(&slot).is_err());
        let mut code = encode(&Frame::Error {
            code: LinkErrorCode::Internal,
        });
        code[1..3].copy_from_slice(&999u16.to_be_bytes());
        assert!(Frame::decode(&code).is_err());
    }

    #[test]
    fn wrong_frame_length_is_rejected() {
        let bytes = encode(&Frame::Padding);
        assert!(Frame::decode(&bytes[..FRAME_LEN - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Frame::decode(&longer).is_err());
    }

    #[test]
    fn static_public_key_matches_snow() {
        let secret = [42u8; 32];
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
        let builder = snow::Builder::new(params);
        let kp = builder.generate_keypair().unwrap();
        let secret2: [u8; 32] = kp.private.as_slice().try_into().unwrap();
        assert_eq!(static_public_key(&secret2).as_slice(), kp.public.as_slice());
        assert_ne!(static_public_key(&secret), [0u8; 32]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_decode(data in proptest::collection::vec(any::<u8>(), 0..FRAME_LEN + 2)) {
            let _ = Frame::decode(&data);
        }

        #[test]
        fn arbitrary_frame_bodies_never_panic_decode(ty in 0u8..10, body in proptest::collection::vec(any::<u8>(), FRAME_LEN - 1)) {
            let mut bytes = vec![ty];
            bytes.extend(body);
            let _ = Frame::decode(&bytes);
        }

        #[test]
        fn delete_frames_round_trip(handles in proptest::collection::vec(any::<u64>(), 0..=MAX_DELETE_HANDLES)) {
            let frame = Frame::Delete { handles };
            prop_assert_eq!(Frame::decode(&encode(&frame)).unwrap(), frame);
        }

        #[test]
        fn pull_slots_round_trip(index in 0..PULL_SLOTS as u8, handle in any::<u64>(), surb_id in any::<[u8; 16]>(), fill in any::<u8>()) {
            let frame = Frame::PullSlot(PullSlot {
                index,
                item: Some(MailboxItem { handle, surb_id, payload: Box::new([fill; PAYLOAD_SIZE]) }),
            });
            prop_assert_eq!(Frame::decode(&encode(&frame)).unwrap(), frame);
        }
    }
}
