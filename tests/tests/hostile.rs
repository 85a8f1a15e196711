//! Crafted hostile input: every case gets a clear error and, at a relay, a counter for its
//! reason (`MetricsSnapshot::dropped`). Complements relay/tests (replay, delays, quotas, random
//! frames) with the cases it does not cover: low-order points, bad header MACs, replay across a
//! key-epoch boundary and a restart inside the grace window, deletes of someone else's items,
//! forged or expired directories and descriptors, wrong sizes and fragment bombs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use spore_protocol::MailboxKey;
use spore_protocol::directory::{
    AuthoritySignature, DescriptorFields, Directory, NetworkParams, RelayDescriptor, Roles,
    SphinxKey,
};
use spore_protocol::fragment::{Fragment, Reassembler, ReassemblyLimits};
use spore_protocol::packet::{self, IncomingPacket, PacketLimits};
use spore_protocol::params::{FRAGMENT_DATA_SIZE, PACKET_SIZE};
use spore_relay::{DirectorySource, Link, ManualClock, MemoryDirectory};

use spore_testkit::{TestRelay, delete, packet_frame, packet_to, pull, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn low_order_points_and_bad_header_macs_are_dropped_and_counted() {
    let relay = TestRelay::start_full(
        |_| {},
        DirectorySource::None,
        Arc::new(spore_relay::SystemClock),
    )
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let hop = relay.hop_for(relay.r().current_epoch());
    let good = packet_to(hop, owner.mailbox_id(), b"good");

    // Three small-order encodings as the header's group element: 0, 1, and 0 with the top
    // bit set (X25519 ignores that bit, so a check that forgets it would let it through).
    let mut low = Vec::new();
    for alpha in [[0u8; 32], one(), top_bit()] {
        let mut p = good.clone();
        p[..32].copy_from_slice(&alpha);
        low.push(p);
    }
    // A flipped byte inside the routing information: the header MAC no longer matches.
    let mut bad_mac = good.clone();
    bad_mac[40] ^= 0x01;
    relay.send(&low).await;
    relay.send(&[bad_mac]).await;
    assert!(
        wait_until(WAIT, || {
            let m = relay.r().metrics();
            m.dropped("low_order_point") == 3 && m.dropped("bad_mac") == 1
        })
        .await,
        "{:?}",
        relay.r().metrics()
    );
    assert_eq!(relay.r().metrics().packets_stored, 0);

    // The same checks in the protocol give the clear error behind each counter.
    let err = IncomingPacket::parse(&low[0], &PacketLimits::default())
        .err()
        .unwrap();
    assert_eq!(err.reason(), "low_order_point");
    // Wrong sizes cannot reach a relay (link frames are fixed-size); the parser names them.
    for len in [0, 32, PACKET_SIZE - 1, PACKET_SIZE + 1] {
        let bytes = vec![7u8; len];
        let err = IncomingPacket::parse(&bytes, &PacketLimits::default())
            .err()
            .unwrap();
        assert_eq!(err.reason(), "wrong_size", "{len} bytes");
    }

    // The relay still takes a good packet afterwards.
    relay.send(&[good]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);
    assert_eq!(relay.r().metrics().dropped("internal_panic"), 0);
    relay.shutdown().await;
}

fn one() -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 1;
    p
}

fn top_bit() -> [u8; 32] {
    let mut p = [0u8; 32];
    p[31] = 0x80;
    p
}

