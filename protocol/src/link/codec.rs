//! Cutting a link's incoming byte stream into whole handshake messages and transport records.
//!
//! TCP delivers a link's bytes in whatever pieces it likes. [`LinkDecoder`] buffers them and
//! hands out whole items only: first handshake messages (a big-endian `u16` length of at most
//! [`HANDSHAKE_MAX_LEN`], then the message), then [`WIRE_FRAME_LEN`]-byte records, each opened
//! with the link's [`LinkOpener`]. Every length is checked before anything is buffered for it.
//!
//! Filling never fails and popping never consumes part of an item, so a reader that reads into
//! [`LinkDecoder::unfilled`] and then pops is cancel-safe: a read interrupted by `select!`
//! loses nothing, and the next call resumes where the last one stopped. The relay and the
//! client each wrap this in a few lines of tokio; neither frames bytes itself.

use super::frame::Frame;
use super::transport::LinkOpener;
use super::{HANDSHAKE_MAX_LEN, WIRE_FRAME_LEN};
use crate::error::{ApiMisuse, InvalidMessage, Result};

/// The big-endian `u16` in front of every handshake message.
const HANDSHAKE_PREFIX_LEN: usize = 2;

/// A handshake message as it goes on the wire: its `u16` length, then the message.
///
/// Fails for a message longer than [`HANDSHAKE_MAX_LEN`], which [`LinkHandshake`] never
/// produces and no reader accepts.
///
/// [`LinkHandshake`]: super::LinkHandshake
pub fn handshake_record(msg: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(msg.len())
        .ok()
        .filter(|_| msg.len() <= HANDSHAKE_MAX_LEN)
        .ok_or(ApiMisuse::MessageTooLarge {
            got: msg.len(),
            limit: HANDSHAKE_MAX_LEN,
        })?;
    let mut out = Vec::with_capacity(HANDSHAKE_PREFIX_LEN + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(out)
}

/// Buffers a link's incoming bytes and pops whole handshake messages, then whole frames.
///
/// ```
/// use spore_protocol::link::{LinkDecoder, LinkHandshake, handshake_record};
///
/// let mut client = LinkHandshake::initiator(&[9u8; 32], None)?;
/// let wire = handshake_record(&client.write_message()?)?;
///
/// let mut decoder = LinkDecoder::new();
/// decoder.push(&wire[..3]); // TCP may deliver any piece
/// assert_eq!(decoder.pop_handshake()?, None);
/// decoder.push(&wire[3..]);
/// let msg = decoder.pop_handshake()?.expect("a whole message");
/// LinkHandshake::responder(&[7u8; 32])?.read_message(&msg)?;
/// # Ok::<(), spore_protocol::Error>(())
/// ```
#[derive(Default)]
pub struct LinkDecoder {
    /// `buf[start..end]` is received and not handed out; `buf[end..]` is room to read into.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for LinkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkDecoder")
            .field("buffered", &self.buffered())
            .finish_non_exhaustive()
    }
}

