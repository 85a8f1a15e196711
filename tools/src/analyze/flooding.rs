//! The n-1 (flooding, blending) attack on one Poisson mix, and how fast loop cover exposes it.
//!
//! The adversary controls the mix's incoming links. It blocks every honest input, waits until
//! the honest messages already inside have left (with `n` inside it waits `ln(n / 0.01) / mu`,
//! after which all are gone with probability 0.99), then lets only the target in. Whatever it
//! floods in itself it recognises on the way out, so the only outputs it cannot explain are the
//! target and the mix's own loop cover, which leaves as a Poisson stream of rate `loop_rate`
//! (Loopix's lambda_M; by Burke's theorem also when loops queue in the pool). Given output times
//! `t_j` after the target entered at 0, the exact posterior that output `j` is the target is
//! `f(t_j) / Σ_k f(t_k)`, `f(t) = mu e^{-mu t}`; its entropy is the target's anonymity under
//! attack (0 without loop cover).
//!
//! Blocking also stops the mix's loops from coming back. The mix raises an alarm when no loop
//! has returned for `tau` seconds, with `tau` set so that an unattacked mix (gaps between loop
//! returns are Exp(loop_rate)) raises `false_alarms_per_day` on average:
//! `tau = ln(loop_rate * 86400 / false_alarms_per_day) / loop_rate`. The attack is caught
//! `max(0, tau - A)` after blocking starts, `A` the time since the last loop came back. It
//! succeeds undetected only if the flush and the target's own delay both end before that.

use rand_distr::{Distribution, Exp, Poisson};
use serde::Serialize;

use super::metrics::{Summary, entropy_bits};
use super::poisson_mix::closed_form_bits;
use super::{InvalidParams, require, seeded_rng};

/// Residual honest messages the adversary tolerates when flushing.
const FLUSH_RISK: f64 = 0.01;

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodingParams {
    /// Honest arrival rate before the attack (sets the pool to flush).
    pub lambda: f64,
    /// Delay rate.
    pub mu: f64,
    /// Mix loop rate lambda_M; 0 for none.
    pub loop_rate: f64,
    /// Alarm threshold: false alarms per day the operator accepts.
    pub false_alarms_per_day: f64,
    /// Trials.
    pub trials: usize,
    /// Seed.
    pub seed: u64,
}

/// What the attack achieved and how fast it was seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FloodingReport {
    /// Honest rate.
    pub lambda: f64,
    /// Delay rate.
    pub mu: f64,
    /// Mix loop rate.
    pub loop_rate: f64,
    /// Trials.
    pub trials: usize,
    /// Seed.
    pub seed: u64,
    /// The target's anonymity without the attack, `log2(e (lambda + lambda_M) / mu)`.
    pub baseline_bits: f64,
    /// Target entropy under attack (bits).
    pub entropy_bits: f64,
    /// Its distribution.
    pub entropy: Summary,
    /// Silence (seconds) after which the mix raises the alarm; infinite without loops.
    pub alarm_after: f64,
    /// Seconds from blocking to alarm.
    pub detection_delay: Summary,
    /// Seconds the adversary waits to flush honest messages.
    pub flush_time: Summary,
    /// Fraction of trials where the target left before the alarm.
    pub undetected_fraction: f64,
}

