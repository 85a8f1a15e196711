//! A framed Noise link over TCP: the handshake (u16-BE length-prefixed messages, each at most
//! `HANDSHAKE_MAX_LEN` bytes) and then fixed-size encrypted frames with no length prefix.
//!
//! The framing itself (prefixes, length limits, partial records) is
//! [`spore_protocol::link::LinkDecoder`]'s; this module only moves bytes between it and a
//! socket. Every read has a size limit known before anything is buffered: a handshake message
//! length above the limit, or any record that fails authentication, ends the link.

use std::time::Duration;

use spore_protocol::link::{
    Frame, LinkDecoder, LinkHandshake, LinkOpener, LinkSealer, LinkTransport, WIRE_FRAME_LEN,
    handshake_record,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::{RelayError, Result};

/// Bytes asked of the socket per read once the link is up: every frame already waiting, up to
/// 16, in one syscall instead of one per frame.
const READ_CHUNK: usize = 16 * WIRE_FRAME_LEN;

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mut hs: LinkHandshake,
) -> Result<(LinkTransport, [u8; 32])> {
    // Reads stop at the end of each handshake message, so the decoder is empty afterwards and
    // the caller may hand the socket to a `FrameReader`.
    let mut decoder = LinkDecoder::new();
    while !hs.is_finished() {
        if hs.is_my_turn() {
            s.write_all(&handshake_record(&hs.write_message()?)?)
                .await?;
            s.flush().await?;
            continue;
        }
        if let Some(msg) = decoder.pop_handshake()? {
            hs.read_message(&msg)?;
            continue;
        }
        let want = decoder.handshake_bytes_wanted()?;
        let n = s.read(decoder.unfilled(want)).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        decoder.filled(n);
    }
    Ok(hs.into_transport()?)
}

/// Runs the responder side of the handshake; returns the transport and the peer's
/// authenticated static key.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    local_secret: &[u8; 32],
    timeout: Duration,
) -> Result<(LinkTransport, [u8; 32])> {
    let hs = LinkHandshake::responder(local_secret)?;
    tokio::time::timeout(timeout, drive(s, hs))
        .await
        .map_err(|_| RelayError::Timeout)?
}

/// Runs the initiator side; fails unless the responder proves `expected_remote` (if given).
pub async fn connect_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    local_secret: &[u8; 32],
    expected_remote: Option<[u8; 32]>,
    timeout: Duration,
) -> Result<(LinkTransport, [u8; 32])> {
    let hs = LinkHandshake::initiator(local_secret, expected_remote)?;
    tokio::time::timeout(timeout, drive(s, hs))
        .await
        .map_err(|_| RelayError::Timeout)?
}

/// The receiving half of an established link: a thin tokio adapter over [`LinkDecoder`].
pub struct FrameReader<R> {
    rd: R,
    opener: LinkOpener,
    /// Bytes of the next record already read; kept across calls so that `read_frame` is
    /// cancel-safe (usable in `select!`).
    decoder: LinkDecoder,
}

impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R, opener: LinkOpener) -> Self {
        Self {
            rd,
            opener,
            decoder: LinkDecoder::new(),
        }
    }

    /// The next frame; `Ok(None)` when the peer closed the connection between frames.
    /// Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.decoder.pop_frame(&mut self.opener)? {
                return Ok(Some(frame));
            }
            let n = self.rd.read(self.decoder.unfilled(READ_CHUNK)).await?;
            if n == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
            self.decoder.filled(n);
        }
    }
}

/// The sending half of an established link. Frames are buffered until [`FrameWriter::flush`].
pub struct FrameWriter<W: AsyncWrite> {
    wr: BufWriter<W>,
    sealer: LinkSealer,
    buf: Box<[u8; WIRE_FRAME_LEN]>,
}

impl<W: AsyncWrite> std::fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(wr: W, sealer: LinkSealer) -> Self {
        Self {
            wr: BufWriter::with_capacity(16 * WIRE_FRAME_LEN, wr),
            sealer,
            buf: Box::new([0u8; WIRE_FRAME_LEN]),
        }
    }

    /// Seals and buffers one frame.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        self.sealer.seal(frame, &mut self.buf)?;
        self.wr.write_all(&self.buf[..]).await?;
        Ok(())
    }

    /// Seals `frame` and appends the record to `out` instead of the stream, taking the next
    /// nonce just as [`FrameWriter::write_frame`] would. Lets a load generator pay for the
    /// link encryption before it starts a clock; the records must then go out through
    /// [`FrameWriter::write_sealed`] in the order they were sealed, with no frame in between.
    pub fn seal_to(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
        self.sealer.seal(frame, &mut self.buf)?;
        out.extend_from_slice(&self.buf[..]);
        Ok(())
    }

    /// Buffers records made by [`FrameWriter::seal_to`].
    pub async fn write_sealed(&mut self, records: &[u8]) -> Result<()> {
        self.wr.write_all(records).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.wr.flush().await?;
        Ok(())
    }

    /// Flushes and closes the sending direction.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.wr.shutdown().await?;
        Ok(())
    }
}

/// A whole link as one value; what clients, tools and tests use to talk to a relay.
///
/// ```no_run
/// # async fn f() -> Result<(), spore_relay::RelayError> {
/// use spore_protocol::link::Frame;
/// let mailbox_secret = [7u8; 32];
/// let relay_link_key = [1u8; 32]; // from the relay's descriptor
/// let mut link = spore_relay::Link::connect("127.0.0.1:7400", &mailbox_secret, Some(relay_link_key)).await?;
/// link.send(&Frame::PullRequest).await?;
/// let first_slot = link.recv().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Link {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: FrameWriter<OwnedWriteHalf>,
    /// The peer's authenticated static key.
    pub remote_static: [u8; 32],
}

/// Connect and handshake timeout used by [`Link::connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Link {
    /// Opens a TCP connection to `addr` and runs the Noise handshake as initiator.
    pub async fn connect(
        addr: &str,
        local_secret: &[u8; 32],
        expected_remote: Option<[u8; 32]>,
    ) -> Result<Self> {
        Self::connect_timeout(addr, local_secret, expected_remote, DEFAULT_CONNECT_TIMEOUT).await
    }

    pub async fn connect_timeout(
        addr: &str,
        local_secret: &[u8; 32],
        expected_remote: Option<[u8; 32]>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RelayError::Timeout)??;
        stream.set_nodelay(true)?;
        let (transport, remote_static) =
            connect_handshake(&mut stream, local_secret, expected_remote, timeout).await?;
        let (sealer, opener) = transport.split();
        let (rd, wr) = stream.into_split();
        Ok(Self {
            reader: FrameReader::new(rd, opener),
            writer: FrameWriter::new(wr, sealer),
            remote_static,
        })
    }

    /// Sends one frame and flushes.
    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.writer.write_frame(frame).await?;
        self.writer.flush().await
    }

    /// The next frame; an error if the peer closed the link.
    pub async fn recv(&mut self) -> Result<Frame> {
        self.reader
            .read_frame()
            .await?
            .ok_or_else(|| RelayError::Link("closed by peer".into()))
    }
}
