//! `spore bench`: performance figures measured as ratios within one run, because the machines
//! Spore is developed on are shared and noisy.
//!
//! * [`relay`]: the bare Sphinx forward unwrap rate on one core (the physical floor) against a
//!   real `spore-relay` process forwarding from a load generator to a sink, 1 and 2 workers.
//! * [`latency`]: added per-hop latency (delay 0) at 10%, 50% and 90% of measured capacity.
//! * [`mailbox`]: durable store rate, pull/release rate, disk bytes and memory per stored packet.
//! * [`client`]: CPU share of one client transport at its Poisson rates, and packet build rate.
//!
//! Every subcommand returns a serializable report; `render_*` gives the human table.

pub mod client;
pub mod latency;
pub mod mailbox;
pub mod relay;
pub mod relay_metrics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;

/// `spore bench …` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCmd,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Bare Sphinx unwrap rate vs a real spore-relay process (1 and 2 workers).
    Relay {
        /// Packets per timed run.
        #[arg(long, default_value_t = 20_000)]
        packets: usize,
    },
    /// Added per-hop latency at 10%, 50% and 90% of measured capacity.
    Latency {
        /// Sphinx workers of the relay under test.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Packets in the capacity burst.
        #[arg(long, default_value_t = 10_000)]
        capacity_packets: usize,
        /// Seconds of paced load per level.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Mean per-hop delay of the packets, ms (default: the network's 1/mu); 0 runs only
        /// the delay-0 levels.
        #[arg(long)]
        mean_delay_ms: Option<f64>,
    },
    /// Durable store, pull/release, disk and memory of the mailbox store.
    Mailbox {
        /// Packets to store (10^6 takes a few minutes).
        #[arg(long, default_value_t = 1_000_000)]
        packets: usize,
        /// Keep the database here instead of a temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// CPU share of one client transport at the default rates, and packet build rate;
    /// with --throughput, sustained acknowledged fragments per second of one client.
    Client {
        /// Seconds of the CPU (or throughput) window.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Packets built for the build rate.
        #[arg(long, default_value_t = 2_000)]
        build_packets: usize,
        /// Measure sustained throughput instead (bulk rates unless overridden below).
        #[arg(long)]
        throughput: bool,
        /// Messages queued for --throughput (each ~8 fragments).
        #[arg(long, default_value_t = 1_600)]
        messages: usize,
        /// Packet build threads of the client (0: build on the engine's task).
        #[arg(long, default_value_t = 2)]
        build_threads: usize,
        /// Override the payload-stream rate (per s).
        #[arg(long)]
        lambda_p: Option<f64>,
        /// Override the loop cover rate (per s).
        #[arg(long)]
        lambda_l: Option<f64>,
        /// Override the drop cover rate (per s).
        #[arg(long)]
        lambda_d: Option<f64>,
        /// Override mu (mean per-hop delay 1/mu s).
        #[arg(long)]
        mu: Option<f64>,
        /// Override the pull interval (ms).
        #[arg(long)]
        pull_ms: Option<u64>,
    },
}

