//! `spore bench catchup`: how fast a client that comes back online drains its mailbox.
//!
//! A local network runs in a child process (`spore testnet up`). A sender transport at bulk
//! rates fills two offline recipients' mailboxes on the same mailbox relay (one item each
//! message: a small request fits one fragment) and waits until every item is acknowledged,
//! i.e. stored. Then each recipient comes online in turn at the network's default rates: the
//! first with catch-up pulls (the default), the second with `catch_up = false`, which keeps
//! the fixed pull cadence (`PULL_SLOTS` items per pull interval). The figure is items handed
//! to the application per second, from the first item to the last, for each, and their ratio
//! measured in the same run.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use spore_client::{InboundId, RateOverrides, Transport};
use spore_protocol::{FederationRequest, MailboxKey};

use crate::client::{Network, ThroughputConfig, load_avg_1m, start_transport};
use crate::error::Result;
use crate::error::bail;
use crate::{read_directory, verdict};

/// Issue 17: a returning client drains 10,000 queued items at this rate or better.
pub const TARGET_ITEMS_PER_S: f64 = 500.0;

#[derive(Debug, Clone)]
pub struct CatchUpConfig {
    pub network: Network,
    /// Items queued for the catch-up recipient.
    pub items: usize,
    /// Seconds the fixed-cadence recipient is measured over (it is queued enough for twice
    /// its expected rate over this window, so its pulls stay full).
    pub baseline_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainFigures {
    /// Items handed to the application.
    pub items: usize,
    /// From the transport's start to its first item (link set-up and the first pull).
    pub first_item_s: f64,
    /// From the first item to the last one counted.
    pub drain_s: f64,
    pub items_per_s: f64,
    pub pulls: u64,
    pub catch_up_pulls: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchUpReport {
    pub pull_interval_ms: f64,
    pub seconds_to_fill: f64,
    pub catch_up: DrainFigures,
    pub fixed_cadence: DrainFigures,
    /// Catch-up items/s over fixed-cadence items/s, same run.
    pub speedup: f64,
    pub load_avg_1m: f64,
}

/// A line on stderr every few seconds: a 10,000-item run takes minutes, and one that stalls
/// should say where.
struct Progress {
    next: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Progress {
            next: Instant::now() + Self::EVERY,
        }
    }

    fn tick(&mut self, line: impl FnOnce() -> String) {
        if Instant::now() >= self.next {
            self.next = Instant::now() + Self::EVERY;
            eprintln!("  {}", line());
        }
    }
}

fn small_request(n: usize) -> FederationRequest {
    FederationRequest {
        method: "PUT".into(),
        path: format!("/_matrix/federation/v1/send/catchup{n}"),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"pdus":[],"edus":[]}"#.to_vec(),
    }
}

/// Takes inbound requests from `transport` until `want` distinct ones arrived or `window`
/// (after the first) is over. Each is acked as soon as it is taken, by a task beside the
/// reader that acks whatever has accumulated while its previous ack was being flushed (one
/// transaction and one flush for all of them, `Transport::ack_many`), as an application that
/// hands requests on without waiting for each ack's `fsync` would; a drain that awaited each
/// ack before reading the next would measure the disk's flush latency, not the transport.
async fn drain(transport: &Transport, want: usize, window: Duration) -> Result<DrainFigures> {
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<InboundId>();
    let acker = {
        let transport = transport.clone();
        tokio::spawn(async move {
            while let Some(id) = ack_rx.recv().await {
                let mut batch = vec![id];
                while let Ok(id) = ack_rx.try_recv() {
                    batch.push(id);
                }
                transport.ack_many(&batch).await?;
            }
            Ok::<_, spore_client::ClientError>(())
        })
    };
    let figures = read_items(transport, want, window, &ack_tx).await;
    drop(ack_tx);
    match acker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => bail!("the ack task failed: {e}"),
    }
    figures
}

