//! The one Noise link a client keeps: to its own mailbox relay, which is also its entry relay.
//!
//! The client authenticates with its mailbox key as the Noise static key, so the relay serves
//! pulls for exactly that mailbox. After the handshake (u16-BE length-prefixed messages) the
//! link carries fixed-size encrypted frames in both directions.

use std::time::Duration;

use spore_protocol::link::{
    Frame, LinkDecoder, LinkHandshake, LinkOpener, LinkSealer, WIRE_FRAME_LEN, handshake_record,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Bytes asked of the socket per read once the link is up: every frame already waiting, up to
/// 16, in one syscall.
const READ_CHUNK: usize = 16 * WIRE_FRAME_LEN;

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
        // Reads stop at the end of each handshake message, so nothing is left in it after.
        let mut decoder = LinkDecoder::new();
        while !hs.is_finished() {
            if hs.is_my_turn() {
                stream
                    .write_all(&handshake_record(&hs.write_message()?)?)
                    .await?;
                continue;
            }
            if let Some(msg) = decoder.pop_handshake()? {
                hs.read_message(&msg)?;
                continue;
            }
            let want = decoder.handshake_bytes_wanted()?;
            let n = stream.read(decoder.unfilled(want)).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            decoder.filled(n);
        }
        let (transport, _remote) = hs.into_transport()?;
        let (sealer, opener) = transport.split();
        let (rd, wr) = stream.into_split();
        Ok((
            FrameReader {
                rd,
                opener,
                decoder,
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

/// The receiving half: a thin tokio adapter over [`LinkDecoder`].
pub struct FrameReader {
    rd: OwnedReadHalf,
    opener: LinkOpener,
    /// Bytes of the next record already read, kept across calls: `read_frame` is cancel-safe.
    decoder: LinkDecoder,
}

impl FrameReader {
    /// The next frame. Cancel-safe (usable in `select!`).
    pub async fn read_frame(&mut self) -> Result<Frame, LinkError> {
        loop {
            if let Some(frame) = self.decoder.pop_frame(&mut self.opener)? {
                return Ok(frame);
            }
            let n = self.rd.read(self.decoder.unfilled(READ_CHUNK)).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.decoder.filled(n);
        }
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
