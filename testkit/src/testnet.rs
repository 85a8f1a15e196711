//! A whole Spore network on loopback: a directory authority and relays in one process, over
//! real TCP and Noise links, with real stores in a data folder.
//!
//! The one harness behind `spore demo`, `spore testnet up` and the whole-network tests. The
//! topology is Loopix's: mailbox relays that are both entry and mailbox relays (where
//! homeservers connect), and three mix layers of `mixes_per_layer` mixes each.
//!
//! Relays start first on `127.0.0.1:0`; their signed descriptors (with the ports they got) are
//! then signed into one directory by a fresh authority key, published to every relay in memory
//! and written to `<dir>/directory.bin` for clients and other processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use spore_client::{DirectorySource, RateOverrides, Timeouts, TransportConfig, Trust};
use spore_protocol::directory::{self, BuildError, Directory, NetworkParams, RelayDescriptor};
use spore_protocol::params::MIX_LAYERS;
use spore_protocol::{MailboxKey, RelayId};
use spore_relay::{
    DirectorySource as RelayDirectorySource, MemoryDirectory, MetricsSnapshot, Relay, RelayConfig,
    RelayKeys, RolesConfig, RunningRelay,
};

/// Why a testnet could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestnetError {
    #[error("a network needs at least one mailbox relay and one mix per layer")]
    EmptyLayer,
    #[error("relay {index}: {source}")]
    Relay {
        index: usize,
        #[source]
        source: spore_relay::RelayError,
    },
    #[error("no relay {0}")]
    NoSuchRelay(usize),
    #[error("relay {index} did not restart: {last}")]
    Restart { index: usize, last: String },
    #[error("invalid network parameters: {0}")]
    Params(String),
    #[error("descriptor of relay {relay} does not verify: {reason}")]
    Descriptor { relay: String, reason: String },
    #[error("directory: {0}")]
    Directory(String),
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
    /// Sphinx worker threads per relay (the machine's cores are shared by all relays).
    pub relay_workers: usize,
    /// Keep relay data, keys and the directory file here instead of a temporary directory.
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

impl TestnetConfig {
    /// The demo's network in `dir`: 2 mailbox relays, 3 layers of 2 mixes, the default
    /// (real-world) network parameters.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            mailbox_relays: 2,
            mixes_per_layer: 2,
            params: NetworkParams::default(),
            relay_workers: 1,
            base_dir: Some(dir.into()),
        }
    }
}

struct Member {
    role: RelayRole,
    config: RelayConfig,
    keys: RelayKeys,
    running: Option<RunningRelay>,
}