fn print<T: Serialize>(json: bool, report: &T, render: fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

/// Runs one `spore bench` subcommand and prints its report.
pub fn run_cli(args: BenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.command {
        BenchCmd::Relay { packets } => {
            let cfg = relay::RelayBenchConfig {
                packets,
                relay_bin: relay::relay_binary()?,
            };
            print(args.json, &rt.block_on(relay::run(&cfg))?, relay::render)
        }
        BenchCmd::Latency {
            workers,
            capacity_packets,
            seconds,
            mean_delay_ms,
        } => {
            let mean_delay = match mean_delay_ms {
                Some(ms) if ms.is_finite() && ms >= 0.0 => Duration::from_secs_f64(ms / 1e3),
                Some(ms) => {
                    anyhow::bail!("--mean-delay-ms must be a non-negative number, not {ms}")
                }
                None => latency::LatencyConfig::default_mean_delay(),
            };
            let cfg = latency::LatencyConfig {
                relay_bin: relay::relay_binary()?,
                workers,
                capacity_packets,
                seconds,
                mean_delay,
            };
            print(
                args.json,
                &rt.block_on(latency::run(&cfg))?,
                latency::render,
            )
        }
        BenchCmd::Mailbox { packets, dir } => {
            let cfg = mailbox::MailboxBenchConfig { packets, dir };
            print(args.json, &mailbox::run(&cfg)?, mailbox::render)
        }
        BenchCmd::Client {
            seconds,
            build_packets,
            throughput,
            messages,
            build_threads,
            lambda_p,
            lambda_l,
            lambda_d,
            mu,
            pull_ms,
        } => {
            let network = client::Network::Spawn {
                spore_bin: std::env::current_exe()?,
            };
            let base = if throughput {
                client::ThroughputConfig::bulk_rates()
            } else {
                spore_client::RateOverrides::default()
            };
            let rates = spore_client::RateOverrides {
                lambda_p: lambda_p.or(base.lambda_p),
                lambda_l: lambda_l.or(base.lambda_l),
                lambda_d: lambda_d.or(base.lambda_d),
                mu: mu.or(base.mu),
                pull_interval: pull_ms
                    .map(std::time::Duration::from_millis)
                    .or(base.pull_interval),
            };
            if throughput {
                let cfg = client::ThroughputConfig {
                    network,
                    seconds,
                    messages,
                    body_bytes: 3_500,
                    rates,
                    build_threads,
                };
                let report = rt.block_on(client::run_throughput(&cfg))?;
                return print(args.json, &report, client::render_throughput);
            }
            let cfg = client::ClientBenchConfig {
                network,
                seconds,
                build_packets,
                rates,
                build_threads,
            };
            print(args.json, &rt.block_on(client::run(&cfg))?, client::render)
        }
    }
}

/// Clock ticks per second of `/proc/*/stat` CPU times (USER_HZ; 100 on every Linux we run).
const CLOCK_TICKS: f64 = 100.0;

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// CPU seconds (user + system) recorded in a `/proc/.../stat` file; 0 if it cannot be read.
pub fn stat_cpu_secs(stat_path: &Path) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // The command name may hold spaces and parentheses: fields start after the last ") ".
    let Some((_, after)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 (utime) and 15 (stime) of proc(5), counted from the state field (3).
    (ticks(11) + ticks(12)) / CLOCK_TICKS
}

/// CPU seconds used so far by this thread.
pub fn thread_cpu_secs() -> f64 {
    stat_cpu_secs(Path::new("/proc/thread-self/stat"))
}

/// CPU seconds used so far by process `pid` (all threads).
pub fn process_cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

/// CPU seconds used so far by the threads of `pid` whose name starts with `prefix`.
pub fn threads_cpu_secs(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .map(|t| stat_cpu_secs(&t.path().join("stat")))
        .sum()
}

/// CPU seconds used so far by the threads of `pid`, summed per thread name with trailing
/// digits and dashes removed (`sphinx-0` and `sphinx-1` count as `sphinx`).
pub fn thread_groups_cpu_secs(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let group = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        *out.entry(group).or_insert(0.0) += stat_cpu_secs(&t.path().join("stat"));
    }
    out
}

