//! The physical floor every relay and client figure is compared against: building a packet,
//! the X25519 step that yields the replay tag, and a full per-hop unwrap. Also the hot paths
//! around them (seal, fragment).

#![allow(clippy::unwrap_used)] // a benchmark that cannot build its input should stop loudly

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use spore_protocol::bundle::{Bundle, BundleBody, FederationRequest, pack};
use spore_protocol::fragment::split;
use spore_protocol::packet::{IncomingPacket, PacketLimits, RouteHop, build_packet};
use spore_protocol::params::{FRAGMENT_DATA_SIZE, FRAGMENT_SIZE, PAYLOAD_CAPACITY};
use spore_protocol::{MailboxId, RelayId, seal};
use x25519_dalek::{PublicKey, StaticSecret};

fn route(keys: &[StaticSecret]) -> Vec<RouteHop> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| RouteHop {
            id: RelayId([i as u8 + 1; 32]),
            sphinx_key: PublicKey::from(k),
        })
        .collect()
}

fn sphinx(c: &mut Criterion) {
    let keys: Vec<StaticSecret> = (0..5)
        .map(|_| StaticSecret::from(rand::random::<[u8; 32]>()))
        .collect();
    let msg = vec![0x42u8; PAYLOAD_CAPACITY];
    let limits = PacketLimits::default();

    c.bench_function("build_3_hops", |b| {
        let r = route(&keys[..3]);
        b.iter(|| {
            build_packet(&r, MailboxId([1; 32]), [1; 16], &[Duration::ZERO; 3], &msg).unwrap()
        })
    });
    // What a mailbox relay pays per final-hop arrival without an ack (drop cover, replies):
    // one decoy, a one-hop packet (relay/src/final_hop_output.rs). Read against
    // `forward_unwrap` of the same run: the decoy's price in relay CPU per such arrival.
    c.bench_function("build_1_hop (a mailbox relay's decoy)", |b| {
        let r = route(&keys[..1]);
        b.iter(|| {
            build_packet(&r, MailboxId::DROP, [1; 16], &[Duration::ZERO; 1], b"decoy").unwrap()
        })
    });
    c.bench_function("build_5_hops", |b| {
        let r = route(&keys);
        b.iter(|| {
            build_packet(&r, MailboxId([1; 32]), [1; 16], &[Duration::ZERO; 5], &msg).unwrap()
        })
    });

    let packet = build_packet(
        &route(&keys),
        MailboxId([1; 32]),
        [1; 16],
        &[Duration::ZERO; 5],
        &msg,
    )
    .unwrap();
    c.bench_function("replay_tag (parse + x25519)", |b| {
        b.iter(|| {
            let p = IncomingPacket::parse(black_box(&packet), &limits).unwrap();
            p.prepare(&keys[0]).unwrap().replay_tag()
        })
    });
    c.bench_function("forward_unwrap (full hop)", |b| {
        b.iter(|| {
            let p = IncomingPacket::parse(black_box(&packet), &limits).unwrap();
            p.prepare(&keys[0]).unwrap().unwrap(&limits).unwrap()
        })
    });
    c.bench_function("bare_sphinx_process (crate only)", |b| {
        b.iter(|| {
            let p = sphinx_packet::SphinxPacket::from_bytes(black_box(&packet)).unwrap();
            p.process(&keys[0]).unwrap()
        })
    });

    let recipient = PublicKey::from(&keys[0]);
    let fragment = vec![7u8; FRAGMENT_SIZE];
    c.bench_function("seal_fragment", |b| {
        b.iter(|| seal::seal(&mut rand::rng(), &keys[1], &recipient, black_box(&fragment)).unwrap())
    });
    let sealed = seal::seal(&mut rand::rng(), &keys[1], &recipient, &fragment).unwrap();
    c.bench_function("open_fragment", |b| {
        b.iter(|| seal::open(&keys[0], black_box(&sealed)).unwrap())
    });

    let bundle = Bundle {
        origin: "a.example".into(),
        sender: None,
        server_keys: None,
        body: BundleBody::Request {
            request_id: [1; 16],
            sequence: None,
            request: FederationRequest {
                method: "PUT".into(),
                path: "/_matrix/federation/v1/send/1".into(),
                headers: vec![],
                body: br#"{"pdus":[{"type":"m.room.message","content":{"body":"hello"}}]}"#
                    .repeat(200),
            },
            reply_surbs: vec![],
        },
    };
    c.bench_function("pack_and_split_13KB_txn", |b| {
        b.iter(|| {
            let padded = pack(black_box(&bundle), FRAGMENT_DATA_SIZE).unwrap();
            split([1; 16], &padded, FRAGMENT_DATA_SIZE).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = sphinx
}
criterion_main!(benches);
