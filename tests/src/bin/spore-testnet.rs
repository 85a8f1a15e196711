//! A Spore network on loopback for scripts (tests/synapse/run.sh): relays in this process,
//! plus a ready `sidecar.toml` and mailbox key per homeserver. Runs until killed.
//!
//! ```text
//! spore-testnet --dir DIR --homeserver NAME,FEDERATION_URL,PROXY_ADDR [--homeserver ...]
//! ```
//! writes `DIR/NAME/sidecar.toml` (run it with `spore-sidecar run -c`), then `DIR/ready`.

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
    for (name, fed, proxy, key, address) in &nodes {
        let peers: Vec<(&str, &SporeAddress)> = nodes
            .iter()
            .filter(|(peer, ..)| peer != name)
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