async fn read_items(
    transport: &Transport,
    want: usize,
    window: Duration,
    acks: &tokio::sync::mpsc::UnboundedSender<InboundId>,
) -> Result<DrainFigures> {
    let start = Instant::now();
    let s0 = transport.stats();
    let mut seen = HashSet::new();
    let mut first: Option<Instant> = None;
    let mut last = start;
    let give_up = Duration::from_secs(600);
    let mut progress = Progress::new();
    while seen.len() < want {
        progress.tick(|| {
            let s = transport.stats();
            format!(
                "drain: {} of {want} items, {} pulls ({} catch-up)",
                seen.len(),
                s.pulls - s0.pulls,
                s.catch_up_pulls - s0.catch_up_pulls
            )
        });
        let left = match first {
            Some(f) => window.saturating_sub(f.elapsed()),
            None => give_up.saturating_sub(start.elapsed()),
        };
        if left.is_zero() {
            break;
        }
        // Wakes at least every few seconds so a stall still prints progress (`incoming`
        // loses nothing when cancelled: its cursor moves only with the item it returns).
        let wait = left.min(Progress::EVERY);
        let request = match tokio::time::timeout(wait, transport.incoming()).await {
            Ok(r) => r?,
            Err(_) if wait < left => continue,
            Err(_) => break,
        };
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        seen.insert(request.request.path.clone());
        if acks.send(request.id).is_err() {
            bail!("the ack task stopped");
        }
    }
    let s1 = transport.stats();
    let Some(first) = first else {
        bail!("no item arrived within {} s", give_up.as_secs());
    };
    let drain_s = last.duration_since(first).as_secs_f64();
    Ok(DrainFigures {
        items: seen.len(),
        first_item_s: first.duration_since(start).as_secs_f64(),
        drain_s,
        items_per_s: seen.len().saturating_sub(1) as f64 / drain_s.max(1e-3),
        pulls: s1.pulls - s0.pulls,
        catch_up_pulls: s1.catch_up_pulls - s0.catch_up_pulls,
    })
}

