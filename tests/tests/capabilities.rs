//! Issue 16, attack 3: anyone who knows an address could fill its mailbox. With per-contact
//! capabilities, a flood through one capability (or through the raw, first-contact id) fills
//! only its own quota; other peers' mail is still stored, acknowledged and delivered; and a
//! revoked capability is refused (nothing stored, no SURB-ack) across a SIGKILL and restart,
//! while the owner's address stays the same for everyone else.
//!
//! Against the real `spore-relay` binary on loopback, over real Noise links: the owner speaks
//! the pull conversation itself and registers its capabilities in its pull requests, exactly
//! the frames its client sends on schedule.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use spore_protocol::link::{Frame, MailboxItem};
use spore_protocol::packet::RouteHop;
use spore_protocol::params::PULL_SLOTS;
use spore_protocol::{CapabilityId, CapabilityOp, MailboxId, MailboxKey, SporeAddress};
use spore_relay::{Link, RelayKeys};
use spore_testkit::relay_process::{self, connect, hop};
use spore_testkit::{acked_packet_with_ids, binaries, packet_frame};

use crate::{init_tracing, within};

const MAILBOX_QUOTA: u64 = 400;
const FIRST_CONTACT_QUOTA: u64 = 40;
const CAPABILITY_QUOTA: u32 = 30;
const FLOOD: usize = 150;
const FRIEND: usize = 10;

/// Which sender a stored item came from: the first byte of its SURB id.
const FLOODER: u8 = 0xf0;
const STRANGER: u8 = 0x50;
const FRIEND_TAG: u8 = 0xb0;

fn surb_id(tag: u8, i: usize) -> [u8; 16] {
    let mut id = rand::random::<[u8; 16]>();
    id[0] = tag;
    id[1..9].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

/// One pull carrying `ops` (a `CapabilityPull`, as the client sends it), then its Delete.
async fn pull_with(link: &mut Link, ops: Vec<CapabilityOp>) -> Vec<MailboxItem> {
    let request = match ops.is_empty() {
        true => Frame::PullRequest,
        false => Frame::CapabilityPull { ops },
    };
    link.send(&request).await.unwrap();
    let mut items = Vec::new();
    for _ in 0..PULL_SLOTS {
        match link.recv().await.unwrap() {
            Frame::PullSlot(slot) => items.extend(slot.item),
            other => panic!("expected a pull slot, got {other:?}"),
        }
    }
    link.send(&Frame::Delete {
        handles: items.iter().map(|i| i.handle).collect(),
    })
    .await
    .unwrap();
    match link.recv().await.unwrap() {
        Frame::DeleteDone { .. } => {}
        other => panic!("expected DeleteDone, got {other:?}"),
    }
    items
}

/// Pulls (and deletes) until at least `expect` (tag, count) has arrived and then the mailbox
/// has stayed empty for a while, so that a loaded machine's slow disk cannot end the count
/// early. Returns the items by sender tag.
async fn drain_expecting(link: &mut Link, expect: &[(u8, usize)]) -> HashMap<u8, usize> {
    let mut got: HashMap<u8, usize> = HashMap::new();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let enough = |got: &HashMap<u8, usize>| {
        expect
            .iter()
            .all(|(tag, n)| got.get(tag).copied().unwrap_or(0) >= *n)
    };
    while !enough(&got) || quiet_since.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "the mailbox never settled");
        let items = pull_with(link, Vec::new()).await;
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            quiet_since = Instant::now();
        }
        for i in items {
            *got.entry(i.surb_id[0]).or_default() += 1;
        }
    }
    got
}

async fn drain(link: &mut Link) -> HashMap<u8, usize> {
    drain_expecting(link, &[]).await
}

async fn send(link: &mut Link, packets: &[Vec<u8>]) {
    for p in packets {
        link.send(&packet_frame(p)).await.unwrap();
    }
}

