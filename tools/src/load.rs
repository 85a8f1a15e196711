//! `spore load`: drive a network with a fixed packet rate and measure what comes out.
//!
//! The generator builds real forward packets (entry → 3 mixes → mailbox relay, exponential
//! per-hop delays from the directory's `mu`), each addressed to a mailbox the generator owns,
//! sends them at `rate` packets/s on one Noise link into the entry relay, and pulls that
//! mailbox until everything has arrived or the drain timeout passes. Throughput is what
//! reached the mailbox per second; loss is what never did.
//!
//! Each payload is a well-formed forward payload, as a client builds it: a real SURB-ack
//! followed by a sealed-fragment-sized body. The mailbox relay sends every ack back through
//! the mixes, so the load includes the ack traffic a real client causes. The acks are
//! addressed to the drop mailbox: they end as cover at a mailbox relay instead of piling up
//! in a mailbox nobody pulls. (An all-zero payload would carry an all-zero "SURB", which the
//! relay rightly counts as `packets_dropped_total{reason="bad_ack_surb"}` for every packet.)

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use spore_protocol::directory::Directory;
use spore_protocol::link::{Frame, PullSlot};
use spore_protocol::packet::{
    ForwardPayload, build_packet, build_surb, random_surb_id, sample_delays,
};
use spore_protocol::params::{
    FORWARD_HOPS, PACKET_SIZE, PULL_SLOTS, SEALED_FRAGMENT_SIZE, SURB_HOPS,
};
use spore_protocol::route::RouteSelector;
use spore_protocol::{MailboxId, MailboxKey, RelayId};
use spore_relay::Link;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Packets per second offered to the entry relay.
    pub rate: f64,
    /// How long to offer load.
    pub duration: Duration,
    /// How long to keep pulling after the last packet was sent.
    pub drain: Duration,
    /// Entry and mailbox relay (default: the first edge relay in the directory).
    pub entry: Option<RelayId>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub offered_rate: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub send_rate: f64,
    pub throughput_per_s: f64,
    pub elapsed_s: f64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The directory to load: a file, or an authority's (or mirror's) `http://` URL.
pub async fn read_directory(from: &str) -> Result<Directory> {
    let source = if from.starts_with("http://") {
        spore_relay::DirectorySource::Http(from.to_owned())
    } else {
        spore_relay::DirectorySource::File(from.into())
    };
    let bytes = source
        .fetch()
        .await
        .with_context(|| format!("cannot fetch the directory from {from}"))?
        .with_context(|| format!("no directory at {from} (yet)"))?;
    Directory::from_bytes(&bytes).with_context(|| format!("{from} is not a directory"))
}

async fn pull_all(link: &mut Link) -> Result<u64> {
    let mut total = 0u64;
    loop {
        link.send(&Frame::PullRequest).await?;
        let mut handles = Vec::new();
        for _ in 0..PULL_SLOTS {
            match link.recv().await? {
                Frame::PullSlot(PullSlot {
                    item: Some(item), ..
                }) => handles.push(item.handle),
                Frame::PullSlot(_) => {}
                other => bail!("unexpected frame while pulling: {other:?}"),
            }
        }
        if handles.is_empty() {
            return Ok(total);
        }
        total += handles.len() as u64;
        link.send(&Frame::Delete { handles }).await?;
        match link.recv().await? {
            Frame::DeleteDone { .. } => {}
            other => bail!("unexpected frame after delete: {other:?}"),
        }
    }
}

/// A forward payload as a client builds one: a SURB-ack (mixes → `ack_relay`, to the drop
/// mailbox) and a body the size of a sealed fragment. The body is zeros: only the
/// recipient opens it, and load's recipient only counts packets.
fn forward_payload(
    rng: &mut impl rand::CryptoRng,
    routes: &RouteSelector<'_>,
    ack_relay: &RelayId,
    mu: f64,
    max_delay: Duration,
) -> Result<Vec<u8>> {
    let ack_route = routes.surb_route(rng, ack_relay)?;
    let ack_delays = sample_delays(rng, mu, SURB_HOPS, max_delay)?;
    let (ack_surb, _recovery) = build_surb(
        &ack_route,
        MailboxId::DROP,
        random_surb_id(rng),
        &ack_delays,
    )?;
    Ok(ForwardPayload {
        ack_surb,
        sealed_fragment: vec![0; SEALED_FRAGMENT_SIZE],
    }
    .encode()?)
}

