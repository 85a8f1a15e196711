//! `spore demo`: the whole system on one machine, with no configuration.
//!
//! A directory authority and a network of relays start on loopback (2 entry/mailbox relays,
//! 3 mix layers), then two homeserver clients A and B. B goes offline; A sends a realistic
//! Matrix federation workload to B; every request travels as fixed-size Sphinx packets through
//! the mixes and waits, sealed, in B's mailbox relay. B comes back, pulls its mailbox, and
//! receives each transaction — checked for exactly-once delivery and for a valid X-Matrix
//! signature, which proves Spore carried the signed request untouched.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use spore_client::{
    DirectorySource, RateOverrides, Transport, TransportConfig, TransportEvent, Trust,
};
use spore_protocol::MailboxKey;

use crate::workload::{ServerIdentity, transactions, txn_id, verify_request};
use spore_testkit::{RelayRole, Testnet, TestnetConfig};

/// What the demo does; the defaults are what `spore demo` runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Keep everything here (default: a temporary folder removed afterwards).
    pub dir: Option<PathBuf>,
    pub transactions: usize,
    pub edge: usize,
    pub width: usize,
    /// Client payload stream rate (packets/s).
    pub lambda_p: f64,
    /// Per-hop delay rate (1/s).
    pub mu: f64,
    /// How long B stays offline after A has finished sending.
    pub offline: Duration,
    /// Give up after this long.
    pub deadline: Duration,
    /// Draw progress bars (off for --json and tests).
    pub progress: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            dir: None,
            transactions: 60,
            edge: 2,
            width: 2,
            lambda_p: 50.0,
            mu: 20.0,
            offline: Duration::from_secs(2),
            deadline: Duration::from_secs(110),
            progress: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
        };
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    };
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

/// Packets one client put on its link, by kind. An observer of the link sees only the total:
/// every one of them is the same size and they leave as one Poisson stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkTraffic {
    pub client: String,
    pub real: u64,
    pub drop_cover: u64,
    pub loop_cover: u64,
    pub loops_returned: u64,
    pub acks_received: u64,
    pub retransmissions: u64,
}

/// The summary `spore demo` prints (and `--json` prints as one object).
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub sent: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub signatures_valid: usize,
    /// From A's `send()` to B's mailbox relay holding the transaction durably (its SURB-acks
    /// back at A): the mixnet's latency, per-hop delays included.
    pub latency_ms: Percentiles,
    /// From B coming back online to B receiving each transaction.
    pub pickup_ms: Percentiles,
    pub links: Vec<LinkTraffic>,
    /// Packets each relay processed, by role.
    pub relays: Vec<RelayTraffic>,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayTraffic {
    pub role: String,
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub stored: u64,
    pub dropped: u64,
}

fn traffic(name: &str, t: &Transport) -> LinkTraffic {
    let s = t.stats();
    LinkTraffic {
        client: name.to_string(),
        real: s.real_sent + s.replies_sent,
        drop_cover: s.drop_sent,
        loop_cover: s.loops_sent,
        loops_returned: s.loops_returned,
        acks_received: s.acks,
        retransmissions: s.retransmissions,
    }
}

fn bar(progress: bool, len: u64, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:<34} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn client_config(
    dir: &std::path::Path,
    name: &str,
    key: MailboxKey,
    net: &Testnet,
    relay: spore_protocol::RelayId,
    cfg: &DemoConfig,
) -> TransportConfig {
    let mut c = TransportConfig::new(
        dir.join(name),
        key,
        name,
        relay,
        DirectorySource::Fixed(net.directory().clone()),
        Trust {
            authorities: vec![net.authority()],
            threshold: 1,
        },
    );
    c.rates = RateOverrides {
        lambda_p: Some(cfg.lambda_p),
        mu: Some(cfg.mu),
        pull_interval: Some(Duration::from_millis(100)),
        ..RateOverrides::default()
    };
    c.timeouts.ack_margin = Duration::from_secs(3);
    c.timeouts.max_backoff = Duration::from_secs(2);
    c
}

