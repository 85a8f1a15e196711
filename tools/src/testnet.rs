//! A whole Spore network on loopback: a directory authority and relays in one process, over
//! real TCP and Noise links, with real sled stores in a data folder.
//!
//! Used by `spore demo`, `spore testnet up` and the whole-network tests. The topology is
//! Loopix's: `edge` relays that are both entry and mailbox relays (where homeservers connect),
//! and `layers` mix layers of `width` mixes each.
//!
//! Relays start first on `127.0.0.1:0`; their signed descriptors (with the ports they got) are
//! then signed into one directory by a fresh authority key, published to every relay in memory
//! and written to `<dir>/directory.bin` for clients and other processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use spore_protocol::RelayId;
use spore_protocol::directory::{Directory, NetworkParams};
use spore_relay::{
    DirectorySource, MemoryDirectory, Relay, RelayConfig, RelayKeys, RolesConfig, RunningRelay,
};

use crate::authority;

/// Shape and parameters of a local network.
#[derive(Debug, Clone)]
pub struct TestnetConfig {
    /// Folder for relay data, keys and the directory file.
    pub dir: PathBuf,
    /// Entry + mailbox relays.
    pub edge: usize,
    /// Mix layers (Spore routes use exactly 3).
    pub layers: u8,
    /// Mixes per layer.
    pub width: usize,
    /// Published in the directory; clients take their rates from here.
    pub params: NetworkParams,
    /// Sphinx worker threads per relay (the machine's cores are shared by all relays).
    pub workers: usize,
}

impl TestnetConfig {
    /// The demo's default: 2 edge relays, 3 layers of 2 mixes.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            edge: 2,
            layers: 3,
            width: 2,
            params: NetworkParams::default(),
            workers: 1,
        }
    }
}

/// What a relay in the testnet is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Edge,
    Mix { layer: u8 },
}

struct Member {
    role: Role,
    config: RelayConfig,
    keys: RelayKeys,
    running: Option<RunningRelay>,
}