/// Resident memory of process `pid` in MB (`VmRSS`), NaN if unknown.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank; 0 for no samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// Bytes of all files under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// "met" / "NOT met" for a target line in a table.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testnet::{Testnet, TestnetConfig};

    #[test]
    fn mailbox_bench_reports_every_figure() {
        let r = mailbox::run(&mailbox::MailboxBenchConfig {
            packets: 2048,
            dir: None,
        })
        .unwrap();
        assert_eq!(r.released, 2048);
        assert!(r.store_per_s > 0.0 && r.release_per_s > 0.0);
        assert!(r.disk_ratio > 0.5, "{r:?}");
        assert!(r.rss_mb > 0.0);
        assert!(mailbox::render(&r).contains("durable store"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_bench_measures_a_transport() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TestnetConfig::new(tmp.path());
        cfg.width = 1;
        let net = Testnet::start(cfg).await.unwrap();
        let r = client::run(&client::ClientBenchConfig {
            network: client::Network::Existing {
                directory: net.directory_path().to_owned(),
                authority: net.authority_public(),
            },
            seconds: 1.0,
            build_packets: 10,
            rates: spore_client::RateOverrides::default(),
            build_threads: 2,
        })
        .await
        .unwrap();
        assert!(r.packets_sent > 0, "{r:?}");
        assert!(r.build_per_s > 0.0);
        assert!(r.cpu_includes_network);
        net.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_throughput_bench_reports_acked_fragments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TestnetConfig::new(tmp.path());
        cfg.width = 1;
        let net = Testnet::start(cfg).await.unwrap();
        let r = client::run_throughput(&client::ThroughputConfig {
            network: client::Network::Existing {
                directory: net.directory_path().to_owned(),
                authority: net.authority_public(),
            },
            seconds: 1.0,
            messages: 20,
            body_bytes: 2_000,
            rates: client::ThroughputConfig::bulk_rates(),
            build_threads: 2,
        })
        .await
        .unwrap();
        assert!(r.fragments_per_message > 1, "{r:?}");
        assert!(r.pulls_per_s > 0.0, "{r:?}");
        assert!(client::render_throughput(&r).contains("fragments acked"));
        net.shutdown().await.unwrap();
    }

    /// Needs the `spore-relay` binary in the same target directory (`cargo test --workspace`
    /// or `cargo build --bins` builds it); says so and passes when it is missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_and_latency_benches_run_against_a_real_relay_process() {
        let Ok(bin) = relay::relay_binary() else {
            eprintln!("skipped: no spore-relay binary built next to the test executable");
            return;
        };
        let r = relay::run(&relay::RelayBenchConfig {
            packets: 300,
            relay_bin: bin.clone(),
        })
        .await
        .unwrap();
        assert_eq!((r.lost_1core, r.lost_2core), (0, 0), "{r:?}");
        assert!(r.bare_unwrap_per_s > 0.0 && r.relay_per_s_1core > 0.0);
        assert!(r.ratio_1core > 0.0 && r.scaling_2core > 0.0);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "bare_unwrap_per_s",
            "relay_per_s_1core",
            "relay_per_s_2core",
            "ratio_1core",
            "scaling_2core",
        ] {
            assert!(json[key].is_number(), "{key} missing");
        }
        let l = latency::run(&latency::LatencyConfig {
            relay_bin: bin,
            workers: 1,
            capacity_packets: 300,
            seconds: 0.2,
            mean_delay: Duration::from_millis(5),
        })
        .await
        .unwrap();
        assert_eq!(l.levels.len(), 3);
        assert_eq!(l.levels_delay0.len(), 3);
        let all = l.levels.iter().chain(&l.levels_delay0);
        assert!(all.clone().all(|x| x.lost == 0), "{l:?}");
        assert!(l.p50_us_at_10 > 0.0 && l.p99_us_at_90 >= l.p50_us_at_90);
        // The relay's own histograms saw every packet of every level, and every stage.
        for level in all {
            assert_eq!(level.relay_added.count, level.packets as u64, "{level:?}");
            for stage in ["unwrap_queue", "commit", "link"] {
                assert_eq!(
                    level.stages[stage].count, level.packets as u64,
                    "{stage}: {level:?}"
                );
            }
        }
        // With delays, packets wait in the delay queue; with delay 0 they never do.
        assert!(
            l.levels.iter().all(|x| x.stages["delay_timer"].count > 0),
            "{l:?}"
        );
        assert!(
            l.levels_delay0
                .iter()
                .all(|x| x.stages["delay_timer"].count == 0),
            "{l:?}"
        );
    }

    #[test]
    fn quantile_uses_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), 50.0);
        assert_eq!(quantile(&s, 0.99), 99.0);
        assert_eq!(quantile(&s, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let t0 = thread_cpu_secs();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(thread_cpu_secs() >= t0);
        assert!(process_cpu_secs(std::process::id()) > 0.0);
        assert!(rss_mb(std::process::id()) > 0.0);
    }
}
