//! `spore-relay`: the command line. Parsing lives here; the work lives in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