/// A running network. Relays are stopped by [`Testnet::shutdown`], or dropped with it.
pub struct Testnet {
    members: Vec<Member>,
    authority: SigningKey,
    published: MemoryDirectory,
    directory: Directory,
    directory_path: PathBuf,
    params: NetworkParams,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Testnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testnet")
            .field("relays", &self.members.len())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A directory of `descriptors` signed by `key`, valid from `now_unix` for `valid_secs`:
/// what an authority publishes, checked the way relays and clients check it.
pub fn signed_directory(
    descriptors: Vec<RelayDescriptor>,
    params: NetworkParams,
    key: &SigningKey,
    now_unix: u64,
    valid_secs: u64,
) -> Result<Directory, TestnetError> {
    directory::build(descriptors, params, key, now_unix, valid_secs).map_err(|e| match e {
        BuildError::Params(e) => TestnetError::Params(e.to_string()),
        BuildError::Descriptor { relay, source } => TestnetError::Descriptor {
            relay,
            reason: source.to_string(),
        },
        other => TestnetError::Directory(other.to_string()),
    })
}

impl Testnet {
    /// Starts every relay, signs and publishes the directory, and waits until each relay has
    /// installed it.
    pub async fn start(cfg: TestnetConfig) -> Result<Testnet, TestnetError> {
        if cfg.mailbox_relays == 0 || cfg.mixes_per_layer == 0 {
            return Err(TestnetError::EmptyLayer);
        }
        let (root, temp) = match &cfg.base_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let authority = SigningKey::from_bytes(&rand::random());
        let auth_hex = hex::encode(authority.verifying_key().to_bytes());
        let published = MemoryDirectory::new();
        let mut roles = vec![RelayRole::Mailbox; cfg.mailbox_relays];
        for layer in 1..=MIX_LAYERS as u8 {
            roles.extend(std::iter::repeat_n(
                RelayRole::Mix { layer },
                cfg.mixes_per_layer,
            ));
        }
        let mut members = Vec::with_capacity(roles.len());
        for (index, role) in roles.into_iter().enumerate() {
            let name = match role {
                RelayRole::Mailbox => format!("edge-{index}"),
                RelayRole::Mix { layer } => format!("mix-{layer}-{index}"),
            };
            let mut config = RelayConfig::for_test(&root.join(name));
            config.directory.authorities = vec![auth_hex.clone()];
            config.directory.threshold = 1;
            config.directory.refresh_secs = 1;
            config.mix.workers = cfg.relay_workers;
            config.mix.epoch_length_secs = cfg.params.epoch_length_secs;
            config.mix.max_delay_ms = cfg.params.max_delay_ms;
            (config.roles, config.layer) = match role {
                RelayRole::Mailbox => (
                    RolesConfig {
                        entry: true,
                        mix: false,
                        mailbox: true,
                    },
                    0,
                ),
                RelayRole::Mix { layer } => (
                    RolesConfig {
                        entry: false,
                        mix: true,
                        mailbox: false,
                    },
                    layer,
                ),
            };
            let relay_error = |source| TestnetError::Relay { index, source };
            let keys = RelayKeys::load_or_generate(&config.key_file).map_err(relay_error)?;
            let running = Relay::start(
                config.clone(),
                keys.clone(),
                RelayDirectorySource::Memory(published.clone()),
            )
            .await
            .map_err(relay_error)?;
            // Keep the port across restarts so the directory stays true.
            config.listen = running.local_addr();
            members.push(Member {
                role,
                config,
                keys,
                running: Some(running),
            });
        }
        let mut descriptors = Vec::with_capacity(members.len());
        for (index, m) in members.iter().enumerate() {
            if let Some(r) = &m.running {
                descriptors.push(
                    r.descriptor()
                        .map_err(|source| TestnetError::Relay { index, source })?,
                );
            }
        }
        let directory = signed_directory(descriptors, cfg.params, &authority, now_unix(), 86_400)?;
        let directory_path = root.join("directory.bin");
        std::fs::write(&directory_path, directory.to_bytes())?;
        published.set(directory.to_bytes());
        let net = Testnet {
            members,
            authority,
            published,
            directory,
            directory_path,
            params: cfg.params,
            root,
            _temp: temp,
        };
        net.refresh_all().await?;
        Ok(net)
    }

    async fn refresh_all(&self) -> Result<(), TestnetError> {
        for (index, m) in self.members.iter().enumerate() {
            if let Some(r) = &m.running {
                r.refresh_directory()
                    .await
                    .map_err(|source| TestnetError::Relay { index, source })?;
            }
        }
        Ok(())
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The signed directory as a file, for clients and sidecars in other processes.
    pub fn directory_path(&self) -> &Path {
        &self.directory_path
    }

    /// Where relay data lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The authority key relays and clients must trust.
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

    pub fn params(&self) -> NetworkParams {
        self.params
    }

    /// The entry+mailbox relays, where clients connect and keep their mailboxes.
    pub fn mailbox_relays(&self) -> Vec<RelayId> {
        self.members
            .iter()
            .filter(|m| m.role == RelayRole::Mailbox)
            .map(|m| m.keys.relay_id())
            .collect()
    }

    pub fn relay_count(&self) -> usize {
        self.members.len()
    }

    pub fn role(&self, index: usize) -> Option<RelayRole> {
        self.members.get(index).map(|m| m.role)
    }

    pub fn relay(&self, index: usize) -> Option<&RunningRelay> {
        self.members.get(index).and_then(|m| m.running.as_ref())
    }

    /// Every relay's id, in index order (stopped relays included).
    pub fn relay_ids(&self) -> Vec<RelayId> {
        self.members.iter().map(|m| m.keys.relay_id()).collect()
    }

    pub fn index_of(&self, id: &RelayId) -> Option<usize> {
        self.members.iter().position(|m| m.keys.relay_id() == *id)
    }

    /// The relay's listening address; pinned, so it holds across restarts.
    pub fn relay_address(&self, index: usize) -> Option<SocketAddr> {
        self.members.get(index).map(|m| m.config.listen)
    }

    /// Indexes of the mixes in `layer`.
    pub fn mixes_in_layer(&self, layer: u8) -> Vec<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == RelayRole::Mix { layer })
            .map(|(i, _)| i)
            .collect()
    }

    /// Indexes of every mix relay (for stop/restart).
    pub fn mix_indexes(&self) -> Vec<usize> {
        (1..=MIX_LAYERS as u8)
            .flat_map(|l| self.mixes_in_layer(l))
            .collect()
    }

