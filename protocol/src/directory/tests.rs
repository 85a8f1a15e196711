//! Descriptors and documents: signing, threshold verification, strict encodings.

use super::*;
use ed25519_dalek::SigningKey;

use crate::error::Error;
use crate::error::{PeerMisbehaved, Result};
use crate::ids::RelayId;
use proptest::prelude::*;

const NOW: u64 = 1_728_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn fields(roles: Roles, layer: u8) -> DescriptorFields {
    DescriptorFields {
        address: "relay.example.org:4430".into(),
        roles,
        layer,
        link_key: [0x11; 32],
        sphinx_keys: vec![
            SphinxKey {
                epoch: 480_000,
                public: [0x22; 32],
            },
            SphinxKey {
                epoch: 480_001,
                public: [0x33; 32],
            },
        ],
        published_at: NOW - 100,
        expires_at: NOW + 7200,
    }
}

fn descriptor(seed: u8, roles: Roles, layer: u8) -> RelayDescriptor {
    RelayDescriptor::sign(fields(roles, layer), &key(seed)).unwrap()
}

fn mix() -> Roles {
    Roles {
        mix: true,
        ..Roles::default()
    }
}

fn network() -> Directory {
    let entry = Roles {
        entry: true,
        ..Roles::default()
    };
    let mailbox = Roles {
        mailbox: true,
        ..Roles::default()
    };
    Directory {
        epoch: 480_000,
        valid_after: NOW - 10,
        valid_until: NOW + 3600,
        params: NetworkParams::default(),
        relays: vec![
            descriptor(10, entry, 0),
            descriptor(11, mix(), 1),
            descriptor(12, mix(), 2),
            descriptor(13, mix(), 3),
            descriptor(14, mailbox, 0),
        ],
        signatures: vec![],
    }
}

fn authorities() -> (Vec<SigningKey>, Vec<[u8; 32]>) {
    let keys: Vec<SigningKey> = (1..=3).map(key).collect();
    let trusted = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
    (keys, trusted)
}

fn signed(n: usize) -> (Directory, Vec<[u8; 32]>) {
    let (keys, trusted) = authorities();
    let mut doc = network();
    for k in keys.iter().take(n) {
        doc.sign(k).unwrap();
    }
    (doc, trusted)
}

#[test]
fn descriptor_sign_verify_round_trip() {
    let d = descriptor(7, mix(), 2);
    assert_eq!(d.id, RelayId(key(7).verifying_key().to_bytes()));
    d.verify(NOW).unwrap();
    let back = RelayDescriptor::from_bytes(&d.to_bytes()).unwrap();
    assert_eq!(back, d);
    back.verify(NOW).unwrap();
    assert_eq!(d.sphinx_key(480_001), Some([0x33; 32]));
    assert_eq!(d.sphinx_key(479_999), None);
}

#[test]
fn directory_sign_verify_round_trip() {
    let (doc, trusted) = signed(3);
    let back = Directory::from_bytes(&doc.to_bytes()).unwrap();
    assert_eq!(back, doc);
    back.verify(&trusted, 3, NOW).unwrap();
}

#[test]
fn two_of_three_passes_with_two_signatures_and_fails_with_one() {
    let (doc, trusted) = signed(2);
    doc.verify(&trusted, 2, NOW).unwrap();
    let (doc, trusted) = signed(1);
    assert_eq!(
        doc.verify(&trusted, 2, NOW),
        Err(PeerMisbehaved::NotEnoughSignatures {
            valid: 1,
            needed: 2
        }
        .into())
    );
}

#[test]
fn untrusted_signature_does_not_count() {
    let (mut doc, trusted) = signed(1);
    doc.sign(&key(99)).unwrap();
    assert_eq!(doc.signatures.len(), 2);
    assert!(matches!(
        doc.verify(&trusted, 2, NOW),
        Err(Error::PeerMisbehaved(PeerMisbehaved::NotEnoughSignatures {
            valid: 1,
            ..
        }))
    ));
}

