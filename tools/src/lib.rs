//! # spore-tools
//!
//! The work behind the `spore` command: operator tools (keys, directory authority, demo) and
//! analyst tools (inspector, load, anonymity analysis). The binary (`src/main.rs`, its flags in
//! `src/flags.rs`) is a thin shell over these modules and over `spore-testkit` (the loopback
//! network of `demo` and `testnet`) and `spore-bench` (`spore bench`), so that tests call the
//! work directly; no library module sees clap.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod authority;
pub mod demo;
pub mod inspect;
pub mod keyfile;
pub mod load;
pub mod workload;
