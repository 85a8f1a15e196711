//! `spore`: parse, run, print the error chain on one line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ed25519_dalek::SigningKey;
use spore_protocol::directory::NetworkParams;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use spore_tools::{authority, inspect, keyfile};

/// Spore: a store-and-forward mixnet for peer-to-peer Matrix.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole network on loopback and show a federation workload crossing it.
    Demo(DemoArgs),
    /// Generate keys: a directory authority key or a homeserver mailbox key.
    #[command(subcommand)]
    Keygen(KeygenCmd),
    /// Directory authority: build, co-sign, verify, show and serve the signed directory.
    #[command(subcommand)]
    Directory(DirectoryCmd),
    /// Decode a packet, link frame, directory, descriptor or Spore address and say what an
    /// outside observer can and cannot learn from it.
    Inspect(InspectArgs),
    /// Privacy analysis: anonymity metrics, attack simulations, traces, figures.
    Analyze(spore_tools::analyze::cli::AnalyzeArgs),
    /// A local network on loopback that stays up for manual use.
    #[command(subcommand)]
    Testnet(TestnetCmd),
    /// Drive a network with a fixed packet rate and report throughput and loss.
    Load(LoadArgs),
    /// Benchmarks: relay vs the Sphinx floor, latency, mailbox store, client cost.
    Bench(spore_tools::bench::BenchArgs),
}

