//! `spore bench client`: what one client costs its host.
//!
//! A `spore_client::Transport` runs against a local network at the network's default rates
//! (payload stream lambda_P = 10/s carrying drop cover when idle, plus loop and drop cover,
//! mailbox pulls), and its CPU time is read from `/proc/self/stat` over a window. The network
//! runs in a child process (`spore testnet up`), so this process's CPU time is the client's
//! alone: its engine, packet building, Noise link, SQLite store, and the tokio runtime.
//! The packet build rate is forward packets (3 mixes + mailbox relay, sampled delays) built on
//! one thread against that network's directory.
//!
//! With `--throughput` ([`run_throughput`]) the client instead runs at rates that allow bulk
//! transfer (high lambda_P, 1 ms mean per-hop delay, 20 ms pulls: all configurable through the
//! ordinary rate overrides), queues a large batch of multi-fragment messages to an offline
//! recipient on the other mailbox relay, and reports acknowledged fragments per second over a
//! window while the backlog lasts, retransmissions, and the CPU of the client and of the
//! network's process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::bail;
use crate::error::{Context, Result};
use serde::Serialize;
use spore_client::{DirectorySource, RateOverrides, Transport, TransportConfig, Trust};
use spore_protocol::bundle::{self, Bundle, BundleBody};
use spore_protocol::directory::Directory;
use spore_protocol::packet::{build_packet, random_surb_id, sample_delays};
use spore_protocol::params::FRAGMENT_DATA_SIZE;
use spore_protocol::params::{FORWARD_HOPS, PAYLOAD_CAPACITY};
use spore_protocol::route::RouteSelector;
use spore_protocol::{FederationRequest, MailboxKey, RelayId, SporeAddress};

use std::collections::BTreeMap;

use crate::{process_cpu_secs, read_directory, thread_groups_cpu_secs, verdict};

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

