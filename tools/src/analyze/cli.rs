//! `spore analyze ...`: flag parsing and printing; the work is in the sibling modules.

use clap::{Args, Subcommand};

use super::poisson_mix::{self, PoissonMixParams};

/// Measure how well a Spore network hides who talks to whom.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    command: AnalyzeCommand,
}

#[derive(Debug, Subcommand)]
enum AnalyzeCommand {
    /// One Poisson (M/M/inf) mix: entropy of a message passing it, against Loopix's closed form.
    PoissonMix(PoissonMixArgs),
}

#[derive(Debug, Args)]
struct PoissonMixArgs {
    /// Real message arrival rate (per second).
    #[arg(long)]
    lambda: f64,
    /// Delay rate per message (per second; mean delay 1/mu).
    #[arg(long)]
    mu: f64,
    /// Mix loop cover rate lambda_M (per second).
    #[arg(long, default_value_t = 0.0)]
    loop_rate: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Outputs measured after burn-in.
    #[arg(long, default_value_t = 200_000)]
    outputs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs one `spore analyze` subcommand.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    match args.command {
        AnalyzeCommand::PoissonMix(a) => poisson_mix_cmd(a),
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
