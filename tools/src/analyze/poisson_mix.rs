//! One Poisson mix (Loopix, Piotrowska et al. 2017, Theorems 1–2 and Appendix A.1).
//!
//! Messages arrive as a Poisson stream of rate `lambda` and each waits an independent
//! exponential delay of rate `mu` (an M/M/inf queue). Because the delay is memoryless, whenever
//! a message leaves, every message then in the pool was equally likely to be the one: the
//! adversary, who counts arrivals and departures and so knows the pool size `n`, gives each
//! input still possibly inside probability `q / n` of being this output, where `q` is the
//! probability that the input is still inside; afterwards `q` shrinks by `(n - 1) / n`.
//!
//! The simulation tracks `q` for every input exactly, so it yields two entropies:
//! - **target entropy** (`entropy_bits`, Loopix's measure): pick an input as the target; the
//!   probabilities that each later output is the target form a distribution; its entropy,
//!   averaged over every real input after burn-in;
//! - **output entropy**: for each output, the distribution over the inputs it could be.
//!
//! Both approach `log2(e * lambda / mu)` when `lambda / mu` is large (the pool holds about
//! `lambda / mu` messages and the target's exit is geometric over the next outputs); for small
//! pools the simulation, not the formula, is the answer.
//!
//! Mix loop cover (`loop_rate`, Loopix's lambda_M) arrives like any input, so it fills the pool
//! and is counted in `n`, but has probability 0 of being the target and is never itself a target.
//! No event times are drawn: with memoryless delays only the order of arrivals and departures
//! matters, and the next event is a departure with probability `n mu / (lambda + lambda_M + n mu)`.

use std::collections::VecDeque;
use std::f64::consts::E;

use rand::RngExt;
use serde::Serialize;

use super::{InvalidParams, require, seeded_rng};

/// Inputs whose probability of still being in the pool falls below this are dropped; the
/// entropy they would still contribute is below `1e-7` bits per target.
const MIN_TRACKED: f64 = 1e-9;

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoissonMixParams {
    /// Arrival rate of real messages (per second).
    pub lambda: f64,
    /// Delay rate: each message waits Exp(mu), mean `1 / mu` seconds.
    pub mu: f64,
    /// Mix loop cover arrival rate (lambda_M).
    pub loop_rate: f64,
    /// Outputs to measure after burn-in.
    pub outputs: usize,
    /// Seed of the run.
    pub seed: u64,
}

/// What the simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoissonMixReport {
    /// Real arrival rate.
    pub lambda: f64,
    /// Delay rate.
    pub mu: f64,
    /// Mix loop rate.
    pub loop_rate: f64,
    /// Seed.
    pub seed: u64,
    /// Departures discarded while the pool fills from empty.
    pub burn_in: usize,
    /// Outputs measured.
    pub outputs: usize,
    /// Real inputs whose target entropy was measured.
    pub targets: usize,
    /// Mean target entropy (bits): Loopix's anonymity of a message passing the mix.
    pub entropy_bits: f64,
    /// Mean entropy (bits) of an output's distribution over the inputs.
    pub output_entropy_bits: f64,
    /// `2^entropy_bits`.
    pub effective_set: f64,
    /// `log2(e * (lambda + lambda_M) / mu)`, the large-pool closed form.
    pub closed_form_bits: f64,
    /// Mean pool size at a departure, the departing message included (`lambda_total / mu + 1`).
    pub mean_pool: f64,
}

/// An input the adversary cannot yet rule out of the pool.
struct Candidate {
    /// Cumulative log of pool survival factors when it arrived; `ln q = log_keep - arrived_at`.
    arrived_at: f64,
    /// Probability it is still inside.
    q: f64,
    /// Entropy (nats) of its exit so far.
    h: f64,
    /// Whether its target entropy is part of the result.
    counted: bool,
}

/// The large-pool closed form `log2(e * rate / mu)` (Loopix Theorem 2).
pub fn closed_form_bits(rate: f64, mu: f64) -> f64 {
    (E * rate / mu).log2()
}

