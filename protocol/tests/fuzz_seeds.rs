//! Writes valid samples of every parsed format into `fuzz/corpus/<target>/` so the fuzzers
//! start from real structure. Run on demand: `cargo test -p spore-protocol --test fuzz_seeds -- --ignored`.
#![allow(clippy::unwrap_used)] // a seed writer that cannot write should stop loudly

use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use spore_protocol::bundle::{Bundle, BundleBody, FederationRequest, pack};
use spore_protocol::directory::{
    DescriptorFields, Directory, NetworkParams, RelayDescriptor, Roles, SphinxKey,
};
use spore_protocol::fragment::split;
use spore_protocol::link::{FRAME_LEN, Frame, PullSlot};
use spore_protocol::packet::{RouteHop, build_packet};
use spore_protocol::params::{FRAGMENT_DATA_SIZE, PACKET_SIZE};
use spore_protocol::{MailboxId, RelayId, seal};
use x25519_dalek::{PublicKey, StaticSecret};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
#[ignore = "writes files into fuzz/corpus; run on demand"]
fn write_fuzz_seeds() {
    let key = StaticSecret::from([7u8; 32]);
    let hop = RouteHop {
        id: RelayId([1; 32]),
        sphinx_key: PublicKey::from(&key),
    };
    let p = build_packet(
        &[hop, hop],
        MailboxId([2; 32]),
        [3; 16],
        &[Duration::ZERO; 2],
        b"seed",
    )
    .unwrap();
    write("packet", "forward", &p);
    let p = build_packet(
        &[hop],
        MailboxId([2; 32]),
        [3; 16],
        &[Duration::ZERO],
        b"seed",
    )
    .unwrap();
    write("packet", "final", &p);

    let mut buf = [0u8; FRAME_LEN];
    Frame::Packet(Box::new([5u8; PACKET_SIZE]))
        .encode_into(&mut buf)
        .unwrap();
    write("link_frame", "packet", &buf);
    Frame::PullSlot(PullSlot {
        index: 2,
        item: None,
    })
    .encode_into(&mut buf)
    .unwrap();
    write("link_frame", "slot", &buf);
    Frame::Delete {
        handles: vec![1, 2, 3],
    }
    .encode_into(&mut buf)
    .unwrap();
    write("link_frame", "delete", &buf);

    let relay_key = SigningKey::from_bytes(&[4; 32]);
    let d = RelayDescriptor::sign(
        DescriptorFields {
            address: "127.0.0.1:9000".into(),
            roles: Roles {
                entry: true,
                mix: false,
                mailbox: true,
            },
            layer: 0,
            link_key: [1; 32],
            sphinx_keys: vec![SphinxKey {
                epoch: 1,
                public: [2; 32],
            }],
            published_at: 0,
            expires_at: 10,
        },
        &relay_key,
    )
    .unwrap();
    write("directory", "descriptor", &d.to_bytes());
    let mut dir = Directory {
        epoch: 1,
        valid_after: 0,
        valid_until: 10,
        params: NetworkParams::default(),
        relays: vec![d],
        signatures: vec![],
    };
    dir.sign(&SigningKey::from_bytes(&[5; 32])).unwrap();
    write("directory", "directory", &dir.to_bytes());

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
                headers: vec![("Authorization".into(), "X-Matrix origin=a".into())],
                body: br#"{"pdus":[]}"#.to_vec(),
            },
            reply_surbs: vec![],
        },
    };
    write("bundle", "encoded", &bundle.encode());
    let padded = pack(&bundle, FRAGMENT_DATA_SIZE).unwrap();
    write("bundle", "padded", &padded);
    write(
        "bundle",
        "sealed",
        &seal::seal(
            &mut rand::rng(),
            &StaticSecret::from([4u8; 32]),
            &PublicKey::from(&StaticSecret::from([3u8; 32])),
            b"seed",
        )
        .unwrap(),
    );
    let frags = split([9; 16], &[1u8; 32], 8).unwrap();
    let stream: Vec<u8> = frags.iter().flat_map(|f| f.encode()).collect();
    write("reassembly", "stream", &stream);
}
