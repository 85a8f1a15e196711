use std::process::ExitCode;

use clap::Parser;

/// Spore: a store-and-forward mixnet for peer-to-peer Matrix.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run a whole network on loopback and show a federation workload crossing it.
    Demo,
    /// Privacy analysis: anonymity metrics, attack simulations, traces, figures.
    Analyze(spore_tools::analyze::cli::AnalyzeArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo => {
            anyhow::bail!("the demo is not built yet");
        }
        Command::Analyze(args) => spore_tools::analyze::cli::run(args).map(|()| ExitCode::SUCCESS),
    }
}
