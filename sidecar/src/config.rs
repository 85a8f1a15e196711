//! The sidecar's TOML config, and the transport config, resolver and address it implies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spore_client::{
    DirectoryConfig, DirectorySource, RateOverrides, StaticResolver, TransportConfig,
};
use spore_protocol::{MailboxKey, RelayId, SporeAddress};

use crate::deadline::RequestTimeouts;
use crate::error::{Result, SidecarError};

/// `[directory]` in the sidecar config: the relay's section, with the same keys (`path` or
/// `url`, `authorities`, `threshold`, `refresh_secs`).
pub type DirectorySection = DirectoryConfig;

fn sixty() -> u64 {
    60
}

fn eight() -> u32 {
    8
}

fn ten_thousand() -> u64 {
    10_000
}

/// `[rates]`: overrides of the directory's rates (tests and benchmarks only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesSection {
    pub lambda_p: Option<f64>,
    pub lambda_l: Option<f64>,
    pub lambda_d: Option<f64>,
    pub mu: Option<f64>,
    pub pull_interval_ms: Option<u64>,
}

/// The sidecar's TOML config. Relative paths are relative to the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// Our Matrix server name.
    pub server_name: String,
    /// Outbox, inbox, dedup tables.
    pub data_dir: PathBuf,
    /// File holding the mailbox secret key as 64 hex characters (mode 0600).
    pub mailbox_key_file: PathBuf,
    /// Hex id of our mailbox relay (also our entry relay).
    pub mailbox_relay: String,
    /// The homeserver's federation listener, e.g. `http://127.0.0.1:8008`.
    pub homeserver_url: String,
    /// Where the homeserver sends its outbound federation requests.
    pub listen: SocketAddr,
    /// Where an unmodified homeserver's `https_proxy` points: an HTTP CONNECT proxy that ends
    /// TLS with the sidecar's local CA (`data_dir/ca/ca.pem`). See `docs/synapse.md`.
    #[serde(default)]
    pub https_proxy_listen: Option<SocketAddr>,
    /// Reply SURBs per request/response call (default 8, at most 64): the largest answer is
    /// about this many KB. A Synapse `send_join` for a room with more than a few dozen state
    /// events needs more than the default.
    #[serde(default)]
    pub reply_surbs: Option<usize>,
    /// How long a request/response call waits for an endpoint that `request_timeouts` does
    /// not name (default 60 s, Synapse's federation client default). The request carries this
    /// deadline; the receiving sidecar drops it once passed, and the caller gets a 502.
    #[serde(default = "sixty")]
    pub request_timeout_secs: u64,
    /// Seconds per endpoint (the path segment after the version: `query`, `make_join`,
    /// `send_join`, `invite`, `state`…), over the built-in defaults that match Synapse's own
    /// timeouts: `query` 10, `make_join`/`make_leave`/`make_knock` 20, `state` 600.
    #[serde(default)]
    pub request_timeouts: HashMap<String, u64>,
    /// How long inbound delivery holds an origin's transaction that arrived ahead of a
    /// missing one (the mixnet reorders them) before going on without it, in ms (default
    /// 10 000: above a fragment's retransmission after a lost packet, about 7 s, and far
    /// above the mix delays, under 1 s at the default mu = 20/s).
    #[serde(default = "ten_thousand")]
    pub order_gap_wait_ms: u64,
    /// A transaction the homeserver refuses with a permanent 4xx (not 408/429) this many
    /// times, with doubling pauses from 100 ms (8: about 25 s), goes to the dead-letter store
    /// (`data_dir/dead-letters`, see `spore-sidecar dead-letters`) instead of holding up its
    /// origin's queue.
    #[serde(default = "eight")]
    pub dead_letter_after: u32,
    pub directory: DirectorySection,
    /// Server name → Spore address text (`spore:…`).
    #[serde(default)]
    pub peers: HashMap<String, String>,
    #[serde(default)]
    pub rates: RatesSection,
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32]> {
    hex::decode(s.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| SidecarError::Config(format!("{what} is not 32 hex bytes")))
}

impl SidecarConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| SidecarError::File {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self =
            toml::from_str(&text).map_err(|e| SidecarError::Config(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.data_dir, &mut config.mailbox_key_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.directory.resolve_path(base);
        Ok(config)
    }

    pub fn mailbox_key(&self) -> Result<MailboxKey> {
        let text = std::fs::read_to_string(&self.mailbox_key_file).map_err(|source| {
            SidecarError::File {
                path: self.mailbox_key_file.clone(),
                source,
            }
        })?;
        Ok(MailboxKey::from_secret_bytes(hex32("mailbox key", &text)?))
    }

    /// Our mailbox relay.
    pub fn mailbox_relay(&self) -> Result<RelayId> {
        Ok(RelayId(hex32("mailbox_relay", &self.mailbox_relay)?))
    }

    /// The Spore address peers list for us (what `spore-sidecar address` prints).
    pub fn address(&self) -> Result<SporeAddress> {
        Ok(SporeAddress {
            capability: None,
            mailbox_relays: vec![self.mailbox_relay()?],
            mailbox_key: self.mailbox_key()?.public().to_bytes(),
        })
    }

    /// The transport config this sidecar runs with.
    pub fn transport_config(&self) -> Result<TransportConfig> {
        let trust = self
            .directory
            .trust()
            .map_err(|e| SidecarError::Config(e.to_string()))?;
        let source = DirectorySource::from_config(&self.directory).ok_or_else(|| {
            SidecarError::Config("directory.path or directory.url is required".into())
        })?;
        let mut config = TransportConfig::new(
            &self.data_dir,
            self.mailbox_key()?,
            &self.server_name,
            self.mailbox_relay()?,
            source,
            trust,
        );
        if let Some(n) = self.reply_surbs {
            config.reply_surbs = n;
        }
        config.rates = RateOverrides {
            lambda_p: self.rates.lambda_p,
            lambda_l: self.rates.lambda_l,
            lambda_d: self.rates.lambda_d,
            mu: self.rates.mu,
            pull_interval: self.rates.pull_interval_ms.map(Duration::from_millis),
        };
        Ok(config)
    }

    /// Per-endpoint caller timeouts: Synapse's, `request_timeout_secs` for the rest, and
    /// `request_timeouts` over both.
    pub fn request_timeouts(&self) -> RequestTimeouts {
        self.request_timeouts.iter().fold(
            RequestTimeouts::synapse(Duration::from_secs(self.request_timeout_secs)),
            |t, (endpoint, secs)| t.with_endpoint(endpoint, Duration::from_secs(*secs)),
        )
    }

    pub fn resolver(&self) -> Result<StaticResolver> {
        let mut r = StaticResolver::default();
        for (name, address) in self.peers()? {
            r.insert(name, address);
        }
        Ok(r)
    }

    /// The `[peers]` table parsed: server name -> Spore address. Also what binds those names
    /// to their senders' keys (a request in a listed name from any other key is refused).
    pub fn peers(&self) -> Result<Vec<(String, SporeAddress)>> {
        self.peers
            .iter()
            .map(|(name, text)| {
                SporeAddress::from_text(text)
                    .map(|address| (name.clone(), address))
                    .map_err(|e| SidecarError::Config(format!("peer {name}: {e}")))
            })
            .collect()
    }
}
