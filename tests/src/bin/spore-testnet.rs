//! A Spore network on loopback for scripts (tests/synapse/run.sh): relays in this process,
//! plus a ready `sidecar.toml` and mailbox key per homeserver. Runs until killed.
//!
//! ```text
//! spore-testnet --dir DIR --homeserver NAME,FEDERATION_URL,PROXY_ADDR [--homeserver ...]
//!               [--omit-peer NAME=PEER ...]
//! ```
//! writes `DIR/NAME/sidecar.toml` (run it with `spore-sidecar run -c`), then `DIR/ready`.
//! Each config lists every other homeserver under `[peers]`, except the pairs given with
//! `--omit-peer`: that sidecar must learn the peer's address from the peer's first bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_testkit::{SidecarNode, SidecarRates, Testnet, TestnetConfig};

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
    let net = Testnet::start(TestnetConfig {
        base_dir: Some(args.dir.join("net")),
        ..TestnetConfig::default()
    })
    .await
    .context("starting relays")?;
    let mailboxes = net.mailbox_relays();
    let mut nodes = Vec::new();
    for (i, spec) in args.homeserver.iter().enumerate() {
        let mut parts = spec.split(',');
        let (Some(name), Some(fed), Some(proxy)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("--homeserver NAME,FEDERATION_URL,PROXY_ADDR");
        };
        let key = MailboxKey::generate(&mut rand::rng());
        let address = SporeAddress {
            capability: None,
            mailbox_relays: vec![mailboxes[i % mailboxes.len()]],
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
            ..SidecarNode::new(name, address.mailbox_relays[0], key, fed)
        };
        net.write_sidecar_config(&args.dir.join(name), &node)?;
    }
    std::fs::write(args.dir.join("ready"), b"ready\n")?;
    eprintln!(
        "spore-testnet: {} relays up; sidecar configs in {}",
        net.relay_ids().len(),
        args.dir.display()
    );
    tokio::signal::ctrl_c().await?;
    let _ = net.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
