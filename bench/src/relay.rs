//! `spore bench relay`: the bare Sphinx floor against a real `spore-relay` process.
//!
//! Figure (a) is parse + prepare (X25519, replay tag) + unwrap of pre-built forward packets on
//! one thread, no I/O: what one core can do at most. Figure (b) runs the `spore-relay` binary
//! that sits next to this executable as a separate process (mix role, replay cache on, signed
//! directory in a file, delay 0) and times how fast it forwards the same packets from a load
//! generator (one Noise link; every frame sealed before the clock starts, then written 64 at
//! a time) to a sink (a Noise listener in this process that counts records without opening
//! them), with 1 and with 2 Sphinx workers.
//!
//! Building packets is the client's cost, so every packet is built before any timing starts.
//! The generator and the sink run in this process and need CPU too; on a 2-core machine they
//! compete with the relay, so the report also gives each rate per CPU second of the relay
//! process (read from `/proc/<pid>/stat`), which does not depend on who else runs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::bail;
use crate::error::{Context, Result};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use spore_protocol::MailboxId;
use spore_protocol::directory::{
    DescriptorFields, NetworkParams, RelayDescriptor, Roles, SphinxKey,
};
use spore_protocol::link::{Frame, WIRE_FRAME_LEN, static_public_key};
use spore_protocol::packet::{
    self, IncomingPacket, PacketLimits, RouteHop, Unwrapped, random_surb_id,
};
use spore_protocol::params::PACKET_SIZE;
use spore_relay::{FrameReader, accept_handshake};
use spore_relay::{Link, RelayConfig, RelayKeys, RolesConfig};
use spore_testkit::relay_process::{self, KilledOnDrop};
use tokio::io::AsyncReadExt;

use crate::{
    now_unix, process_cpu_secs, thread_cpu_secs, thread_groups_cpu_secs, threads_cpu_secs, verdict,
};

/// Targets from issue 8.
pub const TARGET_RATIO_1CORE: f64 = 0.85;
pub const TARGET_SCALING_2CORE: f64 = 1.7;

/// Packets sent (untimed) before each timed run: opens the relay's link to the sink and
/// warms caches.
const WARMUP: usize = 200;

#[derive(Debug, Clone)]
pub struct RelayBenchConfig {
    /// Packets per timed run.
    pub packets: usize,
    /// The `spore-relay` binary to run.
    pub relay_bin: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    pub packets: usize,
    /// Bare forward unwrap (parse + X25519 + replay tag + unwrap), one thread, wall clock.
    pub bare_unwrap_per_s: f64,
    /// The same per CPU second of that thread.
    pub bare_unwrap_per_cpu_s: f64,
    /// Two threads unwrapping halves of the packets: what this machine gives 2 cores.
    pub bare_unwrap_2threads_per_s: f64,
    /// `bare_unwrap_2threads_per_s / bare_unwrap_per_s`: the ceiling for `scaling_2core` here.
    pub machine_scaling_2threads: f64,
    /// Packets/s arriving at the sink through a `spore-relay` process with 1 Sphinx worker.
    pub relay_per_s_1core: f64,
    /// Same with 2 workers.
    pub relay_per_s_2core: f64,
    /// `relay_per_s_1core / bare_unwrap_per_s`.
    pub ratio_1core: f64,
    /// `relay_per_s_2core / relay_per_s_1core`.
    pub scaling_2core: f64,
    /// Packets per CPU second of the whole relay process (all threads), 1 worker.
    pub relay_per_cpu_s_1core: f64,
    /// Same with 2 workers.
    pub relay_per_cpu_s_2core: f64,
    /// `relay_per_cpu_s_1core / bare_unwrap_per_cpu_s`: the share of the relay's CPU that is
    /// the Sphinx floor, whoever else shares the machine.
    pub ratio_1core_cpu: f64,
    /// Share of the relay process's CPU spent in its Sphinx worker threads (1 worker run).
    pub worker_cpu_share_1core: f64,
    /// Share of the relay process's CPU per thread group (1 worker run): `sphinx` workers,
    /// `tokio-rt-worker` (links), `group-commit`, `sled-io`, …
    pub relay_cpu_by_thread_1core: BTreeMap<String, f64>,
    /// CPU seconds the generator and sink (this process) used per relay CPU second (1 worker).
    pub load_cpu_per_relay_cpu_1core: f64,
    /// Packets that never reached the sink (0 in a good run).
    pub lost_1core: u64,
    pub lost_2core: u64,
    /// Bare unwrap measured again after the relay runs (noise check).
    pub bare_unwrap_again_per_s: f64,
    pub cores: usize,
}

