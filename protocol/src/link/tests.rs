//! The link layer end to end: handshake over byte queues, then frames both ways.

use super::*;
use crate::error::{Error, InvalidMessage, PeerMisbehaved, Result};
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
        LinkHandshake::initiator(&client_secret, Some(static_public_key(&relay_secret))).unwrap();
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
        Frame::BulkPullRequest,
        Frame::CapabilityPull {
            ops: (0..crate::capability::MAX_CAPABILITY_OPS as u8)
                .map(|i| crate::capability::CapabilityOp::Register {
                    capability: crate::capability::CapabilityId([i; 32]),
                    quota_items: u32::MAX,
                    quota_bytes: u64::MAX,
                })
                .collect(),
        },
        Frame::PullSlot(PullSlot {
            index: 0,
            item: None,
        }),
        Frame::PullSlot(PullSlot {
            index: (BULK_PULL_SLOTS - 1) as u8,
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
    let mut c = LinkHandshake::initiator(&[1u8; 32], Some(static_public_key(&[9u8; 32]))).unwrap();
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
    for ty in [0u8, 10, 0xff] {
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
    slot[1] = BULK_PULL_SLOTS as u8;
    assert!(Frame::decode(&slot).is_err());
    let mut code = encode(&Frame::Error {
        code: LinkErrorCode::Internal,
    });
    code[1..3].copy_from_slice(&999u16.to_be_bytes());
    assert!(Frame::decode(&code).is_err());

    let no_ops = Frame::CapabilityPull { ops: vec![] };
    assert!(no_ops.encode_into(&mut [0u8; FRAME_LEN]).is_err());
    let mut caps = encode(&Frame::CapabilityPull {
        ops: vec![crate::capability::CapabilityOp::Revoke {
            capability: crate::capability::CapabilityId([1; 32]),
        }],
    });
    for count in [0u8, crate::capability::MAX_CAPABILITY_OPS as u8 + 1] {
        caps[1] = count;
        assert!(Frame::decode(&caps).is_err());
    }
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
    fn capability_pulls_round_trip(
        ops in proptest::collection::vec(
            (any::<bool>(), any::<[u8; 32]>(), any::<u32>(), any::<u64>()),
            1..=crate::capability::MAX_CAPABILITY_OPS,
        )
    ) {
        use crate::capability::{CapabilityId, CapabilityOp};
        let ops = ops
            .into_iter()
            .map(|(register, c, quota_items, quota_bytes)| match register {
                true => CapabilityOp::Register { capability: CapabilityId(c), quota_items, quota_bytes },
                false => CapabilityOp::Revoke { capability: CapabilityId(c) },
            })
            .collect();
        let frame = Frame::CapabilityPull { ops };
        prop_assert_eq!(Frame::decode(&encode(&frame)).unwrap(), frame);
    }

    #[test]
    fn delete_frames_round_trip(handles in proptest::collection::vec(any::<u64>(), 0..=MAX_DELETE_HANDLES)) {
        let frame = Frame::Delete { handles };
        prop_assert_eq!(Frame::decode(&encode(&frame)).unwrap(), frame);
    }

    #[test]
    fn pull_slots_round_trip(index in 0..BULK_PULL_SLOTS as u8, handle in any::<u64>(), surb_id in any::<[u8; 16]>(), fill in any::<u8>()) {
        let frame = Frame::PullSlot(PullSlot {
            index,
            item: Some(MailboxItem { handle, surb_id, payload: Box::new([fill; PAYLOAD_SIZE]) }),
        });
        prop_assert_eq!(Frame::decode(&encode(&frame)).unwrap(), frame);
    }
}