/// Runs the attack `trials` times.
pub fn simulate(p: &FloodingParams) -> Result<FloodingReport, InvalidParams> {
    require(
        p.lambda.is_finite() && p.lambda >= 0.0,
        "lambda",
        "finite and >= 0",
    )?;
    require(p.mu.is_finite() && p.mu > 0.0, "mu", "finite and > 0")?;
    require(
        p.loop_rate.is_finite() && p.loop_rate >= 0.0,
        "loop-rate",
        "finite and >= 0",
    )?;
    require(p.false_alarms_per_day > 0.0, "false-alarms-per-day", "> 0")?;
    require(p.trials >= 1, "trials", ">= 1")?;
    let mut rng = seeded_rng(p.seed);
    let dwell = Exp::new(p.mu).map_err(|_| InvalidParams::OutOfRange {
        name: "mu",
        requirement: "> 0",
    })?;
    let loops = (p.loop_rate > 0.0)
        .then(|| Exp::new(p.loop_rate))
        .transpose()
        .map_err(|_| InvalidParams::OutOfRange {
            name: "loop-rate",
            requirement: "> 0",
        })?;
    let pool = (p.lambda > 0.0)
        .then(|| Poisson::new(p.lambda / p.mu))
        .transpose()
        .map_err(|_| InvalidParams::OutOfRange {
            name: "lambda",
            requirement: "finite",
        })?;
    let alarm_after = match loops {
        Some(_) => ((p.loop_rate * 86_400.0 / p.false_alarms_per_day).ln() / p.loop_rate).max(0.0),
        None => f64::INFINITY,
    };
    // Loop outputs later than this carry negligible posterior weight (e^-40).
    let horizon = 40.0 / p.mu;

    let (mut entropies, mut delays, mut flushes) = (Vec::new(), Vec::new(), Vec::new());
    let mut undetected = 0usize;
    let mut weights: Vec<f64> = Vec::new();
    for _ in 0..p.trials {
        let inside: f64 = pool.as_ref().map_or(0.0, |d| d.sample(&mut rng));
        let flush = if inside >= 1.0 {
            (inside / FLUSH_RISK).ln() / p.mu
        } else {
            0.0
        };
        let exit = dwell.sample(&mut rng);
        weights.clear();
        weights.push(p.mu * (-p.mu * exit).exp());
        let detection = match &loops {
            Some(gap) => {
                let mut t = gap.sample(&mut rng);
                while t < horizon {
                    weights.push(p.mu * (-p.mu * t).exp());
                    t += gap.sample(&mut rng);
                }
                (alarm_after - gap.sample(&mut rng)).max(0.0)
            }
            None => f64::INFINITY,
        };
        entropies.push(entropy_bits(&weights));
        if flush + exit < detection {
            undetected += 1;
        }
        if detection.is_finite() {
            delays.push(detection);
        }
        flushes.push(flush);
    }
    let entropy = Summary::of(&mut entropies);
    Ok(FloodingReport {
        lambda: p.lambda,
        mu: p.mu,
        loop_rate: p.loop_rate,
        trials: p.trials,
        seed: p.seed,
        baseline_bits: closed_form_bits(p.lambda + p.loop_rate, p.mu).max(0.0),
        entropy_bits: entropy.mean,
        entropy,
        alarm_after,
        detection_delay: Summary::of(&mut delays),
        flush_time: Summary::of(&mut flushes),
        undetected_fraction: undetected as f64 / p.trials as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(loop_rate: f64) -> FloodingParams {
        FloodingParams {
            lambda: 200.0,
            mu: 20.0,
            loop_rate,
            false_alarms_per_day: 1.0,
            trials: 2_000,
            seed: 8,
        }
    }

    #[test]
    fn without_loops_the_target_is_exposed_and_nobody_notices() {
        let r = simulate(&params(0.0)).expect("valid");
        assert_eq!(r.entropy_bits, 0.0);
        assert_eq!(r.undetected_fraction, 1.0);
        assert!(r.alarm_after.is_infinite());
        assert!(r.baseline_bits > 4.0);
    }

    #[test]
    fn loops_restore_some_anonymity_and_more_loops_catch_it_sooner() {
        let slow = simulate(&params(2.0)).expect("valid");
        let fast = simulate(&params(50.0)).expect("valid");
        assert!(
            slow.entropy_bits > 0.0 && slow.entropy_bits < fast.entropy_bits,
            "{slow:?} {fast:?}"
        );
        // Many loops per delay: close to a mix fed by loops alone.
        assert!(
            (fast.entropy_bits - closed_form_bits(50.0, 20.0)).abs() < 0.5,
            "{fast:?}"
        );
        assert!(fast.detection_delay.mean < slow.detection_delay.mean);
        assert!(
            fast.undetected_fraction < slow.undetected_fraction,
            "{slow:?} {fast:?}"
        );
        // Silence threshold: ln(2 * 86400) / 2 ~ 6.03 s.
        assert!((slow.alarm_after - (2.0f64 * 86_400.0).ln() / 2.0).abs() < 1e-12);
    }
}