#[tokio::test]
async fn replay_across_a_key_epoch_boundary_and_a_restart_is_dropped_and_counted() {
    // Epochs of 100 s with 10 s grace; start 5 s before the boundary of epoch 10^7.
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(100 * 10_000_000 + 95));
    let mut relay = TestRelay::start_full(
        |c| {
            c.mix.epoch_length_secs = 100;
            c.mix.grace_secs = 10;
        },
        DirectorySource::None,
        Arc::new(clock.clone()),
    )
    .await;
    let owner = MailboxKey::generate(&mut rand::rng());
    let epoch = relay.r().current_epoch();
    // One packet for the current key, one for the next (published early for the boundary).
    let current = packet_to(relay.hop_for(epoch), owner.mailbox_id(), b"current");
    let ahead = packet_to(relay.hop_for(epoch + 1), owner.mailbox_id(), b"ahead");
    relay.send(&[current.clone(), ahead.clone()]).await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 2).await);

    // Across the boundary, inside the grace window: both keys still work, both are replays.
    clock.advance(Duration::from_secs(10));
    assert_eq!(relay.r().current_epoch(), epoch + 1);
    relay.send(&[current.clone(), ahead.clone()]).await;
    assert!(
        wait_until(WAIT, || relay.r().metrics().dropped("replay") == 2).await,
        "{:?}",
        relay.r().metrics()
    );
    // And after a restart in the new epoch the tags are still on disk.
    relay.restart().await;
    relay.send(&[current.clone(), ahead]).await;
    assert!(
        wait_until(WAIT, || relay.r().metrics().dropped("replay") == 2).await,
        "{:?}",
        relay.r().metrics()
    );
    assert_eq!(relay.r().metrics().packets_stored, 0);
    // Past the grace window the old key is gone: the old packet is refused as undecryptable
    // (its tags went with the key, so nothing can be replayed under it either).
    clock.advance(Duration::from_secs(10));
    relay.send(&[current]).await;
    assert!(
        wait_until(WAIT, || relay.r().metrics().dropped("bad_mac") == 1).await,
        "{:?}",
        relay.r().metrics()
    );
    let mut link = relay.link(&owner.secret_bytes()).await;
    assert_eq!(pull(&mut link).await.len(), 2, "each packet stored once");
    relay.shutdown().await;
}

#[tokio::test]
async fn nobody_pulls_or_deletes_someone_elses_mailbox() {
    let relay = TestRelay::start_full(
        |_| {},
        DirectorySource::None,
        Arc::new(spore_relay::SystemClock),
    )
    .await;
    let (owner, thief) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let hop = relay.hop_for(relay.r().current_epoch());
    relay
        .send(&[packet_to(hop, owner.mailbox_id(), b"for the owner")])
        .await;
    assert!(wait_until(WAIT, || relay.r().metrics().packets_stored == 1).await);
    let mut owner_link = relay.link(&owner.secret_bytes()).await;
    let items = pull(&mut owner_link).await;
    assert_eq!(items.len(), 1);

    // The thief's link is authenticated as the thief: its pulls serve the thief's mailbox,
    // and the owner's handles delete nothing.
    let mut thief_link = relay.link(&thief.secret_bytes()).await;
    assert!(pull(&mut thief_link).await.is_empty());
    for start in (0..1024u64).step_by(127) {
        let guesses: Vec<u64> = (start..start + 127)
            .chain(std::iter::once(items[0].handle))
            .collect();
        assert_eq!(delete(&mut thief_link, guesses).await, 0);
    }
    assert_eq!(pull(&mut owner_link).await.len(), 1, "still there");
    assert_eq!(delete(&mut owner_link, vec![items[0].handle]).await, 1);
    relay.shutdown().await;
}

fn descriptor(key: &SigningKey, published_at: u64, expires_at: u64) -> RelayDescriptor {
    RelayDescriptor::sign(
        DescriptorFields {
            address: "127.0.0.1:9".into(),
            roles: Roles {
                entry: false,
                mix: true,
                mailbox: false,
            },
            layer: 1,
            link_key: [9; 32],
            sphinx_keys: vec![SphinxKey {
                epoch: 1,
                public: [9; 32],
            }],
            published_at,
            expires_at,
        },
        key,
    )
    .unwrap()
}

