//! The command line: flags (clap) and the work each command does with the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spore_protocol::MailboxKey;
use spore_sidecar::{
    DeadLetters, LocalHomeserver, PEER_BOOK_FILE, PeerBook, PeerSource, Sidecar, SidecarConfig,
    WELL_KNOWN_ADDRESS_KEY,
};

/// Carries a homeserver's federation traffic through the Spore mixnet.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
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
    ///
    /// A peer's operator adds it to their `[peers]` table to contact this server first; this
    /// server learns theirs from that first authenticated bundle, so only the side that starts
    /// a conversation needs it. Publish it where a homeserver admin looks: with --well-known,
    /// the `org.spore.address` member to merge into https://SERVER/.well-known/matrix/server.
    Address {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the `.well-known/matrix/server` member instead of the bare address.
        #[arg(long)]
        well_known: bool,
    },
    /// Lists the peers this sidecar can send to: name, where the address came from
    /// (`configured` in `[peers]`, or `learned` from the peer's first authenticated bundle),
    /// and the address.
    ///
    /// A destination missing here gets a 502 that says how to add it: set
    /// `"NAME" = "spore:..."` under `[peers]` (the address its operator prints with
    /// `spore-sidecar address`) and restart.
    Peers {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inbound transactions the homeserver refused for good (kept in `data_dir/dead-letters`).
    DeadLetters {
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// One line per dead letter: id, when, origin, last status, attempts, method and path.
    List,
    /// Delivers one to the homeserver again; removes it if the homeserver accepts it.
    Retry { id: String },
    /// Forgets one.
    Drop { id: String },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
        }
        Command::Address { config, well_known } => {
            let address = SidecarConfig::load(&config)?.address()?.to_text();
            if well_known {
                println!(
                    "{}",
                    serde_json::json!({ (WELL_KNOWN_ADDRESS_KEY): address })
                );
            } else {
                println!("{address}");
            }
        }
        Command::Peers { config } => {
            let config = SidecarConfig::load(&config)?;
            let book = PeerBook::read_only(&config.data_dir.join(PEER_BOOK_FILE), &config.peers()?);
            for (name, peer) in book.list() {
                let source = match peer.source {
                    PeerSource::Configured => "configured",
                    _ => "learned",
                };
                println!("{name} {source} {}", peer.address.to_text());
            }
        }
        Command::DeadLetters { config, action } => {
            let config = SidecarConfig::load(&config)?;
            let store = DeadLetters::in_data_dir(&config.data_dir);
            match action {
                DeadLetterAction::List => {
                    for l in store.list()? {
                        println!(
                            "{} {} {} {} {} {} {}",
                            l.id, l.at_ms, l.origin, l.status, l.attempts, l.method, l.path
                        );
                    }
                }
                DeadLetterAction::Drop { id } => store.remove(&id)?,
                DeadLetterAction::Retry { id } => {
                    let homeserver = LocalHomeserver::new(
                        config.homeserver_url.as_str(),
                        config.server_name.as_str(),
                    );
                    let rt = tokio::runtime::Runtime::new()?;
                    let status = rt.block_on(store.retry(&id, &homeserver))?;
                    println!("delivered ({status})");
                }
            }
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
        }
    }
    Ok(ExitCode::SUCCESS)
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

/// Creates `path` readable by its owner only; never overwrites a key.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
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
