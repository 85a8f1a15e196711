//! The one Noise link a client keeps: to its own mailbox relay, which is also its entry relay.
//!
//! The client authenticates with its mailbox key as the Noise static key, so the relay serves
//! pulls for exactly that mailbox. After the handshake (u16-BE length-prefixed messages) the
//! link carries fixed-size encrypted frames in both directions.

use std::time::Duration;

use spore_protocol::link::{
    Frame, HANDSHAKE_MAX_LEN, LinkHandshake, LinkOpener, LinkSealer, WIRE_FRAME_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Why a link could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] spore_protocol::Error),
    #[error("timed out")]
    Timeout,
    #[error("closed by the relay")]
    Closed,
    #[error("handshake message too long")]
    HandshakeTooLong,
}

/// Opens a link: TCP connect, Noise XX as initiator pinned to the relay's link key.
pub async fn connect(
    address: &str,
    mailbox_secret: &[u8; 32],
    relay_link_key: [u8; 32],
    timeout: Duration,
) -> Result<(FrameReader, FrameWriter), LinkError> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let mut hs = LinkHandshake::initiator(mailbox_secret, Some(relay_link_key))?;
        while !hs.is_finished() {
            if hs.is_my_turn() {
                let msg = hs.write_message()?;
                let len = u16::try_from(msg.len()).map_err(|_| LinkError::HandshakeTooLong)?;
                let mut buf = Vec::with_capacity(2 + msg.len());
                buf.extend_from_slice(&len.to_be_bytes());
                buf.extend_from_slice(&msg);
                stream.write_all(&buf).await?;
            } else {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await?;
                let len = usize::from(u16::from_be_bytes(len));
                if len > HANDSHAKE_MAX_LEN {
                    return Err(LinkError::HandshakeTooLong);
                }
                let mut msg = vec![0u8; len];
                stream.read_exact(&mut msg).await?;
                hs.read_message(&msg)?;
            }
        }
        let (transport, _remote) = hs.into_transport()?;
        let (sealer, opener) = transport.split();
        let (rd, wr) = stream.into_split();
        Ok((
            FrameReader {
                rd,
                opener,
                buf: Box::new([0u8; WIRE_FRAME_LEN]),
                filled: 0,
            },
            FrameWriter {
                wr,
                sealer,
                buf: Box::new([0u8; WIRE_FRAME_LEN]),
            },
        ))
    })
    .await
    .map_err(|_| LinkError::Timeout)?
}

/// The receiving half.
pub struct FrameReader {
    rd: OwnedReadHalf,
    opener: LinkOpener,
    buf: Box<[u8; WIRE_FRAME_LEN]>,
    /// Bytes of the next record already read, kept across calls: `read_frame` is cancel-safe.
    filled: usize,
}

impl FrameReader {
    /// The next frame. Cancel-safe (usable in `select!`).
    pub async fn read_frame(&mut self) -> Result<Frame, LinkError> {
        while self.filled < WIRE_FRAME_LEN {
            let Some(rest) = self.buf.get_mut(self.filled..) else {
                break;
            };
            let n = self.rd.read(rest).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.filled += n;
        }
        self.filled = 0;
        Ok(self.opener.open(&self.buf[..])?)
    }
}

/// The sending half. Every frame is written and flushed at once: the time a frame leaves is
/// the time the scheduler chose.
pub struct FrameWriter {
    wr: OwnedWriteHalf,
    sealer: LinkSealer,
    buf: Box<[u8; WIRE_FRAME_LEN]>,
}

impl FrameWriter {
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), LinkError> {
        self.sealer.seal(frame, &mut self.buf)?;
        self.wr.write_all(&self.buf[..]).await?;
        Ok(())
    }
}