#[derive(Subcommand)]
enum TestnetCmd {
    /// Start relays and a directory in DIR and keep them running until Ctrl-C or `down`.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// Total relays: 2 entry/mailbox relays plus 3 mix layers sharing the rest (min 5).
        #[arg(long, default_value_t = 8)]
        relays: usize,
    },
    /// Stop the testnet running in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// The signed directory of the network to load (e.g. DIR/directory.bin of a testnet).
    #[arg(long)]
    directory: PathBuf,
    /// Packets per second offered to the entry relay.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Seconds to keep pulling after the last packet.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Keep the network's data here instead of a temporary folder.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Federation transactions A sends to B.
    #[arg(long, default_value_t = spore_tools::demo::DemoConfig::default().transactions)]
    transactions: usize,
    /// Mixes per layer.
    #[arg(long, default_value_t = 2)]
    width: usize,
    /// Print the summary as one JSON object (keys sent, delivered, duplicates, lost, latency_ms).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeygenCmd {
    /// An ed25519 key for a directory authority. Prints the public key relays must trust.
    Authority {
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// An X25519 mailbox key for a homeserver. Prints its Spore address for the given relays.
    Mailbox {
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Relay id (hex) of a mailbox relay holding this mailbox; give one or two.
        #[arg(long = "relay", required = true, num_args = 1)]
        relays: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DirectoryCmd {
    /// Collect relay descriptors, check them and sign a directory for the current epoch.
    Build {
        /// The authority's secret key file (from `spore keygen authority`).
        #[arg(long)]
        key: PathBuf,
        /// Descriptor files (from `spore-relay descriptor --out`), or folders of `*.desc` files.
        #[arg(long = "descriptors", required = true, num_args = 1..)]
        descriptors: Vec<PathBuf>,
        /// Where to write the signed directory (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// How long the document stays valid.
        #[arg(long, default_value_t = 86_400)]
        valid_secs: u64,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Add this authority's signature to an existing directory (threshold signing).
    Sign {
        #[arg(long)]
        key: PathBuf,
        /// The directory file; rewritten in place.
        file: PathBuf,
    },
    /// Check a directory against trusted authority keys, as relays and clients do.
    Verify {
        /// Trusted authority public key (hex); repeat for several.
        #[arg(long = "authority", required = true)]
        authorities: Vec<String>,
        /// How many of them must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        file: PathBuf,
    },
    /// Print a directory in human form.
    Show { file: PathBuf },
    /// Serve the directory file over HTTP on loopback (`GET /directory`).
    Serve {
        file: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
    },
}

/// Network parameters published in the directory (defaults are Spore's shipped values).
#[derive(Args)]
struct ParamArgs {
    /// Per-hop delay rate mu (1/s); mean per-hop delay is 1/mu.
    #[arg(long, default_value_t = NetworkParams::default().mu)]
    mu: f64,
    /// Client payload stream rate lambda_P (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_p)]
    lambda_p: f64,
    /// Client loop cover rate lambda_L (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_l)]
    lambda_l: f64,
    /// Client drop cover rate lambda_D (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_d)]
    lambda_d: f64,
    /// Relay loop cover rate lambda_M (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_m)]
    lambda_m: f64,
    /// Key epoch length in seconds.
    #[arg(long, default_value_t = NetworkParams::default().epoch_length_secs)]
    epoch_secs: u64,
}

impl ParamArgs {
    fn params(&self) -> NetworkParams {
        NetworkParams {
            mu: self.mu,
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            lambda_m: self.lambda_m,
            epoch_length_secs: self.epoch_secs,
            ..NetworkParams::default()
        }
    }
}

#[derive(Args)]
struct InspectArgs {
    /// File to inspect (binary, or hex text).
    file: Option<PathBuf>,
    /// Inspect these hex bytes instead of a file.
    #[arg(long, conflicts_with = "file")]
    hex: Option<String>,
}

fn main() -> ExitCode {
    // Quiet by default so the demo's own output reads cleanly; RUST_LOG=info shows the
    // relays' and clients' logs (which never name addresses, mailboxes or packet timings).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => {
            use spore_tools::demo;
            let cfg = demo::DemoConfig {
                dir: args.dir,
                transactions: args.transactions,
                width: args.width,
                progress: !args.json,
                ..demo::DemoConfig::default()
            };
            let summary = tokio::runtime::Runtime::new()?.block_on(demo::run(cfg))?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", demo::render(&summary));
            }
            demo::check(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(cmd) => keygen(cmd),
        Command::Directory(cmd) => directory(cmd),
        Command::Inspect(args) => {
            let raw = match (&args.file, &args.hex) {
                (Some(f), _) => {
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, Some(h)) => h.as_bytes().to_vec(),
                (None, None) => bail!("give a FILE or --hex"),
            };
            let report = inspect::inspect(&inspect::decode_input(&raw));
            print!("{}", report.text);
            Ok(if report.kind == inspect::Kind::Unknown {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Testnet(cmd) => testnet(cmd),
        Command::Load(args) => {
            let dir = authority::read(&args.directory)?;
            let cfg = spore_tools::load::LoadConfig {
                rate: args.rate,
                duration: std::time::Duration::from_secs(args.duration),
                drain: std::time::Duration::from_secs(args.drain),
                entry: None,
            };
            let report =
                tokio::runtime::Runtime::new()?.block_on(spore_tools::load::run(&dir, &cfg))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", spore_tools::load::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => spore_tools::bench::run_cli(args).map(|()| ExitCode::SUCCESS),
        Command::Analyze(args) => spore_tools::analyze::cli::run(args).map(|()| ExitCode::SUCCESS),
    }
}

fn keygen(cmd: KeygenCmd) -> Result<ExitCode> {
    match cmd {
        KeygenCmd::Authority { out } => {
            let secret: [u8; 32] = rand::random();
            keyfile::write_secret(&out, &secret)?;
            let public = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
            println!("authority public key: {}", hex::encode(public));
            println!(
                "relays and clients trust it with: authorities = [\"{}\"]",
                hex::encode(public)
            );
        }
        KeygenCmd::Mailbox { out, relays } => {
            if relays.len() > SporeAddress::MAX_MAILBOX_RELAYS {
                bail!(
                    "a mailbox lives on at most {} relays",
                    SporeAddress::MAX_MAILBOX_RELAYS
                );
            }
            let mailbox_relays = relays
                .iter()
                .map(|r| {
                    keyfile::parse_hex32(r)
                        .map(RelayId)
                        .with_context(|| format!("bad relay id {r}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let key = MailboxKey::generate(&mut rand::rng());
            keyfile::write_secret(&out, &key.secret_bytes())?;
            let address = SporeAddress {
                mailbox_relays,
                mailbox_key: key.public().to_bytes(),
            };
            println!("{}", address.to_text());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn directory(cmd: DirectoryCmd) -> Result<ExitCode> {
    match cmd {
        DirectoryCmd::Build {
            key,
            descriptors,
            out,
            valid_secs,
            params,
        } => {
            let key = SigningKey::from_bytes(&keyfile::read_secret(&key)?);
            let descs = authority::descriptor_paths(&descriptors)?
                .iter()
                .map(|p| authority::read_descriptor(p))
                .collect::<Result<Vec<_>>>()?;
            if descs.is_empty() {
                bail!("no descriptors found");
            }
            let dir = authority::build(descs, params.params(), &key, now_unix(), valid_secs)?;
            authority::write(&dir, &out)?;
            print!("{}", authority::describe(&dir));
        }
        DirectoryCmd::Sign { key, file } => {
            let key = SigningKey::from_bytes(&keyfile::read_secret(&key)?);
            let mut dir = authority::read(&file)?;
            authority::add_signature(&mut dir, &key)?;
            authority::write(&dir, &file)?;
            println!("{} signature(s)", dir.signatures.len());
        }
        DirectoryCmd::Verify {
            authorities,
            threshold,
            file,
        } => {
            let trusted = authority::parse_authorities(&authorities)?;
            let dir = authority::read(&file)?;
            authority::verify(&dir, &trusted, threshold, now_unix())?;
            println!(
                "valid: {threshold} of {} trusted authorities signed; {} relays",
                trusted.len(),
                dir.relays.len()
            );
        }
        DirectoryCmd::Show { file } => print!("{}", authority::describe(&authority::read(&file)?)),
        DirectoryCmd::Serve { file, listen } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                eprintln!(
                    "serving {} on http://{listen}/directory (Ctrl-C to stop)",
                    file.display()
                );
                authority::serve(file, listen, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn testnet(cmd: TestnetCmd) -> Result<ExitCode> {
    use spore_tools::testnet::{Testnet, TestnetConfig};
    match cmd {
        TestnetCmd::Up { dir, relays } => {
            if relays < 5 {
                bail!("a network needs at least 5 relays (2 entry/mailbox + 3 mix layers)");
            }
            let pid_file = dir.join("testnet.pid");
            if let Ok(pid) = std::fs::read_to_string(&pid_file)
                && std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            {
                bail!(
                    "a testnet is already running in {} (pid {})",
                    dir.display(),
                    pid.trim()
                );
            }
            let mut cfg = TestnetConfig::new(&dir);
            cfg.width = ((relays - 2) / 3).max(1);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let net = Testnet::start(cfg).await?;
                std::fs::write(&pid_file, std::process::id().to_string())?;
                let auth = hex::encode(net.authority_public());
                println!(
                    "testnet up: {} relays, directory {}",
                    net.relay_count(),
                    net.directory_path().display()
                );
                println!("authority key: {auth}");
                for id in net.edge_relays() {
                    println!("entry/mailbox relay: {id}");
                }
                println!();
                println!("point a client or sidecar at it with:");
                println!("  directory = \"{}\"", net.directory_path().display());
                println!("  authorities = [\"{auth}\"]");
                println!("  mailbox_relay = \"<one of the entry/mailbox relay ids above>\"");
                println!(
                    "load it with: spore load --directory {}",
                    net.directory_path().display()
                );
                println!(
                    "stop it with: spore testnet down --dir {}  (or Ctrl-C)",
                    dir.display()
                );
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                net.shutdown().await?;
                let _ = std::fs::remove_file(&pid_file);
                anyhow::Ok(())
            })?;
        }
        TestnetCmd::Down { dir } => {
            let pid_file = dir.join("testnet.pid");
            let pid = std::fs::read_to_string(&pid_file)
                .with_context(|| format!("no testnet running in {}", dir.display()))?;
            let status = std::process::Command::new("kill")
                .args(["-TERM", pid.trim()])
                .status()
                .context("cannot run kill")?;
            if !status.success() {
                let _ = std::fs::remove_file(&pid_file);
                bail!("testnet process {} is not running", pid.trim());
            }
            println!("stopping testnet (pid {})", pid.trim());
        }
    }
    Ok(ExitCode::SUCCESS)
}
