//! `relay.toml`: what an operator configures. Every field has a default, so a config file only
//! needs the lines that differ; [`RelayConfig::commented_template`] is what `spore-relay init`
//! writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{RelayError, Result};

/// What this relay does in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    /// First hop: accepts packets from clients.
    pub entry: bool,
    /// Mix node in layer `layer`.
    pub mix: bool,
    /// Stores final-hop packets for offline recipients.
    pub mailbox: bool,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            entry: false,
            mix: true,
            mailbox: false,
        }
    }
}

/// Bounds on what a peer can make the relay hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open links at once (inbound); further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Open links at once from one IP address; further ones are closed at once.
    pub max_connections_per_ip: usize,
    /// A Noise handshake must finish within this many milliseconds.
    pub handshake_timeout_ms: u64,
    /// A link that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Per-link packet rate (token bucket refill per second); excess packets are dropped.
    pub packets_per_sec: u32,
    /// Per-link burst (token bucket size).
    pub packet_burst: u32,
    /// Packets waiting for a Sphinx worker.
    pub unwrap_queue: usize,
    /// Packets held for their delay. Each costs about 1.4 kB.
    pub delay_queue: usize,
    /// Packets waiting to be written to one next hop.
    pub link_queue: usize,
    /// Frames waiting to be written to one inbound link (pull responses).
    pub reply_queue: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_ip: 64,
            handshake_timeout_ms: 10_000,
            idle_timeout_secs: 300,
            packets_per_sec: 20_000,
            packet_burst: 4_000,
            unwrap_queue: 16_384,
            delay_queue: 200_000,
            link_queue: 8_192,
            reply_queue: 64,
        }
    }
}

/// Sphinx processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixConfig {
    /// Sphinx worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest per-hop delay a header may ask for.
    pub max_delay_ms: u64,
    /// Sphinx key epoch length; must match the network's directory parameters.
    pub epoch_length_secs: u64,
    /// After an epoch ends, packets for its key are still accepted this long.
    pub grace_secs: u64,
    /// Loop cover packets per second sent by the relay itself (Loopix lambda_M), at least: the
    /// directory's `lambda_m` is used where it is higher, so 0 means the directory's rate.
    pub loop_rate: f64,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            max_delay_ms: spore_protocol::params::DEFAULT_MAX_DELAY.as_millis() as u64,
            epoch_length_secs: 3600,
            grace_secs: 600,
            loop_rate: 0.0,
        }
    }
}

/// Mailbox role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxConfig {
    /// Items per mailbox.
    pub quota_items: u64,
    /// Payload bytes per mailbox.
    pub quota_bytes: u64,
    /// Payload bytes over all mailboxes.
    pub disk_budget_bytes: u64,
    /// Items older than this are deleted unread.
    pub retention_secs: u64,
    /// How often the retention sweeper runs.
    pub sweep_interval_secs: u64,
    /// Items a mailbox accepts through its raw id ("first contact": senders without a
    /// capability, and unknown capabilities), within `quota_items`. Peers the owner gave a
    /// capability each have their own quota, which the owner chooses.
    pub first_contact_quota_items: u64,
    /// Payload bytes through the raw id, within `quota_bytes`.
    pub first_contact_quota_bytes: u64,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            quota_items: 20_000,
            quota_bytes: 32 << 20,
            disk_budget_bytes: 8 << 30,
            retention_secs: 7 * 24 * 3600,
            sweep_interval_secs: 600,
            first_contact_quota_items: 2_000,
            first_contact_quota_bytes: 4 << 20,
        }
    }
}

/// `[directory]`: the same section, with the same keys, as the sidecar's config.
pub use spore_directory_fetch::DirectoryConfig;

/// The descriptor's address rule (`spore_protocol::directory`): `host:port`, port 1..=65535,
/// no whitespace or control characters, at most `MAX_ADDRESS_LEN` bytes.
fn is_host_port(address: &str) -> bool {
    if address.len() > spore_protocol::directory::MAX_ADDRESS_LEN
        || address.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return false;
    }
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