    /// Stops relay `index` gracefully (its data stays).
    pub async fn stop_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        let m = self
            .members
            .get_mut(index)
            .ok_or(TestnetError::NoSuchRelay(index))?;
        if let Some(r) = m.running.take() {
            r.shutdown()
                .await
                .map_err(|source| TestnetError::Relay { index, source })?;
        }
        Ok(())
    }

    /// Starts a stopped relay again on the same port, keys and data.
    pub async fn start_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        let m = self
            .members
            .get_mut(index)
            .ok_or(TestnetError::NoSuchRelay(index))?;
        if m.running.is_some() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..50 {
            match Relay::start(
                m.config.clone(),
                m.keys.clone(),
                RelayDirectorySource::Memory(self.published.clone()),
            )
            .await
            {
                Ok(r) => {
                    r.refresh_directory()
                        .await
                        .map_err(|source| TestnetError::Relay { index, source })?;
                    m.running = Some(r);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(TestnetError::Restart {
            index,
            last: format!("{last:?}"),
        })
    }

    /// Publishes relay `index` at `address` instead of its own listener (same keys, freshly
    /// signed descriptor and directory), and has every running relay load that directory: with
    /// a listener that accepts links and discards what they carry, the relay plays a mix that
    /// drops every packet while its neighbours' links to it stay up. Clients keep the
    /// directory they have (they never dial a mix, so the address is not theirs to use).
    pub async fn publish_relay_at(
        &mut self,
        index: usize,
        address: &str,
    ) -> Result<(), TestnetError> {
        let now = now_unix();
        let mut descriptors = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            let relay_error = |source| TestnetError::Relay { index: i, source };
            let d = if i == index {
                spore_relay::build_descriptor(&m.config, &m.keys, address, now)
                    .map_err(relay_error)?
            } else {
                match &m.running {
                    Some(r) => r.descriptor().map_err(relay_error)?,
                    None => continue,
                }
            };
            descriptors.push(d);
        }
        if index >= self.members.len() {
            return Err(TestnetError::NoSuchRelay(index));
        }
        let directory = signed_directory(descriptors, self.params, &self.authority, now, 86_400)?;
        self.published.set(directory.to_bytes());
        self.directory = directory;
        self.refresh_all().await
    }

    /// Signs a directory listing every running relay and `external` relays (ones this
    /// testnet does not run, e.g. a `spore-relay` process that a test SIGKILLs), publishes it
    /// to the running relays and writes it to [`Testnet::directory_path`], where an external
    /// relay reads it (`[directory] path`). Clients configured after this get it too.
    pub async fn publish_with_external(
        &mut self,
        external: Vec<RelayDescriptor>,
    ) -> Result<(), TestnetError> {
        let mut descriptors = Vec::with_capacity(self.members.len() + external.len());
        for (index, m) in self.members.iter().enumerate() {
            if let Some(r) = &m.running {
                descriptors.push(
                    r.descriptor()
                        .map_err(|source| TestnetError::Relay { index, source })?,
                );
            }
        }
        descriptors.extend(external);
        let directory = signed_directory(
            descriptors,
            self.params,
            &self.authority,
            now_unix(),
            86_400,
        )?;
        std::fs::write(&self.directory_path, directory.to_bytes())?;
        self.published.set(directory.to_bytes());
        self.directory = directory;
        self.refresh_all().await
    }

    /// Starts relay `index` again with the same keys, data and port.
    pub async fn restart_relay(&mut self, index: usize) -> Result<(), TestnetError> {
        self.stop_relay(index).await?;
        self.start_relay(index).await
    }

    /// Every running relay's metrics with its role, for summaries.
    pub fn metrics(&self) -> Vec<(RelayRole, MetricsSnapshot)> {
        self.members
            .iter()
            .filter_map(|m| m.running.as_ref().map(|r| (m.role, r.metrics())))
            .collect()
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
    pub async fn shutdown(mut self) -> Result<(), TestnetError> {
        for i in 0..self.members.len() {
            self.stop_relay(i).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn testnet_starts_and_publishes_a_verified_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TestnetConfig::in_dir(tmp.path());
        cfg.mixes_per_layer = 1;
        let mut net = Testnet::start(cfg).await.unwrap();
        assert_eq!(net.relay_count(), 5);
        assert_eq!(net.mailbox_relays().len(), 2);
        let bytes = std::fs::read(net.directory_path()).unwrap();
        let dir = Directory::from_bytes(&bytes).unwrap();
        dir.verify(&[net.authority()], 1, now_unix()).unwrap();
        assert_eq!(dir.mixes_in_layer(2).count(), 1);
        let mix = net.mixes_in_layer(2)[0];
        let addr = net.relay(mix).unwrap().local_addr();
        net.restart_relay(mix).await.unwrap();
        assert_eq!(
            net.relay(mix).unwrap().local_addr(),
            addr,
            "same port after restart"
        );
        net.shutdown().await.unwrap();
    }
}
