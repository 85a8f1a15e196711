//! Test harness: relays in-process on 127.0.0.1:0, clients over real Noise links, packets built
//! with the protocol crate.

use std::sync::Arc;
use std::time::Duration;

use spore_protocol::link::{Frame, MailboxItem};
use spore_protocol::packet::{self, ForwardPayload, RouteHop};
use spore_protocol::params::{PACKET_SIZE, PULL_SLOTS, SEALED_FRAGMENT_SIZE};
use spore_protocol::{MailboxId, MailboxKey};
use spore_relay::{
    Clock, DirectorySource, Link, Relay, RelayConfig, RelayKeys, RunningRelay, SystemClock,
};

/// A relay with its own temporary directory; stopped when dropped.
pub struct TestRelay {
    pub relay: Option<RunningRelay>,
    pub config: RelayConfig,
    pub keys: RelayKeys,
    pub source: DirectorySource,
    pub clock: Arc<dyn Clock>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRelay {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut RelayConfig)) -> Self {
        Self::start_full(tweak, DirectorySource::None, Arc::new(SystemClock)).await
    }

    pub async fn start_full(
        tweak: impl FnOnce(&mut RelayConfig),
        source: DirectorySource,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RelayConfig::for_test(dir.path());
        tweak(&mut config);
        let keys = RelayKeys::generate();
        let relay =
            Relay::start_with_clock(config.clone(), keys.clone(), source.clone(), clock.clone())
                .await
                .unwrap();
        Self {
            relay: Some(relay),
            config,
            keys,
            source,
            clock,
            _dir: Some(dir),
        }
    }

    pub fn r(&self) -> &RunningRelay {
        self.relay.as_ref().unwrap()
    }

    pub fn addr(&self) -> String {
        self.r().local_addr().to_string()
    }

    /// Graceful shutdown and start again on the same data and keys (new port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`restart`](Self::restart), with `between` run on the data dir while the relay is down.
    pub async fn restart_with(&mut self, between: impl FnOnce(&std::path::Path)) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await.unwrap();
        }
        between(&self.config.data_dir);
        let mut last = None;
        for _ in 0..50 {
            match Relay::start_with_clock(
                self.config.clone(),
                self.keys.clone(),
                self.source.clone(),
                self.clock.clone(),
            )
            .await
            {
                Ok(r) => {
                    self.relay = Some(r);
                    return;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("restart failed: {last:?}");
    }

    pub fn epoch(&self) -> u64 {
        self.r().current_epoch()
    }

    pub fn hop(&self) -> RouteHop {
        RouteHop {
            id: self.keys.relay_id(),
            sphinx_key: self.keys.sphinx_public(self.epoch()),
        }
    }

    pub async fn link(&self, secret: &[u8; 32]) -> Link {
        Link::connect(&self.addr(), secret, Some(self.keys.link_public()))
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await.unwrap();
        }
    }
}

/// Sends packets on a fresh link from an anonymous client key.
pub async fn send_packets(relay: &TestRelay, packets: &[Vec<u8>]) {
    let mut link = relay.link(&rand::random()).await;
    for p in packets {
        let p: Box<[u8; PACKET_SIZE]> = p.clone().into_boxed_slice().try_into().unwrap();
        link.writer.write_frame(&Frame::Packet(p)).await.unwrap();
    }
    link.writer.flush().await.unwrap();
    // Close cleanly so the relay sees every frame.
    link.writer.shutdown().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), link.reader.read_frame()).await;
}

/// One pull: exactly PULL_SLOTS slots, returns the real items.
pub async fn pull(link: &mut Link) -> Vec<MailboxItem> {
    link.send(&Frame::PullRequest).await.unwrap();
    let mut items = Vec::new();
    for i in 0..PULL_SLOTS {
        match link.recv().await.unwrap() {
            Frame::PullSlot(slot) => {
                assert_eq!(usize::from(slot.index), i);
                if let Some(item) = slot.item {
                    items.push(item);
                }
            }
            other => panic!("expected a pull slot, got {other:?}"),
        }
    }
    items
}

pub async fn delete(link: &mut Link, handles: Vec<u64>) -> u32 {
    link.send(&Frame::Delete { handles }).await.unwrap();
    match link.recv().await.unwrap() {
        Frame::DeleteDone { count } => count,
        other => panic!("expected DeleteDone, got {other:?}"),
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A forward packet on `route` for `mailbox` with a plain message (no SURB-ack).
pub fn plain_packet(
    route: &[RouteHop],
    mailbox: MailboxId,
    delays: &[Duration],
    msg: &[u8],
) -> Vec<u8> {
    packet::build_packet(
        route,
        mailbox,
        packet::random_surb_id(&mut rand::rng()),
        delays,
        msg,
    )
    .unwrap()
}

/// A forward packet carrying a SURB-ack that comes back over `ack_route` to `ack_mailbox`.
/// Returns the packet and the ack's SURB id.
pub fn acked_packet(
    route: &[RouteHop],
    mailbox: MailboxId,
    ack_route: &[RouteHop],
    ack_mailbox: MailboxId,
) -> (Vec<u8>, [u8; 16]) {
    let ack_id = packet::random_surb_id(&mut rand::rng());
    let (surb, _recovery) = packet::build_surb(
        ack_route,
        ack_mailbox,
        ack_id,
        &vec![Duration::ZERO; ack_route.len()],
    )
    .unwrap();
    let payload = ForwardPayload {
        ack_surb: surb,
        sealed_fragment: vec![0x5a; SEALED_FRAGMENT_SIZE],
    }
    .encode()
    .unwrap();
    let p = packet::build_packet(
        route,
        mailbox,
        packet::random_surb_id(&mut rand::rng()),
        &vec![Duration::ZERO; route.len()],
        &payload,
    )
    .unwrap();
    (p, ack_id)
}

pub fn mailbox_key() -> MailboxKey {
    MailboxKey::generate(&mut rand::rng())
}
