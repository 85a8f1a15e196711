//! `spore`: parse, run, print the error chain on one line.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ed25519_dalek::SigningKey;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use spore_tools::{authority, inspect, keyfile};

mod analyze_command;
mod bench_command;
mod flags;

use flags::{AuthorityCmd, Cli, Command, DirectoryCmd, KeygenCmd, TestnetCmd};

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
        Command::Authority(AuthorityCmd::Run { config }) => {
            let config = spore_authority::AuthorityConfig::load(&config)?;
            let key = SigningKey::from_bytes(&keyfile::read_secret(&config.key_file)?);
            tokio::runtime::Runtime::new()?.block_on(async {
                let authority = spore_authority::start(config, key).await?;
                eprintln!(
                    "authority {} serving http://{}/directory (Ctrl-C to stop)",
                    hex::encode(authority.public_key()),
                    authority.local_addr()
                );
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                authority.shutdown().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
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
            let rt = tokio::runtime::Runtime::new()?;
            let from = args.directory.to_string_lossy().into_owned();
            let dir = rt.block_on(spore_tools::load::read_directory(&from))?;
            let cfg = spore_tools::load::LoadConfig {
                rate: args.rate,
                duration: std::time::Duration::from_secs(args.duration),
                drain: std::time::Duration::from_secs(args.drain),
                entry: None,
            };
            let report = rt.block_on(spore_tools::load::run(&dir, &cfg))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", spore_tools::load::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench_command::run(args).map(|()| ExitCode::SUCCESS),
        Command::Analyze(args) => analyze_command::run(args).map(|()| ExitCode::SUCCESS),
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
                capability: None,
                mailbox_relays,
                mailbox_key: key.public().to_bytes(),
            };
            println!("{}", address.to_text());
        }
        KeygenCmd::Show { key } => {
            let secret = keyfile::read_secret(&key)?;
            println!(
                "{}",
                hex::encode(SigningKey::from_bytes(&secret).verifying_key().to_bytes())
            );
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
    use spore_testkit::{Testnet, TestnetConfig};
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
            let mut cfg = TestnetConfig::in_dir(&dir);
            cfg.mixes_per_layer = ((relays - 2) / 3).max(1);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let net = Testnet::start(cfg).await?;
                std::fs::write(&pid_file, std::process::id().to_string())?;
                let auth = hex::encode(net.authority());
                println!(
                    "testnet up: {} relays, directory {}",
                    net.relay_count(),
                    net.directory_path().display()
                );
                println!("authority key: {auth}");
                for id in net.mailbox_relays() {
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
