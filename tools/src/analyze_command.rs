//! `spore analyze ...`: runs the models in `spore_tools::analyze` with the parsed flags and
//! prints their reports.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use spore_tools::analyze::flooding::{self, FloodingParams};
use spore_tools::analyze::intersection::{self, IntersectionParams};
use spore_tools::analyze::metrics::Summary;
use spore_tools::analyze::network::{self, AnonymityMetrics, NetworkParams};
use spore_tools::analyze::poisson_mix::{self, PoissonMixParams};
use spore_tools::analyze::sda::{self, SdaParams};
use spore_tools::analyze::trace::{self, TraceOptions, TraceWriter};

use crate::flags::{
    AnalyzeArgs, AnalyzeCommand, IntersectionArgs, NMinus1Args, NetworkArgs, PoissonMixArgs,
    SdaArgs, TraceArgs,
};

/// Runs one `spore analyze` subcommand.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    match args.command {
        AnalyzeCommand::PoissonMix(a) => poisson_mix_cmd(a),
        AnalyzeCommand::Network(a) => network_cmd(a),
        AnalyzeCommand::Trace(a) => trace_cmd(a),
        AnalyzeCommand::Sda(a) => sda_cmd(a),
        AnalyzeCommand::Intersection(a) => intersection_cmd(a),
        AnalyzeCommand::NMinus1(a) => n_minus_1_cmd(a),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn poisson_mix_cmd(a: PoissonMixArgs) -> anyhow::Result<()> {
    let r = poisson_mix::simulate(&PoissonMixParams {
        lambda: a.lambda,
        mu: a.mu,
        loop_rate: a.loop_rate,
        outputs: a.outputs,
        seed: a.seed,
    })?;
    if let Some(path) = &a.plot {
        let ratios: Vec<f64> = (-2..=8).map(|k| 2f64.powi(k)).collect();
        let sweep = poisson_mix::sweep(a.mu, &ratios, a.loop_rate, a.outputs, a.seed)?;
        spore_tools::analyze::plot::entropy_vs_ratio(path, &sweep)?;
        if !a.json {
            println!(
                "lambda/mu  simulated  closed-form  difference  (bits; mu {}, loop rate {})",
                a.mu, a.loop_rate
            );
            for s in &sweep {
                let d = s.entropy_bits - s.closed_form_bits;
                println!(
                    "{:>9.2}  {:>9.4}  {:>11.4}  {:>10.4}",
                    s.lambda / s.mu,
                    s.entropy_bits,
                    s.closed_form_bits,
                    d
                );
            }
        }
    }
    if a.json {
        return print_json(&r);
    }
    println!(
        "Poisson mix  lambda={} /s  mu={} /s  loop={} /s  seed={}",
        r.lambda, r.mu, r.loop_rate, r.seed
    );
    println!(
        "  outputs measured      {:>12}  (after {} burn-in)",
        r.outputs, r.burn_in
    );
    println!("  targets measured      {:>12}", r.targets);
    println!("  mean pool size        {:>12.3}", r.mean_pool);
    println!("  target entropy        {:>12.4} bits", r.entropy_bits);
    println!(
        "  output entropy        {:>12.4} bits",
        r.output_entropy_bits
    );
    println!("  effective set 2^H     {:>12.2}", r.effective_set);
    println!("  log2(e*rate/mu)       {:>12.4} bits", r.closed_form_bits);
    Ok(())
}

fn print_summary(name: &str, unit: &str, s: &Summary) {
    println!(
        "  {name:<22}mean {:>9.4}  p50 {:>9.4}  p90 {:>9.4}  p99 {:>9.4}  max {:>9.4} {unit}  (n={})",
        s.mean, s.p50, s.p90, s.p99, s.max, s.count
    );
}

