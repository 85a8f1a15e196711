//! Intersection (hitting-set) attack on online sessions against a store-and-forward mailbox.
//!
//! Store-and-forward invites it: a message reaches Bob's mailbox relay some time after its sender
//! was online, and an observer sees which clients are online (a Spore client online sends a
//! constant Poisson stream, so being online is never hidden). Time is cut into epochs (the
//! observer's granularity: a minute, say). Users' sessions follow a two-state Markov chain with
//! stationary online fraction `online` and mean session length `session` epochs. Alice (user 0)
//! is Bob's only correspondent: in each epoch she is online she sends with probability `send`,
//! and the message reaches the mailbox `d` epochs later, `d` uniform in `0..window` (the window
//! covers mixing delay and retries). For each delivery the observer lists the users online at
//! some epoch in the last `window` epochs; Alice is always among them. With one correspondent
//! the smallest hitting set is the intersection of those lists, and the attack ends when it
//! holds only Alice. (Several correspondents need a true minimum hitting set; not modelled.)

use rand::RngExt;
use serde::Serialize;

use super::metrics::Summary;
use super::{InvalidParams, require, seeded_rng};

/// How many deliveries the anonymity-set curve covers.
pub const CURVE_LEN: usize = 64;

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntersectionParams {
    /// Users who could be the sender.
    pub users: usize,
    /// Stationary fraction of epochs a user is online.
    pub online: f64,
    /// Mean online session, epochs (>= 1).
    pub session: f64,
    /// Deliveries are attributed to the last `window` epochs.
    pub window: usize,
    /// Probability Alice sends in an epoch she is online.
    pub send: f64,
    /// Give up after this many epochs.
    pub max_epochs: usize,
    /// Trials.
    pub trials: usize,
    /// Seed.
    pub seed: u64,
}

/// What the attack achieved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntersectionReport {
    /// Users.
    pub users: usize,
    /// Online fraction.
    pub online: f64,
    /// Mean session.
    pub session: f64,
    /// Attribution window.
    pub window: usize,
    /// Send probability.
    pub send: f64,
    /// Epoch cap.
    pub max_epochs: usize,
    /// Trials.
    pub trials: usize,
    /// Seed.
    pub seed: u64,
    /// Fraction of trials where Alice was singled out within the cap.
    pub unique_fraction: f64,
    /// Deliveries needed, over trials that succeeded.
    pub deliveries_to_unique: Summary,
    /// Epochs needed, over trials that succeeded.
    pub epochs_to_unique: Summary,
    /// Mean `log2 |candidates|` after 1, 2, ... deliveries (the sender's entropy if the
    /// adversary holds the remaining candidates equally likely).
    pub entropy_after_deliveries: Vec<f64>,
}