impl LinkDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Room for `max` more bytes: read into it, then say how many arrived with
    /// [`filled`](Self::filled). Until then the room holds nothing, so an abandoned read
    /// changes nothing.
    pub fn unfilled(&mut self, max: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end.saturating_add(max) > self.buf.len() {
            // Move the partial item to the front instead of growing.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.end.saturating_add(max);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let end = self.end;
        self.buf.get_mut(end..want).unwrap_or_default()
    }

    /// Takes in `n` bytes just read into [`unfilled`](Self::unfilled) (at most what it
    /// offered).
    pub fn filled(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.unfilled(bytes.len()).copy_from_slice(bytes);
        self.filled(bytes.len());
    }

    /// The length of the next handshake message, once its prefix is here; rejects a prefix
    /// above [`HANDSHAKE_MAX_LEN`] before a byte of the message is buffered.
    fn handshake_len(&self) -> Result<Option<usize>> {
        let Some(prefix) = self.pending().get(..HANDSHAKE_PREFIX_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        if len > HANDSHAKE_MAX_LEN {
            return Err(InvalidMessage::TooLong {
                limit: HANDSHAKE_MAX_LEN,
            }
            .into());
        }
        Ok(Some(len))
    }

    /// How many more bytes complete the next handshake message (0 when it is here). A reader
    /// that reads no more than this never takes transport bytes in before the handshake is
    /// done, so it can hand the socket on afterwards with nothing left behind.
    pub fn handshake_bytes_wanted(&self) -> Result<usize> {
        let whole = match self.handshake_len()? {
            Some(len) => HANDSHAKE_PREFIX_LEN + len,
            None => HANDSHAKE_PREFIX_LEN,
        };
        Ok(whole.saturating_sub(self.buffered()))
    }

    /// The next whole handshake message without its prefix, or `None` until it has arrived.
    pub fn pop_handshake(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(len) = self.handshake_len()? else {
            return Ok(None);
        };
        let whole = HANDSHAKE_PREFIX_LEN + len;
        let Some(msg) = self.pending().get(HANDSHAKE_PREFIX_LEN..whole) else {
            return Ok(None);
        };
        let msg = msg.to_vec();
        self.start += whole;
        Ok(Some(msg))
    }

    /// The next frame, authenticated and parsed by `opener`, or `None` until a whole record
    /// has arrived. The record is consumed even when it fails to open; any error is fatal for
    /// the link.
    pub fn pop_frame(&mut self, opener: &mut LinkOpener) -> Result<Option<Frame>> {
        let Some(record) = self.pending().get(..WIRE_FRAME_LEN) else {
            return Ok(None);
        };
        let frame = opener.open(record);
        self.start += WIRE_FRAME_LEN;
        frame.map(Some)
    }

    /// Called when the stream ended: fine between items, an error inside one.
    pub fn finish(&self) -> Result<()> {
        if self.buffered() == 0 {
            Ok(())
        } else {
            Err(InvalidMessage::Truncated.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::link::{LinkHandshake, static_public_key};
    use proptest::prelude::*;

    /// Two ends of a finished handshake, driven through the decoder one byte at a time.
    fn byte_by_byte_handshake() -> (crate::link::LinkTransport, crate::link::LinkTransport) {
        let relay_secret = [7u8; 32];
        let mut client =
            LinkHandshake::initiator(&[9u8; 32], Some(static_public_key(&relay_secret))).unwrap();
        let mut relay = LinkHandshake::responder(&relay_secret).unwrap();
        let (mut to_relay, mut to_client) = (LinkDecoder::new(), LinkDecoder::new());
        while !(client.is_finished() && relay.is_finished()) {
            let (from, to, decoder) = if client.is_my_turn() && !client.is_finished() {
                (&mut client, &mut relay, &mut to_relay)
            } else {
                (&mut relay, &mut client, &mut to_client)
            };
            let wire = handshake_record(&from.write_message().unwrap()).unwrap();
            let mut msg = None;
            for b in &wire {
                assert!(msg.is_none(), "popped before the last byte");
                assert!(decoder.handshake_bytes_wanted().unwrap() > 0);
                decoder.push(&[*b]);
                msg = decoder.pop_handshake().unwrap();
            }
            assert_eq!(decoder.handshake_bytes_wanted().unwrap(), 2);
            to.read_message(&msg.unwrap()).unwrap();
        }
        (
            client.into_transport().unwrap().0,
            relay.into_transport().unwrap().0,
        )
    }

    #[test]
    fn handshake_and_frames_in_arbitrary_pieces() {
        let (client, relay) = byte_by_byte_handshake();
        let (mut tx, _) = client.split();
        let (_, mut rx) = relay.split();
        let frames = [
            Frame::PullRequest,
            Frame::Padding,
            Frame::DeleteDone { count: 3 },
        ];
        let mut stream = Vec::new();
        for f in &frames {
            let mut wire = [0u8; WIRE_FRAME_LEN];
            tx.seal(f, &mut wire).unwrap();
            stream.extend_from_slice(&wire);
        }
        let mut decoder = LinkDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(WIRE_FRAME_LEN / 3 + 7) {
            decoder.push(piece);
            while let Some(f) = decoder.pop_frame(&mut rx).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn oversized_handshake_prefix_is_rejected_before_the_body() {
        let mut decoder = LinkDecoder::new();
        decoder.push(&(HANDSHAKE_MAX_LEN as u16 + 1).to_be_bytes());
        let too_long = Err(Error::from(InvalidMessage::TooLong {
            limit: HANDSHAKE_MAX_LEN,
        }));
        assert_eq!(
            decoder.handshake_bytes_wanted(),
            too_long.clone().map(|()| 0)
        );
        assert_eq!(decoder.pop_handshake(), too_long.map(|()| None));
        assert!(handshake_record(&[0u8; HANDSHAKE_MAX_LEN + 1]).is_err());
    }

    #[test]
    fn a_stream_cut_inside_an_item_is_an_error() {
        let mut decoder = LinkDecoder::new();
        decoder.push(&[0, 48]);
        decoder.push(&[1; 20]);
        assert_eq!(decoder.pop_handshake(), Ok(None));
        assert_eq!(decoder.handshake_bytes_wanted(), Ok(28));
        assert_eq!(decoder.finish(), Err(InvalidMessage::Truncated.into()));
    }

    #[test]
    fn an_abandoned_read_changes_nothing() {
        let mut decoder = LinkDecoder::new();
        decoder.push(&[0, 2, 5]);
        decoder.unfilled(4096).fill(0xee); // read started, then cancelled
        decoder.push(&[6]);
        assert_eq!(decoder.pop_handshake(), Ok(Some(vec![5, 6])));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_record_that_fails_to_open_is_fatal_and_consumed() {
        let (_, relay) = byte_by_byte_handshake();
        let (_, mut rx) = relay.split();
        let mut decoder = LinkDecoder::new();
        decoder.push(&[0u8; WIRE_FRAME_LEN + 1]);
        assert_eq!(
            decoder.pop_frame(&mut rx),
            Err(InvalidMessage::Decrypt.into())
        );
        assert_eq!(decoder.buffered(), 1);
    }

    proptest! {
        #[test]
        fn arbitrary_chunks_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut decoder = LinkDecoder::new();
            for chunk in &chunks {
                decoder.push(chunk);
                while let Ok(Some(_)) = decoder.pop_handshake() {}
                let _ = decoder.handshake_bytes_wanted();
            }
            let _ = decoder.finish();
        }
    }
}