/// Runs the demo and returns its summary. Fails only if the network could not run at all;
/// loss and duplicates are reported in the summary (the CLI turns them into the exit code).
pub async fn run(cfg: DemoConfig) -> Result<DemoSummary> {
    let started = Instant::now();
    let tmp;
    let dir = match &cfg.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
            tmp.path().to_path_buf()
        }
    };
    let mut tcfg = TestnetConfig::in_dir(dir.join("relays"));
    tcfg.mailbox_relays = cfg.edge;
    tcfg.mixes_per_layer = cfg.width;
    tcfg.params.mu = cfg.mu;
    tcfg.params.lambda_p = cfg.lambda_p;
    let net = Testnet::start(tcfg)
        .await
        .context("the local network did not start")?;
    tracing::info!(stage = "testnet up", "demo");
    let edges = net.mailbox_relays();
    let (relay_a, relay_b) = (edges[0], edges[edges.len() - 1]);

    let a_id = ServerIdentity::generate("a.spore.test");
    let b_name = "b.spore.test";
    let b_key = MailboxKey::generate(&mut rand::rng());
    let a = Transport::start(client_config(
        &dir,
        "a.spore.test",
        MailboxKey::generate(&mut rand::rng()),
        &net,
        relay_a,
        &cfg,
    ))
    .await
    .context("client A did not start")?;
    // B registers (its address is what A learns out of band), then goes offline.
    let b = Transport::start(client_config(
        &dir,
        b_name,
        b_key.clone(),
        &net,
        relay_b,
        &cfg,
    ))
    .await
    .context("client B did not start")?;
    let b_address = b.address();
    tracing::info!(stage = "clients up", "demo");
    let b_first = traffic("B (before going offline)", &b);
    b.shutdown().await;
    drop(b); // releases B's database so B can come back from the same folder
    tracing::info!(stage = "B offline", "demo");

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let txns = transactions(&mut rand::rng(), &a_id, b_name, cfg.transactions, now_ms);
    let mut events = a.events();
    let mut sent_at: HashMap<_, Instant> = HashMap::new();
    let send_bar = bar(
        cfg.progress,
        txns.len() as u64,
        "A → mixnet → B's mailbox (B offline)",
    );
    for t in &txns {
        let id = a
            .send(&b_address, t.clone())
            .await
            .context("A could not queue a transaction")?;
        sent_at.insert(id, Instant::now());
    }
    let mut latency = Vec::new();
    let mut failed = 0usize;
    let deadline = started + cfg.deadline;
    while latency.len() + failed < txns.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Ok(TransportEvent::Delivered(id))) => {
                if let Some(t0) = sent_at.get(&id) {
                    latency.push(t0.elapsed().as_secs_f64() * 1000.0);
                    send_bar.inc(1);
                }
            }
            Ok(Ok(TransportEvent::Failed(_))) => failed += 1,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    send_bar.finish();
    tracing::info!(stage = "sent", "demo");
    tokio::time::sleep(cfg.offline).await;

    // B comes back and pulls its mailbox.
    let back = Instant::now();
    let b = Transport::start(client_config(&dir, b_name, b_key, &net, relay_b, &cfg))
        .await
        .context("client B did not come back")?;
    let recv_bar = bar(
        cfg.progress,
        txns.len() as u64,
        "B back online, pulling its mailbox",
    );
    let expected: HashSet<String> = txns
        .iter()
        .filter_map(|t| txn_id(t).map(str::to_string))
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut duplicates = 0usize;
    let mut valid = 0usize;
    let mut pickup = Vec::new();
    while seen.len() < expected.len() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(inbound) = tokio::time::timeout(left, b.incoming()).await else {
            break;
        };
        let inbound = inbound.context("B's inbox failed")?;
        let txn = txn_id(&inbound.request).unwrap_or_default().to_string();
        if verify_request(&inbound.request, b_name, &a_id.key.verifying_key()).is_ok() {
            valid += 1;
        }
        if seen.insert(txn) {
            pickup.push(back.elapsed().as_secs_f64() * 1000.0);
            recv_bar.inc(1);
        } else {
            duplicates += 1;
        }
        b.ack(inbound.id).await.context("B could not ack")?;
    }
    recv_bar.finish();
    tracing::info!(stage = "received", "demo");
    // Anything still arriving late would be a duplicate: give it a moment to show itself.
    if let Ok(Ok(extra)) = tokio::time::timeout(Duration::from_millis(500), b.incoming()).await {
        duplicates += 1;
        let _ = b.ack(extra.id).await;
    }

    let mut links = vec![
        traffic("A", &a),
        b_first,
        traffic("B (after coming back)", &b),
    ];
    links.retain(|l| l.real + l.drop_cover + l.loop_cover > 0);
    let relays = net
        .metrics()
        .into_iter()
        .map(|(role, m)| RelayTraffic {
            role: match role {
                RelayRole::Mailbox => "entry+mailbox".to_string(),
                RelayRole::Mix { layer } => format!("mix layer {layer}"),
            },
            packets_in: m.packets_in,
            packets_forwarded: m.packets_forwarded,
            stored: m.packets_stored,
            dropped: m.dropped_total(),
        })
        .collect();
    a.shutdown().await;
    b.shutdown().await;
    net.shutdown().await?;
    let delivered = seen.intersection(&expected).count();
    Ok(DemoSummary {
        sent: txns.len(),
        delivered,
        duplicates,
        lost: txns.len() - delivered,
        signatures_valid: valid,
        latency_ms: percentiles(latency),
        pickup_ms: percentiles(pickup),
        links,
        relays,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The human summary.
pub fn render(s: &DemoSummary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nSpore demo: {} transactions from a.spore.test to b.spore.test (B offline while they were sent)",
        s.sent
    );
    let _ = writeln!(
        o,
        "  delivered {}   duplicates {}   lost {}   X-Matrix signatures valid {}/{}",
        s.delivered,
        s.duplicates,
        s.lost,
        s.signatures_valid,
        s.delivered + s.duplicates
    );
    let _ = writeln!(
        o,
        "  mixnet latency (send → durably in B's mailbox): p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms",
        s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99
    );
    let _ = writeln!(
        o,
        "  pickup after B came back:                       p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms",
        s.pickup_ms.p50, s.pickup_ms.p90, s.pickup_ms.p99
    );
    let _ = writeln!(
        o,
        "\n  client links (an observer sees only the total: same size, one Poisson stream)"
    );
    let _ = writeln!(
        o,
        "    {:<26} {:>6} {:>8} {:>8} {:>7} {:>6} {:>8}",
        "client", "real", "drop", "loop", "loops↩", "acks", "resent"
    );
    for l in &s.links {
        let _ = writeln!(
            o,
            "    {:<26} {:>6} {:>8} {:>8} {:>7} {:>6} {:>8}",
            l.client,
            l.real,
            l.drop_cover,
            l.loop_cover,
            l.loops_returned,
            l.acks_received,
            l.retransmissions
        );
    }
    let _ = writeln!(o, "\n  relays");
    let _ = writeln!(
        o,
        "    {:<16} {:>8} {:>10} {:>8} {:>8}",
        "role", "in", "forwarded", "stored", "dropped"
    );
    for r in &s.relays {
        let _ = writeln!(
            o,
            "    {:<16} {:>8} {:>10} {:>8} {:>8}",
            r.role, r.packets_in, r.packets_forwarded, r.stored, r.dropped
        );
    }
    let _ = writeln!(o, "\n  finished in {:.1} s", s.elapsed_s);
    o
}

/// Exit status policy: anything lost or duplicated is a failure.
pub fn check(s: &DemoSummary) -> Result<()> {
    if s.lost > 0 || s.duplicates > 0 {
        bail!("{} lost, {} duplicated", s.lost, s.duplicates);
    }
    Ok(())
}