/// What `spore-relay init` (and the Debian package's `/etc/spore/relay.toml`) fill in.
#[derive(Debug, Clone, Copy)]
pub struct Template<'a> {
    pub listen: SocketAddr,
    pub roles: RolesConfig,
    pub layer: u8,
    /// As written into the file: relative paths are relative to the config file.
    pub key_file: &'a str,
    pub data_dir: &'a str,
    /// `None` writes the line commented out (no endpoint).
    pub metrics_listen: Option<SocketAddr>,
}

/// The whole `relay.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Address the link listener binds.
    pub listen: SocketAddr,
    /// Address published in the descriptor (what other relays and clients dial).
    #[serde(default)]
    pub public_address: Option<String>,
    /// Mix layer (1..=MIX_LAYERS) when `roles.mix` is set.
    #[serde(default)]
    pub layer: u8,
    #[serde(default)]
    pub roles: RolesConfig,
    /// Directory for the databases. Relative paths are relative to the config file.
    pub data_dir: PathBuf,
    /// The relay's secret keys (identity and link; the per-epoch Sphinx keys are in `<key_file>.epochs/`). Mode 0600.
    pub key_file: PathBuf,
    /// Loopback address for the Prometheus endpoint; absent = no endpoint.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Lifetime of the descriptor `spore-relay descriptor` prints.
    #[serde(default = "default_descriptor_lifetime")]
    pub descriptor_lifetime_secs: u64,
    /// If set, the running relay keeps a fresh signed descriptor (binary) in this file,
    /// rewritten at start and every half epoch, for the operator to submit to the authorities.
    #[serde(default)]
    pub descriptor_file: Option<PathBuf>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub mix: MixConfig,
    #[serde(default)]
    pub mailbox: MailboxConfig,
    #[serde(default)]
    pub directory: DirectoryConfig,
}

fn default_descriptor_lifetime() -> u64 {
    7 * 24 * 3600
}

impl RelayConfig {
    /// Reads and validates a config file; relative paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| RelayError::File {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            RelayError::Config(m) => RelayError::Config(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)
            .map_err(|e| RelayError::Config(e.to_string().trim_end().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        self.data_dir = abs(&self.data_dir);
        self.key_file = abs(&self.key_file);
        if let Some(p) = &self.descriptor_file {
            self.descriptor_file = Some(abs(p));
        }
        if let Some(p) = &self.directory.path {
            self.directory.path = Some(abs(p));
        }
        if let Some(p) = &self.directory.cache_path {
            self.directory.cache_path = Some(abs(p));
        }
    }

    /// Rejects settings that cannot work, with a message naming the field, what it holds and
    /// the form it needs. Everything `spore-relay descriptor` would refuse is refused here too,
    /// so `run` fails at start, not hours later when the descriptor is built.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RelayError::Config(m));
        let layers = spore_protocol::params::MIX_LAYERS as u8;
        if self.roles.mix && !(1..=layers).contains(&self.layer) {
            return bad(format!(
                "layer = {}: a mix (roles.mix = true) needs a layer from 1 to {layers}",
                self.layer
            ));
        }
        if !(self.roles.mix || self.roles.entry || self.roles.mailbox) {
            return bad(
                "[roles]: entry, mix and mailbox are all false; set at least one to true".into(),
            );
        }
        if let Some(a) = &self.public_address
            && !is_host_port(a)
        {
            return bad(format!(
                "public_address = {a:?}: expected host:port that other relays can dial, \
                 e.g. \"relay.example.org:7400\" or \"203.0.113.7:7400\" (port 1-65535, \
                 no spaces, at most {} bytes)",
                spore_protocol::directory::MAX_ADDRESS_LEN
            ));
        }
        if self.mix.epoch_length_secs == 0 {
            return bad("mix.epoch_length_secs = 0: expected a positive number of seconds (the network's epoch length, 3600 by default)".into());
        }
        if self.mix.grace_secs > self.mix.epoch_length_secs {
            return bad(format!(
                "mix.grace_secs = {}: must not exceed mix.epoch_length_secs ({})",
                self.mix.grace_secs, self.mix.epoch_length_secs
            ));
        }
        if !(self.mix.loop_rate.is_finite() && self.mix.loop_rate >= 0.0) {
            return bad(format!(
                "mix.loop_rate = {}: expected a non-negative number of loops per second (0 = off)",
                self.mix.loop_rate
            ));
        }
        let l = &self.limits;
        for (name, value) in [
            ("max_connections", l.max_connections),
            ("max_connections_per_ip", l.max_connections_per_ip),
            ("unwrap_queue", l.unwrap_queue),
            ("delay_queue", l.delay_queue),
            ("link_queue", l.link_queue),
            ("reply_queue", l.reply_queue),
        ] {
            if value == 0 {
                return bad(format!("limits.{name} = 0: expected a positive number"));
            }
        }
        for (i, key) in self.directory.authorities.iter().enumerate() {
            let ok = hex::decode(key.trim()).is_ok_and(|b| b.len() == 32);
            if !ok {
                return bad(format!(
                    "directory.authorities[{i}] = {key:?}: expected an authority's ed25519 public \
                     key as 64 hex characters (`spore directory show` prints them in full)"
                ));
            }
        }
        if self.directory.has_source()
            && self.directory.authorities.len() < self.directory.threshold
        {
            return bad(format!(
                "directory.threshold = {}: more than the {} key(s) in directory.authorities; \
                 list the authorities' keys or lower the threshold",
                self.directory.threshold,
                self.directory.authorities.len()
            ));
        }
        if let Some(u) = &self.directory.url
            && self.directory.path.is_none()
            && !u.starts_with("http://")
        {
            return bad(format!(
                "directory.url = {u:?}: expected http://host:port/path (the document is signed, \
                 so plain HTTP is enough)"
            ));
        }
        if let Some(m) = self.metrics_listen
            && !m.ip().is_loopback()
        {
            return bad(format!(
                "metrics_listen = \"{m}\": must be a loopback address such as \
                 \"127.0.0.1:9464\" (the endpoint has no authentication)"
            ));
        }
        Ok(())
    }

