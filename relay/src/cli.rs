//! Command-line interface of `spore-relay` (clap derive). Each subcommand is a thin call into
//! the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use spore_relay::{Relay, RelayConfig, RelayKeys, RolesConfig, Template};

/// The Spore relay: a mix node and/or mailbox for the Spore mixnet.
#[derive(Debug, Parser)]
#[command(
    name = "spore-relay",
    version,
    about = "Spore relay: a mix node, entry and/or mailbox of the Spore mixnet for Matrix.",
    after_help = "Getting started:\n  \
        spore-relay init --dir /var/lib/spore-relay --role mix --layer 2\n  \
        spore-relay descriptor --config /var/lib/spore-relay/relay.toml --out relay.desc\n  \
        spore-relay run --config /var/lib/spore-relay/relay.toml\n\n\
        Logs go to stderr; RUST_LOG=debug shows per-link detail (never at info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create keys and a commented relay.toml in a new directory.
    Init {
        /// Directory to create (keys, config, data).
        #[arg(long)]
        dir: PathBuf,
        /// What this relay does.
        #[arg(long, value_enum, default_value_t = Role::Mix)]
        role: Role,
        /// Mix layer (1..=3) for a mix.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
        layer: u8,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
    },
    /// Run the relay until SIGINT or SIGTERM.
    Run {
        /// Path to relay.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Create the relay's key file if it does not exist (the Debian package's postinst uses
    /// this); prints the relay id and link key either way.
    Keygen {
        /// Where the keys go (mode 0600); an existing file is kept, never overwritten.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Print this relay's signed descriptor for the directory authorities.
    Descriptor {
        /// Path to relay.toml.
        #[arg(long)]
        config: PathBuf,
        /// Write the binary descriptor to this file instead of printing hex.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Mix node in one layer.
    Mix,
    /// Mailbox relay (final hop, stores for offline recipients).
    Mailbox,
    /// Mix and mailbox.
    Both,
    /// Entry relay (first hop for clients).
    Entry,
    /// Entry and mailbox: where homeservers connect and keep their mailboxes.
    Edge,
}

impl Role {
    fn roles(self) -> RolesConfig {
        match self {
            Role::Mix => RolesConfig {
                entry: false,
                mix: true,
                mailbox: false,
            },
            Role::Mailbox => RolesConfig {
                entry: false,
                mix: false,
                mailbox: true,
            },
            Role::Both => RolesConfig {
                entry: false,
                mix: true,
                mailbox: true,
            },
            Role::Entry => RolesConfig {
                entry: true,
                mix: false,
                mailbox: false,
            },
            Role::Edge => RolesConfig {
                entry: true,
                mix: false,
                mailbox: true,
            },
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spore-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            dir,
            role,
            layer,
            listen,
        } => init(&dir, role, layer, listen),
        Command::Run { config } => {
            init_tracing();
            let config = RelayConfig::load(&config)?;
            let keys = RelayKeys::load(&config.key_file)?;
            let source = config.directory_source();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async move {
                let relay = Relay::start(config, keys, source).await?;
                relay.run_until_signal().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { key_file } => {
            let keys = RelayKeys::load_or_generate(&key_file)?;
            println!("relay id   {}", keys.relay_id());
            println!("link key   {}", hex::encode(keys.link_public()));
            println!("key file   {}", key_file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Descriptor { config, out } => {
            let config = RelayConfig::load(&config)?;
            let keys = RelayKeys::load(&config.key_file)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            if config.public_address.is_none() && config.listen.ip().is_unspecified() {
                bail!(
                    "listen is {} and public_address is not set: set public_address in the config \
                     to the host:port other relays and clients should dial",
                    config.listen
                );
            }
            let address = config.advertised_address(config.listen);
            let d = spore_relay::build_descriptor(&config, &keys, &address, now)?;
            match out {
                Some(path) => std::fs::write(&path, d.to_bytes())
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{}", hex::encode(d.to_bytes())),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(dir: &Path, role: Role, layer: u8, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let config_path = dir.join("relay.toml");
    if config_path.exists() {
        bail!("{} already exists; not overwriting", config_path.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = RelayKeys::generate();
    keys.save(&dir.join("relay.key"))?;
    let roles = role.roles();
    let layer = if roles.mix { layer } else { 0 };
    let metrics_listen = free_metrics_port();
    let text = RelayConfig::commented_template(&Template {
        listen,
        roles,
        layer,
        key_file: "relay.key",
        data_dir: "data",
        metrics_listen,
    });
    RelayConfig::from_toml(&text).context("generated config does not validate")?;
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    println!("relay id   {}", keys.relay_id());
    println!("link key   {}", hex::encode(keys.link_public()));
    println!("config     {}", config_path.display());
    match metrics_listen {
        Some(m) => println!("metrics    http://{m}/metrics (health: /health)"),
        None => println!(
            "metrics    off: no free port in 127.0.0.1:{}..{}; set metrics_listen in the config",
            METRICS_PORTS.start, METRICS_PORTS.end
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ports `init` tries for the metrics endpoint: 9464 (the OpenTelemetry/Prometheus exporter
/// convention) and the next few, so a second relay on a host does not collide with the first.
const METRICS_PORTS: std::ops::Range<u16> = 9464..9564;

/// The first metrics port in [`METRICS_PORTS`] nothing listens on now. (A relay that is
/// configured but stopped is not seen: `init` prints the port so the operator can check.)
fn free_metrics_port() -> Option<SocketAddr> {
    METRICS_PORTS
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .find(|addr| std::net::TcpListener::bind(addr).is_ok())
}