#[test]
fn repeated_signature_by_one_authority_counts_once() {
    let (mut doc, trusted) = signed(1);
    let again = doc.signatures[0];
    doc.signatures.push(again);
    let doc = Directory::from_bytes(&doc.to_bytes()).unwrap();
    assert!(matches!(
        doc.verify(&trusted, 2, NOW),
        Err(Error::PeerMisbehaved(PeerMisbehaved::NotEnoughSignatures {
            valid: 1,
            ..
        }))
    ));
    // The same key listed twice by the caller counts once too.
    let doubled = [trusted[0], trusted[0]];
    assert!(doc.verify(&doubled, 2, NOW).is_err());
}

#[test]
fn signing_twice_replaces_the_signature() {
    let (mut doc, _) = signed(1);
    doc.sign(&key(1)).unwrap();
    assert_eq!(doc.signatures.len(), 1);
}

#[test]
fn forged_signature_does_not_count() {
    let (mut doc, trusted) = signed(2);
    doc.signatures[1].signature[5] ^= 1;
    assert!(doc.verify(&trusted, 2, NOW).is_err());
    doc.verify(&trusted, 1, NOW).unwrap();
}

#[test]
fn any_flipped_byte_fails_verification() {
    let (doc, trusted) = signed(1);
    let bytes = doc.to_bytes();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        if let Ok(parsed) = Directory::from_bytes(&bad) {
            assert!(
                parsed.verify(&trusted, 1, NOW).is_err(),
                "flipping byte {i} still verified"
            );
        }
    }
}

#[test]
fn expired_document_is_rejected() {
    let (doc, trusted) = signed(2);
    let expired: Result<()> = Err(PeerMisbehaved::Expired.into());
    assert_eq!(doc.verify(&trusted, 2, doc.valid_until + 1), expired);
    assert_eq!(doc.verify(&trusted, 2, doc.valid_after - 1), expired);
    doc.verify(&trusted, 2, doc.valid_until).unwrap();
}

#[test]
fn expired_descriptor_is_rejected() {
    let d = descriptor(7, mix(), 1);
    assert_eq!(
        d.verify(d.expires_at + 1),
        Err(PeerMisbehaved::Expired.into())
    );
    assert_eq!(
        d.verify(d.published_at - 1),
        Err(PeerMisbehaved::Expired.into())
    );

    let mut f = fields(mix(), 1);
    f.expires_at = NOW + 5;
    let (keys, trusted) = authorities();
    let mut doc = network();
    doc.relays.push(RelayDescriptor::sign(f, &key(20)).unwrap());
    doc.sign(&keys[0]).unwrap();
    doc.verify(&trusted, 1, NOW).unwrap();
    assert_eq!(
        doc.verify(&trusted, 1, NOW + 6),
        Err(PeerMisbehaved::Expired.into())
    );
}

#[test]
fn document_carrying_a_forged_descriptor_is_rejected() {
    let (keys, trusted) = authorities();
    let mut doc = network();
    doc.relays[2].address = "evil.example.org:4430".into();
    doc.sign(&keys[0]).unwrap();
    assert_eq!(
        doc.verify(&trusted, 1, NOW),
        Err(PeerMisbehaved::BadSignature.into())
    );
}

#[test]
fn duplicate_relay_is_rejected() {
    let (keys, trusted) = authorities();
    let mut doc = network();
    let again = doc.relays[1].clone();
    doc.relays.push(again);
    doc.sign(&keys[0]).unwrap();
    assert_eq!(
        doc.verify(&trusted, 1, NOW),
        Err(PeerMisbehaved::DuplicateRelay.into())
    );
}

#[test]
fn zero_threshold_is_api_misuse() {
    let (doc, trusted) = signed(1);
    assert!(matches!(
        doc.verify(&trusted, 0, NOW),
        Err(Error::ApiMisuse(_))
    ));
}

#[test]
fn bad_descriptor_fields_are_refused() {
    let k = key(1);
    assert!(RelayDescriptor::sign(fields(mix(), 0), &k).is_err());
    assert!(RelayDescriptor::sign(fields(mix(), 4), &k).is_err());
    assert!(
        RelayDescriptor::sign(
            fields(
                Roles {
                    entry: true,
                    ..Roles::default()
                },
                1
            ),
            &k
        )
        .is_err()
    );
    for address in ["", "no-port", "host:0", ":80", "host:99999", "a b:1"] {
        let mut f = fields(mix(), 1);
        f.address = address.into();
        assert!(RelayDescriptor::sign(f, &k).is_err(), "{address}");
    }
    let mut f = fields(mix(), 1);
    f.sphinx_keys.reverse();
    assert!(RelayDescriptor::sign(f, &k).is_err());
    let mut f = fields(mix(), 1);
    f.sphinx_keys.clear();
    assert!(RelayDescriptor::sign(f, &k).is_err());
}

