//! Whole networks on loopback: entry → 3 mix layers → mailbox relay, over real TCP and Noise
//! links, routed with a signed directory.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use spore_protocol::directory::{Directory, NetworkParams};
use spore_protocol::link::Frame;
use spore_protocol::packet::{self, RouteHop};
use spore_protocol::params::PACKET_SIZE;
use spore_relay::{DirectorySource, MemoryDirectory, RelayConfig, RolesConfig, SystemClock};

use spore_protocol::MailboxKey;
use spore_testkit::{TestRelay, plain_packet, pull, wait_until};

pub struct Network {
    pub entry: TestRelay,
    pub mixes: Vec<TestRelay>,
    pub mailbox: TestRelay,
    pub directory: MemoryDirectory,
    pub authority: SigningKey,
}

fn roles(entry: bool, mix: bool, mailbox: bool) -> RolesConfig {
    RolesConfig {
        entry,
        mix,
        mailbox,
    }
}

impl Network {
    /// Starts five relays, publishes a directory signed by a test authority, and waits until
    /// every relay has installed it.
    pub async fn start(mailbox_tweak: impl FnOnce(&mut RelayConfig)) -> Self {
        let authority = SigningKey::from_bytes(&rand::random());
        let auth_hex = hex::encode(authority.verifying_key().to_bytes());
        let directory = MemoryDirectory::new();
        let source = DirectorySource::Memory(directory.clone());
        let common = |c: &mut RelayConfig| {
            c.directory.authorities = vec![auth_hex.clone()];
            c.directory.threshold = 1;
            c.directory.refresh_secs = 1;
        };
        let clock: Arc<dyn spore_relay::Clock> = Arc::new(SystemClock);
        let entry = TestRelay::start_full(
            |c| {
                common(c);
                c.roles = roles(true, false, false);
                c.layer = 0;
            },
            source.clone(),
            clock.clone(),
        )
        .await;
        let mut mixes = Vec::new();
        for layer in 1..=3u8 {
            mixes.push(
                TestRelay::start_full(
                    |c| {
                        common(c);
                        c.roles = roles(false, true, false);
                        c.layer = layer;
                    },
                    source.clone(),
                    clock.clone(),
                )
                .await,
            );
        }
        let mailbox = TestRelay::start_full(
            |c| {
                common(c);
                c.roles = roles(false, false, true);
                c.layer = 0;
                mailbox_tweak(c);
            },
            source.clone(),
            clock.clone(),
        )
        .await;
        let net = Self {
            entry,
            mixes,
            mailbox,
            directory,
            authority,
        };
        net.publish();
        for r in net.all() {
            r.r().refresh_directory().await.unwrap();
        }
        net
    }

    pub fn all(&self) -> Vec<&TestRelay> {
        let mut v = vec![&self.entry];
        v.extend(self.mixes.iter());
        v.push(&self.mailbox);
        v
    }

    pub fn publish(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut doc = Directory {
            epoch: now / 3600,
            valid_after: now - 60,
            valid_until: now + 3600,
            params: NetworkParams::default(),
            relays: self
                .all()
                .iter()
                .map(|r| r.r().descriptor().unwrap())
                .collect(),
            signatures: vec![],
        };
        doc.sign(&self.authority).unwrap();
        self.directory.set(doc.to_bytes());
    }

    pub fn forward_route(&self) -> Vec<RouteHop> {
        self.all().iter().map(|r| r.hop()).collect()
    }

    pub fn ack_route(&self) -> Vec<RouteHop> {
        self.all()[1..].iter().map(|r| r.hop()).collect()
    }

    pub async fn shutdown(self) {
        for r in [self.entry, self.mailbox].into_iter().chain(self.mixes) {
            r.shutdown().await;
        }
    }
}

#[tokio::test]
async fn three_layer_network_delivers_end_to_end_and_acks() {
    let net = Network::start(|_| {}).await;
    let recipient = MailboxKey::generate(&mut rand::rng());
    let sender = MailboxKey::generate(&mut rand::rng());
    let n = 12;
    let mut link = net.entry.link(&rand::random()).await;
    let mut ack_ids = Vec::new();
    for i in 0..n {
        let ack_id = packet::random_surb_id(&mut rand::rng());
        let (surb, _) = packet::build_surb(
            &net.ack_route(),
            sender.mailbox_id(),
            ack_id,
            &[Duration::from_millis(5); 4],
        )
        .unwrap();
        let payload = packet::ForwardPayload {
            ack_surb: surb,
            sealed_fragment: vec![i as u8; spore_protocol::params::SEALED_FRAGMENT_SIZE],
        }
        .encode()
        .unwrap();
        let p = packet::build_packet(
            &net.forward_route(),
            recipient.mailbox_id(),
            packet::random_surb_id(&mut rand::rng()),
            &[Duration::from_millis(10); 5],
            &payload,
        )
        .unwrap();
        let p: Box<[u8; PACKET_SIZE]> = p.into_boxed_slice().try_into().unwrap();
        link.writer.write_frame(&Frame::Packet(p)).await.unwrap();
        ack_ids.push(ack_id);
    }
    link.writer.flush().await.unwrap();

    assert!(
        wait_until(Duration::from_secs(20), || {
            net.mailbox.r().metrics().packets_stored == 2 * n as u64
        })
        .await,
        "entry {:?}\nmixes {:?}\nmailbox {:?}",
        net.entry.r().metrics(),
        net.mixes
            .iter()
            .map(|m| m.r().metrics())
            .collect::<Vec<_>>(),
        net.mailbox.r().metrics()
    );
    for m in &net.mixes {
        // Each mix forwarded the packet and its ack (and, since issue 15, the decoys the
        // mailbox relay sends for the acks it stores, which carry no ack of their own).
        assert!(m.r().metrics().packets_forwarded >= 2 * n as u64);
    }

    let mut inbox = net.mailbox.link(&recipient.secret_bytes()).await;
    let items = pull(&mut inbox).await;
    assert_eq!(items.len(), n);
    let mut firsts: Vec<u8> = items
        .iter()
        .map(|it| {
            let plain = packet::open_final_payload(&it.payload[..]).unwrap();
            let fwd = packet::ForwardPayload::decode(&plain).unwrap();
            fwd.sealed_fragment[0]
        })
        .collect();
    firsts.sort();
    assert_eq!(firsts, (0..n as u8).collect::<Vec<_>>());

    let mut acks = net.mailbox.link(&sender.secret_bytes()).await;
    let mut got: Vec<[u8; 16]> = pull(&mut acks).await.iter().map(|a| a.surb_id).collect();
    got.sort();
    ack_ids.sort();
    assert_eq!(got, ack_ids);
    net.shutdown().await;
}

