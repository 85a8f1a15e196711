//! The Noise `XX` handshake that opens every link, as a state machine without I/O.

use snow::HandshakeState;
use x25519_dalek::{PublicKey, StaticSecret};

use super::transport::LinkTransport;
use super::{HANDSHAKE_MAX_LEN, NOISE_PARAMS, PROLOGUE};
use crate::error::{ApiMisuse, Error, InvalidMessage, PeerMisbehaved, Result};

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
        Ok((LinkTransport::new(state), remote))
    }
}
