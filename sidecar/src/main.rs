//! `spore-sidecar`: the command line. Parsing lives in `cli.rs`; the work lives in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spore-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
