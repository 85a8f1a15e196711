//! The statistical disclosure attack (Danezis 2003) with the background estimate of
//! Mathewson and Dingledine (2004).
//!
//! Model: `users` users; each has `contacts` friends drawn at random and writes only to them.
//! A round is one mix batch of `batch` messages (for a Poisson mix, a window of that many
//! outputs). The adversary sees who entered each batch and which mailboxes its outputs reached.
//! The target, Alice (user 0), sends one message in each of `rounds` observed target rounds;
//! the other `batch - 1` messages come from random other users to their own friends, so the
//! background is not uniform. The adversary also watches `background_rounds` rounds without
//! Alice and estimates the background from them instead of assuming it uniform:
//!
//! `v = Σ_target rounds o_t  -  rounds * (batch - 1) * u`,  `u = Σ_background o_t / (batch * background_rounds)`
//!
//! where `o_t` counts the outputs per receiver. Alice's friends are guessed as the `contacts`
//! receivers with the largest `v`. With `cover = F`, each of Alice's messages is, with
//! probability `F`, a drop cover message to a uniformly random user instead of a real one.

use rand::RngExt;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use serde::Serialize;

use super::{InvalidParams, require, seeded_rng};

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SdaParams {
    /// Users (senders and receivers).
    pub users: usize,
    /// Messages per round.
    pub batch: usize,
    /// Friends per user.
    pub contacts: usize,
    /// Rounds in which Alice sends.
    pub rounds: usize,
    /// Rounds without Alice used for the background estimate.
    pub background_rounds: usize,
    /// Independent trials (fresh friendships each).
    pub trials: usize,
    /// Fraction of Alice's messages that are cover.
    pub cover: f64,
    /// Seed.
    pub seed: u64,
}

/// What the attack achieved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SdaReport {
    /// Users.
    pub users: usize,
    /// Batch size.
    pub batch: usize,
    /// Alice's friends.
    pub contacts: usize,
    /// Target rounds.
    pub rounds: usize,
    /// Background rounds.
    pub background_rounds: usize,
    /// Trials.
    pub trials: usize,
    /// Cover fraction.
    pub cover: f64,
    /// Seed.
    pub seed: u64,
    /// Mean fraction of Alice's friends among the top `contacts` guesses.
    pub mean_fraction_found: f64,
    /// Fraction of trials where every friend was in the top `contacts`.
    pub all_found: f64,
}

fn contacts_of(rng: &mut ChaCha8Rng, user: usize, users: usize, m: usize) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::with_capacity(m);
    while picked.len() < m {
        let c = rng.random_range(0..users);
        if c != user && !picked.contains(&c) {
            picked.push(c);
        }
    }
    picked
}