/// One timed run of the relay process.
#[derive(Debug, Clone)]
pub struct RelayRun {
    pub per_s: f64,
    pub relay_cpu_s: f64,
    pub worker_cpu_s: f64,
    pub load_cpu_s: f64,
    pub delivered: u64,
    pub lost: u64,
    /// Share of the relay's CPU per thread group over the run.
    pub by_thread: BTreeMap<String, f64>,
}

/// `spore-relay` next to the running executable, or an error saying how to build it.
pub fn relay_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    // Test binaries live in target/<profile>/deps; the binaries one level up.
    let mut candidates = vec![exe.with_file_name("spore-relay")];
    if let Some(parent) = exe.parent().and_then(Path::parent) {
        candidates.push(parent.join("spore-relay"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no spore-relay binary next to {}: build it with `cargo build --release --bins` \
             (same CARGO_TARGET_DIR) and run `spore bench` from that target directory",
                exe.display()
            )
        })
}

/// Arrival time and first 32 bytes of every packet the sink has read.
pub type Arrivals = Arc<Mutex<Vec<(Instant, [u8; 32])>>>;

/// A Noise listener standing in for the next hop: counts packets and records, for each, the
/// arrival time and the first 32 bytes (the next header's group element, unique per packet).
pub struct Sink {
    pub addr: SocketAddr,
    identity: SigningKey,
    link_secret: [u8; 32],
    pub received: Arc<AtomicU64>,
    pub arrivals: Arrivals,
}

/// What the sink does with each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// Open (authenticate and decrypt) every frame and record its arrival: for latency.
    Open,
    /// Count whole records without opening them: for throughput, so that the sink's own
    /// decryption does not take CPU from the relay under test on a small machine.
    Count,
}

impl Sink {
    pub async fn start(mode: SinkMode) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let link_secret: [u8; 32] = rand::random();
        let received = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (counter, log) = (received.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (counter, log) = (counter.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok((t, _)) =
                        accept_handshake(&mut s, &link_secret, Duration::from_secs(5)).await
                    else {
                        return;
                    };
                    let (_sealer, opener) = t.split();
                    let (mut rd, _wr) = s.into_split();
                    if mode == SinkMode::Count {
                        let mut buf = vec![0u8; 64 * WIRE_FRAME_LEN];
                        let mut bytes = 0usize;
                        while let Ok(n) = rd.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let before = bytes / WIRE_FRAME_LEN;
                            bytes += n;
                            counter.fetch_add(
                                (bytes / WIRE_FRAME_LEN - before) as u64,
                                Ordering::Relaxed,
                            );
                        }
                        return;
                    }
                    let mut r = FrameReader::new(rd, opener);
                    while let Ok(Some(f)) = r.read_frame().await {
                        if let Frame::Packet(p) = f {
                            let now = Instant::now();
                            let mut alpha = [0u8; 32];
                            alpha.copy_from_slice(&p[..32]);
                            log.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((now, alpha));
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            identity: SigningKey::from_bytes(&rand::random()),
            link_secret,
            received,
            arrivals,
        })
    }

    pub fn id(&self) -> spore_protocol::RelayId {
        spore_protocol::RelayId(self.identity.verifying_key().to_bytes())
    }

    fn descriptor(&self, epoch: u64, now: u64) -> Result<RelayDescriptor> {
        let roles = Roles {
            entry: false,
            mix: true,
            mailbox: false,
        };
        let address = self.addr.to_string();
        stand_in_descriptor(
            &self.identity,
            &self.link_secret,
            address,
            roles,
            2,
            epoch,
            now,
        )
    }
}

/// A directory entry for a bench stand-in (the sink, the generator): signed and with its link
/// key, so relays accept it, but with a Sphinx key nobody holds, since nothing is routed
/// through it as a hop.
fn stand_in_descriptor(
    identity: &SigningKey,
    link_secret: &[u8; 32],
    address: String,
    roles: Roles,
    layer: u8,
    epoch: u64,
    now: u64,
) -> Result<RelayDescriptor> {
    let fields = DescriptorFields {
        address,
        roles,
        layer,
        link_key: static_public_key(link_secret),
        sphinx_keys: vec![SphinxKey {
            epoch,
            public: rand::random(),
        }],
        published_at: now,
        expires_at: now + 3600,
    };
    Ok(RelayDescriptor::sign(fields, identity)?)
}