pub async fn run(cfg: &CatchUpConfig) -> Result<CatchUpReport> {
    let (_net, directory_path, authority_key, _) = cfg.network.open()?;
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
    let pull_interval = Duration::from_millis(directory.params.pull_interval_ms);
    let data = tempfile::tempdir()?;
    let fast_key = MailboxKey::generate(&mut rand::rng());
    let slow_key = MailboxKey::generate(&mut rand::rng());
    // Per-contact capabilities (issue 16): each recipient hands its senders capabilities,
    // registered with its mailbox relay, as a homeserver does at first contact; the backlog
    // comes from several peers (a capability holds at most CAPABILITY_QUOTA_ITEMS).
    let peers = cfg.items.div_ceil(5_000).max(1);
    let capabilities = |dir: &'static str, key: MailboxKey, n: usize| {
        let path = data.path().join(dir);
        let directory_path = directory_path.clone();
        async move {
            let t = start_transport(
                &path,
                key,
                far,
                &directory_path,
                authority_key,
                RateOverrides::default(),
                1,
                true,
            )
            .await?;
            let mut addresses = Vec::new();
            for peer in 0..n {
                addresses.push(
                    t.capability_address_for(&format!("bench-peer-{peer}"))
                        .await?,
                );
            }
            // Registration rides the next pulls; a few pull intervals are plenty.
            tokio::time::sleep(pull_interval * 6 + Duration::from_secs(1)).await;
            t.shutdown().await;
            Ok::<_, crate::BenchError>(addresses)
        }
    };
    let fast_addresses = capabilities("fast", fast_key.clone(), peers).await?;
    let slow_addresses = capabilities("slow", slow_key.clone(), 1).await?;
    // Twice what the fixed cadence can take in the window, so its pulls stay full.
    let per_pull = spore_protocol::params::PULL_SLOTS as f64;
    let slow_items = (2.0 * cfg.baseline_seconds * per_pull / pull_interval.as_secs_f64().max(1e-3))
        .ceil() as usize;

    let sender = start_transport(
        &data.path().join("sender"),
        MailboxKey::generate(&mut rand::rng()),
        relay,
        &directory_path,
        authority_key,
        ThroughputConfig::bulk_rates(),
        2,
        true,
    )
    .await?;
    let t_fill = Instant::now();
    for n in 0..cfg.items.max(slow_items) {
        if n < cfg.items {
            let to = &fast_addresses[n % fast_addresses.len()];
            sender.send(to, small_request(n)).await?;
        }
        if n < slow_items {
            sender.send(&slow_addresses[0], small_request(n)).await?;
        }
    }
    let queued = (cfg.items + slow_items) as u64;
    let fill_deadline = Instant::now() + Duration::from_secs(900);
    let mut progress = Progress::new();
    loop {
        let s = sender.stats();
        progress.tick(|| {
            format!(
                "fill: {} of {queued} messages stored, {} failed",
                s.messages_delivered, s.messages_failed
            )
        });
        if s.messages_delivered + s.messages_failed >= queued {
            if s.messages_failed > 0 {
                bail!(
                    "{} of {queued} messages failed to reach the mailbox",
                    s.messages_failed
                );
            }
            break;
        }
        if Instant::now() > fill_deadline {
            bail!(
                "only {} of {queued} messages stored after 900 s",
                s.messages_delivered
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds_to_fill = t_fill.elapsed().as_secs_f64();
    sender.shutdown().await;

    let online = |dir: &'static str, key: MailboxKey, catch_up: bool| {
        let path = data.path().join(dir);
        let directory_path = directory_path.clone();
        async move {
            start_transport(
                Path::new(&path),
                key,
                far,
                &directory_path,
                authority_key,
                RateOverrides::default(),
                2,
                catch_up,
            )
            .await
        }
    };
    let fast = online("fast", fast_key, true).await?;
    let catch_up = drain(&fast, cfg.items, Duration::from_secs(600)).await?;
    fast.shutdown().await;
    let slow = online("slow", slow_key, false).await?;
    let fixed_cadence = drain(
        &slow,
        slow_items,
        Duration::from_secs_f64(cfg.baseline_seconds),
    )
    .await?;
    slow.shutdown().await;
    Ok(CatchUpReport {
        pull_interval_ms: pull_interval.as_secs_f64() * 1e3,
        seconds_to_fill,
        speedup: catch_up.items_per_s / fixed_cadence.items_per_s.max(1e-9),
        catch_up,
        fixed_cadence,
        load_avg_1m: load_avg_1m(),
    })
}

pub fn render(r: &CatchUpReport) -> String {
    format!(
        "spore bench catchup: a returning client drains its mailbox (pulls every {:.0} ms)\n\
         {:<40} {:>8} items in {:.1} s (queued in {:.1} s)\n\
         {:<40} {:>8.0} items/s   target >= {:.0}: {}  ({} bulk pulls of {})\n\
         {:<40} {:>8.0} items/s   (catch_up = false, {} items over {:.1} s)\n\
         {:<40} {:>8.1} x\n\
         {:<40} {:>8.2}\n",
        r.pull_interval_ms,
        "drained with catch-up",
        r.catch_up.items,
        r.catch_up.drain_s,
        r.seconds_to_fill,
        "catch-up rate",
        r.catch_up.items_per_s,
        TARGET_ITEMS_PER_S,
        verdict(r.catch_up.items_per_s >= TARGET_ITEMS_PER_S),
        r.catch_up.catch_up_pulls,
        r.catch_up.pulls,
        "fixed-cadence rate",
        r.fixed_cadence.items_per_s,
        r.fixed_cadence.items,
        r.fixed_cadence.drain_s,
        "speed-up, same run",
        r.speedup,
        "load average (1 min)",
        r.load_avg_1m,
    )
}
