//! Relay benchmarks (not timed tests). Prints one line per figure.
//!
//! * `bare`: parse + prepare (X25519) + unwrap of forward packets on one thread: the physical
//!   floor per core.
//! * `tcp/N workers`: the same packets sent by a client over a Noise link into a relay with N
//!   Sphinx workers, replay-checked, group-committed, forwarded over a Noise link to a sink;
//!   packets per second from the first write to the last packet at the sink, and the ratio to
//!   `bare`.
//! * `store`: mailbox inserts made durable with one flush per group.
//! * `million` (with SPORE_BENCH_MILLION=1): 10^6 stored packets, then resident memory.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use spore_protocol::directory::{
    DescriptorFields, Directory, NetworkParams, RelayDescriptor, Roles, SphinxKey,
};
use spore_protocol::link::{Frame, static_public_key};
use spore_protocol::packet::{self, IncomingPacket, PacketLimits, RouteHop};
use spore_protocol::params::{PACKET_SIZE, PAYLOAD_SIZE};
use spore_protocol::{MailboxId, RelayId};
use spore_relay::connection::{FrameReader, accept_handshake};
use spore_relay::{
    Database, DirectorySource, Link, MailboxLimits, MailboxStore, MemoryDirectory, Relay,
    RelayConfig, RelayKeys, RolesConfig,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) of one thread, from `/proc/<path>/stat` (100 Hz ticks).
fn cpu_secs(stat_path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(") ").map(|(_, a)| a) else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .map(|t| cpu_secs(&t.path().join("stat").to_string_lossy()))
        .sum()
}

struct Sink {
    addr: String,
    id: SigningKey,
    secret: [u8; 32],
    received: Arc<AtomicU64>,
}

async fn start_sink() -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let secret: [u8; 32] = rand::random();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok((t, _)) = accept_handshake(&mut s, &secret, Duration::from_secs(5)).await
                else {
                    return;
                };
                let (_sealer, opener) = t.split();
                let (rd, _wr) = s.into_split();
                let mut r = FrameReader::new(rd, opener);
                while let Ok(Some(f)) = r.read_frame().await {
                    if matches!(f, Frame::Packet(_)) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Sink {
        addr,
        id: SigningKey::from_bytes(&rand::random()),
        secret,
        received,
    }
}

fn sink_descriptor(sink: &Sink, epoch: u64) -> RelayDescriptor {
    RelayDescriptor::sign(
        DescriptorFields {
            address: sink.addr.clone(),
            roles: Roles {
                entry: false,
                mix: true,
                mailbox: false,
            },
            layer: 2,
            link_key: static_public_key(&sink.secret),
            sphinx_keys: vec![SphinxKey {
                epoch,
                public: rand::random(),
            }],
            published_at: now() - 10,
            expires_at: now() + 3600,
        },
        &sink.id,
    )
    .unwrap()
}

fn build_packets(keys: &RelayKeys, epoch: u64, sink: RelayId, n: usize) -> Vec<Vec<u8>> {
    let route = [
        RouteHop {
            id: keys.relay_id(),
            sphinx_key: keys.sphinx_public(epoch),
        },
        RouteHop {
            id: sink,
            sphinx_key: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([9u8; 32])),
        },
    ];
    (0..n)
        .map(|i| {
            packet::build_packet(
                &route,
                MailboxId([1; 32]),
                packet::random_surb_id(&mut rand::rng()),
                &[Duration::ZERO, Duration::ZERO],
                &(i as u64).to_be_bytes(),
            )
            .unwrap()
        })
        .collect()
}

/// (packets per wall second, packets per CPU second) on this thread.
fn bare_rate(keys: &RelayKeys, epoch: u64, packets: &[Vec<u8>]) -> (f64, f64) {
    let secret = keys.sphinx_secret(epoch);
    let limits = PacketLimits::default();
    let cpu0 = cpu_secs("/proc/thread-self/stat");
    let t0 = Instant::now();
    for p in packets {
        let prepared = IncomingPacket::parse(p, &limits)
            .unwrap()
            .prepare(&secret)
            .unwrap();
        std::hint::black_box(prepared.replay_tag());
        std::hint::black_box(prepared.unwrap(&limits).unwrap());
    }
    let n = packets.len() as f64;
    let cpu = cpu_secs("/proc/thread-self/stat") - cpu0;
    (n / t0.elapsed().as_secs_f64(), n / cpu.max(0.01))
}

