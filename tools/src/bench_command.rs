//! `spore bench ...`: turns the parsed flags into `spore_bench` configs, runs one benchmark and
//! prints its report as a table or one JSON object.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use spore_bench::{catchup, client, latency, mailbox, relay};

use crate::flags::{BenchArgs, BenchCmd};

fn print<T: Serialize>(json: bool, report: &T, render: fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

/// Runs one `spore bench` subcommand and prints its report.
pub fn run(args: BenchArgs) -> Result<()> {
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
        BenchCmd::Catchup {
            items,
            baseline_seconds,
        } => {
            let cfg = catchup::CatchUpConfig {
                network: client::Network::Spawn {
                    spore_bin: std::env::current_exe()?,
                },
                items,
                baseline_seconds,
            };
            print(
                args.json,
                &rt.block_on(catchup::run(&cfg))?,
                catchup::render,
            )
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
