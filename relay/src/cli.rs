//! Command-line interface of `spore-relay` (clap derive). Each subcommand is a thin call into
//! the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use spore_relay::{DirectorySource, Relay, RelayConfig, RelayKeys, RolesConfig};

/// The Spore relay: a mix node and/or mailbox for the Spore mixnet.
#[derive(Debug, Parser)]
#[command(name = "spore-relay", version, about, long_about = None)]
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
        #[arg(long, default_value_t = 1)]
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
            let source = match &config.directory.path {
                Some(p) => DirectorySource::File(p.clone()),
                None => DirectorySource::None,
            };
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
        Command::Descriptor { config, out } => {
            let config = RelayConfig::load(&config)?;
            let keys = RelayKeys::load(&config.key_file)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
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
    let text = RelayConfig::commented_template(listen, role.roles(), layer, "relay.key");
    RelayConfig::from_toml(&text).context("generated config does not validate")?;
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    println!("relay id   {}", keys.relay_id());
    println!("link key   {}", hex::encode(keys.link_public()));
    println!("config     {}", config_path.display());
    Ok(ExitCode::SUCCESS)
}