/// The generator's identity: listed in the directory as an entry relay, because a mix accepts
/// packets only from keys the directory names.
pub struct Generator {
    identity: SigningKey,
    pub link_secret: [u8; 32],
}

impl Generator {
    pub fn new() -> Self {
        Self {
            identity: SigningKey::from_bytes(&rand::random()),
            link_secret: rand::random(),
        }
    }

    fn descriptor(&self, epoch: u64, now: u64) -> Result<RelayDescriptor> {
        let roles = Roles {
            entry: true,
            mix: false,
            mailbox: false,
        };
        // Never dialled: nothing is routed to the generator.
        let address = "127.0.0.1:9".to_owned();
        stand_in_descriptor(
            &self.identity,
            &self.link_secret,
            address,
            roles,
            0,
            epoch,
            now,
        )
    }
}

impl Default for Generator {
    fn default() -> Self {
        Self::new()
    }
}

/// A `spore-relay run` child process; killed on drop.
pub struct RelayProcess {
    child: KilledOnDrop,
    pub addr: SocketAddr,
    /// The relay's Prometheus endpoint (loopback).
    pub metrics_addr: SocketAddr,
    pub link_public: [u8; 32],
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// Writes keys, relay.toml (mix role, layer 1, `workers` Sphinx threads, queues large
    /// enough for `queue` packets, no per-link rate limit) and a directory signed by a fresh
    /// authority listing the relay, the sink and the generator; then starts the relay and
    /// waits until it accepts connections.
    pub fn start(
        bin: &Path,
        keys: &RelayKeys,
        workers: usize,
        queue: usize,
        sink: &Sink,
        generator: &Generator,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let params = NetworkParams::default();
        let now = now_unix();
        let epoch = now / params.epoch_length_secs;
        // The relay process must use the very epoch keys the packets were built for, so it
        // opens the caller's key file (and its epoch-key folder), not a copy.
        let Some(key_file) = keys.key_file().map(Path::to_owned) else {
            bail!("the bench's relay keys must come from a key file (see bench_keys)");
        };
        let free_port = || -> Result<SocketAddr> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            Ok(l.local_addr()?)
        };
        let addr = free_port()?;
        let metrics_addr = free_port()?;
        let authority_key = SigningKey::from_bytes(&rand::random());
        let mut config = RelayConfig::for_test(dir.path());
        config.listen = addr;
        config.metrics_listen = Some(metrics_addr);
        config.layer = 1;
        config.roles = RolesConfig {
            entry: false,
            mix: true,
            mailbox: false,
        };
        config.key_file = key_file;
        config.mix.workers = workers;
        config.mix.epoch_length_secs = params.epoch_length_secs;
        config.mix.max_delay_ms = params.max_delay_ms;
        let big = queue + WARMUP + 1024;
        config.limits.packets_per_sec = 100_000_000;
        config.limits.packet_burst = 100_000_000;
        config.limits.unwrap_queue = big;
        config.limits.link_queue = big;
        config.limits.delay_queue = big;
        config.directory.path = Some(dir.path().join("directory.bin"));
        config.directory.authorities = vec![hex::encode(authority_key.verifying_key().to_bytes())];
        config.directory.threshold = 1;
        config.directory.refresh_secs = 60;
        config.validate()?;
        let descs = vec![
            spore_relay::build_descriptor(&config, keys, &addr.to_string(), now)?,
            sink.descriptor(epoch, now)?,
            generator.descriptor(epoch, now)?,
        ];
        let directory = spore_testkit::signed_directory(descs, params, &authority_key, now, 3600)?;
        std::fs::write(dir.path().join("directory.bin"), directory.to_bytes())?;
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let log = dir.path().join("relay.log");
        let child = relay_process::run_command(bin, dir.path())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut me = Self {
            child: KilledOnDrop(child),
            addr,
            metrics_addr,
            link_public: keys.link_public(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = me.child.0.try_wait()? {
                bail!("spore-relay exited at start ({status}): {}", me.log_tail());
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("spore-relay did not listen on {addr}: {}", me.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// Fresh relay keys in a key file of their own (kept while the returned folder lives), so a
/// relay process started on them shares their per-epoch Sphinx keys.
pub fn bench_keys() -> Result<(RelayKeys, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.key");
    RelayKeys::generate().save(&path)?;
    Ok((RelayKeys::load(&path)?, dir))
}

/// Forward packets for `keys`'s relay (epoch of now) whose next hop is `next`, delay 0.
pub fn build_packets(
    keys: &RelayKeys,
    next: spore_protocol::RelayId,
    n: usize,
) -> Result<Vec<Vec<u8>>> {
    build_delayed_packets(keys, next, &vec![Duration::ZERO; n])
}

/// Like [`build_packets`], packet `i` asking the relay under test to hold it for `delays[i]`.
pub fn build_delayed_packets(
    keys: &RelayKeys,
    next: spore_protocol::RelayId,
    delays: &[Duration],
) -> Result<Vec<Vec<u8>>> {
    let epoch = now_unix() / NetworkParams::default().epoch_length_secs;
    let route = [
        RouteHop {
            id: keys.relay_id(),
            sphinx_key: keys.sphinx_public(epoch),
        },
        RouteHop {
            id: next,
            sphinx_key: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
                rand::random::<[u8; 32]>(),
            )),
        },
    ];
    delays
        .iter()
        .enumerate()
        .map(|(i, delay)| {
            Ok(packet::build_packet(
                &route,
                MailboxId([1; 32]),
                random_surb_id(&mut rand::rng()),
                &[*delay, Duration::ZERO],
                &(i as u64).to_be_bytes(),
            )?)
        })
        .collect()
}

/// (packets per wall second, packets per CPU second) unwrapping `packets` on this thread.
pub fn bare_rate(keys: &RelayKeys, packets: &[Vec<u8>]) -> Result<(f64, f64)> {
    let epoch = now_unix() / NetworkParams::default().epoch_length_secs;
    let secret = keys.sphinx_secret(epoch);
    let limits = PacketLimits::default();
    let cpu0 = thread_cpu_secs();
    let t0 = Instant::now();
    for p in packets {
        let prepared = IncomingPacket::parse(p, &limits)?.prepare(&secret)?;
        std::hint::black_box(prepared.replay_tag());
        std::hint::black_box(prepared.unwrap(&limits)?);
    }
    let n = packets.len() as f64;
    let cpu = thread_cpu_secs() - cpu0;
    Ok((n / t0.elapsed().as_secs_f64(), n / cpu.max(0.01)))
}

/// The first 32 bytes each packet has after this relay's unwrap (what the sink will see).
pub fn next_hop_alphas(keys: &RelayKeys, packets: &[Vec<u8>]) -> Result<HashMap<[u8; 32], usize>> {
    let epoch = now_unix() / NetworkParams::default().epoch_length_secs;
    let secret = keys.sphinx_secret(epoch);
    let limits = PacketLimits::default();
    let mut map = HashMap::with_capacity(packets.len());
    for (i, p) in packets.iter().enumerate() {
        match IncomingPacket::parse(p, &limits)?
            .prepare(&secret)?
            .unwrap(&limits)?
        {
            Unwrapped::Forward { packet, .. } => {
                let mut alpha = [0u8; 32];
                alpha.copy_from_slice(packet.get(..32).context("short packet")?);
                map.insert(alpha, i);
            }
            Unwrapped::Final { .. } => bail!("bench packet unwrapped as a final hop"),
        }
    }
    Ok(map)
}

pub fn to_frames(packets: &[Vec<u8>]) -> Result<Vec<Frame>> {
    packets
        .iter()
        .map(|p| {
            let b: Box<[u8; PACKET_SIZE]> =
                p.clone().into_boxed_slice().try_into().map_err(|_| {
                    crate::error::BenchError::Failed("packet has the wrong size".into())
                })?;
            Ok(Frame::Packet(b))
        })
        .collect()
}

/// Waits until the sink has counted `target` packets or `timeout` passes.
pub async fn wait_for(sink: &Sink, target: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while sink.received.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    true
}

/// Connects the generator to `relay` and pushes `warmup` untimed, waiting for them at the sink.
pub async fn connect_and_warm(
    relay: &RelayProcess,
    generator: &Generator,
    sink: &Sink,
    warmup: &[Frame],
) -> Result<Link> {
    let mut link = Link::connect(
        &relay.addr.to_string(),
        &generator.link_secret,
        Some(relay.link_public),
    )
    .await
    .context("generator cannot connect to the relay")?;
    let target = sink.received.load(Ordering::Relaxed) + warmup.len() as u64;
    for f in warmup {
        link.writer.write_frame(f).await?;
    }
    link.writer.flush().await?;
    if !wait_for(sink, target, Duration::from_secs(20)).await {
        bail!(
            "warm-up packets did not reach the sink ({} of {}): {}",
            sink.received.load(Ordering::Relaxed),
            target,
            relay.log_tail()
        );
    }
    Ok(link)
}

/// Starts a relay process with `workers` workers and times `frames` through it, all at once.
pub async fn relay_run(
    bin: &Path,
    keys: &RelayKeys,
    workers: usize,
    sink: &Sink,
    generator: &Generator,
    warmup: &[Frame],
    frames: &[Frame],
) -> Result<RelayRun> {
    let relay = RelayProcess::start(bin, keys, workers, frames.len(), sink, generator)?;
    let mut link = connect_and_warm(&relay, generator, sink, warmup).await?;
    // Sealed before the clock starts: the generator's link encryption is the client's cost,
    // and on 2 cores it would otherwise take CPU from the relay during the timed run.
    let mut sealed = Vec::with_capacity(frames.len() * WIRE_FRAME_LEN);
    for f in frames {
        link.writer.seal_to(f, &mut sealed)?;
    }
    let pid = relay.pid();
    let me = std::process::id();
    let start = sink.received.load(Ordering::Relaxed);
    let target = start + frames.len() as u64;
    let (relay0, worker0, load0) = (
        process_cpu_secs(pid),
        threads_cpu_secs(pid, "sphinx-"),
        process_cpu_secs(me),
    );
    let groups0 = thread_groups_cpu_secs(pid);
    let t0 = Instant::now();
    for chunk in sealed.chunks(64 * WIRE_FRAME_LEN) {
        link.writer.write_sealed(chunk).await?;
    }
    link.writer.flush().await?;
    wait_for(
        sink,
        target,
        Duration::from_secs(30 + frames.len() as u64 / 500),
    )
    .await;
    // The last arrival, not the moment the waiting loop noticed it.
    let got = sink.received.load(Ordering::Relaxed) - start;
    let elapsed = t0.elapsed().as_secs_f64();
    let (relay_cpu, worker_cpu, load_cpu) = (
        process_cpu_secs(pid) - relay0,
        threads_cpu_secs(pid, "sphinx-") - worker0,
        process_cpu_secs(me) - load0,
    );
    let by_thread = thread_groups_cpu_secs(pid)
        .into_iter()
        .map(|(g, c)| {
            let share = (c - groups0.get(&g).copied().unwrap_or(0.0)) / relay_cpu.max(0.01);
            (g, (share * 1000.0).round() / 1000.0)
        })
        .filter(|(_, share)| *share > 0.0)
        .collect();
    drop(link);
    drop(relay);
    Ok(RelayRun {
        by_thread,
        per_s: got as f64 / elapsed,
        relay_cpu_s: relay_cpu,
        worker_cpu_s: worker_cpu,
        load_cpu_s: load_cpu,
        delivered: got,
        lost: frames.len() as u64 - got,
    })
}

/// The whole `spore bench relay`.
pub async fn run(cfg: &RelayBenchConfig) -> Result<RelayReport> {
    if cfg.packets < 100 {
        bail!("--packets must be at least 100");
    }
    let (keys, _key_dir) = bench_keys()?;
    let sink = Sink::start(SinkMode::Count).await?;
    let generator = Generator::new();
    let all = build_packets(&keys, sink.id(), cfg.packets + WARMUP)?;
    let (warm, timed) = all.split_at(WARMUP);
    let (bare, bare_cpu) = bare_rate(&keys, timed)?;
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let (a, b) = timed.split_at(timed.len() / 2);
        let ha = s.spawn(|| bare_rate(&keys, a));
        let hb = s.spawn(|| bare_rate(&keys, b));
        ha.join()
            .map_err(|_| crate::error::BenchError::Failed("bench thread panicked".into()))??;
        hb.join()
            .map_err(|_| crate::error::BenchError::Failed("bench thread panicked".into()))??;
        Ok(())
    })?;
    let bare2 = timed.len() as f64 / t0.elapsed().as_secs_f64();
    let (warm, timed) = (to_frames(warm)?, to_frames(timed)?);
    let one = relay_run(&cfg.relay_bin, &keys, 1, &sink, &generator, &warm, &timed).await?;
    let two = relay_run(&cfg.relay_bin, &keys, 2, &sink, &generator, &warm, &timed).await?;
    let (again, _) = bare_rate(&keys, &all[WARMUP..WARMUP + cfg.packets.min(3000)])?;
    let per_cpu = |r: &RelayRun| r.delivered as f64 / r.relay_cpu_s.max(0.01);
    Ok(RelayReport {
        packets: cfg.packets,
        bare_unwrap_per_s: bare,
        bare_unwrap_per_cpu_s: bare_cpu,
        bare_unwrap_2threads_per_s: bare2,
        machine_scaling_2threads: bare2 / bare,
        relay_per_s_1core: one.per_s,
        relay_per_s_2core: two.per_s,
        ratio_1core: one.per_s / bare,
        scaling_2core: two.per_s / one.per_s,
        relay_per_cpu_s_1core: per_cpu(&one),
        relay_per_cpu_s_2core: per_cpu(&two),
        ratio_1core_cpu: per_cpu(&one) / bare_cpu,
        worker_cpu_share_1core: one.worker_cpu_s / one.relay_cpu_s.max(0.01),
        relay_cpu_by_thread_1core: one.by_thread.clone(),
        load_cpu_per_relay_cpu_1core: one.load_cpu_s / one.relay_cpu_s.max(0.01),
        lost_1core: one.lost,
        lost_2core: two.lost,
        bare_unwrap_again_per_s: again,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

pub fn render(r: &RelayReport) -> String {
    format!(
        "spore bench relay: {} packets per run, {} cores\n\
         {:<44} {:>10.0} pkt/s  ({:.0} per CPU s)\n\
         {:<44} {:>10.0} pkt/s  = {:.2}x one thread\n\
         {:<44} {:>10.0} pkt/s  ({:.0} per relay CPU s, lost {})\n\
         {:<44} {:>10.0} pkt/s  ({:.0} per relay CPU s, lost {})\n\
         {:<44} {:>10.2}  target >= {TARGET_RATIO_1CORE}: {}\n\
         {:<44} {:>10.2}  (relay CPU vs bare CPU)\n\
         {:<44} {:>10.2}  target >= {TARGET_SCALING_2CORE}: {} (machine ceiling {:.2})\n\
         {:<44} {:>10.2}\n\
         {:<44} {:>10.2}\n\
         {:<44} {:>10.0} pkt/s\n\
         relay CPU by thread (1 worker): {}\n",
        r.packets,
        r.cores,
        "bare unwrap, one thread (no I/O)",
        r.bare_unwrap_per_s,
        r.bare_unwrap_per_cpu_s,
        "bare unwrap, two threads",
        r.bare_unwrap_2threads_per_s,
        r.machine_scaling_2threads,
        "spore-relay process, 1 worker",
        r.relay_per_s_1core,
        r.relay_per_cpu_s_1core,
        r.lost_1core,
        "spore-relay process, 2 workers",
        r.relay_per_s_2core,
        r.relay_per_cpu_s_2core,
        r.lost_2core,
        "ratio_1core (relay 1 worker / bare, wall)",
        r.ratio_1core,
        verdict(r.ratio_1core >= TARGET_RATIO_1CORE),
        "ratio_1core_cpu",
        r.ratio_1core_cpu,
        "scaling_2core (2 workers / 1 worker, wall)",
        r.scaling_2core,
        verdict(r.scaling_2core >= TARGET_SCALING_2CORE),
        r.machine_scaling_2threads,
        "worker share of relay CPU (1 worker)",
        r.worker_cpu_share_1core,
        "generator+sink CPU per relay CPU (1 worker)",
        r.load_cpu_per_relay_cpu_1core,
        "bare unwrap again (noise check)",
        r.bare_unwrap_again_per_s,
        r.relay_cpu_by_thread_1core
            .iter()
            .map(|(g, v)| format!("{g} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}
