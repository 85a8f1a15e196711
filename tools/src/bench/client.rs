//! `spore bench client`: what one client costs its host.
//!
//! A `spore_client::Transport` runs against a local network at the network's default rates
//! (payload stream lambda_P = 10/s carrying drop cover when idle, plus loop and drop cover,
//! mailbox pulls), and its CPU time is read from `/proc/self/stat` over a window. The network
//! runs in a child process (`spore testnet up`), so this process's CPU time is the client's
//! alone: its engine, packet building, Noise link, sled store, and the tokio runtime.
//! The packet build rate is forward packets (3 mixes + mailbox relay, sampled delays) built on
//! one thread against that network's directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use spore_client::{DirectorySource, Transport, TransportConfig, Trust};
use spore_protocol::MailboxKey;
use spore_protocol::directory::Directory;
use spore_protocol::packet::{build_packet, random_surb_id, sample_delays};
use spore_protocol::params::{FORWARD_HOPS, PAYLOAD_CAPACITY};
use spore_protocol::route::RouteSelector;

use super::{process_cpu_secs, verdict};
use crate::authority;

/// Target from issue 8: under 2% of one core.
pub const TARGET_CPU_SHARE: f64 = 0.02;

/// Where the network the client talks to comes from.
#[derive(Debug, Clone)]
pub enum Network {
    /// Run `<spore> testnet up` in a child process (its CPU is not counted).
    Spawn { spore_bin: PathBuf },
    /// An existing network: its directory file and authority key (tests use an in-process
    /// testnet; then the process CPU time includes the relays).
    Existing {
        directory: PathBuf,
        authority: [u8; 32],
    },
}

#[derive(Debug, Clone)]
pub struct ClientBenchConfig {
    pub network: Network,
    /// Seconds of the CPU window (after a warm-up of 2 s).
    pub seconds: f64,
    /// Packets in the build-rate measurement.
    pub build_packets: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    pub lambda_p: f64,
    pub lambda_l: f64,
    pub lambda_d: f64,
    pub window_s: f64,
    /// Packets the transport sent in the window (real + cover + loops).
    pub packets_sent: u64,
    pub packets_per_s: f64,
    pub cpu_s: f64,
    /// CPU seconds per wall second: 0.01 = 1% of one core.
    pub cpu_share: f64,
    /// CPU microseconds per packet sent (everything the client does, divided by packets).
    pub cpu_us_per_packet: f64,
    pub build_per_s: f64,
    /// True when the network ran in this process (the CPU figure then includes the relays).
    pub cpu_includes_network: bool,
}

struct TestnetProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for TestnetProcess {
    fn drop(&mut self) {
        // SIGTERM lets the testnet shut its relays down; SIGKILL after a grace period.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_testnet(spore: &Path) -> Result<(TestnetProcess, PathBuf, [u8; 32])> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(spore)
        .args(["testnet", "up", "--relays", "5", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} testnet up", spore.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let directory = dir.path().join("directory.bin");
    let net = TestnetProcess { child, _dir: dir };
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(hex_key) = line.strip_prefix("authority key: ") {
            let key = crate::keyfile::parse_hex32(hex_key.trim())
                .context("testnet printed a bad authority key")?;
            return Ok((net, directory, key));
        }
    }
    bail!("spore testnet up exited before the network was up")
}

/// Forward packets built per second on this thread for `directory`'s network.
pub fn build_rate(directory: &Directory, n: usize) -> Result<f64> {
    let routes = RouteSelector::new(directory, directory.epoch);
    let mut rng = rand::rng();
    let entry = routes.random_entry(&mut rng)?;
    let me = MailboxKey::generate();
    let max_delay = Duration::from_millis(directory.params.max_delay_ms);
    let msg = vec![0u8; PAYLOAD_CAPACITY];
    let t0 = Instant::now();
    for _ in 0..n {
        let route = routes.forward_route(&mut rng, &entry, &entry)?;
        let delays = sample_delays(&mut rng, directory.params.mu, FORWARD_HOPS, max_delay)?;
        std::hint::black_box(build_packet(
            &route,
            me.mailbox_id(),
            random_surb_id(),
            &delays,
            &msg,
        )?);
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

pub async fn run(cfg: &ClientBenchConfig) -> Result<ClientReport> {
    let (_net, directory_path, authority_key, includes) = match &cfg.network {
        Network::Spawn { spore_bin } => {
            let (net, d, a) = spawn_testnet(spore_bin)?;
            (Some(net), d, a, false)
        }
        Network::Existing {
            directory,
            authority,
        } => (None, directory.clone(), *authority, true),
    };
    let directory = authority::read(&directory_path)?;
    let relay = directory
        .relays
        .iter()
        .find(|r| r.roles.entry && r.roles.mailbox)
        .context("the network has no entry/mailbox relay")?
        .id;
    let data = tempfile::tempdir()?;
    let config = TransportConfig::new(
        data.path().join("client"),
        MailboxKey::generate(),
        "bench.spore.test",
        relay,
        DirectorySource::File {
            path: directory_path.clone(),
            refresh: Duration::from_secs(60),
        },
        Trust {
            authorities: vec![authority_key],
            threshold: 1,
        },
    );
    let transport = Transport::start(config).await?;
    let rates = transport.rates();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = std::process::id();
    let sent = |t: &Transport| {
        let s = t.stats();
        s.real_sent + s.drop_sent + s.loops_sent + s.replies_sent
    };
    let (cpu0, sent0, t0) = (process_cpu_secs(me), sent(&transport), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(cfg.seconds)).await;
    let (cpu, packets, wall) = (
        process_cpu_secs(me) - cpu0,
        sent(&transport) - sent0,
        t0.elapsed().as_secs_f64(),
    );
    transport.shutdown().await;
    let build = tokio::task::block_in_place(|| build_rate(&directory, cfg.build_packets))?;
    Ok(ClientReport {
        lambda_p: rates.lambda_p,
        lambda_l: rates.lambda_l,
        lambda_d: rates.lambda_d,
        window_s: wall,
        packets_sent: packets,
        packets_per_s: packets as f64 / wall,
        cpu_s: cpu,
        cpu_share: cpu / wall,
        cpu_us_per_packet: if packets == 0 {
            0.0
        } else {
            cpu * 1e6 / packets as f64
        },
        build_per_s: build,
        cpu_includes_network: includes,
    })
}

pub fn render(r: &ClientReport) -> String {
    format!(
        "spore bench client: one Transport, lambda_P {} + lambda_L {} + lambda_D {} per s{}\n\
         {:<36} {:>10.0} pkt/s over {:.0} s\n\
         {:<36} {:>9.3} %    target < {:.0}%: {}\n\
         {:<36} {:>10.0} us\n\
         {:<36} {:>10.0} pkt/s (one thread)\n",
        r.lambda_p,
        r.lambda_l,
        r.lambda_d,
        if r.cpu_includes_network {
            " (network in this process: CPU includes the relays)"
        } else {
            ""
        },
        "packets sent",
        r.packets_per_s,
        r.window_s,
        "CPU share of one core",
        100.0 * r.cpu_share,
        100.0 * TARGET_CPU_SHARE,
        verdict(r.cpu_share < TARGET_CPU_SHARE),
        "CPU per packet sent",
        r.cpu_us_per_packet,
        "packet build rate",
        r.build_per_s,
    )
}