impl Network {
    /// The network's directory file and authority key, the child process running it (if
    /// spawned; dropping it stops the network), and whether it runs in this process.
    pub(crate) fn open(&self) -> Result<(Option<TestnetProcess>, PathBuf, [u8; 32], bool)> {
        Ok(match self {
            Network::Spawn { spore_bin } => {
                let (net, d, a) = spawn_testnet(spore_bin)?;
                (Some(net), d, a, false)
            }
            Network::Existing {
                directory,
                authority,
            } => (None, directory.clone(), *authority, true),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ClientBenchConfig {
    pub network: Network,
    /// Seconds of the CPU window (after a warm-up of 2 s).
    pub seconds: f64,
    /// Packets in the build-rate measurement.
    pub build_packets: usize,
    /// Rate overrides (the network's defaults where `None`).
    pub rates: RateOverrides,
    /// Packet build threads of the client (0: build on the engine's task).
    pub build_threads: usize,
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
    /// 1-minute load average at the end of the window (`/proc/loadavg`): how busy the machine was.
    pub load_avg_1m: f64,
    pub build_threads: usize,
    /// CPU share of one core in the window by thread name (tokio workers, build threads).
    pub cpu_share_by_thread: BTreeMap<String, f64>,
}

pub(crate) struct TestnetProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl TestnetProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
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
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next() {
        let line = line?;
        if let Some(hex_key) = line.strip_prefix("authority key: ") {
            let key = hex::decode(hex_key.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .context("testnet printed a bad authority key")?;
            // Keep reading what it prints next: with the pipe closed, its next line would fail
            // with EPIPE and take the whole network down mid-run.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((net, directory, key));
        }
    }
    bail!("spore testnet up exited before the network was up")
}

/// Forward packets built per second on this thread for `directory`'s network.
/// A client transport of the bench's own on the network of `directory_path`, entering at
/// `relay`, with the given rates and build threads.
async fn start_client(
    data: &Path,
    relay: RelayId,
    directory_path: &Path,
    authority_key: [u8; 32],
    rates: RateOverrides,
    build_threads: usize,
) -> Result<Transport> {
    let key = MailboxKey::generate(&mut rand::rng());
    start_transport(
        data,
        key,
        relay,
        directory_path,
        authority_key,
        rates,
        build_threads,
        true,
    )
    .await
}

/// [`start_client`] with a given mailbox key and catch-up setting.
#[allow(clippy::too_many_arguments)] // one call site per benchmark, each naming every knob
pub(crate) async fn start_transport(
    data: &Path,
    key: MailboxKey,
    relay: RelayId,
    directory_path: &Path,
    authority_key: [u8; 32],
    rates: RateOverrides,
    build_threads: usize,
    catch_up: bool,
) -> Result<Transport> {
    let mut config = TransportConfig::new(
        data.to_owned(),
        key,
        "bench.spore.test",
        relay,
        DirectorySource::File {
            path: directory_path.to_owned(),
            refresh: Duration::from_secs(60),
        },
        Trust {
            authorities: vec![authority_key],
            threshold: 1,
        },
    );
    config.rates = rates;
    config.build_threads = build_threads;
    config.catch_up = catch_up;
    Ok(Transport::start(config).await?)
}

pub fn build_rate(directory: &Directory, n: usize) -> Result<f64> {
    let routes = RouteSelector::new(directory, directory.epoch);
    let mut rng = rand::rng();
    let entry = routes.random_entry(&mut rng)?;
    let me = MailboxKey::generate(&mut rand::rng());
    let max_delay = Duration::from_millis(directory.params.max_delay_ms);
    let msg = vec![0u8; PAYLOAD_CAPACITY];
    let t0 = Instant::now();
    for _ in 0..n {
        let route = routes.forward_route(&mut rng, &entry, &entry)?;
        let delays = sample_delays(&mut rng, directory.params.mu, FORWARD_HOPS, max_delay)?;
        std::hint::black_box(build_packet(
            &route,
            me.mailbox_id(),
            random_surb_id(&mut rand::rng()),
            &delays,
            &msg,
        )?);
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

pub async fn run(cfg: &ClientBenchConfig) -> Result<ClientReport> {
    let (_net, directory_path, authority_key, includes) = cfg.network.open()?;
    let directory = read_directory(&directory_path)?;
    let relay = directory
        .relays
        .iter()
        .find(|r| r.roles.entry && r.roles.mailbox)
        .context("the network has no entry/mailbox relay")?
        .id;
    let data = tempfile::tempdir()?;
    let transport = start_client(
        &data.path().join("client"),
        relay,
        &directory_path,
        authority_key,
        cfg.rates,
        cfg.build_threads,
    )
    .await?;
    let rates = transport.rates();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = std::process::id();
    let sent = |t: &Transport| {
        let s = t.stats();
        s.real_sent + s.drop_sent + s.loops_sent + s.replies_sent
    };
    let threads0 = thread_groups_cpu_secs(me);
    let (cpu0, sent0, t0) = (process_cpu_secs(me), sent(&transport), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(cfg.seconds)).await;
    let threads1 = thread_groups_cpu_secs(me);
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
        load_avg_1m: load_avg_1m(),
        build_threads: cfg.build_threads,
        cpu_share_by_thread: threads1
            .into_iter()
            .map(|(name, c)| {
                let before = threads0.get(&name).copied().unwrap_or(0.0);
                (name, (c - before) / wall)
            })
            .filter(|(_, share)| *share > 0.0)
            .collect(),
    })
}

/// The 1-minute load average, NaN if unknown.
pub fn load_avg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[derive(Debug, Clone)]
pub struct ThroughputConfig {
    pub network: Network,
    /// Seconds of the measured window (after the backlog has built up).
    pub seconds: f64,
    /// Messages queued up front (each `fragments_per_message` fragments).
    pub messages: usize,
    /// Random body bytes per message (sets the fragments per message).
    pub body_bytes: usize,
    pub rates: RateOverrides,
    /// Packet build threads of the client.
    pub build_threads: usize,
}

impl ThroughputConfig {
    /// Rates that let one client move bulk data on a loopback network: a payload stream just
    /// above the 500 fragments/s goal, the usual loop and drop cover, 1 ms mean delay per hop,
    /// 20 ms pulls (16 items each: up to 800 acks per second). A faster payload stream does
    /// not move more on a 2-core machine: every slot the build threads cannot fill goes out as
    /// drop cover, each as costly to build as a fragment, and starves the relays (lambda_P 800:
    /// 350-380 acked/s with 1.08 cores of client CPU; 560: 550-560 acked/s with 0.97).
    pub fn bulk_rates() -> RateOverrides {
        RateOverrides {
            lambda_p: Some(600.0),
            lambda_l: Some(2.0),
            lambda_d: Some(2.0),
            mu: Some(1000.0),
            pull_interval: Some(Duration::from_millis(20)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub lambda_p: f64,
    pub lambda_l: f64,
    pub lambda_d: f64,
    pub mu: f64,
    pub pull_interval_ms: f64,
    pub build_threads: usize,
    pub messages: usize,
    pub fragments_per_message: usize,
    pub window_s: f64,
    /// Fragments acknowledged by the recipient's mailbox relay in the window, per second.
    pub fragments_acked_per_s: f64,
    pub fragments_acked: u64,
    /// Real packets sent in the window (first sends and retransmissions), per second.
    pub real_sent_per_s: f64,
    pub cover_sent_per_s: f64,
    /// Retransmissions in the window, and per acknowledged fragment.
    pub retransmissions: u64,
    pub retransmissions_per_ack: f64,
    /// Messages still queued at the end of the window: > 0 means the backlog lasted, so the
    /// rate is a sustained one.
    pub backlog_messages_at_end: u64,
    /// CPU seconds per wall second of the client (this process).
    pub client_cpu_share: f64,
    /// ... and of the network's process (all relays), if it ran in a child process.
    pub network_cpu_share: Option<f64>,
    pub client_cpu_us_per_fragment: f64,
    /// Pulls of our own mailbox per second, and items (acks, loops) per pull.
    pub pulls_per_s: f64,
    pub items_per_pull: f64,
    pub seconds_to_queue: f64,
    pub load_avg_1m: f64,
    pub cpu_includes_network: bool,
}

/// One message of about `body_bytes` random (incompressible) bytes.
fn bulk_request(n: usize, body_bytes: usize) -> FederationRequest {
    let mut body = vec![0u8; body_bytes];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut body);
    FederationRequest {
        method: "PUT".into(),
        path: format!("/_matrix/federation/v1/send/bulk{n}"),
        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
        body,
    }
}

pub async fn run_throughput(cfg: &ThroughputConfig) -> Result<ThroughputReport> {
    let (net, directory_path, authority_key, includes) = cfg.network.open()?;
    let directory = read_directory(&directory_path)?;
    let edges: Vec<_> = directory
        .relays
        .iter()
        .filter(|r| r.roles.entry && r.roles.mailbox)
        .map(|r| r.id)
        .collect();
    let (&relay, &far) = match edges.as_slice() {
        [a, b, ..] => (a, b),
        [a] => (a, a),
        [] => bail!("the network has no entry/mailbox relay"),
    };
    // An offline recipient on the other mailbox relay: nobody pulls its mailbox.
    let recipient = SporeAddress {
        capability: None,
        mailbox_relays: vec![far],
        mailbox_key: MailboxKey::generate(&mut rand::rng()).public().to_bytes(),
    };
    let data = tempfile::tempdir()?;
    let transport = start_client(
        &data.path().join("client"),
        relay,
        &directory_path,
        authority_key,
        cfg.rates,
        cfg.build_threads,
    )
    .await?;
    let rates = transport.rates();
    let fragments_per_message = {
        let b = Bundle {
            origin: "bench.spore.test".into(),
            sender: Some(transport.address()),
            server_keys: None,
            body: BundleBody::Request {
                request_id: [0; 16],
                sequence: None,
                request: bulk_request(0, cfg.body_bytes),
                reply_surbs: Vec::new(),
            },
        };
        let padded = bundle::pack(&b, FRAGMENT_DATA_SIZE)?;
        spore_protocol::fragment::split([0; 16], &padded, FRAGMENT_DATA_SIZE)?.len()
    };

    // Queue the whole batch (each send returns once durable), then let the pipeline fill.
    let t_queue = Instant::now();
    for n in 0..cfg.messages {
        transport
            .send(&recipient, bulk_request(n, cfg.body_bytes))
            .await?;
    }
    let seconds_to_queue = t_queue.elapsed().as_secs_f64();
    // Warm-up: the window starts once acks flow (the network's links are open) plus 2 s.
    let flowing = Instant::now();
    while transport.stats().acks == 0 && flowing.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let me = std::process::id();
    let net_cpu = || net.as_ref().map(|n| process_cpu_secs(n.pid()));
    let (cpu0, ncpu0, s0, t0) = (
        process_cpu_secs(me),
        net_cpu(),
        transport.stats(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(cfg.seconds)).await;
    let (cpu, ncpu, s1, wall) = (
        process_cpu_secs(me) - cpu0,
        net_cpu().zip(ncpu0).map(|(b, a)| b - a),
        transport.stats(),
        t0.elapsed().as_secs_f64(),
    );
    transport.shutdown().await;
    drop(net);
    let acked = s1.acks - s0.acks;
    let retransmissions = s1.retransmissions - s0.retransmissions;
    let cover = (s1.drop_sent + s1.loops_sent) - (s0.drop_sent + s0.loops_sent);
    Ok(ThroughputReport {
        lambda_p: rates.lambda_p,
        lambda_l: rates.lambda_l,
        lambda_d: rates.lambda_d,
        mu: rates.mu,
        pull_interval_ms: rates.pull_interval.as_secs_f64() * 1e3,
        build_threads: cfg.build_threads,
        messages: cfg.messages,
        fragments_per_message,
        window_s: wall,
        fragments_acked_per_s: acked as f64 / wall,
        fragments_acked: acked,
        real_sent_per_s: (s1.real_sent - s0.real_sent) as f64 / wall,
        cover_sent_per_s: cover as f64 / wall,
        retransmissions,
        retransmissions_per_ack: if acked == 0 {
            0.0
        } else {
            retransmissions as f64 / acked as f64
        },
        backlog_messages_at_end: s1
            .messages_queued
            .saturating_sub(s1.messages_delivered + s1.messages_failed),
        client_cpu_share: cpu / wall,
        network_cpu_share: ncpu.map(|c| c / wall),
        client_cpu_us_per_fragment: if acked == 0 {
            0.0
        } else {
            cpu * 1e6 / acked as f64
        },
        pulls_per_s: (s1.pulls - s0.pulls) as f64 / wall,
        items_per_pull: (s1.items_pulled - s0.items_pulled) as f64
            / (s1.pulls - s0.pulls).max(1) as f64,
        seconds_to_queue,
        load_avg_1m: load_avg_1m(),
        cpu_includes_network: includes,
    })
}

/// Sustained-throughput target from issue 4.
pub const TARGET_FRAGMENTS_PER_S: f64 = 500.0;

pub fn render_throughput(r: &ThroughputReport) -> String {
    format!(
        "spore bench client --throughput: lambda_P {} + lambda_L {} + lambda_D {} per s, \
         mu {}, pulls every {:.0} ms, {} build threads\n\
         {:<36} {:>10.0} /s over {:.1} s   target >= {:.0}: {}\n\
         {:<36} {:>10.0} /s\n\
         {:<36} {:>10} ({:.3} per ack)\n\
         {:<36} {:>10}\n\
         {:<36} {:>9.1} %\n\
         {:<36} {:>9.1} %\n\
         {:<36} {:>10.0} us\n\
         {:<36} {:>10.2}\n",
        r.lambda_p,
        r.lambda_l,
        r.lambda_d,
        r.mu,
        r.pull_interval_ms,
        r.build_threads,
        "fragments acked",
        r.fragments_acked_per_s,
        r.window_s,
        TARGET_FRAGMENTS_PER_S,
        verdict(r.fragments_acked_per_s >= TARGET_FRAGMENTS_PER_S && r.backlog_messages_at_end > 0),
        "real packets sent",
        r.real_sent_per_s,
        "retransmissions",
        r.retransmissions,
        r.retransmissions_per_ack,
        "messages still queued at the end",
        r.backlog_messages_at_end,
        "client CPU (share of one core)",
        100.0 * r.client_cpu_share,
        "network CPU (all relays)",
        100.0 * r.network_cpu_share.unwrap_or(f64::NAN),
        "client CPU per acked fragment",
        r.client_cpu_us_per_fragment,
        "load average (1 min)",
        r.load_avg_1m,
    )
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