/// Adds a Multinomial(`n`, `probs`) draw to `out` by conditional binomials: `O(len)` whatever
/// `n` is, and distributed exactly as `n` independent categorical draws.
fn add_multinomial(rng: &mut ChaCha8Rng, n: u64, probs: &[f64], out: &mut [f64]) {
    let mut left = n;
    let mut mass = 1.0f64;
    for (p, o) in probs.iter().zip(out.iter_mut()) {
        if left == 0 {
            break;
        }
        let share = if mass > 0.0 {
            (p / mass).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let k = match Binomial::new(left, share) {
            Ok(b) => b.sample(rng),
            Err(_) => 0,
        };
        *o += k as f64;
        left -= k;
        mass -= p;
    }
}

/// One trial: returns how many of Alice's friends the attack ranked in its top `contacts`.
///
/// Only the per-receiver totals over rounds enter the estimator, so each total is drawn at once
/// as a multinomial over the exact per-message receiver law: the cost does not grow with
/// `rounds * batch`.
fn trial(p: &SdaParams, rng: &mut ChaCha8Rng) -> usize {
    let friends: Vec<Vec<usize>> = (0..p.users)
        .map(|u| contacts_of(rng, u, p.users, p.contacts))
        .collect();
    // A background message: a uniform sender other than Alice, to a uniform friend of theirs.
    let mut background_law = vec![0.0; p.users];
    let per_pair = 1.0 / ((p.users - 1) * p.contacts) as f64;
    for f in &friends[1..] {
        for r in f {
            background_law[*r] += per_pair;
        }
    }
    // Alice's message: cover to a uniform user with probability `cover`, else a uniform friend.
    let mut alice_law = vec![p.cover / p.users as f64; p.users];
    for r in &friends[0] {
        alice_law[*r] += (1.0 - p.cover) / p.contacts as f64;
    }
    let mut target = vec![0.0; p.users];
    add_multinomial(rng, p.rounds as u64, &alice_law, &mut target);
    add_multinomial(
        rng,
        (p.rounds * (p.batch - 1)) as u64,
        &background_law,
        &mut target,
    );
    let mut background = vec![0.0; p.users];
    add_multinomial(
        rng,
        (p.background_rounds * p.batch) as u64,
        &background_law,
        &mut background,
    );

    let per_message = 1.0 / (p.batch * p.background_rounds) as f64;
    let expected_noise = (p.rounds * (p.batch - 1)) as f64 * per_message;
    let mut score: Vec<(f64, usize)> = (0..p.users)
        .map(|r| (target[r] - expected_noise * background[r], r))
        .collect();
    // Highest score first; ties broken by receiver index so the run stays deterministic.
    score.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    score
        .iter()
        .take(p.contacts)
        .filter(|(_, r)| friends[0].contains(r))
        .count()
}

/// Runs `trials` attacks.
pub fn simulate(p: &SdaParams) -> Result<SdaReport, InvalidParams> {
    require(p.users >= 3, "users", ">= 3")?;
    require(
        p.contacts >= 1 && p.contacts < p.users,
        "contacts",
        ">= 1 and < users",
    )?;
    require(p.batch >= 1, "batch", ">= 1")?;
    require(p.rounds >= 1, "rounds", ">= 1")?;
    require(p.background_rounds >= 1, "background-rounds", ">= 1")?;
    require(p.trials >= 1, "trials", ">= 1")?;
    require((0.0..=1.0).contains(&p.cover), "cover", "in [0, 1]")?;
    let mut rng = seeded_rng(p.seed);
    let (mut found, mut all) = (0usize, 0usize);
    for _ in 0..p.trials {
        let f = trial(p, &mut rng);
        found += f;
        all += usize::from(f == p.contacts);
    }
    Ok(SdaReport {
        users: p.users,
        batch: p.batch,
        contacts: p.contacts,
        rounds: p.rounds,
        background_rounds: p.background_rounds,
        trials: p.trials,
        cover: p.cover,
        seed: p.seed,
        mean_fraction_found: found as f64 / (p.trials * p.contacts) as f64,
        all_found: all as f64 / p.trials as f64,
    })
}

/// Success against the number of observed rounds (background rounds scale along).
pub fn sweep_rounds(p: &SdaParams, rounds: &[usize]) -> Result<Vec<SdaReport>, InvalidParams> {
    rounds
        .iter()
        .map(|r| {
            simulate(&SdaParams {
                rounds: *r,
                background_rounds: *r,
                ..*p
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rounds: usize, cover: f64) -> SdaParams {
        SdaParams {
            users: 200,
            batch: 20,
            contacts: 5,
            rounds,
            background_rounds: rounds,
            trials: 20,
            cover,
            seed: 3,
        }
    }

    #[test]
    fn enough_rounds_reveal_every_contact() {
        let r = simulate(&params(2_000, 0.0)).expect("valid");
        assert_eq!(r.all_found, 1.0, "{r:?}");
        assert_eq!(r.mean_fraction_found, 1.0);
    }

    #[test]
    fn few_rounds_reveal_little() {
        let r = simulate(&params(5, 0.0)).expect("valid");
        assert!(r.mean_fraction_found < 0.6 && r.all_found < 0.2, "{r:?}");
    }

    #[test]
    fn cover_slows_the_attack() {
        let plain = simulate(&params(150, 0.0)).expect("valid");
        let covered = simulate(&params(150, 0.8)).expect("valid");
        assert!(
            plain.mean_fraction_found > covered.mean_fraction_found + 0.2,
            "{plain:?} {covered:?}"
        );
        assert!(plain.all_found > covered.all_found, "{plain:?} {covered:?}");
    }

    #[test]
    fn success_grows_with_rounds() {
        let s = sweep_rounds(&params(0, 0.0), &[5, 40, 320]).expect("valid");
        assert!(
            s.windows(2)
                .all(|w| w[0].mean_fraction_found < w[1].mean_fraction_found),
            "{s:?}"
        );
    }

    #[test]
    fn multinomial_totals_match_their_law() {
        let mut rng = seeded_rng(5);
        let law = [0.5, 0.25, 0.125, 0.125];
        let mut out = [0.0; 4];
        add_multinomial(&mut rng, 80_000, &law, &mut out);
        assert_eq!(out.iter().sum::<f64>(), 80_000.0);
        for (o, p) in out.iter().zip(law) {
            assert!((o / 80_000.0 - p).abs() < 0.01, "{out:?}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        assert!(
            simulate(&SdaParams {
                contacts: 200,
                ..params(10, 0.0)
            })
            .is_err()
        );
        assert!(
            simulate(&SdaParams {
                cover: 1.5,
                ..params(10, 0.0)
            })
            .is_err()
        );
    }
}