/// Runs the load against the network described by `directory`.
pub async fn run(directory: &Directory, cfg: &LoadConfig) -> Result<LoadReport> {
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        bail!("--rate must be a positive number of packets per second");
    }
    // Keys are chosen for the epoch at each packet's build time, not the directory's build
    // epoch: a directory is published ahead of its epoch and lives into the next one.
    let routes = RouteSelector::new(directory, directory.epoch_at(now_unix()));
    let entry = match cfg.entry {
        Some(e) => e,
        None => routes.random_entry(&mut rand::rng())?,
    };
    let desc = directory
        .relay(&entry)
        .context("entry relay is not in the directory")?;
    if !desc.roles.mailbox {
        bail!("the entry relay must also be a mailbox relay (load pulls its own mailbox there)");
    }
    let me = MailboxKey::generate(&mut rand::rng());
    let mut send_link = Link::connect(&desc.address, &rand::random(), Some(desc.link_key))
        .await
        .with_context(|| format!("cannot reach the entry relay at {}", desc.address))?;
    let mut pull_link =
        Link::connect(&desc.address, &me.secret_bytes(), Some(desc.link_key)).await?;
    let max_delay = Duration::from_millis(directory.params.max_delay_ms);
    let total = (cfg.rate * cfg.duration.as_secs_f64()).ceil() as u64;
    let interval = Duration::from_secs_f64(1.0 / cfg.rate);
    let started = Instant::now();
    let mut received = 0u64;
    let mut next_pull = Instant::now();
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let (route, delays, payload) = {
            let mut rng = rand::rng();
            let routes = RouteSelector::new(directory, directory.epoch_at(now_unix()));
            let route = routes.forward_route(&mut rng, &entry, &entry)?;
            let delays = sample_delays(&mut rng, directory.params.mu, FORWARD_HOPS, max_delay)?;
            (
                route,
                delays,
                forward_payload(&mut rng, &routes, &entry, directory.params.mu, max_delay)?,
            )
        };
        let packet = build_packet(
            &route,
            me.mailbox_id(),
            random_surb_id(&mut rand::rng()),
            &delays,
            &payload,
        )?;
        let packet: Box<[u8; PACKET_SIZE]> = packet
            .into_boxed_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("built packet has the wrong size"))?;
        send_link.writer.write_frame(&Frame::Packet(packet)).await?;
        if Instant::now() >= next_pull {
            send_link.writer.flush().await?;
            received += pull_all(&mut pull_link).await?;
            next_pull = Instant::now() + Duration::from_millis(250);
        }
    }
    send_link.writer.flush().await?;
    let send_elapsed = started.elapsed().as_secs_f64();
    let drain_until = Instant::now() + cfg.drain;
    while received < total && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        received += pull_all(&mut pull_link).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lost = total.saturating_sub(received);
    Ok(LoadReport {
        offered_rate: cfg.rate,
        sent: total,
        received,
        lost,
        loss_ratio: if total == 0 {
            0.0
        } else {
            lost as f64 / total as f64
        },
        send_rate: total as f64 / send_elapsed.max(1e-9),
        throughput_per_s: received as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
    })
}

pub fn render(r: &LoadReport) -> String {
    format!(
        "offered {:.0} pkt/s for {} packets: sent at {:.0} pkt/s, received {} ({:.0} pkt/s end to end), lost {} ({:.2}%), {:.1} s\n",
        r.offered_rate,
        r.sent,
        r.send_rate,
        r.received,
        r.throughput_per_s,
        r.lost,
        100.0 * r.loss_ratio,
        r.elapsed_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_testkit::{Testnet, TestnetConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_through_a_testnet_loses_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TestnetConfig::in_dir(tmp.path());
        cfg.mixes_per_layer = 1;
        cfg.params.mu = 200.0;
        let net = Testnet::start(cfg).await.unwrap();
        let report = run(
            net.directory(),
            &LoadConfig {
                rate: 100.0,
                duration: Duration::from_secs(1),
                drain: Duration::from_secs(10),
                entry: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(report.sent, 100);
        assert_eq!(report.received, 100, "{report:?}");
        // Every delivered packet carried a usable SURB-ack: no relay calls one malformed,
        // and the acks came back through the mixes to end as cover at a mailbox relay.
        let metrics = net.metrics();
        for (role, m) in &metrics {
            assert_eq!(m.dropped("bad_ack_surb"), 0, "{role:?}: {m:?}");
        }
        let mut acks = 0;
        for _ in 0..100 {
            acks = net
                .metrics()
                .iter()
                .map(|(_, m)| m.cover_received)
                .sum::<u64>();
            if acks >= 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(acks >= 100, "only {acks} acks came back as cover");
        net.shutdown().await.unwrap();
    }

    /// A directory published in the previous epoch (its `epoch` field one behind) still
    /// carries the current epoch's keys: load must use those, not lose everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_builds_for_the_current_epoch_not_the_directorys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TestnetConfig::in_dir(tmp.path());
        cfg.mixes_per_layer = 1;
        cfg.params.mu = 200.0;
        let net = Testnet::start(cfg).await.unwrap();
        let mut published_earlier = net.directory().clone();
        let now = now_unix();
        assert!(
            published_earlier
                .relays
                .iter()
                .all(|r| r.sphinx_key(published_earlier.epoch_at(now)).is_some())
        );
        published_earlier.epoch = published_earlier.epoch_at(now) - 1;
        let path = tmp.path().join("earlier.bin");
        std::fs::write(&path, published_earlier.to_bytes()).unwrap();
        let read = read_directory(path.to_str().unwrap()).await.unwrap();
        let report = run(
            &read,
            &LoadConfig {
                rate: 50.0,
                duration: Duration::from_secs(1),
                drain: Duration::from_secs(10),
                entry: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(report.received, report.sent, "{report:?}");
        net.shutdown().await.unwrap();
    }
}
