//! A Spore network on loopback for scripts (tests/synapse/run.sh): relays in this process,
//! plus a ready `sidecar.toml` and mailbox key per homeserver. Runs until killed (SIGINT or
//! SIGTERM).
//!
//! ```text
//! spore-testnet --dir DIR --homeserver NAME,FEDERATION_URL,PROXY_ADDR [--homeserver ...]
//!               [--omit-peer NAME=PEER ...] [--relay-processes]
//! ```
//! writes `DIR/NAME/sidecar.toml` (run it with `spore-sidecar run -c`), then `DIR/ready`.
//! Each config lists every other homeserver under `[peers]`, except the pairs given with
//! `--omit-peer`: that sidecar must learn the peer's address from the peer's first bundle.
//!
//! With `--relay-processes`, each homeserver also gets a mailbox relay of its own that is a
//! real `spore-relay` process (the binary next to this one), set up in `DIR/relays/NAME/`
//! (`relay.toml`, keys, `data/`, `relay.log`, and `pid`, written once it accepts
//! connections): the sidecar's first mailbox relay and entry relay. Its second mailbox relay
//! (`second_mailbox_relay`) is one of the in-process relays, so its address names two. A
//! script can then SIGKILL the process, delete its `data/` and later start it again with
//! `spore-relay run --config DIR/relays/NAME/relay.toml` (same keys and port, empty disk).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use spore_protocol::{MailboxKey, RelayId, SporeAddress};
use spore_testkit::relay_process::{self, KilledOnDrop};
use spore_testkit::{SidecarNode, SidecarRates, Testnet, TestnetConfig};

/// How long a relay process may take to accept connections (2 shared cores, cold caches).
const RELAY_COME_UP: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Args {
    /// Where relays keep their data and where sidecar configs are written.
    #[arg(long)]
    dir: PathBuf,
    /// `server.name,http://127.0.0.1:FED_PORT,127.0.0.1:PROXY_PORT`; repeatable.
    #[arg(long)]
    homeserver: Vec<String>,
    /// `NAME=PEER`: NAME's sidecar config leaves PEER out of `[peers]`, so that NAME's
    /// sidecar learns PEER's address from PEER's first authenticated bundle (shows that first
    /// contact needs configuration on one side only); repeatable.
    #[arg(long)]
    omit_peer: Vec<String>,
    /// Give each homeserver a first mailbox relay of its own that runs as a `spore-relay`
    /// process (which a script can SIGKILL), and an in-process relay as its second.
    #[arg(long)]
    relay_processes: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(false)
        .init();
    match run(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spore-testnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut net = Testnet::start(TestnetConfig {
        base_dir: Some(args.dir.join("net")),
        ..TestnetConfig::default()
    })
    .await
    .context("starting relays")?;
    let mailboxes = net.mailbox_relays();
    let mut specs = Vec::new();
    for spec in &args.homeserver {
        let mut parts = spec.split(',');
        let (Some(name), Some(fed), Some(proxy)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("--homeserver NAME,FEDERATION_URL,PROXY_ADDR");
        };
        specs.push((name, fed, proxy));
    }
    // Killed (SIGKILL) when this process ends: dropped on the way out of `run`.
    let mut processes: Vec<KilledOnDrop> = Vec::new();
    let own_relays = if args.relay_processes {
        let names: Vec<&str> = specs.iter().map(|(name, ..)| *name).collect();
        start_relay_processes(&mut net, &args.dir, &names, &mut processes).await?
    } else {
        Vec::new()
    };
    let mut nodes = Vec::new();
    for (i, (name, fed, proxy)) in specs.into_iter().enumerate() {
        let key = MailboxKey::generate(&mut rand::rng());
        let shared = mailboxes[i % mailboxes.len()];
        let mailbox_relays = match own_relays.get(i) {
            Some(own) => vec![*own, shared],
            None => vec![shared],
        };
        let address = SporeAddress {
            capability: None,
            mailbox_relays,
            mailbox_key: key.public().to_bytes(),
        };
        nodes.push((
            name.to_owned(),
            fed.to_owned(),
            proxy.to_owned(),
            key,
            address,
        ));
    }
    let mut omitted = Vec::new();
    for pair in &args.omit_peer {
        let Some((name, peer)) = pair.split_once('=') else {
            anyhow::bail!("--omit-peer NAME=PEER");
        };
        if !nodes.iter().any(|(n, ..)| n == name) || !nodes.iter().any(|(n, ..)| n == peer) {
            anyhow::bail!("--omit-peer {pair}: both must be given with --homeserver");
        }
        omitted.push((name, peer));
    }
    for (name, fed, proxy, key, address) in &nodes {
        let peers: Vec<(&str, &SporeAddress)> = nodes
            .iter()
            .filter(|(peer, ..)| peer != name)
            .filter(|(peer, ..)| !omitted.contains(&(name.as_str(), peer.as_str())))
            .map(|(peer, _, _, _, peer_address)| (peer.as_str(), peer_address))
            .collect();
        let node = SidecarNode {
            https_proxy_listen: Some(proxy),
            request_timeout_secs: 10,
            // Big enough for a send_join answer in a room with ~100 small state events.
            reply_surbs: Some(32),
            rates: SidecarRates {
                lambda_p: 40.0,
                lambda_l: 2.0,
                lambda_d: 2.0,
            },
            peers: &peers,
            second_mailbox_relay: address.mailbox_relays.get(1).copied(),
            ..SidecarNode::new(name, address.mailbox_relays[0], key, fed)
        };
        net.write_sidecar_config(&args.dir.join(name), &node)?;
    }
    std::fs::write(args.dir.join("ready"), b"ready\n")?;
    eprintln!(
        "spore-testnet: {} relays up ({} of them processes); sidecar configs in {}",
        net.relay_ids().len() + processes.len(),
        processes.len(),
        args.dir.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    drop(processes);
    let _ = net.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Sets up one entry+mailbox `spore-relay` process per name in `dir/relays/NAME/`, publishes
/// them with the in-process relays, starts them (logging to `relay.log`), and writes each
/// one's `pid` once it accepts connections. Returns their ids in `names` order.
async fn start_relay_processes(
    net: &mut Testnet,
    dir: &Path,
    names: &[&str],
    processes: &mut Vec<KilledOnDrop>,
) -> anyhow::Result<Vec<RelayId>> {
    let bin = std::env::current_exe()?.with_file_name("spore-relay");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build -p spore-relay --bin spore-relay",
        bin.display()
    );
    let mut set_up = Vec::new();
    for name in names {
        let relay_dir = dir.join("relays").join(name);
        std::fs::create_dir_all(&relay_dir)?;
        let (listen, keys, descriptor) = relay_process::init_for_testnet(&bin, &relay_dir, net);
        set_up.push((relay_dir, listen, keys.relay_id(), descriptor));
    }
    net.publish_with_external(set_up.iter().map(|(.., d)| d.clone()).collect())
        .await
        .context("publishing the relay processes")?;
    let mut ids = Vec::new();
    for (relay_dir, listen, id, _) in set_up {
        let log = File::create(relay_dir.join("relay.log"))?;
        let child = relay_process::run_command(&bin, &relay_dir)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        processes.push(KilledOnDrop(child));
        let deadline = Instant::now() + RELAY_COME_UP;
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the relay in {} did not accept connections; see its relay.log",
                relay_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::write(relay_dir.join("pid"), format!("{pid}\n"))?;
        ids.push(id);
    }
    Ok(ids)
}