    /// The address the descriptor will publish, or why there is none: `listen` on every
    /// interface (0.0.0.0) is not an address anyone can dial.
    pub fn publishable_address(&self, bound: SocketAddr) -> Result<String> {
        if self.public_address.is_none() && bound.ip().is_unspecified() {
            return Err(RelayError::Config(format!(
                "listen = \"{}\" and public_address is not set: set public_address to the \
                 host:port other relays and clients should dial, e.g. \"relay.example.org:{}\"",
                self.listen,
                bound.port()
            )));
        }
        Ok(self.advertised_address(bound))
    }

    /// Worker threads to start: `mix.workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        if self.mix.workers > 0 {
            self.mix.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// The directory source this config names: `path`, else `url`, else none.
    pub fn directory_source(&self) -> crate::directory::DirectorySource {
        self.directory.source()
    }

    /// The address to publish: `public_address`, or the listen address.
    pub fn advertised_address(&self, bound: SocketAddr) -> String {
        self.public_address
            .clone()
            .unwrap_or_else(|| bound.to_string())
    }

    pub fn epoch_length(&self) -> Duration {
        Duration::from_secs(self.mix.epoch_length_secs)
    }

    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.mix.max_delay_ms)
    }

    /// A config for in-process tests: listens on 127.0.0.1:0, keeps its data under `dir`, small
    /// queues and short timeouts, all roles set, no metrics endpoint, unverified directory.
    pub fn for_test(dir: &Path) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_address: None,
            layer: 1,
            roles: RolesConfig {
                entry: true,
                mix: true,
                mailbox: true,
            },
            data_dir: dir.join("data"),
            key_file: dir.join("relay.key"),
            metrics_listen: None,
            descriptor_lifetime_secs: 3600,
            descriptor_file: None,
            limits: LimitsConfig {
                handshake_timeout_ms: 2_000,
                // Everything in a test comes from 127.0.0.1.
                max_connections_per_ip: 1024,
                delay_queue: 10_000,
                unwrap_queue: 4_096,
                ..LimitsConfig::default()
            },
            mix: MixConfig {
                workers: 2,
                ..MixConfig::default()
            },
            mailbox: MailboxConfig::default(),
            directory: DirectoryConfig {
                threshold: 0,
                refresh_secs: 1,
                ..DirectoryConfig::default()
            },
        }
    }

    /// The commented `relay.toml` that `spore-relay init` writes.
    pub fn commented_template(t: &Template<'_>) -> String {
        let Template {
            listen,
            roles,
            layer,
            key_file,
            data_dir,
            metrics_listen,
        } = *t;
        let metrics_line = match metrics_listen {
            Some(m) => format!("metrics_listen = \"{m}\""),
            None => "# metrics_listen = \"127.0.0.1:9464\"".to_owned(),
        };
        let l = LimitsConfig::default();
        let m = MixConfig::default();
        let b = MailboxConfig::default();
        format!(
            r#"# Spore relay configuration. Every setting except listen, data_dir and key_file has a
# default; delete a line to use it. Relative paths are relative to this file.

# Address the link listener binds.
listen = "{listen}"
# Address other relays and clients dial (published in the descriptor). Defaults to `listen`.
# public_address = "relay.example.org:{port}"
# Mix layer (1..=3); only used when roles.mix is set.
layer = {layer}
# Databases (replay tags, mailboxes).
data_dir = "{data_dir}"
# Secret keys: identity (ed25519) and link (Noise X25519), 0600; the per-epoch Sphinx keys
# live in the folder beside it named like it plus ".epochs" and are erased after each epoch.
key_file = "{key_file}"
# Prometheus endpoint (/metrics) and health check (/health, read by `spore-relay status`),
# loopback only; each relay on a host needs its own port. Comment out to disable.
{metrics_line}
# How long a descriptor printed by `spore-relay descriptor` stays valid.
descriptor_lifetime_secs = {lifetime}
# Keep a fresh signed descriptor in this file while running (rewritten every half epoch).
# descriptor_file = "relay.desc"

[roles]
entry = {entry}
mix = {mix}
mailbox = {mailbox}

[limits]
max_connections = {max_connections}
max_connections_per_ip = {max_per_ip}
handshake_timeout_ms = {handshake_timeout_ms}
idle_timeout_secs = {idle_timeout_secs}
# Per-link token bucket; packets above it are dropped and counted.
packets_per_sec = {pps}
packet_burst = {burst}
# Bounded queues: when one is full the relay drops (and counts) instead of growing.
unwrap_queue = {unwrap_queue}
delay_queue = {delay_queue}
link_queue = {link_queue}
reply_queue = {reply_queue}

[mix]
# Sphinx worker threads; 0 = one per core.
workers = {workers}
max_delay_ms = {max_delay_ms}
# Must match the directory's epoch length.
epoch_length_secs = {epoch}
# Packets for the previous epoch's key are accepted this long after it ends.
grace_secs = {grace}
# Loop cover packets per second from the relay itself (Loopix lambda_M), at least: the
# directory's lambda_m is used where higher (0 = the directory's rate).
loop_rate = 0.0

[mailbox]
quota_items = {quota_items}
quota_bytes = {quota_bytes}
disk_budget_bytes = {disk_budget}
retention_secs = {retention}
sweep_interval_secs = {sweep}
# Of quota_items/quota_bytes, what senders without a capability (first contact) may fill.
first_contact_quota_items = {first_contact_items}
first_contact_quota_bytes = {first_contact_bytes}

[directory]
# The signed directory, as published by the authorities: a file, or an authority's URL.
# path = "directory.bin"
# url = "http://authority.example:8080/directory"
# Or several authorities or mirrors, tried in turn; the last verified document is kept in
# cache_path (default: directory.bin in data_dir) and used across restarts.
# urls = ["http://authority1.example:8080/directory", "http://authority2.example:8080/directory"]
# The authorities' upload endpoints (`spore authority run`): the relay publishes its signed
# descriptor to each of them every epoch.
# upload_urls = ["http://authority1.example:8080/descriptor"]
# Hex ed25519 keys of the directory authorities, and how many must have signed.
# (threshold = 0 accepts unsigned directories: for private test networks only.)
authorities = []
threshold = 1
refresh_secs = 60

"#,
            port = listen.port(),
            lifetime = default_descriptor_lifetime(),
            entry = roles.entry,
            mix = roles.mix,
            mailbox = roles.mailbox,
            max_connections = l.max_connections,
            max_per_ip = l.max_connections_per_ip,
            handshake_timeout_ms = l.handshake_timeout_ms,
            idle_timeout_secs = l.idle_timeout_secs,
            pps = l.packets_per_sec,
            burst = l.packet_burst,
            unwrap_queue = l.unwrap_queue,
            delay_queue = l.delay_queue,
            link_queue = l.link_queue,
            reply_queue = l.reply_queue,
            workers = m.workers,
            max_delay_ms = m.max_delay_ms,
            epoch = m.epoch_length_secs,
            grace = m.grace_secs,
            quota_items = b.quota_items,
            quota_bytes = b.quota_bytes,
            disk_budget = b.disk_budget_bytes,
            retention = b.retention_secs,
            sweep = b.sweep_interval_secs,
            first_contact_items = b.first_contact_quota_items,
            first_contact_bytes = b.first_contact_quota_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_validates() {
        let text = RelayConfig::commented_template(&Template {
            listen: "127.0.0.1:7400".parse().expect("addr"),
            roles: RolesConfig {
                entry: false,
                mix: true,
                mailbox: true,
            },
            layer: 2,
            key_file: "relay.key",
            data_dir: "data",
            metrics_listen: Some("127.0.0.1:9464".parse().expect("addr")),
        });
        let c = RelayConfig::from_toml(&text).expect("template parses");
        assert_eq!(c.layer, 2);
        assert!(c.roles.mailbox);
        assert_eq!(c.mailbox.retention_secs, 7 * 24 * 3600);
    }

    /// `relay/deploy/relay.toml` (the Debian package's `/etc/spore/relay.toml`) is the `init`
    /// template with the package's paths. `SPORE_BLESS=1` rewrites it after a template change.
    #[test]
    fn packaged_config_is_the_template() {
        let text = RelayConfig::commented_template(&Template {
            listen: "0.0.0.0:7400".parse().expect("addr"),
            roles: RolesConfig::default(),
            layer: 1,
            key_file: "/var/lib/spore/relay.key",
            data_dir: "/var/lib/spore/data",
            metrics_listen: Some("127.0.0.1:9464".parse().expect("addr")),
        });
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/relay.toml");
        if std::env::var_os("SPORE_BLESS").is_some() {
            std::fs::write(&path, &text).expect("write deploy/relay.toml");
        }
        let packaged = std::fs::read_to_string(&path).expect("read deploy/relay.toml");
        assert_eq!(
            packaged, text,
            "deploy/relay.toml differs from the template: run with SPORE_BLESS=1"
        );
        RelayConfig::from_toml(&packaged).expect("packaged config validates");
    }

    /// Each bad config and the message an operator gets: the field, what it holds, the form
    /// expected, said once.
    #[test]
    fn bad_configs_name_the_field_and_the_expected_form() {
        let base = "listen = \"127.0.0.1:7400\"\ndata_dir = \"data\"\nkey_file = \"relay.key\"\n";
        let key = "ab".repeat(32);
        let table: &[(&str, &str)] = &[
            (
                "public_address = \"relay.example.org\"",
                "public_address = \"relay.example.org\": expected host:port",
            ),
            (
                "public_address = \"relay example:7400\"",
                "public_address = \"relay example:7400\": expected host:port",
            ),
            ("public_address = \"host:0\"", "(port 1-65535"),
            (
                "layer = 4",
                "layer = 4: a mix (roles.mix = true) needs a layer from 1 to 3",
            ),
            (
                "metrics_listen = \"0.0.0.0:9464\"",
                "metrics_listen = \"0.0.0.0:9464\": must be a loopback address",
            ),
            (
                "[roles]\nentry = false\nmix = false\nmailbox = false",
                "[roles]: entry, mix and mailbox are all false",
            ),
            (
                "[limits]\nlink_queue = 0",
                "limits.link_queue = 0: expected a positive number",
            ),
            (
                "[mix]\ngrace_secs = 7200",
                "mix.grace_secs = 7200: must not exceed mix.epoch_length_secs (3600)",
            ),
            (
                "[directory]\npath = \"d.bin\"\nauthorities = [\"abcd\"]",
                "directory.authorities[0] = \"abcd\": expected an authority's ed25519 public key as 64 hex characters",
            ),
            (
                "[directory]\npath = \"d.bin\"\nthreshold = 2\nauthorities = [\"KEY\"]",
                "directory.threshold = 2: more than the 1 key(s) in directory.authorities",
            ),
            (
                "[directory]\nurl = \"https://authority.example/directory\"\nthreshold = 0",
                "directory.url = \"https://authority.example/directory\": expected http://host:port/path",
            ),
            ("lissten = \"x\"", "unknown field `lissten`"),
            ("[limits]\nmax_connections = -1", "max_connections"),
        ];
        for (extra, expected) in table {
            let layer = if extra.starts_with("layer") {
                ""
            } else {
                "layer = 1\n"
            };
            let text = format!("{base}{layer}{}\n", extra.replace("KEY", &key));
            let err = RelayConfig::from_toml(&text).expect_err(extra).to_string();
            assert!(
                err.contains(expected),
                "{extra:?}: got {err:?}, expected {expected:?}"
            );
            // No message says the same thing twice.
            let first_line = err.lines().next().unwrap_or_default();
            assert!(
                !first_line.is_empty() && err.matches(first_line).count() == 1,
                "{extra:?}: repeated text in {err:?}"
            );
        }
    }

    #[test]
    fn a_config_file_error_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7400\"\ndata_dir = \"d\"\nkey_file = \"k\"\nlayer = 9\n",
        )
        .expect("write");
        let err = RelayConfig::load(&path).expect_err("layer 9").to_string();
        assert!(
            err.starts_with(&format!("{}: layer = 9", path.display())),
            "{err}"
        );
        let err = RelayConfig::load(&dir.path().join("missing.toml"))
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("missing.toml") && err.contains("No such file"),
            "{err}"
        );
    }

    #[test]
    fn listen_on_every_interface_needs_a_public_address() {
        let mut c = RelayConfig::for_test(Path::new("/tmp"));
        c.listen = "0.0.0.0:7400".parse().expect("addr");
        let err = c
            .publishable_address(c.listen)
            .expect_err("no public address")
            .to_string();
        assert!(err.contains("set public_address"), "{err}");
        c.public_address = Some("relay.example.org:7400".into());
        assert_eq!(
            c.publishable_address(c.listen).expect("set"),
            "relay.example.org:7400"
        );
    }

    /// `docs/relay-config.md` documents every field the config types have: each `section.field`
    /// (from the types themselves, serialized) appears as a table row under its section.
    #[test]
    fn config_reference_lists_every_field() {
        let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/relay-config.md");
        let doc = std::fs::read_to_string(&doc_path).expect("docs/relay-config.md");
        let mut config = RelayConfig::for_test(Path::new("/tmp"));
        // Optional fields appear in the serialization only when set.
        config.public_address = Some("relay.example.org:7400".into());
        config.metrics_listen = Some("127.0.0.1:9464".parse().expect("addr"));
        config.descriptor_file = Some("relay.desc".into());
        config.directory.path = Some("d.bin".into());
        config.directory.url = Some("http://a/d".into());
        let value = toml::Value::try_from(&config).expect("config serializes");
        let table = value.as_table().expect("a table");
        let section_of = |name: &str| -> &str {
            let heading = if name.is_empty() {
                "## Top level".to_owned()
            } else {
                format!("## `[{name}]`")
            };
            let start = doc
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading}"));
            let rest = &doc[start + heading.len()..];
            &rest[..rest.find("\n## ").unwrap_or(rest.len())]
        };
        let mut checked = 0;
        for (key, v) in table {
            match v.as_table() {
                Some(fields) => {
                    for field in fields.keys() {
                        assert!(
                            section_of(key).contains(&format!("| `{field}` |")),
                            "docs/relay-config.md: [{key}] {field} is not documented"
                        );
                        checked += 1;
                    }
                }
                None => {
                    assert!(
                        section_of("").contains(&format!("| `{key}` |")),
                        "docs/relay-config.md: {key} is not documented"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 30, "only {checked} fields seen");
    }

    #[test]
    fn public_metrics_address_is_rejected() {
        let mut c = RelayConfig::for_test(Path::new("/tmp"));
        c.metrics_listen = Some("0.0.0.0:9464".parse().expect("addr"));
        assert!(c.validate().is_err());
    }
}