/// Runs the attack `trials` times.
pub fn simulate(p: &IntersectionParams) -> Result<IntersectionReport, InvalidParams> {
    require(p.users >= 2, "users", ">= 2")?;
    require(p.online > 0.0 && p.online <= 1.0, "online", "in (0, 1]")?;
    require(
        p.session >= 1.0 && p.session.is_finite(),
        "session",
        ">= 1 epoch",
    )?;
    require(p.window >= 1, "window", ">= 1")?;
    require(p.send > 0.0 && p.send <= 1.0, "send", "in (0, 1]")?;
    require(p.trials >= 1, "trials", ">= 1")?;
    // Two-state chain: leave with probability 1/session, come back so the mean stays `online`.
    let leave = if p.online >= 1.0 {
        0.0
    } else {
        1.0 / p.session
    };
    let join = if p.online >= 1.0 {
        1.0
    } else {
        (leave * p.online / (1.0 - p.online)).min(1.0)
    };
    let mut rng = seeded_rng(p.seed);
    let mut deliveries_needed = Vec::new();
    let mut epochs_needed = Vec::new();
    let mut curve_sum = vec![0.0; CURVE_LEN];
    let window = p.window as i64;

    for _ in 0..p.trials {
        // Candidates: (user, online now, last epoch online). Alice is index 0 and never leaves.
        let mut cands: Vec<(usize, bool, i64)> = (0..p.users)
            .map(|u| (u, rng.random_bool(p.online), i64::MIN / 2))
            .collect();
        let mut pending: Vec<i64> = Vec::new();
        let mut deliveries = 0usize;
        let mut curve = [0.0f64; CURVE_LEN];
        let mut done = false;
        for epoch in 0..p.max_epochs as i64 {
            for c in cands.iter_mut() {
                c.1 = if c.1 {
                    !rng.random_bool(leave)
                } else {
                    rng.random_bool(join)
                };
                if c.1 {
                    c.2 = epoch;
                }
            }
            if cands[0].1 && rng.random_bool(p.send) {
                pending.push(epoch + rng.random_range(0..window));
            }
            let due = pending.iter().filter(|d| **d == epoch).count();
            pending.retain(|d| *d != epoch);
            for _ in 0..due {
                cands.retain(|c| c.2 > epoch - window);
                if deliveries < CURVE_LEN {
                    curve[deliveries] = (cands.len() as f64).log2();
                }
                deliveries += 1;
            }
            if cands.len() == 1 && !done {
                done = true;
                deliveries_needed.push(deliveries as f64);
                epochs_needed.push((epoch + 1) as f64);
            }
            if done && deliveries >= CURVE_LEN {
                break;
            }
        }
        // Past the last delivery the set no longer changes.
        let mut last = (p.users as f64).log2();
        for (i, v) in curve.iter().enumerate() {
            if i < deliveries {
                last = *v;
            }
            curve_sum[i] += last;
        }
    }
    let unique_fraction = deliveries_needed.len() as f64 / p.trials as f64;
    Ok(IntersectionReport {
        users: p.users,
        online: p.online,
        session: p.session,
        window: p.window,
        send: p.send,
        max_epochs: p.max_epochs,
        trials: p.trials,
        seed: p.seed,
        unique_fraction,
        deliveries_to_unique: Summary::of(&mut deliveries_needed),
        epochs_to_unique: Summary::of(&mut epochs_needed),
        entropy_after_deliveries: curve_sum.iter().map(|s| s / p.trials as f64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> IntersectionParams {
        IntersectionParams {
            users: 1_000,
            online: 0.3,
            session: 5.0,
            window: 1,
            send: 0.5,
            max_epochs: 2_000,
            trials: 20,
            seed: 2,
        }
    }

    #[test]
    fn part_time_users_are_singled_out_after_a_few_deliveries() {
        let r = simulate(&params()).expect("valid");
        assert_eq!(r.unique_fraction, 1.0, "{r:?}");
        // Each delivery keeps a user with probability about 0.3: log(1000)/log(1/0.3) ~ 6,
        // more because sessions are sticky.
        assert!(
            r.deliveries_to_unique.mean > 4.0 && r.deliveries_to_unique.mean < 40.0,
            "{r:?}"
        );
        let c = &r.entropy_after_deliveries;
        assert!(c.windows(2).all(|w| w[1] <= w[0] + 1e-12));
        assert!(c[0] < 1000f64.log2() && c[CURVE_LEN - 1] < 1e-9);
    }

    #[test]
    fn longer_windows_and_longer_sessions_slow_it_down() {
        let base = simulate(&params())
            .expect("valid")
            .deliveries_to_unique
            .mean;
        let wide = simulate(&IntersectionParams {
            window: 10,
            ..params()
        })
        .expect("valid")
        .deliveries_to_unique
        .mean;
        let sticky = simulate(&IntersectionParams {
            session: 50.0,
            ..params()
        })
        .expect("valid")
        .deliveries_to_unique
        .mean;
        assert!(wide > base * 1.5, "{wide} vs {base}");
        assert!(sticky > base * 1.5, "{sticky} vs {base}");
    }

    #[test]
    fn always_online_users_are_never_singled_out() {
        let r = simulate(&IntersectionParams {
            online: 1.0,
            max_epochs: 200,
            ..params()
        })
        .expect("valid");
        assert_eq!(r.unique_fraction, 0.0);
        assert!((r.entropy_after_deliveries[CURVE_LEN - 1] - 1000f64.log2()).abs() < 1e-9);
    }
}