#[tokio::test]
async fn forged_and_expired_directories_are_refused_and_the_old_one_kept() {
    let authority = SigningKey::from_bytes(&rand::random());
    let impostor = SigningKey::from_bytes(&rand::random());
    let memory = MemoryDirectory::new();
    let relay = TestRelay::start_full(
        |c| {
            c.directory.authorities = vec![hex::encode(authority.verifying_key().to_bytes())];
            c.directory.threshold = 1;
            c.directory.refresh_secs = 3600;
        },
        DirectorySource::Memory(memory.clone()),
        Arc::new(spore_relay::SystemClock),
    )
    .await;
    let now = now_unix();
    let make = |relays: Vec<RelayDescriptor>, valid_until: u64| Directory {
        epoch: now / 3600,
        valid_after: now - 60,
        valid_until,
        params: NetworkParams::default(),
        relays,
        signatures: vec![],
    };
    let relay_key = SigningKey::from_bytes(&rand::random());
    let mut good = make(
        vec![descriptor(&relay_key, now - 60, now + 3600)],
        now + 3600,
    );
    good.sign(&authority).unwrap();
    memory.set(good.to_bytes());
    assert!(relay.r().refresh_directory().await.unwrap());

    // (1) Signed by a key nobody trusts.
    let mut by_impostor = make(vec![], now + 3600);
    by_impostor.sign(&impostor).unwrap();
    // (2) The authority's key named, but the signature is forged (one bit flipped).
    let mut flipped = make(vec![], now + 3600);
    flipped.sign(&authority).unwrap();
    flipped.signatures[0].signature[0] ^= 1;
    // (3) The authority's name with the impostor's signature.
    let mut borrowed = make(vec![], now + 3600);
    borrowed.sign(&impostor).unwrap();
    borrowed.signatures = vec![AuthoritySignature {
        authority: authority.verifying_key().to_bytes(),
        signature: borrowed.signatures[0].signature,
    }];
    // (4) Properly signed but expired.
    let mut expired = make(vec![], now - 1);
    expired.valid_after = now - 7200;
    expired.sign(&authority).unwrap();
    // (5) Properly signed, carrying an expired relay descriptor.
    let mut stale_relay = make(
        vec![descriptor(&relay_key, now - 7200, now - 3600)],
        now + 3600,
    );
    stale_relay.sign(&authority).unwrap();
    // (6) A descriptor whose signature was forged (address changed after signing).
    let mut tampered = descriptor(&relay_key, now - 60, now + 3600);
    tampered.address = "127.0.0.1:10".into();
    let mut forged_relay = make(vec![tampered], now + 3600);
    forged_relay.sign(&authority).unwrap();

    let trusted = [authority.verifying_key().to_bytes()];
    for (name, dir, reason) in [
        ("untrusted signer", by_impostor, "not_enough_signatures"),
        ("flipped signature", flipped, "not_enough_signatures"),
        ("borrowed name", borrowed, "not_enough_signatures"),
        ("expired directory", expired, "expired"),
        ("expired descriptor", stale_relay, "expired"),
        ("forged descriptor", forged_relay, "bad_signature"),
    ] {
        let err = dir.verify(&trusted, 1, now).err().unwrap();
        assert_eq!(err.reason(), reason, "{name}: {err}");
        let counter = format!("directory_{reason}");
        let before = relay.r().metrics().dropped(&counter);
        memory.set(dir.to_bytes());
        let refused = relay.r().refresh_directory().await;
        assert!(refused.is_err(), "{name} was installed");
        assert_eq!(
            relay.r().metrics().dropped(&counter),
            before + 1,
            "{name}: {counter} not counted"
        );
    }
    // The good directory is still the relay's view.
    memory.set(good.to_bytes());
    assert!(!relay.r().refresh_directory().await.unwrap(), "unchanged");
    relay.shutdown().await;
}

