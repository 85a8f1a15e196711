//! `spore-sidecar`: runs the Spore transport beside a homeserver. See `spore_client::sidecar`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spore_client::sidecar::{Sidecar, SidecarConfig};
use spore_protocol::{MailboxKey, RelayId, SporeAddress};

/// Carries a homeserver's federation traffic through the Spore mixnet.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the sidecar until SIGINT/SIGTERM.
    Run {
        /// The sidecar's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Writes a new mailbox key file (hex secret, mode 0600).
    Keygen {
        /// Where to write the key.
        out: PathBuf,
    },
    /// Prints the Spore address to publish for a config.
    Address {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spore-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Keygen { out } => {
            let key = MailboxKey::generate(&mut rand::rng());
            write_private(&out, &hex::encode(key.secret_bytes()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Address { config } => {
            let config = SidecarConfig::load(&config)?;
            let relay = hex::decode(config.mailbox_relay.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .context("mailbox_relay is not 32 hex bytes")?;
            let address = SporeAddress {
                mailbox_relays: vec![RelayId(relay)],
                mailbox_key: config.mailbox_key()?.public().to_bytes(),
            };
            println!("{}", address.to_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let config = SidecarConfig::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let sidecar = Sidecar::start(config).await?;
                eprintln!("listening on {}", sidecar.local_addr());
                shutdown_signal().await;
                sidecar.shutdown().await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
