//! The Sphinx packet layer: Spore's guard rails around `sphinx-packet` 0.8.0.
//!
//! The crate underneath does the cryptography but leaves every policy decision to its caller:
//! it accepts packets of any length above a minimum (a tagging channel), processes every
//! header version it knows, takes any delay a sender writes, and happily derives the same key
//! material at every hop from an all-zero group element. [`IncomingPacket`] and
//! [`PreparedPacket`] close each of those holes, in the order a relay must do its work:
//!
//! 1. [`IncomingPacket::parse`] — exact size, no low-order group element (cheap, no crypto);
//! 2. [`IncomingPacket::prepare`] — the one X25519 multiplication; exposes the replay tag so
//!    the relay checks its cache *before* paying for the unwrap;
//! 3. [`PreparedPacket::unwrap`] — MAC, decryption, version 260 only, bounded delay.
//!
//! Building: [`build_packet`] for the forward path, [`build_surb`] / [`use_surb`] /
//! [`SurbRecovery`] for acks and replies, [`ForwardPayload`] for what a forward packet carries.

use std::sync::LazyLock;
use std::time::Duration;

use hkdf::Hkdf;
use rand::RngExt;
use rand_distr::{Distribution, Exp};
use sha2::Sha256;
use sphinx_packet::constants::{
    BLINDING_FACTOR_SIZE, EXPANDED_SHARED_SECRET_HKDF_INFO, EXPANDED_SHARED_SECRET_HKDF_SALT,
    EXPANDED_SHARED_SECRET_LENGTH, INTEGRITY_MAC_KEY_SIZE, PAYLOAD_KEY_SIZE, REPLAY_TAG_SIZE,
};
use sphinx_packet::crypto::STREAM_CIPHER_KEY_SIZE;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::header::shared_secret::ExpandedSharedSecret;
use sphinx_packet::payload::Payload;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::version::Version;
use sphinx_packet::{ProcessedPacketData, SURB, SURBMaterial, SphinxPacket, SphinxPacketBuilder};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::{ApiMisuse, Error, InvalidMessage, PeerMisbehaved, Result};
use crate::ids::{MailboxId, RelayId};
use crate::params::{
    DEFAULT_MAX_DELAY, HEADER_SIZE, MAX_HOPS, PACKET_SIZE, PAYLOAD_CAPACITY, PAYLOAD_SIZE,
    SEALED_FRAGMENT_SIZE, SPHINX_VERSION, SURB_ID_SIZE, SURB_SIZE,
};

/// A replay tag: the same packet at the same hop under the same key always has the same tag.
pub type ReplayTag = [u8; REPLAY_TAG_SIZE];

/// What a mailbox relay sends back through a SURB-ack. The sender matches acks by SURB id,
/// so the content only has to be recognisable.
pub const ACK_MESSAGE: &[u8] = b"spore/ack/v1";

/// Relay-side policy for accepting packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketLimits {
    /// Every packet must be exactly this long (default [`PACKET_SIZE`]).
    pub packet_size: usize,
    /// Headers asking a hop to wait longer than this are rejected.
    pub max_delay: Duration,
}

