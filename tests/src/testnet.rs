//! The test-facing view of `spore_tools::testnet::Testnet` (the one harness `spore demo`,
//! `spore testnet` and these tests share): a temporary data folder, fast default rates, and
//! ready-made client configs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spore_client::{DirectorySource, RateOverrides, Timeouts, TransportConfig, Trust};
use spore_protocol::directory::{Directory, NetworkParams};
use spore_protocol::{MailboxKey, RelayId};
use spore_relay::RunningRelay;
use spore_tools::testnet::{Role, Testnet as Net, TestnetConfig as NetConfig};

/// Why a testnet could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestnetError {
    #[error("{0:#}")]
    Setup(#[from] anyhow::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a testnet relay does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    /// Entry and mailbox: where clients connect and where their mail waits.
    Mailbox,
    /// A mix in layer 1..=3.
    Mix { layer: u8 },
}

/// The shape of a testnet.
#[derive(Debug, Clone)]
pub struct TestnetConfig {
    /// Entry+mailbox relays (clients pick one each).
    pub mailbox_relays: usize,
    /// Mixes in each of the three layers.
    pub mixes_per_layer: usize,
    /// Network parameters published in the directory (rates, delays, epoch length).
    pub params: NetworkParams,
    /// Sphinx worker threads per relay.
    pub relay_workers: usize,
    /// Keep relay data here instead of a temporary directory.
    pub base_dir: Option<PathBuf>,
}

impl Default for TestnetConfig {
    /// Two mailbox relays, three layers of one mix each, and fast rates (mean per-hop delay
    /// 1 ms, 50 ms pulls) so that tests finish quickly.
    fn default() -> Self {
        Self {
            mailbox_relays: 2,
            mixes_per_layer: 1,
            params: NetworkParams {
                mu: 1000.0,
                lambda_p: 50.0,
                lambda_l: 5.0,
                lambda_d: 5.0,
                pull_interval_ms: 50,
                ..NetworkParams::default()
            },
            relay_workers: 1,
            base_dir: None,
        }
    }
}

/// A running network. Dropping it stops every relay.
pub struct Testnet {
    net: Net,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Testnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testnet")
            .field("relays", &self.net.relay_count())
            .finish_non_exhaustive()
    }
}

impl Testnet {
    /// Starts the relays, signs and publishes the directory, and waits until every relay uses it.
    pub async fn start(config: TestnetConfig) -> Result<Testnet, TestnetError> {
        let (root, temp) = match &config.base_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut cfg = NetConfig::new(&root);
        cfg.edge = config.mailbox_relays;
        cfg.width = config.mixes_per_layer;
        cfg.params = config.params;
        cfg.workers = config.relay_workers;
        let net = Net::start(cfg).await?;
        Ok(Testnet {
            net,
            root,
            _temp: temp,
        })
    }

    pub fn directory(&self) -> &Directory {
        self.net.directory()
    }

    /// The signed directory as a file, for clients and sidecars in other processes.
    pub fn directory_path(&self) -> &Path {
        self.net.directory_path()
    }

    /// Where relay data lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The authority's public key.
    pub fn authority(&self) -> [u8; 32] {
        self.net.authority_public()
    }

    /// What clients must trust: this testnet's authority, threshold 1.
    pub fn trust(&self) -> Trust {
        Trust {
            authorities: vec![self.authority()],
            threshold: 1,
        }
    }

    pub fn relay_ids(&self) -> Vec<RelayId> {
        self.net.relay_ids()
    }

    pub fn role(&self, index: usize) -> Option<RelayRole> {
        self.net.role(index).map(|r| match r {
            Role::Edge => RelayRole::Mailbox,
            Role::Mix { layer } => RelayRole::Mix { layer },
        })
    }

    /// The entry+mailbox relays, where clients connect.
    pub fn mailbox_relays(&self) -> Vec<RelayId> {
        self.net.edge_relays()
    }

    /// Indexes of every mix relay (for stop/restart).
    pub fn mix_indexes(&self) -> Vec<usize> {
        (1..=spore_protocol::params::MIX_LAYERS as u8)
            .flat_map(|l| self.net.mixes_in_layer(l))
            .collect()
    }

    pub fn index_of(&self, id: &RelayId) -> Option<usize> {
        self.net.index_of(id)
    }

    pub fn relay_address(&self, index: usize) -> Option<SocketAddr> {
        self.net.relay_address(index)
    }

    pub fn relay(&self, index: usize) -> Option<&RunningRelay> {
        self.net.relay(index)
    }

    /// Stops relay `index` gracefully (its data stays).
    pub async fn stop_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        Ok(self.net.stop_relay(index).await?)
    }

    /// Starts relay `index` again with the same keys, data and port.
    pub async fn restart_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        Ok(self.net.restart_relay(index).await?)
    }

    /// A client config for this network: the fixed directory, this testnet's authority, rates
    /// from the directory, and short timeouts suited to fast rates.
    pub fn client_config(
        &self,
        server_name: &str,
        mailbox_relay: RelayId,
        data_dir: impl Into<PathBuf>,
    ) -> TransportConfig {
        self.client_config_with_key(
            server_name,
            mailbox_relay,
            data_dir,
            MailboxKey::generate(&mut rand::rng()),
        )
    }

    /// Like [`Testnet::client_config`] with a given mailbox key (to restart a client, or to
    /// know its address before it starts).
    pub fn client_config_with_key(
        &self,
        server_name: &str,
        mailbox_relay: RelayId,
        data_dir: impl Into<PathBuf>,
        key: MailboxKey,
    ) -> TransportConfig {
        let mut c = TransportConfig::new(
            data_dir,
            key,
            server_name,
            mailbox_relay,
            DirectorySource::Fixed(self.directory().clone()),
            self.trust(),
        );
        c.rates = RateOverrides::default();
        c.timeouts = Timeouts {
            ack_margin: Duration::from_millis(1500),
            max_backoff: Duration::from_secs(2),
            connect: Duration::from_secs(2),
            ..Timeouts::default()
        };
        c
    }

    /// Stops every relay gracefully.
    pub async fn shutdown(self) {
        let _ = self.net.shutdown().await;
    }
}