#[test]
fn fragment_bombs_are_refused_within_fixed_memory() {
    let limits = ReassemblyLimits {
        max_messages: 64,
        max_bytes: 64 * FRAGMENT_DATA_SIZE,
        ttl: Duration::from_secs(600),
        max_completed: 64,
    };
    let mut r = Reassembler::new(limits);
    let now = Instant::now();
    let data = vec![0u8; FRAGMENT_DATA_SIZE];
    // Counts that are not a size class (including the largest u16) are refused outright.
    for count in [3u16, 1000, u16::MAX] {
        let err = r
            .insert(
                Fragment {
                    message_id: rand::random(),
                    index: 0,
                    count,
                    data: data.clone(),
                },
                now,
            )
            .err()
            .unwrap();
        assert_eq!(err.reason(), "fragment_count", "count {count}");
    }
    // A flood of first fragments of huge messages: one entry each, and a hard stop.
    let mut refused = 0;
    for _ in 0..10_000 {
        let f = Fragment {
            message_id: rand::random(),
            index: 0,
            count: spore_protocol::params::MAX_FRAGMENTS,
            data: data.clone(),
        };
        if let Err(e) = r.insert(f, now) {
            assert_eq!(e.reason(), "reassembly_full");
            refused += 1;
        }
    }
    // (A message whose full size could never fit is refused at its first fragment.)
    assert!(refused >= 10_000 - 64, "{refused}");
    assert!(r.pending_messages() <= 64);
    assert!(r.pending_bytes() <= 64 * FRAGMENT_DATA_SIZE);
    // A mismatched count for a message already pending is refused, not merged.
    let id = rand::random();
    let mut r = Reassembler::new(limits);
    r.insert(
        Fragment {
            message_id: id,
            index: 0,
            count: 4,
            data: data.clone(),
        },
        now,
    )
    .unwrap();
    let err = r
        .insert(
            Fragment {
                message_id: id,
                index: 1,
                count: 8,
                data,
            },
            now,
        )
        .err()
        .unwrap();
    assert_eq!(err.reason(), "inconsistent_fragments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_bombs_and_garbage_at_a_client_are_refused_and_counted() {
    use spore_protocol::packet::ForwardPayload;
    use spore_protocol::params::{FORWARD_HOPS, SEALED_FRAGMENT_SIZE, SURB_SIZE};
    use spore_protocol::route::RouteSelector;
    use spore_protocol::{SporeAddress, seal};
    use spore_testkit::{Testnet, TestnetConfig};

    use crate::start_client;

    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let directory = net.directory().clone();
    let routes = RouteSelector::new(&directory, directory.epoch);
    let mut rng = rand::rng();
    let forged = |sealed_fragment: Vec<u8>, rng: &mut rand::rngs::ThreadRng| {
        let mut ack_surb = vec![0u8; SURB_SIZE];
        rand::Rng::fill_bytes(rng, &mut ack_surb);
        let payload = ForwardPayload {
            ack_surb,
            sealed_fragment,
        }
        .encode()
        .unwrap();
        let route = routes
            .forward_route(rng, &mailboxes[0], &mailboxes[1])
            .unwrap();
        packet::build_packet(
            &route,
            bob_address.mailbox_id(),
            packet::random_surb_id(&mut rand::rng()),
            &[Duration::ZERO; FORWARD_HOPS],
            &payload,
        )
        .unwrap()
    };
    // Sealed to Bob (so they open), with fragment counts that are not a size class.
    let mut bombs = Vec::new();
    for count in [3u16, 1000, u16::MAX, 7, 12345] {
        let f = Fragment {
            message_id: rand::random(),
            index: 0,
            count,
            data: vec![0u8; FRAGMENT_DATA_SIZE],
        };
        let sealed = seal::seal(
            &mut rand::rng(),
            MailboxKey::generate(&mut rand::rng()).secret(),
            &bob_address.mailbox_public_key(),
            &f.encode(),
        )
        .unwrap();
        bombs.push(forged(sealed, &mut rng));
    }
    // And garbage that does not open with Bob's key at all.
    for _ in 0..5 {
        let mut junk = vec![0u8; SEALED_FRAGMENT_SIZE];
        rand::Rng::fill_bytes(&mut rng, &mut junk);
        bombs.push(forged(junk, &mut rng));
    }
    let entry = net.index_of(&mailboxes[0]).unwrap();
    let entry_addr = net.relay_address(entry).unwrap().to_string();
    let entry_key = directory.relay(&mailboxes[0]).unwrap().link_key;
    let mut link = Link::connect(&entry_addr, &rand::random(), Some(entry_key))
        .await
        .unwrap();
    for p in &bombs {
        link.send(&packet_frame(p)).await.unwrap();
    }

    // A real transaction behind them still arrives.
    let alice = start_client(&net, data.path(), "alice", mailboxes[0], alice_key, 100.0).await;
    alice
        .send(&bob_address, crate::transaction("alice.example", 1))
        .await
        .unwrap();
    let bob = start_client(&net, data.path(), "bob", mailboxes[1], bob_key, 100.0).await;
    let inbound = crate::within(
        Duration::from_secs(60),
        "the real transaction",
        bob.incoming(),
    )
    .await
    .unwrap();
    assert_eq!(crate::txn_of(&inbound.request.path), "1");
    bob.ack(inbound.id).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || bob.stats().inbound_dropped
            >= 10)
        .await,
        "{:?}",
        bob.stats()
    );
    assert_eq!(bob.inbox_len(), 0);
    eprintln!("client: {:?}", bob.stats());
    alice.shutdown().await;
    bob.shutdown().await;
    let _ = net.shutdown().await;
}