impl Default for PacketLimits {
    fn default() -> Self {
        Self {
            packet_size: PACKET_SIZE,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl PacketLimits {
    fn payload_size(&self) -> usize {
        self.packet_size.saturating_sub(HEADER_SIZE)
    }
}

/// Curve25519 points of small order (libsodium's list), compared with the top bit cleared.
/// Any of them as the header's group element makes every hop's shared secret all-zero.
const LOW_ORDER_POINTS: [[u8; 32]; 7] = [
    [0; 32],
    {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    // p - 1
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // p
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // p + 1
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

fn is_low_order(point: &[u8; 32]) -> bool {
    let mut masked = *point;
    masked[31] &= 0x7f;
    LOW_ORDER_POINTS.contains(&masked)
}

/// The replay tag an all-zero X25519 output expands to. A hop whose tag equals this did a
/// non-contributory exchange: a second, exact line of defence behind [`is_low_order`].
static ZERO_SECRET_TAG: LazyLock<ReplayTag> = LazyLock::new(|| {
    let hkdf = Hkdf::<Sha256>::new(Some(EXPANDED_SHARED_SECRET_HKDF_SALT), &[0u8; 32]);
    let mut out = [0u8; EXPANDED_SHARED_SECRET_LENGTH];
    // EXPANDED_SHARED_SECRET_LENGTH is far below HKDF-SHA256's 8160-byte limit.
    let _ = hkdf.expand(EXPANDED_SHARED_SECRET_HKDF_INFO, &mut out);
    let start =
        STREAM_CIPHER_KEY_SIZE + INTEGRITY_MAC_KEY_SIZE + PAYLOAD_KEY_SIZE + BLINDING_FACTOR_SIZE;
    let mut tag = [0u8; REPLAY_TAG_SIZE];
    tag.copy_from_slice(&out[start..start + REPLAY_TAG_SIZE]);
    tag
});

fn sphinx_invalid(e: sphinx_packet::Error) -> Error {
    InvalidMessage::Sphinx(e.to_string()).into()
}

fn sphinx_misuse(e: sphinx_packet::Error) -> Error {
    ApiMisuse::Sphinx(e.to_string()).into()
}

/// A packet that has the exact size and a usable group element, not yet touched by crypto.
pub struct IncomingPacket {
    inner: SphinxPacket,
}

impl IncomingPacket {
    /// The cheap checks, before any scalar multiplication: exact length (an odd-length packet
    /// would be forwarded by the crate as is, marking it hop to hop) and a group element that
    /// is not of small order.
    pub fn parse(bytes: &[u8], limits: &PacketLimits) -> Result<Self> {
        if bytes.len() != limits.packet_size {
            return Err(InvalidMessage::WrongLength {
                expected: limits.packet_size,
                got: bytes.len(),
            }
            .into());
        }
        let mut alpha = [0u8; 32];
        alpha.copy_from_slice(bytes.get(..32).ok_or(InvalidMessage::Truncated)?);
        if is_low_order(&alpha) {
            return Err(PeerMisbehaved::LowOrderPoint.into());
        }
        let inner = SphinxPacket::from_bytes(bytes).map_err(sphinx_invalid)?;
        Ok(Self { inner })
    }

    /// Derives this hop's key material (one X25519 multiplication). After this the replay tag
    /// is known and the relay decides whether the packet is worth unwrapping.
    pub fn prepare(self, key: &StaticSecret) -> Result<PreparedPacket> {
        let secret = self.inner.header.compute_expanded_shared_secret(key);
        if *secret.replay_tag() == *ZERO_SECRET_TAG {
            return Err(PeerMisbehaved::LowOrderPoint.into());
        }
        Ok(PreparedPacket {
            inner: self.inner,
            secret,
        })
    }
}

/// A packet whose key material is derived: the replay tag can be checked before unwrapping.
pub struct PreparedPacket {
    inner: SphinxPacket,
    secret: ExpandedSharedSecret,
}

/// The result of processing one hop.
#[derive(Debug)]
pub enum Unwrapped {
    /// Hold for `delay`, then send `packet` to `next_hop`.
    Forward {
        next_hop: RelayId,
        delay: Duration,
        packet: Vec<u8>,
    },
    /// This relay is the last hop: store `payload` for `mailbox`.
    Final {
        mailbox: MailboxId,
        surb_id: [u8; SURB_ID_SIZE],
        payload: Vec<u8>,
    },
}

impl PreparedPacket {
    pub fn replay_tag(&self) -> ReplayTag {
        *self.secret.replay_tag()
    }

    /// Checks the header MAC, removes one layer, and enforces version and delay policy.
    pub fn unwrap(self, limits: &PacketLimits) -> Result<Unwrapped> {
        let processed = self
            .inner
            .process_with_expanded_secret(&self.secret)
            .map_err(|e| match e.kind() {
                sphinx_packet::ErrorKind::InvalidHeader => PeerMisbehaved::BadHeaderMac.into(),
                _ => sphinx_invalid(e),
            })?;
        if processed.version.value() != SPHINX_VERSION {
            return Err(PeerMisbehaved::WrongSphinxVersion(processed.version.value()).into());
        }
        match processed.data {
            ProcessedPacketData::ForwardHop {
                next_hop_packet,
                next_hop_address,
                delay,
            } => {
                let delay = delay.to_duration();
                if delay > limits.max_delay {
                    return Err(PeerMisbehaved::DelayTooLong {
                        got_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        max_ms: u64::try_from(limits.max_delay.as_millis()).unwrap_or(u64::MAX),
                    }
                    .into());
                }
                let packet = next_hop_packet.to_bytes();
                if packet.len() != limits.packet_size {
                    return Err(InvalidMessage::WrongLength {
                        expected: limits.packet_size,
                        got: packet.len(),
                    }
                    .into());
                }
                Ok(Unwrapped::Forward {
                    next_hop: RelayId(next_hop_address.to_bytes()),
                    delay,
                    packet,
                })
            }
            ProcessedPacketData::FinalHop {
                destination,
                identifier,
                payload,
            } => {
                let payload = payload.into_bytes();
                if payload.len() != limits.payload_size() {
                    return Err(InvalidMessage::WrongLength {
                        expected: limits.payload_size(),
                        got: payload.len(),
                    }
                    .into());
                }
                Ok(Unwrapped::Final {
                    mailbox: MailboxId(destination.as_bytes()),
                    surb_id: identifier,
                    payload,
                })
            }
        }
    }
}

/// One hop of a route: who, and the Sphinx key it holds for the packet's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteHop {
    pub id: RelayId,
    pub sphinx_key: PublicKey,
}

fn nodes(route: &[RouteHop]) -> Result<Vec<Node>> {
    if route.is_empty() || route.len() > MAX_HOPS {
        return Err(ApiMisuse::RouteLength {
            got: route.len(),
            max: MAX_HOPS,
        }
        .into());
    }
    Ok(route
        .iter()
        .map(|h| Node::new(NodeAddressBytes::from_bytes(h.id.0), h.sphinx_key))
        .collect())
}

fn delays(route: &[RouteHop], delays: &[Duration]) -> Result<Vec<Delay>> {
    if delays.len() != route.len() {
        return Err(ApiMisuse::InvalidArgument("one delay per hop is required").into());
    }
    Ok(delays
        .iter()
        .map(|d| Delay::new_from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
        .collect())
}

/// Builds a version-260 forward packet of [`PACKET_SIZE`] bytes. `delays[i]` is what hop `i`
/// holds the packet for (the last hop's delay is not used: it stores, it does not forward).
/// `message` is at most [`PAYLOAD_CAPACITY`] bytes.
///
/// ```
/// use std::time::Duration;
/// use spore_protocol::packet::{build_packet, IncomingPacket, PacketLimits, RouteHop, Unwrapped};
/// use spore_protocol::{MailboxId, RelayId};
/// use x25519_dalek::{PublicKey, StaticSecret};
///
/// let key = StaticSecret::from([7u8; 32]);
/// let hop = RouteHop { id: RelayId([1; 32]), sphinx_key: PublicKey::from(&key) };
/// let bytes = build_packet(&[hop], MailboxId([2; 32]), [3; 16], &[Duration::ZERO], b"hi").unwrap();
/// let limits = PacketLimits::default();
/// let prepared = IncomingPacket::parse(&bytes, &limits).unwrap().prepare(&key).unwrap();
/// let _tag = prepared.replay_tag(); // check the replay cache here
/// assert!(matches!(prepared.unwrap(&limits).unwrap(), Unwrapped::Final { .. }));
/// ```
pub fn build_packet(
    route: &[RouteHop],
    destination: MailboxId,
    surb_id: [u8; SURB_ID_SIZE],
    hop_delays: &[Duration],
    message: &[u8],
) -> Result<Vec<u8>> {
    if message.len() > PAYLOAD_CAPACITY {
        return Err(ApiMisuse::MessageTooLarge {
            got: message.len(),
            limit: PAYLOAD_CAPACITY,
        }
        .into());
    }
    let nodes = nodes(route)?;
    let delays = delays(route, hop_delays)?;
    let dest = Destination::new(DestinationAddressBytes::from_bytes(destination.0), surb_id);
    let packet = SphinxPacketBuilder::new()
        .with_version(Version::new(SPHINX_VERSION))
        .with_payload_size(PAYLOAD_SIZE)
        .build_packet(message, &nodes, &dest, &delays)
        .map_err(sphinx_misuse)?;
    Ok(packet.to_bytes())
}

/// Per-hop delays drawn from an exponential distribution with rate `mu` (mean `1/mu` seconds),
/// each capped at `max` so that honest packets are never refused for their delay.
pub fn sample_delays<R: rand::Rng + ?Sized>(
    rng: &mut R,
    mu: f64,
    hops: usize,
    max: Duration,
) -> Result<Vec<Duration>> {
    let exp = Exp::new(mu).map_err(|_| ApiMisuse::InvalidArgument("mu must be positive"))?;
    Ok((0..hops)
        .map(|_| {
            let secs: f64 = exp.sample(rng);
            Duration::try_from_secs_f64(secs).unwrap_or(max).min(max)
        })
        .collect())
}

/// A fresh random SURB id drawn from the caller's `rng`; never all-zero (the crate refuses
/// zero ids for single-seed SURBs).
pub fn random_surb_id<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> [u8; SURB_ID_SIZE] {
    loop {
        let id: [u8; SURB_ID_SIZE] = rng.random();
        if id != [0; SURB_ID_SIZE] {
            return id;
        }
    }
}

/// What only a SURB's creator keeps: enough to read whatever comes back through it.
#[derive(Clone)]
pub struct SurbRecovery {
    inner: sphinx_packet::SurbReplyRecovery,
}

impl std::fmt::Debug for SurbRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SurbRecovery").finish_non_exhaustive()
    }
}

impl SurbRecovery {
    pub fn surb_id(&self) -> [u8; SURB_ID_SIZE] {
        *self.inner.identifier()
    }

    /// Recovers the message a SURB user sent, from the payload the creator's mailbox stored.
    pub fn open(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let payload = Payload::from_bytes(payload).map_err(sphinx_invalid)?;
        self.inner
            .recover_plaintext(payload)
            .map_err(|_| InvalidMessage::Decrypt.into())
    }

    /// For a durable store of outstanding SURBs.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = sphinx_packet::SurbReplyRecovery::from_bytes(bytes).map_err(sphinx_invalid)?;
        Ok(Self { inner })
    }
}

/// Builds a single-seed (version 260) SURB that delivers to `destination` through `route`
/// (mix layers, then the destination's mailbox relay). Returns the [`SURB_SIZE`]-byte SURB to
/// hand out and the recovery material to keep. Version 259 SURBs would hand every hop's
/// payload key to the SURB user; they are never built.
pub fn build_surb(
    route: &[RouteHop],
    destination: MailboxId,
    surb_id: [u8; SURB_ID_SIZE],
    hop_delays: &[Duration],
) -> Result<(Vec<u8>, SurbRecovery)> {
    let nodes = nodes(route)?;
    let delays = delays(route, hop_delays)?;
    let dest = Destination::new(DestinationAddressBytes::from_bytes(destination.0), surb_id);
    let (surb, recovery) = SURBMaterial::new(nodes, delays, dest, Version::new(SPHINX_VERSION))
        .construct_recoverable_SURB()
        .map_err(sphinx_misuse)?;
    let bytes = surb.to_bytes();
    debug_assert_eq!(bytes.len(), SURB_SIZE);
    Ok((bytes, SurbRecovery { inner: recovery }))
}

/// Sends `message` (at most [`PAYLOAD_CAPACITY`] bytes) back through a SURB somebody handed
/// us. Returns the first hop and the packet. The SURB bytes come from the network: anything
/// that is not exactly one single-seed SURB is an error.
pub fn use_surb(surb: &[u8], message: &[u8]) -> Result<(RelayId, Vec<u8>)> {
    if surb.len() != SURB_SIZE {
        return Err(InvalidMessage::WrongLength {
            expected: SURB_SIZE,
            got: surb.len(),
        }
        .into());
    }
    if message.len() > PAYLOAD_CAPACITY {
        return Err(ApiMisuse::MessageTooLarge {
            got: message.len(),
            limit: PAYLOAD_CAPACITY,
        }
        .into());
    }
    let surb = SURB::from_bytes(surb).map_err(sphinx_invalid)?;
    if surb.materials_count() != 1 {
        return Err(InvalidMessage::BadValue("surb seed count").into());
    }
    let (packet, first_hop) = surb
        .use_surb(message, PAYLOAD_SIZE)
        .map_err(sphinx_invalid)?;
    let mut alpha = [0u8; 32];
    alpha.copy_from_slice(packet.header.shared_secret.as_bytes());
    if is_low_order(&alpha) {
        return Err(PeerMisbehaved::LowOrderPoint.into());
    }
    Ok((RelayId(first_hop.to_bytes()), packet.to_bytes()))
}

/// What a forward packet carries end to end: the SURB-ack the mailbox relay releases once it
/// has stored the packet durably, and one fragment sealed to the recipient. Cover packets
/// carry the same layout (random bytes where a drop packet has no real SURB).
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardPayload {
    pub ack_surb: Vec<u8>,
    pub sealed_fragment: Vec<u8>,
}

impl ForwardPayload {
    /// Exactly [`PAYLOAD_CAPACITY`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.ack_surb.len() != SURB_SIZE || self.sealed_fragment.len() != SEALED_FRAGMENT_SIZE {
            return Err(
                ApiMisuse::InvalidArgument("forward payload parts have fixed sizes").into(),
            );
        }
        let mut out = Vec::with_capacity(PAYLOAD_CAPACITY);
        out.extend_from_slice(&self.ack_surb);
        out.extend_from_slice(&self.sealed_fragment);
        Ok(out)
    }

