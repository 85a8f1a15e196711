//! The plaintext commands of a link and their single encoding: every frame is exactly
//! [`FRAME_LEN`] bytes, whatever its command, and has exactly one valid encoding.

use super::{FRAME_LEN, MAX_DELETE_HANDLES};
use crate::capability::{CapabilityOp, MAX_CAPABILITY_OPS};
use crate::error::{ApiMisuse, InvalidMessage, Result};
use crate::params::{BULK_PULL_SLOTS, PACKET_SIZE, PAYLOAD_SIZE, SURB_ID_SIZE};

mod frame_type {
    pub const PACKET: u8 = 1;
    pub const PULL_REQUEST: u8 = 2;
    pub const PULL_SLOT: u8 = 3;
    pub const DELETE: u8 = 4;
    pub const DELETE_DONE: u8 = 5;
    pub const ERROR: u8 = 6;
    pub const PADDING: u8 = 7;
    pub const BULK_PULL_REQUEST: u8 = 8;
    pub const CAPABILITY_PULL: u8 = 9;
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
    /// A catch-up pull: answered like [`Frame::PullRequest`] but with [`BULK_PULL_SLOTS`]
    /// slots. A client sends it only after a pull came back full.
    BulkPullRequest,
    /// A [`Frame::PullRequest`] that also registers or revokes capabilities of the link's own
    /// mailbox (1 to [`MAX_CAPABILITY_OPS`] ops). It takes the place of a pull request the
    /// client sends on its schedule anyway, and is the same size, so capability changes add
    /// no frame and move no frame in time.
    CapabilityPull { ops: Vec<CapabilityOp> },
    /// One of the frames answering a pull ([`PULL_SLOTS`](crate::params::PULL_SLOTS) of them for a
    /// [`Frame::PullRequest`], [`BULK_PULL_SLOTS`] for a [`Frame::BulkPullRequest`]).
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
            Frame::BulkPullRequest => f.write_str("BulkPullRequest"),
            Frame::CapabilityPull { ops } => write!(f, "CapabilityPull {{ ops: {} }}", ops.len()),
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

/// One slot of a pull response. A response is always exactly [`PULL_SLOTS`](crate::params::PULL_SLOTS) of these (or
/// [`BULK_PULL_SLOTS`] for a catch-up pull), with `item: None` for the empty ones, so its size
/// says nothing about how much mail is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSlot {
    /// Position in the response, `0..PULL_SLOTS` (`0..BULK_PULL_SLOTS` for a catch-up pull).
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
    /// or a pull slot index outside `0..BULK_PULL_SLOTS`.
    pub fn encode_into(&self, out: &mut [u8; FRAME_LEN]) -> Result<()> {
        out.fill(0);
        let mut w = SliceWriter::new(out);
        match self {
            Frame::Packet(packet) => {
                w.u8(frame_type::PACKET)?;
                w.bytes(&packet[..])?;
            }
            Frame::PullRequest => w.u8(frame_type::PULL_REQUEST)?,
            Frame::BulkPullRequest => w.u8(frame_type::BULK_PULL_REQUEST)?,
            Frame::CapabilityPull { ops } => {
                if ops.is_empty() || ops.len() > MAX_CAPABILITY_OPS {
                    return Err(ApiMisuse::InvalidArgument("1 to MAX_CAPABILITY_OPS ops").into());
                }
                w.u8(frame_type::CAPABILITY_PULL)?;
                w.u8(u8::try_from(ops.len()).unwrap_or(u8::MAX))?;
                let mut body = crate::codec::Writer::new();
                for op in ops {
                    op.encode(&mut body);
                }
                w.bytes(&body.into_vec())?;
            }
            Frame::PullSlot(slot) => {
                if usize::from(slot.index) >= BULK_PULL_SLOTS {
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
            frame_type::BULK_PULL_REQUEST => Frame::BulkPullRequest,
            frame_type::CAPABILITY_PULL => {
                let count = usize::from(r.u8()?);
                if count == 0 || count > MAX_CAPABILITY_OPS {
                    return Err(InvalidMessage::BadValue("capability op count").into());
                }
                let mut ops = Vec::with_capacity(count);
                for _ in 0..count {
                    ops.push(CapabilityOp::decode(&mut r)?);
                }
                Frame::CapabilityPull { ops }
            }
            frame_type::PULL_SLOT => {
                let index = r.u8()?;
                if usize::from(index) >= BULK_PULL_SLOTS {
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