/// A running local network. Relays are shut down by [`Testnet::shutdown`] (or dropped with the
/// runtime).
pub struct Testnet {
    members: Vec<Member>,
    authority: SigningKey,
    published: MemoryDirectory,
    directory: Directory,
    directory_path: PathBuf,
    params: NetworkParams,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Testnet {
    /// Starts every relay, signs and publishes the directory, and waits until each relay has
    /// installed it.
    pub async fn start(cfg: TestnetConfig) -> Result<Self> {
        if cfg.layers as usize != spore_protocol::params::MIX_LAYERS {
            bail!(
                "Spore routes use exactly {} mix layers",
                spore_protocol::params::MIX_LAYERS
            );
        }
        if cfg.edge == 0 || cfg.width == 0 {
            bail!("a network needs at least one edge relay and one mix per layer");
        }
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("cannot create {}", cfg.dir.display()))?;
        let authority = SigningKey::from_bytes(&rand::random());
        let auth_hex = hex::encode(authority.verifying_key().to_bytes());
        let published = MemoryDirectory::new();
        let mut roles = vec![Role::Edge; cfg.edge];
        for layer in 1..=cfg.layers {
            roles.extend(std::iter::repeat_n(Role::Mix { layer }, cfg.width));
        }
        let mut members = Vec::with_capacity(roles.len());
        for (i, role) in roles.into_iter().enumerate() {
            let name = match role {
                Role::Edge => format!("edge-{i}"),
                Role::Mix { layer } => format!("mix-{layer}-{i}"),
            };
            let rdir = cfg.dir.join(name);
            let mut config = RelayConfig::for_test(&rdir);
            config.directory.authorities = vec![auth_hex.clone()];
            config.directory.threshold = 1;
            config.directory.refresh_secs = 1;
            config.mix.workers = cfg.workers;
            config.mix.epoch_length_secs = cfg.params.epoch_length_secs;
            config.mix.max_delay_ms = cfg.params.max_delay_ms;
            (config.roles, config.layer) = match role {
                Role::Edge => (
                    RolesConfig {
                        entry: true,
                        mix: false,
                        mailbox: true,
                    },
                    0,
                ),
                Role::Mix { layer } => (
                    RolesConfig {
                        entry: false,
                        mix: true,
                        mailbox: false,
                    },
                    layer,
                ),
            };
            let keys = RelayKeys::load_or_generate(&config.key_file)?;
            let running = Relay::start(
                config.clone(),
                keys.clone(),
                DirectorySource::Memory(published.clone()),
            )
            .await
            .with_context(|| format!("relay {i} did not start"))?;
            // Keep the port across restarts so the directory stays true.
            config.listen = running.local_addr();
            members.push(Member {
                role,
                config,
                keys,
                running: Some(running),
            });
        }
        let descriptors = members
            .iter()
            .filter_map(|m| m.running.as_ref())
            .map(|r| r.descriptor().map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?;
        let directory = authority::build(descriptors, cfg.params, &authority, now_unix(), 86_400)?;
        let directory_path = cfg.dir.join("directory.bin");
        authority::write(&directory, &directory_path)?;
        published.set(directory.to_bytes());
        let net = Self {
            members,
            authority,
            published,
            directory,
            directory_path,
            params: cfg.params,
        };
        net.refresh_all().await?;
        Ok(net)
    }

    async fn refresh_all(&self) -> Result<()> {
        for m in &self.members {
            if let Some(r) = &m.running {
                r.refresh_directory().await?;
            }
        }
        Ok(())
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn directory_path(&self) -> &Path {
        &self.directory_path
    }

    /// The authority key relays and clients must trust.
    pub fn authority_public(&self) -> [u8; 32] {
        self.authority.verifying_key().to_bytes()
    }

    pub fn params(&self) -> NetworkParams {
        self.params
    }

    /// Relays where homeservers connect and keep their mailboxes.
    pub fn edge_relays(&self) -> Vec<RelayId> {
        self.members
            .iter()
            .filter(|m| m.role == Role::Edge)
            .map(|m| m.keys.relay_id())
            .collect()
    }

    pub fn relay_count(&self) -> usize {
        self.members.len()
    }

    pub fn role(&self, i: usize) -> Option<Role> {
        self.members.get(i).map(|m| m.role)
    }

    pub fn relay(&self, i: usize) -> Option<&RunningRelay> {
        self.members.get(i).and_then(|m| m.running.as_ref())
    }

    /// Every relay's id, in index order (stopped relays included).
    pub fn relay_ids(&self) -> Vec<RelayId> {
        self.members.iter().map(|m| m.keys.relay_id()).collect()
    }

    pub fn index_of(&self, id: &RelayId) -> Option<usize> {
        self.members.iter().position(|m| m.keys.relay_id() == *id)
    }

    /// The relay's listening address; pinned, so it holds across restarts.
    pub fn relay_address(&self, i: usize) -> Option<std::net::SocketAddr> {
        self.members.get(i).map(|m| m.config.listen)
    }

    /// Indices of the mixes in `layer`.
    pub fn mixes_in_layer(&self, layer: u8) -> Vec<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Mix { layer })
            .map(|(i, _)| i)
            .collect()
    }

    /// Graceful stop; the relay's data stays on disk.
    pub async fn stop_relay(&mut self, i: usize) -> Result<()> {
        let m = self.members.get_mut(i).context("no such relay")?;
        if let Some(r) = m.running.take() {
            r.shutdown().await?;
        }
        Ok(())
    }

    /// Starts a stopped relay again on the same port, keys and data.
    pub async fn start_relay(&mut self, i: usize) -> Result<()> {
        let m = self.members.get_mut(i).context("no such relay")?;
        if m.running.is_some() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..50 {
            match Relay::start(
                m.config.clone(),
                m.keys.clone(),
                DirectorySource::Memory(self.published.clone()),
            )
            .await
            {
                Ok(r) => {
                    r.refresh_directory().await?;
                    m.running = Some(r);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(anyhow::anyhow!("relay {i} did not restart: {last:?}"))
    }

    pub async fn restart_relay(&mut self, i: usize) -> Result<()> {
        self.stop_relay(i).await?;
        self.start_relay(i).await
    }

    /// Sum of every running relay's metrics, for summaries.
    pub fn metrics(&self) -> Vec<(Role, spore_relay::MetricsSnapshot)> {
        self.members
            .iter()
            .filter_map(|m| m.running.as_ref().map(|r| (m.role, r.metrics())))
            .collect()
    }

    pub async fn shutdown(mut self) -> Result<()> {
        for i in 0..self.members.len() {
            self.stop_relay(i).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn testnet_starts_and_publishes_a_verified_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TestnetConfig::new(tmp.path());
        cfg.width = 1;
        let mut net = Testnet::start(cfg).await.unwrap();
        assert_eq!(net.relay_count(), 5);
        assert_eq!(net.edge_relays().len(), 2);
        let bytes = std::fs::read(net.directory_path()).unwrap();
        let dir = Directory::from_bytes(&bytes).unwrap();
        dir.verify(&[net.authority_public()], 1, now_unix())
            .unwrap();
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
