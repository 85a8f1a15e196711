//! # spore-tools
//!
//! The work behind the `spore` command: operator tools (keys, directory authority, testnet,
//! demo) and analyst tools (inspector, load, benchmarks, anonymity analysis). The binary is a
//! thin shell over these modules so that tests call them directly.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod authority;
pub mod bench;
pub mod demo;
pub mod inspect;
pub mod keyfile;
pub mod load;
pub mod testnet;
pub mod workload;
