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

fn keys_resend_secs() -> u64 {
    crate::key_recipients::DEFAULT_KEYS_RESEND_SECS
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
    /// Hex id of a second mailbox relay (optional). Our address then names both: senders
    /// store every message at both and the sidecar pulls from both, so losing one mailbox
    /// relay, or its disk, loses nothing. Peers must be given the new address.
    #[serde(default)]
    pub second_mailbox_relay: Option<String>,
    /// The homeserver's federation listener, e.g. `http://127.0.0.1:8008`.
    pub homeserver_url: String,
    /// Where the homeserver sends its outbound federation requests.
    pub listen: SocketAddr,
    /// Where an unmodified homeserver's `https_proxy` points: an HTTP CONNECT proxy that ends
    /// TLS with the sidecar's local CA (`data_dir/ca/ca.pem`). See `docs/synapse.md`.
    #[serde(default)]
    pub https_proxy_listen: Option<SocketAddr>,
    /// Reply SURBs per request/response call (default 8, at most 64): answers up to about
    /// this many KB come back on them, in one trip through the mixes. Larger answers come
    /// back as ordinary store-and-forward messages to our mailbox (slower: acked fragment by
    /// fragment at the responder's packet rate).
    #[serde(default)]
    pub reply_surbs: Option<usize>,
    /// Drain a mailbox backlog with bulk pulls back to back (default true). False keeps the
    /// link on its fixed pull cadence whatever is waiting, so a link observer never sees a
    /// backlog, at 32 items/s (docs/privacy.md, "Catch-up").
    #[serde(default)]
    pub catch_up: Option<bool>,
    /// Largest answer body in bytes this sidecar sends back or accepts (default 12 MiB, the
    /// most a bundle carries); a larger one is answered `413 M_TOO_LARGE`.
    #[serde(default)]
    pub max_reply_bytes: Option<usize>,
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
    /// Server name → Spore address text (`spore:…`): the servers this one contacts first.
    /// A server that contacts us first needs no entry: its address is learned from its
    /// authenticated bundles ([`crate::PeerBook`]).
    #[serde(default)]
    pub peers: HashMap<String, String>,
    #[serde(default)]
    pub rates: RatesSection,
    /// Our homeserver's key response travels to each peer until that peer's mailbox relay
    /// acknowledged one bundle that carried it, then again only when it changes or after this
    /// many seconds (default 86 400, a day): see `docs/synapse.md` "Packets per event".
    #[serde(default = "keys_resend_secs")]
    pub keys_resend_after_secs: u64,
    /// Attach the key response to every bundle, as sidecars did before (for comparison in
    /// benchmarks; costs a packet or more per small transaction).
    #[serde(default)]
    pub keys_in_every_bundle: bool,
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

    /// Our second mailbox relay, if one is configured.
    pub fn second_mailbox_relay(&self) -> Result<Option<RelayId>> {
        self.second_mailbox_relay
            .as_deref()
            .map(|s| hex32("second_mailbox_relay", s).map(RelayId))
            .transpose()
    }

    /// The Spore address peers list for us (what `spore-sidecar address` prints): both
    /// mailbox relays when a second is configured.
    pub fn address(&self) -> Result<SporeAddress> {
        Ok(SporeAddress {
            capability: None,
            mailbox_relays: std::iter::once(self.mailbox_relay()?)
                .chain(self.second_mailbox_relay()?)
                .collect(),
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
        if let Some(on) = self.catch_up {
            config.catch_up = on;
        }
        config.second_mailbox_relay = self.second_mailbox_relay()?;
        if let Some(n) = self.reply_surbs {
            config.reply_surbs = n;
        }
        if let Some(n) = self.max_reply_bytes {
            config.max_reply_bytes = n;
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

    /// The `[peers]` table alone as a resolver (the running sidecar resolves through its
    /// [`crate::PeerBook`], which adds the peers it learned).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config_with(dir: &Path, extra: &str) -> Result<SidecarConfig> {
        std::fs::write(dir.join("mailbox.key"), hex::encode([7u8; 32])).unwrap();
        let text = format!(
            "server_name = \"a.example\"\ndata_dir = \"data\"\nmailbox_key_file = \"mailbox.key\"\n\
             mailbox_relay = \"{}\"\n{extra}homeserver_url = \"http://127.0.0.1:8008\"\n\
             listen = \"127.0.0.1:0\"\n[directory]\npath = \"directory.bin\"\n",
            hex::encode([1u8; 32])
        );
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, text).unwrap();
        SidecarConfig::load(&path)
    }

    #[test]
    fn a_second_mailbox_relay_is_named_in_the_address_after_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let one = config_with(dir.path(), "").unwrap();
        assert_eq!(one.address().unwrap().mailbox_relays, [RelayId([1; 32])]);
        let second = format!("second_mailbox_relay = \"{}\"\n", hex::encode([2u8; 32]));
        let two = config_with(dir.path(), &second).unwrap();
        assert_eq!(
            two.address().unwrap().mailbox_relays,
            [RelayId([1; 32]), RelayId([2; 32])]
        );
        assert_eq!(two.second_mailbox_relay().unwrap(), Some(RelayId([2; 32])));
        let bad = config_with(dir.path(), "second_mailbox_relay = \"beef\"\n").unwrap();
        assert!(bad.address().is_err(), "a malformed relay id is an error");
    }
}