    /// Parses the plaintext a final hop recovered (see [`open_final_payload`]).
    pub fn decode(plain: &[u8]) -> Result<Self> {
        if plain.len() != PAYLOAD_CAPACITY {
            return Err(InvalidMessage::WrongLength {
                expected: PAYLOAD_CAPACITY,
                got: plain.len(),
            }
            .into());
        }
        let (ack, sealed) = plain.split_at(SURB_SIZE);
        Ok(Self {
            ack_surb: ack.to_vec(),
            sealed_fragment: sealed.to_vec(),
        })
    }
}

/// Removes the Sphinx payload encoding from a final-hop payload of a *forward* packet.
/// Fails for SURB replies, whose content only the SURB's creator can recover.
pub fn open_final_payload(payload: &[u8]) -> Result<Vec<u8>> {
    let payload = Payload::from_bytes(payload).map_err(sphinx_invalid)?;
    payload.recover_plaintext().map_err(sphinx_invalid)
}

/// The SURB-ack inside a forward packet's final payload, if it has one. What the mailbox
/// relay calls after the payload is durable; replies (no ack) and malformed payloads give `None`.
pub fn ack_surb_of(payload: &[u8]) -> Option<Vec<u8>> {
    let plain = open_final_payload(payload).ok()?;
    let fwd = ForwardPayload::decode(&plain).ok()?;
    Some(fwd.ack_surb)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestRelay {
        id: RelayId,
        key: StaticSecret,
    }

    fn relays(n: usize) -> Vec<TestRelay> {
        (0..n)
            .map(|i| TestRelay {
                id: RelayId([i as u8 + 1; 32]),
                key: StaticSecret::from(rand::random::<[u8; 32]>()),
            })
            .collect()
    }

    fn route(rs: &[TestRelay]) -> Vec<RouteHop> {
        rs.iter()
            .map(|r| RouteHop {
                id: r.id,
                sphinx_key: PublicKey::from(&r.key),
            })
            .collect()
    }

    fn hop(bytes: &[u8], key: &StaticSecret) -> Result<Unwrapped> {
        let limits = PacketLimits::default();
        IncomingPacket::parse(bytes, &limits)?
            .prepare(key)?
            .unwrap(&limits)
    }

    #[test]
    fn five_hop_packet_reaches_the_mailbox() {
        let rs = relays(5);
        let mailbox = MailboxId([9; 32]);
        let delays = vec![Duration::from_millis(5); 5];
        let mut bytes = build_packet(&route(&rs), mailbox, [4; 16], &delays, b"hello").unwrap();
        assert_eq!(bytes.len(), PACKET_SIZE);
        for (i, r) in rs.iter().enumerate() {
            match hop(&bytes, &r.key).unwrap() {
                Unwrapped::Forward {
                    next_hop,
                    delay,
                    packet,
                } => {
                    assert_eq!(next_hop, rs[i + 1].id);
                    assert_eq!(delay, Duration::from_millis(5));
                    assert_eq!(packet.len(), PACKET_SIZE);
                    bytes = packet;
                }
                Unwrapped::Final {
                    mailbox: m,
                    surb_id,
                    payload,
                } => {
                    assert_eq!(i, 4);
                    assert_eq!(m, mailbox);
                    assert_eq!(surb_id, [4; 16]);
                    assert_eq!(payload.len(), PAYLOAD_SIZE);
                    assert_eq!(open_final_payload(&payload).unwrap(), b"hello");
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let rs = relays(1);
        let bytes = build_packet(
            &route(&rs),
            MailboxId([1; 32]),
            [1; 16],
            &[Duration::ZERO],
            b"x",
        )
        .unwrap();
        let limits = PacketLimits::default();
        for len in [0, 1, PACKET_SIZE - 1, PACKET_SIZE + 1, 2 * PACKET_SIZE] {
            let mut b = bytes.clone();
            b.resize(len, 0);
            let err = IncomingPacket::parse(&b, &limits).err().unwrap();
            assert_eq!(err.reason(), "wrong_size", "len {len}");
        }
    }

    #[test]
    fn version_other_than_260_is_rejected() {
        let rs = relays(2);
        let nodes = nodes(&route(&rs)).unwrap();
        let dest = Destination::new(DestinationAddressBytes::from_bytes([5; 32]), [1; 16]);
        let delays = vec![Delay::new_from_nanos(0); 2];
        for v in [1u16, 257, 258, 259] {
            let p = SphinxPacketBuilder::new()
                .with_version(Version::new(v))
                .build_packet(b"x", &nodes, &dest, &delays)
                .unwrap();
            let err = hop(&p.to_bytes(), &rs[0].key).err().unwrap();
            assert_eq!(
                err,
                Error::PeerMisbehaved(PeerMisbehaved::WrongSphinxVersion(v))
            );
        }
    }

    #[test]
    fn low_order_group_elements_are_rejected() {
        let rs = relays(1);
        let bytes = build_packet(
            &route(&rs),
            MailboxId([1; 32]),
            [1; 16],
            &[Duration::ZERO],
            b"x",
        )
        .unwrap();
        for point in LOW_ORDER_POINTS {
            for high_bit in [0u8, 0x80] {
                let mut b = bytes.clone();
                b[..32].copy_from_slice(&point);
                b[31] |= high_bit;
                let err = IncomingPacket::parse(&b, &PacketLimits::default())
                    .err()
                    .unwrap();
                assert_eq!(err, Error::PeerMisbehaved(PeerMisbehaved::LowOrderPoint));
            }
        }
    }

    #[test]
    fn zero_shared_secret_is_detected_after_the_exchange() {
        // Exactly the tag a zero DH output expands to: proves the second line of defence
        // recognises a non-contributory exchange even if a point slipped past the list.
        let hkdf = Hkdf::<Sha256>::new(Some(EXPANDED_SHARED_SECRET_HKDF_SALT), &[0u8; 32]);
        let mut out = [0u8; EXPANDED_SHARED_SECRET_LENGTH];
        hkdf.expand(EXPANDED_SHARED_SECRET_HKDF_INFO, &mut out)
            .unwrap();
        assert_eq!(&out[out.len() - REPLAY_TAG_SIZE..], &ZERO_SECRET_TAG[..]);
    }

    #[test]
    fn oversized_delay_is_rejected() {
        let rs = relays(2);
        let delays = [DEFAULT_MAX_DELAY + Duration::from_millis(1), Duration::ZERO];
        let bytes = build_packet(&route(&rs), MailboxId([1; 32]), [1; 16], &delays, b"x").unwrap();
        let err = hop(&bytes, &rs[0].key).err().unwrap();
        assert_eq!(err.reason(), "delay_too_long");
        // exactly the maximum is fine
        let delays = [DEFAULT_MAX_DELAY, Duration::ZERO];
        let bytes = build_packet(&route(&rs), MailboxId([1; 32]), [1; 16], &delays, b"x").unwrap();
        assert!(hop(&bytes, &rs[0].key).is_ok());
    }

    #[test]
    fn replayed_packet_has_the_same_tag_at_the_same_hop() {
        let rs = relays(3);
        let bytes = build_packet(
            &route(&rs),
            MailboxId([1; 32]),
            [1; 16],
            &[Duration::ZERO; 3],
            b"x",
        )
        .unwrap();
        let limits = PacketLimits::default();
        let t1 = IncomingPacket::parse(&bytes, &limits)
            .unwrap()
            .prepare(&rs[0].key)
            .unwrap();
        let t2 = IncomingPacket::parse(&bytes, &limits)
            .unwrap()
            .prepare(&rs[0].key)
            .unwrap();
        assert_eq!(t1.replay_tag(), t2.replay_tag());
        // a different packet on the same route has a different tag
        let other = build_packet(
            &route(&rs),
            MailboxId([1; 32]),
            [1; 16],
            &[Duration::ZERO; 3],
            b"x",
        )
        .unwrap();
        let t3 = IncomingPacket::parse(&other, &limits)
            .unwrap()
            .prepare(&rs[0].key)
            .unwrap();
        assert_ne!(t1.replay_tag(), t3.replay_tag());
        // the next hop sees an unrelated tag
        let Unwrapped::Forward { packet, .. } = t1.unwrap(&limits).unwrap() else {
            panic!()
        };
        let t4 = IncomingPacket::parse(&packet, &limits)
            .unwrap()
            .prepare(&rs[1].key)
            .unwrap();
        assert_ne!(t2.replay_tag(), t4.replay_tag());
    }

    #[test]
    fn wrong_key_fails_the_mac() {
        let rs = relays(2);
        let bytes = build_packet(
            &route(&rs),
            MailboxId([1; 32]),
            [1; 16],
            &[Duration::ZERO; 2],
            b"x",
        )
        .unwrap();
        let err = hop(&bytes, &rs[1].key).err().unwrap();
        assert_eq!(err.reason(), "bad_mac");
    }

    #[test]
    fn flipped_header_bit_fails_the_mac() {
        let rs = relays(2);
        let mut bytes = build_packet(
            &route(&rs),
            MailboxId([1; 32]),
            [1; 16],
            &[Duration::ZERO; 2],
            b"x",
        )
        .unwrap();
        bytes[100] ^= 1;
        assert_eq!(hop(&bytes, &rs[0].key).err().unwrap().reason(), "bad_mac");
    }

    #[test]
    fn surb_ack_round_trip() {
        // A sends to B's mailbox with a SURB-ack routed back to A's mailbox.
        let fwd = relays(5);
        let back = relays(4);
        let a_mailbox = MailboxId([0xaa; 32]);
        let surb_id = random_surb_id(&mut rand::rng());
        let (surb, recovery) =
            build_surb(&route(&back), a_mailbox, surb_id, &[Duration::ZERO; 4]).unwrap();
        assert_eq!(surb.len(), SURB_SIZE);
        let payload = ForwardPayload {
            ack_surb: surb,
            sealed_fragment: vec![7; SEALED_FRAGMENT_SIZE],
        };
        let mut bytes = build_packet(
            &route(&fwd),
            MailboxId([0xbb; 32]),
            random_surb_id(&mut rand::rng()),
            &[Duration::ZERO; 5],
            &payload.encode().unwrap(),
        )
        .unwrap();
        let mut final_payload = None;
        for r in &fwd {
            match hop(&bytes, &r.key).unwrap() {
                Unwrapped::Forward { packet, .. } => bytes = packet,
                Unwrapped::Final { payload, .. } => final_payload = Some(payload),
            }
        }
        // B's mailbox relay: store, then release the ack
        let stored = final_payload.unwrap();
        let got = ForwardPayload::decode(&open_final_payload(&stored).unwrap()).unwrap();
        assert_eq!(got.sealed_fragment, vec![7; SEALED_FRAGMENT_SIZE]);
        let ack_surb = ack_surb_of(&stored).unwrap();
        let (first, mut bytes) = use_surb(&ack_surb, ACK_MESSAGE).unwrap();
        assert_eq!(first, back[0].id);
        let mut ack = None;
        for r in &back {
            match hop(&bytes, &r.key).unwrap() {
                Unwrapped::Forward { packet, .. } => bytes = packet,
                Unwrapped::Final {
                    mailbox,
                    surb_id: id,
                    payload,
                } => {
                    assert_eq!(mailbox, a_mailbox);
                    assert_eq!(id, surb_id);
                    // the ack is opaque to A's mailbox relay…
                    assert!(ack_surb_of(&payload).is_none());
                    ack = Some(payload);
                }
            }
        }
        // …and readable by A alone
        let stored = SurbRecovery::from_bytes(&recovery.to_bytes()).unwrap();
        assert_eq!(stored.surb_id(), surb_id);
        assert_eq!(stored.open(&ack.unwrap()).unwrap(), ACK_MESSAGE);
    }

    #[test]
    fn malformed_surbs_are_errors() {
        assert!(use_surb(&[0u8; SURB_SIZE - 1], ACK_MESSAGE).is_err());
        assert!(use_surb(&[0u8; SURB_SIZE], ACK_MESSAGE).is_err());
        let random: Vec<u8> = (0..SURB_SIZE).map(|_| rand::random()).collect();
        // random bytes may or may not form a usable header; either way: no panic
        let _ = use_surb(&random, ACK_MESSAGE);
    }

    #[test]
    fn sampled_delays_have_the_right_mean_and_cap() {
        let mut rng = rand::rng();
        let d = sample_delays(&mut rng, 20.0, 20_000, Duration::from_secs(60)).unwrap();
        let mean = d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len() as f64;
        assert!((mean - 0.05).abs() < 0.005, "mean {mean}");
        let capped = sample_delays(&mut rng, 0.001, 100, Duration::from_secs(1)).unwrap();
        assert!(capped.iter().all(|d| *d <= Duration::from_secs(1)));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), PACKET_SIZE..=PACKET_SIZE)) {
                let key = StaticSecret::from([3u8; 32]);
                if let Ok(p) = IncomingPacket::parse(&data, &PacketLimits::default())
                    && let Ok(p) = p.prepare(&key)
                {
                    let _ = p.unwrap(&PacketLimits::default());
                }
            }

            #[test]
            fn arbitrary_final_payloads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1100)) {
                let _ = ack_surb_of(&data);
                let _ = open_final_payload(&data);
                let _ = ForwardPayload::decode(&data);
            }
        }
    }
}
