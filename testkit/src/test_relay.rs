//! A relay in this process on 127.0.0.1:0, with its own temporary data folder, that can be
//! restarted on the same data and keys.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spore_protocol::packet::RouteHop;
use spore_relay::{
    Clock, DirectorySource, Link, Relay, RelayConfig, RelayKeys, RunningRelay, SystemClock,
};

use crate::packets::send_and_close;

/// A relay (all roles unless tweaked) with its own temporary directory; stopped when dropped.
pub struct TestRelay {
    pub relay: Option<RunningRelay>,
    pub config: RelayConfig,
    pub keys: RelayKeys,
    pub source: DirectorySource,
    pub clock: Arc<dyn Clock>,
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = RelayConfig::for_test(dir.path());
        tweak(&mut config);
        let keys = RelayKeys::generate();
        let relay =
            Relay::start_with_clock(config.clone(), keys.clone(), source.clone(), clock.clone())
                .await
                .expect("the relay starts");
        Self {
            relay: Some(relay),
            config,
            keys,
            source,
            clock,
            _dir: dir,
        }
    }

    /// The running relay.
    pub fn r(&self) -> &RunningRelay {
        self.relay.as_ref().expect("the relay is running")
    }

    pub fn addr(&self) -> String {
        self.r().local_addr().to_string()
    }

    /// Graceful shutdown and start again on the same data and keys (new port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`restart`](Self::restart), with `between` run on the data dir while the relay is down.
    pub async fn restart_with(&mut self, between: impl FnOnce(&Path)) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await.expect("graceful shutdown");
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

    /// This relay as a route hop, with the key of the current epoch.
    pub fn hop(&self) -> RouteHop {
        self.hop_for(self.epoch())
    }

    /// This relay as a route hop, with the key of `epoch`.
    pub fn hop_for(&self, epoch: u64) -> RouteHop {
        RouteHop {
            id: self.keys.relay_id(),
            sphinx_key: self.keys.sphinx_public(epoch),
        }
    }

    /// A Noise link to this relay as the client with static key `secret`.
    pub async fn link(&self, secret: &[u8; 32]) -> Link {
        Link::connect(&self.addr(), secret, Some(self.keys.link_public()))
            .await
            .expect("a link to the test relay")
    }

    /// Sends packets on a fresh link from an anonymous client key, and closes it once the
    /// relay has seen every frame.
    pub async fn send(&self, packets: &[Vec<u8>]) {
        send_and_close(self.link(&rand::random()).await, packets).await;
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await.expect("graceful shutdown");
        }
    }
}
