//! A whole Spore network in-process on loopback: relays with real Noise links and sled stores,
//! a directory signed by a throwaway authority, and ready-made client configs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use spore_client::{DirectorySource, RateOverrides, Timeouts, TransportConfig, Trust};
use spore_protocol::directory::{Directory, NetworkParams};
use spore_protocol::{MailboxKey, RelayId};
use spore_relay::{Relay, RelayConfig, RelayKeys, RolesConfig, RunningRelay};

/// Why a testnet could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestnetError {
    #[error("relay: {0}")]
    Relay(#[from] spore_relay::RelayError),
    #[error("protocol: {0}")]
    Protocol(#[from] spore_protocol::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no relay with index {0}")]
    NoSuchRelay(usize),
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

struct NetRelay {
    role: RelayRole,
    keys: RelayKeys,
    config: RelayConfig,
    running: Option<RunningRelay>,
    address: SocketAddr,
}

/// A running network. Dropping it stops every relay.
pub struct Testnet {
    relays: Vec<NetRelay>,
    authority: SigningKey,
    directory: Directory,
    directory_path: PathBuf,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Testnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testnet")
            .field("relays", &self.relays.len())
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
                (t.path().to_owned(), Some(t))
            }
        };
        let authority = SigningKey::from_bytes(&rand::random());
        let directory_path = root.join("directory.bin");
        let mut roles = Vec::new();
        for _ in 0..config.mailbox_relays.max(1) {
            roles.push(RelayRole::Mailbox);
        }
        for layer in 1..=spore_protocol::params::MIX_LAYERS as u8 {
            for _ in 0..config.mixes_per_layer.max(1) {
                roles.push(RelayRole::Mix { layer });
            }
        }
        let mut relays = Vec::new();
        for (i, role) in roles.into_iter().enumerate() {
            let dir = root.join(format!("relay-{i}"));
            std::fs::create_dir_all(&dir)?;
            let mut rc = RelayConfig::for_test(&dir);
            match role {
                RelayRole::Mailbox => {
                    rc.roles = RolesConfig {
                        entry: true,
                        mix: false,
                        mailbox: true,
                    };
                    rc.layer = 0;
                }
                RelayRole::Mix { layer } => {
                    rc.roles = RolesConfig {
                        entry: false,
                        mix: true,
                        mailbox: false,
                    };
                    rc.layer = layer;
                }
            }
            rc.mix.workers = config.relay_workers.max(1);
            rc.mix.epoch_length_secs = config.params.epoch_length_secs;
            rc.mix.grace_secs = rc.mix.grace_secs.min(config.params.epoch_length_secs);
            rc.mix.max_delay_ms = config.params.max_delay_ms;
            rc.directory.path = Some(directory_path.clone());
            rc.directory.authorities = vec![hex::encode(authority.verifying_key().to_bytes())];
            rc.directory.threshold = 1;
            rc.directory.refresh_secs = 1;
            let keys = RelayKeys::generate();
            let running = Relay::start(
                rc.clone(),
                keys.clone(),
                spore_relay::DirectorySource::File(directory_path.clone()),
            )
            .await?;
            let address = running.local_addr();
            rc.listen = address; // restarts come back on the same port
            relays.push(NetRelay {
                role,
                keys,
                config: rc,
                running: Some(running),
                address,
            });
        }

        let now = now_unix();
        let mut descriptors = Vec::new();
        for r in &relays {
            if let Some(running) = &r.running {
                descriptors.push(running.descriptor()?);
            }
        }
        let mut directory = Directory {
            epoch: now / config.params.epoch_length_secs.max(1),
            valid_after: now.saturating_sub(60),
            valid_until: now + 7 * 24 * 3600,
            params: config.params,
            relays: descriptors,
            signatures: Vec::new(),
        };
        directory.sign(&authority)?;
        let tmp = root.join("directory.bin.tmp");
        std::fs::write(&tmp, directory.to_bytes())?;
        std::fs::rename(&tmp, &directory_path)?;
        for r in &relays {
            if let Some(running) = &r.running {
                running.refresh_directory().await?;
            }
        }
        Ok(Testnet {
            relays,
            authority,
            directory,
            directory_path,
            root,
            _temp: temp,
        })
    }

    /// The signed directory every relay and client uses.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Where the directory file is (for sidecars and other processes).
    pub fn directory_path(&self) -> &Path {
        &self.directory_path
    }

    /// The folder holding relay data (and a good place for client data dirs).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The authority's public key.
    pub fn authority(&self) -> [u8; 32] {
        self.authority.verifying_key().to_bytes()
    }

    /// What clients must trust: this testnet's authority, threshold 1.
    pub fn trust(&self) -> Trust {
        Trust {
            authorities: vec![self.authority()],
            threshold: 1,
        }
    }

    /// Every relay id, by index.
    pub fn relay_ids(&self) -> Vec<RelayId> {
        self.relays.iter().map(|r| r.keys.relay_id()).collect()
    }

    pub fn role(&self, index: usize) -> Option<RelayRole> {
        self.relays.get(index).map(|r| r.role)
    }

    /// The entry+mailbox relays clients attach to.
    pub fn mailbox_relays(&self) -> Vec<RelayId> {
        self.relays
            .iter()
            .filter(|r| r.role == RelayRole::Mailbox)
            .map(|r| r.keys.relay_id())
            .collect()
    }

    /// Indexes of the mix relays.
    pub fn mix_indexes(&self) -> Vec<usize> {
        self.relays
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.role, RelayRole::Mix { .. }))
            .map(|(i, _)| i)
            .collect()
    }

    /// Index of a relay by id.
    pub fn index_of(&self, id: &RelayId) -> Option<usize> {
        self.relays.iter().position(|r| r.keys.relay_id() == *id)
    }

    /// The listen address of relay `index`.
    pub fn relay_address(&self, index: usize) -> Option<SocketAddr> {
        self.relays.get(index).map(|r| r.address)
    }

    /// The running relay `index` (for metrics), if it is up.
    pub fn relay(&self, index: usize) -> Option<&RunningRelay> {
        self.relays.get(index).and_then(|r| r.running.as_ref())
    }

    /// Stops relay `index` gracefully (its data stays).
    pub async fn stop_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        let r = self
            .relays
            .get_mut(index)
            .ok_or(TestnetError::NoSuchRelay(index))?;
        if let Some(running) = r.running.take() {
            running.shutdown().await?;
        }
        Ok(())
    }

    /// Starts relay `index` again with the same keys, data and port.
    pub async fn restart_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        self.stop_relay(index).await?;
        let r = self
            .relays
            .get_mut(index)
            .ok_or(TestnetError::NoSuchRelay(index))?;
        let mut last = None;
        for _ in 0..50 {
            match Relay::start(
                r.config.clone(),
                r.keys.clone(),
                spore_relay::DirectorySource::File(self.directory_path.clone()),
            )
            .await
            {
                Ok(running) => {
                    r.running = Some(running);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last
            .map(TestnetError::from)
            .unwrap_or(TestnetError::NoSuchRelay(index)))
    }

    /// A client config for this network: the fixed directory, this testnet's authority, rates
    /// from the directory, and short timeouts suited to fast rates.
    pub fn client_config(
        &self,
        server_name: &str,
        mailbox_relay: RelayId,
        data_dir: impl Into<PathBuf>,
    ) -> TransportConfig {
        self.client_config_with_key(server_name, mailbox_relay, data_dir, MailboxKey::generate())
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
            DirectorySource::Fixed(self.directory.clone()),
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
    pub async fn shutdown(mut self) {
        for i in 0..self.relays.len() {
            let _ = self.stop_relay(i).await;
        }
    }
}