/// `n` packets to `destination`, each with a SURB-ack back to `ack_to` (at this same relay).
fn acked(
    h: &RouteHop,
    destination: MailboxId,
    ack_to: MailboxId,
    tag: u8,
    n: usize,
) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            acked_packet_with_ids(
                std::slice::from_ref(h),
                destination,
                surb_id(tag, i),
                std::slice::from_ref(h),
                ack_to,
                surb_id(tag, i),
            )
        })
        .collect()
}

/// `n` packets without a SURB-ack, as a stranger sends them.
fn plain(h: &RouteHop, destination: MailboxId, tag: u8, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            spore_protocol::packet::build_packet(
                std::slice::from_ref(h),
                destination,
                surb_id(tag, i),
                &[Duration::ZERO],
                b"hi",
            )
            .unwrap()
        })
        .collect()
}

fn register(capability: CapabilityId) -> CapabilityOp {
    CapabilityOp::Register {
        capability,
        quota_items: CAPABILITY_QUOTA,
        quota_bytes: u64::MAX,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_through_one_capability_or_first_contact_leaves_room_for_every_other_peer() {
    init_tracing();
    let bin = binaries::require(binaries::RELAY);
    let dir = tempfile::tempdir().unwrap();
    let addr = relay_process::init(&bin, dir.path());
    let config = dir.path().join("relay.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "quota_items = 20000",
            &format!("quota_items = {MAILBOX_QUOTA}"),
        )
        .replace(
            "first_contact_quota_items = 2000",
            &format!("first_contact_quota_items = {FIRST_CONTACT_QUOTA}"),
        );
    assert!(text.contains(&format!(
        "first_contact_quota_items = {FIRST_CONTACT_QUOTA}"
    )));
    std::fs::write(&config, text).unwrap();
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();

    let owner = MailboxKey::generate(&mut rand::rng());
    let flooder = MailboxKey::generate(&mut rand::rng());
    let friend = MailboxKey::generate(&mut rand::rng());
    let public = SporeAddress {
        capability: None,
        mailbox_relays: vec![keys.relay_id()],
        mailbox_key: owner.public().to_bytes(),
    };
    // What the owner hands each peer: the same address, each with its own capability.
    let to_flooder = public.with_capability(Some(CapabilityId::derive(&owner, "flooder", 0)));
    let to_friend = public.with_capability(Some(CapabilityId::derive(&owner, "friend", 0)));
    let flooder_cap = to_flooder.capability.unwrap();
    let friend_cap = to_friend.capability.unwrap();

    let mut child = relay_process::run(&bin, dir.path());
    let h = hop(&keys);
    let mut owner_link = connect(&addr, &keys, &owner.secret_bytes()).await;
    pull_with(
        &mut owner_link,
        vec![register(flooder_cap), register(friend_cap)],
    )
    .await;

    // The flood: through the flooder's capability (with SURB-acks back to the flooder), and
    // from a stranger through the raw address; then the friend's few messages.
    let started = Instant::now();
    let mut flood_link = connect(&addr, &keys, &rand::random()).await;
    send(
        &mut flood_link,
        &acked(
            &h,
            to_flooder.final_destination(),
            flooder.mailbox_id(),
            FLOODER,
            FLOOD,
        ),
    )
    .await;
    send(
        &mut flood_link,
        &plain(&h, public.final_destination(), STRANGER, FLOOD),
    )
    .await;
    let mut friend_link = connect(&addr, &keys, &rand::random()).await;
    send(
        &mut friend_link,
        &acked(
            &h,
            to_friend.final_destination(),
            friend.mailbox_id(),
            FRIEND_TAG,
            FRIEND,
        ),
    )
    .await;
    let got = drain_expecting(
        &mut owner_link,
        &[
            (FLOODER, CAPABILITY_QUOTA as usize),
            (STRANGER, FIRST_CONTACT_QUOTA as usize),
            (FRIEND_TAG, FRIEND),
        ],
    )
    .await;
    let flood_secs = started.elapsed().as_secs_f64();
    let from_flooder = got.get(&FLOODER).copied().unwrap_or(0);
    let from_friend = got.get(&FRIEND_TAG).copied().unwrap_or(0);
    let from_stranger = got.get(&STRANGER).copied().unwrap_or(0);
    assert_eq!(got.len(), 3, "only these three sent: {got:?}");
    let mut flooder_link = connect(&addr, &keys, &flooder.secret_bytes()).await;
    let flooder_acks = drain_expecting(&mut flooder_link, &[(FLOODER, CAPABILITY_QUOTA as usize)])
        .await
        .values()
        .sum::<usize>();
    let mut friend_acks_link = connect(&addr, &keys, &friend.secret_bytes()).await;
    let friend_acks = drain_expecting(&mut friend_acks_link, &[(FRIEND_TAG, FRIEND)])
        .await
        .values()
        .sum::<usize>();
    let report = format!(
        "capability flood: {FLOOD} through one capability (quota {CAPABILITY_QUOTA}) and {FLOOD} \
         through the raw id (first-contact quota {FIRST_CONTACT_QUOTA}), mailbox quota \
         {MAILBOX_QUOTA}: stored {from_flooder} from the flooder ({flooder_acks} acks released), \
         {from_stranger} from the stranger, {from_friend}/{FRIEND} from the friend \
         ({friend_acks} acks), in {flood_secs:.1}s"
    );
    eprintln!("{report}");
    assert_eq!(from_flooder, CAPABILITY_QUOTA as usize, "{report}");
    assert_eq!(
        flooder_acks, CAPABILITY_QUOTA as usize,
        "no ack for a refused packet: {report}"
    );
    assert_eq!(from_stranger, FIRST_CONTACT_QUOTA as usize, "{report}");
    assert_eq!(from_friend, FRIEND, "{report}");
    assert_eq!(friend_acks, FRIEND, "{report}");

    // Revocation: the owner revokes the flooder's capability in its next pull request; the
    // flooder is refused from then on, also after a SIGKILL and restart, while the friend,
    // with the same address as before, still gets through.
    pull_with(
        &mut owner_link,
        vec![CapabilityOp::Revoke {
            capability: flooder_cap,
        }],
    )
    .await;
    child.sigkill();
    child = relay_process::run(&bin, dir.path());
    let mut owner_link = connect(&addr, &keys, &owner.secret_bytes()).await;
    let mut flood_link = connect(&addr, &keys, &rand::random()).await;
    send(
        &mut flood_link,
        &acked(
            &h,
            to_flooder.final_destination(),
            flooder.mailbox_id(),
            FLOODER,
            FRIEND,
        ),
    )
    .await;
    let mut friend_link = connect(&addr, &keys, &rand::random()).await;
    send(
        &mut friend_link,
        &acked(
            &h,
            to_friend.final_destination(),
            friend.mailbox_id(),
            FRIEND_TAG,
            FRIEND,
        ),
    )
    .await;
    send(
        &mut friend_link,
        &plain(&h, public.final_destination(), STRANGER, 1),
    )
    .await;
    let got = drain_expecting(&mut owner_link, &[(FRIEND_TAG, FRIEND), (STRANGER, 1)]).await;
    let mut flooder_link = connect(&addr, &keys, &flooder.secret_bytes()).await;
    let flooder_acks = drain(&mut flooder_link).await.values().sum::<usize>();
    let mut friend_acks_link = connect(&addr, &keys, &friend.secret_bytes()).await;
    let friend_acks = drain_expecting(&mut friend_acks_link, &[(FRIEND_TAG, FRIEND)])
        .await
        .values()
        .sum::<usize>();
    let report = format!(
        "after revoking the flooder and a SIGKILL restart: stored {got:?} (by tag: 240 \
         flooder, 176 friend, 80 first contact), {flooder_acks} acks to the flooder, \
         {friend_acks} to the friend"
    );
    eprintln!("{report}");
    assert_eq!(got.get(&FLOODER), None, "{report}");
    assert_eq!(flooder_acks, 0, "{report}");
    assert_eq!(got.get(&FRIEND_TAG), Some(&FRIEND), "{report}");
    assert_eq!(friend_acks, FRIEND, "{report}");
    assert_eq!(
        got.get(&STRANGER),
        Some(&1),
        "first contact still works: {report}"
    );
    drop(child);
}

/// The same promise through the client library on a whole testnet: capabilities travel in
/// bundles' sender addresses, are registered by the owner's scheduled pulls, carry the
/// peer's messages, and a revoked one is refused while another peer, and the owner's
/// address, are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_travel_in_bundles_and_a_revoked_one_is_refused_on_a_whole_network() {
    use spore_client::peer_label;
    use spore_testkit::{Testnet, TestnetConfig};

    use crate::{start_client, transaction, txn_of};

    init_tracing();
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let keys = [0, 1, 2].map(|_| MailboxKey::generate(&mut rand::rng()));
    let [alice_key, bob_key, carol_key] = keys.clone();
    let bob = start_client(&net, data.path(), "bob", mailboxes[0], bob_key, 50.0).await;
    let alice = start_client(
        &net,
        data.path(),
        "alice",
        mailboxes[1],
        alice_key.clone(),
        50.0,
    )
    .await;
    let carol = start_client(
        &net,
        data.path(),
        "carol",
        mailboxes[0],
        carol_key.clone(),
        50.0,
    )
    .await;
    let bob_public = bob.address();
    assert_eq!(bob_public.capability, None);

    // Bob writes to alice and carol: each bundle carries bob's address with that peer's
    // capability, which the peer takes from the authenticated request.
    let mut bob_for = Vec::new();
    for peer in [&alice, &carol] {
        bob.send(&peer.address(), transaction("bob.example", 0))
            .await
            .unwrap();
        let inbound = within(Duration::from_secs(60), "bob's request", peer.incoming())
            .await
            .unwrap();
        let sender = inbound.sender.clone().unwrap();
        assert_eq!(sender.mailbox_key, bob_public.mailbox_key);
        assert!(sender.capability.is_some(), "a capability for this peer");
        assert!(
            peer.learn_capability(&inbound.sender_key, &sender)
                .await
                .unwrap()
        );
        // A bundle naming another key's address teaches nothing.
        assert!(!peer.learn_capability(&[9; 32], &sender).await.unwrap());
        peer.ack(inbound.id).await.unwrap();
        let to_bob = peer.with_learned_capability(&bob_public).await.unwrap();
        assert_eq!(to_bob, sender);
        bob_for.push(to_bob);
    }
    assert_ne!(bob_for[0].capability, bob_for[1].capability);

    // Alice writes back through her capability: delivered.
    for i in 0..3 {
        alice
            .send(&bob_for[0], transaction("alice.example", i))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let inbound = within(Duration::from_secs(60), "alice's requests", bob.incoming())
            .await
            .unwrap();
        assert_eq!(inbound.origin, "alice.example");
        got.push(txn_of(&inbound.request.path));
        bob.ack(inbound.id).await.unwrap();
    }

    // Bob revokes alice's capability. Its revocation rides in his next pull requests.
    assert!(
        bob.revoke_capability(&peer_label(&alice_key.public().to_bytes()))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    alice
        .send(&bob_for[0], transaction("alice.example", 100))
        .await
        .unwrap();
    carol
        .send(&bob_for[1], transaction("carol.example", 7))
        .await
        .unwrap();
    let inbound = within(Duration::from_secs(60), "carol's request", bob.incoming())
        .await
        .unwrap();
    assert_eq!(inbound.origin, "carol.example", "only carol gets through");
    bob.ack(inbound.id).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), bob.incoming())
            .await
            .is_err(),
        "a request through the revoked capability arrived"
    );
    let refused: u64 = net
        .metrics()
        .iter()
        .map(|(_, m)| m.dropped("capability_revoked"))
        .sum();
    eprintln!(
        "whole network: 3/3 through alice's capability, then revoked: {refused} packets refused \
         at bob's mailbox relay, carol's request delivered, bob's address unchanged"
    );
    assert!(
        refused >= 1,
        "the revoked capability was refused at the relay"
    );
    assert_eq!(
        bob.address(),
        bob_public,
        "the owner's address did not change"
    );
    for c in [alice, bob, carol] {
        c.shutdown().await;
    }
    let _ = net.shutdown().await;
}