#[tokio::test]
async fn relay_loop_cover_travels_every_layer_and_returns() {
    let net = Network::start(|c| c.mix.loop_rate = 50.0).await;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let m = net.mailbox.r().metrics();
            m.loops_sent >= 5 && m.cover_received >= 3
        })
        .await,
        "{:?}",
        net.mailbox.r().metrics()
    );
    assert_eq!(net.mailbox.r().metrics().packets_stored, 0);
    net.shutdown().await;
}

#[tokio::test]
async fn directory_without_enough_signatures_is_refused() {
    let net = Network::start(|_| {}).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = Directory {
        epoch: now / 3600,
        valid_after: now - 60,
        valid_until: now + 3600,
        params: NetworkParams::default(),
        relays: vec![],
        signatures: vec![],
    };
    net.directory.set(forged.to_bytes());
    assert!(net.entry.r().refresh_directory().await.is_err());
    net.shutdown().await;
}

#[tokio::test]
async fn outbound_link_reconnects_when_the_next_hop_comes_back() {
    let mut net = Network::start(|_| {}).await;
    let recipient = MailboxKey::generate(&mut rand::rng());
    let send_one = |net: &Network, tag: u8| {
        plain_packet(
            &net.forward_route(),
            recipient.mailbox_id(),
            &[Duration::ZERO; 5],
            &[tag],
        )
    };
    let p = send_one(&net, 1);
    net.entry.send(&[p]).await;
    assert!(
        wait_until(Duration::from_secs(10), || net
            .mailbox
            .r()
            .metrics()
            .packets_stored
            == 1)
        .await
    );

    // The mailbox relay restarts on a new port; the directory says where it went.
    net.mailbox.restart().await;
    net.publish();
    for r in net.all() {
        r.r().refresh_directory().await.unwrap();
    }
    let p = send_one(&net, 2);
    net.entry.send(&[p]).await;
    assert!(
        wait_until(Duration::from_secs(15), || net
            .mailbox
            .r()
            .metrics()
            .packets_stored
            == 1)
        .await,
        "layer 3 {:?}",
        net.mixes[2].r().metrics()
    );
    let mut inbox = net.mailbox.link(&recipient.secret_bytes()).await;
    assert_eq!(pull(&mut inbox).await.len(), 2);
    net.shutdown().await;
}

#[tokio::test]
async fn a_mix_takes_packets_only_from_relays_in_the_directory() {
    let net = Network::start(|_| {}).await;
    let recipient = MailboxKey::generate(&mut rand::rng());
    let route: Vec<RouteHop> = net.all()[1..].iter().map(|r| r.hop()).collect();
    let p = plain_packet(
        &route,
        recipient.mailbox_id(),
        &[Duration::ZERO; 4],
        b"skip",
    );
    // A client (key not in the directory) tries to skip the entry layer.
    net.mixes[0].send(&[p]).await;
    assert!(
        wait_until(Duration::from_secs(5), || {
            net.mixes[0].r().metrics().dropped("not_authorized") == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(net.mailbox.r().metrics().packets_stored, 0);
    net.shutdown().await;
}

#[tokio::test]
async fn a_mix_refuses_strangers_at_the_handshake_and_still_forwards_for_relays() {
    let net = Network::start(|_| {}).await;
    let mix = &net.mixes[0];
    // Strangers are told at once, before they send a frame, and hold no link slot.
    let strangers = 200;
    let mut held = Vec::new();
    for _ in 0..strangers {
        let mut link = mix.link(&rand::random()).await;
        match tokio::time::timeout(Duration::from_secs(2), link.recv()).await {
            Ok(Ok(Frame::Error {
                code: spore_protocol::link::LinkErrorCode::NotAuthorized,
            })) => {}
            other => panic!("expected NotAuthorized at the handshake, got {other:?}"),
        }
        held.push(link);
    }
    let m = mix.r().metrics();
    assert_eq!(m.dropped("not_authorized"), strangers);
    assert_eq!(m.connections_open, 0, "no stranger holds a link");

    // Relays still reach the mix: a packet crosses the whole network.
    let recipient = MailboxKey::generate(&mut rand::rng());
    let p = plain_packet(
        &net.forward_route(),
        recipient.mailbox_id(),
        &[Duration::ZERO; 5],
        b"through",
    );
    let mut link = net.entry.link(&rand::random()).await;
    link.send(&Frame::Packet(p.into_boxed_slice().try_into().unwrap()))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || net
            .mailbox
            .r()
            .metrics()
            .packets_stored
            == 1)
        .await
    );
    drop(held);
    net.shutdown().await;
}