/// Runs the simulation.
///
/// ```
/// use spore_tools::analyze::poisson_mix::{simulate, PoissonMixParams};
/// let r = simulate(&PoissonMixParams { lambda: 40.0, mu: 4.0, loop_rate: 0.0, outputs: 20_000, seed: 1 })
///     .expect("valid parameters");
/// assert!((r.entropy_bits - r.closed_form_bits).abs() < 0.1);
/// ```
pub fn simulate(p: &PoissonMixParams) -> Result<PoissonMixReport, InvalidParams> {
    require(
        p.lambda.is_finite() && p.lambda > 0.0,
        "lambda",
        "finite and > 0",
    )?;
    require(p.mu.is_finite() && p.mu > 0.0, "mu", "finite and > 0")?;
    require(
        p.loop_rate.is_finite() && p.loop_rate >= 0.0,
        "loop-rate",
        "finite and >= 0",
    )?;
    require(p.outputs > 0, "outputs", "> 0")?;

    let mut rng = seeded_rng(p.seed);
    let arrivals = p.lambda + p.loop_rate;
    let mean_pool = arrivals / p.mu;
    let burn_in = 1_000 + (20.0 * mean_pool).ceil() as usize;
    let measure_end = burn_in + p.outputs;

    let mut pool: VecDeque<Candidate> = VecDeque::new();
    let mut n: usize = 0;
    let mut log_keep = 0.0_f64;
    let mut departures = 0usize;
    let mut pending_targets = 0usize;
    let (mut target_sum, mut targets) = (0.0, 0usize);
    let (mut output_sum, mut pool_sum) = (0.0, 0.0);

    while departures < measure_end || pending_targets > 0 {
        let departure_rate = n as f64 * p.mu;
        let u = rng.random::<f64>() * (arrivals + departure_rate);
        if u >= departure_rate {
            // Arrival: real with probability lambda / (lambda + lambda_M).
            let real = u - departure_rate < p.lambda;
            let counted = real && (burn_in..measure_end).contains(&departures);
            pending_targets += usize::from(counted);
            pool.push_back(Candidate {
                arrived_at: log_keep,
                q: 1.0,
                h: 0.0,
                counted,
            });
            n += 1;
            continue;
        }
        // Departure: every candidate was this output with probability q / n.
        let inv_n = 1.0 / n as f64;
        let ln_n = (n as f64).ln();
        let mut h_out = 0.0;
        for c in pool.iter_mut() {
            let prob = c.q * inv_n;
            let term = -prob * ((log_keep - c.arrived_at) - ln_n);
            c.h += term;
            h_out += term;
        }
        if (burn_in..measure_end).contains(&departures) {
            output_sum += h_out;
            pool_sum += n as f64;
        }
        departures += 1;
        n -= 1;
        if n == 0 {
            // The pool is known to be empty: every candidate has left.
            for c in pool.drain(..) {
                if c.counted {
                    target_sum += c.h;
                    targets += 1;
                    pending_targets -= 1;
                }
            }
            log_keep = 0.0;
            continue;
        }
        let keep = (n as f64) * inv_n;
        log_keep += keep.ln();
        for c in pool.iter_mut() {
            c.q *= keep;
        }
        // Older inputs have smaller q: retire from the front.
        while pool.front().is_some_and(|c| c.q < MIN_TRACKED) {
            if let Some(c) = pool.pop_front()
                && c.counted
            {
                target_sum += c.h;
                targets += 1;
                pending_targets -= 1;
            }
        }
    }

    let nats_to_bits = std::f64::consts::LOG2_E;
    let entropy_bits = if targets > 0 {
        target_sum / targets as f64 * nats_to_bits
    } else {
        0.0
    };
    Ok(PoissonMixReport {
        lambda: p.lambda,
        mu: p.mu,
        loop_rate: p.loop_rate,
        seed: p.seed,
        burn_in,
        outputs: p.outputs,
        targets,
        entropy_bits,
        output_entropy_bits: output_sum / p.outputs as f64 * nats_to_bits,
        effective_set: entropy_bits.exp2(),
        closed_form_bits: closed_form_bits(arrivals, p.mu),
        mean_pool: pool_sum / p.outputs as f64,
    })
}

