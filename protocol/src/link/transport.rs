//! An established link's keys: one [`LinkSealer`] and one [`LinkOpener`], each with its own
//! nonce, so that a reader task and a writer task never share mutable state.

use std::sync::Arc;

use snow::StatelessTransportState;

use super::frame::Frame;
use super::{FRAME_LEN, WIRE_FRAME_LEN};
use crate::error::{ApiMisuse, InvalidMessage, Result};

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
    pub(super) fn new(state: StatelessTransportState) -> Self {
        Self { state }
    }

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
