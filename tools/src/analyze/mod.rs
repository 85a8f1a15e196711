//! Privacy analysis: how well a Spore network hides who talks to whom.
//!
//! Every model here is a simulation driven by a seeded [`rand::rngs::ChaCha8Rng`], so a run is
//! reproducible from its command line. The adversary is the one Loopix (Piotrowska et al. 2017)
//! analyses: a global passive observer who sees every link, knows every mix's delay parameter, and
//! assigns probabilities the Bayesian way. Metrics are in [`metrics`]; the models are
//!
//! - [`poisson_mix`]: one M/M/inf Poisson mix, the exact probability each output is a target;
//! - [`network`]: a stratified network, each delivered message's sender distribution;
//! - [`sda`]: the statistical disclosure attack on a long-lived sender;
//! - [`intersection`]: intersecting online sessions against a store-and-forward mailbox;
//! - [`flooding`]: the n-1 attack and how fast a mix's missing loops reveal it;
//! - [`trace`]: the same metrics on a recorded JSON-lines trace.
//!
//! Both `network` and `trace` score deliveries with one global passive adversary (`adversary`);
//! `network` writes traces that `trace` reads back.
//!
//! `docs/privacy.md` explains what each number means and what Spore's defaults give.

mod adversary;
pub mod flooding;
pub mod intersection;
pub mod metrics;
pub mod network;
pub mod plot;
pub mod poisson_mix;
pub mod sda;
pub mod trace;

use std::fmt;

/// A model was asked for something it cannot simulate (a caller's mistake, not a result).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum InvalidParams {
    /// A rate, delay or probability outside its domain.
    OutOfRange {
        /// Flag or field name.
        name: &'static str,
        /// What it must satisfy.
        requirement: &'static str,
    },
}

impl fmt::Display for InvalidParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidParams::OutOfRange { name, requirement } => {
                write!(f, "invalid parameter {name}: must be {requirement}")
            }
        }
    }
}

impl std::error::Error for InvalidParams {}

/// Why an analysis could not produce a result.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The caller asked for something no model can simulate.
    Params(InvalidParams),
    /// Reading or writing a trace failed.
    Io(std::io::Error),
    /// A trace line is malformed or inconsistent (1-based line number; 0 when not tied to a line).
    BadTrace {
        /// Line in the trace file.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Drawing a figure failed.
    Plot(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Params(e) => e.fmt(f),
            Error::Io(e) => write!(f, "trace i/o: {e}"),
            Error::BadTrace { line, reason } => write!(f, "bad trace at line {line}: {reason}"),
            Error::Plot(e) => write!(f, "plot: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Params(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::BadTrace { .. } | Error::Plot(_) => None,
        }
    }
}

impl From<InvalidParams> for Error {
    fn from(e: InvalidParams) -> Self {
        Error::Params(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Fails with [`InvalidParams::OutOfRange`] unless `ok`.
pub(crate) fn require(
    ok: bool,
    name: &'static str,
    requirement: &'static str,
) -> Result<(), InvalidParams> {
    if ok {
        Ok(())
    } else {
        Err(InvalidParams::OutOfRange { name, requirement })
    }
}

/// The generator every model uses: ChaCha8 is portable across platforms and rand versions, so a
/// seed names one run forever (rand's `StdRng` makes no such promise).
pub(crate) fn seeded_rng(seed: u64) -> rand::rngs::ChaCha8Rng {
    rand::SeedableRng::seed_from_u64(seed)
}