#[test]
fn unknown_role_bits_are_rejected() {
    assert!(Roles::from_bits(0b1000).is_err());
    let all = Roles {
        entry: true,
        mix: true,
        mailbox: true,
    };
    assert_eq!(Roles::from_bits(all.to_bits()).unwrap(), all);
}

#[test]
fn network_params_are_validated() {
    NetworkParams::default().validate().unwrap();
    let bad = [
        NetworkParams {
            mu: 0.0,
            ..NetworkParams::default()
        },
        NetworkParams {
            lambda_p: -1.0,
            ..NetworkParams::default()
        },
        NetworkParams {
            lambda_d: f64::NAN,
            ..NetworkParams::default()
        },
        NetworkParams {
            lambda_m: f64::INFINITY,
            ..NetworkParams::default()
        },
        NetworkParams {
            packet_size: 1024,
            ..NetworkParams::default()
        },
        NetworkParams {
            epoch_length_secs: 0,
            ..NetworkParams::default()
        },
    ];
    for p in bad {
        assert!(p.validate().is_err(), "{p:?}");
    }
}

#[test]
fn lookups_find_relays_by_role() {
    let doc = network();
    assert_eq!(doc.entries().count(), 1);
    assert_eq!(doc.mailboxes().count(), 1);
    for layer in 1..=3 {
        assert_eq!(doc.mixes_in_layer(layer).count(), 1);
    }
    assert_eq!(doc.mixes_in_layer(0).count(), 0);
    let id = doc.relays[3].id;
    assert_eq!(doc.relay(&id).map(|r| r.layer), Some(3));
    assert!(doc.relay(&RelayId([0; 32])).is_none());
    assert_eq!(doc.epoch_at(7200), 2);
    assert_eq!(doc.epoch_at(7199), 1);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_parsers(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Directory::from_bytes(&data);
        let _ = RelayDescriptor::from_bytes(&data);
    }

    #[test]
    fn mutated_documents_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
        let (doc, _) = signed(1);
        let mut bytes = doc.to_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = val;
        let _ = Directory::from_bytes(&bytes);
    }

    #[test]
    fn truncated_or_extended_documents_are_rejected(cut in 1usize..64, extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let (doc, _) = signed(1);
        let bytes = doc.to_bytes();
        let cut = cut.min(bytes.len());
        prop_assert!(Directory::from_bytes(&bytes[..bytes.len() - cut]).is_err());
        let mut longer = bytes.clone();
        longer.extend(&extra);
        prop_assert!(Directory::from_bytes(&longer).is_err());

        let d = doc.relays[0].to_bytes();
        let cut = cut.min(d.len());
        prop_assert!(RelayDescriptor::from_bytes(&d[..d.len() - cut]).is_err());
        let mut longer = d.clone();
        longer.extend(&extra);
        prop_assert!(RelayDescriptor::from_bytes(&longer).is_err());
    }

    #[test]
    fn descriptors_round_trip(
        layer in 1u8..=3,
        link_key in any::<[u8; 32]>(),
        epoch in 0u64..u64::MAX - 1,
        published_at in 0u64..1 << 40,
        lifetime in 0u64..1 << 20,
        port in 1u16..,
        host in "[a-z0-9.-]{1,60}",
    ) {
        let f = DescriptorFields {
            address: format!("{host}:{port}"),
            roles: Roles { entry: false, mix: true, mailbox: layer == 3 },
            layer,
            link_key,
            sphinx_keys: vec![SphinxKey { epoch, public: [1; 32] }, SphinxKey { epoch: epoch + 1, public: [2; 32] }],
            published_at,
            expires_at: published_at + lifetime,
        };
        let d = RelayDescriptor::sign(f, &key(5)).unwrap();
        let back = RelayDescriptor::from_bytes(&d.to_bytes()).unwrap();
        prop_assert!(back.verify(published_at).is_ok());
        prop_assert_eq!(back, d);
    }
}