fn print_metrics(m: &AnonymityMetrics) {
    println!("  messages scored       {:>12}", m.messages);
    println!(
        "  sender entropy        {:>12.4} bits  (log2 N = {:.4})",
        m.entropy_bits,
        (m.senders as f64).log2()
    );
    println!(
        "  effective set 2^H     {:>12.2}  of {} senders",
        m.effective_set, m.senders
    );
    println!("  degree H/log2 N       {:>12.4}", m.degree);
    println!("  top-1 guess correct   {:>12.4}", m.top1_success);
    print_summary("entropy", "bits", &m.entropy);
    print_summary("epsilon |ln pa/pb|", "", &m.epsilon);
    println!(
        "  challenge msgs with one sender ruled out: {}",
        m.distinguished
    );
    print_summary("latency (simulated)", "s", &m.latency);
}

fn network_cmd(a: NetworkArgs) -> anyhow::Result<()> {
    let params = NetworkParams {
        layers: a.layers,
        width: a.width,
        rate: a.rate,
        delay: a.delay,
        senders: a.senders,
        duration: a.duration,
        corrupt: a.corrupt,
        seed: a.seed,
    };
    let started = Instant::now();
    let r = match &a.trace_out {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut w = TraceWriter::new(BufWriter::new(file));
            let r = network::simulate_traced(&params, Some(&mut w))?;
            w.finish()?;
            r
        }
        None => network::simulate(&params)?,
    };
    let elapsed = started.elapsed();
    if let Some(path) = &a.plot {
        let runs = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|k| {
                network::simulate(&NetworkParams {
                    delay: a.delay * k,
                    ..params.clone()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        spore_tools::analyze::plot::entropy_vs_latency(path, &runs)?;
        if !a.json {
            println!("delay (s)  mean latency  p99 latency  entropy (bits)  epsilon p50");
            for r in &runs {
                println!(
                    "{:>9.4}  {:>12.4}  {:>11.4}  {:>14.4}  {:>11.4}",
                    r.delay,
                    r.latency_gamma.mean,
                    r.latency_gamma.p99,
                    r.metrics.entropy_bits,
                    r.metrics.epsilon.p50
                );
            }
        }
    }
    if a.json {
        return print_json(&r);
    }
    println!(
        "Network  {} layers x {} mixes  rate={} /s  delay={} s  senders={}  duration={} s  corrupt={}  seed={}",
        r.layers, r.width, r.rate, r.delay, r.senders, r.duration, r.corrupt, r.seed
    );
    println!(
        "  packets sent          {:>12}  (scored if sent in [{:.2}, {:.2}) s)",
        r.sent, r.measure_from, r.measure_until
    );
    println!("  mean pool per mix     {:>12.3}", r.mean_pool);
    print_metrics(&r.metrics);
    let g = &r.latency_gamma;
    println!(
        "  latency Gamma(k={}, θ={})   mean {:>9.4}  p50 {:>9.4}  p99 {:>9.4} s",
        g.shape, g.scale, g.mean, g.p50, g.p99
    );
    println!("  wall time             {:>12.2} s", elapsed.as_secs_f64());
    Ok(())
}

fn trace_cmd(a: TraceArgs) -> anyhow::Result<()> {
    let open = |p: &PathBuf| {
        File::open(p)
            .with_context(|| format!("opening {}", p.display()))
            .map(BufReader::new)
    };
    let mut records = trace::read_records(open(&a.file)?)?;
    if let Some(t) = &a.truth {
        records.extend(trace::read_records(open(t)?)?);
    }
    let opts = TraceOptions {
        corrupt: a.corrupt,
        challenge: a.challenge.map(|v| (v[0].clone(), v[1].clone())),
    };
    let r = trace::analyze(&records, &opts)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "Trace  {}  records={}  hops={}",
        a.file.display(),
        r.records,
        r.hops
    );
    println!(
        "  nodes                 {} clients, {} mixes, {} mailboxes",
        r.nodes.0, r.nodes.1, r.nodes.2
    );
    println!("  corrupt relays        {:?}", r.corrupt);
    print_metrics(&r.metrics);
    Ok(())
}

fn sda_cmd(a: SdaArgs) -> anyhow::Result<()> {
    let params = SdaParams {
        users: a.users,
        batch: a.batch,
        contacts: a.contacts,
        rounds: a.rounds,
        background_rounds: a.background_rounds.unwrap_or(a.rounds),
        trials: a.trials,
        cover: a.cover,
        seed: a.seed,
    };
    let r = sda::simulate(&params)?;
    if let Some(path) = &a.plot {
        let rounds: Vec<usize> = (0..=6).rev().map(|k| (a.rounds >> k).max(1)).collect();
        let mut series = vec![(
            "no cover".to_string(),
            sda::sweep_rounds(
                &SdaParams {
                    cover: 0.0,
                    ..params
                },
                &rounds,
            )?,
        )];
        if a.cover > 0.0 {
            series.push((
                format!("cover {}", a.cover),
                sda::sweep_rounds(&params, &rounds)?,
            ));
        }
        spore_tools::analyze::plot::sda_vs_rounds(path, &series)?;
    }
    if a.json {
        return print_json(&r);
    }
    println!(
        "Statistical disclosure  users={}  batch={}  contacts={}  rounds={} (+{} background)  trials={}  cover={}  seed={}",
        r.users, r.batch, r.contacts, r.rounds, r.background_rounds, r.trials, r.cover, r.seed
    );
    println!(
        "  contacts ranked in top {:<3}   {:>8.4}  (mean fraction)",
        r.contacts, r.mean_fraction_found
    );
    println!("  trials with all found        {:>8.4}", r.all_found);
    Ok(())
}

fn intersection_cmd(a: IntersectionArgs) -> anyhow::Result<()> {
    let r = intersection::simulate(&IntersectionParams {
        users: a.users,
        online: a.online,
        session: a.session,
        window: a.window,
        send: a.send,
        max_epochs: a.max_epochs,
        trials: a.trials,
        seed: a.seed,
    })?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "Intersection  users={}  online={}  session={} epochs  window={}  send={}  cap={} epochs  trials={}  seed={}",
        r.users, r.online, r.session, r.window, r.send, r.max_epochs, r.trials, r.seed
    );
    println!("  trials singled out    {:>12.4}", r.unique_fraction);
    print_summary("deliveries to unique", "", &r.deliveries_to_unique);
    print_summary("epochs to unique", "", &r.epochs_to_unique);
    let curve: Vec<String> = [1usize, 2, 4, 8, 16, 32, 64]
        .iter()
        .filter_map(|k| {
            r.entropy_after_deliveries
                .get(k - 1)
                .map(|h| format!("{k}:{h:.2}"))
        })
        .collect();
    println!("  log2 candidates after k deliveries  {}", curve.join("  "));
    Ok(())
}

fn n_minus_1_cmd(a: NMinus1Args) -> anyhow::Result<()> {
    let r = flooding::simulate(&FloodingParams {
        lambda: a.lambda,
        mu: a.mu,
        loop_rate: a.loop_rate,
        false_alarms_per_day: a.false_alarms_per_day,
        trials: a.trials,
        seed: a.seed,
    })?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "n-1 attack  lambda={} /s  mu={} /s  loop={} /s  trials={}  seed={}",
        r.lambda, r.mu, r.loop_rate, r.trials, r.seed
    );
    println!("  entropy without attack {:>11.4} bits", r.baseline_bits);
    println!("  entropy under attack   {:>11.4} bits", r.entropy_bits);
    println!(
        "  alarm after silence of {:>11.4} s  ({} false alarms/day)",
        r.alarm_after, a.false_alarms_per_day
    );
    print_summary("flush wait", "s", &r.flush_time);
    print_summary("detection delay", "s", &r.detection_delay);
    println!("  target out before alarm {:>10.4}", r.undetected_fraction);
    Ok(())
}
