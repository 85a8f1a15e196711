//! # spore-bench
//!
//! The work behind `spore bench`: performance figures measured as ratios within one run,
//! because the machines Spore is developed on are shared and noisy. It sits beside the data
//! path, driving real relays (in-process or the `spore-relay` binary) and client transports,
//! and reading their CPU time and memory from `/proc`; the `spore` CLI parses the flags and
//! prints the reports.
//!
//! * [`relay`]: the bare Sphinx forward unwrap rate on one core (the physical floor) against a
//!   real `spore-relay` process forwarding from a load generator to a sink, 1 and 2 workers.
//! * [`latency`]: added per-hop latency (delay 0) at 10%, 50% and 90% of measured capacity.
//! * [`mailbox`]: durable store rate, pull/release rate, disk bytes and memory per stored packet.
//! * [`client`]: CPU share of one client transport at its Poisson rates, and packet build rate.
//! * [`catchup`]: how fast a returning client drains a full mailbox, with and without
//!   catch-up pulls.
//!
//! Every benchmark returns a serializable report; `render_*` gives the human table.
#![forbid(unsafe_code)]

pub mod catchup;
pub mod client;
mod error;
pub mod latency;
pub mod mailbox;
mod procfs;
pub mod relay;
pub mod relay_metrics;

pub use error::{BenchError, Result};
pub use procfs::{
    disk_bytes, process_cpu_secs, rss_mb, stat_cpu_secs, thread_cpu_secs, thread_groups_cpu_secs,
    threads_cpu_secs,
};

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use error::Context;
use spore_protocol::directory::Directory;

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// The signed directory in the file at `path`.
pub fn read_directory(path: &Path) -> Result<Directory> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Directory::from_bytes(&bytes).with_context(|| format!("{} is not a directory", path.display()))
}

/// "met" / "NOT met" for a target line in a table.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use spore_testkit::{Testnet, TestnetConfig};
    use std::time::Duration;

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
        let mut cfg = TestnetConfig::in_dir(tmp.path());
        cfg.mixes_per_layer = 1;
        let net = Testnet::start(cfg).await.unwrap();
        let r = client::run(&client::ClientBenchConfig {
            network: client::Network::Existing {
                directory: net.directory_path().to_owned(),
                authority: net.authority(),
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
        let mut cfg = TestnetConfig::in_dir(tmp.path());
        cfg.mixes_per_layer = 1;
        let net = Testnet::start(cfg).await.unwrap();
        let r = client::run_throughput(&client::ThroughputConfig {
            network: client::Network::Existing {
                directory: net.directory_path().to_owned(),
                authority: net.authority(),
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

    /// Runs the `spore-relay` binary of this target directory (the test kit builds it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_and_latency_benches_run_against_a_real_relay_process() {
        let bin = spore_testkit::binaries::require(spore_testkit::binaries::RELAY);
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