/// (packets per wall second at the sink, packets per worker-thread CPU second).
async fn tcp_rate(
    keys: &RelayKeys,
    packets: &[Vec<u8>],
    workers: usize,
    sink: &Sink,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::for_test(dir.path());
    config.roles = RolesConfig {
        entry: true,
        mix: true,
        mailbox: false,
    };
    config.mix.workers = workers;
    config.limits.packets_per_sec = 10_000_000;
    config.limits.packet_burst = 10_000_000;
    config.limits.unwrap_queue = packets.len() + 16;
    config.limits.link_queue = packets.len() + 16;
    config.limits.delay_queue = packets.len() + 16;
    let md = MemoryDirectory::new();
    let relay = Relay::start(config, keys.clone(), DirectorySource::Memory(md.clone()))
        .await
        .unwrap();
    let epoch = relay.current_epoch();
    let doc = Directory {
        epoch,
        valid_after: now() - 60,
        valid_until: now() + 3600,
        params: NetworkParams::default(),
        relays: vec![relay.descriptor().unwrap(), sink_descriptor(sink, epoch)],
        signatures: vec![],
    };
    md.set(doc.to_bytes());
    relay.refresh_directory().await.unwrap();

    let start_count = sink.received.load(Ordering::Relaxed);
    let mut link = Link::connect(
        &relay.local_addr().to_string(),
        &rand::random(),
        Some(keys.link_public()),
    )
    .await
    .unwrap();
    let framed: Vec<Box<[u8; PACKET_SIZE]>> = packets
        .iter()
        .map(|p| p.clone().into_boxed_slice().try_into().unwrap())
        .collect();
    let cpu0 = threads_cpu("sphinx-");
    let t0 = Instant::now();
    for p in framed {
        link.writer.write_frame(&Frame::Packet(p)).await.unwrap();
    }
    link.writer.flush().await.unwrap();
    let target = start_count + packets.len() as u64;
    while sink.received.load(Ordering::Relaxed) < target {
        if t0.elapsed() > Duration::from_secs(120) {
            eprintln!("timeout: {:?}", relay.metrics());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t0.elapsed();
    let worker_cpu = threads_cpu("sphinx-") - cpu0;
    let got = sink.received.load(Ordering::Relaxed) - start_count;
    let m = relay.metrics();
    if m.dropped_total() > 0 {
        eprintln!("drops: {:?}", m.dropped);
    }
    relay.shutdown().await.unwrap();
    (
        got as f64 / elapsed.as_secs_f64(),
        got as f64 / worker_cpu.max(0.01),
    )
}

fn store_rate(items: u64, group: u64, mailboxes: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let r = store_rate_in(dir.path(), items, group, mailboxes);
    if std::env::var("SPORE_BENCH_MILLION").is_ok() && items >= 1_000_000 {
        // Restart in a fresh process: reopen the store (usage counters are rebuilt from the
        // time index) and report that process's memory.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env("SPORE_BENCH_REOPEN", dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    r
}

fn unlimited() -> MailboxLimits {
    MailboxLimits {
        quota_items: u64::MAX,
        quota_bytes: u64::MAX,
        disk_budget_bytes: u64::MAX,
    }
}

fn store_rate_in(path: &std::path::Path, items: u64, group: u64, mailboxes: u64) -> (f64, f64) {
    let db = Database::open(path).unwrap();
    let store = MailboxStore::open(&db, unlimited()).unwrap();
    let payload = [0xabu8; PAYLOAD_SIZE];
    let t0 = Instant::now();
    let mut i = 0u64;
    while i < items {
        for _ in 0..group.min(items - i) {
            let mut m = [0u8; 32];
            m[..8].copy_from_slice(&(i % mailboxes).to_be_bytes());
            store
                .insert(&MailboxId(m), &[1; 16], &payload, now())
                .unwrap()
                .unwrap();
            i += 1;
        }
        db.commit().unwrap();
    }
    let rate = items as f64 / t0.elapsed().as_secs_f64();
    (rate, rss_mb())
}

fn reopen(path: &str) {
    let t0 = Instant::now();
    let db = Database::open(std::path::Path::new(path)).unwrap();
    let store = MailboxStore::open(&db, unlimited()).unwrap();
    let (items, _) = store.total_usage();
    let mut m = [0u8; 32];
    m[..8].copy_from_slice(&7u64.to_be_bytes());
    let pulled = store.pull(&MailboxId(m), 16).unwrap().len();
    println!(
        "restart with {items} stored: open {:.1} s, first pull {pulled} items, resident memory {:.0} MB (fresh process)",
        t0.elapsed().as_secs_f64(),
        rss_mb()
    );
}

fn main() {
    if let Ok(path) = std::env::var("SPORE_BENCH_REOPEN") {
        reopen(&path);
        return;
    }
    let n: usize = std::env::var("SPORE_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keys = RelayKeys::generate();
    let epoch = now() / 3600;
    let sink = rt.block_on(start_sink());
    let sink_id = RelayId(sink.id.verifying_key().to_bytes());
    let t0 = Instant::now();
    let packets = build_packets(&keys, epoch, sink_id, n);
    println!(
        "build:           {:>9.0} packets/s (2-hop, one thread)",
        n as f64 / t0.elapsed().as_secs_f64()
    );
    let (bare, bare_cpu) = bare_rate(&keys, epoch, &packets);
    println!(
        "bare unwrap:     {bare:>9.0} packets/s wall, {bare_cpu:>7.0} per CPU second (one thread)"
    );
    // What the machine itself gives two threads (the ceiling for worker scaling here).
    let t0 = Instant::now();
    let halves: Vec<(f64, f64)> = std::thread::scope(|scope| {
        let (a, b) = packets.split_at(packets.len() / 2);
        let ha = scope.spawn(|| bare_rate(&keys, epoch, a));
        let hb = scope.spawn(|| bare_rate(&keys, epoch, b));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let bare2_wall = packets.len() as f64 / t0.elapsed().as_secs_f64();
    println!(
        "bare, 2 threads: {bare2_wall:>9.0} packets/s wall = {:.2}x one thread; per CPU second {:.0} and {:.0}",
        bare2_wall / bare,
        halves[0].1,
        halves[1].1
    );
    let mut rates = Vec::new();
    for workers in [1usize, 2] {
        let (r, per_cpu) = rt.block_on(tcp_rate(&keys, &packets, workers, &sink));
        println!(
            "tcp, {workers} worker(s): {r:>9.0} packets/s wall = {:.2} x bare per worker; \
             {per_cpu:>7.0} per worker CPU second = {:.2} x bare",
            r / bare / workers as f64,
            per_cpu / bare_cpu,
        );
        rates.push(r);
    }
    println!("scaling 1 -> 2 workers: {:.2}x (wall)", rates[1] / rates[0]);
    let (bare2, _) = bare_rate(&keys, epoch, &packets[..packets.len().min(2000)]);
    println!("bare unwrap again: {bare2:>7.0} packets/s wall (machine noise check)");
    {
        let dir = tempfile::tempdir().unwrap();
        let replay = spore_relay::ReplayCache::open(dir.path(), 0).unwrap();
        let tags: Vec<[u8; 32]> = (0..100_000).map(|_| rand::random()).collect();
        let t0 = Instant::now();
        let marked: Vec<(u64, [u8; 16])> = tags
            .iter()
            .map(|t| (1, replay.mark(1, t).unwrap()))
            .collect();
        let mark_us = t0.elapsed().as_secs_f64() * 1e6 / tags.len() as f64;
        let t0 = Instant::now();
        for chunk in marked.chunks(512) {
            replay.persist(chunk).unwrap();
        }
        let persist_us = t0.elapsed().as_secs_f64() * 1e6 / tags.len() as f64;
        println!(
            "replay tags:     {mark_us:>9.2} us per tag on a worker (memory), \
             {persist_us:.2} us in the commit thread (groups of 512, one fdatasync each)"
        );
    }
    let (store, rss) = store_rate(100_000, 512, 1000);
    println!(
        "mailbox store:   {store:>9.0} packets/s durable (group commit of 512), rss {rss:.0} MB"
    );
    if std::env::var("SPORE_BENCH_MILLION").is_ok() {
        let (rate, rss) = store_rate(1_000_000, 2048, 10_000);
        println!("million stored:  {rate:>9.0} packets/s; resident memory {rss:.0} MB");
    }
}
