//! Anonymity metrics (Serjantov–Danezis 2002, Díaz et al. 2002).
//!
//! The adversary's view of a message is a probability distribution over the candidates (senders,
//! inputs, outputs). Its Shannon entropy `H` in bits is the anonymity; `2^H` is the size of a
//! uniform set giving the same uncertainty (the effective anonymity set); `H / log2 N` scales it
//! to `[0, 1]` against the `N` candidates a perfect system would leave.

use serde::Serialize;

/// Shannon entropy in bits of the distribution proportional to `weights`.
///
/// The weights need not sum to one (they are normalised); zero weights contribute nothing.
/// An empty or all-zero input has entropy 0.
///
/// ```
/// use spore_tools::analyze::metrics::entropy_bits;
/// assert!((entropy_bits(&[1.0, 1.0, 1.0, 1.0]) - 2.0).abs() < 1e-12);
/// ```
pub fn entropy_bits(weights: &[f64]) -> f64 {
    let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = weights
        .iter()
        .filter(|w| **w > 0.0)
        .map(|w| {
            let p = w / total;
            -p * p.log2()
        })
        .sum();
    h.max(0.0)
}

/// The effective anonymity set size `2^H`.
pub fn effective_set(entropy_bits: f64) -> f64 {
    entropy_bits.exp2()
}

/// The degree of anonymity `H / log2 N` (Díaz et al.): 1 when every one of `n` candidates is
/// equally likely, 0 when the adversary is certain. Defined as 0 when `n <= 1`.
pub fn degree(entropy_bits: f64, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        entropy_bits / (n as f64).log2()
    }
}

/// Mean and quantiles of a sample, for tables and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Sample count.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (sorted in place). All-zero summary for an empty sample.
    pub fn of(values: &mut [f64]) -> Summary {
        if values.is_empty() {
            return Summary {
                count: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        values.sort_by(f64::total_cmp);
        let count = values.len();
        let mean = values.iter().sum::<f64>() / count as f64;
        Summary {
            count,
            mean,
            p50: quantile_sorted(values, 0.5),
            p90: quantile_sorted(values, 0.9),
            p99: quantile_sorted(values, 0.99),
            max: values[count - 1],
        }
    }
}

/// The `q`-quantile of an ascending, non-empty sample (nearest rank).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// The Gamma (Erlang) distribution of a route's total delay: `hops` independent exponential
/// delays of mean `mean_delay` each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErlangDelay {
    /// Shape: number of exponential hops.
    pub hops: u32,
    /// Mean of one hop's delay, seconds.
    pub mean_delay: f64,
}

impl ErlangDelay {
    /// Mean total delay.
    pub fn mean(&self) -> f64 {
        f64::from(self.hops) * self.mean_delay
    }

    /// `P(total <= x)`: `1 - e^{-x/θ} Σ_{n<k} (x/θ)^n / n!`.
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= 0.0 || self.hops == 0 {
            return if self.hops == 0 { 1.0 } else { 0.0 };
        }
        let y = x / self.mean_delay;
        let mut term = 1.0;
        let mut sum = 1.0;
        for n in 1..self.hops {
            term *= y / f64::from(n);
            sum += term;
        }
        (1.0 - (-y).exp() * sum).clamp(0.0, 1.0)
    }

    /// The `q`-quantile, by bisection on [`ErlangDelay::cdf`].
    pub fn quantile(&self, q: f64) -> f64 {
        if self.hops == 0 {
            return 0.0;
        }
        let (mut lo, mut hi) = (0.0, self.mean() * 2.0 + self.mean_delay);
        while self.cdf(hi) < q {
            hi *= 2.0;
        }
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if self.cdf(mid) < q {
                lo = mid
            } else {
                hi = mid
            }
        }
        0.5 * (lo + hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_distribution_has_log2_n_bits_and_full_degree() {
        let w = vec![0.25; 8];
        let h = entropy_bits(&w);
        assert!((h - 3.0).abs() < 1e-12);
        assert!((effective_set(h) - 8.0).abs() < 1e-9);
        assert!((degree(h, 8) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn certainty_has_zero_entropy_and_zeros_are_ignored() {
        assert_eq!(entropy_bits(&[0.0, 5.0, 0.0]), 0.0);
        assert_eq!(entropy_bits(&[]), 0.0);
        assert_eq!(degree(0.0, 100), 0.0);
        // A skewed distribution lies strictly between 0 and log2 N.
        let h = entropy_bits(&[0.7, 0.1, 0.1, 0.1]);
        assert!((h - 1.3567796494470395).abs() < 1e-12, "{h}");
    }

    #[test]
    fn erlang_one_hop_is_exponential_and_quantiles_invert_the_cdf() {
        let e = ErlangDelay {
            hops: 1,
            mean_delay: 0.05,
        };
        assert!((e.quantile(0.5) - 0.05 * 2f64.ln()).abs() < 1e-9);
        let g = ErlangDelay {
            hops: 3,
            mean_delay: 0.05,
        };
        assert!((g.mean() - 0.15).abs() < 1e-12);
        for q in [0.1, 0.5, 0.99] {
            assert!((g.cdf(g.quantile(q)) - q).abs() < 1e-9);
        }
        // Erlang(3) median is about 2.674 θ.
        assert!((g.quantile(0.5) / 0.05 - 2.674_060).abs() < 1e-4);
    }

    #[test]
    fn summary_reports_nearest_rank_quantiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!(
            (s.count, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-12);
    }
}