/// Entropy against `lambda / mu` at fixed `mu`: one simulation per ratio, for tables and plots.
pub fn sweep(
    mu: f64,
    ratios: &[f64],
    loop_rate: f64,
    outputs: usize,
    seed: u64,
) -> Result<Vec<PoissonMixReport>, InvalidParams> {
    ratios
        .iter()
        .map(|r| {
            simulate(&PoissonMixParams {
                lambda: r * mu,
                mu,
                loop_rate,
                outputs,
                seed,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lambda: f64, mu: f64, loop_rate: f64, seed: u64) -> PoissonMixReport {
        simulate(&PoissonMixParams {
            lambda,
            mu,
            loop_rate,
            outputs: 30_000,
            seed,
        })
        .expect("valid")
    }

    #[test]
    fn simulation_agrees_with_closed_form_when_pool_holds_two_or_more() {
        for (lambda, mu) in [(2.0, 1.0), (10.0, 2.0), (40.0, 4.0), (100.0, 2.0)] {
            let r = run(lambda, mu, 0.0, 7);
            let gap = (r.entropy_bits - r.closed_form_bits).abs();
            assert!(
                gap < 0.1,
                "lambda={lambda} mu={mu}: sim {} closed {}",
                r.entropy_bits,
                r.closed_form_bits
            );
            assert!(
                (r.output_entropy_bits - r.closed_form_bits).abs() < 0.1,
                "{r:?}"
            );
            // A departure sees the pool's stationary Poisson(lambda/mu) others plus itself.
            assert!(
                (r.mean_pool - (lambda / mu + 1.0)).abs() < 0.1 * lambda / mu,
                "{r:?}"
            );
        }
    }

    #[test]
    fn entropy_grows_with_lambda_and_shrinks_with_mu() {
        let by_lambda: Vec<f64> = [1.0, 3.0, 9.0, 27.0]
            .iter()
            .map(|l| run(*l, 1.0, 0.0, 3).entropy_bits)
            .collect();
        assert!(by_lambda.windows(2).all(|w| w[0] < w[1]), "{by_lambda:?}");
        let by_mu: Vec<f64> = [0.5, 1.5, 4.5, 13.5]
            .iter()
            .map(|m| run(20.0, *m, 0.0, 3).entropy_bits)
            .collect();
        assert!(by_mu.windows(2).all(|w| w[0] > w[1]), "{by_mu:?}");
    }

    #[test]
    fn loop_cover_adds_anonymity_like_real_traffic() {
        let without = run(4.0, 1.0, 0.0, 11);
        let with = run(4.0, 1.0, 12.0, 11);
        assert!(
            with.entropy_bits > without.entropy_bits + 1.5,
            "{without:?} {with:?}"
        );
        assert!(
            (with.entropy_bits - closed_form_bits(16.0, 1.0)).abs() < 0.1,
            "{with:?}"
        );
    }

    #[test]
    fn same_seed_same_result_other_seed_other_result() {
        assert_eq!(run(5.0, 1.0, 1.0, 42), run(5.0, 1.0, 1.0, 42));
        assert_ne!(
            run(5.0, 1.0, 1.0, 42).entropy_bits,
            run(5.0, 1.0, 1.0, 43).entropy_bits
        );
    }

    #[test]
    fn nearly_empty_mix_gives_little_anonymity() {
        // lambda/mu = 0.05: the target is usually alone, far below the (meaningless) closed form.
        let r = run(0.05, 1.0, 0.0, 5);
        assert!(r.entropy_bits < 0.2, "{r:?}");
        assert!(r.closed_form_bits < 0.0);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(
            simulate(&PoissonMixParams {
                lambda: 0.0,
                mu: 1.0,
                loop_rate: 0.0,
                outputs: 1,
                seed: 0
            })
            .is_err()
        );
        assert!(
            simulate(&PoissonMixParams {
                lambda: 1.0,
                mu: f64::NAN,
                loop_rate: 0.0,
                outputs: 1,
                seed: 0
            })
            .is_err()
        );
    }
}
